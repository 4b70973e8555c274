// Hostile clients on loopback (docs/security.md). Each attack runs while a good edge plays a clip
// in a loop; the good edge must keep every frame and every answer (one session, no disconnect,
// answers still arriving after the attack), the attacker gets the documented ERROR (or is cut
// off), and the process's resident memory (server, good edge and attacker together) grows by
// less than kRssBoundMB while the attack runs.
//
// Event-driven like test_server.cpp: no test depends on the machine's speed; an attack that the
// server failed to stop is detected by a byte or message count, never by a short timer.
#include <poll.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <fstream>
#include <thread>

#include "edge/client.h"
#include "raw_client.h"
#include "io/frame_decoder.h"
#include "server/server.h"
#include "synthetic_clip.h"
#include "test_util.h"

using namespace st;
using namespace st::protocol;
using test::encode_msg;
using test::good_hello;
using test::header_only;
using test::Raw;

namespace {

// What an attack may add to the resident memory of this process: the server's own buffers for
// a few key frames of the 48x64 clip are kilobytes, the attacker's buffers are allocated before
// the baseline. Without the limits each attack below adds hundreds of MB.
constexpr double kRssBoundMB = 48;

double rss_mb() {
  std::ifstream f("/proc/self/statm");
  long pages = 0, resident = 0;
  f >> pages >> resident;
  return double(resident) * double(::sysconf(_SC_PAGESIZE)) / (1024.0 * 1024.0);
}

// Samples the resident memory every 5 ms from construction to stop(): the peak above the
// baseline taken at construction.
struct RssWatch {
  double base = rss_mb();
  std::atomic<double> peak{base};
  std::atomic<bool> done{false};
  std::thread t{[this] {
    while (!done) {
      const double r = rss_mb();
      if (r > peak) peak = r;
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
  }};
  double stop() {
    done = true;
    if (t.joinable()) t.join();
    return peak - base;
  }
  ~RssWatch() { stop(); }
};

struct Clip : test::SyntheticClip {
  explicit Clip(const std::string& tag, int n = 24) : SyntheticClip("hostile_" + tag, n) {}
};

// A server for the clip and a good edge that plays it in a loop from before the attack until
// the attack is over and one more answer has arrived after it.
struct Arena {
  Clip clip;
  test::LogLines log;
  std::unique_ptr<server::Server> srv;
  std::atomic<bool> online{false}, attack_over{false};
  std::atomic<int64_t> updates_at_end{-1};
  edge::EdgeResult good;
  std::thread edge_thread;

  Arena(const std::string& tag, const std::function<void(server::ServerOptions&)>& configure)
      : clip(tag) {
    server::ServerOptions so;
    so.port = 0;
    so.token = "sesame";
    so.teacher = clip.looping_teacher();
    log.attach(so);
    configure(so);
    srv = std::make_unique<server::Server>(so);
    srv->start();
    edge_thread = std::thread([this] {
      edge::EdgeOptions o;
      o.net.host = "127.0.0.1";
      o.net.port = srv->port();
      o.net.log = false;
      o.token = "sesame";
      o.video = clip.frames;
      o.progress = false;
      o.update_timeout_s = test::kHungS;
      o.initial_wait_s = test::kHungS;
      o.loop = true;
      const auto deadline = test::hung_deadline();
      o.on_frame = [&](const edge::EdgeProgress& p) {
        if (p.online) online = true;
        if (attack_over && updates_at_end < 0) updates_at_end = p.updates;
        const bool done = attack_over && p.frames >= clip.count && p.updates > updates_at_end;
        return !done && std::chrono::steady_clock::now() < deadline;
      };
      good = edge::run_edge(o);
      online = true;  // (if it never came online, let the test go on and fail below)
    });
    REQUIRE(test::wait_until([&] { return online.load(); }));
  }
  // Ends the attack; the good edge then runs until one more answer and stops.
  void finish() {
    attack_over = true;
    if (edge_thread.joinable()) edge_thread.join();
  }
  ~Arena() {
    finish();
    if (srv) srv->stop();
  }
  // The good edge kept every frame and every answer in one session.
  void check_good_edge() {
    finish();
    INFO(edge::to_json(good));
    CHECK(good.errors.empty());
    REQUIRE(good.welcomes == 1);
    REQUIRE(good.disconnects == 0);
    REQUIRE(good.frames >= clip.count);
    REQUIRE(good.updates > updates_at_end);             // answers kept coming after the attack
    REQUIRE(good.updates >= good.key_frames - 1);       // every key frame answered but the last
  }
};

// The peer's last message, once it has closed the connection.
std::optional<ErrorMessage> final_error(Raw& r) {
  auto g = r.read_until_closed();
  if (!g.closed || g.msgs.empty() || !g.msgs.back().is<ErrorMessage>()) return std::nullopt;
  return g.msgs.back().as<ErrorMessage>();
}

}  // namespace

TEST_CASE("hostile: messages before login are refused from the header, memory stays flat",
          "[server][hostile]") {
  Arena a("prelogin", [](server::ServerOptions&) {});
  // 24 connections, each sending a 16 MiB KEY_FRAME minus its last byte before any HELLO: a
  // server that buffered them would hold 24 x 16 MiB until its HELLO deadline.
  constexpr int kConns = 24;
  constexpr uint32_t kPayload = (16u << 20) - 64;
  std::vector<uint8_t> attack = header_only(MessageType::KeyFrame, kPayload);
  attack.resize(32 + kPayload - 1, 0);
  RssWatch rss;
  std::vector<std::unique_ptr<Raw>> conns;
  size_t sent = 0;
  for (int i = 0; i < kConns; ++i) {
    conns.push_back(std::make_unique<Raw>(a.srv->port()));
    sent += conns.back()->send_until_error(attack.data(), attack.size());
  }
  for (auto& c : conns) {
    auto e = final_error(*c);
    REQUIRE(e);
    REQUIRE(e->code == ErrorCode::UnexpectedMessage);
  }
  const double grew = rss.stop();
  conns.clear();
  INFO("sent " << sent << " of " << kConns * attack.size() << " bytes; RSS grew " << grew
               << " MB");
  REQUIRE(sent < size_t(kConns) * attack.size());  // the server stopped reading
  REQUIRE(grew < kRssBoundMB);
  // The same bytes after a good HELLO would be a key frame of the wrong size: too big for the
  // 48x64 frames announced, refused from its header as well.
  {
    Raw r(a.srv->port());
    r.send(encode_msg(good_hello()));
    REQUIRE(r.read_one().is<Welcome>());
    Header h;
    h.type = uint16_t(MessageType::KeyFrame);
    h.seq = 1;
    h.payload_size = kPayload;
    std::vector<uint8_t> hdr(32);
    write_header(h, hdr.data());
    r.send(hdr);
    auto e = final_error(r);
    REQUIRE(e);
    REQUIRE(e->code == ErrorCode::Oversize);
  }
  a.check_good_edge();
}

TEST_CASE("hostile: connections that never log in are capped in number and per address",
          "[server][hostile]") {
  SECTION("the cap on connections waiting for HELLO") {
    Arena a("pending", [](server::ServerOptions& o) {
      o.max_pending = 16;
      o.max_per_address = 0;  // no per-address cap: the pending cap alone
      o.hello_timeout_s = 8;
    });
    // 100 silent connections: 16 are kept until their HELLO deadline (the first 16 the server
    // accepts), the other 84 are answered ERROR(Busy) and closed at once.
    std::vector<std::unique_ptr<Raw>> conns;
    for (int i = 0; i < 100; ++i) conns.push_back(std::make_unique<Raw>(a.srv->port()));
    int busy = 0, timeout = 0;
    for (auto& c : conns) {
      auto e = final_error(*c);
      REQUIRE(e);
      busy += e->code == ErrorCode::Busy;
      timeout += e->code == ErrorCode::Timeout;
    }
    REQUIRE(busy == 84);
    REQUIRE(timeout == 16);
    REQUIRE(a.srv->stats().connections_refused == 84);
    a.check_good_edge();
    // A flood is logged once a second, not once per connection.
    REQUIRE(a.log.contains("connections are waiting to log in"));
    REQUIRE(a.log.count("refused ") < 20);
  }
  SECTION("the cap per address, welcomed connections included") {
    Arena a("peraddr", [](server::ServerOptions& o) { o.max_per_address = 4; });
    // The good edge is one; three more log in; the fifth from 127.0.0.1 is refused.
    std::vector<std::unique_ptr<Raw>> conns;
    for (int i = 0; i < 3; ++i) {
      conns.push_back(std::make_unique<Raw>(a.srv->port()));
      conns.back()->send(encode_msg(good_hello()));
      REQUIRE(conns.back()->read_one().is<Welcome>());
    }
    Raw extra(a.srv->port());
    auto e = final_error(extra);
    REQUIRE(e);
    REQUIRE(e->code == ErrorCode::Busy);
    REQUIRE_THAT(e->text, Catch::Contains("the limit per address"));
    a.check_good_edge();
  }
  SECTION("silent connections end at the HELLO deadline, wherever they are") {
    Arena a("hellodeadline", [](server::ServerOptions& o) { o.hello_timeout_s = 0.5; });
    Raw r(a.srv->port());
    // One byte of a HELLO every 100 ms, 7 s for the whole: bytes do not extend the 0.5 s
    // deadline, so the server ends it long before the last byte.
    const std::vector<uint8_t> hello = encode_msg(good_hello());
    std::optional<ErrorMessage> e;
    size_t i = 0;
    for (; i + 1 < hello.size() && !e; ++i) {
      if (r.send_until_error(&hello[i], 1) != 1) break;
      pollfd p{r.fd, POLLIN, 0};
      if (::poll(&p, 1, 100) > 0) e = final_error(r);
    }
    INFO(i << " of HELLO's " << hello.size() << " bytes sent");
    REQUIRE(i + 1 < hello.size());  // cut off before the HELLO was complete
    if (!e) e = final_error(r);
    REQUIRE(e);
    REQUIRE(e->code == ErrorCode::Timeout);
    a.check_good_edge();
  }
}

TEST_CASE("hostile: a session trickling bytes times out on progress, not on bytes",
          "[server][hostile]") {
  Arena a("trickle", [](server::ServerOptions& o) { o.idle_timeout_s = 1.0; });
  Raw r(a.srv->port());
  r.send(encode_msg(good_hello()));
  REQUIRE(r.read_one().is<Welcome>());
  // A key frame's header, then one byte of its 9238-byte payload every 50 ms: 462 s to finish
  // it. Each byte would reset an idle timer on bytes; the timer on whole messages ends it after
  // a second (a PING first, which it cannot answer in the middle of a message).
  const std::vector<uint8_t> kf = encode_msg(test::key_frame(0), 1);
  size_t i = 0;
  bool closed = false;
  std::vector<Message> got;
  uint8_t buf[4096];
  constexpr size_t kMaxBytes = 32 + 200;  // 10 s of trickling: ten idle timeouts
  for (; i < kMaxBytes && !closed; ++i) {
    if (r.send_until_error(&kf[i], 1) != 1) break;
    pollfd p{r.fd, POLLIN, 0};
    while (::poll(&p, 1, i < 32 ? 0 : 50) > 0) {
      ssize_t n = ::recv(r.fd, buf, sizeof buf, 0);
      if (n <= 0) {
        closed = true;
        break;
      }
      r.dec.feed(buf, size_t(n));
      Message m;
      while (r.dec.next(m)) got.push_back(m);
    }
  }
  INFO(i << " bytes sent");
  REQUIRE(i < kMaxBytes);  // cut off while the bytes were still coming
  if (!closed) {
    auto rest = r.read_until_closed();
    REQUIRE(rest.closed);
    got.insert(got.end(), rest.msgs.begin(), rest.msgs.end());
  }
  REQUIRE(!got.empty());
  REQUIRE(got.back().is<ErrorMessage>());
  REQUIRE(got.back().as<ErrorMessage>().code == ErrorCode::Timeout);
  a.check_good_edge();  // the good edge, answering PINGs, was never idle
}

TEST_CASE("hostile: a peer that sends PINGs and never reads is cut off at its queue limit",
          "[server][hostile]") {
  constexpr size_t kQueueLimit = 1 << 20;
  Arena a("pingflood", [&](server::ServerOptions& o) { o.max_queued_bytes = kQueueLimit; });
  Raw r(a.srv->port(), 4096);
  r.send(encode_msg(good_hello()));
  REQUIRE(r.read_one().is<Welcome>());
  // Up to 64 MiB of PINGs (each answered by a 40-byte PONG that this peer never reads); the
  // kernel's socket buffers take a few MiB of PONGs, the server's queue 1 MiB more.
  constexpr size_t kBatch = 8192, kMaxBytes = size_t(64) << 20;
  std::vector<uint8_t> batch;
  batch.reserve(kBatch * 40);
  RssWatch rss;
  size_t sent = 0;
  uint64_t seq = 1;
  bool cut = false;
  while (sent < kMaxBytes && !cut) {
    batch.clear();
    for (size_t k = 0; k < kBatch; ++k) {
      auto m = encode_msg(Ping{seq}, seq);
      ++seq;
      batch.insert(batch.end(), m.begin(), m.end());
    }
    const size_t n = r.send_until_error(batch.data(), batch.size());
    sent += n;
    cut = n < batch.size();
  }
  const double grew = rss.stop();
  INFO("sent " << sent << " bytes of PINGs; RSS grew " << grew << " MB");
  REQUIRE(cut);  // the server closed the connection
  REQUIRE(a.srv->stats().overflows == 1);
  REQUIRE(grew < kRssBoundMB);
  REQUIRE(a.log.contains("Overflow"));
  a.check_good_edge();
}

TEST_CASE("hostile: frames larger than the pixel budget are refused at HELLO",
          "[server][hostile]") {
  Arena a("pixels", [](server::ServerOptions& o) { o.max_frame_pixels = 640 * 480; });
  {
    Raw r(a.srv->port());
    r.send(encode_msg(good_hello("sesame", 16384, 16384)));
    auto e = final_error(r);
    REQUIRE(e);
    REQUIRE(e->code == ErrorCode::BadFrame);
    REQUIRE_THAT(e->text, Catch::Contains("16384x16384"));
    REQUIRE_THAT(e->text, Catch::Contains("307200 pixels"));
  }
  {  // the budget itself is accepted
    Raw r(a.srv->port());
    r.send(encode_msg(good_hello("sesame", 640, 480)));
    REQUIRE(r.read_one().is<Welcome>());
  }
  a.check_good_edge();
}

TEST_CASE("hostile: text from peers reaches the log escaped and capped", "[server][hostile]") {
  Arena a("logs", [](server::ServerOptions&) {});
  const std::string forged = "x\n[server] session 99 (10.0.0.1:1): WELCOME \x1b[31mroot\x1b[0m";
  {  // an edge name with a line break and ANSI escapes
    Raw r(a.srv->port());
    Hello h = good_hello();
    h.edge_name = forged;
    r.send(encode_msg(h));
    REQUIRE(r.read_one().is<Welcome>());
    r.send(encode_msg(Bye{}, 1));
    r.read_until_closed();
  }
  {  // an unauthenticated peer's ERROR text, 4096 bytes long
    Raw r(a.srv->port());
    ErrorMessage e{ErrorCode::Internal, forged + std::string(4096 - forged.size(), 'A')};
    r.send(encode_msg(e));
    r.read_until_closed();
  }
  a.check_good_edge();
  const std::string all = a.log.all();
  INFO(all);
  REQUIRE(a.log.contains("WELCOME \"x\\x0a[server] session 99"));
  REQUIRE(a.log.contains("\\x1b[31mroot"));
  REQUIRE(a.log.contains("...[4096 bytes]"));
  for (const auto& line : a.log.snapshot()) {
    REQUIRE(line.find('\n') == std::string::npos);
    REQUIRE(line.find('\x1b') == std::string::npos);
    REQUIRE(line.size() < 400);
  }
}

TEST_CASE("hostile: hostile images as key frames get ERROR(BadFrame), memory stays flat",
          "[server][hostile]") {
  const auto dir = test::source_dir() / "tests" / "image_corpus";
  if (!std::filesystem::is_directory(dir)) ST_SKIP("tests/image_corpus/ is missing");
  // Every encoding taken, as by a server with trained weights (one from random initialisation
  // refuses JPEG before decoding anything).
  Arena a("images", [](server::ServerOptions& o) {
    o.accept_frames = protocol::kAcceptRawBgr | protocol::kAcceptPng | protocol::kAcceptJpeg;
  });
  // Each seed file the decoder must refuse (a JPEG Huffman table of 272 symbols: stb's heap
  // overflow; a progressive JPEG; truncated and corrupt files), and a 64x48 PNG whose zlib
  // stream goes on for 1024x512 pixels (decoded within the decoder's memory cap, or refused),
  // sent by a logged-in edge announcing the header's size.
  std::vector<std::filesystem::path> files;
  for (const auto& e : std::filesystem::directory_iterator(dir)) {
    const std::string name = e.path().filename().string();
    if (name.rfind("err_", 0) == 0 || name.rfind("bomb_", 0) == 0) files.push_back(e.path());
  }
  std::sort(files.begin(), files.end());
  REQUIRE(files.size() >= 6);
  RssWatch rss;
  for (const auto& f : files) {
    INFO(f.filename().string());
    std::ifstream in(f, std::ios::binary);
    std::vector<uint8_t> bytes((std::istreambuf_iterator<char>(in)), {});
    const bool png = f.extension() == ".png";
    const auto enc = png ? FrameEncoding::Png : FrameEncoding::Jpeg;
    int64_t w = 64, h = 48;
    io::key_frame_header_size(bytes.data(), bytes.size(), enc, &w, &h);
    if (w * h > 1920 * 1080) w = 64, h = 48;  // a header over the budget: announce 64x48
    Raw r(a.srv->port());
    r.send(encode_msg(good_hello("sesame", w, h)));
    REQUIRE(r.read_one().is<Welcome>());
    KeyFrame k;
    k.frame_index = 0;
    k.width = uint32_t(w);
    k.height = uint32_t(h);
    k.encoding = enc;
    k.data = bytes;
    r.send(encode_msg(k, 1));
    Message m = r.read_one();
    if (f.filename().string().rfind("bomb_", 0) == 0 && m.is<Update>())
      continue;  // a bomb that matches its header decodes within the decoder's memory cap
    REQUIRE(m.is<ErrorMessage>());
    CHECK(m.as<ErrorMessage>().code == ErrorCode::BadFrame);
  }
  const double grew = rss.stop();
  INFO("RSS grew " << grew << " MB");
  REQUIRE(grew < kRssBoundMB);
  a.check_good_edge();
}
