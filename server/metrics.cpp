#include "server/metrics.h"

#include <cmath>
#include <cstdio>

#include "server/server.h"

namespace st::server {

void LatencyHistogram::observe(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) seconds = 0;
  size_t i = 0;
  while (i < kBounds.size() && seconds > kBounds[i]) ++i;
  ++counts[i];
  ++count;
  sum += seconds;
}

namespace {
void metric(std::string& out, const char* name, const char* type, const char* help, double v) {
  char line[256];
  std::snprintf(line, sizeof line, "# HELP shadowtutor_%s %s\n# TYPE shadowtutor_%s %s\nshadowtutor_%s %.17g\n",
                name, help, name, type, name, v);
  out += line;
}

void histogram(std::string& out, const char* name, const char* help, const LatencyHistogram& h) {
  char line[256];
  std::snprintf(line, sizeof line, "# HELP shadowtutor_%s %s\n# TYPE shadowtutor_%s histogram\n",
                name, help, name);
  out += line;
  uint64_t cumulative = 0;
  for (size_t i = 0; i <= LatencyHistogram::kBounds.size(); ++i) {
    cumulative += h.counts[i];
    if (i < LatencyHistogram::kBounds.size())
      std::snprintf(line, sizeof line, "shadowtutor_%s_bucket{le=\"%g\"} %llu\n", name,
                    LatencyHistogram::kBounds[i], (unsigned long long)cumulative);
    else
      std::snprintf(line, sizeof line, "shadowtutor_%s_bucket{le=\"+Inf\"} %llu\n", name,
                    (unsigned long long)cumulative);
    out += line;
  }
  std::snprintf(line, sizeof line, "shadowtutor_%s_sum %.17g\nshadowtutor_%s_count %llu\n", name,
                h.sum, name, (unsigned long long)h.count);
  out += line;
}
}  // namespace

std::string render_metrics(const MetricsSnapshot& m) {
  std::string out;
  const ServerStats& s = *m.stats;
  metric(out, "sessions_active", "gauge", "Sessions welcomed and not yet closed.", double(s.sessions_active));
  metric(out, "sessions_opened_total", "counter", "Sessions welcomed.", double(s.sessions_opened));
  metric(out, "sessions_closed_total", "counter", "Sessions closed.", double(s.sessions_closed));
  metric(out, "key_frames_total", "counter", "KEY_FRAME messages received.", double(s.key_frames));
  metric(out, "answers_total", "counter", "UPDATE and LABELS answers sent.", double(s.updates));
  metric(out, "errors_sent_total", "counter", "ERROR messages sent.", double(s.errors_sent));
  metric(out, "teacher_failures_total", "counter", "Teacher runs that failed.", double(s.teacher_failures));
  metric(out, "connections_refused_total", "counter",
         "Connections refused over --max-pending or --max-per-address.", double(s.connections_refused));
  metric(out, "overflows_total", "counter", "Sessions closed for not reading (ERROR Overflow).",
         double(s.overflows));
  metric(out, "received_bytes_total", "counter", "Bytes received from edges.", double(s.bytes_in));
  metric(out, "sent_bytes_total", "counter", "Bytes sent to edges.", double(s.bytes_out));
  metric(out, "jobs_running", "gauge", "Key-frame jobs running now.", double(s.jobs_running));
  metric(out, "jobs_waiting", "gauge", "Key frames waiting for a job slot (the queue depth).",
         double(s.jobs_waiting));
  metric(out, "strides_stretched_total", "counter",
         "UPDATEs whose stride was lengthened because key frames were waiting (--busy-stretch).",
         double(s.strides_stretched));
  metric(out, "migrations_total", "counter",
         "Sessions that continued from the weights their edge sent (session migration).",
         double(s.migrations));
  metric(out, "job_slots", "gauge", "Key-frame jobs run at once at most (--jobs).", double(m.job_slots));
  metric(out, "threads_per_job", "gauge", "OpenMP threads per key-frame job (--threads-per-job).",
         double(m.threads_per_job));
  histogram(out, "key_frame_seconds",
            "From a key frame's arrival to its answer, waiting for a job slot included.", *m.key_frame);
  histogram(out, "teacher_seconds", "The teacher's run on a key frame.", *m.teacher);
  histogram(out, "distill_seconds", "Algorithm 1 and the update blob for a key frame.", *m.distill);
  return out;
}

}  // namespace st::server
