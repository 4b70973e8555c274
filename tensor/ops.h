// The differentiable operations: validate arguments (shape, dtype, device), allocate the
// output, call the backend kernel and, when an input requires a gradient, record a node whose
// backward computes only the gradients that are needed.
//
// Layout: images are NCHW. Floating ops run in f32 or f64 (f64 exists for finite-difference
// checks on the CPU). Non-contiguous inputs are accepted everywhere; kernels that need dense
// input get `contiguous()` copies.
#pragma once
#include <vector>

#include "tensor/backend.h"
#include "tensor/tensor.h"

namespace st {

// ---- element-wise ----
Tensor relu(const Tensor& x);
Tensor sigmoid(const Tensor& x);
// Broadcasting follows NumPy/PyTorch: shapes are aligned at the trailing dim; a dim of size 1
// (or a missing leading dim) stretches to the other's size.
Tensor add(const Tensor& a, const Tensor& b);
Tensor mul(const Tensor& a, const Tensor& b);
Tensor mul_scalar(const Tensor& x, double alpha);
Tensor add_scalar(const Tensor& x, double alpha);
inline Tensor operator+(const Tensor& a, const Tensor& b) { return add(a, b); }
inline Tensor operator*(const Tensor& a, const Tensor& b) { return mul(a, b); }
inline Tensor operator*(const Tensor& a, double s) { return mul_scalar(a, s); }
inline Tensor operator+(const Tensor& a, double s) { return add_scalar(a, s); }
inline Tensor operator-(const Tensor& a, const Tensor& b) { return add(a, mul_scalar(b, -1.0)); }
Shape broadcast_shapes(const Shape& a, const Shape& b);

// ---- reductions ----
Tensor sum(const Tensor& x);   // all elements -> shape {}
Tensor mean(const Tensor& x);  // all elements -> shape {}

// ---- convolution (x: N,C,H,W; w: K,C/groups,kh,kw; bias: K or undefined) ----
Tensor conv2d(const Tensor& x, const Tensor& w, const Tensor& bias, const Conv2dParams& p = {});
// Transposed convolution, forward only (no graph is recorded; inputs requiring grad throw).
// w: (C_in, C_out/groups, kh, kw).
Tensor conv_transpose2d(const Tensor& x, const Tensor& w, const Tensor& bias,
                        const Conv2dParams& p = {});

// ---- normalisation (per channel of NCHW) ----
// Batch-statistics batch norm (PyTorch training mode, biased variance), no running stats.
Tensor batch_norm(const Tensor& x, const Tensor& gamma, const Tensor& beta, double eps = 1e-5);
// Frozen batch norm with given statistics (PyTorch eval mode).
Tensor batch_norm_frozen(const Tensor& x, const Tensor& gamma, const Tensor& beta,
                         const Tensor& mean, const Tensor& var, double eps = 1e-5);

// ---- shape ----
Tensor cat(const std::vector<Tensor>& xs, int64_t dim = 1);
// x[:, :, ::step, ::step] (a differentiable strided view).
Tensor subsample(const Tensor& x, int64_t step);

// ---- resampling (NCHW) ----
// Bilinear, align_corners=False, PyTorch semantics (negative source coordinates clamp to 0).
Tensor resize_bilinear(const Tensor& x, int64_t out_h, int64_t out_w);
// PyTorch's mode="nearest": src = floor(dst * in / out).
Tensor resize_nearest(const Tensor& x, int64_t out_h, int64_t out_w);
Tensor max_pool2d(const Tensor& x, const Pool2dParams& p);

// ---- channel-wise softmax family, loss, argmax ----
Tensor softmax_channels(const Tensor& x);
Tensor log_softmax_channels(const Tensor& x);
// SPEC §3: -mean over all N*H*W pixels of weight[p] * log_softmax(logits)[target[p], p].
// target: integer (u8/i32/i64) N,H,W with values in [0, C); weight: N,H,W floating.
Tensor weighted_cross_entropy(const Tensor& logits, const Tensor& target, const Tensor& weight);
Tensor argmax_channels(const Tensor& x);  // -> i64 (N,H,W); first maximum wins

// ---- dense ----
Tensor matmul(const Tensor& a, const Tensor& b);  // (M,K) @ (K,N)
// x (N,in) @ weight(out,in)^T + bias(out).
Tensor linear(const Tensor& x, const Tensor& weight, const Tensor& bias);

}  // namespace st
