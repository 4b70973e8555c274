// The kernel profiler: one for every backend, at the backend seam (tensor/backend.h).
//
// While it is on, backend_for() hands out a profiling backend that forwards every kernel of
// tensor/kernels.def (and memcpy) to the real one and records each call: its label, the kernel,
// the module scope, the thread, its time, and its work where the kernel's arguments say it
// (GFLOP/s for convolutions and matmul; GB/s from the sizes of the tensor arguments, each counted
// once: a lower bound of the traffic). Time is wall time around the call on the host for a
// synchronous backend (CPU), and CUDA events on the device's stream for the CUDA backend
// (Backend::start_timing), resolved later, so timing never serialises the stream.
//
// Labels name the work as the autograd counters do (tensor/autograd.h): a forward kernel by its
// kernel name ("conv2d_forward"); a kernel run in a backward pass by the kind the op counted just
// before it ("conv2d.grad_weight"; kinds that one kernel computes together are joined with '+'),
// or by the autograd node's name when it counted none yet, and "autograd.accumulate" for
// summing gradients. Module scopes ("dec2.long_path.0") come from the
// nn layer's Scope guards; a backward kernel gets the scope of the forward op whose node it runs.
//
// Off (the default), the whole cost is one relaxed atomic load per backend_for(), module call and
// autograd node. On: ST_PROFILE=1 prints the tables at exit; ST_PROFILE_TRACE=file.json also
// writes a Chrome trace (chrome://tracing, ui.perfetto.dev: one track per host thread, one per
// CUDA device stream); programs' --profile FILE calls start() with the trace path.
#pragma once
#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace st::profile {

namespace detail {
extern std::atomic<bool> g_enabled;
}
// Whether kernel calls are being recorded.
inline bool enabled() noexcept { return detail::g_enabled.load(std::memory_order_relaxed); }

struct Options {
  std::string trace_path;  // Chrome trace JSON written at exit (or by write_trace); "" = none
  bool at_exit = true;  // at exit: print the tables to stderr, write the trace (if a path is set)
};
// Starts recording, dropping whatever was recorded before. Thread-safe, but meant to be called
// before the work to profile (a kernel call in flight on another thread may be missed).
void start(const Options& options = {});
// Stops recording; what was recorded stays until the next start() or reset().
void stop();
void reset();
// ST_PROFILE / ST_PROFILE_TRACE were set when the process started (they start the profiler).
bool started_from_environment();

// A string that lives until the process exits (labels and scope names must outlive records).
const char* intern(std::string_view s);

// The module scope of the calling thread: nn modules open one around their forward.
class Scope {
 public:
  explicit Scope(const char* name) noexcept {
    if (enabled()) push(name);
  }
  ~Scope() {
    if (pushed_) pop();
  }
  Scope(const Scope&) = delete;
  Scope& operator=(const Scope&) = delete;

 private:
  void push(const char* name) noexcept;
  void pop() noexcept;
  bool pushed_ = false;
};
// The innermost open scope of the calling thread (nullptr: none, or profiling is off).
const char* current_scope() noexcept;

// The autograd engine runs each node's backward inside one: kernels called in it are backward
// kernels, labelled `label` (the node's name) and attributed to `scope` (the node's forward
// scope) until set_label() changes the label.
class BackwardScope {
 public:
  BackwardScope(const char* label, const char* scope) noexcept {
    if (enabled()) enter(label, scope);
  }
  ~BackwardScope() {
    if (entered_) leave();
  }
  BackwardScope(const BackwardScope&) = delete;
  BackwardScope& operator=(const BackwardScope&) = delete;

 private:
  void enter(const char* label, const char* scope) noexcept;
  void leave() noexcept;
  bool entered_ = false;
  const char* saved_label_ = nullptr;
  const char* saved_scope_ = nullptr;
  bool saved_backward_ = false;
};
// Relabels the calling thread's next kernels (inside a BackwardScope). `label` is interned.
void set_label(std::string_view label);
// count_backward_kernel's kind: relabels like set_label, except that kinds counted with no
// kernel between them share the kernel that follows ("batch_norm.grad_input+grad_affine": one
// kernel computes both).
void count_kind(std::string_view kind);
// Names the calling thread's track in the trace ("server worker 2").
void set_thread_name(const std::string& name);

// What a kernel call does, as far as its arguments say.
struct Work {
  double flops = 0;  // 0: not known
  double bytes = 0;  // tensor arguments' sizes, each once
};

// A timer that a backend with asynchronous kernels starts before a call (Backend::start_timing);
// the profiler calls stop() right after the call returns and elapsed() later.
class DeviceTiming {
 public:
  virtual ~DeviceTiming() = default;
  virtual void stop() = 0;
  // Waits for the work, then gives its start (microseconds since the device's first timing)
  // and duration. False when the time cannot be had (the record is dropped).
  virtual bool elapsed(double& start_us, double& duration_us) = 0;
  virtual std::string track() const = 0;  // "cuda:0 stream"
};

// Records one call timed on the host (microseconds since the profiler started).
void record(const char* kernel, const Work& work, double start_us, double end_us);
// Records one call timed by the device; resolved in batches and at report time.
void record_async(const char* kernel, const Work& work, std::unique_ptr<DeviceTiming> timing);
// Microseconds since the profiler started (steady clock).
double now_us() noexcept;

// ---- results ----
struct Row {
  std::string label, kernel;
  bool backward = false;
  int64_t calls = 0;
  double total_ms = 0, max_ms = 0, flops = 0, bytes = 0;
};
// One row per (label, kernel, forward/backward), largest total first.
std::vector<Row> rows();
struct ScopeRow {
  std::string scope;  // "" for work outside any module
  int64_t forward_calls = 0, backward_calls = 0;
  double forward_ms = 0, backward_ms = 0;
};
// One row per module scope (exact scope, not including its children), in first-seen order.
std::vector<ScopeRow> scope_rows();
// Backward milliseconds of the scopes for which `in` is true.
double backward_ms_where(const std::function<bool(const std::string& scope)>& in);
// The two tables as text.
std::string tables();
// Writes the Chrome trace (JSON object format: traceEvents, "X" events, thread-name metadata).
// Throws st::Error naming the file when it cannot be written.
void write_trace(const std::string& path);
size_t trace_event_count();

}  // namespace st::profile
