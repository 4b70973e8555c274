// CPU matmul: large f32 products through the convolution engine (conv2d.h), the rest (and the
// f64 reference) as plain loops.
#include <type_traits>
#include <vector>

#include "kernels/cpu/backend.h"
#include "kernels/cpu/conv2d.h"
#include "kernels/cpu/strided.h"

namespace st::cpu {

namespace {
// float GEMM through the convolution engine (blocked, vectorised, both cores): out^T (N, M) is a
// 1x1 convolution of a^T, laid out as a (1, K, M, 1) image, with b^T as the (N, K, 1, 1) weight.
// The transposes are copies (O(MK + NK + MN) against O(MNK) work); a linear's weight, viewed
// transposed, needs none.
void matmul_f32_conv(const float* pa, int64_t as0, int64_t as1, const float* pb, int64_t bs0,
                     int64_t bs1, float* po, int64_t M, int64_t K, int64_t N) {
  std::vector<float> at(static_cast<size_t>(K * M)), yt(static_cast<size_t>(N * M)), bt;
#pragma omp parallel for if (M * K > 65536)
  for (int64_t k = 0; k < K; ++k)
    for (int64_t i = 0; i < M; ++i) at[size_t(k * M + i)] = pa[i * as0 + k * as1];
  const float* w = pb;
  if (!(bs0 == 1 && bs1 == K)) {
    bt.resize(static_cast<size_t>(N * K));
#pragma omp parallel for if (N * K > 65536)
    for (int64_t j = 0; j < N; ++j)
      for (int64_t k = 0; k < K; ++k) bt[size_t(j * K + k)] = pb[k * bs0 + j * bs1];
    w = bt.data();
  }
  cpu::ConvGeom g;
  g.C = K, g.H = M, g.W = 1, g.K = N, g.OH = M, g.OW = 1;  // rows of 1: bands split M
  cpu::conv2d_forward<float>(g, at.data(), w, nullptr, yt.data());
#pragma omp parallel for if (M * N > 65536)
  for (int64_t i = 0; i < M; ++i)
    for (int64_t j = 0; j < N; ++j) po[i * N + j] = yt[size_t(j * M + i)];
}
}  // namespace

void CpuBackend::matmul(const Tensor& a, const Tensor& b, Tensor& out) {
  dispatch_float("matmul", a.dtype(), [&](auto tag) {
    using T = decltype(tag);
    const T* pa = static_cast<const T*>(a.raw_data());
    const T* pb = static_cast<const T*>(b.raw_data());
    T* po = out.data<T>();
    int64_t M = a.size(0), K = a.size(1), N = b.size(1);
    int64_t as0 = a.strides()[0], as1 = a.strides()[1];
    int64_t bs0 = b.strides()[0], bs1 = b.strides()[1];
    if constexpr (std::is_same_v<T, float>) {
      if (M * N * K >= (int64_t(1) << 21)) {
        matmul_f32_conv(pa, as0, as1, pb, bs0, bs1, po, M, K, N);
        return;
      }
    }
    // Small or double (the reference): plain loops, accumulating in k order.
#pragma omp parallel for if (M * N * K > 262144)
    for (int64_t i = 0; i < M; ++i) {
      T* row = po + i * N;
      for (int64_t j = 0; j < N; ++j) row[j] = T(0);
      for (int64_t k = 0; k < K; ++k) {
        T av = pa[i * as0 + k * as1];
        const T* brow = pb + k * bs0;
        for (int64_t j = 0; j < N; ++j) row[j] += av * brow[j * bs1];
      }
    }
  });
}

}  // namespace st::cpu
