// shadowtutor-loadgen: many edge sessions against one server (or a proxy), key frames on a
// schedule, no student; prints a summary table on stderr and the JSON report (edge/loadgen.h).
#include <cstdio>
#include <fstream>
#include <iostream>
#include <string>

#include "cli/flags.h"
#include "edge/loadgen.h"
#include "net/net.h"

int main(int argc, char** argv) {
  st::edge::LoadgenOptions o;
  std::string server, json_out, token_file;
  st::cli::Flags flags("shadowtutor-loadgen",
                       "usage: shadowtutor-loadgen --server HOST:PORT --token-file F [options]");
  flags.text("--server", server, "HOST:PORT", "the shadowtutor-server (or a proxy in front)");
  flags.text("--token-file", token_file, "F", "file holding the auth token");
  flags.text("--token", o.token, "T", "the auth token itself (visible in `ps`: prefer --token-file)");
  flags.integer("--sessions", o.sessions, "N", "concurrent sessions (default 4)").at_least(1);
  flags.custom("--mode", "M", "partial | full | naive                     (default partial)",
               [&](const std::string& v) {
                 o.mode = st::parse_mode(v, {st::Mode::Partial, st::Mode::Full, st::Mode::Naive});
               });
  flags.path("--weights", o.weights, "FILE",
             "the student HELLO names (safetensors; give the server's --weights so that no\n"
             "session sends its weights; default: the random initialisation, seed 0)");
  flags.path("--video", o.video, "PATH",
             "key frames carry this video's first frame (default: a synthetic one)");
  flags.custom("--size", "WxH", "synthetic frame size (default 768x576)", [&](const std::string& v) {
    const size_t x = v.find('x');
    if (x == std::string::npos) throw st::Error("WxH, not '" + v + "'");
    o.width = st::cli::Flags::parse_signed(v.substr(0, x));
    o.height = st::cli::Flags::parse_signed(v.substr(x + 1));
    if (o.width < 1 || o.height < 1) throw st::Error("a positive size, not '" + v + "'");
  });
  st::cli::declare_key_encoding_flag(flags, o.key_encoding, o.jpeg_quality);
  flags.number("--fps", o.fps, "F", "frame rate strides are counted in (default 30)").above(0);
  flags.seconds("--key-interval", o.key_interval_s, "S",
                "a key frame every S seconds per session instead of following the strides");
  flags.seconds("--duration", o.duration_s, "S", "send for S seconds (default 10)").above(0);
  flags.seconds("--answer-timeout", o.answer_timeout_s, "S",
                "then wait at most S seconds for answers due (default 60)");
  flags.text("--json", json_out, "OUT", "write the JSON report to OUT (default: stdout)");
  if (auto exit_code = flags.parse(argc, argv, 1)) return *exit_code;
  st::cli::warn_token_on_command_line(flags);
  if (server.empty()) return flags.usage_error("--server is required");
  try {
    auto [host, port] = st::net::parse_host_port(server);
    o.host = host;
    o.port = port;
  } catch (const std::exception& e) {
    return flags.usage_error(e.what());
  }
  if (auto exit_code = st::cli::resolve_token(flags, token_file, o.token)) return *exit_code;
  try {
    const st::edge::LoadgenResult r = st::edge::run_loadgen(o);
    const std::string json = st::edge::to_json(r);
    st::cli::write_report(json_out, json);
    std::fprintf(stderr,
                 "| sessions | welcomed | key frames | answers | answers/s | p50 ms | p95 ms | "
                 "p99 ms | max ms | mean stride | errors | MB up | MB down |\n"
                 "| %d | %d | %lld | %lld | %.2f | %.1f | %.1f | %.1f | %.1f | %.1f | %lld | "
                 "%.2f | %.2f |\n",
                 r.sessions, r.welcomed, (long long)r.key_frames, (long long)r.answers,
                 r.answers_per_s, r.p50_ms, r.p95_ms, r.p99_ms, r.max_ms, r.mean_stride,
                 (long long)r.errors, double(r.bytes_up) / 1e6, double(r.bytes_down) / 1e6);
    for (const std::string& e : r.error_texts) std::fprintf(stderr, "  %s\n", e.c_str());
    return r.errors == 0 ? 0 : 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "shadowtutor-loadgen: error: %s\n", e.what());
    return 1;
  }
}
