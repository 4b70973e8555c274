// st::Error: what the project throws for a problem the caller can name (a bad shape, file,
// message, option ...); the message names the operation and the problem. Std only, at the bottom
// of the tree (common/), so that code needing nothing of the tensor library (protocol/, net/)
// can throw it too. ST_CHECK, which formats shapes, dtypes and tensors into the message, is in
// tensor/tensor.h.
#pragma once
#include <stdexcept>

namespace st {

struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

}  // namespace st
