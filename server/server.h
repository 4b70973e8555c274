// shadowtutor-server: accepts edge sessions over TCP (libuv event loop on its own thread), runs
// the teacher and Algorithm 1/2 for each key frame on libuv's worker pool, and answers with
// UPDATE (partial / full distillation) or LABELS (naive offloading). docs/protocol.md is the
// wire protocol; SPEC §4–§6 the algorithms.
//
//   ServerOptions o; o.port = 0; o.token = "secret";
//   o.teacher = [] { return std::make_unique<teachers::RecordedTeacher>("labels/"); };
//   Server s(o); s.start(); int port = s.port(); ... s.stop();
//
// Every session owns its Student copy (from the base weights) and its Distiller (Adam state
// persists for the session); one key frame at a time per session. A misbehaving client gets
// ERROR and its connection is closed; the others carry on.
#pragma once
#include <atomic>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "nn/blob.h"
#include "nn/distill.h"
#include "nn/update.h"
#include "protocol/protocol.h"
#include "teacher/teacher.h"

namespace st::server {

struct ServerOptions {
  std::string host = "127.0.0.1";
  int port = 0;                       // 0 = any free port; port() tells which
  std::string token;                  // HELLO.auth_token must equal it
  std::filesystem::path weights;      // base student weights; empty = Student(init_seed)
  uint64_t init_seed = 0;
  nn::DistillConfig distill;          // threshold, max updates, strides, lr
  // What partial sessions train (--train-from, --train-last, --train): announced in WELCOME
  // (protocol version 2). An edge that speaks only version 1 is refused any split but the
  // paper's (ERROR UnsupportedVersion).
  nn::PartialSplit split;
  // Compact updates (nn/update.h) for sessions of protocol version 2 in modes Partial and Full:
  // the server keeps a mirror of each edge's weights and sends what the codec makes of the
  // difference (UPDATE blob_kind 3, with the weights hash after it; RESYNC gets the whole student).
  // An edge that speaks only version 1 is then refused (ERROR UnsupportedVersion). Unset: plain
  // blobs in `encoding`.
  std::optional<nn::UpdateCodec> update;
  BlobEncoding encoding = BlobEncoding::F32;  // preferred (F32, F16); the other if HELLO refuses it
  // Key-frame encodings WELCOME accepts (protocol::kAccept* bits; raw always). Unset: every one
  // when the base student is trained (`weights` given), raw and PNG when it starts from random
  // initialisation: a student that learns its features on the frames it is sent runs worse on the
  // raw frames the edge segments if those were lossy, at any JPEG quality (docs/results.md,
  // "Bytes"). An edge that prefers JPEG then sends PNG.
  std::optional<uint8_t> accept_frames;
  size_t max_message_bytes = protocol::kDefaultMaxMessageSize;
  size_t max_sessions = 64;
  // Limits against hostile peers (docs/security.md). Connections that have not been welcomed:
  // at most max_pending at once, each must send HELLO within hello_timeout_s (an absolute
  // deadline). At most max_per_address connections (welcomed or not) from one IP address
  // (0 = no limit). A connection over a cap is answered ERROR(Busy) and closed.
  size_t max_pending = 64;
  size_t max_per_address = 32;
  double hello_timeout_s = 30;
  // Key frames: HELLO may announce at most this many pixels per frame (width x height); after
  // WELCOME a message may be at most 2 x width x height x 3 bytes + 64 KiB (a PNG or JPEG of the
  // frame, or the raw pixels), and never more than max_message_bytes.
  uint64_t max_frame_pixels = 1920 * 1080;
  // Bytes queued for a peer that does not read (PONGs, updates): over this, the session is
  // closed with ERROR(Overflow).
  size_t max_queued_bytes = size_t(16) << 20;
  bool offer_partial = true, offer_full = true, offer_naive = true;
  // A welcomed session that completes no message this long (not even a PONG; bytes trickling
  // in do not count) is closed with ERROR(Timeout); after half of it the server sends a PING.
  // 0 = never.
  double idle_timeout_s = 300;
  // Metrics (server/metrics.h) over HTTP in the Prometheus text format: GET /metrics on this
  // port of `host`, served by the same event loop. -1 = off, 0 = any free port (metrics_port()).
  int metrics_port = -1;
  Device device = Device::cpu();      // where sessions' students train (cuda:N: the GPU)
  // The compute budget: at most `jobs` key frames (teacher + distillation) are worked on at once,
  // each with `threads_per_job` OpenMP threads for its kernels; the others wait in arrival order
  // (a session has one key frame outstanding at most, so sessions are served round robin).
  // 0 = automatic: jobs = min(4, cores), threads_per_job = cores / jobs (cores: those this
  // process may run on). jobs x threads_per_job <= cores keeps sessions from oversubscribing
  // the CPU; a teacher command runs in its own process, outside this budget.
  int jobs = 0;
  int threads_per_job = 0;
  // Overload: when an UPDATE goes out while d key frames wait for a job slot, the stride it
  // announces is Algorithm 2's stretched by 1 + d / jobs (at most max_stride), so the edges send
  // key frames about as fast as the server works them off; the session's own stride (what
  // Algorithm 2 goes on from) is not changed, so strides come back when the queue empties.
  bool busy_stretch = true;
  // Session migration (protocol version 3): when HELLO names weights the server does not hold
  // (weights_hash is not its base's), WELCOME asks for them and the edge answers with its whole
  // student (WEIGHTS, fp32); the session continues from those weights, so an edge that reconnects
  // to this or another server keeps what it has learnt (its optimizer state starts afresh). Off,
  // or for an edge of version 1 or 2: WELCOME sends the server's full student instead, which
  // replaces the edge's weights.
  bool migrate = true;
  teachers::TeacherFactory teacher;   // required
  bool log = true;                    // one line per session event on stderr
  // Where log lines go when set (tests); else stderr. Text from peers is logged through
  // net::peer_text: printable ASCII, length-capped.
  std::function<void(const std::string&)> log_sink;
};

struct ServerStats {
  uint64_t sessions_opened = 0, sessions_closed = 0, sessions_active = 0;
  uint64_t key_frames = 0, updates = 0, errors_sent = 0, teacher_failures = 0;
  uint64_t bytes_in = 0, bytes_out = 0;
  uint64_t connections_refused = 0;  // over max_pending or max_per_address
  uint64_t overflows = 0;            // sessions closed with ERROR(Overflow)
  // Key-frame jobs (ServerOptions::jobs): running and waiting now, and the most seen at once.
  uint64_t jobs_running = 0, jobs_waiting = 0, max_jobs_running = 0, max_jobs_waiting = 0;
  uint64_t strides_stretched = 0;    // UPDATEs whose stride was lengthened for a busy server
  uint64_t migrations = 0;           // sessions continued from the edge's own weights (WEIGHTS in)
};

class Server {
 public:
  explicit Server(ServerOptions options);
  ~Server();  // stop()s
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // Loads the base weights, binds and listens (throws st::Error on failure), then runs the event
  // loop on a new thread.
  void start();
  // Sends ERROR(ShuttingDown) to every session, closes everything, waits for running worker
  // jobs, joins the loop thread. Idempotent.
  void stop();
  int port() const { return port_; }
  int metrics_port() const { return metrics_port_; }  // -1 when off
  bool running() const { return running_; }
  ServerStats stats() const;
  // Blocks the calling thread until the loop ends (stop() from another thread or a signal).
  void wait();
  // Graceful drain (SIGTERM): no new connections; sessions with no key frame in work are closed
  // with ERROR(ShuttingDown) at once, the others as soon as their answer has gone out (key
  // frames waiting for a job slot are still worked on). drained() is true when no session and
  // no job is left; drain() does both and stop()s, after at most timeout_s: true if everything
  // was answered in time.
  void begin_drain();
  bool drained() const;
  bool drain(double timeout_s);

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
  int port_ = 0, metrics_port_ = -1;
  std::atomic<bool> running_{false};
};

}  // namespace st::server
