// Decoding of untrusted key frames (PNG / JPEG from a KEY_FRAME message) into the student's BGR.
//
// Any logged-in edge can send these bytes, so they go to decoders that are fuzzed continuously
// upstream (OSS-Fuzz): libjpeg-turbo's TurboJPEG API for JPEG and libspng for PNG; stb_image
// (tensor/image.h) stays for writing images and for reading trusted local files. The image's
// size is read from its header first and must equal the size HELLO announced, which the server
// has already held to its pixel budget, before any pixel buffer exists; the one buffer
// allocated is the output. See docs/protocol.md, "Which decoder handles what".
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

#include "common/frame_encoding.h"

namespace st::io {

// Decodes a PNG or JPEG key frame of exactly width x height pixels into interleaved BGR,
// (height, width, 3) row-major. Throws st::Error starting "key frame: " when the bytes are not a
// well-formed image of that size (header size differs, truncated, corrupt, a JPEG process or
// colour space we do not take), or when `enc` is RawBgr (nothing to decode).
std::vector<uint8_t> decode_key_frame_bgr(const uint8_t* data, size_t size,
                                          FrameEncoding enc, int64_t width,
                                          int64_t height);

// The size an image's header claims (PNG: IHDR; JPEG: the frame header), read without decoding;
// false when the header is not there. For tools and tests: decode_key_frame_bgr checks it itself.
bool key_frame_header_size(const uint8_t* data, size_t size, FrameEncoding enc,
                           int64_t* width, int64_t* height);

// What the PNG decoder may allocate besides the output buffer, for an image `width` pixels wide:
// libspng's row buffers (a few scanlines of up to 8 bytes a pixel), zlib's state and window, and
// the ancillary chunks it keeps (capped by spng_set_chunk_limits). An allocation past it fails
// the decode.
size_t png_decoder_memory_limit(int64_t width);

// The most bytes libspng held at once during the calling thread's last PNG decode (tests).
size_t png_decoder_peak_bytes();

}  // namespace st::io
