// The CUDA backend's entry point inside libst_cuda.so, for the library's own files (included
// through common.cuh). Plain C++, no CUDA headers. The core never includes it: it loads the
// library on the first use of a CUDA device and calls st_cuda_backend_entry (tensor/backend.cpp).
// The memory controls a program needs (the cuDNN workspace limit, empty_cache) are methods of
// st::Backend (tensor/backend.h): the library is opened with RTLD_LOCAL, so free functions here
// could not be called from outside it.
#pragma once
#include "tensor/backend.h"

namespace st::cuda {
// The process-wide CUDA backend. Allocation throws st::Error when no usable GPU exists.
Backend& cuda_backend();
}  // namespace st::cuda
