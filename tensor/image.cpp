// Image file I/O through stb_image / stb_image_write (implementations in Debian's libstb).
#include "tensor/image.h"

#include <stb/stb_image.h>
#include <stb/stb_image_write.h>

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

}  // namespace st::image
