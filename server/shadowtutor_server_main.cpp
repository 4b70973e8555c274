// shadowtutor-server: the ShadowTutor server (teacher + partial distillation over TCP).
#include <signal.h>

#include <cstdio>
#include <fstream>
#include <string>

#include "cli/flags.h"
#include "server/server.h"

namespace {

const char* kUsage = R"(usage: shadowtutor-server --port P (--token-file F | --token T)
                          (--labels DIR | --teacher-cmd "CMD ARGS" | --maskrcnn FILE) [options]

  --port P              TCP port to listen on (0 = any free port, printed at start)
  --host ADDR           numeric address to bind (default 127.0.0.1)
  --token-file F        the auth token edges must present in HELLO: the first line of file F
                        (a trailing newline dropped)
  --token T             the token on the command line (visible to every user in `ps`)
  --labels DIR          recorded teacher: DIR/<frame %06d>.png label maps
  --teacher-cmd CMD     external teacher: `/bin/sh -c CMD`, one process per session, speaking
                        the pipe format of docs/teacher_pipe.md
  --teacher-timeout S   seconds the external teacher may take per frame (default 120)
  --maskrcnn FILE       the Mask R-CNN port as the teacher (Detectron2-named safetensors weights;
                        Detectron2 conventions, score threshold 0.5), loaded once
  --weights FILE        base student weights (.safetensors); default: deterministic init
  --modes LIST          modes offered, comma-separated: partial,full,naive (default all)
  --encoding E          preferred blob encoding fp32 | fp16 (default fp32)
  --threshold T         Algorithm 1/2 threshold (default 0.8)
  --max-updates U       distillation steps per key frame (default 8)
  --min-stride S        (default 8)      --max-stride S   (default 64)
  --max-message-bytes N largest message accepted (default 16 MiB)
  --max-sessions N      concurrent sessions (default 64)
  --max-pending N       connections that have not said HELLO yet (default 64)
  --max-per-address N   connections from one IP address (default 32, 0 = no limit)
  --hello-timeout S     a connection must say HELLO within S seconds (default 30)
  --max-frame-pixels N  largest key frame, width x height (default 2073600 = 1920x1080)
  --max-queued-bytes N  bytes queued for a peer that does not read before it is closed
                        (default 16 MiB)
  --idle-timeout S      close a session silent for S seconds; PING it after S/2 (default 300,
                        0 = never)
  --device D            cpu | cuda | cuda:N: where distillation runs (default cpu)
  --quiet               no per-session log lines
)";

int usage_error(const std::string& msg) {
  std::fprintf(stderr, "shadowtutor-server: %s\n\n%s", msg.c_str(), kUsage);
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  st::server::ServerOptions o;
  std::string labels, cmd, token_file, maskrcnn;
  bool have_token = false, have_port = false;
  double teacher_timeout = 120;
  try {
    for (int i = 1; i < argc; ++i) {
      std::string a = argv[i];
      if (a == "-h" || a == "--help") {
        std::fputs(kUsage, stdout);
        return 0;
      }
      if (a == "--quiet") {
        o.log = false;
        continue;
      }
      if (i + 1 >= argc) return usage_error("option " + a + " needs a value");
      std::string v = argv[++i];
      if (a == "--port") o.port = std::stoi(v), have_port = true;
      else if (a == "--host") o.host = v;
      else if (a == "--token") o.token = v, have_token = true;
      else if (a == "--token-file") token_file = v;
      else if (a == "--labels") labels = v;
      else if (a == "--teacher-cmd") cmd = v;
      else if (a == "--maskrcnn") maskrcnn = v;
      else if (a == "--teacher-timeout") teacher_timeout = std::stod(v);
      else if (a == "--weights") o.weights = v;
      else if (a == "--modes") {
        o.offer_partial = v.find("partial") != std::string::npos;
        o.offer_full = v.find("full") != std::string::npos;
        o.offer_naive = v.find("naive") != std::string::npos;
        if (!o.offer_partial && !o.offer_full && !o.offer_naive)
          return usage_error("--modes offers nothing");
      } else if (a == "--encoding") {
        if (v != "fp32" && v != "fp16") return usage_error("--encoding must be fp32 or fp16");
        o.encoding = v == "fp16" ? st::BlobEncoding::F16 : st::BlobEncoding::F32;
      } else if (a == "--threshold") o.distill.threshold = std::stod(v);
      else if (a == "--max-updates") o.distill.max_updates = std::stoi(v);
      else if (a == "--min-stride") o.distill.min_stride = std::stoi(v);
      else if (a == "--max-stride") o.distill.max_stride = std::stoi(v);
      else if (a == "--max-message-bytes") o.max_message_bytes = std::stoull(v);
      else if (a == "--max-sessions") o.max_sessions = std::stoull(v);
      else if (a == "--max-pending") o.max_pending = std::stoull(v);
      else if (a == "--max-per-address") o.max_per_address = std::stoull(v);
      else if (a == "--hello-timeout") o.hello_timeout_s = std::stod(v);
      else if (a == "--max-frame-pixels") o.max_frame_pixels = std::stoull(v);
      else if (a == "--max-queued-bytes") o.max_queued_bytes = std::stoull(v);
      else if (a == "--device") o.device = st::cli::parse_device(v);
      else if (a == "--idle-timeout") {
        o.idle_timeout_s = std::stod(v);
        if (!(o.idle_timeout_s >= 0)) return usage_error("--idle-timeout must be >= 0");
      }
      else return usage_error("unknown option " + a);
    }
  } catch (const std::exception&) {
    return usage_error("bad option value");
  }
  if (have_token)  // said before any other complaint about the command line
    std::fprintf(stderr,
                 "shadowtutor-server: warning: --token is visible to other users of this machine "
                 "(ps, /proc); use --token-file\n");
  if (!have_port) return usage_error("--port is required");
  if (!token_file.empty()) {
    if (!st::cli::read_token_file(token_file, o.token))
      return usage_error("cannot read token file " + token_file);
    have_token = true;
  }
  if (!have_token) return usage_error("--token-file or --token is required");
  if (int(!labels.empty()) + int(!cmd.empty()) + int(!maskrcnn.empty()) != 1)
    return usage_error("give exactly one of --labels, --teacher-cmd and --maskrcnn");
  if (!maskrcnn.empty()) {
    std::shared_ptr<st::teachers::MaskRcnnTeacher::Shared> model;
    try {
      model = st::teachers::MaskRcnnTeacher::load(maskrcnn, o.device);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "shadowtutor-server: error: %s\n", e.what());
      return 1;
    }
    o.teacher = [model, maskrcnn] {
      return std::make_unique<st::teachers::MaskRcnnTeacher>(model, maskrcnn);
    };
  } else if (!labels.empty())
    o.teacher = [labels] { return std::make_unique<st::teachers::RecordedTeacher>(labels); };
  else
    o.teacher = [cmd, teacher_timeout] {
      return std::make_unique<st::teachers::CommandTeacher>(cmd, teacher_timeout);
    };

  // SIGINT / SIGTERM end the server: block them in every thread, wait for one here.
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  try {
    st::server::Server server(o);
    server.start();
    std::printf("shadowtutor-server listening on %s:%d\n", o.host.c_str(), server.port());
    std::fflush(stdout);
    int sig = 0;
    sigwait(&set, &sig);
    std::fprintf(stderr, "shadowtutor-server: signal %d, stopping\n", sig);
    server.stop();
    auto s = server.stats();
    std::fprintf(stderr,
                 "shadowtutor-server: %llu sessions, %llu key frames, %llu answers, %llu errors "
                 "sent, %llu teacher failures, %llu connections refused, %llu overflows, %llu B in, "
                 "%llu B out\n",
                 (unsigned long long)s.sessions_opened, (unsigned long long)s.key_frames,
                 (unsigned long long)s.updates, (unsigned long long)s.errors_sent,
                 (unsigned long long)s.teacher_failures, (unsigned long long)s.connections_refused,
                 (unsigned long long)s.overflows, (unsigned long long)s.bytes_in,
                 (unsigned long long)s.bytes_out);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "shadowtutor-server: error: %s\n", e.what());
    return 1;
  }
  return 0;
}
