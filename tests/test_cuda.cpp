// CPU-vs-CUDA parity for every op, forward and backward, over odd and non-contiguous shapes; the
// student's forward and one partial distillation step, op by op; the pretrained student and the
// seeded teacher on the GPU against their float64 golden references; partial backward on the
// GPU; the caching allocator. Without a GPU (or in a build without the CUDA backend) every test
// that needs one is reported as skipped; the parity suite itself also runs without one, on the
// CPU's float32 against its float64 path ("cuda parity bounds: ..."), which checks its bounds.
//
// Tolerances (tests/README.md). The two backends are implementations of the same exact function
// in the same format that differ in summation order (cuDNN's and cuBLAS's algorithms, atomics,
// parallel reductions) and in fused multiply-adds. Each is within a derived bound of the exact
// result on the same inputs, so |gpu - cpu| <= bound(cpu) + bound(gpu) element by element, each
// bound the one the golden tests use (tests/bounds.h): gamma(K) * sum|terms| for linear ops (the
// abs trick), running error analysis of the (shared) operation order for composite ones. Those
// bounds hold for any summation order, with or without FMA, which covers cuDNN's GEMM-like and
// direct algorithms but not its FFT and Winograd ones (their transforms have no element-wise
// bound), so this file sets ST_CUDNN_DIRECT_SUMS=1; and ST_CUDA_TF32=0, so products are full
// float32 ones (TF32 would round each operand to 11 significant bits first).
// Exact where the computation is exact: copies, dtype conversions, relu, max-pool's and nearest
// resize's forward, concat, subsample, argmax, and the detection ops whose per-element math the
// backends share bit for bit (ROIAlign, NMS, top-k, mask paste: kernels/common/roi_align.h and
// detect_math.h, compiled without contraction on both sides).
// Whole networks have no cheap element-wise bound (through ~20 layers a rigorous one is useless),
// so: the student's partial-distillation step is teacher-forced (every op runs on both backends
// from the CPU's inputs and is held to its own bound, its gradients too, then Adam's step); and the
// pretrained student and the seeded teacher run on the GPU against the float64 references with
// the bounds of the CPU tests (test_student.cpp, test_teacher_backbone.cpp).
// Those shared per-element formulas are checked against float64 references written from their
// definitions in test_reference_f64.cpp (a formula error common to both backends shows there).
// TF32, the production default for float32 convolutions, has a test of its own ([cuda-tf32],
// hidden, run by the "cuda-tf32: ..." ctest entry in a process with TF32 on), held to a bound for
// operands cut to TF32; CMakeLists.txt also runs the GPU tests once under ST_CUDNN_BENCHMARK=1 and
// once under ST_CUDA_CACHE=0.
// ST_BOUND_REPORT=1 prints the worst |err|/bound of every comparison.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>

#include "bounds.h"
#include "golden_checks.h"
#include "nn/distill.h"
#include "nn/student.h"
#include "teacher_port/detect_ops.h"
#include "teacher_port/glue.h"
#include "teacher_port/proposals.h"
#include "test_util.h"

using namespace st;
using Catch::Matchers::Contains;
using test::Bounds;
using test::Forward;
using test::kU32;
using test::kU64;
using test::Named;

namespace {

const Device kGpu = Device::cuda(0);

// Skips without a usable GPU, fails instead under ST_REQUIRE_GPU=1 (tests/test_util.h).
#define REQUIRE_GPU() ST_REQUIRE_CUDA_GPU()

Tensor gpu(const Tensor& t) { return t.to(kGpu); }
Tensor cpu(const Tensor& t) { return t.to(Device::cpu()); }

// Where an implementation runs and in which format.
struct Side {
  Device device;
  DType dtype;
  double u() const { return dtype == DType::F32 ? kU32 : kU64; }
  std::string name() const { return device.str() + "/" + dtype_name(dtype); }
};
// The two implementations a comparison holds against each other. Teacher forcing feeds side a's
// values to both.
struct Sides {
  Side a, b;
};
Sides cpu_gpu() { return {{Device::cpu(), DType::F32}, {kGpu, DType::F32}}; }
Sides cpu_gpu64() { return {{Device::cpu(), DType::F64}, {kGpu, DType::F64}}; }
// The self-check without a GPU: the CPU's float32 against its float64 path, each side within its
// own bound of the exact result, so within their sum of each other.
Sides f32_f64() { return {{Device::cpu(), DType::F32}, {Device::cpu(), DType::F64}}; }

const Tensor& input(const Named& in, const std::string& name) {
  for (auto& [n, t] : in)
    if (n == name) return t;
  FAIL("no input named " << name);
  static Tensor none;
  return none;
}

// How a case's bound is derived (tests/bounds.h). Roles: "y" and "g<input name>".
struct Rule {
  enum Kind { Exact, Linear, Routed, Composite } kind = Exact;
  // Linear, Routed: K per role, for a side's format and the output's shape. Linear takes the sums
  // of |terms| from the op on |inputs|; Routed from the op on the inputs themselves, |gy|
  // back-propagated (max-pool: its routing is its own argmax).
  std::function<std::map<std::string, double>(DType, const Shape&)> K;
  // Composite: one side's bounds for its format, on the inputs and gy (side a's values).
  std::function<Bounds(const Side&, const Named&, const Tensor&)> composite;
};
Rule exact_rule() { return {}; }
Rule linear_rule(const std::map<std::string, double>& K) {
  Rule r;
  r.kind = Rule::Linear;
  r.K = [K](DType, const Shape&) { return K; };
  return r;
}
Rule linear_by(std::function<std::map<std::string, double>(DType, const Shape&)> K) {
  Rule r;
  r.kind = Rule::Linear;
  r.K = std::move(K);
  return r;
}
Rule routed(const std::map<std::string, double>& K) {
  Rule r = linear_rule(K);
  r.kind = Rule::Routed;
  return r;
}
Rule composite(std::function<Bounds(const Side&, const Named&, const Tensor&)> f) {
  Rule r;
  r.kind = Rule::Composite;
  r.composite = std::move(f);
  return r;
}

// One op run on both sides, from the same inputs.
struct OpRun {
  Sides s;
  Forward f;
  Named in;
  std::vector<std::string> diff;
  Rule rule;
  std::vector<Tensor> la, lb;  // the leaves on each side
  Tensor ya, yb;
};

// Private leaves of the inputs on a side: floating ones in its format.
std::vector<Tensor> on_side(const Named& in, const std::vector<std::string>& diff, const Side& s) {
  std::vector<Tensor> out;
  for (auto& [name, v] : in) {
    Tensor t = is_floating(v.dtype()) ? v.detach().to(s.dtype) : v.detach();
    t = t.to(s.device).clone();
    if (test::contains(diff, name)) t.set_requires_grad(true);
    out.push_back(t);
  }
  return out;
}

// The sum of both sides' bounds, for the output (backward: false) or for the gradients of the
// differentiable inputs, gy back-propagated (backward: true).
Bounds bounds(const OpRun& r, const Tensor& gy, bool backward) {
  const std::vector<std::string> diff = backward ? r.diff : std::vector<std::string>{};
  Bounds out;
  switch (r.rule.kind) {
    case Rule::Exact: {
      std::map<std::string, Shape> shapes{{"y", r.ya.shape()}};
      for (auto& [name, v] : r.in)
        if (test::contains(diff, name)) shapes["g" + name] = v.shape();
      return test::zero_bounds(shapes);
    }
    case Rule::Linear:
    case Rule::Routed: {
      const Bounds sums =
          r.rule.kind == Rule::Linear
              ? test::abs_terms(r.f, r.in, diff, gy)
              : test::propagate64(r.f, r.in, diff, false, gy.defined() ? test::abs_of(gy) : Tensor());
      const auto Ka = r.rule.K(r.s.a.dtype, r.ya.shape()), Kb = r.rule.K(r.s.b.dtype, r.ya.shape());
      for (auto& [role, t] : sums) {
        INFO("role " << role);
        REQUIRE((Ka.count(role) && Kb.count(role)));
        out[role] = mul_scalar(t, test::gamma(Ka.at(role), r.s.a.u()) + test::gamma(Kb.at(role), r.s.b.u()));
      }
      return out;
    }
    case Rule::Composite: {
      const Tensor g = gy.defined() ? gy : Tensor::zeros(r.ya.shape(), DType::F64);
      const Bounds a = r.rule.composite(r.s.a, r.in, g), b = r.rule.composite(r.s.b, r.in, g);
      for (auto& [role, t] : a) out[role] = add(t, b.at(role));
      return out;
    }
  }
  return out;
}

// |b - a| <= bound, element by element.
void check_role(const OpRun& r, const std::string& role, const Tensor& a, const Tensor& b,
                const Bounds& bound) {
  INFO(role << ": " << r.s.b.name() << " against " << r.s.a.name());
  REQUIRE(a.defined());
  REQUIRE(b.defined());
  REQUIRE(bound.count(role));
  ST_REQUIRE_WITHIN(cpu(b), cpu(a), bound.at(role));
  if (std::getenv("ST_BOUND_REPORT")) {
    auto d = test::compare_within(cpu(b), cpu(a), bound.at(role));
    std::printf("bound-report parity %-10s %s vs %s worst |err|/bound %.3g (|err| %.3g, bound %.3g)\n",
                role.c_str(), r.s.b.name().c_str(), r.s.a.name().c_str(), d.worst_ratio, d.err,
                d.bound);
  }
}

// Runs f on both sides and compares the outputs.
OpRun run_op(const Sides& s, Forward f, Named in, std::vector<std::string> diff, Rule rule) {
  OpRun r{s, std::move(f), std::move(in), std::move(diff), std::move(rule), {}, {}, {}, {}};
  r.la = on_side(r.in, r.diff, s.a);
  r.lb = on_side(r.in, r.diff, s.b);
  r.ya = r.f(r.la);
  r.yb = r.f(r.lb);
  REQUIRE(r.yb.device() == s.b.device);
  check_role(r, "y", r.ya, r.yb, bounds(r, Tensor(), false));
  return r;
}

// Back-propagates gy (side a's values) on both sides and compares every input gradient.
void check_backward(OpRun& r, const Tensor& gy) {
  r.ya.backward(gy.to(r.s.a.dtype).to(r.s.a.device));
  r.yb.backward(gy.to(r.s.b.dtype).to(r.s.b.device));
  const Bounds b = bounds(r, gy, true);
  for (size_t i = 0; i < r.in.size(); ++i)
    if (r.la[i].requires_grad())
      check_role(r, "g" + r.in[i].first, r.la[i].grad(), r.lb[i].grad(), b);
}

// The output and, when some input is differentiable, the gradients for gy (default: fixed random
// float32 values, exact in either format).
void parity(const Sides& s, const Forward& f, const Named& in, const std::vector<std::string>& diff,
            const Rule& rule, Tensor gy = Tensor()) {
  OpRun r = run_op(s, f, in, diff, rule);
  if (diff.empty()) return;
  if (!gy.defined()) gy = Tensor::randn(r.ya.shape(), 99);
  check_backward(r, gy);
}

Tensor randn(const Shape& s, uint64_t seed, double scale = 1.0) {
  return Tensor::randn(s, seed) * scale;
}

// ---------------- the composite ops' bounds, one side ----------------
Rule sigmoid_rule() {
  return composite([](const Side& s, const Named& in, const Tensor& gy) {
    return test::sigmoid_bounds(input(in, "x"), gy, s.u(), false);
  });
}
Rule softmax_rule(bool log_sm) {
  return composite([log_sm](const Side& s, const Named& in, const Tensor& gy) {
    return test::softmax_bounds(input(in, "x"), gy, log_sm, s.u(), false);
  });
}
Rule bilinear_rule() {
  return composite([](const Side& s, const Named& in, const Tensor& gy) {
    return test::bilinear_bounds(input(in, "x"), gy, s.u(), s.dtype == DType::F32);
  });
}
// Whether the side sums batch-norm statistics in compensated float (the CUDA backend on float32
// inputs, kernels/cuda/image.cu) rather than in double (the CPU, and f64 anywhere).
bool float_bn_stats(const Side& s) { return s.device.is_cuda() && s.dtype == DType::F32; }
Rule batch_norm_rule(double eps, bool frozen) {
  return composite([eps, frozen](const Side& s, const Named& in, const Tensor& gy) {
    return test::batch_norm_bounds(input(in, "x"), gy, input(in, "weight"), input(in, "bias"), eps,
                                   frozen, frozen ? input(in, "mean") : Tensor(),
                                   frozen ? input(in, "var") : Tensor(), s.u(), false,
                                   float_bn_stats(s));
  });
}
Rule weighted_ce_rule() {
  return composite([](const Side& s, const Named& in, const Tensor& gy) {
    Bounds b = test::weighted_ce_bounds(input(in, "logits"), input(in, "target"), input(in, "weight"),
                                        gy.to_vector<double>()[0], s.u(), false);
    return Bounds{{"y", b.at("loss")}, {"glogits", b.at("glogits")}};
  });
}
Rule conv2d_rule(const Shape& w, const Conv2dParams& p, bool bias) {
  return linear_by([w, p, bias](DType, const Shape& y) { return test::conv2d_k(w, y, p, bias); });
}

// ---------------- the parity suite: every op, on a pair of sides ----------------
void elementwise_cases(const Sides& s) {
  parity(s, [](auto& v) { return relu(v[0]); }, {{"x", randn({2, 3, 17, 9}, 1)}}, {"x"}, exact_rule());
  parity(s, [](auto& v) { return sigmoid(v[0]); }, {{"x", randn({2, 3, 17, 9}, 2)}}, {"x"},
         sigmoid_rule());
  // y: 0.7 rounded to the format (float), the product, the addition: 3 roundings on
  // |x|*0.7 + 1.5; gx = gy * T(0.7): 2.
  parity(s, [](auto& v) { return v[0] * 0.7 + 1.5; }, {{"x", randn({33}, 3)}}, {"x"},
         linear_rule({{"y", 3}, {"gx", 2}}));
  // (2,3,5,4) + (3,1,1) broadcast, times a transposed operand. y: 2 roundings; ga = gy*c: 1; gb:
  // 40 broadcast copies of gy*c summed in double and rounded: 41; gc = gy*(a+b): 2.
  parity(s, [](auto& v) { return add(v[0], v[1]) * v[2].transpose(2, 3); },
         {{"a", randn({2, 3, 5, 4}, 4)}, {"b", randn({3, 1, 1}, 5)}, {"c", randn({2, 3, 4, 5}, 6)}},
         {"a", "b", "c"}, linear_rule({{"y", 2}, {"ga", 1}, {"gb", 41}, {"gc", 2}}));
  // A strided view times a (1,1,3,1) broadcast: ga 1 rounding (then scattered back: exact); gb 10
  // copies summed: 11.
  parity(s, [](auto& v) { return mul(v[0].slice(3, 0, 9, 2), v[1]); },
         {{"a", randn({1, 2, 3, 9}, 7)}, {"b", randn({1, 1, 3, 1}, 8)}}, {"a", "b"},
         linear_rule({{"y", 1}, {"ga", 1}, {"gb", 11}}));
  // mean of n = 1001: the sum in double (gamma(n - 1) at 2^-53), rounded to the format, times
  // T(1/n) (1/n rounded in double, then to the format) and rounded: float32 within gamma(4) of
  // mean|x| (1000 * 2^-53 is far below 2^-24), float64 within gamma(n + 2). gx = gy * T(1/n): 2.
  parity(s, [](auto& v) { return mean(v[0]); }, {{"x", randn({7, 11, 13}, 9)}}, {"x"},
         linear_by([](DType dt, const Shape&) {
           return std::map<std::string, double>{{"y", dt == DType::F32 ? 4 : 1003}, {"gx", 2}};
         }));
}

// The convolution cases: kernel shapes, strides, groups, 1x1 spatial, uneven strides.
struct ConvCase {
  Shape x, w;
  Conv2dParams p;
};
const std::vector<ConvCase>& conv_cases() {
  static const std::vector<ConvCase> c = {
      {{2, 3, 13, 11}, {8, 3, 3, 3}, {1, 1, 1, 1, 1}},
      {{1, 8, 9, 16}, {8, 8, 1, 3}, {1, 1, 0, 1, 1}},
      {{1, 8, 16, 9}, {6, 8, 3, 1}, {1, 1, 1, 0, 1}},
      {{2, 4, 15, 15}, {6, 4, 3, 3}, {2, 2, 1, 1, 1}},
      {{1, 4, 10, 12}, {6, 2, 3, 3}, {1, 1, 1, 1, 2}},     // groups 2
      {{1, 5, 1, 1}, {7, 5, 1, 1}, {1, 1, 0, 0, 1}},       // 1x1 spatial
      {{1, 16, 24, 40}, {32, 16, 3, 3}, {1, 2, 1, 1, 1}},  // uneven strides
  };
  return c;
}

void conv_case(const Sides& s, size_t i) {
  const ConvCase& c = conv_cases()[i];
  INFO("conv case " << i);
  parity(s, [&](auto& v) { return conv2d(v[0], v[1], v[2], c.p); },
         {{"x", randn(c.x, 20 + i)}, {"w", randn(c.w, 40 + i, 0.3)}, {"b", randn({c.w[0]}, 60 + i)}},
         {"x", "w", "b"}, conv2d_rule(c.w, c.p, true));
}

void conv_cases(const Sides& s) {
  for (size_t i = 0; i < conv_cases().size(); ++i) conv_case(s, i);
  // A non-contiguous input is made contiguous by the op layer, on the device.
  const Conv2dParams p{1, 1, 1, 1, 1};
  parity(s, [&](auto& v) { return conv2d(v[0].transpose(2, 3), v[1], v[2], p); },
         {{"x", randn({1, 4, 9, 7}, 90)}, {"w", randn({5, 4, 3, 3}, 91, 0.3)}, {"b", randn({5}, 92)}},
         {"x", "w", "b"}, conv2d_rule({5, 4, 3, 3}, p, true));
}

void conv_transpose_cases(const Sides& s) {
  Conv2dParams p{2, 2, 1, 1, 1};
  p.output_pad_h = p.output_pad_w = 1;
  const Tensor x = randn({2, 6, 7, 5}, 1);
  parity(s, [&](auto& v) { return conv_transpose2d(v[0], v[1], v[2], p); },
         {{"x", x}, {"w", randn({6, 4, 3, 3}, 2, 0.3)}, {"b", randn({4}, 3)}}, {},
         linear_rule({{"y", test::conv_transpose2d_k({6, 4, 3, 3}, p)}}));
  const Conv2dParams g{2, 2, 0, 0, 2};
  parity(s, [&](auto& v) { return conv_transpose2d(v[0], v[1], v[2], g); },
         {{"x", x}, {"w", randn({6, 3, 2, 2}, 4, 0.3)}, {"b", randn({6}, 5)}}, {},
         linear_rule({{"y", test::conv_transpose2d_k({6, 3, 2, 2}, g)}}));
}

void batch_norm_cases(const Sides& s) {
  const std::vector<std::string> diff = {"x", "weight", "bias"};
  auto bn = [](auto& v) { return batch_norm(v[0], v[1], v[2], 1e-5); };
  parity(s, bn, {{"x", randn({3, 5, 9, 7}, 1, 2.0)}, {"weight", randn({5}, 2)}, {"bias", randn({5}, 3)}},
         diff, batch_norm_rule(1e-5, false));
  // One pixel per channel.
  parity(s, bn, {{"x", randn({1, 4, 1, 1}, 4)}, {"weight", randn({4}, 5)}, {"bias", randn({4}, 6)}},
         diff, batch_norm_rule(1e-5, false));
  // A large plane: split reductions across many blocks.
  parity(s, bn,
         {{"x", randn({1, 3, 181, 243}, 7, 3.0)}, {"weight", randn({3}, 8)}, {"bias", randn({3}, 9)}},
         diff, batch_norm_rule(1e-5, false));
  parity(s, [](auto& v) { return batch_norm_frozen(v[0], v[1], v[2], v[3], v[4], 1e-5); },
         {{"x", randn({2, 5, 6, 7}, 12)},
          {"weight", randn({5}, 13)},
          {"bias", randn({5}, 14)},
          {"mean", randn({5}, 10)},
          {"var", Tensor::uniform({5}, 0.5, 2.0, 11)}},
         diff, batch_norm_rule(1e-5, true));
}

void resample_cases(const Sides& s) {
  parity(s, [](auto& v) { return resize_bilinear(v[0], 23, 37); }, {{"x", randn({2, 3, 9, 14}, 1)}},
         {"x"}, bilinear_rule());
  parity(s, [](auto& v) { return resize_bilinear(v[0], 5, 4); }, {{"x", randn({1, 2, 17, 13}, 2)}},
         {"x"}, bilinear_rule());
  // Nearest: y copies (exact); gx sums the gy of the n outputs that read an input: n - 1 additions.
  for (auto [x, oh, ow] : {std::tuple{randn({2, 3, 10, 14}, 3), 20, 28}, std::tuple{randn({1, 2, 15, 11}, 4), 7, 5}}) {
    Forward f = [oh = oh, ow = ow](auto& v) { return resize_nearest(v[0], oh, ow); };
    const Named in = {{"x", x}};
    parity(s, f, in, {"x"}, linear_rule({{"y", 0}, {"gx", test::max_fan_in(f, in, "x") - 1}}));
  }
  // Max-pool: y selects (exact); gx sums the gy of the overlapping windows whose maximum an input
  // is, routed by the argmax of the inputs, which must then be the same on both sides: no ties.
  const Pool2dParams p{3, 3, 2, 2, 1, 1};
  const Tensor xp = randn({2, 3, 11, 10}, 5);
  auto xv = xp.to_vector<float>();
  std::sort(xv.begin(), xv.end());
  REQUIRE(std::adjacent_find(xv.begin(), xv.end()) == xv.end());
  Forward pool = [&](auto& v) { return max_pool2d(v[0], p); };
  parity(s, pool, {{"x", xp}}, {"x"},
         routed({{"y", 0}, {"gx", test::max_fan_in(pool, {{"x", xp}}, "x") - 1}}));
  parity(s, [](auto& v) { return cat({v[0], v[1]}, 1); },
         {{"a", randn({2, 3, 4, 5}, 6)}, {"b", randn({2, 2, 4, 5}, 7)}}, {"a", "b"}, exact_rule());
  parity(s, [](auto& v) { return subsample(v[0], 2); }, {{"x", randn({1, 3, 9, 8}, 8)}}, {"x"},
         exact_rule());
}

void softmax_cases(const Sides& s) {
  parity(s, [](auto& v) { return softmax_channels(v[0]); }, {{"x", randn({2, 9, 7, 13}, 1, 3.0)}},
         {"x"}, softmax_rule(false));
  parity(s, [](auto& v) { return log_softmax_channels(v[0]); }, {{"x", randn({2, 9, 7, 13}, 2, 3.0)}},
         {"x"}, softmax_rule(true));
  const Tensor target = Tensor::uniform({2, 7, 13}, 0, 9, 3).to(DType::I64);
  const Tensor weight = Tensor::uniform({2, 7, 13}, 1, 5, 4);
  parity(s, [](auto& v) { return weighted_cross_entropy(v[0], v[1], v[2]); },
         {{"logits", randn({2, 9, 7, 13}, 5, 2.0)}, {"target", target}, {"weight", weight}},
         {"logits"}, weighted_ce_rule());
}

void matmul_cases(const Sides& s) {
  const std::vector<std::string> ab = {"a", "b"};
  auto mm = [](auto& v) { return matmul(v[0], v[1]); };
  // (M,K) @ (K,N): y sums K products, ga = gy @ b^T sums N, gb = a^T @ gy sums M.
  parity(s, mm, {{"a", randn({7, 5}, 1)}, {"b", randn({5, 9}, 2)}}, ab,
         linear_rule({{"y", 5}, {"ga", 9}, {"gb", 7}}));
  parity(s, [](auto& v) { return matmul(v[0].transpose(0, 1), v[1].transpose(0, 1)); },
         {{"a", randn({5, 7}, 3)}, {"b", randn({9, 5}, 4)}}, ab, linear_rule({{"y", 5}, {"ga", 9}, {"gb", 7}}));
  // Neither layout: copied first.
  parity(s, [](auto& v) { return matmul(v[0].slice(1, 0, 10, 2), v[1]); },
         {{"a", randn({4, 10}, 5)}, {"b", randn({5, 3}, 6)}}, ab, linear_rule({{"y", 5}, {"ga", 3}, {"gb", 4}}));
  // x (N,in) @ weight^T + bias: y in + 1; gx sums out; gweight sums N; gbias N copies of gy.
  parity(s, [](auto& v) { return linear(v[0], v[1], v[2]); },
         {{"x", randn({6, 8}, 7)}, {"weight", randn({3, 8}, 8)}, {"bias", randn({3}, 9)}},
         {"x", "weight", "bias"}, linear_rule({{"y", 9}, {"gx", 3}, {"gweight", 6}, {"gbias", 6}}));
  // Degenerate shapes.
  parity(s, mm, {{"a", randn({1, 1}, 10)}, {"b", randn({1, 6}, 11)}}, ab,
         linear_rule({{"y", 1}, {"ga", 6}, {"gb", 1}}));
}

// Adam: five steps on each side from the same start; parameters and both moments against the sum
// of the two sides' running error analyses (tests/bounds.h, the same formula on both backends).
void adam_cases(const Sides& s) {
  const int64_t n = 1000;
  const Tensor p0 = randn({n}, 12);
  const test::AdamHyper hp{0.01, 0.9, 0.999, 1e-8};
  struct State {
    Tensor p, m, v;
    std::vector<test::AdamState> model;
  };
  auto start = [&](const Side& side) {
    State st{p0.to(side.dtype).to(side.device).clone(), Tensor::zeros({n}, side.dtype, side.device),
             Tensor::zeros({n}, side.dtype, side.device), {}};
    for (double x : p0.to_vector<double>()) st.model.push_back(test::adam_start(x, side.u()));
    return st;
  };
  State a = start(s.a), b = start(s.b);
  for (int64_t k = 1; k <= 5; ++k) {
    const Tensor g = randn({n}, 100 + uint64_t(k));
    AdamParams ap;
    ap.lr = hp.lr, ap.beta1 = hp.beta1, ap.beta2 = hp.beta2, ap.eps = hp.eps, ap.step = k;
    const auto gv = g.to_vector<double>();
    for (auto [side, st] : {std::pair{&s.a, &a}, std::pair{&s.b, &b}}) {
      Tensor gs = g.to(side->dtype).to(side->device);
      backend_for(side->device).adam_step(st->p, gs, st->m, st->v, ap);
      for (size_t i = 0; i < gv.size(); ++i)
        test::adam_model_step(st->model[i], test::exact(gv[i], side->u()), hp, int(k), false);
    }
  }
  std::vector<double> bp, bm, bv;
  for (size_t i = 0; i < size_t(n); ++i) {
    bp.push_back(a.model[i].p.e + b.model[i].p.e);
    bm.push_back(a.model[i].m.e + b.model[i].m.e);
    bv.push_back(a.model[i].v.e + b.model[i].v.e);
  }
  INFO("Adam: " << s.b.name() << " against " << s.a.name());
  ST_REQUIRE_WITHIN(cpu(b.p), cpu(a.p), test::f64_tensor(bp, {n}));
  ST_REQUIRE_WITHIN(cpu(b.m), cpu(a.m), test::f64_tensor(bm, {n}));
  ST_REQUIRE_WITHIN(cpu(b.v), cpu(a.v), test::f64_tensor(bv, {n}));
}

// ---------------- the student, teacher-forced ----------------
// Every op of a computation runs on both sides from side a's values, is compared with its own
// bound, and side a's output feeds the next op; backward, each op back-propagates side a's
// gradient of its output and its input gradients are compared likewise.
class Forced {
 public:
  struct Value {
    Tensor t;         // side a's value
    int id = -1;
    bool grad = false;  // produced by a trained op: gradients flow into it
  };
  explicit Forced(const Sides& s) : s_(s) {}
  bool training = false;  // ops from now on take part in the backward pass

  Value input(const Tensor& t) { return {t, next_++, false}; }
  struct Param {
    std::string input;  // the op's name for it ("w", "weight", ...)
    std::string name;   // the module's ("dec2.short_path.weight")
    Tensor t;
  };
  // Runs f on the activations, parameters and constants (inputs in that order); records it for
  // backward when it is trained.
  Value op(const Forward& f, const std::vector<std::pair<std::string, Value>>& acts,
           const std::vector<Param>& params, const Rule& rule, const Named& constants = {}) {
    Named in;
    std::vector<std::string> diff;
    Entry e;
    for (auto& [name, v] : acts) {
      in.emplace_back(name, v.t);
      e.ids.push_back(v.id), e.params.emplace_back();
      if (v.grad) diff.push_back(name);
    }
    for (auto& p : params) {
      in.emplace_back(p.input, p.t);
      e.ids.push_back(-1), e.params.push_back(p.name);
      if (training) diff.push_back(p.input);
    }
    for (auto& c : constants) in.push_back(c), e.ids.push_back(-1), e.params.emplace_back();
    e.run = run_op(s_, f, in, diff, rule);
    Value out{cpu(e.run.ya).detach(), next_++, training && !diff.empty()};
    e.out = out.id;
    if (out.grad) tape_.push_back(std::move(e));
    return out;
  }
  // Back-propagates from a scalar loss through every recorded op, in reverse.
  void backward(const Value& loss) {
    grads_[loss.id] = Tensor::full({}, 1.0, s_.a.dtype);
    for (auto it = tape_.rbegin(); it != tape_.rend(); ++it) {
      auto g = grads_.find(it->out);
      if (g == grads_.end()) continue;  // does not reach the loss
      INFO("backward of op " << it->out);
      check_backward(it->run, g->second);
      for (size_t k = 0; k < it->run.in.size(); ++k) {
        if (!it->run.la[k].requires_grad()) continue;
        const Tensor gk = cpu(it->run.la[k].grad()).detach();
        Tensor& acc = it->ids[k] >= 0 ? grads_[it->ids[k]] : param_grads_[it->params[k]];
        acc = acc.defined() ? add(acc, gk) : gk.clone();
      }
    }
  }
  // Side a's gradient of a value, of a parameter (by the module's name).
  Tensor grad(const Value& v) const { return grads_.count(v.id) ? grads_.at(v.id) : Tensor(); }
  Tensor param_grad(const std::string& name) const {
    return param_grads_.count(name) ? param_grads_.at(name) : Tensor();
  }

 private:
  struct Entry {
    OpRun run;
    std::vector<int> ids;              // per input: the value's id, -1 for a parameter or constant
    std::vector<std::string> params;   // per input: the parameter's name, or empty
    int out = -1;
  };
  Sides s_;
  int next_ = 0;
  std::vector<Entry> tape_;
  std::map<int, Tensor> grads_;
  std::map<std::string, Tensor> param_grads_;
};

// The student's computation (nn/student.cpp, SPEC §2) written once over an executor: `Plain` runs
// the ops themselves, `ForcedOps` teacher-forced on two sides. A Conv2d module pads k/2; a
// BatchNorm2d uses its input's batch statistics with eps 1e-5.
struct Plain {
  using V = Tensor;
  const nn::Student& net;
  V conv(const V& x, const std::string& name, int64_t stride) {
    const Tensor w = net.parameter(name + ".weight");
    return conv2d(x, w, net.parameter(name + ".bias"), conv_params(w.shape(), stride));
  }
  V bn(const V& x, const std::string& name) {
    return batch_norm(x, net.parameter(name + ".weight"), net.parameter(name + ".bias"), 1e-5);
  }
  V relu(const V& x) { return st::relu(x); }
  V add(const V& a, const V& b) { return st::add(a, b); }
  V subsample(const V& x, int64_t s) { return st::subsample(x, s); }
  V cat(const V& a, const V& b) { return st::cat({a, b}, 1); }
  V resize(const V& x, int64_t h, int64_t w) { return resize_bilinear(x, h, w); }
  static int64_t size(const V& x, int d) { return x.size(d); }
  void back() {}
  static Conv2dParams conv_params(const Shape& w, int64_t stride) {
    return {stride, stride, w[2] / 2, w[3] / 2, 1};
  }
};

struct ForcedOps {
  using V = Forced::Value;
  Forced& f;
  const nn::Student& net;
  std::map<std::string, V> in_of, out_of;  // by layer name: the value it read, the one it made
  V conv(const V& x, const std::string& name, int64_t stride) {
    const Tensor w = net.parameter(name + ".weight");
    const Conv2dParams p = Plain::conv_params(w.shape(), stride);
    in_of[name] = x;
    return out_of[name] = f.op([p](auto& v) { return conv2d(v[0], v[1], v[2], p); }, {{"x", x}},
                               {{"w", name + ".weight", w}, {"b", name + ".bias", net.parameter(name + ".bias")}},
                               conv2d_rule(w.shape(), p, true));
  }
  V bn(const V& x, const std::string& name) {
    in_of[name] = x;
    return out_of[name] = f.op([](auto& v) { return batch_norm(v[0], v[1], v[2], 1e-5); }, {{"x", x}},
                               {{"weight", name + ".weight", net.parameter(name + ".weight")},
                                {"bias", name + ".bias", net.parameter(name + ".bias")}},
                               batch_norm_rule(1e-5, false));
  }
  V relu(const V& x) { return f.op([](auto& v) { return st::relu(v[0]); }, {{"x", x}}, {}, exact_rule()); }
  // Same shapes: y one rounding, the gradients copies.
  V add(const V& a, const V& b) {
    return f.op([](auto& v) { return st::add(v[0], v[1]); }, {{"a", a}, {"b", b}}, {},
                linear_rule({{"y", 1}, {"ga", 0}, {"gb", 0}}));
  }
  V subsample(const V& x, int64_t s) {
    return f.op([s](auto& v) { return st::subsample(v[0], s); }, {{"x", x}}, {}, exact_rule());
  }
  V cat(const V& a, const V& b) {
    return f.op([](auto& v) { return st::cat({v[0], v[1]}, 1); }, {{"a", a}, {"b", b}}, {}, exact_rule());
  }
  V resize(const V& x, int64_t h, int64_t w) {
    return f.op([h, w](auto& v) { return resize_bilinear(v[0], h, w); }, {{"x", x}}, {}, bilinear_rule());
  }
  static int64_t size(const V& x, int d) { return x.t.size(d); }
  void back() { f.training = true; }
};

template <class Ops>
typename Ops::V block(Ops& o, const typename Ops::V& x, const std::string& name, int64_t stride,
                      bool same) {
  const auto p = o.relu(o.bn(x, name + ".preact_path.0"));
  const auto s = same ? o.subsample(x, stride) : o.conv(p, name + ".short_path", stride);
  const auto l = o.conv(o.conv(o.relu(o.conv(p, name + ".long_path.0", stride)), name + ".long_path.2", 1),
                        name + ".long_path.3", 1);
  return o.add(s, l);
}

// Student::front then Student::back: the logits.
template <class Ops>
typename Ops::V student_logits(Ops& o, const typename Ops::V& x) {
  const int64_t h = Ops::size(x, 2), w = Ops::size(x, 3);
  const auto x1 = o.conv(x, "in_conv1", 2);
  const auto e1 = block(o, o.conv(x1, "in_conv2", 2), "enc1", 2, false);
  const auto e2 = block(o, e1, "enc2", 2, true);
  const auto d1 = o.resize(block(o, block(o, e2, "enc3", 2, false), "dec1", 1, false), Ops::size(e2, 2),
                           Ops::size(e2, 3));
  o.back();
  const auto d2 = o.resize(block(o, o.cat(d1, e2), "dec2", 1, false), Ops::size(e1, 2), Ops::size(e1, 3));
  const auto d3 = o.resize(block(o, o.cat(d2, e1), "dec3", 1, false), Ops::size(x1, 2), Ops::size(x1, 3));
  const auto out = o.conv(o.conv(o.conv(d3, "out_conv1", 1), "out_conv2", 1), "out_conv3", 1);
  return o.resize(out, h, w);
}

// dec2.short_path.bias and dec2.long_path.3.bias shift dec2's output channels by constants, and
// that output reaches the loss only through dec3's batch-statistics batch norm (after the resize
// and the concat), which removes any per-channel constant: their exact gradient is 0, and what a
// backend computes is rounding noise, which Adam's first step turns into an lr-sized update of
// either sign. So they are checked apart: on one side, from side a's inputs at dec3's batch norm
// (x, and gy at its output), the chain batch-norm backward, concat, resize backward, add, conv
// bias gradient must give at most N_c in channel c, where, with G^ the side's own input gradient
// of the batch norm on dec2's channels (whose exact value sums to 0 over a channel) and the exact
// resize weights of each output summing to 1:
//   |sum_o G^_o| <= sum_o bound_bn(gx)_o;
//   the resize backward gs^ is within bound_bilinear(gx) of R^T G^, and sum |R^T G^| <= sum |G^|;
//   the bias gradient sums gs^ over P pixels: gamma(P) * sum |gs^|;
//   N_c = sum_{o in c} bound_bn_o + B_c + gamma(P) * (sum_{o in c} |G^_o| + B_c),
//   B_c = sum_{p in c} bound_bilinear_p.
void check_structural_zeros(const Side& side, const nn::Student& net, const ForcedOps& o,
                            const Forced& forced) {
  INFO("structurally zero gradients on " << side.name());
  auto on = [&](const Tensor& t, bool grad = false) {
    Tensor v = t.detach().to(side.dtype).to(side.device).clone();
    if (grad) v.set_requires_grad(true);
    return v;
  };
  const std::string bn = "dec3.preact_path.0";
  const Tensor X = o.in_of.at(bn).t, gyX = forced.grad(o.out_of.at(bn));
  REQUIRE(gyX.defined());
  const Tensor bw = net.parameter(bn + ".weight"), bb = net.parameter(bn + ".bias");
  Tensor x = on(X, true);
  batch_norm(x, on(bw), on(bb), 1e-5).backward(on(gyX));
  const Tensor s_out = o.out_of.at("dec2.short_path").t;  // dec2's output shape
  const int64_t C = s_out.size(1);
  const Tensor G = cpu(x.grad()).slice(1, 0, C).contiguous();
  // The chain from the two biases to dec2's resized output, G back-propagated.
  const Tensor ws = net.parameter("dec2.short_path.weight"), wl = net.parameter("dec2.long_path.3.weight");
  Tensor bs = on(net.parameter("dec2.short_path.bias"), true);
  Tensor bl = on(net.parameter("dec2.long_path.3.bias"), true);
  const Tensor sum_out = st::add(conv2d(on(o.in_of.at("dec2.short_path").t), on(ws), bs,
                                        Plain::conv_params(ws.shape(), 1)),
                                 conv2d(on(o.in_of.at("dec2.long_path.3").t), on(wl), bl,
                                        Plain::conv_params(wl.shape(), 1)));
  resize_bilinear(sum_out, X.size(2), X.size(3)).backward(on(G));
  // The bound, per channel.
  const Bounds bnb = test::batch_norm_bounds(X, gyX, bw, bb, 1e-5, false, {}, {}, side.u(), false,
                                              float_bn_stats(side));
  const Tensor bn_gx = bnb.at("gx").slice(1, 0, C).contiguous();
  const Tensor bil = test::bilinear_bounds(Tensor::zeros(s_out.shape(), DType::F64), G, side.u(),
                                           side.dtype == DType::F32).at("gx");
  const int64_t N = X.size(0);
  auto per_channel = [&](const Tensor& t) {  // sum over n, h, w of (N, C, h, w)
    const auto v = t.to_vector<double>();
    const size_t P = size_t(t.size(2) * t.size(3));
    std::vector<double> out(size_t(C), 0.0);
    for (int64_t n = 0; n < N; ++n)
      for (int64_t c = 0; c < C; ++c)
        for (size_t p = 0; p < P; ++p) out[size_t(c)] += v[size_t(n * C + c) * P + p];
    return out;
  };
  const auto bn_c = per_channel(bn_gx), abs_c = per_channel(test::abs_of(G)), bil_c = per_channel(bil);
  const double P = double(N * s_out.size(2) * s_out.size(3));
  std::vector<double> bound(static_cast<size_t>(C));
  for (size_t c = 0; c < size_t(C); ++c)
    bound[c] = bn_c[c] + bil_c[c] + test::gamma(P, side.u()) * (abs_c[c] + bil_c[c]);
  const Tensor zeros = Tensor::zeros({C}, DType::F64), b = test::f64_tensor(bound, {C});
  for (const Tensor* g : {&bs, &bl}) {
    REQUIRE(g->grad().defined());
    ST_REQUIRE_WITHIN(cpu(g->grad()), zeros, b);
  }
}

// The student at 48 x 80 on a synthetic frame, a target with one object.
struct StudentCase {
  Tensor x;
  nn::Target target;
  StudentCase() {
    const int64_t H = 48, W = 80;
    std::vector<uint8_t> bgr(size_t(H * W * 3));
    for (size_t i = 0; i < bgr.size(); ++i) bgr[i] = uint8_t((i * 37 + i / 97) % 256);
    x = nn::Student::preprocess_bgr(bgr.data(), H, W);
    std::vector<uint8_t> labels(size_t(H * W), 8);
    for (int64_t y = 10; y < 30; ++y)
      for (int64_t xx = 20; xx < 50; ++xx) labels[size_t(y * W + xx)] = 0;
    target = nn::make_target(labels, H, W);
  }
};

// The Distiller's configuration of the GPU step test below: one partial step, whatever the
// frame's mIoU. It trains unless the frame's mIoU beats the threshold; the largest threshold it
// accepts (thresholds lie in (0, 1): nn/distill.cpp) is beaten only by a perfect mIoU of 1, which
// the random student does not reach (each test checks). A threshold of 1.1, once written here to
// mean "never stop early", is refused by the Distiller; the CPU test below runs this same config.
nn::DistillConfig one_step_config() {
  nn::DistillConfig cfg;
  cfg.max_updates = 1;
  cfg.threshold = std::nextafter(1.0, 0.0);
  return cfg;
}

// The whole teacher-forced step on two sides: the forward of every op, the loss, the backward of
// the trained back (every input and parameter gradient), the structurally zero gradients apart,
// and Adam's first step from side a's gradients.
void student_step_cases(const Sides& s) {
  nn::Student net(3);
  net.configure(nn::Distillation::Partial);
  const StudentCase sc;
  // The executor computes the student's own forward: on the CPU, bit for bit.
  Tensor real;
  {
    NoGradGuard ng;
    real = net.forward(sc.x);
    Plain plain{net};
    REQUIRE(student_logits(plain, sc.x).to_vector<float>() == real.to_vector<float>());
  }
  Forced forced(s);
  ForcedOps o{forced, net, {}, {}};
  const Forced::Value logits = student_logits(o, forced.input(sc.x));
  if (s.a.device == Device::cpu() && s.a.dtype == DType::F32)
    REQUIRE(logits.t.to_vector<float>() == real.to_vector<float>());
  const Forced::Value loss =
      forced.op([](auto& v) { return weighted_cross_entropy(v[0], v[1], v[2]); }, {{"logits", logits}},
                {}, weighted_ce_rule(), {{"target", sc.target.labels}, {"weight", sc.target.weight}});
  forced.backward(loss);
  check_structural_zeros(s.a, net, o, forced);
  check_structural_zeros(s.b, net, o, forced);
  // Adam's first step (Distiller: lr 0.01, betas 0.9, 0.999, eps 1e-8) from side a's gradients.
  const test::AdamHyper hp{0.01, 0.9, 0.999, 1e-8};
  AdamParams ap;
  ap.lr = hp.lr, ap.beta1 = hp.beta1, ap.beta2 = hp.beta2, ap.eps = hp.eps, ap.step = 1;
  // Every trained parameter, the two structurally zero biases included: both sides step from side
  // a's gradient (teacher forcing), so their rounding-noise gradient moves both the same way and
  // the bound below holds; had each side stepped from its own gradient, those two would move by up
  // to lr with independent signs (Adam's first step is lr * g / (|g| + eps), and their g is noise),
  // and would have to be left out of this comparison: check_structural_zeros above checks them.
  const auto names = net.trained_names(nn::Distillation::Partial);
  REQUIRE(names.size() == 26);
  for (const auto& name : names) {
    INFO("Adam step of " << name);
    const Tensor p0 = net.parameter(name);
    const Tensor g = forced.param_grad(name);
    REQUIRE(g.defined());
    std::vector<Tensor> after;
    std::vector<double> bound(size_t(p0.numel()), 0.0);
    const auto pv = p0.to_vector<double>(), gv = g.to_vector<double>();
    for (const Side* side : {&s.a, &s.b}) {
      Tensor p = p0.detach().to(side->dtype).to(side->device).clone();
      Tensor m = Tensor::zeros(p0.shape(), side->dtype, side->device);
      Tensor v = Tensor::zeros(p0.shape(), side->dtype, side->device);
      Tensor gs = g.to(side->dtype).to(side->device);
      backend_for(side->device).adam_step(p, gs, m, v, ap);
      after.push_back(p);
      for (size_t i = 0; i < pv.size(); ++i) {
        test::AdamState st = test::adam_start(pv[i], side->u());
        test::adam_model_step(st, test::exact(gv[i], side->u()), hp, 1, false);
        bound[i] += st.p.e;
      }
    }
    ST_REQUIRE_WITHIN(cpu(after[1]), cpu(after[0]), test::f64_tensor(bound, p0.shape()));
  }
}


// ---------------- wider cases: grid-stride wraps, many outputs, views, wide batch norm ----------------
// Cross-entropy over more pixels than its forward kernel's grid has threads (the CUDA backend
// caps it at 1024 blocks of 256: 262144 pixels), so the grid-stride loop turns more than once,
// and the partial sums of every block meet in the final reduction.
constexpr int64_t kCeN = 2, kCeC = 3, kCeH = 300, kCeW = 450;  // 270000 pixels
void ce_wrap_cases(const Sides& s) {
  REQUIRE(kCeN * kCeH * kCeW > 1024 * 256);
  const Tensor target = Tensor::uniform({kCeN, kCeH, kCeW}, 0, kCeC, 31).to(DType::I64);
  const Tensor weight = Tensor::uniform({kCeN, kCeH, kCeW}, 0.5, 2, 32);
  parity(s, [](auto& v) { return weighted_cross_entropy(v[0], v[1], v[2]); },
         {{"logits", randn({kCeN, kCeC, kCeH, kCeW}, 33, 2.0)}, {"target", target}, {"weight", weight}},
         {"logits"}, weighted_ce_rule());
}

// sum_to (the reduction behind every broadcast gradient) through the backend interface, on a
// view of `base` made on each side. Each output sums n = numel(x) / numel(out) elements; in any
// order, in the format or wider, then rounded to the format, it is within gamma(n, u) * sum|x|
// of the exact sum (n - 1 additions and the final rounding), so the two sides within the sum of
// their bounds.
void sum_to_case(const Sides& s, const Tensor& base, const std::function<Tensor(const Tensor&)>& view,
                 const Shape& out_shape) {
  const Tensor x64 = view(base.to(DType::F64));
  INFO("sum_to " << shape_str(x64.shape()) << " (strides " << shape_str(x64.strides()) << ") -> "
                 << shape_str(out_shape));
  std::vector<Tensor> outs;
  for (const Side* side : {&s.a, &s.b}) {
    const Tensor x = view(base.to(side->dtype).to(side->device));
    REQUIRE(x.shape() == x64.shape());
    Tensor out = Tensor::empty(out_shape, side->dtype, side->device);
    backend_for(side->device).sum_to(x, out);
    outs.push_back(cpu(out));
  }
  Tensor abs_sum = Tensor::empty(out_shape, DType::F64);
  backend_for(Device::cpu()).sum_to(test::abs_of(x64), abs_sum);
  const double n = double(x64.numel()) / double(std::max<int64_t>(abs_sum.numel(), 1));
  ST_REQUIRE_WITHIN(outs[1], outs[0], mul_scalar(abs_sum, test::gamma(n, s.a.u()) + test::gamma(n, s.b.u())));
}

void sum_to_cases(const Sides& s) {
  auto same = [](const Tensor& t) { return t; };
  auto tr = [](const Tensor& t) { return t.transpose(0, 1); };
  // >= 1024 outputs with short and long rows, few outputs with long rows (split reductions),
  // a reduction over the leading (strided) dim.
  sum_to_case(s, randn({3000, 3}, 1), same, {3000, 1});
  sum_to_case(s, randn({1500, 2000}, 2), same, {1500, 1});
  sum_to_case(s, randn({3, 300000}, 3), same, {3, 1});
  sum_to_case(s, randn({2, 500000}, 4), same, {1, 1});
  sum_to_case(s, randn({5000, 1100}, 5), same, {1, 1100});
  // Transposed: rows along the strided dim, or across it.
  sum_to_case(s, randn({1200, 700}, 6), tr, {700, 1});
  sum_to_case(s, randn({1200, 700}, 7), tr, {1, 1200});
  // A permuted 4-D view, reduced over mixed dims, with few and many outputs.
  auto perm = [](const Tensor& t) { return t.permute({2, 0, 3, 1}); };  // (6,7,40,50) -> (40,6,50,7)
  const Tensor b4 = randn({6, 7, 40, 50}, 8);
  sum_to_case(s, b4, perm, {40, 1, 1, 7});
  sum_to_case(s, b4, perm, {1, 6, 50, 1});
  sum_to_case(s, b4, perm, {40, 6, 50, 1});
  sum_to_case(s, b4, perm, {1, 1, 1, 1});
  // sum() of a permuted, stepped view: one output of n terms, the same bound.
  const Tensor v64 = b4.to(DType::F64).permute({3, 1, 0, 2}).slice(0, 1, 50, 3);
  std::vector<Tensor> sums;
  for (const Side* side : {&s.a, &s.b})
    sums.push_back(cpu(sum(b4.to(side->dtype).to(side->device).permute({3, 1, 0, 2}).slice(0, 1, 50, 3))));
  const double n = double(v64.numel());
  ST_REQUIRE_WITHIN(sums[1], sums[0],
                    mul_scalar(sum(test::abs_of(v64)), test::gamma(n, s.a.u()) + test::gamma(n, s.b.u())));
}

// Batch norm over more channels than a block's worth (> 4096), with one pixel per channel and
// with many; and few channels over a large N*H*W.
void wide_batch_norm_cases(const Sides& s) {
  const std::vector<std::string> diff = {"x", "weight", "bias"};
  auto bn = [](auto& v) { return batch_norm(v[0], v[1], v[2], 1e-5); };
  for (auto [x, C] : {std::pair{randn({1, 4100, 1, 1}, 70), int64_t(4100)},
                      std::pair{randn({2, 4500, 9, 11}, 71, 2.0), int64_t(4500)},
                      std::pair{randn({4, 5, 256, 256}, 72, 3.0), int64_t(5)}}) {
    INFO("batch norm " << shape_str(x.shape()));
    parity(s, bn, {{"x", x}, {"weight", randn({C}, 73)}, {"bias", randn({C}, 74)}}, diff,
           batch_norm_rule(1e-5, false));
  }
  parity(s, [](auto& v) { return batch_norm_frozen(v[0], v[1], v[2], v[3], v[4], 1e-5); },
         {{"x", randn({2, 5000, 3, 3}, 75)},
          {"weight", randn({5000}, 76)},
          {"bias", randn({5000}, 77)},
          {"mean", randn({5000}, 78)},
          {"var", Tensor::uniform({5000}, 0.5, 2.0, 79)}},
         diff, batch_norm_rule(1e-5, true));
}

// Element-wise ops on non-contiguous views of several dims: permutations (no two dims merge),
// slices of a contiguous tensor (the trailing dims merge), 5-D transposed and stepped views, a
// broadcast (stride-0) dim in the middle. y: one rounding per product or sum; copies exact.
void view_cases(const Sides& s) {
  parity(s, [](auto& v) { return add(v[0].permute({0, 2, 1, 3}), v[1]); },
         {{"a", randn({3, 5, 4, 6}, 80)}, {"b", randn({3, 4, 5, 6}, 81)}}, {"a", "b"},
         linear_rule({{"y", 1}, {"ga", 0}, {"gb", 0}}));
  parity(s, [](auto& v) { return relu(v[0].slice(0, 1, 3)); }, {{"x", randn({4, 3, 5, 7}, 82)}},
         {"x"}, exact_rule());
  parity(s, [](auto& v) { return relu(v[0].permute({4, 2, 0, 3, 1}).slice(1, 1, 4, 2)); },
         {{"x", randn({2, 3, 5, 4, 6}, 83)}}, {"x"}, exact_rule());
  parity(s, [](auto& v) { return mul(v[0].transpose(1, 3).slice(4, 1, 7, 2), v[1]); },
         {{"a", randn({2, 3, 4, 5, 7}, 84)}, {"b", randn({2, 5, 4, 3, 3}, 85)}}, {"a", "b"},
         linear_rule({{"y", 1}, {"ga", 1}, {"gb", 1}}));
  // a (4, 1, 5) broadcast to (4, 3, 5) times a transposed (5, 3, 4): ga sums 3 products (one
  // rounding each, 2 additions, a final rounding where summed wider): 4.
  parity(s, [](auto& v) { return mul(v[0].expand({4, 3, 5}), v[1].transpose(0, 2)); },
         {{"a", randn({4, 1, 5}, 86)}, {"b", randn({5, 3, 4}, 87)}}, {"a", "b"},
         linear_rule({{"y", 1}, {"ga", 4}, {"gb", 1}}));
  // The device-side copy of a 6-D view: exact.
  parity(s, [](auto& v) { return v[0].permute({5, 3, 1, 0, 2, 4}).slice(2, 0, 3, 2).contiguous(); },
         {{"x", randn({2, 3, 3, 2, 4, 5}, 88)}}, {"x"}, exact_rule());
}


// A bad target is named, value and pixel, as on the CPU (the first bad pixel in N*H*W order) by
// the time the loss reaches the host: the CUDA backend may find it in the call or at the next
// read of a result. The bad pixels lie past the first turn of the CUDA forward's grid-stride
// loop (its grid covers 262144 pixels). The device is usable afterwards: a valid loss there
// matches the CPU's within both sides' bounds.
void ce_bad_target_cases(const Device& dev) {
  const Tensor x = randn({kCeN, kCeC, kCeH, kCeW}, 40, 2.0);
  const Tensor target = Tensor::uniform({kCeN, kCeH, kCeW}, 0, kCeC, 41).to(DType::I64);
  const Tensor weight = Tensor::uniform({kCeN, kCeH, kCeW}, 0.5, 2, 42);
  const int64_t P = kCeN * kCeH * kCeW, first = P - 1000, second = P - 17;
  REQUIRE(first > 1024 * 256);
  for (int64_t bad_value : {kCeC, int64_t(-1), int64_t(1000)}) {
    Tensor bad = target.clone();
    bad.data<int64_t>()[first] = bad_value;
    bad.data<int64_t>()[second] = kCeC + 1;  // a later bad pixel: not the one named
    const std::string value = "target value " + std::to_string(bad_value);
    const std::string pixel = "pixel " + std::to_string(first);
    for (DType dt : {DType::F32, DType::F64}) {
      INFO(value << " at " << pixel << " on " << dev.str() << "/" << dtype_name(dt));
      bool named = false;  // an st::Error (any other exception fails the test)
      try {
        (void)weighted_cross_entropy(x.to(dt).to(dev), bad.to(dev), weight.to(dt).to(dev)).item();
      } catch (const Error& e) {
        named = true;
        REQUIRE_THAT(std::string(e.what()), Contains(value) && Contains(pixel));
      }
      REQUIRE(named);
      const double lc = weighted_cross_entropy(x.to(dt), target, weight.to(dt)).item();
      const double ld =
          weighted_cross_entropy(x.to(dt).to(dev), target.to(dev), weight.to(dt).to(dev)).item();
      const Bounds b = test::weighted_ce_bounds(x, target, weight, 1.0, dt == DType::F32 ? kU32 : kU64, false);
      REQUIRE(std::abs(ld - lc) <= 2 * b.at("loss").item());
    }
  }
}
}  // namespace

// ---------------- the parity suite on the CPU alone: its bounds, checked ----------------
TEST_CASE("cuda parity bounds: the CPU's float32 holds them against its float64 (no GPU needed)",
          "[cuda][portable]") {
  const Sides s = f32_f64();
  elementwise_cases(s);
  conv_cases(s);
  conv_transpose_cases(s);
  batch_norm_cases(s);
  resample_cases(s);
  softmax_cases(s);
  matmul_cases(s);
  adam_cases(s);
}

TEST_CASE("cuda parity bounds: the student's teacher-forced step, CPU float32 against float64",
          "[cuda][student]") {
  student_step_cases(f32_f64());
}

// The GPU step test's Distiller configuration, on the CPU: the Distiller accepts it and takes the
// one step it asks for (that test failed on every GPU run when its threshold was 1.1).
TEST_CASE("cuda parity bounds: the GPU step test's distillation config takes one step on the CPU",
          "[cuda][distill]") {
  nn::DistillConfig never_stop = one_step_config();
  never_stop.threshold = 1.1;  // the old config: refused
  nn::Student refused(3);
  REQUIRE_THROWS_WITH(nn::Distiller(refused, nn::Distillation::Partial, never_stop),
                      Contains("threshold must be in (0, 1)"));
  nn::Student sc(3);
  const StudentCase c;
  nn::Distiller dc(sc, nn::Distillation::Partial, one_step_config());
  reset_backward_kernel_counts();
  const auto oc = dc.distill(c.x, c.target);
  REQUIRE(oc.acc_before < 1.0);
  REQUIRE(oc.steps == 1);
  REQUIRE(backward_kernel_count("conv2d.grad_weight") > 0);  // the step's backward ran
}

// The decision every [cuda] test below makes (REQUIRE_GPU: tests/test_util.h), on statuses made up
// here and on this machine's own: run with a usable GPU; otherwise skip, or under ST_REQUIRE_GPU
// fail, the message naming why.
TEST_CASE("cuda gate: without a usable GPU a test skips, under ST_REQUIRE_GPU=1 it fails (no GPU needed)",
          "[cuda][errors]") {
  using test::GpuGate;
  // The variable is this process's; restored at the end.
  const char* was = std::getenv("ST_REQUIRE_GPU");
  const std::string saved = was ? was : "";
  ::unsetenv("ST_REQUIRE_GPU");
  REQUIRE_FALSE(test::gpu_required());
  ::setenv("ST_REQUIRE_GPU", "0", 1);
  REQUIRE_FALSE(test::gpu_required());
  ::setenv("ST_REQUIRE_GPU", "1", 1);
  REQUIRE(test::gpu_required());

  for (DeviceState st : {DeviceState::Absent, DeviceState::Broken}) {
    const DeviceStatus s{st, "the reason"};
    INFO(device_state_name(st));
    const GpuGate skip = test::gpu_gate(s, false), fail = test::gpu_gate(s, true);
    REQUIRE(skip.action == GpuGate::Skip);
    REQUIRE_THAT(skip.message, Contains(std::string(device_state_name(st)) + ": the reason"));
    REQUIRE(fail.action == GpuGate::Fail);
    REQUIRE_THAT(fail.message, Contains(std::string(device_state_name(st)) + ": the reason") &&
                                   Contains("ST_REQUIRE_GPU"));
  }
  for (bool required : {false, true}) {
    const GpuGate run = test::gpu_gate({DeviceState::Usable, ""}, required);
    REQUIRE(run.action == GpuGate::Run);
    REQUIRE(run.message.empty());
  }

  // This machine's GPU, as REQUIRE_GPU sees it.
  const DeviceStatus& real = test::cuda_status();
  REQUIRE((real.state == DeviceState::Usable) == real.reason.empty());
  REQUIRE((real.state == DeviceState::Usable) == device_available(DeviceType::CUDA));
  if (!backend_built(DeviceType::CUDA)) REQUIRE(real.state == DeviceState::Absent);
  const GpuGate required = test::cuda_gate();
  ::unsetenv("ST_REQUIRE_GPU");
  const GpuGate optional = test::cuda_gate();
  if (real.state == DeviceState::Usable) {
    REQUIRE(required.action == GpuGate::Run);
    REQUIRE(optional.action == GpuGate::Run);
  } else {
    INFO("this machine: " << real.reason);
    REQUIRE(required.action == GpuGate::Fail);
    REQUIRE_THAT(required.message, Contains(real.reason));
    REQUIRE(optional.action == GpuGate::Skip);
    REQUIRE_THAT(optional.message, Contains(real.reason));
  }
  if (!saved.empty()) ::setenv("ST_REQUIRE_GPU", saved.c_str(), 1);

  // What is absent and what is broken, from the CUDA probe's messages (kernels/cuda/backend.cu).
  REQUIRE(device_status(DeviceType::CPU).state == DeviceState::Usable);
  REQUIRE(device_unavailable_reason(DeviceType::CPU).empty());
  const std::string no_device = "cuda:0: no usable GPU (no CUDA-capable device is detected)";
  const std::string none_counted = "cuda:0: no usable GPU (0 device(s) present)";
  const std::string old_driver =
      "cuda:0: no usable GPU (CUDA driver version is insufficient for CUDA runtime version)";
  const std::string oom = "cuda:0: out of memory allocating 16 bytes (0 MiB in use by tensors; "
                          "out of memory)";
  for (bool node : {false, true}) {
    REQUIRE(classify_cuda_failure(no_device, node) == DeviceState::Absent);
    REQUIRE(classify_cuda_failure(none_counted, node) == DeviceState::Absent);
  }
  // A driver error with a GPU node present is a broken setup; without any node, no GPU at all.
  REQUIRE(classify_cuda_failure(old_driver, true) == DeviceState::Broken);
  REQUIRE(classify_cuda_failure(old_driver, false) == DeviceState::Absent);
  REQUIRE(classify_cuda_failure(oom, true) == DeviceState::Broken);
}

// ---------------- CPU against GPU ----------------
TEST_CASE("cuda: memory, copies, dtype conversion, non-contiguous views", "[cuda]") {
  REQUIRE_GPU();
  for (DType dt : {DType::F32, DType::F64, DType::F16, DType::U8, DType::I32, DType::I64}) {
    Tensor a = (Tensor::uniform({3, 5, 7}, 0, 100, 1)).to(dt);
    Tensor back = cpu(gpu(a));
    REQUIRE(back.dtype() == dt);
    REQUIRE(back.to_vector<double>() == a.to_vector<double>());
  }
  Tensor a = Tensor::randn({4, 6, 5}, 2);
  Tensor g = gpu(a);
  // Views on the GPU: transpose, slice with a step, then a device-side contiguous copy: exact.
  Tensor v = g.transpose(0, 2).slice(1, 1, 6, 2).contiguous();
  REQUIRE(cpu(v).to_vector<float>() == a.transpose(0, 2).slice(1, 1, 6, 2).contiguous().to_vector<float>());
  // Conversions on the device match the CPU's (f16 rounding included): exact.
  REQUIRE(cpu(g.to(DType::F16)).to(DType::F32).to_vector<float>() ==
          a.to(DType::F16).to(DType::F32).to_vector<float>());
  REQUIRE(cpu(g.to(DType::F64)).to_vector<double>() == a.to(DType::F64).to_vector<double>());
  Tensor f = Tensor::full({3, 3}, 2.5, DType::F32, kGpu);
  REQUIRE(cpu(f).to_vector<float>() == std::vector<float>(9, 2.5f));
  Tensor z = Tensor::zeros({5}, DType::I64, kGpu);
  REQUIRE(cpu(z).to_vector<int64_t>() == std::vector<int64_t>(5, 0));
}

TEST_CASE("cuda: element-wise ops with broadcasting and non-contiguous inputs", "[cuda]") {
  REQUIRE_GPU();
  elementwise_cases(cpu_gpu());
  elementwise_cases(cpu_gpu64());
}

TEST_CASE("cuda: conv2d forward and backward over kernel shapes, strides, groups", "[cuda]") {
  REQUIRE_GPU();
  conv_cases(cpu_gpu());
  conv_case(cpu_gpu64(), 0);  // f64 through cuDNN's double path
}

TEST_CASE("cuda: conv_transpose2d forward", "[cuda]") {
  REQUIRE_GPU();
  conv_transpose_cases(cpu_gpu());
}

TEST_CASE("cuda: batch norm with batch statistics and frozen", "[cuda]") {
  REQUIRE_GPU();
  batch_norm_cases(cpu_gpu());
}

TEST_CASE("cuda: resampling, pooling, concat, subsample", "[cuda]") {
  REQUIRE_GPU();
  resample_cases(cpu_gpu());
}

TEST_CASE("cuda: softmax, log-softmax, weighted cross-entropy, argmax", "[cuda]") {
  REQUIRE_GPU();
  softmax_cases(cpu_gpu());
  Tensor x = Tensor::randn({2, 9, 33, 17}, 6);
  REQUIRE(cpu(argmax_channels(gpu(x))).to_vector<int64_t>() ==
          argmax_channels(x).to_vector<int64_t>());
  // A bad target is named on the GPU as on the CPU.
  Tensor target = Tensor::uniform({2, 7, 13}, 0, 9, 3).to(DType::I64);
  Tensor weight = Tensor::uniform({2, 7, 13}, 1, 5, 4);
  Tensor bad = target.clone();
  bad.data<int64_t>()[17] = 9;
  // (The CUDA backend reports it at the next host read: the loss's .item().)
  REQUIRE_THROWS_WITH(weighted_cross_entropy(gpu(x.slice(2, 0, 7).slice(3, 0, 13).contiguous()),
                                             gpu(bad), gpu(weight))
                          .item(),
                      Contains("target value 9") && Contains("pixel 17"));
}

TEST_CASE("cuda: matmul (transposed views), linear, sums, Adam", "[cuda]") {
  REQUIRE_GPU();
  matmul_cases(cpu_gpu());
  adam_cases(cpu_gpu());
}

TEST_CASE("cuda: partial backward does no work for the frozen front", "[cuda][partial]") {
  REQUIRE_GPU();
  auto param = [](Shape s, uint64_t seed, bool train) {
    Tensor t = gpu(Tensor::randn(s, seed) * 0.3);
    t.set_requires_grad(train);
    return t;
  };
  Tensor fw = param({8, 3, 3, 3}, 1, false), fb = param({8}, 2, false);
  Tensor bw1 = param({8, 8, 3, 3}, 3, true), bb1 = param({8}, 4, true);
  Tensor bw2 = param({4, 8, 1, 1}, 5, true), bb2 = param({4}, 6, true);
  Tensor x = gpu(Tensor::randn({1, 3, 16, 16}, 7));
  Tensor target = gpu(Tensor::full({1, 16, 16}, 1, DType::I64));
  Tensor weight = gpu(Tensor::full({1, 16, 16}, 1.0));
  reset_backward_kernel_counts();
  Tensor f = relu(conv2d(x, fw, fb, {1, 1, 1, 1, 1}));
  Tensor logits = conv2d(relu(conv2d(f, bw1, bb1, {1, 1, 1, 1, 1})), bw2, bb2);
  weighted_cross_entropy(logits, target, weight).backward();
  REQUIRE_FALSE(fw.grad().defined());
  REQUIRE(bw1.grad().defined());
  REQUIRE(bw1.grad().device() == kGpu);
  REQUIRE(backward_kernel_count("conv2d.grad_weight") == 2);
  REQUIRE(backward_kernel_count("conv2d.grad_input") == 1);  // only into bw1's conv output
}

// The partial-distillation step, op by op (student_step_cases): every op of the student's forward,
// the loss and every gradient of the trained back on the GPU from the CPU's inputs, each within
// bound(cpu) + bound(gpu); the two structurally zero bias gradients zero to their noise bound on
// each backend; Adam's first step from the CPU's gradients. Then the Distiller itself on both:
// the same partial backward (kernel counts) and the one step it was asked for.
TEST_CASE("cuda: the student's forward and one partial distillation step match the CPU",
          "[cuda][student]") {
  REQUIRE_GPU();
  student_step_cases(cpu_gpu());
  nn::Student sc(3), sg(3);
  sg.to(kGpu);
  REQUIRE(sg.device() == kGpu);
  const StudentCase c;
  const nn::DistillConfig cfg = one_step_config();  // one step on both
  nn::Distiller dc(sc, nn::Distillation::Partial, cfg), dg(sg, nn::Distillation::Partial, cfg);
  reset_backward_kernel_counts();
  auto oc = dc.distill(c.x, c.target);
  auto cpu_counts = backward_kernel_counts();
  reset_backward_kernel_counts();
  auto og = dg.distill(c.x, c.target);  // CPU frame and target: moved to the GPU by the distiller
  REQUIRE(backward_kernel_counts() == cpu_counts);  // the same partial backward on both
  REQUIRE(oc.acc_before < 1.0);
  REQUIRE(og.acc_before < 1.0);
  REQUIRE(oc.steps == 1);
  REQUIRE(og.steps == 1);
}

TEST_CASE("cuda: the pretrained student's logits match PyTorch's float64 on the GPU",
          "[cuda][student][golden]") {
  REQUIRE_GPU();
  std::string why;
  if (!test::student_golden_available(why)) ST_SKIP(why);
  test::check_student_golden(kGpu);
}

TEST_CASE("cuda: the caching allocator stops calling the driver in steady state", "[cuda]") {
  REQUIRE_GPU();
  Tensor w = gpu(Tensor::randn({16, 8, 3, 3}, 1)), b = gpu(Tensor::randn({16}, 2));
  Tensor x = gpu(Tensor::randn({1, 8, 64, 64}, 3));
  auto step = [&] {
    Tensor y = relu(conv2d(x, w, b, {1, 1, 1, 1, 1}));
    return sum(y).item();
  };
  step();
  step();
  const MemoryStats s0 = backend_for(kGpu).memory_stats();
  for (int i = 0; i < 5; ++i) step();
  const MemoryStats s1 = backend_for(kGpu).memory_stats();
  REQUIRE(s1.device_allocations == s0.device_allocations);
  REQUIRE(s1.cache_hits > s0.cache_hits);
}

TEST_CASE("cuda: errors name the problem", "[cuda][errors]") {
  REQUIRE_GPU();
  REQUIRE_THROWS_WITH(Tensor::empty({int64_t(1) << 46}, DType::F32, kGpu),
                      Contains("out of memory") && Contains("cuda:0"));
  Tensor a = Tensor::zeros({2, 2}, DType::F32, kGpu);
  REQUIRE_THROWS_WITH(relu(a.to(DType::I32)), Contains("i32"));
}

// ROIAlign evaluates the shared kernels/common/roi_align.h per output value, in the same order on
// both backends, compiled without contraction on both (CMakeLists.txt: ST_SHARED_MATH_SOURCES and
// --fmad=false; tests/test_shared_math.cpp): bit for bit.
TEST_CASE("cuda: ROIAlign (the teacher's pooler) matches the CPU", "[cuda][teacher]") {
  REQUIRE_GPU();
  Tensor x = Tensor::randn({2, 5, 19, 23}, 1);
  std::vector<float> rv;
  for (int i = 0; i < 30; ++i) {
    const float x0 = float((i * 37) % 90) - 10, y0 = float((i * 53) % 70) - 10;
    rv.insert(rv.end(), {float(i % 2), x0, y0, x0 + float(i % 17) + 0.5f, y0 + float(i % 11) + 1.5f});
  }
  Tensor rois = Tensor::from_vector(rv, {30, 5});
  for (bool aligned : {true, false})
    for (int64_t sr : {int64_t(0), int64_t(2)}) {
      INFO("aligned " << aligned << " sampling " << sr);
      Tensor yc = teacher::roi_align(x, rois, 7, 7, 0.25, sr, aligned);
      Tensor yg = teacher::roi_align(gpu(x), rois, 7, 7, 0.25, sr, aligned);
      REQUIRE(yg.device() == kGpu);
      REQUIRE(cpu(yg).to_vector<float>() == yc.to_vector<float>());
    }
}

TEST_CASE("cuda: NMS, top-k and mask paste (the teacher's glue ops) match the CPU", "[cuda][teacher]") {
  REQUIRE_GPU();
  // 700 boxes in clusters (many overlaps near the threshold), scores with ties.
  const int64_t K = 700;
  std::vector<float> bv, sv;
  for (int64_t i = 0; i < K; ++i) {
    const float cx = float((i % 37) * 9), cy = float((i % 23) * 11), w = 8.0f + float(i % 7), h = 9.0f + float(i % 5);
    bv.insert(bv.end(), {cx - w, cy - h, cx + w + float(i % 3) * 0.25f, cy + h});
    sv.push_back(float((i * 7919) % 101) / 100.0f);  // ties
  }
  Tensor boxes = Tensor::from_vector(bv, {K, 4}), scores = Tensor::from_vector(sv, {K});
  for (double thr : {0.3, 0.5, 0.7}) {
    INFO("threshold " << thr);
    REQUIRE(teacher::nms(gpu(boxes), gpu(scores), thr) == teacher::nms(boxes, scores, thr));
  }
  std::vector<int64_t> groups;
  for (int64_t i = 0; i < K; ++i) groups.push_back(i % 5);
  REQUIRE(teacher::batched_nms(gpu(boxes), gpu(scores), groups, 0.5) ==
          teacher::batched_nms(boxes, scores, groups, 0.5));
  Tensor big = Tensor::uniform({200003}, -3, 3, 9);
  REQUIRE(teacher::topk(gpu(big), 1000) == teacher::topk(big, 1000));
  REQUIRE(teacher::topk(gpu(scores), K) == teacher::topk(scores, K));  // ties: lower index first
  // Paste: 40 random masks and boxes (some partly outside), both conventions, bit for bit.
  const int64_t D = 40, M = 28, H = 90, W = 130;
  Tensor masks = Tensor::uniform({D, M, M}, 0, 1, 4);
  std::vector<float> pb;
  for (int64_t d = 0; d < D; ++d) {
    const float x0 = float((d * 13) % 140) - 10.5f, y0 = float((d * 7) % 95) - 5.25f;
    pb.insert(pb.end(), {x0, y0, x0 + 3.0f + float(d % 11) * 4.1f, y0 + 2.0f + float(d % 9) * 3.7f});
  }
  Tensor pboxes = Tensor::from_vector(pb, {D, 4});
  for (auto conv : {teacher::Convention::Detectron2, teacher::Convention::Torchvision}) {
    Tensor c = teacher::paste_masks(masks, pboxes, H, W, conv);
    Tensor g = teacher::paste_masks(gpu(masks), pboxes, H, W, conv);
    REQUIRE(g.device() == kGpu);
    REQUIRE(cpu(g).to_vector<uint8_t>() == c.to_vector<uint8_t>());
  }
}

// batched_nms's one launch over every group (nms_mask with groups), gather_rows and
// select_proposals with the RPN's tensors on the GPU: bit for bit the CPU's answers, on data
// that crosses their edges: groups over two words long (more than 128 boxes), a mask wider than
// the longest group needs, ids with gaps, ties, identical boxes, an empty level, ties at the
// top-k cut, a gather into a slice at an offset.
TEST_CASE("cuda: grouped NMS in one launch, row gathers and proposal selection match the CPU bit for bit",
          "[cuda][teacher]") {
  REQUIRE_GPU();
  std::mt19937_64 rng(16);
  std::uniform_real_distribution<float> u(0.0f, 1.0f);
  const std::vector<int64_t> sizes = {200, 1, 64, 65, 0, 3, 129, 17};
  std::vector<int64_t> groups;  // group-major: the order nms_mask takes
  for (size_t g = 0; g < sizes.size(); ++g)
    for (int64_t k = 0; k < sizes[g]; ++k) groups.push_back(int64_t(g) * 4 - 7);
  const int64_t K = int64_t(groups.size());
  std::vector<float> bv, sv;
  for (int64_t k = 0; k < K; ++k) {
    if (k % 13 == 7) {
      const std::vector<float> prev(bv.end() - 4, bv.end());
      bv.insert(bv.end(), prev.begin(), prev.end());
    } else {
      const float cx = float(int(u(rng) * 5)) * 25 + u(rng) * 8, cy = float(int(u(rng) * 4)) * 25 + u(rng) * 8;
      const float w = 5 + u(rng) * 15, h = 5 + u(rng) * 15;
      bv.insert(bv.end(), {cx - w, cy - h, cx + w, cy + h});
    }
    sv.push_back(float(int(u(rng) * 16)) / 16.0f);
  }
  Tensor boxes = Tensor::from_vector(bv, {K, 4}), scores = Tensor::from_vector(sv, {K});
  Tensor gids = Tensor::from_vector(groups, {K});
  const int64_t words = (200 + 63) / 64 + 1;
  for (double thr : {0.3, 0.5, 0.7}) {
    INFO("threshold " << thr);
    Tensor mc = Tensor::full({K, words}, -1.0, DType::I64);
    backend_for(Device::cpu()).nms_mask(boxes, gids, thr, mc);
    Tensor mg = Tensor::full({K, words}, -1.0, DType::I64, kGpu);
    backend_for(kGpu).nms_mask(gpu(boxes), gpu(gids), thr, mg);
    REQUIRE(cpu(mg).to_vector<int64_t>() == mc.to_vector<int64_t>());
    // Shuffled groups through batched_nms, on GPU tensors and on host vectors sent to the GPU.
    std::vector<int64_t> shuffled(groups);
    std::shuffle(shuffled.begin(), shuffled.end(), rng);
    const auto want = teacher::batched_nms(boxes, scores, shuffled, thr);
    REQUIRE(want.size() < size_t(K));
    REQUIRE(teacher::batched_nms(gpu(boxes), gpu(scores), shuffled, thr) == want);
    REQUIRE(teacher::batched_nms(bv, sv, shuffled, thr, kGpu) == want);
  }
  // gather_rows into a slice of a larger tensor (an offset, rows of 4).
  Tensor src = Tensor::uniform({300, 4}, -5, 5, 8);
  std::vector<int64_t> pick;
  for (int64_t i = 0; i < 97; ++i) pick.push_back((i * 61) % 300);
  Tensor index = Tensor::from_vector(pick, {97});
  Tensor oc = Tensor::zeros({120, 4}), og = Tensor::zeros({120, 4}, DType::F32, kGpu);
  Tensor oc_slice = oc.narrow(0, 11, 97), og_slice = og.narrow(0, 11, 97);
  backend_for(Device::cpu()).gather_rows(src, index, oc_slice);
  backend_for(kGpu).gather_rows(gpu(src), gpu(index), og_slice);
  REQUIRE(cpu(og).to_vector<float>() == oc.to_vector<float>());
  // select_proposals: three levels (one empty), logits with ties at the cut, anchors on the
  // host and on the GPU, both conventions.
  std::vector<teacher::RpnLevel> levels;
  for (int64_t n : {900, 0, 2500}) {
    std::vector<float> lg, an;
    for (int64_t i = 0; i < n; ++i) {
      lg.push_back(float(int(u(rng) * 40)) / 8.0f - 2.5f);
      const float cx = u(rng) * 300, cy = u(rng) * 200, w = 8 + u(rng) * 60, h = 8 + u(rng) * 60;
      an.insert(an.end(), {cx - w, cy - h, cx + w, cy + h});
    }
    levels.push_back({Tensor::from_vector(lg, {n}), Tensor::uniform({n, 4}, -0.6, 0.6, uint64_t(n) + 1),
                      Tensor::from_vector(an, {n, 4})});
  }
  for (auto conv : {teacher::Convention::Detectron2, teacher::Convention::Torchvision})
    for (bool anchors_on_gpu : {false, true}) {
      INFO((conv == teacher::Convention::Detectron2 ? "detectron2" : "torchvision")
           << (anchors_on_gpu ? ", anchors on the GPU" : ", anchors on the host"));
      std::vector<teacher::RpnLevel> on_gpu;
      for (const auto& L : levels)
        on_gpu.push_back({gpu(L.logits), gpu(L.deltas), anchors_on_gpu ? gpu(L.anchors) : L.anchors});
      const auto c = teacher::select_proposals(levels, 200, 300, conv, 700, 500, 0.7);
      const auto g = teacher::select_proposals(on_gpu, 200, 300, conv, 700, 500, 0.7);
      REQUIRE(c.level == g.level);
      REQUIRE(cpu(g.boxes).to_vector<float>() == c.boxes.to_vector<float>());
      REQUIRE(cpu(g.scores).to_vector<float>() == c.scores.to_vector<float>());
      REQUIRE(c.level.size() > 100);
    }
}

// The teacher on the GPU against torchvision's float64 run of the same seeded model, with the
// bounds of the CPU tests (test_teacher_backbone.cpp): every element of C2..C5 and P2..P6 within
// lambda * sigma, sigma bounding any float32 forward's rounding in any summation order; end to
// end, the detection sets with the suite's one set of fixed tolerances (tests/README.md).
TEST_CASE("cuda: the Mask R-CNN teacher's backbone matches torchvision's float64 on the GPU",
          "[cuda][teacher][golden]") {
  REQUIRE_GPU();
  if (!test::have_torchvision()) ST_SKIP("Debian's python3-torchvision is not installed (tools/bootstrap.sh --bench)");
  test::check_teacher_backbone_golden(kGpu);
}

TEST_CASE("cuda: the Mask R-CNN teacher end to end matches torchvision's model output on the GPU",
          "[cuda][teacher][golden]") {
  REQUIRE_GPU();
  if (!test::have_torchvision()) ST_SKIP("Debian's python3-torchvision is not installed (tools/bootstrap.sh --bench)");
  test::check_teacher_end_to_end(64, 96, kGpu);
  test::check_teacher_end_to_end(80, 120, kGpu);
}

// ---------------- wider GPU cases ----------------
// The wider cases' bounds on the CPU alone (float32 against float64), as the suite's above.
TEST_CASE("cuda parity bounds: the wide cases hold them on the CPU, float32 against float64 (no GPU needed)",
          "[cuda]") {
  const Sides s = f32_f64();
  ce_wrap_cases(s);
  sum_to_cases(s);
  wide_batch_norm_cases(s);
  view_cases(s);
  ce_bad_target_cases(Device::cpu());
}

TEST_CASE("cuda: cross-entropy over more pixels than its grid (the grid-stride loop wraps)", "[cuda]") {
  REQUIRE_GPU();
  ce_wrap_cases(cpu_gpu());
  ce_wrap_cases(cpu_gpu64());
}

TEST_CASE("cuda: sum_to with >= 1024 outputs, short and long rows, transposed and permuted views",
          "[cuda]") {
  REQUIRE_GPU();
  sum_to_cases(cpu_gpu());
  sum_to_cases(cpu_gpu64());
}

TEST_CASE("cuda: batch norm over > 4096 channels, one pixel or many, and over a large plane", "[cuda]") {
  REQUIRE_GPU();
  wide_batch_norm_cases(cpu_gpu());
  wide_batch_norm_cases(cpu_gpu64());
}

TEST_CASE("cuda: element-wise ops on non-contiguous views of several dims (mergeable and not)", "[cuda]") {
  REQUIRE_GPU();
  view_cases(cpu_gpu());
  view_cases(cpu_gpu64());
}

// float64 on the GPU (cuDNN's and cuBLAS's double paths, every kernel's double instantiation)
// through the whole parity suite.
TEST_CASE("cuda: float64 through every parity case", "[cuda]") {
  REQUIRE_GPU();
  const Sides s = cpu_gpu64();
  conv_cases(s);
  conv_transpose_cases(s);
  batch_norm_cases(s);
  resample_cases(s);
  softmax_cases(s);
  matmul_cases(s);
  adam_cases(s);
}

TEST_CASE("cuda: an invalid cross-entropy target is named, value and pixel, by the time the loss is read",
          "[cuda][errors]") {
  REQUIRE_GPU();
  ce_bad_target_cases(kGpu);
}

// The CUDA backend plans a convolution per shape and parameters (cuDNN's algorithm choice,
// cached): convolutions that differ only in stride or padding get plans of their own, each
// matches the CPU; run again, in another order, each gives the same bits as the first time; the
// same shapes in float64 get their own plan.
TEST_CASE("cuda: convolutions differing only in stride or padding each match the CPU, and repeats give the same bits",
          "[cuda]") {
  REQUIRE_GPU();
  const Tensor x = randn({2, 8, 21, 19}, 100), w = randn({12, 8, 3, 3}, 101, 0.3), b = randn({12}, 102);
  const std::vector<Conv2dParams> ps = {
      {1, 1, 1, 1, 1}, {2, 2, 1, 1, 1}, {1, 1, 0, 0, 1}, {2, 1, 0, 1, 1}, {1, 2, 1, 0, 1}};
  std::vector<std::vector<float>> first;
  for (const Conv2dParams& p : ps) {
    INFO("stride " << p.stride_h << "x" << p.stride_w << " pad " << p.pad_h << "x" << p.pad_w);
    parity(cpu_gpu(), [&](auto& v) { return conv2d(v[0], v[1], v[2], p); },
           {{"x", x}, {"w", w}, {"b", b}}, {"x", "w", "b"}, conv2d_rule(w.shape(), p, true));
    first.push_back(cpu(conv2d(gpu(x), gpu(w), gpu(b), p)).to_vector<float>());
  }
  for (size_t i = ps.size(); i-- > 0;) {
    INFO("repeat of case " << i);
    REQUIRE(cpu(conv2d(gpu(x), gpu(w), gpu(b), ps[i])).to_vector<float>() == first[i]);
  }
  parity(cpu_gpu64(), [&](auto& v) { return conv2d(v[0], v[1], v[2], ps[1]); },
         {{"x", x}, {"w", w}, {"b", b}}, {"x", "w", "b"}, conv2d_rule(w.shape(), ps[1], true));
  REQUIRE(cpu(conv2d(gpu(x), gpu(w), gpu(b), ps[1])).to_vector<float>() == first[1]);
}

// ---------------- TF32 (the production default) ----------------
// TF32 keeps 10 of float32's 23 fraction bits of each operand of a product (tensor cores read
// float32 data and drop the rest, or the library rounds them): the relative error per operand is
// below 2^-10 (2^-11 if rounded to nearest), per product below (1 + 2^-10)^2 - 1 = 2^-9 + 2^-20.
// The products are accumulated in float32; without assuming round-to-nearest additions (each
// within an ulp, 2u), a sum of K of them is within gamma(K + 1, 2u) of their sum. So each result
// is within (2^-9 + 2^-20 + gamma(K + 2, 2u)) * sum|terms| of the exact result, and the float64
// CPU reference within gamma(K, 2^-53) * sum|terms| of it. Such tests need TF32 on in their
// process: hidden from the default runs ("[.]"), they run under their own ctest entry
// (CMakeLists.txt: "cuda-tf32: ...").
namespace {
void tf32_parity(const Forward& f, const Named& in, const std::vector<std::string>& diff,
                 const std::map<std::string, double>& K) {
  const Side gpu_side{kGpu, DType::F32};
  std::vector<Tensor> leaves = on_side(in, diff, gpu_side);
  Tensor y = f(leaves);
  const Tensor gy = Tensor::randn(y.shape(), 99);
  const Bounds ref = test::propagate64(f, in, diff, false, gy);
  const Bounds sums = test::abs_terms(f, in, diff, gy);
  if (!diff.empty()) y.backward(gpu(gy));
  std::map<std::string, Tensor> got{{"y", y}};
  for (size_t i = 0; i < in.size(); ++i)
    if (leaves[i].requires_grad()) got["g" + in[i].first] = leaves[i].grad();
  for (auto& [role, t] : got) {
    INFO("TF32 " << role << " against float64");
    REQUIRE(K.count(role));
    const double k = K.at(role);
    const double rel = 0x1p-9 + 0x1p-20 + test::gamma(k + 2, 2 * kU32) + test::gamma(k, kU64);
    ST_REQUIRE_WITHIN(cpu(t), ref.at(role), mul_scalar(sums.at(role), rel));
  }
}
}  // namespace

TEST_CASE("cuda-tf32: convolution and matmul with TF32 on, within the TF32 bound of float64",
          "[.][cuda-tf32]") {
  ST_REQUIRE_CUDA_GPU_WITH(test::CudaNumerics::Tf32);
  for (const ConvCase& c : conv_cases()) {
    INFO("conv " << shape_str(c.x) << " * " << shape_str(c.w));
    const Tensor y0 = conv2d(Tensor::zeros(c.x), Tensor::zeros(c.w), Tensor(), c.p);  // its shape
    tf32_parity([&](auto& v) { return conv2d(v[0], v[1], v[2], c.p); },
                {{"x", randn(c.x, 120)}, {"w", randn(c.w, 121, 0.3)}, {"b", randn({c.w[0]}, 122)}},
                {"x", "w", "b"}, test::conv2d_k(c.w, y0.shape(), c.p, true));
  }
  // A larger K: 64 channels of 3x3 (576 products per output).
  const Conv2dParams p{1, 1, 1, 1, 1};
  tf32_parity([&](auto& v) { return conv2d(v[0], v[1], v[2], p); },
              {{"x", randn({2, 64, 20, 24}, 123)}, {"w", randn({32, 64, 3, 3}, 124, 0.1)}, {"b", randn({32}, 125)}},
              {"x", "w", "b"}, test::conv2d_k({32, 64, 3, 3}, {2, 32, 20, 24}, p, true));
  // matmul (M,K) @ (K,N): y sums K products, ga N, gb M; and transposed operands.
  auto mm = [](auto& v) { return matmul(v[0], v[1]); };
  tf32_parity(mm, {{"a", randn({130, 257}, 126)}, {"b", randn({257, 70}, 127)}}, {"a", "b"},
              {{"y", 257}, {"ga", 70}, {"gb", 130}});
  tf32_parity([](auto& v) { return matmul(v[0].transpose(0, 1), v[1].transpose(0, 1)); },
              {{"a", randn({300, 65}, 128)}, {"b", randn({33, 300}, 129)}}, {"a", "b"},
              {{"y", 300}, {"ga", 33}, {"gb", 65}});
}
