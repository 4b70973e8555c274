// The edge client (client.h): a libuv network thread plus the frame loop on the caller's thread.
#include "edge/client.h"

#include <unistd.h>
#include <uv.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>

#include "io/video.h"
#include "nn/distill.h"
#include "protocol/conversation.h"
#include "protocol/decoder.h"
#include "net/net.h"
#include "tensor/autograd.h"
#include "tensor/image.h"

namespace st::edge {

using namespace st::protocol;
using Clock = std::chrono::steady_clock;

// ---------------------------------------------------------------- progress line

double progress_interval_s(bool terminal) { return terminal ? 0.2 : 5.0; }

bool progress_due(bool terminal, double since_last_s, bool first_frame) {
  return first_frame || since_last_s >= progress_interval_s(terminal);
}

std::string format_progress(const ProgressLine& p, bool terminal) {
  char buf[512];
  std::snprintf(buf, sizeof buf,
                "%s[edge %s] frame %lld  %.2f fps  stride %lld  keys %lld  stale %lld  up %.2f MB  "
                "down %.2f MB  %s%s",
                terminal ? "\r" : "", p.mode.c_str(), (long long)p.frame, p.fps,
                (long long)p.stride, (long long)p.key_frames, (long long)p.stale_frames,
                double(p.bytes_up) / 1e6, double(p.bytes_down) / 1e6,
                p.online ? "online" : "offline", terminal ? "   " : "\n");
  return buf;
}

// ---------------------------------------------------------------- TokenBucket

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

// ---------------------------------------------------------------- NetClient

namespace {
constexpr size_t kReadChunk = 64 * 1024;
std::string uv_err(int rc) { return std::string(uv_err_name(rc)) + " (" + uv_strerror(rc) + ")"; }
uint64_t to_ms(double s) { return uint64_t(std::max(1.0, std::ceil(s * 1000.0))); }
}  // namespace

struct Conn {
  NetClient::Impl* impl = nullptr;
  uint64_t epoch = 0;  // 0 until connected
  uv_tcp_t tcp{};
  uv_connect_t creq{};
  uv_write_t wreq{};
  Decoder dec;
  Encoder enc;
  Conversation conv{Role::Edge};
  std::deque<std::vector<uint8_t>> outq;
  size_t off = 0, wlen = 0;
  bool writing = false, connected = false, closing = false, read_paused = false;
  std::vector<char> rbuf = std::vector<char>(kReadChunk);
  explicit Conn(DecoderOptions o) : dec(o) {}
};

struct NetClient::Impl {
  NetClient* self = nullptr;
  ClientOptions opt;
  uv_loop_t loop{};
  uv_async_t wake{};
  uv_timer_t reconnect_timer{}, write_timer{}, read_timer{};
  std::thread thread;
  bool started = false;

  // Loop thread state.
  Conn* conn = nullptr;
  uint64_t epochs = 0;
  double backoff = 0.1;
  bool stopping = false;
  std::optional<TokenBucket> up, down;

  // Commands to the loop thread.
  struct Cmd {
    enum Kind { Send, Drop, Stop } kind = Send;
    uint64_t epoch = 0;
    std::optional<Body> body;
    std::string why;
  };
  std::mutex cmd_mu;
  std::deque<Cmd> cmds;

  // Events to the frame loop.
  std::mutex ev_mu;
  std::condition_variable ev_cv;
  std::deque<Event> events;

  void log(const std::string& s) const {
    if (opt.log) net::log_line("edge/net", s);
  }
  static Event event(Event::Kind k, uint64_t epoch, std::string text = {}) {
    Event e;
    e.kind = k;
    e.epoch = epoch;
    e.text = std::move(text);
    return e;
  }
  void post(Event e) {
    {
      std::lock_guard<std::mutex> l(ev_mu);
      events.push_back(std::move(e));
    }
    ev_cv.notify_all();
  }
  void command(Cmd c) {
    {
      std::lock_guard<std::mutex> l(cmd_mu);
      cmds.push_back(std::move(c));
    }
    uv_async_send(&wake);
  }

  // ---- loop thread ----
  void schedule_reconnect() {
    if (stopping) return;
    uv_timer_start(&reconnect_timer, on_reconnect_timer, to_ms(backoff), 0);
    backoff = std::min(backoff * 2, opt.backoff_max_s);
  }

  static void on_conn_closed(uv_handle_t* h) { delete static_cast<Conn*>(h->data); }

  void fail(Conn* c, const std::string& why) {
    if (c->closing) return;
    c->closing = true;
    if (c->connected) {
      log("connection " + std::to_string(c->epoch) + " lost: " + why);
      post(event(Event::Disconnected, c->epoch, why));
    }
    uv_read_stop(reinterpret_cast<uv_stream_t*>(&c->tcp));
    uv_close(reinterpret_cast<uv_handle_t*>(&c->tcp), on_conn_closed);
    if (conn == c) {
      conn = nullptr;
      uv_timer_stop(&write_timer);
      uv_timer_stop(&read_timer);
      schedule_reconnect();
    }
  }

  // Best effort, immediate: used for ERROR and BYE right before closing.
  void try_send_now(Conn* c, Body body) {
    try {
      Message m{c->enc.next_seq(), c->enc.version(), body};
      c->conv.on_send(m);
      std::vector<uint8_t> b = c->enc.encode(std::move(body));
      if (c->writing || !c->outq.empty()) return;  // would interleave with a partial write
      uv_buf_t buf = uv_buf_init(reinterpret_cast<char*>(b.data()), unsigned(b.size()));
      int n = uv_try_write(reinterpret_cast<uv_stream_t*>(&c->tcp), &buf, 1);
      if (n > 0) self->bytes_up_ += n;
    } catch (const std::exception&) {
    }
  }

  void enqueue(Conn* c, Body body) {
    Message m{c->enc.next_seq(), c->enc.version(), body};
    c->conv.on_send(m);
    c->outq.push_back(c->enc.encode(std::move(body)));
    pump(c);
  }

  void pump(Conn* c) {
    if (c->writing || c->closing || c->outq.empty()) return;
    auto& b = c->outq.front();
    size_t n = b.size() - c->off;
    if (up) {
      auto now = Clock::now();
      size_t want = std::min(n, size_t(up->burst() / 2));
      if (up->available(now) < double(want)) {
        uv_timer_start(&write_timer, on_write_timer, to_ms(up->seconds_until(double(want), now)), 0);
        return;
      }
      n = want;
      up->consume(double(n));
    }
    uv_buf_t buf = uv_buf_init(reinterpret_cast<char*>(b.data() + c->off), unsigned(n));
    c->writing = true;
    c->wlen = n;
    c->wreq.data = c;
    int rc = uv_write(&c->wreq, reinterpret_cast<uv_stream_t*>(&c->tcp), &buf, 1, on_write);
    if (rc < 0) {
      c->writing = false;
      fail(c, "write: " + uv_err(rc));
    }
  }

  static void on_write(uv_write_t* req, int status) {
    Conn* c = static_cast<Conn*>(req->data);
    Impl* m = c->impl;
    c->writing = false;
    if (status < 0) {
      if (!c->closing) m->fail(c, "write: " + uv_err(status));
      return;
    }
    m->self->bytes_up_ += int64_t(c->wlen);
    c->off += c->wlen;
    if (c->off == c->outq.front().size()) {
      c->outq.pop_front();
      c->off = 0;
    }
    m->pump(c);
  }

  static void on_write_timer(uv_timer_t* t) {
    Impl* m = static_cast<Impl*>(t->data);
    if (m->conn) m->pump(m->conn);
  }

  static void on_read_timer(uv_timer_t* t) {
    Impl* m = static_cast<Impl*>(t->data);
    Conn* c = m->conn;
    if (!c || !c->read_paused || c->closing) return;
    auto now = Clock::now();
    if (m->down->available(now) < 0) {
      uv_timer_start(&m->read_timer, on_read_timer, to_ms(m->down->seconds_until(0, now)), 0);
      return;
    }
    c->read_paused = false;
    uv_read_start(reinterpret_cast<uv_stream_t*>(&c->tcp), on_alloc, on_read);
  }

  static void on_alloc(uv_handle_t* h, size_t, uv_buf_t* buf) {
    Conn* c = static_cast<Conn*>(h->data);
    size_t n = c->rbuf.size();
    if (c->impl->down) n = std::min(n, std::max<size_t>(1, size_t(c->impl->down->burst())));
    *buf = uv_buf_init(c->rbuf.data(), unsigned(n));
  }

  static void on_read(uv_stream_t* s, ssize_t nread, const uv_buf_t* buf) {
    Conn* c = static_cast<Conn*>(s->data);
    Impl* m = c->impl;
    if (c->closing) return;
    if (nread < 0) {
      m->fail(c, nread == UV_EOF ? "the server closed the connection" : "read: " + uv_err(int(nread)));
      return;
    }
    if (nread == 0) return;
    m->self->bytes_down_ += nread;
    if (m->down) {
      auto now = Clock::now();
      m->down->available(now);
      m->down->consume(double(nread));
      if (m->down->available(now) < 0) {
        uv_read_stop(s);
        c->read_paused = true;
        uv_timer_start(&m->read_timer, on_read_timer, to_ms(m->down->seconds_until(0, now)), 0);
      }
    }
    try {
      c->dec.feed(reinterpret_cast<const uint8_t*>(buf->base), size_t(nread));
      Message msg;
      while (!c->closing && c->dec.next(msg)) {
        c->conv.on_receive(msg);
        m->handle(c, std::move(msg));
      }
    } catch (const ProtocolError& e) {
      m->try_send_now(c, ErrorMessage{e.code(), e.text().substr(0, kMaxErrorText)});
      m->fail(c, std::string("protocol error: ") + e.what());
    } catch (const std::exception& e) {
      m->fail(c, e.what());
    }
  }

  void handle(Conn* c, Message&& msg) {
    switch (msg.type()) {
      case MessageType::Welcome: {
        const Welcome& w = msg.as<Welcome>();
        c->enc.set_version(w.version);
        c->dec.set_versions(w.version, w.version);
        backoff = opt.backoff_initial_s;
        {
          Event e = event(Event::Message, c->epoch);
          e.message = std::move(msg);
          post(std::move(e));
        }
        break;
      }
      case MessageType::Update:
      case MessageType::Labels: {
          Event e = event(Event::Message, c->epoch);
          e.message = std::move(msg);
          post(std::move(e));
        } break;
      case MessageType::Ping: enqueue(c, Pong{msg.as<Ping>().nonce}); break;
      case MessageType::Pong: break;
      case MessageType::Error: {
        const ErrorMessage& e = msg.as<ErrorMessage>();
        fail(c, std::string("server sent ERROR ") + error_code_name(e.code) + ": " + e.text);
        break;
      }
      case MessageType::Bye:
        try_send_now(c, Bye{});
        fail(c, "the server said BYE");
        break;
      default: fail(c, std::string("unexpected ") + message_type_name(msg.type()));
    }
  }

  static void on_connect(uv_connect_t* req, int status) {
    Conn* c = static_cast<Conn*>(req->data);
    Impl* m = c->impl;
    if (status < 0) {
      if (status != UV_ECANCELED)
        m->log("connect to " + m->opt.host + ":" + std::to_string(m->opt.port) + " failed: " +
               uv_err(status) + "; retrying");
      m->fail(c, "connect: " + uv_err(status));
      return;
    }
    if (c->closing) return;
    c->connected = true;
    c->epoch = ++m->epochs;
    uv_tcp_nodelay(&c->tcp, 1);
    m->log("connected to " + m->opt.host + ":" + std::to_string(m->opt.port) + " (connection " +
           std::to_string(c->epoch) + ")");
    uv_read_start(reinterpret_cast<uv_stream_t*>(&c->tcp), on_alloc, on_read);
    m->post(event(Event::Connected, c->epoch));
  }

  void connect() {
    if (stopping || conn) return;
    sockaddr_storage addr{};
    bool ok = uv_ip4_addr(opt.host.c_str(), opt.port, reinterpret_cast<sockaddr_in*>(&addr)) == 0 ||
              uv_ip6_addr(opt.host.c_str(), opt.port, reinterpret_cast<sockaddr_in6*>(&addr)) == 0;
    if (!ok) {  // a host name: resolve synchronously (this thread does nothing else meanwhile)
      uv_getaddrinfo_t req;
      addrinfo hints{};
      hints.ai_socktype = SOCK_STREAM;
      std::string port = std::to_string(opt.port);
      if (uv_getaddrinfo(&loop, &req, nullptr, opt.host.c_str(), port.c_str(), &hints) == 0 &&
          req.addrinfo) {
        std::memcpy(&addr, req.addrinfo->ai_addr, req.addrinfo->ai_addrlen);
        uv_freeaddrinfo(req.addrinfo);
        ok = true;
      }
    }
    if (!ok) {
      log("cannot resolve " + opt.host + "; retrying");
      schedule_reconnect();
      return;
    }
    DecoderOptions d;
    d.max_message_size = opt.max_message_bytes;
    Conn* c = new Conn(d);
    c->impl = this;
    uv_tcp_init(&loop, &c->tcp);
    c->tcp.data = c;
    c->creq.data = c;
    conn = c;
    int rc = uv_tcp_connect(&c->creq, &c->tcp, reinterpret_cast<sockaddr*>(&addr), on_connect);
    if (rc < 0) fail(c, "connect: " + uv_err(rc));
  }

  static void on_reconnect_timer(uv_timer_t* t) { static_cast<Impl*>(t->data)->connect(); }

  static void on_wake(uv_async_t* a) {
    Impl* m = static_cast<Impl*>(a->data);
    std::deque<Cmd> cmds;
    {
      std::lock_guard<std::mutex> l(m->cmd_mu);
      cmds.swap(m->cmds);
    }
    for (Cmd& cmd : cmds) {
      Conn* c = m->conn;
      switch (cmd.kind) {
        case Cmd::Send:
          if (!c || c->closing || !c->connected || c->epoch != cmd.epoch) break;
          try {
            m->enqueue(c, std::move(*cmd.body));
          } catch (const std::exception& e) {
            m->fail(c, std::string("cannot send: ") + e.what());
          }
          break;
        case Cmd::Drop:
          if (c && c->epoch == cmd.epoch) m->fail(c, cmd.why);
          break;
        case Cmd::Stop:
          m->stopping = true;
          if (c) {
            if (c->connected) m->try_send_now(c, Bye{});
            m->fail(c, "the edge is stopping");
          }
          uv_close(reinterpret_cast<uv_handle_t*>(&m->reconnect_timer), nullptr);
          uv_close(reinterpret_cast<uv_handle_t*>(&m->write_timer), nullptr);
          uv_close(reinterpret_cast<uv_handle_t*>(&m->read_timer), nullptr);
          uv_close(reinterpret_cast<uv_handle_t*>(&m->wake), nullptr);
          return;
      }
    }
  }
};

NetClient::NetClient(ClientOptions o) : impl_(std::make_unique<Impl>()) {
  impl_->self = this;
  impl_->opt = std::move(o);
}

NetClient::~NetClient() { stop(); }

void NetClient::start() {
  Impl& m = *impl_;
  ST_CHECK(!m.started, "NetClient: already started");
  net::ignore_sigpipe();
  m.backoff = m.opt.backoff_initial_s;
  if (m.opt.link_mbps > 0) {
    double rate = m.opt.link_mbps * 1e6 / 8.0;
    // A small burst (4 ms of traffic, at least 16 KiB) so that a message arriving on an idle
    // link gets little head start; writes go out in half-burst chunks, so a late timer
    // (millisecond granularity) loses no tokens to the cap.
    double burst = std::max(rate * 0.004, 16384.0);
    m.up.emplace(rate, burst);
    m.down.emplace(rate, burst);
  }
  ST_CHECK(uv_loop_init(&m.loop) == 0, "NetClient: uv_loop_init failed");
  uv_async_init(&m.loop, &m.wake, Impl::on_wake);
  m.wake.data = &m;
  for (uv_timer_t* t : {&m.reconnect_timer, &m.write_timer, &m.read_timer}) {
    uv_timer_init(&m.loop, t);
    t->data = &m;
  }
  uv_timer_start(&m.reconnect_timer, Impl::on_reconnect_timer, 0, 0);
  m.started = true;
  m.thread = std::thread([&m] { uv_run(&m.loop, UV_RUN_DEFAULT); });
}

void NetClient::stop() {
  Impl& m = *impl_;
  if (!m.started) return;
  m.command(Impl::Cmd{Impl::Cmd::Stop, 0, std::nullopt, {}});
  m.thread.join();
  uv_loop_close(&m.loop);
  m.started = false;
}

void NetClient::send(uint64_t epoch, Body body) {
  impl_->command(Impl::Cmd{Impl::Cmd::Send, epoch, std::move(body), {}});
}

void NetClient::drop(uint64_t epoch, const std::string& why) {
  impl_->command(Impl::Cmd{Impl::Cmd::Drop, epoch, std::nullopt, why});
}

bool NetClient::poll(Event& e) {
  std::lock_guard<std::mutex> l(impl_->ev_mu);
  if (impl_->events.empty()) return false;
  e = std::move(impl_->events.front());
  impl_->events.pop_front();
  return true;
}

bool NetClient::wait(Event& e, double timeout_s) {
  std::unique_lock<std::mutex> l(impl_->ev_mu);
  if (!impl_->ev_cv.wait_for(l, std::chrono::duration<double>(std::max(0.0, timeout_s)),
                             [&] { return !impl_->events.empty(); }))
    return false;
  e = std::move(impl_->events.front());
  impl_->events.pop_front();
  return true;
}

// ---------------------------------------------------------------- the frame loop

EdgeMode parse_edge_mode(const std::string& s) {
  if (s == "partial") return EdgeMode::Partial;
  if (s == "full") return EdgeMode::Full;
  if (s == "naive") return EdgeMode::Naive;
  throw Error("unknown mode '" + s + "' (partial, full, naive)");
}

const char* edge_mode_name(EdgeMode m) {
  switch (m) {
    case EdgeMode::Partial: return "partial";
    case EdgeMode::Full: return "full";
    case EdgeMode::Naive: return "naive";
  }
  return "?";
}

namespace {
double secs(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}
constexpr double kStopPollS = 0.05;  // how often waits look at EdgeOptions::stop
}  // namespace

EdgeResult run_edge(const EdgeOptions& opt) {
  auto source = io::open_video(opt.video);
  const int64_t H = source->height(), W = source->width();
  ST_CHECK(H > 0 && W > 0 && H <= kMaxFrameDim && W <= kMaxFrameDim, "edge: bad frame size ", W,
           "x", H);
  EdgeResult r;
  r.mode = edge_mode_name(opt.mode);
  const nn::Distillation dmode =
      opt.mode == EdgeMode::Full ? nn::Distillation::Full : nn::Distillation::Partial;
  const SessionMode smode = opt.mode == EdgeMode::Full    ? SessionMode::Full
                            : opt.mode == EdgeMode::Naive ? SessionMode::Naive
                                                          : SessionMode::Partial;

  // Two parameter buffers: `active` computes frames; updates land in `spare`, then swap.
  auto active = std::make_unique<nn::Student>(opt.init_seed);
  if (!opt.weights.empty()) active->load_safetensors(opt.weights);
  auto spare = std::make_unique<nn::Student>(opt.init_seed);
  spare->load_state(active->named_parameters(), "edge weights");
  active->configure(nn::Distillation::None);
  spare->configure(nn::Distillation::None);
  active->to(opt.device);
  spare->to(opt.device);
  const uint64_t layout = nn::layout_hash(*active, nn::Distillation::Full);
  uint64_t cur_hash = nn::weights_hash(*active);
  r.initial_weights_hash = cur_hash;

  auto log = [&](const std::string& s) {
    if (opt.net.log) net::log_line("edge", s);
  };
  // Unpacks a blob into the spare copy and swaps the copies (between two frames).
  auto apply_blob = [&](nn::Distillation scope, const std::vector<uint8_t>& blob) {
    nn::unpack_trained(*spare, scope, blob.data(), blob.size());  // validates first
    std::swap(active, spare);
    spare->load_state(active->named_parameters(), "edge weights");
    cur_hash = nn::weights_hash(*active);
  };

  std::optional<io::LabelSource> reference;
  if (!opt.reference_dir.empty()) {
    ST_CHECK(std::filesystem::is_directory(opt.reference_dir), "edge: reference label folder ",
             opt.reference_dir.string(), " does not exist");
    reference.emplace(opt.reference_dir);
  }
  std::ofstream frame_log;
  if (!opt.frame_log.empty()) {
    frame_log.open(opt.frame_log);
    ST_CHECK(bool(frame_log), "edge: cannot write the frame log ", opt.frame_log.string());
  }
  ST_CHECK(opt.overlay_every >= 1, "edge: overlay_every must be >= 1");
  ST_CHECK(opt.jpeg_quality >= 1 && opt.jpeg_quality <= 100, "edge: JPEG quality must be 1..100");
  if (!opt.predictions_dir.empty()) std::filesystem::create_directories(opt.predictions_dir);
  if (!opt.overlays_dir.empty()) std::filesystem::create_directories(opt.overlays_dir);

  NetClient net(opt.net);
  net.start();

  // Session state (this thread).
  bool session = false;
  uint64_t epoch = 0, hello_epoch = 0;
  Welcome welcome;
  int64_t next_key = 0, stride = 0;
  std::optional<int64_t> outstanding;  // key frame sent, answer not here yet
  std::optional<Labels> labels;        // naive: the answer to the outstanding frame
  int64_t frame_i = 0;
  bool applied = false;                // an update was swapped in before this frame
  double last_acc = -1;                // the server's mIoU for the last update applied
  uint32_t last_steps = 0;             // and its distillation steps
  double miou_sum = 0;

  auto handle = [&](NetClient::Event& e) {
    switch (e.kind) {
      case NetClient::Event::Connected: {
        Hello h;
        h.mode = smode;
        h.layout_hash = layout;
        h.weights_hash = cur_hash;
        h.frame_width = uint32_t(W);
        h.frame_height = uint32_t(H);
        h.accept_blobs = opt.accept_blobs;
        h.auth_token = opt.token;
        h.edge_name = opt.edge_name;
        hello_epoch = e.epoch;
        net.send(e.epoch, std::move(h));
        break;
      }
      case NetClient::Event::Disconnected:
        if (e.epoch == epoch && session) {
          session = false;
          outstanding.reset();
          ++r.disconnects;
        }
        r.errors.push_back(e.text);
        break;
      case NetClient::Event::Message: {
        Message& m = e.message;
        if (m.is<Welcome>()) {
          if (e.epoch != hello_epoch) break;
          Welcome& w = m.as<Welcome>();
          try {
            if (w.blob_kind != BlobKind::None) {
              apply_blob(w.scope == WeightsScope::Full ? nn::Distillation::Full : dmode, w.blob);
              if (w.scope == WeightsScope::Full) ++r.full_weight_syncs;
            }
          } catch (const std::exception& ex) {
            r.errors.push_back(std::string("WELCOME blob refused: ") + ex.what());
            net.drop(e.epoch, "bad WELCOME blob");
            break;
          }
          welcome = w;
          session = true;
          epoch = e.epoch;
          next_key = frame_i;  // the first key frame of a session: the next frame
          stride = w.min_stride;
          outstanding.reset();
          labels.reset();
          ++r.welcomes;
          log("session " + std::to_string(w.session_id) + " (stride " +
              std::to_string(w.min_stride) + ".." + std::to_string(w.max_stride) +
              (w.scope == WeightsScope::Full ? ", full weights received)" : ")"));
        } else if (m.is<Update>()) {
          Update& u = m.as<Update>();
          if (!session || e.epoch != epoch || !outstanding || int64_t(u.key_frame) != *outstanding)
            break;
          if (u.blob_kind != BlobKind::None) {
            try {
              apply_blob(dmode, u.blob);
              ++r.updates_with_weights;
            } catch (const std::exception& ex) {
              r.errors.push_back(std::string("UPDATE blob refused: ") + ex.what());
              net.drop(e.epoch, "bad UPDATE blob");
              session = false;
              outstanding.reset();
              break;
            }
          }
          ++r.updates;
          applied = true;
          last_acc = u.accuracy;
          last_steps = u.steps;
          r.steps_total += u.steps;
          stride = u.next_stride;
          next_key = int64_t(u.key_frame) + stride;
          outstanding.reset();
        } else if (m.is<Labels>()) {
          Labels& l = m.as<Labels>();
          if (!session || e.epoch != epoch || !outstanding || int64_t(l.frame_index) != *outstanding)
            break;
          labels = std::move(l);
          ++r.labels;
          outstanding.reset();
        }
        break;
      }
    }
  };
  auto stop_requested = [&] { return opt.stop && opt.stop->load(std::memory_order_relaxed); };
  // The next network event within `seconds` (false: none). With a stop flag it waits in slices,
  // so that a stop request ends the wait within 50 ms.
  auto wait_event = [&](NetClient::Event& e, double seconds) {
    if (!opt.stop) return net.wait(e, seconds);
    const auto until = Clock::now() + std::chrono::duration_cast<Clock::duration>(
                                          std::chrono::duration<double>(seconds));
    for (;;) {
      if (stop_requested()) return false;
      const double left = secs(Clock::now(), until);
      if (left <= 0) return false;
      if (net.wait(e, std::min(left, kStopPollS))) return true;
    }
  };
  // Blocks until the outstanding answer arrives, the session is lost, a stop is requested or
  // `until` passes; counts the time as blocked.
  double frame_blocked_s = 0;  // blocked before the current frame
  auto block_until = [&](Clock::time_point until) {
    const auto t0 = Clock::now();
    NetClient::Event e;
    while (session && outstanding) {
      const double left = secs(Clock::now(), until);
      if (left <= 0 || !wait_event(e, left)) break;
      handle(e);
    }
    const double b = secs(t0, Clock::now());
    r.blocked_s += b;
    r.max_blocked_s = std::max(r.max_blocked_s, b);
    frame_blocked_s += b;
  };
  // The answer to the outstanding key frame did not come within update_timeout_s.
  auto give_up = [&] {
    std::string why = "no answer to key frame " + std::to_string(*outstanding) + " within " +
                      std::to_string(opt.update_timeout_s) + " s";
    r.errors.push_back(why);
    net.drop(epoch, why);
    session = false;
    outstanding.reset();
    ++r.disconnects;
  };
  // Seconds from now as a time point; clipped to 1e9 s so that infinity stays representable.
  auto after = [](Clock::time_point t, double seconds) {
    return t + std::chrono::duration_cast<Clock::duration>(
                   std::chrono::duration<double>(std::clamp(seconds, 0.0, 1e9)));
  };
  // The running mean of the time per frame (blocked time excluded; the run's first frame, which
  // also starts the decoder and warms up the backend, only stands in until a second one is
  // measured) and the wait bound from it.
  double first_frame_s = 0, frame_time_s = -1;  // < 0: no frame after the first measured yet
  auto wait_bound = [&] {
    if (opt.max_wait_s >= 0) return opt.max_wait_s;
    const double frame_s = frame_time_s >= 0 ? frame_time_s : first_frame_s;
    return opt.max_wait_frames * std::max(frame_s, opt.frame_interval_s);
  };
  // Per outstanding key frame (partial/full): since when the edge needs its update, and whether
  // it has already waited for it.
  Clock::time_point due_since{};
  bool due = false, waited = false;

  if (opt.initial_wait_s > 0) {  // give the first session a head start (not a requirement)
    auto t0 = Clock::now();
    NetClient::Event e;
    while (!session) {
      double left = opt.initial_wait_s - secs(t0, Clock::now());
      if (left <= 0 || !wait_event(e, left)) break;
      handle(e);
    }
  }
  // The next frame; with opt.loop the video starts again when it ends, its indices shifted
  // past the previous passes.
  int64_t index_base = 0, pass_frames = 0, last_index = -1;
  auto next_frame = [&](io::Frame& f) {
    try {
      for (;;) {
        if (source->next(f)) {
          ++pass_frames;
          last_index = f.index;
          f.index += index_base;
          return true;
        }
        if (!opt.loop || pass_frames == 0 || stop_requested()) return false;
        index_base += last_index + 1;
        pass_frames = 0;
        source = io::open_video(opt.video);
      }
    } catch (const std::exception&) {
      // Ctrl-C also reaches an ffmpeg decoder in our process group: its death ends the input.
      if (stop_requested()) return false;
      throw;
    }
  };
  auto t_start = Clock::now(), t_print = t_start;
  const bool progress_tty = isatty(2) == 1;  // else a plain line every few seconds
  auto t_next = t_start, t_frame_end = t_start;
  io::Frame f;
  while ((opt.max_frames < 0 || r.frames < opt.max_frames) && !stop_requested() && next_frame(f)) {
    ST_CHECK(f.bgr.height == H && f.bgr.width == W, "edge: frame ", f.index, " changed size");
    frame_i = f.index;
    if (opt.frame_interval_s > 0) {
      if (!opt.stop) {
        std::this_thread::sleep_until(t_next);
      } else {
        for (auto now = Clock::now(); now < t_next && !stop_requested(); now = Clock::now())
          std::this_thread::sleep_for(std::min<Clock::duration>(
              t_next - now, std::chrono::duration_cast<Clock::duration>(
                                std::chrono::duration<double>(kStopPollS))));
      }
      t_next += std::chrono::duration_cast<Clock::duration>(
          std::chrono::duration<double>(opt.frame_interval_s));
    }
    NetClient::Event e;
    while (net.poll(e)) handle(e);  // updates are swapped in here, between frames

    auto make_key_frame = [&] {
      KeyFrame k;
      k.frame_index = uint64_t(frame_i);
      k.width = uint32_t(W);
      k.height = uint32_t(H);
      FrameEncoding enc = opt.key_encoding;
      if ((welcome.accept_frames & (1u << uint8_t(enc))) == 0) enc = FrameEncoding::RawBgr;
      k.encoding = enc;
      if (enc == FrameEncoding::Png) k.data = image::encode_png(image::bgr_to_rgb(f.bgr));
      else if (enc == FrameEncoding::Jpeg)
        k.data = image::encode_jpeg(image::bgr_to_rgb(f.bgr), opt.jpeg_quality);
      else k.data = f.bgr.pixels;
      r.key_bytes += int64_t(k.data.size());
      return k;
    };
    bool key_sent = false;
    std::vector<uint8_t> pred;
    bool stale = false;
    if (session && opt.mode == EdgeMode::Naive) {
      // Naive offloading: every frame goes up and the edge waits for its label map.
      net.send(epoch, make_key_frame());
      outstanding = frame_i;
      ++r.key_frames;
      key_sent = true;
      block_until(after(Clock::now(), opt.update_timeout_s));
      if (session && outstanding && !stop_requested()) give_up();
      if (labels && int64_t(labels->frame_index) == frame_i) pred = std::move(labels->labels);
      labels.reset();
    } else if (opt.mode != EdgeMode::Naive) {
      // SPEC §6: the update is due MIN_STRIDE frames after its key frame. The edge waits for it
      // there once, at most wait_bound(), then carries on stale (client.h); update_timeout_s
      // after it became due, the connection is dropped.
      if (session && outstanding && frame_i - *outstanding >= int64_t(welcome.min_stride)) {
        const auto now = Clock::now();
        if (!due) due = true, due_since = now;
        const auto deadline = after(due_since, opt.update_timeout_s);
        if (!waited) {
          waited = true;
          const double bound = wait_bound();
          r.max_wait_s = std::max(r.max_wait_s, bound);
          block_until(std::min(deadline, after(now, bound)));
        }
        if (session && outstanding && Clock::now() >= deadline && !stop_requested()) give_up();
        stale = session && outstanding.has_value();
      }
      if (session && !outstanding && frame_i >= next_key) {
        net.send(epoch, make_key_frame());  // without blocking: the network thread sends it
        outstanding = frame_i;
        due = waited = false;
        ++r.key_frames;
        key_sent = true;
      }
    }
    if (stale) ++r.stale_frames;
    if (pred.empty()) {  // the student, on the current weights
      Tensor x = nn::Student::preprocess_bgr(f.bgr.pixels.data(), H, W).to(opt.device);
      NoGradGuard ng;
      auto v = argmax_channels(active->forward(x)).to_vector<int64_t>();
      pred.assign(v.begin(), v.end());
    }
    char name[32];
    std::snprintf(name, sizeof name, "%06lld.png", (long long)frame_i);
    if (!opt.predictions_dir.empty()) io::write_label_png(opt.predictions_dir / name, pred, H, W);
    if (!opt.overlays_dir.empty() && frame_i % opt.overlay_every == 0)
      io::write_overlay_png(
          opt.overlays_dir / std::filesystem::path(name).replace_extension(opt.overlay_jpeg ? ".jpg" : ".png"),
          f.bgr, pred);
    double frame_miou = -1;
    if (reference && reference->has(frame_i)) {
      frame_miou = nn::miou(pred, reference->labels(frame_i, H, W));
      miou_sum += frame_miou;
      ++r.miou_frames;
    }
    ++r.frames;
    auto now = Clock::now();
    {  // the frame time: from the end of the previous frame, less the time blocked
      const double t = std::max(0.0, secs(t_frame_end, now) - frame_blocked_s);
      if (r.frames == 1) first_frame_s = t;
      else frame_time_s = frame_time_s < 0 ? t : frame_time_s + (t - frame_time_s) / 8.0;
      t_frame_end = now;
    }
    if (frame_log.is_open()) {
      nlohmann::json j;
      j["frame"] = frame_i;
      j["t"] = secs(t_start, now);
      j["key"] = key_sent;
      j["applied"] = applied;
      if (applied) j["server_miou"] = last_acc, j["steps"] = last_steps;
      j["stride"] = stride;
      if (frame_miou >= 0) j["miou"] = frame_miou;
      j["up"] = net.bytes_up();
      j["down"] = net.bytes_down();
      j["online"] = session;
      j["stale"] = stale;
      if (frame_blocked_s > 0) j["blocked_s"] = frame_blocked_s;
      frame_log << j.dump() << "\n";
    }
    applied = false;
    frame_blocked_s = 0;
    if (opt.progress && progress_due(progress_tty, secs(t_print, now), r.frames == 1)) {
      t_print = now;
      ProgressLine pl;
      pl.mode = r.mode;
      pl.frame = frame_i;
      pl.fps = double(r.frames) / std::max(secs(t_start, now), 1e-9);
      pl.stride = stride;
      pl.key_frames = r.key_frames;
      pl.stale_frames = r.stale_frames;
      pl.bytes_up = net.bytes_up();
      pl.bytes_down = net.bytes_down();
      pl.online = session;
      std::fputs(format_progress(pl, progress_tty).c_str(), stderr);
      std::fflush(stderr);
    }
    if (opt.on_frame) {
      EdgeProgress p;
      p.frame = frame_i;
      p.frames = r.frames;
      p.key_frames = r.key_frames;
      p.updates = r.updates;
      p.labels = r.labels;
      p.welcomes = r.welcomes;
      p.disconnects = r.disconnects;
      p.online = session;
      p.waiting = session && outstanding.has_value();
      p.stale = stale;
      p.stale_frames = r.stale_frames;
      if (!opt.on_frame(p)) break;
    }
  }
  if (opt.progress && progress_tty) std::fprintf(stderr, "\n");  // (a plain line ends with one)
  net.stop();
  r.wall_s = secs(t_start, Clock::now());
  r.fps = r.wall_s > 0 ? double(r.frames) / r.wall_s : 0;
  r.bytes_up = net.bytes_up();
  r.bytes_down = net.bytes_down();
  r.final_stride = stride;
  r.final_weights_hash = cur_hash;
  r.miou_mean = r.miou_frames ? miou_sum / double(r.miou_frames) : 0.0;
  if (frame_log.is_open()) {
    frame_log.flush();
    ST_CHECK(bool(frame_log), "edge: writing the frame log ", opt.frame_log.string(), " failed");
  }
  return r;
}

std::string to_json(const EdgeResult& r) {
  nlohmann::json j;
  j["mode"] = r.mode;
  j["frames"] = r.frames;
  j["key_frames"] = r.key_frames;
  j["key_frame_ratio"] = r.frames ? double(r.key_frames) / double(r.frames) : 0.0;
  j["updates"] = r.updates;
  j["updates_with_weights"] = r.updates_with_weights;
  j["distillation_steps"] = r.steps_total;
  j["labels_received"] = r.labels;
  j["sessions"] = r.welcomes;
  j["full_weight_syncs"] = r.full_weight_syncs;
  j["disconnects"] = r.disconnects;
  j["bytes"] = {{"up_total", r.bytes_up},
                {"down_total", r.bytes_down},
                {"up_per_frame", r.frames ? double(r.bytes_up) / double(r.frames) : 0.0},
                {"down_per_frame", r.frames ? double(r.bytes_down) / double(r.frames) : 0.0}};
  j["fps"] = r.fps;
  j["wall_s"] = r.wall_s;
  j["blocked_s"] = r.blocked_s;
  j["max_blocked_s"] = r.max_blocked_s;
  j["max_wait_s"] = r.max_wait_s;
  j["stale_frames"] = r.stale_frames;
  j["final_stride"] = r.final_stride;
  j["key_frame_bytes"] = r.key_bytes;
  if (r.miou_frames) {
    j["miou_frames"] = r.miou_frames;
    j["miou_mean"] = r.miou_mean;
  }
  j["errors"] = r.errors;
  return j.dump(1);
}

}  // namespace st::edge
