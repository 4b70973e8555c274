#include "teacher/teacher.h"

#include <cstdio>
#include <filesystem>
#include <mutex>

#include "teacher_port/maskrcnn.h"
#include "tensor/safetensors.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstring>
#include <climits>
#include <thread>

extern char** environ;

namespace st::teachers {

RecordedTeacher::RecordedTeacher(std::filesystem::path dir, bool loop) : labels_(std::move(dir)) {
  if (!loop) return;
  char name[32];
  for (;; ++cycle_) {
    std::snprintf(name, sizeof name, "%06lld.png", (long long)cycle_);
    if (!std::filesystem::exists(labels_.dir() / name)) break;
  }
  ST_CHECK(cycle_ > 0, "recorded teacher: no label map ", (labels_.dir() / "000000.png").string(),
           " to loop over");
}

TeacherOutput RecordedTeacher::run(uint64_t frame_index, const uint8_t*, int64_t h, int64_t w) {
  TeacherOutput out;
  out.height = h;
  out.width = w;
  if (cycle_ > 0) frame_index %= uint64_t(cycle_);
  out.labels = labels_.labels(int64_t(frame_index), h, w);
  return out;
}

struct MaskRcnnTeacher::Shared {
  std::unique_ptr<teacher::MaskRcnn> model;
  std::mutex mu;  // one frame at a time (the model is large; sessions share it)
};

std::shared_ptr<MaskRcnnTeacher::Shared> MaskRcnnTeacher::load(
    const std::filesystem::path& weights, Device device, const teacher::MaskRcnnOptions* options) {
  ST_CHECK(std::filesystem::exists(weights), "Mask R-CNN teacher: weights file ", weights.string(),
           " does not exist (convert a Detectron2 .pkl or torchvision .pth with tools/)");
  auto file = safetensors::load(weights);
  auto m = std::make_shared<Shared>();
  const auto opt = options ? *options : teacher::MaskRcnnOptions::detectron2();
  m->model = std::make_unique<teacher::MaskRcnn>(file, opt);
  m->model->to(device);
  return m;
}

MaskRcnnTeacher::MaskRcnnTeacher(std::shared_ptr<Shared> model, std::string source)
    : model_(std::move(model)), source_(std::move(source)) {
  ST_CHECK(model_ != nullptr, "Mask R-CNN teacher: no model");
}

TeacherOutput MaskRcnnTeacher::run(uint64_t, const uint8_t* bgr, int64_t h, int64_t w) {
  std::lock_guard<std::mutex> lock(model_->mu);
  auto r = model_->model->run(bgr, h, w);
  TeacherOutput out;
  out.height = h;
  out.width = w;
  out.labels = std::move(r.label_map);
  const auto b = r.detections.boxes.to_vector<float>();
  std::vector<nn::Box> boxes;
  for (size_t i = 0; i + 3 < b.size(); i += 4) boxes.push_back({b[i], b[i + 1], b[i + 2], b[i + 3]});
  out.boxes = std::move(boxes);
  return out;
}

CommandTeacher::CommandTeacher(std::string command, double timeout_s)
    : command_(std::move(command)), timeout_s_(timeout_s) {
  ST_CHECK(!command_.empty(), "teacher command is empty");
}

CommandTeacher::~CommandTeacher() { stop(); }

void CommandTeacher::start() {
  int in_pipe[2], out_pipe[2];
  ST_CHECK(::pipe2(in_pipe, O_CLOEXEC) == 0, "teacher: pipe: ", std::strerror(errno));
  if (::pipe2(out_pipe, O_CLOEXEC) != 0) {
    int e = errno;
    ::close(in_pipe[0]);
    ::close(in_pipe[1]);
    ST_CHECK(false, "teacher: pipe: ", std::strerror(e));
  }
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  // dup2 clears FD_CLOEXEC on the new descriptor; every other pipe end closes on exec.
  posix_spawn_file_actions_adddup2(&fa, in_pipe[0], 0);
  posix_spawn_file_actions_adddup2(&fa, out_pipe[1], 1);
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  // The server ignores SIGPIPE; the child should get default signal handling back.
  sigset_t def;
  sigemptyset(&def);
  sigaddset(&def, SIGPIPE);
  posix_spawnattr_setsigdefault(&attr, &def);
  // Its own process group, so that stopping it also stops whatever it started (a shell's
  // children): kill(-pid, ...).
  posix_spawnattr_setpgroup(&attr, 0);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETPGROUP);
  std::string cmd = command_;
  char sh[] = "/bin/sh", dash_c[] = "-c";
  char* argv[] = {sh, dash_c, cmd.data(), nullptr};
  pid_t pid = -1;
  int rc = ::posix_spawn(&pid, "/bin/sh", &fa, &attr, argv, environ);
  posix_spawn_file_actions_destroy(&fa);
  posix_spawnattr_destroy(&attr);
  ::close(in_pipe[0]);
  ::close(out_pipe[1]);
  if (rc != 0) {
    ::close(in_pipe[1]);
    ::close(out_pipe[0]);
    ST_CHECK(false, "teacher command '", command_, "': cannot start: ", std::strerror(rc));
  }
  pid_ = pid;
  pgid_ = pid;
  in_fd_ = in_pipe[1];
  out_fd_ = out_pipe[0];
}

void CommandTeacher::stop() {
  if (in_fd_ >= 0) ::close(in_fd_);
  if (out_fd_ >= 0) ::close(out_fd_);
  in_fd_ = out_fd_ = -1;
  if (pid_ > 0) {
    int status;
    if (::waitpid(pid_, &status, WNOHANG) == 0) {
      ::kill(-pid_, SIGTERM);
      // Give it 200 ms to leave, then kill it.
      bool gone = false;
      for (int i = 0; i < 20 && !gone; ++i) {
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
        gone = ::waitpid(pid_, &status, WNOHANG) != 0;
      }
      if (!gone) {
        ::kill(-pid_, SIGKILL);
        ::waitpid(pid_, &status, 0);
      }
    }
    pid_ = -1;
  }
  if (pgid_ > 0) {
    ::kill(-pgid_, SIGKILL);  // anything of the group still left (e.g. a shell's children)
    pgid_ = -1;
  }
}

std::string CommandTeacher::exit_status() {
  if (pid_ <= 0) return "not running";
  int status = 0;
  pid_t r = -1;
  // The process may be closing down right now: wait up to 100 ms for its status.
  for (int i = 0; i < 10; ++i) {
    r = ::waitpid(pid_, &status, WNOHANG);
    if (r != 0) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  if (r == pid_) {
    pid_ = -1;
    if (WIFEXITED(status)) return "exited with status " + std::to_string(WEXITSTATUS(status));
    if (WIFSIGNALED(status))
      return "was killed by signal " + std::to_string(WTERMSIG(status)) + " (" +
             strsignal(WTERMSIG(status)) + ")";
    return "ended";
  }
  return "is still running";
}

void CommandTeacher::fail(const std::string& what) {
  std::string msg = "teacher command '" + command_ + "': " + what;
  broken_ = true;
  broken_reason_ = msg;
  stop();
  throw Error(msg);
}

void CommandTeacher::write_all(const uint8_t* p, size_t n) {
  auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_s_);
  while (n > 0) {
    auto left = std::chrono::duration<double, std::milli>(deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0)
      fail("did not read its frame within " + std::to_string(timeout_s_) + " s");
    pollfd pfd{in_fd_, POLLOUT, 0};
    int r = ::poll(&pfd, 1, int(std::min(left.count(), 1e9)) + 1);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) fail(std::string("poll failed: ") + std::strerror(errno));
    if (r == 0) continue;
    // A blocking pipe may still block for a large write: write at most PIPE_BUF-sized pieces
    // beyond what poll promised (POLLOUT guarantees room for PIPE_BUF bytes).
    ssize_t k = ::write(in_fd_, p, std::min<size_t>(n, PIPE_BUF));
    if (k > 0) {
      p += k;
      n -= size_t(k);
      continue;
    }
    if (k < 0 && (errno == EINTR || errno == EAGAIN)) continue;
    if (k < 0 && errno == EPIPE) fail("closed its stdin (the process " + exit_status() + ")");
    fail(std::string("write to stdin failed: ") + std::strerror(errno));
  }
}

void CommandTeacher::read_all(uint8_t* p, size_t n, const char* field) {
  auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_s_);
  size_t got = 0;
  while (got < n) {
    auto left = std::chrono::duration<double, std::milli>(deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0)
      fail("no answer within " + std::to_string(timeout_s_) + " s (waiting for " + field + ")");
    pollfd pfd{out_fd_, POLLIN, 0};
    int r = ::poll(&pfd, 1, int(std::min(left.count(), 1e9)) + 1);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) fail(std::string("poll failed: ") + std::strerror(errno));
    if (r == 0) continue;
    ssize_t k = ::read(out_fd_, p + got, n - got);
    if (k < 0 && (errno == EINTR || errno == EAGAIN)) continue;
    if (k < 0) fail(std::string("read from stdout failed: ") + std::strerror(errno));
    if (k == 0)
      fail("the process " + exit_status() + " before answering (stdout ended inside " + field +
           ", " + std::to_string(got) + " of " + std::to_string(n) + " bytes)");
    got += size_t(k);
  }
}

namespace {
template <class T>
void put(std::vector<uint8_t>& b, T v) {
  uint8_t tmp[sizeof(T)];
  std::memcpy(tmp, &v, sizeof(T));
  b.insert(b.end(), tmp, tmp + sizeof(T));
}
template <class T>
T get(const uint8_t* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}
}  // namespace

TeacherOutput CommandTeacher::run(uint64_t frame_index, const uint8_t* bgr, int64_t h, int64_t w) {
  if (broken_) throw Error(broken_reason_ + " (the teacher is not restarted within a session)");
  if (pid_ < 0) start();
  std::vector<uint8_t> head;
  put<uint32_t>(head, kTeacherRequestMagic);
  put<uint64_t>(head, frame_index);
  put<uint32_t>(head, uint32_t(h));
  put<uint32_t>(head, uint32_t(w));
  write_all(head.data(), head.size());
  write_all(bgr, size_t(h * w * 3));

  uint8_t rh[12];
  read_all(rh, sizeof rh, "the response header");
  uint32_t magic = get<uint32_t>(rh);
  if (magic != kTeacherResponseMagic) {
    char buf[96];
    std::snprintf(buf, sizeof buf, "wrote garbage: response magic 0x%08x, expected 0x%08x ('STTA')",
                  magic, kTeacherResponseMagic);
    fail(buf);
  }
  TeacherOutput out;
  out.height = get<uint32_t>(rh + 4);
  out.width = get<uint32_t>(rh + 8);
  if (out.height != h || out.width != w)
    fail("answered frame " + std::to_string(frame_index) + " with a " + std::to_string(out.width) +
         "x" + std::to_string(out.height) + " label map, expected " + std::to_string(w) + "x" +
         std::to_string(h));
  out.labels.resize(size_t(h * w));
  read_all(out.labels.data(), out.labels.size(), "the label map");
  for (size_t i = 0; i < out.labels.size(); ++i)
    if (out.labels[i] > 8)
      fail("label map of frame " + std::to_string(frame_index) + " holds value " +
           std::to_string(out.labels[i]) + " at pixel " + std::to_string(i) + " (classes are 0..8)");
  uint8_t cnt[4];
  read_all(cnt, 4, "the box count");
  uint32_t n = get<uint32_t>(cnt);
  if (n != kTeacherNoBoxes) {
    if (n > kTeacherMaxBoxes)
      fail("box count " + std::to_string(n) + " exceeds " + std::to_string(kTeacherMaxBoxes));
    std::vector<uint8_t> raw(size_t(n) * 16);
    if (n) read_all(raw.data(), raw.size(), "the boxes");
    std::vector<nn::Box> boxes(n);
    for (uint32_t i = 0; i < n; ++i) {
      float v[4];
      std::memcpy(v, raw.data() + size_t(i) * 16, 16);
      for (float f : v)
        if (!std::isfinite(f)) fail("box " + std::to_string(i) + " has a non-finite coordinate");
      boxes[i] = nn::Box{v[0], v[1], v[2], v[3]};
    }
    out.boxes = std::move(boxes);
  }
  return out;
}

}  // namespace st::teachers
