#include "edge/loadgen.h"

#include <uv.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <nlohmann/json.hpp>

#include "io/frame_encoder.h"
#include "io/video.h"
#include "nn/student.h"
#include "nn/update.h"
#include "protocol/decoder.h"
#include "protocol/protocol.h"
#include "tensor/tensor.h"

namespace st::edge {

using namespace st::protocol;

double quantile(std::vector<double> v, double q) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t rank = size_t(std::ceil(std::clamp(q, 0.0, 1.0) * double(v.size())));
  return v[rank == 0 ? 0 : rank - 1];
}

namespace {

struct Gen;

struct Sess {
  Gen* gen = nullptr;
  int index = 0;
  uv_tcp_t tcp{};
  uv_timer_t timer{};
  uv_connect_t connect{};
  Decoder dec;
  Encoder enc;
  std::vector<char> rbuf = std::vector<char>(64 * 1024);
  int open_handles = 0;
  bool welcomed = false, closing = false, outstanding = false;
  uint8_t accept_frames = kAcceptRawBgr;
  uint64_t sent_ns = 0, frame_index = 0;
  uint32_t stride = 8;
  int64_t answers = 0;
};

struct Gen {
  const LoadgenOptions& opt;
  LoadgenResult& r;
  uv_loop_t loop{};
  uv_timer_t end_timer{}, deadline_timer{};
  bool sending = true;
  uint64_t start_ns = 0, last_ns = 0;
  std::vector<uint8_t> raw, encoded;  // the key frame's pixels (BGR) and in key_encoding
  uint64_t layout = 0, weights = 0;
  std::vector<uint8_t> weights_blob;  // the student HELLO names, fp32: WEIGHTS when asked
  std::vector<std::unique_ptr<Sess>> sessions;
  int64_t width = 0, height = 0;
  Gen(const LoadgenOptions& o, LoadgenResult& res) : opt(o), r(res) {}
};

// Once every session is closing, the timers go too and the loop ends.
void maybe_finish(Gen& g) {
  if (g.sessions.size() < size_t(g.opt.sessions)) return;  // still being made
  for (auto& s : g.sessions)
    if (!s->closing) return;
  for (uv_timer_t* t : {&g.end_timer, &g.deadline_timer})
    if (!uv_is_closing(reinterpret_cast<uv_handle_t*>(t))) uv_close(reinterpret_cast<uv_handle_t*>(t), nullptr);
}

void error_text(Gen& g, const std::string& t) {
  ++g.r.errors;
  if (g.r.error_texts.size() < 32) g.r.error_texts.push_back(t);
}

void close_sess(Sess& s) {
  if (s.closing) return;
  s.closing = true;
  auto done = [](uv_handle_t* h) { --static_cast<Sess*>(h->data)->open_handles; };
  uv_timer_stop(&s.timer);
  uv_close(reinterpret_cast<uv_handle_t*>(&s.timer), done);
  uv_close(reinterpret_cast<uv_handle_t*>(&s.tcp), done);
  s.gen->last_ns = uv_hrtime();
  maybe_finish(*s.gen);
}

struct WriteReq {
  uv_write_t req;
  std::vector<uint8_t> bytes;
};

void send_body(Sess& s, Body body) {
  auto* w = new WriteReq;
  w->bytes = s.enc.encode(std::move(body));
  s.gen->r.bytes_up += int64_t(w->bytes.size());
  uv_buf_t b = uv_buf_init(reinterpret_cast<char*>(w->bytes.data()), unsigned(w->bytes.size()));
  w->req.data = w;
  const int rc = uv_write(&w->req, reinterpret_cast<uv_stream_t*>(&s.tcp), &b, 1, [](uv_write_t* q, int) {
    delete static_cast<WriteReq*>(q->data);
  });
  if (rc < 0) {
    delete w;
    error_text(*s.gen, std::string("write: ") + uv_strerror(rc));
    close_sess(s);
  }
}

// Sends the next key frame now, or schedules it: `stride` frame times after the previous one.
void schedule(Sess& s);

void send_key_frame(Sess& s) {
  Gen& g = *s.gen;
  if (s.closing || !g.sending || s.outstanding) return;
  KeyFrame k;
  k.frame_index = s.frame_index;
  k.width = uint32_t(g.width);
  k.height = uint32_t(g.height);
  const bool encoded = (s.accept_frames & (1u << uint8_t(g.opt.key_encoding))) != 0 &&
                       g.opt.key_encoding != FrameEncoding::RawBgr;
  k.encoding = encoded ? g.opt.key_encoding : FrameEncoding::RawBgr;
  k.data = encoded ? g.encoded : g.raw;
  s.outstanding = true;
  s.sent_ns = uv_hrtime();
  ++g.r.key_frames;
  send_body(s, std::move(k));
}

void schedule(Sess& s) {
  Gen& g = *s.gen;
  if (s.closing || !g.sending) return;
  const double gap_s = g.opt.key_interval_s > 0 ? g.opt.key_interval_s : double(s.stride) / g.opt.fps;
  const double since_s = double(uv_hrtime() - s.sent_ns) * 1e-9;
  const uint64_t wait_ms = s.sent_ns == 0 ? 0 : uint64_t(std::max(0.0, gap_s - since_s) * 1000.0);
  s.frame_index += g.opt.key_interval_s > 0 ? uint64_t(std::max(1.0, std::round(gap_s * g.opt.fps))) : s.stride;
  uv_timer_start(&s.timer, [](uv_timer_t* t) { send_key_frame(*static_cast<Sess*>(t->data)); }, wait_ms, 0);
}

void on_message(Sess& s, Message& m) {
  Gen& g = *s.gen;
  if (m.is<Welcome>()) {
    const Welcome& w = m.as<Welcome>();
    s.welcomed = true;
    ++g.r.welcomed;
    s.enc.set_version(w.version);
    s.dec.set_versions(w.version, w.version);
    s.accept_frames = w.accept_frames;
    s.stride = w.min_stride;
    s.frame_index = 0;
    if (w.scope == WeightsScope::Wanted) send_body(s, Weights{BlobEncoding::F32, g.weights_blob});
    send_key_frame(s);
    return;
  }
  if (m.is<Update>() || m.is<Labels>()) {
    if (!s.outstanding) return;
    s.outstanding = false;
    const uint64_t now = uv_hrtime();
    g.r.latency_ms.push_back(double(now - s.sent_ns) * 1e-6);
    ++g.r.answers;
    ++s.answers;
    g.last_ns = now;
    if (m.is<Update>()) s.stride = std::max<uint32_t>(1, m.as<Update>().next_stride);
    if (g.opt.mode == Mode::Naive) s.stride = 1;
    g.r.mean_stride += double(s.stride);
    if (g.sending) schedule(s);
    else close_sess(s);
    return;
  }
  if (m.is<ErrorMessage>()) {
    const ErrorMessage& e = m.as<ErrorMessage>();
    error_text(g, "session " + std::to_string(s.index) + ": ERROR " + error_code_name(e.code) + ": " + e.text);
    close_sess(s);
    return;
  }
  if (m.is<Ping>()) send_body(s, Pong{m.as<Ping>().nonce});
  // WEIGHTS, PONG, BYE: nothing to do (blobs are not applied).
}

void on_read(uv_stream_t* st, ssize_t n, const uv_buf_t*) {
  Sess& s = *static_cast<Sess*>(st->data);
  if (n < 0) {
    if (!s.closing && (s.outstanding || s.gen->sending))
      error_text(*s.gen, "session " + std::to_string(s.index) + ": connection closed: " + uv_err_name(int(n)));
    close_sess(s);
    return;
  }
  s.gen->r.bytes_down += n;
  try {
    s.dec.feed(reinterpret_cast<const uint8_t*>(s.rbuf.data()), size_t(n));
    Message m;
    while (!s.closing && s.dec.next(m)) on_message(s, m);
  } catch (const std::exception& e) {
    error_text(*s.gen, "session " + std::to_string(s.index) + ": " + e.what());
    close_sess(s);
  }
}

void on_connect(uv_connect_t* c, int status) {
  Sess& s = *static_cast<Sess*>(c->data);
  if (s.closing) return;
  if (status < 0) {
    error_text(*s.gen, "session " + std::to_string(s.index) + ": connect: " + uv_strerror(status));
    close_sess(s);
    return;
  }
  uv_read_start(
      reinterpret_cast<uv_stream_t*>(&s.tcp),
      [](uv_handle_t* h, size_t, uv_buf_t* b) {
        Sess& ss = *static_cast<Sess*>(h->data);
        *b = uv_buf_init(ss.rbuf.data(), unsigned(ss.rbuf.size()));
      },
      on_read);
  Hello h;
  h.mode = s.gen->opt.mode;
  h.layout_hash = s.gen->layout;
  h.weights_hash = s.gen->weights;
  h.frame_width = uint32_t(s.gen->width);
  h.frame_height = uint32_t(s.gen->height);
  h.accept_blobs = kAcceptF32 | kAcceptF16;
  h.auth_token = s.gen->opt.token;
  h.edge_name = s.gen->opt.name + "-" + std::to_string(s.index);
  send_body(s, std::move(h));
}

}  // namespace

LoadgenResult run_loadgen(const LoadgenOptions& opt) {
  ST_CHECK(opt.sessions >= 1, "loadgen: sessions must be >= 1");
  ST_CHECK(opt.fps > 0 && opt.duration_s > 0, "loadgen: fps and duration must be > 0");
  LoadgenResult r;
  r.sessions = opt.sessions;
  Gen g(opt, r);
  {
    nn::Student student(opt.init_seed);
    if (!opt.weights.empty()) student.load_safetensors(opt.weights);
    g.layout = nn::layout_hash(student, nn::Distillation::Full);
    g.weights = nn::weights_hash(student);
    g.weights_blob = nn::pack_trained(student, nn::Distillation::Full, BlobEncoding::F32);
  }
  image::Image frame;
  if (!opt.video.empty()) {
    auto src = io::open_video(opt.video);
    io::Frame f;
    ST_CHECK(src->next(f), "loadgen: no frame in ", opt.video.string());
    frame = f.bgr;
  } else {
    ST_CHECK(opt.width > 0 && opt.height > 0, "loadgen: bad frame size");
    frame = image::Image{opt.height, opt.width, 3, std::vector<uint8_t>(size_t(opt.width * opt.height * 3))};
    for (size_t i = 0; i < frame.pixels.size(); ++i) frame.pixels[i] = uint8_t((i * 7) ^ (i >> 9));
  }
  g.raw = frame.pixels;
  g.width = frame.width;
  g.height = frame.height;
  if (opt.key_encoding != FrameEncoding::RawBgr)
    g.encoded = io::encode_key_frame(frame, opt.key_encoding, opt.jpeg_quality);

  ST_CHECK(uv_loop_init(&g.loop) == 0, "loadgen: uv_loop_init failed");
  sockaddr_storage addr{};
  int rc = uv_ip4_addr(opt.host.c_str(), opt.port, reinterpret_cast<sockaddr_in*>(&addr));
  if (rc < 0) rc = uv_ip6_addr(opt.host.c_str(), opt.port, reinterpret_cast<sockaddr_in6*>(&addr));
  ST_CHECK(rc >= 0, "loadgen: bad host '", opt.host, "' (a numeric IPv4/IPv6 address)");
  uv_timer_init(&g.loop, &g.end_timer);
  uv_timer_init(&g.loop, &g.deadline_timer);
  g.end_timer.data = g.deadline_timer.data = &g;
  g.start_ns = g.last_ns = uv_hrtime();
  for (int i = 0; i < opt.sessions; ++i) {
    auto s = std::make_unique<Sess>();
    s->gen = &g;
    s->index = i;
    uv_tcp_init(&g.loop, &s->tcp);
    uv_timer_init(&g.loop, &s->timer);
    s->tcp.data = s->timer.data = s->connect.data = s.get();
    s->open_handles = 2;
    uv_tcp_nodelay(&s->tcp, 1);
    rc = uv_tcp_connect(&s->connect, &s->tcp, reinterpret_cast<sockaddr*>(&addr), on_connect);
    if (rc < 0) {
      error_text(g, "session " + std::to_string(i) + ": connect: " + uv_strerror(rc));
      close_sess(*s);
    }
    g.sessions.push_back(std::move(s));
  }
  // At duration_s: stop sending; sessions with nothing outstanding close now, the others when
  // their answer comes or at the answer deadline.
  uv_timer_start(&g.end_timer, [](uv_timer_t* t) {
    Gen& gg = *static_cast<Gen*>(t->data);
    gg.sending = false;
    if (!uv_is_closing(reinterpret_cast<uv_handle_t*>(&gg.deadline_timer)))
      uv_timer_start(&gg.deadline_timer, [](uv_timer_t* d) {
        Gen& g2 = *static_cast<Gen*>(d->data);
        for (auto& s : g2.sessions) {
          if (!s->closing && s->outstanding)
            error_text(g2, "session " + std::to_string(s->index) + ": no answer by the deadline");
          close_sess(*s);
        }
      }, uint64_t(gg.opt.answer_timeout_s * 1000.0), 0);
    for (auto& s : gg.sessions)
      if (!s->outstanding) close_sess(*s);
    maybe_finish(gg);
  }, uint64_t(opt.duration_s * 1000.0), 0);
  uv_run(&g.loop, UV_RUN_DEFAULT);
  uv_loop_close(&g.loop);

  r.wall_s = double(g.last_ns - g.start_ns) * 1e-9;
  r.answers_per_s = double(r.answers) / opt.duration_s;
  r.mean_stride = r.answers ? r.mean_stride / double(r.answers) : 0;
  r.p50_ms = quantile(r.latency_ms, 0.50);
  r.p95_ms = quantile(r.latency_ms, 0.95);
  r.p99_ms = quantile(r.latency_ms, 0.99);
  r.max_ms = r.latency_ms.empty() ? 0 : *std::max_element(r.latency_ms.begin(), r.latency_ms.end());
  for (auto& s : g.sessions) r.answers_per_session.push_back(s->answers);
  return r;
}

std::string to_json(const LoadgenResult& r) {
  nlohmann::json j;
  j["sessions"] = r.sessions;
  j["welcomed"] = r.welcomed;
  j["key_frames"] = r.key_frames;
  j["answers"] = r.answers;
  j["errors"] = r.errors;
  j["error_texts"] = r.error_texts;
  j["bytes_up"] = r.bytes_up;
  j["bytes_down"] = r.bytes_down;
  j["wall_s"] = r.wall_s;
  j["answers_per_s"] = r.answers_per_s;
  j["latency_ms"] = {{"p50", r.p50_ms}, {"p95", r.p95_ms}, {"p99", r.p99_ms}, {"max", r.max_ms}};
  j["mean_stride"] = r.mean_stride;
  j["answers_per_session"] = r.answers_per_session;
  return j.dump(1);
}

}  // namespace st::edge
