// The token bucket of the edge's link-rate limit (token_bucket.h).
#include "edge/token_bucket.h"

#include <algorithm>

#include "tensor/tensor.h"

namespace st::edge {

TokenBucket::TokenBucket(double rate, double burst)
    : rate_(rate), burst_(burst), tokens_(burst), last_(Clock::now()) {
  ST_CHECK(rate > 0 && burst >= 1, "TokenBucket: bad rate ", rate, " or burst ", burst);
}

double TokenBucket::available(Clock::time_point now) {
  double dt = std::chrono::duration<double>(now - last_).count();
  if (dt > 0) {
    tokens_ = std::min(burst_, tokens_ + dt * rate_);
    last_ = now;
  }
  return tokens_;
}

double TokenBucket::seconds_until(double n, Clock::time_point now) {
  double need = std::min(n, burst_) - available(now);
  return need <= 0 ? 0.0 : need / rate_;
}

}  // namespace st::edge
