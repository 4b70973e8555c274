// The student network of SPEC §2.
#include "nn/student.h"

#include <algorithm>
#include <cstring>

#include "tensor/autograd.h"

namespace st::nn {

StudentBlock::StudentBlock(int64_t in, int64_t out, int64_t stride, bool same)
    : same_(same), stride_(stride) {
  // Registration order defines parameter order: preact_path.0, short_path, long_path.{0,2,3}
  // (the order of the published checkpoint).
  bn_ = &register_module("preact_path.0", std::make_unique<BatchNorm2d>(in));
  if (!same) short_ = &register_module("short_path", std::make_unique<Conv2d>(in, out, 1, 1, stride));
  long0_ = &register_module("long_path.0", std::make_unique<Conv2d>(in, out, 3, 3, stride));
  long2_ = &register_module("long_path.2", std::make_unique<Conv2d>(out, out, 1, 3));
  long3_ = &register_module("long_path.3", std::make_unique<Conv2d>(out, out, 3, 1));
}

Tensor StudentBlock::forward(const Tensor& x) const {
  profile::Scope in(scope());
  Tensor p = relu(bn_->forward(x));
  Tensor s = same_ ? subsample(x, stride_) : short_->forward(p);
  Tensor l = long3_->forward(long2_->forward(relu(long0_->forward(p))));
  return add(s, l);
}

const char* distillation_name(Distillation d) {
  switch (d) {
    case Distillation::None: return "none";
    case Distillation::Partial: return "partial";
    case Distillation::Full: return "full";
  }
  return "?";
}

Distillation distillation_of(Mode mode) {
  switch (mode) {
    case Mode::Partial: return Distillation::Partial;
    case Mode::Full: return Distillation::Full;
    case Mode::Naive:
    case Mode::Wild: return Distillation::None;
  }
  throw Error("distillation_of: unknown mode " + std::to_string(int(mode)));
}

Student::Student(uint64_t seed) {
  in_conv1_ = &register_module("in_conv1", std::make_unique<Conv2d>(3, 8, 3, 3, 2));
  in_conv2_ = &register_module("in_conv2", std::make_unique<Conv2d>(8, 8, 3, 3, 2));
  enc1_ = &register_module("enc1", std::make_unique<StudentBlock>(8, 64, 2, false));
  enc2_ = &register_module("enc2", std::make_unique<StudentBlock>(64, 64, 2, true));
  enc3_ = &register_module("enc3", std::make_unique<StudentBlock>(64, 128, 2, false));
  dec1_ = &register_module("dec1", std::make_unique<StudentBlock>(128, 64, 1, false));
  dec2_ = &register_module("dec2", std::make_unique<StudentBlock>(128, 32, 1, false));
  dec3_ = &register_module("dec3", std::make_unique<StudentBlock>(96, 32, 1, false));
  out_conv1_ = &register_module("out_conv1", std::make_unique<Conv2d>(32, 32, 3, 3));
  out_conv2_ = &register_module("out_conv2", std::make_unique<Conv2d>(32, 32, 3, 3));
  out_conv3_ = &register_module("out_conv3", std::make_unique<Conv2d>(32, kClasses, 1, 1));
  init_conv_uniform(seed);
  name_scopes("student");
}

StudentFront Student::front(const Tensor& x) const {
  ST_CHECK(x.dim() == 4 && x.size(1) == 3, "student: input must be (N, 3, H, W), got ",
           x.shape());
  profile::Scope in(scope());
  StudentFront f;
  f.h = x.size(2);
  f.w = x.size(3);
  Tensor x1 = in_conv1_->forward(x);
  f.x1_h = x1.size(2);
  f.x1_w = x1.size(3);
  Tensor x2 = in_conv2_->forward(x1);
  f.e1 = enc1_->forward(x2);
  f.e2 = enc2_->forward(f.e1);
  Tensor e3 = enc3_->forward(f.e2);
  f.d1 = resize_bilinear(dec1_->forward(e3), f.e2.size(2), f.e2.size(3));
  return f;
}

Tensor Student::back(const StudentFront& f) const {
  profile::Scope in(scope());
  Tensor d2 = resize_bilinear(dec2_->forward(cat({f.d1, f.e2}, 1)), f.e1.size(2), f.e1.size(3));
  Tensor d3 = resize_bilinear(dec3_->forward(cat({d2, f.e1}, 1)), f.x1_h, f.x1_w);
  Tensor o = out_conv2_->forward(out_conv1_->forward(d3));
  // out_conv3 (1x1) is linear per pixel and bilinear resize is a per-channel linear map whose
  // weights sum to 1, so they commute exactly: apply the 1x1 conv at half resolution on 32
  // channels, then upsample 9 channels (bias passes through since the weights sum to 1).
  return resize_bilinear(out_conv3_->forward(o), f.h, f.w);
}

std::vector<std::string> Student::trained_names(Distillation mode) const {
  std::vector<std::string> out;
  if (mode == Distillation::None) return out;
  static const char* kBack[] = {"dec2.", "dec3.", "out_conv1.", "out_conv2.", "out_conv3."};
  for (auto& [n, t] : named_parameters()) {
    bool in_back = std::any_of(std::begin(kBack), std::end(kBack),
                               [&](const char* p) { return n.rfind(p, 0) == 0; });
    if (mode == Distillation::Full || in_back) out.push_back(n);
  }
  return out;
}

void Student::configure(Distillation mode) {
  set_trainable(false);
  for (auto& n : trained_names(mode)) parameter(n).set_requires_grad(true);
}

std::vector<Tensor> Student::trained_parameters(Distillation mode) const {
  std::vector<Tensor> out;
  for (auto& n : trained_names(mode)) out.push_back(parameter(n));
  return out;
}

bool Student::front_scope(const std::string& scope) {
  for (const char* m : {"in_conv1", "in_conv2", "enc1", "enc2", "enc3", "dec1"}) {
    const size_t n = std::strlen(m);
    if (scope.compare(0, n, m) == 0 && (scope.size() == n || scope[n] == '.')) return true;
  }
  return false;
}

Tensor Student::preprocess_bgr(const uint8_t* bgr, int64_t h, int64_t w) {
  Tensor t = Tensor::empty({1, 3, h, w});
  float* p = t.data<float>();
  const int64_t plane = h * w;
#pragma omp parallel for if (plane > 65536)
  for (int64_t i = 0; i < plane; ++i)
    for (int c = 0; c < 3; ++c) p[c * plane + i] = float(bgr[i * 3 + c]) - kMeanBGR[c];
  return t;
}

}  // namespace st::nn
