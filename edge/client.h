// shadowtutor-edge: the edge side of ShadowTutor over the network (SPEC §6, docs/protocol.md).
//
// Two threads: the calling thread reads frames and runs the student on every one of them
// (run_edge: an EdgeSession in client.cpp); a network thread runs a libuv loop that owns the TCP
// connection (NetClient, net_client.h: connect, HELLO/WELCOME, KEY_FRAME out, UPDATE/LABELS in,
// PING/PONG, reconnect with exponential backoff, optional token-bucket link-rate limit per
// direction). They talk through two queues: commands to the network thread, events back.
//
// The student's weights live in two buffers: updates are unpacked into the spare copy and the
// copies are swapped between two frames, never while a frame is being computed.
//
// When the edge waits (partial and full modes). SPEC §6 has the edge block for the update once
// MIN_STRIDE frames have run since its key frame. Here that wait is bounded: at the frame where
// the update is due (key + MIN_STRIDE) the edge waits at most EdgeOptions::max_wait_s (default:
// max_wait_frames = 3 frame times, the frame time being a running mean of the time per frame),
// once per key frame. If the update is still not there it segments that frame and the following
// ones with its current weights, marked "stale" (frame log, EdgeProgress, EdgeResult), and swaps
// the update in at the first frame boundary after it arrives, however late. A late update is
// never dropped: it carries the newest teacher knowledge, the server's copy of the student
// already holds it, and no newer key frame can overtake it (one key frame is unanswered at a
// time, docs/protocol.md §4; the edge sends none while it waits). The next key frame is then
// key + stride as usual, or the current frame if that is already past, so key frame indices
// keep increasing. update_timeout_s after the update became due the edge drops the connection
// and reconnects (a hung server). max_wait_s = infinity restores SPEC §6's blocking (the
// paper's behaviour: bandwidth experiments use it). Naive mode has no student updates to wait
// for: it blocks for each frame's labels, up to update_timeout_s.
// When the server is unreachable the edge keeps segmenting with its local student and
// resynchronises from the next WELCOME: a server of protocol version 3 that does not hold the
// edge's weights asks for them (session migration) and continues from them; an older one sends
// its own student instead. Compact updates (protocol version 2, nn/update.h) are
// deltas against what the server believes the edge holds, and name the hash of the result: one
// that does not match is not applied; the edge sends RESYNC and the server answers with the
// whole student (WEIGHTS), its updates meanwhile ignored.
//
// Driving a run: EdgeOptions::on_frame sees the running counters after every frame and may end
// the run there (wait for a WELCOME or an update instead of guessing how many frames that
// takes); EdgeOptions::stop ends it from anywhere (a signal handler); EdgeOptions::loop replays
// the video for as long as that takes.
#pragma once
#include <atomic>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "common/mode.h"
#include "nn/student.h"
#include "edge/net_client.h"
#include "protocol/protocol.h"
#include "tensor/dtype.h"

namespace st::edge {

// The frame loop's running counters, handed to EdgeOptions::on_frame after every frame.
struct EdgeProgress {
  int64_t frame = 0;             // index of the frame just processed
  int64_t frames = 0;            // frames processed so far, this one included
  int64_t key_frames = 0;        // key frames sent (naive: frames sent)
  int64_t updates = 0;           // UPDATEs applied
  int64_t labels = 0;            // LABELS received (naive)
  int64_t welcomes = 0;          // sessions begun (WELCOMEs received)
  int64_t disconnects = 0;       // sessions lost
  bool online = false;           // a session is up: WELCOME received and not lost since
  bool waiting = false;          // a key frame is sent and its answer is not here yet
  bool stale = false;            // this frame ran without an update that was due (see above)
  int64_t stale_frames = 0;      // such frames so far
};

// The live progress line on stderr (EdgeOptions::progress). To a terminal it is rewritten in
// place ('\r', no newline) at most every 0.2 s; to a file or a pipe (a demo's log) it is a plain
// line at most every 5 s, so that the log stays readable. The run's first frame always shows.
struct ProgressLine {
  std::string mode;
  int64_t frame = 0, stride = 0, key_frames = 0, stale_frames = 0;
  double fps = 0;
  int64_t bytes_up = 0, bytes_down = 0;
  bool online = false;
};
double progress_interval_s(bool terminal);
bool progress_due(bool terminal, double since_last_s, bool first_frame);
std::string format_progress(const ProgressLine& p, bool terminal);

struct EdgeOptions {
  ClientOptions net;
  std::string token;
  std::filesystem::path video;            // directory of frames or a video file
  std::filesystem::path weights;          // student weights; empty = Student(init_seed)
  uint64_t init_seed = 0;
  Device device = Device::cpu();          // where the student runs (cuda:N: the GPU)
  Mode mode = Mode::Partial;              // Partial, Full or Naive (Wild is simulate's only)
  int64_t max_frames = -1;                // -1 = all (with `loop`: no limit)
  // Replay the video from its start whenever it ends. Frame indices keep increasing (frame 0 of
  // the second pass of an N-frame clip is index N), as key frames must. The run ends at
  // max_frames, when on_frame returns false, or on `stop`. Note that recorded teacher labels
  // and reference_dir are looked up by that index: they cover the first pass only.
  bool loop = false;
  std::filesystem::path predictions_dir;  // optional label PNGs
  std::filesystem::path overlays_dir;     // optional overlay PNGs
  int64_t overlay_every = 1;              // write the overlay of every Nth frame only
  bool overlay_jpeg = false;              // overlays as %06d.jpg (JPEG) instead of PNG
  // Key frames on the wire: raw BGR, PNG or JPEG (used when WELCOME accepts it, else PNG when
  // accepted, else raw).
  protocol::FrameEncoding key_encoding = protocol::FrameEncoding::RawBgr;
  int jpeg_quality = 90;
  // Optional reference label maps (DIR/%06d.png, e.g. the teacher on every frame): each frame's
  // mIoU against it goes into the frame log and the summary.
  std::filesystem::path reference_dir;
  std::filesystem::path frame_log;        // optional JSON-lines log, one object per frame
  uint8_t accept_blobs = protocol::kAcceptF32 | protocol::kAcceptF16;
  // Partial mode: the edge trains nothing itself; it applies the split the server announces in
  // WELCOME (protocol version 2; version 1 means the paper's). When set, the edge requires this
  // split: a WELCOME with another one is answered ERROR(SplitMismatch), the connection dropped
  // (and retried after the backoff) while the edge goes on with the weights it holds.
  std::optional<nn::PartialSplit> require_split;
  std::string edge_name = "shadowtutor-edge";
  // No answer this long after the edge needed it (partial/full: from the frame key +
  // MIN_STRIDE on, whether blocked or running stale; naive: blocked on a frame's labels): drop
  // the connection and reconnect.
  double update_timeout_s = 60;
  // The longest the edge blocks on a due update before it carries on with its current weights
  // (partial/full; see the top of this file). >= 0: this many seconds (infinity: block until the
  // update or update_timeout_s, as SPEC §6). < 0 (the default): max_wait_frames frame times,
  // a frame time being the running mean (exponential, weight 1/8) of the wall time per frame
  // without the time blocked, the run's first frame (decoder start, backend warm-up) left out,
  // and at least frame_interval_s when frames are paced.
  double max_wait_s = -1;
  double max_wait_frames = 3;
  // > 0 (partial/full): reproducible runs. Every update is swapped in exactly this many frames
  // after its key frame (the paper's P-N; at most WELCOME's min_stride): one that comes earlier
  // waits until then, one that comes later is waited for there (no max_wait bound;
  // update_timeout_s still drops a hung server). The frame loop looks at the network only at the
  // frames where something is due (an update, or a key frame: then it also waits for a session
  // when none is up), and a key frame that a lost session left unanswered is sent again to the
  // next one. The frames, the key frames and the weights are then the same however fast the
  // server and the network are, and across a reconnect: comparisons between runs
  // (tests/haproxy_failover.sh). 0: updates as soon as they arrive, the network every frame.
  int64_t apply_after_frames = 0;
  double initial_wait_s = 0;     // at start, wait up to this long for the first WELCOME
  double frame_interval_s = 0;   // > 0: pace frames (a camera at 1/interval fps)
  bool progress = true;          // live progress line on stderr
  // Called after each frame on the calling thread with the counters so far (tests: stop a
  // server mid-run, run until the second WELCOME, ...). Return false to end the run after this
  // frame; true to go on.
  std::function<bool(const EdgeProgress&)> on_frame;
  // When set, *stop = true (from any thread, or from a signal handler: a lock-free atomic is
  // async-signal-safe) ends the run after the current frame, with the result of the frames
  // processed so far. It also cuts short the initial wait, a wait for an answer (the answer is
  // then left pending, not counted as a disconnect) and the frame pacing: these wait in slices
  // of at most 50 ms while a stop flag is set.
  const std::atomic<bool>* stop = nullptr;
};

struct EdgeResult {
  std::string mode;
  int64_t frames = 0, key_frames = 0;
  int64_t updates = 0, updates_with_weights = 0, steps_total = 0, labels = 0;
  int64_t welcomes = 0, full_weight_syncs = 0, disconnects = 0;
  // RESYNCs sent: an update's weights hash was not what the edge's weights became (each is
  // answered by WEIGHTS, counted in full_weight_syncs with the WELCOMEs that sent the student)
  int64_t resyncs = 0;
  // WEIGHTS sent: a server of protocol version 3 did not hold this edge's weights and asked for
  // them (session migration: the session continues from them)
  int64_t weights_uploads = 0;
  int64_t bytes_up = 0, bytes_down = 0;  // measured at the socket
  double wall_s = 0, fps = 0, blocked_s = 0;
  double max_blocked_s = 0;              // the longest single wait for an answer
  double max_wait_s = 0;                 // the largest wait bound in force (0: none; inf: JSON null)
  int64_t stale_frames = 0;              // frames run without an update that was due
  int64_t miou_frames = 0;               // frames compared with the reference
  double miou_mean = 0;                  // mean per-frame mIoU against the reference
  int64_t key_bytes = 0;                 // KEY_FRAME image bytes sent (after encoding)
  std::string key_encoding;              // how the last key frame went: raw, png, jpeg:Q
  int64_t final_stride = 0;
  std::string split;                     // partial: the split of the last WELCOME ("dec2", ...)
  uint64_t initial_weights_hash = 0, final_weights_hash = 0;
  std::vector<std::string> errors;       // why connections ended, ERRORs received
};

EdgeResult run_edge(const EdgeOptions& opt);
std::string to_json(const EdgeResult& r);

}  // namespace st::edge
