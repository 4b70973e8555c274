// Helpers shared by the tests: skipping, comparison within per-element error bounds, finite
// differences.
#pragma once
#include <catch2/catch.hpp>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <string>

#include "tensor/autograd.h"
#include "tensor/device_status.h"
#include "tensor/ops.h"

namespace st::test {

// Records the current test case as skipped, with its reason (tests/main.cpp lists the skipped
// cases after the run and counts them apart from the passed ones).
void note_skip(const std::string& reason);

// Reports the current test as skipped. Under ctest (which sets ST_SKIP_EXIT=1) the process
// exits with code 77, which ctest shows as "Skipped"; run by hand, it warns, records the case
// (note_skip: Catch2 v2 would count it as passed) and returns.
#define ST_SKIP(reason)                                               \
  do {                                                                \
    std::string st_skip_reason_ = (reason);                           \
    if (std::getenv("ST_SKIP_EXIT")) {                                \
      std::printf("SKIPPED: %s\n", st_skip_reason_.c_str());          \
      std::fflush(stdout);                                            \
      std::_Exit(77);                                                 \
    }                                                                 \
    ::st::test::note_skip(st_skip_reason_);                           \
    WARN("SKIPPED: " << st_skip_reason_);                             \
    return;                                                           \
  } while (0)

// What a test that needs a CUDA GPU does: run, skip, or (ST_REQUIRE_GPU set to anything but ""
// or "0": tools/gpu_check.sh sets it) fail, where it would otherwise skip, with the reason the GPU
// is not usable. Apart from cuda_gate() so the decision is tested on any machine.
struct GpuGate {
  enum Action { Run, Skip, Fail } action = Run;
  std::string message;  // why it skips or fails; "" when it runs
};
inline bool gpu_required() {
  const char* e = std::getenv("ST_REQUIRE_GPU");
  return e && *e && std::string(e) != "0";
}
inline GpuGate gpu_gate(const DeviceStatus& s, bool required) {
  if (s.state == DeviceState::Usable) return {GpuGate::Run, ""};
  const std::string why = std::string("no usable CUDA GPU, ") + device_state_name(s.state) + ": " + s.reason;
  if (required) return {GpuGate::Fail, why + " (ST_REQUIRE_GPU is set: a GPU was required)"};
  return {GpuGate::Skip, why};
}
// The CUDA device's status, probed once per process.
inline const DeviceStatus& cuda_status() {
  static const DeviceStatus s = device_status(DeviceType::CUDA);
  return s;
}
inline GpuGate cuda_gate() { return gpu_gate(cuda_status(), gpu_required()); }

// The numerics of the CPU-vs-CUDA parity tests: full f32 products (ST_CUDA_TF32=0) and direct
// sums (ST_CUDNN_DIRECT_SUMS=1: no FFT/Winograd), so each result has an element-wise error bound.
// The TF32 tests ([cuda-tf32], their own ctest entry) want TF32 on (ST_CUDA_TF32=1), the
// production default, with direct sums still. The backend reads these once, at the first
// convolution, so a process has one set: the first test to ask chooses it (before anything
// touches the GPU: ST_REQUIRE_CUDA_GPU asks first thing), and a test that finds the other set
// chosen skips (the gate below) rather than run with numerics its bound does not cover. The other
// switches the backend reads once (ST_CUDNN_BENCHMARK, ST_CUDA_CACHE, ...) are left as the
// environment has them, so a ctest entry can run the parity tests under each.
enum class CudaNumerics { Parity, Tf32 };
inline const char* cuda_numerics_name(CudaNumerics n) {
  return n == CudaNumerics::Parity ? "parity (ST_CUDA_TF32=0)" : "TF32 (ST_CUDA_TF32=1)";
}
inline CudaNumerics set_cuda_numerics(CudaNumerics want) {
  static const CudaNumerics chosen = [want] {
    ::setenv("ST_CUDA_TF32", want == CudaNumerics::Tf32 ? "1" : "0", 1);
    ::setenv("ST_CUDNN_DIRECT_SUMS", "1", 1);
    return want;
  }();
  return chosen;
}
inline void set_cuda_parity_numerics() { (void)set_cuda_numerics(CudaNumerics::Parity); }

// The one way a [cuda] test says it needs a GPU: runs on; skips (ST_SKIP) without a usable one;
// fails instead, naming why, under ST_REQUIRE_GPU=1. Chooses the parity numerics first (above);
// ST_REQUIRE_CUDA_GPU_WITH(CudaNumerics::Tf32) the TF32 ones. A process whose numerics another
// test already chose skips the test (under ST_REQUIRE_GPU too: it is no GPU problem).
#define ST_REQUIRE_CUDA_GPU_WITH(numerics_)                                                     \
  do {                                                                                          \
    const ::st::test::CudaNumerics st_want_ = (numerics_);                                      \
    const ::st::test::CudaNumerics st_have_ = ::st::test::set_cuda_numerics(st_want_);          \
    if (st_have_ != st_want_)                                                                   \
      ST_SKIP(std::string("this process already runs the CUDA backend with the ") +             \
              ::st::test::cuda_numerics_name(st_have_) + " numerics; this test needs " +        \
              ::st::test::cuda_numerics_name(st_want_) + ": run it in a process of its own");   \
    const ::st::test::GpuGate st_gate_ = ::st::test::cuda_gate();                               \
    if (st_gate_.action == ::st::test::GpuGate::Fail) FAIL(st_gate_.message);                   \
    if (st_gate_.action == ::st::test::GpuGate::Skip) ST_SKIP(st_gate_.message);                \
  } while (0)
#define ST_REQUIRE_CUDA_GPU() ST_REQUIRE_CUDA_GPU_WITH(::st::test::CudaNumerics::Parity)

inline std::filesystem::path source_dir() { return ST_SOURCE_DIR; }
// The shared/ folder: ST_SHARED_DIR from the environment, else the configured path.
inline std::filesystem::path shared_dir() {
  if (const char* e = std::getenv("ST_SHARED_DIR")) return e;
  return ST_SHARED_DIR;
}

// Unit roundoff of float32 (half an ulp of 1): every float operation rounds with relative error
// at most kU32. gamma(n) = n u / (1 - n u) bounds the relative error that n roundings in a row
// accumulate (Higham, Accuracy and Stability of Numerical Algorithms, 2nd ed., Lemma 3.1): a sum
// of n products in any order, with or without fused multiply-adds, is off from the exact sum by
// at most gamma(n) * (sum of |products|).
constexpr double kU32 = 0x1p-24;
constexpr double kU16 = 0x1p-11;
inline double gamma(double n, double u = kU32) { return n * u / (1.0 - n * u); }

struct BoundDiff {
  double worst_ratio = 0;  // max |a - ref| / bound
  double err = 0, bound = 0, ref = 0;  // at the worst element
  int64_t worst = -1;
  bool ok = true;
};

// |a - ref| <= bound elementwise, where `bound` is a per-element error bound derived from the
// computation (same shape; see tests/README.md). Reports the element closest to (or furthest
// past) its bound.
inline BoundDiff compare_within(const Tensor& a, const Tensor& ref, const Tensor& bound) {
  REQUIRE(a.shape() == ref.shape());
  REQUIRE(bound.shape() == ref.shape());
  auto va = a.to_vector<double>(), vr = ref.to_vector<double>(), vb = bound.to_vector<double>();
  BoundDiff d;
  for (size_t i = 0; i < va.size(); ++i) {
    const double e = std::abs(va[i] - vr[i]);
    if (!(e <= vb[i])) d.ok = false;  // NaN fails too
    const double r = e == 0 ? 0.0 : e / vb[i];
    if (d.worst < 0 || r > d.worst_ratio || std::isnan(r)) {
      d.worst_ratio = r, d.worst = int64_t(i), d.err = e, d.bound = vb[i], d.ref = vr[i];
    }
  }
  return d;
}

#define ST_REQUIRE_WITHIN(actual_, reference_, bound_)                                           \
  do {                                                                                           \
    auto st_b_ = ::st::test::compare_within((actual_), (reference_), (bound_));                  \
    INFO("worst element " << st_b_.worst << ": |err| " << st_b_.err << " vs bound " << st_b_.bound \
                          << " (ratio " << st_b_.worst_ratio << "), reference " << st_b_.ref);   \
    REQUIRE(st_b_.ok);                                                                           \
  } while (0)

// Checks the gradients of f at `inputs` (double tensors requiring grad) against central finite
// differences of the scalar sum(f(inputs) * r) with a fixed random r.
inline void check_gradients(const std::function<Tensor(const std::vector<Tensor>&)>& f,
                            std::vector<Tensor> inputs, double eps = 1e-6, double tol = 1e-6) {
  for (auto& t : inputs) REQUIRE(t.dtype() == DType::F64);
  Tensor y0;
  {
    NoGradGuard ng;
    y0 = f(inputs);
  }
  Tensor r = Tensor::randn(y0.shape(), 12345, DType::F64);
  auto scalar = [&](const std::vector<Tensor>& xs) {
    NoGradGuard ng;
    return sum(mul(f(xs), r)).item();
  };
  for (auto& t : inputs) t.set_grad(Tensor());
  Tensor loss = sum(mul(f(inputs), r));
  loss.backward();
  for (size_t k = 0; k < inputs.size(); ++k) {
    if (!inputs[k].requires_grad()) continue;
    Tensor g = inputs[k].grad();
    INFO("input " << k << " shape " << shape_str(inputs[k].shape()));
    REQUIRE(g.defined());
    auto analytic = g.to_vector<double>();
    double* p = inputs[k].data<double>();
    REQUIRE(inputs[k].is_contiguous());
    for (int64_t i = 0; i < inputs[k].numel(); ++i) {
      double old = p[i];
      p[i] = old + eps;
      double up = scalar(inputs);
      p[i] = old - eps;
      double dn = scalar(inputs);
      p[i] = old;
      double numeric = (up - dn) / (2 * eps);
      INFO("element " << i << ": analytic " << analytic[size_t(i)] << " numeric " << numeric);
      REQUIRE(std::abs(analytic[size_t(i)] - numeric) <= tol * (1 + std::abs(numeric)));
    }
  }
}

inline Tensor rand64(const Shape& s, uint64_t seed, bool grad = true) {
  Tensor t = Tensor::randn(s, seed, DType::F64);
  t.set_requires_grad(grad);
  return t;
}

}  // namespace st::test
