// CUDA optimizer kernels: the Adam step, with the CPU backend's formula and operation order
// (kernels/cpu/optim.cpp).
#include <cmath>

#include "kernels/cuda/backend.cuh"

namespace st::cuda {

template <class T>
__global__ void adam_kernel(T* w, const T* g, T* m, T* v, int64_t n, T b1, T one_b1, T b2,
                            T one_b2, T step_size, T bc2_sqrt, T eps) {
  ST_GRID_STRIDE(i, n) {
    const T gi = g[i];
    const T mi = m[i] * b1 + gi * one_b1;
    const T vi = v[i] * b2 + gi * gi * one_b2;
    m[i] = mi;
    v[i] = vi;
    const T denom = sqrt(vi) / bc2_sqrt + eps;
    w[i] = w[i] - step_size * (mi / denom);
  }
}

void CudaBackend::adam_step(Tensor& param, const Tensor& grad, Tensor& m, Tensor& v,
                            const AdamParams& p) {
  const int64_t n = param.numel();
  if (n == 0) return;
  Op op("adam_step", param.device().index);
  const double bc1 = 1.0 - std::pow(p.beta1, double(p.step));
  const double bc2 = 1.0 - std::pow(p.beta2, double(p.step));
  dispatch_float("adam_step", param.dtype(), [&](auto tag) {
    using T = decltype(tag);
    adam_kernel<<<blocks_for(n), 256, 0, op.ctx.stream>>>(
        param.data<T>(), grad.data<T>(), m.data<T>(), v.data<T>(), n, T(p.beta1), T(1.0 - p.beta1),
        T(p.beta2), T(1.0 - p.beta2), T(p.lr / bc1), T(std::sqrt(bc2)), T(p.eps));
  });
  ST_CUDA_LAUNCHED(op.ctx);
}

}  // namespace st::cuda
