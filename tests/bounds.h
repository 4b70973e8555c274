// Per-element error bounds of the ops, shared by every test that compares two implementations of
// an op: test_golden.cpp (ours, float32 or float64, against torch's float64 reference) and
// test_cuda.cpp (the CPU backend against the CUDA backend, both float32 or both float64). Each
// function here bounds ONE implementation's distance from the exact (real arithmetic) result on
// the same inputs; a comparison allows the sum of its two sides' bounds (tests/README.md):
//  - linear ops (convolutions, matmul, linear, add/mul, scalar ops, the scatter-sums of nearest
//    resize and max-pool backward): gamma(K, u) * (sum of |terms|), the sum of |terms| from the
//    "abs trick" (abs_terms: the same op in float64 on |inputs|, back-propagating |gy|), K the
//    longest chain of roundings of a quantity, any summation order, with or without FMA;
//  - composite ops (sigmoid, softmax, log_softmax, weighted cross-entropy, batch norm, bilinear
//    resize, Adam): running error analysis (error_bound.h) of the implementation's own operation
//    order, written out per op below. "Ours" is the operation order of kernels/cpu and
//    kernels/cuda, which follow the same formulas (the CUDA kernels say so, and are read against
//    these models); "torch" is PyTorch 1.13's, for the golden files.
#pragma once
#include <algorithm>
#include <functional>
#include <map>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "error_bound.h"

namespace st::test {

using Forward = std::function<Tensor(const std::vector<Tensor>&)>;
// Per-element error bounds (F64 tensors), by role: "y" (or "loss") and "g<input name>".
using Bounds = std::map<std::string, Tensor>;
// An op's inputs by name (the name gives the gradient's role, "g" + name).
using Named = std::vector<std::pair<std::string, Tensor>>;

inline Tensor f64_tensor(const std::vector<double>& v, const Shape& s) {
  return Tensor::from_vector(v, s);
}

inline Tensor abs_of(const Tensor& t) {
  auto v = t.to_vector<double>();
  for (double& e : v) e = std::abs(e);
  return f64_tensor(v, t.shape());
}

inline bool contains(const std::vector<std::string>& v, const std::string& s) {
  return std::find(v.begin(), v.end(), s) != v.end();
}

// Private leaves of `inputs` on the CPU: floating ones converted to `dt` (and made absolute when
// `absolute`), the differentiable ones requiring grad; integer ones as they are.
inline std::vector<Tensor> leaves(const Named& inputs, const std::vector<std::string>& differentiable,
                                  DType dt, bool absolute) {
  std::vector<Tensor> in;
  for (auto& [name, value] : inputs) {
    Tensor t = value.to(Device::cpu());
    if (is_floating(t.dtype())) t = (absolute ? abs_of(t) : t).to(dt).clone();
    if (contains(differentiable, name)) t.set_requires_grad(true);
    in.push_back(t);
  }
  return in;
}

// The op in float64 on the inputs (made absolute when `absolute`), back-propagating `gy64`
// (undefined: the output is a scalar, backward() seeds 1): the output and every gradient, by role.
inline Bounds propagate64(const Forward& forward, const Named& inputs,
                          const std::vector<std::string>& differentiable, bool absolute,
                          const Tensor& gy64) {
  std::vector<Tensor> in = leaves(inputs, differentiable, DType::F64, absolute);
  Tensor y = forward(in);
  Bounds out{{"y", y.detach()}};
  if (differentiable.empty()) return out;
  if (gy64.defined())
    y.backward(gy64.to(DType::F64));
  else
    y.backward();
  for (size_t i = 0; i < inputs.size(); ++i)
    if (in[i].requires_grad()) out["g" + inputs[i].first] = in[i].grad();
  return out;
}

// The abs trick for a linear op: the same op in float64 on |inputs|, back-propagating |gy|,
// gives for the output and for every gradient the sum of the absolute values of its terms. (Its
// own float64 rounding is relatively ~K*1e-16 of the sum: ignored, see error_bound.h.)
inline Bounds abs_terms(const Forward& forward, const Named& inputs,
                        const std::vector<std::string>& differentiable, const Tensor& gy) {
  return propagate64(forward, inputs, differentiable, true, gy.defined() ? abs_of(gy) : Tensor());
}

// Linear ops: a quantity that is a sum of at most K products (K roundings in its longest chain)
// is within gamma(K, u) * sum|terms| of the exact sum, in any order, with or without FMA. The
// bound of a comparison of two implementations with unit roundoffs u_a and u_b, per role.
inline Bounds gamma_bounds(const Bounds& abs_sums, const std::map<std::string, double>& K,
                           double u_a, double u_b) {
  Bounds out;
  for (auto& [role, k] : K) out[role] = mul_scalar(abs_sums.at(role), gamma(k, u_a) + gamma(k, u_b));
  return out;
}

// Exact ops: bound 0 for every listed role, shaped like `shapes`' tensors.
inline Bounds zero_bounds(const std::map<std::string, Shape>& shapes) {
  Bounds out;
  for (auto& [role, s] : shapes) out[role] = Tensor::zeros(s, DType::F64);
  return out;
}

// The largest number of terms any element of the scatter-sum gradient of input `x` receives
// (nearest-resize and max-pool backward): ones back-propagated through the op on the inputs' own
// values (max-pool routes by its argmax).
inline double max_fan_in(const Forward& forward, const Named& inputs, const std::string& x) {
  std::vector<Tensor> in = leaves(inputs, {x}, DType::F64, false);
  Tensor y = forward(in);
  y.backward(Tensor::full(y.shape(), 1.0, DType::F64));
  for (size_t i = 0; i < inputs.size(); ++i)
    if (inputs[i].first == x) {
      auto counts = in[i].grad().to_vector<double>();
      return *std::max_element(counts.begin(), counts.end());
    }
  FAIL("max_fan_in: no input named " << x);
  return 0;
}

inline double ceil_div(int64_t a, int64_t b) { return double((a + b - 1) / b); }

// K of a convolution's quantities (weight (Cout, Cin/groups, kh, kw), output N x Cout x OH x OW):
// y: a sum of Cin/groups * kh * kw products, plus the bias (one more rounding, also where it is
//    added after the sum, as cuDNN's path does);
// gx: an input pixel meets at most ceil(kh/sh) * ceil(kw/sw) taps of each of the Cout/groups
//    output channels of its group;
// gw: N*OH*OW products (ours on the CPU: summed in float, then in double, then rounded to float
//    once more: +1); gb: N*OH*OW terms (summed in double and rounded, or in float: N*OH*OW).
inline std::map<std::string, double> conv2d_k(const Shape& w, const Shape& y, const Conv2dParams& p,
                                              bool bias) {
  const double pixels = double(y[0] * y[2] * y[3]);
  std::map<std::string, double> K = {
      {"y", double(w[1] * w[2] * w[3]) + (bias ? 1 : 0)},
      {"gx", double(w[0] / p.groups) * ceil_div(w[2], p.stride_h) * ceil_div(w[3], p.stride_w)},
      {"gw", pixels + 1}};
  if (bias) K["gb"] = pixels;
  return K;
}

// K of a transposed convolution's output (weight (Cin, Cout/groups, kh, kw)): an output pixel
// meets at most ceil(kh/sh) * ceil(kw/sw) taps of each of the Cin/groups input channels of its
// group, plus the bias.
inline double conv_transpose2d_k(const Shape& w, const Conv2dParams& p) {
  return double(w[0] / p.groups) * ceil_div(w[2], p.stride_h) * ceil_div(w[3], p.stride_w) + 1;
}

// Element (n, c, p) of an (N, C, P) tensor.
inline size_t nchw_at(int64_t n, int64_t c, int64_t p, int64_t C, int64_t P) {
  return size_t((n * C + c) * P + p);
}

// ---------------- sigmoid ----------------
// y = 1/(1 + exp(-x)) (ours and torch); gx = gy*y*(1-y) (ours) or gy*(1-y)*y (torch's
// sigmoid_backward), from that implementation's own y. Returns the bounds of y and gx.
inline std::pair<double, double> sigmoid_error(double x, double gy, double u, bool torch) {
  const Bounded one = constant(1, u), g = exact(gy, u);
  const Bounded y = one / (one + exp(-exact(x, u)));
  const Bounded gx = torch ? g * (one - y) * y : g * y * (one - y);
  return {y.e, gx.e};
}

inline Bounds sigmoid_bounds(const Tensor& xt, const Tensor& gyt, double u, bool torch) {
  const auto x = xt.to_vector<double>(), gy = gyt.to_vector<double>();
  std::vector<double> by(x.size()), bgx(x.size());
  for (size_t i = 0; i < x.size(); ++i) std::tie(by[i], bgx[i]) = sigmoid_error(x[i], gy[i], u, torch);
  return {{"y", f64_tensor(by, xt.shape())}, {"gx", f64_tensor(bgx, xt.shape())}};
}

// ---------------- softmax, log_softmax over channels ----------------
// One pixel's softmax or log_softmax over its C channels and the input gradient; adds each
// element's error bound to ey/egx. Both implementations take the channel max m (exact), then
// e_c = exp(x_c - m) and s = sum_c e_c. softmax: ours y = e * (1/s) (cpu/image.cpp,
// cuda/image.cu), torch y = e / s (SoftMaxKernel.cpp); gx = y * (gy - sum_c gy*y). log_softmax:
// ours y = x - (m + log s), torch y = (x - m) - log s; gx = gy - exp(y) * sum_c gy.
inline void softmax_error(const std::vector<double>& x, const std::vector<double>& gy, bool log_sm,
                          double u, bool torch, std::vector<double>& ey, std::vector<double>& egx) {
  const size_t C = x.size();
  std::vector<Bounded> xb(C), gb(C), e(C), y(C);
  for (size_t c = 0; c < C; ++c) xb[c] = exact(x[c], u), gb[c] = exact(gy[c], u);
  Bounded m = xb[0];
  for (size_t c = 1; c < C; ++c) m = max(m, xb[c]);
  for (size_t c = 0; c < C; ++c) e[c] = exp(xb[c] - m);
  const Bounded s = sum(e, u);
  if (!log_sm) {
    const Bounded r = constant(1, u) / s;
    for (size_t c = 0; c < C; ++c) y[c] = torch ? e[c] / s : e[c] * r;
    std::vector<Bounded> prods(C);
    for (size_t c = 0; c < C; ++c) prods[c] = gb[c] * y[c];
    const Bounded dot = sum(prods, u);
    for (size_t c = 0; c < C; ++c) {
      ey[c] += y[c].e;
      egx[c] += (y[c] * (gb[c] - dot)).e;
    }
  } else {
    const Bounded ls = log(s), lse = m + ls;
    for (size_t c = 0; c < C; ++c) y[c] = torch ? (xb[c] - m) - ls : xb[c] - lse;
    const Bounded sg = sum(gb, u);
    for (size_t c = 0; c < C; ++c) {
      ey[c] += y[c].e;
      egx[c] += (gb[c] - exp(y[c]) * sg).e;
    }
  }
}

// x, gy: (N, C, H, W).
inline Bounds softmax_bounds(const Tensor& xt, const Tensor& gyt, bool log_sm, double u, bool torch) {
  const int64_t N = xt.size(0), C = xt.size(1), P = xt.size(2) * xt.size(3);
  const auto x = xt.to_vector<double>(), gy = gyt.to_vector<double>();
  std::vector<double> by(x.size()), bgx(x.size());
  const size_t Cs = static_cast<size_t>(C);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t p = 0; p < P; ++p) {
      std::vector<double> xs(Cs), gs(Cs), ey(Cs), eg(Cs);
      for (int64_t k = 0; k < C; ++k)
        xs[size_t(k)] = x[nchw_at(n, k, p, C, P)], gs[size_t(k)] = gy[nchw_at(n, k, p, C, P)];
      softmax_error(xs, gs, log_sm, u, torch, ey, eg);
      for (int64_t k = 0; k < C; ++k)
        by[nchw_at(n, k, p, C, P)] = ey[size_t(k)], bgx[nchw_at(n, k, p, C, P)] = eg[size_t(k)];
    }
  return {{"y", f64_tensor(by, xt.shape())}, {"gx", f64_tensor(bgx, xt.shape())}};
}

// ---------------- weighted cross-entropy (SPEC §3) ----------------
// loss = mean_p w_p (lse_p - l[t_p, p]) and its gradient gloss * (w_p/(N*P)) (softmax - onehot(t)).
//  ours (cpu/image.cpp, cuda/image.cu), in T: per pixel m = max_c l, s = sum_c exp(l - m),
//    lse = m + log s; the term double(w) * double(lse - l_t) in double; all N*P terms summed in
//    double (any grouping); loss = T(total / (N*P)). Backward: g0 = T(gloss/(N*P)) (in double,
//    rounded), sc = g0 * w, g_c = sc * exp(l_c - lse), then g_t -= sc.
//  torch (make_golden.py, f64): lsm = (l - m) - log s; loss = -(sum_p w lsm_t) / (N*P).
//    Backward: mean's (-gloss)/(N*P), times w, scattered to t (exact), then log_softmax's
//    g_c - exp(lsm_c) * sum_c g_c, whose sum has one nonzero term (exact).
// Returns "loss" and "glogits"; *exact_loss (when given) receives the exact loss.
inline Bounds weighted_ce_bounds(const Tensor& lt, const Tensor& target, const Tensor& weight,
                                 double gloss, double u, bool torch, double* exact_loss = nullptr) {
  const int64_t N = lt.size(0), C = lt.size(1), P = lt.size(2) * lt.size(3);
  const auto l = lt.to_vector<double>(), w = weight.to_vector<double>();
  const auto t = target.to_vector<int64_t>();
  const double NP = double(N * P);
  const size_t Cs = static_cast<size_t>(C);
  std::vector<Bounded> terms;
  std::vector<double> bg(l.size());
  const Bounded g0 = to_format(exact(gloss, kU64) / constant(NP, kU64), u);
  const Bounded gmean = -(exact(gloss, kU64) / constant(NP, kU64));
  for (int64_t n = 0; n < N; ++n)
    for (int64_t p = 0; p < P; ++p) {
      const size_t tp = size_t(t[size_t(n * P + p)]);
      const double wp = w[size_t(n * P + p)];
      std::vector<Bounded> lb(Cs), e(Cs);
      for (int64_t k = 0; k < C; ++k) lb[size_t(k)] = exact(l[nchw_at(n, k, p, C, P)], u);
      Bounded m = lb[0];
      for (auto& v : lb) m = max(m, v);
      for (size_t k = 0; k < Cs; ++k) e[k] = exp(lb[k] - m);
      if (!torch) {
        const Bounded lse = m + log(sum(e, u));
        terms.push_back(exact(wp, kU64) * to_format(lse - lb[tp], kU64));
        const Bounded sc = g0 * exact(wp, u);
        for (size_t k = 0; k < Cs; ++k) {
          Bounded gk = sc * exp(lb[k] - lse);
          if (k == tp) gk = gk - sc;
          bg[nchw_at(n, int64_t(k), p, C, P)] = gk.e;
        }
      } else {
        const Bounded ls = log(sum(e, u));
        auto lsm = [&](size_t k) { return (lb[k] - m) - ls; };
        terms.push_back(exact(wp, u) * lsm(tp));
        const Bounded gz = gmean * exact(wp, u);
        for (size_t k = 0; k < Cs; ++k)
          bg[nchw_at(n, int64_t(k), p, C, P)] = ((k == tp ? gz : constant(0, u)) - exp(lsm(k)) * gz).e;
      }
    }
  const Bounded loss = torch ? -(sum(terms, u) / constant(NP, u))
                             : to_format(sum(terms, kU64) / constant(NP, kU64), u);
  if (exact_loss) *exact_loss = loss.v;
  return {{"loss", f64_tensor({loss.e}, {})}, {"glogits", f64_tensor(bg, lt.shape())}};
}

// ---------------- batch norm ----------------
// Over (N, H, W) per channel, M values each; y = (x - mean) * invstd * gamma + beta with
// invstd = 1/sqrt(var + eps) (biased var; batch statistics or the frozen running ones).
//  ours (cpu/image.cpp; cuda/image.cu the same, its sums split across blocks, except that it
//    sums float32 inputs in compensated float: float_stats below), batch
//    statistics: mean = sum(x)/M and var = sum((x - mean)^2)/M in double, invstd =
//    1/sqrt(var + eps) in double; scale = T(gamma*invstd), shift = T(beta - mean*gamma*invstd);
//    y = x*scale + shift in T. mean and invstd are saved rounded to T. Backward: sg = sum(gy),
//    sgx = sum(gy*(x - mean)) * invstd in double; ggamma = T(sgx), gbeta = T(sg); k =
//    gamma*invstd, a = T(k), b = T(-k*sg/M), c = T(-k*sgx*invstd/M); gx = a*gy + b + c*(x - mean)
//    in T.
//  ours, frozen: invstd = T(1/sqrt(var + eps)) (double, on the host); scale = gamma*invstd,
//    shift = beta - mean*gamma*invstd, y = x*scale + shift, all in T. Backward: a =
//    T(gamma*invstd) (double product), gx = a*gy in T; ggamma, gbeta as above.
//  torch (batch_norm_kernel.cpp, f64): mean = sum/M, var_sum = sum((x - mean)^2),
//    invstd = 1/sqrt(var_sum/M + eps) (frozen: 1/sqrt(var + eps)); alpha = invstd*gamma,
//    beta' = beta - mean*alpha, y = x*alpha + beta'. Backward: sum = sum(gy),
//    dotp = sum((x - mean)*gy); k = dotp*invstd*invstd/M, gm = sum/M,
//    gx = (gy - gm - (x - mean)*k) * invstd * gamma (frozen: gy*invstd*gamma);
//    ggamma = dotp*invstd, gbeta = sum.
struct BnChannel {
  std::vector<double> x, gy;
  double gamma, beta, eps, mean = 0, var = 0;  // mean, var: the running statistics (frozen)
};
struct BnErrors {
  std::vector<double> y, gx;
  double ggamma = 0, gbeta = 0;
};

// float_stats: the batch statistics of float32 inputs are compensated float sums (the CUDA
// backend, kernels/cuda/image.cu, whose comment derives the bound used here): the double mean
// is within delta * A of the exact mean (A = mean of |x|, delta = 0.07 u), and the double invstd
// within a relative 1.55 u + 0.51 eta^2 / (V + eps) + 2^-50 of the exact one (V the exact biased
// variance, eta = u |mean| + (1 + u) delta A); everything after them as in the double model.
inline BnErrors bn_error_ours(const BnChannel& ch, bool frozen, double u, bool float_stats = false) {
  const size_t M = ch.x.size();
  const Bounded Md = constant(double(M), kU64), eps = constant(ch.eps, kU64);
  BnErrors out;
  Bounded mean, invstd;  // as the backward reads them (saved in T)
  std::vector<Bounded> xd(M), gd(M);
  for (size_t i = 0; i < M; ++i) xd[i] = exact(ch.x[i], kU64), gd[i] = exact(ch.gy[i], kU64);
  if (!frozen) {
    Bounded mu = sum(xd, kU64) / Md;
    std::vector<Bounded> sq(M);
    for (size_t i = 0; i < M; ++i) sq[i] = (xd[i] - mu) * (xd[i] - mu);
    Bounded is = constant(1, kU64) / sqrt(sum(sq, kU64) / Md + eps);
    if (float_stats) {
      double abs_sum = 0, var = 0;
      for (double x : ch.x) abs_sum += std::abs(x);
      for (double x : ch.x) var += (x - mu.v) * (x - mu.v);
      const double A = abs_sum / double(M), V = var / double(M), delta = 0.07 * kU32;
      const double eta = kU32 * std::abs(mu.v) + (1 + kU32) * delta * A;
      const double rel = 1.55 * kU32 + 0.51 * eta * eta / (V + ch.eps) + 0x1p-50;
      mu = Bounded{mu.v, mu.e + delta * A, kU64};
      is = Bounded{is.v, is.e + std::abs(is.v) * rel, kU64};
    }
    const Bounded g = exact(ch.gamma, kU64), b = exact(ch.beta, kU64);
    const Bounded scale = to_format(g * is, u), shift = to_format(b - mu * g * is, u);
    for (size_t i = 0; i < M; ++i) out.y.push_back((exact(ch.x[i], u) * scale + shift).e);
    mean = to_format(mu, u), invstd = to_format(is, u);
  } else {
    const Bounded is = to_format(constant(1, kU64) / sqrt(exact(ch.var, kU64) + eps), u);
    const Bounded g = exact(ch.gamma, u), m = exact(ch.mean, u);
    const Bounded scale = g * is, shift = exact(ch.beta, u) - m * g * is;
    for (size_t i = 0; i < M; ++i) out.y.push_back((exact(ch.x[i], u) * scale + shift).e);
    mean = m, invstd = is;
  }
  const Bounded mu = to_format(mean, kU64), is = to_format(invstd, kU64);  // widening: exact
  std::vector<Bounded> gxc(M);
  for (size_t i = 0; i < M; ++i) gxc[i] = gd[i] * (xd[i] - mu);
  const Bounded sg = sum(gd, kU64), sgx = sum(gxc, kU64) * is;
  out.ggamma = to_format(sgx, u).e, out.gbeta = to_format(sg, u).e;
  const Bounded k = exact(ch.gamma, kU64) * is, a = to_format(k, u);
  if (!frozen) {
    const Bounded b = to_format(-k * sg / Md, u), c = to_format(-k * sgx * is / Md, u);
    for (size_t i = 0; i < M; ++i) {
      const Bounded xi = exact(ch.x[i], u), gi = exact(ch.gy[i], u);
      out.gx.push_back((a * gi + b + c * (xi - mean)).e);
    }
  } else {
    for (size_t i = 0; i < M; ++i) out.gx.push_back((a * exact(ch.gy[i], u)).e);
  }
  return out;
}

inline BnErrors bn_error_torch(const BnChannel& ch, bool frozen) {
  const double u = kU64;
  const size_t M = ch.x.size();
  const Bounded Md = constant(double(M), u), eps = constant(ch.eps, u);
  std::vector<Bounded> xd(M), gd(M);
  for (size_t i = 0; i < M; ++i) xd[i] = exact(ch.x[i], u), gd[i] = exact(ch.gy[i], u);
  Bounded mean, invstd;
  if (!frozen) {
    mean = sum(xd, u) / Md;
    std::vector<Bounded> sq(M);
    for (size_t i = 0; i < M; ++i) sq[i] = (xd[i] - mean) * (xd[i] - mean);
    invstd = constant(1, u) / sqrt(sum(sq, u) / Md + eps);
  } else {
    mean = exact(ch.mean, u);
    invstd = constant(1, u) / sqrt(exact(ch.var, u) + eps);
  }
  const Bounded w = exact(ch.gamma, u), alpha = invstd * w, beta = exact(ch.beta, u) - mean * alpha;
  BnErrors out;
  for (size_t i = 0; i < M; ++i) out.y.push_back((xd[i] * alpha + beta).e);
  std::vector<Bounded> dots(M);
  for (size_t i = 0; i < M; ++i) dots[i] = (xd[i] - mean) * gd[i];
  const Bounded s = sum(gd, u), dotp = sum(dots, u);
  out.ggamma = (dotp * invstd).e, out.gbeta = s.e;
  const Bounded k = dotp * invstd * invstd / Md, gm = s / Md;
  for (size_t i = 0; i < M; ++i)
    out.gx.push_back(frozen ? (gd[i] * invstd * w).e
                            : ((gd[i] - gm - (xd[i] - mean) * k) * invstd * w).e);
  return out;
}

// Channel k of (x, gy) with its parameters (mean, var: the running statistics, frozen only).
inline BnChannel bn_channel(const std::vector<double>& x, const std::vector<double>& gy, int64_t N,
                            int64_t C, int64_t P, int64_t k, double gamma, double beta, double eps,
                            double mean = 0, double var = 0) {
  BnChannel ch{{}, {}, gamma, beta, eps, mean, var};
  for (int64_t n = 0; n < N; ++n)
    for (int64_t p = 0; p < P; ++p)
      ch.x.push_back(x[nchw_at(n, k, p, C, P)]), ch.gy.push_back(gy[nchw_at(n, k, p, C, P)]);
  return ch;
}

// One implementation's bounds of y, gx, gweight (gamma) and gbias (beta). mean, var: the running
// statistics (frozen; undefined otherwise). Ours in the format with unit roundoff u; torch in f64.
inline Bounds batch_norm_bounds(const Tensor& xt, const Tensor& gyt, const Tensor& gamma,
                                const Tensor& beta, double eps, bool frozen, const Tensor& mean,
                                const Tensor& var, double u, bool torch,
                                bool float_stats = false) {
  const int64_t N = xt.size(0), C = xt.size(1), P = xt.size(2) * xt.size(3);
  const auto x = xt.to_vector<double>(), gy = gyt.to_vector<double>();
  const auto gv = gamma.to_vector<double>(), bv = beta.to_vector<double>();
  std::vector<double> mv(static_cast<size_t>(C), 0.0), vv(static_cast<size_t>(C), 0.0);
  if (frozen) mv = mean.to_vector<double>(), vv = var.to_vector<double>();
  std::vector<double> by(x.size()), bgx(x.size()), bgg(static_cast<size_t>(C)), bgb(static_cast<size_t>(C));
  for (int64_t k = 0; k < C; ++k) {
    const size_t kc = size_t(k);
    const BnChannel ch = bn_channel(x, gy, N, C, P, k, gv[kc], bv[kc], eps, mv[kc], vv[kc]);
    const BnErrors e = torch ? bn_error_torch(ch, frozen) : bn_error_ours(ch, frozen, u, float_stats);
    size_t i = 0;
    for (int64_t n = 0; n < N; ++n)
      for (int64_t p = 0; p < P; ++p, ++i)
        by[nchw_at(n, k, p, C, P)] = e.y[i], bgx[nchw_at(n, k, p, C, P)] = e.gx[i];
    bgg[kc] = e.ggamma, bgb[kc] = e.gbeta;
  }
  return {{"y", f64_tensor(by, xt.shape())},
          {"gx", f64_tensor(bgx, xt.shape())},
          {"gweight", f64_tensor(bgg, {C})},
          {"gbias", f64_tensor(bgb, {C})}};
}

// ---------------- bilinear resize ----------------
// align_corners=False, along one axis: output o reads the source coordinate
// s = max((o + 0.5) * in/out - 0.5, 0) with weights 1 - l, l at floor(s) and floor(s) + 1
// (clamped to in - 1). As a function of s, the weight W_r(s) an input index r gets is
// continuous and 1-Lipschitz (a hat, with the clamps), so an implementation whose coordinate is
// off by at most delta and whose weights are then rounded (l rounded once, 1 - l once more:
// at most 2u + u^2 in all) gives r a weight within d = delta + 2u + u^2 of the exact one, and a
// nonzero weight only where W_r is nonzero somewhere within delta of s.
//  ours, float: scale = float(in)/float(out) (rounded in float), s in double, the weights
//    rounded to float (resample.h, as torch's float kernel; host and device alike); ours,
//    double: everything in double;
//  torch, f64: scale and s in double (UpSample.h area_pixel_compute_source_index).
struct AxisWeights {
  std::vector<std::vector<double>> w, d;  // [out][in]: exact weight; bound on |computed - exact|
};

inline double bilinear_weight(double s, int64_t r, int64_t in) {
  s = std::max(s, 0.0);
  const int64_t i0 = std::min<int64_t>(int64_t(s), in - 1), i1 = std::min(i0 + 1, in - 1);
  const double l1 = s - double(i0);
  return (i0 == r ? 1 - l1 : 0.0) + (i1 == r ? l1 : 0.0);
}

inline AxisWeights axis_weights(int64_t in, int64_t out, double u, bool scale_in_float) {
  AxisWeights a;
  for (int64_t o = 0; o < out; ++o) {
    const Bounded scale = scale_in_float
                              ? to_format(exact(double(in), kU32) / exact(double(out), kU32), kU64)
                              : exact(double(in), kU64) / exact(double(out), kU64);
    const Bounded s = exact(double(o) + 0.5, kU64) * scale - constant(0.5, kU64);
    const double delta = s.e, dw = delta + 2 * u + u * u;
    std::vector<double> w(static_cast<size_t>(in)), d(static_cast<size_t>(in));
    for (int64_t r = 0; r < in; ++r) {
      w[size_t(r)] = bilinear_weight(s.v, r, in);
      // W_r is piecewise linear with kinks at integers: its largest value within delta of s is
      // at an end of [s - delta, s + delta] or at the integer inside it.
      double reach =
          std::max(bilinear_weight(s.v - delta, r, in), bilinear_weight(s.v + delta, r, in));
      const double k = std::floor(s.v + delta);
      if (k >= s.v - delta) reach = std::max(reach, bilinear_weight(k, r, in));
      d[size_t(r)] = reach > 0 || w[size_t(r)] > 0 ? dw : 0.0;
    }
    a.w.push_back(w), a.d.push_back(d);
  }
  return a;
}

// One implementation's bounds of y and gx for x (N, C, H, W) resized to gy's (OH, OW).
// Forward: y_o = sum_{r,c} h_r w_c x_rc; each term passes through at most 2 multiplications and
// 2 additions (ours: h*(w*x + w*x) + ...; torch's separable kernel likewise): K = 4 on the
// computed weights, plus the weight error sum |x| ((h+dh)(w+dw) - hw).
// Backward: gx_rc = sum_o (h w) * gy_o: 2 multiplications and a scatter-sum (any order: ours on
// the CPU in sequence, on the GPU by atomics) of at most n_rc = (2 per row tap) * (2 per column
// tap) * (outputs that may touch rc) terms: K = n_rc + 1.
// float_taps: the coordinate rule of a float tensor in ours (resample.h `single`); u: the format.
inline Bounds bilinear_bounds(const Tensor& xt, const Tensor& gyt, double u, bool float_taps) {
  const int64_t NC = xt.size(0) * xt.size(1), H = xt.size(2), W = xt.size(3);
  const int64_t OH = gyt.size(2), OW = gyt.size(3);
  const auto x = xt.to_vector<double>(), gy = gyt.to_vector<double>();
  const AxisWeights ay = axis_weights(H, OH, u, float_taps), ax = axis_weights(W, OW, u, float_taps);
  std::vector<double> by(gy.size(), 0.0), bgx(x.size(), 0.0);
  // fan-in of each input element in the backward scatter-sum
  std::vector<double> fan(size_t(H * W), 0.0);
  for (int64_t i = 0; i < OH; ++i)
    for (int64_t j = 0; j < OW; ++j)
      for (int64_t r = 0; r < H; ++r)
        for (int64_t q = 0; q < W; ++q)
          if (ay.d[size_t(i)][size_t(r)] > 0 && ax.d[size_t(j)][size_t(q)] > 0)
            fan[size_t(r * W + q)] += 4;
  for (int64_t p = 0; p < NC; ++p)
    for (int64_t i = 0; i < OH; ++i)
      for (int64_t j = 0; j < OW; ++j)
        for (int64_t r = 0; r < H; ++r)
          for (int64_t q = 0; q < W; ++q) {
            const double h = ay.w[size_t(i)][size_t(r)], dh = ay.d[size_t(i)][size_t(r)];
            const double w = ax.w[size_t(j)][size_t(q)], dw = ax.d[size_t(j)][size_t(q)];
            const double hw_hi = (h + dh) * (w + dw);  // bounds the computed |weight|
            if (hw_hi == 0) continue;
            const double weight_err = hw_hi - h * w;
            const size_t xi = size_t((p * H + r) * W + q), yi = size_t((p * OH + i) * OW + j);
            by[yi] += std::abs(x[xi]) * (weight_err + gamma(4, u) * hw_hi);
            const double K = fan[size_t(r * W + q)] + 1;
            bgx[xi] += std::abs(gy[yi]) * (weight_err + gamma(K, u) * hw_hi);
          }
  return {{"y", f64_tensor(by, gyt.shape())}, {"gx", f64_tensor(bgx, xt.shape())}};
}

// ---------------- Adam ----------------
// One Adam state (parameter, moments) as Bounded values, float32 or float64 (the u of the
// state). Both implementations compute the bias corrections in double from the same double
// hyperparameters, so the exact trajectories agree.
//  ours (cpu/optim.cpp adam_step; cuda/optim.cu adam_kernel, the same formula and order):
//    b1 = T(beta1), one_b1 = T(1 - beta1) (same for beta2), step_size = T(lr/bc1),
//    bc2_sqrt = T(sqrt(bc2)), eps = T(eps); m = m*b1 + g*one_b1; v = v*b2 + g*g*one_b2;
//    denom = sqrt(v)/bc2_sqrt + eps; p = p - step_size*(m/denom).
//  torch 1.13 _single_tensor_adam, float32: m.mul_(beta1).add_(g, alpha=1-beta1);
//    v.mul_(beta2).addcmul_(g, g, value=1-beta2) (= v*b2 + (1-b2)*g*g); denom =
//    (v.sqrt() / bc2_sqrt).add_(eps); p.addcdiv_(m, denom, value=-step_size) (= p + (-ss)*m/denom),
//    the Python scalars rounded to float. Division by the scalar bc2_sqrt is modelled both as a
//    division and as a multiplication by a float reciprocal; the larger bound is used.
struct AdamHyper {
  double lr, beta1, beta2, eps;
};
struct AdamState {
  Bounded p, m, v;
};

// A fresh state: the parameter as held (exactly) in the format u, zero moments.
inline AdamState adam_start(double p, double u) { return {exact(p, u), exact(0, u), exact(0, u)}; }

// Step t (1-based) with gradient g (held in the state's format, exactly unless g.e says not).
inline void adam_model_step(AdamState& s, const Bounded& g, const AdamHyper& hp, int t, bool torch) {
  const double u = s.p.u;
  const Bounded B1 = constant(hp.beta1, kU64), B2 = constant(hp.beta2, kU64), one = constant(1, kU64);
  const Bounded bc1 = one - pow(B1, double(t)), bc2 = one - pow(B2, double(t));
  const Bounded b1 = to_format(B1, u), one_b1 = to_format(one - B1, u);
  const Bounded b2 = to_format(B2, u), one_b2 = to_format(one - B2, u);
  const Bounded epsf = to_format(constant(hp.eps, kU64), u);
  const Bounded step_size = to_format(constant(hp.lr, kU64) / bc1, u);
  const Bounded bc2_sqrt = sqrt(bc2), bc2f = to_format(bc2_sqrt, u);
  if (!torch) {
    s.m = s.m * b1 + g * one_b1;
    s.v = s.v * b2 + g * g * one_b2;
    const Bounded denom = sqrt(s.v) / bc2f + epsf;
    s.p = s.p - step_size * (s.m / denom);
  } else {
    s.m = s.m * b1 + one_b1 * g;
    s.v = s.v * b2 + one_b2 * g * g;
    const Bounded sq = sqrt(s.v), q1 = sq / bc2f, q2 = sq * to_format(one / bc2_sqrt, u);
    const Bounded denom = (q1.e >= q2.e ? q1 : q2) + epsf;
    s.p = s.p + (-step_size) * s.m / denom;
  }
}

}  // namespace st::test
