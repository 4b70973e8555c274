// Conv2d benchmark: times st::cpu::conv2d_forward / backward_data / backward_weight (float) on
// every conv layer shape of the ShadowTutor student at 1280x720 input (SPEC §2, N = 1, deduped),
// prints ms and GFLOP/s per shape and direction, then runs bench/conv_peer.py with Debian's torch
// (/usr/bin/python3) on the same shapes and prints PyTorch's times and the ratio
// torch_ms / our_ms (> 1: we are faster). If python3 or torch is missing it prints
// "peer: missing (...)" and still exits 0.
//
// Usage: bench_conv [SOURCE_DIR] [--no-peer] [--teacher]
//   --teacher: instead, the forward convolutions of the Mask R-CNN teacher's ResNet-50 + FPN
//   backbone and RPN head (Detectron2 stride placement) at 736x1280 (a 720p frame padded to /32),
//   forward only (the teacher never trains).
//   SOURCE_DIR locates bench/conv_peer.py; defaults to the compile definition ST_SOURCE_DIR,
//   else ".". Timing: one warm-up call, then the median of >= 5 repetitions (more while the
//   total is under 0.3 s, at most 15).
#include <unistd.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "bench/bench_util.h"
#include "kernels/cpu/conv2d.h"

#ifndef ST_SOURCE_DIR
#define ST_SOURCE_DIR "."
#endif

using st::cpu::ConvGeom;

using st::bench::json_field;
using st::bench::run_lines;

namespace {

struct Layer {
  std::string name;
  int64_t C, K, H, W, R, S, stride;  // pad = k//2 per axis
  int mult;                          // occurrences in one student forward
};

// The student's conv layers at 1280x720 (H x W = 720 x 1280), in network order.
std::vector<Layer> student_layers() {
  std::vector<Layer> L;
  auto add = [&](std::string n, int64_t c, int64_t k, int64_t h, int64_t w, int64_t r, int64_t s,
                 int64_t st) {
    L.push_back({std::move(n), c, k, h, w, r, s, st, 1});
  };
  add("in_conv1", 3, 8, 720, 1280, 3, 3, 2);
  add("in_conv2", 8, 8, 360, 640, 3, 3, 2);
  // diff(ci->co, s) at input size h x w: short 1x1 s, long 3x3 s, then 1x3 and 3x1 at h/s x w/s
  auto diff = [&](const std::string& b, int64_t ci, int64_t co, int64_t s, int64_t h, int64_t w) {
    const int64_t oh = (h + 2 - 3) / s + 1, ow = (w + 2 - 3) / s + 1;
    add(b + ".short1x1", ci, co, h, w, 1, 1, s);
    add(b + ".long3x3", ci, co, h, w, 3, 3, s);
    add(b + ".long1x3", co, co, oh, ow, 1, 3, 1);
    add(b + ".long3x1", co, co, oh, ow, 3, 1, 1);
  };
  auto same = [&](const std::string& b, int64_t c, int64_t s, int64_t h, int64_t w) {
    const int64_t oh = (h + 2 - 3) / s + 1, ow = (w + 2 - 3) / s + 1;
    add(b + ".long3x3", c, c, h, w, 3, 3, s);
    add(b + ".long1x3", c, c, oh, ow, 1, 3, 1);
    add(b + ".long3x1", c, c, oh, ow, 3, 1, 1);
  };
  diff("enc1", 8, 64, 2, 180, 320);
  same("enc2", 64, 2, 90, 160);
  diff("enc3", 64, 128, 2, 45, 80);
  diff("dec1", 128, 64, 1, 23, 40);
  diff("dec2", 128, 32, 1, 45, 80);
  diff("dec3", 96, 32, 1, 90, 160);
  add("out_conv1", 32, 32, 360, 640, 3, 3, 1);
  add("out_conv2", 32, 32, 360, 640, 3, 3, 1);
  add("out_conv3", 32, 9, 720, 1280, 1, 1, 1);
  // Dedupe identical shapes (names joined, multiplicity summed).
  std::vector<Layer> out;
  for (const Layer& l : L) {
    auto it = std::find_if(out.begin(), out.end(), [&](const Layer& o) {
      return o.C == l.C && o.K == l.K && o.H == l.H && o.W == l.W && o.R == l.R && o.S == l.S &&
             o.stride == l.stride;
    });
    if (it == out.end()) {
      out.push_back(l);
    } else {
      it->name += "+" + l.name;
      it->mult += l.mult;
    }
  }
  return out;
}

// The teacher's backbone + RPN convolutions at 736x1280 (MASKRCNN.md §3, §4.1), deduped.
std::vector<Layer> teacher_layers() {
  std::vector<Layer> L;
  auto add = [&](std::string n, int64_t c, int64_t k, int64_t h, int64_t w, int64_t r, int64_t st) {
    for (Layer& o : L)
      if (o.C == c && o.K == k && o.H == h && o.W == w && o.R == r && o.stride == st) {
        ++o.mult;
        return;
      }
    L.push_back({std::move(n), c, k, h, w, r, r, st, 1});
  };
  int64_t h = 736, w = 1280;
  add("stem7x7", 3, 64, h, w, 7, 2);
  h /= 4, w /= 4;  // stem stride 2 + max-pool stride 2
  const int64_t blocks[4] = {3, 4, 6, 3}, width[4] = {64, 128, 256, 512};
  int64_t in = 64;
  for (int s = 0; s < 4; ++s) {
    const int64_t mid = width[s], out = 4 * width[s];
    for (int64_t i = 0; i < blocks[s]; ++i) {
      const int64_t st = (i == 0 && s > 0) ? 2 : 1;
      const std::string p = "res" + std::to_string(s + 2) + "." + std::to_string(i);
      add(p + ".conv1", in, mid, h, w, 1, st);  // Detectron2: the stride on the first 1x1
      const int64_t oh = h / st, ow = w / st;
      add(p + ".conv2", mid, mid, oh, ow, 3, 1);
      add(p + ".conv3", mid, out, oh, ow, 1, 1);
      if (i == 0) add(p + ".shortcut", in, out, h, w, 1, st);
      h = oh, w = ow, in = out;
    }
  }
  const int64_t cin[4] = {256, 512, 1024, 2048};
  for (int l = 0; l < 4; ++l) {
    const int64_t lh = 184 >> l, lw = 320 >> l;
    add("fpn_lateral" + std::to_string(l + 2), cin[l], 256, lh, lw, 1, 1);
    add("fpn_output" + std::to_string(l + 2), 256, 256, lh, lw, 3, 1);
  }
  for (int l = 0; l < 5; ++l) {
    const int64_t lh = (184 + (1 << l) - 1) >> l, lw = 320 >> l;
    add("rpn_conv.p" + std::to_string(l + 2), 256, 256, lh, lw, 3, 1);
  }
  return L;
}

ConvGeom geom(const Layer& l) {
  ConvGeom g;
  g.N = 1, g.C = l.C, g.H = l.H, g.W = l.W, g.K = l.K, g.R = l.R, g.S = l.S;
  g.stride_h = g.stride_w = l.stride;
  g.pad_h = l.R / 2, g.pad_w = l.S / 2;
  g.OH = (g.H + 2 * g.pad_h - g.R) / g.stride_h + 1;
  g.OW = (g.W + 2 * g.pad_w - g.S) / g.stride_w + 1;
  return g;
}

double gflop(const ConvGeom& g) {
  return 2.0 * g.N * g.K * (g.C / g.groups) * g.R * g.S * g.OH * g.OW * 1e-9;
}

template <class F>
double time_ms(F&& fn) {
  using clk = std::chrono::steady_clock;
  fn();  // warm-up
  std::vector<double> t;
  const auto start = clk::now();
  while (t.size() < 15 &&
         (t.size() < 5 || std::chrono::duration<double>(clk::now() - start).count() < 0.3)) {
    const auto t0 = clk::now();
    fn();
    t.push_back(std::chrono::duration<double, std::milli>(clk::now() - t0).count());
  }
  std::sort(t.begin(), t.end());
  return t.size() % 2 ? t[t.size() / 2] : 0.5 * (t[t.size() / 2 - 1] + t[t.size() / 2]);
}

const char* kDirs[3] = {"fwd", "bwd_data", "bwd_weight"};


}  // namespace

int main(int argc, char** argv) {
  std::string src_dir = ST_SOURCE_DIR;
  bool peer = true, teacher = false;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--no-peer") == 0)
      peer = false;
    else if (std::strcmp(argv[i], "--teacher") == 0)
      teacher = true;
    else
      src_dir = argv[i];
  }
  const std::vector<Layer> layers = teacher ? teacher_layers() : student_layers();
  const int ndirs = teacher ? 1 : 3;
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> U(-1.0f, 1.0f);
  auto rnd = [&](int64_t n) {
    std::vector<float> v(n);
    for (auto& e : v) e = U(rng);
    return v;
  };

  std::printf("conv2d float, N=1, %s (median of >=5 runs after warm-up)\n",
              teacher ? "the teacher's backbone + RPN at 736x1280, forward only" : "student layers at 1280x720");
  std::printf("%-34s %-24s %5s | %9s %7s | %9s %7s | %9s %7s\n", "layer", "C->K kRxS s  HxW", "x",
              "fwd ms", "GF/s", "bwdD ms", "GF/s", "bwdW ms", "GF/s");
  std::vector<std::array<double, 3>> ours(layers.size());
  double tot[3] = {0, 0, 0}, tot_gf = 0;
  for (size_t li = 0; li < layers.size(); ++li) {
    const Layer& l = layers[li];
    const ConvGeom g = geom(l);
    const auto x = rnd(g.N * g.C * g.H * g.W), w = rnd(g.K * g.C * g.R * g.S), b = rnd(g.K);
    const auto gy = rnd(g.N * g.K * g.OH * g.OW);
    std::vector<float> y(gy.size()), gx(x.size()), gw(w.size());
    ours[li][0] =
        time_ms([&] { st::cpu::conv2d_forward<float>(g, x.data(), w.data(), b.data(), y.data()); });
    ours[li][1] = ours[li][2] = 0;
    if (ndirs == 3) {
      ours[li][1] =
          time_ms([&] { st::cpu::conv2d_backward_data<float>(g, gy.data(), w.data(), gx.data()); });
      ours[li][2] =
          time_ms([&] { st::cpu::conv2d_backward_weight<float>(g, gy.data(), x.data(), gw.data()); });
    }
    const double gf = gflop(g);
    char dims[64];
    std::snprintf(dims, sizeof dims, "%ld->%ld k%ldx%ld s%ld %ldx%ld", (long)l.C, (long)l.K,
                  (long)l.R, (long)l.S, (long)l.stride, (long)l.H, (long)l.W);
    std::printf("%-34s %-24s %5d | %9.3f %7.1f | %9.3f %7.1f | %9.3f %7.1f\n", l.name.c_str(), dims,
                l.mult, ours[li][0], gf / ours[li][0] * 1e3, ours[li][1], gf / ours[li][1] * 1e3,
                ours[li][2], gf / ours[li][2] * 1e3);
    for (int d = 0; d < 3; ++d) tot[d] += l.mult * ours[li][d];
    tot_gf += l.mult * gf;
  }
  std::printf("%-34s %-24s %5s | %9.3f %7.1f | %9.3f %7.1f | %9.3f %7.1f\n",
              "TOTAL (x multiplicity)", "", "", tot[0], tot_gf / tot[0] * 1e3, tot[1],
              tot_gf / tot[1] * 1e3, tot[2], tot_gf / tot[2] * 1e3);
  std::fflush(stdout);

  if (!peer) return 0;
  const std::string py = std::getenv("ST_PEER_PYTHON") ? std::getenv("ST_PEER_PYTHON") : "/usr/bin/python3";
  const std::string script = src_dir + "/bench/conv_peer.py";
  if (access(py.c_str(), X_OK) != 0) {
    std::printf("peer: missing (%s not found)\n", py.c_str());
    return 0;
  }
  if (access(script.c_str(), R_OK) != 0) {
    std::printf("peer: missing (%s not found; pass the source dir as argv[1])\n", script.c_str());
    return 0;
  }
  std::string cmd = py + " '" + script + "'" + (ndirs == 1 ? " --fwd-only" : "");
  for (const Layer& l : layers) {
    const ConvGeom g = geom(l);
    char a[160];
    std::snprintf(a, sizeof a, " %s,1,%ld,%ld,%ld,%ld,%ld,%ld,%ld,%ld,%ld,%ld", l.name.c_str(),
                  (long)g.C, (long)g.K, (long)g.H, (long)g.W, (long)g.R, (long)g.S,
                  (long)g.stride_h, (long)g.stride_w, (long)g.pad_h, (long)g.pad_w);
    cmd += a;
  }
  cmd += " 2>&1";
  int rc = 0;
  std::vector<std::string> lines = run_lines(cmd, rc);
  if (rc == -1) {
    std::printf("peer: missing (cannot run %s)\n", py.c_str());
    return 0;
  }
  std::map<std::string, std::array<double, 3>> theirs;
  std::string header, error;
  for (const std::string& line : lines) {
    if (!json_field(line, "error").empty()) error = json_field(line, "error");
    if (!json_field(line, "peer").empty())
      header = json_field(line, "peer") + " " + json_field(line, "version") + ", " +
               json_field(line, "threads") + " threads";
    const std::string shape = json_field(line, "shape"), dir = json_field(line, "dir");
    if (shape.empty()) continue;
    auto& t = theirs.try_emplace(shape, std::array<double, 3>{-1, -1, -1}).first->second;
    for (int d = 0; d < 3; ++d)
      if (dir == kDirs[d]) t[d] = std::atof(json_field(line, "ms").c_str());
  }
  if (!error.empty() || header.empty()) {
    std::printf("peer: missing (%s)\n",
                !error.empty() ? error.c_str()
                               : (rc != 0 ? "python3 failed" : "no output from conv_peer.py"));
    return 0;
  }
  std::printf("\npeer: %s. ratio = torch ms / our ms (> 1: we are faster)\n", header.c_str());
  std::printf("%-34s | %9s %6s | %9s %6s | %9s %6s\n", "layer", "fwd ms", "ratio", "bwdD ms",
              "ratio", "bwdW ms", "ratio");
  double ttot[3] = {0, 0, 0};
  bool complete = true;
  for (size_t li = 0; li < layers.size(); ++li) {
    const Layer& l = layers[li];
    auto it = theirs.find(l.name);
    std::array<double, 3> t = it == theirs.end() ? std::array<double, 3>{-1, -1, -1} : it->second;
    std::printf("%-34s", l.name.c_str());
    for (int d = 0; d < 3; ++d) {
      if (d >= ndirs) {
        std::printf(" | %9s %6s", "-", "");
        continue;
      }
      if (t[d] < 0) {
        std::printf(" | %9s %6s", "n/a", "");
        complete = false;
      } else {
        std::printf(" | %9.3f %6.2f", t[d], t[d] / ours[li][d]);
        ttot[d] += l.mult * t[d];
      }
    }
    std::printf("\n");
  }
  if (complete && ndirs == 1)
    std::printf("%-34s | %9.3f %6.2f\n", "TOTAL (x multiplicity)", ttot[0], ttot[0] / tot[0]);
  else if (complete)
    std::printf("%-34s | %9.3f %6.2f | %9.3f %6.2f | %9.3f %6.2f\n", "TOTAL (x multiplicity)",
                ttot[0], ttot[0] / tot[0], ttot[1], ttot[1] / tot[1], ttot[2], ttot[2] / tot[2]);
  return 0;
}
