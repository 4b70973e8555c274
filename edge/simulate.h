// `shadowtutor simulate`: client and server logic of ShadowTutor in one process, in lockstep,
// on a video with a recorded teacher (SPEC §4–§7). No network: bytes are counted as the
// protocol would send them.
#pragma once
#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "common/frame_encoding.h"
#include "common/mode.h"
#include "nn/blob.h"
#include "nn/distill.h"
#include "nn/update.h"

namespace st::edge {

struct SimOptions {
  std::filesystem::path video;            // directory of images or a video file
  std::filesystem::path labels;           // recorded teacher: <labels>/<%06d>.png
  std::filesystem::path maskrcnn;         // or the Mask R-CNN port live (Detectron2-named weights)
  // or a teacher command (docs/teacher_pipe.md), live. It may keep state from frame to frame, so
  // the server half's frames go to a second process, as they go to the server's own: the
  // reference process sees every evaluated raw frame and nothing else.
  std::string teacher_cmd;
  double teacher_timeout_s = 120;         // per frame, for teacher_cmd
  Device teacher_device = Device::cpu();  // where the Mask R-CNN runs
  // The teacher labels every key frame, and every eval_every-th frame for the per-frame mIoU
  // (1 = every frame; a live Mask R-CNN on a CPU takes seconds per frame).
  int64_t eval_every = 1;
  std::filesystem::path weights;          // student weights (.safetensors); empty = random init
  Mode mode = Mode::Partial;              // Partial, Full, Wild or Naive
  int delay = 1;                          // update applied after this many frames (1..MIN_STRIDE)
  int64_t max_frames = -1;                // -1 = all
  nn::DistillConfig distill;
  nn::PartialSplit split;                 // what partial distillation trains (default dec2..)
  BlobEncoding encoding = BlobEncoding::F32;  // F32 or F16: plain blobs (nn/blob.h)
  // Compact updates (nn/update.h) instead of plain blobs, when set: the server half keeps a
  // mirror of the edge half's weights and sends what the codec makes of the difference; the edge
  // half checks the mirror's hash after applying each update.
  std::optional<nn::UpdateCodec> update;
  // Key frames up: raw BGR, PNG or JPEG (quality 1..100). The server half trains on the frame it
  // decodes (io/frame_decoder.h, the server's decoder); a live teacher (Mask R-CNN) labels that
  // decoded frame too, while recorded labels (made on the raw frames) stay as they are. The edge
  // half runs on its raw frames, and the per-frame mIoU is always against the teacher's labels of
  // the raw frame.
  FrameEncoding key_encoding = FrameEncoding::RawBgr;
  int jpeg_quality = 90;
  // What shadowtutor-edge sends to a server with --key-frames auto (server/server.h): a JPEG
  // key_encoding becomes PNG when the student starts from random initialisation (no `weights`).
  bool key_encoding_auto = false;
  std::filesystem::path predictions_dir;  // optional: label PNGs
  std::filesystem::path overlays_dir;     // optional: overlay PNGs
  bool progress = true;                   // live progress line on stderr
};

struct SimResult {
  std::string mode;
  int delay = 0;
  int64_t frames = 0, key_frames = 0;
  std::vector<double> frame_miou;         // per evaluated frame, vs the teacher
  std::vector<int64_t> miou_frames;       // the frames frame_miou is of (every frame if eval_every 1)
  double mean_miou = 0;
  std::vector<int64_t> step_histogram;    // key frames by number of steps 0..MAX_UPDATES
  int64_t restores = 0;                   // key frames whose best copy Algorithm 1 restored
  std::string key_encoding;               // "raw", "png", "jpeg:90"
  std::string update;                     // "fp32" (plain), "int8:top10+zstd", ... (UpdateCodec)
  std::string split;                      // nn::split_name of the partial split
  int64_t trained_tensors = 0, trained_parameters = 0, parameters = 0;  // of the mode
  bool rewind_optimizer = true;           // ... with Adam's state (DistillConfig)
  int64_t bytes_up = 0, bytes_down = 0;   // totals
  int64_t naive_bytes_up = 0, naive_bytes_down = 0;
  double mean_student_ms = 0, mean_step_ms = 0, mean_teacher_ms = 0, wall_s = 0;
  std::string weights;                    // "pretrained: <path>" or "random init"
  std::string teacher;                    // which teacher ran: recorded labels or Mask R-CNN
  int64_t teacher_calls = 0;
  // Per key frame, in order: Algorithm 1's outcome, Algorithm 2's answer and the hash
  // (nn::weights_hash) of the server half's student after Algorithm 1 (tests replay these).
  struct KeyFrameRecord {
    int64_t frame = 0;
    int steps = 0;
    double acc_before = 0, acc = 0;
    int next_stride = 0;
    uint64_t weights_hash = 0;
  };
  std::vector<KeyFrameRecord> key_log;
};

SimResult simulate(const SimOptions& opt);
// The result as JSON text (pretty-printed).
std::string to_json(const SimResult& r);

// Bytes of the fixed header of every protocol message (the framing of docs/protocol.md).
constexpr int64_t kMessageHeaderBytes = 32;

}  // namespace st::edge
