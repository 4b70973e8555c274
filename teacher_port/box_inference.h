// Box-head inference for one image (MASKRCNN.md §5.3): Detectron2's
// fast_rcnn_inference_single_image / torchvision's RoIHeads.postprocess_detections. CPU float32.
#pragma once
#include <cstdint>
#include <vector>

#include "teacher_port/glue.h"
#include "tensor/tensor.h"

namespace st::teacher {

struct Detections {
  Tensor boxes;                  // (D, 4) f32, clipped, by decreasing score
  Tensor scores;                 // (D)
  std::vector<int64_t> classes;  // Detectron2: 0..79; torchvision: the label index (1..90)
};

struct BoxInferenceConfig {
  double score_thresh = 0.05;    // ShadowTutor's teacher: 0.5
  double nms_thresh = 0.5;
  int64_t detections = 100;
};

// class_logits (R, K+1): Detectron2 has the background LAST, torchvision FIRST; box_deltas
// (R, K*4) (Detectron2: one box per foreground class) or (R, (K+1)*4) (torchvision: one per
// class, background included); proposals (R, 4). Softmax, class-specific decode with weights
// (10, 10, 5, 5), clip to (img_h, img_w), scores > thresh, torchvision also drops boxes under
// 1e-2 px, per-class NMS, the best `detections`. Rows with non-finite values are dropped
// (Detectron2).
Detections box_inference(const Tensor& class_logits, const Tensor& box_deltas,
                         const Tensor& proposals, int64_t img_h, int64_t img_w, Convention c,
                         const BoxInferenceConfig& cfg = {});

}  // namespace st::teacher
