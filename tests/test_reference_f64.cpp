// Independent float64 references for the per-element math the CPU and CUDA backends share
// (kernels/common/roi_align.h, resample.h, detect_math.h). test_cuda.cpp compares the two
// backends with each other and test_shared_math.cpp the library with the same headers, so a
// formula error in a header would show in neither; here each op is computed again, in float64,
// straight from its definition, without the headers:
//   ROIAlign: torchvision's roi_align (MASKRCNN.md §5.1): the box scaled and, when aligned, shifted
//     by half a pixel; PH x PW bins, each the mean of grid_h x grid_w bilinear samples at the
//     centres of a regular sub-grid (grid = sampling_ratio, or ceil(bin size) when adaptive); a
//     sample more than one pixel outside the image is 0, one within it reads the clamped border.
//   Resampling: PyTorch's interpolate, mode "bilinear" with align_corners=False (source
//     coordinate (d + 0.5) * in / out - 0.5, negative ones clamped to 0, taps clamped to the last
//     row) and the legacy mode "nearest" (floor(d * scale), scale = in / out in float32, as
//     PyTorch evaluates it), forward and backward (the adjoint of the forward's linear map).
//   Mask paste: Detectron2's grid_sample paste over the whole image (no window) and torchvision's
//     paste_masks_in_image (pad, expand the box, truncate, resize, copy), MASKRCNN.md §5.5, §7.
// The library computes in float32 (torch's own rounding) or float64; the tolerances below are
// derived from the operations it rounds (comments at each), never fitted. Where the exact result
// sits on a discontinuity of the definition within that rounding (a sample on the -1 / H edge of
// the image, an adaptive grid size or a truncated box corner at an integer, a mask value at the
// threshold), the element is not compared and the tests require such elements to stay rare.
#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "teacher_port/detect_ops.h"
#include "teacher_port/glue.h"
#include "test_util.h"

using namespace st;
using test::gamma;
using test::kU32;

namespace {

constexpr double kU64 = 0x1p-53;
double unit(DType dt) { return dt == DType::F32 ? kU32 : kU64; }

std::vector<double> random_values(size_t n, uint32_t seed, double lo, double hi) {
  std::mt19937 g(seed);
  std::uniform_real_distribution<float> u{float(lo), float(hi)};
  std::vector<double> v(n);
  for (auto& x : v) x = double(u(g));  // float32 values: exact in both formats
  return v;
}
Tensor tensor_of(const std::vector<double>& v, const Shape& s, DType dt) {
  return Tensor::from_vector(v, s).to(dt);
}

// ---------------- ROIAlign ----------------
// torchvision's bilinear_interpolate at (y, x) of an H x W plane: 0 beyond one pixel outside
// the image; otherwise the coordinates clamped into [0, H-1] x [0, W-1] and the four neighbours
// weighted by their distances. `absw` gets sum |weight * value| of the taps.
double roi_sample(const double* p, int64_t H, int64_t W, double y, double x, double* absw) {
  *absw = 0;
  if (y < -1.0 || y > double(H) || x < -1.0 || x > double(W)) return 0;
  y = std::clamp(y, 0.0, double(H - 1));
  x = std::clamp(x, 0.0, double(W - 1));
  const int64_t y0 = std::min<int64_t>(int64_t(std::floor(y)), H - 1), x0 = std::min<int64_t>(int64_t(std::floor(x)), W - 1);
  const int64_t y1 = std::min(y0 + 1, H - 1), x1 = std::min(x0 + 1, W - 1);
  const double fy = y - double(y0), fx = x - double(x0);
  const double w[4] = {(1 - fy) * (1 - fx), (1 - fy) * fx, fy * (1 - fx), fy * fx};
  const double v[4] = {p[y0 * W + x0], p[y0 * W + x1], p[y1 * W + x0], p[y1 * W + x1]};
  double s = 0;
  for (int k = 0; k < 4; ++k) s += w[k] * v[k], *absw += std::abs(w[k] * v[k]);
  return s;
}

// ST_BOUND_REPORT=1 prints each comparison's worst |err| / bound and the fraction compared.
void report(const std::string& what, double worst_ratio, double fraction) {
  if (std::getenv("ST_BOUND_REPORT"))
    std::printf("bound-report reference-f64 %-40s worst |err|/bound %.3g, compared %.4f\n",
                what.c_str(), worst_ratio, fraction);
}

struct RoiCase {
  int64_t N = 1, C = 2, H = 1, W = 1, PH = 7, PW = 7, sr = 0;
  double scale = 1;
  bool aligned = true;
  std::vector<double> x, rois;  // (N, C, H, W); (R, 5)
};

// One axis of a box: start, bin size and the candidate sample-grid sizes (two where the adaptive
// size ceil(extent / bins) is within the library's rounding of an integer).
struct RoiAxis {
  double start, bin, A;
  std::vector<int64_t> grids;
};
RoiAxis roi_axis(double a0, double a1, double scale, int64_t bins, int64_t sr, bool aligned, double u) {
  const double off = aligned ? 0.5 : 0.0;
  RoiAxis ax;
  ax.start = a0 * scale - off;
  double extent = a1 * scale - off - ax.start;
  if (!aligned) extent = std::max(extent, 1.0);  // torchvision: non-aligned boxes are >= 1 pixel
  ax.bin = extent / double(bins);
  // Magnitude of the terms the library rounds on this axis (scale rounded to the format, box
  // corner times scale, minus the offset, the extent, the bin): see coord_err below.
  ax.A = std::abs(a0 * scale) + std::abs(a1 * scale) + 1;
  if (sr > 0) {
    ax.grids = {sr};
  } else {
    const double g = ax.bin, k = std::round(g);
    // The computed bin size is within 8 u A / bins of the exact one (below).
    if (std::abs(g - k) <= 8 * u * ax.A / double(bins) + 2 * u * std::abs(g))
      ax.grids = {int64_t(k), int64_t(k) + 1};
    else
      ax.grids = {int64_t(std::ceil(g))};
  }
  return ax;
}

// The library's error in one sample coordinate on an axis (format unit u): the scale, a0 * scale,
// - off, the extent (2 more), / bins, p * bin, (i + 0.5) * bin, / grid and the two sums each round
// once, every term bounded by A (or A / bins); summing their propagated errors gives under 27 u A
// (to first order), rounded up to gamma(32) A.
double coord_err(const RoiAxis& ax, double u) { return gamma(32, u) * ax.A; }

struct RoiRef {
  std::vector<double> v, bound;
  std::vector<char> checked;
};

// The reference and its bound for every output (R, C, PH, PW), for a library computing with
// unit u. An output is not checked when a sample lies within the coordinate error of the -1 / H
// (or -1 / W) edge, where the definition jumps between 0 and the border value.
RoiRef roi_reference(const RoiCase& c, double u) {
  const int64_t R = int64_t(c.rois.size() / 5);
  RoiRef out;
  const size_t n = size_t(R * c.C * c.PH * c.PW);
  out.v.assign(n, 0), out.bound.assign(n, 0), out.checked.assign(n, 1);
  for (int64_t r = 0; r < R; ++r) {
    const double* b = &c.rois[size_t(r * 5)];
    const int64_t img = int64_t(b[0]);
    const RoiAxis ay = roi_axis(b[2], b[4], c.scale, c.PH, c.sr, c.aligned, u);
    const RoiAxis ax = roi_axis(b[1], b[3], c.scale, c.PW, c.sr, c.aligned, u);
    const double ey = coord_err(ay, u), ex = coord_err(ax, u);
    for (int64_t ch = 0; ch < c.C; ++ch) {
      const double* plane = &c.x[size_t((img * c.C + ch) * c.H * c.W)];
      double Mp = 0;
      for (int64_t i = 0; i < c.H * c.W; ++i) Mp = std::max(Mp, std::abs(plane[i]));
      for (int64_t ph = 0; ph < c.PH; ++ph)
        for (int64_t pw = 0; pw < c.PW; ++pw) {
          const size_t o = size_t(((r * c.C + ch) * c.PH + ph) * c.PW + pw);
          // Every candidate grid gives a value; the library must be within the bound of one.
          // Stored: the value of the first candidate and the bound widened to cover the others.
          double v0 = 0, bound = 0;
          bool first = true, ambiguous = false;
          for (int64_t gh : ay.grids)
            for (int64_t gw : ax.grids) {
              double acc = 0, err = 0;
              const int64_t count = std::max<int64_t>(gh * gw, 1);
              if (gh > 0 && gw > 0)
                for (int64_t iy = 0; iy < gh; ++iy) {
                  const double y = ay.start + double(ph) * ay.bin + (double(iy) + 0.5) * ay.bin / double(gh);
                  for (int64_t ix = 0; ix < gw; ++ix) {
                    const double x = ax.start + double(pw) * ax.bin + (double(ix) + 0.5) * ax.bin / double(gw);
                    for (double e : {-1.0, double(c.H)})
                      if (std::abs(y - e) <= ey) ambiguous = true;
                    for (double e : {-1.0, double(c.W)})
                      if (std::abs(x - e) <= ex) ambiguous = true;
                    double s_abs = 0;
                    acc += roi_sample(plane, c.H, c.W, y, x, &s_abs);
                    // Per sample: a coordinate off by ey, ex moves the bilinear value by at most
                    // (ey + ex) times the largest difference of neighbours (2 Mp); the two
                    // computed weights 1 - f round once each (2 u Mp over the four taps, plus
                    // slack for second-order terms); the products, the four-term sum, and the
                    // count-term accumulation and the division round gamma(count + 6) of it.
                    err += 2 * Mp * (ey + ex) + 3 * u * Mp + gamma(double(count + 6), u) * s_abs;
                  }
                }
              const double v = acc / double(count), bnd = err / double(count) + u * std::abs(v);
              if (first) {
                v0 = v, bound = bnd, first = false;
              } else {
                bound = std::max(bound, std::abs(v - v0) + bnd);
              }
            }
          out.v[o] = v0, out.bound[o] = bound, out.checked[o] = !ambiguous;
        }
    }
  }
  return out;
}

// Compares the CPU op with the reference in the format dt; returns the fraction of outputs checked.
double check_roi(const RoiCase& c, DType dt) {
  const int64_t R = int64_t(c.rois.size() / 5);
  const Tensor y = teacher::roi_align(tensor_of(c.x, {c.N, c.C, c.H, c.W}, dt),
                                      tensor_of(c.rois, {R, 5}, dt), c.PH, c.PW, c.scale, c.sr,
                                      c.aligned);
  REQUIRE(y.dtype() == dt);
  const auto got = y.to_vector<double>();
  const RoiRef ref = roi_reference(c, unit(dt));
  REQUIRE(got.size() == ref.v.size());
  size_t checked = 0;
  double worst = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    if (!ref.checked[i]) continue;
    ++checked;
    if (ref.bound[i] > 0) worst = std::max(worst, std::abs(got[i] - ref.v[i]) / ref.bound[i]);
    INFO("output " << i << " (roi " << i / size_t(c.C * c.PH * c.PW) << "): got " << got[i]
                   << " reference " << ref.v[i] << " bound " << ref.bound[i]);
    REQUIRE(std::abs(got[i] - ref.v[i]) <= ref.bound[i]);
  }
  const double frac = got.empty() ? 1.0 : double(checked) / double(got.size());
  report("roi_align " + std::string(dtype_name(dt)) + (c.aligned ? " aligned" : " not aligned") +
             " sr " + std::to_string(c.sr),
         worst, frac);
  return frac;
}

// ---------------- resampling ----------------
// PyTorch's bilinear source coordinate (align_corners=False) on one axis: the two taps and
// their weights, exact.
struct Tap {
  int64_t i0, i1;
  double w0, w1, src;
};
Tap bilinear_ref(int64_t d, int64_t in, int64_t out) {
  double src = (double(d) + 0.5) * double(in) / double(out) - 0.5;
  if (src < 0) src = 0;
  const int64_t i0 = std::min<int64_t>(int64_t(std::floor(src)), in - 1);
  const int64_t i1 = std::min(i0 + 1, in - 1);
  const double f = i0 == in - 1 ? 0.0 : src - double(i0);
  return {i0, i1, 1 - f, f, src};
}
// The error of the library's source coordinate: float32 rounds the scale in / out (torch
// computes it in float), then (d + 0.5) * scale - 0.5 in double: (d + 0.5) * scale < in, so
// within in * u + a few double roundings of in, under (in + 1) u; float64 rounds the scale, the
// product and the difference: 3 (in + 1) u.
double src_err(int64_t in, DType dt) {
  return dt == DType::F32 ? double(in + 1) * kU32 : 3 * double(in + 1) * kU64;
}

std::vector<double> bilinear_forward_ref(const std::vector<double>& x, int64_t NC, int64_t H,
                                         int64_t W, int64_t OH, int64_t OW, DType dt,
                                         std::vector<double>* bound) {
  std::vector<double> y(size_t(NC * OH * OW));
  bound->assign(y.size(), 0);
  const double u = unit(dt), dy = src_err(H, dt), dx = src_err(W, dt);
  for (int64_t p = 0; p < NC; ++p) {
    const double* plane = &x[size_t(p * H * W)];
    double Mp = 0;
    for (int64_t i = 0; i < H * W; ++i) Mp = std::max(Mp, std::abs(plane[i]));
    for (int64_t i = 0; i < OH; ++i)
      for (int64_t j = 0; j < OW; ++j) {
        const Tap a = bilinear_ref(i, H, OH), b = bilinear_ref(j, W, OW);
        double s = 0, sabs = 0;
        for (auto [r, hw] : {std::pair{a.i0, a.w0}, std::pair{a.i1, a.w1}})
          for (auto [q, ww] : {std::pair{b.i0, b.w0}, std::pair{b.i1, b.w1}}) {
            s += hw * ww * plane[r * W + q];
            sabs += std::abs(hw * ww * plane[r * W + q]);
          }
        const size_t o = size_t((p * OH + i) * OW + j);
        y[o] = s;
        // The interpolant is continuous and piecewise linear in each source coordinate (the
        // clamps included), with slope at most the largest neighbour difference, 2 Mp: a source
        // coordinate off by dy, dx moves it by 2 Mp (dy + dx). The four weights (each axis'
        // fraction and 1 - fraction) round once each: 4 u Mp and second-order slack. The
        // evaluation h0 (w0 a + w1 b) + h1 (w0 c + w1 d) rounds each term 4 times: gamma(5).
        (*bound)[o] = 2 * Mp * (dy + dx) + 5 * u * Mp + gamma(5, u) * sabs;
      }
  }
  return y;
}

// The backward: gx = A^T gy with A the forward's exact matrix. Bound for input k: each output o
// whose exact source coordinate lies within 1 + d of k on both axes (the only ones whose exact
// or computed weight on k can be non-zero) contributes with a coefficient off by at most
// dy + dx + 5u (the one-axis weight is a hat function of the source coordinate, slope 1, plus
// its rounding; at the clamped top both taps add into one element: 2u), and the library's
// accumulation of n such contributions (each h*w*g rounded twice) adds gamma(n + 2) of their sum.
std::vector<double> bilinear_backward_ref(const std::vector<double>& gy, int64_t NC, int64_t H,
                                          int64_t W, int64_t OH, int64_t OW, DType dt,
                                          std::vector<double>* bound) {
  std::vector<double> gx(size_t(NC * H * W), 0), abs_terms(gx.size(), 0), near_abs(gx.size(), 0),
      near_n(gx.size(), 0);
  const double u = unit(dt), dy = src_err(H, dt), dx = src_err(W, dt);
  const double ec = dy + dx + 5 * u;
  for (int64_t p = 0; p < NC; ++p)
    for (int64_t i = 0; i < OH; ++i)
      for (int64_t j = 0; j < OW; ++j) {
        const double g = gy[size_t((p * OH + i) * OW + j)];
        const Tap a = bilinear_ref(i, H, OH), b = bilinear_ref(j, W, OW);
        for (auto [r, hw] : {std::pair{a.i0, a.w0}, std::pair{a.i1, a.w1}})
          for (auto [q, ww] : {std::pair{b.i0, b.w0}, std::pair{b.i1, b.w1}}) {
            gx[size_t((p * H + r) * W + q)] += hw * ww * g;
            abs_terms[size_t((p * H + r) * W + q)] += std::abs(hw * ww * g);
          }
        // The inputs this output may touch: the clamped source +- (1 + d).
        const double sy = std::min(a.src, double(H - 1)), sx = std::min(b.src, double(W - 1));
        for (int64_t r = std::max<int64_t>(0, int64_t(std::floor(sy - 1 - dy)));
             r <= std::min<int64_t>(H - 1, int64_t(std::ceil(sy + 1 + dy))); ++r)
          for (int64_t q = std::max<int64_t>(0, int64_t(std::floor(sx - 1 - dx)));
               q <= std::min<int64_t>(W - 1, int64_t(std::ceil(sx + 1 + dx))); ++q) {
            near_abs[size_t((p * H + r) * W + q)] += std::abs(g);
            near_n[size_t((p * H + r) * W + q)] += 4;  // up to four taps of one output
          }
      }
  bound->assign(gx.size(), 0);
  for (size_t k = 0; k < gx.size(); ++k)
    (*bound)[k] = ec * near_abs[k] + gamma(near_n[k] + 2, u) * (abs_terms[k] + ec * near_abs[k]);
  return gx;
}

// PyTorch's legacy nearest source index: floor(d * scale), scale = in / out, both in float32
// (upsample_nearest: compute_scales_value<float>, nearest_idx's floorf), clamped to in - 1. The
// float evaluation is the definition: it differs from floor(d * in / out) in exact arithmetic
// where that is an integer and float rounding lands just below it (in = 2, out = 82, d = 41);
// the test below checks that this is the only difference.
int64_t nearest_ref(int64_t d, int64_t in, int64_t out) {
  const float scale = float(in) / float(out);
  const float prod = float(d) * scale;
  return std::min<int64_t>(int64_t(std::floor(prod)), in - 1);
}

// ---------------- mask paste ----------------
struct PasteCase {
  int64_t D = 0, M = 28, H = 1, W = 1;
  std::vector<double> masks, boxes;  // (D, M, M) in [0, 1]; (D, 4)
};

// Detectron2 (MASKRCNN.md §5.5): the grid_sample coordinate of pixel (px, py) in mask pixels is
// ((p + 0.5) - a0) / (a1 - a0) * M - 0.5; zero padding outside the mask. Every image pixel is
// evaluated (Detectron2's GPU path), not a window.
// Bound (float32): with a = ((p + 0.5) - a0) / (a1 - a0), the library's coordinate
// ((2 fl(a) - 1 + 1) M - 1) / 2 rounds 7 times on terms bounded by M (|a| + 1) + 1: gamma(8) of
// that per axis; the zero-padded bilinear interpolant moves by at most the largest neighbour
// difference (max m) per pixel of coordinate error; the weights round once each (4 u max m) and
// the products and the four-term sum round gamma(6) of sum |w m|.
double d2_value(const double* m, int64_t M, const double* box, int64_t px, int64_t py, double* bound) {
  const double ax = (double(px) + 0.5 - box[0]) / (box[2] - box[0]);
  const double ay = (double(py) + 0.5 - box[1]) / (box[3] - box[1]);
  const double u = ax * double(M) - 0.5, v = ay * double(M) - 0.5;
  const double u0 = std::floor(u), v0 = std::floor(v), fu = u - u0, fv = v - v0;
  double s = 0, sabs = 0, mmax = 0;
  for (int64_t i = 0; i < M * M; ++i) mmax = std::max(mmax, std::abs(m[i]));
  for (int dv = 0; dv < 2; ++dv)
    for (int du = 0; du < 2; ++du) {
      const int64_t vv = int64_t(v0) + dv, uu = int64_t(u0) + du;
      const double w = (dv ? fv : 1 - fv) * (du ? fu : 1 - fu);
      const double val = (vv >= 0 && vv < M && uu >= 0 && uu < M) ? m[vv * M + uu] : 0.0;
      s += w * val, sabs += std::abs(w * val);
    }
  const double ex = gamma(8, kU32) * (double(M) * (std::abs(ax) + 1) + 1);
  const double ey = gamma(8, kU32) * (double(M) * (std::abs(ay) + 1) + 1);
  *bound = mmax * (ex + ey) + 4 * kU32 * mmax + gamma(6, kU32) * sabs;
  return s;
}

// torchvision: the mask padded by one zero pixel a side, the box scaled about its centre by
// (M + 2) / M and truncated toward zero, the padded mask resized (bilinear, align_corners=False)
// to the integer box's (x1 - x0 + 1) x (y1 - y0 + 1) and copied where the box meets the image.
// The corners: the library's (c -+ half) rounds the scale to float and 5 more times on terms
// bounded by |c| + |half|: a corner within gamma(6) of that of an integer is ambiguous (the
// truncation jumps there), and the box is not compared.
struct TvBox {
  int64_t x0, y0, x1, y1;
  bool ambiguous = false;
};
TvBox tv_box(const double* b, int64_t M) {
  const double scale = double(M + 2) / double(M);
  const double wh = (b[2] - b[0]) * 0.5 * scale, hh = (b[3] - b[1]) * 0.5 * scale;
  const double xc = (b[2] + b[0]) * 0.5, yc = (b[3] + b[1]) * 0.5;
  TvBox t;
  auto corner = [&](double v, double mag, int64_t* out) {
    *out = int64_t(std::trunc(v));
    const double e = gamma(6, kU32) * mag;
    if (std::abs(v - std::round(v)) <= e && std::round(v) != 0) t.ambiguous = true;
  };
  corner(xc - wh, std::abs(xc) + wh, &t.x0);
  corner(xc + wh, std::abs(xc) + wh, &t.x1);
  corner(yc - hh, std::abs(yc) + hh, &t.y0);
  corner(yc + hh, std::abs(yc) + hh, &t.y1);
  return t;
}

// The pasted value at (x, y) for a box (NaN where the paste does not write), and its bound: the
// bilinear resize's (bilinear_forward_ref's derivation, the source size M + 2, float32).
double tv_value(const double* m, int64_t M, const TvBox& t, int64_t H, int64_t W, int64_t x,
                int64_t y, double* bound) {
  const int64_t bw = std::max<int64_t>(t.x1 - t.x0 + 1, 1), bh = std::max<int64_t>(t.y1 - t.y0 + 1, 1);
  if (x < std::max<int64_t>(t.x0, 0) || x >= std::min(t.x1 + 1, W) || y < std::max<int64_t>(t.y0, 0) ||
      y >= std::min(t.y1 + 1, H))
    return NAN;
  const int64_t P = M + 2;
  auto padded = [&](int64_t i, int64_t j) {
    return (i >= 1 && i <= M && j >= 1 && j <= M) ? m[(i - 1) * M + (j - 1)] : 0.0;
  };
  const Tap a = bilinear_ref(y - t.y0, P, bh), b = bilinear_ref(x - t.x0, P, bw);
  double s = 0, sabs = 0, mmax = 0;
  for (int64_t i = 0; i < M * M; ++i) mmax = std::max(mmax, std::abs(m[i]));
  for (auto [r, hw] : {std::pair{a.i0, a.w0}, std::pair{a.i1, a.w1}})
    for (auto [q, ww] : {std::pair{b.i0, b.w0}, std::pair{b.i1, b.w1}})
      s += hw * ww * padded(r, q), sabs += std::abs(hw * ww * padded(r, q));
  *bound = 2 * mmax * (src_err(P, DType::F32) * 2) + 5 * kU32 * mmax + gamma(5, kU32) * sabs;
  return s;
}

// Compares paste_masks (CPU) with the reference; returns the fraction of pixels compared.
double check_paste(const PasteCase& c, teacher::Convention conv, DType dt, double thr = 0.5) {
  const Tensor got = teacher::paste_masks(tensor_of(c.masks, {c.D, c.M, c.M}, dt),
                                          tensor_of(c.boxes, {c.D, 4}, dt), c.H, c.W, conv, thr);
  REQUIRE(got.shape() == Shape{c.D, c.H, c.W});
  const auto g = got.to_vector<uint8_t>();
  size_t compared = 0, total = 0;
  double closest = INFINITY;  // the smallest |value - threshold| / bound compared
  for (int64_t d = 0; d < c.D; ++d) {
    const double* m = &c.masks[size_t(d * c.M * c.M)];
    const double* b = &c.boxes[size_t(d * 4)];
    const bool d2 = conv == teacher::Convention::Detectron2;
    const TvBox t = tv_box(b, c.M);
    for (int64_t y = 0; y < c.H; ++y)
      for (int64_t x = 0; x < c.W; ++x) {
        ++total;
        if (!d2 && t.ambiguous) continue;
        double bound = 0;
        const double v = d2 ? d2_value(m, c.M, b, x, y, &bound) : tv_value(m, c.M, t, c.H, c.W, x, y, &bound);
        const uint8_t on = std::isnan(v) ? 0 : (d2 ? v >= thr : v > thr);
        if (!std::isnan(v) && std::abs(v - thr) <= bound) continue;  // at the threshold
        ++compared;
        if (!std::isnan(v)) closest = std::min(closest, std::abs(v - thr) / bound);
        INFO("mask " << d << " box (" << b[0] << ", " << b[1] << ", " << b[2] << ", " << b[3]
                     << ") pixel (" << x << ", " << y << "): reference value " << v << " (bound "
                     << bound << ")");
        REQUIRE(int(g[size_t((d * c.H + y) * c.W + x)]) == int(on));
      }
  }
  const double frac = total ? double(compared) / double(total) : 1.0;
  report(std::string("paste ") + (conv == teacher::Convention::Detectron2 ? "detectron2" : "torchvision") +
             " " + dtype_name(dt) + " (closest |v-thr|/bound " + std::to_string(closest) + ")",
         0, frac);
  return frac;
}

}  // namespace

TEST_CASE("reference f64: ROIAlign against torchvision's definition, aligned or not, fixed and adaptive sampling",
          "[portable][teacher]") {
  RoiCase c;
  c.N = 2, c.C = 3, c.H = 19, c.W = 23, c.PH = 7, c.PW = 5;
  c.x = random_values(size_t(c.N * c.C * c.H * c.W), 1, -2, 2);
  std::mt19937 g(7);
  std::uniform_real_distribution<float> ux(-20.0f, 110.0f), uy(-20.0f, 90.0f), sz(0.3f, 60.0f);
  std::vector<double> rois;
  for (int i = 0; i < 40; ++i) {  // random boxes, many partly outside the 92 x 76 image
    const double x0 = ux(g), y0 = uy(g);
    rois.insert(rois.end(), {double(i % 2), x0, y0, x0 + double(sz(g)), y0 + double(sz(g))});
  }
  // Edge cases: the whole image, boxes touching each border, a tiny box, one far larger than the
  // image, a degenerate (zero-size) box, a box entirely outside, a box on the -1 pixel edge.
  const double iw = 23 / 0.25, ih = 19 / 0.25;
  for (auto b : std::vector<std::array<double, 4>>{{0, 0, iw, ih},
                                                   {0, 10, 20, 30},
                                                   {iw - 13.5, 7, iw, 29},
                                                   {5, 0, 40, 9},
                                                   {9, ih - 11, 37, ih},
                                                   {31.3, 17.7, 31.45, 17.8},
                                                   {-300, -250, 400, 350},
                                                   {12, 12, 12, 12},
                                                   {200, 200, 240, 260},
                                                   {-6.1, -5.3, 14.2, 3.9}})
    rois.insert(rois.end(), {1.0, b[0], b[1], b[2], b[3]});
  c.rois = rois;
  c.scale = 0.25;
  for (DType dt : {DType::F32, DType::F64})
    for (bool aligned : {true, false})
      for (int64_t sr : {int64_t(0), int64_t(2), int64_t(3)}) {
        INFO(dtype_name(dt) << " aligned " << aligned << " sampling_ratio " << sr);
        c.aligned = aligned, c.sr = sr;
        REQUIRE(check_roi(c, dt) > 0.9);
      }
}

TEST_CASE("reference f64: ROIAlign with a scale not a power of two, sizes 1, and a one-pixel image",
          "[portable][teacher]") {
  RoiCase c;
  c.N = 1, c.C = 1, c.H = 13, c.W = 17, c.PH = 1, c.PW = 3;
  c.x = random_values(size_t(c.H * c.W), 2, -1, 3);
  std::mt19937 g(3);
  std::uniform_real_distribution<float> u(-10.0f, 60.0f), sz(0.1f, 45.0f);
  for (int i = 0; i < 30; ++i) {
    const double x0 = u(g), y0 = u(g);
    c.rois.insert(c.rois.end(), {0.0, x0, y0, x0 + double(sz(g)), y0 + double(sz(g))});
  }
  c.scale = 1.0 / 3.0;  // rounds in float: the library's scale differs from the reference's
  for (DType dt : {DType::F32, DType::F64})
    for (bool aligned : {true, false})
      for (int64_t sr : {int64_t(0), int64_t(1), int64_t(4)}) {
        INFO(dtype_name(dt) << " aligned " << aligned << " sampling_ratio " << sr);
        c.aligned = aligned, c.sr = sr;
        REQUIRE(check_roi(c, dt) > 0.9);
      }
  // A 1 x 1 image and a 1 x 1 output: every in-range sample reads the one pixel.
  RoiCase one;
  one.H = one.W = 1, one.C = 2, one.PH = one.PW = 1;
  one.x = {1.5, -0.25};
  one.rois = {0, -0.4, -0.7, 0.9, 1.6, 0, -3, -3, 5, 5, 0, 1.2, 1.5, 1.9, 1.8};
  for (DType dt : {DType::F32, DType::F64})
    for (bool aligned : {true, false}) {
      one.aligned = aligned, one.sr = 0;
      REQUIRE(check_roi(one, dt) > 0.6);
    }
}

TEST_CASE("reference f64: bilinear resize (align_corners=False) forward and backward against PyTorch's definition",
          "[portable]") {
  // Up and down by integer and non-integer factors, identity, sizes 1 (in and out).
  const std::vector<std::array<int64_t, 4>> sizes = {
      {9, 14, 23, 37}, {17, 13, 5, 4}, {10, 12, 20, 24}, {7, 7, 7, 7},  {1, 1, 5, 3},
      {6, 5, 1, 1},    {1, 9, 4, 19},  {33, 3, 10, 7},  {5, 8, 12, 8}, {64, 48, 27, 100}};
  uint32_t seed = 10;
  for (DType dt : {DType::F32, DType::F64})
    for (auto [H, W, OH, OW] : sizes) {
      INFO(dtype_name(dt) << " " << H << "x" << W << " -> " << OH << "x" << OW);
      const int64_t NC = 2;
      const auto x = random_values(size_t(NC * H * W), ++seed, -3, 3);
      Tensor xt = tensor_of(x, {1, NC, H, W}, dt);
      xt.set_requires_grad(true);
      const Tensor y = resize_bilinear(xt, OH, OW);
      std::vector<double> bound;
      const auto ref = bilinear_forward_ref(x, NC, H, W, OH, OW, dt, &bound);
      ST_REQUIRE_WITHIN(y, Tensor::from_vector(ref, {1, NC, OH, OW}),
                        Tensor::from_vector(bound, {1, NC, OH, OW}));
      const std::string what = "bilinear " + std::string(dtype_name(dt)) + " " + std::to_string(H) + "x" +
                               std::to_string(W) + "->" + std::to_string(OH) + "x" + std::to_string(OW);
      report(what + " y", test::compare_within(y, Tensor::from_vector(ref, {1, NC, OH, OW}),
                                               Tensor::from_vector(bound, {1, NC, OH, OW})).worst_ratio, 1);
      const auto gy = random_values(size_t(NC * OH * OW), ++seed, -1, 1);
      y.backward(tensor_of(gy, {1, NC, OH, OW}, dt));
      const auto gref = bilinear_backward_ref(gy, NC, H, W, OH, OW, dt, &bound);
      ST_REQUIRE_WITHIN(xt.grad(), Tensor::from_vector(gref, {1, NC, H, W}),
                        Tensor::from_vector(bound, {1, NC, H, W}));
      report(what + " gx", test::compare_within(xt.grad(), Tensor::from_vector(gref, {1, NC, H, W}),
                                                Tensor::from_vector(bound, {1, NC, H, W})).worst_ratio, 1);
    }
}

TEST_CASE("reference f64: nearest resize forward and backward against PyTorch's definition", "[portable]") {
  // PyTorch's float evaluation differs from exact arithmetic only at exact integers d * in / out
  // that float rounds just below (so the reference's float formula is the definition, not a
  // copy of a rounding accident): checked over all sizes up to 200.
  for (int64_t in = 1; in <= 200; ++in)
    for (int64_t out = 1; out <= 200; ++out)
      for (int64_t d = 0; d < out; ++d) {
        const int64_t exact = std::min((d * in) / out, in - 1), f = nearest_ref(d, in, out);
        if (f != exact) {
          INFO(in << " -> " << out << " at " << d);
          REQUIRE((d * in) % out == 0);
          REQUIRE(f == exact - 1);
        }
      }
  const std::vector<std::array<int64_t, 4>> sizes = {{10, 14, 20, 28}, {15, 11, 7, 5}, {2, 2, 82, 94},
                                                     {1, 3, 4, 9},     {6, 5, 1, 1},   {7, 9, 7, 9},
                                                     {5, 6, 13, 17},   {9, 4, 6, 11}};
  uint32_t seed = 40;
  for (DType dt : {DType::F32, DType::F64})
    for (auto [H, W, OH, OW] : sizes) {
      INFO(dtype_name(dt) << " " << H << "x" << W << " -> " << OH << "x" << OW);
      const int64_t NC = 3;
      const auto x = random_values(size_t(NC * H * W), ++seed, -3, 3);
      Tensor xt = tensor_of(x, {NC, 1, H, W}, dt);
      xt.set_requires_grad(true);
      const Tensor y = resize_nearest(xt, OH, OW);
      const auto gy = random_values(size_t(NC * OH * OW), ++seed, -1, 1);
      std::vector<double> ref(size_t(NC * OH * OW)), gref(x.size(), 0), gabs(x.size(), 0), fan(x.size(), 0);
      for (int64_t p = 0; p < NC; ++p)
        for (int64_t i = 0; i < OH; ++i)
          for (int64_t j = 0; j < OW; ++j) {
            const size_t src = size_t((p * H + nearest_ref(i, H, OH)) * W + nearest_ref(j, W, OW));
            const size_t o = size_t((p * OH + i) * OW + j);
            ref[o] = x[src];
            gref[src] += gy[o], gabs[src] += std::abs(gy[o]), fan[src] += 1;
          }
      REQUIRE(y.to_vector<double>() == ref);  // a copy: exact
      y.backward(tensor_of(gy, {NC, 1, OH, OW}, dt));
      // gx sums the fan-in n gradients of an input: n - 1 additions, each rounding.
      std::vector<double> bound(x.size());
      for (size_t k = 0; k < x.size(); ++k) bound[k] = gamma(std::max(fan[k] - 1, 0.0), unit(dt)) * gabs[k];
      ST_REQUIRE_WITHIN(xt.grad(), Tensor::from_vector(gref, {NC, 1, H, W}),
                        Tensor::from_vector(bound, {NC, 1, H, W}));
    }
}

TEST_CASE("reference f64: mask paste, Detectron2's and torchvision's, against their definitions",
          "[portable][teacher]") {
  PasteCase c;
  c.D = 36, c.M = 28, c.H = 70, c.W = 95;
  c.masks = random_values(size_t(c.D * c.M * c.M), 5, 0, 1);
  std::mt19937 g(11);
  std::uniform_real_distribution<float> ux(-15.0f, 100.0f), uy(-12.0f, 75.0f), sz(0.4f, 70.0f);
  for (int64_t d = 0; d < c.D - 6; ++d) {
    const double x0 = ux(g), y0 = uy(g);
    c.boxes.insert(c.boxes.end(), {x0, y0, x0 + double(sz(g)), y0 + double(sz(g))});
  }
  // The whole image, boxes touching the borders, a tiny one, one larger than the image, a box
  // not a multiple of anything.
  for (auto b : std::vector<std::array<double, 4>>{{0, 0, 95, 70},
                                                   {0.25, 3.5, 30.5, 69.75},
                                                   {60.125, 0.375, 94.625, 20.5},
                                                   {40.3, 30.2, 40.9, 30.7},
                                                   {-40.3, -30.1, 140.7, 110.9},
                                                   {17.31, 22.77, 53.19, 47.03}})
    c.boxes.insert(c.boxes.end(), b.begin(), b.end());
  for (auto conv : {teacher::Convention::Detectron2, teacher::Convention::Torchvision})
    for (double thr : {0.5, 0.3}) {
      INFO((conv == teacher::Convention::Detectron2 ? "Detectron2" : "torchvision") << " threshold " << thr);
      REQUIRE(check_paste(c, conv, DType::F32, thr) > 0.9);
      // float64 masks and boxes holding float32 values: the op works in float32, same result.
      REQUIRE(check_paste(c, conv, DType::F64, thr) > 0.9);
    }
  // Sizes 1: a 1 x 1 mask, a 1 x 1 image.
  PasteCase one;
  one.D = 2, one.M = 1, one.H = 1, one.W = 1;
  one.masks = {0.9, 0.2};
  one.boxes = {-0.3, -0.2, 1.4, 1.1, -0.5, -0.5, 1.5, 1.5};
  for (auto conv : {teacher::Convention::Detectron2, teacher::Convention::Torchvision})
    REQUIRE(check_paste(one, conv, DType::F32) > 0.0);
}
