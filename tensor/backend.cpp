// Backend registry and the default "unsupported kernel" behaviour.
#include "tensor/backend.h"

#include <array>
#include <mutex>

#include "kernels/cpu/backend.h"
#if ST_WITH_CUDA
#include <dlfcn.h>
#endif

namespace st {

namespace {
std::array<Backend*, 2>& registry() {
  static std::array<Backend*, 2> r{&cpu::cpu_backend(), nullptr};
  return r;
}

#if ST_WITH_CUDA
// The CUDA backend lives in ST_CUDA_LIBRARY (kernels/cuda/, linked against cuBLAS and cuDNN,
// whose mere loading costs ~155 MB of resident memory). It is opened on first use: from the
// directory of the library holding this code (the build or install directory), else through the
// loader's search path. Its entry point returns the process-wide backend.
std::string& cuda_load_error() {
  static std::string e;
  return e;
}
void load_cuda_backend() {
  static std::once_flag once;
  std::call_once(once, [] {
    std::string dir;
    Dl_info info;
    if (dladdr(reinterpret_cast<void*>(&load_cuda_backend), &info) && info.dli_fname) {
      const std::string self = info.dli_fname;
      const size_t slash = self.rfind('/');
      if (slash != std::string::npos) dir = self.substr(0, slash + 1);
    }
    void* h = dlopen((dir + ST_CUDA_LIBRARY).c_str(), RTLD_NOW | RTLD_LOCAL);
    const char* why = h ? nullptr : dlerror();
    const std::string first = why ? why : "unknown error";
    if (!h) h = dlopen(ST_CUDA_LIBRARY, RTLD_NOW | RTLD_LOCAL);
    if (!h) {
      cuda_load_error() = "cannot load " + dir + ST_CUDA_LIBRARY + ": " + first;
      return;
    }
    using Entry = Backend* (*)();
    auto entry = reinterpret_cast<Entry>(dlsym(h, "st_cuda_backend_entry"));
    if (!entry) {
      cuda_load_error() = std::string(ST_CUDA_LIBRARY) + " has no st_cuda_backend_entry";
      return;
    }
    registry()[size_t(DeviceType::CUDA)] = entry();
  });
}
#endif

Backend* lookup(DeviceType type) {
#if ST_WITH_CUDA
  if (type == DeviceType::CUDA) load_cuda_backend();
#endif
  return registry()[size_t(type)];
}
}  // namespace

void register_backend(DeviceType type, Backend* backend) { registry()[size_t(type)] = backend; }

bool backend_built(DeviceType type) {
#if ST_WITH_CUDA
  return true;
#else
  return type == DeviceType::CPU;
#endif
}

std::string backend_load_error(DeviceType type) {
#if ST_WITH_CUDA
  if (type == DeviceType::CUDA) {
    load_cuda_backend();
    return cuda_load_error();
  }
#endif
  return "";
}

Backend& backend_for(Device device) {
  Backend* b = lookup(device.type);
  if (!b) {
    if (device.is_cuda() && !backend_built(DeviceType::CUDA))
      throw Error("device " + device.str() +
                  ": this build has no CUDA backend (configure with -DST_CUDA=ON on a machine "
                  "with the CUDA toolkit)");
    if (device.is_cuda())
      throw Error("device " + device.str() + ": the CUDA backend could not be loaded (" +
                  backend_load_error(DeviceType::CUDA) + ")");
    throw Error("device " + device.str() + ": no backend registered");
  }
  return *b;
}

bool device_available(DeviceType type) {
  Backend* b = lookup(type);
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
