// Adam and zero_grad.
#include "nn/optim.h"

#include "tensor/autograd.h"
#include "tensor/ops.h"

namespace st::nn {

void zero_grad(const std::vector<Tensor>& params) {
  for (const Tensor& p : params) const_cast<Tensor&>(p).set_grad(Tensor());
}

Adam::Adam(std::vector<Tensor> params, Options opt) : params_(std::move(params)), opt_(opt) {
  ST_CHECK(opt.lr >= 0, "Adam: learning rate must be >= 0, got ", opt.lr);
  ST_CHECK(opt.beta1 >= 0 && opt.beta1 < 1 && opt.beta2 >= 0 && opt.beta2 < 1,
           "Adam: betas must be in [0, 1)");
  ST_CHECK(opt.eps >= 0, "Adam: eps must be >= 0");
  for (size_t i = 0; i < params_.size(); ++i) {
    const Tensor& p = params_[i];
    ST_CHECK(p.defined() && p.is_leaf() && p.requires_grad(), "Adam: parameter ", i,
             " (", p.defined() ? p.name() : std::string("undefined"),
             ") must be a leaf that requires a gradient");
    ST_CHECK(p.is_contiguous(), "Adam: parameter ", i, " must be contiguous");
    m_.push_back(Tensor::zeros(p.shape(), p.dtype(), p.device()));
    v_.push_back(Tensor::zeros(p.shape(), p.dtype(), p.device()));
    t_.push_back(0);
  }
}

void Adam::step() {
  NoGradGuard ng;
  for (size_t i = 0; i < params_.size(); ++i) {
    Tensor g = params_[i].grad();
    if (!g.defined()) continue;
    ST_CHECK(g.dtype() == params_[i].dtype() && g.device() == params_[i].device(),
             "Adam: gradient of parameter ", i, " is ", g.str(), " but the parameter is ",
             params_[i].str());
    g = g.contiguous();
    if (warm_pending_) {  // warm_start(): as if the optimisation had been running
      v_[i].copy_(g * g);
      m_[i].copy_(Tensor::zeros(g.shape(), g.dtype(), g.device()));
      t_[i] = kWarmStartSteps;
    }
    AdamParams ap{opt_.lr, opt_.beta1, opt_.beta2, opt_.eps, ++t_[i]};
    backend_for(params_[i].device()).adam_step(params_[i], g, m_[i], v_[i], ap);
  }
  warm_pending_ = false;
}

Adam::State Adam::state() const {
  NoGradGuard ng;
  State s;
  for (size_t i = 0; i < params_.size(); ++i) {
    s.m.push_back(m_[i].clone());
    s.v.push_back(v_[i].clone());
  }
  s.t = t_;
  s.warm_pending = warm_pending_;
  return s;
}

void Adam::load_state(const State& s) {
  ST_CHECK(s.m.size() == params_.size() && s.v.size() == params_.size() &&
               s.t.size() == params_.size(),
           "Adam: a state of ", s.m.size(), " tensors for ", params_.size(), " parameters");
  for (size_t i = 0; i < params_.size(); ++i)
    ST_CHECK(s.m[i].shape() == m_[i].shape() && s.v[i].shape() == v_[i].shape(),
             "Adam: state tensor ", i, " has shape ", s.m[i].shape(), ", the parameter ",
             m_[i].shape());
  NoGradGuard ng;
  for (size_t i = 0; i < params_.size(); ++i) {
    m_[i].copy_(s.m[i]);
    v_[i].copy_(s.v[i]);
  }
  t_ = s.t;
  warm_pending_ = s.warm_pending;
}

}  // namespace st::nn
