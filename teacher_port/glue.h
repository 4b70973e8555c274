// The Mask R-CNN glue between the network stages (MASKRCNN.md §4.2, §5.1, §5.5, §6), in both
// conventions where they differ (§7): anchors, FPN level assignment, mask paste, and the
// 9-class ShadowTutor label map. CPU, float32, in the reference implementations' operation
// order (tests/test_teacher_ops.cpp compares with torchvision and with Detectron2's formulas).
#pragma once
#include <array>
#include <cstdint>
#include <vector>

#include "tensor/tensor.h"

namespace st::teacher {

enum class Convention { Detectron2, Torchvision };

// Cell anchors of one size for the aspect ratios (h/w), in ratio order: Detectron2 keeps
// w = sqrt(size^2 / ratio), h = ratio * w unrounded; torchvision rounds (half to even).
std::vector<std::array<float, 4>> cell_anchors(double size, const std::vector<double>& ratios,
                                               Convention c);
// All anchors of an H x W feature map with this stride, in (y, x, a) order: (H*W*A, 4) f32.
Tensor grid_anchors(const std::vector<std::array<float, 4>>& cell, int64_t H, int64_t W,
                    int64_t stride);

// FPN level (2..5) of each box (K, 4): floor(4 + log2(sqrt(area)/224 + 1e-8)) for Detectron2,
// floor(4 + log2(sqrt(area)/224) + 1e-6) for torchvision, clamped to [k_min, k_max].
std::vector<int64_t> assign_levels(const Tensor& boxes, Convention c, int64_t k_min = 2,
                                   int64_t k_max = 5);

// Detectron2's paste (grid_sample, align_corners=False, zero padding) of an M x M probability
// mask into an H x W image for a box (x0, y0, x1, y1) in image pixels; out[y*W + x] = 1 where
// the sampled value is >= threshold, else out is left as it was (callers start from zeros).
void paste_mask(const float* mask, int64_t M, const std::array<float, 4>& box, int64_t H,
                int64_t W, uint8_t* out, float threshold = 0.5f);

// torchvision's paste (paste_masks_in_image): the mask is zero-padded to (M+2) x (M+2), the box
// scaled about its centre by (M+2)/M and truncated to integers, the padded mask resized to the
// box's integer size (bilinear, align_corners=False) and copied into the image where the box
// overlaps it; out[y*W + x] = 1 where the value is > threshold, else out is left as it was.
void paste_mask_torchvision(const float* mask, int64_t M, const std::array<float, 4>& box,
                            int64_t H, int64_t W, uint8_t* out, float threshold = 0.5f);

// Both pastes as an op on the masks' device (CPU or CUDA, same bits): masks (D, M, M)
// probabilities, boxes (D, 4) image pixels -> (D, H, W) u8, 1 where the value passes the
// threshold (Detectron2: >=, torchvision: >), else 0.
Tensor paste_masks(const Tensor& masks, const Tensor& boxes, int64_t H, int64_t W, Convention c,
                   double threshold = 0.5);

// ShadowTutor's 9-class map (SPEC §3, MASKRCNN.md §6): per class the union of its instances'
// masks (auto = car, bus, truck), painted in class order (later wins), background 8; classes
// are Detectron2 contiguous ids (0..79), masks H*W bytes (non-zero = on).
std::vector<uint8_t> label_map(const std::vector<int64_t>& classes,
                               const std::vector<std::vector<uint8_t>>& masks, int64_t H,
                               int64_t W);
// The ShadowTutor label of a Detectron2 contiguous class id (8 = background / not tracked).
int shadowtutor_label(int64_t d2_class);

}  // namespace st::teacher
