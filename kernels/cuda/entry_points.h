// The CUDA backend's entry points inside libst_cuda.so, for the library's own files (included
// through common.cuh). Plain C++, no CUDA headers. The core never includes it: it loads the
// library on the first use of a CUDA device and calls st_cuda_backend_entry (tensor/backend.cpp).
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
