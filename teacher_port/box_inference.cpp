#include "teacher_port/box_inference.h"

#include <algorithm>
#include <cmath>

#include "teacher_port/detect_ops.h"

namespace st::teacher {

Detections box_inference(const Tensor& class_logits, const Tensor& box_deltas,
                         const Tensor& proposals, int64_t img_h, int64_t img_w, Convention c,
                         const BoxInferenceConfig& cfg) {
  ST_CHECK(class_logits.dim() == 2 && class_logits.size(1) >= 2,
           "box_inference: class logits must be (R, K+1), got ", class_logits.shape());
  const int64_t R = class_logits.size(0), K1 = class_logits.size(1), K = K1 - 1;
  const bool d2 = c == Convention::Detectron2;
  const int64_t reg = d2 ? K : K1;  // box columns per row / 4
  ST_CHECK(box_deltas.dim() == 2 && box_deltas.size(0) == R && box_deltas.size(1) == reg * 4,
           "box_inference: box deltas must be (", R, ", ", reg * 4, "), got ", box_deltas.shape());
  ST_CHECK(proposals.dim() == 2 && proposals.size(0) == R && proposals.size(1) == 4,
           "box_inference: proposals must be (", R, ", 4), got ", proposals.shape());
  const auto lg = class_logits.to_vector<float>();
  const auto dl = box_deltas.to_vector<float>();
  const auto pr = proposals.to_vector<float>();

  // Class-specific boxes: decode every (row, class) against its proposal.
  std::vector<float> rep(size_t(R * reg * 4));
  for (int64_t r = 0; r < R; ++r)
    for (int64_t k = 0; k < reg; ++k)
      std::copy(pr.begin() + r * 4, pr.begin() + r * 4 + 4, rep.begin() + (r * reg + k) * 4);
  auto boxes = decode_boxes(Tensor::from_vector(dl, {R * reg, 4}),
                            Tensor::from_vector(rep, {R * reg, 4}), {10, 10, 5, 5})
                   .to_vector<float>();
  for (int64_t i = 0; i < R * reg; ++i) clip_box(&boxes[size_t(i * 4)], img_h, img_w);
  std::vector<float> cb, cs;
  std::vector<int64_t> ccls;
  std::vector<float> prob(static_cast<size_t>(K1));
  for (int64_t r = 0; r < R; ++r) {
    const float* l = &lg[size_t(r * K1)];
    bool finite = true;
    for (int64_t k = 0; k < K1; ++k) finite = finite && std::isfinite(l[k]);
    for (int64_t k = 0; k < reg * 4; ++k) finite = finite && std::isfinite(dl[size_t(r * reg * 4 + k)]);
    if (d2 && !finite) continue;
    float mx = l[0];
    for (int64_t k = 1; k < K1; ++k) mx = std::max(mx, l[k]);
    float sum = 0;
    for (int64_t k = 0; k < K1; ++k) sum += (prob[size_t(k)] = std::exp(l[k] - mx));
    for (int64_t k = 0; k < K1; ++k) prob[size_t(k)] /= sum;
    // foreground classes in order: Detectron2 0..K-1 (background last); torchvision 1..K
    for (int64_t j = 0; j < K; ++j) {
      const int64_t cls = d2 ? j : j + 1;
      const float s = prob[size_t(cls)];
      if (!(s > float(cfg.score_thresh))) continue;
      const float* b = &boxes[size_t((r * reg + (d2 ? j : cls)) * 4)];
      if (!d2 && !((b[2] - b[0]) >= 1e-2f && (b[3] - b[1]) >= 1e-2f)) continue;
      cb.insert(cb.end(), b, b + 4);
      cs.push_back(s);
      ccls.push_back(cls);
    }
  }
  // Per-class NMS on the device of the head's outputs: one upload, one launch and one read-back
  // for all classes together (batched_nms).
  auto keep = batched_nms(cb, cs, ccls, cfg.nms_thresh, class_logits.device());
  if (int64_t(keep.size()) > cfg.detections) keep.resize(size_t(cfg.detections));
  Detections out;
  std::vector<float> ob, os;
  for (int64_t i : keep) {
    ob.insert(ob.end(), cb.begin() + i * 4, cb.begin() + i * 4 + 4);
    os.push_back(cs[size_t(i)]);
    out.classes.push_back(ccls[size_t(i)]);
  }
  out.boxes = Tensor::from_vector(ob, {int64_t(keep.size()), 4});
  out.scores = Tensor::from_vector(os, {int64_t(keep.size())});
  return out;
}

}  // namespace st::teacher
