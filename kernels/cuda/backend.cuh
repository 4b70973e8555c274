// The CUDA backend class (its Backend overrides; tensor/kernels.def lists the kernels). Its
// methods live in one translation unit per op family, the same names as the CPU backend's
// (kernels/cpu/), all in libst_cuda.so:
//   backend.cu      contexts (stream, handles, cuDNN workspace), caching allocator, copies,
//                   synchronize, profiling (ST_PROFILE, NVTX), st_cuda_backend_entry (the symbol
//                   tensor/backend.cpp looks up after loading the library)
//   elementwise.cu  fill, copy, unary, binary, sum_to, sum_all (reduce_sum)
//   conv.cu         cuDNN convolutions (forward, backward data/weight/bias, transposed)
//   matmul.cu       cuBLAS matmul
//   optim.cu        Adam
//   image.cu        batch norm (training and frozen), resampling, pooling, softmax,
//                   cross-entropy, argmax
//   detect.cu       the teacher's detection ops: ROIAlign, the NMS overlap mask, sort, paste
#pragma once
#include <map>
#include <mutex>
#include <vector>

#include "kernels/cuda/common.cuh"

namespace st::cuda {

class CudaBackend final : public Backend {
 public:
  const char* name() const override { return "cuda"; }
  MemoryStats memory_stats() const override;

  void* allocate(size_t nbytes, int device) override;
  void deallocate(void* ptr, size_t nbytes, int device) noexcept override;
  void memcpy(void* dst, Device dst_dev, const void* src, Device src_dev, size_t n) override;
  void synchronize() override;
  // Frees every cached block (all devices) to the driver.
  void empty_cache() override;
  // Sets cudnn_workspace_limit(); drops the algorithm choices (made under the old limit) and
  // frees to the cache any device's workspace larger than the new limit.
  void set_workspace_limit(size_t bytes) override;
  size_t workspace_limit() const override;

  // Every kernel of tensor/kernels.def (their contracts are there). Declined: none.
#define ST_KERNEL(name, params) void name params override;
#include "tensor/kernels.def"
  ST_DECLINED_KERNELS()

  // Shared helper: out[k] = sum over the elements of x (any layout) whose coordinates in the
  // kept dims (keep[d] true) give out's linear index k (out: contiguous, the kept dims' sizes).
  void reduce_sum(const Tensor& x, const std::vector<bool>& keep, Tensor& out);

 private:
  void copy_between_devices(void* dst, int dst_device, const void* src, int src_device, size_t n);
  // Caching allocator: free blocks by (device, rounded size).
  mutable std::mutex alloc_mu_;
  std::multimap<std::pair<int, size_t>, void*> free_;
  MemoryStats stats_;
};

CudaBackend& backend();

}  // namespace st::cuda
