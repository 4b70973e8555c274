// CUDA element-wise kernels and reductions: fill, strided copy with dtype conversion, unary and
// binary ops (with broadcasting through stride-0 views), sums over chosen dims.
#include <algorithm>
#include <cmath>
#include <type_traits>
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

template <class S, class D, class I, class Desc>
__global__ void copy_kernel(const S* src, Desc ss, D* dst, Desc ds, I n) {
  ST_GRID_STRIDE_T(I, i, n) {
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
  Strided ss = strided_of(src), ds = strided_of(dst);
  Strided* views[] = {&ss, &ds};
  collapse_dims(views, 2);
  // Source and destination offsets are computed separately: each view's reach must fit.
  const bool index32 = use_index32(n, std::max(reach(ss), reach(ds)));
  dispatch_all(src.dtype(), [&](auto s) {
    dispatch_all(dst.dtype(), [&](auto d) {
      using S = decltype(s);
      using D = decltype(d);
      with_index_width(index32, n, [&](auto count, auto sdesc, auto ddesc) {
        copy_kernel<S, D><<<blocks_for(n), 256, 0, op.ctx.stream>>>(
            static_cast<const S*>(src.raw_data()), sdesc, static_cast<D*>(dst.raw_data()), ddesc,
            count);
      }, ss, ds);
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
template <class T, class I, class Desc>
__global__ void binary_strided_kernel(bool mul, const T* a, Desc as, const T* b, Desc bs, T* o,
                                      I n) {
  ST_GRID_STRIDE_T(I, i, n) {
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
    else {
      // out is written at its linear index: only a's and b's offsets are computed.
      Strided as = strided_of(a), bs = strided_of(b);
      Strided* views[] = {&as, &bs};
      collapse_dims(views, 2);
      const bool index32 = use_index32(n, std::max(reach(as), reach(bs)));
      with_index_width(index32, n, [&](auto count, auto adesc, auto bdesc) {
        binary_strided_kernel<<<blocks_for(n), 256, 0, op.ctx.stream>>>(mul, pa, adesc, pb, bdesc,
                                                                        out.data<T>(), count);
      }, as, bs);
    }
  });
  ST_CUDA_LAUNCHED(op.ctx);
}

// ---------------- reductions ----------------
// x is viewed as (kept coordinates, reduced coordinates): `kept` / `red` hold the sizes and
// x-strides of the kept and the reduced dims (each collapsed on its own), so output k sums
// x[offset(kept, k) + offset(red, r)] over r < rcount. Double accumulation in an order fixed by
// the shape (deterministic for a fixed shape). Two launch shapes, chosen from the row length:
//   rows of up to kWarpRowMax elements: a warp per output (8 outputs per 256-thread block, grid-
//     stride over the outputs); lane j sums r = j, j + 32, ..., then a shuffle tree;
//   longer rows: a block per output (grid-stride over the outputs), split into `splits` slices
//     of the reduced index space when there are few outputs (partial[k * splits + s]; a second
//     kernel adds the slices in order).
constexpr int64_t kWarpRowMax = 1024;  // 32 elements per lane at most

template <class T, class I, class Desc>
__global__ void reduce_warp_kernel(const T* x, Desc kept, Desc red, I rcount, I nout, T* out) {
  const I warps = I(blockDim.x >> 5);
  const int lane = int(threadIdx.x & 31);
  // k is the same for the 32 lanes of a warp (blockDim.x is a multiple of 32), so every lane
  // reaches the full-mask shuffles; with I = uint32_t, k < nout < 2^31 and the step
  // gridDim.x * warps < 2^23 keep k + step below 2^32.
  for (I k = I(blockIdx.x) * warps + I(threadIdx.x >> 5); k < nout; k += I(gridDim.x) * warps) {
    const auto base = strided_offset(kept, k);
    double acc = 0;
    for (I r = I(lane); r < rcount; r += 32) acc += double(x[base + strided_offset(red, r)]);
    for (int o = 16; o > 0; o >>= 1) acc += __shfl_down_sync(0xffffffffu, acc, o);
    if (lane == 0) out[k] = T(acc);
  }
}

template <class T, class I, class Desc>
__global__ void reduce_block_kernel(const T* x, Desc kept, Desc red, I rcount, I nout, int splits,
                                    double* partial, T* out) {
  const int s = int(blockIdx.y);
  // The slice [r0, r1) of this block's split; with I = uint32_t, s * chunk < rcount + splits
  // and r1 + blockDim.x < 2^31 + 2^16, no wrap.
  const I chunk = (rcount + I(splits) - 1) / I(splits);
  const I r0 = I(s) * chunk, r1 = min(rcount, r0 + chunk);
  // k depends on blockIdx.x only: the whole block runs the same iterations, so block_sum's
  // __syncthreads are reached by every thread.
  for (I k = I(blockIdx.x); k < nout; k += I(gridDim.x)) {
    const auto base = strided_offset(kept, k);
    double acc = 0;
    for (I r = r0 + I(threadIdx.x); r < r1; r += I(blockDim.x))
      acc += double(x[base + strided_offset(red, r)]);
    acc = block_sum(acc);
    if (threadIdx.x == 0) {
      if (partial) partial[int64_t(k) * splits + s] = acc;
      else out[k] = T(acc);
    }
  }
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
  if (rcount == 0) {  // empty sums: zeros (all-zero bits are 0.0 in f32 and f64)
    dispatch_float("reduce_sum", x.dtype(), [](auto) {});
    ST_CUDA_CHECK(cudaMemsetAsync(out.raw_data(), 0, size_t(nout) * dtype_size(out.dtype()),
                                  op.ctx.stream));
    return;
  }
  // Each descriptor is collapsed on its own (merging two adjacent kept, or two adjacent reduced,
  // entries keeps the row-major numbering of k, or of r).
  Strided* kv[] = {&kept};
  Strided* rv[] = {&red};
  collapse_dims(kv, 1);
  collapse_dims(rv, 1);
  // An element's offset is offset(kept, k) + offset(red, r): the two reaches add up.
  const bool index32 = use_index32(nout * rcount, reach(kept) + reach(red));
  const bool warp_rows = rcount <= kWarpRowMax;
  // Block per output: enough blocks to fill the GPU, splitting each output's reduction when
  // there are few outputs.
  int splits = 1;
  if (!warp_rows && nout < 1024)
    splits = int(std::min<int64_t>(std::max<int64_t>(1, rcount / 4096),
                                   std::max<int64_t>(1, 2048 / nout)));
  Scratch partial(splits > 1 ? size_t(nout) * size_t(splits) * sizeof(double) : 0,
                  x.device().index);
  dispatch_float("reduce_sum", x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    const T* px = static_cast<const T*>(x.raw_data());
    T* po = out.data<T>();
    if (warp_rows) {
      with_index_width(index32, nout, [&](auto n, auto kd, auto rd) {
        using I = decltype(n);
        reduce_warp_kernel<<<blocks_for(nout * 32), 256, 0, op.ctx.stream>>>(px, kd, rd,
                                                                            I(rcount), n, po);
      }, kept, red);
      ST_CUDA_LAUNCHED(op.ctx);
      return;
    }
    const dim3 grid(unsigned(std::min<int64_t>(nout, 65535 * 8)), unsigned(splits));
    double* pp = splits > 1 ? partial.as<double>() : nullptr;
    with_index_width(index32, nout, [&](auto n, auto kd, auto rd) {
      using I = decltype(n);
      reduce_block_kernel<<<grid, 256, 0, op.ctx.stream>>>(px, kd, rd, I(rcount), n, splits, pp,
                                                           po);
    }, kept, red);
    ST_CUDA_LAUNCHED(op.ctx);
    if (splits > 1) {
      reduce_final_kernel<<<blocks_for(nout), 256, 0, op.ctx.stream>>>(pp, splits, po, nout);
      ST_CUDA_LAUNCHED(op.ctx);
    }
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
