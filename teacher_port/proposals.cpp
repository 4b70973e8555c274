#include "teacher_port/proposals.h"

#include <algorithm>
#include <cmath>

#include "teacher_port/detect_ops.h"
#include "tensor/backend.h"

namespace st::teacher {

// Device work and read-backs. The levels' logits and deltas live on the model's device (the
// first level's logits say which); each level's top-k is found there (sort_desc) and its rows
// gathered there (gather_rows) into one tensor for all levels, launched level after level with
// no read-back in between. Then, whatever the number of levels: one read-back of the gathered
// logits, one of the gathered deltas, one of the gathered anchors (or of the top-k indices when
// the anchors are on the host, as grid_anchors makes them: they are gathered there), and the NMS
// of all levels together (batched_nms: one upload, one launch, one read-back). Decoding,
// clipping and the small-box filter run on the host over the gathered rows (at most
// pre_nms_topk per level), in the same float32 operations as before, so the result is the same
// bits as a level-by-level selection on the CPU (tests/test_teacher_ops.cpp checks against one).
Proposals select_proposals(const std::vector<RpnLevel>& levels, int64_t img_h, int64_t img_w,
                           Convention c, int64_t pre_nms_topk, int64_t post_nms_topk,
                           double nms_thresh) {
  ST_CHECK(pre_nms_topk >= 0 && post_nms_topk >= 0, "select_proposals: top-k sizes must be >= 0, got ",
           pre_nms_topk, " before NMS and ", post_nms_topk, " after");
  const size_t L = levels.size();
  std::vector<int64_t> off(L + 1, 0);  // level l's rows in the gathered tensors: [off[l], off[l+1])
  bool anchors_on_host = true;
  for (size_t l = 0; l < L; ++l) {
    const RpnLevel& R = levels[l];
    ST_CHECK(R.logits.dim() == 1, "select_proposals: level ", l, " logits must be 1-D, got ",
             R.logits.shape());
    const int64_t n = R.logits.size(0);
    ST_CHECK(R.deltas.dim() == 2 && R.deltas.size(0) == n && R.deltas.size(1) == 4 &&
                 R.anchors.dim() == 2 && R.anchors.size(0) == n && R.anchors.size(1) == 4,
             "select_proposals: level ", l, " has ", n, " logits but deltas ", R.deltas.shape(),
             " and anchors ", R.anchors.shape());
    off[l + 1] = off[l] + std::min(n, pre_nms_topk);
    anchors_on_host = anchors_on_host && R.anchors.device().is_cpu();
  }
  const int64_t T = off[L];
  const Device dev = L > 0 ? levels[0].logits.device() : Device::cpu();
  Backend& be = backend_for(dev);
  Tensor top = Tensor::empty({T}, DType::I64, dev), lg = Tensor::empty({T, 1}, DType::F32, dev),
         dl = Tensor::empty({T, 4}, DType::F32, dev), an;
  if (!anchors_on_host) an = Tensor::empty({T, 4}, DType::F32, dev);
  for (size_t l = 0; l < L; ++l) {
    const int64_t k = off[l + 1] - off[l];
    if (k == 0) continue;
    const RpnLevel& R = levels[l];
    const int64_t n = R.logits.size(0);
    Tensor s = R.logits.to(dev).to(DType::F32).contiguous();
    Tensor order = Tensor::empty({n}, DType::I64, dev);
    be.sort_desc(s, order);
    Tensor idx = order.narrow(0, 0, k);  // the level's top k, by decreasing logit
    Tensor top_l = top.narrow(0, off[l], k), lg_l = lg.narrow(0, off[l], k),
           dl_l = dl.narrow(0, off[l], k);
    top_l.copy_(idx);
    be.gather_rows(s.reshape({n, 1}), idx, lg_l);
    be.gather_rows(R.deltas.to(dev).to(DType::F32).contiguous(), idx, dl_l);
    if (!anchors_on_host) {
      Tensor an_l = an.narrow(0, off[l], k);
      be.gather_rows(R.anchors.to(dev).to(DType::F32).contiguous(), idx, an_l);
    }
  }
  const auto lv = lg.to_vector<float>();
  const auto dv = dl.to_vector<float>();
  std::vector<float> av(size_t(T * 4));
  if (anchors_on_host) {
    const auto tv = top.to_vector<int64_t>();
    for (size_t l = 0; l < L; ++l) {
      if (off[l + 1] == off[l]) continue;
      const Tensor a = levels[l].anchors.to(DType::F32).contiguous();
      const float* pa = a.data<float>();
      for (int64_t j = off[l]; j < off[l + 1]; ++j)
        std::copy_n(pa + tv[size_t(j)] * 4, 4, &av[size_t(j * 4)]);
    }
  } else {
    av = an.to_vector<float>();
  }
  // Decoding is row by row, so all levels at once give each row the bits its level alone gave.
  const auto dec = decode_boxes(Tensor::from_vector(dv, {T, 4}), Tensor::from_vector(av, {T, 4}),
                                {1, 1, 1, 1})
                       .to_vector<float>();
  std::vector<float> boxes, scores;
  std::vector<int64_t> lvl;
  for (size_t l = 0; l < L; ++l)
    for (int64_t j = off[l]; j < off[l + 1]; ++j) {
      float b[4];
      for (int q = 0; q < 4; ++q) b[q] = dec[size_t(j * 4 + q)];
      clip_box(b, img_h, img_w);
      const float w = b[2] - b[0], h = b[3] - b[1];
      const bool keep = c == Convention::Detectron2 ? (w > 0 && h > 0) : (w >= 1e-3f && h >= 1e-3f);
      if (!keep) continue;
      const float logit = lv[size_t(j)];
      boxes.insert(boxes.end(), b, b + 4);
      scores.push_back(c == Convention::Detectron2 ? logit : 1.0f / (1.0f + std::exp(-logit)));
      lvl.push_back(int64_t(l));
    }
  auto keep = batched_nms(boxes, scores, lvl, nms_thresh, dev);
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
