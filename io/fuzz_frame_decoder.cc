// libFuzzer target for the decoding of untrusted key frames (io/frame_decoder.h), as the
// server uses it. Built by tools/fuzz_image.sh with clang++ -fsanitize=fuzzer,address,undefined
// (a .cc file, so the main build's io/*.cpp glob does not compile it into st_app). libspng
// and libjpeg-turbo are Debian's shared libraries, not instrumented: ASan sees their reads and
// writes of our buffers only through its interceptors (memcpy, memset ...); both are fuzzed
// instrumented upstream (OSS-Fuzz).
//
// Each input is an image file. The size its header claims is announced when it is within
// 1024x1024 (as a HELLO within the server's pixel budget would be), else 64x48, and the bytes go
// to the decoder as PNG and as JPEG; announced one column wider they must be refused. A clean
// decode or an st::Error is fine; anything else (a crash, a sanitizer report, another
// exception, a decode of the wrong size, success at a size the header does not say) is a
// finding. tests/test_frame_decoder.cpp replays tests/image_corpus/ the same way.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "io/frame_decoder.h"
#include "tensor/tensor.h"

using st::FrameEncoding;

namespace {

[[noreturn]] void broken(const char* what) {
  std::fprintf(stderr, "fuzz_frame_decoder: invariant broken: %s\n", what);
  std::abort();
}

// True when it decodes; false on st::Error; aborts on anything else.
bool decodes(const uint8_t* data, size_t size, FrameEncoding enc, int64_t w, int64_t h) {
  try {
    std::vector<uint8_t> px = st::io::decode_key_frame_bgr(data, size, enc, w, h);
    if (px.size() != size_t(w * h * 3)) broken("output of the wrong size");
    return true;
  } catch (const st::Error&) {
    return false;
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  for (FrameEncoding enc : {FrameEncoding::Png, FrameEncoding::Jpeg}) {
    int64_t w = 0, h = 0;
    const bool has = st::io::key_frame_header_size(data, size, enc, &w, &h);
    if (!has || w < 1 || h < 1 || w > 1024 || h > 1024) {
      if (decodes(data, size, enc, 64, 48) && !(has && w == 64 && h == 48))
        broken("decoded at a size its header does not say");
      continue;
    }
    const bool ok = decodes(data, size, enc, w, h);
    if (ok && decodes(data, size, enc, w + 1, h)) broken("decoded one column wider too");
  }
  return 0;
}
