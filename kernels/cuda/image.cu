// CUDA kernels for NCHW image ops: batch norm (batch statistics and frozen), bilinear and
// nearest resize, max-pool, channel softmax / log-softmax, the weighted cross-entropy of
// SPEC §3, argmax. Each follows the CPU reference's formula and operation order
// (kernels/cpu/image.cpp); source-coordinate rules are shared (kernels/common/resample.h).
// Reductions accumulate in double in a fixed order (deterministic); resampling and pooling
// backward passes scatter with atomicAdd.
#include <cmath>
#include <type_traits>

#include "kernels/common/resample.h"
#include "kernels/cuda/backend.cuh"

namespace st::cuda {

namespace {

constexpr int kThreads = 256;

// ---- batch norm: per-channel reductions ----
// A block reduces one slice (split s of S) of one channel's count = N*H*W values; grid
// (min(C, kChannelGridCap), S), channels beyond the cap taken by the same blocks in turn
// (grid-stride over channels). Within a channel, element e < count is (n, i) = (e / P, e % P):
// 32-bit division by multiply-high (DivMod32) when count < 2^31, 64-bit division otherwise;
// element offsets are 64-bit (N*C*P may exceed 2^31).
constexpr int64_t kChannelGridCap = 65535 * 8;
// At most this many elements per thread (the float error bound below depends on it): the
// count decides a lower bound on the splits.
constexpr int64_t kMaxPerThread = 1024;

// Splits per channel: enough blocks to fill the device, at most kMaxPerThread elements per
// thread (while S <= 65535, the grid's y limit: count <= 65535 * 256 * 1024, about 1.7e10).
int channel_splits(int64_t C, int64_t count) {
  int64_t s = std::max<int64_t>(1, std::min<int64_t>(count / (kThreads * 8), 4096 / std::max<int64_t>(C, 1)));
  s = std::max(s, (count + kThreads * kMaxPerThread - 1) / (kThreads * kMaxPerThread));
  return int(std::min<int64_t>(s, 65535));
}
dim3 channel_grid(int64_t C, int S) {
  return dim3(unsigned(std::min(C, kChannelGridCap)), unsigned(S), 1u);
}

// Offset of element e of channel c (n = e / P, i = e - n * P) in NCHW x.
template <class I>
__device__ inline int64_t channel_element(I e, const DivMod32& dp, int64_t P, int64_t C, int64_t c) {
  int64_t n;
  if constexpr (std::is_same_v<I, uint32_t>) n = int64_t(dp.div(e));
  else n = e / P;
  return (n * C + c) * P + (int64_t(e) - n * P);
}
// Channel of the linear NCHW index i: (i / P) % C, in 32-bit when numel < 2^31.
template <class I>
__device__ inline int64_t channel_of(I i, const DivMod32& dp, const DivMod32& dc, int64_t P,
                                     int64_t C) {
  if constexpr (std::is_same_v<I, uint32_t>) {
    const uint32_t q = dp.div(i);
    return int64_t(q - dc.div(q) * dc.d);
  } else {
    return (i / P) % C;
  }
}
// Launches kernel<I> with I = uint32_t when n < 2^31 (then P, C < 2^31 too) unless
// ST_CUDA_INDEX64 is set, else int64_t.
#define ST_BN_LAUNCH(KERNEL, T, n, grid, stream, ...)                                         \
  do {                                                                                        \
    if ((n) < kIndex32Limit && !force_index64())                                              \
      KERNEL<T, uint32_t><<<grid, kThreads, 0, stream>>>(uint32_t(n), __VA_ARGS__);           \
    else                                                                                      \
      KERNEL<T, int64_t><<<grid, kThreads, 0, stream>>>(int64_t(n), __VA_ARGS__);             \
  } while (0)

// ---- float statistics ----
// Float inputs: each thread accumulates its values as a compensated pair (hi, lo) with Knuth's
// TwoSum (hi + lo + [the rounding error of the next addition] is exact), the pairs are merged
// by a TwoSum tree across the block (warp shuffles, then the 8 warp results), and the block's
// hi + lo goes to double for the O(C*S) combination across splits and the O(C) finalisation,
// which stay in double. The per-element work is float only (FP64 runs at a small fraction of
// the FP32 rate on Jetson Orin). The _rn intrinsics are never contracted into an FMA nor
// reassociated (this file is also built with --fmad=false). Why not per-thread Welford with
// Chan's merge: its error grows linearly with the values per thread (O(m u)); the compensated
// sums' grows as (m u)^2, below u for m <= 1024, at the price of 4 more float adds per value.
//
// Error bound (u = 2^-24, round to nearest; sums over one channel, n = N*H*W values). In the
// block's tree, every TwoSum error term e is added once into lo, and lo + hi equals the exact
// sum of the block's inputs plus the rounding errors of those lo additions. A value goes
// through at most m + 8 TwoSum nodes (m <= kMaxPerThread of its thread, 8 = log2(256) tree
// levels) and its e terms through at most L = m + 16 lo additions, so with |e| <= u|a + b| at
// each node and |a + b| <= (1 + L u) * (the sum of |inputs| below the node):
//   |block result - exact block sum| <= gamma_L * u * L * (1 + L u) * sum |inputs|
//   (gamma_k = ku/(1-ku); the sum of the |e| is at most u L (1 + L u) sum |inputs|),
// and the double combination adds at most (S + 2) * 2^-53 * sum |inputs|. Hence
//   |computed sum - exact sum| <= delta * sum |inputs|,
//   delta = L^2 u^2 / (1 - L u)^2 + (S + 2) 2^-53 <= 0.07 u   (L <= 1040, S <= 65535),
// whatever n (while n <= 1.7e10; beyond it m, hence L, grows). Naive float sums would give
// (n / (S * 256) + 8) u. For the statistics, with A = sum |x| / n, mu the exact mean and
// V = sum (x - mu)^2 / n the exact biased variance:
//   mean (double, before rounding to T):   |mean_d - mu| <= delta * A              (<= 0.07 u A)
//   pass 2 subtracts mu_f = float(mean_d): |mu_f - mu| <= eta = u |mu| + (1+u) delta A
//     and each term fl(fl(x - mu_f)^2) is within gamma_3 (relative) of (x - mu_f)^2, whose
//     exact sum is n (V + (mu_f - mu)^2):
//   var_d = (V + e2) (1 + t), |t| <= gamma_3 + delta (1 + gamma_3) <= 3.08 u, 0 <= e2 <= eta^2
//   invstd = 1/sqrt(var_d + eps) in double: relative error
//     <= (3.08 u V + 1.01 eta^2) / (2 (V + eps)) + 2^-50 <= 1.55 u + 0.51 eta^2 / (V + eps).
// The element-wise parity bound for y = x * scale + shift (scale = T(gamma invstd), shift =
// T(beta - mean_d gamma invstd), as the CPU reference forms them from its double statistics):
// the CPU model's float roundings of scale, shift, x * scale and the addition, plus what the
// statistics add,
//   |gamma| invstd ( |x_i - mu| (1.55 u + 0.51 eta^2 / (V + eps)) + 0.07 u A ) * (1 + 4u),
// i.e. in units of u, independent of n: 1.55 |gamma| invstd |x_i - mu| + 0.07 |gamma| invstd A
// (+ the eta^2 term, u^2-small unless |mu| >> sqrt(V + eps)); mean and invstd (saved in T) are
// within 0.07 u A and (1.55 u + 0.51 eta^2/(V+eps)) of the exact values before their rounding
// to T. The CPU reference's own error (double sums: about n 2^-53 relative to the sums of
// magnitudes) adds to these in a CPU-vs-GPU comparison. f64 inputs: double sums, as before.
__device__ inline void two_sum(float a, float b, float& s, float& e) {
  s = __fadd_rn(a, b);
  const float z = __fsub_rn(s, a);
  e = __fadd_rn(__fsub_rn(a, __fsub_rn(s, z)), __fsub_rn(b, z));
}
struct CompSum {  // the value hi + lo
  float hi = 0.0f, lo = 0.0f;
  __device__ void add(float x) {
    float e;
    two_sum(hi, x, hi, e);
    lo = __fadd_rn(lo, e);
  }
  __device__ void merge(float ohi, float olo) {
    float e;
    two_sum(hi, ohi, hi, e);
    lo = __fadd_rn(__fadd_rn(lo, olo), e);
  }
};
// Block-wide merge (blockDim.x a multiple of 32, <= 1024); valid in thread 0. Fixed tree:
// deterministic for a fixed launch shape. Called by every thread of the block.
__device__ inline CompSum block_comp_sum(CompSum v) {
  __shared__ float warp_hi[32], warp_lo[32];
  for (int o = 16; o > 0; o >>= 1) {
    const float h = __shfl_down_sync(0xffffffffu, v.hi, o), l = __shfl_down_sync(0xffffffffu, v.lo, o);
    v.merge(h, l);
  }
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  __syncthreads();  // the arrays may still be read by a previous call
  if (lane == 0) warp_hi[warp] = v.hi, warp_lo[warp] = v.lo;
  __syncthreads();
  v = CompSum{};
  if (threadIdx.x < (blockDim.x >> 5)) v.hi = warp_hi[threadIdx.x], v.lo = warp_lo[threadIdx.x];
  if (warp == 0)
    for (int o = 16; o > 0; o >>= 1) {
      const float h = __shfl_down_sync(0xffffffffu, v.hi, o), l = __shfl_down_sync(0xffffffffu, v.lo, o);
      v.merge(h, l);
    }
  return v;
}

// partial[c * S + s] = sum over the s-th slice of channel c's count values of
//   x              (mean == nullptr: for the mean)
//   (x - mean)^2   (otherwise: for the variance)
// float: compensated float sums (above); double: double sums.
template <class T, class I>
__global__ void channel_sum_kernel(I count, const T* x, int64_t C, int64_t P, DivMod32 dp, int S,
                                   const double* mean, double* partial) {
  const int s = int(blockIdx.y);
  // With I = uint32_t: s * chunk < count + S and e1 + blockDim.x < 2^31 + 2^17, no wrap.
  const I chunk = (count + I(S) - 1) / I(S);
  const I e0 = I(s) * chunk, e1 = min(count, e0 + chunk);
  // c depends on blockIdx.x only: every thread of the block runs the same iterations and
  // reaches the block reduction's __syncthreads.
  for (int64_t c = blockIdx.x; c < C; c += gridDim.x) {
    if constexpr (std::is_same_v<T, float>) {
      const float mu = mean ? float(mean[c]) : 0.0f;
      CompSum acc;
      for (I e = e0 + I(threadIdx.x); e < e1; e += I(blockDim.x)) {
        const float v = x[channel_element(e, dp, P, C, c)];
        if (mean) {
          const float d = __fsub_rn(v, mu);
          acc.add(__fmul_rn(d, d));
        } else {
          acc.add(v);
        }
      }
      acc = block_comp_sum(acc);
      if (threadIdx.x == 0) partial[c * S + s] = double(acc.hi) + double(acc.lo);
    } else {
      const double mu = mean ? mean[c] : 0.0;
      double acc = 0;
      for (I e = e0 + I(threadIdx.x); e < e1; e += I(blockDim.x)) {
        const double v = double(x[channel_element(e, dp, P, C, c)]);
        acc += mean ? (v - mu) * (v - mu) : v;
      }
      acc = block_sum(acc);
      if (threadIdx.x == 0) partial[c * S + s] = acc;
    }
  }
}

// partial_g / partial_gx[c * S + s]: sums of gy and of gy * (x - mean[c]) (double).
template <class T, class I>
__global__ void channel_grad_sums_kernel(I count, const T* gy, const T* x, const T* mean,
                                         int64_t C, int64_t P, DivMod32 dp, int S, double* pg,
                                         double* pgx) {
  const int s = int(blockIdx.y);
  const I chunk = (count + I(S) - 1) / I(S);
  const I e0 = I(s) * chunk, e1 = min(count, e0 + chunk);
  for (int64_t c = blockIdx.x; c < C; c += gridDim.x) {  // block-uniform (block_sum)
    const double mu = double(mean[c]);
    double a = 0, b = 0;
    for (I e = e0 + I(threadIdx.x); e < e1; e += I(blockDim.x)) {
      const int64_t k = channel_element(e, dp, P, C, c);
      const double g = double(gy[k]);
      a += g;
      b += g * (double(x[k]) - mu);
    }
    a = block_sum(a);
    b = block_sum(b);
    if (threadIdx.x == 0) {
      pg[c * S + s] = a;
      pgx[c * S + s] = b;
    }
  }
}

__global__ void combine_kernel(const double* partial, int S, int64_t C, double* out) {
  ST_GRID_STRIDE(c, C) {
    double acc = 0;
    for (int s = 0; s < S; ++s) acc += partial[c * S + s];
    out[c] = acc;
  }
}

template <class T>
__global__ void bn_stats_finalize_kernel(const double* sum, const double* ssq, int64_t C,
                                         double count, double eps, const T* gamma, const T* beta,
                                         double* mean_d, T* mean, T* invstd, T* scale, T* shift) {
  ST_GRID_STRIDE(c, C) {
    const double mu = sum[c] / count;
    if (ssq == nullptr) {  // first pass: the mean only
      mean_d[c] = mu;
      continue;
    }
    const double is = 1.0 / sqrt(ssq[c] / count + eps);
    mean[c] = T(mu);
    invstd[c] = T(is);
    scale[c] = T(double(gamma[c]) * is);
    shift[c] = T(double(beta[c]) - mu * double(gamma[c]) * is);
  }
}

template <class T, class I>
__global__ void channel_affine_kernel(I n, const T* x, const T* scale, const T* shift, T* y,
                                      DivMod32 dp, DivMod32 dc, int64_t C, int64_t P) {
  ST_GRID_STRIDE_T(I, i, n) {
    const int64_t c = channel_of(i, dp, dc, P, C);
    y[i] = x[i] * scale[c] + shift[c];
  }
}

}  // namespace

// ---------------- batch norm ----------------
void CudaBackend::batch_norm_forward(const Tensor& x, const Tensor& gamma, const Tensor& beta,
                                     double eps, Tensor& y, Tensor& mean, Tensor& invstd) {
  const int64_t N = x.size(0), C = x.size(1), P = x.size(2) * x.size(3), count = N * P;
  if (C == 0) return;
  Op op("batch_norm_forward", x.device().index);
  const int dev = x.device().index;
  const int S = channel_splits(C, count);
  Scratch partial(size_t(C * S) * sizeof(double), dev), sums(size_t(C) * sizeof(double), dev),
      ssq(size_t(C) * sizeof(double), dev), mean_d(size_t(C) * sizeof(double), dev);
  // Dividers for the 32-bit paths (used only when the count, or numel, is below 2^31, where
  // P and C are too).
  const DivMod32 dp(count < kIndex32Limit ? uint32_t(P) : 1u);
  const DivMod32 dc(x.numel() < kIndex32Limit ? uint32_t(C) : 1u);
  dispatch_float("batch_norm_forward", x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    Scratch scale(size_t(C) * sizeof(T), dev), shift(size_t(C) * sizeof(T), dev);
    const dim3 grid = channel_grid(C, S);
    cudaStream_t st = op.ctx.stream;
    // Two passes, as the CPU reference: the mean, then the centred sum of squares (float
    // inputs: compensated float sums, see the bound above; double inputs: double sums).
    ST_BN_LAUNCH(channel_sum_kernel, T, count, grid, st, x.data<T>(), C, P, dp, S, nullptr,
                 partial.as<double>());
    combine_kernel<<<blocks_for(C), kThreads, 0, st>>>(partial.as<double>(), S, C, sums.as<double>());
    bn_stats_finalize_kernel<T><<<blocks_for(C), kThreads, 0, st>>>(
        sums.as<double>(), nullptr, C, double(count), eps, nullptr, nullptr, mean_d.as<double>(),
        nullptr, nullptr, nullptr, nullptr);
    ST_BN_LAUNCH(channel_sum_kernel, T, count, grid, st, x.data<T>(), C, P, dp, S,
                 mean_d.as<double>(), partial.as<double>());
    combine_kernel<<<blocks_for(C), kThreads, 0, st>>>(partial.as<double>(), S, C, ssq.as<double>());
    bn_stats_finalize_kernel<T><<<blocks_for(C), kThreads, 0, st>>>(
        sums.as<double>(), ssq.as<double>(), C, double(count), eps, gamma.data<T>(),
        beta.data<T>(), mean_d.as<double>(), mean.data<T>(), invstd.data<T>(), scale.as<T>(),
        shift.as<T>());
    const int64_t n = x.numel();
    if (n > 0)
      ST_BN_LAUNCH(channel_affine_kernel, T, n, blocks_for(n), st, x.data<T>(), scale.as<T>(),
                   shift.as<T>(), y.data<T>(), dp, dc, C, P);
    ST_CUDA_LAUNCHED(op.ctx);
  });
}

namespace {
template <class T>
__global__ void bn_grad_finalize_kernel(const double* sg, double* sgx, const T* invstd, int64_t C,
                                        T* ggamma, T* gbeta) {
  ST_GRID_STRIDE(c, C) {
    const double v = sgx[c] * double(invstd[c]);  // sum(gy * xhat)
    sgx[c] = v;
    if (ggamma) ggamma[c] = T(v);
    if (gbeta) gbeta[c] = T(sg[c]);
  }
}

template <class T, class I>
__global__ void bn_input_grad_kernel(I n, bool batch_stats, const T* gy, const T* x,
                                     const T* gamma, const T* mean, const T* invstd,
                                     const double* sg, const double* sgx, double M, T* gx,
                                     DivMod32 dp, DivMod32 dc, int64_t C, int64_t P) {
  ST_GRID_STRIDE_T(I, i, n) {
    const int64_t c = channel_of(i, dp, dc, P, C);
    const double is = double(invstd[c]), k = double(gamma[c]) * is;
    if (batch_stats) {
      const T a = T(k), b = T(-k * sg[c] / M), cc = T(-k * sgx[c] * is / M), m = mean[c];
      gx[i] = a * gy[i] + b + cc * (x[i] - m);
    } else {
      gx[i] = T(k) * gy[i];
    }
  }
}

template <class T>
void bn_backward(Context& ctx, bool batch_stats, const Tensor& gy, const Tensor& x,
                 const Tensor& gamma, const Tensor& mean, const Tensor& invstd, Tensor* gx,
                 Tensor* ggamma, Tensor* gbeta) {
  const int64_t N = x.size(0), C = x.size(1), P = x.size(2) * x.size(3), count = N * P;
  const int dev = x.device().index;
  const bool need_sums = batch_stats ? (gx || ggamma || gbeta) : (ggamma || gbeta);
  const int S = channel_splits(C, count);
  const DivMod32 dp(count < kIndex32Limit ? uint32_t(P) : 1u);
  const DivMod32 dc(x.numel() < kIndex32Limit ? uint32_t(C) : 1u);
  Scratch pg(size_t(C * S) * sizeof(double), dev), pgx(size_t(C * S) * sizeof(double), dev),
      sg(size_t(C) * sizeof(double), dev), sgx(size_t(C) * sizeof(double), dev);
  cudaStream_t st = ctx.stream;
  if (need_sums) {
    ST_BN_LAUNCH(channel_grad_sums_kernel, T, count, channel_grid(C, S), st, gy.data<T>(),
                 x.data<T>(), mean.data<T>(), C, P, dp, S, pg.as<double>(), pgx.as<double>());
    combine_kernel<<<blocks_for(C), kThreads, 0, st>>>(pg.as<double>(), S, C, sg.as<double>());
    combine_kernel<<<blocks_for(C), kThreads, 0, st>>>(pgx.as<double>(), S, C, sgx.as<double>());
    bn_grad_finalize_kernel<<<blocks_for(C), kThreads, 0, st>>>(
        sg.as<double>(), sgx.as<double>(), invstd.data<T>(), C,
        ggamma ? ggamma->data<T>() : nullptr, gbeta ? gbeta->data<T>() : nullptr);
  }
  const int64_t n = x.numel();
  if (gx && n > 0) {
    ST_BN_LAUNCH(bn_input_grad_kernel, T, n, blocks_for(n), st, batch_stats, gy.data<T>(),
                 x.data<T>(), gamma.data<T>(), mean.data<T>(), invstd.data<T>(), sg.as<double>(),
                 sgx.as<double>(), double(count), gx->data<T>(), dp, dc, C, P);
  }
  ST_CUDA_LAUNCHED(ctx);
}

template <class T, class I>
__global__ void bn_frozen_kernel(I n, const T* x, const T* g, const T* b, const T* m, const T* is,
                                 T* y, DivMod32 dp, DivMod32 dc, int64_t C, int64_t P) {
  ST_GRID_STRIDE_T(I, i, n) {
    const int64_t c = channel_of(i, dp, dc, P, C);
    const T scale = g[c] * is[c], shift = b[c] - m[c] * g[c] * is[c];
    y[i] = x[i] * scale + shift;
  }
}
}  // namespace

void CudaBackend::batch_norm_backward(const Tensor& gy, const Tensor& x, const Tensor& gamma,
                                      const Tensor& mean, const Tensor& invstd, Tensor* gx,
                                      Tensor* ggamma, Tensor* gbeta) {
  if (x.size(1) == 0) return;
  Op op("batch_norm_backward", x.device().index);
  dispatch_float("batch_norm_backward", x.dtype(), [&](auto tag) {
    bn_backward<decltype(tag)>(op.ctx, true, gy, x, gamma, mean, invstd, gx, ggamma, gbeta);
  });
}

void CudaBackend::batch_norm_frozen_forward(const Tensor& x, const Tensor& gamma,
                                            const Tensor& beta, const Tensor& mean,
                                            const Tensor& invstd, Tensor& y) {
  const int64_t n = x.numel();
  if (n == 0) return;
  Op op("batch_norm_frozen_forward", x.device().index);
  const int64_t C = x.size(1), P = x.size(2) * x.size(3);
  // n > 0: C, P >= 1, and both < 2^31 when n is.
  const DivMod32 dp(n < kIndex32Limit ? uint32_t(P) : 1u), dc(n < kIndex32Limit ? uint32_t(C) : 1u);
  dispatch_float("batch_norm_frozen_forward", x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    ST_BN_LAUNCH(bn_frozen_kernel, T, n, blocks_for(n), op.ctx.stream, x.data<T>(),
                 gamma.data<T>(), beta.data<T>(), mean.data<T>(), invstd.data<T>(), y.data<T>(),
                 dp, dc, C, P);
  });
  ST_CUDA_LAUNCHED(op.ctx);
}

void CudaBackend::batch_norm_frozen_backward(const Tensor& gy, const Tensor& x,
                                             const Tensor& gamma, const Tensor& mean,
                                             const Tensor& invstd, Tensor* gx, Tensor* ggamma,
                                             Tensor* gbeta) {
  if (x.size(1) == 0) return;
  Op op("batch_norm_frozen_backward", x.device().index);
  dispatch_float("batch_norm_frozen_backward", x.dtype(), [&](auto tag) {
    bn_backward<decltype(tag)>(op.ctx, false, gy, x, gamma, mean, invstd, gx, ggamma, gbeta);
  });
}
#undef ST_BN_LAUNCH

// ---------------- resampling ----------------
namespace {
template <class T>
__global__ void bilinear_fwd_kernel(const T* x, T* y, int64_t NC, int64_t H, int64_t W,
                                    int64_t OH, int64_t OW) {
  ST_GRID_STRIDE(idx, NC * OH * OW) {
    const int64_t j = idx % OW, i = (idx / OW) % OH, p = idx / (OW * OH);
    constexpr bool single = std::is_same_v<T, float>;
    const BilinearTap a = bilinear_tap(i, H, OH, single), b = bilinear_tap(j, W, OW, single);
    const T* r0 = x + (p * H + a.i0) * W;
    const T* r1 = x + (p * H + a.i1) * W;
    const T h0 = T(a.l0), h1 = T(a.l1), w0 = T(b.l0), w1 = T(b.l1);
    y[idx] = h0 * (w0 * r0[b.i0] + w1 * r0[b.i1]) + h1 * (w0 * r1[b.i0] + w1 * r1[b.i1]);
  }
}
template <class T>
__global__ void bilinear_bwd_kernel(const T* gy, T* gx, int64_t NC, int64_t H, int64_t W,
                                    int64_t OH, int64_t OW) {
  ST_GRID_STRIDE(idx, NC * OH * OW) {
    const int64_t j = idx % OW, i = (idx / OW) % OH, p = idx / (OW * OH);
    constexpr bool single = std::is_same_v<T, float>;
    const BilinearTap a = bilinear_tap(i, H, OH, single), b = bilinear_tap(j, W, OW, single);
    T* r0 = gx + (p * H + a.i0) * W;
    T* r1 = gx + (p * H + a.i1) * W;
    const T h0 = T(a.l0), h1 = T(a.l1), w0 = T(b.l0), w1 = T(b.l1), g = gy[idx];
    atomicAdd(r0 + b.i0, h0 * w0 * g);
    atomicAdd(r0 + b.i1, h0 * w1 * g);
    atomicAdd(r1 + b.i0, h1 * w0 * g);
    atomicAdd(r1 + b.i1, h1 * w1 * g);
  }
}
template <class T>
__global__ void nearest_fwd_kernel(const T* x, T* y, int64_t NC, int64_t H, int64_t W, int64_t OH,
                                   int64_t OW) {
  ST_GRID_STRIDE(idx, NC * OH * OW) {
    const int64_t j = idx % OW, i = (idx / OW) % OH, p = idx / (OW * OH);
    y[idx] = x[(p * H + nearest_src(i, H, OH)) * W + nearest_src(j, W, OW)];
  }
}
template <class T>
__global__ void nearest_bwd_kernel(const T* gy, T* gx, int64_t NC, int64_t H, int64_t W,
                                   int64_t OH, int64_t OW) {
  ST_GRID_STRIDE(idx, NC * OH * OW) {
    const int64_t j = idx % OW, i = (idx / OW) % OH, p = idx / (OW * OH);
    atomicAdd(gx + (p * H + nearest_src(i, H, OH)) * W + nearest_src(j, W, OW), gy[idx]);
  }
}
}  // namespace

#define ST_RESAMPLE_LAUNCH(NAME, KERNEL, IN, OUT, ZERO_OUT, NCHW_IN, NCHW_OUT)                  \
  do {                                                                                        \
    const int64_t NC = NCHW_IN.size(0) * NCHW_IN.size(1);                                     \
    const int64_t total = NC * NCHW_OUT.size(2) * NCHW_OUT.size(3);                           \
    if (OUT.numel() == 0) return;                                                             \
    Op op(NAME, IN.device().index);                                                           \
    if (ZERO_OUT)                                                                             \
      ST_CUDA_CHECK(cudaMemsetAsync(OUT.raw_data(), 0, size_t(OUT.numel()) *                 \
                                        dtype_size(OUT.dtype()), op.ctx.stream));             \
    if (total == 0) return;                                                                   \
    dispatch_float(NAME, IN.dtype(), [&](auto tag) {                                          \
      using T = decltype(tag);                                                                \
      KERNEL<<<blocks_for(total), kThreads, 0, op.ctx.stream>>>(                              \
          IN.data<T>(), OUT.data<T>(), NC, small.size(2), small.size(3), big.size(2),        \
          big.size(3));                                                                       \
    });                                                                                       \
    ST_CUDA_LAUNCHED(op.ctx);                                                                 \
  } while (0)

void CudaBackend::resize_bilinear_forward(const Tensor& x, Tensor& y) {
  const Tensor &small = x, &big = y;  // "small" = the input plane, "big" = the output plane
  ST_RESAMPLE_LAUNCH("resize_bilinear_forward", bilinear_fwd_kernel, x, y, false, x, y);
}
void CudaBackend::resize_bilinear_backward(const Tensor& gy, Tensor& gx) {
  const Tensor &small = gx, &big = gy;
  ST_RESAMPLE_LAUNCH("resize_bilinear_backward", bilinear_bwd_kernel, gy, gx, true, gx, gy);
}
void CudaBackend::resize_nearest_forward(const Tensor& x, Tensor& y) {
  const Tensor &small = x, &big = y;
  ST_RESAMPLE_LAUNCH("resize_nearest_forward", nearest_fwd_kernel, x, y, false, x, y);
}
void CudaBackend::resize_nearest_backward(const Tensor& gy, Tensor& gx) {
  const Tensor &small = gx, &big = gy;
  ST_RESAMPLE_LAUNCH("resize_nearest_backward", nearest_bwd_kernel, gy, gx, true, gx, gy);
}
#undef ST_RESAMPLE_LAUNCH

// ---------------- max pool ----------------
namespace {
template <class T>
__global__ void maxpool_fwd_kernel(const T* x, T* y, int64_t* ind, int64_t NC, int64_t H, int64_t W,
                                   int64_t OH, int64_t OW, Pool2dParams p) {
  ST_GRID_STRIDE(idx, NC * OH * OW) {
    const int64_t j = idx % OW, i = (idx / OW) % OH, q = idx / (OW * OH);
    const T* plane = x + q * H * W;
    T best = -T(INFINITY);
    int64_t arg = -1;
    for (int64_t r = 0; r < p.kernel_h; ++r) {
      const int64_t h = i * p.stride_h - p.pad_h + r;
      if (h < 0 || h >= H) continue;
      for (int64_t s = 0; s < p.kernel_w; ++s) {
        const int64_t w = j * p.stride_w - p.pad_w + s;
        if (w < 0 || w >= W) continue;
        const T v = plane[h * W + w];
        if (arg < 0 || v > best || isnan(v)) {
          best = v;
          arg = h * W + w;
        }
      }
    }
    y[idx] = best;
    ind[idx] = arg;
  }
}
template <class T>
__global__ void maxpool_bwd_kernel(const T* gy, const int64_t* ind, T* gx, int64_t NC, int64_t HW,
                                   int64_t OHW) {
  ST_GRID_STRIDE(idx, NC * OHW) {
    const int64_t a = ind[idx];
    if (a >= 0) atomicAdd(gx + (idx / OHW) * HW + a, gy[idx]);
  }
}
}  // namespace

void CudaBackend::max_pool2d_forward(const Tensor& x, const Pool2dParams& p, Tensor& y,
                                     Tensor& indices) {
  const int64_t NC = x.size(0) * x.size(1), total = y.numel();
  if (total == 0) return;
  Op op("max_pool2d_forward", x.device().index);
  dispatch_float("max_pool2d_forward", x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    maxpool_fwd_kernel<<<blocks_for(total), kThreads, 0, op.ctx.stream>>>(
        x.data<T>(), y.data<T>(), indices.data<int64_t>(), NC, x.size(2), x.size(3), y.size(2),
        y.size(3), p);
  });
  ST_CUDA_LAUNCHED(op.ctx);
}

void CudaBackend::max_pool2d_backward(const Tensor& gy, const Tensor& indices, Tensor& gx) {
  if (gx.numel() == 0) return;
  Op op("max_pool2d_backward", gy.device().index);
  ST_CUDA_CHECK(cudaMemsetAsync(gx.raw_data(), 0, size_t(gx.numel()) * dtype_size(gx.dtype()),
                                op.ctx.stream));
  const int64_t NC = gx.size(0) * gx.size(1), OHW = gy.size(2) * gy.size(3);
  if (NC * OHW == 0) return;
  dispatch_float("max_pool2d_backward", gy.dtype(), [&](auto tag) {
    using T = decltype(tag);
    maxpool_bwd_kernel<<<blocks_for(NC * OHW), kThreads, 0, op.ctx.stream>>>(
        gy.data<T>(), indices.data<int64_t>(), gx.data<T>(), NC, gx.size(2) * gx.size(3), OHW);
  });
  ST_CUDA_LAUNCHED(op.ctx);
}

// ---------------- channel softmax, cross-entropy, argmax ----------------
// One thread per pixel (n, p); the C values of a pixel are P apart (coalesced across threads).
namespace {
template <class T>
__global__ void softmax_kernel(const T* x, T* y, bool log, int64_t N, int64_t C, int64_t P) {
  ST_GRID_STRIDE(idx, N * P) {
    const int64_t n = idx / P, p = idx - n * P;
    const T* b = x + n * C * P + p;
    T* o = y + n * C * P + p;
    T mx = b[0];
    for (int64_t c = 1; c < C; ++c) mx = max(mx, b[c * P]);
    T sum = T(0);
    for (int64_t c = 0; c < C; ++c) {
      const T e = exp(b[c * P] - mx);
      sum += e;
      if (!log) o[c * P] = e;
    }
    if (log) {
      const T lse = mx + ::log(sum);
      for (int64_t c = 0; c < C; ++c) o[c * P] = b[c * P] - lse;
    } else {
      const T inv = T(1) / sum;
      for (int64_t c = 0; c < C; ++c) o[c * P] *= inv;
    }
  }
}
template <class T>
__global__ void softmax_bwd_kernel(const T* gy, const T* y, T* gx, bool log, int64_t N, int64_t C,
                                   int64_t P) {
  ST_GRID_STRIDE(idx, N * P) {
    const int64_t n = idx / P, p = idx - n * P, o = n * C * P + p;
    T dot = T(0);
    for (int64_t c = 0; c < C; ++c) dot += log ? gy[o + c * P] : gy[o + c * P] * y[o + c * P];
    for (int64_t c = 0; c < C; ++c) {
      const int64_t k = o + c * P;
      gx[k] = log ? gy[k] - exp(y[k]) * dot : y[k] * (gy[k] - dot);
    }
  }
}

template <class T>
__device__ inline T pixel_lse(const T* l, int64_t C, int64_t P) {
  T mx = l[0];
  for (int64_t c = 1; c < C; ++c) mx = max(mx, l[c * P]);
  T s = T(0);
  for (int64_t c = 0; c < C; ++c) s += exp(l[c * P] - mx);
  return mx + log(s);
}

// partial[block] = sum over the block's pixels of weight * (lse - logit[target]); the first
// pixel whose target is out of range goes to *bad (atomicMin of its index).
template <class T>
__global__ void ce_fwd_kernel(const T* logits, const int64_t* target, const T* weight, int64_t N,
                              int64_t C, int64_t P, double* partial,
                              unsigned long long* bad) {
  double acc = 0;
  ST_GRID_STRIDE(idx, N * P) {
    const int64_t n = idx / P, p = idx - n * P;
    const int64_t t = target[idx];
    if (t < 0 || t >= C) {
      atomicMin(bad, (unsigned long long)idx);
      continue;
    }
    const T* l = logits + n * C * P + p;
    acc += double(weight[idx]) * double(pixel_lse(l, C, P) - l[t * P]);
  }
  acc = block_sum(acc);
  if (threadIdx.x == 0) partial[blockIdx.x] = acc;
}
template <class T>
__global__ void ce_final_kernel(const double* partial, int blocks, double count, T* loss) {
  if (blockIdx.x == 0 && threadIdx.x == 0) {
    double s = 0;
    for (int b = 0; b < blocks; ++b) s += partial[b];
    loss[0] = T(s / count);
  }
}
template <class T>
__global__ void ce_bwd_kernel(const T* gloss, const T* logits, const int64_t* target,
                              const T* weight, T* glogits, int64_t N, int64_t C, int64_t P) {
  const T g0 = T(double(gloss[0]) / double(N * P));
  ST_GRID_STRIDE(idx, N * P) {
    const int64_t n = idx / P, p = idx - n * P;
    const T* l = logits + n * C * P + p;
    T* g = glogits + n * C * P + p;
    const T lse = pixel_lse(l, C, P), scale = g0 * weight[idx];
    for (int64_t c = 0; c < C; ++c) g[c * P] = scale * exp(l[c * P] - lse);
    const int64_t t = target[idx];
    if (t >= 0 && t < C) g[t * P] -= scale;
  }
}
template <class T>
__global__ void argmax_kernel(const T* x, int64_t* out, int64_t N, int64_t C, int64_t P) {
  ST_GRID_STRIDE(idx, N * P) {
    const int64_t n = idx / P, p = idx - n * P;
    const T* l = x + n * C * P + p;
    T best = l[0];
    int64_t arg = 0;
    for (int64_t c = 1; c < C; ++c)
      if (l[c * P] > best) {
        best = l[c * P];
        arg = c;
      }
    out[idx] = arg;
  }
}
}  // namespace

void CudaBackend::softmax_channels(const Tensor& x, bool log, Tensor& y) {
  const int64_t N = x.size(0), C = x.size(1), P = x.numel() / std::max<int64_t>(N * C, 1);
  if (N * C * P == 0) return;
  Op op(log ? "log_softmax_channels" : "softmax_channels", x.device().index);
  dispatch_float("softmax_channels", x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    softmax_kernel<<<blocks_for(N * P), kThreads, 0, op.ctx.stream>>>(x.data<T>(), y.data<T>(), log,
                                                                       N, C, P);
  });
  ST_CUDA_LAUNCHED(op.ctx);
}

void CudaBackend::softmax_channels_backward(const Tensor& gy, const Tensor& y, bool log,
                                            Tensor& gx) {
  const int64_t N = y.size(0), C = y.size(1), P = y.numel() / std::max<int64_t>(N * C, 1);
  if (N * C * P == 0) return;
  Op op("softmax_channels_backward", y.device().index);
  dispatch_float("softmax_channels_backward", y.dtype(), [&](auto tag) {
    using T = decltype(tag);
    softmax_bwd_kernel<<<blocks_for(N * P), kThreads, 0, op.ctx.stream>>>(
        gy.data<T>(), y.data<T>(), gx.data<T>(), log, N, C, P);
  });
  ST_CUDA_LAUNCHED(op.ctx);
}

namespace {
// After ce_fwd_kernel: when it found a bad target (*bad: the first such pixel) and the device's
// record holds none yet (pixel -1), records {pixel, its target value, C}: the first bad target
// since the host last checked. One thread.
__global__ void ce_record_bad_target_kernel(const unsigned long long* bad, const int64_t* target,
                                            int64_t C, long long* record) {
  const unsigned long long first = *bad;
  if (first != ~0ull && record[0] < 0) {
    record[0] = (long long)first;
    record[1] = (long long)target[first];
    record[2] = (long long)C;
  }
}
}  // namespace

void CudaBackend::weighted_cross_entropy_forward(const Tensor& logits, const Tensor& target,
                                                 const Tensor& weight, Tensor& loss) {
  const int64_t N = logits.size(0), C = logits.size(1), P = logits.size(2) * logits.size(3);
  Op op("weighted_cross_entropy_forward", logits.device().index);
  const int dev = logits.device().index;
  const int blocks = int(std::min<unsigned>(blocks_for(N * P), 1024u));
  Scratch partial(size_t(blocks) * sizeof(double), dev), bad(sizeof(unsigned long long), dev);
  ST_CUDA_CHECK(cudaMemsetAsync(bad.ptr, 0xFF, sizeof(unsigned long long), op.ctx.stream));
  dispatch_float("weighted_cross_entropy_forward", logits.dtype(), [&](auto tag) {
    using T = decltype(tag);
    ce_fwd_kernel<<<blocks, kThreads, 0, op.ctx.stream>>>(
        logits.data<T>(), target.data<int64_t>(), weight.data<T>(), N, C, P, partial.as<double>(),
        bad.as<unsigned long long>());
    ST_CUDA_LAUNCHED(op.ctx);
    ce_final_kernel<<<1, 32, 0, op.ctx.stream>>>(partial.as<double>(), blocks,
                                                 double(std::max<int64_t>(N * P, 1)),
                                                 loss.data<T>());
    ST_CUDA_LAUNCHED(op.ctx);
  });
  // Targets are validated as on the CPU, with the same message naming the first bad pixel, but
  // without holding the host here (a training step would wait for its queue on every loss): the
  // check is queued (the bad target into the device's record, the record into pinned host
  // memory) and read at the device's next synchronising point, a copy to the host or
  // synchronize() (verify_target_check, backend.cu). The loss meanwhile leaves the bad pixels
  // out. With ST_CUDA_SYNC=1 the error is reported here, by this call.
  TargetCheck& check = target_check_for(op.ctx);
  ce_record_bad_target_kernel<<<1, 1, 0, op.ctx.stream>>>(
      bad.as<unsigned long long>(), target.data<int64_t>(), C, check.device_record);
  ST_CUDA_LAUNCHED(op.ctx);
  ST_CUDA_CHECK(cudaMemcpyAsync(check.host_record, check.device_record, 3 * sizeof(long long),
                                cudaMemcpyDeviceToHost, op.ctx.stream));
  check.pending = true;
  if (debug_sync()) {
    ST_CUDA_CHECK(cudaStreamSynchronize(op.ctx.stream));
    verify_target_check(op.ctx);
  }
}

void CudaBackend::weighted_cross_entropy_backward(const Tensor& gloss, const Tensor& logits,
                                                  const Tensor& target, const Tensor& weight,
                                                  Tensor& glogits) {
  const int64_t N = logits.size(0), C = logits.size(1), P = logits.size(2) * logits.size(3);
  if (N * P == 0) return;
  Op op("weighted_cross_entropy_backward", logits.device().index);
  dispatch_float("weighted_cross_entropy_backward", logits.dtype(), [&](auto tag) {
    using T = decltype(tag);
    Tensor g = gloss.dtype() == logits.dtype() ? gloss.contiguous() : gloss.to(logits.dtype());
    ce_bwd_kernel<<<blocks_for(N * P), kThreads, 0, op.ctx.stream>>>(
        g.data<T>(), logits.data<T>(), target.data<int64_t>(), weight.data<T>(),
        glogits.data<T>(), N, C, P);
  });
  ST_CUDA_LAUNCHED(op.ctx);
}

void CudaBackend::argmax_channels(const Tensor& x, Tensor& out) {
  const int64_t N = x.size(0), C = x.size(1), P = x.size(2) * x.size(3);
  if (N * P == 0) return;
  Op op("argmax_channels", x.device().index);
  dispatch_float("argmax_channels", x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    argmax_kernel<<<blocks_for(N * P), kThreads, 0, op.ctx.stream>>>(x.data<T>(),
                                                                      out.data<int64_t>(), N, C, P);
  });
  ST_CUDA_LAUNCHED(op.ctx);
}

}  // namespace st::cuda
