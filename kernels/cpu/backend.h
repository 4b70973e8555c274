// The CPU backend: the reference implementation of every kernel (f32 fast paths, f64 for
// finite-difference tests). Multi-threaded with OpenMP. Its methods live in one file per op
// family, the same names as the CUDA backend's (kernels/cuda/):
//   backend.cpp      memory (with the large-block cache), copies, cpu_backend()
//   elementwise.cpp  fill, copy, unary, binary, sum_to, sum_all
//   conv.cpp         convolutions (the entry points over conv2d.h, the convolution engine)
//   matmul.cpp       matmul (large f32 products through the convolution engine)
//   optim.cpp        Adam
//   image.cpp        batch norm, resampling, pooling, softmax, cross-entropy, argmax
//   detect.cpp       the teacher's detection ops: ROIAlign, the NMS overlap mask, sort, paste
#pragma once
#include <map>
#include <mutex>

#include "tensor/backend.h"

namespace st::cpu {

class CpuBackend final : public Backend {
 public:
  const char* name() const override { return "cpu"; }
  void* allocate(size_t nbytes, int device_index) override;
  void deallocate(void* ptr, size_t nbytes, int device_index) noexcept override;
  void memcpy(void* dst, Device dst_dev, const void* src, Device src_dev, size_t n) override;

  void fill(Tensor& dst, double value) override;
  void copy(const Tensor& src, Tensor& dst) override;
  void unary(UnaryOp op, const Tensor& x, Tensor& y, double alpha) override;
  void unary_backward(UnaryOp op, const Tensor& gy, const Tensor& saved, Tensor& gx,
                      double alpha) override;
  void binary(BinaryOp op, const Tensor& a, const Tensor& b, Tensor& out) override;
  void sum_to(const Tensor& x, Tensor& out) override;
  void sum_all(const Tensor& x, Tensor& out) override;

  void conv2d_forward(const Tensor& x, const Tensor& w, const Tensor* bias, const Conv2dParams& p,
                      Tensor& y) override;
  void conv2d_backward_data(const Tensor& gy, const Tensor& w, const Conv2dParams& p,
                            Tensor& gx) override;
  void conv2d_backward_weight(const Tensor& gy, const Tensor& x, const Conv2dParams& p,
                              Tensor& gw) override;
  void conv2d_backward_bias(const Tensor& gy, Tensor& gb) override;
  void conv_transpose2d_forward(const Tensor& x, const Tensor& w, const Tensor* bias,
                                const Conv2dParams& p, Tensor& y) override;

  void batch_norm_forward(const Tensor& x, const Tensor& gamma, const Tensor& beta, double eps,
                          Tensor& y, Tensor& mean, Tensor& invstd) override;
  void batch_norm_backward(const Tensor& gy, const Tensor& x, const Tensor& gamma,
                           const Tensor& mean, const Tensor& invstd, Tensor* gx, Tensor* ggamma,
                           Tensor* gbeta) override;
  void batch_norm_frozen_forward(const Tensor& x, const Tensor& gamma, const Tensor& beta,
                                 const Tensor& mean, const Tensor& invstd, Tensor& y) override;
  void batch_norm_frozen_backward(const Tensor& gy, const Tensor& x, const Tensor& gamma,
                                  const Tensor& mean, const Tensor& invstd, Tensor* gx,
                                  Tensor* ggamma, Tensor* gbeta) override;

  void resize_bilinear_forward(const Tensor& x, Tensor& y) override;
  void resize_bilinear_backward(const Tensor& gy, Tensor& gx) override;
  void resize_nearest_forward(const Tensor& x, Tensor& y) override;
  void resize_nearest_backward(const Tensor& gy, Tensor& gx) override;
  void max_pool2d_forward(const Tensor& x, const Pool2dParams& p, Tensor& y,
                          Tensor& indices) override;
  void max_pool2d_backward(const Tensor& gy, const Tensor& indices, Tensor& gx) override;

  void softmax_channels(const Tensor& x, bool log, Tensor& y) override;
  void softmax_channels_backward(const Tensor& gy, const Tensor& y, bool log,
                                 Tensor& gx) override;
  void weighted_cross_entropy_forward(const Tensor& logits, const Tensor& target,
                                      const Tensor& weight, Tensor& loss) override;
  void weighted_cross_entropy_backward(const Tensor& gloss, const Tensor& logits,
                                       const Tensor& target, const Tensor& weight,
                                       Tensor& glogits) override;
  void argmax_channels(const Tensor& x, Tensor& out) override;

  void matmul(const Tensor& a, const Tensor& b, Tensor& out) override;
  void roi_align_forward(const Tensor& x, const Tensor& rois, double spatial_scale,
                         int64_t sampling_ratio, bool aligned, Tensor& out) override;
  void nms_mask(const Tensor& boxes, double iou_threshold, Tensor& mask) override;
  void sort_desc(const Tensor& scores, Tensor& order) override;
  void paste_masks(const Tensor& masks, const Tensor& boxes, bool torchvision, double threshold,
                   Tensor& out) override;
  void adam_step(Tensor& param, const Tensor& grad, Tensor& m, Tensor& v,
                 const AdamParams& p) override;

 private:
  std::mutex cache_mutex_;
  std::multimap<size_t, void*> cache_;  // free large blocks by rounded size
  size_t cached_bytes_ = 0;
};

// The process-wide CPU backend (always present; tensor/backend.cpp hands it out).
Backend& cpu_backend();

}  // namespace st::cpu
