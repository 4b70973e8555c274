// Optimisers over a list of parameters: Adam (PyTorch semantics) and zero_grad.
#pragma once
#include <vector>

#include "tensor/backend.h"
#include "tensor/tensor.h"

namespace st::nn {

// Clears the accumulated gradients of `params` (sets them undefined, like
// zero_grad(set_to_none=True) in PyTorch).
void zero_grad(const std::vector<Tensor>& params);

// Adam with bias correction, no weight decay (torch.optim.Adam defaults apart from lr).
// State (m, v, step) persists across steps; parameters without a gradient are skipped, as in
// PyTorch (their step count does not advance).
class Adam {
 public:
  struct Options {
    double lr = 1e-3, beta1 = 0.9, beta2 = 0.999, eps = 1e-8;
  };
  Adam(std::vector<Tensor> params, Options opt);
  void step();
  void zero_grad() { nn::zero_grad(params_); }
  const std::vector<Tensor>& params() const { return params_; }
  const Options& options() const { return opt_; }
  // Per-parameter state (for tests and checkpoints).
  const Tensor& exp_avg(size_t i) const { return m_[i]; }
  const Tensor& exp_avg_sq(size_t i) const { return v_[i]; }
  int64_t steps(size_t i) const { return t_[i]; }

  // A copy of the whole state (moments and step counts), and putting one back: Algorithm 1's
  // best-restore rewinds the optimizer with the weights (SPEC §4, the authors' deep copy).
  struct State {
    std::vector<Tensor> m, v;
    std::vector<int64_t> t;
  };
  State state() const;
  // Throws when `s` was not taken from an Adam over the same parameter shapes.
  void load_state(const State& s);

 private:
  std::vector<Tensor> params_, m_, v_;
  std::vector<int64_t> t_;
  Options opt_;
};

}  // namespace st::nn
