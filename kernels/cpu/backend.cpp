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
// free) makes every frame page-fault its whole working set again. The cache holds at most the
// larger of 256 MB and twice the peak of large blocks in use so far, evicting the least recently
// freed blocks to make room. A loop's working set is its peak; with exact sizes the cache must
// also hold blocks freed early and allocated again late while other sizes are in use, which can
// exceed the peak (the full student step at 1280x720 evicted and re-faulted one 33 MB block per
// step with a bound of one peak; none with two). Peak RSS did not move (docs/benchmarks.md:
// 246 / 324 / 348 MB for 720p inference / partial / full step). ST_CPU_CACHE_MB=N sets a fixed
// bound instead, so an edge device's memory stays predictable.
namespace {
constexpr size_t kCacheMin = 256 * 1024;  // smaller blocks go straight to malloc
constexpr size_t kDefaultCacheLimit = size_t(256) << 20;
size_t rounded(size_t nbytes) {
  size_t n = std::max<size_t>(nbytes, 1);
  return n >= kCacheMin ? (n + 65535) / 65536 * 65536 : (n + 63) / 64 * 64;
}
// The fixed bound from ST_CPU_CACHE_MB, or SIZE_MAX when it is unset (the adaptive bound).
size_t fixed_cache_limit() {
  static const size_t limit = [] {
    const char* e = std::getenv("ST_CPU_CACHE_MB");
    return e && *e ? size_t(std::strtoull(e, nullptr, 10)) << 20 : SIZE_MAX;
  }();
  return limit;
}
}  // namespace

void* CpuBackend::allocate(size_t nbytes, int) {
  size_t n = rounded(nbytes);
  if (n >= kCacheMin) {
    std::lock_guard<std::mutex> lock(cache_mutex_);
    in_use_ += n;
    peak_in_use_ = std::max(peak_in_use_, in_use_);
    auto it = cache_.find(n);
    if (it != cache_.end()) {
      void* p = it->second->ptr;
      lru_.erase(it->second);
      cache_.erase(it);
      cached_bytes_ -= n;
      ++hits_;
      return p;
    }
    ++allocations_;
  }
  void* p = std::aligned_alloc(64, n);
  if (!p && n >= kCacheMin) {
    std::lock_guard<std::mutex> lock(cache_mutex_);
    in_use_ -= n;
  }
  ST_CHECK(p != nullptr, "cpu: out of memory allocating ", nbytes, " bytes");
  return p;
}

void CpuBackend::deallocate(void* p, size_t nbytes, int) noexcept {
  size_t n = rounded(nbytes);
  if (n >= kCacheMin) {
    std::lock_guard<std::mutex> lock(cache_mutex_);
    in_use_ -= n;
    const size_t fixed = fixed_cache_limit();
    const size_t limit = fixed != SIZE_MAX ? fixed : std::max(kDefaultCacheLimit, 2 * peak_in_use_);
    if (n <= limit) {
      while (cached_bytes_ + n > limit) {  // evict the least recently freed
        const Cached old = lru_.front();
        auto range = cache_.equal_range(old.size);
        for (auto it = range.first; it != range.second; ++it)
          if (it->second == lru_.begin()) {
            cache_.erase(it);
            break;
          }
        lru_.pop_front();
        cached_bytes_ -= old.size;
        std::free(old.ptr);
      }
      cache_.emplace(n, lru_.insert(lru_.end(), Cached{n, p}));
      cached_bytes_ += n;
      return;
    }
  }
  std::free(p);
}

void CpuBackend::empty_cache() {
  std::lock_guard<std::mutex> lock(cache_mutex_);
  for (auto& c : lru_) std::free(c.ptr);
  lru_.clear();
  cache_.clear();
  cached_bytes_ = 0;
}

MemoryStats CpuBackend::memory_stats() const {
  std::lock_guard<std::mutex> lock(cache_mutex_);
  MemoryStats s;
  s.device_allocations = allocations_;
  s.cache_hits = hits_;
  s.in_use_bytes = in_use_;
  s.peak_in_use_bytes = peak_in_use_;
  s.cached_bytes = cached_bytes_;
  s.reserved_bytes = in_use_ + cached_bytes_;
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
