#include "teacher_port/glue.h"

#include <algorithm>
#include <cmath>

#include "kernels/common/detect_math.h"
#include "tensor/backend.h"

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
  detect::paste_d2_into(m, M, box.data(), H, W, out, threshold);
}

void paste_mask_torchvision(const float* m, int64_t M, const std::array<float, 4>& box, int64_t H,
                            int64_t W, uint8_t* out, float threshold) {
  detect::paste_tv_into(m, M, box.data(), H, W, out, threshold);
}

Tensor paste_masks(const Tensor& masks, const Tensor& boxes, int64_t H, int64_t W, Convention c,
                   double threshold) {
  ST_CHECK(masks.dim() == 3 && masks.size(1) == masks.size(2) && masks.size(1) > 0,
           "paste_masks: masks must be (D, M, M), got ", masks.shape());
  ST_CHECK(boxes.dim() == 2 && boxes.size(1) == 4 && boxes.size(0) == masks.size(0),
           "paste_masks: boxes must be (", masks.size(0), ", 4), got ", boxes.shape());
  ST_CHECK(H > 0 && W > 0, "paste_masks: bad image size ", W, "x", H);
  const Device d = masks.device();
  Tensor m = masks.to(DType::F32).contiguous(), b = boxes.to(DType::F32).to(d).contiguous();
  Tensor out = Tensor::empty({masks.size(0), H, W}, DType::U8, d);
  if (out.numel() > 0)
    backend_for(d).paste_masks(m, b, c == Convention::Torchvision, threshold, out);
  return out;
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
