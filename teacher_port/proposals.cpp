#include "teacher_port/proposals.h"

#include <algorithm>
#include <cmath>

#include "teacher_port/detect_ops.h"

namespace st::teacher {

Proposals select_proposals(const std::vector<RpnLevel>& levels, int64_t img_h, int64_t img_w,
                           Convention c, int64_t pre_nms_topk, int64_t post_nms_topk,
                           double nms_thresh) {
  std::vector<float> boxes, scores;
  std::vector<int64_t> lvl;
  for (size_t l = 0; l < levels.size(); ++l) {
    const RpnLevel& L = levels[l];
    ST_CHECK(L.logits.dim() == 1, "select_proposals: level ", l, " logits must be 1-D, got ",
             L.logits.shape());
    const int64_t n = L.logits.size(0);
    ST_CHECK(L.deltas.dim() == 2 && L.deltas.size(0) == n && L.deltas.size(1) == 4 &&
                 L.anchors.dim() == 2 && L.anchors.size(0) == n && L.anchors.size(1) == 4,
             "select_proposals: level ", l, " has ", n, " logits but deltas ", L.deltas.shape(),
             " and anchors ", L.anchors.shape());
    const auto top = topk(L.logits, pre_nms_topk);
    const auto lg = L.logits.to_vector<float>();
    const auto dv = L.deltas.to_vector<float>(), av = L.anchors.to_vector<float>();
    std::vector<float> d, a;
    for (int64_t i : top) {
      d.insert(d.end(), dv.begin() + i * 4, dv.begin() + i * 4 + 4);
      a.insert(a.end(), av.begin() + i * 4, av.begin() + i * 4 + 4);
    }
    const int64_t k = int64_t(top.size());
    const auto dec = decode_boxes(Tensor::from_vector(d, {k, 4}), Tensor::from_vector(a, {k, 4}),
                                  {1, 1, 1, 1})
                         .to_vector<float>();
    for (int64_t j = 0; j < k; ++j) {
      float b[4];
      for (int q = 0; q < 4; ++q) b[q] = dec[size_t(j * 4 + q)];
      clip_box(b, img_h, img_w);
      const float w = b[2] - b[0], h = b[3] - b[1];
      const bool keep = c == Convention::Detectron2 ? (w > 0 && h > 0) : (w >= 1e-3f && h >= 1e-3f);
      if (!keep) continue;
      const float logit = lg[size_t(top[size_t(j)])];
      boxes.insert(boxes.end(), b, b + 4);
      scores.push_back(c == Convention::Detectron2 ? logit : 1.0f / (1.0f + std::exp(-logit)));
      lvl.push_back(int64_t(l));
    }
  }
  const int64_t P = int64_t(scores.size());
  Tensor bt = Tensor::from_vector(boxes, {P, 4}), st = Tensor::from_vector(scores, {P});
  auto keep = batched_nms(bt, st, lvl, nms_thresh);
  if (int64_t(keep.size()) > post_nms_topk) keep.resize(size_t(post_nms_topk));
  Proposals out;
  std::vector<float> ob, os;
  for (int64_t i : keep) {
    ob.insert(ob.end(), boxes.begin() + i * 4, boxes.begin() + i * 4 + 4);
    os.push_back(scores[size_t(i)]);
    out.level.push_back(lvl[size_t(i)]);
  }
  out.boxes = Tensor::from_vector(ob, {int64_t(keep.size()), 4});
  out.scores = Tensor::from_vector(os, {int64_t(keep.size())});
  return out;
}

}  // namespace st::teacher
