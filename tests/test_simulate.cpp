// `shadowtutor simulate` on a small synthetic clip: key-frame schedule, byte accounting,
// mode semantics, and that distillation actually helps against a fixed teacher.
#include <nlohmann/json.hpp>

#include "edge/simulate.h"
#include "edge/video.h"
#include "test_util.h"

using namespace st;
namespace fs = std::filesystem;

namespace {
// 24 frames of 48x64: a bright rectangle ("person", class 0) drifting right on a dark
// background; the recorded teacher labels it exactly.
struct Clip {
  fs::path dir, frames, labels;
  Clip() {
    dir = fs::temp_directory_path() / ("st_sim_" + std::to_string(::getpid()));
    frames = dir / "frames";
    labels = dir / "labels";
    fs::create_directories(frames);
    fs::create_directories(labels);
    const int64_t H = 48, W = 64;
    for (int64_t k = 0; k < 24; ++k) {
      image::Image img{H, W, 3, std::vector<uint8_t>(size_t(H * W * 3), 20)};
      std::vector<uint8_t> l(size_t(H * W), 8);
      for (int64_t y = 12; y < 36; ++y)
        for (int64_t x = 8 + k; x < 24 + k; ++x) {
          l[size_t(y * W + x)] = 0;
          for (int c = 0; c < 3; ++c) img.pixels[size_t((y * W + x) * 3 + c)] = uint8_t(200 + 20 * c);
        }
      char name[32];
      std::snprintf(name, sizeof name, "%06lld.png", (long long)k);
      image::write_png(frames / name, img);
      edge::write_label_png(labels / name, l, H, W);
    }
  }
  ~Clip() { fs::remove_all(dir); }
};
}  // namespace

TEST_CASE("simulate: partial distillation schedule, bytes and accuracy", "[simulate]") {
  Clip clip;
  edge::SimOptions o;
  o.video = clip.frames;
  o.labels = clip.labels;
  o.progress = false;
  o.mode = edge::SimMode::Wild;
  edge::SimResult wild = edge::simulate(o);
  REQUIRE(wild.frames == 24);
  REQUIRE(wild.key_frames == 0);
  REQUIRE(wild.bytes_up == 0);

  o.mode = edge::SimMode::Partial;
  edge::SimResult part = edge::simulate(o);
  REQUIRE(part.frames == 24);
  REQUIRE(part.key_frames >= 1);
  REQUIRE(part.key_frames <= 3);  // strides are at least MIN_STRIDE = 8
  int64_t hist = 0;
  for (auto v : part.step_histogram) hist += v;
  REQUIRE(hist == part.key_frames);
  const int64_t frame_bytes = 48 * 64 * 3 + edge::kMessageHeaderBytes;
  REQUIRE(part.bytes_up == part.key_frames * frame_bytes);
  REQUIRE(part.naive_bytes_up == 24 * frame_bytes);
  REQUIRE(part.naive_bytes_down == 24 * (48 * 64 + edge::kMessageHeaderBytes));
  // Each update is a partial fp32 blob or a "no change" header.
  int64_t trained = part.key_frames - part.step_histogram[0];
  REQUIRE(part.bytes_down == trained * (24 + 413860 + edge::kMessageHeaderBytes) +
                                 part.step_histogram[0] * edge::kMessageHeaderBytes);
  // On this easy clip, distillation must beat the untrained student.
  REQUIRE(part.mean_miou > wild.mean_miou + 0.1);

  o.mode = edge::SimMode::Naive;
  edge::SimResult naive = edge::simulate(o);
  REQUIRE(naive.mean_miou == 1.0);
  REQUIRE(naive.bytes_up == naive.naive_bytes_up);

  auto j = nlohmann::json::parse(edge::to_json(part));
  REQUIRE(j["frames"] == 24);
  REQUIRE(j["frame_miou"].size() == 24);
  REQUIRE(j.contains("step_histogram"));
  // (Tiny 48x64 frames: a 414 kB blob outweighs them, so no claim about the ratio here.)
  REQUIRE(j["bytes"]["total_vs_naive"].get<double>() ==
          Approx(double(part.bytes_up + part.bytes_down) /
                 double(part.naive_bytes_up + part.naive_bytes_down)));
}

TEST_CASE("simulate: delay semantics and bad options", "[simulate]") {
  Clip clip;
  edge::SimOptions o;
  o.video = clip.frames;
  o.labels = clip.labels;
  o.progress = false;
  o.delay = 9;
  REQUIRE_THROWS_WITH(edge::simulate(o), Catch::Contains("delay 9"));
  o.delay = 8;
  o.max_frames = 10;
  edge::SimResult r = edge::simulate(o);
  REQUIRE(r.frames == 10);
  // With P-8 the first 8 frames all run the initial weights: identical to wild there.
  o.mode = edge::SimMode::Wild;
  edge::SimResult w = edge::simulate(o);
  for (int i = 0; i < 8; ++i) REQUIRE(r.frame_miou[size_t(i)] == w.frame_miou[size_t(i)]);
  o.labels = clip.dir / "nope";
  o.mode = edge::SimMode::Partial;
  REQUIRE_THROWS(edge::simulate(o));
}
