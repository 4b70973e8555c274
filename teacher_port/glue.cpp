#include "teacher_port/glue.h"

#include <algorithm>
#include <cmath>

#include "kernels/cpu/resample.h"

namespace st::teacher {

std::vector<std::array<float, 4>> cell_anchors(double size, const std::vector<double>& ratios,
                                               Convention c) {
  std::vector<std::array<float, 4>> out;
  for (double r : ratios) {
    ST_CHECK(r > 0 && size > 0, "cell_anchors: size and ratios must be positive");
    if (c == Convention::Detectron2) {
      const double w = std::sqrt(size * size / r), h = r * w;  // python floats, then float32
      out.push_back({float(-w / 2.0), float(-h / 2.0), float(w / 2.0), float(h / 2.0)});
    } else {
      const float hr = std::sqrt(float(r)), wr = 1.0f / hr, s = float(size);
      const float ws = wr * s, hs = hr * s;
      out.push_back({std::nearbyint(-ws / 2.0f), std::nearbyint(-hs / 2.0f),
                     std::nearbyint(ws / 2.0f), std::nearbyint(hs / 2.0f)});
    }
  }
  return out;
}

Tensor grid_anchors(const std::vector<std::array<float, 4>>& cell, int64_t H, int64_t W,
                    int64_t stride) {
  ST_CHECK(H >= 0 && W >= 0 && stride > 0, "grid_anchors: bad grid ", H, "x", W, " stride ", stride);
  const int64_t A = int64_t(cell.size());
  std::vector<float> v(size_t(H * W * A * 4));
  size_t k = 0;
  for (int64_t y = 0; y < H; ++y)
    for (int64_t x = 0; x < W; ++x)
      for (int64_t a = 0; a < A; ++a) {
        const float sx = float(x * stride), sy = float(y * stride);
        const auto& c = cell[size_t(a)];
        v[k++] = sx + c[0];
        v[k++] = sy + c[1];
        v[k++] = sx + c[2];
        v[k++] = sy + c[3];
      }
  return Tensor::from_vector(v, {H * W * A, 4});
}

std::vector<int64_t> assign_levels(const Tensor& boxes, Convention c, int64_t k_min,
                                   int64_t k_max) {
  ST_CHECK(boxes.dim() == 2 && boxes.size(1) == 4, "assign_levels: boxes must be (K, 4), got ",
           boxes.shape());
  const auto b = boxes.to_vector<float>();
  std::vector<int64_t> out(size_t(boxes.size(0)));
  for (size_t k = 0; k < out.size(); ++k) {
    const float* p = &b[k * 4];
    const float s = std::sqrt((p[2] - p[0]) * (p[3] - p[1]));
    const float lvl = c == Convention::Detectron2
                          ? std::floor(4.0f + std::log2(s / 224.0f + 1e-8f))
                          : std::floor(4.0f + std::log2(s / 224.0f) + 1e-6f);
    const float cl = std::fmin(std::fmax(lvl, float(k_min)), float(k_max));
    out[k] = std::isnan(lvl) ? k_min : int64_t(cl);
  }
  return out;
}

void paste_mask(const float* m, int64_t M, const std::array<float, 4>& box, int64_t H, int64_t W,
                uint8_t* out, float threshold) {
  const float x0 = box[0], y0 = box[1], x1 = box[2], y1 = box[3];
  if (!(x1 > x0) || !(y1 > y0)) return;  // empty boxes paste nothing
  // Only pixels near the box can reach the threshold (MASKRCNN.md §5.5).
  const int64_t ylo = std::max<int64_t>(0, int64_t(std::floor(y0)) - 1);
  const int64_t yhi = std::min<int64_t>(H, int64_t(std::ceil(y1)) + 1);
  const int64_t xlo = std::max<int64_t>(0, int64_t(std::floor(x0)) - 1);
  const int64_t xhi = std::min<int64_t>(W, int64_t(std::ceil(x1)) + 1);
  const float fm = float(M);
  auto at = [&](int64_t v, int64_t u) -> float {
    return (v >= 0 && v < M && u >= 0 && u < M) ? m[v * M + u] : 0.0f;
  };
  for (int64_t py = ylo; py < yhi; ++py) {
    const float gy = ((float(py) + 0.5f) - y0) / (y1 - y0) * 2.0f - 1.0f;
    const float iy = ((gy + 1.0f) * fm - 1.0f) / 2.0f;
    const float iy_nw = std::floor(iy), iy_se = iy_nw + 1.0f;
    for (int64_t px = xlo; px < xhi; ++px) {
      const float gx = ((float(px) + 0.5f) - x0) / (x1 - x0) * 2.0f - 1.0f;
      const float ix = ((gx + 1.0f) * fm - 1.0f) / 2.0f;
      const float ix_nw = std::floor(ix), ix_se = ix_nw + 1.0f;
      // grid_sample's bilinear weights and tap order
      const float nw = (ix_se - ix) * (iy_se - iy), ne = (ix - ix_nw) * (iy_se - iy);
      const float sw = (ix_se - ix) * (iy - iy_nw), se = (ix - ix_nw) * (iy - iy_nw);
      const int64_t u = int64_t(ix_nw), v = int64_t(iy_nw);
      const float val = at(v, u) * nw + at(v, u + 1) * ne + at(v + 1, u) * sw + at(v + 1, u + 1) * se;
      if (val >= threshold) out[py * W + px] = 1;
    }
  }
}

void paste_mask_torchvision(const float* m, int64_t M, const std::array<float, 4>& box, int64_t H,
                            int64_t W, uint8_t* out, float threshold) {
  const int64_t P = M + 2;  // expand_masks(padding=1)
  const float scale = float(double(P) / double(M));
  // expand_boxes in float32, then .to(int64) (truncation toward zero)
  float w_half = (box[2] - box[0]) * 0.5f, h_half = (box[3] - box[1]) * 0.5f;
  const float x_c = (box[2] + box[0]) * 0.5f, y_c = (box[3] + box[1]) * 0.5f;
  w_half *= scale;
  h_half *= scale;
  const int64_t bx0 = int64_t(x_c - w_half), bx1 = int64_t(x_c + w_half);
  const int64_t by0 = int64_t(y_c - h_half), by1 = int64_t(y_c + h_half);
  const int64_t bw = std::max<int64_t>(bx1 - bx0 + 1, 1), bh = std::max<int64_t>(by1 - by0 + 1, 1);
  const int64_t x_0 = std::max<int64_t>(bx0, 0), x_1 = std::min<int64_t>({bx1 + 1, W, bx0 + bw});
  const int64_t y_0 = std::max<int64_t>(by0, 0), y_1 = std::min<int64_t>({by1 + 1, H, by0 + bh});
  auto at = [&](int64_t v, int64_t u) -> float {  // the zero-padded mask
    return (v >= 1 && v <= M && u >= 1 && u <= M) ? m[(v - 1) * M + (u - 1)] : 0.0f;
  };
  for (int64_t y = y_0; y < y_1; ++y) {
    const BilinearTap ty = bilinear_tap(y - by0, P, bh, true);
    for (int64_t x = x_0; x < x_1; ++x) {
      const BilinearTap tx = bilinear_tap(x - bx0, P, bw, true);
      const float val = float(ty.l0) * (float(tx.l0) * at(ty.i0, tx.i0) + float(tx.l1) * at(ty.i0, tx.i1)) +
                        float(ty.l1) * (float(tx.l0) * at(ty.i1, tx.i0) + float(tx.l1) * at(ty.i1, tx.i1));
      if (val > threshold) out[y * W + x] = 1;
    }
  }
}

int shadowtutor_label(int64_t c) {
  switch (c) {
    case 0: return 0;                      // person
    case 1: return 1;                      // bicycle
    case 2: case 5: case 7: return 2;      // auto: car, bus, truck
    case 14: return 3;                     // bird
    case 16: return 4;                     // dog
    case 17: return 5;                     // horse
    case 20: return 6;                     // elephant
    case 23: return 7;                     // giraffe
    default: return 8;                     // background / not tracked
  }
}

std::vector<uint8_t> label_map(const std::vector<int64_t>& classes,
                               const std::vector<std::vector<uint8_t>>& masks, int64_t H,
                               int64_t W) {
  ST_CHECK(classes.size() == masks.size(), "label_map: ", classes.size(), " classes for ",
           masks.size(), " masks");
  std::vector<uint8_t> label(size_t(H * W), 8);
  for (int target = 0; target < 8; ++target)  // class order: a later class overwrites
    for (size_t i = 0; i < classes.size(); ++i) {
      if (shadowtutor_label(classes[i]) != target) continue;
      ST_CHECK(int64_t(masks[i].size()) == H * W, "label_map: mask ", i, " has ", masks[i].size(),
               " pixels, expected ", H * W);
      for (size_t p = 0; p < label.size(); ++p)
        if (masks[i][p]) label[p] = uint8_t(target);
    }
  return label;
}

}  // namespace st::teacher
