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

#include "edge/client.h"
#include "cli/flags.h"
#include "net/net.h"

namespace {

const char* kUsage = R"(usage: shadowtutor-edge --server HOST:PORT --token-file F --video PATH [options]

  --server HOST:PORT   the shadowtutor-server
  --token-file F       auth token: the first line of file F (or --token T, which every
                       user of the machine can read in `ps`)
  --video PATH         a directory of frames (png/jpg) or a video file (decoded by ffmpeg)
  --weights FILE       student weights (.safetensors); default: deterministic init (the server
                       sends its weights when they differ)
  --mode M             partial | full | naive                     (default partial)
  --device D           cpu | cuda | cuda:N: where the student runs (default cpu)
  --frames N           stop after N frames
  --loop               replay the video from its start when it ends (frame indices keep
                       increasing: recorded --labels on the server cover the first pass only);
                       runs until --frames or Ctrl-C
  --predictions DIR    write predicted label maps (PNG)
  --overlays DIR       write colour overlays (PNG)
  --overlay-every N    only every Nth frame's overlay (default 1)
  --overlay-jpeg       overlays as JPEG (%06d.jpg), not PNG
  --link-mbps R        limit the link to R Mbit/s per direction (token bucket)
  --key-encoding E     key frames as raw | png | jpeg[:QUALITY]  (default raw; jpeg = quality 90)
  --reference DIR      reference label maps DIR/%06d.png: per-frame mIoU in the log and summary
  --frame-log FILE     one JSON object per frame (frame, t, key, applied, stale, stride, miou,
                       bytes up/down)
  --fp32-only          accept only fp32 blobs (default: fp32 and fp16)
  --max-wait S|Nf      partial/full: the longest the edge blocks on an update that is due
                       (MIN_STRIDE frames after its key frame) before it segments on with its
                       current weights, marking those frames stale, and applies the update at
                       the first frame after it arrives: S seconds, or N frame times (the
                       running mean of the time per frame, the first frame left out, at least
                       the --fps interval); inf: block until the update comes, as the paper
                       (default 3f)
  --update-timeout S   drop the connection and reconnect when an answer has not come S seconds
                       after the edge needed it (default 60)
  --wait-server S      at start, wait up to S seconds for the server before the first frame
  --fps F              pace frames at F per second (a live camera); default: as fast as possible
  --json OUT           write the JSON summary to OUT (default: stdout)
  --quiet              no live progress line and no log lines
)";

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

int usage_error(const std::string& msg) {
  std::fprintf(stderr, "shadowtutor-edge: %s\n\n%s", msg.c_str(), kUsage);
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  st::edge::EdgeOptions o;
  std::string server, json_out, token_file;
  bool have_token = false;
  try {
    for (int i = 1; i < argc; ++i) {
      std::string a = argv[i];
      if (a == "-h" || a == "--help") {
        std::fputs(kUsage, stdout);
        return 0;
      }
      if (a == "--quiet") {
        o.progress = false;
        o.net.log = false;
        continue;
      }
      if (a == "--overlay-jpeg") {
        o.overlay_jpeg = true;
        continue;
      }
      if (a == "--fp32-only") {
        o.accept_blobs = st::protocol::kAcceptF32;
        continue;
      }
      if (a == "--loop") {
        o.loop = true;
        continue;
      }
      if (i + 1 >= argc) return usage_error("option " + a + " needs a value");
      std::string v = argv[++i];
      if (a == "--server") server = v;
      else if (a == "--token") o.token = v, have_token = true;
      else if (a == "--token-file") token_file = v;
      else if (a == "--video") o.video = v;
      else if (a == "--weights") o.weights = v;
      else if (a == "--mode") o.mode = st::parse_mode(v, {st::Mode::Partial, st::Mode::Full, st::Mode::Naive});
      else if (a == "--frames") o.max_frames = std::stoll(v);
      else if (a == "--predictions") o.predictions_dir = v;
      else if (a == "--overlays") o.overlays_dir = v;
      else if (a == "--link-mbps") o.net.link_mbps = std::stod(v);
      else if (a == "--reference") o.reference_dir = v;
      else if (a == "--device") o.device = st::cli::parse_device(v);
      else if (a == "--overlay-every") {
        o.overlay_every = std::stoll(v);
        if (o.overlay_every < 1) return usage_error("--overlay-every must be >= 1");
      }
      else if (a == "--frame-log") o.frame_log = v;
      else if (a == "--key-encoding") {
        if (v == "raw") o.key_encoding = st::protocol::FrameEncoding::RawBgr;
        else if (v == "png") o.key_encoding = st::protocol::FrameEncoding::Png;
        else if (v.rfind("jpeg", 0) == 0) {
          o.key_encoding = st::protocol::FrameEncoding::Jpeg;
          if (v.size() > 4) {
            if (v[4] != ':') return usage_error("--key-encoding: raw, png, jpeg or jpeg:QUALITY");
            o.jpeg_quality = std::stoi(v.substr(5));
            if (o.jpeg_quality < 1 || o.jpeg_quality > 100)
              return usage_error("--key-encoding: JPEG quality must be 1..100");
          }
        } else return usage_error("--key-encoding: raw, png, jpeg or jpeg:QUALITY, not " + v);
      } else if (a == "--wait-server") o.initial_wait_s = std::stod(v);
      else if (a == "--update-timeout") {
        o.update_timeout_s = std::stod(v);
        if (!(o.update_timeout_s > 0)) return usage_error("--update-timeout must be positive");
      } else if (a == "--max-wait") {
        // S seconds (inf: unbounded) or Nf frame times.
        size_t used = 0;
        const double x = std::stod(v, &used);
        const std::string unit = v.substr(used);
        if (!(x >= 0) || (unit != "" && unit != "f"))
          return usage_error("--max-wait: seconds (>= 0, or inf) or Nf (N frame times), not " + v);
        if (unit == "f") {
          if (std::isinf(x)) return usage_error("--max-wait: inf takes no 'f'");
          o.max_wait_s = -1, o.max_wait_frames = x;
        } else {
          o.max_wait_s = x;
        }
      }
      else if (a == "--fps") {
        double fps = std::stod(v);
        if (fps <= 0) return usage_error("--fps must be positive");
        o.frame_interval_s = 1.0 / fps;
      } else if (a == "--json") json_out = v;
      else return usage_error("unknown option " + a);
    }
    if (have_token)  // said before any other complaint about the command line
      std::fprintf(stderr,
                   "shadowtutor-edge: warning: --token is visible to other users of this machine "
                   "(ps, /proc); use --token-file\n");
    if (server.empty() || o.video.empty()) return usage_error("--server and --video are required");
    auto [host, port] = st::net::parse_host_port(server);
    o.net.host = host;
    o.net.port = port;
  } catch (const std::exception& e) {
    return usage_error(e.what());
  }
  if (!token_file.empty()) {
    if (!st::cli::read_token_file(token_file, o.token))
      return usage_error("cannot read token file " + token_file);
    have_token = true;
  }
  if (!have_token) return usage_error("--token-file or --token is required");
  o.stop = &g_stop;
  install_stop_handlers();
  try {
    st::edge::EdgeResult r = st::edge::run_edge(o);
    std::string json = st::edge::to_json(r);
    if (json_out.empty()) {
      std::cout << json << "\n";
    } else {
      std::ofstream f(json_out);
      if (!(f << json << "\n")) throw st::Error("cannot write " + json_out);
    }
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
