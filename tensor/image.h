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

// Decodes a PNG/JPEG/BMP held in memory, converting to `channels`. The header is checked before
// any pixel is decoded: an image larger than max_width x max_height is refused (a small file can
// claim a huge size). Throws st::Error with `what` and stb's reason on failure.
Image decode(const uint8_t* data, size_t size, int channels, int64_t max_width,
             int64_t max_height, const char* what = "image");
// Encodes 1, 3 or 4 channel pixels as PNG / JPEG (quality 1..100) in memory. For a BGR frame,
// swap to RGB first (or use the _bgr variants).
std::vector<uint8_t> encode_png(const Image& img);
std::vector<uint8_t> encode_jpeg(const Image& img, int quality);
// Interleaved BGR <-> RGB (in place on a copy).
Image bgr_to_rgb(Image img);

}  // namespace st::image
