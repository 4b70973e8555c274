// Untrusted key frames: PNG through libspng, JPEG through libjpeg-turbo's TurboJPEG API (the
// tj2 functions: Debian 12 ships libjpeg-turbo 2.1.5, whose TurboJPEG has no tj3 parameters such
// as TJPARAM_MAXPIXELS or TJPARAM_SCANLIMIT). Both decode straight into the one output buffer.
//
// What bounds the work for a hostile input of n bytes announcing W x H pixels:
//  - the size: each header is read before anything is allocated and must equal W x H, which the
//    server has held to its pixel budget (a 91-byte PNG claiming 60000x60000 costs nothing);
//  - PNG: libspng inflates exactly the rows the header describes into the output (a zlib stream
//    that would inflate further is never inflated further); its own allocations go through a
//    counting allocator capped at png_decoder_memory_limit(W), ancillary chunks are capped by
//    spng_set_chunk_limits and their number by libspng's own limit (1000);
//  - JPEG: only the sequential Huffman processes (SOF0 baseline, SOF1 extended) are taken; the
//    frame header's type is read by our own marker walk before libjpeg-turbo sees the bytes.
//    Progressive JPEG, whose end-of-band runs let a few bytes of a scan cover up to 32767 blocks
//    (so scans cost time without costing input, the DoS that tj3's TJPARAM_SCANLIMIT exists
//    for), is refused; so are arithmetic coding, lossless and hierarchical JPEG, which no camera
//    or encoder we meet produces. In a sequential Huffman scan every 8x8 block takes at least
//    two bits of input (a DC code and an end-of-block code, each at least one bit), and running
//    out of data is a libjpeg warning that TJFLAG_STOPONWARNING makes an error, so the decode
//    costs O(n + W*H) time; its memory beyond the output is a few rows of blocks, or for a
//    multi-scan sequential image the whole-image coefficients (2 bytes a sample, bounded by the
//    announced size). TJFLAG_LIMITSCANS is set as well (it only limits progressive scans).
#include "io/frame_decoder.h"

#include <spng.h>
#include <turbojpeg.h>

#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <new>
#include <string>
#include <utility>

#include "tensor/tensor.h"

namespace st::io {

namespace {

std::string dims(int64_t w, int64_t h) { return std::to_string(w) + "x" + std::to_string(h); }

[[noreturn]] void refuse_size(const char* format, int64_t w, int64_t h, int64_t want_w,
                              int64_t want_h) {
  detail::fail("key frame: ", format, " header says ", dims(w, h), ", HELLO announced ",
               dims(want_w, want_h));
}

// ---- PNG (libspng) ----

// libspng's allocations for the decode on this thread, each with a 16-byte header that holds
// its size, so that realloc and free know what they release. The callbacks take no context
// pointer, hence thread_local; a worker thread decodes one frame at a time.
struct PngHeap {
  size_t used = 0, peak = 0, limit = 0;
};
thread_local PngHeap t_png_heap;
constexpr size_t kHeapHeader = 16;  // keeps the max_align_t alignment of malloc's pointers

void* png_malloc(size_t n) {
  PngHeap& h = t_png_heap;
  if (n > h.limit - h.used) return nullptr;
  auto* p = static_cast<unsigned char*>(std::malloc(kHeapHeader + n));
  if (!p) return nullptr;
  std::memcpy(p, &n, sizeof n);
  h.used += n;
  if (h.used > h.peak) h.peak = h.used;
  return p + kHeapHeader;
}
void png_free(void* q) {
  if (!q) return;
  auto* p = static_cast<unsigned char*>(q) - kHeapHeader;
  size_t n;
  std::memcpy(&n, p, sizeof n);
  t_png_heap.used -= n;
  std::free(p);
}
void* png_calloc(size_t count, size_t size) {
  if (size != 0 && count > std::numeric_limits<size_t>::max() / size) return nullptr;
  void* q = png_malloc(count * size);
  if (q) std::memset(q, 0, count * size);
  return q;
}
void* png_realloc(void* q, size_t n) {
  if (!q) return png_malloc(n);
  auto* p = static_cast<unsigned char*>(q) - kHeapHeader;
  size_t old;
  std::memcpy(&old, p, sizeof old);
  PngHeap& h = t_png_heap;
  if (n > old && n - old > h.limit - h.used) return nullptr;
  auto* r = static_cast<unsigned char*>(std::realloc(p, kHeapHeader + n));
  if (!r) return nullptr;
  std::memcpy(r, &n, sizeof n);
  h.used = h.used - old + n;
  if (h.used > h.peak) h.peak = h.used;
  return r + kHeapHeader;
}
spng_alloc g_png_alloc{png_malloc, png_realloc, png_calloc, png_free};

uint32_t be32(const uint8_t* p) {
  return uint32_t(p[0]) << 24 | uint32_t(p[1]) << 16 | uint32_t(p[2]) << 8 | uint32_t(p[3]);
}

struct SpngFree {
  void operator()(spng_ctx* c) const { spng_ctx_free(c); }
};

std::vector<uint8_t> decode_png(const uint8_t* data, size_t size, int64_t W, int64_t H) {
  t_png_heap = PngHeap{};
  // Signature and IHDR (always the first chunk) read here, for a clear message before libspng.
  static const uint8_t kSignature[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1A, '\n'};
  ST_CHECK(size >= 8 && std::memcmp(data, kSignature, 8) == 0,
           "key frame: not a PNG (bad signature)");
  ST_CHECK(size >= 8 + 8 + 13 && std::memcmp(data + 12, "IHDR", 4) == 0 && be32(data + 8) == 13,
           "key frame: PNG truncated or without an IHDR chunk first (", size, " bytes)");
  const int64_t w = be32(data + 16), h = be32(data + 20);
  if (w != W || h != H) refuse_size("PNG", w, h, W, H);

  t_png_heap = PngHeap{0, 0, png_decoder_memory_limit(W)};
  std::unique_ptr<spng_ctx, SpngFree> ctx(spng_ctx_new2(&g_png_alloc, 0));
  ST_CHECK(ctx, "key frame: cannot create a PNG decoder (out of memory)");
  spng_ctx* c = ctx.get();
  auto check = [](int rc, const char* step) {
    ST_CHECK(rc == 0, "key frame: PNG ", step, ": ", spng_strerror(rc));
  };
  check(spng_set_image_limits(c, uint32_t(W), uint32_t(H)), "limits");
  check(spng_set_chunk_limits(c, size_t(1) << 20, size_t(4) << 20), "limits");
  // (SPNG_CHUNK_COUNT_LIMIT cannot be set in libspng 0.7.3; its default is 1000 chunks.)
  check(spng_set_png_buffer(c, data, size), "input");
  spng_ihdr ihdr{};
  check(spng_get_ihdr(c, &ihdr), "header");
  if (int64_t(ihdr.width) != W || int64_t(ihdr.height) != H)  // (the IHDR read above said so)
    refuse_size("PNG", ihdr.width, ihdr.height, W, H);
  size_t n = 0;
  check(spng_decoded_image_size(c, SPNG_FMT_RGB8, &n), "header");
  ST_CHECK(n == size_t(W * H * 3), "key frame: PNG decodes to ", n, " bytes, not ", W * H * 3);

  std::vector<uint8_t> out(n);  // (H, W, 3): RGB as decoded, BGR after the swap below
  // No gamma and no tRNS: the pixels as stored, alpha dropped (as stb_image read them).
  check(spng_decode_image(c, out.data(), out.size(), SPNG_FMT_RGB8, 0), "data");
  // The rest of the file through IEND: the last IDAT's CRC, the chunks after the image. libspng
  // stops reading once the rows are complete, so without this a truncated file could pass.
  check(spng_decode_chunks(c), "data");
  for (size_t i = 0; i < n; i += 3) std::swap(out[i], out[i + 2]);
  return out;
}

// ---- JPEG (TurboJPEG) ----

// Walks the marker segments up to the first scan and finds the frame header (SOFn: 0xC0..0xCF
// but for DHT/JPG/DAC). marker 0: none before SOS or the end of the data.
struct JpegFrame {
  int marker = 0;
  int64_t width = 0, height = 0;  // from the SOF segment (0 when it is too short)
};
JpegFrame jpeg_frame(const uint8_t* data, size_t size) {
  JpegFrame f;
  size_t pos = 2;  // after SOI
  while (pos < size) {
    if (data[pos] != 0xFF) return f;  // only markers may come between segments
    while (pos < size && data[pos] == 0xFF) ++pos;  // fill bytes
    if (pos >= size) return f;
    const int m = data[pos++];
    if (m == 0x01 || (m >= 0xD0 && m <= 0xD7)) continue;  // TEM, RSTn: no length
    if (m == 0xD8 || m == 0xD9 || m == 0xDA || m == 0x00) return f;  // SOI/EOI/SOS/stuffing
    if (size - pos < 2) return f;
    const size_t len = size_t(data[pos]) << 8 | data[pos + 1];
    if (m >= 0xC0 && m <= 0xCF && m != 0xC4 && m != 0xC8 && m != 0xCC) {
      f.marker = m;
      if (len >= 8 && size - pos >= 7) {  // length, precision, height, width, ...
        f.height = int64_t(data[pos + 3]) << 8 | data[pos + 4];
        f.width = int64_t(data[pos + 5]) << 8 | data[pos + 6];
      }
      return f;
    }
    if (len < 2 || len > size - pos) return f;
    pos += len;
  }
  return f;
}

struct TjFree {
  void operator()(void* h) const { tjDestroy(h); }
};

std::vector<uint8_t> decode_jpeg(const uint8_t* data, size_t size, int64_t W, int64_t H) {
  ST_CHECK(size >= 4 && data[0] == 0xFF && data[1] == 0xD8, "key frame: not a JPEG (no SOI marker)");
  const int sof = jpeg_frame(data, size).marker;
  ST_CHECK(sof != 0, "key frame: JPEG without a frame header before its first scan (", size,
           " bytes)");
  ST_CHECK(sof != 0xC2, "key frame: progressive JPEG is not accepted (send baseline JPEG)");
  ST_CHECK(sof == 0xC0 || sof == 0xC1, "key frame: JPEG process SOF", sof - 0xC0,
           " is not accepted (only baseline / extended sequential Huffman)");

  std::unique_ptr<void, TjFree> tj(tjInitDecompress());
  ST_CHECK(tj, "key frame: cannot create a JPEG decoder: ", tjGetErrorStr2(nullptr));
  // TurboJPEG takes an unsigned long size.
  ST_CHECK(size <= std::numeric_limits<unsigned long>::max(), "key frame: JPEG too large");
  int w = 0, h = 0, subsamp = -1, colorspace = -1;
  if (tjDecompressHeader3(tj.get(), data, static_cast<unsigned long>(size), &w, &h, &subsamp,
                          &colorspace) != 0)
    detail::fail("key frame: JPEG header: ", tjGetErrorStr2(tj.get()));
  if (w != W || h != H) refuse_size("JPEG", w, h, W, H);
  ST_CHECK(colorspace == TJCS_YCbCr || colorspace == TJCS_GRAY || colorspace == TJCS_RGB,
           "key frame: JPEG colour space ", colorspace == TJCS_CMYK ? "CMYK"
           : colorspace == TJCS_YCCK ? "YCCK" : "unknown", " is not accepted");

  std::vector<uint8_t> out(size_t(W) * size_t(H) * 3);  // (H, W, 3) BGR
  const int flags = TJFLAG_STOPONWARNING | TJFLAG_LIMITSCANS;
  // (The announced size, equal to the header's: TurboJPEG writes at most W x H pixels, W * 3 a
  // row, whatever the image. It returns -1 on warnings as well, e.g. premature end of data;
  // TJFLAG_STOPONWARNING makes it stop at the first instead of finishing the image.)
  if (tjDecompress2(tj.get(), data, static_cast<unsigned long>(size), out.data(), int(W),
                    int(W * 3), int(H), TJPF_BGR, flags) != 0)
    detail::fail("key frame: JPEG data: ", tjGetErrorStr2(tj.get()));
  return out;
}

}  // namespace

size_t png_decoder_memory_limit(int64_t width) {
  // Rows: libspng keeps two scanlines (current and previous, up to 8 bytes a pixel for RGBA16)
  // and a row of the output format; 64 bytes a pixel covers them with room. The rest: zlib
  // (~7 KiB state, 32 KiB window), the chunk cache (4 MiB, set above), the context.
  return size_t(width) * 64 + (size_t(8) << 20);
}

bool key_frame_header_size(const uint8_t* data, size_t size, FrameEncoding enc, int64_t* width,
                           int64_t* height) {
  if (enc == FrameEncoding::Png) {
    if (size < 24 || data[0] != 0x89 || data[1] != 'P' || std::memcmp(data + 12, "IHDR", 4) != 0)
      return false;
    *width = be32(data + 16);
    *height = be32(data + 20);
    return true;
  }
  if (enc == FrameEncoding::Jpeg && size >= 4 && data[0] == 0xFF && data[1] == 0xD8) {
    const JpegFrame f = jpeg_frame(data, size);
    if (f.marker == 0 || f.width == 0) return false;
    *width = f.width;
    *height = f.height;
    return true;
  }
  return false;
}

size_t png_decoder_peak_bytes() { return t_png_heap.peak; }

std::vector<uint8_t> decode_key_frame_bgr(const uint8_t* data, size_t size, FrameEncoding enc,
                                          int64_t width, int64_t height) {
  ST_CHECK(width > 0 && height > 0 && width <= 65535 && height <= 65535,
           "key frame: announced size ", dims(width, height), " is not 1..65535 a side");
  ST_CHECK(data != nullptr || size == 0, "key frame: no data");
  switch (enc) {
    case FrameEncoding::Png: return decode_png(data, size, width, height);
    case FrameEncoding::Jpeg: return decode_jpeg(data, size, width, height);
    case FrameEncoding::RawBgr: break;
  }
  detail::fail("key frame: encoding ", int(enc), " is not PNG or JPEG");
}

}  // namespace st::io
