// Standalone tests of the CPU conv2d kernels (kernels/cpu/conv2d.h): the fast float path and the
// double reference path against naive double loops written here, for forward, backward-data,
// backward-weight and backward-bias over many shapes (odd sizes, 1x1 spatial input, 3x3 / 1x3 /
// 3x1 / 1x1 / 5x5 kernels, strides 1/2/3, paddings 0/1/2 incl. asymmetric ones, groups 1/2/C,
// batch 1 and 3, channel counts that are not multiples of 8). Outputs are pre-filled with NaN to
// check that every element is overwritten.
//
// Tolerances (per output element, against the double reference value `ref`, with `abs` = the
// same reduction computed on |operands|, i.e. sum of |terms|, and L = the reduction length):
//   float path:  |got - ref| <= 2 * L * u * abs + 1e-30,  u = 2^-24 (unit roundoff).
//                This is the classical worst-case bound for a float sum of L products in any
//                order (gamma_L); a missing or duplicated tap produces an error ~abs/L and is
//                caught for every L used here (L <= a few thousand).
//   double path: |got - ref| <= 1e-12 * abs + 1e-300   (same loops up to summation order).
#include <algorithm>
#include <array>
#include <catch2/catch.hpp>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <new>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "kernels/cpu/conv2d.h"
#include "kernels/cpu/conv2d_microkernels.h"

using st::cpu::ConvGeom;

namespace {

struct Shape {
  int64_t N, C, H, W, K, R, S, sh, sw, ph, pw, groups;
};

ConvGeom geom_of(const Shape& s) {
  ConvGeom g;
  g.N = s.N, g.C = s.C, g.H = s.H, g.W = s.W, g.K = s.K, g.R = s.R, g.S = s.S;
  g.stride_h = s.sh, g.stride_w = s.sw, g.pad_h = s.ph, g.pad_w = s.pw, g.groups = s.groups;
  g.OH = (s.H + 2 * s.ph - s.R) / s.sh + 1;
  g.OW = (s.W + 2 * s.pw - s.S) / s.sw + 1;
  return g;
}

std::string describe(const Shape& s) {
  std::ostringstream o;
  o << "N" << s.N << " C" << s.C << " " << s.H << "x" << s.W << " K" << s.K << " k" << s.R << "x"
    << s.S << " s" << s.sh << "," << s.sw << " p" << s.ph << "," << s.pw << " g" << s.groups;
  return o.str();
}

// ---- naive double references (direct loops over every term) ----
void naive_forward(const ConvGeom& g, const std::vector<double>& x, const std::vector<double>& w,
                   const std::vector<double>* b, std::vector<double>& y) {
  const int64_t Cg = g.C / g.groups, Kg = g.K / g.groups;
  y.assign(g.N * g.K * g.OH * g.OW, 0.0);
  for (int64_t n = 0; n < g.N; ++n)
    for (int64_t k = 0; k < g.K; ++k)
      for (int64_t oh = 0; oh < g.OH; ++oh)
        for (int64_t ow = 0; ow < g.OW; ++ow) {
          double s = b ? (*b)[k] : 0.0;
          for (int64_t c = 0; c < Cg; ++c)
            for (int64_t r = 0; r < g.R; ++r)
              for (int64_t q = 0; q < g.S; ++q) {
                const int64_t ih = oh * g.stride_h - g.pad_h + r;
                const int64_t iw = ow * g.stride_w - g.pad_w + q;
                if (ih < 0 || ih >= g.H || iw < 0 || iw >= g.W) continue;
                s += x[((n * g.C + (k / Kg) * Cg + c) * g.H + ih) * g.W + iw] *
                     w[((k * Cg + c) * g.R + r) * g.S + q];
              }
          y[((n * g.K + k) * g.OH + oh) * g.OW + ow] = s;
        }
}

// gx and gw from the same term loop: term(n,k,oh,ow,c,r,q) = gy * w  (-> gx) and gy * x (-> gw).
void naive_backward(const ConvGeom& g, const std::vector<double>& gy, const std::vector<double>& x,
                    const std::vector<double>& w, std::vector<double>& gx,
                    std::vector<double>& gw) {
  const int64_t Cg = g.C / g.groups, Kg = g.K / g.groups;
  gx.assign(g.N * g.C * g.H * g.W, 0.0);
  gw.assign(g.K * Cg * g.R * g.S, 0.0);
  for (int64_t n = 0; n < g.N; ++n)
    for (int64_t k = 0; k < g.K; ++k)
      for (int64_t oh = 0; oh < g.OH; ++oh)
        for (int64_t ow = 0; ow < g.OW; ++ow) {
          const double v = gy[((n * g.K + k) * g.OH + oh) * g.OW + ow];
          for (int64_t c = 0; c < Cg; ++c)
            for (int64_t r = 0; r < g.R; ++r)
              for (int64_t q = 0; q < g.S; ++q) {
                const int64_t ih = oh * g.stride_h - g.pad_h + r;
                const int64_t iw = ow * g.stride_w - g.pad_w + q;
                if (ih < 0 || ih >= g.H || iw < 0 || iw >= g.W) continue;
                const int64_t xi = ((n * g.C + (k / Kg) * Cg + c) * g.H + ih) * g.W + iw;
                const int64_t wi = ((k * Cg + c) * g.R + r) * g.S + q;
                gx[xi] += v * w[wi];
                gw[wi] += v * x[xi];
              }
        }
}

void naive_bias(const ConvGeom& g, const std::vector<double>& gy, std::vector<double>& gb) {
  gb.assign(g.K, 0.0);
  for (int64_t n = 0; n < g.N; ++n)
    for (int64_t k = 0; k < g.K; ++k)
      for (int64_t i = 0; i < g.OH * g.OW; ++i) gb[k] += gy[(n * g.K + k) * g.OH * g.OW + i];
}

std::vector<double> absv(const std::vector<double>& v) {
  std::vector<double> r(v.size());
  for (size_t i = 0; i < v.size(); ++i) r[i] = std::fabs(v[i]);
  return r;
}

template <class T>
std::vector<T> cast(const std::vector<double>& v) {
  return std::vector<T>(v.begin(), v.end());
}

// Checks got against ref with bound rel * abs + floor; reports the worst element.
template <class T>
void check_close(const char* what, const std::vector<T>& got, const std::vector<double>& ref,
                 const std::vector<double>& abs, double rel, double floor) {
  REQUIRE(got.size() == ref.size());
  double worst = 0.0;  // max of err / allowed
  size_t worst_i = 0;
  bool all_finite = true;
  for (size_t i = 0; i < got.size(); ++i) {
    const double gv = static_cast<double>(got[i]);
    if (!std::isfinite(gv)) {
      all_finite = false;
      worst_i = i;
      break;
    }
    const double ratio = std::fabs(gv - ref[i]) / (rel * abs[i] + floor);
    if (ratio > worst) worst = ratio, worst_i = i;
  }
  INFO(what << ": worst element " << worst_i << " got " << static_cast<double>(got[worst_i])
            << " ref " << ref[worst_i] << " abs " << abs[worst_i] << " (err/allowed " << worst
            << ")");
  CHECK(all_finite);
  CHECK(worst <= 1.0);
}

constexpr double kU = 1.0 / 16777216.0;  // float unit roundoff 2^-24

template <class T>
void run_case(const Shape& s, bool with_bias) {
  const ConvGeom g = geom_of(s);
  const int64_t Cg = g.C / g.groups;
  INFO(describe(s) << " -> " << g.OH << "x" << g.OW << (with_bias ? " bias" : " no-bias")
                   << (sizeof(T) == 4 ? " float" : " double"));
  REQUIRE(g.OH >= 1);
  REQUIRE(g.OW >= 1);
  std::mt19937 rng(static_cast<uint32_t>(s.C * 131 + s.K * 7 + s.H * 3 + s.W + s.R * 17 + s.S));
  std::uniform_real_distribution<float> U(-1.0f, 1.0f);
  auto rnd = [&](int64_t n) {  // values exactly representable in float
    std::vector<double> v(n);
    for (auto& e : v) e = U(rng);
    return v;
  };
  const auto x = rnd(g.N * g.C * g.H * g.W);     // (N,C,H,W)
  const auto w = rnd(g.K * Cg * g.R * g.S);      // (K,C/groups,R,S)
  const auto b = rnd(g.K);                       // (K)
  const auto gy = rnd(g.N * g.K * g.OH * g.OW);  // (N,K,OH,OW)
  const T nan = std::numeric_limits<T>::quiet_NaN();

  const bool is_float = sizeof(T) == 4;
  // Reduction lengths: forward C/g*R*S (+bias), backward-data K/g*R*S, backward-weight N*OH*OW,
  // bias N*OH*OW.
  const double Lf = static_cast<double>(Cg * g.R * g.S + 1);
  const double Ld = static_cast<double>((g.K / g.groups) * g.R * g.S);
  const double Lw = static_cast<double>(g.N * g.OH * g.OW);
  auto rel = [&](double L) { return is_float ? 2.0 * L * kU : 1e-12; };
  const double fl = is_float ? 1e-30 : 1e-300;

  // forward
  {
    std::vector<double> ref, abs;
    naive_forward(g, x, w, with_bias ? &b : nullptr, ref);
    const auto ab = absv(b);
    naive_forward(g, absv(x), absv(w), with_bias ? &ab : nullptr, abs);
    const auto xt = cast<T>(x), wt = cast<T>(w), bt = cast<T>(b);
    std::vector<T> y(ref.size(), nan);
    st::cpu::conv2d_forward<T>(g, xt.data(), wt.data(), with_bias ? bt.data() : nullptr, y.data());
    check_close("forward", y, ref, abs, rel(Lf), fl);
  }
  // backward data + weight
  {
    std::vector<double> rgx, rgw, agx, agw;
    naive_backward(g, gy, x, w, rgx, rgw);
    naive_backward(g, absv(gy), absv(x), absv(w), agx, agw);
    const auto xt = cast<T>(x), wt = cast<T>(w), gyt = cast<T>(gy);
    std::vector<T> gx(rgx.size(), nan), gw(rgw.size(), nan);
    st::cpu::conv2d_backward_data<T>(g, gyt.data(), wt.data(), gx.data());
    check_close("backward_data", gx, rgx, agx, rel(Ld), fl);
    st::cpu::conv2d_backward_weight<T>(g, gyt.data(), xt.data(), gw.data());
    check_close("backward_weight", gw, rgw, agw, rel(Lw), fl);
  }
  // bias
  {
    std::vector<double> ref, abs;
    naive_bias(g, gy, ref);
    naive_bias(g, absv(gy), abs);
    const auto gyt = cast<T>(gy);
    std::vector<T> gb(ref.size(), nan);
    st::cpu::conv2d_backward_bias<T>(g, gyt.data(), gb.data());
    check_close("backward_bias", gb, ref, abs, rel(Lw), fl);
  }
}

// N, C, H, W, K, R, S, sh, sw, ph, pw, groups
const std::vector<Shape> kSmallShapes = {
    {1, 3, 7, 5, 8, 3, 3, 1, 1, 1, 1, 1},       // odd sizes, 3x3
    {3, 5, 13, 11, 17, 3, 3, 2, 2, 1, 1, 1},    // batch 3, stride 2
    {1, 17, 13, 11, 33, 1, 3, 1, 1, 0, 1, 1},   // 1x3, pad (0,1)
    {1, 17, 13, 11, 9, 3, 1, 1, 1, 1, 0, 1},    // 3x1, pad (1,0)
    {3, 33, 7, 5, 5, 1, 1, 1, 1, 0, 0, 1},      // 1x1 stride 1 (reads the source directly)
    {1, 8, 13, 11, 16, 1, 1, 2, 2, 0, 0, 1},    // 1x1 stride 2
    {1, 5, 1, 1, 7, 3, 3, 1, 1, 1, 1, 1},       // 1x1 spatial input, 3x3
    {3, 3, 1, 1, 4, 1, 1, 1, 1, 0, 0, 1},       // 1x1 spatial input, 1x1
    {1, 3, 1, 1, 5, 3, 3, 2, 2, 1, 1, 1},       // 1x1 spatial input, stride 2
    {1, 6, 17, 19, 10, 5, 5, 1, 1, 2, 2, 2},    // 5x5, groups 2
    {3, 4, 13, 11, 6, 5, 5, 2, 2, 2, 2, 2},     // 5x5 stride 2, groups 2
    {1, 17, 11, 13, 17, 3, 3, 1, 1, 1, 1, 17},  // depthwise
    {3, 33, 9, 10, 33, 3, 3, 2, 2, 1, 1, 33},   // depthwise stride 2
    {1, 5, 16, 17, 7, 3, 3, 3, 3, 1, 1, 1},     // stride 3
    {1, 3, 8, 8, 5, 3, 3, 2, 2, 0, 0, 1},       // stride 2 pad 0: last input row/col unused
    {1, 4, 9, 7, 6, 1, 3, 1, 1, 0, 0, 1},       // 1x3 without padding
    {1, 5, 7, 6, 3, 3, 3, 1, 1, 2, 2, 1},       // pad 2 with a 3x3 kernel
    {1, 4, 5, 5, 3, 1, 1, 1, 1, 1, 1, 1},       // 1x1 with pad 1
    {1, 6, 9, 8, 5, 1, 3, 2, 1, 0, 1, 1},       // 1x3, stride (2,1)
    {3, 5, 11, 9, 33, 3, 1, 1, 2, 1, 0, 1},     // 3x1, stride (1,2)
    {1, 33, 6, 7, 17, 3, 3, 1, 1, 1, 1, 1},     // C=33, K=17
    // the pixel-broadcast 32x3 engine (GEMM rows = output channels forward, input channels for
    // backward data, padding to 32..128; reductions >= 64 taps; not 1x1): partial 3-pixel
    // tiles, a phase read in place from gy (its partial last tile bounced), empty stride phases
    {1, 32, 10, 14, 16, 3, 3, 2, 2, 1, 1, 1},   // backward data: phase (0,0) reads 5x7 gy in place
    {1, 32, 9, 11, 64, 3, 1, 3, 3, 0, 0, 1},    // 3x1 stride 3: backward data with empty phases
    {1, 64, 5, 7, 64, 3, 3, 1, 1, 1, 1, 1},     // 3x3, 2 output blocks, several K blocks
    {2, 64, 11, 9, 128, 3, 3, 2, 2, 1, 1, 2},   // groups 2, stride 2: 32 / 64 rows per group
    {1, 40, 6, 9, 60, 1, 3, 1, 1, 0, 1, 1},     // 60 outputs padded to 64 (backward: 4x24)
    // backward data, <= 8 input channels, stride 2, even width: column phases interleaved
    {1, 8, 14, 20, 16, 3, 3, 2, 2, 1, 1, 1},    // (odd widths: the shapes above)
    {1, 32, 13, 22, 24, 3, 3, 2, 2, 1, 1, 1},   // the same with the 32x3 engine (one group)
    // 1x1 stride 1, rows a multiple of 4: full panels written straight into the output rows
    {2, 16, 9, 11, 12, 1, 1, 1, 1, 0, 0, 1},    // 99 pixels: 4 full panels and a partial one
};

// Big enough to run on all threads, with several bands and several KC blocks.
const std::vector<Shape> kLargeShapes = {
    {1, 32, 90, 160, 32, 3, 3, 1, 1, 1, 1, 1},  // out_conv-like, several bands
    {1, 64, 23, 40, 128, 3, 3, 2, 2, 1, 1, 1},  // enc3-like, Kred = 576 (3 KC blocks)
    {3, 17, 30, 31, 33, 3, 3, 1, 1, 1, 1, 1},   // batch 3, parallel
    {1, 32, 45, 80, 9, 1, 1, 1, 1, 0, 0, 1},    // 1x1 32->9 (zero-copy source)
    {1, 96, 45, 80, 32, 1, 1, 1, 1, 0, 0, 1},   // 1x1 96->32: output rows written in place
    {1, 8, 90, 160, 16, 3, 3, 2, 2, 1, 1, 1},   // backward data 16->8 stride 2: phase pairs
    {2, 64, 37, 50, 24, 3, 3, 2, 2, 1, 1, 1},   // phase pairs of the 32x3 engine, many groups
    {1, 64, 45, 80, 64, 1, 3, 1, 1, 0, 1, 1},   // 1x3 64->64
    {1, 8, 90, 160, 64, 1, 1, 2, 2, 0, 0, 1},   // 1x1 stride 2
    {1, 3, 64, 100, 8, 3, 3, 2, 2, 1, 1, 1},    // in_conv1-like: full panels written in place
};

}  // namespace

TEST_CASE("conv2d float fast path matches naive double reference (small shapes)", "[conv][portable]") {
  for (const Shape& s : kSmallShapes) {
    run_case<float>(s, true);
    run_case<float>(s, false);
  }
}

TEST_CASE("conv2d float fast path matches naive double reference (threaded shapes)", "[conv][portable]") {
  for (const Shape& s : kLargeShapes) run_case<float>(s, true);
}

// The shapes that the pixel-broadcast 32x3 engine takes again through the packed 4x24 engine, so
// that both stay tested on them (the switch is restored even if a check throws).
TEST_CASE("conv2d float fast path: packed engine where the broadcast engine applies", "[conv][portable]") {
  struct Restore {
    ~Restore() { st::cpu::conv2d_set_broadcast_engine(true); }
  } restore;
  st::cpu::conv2d_set_broadcast_engine(false);
  for (const Shape& s : kLargeShapes) run_case<float>(s, true);
  for (const Shape& s : kSmallShapes)
    if (s.K / s.groups % 32 == 0 || s.C / s.groups % 32 == 0) run_case<float>(s, false);
}

// The float path keeps its working buffers (bands, tiles, packed weights, accumulators) per
// thread from call to call. Calls on NaN inputs of every kind first leave NaN in all of them;
// the checked calls after that must not read any of it into a result (checked against the naive
// reference with outputs pre-filled with NaN, so a stale or skipped value shows).
TEST_CASE("conv2d float fast path: nothing left in the reused buffers reaches a result", "[conv][portable]") {
  const float qnan = std::numeric_limits<float>::quiet_NaN();
  auto poison = [&](const Shape& s) {
    const ConvGeom g = geom_of(s);
    const int64_t Cg = g.C / g.groups;
    std::vector<float> x(g.N * g.C * g.H * g.W, qnan), w(g.K * Cg * g.R * g.S, qnan);
    std::vector<float> b(g.K, qnan), y(g.N * g.K * g.OH * g.OW, qnan), gx(x.size()), gw(w.size());
    st::cpu::conv2d_forward<float>(g, x.data(), w.data(), b.data(), y.data());
    st::cpu::conv2d_backward_data<float>(g, y.data(), w.data(), gx.data());
    st::cpu::conv2d_backward_weight<float>(g, y.data(), x.data(), gw.data());
    CHECK(std::isnan(gw[0]));  // (the poison went through)
  };
  for (const Shape& s : kLargeShapes) poison(s);
  for (const Shape& s : kSmallShapes) poison(s);
  poison({1, 96, 45, 80, 32, 3, 3, 1, 1, 1, 1, 1});  // bigger than any checked shape
  for (const Shape& s : kLargeShapes) run_case<float>(s, true);
  for (const Shape& s : kSmallShapes) run_case<float>(s, false);
}

TEST_CASE("conv2d float backward weight: a stale NaN just past a band's rows never reaches gw",
          "[conv][portable]") {
  // Backward weight sums the band's junk columns too (times gy's zeros there), and the widest
  // tap reads V - OW floats past a plane's last row: past a short band's rows, into the next
  // channel's plane or the buffer's slack. A call with more channels leaves NaN there first.
  // (Before build_band zeroed that tail this failed: one thread reads the slack after the last
  // channel; with two, a thread could read rows or channels another call had left.)
  const float qnan = std::numeric_limits<float>::quiet_NaN();
  // (No padding: the rows and columns read past the end are the poisoned call's pixels, not
  // its zero padding.)
  for (const Shape& s : {Shape{1, 3, 7, 9, 4, 3, 3, 1, 1, 0, 0, 1},
                         Shape{2, 5, 11, 13, 6, 3, 3, 2, 2, 0, 0, 1},
                         Shape{1, 4, 9, 8, 5, 1, 3, 1, 1, 0, 0, 1}}) {
    INFO(describe(s));
    const ConvGeom g = geom_of(s);
    std::mt19937 rng(7);
    std::uniform_real_distribution<float> U(-1.0f, 1.0f);
    std::vector<float> x(g.N * g.C * g.H * g.W), gy(g.N * g.K * g.OH * g.OW);
    for (float& v : x) v = U(rng);
    for (float& v : gy) v = U(rng);
    std::vector<float> gw(g.K * g.C * g.R * g.S), gw_again(gw.size());
    st::cpu::conv2d_backward_weight<float>(g, gy.data(), x.data(), gw.data());
    Shape big = s;
    big.C = 4 * s.C;
    const ConvGeom gb = geom_of(big);
    std::vector<float> xb(gb.N * gb.C * gb.H * gb.W, qnan), gyb(gb.N * gb.K * gb.OH * gb.OW, qnan);
    std::vector<float> gwb(gb.K * gb.C * gb.R * gb.S);
    st::cpu::conv2d_backward_weight<float>(gb, gyb.data(), xb.data(), gwb.data());
    REQUIRE(std::isnan(gwb[0]));  // (the poison went through)
    // The same call again, right after the poisoned one: finite, and the same sums in the same
    // order as before it (one thread: these shapes are below the parallel threshold).
    st::cpu::conv2d_backward_weight<float>(g, gy.data(), x.data(), gw_again.data());
    for (size_t i = 0; i < gw.size(); ++i) {
      INFO("gw[" << i << "]");
      REQUIRE(std::isfinite(gw_again[i]));
      REQUIRE(gw_again[i] == gw[i]);
    }
  }
}

// A thread's scratch buffers are allocated inside the float path's OpenMP regions, where an
// exception that left the region would terminate the process. With the test hook making those
// allocations fail (the first one only, then all of them), each entry point must throw
// std::bad_alloc to its caller, on one thread and on several, and compute correctly afterwards.
TEST_CASE("conv2d float fast path: a failed scratch allocation reaches the caller", "[conv][portable]") {
  struct Restore {
    ~Restore() { st::cpu::conv2d_fail_scratch_for_testing(0); }
  } restore;
  const std::vector<Shape> shapes = {
      {1, 3, 7, 5, 8, 3, 3, 1, 1, 1, 1, 1},       // small: one thread
      {1, 32, 90, 160, 32, 3, 3, 1, 1, 1, 1, 1},  // 32x3 engine, several bands
      {1, 64, 23, 40, 128, 3, 3, 2, 2, 1, 1, 1},  // packed engine; backward data by phases
      {1, 8, 90, 160, 16, 3, 3, 2, 2, 1, 1, 1},   // backward data: phase pairs
  };
  for (const Shape& s : shapes) {
    INFO(describe(s));
    const ConvGeom g = geom_of(s);
    const int64_t Cg = g.C / g.groups;
    std::vector<float> x(g.N * g.C * g.H * g.W, 0.5f), w(g.K * Cg * g.R * g.S, 0.25f);
    std::vector<float> b(g.K, 1.0f), y(g.N * g.K * g.OH * g.OW), gx(x.size()), gw(w.size());
    for (int n : {1, 1000}) {
      INFO("failing requests: " << n);
      st::cpu::conv2d_fail_scratch_for_testing(n);
      CHECK_THROWS_AS(st::cpu::conv2d_forward<float>(g, x.data(), w.data(), b.data(), y.data()),
                      std::bad_alloc);
      st::cpu::conv2d_fail_scratch_for_testing(n);
      CHECK_THROWS_AS(st::cpu::conv2d_backward_data<float>(g, y.data(), w.data(), gx.data()),
                      std::bad_alloc);
      st::cpu::conv2d_fail_scratch_for_testing(n);
      CHECK_THROWS_AS(st::cpu::conv2d_backward_weight<float>(g, y.data(), x.data(), gw.data()),
                      std::bad_alloc);
    }
    st::cpu::conv2d_fail_scratch_for_testing(0);
    run_case<float>(s, true);  // and the buffers left behind still give right results
  }
}

TEST_CASE("conv2d double path matches naive double reference", "[conv][portable]") {
  for (const Shape& s : kSmallShapes) {
    run_case<double>(s, true);
    run_case<double>(s, false);
  }
}

// ---- micro-kernels: each flavour that this build and CPU can run, against the portable one ----
//
// Tolerances. A flavour computes the portable kernel's sums in another order, with or without
// fused multiply-adds. For a float sum of L terms (the kc products and the accumulator's
// starting value: the previous C, a bias or 0) in any order, each term goes through at most L
// roundings (its product's, and one per addition on its path: a summation tree of L terms has
// L - 1 additions; adding an exact zero does not round), so (Higham, Accuracy and Stability of
// Numerical Algorithms, 2nd ed., 3.1 and 3.5)
//   |computed - exact| <= gamma_L * A,   gamma_L = L*u / (1 - L*u),  u = 2^-24,  A = sum |terms|.
// There is no underflow to account for: the operands come from U(-1, 1), which computes -1 + 2c
// in float, so a nonzero operand is at least 2^-24 in magnitude and a product at least 2^-48.
// The reference and A are computed in double (the products of two floats are exact there), with
// errors of at most gamma_L(2^-53) relative to A. Per output, with g = gamma_L(2^-53) and A_d
// the A computed in double (so A <= A_d / (1 - g)):
//   vs the double reference:  |got - ref| <= (gamma_L + g) * A_d / (1 - g)
//   flavour vs portable:      |got - portable| <= 2 * gamma_L * A_d / (1 - g)
// Packing, transposes and (de)interleaving move data: exact.
namespace {

namespace ck = st::cpu::convk;

double gamma_n(double L, double u) { return L * u / (1.0 - L * u); }

struct SumBound {
  double vs_ref;   // bound on |float result - double reference|
  double between;  // bound on |one flavour's result - another's|
};
SumBound sum_bound(int64_t L, double abs_d) {
  const double gd = gamma_n(static_cast<double>(L), 0x1p-53);
  const double gf = gamma_n(static_cast<double>(L), kU);
  const double A = abs_d / (1.0 - gd);
  return {(gf + gd) * A, 2.0 * gf * A};
}

struct RefBound {
  double ref;  // the double reference
  SumBound b;
};

// The worst error/allowed ratio over a kernel's outputs, checked once with where it occurred.
struct Worst {
  std::string what;
  double ratio = 0.0;
  int64_t at = -1;
  void add(int64_t idx, double got, double ref, double allowed) {
    const double err = std::fabs(got - ref);
    const double r = !std::isfinite(got) ? std::numeric_limits<double>::infinity()
                     : err == 0.0        ? 0.0
                     : allowed > 0.0     ? err / allowed
                                         : std::numeric_limits<double>::infinity();
    if (r > ratio || at < 0) ratio = std::max(ratio, r), at = idx;
  }
  void check() const {
    INFO(what << ": worst output " << at << ", error / allowed = " << ratio);
    CHECK(ratio <= 1.0);
  }
};

std::string flavours_of(const std::vector<ck::Kernels>& v) {
  std::string s;
  for (const auto& k : v) s += (s.empty() ? "" : ", ") + std::string(k.name);
  return s;
}

// Every micro-kernel of `fast` against the portable set `slow` and the double reference.
void check_flavour(const ck::Kernels& fast) {
  const ck::Kernels slow = ck::portable_kernels();
  const std::string fl = fast.name;
  INFO("flavour " << fl);
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> U(-1.0f, 1.0f);
  auto rnd = [&](size_t n) {
    std::vector<float> v(n);
    for (auto& e : v) e = U(rng);
    return v;
  };
  struct alignas(32) Tile {  // one 4x24 accumulator tile, 32-byte aligned
    float v[4 * 24];
  };
  alignas(32) static float Bp[257 * 24];  // packed B [kc][24], 32-byte aligned
  for (int64_t kc : {1, 2, 3, 4, 7, 64, 257}) {
    INFO("kc " << kc);
    const auto A = rnd(4 * kc);  // [kc][4]
    const auto src = rnd(2048);  // gather source
    std::vector<int64_t> offs(kc);
    for (int64_t k = 0; k < kc; ++k) offs[k] = (k * 37) % 2000;
    std::vector<float> Bflat(kc * 24);  // expected packed panel [kc][24]
    for (int64_t k = 0; k < kc; ++k)
      for (int j = 0; j < 24; ++j) Bflat[k * 24 + j] = src[offs[k] + j];
    fast.pack(kc, src.data(), offs.data(), Bp);
    for (int64_t i = 0; i < kc * 24; ++i) REQUIRE(Bp[i] == Bflat[i]);
    // C[i][j] = init + sum_k A[k][i] * B[k][j]: the double reference, sum|terms| and the bound
    auto reference = [&](int i, int j, double init) {
      double ref = init, abs = std::fabs(init);
      for (int64_t k = 0; k < kc; ++k) {
        ref += double(A[k * 4 + i]) * Bflat[k * 24 + j];
        abs += std::fabs(double(A[k * 4 + i]) * Bflat[k * 24 + j]);
      }
      return RefBound{ref, sum_bound(kc + 1, abs)};
    };
    for (bool acc : {false, true}) {
      INFO("acc " << acc);
      Tile c0, c1, c2, c3;
      for (int i = 0; i < 96; ++i) c0.v[i] = c1.v[i] = c2.v[i] = c3.v[i] = 0.5f;
      fast.gemm(kc, A.data(), Bp, c0.v, acc);
      slow.gemm(kc, A.data(), Bp, c1.v, acc);
      fast.gemm_direct(kc, A.data(), src.data(), offs.data(), c2.v, acc);
      slow.gemm_direct(kc, A.data(), src.data(), offs.data(), c3.v, acc);
      Worst ref_gemm{fl + " gemm vs reference"}, ref_direct{fl + " gemm_direct vs reference"};
      Worst agree_gemm{fl + " gemm vs portable"}, agree_direct{fl + " gemm_direct vs portable"};
      for (int i = 0; i < 4; ++i)
        for (int j = 0; j < 24; ++j) {
          const auto [ref, b] = reference(i, j, acc ? 0.5 : 0.0);
          const int q = i * 24 + j;
          ref_gemm.add(q, c0.v[q], ref, b.vs_ref);
          ref_direct.add(q, c2.v[q], ref, b.vs_ref);
          agree_gemm.add(q, c0.v[q], c1.v[q], b.between);
          agree_direct.add(q, c2.v[q], c3.v[q], b.between);
        }
      ref_gemm.check(), ref_direct.check(), agree_gemm.check(), agree_direct.check();
    }
    // The strided-C variants (a panel straight into 4 output rows ldc apart), packed and in
    // place: accumulating, starting from a bias, starting from zero; the columns past 24 stay.
    const float bias[4] = {0.25f, -0.5f, 1.0f, 2.0f};
    for (int mode = 0; mode < 3; ++mode) {
      INFO("ldc mode " << (mode == 0 ? "accumulate" : mode == 1 ? "bias" : "zero"));
      const bool acc = mode == 0;
      const float* bp = mode == 1 ? bias : nullptr;
      constexpr int64_t ldc = 29;
      std::vector<float> d0(4 * ldc, 0.5f), d1(d0), d2(d0), d3(d0);
      fast.gemm_ldc(kc, A.data(), Bp, d0.data(), ldc, acc, bp);
      slow.gemm_ldc(kc, A.data(), Bp, d1.data(), ldc, acc, bp);
      fast.gemm_direct_ldc(kc, A.data(), src.data(), offs.data(), d2.data(), ldc, acc, bp);
      slow.gemm_direct_ldc(kc, A.data(), src.data(), offs.data(), d3.data(), ldc, acc, bp);
      Worst ref_ldc{fl + " gemm_ldc vs reference"};
      Worst ref_dldc{fl + " gemm_direct_ldc vs reference"};
      Worst agree_ldc{fl + " gemm_ldc vs portable"};
      Worst agree_dldc{fl + " gemm_direct_ldc vs portable"};
      for (int i = 0; i < 4; ++i)
        for (int j = 0; j < ldc; ++j) {
          const int64_t q = i * ldc + j;
          if (j >= 24) {
            CHECK((d0[q] == 0.5f && d1[q] == 0.5f && d2[q] == 0.5f && d3[q] == 0.5f));
            continue;
          }
          const auto [ref, b] = reference(i, j, acc ? 0.5 : bp ? bias[i] : 0.0);
          ref_ldc.add(q, d0[q], ref, b.vs_ref);
          ref_dldc.add(q, d2[q], ref, b.vs_ref);
          agree_ldc.add(q, d0[q], d1[q], b.between);
          agree_dldc.add(q, d2[q], d3[q], b.between);
        }
      ref_ldc.check(), ref_dldc.check(), agree_ldc.check(), agree_dldc.check();
    }
  }
  // 32x3 pixel-broadcast kernel: C[p][m] over 3 pixels read at px[p] + offs[k], each pixel with
  // its own base (unrelated ones, and a repeated one as a partial tile uses).
  struct alignas(32) Tile32 {
    float v[3 * 32];
  };
  for (int64_t kc : {1, 2, 3, 4, 7, 128, 131}) {
    INFO("gemm32 kc " << kc);
    std::vector<float> Wv = rnd(32 * kc + 8);
    float* W = Wv.data() + (8 - reinterpret_cast<uintptr_t>(Wv.data()) / 4 % 8) % 8;  // aligned
    const auto src = rnd(2048);
    std::vector<int64_t> offs(kc);
    for (int64_t k = 0; k < kc; ++k) offs[k] = (k * 53) % 2000;
    for (const std::array<int, 3> base : {std::array<int, 3>{0, 1, 2}, {5, 41, 17}, {9, 3, 3}})
      for (bool acc : {false, true}) {
        const float* px[3] = {src.data() + base[0], src.data() + base[1], src.data() + base[2]};
        Tile32 c0, c1;
        for (int i = 0; i < 96; ++i) c0.v[i] = c1.v[i] = 0.25f;
        fast.gemm32(kc, W, px, offs.data(), c0.v, acc);
        slow.gemm32(kc, W, px, offs.data(), c1.v, acc);
        Worst vs_ref{fl + " gemm32 vs reference (acc " + std::to_string(acc) + ")"};
        Worst agree{fl + " gemm32 vs portable (acc " + std::to_string(acc) + ")"};
        for (int p = 0; p < 3; ++p)
          for (int m = 0; m < 32; ++m) {
            double ref = acc ? 0.25 : 0.0, abs = acc ? 0.25 : 0.0;
            for (int64_t k = 0; k < kc; ++k) {
              ref += double(px[p][offs[k]]) * W[k * 32 + m];
              abs += std::fabs(double(px[p][offs[k]]) * W[k * 32 + m]);
            }
            const SumBound b = sum_bound(kc + 1, abs);
            vs_ref.add(p * 32 + m, c0.v[p * 32 + m], ref, b.vs_ref);
            agree.add(p * 32 + m, c0.v[p * 32 + m], c1.v[p * 32 + m], b.between);
          }
        vs_ref.check(), agree.check();
      }
  }
  {  // 8x8 transpose: exact data movement, strided source and destination
    const auto S = rnd(8 * 11);
    std::vector<float> D(8 * 13, -9.0f);
    fast.transpose8(S.data(), 11, D.data(), 13);
    for (int j = 0; j < 8; ++j)
      for (int i = 0; i < 13; ++i) CHECK(D[j * 13 + i] == (i < 8 ? S[i * 11 + j] : -9.0f));
  }
  for (int64_t n : {0, 1, 2, 3, 4, 5, 7, 8, 9, 12, 13, 31, 1029}) {
    INFO("n " << n);
    const int64_t lda = n + 3;
    const auto a = rnd(4 * lda), b = rnd(3 * n + 8);
    float o0[12], o1[12];
    fast.dot(n, a.data(), lda, b.data(), b.data() + n, b.data() + 2 * n, o0);
    slow.dot(n, a.data(), lda, b.data(), b.data() + n, b.data() + 2 * n, o1);
    Worst vs_ref{fl + " dot vs reference"}, agree{fl + " dot vs portable"};
    for (int j = 0; j < 3; ++j)
      for (int i = 0; i < 4; ++i) {
        double ref = 0, abs = 0;
        for (int64_t t = 0; t < n; ++t) {
          ref += double(a[i * lda + t]) * b[j * n + t];
          abs += std::fabs(double(a[i * lda + t]) * b[j * n + t]);
        }
        const SumBound bd = sum_bound(std::max<int64_t>(n, 1), abs);  // no starting value
        vs_ref.add(j * 4 + i, o0[j * 4 + i], ref, bd.vs_ref);
        agree.add(j * 4 + i, o0[j * 4 + i], o1[j * 4 + i], bd.between);
      }
    vs_ref.check(), agree.check();
    // gather2 / interleave2 are exact data movement; gather2 may read sp[0 .. 2n-2] only
    const auto sp = rnd(std::max<int64_t>(2 * n - 1, 0));
    std::vector<float> d(n + 1, -9.0f);
    fast.gather2(sp.data(), d.data(), n);
    for (int64_t j = 0; j < n; ++j) CHECK(d[j] == sp[2 * j]);
    CHECK(d[n] == -9.0f);
    const auto p0 = rnd(n), p1 = rnd(n);
    std::vector<float> out(2 * n + 1, -9.0f);
    fast.interleave2(p0.data(), p1.data(), out.data(), n);
    for (int64_t j = 0; j < n; ++j) {
      CHECK(out[2 * j] == p0[j]);
      CHECK(out[2 * j + 1] == p1[j]);
    }
    CHECK(out[2 * n] == -9.0f);
  }
}

}  // namespace

TEST_CASE("conv micro-kernels: every available flavour agrees with the portable one",
          "[conv][portable]") {
  const std::vector<ck::Kernels> avail = ck::available_kernels();
  INFO("available flavours: " << flavours_of(avail) << "; selected: " << ck::kernels().name);
  REQUIRE(std::string(avail.back().name) == "portable");
#if defined(__aarch64__)
  CHECK(std::string(avail.front().name) == "neon");  // NEON is part of the base architecture
#endif
  for (const ck::Kernels& k : avail) check_flavour(k);
}

TEST_CASE("conv micro-kernels: ST_CPU_KERNELS picks a flavour, a bad value is a clear error",
          "[conv][portable]") {
  const std::vector<ck::Kernels> avail = ck::available_kernels();
  const std::string best = avail.front().name;
  CHECK(ck::select_kernels(nullptr).name == best);  // unset, empty, auto: the best one
  CHECK(ck::select_kernels("").name == best);
  CHECK(ck::select_kernels("auto").name == best);
  for (const ck::Kernels& k : avail) {
    const ck::Kernels s = ck::select_kernels(k.name);
    CHECK(std::string(s.name) == k.name);
    CHECK(s.gemm == k.gemm);
  }
  // The set this process uses follows the environment (when that is valid).
  const char* env = std::getenv("ST_CPU_KERNELS");
  INFO("ST_CPU_KERNELS=" << (env ? env : "(unset)"));
  CHECK(std::string(ck::kernels().name) == ck::select_kernels(env).name);

  // An error names the variable, the value, why, and what this build and CPU can run.
  auto message_of = [](const char* value) -> std::string {
    try {
      ck::select_kernels(value);
    } catch (const st::Error& e) {
      return e.what();
    }
    return "(no error)";
  };
  const std::string available = "available here: " + flavours_of(avail);
  for (const char* bad : {"bogus", "AVX2", "portable ", "0"}) {
    const std::string m = message_of(bad);
    INFO(m);
    CHECK(m.find(std::string("ST_CPU_KERNELS=") + bad + ":") != std::string::npos);
    CHECK(m.find("unknown flavour") != std::string::npos);
    CHECK(m.find(available) != std::string::npos);
  }
  // A known flavour that this build or CPU cannot run.
#if defined(__aarch64__)
  const char* absent = "avx2";
#else
  const char* absent = "neon";
#endif
  const std::string m = message_of(absent);
  INFO(m);
  CHECK(m.find(std::string("ST_CPU_KERNELS=") + absent + ":") != std::string::npos);
  CHECK(m.find("only in") != std::string::npos);
  CHECK(m.find(available) != std::string::npos);
#if ST_CONV_HAVE_X86
  if (best != "avx2") {  // an x86 CPU without AVX2+FMA
    const std::string m2 = message_of("avx2");
    INFO(m2);
    CHECK(m2.find("this CPU lacks AVX2 or FMA") != std::string::npos);
  }
#endif
}
