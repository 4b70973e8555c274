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
    bool warm_pending = false;  // warm_start() was called and no step() has happened since
  };
  State state() const;
  // Throws when `s` was not taken from an Adam over the same parameter shapes.
  void load_state(const State& s);

  // Continues an optimisation whose moments were lost (a migrated session: the weights came
  // from another process, the Adam state did not). A cold Adam's first steps move every
  // parameter by the full lr whatever the size of its gradient (the bias corrections make
  // m / sqrt(v) = ±1), which throws weights that are already adapted off; here the next step()
  // first takes the second moments from the gradients it finds (v = g²), zero first moments and
  // step counts past bias correction (kWarmStartSteps), so steps start at (1 - beta1) lr = lr / 10
  // per parameter and reach lr as the momentum builds up, as in an optimisation that had been
  // running.
  void warm_start() { warm_pending_ = true; }
  static constexpr int64_t kWarmStartSteps = 100000;  // beta2^t < 1e-43: no bias correction

 private:
  std::vector<Tensor> params_, m_, v_;
  std::vector<int64_t> t_;
  Options opt_;
  bool warm_pending_ = false;
};

}  // namespace st::nn
