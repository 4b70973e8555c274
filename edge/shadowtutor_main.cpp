// `shadowtutor`: the command-line entry point. Subcommands:
//   simulate   client and server in one process on a video, with a recorded or a live teacher
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <map>
#include <string>

#include "edge/simulate.h"
#include "cli/flags.h"

namespace {

const char* kUsage = R"(usage: shadowtutor simulate --video PATH (--labels DIR | --maskrcnn FILE) [options]

  --video PATH         a directory of frames (png/jpg) or a video file (decoded by ffmpeg)
  --labels DIR         recorded teacher label maps, DIR/000000.png ... (pixel = class 0..8)
  --maskrcnn FILE      or the Mask R-CNN port as a live teacher (Detectron2-named safetensors,
                       tools/convert_teacher.py); Detectron2 conventions, as the server runs it
  --teacher-device D   cpu | cuda[:N] for the Mask R-CNN      (default cpu)
  --eval-every N       teacher labels for the mIoU on every Nth frame (key frames always; default
                       1; the live Mask R-CNN takes seconds per frame on a CPU)
  --weights FILE       student weights (.safetensors); default: random initialisation
  --mode M             partial | full | wild | naive          (default partial)
  --delay D            apply each update after D frames, 1..MIN_STRIDE (default 1: P-1)
  --frames N           stop after N frames
  --encoding E         fp32 | fp16 blob encoding               (default fp32)
  --threshold T        Algorithm 1/2 threshold                 (default 0.8)
  --max-updates U      distillation steps per key frame        (default 8)
  --min-stride S       (default 8)      --max-stride S  (default 64)
  --out FILE           write the JSON report here (default: stdout)
  --predictions DIR    write predicted label maps (PNG)
  --overlays DIR       write colour overlays (PNG)
  --quiet              no live progress line
)";

int usage_error(const std::string& msg) {
  std::fprintf(stderr, "shadowtutor: %s\n\n%s", msg.c_str(), kUsage);
  return 2;
}

int run_simulate(int argc, char** argv) {
  st::edge::SimOptions o;
  std::string out;
  for (int i = 0; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--quiet") {
      o.progress = false;
      continue;
    }
    if (a == "-h" || a == "--help") {
      std::fputs(kUsage, stdout);
      return 0;
    }
    if (i + 1 >= argc) return usage_error("option " + a + " needs a value");
    std::string v = argv[++i];
    try {
      if (a == "--video") o.video = v;
      else if (a == "--labels") o.labels = v;
      else if (a == "--maskrcnn") o.maskrcnn = v;
      else if (a == "--teacher-device") o.teacher_device = st::cli::parse_device(v);
      else if (a == "--eval-every") o.eval_every = std::stoll(v);
      else if (a == "--weights") o.weights = v;
      else if (a == "--mode") o.mode = st::parse_mode(v, {st::Mode::Partial, st::Mode::Full, st::Mode::Wild, st::Mode::Naive});
      else if (a == "--delay") o.delay = std::stoi(v);
      else if (a == "--frames") o.max_frames = std::stoll(v);
      else if (a == "--encoding") {
        if (v != "fp32" && v != "fp16") return usage_error("--encoding must be fp32 or fp16");
        o.encoding = v == "fp16" ? st::BlobEncoding::F16 : st::BlobEncoding::F32;
      } else if (a == "--threshold") o.distill.threshold = std::stod(v);
      else if (a == "--max-updates") o.distill.max_updates = std::stoi(v);
      else if (a == "--min-stride") o.distill.min_stride = std::stoi(v);
      else if (a == "--max-stride") o.distill.max_stride = std::stoi(v);
      else if (a == "--out") out = v;
      else if (a == "--predictions") o.predictions_dir = v;
      else if (a == "--overlays") o.overlays_dir = v;
      else return usage_error("unknown option " + a);
    } catch (const std::invalid_argument&) {
      return usage_error("bad value '" + v + "' for " + a);
    } catch (const std::out_of_range&) {
      return usage_error("value out of range for " + a);
    }
  }
  if (o.video.empty()) return usage_error("--video is required");
  if (o.labels.empty() == o.maskrcnn.empty()) return usage_error("give exactly one of --labels and --maskrcnn");
  if (o.eval_every < 1) return usage_error("--eval-every must be >= 1");
  st::edge::SimResult r = st::edge::simulate(o);
  std::string json = st::edge::to_json(r);
  if (out.empty()) {
    std::cout << json << "\n";
  } else {
    std::ofstream f(out);
    if (!(f << json << "\n")) throw st::Error("cannot write " + out);
  }
  std::string run = r.mode == "partial" || r.mode == "full" ? r.mode + " P-" + std::to_string(r.delay) : r.mode;
  std::fprintf(stderr, "teacher: %s (%lld calls)\n", r.teacher.c_str(), (long long)r.teacher_calls);
  std::fprintf(stderr, "%s: %lld frames, mean mIoU %.4f, key frames %lld (%.2f%%), traffic %.2f%% of naive\n",
               run.c_str(), (long long)r.frames, r.mean_miou, (long long)r.key_frames,
               100.0 * double(r.key_frames) / double(r.frames),
               100.0 * double(r.bytes_up + r.bytes_down) / double(r.naive_bytes_up + r.naive_bytes_down));
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) return usage_error("missing subcommand");
  std::string cmd = argv[1];
  try {
    if (cmd == "simulate") return run_simulate(argc - 2, argv + 2);
    if (cmd == "-h" || cmd == "--help") {
      std::fputs(kUsage, stdout);
      return 0;
    }
    return usage_error("unknown subcommand '" + cmd + "'");
  } catch (const std::exception& e) {
    std::fprintf(stderr, "shadowtutor: error: %s\n", e.what());
    return 1;
  }
}
