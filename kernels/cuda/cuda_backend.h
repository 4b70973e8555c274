// The CUDA backend's entry points. Plain C++ (no CUDA headers), so the registry can include it.
#pragma once
#include <cstddef>

#include "tensor/backend.h"

namespace st::cuda {
// The process-wide CUDA backend. Allocation throws st::Error when no usable GPU exists.
Backend& cuda_backend();

// The cuDNN workspace is one grow-only buffer per device, never larger than this limit
// (bytes; default 256 MiB or ST_CUDNN_WORKSPACE_MB). Algorithms needing more are skipped.
// Jetson boards share their small memory with the CPU: lower it there.
void set_workspace_limit(size_t bytes);
size_t workspace_limit();
// Returns every cached (free) device block to the driver.
void empty_cache();
}  // namespace st::cuda
