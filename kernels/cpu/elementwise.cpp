// CPU element-wise kernels and sums: fill, copy (any layout, dtype conversion), unary and binary
// ops (broadcasting through stride-0 views), sum_to and sum_all (accumulated in double).
#include <cmath>
#include <cstring>
#include <type_traits>
#include <vector>

#include "kernels/cpu/backend.h"
#include "kernels/cpu/strided.h"

namespace st::cpu {

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

}  // namespace st::cpu
