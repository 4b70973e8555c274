// The CPU backend object: memory (with the large-block cache) and copies; the process-wide
// backend the registry (tensor/backend.cpp) hands out. Its kernels live in one file per op
// family: elementwise.cpp, conv.cpp, matmul.cpp, optim.cpp, image.cpp, detect.cpp.
#include "kernels/cpu/backend.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "tensor/cpu_backend.h"

namespace st::cpu {

// ---------------- memory ----------------
// Large blocks are cached by exact (rounded) size: a video pipeline allocates the same
// activation sizes every frame, and handing them back to the OS (glibc unmaps big blocks on
// free) makes every frame page-fault its whole working set again. The cache is bounded
// (ST_CPU_CACHE_MB, default 256) so an edge device's memory stays predictable.
namespace {
constexpr size_t kCacheMin = 256 * 1024;  // smaller blocks go straight to malloc
size_t rounded(size_t nbytes) {
  size_t n = std::max<size_t>(nbytes, 1);
  return n >= kCacheMin ? (n + 65535) / 65536 * 65536 : (n + 63) / 64 * 64;
}
size_t cache_limit() {
  static const size_t limit = [] {
    const char* e = std::getenv("ST_CPU_CACHE_MB");
    return size_t(e ? std::strtoull(e, nullptr, 10) : 256) << 20;
  }();
  return limit;
}
}  // namespace

void* CpuBackend::allocate(size_t nbytes, int) {
  size_t n = rounded(nbytes);
  if (n >= kCacheMin) {
    std::lock_guard<std::mutex> lock(cache_mutex_);
    auto it = cache_.find(n);
    if (it != cache_.end()) {
      void* p = it->second;
      cache_.erase(it);
      cached_bytes_ -= n;
      return p;
    }
  }
  void* p = std::aligned_alloc(64, n);
  ST_CHECK(p != nullptr, "cpu: out of memory allocating ", nbytes, " bytes");
  return p;
}

void CpuBackend::deallocate(void* p, size_t nbytes, int) noexcept {
  size_t n = rounded(nbytes);
  if (n >= kCacheMin) {
    std::lock_guard<std::mutex> lock(cache_mutex_);
    if (cached_bytes_ + n <= cache_limit()) {
      cache_.emplace(n, p);
      cached_bytes_ += n;
      return;
    }
  }
  std::free(p);
}

void CpuBackend::empty_cache() {
  std::lock_guard<std::mutex> lock(cache_mutex_);
  for (auto& entry : cache_) std::free(entry.second);
  cache_.clear();
  cached_bytes_ = 0;
}

MemoryStats CpuBackend::memory_stats() const {
  std::lock_guard<std::mutex> lock(cache_mutex_);
  MemoryStats s;
  s.cached_bytes = cached_bytes_;
  return s;
}

void CpuBackend::memcpy(void* dst, Device, const void* src, Device, size_t n) {
  if (n) std::memcpy(dst, src, n);
}

// ---------------- the backend object ----------------
Backend& cpu_backend() {
  // Never destroyed: tensors in other static objects may be freed after main returns.
  static CpuBackend* cpu = new CpuBackend;
  return *cpu;
}

}  // namespace st::cpu
