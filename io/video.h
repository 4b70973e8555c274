// Video in, predictions out: frame sources (a directory of images, or any video file through an
// ffmpeg subprocess), recorded teacher label maps, and writers for label maps and overlays.
#pragma once
#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "tensor/image.h"

namespace st::io {

struct Frame {
  int64_t index = 0;   // 0-based position in the source
  image::Image bgr;    // (height, width, 3) interleaved BGR
};

class FrameSource {
 public:
  virtual ~FrameSource() = default;
  // Fills `f` with the next frame; false at the end. Throws st::Error on a read error.
  virtual bool next(Frame& f) = 0;
  virtual int64_t width() const = 0;
  virtual int64_t height() const = 0;
  // Frame count when known up front (directory; container metadata), else -1.
  virtual int64_t frame_count() const = 0;
  virtual std::string describe() const = 0;
};

// A directory → its .png/.jpg/.jpeg/.bmp files sorted by name (all must share one size);
// a file → decoded by `ffmpeg` (rawvideo bgr24 through a pipe). Throws st::Error naming the
// path when it does not exist, holds no images, or ffmpeg is missing / cannot decode it.
std::unique_ptr<FrameSource> open_video(const std::filesystem::path& path);
// True when `ffmpeg` and `ffprobe` executables are on PATH.
bool ffmpeg_available();

// Recorded teacher output: <dir>/<index as %06d>.png, 8-bit grey, pixel = class index (0..8).
class LabelSource {
 public:
  explicit LabelSource(std::filesystem::path dir);
  bool has(int64_t index) const;
  // The label map of frame `index` (h*w values); throws naming the file when it is missing,
  // has another size, or holds a value > 8.
  std::vector<uint8_t> labels(int64_t index, int64_t h, int64_t w) const;
  const std::filesystem::path& dir() const { return dir_; }

 private:
  std::filesystem::path dir_;
};

// Writes a label map (values 0..8) as an 8-bit grey PNG.
void write_label_png(const std::filesystem::path& path, const std::vector<uint8_t>& labels,
                     int64_t h, int64_t w);
// Writes the frame with each non-background class blended in its colour (alpha in [0,1]), as
// PNG, or as JPEG (quality 85) when the path ends in .jpg / .jpeg.
void write_overlay_png(const std::filesystem::path& path, const image::Image& bgr,
                       const std::vector<uint8_t>& labels, double alpha = 0.5);

}  // namespace st::io
