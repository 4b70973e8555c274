// Detection ops of the Mask R-CNN teacher (MASKRCNN.md §4–§5), inference only: ROIAlign (a
// backend kernel: CPU and CUDA), box decoding, NMS (exact, per group), top-k. Each follows
// torchvision's float32 arithmetic so golden comparisons are tight
// (tests/test_teacher_ops.cpp, golden file from tools/make_teacher_ops_golden.py).
#pragma once
#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <vector>

#include "tensor/tensor.h"

namespace st::teacher {

// x (N, C, H, W) f32/f64 on any device; rois (R, 5) rows (batch index, x0, y0, x1, y1) in input
// pixels, same dtype (moved to x's device). Returns (R, C, out_h, out_w) on x's device.
Tensor roi_align(const Tensor& x, const Tensor& rois, int64_t out_h, int64_t out_w,
                 double spatial_scale, int64_t sampling_ratio, bool aligned);

// Box2BoxTransform.apply_deltas / torchvision BoxCoder.decode_single in float32: deltas (K, 4)
// (dx, dy, dw, dh), boxes (K, 4) (x0, y0, x1, y1) -> (K, 4) on the CPU.
inline const double kBoxClamp = std::log(1000.0 / 16.0);
Tensor decode_boxes(const Tensor& deltas, const Tensor& boxes, std::array<double, 4> weights,
                    double clamp = kBoxClamp);

// Boxes.clip / clip_boxes_to_image on one (x0, y0, x1, y1): x to [0, w], y to [0, h].
inline void clip_box(float* b, int64_t h, int64_t w) {
  b[0] = std::min(std::max(b[0], 0.0f), float(w));
  b[2] = std::min(std::max(b[2], 0.0f), float(w));
  b[1] = std::min(std::max(b[1], 0.0f), float(h));
  b[3] = std::min(std::max(b[3], 0.0f), float(h));
}

// torchvision.ops.nms: indices kept, by decreasing score (ties: lower index first); a box is
// suppressed by a kept one when IoU > iou_threshold (strict). boxes (K, 4), scores (K). The
// overlap mask is computed on the boxes' device, the greedy sweep on the host.
std::vector<int64_t> nms(const Tensor& boxes, const Tensor& scores, double iou_threshold);
// NMS independently within each group (groups[k] for box k), results merged by decreasing
// score (ties: lower index first) — batched_nms without the coordinate-offset trick. However
// many groups: one upload, one nms_mask launch, one read-back on the boxes' device.
std::vector<int64_t> batched_nms(const Tensor& boxes, const Tensor& scores,
                                 const std::vector<int64_t>& groups, double iou_threshold);
// The same on host data (boxes K*4 floats x0, y0, x1, y1; scores K), the overlap mask computed
// on `device`: for callers that already hold their candidates on the host (proposal selection,
// box inference) but whose model runs on a GPU.
std::vector<int64_t> batched_nms(const std::vector<float>& boxes, const std::vector<float>& scores,
                                 const std::vector<int64_t>& groups, double iou_threshold,
                                 Device device);
// Indices of the k largest values of a 1-D tensor, in decreasing order (ties: lower index
// first); k is clipped to the size.
std::vector<int64_t> topk(const Tensor& scores, int64_t k);

}  // namespace st::teacher
