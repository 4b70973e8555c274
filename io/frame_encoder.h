// Key frames on their way up: a BGR frame as the bytes of a KEY_FRAME (raw, PNG or JPEG), as the
// edge sends them and `shadowtutor simulate` counts them. Encoding uses stb_image_write
// (tensor/image.h): the edge links no decoder, and what it encodes is its own frame.
#pragma once
#include <cstdint>
#include <vector>

#include "common/frame_encoding.h"
#include "tensor/image.h"

namespace st::io {

// The KEY_FRAME data of `bgr` (interleaved BGR): the pixels themselves (RawBgr), a PNG, or a JPEG
// of quality 1..100 (the image stored as RGB, as decoders expect).
std::vector<uint8_t> encode_key_frame(const image::Image& bgr, FrameEncoding enc,
                                      int jpeg_quality);

}  // namespace st::io
