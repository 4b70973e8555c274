// Why a device type is not usable: "absent" (no such device on this machine: a GPU-less CI host, a
// build without the CUDA backend) apart from "broken" (a CUDA setup that is there but fails: a
// driver too old for the runtime, a backend library that does not load, an allocation that fails
// for another reason). device_available() (tensor/backend.h) says only yes or no; the tests and
// tools/gpu_check.sh need the reason, and ST_REQUIRE_GPU=1 (tests/README.md) turns either into a
// failure.
#pragma once
#include <string>

#include "tensor/backend.h"

namespace st {

enum class DeviceState { Usable, Absent, Broken };
const char* device_state_name(DeviceState s);  // "usable", "absent", "broken"

struct DeviceStatus {
  DeviceState state = DeviceState::Absent;
  std::string reason;  // "" when usable
};

// Probes the device type as device_available() does (loads the backend, allocates 16 bytes on
// device 0) and says why it is not usable. Not cached: each call probes again.
DeviceStatus device_status(DeviceType type);
// device_status(type).reason, prefixed with the state: "" when usable, else e.g. "absent: no
// NVIDIA GPU device node ...", "broken: cuda:0: no usable GPU (CUDA driver version is
// insufficient for CUDA runtime version)".
std::string device_unavailable_reason(DeviceType type);

// The classification of a CUDA probe's failure message, apart for tests: absent when the runtime
// reports no device, or when the machine has no NVIDIA device node at all (without a driver the
// runtime reports an "insufficient driver", which is then no GPU rather than a broken one); broken
// otherwise.
DeviceState classify_cuda_failure(const std::string& message, bool device_node_present);
// Whether /dev has an NVIDIA GPU node: /dev/nvidia0 (desktop and server drivers), /dev/nvhost-gpu
// or /dev/nvhost-ctrl-gpu or /dev/nvgpu (Jetson).
bool nvidia_device_node_present();

}  // namespace st
