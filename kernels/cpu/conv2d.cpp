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
//   portable loops otherwise; ST_CPU_KERNELS names one). Calls under ~1 MFLOP run on one thread; calls made from inside an
//   OpenMP parallel region never spawn threads.
//
// double path: direct loops, a plain reference for finite-difference tests on tiny shapes.
#include "kernels/cpu/conv2d.h"

#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <limits>
#include <new>
#include <optional>
#include <stdexcept>
#include <type_traits>
#include <vector>

#include "kernels/cpu/conv2d_microkernels.h"

namespace st::cpu {
namespace {

using convk::Kernels;
using convk::kMR;
using convk::kNR;
using convk::kPR;
using convk::kWR;

constexpr int64_t kBandBudget = 256 * 1024;  // floats per thread-private band buffer (1 MiB)
constexpr int64_t kSharedBudget = 1024 * 1024;  // floats of a band shared by all threads (4 MiB)
constexpr int64_t kKCMax = 256;              // taps per packed B panel (24*256*4 B = 24 KiB)
constexpr int64_t kSlack = 64;               // floats of zeroed slack after band buffers
constexpr int64_t kDotChunk = 1024;          // pixels per backward-weight reduction chunk
constexpr int64_t kDirectMaxM = 8;           // up to this many (padded) rows: no B packing
constexpr double kParallelFlops = 1.0e6;     // below this a call runs on one thread
constexpr int64_t kItemsPerThread = 3;       // work items (bands) per thread, for balance
constexpr int64_t kPanelGroup = 4;           // pixel panels sharing one pass over the weights
constexpr int64_t kKC32 = 128;    // taps per K block of the 32x3 engine (32*128*4 B = 16 KiB)
constexpr int64_t kGroup32 = 96;  // pixels per group of the 32x3 engine (multiple of 3 and 8)
constexpr int64_t kMax32 = 128;   // up to this many GEMM rows (larger: the packed engine)
constexpr int64_t kMinKred32 = 64;  // and reductions at least this long
std::atomic<bool> g_use32{true};  // the 32x3 engine where it applies (conv2d_set_broadcast_engine)
std::atomic<int> g_fail_scratch{0};  // conv2d_fail_scratch_for_testing

// An exception must not leave an OpenMP parallel region: that calls std::terminate. Inside a
// region every piece of work that may throw (the thread's scratch buffers can fail to allocate;
// a few consistency checks throw) runs through run(), which keeps the first exception any thread
// threw and from then on skips the region's remaining work; rethrow() after the region throws it
// on the calling thread. Each thread still meets every worksharing loop and barrier of the
// region, so the region ends normally. Cost per work item: one relaxed atomic load.
class RegionErrors {
 public:
  template <class F>
  void run(F&& f) noexcept {
    if (failed_.load(std::memory_order_relaxed)) return;
    try {
      f();
    } catch (...) {
      if (!failed_.exchange(true)) first_ = std::current_exception();  // the first one only
    }
  }
  void rethrow() const {  // after the region (its closing barrier orders first_'s write)
    if (first_) std::rethrow_exception(first_);
  }

 private:
  std::atomic<bool> failed_{false};
  std::exception_ptr first_;
};

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// A reduction of Kred taps in n blocks of `size` taps (the last one shorter), each <= max_size;
// n = 0 for an empty reduction (a backward-data phase without taps).
struct KBlocks {
  int64_t n = 0, size = 0;
};
KBlocks k_blocks(int64_t Kred, int64_t max_size) {
  KBlocks b;
  b.n = Kred > 0 ? ceil_div(Kred, max_size) : 0;
  b.size = b.n > 0 ? ceil_div(Kred, b.n) : 0;
  return b;
}
int64_t round_up(int64_t a, int64_t b) { return ceil_div(a, b) * b; }
// floor division for possibly negative numerators (b > 0)
int64_t floor_div(int64_t a, int64_t b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }

// 64-byte aligned heap buffer of T.
template <class T>
class ABuf {
 public:
  ABuf() = default;
  explicit ABuf(size_t n, bool zero = false) { alloc(n, zero); }
  ~ABuf() { std::free(p_); }
  ABuf(const ABuf&) = delete;
  ABuf& operator=(const ABuf&) = delete;
  void alloc(size_t n, bool zero) {
    std::free(p_);
    const size_t bytes = round_up(static_cast<int64_t>(std::max<size_t>(n, 1) * sizeof(T)), 64);
    p_ = static_cast<T*>(std::aligned_alloc(64, bytes));
    if (!p_) throw std::bad_alloc();
    if (zero) std::memset(p_, 0, bytes);
  }
  T* data() const { return p_; }

 private:
  T* p_ = nullptr;
};

// A tap of the implicit-GEMM reduction: source channel c and offsets (r, s) >= 0 in the padded
// source grid; for output grid point (i, j) it reads src[c][i*sy + r - py][j*sx + s - px].
struct Tap {
  int64_t c, r, s;
};

// One image's channels of one group, and how the output grid samples it.
struct Source {
  const float* p = nullptr;  // channel 0 (channel stride H*W)
  int64_t C = 0, H = 0, W = 0;
  int64_t sy = 1, sx = 1, py = 0, px = 0;
};

// Band geometry shared by every (image, group) of one call (see the header comment).
struct Layout {
  int64_t OH = 0, OW = 0;                     // output grid
  int64_t V = 0;                              // flat row pitch (>= OW)
  int64_t halo = 0;                           // extra plane rows below a band
  int64_t BH = 1;                             // band height in output rows
  int64_t nplanes = 0;                        // stride phases actually used
  std::vector<int> plane_ab;                  // [nplanes] -> a*sx + b
  int64_t chan_stride = 0, plane_stride = 0;  // inside the band buffer
  // Floats after a plane's rows that the taps read through the junk columns of the band's last
  // row (V - OW, the widest tap's column shift): build_band zeroes them, as backward weight sums
  // the junk columns' products (with gy's zeros there: a stale NaN would make them NaN).
  int64_t tail = 0;
  bool zero_copy = false;                     // band = the source itself
  std::vector<int64_t> offs;                  // per tap: offset from the band base
  int64_t buf_floats = 0;                     // band buffer size (0 when zero_copy)
};

// extra_per_row: floats of other per-band buffers that scale with the band height (they share
// the budget), M-rows of gy for backward weight. max_bh caps the band height so that a call has
// enough bands to keep every thread busy.
Layout make_layout(const Source& s, const std::vector<Tap>& taps, int64_t OH, int64_t OW,
                   int64_t extra_per_row, int64_t max_bh, int64_t budget = kBandBudget) {
  Layout L;
  L.OH = OH;
  L.OW = OW;
  max_bh = std::clamp<int64_t>(max_bh, 1, std::max<int64_t>(OH, 1));
  int64_t maxr = 0, maxs = 0;
  for (const Tap& t : taps) maxr = std::max(maxr, t.r), maxs = std::max(maxs, t.s);
  std::vector<int> plane_of(static_cast<size_t>(s.sy * s.sx), -1);
  for (const Tap& t : taps) {
    const int ab = static_cast<int>((t.r % s.sy) * s.sx + t.s % s.sx);
    if (plane_of[ab] < 0) {
      plane_of[ab] = static_cast<int>(L.plane_ab.size());
      L.plane_ab.push_back(ab);
    }
  }
  L.nplanes = static_cast<int64_t>(L.plane_ab.size());
  L.zero_copy = !taps.empty() && s.sy == 1 && s.sx == 1 && s.py == 0 && s.px == 0 && maxr == 0 &&
                maxs == 0 && OW == s.W && OH <= s.H;
  L.offs.resize(taps.size());
  if (L.zero_copy) {
    L.V = s.W;
    L.halo = 0;
    L.BH = extra_per_row > 0 ? std::clamp<int64_t>(budget / extra_per_row, 1, max_bh) : max_bh;
    L.chan_stride = s.H * s.W;
    for (size_t k = 0; k < taps.size(); ++k) L.offs[k] = taps[k].c * L.chan_stride;
    L.buf_floats = 0;
    return L;
  }
  L.V = OW + maxs / s.sx;
  L.halo = maxr / s.sy;
  const int64_t row = s.C * L.nplanes * L.V;  // band floats per plane row
  const int64_t per_row = row + extra_per_row;
  L.BH =
      std::clamp<int64_t>((budget - L.halo * row) / std::max<int64_t>(per_row, 1), 1, max_bh);
  L.tail = L.V - OW;
  L.plane_stride = (L.BH + L.halo) * L.V + L.tail;
  L.chan_stride = L.nplanes * L.plane_stride;
  for (size_t k = 0; k < taps.size(); ++k) {
    const Tap& t = taps[k];
    const int ab = static_cast<int>((t.r % s.sy) * s.sx + t.s % s.sx);
    L.offs[k] =
        t.c * L.chan_stride + plane_of[ab] * L.plane_stride + (t.r / s.sy) * L.V + t.s / s.sx;
  }
  L.buf_floats = s.C * L.chan_stride + kSlack;
  return L;
}

// Band height cap giving about kItemsPerThread work items per thread when the call is parallel.
int64_t band_cap(int64_t OH, int64_t other_items, int nth) {
  if (nth <= 1) return OH;
  const int64_t bands = ceil_div(kItemsPerThread * nth, std::max<int64_t>(other_items, 1));
  return std::max<int64_t>(1, ceil_div(OH, bands));
}

// Bands over OH rows, each at most bh_max rows: when parallel, their number times other_items is
// made a multiple of the thread count and the rows are split evenly (band bi is rows
// [band_start(bi), band_start(bi + 1)), heights differing by at most one), so that no thread is
// left with an extra band at the end (7 bands of 14 rows on 2 threads had idled one 1/8 of
// the time).
int64_t balanced_bands(int64_t OH, int64_t bh_max, int64_t other_items, int nth) {
  if (OH <= 0) return 0;
  int64_t nb = ceil_div(OH, bh_max);
  if (nth > 1)
    for (int64_t n = nb; n <= std::min(OH, nb + nth); ++n)
      if (n * other_items % nth == 0) return n;
  return nb;
}
int64_t band_start(int64_t bi, int64_t nb, int64_t OH) { return bi * OH / nb; }

// Work items of the 32x3 engine as chunks of the OH x OW output grid holding equal numbers of
// 3-pixel tiles, rather than bands of whole rows: a 23-row image in 6 bands gives one thread 11
// rows and the other 12, and the threads finished ~8% of the call apart. Chunk ci is the stored
// pixels [begin(ci), begin(ci + 1)) in row-major order; it reads the band of the rows it touches.
// One image on several threads (tail > 0): the last `tail` chunks are half as big as the others,
// so that the threads, taking chunks in order, end at most half a chunk apart (a thread slowed
// by another tenant had left the other idle for up to a whole chunk: 4-9% of a call, median).
// When the rows split evenly into equal chunks, the chunks are whole rows (a chunk starting inside
// a row reads one band row more: on a 90-row image that had cost more than the balance gained).
struct PixelChunks {
  int64_t n = 0, npix = 0, OW = 1;
  int64_t rows_each = 0;  // > 0: chunk ci is rows [ci * rows_each, (ci + 1) * rows_each)
  int64_t tail = 0;       // the last `tail` chunks weigh 1, the others 2
  int64_t weight_before(int64_t ci) const {
    return tail > 0 ? 2 * std::min(ci, n - tail) + std::max<int64_t>(0, ci - (n - tail)) : ci;
  }
  int64_t begin(int64_t ci) const {
    if (rows_each > 0) return std::min(npix, ci * rows_each * OW);
    const int64_t tiles = ceil_div(npix, 3);
    return std::min(npix, 3 * (tiles * weight_before(ci) / weight_before(n)));
  }
  int64_t row0(int64_t ci) const { return begin(ci) / OW; }
  int64_t rows(int64_t ci) const { return (begin(ci + 1) - 1) / OW + 1 - row0(ci); }
};
// Rows a band needs for the biggest chunk of pixel_chunks (when enough rows fit the budget).
int64_t chunk_rows_hint(int64_t OH, int64_t other_items, int nth) {
  if (nth <= 1) return OH;
  if (other_items > 1) return band_cap(OH, other_items, nth) + 1;
  const int64_t n = kItemsPerThread * nth;  // weights: 2 (n - nth chunks), 1 (nth chunks)
  return ceil_div(2 * OH, 2 * n - nth) + 2;
}
// The chunk count: at least kItemsPerThread per thread (with other_items items of other kinds),
// if possible a multiple of the thread count, and no chunk touching more than BH rows (a run of
// at most (BH - 1) * OW + 1 pixels touches at most BH rows). n = 0: no valid split (BH too small
// for a 3-pixel tile); the caller uses bands of rows.
PixelChunks pixel_chunks(int64_t OH, int64_t OW, int64_t BH, int64_t other_items, int nth) {
  PixelChunks c;
  c.npix = OH * OW, c.OW = OW;
  const int64_t tiles = ceil_div(c.npix, 3), max_tiles = ((BH - 1) * OW + 1) / 3;
  if (tiles == 0 || max_tiles < 1) return c;
  if (nth > 1 && other_items == 1) {  // one image: big chunks, then nth half-size ones
    for (int64_t n = kItemsPerThread * nth; n <= tiles && n < 64 * nth; n += nth)
      if (ceil_div(2 * tiles, 2 * n - nth) + 1 <= max_tiles) {
        c.n = n, c.tail = nth;
        return c;
      }
  }
  const int64_t min_n = std::max(ceil_div(tiles, max_tiles),
                                 nth > 1 ? ceil_div(kItemsPerThread * nth, other_items) : 1);
  c.n = std::min(min_n, tiles);
  if (nth > 1)
    for (int64_t n = c.n; n <= std::min(tiles, c.n + nth); ++n)
      if (n * other_items % nth == 0) {
        c.n = n;
        break;
      }
  if (OH % c.n == 0 && OH / c.n <= BH) c.rows_each = OH / c.n;
  return c;
}

// Fill a (thread-private) band buffer for output rows [i0, i0 + bh).
// Only source channels [c0, c1) are filled (default: all).
void build_band(const Source& s, const Layout& L, int64_t i0, int64_t bh, float* buf,
                int64_t c0 = 0, int64_t c1 = -1) {
  const convk::Gather2Fn gather2 = convk::kernels().gather2;
  const int64_t rows = bh + L.halo;
  const int64_t V = L.V;
  if (c1 < 0) c1 = s.C;
  for (int64_t c = c0; c < c1; ++c)
    for (int64_t pl = 0; pl < L.nplanes; ++pl) {
      const int64_t a = L.plane_ab[pl] / s.sx;
      const int64_t b = L.plane_ab[pl] % s.sx;
      // valid j: 0 <= j*sx + off <= W-1
      const int64_t off = b - s.px;
      const int64_t jlo = std::clamp<int64_t>(-floor_div(off, s.sx), 0, V);
      const int64_t jhi = std::clamp<int64_t>(floor_div(s.W - 1 - off, s.sx) + 1, jlo, V);
      for (int64_t t = 0; t < rows; ++t) {
        float* d = buf + c * L.chan_stride + pl * L.plane_stride + t * V;  // one plane row (V)
        const int64_t hs = (i0 + t) * s.sy + a - s.py;
        if (hs < 0 || hs >= s.H || jhi <= jlo) {
          std::memset(d, 0, sizeof(float) * V);
          continue;
        }
        const float* sp = s.p + c * s.H * s.W + hs * s.W + off;  // sp[j*sx] = src column
        if (jlo > 0) std::memset(d, 0, sizeof(float) * jlo);
        if (s.sx == 1) {
          std::memcpy(d + jlo, sp + jlo, sizeof(float) * (jhi - jlo));
        } else if (s.sx == 2) {
          gather2(sp + 2 * jlo, d + jlo, jhi - jlo);
        } else {
          for (int64_t j = jlo; j < jhi; ++j) d[j] = sp[j * s.sx];
        }
        if (jhi < V) std::memset(d + jhi, 0, sizeof(float) * (V - jhi));
      }
      if (L.tail > 0)
        std::memset(buf + c * L.chan_stride + pl * L.plane_stride + rows * V, 0,
                    sizeof(float) * L.tail);
    }
}

// ------------------------------------------------------------------ GEMM engine (fwd / bwd data)
struct GemmJob {
  Source src;
  const Layout* L = nullptr;
  const float* A = nullptr;  // packed weights [Mpad/mr][Kred][mr], mr = 32 if w32 else 4
  int64_t M = 0, Mpad = 0, Kred = 0;
  bool w32 = false;         // the pixel-broadcast 32x3 engine (else a 4x24 one)
  float* dst = nullptr;  // output channel 0; grid (i,j) -> dst[m*dcs + (oy0+i*osy)*dW + ox0+j*osx]
  int64_t dcs = 0, dW = 0, oy0 = 0, ox0 = 0, osy = 1, osx = 1;
  const float* bias = nullptr;  // [M] or null
};

// Which engine runs a GEMM with M rows (output channels): for M <= 8 the 4x24 micro-kernel reads
// the band in place (nothing packed); the pixel-broadcast 32x3 engine when padding M to 32 costs
// at most a quarter more than padding to 4, M <= 128, the reduction has >= 64 taps and the
// kernel is not 1x1; else the packed 4x24 engine. (Measured, calls interleaved in one process:
// with 256..2048 rows, where packing is shared by 64..512 micro-kernel calls, the packed engine
// was 5-30% faster on the teacher's shapes, even at 128; the student's 1x1 layers were 0-15%
// faster packed (most with short reductions); its 3x3/1x3/3x1 layers with 32..128 rows 2-13%
// faster broadcast.)
// mr = rows per packed weight block.
struct Engine {
  bool direct = false, w32 = false;
  int64_t mr = kMR, Mpad = 0;
};
Engine choose_engine(int64_t M, int64_t Kred, bool one_by_one) {
  Engine e;
  const int64_t m4 = round_up(M, kMR), m32 = round_up(M, kWR);
  e.direct = m4 <= kDirectMaxM;
  e.w32 = !e.direct && g_use32.load(std::memory_order_relaxed) && 4 * m32 <= 5 * m4 &&
          m32 <= kMax32 && Kred >= kMinKred32 && !one_by_one;
  e.mr = e.w32 ? kWR : kMR;
  e.Mpad = e.w32 ? m32 : m4;
  return e;
}

// The packed weights [Mpad/mr][Kred][mr] (zero padded) are made by all threads of the call
// inside its parallel region, in pieces of one row block and kPackTaps reduction entries (on the
// student's small layers a serial packing had left the other core idle for 5-10% of the call).
constexpr int64_t kPackTaps = 128;
int64_t pack_pieces(int64_t Kred) { return std::max<int64_t>(1, ceil_div(Kred, kPackTaps)); }

// Forward: A is W[m][k] itself (M rows of Kred). Piece (mb, part): row block mb, reduction
// entries of part. Blocks of 8 rows x 8 entries go through an 8x8 transpose (a scalar loop had
// strided 32 rows at once and cost ~6% of a 128-channel 3x3 layer's call).
void pack_rows(const float* W, int64_t M, int64_t mr, int64_t Kred, float* out, int64_t mb,
               int64_t part, const Kernels& kn) {
  const int64_t k0 = part * kPackTaps, k1 = std::min(Kred, k0 + kPackTaps);
  float* ob = out + mb * Kred * mr;
  for (int64_t i8 = 0; i8 < mr; i8 += 8) {
    const int64_t m0 = mb * mr + i8;
    const int64_t rows = std::clamp<int64_t>(M - m0, 0, std::min<int64_t>(8, mr));
    int64_t k = k0;
    if (rows == 8 && mr >= 8)
      for (; k + 8 <= k1; k += 8) kn.transpose8(W + m0 * Kred + k, Kred, ob + k * mr + i8, mr);
    for (; k < k1; ++k)
      for (int64_t i = i8; i < std::min(mr, i8 + 8); ++i) {
        const int64_t m = mb * mr + i;
        ob[k * mr + i] = m < M ? W[m * Kred + k] : 0.0f;
      }
  }
}

// Backward data: the GEMM rows are input channels c and a stride phase's reduction entries are
// t = k * nrs + q (output channel k, the phase's q-th kernel tap, at offset rs[q] of w[k][c]).
// Piece `part`: output channels [part*kPackK, ...), all row blocks and all phases. Each packed
// row of mr channels is written contiguously from a strided read of w (writing one entry of
// many rows per w[k][c] read had stalled on the scattered stores: 5x slower, ~7% of a 3x3
// backward-data call).
constexpr int64_t kPackK = 4;
struct PhasePack {
  const int64_t* rs = nullptr;  // the phase's kernel taps as offsets r*S + s
  int64_t nrs = 0;
  float* out = nullptr;  // its packed weights [Mpad/mr][Kg*nrs][mr]
};
void pack_taps(const float* w, int64_t Cg, int64_t Kg, int64_t RS, const std::vector<PhasePack>& ph,
               int64_t mr, int64_t Mpad, int64_t part) {
  for (int64_t k = part * kPackK; k < std::min(Kg, (part + 1) * kPackK); ++k)
    for (int64_t mb = 0; mb < Mpad / mr; ++mb) {
      const int64_t nc = std::clamp<int64_t>(Cg - mb * mr, 0, mr);  // real channels of the block
      const float* wb = w + (k * Cg + mb * mr) * RS;
      for (const PhasePack& P : ph)
        for (int64_t q = 0; q < P.nrs; ++q) {
          float* o = P.out + (mb * Kg * P.nrs + k * P.nrs + q) * mr;
          const float* src = wb + P.rs[q];
          for (int64_t i = 0; i < nc; ++i) o[i] = src[i * RS];
          for (int64_t i = nc; i < mr; ++i) o[i] = 0.0f;
        }
    }
}

// The stored runs of flat pixels [f0, f0+len) of a band with row pitch V and OW valid columns:
// fn(t, i, j, valid) for each band row i the range touches, where pixel f0 + t is at row i,
// column j and the next `valid` pixels are stored ones (the junk columns j >= OW are skipped).
template <class Fn>
void for_each_run(int64_t V, int64_t OW, int64_t f0, int64_t len, Fn fn) {
  for (int64_t t = 0; t < len;) {
    const int64_t f = f0 + t, i = f / V, j = f % V;
    const int64_t run = std::min(len - t, V - j);
    if (j < OW) fn(t, i, j, std::min(run, OW - j));
    t += run;
  }
}

// Stores flat pixels [f0, f0+len) of band rows from i0; the value of output channel m at pixel
// f0 + t is Cb[m*pitch + t].
// V: the row pitch of the flat pixel numbering (default the band's; OW when the junk columns
// were skipped).
void store_panel(const GemmJob& J, int64_t i0, int64_t f0, int64_t len, const float* Cb,
                 int64_t pitch = kNR, int64_t V = 0) {
  const int64_t pitch_v = V > 0 ? V : J.L->V;
  for_each_run(pitch_v, J.L->OW, f0, len, [&](int64_t t, int64_t i, int64_t j, int64_t valid) {
    float* base = J.dst + (J.oy0 + (i0 + i) * J.osy) * J.dW + J.ox0 + j * J.osx;
    for (int64_t m = 0; m < J.M; ++m) {
      const float* c = Cb + m * pitch + t;
      const float bv = J.bias ? J.bias[m] : 0.0f;
      float* o = base + m * J.dcs;
      // The next panel usually continues this row: start fetching its lines for writing.
      __builtin_prefetch(o + valid * J.osx + 16, 1, 3);
      __builtin_prefetch(o + valid * J.osx + 32, 1, 3);
      if (J.osx == 1) {
        for (int64_t q = 0; q < valid; ++q) o[q] = c[q] + bv;
      } else {
        for (int64_t q = 0; q < valid; ++q) o[q * J.osx] = c[q] + bv;
      }
    }
  });
}

// Working buffers kept per thread from call to call (OpenMP keeps its threads), so that a call
// does not allocate, page-fault and zero up to ~1 MiB per thread again (the zeroing alone was
// ~1.3% of a small 3x3 layer's call). A buffer is zeroed when it is (re)allocated; afterwards it
// holds whatever the last call left: every user writes what it reads (build_band writes a
// band's rows and the tail past them that junk pixels read: forward and backward data compute
// junk pixels and never store them, backward weight multiplies them by gy's zeros, which a stale
// NaN would defeat). Requests above kScratchKeep floats (the
// teacher's packed weights, up to ~10 MB) are allocated per call instead of being kept.
enum ScratchSlot {
  kSlotBand, kSlotBp, kSlotCb, kSlotCt, kSlotA, kSlotTmp,  // forward / backward data
  kSlotGy, kSlotAcc, kSlotLoc,                            // backward weight (and kSlotBand)
  kNumSlots
};
constexpr size_t kScratchKeep = size_t{1} << 19;  // floats (2 MiB)
class Scratch {
 public:
  Scratch(ScratchSlot slot, size_t n) {
    if (g_fail_scratch.load(std::memory_order_relaxed) > 0 && omp_get_level() > 0 &&
        g_fail_scratch.fetch_sub(1) > 0)
      throw std::bad_alloc();  // test hook: as if the allocation had failed
    if (n > kScratchKeep) {
      own_.alloc(n, true);
      p_ = own_.data();
      return;
    }
    thread_local ABuf<float> pool[kNumSlots];
    thread_local size_t cap[kNumSlots] = {};
    if (cap[slot] < n || !pool[slot].data()) {
      pool[slot].alloc(n, true);
      cap[slot] = n;
    }
    p_ = pool[slot].data();
  }
  float* data() const { return p_; }
  double* data_d() const { return reinterpret_cast<double*>(p_); }  // sized as 2 floats each

 private:
  ABuf<float> own_;
  float* p_ = nullptr;
};

// Thread-private scratch of the GEMM engines (one of each slot per thread at a time).
struct GemmScratch {
  Scratch band;  // band planes (Layout::buf_floats)
  Scratch Bp;    // 4x24: [kPanelGroup][kKCMax][24] packed taps x pixels
  Scratch Cb;    // 4x24: [kPanelGroup][Mpad/4][4][24]; 32x3: [Mpad/32][kGroup32][32]
  Scratch Ct;    // 32x3: [2][Mpad][kGroup32] finished groups (2: a phase pair), channel-major
  std::vector<const float*> px;  // 32x3: the group's pixel bases, 3 per tile
  GemmScratch(int64_t band_floats, int64_t Mpad)
      : band(kSlotBand, band_floats),
        Bp(kSlotBp, kPanelGroup * kKCMax * kNR),
        Cb(kSlotCb, std::max(kPanelGroup * kNR, kGroup32) * Mpad),
        Ct(kSlotCt, 2 * Mpad * kGroup32),
        px(kGroup32) {}
};

// The 32x3 engine: output rows [i0, i0+bh) of a job in groups of kGroup32 stored pixels (the
// band's junk columns j >= OW are skipped: a tile's 3 pixels each have their own base, so a tile
// may span two rows; a partial last tile repeats its last pixel). Per group and K block, the
// block's packed weights (16 KiB) stay in L1 while every 3-pixel tile of the group runs over
// them, each pixel broadcast from the band where it lies: no pixel is packed. The group's
// accumulators Cb[mb][pixel][32] are transposed to channel-major: group32 computes stored pixels
// [p0, p0+glen) of the band into Ct[m][kGroup32], gemm_rows32 stores them.
void group32(const GemmJob& J, const float* band, int64_t p0, int64_t glen, GemmScratch& S,
             const Kernels& kn, float* Ct) {
  const Layout& L = *J.L;
  const auto [nkb, kcs] = k_blocks(J.Kred, kKC32);
  const int64_t nmb = J.Mpad / kWR;
  const int64_t* offs = L.offs.data();
  float* Cb = S.Cb.data();
  const float** px = S.px.data();
  const int64_t ntile = ceil_div(glen, kPR);
  for (int64_t t = 0; t < ntile * kPR; ++t) {
    const int64_t p = p0 + std::min(t, glen - 1);
    px[t] = band + p / L.OW * L.V + p % L.OW;
  }
  if (nkb == 0) std::memset(Cb, 0, sizeof(float) * J.Mpad * kGroup32);
  for (int64_t kb = 0; kb < nkb; ++kb) {
    const int64_t k0 = kb * kcs, k1 = std::min(J.Kred, k0 + kcs);
    for (int64_t mb = 0; mb < nmb; ++mb) {
      const float* w = J.A + (mb * J.Kred + k0) * kWR;
      float* cb = Cb + mb * kGroup32 * kWR;
      for (int64_t t = 0; t < ntile; ++t)
        kn.gemm32(k1 - k0, w, px + t * kPR, offs + k0, cb + t * kPR * kWR, kb > 0);
    }
  }
  for (int64_t mb = 0; mb < nmb; ++mb)
    for (int64_t q0 = 0; q0 < glen; q0 += 8)
      for (int64_t c8 = 0; c8 < kWR; c8 += 8)
        kn.transpose8(Cb + (mb * kGroup32 + q0) * kWR + c8, kWR,
                      Ct + (mb * kWR + c8) * kGroup32 + q0, kGroup32);
}
// Stored pixels [q0, q1) of the band (q1 < 0: all bh * OW of them).
void gemm_rows32(const GemmJob& J, const float* band, int64_t i0, int64_t bh, GemmScratch& S,
                 const Kernels& kn, int64_t q0 = 0, int64_t q1 = -1) {
  const int64_t npix = q1 < 0 ? bh * J.L->OW : q1;
  for (int64_t p0 = q0; p0 < npix; p0 += kGroup32) {
    const int64_t glen = std::min(kGroup32, npix - p0);
    group32(J, band, p0, glen, S, kn, S.Ct.data());
    store_panel(J, i0, p0, glen, S.Ct.data(), kGroup32, J.L->OW);
  }
}

// Direct engine (M <= 8): one panel (flat pixels [f0, f0+len) of the band) of a job into
// Cb[m*24 + t]; B rows are read in place (a partial panel is copied to Bp first).
void direct_panel(const GemmJob& J, const float* band, int64_t f0, int64_t len, float* Cb,
                  float* Bp, const Kernels& kn) {
  const auto [nkb, kcs] = k_blocks(J.Kred, kKCMax);
  const int64_t nmb = J.Mpad / kMR;
  const int64_t* offs = J.L->offs.data();
  if (nkb == 0) std::memset(Cb, 0, sizeof(float) * J.Mpad * kNR);
  for (int64_t kb = 0; kb < nkb; ++kb) {
    const int64_t k0 = kb * kcs, k1 = std::min(J.Kred, k0 + kcs);
    const float* src = band + f0;
    if (len == kNR) {
      for (int64_t mb = 0; mb < nmb; ++mb)
        kn.gemm_direct(k1 - k0, J.A + (mb * J.Kred + k0) * kMR, src, offs + k0,
                       Cb + mb * kMR * kNR, kb > 0);
      continue;
    }
    for (int64_t k = k0; k < k1; ++k) {
      float* d = Bp + (k - k0) * kNR;
      std::memcpy(d, src + offs[k], sizeof(float) * len);
      std::memset(d + len, 0, sizeof(float) * (kNR - len));
    }
    for (int64_t mb = 0; mb < nmb; ++mb)
      kn.gemm(k1 - k0, J.A + (mb * J.Kred + k0) * kMR, Bp, Cb + mb * kMR * kNR, kb > 0);
  }
}

// Computes output rows [i0, i0+bh) of a job on the calling thread. prebuilt: the band, when the
// caller has built it already (shared by the stride phases of backward data).
void gemm_rows(const GemmJob& J, int64_t i0, int64_t bh, GemmScratch& S, const Kernels& kn,
               const float* prebuilt = nullptr, int64_t q0 = 0, int64_t q1 = -1) {
  const Layout& L = *J.L;
  const float* band;
  if (prebuilt) {
    band = prebuilt;
  } else if (L.zero_copy) {
    band = J.src.p + i0 * J.src.W;
  } else {
    build_band(J.src, L, i0, bh, S.band.data());
    band = S.band.data();
  }
  if (J.w32) return gemm_rows32(J, band, i0, bh, S, kn, q0, q1);
  float* Bp = S.Bp.data();
  float* Cb = S.Cb.data();
  const int64_t nflat = bh * L.V;
  const int64_t npan = ceil_div(nflat, kNR);
  const auto [nkb, kcs] = k_blocks(J.Kred, kKCMax);
  const int64_t nmb = J.Mpad / kMR;
  const int64_t* offs = L.offs.data();
  // With few output-channel blocks packing costs more than it saves: read B in place.
  const bool direct = J.Mpad <= kDirectMaxM;
  if (direct) {
    for (int64_t p = 0; p < npan; ++p) {
      const int64_t f0 = p * kNR;
      const int64_t len = std::min<int64_t>(kNR, nflat - f0);
      // A full panel inside one row's stored columns (all rows real) is written straight into
      // the output row by the micro-kernel (no tile, no store pass: that pass had been ~15% of
      // in_conv1's forward).
      const int64_t pi = f0 / L.V, pj = f0 % L.V;
      if (len == kNR && J.osx == 1 && pj + kNR <= L.OW && J.Mpad == J.M) {
        float* o = J.dst + (J.oy0 + (i0 + pi) * J.osy) * J.dW + J.ox0 + pj;
        for (int64_t kb = 0; kb < nkb; ++kb) {
          const int64_t k0 = kb * kcs, k1 = std::min(J.Kred, k0 + kcs);
          for (int64_t mb = 0; mb < nmb; ++mb)
            kn.gemm_direct_ldc(k1 - k0, J.A + (mb * J.Kred + k0) * kMR, band + f0, offs + k0,
                               o + mb * kMR * J.dcs, J.dcs, kb > 0,
                               J.bias ? J.bias + mb * kMR : nullptr);
        }
        if (nkb > 0) continue;
      }
      direct_panel(J, band, f0, len, Cb, Bp, kn);
      store_panel(J, i0, f0, len, Cb);
    }
    return;
  }
  // Panels in groups of kPanelGroup: each K block of the packed weights is read once per group
  // (not once per panel) while the group's packed pixels stay in cache.
  // When the band is the source itself (1x1, stride 1) and the output rows are contiguous in the
  // same flat order, a full panel is written straight into the output (no tile buffer, no store
  // pass; the bias starts the accumulators).
  const bool out_direct = L.zero_copy && J.osx == 1 && J.osy == 1 && J.ox0 == 0 &&
                          J.dW == L.V && J.Mpad == J.M;
  float* const drow = J.dst + (J.oy0 + i0) * J.dW;  // out_direct: flat pixel f of channel m at
                                                    // drow[m * dcs + f]
  for (int64_t p0 = 0; p0 < npan; p0 += kPanelGroup) {
    const int64_t pg = std::min<int64_t>(kPanelGroup, npan - p0);
    if (nkb == 0) std::memset(Cb, 0, sizeof(float) * pg * J.Mpad * kNR);
    for (int64_t kb = 0; kb < nkb; ++kb) {
      const int64_t k0 = kb * kcs, k1 = std::min(J.Kred, k0 + kcs);
      for (int64_t g = 0; g < pg; ++g) {
        const int64_t f0 = (p0 + g) * kNR;
        const int64_t len = std::min<int64_t>(kNR, nflat - f0);
        const float* src = band + f0;
        float* bp = Bp + g * kKCMax * kNR;
        if (len == kNR) {
          kn.pack(k1 - k0, src, offs + k0, bp);
        } else {
          for (int64_t k = k0; k < k1; ++k) {
            float* d = bp + (k - k0) * kNR;
            std::memcpy(d, src + offs[k], sizeof(float) * len);
            std::memset(d + len, 0, sizeof(float) * (kNR - len));
          }
        }
      }
      for (int64_t mb = 0; mb < nmb; ++mb) {
        const float* a = J.A + (mb * J.Kred + k0) * kMR;
        for (int64_t g = 0; g < pg; ++g) {
          const int64_t f0 = (p0 + g) * kNR;
          if (out_direct && f0 + kNR <= nflat)
            kn.gemm_ldc(k1 - k0, a, Bp + g * kKCMax * kNR, drow + mb * kMR * J.dcs + f0, J.dcs,
                        kb > 0, J.bias ? J.bias + mb * kMR : nullptr);
          else
            kn.gemm(k1 - k0, a, Bp + g * kKCMax * kNR, Cb + (g * nmb + mb) * kMR * kNR, kb > 0);
        }
      }
    }
    for (int64_t g = 0; g < pg; ++g) {
      const int64_t f0 = (p0 + g) * kNR;
      if (!out_direct || f0 + kNR > nflat)
        store_panel(J, i0, f0, std::min<int64_t>(kNR, nflat - f0), Cb + g * nmb * kMR * kNR);
    }
  }
}

int team_size(bool par) { return par ? omp_get_max_threads() : 1; }
bool go_parallel(double flops) {
  return flops > kParallelFlops && !omp_in_parallel() && omp_get_max_threads() > 1;
}

// ------------------------------------------------------------------ float entry points
void forward_f32(const ConvGeom& g, const float* x, const float* w, const float* bias, float* y) {
  const int64_t G = g.groups, Cg = g.C / G, Kg = g.K / G;
  const int64_t Kred = Cg * g.R * g.S;
  const Engine eng = choose_engine(Kg, Kred, g.R * g.S == 1);
  const int64_t Mpad = eng.Mpad;
  if (g.N * g.K * g.OH * g.OW == 0) return;
  if (Kred == 0) {  // empty reduction: y = bias
    for (int64_t n = 0; n < g.N; ++n)
      for (int64_t k = 0; k < g.K; ++k)
        std::fill_n(y + (n * g.K + k) * g.OH * g.OW, g.OH * g.OW, bias ? bias[k] : 0.0f);
    return;
  }
  const double flops = 2.0 * g.N * g.K * Kred * g.OH * g.OW;
  const bool par = go_parallel(flops);
  std::vector<Tap> taps;
  taps.reserve(Kred);
  for (int64_t c = 0; c < Cg; ++c)
    for (int64_t r = 0; r < g.R; ++r)
      for (int64_t s = 0; s < g.S; ++s) taps.push_back({c, r, s});
  Source s0{nullptr, Cg, g.H, g.W, g.stride_h, g.stride_w, g.pad_h, g.pad_w};
  // The 32x3 engine's items are pixel chunks (one row more than their share of rows each).
  const int64_t cap = band_cap(g.OH, g.N * G, team_size(par));
  Layout L = make_layout(s0, taps, g.OH, g.OW, 0,
                         eng.w32 ? chunk_rows_hint(g.OH, g.N * G, team_size(par)) : cap);
  Scratch A(kSlotA, G * Mpad * Kred);  // packed weights, per group [Mpad/mr][Kred][mr]
  const int64_t nmbA = Mpad / eng.mr;
  const Kernels& kn = convk::kernels();
  const PixelChunks pc =
      eng.w32 ? pixel_chunks(g.OH, g.OW, L.BH, g.N * G, team_size(par)) : PixelChunks{};
  const bool chunks = pc.n > 0;
  // Whole-row chunks need no spare row: the band then has the rows' own height (with the spare
  // row's longer plane strides enc1.long3x3 forward measured 1-5% slower).
  if (pc.rows_each > 0 && pc.rows_each < L.BH)
    L = make_layout(s0, taps, g.OH, g.OW, 0, pc.rows_each);
  const int64_t nb = chunks ? pc.n : balanced_bands(g.OH, L.BH, g.N * G, team_size(par));
  const int64_t items = g.N * G * nb;  // (image, group, band or chunk)
  RegionErrors errs;
#pragma omp parallel if (par)
  {
    const int64_t npart = pack_pieces(Kred);
#pragma omp for schedule(static)
    for (int64_t q = 0; q < G * nmbA * npart; ++q) {  // (group, row block, part)
      const int64_t gi = q / (nmbA * npart), mb = q / npart % nmbA, part = q % npart;
      errs.run([&] {
        pack_rows(w + gi * Kg * Kred, Kg, eng.mr, Kred, A.data() + gi * Mpad * Kred, mb, part, kn);
      });
    }
    std::optional<GemmScratch> Sopt;  // (not made: errs has failed, the loop below is skipped)
    errs.run([&] { Sopt.emplace(L.buf_floats, Mpad); });
#pragma omp for schedule(dynamic, 1)
    for (int64_t it = 0; it < items; ++it) errs.run([&] {
      GemmScratch& S = *Sopt;
      const int64_t bi = it % nb, gi = (it / nb) % G, n = it / (nb * G);
      GemmJob J;
      J.src = s0;
      J.src.p = x + (n * g.C + gi * Cg) * g.H * g.W;
      J.L = &L;
      J.A = A.data() + gi * Mpad * Kred;
      J.M = Kg, J.Mpad = Mpad, J.Kred = Kred, J.w32 = eng.w32;
      J.dst = y + (n * g.K + gi * Kg) * g.OH * g.OW;
      J.dcs = g.OH * g.OW, J.dW = g.OW;
      J.bias = bias ? bias + gi * Kg : nullptr;
      if (chunks) {
        const int64_t i0 = pc.row0(bi), q0 = pc.begin(bi) - i0 * g.OW;
        if (pc.rows(bi) > L.BH) throw std::logic_error("conv2d: pixel chunk overflows its band");
        gemm_rows(J, i0, pc.rows(bi), S, kn, nullptr, q0, pc.begin(bi + 1) - i0 * g.OW);
        return;
      }
      const int64_t i0 = band_start(bi, nb, g.OH);
      gemm_rows(J, i0, band_start(bi + 1, nb, g.OH) - i0, S, kn);
    });
  }
  errs.rethrow();
}

void backward_data_f32(const ConvGeom& g, const float* gy, const float* w, float* gx) {
  const int64_t G = g.groups, Cg = g.C / G, Kg = g.K / G;
  const int64_t RS = g.R * g.S;
  const int64_t sh = g.stride_h, sw = g.stride_w;
  // (the longest phase reduction: Kg x taps of one stride phase)
  const Engine eng = choose_engine(Cg, Kg * ceil_div(g.R, sh) * ceil_div(g.S, sw), RS == 1);
  const int64_t Mpad = eng.Mpad;
  if (g.N * g.C * g.H * g.W == 0) return;
  const double flops = 2.0 * g.N * g.K * Cg * RS * g.OH * g.OW;
  const bool par = go_parallel(flops);
  // One job description per stride phase (a, b) of gx: gx[a::sh, b::sw] is a stride-1
  // correlation of gy with the taps r = a+ph (mod sh), s = b+pw (mod sw).
  struct Phase {
    int64_t a, b, Ha, Wb;
    Source s0;
    std::vector<Tap> taps;
    std::vector<int64_t> rs;  // the phase's kernel taps (r, s) as offsets r*S + s, in tap order
    Layout L;
    int64_t Kred = 0;
    size_t aoff = 0;  // into packed A: per group blocks of Mpad*Kred
  };
  std::vector<Phase> phases;
  for (int64_t a = 0; a < sh; ++a)
    for (int64_t b = 0; b < sw; ++b) {
      Phase P;
      P.a = a, P.b = b;
      P.Ha = a < g.H ? ceil_div(g.H - a, sh) : 0;
      P.Wb = b < g.W ? ceil_div(g.W - b, sw) : 0;
      if (P.Ha == 0 || P.Wb == 0) continue;
      std::vector<int64_t> R_, S_, dy, dx;  // taps of this phase and their gy offsets
      for (int64_t r = 0; r < g.R; ++r)
        if (((a + g.pad_h - r) % sh + sh) % sh == 0)
          R_.push_back(r), dy.push_back((a + g.pad_h - r) / sh);
      for (int64_t s = 0; s < g.S; ++s)
        if (((b + g.pad_w - s) % sw + sw) % sw == 0)
          S_.push_back(s), dx.push_back((b + g.pad_w - s) / sw);
      const int64_t py = R_.empty() ? 0 : -*std::min_element(dy.begin(), dy.end());
      const int64_t px = S_.empty() ? 0 : -*std::min_element(dx.begin(), dx.end());
      P.s0 = Source{nullptr, Kg, g.OH, g.OW, 1, 1, py, px};
      for (size_t ri = 0; ri < R_.size(); ++ri)
        for (size_t si = 0; si < S_.size(); ++si) P.rs.push_back(R_[ri] * g.S + S_[si]);
      for (int64_t k = 0; k < Kg; ++k)
        for (size_t ri = 0; ri < R_.size(); ++ri)
          for (size_t si = 0; si < S_.size(); ++si)
            P.taps.push_back({k, dy[ri] + py, dx[si] + px});
      P.Kred = static_cast<int64_t>(P.taps.size());
      phases.push_back(std::move(P));
    }
  const int64_t nph = static_cast<int64_t>(phases.size());
  // All phases of a work item cover the same phase rows [i0, i0+BH), i.e. the same gx rows, so
  // the (strided) writes of the sh*sw phases hit gx lines that are still in cache. The gx block
  // of one item (Cg x BH*sh rows x W) shares the band budget.
  int64_t maxHa = 0, BH = std::numeric_limits<int64_t>::max();
  for (Phase& P : phases) {
    maxHa = std::max(maxHa, P.Ha);
    // (one row more for the 32x3 engine's pixel chunks)
    P.L = make_layout(P.s0, P.taps, P.Ha, P.Wb, 0,
                      eng.w32 ? chunk_rows_hint(P.Ha, g.N * G, team_size(par))
                              : band_cap(P.Ha, g.N * G, team_size(par)));
    BH = std::min(BH, P.L.BH);
  }
  // Several phases read the same gy rows, each at its own offsets: they share one band, built
  // once per work item with the union of their paddings (PY rows above, PX columns left, row
  // pitch Vu wide enough for every phase's columns), instead of one band copy per phase
  // (3x3 stride 2: 4-13% faster). Not when only one phase has taps (a 1x1 stride 2 kernel: that
  // phase reads gy in place).
  const bool shared_band =
      std::count_if(phases.begin(), phases.end(), [](const Phase& P) { return P.Kred > 0; }) > 1;
  int64_t PY = 0, PX = 0, Vu = 0, halo_u = 0;
  if (shared_band) {
    for (const Phase& P : phases) PY = std::max(PY, P.s0.py), PX = std::max(PX, P.s0.px);
    for (const Phase& P : phases)
      for (const Tap& t : P.taps) {
        halo_u = std::max(halo_u, t.r - P.s0.py + PY);
        Vu = std::max(Vu, P.Wb + t.s - P.s0.px + PX);
      }
    const int64_t row = Kg * Vu;
    BH = std::min(BH, std::max<int64_t>(1, (kBandBudget - halo_u * row) / row));
  }
  // gx block of one item (Cg x BH*sh rows x W): aim at L2 residency.
  if (nph > 1) BH = std::min(BH, std::max<int64_t>(1, kBandBudget / 4 / (Cg * sh * g.W)));
  // With a column stride the phases go to a private buffer tmp[a][b][Mpad][BH][Wq] (contiguous
  // stores) and are then interleaved into gx rows; otherwise they are stored into gx directly.
  const bool use_tmp = sw > 1;
  const int64_t Wq = ceil_div(g.W, sw);
  size_t afloats = 0;
  int64_t bandmax = 0;
  // The shared band: gy with padding (PY, PX), one plane, rows [i0 - PY, i0 + BH + halo_u - PY).
  const Source su{nullptr, Kg, g.OH, g.OW, 1, 1, PY, PX};
  Layout Lu;
  if (shared_band) {
    Lu.OH = maxHa, Lu.V = Vu, Lu.halo = halo_u, Lu.BH = BH, Lu.nplanes = 1, Lu.plane_ab = {0};
    Lu.plane_stride = Lu.chan_stride = (BH + halo_u) * Vu;
    Lu.buf_floats = Kg * Lu.chan_stride + kSlack;
  }
  for (Phase& P : phases) {
    if (shared_band) {  // the phase's taps as offsets into the shared band
      P.L = Lu;
      P.L.OH = P.Ha, P.L.OW = P.Wb;
      P.L.offs.resize(P.taps.size());
      for (size_t k = 0; k < P.taps.size(); ++k) {
        const Tap& t = P.taps[k];
        P.L.offs[k] = t.c * Lu.chan_stride + (t.r - P.s0.py + PY) * Vu + (t.s - P.s0.px + PX);
      }
    } else {  // every phase with the same band height
      P.L = make_layout(P.s0, P.taps, P.Ha, P.Wb, 0, BH);
    }
    bandmax = std::max(bandmax, P.L.buf_floats);
    P.aoff = afloats;
    afloats += static_cast<size_t>(G * Mpad * P.Kred);
  }
  Scratch A(kSlotA, afloats);
  const int64_t npart = ceil_div(Kg, kPackK);
  const Kernels& kn = convk::kernels();
  const int64_t tplane = BH * Wq;  // one (phase, channel) plane of tmp
  // Column stride 2, even width, few input channels (the direct engine), shared band: the two
  // column phases (a, 0) and (a, 1) cover the same flat pixels of the band, so each panel of
  // both is computed back to back and its two tiles are interleaved straight into the gx rows
  // (no private buffer, no second pass over gx).
  const bool pairs = eng.direct && sw == 2 && g.W % 2 == 0 && shared_band && nph == 2 * sh;
  // The same with the 32x3 engine: per group of stored pixels, both column phases into Ct.
  const bool pairs32 = eng.w32 && sw == 2 && g.W % 2 == 0 && shared_band && nph == 2 * sh;
  // The 32x3 engine with one phase or phase pairs (all phases Wb wide) works on pixel chunks of
  // the maxHa x Wb phase grid (see PixelChunks), the other cases on bands of phase rows.
  const int64_t Wb0 = phases.empty() ? 1 : phases[0].Wb;
  const PixelChunks pc = eng.w32 && (nph == 1 || pairs32)
                             ? pixel_chunks(maxHa, Wb0, BH, g.N * G, team_size(par))
                             : PixelChunks{};
  const bool chunks = pc.n > 0;
  const int64_t nb = chunks ? pc.n : balanced_bands(maxHa, BH, g.N * G, team_size(par));
  const int64_t items = g.N * G * nb;  // (image, group, band of phase rows or pixel chunk)
  RegionErrors errs;
#pragma omp parallel if (par)
  {
#pragma omp for schedule(static)
    for (int64_t q = 0; q < G * npart; ++q) errs.run([&] {  // (group, part)
      const int64_t gi = q / npart, part = q % npart;
      std::vector<PhasePack> pp;
      for (const Phase& P : phases)
        pp.push_back({P.rs.data(), static_cast<int64_t>(P.rs.size()),
                      A.data() + P.aoff + gi * Mpad * P.Kred});
      pack_taps(w + gi * Kg * Cg * RS, Cg, Kg, RS, pp, eng.mr, Mpad, part);
    });
    std::optional<GemmScratch> Sopt;  // (not made: errs has failed, the loop below is skipped)
    std::optional<Scratch> tmpopt;
    errs.run([&] {
      Sopt.emplace(bandmax, Mpad);
      tmpopt.emplace(kSlotTmp, use_tmp ? sh * sw * Mpad * tplane : 0);
    });
#pragma omp for schedule(dynamic, 1)
    for (int64_t it = 0; it < items; ++it) errs.run([&] {
      GemmScratch& S = *Sopt;
      const Scratch& tmp = *tmpopt;
      const int64_t bi = it % nb, gi = (it / nb) % G, n = it / (nb * G);
      // phase rows [i0, i1); the chunk's pixels [q0, q1) of the band (Wb0 per row)
      int64_t i0, i1, q0 = 0, q1 = -1;
      if (chunks) {
        i0 = pc.row0(bi), i1 = i0 + pc.rows(bi);
        q0 = pc.begin(bi) - i0 * Wb0, q1 = pc.begin(bi + 1) - i0 * Wb0;
        if (i1 - i0 > BH) throw std::logic_error("conv2d: pixel chunk overflows its band");
      } else {
        i0 = band_start(bi, nb, maxHa), i1 = band_start(bi + 1, nb, maxHa);
      }
      float* gxg = gx + (n * g.C + gi * Cg) * g.H * g.W;  // [Cg][H][W]
      const float* gyg = gy + (n * g.K + gi * Kg) * g.OH * g.OW;
      if (shared_band) {
        Source s = su;
        s.p = gyg;
        build_band(s, Lu, i0, i1 - i0, S.band.data());
      }
      if (pairs || pairs32) {
        // Column phases (a, 0) and (a, 1) computed block by block into two tiles T0, T1 (channel
        // m's pixels at T + m * tp), then interleaved into the gx rows. Blocks: groups of stored
        // pixels (32x3 engine: the chunk's pixels [q0, q1), row pitch Wb) or 24-pixel panels of
        // the band (direct engine: row pitch Vu, junk columns computed and not stored).
        const int64_t tp = pairs32 ? kGroup32 : kNR, step = tp;
        float* T0 = pairs32 ? S.Ct.data() : S.Cb.data();
        float* T1 = T0 + Mpad * tp;
        for (int64_t a = 0; a < sh; ++a) {
          const Phase& P0 = phases[2 * a];
          const Phase& P1 = phases[2 * a + 1];
          if (i0 >= P0.Ha) continue;
          GemmJob J0, J1;
          J0.L = &P0.L, J1.L = &P1.L;
          J0.A = A.data() + P0.aoff + gi * Mpad * P0.Kred;
          J1.A = A.data() + P1.aoff + gi * Mpad * P1.Kred;
          J0.M = J1.M = Cg, J0.Mpad = J1.Mpad = Mpad, J0.Kred = P0.Kred, J1.Kred = P1.Kred;
          const int64_t Wb = P0.Wb, rows = std::min(i1, P0.Ha) - i0, V = pairs32 ? Wb : Vu;
          const int64_t end = pairs32 && q1 >= 0 ? std::min(q1, rows * Wb) : rows * V;
          for (int64_t p0 = pairs32 ? q0 : 0; p0 < end; p0 += step) {
            const int64_t len = std::min(step, end - p0);
            if (pairs32) {
              group32(J0, S.band.data(), p0, len, S, kn, T0);
              group32(J1, S.band.data(), p0, len, S, kn, T1);
            } else {
              direct_panel(J0, S.band.data(), p0, len, T0, S.Bp.data(), kn);
              direct_panel(J1, S.band.data(), p0, len, T1, S.Bp.data(), kn);
            }
            for_each_run(V, Wb, p0, len, [&](int64_t t, int64_t i, int64_t j, int64_t valid) {
              for (int64_t m = 0; m < Cg; ++m)
                kn.interleave2(T0 + m * tp + t, T1 + m * tp + t,
                               gxg + (m * g.H + a + sh * (i0 + i)) * g.W + 2 * j, valid);
            });
          }
        }
        return;
      }
      for (const Phase& P : phases) {
        if (i0 >= P.Ha) continue;
        GemmJob J;
        J.src = P.s0;
        J.src.p = gyg;
        J.L = &P.L;
        J.A = A.data() + P.aoff + gi * Mpad * P.Kred;
        J.M = Cg, J.Mpad = Mpad, J.Kred = P.Kred, J.w32 = eng.w32;
        if (use_tmp) {
          J.dst = tmp.data() + (P.a * sw + P.b) * Mpad * tplane;
          J.dcs = tplane, J.dW = Wq, J.oy0 = -i0, J.ox0 = 0, J.osy = 1, J.osx = 1;
        } else {
          J.dst = gxg;
          J.dcs = g.H * g.W, J.dW = g.W, J.oy0 = P.a, J.ox0 = P.b, J.osy = sh, J.osx = sw;
        }
        gemm_rows(J, i0, std::min(i1, P.Ha) - i0, S, kn, shared_band ? S.band.data() : nullptr, q0,
                  q1);
      }
      if (!use_tmp) return;
      for (int64_t a = 0; a < sh; ++a) {
        const int64_t Ha = a < g.H ? ceil_div(g.H - a, sh) : 0;
        for (int64_t c = 0; c < Cg; ++c)
          for (int64_t t = 0; t < std::min(i1, Ha) - i0; ++t) {
            float* out = gxg + (c * g.H + a + sh * (i0 + t)) * g.W;  // one gx row
            const float* p0 = tmp.data() + ((a * sw) * Mpad + c) * tplane + t * Wq;
            if (sw == 2) {
              const float* p1 = p0 + Mpad * tplane;  // phase (a, 1)
              const int64_t n1 = g.W / 2;            // columns of phase b = 1
              kn.interleave2(p0, p1, out, n1);
              if (g.W % 2) out[g.W - 1] = p0[n1];
            } else {
              for (int64_t b = 0; b < sw; ++b)
                for (int64_t j = 0; b + j * sw < g.W; ++j)
                  out[b + j * sw] = p0[b * Mpad * tplane + j];
            }
          }
      }
    });
  }
  errs.rethrow();
}

void backward_weight_f32(const ConvGeom& g, const float* gy, const float* x, float* gw) {
  const int64_t G = g.groups, Cg = g.C / G, Kg = g.K / G;
  const int64_t Kred = Cg * g.R * g.S, Mpad = round_up(Kg, kMR), K3 = round_up(Kred, 3);
  if (g.K * Kred == 0) return;
  if (g.N * g.OH * g.OW == 0) {
    std::fill_n(gw, g.K * Kred, 0.0f);
    return;
  }
  const double flops = 2.0 * g.N * g.K * Kred * g.OH * g.OW;
  const bool par = go_parallel(flops);
  const int nth = team_size(par);
  std::vector<Tap> taps;
  taps.reserve(Kred);
  for (int64_t c = 0; c < Cg; ++c)
    for (int64_t r = 0; r < g.R; ++r)
      for (int64_t s = 0; s < g.S; ++s) taps.push_back({c, r, s});
  Source s0{nullptr, Cg, g.H, g.W, g.stride_h, g.stride_w, g.pad_h, g.pad_w};
  // Work items are (group, image, band, chunk of taps). Long bands keep the pixel reductions
  // long; when they are too few for the threads, the taps are split first (each chunk needs only
  // its own channels of the band), and only then the bands are made shorter.
  const int64_t extra = Mpad * (g.OW + g.S);  // gy band floats per row
  const int64_t want = kItemsPerThread * nth;
  const int64_t ntri = K3 / 3;
  Layout L = make_layout(s0, taps, g.OH, g.OW, extra, g.OH);
  // One image of one group that needs a few bands on several threads: if the whole of it fits
  // in kSharedBudget, take it as one band shared by all threads (below) rather than bands with
  // private accumulators (enc3.long3x3, 23 rows: two bands of 12 and 11 rows, whose
  // accumulators then took ~15% of the call to clear and add up).
  if (nth > 1 && G * g.N == 1 && L.BH < g.OH) {
    Layout Ls = make_layout(s0, taps, g.OH, g.OW, extra, g.OH, kSharedBudget);
    if (Ls.BH >= g.OH) L = std::move(Ls);
  }
  int64_t nchunk = 1;
  if (nth > 1 && G * g.N * ceil_div(g.OH, L.BH) < want) {
    nchunk = std::clamp<int64_t>(ceil_div(want, G * g.N * ceil_div(g.OH, L.BH)), 1,
                                 std::max<int64_t>(1, ntri / 8));
    const int64_t cap = band_cap(g.OH, G * g.N * nchunk, nth);
    if (cap < L.BH) L = make_layout(s0, taps, g.OH, g.OW, extra, cap);
  }
  const int64_t tri_per_chunk = ceil_div(ntri, nchunk);
  nchunk = ceil_div(ntri, tri_per_chunk);
  std::vector<int64_t> offs3(L.offs);  // taps padded to a multiple of 3 with harmless dummies
  offs3.resize(K3, L.offs[Kred - 1]);  // (the last tap's channel is in the last chunk)
  const int64_t gstride = round_up(L.BH * L.V, 8) + 8;  // row pitch of the flat gy band
  const Kernels& kn = convk::kernels();
  const int64_t nb = balanced_bands(g.OH, L.BH, G * g.N * nchunk, nth);
  const int64_t items = G * g.N * nb * nchunk;  // (group, image, band, tap chunk)
  // One (group, image, band) split into tap chunks (a small image on several threads): the band
  // and the flat gy copy are built once, by all threads together, and shared by the chunks
  // (each chunk copying them for itself had made two threads barely faster than one), and as
  // every chunk owns its taps, it sums them in its own small accumulator and writes them to gw
  // (no per-thread accumulators for all of gw to clear and add up: that had cost ~20% here).
  const bool shared = G * g.N * nb == 1 && nchunk > 1;
  const int64_t tc = tri_per_chunk * 3;                   // taps of a chunk (shared: [Mpad][tc])
  const int64_t accn = shared ? 0 : G * Mpad * K3;        // per-thread accumulator [G][Mpad][K3]
  // (buffers kept per thread between calls, see Scratch: a per-call allocation here had been
  // followed by ~170 us from the last item to the end of the parallel region on 2 threads)
  Scratch acc(kSlotAcc, 2 * static_cast<size_t>(nth) * accn);
  std::memset(acc.data(), 0, sizeof(double) * nth * accn);
  Scratch band_sh(kSlotBand, shared ? L.buf_floats : 0);
  Scratch gyv_sh(kSlotGy, shared ? Mpad * gstride : 0);
  // gy rows [m0, m1) of band bi into the flat layout (zeros in the junk columns)
  auto copy_gy = [&](const float* gyn, int64_t i0, int64_t bh, int64_t m0, int64_t m1,
                     float* dst) {
    for (int64_t m = m0; m < m1; ++m) {
      float* d = dst + m * gstride;
      for (int64_t t = 0; t < bh; ++t) {
        std::memcpy(d + t * L.V, gyn + (m * g.OH + i0 + t) * g.OW, sizeof(float) * g.OW);
        if (L.V > g.OW) std::memset(d + t * L.V + g.OW, 0, sizeof(float) * (L.V - g.OW));
      }
    }
  };
  RegionErrors errs;
#pragma omp parallel if (par)
  {
    const int tid = std::min(omp_get_thread_num(), nth - 1);
    double* my = acc.data_d() + static_cast<size_t>(tid) * accn;
    // (not made: errs has failed, the item loop below is skipped)
    std::optional<Scratch> bandopt, gyvopt, locopt;
    errs.run([&] {
      bandopt.emplace(kSlotBand, shared ? 0 : L.buf_floats);
      gyvopt.emplace(kSlotGy, shared ? 0 : Mpad * gstride);  // [Mpad][gstride]: flat gy rows
      locopt.emplace(kSlotLoc, shared ? 2 * Mpad * tc : 0);  // shared: this chunk's sums [Mpad][tc]
    });
    float out[12];
    if (shared) {
      Source s = s0;
      s.p = x;
#pragma omp for schedule(static) nowait
      for (int64_t c = 0; c < (L.zero_copy ? 0 : Cg); ++c)
        errs.run([&] { build_band(s, L, 0, g.OH, band_sh.data(), c, c + 1); });
#pragma omp for schedule(static)
      for (int64_t m = 0; m < Kg; ++m)
        errs.run([&] { copy_gy(gy, 0, g.OH, m, m + 1, gyv_sh.data()); });
    }
#pragma omp for schedule(dynamic, 1)
    for (int64_t it = 0; it < items; ++it) errs.run([&] {
      const Scratch& band = *bandopt;
      const Scratch& gyv = *gyvopt;
      const Scratch& loc = *locopt;
      const int64_t ch = it % nchunk, bi = (it / nchunk) % nb;
      const int64_t n = (it / (nchunk * nb)) % g.N, gi = it / (nchunk * nb * g.N);
      const int64_t t0 = ch * tri_per_chunk * 3, t1 = std::min(K3, t0 + tri_per_chunk * 3);
      Source s = s0;
      s.p = x + (n * g.C + gi * Cg) * g.H * g.W;
      const float* gyn = gy + (n * g.K + gi * Kg) * g.OH * g.OW;  // [Kg][OH][OW]
      const int64_t i0 = band_start(bi, nb, g.OH), bh = band_start(bi + 1, nb, g.OH) - i0;
      const float* bandp = L.zero_copy ? s.p + i0 * g.W : shared ? band_sh.data() : band.data();
      const float* gyp = shared ? gyv_sh.data() : gyv.data();
      if (!shared) {
        if (!L.zero_copy)  // channels of this chunk's taps
          build_band(s, L, i0, bh, band.data(), taps[t0].c, taps[std::min(t1, Kred) - 1].c + 1);
        copy_gy(gyn, i0, bh, 0, Kg, gyv.data());
      }
      // sums of tap tt (of this chunk) for row m: accg[m * ars + tt + acol]
      double* accg = shared ? loc.data_d() : my + gi * Mpad * K3;
      const int64_t ars = shared ? tc : K3, acol = shared ? -t0 : 0;
      if (shared) std::fill_n(loc.data_d(), Mpad * tc, 0.0);
      const int64_t nflat = bh * L.V;
      for (int64_t fs = 0; fs < nflat; fs += kDotChunk) {
        const int64_t len = std::min(kDotChunk, nflat - fs);
        for (int64_t mb = 0; mb < Mpad / kMR; ++mb) {
          const float* a = gyp + mb * kMR * gstride + fs;
          double* accm = accg + mb * kMR * ars + acol;
          const float* b = bandp + fs;
          for (int64_t tt = t0; tt < t1; tt += 3) {
            kn.dot(len, a, gstride, b + offs3[tt], b + offs3[tt + 1], b + offs3[tt + 2], out);
            for (int j = 0; j < 3; ++j)
              for (int i = 0; i < kMR; ++i) accm[i * ars + tt + j] += out[j * kMR + i];
          }
        }
      }
      if (shared)  // this chunk's taps of gw (one group, one image)
        for (int64_t m = 0; m < Kg; ++m)
          for (int64_t kk = t0; kk < std::min(t1, Kred); ++kk)
            gw[m * Kred + kk] = static_cast<float>(loc.data_d()[m * tc + kk - t0]);
    });
    // Sum the per-thread accumulators into gw (the loop above ended with a barrier).
    if (!shared) {
#pragma omp for schedule(static)
      for (int64_t q = 0; q < g.K * Kred; ++q) errs.run([&] {
        const int64_t k = q / Kred, kk = q % Kred, gi = k / Kg, m = k % Kg;
        double sum = 0.0;
        for (int t = 0; t < nth; ++t) sum += acc.data_d()[t * accn + (gi * Mpad + m) * K3 + kk];
        gw[q] = static_cast<float>(sum);
      });
    }
  }
  errs.rethrow();
}

void backward_bias_f32(const ConvGeom& g, const float* gy, float* gb) {
  const int64_t P = g.OH * g.OW;
  const bool par = go_parallel(static_cast<double>(g.N) * g.K * P * 8);
#pragma omp parallel for schedule(static) if (par)
  for (int64_t k = 0; k < g.K; ++k) {
    double total = 0.0;
    for (int64_t n = 0; n < g.N; ++n) {
      const float* p = gy + (n * g.K + k) * P;
      float part[16] = {};
      int64_t i = 0;
      for (; i + 16 <= P; i += 16)
        for (int q = 0; q < 16; ++q) part[q] += p[i + q];
      double s = 0.0;
      for (int q = 0; q < 16; ++q) s += part[q];
      for (; i < P; ++i) s += p[i];
      total += s;
    }
    gb[k] = static_cast<float>(total);
  }
}

// ------------------------------------------------------------------ double reference path
template <class T>
void forward_ref(const ConvGeom& g, const T* x, const T* w, const T* bias, T* y) {
  const int64_t Cg = g.C / g.groups, Kg = g.K / g.groups;
  for (int64_t n = 0; n < g.N; ++n)
    for (int64_t k = 0; k < g.K; ++k) {
      const int64_t gi = k / Kg;
      for (int64_t oh = 0; oh < g.OH; ++oh)
        for (int64_t ow = 0; ow < g.OW; ++ow) {
          T s = bias ? bias[k] : T(0);
          for (int64_t c = 0; c < Cg; ++c)
            for (int64_t r = 0; r < g.R; ++r) {
              const int64_t ih = oh * g.stride_h - g.pad_h + r;
              if (ih < 0 || ih >= g.H) continue;
              for (int64_t q = 0; q < g.S; ++q) {
                const int64_t iw = ow * g.stride_w - g.pad_w + q;
                if (iw < 0 || iw >= g.W) continue;
                s += x[((n * g.C + gi * Cg + c) * g.H + ih) * g.W + iw] *
                     w[((k * Cg + c) * g.R + r) * g.S + q];
              }
            }
          y[((n * g.K + k) * g.OH + oh) * g.OW + ow] = s;
        }
    }
}

template <class T>
void backward_data_ref(const ConvGeom& g, const T* gy, const T* w, T* gx) {
  const int64_t Cg = g.C / g.groups, Kg = g.K / g.groups;
  std::fill_n(gx, g.N * g.C * g.H * g.W, T(0));
  for (int64_t n = 0; n < g.N; ++n)
    for (int64_t k = 0; k < g.K; ++k) {
      const int64_t gi = k / Kg;
      for (int64_t oh = 0; oh < g.OH; ++oh)
        for (int64_t ow = 0; ow < g.OW; ++ow) {
          const T v = gy[((n * g.K + k) * g.OH + oh) * g.OW + ow];
          for (int64_t c = 0; c < Cg; ++c)
            for (int64_t r = 0; r < g.R; ++r) {
              const int64_t ih = oh * g.stride_h - g.pad_h + r;
              if (ih < 0 || ih >= g.H) continue;
              for (int64_t q = 0; q < g.S; ++q) {
                const int64_t iw = ow * g.stride_w - g.pad_w + q;
                if (iw < 0 || iw >= g.W) continue;
                gx[((n * g.C + gi * Cg + c) * g.H + ih) * g.W + iw] +=
                    v * w[((k * Cg + c) * g.R + r) * g.S + q];
              }
            }
        }
    }
}

template <class T>
void backward_weight_ref(const ConvGeom& g, const T* gy, const T* x, T* gw) {
  const int64_t Cg = g.C / g.groups, Kg = g.K / g.groups;
  std::fill_n(gw, g.K * Cg * g.R * g.S, T(0));
  for (int64_t n = 0; n < g.N; ++n)
    for (int64_t k = 0; k < g.K; ++k) {
      const int64_t gi = k / Kg;
      for (int64_t oh = 0; oh < g.OH; ++oh)
        for (int64_t ow = 0; ow < g.OW; ++ow) {
          const T v = gy[((n * g.K + k) * g.OH + oh) * g.OW + ow];
          for (int64_t c = 0; c < Cg; ++c)
            for (int64_t r = 0; r < g.R; ++r) {
              const int64_t ih = oh * g.stride_h - g.pad_h + r;
              if (ih < 0 || ih >= g.H) continue;
              for (int64_t q = 0; q < g.S; ++q) {
                const int64_t iw = ow * g.stride_w - g.pad_w + q;
                if (iw < 0 || iw >= g.W) continue;
                gw[((k * Cg + c) * g.R + r) * g.S + q] +=
                    v * x[((n * g.C + gi * Cg + c) * g.H + ih) * g.W + iw];
              }
            }
        }
    }
}

template <class T>
void backward_bias_ref(const ConvGeom& g, const T* gy, T* gb) {
  const int64_t P = g.OH * g.OW;
  for (int64_t k = 0; k < g.K; ++k) {
    T s = T(0);
    for (int64_t n = 0; n < g.N; ++n)
      for (int64_t i = 0; i < P; ++i) s += gy[(n * g.K + k) * P + i];
    gb[k] = s;
  }
}

}  // namespace

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
