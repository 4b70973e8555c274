// CPU convolution kernels: conv2d forward, backward-data, backward-weight and bias gradient.
//
// Layout is NCHW for activations and KCRS (out-channels, in-channels/groups, kh, kw) for weights,
// both densely packed (contiguous). The float path is the fast one (blocked, vectorised, both
// cores); the double path is a plain reference used by finite-difference tests.
#pragma once
#include <cstdint>

namespace st::cpu {

struct ConvGeom {
  int64_t N = 1;            // batch
  int64_t C = 1;            // input channels (all groups)
  int64_t H = 1, W = 1;     // input spatial size
  int64_t K = 1;            // output channels (all groups)
  int64_t R = 1, S = 1;     // kernel height, width
  int64_t OH = 1, OW = 1;   // output spatial size
  int64_t stride_h = 1, stride_w = 1;
  int64_t pad_h = 0, pad_w = 0;
  int64_t groups = 1;       // C and K are multiples of groups
};

// y (N,K,OH,OW) = conv(x (N,C,H,W), w (K,C/groups,R,S)) + bias (K) ; bias may be null.
template <class T>
void conv2d_forward(const ConvGeom& g, const T* x, const T* w, const T* bias, T* y);

// gx (N,C,H,W) = d loss / d x, given gy (N,K,OH,OW). Overwrites gx.
template <class T>
void conv2d_backward_data(const ConvGeom& g, const T* gy, const T* w, T* gx);

// gw (K,C/groups,R,S) = d loss / d w. Overwrites gw.
template <class T>
void conv2d_backward_weight(const ConvGeom& g, const T* gy, const T* x, T* gw);

// gb (K) = sum of gy over N, OH, OW. Overwrites gb.
template <class T>
void conv2d_backward_bias(const ConvGeom& g, const T* gy, T* gb);

// The float path's pixel-broadcast 32x3 engine (used where the GEMM's output rows — output
// channels forward, input channels for backward data — pad to 32 with little waste) is on by
// default; off, those shapes run the packed 4x24 engine. For A/B benchmarks and tests; not meant
// to be flipped while a convolution runs on another thread.
void conv2d_set_broadcast_engine(bool on);

// Test hook: the next n scratch-buffer requests made inside the float path's OpenMP regions throw
// std::bad_alloc, as a failed allocation would there. The error must reach the caller (the
// regions catch it and rethrow it after they end) instead of terminating the process. 0 (the
// default) turns it off.
void conv2d_fail_scratch_for_testing(int n);

}  // namespace st::cpu
