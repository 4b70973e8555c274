// The backend registry; the kernel list's names; declined kernels.
#include "tensor/backend.h"

#include <array>
#include <mutex>

#include "tensor/cpu_backend.h"
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

const std::vector<Kernel>& all_kernels() {
  static const std::vector<Kernel> kernels = {
#define ST_KERNEL(name, params) Kernel::name,
#include "tensor/kernels.def"
  };
  return kernels;
}

const char* kernel_name(Kernel k) {
  switch (k) {
#define ST_KERNEL(name, params) \
  case Kernel::name:            \
    return #name;
#include "tensor/kernels.def"
  }
  return "unknown kernel";
}

bool Backend::declines(Kernel k) const {
  for (Kernel d : declined_kernels())
    if (d == k) return true;
  return false;
}

void Backend::decline(Kernel k) const {
  throw Error(std::string(kernel_name(k)) + ": not implemented on the " + name() + " backend");
}

}  // namespace st
