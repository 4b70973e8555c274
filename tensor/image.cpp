// Image file I/O through stb_image / stb_image_write (implementations in Debian's libstb).
#include "tensor/image.h"

#include <stb/stb_image.h>
#include <stb/stb_image_write.h>

#include <cstdint>
#include <cstring>
#include <memory>

#include "tensor/tensor.h"

namespace st::image {

Image read(const std::filesystem::path& path, int channels) {
  ST_CHECK(channels >= 1 && channels <= 4, "image::read: channels must be 1..4");
  int w = 0, h = 0, n = 0;
  std::unique_ptr<stbi_uc, void (*)(void*)> data(
      stbi_load(path.c_str(), &w, &h, &n, channels), stbi_image_free);
  if (!data) {
    const char* why = stbi_failure_reason();
    throw Error("cannot read image " + path.string() + ": " + (why ? why : "unknown error"));
  }
  Image img;
  img.height = h;
  img.width = w;
  img.channels = channels;
  img.pixels.assign(data.get(), data.get() + size_t(w) * size_t(h) * size_t(channels));
  return img;
}

Image read_bgr(const std::filesystem::path& path) {
  Image img = read(path, 3);
  for (size_t i = 0; i + 2 < img.pixels.size(); i += 3) std::swap(img.pixels[i], img.pixels[i + 2]);
  return img;
}

void write_png(const std::filesystem::path& path, const Image& img) {
  ST_CHECK(img.channels >= 1 && img.channels <= 4, "image::write_png: bad channel count ",
           img.channels);
  ST_CHECK(int64_t(img.pixels.size()) == img.height * img.width * img.channels,
           "image::write_png: pixel buffer size does not match ", img.height, "x", img.width, "x",
           img.channels);
  int ok = stbi_write_png(path.c_str(), int(img.width), int(img.height), int(img.channels),
                          img.pixels.data(), int(img.width * img.channels));
  ST_CHECK(ok != 0, "cannot write PNG ", path.string());
}

namespace {
void append_bytes(void* ctx, void* data, int size) {
  auto* out = static_cast<std::vector<uint8_t>*>(ctx);
  const auto* p = static_cast<const uint8_t*>(data);
  out->insert(out->end(), p, p + size);
}

void check_encodable(const Image& img, const char* what) {
  ST_CHECK(img.channels >= 1 && img.channels <= 4, what, ": bad channel count ", img.channels);
  ST_CHECK(img.height > 0 && img.width > 0 && img.height <= (1 << 20) && img.width <= (1 << 20),
           what, ": bad size ", img.width, "x", img.height);
  ST_CHECK(int64_t(img.pixels.size()) == img.height * img.width * img.channels, what,
           ": pixel buffer size does not match ", img.height, "x", img.width, "x", img.channels);
}
}  // namespace

Image decode(const uint8_t* data, size_t size, int channels, int64_t max_width,
             int64_t max_height, const char* what) {
  ST_CHECK(channels >= 1 && channels <= 4, "image::decode: channels must be 1..4");
  ST_CHECK(data != nullptr && size > 0, "cannot decode ", what, ": no bytes");
  ST_CHECK(size <= size_t(INT32_MAX), "cannot decode ", what, ": ", size, " bytes is too large");
  int w = 0, h = 0, n = 0;
  if (!stbi_info_from_memory(data, int(size), &w, &h, &n)) {
    const char* why = stbi_failure_reason();
    throw Error(std::string("cannot decode ") + what + ": " +
                (why ? why : "not a PNG, JPEG or BMP image"));
  }
  ST_CHECK(w > 0 && h > 0 && w <= max_width && h <= max_height, "cannot decode ", what,
           ": its header says ", w, "x", h, ", above the limit ", max_width, "x", max_height);
  int w2 = 0, h2 = 0;
  std::unique_ptr<stbi_uc, void (*)(void*)> px(
      stbi_load_from_memory(data, int(size), &w2, &h2, &n, channels), stbi_image_free);
  if (!px) {
    const char* why = stbi_failure_reason();
    throw Error(std::string("cannot decode ") + what + ": " + (why ? why : "unknown error"));
  }
  ST_CHECK(w2 == w && h2 == h, "cannot decode ", what, ": size changed while decoding");
  Image img;
  img.height = h;
  img.width = w;
  img.channels = channels;
  img.pixels.assign(px.get(), px.get() + size_t(w) * size_t(h) * size_t(channels));
  return img;
}

std::vector<uint8_t> encode_png(const Image& img) {
  check_encodable(img, "encode_png");
  std::vector<uint8_t> out;
  int ok = stbi_write_png_to_func(append_bytes, &out, int(img.width), int(img.height),
                                  int(img.channels), img.pixels.data(),
                                  int(img.width * img.channels));
  ST_CHECK(ok != 0 && !out.empty(), "encode_png: stb failed");
  return out;
}

std::vector<uint8_t> encode_jpeg(const Image& img, int quality) {
  check_encodable(img, "encode_jpeg");
  ST_CHECK(quality >= 1 && quality <= 100, "encode_jpeg: quality must be 1..100, got ", quality);
  std::vector<uint8_t> out;
  int ok = stbi_write_jpg_to_func(append_bytes, &out, int(img.width), int(img.height),
                                  int(img.channels), img.pixels.data(), quality);
  ST_CHECK(ok != 0 && !out.empty(), "encode_jpeg: stb failed");
  return out;
}

Image bgr_to_rgb(Image img) {
  ST_CHECK(img.channels == 3, "bgr_to_rgb: needs 3 channels, got ", img.channels);
  for (size_t i = 0; i + 2 < img.pixels.size(); i += 3) std::swap(img.pixels[i], img.pixels[i + 2]);
  return img;
}

}  // namespace st::image
