// The kernel profiler (tensor/profile.h) at the backend seam: one partial-distillation step's
// backward kernels against the autograd counters, module scopes, the Chrome trace's format,
// work counts, tracks per thread, and that it records nothing once stopped. The CUDA case runs
// the same step on a GPU (skipped without one).
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <thread>
#include <unistd.h>

#include "nn/optim.h"
#include "nn/student.h"
#include "tensor/autograd.h"
#include "tensor/backend.h"
#include "tensor/ops.h"
#include "tensor/profile.h"
#include "test_util.h"

using namespace st;
namespace fs = std::filesystem;

namespace {

struct TempDir {
  fs::path path;
  explicit TempDir(const std::string& tag) {
    static int counter = 0;
    path = fs::temp_directory_path() /
           ("st_" + tag + "_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
    fs::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
};

// Stops the profiler when a test ends, however it ends.
struct Profiling {
  explicit Profiling(const std::string& trace = "") {
    profile::Options o;
    o.trace_path = trace;
    o.at_exit = false;
    profile::start(o);
  }
  ~Profiling() {
    profile::stop();
    profile::reset();
  }
};

// One partial step as the distiller takes it: the front without gradients (cached), the back
// with them, weighted cross-entropy, backward, Adam.
void partial_step(Device dev) {
  nn::Student s(3);
  s.to(dev);
  s.configure(nn::Distillation::Partial);
  const Tensor x = Tensor::uniform({1, 3, 48, 64}, -1, 1, 5).to(dev);
  std::vector<int64_t> labels(48 * 64);
  for (size_t i = 0; i < labels.size(); ++i) labels[i] = int64_t((i * 7) % 9);
  const Tensor target = Tensor::from_vector(labels, {1, 48, 64}).to(dev);
  const Tensor weight = Tensor::full({1, 48, 64}, 1.0).to(dev);
  nn::Adam adam(s.trained_parameters(nn::Distillation::Partial), nn::Adam::Options{1e-3, 0.9, 0.999, 1e-8});
  nn::StudentFront f;
  {
    NoGradGuard no_grad;
    f = s.front(x);
  }
  weighted_cross_entropy(s.back(f), target, weight).backward();
  adam.step();
  backend_for(dev).synchronize();
}

const profile::Row* find_row(const std::vector<profile::Row>& rows, const std::string& label,
                             const std::string& kernel) {
  for (const auto& r : rows)
    if (r.label == label && r.kernel == kernel) return &r;
  return nullptr;
}

void check_partial_step_profile(Device dev, const fs::path& trace_path) {
  reset_backward_kernel_counts();
  const nn::Student paper_split;  // the default partial split: dec2 .. out_conv3 train
  {
    Profiling on(trace_path.string());
    partial_step(dev);
    const auto counts = backward_kernel_counts();
    const auto rows = profile::rows();
    REQUIRE(!counts.empty());
    // Every backward kernel is labelled with kinds the autograd counters saw ('+' joins kinds
    // one kernel computes together: "batch_norm.grad_input+grad_affine"), or as gradient
    // accumulation; every counted kind that runs kernels (add's gradient of a same-shape input
    // is that input: no kernel) labels them.
    std::map<std::string, int64_t> kind_calls;
    for (const auto& r : rows) {
      if (!r.backward) continue;
      INFO(r.label << " " << r.kernel);
      if (r.label == "autograd.accumulate") continue;
      const std::string op = r.label.substr(0, r.label.find('.') + 1);
      size_t from = 0;
      for (;;) {
        const size_t plus = r.label.find('+', from);
        std::string kind = r.label.substr(from, plus == std::string::npos ? plus : plus - from);
        if (kind.rfind(op, 0) != 0) kind = op + kind;
        REQUIRE(counts.count(kind));
        kind_calls[kind] += r.calls;
        if (plus == std::string::npos) break;
        from = plus + 1;
      }
    }
    for (const auto& [kind, n] : counts) {
      if (kind.rfind("add.", 0) == 0) continue;
      INFO(kind);
      REQUIRE(kind_calls[kind] >= n);
    }
    const std::pair<const char*, const char*> one_to_one[] = {
        {"conv2d.grad_input", "conv2d_backward_data"},
        {"conv2d.grad_weight", "conv2d_backward_weight"},
        {"conv2d.grad_bias", "conv2d_backward_bias"}};
    for (const auto& [kind, kernel] : one_to_one) {
      INFO(kind);
      const profile::Row* r = find_row(rows, kind, kernel);
      REQUIRE(r != nullptr);
      REQUIRE(r->calls == counts.at(kind));
      for (const auto& other : rows)  // and no other kernel under that label
        if (other.label == kind) REQUIRE(other.kernel == kernel);
    }
    // The partial step's shape: the 11 convs of dec2 .. out_conv3 (4 per block, 3 out convs)
    // each get a weight gradient and an input gradient (dec2's first convs read relu(BN(.)) of
    // a trained BN); no conv of the front gets either.
    REQUIRE(counts.at("conv2d.grad_input") == 11);
    REQUIRE(counts.at("conv2d.grad_weight") == 11);
    // Forward work: every conv of the student once (the front under no_grad too): in_conv1,
    // in_conv2, 4 in each `diff` block (enc1, enc3, dec1, dec2, dec3), 3 in `same` enc2, and
    // out_conv1 .. out_conv3: 2 + 20 + 3 + 3.
    const profile::Row* fwd = find_row(rows, "conv2d_forward", "conv2d_forward");
    REQUIRE(fwd != nullptr);
    REQUIRE(!fwd->backward);
    REQUIRE(fwd->calls == 28);
    REQUIRE(fwd->flops > 0);
    REQUIRE(find_row(rows, "adam_step", "adam_step") != nullptr);

    // Scopes: forward work in the front's and the back's modules; backward work in the back's
    // only, none in the frozen front.
    std::set<std::string> fwd_scopes, bwd_scopes;
    for (const auto& s : profile::scope_rows()) {
      if (s.forward_calls) fwd_scopes.insert(s.scope);
      if (s.backward_calls) bwd_scopes.insert(s.scope);
    }
    for (const char* s : {"in_conv1", "enc1.long_path.0", "enc1.preact_path.0", "dec1",
                          "dec2.long_path.0", "out_conv3", "student"})
      CHECK(fwd_scopes.count(s));
    for (const char* s : {"dec2.long_path.0", "dec2.short_path", "dec3", "out_conv1", "out_conv3"})
      CHECK(bwd_scopes.count(s));
    auto in_front = [&](const std::string& sc) { return paper_split.front_scope(sc); };
    for (const auto& s : bwd_scopes) {
      INFO(s);
      REQUIRE(!in_front(s));
    }
    REQUIRE(profile::backward_ms_where(in_front) == 0.0);
    for (const char* s : {"in_conv1", "enc2.long_path.3", "dec1"}) CHECK(in_front(s));
    for (const char* s : {"dec2", "dec2.short_path", "out_conv1", "student", "enc", ""})
      CHECK(!in_front(s));

    // The trace: valid JSON, one complete event per recorded call, named tracks.
    int64_t total_calls = 0;
    for (const auto& r : rows) total_calls += r.calls;
    profile::write_trace(trace_path.string());
    std::ifstream in(trace_path);
    const auto j = nlohmann::json::parse(in);  // throws on invalid JSON
    REQUIRE(j.at("traceEvents").is_array());
    int64_t complete = 0;
    std::set<int64_t> named_tracks, used_tracks;
    for (const auto& e : j["traceEvents"]) {
      if (e.at("ph") == "M") {
        REQUIRE(e.at("name") == "thread_name");
        REQUIRE(!e.at("args").at("name").get<std::string>().empty());
        named_tracks.insert(e.at("tid").get<int64_t>());
        continue;
      }
      REQUIRE(e.at("ph") == "X");
      REQUIRE(e.at("dur").get<double>() >= 0);
      REQUIRE(e.at("ts").get<double>() >= 0);
      REQUIRE(!e.at("name").get<std::string>().empty());
      REQUIRE(e.at("args").contains("kernel"));
      REQUIRE(e.at("args").contains("scope"));
      REQUIRE((e.at("cat") == "forward" || e.at("cat") == "backward"));
      used_tracks.insert(e.at("tid").get<int64_t>());
      ++complete;
    }
    REQUIRE(complete == total_calls);
    for (auto t : used_tracks) REQUIRE(named_tracks.count(t));
    if (dev.is_cuda()) {
      bool cuda_track = false;
      for (const auto& e : j["traceEvents"])
        if (e.at("ph") == "M" && e["args"]["name"].get<std::string>().rfind("cuda:", 0) == 0)
          cuda_track = true;
      REQUIRE(cuda_track);
    }
  }
  // Stopped: nothing more is recorded.
  partial_step(dev);
  REQUIRE(profile::rows().empty());
}

}  // namespace

TEST_CASE("profile: a partial step's backward kernels match the autograd counters, none in the frozen front",
          "[profile][portable]") {
  TempDir dir("profile");
  check_partial_step_profile(Device::cpu(), dir.path / "trace.json");
}

TEST_CASE("profile: the same on the CUDA backend (events on the stream)", "[profile][cuda]") {
  ST_REQUIRE_CUDA_GPU();
  TempDir dir("profile_cuda");
  check_partial_step_profile(Device::cuda(0), dir.path / "trace.json");
}

TEST_CASE("profile: work counts of a convolution and a matmul", "[profile][portable]") {
  Profiling on;
  const Tensor x = Tensor::uniform({2, 3, 10, 12}, -1, 1, 1);
  const Tensor w = Tensor::uniform({5, 3, 3, 1}, -1, 1, 2);
  const Tensor b = Tensor::zeros({5});
  Conv2dParams p;
  p.stride_h = 2;
  p.pad_h = 1;
  const Tensor y = conv2d(x, w, b, p);  // (2, 5, 5, 12)
  REQUIRE(y.shape() == Shape{2, 5, 5, 12});
  const Tensor a = Tensor::uniform({7, 4}, -1, 1, 3), c = Tensor::uniform({4, 6}, -1, 1, 4);
  (void)matmul(a, c);
  const auto rows = profile::rows();
  const profile::Row* conv = find_row(rows, "conv2d_forward", "conv2d_forward");
  const profile::Row* mm = find_row(rows, "matmul", "matmul");
  REQUIRE(conv != nullptr);
  REQUIRE(mm != nullptr);
  // 2 flops per multiply-add: outputs 2*5*5*12 = 600, each a sum over 3 channels * 3 * 1 taps.
  REQUIRE(conv->flops == 2.0 * 600 * 9);
  // x, w, bias and y, 4 bytes per element, once each.
  REQUIRE(conv->bytes == 4.0 * (2 * 3 * 10 * 12 + 5 * 3 * 3 + 5 + 600));
  REQUIRE(mm->flops == 2.0 * 7 * 6 * 4);
  REQUIRE(mm->bytes == 4.0 * (7 * 4 + 4 * 6 + 7 * 6));
}

TEST_CASE("profile: one track per thread, named when the thread names itself", "[profile][portable]") {
  TempDir dir("profile_threads");
  const fs::path path = dir.path / "threads.json";
  Profiling on(path.string());
  auto work = [] {
    const Tensor t = Tensor::uniform({64, 64}, -1, 1, 9);
    (void)relu(t);
  };
  work();
  std::thread other([&] {
    profile::set_thread_name("helper");
    work();
  });
  other.join();
  profile::write_trace(path.string());
  std::ifstream in(path);
  const auto j = nlohmann::json::parse(in);
  std::set<std::string> names;
  std::set<int64_t> tids;
  for (const auto& e : j["traceEvents"]) {
    if (e["ph"] == "M") names.insert(e["args"]["name"].get<std::string>());
    else tids.insert(e["tid"].get<int64_t>());
  }
  REQUIRE(tids.size() == 2);
  REQUIRE(names.count("helper"));
}
