#include "io/frame_encoder.h"

#include "tensor/tensor.h"  // ST_CHECK

namespace st::io {

std::vector<uint8_t> encode_key_frame(const image::Image& bgr, FrameEncoding enc,
                                      int jpeg_quality) {
  ST_CHECK(bgr.channels == 3 && int64_t(bgr.pixels.size()) == bgr.height * bgr.width * 3,
           "key frame: expected interleaved BGR pixels");
  switch (enc) {
    case FrameEncoding::RawBgr: return bgr.pixels;
    case FrameEncoding::Png: return image::encode_png(image::bgr_to_rgb(bgr));
    case FrameEncoding::Jpeg:
      ST_CHECK(jpeg_quality >= 1 && jpeg_quality <= 100, "key frame: JPEG quality ",
               jpeg_quality, " is not within 1..100");
      return image::encode_jpeg(image::bgr_to_rgb(bgr), jpeg_quality);
  }
  throw Error("key frame: unknown encoding " + std::to_string(int(enc)));
}

}  // namespace st::io
