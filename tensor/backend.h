// The backend seam: the one place where work is handed to a device.
//
// A Backend owns memory for its device type and runs the kernels of every op. The op layer
// (tensor/ops.h) validates arguments, allocates outputs on the inputs' device and calls
// `backend_for(device).<kernel>(...)`. Nothing outside kernels/ knows which backends exist:
// the CPU backend is always linked in; the CUDA backend, when built, is a shared library that
// tensor/backend.cpp loads on the first use of a CUDA device.
//
// The kernels and their contracts are listed once, in tensor/kernels.def: each is a pure
// virtual method here, so every backend defines every kernel (a backend that misses one does not
// build), either for real or as an explicit decline (ST_DECLINE_KERNEL below), which throws
// st::Error naming the kernel and the backend.
#pragma once
#include <array>
#include <memory>
#include <string>
#include <vector>

#include "tensor/profile.h"
#include "tensor/tensor.h"

namespace st {

enum class UnaryOp { Relu, Sigmoid, Scale, AddScalar };
enum class BinaryOp { Add, Mul };

struct Conv2dParams {
  int64_t stride_h = 1, stride_w = 1;
  int64_t pad_h = 0, pad_w = 0;
  int64_t groups = 1;
  int64_t output_pad_h = 0, output_pad_w = 0;  // conv_transpose2d only
};

struct Pool2dParams {
  int64_t kernel_h = 2, kernel_w = 2;
  int64_t stride_h = 2, stride_w = 2;
  int64_t pad_h = 0, pad_w = 0;
};

struct AdamParams {
  double lr = 1e-3, beta1 = 0.9, beta2 = 0.999, eps = 1e-8;
  int64_t step = 1;  // the step being taken (1-based), for bias correction
};

// What a backend's allocator holds and has done (for tests and profiles). A caching allocator
// serves steady-state requests from its cache: device_allocations stops growing. The CPU backend
// fills in only cached_bytes. The CUDA backend (one pool per GPU, kernels/common/block_pool.h)
// sums over its devices; its sizes are block sizes (requests rounded up to 512 bytes, plus any
// rest too small to split off).
struct MemoryStats {
  uint64_t device_allocations = 0;  // real allocations from the device (cudaMalloc, malloc); the
                                    // CUDA backend allocates segments that blocks are cut from
  uint64_t cache_hits = 0;          // requests served from the cache
  size_t in_use_bytes = 0;          // blocks handed out and not yet freed
  size_t peak_in_use_bytes = 0;     // the most in_use_bytes has been
  size_t cached_bytes = 0;          // free bytes held for reuse (CUDA: reserved - in use)
  size_t reserved_bytes = 0;        // bytes held from the device: in use + cached (CUDA segments)
  size_t segments = 0;              // segments held (CUDA)
  size_t free_blocks = 0;           // free blocks the cached bytes form (CUDA; merged neighbours
                                    // count once)
  size_t largest_free_block = 0;    // the largest of them (CUDA: on any one device)
  // 1 - largest free block / cached_bytes (with several devices: the sum of each device's largest
  // free block): 0 when the cache is one block or empty, near 1 when it is scattered in pieces
  // too small for most requests.
  double fragmentation = 0;
};

// One value per kernel of tensor/kernels.def, named as the kernel.
enum class Kernel {
#define ST_KERNEL(name, params, args) name,
#include "tensor/kernels.def"
};
// Every kernel, in tensor/kernels.def's order.
const std::vector<Kernel>& all_kernels();
// The kernel's name ("conv2d_forward").
const char* kernel_name(Kernel k);

class Backend {
 public:
  virtual ~Backend() = default;
  virtual const char* name() const = 0;
  virtual MemoryStats memory_stats() const { return {}; }

  // ---- memory ----
  virtual void* allocate(size_t nbytes, int device_index) = 0;
  virtual void deallocate(void* ptr, size_t nbytes, int device_index) noexcept = 0;
  // Copies bytes where at least one side is on this backend's device.
  virtual void memcpy(void* dst, Device dst_dev, const void* src, Device src_dev, size_t n) = 0;
  virtual void synchronize() {}

  // ---- memory management (not kernels: they run no op and are not in tensor/kernels.def) ----
  // These are on the interface, not only in libst_cuda.so's own entry points: that library is
  // opened with RTLD_LOCAL (tensor/backend.cpp), so a free function inside it cannot be called by
  // any program; `backend_for(device).empty_cache()` can.
  //
  // Hands every cached free block back to the system (the CPU backend's large-block cache; the
  // CUDA backend's cached device blocks, on every device). Tensors in use are untouched.
  virtual void empty_cache() {}
  // The most bytes a backend's per-device convolution workspace may hold (the CUDA backend: the
  // cuDNN workspace, default 256 MiB or ST_CUDNN_WORKSPACE_MB; algorithms needing more are
  // skipped). Lower it on boards whose small memory is shared with the CPU (Jetson). A backend
  // without such a workspace ignores it and reports 0 (the CPU backend: its scratch is sized by
  // each call and freed after it).
  virtual void set_workspace_limit(size_t bytes) { (void)bytes; }
  virtual size_t workspace_limit() const { return 0; }

  // ---- profiling (tensor/profile.h) ----
  // A timer for one kernel call on `device_index`, started now, for a backend whose kernels run
  // asynchronously (CUDA: events on the device's stream). nullptr, the default: the profiler
  // times the call on the host, which is right for a backend whose kernels finish before they
  // return (CPU).
  virtual std::unique_ptr<profile::DeviceTiming> start_timing(int device_index) {
    (void)device_index;
    return nullptr;
  }

  // ---- kernels: one per entry of tensor/kernels.def, which states each one's contract ----
#define ST_KERNEL(name, params, args) virtual void name params = 0;
#include "tensor/kernels.def"

  // The kernels this backend declines (ST_DECLINED_KERNELS, ST_DECLINE_KERNEL below): calling
  // one throws. Empty for the CPU backend, the reference, which implements every kernel
  // (tests/test_backend.cpp checks both).
  virtual std::vector<Kernel> declined_kernels() const = 0;
  bool declines(Kernel k) const;

 protected:
  // Throws st::Error "<kernel>: not implemented on the <name> backend".
  [[noreturn]] void decline(Kernel k) const;
};

// A backend class declares every kernel of tensor/kernels.def, and the ones it declines, with
//   #define ST_KERNEL(name, params, args) void name params override;
//   #include "tensor/kernels.def"
//   ST_DECLINED_KERNELS(Kernel::nms_mask)     // or ST_DECLINED_KERNELS() for none
// and defines each declined kernel with
//   ST_DECLINE_KERNEL(CudaBackend, nms_mask, (const Tensor& boxes, double iou_threshold,
//                                             Tensor& mask))
// (the parameter list as in tensor/kernels.def). A decline missing from ST_DECLINED_KERNELS does
// not compile; a kernel both declined and implemented does not link.
#define ST_DECLINED_KERNELS(...)                                             \
  static constexpr auto kDeclinedKernels = ::st::kernel_array(__VA_ARGS__);  \
  std::vector<::st::Kernel> declined_kernels() const override {             \
    return {kDeclinedKernels.begin(), kDeclinedKernels.end()};              \
  }
#define ST_DECLINE_KERNEL(Class, name, params)                                          \
  static_assert(::st::kernel_listed(::st::Kernel::name, Class::kDeclinedKernels),       \
                #Class " declines " #name ": list it in its ST_DECLINED_KERNELS(...)"); \
  void Class::name params { decline(::st::Kernel::name); }

// For the two macros above: the kernels given, as an array; whether `k` is in `list`.
template <class... K>
constexpr std::array<Kernel, sizeof...(K)> kernel_array(K... k) {
  return {k...};
}
template <size_t N>
constexpr bool kernel_listed(Kernel k, const std::array<Kernel, N>& list) {
  for (Kernel d : list)
    if (d == k) return true;
  return false;
}

// The backend that runs work for `device`. Throws st::Error when that backend was not built
// or the device does not exist. While the profiler is on (tensor/profile.h), a profiling backend
// that records each kernel call and forwards it.
Backend& backend_for(Device device);
// Installs (or replaces) the backend of a device type (tests; the CUDA backend is installed by
// the registry itself when its library is loaded).
void register_backend(DeviceType type, Backend* backend);
// True when a usable device of this type exists (e.g. a CUDA GPU).
bool device_available(DeviceType type);
// Whether this build has a backend for the device type (CPU: always; CUDA: built with it).
bool backend_built(DeviceType type);
// The CUDA backend is a separate shared library, loaded on the first use of a CUDA device (so a
// program that never touches a GPU does not load cuBLAS and cuDNN). Loads it now if it is built
// and not yet loaded; returns "" when it is loaded (or not built), else why loading failed.
std::string backend_load_error(DeviceType type);

}  // namespace st
