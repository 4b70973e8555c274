// The CUDA backend's entry point. Plain C++ (no CUDA headers), so the registry can include it.
#pragma once
#include "tensor/backend.h"

namespace st::cuda {
// The process-wide CUDA backend. Allocation throws st::Error when no usable GPU exists.
Backend& cuda_backend();
}  // namespace st::cuda
