// The CUDA backend's infrastructure: errors, runtime settings, per-device contexts, the caching
// device allocator, copies, the op guard with NVTX ranges, the event timing of the shared profiler
// (tensor/profile.h), and the
// backend object the registry (tensor/backend.cpp) hands out.
#include <nvtx3/nvToolsExt.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "kernels/cuda/backend.cuh"

namespace st::cuda {

// ---------------- errors and settings ----------------
void throw_error(const char* call, const char* file, int line, const std::string& why) {
  const char* base = std::strrchr(file, '/');
  throw Error(std::string(call) + " failed at " + (base ? base + 1 : file) + ":" +
              std::to_string(line) + ": " + why);
}

const char* cublas_status_name(cublasStatus_t s) {
  switch (s) {
    case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "CUBLAS_STATUS_ARCH_MISMATCH";
    case CUBLAS_STATUS_MAPPING_ERROR: return "CUBLAS_STATUS_MAPPING_ERROR";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "CUBLAS_STATUS_INTERNAL_ERROR";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
    default: return "CUBLAS_STATUS_UNKNOWN";
  }
}

namespace {
bool env_flag(const char* name, bool dflt) {
  const char* e = std::getenv(name);
  if (!e || !*e) return dflt;
  return !(e[0] == '0' || e[0] == 'n' || e[0] == 'N' || e[0] == 'f' || e[0] == 'F');
}
}  // namespace

bool debug_sync() {
  static const bool on = env_flag("ST_CUDA_SYNC", false);
  return on;
}
bool allow_tf32() {
  static const bool on = env_flag("ST_CUDA_TF32", true);
  return on;
}
bool cudnn_benchmark() {
  static const bool on = env_flag("ST_CUDNN_BENCHMARK", false);
  return on;
}
bool cudnn_direct_sums() {
  static const bool on = env_flag("ST_CUDNN_DIRECT_SUMS", false);
  return on;
}
static bool caching_enabled() {
  static const bool on = env_flag("ST_CUDA_CACHE", true);
  return on;
}

namespace {
std::atomic<size_t> g_workspace_limit{[] {
  const char* e = std::getenv("ST_CUDNN_WORKSPACE_MB");
  return size_t(e ? std::strtoull(e, nullptr, 10) : 256) << 20;
}()};
}  // namespace
size_t cudnn_workspace_limit() { return g_workspace_limit.load(); }

void check_rank(const char* kernel, int64_t rank) {
  ST_CHECK(rank <= kMaxRank, kernel, ": tensors of rank ", rank,
           " are not supported on cuda (max ", kMaxRank, ")");
}

void after_launch(Context& ctx, const char* file, int line) {
  cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) throw_error("kernel launch", file, line, cudaGetErrorString(e));
  if (debug_sync()) {
    e = cudaStreamSynchronize(ctx.stream);
    if (e != cudaSuccess) throw_error("kernel (ST_CUDA_SYNC)", file, line, cudaGetErrorString(e));
  }
}

// ---------------- contexts ----------------
namespace {
constexpr int kMaxDevices = CudaBackend::kDevices;
std::mutex g_ctx_mu;
std::array<std::unique_ptr<Context>, kMaxDevices> g_ctx;

void check_device(int device) {
  int count = 0;
  cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess || device < 0 || device >= count || device >= kMaxDevices)
    throw Error("cuda:" + std::to_string(device) + ": no usable GPU (" +
                (e != cudaSuccess ? std::string(cudaGetErrorString(e))
                                  : std::to_string(count) + " device(s) present") +
                ")");
}
}  // namespace

namespace {
// Calls f(context) for every device context created so far, holding that context's lock.
template <class F>
void for_each_context(F&& f) {
  for (int d = 0; d < kMaxDevices; ++d) {
    Context* c = nullptr;
    {
      std::lock_guard<std::mutex> l(g_ctx_mu);
      c = g_ctx[size_t(d)].get();
    }
    if (!c) continue;
    std::lock_guard<std::recursive_mutex> l(c->mu);
    f(*c);
  }
}
}  // namespace

Context& context(int device) {
  std::lock_guard<std::mutex> l(g_ctx_mu);
  if (device >= 0 && device < kMaxDevices && g_ctx[size_t(device)]) return *g_ctx[size_t(device)];
  check_device(device);
  auto c = std::make_unique<Context>();
  c->device = device;
  ST_CUDA_CHECK(cudaSetDevice(device));
  ST_CUDA_CHECK(cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking));
  ST_CUBLAS_CHECK(cublasCreate(&c->cublas));
  ST_CUBLAS_CHECK(cublasSetStream(c->cublas, c->stream));
  ST_CUDNN_CHECK(cudnnCreate(&c->cudnn));
  ST_CUDNN_CHECK(cudnnSetStream(c->cudnn, c->stream));
  g_ctx[size_t(device)] = std::move(c);
  return *g_ctx[size_t(device)];
}

void* Context::workspace_at_least(size_t n) {
  if (n <= workspace_bytes) return workspace;
  ST_CHECK(n <= cudnn_workspace_limit(), "cuda: a cuDNN workspace of ", n,
           " bytes exceeds the limit ", cudnn_workspace_limit());
  release_workspace();
  workspace = backend().allocate(n, device);
  workspace_bytes = n;
  return workspace;
}

void Context::release_workspace() {
  if (workspace) backend().deallocate(workspace, workspace_bytes, device);
  workspace = nullptr;
  workspace_bytes = 0;
}

// ---------------- profiling (tensor/profile.h) ----------------
// One kernel call timed by two events on the device's stream. Times are given on the host's
// profile clock: each device's first timing records a base event with the host time beside it
// (the stream is usually idle then, so the base runs when recorded; the offset is approximate,
// durations are exact).
namespace {
struct TimeBase {
  std::mutex mu;
  std::array<cudaEvent_t, CudaBackend::kDevices> event{};
  std::array<double, CudaBackend::kDevices> host_us{};
};
TimeBase& time_base() {
  static TimeBase* b = new TimeBase;  // never destroyed: read from an exit handler
  return *b;
}

class EventTiming final : public profile::DeviceTiming {
 public:
  EventTiming(int device, cudaStream_t stream) : device_(device), stream_(stream) {
    TimeBase& b = time_base();
    {
      std::lock_guard<std::mutex> l(b.mu);
      if (!b.event[size_t(device)] && cudaEventCreate(&b.event[size_t(device)]) == cudaSuccess) {
        cudaEventRecord(b.event[size_t(device)], stream);
        b.host_us[size_t(device)] = profile::now_us();
      }
    }
    if (cudaEventCreate(&start_) == cudaSuccess) cudaEventRecord(start_, stream);
    else start_ = nullptr;
  }
  ~EventTiming() override {
    if (start_) cudaEventDestroy(start_);
    if (end_) cudaEventDestroy(end_);
  }
  void stop() override {
    if (start_ && cudaEventCreate(&end_) == cudaSuccess) cudaEventRecord(end_, stream_);
    else end_ = nullptr;
  }
  bool elapsed(double& start_us, double& duration_us) override {
    if (!start_ || !end_ || cudaEventSynchronize(end_) != cudaSuccess) return false;
    float ms = 0, from_base = 0;
    if (cudaEventElapsedTime(&ms, start_, end_) != cudaSuccess) return false;
    TimeBase& b = time_base();
    std::lock_guard<std::mutex> l(b.mu);
    if (cudaEventElapsedTime(&from_base, b.event[size_t(device_)], start_) != cudaSuccess)
      return false;
    start_us = b.host_us[size_t(device_)] + double(from_base) * 1e3;
    duration_us = double(ms) * 1e3;
    return true;
  }
  std::string track() const override { return "cuda:" + std::to_string(device_) + " stream"; }

 private:
  int device_;
  cudaStream_t stream_;
  cudaEvent_t start_ = nullptr, end_ = nullptr;
};
}  // namespace

std::unique_ptr<profile::DeviceTiming> CudaBackend::start_timing(int device) {
  check_device(device);
  Context& ctx = context(device);
  std::lock_guard<std::recursive_mutex> l(ctx.mu);
  ST_CUDA_CHECK(cudaSetDevice(device));
  return std::make_unique<EventTiming>(device, ctx.stream);
}

Op::Op(const char* name, int device) : ctx(context(device)), lock_(ctx.mu) {
  ST_CUDA_CHECK(cudaSetDevice(device));
  nvtxRangePushA(name);
}

Op::~Op() { nvtxRangePop(); }

// ---------------- strided descriptors, scratch ----------------
Strided strided_of(const Tensor& t) {
  Strided s;
  check_rank("cuda", t.dim());
  if (t.dim() == 0) {
    s.rank = 1;
    s.size[0] = 1;
    s.stride[0] = 1;
    return s;
  }
  s.rank = int(t.dim());
  for (int d = 0; d < s.rank; ++d) {
    s.size[d] = t.shape()[size_t(d)];
    s.stride[d] = t.strides()[size_t(d)];
  }
  return s;
}

Scratch::Scratch(size_t n, int dev) : bytes(n), device(dev) { ptr = backend().allocate(n, dev); }
Scratch::~Scratch() { backend().deallocate(ptr, bytes, device); }

// ---------------- caching allocator ----------------
// The pool logic (size classes, best fit, splitting, merging) is kernels/common/block_pool.h,
// tested on the CPU; here it gets its segments from cudaMalloc on its device.
BlockPool& CudaBackend::pool_for(int device) {
  auto& pool = pools_[size_t(device)];
  if (!pool) {
    BlockPool::Source source;
    // cudaMalloc / cudaFree make the device current; the caller's current device is put back (an
    // op in progress on one device may free or allocate on another: copy_between_devices).
    source.obtain = [device](size_t n) -> void* {
      int current = 0;
      const bool restore = cudaGetDevice(&current) == cudaSuccess && current != device;
      ST_CUDA_CHECK(cudaSetDevice(device));
      void* p = nullptr;
      const cudaError_t e = cudaMalloc(&p, n);
      if (restore) cudaSetDevice(current);
      if (e == cudaErrorMemoryAllocation) {
        cudaGetLastError();  // not sticky: clear it so that the next call does not report it
        return nullptr;
      }
      ST_CUDA_CHECK(e);
      return p;
    };
    source.release = [device](void* p, size_t) {
      int current = 0;
      const bool restore = cudaGetDevice(&current) == cudaSuccess && current != device;
      cudaSetDevice(device);
      cudaFree(p);
      if (restore) cudaSetDevice(current);
    };
    pool = std::make_unique<BlockPool>(std::move(source), caching_enabled());
  }
  return *pool;
}

void* CudaBackend::allocate(size_t nbytes, int device) {
  std::unique_lock<std::mutex> l(alloc_mu_);
  // A device that does not exist gets its own message, not "out of memory" (checked once: a
  // device has a pool only after passing it).
  if (device < 0 || device >= kDevices || !pools_[size_t(device)]) check_device(device);
  BlockPool& pool = pool_for(device);
  const size_t before = pool.in_use_bytes();
  // On a failed cudaMalloc the pool hands its wholly free segments back and asks once more.
  void* p = pool.allocate(nbytes);
  if (!p) {
    const BlockPoolStats s = pool.stats();
    l.unlock();
    throw Error("cuda:" + std::to_string(device) + ": out of memory allocating " +
                std::to_string(nbytes) + " bytes (" + std::to_string(s.in_use_bytes >> 20) +
                " MiB in use by tensors, " + std::to_string(s.reserved_bytes >> 20) +
                " MiB held by the allocator; " +
                cudaGetErrorString(cudaErrorMemoryAllocation) + ")");
  }
  in_use_all_ += pool.in_use_bytes() - before;
  peak_in_use_all_ = std::max(peak_in_use_all_, in_use_all_);
  return p;
}

// Blocks go back to the cache, not the driver: all work runs on the device's one stream, so a
// later kernel that reuses a block is ordered after every kernel that used it before.
void CudaBackend::deallocate(void* p, size_t nbytes, int device) noexcept {
  (void)nbytes;  // the pool knows each block's size
  if (!p || device < 0 || device >= kDevices) return;
  std::lock_guard<std::mutex> l(alloc_mu_);
  BlockPool* pool = pools_[size_t(device)].get();
  if (!pool) return;
  const size_t before = pool->in_use_bytes();
  pool->deallocate(p);  // with ST_CUDA_CACHE=0: straight to cudaFree
  in_use_all_ -= before - pool->in_use_bytes();
}

void CudaBackend::empty_cache() {
  std::lock_guard<std::mutex> l(alloc_mu_);
  for (auto& pool : pools_)
    if (pool) pool->release_cached();
}

MemoryStats CudaBackend::memory_stats() const {
  std::lock_guard<std::mutex> l(alloc_mu_);
  MemoryStats m;
  size_t largest_per_device = 0;
  for (const auto& pool : pools_) {
    if (!pool) continue;
    const BlockPoolStats s = pool->stats();
    m.device_allocations += s.segment_allocations;
    m.cache_hits += s.cache_hits;
    m.cached_bytes += s.cached_bytes;
    m.reserved_bytes += s.reserved_bytes;
    m.segments += s.segments;
    m.free_blocks += s.free_blocks;
    m.largest_free_block = std::max(m.largest_free_block, s.largest_free_block);
    largest_per_device += s.largest_free_block;
  }
  m.in_use_bytes = in_use_all_;
  m.peak_in_use_bytes = peak_in_use_all_;
  m.fragmentation =
      m.cached_bytes ? 1.0 - double(largest_per_device) / double(m.cached_bytes) : 0.0;
  return m;
}

void CudaBackend::set_workspace_limit(size_t bytes) {
  g_workspace_limit.store(bytes);
  for_each_context([bytes](Context& c) {
    c.conv_plans.clear();  // a plan made under a larger limit may need more than the new one
    if (c.workspace_bytes > bytes) c.release_workspace();
  });
}

size_t CudaBackend::workspace_limit() const { return cudnn_workspace_limit(); }

// A copy between two GPUs. Its source was written by work queued on the source device's stream,
// but the copy is queued on the destination's: without an event between them it could read the
// source before that work has run. And the caller frees the source right after (Tensor::copy_'s
// contiguous temporary): the block goes back to the cache, where the next op on the source
// device's stream may reuse it while the copy on the other stream still reads it. So: record an
// event on the source stream, make the destination stream wait on it, copy, and wait for the
// copy before returning. Waiting is the simplest correct choice (a stream-ordered deferred free
// of the source would avoid the host stall, but copies between GPUs are rare here: moving a
// model or a frame between devices, not per-op traffic).
void CudaBackend::copy_between_devices(void* dst, int dst_device, const void* src, int src_device,
                                       size_t n) {
  cudaEvent_t source_ready = nullptr;
  {
    Context& sc = context(src_device);
    std::lock_guard<std::recursive_mutex> l(sc.mu);  // not held with the destination's lock
    ST_CUDA_CHECK(cudaSetDevice(src_device));       // an event belongs to the current device
    ST_CUDA_CHECK(cudaEventCreateWithFlags(&source_ready, cudaEventDisableTiming));
    cudaError_t e = cudaEventRecord(source_ready, sc.stream);
    if (e != cudaSuccess) {
      cudaEventDestroy(source_ready);
      ST_CUDA_CHECK(e);
    }
  }
  Op op("memcpy", dst_device);
  // The event may belong to another device than the stream that waits on it.
  cudaError_t e = cudaStreamWaitEvent(op.ctx.stream, source_ready, 0);
  if (e == cudaSuccess) e = cudaMemcpyAsync(dst, src, n, cudaMemcpyDefault, op.ctx.stream);
  if (e == cudaSuccess) e = cudaStreamSynchronize(op.ctx.stream);
  cudaEventDestroy(source_ready);  // released once it has completed; the stream no longer needs it
  if (e != cudaSuccess)
    throw_error("copy between devices", __FILE__, __LINE__, cudaGetErrorString(e));
}

// ---------------- copies between host and device ----------------
// Copies between a device and pageable host memory (CPU tensors come from malloc) from
// kStagingThreshold up go through two pinned staging buffers per device, used in turn. Why: the
// DMA engine reads and writes only pinned memory, so for pageable memory the driver bounces the
// data through pinned buffers of its own, holding the host while it does (a 720p frame is ~11 MB
// a copy). Here the bounce is ours and pipelined: the host memcpy of chunk k+1 into one buffer
// runs while the DMA of chunk k from the other is in flight, and an event recorded after each
// chunk's DMA says when its buffer may be filled again. Pinning the buffers once (lazily: pinning
// is slow) and keeping them bounded (2 x kStagingChunk per device, whatever the tensor size)
// avoids both pinning each tensor per copy (cudaHostRegister costs more than the copy) and
// pinning every CPU tensor (page-locked memory is taken away from the rest of the system, which
// matters on a Jetson). A host-to-device copy returns once the last chunk is in a staging buffer:
// the source has been read and the caller may free it; the DMA runs on in stream order. A
// device-to-host copy returns once the last chunk has been copied out, as before. Small copies
// stay direct (the extra memcpy and events would cost more than they save), and if cudaHostAlloc
// fails the copies stay direct too. (Not measured yet: the GPU benchmarks are to come,
// docs/benchmarks.md.)
namespace {
constexpr size_t kStagingThreshold = size_t(64) << 10;
constexpr size_t kStagingChunk = size_t(4) << 20;  // the size of each of the two buffers
}  // namespace

CudaBackend::Staging* CudaBackend::staging_for(Context& ctx) {
  Staging& s = staging_[size_t(ctx.device)];
  if (s.unavailable) return nullptr;
  if (s.buffer[0]) return &s;
  bool ok = true;
  for (int i = 0; i < 2 && ok; ++i) {
    // Portable: pinned for every device's context (each device has its own buffers anyway).
    ok = cudaHostAlloc(&s.buffer[i], kStagingChunk, cudaHostAllocPortable) == cudaSuccess;
    if (!ok) s.buffer[i] = nullptr;
    if (ok) ok = cudaEventCreateWithFlags(&s.done[i], cudaEventDisableTiming) == cudaSuccess;
    if (!ok) s.done[i] = nullptr;
  }
  if (ok) return &s;
  cudaGetLastError();  // an allocation failure is not sticky; do not let a later check see it
  for (int i = 0; i < 2; ++i) {
    if (s.buffer[i]) cudaFreeHost(s.buffer[i]);
    if (s.done[i]) cudaEventDestroy(s.done[i]);
  }
  s = Staging{};
  s.unavailable = true;
  return nullptr;
}

void CudaBackend::staged_to_device(Context& ctx, void* dst, const void* src, size_t n,
                                   Staging& s) {
  char* d = static_cast<char*>(dst);
  const char* h = static_cast<const char*>(src);
  int i = 0;
  for (size_t off = 0; off < n; off += kStagingChunk, i ^= 1) {
    const size_t len = std::min(kStagingChunk, n - off);
    // The buffer's previous copy (two chunks ago, or an earlier call's) has read it. An event
    // never recorded counts as completed.
    ST_CUDA_CHECK(cudaEventSynchronize(s.done[i]));
    std::memcpy(s.buffer[i], h + off, len);
    ST_CUDA_CHECK(cudaMemcpyAsync(d + off, s.buffer[i], len, cudaMemcpyHostToDevice, ctx.stream));
    ST_CUDA_CHECK(cudaEventRecord(s.done[i], ctx.stream));
  }
}

void CudaBackend::staged_to_host(Context& ctx, void* dst, const void* src, size_t n,
                                 Staging& s) {
  char* h = static_cast<char*>(dst);
  const char* d = static_cast<const char*>(src);
  const size_t chunks = (n + kStagingChunk - 1) / kStagingChunk;
  auto chunk_len = [&](size_t k) { return std::min(kStagingChunk, n - k * kStagingChunk); };
  auto queue = [&](size_t k) {  // the DMA of chunk k into buffer k % 2
    const int i = int(k & 1);
    // Chunk k-2 was copied out of this buffer already; an earlier host-to-device copy may still
    // be reading it.
    ST_CUDA_CHECK(cudaEventSynchronize(s.done[i]));
    ST_CUDA_CHECK(cudaMemcpyAsync(s.buffer[i], d + k * kStagingChunk, chunk_len(k),
                                  cudaMemcpyDeviceToHost, ctx.stream));
    ST_CUDA_CHECK(cudaEventRecord(s.done[i], ctx.stream));
  };
  queue(0);
  for (size_t k = 0; k < chunks; ++k) {
    if (k + 1 < chunks) queue(k + 1);  // in flight while chunk k is copied out
    const int i = int(k & 1);
    ST_CUDA_CHECK(cudaEventSynchronize(s.done[i]));
    std::memcpy(h + k * kStagingChunk, s.buffer[i], chunk_len(k));
  }
  // The last chunk's event completed: so did everything queued on the stream before it.
}

void CudaBackend::memcpy(void* dst, Device dd, const void* src, Device sd, size_t n) {
  if (n == 0) return;
  if (dd.is_cuda() && sd.is_cuda() && dd.index != sd.index)
    return copy_between_devices(dst, dd.index, src, sd.index, n);
  const int dev = dd.is_cuda() ? dd.index : sd.index;
  Op op("memcpy", dev);
  const bool to_host = dd.is_cpu(), from_host = sd.is_cpu();
  Staging* staging =
      to_host != from_host && n >= kStagingThreshold ? staging_for(op.ctx) : nullptr;
  if (staging && from_host) {
    staged_to_device(op.ctx, dst, src, n, *staging);
  } else if (staging) {
    staged_to_host(op.ctx, dst, src, n, *staging);
  } else {
    // Unified addressing: the runtime infers the direction. (Host-to-device copies from pageable
    // memory return once the source has been staged, so the caller may free it.)
    ST_CUDA_CHECK(cudaMemcpyAsync(dst, src, n, cudaMemcpyDefault, op.ctx.stream));
    // The host reads what it asked for right after: wait.
    if (to_host) ST_CUDA_CHECK(cudaStreamSynchronize(op.ctx.stream));
  }
  // Everything queued on the device has completed: report a bad cross-entropy target.
  if (to_host) verify_target_check(op.ctx);
}

// ---------------- the deferred cross-entropy target check ----------------
CudaBackend::TargetCheck& CudaBackend::target_check_for(Context& ctx) {
  TargetCheck& t = target_checks_[size_t(ctx.device)];
  if (t.device_record) return t;
  constexpr size_t kBytes = 3 * sizeof(long long);
  void* host = nullptr;
  void* dev = nullptr;
  ST_CUDA_CHECK(cudaHostAlloc(&host, kBytes, cudaHostAllocPortable));
  cudaError_t e = cudaMalloc(&dev, kBytes);
  // Pixel -1: no bad target yet (all bits set); ordered before any check on the stream.
  if (e == cudaSuccess) e = cudaMemsetAsync(dev, 0xFF, kBytes, ctx.stream);
  if (e != cudaSuccess) {
    cudaFreeHost(host);
    if (dev) cudaFree(dev);
    ST_CUDA_CHECK(e);
  }
  t.host_record = static_cast<long long*>(host);
  t.host_record[0] = -1;
  t.device_record = static_cast<long long*>(dev);
  return t;
}

void CudaBackend::verify_target_check(Context& ctx) {
  TargetCheck& t = target_checks_[size_t(ctx.device)];
  if (!t.pending) return;
  t.pending = false;
  const long long pixel = t.host_record[0], value = t.host_record[1], classes = t.host_record[2];
  if (pixel < 0) return;
  // Reported once: clear the record (on the stream, so before any later check) and its copy.
  t.host_record[0] = -1;
  int current = 0;
  const bool restore = cudaGetDevice(&current) == cudaSuccess && current != ctx.device;
  if (restore) cudaSetDevice(ctx.device);
  const cudaError_t e = cudaMemsetAsync(t.device_record, 0xFF, sizeof(long long), ctx.stream);
  if (restore) cudaSetDevice(current);
  ST_CUDA_CHECK(e);
  throw Error("weighted_cross_entropy: target value " + std::to_string(value) + " at pixel " +
              std::to_string(pixel) + " is outside [0, " + std::to_string(classes) + ")");
}

// Waits for every device's stream; then reports a bad cross-entropy target found on it. Each
// device's lock is held from the wait to the check, so that no forward queued by another thread
// in between can be writing the record being read.
void CudaBackend::synchronize() {
  for_each_context([this](Context& c) {
    ST_CUDA_CHECK(cudaStreamSynchronize(c.stream));
    verify_target_check(c);
  });
}

CudaBackend& backend() {
  static CudaBackend* b = new CudaBackend;  // never destroyed: tensors may outlive main()
  return *b;
}

Backend& cuda_backend() { return backend(); }


}  // namespace st::cuda

// The entry point tensor/backend.cpp looks up after opening this library.
extern "C" __attribute__((visibility("default"))) st::Backend* st_cuda_backend_entry() {
  return &st::cuda::cuda_backend();
}
