// Golden tests: every op against PyTorch 1.13 reference files in tests/golden/ (made by
// tools/make_golden.py; see tests/golden/README.md). Inputs are float32; references were
// computed by torch in float64 from those exact inputs (Adam: torch in float32). Each case runs
// in f32 (the production path) and in f64 (the reference path used by finite differences).
//
// The rule: a tolerance is derived from the computation, never fitted to the numbers one
// machine happened to produce. Every element of every output and gradient is checked against
// its own error bound, |ours - reference| <= bound(ours) + bound(reference), where bound(.) is
// a rigorous bound on the distance of that implementation's result from the exact (real
// arithmetic) result, with u = 2^-24 for our f32 path (and torch's float32 Adam) and u = 2^-53
// for our f64 path and torch's float64 references. The bounds hold for any summation order, with or without fused
// multiply-adds, so the tests pass on AVX2, AVX-512, NEON and the portable kernels alike
// (tests/README.md, "Error bounds"). Three families:
//  - exact ops (relu, concat, subsample, nearest resize and max-pool forward, argmax): bound 0;
//  - linear ops (convolutions, matmul, linear, add/mul, scalar ops, nearest resize and max-pool
//    backward): gamma(K) * (sum of |terms|), the sum of |terms| obtained by the "abs trick"
//    (the same op in f64 on |inputs|, back-propagating |gy|), K derived per quantity below;
//  - composite ops (sigmoid, softmax, log_softmax, cross-entropy, batch norm, bilinear resize,
//    Adam): running error analysis (tests/error_bound.h) of our kernels' and torch's operation
//    order, written out per op below.
// ST_BOUND_REPORT=1 prints the worst |err|/bound of every check.
#include <cstdio>
#include <map>
#include <nlohmann/json.hpp>

#include "error_bound.h"
#include "nn/optim.h"
#include "tensor/safetensors.h"
#include "test_util.h"

using namespace st;
using json = nlohmann::json;
using test::Bounded;
using test::constant;
using test::exact;
using test::gamma;
using test::kU32;
using test::kU64;
using test::to_format;

namespace {

struct Golden {
  std::string family;
  safetensors::File file;
  std::vector<std::string> cases;
  explicit Golden(const std::string& fam) : family(fam) {
    file = safetensors::load(test::source_dir() / "tests" / "golden" / (fam + ".safetensors"));
    REQUIRE(file.metadata.count("torch_version"));
    REQUIRE(file.metadata.at("generator") == "tools/make_golden.py");
    cases = json::parse(file.metadata.at("cases")).get<std::vector<std::string>>();
    REQUIRE_FALSE(cases.empty());
  }
  json params(const std::string& c) const { return json::parse(file.metadata.at(c + ".params")); }
  bool has(const std::string& c, const std::string& role) const {
    return file.contains(c + "." + role);
  }
  Tensor get(const std::string& c, const std::string& role) const {
    return file.get(c + "." + role);
  }
};

double unit_roundoff(DType dt) { return dt == DType::F32 ? kU32 : kU64; }

// Per-element error bounds (F64 tensors), by role: "y" (or "loss") and "g<input>".
using Bounds = std::map<std::string, Tensor>;

Tensor f64_tensor(const std::vector<double>& v, const Shape& s) { return Tensor::from_vector(v, s); }

Tensor abs_of(const Tensor& t) {
  auto v = t.to_vector<double>();
  for (double& e : v) e = std::abs(e);
  return f64_tensor(v, t.shape());
}

// |actual - golden[role]| <= bounds[role] elementwise.
void check(const Golden& g, const std::string& c, const std::string& role, DType dt,
           const Tensor& actual, const Bounds& bounds) {
  INFO("checking " << role);
  REQUIRE(actual.defined());
  REQUIRE(bounds.count(role));
  const Tensor ref = g.get(c, role);
  ST_REQUIRE_WITHIN(actual, ref, bounds.at(role));
  if (std::getenv("ST_BOUND_REPORT")) {
    auto d = test::compare_within(actual, ref, bounds.at(role));
    std::printf("bound-report %-18s %-22s %-8s %s worst |err|/bound %.3g (|err| %.3g, bound %.3g)\n",
                g.family.c_str(), c.c_str(), role.c_str(), dtype_name(dt), d.worst_ratio, d.err,
                d.bound);
  }
}

// The case's inputs as private leaves: floating ones converted to `dt` (and made absolute when
// `absolute`), the differentiable ones requiring grad.
std::vector<Tensor> leaves(const Golden& g, const std::string& c, DType dt,
                           const std::vector<std::string>& inputs,
                           const std::vector<std::string>& differentiable, bool absolute) {
  std::vector<Tensor> in;
  for (auto& name : inputs) {
    Tensor t = g.get(c, name);
    if (is_floating(t.dtype())) t = (absolute ? abs_of(t) : t).to(dt).clone();
    if (std::find(differentiable.begin(), differentiable.end(), name) != differentiable.end())
      t.set_requires_grad(true);
    in.push_back(t);
  }
  return in;
}

using Forward = std::function<Tensor(const std::vector<Tensor>&)>;

// Runs `forward` on the named inputs in `dt`, checks the output, then back-propagates gy (1 for
// a loss) and checks g<input> for every differentiable input, each within its bound.
void run_case(const Golden& g, const std::string& c, DType dt, const std::vector<std::string>& inputs,
              const std::vector<std::string>& differentiable, const Forward& forward,
              const Bounds& bounds, const std::string& out_role = "y") {
  INFO("case " << c << " dtype " << dtype_name(dt));
  std::vector<Tensor> in = leaves(g, c, dt, inputs, differentiable, false);
  Tensor y = forward(in);
  check(g, c, out_role, dt, y, bounds);
  if (differentiable.empty()) return;
  if (g.has(c, "gy"))
    y.backward(g.get(c, "gy").to(dt));
  else
    y.backward();
  for (size_t i = 0; i < inputs.size(); ++i)
    if (in[i].requires_grad()) check(g, c, "g" + inputs[i], dt, in[i].grad(), bounds);
}

// The op in f64 on the inputs (made absolute when `absolute`), back-propagating `gy64`: the
// output and every gradient, by role.
Bounds propagate64(const Golden& g, const std::string& c, const std::vector<std::string>& inputs,
                   const std::vector<std::string>& differentiable, const Forward& forward,
                   bool absolute, const Tensor& gy64) {
  std::vector<Tensor> in = leaves(g, c, DType::F64, inputs, differentiable, absolute);
  Tensor y = forward(in);
  Bounds out{{"y", y.detach()}};
  if (differentiable.empty()) return out;
  y.backward(gy64);
  for (size_t i = 0; i < inputs.size(); ++i)
    if (in[i].requires_grad()) out["g" + inputs[i]] = in[i].grad();
  return out;
}

// The abs trick for a linear op: the same op in f64 on |inputs|, back-propagating |gy|, gives
// for the output and for every gradient the sum of the absolute values of its terms. (Its own
// f64 rounding is relatively ~K*1e-16 of the sum: ignored, see error_bound.h.)
Bounds abs_terms(const Golden& g, const std::string& c, const std::vector<std::string>& inputs,
                 const std::vector<std::string>& differentiable, const Forward& forward) {
  Tensor gy = g.has(c, "gy") ? abs_of(g.get(c, "gy")) : Tensor();
  return propagate64(g, c, inputs, differentiable, forward, true, gy);
}

// Linear ops: a quantity that is a sum of at most K products (K roundings in the longest chain)
// is within gamma(K) * sum|terms| of the exact sum, in any order, with or without FMA; ours
// (u of dt) and torch's f64 reference (u = 2^-53) each contribute their own.
Bounds gamma_bounds(const Bounds& abs_sums, const std::map<std::string, double>& K, DType dt) {
  Bounds out;
  for (auto& [role, k] : K)
    out[role] = mul_scalar(abs_sums.at(role), gamma(k, unit_roundoff(dt)) + gamma(k, kU64));
  return out;
}

// Exact ops: every listed role must match the reference exactly.
Bounds zero_bounds(const Golden& g, const std::string& c, const std::vector<std::string>& roles) {
  Bounds out;
  for (auto& r : roles) out[r] = Tensor::zeros(g.get(c, r).shape(), DType::F64);
  return out;
}

// The largest number of terms any element of a scatter-sum gradient (nearest-resize and
// max-pool backward) receives: back-propagating ones through the op on the case's own input
// (max-pool routes by its argmax).
double max_fan_in(const Golden& g, const std::string& c, const Forward& forward) {
  Tensor ones = Tensor::full(g.get(c, "y").shape(), 1.0, DType::F64);
  auto counts = propagate64(g, c, {"x"}, {"x"}, forward, false, ones).at("gx").to_vector<double>();
  return *std::max_element(counts.begin(), counts.end());
}

template <class F>
void both_dtypes(F&& f) {
  f(DType::F32);
  f(DType::F64);
}

Conv2dParams conv_params(const json& p) {
  Conv2dParams cp;
  cp.stride_h = p["stride"][0];
  cp.stride_w = p["stride"][1];
  cp.pad_h = p["padding"][0];
  cp.pad_w = p["padding"][1];
  cp.groups = p["groups"];
  if (p.contains("output_padding")) {
    cp.output_pad_h = p["output_padding"][0];
    cp.output_pad_w = p["output_padding"][1];
  }
  return cp;
}

double ceil_div(int64_t a, int64_t b) { return double((a + b - 1) / b); }

// Element (n, c, p) of an (N, C, P) tensor.
size_t at(int64_t n, int64_t c, int64_t p, int64_t C, int64_t P) {
  return size_t((n * C + c) * P + p);
}

// ---------------- composite ops: running error analysis (tests/error_bound.h) ----------------

// sigmoid: y = 1/(1 + exp(-x)) (ours and torch); gx = gy*y*(1-y) (ours) or gy*(1-y)*y (torch's
// sigmoid_backward), from that implementation's own y.
std::pair<double, double> sigmoid_error(double x, double gy, double u, bool torch) {
  const Bounded one = constant(1, u), g = exact(gy, u);
  const Bounded y = one / (one + exp(-exact(x, u)));
  const Bounded gx = torch ? g * (one - y) * y : g * y * (one - y);
  return {y.e, gx.e};
}

Bounds sigmoid_bounds(const Golden& g, const std::string& c, DType dt) {
  auto x = g.get(c, "x").to_vector<double>(), gy = g.get(c, "gy").to_vector<double>();
  std::vector<double> by(x.size()), bgx(x.size());
  for (size_t i = 0; i < x.size(); ++i) {
    auto [ey, eg] = sigmoid_error(x[i], gy[i], unit_roundoff(dt), false);
    auto [ry, rg] = sigmoid_error(x[i], gy[i], kU64, true);
    by[i] = ey + ry, bgx[i] = eg + rg;
  }
  const Shape s = g.get(c, "x").shape();
  return {{"y", f64_tensor(by, s)}, {"gx", f64_tensor(bgx, s)}};
}

// One pixel's softmax or log_softmax over its C channels and the input gradient; adds each
// element's error bound to ey/egx. Both implementations take the channel max m (exact), then
// e_c = exp(x_c - m) and s = sum_c e_c. softmax: ours y = e * (1/s) (cpu_image_ops.cpp), torch
// y = e / s (SoftMaxKernel.cpp); gx = y * (gy - sum_c gy*y). log_softmax: ours
// y = x - (m + log s), torch y = (x - m) - log s; gx = gy - exp(y) * sum_c gy.
void softmax_error(const std::vector<double>& x, const std::vector<double>& gy, bool log_sm,
                   double u, bool torch, std::vector<double>& ey, std::vector<double>& egx) {
  const size_t C = x.size();
  std::vector<Bounded> xb(C), gb(C), e(C), y(C);
  for (size_t c = 0; c < C; ++c) xb[c] = exact(x[c], u), gb[c] = exact(gy[c], u);
  Bounded m = xb[0];
  for (size_t c = 1; c < C; ++c) m = max(m, xb[c]);
  for (size_t c = 0; c < C; ++c) e[c] = exp(xb[c] - m);
  const Bounded s = test::sum(e, u);
  if (!log_sm) {
    const Bounded r = constant(1, u) / s;
    for (size_t c = 0; c < C; ++c) y[c] = torch ? e[c] / s : e[c] * r;
    std::vector<Bounded> prods(C);
    for (size_t c = 0; c < C; ++c) prods[c] = gb[c] * y[c];
    const Bounded dot = test::sum(prods, u);
    for (size_t c = 0; c < C; ++c) {
      ey[c] += y[c].e;
      egx[c] += (y[c] * (gb[c] - dot)).e;
    }
  } else {
    const Bounded ls = log(s), lse = m + ls;
    for (size_t c = 0; c < C; ++c) y[c] = torch ? (xb[c] - m) - ls : xb[c] - lse;
    const Bounded sg = test::sum(gb, u);
    for (size_t c = 0; c < C; ++c) {
      ey[c] += y[c].e;
      egx[c] += (gb[c] - exp(y[c]) * sg).e;
    }
  }
}

Bounds softmax_bounds(const Golden& g, const std::string& c, bool log_sm, DType dt) {
  const Tensor xt = g.get(c, "x");
  const int64_t N = xt.size(0), C = xt.size(1), P = xt.size(2) * xt.size(3);
  auto x = xt.to_vector<double>(), gy = g.get(c, "gy").to_vector<double>();
  std::vector<double> by(x.size()), bgx(x.size());
  for (int64_t n = 0; n < N; ++n)
    for (int64_t p = 0; p < P; ++p) {
      const size_t Cs = static_cast<size_t>(C);
      std::vector<double> xs(Cs), gs(Cs), ey(Cs), eg(Cs);
      for (int64_t k = 0; k < C; ++k)
        xs[size_t(k)] = x[at(n, k, p, C, P)], gs[size_t(k)] = gy[at(n, k, p, C, P)];
      softmax_error(xs, gs, log_sm, unit_roundoff(dt), false, ey, eg);
      softmax_error(xs, gs, log_sm, kU64, true, ey, eg);
      for (int64_t k = 0; k < C; ++k)
        by[at(n, k, p, C, P)] = ey[size_t(k)], bgx[at(n, k, p, C, P)] = eg[size_t(k)];
    }
  return {{"y", f64_tensor(by, xt.shape())}, {"gx", f64_tensor(bgx, xt.shape())}};
}

// Weighted cross-entropy (SPEC §3), loss = mean_p w_p (lse_p - l[t_p, p]), and its gradient
// (w_p/(N*P)) (softmax - onehot(t)).
//  ours (cpu_image_ops.cpp), in T: per pixel m = max_c l, s = sum_c exp(l - m),
//    lse = m + log s; the term double(w) * double(lse - l_t) in double; all N*P terms summed in
//    double (per block, then the blocks); loss = T(total / (N*P)). Backward: g0 = T(1/(N*P)),
//    sc = g0 * w, g_c = sc * exp(l_c - lse), then g_t -= sc.
//  torch (make_golden.py, f64): lsm = (l - m) - log s; loss = -(sum_p w lsm_t) / (N*P).
//    Backward: mean's (-1)/(N*P), times w, scattered to t (exact), then log_softmax's
//    g_c - exp(lsm_c) * sum_c g_c, whose sum has one nonzero term (exact).
Bounds weighted_ce_bounds(const Golden& g, const std::string& c, DType dt) {
  const Tensor lt = g.get(c, "logits");
  const int64_t N = lt.size(0), C = lt.size(1), P = lt.size(2) * lt.size(3);
  const auto l = lt.to_vector<double>(), w = g.get(c, "weight").to_vector<double>();
  const auto t = g.get(c, "target").to_vector<int64_t>();
  const double u = unit_roundoff(dt), NP = double(N * P);
  std::vector<Bounded> ours_terms, torch_terms;
  std::vector<double> bg(l.size());
  const Bounded g0 = to_format(constant(1, kU64) / constant(NP, kU64), u);
  const Bounded gmean = constant(-1, kU64) / constant(NP, kU64);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t p = 0; p < P; ++p) {
      const size_t tp = size_t(t[size_t(n * P + p)]);
      const double wp = w[size_t(n * P + p)];
      // ours
      std::vector<Bounded> lb(static_cast<size_t>(C)), e(static_cast<size_t>(C));
      for (int64_t k = 0; k < C; ++k) lb[size_t(k)] = exact(l[at(n, k, p, C, P)], u);
      Bounded m = lb[0];
      for (auto& v : lb) m = max(m, v);
      for (size_t k = 0; k < size_t(C); ++k) e[k] = exp(lb[k] - m);
      const Bounded lse = m + log(test::sum(e, u));
      ours_terms.push_back(exact(wp, kU64) * to_format(lse - lb[tp], kU64));
      const Bounded sc = g0 * exact(wp, u);
      for (size_t k = 0; k < size_t(C); ++k) {
        Bounded gk = sc * exp(lb[k] - lse);
        if (k == tp) gk = gk - sc;
        bg[at(n, int64_t(k), p, C, P)] = gk.e;
      }
      // torch, f64
      std::vector<Bounded> L(static_cast<size_t>(C)), E(static_cast<size_t>(C));
      for (int64_t k = 0; k < C; ++k) L[size_t(k)] = exact(l[at(n, k, p, C, P)], kU64);
      Bounded M = L[0];
      for (auto& v : L) M = max(M, v);
      for (size_t k = 0; k < size_t(C); ++k) E[k] = exp(L[k] - M);
      const Bounded ls = log(test::sum(E, kU64));
      auto lsm = [&](size_t k) { return (L[k] - M) - ls; };
      torch_terms.push_back(exact(wp, kU64) * lsm(tp));
      const Bounded gz = gmean * exact(wp, kU64);
      for (size_t k = 0; k < size_t(C); ++k)
        bg[at(n, int64_t(k), p, C, P)] += ((k == tp ? gz : constant(0, kU64)) - exp(lsm(k)) * gz).e;
    }
  const Bounded loss_ours = to_format(test::sum(ours_terms, kU64) / constant(NP, kU64), u);
  const Bounded loss_torch = -(test::sum(torch_terms, kU64) / constant(NP, kU64));
  REQUIRE(std::abs(loss_ours.v - loss_torch.v) <= 1e-12 * std::abs(loss_ours.v));  // same exact value
  return {{"loss", f64_tensor({loss_ours.e + loss_torch.e}, {})},
          {"glogits", f64_tensor(bg, lt.shape())}};
}

// Batch norm over (N, H, W) per channel, M values each; y = (x - mean) * invstd * gamma + beta
// with invstd = 1/sqrt(var + eps) (biased var; batch statistics or the frozen running ones).
//  ours (cpu_image_ops.cpp), batch statistics: mean = sum(x)/M and var = sum((x - mean)^2)/M in
//    double, invstd = 1/sqrt(var + eps) in double; scale = T(gamma*invstd),
//    shift = T(beta - mean*gamma*invstd); y = x*scale + shift in T. mean and invstd are saved
//    rounded to T. Backward: sg = sum(gy), sgx = sum(gy*(x - mean)) * invstd in double;
//    ggamma = T(sgx), gbeta = T(sg); k = gamma*invstd, a = T(k), b = T(-k*sg/M),
//    c = T(-k*sgx*invstd/M); gx = a*gy + b + c*(x - mean) in T.
//  ours, frozen: invstd = T(1/sqrt(var + eps)) (double, on the host); scale = gamma*invstd,
//    shift = beta - mean*gamma*invstd, y = x*scale + shift, all in T. Backward: a = T(gamma*invstd)
//    (double product), gx = a*gy in T; ggamma, gbeta as above.
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

BnErrors bn_error_ours(const BnChannel& ch, bool frozen, double u) {
  const size_t M = ch.x.size();
  const Bounded Md = constant(double(M), kU64), eps = constant(ch.eps, kU64);
  BnErrors out;
  Bounded mean, invstd;  // as the backward reads them (saved in T)
  std::vector<Bounded> xd(M), gd(M);
  for (size_t i = 0; i < M; ++i) xd[i] = exact(ch.x[i], kU64), gd[i] = exact(ch.gy[i], kU64);
  if (!frozen) {
    const Bounded mu = test::sum(xd, kU64) / Md;
    std::vector<Bounded> sq(M);
    for (size_t i = 0; i < M; ++i) sq[i] = (xd[i] - mu) * (xd[i] - mu);
    const Bounded is = constant(1, kU64) / sqrt(test::sum(sq, kU64) / Md + eps);
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
  const Bounded sg = test::sum(gd, kU64), sgx = test::sum(gxc, kU64) * is;
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

BnErrors bn_error_torch(const BnChannel& ch, bool frozen) {
  const double u = kU64;
  const size_t M = ch.x.size();
  const Bounded Md = constant(double(M), u), eps = constant(ch.eps, u);
  std::vector<Bounded> xd(M), gd(M);
  for (size_t i = 0; i < M; ++i) xd[i] = exact(ch.x[i], u), gd[i] = exact(ch.gy[i], u);
  Bounded mean, invstd;
  if (!frozen) {
    mean = test::sum(xd, u) / Md;
    std::vector<Bounded> sq(M);
    for (size_t i = 0; i < M; ++i) sq[i] = (xd[i] - mean) * (xd[i] - mean);
    invstd = constant(1, u) / sqrt(test::sum(sq, u) / Md + eps);
  } else {
    mean = exact(ch.mean, u);
    invstd = constant(1, u) / sqrt(exact(ch.var, u) + eps);
  }
  const Bounded w = exact(ch.gamma, u), alpha = invstd * w, beta = exact(ch.beta, u) - mean * alpha;
  BnErrors out;
  for (size_t i = 0; i < M; ++i) out.y.push_back((xd[i] * alpha + beta).e);
  std::vector<Bounded> dots(M);
  for (size_t i = 0; i < M; ++i) dots[i] = (xd[i] - mean) * gd[i];
  const Bounded sum = test::sum(gd, u), dotp = test::sum(dots, u);
  out.ggamma = (dotp * invstd).e, out.gbeta = sum.e;
  const Bounded k = dotp * invstd * invstd / Md, gm = sum / Md;
  for (size_t i = 0; i < M; ++i)
    out.gx.push_back(frozen ? (gd[i] * invstd * w).e
                            : ((gd[i] - gm - (xd[i] - mean) * k) * invstd * w).e);
  return out;
}

Bounds batch_norm_bounds(const Golden& g, const std::string& c, bool frozen, double eps, DType dt) {
  const Tensor xt = g.get(c, "x");
  const int64_t N = xt.size(0), C = xt.size(1), P = xt.size(2) * xt.size(3);
  const auto x = xt.to_vector<double>(), gy = g.get(c, "gy").to_vector<double>();
  const auto gamma_v = g.get(c, "weight").to_vector<double>();
  const auto beta_v = g.get(c, "bias").to_vector<double>();
  std::vector<double> mean_v(static_cast<size_t>(C)), var_v(static_cast<size_t>(C));
  if (frozen) {
    mean_v = g.get(c, "mean").to_vector<double>();
    var_v = g.get(c, "var").to_vector<double>();
  }
  std::vector<double> by(x.size()), bgx(x.size());
  std::vector<double> bgg(static_cast<size_t>(C)), bgb(static_cast<size_t>(C));
  for (int64_t k = 0; k < C; ++k) {
    const size_t kc = size_t(k);
    BnChannel ch{{}, {}, gamma_v[kc], beta_v[kc], eps, mean_v[kc], var_v[kc]};
    for (int64_t n = 0; n < N; ++n)
      for (int64_t p = 0; p < P; ++p)
        ch.x.push_back(x[at(n, k, p, C, P)]), ch.gy.push_back(gy[at(n, k, p, C, P)]);
    const BnErrors a = bn_error_ours(ch, frozen, unit_roundoff(dt)), b = bn_error_torch(ch, frozen);
    size_t i = 0;
    for (int64_t n = 0; n < N; ++n)
      for (int64_t p = 0; p < P; ++p, ++i) {
        by[at(n, k, p, C, P)] = a.y[i] + b.y[i];
        bgx[at(n, k, p, C, P)] = a.gx[i] + b.gx[i];
      }
    bgg[size_t(k)] = a.ggamma + b.ggamma, bgb[size_t(k)] = a.gbeta + b.gbeta;
  }
  return {{"y", f64_tensor(by, xt.shape())},
          {"gx", f64_tensor(bgx, xt.shape())},
          {"gweight", f64_tensor(bgg, {C})},
          {"gbias", f64_tensor(bgb, {C})}};
}

// Bilinear resize (align_corners=False) along one axis: output o reads the source coordinate
// s = max((o + 0.5) * in/out - 0.5, 0) with weights 1 - l, l at floor(s) and floor(s) + 1
// (clamped to in - 1). As a function of s, the weight W_r(s) an input index r gets is
// continuous and 1-Lipschitz (a hat, with the clamps), so an implementation whose coordinate is
// off by at most delta and whose weights are then rounded (l rounded once, 1 - l once more:
// at most 2u + u^2 in all) gives r a weight within d = delta + 2u + u^2 of the exact one, and a
// nonzero weight only where W_r is nonzero somewhere within delta of s.
//  ours, float: scale = float(in)/float(out) (rounded in float), s in double, the weights
//    rounded to float (resample.h, as torch's float kernel); ours, double: everything in double;
//  torch, f64: scale and s in double (UpSample.h area_pixel_compute_source_index).
struct AxisWeights {
  std::vector<std::vector<double>> w, d;  // [out][in]: exact weight; bound on |computed - exact|
};

double bilinear_weight(double s, int64_t r, int64_t in) {
  s = std::max(s, 0.0);
  const int64_t i0 = std::min<int64_t>(int64_t(s), in - 1), i1 = std::min(i0 + 1, in - 1);
  const double l1 = s - double(i0);
  return (i0 == r ? 1 - l1 : 0.0) + (i1 == r ? l1 : 0.0);
}

AxisWeights axis_weights(int64_t in, int64_t out, double u, bool scale_in_float) {
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

// Forward: y_o = sum_{r,c} h_r w_c x_rc; each term passes through at most 2 multiplications and
// 2 additions (ours: h*(w*x + w*x) + ...; torch's separable kernel likewise): K = 4 on the
// computed weights, plus the weight error sum |x| ((h+dh)(w+dw) - hw).
// Backward: gx_rc = sum_o (h w) * gy_o: 2 multiplications and a scatter-sum of at most
// n_rc = (2 per row tap) * (2 per column tap) * (outputs that may touch rc) terms: K = n_rc + 1.
Bounds bilinear_bounds(const Golden& g, const std::string& c, DType dt) {
  const Tensor xt = g.get(c, "x"), gyt = g.get(c, "gy");
  const int64_t NC = xt.size(0) * xt.size(1), H = xt.size(2), W = xt.size(3);
  const int64_t OH = gyt.size(2), OW = gyt.size(3);
  const auto x = xt.to_vector<double>(), gy = gyt.to_vector<double>();
  const bool f32 = dt == DType::F32;
  const double u = unit_roundoff(dt);
  struct Impl {
    AxisWeights ay, ax;
    double u;
  };
  const Impl impls[2] = {{axis_weights(H, OH, u, f32), axis_weights(W, OW, u, f32), u},
                         {axis_weights(H, OH, kU64, false), axis_weights(W, OW, kU64, false), kU64}};
  std::vector<double> by(gy.size(), 0.0), bgx(x.size(), 0.0);
  for (const Impl& im : impls) {
    // fan-in of each input element in the backward scatter-sum
    std::vector<double> fan(size_t(H * W), 0.0);
    for (int64_t i = 0; i < OH; ++i)
      for (int64_t j = 0; j < OW; ++j)
        for (int64_t r = 0; r < H; ++r)
          for (int64_t q = 0; q < W; ++q)
            if (im.ay.d[size_t(i)][size_t(r)] > 0 && im.ax.d[size_t(j)][size_t(q)] > 0)
              fan[size_t(r * W + q)] += 4;
    for (int64_t p = 0; p < NC; ++p)
      for (int64_t i = 0; i < OH; ++i)
        for (int64_t j = 0; j < OW; ++j)
          for (int64_t r = 0; r < H; ++r)
            for (int64_t q = 0; q < W; ++q) {
              const double h = im.ay.w[size_t(i)][size_t(r)], dh = im.ay.d[size_t(i)][size_t(r)];
              const double w = im.ax.w[size_t(j)][size_t(q)], dw = im.ax.d[size_t(j)][size_t(q)];
              const double hw_hi = (h + dh) * (w + dw);  // bounds the computed |weight|
              if (hw_hi == 0) continue;
              const double weight_err = hw_hi - h * w;
              const size_t xi = size_t((p * H + r) * W + q), yi = size_t((p * OH + i) * OW + j);
              by[yi] += std::abs(x[xi]) * (weight_err + gamma(4, im.u) * hw_hi);
              const double K = fan[size_t(r * W + q)] + 1;
              bgx[xi] += std::abs(gy[yi]) * (weight_err + gamma(K, im.u) * hw_hi);
            }
  }
  return {{"y", f64_tensor(by, gyt.shape())}, {"gx", f64_tensor(bgx, xt.shape())}};
}

}  // namespace

TEST_CASE("golden: conv2d", "[golden][portable]") {
  Golden g("conv2d");
  for (auto& c : g.cases) {
    Conv2dParams p = conv_params(g.params(c));
    bool bias = g.params(c)["bias"];
    std::vector<std::string> in = {"x", "w"};
    if (bias) in.push_back("b");
    Forward f = [&](auto& v) { return conv2d(v[0], v[1], bias ? v[2] : Tensor(), p); };
    const Shape ws = g.get(c, "w").shape(), ys = g.get(c, "y").shape();
    const double pixels = double(ys[0] * ys[2] * ys[3]);  // N * OH * OW
    // y: a sum of Cin/groups * kh * kw products, plus the bias.
    // gx: an input pixel meets at most ceil(kh/sh) * ceil(kw/sw) taps of each of the
    //     Cout/groups output channels of its group.
    // gw: N*OH*OW products, summed in float then in double (kernels/cpu/conv2d.cpp), then
    //     rounded to float once more: +1. gb: N*OH*OW terms, likewise (N*OH*OW - 1 additions + 1).
    std::map<std::string, double> K = {
        {"y", double(ws[1] * ws[2] * ws[3]) + (bias ? 1 : 0)},
        {"gx", double(ws[0] / p.groups) * ceil_div(ws[2], p.stride_h) * ceil_div(ws[3], p.stride_w)},
        {"gw", pixels + 1}};
    if (bias) K["gb"] = pixels;
    const Bounds abs_sums = abs_terms(g, c, in, in, f);
    both_dtypes([&](DType dt) { run_case(g, c, dt, in, in, f, gamma_bounds(abs_sums, K, dt)); });
  }
}

TEST_CASE("golden: conv_transpose2d", "[golden][portable]") {
  Golden g("conv_transpose2d");
  for (auto& c : g.cases) {
    Conv2dParams p = conv_params(g.params(c));
    Forward f = [&](auto& v) { return conv_transpose2d(v[0], v[1], v[2], p); };
    const Shape ws = g.get(c, "w").shape();  // (Cin, Cout/groups, kh, kw)
    // y: an output pixel meets at most ceil(kh/sh) * ceil(kw/sw) taps of each of the Cin/groups
    //    input channels of its group, plus the bias.
    const std::map<std::string, double> K = {
        {"y", double(ws[0] / p.groups) * ceil_div(ws[2], p.stride_h) *
                      ceil_div(ws[3], p.stride_w) +
                  1}};
    const Bounds abs_sums = abs_terms(g, c, {"x", "w", "b"}, {}, f);
    both_dtypes([&](DType dt) {
      run_case(g, c, dt, {"x", "w", "b"}, {}, f, gamma_bounds(abs_sums, K, dt));
    });
  }
}

TEST_CASE("golden: batch norm (batch statistics and frozen)", "[golden][portable]") {
  Golden g("batch_norm");
  for (auto& c : g.cases) {
    json p = g.params(c);
    double eps = p["eps"];
    bool frozen = p.value("frozen", false);
    both_dtypes([&](DType dt) {
      const Bounds b = batch_norm_bounds(g, c, frozen, eps, dt);
      if (frozen)
        run_case(g, c, dt, {"x", "weight", "bias", "mean", "var"}, {"x", "weight", "bias"},
                 [&](auto& v) { return batch_norm_frozen(v[0], v[1], v[2], v[3], v[4], eps); }, b);
      else
        run_case(g, c, dt, {"x", "weight", "bias"}, {"x", "weight", "bias"},
                 [&](auto& v) { return batch_norm(v[0], v[1], v[2], eps); }, b);
    });
  }
}

TEST_CASE("golden: relu and sigmoid", "[golden][portable]") {
  Golden g("activation");
  for (auto& c : g.cases) {
    std::string op = g.params(c)["op"];
    both_dtypes([&](DType dt) {
      // relu and its gradient select values: exact.
      const Bounds b = op == "relu" ? zero_bounds(g, c, {"y", "gx"}) : sigmoid_bounds(g, c, dt);
      run_case(g, c, dt, {"x"}, {"x"},
               [&](auto& v) { return op == "relu" ? relu(v[0]) : sigmoid(v[0]); }, b);
    });
  }
}

TEST_CASE("golden: add, mul (broadcasting) and scalar ops", "[golden][portable]") {
  Golden g("binary");
  for (auto& c : g.cases) {
    json p = g.params(c);
    std::string op = p["op"];
    if (op == "add" || op == "mul") {
      const bool is_add = op == "add";
      Forward f = [&](auto& v) { return is_add ? add(v[0], v[1]) : mul(v[0], v[1]); };
      // y: one rounding. g<a>: the n = numel(y)/numel(a) broadcast copies of gy (add) or of
      // gy*b (mul, one rounding each) summed in double and rounded to the dtype once
      // (cpu_backend.cpp sum_to): K = n (add; 0 when n = 1: a copy) or n + 1 (mul; 1 when n = 1).
      const double ny = double(g.get(c, "y").numel());
      auto k_grad = [&](const std::string& in) {
        const double n = ny / double(g.get(c, in).numel());
        return is_add ? (n == 1 ? 0 : n) : (n == 1 ? 1 : n + 1);
      };
      const std::map<std::string, double> K = {{"y", 1}, {"ga", k_grad("a")}, {"gb", k_grad("b")}};
      const Bounds abs_sums = abs_terms(g, c, {"a", "b"}, {"a", "b"}, f);
      both_dtypes([&](DType dt) {
        run_case(g, c, dt, {"a", "b"}, {"a", "b"}, f, gamma_bounds(abs_sums, K, dt));
      });
    } else {
      const double alpha = p["alpha"];
      const bool scale = op == "mul_scalar";
      auto f_alpha = [&](double a) -> Forward {
        return [=](auto& v) { return scale ? mul_scalar(v[0], a) : add_scalar(v[0], a); };
      };
      const Bounds abs_sums = abs_terms(g, c, {"x"}, {"x"}, f_alpha(std::abs(alpha)));
      both_dtypes([&](DType dt) {
        // y = x*alpha or x + alpha: one rounding, plus one more when alpha is not representable
        // in the dtype. gx = gy*alpha likewise; add's gx = gy, exact.
        const bool alpha_exact = dt == DType::F64 || double(float(alpha)) == alpha;
        const double k = 1 + (alpha_exact ? 0 : 1);
        const std::map<std::string, double> K = {{"y", k}, {"gx", scale ? k : 0}};
        run_case(g, c, dt, {"x"}, {"x"}, f_alpha(alpha), gamma_bounds(abs_sums, K, dt));
      });
    }
  }
}

TEST_CASE("golden: concat along channels", "[golden][portable]") {
  Golden g("concat");
  for (auto& c : g.cases)
    both_dtypes([&](DType dt) {  // copies: exact
      run_case(g, c, dt, {"x0", "x1", "x2"}, {"x0", "x1", "x2"},
               [&](auto& v) { return cat({v[0], v[1], v[2]}, 1); },
               zero_bounds(g, c, {"y", "gx0", "gx1", "gx2"}));
    });
}

TEST_CASE("golden: strided subsample", "[golden][portable]") {
  Golden g("subsample");
  for (auto& c : g.cases) {
    int64_t s = g.params(c)["step"];
    both_dtypes([&](DType dt) {  // copies (and zeros): exact
      run_case(g, c, dt, {"x"}, {"x"}, [&](auto& v) { return subsample(v[0], s); },
               zero_bounds(g, c, {"y", "gx"}));
    });
  }
}

TEST_CASE("golden: bilinear and nearest resize", "[golden][portable]") {
  Golden g("resize");
  for (auto& c : g.cases) {
    json p = g.params(c);
    std::string mode = p["mode"];
    int64_t oh = p["size"][0], ow = p["size"][1];
    Forward f = [&](auto& v) {
      return mode == "bilinear" ? resize_bilinear(v[0], oh, ow) : resize_nearest(v[0], oh, ow);
    };
    if (mode == "bilinear") {
      both_dtypes([&](DType dt) { run_case(g, c, dt, {"x"}, {"x"}, f, bilinear_bounds(g, c, dt)); });
    } else {
      // y copies (exact); gx sums the gy of the n outputs that read an input: n - 1 additions.
      const std::map<std::string, double> K = {{"y", 0}, {"gx", max_fan_in(g, c, f) - 1}};
      const Bounds abs_sums = abs_terms(g, c, {"x"}, {"x"}, f);
      both_dtypes([&](DType dt) {
        run_case(g, c, dt, {"x"}, {"x"}, f, gamma_bounds(abs_sums, K, dt));
      });
    }
  }
}

TEST_CASE("golden: max_pool2d", "[golden][portable]") {
  Golden g("max_pool2d");
  for (auto& c : g.cases) {
    json p = g.params(c);
    Pool2dParams pp{p["kernel"][0], p["kernel"][1], p["stride"][0],
                    p["stride"][1], p["padding"][0], p["padding"][1]};
    Forward f = [&](auto& v) { return max_pool2d(v[0], pp); };
    // y selects (exact); gx sums the gy of the n overlapping windows whose maximum an input is:
    // n - 1 additions, times the routing of |gy| through the argmax of the case's own x (no
    // ties: the inputs are distinct).
    const std::map<std::string, double> K = {{"y", 0}, {"gx", max_fan_in(g, c, f) - 1}};
    const Bounds routed = propagate64(g, c, {"x"}, {"x"}, f, false, abs_of(g.get(c, "gy")));
    both_dtypes([&](DType dt) {
      run_case(g, c, dt, {"x"}, {"x"}, f, gamma_bounds(routed, K, dt));
    });
  }
}

TEST_CASE("golden: softmax and log_softmax over channels", "[golden][portable]") {
  Golden g("softmax");
  for (auto& c : g.cases) {
    std::string op = g.params(c)["op"];
    const bool log_sm = op == "log_softmax";
    both_dtypes([&](DType dt) {
      run_case(g, c, dt, {"x"}, {"x"}, [&](auto& v) {
        return log_sm ? log_softmax_channels(v[0]) : softmax_channels(v[0]);
      }, softmax_bounds(g, c, log_sm, dt));
    });
  }
}

TEST_CASE("golden: weighted cross-entropy (SPEC 3)", "[golden][portable]") {
  Golden g("weighted_ce");
  for (auto& c : g.cases)
    both_dtypes([&](DType dt) {
      run_case(g, c, dt, {"logits", "target", "weight"}, {"logits"},
               [&](auto& v) { return weighted_cross_entropy(v[0], v[1], v[2]); },
               weighted_ce_bounds(g, c, dt), "loss");
    });
}

TEST_CASE("golden: argmax over channels", "[golden][portable]") {
  Golden g("argmax");
  for (auto& c : g.cases)
    for (DType dt : {DType::F32, DType::F64}) {  // a selection: exact
      Tensor y = argmax_channels(g.get(c, "x").to(dt));
      REQUIRE(y.dtype() == DType::I64);
      REQUIRE(y.to_vector<int64_t>() == g.get(c, "y").to_vector<int64_t>());
    }
}

TEST_CASE("golden: matmul and linear", "[golden][portable]") {
  Golden gm("matmul");
  for (auto& c : gm.cases) {
    Forward f = [](auto& v) { return matmul(v[0], v[1]); };
    // (M,K) @ (K,N): y sums K products, ga = gy @ b^T sums N, gb = a^T @ gy sums M.
    const Shape as = gm.get(c, "a").shape(), bs = gm.get(c, "b").shape();
    const std::map<std::string, double> K = {
        {"y", double(as[1])}, {"ga", double(bs[1])}, {"gb", double(as[0])}};
    const Bounds abs_sums = abs_terms(gm, c, {"a", "b"}, {"a", "b"}, f);
    both_dtypes([&](DType dt) {
      run_case(gm, c, dt, {"a", "b"}, {"a", "b"}, f, gamma_bounds(abs_sums, K, dt));
    });
  }
  Golden gl("linear");
  for (auto& c : gl.cases) {
    Forward f = [](auto& v) { return linear(v[0], v[1], v[2]); };
    // x (N,in), weight (out,in): y sums `in` products, then the bias is added: in + 1.
    // gx sums `out` products, gweight sums N; gbias sums N copies of gy in double, rounded
    // once (add's sum_to): N, or 0 when N = 1 (a copy).
    const Shape xs = gl.get(c, "x").shape(), ws = gl.get(c, "weight").shape();
    const double N = double(xs[0]);
    const std::map<std::string, double> K = {{"y", double(xs[1]) + 1},
                                             {"gx", double(ws[0])},
                                             {"gweight", N},
                                             {"gbias", N == 1 ? 0 : N}};
    const Bounds abs_sums = abs_terms(gl, c, {"x", "weight", "bias"}, {"x", "weight", "bias"}, f);
    both_dtypes([&](DType dt) {
      run_case(gl, c, dt, {"x", "weight", "bias"}, {"x", "weight", "bias"}, f,
               gamma_bounds(abs_sums, K, dt));
    });
  }
}

namespace {
// One Adam state (parameter, moments) as Bounded values. Both implementations hold them in
// float32 and compute the bias corrections in double (both from the same double parameters, so
// the exact trajectories agree).
//  ours (cpu_backend.cpp adam_step): b1 = T(beta1), one_b1 = T(1 - beta1) (same for beta2),
//    step_size = T(lr/bc1), bc2_sqrt = T(sqrt(bc2)), eps = T(eps); m = m*b1 + g*one_b1;
//    v = v*b2 + g*g*one_b2; denom = sqrt(v)/bc2_sqrt + eps; p = p - step_size*(m/denom).
//  torch 1.13 _single_tensor_adam, float32: m.mul_(beta1).add_(g, alpha=1-beta1);
//    v.mul_(beta2).addcmul_(g, g, value=1-beta2) (= v*b2 + (1-b2)*g*g); denom =
//    (v.sqrt() / bc2_sqrt).add_(eps); p.addcdiv_(m, denom, value=-step_size) (= p + (-ss)*m/denom),
//    the Python scalars rounded to float. Division by the scalar bc2_sqrt is modelled both as a
//    division and as a multiplication by a float reciprocal; the larger bound is used.
struct AdamState {
  Bounded p, m, v;
};

void adam_model_step(AdamState& s, double grad, const json& hp, int t, bool torch) {
  const double u = kU32;
  const double lr = hp["lr"], beta1 = hp["beta1"], beta2 = hp["beta2"], eps = hp["eps"];
  const Bounded B1 = constant(beta1, kU64), B2 = constant(beta2, kU64), one = constant(1, kU64);
  const Bounded bc1 = one - pow(B1, double(t)), bc2 = one - pow(B2, double(t));
  const Bounded b1 = to_format(B1, u), one_b1 = to_format(one - B1, u);
  const Bounded b2 = to_format(B2, u), one_b2 = to_format(one - B2, u);
  const Bounded g = exact(grad, u), epsf = to_format(constant(eps, kU64), u);
  const Bounded step_size = to_format(constant(lr, kU64) / bc1, u);
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
}  // namespace

// Adam runs in f32 like real training; the reference is torch's own float32 Adam, so both
// sides' rounding counts: bound = error(ours) + error(torch), each from the exact-arithmetic
// Adam trajectory on the same float32 inputs, carried through the 5 steps.
TEST_CASE("golden: Adam, 5 steps with bias correction", "[golden][portable]") {
  Golden g("adam");
  for (auto& c : g.cases) {
    INFO("case " << c);
    json p = g.params(c);
    Tensor w = g.get(c, "p0").clone();
    w.set_requires_grad(true);
    nn::Adam opt({w}, {p["lr"], p["beta1"], p["beta2"], p["eps"]});
    const auto p0 = g.get(c, "p0").to_vector<double>();
    std::vector<AdamState> ours, torch;
    for (double x : p0) {
      ours.push_back({exact(x, kU32), exact(0, kU32), exact(0, kU32)});
      torch.push_back(ours.back());
    }
    for (int k = 1; k <= 5; ++k) {
      INFO("step " << k);
      const Tensor gk = g.get(c, "g" + std::to_string(k));
      w.set_grad(gk);
      opt.step();
      const auto gv = gk.to_vector<double>();
      std::vector<double> bound(p0.size());
      for (size_t i = 0; i < p0.size(); ++i) {
        adam_model_step(ours[i], gv[i], p, k, false);
        adam_model_step(torch[i], gv[i], p, k, true);
        bound[i] = ours[i].p.e + torch[i].p.e;
      }
      const std::string role = "p" + std::to_string(k);
      check(g, c, role, DType::F32, w, {{role, f64_tensor(bound, w.shape())}});
    }
    std::vector<double> bm, bv;
    for (size_t i = 0; i < p0.size(); ++i)
      bm.push_back(ours[i].m.e + torch[i].m.e), bv.push_back(ours[i].v.e + torch[i].v.e);
    check(g, c, "m5", DType::F32, opt.exp_avg(0), {{"m5", f64_tensor(bm, w.shape())}});
    check(g, c, "v5", DType::F32, opt.exp_avg_sq(0), {{"v5", f64_tensor(bv, w.shape())}});
    REQUIRE(opt.steps(0) == 5);
  }
}
