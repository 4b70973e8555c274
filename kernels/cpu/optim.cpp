// CPU optimizer kernels: the Adam step.
#include <cmath>

#include "kernels/cpu/backend.h"
#include "kernels/cpu/strided.h"

namespace st::cpu {

// PyTorch's single-tensor Adam (1.13): m = b1*m + (1-b1)*g; v = b2*v + (1-b2)*g*g;
// p -= (lr / (1-b1^t)) * m / (sqrt(v) / sqrt(1-b2^t) + eps). Scalars in double, as Python does.
void CpuBackend::adam_step(Tensor& param, const Tensor& grad, Tensor& m, Tensor& v,
                           const AdamParams& p) {
  dispatch_float("adam_step", param.dtype(), [&](auto tag) {
    using T = decltype(tag);
    T* w = param.data<T>();
    const T* g = grad.data<T>();
    T* pm = m.data<T>();
    T* pv = v.data<T>();
    int64_t n = param.numel();
    double bc1 = 1.0 - std::pow(p.beta1, double(p.step));
    double bc2 = 1.0 - std::pow(p.beta2, double(p.step));
    const T b1 = T(p.beta1), one_b1 = T(1.0 - p.beta1);
    const T b2 = T(p.beta2), one_b2 = T(1.0 - p.beta2);
    const T step_size = T(p.lr / bc1), bc2_sqrt = T(std::sqrt(bc2)), eps = T(p.eps);
#pragma omp parallel for if (n > 65536)
    for (int64_t i = 0; i < n; ++i) {
      pm[i] = pm[i] * b1 + g[i] * one_b1;
      pv[i] = pv[i] * b2 + g[i] * g[i] * one_b2;
      T denom = std::sqrt(pv[i]) / bc2_sqrt + eps;
      w[i] = w[i] - step_size * (pm[i] / denom);
    }
  });
}

}  // namespace st::cpu
