// The backend seam: the one place where work is handed to a device.
//
// A Backend owns memory for its device type and runs the kernels of every op. The op layer
// (tensor/ops.h) validates arguments, allocates outputs on the inputs' device and calls
// `backend_for(device).<kernel>(...)`. Nothing outside kernels/ knows which backends exist:
// the CPU backend is always linked in; the CUDA backend, when built, is a shared library that
// tensor/backend.cpp loads on the first use of a CUDA device.
//
// Kernel contracts: every tensor argument is on this backend's device and has the op's dtype.
// Inputs are contiguous unless the kernel says "any layout"; outputs are preallocated,
// contiguous, and fully overwritten. A kernel a backend lacks throws st::Error naming the
// kernel and the backend (the base-class default).
#pragma once
#include <memory>
#include <string>

#include "tensor/tensor.h"

namespace st {

enum class UnaryOp { Relu, Sigmoid, Scale, AddScalar };
enum class BinaryOp { Add, Mul };

struct Conv2dParams {
  int64_t stride_h = 1, stride_w = 1;
  int64_t pad_h = 0, pad_w = 0;
  int64_t groups = 1;
  int64_t output_pad_h = 0, output_pad_w = 0;  // conv_transpose2d only
};

struct Pool2dParams {
  int64_t kernel_h = 2, kernel_w = 2;
  int64_t stride_h = 2, stride_w = 2;
  int64_t pad_h = 0, pad_w = 0;
};

struct AdamParams {
  double lr = 1e-3, beta1 = 0.9, beta2 = 0.999, eps = 1e-8;
  int64_t step = 1;  // the step being taken (1-based), for bias correction
};

// What a backend's allocator has done (for tests and profiles). A caching allocator serves
// steady-state requests from its cache: device_allocations stops growing.
struct MemoryStats {
  uint64_t device_allocations = 0;  // real allocations from the device (cudaMalloc, malloc)
  uint64_t cache_hits = 0;          // requests served from the cache
  size_t in_use_bytes = 0, peak_in_use_bytes = 0, cached_bytes = 0;
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual const char* name() const = 0;
  virtual MemoryStats memory_stats() const { return {}; }

  // ---- memory ----
  virtual void* allocate(size_t nbytes, int device_index) = 0;
  virtual void deallocate(void* ptr, size_t nbytes, int device_index) noexcept = 0;
  // Copies bytes where at least one side is on this backend's device.
  virtual void memcpy(void* dst, Device dst_dev, const void* src, Device src_dev, size_t n) = 0;
  virtual void synchronize() {}

  // ---- layout ----
  virtual void fill(Tensor& dst, double value);
  // dst = src elementwise; same shape; ANY layout on both sides; dtype conversion allowed.
  virtual void copy(const Tensor& src, Tensor& dst);

  // ---- elementwise ----
  virtual void unary(UnaryOp op, const Tensor& x, Tensor& y, double alpha);
  // gx = gy * f'(.) where `saved` is the op's output (relu, sigmoid) or unused (scale).
  virtual void unary_backward(UnaryOp op, const Tensor& gy, const Tensor& saved, Tensor& gx,
                              double alpha);
  // out = a op b. a and b: ANY layout, already broadcast to out's shape (stride-0 dims).
  virtual void binary(BinaryOp op, const Tensor& a, const Tensor& b, Tensor& out);
  // out = sum of x over the dims where out (same rank) has size 1.
  virtual void sum_to(const Tensor& x, Tensor& out);

  // ---- convolution ----
  virtual void conv2d_forward(const Tensor& x, const Tensor& w, const Tensor* bias,
                              const Conv2dParams& p, Tensor& y);
  virtual void conv2d_backward_data(const Tensor& gy, const Tensor& w, const Conv2dParams& p,
                                    Tensor& gx);
  virtual void conv2d_backward_weight(const Tensor& gy, const Tensor& x, const Conv2dParams& p,
                                      Tensor& gw);
  virtual void conv2d_backward_bias(const Tensor& gy, Tensor& gb);
  // w: (C_in, C_out/groups, kh, kw), as in PyTorch.
  virtual void conv_transpose2d_forward(const Tensor& x, const Tensor& w, const Tensor* bias,
                                        const Conv2dParams& p, Tensor& y);

  // ---- normalisation ----
  // Batch statistics over (N, H, W) per channel; biased variance. Writes mean and invstd (C).
  virtual void batch_norm_forward(const Tensor& x, const Tensor& gamma, const Tensor& beta,
                                  double eps, Tensor& y, Tensor& mean, Tensor& invstd);
  // Gradients through batch statistics. Any of gx/ggamma/gbeta may be null (not needed).
  virtual void batch_norm_backward(const Tensor& gy, const Tensor& x, const Tensor& gamma,
                                   const Tensor& mean, const Tensor& invstd, Tensor* gx,
                                   Tensor* ggamma, Tensor* gbeta);
  // Frozen mode: y = (x - mean) * invstd * gamma + beta with given per-channel statistics.
  virtual void batch_norm_frozen_forward(const Tensor& x, const Tensor& gamma,
                                         const Tensor& beta, const Tensor& mean,
                                         const Tensor& invstd, Tensor& y);
  virtual void batch_norm_frozen_backward(const Tensor& gy, const Tensor& x, const Tensor& gamma,
                                          const Tensor& mean, const Tensor& invstd, Tensor* gx,
                                          Tensor* ggamma, Tensor* gbeta);

  // ---- resampling and pooling (NCHW; output size taken from y / gy) ----
  virtual void resize_bilinear_forward(const Tensor& x, Tensor& y);
  virtual void resize_bilinear_backward(const Tensor& gy, Tensor& gx);
  virtual void resize_nearest_forward(const Tensor& x, Tensor& y);
  virtual void resize_nearest_backward(const Tensor& gy, Tensor& gx);
  // indices: i64, same shape as y, flat index into the (H*W) plane of x.
  virtual void max_pool2d_forward(const Tensor& x, const Pool2dParams& p, Tensor& y,
                                  Tensor& indices);
  virtual void max_pool2d_backward(const Tensor& gy, const Tensor& indices, Tensor& gx);

  // ---- channel-wise softmax family and losses ----
  virtual void softmax_channels(const Tensor& x, bool log, Tensor& y);
  virtual void softmax_channels_backward(const Tensor& gy, const Tensor& y, bool log, Tensor& gx);
  // loss (scalar, shape {}) = -mean_p(weight[p] * log_softmax(logits)[target[p], p]).
  // target: i64 (N,H,W) in [0, C); weight: (N,H,W) same dtype as logits.
  virtual void weighted_cross_entropy_forward(const Tensor& logits, const Tensor& target,
                                              const Tensor& weight, Tensor& loss);
  // glogits = gloss * d loss / d logits; gloss is a one-element tensor.
  virtual void weighted_cross_entropy_backward(const Tensor& gloss, const Tensor& logits,
                                               const Tensor& target, const Tensor& weight,
                                               Tensor& glogits);
  virtual void argmax_channels(const Tensor& x, Tensor& out);  // out: i64 (N,H,W)

  // ---- dense algebra ----
  // out (M,N) = op(a) @ op(b) where op transposes when asked; a, b: 2-D, ANY strides.
  virtual void matmul(const Tensor& a, const Tensor& b, Tensor& out);
  virtual void sum_all(const Tensor& x, Tensor& out);  // out: one element

  // ---- detection (the Mask R-CNN teacher; inference only) ----
  // ROIAlign, torchvision semantics (MASKRCNN.md §5.1): x (N, C, H, W); rois (R, 5) rows
  // (batch index, x0, y0, x1, y1) in input pixels, same dtype as x; out (R, C, PH, PW).
  // sampling_ratio <= 0: adaptive (ceil(roi size / bins)); aligned: half-pixel offset.
  virtual void roi_align_forward(const Tensor& x, const Tensor& rois, double spatial_scale,
                                 int64_t sampling_ratio, bool aligned, Tensor& out);
  // NMS overlaps: boxes (K, 4) f32 in processing order; mask (K, ceil(K/64)) i64, bit j % 64 of
  // word j / 64 in row i set when j > i and IoU(i, j) > threshold (torchvision's test).
  virtual void nms_mask(const Tensor& boxes, double iou_threshold, Tensor& mask);
  // Stable descending order of a 1-D f32 tensor: order (K) i64, ties lower index first.
  virtual void sort_desc(const Tensor& scores, Tensor& order);
  // Mask paste: masks (D, M, M) f32 probabilities, boxes (D, 4) f32 image pixels; out (D, H, W)
  // u8 = 1 where the pasted value passes the threshold (Detectron2's grid-sample paste: >=;
  // torchvision's padded bilinear paste: >), else 0.
  virtual void paste_masks(const Tensor& masks, const Tensor& boxes, bool torchvision,
                           double threshold, Tensor& out);

  // ---- optimizer ----
  // One Adam step (PyTorch semantics, bias-corrected) on contiguous param/grad/m/v.
  virtual void adam_step(Tensor& param, const Tensor& grad, Tensor& m, Tensor& v,
                         const AdamParams& p);

 protected:
  [[noreturn]] void unsupported(const char* kernel) const;
};

// The backend that runs work for `device`. Throws st::Error when that backend was not built
// or the device does not exist.
Backend& backend_for(Device device);
// Installs (or replaces) the backend of a device type (tests; the CUDA backend is installed by
// the registry itself when its library is loaded).
void register_backend(DeviceType type, Backend* backend);
// True when a usable device of this type exists (e.g. a CUDA GPU).
bool device_available(DeviceType type);
// Whether this build has a backend for the device type (CPU: always; CUDA: built with it).
bool backend_built(DeviceType type);
// The CUDA backend is a separate shared library, loaded on the first use of a CUDA device (so a
// program that never touches a GPU does not load cuBLAS and cuDNN). Loads it now if it is built
// and not yet loaded; returns "" when it is loaded (or not built), else why loading failed.
std::string backend_load_error(DeviceType type);

}  // namespace st
