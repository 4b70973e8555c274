// shadowtutor-edge: the ShadowTutor edge client (student on every frame, key frames to a server).
// Ctrl-C (SIGINT) or SIGTERM ends the run after the current frame with the usual summary; a
// second one ends the program at once.
#include <atomic>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <string>

#include "cli/flags.h"
#include "edge/client.h"
#include "net/net.h"

namespace {

// Set by SIGINT / SIGTERM; EdgeOptions::stop points here.
std::atomic<bool> g_stop{false};
static_assert(std::atomic<bool>::is_always_lock_free, "the signal handler needs a lock-free flag");

extern "C" void on_stop_signal(int) { g_stop.store(true); }

// The first SIGINT / SIGTERM asks the run to end after the current frame (SA_RESETHAND: a
// second one has the default effect and ends the program; SA_RESTART: interrupted system
// calls resume).
void install_stop_handlers() {
  struct sigaction sa {};
  sa.sa_handler = on_stop_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESETHAND | SA_RESTART;
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
}

// --max-wait S | Nf | inf: S seconds (inf: unbounded) or N frame times. A number first ("inf"
// ends in 'f' too), then N followed by 'f'.
void parse_max_wait(const std::string& v, st::edge::EdgeOptions& o) {
  const std::string bad = "seconds (>= 0, or inf) or Nf (N frame times), not '" + v + "'";
  auto number = [&](const std::string& text, double& x) {
    try {
      x = st::cli::Flags::parse_number(text, true);
      return true;
    } catch (const st::Error&) {
      return false;
    }
  };
  double x = 0;
  bool frames = false;
  if (!number(v, x)) {
    frames = !v.empty() && v.back() == 'f';
    if (!frames || !number(v.substr(0, v.size() - 1), x)) throw st::Error(bad);
  }
  if (!(x >= 0)) throw st::Error(bad);
  if (frames) {
    if (std::isinf(x)) throw st::Error("inf takes no 'f'");
    o.max_wait_s = -1, o.max_wait_frames = x;
  } else {
    o.max_wait_s = x;
  }
}

}  // namespace

int main(int argc, char** argv) {
  st::edge::EdgeOptions o;
  std::string server, json_out, token_file;
  double fps = 0;
  st::cli::Flags flags("shadowtutor-edge",
                       "usage: shadowtutor-edge --server HOST:PORT --token-file F --video PATH "
                       "[options]");
  flags.text("--server", server, "HOST:PORT", "the shadowtutor-server");
  flags.text("--token-file", token_file, "F",
             "auth token: the first line of file F (or --token T, which every\n"
             "user of the machine can read in `ps`)");
  flags.text("--token", o.token, "T",
             "the auth token itself (visible in `ps`: prefer --token-file)");
  flags.path("--video", o.video, "PATH",
             "a directory of frames (png/jpg) or a video file (decoded by ffmpeg)");
  flags.path("--weights", o.weights, "FILE",
             "student weights (.safetensors); default: deterministic init (the server\n"
             "sends its weights when they differ)");
  flags.custom("--mode", "M", "partial | full | naive                     (default partial)",
               [&](const std::string& v) {
                 o.mode = st::parse_mode(v, {st::Mode::Partial, st::Mode::Full, st::Mode::Naive});
               });
  flags.device("--device", o.device, "D",
               "cpu | cuda | cuda:N: where the student runs (default cpu)");
  flags.integer("--frames", o.max_frames, "N", "stop after N frames");
  flags.boolean("--loop", o.loop,
                "replay the video from its start when it ends (frame indices keep\n"
                "increasing: recorded --labels on the server cover the first pass only);\n"
                "runs until --frames or Ctrl-C");
  flags.path("--predictions", o.predictions_dir, "DIR", "write predicted label maps (PNG)");
  flags.path("--overlays", o.overlays_dir, "DIR", "write colour overlays (PNG)");
  flags.integer("--overlay-every", o.overlay_every, "N",
                "only every Nth frame's overlay (default 1)")
      .at_least(1);
  flags.boolean("--overlay-jpeg", o.overlay_jpeg, "overlays as JPEG (%06d.jpg), not PNG");
  flags.number("--link-mbps", o.net.link_mbps, "R",
               "limit the link to R Mbit/s per direction (token bucket)");
  o.key_encoding = st::cli::kDefaultKeyEncoding;  // docs/results.md, "Bytes"
  o.jpeg_quality = st::cli::kDefaultJpegQuality;
  st::cli::declare_key_encoding_flag(flags, o.key_encoding, o.jpeg_quality);
  flags.path("--reference", o.reference_dir, "DIR",
             "reference label maps DIR/%06d.png: per-frame mIoU in the log and summary");
  flags.path("--frame-log", o.frame_log, "FILE",
             "one JSON object per frame (frame, t, key, applied, stale, stride, miou,\n"
             "bytes up/down, online, sessions)");
  flags.action("--fp32-only", [&] { o.accept_blobs = st::protocol::kAcceptF32; },
               "accept only fp32 blobs (default: fp32 and fp16)");
  flags.custom("--max-wait", "S|Nf",
               "partial/full: the longest the edge blocks on an update that is due\n"
               "(MIN_STRIDE frames after its key frame) before it segments on with its\n"
               "current weights, marking those frames stale, and applies the update at\n"
               "the first frame after it arrives: S seconds, or N frame times (the\n"
               "running mean of the time per frame, the first frame left out, at least\n"
               "the --fps interval); inf: block until the update comes, as the paper\n"
               "(default 3f)",
               [&](const std::string& v) { parse_max_wait(v, o); });
  flags.integer("--apply-after", o.apply_after_frames, "N",
                "partial/full, reproducible runs: swap every update in exactly N frames\n"
                "after its key frame (the paper's P-N, at most MIN_STRIDE), waiting for it\n"
                "there if it is late and holding it if early; look at the network only\n"
                "where something is due, send a key frame a lost session left unanswered\n"
                "to the next: the same frames whatever the speeds (replaces --max-wait)")
      .at_least(1);
  flags.seconds("--update-timeout", o.update_timeout_s, "S",
                "drop the connection and reconnect when an answer has not come S seconds\n"
                "after the edge needed it (default 60)")
      .above(0);
  flags.seconds("--wait-server", o.initial_wait_s, "S",
                "at start, wait up to S seconds for the server before the first frame");
  flags.number("--fps", fps, "F",
               "pace frames at F per second (a live camera); default: as fast as possible")
      .above(0);
  flags.text("--json", json_out, "OUT", "write the JSON summary to OUT (default: stdout)");
  flags.action("--quiet", [&] { o.progress = false, o.net.log = false; },
               "no live progress line and no log lines");
  std::string profile_path;
  st::nn::PartialSplit split;
  st::cli::declare_split_flags(flags, split, /*edge=*/true);
  st::cli::declare_profile_flag(flags, profile_path);
  if (auto exit_code = flags.parse(argc, argv)) return *exit_code;
  if (flags.given("--train-from") || flags.given("--train-last") || flags.given("--train")) {
    if (o.mode != st::Mode::Partial)
      return flags.usage_error("--train-from, --train-last and --train apply to --mode partial");
    o.require_split = split;  // the server chooses the split; this edge insists on this one
  }
  st::cli::warn_token_on_command_line(flags);  // before any other complaint
  if (server.empty() || o.video.empty())
    return flags.usage_error("--server and --video are required");
  if (fps > 0) o.frame_interval_s = 1.0 / fps;
  try {
    auto [host, port] = st::net::parse_host_port(server);
    o.net.host = host;
    o.net.port = port;
  } catch (const std::exception& e) {
    return flags.usage_error(e.what());
  }
  if (auto exit_code = st::cli::resolve_token(flags, token_file, o.token)) return *exit_code;
  o.stop = &g_stop;
  install_stop_handlers();
  try {
    st::cli::start_profile(profile_path);
    st::edge::EdgeResult r = st::edge::run_edge(o);
    std::string json = st::edge::to_json(r);
    st::cli::write_report(json_out, json);
    std::fprintf(stderr,
                 "shadowtutor-edge: %lld frames at %.2f fps, %lld key frames, %lld updates, "
                 "%lld stale frames, %.2f MB up, %.2f MB down%s\n",
                 (long long)r.frames, r.fps, (long long)r.key_frames, (long long)r.updates,
                 (long long)r.stale_frames,
                 double(r.bytes_up) / 1e6, double(r.bytes_down) / 1e6,
                 g_stop.load() ? " (interrupted)" : "");
  } catch (const std::exception& e) {
    std::fprintf(stderr, "shadowtutor-edge: error: %s\n", e.what());
    return 1;
  }
  return 0;
}
