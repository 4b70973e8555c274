// How a key frame's pixels travel: raw interleaved BGR, PNG or JPEG. One enum for the edge's
// encoder, the key-frame decoder (io/frame_decoder.h), simulate and the wire protocol
// (KEY_FRAME.encoding, a u8: RawBgr 0, Png 1, Jpeg 2; docs/protocol.md).
#pragma once
#include <cstdint>

namespace st {

enum class FrameEncoding : uint8_t { RawBgr = 0, Png = 1, Jpeg = 2 };

// "raw", "png", "jpeg"; "unknown" for a value outside the enum.
inline const char* frame_encoding_name(FrameEncoding e) {
  switch (e) {
    case FrameEncoding::RawBgr: return "raw";
    case FrameEncoding::Png: return "png";
    case FrameEncoding::Jpeg: return "jpeg";
  }
  return "unknown";
}

}  // namespace st
