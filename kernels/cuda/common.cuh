// Shared by the CUDA backend's translation units: error checks that name the call, file and
// line; the per-device context (stream, cuBLAS and cuDNN handles, the cuDNN workspace, cached
// algorithm choices); the op guard (device lock, NVTX range, profiling, debug synchronisation);
// strided-tensor descriptors and launch helpers. CUDA C++17.
#pragma once
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <cudnn.h>

#include <cstdint>
#include <cstdlib>
#include <map>
#include <mutex>
#include <string>

#include "kernels/cuda/entry_points.h"
#include "kernels/cuda/strided_index.h"
#include "tensor/backend.h"
#include "tensor/half.h"

namespace st::cuda {

[[noreturn]] void throw_error(const char* call, const char* file, int line, const std::string& why);
const char* cublas_status_name(cublasStatus_t s);

#define ST_CUDA_CHECK(call)                                                              \
  do {                                                                                   \
    cudaError_t st_e_ = (call);                                                          \
    if (st_e_ != cudaSuccess)                                                            \
      ::st::cuda::throw_error(#call, __FILE__, __LINE__, cudaGetErrorString(st_e_));     \
  } while (0)
#define ST_CUDNN_CHECK(call)                                                             \
  do {                                                                                   \
    cudnnStatus_t st_s_ = (call);                                                        \
    if (st_s_ != CUDNN_STATUS_SUCCESS)                                                   \
      ::st::cuda::throw_error(#call, __FILE__, __LINE__, cudnnGetErrorString(st_s_));    \
  } while (0)
#define ST_CUBLAS_CHECK(call)                                                            \
  do {                                                                                   \
    cublasStatus_t st_s_ = (call);                                                       \
    if (st_s_ != CUBLAS_STATUS_SUCCESS)                                                  \
      ::st::cuda::throw_error(#call, __FILE__, __LINE__, ::st::cuda::cublas_status_name(st_s_)); \
  } while (0)
// After every kernel launch: a launch error is reported at once; in the synchronous debug mode
// (ST_CUDA_SYNC=1) the stream is also drained so an execution error names this line.
#define ST_CUDA_LAUNCHED(ctx) ::st::cuda::after_launch((ctx), __FILE__, __LINE__)

struct Context;
void after_launch(Context& ctx, const char* file, int line);

// ---- runtime settings (environment, read once) ----
bool debug_sync();    // ST_CUDA_SYNC=1
bool allow_tf32();    // ST_CUDA_TF32=0 turns TF32 tensor-core math off for cuDNN (default on)
bool cudnn_benchmark();  // ST_CUDNN_BENCHMARK=1: time the candidate algorithms once per shape
// ST_CUDNN_DIRECT_SUMS=1: only the cuDNN algorithms that form every output as a sum of products
// (implicit/explicit GEMM, direct), never FFT or Winograd, whose transforms have no element-wise
// error bound; the parity tests set it (tests/test_cuda.cpp).
bool cudnn_direct_sums();
// The cuDNN workspace limit in bytes (default 256 MiB or ST_CUDNN_WORKSPACE_MB; set through
// Backend::set_workspace_limit). Algorithms needing more are skipped.
size_t cudnn_workspace_limit();

// A convolution algorithm chosen for one problem, with the math type cuDNN chose or measured it
// with (its perf result's mathType), which is set on the descriptor before it runs.
struct AlgoChoice {
  int algo = 0;
  cudnnMathType_t math = CUDNN_DEFAULT_MATH;
};

// The convolution plans of one device (conv.cu): per cuDNN problem, its tensor, filter and
// convolution descriptors (the chosen algorithm's math type set), the algorithm and its workspace
// size, made on the problem's first call so that later calls make no descriptor and no query. At
// most ST_CUDNN_PLAN_CACHE plans (default 1024); the least recently used one is dropped, and its
// descriptors destroyed, to make room.
class ConvPlans {
 public:
  struct Impl;  // conv.cu
  ConvPlans();
  ~ConvPlans();
  ConvPlans(const ConvPlans&) = delete;
  ConvPlans& operator=(const ConvPlans&) = delete;
  // Drops every plan and destroys its descriptors. The caller holds the context's mu.
  void clear() noexcept;
  Impl& impl() { return *impl_; }

 private:
  std::unique_ptr<Impl> impl_;
};

// One per device: everything runs on its stream, in order.
struct Context {
  int device = 0;
  cudaStream_t stream = nullptr;
  cublasHandle_t cublas = nullptr;
  cudnnHandle_t cudnn = nullptr;
  std::recursive_mutex mu;  // one host thread issues work at a time (handles are not shared)
  // The cuDNN workspace: grows to the largest request seen, never beyond cudnn_workspace_limit().
  // (Benchmark mode's search uses a buffer of its own: conv.cu's SearchWorkspace.)
  void* workspace = nullptr;
  size_t workspace_bytes = 0;
  void* workspace_at_least(size_t n);
  void release_workspace();  // back to the allocator's cache; the caller holds mu
  // Convolution plans (descriptors, algorithm, workspace size), per problem, made once.
  ConvPlans conv_plans;
};
Context& context(int device);  // created on first use

// The op guard every backend entry point opens: locks the device's context, makes the device
// current and opens an NVTX range named after the op (Nsight Systems shows it). Timing is the
// shared profiler's (tensor/profile.h), through CudaBackend::start_timing.
class Op {
 public:
  Op(const char* name, int device);
  ~Op();
  Op(const Op&) = delete;
  Op& operator=(const Op&) = delete;
  Context& ctx;

 private:
  std::lock_guard<std::recursive_mutex> lock_;
};

// ---- strided tensors on the device ----
// Strided / Strided32, strided_offset, DivMod32, collapse_dims and fits_index32 are in
// kernels/cuda/strided_index.h (host-testable). A strided kernel is launched in one of two
// index widths: collapse the operands' dims (collapse_dims), then, when the element count and
// every reachable offset fit in int32 (fits_index32 with reach()), pass Strided32 descriptors and
// a uint32_t count (32-bit division by multiply-high, no 64-bit division), else Strided and an
// int64_t count.
Strided strided_of(const Tensor& t);  // throws for rank > 8
// ST_CUDA_INDEX64=1 sends every strided and per-channel kernel down its 64-bit index path. Read
// at each launch (not once), so a test can run one shape through both paths in one process.
inline bool force_index64() {
  const char* e = std::getenv("ST_CUDA_INDEX64");
  return e && *e && std::string(e) != "0";
}
// Whether to launch the 32-bit variant: fits_index32 and not forced to 64-bit.
inline bool use_index32(int64_t numel, int64_t total_reach) {
  return fits_index32(numel, total_reach) && !force_index64();
}

// ---- element conversions (f16 is storage: uint16_t bits) ----
template <class T> __device__ inline double to_double(T v) { return double(v); }
template <> __device__ inline double to_double(uint16_t v) { return double(half_to_float(v)); }
template <class T> __device__ inline T from_double(double v) { return T(v); }
template <> __device__ inline uint16_t from_double(double v) { return float_to_half(float(v)); }
template <> __device__ inline uint8_t from_double(double v) { return uint8_t(int64_t(v)); }

// Calls f(T{}) with T the C++ type stored for `t` (f16 -> uint16_t).
template <class F>
void dispatch_all(DType t, F&& f) {
  switch (t) {
    case DType::F32: f(float{}); break;
    case DType::F64: f(double{}); break;
    case DType::F16: f(uint16_t{}); break;
    case DType::U8: f(uint8_t{}); break;
    case DType::I32: f(int32_t{}); break;
    case DType::I64: f(int64_t{}); break;
  }
}
// f32 / f64 only; other dtypes throw naming the kernel.
template <class F>
void dispatch_float(const char* kernel, DType t, F&& f) {
  if (t == DType::F32) f(float{});
  else if (t == DType::F64) f(double{});
  else throw Error(std::string(kernel) + ": dtype " + dtype_name(t) + " is not supported on cuda");
}

// Throws st::Error naming the kernel, the rank and the limit when `rank` exceeds kMaxRank (the
// size of the fixed rank arrays of Strided, filled by hand in some kernels).
void check_rank(const char* kernel, int64_t rank);

// Grid for n elements with 256-thread blocks, capped (kernels use grid-stride loops).
inline unsigned blocks_for(int64_t n, int threads = 256) {
  int64_t b = (n + threads - 1) / threads;
  if (b < 1) b = 1;
  if (b > 65535 * 8) b = 65535 * 8;
  return unsigned(b);
}
#define ST_GRID_STRIDE(i, n)                                                              \
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < (n);              \
       i += int64_t(blockDim.x) * gridDim.x)
// The same loop with index type I (uint32_t or int64_t). With I = uint32_t and n < 2^31 (the
// 32-bit path's condition) it never wraps: the step blockDim.x * gridDim.x is at most
// 1024 * 524280 < 2^30, so i + step < 2^31 + 2^30 < 2^32.
#define ST_GRID_STRIDE_T(I, i, n)                                                         \
  for (I i = I(blockIdx.x) * I(blockDim.x) + I(threadIdx.x); i < (n);                    \
       i += I(blockDim.x) * I(gridDim.x))
// Calls f(desc...) with the views converted to Strided32 and a uint32_t count when `index32`,
// else with the Strided views and an int64_t count; f launches the kernel for that index type.
template <class F, class... V>
void with_index_width(bool index32, int64_t n, F&& f, const V&... views) {
  if (index32) f(uint32_t(n), to_strided32(views)...);
  else f(n, views...);
}

// A device scratch buffer from the caching allocator, freed (to the cache) on scope exit.
struct Scratch {
  Scratch(size_t bytes, int device);
  ~Scratch();
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  void* ptr = nullptr;
  size_t bytes = 0;
  int device = 0;
  template <class T> T* as() const { return static_cast<T*>(ptr); }
};

// Block-wide sum of a double (blockDim.x a multiple of 32, <= 1024); the result is valid in
// thread 0. Deterministic for a fixed launch shape.
__device__ inline double block_sum(double v) {
  __shared__ double warp_sums[32];
  for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  __syncthreads();  // warp_sums may still be read by a previous call
  if (lane == 0) warp_sums[warp] = v;
  __syncthreads();
  v = threadIdx.x < (blockDim.x >> 5) ? warp_sums[threadIdx.x] : 0.0;
  if (warp == 0)
    for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  return v;
}

}  // namespace st::cuda
