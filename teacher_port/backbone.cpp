#include "teacher_port/backbone.h"

#include <cmath>

#include "tensor/autograd.h"
#include "tensor/ops.h"

namespace st::teacher {

namespace {
const Tensor& need(const safetensors::File& f, const std::string& name, const Shape& shape) {
  ST_CHECK(f.contains(name), "teacher weights: missing tensor '", name, "' (expected shape ", shape,
           ")");
  const Tensor& t = f.get(name);
  ST_CHECK(t.shape() == shape, "teacher weights: tensor '", name, "' has shape ", t.shape(),
           ", expected ", shape);
  ST_CHECK(is_floating(t.dtype()), "teacher weights: tensor '", name, "' has dtype ", t.dtype());
  return t;
}
}  // namespace

// conv (no bias) + FrozenBN folded: w' = w * s, b' = beta - mean * s, s = gamma / sqrt(var + eps).
Backbone::Conv Backbone::load_conv_bn(const safetensors::File& f, const std::string& name,
                                      const Shape& shape, int64_t stride, int64_t pad) {
  const int64_t K = shape[0];
  auto w = need(f, name + ".weight", shape).to_vector<double>();
  names_.push_back(name + ".weight");
  std::vector<double> stats[4];
  const char* field[4] = {"weight", "bias", "running_mean", "running_var"};
  const double dflt[4] = {1.0, 0.0, 0.0, 1.0};
  for (int i = 0; i < 4; ++i) {
    const std::string n = name + ".norm." + field[i];
    if (i < 2 || f.contains(n)) {
      stats[i] = need(f, n, {K}).to_vector<double>();
      names_.push_back(n);
    } else {
      stats[i].assign(size_t(K), dflt[i]);
    }
  }
  const int64_t per = int64_t(w.size()) / K;
  std::vector<float> wf(w.size()), bf(static_cast<size_t>(K));
  for (int64_t k = 0; k < K; ++k) {
    const double s = stats[0][size_t(k)] / std::sqrt(stats[3][size_t(k)] + opt_.bn_eps);
    ST_CHECK(std::isfinite(s), "teacher weights: '", name, ".norm' gives a non-finite scale at channel ", k);
    for (int64_t i = 0; i < per; ++i) wf[size_t(k * per + i)] = float(w[size_t(k * per + i)] * s);
    bf[size_t(k)] = float(stats[1][size_t(k)] - stats[2][size_t(k)] * s);
  }
  Conv c;
  c.w = Tensor::from_vector(wf, shape);
  c.b = Tensor::from_vector(bf, {K});
  c.p = Conv2dParams{stride, stride, pad, pad, 1};
  return c;
}

Backbone::Conv Backbone::load_conv_bias(const safetensors::File& f, const std::string& name,
                                        const Shape& shape, int64_t pad) {
  Conv c;
  c.w = need(f, name + ".weight", shape).to(DType::F32).contiguous();
  c.b = need(f, name + ".bias", {shape[0]}).to(DType::F32).contiguous();
  names_.push_back(name + ".weight");
  names_.push_back(name + ".bias");
  c.p = Conv2dParams{1, 1, pad, pad, 1};
  return c;
}

Backbone::Backbone(const safetensors::File& f, BackboneOptions o) : opt_(o) {
  const std::string bu = "backbone.bottom_up.";
  stem_ = load_conv_bn(f, bu + "stem.conv1", {64, 3, 7, 7}, 2, 3);
  const int64_t blocks[4] = {3, 4, 6, 3}, width[4] = {64, 128, 256, 512};
  int64_t in = 64;
  for (int s = 0; s < 4; ++s) {
    std::vector<Block> stage;
    const int64_t mid = width[s], out = 4 * width[s];
    for (int64_t i = 0; i < blocks[s]; ++i) {
      const int64_t stride = (i == 0 && s > 0) ? 2 : 1;
      const std::string p = bu + "res" + std::to_string(s + 2) + "." + std::to_string(i) + ".";
      Block b;
      const int64_t s1 = opt_.stride_in_1x1 ? stride : 1, s3 = opt_.stride_in_1x1 ? 1 : stride;
      b.c1 = load_conv_bn(f, p + "conv1", {mid, in, 1, 1}, s1, 0);
      b.c2 = load_conv_bn(f, p + "conv2", {mid, mid, 3, 3}, s3, 1);
      b.c3 = load_conv_bn(f, p + "conv3", {out, mid, 1, 1}, 1, 0);
      if (i == 0) b.shortcut = load_conv_bn(f, p + "shortcut", {out, in, 1, 1}, stride, 0);
      stage.push_back(std::move(b));
      in = out;
    }
    stages_.push_back(std::move(stage));
  }
  const int64_t cin[4] = {256, 512, 1024, 2048};
  for (int l = 0; l < 4; ++l) {
    lateral_[size_t(l)] = load_conv_bias(f, "backbone.fpn_lateral" + std::to_string(l + 2),
                                         {256, cin[l], 1, 1}, 0);
    output_[size_t(l)] = load_conv_bias(f, "backbone.fpn_output" + std::to_string(l + 2),
                                        {256, 256, 3, 3}, 1);
  }
}

void Backbone::to(Device d) {
  auto mv = [&](Conv& c) {
    c.w = c.w.to(d);
    c.b = c.b.to(d);
  };
  mv(stem_);
  for (auto& st : stages_)
    for (auto& b : st) {
      mv(b.c1), mv(b.c2), mv(b.c3);
      if (b.shortcut) mv(*b.shortcut);
    }
  for (auto& c : lateral_) mv(c);
  for (auto& c : output_) mv(c);
}

Tensor Backbone::run(const Conv& c, const Tensor& x) { return conv2d(x, c.w, c.b, c.p); }

Backbone::Output Backbone::forward(const Tensor& x) const {
  ST_CHECK(x.dim() == 4 && x.size(1) == 3, "teacher backbone: input must be (N, 3, H, W), got ",
           x.shape());
  ST_CHECK(x.size(2) % 32 == 0 && x.size(3) % 32 == 0 && x.size(2) > 0 && x.size(3) > 0,
           "teacher backbone: input size ", x.size(2), "x", x.size(3),
           " must be a positive multiple of 32 (pad it)");
  NoGradGuard ng;
  Output out;
  Tensor h = max_pool2d(relu(run(stem_, x)), Pool2dParams{3, 3, 2, 2, 1, 1});
  for (size_t s = 0; s < stages_.size(); ++s) {
    for (const Block& b : stages_[s]) {
      Tensor y = run(b.c3, relu(run(b.c2, relu(run(b.c1, h)))));
      h = relu(add(y, b.shortcut ? run(*b.shortcut, h) : h));
    }
    out.c[s] = h;
  }
  Tensor prev = run(lateral_[3], out.c[3]);
  out.p[3] = run(output_[3], prev);
  for (int l = 2; l >= 0; --l) {
    const Tensor& c = out.c[size_t(l)];
    prev = add(run(lateral_[size_t(l)], c), resize_nearest(prev, c.size(2), c.size(3)));
    out.p[size_t(l)] = run(output_[size_t(l)], prev);
  }
  out.p[4] = max_pool2d(out.p[3], Pool2dParams{1, 1, 2, 2, 0, 0});
  return out;
}

}  // namespace st::teacher
