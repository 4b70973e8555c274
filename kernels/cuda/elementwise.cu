// CUDA element-wise kernels and reductions: fill, strided copy with dtype conversion, unary and
// binary ops (with broadcasting through stride-0 views), sums over chosen dims.
#include <cmath>
#include <vector>

#include "kernels/cuda/backend.cuh"

namespace st::cuda {

// ---------------- fill / copy ----------------
template <class T>
__global__ void fill_kernel(T* p, int64_t n, T v) {
  ST_GRID_STRIDE(i, n) p[i] = v;
}

template <class T>
T host_value(double v) {
  if constexpr (std::is_same_v<T, uint16_t>) return float_to_half(float(v));
  else if constexpr (std::is_same_v<T, uint8_t>) return uint8_t(int64_t(v));
  else return T(v);
}

void CudaBackend::fill(Tensor& dst, double value) {
  const int64_t n = dst.numel();
  if (n == 0) return;
  Op op("fill", dst.device().index);
  dispatch_all(dst.dtype(), [&](auto tag) {
    using T = decltype(tag);
    fill_kernel<<<blocks_for(n), 256, 0, op.ctx.stream>>>(static_cast<T*>(dst.raw_data()), n,
                                                           host_value<T>(value));
  });
  ST_CUDA_LAUNCHED(op.ctx);
}

template <class S, class D>
__global__ void copy_kernel(const S* src, Strided ss, D* dst, Strided ds, int64_t n) {
  ST_GRID_STRIDE(i, n) {
    const S v = src[strided_offset(ss, i)];
    D& o = dst[strided_offset(ds, i)];
    if constexpr (std::is_same_v<S, D>) o = v;
    else o = from_double<D>(to_double<S>(v));
  }
}

void CudaBackend::copy(const Tensor& src, Tensor& dst) {
  ST_CHECK(src.shape() == dst.shape(), "copy: shape mismatch ", src.shape(), " vs ", dst.shape());
  const int64_t n = dst.numel();
  if (n == 0) return;
  Op op("copy", dst.device().index);
  if (src.dtype() == dst.dtype() && src.is_contiguous() && dst.is_contiguous()) {
    ST_CUDA_CHECK(cudaMemcpyAsync(dst.raw_data(), src.raw_data(),
                                  size_t(n) * dtype_size(src.dtype()), cudaMemcpyDefault,
                                  op.ctx.stream));
    return;
  }
  const Strided ss = strided_of(src), ds = strided_of(dst);
  dispatch_all(src.dtype(), [&](auto s) {
    dispatch_all(dst.dtype(), [&](auto d) {
      using S = decltype(s);
      using D = decltype(d);
      copy_kernel<S, D><<<blocks_for(n), 256, 0, op.ctx.stream>>>(
          static_cast<const S*>(src.raw_data()), ss, static_cast<D*>(dst.raw_data()), ds, n);
    });
  });
  ST_CUDA_LAUNCHED(op.ctx);
}

// ---------------- unary ----------------
template <class T>
__global__ void unary_kernel(int op, const T* x, T* y, int64_t n, T alpha) {
  ST_GRID_STRIDE(i, n) {
    const T a = x[i];
    switch (op) {
      case int(UnaryOp::Relu): y[i] = a > T(0) ? a : T(0); break;
      case int(UnaryOp::Sigmoid): y[i] = T(1) / (T(1) + exp(-a)); break;
      case int(UnaryOp::Scale): y[i] = a * alpha; break;
      default: y[i] = a + alpha; break;
    }
  }
}

void CudaBackend::unary(UnaryOp uop, const Tensor& x, Tensor& y, double alpha) {
  const int64_t n = x.numel();
  if (n == 0) return;
  Op op("unary", x.device().index);
  dispatch_float("unary", x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    unary_kernel<<<blocks_for(n), 256, 0, op.ctx.stream>>>(int(uop), x.data<T>(), y.data<T>(), n,
                                                            T(alpha));
  });
  ST_CUDA_LAUNCHED(op.ctx);
}

template <class T>
__global__ void unary_backward_kernel(int op, const T* gy, const T* saved, T* gx, int64_t n,
                                      T alpha) {
  ST_GRID_STRIDE(i, n) {
    switch (op) {
      case int(UnaryOp::Relu): gx[i] = saved[i] > T(0) ? gy[i] : T(0); break;
      case int(UnaryOp::Sigmoid): gx[i] = gy[i] * saved[i] * (T(1) - saved[i]); break;
      case int(UnaryOp::Scale): gx[i] = gy[i] * alpha; break;
      default: gx[i] = gy[i]; break;
    }
  }
}

void CudaBackend::unary_backward(UnaryOp uop, const Tensor& gy, const Tensor& saved, Tensor& gx,
                                 double alpha) {
  const int64_t n = gy.numel();
  if (n == 0) return;
  Op op("unary_backward", gy.device().index);
  dispatch_float("unary_backward", gy.dtype(), [&](auto tag) {
    using T = decltype(tag);
    const bool uses_saved = uop == UnaryOp::Relu || uop == UnaryOp::Sigmoid;
    unary_backward_kernel<<<blocks_for(n), 256, 0, op.ctx.stream>>>(
        int(uop), gy.data<T>(), uses_saved ? saved.data<T>() : nullptr, gx.data<T>(), n, T(alpha));
  });
  ST_CUDA_LAUNCHED(op.ctx);
}

// ---------------- binary ----------------
template <class T>
__global__ void binary_contig_kernel(bool mul, const T* a, const T* b, T* o, int64_t n) {
  ST_GRID_STRIDE(i, n) o[i] = mul ? a[i] * b[i] : a[i] + b[i];
}
template <class T>
__global__ void binary_strided_kernel(bool mul, const T* a, Strided as, const T* b, Strided bs,
                                      T* o, int64_t n) {
  ST_GRID_STRIDE(i, n) {
    const T x = a[strided_offset(as, i)], y = b[strided_offset(bs, i)];
    o[i] = mul ? x * y : x + y;
  }
}

void CudaBackend::binary(BinaryOp bop, const Tensor& a, const Tensor& b, Tensor& out) {
  const int64_t n = out.numel();
  if (n == 0) return;
  Op op("binary", out.device().index);
  const bool mul = bop == BinaryOp::Mul;
  dispatch_float("binary", out.dtype(), [&](auto tag) {
    using T = decltype(tag);
    const T* pa = static_cast<const T*>(a.raw_data());
    const T* pb = static_cast<const T*>(b.raw_data());
    if (a.is_contiguous() && b.is_contiguous())
      binary_contig_kernel<<<blocks_for(n), 256, 0, op.ctx.stream>>>(mul, pa, pb, out.data<T>(), n);
    else
      binary_strided_kernel<<<blocks_for(n), 256, 0, op.ctx.stream>>>(
          mul, pa, strided_of(a), pb, strided_of(b), out.data<T>(), n);
  });
  ST_CUDA_LAUNCHED(op.ctx);
}

// ---------------- reductions ----------------
// x is viewed as (kept coordinates, reduced coordinates): `kept` / `red` hold the sizes and
// x-strides of the kept and the reduced dims. Block (k, s) sums the s-th slice of the reduced
// index space of output k into partial[k * splits + s]; a second kernel adds the slices in
// order. Double accumulation, fixed order: deterministic.
template <class T>
__global__ void reduce_partial_kernel(const T* x, Strided kept, Strided red, int64_t rcount,
                                      int splits, double* partial) {
  const int64_t k = blockIdx.x;
  const int s = int(blockIdx.y);
  const int64_t base = strided_offset(kept, k);
  const int64_t chunk = (rcount + splits - 1) / splits;
  const int64_t r0 = int64_t(s) * chunk, r1 = min(rcount, r0 + chunk);
  double acc = 0;
  for (int64_t r = r0 + threadIdx.x; r < r1; r += blockDim.x)
    acc += double(x[base + strided_offset(red, r)]);
  acc = block_sum(acc);
  if (threadIdx.x == 0) partial[k * splits + s] = acc;
}
template <class T>
__global__ void reduce_final_kernel(const double* partial, int splits, T* out, int64_t nout) {
  ST_GRID_STRIDE(k, nout) {
    double acc = 0;
    for (int s = 0; s < splits; ++s) acc += partial[k * splits + s];
    out[k] = T(acc);
  }
}

void CudaBackend::reduce_sum(const Tensor& x, const std::vector<bool>& keep, Tensor& out) {
  Op op("reduce_sum", x.device().index);
  // kept and red are filled by hand below: their fixed rank arrays hold kMaxRank dims.
  check_rank("reduce_sum", x.dim());
  ST_CHECK(int64_t(keep.size()) == x.dim(), "reduce_sum: ", keep.size(), " keep flags for rank ",
           x.dim());
  Strided kept, red;
  int64_t nout = 1, rcount = 1;
  if (x.dim() == 0) {
    kept.rank = red.rank = 1;
    kept.size[0] = red.size[0] = 1;
  }
  for (int64_t d = 0; d < x.dim(); ++d) {
    Strided& s = keep[size_t(d)] ? kept : red;
    s.size[s.rank] = x.shape()[size_t(d)];
    s.stride[s.rank] = x.strides()[size_t(d)];
    s.rank++;
    (keep[size_t(d)] ? nout : rcount) *= x.shape()[size_t(d)];
  }
  if (kept.rank == 0) kept.rank = 1, kept.size[0] = 1, kept.stride[0] = 0;
  if (red.rank == 0) red.rank = 1, red.size[0] = 1, red.stride[0] = 0;
  ST_CHECK(out.numel() == nout, "reduce_sum: output has ", out.numel(), " elements, expected ", nout);
  if (nout == 0) return;
  // Enough blocks to fill the GPU: split each output's reduction when there are few outputs.
  int splits = 1;
  if (nout < 1024) splits = int(std::min<int64_t>(std::max<int64_t>(1, rcount / 4096),
                                                   std::max<int64_t>(1, 2048 / nout)));
  Scratch partial(size_t(nout) * size_t(splits) * sizeof(double), x.device().index);
  dispatch_float("reduce_sum", x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    reduce_partial_kernel<<<dim3(unsigned(nout), unsigned(splits)), 256, 0, op.ctx.stream>>>(
        static_cast<const T*>(x.raw_data()), kept, red, rcount, splits, partial.as<double>());
    ST_CUDA_LAUNCHED(op.ctx);
    reduce_final_kernel<<<blocks_for(nout), 256, 0, op.ctx.stream>>>(partial.as<double>(), splits,
                                                                      out.data<T>(), nout);
    ST_CUDA_LAUNCHED(op.ctx);
  });
}

void CudaBackend::sum_to(const Tensor& x, Tensor& out) {
  ST_CHECK(x.dim() == out.dim(), "sum_to: rank mismatch ", x.shape(), " -> ", out.shape());
  std::vector<bool> keep(size_t(x.dim()));
  for (int64_t d = 0; d < x.dim(); ++d)
    keep[size_t(d)] = !(out.shape()[size_t(d)] == 1 && x.shape()[size_t(d)] != 1);
  reduce_sum(x, keep, out);
}

void CudaBackend::sum_all(const Tensor& x, Tensor& out) {
  reduce_sum(x, std::vector<bool>(size_t(x.dim()), false), out);
}

}  // namespace st::cuda
