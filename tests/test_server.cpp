// shadowtutor-server over loopback: concurrent sessions, misbehaving clients (raw sockets),
// clients vanishing mid-message, external teachers that crash, write garbage or hang.
//
// No test depends on how fast the machine is: each waits for the event it needs (a message, a
// close, the server's sessions ending) up to a deadline that only a hung test reaches
// (test::kHungS); elapsed times are only bounded from below.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <omp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstring>
#include <fstream>
#include <future>
#include <memory>
#include <mutex>
#include <set>
#include <sstream>
#include <thread>
#include <tuple>

#include "algorithm_reference.h"
#include "edge/client.h"
#include "edge/simulate.h"
#include "io/video.h"
#include "nn/blob.h"
#include "protocol/crc32c.h"
#include "protocol/decoder.h"
#include "net/net.h"
#include "server/metrics.h"
#include "server/server.h"
#include "raw_client.h"
#include "synthetic_clip.h"
#include "tensor/image.h"
#include "test_util.h"

using namespace st;
namespace fs = std::filesystem;
using namespace st::protocol;

namespace {

using test::encode_msg;
using test::expect_error_and_close;
using test::fix_crcs;
using test::good_hello;
using test::header_only;
using test::key_frame;
using test::Raw;

constexpr int64_t kH = 48, kW = 64;  // the frames of Clip (and of raw_client.h's defaults)

// A clip of `n` 48x64 frames, a bright rectangle drifting right, labelled exactly.
struct Clip : test::SyntheticClip {
  explicit Clip(const std::string& tag, int n = 24) : SyntheticClip("srv_" + tag, n) {}
};

server::ServerOptions server_options(const fs::path& labels) {
  server::ServerOptions o;
  o.port = 0;
  o.token = "sesame";
  o.log = false;
  o.teacher = [labels] { return std::make_unique<teachers::RecordedTeacher>(labels); };
  return o;
}

edge::EdgeOptions edge_options(const Clip& clip, int port) {
  edge::EdgeOptions o;
  o.net.host = "127.0.0.1";
  o.net.port = port;
  o.net.log = false;
  o.net.backoff_initial_s = 0.05;
  o.net.backoff_max_s = 0.2;
  o.token = "sesame";
  o.video = clip.frames;
  o.progress = false;
  o.update_timeout_s = test::kHungS;
  o.max_wait_s = test::kHungS;  // updates are applied when due (SPEC §6), however slow the server
  o.initial_wait_s = test::kHungS;
  return o;
}

// The frames of a clip as an edge sends them (raw BGR).
std::vector<std::vector<uint8_t>> raw_frames(const fs::path& dir) {
  std::vector<std::vector<uint8_t>> frames;
  auto src = io::open_video(dir);
  io::Frame f;
  while (src->next(f)) frames.push_back(f.bgr.pixels);
  return frames;
}

// A client that follows SPEC §6's schedule on a welcomed connection: key frame 0, then key + the
// UPDATE's stride, to the end of `frames`. `seq` is its next sequence number.
std::vector<Update> follow_schedule(Raw& r, const std::vector<std::vector<uint8_t>>& frames,
                                    uint64_t& seq) {
  std::vector<Update> got;
  for (uint64_t key = 0; key < frames.size();) {
    KeyFrame k = key_frame(key);
    k.data = frames[size_t(key)];
    r.send(encode_msg(k, seq++));
    Message m = r.read_one();
    REQUIRE(m.is<Update>());
    got.push_back(m.as<Update>());
    REQUIRE(got.back().key_frame == key);
    key += got.back().next_stride;
  }
  return got;
}

}  // namespace

TEST_CASE("server: three concurrent edges complete a clip and apply updates", "[server]") {
  Clip clip("three");
  server::Server srv(server_options(clip.labels));
  srv.start();
  REQUIRE(srv.port() > 0);
  std::vector<edge::EdgeResult> res(3);
  std::vector<std::thread> ts;
  for (int c = 0; c < 3; ++c)
    ts.emplace_back([&, c] {
      auto o = edge_options(clip, srv.port());
      o.edge_name = "edge" + std::to_string(c);
      if (c == 2) o.init_seed = 7;  // differs from the server's base: sends it (migration)
      res[size_t(c)] = edge::run_edge(o);
    });
  for (auto& t : ts) t.join();
  for (int c = 0; c < 3; ++c) {
    const auto& r = res[size_t(c)];
    INFO("edge " << c << ": " << edge::to_json(r));
    REQUIRE(r.frames == 24);
    REQUIRE(r.welcomes == 1);
    REQUIRE(r.key_frames >= 2);
    REQUIRE(r.key_frames <= 3);  // strides >= MIN_STRIDE 8
    // The last key frame may still be unanswered when the clip ends.
    REQUIRE(r.updates >= r.key_frames - 1);
    REQUIRE(r.updates_with_weights >= 1);
    REQUIRE(r.steps_total > 0);
    REQUIRE(r.final_weights_hash != r.initial_weights_hash);  // the updates were applied
    REQUIRE(r.bytes_up >= r.key_frames * (kH * kW * 3 + 53));
    REQUIRE(r.bytes_down >= r.updates_with_weights * (32 + 25 + 413884));
  }
  REQUIRE(res[2].weights_uploads == 1);
  REQUIRE(res[2].full_weight_syncs == 0);
  REQUIRE(res[0].weights_uploads == 0);
  REQUIRE(res[0].full_weight_syncs == 0);
  REQUIRE(srv.stats().migrations == 1);
  // The edges said BYE on their way out; let the server finish those closes before stopping it
  // (a session still open at stop() gets ERROR(ShuttingDown), which would count below).
  REQUIRE(test::wait_until([&] { return srv.stats().sessions_active == 0; }));
  srv.stop();
  auto st = srv.stats();
  REQUIRE(st.sessions_opened == 3);
  REQUIRE(st.sessions_active == 0);
  REQUIRE(st.errors_sent == 0);
}

TEST_CASE("server: bad clients get ERROR and are closed while a good one carries on", "[server]") {
  Clip clip("bad");
  auto so = server_options(clip.labels);
  so.max_message_bytes = 1 << 20;
  so.teacher = clip.looping_teacher();
  server::Server srv(so);
  srv.start();
  const int port = srv.port();

  // A good edge that keeps running while the bad clients come and go: it plays the clip in a
  // loop from before the first bad client (online) until after the last one (bad_done), and at
  // least the whole clip and one update.
  std::atomic<bool> good_online{false}, bad_done{false};
  edge::EdgeResult good;
  std::thread good_thread([&] {
    auto o = edge_options(clip, port);
    o.loop = true;
    const auto deadline = test::hung_deadline();
    o.on_frame = [&](const edge::EdgeProgress& p) {
      if (p.online) good_online = true;
      const bool done = bad_done && p.frames >= clip.count && p.updates >= 1;
      return !done && std::chrono::steady_clock::now() < deadline;
    };
    good = edge::run_edge(o);
    good_online = true;  // (if it never came online, let the test go on and fail below)
  });
  struct JoinOnExit {  // also when a REQUIRE below fails
    std::atomic<bool>& done;
    std::thread& t;
    ~JoinOnExit() {
      done = true;
      if (t.joinable()) t.join();
    }
  } join_on_exit{bad_done, good_thread};
  REQUIRE(test::wait_until([&] { return good_online.load(); }));

  {  // not the protocol at all
    Raw r(port);
    r.send(std::vector<uint8_t>{'G', 'E', 'T', ' ', '/', ' ', 'H', 'T', 'T', 'P'});
    REQUIRE(expect_error_and_close(r) == ErrorCode::BadMagic);
  }
  {  // a HELLO header announcing a payload below HELLO's minimum
    Raw r(port);
    r.send(header_only(MessageType::Hello, 10));
    REQUIRE(expect_error_and_close(r) == ErrorCode::Truncated);
  }
  {  // oversize: a 20 MB HELLO announced in the header, refused before any payload
    Raw r(port);
    r.send(header_only(MessageType::Hello, 20u << 20));
    REQUIRE(expect_error_and_close(r) == ErrorCode::Oversize);
  }
  {  // a key frame before HELLO, refused from its header (test_hostile.cpp: memory stays flat)
    Raw r(port);
    r.send(header_only(MessageType::KeyFrame, 20u << 20));
    REQUIRE(expect_error_and_close(r) == ErrorCode::UnexpectedMessage);
  }
  {  // malformed field: HELLO.mode = 7
    Raw r(port);
    auto b = encode_msg(good_hello());
    b[32 + 4] = 7;
    fix_crcs(b);
    r.send(b);
    REQUIRE(expect_error_and_close(r) == ErrorCode::Malformed);
  }
  {  // corrupted payload (CRC mismatch)
    Raw r(port);
    auto b = encode_msg(good_hello());
    b[40] ^= 0x55;
    r.send(b);
    REQUIRE(expect_error_and_close(r) == ErrorCode::BadCrc);
  }
  {  // wrong token
    Raw r(port);
    r.send(encode_msg(good_hello("open sesame")));
    REQUIRE(expect_error_and_close(r) == ErrorCode::AuthFailed);
  }
  {  // no common version
    Raw r(port);
    Hello h = good_hello();
    h.min_version = 5;
    h.max_version = 9;
    r.send(encode_msg(h, 0, 5));
    REQUIRE(expect_error_and_close(r) == ErrorCode::UnsupportedVersion);
  }
  {  // a layout the server does not have
    Raw r(port);
    Hello h = good_hello();
    h.layout_hash ^= 1;
    r.send(encode_msg(h));
    REQUIRE(expect_error_and_close(r) == ErrorCode::LayoutMismatch);
  }
  {  // a valid message at the wrong time: KEY_FRAME before HELLO
    Raw r(port);
    r.send(encode_msg(key_frame(0)));
    REQUIRE(expect_error_and_close(r) == ErrorCode::UnexpectedMessage);
  }
  {  // a key frame of the wrong size after a good handshake
    Raw r(port);
    r.send(encode_msg(good_hello()));
    Message w = r.read_one();
    REQUIRE(w.is<Welcome>());
    REQUIRE(w.as<Welcome>().blob_kind == st::BlobEncoding::None);  // same base weights
    KeyFrame k = key_frame(0);
    k.width = 32;
    k.data.resize(size_t(32 * kH * 3));
    r.send(encode_msg(k, 1));
    REQUIRE(expect_error_and_close(r) == ErrorCode::UnexpectedMessage);
  }
  {  // PING answered, then BYE answered with BYE and a close
    Raw r(port);
    r.send(encode_msg(good_hello()));
    REQUIRE(r.read_one().is<Welcome>());
    r.send(encode_msg(Ping{99}, 1));
    Message p = r.read_one();
    REQUIRE(p.is<Pong>());
    REQUIRE(p.as<Pong>().nonce == 99);
    r.send(encode_msg(Bye{}, 2));
    auto g = r.read_until_closed();
    REQUIRE(g.closed);
    REQUIRE(g.msgs.size() == 1);
    REQUIRE(g.msgs[0].is<Bye>());
  }
  bad_done = true;
  good_thread.join();
  INFO(edge::to_json(good));
  REQUIRE(good.frames >= 24);
  REQUIRE(good.welcomes == 1);
  REQUIRE(good.disconnects == 0);
  REQUIRE(good.updates >= 1);
  srv.stop();
  REQUIRE(srv.stats().errors_sent >= 10);
}

TEST_CASE("server: clients vanishing mid-message or with a key frame in flight", "[server]") {
  Clip clip("vanish");
  server::Server srv(server_options(clip.labels));
  srv.start();
  const int port = srv.port();
  for (int round = 0; round < 3; ++round) {
    {  // half a HELLO, then gone
      Raw r(port);
      auto b = encode_msg(good_hello());
      b.resize(b.size() / 2);
      r.send(b);
    }
    {  // half a KEY_FRAME after the handshake, then gone
      Raw r(port);
      r.send(encode_msg(good_hello()));
      REQUIRE(r.read_one().is<Welcome>());
      auto b = encode_msg(key_frame(0), 1);
      b.resize(b.size() - 1000);
      r.send(b);
    }
    {  // a whole KEY_FRAME, then gone while the worker distils it
      Raw r(port);
      r.send(encode_msg(good_hello()));
      REQUIRE(r.read_one().is<Welcome>());
      r.send(encode_msg(key_frame(0), 1));
    }
  }
  // The server still serves a full session.
  {
    Raw r(port);
    r.send(encode_msg(good_hello()));
    REQUIRE(r.read_one().is<Welcome>());
    r.send(encode_msg(key_frame(0), 1));
    Message u = r.read_one();
    REQUIRE(u.is<Update>());
    REQUIRE(u.as<Update>().key_frame == 0);
    REQUIRE(u.as<Update>().next_stride >= 8);
    REQUIRE(u.as<Update>().next_stride <= 64);
    if (u.as<Update>().steps > 0) {
      REQUIRE(u.as<Update>().blob_kind == st::BlobEncoding::F32);
      REQUIRE(u.as<Update>().blob.size() == 24 + 413860);
    }
  }
  // Every session ends (worker jobs of vanished clients finish on live memory).
  REQUIRE(test::wait_until([&] { return srv.stats().sessions_active == 0; }));
  REQUIRE(srv.stats().sessions_opened == 10);
  srv.stop();
}

TEST_CASE("server: every UPDATE is Algorithm 1 and Algorithm 2 of the accuracy reached, and "
          "simulate gives the same key frames", "[server]") {
  Clip clip("alg", 48);
  server::Server srv(server_options(clip.labels));
  srv.start();
  const auto frames = raw_frames(clip.frames);
  REQUIRE(int64_t(frames.size()) == clip.count);
  std::vector<Update> got;
  {
    Raw r(srv.port());
    r.send(encode_msg(good_hello()));
    REQUIRE(r.read_one().is<Welcome>());
    uint64_t seq = 1;
    got = follow_schedule(r, frames, seq);
    r.send(encode_msg(Bye{}, seq++));
    REQUIRE(r.read_until_closed().closed);
  }
  srv.stop();

  // The same session replayed in this process by the reference (tests/algorithm_reference.h),
  // from the server's base weights (nn::Student(init_seed 0)).
  nn::Student ref_student(0);
  auto ref = test::reference_schedule(clip.frames, clip.labels, ref_student, clip.count);
  REQUIRE(got.size() == ref.size());
  bool stride_tells = false;  // a key frame where the accuracy before training gives another
                              // stride than the accuracy reached (else the check could not fail)
  for (size_t k = 0; k < ref.size(); ++k) {
    const Update& u = got[k];
    const auto& want = ref[k];
    INFO("key frame " << want.frame << ": steps " << want.outcome.steps << ", mIoU "
                      << want.outcome.acc_before << " -> " << want.outcome.acc);
    REQUIRE(int64_t(u.key_frame) == want.frame);
    REQUIRE(int(u.steps) == want.outcome.steps);
    REQUIRE(u.accuracy == float(want.outcome.acc));
    REQUIRE(int(u.next_stride) == want.next_stride);
    if (want.outcome.steps > 0) {
      REQUIRE(u.blob_kind == st::BlobEncoding::F32);
      REQUIRE(u.blob == want.blob);  // the trained tensors, bit for bit
    } else {
      REQUIRE(u.blob.empty());
    }
    stride_tells |= want.stride_from_before != want.next_stride;
  }
  REQUIRE(stride_tells);
  REQUIRE(ref.size() >= 3);

  // `shadowtutor simulate` on the same clip and recorded teacher runs the same server half
  // (Student(0) is simulate's random init too): the same key frames, steps, accuracies, strides.
  edge::SimOptions so;
  so.video = clip.frames;
  so.labels = clip.labels;
  so.progress = false;
  so.eval_every = clip.count;  // (only the key frames matter here)
  edge::SimResult sim = edge::simulate(so);
  REQUIRE(sim.key_log.size() == got.size());
  for (size_t k = 0; k < got.size(); ++k) {
    INFO("key frame " << k);
    REQUIRE(sim.key_log[k].frame == int64_t(got[k].key_frame));
    REQUIRE(sim.key_log[k].next_stride == int(got[k].next_stride));
    REQUIRE(sim.key_log[k].steps == int(got[k].steps));
    REQUIRE(float(sim.key_log[k].acc) == got[k].accuracy);
  }
}

namespace {
// Writes an executable shell script and returns the command that runs it.
std::string script(const fs::path& dir, const std::string& name, const std::string& body) {
  fs::path p = dir / name;
  std::ofstream(p) << "#!/bin/sh\n" << body;
  fs::permissions(p, fs::perms::owner_all);
  return "'" + p.string() + "'";
}
}  // namespace

TEST_CASE("server: external teacher command: good, crashing, garbage", "[server]") {
  Clip clip("teacher", 1);
  // A good teacher for 48x64 frames: reads each 20 + 9216 byte request, answers an all-person
  // label map (class 0) with "no boxes" (count 0xFFFFFFFF).
  const std::string good = script(clip.dir, "good.sh", R"(
while head -c 9236 > /dev/null; do
  printf 'STTA\060\000\000\000\100\000\000\000'
  head -c 3072 /dev/zero
  printf '\377\377\377\377'
done
)");
  const std::string crash = script(clip.dir, "crash.sh", "head -c 100 > /dev/null\nexit 3\n");
  const std::string garbage = script(clip.dir, "garbage.sh",
                                     "printf 'this is not a label map at all'\nsleep 5\n");

  auto run_session = [&](const std::string& cmd, test::LogLines& log) {
    auto so = server_options(clip.labels);
    log.attach(so);
    so.teacher = [cmd] { return std::make_unique<teachers::CommandTeacher>(cmd, test::kHungS); };
    server::Server srv(so);
    srv.start();
    Raw r(srv.port());
    r.send(encode_msg(good_hello()));
    REQUIRE(r.read_one().is<Welcome>());
    r.send(encode_msg(key_frame(0), 1));
    auto g = r.read_until_closed();
    // The server is alive: a new session still gets its WELCOME.
    Raw r2(srv.port());
    r2.send(encode_msg(good_hello()));
    REQUIRE(r2.read_one().is<Welcome>());
    auto st = srv.stats();
    srv.stop();
    return std::make_pair(g, st);
  };

  {
    auto so = server_options(clip.labels);
    so.teacher = [good] { return std::make_unique<teachers::CommandTeacher>(good, test::kHungS); };
    server::Server srv(so);
    srv.start();
    Raw r(srv.port());
    r.send(encode_msg(good_hello()));
    REQUIRE(r.read_one().is<Welcome>());
    for (uint64_t k = 0; k < 2; ++k) {
      r.send(encode_msg(key_frame(k * 8), 1 + k));
      Message u = r.read_one();
      REQUIRE(u.is<Update>());
      REQUIRE(u.as<Update>().key_frame == k * 8);
    }
    srv.stop();
    REQUIRE(srv.stats().teacher_failures == 0);
  }
  for (const std::string& cmd : {crash, garbage}) {
    test::LogLines log;
    auto [g, st] = run_session(cmd, log);
    REQUIRE(g.closed);
    REQUIRE(!g.msgs.empty());
    REQUIRE(g.msgs.back().is<ErrorMessage>());
    const auto& e = g.msgs.back().as<ErrorMessage>();
    INFO(e.text);
    REQUIRE(e.code == ErrorCode::Internal);
    REQUIRE_THAT(e.text, Catch::Contains("teacher failed on frame 0"));
    // Why goes to the server's log; the peer learns no path of the server's (the command
    // names a script in the clip's directory).
    REQUIRE_THAT(e.text, !Catch::Contains(clip.dir.string()));
    INFO(log.all());
    if (cmd == crash) REQUIRE(log.contains("exited with status 3"));
    else REQUIRE(log.contains("garbage"));
    REQUIRE(st.teacher_failures == 1);
  }
}

TEST_CASE("server: idle sessions are PINGed, then closed, while a peer that answers stays", "[server]") {
  Clip clip("idle", 2);
  auto so = server_options(clip.labels);
  so.idle_timeout_s = 0.4;
  server::Server srv(so);
  srv.start();
  {  // silent after the handshake: PING, then ERROR(Timeout) and a close
    Raw r(srv.port());
    r.send(encode_msg(good_hello()));
    REQUIRE(r.read_one().is<Welcome>());
    auto t0 = std::chrono::steady_clock::now();
    auto g = r.read_until_closed();
    double waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    REQUIRE(g.closed);
    REQUIRE(g.msgs.size() == 2);
    REQUIRE(g.msgs[0].is<Ping>());
    REQUIRE(g.msgs[1].is<ErrorMessage>());
    REQUIRE(g.msgs[1].as<ErrorMessage>().code == ErrorCode::Timeout);
    REQUIRE_THAT(g.msgs[1].as<ErrorMessage>().text, Catch::Contains("PING"));
    REQUIRE(waited >= 0.35);  // (no upper bound: a hung server fails the read_until_closed)
  }
  srv.stop();
  REQUIRE(srv.stats().errors_sent == 1);

  // A peer that answers every PING: still open after three PINGs (more than an idle timeout of
  // silence but for the PONGs), then says BYE. The server PINGs after half the idle timeout and
  // closes at the first check (every quarter) after a whole one: the peer has at least half of
  // it (here 1 s) to answer, which a loaded machine must not eat up.
  so.idle_timeout_s = 2.0;
  server::Server srv2(so);
  srv2.start();
  {
    Raw r(srv2.port());
    auto t0 = std::chrono::steady_clock::now();  // before the server last heard from us
    r.send(encode_msg(good_hello()));
    REQUIRE(r.read_one().is<Welcome>());
    uint64_t seq = 1;
    for (int pings = 0; pings < 3; ++pings) {
      Message m = r.read_one();
      REQUIRE(m.is<Ping>());
      r.send(encode_msg(Pong{m.as<Ping>().nonce}, seq++));
    }
    double open_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    REQUIRE(open_s >= 1.5 * so.idle_timeout_s * 0.95);  // each PING after >= half of it quiet
    r.send(encode_msg(Bye{}, seq++));
    auto g = r.read_until_closed();
    REQUIRE(g.closed);
    REQUIRE(!g.msgs.empty());
    REQUIRE(g.msgs.back().is<Bye>());
  }
  srv2.stop();
  REQUIRE(srv2.stats().errors_sent == 0);
}

TEST_CASE("server: a teacher that never answers fails after its timeout and the session gets ERROR",
          "[server]") {
  Clip clip("slowteacher", 1);
  const std::string hang = script(clip.dir, "hang.sh", "exec sleep 600\n");
  auto so = server_options(clip.labels);
  test::LogLines log;
  log.attach(so);
  so.teacher = [hang] { return std::make_unique<teachers::CommandTeacher>(hang, 0.5); };
  server::Server srv(so);
  srv.start();
  Raw r(srv.port());
  r.send(encode_msg(good_hello()));
  REQUIRE(r.read_one().is<Welcome>());
  auto t0 = std::chrono::steady_clock::now();
  r.send(encode_msg(key_frame(0), 1));
  auto g = r.read_until_closed();
  double waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  REQUIRE(g.closed);
  REQUIRE(!g.msgs.empty());
  REQUIRE(g.msgs.back().is<ErrorMessage>());
  const auto& e = g.msgs.back().as<ErrorMessage>();
  INFO(e.text);
  REQUIRE(e.code == ErrorCode::Internal);
  REQUIRE_THAT(e.text, Catch::Contains("teacher failed on frame 0"));
  INFO(log.all());
  REQUIRE(log.contains("no answer within"));
  REQUIRE(waited >= 0.45);  // it waited out the teacher's timeout (lower bound only)
  srv.stop();
  REQUIRE(srv.stats().teacher_failures == 1);
}

TEST_CASE("server: which key-frame encodings WELCOME accepts: all for a trained student, raw and "
          "PNG from random initialisation, or what --key-frames says, and others refused",
          "[server]") {
  Clip clip("acceptframes", 2);
  const fs::path trained = clip.dir / "trained.safetensors";
  nn::Student(7).save_safetensors(trained);  // any weights given count as trained
  const uint8_t all = kAcceptRawBgr | kAcceptPng | kAcceptJpeg;
  struct Case {
    bool weights;
    std::optional<uint8_t> option;
    uint8_t expected;
  };
  for (const Case& c : {Case{false, std::nullopt, uint8_t(kAcceptRawBgr | kAcceptPng)},
                        Case{true, std::nullopt, all}, Case{false, all, all},
                        Case{true, kAcceptRawBgr, kAcceptRawBgr}}) {
    INFO("weights " << c.weights << ", expected " << int(c.expected));
    auto so = server_options(clip.labels);
    if (c.weights) so.weights = trained;
    so.accept_frames = c.option;
    server::Server srv(so);
    srv.start();
    Raw r(srv.port());
    Hello h = good_hello();
    if (c.weights) h.weights_hash = nn::weights_hash(nn::Student(7));
    r.send(encode_msg(h));
    Message w = r.read_one();
    REQUIRE(w.is<Welcome>());
    REQUIRE(w.as<Welcome>().accept_frames == c.expected);
    if (!(c.expected & kAcceptJpeg)) {  // a JPEG key frame anyway: refused, the server carries on
      KeyFrame k = key_frame(0);
      k.encoding = FrameEncoding::Jpeg;
      k.data = image::encode_jpeg(image::Image{kH, kW, 3, std::vector<uint8_t>(size_t(kH * kW * 3), 90)}, 90);
      r.send(encode_msg(k, 1));
      REQUIRE(expect_error_and_close(r) == ErrorCode::UnexpectedMessage);
    }
    srv.stop();
  }
}

namespace {
// Labels from the recorded maps; records how many key-frame jobs run at once and the OpenMP
// team size each one gets. Each call waits (test::kHungS at most) until `fill` calls run at
// once, so a budget of `fill` jobs is seen full however slowly the frames arrive, and a budget
// that lets more run shows as more.
struct BudgetTeacher : teachers::Teacher {
  struct Shared {
    std::mutex mu;
    std::condition_variable cv;
    int fill = 1, now = 0, most = 0;
    bool release = true;  // false: calls also wait until the test sets it (all frames are in)
    std::vector<int> omp_threads;
  };
  teachers::RecordedTeacher rec;
  std::shared_ptr<Shared> shared;
  BudgetTeacher(fs::path labels, std::shared_ptr<Shared> s) : rec(std::move(labels)), shared(std::move(s)) {}
  teachers::TeacherOutput run(uint64_t idx, const uint8_t* bgr, int64_t h, int64_t w) override {
    {
      std::unique_lock<std::mutex> l(shared->mu);
      shared->most = std::max(shared->most, ++shared->now);
      shared->omp_threads.push_back(omp_get_max_threads());
      shared->cv.notify_all();
      shared->cv.wait_for(l, std::chrono::duration<double>(test::kHungS),
                          [&] { return shared->now >= shared->fill && shared->release; });
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));  // others may pile in now
    std::lock_guard<std::mutex> l(shared->mu);
    --shared->now;
    return rec.run(idx, bgr, h, w);
  }
  std::string describe() const override { return "budget"; }
};
}  // namespace

TEST_CASE("server: the compute budget: at most --jobs key frames at once, --threads-per-job "
          "OpenMP threads each, the rest wait their turn and are all answered, with strides "
          "stretched by the queue", "[server]") {
  Clip clip("budget", 2);
  constexpr int kSessions = 4;
  for (const auto& [jobs, threads, stretch] :
       {std::tuple{1, 1, true}, std::tuple{2, 3, true}, std::tuple{1, 1, false}}) {
    INFO("jobs " << jobs << ", threads per job " << threads << ", busy stretch " << stretch);
    auto shared = std::make_shared<BudgetTeacher::Shared>();
    shared->fill = jobs;
    shared->release = false;  // every key frame in (and queued) before the first job ends
    auto so = server_options(clip.labels);
    so.jobs = jobs;
    so.threads_per_job = threads;
    so.busy_stretch = stretch;
    so.teacher = [&] { return std::make_unique<BudgetTeacher>(clip.labels, shared); };
    server::Server srv(so);
    srv.start();
    std::vector<std::unique_ptr<Raw>> edges;
    for (int i = 0; i < kSessions; ++i) {
      edges.push_back(std::make_unique<Raw>(srv.port()));
      edges.back()->send(encode_msg(good_hello()));
      REQUIRE(edges.back()->read_one().is<Welcome>());
    }
    for (auto& e : edges) e->send(encode_msg(key_frame(0), 1));  // all at once
    REQUIRE(test::wait_until([&] { return srv.stats().key_frames == uint64_t(kSessions); }));
    {
      std::lock_guard<std::mutex> l(shared->mu);
      shared->release = true;
    }
    shared->cv.notify_all();
    std::vector<uint32_t> strides;
    for (auto& e : edges) {
      Message m = e->read_one();
      INFO("got message type " << int(m.type()));
      REQUIRE(m.is<Update>());
      strides.push_back(m.as<Update>().next_stride);
    }
    srv.stop();  // every answer's bookkeeping done
    const server::ServerStats st = srv.stats();
    REQUIRE(shared->most == jobs);  // never more; and the slots did fill (4 frames > jobs)
    REQUIRE(st.max_jobs_running == uint64_t(jobs));
    REQUIRE(st.max_jobs_waiting >= 1);
    REQUIRE(st.max_jobs_waiting <= uint64_t(kSessions - jobs));
    REQUIRE(shared->omp_threads == std::vector<int>(kSessions, threads));
    REQUIRE(st.updates == kSessions);
    // The same frame and labels for every session: Algorithm 2 gives each the same stride S.
    // With one slot the answers go out with 3, 2, 1 and 0 frames waiting: S x 4, 3, 2 and 1
    // (at most MAX_STRIDE); without the stretch, S for all.
    std::sort(strides.begin(), strides.end());
    const uint32_t S = strides.front(), top = uint32_t(so.distill.max_stride);
    INFO("strides " << strides[0] << " " << strides[1] << " " << strides[2] << " " << strides[3]);
    if (jobs == 1 && stretch) {
      REQUIRE(strides == std::vector<uint32_t>{S, std::min(2 * S, top), std::min(3 * S, top),
                                               std::min(4 * S, top)});
      REQUIRE(st.strides_stretched == uint64_t(std::min(3 * S, top) > S ? 3 : 0));
    } else if (!stretch) {
      REQUIRE(strides == std::vector<uint32_t>(kSessions, S));
      REQUIRE(st.strides_stretched == 0);
    }
  }
}

TEST_CASE("server: a graceful drain answers every key frame in work, closes each session after "
          "its answer with ERROR(ShuttingDown), idle ones at once, and takes no new connection",
          "[server]") {
  Clip clip("drain", 2);
  auto shared = std::make_shared<BudgetTeacher::Shared>();
  auto so = server_options(clip.labels);
  so.jobs = 1;  // the key frames queue: the drain must wait for the waiting ones too
  so.teacher = [&] { return std::make_unique<BudgetTeacher>(clip.labels, shared); };
  server::Server srv(so);
  srv.start();
  std::vector<std::unique_ptr<Raw>> busy;
  for (int i = 0; i < 3; ++i) {
    busy.push_back(std::make_unique<Raw>(srv.port()));
    busy.back()->send(encode_msg(good_hello()));
    REQUIRE(busy.back()->read_one().is<Welcome>());
  }
  Raw idle(srv.port());
  idle.send(encode_msg(good_hello()));
  REQUIRE(idle.read_one().is<Welcome>());
  for (auto& e : busy) e->send(encode_msg(key_frame(0), 1));
  for (int i = 0; i < 500 && srv.stats().key_frames < 3; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  REQUIRE(srv.stats().key_frames == 3);
  REQUIRE_FALSE(srv.drained());
  auto drained = std::async(std::launch::async, [&] { return srv.drain(test::kHungS); });
  // The idle session is told at once; nothing else comes.
  auto g = idle.read_until_closed();
  REQUIRE(g.closed);
  REQUIRE(g.msgs.size() == 1);
  REQUIRE(g.msgs[0].is<ErrorMessage>());
  REQUIRE(g.msgs[0].as<ErrorMessage>().code == ErrorCode::ShuttingDown);
  // No new connections.
  {
    const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(uint16_t(srv.port()));
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    CHECK(::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0);
    ::close(fd);
  }
  // Every key frame in work is answered, then its session is closed with ShuttingDown.
  for (auto& e : busy) {
    auto got = e->read_until_closed();
    REQUIRE(got.closed);
    REQUIRE(got.msgs.size() == 2);
    REQUIRE(got.msgs[0].is<Update>());
    REQUIRE(got.msgs[1].is<ErrorMessage>());
    REQUIRE(got.msgs[1].as<ErrorMessage>().code == ErrorCode::ShuttingDown);
  }
  REQUIRE(drained.get());
  REQUIRE_FALSE(srv.running());
  REQUIRE(srv.stats().updates == 3);
}

namespace {
// One HTTP exchange with the metrics port: sends `request` as is, reads until the server closes.
std::string http_exchange(int port, const std::string& request) {
  Raw r(port);
  r.send(std::vector<uint8_t>(request.begin(), request.end()));
  std::string got;
  char buf[4096];
  for (ssize_t n; (n = ::recv(r.fd, buf, sizeof buf, 0)) > 0;) got.append(buf, size_t(n));
  return got;
}

// The value of the sample line `name` (a metric name, with its {labels} if any); fails if absent.
double sample(const std::string& body, const std::string& name) {
  const std::string key = "\n" + name + " ";
  const size_t at = ("\n" + body).find(key);
  INFO("metric " << name);
  REQUIRE(at != std::string::npos);
  return std::stod(body.substr(at + key.size() - 1));
}
}  // namespace

TEST_CASE("server: Prometheus metrics over HTTP on the server's loop: counters, queue gauges and "
          "latency histograms that agree with what happened, and bad requests refused",
          "[server]") {
  Clip clip("metrics", 24);
  auto so = server_options(clip.labels);
  REQUIRE(server::Server(so).metrics_port() == -1);  // off unless asked for
  so.metrics_port = 0;
  so.jobs = 2;
  so.threads_per_job = 1;
  server::Server srv(so);
  srv.start();
  REQUIRE(srv.metrics_port() > 0);
  REQUIRE(srv.metrics_port() != srv.port());
  const std::string get = "GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n";
  const std::string before = http_exchange(srv.metrics_port(), get);
  REQUIRE(before.rfind("HTTP/1.1 200 OK\r\n", 0) == 0);
  REQUIRE_THAT(before, Catch::Contains("Content-Type: text/plain; version=0.0.4"));
  const std::string body0 = before.substr(before.find("\r\n\r\n") + 4);
  REQUIRE(sample(body0, "shadowtutor_key_frames_total") == 0);
  REQUIRE(sample(body0, "shadowtutor_job_slots") == 2);
  REQUIRE(sample(body0, "shadowtutor_threads_per_job") == 1);
  // Content-Length is the body's.
  const size_t cl = before.find("Content-Length: ");
  REQUIRE(cl != std::string::npos);
  REQUIRE(std::stoul(before.substr(cl + 16)) == body0.size());

  edge::EdgeResult r = edge::run_edge(edge_options(clip, srv.port()));
  REQUIRE(r.key_frames >= 2);
  // The last answer and the edge's BYE may still be on their way when the edge has finished:
  // wait until the session is closed (no byte moves after that), up to a hung test's deadline.
  server::ServerStats st;
  REQUIRE(test::wait_until([&] {
    st = srv.stats();
    return st.sessions_closed == 1 && st.updates >= st.key_frames;
  }));
  const std::string after = http_exchange(srv.metrics_port(), get);
  const std::string body = after.substr(after.find("\r\n\r\n") + 4);
  INFO(body);
  REQUIRE(sample(body, "shadowtutor_key_frames_total") == double(st.key_frames));
  REQUIRE(sample(body, "shadowtutor_answers_total") == double(st.updates));
  REQUIRE(sample(body, "shadowtutor_sessions_opened_total") == 1);
  REQUIRE(sample(body, "shadowtutor_received_bytes_total") == double(st.bytes_in));
  REQUIRE(sample(body, "shadowtutor_jobs_running") == 0);
  REQUIRE(sample(body, "shadowtutor_jobs_waiting") == 0);
  // Histograms: every key frame answered once, teacher and distillation once per key frame;
  // cumulative buckets, +Inf = count, a positive sum.
  for (const char* h : {"key_frame_seconds", "teacher_seconds", "distill_seconds"}) {
    const std::string n = std::string("shadowtutor_") + h;
    INFO(n);
    REQUIRE(sample(body, n + "_count") == double(st.key_frames));
    REQUIRE(sample(body, n + "_bucket{le=\"+Inf\"}") == double(st.key_frames));
    REQUIRE(sample(body, n + "_sum") > 0);
    double last = 0;
    for (double le : server::LatencyHistogram::kBounds) {
      char label[64];
      std::snprintf(label, sizeof label, "_bucket{le=\"%g\"}", le);
      const double v = sample(body, n + label);
      REQUIRE(v >= last);
      last = v;
    }
  }
  // Every sample line is NAME{labels} VALUE with a # TYPE line for its metric before it.
  std::istringstream lines(body);
  std::set<std::string> typed;
  for (std::string line; std::getline(lines, line);) {
    INFO(line);
    if (line.rfind("# TYPE ", 0) == 0) {
      typed.insert(line.substr(7, line.find(' ', 7) - 7));
      continue;
    }
    if (line.rfind("# HELP ", 0) == 0) continue;
    const std::string name = line.substr(0, line.find_first_of("{ "));
    std::string family = name;
    for (const char* suffix : {"_bucket", "_sum", "_count"})
      if (!typed.count(family) && family.size() > strlen(suffix) &&
          family.compare(family.size() - strlen(suffix), std::string::npos, suffix) == 0)
        family.resize(family.size() - strlen(suffix));
    REQUIRE(typed.count(family) == 1);
    REQUIRE(std::isfinite(std::stod(line.substr(line.rfind(' ') + 1))));
  }
  // Other paths, methods and oversized requests: refused, and the server goes on serving.
  REQUIRE(http_exchange(srv.metrics_port(), "GET / HTTP/1.1\r\n\r\n").rfind("HTTP/1.1 404", 0) == 0);
  REQUIRE(http_exchange(srv.metrics_port(), "POST /metrics HTTP/1.1\r\n\r\n").rfind("HTTP/1.1 405", 0) == 0);
  REQUIRE(http_exchange(srv.metrics_port(), std::string(9000, 'A')).rfind("HTTP/1.1 431", 0) == 0);
  REQUIRE(http_exchange(srv.metrics_port(), get).rfind("HTTP/1.1 200 OK", 0) == 0);
  srv.stop();
}

TEST_CASE("server: undecodable PNG / JPEG key frames get ERROR(BadFrame)", "[server]") {
  Clip clip("badpng", 2);
  auto so = server_options(clip.labels);
  so.accept_frames = kAcceptRawBgr | kAcceptPng | kAcceptJpeg;  // a student from random init
  server::Server srv(so);
  srv.start();
  auto attempt = [&](FrameEncoding enc, std::vector<uint8_t> data) {
    Raw r(srv.port());
    r.send(encode_msg(good_hello()));
    Message w = r.read_one();
    REQUIRE(w.is<Welcome>());
    REQUIRE((w.as<Welcome>().accept_frames & (kAcceptPng | kAcceptJpeg)) == (kAcceptPng | kAcceptJpeg));
    KeyFrame k = key_frame(0);
    k.encoding = enc;
    k.data = std::move(data);
    r.send(encode_msg(k, 1));
    auto g = r.read_until_closed();
    REQUIRE(g.closed);
    REQUIRE(!g.msgs.empty());
    REQUIRE(g.msgs.back().is<ErrorMessage>());
    return g.msgs.back().as<ErrorMessage>();
  };
  auto e1 = attempt(FrameEncoding::Png, std::vector<uint8_t>(500, 7));
  REQUIRE(e1.code == ErrorCode::BadFrame);
  REQUIRE_THAT(e1.text, Catch::Contains("key frame"));
  // A valid PNG of another size than the session's frames.
  image::Image small{kH / 2, kW / 2, 3, std::vector<uint8_t>(size_t(kH / 2 * kW / 2 * 3), 9)};
  auto e2 = attempt(FrameEncoding::Png, image::encode_png(small));
  REQUIRE(e2.code == ErrorCode::BadFrame);
  REQUIRE_THAT(e2.text, Catch::Contains("32x24"));
  // A valid JPEG larger than announced is refused from its header.
  image::Image big{kH * 2, kW * 2, 3, std::vector<uint8_t>(size_t(kH * kW * 12), 9)};
  auto e3 = attempt(FrameEncoding::Jpeg, image::encode_jpeg(big, 80));
  REQUIRE(e3.code == ErrorCode::BadFrame);
  REQUIRE_THAT(e3.text, Catch::Contains("JPEG header says 128x96"));
  srv.stop();
}

namespace {
// Sends `h` (a HELLO of version 1 only) and expects ERROR(UnsupportedVersion) and a close;
// returns the ERROR's text.
std::string refused_v1(int port, const Hello& h) {
  Raw r(port);
  r.send(encode_msg(h, 0, 1));
  const auto g = r.read_until_closed();
  REQUIRE(g.closed);
  REQUIRE(g.msgs.size() == 1);
  REQUIRE(g.msgs[0].is<ErrorMessage>());
  CHECK(g.msgs[0].as<ErrorMessage>().code == ErrorCode::UnsupportedVersion);
  return g.msgs[0].as<ErrorMessage>().text;
}
}  // namespace

TEST_CASE("server: its partial split is announced in WELCOME, its UPDATE blobs hold exactly that "
          "split's tensors, and an edge of protocol version 1 is refused any other split",
          "[server]") {
  Clip clip("split", 16);
  server::ServerOptions so = server_options(clip.labels);
  const nn::PartialSplit split{nn::student_block("enc3"), true};  // biases and BN affine only
  so.split = split;
  std::mutex log_mu;
  std::vector<std::string> log;
  so.log = true;
  so.log_sink = [&](const std::string& line) {
    std::lock_guard<std::mutex> lock(log_mu);
    log.push_back(line);
  };
  server::Server srv(so);
  srv.start();
  std::vector<uint8_t> frame0;
  {
    auto src = io::open_video(clip.frames);
    io::Frame f;
    REQUIRE(src->next(f));
    frame0 = f.bgr.pixels;
  }

  SECTION("WELCOME (version 2 on) names the split; the UPDATE's blob is that split's") {
    Raw r(srv.port());
    r.send(encode_msg(good_hello()));
    const Message m = r.read_one();
    REQUIRE(m.is<Welcome>());
    const Welcome& w = m.as<Welcome>();
    CHECK(m.version == kVersionMax);
    CHECK(w.version == kVersionMax);
    CHECK(int(w.train_from) == split.first);
    CHECK(w.train == TrainedTensors::BiasOnly);
    KeyFrame k = key_frame(0);
    k.data = frame0;
    r.send(encode_msg(k, 1));
    const Message um = r.read_one();
    REQUIRE(um.is<Update>());
    const Update& u = um.as<Update>();
    REQUIRE(u.steps > 0);  // a random student is far below the threshold on frame 0
    REQUIRE(u.blob_kind == st::BlobEncoding::F32);
    nn::Student base(0), paper(0), mine(0);
    mine.set_partial_split(split);
    REQUIRE_THROWS(nn::unpack_trained(paper, nn::Distillation::Partial, u.blob.data(),
                                      u.blob.size()));
    nn::unpack_trained(mine, nn::Distillation::Partial, u.blob.data(), u.blob.size());
    const auto trained = mine.trained_names(nn::Distillation::Partial);
    const auto after = mine.named_parameters(), before = base.named_parameters();
    REQUIRE(after.size() == before.size());
    size_t changed = 0;
    for (size_t i = 0; i < after.size(); ++i) {
      const std::string& name = after[i].first;
      const bool same =
          after[i].second.to_vector<float>() == before[i].second.to_vector<float>();
      const bool is_trained = std::find(trained.begin(), trained.end(), name) != trained.end();
      INFO(name);
      if (!is_trained) REQUIRE(same);  // nothing outside the split moves
      changed += same ? 0 : 1;
      if (is_trained) {  // and the split is what it says: enc3 on, biases and BN affine (1-D)
        REQUIRE(nn::student_block(name.substr(0, name.find('.'))) >= split.first);
        REQUIRE(after[i].second.dim() == 1);
      }
    }
    REQUIRE(changed > 0);
    r.send(encode_msg(Bye{}, 2));
    REQUIRE(r.read_until_closed().closed);
  }
  SECTION("an edge of version 1 only: refused in mode Partial, welcome in mode Full") {
    Hello h = good_hello();
    h.max_version = 1;
    CHECK_THAT(refused_v1(srv.port(), h), Catch::Contains("enc3") && Catch::Contains("version 2"));
    Raw full(srv.port());
    h.mode = st::Mode::Full;
    full.send(encode_msg(h, 0, 1));
    const Message m = full.read_one();
    REQUIRE(m.is<Welcome>());
    CHECK(m.as<Welcome>().version == 1);
    CHECK(m.as<Welcome>().train_from == 0);
  }
  SECTION("edges: one adopts the server's split, one that requires the paper's refuses it") {
    auto o = edge_options(clip, srv.port());
    const edge::EdgeResult r = edge::run_edge(o);
    INFO(edge::to_json(r));
    REQUIRE(r.frames == clip.count);
    REQUIRE(r.split == nn::split_name(split));
    REQUIRE(r.updates_with_weights >= 1);
    REQUIRE(r.final_weights_hash != r.initial_weights_hash);
    REQUIRE(r.errors.empty());

    // The one that insists on dec2 keeps segmenting with its own weights, tells the server why
    // (ERROR SplitMismatch) and retries; it stops once the server has seen two refusals.
    auto refused = [&] {
      std::lock_guard<std::mutex> lock(log_mu);
      return std::count_if(log.begin(), log.end(), [](const std::string& l) {
        return l.find("peer sent ERROR SplitMismatch") != std::string::npos;
      });
    };
    auto o2 = edge_options(clip, srv.port());
    o2.require_split = nn::PartialSplit{};
    o2.initial_wait_s = 0;
    o2.loop = true;
    const auto t0 = std::chrono::steady_clock::now();
    o2.on_frame = [&](const edge::EdgeProgress&) {
      return refused() < 2 && std::chrono::steady_clock::now() - t0 <
                                  std::chrono::duration<double>(test::kHungS);
    };
    const edge::EdgeResult r2 = edge::run_edge(o2);
    INFO(edge::to_json(r2));
    REQUIRE(refused() >= 2);
    REQUIRE(r2.welcomes == 0);
    REQUIRE(r2.updates == 0);
    REQUIRE(r2.final_weights_hash == r2.initial_weights_hash);
    REQUIRE_FALSE(r2.errors.empty());
    CHECK_THAT(r2.errors.front(),
               Catch::Contains("trains from enc3") && Catch::Contains("requires dec2"));
  }
  srv.stop();
}

TEST_CASE("server: compact updates: int8 deltas against its mirror of each edge, applied and "
          "checked by hash, and an edge of version 1 only is refused", "[server]") {
  // Migration on: the edge with other weights sends them and the mirror starts from exactly
  // those (a mirror that were anything else would give hashes the edge refuses: RESYNC); off:
  // it gets the full student in fp16 and the mirror starts from fp16-rounded weights.
  const bool migrate = GENERATE(true, false);
  INFO("migration " << (migrate ? "on" : "off"));
  Clip clip(migrate ? "compact" : "compact_nomig", 24);
  server::ServerOptions so = server_options(clip.labels);
  so.update = nn::parse_update_codec("int8:top10+zstd");
  so.migrate = migrate;
  server::Server srv(so);
  srv.start();
  {
    Hello h = good_hello();
    h.max_version = 1;
    CHECK_THAT(refused_v1(srv.port(), h),
               Catch::Contains("compact updates") && Catch::Contains("version 2"));
  }
  // Two edges: one with the server's base weights, one with others, taking fp16 blobs only.
  std::vector<edge::EdgeResult> res(2);
  std::vector<std::thread> ts;
  for (int c = 0; c < 2; ++c)
    ts.emplace_back([&, c] {
      auto o = edge_options(clip, srv.port());
      if (c == 1) {
        o.init_seed = 7;
        o.accept_blobs = kAcceptF16;
      }
      res[size_t(c)] = edge::run_edge(o);
    });
  for (auto& t : ts) t.join();
  for (const auto& r : res) {
    INFO(edge::to_json(r));
    REQUIRE(r.frames == clip.count);
    REQUIRE(r.errors.empty());  // no hash ever differed
    REQUIRE(r.resyncs == 0);
    REQUIRE(r.updates_with_weights >= 1);
    REQUIRE(r.final_weights_hash != r.initial_weights_hash);
    // every update well under a tenth of the 413,884-byte fp32 trained part
    REQUIRE(r.bytes_down < int64_t(r.updates) * 41388 + 2 * 1000000);
  }
  REQUIRE(res[1].full_weight_syncs == (migrate ? 0 : 1));
  REQUIRE(res[1].weights_uploads == (migrate ? 1 : 0));
  REQUIRE(test::wait_until([&] { return srv.stats().sessions_active == 0; }));
  srv.stop();
}

TEST_CASE("server: session migration: an edge whose weights the server does not hold sends them "
          "(protocol version 3) and its session continues from them, bit for bit",
          "[server]") {
  Clip clip("migrate", 32);
  const auto frames = raw_frames(clip.frames);
  nn::Student edge_student(7);  // not the server's base (Student(0)): an adapted edge, say
  const uint64_t edge_hash = nn::weights_hash(edge_student);
  const auto edge_blob = nn::pack_trained(edge_student, nn::Distillation::Full, st::BlobEncoding::F32);
  Hello h = good_hello();
  h.weights_hash = edge_hash;

  SECTION("the server asks, the edge sends, every UPDATE is the reference's from those weights") {
    server::Server srv(server_options(clip.labels));
    srv.start();
    std::vector<Update> got;
    {
      Raw r(srv.port());
      r.send(encode_msg(h));
      Message wm = r.read_one();
      REQUIRE(wm.is<Welcome>());
      const Welcome& w = wm.as<Welcome>();
      REQUIRE(w.version == 3);
      REQUIRE(w.scope == WeightsScope::Wanted);
      REQUIRE(w.blob.empty());
      uint64_t seq = 1;
      r.send(encode_msg(Weights{st::BlobEncoding::F32, edge_blob}, seq++));
      got = follow_schedule(r, frames, seq);
      r.send(encode_msg(Bye{}, seq++));
      REQUIRE(r.read_until_closed().closed);
    }
    REQUIRE(srv.stats().migrations == 1);
    srv.stop();
    // The reference (tests/algorithm_reference.h) from the edge's weights, and from the base.
    nn::Student from_edge(7), from_base(0);
    auto ref = test::reference_schedule(clip.frames, clip.labels, from_edge, clip.count,
                                        /*migrated=*/true);
    auto base = test::reference_schedule(clip.frames, clip.labels, from_base, clip.count);
    REQUIRE(got.size() == ref.size());
    bool differs_from_base = false;  // else this test could not tell the two apart
    for (size_t k = 0; k < ref.size(); ++k) {
      INFO("key frame " << ref[k].frame);
      REQUIRE(int64_t(got[k].key_frame) == ref[k].frame);
      REQUIRE(int(got[k].steps) == ref[k].outcome.steps);
      REQUIRE(got[k].accuracy == float(ref[k].outcome.acc));
      REQUIRE(int(got[k].next_stride) == ref[k].next_stride);
      if (ref[k].outcome.steps > 0)
        REQUIRE(got[k].blob == ref[k].blob);  // the trained tensors, bit for bit
      else
        REQUIRE(got[k].blob.empty());
      if (k < base.size())
        differs_from_base |= base[k].outcome.acc != ref[k].outcome.acc ||
                             (ref[k].outcome.steps > 0 && base[k].blob != ref[k].blob);
    }
    REQUIRE(differs_from_base);
  }
  SECTION("WEIGHTS that are not what HELLO named, or not a student, or late, are refused") {
    server::Server srv(server_options(clip.labels));
    srv.start();
    auto welcomed = [&](Raw& r) {
      r.send(encode_msg(h));
      Message wm = r.read_one();
      REQUIRE(wm.is<Welcome>());
      REQUIRE(wm.as<Welcome>().scope == WeightsScope::Wanted);
    };
    {
      Raw r(srv.port());
      welcomed(r);
      nn::Student other(8);
      r.send(encode_msg(Weights{st::BlobEncoding::F32,
                                nn::pack_trained(other, nn::Distillation::Full, st::BlobEncoding::F32)},
                        1));
      REQUIRE(expect_error_and_close(r) == ErrorCode::WeightsMismatch);
    }
    {
      Raw r(srv.port());
      welcomed(r);
      r.send(encode_msg(Weights{st::BlobEncoding::F32, {1, 2, 3, 4}}, 1));
      REQUIRE(expect_error_and_close(r) == ErrorCode::Malformed);
    }
    {
      Raw r(srv.port());
      welcomed(r);
      KeyFrame k = key_frame(0);
      k.data = frames[0];
      r.send(encode_msg(k, 1));  // a key frame before the weights asked for
      REQUIRE(expect_error_and_close(r) == ErrorCode::UnexpectedMessage);
    }
    {
      Raw r(srv.port());
      welcomed(r);
      auto f16 = nn::pack_trained(edge_student, nn::Distillation::Full, st::BlobEncoding::F16);
      r.send(encode_msg(Weights{st::BlobEncoding::F16, f16}, 1));
      REQUIRE(expect_error_and_close(r) == ErrorCode::UnexpectedMessage);
    }
    REQUIRE(srv.stats().migrations == 0);
    REQUIRE(test::wait_until([&] { return srv.stats().sessions_active == 0; }));
    srv.stop();
  }
  SECTION("the base's hash, a version-2 edge, or --migration off: no request") {
    for (int c = 0; c < 3; ++c) {
      INFO("case " << c);
      server::ServerOptions so = server_options(clip.labels);
      so.migrate = c != 2;
      server::Server srv(so);
      srv.start();
      Hello hc = c == 0 ? good_hello() : h;
      if (c == 1) hc.max_version = 2;
      Raw r(srv.port());
      r.send(encode_msg(hc));
      Message wm = r.read_one();
      REQUIRE(wm.is<Welcome>());
      const Welcome& w = wm.as<Welcome>();
      if (c == 0) {
        REQUIRE(w.scope == WeightsScope::Trained);  // it holds them: the base
        REQUIRE(w.blob.empty());
      } else {
        REQUIRE(w.scope == WeightsScope::Full);     // the server's student replaces the edge's
        REQUIRE(w.blob_kind == st::BlobEncoding::F32);
        nn::Student got(7);
        nn::unpack_trained(got, nn::Distillation::Full, w.blob.data(), w.blob.size());
        REQUIRE(nn::weights_hash(got) == nn::weights_hash(nn::Student(0)));
      }
      r.close();
      srv.stop();
    }
  }
}
