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
// for our f64 path and torch's float64 references. The bounds hold for any summation order, with
// or without fused multiply-adds, so the tests pass on AVX2, AVX-512, NEON and the portable
// kernels alike (tests/README.md). Three families, their bounds in tests/bounds.h (shared with
// the CPU-vs-CUDA parity tests):
//  - exact ops (relu, concat, subsample, nearest resize and max-pool forward, argmax): bound 0;
//  - linear ops (convolutions, matmul, linear, add/mul, scalar ops, nearest resize and max-pool
//    backward): gamma(K) * (sum of |terms|), the sum of |terms| obtained by the "abs trick"
//    (the same op in f64 on |inputs|, back-propagating |gy|), K derived per quantity below;
//  - composite ops (sigmoid, softmax, log_softmax, cross-entropy, batch norm, bilinear resize,
//    Adam): running error analysis (tests/error_bound.h) of our kernels' and torch's operation
//    order.
// ST_BOUND_REPORT=1 prints the worst |err|/bound of every check.
#include <cstdio>
#include <map>
#include <nlohmann/json.hpp>

#include "bounds.h"
#include "nn/optim.h"
#include "tensor/safetensors.h"
#include "test_util.h"

using namespace st;
using json = nlohmann::json;
using test::Bounded;
using test::Bounds;
using test::exact;
using test::Forward;
using test::kU32;
using test::kU64;
using test::Named;

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
  // The case's named inputs.
  Named named(const std::string& c, const std::vector<std::string>& inputs) const {
    Named out;
    for (auto& n : inputs) out.emplace_back(n, get(c, n));
    return out;
  }
  Tensor gy(const std::string& c) const { return has(c, "gy") ? get(c, "gy") : Tensor(); }
};

double unit_roundoff(DType dt) { return dt == DType::F32 ? kU32 : kU64; }

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

// Runs `forward` on the named inputs in `dt`, checks the output, then back-propagates gy (1 for
// a loss) and checks g<input> for every differentiable input, each within its bound.
void run_case(const Golden& g, const std::string& c, DType dt, const std::vector<std::string>& inputs,
              const std::vector<std::string>& differentiable, const Forward& forward,
              const Bounds& bounds, const std::string& out_role = "y") {
  INFO("case " << c << " dtype " << dtype_name(dt));
  std::vector<Tensor> in = test::leaves(g.named(c, inputs), differentiable, dt, false);
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

// The abs trick on the case's own inputs and gy (tests/bounds.h).
Bounds abs_terms(const Golden& g, const std::string& c, const std::vector<std::string>& inputs,
                 const std::vector<std::string>& differentiable, const Forward& forward) {
  return test::abs_terms(forward, g.named(c, inputs), differentiable, g.gy(c));
}

// Linear ops: ours (u of dt) plus torch's f64 reference (u = 2^-53), gamma(K) each.
Bounds gamma_bounds(const Bounds& abs_sums, const std::map<std::string, double>& K, DType dt) {
  return test::gamma_bounds(abs_sums, K, unit_roundoff(dt), kU64);
}

// Exact ops: every listed role must match the reference exactly.
Bounds zero_bounds(const Golden& g, const std::string& c, const std::vector<std::string>& roles) {
  std::map<std::string, Shape> shapes;
  for (auto& r : roles) shapes[r] = g.get(c, r).shape();
  return test::zero_bounds(shapes);
}

// The sum of two implementations' bounds, role by role.
Bounds plus(const Bounds& a, const Bounds& b) {
  Bounds out;
  for (auto& [role, t] : a) out[role] = add(t, b.at(role));
  return out;
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

// ---------------- composite ops: ours in dt plus torch in f64 (tests/bounds.h) ----------------
Bounds sigmoid_bounds(const Golden& g, const std::string& c, DType dt) {
  const Tensor x = g.get(c, "x"), gy = g.get(c, "gy");
  return plus(test::sigmoid_bounds(x, gy, unit_roundoff(dt), false),
              test::sigmoid_bounds(x, gy, kU64, true));
}

Bounds softmax_bounds(const Golden& g, const std::string& c, bool log_sm, DType dt) {
  const Tensor x = g.get(c, "x"), gy = g.get(c, "gy");
  return plus(test::softmax_bounds(x, gy, log_sm, unit_roundoff(dt), false),
              test::softmax_bounds(x, gy, log_sm, kU64, true));
}

Bounds weighted_ce_bounds(const Golden& g, const std::string& c, DType dt) {
  const Tensor l = g.get(c, "logits"), t = g.get(c, "target"), w = g.get(c, "weight");
  double v_ours = 0, v_torch = 0;
  const Bounds ours = test::weighted_ce_bounds(l, t, w, 1.0, unit_roundoff(dt), false, &v_ours);
  const Bounds torch = test::weighted_ce_bounds(l, t, w, 1.0, kU64, true, &v_torch);
  REQUIRE(std::abs(v_ours - v_torch) <= 1e-12 * std::abs(v_ours));  // same exact value
  return plus(ours, torch);
}

Bounds batch_norm_bounds(const Golden& g, const std::string& c, bool frozen, double eps, DType dt) {
  const Tensor x = g.get(c, "x"), gy = g.get(c, "gy"), w = g.get(c, "weight"), b = g.get(c, "bias");
  const Tensor mean = frozen ? g.get(c, "mean") : Tensor(), var = frozen ? g.get(c, "var") : Tensor();
  return plus(test::batch_norm_bounds(x, gy, w, b, eps, frozen, mean, var, unit_roundoff(dt), false),
              test::batch_norm_bounds(x, gy, w, b, eps, frozen, mean, var, kU64, true));
}

Bounds bilinear_bounds(const Golden& g, const std::string& c, DType dt) {
  const Tensor x = g.get(c, "x"), gy = g.get(c, "gy");
  return plus(test::bilinear_bounds(x, gy, unit_roundoff(dt), dt == DType::F32),
              test::bilinear_bounds(x, gy, kU64, false));
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
    // y: Cin/groups * kh * kw products plus the bias; gx: the taps that reach an input pixel;
    // gw: N*OH*OW products (+1: summed in float, then double, then rounded); gb: N*OH*OW terms
    // (test::conv2d_k).
    const auto K = test::conv2d_k(g.get(c, "w").shape(), g.get(c, "y").shape(), p, bias);
    const Bounds abs_sums = abs_terms(g, c, in, in, f);
    both_dtypes([&](DType dt) { run_case(g, c, dt, in, in, f, gamma_bounds(abs_sums, K, dt)); });
  }
}

TEST_CASE("golden: conv_transpose2d", "[golden][portable]") {
  Golden g("conv_transpose2d");
  for (auto& c : g.cases) {
    Conv2dParams p = conv_params(g.params(c));
    Forward f = [&](auto& v) { return conv_transpose2d(v[0], v[1], v[2], p); };
    // y: an output pixel meets at most ceil(kh/sh) * ceil(kw/sw) taps of each of the Cin/groups
    //    input channels of its group, plus the bias (test::conv_transpose2d_k).
    const std::map<std::string, double> K = {
        {"y", test::conv_transpose2d_k(g.get(c, "w").shape(), p)}};
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
      // (cpu/elementwise.cpp sum_to): K = n (add; 0 when n = 1: a copy) or n + 1 (mul; 1 when n = 1).
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
      const std::map<std::string, double> K = {{"y", 0}, {"gx", test::max_fan_in(f, g.named(c, {"x"}), "x") - 1}};
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
    const std::map<std::string, double> K = {{"y", 0}, {"gx", test::max_fan_in(f, g.named(c, {"x"}), "x") - 1}};
    const Bounds routed =
        test::propagate64(f, g.named(c, {"x"}), {"x"}, false, test::abs_of(g.get(c, "gy")));
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
    const test::AdamHyper hp{p["lr"], p["beta1"], p["beta2"], p["eps"]};
    std::vector<test::AdamState> ours, torch;
    for (double x : p0) {
      ours.push_back(test::adam_start(x, kU32));
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
        test::adam_model_step(ours[i], exact(gv[i], kU32), hp, k, false);
        test::adam_model_step(torch[i], exact(gv[i], kU32), hp, k, true);
        bound[i] = ours[i].p.e + torch[i].p.e;
      }
      const std::string role = "p" + std::to_string(k);
      check(g, c, role, DType::F32, w, {{role, test::f64_tensor(bound, w.shape())}});
    }
    std::vector<double> bm, bv;
    for (size_t i = 0; i < p0.size(); ++i)
      bm.push_back(ours[i].m.e + torch[i].m.e), bv.push_back(ours[i].v.e + torch[i].v.e);
    check(g, c, "m5", DType::F32, opt.exp_avg(0), {{"m5", test::f64_tensor(bm, w.shape())}});
    check(g, c, "v5", DType::F32, opt.exp_avg_sq(0), {{"v5", test::f64_tensor(bv, w.shape())}});
    REQUIRE(opt.steps(0) == 5);
  }
}
