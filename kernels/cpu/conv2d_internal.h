// The float path of the CPU convolutions, shared by its files (kernels/cpu/conv2d*.cpp); not
// part of the library's interface (kernels/cpu/conv2d.h is). The design is explained at the top
// of conv2d.cpp. What lives where:
//   conv2d_layout.cpp           band layouts (phase planes), bands and pixel chunks as work items,
//                               build_band, the per-thread scratch buffers
//   conv2d_engines.cpp          engine choice, weight packing, the GEMM engines over a band
//                               (packed 4x24, direct, pixel-broadcast 32x3), storing panels
//   conv2d_forward.cpp          forward
//   conv2d_backward_data.cpp    backward data (per stride phase, through the same engines)
//   conv2d_backward_weight.cpp  backward weight (dot products along pixels) and bias gradient
//   conv2d_reference.cpp        the double-precision reference loops
//   conv2d.cpp                  the public templates and test hooks
#pragma once
#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <new>
#include <vector>

#include "kernels/cpu/conv2d.h"
#include "kernels/cpu/conv2d_microkernels.h"

namespace st::cpu::conv2d_detail {

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
extern std::atomic<bool> g_use32;  // the 32x3 engine where it applies (conv2d_set_broadcast_engine)
extern std::atomic<int> g_fail_scratch;  // conv2d_fail_scratch_for_testing

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


inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// A reduction of Kred taps in n blocks of `size` taps (the last one shorter), each <= max_size;
// n = 0 for an empty reduction (a backward-data phase without taps).
struct KBlocks {
  int64_t n = 0, size = 0;
};
inline KBlocks k_blocks(int64_t Kred, int64_t max_size) {
  KBlocks b;
  b.n = Kred > 0 ? ceil_div(Kred, max_size) : 0;
  b.size = b.n > 0 ? ceil_div(Kred, b.n) : 0;
  return b;
}
inline int64_t round_up(int64_t a, int64_t b) { return ceil_div(a, b) * b; }
// floor division for possibly negative numerators (b > 0)
inline int64_t floor_div(int64_t a, int64_t b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }

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

struct Tap {
  int64_t c, r, s;
};

// Every tap of an R x S kernel over Cg channels, in the weights' (c, r, s) order.
inline std::vector<Tap> all_taps(int64_t Cg, int64_t R, int64_t S) {
  std::vector<Tap> taps;
  taps.reserve(static_cast<size_t>(Cg * R * S));
  for (int64_t c = 0; c < Cg; ++c)
    for (int64_t r = 0; r < R; ++r)
      for (int64_t s = 0; s < S; ++s) taps.push_back({c, r, s});
  return taps;
}

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

// The band layout of one call (see the definition for the parameters).
Layout make_layout(const Source& s, const std::vector<Tap>& taps, int64_t OH, int64_t OW,
                   int64_t extra_per_row, int64_t max_bh, int64_t budget = kBandBudget);

// Bands and pixel chunks as work items (conv2d_layout.cpp).
int64_t band_cap(int64_t OH, int64_t other_items, int nth);
int64_t balanced_bands(int64_t OH, int64_t bh_max, int64_t other_items, int nth);
inline int64_t band_start(int64_t bi, int64_t nb, int64_t OH) { return bi * OH / nb; }

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
int64_t chunk_rows_hint(int64_t OH, int64_t other_items, int nth);
PixelChunks pixel_chunks(int64_t OH, int64_t OW, int64_t BH, int64_t other_items, int nth);

// Fills a (thread-private) band buffer for output rows [i0, i0 + bh); only source channels
// [c0, c1) (default: all).
void build_band(const Source& s, const Layout& L, int64_t i0, int64_t bh, float* buf,
                int64_t c0 = 0, int64_t c1 = -1);

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

struct Engine {
  bool direct = false, w32 = false;
  int64_t mr = kMR, Mpad = 0;
};
Engine choose_engine(int64_t M, int64_t Kred, bool one_by_one);

constexpr int64_t kPackTaps = 128;
inline int64_t pack_pieces(int64_t Kred) { return std::max<int64_t>(1, ceil_div(Kred, kPackTaps)); }

void pack_rows(const float* W, int64_t M, int64_t mr, int64_t Kred, float* out, int64_t mb,
               int64_t part, const Kernels& kn);

constexpr int64_t kPackK = 4;
struct PhasePack {
  const int64_t* rs = nullptr;  // the phase's kernel taps as offsets r*S + s
  int64_t nrs = 0;
  float* out = nullptr;  // its packed weights [Mpad/mr][Kg*nrs][mr]
};
void pack_taps(const float* w, int64_t Cg, int64_t Kg, int64_t RS, const std::vector<PhasePack>& ph,
               int64_t mr, int64_t Mpad, int64_t part);

template <class Fn>
void for_each_run(int64_t V, int64_t OW, int64_t f0, int64_t len, Fn fn) {
  for (int64_t t = 0; t < len;) {
    const int64_t f = f0 + t, i = f / V, j = f % V;
    const int64_t run = std::min(len - t, V - j);
    if (j < OW) fn(t, i, j, std::min(run, OW - j));
    t += run;
  }
}


// Stores flat pixels [f0, f0+len) of band rows from i0 (conv2d_engines.cpp).
void store_panel(const GemmJob& J, int64_t i0, int64_t f0, int64_t len, const float* Cb,
                 int64_t pitch = kNR, int64_t V = 0);

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
  Scratch(ScratchSlot slot, size_t n);  // may throw std::bad_alloc
  float* data() const { return p_; }
  double* data_d() const { return reinterpret_cast<double*>(p_); }  // sized as 2 floats each

 private:
  ABuf<float> own_;
  float* p_ = nullptr;
};


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

// The GEMM engines over one band (conv2d_engines.cpp; comments at the definitions).
void group32(const GemmJob& J, const float* band, int64_t p0, int64_t glen, GemmScratch& S,
             const Kernels& kn, float* Ct);
void direct_panel(const GemmJob& J, const float* band, int64_t f0, int64_t len, float* Cb,
                  float* Bp, const Kernels& kn);
void gemm_rows(const GemmJob& J, int64_t i0, int64_t bh, GemmScratch& S, const Kernels& kn,
               const float* prebuilt = nullptr, int64_t q0 = 0, int64_t q1 = -1);

inline int team_size(bool par) { return par ? omp_get_max_threads() : 1; }
inline bool go_parallel(double flops) {
  return flops > kParallelFlops && !omp_in_parallel() && omp_get_max_threads() > 1;
}

// The float entry points and the double reference (one file each).
void forward_f32(const ConvGeom& g, const float* x, const float* w, const float* bias, float* y);
void backward_data_f32(const ConvGeom& g, const float* gy, const float* w, float* gx);
void backward_weight_f32(const ConvGeom& g, const float* gy, const float* x, float* gw);
void backward_bias_f32(const ConvGeom& g, const float* gy, float* gb);
void forward_ref(const ConvGeom& g, const double* x, const double* w, const double* bias,
                 double* y);
void backward_data_ref(const ConvGeom& g, const double* gy, const double* w, double* gx);
void backward_weight_ref(const ConvGeom& g, const double* gy, const double* x, double* gw);
void backward_bias_ref(const ConvGeom& g, const double* gy, double* gb);

}  // namespace st::cpu::conv2d_detail
