#include "teacher_port/detect_ops.h"

#include <algorithm>
#include <numeric>

#include "tensor/backend.h"

namespace st::teacher {

namespace {
// A CPU float32 contiguous copy of a (K, 4) tensor, checked.
std::vector<float> boxes_f32(const Tensor& t, const char* op, const char* what) {
  ST_CHECK(t.dim() == 2 && t.size(1) == 4, op, ": ", what, " must be (K, 4), got ", t.shape());
  ST_CHECK(is_floating(t.dtype()), op, ": ", what, " must be floating point, got ", t.dtype());
  return t.to_vector<float>();
}

// Greedy NMS within groups on host data, the overlap mask computed on `device`; the kept
// indices in processing order (group by group, by decreasing score inside a group).
//
// The round trips are the same whatever the number of groups: one upload of the ordered boxes,
// one of their groups (both asynchronous host-to-device copies), one nms_mask launch that covers
// every group, one read-back of the mask. (Earlier this uploaded, launched and read back once per
// group: 80 classes in the box head.) No coordinate offsets separate the groups (torchvision's
// trick): offsetting changes how the IoUs round; the kernel instead never compares boxes of
// different groups, and a row's bits start at its own group's first box, so each group's part of
// the mask is bit for bit the mask a separate NMS of that group gives.
std::vector<int64_t> nms_groups(const std::vector<float>& b, const std::vector<float>& s,
                                const std::vector<int64_t>& groups, float thr, Device device) {
  const int64_t K = int64_t(s.size());
  if (K == 0) return {};
  // Processing order: a stable sort by decreasing score (ties: lower index first), then a
  // stable one by group: group-major, and inside a group exactly the order a per-group NMS
  // takes (the descending order of all scores, filtered to the group).
  std::vector<int64_t> order(static_cast<size_t>(K));
  std::iota(order.begin(), order.end(), int64_t(0));
  std::stable_sort(order.begin(), order.end(),
                   [&](int64_t a, int64_t c) { return s[size_t(a)] > s[size_t(c)]; });
  std::stable_sort(order.begin(), order.end(),
                   [&](int64_t a, int64_t c) { return groups[size_t(a)] < groups[size_t(c)]; });
  std::vector<float> ordered(static_cast<size_t>(K * 4));
  std::vector<int64_t> g(static_cast<size_t>(K));
  int64_t longest = 0;
  for (int64_t k = 0, run = 0; k < K; ++k) {
    std::copy_n(&b[size_t(order[size_t(k)]) * 4], 4, &ordered[size_t(k * 4)]);
    g[size_t(k)] = groups[size_t(order[size_t(k)])];
    run = k > 0 && g[size_t(k)] == g[size_t(k - 1)] ? run + 1 : 1;
    longest = std::max(longest, run);
  }
  const int64_t words = (longest + 63) / 64;  // a row spans its own group only
  Tensor boxes = Tensor::from_vector(ordered, {K, 4}).to(device);
  Tensor gt = Tensor::from_vector(g, {K}).to(device);
  Tensor mask = Tensor::empty({K, words}, DType::I64, device);
  backend_for(device).nms_mask(boxes, gt, double(thr), mask);
  const auto bits = mask.to_vector<int64_t>();
  // The greedy sweep, one group (one run of the order) at a time; bit r of a group's `removed`
  // is its r-th box, as in the mask's rows.
  std::vector<int64_t> keep;
  std::vector<uint64_t> removed(static_cast<size_t>(words));
  for (int64_t lo = 0, hi = 0; lo < K; lo = hi) {
    while (hi < K && g[size_t(hi)] == g[size_t(lo)]) ++hi;
    const int64_t n = hi - lo, nw = (n + 63) / 64;
    std::fill_n(removed.begin(), nw, uint64_t(0));
    for (int64_t r = 0; r < n; ++r) {
      if ((removed[size_t(r / 64)] >> (r % 64)) & 1) continue;
      keep.push_back(order[size_t(lo + r)]);
      const int64_t* row = &bits[size_t((lo + r) * words)];
      for (int64_t w = r / 64; w < nw; ++w) removed[size_t(w)] |= uint64_t(row[w]);
    }
  }
  return keep;
}

// Kept indices of all groups merged by decreasing score (ties: lower index first).
void merge_by_score(std::vector<int64_t>& keep, const std::vector<float>& s) {
  std::stable_sort(keep.begin(), keep.end(), [&](int64_t a, int64_t c) {
    return s[size_t(a)] > s[size_t(c)] || (s[size_t(a)] == s[size_t(c)] && a < c);
  });
}
}  // namespace

Tensor roi_align(const Tensor& x, const Tensor& rois_in, int64_t out_h, int64_t out_w,
                 double spatial_scale, int64_t sampling_ratio, bool aligned) {
  ST_CHECK(x.dim() == 4, "roi_align: input must be (N, C, H, W), got ", x.shape());
  ST_CHECK(is_floating(x.dtype()) && x.dtype() != DType::F16, "roi_align: input dtype ",
           x.dtype(), " is not supported (f32, f64)");
  ST_CHECK(rois_in.dim() == 2 && rois_in.size(1) == 5, "roi_align: rois must be (R, 5), got ",
           rois_in.shape());
  ST_CHECK(out_h > 0 && out_w > 0, "roi_align: output size must be positive, got ", out_h, "x",
           out_w);
  ST_CHECK(spatial_scale > 0 && std::isfinite(spatial_scale), "roi_align: bad spatial scale ",
           spatial_scale);
  const auto v = rois_in.to_vector<double>();
  for (int64_t r = 0; r < rois_in.size(0); ++r) {
    const double b = v[size_t(r * 5)];
    ST_CHECK(b == std::floor(b) && b >= 0 && b < double(x.size(0)), "roi_align: roi ", r,
             " has batch index ", b, ", the input has ", x.size(0), " images");
    for (int k = 1; k < 5; ++k)
      ST_CHECK(std::isfinite(v[size_t(r * 5 + k)]), "roi_align: roi ", r, " has a non-finite coordinate");
  }
  Tensor rois = rois_in.to(x.dtype()).to(x.device()).contiguous();
  Tensor xc = x.contiguous();
  Tensor out = Tensor::empty({rois.size(0), x.size(1), out_h, out_w}, x.dtype(), x.device());
  if (out.numel() > 0)
    backend_for(x.device()).roi_align_forward(xc, rois, spatial_scale, sampling_ratio, aligned, out);
  return out;
}

Tensor decode_boxes(const Tensor& deltas, const Tensor& boxes, std::array<double, 4> weights,
                    double clamp) {
  const auto d = boxes_f32(deltas, "decode_boxes", "deltas");
  const auto b = boxes_f32(boxes, "decode_boxes", "boxes");
  ST_CHECK(deltas.size(0) == boxes.size(0), "decode_boxes: ", deltas.size(0), " deltas for ",
           boxes.size(0), " boxes");
  const int64_t K = boxes.size(0);
  std::vector<float> out(size_t(K * 4));
  const float wx = float(weights[0]), wy = float(weights[1]), ww = float(weights[2]),
              wh = float(weights[3]), cl = float(clamp);
  for (int64_t k = 0; k < K; ++k) {
    const float* p = &b[size_t(k * 4)];
    const float* q = &d[size_t(k * 4)];
    const float w = p[2] - p[0], h = p[3] - p[1];
    const float cx = p[0] + 0.5f * w, cy = p[1] + 0.5f * h;
    const float dx = q[0] / wx, dy = q[1] / wy;
    const float dw = std::min(q[2] / ww, cl), dh = std::min(q[3] / wh, cl);
    const float pcx = dx * w + cx, pcy = dy * h + cy;
    const float pw = std::exp(dw) * w, ph = std::exp(dh) * h;
    float* o = &out[size_t(k * 4)];
    o[0] = pcx - 0.5f * pw;
    o[1] = pcy - 0.5f * ph;
    o[2] = pcx + 0.5f * pw;
    o[3] = pcy + 0.5f * ph;
  }
  return Tensor::from_vector(out, {K, 4});
}

std::vector<int64_t> nms(const Tensor& boxes, const Tensor& scores, double iou_threshold) {
  const auto b = boxes_f32(boxes, "nms", "boxes");
  ST_CHECK(scores.dim() == 1 && scores.size(0) == boxes.size(0), "nms: scores must be (",
           boxes.size(0), "), got ", scores.shape());
  return nms_groups(b, scores.to_vector<float>(), std::vector<int64_t>(size_t(boxes.size(0)), 0),
                    float(iou_threshold), boxes.device());
}

std::vector<int64_t> batched_nms(const Tensor& boxes, const Tensor& scores,
                                 const std::vector<int64_t>& groups, double iou_threshold) {
  const auto b = boxes_f32(boxes, "batched_nms", "boxes");
  ST_CHECK(scores.dim() == 1 && scores.size(0) == boxes.size(0), "batched_nms: scores must be (",
           boxes.size(0), "), got ", scores.shape());
  return batched_nms(b, scores.to_vector<float>(), groups, iou_threshold, boxes.device());
}

std::vector<int64_t> batched_nms(const std::vector<float>& boxes, const std::vector<float>& scores,
                                 const std::vector<int64_t>& groups, double iou_threshold,
                                 Device device) {
  ST_CHECK(boxes.size() == scores.size() * 4, "batched_nms: ", boxes.size(),
           " box coordinates for ", scores.size(), " scores (4 per box)");
  ST_CHECK(groups.size() == scores.size(), "batched_nms: ", groups.size(), " group ids for ",
           scores.size(), " boxes");
  auto keep = nms_groups(boxes, scores, groups, float(iou_threshold), device);
  merge_by_score(keep, scores);
  return keep;
}

std::vector<int64_t> topk(const Tensor& scores, int64_t k) {
  ST_CHECK(scores.dim() == 1, "topk: scores must be 1-D, got ", scores.shape());
  ST_CHECK(k >= 0, "topk: k must be >= 0, got ", k);
  const Device d = scores.device();
  Tensor s = scores.to(DType::F32).contiguous();
  Tensor order = Tensor::empty({s.size(0)}, DType::I64, d);
  if (s.size(0) > 0) backend_for(d).sort_desc(s, order);
  auto o = order.to_vector<int64_t>();
  if (int64_t(o.size()) > k) o.resize(size_t(k));
  return o;
}

}  // namespace st::teacher
