// Benchmark: the Mask R-CNN R50-FPN teacher (teacher_port/) against torchvision's
// maskrcnn_resnet50_fpn at the same input size, on the same machine, in the same run.
//
// The peer (bench/teacher_peer.py under Debian's torch/torchvision, /usr/bin/python3, 2 threads)
// builds the seeded model of tools/make_teacher_golden.py, writes its weights and a random frame
// to a temporary folder and times model([img]) (median of --reps after a warm-up) and its backbone
// alone. We load the same weights and time the same frame in torchvision's conventions (same
// network, same thresholds, no resize: min_size = H, max_size = W), per stage, then in
// Detectron2's conventions (what the ShadowTutor server runs: score 0.5, Detectron2 paste and the
// label map) on the same weights in Detectron2's class layout.
// ratio = peer ms / our ms (> 1: we are faster). Without torch/torchvision the peer is reported
// missing and ours is timed alone on a seeded random model (teacher_port/random_weights.h).
//
// Usage: bench_teacher [SOURCE_DIR] [--size 720x1280] [--reps 3] [--device cpu|cuda]
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "bench/bench_util.h"
#include "tensor/backend.h"
#include "tensor/safetensors.h"
#include "teacher_port/maskrcnn.h"
#include "teacher_port/random_weights.h"

using namespace st;
using namespace st::bench;
namespace fs = std::filesystem;

namespace {

struct Peer {
  std::string header, error;
  std::map<std::string, double> ms;
  int64_t detections = -1;
};

Peer run_peer(const std::string& src, const fs::path& out, int64_t h, int64_t w, int reps,
              bool cuda) {
  Peer p;
  const std::string py = std::getenv("ST_PEER_PYTHON") ? std::getenv("ST_PEER_PYTHON") : "/usr/bin/python3";
  if (access(py.c_str(), X_OK) != 0) {
    p.error = py + " not found";
    return p;
  }
  const std::string cmd = py + " '" + src + "/bench/teacher_peer.py' '" + out.string() + "' --size " +
                          std::to_string(h) + "x" + std::to_string(w) + " --reps " +
                          std::to_string(reps) + (cuda ? " --device cuda" : "") + " 2>&1";
  int rc = 0;
  for (const std::string& line : run_lines(cmd, rc)) {
    if (!json_field(line, "error").empty()) p.error = json_field(line, "error");
    if (!json_field(line, "peer").empty())
      p.header = "torchvision " + json_field(line, "version") + " (torch " + json_field(line, "torch") +
                 ", " + json_field(line, "threads") + " threads, " + json_field(line, "device") + ")";
    const std::string what = json_field(line, "what");
    if (!what.empty()) p.ms[what] = std::atof(json_field(line, "ms").c_str());
    if (!json_field(line, "detections").empty())
      p.detections = std::atoll(json_field(line, "detections").c_str());
  }
  if (p.error.empty() && p.header.empty())
    p.error = rc != 0 ? "python3 failed" : "no output from teacher_peer.py";
  return p;
}

// Median of `reps` timed runs after one warm-up; `last` receives the last run's result.
teacher::MaskRcnn::Result::Timings time_runs(const teacher::MaskRcnn& m, const Tensor& bgr, int reps,
                                             teacher::MaskRcnn::Result& last) {
  const auto run = [&] { return m.run(bgr.data<uint8_t>(), bgr.size(0), bgr.size(1)); };
  last = run();
  std::vector<teacher::MaskRcnn::Result::Timings> t;
  for (int i = 0; i < reps; ++i) {
    last = run();
    t.push_back(last.ms);
  }
  std::sort(t.begin(), t.end(), [](const auto& a, const auto& b) { return a.total() < b.total(); });
  return t[t.size() / 2];
}

void print_stages(const char* label, const teacher::MaskRcnn::Result::Timings& t) {
  std::printf("  %-30s total %8.1f ms = preprocess %.1f + backbone %.1f + rpn %.1f + box %.1f + "
              "mask %.1f + paste %.1f\n",
              label, t.total(), t.preprocess, t.backbone, t.rpn, t.box, t.mask, t.paste);
}

}  // namespace

int main(int argc, char** argv) {
  std::string src = ST_SOURCE_DIR;
  int64_t h = 720, w = 1280;
  int reps = 3;
  Device dev = Device::cpu();
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--size" && i + 1 < argc) {
      if (std::sscanf(argv[++i], "%ldx%ld", &h, &w) != 2 || h <= 0 || w <= 0) {
        std::fprintf(stderr, "bench_teacher: --size wants HxW, e.g. 720x1280\n");
        return 2;
      }
    } else if (a == "--reps" && i + 1 < argc) {
      reps = std::max(1, std::atoi(argv[++i]));
    } else if (a == "--device" && i + 1 < argc) {
      const std::string d = argv[++i];
      dev = d == "cuda" ? Device::cuda(0) : Device::cpu();
    } else if (a.rfind("--", 0) != 0) {
      src = a;
    } else {
      std::fprintf(stderr, "usage: bench_teacher [SOURCE_DIR] [--size HxW] [--reps N] [--device cpu|cuda]\n");
      return 2;
    }
  }
  const fs::path tmp = fs::temp_directory_path() / ("st_bench_teacher_" + std::to_string(::getpid()));
  fs::create_directories(tmp);
  std::printf("bench_teacher: Mask R-CNN R50-FPN, %ldx%ld input, %d reps (median), device %s\n", h, w,
              reps, dev.is_cuda() ? "cuda:0" : "cpu");
  const Peer peer = run_peer(src, tmp, h, w, reps, dev.is_cuda());
  const bool have_peer = peer.error.empty();
  Tensor bgr;
  safetensors::File weights_tv, weights_d2;
  if (have_peer) {
    std::printf("peer: %s. ratio = peer ms / our ms (> 1: we are faster)\n", peer.header.c_str());
    bgr = safetensors::load(tmp / "frame.safetensors").get("bgr");
    weights_tv = safetensors::load(tmp / "e2e_weights.safetensors");
    weights_d2 = safetensors::load(tmp / "e2e_weights_d2layout.safetensors");
  } else {
    std::printf("peer: missing (%s); ours alone on a seeded random model\n", peer.error.c_str());
    bgr = Tensor::uniform({h, w, 3}, 0, 255, 5).to(DType::U8);
    weights_d2 = teacher::random_maskrcnn_weights(1);
  }

  teacher::MaskRcnn::Result r;
  teacher::MaskRcnn::Result::Timings t;
  teacher::MaskRcnnOptions tv = teacher::MaskRcnnOptions::torchvision();
  tv.min_size = h;  // as the peer: the input at its own size
  tv.max_size = w;
  if (have_peer) {
    teacher::MaskRcnn ours(weights_tv, tv);
    ours.to(dev);
    t = time_runs(ours, bgr, reps, r);
    std::printf("torchvision conventions (%ld detections; peer %ld):\n", r.detections.boxes.size(0),
                peer.detections);
    print_stages("ours", t);
    std::printf("  %-30s total %8.1f ms, backbone %.1f ms\n", "peer", peer.ms.at("total"),
                peer.ms.at("backbone"));
    std::printf("  ratio: total %.2f, backbone %.2f\n", peer.ms.at("total") / t.total(),
                peer.ms.at("backbone") / t.backbone);
  }

  teacher::MaskRcnnOptions d2 = teacher::MaskRcnnOptions::detectron2();
  if (have_peer) {
    d2.stride_in_1x1 = tv.stride_in_1x1;  // the seeded model's stride placement and normalisation
    d2.bgr255 = tv.bgr255;
    d2.mean = tv.mean;
    d2.std = tv.std;
  }
  teacher::MaskRcnn server(weights_d2, d2);
  server.to(dev);
  const auto t2 = time_runs(server, bgr, reps, r);
  std::printf("Detectron2 conventions, as the ShadowTutor server runs it (%ld detections):\n",
              r.detections.boxes.size(0));
  print_stages("ours", t2);
  if (have_peer)
    std::printf("{\"bench\": \"teacher\", \"size\": \"%ldx%ld\", \"device\": \"%s\", \"ours_ms\": %.1f, "
                "\"peer_ms\": %.1f, \"ratio\": %.3f, \"ours_backbone_ms\": %.1f, \"peer_backbone_ms\": %.1f, "
                "\"server_ms\": %.1f}\n",
                h, w, dev.is_cuda() ? "cuda" : "cpu", t.total(), peer.ms.at("total"),
                peer.ms.at("total") / t.total(), t.backbone, peer.ms.at("backbone"), t2.total());
  else
    std::printf("{\"bench\": \"teacher\", \"size\": \"%ldx%ld\", \"device\": \"%s\", \"server_ms\": %.1f, "
                "\"server_backbone_ms\": %.1f}\n",
                h, w, dev.is_cuda() ? "cuda" : "cpu", t2.total(), t2.backbone);
  fs::remove_all(tmp);
  return 0;
}
