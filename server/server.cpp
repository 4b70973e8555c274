// The libuv server (server.h). Threading: one loop thread owns every uv handle and all session
// protocol state; key-frame work (teacher + Algorithm 1/2 + blob packing) runs on libuv's worker
// pool (uv_queue_work). A Session is held by a shared_ptr in the server's table until its handles
// are closed, and by every worker job in flight, so a job whose client vanished finishes on live
// memory and its result is dropped.
#include "server/server.h"

#include "server/metrics.h"

#include <omp.h>
#include <uv.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <deque>
#include <mutex>
#include <thread>
#include <unordered_map>
#include <unordered_set>

#include "nn/key_frame.h"
#include "protocol/conversation.h"
#include "protocol/decoder.h"
#include "net/net.h"
#include "io/frame_decoder.h"
#include "tensor/autograd.h"
#include "tensor/image.h"

namespace st::server {

// WELCOME.train_from counts the student's blocks as nn/student.h does.
static_assert(protocol::kMaxTrainFrom == nn::kStudentBlocks - 1);
static_assert(protocol::kPaperTrainFrom == nn::kDefaultSplit);

using namespace st::protocol;

namespace {
constexpr size_t kReadChunk = 64 * 1024;
constexpr uint64_t kCloseTimeoutMs = 3000;   // flushing the last messages at most this long

std::string uv_err(int rc) { return std::string(uv_err_name(rc)) + " (" + uv_strerror(rc) + ")"; }

std::string clip_text(std::string s) {
  if (s.size() > kMaxErrorText) s.resize(kMaxErrorText);
  return s;
}
struct Job;
struct MetricsConn;
}  // namespace

struct Session;

struct Server::Impl {
  ServerOptions opt;
  uv_loop_t loop{};
  uv_tcp_t listener{};
  uv_async_t stop_async{}, drain_async{};
  bool draining = false;  // loop thread only
  std::thread thread;
  bool loop_ready = false;
  bool stopping = false;  // loop thread only

  std::unique_ptr<nn::Student> base;
  uint64_t base_hash = 0, layout = 0;
  uint8_t accept_frames = kAcceptRawBgr;  // WELCOME.accept_frames (ServerOptions::accept_frames)
  std::vector<uint8_t> full_blob[3];  // indexed by BlobEncoding (F32, F16)

  std::unordered_map<Session*, std::shared_ptr<Session>> sessions;  // loop thread only
  uint64_t next_id = 1;

  // The compute budget (ServerOptions::jobs, threads_per_job): at most job_slots key-frame jobs
  // on libuv's pool at once, each running its kernels on threads_per_job OpenMP threads; the
  // others wait here in arrival order. A session has at most one key frame outstanding, so this
  // serves the sessions round robin. Loop thread only.
  int job_slots = 1, threads_per_job = 1, running_jobs = 0;
  std::deque<Job*> waiting;

  // Metrics (ServerOptions::metrics_port): the listener, open scrapes, latencies. Loop thread only.
  uv_tcp_t metrics_listener{};
  bool metrics_on = false;
  std::unordered_set<MetricsConn*> metrics_conns;
  LatencyHistogram key_frame_latency, teacher_latency, distill_latency;

  mutable std::mutex stats_mu;
  ServerStats stats;
  template <class F>
  void count(F&& f) {
    std::lock_guard<std::mutex> l(stats_mu);
    f(stats);
  }
  // Connections refused (over max_pending / max_per_address) since the last log line about
  // them: a flood is logged once a second, not once per connection.
  uint64_t refused_unlogged = 0, refusal_logged_ms = 0;
  std::string last_refusal;

  void log(const std::string& s) const {
    if (!opt.log) return;
    if (opt.log_sink)
      opt.log_sink(net::escape_nonprintable(s, false));
    else
      net::log_line("server", s);
  }
};

struct Session {
  Server::Impl* srv = nullptr;
  uint64_t id = 0;
  std::string peer;
  std::string ip;       // the peer's address without the port (max_per_address)
  bool refused = false;  // over a connection cap: closed at once, not logged as a session
  uv_tcp_t tcp{};
  uv_timer_t timer{};  // HELLO deadline, then the flush deadline when closing
  int open_handles = 0;

  Decoder dec;
  Encoder enc;
  Conversation conv{Role::Server};
  std::vector<char> rbuf = std::vector<char>(kReadChunk);

  // Set at HELLO on the loop thread; then only read.
  Mode mode = Mode::Partial;
  nn::Distillation dmode = nn::Distillation::Partial;  // nn::distillation_of(mode)
  BlobEncoding blob_enc = BlobEncoding::F32;
  uint32_t width = 0, height = 0;

  // Used only by the (single) worker job in flight, and by the loop thread while none is.
  std::unique_ptr<nn::UpdateEncoder> updater;  // compact updates: the mirror of the edge
  std::unique_ptr<nn::Student> student;
  std::unique_ptr<nn::Distiller> distiller;
  std::unique_ptr<teachers::Teacher> teacher;
  int stride = 8;

  // Loop thread state.
  bool welcomed = false, busy = false, bye_received = false, closing = false;
  bool resync_pending = false;  // RESYNC received while a job was in flight: WEIGHTS after it
  // WELCOME asked for the edge's weights (migration): they must hash to HELLO's weights_hash.
  bool weights_wanted = false;
  uint64_t hello_weights_hash = 0;
  size_t frame_limit = 0;  // the largest message after WELCOME (a key frame of HELLO's size)
  uint64_t last_rx_ms = 0;  // uv_now when the last whole message arrived (or WELCOME was sent)
  bool ping_out = false;    // an idle PING is unanswered
  uint64_t ping_nonce = 0;
  std::atomic<bool> gone{false};  // read by workers: skip the work

  explicit Session(DecoderOptions o) : dec(o) {}
  std::string name() const { return "session " + std::to_string(id) + " (" + peer + ")"; }
};

namespace {

struct WriteReq {
  uv_write_t req;
  Session* s;
  std::vector<uint8_t> bytes;
};

struct Job {
  uv_work_t req;
  std::shared_ptr<Session> s;
  KeyFrame kf;
  std::optional<Body> answer;
  std::optional<ErrorMessage> error;
  std::string detail;  // for the server log only: may name files (not sent to the peer)
  bool teacher_failed = false;
  uint64_t arrived_ns = 0;                    // uv_hrtime() when the KEY_FRAME was complete
  double teacher_s = -1, distill_s = -1;      // measured in work(); -1: did not run
};

void close_session(Session& s, std::optional<ErrorMessage> err, uint64_t flush_ms = kCloseTimeoutMs);

void on_handle_closed(uv_handle_t* h) {
  Session* s = static_cast<Session*>(h->data);
  if (--s->open_handles > 0) return;
  Server::Impl* srv = s->srv;
  srv->count([](ServerStats& st) {
    st.sessions_closed++;
    st.sessions_active--;
  });
  if (!s->refused) srv->log(s->name() + " closed");
  srv->sessions.erase(s);  // the last reference may be a worker job's: it frees the session
}

void force_close(Session& s) {
  if (!uv_is_closing(reinterpret_cast<uv_handle_t*>(&s.tcp)))
    uv_close(reinterpret_cast<uv_handle_t*>(&s.tcp), on_handle_closed);
  if (!uv_is_closing(reinterpret_cast<uv_handle_t*>(&s.timer)))
    uv_close(reinterpret_cast<uv_handle_t*>(&s.timer), on_handle_closed);
}

void on_write(uv_write_t* r, int status) {
  std::unique_ptr<WriteReq> w(static_cast<WriteReq*>(r->data));
  Session& s = *w->s;
  if (status < 0) {
    if (status != UV_ECANCELED && !s.closing) {
      s.srv->log(s.name() + ": write failed: " + uv_err(status));
      close_session(s, std::nullopt, 0);
    }
    return;
  }
  s.srv->count([&](ServerStats& st) { st.bytes_out += w->bytes.size(); });
}

// Encodes, checks against the conversation rules and queues one message. Once the session is
// closing only its ERROR goes out (check = false). A peer that lets more than max_queued_bytes
// pile up (it does not read) is closed with ERROR(Overflow).
void send(Session& s, Body body, bool check = true) {
  if (check && s.closing) return;
  Message m{s.enc.next_seq(), s.enc.version(), body};
  if (check) s.conv.on_send(m);
  auto* w = new WriteReq;
  w->req.data = w;
  w->s = &s;
  w->bytes = s.enc.encode(std::move(body));
  uv_buf_t b = uv_buf_init(reinterpret_cast<char*>(w->bytes.data()), unsigned(w->bytes.size()));
  int rc = uv_write(&w->req, reinterpret_cast<uv_stream_t*>(&s.tcp), &b, 1, on_write);
  if (rc < 0) {
    delete w;
    throw Error("write: " + uv_err(rc));
  }
  const size_t queued = uv_stream_get_write_queue_size(reinterpret_cast<uv_stream_t*>(&s.tcp));
  if (check && queued > s.srv->opt.max_queued_bytes) {
    s.srv->count([](ServerStats& st) { st.overflows++; });
    close_session(s, ErrorMessage{ErrorCode::Overflow,
                                  std::to_string(queued) + " bytes queued for a peer that does "
                                  "not read, above the limit of " +
                                      std::to_string(s.srv->opt.max_queued_bytes)});
  }
}

void on_shutdown(uv_shutdown_t* req, int status) {
  Session* s = static_cast<Session*>(req->data);
  delete req;
  force_close(*s);
}

void on_close_timer(uv_timer_t* t) { force_close(*static_cast<Session*>(t->data)); }

// Stops reading, sends ERROR when given (best effort), flushes what is queued and closes.
void close_session(Session& s, std::optional<ErrorMessage> err, uint64_t flush_ms) {
  if (s.closing) return;
  s.closing = true;
  s.gone = true;
  auto* stream = reinterpret_cast<uv_stream_t*>(&s.tcp);
  uv_read_stop(stream);
  if (err) {
    err->text = clip_text(err->text);
    if (!s.refused)
      s.srv->log(s.name() + ": sending ERROR " + error_code_name(err->code) + ": " + err->text);
    s.srv->count([](ServerStats& st) { st.errors_sent++; });
    try {
      send(s, *err, false);
    } catch (const std::exception&) {
    }
  }
  if (flush_ms == 0) {
    force_close(s);
    return;
  }
  uv_timer_stop(&s.timer);
  uv_timer_start(&s.timer, on_close_timer, flush_ms, 0);
  auto* req = new uv_shutdown_t;
  req->data = &s;
  if (uv_shutdown(req, stream, on_shutdown) < 0) {
    delete req;
    force_close(s);
  }
}

void on_hello_timer(uv_timer_t* t) {
  Session& s = *static_cast<Session*>(t->data);
  if (!s.welcomed) {
    char text[64];
    std::snprintf(text, sizeof text, "no HELLO within %.1f s", s.srv->opt.hello_timeout_s);
    close_session(s, ErrorMessage{ErrorCode::Timeout, text});
  }
}

// After WELCOME: PING a silent peer after half the idle timeout, drop it after all of it.
void on_idle_timer(uv_timer_t* t) {
  Session& s = *static_cast<Session*>(t->data);
  if (s.closing) return;
  const double idle_s = s.srv->opt.idle_timeout_s;
  const uint64_t limit = uint64_t(idle_s * 1000.0);
  const uint64_t quiet = uv_now(&s.srv->loop) - s.last_rx_ms;
  if (quiet >= limit) {
    char text[96];
    std::snprintf(text, sizeof text, "no message for %.1f s (an idle PING went unanswered)",
                  double(quiet) / 1000.0);
    close_session(s, ErrorMessage{ErrorCode::Timeout, text});
  } else if (quiet >= limit / 2 && !s.ping_out) {
    try {
      send(s, Ping{++s.ping_nonce});
      s.ping_out = true;
    } catch (const std::exception& e) {
      close_session(s, ErrorMessage{ErrorCode::Internal, e.what()});
    }
  }
}

// What an edge holds after `full_blob` (a plain Distillation::Full blob), or the base weights
// when it is empty, with the server's split: where a mirror of that edge starts.
std::unique_ptr<nn::Student> edge_weights_after(Server::Impl& srv,
                                                const std::vector<uint8_t>& full_blob) {
  auto e = std::make_unique<nn::Student>(srv.opt.init_seed);
  e->set_partial_split(srv.opt.split);
  e->load_state(srv.base->named_parameters(), "server base weights");
  if (!full_blob.empty())
    nn::unpack_trained(*e, nn::Distillation::Full, full_blob.data(), full_blob.size());
  return e;
}

// The session's student and its distiller (fresh Adam state), from `weights` (the base, or the
// edge's own after a migration), on the server's device.
void start_training(Session& s, std::unique_ptr<nn::Student> weights) {
  s.student = std::move(weights);
  s.student->to(s.srv->opt.device);  // training runs there (the distiller moves frame and target)
  s.distiller = std::make_unique<nn::Distiller>(*s.student, s.dmode, s.srv->opt.distill);
}

void answer_resync(Session& s);

// ---- worker side ----

void work(uv_work_t* r) {
  Job& j = *static_cast<Job*>(r->data);
  Session& s = *j.s;
  if (s.gone) return;
  // This worker thread's OpenMP team size (a per-thread setting): the job's share of the cores.
  omp_set_num_threads(s.srv->threads_per_job);
  const int64_t H = j.kf.height, W = j.kf.width;
  if (j.kf.encoding != FrameEncoding::RawBgr) {  // PNG / JPEG: decode here, off the loop
    try {
      // TurboJPEG / libspng, the header's size checked first (io/frame_decoder.h).
      j.kf.data = io::decode_key_frame_bgr(j.kf.data.data(), j.kf.data.size(), j.kf.encoding, W, H);
      j.kf.encoding = FrameEncoding::RawBgr;
    } catch (const std::exception& e) {
      j.error = ErrorMessage{ErrorCode::BadFrame, e.what()};
      return;
    }
  }
  try {
    teachers::TeacherOutput t;
    try {
      const uint64_t t0 = uv_hrtime();
      t = s.teacher->run(j.kf.frame_index, j.kf.data.data(), H, W);
      j.teacher_s = double(uv_hrtime() - t0) * 1e-9;
      ST_CHECK(t.height == H && t.width == W && t.labels.size() == size_t(H * W),
               "teacher answered a ", t.width, "x", t.height, " label map for a ", W, "x", H,
               " frame");
    } catch (const std::exception& e) {
      j.teacher_failed = true;
      j.error = ErrorMessage{ErrorCode::Internal, "the teacher failed on frame " +
                                                      std::to_string(j.kf.frame_index) +
                                                      " (the server log says why)"};
      j.detail = std::string("teacher failed on frame ") + std::to_string(j.kf.frame_index) +
                 ": " + e.what();
      return;
    }
    if (s.mode == Mode::Naive) {
      j.answer = Labels{j.kf.frame_index, j.kf.width, j.kf.height, std::move(t.labels)};
      return;
    }
    if (!s.student) start_training(s, edge_weights_after(*s.srv, {}));
    if (s.gone) return;
    const uint64_t d0 = uv_hrtime();
    Tensor x = nn::Student::preprocess_bgr(j.kf.data.data(), H, W);
    nn::KeyFrameAnswer a = nn::answer_key_frame(*s.distiller, x, t.labels, H, W,
                                                t.boxes ? &*t.boxes : nullptr, s.stride,
                                                s.blob_enc);
    s.stride = a.next_stride;
    Update u;
    u.key_frame = j.kf.frame_index;
    u.next_stride = uint32_t(s.stride);
    u.accuracy = std::clamp(float(a.outcome.acc), 0.f, 1.f);
    if (!std::isfinite(u.accuracy)) u.accuracy = 0.f;
    u.steps = uint32_t(a.outcome.steps);
    if (a.outcome.steps > 0 && s.updater) {  // against the mirror of the edge's weights
      u.blob_kind = BlobEncoding::Update;
      u.blob = s.updater->encode(*s.student);
    } else if (a.outcome.steps > 0) {
      u.blob_kind = s.blob_enc;
      u.blob = std::move(a.blob);
    }
    j.answer = std::move(u);
    j.distill_s = double(uv_hrtime() - d0) * 1e-9;
  } catch (const std::exception& e) {
    j.error = ErrorMessage{ErrorCode::Internal, "key frame " + std::to_string(j.kf.frame_index) +
                                                    ": internal error (the server log says why)"};
    j.detail = "key frame " + std::to_string(j.kf.frame_index) + ": " + e.what();
  }
}

void after_work(uv_work_t* r, int status);
constexpr const char* kDrainText = "the server is draining: connect again (to another server)";

// Runs `j` now if a job slot is free, else queues it behind the others.
void submit(Server::Impl& srv, Job* j) {
  if (srv.running_jobs >= srv.job_slots) {
    srv.waiting.push_back(j);
    srv.count([&](ServerStats& st) {
      st.jobs_waiting = srv.waiting.size();
      st.max_jobs_waiting = std::max<uint64_t>(st.max_jobs_waiting, srv.waiting.size());
    });
    return;
  }
  int rc = uv_queue_work(&srv.loop, &j->req, work, after_work);
  if (rc < 0) {
    j->s->busy = false;
    delete j;
    throw ProtocolError(ErrorCode::Internal, "cannot queue work: " + uv_err(rc));
  }
  ++srv.running_jobs;
  srv.count([&](ServerStats& st) {
    st.jobs_running = uint64_t(srv.running_jobs);
    st.max_jobs_running = std::max<uint64_t>(st.max_jobs_running, uint64_t(srv.running_jobs));
  });
}

// A slot came free: the first waiting job whose session is still there runs.
void run_next(Server::Impl& srv) {
  while (!srv.waiting.empty() && srv.running_jobs < srv.job_slots) {
    Job* j = srv.waiting.front();
    srv.waiting.pop_front();
    srv.count([&](ServerStats& st) { st.jobs_waiting = srv.waiting.size(); });
    if (j->s->closing || srv.stopping) {
      j->s->busy = false;
      delete j;
      continue;
    }
    try {
      submit(srv, j);
    } catch (const ProtocolError& e) {
      close_session(*j->s, ErrorMessage{e.code(), e.text()});
    }
  }
}

void after_work(uv_work_t* r, int status) {
  std::unique_ptr<Job> j(static_cast<Job*>(r->data));
  Session& s = *j->s;
  s.busy = false;
  --s.srv->running_jobs;
  const size_t waiting = s.srv->waiting.size();  // key frames queued behind this one
  if (j->teacher_s >= 0) s.srv->teacher_latency.observe(j->teacher_s);
  if (j->distill_s >= 0) s.srv->distill_latency.observe(j->distill_s);
  if (j->answer && !s.closing && status >= 0)
    s.srv->key_frame_latency.observe(double(uv_hrtime() - j->arrived_ns) * 1e-9);
  s.srv->count([&](ServerStats& st) { st.jobs_running = uint64_t(s.srv->running_jobs); });
  run_next(*s.srv);
  if (j->teacher_failed) s.srv->count([](ServerStats& st) { st.teacher_failures++; });
  if (s.closing || status < 0) return;  // the client went away: drop the result
  try {
    if (!j->detail.empty()) s.srv->log(s.name() + ": " + j->detail);
    if (j->error) {
      close_session(s, j->error);
      return;
    }
    if (!j->answer) return;
    if (auto* u = std::get_if<Update>(&*j->answer))
      s.srv->log(s.name() + ": key frame " + std::to_string(u->key_frame) + ": " +
                 std::to_string(u->steps) + " steps, mIoU " + std::to_string(u->accuracy) +
                 ", next stride " + std::to_string(u->next_stride));
    if (auto* u = std::get_if<Update>(&*j->answer); u && s.srv->opt.busy_stretch) {
      Server::Impl& srv = *s.srv;
      const size_t d = waiting;
      if (d > 0) {  // the server is behind: the edge waits longer before its next key frame
        const double f = 1.0 + double(d) / double(srv.job_slots);
        const uint32_t stretched = uint32_t(std::min<double>(
            double(srv.opt.distill.max_stride), std::ceil(double(u->next_stride) * f)));
        if (stretched > u->next_stride) {
          srv.log(s.name() + ": " + std::to_string(d) + " key frames waiting: stride " +
                  std::to_string(u->next_stride) + " -> " + std::to_string(stretched));
          u->next_stride = stretched;
          srv.count([](ServerStats& st) { st.strides_stretched++; });
        }
      }
    }
    send(s, std::move(*j->answer));
    s.srv->count([](ServerStats& st) { st.updates++; });
    if (s.resync_pending) answer_resync(s);
    if (s.bye_received) {
      send(s, Bye{});
      close_session(s, std::nullopt);
    } else if (s.srv->draining) {
      close_session(s, ErrorMessage{ErrorCode::ShuttingDown, kDrainText});
    }
  } catch (const ProtocolError& e) {
    close_session(s, ErrorMessage{e.code(), e.text()});
  } catch (const std::exception& e) {
    close_session(s, ErrorMessage{ErrorCode::Internal, e.what()});
  }
}

// ---- loop side: messages ----

// The edge's weights are not what the mirror says: send it the whole student (the session's, or
// the base before its first key frame) and make the mirror that.
void answer_resync(Session& s) {
  Server::Impl& srv = *s.srv;
  s.resync_pending = false;
  const nn::Student& now = s.student ? *s.student : *srv.base;
  Weights w;
  w.blob_kind = s.blob_enc;
  w.blob = nn::pack_trained(now, nn::Distillation::Full, s.blob_enc);
  if (s.updater) s.updater->reset(*edge_weights_after(srv, w.blob));
  send(s, std::move(w));
  srv.log(s.name() + ": RESYNC answered with the whole student");
}

void handle_hello(Session& s, const Hello& h) {
  Server::Impl& srv = *s.srv;
  const ServerOptions& opt = srv.opt;
  auto v = negotiate_version(h.min_version, h.max_version);
  if (!v)
    throw ProtocolError(ErrorCode::UnsupportedVersion,
                        "server speaks " + std::to_string(kVersionMin) + ".." +
                            std::to_string(kVersionMax) + ", HELLO offers " +
                            std::to_string(h.min_version) + ".." + std::to_string(h.max_version));
  if (!constant_time_equal(h.auth_token, opt.token))
    throw ProtocolError(ErrorCode::AuthFailed, "HELLO.auth_token refused");
  const uint64_t pixels = uint64_t(h.frame_width) * h.frame_height;
  if (pixels > opt.max_frame_pixels)
    throw ProtocolError(ErrorCode::BadFrame,
                        "HELLO announces " + std::to_string(h.frame_width) + "x" +
                            std::to_string(h.frame_height) + " frames (" +
                            std::to_string(pixels) + " pixels); this server takes at most " +
                            std::to_string(opt.max_frame_pixels) + " pixels per key frame");
  if (h.layout_hash != srv.layout)
    throw ProtocolError(ErrorCode::LayoutMismatch,
                        "HELLO.layout_hash " + std::to_string(h.layout_hash) +
                            " is not the server student's " + std::to_string(srv.layout));
  const bool offered = (h.mode == Mode::Partial && opt.offer_partial) ||
                       (h.mode == Mode::Full && opt.offer_full) ||
                       (h.mode == Mode::Naive && opt.offer_naive);
  if (!offered)
    throw ProtocolError(ErrorCode::UnsupportedMode,
                        "HELLO.mode " + std::to_string(int(h.mode)) + " is not offered");
  const bool paper_split = opt.split == nn::PartialSplit{};
  if (opt.update && h.mode != Mode::Naive && *v < 2)
    throw ProtocolError(ErrorCode::UnsupportedVersion,
                        "this server sends compact updates (" + opt.update->name() +
                            "), which a version-1 UPDATE cannot carry (HELLO offers " +
                            std::to_string(h.min_version) + ".." +
                            std::to_string(h.max_version) + ", they need version 2)");
  if (h.mode == Mode::Partial && !paper_split && *v < 2)
    throw ProtocolError(ErrorCode::UnsupportedVersion,
                        "this server trains partial sessions from " + nn::split_name(opt.split) +
                            "; a version-1 WELCOME cannot announce that split (HELLO offers " +
                            std::to_string(h.min_version) + ".." +
                            std::to_string(h.max_version) + ", the split needs version 2)");
  size_t active = 0;
  for (auto& [p, sp] : srv.sessions)
    if (sp->welcomed && !sp->closing) ++active;
  if (active >= opt.max_sessions)
    throw ProtocolError(ErrorCode::Busy, "the server has " + std::to_string(active) +
                                             " sessions, its limit");

  // Blob encoding: the preferred one when the edge applies it, else the other.
  BlobEncoding enc = opt.encoding;
  auto accepts = [&](BlobEncoding e) {
    return (h.accept_blobs & (e == BlobEncoding::F32 ? kAcceptF32 : kAcceptF16)) != 0;
  };
  if (!accepts(enc)) enc = enc == BlobEncoding::F32 ? BlobEncoding::F16 : BlobEncoding::F32;
  s.blob_enc = enc;
  s.mode = h.mode;
  s.dmode = nn::distillation_of(h.mode);
  s.width = h.frame_width;
  s.height = h.frame_height;
  s.stride = opt.distill.min_stride;
  s.teacher = opt.teacher();

  Welcome w;
  w.version = *v;
  w.session_id = s.id;
  w.mode = h.mode;
  w.min_stride = uint32_t(opt.distill.min_stride);
  w.max_stride = uint32_t(opt.distill.max_stride);
  w.threshold = float(opt.distill.threshold);
  w.accept_frames = srv.accept_frames;
  w.train_from = implied_train_from(h.mode);  // version 1: the paper's split (checked above)
  if (*v >= 2 && h.mode == Mode::Partial) {
    w.train_from = uint8_t(opt.split.first);
    w.train = opt.split.bias_only ? TrainedTensors::BiasOnly : TrainedTensors::All;
  }
  // What an edge's WEIGHTS message is (5 bytes + the fp32 student blob): asked for only when
  // the message limit lets it through.
  const size_t weights_message = kHeaderSize + 5 + srv.full_blob[size_t(BlobEncoding::F32)].size();
  const bool migrate = opt.migrate && *v >= 3 && h.mode != Mode::Naive &&
                       weights_message <= opt.max_message_bytes;
  if (h.weights_hash != srv.base_hash && migrate) {
    // Session migration: the edge's weights are not the base; they are what the session goes
    // on from.
    w.scope = WeightsScope::Wanted;
    w.blob_kind = BlobEncoding::None;
    s.weights_wanted = true;
    s.hello_weights_hash = h.weights_hash;
  } else if (h.weights_hash != srv.base_hash) {
    // The edge's weights are not the server's base: send the full student.
    w.scope = WeightsScope::Full;
    w.blob_kind = enc;
    w.blob = srv.full_blob[size_t(enc)];
  } else {
    w.scope = WeightsScope::Trained;  // a new session's trained part is the base's: keep it
    w.blob_kind = BlobEncoding::None;
  }
  const bool full = w.scope == WeightsScope::Full;
  if (opt.update && h.mode != Mode::Naive)  // the mirror starts at what the edge holds now
    s.updater = std::make_unique<nn::UpdateEncoder>(*edge_weights_after(srv, w.blob), s.dmode,
                                                    *opt.update);
  s.enc.set_version(*v);  // WELCOME already goes under the version it announces
  send(s, std::move(w));
  s.dec.set_versions(*v, *v);
  // From now on any type, up to the largest key frame of this frame size (a PNG or JPEG of
  // noise can be larger than the raw pixels, never twice as large).
  s.frame_limit = size_t(std::min<uint64_t>(opt.max_message_bytes,
                                            kHeaderSize + 2 * pixels * 3 + (64u << 10)));
  s.dec.set_limits(s.weights_wanted ? std::max(s.frame_limit, weights_message) : s.frame_limit,
                   DecoderOptions::kAllTypes);
  s.welcomed = true;
  s.last_rx_ms = uv_now(&srv.loop);
  uv_timer_stop(&s.timer);
  if (opt.idle_timeout_s > 0) {
    const uint64_t period = std::max<uint64_t>(10, uint64_t(opt.idle_timeout_s * 250.0));
    uv_timer_start(&s.timer, on_idle_timer, period, period);
  }
  srv.log(s.name() + ": WELCOME " + net::peer_text(h.edge_name) + " mode " +
          std::to_string(int(h.mode)) +
          " " + std::to_string(h.frame_width) + "x" + std::to_string(h.frame_height) +
          (h.mode == Mode::Partial ? ", training from " + nn::split_name(opt.split) : "") +
          (full                ? ", sent the full student"
           : s.weights_wanted ? ", asked for the edge's weights"
                              : ", weights in sync"));
}

// Session migration: the edge's whole student, asked for in WELCOME. The session's student and
// the mirror of the edge (compact updates) become exactly those weights.
void handle_edge_weights(Session& s, const Weights& w) {
  Server::Impl& srv = *s.srv;
  std::unique_ptr<nn::Student> e;
  try {
    e = edge_weights_after(srv, w.blob);  // layout, size and finite values checked
  } catch (const std::exception& ex) {
    throw ProtocolError(ErrorCode::Malformed, std::string("WEIGHTS: ") + ex.what());
  }
  const uint64_t got = nn::weights_hash(*e);
  if (got != s.hello_weights_hash)
    throw ProtocolError(ErrorCode::WeightsMismatch,
                        "WEIGHTS hash to " + std::to_string(got) + ", HELLO.weights_hash is " +
                            std::to_string(s.hello_weights_hash));
  if (s.updater) s.updater->reset(*e);
  start_training(s, std::move(e));
  s.distiller->continue_adapted();  // adapted weights: no cold-start Adam steps
  s.weights_wanted = false;
  s.dec.set_limits(s.frame_limit, DecoderOptions::kAllTypes);
  srv.count([](ServerStats& st) { st.migrations++; });
  srv.log(s.name() + ": continues from the edge's weights (" + std::to_string(w.blob.size()) +
          " bytes)");
}

void handle_message(Session& s, Message& m) {
  switch (m.type()) {
    case MessageType::Hello: handle_hello(s, m.as<Hello>()); break;
    case MessageType::KeyFrame: {
      KeyFrame& kf = m.as<KeyFrame>();
      s.srv->count([](ServerStats& st) { st.key_frames++; });
      auto* j = new Job;
      j->req.data = j;
      j->s = s.srv->sessions.at(&s);
      j->kf = std::move(kf);
      j->arrived_ns = uv_hrtime();
      s.busy = true;
      submit(*s.srv, j);
      break;
    }
    case MessageType::Weights:  // (the conversation checker: only when WELCOME asked, fp32)
      handle_edge_weights(s, m.as<Weights>());
      break;
    case MessageType::Resync:  // (the conversation checker has held it to its rules)
      s.srv->log(s.name() + ": RESYNC: the edge holds weights hashing to " +
                 std::to_string(m.as<Resync>().weights_hash));
      if (s.busy) s.resync_pending = true;  // after the UPDATE in flight (made for the old mirror)
      else answer_resync(s);
      break;
    case MessageType::Ping: send(s, Pong{m.as<Ping>().nonce}); break;
    case MessageType::Pong: s.ping_out = false; break;
    case MessageType::Bye:
      s.bye_received = true;
      uv_read_stop(reinterpret_cast<uv_stream_t*>(&s.tcp));
      if (!s.busy) {
        send(s, Bye{});
        close_session(s, std::nullopt);
      }
      break;
    case MessageType::Error: {
      const ErrorMessage& e = m.as<ErrorMessage>();
      s.srv->log(s.name() + ": peer sent ERROR " + error_code_name(e.code) + ": " +
                 net::peer_text(e.text));
      close_session(s, std::nullopt);
      break;
    }
    default:
      throw ProtocolError(ErrorCode::UnexpectedMessage,
                          std::string(message_type_name(m.type())) + " is not for the server");
  }
}

void on_alloc(uv_handle_t* h, size_t, uv_buf_t* buf) {
  Session* s = static_cast<Session*>(h->data);
  *buf = uv_buf_init(s->rbuf.data(), unsigned(s->rbuf.size()));
}

void on_read(uv_stream_t* stream, ssize_t nread, const uv_buf_t* buf) {
  Session& s = *static_cast<Session*>(stream->data);
  if (s.closing) return;
  if (nread < 0) {
    std::string why = nread == UV_EOF ? "disconnected" : "read error " + uv_err(int(nread));
    try {
      s.dec.finish();
    } catch (const ProtocolError& e) {
      why += " inside a message (" + std::string(e.what()) + ")";
    }
    s.srv->log(s.name() + ": " + why);
    if (s.bye_received && s.busy) return;  // answer the last key frame, then BYE
    close_session(s, std::nullopt, 0);
    return;
  }
  if (nread == 0) return;
  s.srv->count([&](ServerStats& st) { st.bytes_in += uint64_t(nread); });
  try {
    s.dec.feed(reinterpret_cast<const uint8_t*>(buf->base), size_t(nread));
    Message m;
    while (!s.closing && !s.bye_received && s.dec.next(m)) {
      s.last_rx_ms = uv_now(&s.srv->loop);  // progress = a whole message, not a byte
      s.conv.on_receive(m);
      handle_message(s, m);
    }
  } catch (const ProtocolError& e) {
    close_session(s, ErrorMessage{e.code(), e.text()});
  } catch (const std::exception& e) {
    s.srv->log(s.name() + ": " + e.what());
    close_session(s, ErrorMessage{ErrorCode::Internal, "internal error (the server log says why)"});
  }
}

void on_connection(uv_stream_t* server, int status) {
  Server::Impl& srv = *static_cast<Server::Impl*>(server->data);
  if (status < 0) {
    srv.log("accept error: " + uv_err(status));
    return;
  }
  // Before WELCOME: HELLO, BYE or ERROR only, refused from the header when larger.
  DecoderOptions dopt;
  dopt.max_message_size = std::min(srv.opt.max_message_bytes, max_pre_welcome_message_size());
  dopt.accepted_types = kPreWelcomeTypes;
  auto sp = std::make_shared<Session>(dopt);
  Session& s = *sp;
  s.srv = &srv;
  s.id = srv.next_id++;
  uv_tcp_init(&srv.loop, &s.tcp);
  uv_timer_init(&srv.loop, &s.timer);
  s.tcp.data = &s;
  s.timer.data = &s;
  s.open_handles = 2;
  srv.sessions.emplace(&s, sp);
  srv.count([](ServerStats& st) {
    st.sessions_opened++;
    st.sessions_active++;
  });
  int rc = uv_accept(server, reinterpret_cast<uv_stream_t*>(&s.tcp));
  if (rc < 0 || srv.stopping) {
    s.closing = true;
    force_close(s);
    return;
  }
  uv_tcp_nodelay(&s.tcp, 1);
  sockaddr_storage addr{};
  int len = sizeof addr;
  char host[64] = "?";
  if (uv_tcp_getpeername(&s.tcp, reinterpret_cast<sockaddr*>(&addr), &len) == 0) {
    if (addr.ss_family == AF_INET) {
      auto* a = reinterpret_cast<sockaddr_in*>(&addr);
      uv_ip4_name(a, host, sizeof host);
      s.ip = host;
      s.peer = std::string(host) + ":" + std::to_string(ntohs(a->sin_port));
    } else if (addr.ss_family == AF_INET6) {
      auto* a = reinterpret_cast<sockaddr_in6*>(&addr);
      uv_ip6_name(a, host, sizeof host);
      s.ip = host;
      s.peer = "[" + std::string(host) + "]:" + std::to_string(ntohs(a->sin6_port));
    }
  }
  // The caps on connections that have not said HELLO yet, and on connections per address.
  size_t pending = 0, same_ip = 0;
  for (auto& [p, other] : srv.sessions) {
    if (p == &s || other->closing) continue;
    if (!other->welcomed) ++pending;
    if (!s.ip.empty() && other->ip == s.ip) ++same_ip;
  }
  std::string refusal;
  if (pending >= srv.opt.max_pending)
    refusal = std::to_string(pending) + " connections are waiting to log in, the limit";
  else if (srv.opt.max_per_address > 0 && same_ip >= srv.opt.max_per_address)
    refusal = std::to_string(same_ip) + " connections from " + s.ip + ", the limit per address";
  if (!refusal.empty()) {
    s.refused = true;
    srv.count([](ServerStats& st) { st.connections_refused++; });
    const uint64_t now = uv_now(&srv.loop);
    ++srv.refused_unlogged;
    if (now - srv.refusal_logged_ms >= 1000 || srv.refusal_logged_ms == 0) {
      srv.log("refused " + std::to_string(srv.refused_unlogged) + " connection(s) (last: " +
              s.peer + ", " + refusal + ")");
      srv.refused_unlogged = 0;
      srv.refusal_logged_ms = now;
    }
    close_session(s, ErrorMessage{ErrorCode::Busy, refusal}, 1000);
    return;
  }
  srv.log(s.name() + " connected");
  uv_timer_start(&s.timer, on_hello_timer, uint64_t(srv.opt.hello_timeout_s * 1000.0), 0);
  uv_read_start(reinterpret_cast<uv_stream_t*>(&s.tcp), on_alloc, on_read);
}

// ---- metrics over HTTP: one request per connection, answered and closed; a scrape that has not
// sent its request within kMetricsTimeoutMs, or sends more than kMetricsRequestMax bytes of it,
// is closed; at most kMetricsConnsMax at once.
constexpr size_t kMetricsRequestMax = 8192, kMetricsConnsMax = 16;
constexpr uint64_t kMetricsTimeoutMs = 5000;

struct MetricsConn {
  Server::Impl* srv = nullptr;
  uv_tcp_t tcp{};
  uv_timer_t timer{};
  uv_write_t write{};
  std::string request, response;
  int open_handles = 0;
  bool closing = false;
};

void metrics_close(MetricsConn& c) {
  if (c.closing) return;
  c.closing = true;
  c.srv->metrics_conns.erase(&c);
  auto done = [](uv_handle_t* h) {
    auto* conn = static_cast<MetricsConn*>(h->data);
    if (--conn->open_handles == 0) delete conn;
  };
  uv_timer_stop(&c.timer);
  uv_close(reinterpret_cast<uv_handle_t*>(&c.timer), done);
  uv_close(reinterpret_cast<uv_handle_t*>(&c.tcp), done);
}

void metrics_respond(MetricsConn& c, const char* status, const std::string& body,
                     const char* type = "text/plain; charset=utf-8") {
  uv_read_stop(reinterpret_cast<uv_stream_t*>(&c.tcp));
  c.response = std::string("HTTP/1.1 ") + status + "\r\nContent-Type: " + type +
               "\r\nContent-Length: " + std::to_string(body.size()) +
               "\r\nConnection: close\r\n\r\n" + body;
  uv_buf_t b = uv_buf_init(c.response.data(), unsigned(c.response.size()));
  c.write.data = &c;
  if (uv_write(&c.write, reinterpret_cast<uv_stream_t*>(&c.tcp), &b, 1,
               [](uv_write_t* w, int) { metrics_close(*static_cast<MetricsConn*>(w->data)); }) < 0)
    metrics_close(c);
}

void metrics_answer(MetricsConn& c) {
  const size_t eol = c.request.find("\r\n");
  const std::string line = c.request.substr(0, eol);
  if (line.rfind("GET ", 0) != 0) {
    metrics_respond(c, "405 Method Not Allowed", "GET /metrics only\n");
    return;
  }
  const size_t sp = line.find(' ', 4);
  const std::string path = line.substr(4, sp == std::string::npos ? std::string::npos : sp - 4);
  if (path != "/metrics" && path.rfind("/metrics?", 0) != 0) {
    metrics_respond(c, "404 Not Found", "GET /metrics\n");
    return;
  }
  Server::Impl& srv = *c.srv;
  ServerStats st;
  {
    std::lock_guard<std::mutex> l(srv.stats_mu);
    st = srv.stats;
  }
  MetricsSnapshot m;
  m.stats = &st;
  m.job_slots = srv.job_slots;
  m.threads_per_job = srv.threads_per_job;
  m.key_frame = &srv.key_frame_latency;
  m.teacher = &srv.teacher_latency;
  m.distill = &srv.distill_latency;
  metrics_respond(c, "200 OK", render_metrics(m), "text/plain; version=0.0.4; charset=utf-8");
}

void on_metrics_connection(uv_stream_t* l, int status) {
  Server::Impl& srv = *static_cast<Server::Impl*>(l->data);
  if (status < 0) return;
  auto* c = new MetricsConn;
  c->srv = &srv;
  uv_tcp_init(&srv.loop, &c->tcp);
  uv_timer_init(&srv.loop, &c->timer);
  c->tcp.data = c->timer.data = c;
  c->open_handles = 2;
  srv.metrics_conns.insert(c);
  if (uv_accept(l, reinterpret_cast<uv_stream_t*>(&c->tcp)) < 0 || srv.stopping ||
      srv.metrics_conns.size() > kMetricsConnsMax) {
    metrics_close(*c);
    return;
  }
  uv_timer_start(&c->timer, [](uv_timer_t* t) { metrics_close(*static_cast<MetricsConn*>(t->data)); },
                 kMetricsTimeoutMs, 0);
  uv_read_start(
      reinterpret_cast<uv_stream_t*>(&c->tcp),
      [](uv_handle_t*, size_t, uv_buf_t* b) {
        static thread_local char buf[4096];  // the loop thread's; copied out at once
        *b = uv_buf_init(buf, sizeof buf);
      },
      [](uv_stream_t* st, ssize_t n, const uv_buf_t* b) {
        auto& conn = *static_cast<MetricsConn*>(st->data);
        if (n < 0) {
          metrics_close(conn);
          return;
        }
        conn.request.append(b->base, size_t(n));
        if (conn.request.find("\r\n\r\n") != std::string::npos) {
          metrics_answer(conn);
        } else if (conn.request.size() > kMetricsRequestMax) {
          metrics_respond(conn, "431 Request Header Fields Too Large", "request too large\n");
        }
      });
}

void on_drain(uv_async_t* a) {
  Server::Impl& srv = *static_cast<Server::Impl*>(a->data);
  if (srv.stopping || srv.draining) return;
  srv.draining = true;
  srv.log("draining: no new connections; sessions close once their key frame is answered");
  if (!uv_is_closing(reinterpret_cast<uv_handle_t*>(&srv.listener)))
    uv_close(reinterpret_cast<uv_handle_t*>(&srv.listener), nullptr);
  std::vector<Session*> idle;
  for (auto& [p, sp] : srv.sessions)
    if (!sp->busy) idle.push_back(p);
  for (Session* s : idle) close_session(*s, ErrorMessage{ErrorCode::ShuttingDown, kDrainText});
}

void on_stop(uv_async_t* a) {
  Server::Impl& srv = *static_cast<Server::Impl*>(a->data);
  srv.stopping = true;
  if (!uv_is_closing(reinterpret_cast<uv_handle_t*>(&srv.listener)))
    uv_close(reinterpret_cast<uv_handle_t*>(&srv.listener), nullptr);
  if (srv.metrics_on && !uv_is_closing(reinterpret_cast<uv_handle_t*>(&srv.metrics_listener)))
    uv_close(reinterpret_cast<uv_handle_t*>(&srv.metrics_listener), nullptr);
  for (MetricsConn* c : std::vector<MetricsConn*>(srv.metrics_conns.begin(), srv.metrics_conns.end()))
    metrics_close(*c);
  std::vector<Session*> all;
  for (auto& [p, sp] : srv.sessions) all.push_back(p);
  for (Session* s : all)
    close_session(*s, ErrorMessage{ErrorCode::ShuttingDown, "the server is stopping"}, 1000);
  run_next(srv);  // drops every waiting job (stopping)
  uv_close(reinterpret_cast<uv_handle_t*>(&srv.stop_async), nullptr);
  uv_close(reinterpret_cast<uv_handle_t*>(&srv.drain_async), nullptr);
}

}  // namespace

Server::Server(ServerOptions options) : impl_(std::make_unique<Impl>()) {
  impl_->opt = std::move(options);
}

Server::~Server() { stop(); }

void Server::start() {
  ST_CHECK(!running_, "server: already running");
  Impl& m = *impl_;
  ST_CHECK(bool(m.opt.teacher), "server: no teacher configured");
  const auto& d = m.opt.distill;
  ST_CHECK(d.min_stride >= 1 && d.max_stride >= d.min_stride && uint32_t(d.max_stride) <= kMaxStride,
           "server: bad stride limits ", d.min_stride, "..", d.max_stride);
  ST_CHECK(d.threshold > 0 && d.threshold < 1, "server: threshold ", d.threshold, " not in (0, 1)");
  ST_CHECK(d.max_updates >= 0 && uint32_t(d.max_updates) <= kMaxSteps, "server: bad max updates");
  ST_CHECK(m.opt.hello_timeout_s > 0, "server: the HELLO timeout must be > 0 s");
  ST_CHECK(m.opt.max_pending >= 1, "server: max_pending must be >= 1");
  ST_CHECK(m.opt.max_frame_pixels >= 1, "server: max_frame_pixels must be >= 1");
  ST_CHECK(m.opt.max_queued_bytes >= kHeaderSize, "server: max_queued_bytes below one message");
  ST_CHECK(m.opt.encoding == BlobEncoding::F32 || m.opt.encoding == BlobEncoding::F16,
           "server: the blob encoding must be fp32 or fp16");
  ST_CHECK(m.opt.split.first >= protocol::kMinTrainFrom &&
               m.opt.split.first <= protocol::kMaxTrainFrom,
           "server: partial training starts at a block from in_conv2 to out_conv3, not block ",
           m.opt.split.first);
  net::ignore_sigpipe();
  if (!m.base) {
    m.base = std::make_unique<nn::Student>(m.opt.init_seed);
    if (!m.opt.weights.empty()) m.base->load_safetensors(m.opt.weights);
    m.accept_frames = uint8_t(kAcceptRawBgr | m.opt.accept_frames.value_or(
        m.opt.weights.empty() ? kAcceptPng : kAcceptPng | kAcceptJpeg));
    m.base_hash = nn::weights_hash(*m.base);
    m.layout = nn::layout_hash(*m.base, nn::Distillation::Full);
    for (BlobEncoding e : {BlobEncoding::F32, BlobEncoding::F16})
      m.full_blob[size_t(e)] = nn::pack_trained(*m.base, nn::Distillation::Full, e);
  }
  // A previous run's loop is closed in stop(); each start uses a fresh one.
  ST_CHECK(uv_loop_init(&m.loop) == 0, "server: uv_loop_init failed");
  m.stopping = false;
  const int cores = std::max(1, omp_get_num_procs());  // the CPUs this process may run on
  m.job_slots = m.opt.jobs > 0 ? m.opt.jobs : std::min(4, cores);
  m.threads_per_job = m.opt.threads_per_job > 0 ? m.opt.threads_per_job
                                                : std::max(1, cores / m.job_slots);
  m.running_jobs = 0;
  if (m.job_slots > 4)  // libuv's pool has 4 threads unless told otherwise before its first use
    setenv("UV_THREADPOOL_SIZE", std::to_string(std::min(m.job_slots, 1024)).c_str(), 0);
  m.listener = uv_tcp_t{};
  uv_tcp_init(&m.loop, &m.listener);
  m.listener.data = &m;
  auto fail = [&](const std::string& what, int rc) {
    uv_close(reinterpret_cast<uv_handle_t*>(&m.listener), nullptr);
    uv_run(&m.loop, UV_RUN_DEFAULT);
    uv_loop_close(&m.loop);
    throw Error("server: " + what + ": " + uv_err(rc));
  };
  sockaddr_storage addr{};
  int rc = uv_ip4_addr(m.opt.host.c_str(), m.opt.port, reinterpret_cast<sockaddr_in*>(&addr));
  if (rc < 0) rc = uv_ip6_addr(m.opt.host.c_str(), m.opt.port, reinterpret_cast<sockaddr_in6*>(&addr));
  if (rc < 0) fail("bad host '" + m.opt.host + "' (give a numeric IPv4/IPv6 address)", rc);
  rc = uv_tcp_bind(&m.listener, reinterpret_cast<sockaddr*>(&addr), 0);
  if (rc < 0) fail("bind " + m.opt.host + ":" + std::to_string(m.opt.port), rc);
  rc = uv_listen(reinterpret_cast<uv_stream_t*>(&m.listener), 128, on_connection);
  if (rc < 0) fail("listen on " + m.opt.host + ":" + std::to_string(m.opt.port), rc);
  sockaddr_storage bound{};
  int len = sizeof bound;
  uv_tcp_getsockname(&m.listener, reinterpret_cast<sockaddr*>(&bound), &len);
  port_ = bound.ss_family == AF_INET6 ? ntohs(reinterpret_cast<sockaddr_in6*>(&bound)->sin6_port)
                                      : ntohs(reinterpret_cast<sockaddr_in*>(&bound)->sin_port);
  m.metrics_on = m.opt.metrics_port >= 0;
  metrics_port_ = -1;
  if (m.metrics_on) {
    m.metrics_listener = uv_tcp_t{};
    uv_tcp_init(&m.loop, &m.metrics_listener);
    m.metrics_listener.data = &m;
    sockaddr_storage maddr{};
    rc = uv_ip4_addr(m.opt.host.c_str(), m.opt.metrics_port, reinterpret_cast<sockaddr_in*>(&maddr));
    if (rc < 0)
      rc = uv_ip6_addr(m.opt.host.c_str(), m.opt.metrics_port, reinterpret_cast<sockaddr_in6*>(&maddr));
    if (rc >= 0) rc = uv_tcp_bind(&m.metrics_listener, reinterpret_cast<sockaddr*>(&maddr), 0);
    if (rc >= 0) rc = uv_listen(reinterpret_cast<uv_stream_t*>(&m.metrics_listener), 16, on_metrics_connection);
    if (rc < 0) {
      uv_close(reinterpret_cast<uv_handle_t*>(&m.metrics_listener), nullptr);
      fail("metrics port " + m.opt.host + ":" + std::to_string(m.opt.metrics_port), rc);
    }
    sockaddr_storage mb{};
    int mlen = sizeof mb;
    uv_tcp_getsockname(&m.metrics_listener, reinterpret_cast<sockaddr*>(&mb), &mlen);
    metrics_port_ = mb.ss_family == AF_INET6 ? ntohs(reinterpret_cast<sockaddr_in6*>(&mb)->sin6_port)
                                             : ntohs(reinterpret_cast<sockaddr_in*>(&mb)->sin_port);
  }
  uv_async_init(&m.loop, &m.stop_async, on_stop);
  m.stop_async.data = &m;
  uv_async_init(&m.loop, &m.drain_async, on_drain);
  m.drain_async.data = &m;
  m.draining = false;
  m.loop_ready = true;
  running_ = true;
  m.log("listening on " + m.opt.host + ":" + std::to_string(port_) + ", teacher: " +
        m.opt.teacher()->describe() + "; " + std::to_string(m.job_slots) + " key-frame jobs at once x " +
        std::to_string(m.threads_per_job) + " threads (" + std::to_string(cores) + " cores)" +
        (m.metrics_on ? "; metrics on http://" + m.opt.host + ":" + std::to_string(metrics_port_) + "/metrics" : ""));
  m.thread = std::thread([&m] {
    uv_run(&m.loop, UV_RUN_DEFAULT);  // ends when every handle is closed and no work is left
  });
}

void Server::stop() {
  Impl& m = *impl_;
  if (!m.loop_ready) return;
  uv_async_send(&m.stop_async);
  if (m.thread.joinable()) m.thread.join();
  uv_loop_close(&m.loop);
  m.loop_ready = false;
  running_ = false;
  m.log("stopped");
}

void Server::begin_drain() {
  if (impl_->loop_ready) uv_async_send(&impl_->drain_async);
}

bool Server::drained() const {
  const ServerStats s = stats();
  return s.sessions_active == 0 && s.jobs_running == 0 && s.jobs_waiting == 0;
}

bool Server::drain(double timeout_s) {
  begin_drain();
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_s);
  bool done = false;
  while (!(done = drained()) && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  stop();
  return done;
}

void Server::wait() {
  if (impl_->thread.joinable()) impl_->thread.join();
}

ServerStats Server::stats() const {
  std::lock_guard<std::mutex> l(impl_->stats_mu);
  return impl_->stats;
}

}  // namespace st::server
