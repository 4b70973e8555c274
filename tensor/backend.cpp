// The backend registry; the profiling backend; the kernel list's names; declined kernels.
#include "tensor/backend.h"

#include <array>
#include <mutex>
#include <tuple>

#include "tensor/cpu_backend.h"
#if ST_WITH_CUDA
#include <dlfcn.h>
#endif

namespace st {

namespace {
std::array<Backend*, 2>& registry() {
  static std::array<Backend*, 2> r{&cpu::cpu_backend(), nullptr};
  return r;
}

#if ST_WITH_CUDA
// The CUDA backend lives in ST_CUDA_LIBRARY (kernels/cuda/, linked against cuBLAS and cuDNN,
// whose mere loading costs ~155 MB of resident memory). It is opened on first use: from the
// directory of the library holding this code (the build or install directory), else through the
// loader's search path. Its entry point returns the process-wide backend.
std::string& cuda_load_error() {
  static std::string e;
  return e;
}
void load_cuda_backend() {
  static std::once_flag once;
  std::call_once(once, [] {
    std::string dir;
    Dl_info info;
    if (dladdr(reinterpret_cast<void*>(&load_cuda_backend), &info) && info.dli_fname) {
      const std::string self = info.dli_fname;
      const size_t slash = self.rfind('/');
      if (slash != std::string::npos) dir = self.substr(0, slash + 1);
    }
    void* h = dlopen((dir + ST_CUDA_LIBRARY).c_str(), RTLD_NOW | RTLD_LOCAL);
    const char* why = h ? nullptr : dlerror();
    const std::string first = why ? why : "unknown error";
    if (!h) h = dlopen(ST_CUDA_LIBRARY, RTLD_NOW | RTLD_LOCAL);
    if (!h) {
      cuda_load_error() = "cannot load " + dir + ST_CUDA_LIBRARY + ": " + first;
      return;
    }
    using Entry = Backend* (*)();
    auto entry = reinterpret_cast<Entry>(dlsym(h, "st_cuda_backend_entry"));
    if (!entry) {
      cuda_load_error() = std::string(ST_CUDA_LIBRARY) + " has no st_cuda_backend_entry";
      return;
    }
    registry()[size_t(DeviceType::CUDA)] = entry();
  });
}
#endif

Backend* lookup(DeviceType type) {
#if ST_WITH_CUDA
  if (type == DeviceType::CUDA) load_cuda_backend();
#endif
  return registry()[size_t(type)];
}

// ---- the profiling backend (tensor/profile.h) ----
// The work a kernel call does, from its arguments: bytes are the tensor arguments' sizes, each
// once; flops are known for convolutions and matmul (multiply and add count as two).
double tensor_bytes(const Tensor& t) {
  return t.defined() ? double(t.numel()) * double(dtype_size(t.dtype())) : 0.0;
}
double arg_bytes(const Tensor& t) { return tensor_bytes(t); }
double arg_bytes(const Tensor* t) { return t ? tensor_bytes(*t) : 0.0; }
double arg_bytes(Tensor* t) { return t ? tensor_bytes(*t) : 0.0; }
template <class A>
double arg_bytes(const A&) {
  return 0.0;
}
template <class... A>
double bytes_of(const A&... a) {
  return (0.0 + ... + arg_bytes(a));
}

// 2 * (output elements) * (the reduction length per output): y (N, Co, OH, OW) with
// w (Co, Ci/g, kh, kw) for conv2d; the same count for its two backward kernels; x (N, Ci, H, W)
// with w (Ci, Co/g, kh, kw) for the transposed conv, which scatters each input element.
double conv_flops(const Tensor& out_or_in, const Tensor& w) {
  return 2.0 * double(out_or_in.numel()) * double(w.size(1)) * double(w.size(2)) *
         double(w.size(3));
}
template <Kernel K, class... A>
double flops_of(const A&... a) {
  auto t = std::tie(a...);
  if constexpr (K == Kernel::conv2d_forward) return conv_flops(std::get<4>(t), std::get<1>(t));
  else if constexpr (K == Kernel::conv2d_backward_data) return conv_flops(std::get<0>(t), std::get<1>(t));
  else if constexpr (K == Kernel::conv2d_backward_weight) return conv_flops(std::get<0>(t), std::get<3>(t));
  else if constexpr (K == Kernel::conv_transpose2d_forward) return conv_flops(std::get<0>(t), std::get<1>(t));
  else if constexpr (K == Kernel::matmul) {
    const Tensor& x = std::get<0>(t);  // op(a) is (M, K): K = numel(a) / M
    const Tensor& out = std::get<2>(t);
    return out.size(0) > 0 ? 2.0 * double(out.numel()) * double(x.numel()) / double(out.size(0)) : 0.0;
  } else {
    (void)t;
    return 0.0;
  }
}

// The device index of a call: its first tensor argument's (every tensor of a call is on one).
template <class A, class... R>
int device_index_of(const A& a, const R&... rest) {
  if constexpr (std::is_same_v<A, Tensor>) return a.device().index;
  else if constexpr (sizeof...(R) > 0) return device_index_of(rest...);
  else return 0;
}

class ProfilingBackend final : public Backend {
 public:
  explicit ProfilingBackend(Backend& inner) : inner_(inner) {}
  Backend& inner() const { return inner_; }

  const char* name() const override { return inner_.name(); }
  MemoryStats memory_stats() const override { return inner_.memory_stats(); }
  void* allocate(size_t nbytes, int device_index) override {
    return inner_.allocate(nbytes, device_index);
  }
  void deallocate(void* ptr, size_t nbytes, int device_index) noexcept override {
    inner_.deallocate(ptr, nbytes, device_index);
  }
  void memcpy(void* dst, Device dst_dev, const void* src, Device src_dev, size_t n) override {
    const double t0 = profile::now_us();  // copies are synchronous to the host
    inner_.memcpy(dst, dst_dev, src, src_dev, n);
    profile::record("memcpy", {0.0, double(n)}, t0, profile::now_us());
  }
  void synchronize() override {
    const double t0 = profile::now_us();
    inner_.synchronize();
    profile::record("synchronize", {}, t0, profile::now_us());
  }
  void empty_cache() override { inner_.empty_cache(); }
  void set_workspace_limit(size_t bytes) override { inner_.set_workspace_limit(bytes); }
  size_t workspace_limit() const override { return inner_.workspace_limit(); }
  std::unique_ptr<profile::DeviceTiming> start_timing(int device_index) override {
    return inner_.start_timing(device_index);
  }
  std::vector<Kernel> declined_kernels() const override { return inner_.declined_kernels(); }

#define ST_KERNEL(name, params, args)                                          \
  void name params override {                                                  \
    Timed timed(inner_, #name, {flops_of<Kernel::name> args, bytes_of args}, \
                device_index_of args);                                         \
    inner_.name args;                                                          \
  }
#include "tensor/kernels.def"

 private:
  // Times one call: device timing when the backend gives one, else host wall time.
  struct Timed {
    Timed(Backend& b, const char* kernel, const profile::Work& work, int device)
        : kernel_(kernel), work_(work), timing_(b.start_timing(device)) {
      if (!timing_) t0_ = profile::now_us();
    }
    ~Timed() {
      if (timing_) {
        timing_->stop();
        profile::record_async(kernel_, work_, std::move(timing_));
      } else {
        profile::record(kernel_, work_, t0_, profile::now_us());
      }
    }
    Timed(const Timed&) = delete;
    Timed& operator=(const Timed&) = delete;
    const char* kernel_;
    profile::Work work_;
    std::unique_ptr<profile::DeviceTiming> timing_;
    double t0_ = 0;
  };
  Backend& inner_;
};

// One profiling backend per device type, made on first use while profiling (and again if a
// test registers another backend; the old one is kept: callers may hold it).
Backend& profiling(DeviceType type, Backend& inner) {
  static std::mutex mu;
  static std::array<ProfilingBackend*, 2> wrappers{nullptr, nullptr};
  std::lock_guard<std::mutex> l(mu);
  ProfilingBackend*& w = wrappers[size_t(type)];
  if (!w || &w->inner() != &inner) w = new ProfilingBackend(inner);
  return *w;
}
}  // namespace

void register_backend(DeviceType type, Backend* backend) { registry()[size_t(type)] = backend; }

bool backend_built(DeviceType type) {
#if ST_WITH_CUDA
  return true;
#else
  return type == DeviceType::CPU;
#endif
}

std::string backend_load_error(DeviceType type) {
#if ST_WITH_CUDA
  if (type == DeviceType::CUDA) {
    load_cuda_backend();
    return cuda_load_error();
  }
#endif
  return "";
}

Backend& backend_for(Device device) {
  Backend* b = lookup(device.type);
  if (!b) {
    if (device.is_cuda() && !backend_built(DeviceType::CUDA))
      throw Error("device " + device.str() +
                  ": this build has no CUDA backend (configure with -DST_CUDA=ON on a machine "
                  "with the CUDA toolkit)");
    if (device.is_cuda())
      throw Error("device " + device.str() + ": the CUDA backend could not be loaded (" +
                  backend_load_error(DeviceType::CUDA) + ")");
    throw Error("device " + device.str() + ": no backend registered");
  }
  if (profile::enabled()) return profiling(device.type, *b);
  return *b;
}

bool device_available(DeviceType type) {
  Backend* b = lookup(type);
  if (!b) return false;
  if (type == DeviceType::CPU) return true;
  try {
    void* p = b->allocate(16, 0);
    b->deallocate(p, 16, 0);
    return true;
  } catch (const Error&) {
    return false;
  }
}

const std::vector<Kernel>& all_kernels() {
  static const std::vector<Kernel> kernels = {
#define ST_KERNEL(name, params, args) Kernel::name,
#include "tensor/kernels.def"
  };
  return kernels;
}

const char* kernel_name(Kernel k) {
  switch (k) {
#define ST_KERNEL(name, params, args) \
  case Kernel::name:                  \
    return #name;
#include "tensor/kernels.def"
  }
  return "unknown kernel";
}

bool Backend::declines(Kernel k) const {
  for (Kernel d : declined_kernels())
    if (d == k) return true;
  return false;
}

void Backend::decline(Kernel k) const {
  throw Error(std::string(kernel_name(k)) + ": not implemented on the " + name() + " backend");
}

}  // namespace st
