// The CUDA backend's infrastructure: errors, runtime settings, per-device contexts, the caching
// device allocator, copies, the op guard with NVTX ranges and the ST_PROFILE profiler, and the
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
constexpr int kMaxDevices = 16;
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

// ---------------- profiler (ST_PROFILE=1, ST_PROFILE_TRACE=file.json) ----------------
namespace {
struct Profiler {
  bool enabled = false;
  std::string trace_path;
  std::mutex mu;
  struct Pending {
    const char* name;
    int device;
    cudaEvent_t start, end;
    double flops;
  };
  std::vector<Pending> pending;
  struct Agg {
    uint64_t calls = 0;
    double total_ms = 0, max_ms = 0, flops = 0;
  };
  std::map<std::string, Agg> agg;
  struct TraceEvent {
    const char* name;
    int device;
    double ts_us, dur_us;
  };
  std::vector<TraceEvent> trace;
  std::map<int, cudaEvent_t> base;  // per device: time zero of the trace
  bool at_exit_registered = false;

  Profiler() {
    enabled = env_flag("ST_PROFILE", false);
    if (const char* t = std::getenv("ST_PROFILE_TRACE")) {
      trace_path = t;
      if (!trace_path.empty()) enabled = true;
    }
  }

  void add(const char* name, int device, cudaEvent_t start, cudaEvent_t end, double flops) {
    std::lock_guard<std::mutex> l(mu);
    if (!at_exit_registered) {  // after the CUDA runtime's own exit handler: runs before it
      at_exit_registered = true;
      std::atexit([] { report(); });
    }
    if (!base.count(device)) {
      cudaEvent_t b;
      if (cudaEventCreate(&b) == cudaSuccess) {
        cudaEventRecord(b, context(device).stream);
        base[device] = b;
      }
    }
    pending.push_back({name, device, start, end, flops});
    if (pending.size() >= 4096) drain_locked();
  }

  void drain_locked() {
    for (auto& p : pending) {
      float ms = 0, t0 = 0;
      if (cudaEventSynchronize(p.end) == cudaSuccess &&
          cudaEventElapsedTime(&ms, p.start, p.end) == cudaSuccess) {
        Agg& a = agg[p.name];
        a.calls++;
        a.total_ms += ms;
        a.max_ms = std::max(a.max_ms, double(ms));
        a.flops += p.flops;
        if (!trace_path.empty() && base.count(p.device) &&
            cudaEventElapsedTime(&t0, base[p.device], p.start) == cudaSuccess)
          trace.push_back({p.name, p.device, double(t0) * 1e3, double(ms) * 1e3});
      }
      cudaEventDestroy(p.start);
      cudaEventDestroy(p.end);
    }
    pending.clear();
  }

  static void report();
};

Profiler& profiler() {
  static Profiler* p = new Profiler;  // never destroyed: used from an atexit handler
  return *p;
}

void Profiler::report() {
  Profiler& p = profiler();
  std::lock_guard<std::mutex> l(p.mu);
  p.drain_locked();
  std::vector<std::pair<std::string, Agg>> rows(p.agg.begin(), p.agg.end());
  std::sort(rows.begin(), rows.end(),
            [](const auto& a, const auto& b) { return a.second.total_ms > b.second.total_ms; });
  double total = 0;
  for (auto& r : rows) total += r.second.total_ms;
  std::fprintf(stderr, "\n[ST_PROFILE] CUDA time per op (events on the device stream)\n");
  std::fprintf(stderr, "%-34s %8s %11s %10s %10s %7s %9s\n", "op", "calls", "total ms", "mean ms",
               "max ms", "share", "GFLOP/s");
  for (auto& [name, a] : rows) {
    char gf[32] = "";
    if (a.flops > 0 && a.total_ms > 0) std::snprintf(gf, sizeof gf, "%.1f", a.flops / (a.total_ms * 1e6));
    std::fprintf(stderr, "%-34s %8llu %11.3f %10.4f %10.4f %6.1f%% %9s\n", name.c_str(),
                 (unsigned long long)a.calls, a.total_ms, a.total_ms / double(a.calls), a.max_ms,
                 total > 0 ? 100.0 * a.total_ms / total : 0.0, gf);
  }
  std::fprintf(stderr, "%-34s %8s %11.3f\n", "total", "", total);
  if (!p.trace_path.empty()) {
    std::ofstream f(p.trace_path);
    f << "{\"displayTimeUnit\":\"ms\",\"traceEvents\":[";
    for (size_t i = 0; i < p.trace.size(); ++i) {
      const auto& e = p.trace[i];
      f << (i ? ",\n" : "\n") << "{\"name\":\"" << e.name << "\",\"cat\":\"cuda\",\"ph\":\"X\",\"pid\":0"
        << ",\"tid\":" << e.device << ",\"ts\":" << e.ts_us << ",\"dur\":" << e.dur_us << "}";
    }
    f << "\n]}\n";
    std::fprintf(stderr, "[ST_PROFILE] Chrome trace (%zu ops) written to %s\n", p.trace.size(),
                 p.trace_path.c_str());
  }
}
}  // namespace

Op::Op(const char* name, int device, double flops)
    : ctx(context(device)), lock_(ctx.mu), name_(name), flops_(flops) {
  ST_CUDA_CHECK(cudaSetDevice(device));
  nvtxRangePushA(name);
  if (profiler().enabled) {
    if (cudaEventCreate(&start_) == cudaSuccess) cudaEventRecord(start_, ctx.stream);
    else start_ = nullptr;
  }
}

Op::~Op() {
  if (start_) {
    cudaEvent_t end;
    if (cudaEventCreate(&end) == cudaSuccess) {
      cudaEventRecord(end, ctx.stream);
      profiler().add(name_, ctx.device, start_, end, flops_);
    } else {
      cudaEventDestroy(start_);
    }
  }
  nvtxRangePop();
}

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
namespace {
size_t round_size(size_t n) {
  n = std::max<size_t>(n, 1);
  constexpr size_t kMiB = size_t(1) << 20;
  return n < kMiB ? (n + 511) / 512 * 512 : (n + kMiB - 1) / kMiB * kMiB;
}
}  // namespace

void* CudaBackend::allocate(size_t nbytes, int device) {
  const size_t n = round_size(nbytes);
  {
    std::lock_guard<std::mutex> l(alloc_mu_);
    auto it = free_.find({device, n});
    if (it != free_.end()) {
      void* p = it->second;
      free_.erase(it);
      stats_.cached_bytes -= n;
      stats_.cache_hits++;
      stats_.in_use_bytes += n;
      stats_.peak_in_use_bytes = std::max(stats_.peak_in_use_bytes, stats_.in_use_bytes);
      return p;
    }
  }
  check_device(device);
  ST_CUDA_CHECK(cudaSetDevice(device));
  void* p = nullptr;
  cudaError_t e = cudaMalloc(&p, n);
  if (e == cudaErrorMemoryAllocation) {  // give the cache back to the driver and try again
    cudaGetLastError();
    empty_cache();
    e = cudaMalloc(&p, n);
  }
  if (e != cudaSuccess) {
    cudaGetLastError();
    MemoryStats s = memory_stats();
    throw Error("cuda:" + std::to_string(device) + ": out of memory allocating " +
                std::to_string(nbytes) + " bytes (" + std::to_string(s.in_use_bytes >> 20) +
                " MiB in use by tensors; " + cudaGetErrorString(e) + ")");
  }
  std::lock_guard<std::mutex> l(alloc_mu_);
  stats_.device_allocations++;
  stats_.in_use_bytes += n;
  stats_.peak_in_use_bytes = std::max(stats_.peak_in_use_bytes, stats_.in_use_bytes);
  return p;
}

// Blocks go back to the cache, not the driver: all work runs on the device's one stream, so a
// later kernel that reuses a block is ordered after every kernel that used it before.
void CudaBackend::deallocate(void* p, size_t nbytes, int device) noexcept {
  if (!p) return;
  const size_t n = round_size(nbytes);
  std::lock_guard<std::mutex> l(alloc_mu_);
  stats_.in_use_bytes -= std::min(stats_.in_use_bytes, n);
  if (caching_enabled()) {
    free_.emplace(std::make_pair(device, n), p);
    stats_.cached_bytes += n;
  } else {
    cudaSetDevice(device);
    cudaFree(p);
  }
}

void CudaBackend::empty_cache() {
  // The current device is put back after: allocate() retries its cudaMalloc after this, and an
  // op in progress on one device may call it (conv.cu's SearchWorkspace).
  int current = 0;
  const bool restore = cudaGetDevice(&current) == cudaSuccess;
  std::lock_guard<std::mutex> l(alloc_mu_);
  for (auto& [key, p] : free_) {
    cudaSetDevice(key.first);
    cudaFree(p);
  }
  free_.clear();
  stats_.cached_bytes = 0;
  if (restore) cudaSetDevice(current);
}

MemoryStats CudaBackend::memory_stats() const {
  std::lock_guard<std::mutex> l(alloc_mu_);
  return stats_;
}

void CudaBackend::set_workspace_limit(size_t bytes) {
  g_workspace_limit.store(bytes);
  for (int d = 0; d < kMaxDevices; ++d) {
    Context* c = nullptr;
    {
      std::lock_guard<std::mutex> l(g_ctx_mu);
      c = g_ctx[size_t(d)].get();
    }
    if (!c) continue;
    std::lock_guard<std::recursive_mutex> l(c->mu);
    c->conv_plans.clear();  // a plan made under a larger limit may need more than the new one
    if (c->workspace_bytes > bytes) c->release_workspace();
  }
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

void CudaBackend::memcpy(void* dst, Device dd, const void* src, Device sd, size_t n) {
  if (n == 0) return;
  if (dd.is_cuda() && sd.is_cuda() && dd.index != sd.index)
    return copy_between_devices(dst, dd.index, src, sd.index, n);
  const int dev = dd.is_cuda() ? dd.index : sd.index;
  Op op("memcpy", dev);
  // Unified addressing: the runtime infers the direction (and handles peer copies).
  ST_CUDA_CHECK(cudaMemcpyAsync(dst, src, n, cudaMemcpyDefault, op.ctx.stream));
  // The host reads what it asked for right after: wait. (Host-to-device copies from pageable
  // memory return once the source has been staged, so the caller may free it.)
  if (dd.is_cpu()) ST_CUDA_CHECK(cudaStreamSynchronize(op.ctx.stream));
}

void CudaBackend::synchronize() {
  for (int d = 0; d < kMaxDevices; ++d) {
    Context* c = nullptr;
    {
      std::lock_guard<std::mutex> l(g_ctx_mu);
      c = g_ctx[size_t(d)].get();
    }
    if (c) ST_CUDA_CHECK(cudaStreamSynchronize(c->stream));
  }
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
