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
#include <array>
#include <map>
#include <memory>
#include <mutex>
#include <vector>

#include "kernels/common/block_pool.h"
#include "kernels/cuda/common.cuh"

namespace st::cuda {

class CudaBackend final : public Backend {
 public:
  static constexpr int kDevices = 16;  // the devices it serves: cuda:0 to cuda:15
  const char* name() const override { return "cuda"; }
  MemoryStats memory_stats() const override;

  void* allocate(size_t nbytes, int device) override;
  void deallocate(void* ptr, size_t nbytes, int device) noexcept override;
  // Copies with a host side wait for the device's queued work, then report a deferred
  // cross-entropy target error (verify_target_check); large ones go through pinned staging.
  void memcpy(void* dst, Device dst_dev, const void* src, Device src_dev, size_t n) override;
  // Waits for every device's stream, then reports a deferred cross-entropy target error.
  void synchronize() override;
  // Frees every wholly free cached segment (all devices) to the driver.
  void empty_cache() override;
  // Sets cudnn_workspace_limit(); drops the algorithm choices (made under the old limit) and
  // frees to the cache any device's workspace larger than the new limit.
  void set_workspace_limit(size_t bytes) override;
  size_t workspace_limit() const override;
  // Two events on the device's stream around the call (tensor/profile.h).
  std::unique_ptr<profile::DeviceTiming> start_timing(int device) override;

  // Every kernel of tensor/kernels.def (their contracts are there). Declined: none.
#define ST_KERNEL(name, params, args) void name params override;
#include "tensor/kernels.def"
  ST_DECLINED_KERNELS()

  // Shared helper: out[k] = sum over the elements of x (any layout) whose coordinates in the
  // kept dims (keep[d] true) give out's linear index k (out: contiguous, the kept dims' sizes).
  void reduce_sum(const Tensor& x, const std::vector<bool>& keep, Tensor& out);

 private:
  void copy_between_devices(void* dst, int dst_device, const void* src, int src_device, size_t n);
  // Caching allocator: one BlockPool (kernels/common/block_pool.h) per device, created on the
  // device's first allocation; segments come from cudaMalloc. alloc_mu_ guards the pools and the
  // counters below (the pools are not thread-safe themselves).
  BlockPool& pool_for(int device);  // the caller holds alloc_mu_
  mutable std::mutex alloc_mu_;
  std::array<std::unique_ptr<BlockPool>, kDevices> pools_;
  size_t in_use_all_ = 0, peak_in_use_all_ = 0;  // over every device (MemoryStats' in_use, peak)

  // Pinned staging for copies between pageable host memory and a device (memcpy, backend.cu):
  // two buffers per device used in turn, each with an event recorded after the last copy that
  // used it. Guarded by the device's Context::mu (memcpy holds it through its Op).
  struct Staging {
    void* buffer[2] = {nullptr, nullptr};
    cudaEvent_t done[2] = {nullptr, nullptr};
    bool unavailable = false;  // cudaHostAlloc failed once: copy directly from then on
  };
  Staging* staging_for(Context& ctx);  // nullptr: copy directly
  void staged_to_device(Context& ctx, void* dst, const void* src, size_t n, Staging& s);
  void staged_to_host(Context& ctx, void* dst, const void* src, size_t n, Staging& s);
  std::array<Staging, kDevices> staging_;

  // weighted_cross_entropy_forward's target check, deferred to the device's next synchronising
  // point (image.cu queues it, verify_target_check reads it). device_record {pixel, value,
  // classes} holds the first bad target seen since the last check (pixel -1: none); each forward
  // queues a copy of it into host_record (pinned). Guarded by the device's Context::mu.
  struct TargetCheck {
    long long* device_record = nullptr;
    long long* host_record = nullptr;
    bool pending = false;  // a forward has queued a check not yet verified
  };
  std::array<TargetCheck, kDevices> target_checks_;
  TargetCheck& target_check_for(Context& ctx);  // its records allocated on first use
  // After the device's stream has been synchronised (everything queued has completed), with
  // ctx.mu held: throws the first bad target's st::Error if a queued check found one.
  void verify_target_check(Context& ctx);
};

CudaBackend& backend();

}  // namespace st::cuda
