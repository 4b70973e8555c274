// The CUDA backend (seam only, for now): device memory, host<->device copies and fill.
// Compute kernels arrive with the CUDA issue; until then the base class reports each missing
// kernel by name. Handed out by tensor/backend.cpp's registry.
#include <cuda_runtime.h>

#include <string>

#include "tensor/backend.h"
#include "kernels/cuda/cuda_backend.h"
#include "tensor/half.h"

namespace st::cuda {

#define ST_CUDA_CHECK(call)                                                                  \
  do {                                                                                       \
    cudaError_t st_err_ = (call);                                                            \
    if (st_err_ != cudaSuccess)                                                              \
      throw ::st::Error(std::string(#call) + " failed at " + __FILE__ + ":" +                 \
                        std::to_string(__LINE__) + ": " + cudaGetErrorString(st_err_));     \
  } while (0)

template <class T>
__global__ void fill_kernel(T* p, int64_t n, T v) {
  int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) p[i] = v;
}

class CudaBackend final : public Backend {
 public:
  const char* name() const override { return "cuda"; }

  void* allocate(size_t nbytes, int device) override {
    int count = 0;
    cudaError_t e = cudaGetDeviceCount(&count);
    if (e != cudaSuccess || device >= count)
      throw Error("cuda:" + std::to_string(device) + ": no usable GPU (" +
                  (e != cudaSuccess ? std::string(cudaGetErrorString(e))
                                    : std::to_string(count) + " device(s) present") +
                  ")");
    ST_CUDA_CHECK(cudaSetDevice(device));
    void* p = nullptr;
    ST_CUDA_CHECK(cudaMalloc(&p, nbytes ? nbytes : 1));
    return p;
  }

  void deallocate(void* p, size_t, int device) noexcept override {
    cudaSetDevice(device);
    cudaFree(p);
  }

  void memcpy(void* dst, Device dd, const void* src, Device sd, size_t n) override {
    cudaMemcpyKind kind = dd.is_cpu()   ? cudaMemcpyDeviceToHost
                          : sd.is_cpu() ? cudaMemcpyHostToDevice
                                        : cudaMemcpyDeviceToDevice;
    ST_CUDA_CHECK(cudaMemcpy(dst, src, n, kind));
  }

  void synchronize() override { ST_CUDA_CHECK(cudaDeviceSynchronize()); }

  void fill(Tensor& dst, double value) override {
    int64_t n = dst.numel();
    int threads = 256;
    unsigned blocks = unsigned((n + threads - 1) / threads);
    switch (dst.dtype()) {
      case DType::F32:
        fill_kernel<<<blocks, threads>>>(static_cast<float*>(dst.raw_data()), n, float(value));
        break;
      case DType::F64:
        fill_kernel<<<blocks, threads>>>(static_cast<double*>(dst.raw_data()), n, value);
        break;
      case DType::F16:
        fill_kernel<<<blocks, threads>>>(static_cast<uint16_t*>(dst.raw_data()), n,
                                         float_to_half(float(value)));
        break;
      case DType::U8:
        fill_kernel<<<blocks, threads>>>(static_cast<uint8_t*>(dst.raw_data()), n,
                                         uint8_t(int64_t(value)));
        break;
      case DType::I32:
        fill_kernel<<<blocks, threads>>>(static_cast<int32_t*>(dst.raw_data()), n,
                                         int32_t(value));
        break;
      case DType::I64:
        fill_kernel<<<blocks, threads>>>(static_cast<int64_t*>(dst.raw_data()), n,
                                         int64_t(value));
        break;
    }
    ST_CUDA_CHECK(cudaGetLastError());
  }
};

Backend& cuda_backend() {
  static CudaBackend backend;
  return backend;
}

}  // namespace st::cuda
