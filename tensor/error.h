// st::Error: what the project throws for a problem the caller can name (a bad shape, file,
// message, option ...); the message names the operation and the problem. A header of its own, so
// that code needing nothing else of the tensor library (protocol/) does not include tensor.h.
// ST_CHECK, which formats shapes, dtypes and tensors into the message, is in tensor.h.
#pragma once
#include <stdexcept>

namespace st {

struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

}  // namespace st
