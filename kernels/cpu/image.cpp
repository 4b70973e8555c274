// CPU kernels for NCHW image ops: batch norm, resampling, max-pool, channel softmax, the
// weighted cross-entropy of SPEC §3, argmax. Parallel over (n, c) planes or pixel blocks.
#include <cmath>
#include <limits>
#include <type_traits>

#include "kernels/common/resample.h"
#include "kernels/cpu/backend.h"
#include "kernels/cpu/strided.h"

namespace st::cpu {

// ---------------- batch norm ----------------
void CpuBackend::batch_norm_forward(const Tensor& x, const Tensor& gamma, const Tensor& beta,
                                    double eps, Tensor& y, Tensor& mean, Tensor& invstd) {
  dispatch_float("batch_norm_forward", x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    const int64_t N = x.size(0), C = x.size(1), P = x.size(2) * x.size(3);
    const T* px = x.data<T>();
    T* py = y.data<T>();
    T* pm = mean.data<T>();
    T* pi = invstd.data<T>();
    const T* pg = gamma.data<T>();
    const T* pb = beta.data<T>();
    const double count = double(N * P);
#pragma omp parallel for if (N * C * P > 32768)
    for (int64_t c = 0; c < C; ++c) {
      // Two passes in double: mean, then centred sum of squares (stable).
      double s = 0;
      for (int64_t n = 0; n < N; ++n) {
        const T* q = px + (n * C + c) * P;
        for (int64_t i = 0; i < P; ++i) s += double(q[i]);
      }
      double mu = s / count, ss = 0;
      for (int64_t n = 0; n < N; ++n) {
        const T* q = px + (n * C + c) * P;
        for (int64_t i = 0; i < P; ++i) {
          double d = double(q[i]) - mu;
          ss += d * d;
        }
      }
      double is = 1.0 / std::sqrt(ss / count + eps);
      pm[c] = T(mu);
      pi[c] = T(is);
      const T scale = T(double(pg[c]) * is), shift = T(double(pb[c]) - mu * double(pg[c]) * is);
      for (int64_t n = 0; n < N; ++n) {
        const T* q = px + (n * C + c) * P;
        T* o = py + (n * C + c) * P;
        for (int64_t i = 0; i < P; ++i) o[i] = q[i] * scale + shift;
      }
    }
  });
}

// Shared by both modes: sums of gy and gy*xhat per channel, then the input gradient.
// batch_stats: dx = gamma*invstd/M * (M*gy - sum(gy) - xhat*sum(gy*xhat)); frozen: gamma*invstd*gy.
template <class T>
static void bn_backward(bool batch_stats, const Tensor& gy, const Tensor& x, const Tensor& gamma,
                        const Tensor& mean, const Tensor& invstd, Tensor* gx, Tensor* ggamma,
                        Tensor* gbeta) {
  const int64_t N = x.size(0), C = x.size(1), P = x.size(2) * x.size(3);
  const T* px = x.data<T>();
  const T* pgy = gy.data<T>();
  const T* pg = gamma.data<T>();
  const T* pm = mean.data<T>();
  const T* pi = invstd.data<T>();
  T* pgx = gx ? gx->data<T>() : nullptr;
  T* pgg = ggamma ? ggamma->data<T>() : nullptr;
  T* pgb = gbeta ? gbeta->data<T>() : nullptr;
  const double M = double(N * P);
  const bool need_sums = batch_stats ? (gx || ggamma || gbeta) : (ggamma || gbeta);
#pragma omp parallel for if (N * C * P > 32768)
  for (int64_t c = 0; c < C; ++c) {
    const double mu = double(pm[c]), is = double(pi[c]);
    double sg = 0, sgx = 0;
    if (need_sums) {
      for (int64_t n = 0; n < N; ++n) {
        const T* q = px + (n * C + c) * P;
        const T* g = pgy + (n * C + c) * P;
        for (int64_t i = 0; i < P; ++i) {
          sg += double(g[i]);
          sgx += double(g[i]) * (double(q[i]) - mu);
        }
      }
      sgx *= is;  // sum(gy * xhat)
    }
    if (pgg) pgg[c] = T(sgx);
    if (pgb) pgb[c] = T(sg);
    if (!pgx) continue;
    const double k = double(pg[c]) * is;
    if (batch_stats) {
      const T a = T(k), b = T(-k * sg / M), cc = T(-k * sgx * is / M), m = T(mu);
      for (int64_t n = 0; n < N; ++n) {
        const T* q = px + (n * C + c) * P;
        const T* g = pgy + (n * C + c) * P;
        T* o = pgx + (n * C + c) * P;
        for (int64_t i = 0; i < P; ++i) o[i] = a * g[i] + b + cc * (q[i] - m);
      }
    } else {
      const T a = T(k);
      for (int64_t n = 0; n < N; ++n) {
        const T* g = pgy + (n * C + c) * P;
        T* o = pgx + (n * C + c) * P;
        for (int64_t i = 0; i < P; ++i) o[i] = a * g[i];
      }
    }
  }
}

void CpuBackend::batch_norm_backward(const Tensor& gy, const Tensor& x, const Tensor& gamma,
                                     const Tensor& mean, const Tensor& invstd, Tensor* gx,
                                     Tensor* ggamma, Tensor* gbeta) {
  dispatch_float("batch_norm_backward", x.dtype(), [&](auto tag) {
    bn_backward<decltype(tag)>(true, gy, x, gamma, mean, invstd, gx, ggamma, gbeta);
  });
}

void CpuBackend::batch_norm_frozen_forward(const Tensor& x, const Tensor& gamma,
                                           const Tensor& beta, const Tensor& mean,
                                           const Tensor& invstd, Tensor& y) {
  dispatch_float("batch_norm_frozen_forward", x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    const int64_t N = x.size(0), C = x.size(1), P = x.size(2) * x.size(3);
    const T* px = x.data<T>();
    T* py = y.data<T>();
    const T *pg = gamma.data<T>(), *pb = beta.data<T>(), *pm = mean.data<T>(),
            *pi = invstd.data<T>();
#pragma omp parallel for collapse(2) if (N * C * P > 32768)
    for (int64_t n = 0; n < N; ++n)
      for (int64_t c = 0; c < C; ++c) {
        const T scale = pg[c] * pi[c], shift = pb[c] - pm[c] * pg[c] * pi[c];
        const T* q = px + (n * C + c) * P;
        T* o = py + (n * C + c) * P;
        for (int64_t i = 0; i < P; ++i) o[i] = q[i] * scale + shift;
      }
  });
}

void CpuBackend::batch_norm_frozen_backward(const Tensor& gy, const Tensor& x,
                                            const Tensor& gamma, const Tensor& mean,
                                            const Tensor& invstd, Tensor* gx, Tensor* ggamma,
                                            Tensor* gbeta) {
  dispatch_float("batch_norm_frozen_backward", x.dtype(), [&](auto tag) {
    bn_backward<decltype(tag)>(false, gy, x, gamma, mean, invstd, gx, ggamma, gbeta);
  });
}

// ---------------- resampling ----------------
void CpuBackend::resize_bilinear_forward(const Tensor& x, Tensor& y) {
  dispatch_float("resize_bilinear_forward", x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    const int64_t NC = x.size(0) * x.size(1), H = x.size(2), W = x.size(3);
    const int64_t OH = y.size(2), OW = y.size(3);
    std::vector<BilinearTap> tx(static_cast<size_t>(OW)), ty(static_cast<size_t>(OH));
    constexpr bool single = std::is_same_v<T, float>;
    for (int64_t j = 0; j < OW; ++j) tx[size_t(j)] = bilinear_tap(j, W, OW, single);
    for (int64_t i = 0; i < OH; ++i) ty[size_t(i)] = bilinear_tap(i, H, OH, single);
    const T* px = x.data<T>();
    T* py = y.data<T>();
#pragma omp parallel for collapse(2) if (NC * OH * OW > 32768)
    for (int64_t p = 0; p < NC; ++p)
      for (int64_t i = 0; i < OH; ++i) {
        const BilinearTap& a = ty[size_t(i)];
        const T* r0 = px + (p * H + a.i0) * W;
        const T* r1 = px + (p * H + a.i1) * W;
        T* o = py + (p * OH + i) * OW;
        const T h0 = T(a.l0), h1 = T(a.l1);
        for (int64_t j = 0; j < OW; ++j) {
          const BilinearTap& b = tx[size_t(j)];
          const T w0 = T(b.l0), w1 = T(b.l1);
          o[j] = h0 * (w0 * r0[b.i0] + w1 * r0[b.i1]) + h1 * (w0 * r1[b.i0] + w1 * r1[b.i1]);
        }
      }
  });
}

void CpuBackend::resize_bilinear_backward(const Tensor& gy, Tensor& gx) {
  dispatch_float("resize_bilinear_backward", gy.dtype(), [&](auto tag) {
    using T = decltype(tag);
    const int64_t NC = gx.size(0) * gx.size(1), H = gx.size(2), W = gx.size(3);
    const int64_t OH = gy.size(2), OW = gy.size(3);
    std::vector<BilinearTap> tx(static_cast<size_t>(OW)), ty(static_cast<size_t>(OH));
    constexpr bool single = std::is_same_v<T, float>;
    for (int64_t j = 0; j < OW; ++j) tx[size_t(j)] = bilinear_tap(j, W, OW, single);
    for (int64_t i = 0; i < OH; ++i) ty[size_t(i)] = bilinear_tap(i, H, OH, single);
    const T* pg = gy.data<T>();
    T* px = gx.data<T>();
#pragma omp parallel for if (NC * OH * OW > 32768)
    for (int64_t p = 0; p < NC; ++p) {  // one plane per thread: scatter without races
      T* plane = px + p * H * W;
      for (int64_t i = 0; i < H * W; ++i) plane[i] = T(0);
      for (int64_t i = 0; i < OH; ++i) {
        const BilinearTap& a = ty[size_t(i)];
        T* r0 = plane + a.i0 * W;
        T* r1 = plane + a.i1 * W;
        const T* g = pg + (p * OH + i) * OW;
        const T h0 = T(a.l0), h1 = T(a.l1);
        for (int64_t j = 0; j < OW; ++j) {
          const BilinearTap& b = tx[size_t(j)];
          const T w0 = T(b.l0), w1 = T(b.l1);
          r0[b.i0] += h0 * w0 * g[j];
          r0[b.i1] += h0 * w1 * g[j];
          r1[b.i0] += h1 * w0 * g[j];
          r1[b.i1] += h1 * w1 * g[j];
        }
      }
    }
  });
}

void CpuBackend::resize_nearest_forward(const Tensor& x, Tensor& y) {
  dispatch_float("resize_nearest_forward", x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    const int64_t NC = x.size(0) * x.size(1), H = x.size(2), W = x.size(3);
    const int64_t OH = y.size(2), OW = y.size(3);
    std::vector<int64_t> sx(static_cast<size_t>(OW));
    for (int64_t j = 0; j < OW; ++j) sx[size_t(j)] = nearest_src(j, W, OW);
    const T* px = x.data<T>();
    T* py = y.data<T>();
#pragma omp parallel for collapse(2) if (NC * OH * OW > 32768)
    for (int64_t p = 0; p < NC; ++p)
      for (int64_t i = 0; i < OH; ++i) {
        const T* r = px + (p * H + nearest_src(i, H, OH)) * W;
        T* o = py + (p * OH + i) * OW;
        for (int64_t j = 0; j < OW; ++j) o[j] = r[sx[size_t(j)]];
      }
  });
}

void CpuBackend::resize_nearest_backward(const Tensor& gy, Tensor& gx) {
  dispatch_float("resize_nearest_backward", gy.dtype(), [&](auto tag) {
    using T = decltype(tag);
    const int64_t NC = gx.size(0) * gx.size(1), H = gx.size(2), W = gx.size(3);
    const int64_t OH = gy.size(2), OW = gy.size(3);
    std::vector<int64_t> sx(static_cast<size_t>(OW));
    for (int64_t j = 0; j < OW; ++j) sx[size_t(j)] = nearest_src(j, W, OW);
    const T* pg = gy.data<T>();
    T* px = gx.data<T>();
#pragma omp parallel for if (NC * OH * OW > 32768)
    for (int64_t p = 0; p < NC; ++p) {
      T* plane = px + p * H * W;
      for (int64_t i = 0; i < H * W; ++i) plane[i] = T(0);
      for (int64_t i = 0; i < OH; ++i) {
        T* r = plane + nearest_src(i, H, OH) * W;
        const T* g = pg + (p * OH + i) * OW;
        for (int64_t j = 0; j < OW; ++j) r[sx[size_t(j)]] += g[j];
      }
    }
  });
}

// ---------------- max pool ----------------
void CpuBackend::max_pool2d_forward(const Tensor& x, const Pool2dParams& p, Tensor& y,
                                    Tensor& indices) {
  dispatch_float("max_pool2d_forward", x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    const int64_t NC = x.size(0) * x.size(1), H = x.size(2), W = x.size(3);
    const int64_t OH = y.size(2), OW = y.size(3);
    const T* px = x.data<T>();
    T* py = y.data<T>();
    int64_t* pi = indices.data<int64_t>();
#pragma omp parallel for if (NC * OH * OW > 16384)
    for (int64_t q = 0; q < NC; ++q) {
      const T* plane = px + q * H * W;
      for (int64_t i = 0; i < OH; ++i)
        for (int64_t j = 0; j < OW; ++j) {
          T best = -std::numeric_limits<T>::infinity();
          int64_t arg = -1;
          for (int64_t r = 0; r < p.kernel_h; ++r) {
            int64_t h = i * p.stride_h - p.pad_h + r;
            if (h < 0 || h >= H) continue;
            for (int64_t s = 0; s < p.kernel_w; ++s) {
              int64_t w = j * p.stride_w - p.pad_w + s;
              if (w < 0 || w >= W) continue;
              T v = plane[h * W + w];
              if (arg < 0 || v > best || std::isnan(v)) {
                best = v;
                arg = h * W + w;
              }
            }
          }
          py[(q * OH + i) * OW + j] = best;
          pi[(q * OH + i) * OW + j] = arg;
        }
    }
  });
}

void CpuBackend::max_pool2d_backward(const Tensor& gy, const Tensor& indices, Tensor& gx) {
  dispatch_float("max_pool2d_backward", gy.dtype(), [&](auto tag) {
    using T = decltype(tag);
    const int64_t NC = gx.size(0) * gx.size(1), HW = gx.size(2) * gx.size(3);
    const int64_t OHW = gy.size(2) * gy.size(3);
    const T* pg = gy.data<T>();
    const int64_t* pi = indices.data<int64_t>();
    T* px = gx.data<T>();
#pragma omp parallel for if (NC * HW > 32768)
    for (int64_t q = 0; q < NC; ++q) {
      T* plane = px + q * HW;
      for (int64_t i = 0; i < HW; ++i) plane[i] = T(0);
      for (int64_t i = 0; i < OHW; ++i) {
        int64_t a = pi[q * OHW + i];
        if (a >= 0) plane[a] += pg[q * OHW + i];
      }
    }
  });
}

// ---------------- channel softmax ----------------
// Layout (N, C, P): for each n, the C values of a pixel are P apart. Loops run over pixels in
// the innermost position so they vectorise.
void CpuBackend::softmax_channels(const Tensor& x, bool log, Tensor& y) {
  dispatch_float("softmax_channels", x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    const int64_t N = x.size(0), C = x.size(1), P = x.numel() / std::max<int64_t>(N * C, 1);
    const T* px = x.data<T>();
    T* py = y.data<T>();
    constexpr int64_t B = 256;  // pixel block
    const int64_t blocks = (P + B - 1) / B;
#pragma omp parallel for collapse(2) if (N * C * P > 32768)
    for (int64_t n = 0; n < N; ++n)
      for (int64_t blk = 0; blk < blocks; ++blk) {
        const int64_t p0 = blk * B, len = std::min(B, P - p0);
        T mx[B], sum[B];
        const T* base = px + n * C * P + p0;
        T* out = py + n * C * P + p0;
        for (int64_t i = 0; i < len; ++i) mx[i] = base[i];
        for (int64_t c = 1; c < C; ++c)
          for (int64_t i = 0; i < len; ++i) mx[i] = std::max(mx[i], base[c * P + i]);
        for (int64_t i = 0; i < len; ++i) sum[i] = T(0);
        for (int64_t c = 0; c < C; ++c)
          for (int64_t i = 0; i < len; ++i) {
            T e = std::exp(base[c * P + i] - mx[i]);
            sum[i] += e;
            if (!log) out[c * P + i] = e;
          }
        if (log) {
          for (int64_t i = 0; i < len; ++i) sum[i] = mx[i] + std::log(sum[i]);
          for (int64_t c = 0; c < C; ++c)
            for (int64_t i = 0; i < len; ++i) out[c * P + i] = base[c * P + i] - sum[i];
        } else {
          for (int64_t i = 0; i < len; ++i) sum[i] = T(1) / sum[i];
          for (int64_t c = 0; c < C; ++c)
            for (int64_t i = 0; i < len; ++i) out[c * P + i] *= sum[i];
        }
      }
  });
}

// softmax: gx = y * (gy - sum_c gy*y); log_softmax: gx = gy - exp(y) * sum_c gy.
void CpuBackend::softmax_channels_backward(const Tensor& gy, const Tensor& y, bool log,
                                           Tensor& gx) {
  dispatch_float("softmax_channels_backward", gy.dtype(), [&](auto tag) {
    using T = decltype(tag);
    const int64_t N = y.size(0), C = y.size(1), P = y.numel() / std::max<int64_t>(N * C, 1);
    const T* pg = gy.data<T>();
    const T* py = y.data<T>();
    T* px = gx.data<T>();
    constexpr int64_t B = 256;
    const int64_t blocks = (P + B - 1) / B;
#pragma omp parallel for collapse(2) if (N * C * P > 32768)
    for (int64_t n = 0; n < N; ++n)
      for (int64_t blk = 0; blk < blocks; ++blk) {
        const int64_t p0 = blk * B, len = std::min(B, P - p0), o = n * C * P + p0;
        T dot[B];
        for (int64_t i = 0; i < len; ++i) dot[i] = T(0);
        for (int64_t c = 0; c < C; ++c)
          for (int64_t i = 0; i < len; ++i)
            dot[i] += log ? pg[o + c * P + i] : pg[o + c * P + i] * py[o + c * P + i];
        for (int64_t c = 0; c < C; ++c)
          for (int64_t i = 0; i < len; ++i) {
            const int64_t k = o + c * P + i;
            px[k] = log ? pg[k] - std::exp(py[k]) * dot[i] : py[k] * (pg[k] - dot[i]);
          }
      }
  });
}

// ---------------- weighted cross-entropy (SPEC §3) ----------------
static void check_targets(const Tensor& target, int64_t C) {
  const int64_t* t = target.data<int64_t>();
  const int64_t n = target.numel();
  for (int64_t i = 0; i < n; ++i)
    ST_CHECK(t[i] >= 0 && t[i] < C, "weighted_cross_entropy: target value ", t[i], " at pixel ", i,
             " is outside [0, ", C, ")");
}

// Per block of pixels (vectorisable loops over pixels, the C logits of a pixel P apart):
// lse[p] = max + log(sum_c exp(l[c,p] - max)). Shared by forward and backward.
template <class T>
static void block_log_sum_exp(const T* l, int64_t C, int64_t P, int64_t len, T* mx, T* lse) {
  for (int64_t i = 0; i < len; ++i) mx[i] = l[i];
  for (int64_t c = 1; c < C; ++c)
    for (int64_t i = 0; i < len; ++i) mx[i] = std::max(mx[i], l[c * P + i]);
  for (int64_t i = 0; i < len; ++i) lse[i] = T(0);
  for (int64_t c = 0; c < C; ++c)
    for (int64_t i = 0; i < len; ++i) lse[i] += std::exp(l[c * P + i] - mx[i]);
  for (int64_t i = 0; i < len; ++i) lse[i] = mx[i] + std::log(lse[i]);
}

void CpuBackend::weighted_cross_entropy_forward(const Tensor& logits, const Tensor& target,
                                                const Tensor& weight, Tensor& loss) {
  const int64_t C = logits.size(1);
  check_targets(target, C);
  dispatch_float("weighted_cross_entropy_forward", logits.dtype(), [&](auto tag) {
    using T = decltype(tag);
    const int64_t N = logits.size(0), P = logits.size(2) * logits.size(3);
    const T* pl = logits.data<T>();
    const T* pw = weight.data<T>();
    const int64_t* pt = target.data<int64_t>();
    constexpr int64_t B = 256;
    const int64_t blocks = (P + B - 1) / B;
    double total = 0;  // per-block sums are added in double
#pragma omp parallel for collapse(2) reduction(+ : total) schedule(static) if (N * C * P > 32768)
    for (int64_t n = 0; n < N; ++n)
      for (int64_t blk = 0; blk < blocks; ++blk) {
        const int64_t p0 = blk * B, len = std::min(B, P - p0);
        const T* l = pl + n * C * P + p0;
        T mx[B], lse[B];
        block_log_sum_exp(l, C, P, len, mx, lse);
        double s = 0;
        for (int64_t i = 0; i < len; ++i) {
          const int64_t t = pt[n * P + p0 + i];
          s += double(pw[n * P + p0 + i]) * double(lse[i] - l[t * P + i]);
        }
        total += s;
      }
    loss.data<T>()[0] = T(total / double(N * P));
  });
}

// d loss / d logits[c, p] = gloss * weight[p] / (N*P) * (softmax[c, p] - [c == target[p]]).
void CpuBackend::weighted_cross_entropy_backward(const Tensor& gloss, const Tensor& logits,
                                                 const Tensor& target, const Tensor& weight,
                                                 Tensor& glogits) {
  dispatch_float("weighted_cross_entropy_backward", logits.dtype(), [&](auto tag) {
    using T = decltype(tag);
    const int64_t N = logits.size(0), C = logits.size(1), P = logits.size(2) * logits.size(3);
    const T g0 = T(gloss.to_vector<double>()[0] / double(N * P));
    const T* pl = logits.data<T>();
    const T* pw = weight.data<T>();
    const int64_t* pt = target.data<int64_t>();
    T* pg = glogits.data<T>();
    constexpr int64_t B = 256;
    const int64_t blocks = (P + B - 1) / B;
#pragma omp parallel for collapse(2) schedule(static) if (N * C * P > 32768)
    for (int64_t n = 0; n < N; ++n)
      for (int64_t blk = 0; blk < blocks; ++blk) {
        const int64_t p0 = blk * B, len = std::min(B, P - p0);
        const T* l = pl + n * C * P + p0;
        T* g = pg + n * C * P + p0;
        const T* w = pw + n * P + p0;
        T mx[B], lse[B];
        block_log_sum_exp(l, C, P, len, mx, lse);
        for (int64_t i = 0; i < len; ++i) mx[i] = g0 * w[i];  // reuse as the pixel's scale
        for (int64_t c = 0; c < C; ++c)
          for (int64_t i = 0; i < len; ++i) g[c * P + i] = mx[i] * std::exp(l[c * P + i] - lse[i]);
        for (int64_t i = 0; i < len; ++i) g[pt[n * P + p0 + i] * P + i] -= mx[i];
      }
  });
}

void CpuBackend::argmax_channels(const Tensor& x, Tensor& out) {
  dispatch_float("argmax_channels", x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    const int64_t N = x.size(0), C = x.size(1), P = x.size(2) * x.size(3);
    const T* px = x.data<T>();
    int64_t* po = out.data<int64_t>();
#pragma omp parallel for collapse(2) if (N * C * P > 32768)
    for (int64_t n = 0; n < N; ++n)
      for (int64_t p = 0; p < P; ++p) {
        const T* l = px + n * C * P + p;
        T best = l[0];
        int64_t arg = 0;
        for (int64_t c = 1; c < C; ++c)
          if (l[c * P] > best) {
            best = l[c * P];
            arg = c;
          }
        po[n * P + p] = arg;
      }
  });
}

}  // namespace st::cpu
