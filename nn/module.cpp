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

void Module::to(Device device) {
  for (auto& [n, t] : named_parameters()) {
    if (t.device() == device) continue;
    Tensor moved = t.detach().to(device);  // contiguous, on the device
    TensorImpl* impl = t.impl();
    impl->storage = moved.impl()->storage;
    impl->shape = moved.shape();
    impl->strides = moved.strides();
    impl->offset = moved.offset();
    impl->grad.reset();
  }
}

Device Module::device() const {
  NamedTensors all = named_parameters();
  return all.empty() ? Device::cpu() : all.front().second.device();
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

void Module::init_conv_uniform(uint64_t seed) {
  NoGradGuard ng;
  for (auto& [name, t] : named_parameters()) {
    if (t.dim() == 1 && name.find("preact_path") != std::string::npos) continue;  // BN: 1 / 0
    // fan_in from the weight of the same layer: (out, in, kh, kw) -> in*kh*kw.
    std::string layer = name.substr(0, name.rfind('.'));
    Tensor w = parameter(layer + ".weight");
    double fan_in = double(w.size(1) * w.size(2) * w.size(3));
    double bound = 1.0 / std::sqrt(fan_in);
    uint64_t h = 1469598103934665603ull ^ seed;
    for (unsigned char c : name) h = (h ^ c) * 1099511628211ull;
    const_cast<Tensor&>(t).copy_(Tensor::uniform(t.shape(), -bound, bound, h));
  }
}

void Module::set_trainable(bool on) {
  for (auto& [n, t] : named_parameters()) const_cast<Tensor&>(t).set_requires_grad(on);
}

// Parameters start at zero; the owning network initialises them by name (see
// Student::Student), so the same seed gives the same weights whatever else was built before.
Conv2d::Conv2d(int64_t in, int64_t out, int64_t kh, int64_t kw, int64_t stride) {
  weight = register_parameter("weight", Tensor::zeros({out, in, kh, kw}));
  bias = register_parameter("bias", Tensor::zeros({out}));
  params.stride_h = params.stride_w = stride;
  params.pad_h = kh / 2;
  params.pad_w = kw / 2;
}

void Module::name_scopes(const std::string& root) {
  scope_ = profile::intern(root);
  name_children("");
}

void Module::name_children(const std::string& prefix) {
  for (auto& [name, child] : children_) {
    child->scope_ = profile::intern(prefix + name);
    child->name_children(prefix + name + ".");
  }
}

Tensor Conv2d::forward(const Tensor& x) const {
  profile::Scope in(scope());
  return conv2d(x, weight, bias, params);
}

BatchNorm2d::BatchNorm2d(int64_t c, double e) : eps(e) {
  weight = register_parameter("weight", Tensor::full({c}, 1.0));
  bias = register_parameter("bias", Tensor::zeros({c}));
}

Tensor BatchNorm2d::forward(const Tensor& x) const {
  profile::Scope in(scope());
  return batch_norm(x, weight, bias, eps);
}

}  // namespace st::nn
