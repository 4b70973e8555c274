// The server's side of one key frame (SPEC §6), in one place for both users: shadowtutor-server
// (server/server.cpp, per session) and the one-process simulation (edge/simulate.cpp).
//
//   KeyFrameAnswer a = answer_key_frame(distiller, x, labels, H, W, boxes, stride, encoding);
//   stride = a.next_stride;  if (a.outcome.steps > 0) send(a.blob);
#pragma once
#include <cstdint>
#include <vector>

#include "nn/blob.h"
#include "nn/distill.h"

namespace st::nn {

struct KeyFrameAnswer {
  DistillOutcome outcome;     // Algorithm 1 on the frame
  int next_stride = 0;        // Algorithm 2 from outcome.acc
  std::vector<uint8_t> blob;  // the trained tensors when a step was taken; empty: no change
  double distill_ms = 0;      // Algorithm 1 alone, wall time
};

// The teacher's label map (height x width, class ids; boxes may be null) as the target,
// Algorithm 1 on x (the (1,3,H,W) normalised frame) with the distiller's student, mode and
// Adam state, Algorithm 2 from the current stride, and the student's trained tensors packed
// in `encoding` when any step was taken.
KeyFrameAnswer answer_key_frame(Distiller& distiller, const Tensor& x,
                                const std::vector<uint8_t>& labels, int64_t height, int64_t width,
                                const std::vector<Box>* boxes, int stride, BlobEncoding encoding);

}  // namespace st::nn
