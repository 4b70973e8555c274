// The CPU backend object, declared on the seam's side so that the registry (tensor/backend.cpp)
// includes nothing of kernels/: kernels/cpu/backend.cpp defines it, and st_core always links
// it in. Everything else reaches it through backend_for(Device::cpu()). Its own header (not
// backend.h) so that the namespace st::cpu stays out of every file that includes backend.h.
#pragma once
#include "tensor/backend.h"

namespace st::cpu {
// The process-wide CPU backend, the reference: always present, whatever else is built.
Backend& cpu_backend();
}  // namespace st::cpu
