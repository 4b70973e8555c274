// CUDA matmul through cuBLAS (f32: Sgemm, f64: Dgemm); strided 2-D views are read in place when
// cuBLAS can address them, else made contiguous first.
#include <algorithm>
#include <type_traits>

#include "kernels/cuda/backend.cuh"

namespace st::cuda {

namespace {
// How a row-major (rows x cols) view with strides (s0, s1) reads as a column-major matrix:
// transposed (op N, ld = s0) when rows are contiguous, plain (op T, ld = s1) when columns are.
struct GemmView {
  bool ok = false;
  cublasOperation_t op = CUBLAS_OP_N;
  int64_t ld = 1;
};
GemmView gemm_view(const Tensor& t) {
  const int64_t r = t.size(0), c = t.size(1), s0 = t.strides()[0], s1 = t.strides()[1];
  GemmView v;
  if ((c == 1 || s1 == 1) && (r == 1 || s0 >= std::max<int64_t>(c, 1))) {
    v.ok = true;
    v.op = CUBLAS_OP_N;
    v.ld = r == 1 ? std::max<int64_t>(c, 1) : s0;
  } else if ((r == 1 || s0 == 1) && (c == 1 || s1 >= std::max<int64_t>(r, 1))) {
    v.ok = true;
    v.op = CUBLAS_OP_T;
    v.ld = c == 1 ? std::max<int64_t>(r, 1) : s1;
  }
  return v;
}
}  // namespace

void CudaBackend::matmul(const Tensor& a_in, const Tensor& b_in, Tensor& out) {
  const int64_t M = a_in.size(0), K = a_in.size(1), N = b_in.size(1);
  if (out.numel() == 0) return;
  if (K == 0) {
    fill(out, 0.0);
    return;
  }
  Op op("matmul", out.device().index);
  GemmView va = gemm_view(a_in), vb = gemm_view(b_in);
  Tensor a = va.ok ? a_in : a_in.contiguous(), b = vb.ok ? b_in : b_in.contiguous();
  if (!va.ok) va = gemm_view(a);
  if (!vb.ok) vb = gemm_view(b);
  // Row-major C = A B  <=>  column-major C^T = B^T A^T: C^T is N x M with ld N.
  dispatch_float("matmul", out.dtype(), [&](auto tag) {
    using T = decltype(tag);
    const T one = 1, zero = 0;
    if constexpr (std::is_same_v<T, float>)
      ST_CUBLAS_CHECK(cublasSgemm(op.ctx.cublas, vb.op, va.op, int(N), int(M), int(K), &one,
                                  b.data<T>(), int(vb.ld), a.data<T>(), int(va.ld), &zero,
                                  out.data<T>(), int(N)));
    else
      ST_CUBLAS_CHECK(cublasDgemm(op.ctx.cublas, vb.op, va.op, int(N), int(M), int(K), &one,
                                  b.data<T>(), int(vb.ld), a.data<T>(), int(va.ld), &zero,
                                  out.data<T>(), int(N)));
  });
}

}  // namespace st::cuda
