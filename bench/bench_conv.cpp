// Conv2d benchmark: times st::cpu::conv2d_forward / backward_data / backward_weight (float) on
// every conv layer shape of the ShadowTutor student at 1280x720 input (SPEC §2, N = 1, deduped),
// and bench/conv_peer.py with Debian's torch (/usr/bin/python3) on the same shapes, and prints ms
// and GFLOP/s per shape and direction with the ratio torch_ms / our_ms (> 1: we are faster). If
// python3 or torch is missing it prints "peer: missing (...)" and still exits 0.
//
// Usage: bench_conv [SOURCE_DIR] [--no-peer] [--teacher] [--rounds R] [--packed | --ab]
//   --teacher: instead, the forward convolutions of the Mask R-CNN teacher's ResNet-50 + FPN
//   backbone and RPN head (Detectron2 stride placement) at 736x1280 (a 720p frame padded to /32),
//   forward only (the teacher never trains).
//   --packed: run the shapes that the pixel-broadcast 32x3 engine takes through the packed 4x24
//   engine instead. --ab: instead of the table, both engines on every shape with their calls
//   alternating in one process (how the engine choice in kernels/cpu/conv2d_engines.cpp was measured).
//   SOURCE_DIR locates bench/conv_peer.py; defaults to the compile definition ST_SOURCE_DIR,
//   else ".". --rounds R (default 3): R rounds, each timing every shape on our side and then the
//   peer's, so that a noisy stretch of a shared machine hits both sides alike.
// Timing per round and side: one warm-up call, then >= 7 repetitions (more while the total is
// under 0.3 s, at most 21). The table reports the best repetition of all rounds for each side
// (interference from other tenants only ever adds time, so the minimum is the stable estimate
// of what the code itself costs); the totals are given for the best and for the median of each
// round's median.
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

// One side's timing of one call: the best (minimum) and the median of the repetitions.
struct Timing {
  double best = -1, med = -1;
};

template <class F>
Timing time_ms(F&& fn) {
  using clk = std::chrono::steady_clock;
  fn();  // warm-up
  std::vector<double> t;
  const auto start = clk::now();
  while (t.size() < 21 &&
         (t.size() < 7 || std::chrono::duration<double>(clk::now() - start).count() < 0.3)) {
    const auto t0 = clk::now();
    fn();
    t.push_back(std::chrono::duration<double, std::milli>(clk::now() - t0).count());
  }
  std::sort(t.begin(), t.end());
  const double med = t.size() % 2 ? t[t.size() / 2] : 0.5 * (t[t.size() / 2 - 1] + t[t.size() / 2]);
  return {t.front(), med};
}

// Several rounds: keep the best of the bests and the median of the medians.
struct Acc {
  std::vector<double> best, med;
  void add(const Timing& t) {
    if (t.best < 0) return;
    best.push_back(t.best), med.push_back(t.med);
  }
  bool empty() const { return best.empty(); }
  double min_best() const { return *std::min_element(best.begin(), best.end()); }
  double med_med() const {
    std::vector<double> m = med;
    std::sort(m.begin(), m.end());
    return m.size() % 2 ? m[m.size() / 2] : 0.5 * (m[m.size() / 2 - 1] + m[m.size() / 2]);
  }
};

const char* kDirs[3] = {"fwd", "bwd_data", "bwd_weight"};



// Random operands of one convolution: input x, weights w, bias b and output gradient gy, uniform
// in [-1, 1) from rng.
struct ConvData {
  std::vector<float> x, w, b, gy;
};
ConvData conv_operands(const ConvGeom& g, std::mt19937& rng) {
  std::uniform_real_distribution<float> U(-1.0f, 1.0f);
  auto rnd = [&](int64_t n) {
    std::vector<float> v(n);
    for (auto& e : v) e = U(rng);
    return v;
  };
  ConvData d;
  d.x = rnd(g.N * g.C * g.H * g.W), d.w = rnd(g.K * g.C * g.R * g.S), d.b = rnd(g.K);
  d.gy = rnd(g.N * g.K * g.OH * g.OW);
  return d;
}

// --ab: the two GEMM engines of the float path on every shape, forward and backward-data, with
// the calls alternating packed / broadcast in one process (so that a noisy stretch of a shared
// machine hits both alike); prints each engine's best and median and their ratios.
int run_ab(const std::vector<Layer>& layers, int reps) {
  std::mt19937 rng(3);
  std::printf("engine A/B, calls alternating in one process (%d+ pairs per entry); ratio = "
              "packed ms / broadcast ms (> 1: broadcast faster)\n",
              reps);
  std::printf("%-34s | %-9s %8s %8s %5s %5s | %-9s %8s %8s %5s %5s\n", "layer", "fwd", "packed",
              "bcast", "best", "med", "bwd_data", "packed", "bcast", "best", "med");
  for (const Layer& l : layers) {
    const ConvGeom g = geom(l);
    const auto [x, w, b, gy] = conv_operands(g, rng);
    std::vector<float> y(gy.size()), gx(x.size());
    // about 0.2 s per engine and direction, at least reps pairs
    const int n = std::clamp(static_cast<int>(0.2 / (gflop(g) / 100.0)), reps, 20 * reps);
    std::printf("%-34s", l.name.c_str());
    for (int d = 0; d < 2; ++d) {
      std::vector<double> t[2];
      for (int i = 0; i <= n; ++i)
        for (int e = 0; e < 2; ++e) {
          st::cpu::conv2d_set_broadcast_engine(e == 1);
          const auto t0 = std::chrono::steady_clock::now();
          if (d == 0)
            st::cpu::conv2d_forward<float>(g, x.data(), w.data(), b.data(), y.data());
          else
            st::cpu::conv2d_backward_data<float>(g, gy.data(), w.data(), gx.data());
          const double ms = std::chrono::duration<double, std::milli>(
                                std::chrono::steady_clock::now() - t0).count();
          if (i > 0) t[e].push_back(ms);  // the first pair warms up
        }
      for (auto& v : t) std::sort(v.begin(), v.end());
      const double med0 = t[0][t[0].size() / 2], med1 = t[1][t[1].size() / 2];
      std::printf(" | %-9s %8.3f %8.3f %5.2f %5.2f", "", t[0][0], t[1][0], t[0][0] / t[1][0],
                  med0 / med1);
    }
    std::printf("\n");
    std::fflush(stdout);
  }
  st::cpu::conv2d_set_broadcast_engine(true);
  return 0;
}

// Runs the peer script once over every shape; returns false (and says why) when it cannot.
bool run_peer(const std::string& py, const std::string& script, const std::vector<Layer>& layers,
              int ndirs, std::vector<std::array<Acc, 3>>& theirs, std::string& header,
              std::string& why) {
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
  const std::vector<std::string> lines = run_lines(cmd, rc);
  if (rc == -1) {
    why = "cannot run " + py;
    return false;
  }
  std::string error;
  for (const std::string& line : lines) {
    if (!json_field(line, "error").empty()) error = json_field(line, "error");
    if (!json_field(line, "peer").empty())
      header = json_field(line, "peer") + " " + json_field(line, "version") + ", " +
               json_field(line, "threads") + " threads";
    const std::string shape = json_field(line, "shape"), dir = json_field(line, "dir");
    if (shape.empty()) continue;
    for (size_t li = 0; li < layers.size(); ++li)
      if (layers[li].name == shape)
        for (int d = 0; d < 3; ++d)
          if (dir == kDirs[d]) {
            const std::string best = json_field(line, "best");
            const double ms = std::atof(json_field(line, "ms").c_str());
            theirs[li][d].add({best.empty() ? ms : std::atof(best.c_str()), ms});
          }
  }
  if (!error.empty() || header.empty()) {
    why = !error.empty() ? error : (rc != 0 ? "python3 failed" : "no output from conv_peer.py");
    return false;
  }
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  std::string src_dir = ST_SOURCE_DIR;
  bool peer = true, teacher = false, ab = false;
  int rounds = 3;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--no-peer") == 0)
      peer = false;
    else if (std::strcmp(argv[i], "--teacher") == 0)
      teacher = true;
    else if (std::strcmp(argv[i], "--ab") == 0)
      ab = true;
    else if (std::strcmp(argv[i], "--packed") == 0)
      st::cpu::conv2d_set_broadcast_engine(false);
    else if (std::strcmp(argv[i], "--rounds") == 0 && i + 1 < argc)
      rounds = std::max(1, std::atoi(argv[++i]));
    else
      src_dir = argv[i];
  }
  const std::vector<Layer> layers = teacher ? teacher_layers() : student_layers();
  if (ab) return run_ab(layers, 5);
  const int ndirs = teacher ? 1 : 3;
  const std::string py =
      std::getenv("ST_PEER_PYTHON") ? std::getenv("ST_PEER_PYTHON") : "/usr/bin/python3";
  const std::string script = src_dir + "/bench/conv_peer.py";
  std::string peer_why, header;
  if (peer && access(py.c_str(), X_OK) != 0) peer_why = py + " not found";
  if (peer && peer_why.empty() && access(script.c_str(), R_OK) != 0)
    peer_why = script + " not found; pass the source dir as argv[1]";
  if (!peer_why.empty()) peer = false;

  std::printf("conv2d float, N=1, %s\n",
              teacher ? "the teacher's backbone + RPN at 736x1280, forward only"
                      : "student layers at 1280x720");
  std::printf("%d rounds, ours then the peer in each; per round and side: one warm-up call, then "
              ">= 7 repetitions.\nbest = fastest repetition of any round; med = median over "
              "rounds of each round's median.\n",
              rounds);
  std::fflush(stdout);
  std::vector<std::array<Acc, 3>> ours(layers.size()), theirs(layers.size());
  for (int r = 0; r < rounds; ++r) {
    std::fprintf(stderr, "round %d/%d: ours", r + 1, rounds);
    for (size_t li = 0; li < layers.size(); ++li) {
      const ConvGeom g = geom(layers[li]);
      std::mt19937 rng(1);  // the same data in every round
      const auto [x, w, b, gy] = conv_operands(g, rng);
      std::vector<float> y(gy.size()), gx(x.size()), gw(w.size());
      ours[li][0].add(time_ms(
          [&] { st::cpu::conv2d_forward<float>(g, x.data(), w.data(), b.data(), y.data()); }));
      if (ndirs == 3) {
        ours[li][1].add(time_ms(
            [&] { st::cpu::conv2d_backward_data<float>(g, gy.data(), w.data(), gx.data()); }));
        ours[li][2].add(time_ms(
            [&] { st::cpu::conv2d_backward_weight<float>(g, gy.data(), x.data(), gw.data()); }));
      }
    }
    if (peer) {
      std::fprintf(stderr, ", peer");
      if (!run_peer(py, script, layers, ndirs, theirs, header, peer_why)) peer = false;
    }
    std::fprintf(stderr, "\n");
  }

  // Table: per direction ours ms, GF/s, peer ms, ratio (peer / ours; > 1: we are faster), best.
  std::printf("\nbest of all rounds, ms. ratio = peer ms / our ms (> 1: we are faster)\n");
  if (peer) std::printf("peer: %s\n", header.c_str());
  else std::printf("peer: missing (%s)\n", peer_why.empty() ? "--no-peer" : peer_why.c_str());
  std::printf("%-34s %-24s %2s", "layer", "C->K kRxS s  HxW", "x");
  for (int d = 0; d < ndirs; ++d)
    std::printf(" | %-10s %7s %6s %8s %5s", kDirs[d], "ours", "GF/s", "peer", "ratio");
  std::printf("\n");
  double tot_best[2][3] = {}, tot_med[2][3] = {}, tot_gf = 0;
  bool complete = peer;
  for (size_t li = 0; li < layers.size(); ++li) {
    const Layer& l = layers[li];
    const double gf = gflop(geom(l));
    char dims[64];
    std::snprintf(dims, sizeof dims, "%ld->%ld k%ldx%ld s%ld %ldx%ld", (long)l.C, (long)l.K,
                  (long)l.R, (long)l.S, (long)l.stride, (long)l.H, (long)l.W);
    std::printf("%-34s %-24s %2d", l.name.c_str(), dims, l.mult);
    for (int d = 0; d < ndirs; ++d) {
      const double o = ours[li][d].min_best();
      tot_best[0][d] += l.mult * o, tot_med[0][d] += l.mult * ours[li][d].med_med();
      std::printf(" | %-10s %7.3f %6.1f", "", o, gf / o * 1e3);
      if (peer && !theirs[li][d].empty()) {
        const double t = theirs[li][d].min_best();
        tot_best[1][d] += l.mult * t, tot_med[1][d] += l.mult * theirs[li][d].med_med();
        std::printf(" %8.3f %5.2f", t, t / o);
      } else {
        complete = false;
        std::printf(" %8s %5s", "n/a", "");
      }
    }
    std::printf("\n");
    tot_gf += l.mult * gf;
  }
  for (int k = 0; k < 2; ++k) {
    const auto& tot = k == 0 ? tot_best : tot_med;
    std::printf("%-61s", k == 0 ? "TOTAL (x multiplicity), best" : "TOTAL (x multiplicity), med");
    for (int d = 0; d < ndirs; ++d) {
      std::printf(" | %-10s %7.2f %6.1f", "", tot[0][d], tot_gf / tot[0][d] * 1e3);
      if (complete)
        std::printf(" %8.2f %5.2f", tot[1][d], tot[1][d] / tot[0][d]);
      else
        std::printf(" %8s %5s", "n/a", "");
    }
    std::printf("\n");
  }
  return 0;
}
