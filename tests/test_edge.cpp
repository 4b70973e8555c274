// shadowtutor-edge over loopback: a server that goes away and comes back, a server that is not
// there yet, naive offloading, full distillation, the link-rate limit, a teacher that hangs.
#include <atomic>
#include <fstream>
#include <thread>

#include "edge/client.h"
#include "edge/video.h"
#include "server/server.h"
#include "synthetic_clip.h"
#include "test_util.h"

using namespace st;
namespace fs = std::filesystem;

namespace {

constexpr int64_t kH = 48, kW = 64;

struct EdgeClip : test::SyntheticClip {
  EdgeClip(const std::string& tag, int n) : SyntheticClip("edge_" + tag, n) {}
};

server::ServerOptions srv_opts(const fs::path& labels, int port = 0) {
  server::ServerOptions o;
  o.port = port;
  o.token = "tok";
  o.log = false;
  o.teacher = [labels] { return std::make_unique<server::RecordedTeacher>(labels); };
  return o;
}

edge::EdgeOptions edge_opts(const EdgeClip& clip, int port) {
  edge::EdgeOptions o;
  o.net.port = port;
  o.net.log = false;
  o.net.backoff_initial_s = 0.02;
  o.net.backoff_max_s = 0.1;
  o.token = "tok";
  o.video = clip.frames;
  o.progress = false;
  o.update_timeout_s = 20;
  return o;
}

// A port nobody listens on right now (a server bound it, then stopped).
int free_port(const fs::path& labels) {
  server::Server s(srv_opts(labels));
  s.start();
  int p = s.port();
  s.stop();
  return p;
}

}  // namespace

TEST_CASE("edge: token bucket", "[edge]") {
  edge::TokenBucket b(1000.0, 100.0);
  auto t0 = edge::TokenBucket::Clock::now();
  REQUIRE(b.available(t0) == Approx(100.0));
  b.consume(150);
  REQUIRE(b.available(t0) == Approx(-50.0));
  REQUIRE(b.seconds_until(0, t0) == Approx(0.05));
  REQUIRE(b.seconds_until(1000, t0) == Approx(0.15));  // clipped to the burst
  REQUIRE(b.available(t0 + std::chrono::milliseconds(100)) == Approx(50.0).margin(1e-6));
  REQUIRE(b.available(t0 + std::chrono::seconds(10)) == Approx(100.0));  // capped at the burst
}

TEST_CASE("edge: server killed and restarted mid-run: the edge keeps going and resyncs", "[edge]") {
  EdgeClip clip("restart", 40);
  auto first = std::make_unique<server::Server>(srv_opts(clip.labels));
  first->start();
  const int port = first->port();
  std::unique_ptr<server::Server> second;
  auto o = edge_opts(clip, port);
  o.initial_wait_s = 10;
  o.frame_interval_s = 0.03;
  std::vector<int64_t> seen;
  o.on_frame = [&](int64_t i) {
    seen.push_back(i);
    if (i == 12) first->stop();  // the server goes away mid-run
    if (i == 20) {
      second = std::make_unique<server::Server>(srv_opts(clip.labels, port));
      second->start();
    }
  };
  edge::EdgeResult r = edge::run_edge(o);
  INFO(edge::to_json(r));
  REQUIRE(r.frames == 40);
  REQUIRE(seen.size() == 40);
  for (size_t i = 0; i < seen.size(); ++i) REQUIRE(seen[i] == int64_t(i));
  REQUIRE(r.welcomes == 2);
  REQUIRE(r.disconnects >= 1);
  // The first server trained the edge's copy, so the second one (base weights) sent its full
  // student in WELCOME, and then distilled again.
  REQUIRE(r.full_weight_syncs == 1);
  REQUIRE(second->stats().key_frames >= 1);
  REQUIRE(second->stats().updates >= 1);
  REQUIRE(first->stats().updates >= 1);
  second->stop();
}

TEST_CASE("edge: server not there at start, appears later", "[edge]") {
  EdgeClip clip("late", 32);
  const int port = free_port(clip.labels);
  std::unique_ptr<server::Server> srv;
  auto o = edge_opts(clip, port);
  o.frame_interval_s = 0.02;
  o.on_frame = [&](int64_t i) {
    if (i == 5) {
      srv = std::make_unique<server::Server>(srv_opts(clip.labels, port));
      srv->start();
    }
  };
  edge::EdgeResult r = edge::run_edge(o);
  INFO(edge::to_json(r));
  REQUIRE(r.frames == 32);
  REQUIRE(r.welcomes == 1);
  REQUIRE(r.key_frames >= 1);
  REQUIRE(r.updates >= 1);
  srv->stop();

  // And with no server at all the edge still processes every frame.
  o.on_frame = nullptr;
  o.frame_interval_s = 0;
  o.max_frames = 10;
  edge::EdgeResult alone = edge::run_edge(o);
  REQUIRE(alone.frames == 10);
  REQUIRE(alone.welcomes == 0);
  REQUIRE(alone.key_frames == 0);
}

TEST_CASE("edge: naive mode gets the teacher's labels for every frame", "[edge]") {
  EdgeClip clip("naive", 6);
  server::Server srv(srv_opts(clip.labels));
  srv.start();
  auto o = edge_opts(clip, srv.port());
  o.mode = edge::EdgeMode::Naive;
  o.initial_wait_s = 10;
  o.predictions_dir = clip.dir / "pred";
  edge::EdgeResult r = edge::run_edge(o);
  INFO(edge::to_json(r));
  REQUIRE(r.frames == 6);
  REQUIRE(r.key_frames == 6);
  REQUIRE(r.labels == 6);
  edge::LabelSource truth(clip.labels), pred(clip.dir / "pred");
  for (int i = 0; i < 6; ++i) REQUIRE(pred.labels(i, kH, kW) == truth.labels(i, kH, kW));
  // Every frame up (32 + 21 + 9216 B on the wire), every label map down (32 + 20 + 3072 B).
  REQUIRE(r.bytes_up >= 6 * (32 + 17 + kH * kW * 3));
  REQUIRE(r.bytes_down >= 6 * (32 + 16 + kH * kW));
  srv.stop();
}

TEST_CASE("edge: full distillation and an fp16-only edge", "[edge]") {
  EdgeClip clip("full", 9);
  server::Server srv(srv_opts(clip.labels));
  srv.start();
  auto o = edge_opts(clip, srv.port());
  o.initial_wait_s = 10;
  o.mode = edge::EdgeMode::Full;
  o.accept_blobs = protocol::kAcceptF16;
  edge::EdgeResult r = edge::run_edge(o);
  INFO(edge::to_json(r));
  REQUIRE(r.frames == 9);
  REQUIRE(r.updates == 1);  // frame 0's update arrives by frame 8 at the latest
  if (r.updates_with_weights) {
    REQUIRE(r.bytes_down >= 32 + 25 + 24 + 483873 * 2);
    REQUIRE(r.bytes_down < 32 + 25 + 24 + 483873 * 4);  // fp16, not fp32
    REQUIRE(r.final_weights_hash != r.initial_weights_hash);
  }
  srv.stop();
}

TEST_CASE("edge: link-rate limit slows the transfers", "[edge]") {
  EdgeClip clip("link", 9);
  server::Server srv(srv_opts(clip.labels));
  srv.start();
  auto o = edge_opts(clip, srv.port());
  o.initial_wait_s = 10;
  o.net.link_mbps = 8;  // 1 MB/s per direction
  edge::EdgeResult r = edge::run_edge(o);
  INFO(edge::to_json(r));
  REQUIRE(r.frames == 9);
  REQUIRE(r.updates == 1);
  // Everything received went through the bucket: at most one burst (16 kB) came for free.
  const double rate = 8e6 / 8;
  REQUIRE(r.wall_s >= (double(r.bytes_down) - 16384.0) / rate * 0.9);
  if (r.updates_with_weights) REQUIRE(r.blocked_s > 0.2);  // 414 kB at 1 MB/s
  srv.stop();
}

TEST_CASE("edge: a hanging teacher: the edge gives up waiting and carries on", "[edge]") {
  EdgeClip clip("hang", 20);
  auto so = srv_opts(clip.labels);
  fs::path sh = clip.dir / "hang.sh";
  std::ofstream(sh) << "#!/bin/sh\nexec sleep 30\n";
  fs::permissions(sh, fs::perms::owner_all);
  const std::string cmd = sh.string();
  so.teacher = [cmd] { return std::make_unique<server::CommandTeacher>(cmd, 3.0); };
  server::Server srv(so);
  srv.start();
  auto o = edge_opts(clip, srv.port());
  o.initial_wait_s = 10;
  o.update_timeout_s = 0.3;
  edge::EdgeResult r = edge::run_edge(o);
  INFO(edge::to_json(r));
  REQUIRE(r.frames == 20);
  REQUIRE(r.updates == 0);
  REQUIRE(r.disconnects >= 1);
  REQUIRE(r.blocked_s >= 0.25);  // it blocked MIN_STRIDE frames after the key frame, then gave up
  bool gave_up = false;
  for (auto& e : r.errors) gave_up = gave_up || e.find("no answer to key frame") != std::string::npos;
  REQUIRE(gave_up);
  srv.stop();
  REQUIRE(srv.stats().teacher_failures >= 1);
}
