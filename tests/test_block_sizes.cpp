// Shapes that cross blocks: every blocked, tiled, chunked or threaded loop of the CPU backend
// checked at sizes spanning several blocks plus a tail, in every blocked direction, against a
// float64 reference that does not share the blocking (issue 20: a cross-entropy backward that
// lost its 256-pixel block offset passed every test, as no test had more than 91 pixels).
//
// The blocked loops (file, function: blocks; how the cases below cross them). Sizes are the
// constants of the code; "omp" is an OpenMP split, with the size above which it runs threaded.
//  kernels/cpu/image.cpp
//   softmax_channels, softmax_channels_backward: pixel blocks B = 256 (p0 = blk * B, len =
//     min(B, P - p0)), omp collapse(2) over (n, block) if N*C*P > 32768. Case: P = 3*256 + 37
//     with N*C*P > 32768, and P = 2*256 + 1 serial.
//   block_log_sum_exp, weighted_cross_entropy_forward (per-block double sums, omp reduction),
//     weighted_cross_entropy_backward: the same 256-pixel blocks (logits l = pl + n*C*P + p0,
//     weight w = pw + n*P + p0, target pt[n*P + p0 + i]). Same two shapes.
//   batch_norm_forward, bn_backward (batch_norm_backward, batch_norm_frozen_backward): omp over
//     channels if N*C*P > 32768; batch_norm_frozen_forward: omp collapse(2) over (n, c).
//   resize_bilinear_forward, resize_nearest_forward: omp collapse(2) over (plane, output row) if
//     NC*OH*OW > 32768; their backwards: omp over planes.
//   max_pool2d_forward: omp over planes if NC*OH*OW > 16384; max_pool2d_backward: if NC*H*W >
//     32768. argmax_channels: omp collapse(2) over (n, pixel) if N*C*P > 32768.
//  kernels/cpu/elementwise.cpp
//   unary (relu, scale, add_scalar: omp if n > 65536; sigmoid: n > 16384), unary_backward (relu,
//   sigmoid: n > 65536), binary contiguous add/mul (n > 65536), sum_all (omp reduction, n >
//   65536): n = 3*65536 + 37. binary broadcast and sum_to: rows of for_each_row (strided.h).
//  kernels/cpu/optim.cpp adam_step: omp if n > 65536: n = 2*65536 + 37.
//  kernels/cpu/matmul.cpp
//   matmul: float with M*N*K >= 2^21 through matmul_f32_conv (transposes: omp if M*K, N*K,
//     M*N > 65536; the product is a 1x1 convolution: M = pixels in panels of 24, N = output
//     channels in row blocks of 4 (direct engine when N <= 8), K = taps in K blocks <= 256 and
//     packing pieces of 128); smaller float and all double products: plain loops, omp over rows
//     if M*N*K > 262144. Cases: (205, 557, 23) packed, (1003, 301, 7) direct, (300, 70, 50)
//     plain; the backward products take the other directions through the same paths.
//  kernels/cpu/conv2d_*.cpp (the float path; the double path, conv2d_reference.cpp, is plain
//   loops: the reference here). Constants in conv2d_internal.h:
//   conv2d_engines.cpp pack_rows: pieces of kPackTaps = 128 taps x row blocks of mr (4 or 32),
//     8x8 transposes plus scalar tails; gemm_rows (packed 4x24 engine): panels of kNR = 24 flat
//     pixels (the last one partial: len = min(24, nflat - f0)), groups of kPanelGroup = 4 panels,
//     K blocks of at most kKCMax = 256 taps (k_blocks: k1 = min(Kred, k0 + kcs)), row blocks of
//     kMR = 4 (Mpad); out_direct (1x1 stride 1: full panels straight into the output rows);
//     direct engine (Mpad <= kDirectMaxM = 8): direct_panel, gemm_direct_ldc for panels inside
//     one row; gemm_rows32 / group32 (pixel-broadcast 32x3 engine): groups of kGroup32 = 96
//     stored pixels (glen = min(96, npix - p0)), tiles of kPR = 3 (a partial last tile repeats
//     its last pixel), K blocks of at most kKC32 = 128, row blocks of kWR = 32.
//   conv2d_layout.cpp make_layout: band height BH from kBandBudget = 256 Ki floats; band_cap,
//     balanced_bands (about kItemsPerThread = 3 bands per thread), pixel_chunks (32x3 engine's
//     work items), build_band (rows [i0, i0 + bh + halo), columns [jlo, jhi)).
//   conv2d_forward.cpp forward_f32: items (image, group, band or pixel chunk).
//   conv2d_backward_data.cpp backward_data_f32: stride phases (a, b), pack_taps pieces of
//     kPackK = 4 output channels, bands of phase rows, column-phase pairs (pairs: direct engine;
//     pairs32), the private buffer interleave when the column stride is > 1 (use_tmp).
//   conv2d_backward_weight.cpp backward_weight_f32: items (group, image, band, chunk of tap
//     triples: K3 = round_up(Kred, 3)), pixel reduction chunks of kDotChunk = 1024 (len =
//     min(1024, nflat - fs)), row blocks of kMR = 4, the shared band; backward_bias_f32: float
//     partial sums of 16 pixels plus a scalar tail, omp over channels.
//   conv.cpp conv_transpose2d_forward: backward_data_f32, then the bias over planes.
//   Cases: the packed engine (Kred = 261: 2 K blocks, 3 packing pieces; 13 output channels: a
//   partial row block; 19x21 flat pixels: 17 panels in groups of 4, bands on several threads),
//   the 32x3 engine (Kred = 135: 2 K blocks; 61 channels: 2 row blocks of 32; 667 pixels: 6
//   groups of 96 plus 91 = 30 tiles and a partial one), the direct engine (7 channels, Kred = 270, rows of 26:
//   panels in place and across rows), stride 2 backward data (pairs32 on an even width; use_tmp
//   on an odd one with the direct engine), 1x1 (zero-copy, out_direct: Kred = 300, 377 pixels),
//   backward weight with 35x39 = 1365 flat pixels (2 dot chunks) and a bias gradient of 1295
//   pixels (80 chunks of 16 + 15), a transposed convolution.
//  kernels/cpu/detect.cpp nms_mask: words of 64 boxes from each group's first box
//   (nms_mask_word: first = lo + 64 w, hi = min(first + 64, span.hi)), omp over rows if K > 256:
//   groups of 221 (3 words + 29), 70, 64, 65 boxes, 458 in all. roi_align_forward (omp over
//   (roi, channel) if R*C*PH*PW > 16384) and paste_masks (omp over detections): the per-element
//   math is shared host/device (kernels/common), checked in test_reference_f64.cpp; here the
//   threaded split against one-at-a-time calls (exact).
//  The micro-kernels (conv2d_microkernels.h: AVX2/NEON vectors of 8 with scalar tails in dot,
//  gather2, interleave2, pack) are checked at lengths 0..1029 in test_conv_kernels.cpp.
//  tensor/: no blocked loops (ops.cpp calls the kernels; tensor.cpp copies whole tensors).
//
// Tolerances (tests/README.md): exact where the op is exact (relu, copies, nearest resize,
// max-pool forward, argmax, NMS on integer boxes); linear ops: gamma(K) * sum|terms| for ours
// (float32) plus the same for the float64 reference; composite ops: the running error analyses
// of tests/bounds.h, ours (kernels/cpu's order, float32) plus the reference's (written here in
// PyTorch's order in float64, bounded by the torch model at u = 2^-53).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "bounds.h"
#include "tensor/backend.h"
#include "test_util.h"

using namespace st;
using test::gamma;
using test::kU32;
using test::kU64;

namespace {

Tensor t64(const std::vector<double>& v, const Shape& s) { return Tensor::from_vector(v, s); }
std::vector<double> vals(const Tensor& t) { return t.to_vector<double>(); }
Tensor randn32(const Shape& s, uint64_t seed) { return Tensor::randn(s, seed, DType::F32); }

// Large CPU blocks are cached and handed out again with their old contents: a kernel that skips
// part of its output could show a stale right answer. Each case starts from an empty cache, and
// the element-wise ones fill the blocks they will get with NaN first.
void fresh_cache() { backend_for(Device::cpu()).empty_cache(); }
void poison_cache(const Shape& s, int copies) {
  std::vector<Tensor> keep;
  for (int i = 0; i < copies; ++i)
    keep.push_back(Tensor::full(s, std::numeric_limits<double>::quiet_NaN(), DType::F32));
}

// ours within bound of ref (all three with ours' shape).
void within(const std::string& what, const Tensor& ours, const std::vector<double>& ref,
            const std::vector<double>& bound) {
  INFO(what);
  REQUIRE(size_t(ours.numel()) == ref.size());
  ST_REQUIRE_WITHIN(ours, t64(ref, ours.shape()), t64(bound, ours.shape()));
}
std::vector<double> plus(const Tensor& a, const Tensor& b) {
  auto va = vals(a), vb = vals(b);
  for (size_t i = 0; i < va.size(); ++i) va[i] += vb[i];
  return va;
}

size_t at(int64_t n, int64_t c, int64_t p, int64_t C, int64_t P) {
  return size_t((n * C + c) * P + p);
}

}  // namespace

// ---------------- softmax, log_softmax: 256-pixel blocks ----------------
TEST_CASE("block sizes: softmax and log_softmax across 256-pixel blocks", "[block_sizes][portable]") {
  fresh_cache();
  struct Case {
    int64_t N, C, H, W;
  };
  // 3*256 + 37 pixels, threaded (N*C*P = 33810 > 32768); 2*256 + 1, one thread
  for (const Case c : {Case{3, 14, 23, 35}, Case{1, 4, 1, 513}}) {
    const int64_t N = c.N, C = c.C, P = c.H * c.W;
    const Shape s{N, C, c.H, c.W};
    const Tensor x = mul_scalar(randn32(s, 11 + uint64_t(C)), 3.0), gy = randn32(s, 21);
    const auto xv = vals(x), gv = vals(gy);
    for (bool log_sm : {false, true}) {
      INFO((log_sm ? "log_softmax " : "softmax ") << shape_str(s));
      Tensor xi = x.clone();
      xi.set_requires_grad(true);
      Tensor y = log_sm ? log_softmax_channels(xi) : softmax_channels(xi);
      y.backward(gy);
      // The reference in PyTorch's order (SoftMaxKernel.cpp), float64.
      std::vector<double> ry(xv.size()), rg(xv.size());
      for (int64_t n = 0; n < N; ++n)
        for (int64_t p = 0; p < P; ++p) {
          double m = xv[at(n, 0, p, C, P)], s_ = 0, dot = 0, sg = 0;
          for (int64_t k = 1; k < C; ++k) m = std::max(m, xv[at(n, k, p, C, P)]);
          for (int64_t k = 0; k < C; ++k) s_ += std::exp(xv[at(n, k, p, C, P)] - m);
          for (int64_t k = 0; k < C; ++k) {
            const size_t i = at(n, k, p, C, P);
            ry[i] = log_sm ? (xv[i] - m) - std::log(s_) : std::exp(xv[i] - m) / s_;
            dot += gv[i] * ry[i], sg += gv[i];
          }
          for (int64_t k = 0; k < C; ++k) {
            const size_t i = at(n, k, p, C, P);
            rg[i] = log_sm ? gv[i] - std::exp(ry[i]) * sg : ry[i] * (gv[i] - dot);
          }
        }
      const test::Bounds ours = test::softmax_bounds(x, gy, log_sm, kU32, false);
      const test::Bounds ref = test::softmax_bounds(x, gy, log_sm, kU64, true);
      within("y", y, ry, plus(ours.at("y"), ref.at("y")));
      within("gx", xi.grad(), rg, plus(ours.at("gx"), ref.at("gx")));
    }
  }
}

// ---------------- weighted cross-entropy: 256-pixel blocks ----------------
TEST_CASE("block sizes: weighted cross-entropy forward and backward across 256-pixel blocks",
          "[block_sizes][portable]") {
  fresh_cache();
  struct Case {
    int64_t N, C, H, W;
  };
  for (const Case c : {Case{3, 19, 23, 35}, Case{1, 4, 1, 513}}) {
    const int64_t N = c.N, C = c.C, P = c.H * c.W;
    const Shape s{N, C, c.H, c.W}, pix{N, c.H, c.W};
    INFO(shape_str(s));
    const Tensor logits = mul_scalar(randn32(s, 31 + uint64_t(C)), 2.0);
    const Tensor weight = Tensor::uniform(pix, 0.0, 3.0, 41, DType::F32);
    std::mt19937 rng(51);
    std::vector<int64_t> tv(static_cast<size_t>(N * P));
    for (auto& t : tv) t = int64_t(rng() % uint32_t(C));
    const Tensor target = Tensor::from_vector(tv, pix);
    Tensor li = logits.clone();
    li.set_requires_grad(true);
    Tensor loss = weighted_cross_entropy(li, target, weight);
    loss.backward();
    // The reference in PyTorch's order (log_softmax, then the weighted mean; its backward),
    // float64: lsm = (l - max) - log(sum exp(l - max)); loss = -(sum w lsm_t) / (N P);
    // g_c = [c == t] gz - exp(lsm_c) gz with gz = -(1 / (N P)) w.
    const auto l = vals(logits), w = vals(weight);
    const double NP = double(N * P);
    double total = 0;
    std::vector<double> rg(l.size());
    for (int64_t n = 0; n < N; ++n)
      for (int64_t p = 0; p < P; ++p) {
        double m = l[at(n, 0, p, C, P)], s_ = 0;
        for (int64_t k = 1; k < C; ++k) m = std::max(m, l[at(n, k, p, C, P)]);
        for (int64_t k = 0; k < C; ++k) s_ += std::exp(l[at(n, k, p, C, P)] - m);
        const double ls = std::log(s_), wp = w[size_t(n * P + p)];
        const int64_t t = tv[size_t(n * P + p)];
        total += wp * ((l[at(n, t, p, C, P)] - m) - ls);
        const double gz = -(1.0 / NP) * wp;
        for (int64_t k = 0; k < C; ++k) {
          const size_t i = at(n, k, p, C, P);
          rg[i] = (k == t ? gz : 0.0) - std::exp((l[i] - m) - ls) * gz;
        }
      }
    const double rloss = -(total / NP);
    const test::Bounds ours = test::weighted_ce_bounds(logits, target, weight, 1.0, kU32, false);
    const test::Bounds ref = test::weighted_ce_bounds(logits, target, weight, 1.0, kU64, true);
    within("loss", loss, {rloss}, plus(ours.at("loss"), ref.at("loss")));
    within("glogits", li.grad(), rg, plus(ours.at("glogits"), ref.at("glogits")));
  }
}

// ---------------- batch norm: channels split across threads ----------------
TEST_CASE("block sizes: batch norm, batch and frozen statistics, channels across threads",
          "[block_sizes][portable]") {
  fresh_cache();
  const int64_t N = 2, C = 37, H = 23, W = 21, P = H * W;  // N*C*P = 35742 > 32768
  const Shape s{N, C, H, W};
  const double eps = 1e-5;
  const Tensor x = add_scalar(randn32(s, 61), 0.5), gy = randn32(s, 62);
  const Tensor gamma_t = Tensor::uniform({C}, 0.5, 1.5, 63, DType::F32);
  const Tensor beta_t = randn32({C}, 64);
  const Tensor mean_t = randn32({C}, 65), var_t = Tensor::uniform({C}, 0.5, 2.0, 66, DType::F32);
  const auto xv = vals(x), gv = vals(gy), gm = vals(gamma_t), bt = vals(beta_t);
  const auto mv = vals(mean_t), vv = vals(var_t);
  for (bool frozen : {false, true}) {
    INFO((frozen ? "frozen" : "batch statistics"));
    Tensor xi = x.clone(), gi = gamma_t.clone(), bi = beta_t.clone();
    for (Tensor* t : {&xi, &gi, &bi}) t->set_requires_grad(true);
    Tensor y = frozen ? batch_norm_frozen(xi, gi, bi, mean_t, var_t, eps) : batch_norm(xi, gi, bi, eps);
    y.backward(gy);
    // The reference in PyTorch's order (batch_norm_cpu, float64; tests/bounds.h bn_error_torch).
    std::vector<double> ry(xv.size()), rgx(xv.size()), rgg(static_cast<size_t>(C)), rgb(static_cast<size_t>(C));
    const double M = double(N * P);
    for (int64_t c = 0; c < C; ++c) {
      double mean = 0, var = 0;
      if (frozen) {
        mean = mv[size_t(c)], var = vv[size_t(c)];
      } else {
        for (int64_t n = 0; n < N; ++n)
          for (int64_t p = 0; p < P; ++p) mean += xv[at(n, c, p, C, P)];
        mean /= M;
        for (int64_t n = 0; n < N; ++n)
          for (int64_t p = 0; p < P; ++p) var += (xv[at(n, c, p, C, P)] - mean) * (xv[at(n, c, p, C, P)] - mean);
        var /= M;
      }
      const double invstd = 1.0 / std::sqrt(var + eps), alpha = invstd * gm[size_t(c)];
      const double shift = bt[size_t(c)] - mean * alpha;
      double sum = 0, dotp = 0;
      for (int64_t n = 0; n < N; ++n)
        for (int64_t p = 0; p < P; ++p) {
          const size_t i = at(n, c, p, C, P);
          ry[i] = xv[i] * alpha + shift;
          sum += gv[i], dotp += (xv[i] - mean) * gv[i];
        }
      const double k = dotp * invstd * invstd / M, gmean = sum / M;
      for (int64_t n = 0; n < N; ++n)
        for (int64_t p = 0; p < P; ++p) {
          const size_t i = at(n, c, p, C, P);
          rgx[i] = frozen ? gv[i] * invstd * gm[size_t(c)]
                          : (gv[i] - gmean - (xv[i] - mean) * k) * invstd * gm[size_t(c)];
        }
      rgg[size_t(c)] = dotp * invstd, rgb[size_t(c)] = sum;
    }
    const test::Bounds ours =
        test::batch_norm_bounds(x, gy, gamma_t, beta_t, eps, frozen, mean_t, var_t, kU32, false);
    const test::Bounds ref =
        test::batch_norm_bounds(x, gy, gamma_t, beta_t, eps, frozen, mean_t, var_t, kU64, true);
    within("y", y, ry, plus(ours.at("y"), ref.at("y")));
    within("gx", xi.grad(), rgx, plus(ours.at("gx"), ref.at("gx")));
    within("gweight", gi.grad(), rgg, plus(ours.at("gweight"), ref.at("gweight")));
    within("gbias", bi.grad(), rgb, plus(ours.at("gbias"), ref.at("gbias")));
  }
}

// ---------------- resampling, pooling, argmax: planes and rows across threads ----------------
TEST_CASE("block sizes: bilinear and nearest resize, planes and rows across threads",
          "[block_sizes][portable]") {
  fresh_cache();
  {  // bilinear 9x13 -> 97x61, 6 planes: 35502 outputs > 32768
    const int64_t N = 2, C = 3, H = 9, W = 13, OH = 97, OW = 61, NC = N * C;
    const Tensor x = randn32({N, C, H, W}, 71), gy = randn32({N, C, OH, OW}, 72);
    Tensor xi = x.clone();
    xi.set_requires_grad(true);
    Tensor y = resize_bilinear(xi, OH, OW);
    y.backward(gy);
    // align_corners=False from its definition, float64: source coordinate (d + 0.5) in/out - 0.5,
    // clamped at 0; taps floor(s) and floor(s) + 1 (clamped to in - 1) with weights 1 - l, l.
    struct Tap {
      int64_t i0, i1;
      double l0, l1;
    };
    auto taps = [](int64_t in, int64_t out) {
      std::vector<Tap> t;
      for (int64_t d = 0; d < out; ++d) {
        const double s = std::max((double(d) + 0.5) * (double(in) / double(out)) - 0.5, 0.0);
        const int64_t i0 = std::min<int64_t>(int64_t(std::floor(s)), in - 1);
        t.push_back({i0, std::min(i0 + 1, in - 1), 1.0 - (s - double(i0)), s - double(i0)});
      }
      return t;
    };
    const auto ty = taps(H, OH), tx = taps(W, OW);
    const auto xv = vals(x), gv = vals(gy);
    std::vector<double> ry(gv.size(), 0.0), rg(xv.size(), 0.0);
    for (int64_t q = 0; q < NC; ++q)
      for (int64_t i = 0; i < OH; ++i)
        for (int64_t j = 0; j < OW; ++j) {
          const Tap& a = ty[size_t(i)];
          const Tap& b = tx[size_t(j)];
          const size_t o = size_t((q * OH + i) * OW + j);
          const int64_t rows[2] = {a.i0, a.i1}, cols[2] = {b.i0, b.i1};
          const double hw[2] = {a.l0, a.l1}, ww[2] = {b.l0, b.l1};
          for (int r = 0; r < 2; ++r)
            for (int k = 0; k < 2; ++k) {
              const size_t src = size_t((q * H + rows[r]) * W + cols[k]);
              ry[o] += hw[r] * ww[k] * xv[src];
              rg[src] += hw[r] * ww[k] * gv[o];
            }
        }
    const test::Bounds ours = test::bilinear_bounds(x, gy, kU32, true);
    const test::Bounds ref = test::bilinear_bounds(x, gy, kU64, false);
    within("bilinear y", y, ry, plus(ours.at("y"), ref.at("y")));
    within("bilinear gx", xi.grad(), rg, plus(ours.at("gx"), ref.at("gx")));
  }
  {  // nearest 47x61 -> 94x122 (exactly 2x: source index d / 2), 6 planes: 68808 outputs
    const int64_t N = 2, C = 3, H = 47, W = 61, OH = 94, OW = 122, NC = N * C;
    const Tensor x = randn32({N, C, H, W}, 73), gy = randn32({N, C, OH, OW}, 74);
    Tensor xi = x.clone();
    xi.set_requires_grad(true);
    Tensor y = resize_nearest(xi, OH, OW);
    y.backward(gy);
    const auto xv = vals(x), gv = vals(gy);
    std::vector<double> ry(gv.size()), rg(xv.size(), 0.0), absg(xv.size(), 0.0);
    for (int64_t q = 0; q < NC; ++q)
      for (int64_t i = 0; i < OH; ++i)
        for (int64_t j = 0; j < OW; ++j) {
          const size_t o = size_t((q * OH + i) * OW + j), src = size_t((q * H + i / 2) * W + j / 2);
          ry[o] = xv[src];
          rg[src] += gv[o], absg[src] += std::abs(gv[o]);
        }
    within("nearest y (exact)", y, ry, std::vector<double>(ry.size(), 0.0));
    // gx: sums of 4 gy (K = 4), in float and in the reference's double
    for (double& b : absg) b *= gamma(4, kU32) + gamma(4, kU64);
    within("nearest gx", xi.grad(), rg, absg);
  }
}

// Max pool in float64 from its definition over NC planes of H x W: ry the outputs (the first
// maximum of each window in window order), rg the input gradient of gy (the scatter-sum), absg the
// sums of |gy| each input gradient element receives.
static void max_pool_reference(const std::vector<double>& xv, const std::vector<double>& gv, int64_t NC,
                               int64_t H, int64_t W, const Pool2dParams& pp, int64_t OH, int64_t OW,
                               std::vector<double>& ry, std::vector<double>& rg, std::vector<double>& absg) {
  ry.assign(gv.size(), 0.0), rg.assign(xv.size(), 0.0), absg.assign(xv.size(), 0.0);
  for (int64_t q = 0; q < NC; ++q)
    for (int64_t i = 0; i < OH; ++i)
      for (int64_t j = 0; j < OW; ++j) {
        int64_t arg = -1;
        for (int64_t r = i * pp.stride_h - pp.pad_h; r < i * pp.stride_h - pp.pad_h + pp.kernel_h; ++r)
          for (int64_t k = j * pp.stride_w - pp.pad_w; k < j * pp.stride_w - pp.pad_w + pp.kernel_w; ++k)
            if (r >= 0 && r < H && k >= 0 && k < W &&
                (arg < 0 || xv[size_t(q * H * W + r * W + k)] > xv[size_t(q * H * W + arg)]))
              arg = r * W + k;  // the first maximum in window order
        const size_t o = size_t((q * OH + i) * OW + j), src = size_t(q * H * W + arg);
        ry[o] = xv[src];
        rg[src] += gv[o], absg[src] += std::abs(gv[o]);
      }
}

// Max pool whose two directions differ in every parameter (kernel, stride, padding), small and
// large enough for both the serial and the threaded path: a formula that mixes the directions
// (a row offset from the column padding, ...) gives other windows. Exact: a max selects an input.
TEST_CASE("block sizes: max pool with different kernel, stride and padding per direction",
          "[block_sizes][portable]") {
  fresh_cache();
  struct Case {
    int64_t N, C, H, W;
  };
  for (const Case c : {Case{1, 3, 11, 14}, Case{2, 8, 97, 83}}) {
    Pool2dParams pp;
    pp.kernel_h = 3, pp.kernel_w = 2, pp.stride_h = 2, pp.stride_w = 1, pp.pad_h = 1, pp.pad_w = 0;
    const int64_t NC = c.N * c.C, H = c.H, W = c.W;
    const int64_t OH = (H + 2 * pp.pad_h - pp.kernel_h) / pp.stride_h + 1;
    const int64_t OW = (W + 2 * pp.pad_w - pp.kernel_w) / pp.stride_w + 1;
    INFO(c.N << "x" << c.C << "x" << H << "x" << W);
    const Tensor x = randn32({c.N, c.C, H, W}, 91 + uint64_t(H)), gy = randn32({c.N, c.C, OH, OW}, 92);
    Tensor xi = x.clone();
    xi.set_requires_grad(true);
    Tensor y = max_pool2d(xi, pp);
    REQUIRE(y.shape() == Shape{c.N, c.C, OH, OW});
    y.backward(gy);
    std::vector<double> ry, rg, absg;
    max_pool_reference(vals(x), vals(gy), NC, H, W, pp, OH, OW, ry, rg, absg);
    within("max_pool y (exact)", y, ry, std::vector<double>(ry.size(), 0.0));
    // An input is in at most 2 windows down and 2 across: sums of at most 4 gy.
    for (double& b : absg) b *= gamma(4, kU32) + gamma(4, kU64);
    within("max_pool gx", xi.grad(), rg, absg);
  }
}

TEST_CASE("block sizes: max pool and argmax, planes and pixels across threads",
          "[block_sizes][portable]") {
  fresh_cache();
  {  // 3x3 stride 2 pad 1 over 16 planes of 61x67: 16864 outputs > 16384, 65392 inputs > 32768
    const int64_t N = 2, C = 8, H = 61, W = 67, NC = N * C;
    Pool2dParams pp;
    pp.kernel_h = pp.kernel_w = 3, pp.stride_h = pp.stride_w = 2, pp.pad_h = pp.pad_w = 1;
    const int64_t OH = (H + 2 - 3) / 2 + 1, OW = (W + 2 - 3) / 2 + 1;
    const Tensor x = randn32({N, C, H, W}, 81), gy = randn32({N, C, OH, OW}, 82);
    Tensor xi = x.clone();
    xi.set_requires_grad(true);
    Tensor y = max_pool2d(xi, pp);
    REQUIRE(y.shape() == Shape{N, C, OH, OW});
    y.backward(gy);
    std::vector<double> ry, rg, absg;
    max_pool_reference(vals(x), vals(gy), NC, H, W, pp, OH, OW, ry, rg, absg);
    within("max_pool y (exact)", y, ry, std::vector<double>(ry.size(), 0.0));
    for (double& b : absg) b *= gamma(4, kU32) + gamma(4, kU64);  // at most 4 windows per input
    within("max_pool gx", xi.grad(), rg, absg);
  }
  {  // argmax over 7 channels of 2 x 47x53 pixels (34874 > 32768); values in {0..4}: many ties
    const int64_t N = 2, C = 7, H = 47, W = 53, P = H * W;
    std::mt19937 rng(83);
    std::vector<double> xv(static_cast<size_t>(N * C * P));
    for (double& v : xv) v = double(rng() % 5);
    const Tensor x = t64(xv, {N, C, H, W}).to(DType::F32);
    const auto got = argmax_channels(x).to_vector<int64_t>();
    REQUIRE(got.size() == size_t(N * P));
    for (int64_t n = 0; n < N; ++n)
      for (int64_t p = 0; p < P; ++p) {
        int64_t arg = 0;
        for (int64_t k = 1; k < C; ++k)
          if (xv[at(n, k, p, C, P)] > xv[at(n, arg, p, C, P)]) arg = k;  // first maximum wins
        INFO("pixel " << n << ", " << p);
        REQUIRE(got[size_t(n * P + p)] == arg);
      }
  }
}

// ---------------- element-wise ops, sums, Adam: past the threading thresholds ----------------
TEST_CASE("block sizes: element-wise ops and sums across the threaded split", "[block_sizes]") {
  fresh_cache();
  const int64_t n = 3 * 65536 + 37;
  const Shape s{n};
  const Tensor a = randn32(s, 91), b = randn32(s, 92), gy = randn32(s, 93);
  const auto av = vals(a), bv = vals(b), gv = vals(gy);
  const std::vector<double> zero(static_cast<size_t>(n), 0.0);
  // One rounding of a float result whose exact value the double reference holds (a product of
  // two floats, or a sum of two, is exact in double up to one double rounding): gamma(1) |terms|.
  auto one_rounding = [&](const std::vector<double>& abs_terms) {
    std::vector<double> out(abs_terms);
    for (double& v : out) v *= gamma(1, kU32) + gamma(1, kU64);
    return out;
  };
  const size_t un = static_cast<size_t>(n);
  std::vector<double> r(un), r2(un), ab(un), ab2(un);
  {  // relu and its backward: exact
    Tensor ai = a.clone();
    ai.set_requires_grad(true);
    poison_cache(s, 4);
    Tensor y = relu(ai);
    poison_cache(s, 4);
    y.backward(gy);
    for (size_t i = 0; i < r.size(); ++i) r[i] = av[i] > 0 ? av[i] : 0.0, r2[i] = av[i] > 0 ? gv[i] : 0.0;
    within("relu y", y, r, zero);
    within("relu gx", ai.grad(), r2, zero);
  }
  {  // sigmoid: 1 / (1 + exp(-x)); gx = gy (1 - y) y (reference order)
    Tensor ai = a.clone();
    ai.set_requires_grad(true);
    poison_cache(s, 4);
    Tensor y = sigmoid(ai);
    poison_cache(s, 4);
    y.backward(gy);
    for (size_t i = 0; i < r.size(); ++i) {
      r[i] = 1.0 / (1.0 + std::exp(-av[i]));
      r2[i] = gv[i] * (1.0 - r[i]) * r[i];
    }
    const test::Bounds ours = test::sigmoid_bounds(a, gy, kU32, false);
    const test::Bounds ref = test::sigmoid_bounds(a, gy, kU64, true);
    within("sigmoid y", y, r, plus(ours.at("y"), ref.at("y")));
    within("sigmoid gx", ai.grad(), r2, plus(ours.at("gx"), ref.at("gx")));
  }
  {  // scale, add_scalar (constants exact in float): one rounding each
    poison_cache(s, 4);
    Tensor y1 = mul_scalar(a, -0.75);
    for (size_t i = 0; i < r.size(); ++i) r[i] = -0.75 * av[i], ab[i] = std::abs(r[i]);
    within("scale", y1, r, one_rounding(ab));
    poison_cache(s, 4);
    Tensor y2 = add_scalar(a, 1.5);
    for (size_t i = 0; i < r.size(); ++i) r[i] = av[i] + 1.5, ab[i] = std::abs(av[i]) + 1.5;
    within("add_scalar", y2, r, one_rounding(ab));
  }
  {  // add, mul (contiguous) and the backward of mul
    Tensor ai = a.clone(), bi = b.clone();
    ai.set_requires_grad(true), bi.set_requires_grad(true);
    poison_cache(s, 4);
    Tensor y1 = add(a, b);
    for (size_t i = 0; i < r.size(); ++i) r[i] = av[i] + bv[i], ab[i] = std::abs(av[i]) + std::abs(bv[i]);
    within("add", y1, r, one_rounding(ab));
    poison_cache(s, 4);
    Tensor y2 = mul(ai, bi);
    poison_cache(s, 4);
    y2.backward(gy);
    for (size_t i = 0; i < r.size(); ++i) r[i] = av[i] * bv[i], ab[i] = std::abs(r[i]);
    within("mul", y2, r, one_rounding(ab));
    for (size_t i = 0; i < r.size(); ++i) r[i] = gv[i] * bv[i], ab[i] = std::abs(r[i]);
    for (size_t i = 0; i < r.size(); ++i) r2[i] = gv[i] * av[i], ab2[i] = std::abs(r2[i]);
    within("mul ga", ai.grad(), r, one_rounding(ab));
    within("mul gb", bi.grad(), r2, one_rounding(ab2));
  }
  {  // sum_all: a double accumulator (any order), then one float rounding
    const Tensor total = sum(a);
    std::vector<test::Bounded> terms;
    for (double v : av) terms.push_back(test::exact(v, kU64));
    const test::Bounded ours = test::to_format(test::sum(terms, kU64), kU32);
    double rs = 0, abs_sum = 0;
    for (double v : av) rs += v, abs_sum += std::abs(v);
    within("sum", total, {rs}, {ours.e + gamma(double(n - 1), kU64) * abs_sum});
  }
  {  // broadcast add (rows of for_each_row) and its bias gradient through sum_to
    const int64_t N = 3, C = 37, H = 29, W = 31;
    const Tensor x = randn32({N, C, H, W}, 94), bias = randn32({1, C, 1, 1}, 95);
    const Tensor g4 = randn32({N, C, H, W}, 96);
    Tensor bi = bias.clone();
    bi.set_requires_grad(true);
    Tensor y = add(x, bi);
    y.backward(g4);
    const auto xv = vals(x), bv4 = vals(bias), g4v = vals(g4);
    std::vector<double> ry(xv.size()), ay(xv.size()), rb(static_cast<size_t>(C), 0.0), abias(static_cast<size_t>(C), 0.0);
    for (size_t i = 0; i < xv.size(); ++i) {
      const size_t c = i / size_t(H * W) % size_t(C);
      ry[i] = xv[i] + bv4[c], ay[i] = std::abs(xv[i]) + std::abs(bv4[c]);
      rb[c] += g4v[i], abias[c] += std::abs(g4v[i]);
    }
    within("broadcast add", y, ry, one_rounding(ay));
    // sum_to: N*H*W terms summed in double, then rounded to float once
    std::vector<double> bb(static_cast<size_t>(C));
    for (size_t c = 0; c < bb.size(); ++c) {
      const double e64 = gamma(double(N * H * W), kU64) * abias[c];
      bb[c] = 2 * e64 + kU32 * (std::abs(rb[c]) + e64);
    }
    within("broadcast add gbias (sum_to)", bi.grad(), rb, bb);
  }
}

TEST_CASE("block sizes: Adam across the threaded split", "[block_sizes]") {
  fresh_cache();
  const int64_t n = 2 * 65536 + 37;
  const Tensor p0 = randn32({n}, 101);
  const test::AdamHyper hp{0.01, 0.9, 0.999, 1e-8};
  Tensor p = p0.clone(), m = Tensor::zeros({n}), v = Tensor::zeros({n});
  std::vector<test::AdamState> ours, ref;
  const auto pv = vals(p0);
  std::vector<double> rp(pv), rm(static_cast<size_t>(n), 0.0), rv(static_cast<size_t>(n), 0.0);
  for (double x : pv) ours.push_back(test::adam_start(x, kU32)), ref.push_back(test::adam_start(x, kU64));
  for (int k = 1; k <= 3; ++k) {
    const Tensor g = randn32({n}, 110 + uint64_t(k));
    AdamParams ap;
    ap.lr = hp.lr, ap.beta1 = hp.beta1, ap.beta2 = hp.beta2, ap.eps = hp.eps, ap.step = k;
    backend_for(Device::cpu()).adam_step(p, g, m, v, ap);
    // PyTorch's single-tensor Adam in float64
    const double bc1 = 1 - std::pow(hp.beta1, k), bc2 = 1 - std::pow(hp.beta2, k);
    const auto gv = vals(g);
    for (size_t i = 0; i < gv.size(); ++i) {
      rm[i] = rm[i] * hp.beta1 + (1 - hp.beta1) * gv[i];
      rv[i] = rv[i] * hp.beta2 + (1 - hp.beta2) * gv[i] * gv[i];
      const double denom = std::sqrt(rv[i]) / std::sqrt(bc2) + hp.eps;
      rp[i] = rp[i] + (-(hp.lr / bc1)) * rm[i] / denom;
      test::adam_model_step(ours[i], test::exact(gv[i], kU32), hp, k, false);
      test::adam_model_step(ref[i], test::exact(gv[i], kU64), hp, k, true);
    }
  }
  std::vector<double> bp, bm, bv;
  for (size_t i = 0; i < size_t(n); ++i) {
    bp.push_back(ours[i].p.e + ref[i].p.e);
    bm.push_back(ours[i].m.e + ref[i].m.e);
    bv.push_back(ours[i].v.e + ref[i].v.e);
  }
  within("Adam param", p, rp, bp);
  within("Adam m", m, rm, bm);
  within("Adam v", v, rv, bv);
}

// ---------------- matmul: the convolution engine's tiles and the plain loops ----------------
// (Tagged [conv] as well: large float products run through the convolution engine, so they run
// again with the portable micro-kernels.)
TEST_CASE("block sizes: matmul across the convolution engine's tiles and the row split",
          "[block_sizes][conv]") {
  fresh_cache();
  struct Case {
    int64_t M, K, N;
    bool b_transposed;  // b given as the transposed view of an (N, K) tensor (a linear's weight)
  };
  for (const Case c : {Case{205, 557, 23, false}, Case{205, 557, 23, true},
                       Case{1003, 301, 7, false}, Case{300, 70, 50, false}}) {
    const int64_t M = c.M, K = c.K, N = c.N;
    INFO("M " << M << " K " << K << " N " << N << (c.b_transposed ? " (b transposed)" : ""));
    const Tensor a = randn32({M, K}, 121), gy = randn32({M, N}, 123);
    const Tensor bt = randn32({N, K}, 122);
    const Tensor b = bt.transpose(0, 1).contiguous();
    Tensor ai = a.clone();
    Tensor bi = c.b_transposed ? bt.clone() : b.clone();
    ai.set_requires_grad(true), bi.set_requires_grad(true);
    Tensor y = matmul(ai, c.b_transposed ? bi.transpose(0, 1) : bi);
    y.backward(gy);
    const auto av = vals(a), bv = vals(b), gv = vals(gy);
    // y = a b (K terms), ga = gy b^T (N terms), gb = a^T gy (M terms): float64 loops
    std::vector<double> ry(static_cast<size_t>(M * N), 0), ay(ry.size(), 0), rga(av.size(), 0), aga(av.size(), 0);
    std::vector<double> rgb(bv.size(), 0), agb(bv.size(), 0);
    for (int64_t i = 0; i < M; ++i)
      for (int64_t k = 0; k < K; ++k) {
        const double x = av[size_t(i * K + k)];
        for (int64_t j = 0; j < N; ++j) {
          const double w = bv[size_t(k * N + j)], g = gv[size_t(i * N + j)];
          ry[size_t(i * N + j)] += x * w, ay[size_t(i * N + j)] += std::abs(x * w);
          rga[size_t(i * K + k)] += g * w, aga[size_t(i * K + k)] += std::abs(g * w);
          rgb[size_t(k * N + j)] += x * g, agb[size_t(k * N + j)] += std::abs(x * g);
        }
      }
    auto bound = [](std::vector<double> abs_sum, int64_t terms) {
      for (double& v : abs_sum) v *= gamma(double(terms), kU32) + gamma(double(terms), kU64);
      return abs_sum;
    };
    within("y", y, ry, bound(ay, K));
    within("ga", ai.grad(), rga, bound(aga, N));
    Tensor gb = c.b_transposed ? bi.grad().transpose(0, 1).contiguous() : bi.grad();
    within("gb", gb, rgb, bound(agb, M));
  }
}

// ---------------- conv2d: every engine's tiles, blocks, bands and chunks ----------------
namespace {

struct ConvCase {
  const char* what;
  int64_t N, C, H, W, K, R, S, stride, pad;
};

// conv2d in float32 (forward, then backward from gy: gx, gw, gb) against the op's float64 path
// (kernels/cpu/conv2d_reference.cpp: direct loops over every term, no bands, tiles or blocks),
// each within gamma(K) sum|terms| of float32 plus that of float64 (tests/bounds.h conv2d_k).
void check_conv(const ConvCase& c) {
  INFO(c.what << ": N" << c.N << " C" << c.C << " " << c.H << "x" << c.W << " K" << c.K << " k"
               << c.R << "x" << c.S << " s" << c.stride << " p" << c.pad);
  Conv2dParams p;
  p.stride_h = p.stride_w = c.stride, p.pad_h = p.pad_w = c.pad;
  const int64_t OH = (c.H + 2 * c.pad - c.R) / c.stride + 1, OW = (c.W + 2 * c.pad - c.S) / c.stride + 1;
  const uint64_t seed = uint64_t(c.C * 1000 + c.K);
  const test::Named in = {{"x", randn32({c.N, c.C, c.H, c.W}, seed)},
                          {"w", randn32({c.K, c.C, c.R, c.S}, seed + 1)},
                          {"b", randn32({c.K}, seed + 2)}};
  const Tensor gy = randn32({c.N, c.K, OH, OW}, seed + 3);
  const test::Forward f = [p](const std::vector<Tensor>& t) { return conv2d(t[0], t[1], t[2], p); };
  const std::vector<std::string> diff = {"x", "w", "b"};
  std::vector<Tensor> leaves = test::leaves(in, diff, DType::F32, false);
  Tensor y = f(leaves);
  y.backward(gy);
  const test::Bounds ours = {{"y", y.detach()}, {"gx", leaves[0].grad()}, {"gw", leaves[1].grad()},
                             {"gb", leaves[2].grad()}};
  const test::Bounds ref = test::propagate64(f, in, diff, false, gy.to(DType::F64));
  const test::Bounds bound = test::gamma_bounds(test::abs_terms(f, in, diff, gy),
                                                test::conv2d_k(in[1].second.shape(), y.shape(), p, true),
                                                kU32, kU64);
  for (const auto& [role, b] : bound) {
    INFO(role);
    ST_REQUIRE_WITHIN(ours.at(role), ref.at(role), b);
  }
}

}  // namespace

TEST_CASE("block sizes: conv2d packed 4x24 engine and the direct engine", "[block_sizes][conv]") {
  fresh_cache();
  // packed: Kred = 29*9 = 261 (2 K blocks of 131, packing pieces 128 + 128 + 5), 13 output
  // channels (row blocks of 4, the last one with 1 real row), 19 x 21 = 399 flat pixels per
  // image (16 panels of 24 in groups of 4, and one of 15; bands of 6-7 rows on two threads);
  // backward data: the 32x3 engine (29 input channels, 13*9 taps).
  check_conv({"packed 4x24", 2, 29, 19, 19, 13, 3, 3, 1, 1});
  // direct (7 output channels, Mpad 8): Kred = 270 (2 K blocks), rows of 26 (+2 junk): panels
  // inside a row go straight to the output, the others through the tile.
  check_conv({"direct", 1, 30, 21, 26, 7, 3, 3, 1, 1});
}

TEST_CASE("block sizes: conv2d pixel-broadcast 32x3 engine", "[block_sizes][conv]") {
  fresh_cache();
  // 61 output channels (2 row blocks of 32, the second with 29 real rows), Kred = 15*9 = 135
  // (2 K blocks of 68), 23 x 29 = 667 pixels (6 groups of 96 and 91 = 30 tiles of 3 and a
  // partial one on one thread; pixel chunks of over 96 pixels on two); backward data: the packed
  // engine with 61*9 = 549 taps (3 K blocks).
  check_conv({"32x3", 1, 15, 23, 29, 61, 3, 3, 1, 1});
}

TEST_CASE("block sizes: conv2d stride-2 backward-data phases", "[block_sizes][conv][portable]") {
  fresh_cache();
  // 32 input channels (the 32x3 engine for backward data, 20*4 taps per phase), even width:
  // column phases in pairs (pairs32); 9 x 13 gy.
  check_conv({"stride 2 pairs32", 1, 32, 18, 26, 20, 3, 3, 2, 1});
  // 6 input channels (direct engine), odd width: phases through the private buffer, interleaved.
  check_conv({"stride 2 use_tmp", 2, 6, 17, 23, 11, 3, 3, 2, 1});
}

TEST_CASE("block sizes: conv2d 1x1 (zero copy) and backward-weight chunks", "[block_sizes][conv]") {
  fresh_cache();
  // 1x1 stride 1: the band is the source, full panels go straight into the output rows;
  // Kred = 300 (2 K blocks of 150), 13 x 29 = 377 pixels (15 panels and 17); backward weight
  // with no junk columns.
  check_conv({"1x1", 1, 300, 13, 29, 10, 1, 1, 1, 0});
  // backward weight: 35 x 39 = 1365 flat pixels (dot chunks of 1024 + 341), Kred = 144 (48 tap
  // triples, split across the threads); bias gradient over 1295 pixels (80 x 16 + 15).
  check_conv({"backward weight chunks", 1, 16, 35, 37, 9, 3, 3, 1, 1});
}

TEST_CASE("block sizes: conv_transpose2d across phases and planes", "[block_sizes][conv][portable]") {
  fresh_cache();
  // Forward only (backward data of the convolution that maps y back to x, then the bias):
  // x (2, 20, 9, 13), w (20, 6, 3, 3), stride 2, pad 1 -> y (2, 6, 17, 25).
  Conv2dParams p;
  p.stride_h = p.stride_w = 2, p.pad_h = p.pad_w = 1;
  const Tensor x = randn32({2, 20, 9, 13}, 131), w = randn32({20, 6, 3, 3}, 132), b = randn32({6}, 133);
  const Tensor y = conv_transpose2d(x, w, b, p);
  const Tensor y64 = conv_transpose2d(x.to(DType::F64), w.to(DType::F64), b.to(DType::F64), p);
  const Tensor a64 = conv_transpose2d(test::abs_of(x), test::abs_of(w), test::abs_of(b), p);
  const double K = test::conv_transpose2d_k(w.shape(), p);
  ST_REQUIRE_WITHIN(y, y64, mul_scalar(a64, gamma(K, kU32) + gamma(K, kU64)));
}

// ---------------- NMS: words of 64 boxes per group ----------------
TEST_CASE("block sizes: NMS overlap mask in words of 64 boxes, rows across threads",
          "[block_sizes][portable]") {
  fresh_cache();
  // Integer boxes (sides 5..40, corners < 100): areas, intersections and unions are exact in
  // float, and IoU > 1/2 is decided by fl(inter / union) exactly as by 2 inter > union, since
  // inter / union > 1/2 means it exceeds 1/2 by at least 1 / (2 union) > 2^-25 (union < 2^24).
  const std::vector<int64_t> sizes = {221, 1, 70, 64, 65, 37};  // 458 boxes > 256: threaded
  std::mt19937 rng(141);
  std::vector<float> bx;
  std::vector<int64_t> grp;
  for (size_t g = 0; g < sizes.size(); ++g)
    for (int64_t i = 0; i < sizes[g]; ++i) {
      const float x0 = float(rng() % 60), y0 = float(rng() % 60);
      bx.insert(bx.end(), {x0, y0, x0 + float(5 + rng() % 36), y0 + float(5 + rng() % 36)});
      grp.push_back(int64_t(g));
    }
  const int64_t K = int64_t(grp.size()), words = 4;  // ceil(221 / 64)
  const Tensor boxes = Tensor::from_vector(bx, {K, 4}), groups = Tensor::from_vector(grp, {K});
  Tensor mask = Tensor::full({K, words}, -1.0, DType::I64);
  backend_for(Device::cpu()).nms_mask(boxes, groups, 0.5, mask);
  const auto got = mask.to_vector<int64_t>();
  int64_t lo = 0, set_bits = 0;
  for (size_t g = 0; g < sizes.size(); ++g) {
    const int64_t hi = lo + sizes[g];
    for (int64_t i = lo; i < hi; ++i)
      for (int64_t w = 0; w < words; ++w) {
        uint64_t want = 0;
        for (int64_t j = std::max(i + 1, lo + 64 * w); j < std::min(hi, lo + 64 * w + 64); ++j) {
          const float* a = &bx[size_t(4 * i)];
          const float* c = &bx[size_t(4 * j)];
          const double iw = std::max(0.0, double(std::min(a[2], c[2]) - std::max(a[0], c[0])));
          const double ih = std::max(0.0, double(std::min(a[3], c[3]) - std::max(a[1], c[1])));
          const double inter = iw * ih;
          const double uni = double(a[2] - a[0]) * (a[3] - a[1]) + double(c[2] - c[0]) * (c[3] - c[1]) - inter;
          if (2 * inter > uni) want |= uint64_t(1) << (j - lo - 64 * w);
        }
        INFO("box " << i << " (group " << g << "), word " << w);
        REQUIRE(uint64_t(got[size_t(i * words + w)]) == want);
        set_bits += __builtin_popcountll(want);
      }
    lo = hi;
  }
  REQUIRE(set_bits > 100);  // (the boxes do overlap: the mask is not trivially zero)
}

// ---------------- ROIAlign, mask paste: the threaded split against single calls ----------------
// Their per-element math is shared by the backends (kernels/common) and checked against float64
// references in test_reference_f64.cpp; what is blocked here is only the OpenMP split over
// (roi, channel) and over detections, so a threaded call must equal, bit for bit, the same rows
// computed one call at a time (each below the threshold, on one thread).
TEST_CASE("block sizes: ROIAlign and mask paste, threaded calls equal single ones",
          "[block_sizes][portable]") {
  fresh_cache();
  Backend& cpu = backend_for(Device::cpu());
  {  // 12 rois x 32 channels x 7x7 bins = 18816 > 16384
    const int64_t N = 2, C = 32, H = 23, W = 29, R = 12, PH = 7, PW = 7;
    const Tensor x = randn32({N, C, H, W}, 151);
    std::mt19937 rng(152);
    std::uniform_real_distribution<float> u(0.0f, 1.0f);
    std::vector<float> rv;
    for (int64_t r = 0; r < R; ++r) {
      const float x0 = u(rng) * 40, y0 = u(rng) * 30;
      rv.insert(rv.end(), {float(r % N), x0, y0, x0 + 2 + u(rng) * 20, y0 + 2 + u(rng) * 20});
    }
    const Tensor rois = Tensor::from_vector(rv, {R, 5});
    Tensor all = Tensor::full({R, C, PH, PW}, -7.0);
    cpu.roi_align_forward(x, rois, 0.5, 0, true, all);
    const auto got = all.to_vector<float>();
    for (int64_t r = 0; r < R; ++r) {
      const Tensor one_roi = Tensor::from_vector(std::vector<float>(rv.begin() + 5 * r, rv.begin() + 5 * r + 5), {1, 5});
      Tensor one = Tensor::full({1, C, PH, PW}, -7.0);
      cpu.roi_align_forward(x, one_roi, 0.5, 0, true, one);
      const auto want = one.to_vector<float>();
      for (size_t i = 0; i < want.size(); ++i) {
        INFO("roi " << r << ", element " << i);
        REQUIRE(got[size_t(r) * want.size() + i] == want[i]);
      }
    }
  }
  for (bool tv : {false, true}) {  // 9 detections pasted into 41x53 images
    INFO((tv ? "torchvision paste" : "Detectron2 paste"));
    const int64_t D = 9, M = 28, H = 41, W = 53;
    const Tensor masks = Tensor::uniform({D, M, M}, 0.0, 1.0, 153, DType::F32);
    std::mt19937 rng(154);
    std::uniform_real_distribution<float> u(0.0f, 1.0f);
    std::vector<float> bv;
    for (int64_t d = 0; d < D; ++d) {
      const float x0 = u(rng) * 40, y0 = u(rng) * 30;
      bv.insert(bv.end(), {x0, y0, x0 + 3 + u(rng) * 25, y0 + 3 + u(rng) * 25});
    }
    const Tensor boxes = Tensor::from_vector(bv, {D, 4});
    Tensor all = Tensor::full({D, H, W}, 7.0, DType::U8);
    cpu.paste_masks(masks, boxes, tv, 0.5, all);
    const auto got = all.to_vector<int64_t>();
    const auto mv = masks.to_vector<float>();
    int64_t ones = 0;
    for (int64_t d = 0; d < D; ++d) {
      const Tensor m1 = Tensor::from_vector(std::vector<float>(mv.begin() + d * M * M, mv.begin() + (d + 1) * M * M), {1, M, M});
      const Tensor b1 = Tensor::from_vector(std::vector<float>(bv.begin() + 4 * d, bv.begin() + 4 * d + 4), {1, 4});
      Tensor one = Tensor::full({1, H, W}, 7.0, DType::U8);
      cpu.paste_masks(m1, b1, tv, 0.5, one);
      const auto want = one.to_vector<int64_t>();
      for (size_t i = 0; i < want.size(); ++i) {
        INFO("detection " << d << ", pixel " << i);
        REQUIRE(got[size_t(d) * want.size() + i] == want[i]);
        ones += want[i];
      }
    }
    REQUIRE(ones > 100);  // (masks were pasted)
  }
}
