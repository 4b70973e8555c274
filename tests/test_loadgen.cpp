// shadowtutor-loadgen's engine (edge/loadgen.h) against an in-process server on loopback.
#include <algorithm>
#include <numeric>

#include "edge/loadgen.h"
#include "server/server.h"
#include "synthetic_clip.h"
#include "teacher/teacher.h"
#include "test_util.h"

using namespace st;

namespace {
server::ServerOptions options(const test::SyntheticClip& clip) {
  server::ServerOptions o;
  o.token = "sesame";
  o.log = false;
  o.teacher = clip.looping_teacher();  // frame indices run past the clip
  return o;
}

edge::LoadgenOptions loadgen(const test::SyntheticClip& clip, int port) {
  edge::LoadgenOptions o;
  o.port = port;
  o.token = "sesame";
  o.video = clip.frames;
  o.answer_timeout_s = test::kHungS;
  return o;
}
}  // namespace

TEST_CASE("loadgen: quantile by nearest rank", "[loadgen][portable]") {
  REQUIRE(edge::quantile({}, 0.5) == 0);
  std::vector<double> v(100);
  std::iota(v.begin(), v.end(), 1.0);  // 1..100
  std::reverse(v.begin(), v.end());
  REQUIRE(edge::quantile(v, 0.50) == 50);
  REQUIRE(edge::quantile(v, 0.95) == 95);
  REQUIRE(edge::quantile(v, 0.99) == 99);
  REQUIRE(edge::quantile(v, 1.0) == 100);
  REQUIRE(edge::quantile(v, 0.0) == 1);
  REQUIRE(edge::quantile({7}, 0.99) == 7);
}

TEST_CASE("loadgen: concurrent sessions send key frames on a fixed schedule, and every key frame is "
          "answered and timed", "[loadgen]") {
  test::SyntheticClip clip("loadgen", 24);
  server::Server srv(options(clip));
  srv.start();
  auto o = loadgen(clip, srv.port());
  o.sessions = 3;
  o.key_interval_s = 0.05;
  o.duration_s = 1.0;
  const edge::LoadgenResult r = edge::run_loadgen(o);
  INFO(edge::to_json(r));
  srv.stop();
  REQUIRE(r.errors == 0);
  REQUIRE(r.welcomed == 3);
  REQUIRE(r.answers == r.key_frames);  // the last ones awaited after the sending stopped
  REQUIRE(r.latency_ms.size() == size_t(r.answers));
  REQUIRE(r.answers_per_session.size() == 3);
  for (int64_t a : r.answers_per_session) REQUIRE(a >= 2);
  REQUIRE(std::accumulate(r.answers_per_session.begin(), r.answers_per_session.end(), int64_t(0)) ==
          r.answers);
  REQUIRE(r.p50_ms > 0);
  REQUIRE(r.p50_ms <= r.p95_ms);
  REQUIRE(r.p95_ms <= r.p99_ms);
  REQUIRE(r.p99_ms <= r.max_ms);
  REQUIRE(r.answers_per_s == Approx(double(r.answers) / o.duration_s));
  // What went up: HELLOs and raw 48x64 key frames; the server's own count agrees.
  REQUIRE(r.bytes_up >= r.key_frames * test::SyntheticClip::kH * test::SyntheticClip::kW * 3);
  REQUIRE(srv.stats().key_frames == uint64_t(r.key_frames));
  REQUIRE(srv.stats().bytes_in == uint64_t(r.bytes_up));
}

TEST_CASE("loadgen: following the strides the server announces, and a session over the server's "
          "limit is counted as an error with the server's reason", "[loadgen]") {
  test::SyntheticClip clip("loadgen_busy", 24);
  auto so = options(clip);
  so.max_sessions = 2;
  server::Server srv(so);
  srv.start();
  auto o = loadgen(clip, srv.port());
  o.sessions = 3;
  o.fps = 400;  // strides of 8..64 frames: 20..160 ms
  o.duration_s = 0.8;
  const edge::LoadgenResult r = edge::run_loadgen(o);
  INFO(edge::to_json(r));
  srv.stop();
  REQUIRE(r.welcomed == 2);
  REQUIRE(r.errors == 1);
  REQUIRE_THAT(r.error_texts.at(0), Catch::Contains("ERROR Busy"));
  REQUIRE(r.answers == r.key_frames);
  REQUIRE(r.answers >= 4);
  REQUIRE(r.mean_stride >= 8);  // MIN_STRIDE at least, as UPDATE said
}

TEST_CASE("recorded teacher with loop: indices past the maps wrap around, and nothing to loop over "
          "is an error naming the folder", "[loadgen][teacher]") {
  test::SyntheticClip clip("labels_loop", 5);
  const int64_t H = test::SyntheticClip::kH, W = test::SyntheticClip::kW;
  teachers::RecordedTeacher plain(clip.labels), looping(clip.labels, true);
  for (uint64_t i = 0; i < 5; ++i) REQUIRE(looping.run(i + 10, nullptr, H, W).labels == plain.run(i, nullptr, H, W).labels);
  REQUIRE(plain.run(1, nullptr, H, W).labels != plain.run(3, nullptr, H, W).labels);  // not all alike
  REQUIRE_THROWS(plain.run(7, nullptr, H, W));
  const auto empty = clip.dir / "empty";
  std::filesystem::create_directories(empty);
  REQUIRE_THROWS_WITH(teachers::RecordedTeacher(empty, true), Catch::Contains("empty/000000.png"));
}

TEST_CASE("loadgen: sessions whose student the server does not hold send it when asked (session "
          "migration) and are then served", "[loadgen]") {
  test::SyntheticClip clip("loadgen_migrate", 24);
  server::Server srv(options(clip));
  srv.start();
  auto o = loadgen(clip, srv.port());
  o.sessions = 2;
  o.init_seed = 7;  // not the server's base (seed 0)
  o.key_interval_s = 0.05;
  o.duration_s = 0.5;
  const edge::LoadgenResult r = edge::run_loadgen(o);
  INFO(edge::to_json(r));
  REQUIRE(test::wait_until([&] { return srv.stats().sessions_active == 0; }));
  const server::ServerStats st = srv.stats();
  srv.stop();
  REQUIRE(r.errors == 0);
  REQUIRE(r.welcomed == 2);
  REQUIRE(r.answers == r.key_frames);
  REQUIRE(r.answers >= 2);
  REQUIRE(st.migrations == 2);
  REQUIRE(r.bytes_up >= 2 * 1935516);  // each sent the fp32 student
}
