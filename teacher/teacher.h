// Teachers behind one interface (SPEC §3): given a key frame, produce the label map (values
// 0..8, 8 = background) and optionally the detection boxes for the loss-weight map.
//   RecordedTeacher  label maps recorded on disk, by frame index (io/video.h LabelSource)
//   MaskRcnnTeacher  the Mask R-CNN port (teacher_port/), one model shared by every session
//   CommandTeacher   an external process speaking the pipe format of docs/teacher_pipe.md
//
// Users: shadowtutor-server (server/server.h: one teacher per session, made by a TeacherFactory)
// and `shadowtutor simulate` (edge/simulate.h: one teacher, in the frame loop's thread).
//
// Threading: in the server one Teacher object belongs to one session and is only called from
// that session's worker job (never two calls at once); it is created and destroyed on the
// server's loop thread, so constructors and destructors must be cheap and must not block for
// long (the Mask R-CNN weights are loaded once, before the server starts, and its sessions'
// runs take turns).
#pragma once
#include <sys/types.h>

#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "io/video.h"
#include "nn/distill.h"

namespace st::teacher {
struct MaskRcnnOptions;
}

namespace st::teachers {

struct TeacherOutput {
  int64_t height = 0, width = 0;
  std::vector<uint8_t> labels;             // height*width class indices 0..8
  std::optional<std::vector<nn::Box>> boxes;  // none: boxes of the connected components
};

class Teacher {
 public:
  virtual ~Teacher() = default;
  // Labels for one key frame (interleaved BGR, h x w). Throws st::Error with a clear message
  // on any failure (missing label file, crashed or misbehaving teacher process, ...).
  virtual TeacherOutput run(uint64_t frame_index, const uint8_t* bgr, int64_t h, int64_t w) = 0;
  virtual std::string describe() const = 0;
};

// Makes the teacher of a new session.
using TeacherFactory = std::function<std::unique_ptr<Teacher>()>;

class RecordedTeacher : public Teacher {
 public:
  // loop: frame indices past the recorded maps wrap around (index modulo the number of maps
  // 000000.png, 000001.png, ... found in `dir`), for edges that replay their video (--loop) and
  // load tests (shadowtutor-loadgen).
  explicit RecordedTeacher(std::filesystem::path dir, bool loop = false);
  TeacherOutput run(uint64_t frame_index, const uint8_t* bgr, int64_t h, int64_t w) override;
  std::string describe() const override { return "recorded labels " + labels_.dir().string(); }

 private:
  io::LabelSource labels_;
  int64_t cycle_ = 0;  // loop: the number of consecutive maps from 000000.png; 0: no wrap
};

// The Mask R-CNN port (teacher_port/maskrcnn.h) with Detectron2 conventions, as ShadowTutor ran
// it: the 9-class label map and every score-thresholded detection box (all classes, SPEC §3).
// The model (~180 MB of weights) is loaded once and shared by every session; runs are serialised.
class MaskRcnnTeacher : public Teacher {
 public:
  struct Shared;  // the model and the lock that serialises its runs
  // Loads and validates the weights (Detectron2 names; tools/ converters); throws naming the file.
  // `options`: nullptr = teacher::MaskRcnnOptions::detectron2() (tests pass others).
  static std::shared_ptr<Shared> load(const std::filesystem::path& weights, Device device,
                                      const teacher::MaskRcnnOptions* options = nullptr);
  MaskRcnnTeacher(std::shared_ptr<Shared> model, std::string source);
  TeacherOutput run(uint64_t frame_index, const uint8_t* bgr, int64_t h, int64_t w) override;
  std::string describe() const override { return "Mask R-CNN " + source_; }

 private:
  std::shared_ptr<Shared> model_;
  std::string source_;
};

// Pipe protocol limits (docs/teacher_pipe.md).
inline constexpr uint32_t kTeacherRequestMagic = 0x51545453;   // "STTQ"
inline constexpr uint32_t kTeacherResponseMagic = 0x41545453;  // "STTA"
inline constexpr uint32_t kTeacherNoBoxes = 0xFFFFFFFFu;        // box count: "use components"
inline constexpr uint32_t kTeacherMaxBoxes = 65536;

// Runs `/bin/sh -c COMMAND` once per session (started lazily on the first key frame, with
// posix_spawn from the worker thread) and talks to it over its stdin/stdout. Any failure (exit,
// crash, garbage, wrong size, timeout) throws st::Error naming the command and what happened;
// the process is then killed and not reused.
class CommandTeacher : public Teacher {
 public:
  explicit CommandTeacher(std::string command, double timeout_s = 120.0);
  ~CommandTeacher() override;
  TeacherOutput run(uint64_t frame_index, const uint8_t* bgr, int64_t h, int64_t w) override;
  std::string describe() const override { return "command '" + command_ + "'"; }

 private:
  void start();
  void stop();  // closes the pipes, terminates and reaps the process
  [[noreturn]] void fail(const std::string& what);
  void write_all(const uint8_t* p, size_t n);
  void read_all(uint8_t* p, size_t n, const char* field);
  std::string exit_status();  // "exited with status N" / "killed by signal N" / "still running"

  std::string command_;
  double timeout_s_;
  pid_t pid_ = -1;
  pid_t pgid_ = -1;  // its process group (= the first pid), killed as a whole
  int in_fd_ = -1;   // the teacher's stdin (we write)
  int out_fd_ = -1;  // the teacher's stdout (we read)
  bool broken_ = false;
  std::string broken_reason_;
};

}  // namespace st::teachers
