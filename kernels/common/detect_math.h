// Per-element math of the detection kernels, shared by the CPU and CUDA backends (host and
// device) so both give the same bits: the IoU test and the grouped overlap mask of NMS, and the
// two mask pastes. float32 in the reference implementations' operation order; on the device
// every product and sum is rounded on its own (no fused multiply-add), as on the host.
#pragma once
#include <cmath>
#include <cstdint>

#include "kernels/common/resample.h"
#include "tensor/half.h"  // ST_HD

namespace st::detect {

#ifdef __CUDA_ARCH__
ST_HD inline float mul(float a, float b) { return __fmul_rn(a, b); }
ST_HD inline float add(float a, float b) { return __fadd_rn(a, b); }
ST_HD inline float sub(float a, float b) { return __fsub_rn(a, b); }
ST_HD inline float div(float a, float b) { return __fdiv_rn(a, b); }
#else
ST_HD inline float mul(float a, float b) { return a * b; }
ST_HD inline float add(float a, float b) { return a + b; }
ST_HD inline float sub(float a, float b) { return a - b; }
ST_HD inline float div(float a, float b) { return a / b; }
#endif

// torchvision's NMS test: IoU(a, b) > threshold (boxes x0, y0, x1, y1).
ST_HD inline bool iou_above(const float* a, const float* b, float threshold) {
  const float area_a = mul(sub(a[2], a[0]), sub(a[3], a[1]));
  const float area_b = mul(sub(b[2], b[0]), sub(b[3], b[1]));
  const float xx1 = a[0] > b[0] ? a[0] : b[0], yy1 = a[1] > b[1] ? a[1] : b[1];
  const float xx2 = a[2] < b[2] ? a[2] : b[2], yy2 = a[3] < b[3] ? a[3] : b[3];
  const float dw = sub(xx2, xx1), dh = sub(yy2, yy1);
  const float inter = mul(dw > 0.0f ? dw : 0.0f, dh > 0.0f ? dh : 0.0f);
  return div(inter, sub(add(area_a, area_b), inter)) > threshold;
}

// Grouped NMS (kernels.def nms_mask): boxes come group-major (`groups` nondecreasing), so box
// i's group is one run [lo, hi) of the processing order, found by two binary searches (log K
// steps for a device thread; the CPU walks rows in order but uses the same function).
struct GroupSpan {
  int64_t lo, hi;
};
ST_HD inline GroupSpan group_span(const int64_t* groups, int64_t K, int64_t i) {
  const int64_t g = groups[i];
  int64_t a = 0, b = i;  // the first index of [0, i] whose group is g
  while (a < b) {
    const int64_t m = a + (b - a) / 2;
    if (groups[m] < g) a = m + 1; else b = m;
  }
  int64_t c = i + 1, d = K;  // the first index after i whose group is past g
  while (c < d) {
    const int64_t m = c + (d - c) / 2;
    if (groups[m] > g) d = m; else c = m + 1;
  }
  return {a, c};
}
// Word w of row i of the grouped mask: bit b for the box j = span.lo + 64 w + b, set when j is
// a later box of i's group (i < j < span.hi) whose IoU with i is above the threshold. Bits are
// counted from the group's first box, not from 0, so a row needs only ceil(group size / 64)
// words and the per-group mask of the previous one-launch-per-group design is its exact copy.
ST_HD inline uint64_t nms_mask_word(const float* boxes, GroupSpan s, int64_t i, int64_t w,
                                    float threshold) {
  const int64_t first = s.lo + w * 64;
  const int64_t lo = first > i + 1 ? first : i + 1;
  const int64_t hi = first + 64 < s.hi ? first + 64 : s.hi;
  uint64_t bits = 0;
  for (int64_t j = lo; j < hi; ++j)
    if (iou_above(boxes + i * 4, boxes + j * 4, threshold)) bits |= uint64_t(1) << (j - first);
  return bits;
}

// Detectron2's paste (grid_sample, align_corners=False, zero padding) of an M x M mask at image
// pixel (px, py) for the box (x0, y0, x1, y1): the sampled value.
ST_HD inline float paste_d2_value(const float* m, int64_t M, const float* box, int64_t px,
                                  int64_t py) {
  const float x0 = box[0], y0 = box[1], x1 = box[2], y1 = box[3], fm = float(M);
  const float gy = sub(mul(div(sub(add(float(py), 0.5f), y0), sub(y1, y0)), 2.0f), 1.0f);
  const float iy = div(sub(mul(add(gy, 1.0f), fm), 1.0f), 2.0f);
  const float gx = sub(mul(div(sub(add(float(px), 0.5f), x0), sub(x1, x0)), 2.0f), 1.0f);
  const float ix = div(sub(mul(add(gx, 1.0f), fm), 1.0f), 2.0f);
  const float iy_nw = floorf(iy), iy_se = add(iy_nw, 1.0f);
  const float ix_nw = floorf(ix), ix_se = add(ix_nw, 1.0f);
  const float nw = mul(sub(ix_se, ix), sub(iy_se, iy)), ne = mul(sub(ix, ix_nw), sub(iy_se, iy));
  const float sw = mul(sub(ix_se, ix), sub(iy, iy_nw)), se = mul(sub(ix, ix_nw), sub(iy, iy_nw));
  const int64_t u = int64_t(ix_nw), v = int64_t(iy_nw);
  auto at = [&](int64_t vv, int64_t uu) -> float {
    return (vv >= 0 && vv < M && uu >= 0 && uu < M) ? m[vv * M + uu] : 0.0f;
  };
  return add(add(add(mul(at(v, u), nw), mul(at(v, u + 1), ne)), mul(at(v + 1, u), sw)),
             mul(at(v + 1, u + 1), se));
}
// The pixels Detectron2's paste can reach for a box, clipped to the image: [x_lo, x_hi) x
// [y_lo, y_hi); empty (lo >= hi) for an empty box.
struct PasteWindow {
  int64_t x_lo, x_hi, y_lo, y_hi;
};
ST_HD inline PasteWindow paste_d2_window(const float* box, int64_t H, int64_t W) {
  if (!(box[2] > box[0]) || !(box[3] > box[1])) return {0, 0, 0, 0};
  auto clampi = [](int64_t v, int64_t lo, int64_t hi) { return v < lo ? lo : (v > hi ? hi : v); };
  return {clampi(int64_t(floorf(box[0])) - 1, 0, W), clampi(int64_t(ceilf(box[2])) + 1, 0, W),
          clampi(int64_t(floorf(box[1])) - 1, 0, H), clampi(int64_t(ceilf(box[3])) + 1, 0, H)};
}

// torchvision's paste (paste_masks_in_image, padding 1): the expanded integer box and the pasted
// window in the image.
struct PasteTv {
  int64_t bx0, by0, bw, bh;        // the integer box and its (clamped >= 1) size
  int64_t x_0, x_1, y_0, y_1;      // the window of the image it writes
};
ST_HD inline PasteTv paste_tv_geometry(const float* box, int64_t M, int64_t H, int64_t W) {
  const float scale = float(double(M + 2) / double(M));
  const float w_half = mul(mul(sub(box[2], box[0]), 0.5f), scale);
  const float h_half = mul(mul(sub(box[3], box[1]), 0.5f), scale);
  const float x_c = mul(add(box[2], box[0]), 0.5f), y_c = mul(add(box[3], box[1]), 0.5f);
  PasteTv g;
  g.bx0 = int64_t(sub(x_c, w_half));
  const int64_t bx1 = int64_t(add(x_c, w_half));
  g.by0 = int64_t(sub(y_c, h_half));
  const int64_t by1 = int64_t(add(y_c, h_half));
  g.bw = bx1 - g.bx0 + 1 > 1 ? bx1 - g.bx0 + 1 : 1;
  g.bh = by1 - g.by0 + 1 > 1 ? by1 - g.by0 + 1 : 1;
  auto mn = [](int64_t a, int64_t b) { return a < b ? a : b; };
  g.x_0 = g.bx0 > 0 ? g.bx0 : 0;
  g.x_1 = mn(mn(bx1 + 1, W), g.bx0 + g.bw);
  g.y_0 = g.by0 > 0 ? g.by0 : 0;
  g.y_1 = mn(mn(by1 + 1, H), g.by0 + g.bh);
  return g;
}
// The value torchvision's paste writes at image pixel (x, y) inside the window: the zero-padded
// mask resized (bilinear, align_corners=False, torch's float rounding) to the box's size.
ST_HD inline float paste_tv_value(const float* m, int64_t M, const PasteTv& g, int64_t x, int64_t y) {
  const BilinearTap ty = bilinear_tap(y - g.by0, M + 2, g.bh, true);
  const BilinearTap tx = bilinear_tap(x - g.bx0, M + 2, g.bw, true);
  auto at = [&](int64_t v, int64_t u) -> float {  // the zero-padded mask
    return (v >= 1 && v <= M && u >= 1 && u <= M) ? m[(v - 1) * M + (u - 1)] : 0.0f;
  };
  const float hy0 = float(ty.l0), hy1 = float(ty.l1), wx0 = float(tx.l0), wx1 = float(tx.l1);
  return add(mul(hy0, add(mul(wx0, at(ty.i0, tx.i0)), mul(wx1, at(ty.i0, tx.i1)))),
             mul(hy1, add(mul(wx0, at(ty.i1, tx.i0)), mul(wx1, at(ty.i1, tx.i1)))));
}

// One mask pasted on the host into an H x W image (out[y*W + x] = 1 where the value passes the
// threshold; other pixels are left as they are): the CPU backend's paste and teacher_port's
// per-mask functions.
inline void paste_d2_into(const float* m, int64_t M, const float* box, int64_t H, int64_t W,
                          uint8_t* out, float threshold) {
  const PasteWindow w = paste_d2_window(box, H, W);
  for (int64_t y = w.y_lo; y < w.y_hi; ++y)
    for (int64_t x = w.x_lo; x < w.x_hi; ++x)
      if (paste_d2_value(m, M, box, x, y) >= threshold) out[y * W + x] = 1;
}
inline void paste_tv_into(const float* m, int64_t M, const float* box, int64_t H, int64_t W,
                          uint8_t* out, float threshold) {
  const PasteTv g = paste_tv_geometry(box, M, H, W);
  for (int64_t y = g.y_0; y < g.y_1; ++y)
    for (int64_t x = g.x_0; x < g.x_1; ++x)
      if (paste_tv_value(m, M, g, x, y) > threshold) out[y * W + x] = 1;
}

}  // namespace st::detect
