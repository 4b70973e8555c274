#include "teacher_port/random_weights.h"

#include <cmath>
#include <random>
#include <string>
#include <vector>

namespace st::teacher {

namespace {
struct Builder {
  safetensors::File f;
  std::mt19937_64 rng;
  explicit Builder(uint64_t seed) : rng(seed) { f.source = "random Mask R-CNN (seed " + std::to_string(seed) + ")"; }

  void put(const std::string& name, std::vector<float> v, const Shape& shape) {
    f.tensors.emplace_back(name, Tensor::from_vector(v, shape));
  }
  std::vector<float> normal(int64_t n, double stddev) {
    std::normal_distribution<double> d(0.0, stddev);
    std::vector<float> v(static_cast<size_t>(n));
    for (float& x : v) x = float(d(rng));
    return v;
  }
  static int64_t numel(const Shape& s) {
    int64_t n = 1;
    for (int64_t d : s) n *= d;
    return n;
  }
  // He-normal weight (fan_in = in * kh * kw, or in for a linear) times `gain`.
  void weight(const std::string& name, const Shape& shape, int64_t fan_in, double gain = 1.0) {
    put(name, normal(numel(shape), gain * std::sqrt(2.0 / double(fan_in))), shape);
  }
  void constant(const std::string& name, int64_t n, float value) {
    put(name, std::vector<float>(static_cast<size_t>(n), value), {n});
  }
  void conv_bn(const std::string& name, const Shape& shape, double gain = 1.0) {
    weight(name + ".weight", shape, shape[1] * shape[2] * shape[3], gain);
    constant(name + ".norm.weight", shape[0], 1.0f);
    constant(name + ".norm.bias", shape[0], 0.0f);
    constant(name + ".norm.running_mean", shape[0], 0.0f);
    constant(name + ".norm.running_var", shape[0], 1.0f);
  }
  void conv_bias(const std::string& name, const Shape& shape, double gain = 1.0) {
    weight(name + ".weight", shape, shape[1] * shape[2] * shape[3], gain);
    constant(name + ".bias", shape[0], 0.0f);
  }
};
}  // namespace

safetensors::File random_maskrcnn_weights(uint64_t seed, int64_t classes) {
  ST_CHECK(classes >= 2, "random_maskrcnn_weights: need at least 2 classes, got ", classes);
  Builder b(seed);
  const std::string bu = "backbone.bottom_up.";
  b.conv_bn(bu + "stem.conv1", {64, 3, 7, 7});
  const int64_t blocks[4] = {3, 4, 6, 3}, width[4] = {64, 128, 256, 512};
  int64_t in = 64;
  for (int s = 0; s < 4; ++s) {
    const int64_t mid = width[s], out = 4 * width[s];
    for (int64_t i = 0; i < blocks[s]; ++i) {
      const std::string p = bu + "res" + std::to_string(s + 2) + "." + std::to_string(i) + ".";
      b.conv_bn(p + "conv1", {mid, in, 1, 1});
      b.conv_bn(p + "conv2", {mid, mid, 3, 3});
      b.conv_bn(p + "conv3", {out, mid, 1, 1}, 0.3);  // residual branch kept small
      if (i == 0) b.conv_bn(p + "shortcut", {out, in, 1, 1}, 0.7);
      in = out;
    }
  }
  const int64_t cin[4] = {256, 512, 1024, 2048};
  for (int l = 0; l < 4; ++l) {
    b.conv_bias("backbone.fpn_lateral" + std::to_string(l + 2), {256, cin[l], 1, 1}, 0.7);
    b.conv_bias("backbone.fpn_output" + std::to_string(l + 2), {256, 256, 3, 3}, 0.7);
  }
  const std::string rpn = "proposal_generator.rpn_head.";
  b.conv_bias(rpn + "conv", {256, 256, 3, 3});
  b.conv_bias(rpn + "objectness_logits", {3, 256, 1, 1}, 0.1);
  b.conv_bias(rpn + "anchor_deltas", {12, 256, 1, 1}, 0.02);
  const std::string rh = "roi_heads.";
  b.weight(rh + "box_head.fc1.weight", {1024, 256 * 7 * 7}, 256 * 7 * 7);
  b.constant(rh + "box_head.fc1.bias", 1024, 0.0f);
  b.weight(rh + "box_head.fc2.weight", {1024, 1024}, 1024);
  b.constant(rh + "box_head.fc2.bias", 1024, 0.0f);
  b.weight(rh + "box_predictor.cls_score.weight", {classes + 1, 1024}, 1024, 0.05);
  std::vector<float> cls_bias(static_cast<size_t>(classes + 1), 0.0f);
  cls_bias[0] = 6.0f;  // person
  if (classes > 2) cls_bias[2] = 5.0f;  // car (Detectron2 contiguous id 2)
  b.put(rh + "box_predictor.cls_score.bias", cls_bias, {classes + 1});
  b.weight(rh + "box_predictor.bbox_pred.weight", {4 * classes, 1024}, 1024, 0.02);
  b.constant(rh + "box_predictor.bbox_pred.bias", 4 * classes, 0.0f);
  for (int k = 1; k <= 4; ++k)
    b.conv_bias(rh + "mask_head.mask_fcn" + std::to_string(k), {256, 256, 3, 3});
  // ConvTranspose2d weight layout: (in, out, kh, kw); fan_in as PyTorch computes it (out*kh*kw).
  b.weight(rh + "mask_head.deconv.weight", {256, 256, 2, 2}, 256 * 4);
  b.constant(rh + "mask_head.deconv.bias", 256, 0.0f);
  b.conv_bias(rh + "mask_head.predictor", {classes, 256, 1, 1}, 0.5);
  return std::move(b.f);
}

}  // namespace st::teacher
