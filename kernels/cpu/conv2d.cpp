// CPU conv2d kernels (API in kernels/cpu/conv2d.h): forward, backward-data, backward-weight and
// bias gradient, NCHW activations and KCRS weights.
//
// float path (the fast one) — implicit GEMM on "banded phase planes":
//   * The output grid is cut into bands of BH output rows; a band is one work item, handed out
//     dynamically to the OpenMP threads (a few items per thread, so a preempted core does not
//     stall the call; the 32x3 engine cuts it into pixel chunks of equal tile counts instead,
//     the last ones half-size, see PixelChunks). A thread copies the source rows its band needs
//     into its private buffer (<= 1 MiB, kept per thread between calls: Scratch), zero padded
//     and split by stride phase:
//        plane(c, a, b)[t][j] = src[c][(i0 + t)*sy + a - py][j*sx + b - px]      (a < sy, b < sx)
//     with a row pitch V = OW + (S-1)/sx. A tap (c, r, s) of the reduction then reads the
//     contiguous run plane(c, r%sy, s%sx) + (r/sy)*V + s/sx + f for the flattened output index
//     f = t*V + j (columns j >= OW are junk and are never stored). So im2col never exists: a
//     24-pixel panel of the im2col matrix is 24 contiguous floats per tap, and a 1x1 stride-1
//     unpadded conv reads the source tensor directly (no band copy at all).
//   * forward:  Y[K][pix] = W[K][C*R*S] * col[C*R*S][pix], by one of two engines:
//     - pixel broadcast (32x3), for kernels larger than 1x1 when K <= 128 pads to a multiple of
//       32 with little waste (the student's 32/64/128-channel layers): weights pre-packed
//       [K/32][C*R*S][32] are the vector operand; per group of 96 stored pixels (junk columns
//       skipped: each pixel of a tile has its own base) and K block of 128 taps (16 KiB of
//       weights, in L1) every 3-pixel tile broadcasts its pixels straight from the band, so
//       nothing is packed per pixel (packing had cost 10-15% of a 32-channel layer). The group's
//       pixel-major accumulators are transposed in 8x8 blocks, then stored with the bias.
//     - packed (4x24), otherwise: per 24-pixel panel pack KC taps x 24 pixels (KC <= 256, fits
//       L1; skipped for <= 8 output channels, where the micro-kernel reads the band in place),
//       run the 4x24 micro-kernel over every block of 4 output channels (weights pre-packed
//       [K/4][C*R*S][4]) for 4 panels per pass over the weights, accumulate in 4x24 tiles, then
//       add bias and store the valid pixels.
//   * backward data: the transposed convolution is split by stride phase (a, b) of gx; each
//     phase is an ordinary stride-1 correlation of gy with the taps r = a+ph (mod sh),
//     s = b+pw (mod sw), so it runs through the same engine. A work item computes every phase
//     of the same band of gx rows (cache-friendly); with a column stride the phases land in a
//     small private buffer and are interleaved into contiguous gx rows.
//   * backward weight: gw[K][C*R*S] = gy[K][pix] . col[C*R*S][pix]^T. Both operands are rows
//     that are contiguous along pixels (gy copied into the band's flat layout with zeros in the
//     junk columns; col rows are runs of the phase planes), so a 4x3 dot-product micro-kernel
//     reduces along pixels in chunks of 1024. Work items are (band, chunk of taps): small images
//     are split by taps rather than into short bands. Threads keep private double accumulators
//     [groups][K/groups][C*R*S] that are summed at the end, except for one image that fits in
//     one band (<= 4 MiB): that band is built once and shared, and each tap chunk writes its
//     own part of gw.
//   * bias gradient: per-channel sums (float partial sums, double total).
//   Micro-kernels: kernels/cpu/conv2d_microkernels.h (AVX2+FMA or NEON, chosen at run time;
//   portable loops otherwise; ST_CPU_KERNELS names one). Calls under ~1 MFLOP run on one
//   thread; calls made from inside an OpenMP parallel region never spawn threads.
//
//
// double path: direct loops, a plain reference for finite-difference tests on tiny shapes.
//
// The files: conv2d_internal.h lists which file holds which part of the float path.
#include "kernels/cpu/conv2d.h"

#include <type_traits>

#include "kernels/cpu/conv2d_internal.h"

namespace st::cpu {
namespace conv2d_detail {
std::atomic<bool> g_use32{true};     // the 32x3 engine where it applies
std::atomic<int> g_fail_scratch{0};  // conv2d_fail_scratch_for_testing
}  // namespace conv2d_detail

using namespace conv2d_detail;

void conv2d_set_broadcast_engine(bool on) { g_use32.store(on); }
void conv2d_fail_scratch_for_testing(int n) { g_fail_scratch.store(n); }

// ------------------------------------------------------------------ public templates
template <class T>
void conv2d_forward(const ConvGeom& g, const T* x, const T* w, const T* bias, T* y) {
  if constexpr (std::is_same_v<T, float>)
    forward_f32(g, x, w, bias, y);
  else
    forward_ref(g, x, w, bias, y);
}

template <class T>
void conv2d_backward_data(const ConvGeom& g, const T* gy, const T* w, T* gx) {
  if constexpr (std::is_same_v<T, float>)
    backward_data_f32(g, gy, w, gx);
  else
    backward_data_ref(g, gy, w, gx);
}

template <class T>
void conv2d_backward_weight(const ConvGeom& g, const T* gy, const T* x, T* gw) {
  if constexpr (std::is_same_v<T, float>)
    backward_weight_f32(g, gy, x, gw);
  else
    backward_weight_ref(g, gy, x, gw);
}

template <class T>
void conv2d_backward_bias(const ConvGeom& g, const T* gy, T* gb) {
  if constexpr (std::is_same_v<T, float>)
    backward_bias_f32(g, gy, gb);
  else
    backward_bias_ref(g, gy, gb);
}

template void conv2d_forward<float>(const ConvGeom&, const float*, const float*, const float*,
                                    float*);
template void conv2d_forward<double>(const ConvGeom&, const double*, const double*, const double*,
                                     double*);
template void conv2d_backward_data<float>(const ConvGeom&, const float*, const float*, float*);
template void conv2d_backward_data<double>(const ConvGeom&, const double*, const double*, double*);
template void conv2d_backward_weight<float>(const ConvGeom&, const float*, const float*, float*);
template void conv2d_backward_weight<double>(const ConvGeom&, const double*, const double*,
                                             double*);
template void conv2d_backward_bias<float>(const ConvGeom&, const float*, float*);
template void conv2d_backward_bias<double>(const ConvGeom&, const double*, double*);

}  // namespace st::cpu
