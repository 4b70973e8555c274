// A tiny synthetic video for tests: `n` frames of 48x64 BGR, a bright rectangle ("person",
// class 0) drifting right on a dark background, with a recorded teacher that labels it
// exactly. Written to a fresh temp directory, removed on destruction.
#pragma once
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <filesystem>
#include <string>
#include <system_error>
#include <vector>

#include "edge/video.h"
#include "tensor/image.h"

namespace st::test {

struct SyntheticClip {
  static constexpr int64_t kH = 48, kW = 64;
  std::filesystem::path dir, frames, labels;

  explicit SyntheticClip(const std::string& tag, int n = 24) {
    namespace fs = std::filesystem;
    static std::atomic<int> counter{0};
    dir = fs::temp_directory_path() /
          ("st_clip_" + tag + "_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
    frames = dir / "frames";
    labels = dir / "labels";
    fs::create_directories(frames);
    fs::create_directories(labels);
    for (int64_t k = 0; k < n; ++k) {
      image::Image img{kH, kW, 3, std::vector<uint8_t>(size_t(kH * kW * 3), 20)};
      std::vector<uint8_t> l(size_t(kH * kW), 8);
      for (int64_t y = 12; y < 36; ++y)
        for (int64_t x = 8 + k % 40; x < 24 + k % 40; ++x) {
          l[size_t(y * kW + x)] = 0;
          for (int c = 0; c < 3; ++c)
            img.pixels[size_t((y * kW + x) * 3 + c)] = uint8_t(200 + 20 * c);
        }
      char name[32];
      std::snprintf(name, sizeof name, "%06lld.png", (long long)k);
      image::write_png(frames / name, img);
      edge::write_label_png(labels / name, l, kH, kW);
    }
  }
  ~SyntheticClip() {
    std::error_code ec;
    std::filesystem::remove_all(dir, ec);
  }
  SyntheticClip(const SyntheticClip&) = delete;
  SyntheticClip& operator=(const SyntheticClip&) = delete;
};

}  // namespace st::test
