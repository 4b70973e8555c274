// Backend registry and the default "unsupported kernel" behaviour.
#include "tensor/backend.h"

#include <array>

#include "kernels/cpu/cpu_backend.h"
#if ST_WITH_CUDA
#include "kernels/cuda/cuda_backend.h"
#endif

namespace st {

namespace {
std::array<Backend*, 2>& registry() {
#if ST_WITH_CUDA
  static std::array<Backend*, 2> r{&cpu::cpu_backend(), &cuda::cuda_backend()};
#else
  static std::array<Backend*, 2> r{&cpu::cpu_backend(), nullptr};
#endif
  return r;
}
}  // namespace

void register_backend(DeviceType type, Backend* backend) { registry()[size_t(type)] = backend; }

Backend& backend_for(Device device) {
  Backend* b = registry()[size_t(device.type)];
  if (!b) {
    if (device.is_cuda())
      throw Error("device " + device.str() +
                  ": this build has no CUDA backend (configure with -DST_CUDA=ON on a machine "
                  "with the CUDA toolkit)");
    throw Error("device " + device.str() + ": no backend registered");
  }
  return *b;
}

bool device_available(DeviceType type) {
  Backend* b = registry()[size_t(type)];
  if (!b) return false;
  if (type == DeviceType::CPU) return true;
  try {
    void* p = b->allocate(16, 0);
    b->deallocate(p, 16, 0);
    return true;
  } catch (const Error&) {
    return false;
  }
}

void Backend::unsupported(const char* kernel) const {
  throw Error(std::string(kernel) + ": not implemented on the " + name() + " backend");
}

void Backend::fill(Tensor&, double) { unsupported("fill"); }
void Backend::copy(const Tensor&, Tensor&) { unsupported("copy"); }
void Backend::unary(UnaryOp, const Tensor&, Tensor&, double) { unsupported("unary"); }
void Backend::unary_backward(UnaryOp, const Tensor&, const Tensor&, Tensor&, double) {
  unsupported("unary_backward");
}
void Backend::binary(BinaryOp, const Tensor&, const Tensor&, Tensor&) { unsupported("binary"); }
void Backend::sum_to(const Tensor&, Tensor&) { unsupported("sum_to"); }
void Backend::conv2d_forward(const Tensor&, const Tensor&, const Tensor*, const Conv2dParams&,
                             Tensor&) {
  unsupported("conv2d_forward");
}
void Backend::conv2d_backward_data(const Tensor&, const Tensor&, const Conv2dParams&, Tensor&) {
  unsupported("conv2d_backward_data");
}
void Backend::conv2d_backward_weight(const Tensor&, const Tensor&, const Conv2dParams&, Tensor&) {
  unsupported("conv2d_backward_weight");
}
void Backend::conv2d_backward_bias(const Tensor&, Tensor&) { unsupported("conv2d_backward_bias"); }
void Backend::conv_transpose2d_forward(const Tensor&, const Tensor&, const Tensor*,
                                       const Conv2dParams&, Tensor&) {
  unsupported("conv_transpose2d_forward");
}
void Backend::batch_norm_forward(const Tensor&, const Tensor&, const Tensor&, double, Tensor&,
                                 Tensor&, Tensor&) {
  unsupported("batch_norm_forward");
}
void Backend::batch_norm_backward(const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                                  const Tensor&, Tensor*, Tensor*, Tensor*) {
  unsupported("batch_norm_backward");
}
void Backend::batch_norm_frozen_forward(const Tensor&, const Tensor&, const Tensor&,
                                        const Tensor&, const Tensor&, Tensor&) {
  unsupported("batch_norm_frozen_forward");
}
void Backend::batch_norm_frozen_backward(const Tensor&, const Tensor&, const Tensor&,
                                         const Tensor&, const Tensor&, Tensor*, Tensor*,
                                         Tensor*) {
  unsupported("batch_norm_frozen_backward");
}
void Backend::resize_bilinear_forward(const Tensor&, Tensor&) {
  unsupported("resize_bilinear_forward");
}
void Backend::resize_bilinear_backward(const Tensor&, Tensor&) {
  unsupported("resize_bilinear_backward");
}
void Backend::resize_nearest_forward(const Tensor&, Tensor&) {
  unsupported("resize_nearest_forward");
}
void Backend::resize_nearest_backward(const Tensor&, Tensor&) {
  unsupported("resize_nearest_backward");
}
void Backend::max_pool2d_forward(const Tensor&, const Pool2dParams&, Tensor&, Tensor&) {
  unsupported("max_pool2d_forward");
}
void Backend::max_pool2d_backward(const Tensor&, const Tensor&, Tensor&) {
  unsupported("max_pool2d_backward");
}
void Backend::softmax_channels(const Tensor&, bool, Tensor&) { unsupported("softmax_channels"); }
void Backend::softmax_channels_backward(const Tensor&, const Tensor&, bool, Tensor&) {
  unsupported("softmax_channels_backward");
}
void Backend::weighted_cross_entropy_forward(const Tensor&, const Tensor&, const Tensor&,
                                             Tensor&) {
  unsupported("weighted_cross_entropy_forward");
}
void Backend::weighted_cross_entropy_backward(const Tensor&, const Tensor&, const Tensor&,
                                              const Tensor&, Tensor&) {
  unsupported("weighted_cross_entropy_backward");
}
void Backend::argmax_channels(const Tensor&, Tensor&) { unsupported("argmax_channels"); }
void Backend::matmul(const Tensor&, const Tensor&, Tensor&) { unsupported("matmul"); }
void Backend::sum_all(const Tensor&, Tensor&) { unsupported("sum_all"); }
void Backend::adam_step(Tensor&, const Tensor&, Tensor&, Tensor&, const AdamParams&) {
  unsupported("adam_step");
}

void Backend::roi_align_forward(const Tensor&, const Tensor&, double, int64_t, bool, Tensor&) {
  unsupported("roi_align_forward");
}
void Backend::nms_mask(const Tensor&, double, Tensor&) { unsupported("nms_mask"); }
void Backend::sort_desc(const Tensor&, Tensor&) { unsupported("sort_desc"); }
void Backend::paste_masks(const Tensor&, const Tensor&, bool, double, Tensor&) {
  unsupported("paste_masks");
}

}  // namespace st
