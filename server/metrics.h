// The server's metrics in the Prometheus text exposition format (version 0.0.4), served over HTTP
// by shadowtutor-server --metrics-port on the server's own libuv loop (server.cpp). This file is
// the pure part: latency histograms and the text.
#pragma once
#include <array>
#include <cstdint>
#include <string>

namespace st::server {

struct ServerStats;

// A latency histogram in seconds with fixed bucket bounds (Prometheus `le`, cumulative when
// written); loop thread only.
struct LatencyHistogram {
  static constexpr std::array<double, 12> kBounds = {0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                                                     1,    2.5,   5,    10,  30,   60};
  std::array<uint64_t, kBounds.size() + 1> counts{};  // per bucket; the last one is +Inf
  uint64_t count = 0;
  double sum = 0;
  void observe(double seconds);
};

struct MetricsSnapshot {
  const ServerStats* stats = nullptr;
  int job_slots = 0, threads_per_job = 0;
  // From a key frame's arrival to its answer (waiting for a job slot included); the teacher's
  // run; Algorithm 1 with the blob (partial and full sessions).
  const LatencyHistogram* key_frame = nullptr;
  const LatencyHistogram* teacher = nullptr;
  const LatencyHistogram* distill = nullptr;
};

// Every metric, with # HELP and # TYPE lines, names prefixed shadowtutor_.
std::string render_metrics(const MetricsSnapshot& m);

}  // namespace st::server
