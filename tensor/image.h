// 8-bit images on disk: PNG/JPEG/BMP reading and PNG writing (Debian's stb_image).
#pragma once
#include <cstdint>
#include <filesystem>
#include <vector>

namespace st::image {

struct Image {
  int64_t height = 0, width = 0, channels = 0;
  std::vector<uint8_t> pixels;  // (height, width, channels), interleaved, row-major
};

// Reads an image, converting to `channels` (1 = grey, 3 = RGB). Throws st::Error naming the
// file and stb's reason on failure.
Image read(const std::filesystem::path& path, int channels);
// A colour image as interleaved BGR (the student's channel order).
Image read_bgr(const std::filesystem::path& path);
// Writes a PNG (1, 3 or 4 channels). Throws on failure.
void write_png(const std::filesystem::path& path, const Image& img);

}  // namespace st::image
