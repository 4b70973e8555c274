// The Mask R-CNN teacher's detection ops against torchvision 0.14 (tests/golden/teacher_ops.safetensors,
// made by tools/make_teacher_ops_golden.py): ROIAlign in both conventions, NMS, exact per-group
// NMS, box decoding with the clamp, proposal selection and box-head inference. The references
// are torchvision's float32 results, so every float comparison allows error(ours) +
// error(torchvision), each a rigorous bound on the distance from the exact (real arithmetic)
// result on the same float32 inputs, derived from the operation order (tests/error_bound.h;
// tests/README.md): ROIAlign by the sampling points' coordinate error and the interpolation
// sums, boxes and scores by running error analysis of the decode and of sigmoid/softmax. The
// selections (NMS indices, kept boxes, classes) must match exactly, which each test justifies by
// checking that every decision on its data is certain under those bounds (check_nms); the one
// kind that is not here, the order of output rows whose scores are closer than their bounds, is
// accepted either way.
#include <nlohmann/json.hpp>
#include <numeric>
#include <random>

#include "error_bound.h"
#include "kernels/common/detect_math.h"
#include "teacher_port/box_inference.h"
#include "teacher_port/detect_ops.h"
#include "teacher_port/glue.h"
#include "teacher_port/proposals.h"
#include "tensor/backend.h"
#include "tensor/safetensors.h"
#include "test_util.h"

using namespace st;
using Catch::Matchers::Contains;

namespace {
using test::Bounded;
using test::constant;
using test::exact;
using test::gamma;
using test::kU32;
using test::kU64;

safetensors::File golden() {
  auto f = safetensors::load(test::source_dir() / "tests" / "golden" / "teacher_ops.safetensors");
  REQUIRE(f.metadata.at("generator") == "tools/make_teacher_ops_golden.py");
  return f;
}
std::vector<int64_t> ints(const Tensor& t) { return t.to_vector<int64_t>(); }

// ---- ROIAlign ----
// torchvision's algorithm (kernels/common/roi_align.h, the same operation order in ours): for a
// box (x0, y0, x1, y1) at `scale`, off = 0.5 when aligned:
//   sy = y0*scale - off, h = (y1*scale - off) - sy (>= 1 when unaligned), bin_h = h/PH,
//   grid_h = sampling_ratio or ceil(h/PH), and the sampling points
//   y = sy + ph*bin_h + (iy + 0.5)*bin_h/grid_h (x likewise); a point outside [-1, H] x [-1, W]
//   adds 0, others are clamped into the image and interpolated: ly = y - floor(y) (exact),
//   hy = 1 - ly, w1 = hy*hx ..., acc += w1*v1 + w2*v2 + w3*v3 + w4*v4; out = acc / count,
//   count = max(grid_h*grid_w, 1).
// Error of one implementation (unit roundoff u), against the exact value on the same inputs:
//  - a point is off by delta (the coordinate formula above, as Bounded); the interpolant is
//    continuous and Lipschitz, with constant L_y = max |x[r+1][c] - x[r][c]| over the cells the
//    point can reach (L_x likewise): delta_y L_y + delta_x L_x. Where y is within delta_y of -1
//    or H (x of -1 or W) the point may fall in or out: its whole value, <= M = max |x| over the
//    reachable cells, is added;
//  - the weights at the computed point: hy rounded once, w1 = hy*hx once more: within gamma(3)
//    of the exact ones, which sum to 1: gamma(3) M;
//  - the 4*count products summed: gamma(4 count) (1 + gamma(3)) sum of the points' M;
//  - the division by count: one rounding.
// The adaptive grid size ceil(h/PH) must not be ambiguous (h/PH within its error bound of an
// integer): a property of the golden data, checked.
struct Plane {
  const double* x;
  int64_t H, W;
  double at(int64_t r, int64_t c) const { return x[r * W + c]; }
};

// The cells a coordinate within delta of y (clamped into [0, n-1]) can interpolate from.
std::pair<int64_t, int64_t> reach(double y, double delta, int64_t n) {
  auto cell = [&](double t) { return std::min<int64_t>(int64_t(std::max(t, 0.0)), n - 1); };
  return {cell(y - delta), std::min(cell(y + delta) + 1, n - 1)};
}

double roi_align_error(const Plane& p, const double* box, double scale, int64_t PH, int64_t PW,
                       int64_t sampling_ratio, bool aligned, int64_t ph, int64_t pw, double u) {
  const Bounded s = constant(scale, u), off = constant(aligned ? 0.5 : 0.0, u);
  const Bounded sx = exact(box[0], u) * s - off, sy = exact(box[1], u) * s - off;
  Bounded w = (exact(box[2], u) * s - off) - sx, h = (exact(box[3], u) * s - off) - sy;
  if (!aligned) w = max(w, constant(1, u)), h = max(h, constant(1, u));
  const Bounded bin_h = h / exact(double(PH), u), bin_w = w / exact(double(PW), u);
  auto grid = [&](const Bounded& q) -> int64_t {
    if (sampling_ratio > 0) return sampling_ratio;
    const double lo = std::ceil(q.v - q.e), hi = std::ceil(q.v + q.e);
    INFO("box " << box[0] << " " << box[1] << " " << box[2] << " " << box[3]);
    REQUIRE(lo == hi);  // every implementation takes the same number of sampling points
    return int64_t(lo);
  };
  const int64_t gh = grid(bin_h), gw = grid(bin_w);
  const double count = double(std::max<int64_t>(gh * gw, 1));
  double pert = 0, mag = 0;  // point and weight errors; sum of the points' M
  for (int64_t iy = 0; iy < gh; ++iy) {
    const Bounded y = sy + exact(double(ph), u) * bin_h +
                      exact(double(iy) + 0.5, u) * bin_h / exact(double(gh), u);
    for (int64_t ix = 0; ix < gw; ++ix) {
      const Bounded x = sx + exact(double(pw), u) * bin_w +
                        exact(double(ix) + 0.5, u) * bin_w / exact(double(gw), u);
      auto near = [](const Bounded& t, double edge) { return std::abs(t.v - edge) <= t.e; };
      const bool ambiguous =
          near(y, -1) || near(y, double(p.H)) || near(x, -1) || near(x, double(p.W));
      const bool inside = y.v >= -1 && y.v <= double(p.H) && x.v >= -1 && x.v <= double(p.W);
      if (!inside && !ambiguous) continue;  // 0 in every implementation
      const auto [r0, r1] = reach(y.v, y.e, p.H);
      const auto [c0, c1] = reach(x.v, x.e, p.W);
      double M = 0, Ly = 0, Lx = 0;
      for (int64_t r = r0; r <= r1; ++r)
        for (int64_t c = c0; c <= c1; ++c) {
          M = std::max(M, std::abs(p.at(r, c)));
          if (r < r1) Ly = std::max(Ly, std::abs(p.at(r + 1, c) - p.at(r, c)));
          if (c < c1) Lx = std::max(Lx, std::abs(p.at(r, c + 1) - p.at(r, c)));
        }
      pert += y.e * Ly + x.e * Lx + gamma(3, u) * M + (ambiguous ? M : 0.0);
      mag += M;
    }
  }
  const double acc_err = pert + gamma(4 * count, u) * (1 + gamma(3, u)) * mag;
  return acc_err / count + u * (mag + acc_err) / count + test::underflow_eta(u);
}

// Per-element bound of roi_align's output in format u_ours against torchvision's float32 (or,
// without `torchvision`, against the exact value).
Tensor roi_align_bound(const Tensor& x, const Tensor& rois, int64_t PH, int64_t PW, double scale,
                       int64_t sampling_ratio, bool aligned, double u_ours, bool torchvision = true) {
  const int64_t C = x.size(1), H = x.size(2), W = x.size(3), R = rois.size(0);
  const auto xv = x.to_vector<double>(), rv = rois.to_vector<double>();
  std::vector<double> out;
  for (int64_t r = 0; r < R; ++r) {
    const double* box = &rv[size_t(r * 5 + 1)];
    const int64_t n = int64_t(rv[size_t(r * 5)]);
    for (int64_t c = 0; c < C; ++c) {
      const Plane p{&xv[size_t((n * C + c) * H * W)], H, W};
      for (int64_t ph = 0; ph < PH; ++ph)
        for (int64_t pw = 0; pw < PW; ++pw)
          out.push_back(
              roi_align_error(p, box, scale, PH, PW, sampling_ratio, aligned, ph, pw, u_ours) +
              (torchvision ? roi_align_error(p, box, scale, PH, PW, sampling_ratio, aligned, ph, pw, kU32)
                           : 0.0));
    }
  }
  return Tensor::from_vector(out, {R, C, PH, PW});
}

// ---- box decoding and scores ----
// BoxCoder.decode_single, torchvision's float32 and ours (detect_ops.cpp) in the same order:
// w = x1 - x0, cx = x0 + 0.5*w, dx = d0/wx, dw = min(d2/ww, clip), pcx = dx*w + cx,
// pw = exp(dw)*w, out = pcx -+ 0.5*pw (y likewise). torch may divide a tensor by a Python
// weight as a product with its float reciprocal: for torchvision the larger bound of the two is
// used. `clip_hw` (> 0) also clamps x to [0, W] and y to [0, H] (exact, 1-Lipschitz).
std::array<Bounded, 4> decode_model(const float* anchor, const float* delta,
                                    std::array<double, 4> wt, bool torch, int64_t clip_h = 0,
                                    int64_t clip_w = 0) {
  const double u = kU32;
  auto div = [&](const Bounded& a, double d) {
    const Bounded q = a / constant(d, u);
    if (!torch) return q;
    const Bounded r = a * (constant(1, u) / constant(d, u));
    return q.e >= r.e ? q : r;
  };
  const Bounded x0 = exact(anchor[0], u), y0 = exact(anchor[1], u);
  const Bounded w = exact(anchor[2], u) - x0, h = exact(anchor[3], u) - y0;
  const Bounded half = constant(0.5, u), clip = constant(teacher::kBoxClamp, u);
  const Bounded cx = x0 + half * w, cy = y0 + half * h;
  const Bounded dx = div(exact(delta[0], u), wt[0]), dy = div(exact(delta[1], u), wt[1]);
  const Bounded dw = min(div(exact(delta[2], u), wt[2]), clip);
  const Bounded dh = min(div(exact(delta[3], u), wt[3]), clip);
  const Bounded pcx = dx * w + cx, pcy = dy * h + cy;
  const Bounded hw = half * (exp(dw) * w), hh = half * (exp(dh) * h);
  std::array<Bounded, 4> b = {pcx - hw, pcy - hh, pcx + hw, pcy + hh};
  if (clip_w > 0)
    for (int q = 0; q < 4; ++q) {
      const Bounded hi = constant(double(q % 2 == 0 ? clip_w : clip_h), u);
      b[size_t(q)] = min(max(b[size_t(q)], constant(0, u)), hi);
    }
  return b;
}

// sigmoid in float: 1/(1 + exp(-x)), ours and torch's kernel alike.
Bounded sigmoid_model(double x) {
  const Bounded one = constant(1, kU32);
  return one / (one + exp(-exact(x, kU32)));
}

// softmax of one row in float: ours (box_inference.cpp) e = exp(l - max), sequential sum,
// e / sum; torch's last-dim kernel (SoftMaxKernel.cpp) e * (1/sum).
std::vector<Bounded> softmax_model(const float* l, int64_t K, bool torch) {
  const double u = kU32;
  std::vector<Bounded> e(static_cast<size_t>(K));
  Bounded m = exact(l[0], u);
  for (int64_t k = 1; k < K; ++k) m = max(m, exact(l[k], u));
  for (int64_t k = 0; k < K; ++k) e[size_t(k)] = exp(exact(l[k], u) - m);
  const Bounded s = test::sum(e, u), r = constant(1, u) / s;
  for (auto& v : e) v = torch ? v * r : v / s;
  return e;
}

// ---- Detectron2's mask paste (grid_sample, align_corners=False, zero padding) ----
// The sampled value at image pixel (px, py) for the box (x0, y0, x1, y1) and an M x M mask, in
// float (kernels/common/detect_math.h paste_d2_value; torch's grid_sample on the generator's grid):
// g = ((p + 0.5) - y0) / (y1 - y0) * 2 - 1, the source coordinate ((g + 1) * M - 1) / 2 (ours,
// torch's scalar kernel) or (g + 1) * (M / 2) - 0.5 (torch's vectorised kernel: the worse of the
// two is used), then bilinear interpolation of the zero-padded mask, four weights
// (1 - frac) * (1 - frac) ... and their products with the taps summed. One implementation (unit
// roundoff u) is off from the exact value by at most
//   delta_y L_y + delta_x L_x      the coordinates' errors through the interpolant, which is
//                                  continuous and Lipschitz (L: the largest difference of
//                                  neighbouring taps, zeros outside, in the cells within delta);
//   + gamma(3) M                   each weight: a subtraction and a product rounded (they sum to 1);
//   + gamma(4) (1 + gamma(3)) M    the four products and three additions (M: the largest |tap|).
// Returns the exact value and that bound.
std::pair<double, double> paste_d2_model(const float* m, int64_t M, const float* box, int64_t px,
                                         int64_t py, double u) {
  auto coord = [&](int64_t p, float lo, float hi) {
    const Bounded g = ((exact(double(p), u) + constant(0.5, u)) - exact(lo, u)) /
                          (exact(hi, u) - exact(lo, u)) * constant(2, u) - constant(1, u);
    const Bounded fm = exact(double(M), u), one = constant(1, u);
    const Bounded a = ((g + one) * fm - one) / constant(2, u);
    const Bounded b = (g + one) * (fm / constant(2, u)) - constant(0.5, u);
    return a.e >= b.e ? a : b;
  };
  const Bounded iy = coord(py, box[1], box[3]), ix = coord(px, box[0], box[2]);
  auto at = [&](int64_t r, int64_t c) -> double {
    return r >= 0 && r < M && c >= 0 && c < M ? double(m[r * M + c]) : 0.0;
  };
  auto value = [&](double y, double x) {
    const double fy = std::floor(y), fx = std::floor(x), ly = y - fy, lx = x - fx;
    const int64_t r = int64_t(fy), c = int64_t(fx);
    return (1 - ly) * ((1 - lx) * at(r, c) + lx * at(r, c + 1)) +
           ly * ((1 - lx) * at(r + 1, c) + lx * at(r + 1, c + 1));
  };
  const int64_t r0 = int64_t(std::floor(iy.v - iy.e)), r1 = int64_t(std::floor(iy.v + iy.e)) + 1;
  const int64_t c0 = int64_t(std::floor(ix.v - ix.e)), c1 = int64_t(std::floor(ix.v + ix.e)) + 1;
  double Mx = 0, Ly = 0, Lx = 0;
  for (int64_t r = r0; r <= r1; ++r)
    for (int64_t c = c0; c <= c1; ++c) {
      Mx = std::max(Mx, std::abs(at(r, c)));
      if (r < r1) Ly = std::max(Ly, std::abs(at(r + 1, c) - at(r, c)));
      if (c < c1) Lx = std::max(Lx, std::abs(at(r, c + 1) - at(r, c)));
    }
  const double e = iy.e * Ly + ix.e * Lx + gamma(3, u) * Mx + gamma(4, u) * (1 + gamma(3, u)) * Mx;
  return {value(iy.v, ix.v), e};
}

// ---- selections: every decision certain? ----
// The selections (NMS, proposal selection, box-head inference) must match torchvision exactly;
// that is justified where every decision they take is certain under the bounds: each
// implementation's decision equals the one on the exact values. Decisions: a threshold on a score
// or a box side (certain when the exact value is further from the threshold than each
// implementation's bound), a top-k cut on exact inputs (certain without a tie at the cut), and
// greedy NMS, whose kept set is determined by which pairs overlap (IoU > threshold) and, for the
// pairs that do, which comes first: certain when every IoU decision within a group is certain and
// every overlapping pair's score order is. The output is then ordered by score: certain when
// consecutive kept rows are.
using Box = std::array<Bounded, 4>;

// IoU in float as torchvision's nms kernel and ours (detect_math.h iou_above) compute it:
// area = (x1 - x0) * (y1 - y0); the intersection's corners by max/min (exact); its sides clamped
// at 0 (exact); inter = w * h; IoU = inter / ((area_a + area_b) - inter).
Bounded iou_model(const Box& a, const Box& b) {
  const Bounded zero = constant(0, kU32);
  const Bounded area_a = (a[2] - a[0]) * (a[3] - a[1]), area_b = (b[2] - b[0]) * (b[3] - b[1]);
  const Bounded w = max(min(a[2], b[2]) - max(a[0], b[0]), zero);
  const Bounded h = max(min(a[3], b[3]) - max(a[1], b[1]), zero);
  const Bounded inter = w * h;
  return inter / ((area_a + area_b) - inter);
}

// A candidate of a selection as each implementation computes it: its box, its score, its group.
struct Choice {
  Box ours, ref;
  Bounded s_ours, s_ref;
  int64_t group = 0;
};

Box exact_box(const float* b) {
  return {exact(b[0], kU32), exact(b[1], kU32), exact(b[2], kU32), exact(b[3], kU32)};
}

// Whether both implementations decide `value > thr` (or >=) as the exact value does.
bool certain(const Bounded& ours, const Bounded& ref, double thr) {
  if (ours.e == 0 && ref.e == 0) return true;  // both exact: the same value, the same decision
  return std::abs(ours.v - thr) > std::max(ours.e, ref.e);
}
// Whether both implementations order the two scores as the exact values are.
bool certain_order(const Choice& a, const Choice& b) {
  const double d = std::abs(a.s_ours.v - b.s_ours.v);
  return d > 0 && d > std::max(a.s_ours.e + b.s_ours.e, a.s_ref.e + b.s_ref.e);
}

struct SelectionCheck {
  std::vector<size_t> keep;  // the exact selection, by decreasing exact score
  int64_t ambiguous_iou = 0, ambiguous_order = 0, pairs = 0, overlapping = 0;
};

// Greedy NMS within groups on the exact values, its decisions checked, then every group's kept
// choices merged by score. `shift`: torchvision's batched_nms on few boxes (<= 1000) offsets each
// group's boxes by group * (max coordinate + 1) before its NMS (the "coordinate trick"): its
// coordinates round once more, at that magnitude.
SelectionCheck check_nms(const std::vector<Choice>& c, double thr, bool shift) {
  SelectionCheck r;
  std::vector<size_t> order(c.size());
  std::iota(order.begin(), order.end(), size_t(0));
  std::stable_sort(order.begin(), order.end(),
                   [&](size_t a, size_t b) { return c[a].s_ours.v > c[b].s_ours.v; });
  double top = 0;
  for (const Choice& x : c)
    for (const Bounded& q : x.ref) top = std::max(top, std::abs(q.v) + q.e);
  auto ref_box = [&](const Choice& x) {
    if (!shift) return x.ref;
    const double off = double(x.group) * (top + 1);
    Box b;
    for (size_t q = 0; q < 4; ++q) {
      const double v = x.ref[q].v + off;
      b[q] = {v, x.ref[q].e + kU32 * (std::abs(v) + x.ref[q].e), kU32};
    }
    return b;
  };
  std::vector<std::vector<uint8_t>> over(c.size(), std::vector<uint8_t>(c.size(), 0));
  for (size_t i = 0; i < c.size(); ++i)
    for (size_t j = i + 1; j < c.size(); ++j) {
      if (c[i].group != c[j].group) continue;
      ++r.pairs;
      // Certainly disjoint (a side's gap larger than the errors): IoU exactly 0 in both.
      bool apart = false;
      for (const auto* a : {&c[i], &c[j]})
        for (const auto* b : {&c[i], &c[j]})
          if (a != b)
            for (size_t q = 0; q < 2; ++q)
              apart = apart || a->ours[q + 2].v + std::max(a->ours[q + 2].e, a->ref[q + 2].e) <
                                   b->ours[q].v - std::max(b->ours[q].e, b->ref[q].e);
      if (apart) continue;
      const Bounded io = iou_model(c[i].ours, c[j].ours), ir = iou_model(ref_box(c[i]), ref_box(c[j]));
      if (!certain(io, ir, thr)) ++r.ambiguous_iou;
      if (io.v > thr) {
        ++r.overlapping;
        over[i][j] = over[j][i] = 1;
        if (!certain_order(c[i], c[j])) ++r.ambiguous_order;
      }
    }
  std::vector<uint8_t> gone(c.size(), 0);
  for (size_t a = 0; a < order.size(); ++a) {
    const size_t i = order[a];
    if (gone[i]) continue;
    r.keep.push_back(i);
    for (size_t b = a + 1; b < order.size(); ++b)
      if (over[i][order[b]]) gone[order[b]] = 1;
  }
  return r;
}

// The output rows (the first k kept choices by score): runs of consecutive rows whose order is
// uncertain, as [first, last] positions; either implementation may give a run's rows in any
// order. A run across the cut (row k - 1 and row k) would make the selected set itself
// uncertain: that is reported as the position k.
std::vector<std::pair<size_t, size_t>> uncertain_runs(const std::vector<Choice>& c,
                                                      const std::vector<size_t>& keep, size_t k,
                                                      bool& crosses_cut) {
  std::vector<std::pair<size_t, size_t>> runs;
  crosses_cut = false;
  for (size_t a = 0; a + 1 < keep.size() && a < k; ++a) {
    if (certain_order(c[keep[a]], c[keep[a + 1]])) continue;
    if (a + 1 == k) crosses_cut = true;
    if (!runs.empty() && runs.back().second == a)
      runs.back().second = a + 1;
    else
      runs.push_back({a, a + 1});
  }
  return runs;
}

// Our rows put in the reference's order within each uncertain run: each reference row of a run
// takes the first unused row of ours in the run within that row's bounds (boxes, scores and, when
// given, classes). Rows outside the runs stay where they are.
void align_runs(const std::vector<std::pair<size_t, size_t>>& runs, Tensor& boxes, Tensor& scores,
                std::vector<int64_t>* classes, const Tensor& rb, const Tensor& rs,
                const std::vector<int64_t>& ref_classes, const Tensor& bb, const Tensor& bs) {
  auto ob = boxes.to_vector<float>(), os = scores.to_vector<float>();
  const auto refb = rb.to_vector<double>(), refs = rs.to_vector<double>();
  const auto eb = bb.to_vector<double>(), es = bs.to_vector<double>();
  auto nb = ob;
  auto ns = os;
  std::vector<int64_t> nc = classes ? *classes : std::vector<int64_t>();
  for (auto [first, last] : runs) {
    std::vector<bool> used(last - first + 1, false);
    for (size_t k = first; k <= last; ++k)
      for (size_t m = first; m <= last; ++m) {
        if (used[m - first] || (classes && (*classes)[m] != ref_classes[k])) continue;
        bool within = std::abs(os[m] - refs[k]) <= es[k];
        for (size_t q = 0; q < 4 && within; ++q)
          within = std::abs(ob[m * 4 + q] - refb[k * 4 + q]) <= eb[k * 4 + q];
        if (!within) continue;
        used[m - first] = true;
        for (size_t q = 0; q < 4; ++q) nb[k * 4 + q] = ob[m * 4 + q];
        ns[k] = os[m];
        if (classes) nc[k] = (*classes)[m];
        break;
      }
  }
  boxes = Tensor::from_vector(nb, boxes.shape());
  scores = Tensor::from_vector(ns, scores.shape());
  if (classes) *classes = nc;
}

// One row an op could output (a box, its score and class): exact values and the two bounds.
struct Candidate {
  std::array<double, 5> v{}, e_ours{}, e_ref{};
  int64_t cls = -1;
};
Candidate candidate(const std::array<Bounded, 4>& ours, const std::array<Bounded, 4>& ref,
                    const Bounded& s_ours, const Bounded& s_ref, int64_t cls = -1) {
  Candidate c;
  for (size_t q = 0; q < 4; ++q) c.v[q] = ours[q].v, c.e_ours[q] = ours[q].e, c.e_ref[q] = ref[q].e;
  c.v[4] = s_ours.v, c.e_ours[4] = s_ours.e, c.e_ref[4] = s_ref.e;
  c.cls = cls;
  return c;
}

// Bounds for the rows of a selection (boxes (K, 4), scores (K), classes or empty): each
// reference row comes from a candidate whose exact values are within its torchvision bound of
// every reference value; the row's bound is that candidate's ours + torchvision bound (the
// largest, should several candidates explain the row). A row no candidate explains fails.
std::pair<Tensor, Tensor> selection_bounds(const Tensor& ref_boxes, const Tensor& ref_scores,
                                           const std::vector<int64_t>& ref_classes,
                                           const std::vector<Candidate>& cands) {
  const int64_t K = ref_boxes.size(0);
  const auto rb = ref_boxes.to_vector<double>(), rs = ref_scores.to_vector<double>();
  std::vector<double> bb(size_t(K * 4), -1.0), bs(size_t(K), -1.0);
  for (int64_t k = 0; k < K; ++k) {
    const size_t k4 = size_t(k * 4);
    const std::array<double, 5> ref = {rb[k4], rb[k4 + 1], rb[k4 + 2], rb[k4 + 3], rs[size_t(k)]};
    for (const Candidate& c : cands) {
      if (!ref_classes.empty() && c.cls != ref_classes[size_t(k)]) continue;
      bool explains = true;
      for (size_t q = 0; q < 5 && explains; ++q) explains = std::abs(ref[q] - c.v[q]) <= c.e_ref[q];
      if (!explains) continue;
      for (size_t q = 0; q < 4; ++q)
        bb[size_t(k * 4) + q] = std::max(bb[size_t(k * 4) + q], c.e_ours[q] + c.e_ref[q]);
      bs[size_t(k)] = std::max(bs[size_t(k)], c.e_ours[4] + c.e_ref[4]);
    }
    INFO("reference row " << k);
    REQUIRE(bs[size_t(k)] >= 0);  // explained by some candidate
  }
  return {Tensor::from_vector(bb, {K, 4}), Tensor::from_vector(bs, {K})};
}
// The rest of a selection's check once its candidates are known: NMS with `iou` (the coordinate
// trick when torchvision takes it), every decision certain on these candidates, the first `cut`
// kept rows the reference's count, rows in an uncertain order aligned with the reference's, then
// ours (boxes, scores and, when given, classes) within each reference row's bound.
void check_selection(const std::vector<Choice>& ch, double iou, bool coordinate_trick, size_t cut,
                     const std::vector<Candidate>& cands, const Tensor& rb, const Tensor& rs,
                     const std::vector<int64_t>& ref_classes, Tensor boxes, Tensor scores,
                     std::vector<int64_t>* classes) {
  const SelectionCheck sel = check_nms(ch, iou, coordinate_trick);
  INFO(ch.size() << " candidates, " << sel.pairs << " pairs, " << sel.overlapping << " overlapping");
  REQUIRE(sel.ambiguous_iou == 0);
  REQUIRE(sel.ambiguous_order == 0);
  bool crosses_cut = false;
  const auto runs = uncertain_runs(ch, sel.keep, cut, crosses_cut);
  INFO(runs.size() << " runs of rows in uncertain order");
  REQUIRE_FALSE(crosses_cut);
  REQUIRE(int64_t(std::min(sel.keep.size(), cut)) == rb.size(0));
  const auto [bb, bs] = selection_bounds(rb, rs, ref_classes, cands);
  align_runs(runs, boxes, scores, classes, rb, rs, ref_classes, bb, bs);
  if (classes) REQUIRE(*classes == ref_classes);
  ST_REQUIRE_WITHIN(boxes, rb, bb);
  ST_REQUIRE_WITHIN(scores, rs, bs);
}

}  // namespace

TEST_CASE("teacher ops: ROIAlign matches torchvision (aligned/adaptive and unaligned/sampling 2)",
          "[teacher][golden][portable]") {
  auto f = golden();
  auto cases = nlohmann::json::parse(f.metadata.at("cases"));
  Tensor x = f.get("roi.x");
  for (const char* name : {"roi_box", "roi_mask", "roi_tv"}) {
    INFO(name);
    const auto& c = cases.at(name);
    Tensor rois = f.get(std::string(name) + ".rois"), ref = f.get(std::string(name) + ".y");
    Tensor y = teacher::roi_align(x, rois, c.at("out_h"), c.at("out_w"), c.at("scale"),
                                  c.at("sampling_ratio"), c.at("aligned"));
    REQUIRE(y.shape() == ref.shape());
    ST_REQUIRE_WITHIN(y, ref, roi_align_bound(x, rois, c.at("out_h"), c.at("out_w"), c.at("scale"),
                                              c.at("sampling_ratio"), c.at("aligned"), kU32));
    // The f64 path: its own (double) rounding plus torchvision's float rounding.
    Tensor y64 = teacher::roi_align(x.to(DType::F64), rois.to(DType::F64), c.at("out_h"),
                                    c.at("out_w"), c.at("scale"), c.at("sampling_ratio"),
                                    c.at("aligned"));
    ST_REQUIRE_WITHIN(y64, ref, roi_align_bound(x, rois, c.at("out_h"), c.at("out_w"), c.at("scale"),
                                                c.at("sampling_ratio"), c.at("aligned"), kU64));
  }
  // The special boxes at the end: fully outside and empty give zeros.
  Tensor y = teacher::roi_align(x, f.get("roi_box.rois"), 7, 7, 0.25, 0, true);
  const int64_t R = y.size(0);
  for (int64_t r : {R - 5, R - 4}) {
    auto v = y.slice(0, r, r + 1).contiguous().to_vector<float>();
    for (float e : v) REQUIRE(e == 0.0f);
  }
}

TEST_CASE("teacher ops: NMS and exact per-group NMS match torchvision", "[teacher][golden][portable]") {
  auto f = golden();
  Tensor boxes = f.get("nms.boxes"), scores = f.get("nms.scores");
  std::vector<int64_t> groups = ints(f.get("nms.groups"));
  // The match is exact because every decision is certain: boxes and scores are exact inputs (the
  // scores distinct), and no IoU lies within its rounding bound of the threshold; the selection on
  // the exact values is torchvision's.
  const auto bv = boxes.to_vector<float>(), sv = scores.to_vector<float>();
  std::vector<Choice> plain, grouped;
  for (size_t i = 0; i < sv.size(); ++i) {
    const Box b = exact_box(&bv[i * 4]);
    const Bounded sc = exact(sv[i], kU32);
    plain.push_back({b, b, sc, sc, 0});
    grouped.push_back({b, b, sc, sc, groups[i]});
  }
  auto as_ints = [](const std::vector<size_t>& v) { return std::vector<int64_t>(v.begin(), v.end()); };
  for (const char* tag : {"05", "07"}) {
    const double thr = std::string(tag) == "05" ? 0.5 : 0.7;
    INFO("threshold " << thr);
    const auto keep = ints(f.get(std::string("nms.keep") + tag));
    const auto bkeep = ints(f.get(std::string("nms.bkeep") + tag));
    REQUIRE(teacher::nms(boxes, scores, thr) == keep);
    REQUIRE(teacher::batched_nms(boxes, scores, groups, thr) == bkeep);
    for (auto [c, ref] : {std::pair{&plain, &keep}, std::pair{&grouped, &bkeep}}) {
      const SelectionCheck r = check_nms(*c, thr, false);
      INFO(r.pairs << " pairs, " << r.overlapping << " overlapping");
      REQUIRE(r.ambiguous_iou == 0);
      REQUIRE(r.ambiguous_order == 0);
      REQUIRE(as_ints(r.keep) == *ref);
    }
  }
  REQUIRE(teacher::nms(boxes, scores, 0.5).size() < size_t(boxes.size(0)));  // it suppressed
}

TEST_CASE("teacher ops: box decoding with the dw/dh clamp matches torchvision", "[teacher][golden][portable]") {
  auto f = golden();
  Tensor anchors = f.get("decode.anchors"), deltas = f.get("decode.deltas");
  const auto a = anchors.to_vector<float>(), d = deltas.to_vector<float>();
  for (auto [tag, wt] : {std::pair{"w1", std::array<double, 4>{1, 1, 1, 1}},
                         std::pair{"w10", std::array<double, 4>{10, 10, 5, 5}}}) {
    INFO(tag);
    std::vector<double> bound;
    for (int64_t k = 0; k < anchors.size(0); ++k) {
      const auto ours = decode_model(&a[size_t(k * 4)], &d[size_t(k * 4)], wt, false);
      const auto ref = decode_model(&a[size_t(k * 4)], &d[size_t(k * 4)], wt, true);
      for (size_t q = 0; q < 4; ++q) bound.push_back(ours[q].e + ref[q].e);
    }
    ST_REQUIRE_WITHIN(teacher::decode_boxes(deltas, anchors, wt),
                      f.get(std::string("decode.") + tag), Tensor::from_vector(bound, anchors.shape()));
  }
}

TEST_CASE("teacher ops: small hand-checked cases and bad input", "[teacher][errors][portable]") {
  // Two identical boxes: the lower score goes; a disjoint one stays. IoU exactly 0.5 is kept
  // (suppression needs IoU > threshold).
  Tensor b = Tensor::from_vector<float>({0, 0, 10, 10, 0, 0, 10, 10, 20, 20, 30, 30, 0, 0, 10, 5},
                                        {4, 4});
  Tensor s = Tensor::from_vector<float>({0.5f, 0.9f, 0.1f, 0.3f}, {4});
  REQUIRE(teacher::nms(b, s, 0.5) == std::vector<int64_t>{1, 3, 2});
  REQUIRE(teacher::nms(b, s, 0.49) == std::vector<int64_t>{1, 2});
  // In different groups the identical boxes 0 and 1 no longer suppress each other.
  REQUIRE(teacher::batched_nms(b, s, {0, 1, 0, 1}, 0.5) == std::vector<int64_t>{1, 0, 3, 2});
  REQUIRE(teacher::batched_nms(b, s, {0, 0, 0, 0}, 0.5) == teacher::nms(b, s, 0.5));
  REQUIRE(teacher::topk(s, 2) == std::vector<int64_t>{1, 0});
  REQUIRE(teacher::topk(s, 10).size() == 4);
  // ROIAlign of a constant map is exactly that constant wherever the box lies inside (every
  // sampling point's exact interpolation weights sum to 1); computed in float, within the
  // ROIAlign bound of the exact value (the weights and the sums round; the map is flat, so the
  // sample coordinates' errors cost nothing).
  Tensor x = Tensor::full({1, 2, 8, 8}, 3.0);
  Tensor r = Tensor::from_vector<float>({0, 4, 4, 20, 24}, {1, 5});
  ST_REQUIRE_WITHIN(teacher::roi_align(x, r, 2, 2, 0.25, 0, true), Tensor::full({1, 2, 2, 2}, 3.0),
                    roi_align_bound(x, r, 2, 2, 0.25, 0, true, kU32, false));

  REQUIRE_THROWS_WITH(teacher::roi_align(x, Tensor::from_vector<float>({1, 0, 0, 4, 4}, {1, 5}), 2,
                                         2, 1.0, 0, true),
                      Contains("batch index 1") && Contains("1 images"));
  REQUIRE_THROWS_WITH(teacher::roi_align(x, Tensor::zeros({3, 4}), 2, 2, 1.0, 0, true),
                      Contains("(R, 5)"));
  REQUIRE_THROWS_WITH(teacher::roi_align(Tensor::zeros({2, 8, 8}), r, 2, 2, 1.0, 0, true),
                      Contains("(N, C, H, W)"));
  REQUIRE_THROWS_WITH(teacher::nms(b, Tensor::zeros({3}), 0.5), Contains("scores"));
  REQUIRE_THROWS_WITH(teacher::batched_nms(b, s, {0, 1}, 0.5), Contains("2 group ids"));
  REQUIRE_THROWS_WITH(teacher::decode_boxes(Tensor::zeros({2, 4}), b, {1, 1, 1, 1}),
                      Contains("2 deltas for 4 boxes"));
}

TEST_CASE("teacher glue: anchors in both conventions", "[teacher][golden][portable]") {
  auto f = golden();
  for (int size : {32, 64, 128, 256, 512}) {
    INFO("size " << size);
    for (auto [conv, tag] : {std::pair{teacher::Convention::Torchvision, "tv"},
                             std::pair{teacher::Convention::Detectron2, "d2"}}) {
      auto cell = teacher::cell_anchors(size, {0.5, 1.0, 2.0}, conv);
      std::vector<float> flat;
      for (auto& c : cell) flat.insert(flat.end(), c.begin(), c.end());
      Tensor ref = f.get(std::string("anchors.") + tag + std::to_string(size));
      REQUIRE(flat == ref.to_vector<float>());  // exact
    }
  }
  auto cell = teacher::cell_anchors(64, {0.5, 1.0, 2.0}, teacher::Convention::Torchvision);
  Tensor grid = teacher::grid_anchors(cell, 5, 7, 16);
  REQUIRE(grid.to_vector<float>() == f.get("anchors.grid_tv64_5x7_s16").to_vector<float>());
  // Detectron2's documented values for size 32 (MASKRCNN.md §4.2): ratio 0.5 gives
  // w = sqrt(32^2 / 0.5) = 32 sqrt(2), x0 = -w/2 = -16 sqrt(2), computed in double (sqrt correctly
  // rounded, the scalings by powers of 2 exact) and stored as float: exactly the float of the
  // double nearest -16 sqrt(2), which the documentation prints as -22.627417 (to its 8 digits).
  auto d2 = teacher::cell_anchors(32, {0.5, 1.0, 2.0}, teacher::Convention::Detectron2);
  REQUIRE(d2[0][0] == float(-16 * std::sqrt(2.0)));
  REQUIRE(std::abs(double(d2[0][0]) - -22.627417) <= 0.5e-6);
  REQUIRE(d2[1][1] == -16.0f);
}

TEST_CASE("teacher glue: FPN level assignment in both conventions", "[teacher][golden][portable]") {
  auto f = golden();
  Tensor boxes = f.get("levels.boxes");
  REQUIRE(teacher::assign_levels(boxes, teacher::Convention::Torchvision) == ints(f.get("levels.tv")));
  REQUIRE(teacher::assign_levels(boxes, teacher::Convention::Detectron2) == ints(f.get("levels.d2")));
  // 224 x 224 is level 4 by definition; tiny boxes clamp to 2, huge ones to 5.
  Tensor b = Tensor::from_vector<float>({0, 0, 224, 224, 0, 0, 2, 2, 0, 0, 5000, 5000}, {3, 4});
  REQUIRE(teacher::assign_levels(b, teacher::Convention::Detectron2) == std::vector<int64_t>{4, 2, 5});
}

TEST_CASE("teacher glue: Detectron2 mask paste and the 9-class label map", "[teacher][golden][portable]") {
  auto f = golden();
  Tensor masks = f.get("paste.masks"), boxes = f.get("paste.boxes"), ref = f.get("paste.out");
  const int64_t n = masks.size(0), H = ref.size(1), W = ref.size(2);
  auto m = masks.to_vector<float>();
  auto b = boxes.to_vector<float>();
  auto r = ref.to_vector<uint8_t>();
  // A pixel's decision (value >= 0.5) is certain when its exact value is further from 0.5 than
  // the bound of ours plus torch's (paste_d2_model); there both must agree, elsewhere either may
  // turn the pixel on. A label-map pixel is certain when every mask's pixel under it is.
  std::vector<std::vector<uint8_t>> pasted;
  std::vector<uint8_t> certain_label(size_t(H * W), 1);
  int64_t mismatches = 0, on = 0, uncertain = 0;
  for (int64_t i = 0; i < n; ++i) {
    std::vector<uint8_t> out(size_t(H * W), 0);
    teacher::paste_mask(m.data() + i * 28 * 28, 28, {b[i * 4], b[i * 4 + 1], b[i * 4 + 2], b[i * 4 + 3]},
                        H, W, out.data());
    for (int64_t p = 0; p < H * W; ++p) {
      const auto [v, e] = paste_d2_model(m.data() + i * 28 * 28, 28, &b[size_t(i * 4)], p % W, p / W, kU32);
      const bool certain = std::abs(v - 0.5) > 2 * e;
      uncertain += !certain;
      if (!certain) certain_label[size_t(p)] = 0;
      if (certain) mismatches += out[size_t(p)] != r[size_t(i * H * W + p)];
      on += out[size_t(p)];
    }
    pasted.push_back(std::move(out));
  }
  INFO(mismatches << " mismatching certain pixels; " << uncertain << " of " << n * H * W
                  << " are uncertain (" << on << " on)");
  REQUIRE(on > 100);
  REQUIRE(mismatches == 0);
  // The criterion leaves almost every pixel certain (a bound that let everything pass would not),
  // and a paste one pixel off disagrees on certain pixels.
  REQUIRE(uncertain * 100 <= n * H * W);
  {
    std::vector<uint8_t> off(size_t(H * W), 0);
    teacher::paste_mask(m.data(), 28, {b[0] + 1, b[1], b[2] + 1, b[3]}, H, W, off.data());
    int64_t wrong = 0;
    for (int64_t p = 0; p < H * W; ++p) {
      const auto [v, e] = paste_d2_model(m.data(), 28, &b[0], p % W, p / W, kU32);
      wrong += std::abs(v - 0.5) > 2 * e && off[size_t(p)] != r[size_t(p)];
    }
    REQUIRE(wrong > 0);
  }
  auto classes = ints(f.get("paste.classes"));
  auto label = teacher::label_map(classes, pasted, H, W);
  auto lref = f.get("paste.label").to_vector<uint8_t>();
  int64_t lmis = 0;
  for (size_t p = 0; p < label.size(); ++p) lmis += certain_label[p] && label[p] != lref[p];
  REQUIRE(lmis == 0);
  // The same pastes as one op (the backend kernel, both conventions) give the same bits as the
  // per-mask functions.
  for (auto conv : {teacher::Convention::Detectron2, teacher::Convention::Torchvision}) {
    Tensor op = teacher::paste_masks(masks.reshape({n, 28, 28}), boxes, H, W, conv);
    REQUIRE(op.shape() == Shape{n, H, W});
    const auto ov = op.to_vector<uint8_t>();
    for (int64_t i = 0; i < n; ++i) {
      std::vector<uint8_t> one(size_t(H * W), 0);
      const std::array<float, 4> bx{b[i * 4], b[i * 4 + 1], b[i * 4 + 2], b[i * 4 + 3]};
      if (conv == teacher::Convention::Detectron2)
        teacher::paste_mask(m.data() + i * 784, 28, bx, H, W, one.data());
      else
        teacher::paste_mask_torchvision(m.data() + i * 784, 28, bx, H, W, one.data());
      REQUIRE(std::equal(one.begin(), one.end(), ov.begin() + i * H * W));
    }
  }
  REQUIRE_THROWS_WITH(teacher::paste_masks(Tensor::zeros({2, 28, 27}), Tensor::zeros({2, 4}), 8, 8,
                                           teacher::Convention::Detectron2),
                      Contains("(D, M, M)"));
  REQUIRE_THROWS_WITH(teacher::paste_masks(Tensor::zeros({2, 28, 28}), Tensor::zeros({3, 4}), 8, 8,
                                           teacher::Convention::Detectron2),
                      Contains("boxes must be (2, 4)"));
  // torchvision's paste by hand (and as paste_masks_in_image gives it): an all-ones 2x2 mask in
  // the box (2, 2, 5, 5) expands by (2+2)/2 to (0.5, 0.5, 6.5, 6.5) -> integer box (0, 0)-(6, 6),
  // 7x7 pixels; the padded 4-wide row resized to 7 reads 0, .357, .929, 1, .929, .357, 0.
  {
    std::vector<uint8_t> out(100, 0);
    const std::vector<float> ones(4, 1.0f);
    teacher::paste_mask_torchvision(ones.data(), 2, {2, 2, 5, 5}, 10, 10, out.data());
    for (int64_t y = 0; y < 10; ++y)
      for (int64_t x = 0; x < 10; ++x) {
        INFO("pixel " << x << "," << y);
        const bool inside = x >= 2 && x <= 4 && y >= 2 && y <= 4;
        REQUIRE(out[size_t(y * 10 + x)] == uint8_t(inside));
      }
  }
  // Class 3 (motorcycle) is not tracked: background.
  REQUIRE(teacher::shadowtutor_label(3) == 8);
  REQUIRE(teacher::shadowtutor_label(5) == 2);
  REQUIRE_THROWS_WITH(teacher::label_map({0}, {std::vector<uint8_t>(5)}, 2, 2), Contains("5 pixels"));
}

TEST_CASE("teacher: RPN proposal selection in both conventions", "[teacher][golden][portable]") {
  auto f = golden();
  auto c = nlohmann::json::parse(f.metadata.at("cases")).at("rpn");
  const int64_t H = c.at("img_h"), W = c.at("img_w");
  auto logits = f.get("rpn.logits").to_vector<float>();
  auto deltas = f.get("rpn.deltas").to_vector<float>();
  auto counts = ints(f.get("rpn.counts"));
  std::vector<teacher::RpnLevel> levels;
  int64_t off = 0;
  size_t li = 0;
  for (const auto& g : c.at("grids")) {
    const int64_t gh = g[0], gw = g[1], stride = g[2], size = g[3], n = counts[li++];
    auto cell = teacher::cell_anchors(double(size), {0.5, 1.0, 2.0}, teacher::Convention::Torchvision);
    Tensor anchors = teacher::grid_anchors(cell, gh, gw, stride);
    REQUIRE(anchors.size(0) == n);
    levels.push_back({Tensor::from_vector(std::vector<float>(logits.begin() + off, logits.begin() + off + n), {n}),
                      Tensor::from_vector(std::vector<float>(deltas.begin() + off * 4, deltas.begin() + (off + n) * 4), {n, 4}),
                      anchors});
    off += n;
  }
  for (auto [conv, tag] : {std::pair{teacher::Convention::Torchvision, "tv"},
                           std::pair{teacher::Convention::Detectron2, "d2"}}) {
    INFO(tag);
    auto p = teacher::select_proposals(levels, H, W, conv);
    Tensor rb = f.get(std::string("rpn.") + tag + "_boxes"), rs = f.get(std::string("rpn.") + tag + "_scores");
    REQUIRE(p.boxes.shape() == rb.shape());
    // Every anchor is a candidate: its decoded and clipped box and its score (torchvision: the
    // sigmoid of the logit; Detectron2: the logit itself, exact).
    std::vector<Candidate> cands;
    const bool tv = conv == teacher::Convention::Torchvision;
    for (const auto& L : levels) {
      const auto lg = L.logits.to_vector<float>(), dl = L.deltas.to_vector<float>(),
                 an = L.anchors.to_vector<float>();
      for (size_t i = 0; i < lg.size(); ++i) {
        const std::array<double, 4> w1 = {1, 1, 1, 1};
        const Bounded s = tv ? sigmoid_model(lg[i]) : exact(lg[i], kU32);
        cands.push_back(candidate(decode_model(&an[i * 4], &dl[i * 4], w1, false, H, W),
                                  decode_model(&an[i * 4], &dl[i * 4], w1, true, H, W), s, s));
      }
    }
    REQUIRE(int64_t(p.level.size()) == p.boxes.size(0));
    // The selection is the reference's because every decision on this data is certain: the
    // per-level top 1000 of the exact logits (no tie at a cut), the small-box filter on the
    // decoded, clipped boxes (torchvision: sides >= 1e-3; Detectron2: > 0), the per-level NMS at
    // 0.7 (see check_nms) and which rows make the top 1000. The order of the rows is certain but
    // within runs of scores closer than their bounds (torchvision's sigmoid scores: one pair here),
    // where our rows are matched to the reference's in either order.
    std::vector<Choice> ch;
    int64_t ties_at_cut = 0, ambiguous_filter = 0;
    for (size_t l = 0; l < levels.size(); ++l) {
      const auto lg = levels[l].logits.to_vector<float>(), dl = levels[l].deltas.to_vector<float>(),
                 an = levels[l].anchors.to_vector<float>();
      std::vector<size_t> idx(lg.size());
      std::iota(idx.begin(), idx.end(), size_t(0));
      std::stable_sort(idx.begin(), idx.end(), [&](size_t a, size_t b) { return lg[a] > lg[b]; });
      const size_t k = std::min<size_t>(1000, lg.size());
      if (k < lg.size() && lg[idx[k - 1]] == lg[idx[k]]) ++ties_at_cut;
      for (size_t a = 0; a < k; ++a) {
        const size_t i = idx[a];
        const std::array<double, 4> w1 = {1, 1, 1, 1};
        const Box o = decode_model(&an[i * 4], &dl[i * 4], w1, false, H, W);
        const Box r = decode_model(&an[i * 4], &dl[i * 4], w1, true, H, W);
        const Bounded wo = o[2] - o[0], ho = o[3] - o[1], wr = r[2] - r[0], hr = r[3] - r[1];
        const double side = tv ? 1e-3 : 0.0;
        ambiguous_filter += !certain(wo, wr, side) || !certain(ho, hr, side);
        if (!(tv ? wo.v >= side && ho.v >= side : wo.v > side && ho.v > side)) continue;
        const Bounded sc = tv ? sigmoid_model(lg[i]) : exact(lg[i], kU32);
        ch.push_back({o, r, sc, sc, int64_t(l)});
      }
    }
    REQUIRE(ties_at_cut == 0);
    REQUIRE(ambiguous_filter == 0);
    // torchvision's batched_nms takes the coordinate trick for up to 1000 boxes.
    check_selection(ch, 0.7, tv && ch.size() <= 1000, 1000, cands, rb, rs, {}, p.boxes, p.scores,
                    nullptr);
  }
}

TEST_CASE("teacher: box-head inference in both conventions", "[teacher][golden][portable]") {
  auto f = golden();
  auto c = nlohmann::json::parse(f.metadata.at("cases")).at("boxinf");
  Tensor prop = f.get("boxinf.proposals");
  for (auto [conv, tag, thr] : {std::tuple{teacher::Convention::Torchvision, "tv", 0.05},
                                std::tuple{teacher::Convention::Detectron2, "d2", 0.5}}) {
    INFO(tag);
    teacher::BoxInferenceConfig cfg;
    cfg.score_thresh = thr;
    const std::string p = std::string("boxinf.") + tag;
    auto d = teacher::box_inference(f.get(p + "_logits"), f.get(p + "_deltas"), prop, c.at("img_h"),
                                    c.at("img_w"), conv, cfg);
    Tensor rb = f.get(p + "_boxes"), rs = f.get(p + "_scores");
    REQUIRE(rb.size(0) > 10);
    REQUIRE(d.boxes.shape() == rb.shape());
    // Candidates: every (proposal, foreground class) pair, its class-specific box decoded with
    // weights (10, 10, 5, 5) and clipped, and its softmax score.
    const bool d2 = conv == teacher::Convention::Detectron2;
    const Tensor lt = f.get(p + "_logits");
    const int64_t R = lt.size(0), K1 = lt.size(1), reg = d2 ? K1 - 1 : K1;
    const auto lg = lt.to_vector<float>(), dl = f.get(p + "_deltas").to_vector<float>(),
               pr = prop.to_vector<float>();
    const std::array<double, 4> w10 = {10, 10, 5, 5};
    const int64_t ih = c.at("img_h"), iw = c.at("img_w");
    std::vector<Candidate> cands;
    for (int64_t r = 0; r < R; ++r) {
      const auto so = softmax_model(&lg[size_t(r * K1)], K1, false);
      const auto st = softmax_model(&lg[size_t(r * K1)], K1, true);
      for (int64_t j = 0; j < K1 - 1; ++j) {
        const int64_t cls = d2 ? j : j + 1, col = d2 ? j : cls;
        const float* dr = &dl[size_t((r * reg + col) * 4)];
        cands.push_back(candidate(decode_model(&pr[size_t(r * 4)], dr, w10, false, ih, iw),
                                  decode_model(&pr[size_t(r * 4)], dr, w10, true, ih, iw),
                                  so[size_t(cls)], st[size_t(cls)], cls));
      }
    }
    // The selection is the reference's because every decision on this data is certain: the score
    // threshold (> thr, on the softmax), torchvision's small-box filter (sides >= 1e-2), the
    // per-class NMS at 0.5 (see check_nms) and which rows make the top 100; their order too, but
    // within runs of scores closer than their bounds, where either order is matched.
    std::vector<Choice> ch;
    int64_t ambiguous_filter = 0;
    for (int64_t r = 0; r < R; ++r) {
      const auto so = softmax_model(&lg[size_t(r * K1)], K1, false);
      const auto st = softmax_model(&lg[size_t(r * K1)], K1, true);
      for (int64_t j = 0; j < K1 - 1; ++j) {
        const int64_t cls = d2 ? j : j + 1, col = d2 ? j : cls;
        ambiguous_filter += !certain(so[size_t(cls)], st[size_t(cls)], thr);
        if (!(so[size_t(cls)].v > thr)) continue;
        const float* dr = &dl[size_t((r * reg + col) * 4)];
        const Box o = decode_model(&pr[size_t(r * 4)], dr, w10, false, ih, iw);
        const Box b = decode_model(&pr[size_t(r * 4)], dr, w10, true, ih, iw);
        if (!d2) {
          const Bounded wo = o[2] - o[0], ho = o[3] - o[1], wb = b[2] - b[0], hb = b[3] - b[1];
          ambiguous_filter += !certain(wo, wb, 1e-2) || !certain(ho, hb, 1e-2);
          if (!(wo.v >= 1e-2 && ho.v >= 1e-2)) continue;
        }
        ch.push_back({o, b, so[size_t(cls)], st[size_t(cls)], cls});
      }
    }
    REQUIRE(ambiguous_filter == 0);
    std::vector<int64_t> classes = d.classes;
    // torchvision's batched_nms takes the coordinate trick for up to 1000 boxes.
    check_selection(ch, 0.5, !d2 && ch.size() <= 1000, 100, cands, rb, rs,
                    ints(f.get(p + "_classes")), d.boxes, d.scores, &classes);
  }
  REQUIRE_THROWS_WITH(teacher::box_inference(Tensor::zeros({3, 81}), Tensor::zeros({3, 324}),
                                             Tensor::zeros({3, 4}), 10, 10,
                                             teacher::Convention::Detectron2),
                      Contains("(3, 320)"));
}

// ---- NMS of all groups in one launch, proposal selection of all levels together ----
// batched_nms computes the overlap bits of every group in one nms_mask call (a row covers only
// its own group, from the group's first box) and select_proposals gathers every level's top-k
// on the model's device before one read-back. Both are checked here against the plain
// algorithms written out (group by group, level by level), on data made to hit the edge cases:
// many groups with gaps between their ids, rows longer than one 64-bit word, ties in the scores,
// identical boxes, empty levels and ties at the top-k cut.
namespace {
// Greedy NMS of the boxes `idx`: by decreasing score (ties: lower index first), each kept unless
// a kept one overlaps it by IoU > thr. The IoU test is the kernels' (kernels/common/
// detect_math.h, checked against torchvision above); what is checked here is everything around it.
std::vector<int64_t> greedy_nms(const std::vector<float>& b, const std::vector<float>& s,
                                std::vector<int64_t> idx, float thr) {
  std::stable_sort(idx.begin(), idx.end(),
                   [&](int64_t a, int64_t c) { return s[size_t(a)] > s[size_t(c)]; });
  std::vector<int64_t> keep;
  for (int64_t i : idx) {
    bool gone = false;
    for (int64_t k : keep) gone = gone || detect::iou_above(&b[size_t(k * 4)], &b[size_t(i * 4)], thr);
    if (!gone) keep.push_back(i);
  }
  return keep;
}
// NMS group by group, the kept boxes merged by decreasing score (ties: lower index first).
std::vector<int64_t> per_group_nms(const std::vector<float>& b, const std::vector<float>& s,
                                   const std::vector<int64_t>& groups, float thr) {
  std::vector<int64_t> ids(groups);
  std::sort(ids.begin(), ids.end());
  ids.erase(std::unique(ids.begin(), ids.end()), ids.end());
  std::vector<int64_t> keep;
  for (int64_t g : ids) {
    std::vector<int64_t> idx;
    for (size_t k = 0; k < groups.size(); ++k)
      if (groups[k] == g) idx.push_back(int64_t(k));
    for (int64_t k : greedy_nms(b, s, idx, thr)) keep.push_back(k);
  }
  std::stable_sort(keep.begin(), keep.end(), [&](int64_t a, int64_t c) {
    return s[size_t(a)] > s[size_t(c)] || (s[size_t(a)] == s[size_t(c)] && a < c);
  });
  return keep;
}

struct GroupedBoxes {
  std::vector<float> boxes, scores;
  std::vector<int64_t> groups;
};
// Boxes in clusters (many overlaps on both sides of the thresholds, some identical), scores on
// a 1/16 grid (ties), in groups of sizes 1 to 150 (rows of 1 to 3 words; 64 and 65 exactly)
// whose ids have gaps and a negative one, interleaved in index order.
GroupedBoxes grouped_boxes(uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> u(0.0f, 1.0f);
  const std::vector<int64_t> sizes = {150, 64, 65, 1, 2, 3, 0, 7, 30, 31, 33, 5, 0, 12, 90, 1, 4};
  GroupedBoxes r;
  for (size_t g = 0; g < sizes.size(); ++g)
    for (int64_t k = 0; k < sizes[g]; ++k) r.groups.push_back(int64_t(g) * 3 - 5);  // -5, -2, 1, ...
  std::shuffle(r.groups.begin(), r.groups.end(), rng);
  for (size_t k = 0; k < r.groups.size(); ++k) {
    if (k % 17 == 5) {  // a copy of the previous box
      const std::vector<float> prev(r.boxes.end() - 4, r.boxes.end());
      r.boxes.insert(r.boxes.end(), prev.begin(), prev.end());
    } else {
      const float cx = float(int(u(rng) * 6)) * 20 + u(rng) * 6, cy = float(int(u(rng) * 4)) * 20 + u(rng) * 6;
      const float w = 6 + u(rng) * 14, h = 6 + u(rng) * 14;
      r.boxes.insert(r.boxes.end(), {cx - w, cy - h, cx + w, cy + h});
    }
    r.scores.push_back(float(int(u(rng) * 16)) / 16.0f);
  }
  return r;
}
}  // namespace

TEST_CASE("teacher ops: NMS of all groups in one launch is NMS group by group", "[teacher][portable]") {
  for (uint64_t seed : {1, 2, 3}) {
    const GroupedBoxes d = grouped_boxes(seed);
    const int64_t K = int64_t(d.scores.size());
    Tensor boxes = Tensor::from_vector(d.boxes, {K, 4}), scores = Tensor::from_vector(d.scores, {K});
    for (float thr : {0.3f, 0.5f, 0.7f}) {
      INFO("seed " << seed << ", threshold " << thr);
      const auto ref = per_group_nms(d.boxes, d.scores, d.groups, thr);
      REQUIRE(ref.size() < size_t(K));  // some were suppressed
      REQUIRE(teacher::batched_nms(boxes, scores, d.groups, thr) == ref);
      REQUIRE(teacher::batched_nms(d.boxes, d.scores, d.groups, thr, Device::cpu()) == ref);
      std::vector<int64_t> all(static_cast<size_t>(K));
      std::iota(all.begin(), all.end(), int64_t(0));
      REQUIRE(teacher::nms(boxes, scores, thr) == greedy_nms(d.boxes, d.scores, all, thr));
    }
  }
  // The kernel itself: boxes group-major, a mask one word wider than the longest group needs.
  // Row i's bit b of word w is box s + 64w + b of its group (s its first box); nothing else set.
  const GroupedBoxes d = grouped_boxes(4);
  const int64_t K = int64_t(d.scores.size());
  std::vector<int64_t> order(static_cast<size_t>(K));
  std::iota(order.begin(), order.end(), int64_t(0));
  std::stable_sort(order.begin(), order.end(),
                   [&](int64_t a, int64_t c) { return d.groups[size_t(a)] < d.groups[size_t(c)]; });
  std::vector<float> ob;
  std::vector<int64_t> og;
  for (int64_t k : order) {
    ob.insert(ob.end(), d.boxes.begin() + k * 4, d.boxes.begin() + k * 4 + 4);
    og.push_back(d.groups[size_t(k)]);
  }
  const int64_t words = (150 + 63) / 64 + 1;
  Tensor mask = Tensor::full({K, words}, -1.0, DType::I64);
  backend_for(Device::cpu()).nms_mask(Tensor::from_vector(ob, {K, 4}), Tensor::from_vector(og, {K}),
                                      0.5, mask);
  const auto bits = mask.to_vector<int64_t>();
  int64_t set = 0;
  for (int64_t i = 0; i < K; ++i) {
    int64_t s = i;
    while (s > 0 && og[size_t(s - 1)] == og[size_t(i)]) --s;
    for (int64_t w = 0; w < words; ++w)
      for (int64_t b = 0; b < 64; ++b) {
        const int64_t j = s + w * 64 + b;
        const bool want = j > i && j < K && og[size_t(j)] == og[size_t(i)] &&
                          detect::iou_above(&ob[size_t(i * 4)], &ob[size_t(j * 4)], 0.5f);
        const bool got = (uint64_t(bits[size_t(i * words + w)]) >> b) & 1;
        if (want != got) FAIL("row " << i << " word " << w << " bit " << b << ": " << got);
        set += got;
      }
  }
  REQUIRE(set > 100);
}

namespace {
// Proposal selection written level by level (MASKRCNN.md §4.4): each level's top k by logit
// (stable: ties lower index first), decoded, clipped, filtered; NMS within each level; merged by
// score; the first post_k.
teacher::Proposals per_level_proposals(const std::vector<teacher::RpnLevel>& levels, int64_t H,
                                       int64_t W, teacher::Convention c, int64_t pre_k,
                                       int64_t post_k, double thr) {
  const bool d2 = c == teacher::Convention::Detectron2;
  std::vector<float> boxes, scores;
  std::vector<int64_t> lvl;
  for (size_t l = 0; l < levels.size(); ++l) {
    const auto lg = levels[l].logits.to_vector<float>(), dl = levels[l].deltas.to_vector<float>(),
               an = levels[l].anchors.to_vector<float>();
    std::vector<int64_t> idx(lg.size());
    std::iota(idx.begin(), idx.end(), int64_t(0));
    std::stable_sort(idx.begin(), idx.end(),
                     [&](int64_t a, int64_t b) { return lg[size_t(a)] > lg[size_t(b)]; });
    idx.resize(std::min(idx.size(), size_t(pre_k)));
    for (int64_t i : idx) {
      Tensor one = teacher::decode_boxes(Tensor::from_vector(std::vector<float>(&dl[size_t(i * 4)], &dl[size_t(i * 4)] + 4), {1, 4}),
                                         Tensor::from_vector(std::vector<float>(&an[size_t(i * 4)], &an[size_t(i * 4)] + 4), {1, 4}),
                                         {1, 1, 1, 1});
      auto b = one.to_vector<float>();
      teacher::clip_box(b.data(), H, W);
      const float w = b[2] - b[0], h = b[3] - b[1];
      if (!(d2 ? (w > 0 && h > 0) : (w >= 1e-3f && h >= 1e-3f))) continue;
      const float x = lg[size_t(i)];
      boxes.insert(boxes.end(), b.begin(), b.end());
      scores.push_back(d2 ? x : 1.0f / (1.0f + std::exp(-x)));
      lvl.push_back(int64_t(l));
    }
  }
  auto keep = per_group_nms(boxes, scores, lvl, float(thr));
  keep.resize(std::min(keep.size(), size_t(post_k)));
  teacher::Proposals p;
  std::vector<float> ob, os;
  for (int64_t i : keep) {
    ob.insert(ob.end(), boxes.begin() + i * 4, boxes.begin() + i * 4 + 4);
    os.push_back(scores[size_t(i)]);
    p.level.push_back(lvl[size_t(i)]);
  }
  p.boxes = Tensor::from_vector(ob, {int64_t(keep.size()), 4});
  p.scores = Tensor::from_vector(os, {int64_t(keep.size())});
  return p;
}
}  // namespace

TEST_CASE("teacher: proposal selection of all levels together is selection level by level",
          "[teacher][portable]") {
  const int64_t H = 90, W = 130;
  std::mt19937_64 rng(11);
  std::uniform_real_distribution<float> u(0.0f, 1.0f);
  // Levels of 0 to 1500 anchors: logits on a 1/4 grid (ties, at the top-k cut too), deltas up to
  // +-3 (past the dw/dh clamp; boxes leave the image and some clip to nothing), anchors of the
  // level's size on its grid; one level's deltas in float64.
  std::vector<teacher::RpnLevel> levels;
  const std::vector<int64_t> counts = {1500, 0, 420, 60, 7};
  for (size_t l = 0; l < counts.size(); ++l) {
    const int64_t n = counts[l];
    const float size = float(8 << l), stride = float(4 << l);
    std::vector<float> lg, dl, an;
    for (int64_t i = 0; i < n; ++i) {
      lg.push_back(float(int(u(rng) * 40) - 20) / 4.0f);
      for (int q = 0; q < 4; ++q) dl.push_back((u(rng) * 2 - 1) * (q < 2 ? 1.0f : 3.0f));
      const float cx = float(i % 37) * stride - 8, cy = float(i / 37 % 29) * stride - 8;
      const float r = 0.5f + float(i % 3) * 0.5f;
      an.insert(an.end(), {cx - size / 2, cy - size * r / 2, cx + size / 2, cy + size * r / 2});
    }
    Tensor deltas = Tensor::from_vector(dl, {n, 4});
    if (l == 2) deltas = deltas.to(DType::F64);
    levels.push_back({Tensor::from_vector(lg, {n}), deltas, Tensor::from_vector(an, {n, 4})});
  }
  for (auto conv : {teacher::Convention::Detectron2, teacher::Convention::Torchvision})
    for (auto [pre_k, post_k, thr] : {std::tuple{int64_t(100), int64_t(150), 0.7},
                                      std::tuple{int64_t(1000), int64_t(1000), 0.5},
                                      std::tuple{int64_t(40), int64_t(5), 0.3}}) {
      INFO("convention " << int(conv) << ", top " << pre_k << " / " << post_k << ", NMS " << thr);
      const auto ref = per_level_proposals(levels, H, W, conv, pre_k, post_k, thr);
      const auto p = teacher::select_proposals(levels, H, W, conv, pre_k, post_k, thr);
      REQUIRE(ref.boxes.size(0) > 4);
      REQUIRE(p.boxes.to_vector<float>() == ref.boxes.to_vector<float>());
      REQUIRE(p.scores.to_vector<float>() == ref.scores.to_vector<float>());
      REQUIRE(p.level == ref.level);
    }
  // Edge cases: no levels, levels with no anchors, top-k of 0.
  REQUIRE(teacher::select_proposals({}, H, W, teacher::Convention::Detectron2).boxes.size(0) == 0);
  REQUIRE(teacher::select_proposals({levels[1]}, H, W, teacher::Convention::Detectron2).boxes.size(0) == 0);
  REQUIRE(teacher::select_proposals(levels, H, W, teacher::Convention::Detectron2, 0).boxes.size(0) == 0);
  REQUIRE_THROWS_WITH(teacher::select_proposals(levels, H, W, teacher::Convention::Detectron2, -1),
                      Contains("top-k sizes must be >= 0"));
}
