// The edge's network thread (net_client.h): a libuv loop that owns the TCP connection. Commands
// from the frame loop arrive through a uv_async_t; events go back through a mutex-guarded queue.
#include "edge/net_client.h"

#include <uv.h>

#include <algorithm>
#include <cmath>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <mutex>
#include <optional>
#include <thread>

#include "edge/token_bucket.h"
#include "net/net.h"
#include "protocol/conversation.h"
#include "protocol/decoder.h"
#include "tensor/tensor.h"

namespace st::edge {

using namespace st::protocol;
using Clock = std::chrono::steady_clock;

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
      case MessageType::Labels:
      case MessageType::Weights: {
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
          if (c && c->epoch == cmd.epoch) {
            if (cmd.body && c->connected && !c->closing) m->try_send_now(c, std::move(*cmd.body));
            m->fail(c, cmd.why);
          }
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

void NetClient::drop(uint64_t epoch, const std::string& why,
                     std::optional<protocol::ErrorMessage> error) {
  std::optional<protocol::Body> body;
  if (error) body = std::move(*error);
  impl_->command(Impl::Cmd{Impl::Cmd::Drop, epoch, std::move(body), why});
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

}  // namespace st::edge
