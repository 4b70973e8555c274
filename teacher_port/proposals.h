// RPN proposal selection (MASKRCNN.md §4.4; Detectron2 find_top_rpn_proposals / torchvision
// RegionProposalNetwork.filter_proposals, test mode), float32: top-k, gather and the NMS masks on
// the levels' device, with a fixed number of read-backs (proposals.cpp); the rest on the CPU.
#pragma once
#include <cstdint>
#include <vector>

#include "teacher_port/glue.h"
#include "tensor/tensor.h"

namespace st::teacher {

// One FPN level of the RPN's output for one image, flattened in (y, x, anchor) order.
struct RpnLevel {
  Tensor logits;   // (n)    objectness logits
  Tensor deltas;   // (n, 4) box deltas (dx, dy, dw, dh)
  Tensor anchors;  // (n, 4)
};

struct Proposals {
  Tensor boxes;                // (P, 4) f32, clipped to the image, by decreasing score
  Tensor scores;               // (P) logits (Detectron2) or sigmoid probabilities (torchvision)
  std::vector<int64_t> level;  // index into the levels given
};

// Per level: top pre_nms_topk by logit, decode (weights 1, clamp log(1000/16)); all levels: clip
// to (img_h, img_w), drop small boxes (Detectron2: w, h > 0; torchvision: w, h >= 1e-3), NMS per
// level at nms_thresh scored by logits (Detectron2) or sigmoid (torchvision), keep the first
// post_nms_topk.
Proposals select_proposals(const std::vector<RpnLevel>& levels, int64_t img_h, int64_t img_w,
                           Convention c, int64_t pre_nms_topk = 1000,
                           int64_t post_nms_topk = 1000, double nms_thresh = 0.7);

}  // namespace st::teacher
