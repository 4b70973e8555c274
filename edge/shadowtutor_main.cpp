// `shadowtutor`: the command-line entry point. Subcommands:
//   simulate   client and server in one process on a video, with a recorded or a live teacher
#include <cstdio>
#include <fstream>
#include <iostream>
#include <string>

#include "cli/flags.h"
#include "edge/simulate.h"

namespace {

// The flags of `shadowtutor simulate`, writing into `o` and `out` (the report's path).
void declare_simulate_flags(st::cli::Flags& flags, st::edge::SimOptions& o, std::string& out,
                            std::string& profile_path, bool& key_encoding_auto) {
  flags.path("--video", o.video, "PATH",
             "a directory of frames (png/jpg) or a video file (decoded by ffmpeg)");
  flags.path("--labels", o.labels, "DIR",
             "recorded teacher label maps, DIR/000000.png ... (pixel = class 0..8)");
  flags.path("--maskrcnn", o.maskrcnn, "FILE",
             "or the Mask R-CNN port as a live teacher (Detectron2-named safetensors,\n"
             "tools/convert_teacher.py); Detectron2 conventions, as the server runs it");
  flags.text("--teacher-cmd", o.teacher_cmd, "CMD",
             "or a live teacher command, `/bin/sh -c CMD`, speaking docs/teacher_pipe.md\n"
             "(e.g. the demo's RVM: node tools/rvm_teacher/teacher.js --model DIR); two\n"
             "processes: one labels the evaluated raw frames, one the server half's key\n"
             "frames, as the server's own would (a teacher may keep state between frames)");
  flags.seconds("--teacher-timeout", o.teacher_timeout_s, "S",
                "seconds the teacher command may take per frame (default 120)");
  flags.device("--teacher-device", o.teacher_device, "D",
               "cpu | cuda[:N] for the Mask R-CNN      (default cpu)");
  flags.integer("--eval-every", o.eval_every, "N",
                "teacher labels for the mIoU on every Nth frame (key frames always; default\n"
                "1; the live Mask R-CNN takes seconds per frame on a CPU)")
      .at_least(1);
  flags.path("--weights", o.weights, "FILE",
             "student weights (.safetensors); default: random initialisation");
  flags.custom("--mode", "M", "partial | full | wild | naive          (default partial)",
               [&o](const std::string& v) {
                 o.mode = st::parse_mode(
                     v, {st::Mode::Partial, st::Mode::Full, st::Mode::Wild, st::Mode::Naive});
               });
  flags.integer("--delay", o.delay, "D",
                "apply each update after D frames, 1..MIN_STRIDE (default 1: P-1)");
  flags.integer("--frames", o.max_frames, "N", "stop after N frames");
  flags.custom("--encoding", "E",
               "fp32 | fp16: plain blobs in this encoding (as --update plain; default fp32)",
               [&o](const std::string& v) {
                 o.encoding = st::parse_blob_encoding(v);
                 o.update.reset();
               });
  st::cli::declare_update_flag(flags, o.update);
  st::cli::declare_distill_flags(flags, o.distill);
  st::cli::declare_split_flags(flags, o.split);
  st::cli::declare_key_encoding_flag(flags, o.key_encoding, o.jpeg_quality, &key_encoding_auto);
  flags.text("--out", out, "FILE", "write the JSON report here (default: stdout)");
  st::cli::declare_profile_flag(flags, profile_path);
  flags.path("--predictions", o.predictions_dir, "DIR", "write predicted label maps (PNG)");
  flags.path("--overlays", o.overlays_dir, "DIR", "write colour overlays (PNG)");
  flags.action("--quiet", [&o] { o.progress = false; }, "no live progress line");
}

int run_simulate(st::cli::Flags& flags, const st::edge::SimOptions& o, const std::string& out) {
  if (o.video.empty()) return flags.usage_error("--video is required");
  if (int(!o.labels.empty()) + int(!o.maskrcnn.empty()) + int(!o.teacher_cmd.empty()) != 1)
    return flags.usage_error("give exactly one of --labels, --maskrcnn and --teacher-cmd");
  st::edge::SimResult r = st::edge::simulate(o);
  std::string json = st::edge::to_json(r);
  st::cli::write_report(out, json);
  std::string run = r.mode == "partial" || r.mode == "full" ? r.mode + " P-" + std::to_string(r.delay) : r.mode;
  std::fprintf(stderr, "teacher: %s (%lld calls)\n", r.teacher.c_str(), (long long)r.teacher_calls);
  if (r.trained_tensors > 0)
    std::fprintf(stderr, "trained: %s, %lld tensors, %lld of %lld parameters (%.1f%%)\n",
                 r.mode == "full" ? "every block" : r.split.c_str(), (long long)r.trained_tensors,
                 (long long)r.trained_parameters, (long long)r.parameters,
                 100.0 * double(r.trained_parameters) / double(r.parameters));
  std::fprintf(stderr, "%s: %lld frames, mean mIoU %.4f, key frames %lld (%.2f%%), traffic %.2f%% of naive\n",
               run.c_str(), (long long)r.frames, r.mean_miou, (long long)r.key_frames,
               100.0 * double(r.key_frames) / double(r.frames),
               100.0 * double(r.bytes_up + r.bytes_down) / double(r.naive_bytes_up + r.naive_bytes_down));
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  st::edge::SimOptions o;
  std::string out, profile_path;
  st::cli::Flags flags("shadowtutor",
                       "usage: shadowtutor simulate --video PATH (--labels DIR | --maskrcnn FILE) "
                       "[options]");
  // The programs' bytes defaults (cli/flags.h; docs/results.md, "Bytes").
  o.key_encoding = st::cli::kDefaultKeyEncoding;
  o.jpeg_quality = st::cli::kDefaultJpegQuality;
  o.update = st::nn::parse_update_codec(st::cli::kDefaultUpdateCodec);
  bool key_encoding_auto = true;
  declare_simulate_flags(flags, o, out, profile_path, key_encoding_auto);
  if (argc < 2) return flags.usage_error("missing subcommand");
  const std::string cmd = argv[1];
  if (cmd == "-h" || cmd == "--help") {
    std::fputs(flags.help().c_str(), stdout);
    return 0;
  }
  if (cmd != "simulate") return flags.usage_error("unknown subcommand '" + cmd + "'");
  if (auto exit_code = flags.parse(argc, argv, 2)) return *exit_code;
  o.key_encoding_auto = key_encoding_auto;
  try {
    st::cli::start_profile(profile_path);
    return run_simulate(flags, o, out);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "shadowtutor: error: %s\n", e.what());
    return 1;
  }
}
