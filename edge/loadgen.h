// shadowtutor-loadgen: many edge sessions from one libuv loop, sending key frames on a schedule
// without running the student, to measure a server (or a HAProxy in front of several): per key
// frame the time from its last byte handed to the socket to its answer (UPDATE or LABELS), and
// the answers per second, errors and bytes.
//
//   LoadgenOptions o; o.port = 7070; o.token = "secret"; o.sessions = 8; o.duration_s = 30;
//   LoadgenResult r = run_loadgen(o);  // r.p99_ms, r.answers_per_s, ...
//
// Schedule: each session sends its next key frame `stride` frame times (1 / fps) after the
// previous one was sent, with the stride the last UPDATE announced (Algorithm 2, stretched by a
// busy server), or every key_interval_s seconds when that is set; never while its previous key
// frame is unanswered (the protocol allows one outstanding), so a slow server slows the sessions.
// Blobs are not applied: a session's weights stay the ones it announced (and sent, when asked). Frame indices only grow
// (the protocol wants that): a server with recorded labels needs --labels-loop for long runs.
#pragma once
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "common/frame_encoding.h"
#include "common/mode.h"

namespace st::edge {

struct LoadgenOptions {
  std::string host = "127.0.0.1";
  int port = 0;
  std::string token;
  int sessions = 4;
  Mode mode = Mode::Partial;
  // Key frames: the first frame of `video` (a file or a folder of frames), or, when empty, a
  // synthetic width x height frame; raw or JPEG/PNG as the server accepts (else raw).
  std::filesystem::path video;
  int64_t width = 768, height = 576;
  FrameEncoding key_encoding = FrameEncoding::RawBgr;
  int jpeg_quality = 90;
  double fps = 30;              // frame rate the strides are counted in
  double key_interval_s = 0;    // > 0: a key frame this often instead of following strides
  double duration_s = 10;       // sending stops then; answers still due are awaited
  double answer_timeout_s = 60; // after duration_s, the longest wait for answers due
  // The student whose hashes HELLO names: `weights` (safetensors) when set, else Student(init_seed).
  // A server whose base it is not asks for it (session migration, protocol version 3): every
  // session then sends it (WEIGHTS, ~1.9 MB fp32) before its first key frame.
  std::filesystem::path weights;
  uint64_t init_seed = 0;
  std::string name = "loadgen";
};

struct LoadgenResult {
  int sessions = 0, welcomed = 0;
  int64_t key_frames = 0, answers = 0, errors = 0;
  int64_t bytes_up = 0, bytes_down = 0;
  double wall_s = 0;             // from the start to the last answer or close
  double answers_per_s = 0;      // answers / duration_s
  std::vector<double> latency_ms;  // per answer, in arrival order
  double p50_ms = 0, p95_ms = 0, p99_ms = 0, max_ms = 0, mean_stride = 0;
  std::vector<int64_t> answers_per_session;
  std::vector<std::string> error_texts;  // ERRORs received and connection failures (first 32)
};

LoadgenResult run_loadgen(const LoadgenOptions& opt);
std::string to_json(const LoadgenResult& r);
// The q-quantile (0..1) of `v` by the nearest-rank method; 0 for an empty vector.
double quantile(std::vector<double> v, double q);

}  // namespace st::edge
