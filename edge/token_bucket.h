// The edge's link-rate limit (EdgeOptions::net.link_mbps): one token bucket per direction,
// consulted by the network thread before each write and after each read (net_client.cpp).
#pragma once
#include <chrono>

namespace st::edge {

// A token bucket: `rate` bytes per second, at most `burst` bytes saved up. Not thread-safe.
class TokenBucket {
 public:
  using Clock = std::chrono::steady_clock;
  TokenBucket(double rate_bytes_per_s, double burst_bytes);
  double available(Clock::time_point now);  // refills, then returns the tokens (may be < 0)
  void consume(double n) { tokens_ -= n; }  // may go negative (reads are charged afterwards)
  // Seconds until at least `n` (clipped to the burst) tokens are available.
  double seconds_until(double n, Clock::time_point now);
  double rate() const { return rate_; }
  double burst() const { return burst_; }

 private:
  double rate_, burst_, tokens_;
  Clock::time_point last_;
};

}  // namespace st::edge
