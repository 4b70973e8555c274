// The teacher's backbone (MASKRCNN.md §3): ResNet-50 with FrozenBN folded into the convolutions
// at load time, and the FPN with P6. Detectron2 weight names; `stride_in_1x1` selects
// Detectron2's MSRA blocks (stride on the first 1x1 conv) or torchvision's (on the 3x3).
#pragma once
#include <array>
#include <optional>
#include <vector>

#include "tensor/backend.h"
#include "tensor/safetensors.h"

namespace st::teacher {

struct BackboneOptions {
  bool stride_in_1x1 = true;  // Detectron2; torchvision: false
  double bn_eps = 1e-5;       // FrozenBN epsilon used when folding (torchvision COCO weights: 0)
};

class Backbone {
 public:
  // Reads backbone.bottom_up.* and backbone.fpn_* from `w`, checking every name and shape (the
  // error names the first missing or misshapen tensor); FrozenBN statistics missing from the file
  // default to mean 0, var 1 (Detectron2's rule). Weights stay on the CPU until to().
  Backbone(const safetensors::File& w, BackboneOptions o = {});
  void to(Device d);

  struct Output {
    std::array<Tensor, 4> c;  // C2..C5 (strides 4..32)
    std::array<Tensor, 5> p;  // P2..P6 (strides 4..64), 256 channels
  };
  // x: (N, 3, H, W) normalised input, H and W multiples of 32.
  Output forward(const Tensor& x) const;
  // Names of every tensor the backbone reads (for "extra tensor" checks by the full model).
  const std::vector<std::string>& names() const { return names_; }

 private:
  struct Conv {
    Tensor w, b;
    Conv2dParams p;
  };
  struct Block {
    Conv c1, c2, c3;
    std::optional<Conv> shortcut;
  };
  Conv load_conv_bn(const safetensors::File& f, const std::string& name, const Shape& shape,
                    int64_t stride, int64_t pad);
  Conv load_conv_bias(const safetensors::File& f, const std::string& name, const Shape& shape,
                      int64_t pad);
  static Tensor run(const Conv& c, const Tensor& x);

  BackboneOptions opt_;
  Conv stem_;
  std::vector<std::vector<Block>> stages_;  // res2..res5
  std::array<Conv, 4> lateral_, output_;
  std::vector<std::string> names_;
};

}  // namespace st::teacher
