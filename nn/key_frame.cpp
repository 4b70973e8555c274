#include "nn/key_frame.h"

#include <chrono>

namespace st::nn {

KeyFrameAnswer answer_key_frame(Distiller& distiller, const Tensor& x,
                                const std::vector<uint8_t>& labels, int64_t height, int64_t width,
                                const std::vector<Box>* boxes, int stride, BlobEncoding encoding) {
  KeyFrameAnswer a;
  const Target target = make_target(labels, height, width, boxes);
  const auto t0 = std::chrono::steady_clock::now();
  a.outcome = distiller.distill(x, target);
  a.distill_ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  a.next_stride = next_stride(a.outcome.acc, stride, distiller.config());
  if (a.outcome.steps > 0) a.blob = pack_trained(distiller.student(), distiller.mode(), encoding);
  return a;
}

}  // namespace st::nn
