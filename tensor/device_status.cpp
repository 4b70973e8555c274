// Why a device type is not usable: absent apart from broken (tensor/device_status.h).
#include "tensor/device_status.h"

#include <exception>
#include <filesystem>


namespace st {

const char* device_state_name(DeviceState s) {
  switch (s) {
    case DeviceState::Usable:
      return "usable";
    case DeviceState::Absent:
      return "absent";
    case DeviceState::Broken:
      return "broken";
  }
  return "unknown";
}

bool nvidia_device_node_present() {
  std::error_code ec;
  for (const char* p : {"/dev/nvidia0", "/dev/nvhost-gpu", "/dev/nvhost-ctrl-gpu", "/dev/nvgpu"})
    if (std::filesystem::exists(p, ec)) return true;
  return false;
}

DeviceState classify_cuda_failure(const std::string& message, bool device_node_present) {
  // cudaErrorNoDevice's text, and the backend's own count check (kernels/cuda/backend.cu).
  if (message.find("no CUDA-capable device") != std::string::npos ||
      message.find("(0 device(s) present)") != std::string::npos)
    return DeviceState::Absent;
  return device_node_present ? DeviceState::Broken : DeviceState::Absent;
}

DeviceStatus device_status(DeviceType type) {
  if (type == DeviceType::CPU) return {DeviceState::Usable, ""};
  if (!backend_built(type))
    return {DeviceState::Absent, "this build has no CUDA backend (configure with -DST_CUDA=ON)"};
  const std::string load = backend_load_error(type);
  if (!load.empty()) return {DeviceState::Broken, "the CUDA backend library did not load: " + load};
  try {
    Backend& b = backend_for(Device{type, 0});
    void* p = b.allocate(16, 0);
    b.deallocate(p, 16, 0);
    return {DeviceState::Usable, ""};
  } catch (const std::exception& e) {
    const bool node = nvidia_device_node_present();
    const DeviceState s = classify_cuda_failure(e.what(), node);
    std::string why = e.what();
    if (s == DeviceState::Absent && !node)
      why = "no NVIDIA GPU device node in /dev (the CUDA runtime says: " + why + ")";
    return {s, why};
  }
}

std::string device_unavailable_reason(DeviceType type) {
  const DeviceStatus s = device_status(type);
  if (s.state == DeviceState::Usable) return "";
  return std::string(device_state_name(s.state)) + ": " + s.reason;
}

}  // namespace st
