// CPU backend: memory, layout, element-wise, convolution wrappers, dense algebra, Adam.
// Image ops (batch norm, resampling, pooling, softmax, loss) are in image.cpp.
#include "kernels/cpu/backend.h"

#include <omp.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <type_traits>
#include <vector>

#include "kernels/cpu/conv2d.h"
#include "kernels/cpu/strided.h"

namespace st::cpu {

// ---------------- memory ----------------
// Large blocks are cached by exact (rounded) size: a video pipeline allocates the same
// activation sizes every frame, and handing them back to the OS (glibc unmaps big blocks on
// free) makes every frame page-fault its whole working set again. The cache is bounded
// (ST_CPU_CACHE_MB, default 256) so an edge device's memory stays predictable.
namespace {
constexpr size_t kCacheMin = 256 * 1024;  // smaller blocks go straight to malloc
size_t rounded(size_t nbytes) {
  size_t n = std::max<size_t>(nbytes, 1);
  return n >= kCacheMin ? (n + 65535) / 65536 * 65536 : (n + 63) / 64 * 64;
}
size_t cache_limit() {
  static const size_t limit = [] {
    const char* e = std::getenv("ST_CPU_CACHE_MB");
    return size_t(e ? std::strtoull(e, nullptr, 10) : 256) << 20;
  }();
  return limit;
}
}  // namespace

void* CpuBackend::allocate(size_t nbytes, int) {
  size_t n = rounded(nbytes);
  if (n >= kCacheMin) {
    std::lock_guard<std::mutex> lock(cache_mutex_);
    auto it = cache_.find(n);
    if (it != cache_.end()) {
      void* p = it->second;
      cache_.erase(it);
      cached_bytes_ -= n;
      return p;
    }
  }
  void* p = std::aligned_alloc(64, n);
  ST_CHECK(p != nullptr, "cpu: out of memory allocating ", nbytes, " bytes");
  return p;
}

void CpuBackend::deallocate(void* p, size_t nbytes, int) noexcept {
  size_t n = rounded(nbytes);
  if (n >= kCacheMin) {
    std::lock_guard<std::mutex> lock(cache_mutex_);
    if (cached_bytes_ + n <= cache_limit()) {
      cache_.emplace(n, p);
      cached_bytes_ += n;
      return;
    }
  }
  std::free(p);
}

void CpuBackend::memcpy(void* dst, Device, const void* src, Device, size_t n) {
  if (n) std::memcpy(dst, src, n);
}

// ---------------- layout ----------------
void CpuBackend::fill(Tensor& dst, double value) {
  dispatch_all(dst.dtype(), [&](auto tag) {
    using T = decltype(tag);
    T v = store_from_double<T>(value);
    T* p = static_cast<T*>(dst.raw_data());
    int64_t n = dst.numel();
    for (int64_t i = 0; i < n; ++i) p[i] = v;
  });
}

template <class S, class D>
static void copy_typed(const Tensor& src, Tensor& dst) {
  const S* s = static_cast<const S*>(src.raw_data());
  D* d = static_cast<D*>(dst.raw_data());
  if constexpr (std::is_same_v<S, D>) {
    if (src.is_contiguous() && dst.is_contiguous()) {
      std::memcpy(d, s, size_t(src.numel()) * sizeof(S));
      return;
    }
  }
  for_each_row<2>(dst.shape(), {&src.strides(), &dst.strides()},
                  [&](const std::array<int64_t, 2>& off, int64_t n,
                      const std::array<int64_t, 2>& inc) {
                    const S* a = s + off[0];
                    D* b = d + off[1];
                    for (int64_t i = 0; i < n; ++i) {
                      if constexpr (std::is_same_v<S, D>)
                        b[i * inc[1]] = a[i * inc[0]];
                      else
                        b[i * inc[1]] = store_from_double<D>(load_as_double(a[i * inc[0]]));
                    }
                  });
}

void CpuBackend::copy(const Tensor& src, Tensor& dst) {
  ST_CHECK(src.shape() == dst.shape(), "copy: shape mismatch ", src.shape(), " vs ", dst.shape());
  dispatch_all(src.dtype(), [&](auto s) {
    dispatch_all(dst.dtype(), [&](auto d) { copy_typed<decltype(s), decltype(d)>(src, dst); });
  });
}

// ---------------- element-wise ----------------
void CpuBackend::unary(UnaryOp op, const Tensor& x, Tensor& y, double alpha) {
  dispatch_float("unary", x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    const T* a = x.data<T>();
    T* b = y.data<T>();
    int64_t n = x.numel();
    T al = T(alpha);
    switch (op) {
      case UnaryOp::Relu:
#pragma omp parallel for if (n > 65536)
        for (int64_t i = 0; i < n; ++i) b[i] = a[i] > T(0) ? a[i] : T(0);
        break;
      case UnaryOp::Sigmoid:
#pragma omp parallel for if (n > 16384)
        for (int64_t i = 0; i < n; ++i) b[i] = T(1) / (T(1) + std::exp(-a[i]));
        break;
      case UnaryOp::Scale:
#pragma omp parallel for if (n > 65536)
        for (int64_t i = 0; i < n; ++i) b[i] = a[i] * al;
        break;
      case UnaryOp::AddScalar:
#pragma omp parallel for if (n > 65536)
        for (int64_t i = 0; i < n; ++i) b[i] = a[i] + al;
        break;
    }
  });
}

void CpuBackend::unary_backward(UnaryOp op, const Tensor& gy, const Tensor& saved, Tensor& gx,
                                double alpha) {
  dispatch_float("unary_backward", gy.dtype(), [&](auto tag) {
    using T = decltype(tag);
    const T* g = gy.data<T>();
    T* o = gx.data<T>();
    int64_t n = gy.numel();
    switch (op) {
      case UnaryOp::Relu: {
        const T* y = saved.data<T>();
#pragma omp parallel for if (n > 65536)
        for (int64_t i = 0; i < n; ++i) o[i] = y[i] > T(0) ? g[i] : T(0);
        break;
      }
      case UnaryOp::Sigmoid: {
        const T* y = saved.data<T>();
#pragma omp parallel for if (n > 65536)
        for (int64_t i = 0; i < n; ++i) o[i] = g[i] * y[i] * (T(1) - y[i]);
        break;
      }
      case UnaryOp::Scale: {
        T al = T(alpha);
        for (int64_t i = 0; i < n; ++i) o[i] = g[i] * al;
        break;
      }
      case UnaryOp::AddScalar:
        for (int64_t i = 0; i < n; ++i) o[i] = g[i];
        break;
    }
  });
}

void CpuBackend::binary(BinaryOp op, const Tensor& a, const Tensor& b, Tensor& out) {
  dispatch_float("binary", out.dtype(), [&](auto tag) {
    using T = decltype(tag);
    const T* pa = static_cast<const T*>(a.raw_data());
    const T* pb = static_cast<const T*>(b.raw_data());
    T* po = out.data<T>();
    if (a.is_contiguous() && b.is_contiguous()) {
      int64_t n = out.numel();
      if (op == BinaryOp::Add) {
#pragma omp parallel for if (n > 65536)
        for (int64_t i = 0; i < n; ++i) po[i] = pa[i] + pb[i];
      } else {
#pragma omp parallel for if (n > 65536)
        for (int64_t i = 0; i < n; ++i) po[i] = pa[i] * pb[i];
      }
      return;
    }
    for_each_row<3>(out.shape(), {&a.strides(), &b.strides(), &out.strides()},
                    [&](const std::array<int64_t, 3>& off, int64_t n,
                        const std::array<int64_t, 3>& inc) {
                      const T* x = pa + off[0];
                      const T* y = pb + off[1];
                      T* z = po + off[2];
                      if (op == BinaryOp::Add)
                        for (int64_t i = 0; i < n; ++i) z[i * inc[2]] = x[i * inc[0]] + y[i * inc[1]];
                      else
                        for (int64_t i = 0; i < n; ++i) z[i * inc[2]] = x[i * inc[0]] * y[i * inc[1]];
                    });
  });
}

void CpuBackend::sum_to(const Tensor& x, Tensor& out) {
  ST_CHECK(x.dim() == out.dim(), "sum_to: rank mismatch ", x.shape(), " -> ", out.shape());
  dispatch_float("sum_to", x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    // Accumulate in double through a view of the accumulator with stride 0 on reduced dims.
    std::vector<double> acc(size_t(out.numel()), 0.0);
    Shape ost = contiguous_strides(out.shape());
    for (size_t d = 0; d < ost.size(); ++d)
      if (out.shape()[d] == 1 && x.shape()[d] != 1) ost[d] = 0;
    const T* px = static_cast<const T*>(x.raw_data());
    for_each_row<2>(x.shape(), {&x.strides(), &ost},
                    [&](const std::array<int64_t, 2>& off, int64_t n,
                        const std::array<int64_t, 2>& inc) {
                      for (int64_t i = 0; i < n; ++i) acc[size_t(off[1] + i * inc[1])] += double(px[off[0] + i * inc[0]]);
                    });
    T* po = out.data<T>();
    for (size_t i = 0; i < acc.size(); ++i) po[i] = T(acc[i]);
  });
}

void CpuBackend::sum_all(const Tensor& x, Tensor& out) {
  dispatch_float("sum_all", x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    double s = 0;
    const T* px = static_cast<const T*>(x.raw_data());
    if (x.is_contiguous()) {
      int64_t n = x.numel();
#pragma omp parallel for reduction(+ : s) if (n > 65536)
      for (int64_t i = 0; i < n; ++i) s += double(px[i]);
    } else {
      for_each_row<1>(x.shape(), {&x.strides()},
                      [&](const std::array<int64_t, 1>& off, int64_t n,
                          const std::array<int64_t, 1>& inc) {
                        for (int64_t i = 0; i < n; ++i) s += double(px[off[0] + i * inc[0]]);
                      });
    }
    out.data<T>()[0] = T(s);
  });
}

// ---------------- convolution ----------------
static ConvGeom geom_of(const Tensor& x, const Tensor& w, const Tensor& y, const Conv2dParams& p) {
  ConvGeom g;
  g.N = x.size(0);
  g.C = x.size(1);
  g.H = x.size(2);
  g.W = x.size(3);
  g.K = y.size(1);
  g.R = w.size(2);
  g.S = w.size(3);
  g.OH = y.size(2);
  g.OW = y.size(3);
  g.stride_h = p.stride_h;
  g.stride_w = p.stride_w;
  g.pad_h = p.pad_h;
  g.pad_w = p.pad_w;
  g.groups = p.groups;
  return g;
}

void CpuBackend::conv2d_forward(const Tensor& x, const Tensor& w, const Tensor* bias,
                                const Conv2dParams& p, Tensor& y) {
  dispatch_float("conv2d_forward", x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    st::cpu::conv2d_forward<T>(geom_of(x, w, y, p), x.data<T>(), w.data<T>(),
                      bias ? bias->data<T>() : nullptr, y.data<T>());
  });
}

void CpuBackend::conv2d_backward_data(const Tensor& gy, const Tensor& w, const Conv2dParams& p,
                                      Tensor& gx) {
  dispatch_float("conv2d_backward_data", gy.dtype(), [&](auto tag) {
    using T = decltype(tag);
    st::cpu::conv2d_backward_data<T>(geom_of(gx, w, gy, p), gy.data<T>(), w.data<T>(),
                                     gx.data<T>());
  });
}

void CpuBackend::conv2d_backward_weight(const Tensor& gy, const Tensor& x, const Conv2dParams& p,
                                        Tensor& gw) {
  dispatch_float("conv2d_backward_weight", gy.dtype(), [&](auto tag) {
    using T = decltype(tag);
    st::cpu::conv2d_backward_weight<T>(geom_of(x, gw, gy, p), gy.data<T>(), x.data<T>(),
                                       gw.data<T>());
  });
}

void CpuBackend::conv2d_backward_bias(const Tensor& gy, Tensor& gb) {
  dispatch_float("conv2d_backward_bias", gy.dtype(), [&](auto tag) {
    using T = decltype(tag);
    ConvGeom g;
    g.N = gy.size(0);
    g.K = gy.size(1);
    g.OH = gy.size(2);
    g.OW = gy.size(3);
    st::cpu::conv2d_backward_bias<T>(g, gy.data<T>(), gb.data<T>());
  });
}

// A transposed convolution's forward is the input gradient of the convolution that maps its
// output back to its input: conv geometry with input = y (C_out channels) and output = x.
void CpuBackend::conv_transpose2d_forward(const Tensor& x, const Tensor& w, const Tensor* bias,
                                          const Conv2dParams& p, Tensor& y) {
  dispatch_float("conv_transpose2d_forward", x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    ConvGeom g = geom_of(y, w, x, p);  // conv input = y, conv output = x, K = C_in of x
    st::cpu::conv2d_backward_data<T>(g, x.data<T>(), w.data<T>(), y.data<T>());
    if (bias) {
      const T* b = bias->data<T>();
      T* py = y.data<T>();
      int64_t plane = y.size(2) * y.size(3), C = y.size(1);
      for (int64_t n = 0; n < y.size(0); ++n)
        for (int64_t c = 0; c < C; ++c) {
          T* q = py + (n * C + c) * plane;
          for (int64_t i = 0; i < plane; ++i) q[i] += b[c];
        }
    }
  });
}

// ---------------- dense ----------------
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

// ---------------- optimizer ----------------
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

// ---------------- registration ----------------
Backend& cpu_backend() {
  // Never destroyed: tensors in other static objects may be freed after main returns.
  static CpuBackend* cpu = new CpuBackend;
  return *cpu;
}

}  // namespace st::cpu
