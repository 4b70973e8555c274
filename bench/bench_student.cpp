// Student benchmark (CPU, float32, N = 1): what the edge client and the server pay per frame.
//
// For each size (default 1280x720 and 768x576) it times, one warm-up then the median of >= 3
// repetitions:
//   forward       student forward under NoGradGuard (edge inference);
//   step-partial  one partial-distillation step of Algorithm 1 on the server (SPEC §4): the
//                 frozen front is computed once outside the timed region, then
//                 [back forward with grad, weighted CE loss, backward, Adam over the 26 tensors];
//   step-full     one full-distillation step: [full forward with grad, loss, backward, Adam over
//                 all 68 tensors].
// GFLOP/s use the conv FLOPs of the reference graph (SPEC §2: 6.21 GMAC = 12.42 GFLOP per
// forward at 1280x720, out_conv3 applied after the last upsample), counted from the conv shapes;
// a training step counts forward + weight gradient + input gradient of every conv that needs one.
// Our Student applies out_conv3 before the last upsample (exactly equivalent, fewer FLOPs), so
// our "effective" GFLOP/s credit us with work we skip; the peer runs the reference order.
//
// "cores busy" = CPU time / wall time over the timed reps (ours and the peer's): with 2 threads
// a value well under 2 means another process held a core and the time is inflated (OpenMP
// teams wait at every barrier for a descheduled thread); rerun when the machine is quiet.
//
// Peak memory: the bench re-runs itself as a child per mode (`--rss MODE W H`), so each peak
// (VmHWM of /proc/self/status) is isolated; the child also reports the resident size right
// before the measured work (weights, input and target loaded).
//
// The peer is bench/student_peer.py under Debian's torch (/usr/bin/python3, 2 threads): the same
// three measurements, parsed from its JSON lines; ratio = peer ms / our ms (> 1: we are faster).
// If python3 or torch is missing it prints "peer: missing (...)" and still exits 0.
//
// Weights: <shared>/models/student_lvs9_pretrained.safetensors when present (shared dir from the
// ST_SHARED_DIR environment variable, else the compile definition), else the default init.
// Input: Tensor::randn * 50 (pixel range); target: a person rectangle on background, via
// make_target (loss weight 5 inside the expanded box).
//
// Usage: bench_student [SOURCE_DIR] [--no-peer] [--no-rss] [--reps N] [--sizes 1280x720,768x576]
//                      [--modes forward,step-partial,step-full]   (which of ours to time)
//                      [--device cpu|cuda] [--peak-gflops G]   (cuda: GPU timings, synchronised
//                      per phase; the peer runs on the same GPU; G gives "% of peak")
//                      [--profile FILE]   (the kernel profiler, tensor/profile.h: tables at
//                      exit, Chrome trace to FILE)
//                      [--train-from BLOCK | --train-last K] [--train all|bias]   (what the
//                      partial step trains: BLOCK in_conv2 .. out_conv3, default dec2, or the
//                      last K blocks; bias: biases and BN affine only)
//
// After the timed reps of a step, one more step runs under the kernel profiler and the time of
// its backward kernels in the frozen front's modules (in_conv1 .. dec1) is printed: zero for a
// partial step, by construction of partial backward.
//        bench_student --rss forward|step-partial|step-full W H      (child mode)
#include <omp.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include "bench/bench_util.h"
#include "nn/distill.h"
#include "nn/optim.h"
#include "nn/student.h"
#include "tensor/autograd.h"
#include "tensor/ops.h"
#include "tensor/profile.h"

#ifndef ST_SOURCE_DIR
#define ST_SOURCE_DIR "."
#endif
#ifndef ST_SHARED_DIR
#define ST_SHARED_DIR "../shared"
#endif

using st::Tensor;
using st::nn::Distillation;
using st::nn::Student;
using clk = std::chrono::steady_clock;

using st::bench::json_field;
using st::bench::run_lines;

namespace {

// --device cuda: the student, input and target live on the GPU; each phase ends with a device
// synchronisation so wall-clock times cover the GPU work.
st::Device g_dev = st::Device::cpu();
void sync() {
  if (g_dev.is_cuda()) st::backend_for(g_dev).synchronize();
}

const char* kModes[3] = {"forward", "step-partial", "step-full"};

struct Size {
  int64_t w, h;
};

std::string size_str(const Size& s) { return std::to_string(s.w) + "x" + std::to_string(s.h); }

// ---------------- FLOP count from the conv shapes (reference graph) ----------------
struct ConvFlops {
  double forward = 0;   // all convs, reference order (out_conv3 at full resolution)
  double back_fwd = 0;  // convs of dec2 .. out_conv3
  double front_fwd = 0;
  double in_conv1 = 0;  // its input (the image) never needs a gradient
};

int64_t out_dim(int64_t in, int64_t k, int64_t s) { return (in + 2 * (k / 2) - k) / s + 1; }

ConvFlops count_flops(const Size& sz) {
  ConvFlops f;
  bool back = false;
  // 2 * K * C * R * S * OH * OW for a conv of input (C, h, w).
  auto conv = [&](int64_t c, int64_t k, int64_t h, int64_t w, int64_t r, int64_t s, int64_t st) {
    const double fl = 2.0 * double(k * c * r * s) * double(out_dim(h, r, st) * out_dim(w, s, st));
    f.forward += fl;
    (back ? f.back_fwd : f.front_fwd) += fl;
    return fl;
  };
  // A block at input (ci, h, w); returns the output size.
  auto block = [&](int64_t ci, int64_t co, int64_t st, bool same, int64_t h, int64_t w) {
    if (!same) conv(ci, co, h, w, 1, 1, st);
    conv(ci, co, h, w, 3, 3, st);
    const int64_t oh = out_dim(h, 3, st), ow = out_dim(w, 3, st);
    conv(co, co, oh, ow, 1, 3, 1);
    conv(co, co, oh, ow, 3, 1, 1);
    return std::pair{oh, ow};
  };
  f.in_conv1 = conv(3, 8, sz.h, sz.w, 3, 3, 2);
  const int64_t x1h = out_dim(sz.h, 3, 2), x1w = out_dim(sz.w, 3, 2);
  conv(8, 8, x1h, x1w, 3, 3, 2);
  const int64_t x2h = out_dim(x1h, 3, 2), x2w = out_dim(x1w, 3, 2);
  auto [e1h, e1w] = block(8, 64, 2, false, x2h, x2w);
  auto [e2h, e2w] = block(64, 64, 2, true, e1h, e1w);
  auto [e3h, e3w] = block(64, 128, 2, false, e2h, e2w);
  block(128, 64, 1, false, e3h, e3w);  // dec1, then up to e2's size
  back = true;
  block(128, 32, 1, false, e2h, e2w);  // dec2 on cat[d1, e2], then up to e1's size
  block(96, 32, 1, false, e1h, e1w);   // dec3 on cat[d2, e1], then up to x1's size
  conv(32, 32, x1h, x1w, 3, 3, 1);     // out_conv1
  conv(32, 32, x1h, x1w, 3, 3, 1);     // out_conv2
  conv(32, 9, sz.h, sz.w, 1, 1, 1);    // out_conv3 after the upsample (reference order)
  return f;
}

// Conv FLOPs of one measurement: forward, plus weight gradient of every trained conv, plus the
// input gradient of every conv whose input leads to a trained tensor (all of the back's convs:
// dec2's convs read relu(BN(.)) with a trained BN; in full mode all but in_conv1).
double mode_flops(const ConvFlops& f, int mode) {
  if (mode == 0) return f.forward;
  if (mode == 1) return 3 * f.back_fwd;
  return 3 * f.forward - f.in_conv1;
}

// ---------------- setup shared by the timed runs and the RSS children ----------------
std::string shared_dir() {
  const char* e = std::getenv("ST_SHARED_DIR");
  return e && *e ? e : ST_SHARED_DIR;
}

// Loads the pretrained weights when present; returns what was used.
std::string load_weights(Student& s) {
  const std::filesystem::path p =
      std::filesystem::path(shared_dir()) / "models" / "student_lvs9_pretrained.safetensors";
  if (!std::filesystem::exists(p)) return "default init (" + p.string() + " absent)";
  s.load_safetensors(p);
  return "pretrained " + p.string();
}

Tensor make_input(const Size& sz) {
  return Tensor::randn({1, 3, sz.h, sz.w}, 12345) * 50.0;  // (1, 3, H, W), pixel range
}

// A person (class 0) rectangle on background (class 8): columns 40%..60%, rows 25%..90%.
st::nn::Target make_bench_target(const Size& sz) {
  std::vector<uint8_t> labels(size_t(sz.h * sz.w), 8);  // (H, W)
  for (int64_t y = sz.h * 25 / 100; y < sz.h * 90 / 100; ++y)
    for (int64_t x = sz.w * 40 / 100; x < sz.w * 60 / 100; ++x) labels[size_t(y * sz.w + x)] = 0;
  return st::nn::make_target(labels, sz.h, sz.w);
}

// One measured unit of work, with per-phase times (ms) of the last call.
struct Phases {
  double fwd = 0, bwd = 0, adam = 0;
};

class Workload {
 public:
  Workload(Student& s, int mode, const Size& sz)
      : s_(s), mode_(mode), x_(make_input(sz).to(g_dev)), target_(make_bench_target(sz)) {
    target_.labels = target_.labels.to(g_dev);
    target_.weight = target_.weight.to(g_dev);
    const Distillation d = mode == 0 ? Distillation::None
                                     : mode == 1 ? Distillation::Partial : Distillation::Full;
    s_.configure(d);
    if (mode > 0) {
      trained_ = s_.trained_parameters(d);
      adam_ = std::make_unique<st::nn::Adam>(trained_, st::nn::Adam::Options{0.01, 0.9, 0.999, 1e-8});
    }
    if (mode == 1) {  // the frozen front: once per key frame, outside the timed region
      st::NoGradGuard ng;
      front_ = s_.front(x_);
    }
  }
  size_t trained_count() const { return trained_.size(); }
  int64_t trained_params() const {
    int64_t n = 0;
    for (const Tensor& t : trained_) n += t.numel();
    return n;
  }

  Phases run() {
    Phases p;
    auto t0 = clk::now();
    if (mode_ == 0) {
      st::NoGradGuard ng;
      Tensor y = s_.forward(x_);
      sync();
      p.fwd = ms_since(t0);
      return p;
    }
    adam_->zero_grad();
    Tensor logits = mode_ == 1 ? s_.back(front_) : s_.forward(x_);
    sync();
    p.fwd = ms_since(t0);
    auto t1 = clk::now();
    st::weighted_cross_entropy(logits, target_.labels, target_.weight).backward();
    logits = Tensor();
    sync();
    p.bwd = ms_since(t1);
    auto t2 = clk::now();
    adam_->step();
    sync();
    p.adam = ms_since(t2);
    return p;
  }

 private:
  static double ms_since(clk::time_point t) {
    return std::chrono::duration<double, std::milli>(clk::now() - t).count();
  }
  Student& s_;
  int mode_;
  Tensor x_;
  st::nn::Target target_;
  st::nn::StudentFront front_;
  std::vector<Tensor> trained_;
  std::unique_ptr<st::nn::Adam> adam_;
};

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

// CPU seconds (user + system) this process has used so far.
double cpu_seconds() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  return double(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
         1e-6 * double(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec);
}

struct Timing {
  double ms = 0;  // median total
  double cores = 0;  // CPU time / wall time over the timed reps: < threads means contention
  Phases phases;  // median per phase
  size_t trained = 0;
  int64_t trained_params = 0;  // scalars in the trained tensors
  std::string kernels;  // backward kernel counts of one step
  double allocs_per_rep = 0;     // large blocks allocated from the system per timed rep
  double front_bwd_ms = 0;       // backward kernel time in the frozen front's scopes (one step)
  int64_t front_bwd_calls = 0;   // and their number
};

Timing measure(Student& s, int mode, const Size& sz, int reps) {
  Workload w(s, mode, sz);
  st::reset_backward_kernel_counts();
  w.run();  // warm-up
  Timing t;
  t.trained = w.trained_count();
  t.trained_params = w.trained_params();
  for (auto& [k, n] : st::backward_kernel_counts())
    t.kernels += (t.kernels.empty() ? "" : " ") + k + "=" + std::to_string(n);
  std::vector<double> tot, f, b, a;
  const uint64_t allocs0 = st::backend_for(g_dev).memory_stats().device_allocations;
  const double cpu0 = cpu_seconds();
  const auto wall0 = clk::now();
  for (int r = 0; r < reps; ++r) {
    const auto t0 = clk::now();
    Phases p = w.run();
    tot.push_back(std::chrono::duration<double, std::milli>(clk::now() - t0).count());
    f.push_back(p.fwd), b.push_back(p.bwd), a.push_back(p.adam);
  }
  t.cores = (cpu_seconds() - cpu0) /
            std::max(1e-9, std::chrono::duration<double>(clk::now() - wall0).count());
  t.allocs_per_rep =
      double(st::backend_for(g_dev).memory_stats().device_allocations - allocs0) / double(reps);
  t.ms = median(tot);
  t.phases = {median(f), median(b), median(a)};
  if (mode > 0) {  // one more step under the profiler: backward work in the frozen front
    const bool was_on = st::profile::enabled();
    if (!was_on) st::profile::start({"", false});
    auto front_bwd = [&s](double& ms, int64_t& calls) {
      ms = 0, calls = 0;
      for (const auto& r : st::profile::scope_rows())
        if (s.front_scope(r.scope)) ms += r.backward_ms, calls += r.backward_calls;
    };
    double ms0 = 0, ms1 = 0;
    int64_t c0 = 0, c1 = 0;
    front_bwd(ms0, c0);
    w.run();
    front_bwd(ms1, c1);
    t.front_bwd_ms = ms1 - ms0;
    t.front_bwd_calls = c1 - c0;
    if (!was_on) {
      st::profile::stop();
      st::profile::reset();
    }
  }
  return t;
}

// ---------------- peak memory ----------------
// A field of /proc/self/status in kB (VmHWM, VmRSS), or -1.
long proc_status_kb(const char* field) {
  std::ifstream in("/proc/self/status");
  std::string line;
  const std::string key = std::string(field) + ":";
  while (std::getline(in, line))
    if (line.rfind(key, 0) == 0) return std::atol(line.c_str() + key.size());
  return -1;
}

int rss_child(const std::string& mode_name, const Size& sz) {
  int mode = -1;
  for (int m = 0; m < 3; ++m)
    if (mode_name == kModes[m]) mode = m;
  if (mode < 0 || sz.w <= 0 || sz.h <= 0) {
    std::fprintf(stderr, "bench_student --rss: usage --rss forward|step-partial|step-full W H\n");
    return 2;
  }
  Student s;
  load_weights(s);
  Workload w(s, mode, sz);  // input, target, Adam state, and (partial) the cached front
  const long base = proc_status_kb("VmRSS");
  w.run();
  w.run();  // a second run: steady state (Adam moments exist, allocator warmed)
  std::printf("{\"rss_mode\": \"%s\", \"size\": \"%s\", \"hwm_kb\": %ld, \"base_kb\": %ld}\n",
              mode_name.c_str(), size_str(sz).c_str(), proc_status_kb("VmHWM"), base);
  return 0;
}

// ---------------- running children and the peer ----------------


std::string self_exe() {
  char buf[4096];
  const ssize_t n = readlink("/proc/self/exe", buf, sizeof buf - 1);
  if (n <= 0) return "";
  buf[n] = 0;
  return buf;
}

std::string loadavg() {
  std::ifstream in("/proc/loadavg");
  std::string a, b, c;
  in >> a >> b >> c;
  return a + " " + b + " " + c;
}

struct PeerResult {
  std::string header, error;
  std::map<std::string, double> ms;         // "<size> <mode>" -> ms
  std::map<std::string, double> cores;      // "<size> <mode>" -> CPU time / wall time
  std::map<std::string, std::string> rss;   // "<size> <mode>" -> "peak .. base .."
};

PeerResult run_peer(const std::string& src_dir, const std::vector<Size>& sizes, int reps,
                    bool rss) {
  PeerResult r;
  const std::string py = std::getenv("ST_PEER_PYTHON") ? std::getenv("ST_PEER_PYTHON") : "/usr/bin/python3";
  const std::string script = src_dir + "/bench/student_peer.py";
  if (access(py.c_str(), X_OK) != 0) {
    r.error = py + " not found";
    return r;
  }
  if (access(script.c_str(), R_OK) != 0) {
    r.error = script + " not found; pass the source dir as argv[1]";
    return r;
  }
  std::string sz;
  for (const Size& s : sizes) sz += (sz.empty() ? "" : ",") + size_str(s);
  std::string cmd = py + " '" + script + "' --shared '" + shared_dir() + "' --sizes " + sz +
                    " --reps " + std::to_string(reps) +
                    (g_dev.is_cuda() ? " --device cuda" : "") + " 2>&1";
  int rc = 0;
  for (const std::string& line : run_lines(cmd, rc)) {
    if (!json_field(line, "error").empty()) r.error = json_field(line, "error");
    if (!json_field(line, "peer").empty())
      r.header = json_field(line, "peer") + " " + json_field(line, "version") + ", " +
                 json_field(line, "threads") + " threads, " + json_field(line, "weights") +
                 " weights";
    const std::string size = json_field(line, "size"), what = json_field(line, "what");
    if (!size.empty() && !what.empty()) {
      r.ms[size + " " + what] = std::atof(json_field(line, "ms").c_str());
      r.cores[size + " " + what] = std::atof(json_field(line, "cores").c_str());
    }
  }
  if (r.error.empty() && r.header.empty())
    r.error = rc != 0 ? "python3 failed" : "no output from student_peer.py";
  if (!r.error.empty() || !rss) return r;
  const Size& s0 = sizes.front();
  for (const char* m : kModes) {
    const std::string c = py + " '" + script + "' --shared '" + shared_dir() + "' --rss " + m +
                          " " + size_str(s0) + " 2>&1";
    for (const std::string& line : run_lines(c, rc))
      if (!json_field(line, "rss_mode").empty())
        r.rss[size_str(s0) + " " + m] =
            "peak " + std::to_string(std::atol(json_field(line, "hwm_kb").c_str()) / 1024) +
            " MB (before the work: " +
            std::to_string(std::atol(json_field(line, "base_kb").c_str()) / 1024) + " MB)";
  }
  return r;
}

}  // namespace

int main(int argc, char** argv) {
  std::string src_dir = ST_SOURCE_DIR;
  bool peer = true, rss = true;
  bool run_mode[3] = {true, true, true};
  int reps = 3;
  double peak_gflops = 0;  // the device's peak (GFLOP/s), for "% of peak"
  std::vector<Size> sizes = {{1280, 720}, {768, 576}};
  st::nn::PartialSplit split;  // the paper's: dec2 .. out_conv3, every tensor
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--rss" && i + 3 < argc) {
      return rss_child(argv[i + 1], {std::atol(argv[i + 2]), std::atol(argv[i + 3])});
    } else if (a == "--device" && i + 1 < argc) {
      const std::string d = argv[++i];
      if (d == "cuda") g_dev = st::Device::cuda(0);
      else if (d != "cpu") {
        std::fprintf(stderr, "bench_student: --device cpu|cuda\n");
        return 2;
      }
      rss = false;  // host RSS says little about a GPU run
    } else if (a == "--peak-gflops" && i + 1 < argc) {
      peak_gflops = std::atof(argv[++i]);
    } else if (a == "--train-from" && i + 1 < argc) {  // the partial step's split
      try {
        split.first = st::nn::student_block(argv[++i]);
      } catch (const std::exception& e) {
        std::fprintf(stderr, "bench_student: %s\n", e.what());
        return 2;
      }
    } else if (a == "--train-last" && i + 1 < argc) {  // the last K blocks
      split.first = st::nn::kStudentBlocks - std::atoi(argv[++i]);
    } else if (a == "--train" && i + 1 < argc) {  // all | bias
      split.bias_only = std::string(argv[++i]) == "bias";
    } else if (a == "--profile" && i + 1 < argc) {
      st::profile::start({argv[++i], true});
    } else if (a == "--no-peer") {
      peer = false;
    } else if (a == "--no-rss") {
      rss = false;
    } else if (a == "--modes" && i + 1 < argc) {  // e.g. --modes forward (for profiling)
      const std::string list = argv[++i];
      for (int m = 0; m < 3; ++m) run_mode[m] = list.find(kModes[m]) != std::string::npos;
    } else if (a == "--reps" && i + 1 < argc) {
      reps = std::max(1, std::atoi(argv[++i]));
    } else if (a == "--sizes" && i + 1 < argc) {
      sizes.clear();
      std::string list = argv[++i];
      for (size_t p = 0; p < list.size();) {
        size_t e = list.find(',', p);
        if (e == std::string::npos) e = list.size();
        Size s{0, 0};
        std::sscanf(list.substr(p, e - p).c_str(), "%ldx%ld", &s.w, &s.h);
        if (s.w > 0 && s.h > 0) sizes.push_back(s);
        p = e + 1;
      }
      if (sizes.empty()) {
        std::fprintf(stderr, "bench_student: --sizes wants WxH[,WxH...]\n");
        return 2;
      }
    } else if (a.rfind("--", 0) == 0) {
      std::fprintf(stderr,
                   "usage: bench_student [SOURCE_DIR] [--no-peer] [--no-rss] [--reps N] "
                   "[--sizes WxH,...] [--modes forward,step-partial,step-full] [--profile FILE]\n"
                   "       [--train-from BLOCK | --train-last K] [--train all|bias]\n       bench_student --rss forward|step-partial|step-full W H\n");
      return 2;
    } else {
      src_dir = a;
    }
  }

  Student student;
  try {
    student.set_partial_split(split);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_student: %s\n", e.what());
    return 2;
  }
  const std::string weights = load_weights(student);
  if (g_dev.is_cuda()) {
    if (!st::device_available(st::DeviceType::CUDA)) {
      std::printf("bench_student: no usable CUDA GPU\n");
      return 0;
    }
    student.to(g_dev);
    std::printf("student benchmark, CUDA float32 (%s), N=1; weights: %s\n", g_dev.str().c_str(),
                weights.c_str());
  } else {
    std::printf("student benchmark, CPU float32, N=1, %d OpenMP threads; weights: %s\n",
                omp_get_max_threads(), weights.c_str());
  }
  std::printf("load average at start: %s; warm-up then median of %d reps\n", loadavg().c_str(),
              reps);
  std::printf("partial split: %s%s\n", st::nn::split_name(split).c_str(),
              split == st::nn::PartialSplit{} ? " (the paper's)"
                                              : " (the peer's step-partial keeps the paper's dec2 "
                                                "split: its ratio compares different work)");
  std::fflush(stdout);

  std::map<std::string, Timing> ours;
  for (const Size& sz : sizes) {
    for (int m = 0; m < 3; ++m) {
      if (!run_mode[m]) continue;
      load_weights(student);  // every measurement starts from the same weights
      const Timing t = measure(student, m, sz, reps);
      ours[size_str(sz) + " " + kModes[m]] = t;
      std::printf("  %-9s %-12s %9.1f ms  (fwd %.1f, loss+bwd %.1f, adam %.2f; %zu trained; "
                  "%.2f cores busy; %.1f system allocations per rep)%s%s\n",
                  size_str(sz).c_str(), kModes[m], t.ms, t.phases.fwd, t.phases.bwd,
                  t.phases.adam, t.trained, t.cores, t.allocs_per_rep, t.kernels.empty() ? "" : "  backward kernels: ",
                  t.kernels.c_str());
      if (m > 0)
        std::printf("  %-9s %-12s trained: %zu tensors, %lld of %lld parameters (%.1f%%)\n", "",
                    "", t.trained, static_cast<long long>(t.trained_params),
                    static_cast<long long>(student.parameter_count()),
                    100.0 * double(t.trained_params) / double(student.parameter_count()));
      if (m > 0)
        std::printf("  %-9s %-12s frozen-front backward: %.3f ms in %lld kernel calls%s\n", "",
                    "", t.front_bwd_ms, static_cast<long long>(t.front_bwd_calls),
                    m == 1 ? (t.front_bwd_calls == 0 ? " (none, as partial backward must)"
                                                     : " (A PARTIAL STEP MUST HAVE NONE)")
                           : " (full: the front trains)");
      std::fflush(stdout);
    }
  }

  PeerResult pr;
  if (peer) {
    pr = run_peer(src_dir, sizes, reps, rss);
    if (!pr.error.empty())
      std::printf("peer: missing (%s)\n", pr.error.c_str());
    else
      std::printf("peer: %s. ratio = peer ms / our ms (> 1: we are faster)\n", pr.header.c_str());
  }

  for (const Size& sz : sizes) {
    const ConvFlops fl = count_flops(sz);
    std::printf("\n%s (reference conv work: %.2f GMAC = %.2f GFLOP per forward)\n",
                size_str(sz).c_str(), fl.forward / 2e9, fl.forward / 1e9);
    std::printf("  %-13s %10s %10s %7s %9s %9s %9s %11s\n", "measurement", "ours ms", "peer ms",
                "ratio", "GFLOP", "ours GF/s", "peer GF/s", "cores o/p");
    for (int m = 0; m < 3; ++m) {
      const std::string key = size_str(sz) + " " + kModes[m];
      if (!ours.count(key)) continue;
      const double ms = ours[key].ms, gf = mode_flops(fl, m) / 1e9;
      auto it = pr.ms.find(key);
      if (pr.error.empty() && it != pr.ms.end() && it->second > 0)
        std::printf("  %-13s %10.1f %10.1f %7.2f %9.2f %9.1f %9.1f %5.2f/%4.2f\n", kModes[m], ms,
                    it->second, it->second / ms, gf, gf / ms * 1e3, gf / it->second * 1e3,
                    ours[key].cores, pr.cores[key]);
      else
        std::printf("  %-13s %10.1f %10s %7s %9.2f %9.1f %9s %5.2f\n", kModes[m], ms, "n/a", "", gf,
                    gf / ms * 1e3, "", ours[key].cores);
      if (peak_gflops > 0)
        std::printf("  %-13s ours at %.1f%% of the device's peak %.0f GFLOP/s\n", "",
                    100.0 * gf / ms * 1e3 / peak_gflops, peak_gflops);
    }
  }
  std::fflush(stdout);

  if (rss) {
    const Size& s0 = sizes.front();
    const std::string exe = self_exe();
    std::printf("\npeak RSS at %s (VmHWM, each in its own process; targets: inference < 300 MB, a "
                "step < 1 GB)\n", size_str(s0).c_str());
    for (const char* m : kModes) {
      int rc = 0;
      std::string out;
      for (const std::string& line : run_lines("'" + exe + "' --rss " + m + " " +
                                                   std::to_string(s0.w) + " " +
                                                   std::to_string(s0.h) + " 2>&1", rc))
        if (!json_field(line, "rss_mode").empty()) out = line;
      if (out.empty()) {
        std::printf("  rss %-12s ours: failed (child exit status %d)\n", m, rc);
        continue;
      }
      const long hwm = std::atol(json_field(out, "hwm_kb").c_str());
      const long base = std::atol(json_field(out, "base_kb").c_str());
      const long target_mb = std::strcmp(m, "forward") == 0 ? 300 : 1024;
      std::printf("  rss %-12s ours: peak %ld MB (before the work: %ld MB) -> %s%s%s\n", m,
                  hwm / 1024, base / 1024, hwm / 1024 < target_mb ? "within target" : "OVER TARGET",
                  pr.rss.count(size_str(s0) + " " + m) ? "; peer: " : "",
                  pr.rss.count(size_str(s0) + " " + m) ? pr.rss[size_str(s0) + " " + m].c_str() : "");
    }
  }
  std::printf("\nload average at end: %s\n", loadavg().c_str());
  return 0;
}
