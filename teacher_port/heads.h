// The teacher's heads (MASKRCNN.md §4.1, §5.1–§5.4): the RPN head, the multi-level ROI pooler,
// the box head + predictor, the mask head + predictor. Detectron2 weight names; class counts
// come from the weights (Detectron2: 80 + background last; a torchvision-layout file: 91).
#pragma once
#include <vector>

#include "teacher_port/glue.h"
#include "teacher_port/proposals.h"
#include "tensor/safetensors.h"

namespace st::teacher {

struct PoolerOptions {
  Convention levels = Convention::Detectron2;  // level-assignment rule
  bool aligned = true;                         // Detectron2: ROIAlignV2; torchvision: false
  int64_t sampling_ratio = 0;                  // Detectron2: adaptive; torchvision: 2
};

// ROIAlign of each box (R, 4, image pixels) on its FPN level among P2..P5 (strides 4..32):
// (R, C, out, out), rows in box order, on the maps' device. (The heads pool without leaving the
// device, rows grouped by level, and put only their small outputs back in box order.)
Tensor pool_levels(const std::vector<Tensor>& p2_to_p5, const Tensor& boxes, int64_t out,
                   const PoolerOptions& o);

class RpnHead {
 public:
  explicit RpnHead(const safetensors::File& f);
  void to(Device d);  // the weights (forward also moves them per call when they are elsewhere)
  // P2..P6 -> per level logits (H*W*A) and deltas (H*W*A, 4) in (y, x, a) order, on the CPU;
  // anchors are left empty (grid_anchors fills them).
  std::vector<RpnLevel> forward(const std::vector<Tensor>& levels) const;
  int64_t anchors_per_cell() const { return A_; }

 private:
  Tensor conv_w_, conv_b_, obj_w_, obj_b_, del_w_, del_b_;
  int64_t A_ = 3;
};

class BoxHead {
 public:
  explicit BoxHead(const safetensors::File& f);
  void to(Device d);
  struct Out {  // on the CPU, rows in proposal order
    Tensor class_logits;  // (R, K+1)
    Tensor box_deltas;    // (R, 4K) Detectron2 layout, or (R, 4(K+1)) torchvision layout
  };
  Out forward(const std::vector<Tensor>& p2_to_p5, const Tensor& proposals,
              const PoolerOptions& o) const;
  int64_t score_classes() const { return cls_w_.size(0); }  // K + 1 (background included)

 private:
  Tensor fc1_w_, fc1_b_, fc2_w_, fc2_b_, cls_w_, cls_b_, box_w_, box_b_;
};

class MaskHead {
 public:
  explicit MaskHead(const safetensors::File& f);
  void to(Device d);
  // Mask logits (D, classes, 28, 28) for boxes (D, 4), on the CPU, rows in box order.
  Tensor forward(const std::vector<Tensor>& p2_to_p5, const Tensor& boxes,
                 const PoolerOptions& o) const;
  int64_t classes() const { return pred_w_.size(0); }

 private:
  Tensor fcn_w_[4], fcn_b_[4], deconv_w_, deconv_b_, pred_w_, pred_b_;
};

}  // namespace st::teacher
