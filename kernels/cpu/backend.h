// The CPU backend: the reference implementation of every kernel (f32 fast paths, f64 for
// finite-difference tests). Multi-threaded with OpenMP. Its methods live in one file per op
// family, the same names as the CUDA backend's (kernels/cuda/):
//   backend.cpp      memory (with the large-block cache), copies, cpu_backend()
//   elementwise.cpp  fill, copy, unary, binary, sum_to, sum_all
//   conv.cpp         convolutions (the entry points over conv2d.h, the convolution engine)
//   matmul.cpp       matmul (large f32 products through the convolution engine)
//   optim.cpp        Adam
//   image.cpp        batch norm, resampling, pooling, softmax, cross-entropy, argmax
//   detect.cpp       the teacher's detection ops: ROIAlign, the NMS overlap mask, sort, paste
#pragma once
#include <list>
#include <map>
#include <mutex>
#include <vector>

#include "tensor/backend.h"

namespace st::cpu {

class CpuBackend final : public Backend {
 public:
  const char* name() const override { return "cpu"; }
  void* allocate(size_t nbytes, int device_index) override;
  void deallocate(void* ptr, size_t nbytes, int device_index) noexcept override;
  void memcpy(void* dst, Device dst_dev, const void* src, Device src_dev, size_t n) override;
  // Frees the large-block cache. memory_stats() reports the large blocks (>= 256 KiB) only:
  // allocations from the system, cache hits, bytes in use and their peak, cached bytes (smaller
  // blocks go to malloc uncounted). set_workspace_limit: Backend's default (no workspace,
  // ignored).
  void empty_cache() override;
  MemoryStats memory_stats() const override;

  // Every kernel of tensor/kernels.def (their contracts are there); the CPU backend is the
  // reference and declines none.
#define ST_KERNEL(name, params, args) void name params override;
#include "tensor/kernels.def"
  ST_DECLINED_KERNELS()

 private:
  mutable std::mutex cache_mutex_;
  // Free large blocks, least recently freed first, and an index of them by rounded size.
  struct Cached {
    size_t size;
    void* ptr;
  };
  std::list<Cached> lru_;
  std::multimap<size_t, std::list<Cached>::iterator> cache_;
  size_t cached_bytes_ = 0;
  size_t in_use_ = 0, peak_in_use_ = 0;  // large blocks handed out (rounded sizes)
  uint64_t allocations_ = 0, hits_ = 0;
};

}  // namespace st::cpu
