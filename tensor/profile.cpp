// The kernel profiler's records, tables and trace (tensor/profile.h). The profiling backend that
// feeds it is in tensor/backend.cpp, beside backend_for().
#include "tensor/profile.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <mutex>
#include <sstream>
#include <tuple>
#include <unordered_set>

#include "common/error.h"

namespace st::profile {

namespace detail {
std::atomic<bool> g_enabled{false};
}

namespace {

using Clock = std::chrono::steady_clock;

// At most this many trace events are kept (~64 B each); later calls still count in the tables.
constexpr size_t kMaxTraceEvents = size_t(4) << 20;
// Device-timed records waiting for their events are resolved in batches of this many.
constexpr size_t kPendingBatch = 4096;

struct Agg {
  int64_t calls = 0;
  double total_ms = 0, max_ms = 0, flops = 0, bytes = 0;
};
struct ScopeAgg {
  size_t order = 0;
  int64_t fwd_calls = 0, bwd_calls = 0;
  double fwd_ms = 0, bwd_ms = 0;
};
struct TraceEvent {
  const char* label;
  const char* kernel;
  const char* scope;
  bool backward;
  int track;
  double ts_us, dur_us;
};
// What a record knows before its time: taken on the calling thread.
struct Meta {
  const char* label;
  const char* kernel;
  const char* scope;
  bool backward;
  Work work;
};
struct Pending {
  Meta meta;
  std::unique_ptr<DeviceTiming> timing;
};

struct State {
  std::mutex mu;
  Options options;
  Clock::time_point origin = Clock::now();
  std::map<std::tuple<const char*, const char*, bool>, Agg> agg;  // interned pointers
  std::map<const char*, ScopeAgg> scopes;
  std::vector<TraceEvent> trace;
  size_t trace_dropped = 0;
  std::vector<Pending> pending;
  std::vector<std::string> tracks;           // track index -> name
  std::map<std::string, int> device_tracks;  // device timing track name -> index
  bool from_env = false;
  bool reported = false;
  bool exit_handler_after_device = false;
  uint64_t generation = 0;  // start() counts up: threads' track indices of an older one are stale
};

State& state() {
  static State* s = new State;  // never destroyed: read by an exit handler
  return *s;
}

std::mutex& intern_mutex() {
  static std::mutex* m = new std::mutex;
  return *m;
}

struct ThreadState {
  std::vector<const char*> scopes;
  bool backward = false;
  const char* label = nullptr;   // inside a BackwardScope
  const char* bscope = nullptr;  // the node's forward scope
  bool kind_open = false;        // a kind was counted and no kernel has run since
  int track = -1;
  uint64_t generation = 0;
  std::string name;
};
ThreadState& ts() {
  thread_local ThreadState t;
  return t;
}

const char* const kNone = "";

int host_track_locked(State& s) {
  ThreadState& t = ts();
  if (t.track < 0 || t.generation != s.generation) {
    t.generation = s.generation;
    t.track = int(s.tracks.size());
    s.tracks.push_back(t.name.empty() ? "thread " + std::to_string(t.track) : t.name);
  }
  return t.track;
}

Meta meta_of(const char* kernel, const Work& work) {
  ThreadState& t = ts();
  t.kind_open = false;
  Meta m{kernel, kernel, kNone, t.backward, work};
  if (t.backward) {
    if (t.label) m.label = t.label;
    if (t.bscope) m.scope = t.bscope;
  } else if (!t.scopes.empty()) {
    m.scope = t.scopes.back();
  }
  return m;
}

void add_locked(State& s, const Meta& m, int track, double ts_us, double dur_us) {
  const double ms = dur_us * 1e-3;
  Agg& a = s.agg[{m.label, m.kernel, m.backward}];
  a.calls++;
  a.total_ms += ms;
  a.max_ms = std::max(a.max_ms, ms);
  a.flops += m.work.flops;
  a.bytes += m.work.bytes;
  auto [it, fresh] = s.scopes.try_emplace(m.scope);
  if (fresh) it->second.order = s.scopes.size();
  ScopeAgg& sc = it->second;
  if (m.backward) sc.bwd_calls++, sc.bwd_ms += ms;
  else sc.fwd_calls++, sc.fwd_ms += ms;
  if (s.options.trace_path.empty()) return;
  if (s.trace.size() >= kMaxTraceEvents) {
    s.trace_dropped++;
    return;
  }
  s.trace.push_back({m.label, m.kernel, m.scope, m.backward, track, ts_us, dur_us});
}

void drain_locked(State& s) {
  for (auto& p : s.pending) {
    double start = 0, dur = 0;
    if (!p.timing->elapsed(start, dur)) continue;
    const std::string name = p.timing->track();
    auto [it, fresh] = s.device_tracks.try_emplace(name, int(s.tracks.size()));
    if (fresh) s.tracks.push_back(name);
    add_locked(s, p.meta, it->second, start, dur);
  }
  s.pending.clear();
}

std::string json_escape(const char* p) {
  std::string out;
  for (; *p; ++p) {
    const unsigned char c = static_cast<unsigned char>(*p);
    if (c == '"' || c == '\\') out += '\\', out += char(c);
    else if (c < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\u%04x", c);
      out += buf;
    } else {
      out += char(c);
    }
  }
  return out;
}

void report_at_exit() {
  State& s = state();
  Options o;
  {
    std::lock_guard<std::mutex> l(s.mu);
    if (s.reported) return;
    s.reported = true;
    o = s.options;
  }
  if (!o.at_exit) return;
  std::fputs(tables().c_str(), stderr);
  if (!o.trace_path.empty()) {
    try {
      write_trace(o.trace_path);
      std::fprintf(stderr, "[profile] Chrome trace (%zu events) written to %s\n",
                   trace_event_count(), o.trace_path.c_str());
    } catch (const std::exception& ex) {
      std::fprintf(stderr, "[profile] %s\n", ex.what());
    }
  }
}

// ST_PROFILE=1 / ST_PROFILE_TRACE=file start the profiler before main().
struct FromEnvironment {
  FromEnvironment() {
    const char* on = std::getenv("ST_PROFILE");
    const char* trace = std::getenv("ST_PROFILE_TRACE");
    const bool table = on && *on && std::string(on) != "0";
    if (!table && !(trace && *trace)) return;
    Options o;
    if (trace) o.trace_path = trace;
    start(o);
    state().from_env = true;
  }
} g_from_environment;

}  // namespace

double now_us() noexcept {
  return std::chrono::duration<double, std::micro>(Clock::now() - state().origin).count();
}

void start(const Options& options) {
  State& s = state();
  {
    std::lock_guard<std::mutex> l(s.mu);
    static bool registered = false;
    if (!registered) {
      registered = true;
      std::atexit(report_at_exit);
    }
    s.options = options;
    s.origin = Clock::now();
    s.agg.clear();
    s.scopes.clear();
    s.trace.clear();
    s.trace_dropped = 0;
    s.pending.clear();
    s.device_tracks.clear();
    s.tracks.clear();
    s.reported = false;
    s.from_env = false;
    s.generation++;
  }
  detail::g_enabled.store(true, std::memory_order_relaxed);
}

void stop() { detail::g_enabled.store(false, std::memory_order_relaxed); }

void reset() {
  State& s = state();
  std::lock_guard<std::mutex> l(s.mu);
  s.agg.clear();
  s.scopes.clear();
  s.trace.clear();
  s.trace_dropped = 0;
  s.pending.clear();
}

bool started_from_environment() {
  std::lock_guard<std::mutex> l(state().mu);
  return state().from_env;
}

const char* intern(std::string_view v) {
  static auto* strings = new std::unordered_set<std::string>;
  std::lock_guard<std::mutex> l(intern_mutex());
  return strings->emplace(v).first->c_str();
}

void Scope::push(const char* name) noexcept {
  ts().scopes.push_back(name);
  pushed_ = true;
}
void Scope::pop() noexcept { ts().scopes.pop_back(); }

const char* current_scope() noexcept {
  if (!enabled()) return nullptr;
  const auto& s = ts().scopes;
  return s.empty() ? nullptr : s.back();
}

void BackwardScope::enter(const char* label, const char* scope) noexcept {
  ThreadState& t = ts();
  saved_label_ = t.label, saved_scope_ = t.bscope, saved_backward_ = t.backward;
  t.backward = true;
  t.label = label ? intern(label) : nullptr;  // one row per name, whichever literal holds it
  t.bscope = scope;
  t.kind_open = false;
  entered_ = true;
}
void BackwardScope::leave() noexcept {
  ThreadState& t = ts();
  t.label = saved_label_, t.bscope = saved_scope_, t.backward = saved_backward_;
}

void set_label(std::string_view label) {
  ThreadState& t = ts();
  if (!t.backward) return;
  t.label = intern(label);
  t.kind_open = false;
}

void count_kind(std::string_view kind) {
  ThreadState& t = ts();
  if (!t.backward) return;
  if (t.kind_open && t.label) {
    // "op.grad_x" + "op.grad_y" -> "op.grad_x+grad_y"
    std::string joined = t.label;
    const size_t dot = kind.find('.');
    const std::string_view op = dot == std::string_view::npos ? kind : kind.substr(0, dot + 1);
    joined += '+';
    joined += joined.rfind(op, 0) == 0 ? kind.substr(op.size()) : kind;
    t.label = intern(joined);
  } else {
    t.label = intern(kind);
  }
  t.kind_open = true;
}

void set_thread_name(const std::string& name) {
  ThreadState& t = ts();
  t.name = name;
  State& s = state();
  std::lock_guard<std::mutex> l(s.mu);
  if (t.track >= 0 && t.generation == s.generation && size_t(t.track) < s.tracks.size())
    s.tracks[size_t(t.track)] = name;
}

void record(const char* kernel, const Work& work, double start_us, double end_us) {
  const Meta m = meta_of(kernel, work);
  State& s = state();
  std::lock_guard<std::mutex> l(s.mu);
  add_locked(s, m, host_track_locked(s), start_us, end_us - start_us);
}

void record_async(const char* kernel, const Work& work, std::unique_ptr<DeviceTiming> timing) {
  const Meta m = meta_of(kernel, work);
  State& s = state();
  bool register_handler = false;
  {
    std::lock_guard<std::mutex> l(s.mu);
    // The device runtime registers its own exit handler when it starts, after start() registered
    // ours; handlers run in reverse order, so one registered now runs while the device is alive.
    if (!s.exit_handler_after_device) register_handler = s.exit_handler_after_device = true;
    s.pending.push_back({m, std::move(timing)});
    if (s.pending.size() >= kPendingBatch) drain_locked(s);
  }
  if (register_handler) std::atexit(report_at_exit);
}

std::vector<Row> rows() {
  State& s = state();
  std::lock_guard<std::mutex> l(s.mu);
  drain_locked(s);
  std::vector<Row> out;
  for (const auto& [key, a] : s.agg) {
    Row r;
    r.label = std::get<0>(key);
    r.kernel = std::get<1>(key);
    r.backward = std::get<2>(key);
    r.calls = a.calls;
    r.total_ms = a.total_ms;
    r.max_ms = a.max_ms;
    r.flops = a.flops;
    r.bytes = a.bytes;
    out.push_back(std::move(r));
  }
  std::sort(out.begin(), out.end(), [](const Row& a, const Row& b) {
    return a.total_ms != b.total_ms ? a.total_ms > b.total_ms
                                    : std::tie(a.label, a.kernel) < std::tie(b.label, b.kernel);
  });
  return out;
}

std::vector<ScopeRow> scope_rows() {
  State& s = state();
  std::lock_guard<std::mutex> l(s.mu);
  drain_locked(s);
  std::vector<std::pair<size_t, ScopeRow>> tmp;
  for (const auto& [name, a] : s.scopes)
    tmp.push_back({a.order, ScopeRow{name, a.fwd_calls, a.bwd_calls, a.fwd_ms, a.bwd_ms}});
  std::sort(tmp.begin(), tmp.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
  std::vector<ScopeRow> out;
  for (auto& t : tmp) out.push_back(std::move(t.second));
  return out;
}

double backward_ms_where(const std::function<bool(const std::string&)>& in) {
  double ms = 0;
  for (const auto& r : scope_rows())
    if (in(r.scope)) ms += r.backward_ms;
  return ms;
}

std::string tables() {
  const std::vector<Row> rs = rows();
  const std::vector<ScopeRow> ss = scope_rows();
  std::ostringstream o;
  char line[512];
  double total = 0;
  for (const auto& r : rs) total += r.total_ms;
  o << "\n[profile] time per kernel call (CPU: wall time of each call on its thread; CUDA: events "
       "on the device stream)\n";
  std::snprintf(line, sizeof line, "%-30s %-26s %3s %8s %11s %10s %10s %6s %8s %8s\n", "label",
                "kernel", "dir", "calls", "total ms", "mean ms", "max ms", "share", "GFLOP/s",
                "GB/s");
  o << line;
  for (const auto& r : rs) {
    char gf[32] = "", gb[32] = "";
    if (r.flops > 0 && r.total_ms > 0) std::snprintf(gf, sizeof gf, "%.1f", r.flops / (r.total_ms * 1e6));
    if (r.bytes > 0 && r.total_ms > 0) std::snprintf(gb, sizeof gb, "%.1f", r.bytes / (r.total_ms * 1e6));
    std::snprintf(line, sizeof line, "%-30s %-26s %3s %8lld %11.3f %10.4f %10.4f %5.1f%% %8s %8s\n",
                  r.label.c_str(), r.kernel.c_str(), r.backward ? "bwd" : "fwd",
                  static_cast<long long>(r.calls), r.total_ms, r.total_ms / double(r.calls),
                  r.max_ms, total > 0 ? 100.0 * r.total_ms / total : 0.0, gf, gb);
    o << line;
  }
  std::snprintf(line, sizeof line, "%-30s %-26s %3s %8s %11.3f\n", "total", "", "", "", total);
  o << line;
  o << "\n[profile] time per module scope (its own ops, not its children's)\n";
  std::snprintf(line, sizeof line, "%-34s %8s %12s %8s %12s\n", "scope", "fwd", "fwd ms", "bwd",
                "bwd ms");
  o << line;
  for (const auto& r : ss) {
    std::snprintf(line, sizeof line, "%-34s %8lld %12.3f %8lld %12.3f\n",
                  r.scope.empty() ? "(outside modules)" : r.scope.c_str(),
                  static_cast<long long>(r.forward_calls), r.forward_ms,
                  static_cast<long long>(r.backward_calls), r.backward_ms);
    o << line;
  }
  State& s = state();
  std::lock_guard<std::mutex> l(s.mu);
  if (s.trace_dropped)
    o << "[profile] the trace kept the first " << kMaxTraceEvents << " calls; " << s.trace_dropped
      << " more are in the tables only\n";
  return o.str();
}

void write_trace(const std::string& path) {
  State& s = state();
  std::lock_guard<std::mutex> l(s.mu);
  drain_locked(s);
  std::ofstream f(path);
  if (!f) throw Error("profile: cannot write the trace to " + path);
  f << "{\"displayTimeUnit\":\"ms\",\"traceEvents\":[";
  bool first = true;
  for (size_t i = 0; i < s.tracks.size(); ++i) {
    f << (first ? "\n" : ",\n") << "{\"name\":\"thread_name\",\"ph\":\"M\",\"pid\":0,\"tid\":" << i
      << ",\"args\":{\"name\":\"" << json_escape(s.tracks[i].c_str()) << "\"}}";
    first = false;
  }
  char num[64];
  for (const auto& e : s.trace) {
    f << (first ? "\n" : ",\n") << "{\"name\":\"" << json_escape(e.label) << "\",\"cat\":\""
      << (e.backward ? "backward" : "forward") << "\",\"ph\":\"X\",\"pid\":0,\"tid\":" << e.track;
    std::snprintf(num, sizeof num, ",\"ts\":%.3f,\"dur\":%.3f", e.ts_us, e.dur_us);
    f << num << ",\"args\":{\"kernel\":\"" << json_escape(e.kernel) << "\",\"scope\":\""
      << json_escape(e.scope) << "\"}}";
    first = false;
  }
  f << "\n]}\n";
  if (!f) throw Error("profile: writing the trace to " + path + " failed");
}

size_t trace_event_count() {
  State& s = state();
  std::lock_guard<std::mutex> l(s.mu);
  drain_locked(s);
  return s.trace.size();
}

}  // namespace st::profile
