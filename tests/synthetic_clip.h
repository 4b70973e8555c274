// A tiny synthetic video for tests: `n` frames of 48x64 BGR, a bright rectangle ("person",
// class 0) drifting right on a dark background, with a recorded teacher that labels it
// exactly. Written to a fresh temp directory, removed on destruction.
//
// And what the loopback tests share so that none of them depends on how fast the machine is:
// a deadline that only a hung test reaches, a wait for an event up to it, and the recorded
// teacher of a clip that the edge plays in a loop (EdgeOptions::loop: frame indices run on).
#pragma once
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <system_error>
#include <thread>
#include <vector>
#include <vector>

#include "io/video.h"
#include "teacher/teacher.h"
#include "tensor/image.h"

namespace st::test {

// Seconds that only a hung loopback test waits: the deadline of every wait for an event
// (a WELCOME, an update, a socket read, a server's sessions closing). A test never depends on
// reaching anything sooner; a slow or loaded machine only makes it take longer.
inline constexpr double kHungS = 120.0;

// Polls `done` every 5 ms until it holds (true) or `timeout_s` passes (false).
inline bool wait_until(const std::function<bool()>& done, double timeout_s = kHungS) {
  const auto deadline = std::chrono::steady_clock::now() +
                        std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                            std::chrono::duration<double>(timeout_s));
  while (!done()) {
    if (std::chrono::steady_clock::now() >= deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return true;
}

// Collects a server's log lines (ServerOptions::log_sink, from any thread) for tests that check
// what is logged. Must outlive the server it is attached to.
struct LogLines {
  std::mutex mu;
  std::vector<std::string> lines;
  template <class Options>
  void attach(Options& o) {
    o.log = true;
    o.log_sink = [this](const std::string& line) {
      std::lock_guard<std::mutex> l(mu);
      lines.push_back(line);
    };
  }
  bool contains(const std::string& text) {
    std::lock_guard<std::mutex> l(mu);
    for (const auto& line : lines)
      if (line.find(text) != std::string::npos) return true;
    return false;
  }
  size_t count(const std::string& text) {
    std::lock_guard<std::mutex> l(mu);
    size_t n = 0;
    for (const auto& line : lines) n += line.find(text) != std::string::npos;
    return n;
  }
  std::vector<std::string> snapshot() {
    std::lock_guard<std::mutex> l(mu);
    return lines;
  }
  std::string all() {
    std::lock_guard<std::mutex> l(mu);
    std::string out;
    for (const auto& line : lines) out += line + "\n";
    return out;
  }
};

// The time after which an event-driven on_frame gives up (returns false): now + kHungS.
inline std::chrono::steady_clock::time_point hung_deadline() {
  return std::chrono::steady_clock::now() +
         std::chrono::duration_cast<std::chrono::steady_clock::duration>(
             std::chrono::duration<double>(kHungS));
}

struct SyntheticClip {
  static constexpr int64_t kH = 48, kW = 64;
  std::filesystem::path dir, frames, labels;
  int64_t count = 0;  // frames

  explicit SyntheticClip(const std::string& tag, int n = 24) : count(n) {
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
      io::write_label_png(labels / name, l, kH, kW);
    }
  }
  ~SyntheticClip() {
    std::error_code ec;
    std::filesystem::remove_all(dir, ec);
  }
  SyntheticClip(const SyntheticClip&) = delete;
  SyntheticClip& operator=(const SyntheticClip&) = delete;

  // The recorded teacher for this clip played in a loop: frame i gets the labels of frame
  // i mod count (a RecordedTeacher knows only the first pass's indices).
  teachers::TeacherFactory looping_teacher() const {
    struct Looping : teachers::Teacher {
      teachers::RecordedTeacher rec;
      int64_t n;
      Looping(std::filesystem::path dir, int64_t count) : rec(std::move(dir)), n(count) {}
      teachers::TeacherOutput run(uint64_t idx, const uint8_t* bgr, int64_t h, int64_t w) override {
        return rec.run(idx % uint64_t(n), bgr, h, w);
      }
      std::string describe() const override { return "looping " + rec.describe(); }
    };
    return [dir = labels, n = count] { return std::make_unique<Looping>(dir, n); };
  }
};

}  // namespace st::test
