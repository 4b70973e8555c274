// Module: parameter registry, state loading with validation, and the basic layers.
#include "nn/module.h"

#include <cmath>
#include <map>

#include "tensor/autograd.h"

namespace st::nn {

Tensor& Module::register_parameter(const std::string& name, Tensor t) {
  t.set_requires_grad(true);
  params_.emplace_back(name, std::move(t));
  return params_.back().second;
}

void Module::collect(const std::string& prefix, NamedTensors& out) const {
  for (auto& [n, t] : params_) out.emplace_back(prefix + n, t);
  for (auto& [n, m] : children_) m->collect(prefix + n + ".", out);
}

NamedTensors Module::named_parameters() const {
  NamedTensors out;
  collect("", out);
  return out;
}

std::vector<Tensor> Module::parameters() const {
  std::vector<Tensor> out;
  for (auto& [n, t] : named_parameters()) out.push_back(t);
  return out;
}

int64_t Module::parameter_count() const {
  int64_t n = 0;
  for (auto& [name, t] : named_parameters()) n += t.numel();
  return n;
}

Tensor Module::parameter(const std::string& name) const {
  for (auto& [n, t] : named_parameters())
    if (n == name) return t;
  throw Error("module: no parameter named '" + name + "'");
}

void Module::load_state(const NamedTensors& tensors, const std::string& source) {
  NamedTensors mine = named_parameters();
  std::map<std::string, const Tensor*> given;
  for (auto& [n, t] : tensors) {
    ST_CHECK(given.emplace(n, &t).second, source, ": tensor '", n, "' appears twice");
  }
  // Validate everything first so a bad file changes nothing.
  for (auto& [n, t] : mine) {
    auto it = given.find(n);
    ST_CHECK(it != given.end(), source, ": missing tensor '", n, "' (expected shape ", t.shape(),
             ")");
    const Tensor& g = *it->second;
    ST_CHECK(g.shape() == t.shape(), source, ": tensor '", n, "' has shape ", g.shape(),
             ", expected ", t.shape());
    ST_CHECK(g.dtype() == t.dtype(), source, ": tensor '", n, "' has dtype ", g.dtype(),
             ", expected ", t.dtype());
  }
  if (given.size() != mine.size()) {
    std::map<std::string, int> known;
    for (auto& [n, t] : mine) known[n] = 1;
    for (auto& [n, t] : tensors)
      ST_CHECK(known.count(n), source, ": unexpected tensor '", n, "' (not a parameter)");
  }
  NoGradGuard ng;
  for (auto& [n, t] : mine) const_cast<Tensor&>(t).copy_(*given.at(n));
}

void Module::load_safetensors(const std::filesystem::path& path) {
  safetensors::File f = safetensors::load(path);
  load_state(f.tensors, path.string());
}

void Module::save_safetensors(const std::filesystem::path& path) const {
  safetensors::save(path, named_parameters());
}

void Module::set_trainable(bool on) {
  for (auto& [n, t] : named_parameters()) const_cast<Tensor&>(t).set_requires_grad(on);
}

// PyTorch's default init for conv: kaiming_uniform(a=sqrt(5)) => U(-1/sqrt(fan_in), +) for
// both weight and bias. Deterministic seeds derived from the shape keep runs reproducible.
Conv2d::Conv2d(int64_t in, int64_t out, int64_t kh, int64_t kw, int64_t stride) {
  static uint64_t counter = 0;
  double bound = 1.0 / std::sqrt(double(in * kh * kw));
  weight = register_parameter("weight", Tensor::uniform({out, in, kh, kw}, -bound, bound,
                                                        0x5eed0000 + counter++));
  bias = register_parameter("bias", Tensor::uniform({out}, -bound, bound, 0x5eed0000 + counter++));
  params.stride_h = params.stride_w = stride;
  params.pad_h = kh / 2;
  params.pad_w = kw / 2;
}

Tensor Conv2d::forward(const Tensor& x) const { return conv2d(x, weight, bias, params); }

BatchNorm2d::BatchNorm2d(int64_t c, double e) : eps(e) {
  weight = register_parameter("weight", Tensor::full({c}, 1.0));
  bias = register_parameter("bias", Tensor::zeros({c}));
}

Tensor BatchNorm2d::forward(const Tensor& x) const { return batch_norm(x, weight, bias, eps); }

}  // namespace st::nn
