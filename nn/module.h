// A minimal module layer: named parameters (names match safetensors tensor names, e.g.
// "enc1.long_path.0.weight"), children, and loading/saving a state dict.
#pragma once
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "tensor/ops.h"
#include "tensor/profile.h"
#include "tensor/safetensors.h"

namespace st::nn {

using NamedTensors = std::vector<std::pair<std::string, Tensor>>;

class Module {
 public:
  virtual ~Module() = default;
  Module() = default;
  Module(const Module&) = delete;
  Module& operator=(const Module&) = delete;

  // Every parameter, depth-first in registration order, with dotted names.
  NamedTensors named_parameters() const;
  std::vector<Tensor> parameters() const;
  int64_t parameter_count() const;  // number of scalars
  // The parameter with this dotted name; throws naming it when absent.
  Tensor parameter(const std::string& name) const;

  // Copies values from `tensors` into the parameters (in place, keeping identity). The names,
  // shapes and dtypes must match exactly, one to one; otherwise throws naming the first
  // mismatch and changes nothing.
  void load_state(const NamedTensors& tensors, const std::string& source = "state");
  void load_safetensors(const std::filesystem::path& path);
  void save_safetensors(const std::filesystem::path& path) const;

  // PyTorch's default conv init, kaiming_uniform(a=sqrt(5)): U(-1/sqrt(fan_in), +) for weight
  // and bias, with a per-tensor seed derived from `seed` and the tensor's name (deterministic).
  // Parameters of BatchNorm layers (named *preact_path*) are left as they are.
  void init_conv_uniform(uint64_t seed);

  // Marks every parameter as trainable or frozen (requires_grad).
  void set_trainable(bool on);

  // Moves every parameter to `device` in place: the tensors keep their identity (handles held
  // elsewhere, e.g. by an optimizer built later, see the moved data); gradients are dropped.
  // Build optimizers after moving: their state lives on the parameters' device.
  void to(Device device);
  // The device of the parameters (cpu for a module without any).
  Device device() const;

  // The profiler's name for this module's work (tensor/profile.h): its dotted path in the tree
  // ("dec2.long_path.0"), or the root's own name; "" before name_scopes() ran on the root.
  const char* scope() const { return scope_; }

 protected:
  Tensor& register_parameter(const std::string& name, Tensor t);
  template <class M>
  M& register_module(const std::string& name, std::unique_ptr<M> m) {
    M& ref = *m;
    children_.emplace_back(name, std::move(m));
    return ref;
  }
  // Names the profiler scopes of the whole tree: `root` for this module, dotted paths from here
  // for its descendants. A root module's constructor calls it once the tree is built.
  void name_scopes(const std::string& root);

 private:
  void collect(const std::string& prefix, NamedTensors& out) const;
  void name_children(const std::string& prefix);
  const char* scope_ = "";
  std::vector<std::pair<std::string, Tensor>> params_;
  std::vector<std::pair<std::string, std::unique_ptr<Module>>> children_;
};

// Conv2d with bias; padding k//2 on each axis unless given.
class Conv2d : public Module {
 public:
  Conv2d(int64_t in, int64_t out, int64_t kh, int64_t kw, int64_t stride = 1);
  Tensor forward(const Tensor& x) const;
  Tensor weight, bias;  // (out, in, kh, kw), (out)
  Conv2dParams params;
};

// BatchNorm2d that always normalises with the input's own batch statistics (SPEC §2).
class BatchNorm2d : public Module {
 public:
  explicit BatchNorm2d(int64_t channels, double eps = 1e-5);
  Tensor forward(const Tensor& x) const;
  Tensor weight, bias;  // (C), (C)
  double eps;
};

}  // namespace st::nn
