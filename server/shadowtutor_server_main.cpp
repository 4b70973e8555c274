// shadowtutor-server: the ShadowTutor server (teacher + partial distillation over TCP).
#include <signal.h>

#include <algorithm>
#include <cstdio>
#include <ctime>
#include <fstream>
#include <string>

#include "cli/flags.h"
#include "server/server.h"

int main(int argc, char** argv) {
  st::server::ServerOptions o;
  std::string labels, cmd, token_file, maskrcnn;
  double teacher_timeout = 120;
  double drain_timeout = 30;
  bool labels_loop = false;
  st::cli::Flags flags(
      "shadowtutor-server",
      "usage: shadowtutor-server --port P (--token-file F | --token T)\n"
      "                          (--labels DIR | --teacher-cmd \"CMD ARGS\" | --maskrcnn FILE) "
      "[options]");
  flags.integer("--port", o.port, "P",
                "TCP port to listen on (0 = any free port, printed at start)")
      .at_least(0)
      .at_most(65535);
  flags.text("--host", o.host, "ADDR", "numeric address to bind (default 127.0.0.1)");
  flags.text("--token-file", token_file, "F",
             "the auth token edges must present in HELLO: the first line of file F\n"
             "(a trailing newline dropped)");
  flags.text("--token", o.token, "T",
             "the token on the command line (visible to every user in `ps`)");
  flags.text("--labels", labels, "DIR", "recorded teacher: DIR/<frame %06d>.png label maps");
  flags.boolean("--labels-loop", labels_loop,
                "frame indices past the recorded maps wrap around (edges with --loop,\n"
                "shadowtutor-loadgen)");
  flags.text("--teacher-cmd", cmd, "CMD",
             "external teacher: `/bin/sh -c CMD`, one process per session, speaking\n"
             "the pipe format of docs/teacher_pipe.md");
  flags.seconds("--teacher-timeout", teacher_timeout, "S",
                "seconds the external teacher may take per frame (default 120)");
  flags.text("--maskrcnn", maskrcnn, "FILE",
             "the Mask R-CNN port as the teacher (Detectron2-named safetensors weights;\n"
             "Detectron2 conventions, score threshold 0.5), loaded once");
  flags.path("--weights", o.weights, "FILE",
             "base student weights (.safetensors); default: deterministic init");
  flags.custom("--modes", "LIST",
               "modes offered, comma-separated: partial,full,naive (default all)",
               [&](const std::string& v) {
                 o.offer_partial = v.find("partial") != std::string::npos;
                 o.offer_full = v.find("full") != std::string::npos;
                 o.offer_naive = v.find("naive") != std::string::npos;
                 if (!o.offer_partial && !o.offer_full && !o.offer_naive)
                   throw st::Error("offers nothing: '" + v + "'");
               });
  flags.custom("--key-frames", "LIST",
               "key-frame encodings accepted, comma-separated: raw,png,jpeg (raw always);\n"
               "default auto: all with --weights, raw,png for a student from random\n"
               "initialisation (it would learn on lossy frames; docs/results.md, \"Bytes\")",
               [&](const std::string& v) {
                 if (v == "auto") {
                   o.accept_frames.reset();
                   return;
                 }
                 uint8_t bits = st::protocol::kAcceptRawBgr;
                 size_t at = 0;
                 while (at <= v.size()) {
                   const size_t end = std::min(v.find(',', at), v.size());
                   const std::string e = v.substr(at, end - at);
                   if (e == "png") bits |= st::protocol::kAcceptPng;
                   else if (e == "jpeg") bits |= st::protocol::kAcceptJpeg;
                   else if (e != "raw")
                     throw st::Error("raw, png, jpeg (comma-separated) or auto, not '" + e + "'");
                   at = end + 1;
                 }
                 o.accept_frames = bits;
               });
  flags.integer("--metrics-port", o.metrics_port, "P",
                "serve Prometheus metrics at http://HOST:P/metrics (0: any free port, logged;\n"
                "default: off)")
      .at_least(0);
  flags.seconds("--drain-timeout", drain_timeout, "S",
                "on SIGTERM, answer the key frames in work for at most S seconds before\n"
                "stopping (default 30; SIGINT stops at once)");
  flags.integer("--jobs", o.jobs, "N",
                "key frames worked on at once (teacher + distillation); the others wait,\n"
                "sessions served in turn (default: min(4, cores))")
      .at_least(1);
  auto on_off = [](bool& target) {  // an "on|off" flag's parser
    return [&target](const std::string& v) {
      if (v != "on" && v != "off") throw st::Error("on or off, not '" + v + "'");
      target = v == "on";
    };
  };
  flags.custom("--busy-stretch", "on|off",
               "when key frames wait for a job slot, lengthen the stride UPDATE announces\n"
               "by 1 + waiting / jobs (default on)",
               on_off(o.busy_stretch));
  flags.custom("--migration", "on|off",
               "an edge whose weights are not the base sends them (protocol version 3)\n"
               "and its session continues from them; off: it gets the base student (default on)",
               on_off(o.migrate));
  flags.integer("--threads-per-job", o.threads_per_job, "T",
                "OpenMP threads per key-frame job (default: cores / jobs)")
      .at_least(1);
  flags.custom("--encoding", "E", "preferred blob encoding fp32 | fp16 (default fp32)",
               [&](const std::string& v) { o.encoding = st::parse_blob_encoding(v); });
  st::cli::declare_distill_flags(flags, o.distill);
  st::cli::declare_split_flags(flags, o.split);
  o.update = st::nn::parse_update_codec(st::cli::kDefaultUpdateCodec);  // docs/results.md
  st::cli::declare_update_flag(flags, o.update);
  flags.integer("--max-message-bytes", o.max_message_bytes, "N",
                "largest message accepted (default 16 MiB)");
  flags.integer("--max-sessions", o.max_sessions, "N", "concurrent sessions (default 64)");
  flags.integer("--max-pending", o.max_pending, "N",
                "connections that have not said HELLO yet (default 64)");
  flags.integer("--max-per-address", o.max_per_address, "N",
                "connections from one IP address (default 32, 0 = no limit)");
  flags.seconds("--hello-timeout", o.hello_timeout_s, "S",
                "a connection must say HELLO within S seconds (default 30)");
  flags.integer("--max-frame-pixels", o.max_frame_pixels, "N",
                "largest key frame, width x height (default 2073600 = 1920x1080)");
  flags.integer("--max-queued-bytes", o.max_queued_bytes, "N",
                "bytes queued for a peer that does not read before it is closed\n"
                "(default 16 MiB)");
  flags.seconds("--idle-timeout", o.idle_timeout_s, "S",
                "close a session silent for S seconds; PING it after S/2 (default 300,\n"
                "0 = never)");
  flags.device("--device", o.device, "D",
               "cpu | cuda | cuda:N: where distillation runs (default cpu)");
  flags.action("--quiet", [&] { o.log = false; }, "no per-session log lines");
  std::string profile_path;
  st::cli::declare_profile_flag(flags, profile_path);
  if (auto exit_code = flags.parse(argc, argv)) return *exit_code;
  st::cli::warn_token_on_command_line(flags);  // before any other complaint
  if (!flags.given("--port")) return flags.usage_error("--port is required");
  if (auto exit_code = st::cli::resolve_token(flags, token_file, o.token)) return *exit_code;
  if (int(!labels.empty()) + int(!cmd.empty()) + int(!maskrcnn.empty()) != 1)
    return flags.usage_error("give exactly one of --labels, --teacher-cmd and --maskrcnn");
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
  } else if (!labels.empty()) {
    try {
      st::teachers::RecordedTeacher check(labels, labels_loop);  // nothing to loop over: now
    } catch (const std::exception& e) {
      std::fprintf(stderr, "shadowtutor-server: error: %s\n", e.what());
      return 1;
    }
    o.teacher = [labels, labels_loop] {
      return std::make_unique<st::teachers::RecordedTeacher>(labels, labels_loop);
    };
  } else
    o.teacher = [cmd, teacher_timeout] {
      return std::make_unique<st::teachers::CommandTeacher>(cmd, teacher_timeout);
    };

  // SIGTERM drains the server (docs: README), SIGINT or a second signal stops it at once: block
  // them in every thread, wait for them here.
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  try {
    st::cli::start_profile(profile_path);
    st::server::Server server(o);
    server.start();
    std::printf("shadowtutor-server listening on %s:%d\n", o.host.c_str(), server.port());
    if (server.metrics_port() >= 0)
      std::printf("shadowtutor-server metrics on http://%s:%d/metrics\n", o.host.c_str(),
                  server.metrics_port());
    std::fflush(stdout);
    int sig = 0;
    sigwait(&set, &sig);
    if (sig == SIGTERM) {
      std::fprintf(stderr, "shadowtutor-server: SIGTERM, draining (at most %.0f s; a second "
                           "signal stops at once)\n", drain_timeout);
      server.begin_drain();
      const timespec tick{0, 50 * 1000 * 1000};
      for (double waited = 0; !server.drained() && waited < drain_timeout; waited += 0.05)
        if (sigtimedwait(&set, nullptr, &tick) > 0) break;
      std::fprintf(stderr, "shadowtutor-server: %s, stopping\n",
                   server.drained() ? "drained" : "not drained in time");
    } else {
      std::fprintf(stderr, "shadowtutor-server: signal %d, stopping\n", sig);
    }
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
