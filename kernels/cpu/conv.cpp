// CPU convolution kernels: the Backend entry points over the convolution engine (conv2d.h),
// which does the work (f32 fast path, f64 reference); the transposed convolution's forward is
// the engine's backward-data.
#include "kernels/cpu/backend.h"
#include "kernels/cpu/conv2d.h"
#include "kernels/cpu/strided.h"

namespace st::cpu {

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

}  // namespace st::cpu
