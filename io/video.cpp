// Video in, predictions out (see video.h).
//
// Frame sources:
//  - DirectorySource: the .png/.jpg/.jpeg/.bmp files of a directory, sorted by file name. Every
//    image's size is checked from its header when the source opens, so a stray image of another
//    size is reported (by name) before any frame is processed.
//  - FfmpegSource: any file ffmpeg can decode. `ffprobe` reports the size (and the frame count
//    when the container stores it); `ffmpeg` then decodes the first video stream to raw bgr24
//    on its stdout, which is read through a pipe, exactly width*height*3 bytes per frame.
//    Both tools are started with posix_spawn and an argv array (no shell, so any file name
//    works); their stderr is collected through a second pipe so that errors can quote it.
//    The destructor kills a decoder that is still running and reaps it: no zombies, no hang.
//
// Label maps are 8-bit grey PNGs (value = class index 0..8); overlays are written as RGB PNGs.
#include "io/video.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stb/stb_image.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <array>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <utility>

#include "tensor/tensor.h"

extern char** environ;

namespace st::io {
namespace fs = std::filesystem;

namespace {

constexpr int kNumClasses = 9;   // 0..7 objects, 8 background
constexpr uint8_t kBackground = 8;

const char* const kFfmpegMissing =
    "ffmpeg not found: install Debian's ffmpeg (apt-get install ffmpeg)";

// ---------------------------------------------------------------------------------------------
// Small POSIX helpers
// ---------------------------------------------------------------------------------------------

// An owned file descriptor.
class Fd {
 public:
  Fd() = default;
  explicit Fd(int fd) : fd_(fd) {}
  Fd(Fd&& o) noexcept : fd_(std::exchange(o.fd_, -1)) {}
  Fd& operator=(Fd&& o) noexcept {
    if (this != &o) {
      reset();
      fd_ = std::exchange(o.fd_, -1);
    }
    return *this;
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  ~Fd() { reset(); }
  int get() const { return fd_; }
  bool valid() const { return fd_ >= 0; }
  void reset() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }

 private:
  int fd_ = -1;
};

// A pipe whose both ends are close-on-exec (the child gets its end through dup2).
struct Pipe {
  Fd read, write;
};
Pipe make_pipe() {
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0)
    throw Error(std::string("pipe2 failed: ") + std::strerror(errno));
  return Pipe{Fd(fds[0]), Fd(fds[1])};
}

// The full path of an executable found on PATH, or "" when there is none.
std::string find_on_path(const std::string& name) {
  const char* env = std::getenv("PATH");
  std::string path = env ? env : "/usr/local/bin:/usr/bin:/bin";
  size_t start = 0;
  while (start <= path.size()) {
    size_t end = path.find(':', start);
    if (end == std::string::npos) end = path.size();
    // An empty PATH entry means the current directory.
    const fs::path dir = end > start ? fs::path(path.substr(start, end - start)) : fs::path(".");
    const std::string candidate = (dir / name).string();
    struct stat sb {};
    if (::stat(candidate.c_str(), &sb) == 0 && S_ISREG(sb.st_mode) &&
        ::access(candidate.c_str(), X_OK) == 0)
      return candidate;
    start = end + 1;
  }
  return "";
}

std::string trim(std::string s) {
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.pop_back();
  size_t i = 0;
  while (i < s.size() && std::isspace(static_cast<unsigned char>(s[i]))) ++i;
  return s.substr(i);
}

// Human-readable wait status.
std::string describe_status(int status) {
  if (WIFEXITED(status)) return "exit code " + std::to_string(WEXITSTATUS(status));
  if (WIFSIGNALED(status)) return "killed by signal " + std::to_string(WTERMSIG(status));
  return "status " + std::to_string(status);
}

// Waits for `pid` (retrying on EINTR) and returns its wait status.
int reap(pid_t pid) {
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0) {
    if (errno != EINTR) return -1;
  }
  return status;
}

// A child process started from an argv array, stdin = /dev/null, stdout and stderr on pipes.
struct Child {
  pid_t pid = -1;
  Fd out, err;
};

Child spawn(const std::string& exe, const std::vector<std::string>& args) {
  Pipe out = make_pipe(), err = make_pipe();
  std::vector<char*> argv;
  for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);

  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_adddup2(&fa, out.write.get(), 1);
  posix_spawn_file_actions_adddup2(&fa, err.write.get(), 2);
  // The child must not inherit a parent that ignores SIGPIPE (it should die on a closed pipe).
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  sigset_t defaults;
  sigemptyset(&defaults);
  sigaddset(&defaults, SIGPIPE);
  posix_spawnattr_setsigdefault(&attr, &defaults);
  sigset_t none;
  sigemptyset(&none);
  posix_spawnattr_setsigmask(&attr, &none);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK);

  pid_t pid = -1;
  int rc = ::posix_spawn(&pid, exe.c_str(), &fa, &attr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  posix_spawnattr_destroy(&attr);
  if (rc == ENOENT) throw Error(kFfmpegMissing);
  if (rc != 0) throw Error("cannot start " + exe + ": " + std::strerror(rc));
  // Our copies of the write ends close on return, so EOF arrives when the child exits.
  return Child{pid, std::move(out.read), std::move(err.read)};
}

// Runs a program to completion; returns its wait status and fills stdout / stderr.
int run_capture(const std::string& exe, const std::vector<std::string>& args, std::string& out,
                std::string& err) {
  Child c = spawn(exe, args);
  std::array<pollfd, 2> pfd{pollfd{c.out.get(), POLLIN, 0}, pollfd{c.err.get(), POLLIN, 0}};
  std::string* sink[2] = {&out, &err};
  int open_fds = 2;
  char buf[4096];
  while (open_fds > 0) {
    if (::poll(pfd.data(), pfd.size(), -1) < 0) {
      if (errno == EINTR) continue;
      break;
    }
    for (int i = 0; i < 2; ++i) {
      if (pfd[i].fd < 0 || pfd[i].revents == 0) continue;
      ssize_t n = ::read(pfd[i].fd, buf, sizeof buf);
      if (n > 0) {
        sink[i]->append(buf, size_t(n));
      } else if (n == 0 || errno != EINTR) {
        pfd[i].fd = -1;  // EOF (or an error): stop polling it
        --open_fds;
      }
    }
  }
  return reap(c.pid);
}

bool has_image_extension(const fs::path& p) {
  std::string ext = p.extension().string();
  std::transform(ext.begin(), ext.end(), ext.begin(),
                 [](unsigned char ch) { return char(std::tolower(ch)); });
  return ext == ".png" || ext == ".jpg" || ext == ".jpeg" || ext == ".bmp";
}

// ---------------------------------------------------------------------------------------------
// A directory of images
// ---------------------------------------------------------------------------------------------

class DirectorySource final : public FrameSource {
 public:
  explicit DirectorySource(fs::path dir) : dir_(std::move(dir)) {
    std::error_code ec;
    for (fs::directory_iterator it(dir_, ec), end; !ec && it != end; it.increment(ec)) {
      if (it->is_regular_file(ec) && has_image_extension(it->path())) files_.push_back(it->path());
    }
    if (ec) throw Error("open_video: cannot list directory " + dir_.string() + ": " + ec.message());
    if (files_.empty())
      throw Error("open_video: directory " + dir_.string() +
                  " holds no images (.png .jpg .jpeg .bmp)");
    std::sort(files_.begin(), files_.end(), [](const fs::path& a, const fs::path& b) {
      return a.filename().string() < b.filename().string();
    });
    // Sizes from the headers only (cheap); the first file sets the size.
    for (size_t i = 0; i < files_.size(); ++i) {
      int w = 0, h = 0, n = 0;
      if (!stbi_info(files_[i].c_str(), &w, &h, &n)) {
        const char* why = stbi_failure_reason();
        throw Error("open_video: cannot read image " + files_[i].string() + ": " +
                    (why ? why : "unknown error"));
      }
      if (i == 0) {
        width_ = w;
        height_ = h;
      } else if (w != width_ || h != height_) {
        throw Error("open_video: image " + files_[i].string() + " is " + std::to_string(w) +
                    "x" + std::to_string(h) + " but " + files_[0].filename().string() +
                    " is " + std::to_string(width_) + "x" + std::to_string(height_) +
                    " (all images of a directory must have one size)");
      }
    }
  }

  bool next(Frame& f) override {
    if (pos_ >= files_.size()) return false;
    const fs::path& file = files_[pos_];
    image::Image img = image::read_bgr(file);
    // Re-checked here in case the file changed after the directory was opened.
    ST_CHECK(img.width == width_ && img.height == height_, "open_video: image ", file.string(),
             " is ", img.width, "x", img.height, ", expected ", width_, "x", height_);
    f.index = int64_t(pos_);
    f.bgr = std::move(img);
    ++pos_;
    return true;
  }
  int64_t width() const override { return width_; }
  int64_t height() const override { return height_; }
  int64_t frame_count() const override { return int64_t(files_.size()); }
  std::string describe() const override {
    return "directory " + dir_.string() + " (" + std::to_string(files_.size()) + " images, " +
           std::to_string(width_) + "x" + std::to_string(height_) + ")";
  }

 private:
  fs::path dir_;
  std::vector<fs::path> files_;
  size_t pos_ = 0;
  int64_t width_ = 0, height_ = 0;
};

// ---------------------------------------------------------------------------------------------
// Any video file, decoded by an ffmpeg subprocess
// ---------------------------------------------------------------------------------------------

class FfmpegSource final : public FrameSource {
 public:
  explicit FfmpegSource(fs::path file) : file_(std::move(file)) {
    std::string ffprobe = find_on_path("ffprobe"), ffmpeg = find_on_path("ffmpeg");
    if (ffprobe.empty() || ffmpeg.empty()) throw Error(kFfmpegMissing);
    // An absolute path: ffmpeg would take a relative "name:with:colons" for a protocol URL.
    const std::string input = fs::absolute(file_).string();

    probe(ffprobe, input);

    // -map 0:v:0: only the first video stream (rawvideo would interleave any other stream).
    // -vsync passthrough: every decoded frame exactly once (no duplicates for a constant rate),
    //   so frame i here is frame i of any other decoder.
    // -noautorotate: frames keep the coded size that ffprobe reported.
    child_ = spawn(ffmpeg, {"ffmpeg", "-nostdin", "-v", "error", "-noautorotate", "-i", input,
                            "-map", "0:v:0", "-vsync", "passthrough", "-f", "rawvideo",
                            "-pix_fmt", "bgr24", "-"});
    // Best effort: a 1 MiB pipe means fewer wake-ups per frame (Linux only; ignored elsewhere).
#ifdef F_SETPIPE_SZ
    (void)::fcntl(child_.out.get(), F_SETPIPE_SZ, 1 << 20);
#endif
  }

  ~FfmpegSource() override { stop(); }

  bool next(Frame& f) override {
    if (child_.pid < 0) return false;  // finished (or failed) earlier
    const size_t frame_bytes = size_t(width_) * size_t(height_) * 3;
    f.bgr.width = width_;
    f.bgr.height = height_;
    f.bgr.channels = 3;
    std::vector<uint8_t>& px = f.bgr.pixels;
    px.resize(frame_bytes);
    size_t got = 0;
    bool eof = false;
    std::array<pollfd, 2> pfd{pollfd{child_.out.get(), POLLIN, 0},
                              pollfd{child_.err.valid() ? child_.err.get() : -1, POLLIN, 0}};
    while (got < frame_bytes && !eof) {
      if (::poll(pfd.data(), pfd.size(), -1) < 0) {
        if (errno == EINTR) continue;
        fail("poll failed: " + std::string(std::strerror(errno)));
      }
      // stderr first: ffmpeg must never block on a full stderr pipe while we wait on stdout.
      if (pfd[1].fd >= 0 && pfd[1].revents != 0) drain_stderr(pfd[1]);
      if (pfd[0].revents != 0) {
        ssize_t n = ::read(child_.out.get(), px.data() + got, frame_bytes - got);
        if (n > 0) {
          got += size_t(n);
        } else if (n == 0) {
          eof = true;
        } else if (errno != EINTR) {
          fail("read from ffmpeg failed: " + std::string(std::strerror(errno)));
        }
      }
    }
    if (!eof) {
      f.index = next_index_++;
      return true;
    }
    // End of the stream: collect the rest of stderr, reap ffmpeg and judge how it ended.
    while (pfd[1].fd >= 0) drain_stderr(pfd[1]);
    int status = reap(child_.pid);
    child_.pid = -1;
    child_.out.reset();
    child_.err.reset();
    bool clean = WIFEXITED(status) && WEXITSTATUS(status) == 0;
    if (got > 0) {
      throw Error("open_video: truncated frame " + std::to_string(next_index_) + " in " +
                  file_.string() + " (" + std::to_string(got) + " of " +
                  std::to_string(frame_bytes) + " bytes; ffmpeg " + describe_status(status) +
                  ")" + stderr_suffix());
    }
    if (!clean) {
      throw Error("open_video: ffmpeg failed on " + file_.string() + " after " +
                  std::to_string(next_index_) + " frames (" + describe_status(status) + ")" +
                  stderr_suffix());
    }
    return false;
  }

  int64_t width() const override { return width_; }
  int64_t height() const override { return height_; }
  int64_t frame_count() const override { return frame_count_; }
  std::string describe() const override {
    std::string s = "video " + file_.string() + " via ffmpeg (" + std::to_string(width_) + "x" +
                    std::to_string(height_);
    if (frame_count_ >= 0) s += ", " + std::to_string(frame_count_) + " frames";
    return s + ")";
  }

 private:
  // Reads width, height and (when stored) the frame count of the first video stream.
  void probe(const std::string& ffprobe, const std::string& input) {
    std::string out, err;
    int status = run_capture(ffprobe,
                             {"ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries",
                              "stream=width,height,nb_frames", "-of",
                              "default=noprint_wrappers=1", input},
                             out, err);
    if (!(WIFEXITED(status) && WEXITSTATUS(status) == 0)) {
      std::string msg = trim(err);
      throw Error("open_video: cannot read video " + file_.string() + ": " +
                  (msg.empty() ? "ffprobe " + describe_status(status) : msg));
    }
    // Lines "key=value"; values may be "N/A".
    size_t start = 0;
    while (start < out.size()) {
      size_t end = out.find('\n', start);
      if (end == std::string::npos) end = out.size();
      std::string line = trim(out.substr(start, end - start));
      start = end + 1;
      size_t eq = line.find('=');
      if (eq == std::string::npos) continue;
      std::string key = line.substr(0, eq), value = line.substr(eq + 1);
      char* stop = nullptr;
      long long v = std::strtoll(value.c_str(), &stop, 10);
      bool numeric = !value.empty() && stop && *stop == '\0';
      if (!numeric) continue;
      if (key == "width") width_ = v;
      else if (key == "height") height_ = v;
      else if (key == "nb_frames" && v > 0) frame_count_ = v;
    }
    if (width_ <= 0 || height_ <= 0) {
      std::string msg = trim(err);
      throw Error("open_video: " + file_.string() + " has no video stream that ffprobe can size" +
                  (msg.empty() ? std::string() : ": " + msg));
    }
  }

  // Appends what ffmpeg wrote to stderr (keeps the last few KiB); closes it at EOF.
  void drain_stderr(pollfd& p) {
    char buf[4096];
    ssize_t n = ::read(p.fd, buf, sizeof buf);
    if (n > 0) {
      stderr_tail_.append(buf, size_t(n));
      constexpr size_t kKeep = 4096;
      if (stderr_tail_.size() > 2 * kKeep) stderr_tail_.erase(0, stderr_tail_.size() - kKeep);
    } else if (n == 0 || errno != EINTR) {
      p.fd = -1;
      child_.err.reset();
    }
  }

  std::string stderr_suffix() const {
    std::string msg = trim(stderr_tail_);
    return msg.empty() ? std::string() : ": " + msg;
  }

  [[noreturn]] void fail(const std::string& what) {
    stop();
    throw Error("open_video: " + file_.string() + ": " + what);
  }

  // Ends a decoder that is still running (the consumer stopped early) and reaps it.
  void stop() noexcept {
    child_.out.reset();
    child_.err.reset();
    if (child_.pid > 0) {
      ::kill(child_.pid, SIGKILL);
      reap(child_.pid);
      child_.pid = -1;
    }
  }

  fs::path file_;
  int64_t width_ = 0, height_ = 0, frame_count_ = -1;
  int64_t next_index_ = 0;
  Child child_;
  std::string stderr_tail_;
};

// Overlay colours, RGB, for classes 0..7 (8 = background is left untouched).
constexpr uint8_t kPalette[8][3] = {
    {230, 25, 55},    // 0 person: red
    {245, 130, 30},   // 1 bicycle: orange
    {0, 90, 230},     // 2 auto: blue
    {255, 225, 25},   // 3 bird: yellow
    {145, 30, 180},   // 4 dog: purple
    {140, 85, 40},    // 5 horse: brown
    {128, 128, 128},  // 6 elephant: grey
    {60, 200, 75},    // 7 giraffe: green
};

void check_labels(const std::vector<uint8_t>& labels, int64_t h, int64_t w, const char* what,
                  const fs::path& path) {
  ST_CHECK(h > 0 && w > 0, what, ": bad size ", h, "x", w, " for ", path.string());
  ST_CHECK(int64_t(labels.size()) == h * w, what, ": ", labels.size(), " labels for a ", h, "x",
           w, " image (", path.string(), ")");
  for (size_t i = 0; i < labels.size(); ++i) {
    ST_CHECK(labels[i] < kNumClasses, what, ": label ", int(labels[i]), " at pixel ", i,
             " is not a class index 0..8 (", path.string(), ")");
  }
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Public entry points
// ---------------------------------------------------------------------------------------------

std::unique_ptr<FrameSource> open_video(const fs::path& path) {
  std::error_code ec;
  fs::file_status st = fs::status(path, ec);
  if (!fs::exists(st)) {
    if (ec && ec != std::errc::no_such_file_or_directory)
      throw Error("open_video: cannot access " + path.string() + ": " + ec.message());
    throw Error("open_video: no such file or directory: " + path.string());
  }
  if (fs::is_directory(st)) return std::make_unique<DirectorySource>(path);
  if (!ffmpeg_available()) throw Error(kFfmpegMissing);
  return std::make_unique<FfmpegSource>(path);
}

bool ffmpeg_available() { return !find_on_path("ffmpeg").empty() && !find_on_path("ffprobe").empty(); }

LabelSource::LabelSource(fs::path dir) : dir_(std::move(dir)) {}

static fs::path label_file(const fs::path& dir, int64_t index) {
  char name[32];
  std::snprintf(name, sizeof name, "%06lld.png", static_cast<long long>(index));
  return dir / name;
}

bool LabelSource::has(int64_t index) const {
  if (index < 0) return false;
  std::error_code ec;
  return fs::is_regular_file(label_file(dir_, index), ec);
}

std::vector<uint8_t> LabelSource::labels(int64_t index, int64_t h, int64_t w) const {
  ST_CHECK(index >= 0, "LabelSource: negative frame index ", index);
  ST_CHECK(h > 0 && w > 0, "LabelSource: bad expected size ", h, "x", w);
  const fs::path file = label_file(dir_, index);
  ST_CHECK(has(index), "LabelSource: no label map ", file.string(), " for frame ", index);
  // stb would silently scale a 16-bit PNG down to 8 bits (class 1 → 0): refuse it instead.
  ST_CHECK(!stbi_is_16_bit(file.c_str()), "LabelSource: ", file.string(),
           " is a 16-bit image; label maps are 8-bit grey");
  image::Image img = image::read(file, 1);
  ST_CHECK(img.height == h && img.width == w, "LabelSource: ", file.string(), " is ", img.width,
           "x", img.height, ", expected ", w, "x", h);
  for (size_t i = 0; i < img.pixels.size(); ++i) {
    ST_CHECK(img.pixels[i] < kNumClasses, "LabelSource: ", file.string(), " holds value ",
             int(img.pixels[i]), " at pixel (", int64_t(i) / w, ", ", int64_t(i) % w,
             "); class indices are 0..8");
  }
  return std::move(img.pixels);
}

void write_label_png(const fs::path& path, const std::vector<uint8_t>& labels, int64_t h,
                     int64_t w) {
  check_labels(labels, h, w, "write_label_png", path);
  image::Image img;
  img.height = h;
  img.width = w;
  img.channels = 1;
  img.pixels = labels;
  image::write_png(path, img);
}

void write_overlay_png(const fs::path& path, const image::Image& bgr,
                       const std::vector<uint8_t>& labels, double alpha) {
  ST_CHECK(bgr.channels == 3, "write_overlay_png: the frame has ", bgr.channels,
           " channels, expected 3 (BGR)");
  ST_CHECK(int64_t(bgr.pixels.size()) == bgr.height * bgr.width * 3,
           "write_overlay_png: pixel buffer does not match ", bgr.height, "x", bgr.width, "x3");
  ST_CHECK(alpha >= 0.0 && alpha <= 1.0, "write_overlay_png: alpha ", alpha,
           " is outside [0, 1]");
  check_labels(labels, bgr.height, bgr.width, "write_overlay_png", path);

  image::Image out;
  out.height = bgr.height;
  out.width = bgr.width;
  out.channels = 3;
  out.pixels.resize(bgr.pixels.size());
  const size_t n = labels.size();
  for (size_t i = 0; i < n; ++i) {
    // BGR in, RGB out.
    const uint8_t rgb[3] = {bgr.pixels[3 * i + 2], bgr.pixels[3 * i + 1], bgr.pixels[3 * i]};
    uint8_t* o = &out.pixels[3 * i];
    const uint8_t cls = labels[i];
    if (cls == kBackground) {
      o[0] = rgb[0], o[1] = rgb[1], o[2] = rgb[2];
      continue;
    }
    for (int c = 0; c < 3; ++c) {
      double v = (1.0 - alpha) * rgb[c] + alpha * kPalette[cls][c];
      o[c] = uint8_t(std::clamp(std::lround(v), 0L, 255L));
    }
  }
  const auto ext = path.extension().string();
  if (ext == ".jpg" || ext == ".jpeg") {
    auto bytes = image::encode_jpeg(out, 85);
    std::ofstream f(path, std::ios::binary);
    f.write(reinterpret_cast<const char*>(bytes.data()), std::streamsize(bytes.size()));
    ST_CHECK(bool(f), "cannot write JPEG ", path.string());
  } else {
    image::write_png(path, out);
  }
}

}  // namespace st::io
