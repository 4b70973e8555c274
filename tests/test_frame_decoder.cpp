// Key frames from the network (io/frame_decoder.h): PNG and JPEG decoded to BGR by libspng
// and TurboJPEG, the header's size checked against the announced one before any pixel buffer,
// hostile inputs (size lies, truncation, corruption, stb's Huffman-table overflow, zlib bombs)
// refused with a clear st::Error, and the seed corpus of tools/fuzz_image.sh replayed.
#include <sys/resource.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "io/frame_decoder.h"
#include "tensor/image.h"
#include "tensor/tensor.h"
#include "test_util.h"

using st::FrameEncoding;
using st::io::decode_key_frame_bgr;
using Bytes = std::vector<uint8_t>;
namespace image = st::image;

namespace {

// The st::Error message of decoding, or "" when it decodes.
std::string decode_error(const Bytes& b, FrameEncoding enc, int64_t w, int64_t h) {
  try {
    decode_key_frame_bgr(b.data(), b.size(), enc, w, h);
  } catch (const st::Error& e) {
    return e.what();
  }
  return "";
}

// A (h, w, 3) image of pseudo-random bytes.
image::Image noise(int64_t h, int64_t w, uint32_t seed) {
  image::Image img{h, w, 3, Bytes(size_t(h * w * 3))};
  for (auto& v : img.pixels) {
    seed = seed * 1664525u + 1013904223u;
    v = uint8_t(seed >> 24);
  }
  return img;
}

Bytes swap_rb(Bytes px) {
  for (size_t i = 0; i + 2 < px.size(); i += 3) std::swap(px[i], px[i + 2]);
  return px;
}

// ---- PNG surgery ----
uint32_t png_crc(const uint8_t* p, size_t n) {  // CRC-32 (ISO 3309), bit by bit
  uint32_t c = 0xFFFFFFFFu;
  for (size_t i = 0; i < n; ++i) {
    c ^= p[i];
    for (int k = 0; k < 8; ++k) c = (c >> 1) ^ (0xEDB88320u & (0u - (c & 1u)));
  }
  return ~c;
}
void put_be32(Bytes& b, uint32_t v) {
  for (int s = 24; s >= 0; s -= 8) b.push_back(uint8_t(v >> s));
}
uint32_t get_be32(const Bytes& b, size_t at) {
  return uint32_t(b[at]) << 24 | uint32_t(b[at + 1]) << 16 | uint32_t(b[at + 2]) << 8 | b[at + 3];
}
void put_chunk(Bytes& png, const char* type, const Bytes& data) {
  put_be32(png, uint32_t(data.size()));
  const size_t start = png.size();
  png.insert(png.end(), type, type + 4);
  png.insert(png.end(), data.begin(), data.end());
  put_be32(png, png_crc(png.data() + start, png.size() - start));
}
// The concatenated IDAT data (the zlib stream) of a PNG.
Bytes idat_of(const Bytes& png) {
  Bytes z;
  for (size_t pos = 8; pos + 12 <= png.size();) {
    const uint32_t len = get_be32(png, pos);
    if (std::memcmp(png.data() + pos + 4, "IDAT", 4) == 0)
      z.insert(z.end(), png.begin() + long(pos + 8), png.begin() + long(pos + 8 + len));
    pos += 12 + len;
  }
  return z;
}
// An 8-bit RGB PNG whose IHDR says w x h, with `zlib` as its one IDAT.
Bytes make_png(uint32_t w, uint32_t h, const Bytes& zlib) {
  Bytes png = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1A, '\n'};
  Bytes ihdr;
  put_be32(ihdr, w);
  put_be32(ihdr, h);
  ihdr.insert(ihdr.end(), {8, 2, 0, 0, 0});  // depth 8, RGB, deflate, filter 0, no interlace
  put_chunk(png, "IHDR", ihdr);
  put_chunk(png, "IDAT", zlib);
  put_chunk(png, "IEND", {});
  return png;
}

// ---- JPEG surgery ----
size_t find_marker(const Bytes& jpg, uint8_t m) {
  for (size_t i = 2; i + 1 < jpg.size(); ++i)
    if (jpg[i] == 0xFF && jpg[i + 1] == m) return i;
  FAIL("no marker FF" << std::hex << int(m));
  return 0;
}

long max_rss_kib() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return u.ru_maxrss;
}

Bytes read_file(const std::filesystem::path& p) {
  std::ifstream f(p, std::ios::binary);
  return Bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
}

}  // namespace

TEST_CASE("frame decoder: PNG decodes to the exact BGR pixels", "[server][image][portable]") {
  // PNG is lossless: every byte must come back, R and B swapped (BGR is the student's order).
  for (auto [h, w] : {std::pair<int64_t, int64_t>{23, 37}, {1, 1}, {48, 64}}) {
    image::Image rgb = noise(h, w, uint32_t(h * 131 + w));
    Bytes png = image::encode_png(rgb);
    Bytes bgr = decode_key_frame_bgr(png.data(), png.size(), FrameEncoding::Png, w, h);
    REQUIRE(bgr == swap_rb(rgb.pixels));
  }
  // Grey and grey+alpha and RGBA PNGs: grey replicated, alpha dropped (what stb gave before).
  image::Image grey{5, 7, 1, Bytes(35)}, rgba{5, 7, 4, Bytes(140)};
  for (size_t i = 0; i < 35; ++i) grey.pixels[i] = uint8_t(i * 7);
  for (size_t i = 0; i < 140; ++i) rgba.pixels[i] = uint8_t(i * 13 + 1);
  Bytes g = image::encode_png(grey), a = image::encode_png(rgba);
  Bytes gb = decode_key_frame_bgr(g.data(), g.size(), FrameEncoding::Png, 7, 5);
  Bytes ab = decode_key_frame_bgr(a.data(), a.size(), FrameEncoding::Png, 7, 5);
  for (size_t i = 0; i < 35; ++i) {
    INFO("pixel " << i);
    const uint8_t v = grey.pixels[i];
    REQUIRE((gb[3 * i] == v && gb[3 * i + 1] == v && gb[3 * i + 2] == v));
    REQUIRE(ab[3 * i] == rgba.pixels[4 * i + 2]);
    REQUIRE(ab[3 * i + 1] == rgba.pixels[4 * i + 1]);
    REQUIRE(ab[3 * i + 2] == rgba.pixels[4 * i]);
  }
  // A large single-IDAT PNG (stb writes one IDAT; over libspng's 1 MiB ancillary chunk limit).
  image::Image big = noise(600, 800, 5);
  Bytes bp = image::encode_png(big);
  REQUIRE(bp.size() > (size_t(1) << 20));
  REQUIRE(decode_key_frame_bgr(bp.data(), bp.size(), FrameEncoding::Png, 800, 600) ==
          swap_rb(big.pixels));
  REQUIRE(st::io::png_decoder_peak_bytes() <= st::io::png_decoder_memory_limit(800));
}

TEST_CASE("frame decoder: JPEG decodes to BGR within the bound of its rounding",
          "[server][image][portable]") {
  // Exact case: a grey image of constant 8x8 blocks at quality 100 (every quantiser step 1).
  // Each block is DC-only; stb's encoder stores DC = round(8 (v - 128)) exactly (its float DCT's
  // AC terms are ~1e-5, quantised to 0) and any IDCT of a DC-only block gives (DC + 4) / 8 + 128
  // = v: every decoded pixel equals the original in all three channels.
  const int64_t H = 24, W = 40;
  image::Image grey{H, W, 1, Bytes(size_t(H * W))};
  for (int64_t y = 0; y < H; ++y)
    for (int64_t x = 0; x < W; ++x) grey.pixels[size_t(y * W + x)] = uint8_t(17 + 29 * (y / 8 * 5 + x / 8));
  Bytes gj = image::encode_jpeg(grey, 100);
  Bytes gb = decode_key_frame_bgr(gj.data(), gj.size(), FrameEncoding::Jpeg, W, H);
  REQUIRE(gb.size() == size_t(H * W * 3));
  for (size_t i = 0; i < size_t(H * W); ++i) {
    INFO("pixel " << i);
    REQUIRE((gb[3 * i] == grey.pixels[i] && gb[3 * i + 1] == grey.pixels[i] &&
             gb[3 * i + 2] == grey.pixels[i]));
  }
  // Colour: constant 8x8 blocks, quality 100 (stb: 4:4:4 above quality 90, steps of 1), and a
  // single colour at quality 80 (4:2:0, DC steps 6 luma / 7 chroma; one colour everywhere, so
  // upsampling has nothing to blend). Y, Cb, Cr each decode within s/16 + 1/16 + 1/2 of stb's
  // float values (s the DC step: DC rounding s/2 of 8x; the IDCT's own rounding 1/2), i.e. 0.625
  // (q100) / 0.9375 (q80); R = Y + 1.402 Cr', B = Y + 1.772 Cb', G = Y - 0.344 Cb' - 0.714 Cr'
  // (JFIF) then add at most 1/2 each for libjpeg-turbo's table rounding: worst B at q80,
  // 0.9375 * 2.772 + 0.5 = 3.1 -> decoded bytes within 3 of the original. The channel order is
  // checked too: every colour here has |R - B| > 2 * 3.
  auto within = [](const Bytes& bgr, const Bytes& rgb, int tol) {
    int worst = 0;
    for (size_t i = 0; i < rgb.size(); i += 3)
      for (int c = 0; c < 3; ++c)
        worst = std::max(worst, std::abs(int(bgr[i + size_t(c)]) - int(rgb[i + 2 - size_t(c)])));
    INFO("worst channel difference " << worst << ", bound " << tol);
    return worst <= tol;
  };
  const uint8_t colours[6][3] = {{200, 30, 90}, {10, 250, 60}, {90, 80, 240},
                                 {255, 128, 0}, {40, 120, 180}, {230, 220, 20}};
  image::Image col{H, W, 3, Bytes(size_t(H * W * 3))};
  for (int64_t y = 0; y < H; ++y)
    for (int64_t x = 0; x < W; ++x)
      for (int c = 0; c < 3; ++c)
        col.pixels[size_t((y * W + x) * 3 + c)] = colours[(y / 8 * 5 + x / 8) % 6][c];
  Bytes cj = image::encode_jpeg(col, 100);
  Bytes cb = decode_key_frame_bgr(cj.data(), cj.size(), FrameEncoding::Jpeg, W, H);
  CHECK(within(cb, col.pixels, 3));
  CHECK_FALSE(within(swap_rb(cb), col.pixels, 3));  // the bound tells BGR from RGB
  image::Image flat{H, W, 3, Bytes(size_t(H * W * 3))};
  for (size_t i = 0; i < flat.pixels.size(); ++i) flat.pixels[i] = colours[0][i % 3];
  Bytes fj = image::encode_jpeg(flat, 80);
  CHECK(within(decode_key_frame_bgr(fj.data(), fj.size(), FrameEncoding::Jpeg, W, H),
               flat.pixels, 3));
}

TEST_CASE("frame decoder: a header size other than the announced one is refused first",
          "[server][image][portable]") {
  // PNG: an IHDR of 60000x60000 with a 9 KiB body, as the server would see it for a 64x48 HELLO.
  Bytes zeros = image::encode_png(image::Image{48, 64, 3, Bytes(64 * 48 * 3)});
  Bytes huge = make_png(60000, 60000, idat_of(zeros));
  const long rss0 = max_rss_kib();
  auto t0 = std::chrono::steady_clock::now();
  REQUIRE(decode_error(huge, FrameEncoding::Png, 64, 48) ==
          "key frame: PNG header says 60000x60000, HELLO announced 64x48");
  // ... even when HELLO announced the same width (libspng never starts: no allocation at all).
  REQUIRE(decode_error(huge, FrameEncoding::Png, 60000, 48) ==
          "key frame: PNG header says 60000x60000, HELLO announced 60000x48");
  REQUIRE(st::io::png_decoder_peak_bytes() == 0);
  // JPEG: a valid 40x24 baseline JPEG whose frame header is patched to 60000x50000.
  Bytes jpg = image::encode_jpeg(noise(24, 40, 3), 90);
  Bytes lie = jpg;
  const size_t sof = find_marker(lie, 0xC0);
  lie[sof + 5] = 50000 >> 8, lie[sof + 6] = 50000 & 255;
  lie[sof + 7] = 60000 >> 8, lie[sof + 8] = 60000 & 255;
  REQUIRE(decode_error(lie, FrameEncoding::Jpeg, 40, 24) ==
          "key frame: JPEG header says 60000x50000, HELLO announced 40x24");
  // The genuine one, announced one pixel off either way.
  REQUIRE(decode_error(jpg, FrameEncoding::Jpeg, 40, 24).empty());
  REQUIRE(decode_error(jpg, FrameEncoding::Jpeg, 41, 24) ==
          "key frame: JPEG header says 40x24, HELLO announced 41x24");
  REQUIRE(decode_error(jpg, FrameEncoding::Jpeg, 40, 23) ==
          "key frame: JPEG header says 40x24, HELLO announced 40x23");
  REQUIRE(decode_error(zeros, FrameEncoding::Png, 64, 47) ==
          "key frame: PNG header says 64x48, HELLO announced 64x47");
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  CHECK(s < 1.0);                           // (milliseconds in fact; no pixel was decoded)
  CHECK(max_rss_kib() - rss0 < 64 * 1024);  // a 60000x60000 RGB buffer would be 10 GiB
  // The header peek used by the fuzzer and the corpus replay reads the same sizes.
  int64_t w = 0, h = 0;
  REQUIRE(st::io::key_frame_header_size(lie.data(), lie.size(), FrameEncoding::Jpeg, &w, &h));
  REQUIRE((w == 60000 && h == 50000));
  REQUIRE(st::io::key_frame_header_size(huge.data(), huge.size(), FrameEncoding::Png, &w, &h));
  REQUIRE((w == 60000 && h == 60000));
}

TEST_CASE("frame decoder: wrong format, truncated and corrupt frames are refused",
          "[server][image][portable]") {
  image::Image img = noise(24, 40, 11);
  Bytes png = image::encode_png(img), jpg = image::encode_jpeg(img, 90);
  CHECK(decode_error(Bytes(500, 7), FrameEncoding::Png, 40, 24) ==
        "key frame: not a PNG (bad signature)");
  CHECK(decode_error(Bytes(500, 7), FrameEncoding::Jpeg, 40, 24) ==
        "key frame: not a JPEG (no SOI marker)");
  CHECK(decode_error(jpg, FrameEncoding::Png, 40, 24) == "key frame: not a PNG (bad signature)");
  CHECK(decode_error(png, FrameEncoding::Jpeg, 40, 24) == "key frame: not a JPEG (no SOI marker)");
  CHECK(decode_error({}, FrameEncoding::Png, 40, 24) == "key frame: not a PNG (bad signature)");
  CHECK(decode_error(png, FrameEncoding::RawBgr, 40, 24) ==
        "key frame: encoding 0 is not PNG or JPEG");
  CHECK(decode_error(png, FrameEncoding::Png, 0, 24) ==
        "key frame: announced size 0x24 is not 1..65535 a side");
  // Truncated: every cut must fail (a JPEG decoder that fills the missing rows with grey and
  // warns is what TJFLAG_STOPONWARNING turns into an error).
  for (size_t cut : {size_t(20), png.size() / 2, png.size() - 13}) {
    INFO("PNG cut to " << cut << " of " << png.size());
    const std::string e = decode_error(Bytes(png.begin(), png.begin() + long(cut)), FrameEncoding::Png, 40, 24);
    CHECK_THAT(e, Catch::StartsWith("key frame: PNG"));
  }
  for (size_t cut : {size_t(3), size_t(100), jpg.size() / 2, jpg.size() - 2}) {
    INFO("JPEG cut to " << cut << " of " << jpg.size());
    const std::string e = decode_error(Bytes(jpg.begin(), jpg.begin() + long(cut)), FrameEncoding::Jpeg, 40, 24);
    CHECK_THAT(e, Catch::StartsWith("key frame: "));
  }
  // A flipped byte in the PNG's image data breaks its CRC.
  Bytes bad = png;
  bad[png.size() / 2] ^= 0x40;
  CHECK_THAT(decode_error(bad, FrameEncoding::Png, 40, 24), Catch::StartsWith("key frame: PNG data"));
  // JPEG processes we do not take: progressive (SOF2) and arithmetic (SOF9), said before decoding.
  Bytes prog = jpg;
  prog[find_marker(prog, 0xC0) + 1] = 0xC2;
  CHECK(decode_error(prog, FrameEncoding::Jpeg, 40, 24) ==
        "key frame: progressive JPEG is not accepted (send baseline JPEG)");
  Bytes arith = jpg;
  arith[find_marker(arith, 0xC0) + 1] = 0xC9;
  CHECK_THAT(decode_error(arith, FrameEncoding::Jpeg, 40, 24), Catch::Contains("SOF9 is not accepted"));
}

TEST_CASE("frame decoder: a JPEG Huffman table of more than 256 symbols is refused",
          "[server][image][portable]") {
  // stb_image 2.27 trusts a DHT's 16 code counts and writes past its 257-entry size table when
  // they sum above 256 (UBSan found it). Here 16 counts of 17 = 272 symbols, a well-formed
  // segment otherwise, inserted right after SOI of a valid JPEG.
  Bytes jpg = image::encode_jpeg(noise(16, 16, 2), 90);
  Bytes dht = {0xFF, 0xC4};
  const size_t n = 16 * 17, len = 2 + 1 + 16 + n;
  dht.push_back(uint8_t(len >> 8));
  dht.push_back(uint8_t(len & 255));
  dht.push_back(0x00);  // DC table 0
  for (int i = 0; i < 16; ++i) dht.push_back(17);
  for (size_t i = 0; i < n; ++i) dht.push_back(uint8_t(i));
  Bytes evil(jpg.begin(), jpg.begin() + 2);
  evil.insert(evil.end(), dht.begin(), dht.end());
  evil.insert(evil.end(), jpg.begin() + 2, jpg.end());
  REQUIRE(decode_error(jpg, FrameEncoding::Jpeg, 16, 16).empty());
  CHECK(decode_error(evil, FrameEncoding::Jpeg, 16, 16) ==
        "key frame: JPEG header: Bogus Huffman table definition");
}

TEST_CASE("frame decoder: PNG decompression bombs cost neither memory nor time",
          "[server][image][portable]") {
  // A 2048x1024 black RGB PNG: 6 MiB of pixels in ~60 KiB of zlib (stb's compressor).
  Bytes black = image::encode_png(image::Image{1024, 2048, 3, Bytes(size_t(2048) * 1024 * 3)});
  REQUIRE(black.size() < 128 * 1024);
  const long rss0 = max_rss_kib();
  auto t0 = std::chrono::steady_clock::now();
  // Announced 64x48: refused from its header, nothing inflated.
  CHECK(decode_error(black, FrameEncoding::Png, 64, 48) ==
        "key frame: PNG header says 2048x1024, HELLO announced 64x48");
  CHECK(st::io::png_decoder_peak_bytes() == 0);
  // The same zlib stream behind a 64x48 header: libspng inflates what 48 rows need and stops;
  // the rest is never inflated (whether the excess is then an error is libspng's choice: either
  // way the answer is clean and quick).
  Bytes bomb = make_png(64, 48, idat_of(black));
  const std::string e = decode_error(bomb, FrameEncoding::Png, 64, 48);
  if (e.empty()) {
    Bytes px = decode_key_frame_bgr(bomb.data(), bomb.size(), FrameEncoding::Png, 64, 48);
    CHECK(px == Bytes(64 * 48 * 3, 0));
  } else {
    CHECK_THAT(e, Catch::StartsWith("key frame: PNG"));
  }
  CHECK(st::io::png_decoder_peak_bytes() <= st::io::png_decoder_memory_limit(64));
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  CHECK(s < 1.0);
  CHECK(max_rss_kib() - rss0 < 64 * 1024);
  // Too little data for the header's size: an error, not rows of zeros.
  Bytes small = idat_of(image::encode_png(image::Image{48, 64, 3, Bytes(64 * 48 * 3)}));
  Bytes short_ = make_png(64, 480, small);
  CHECK_THAT(decode_error(short_, FrameEncoding::Png, 64, 480), Catch::StartsWith("key frame: PNG data"));
}

// The seed corpus of tools/fuzz_image.sh, replayed the way the fuzz target uses each input: the
// size its header claims is announced when within 1024x1024 (else 64x48), and the bytes go to
// the decoder as PNG and as JPEG. ok_* files must decode (and fail when announced one row off),
// err_* files must be refused, other names (fuzzer finds) only must not crash: any exception
// but st::Error, or a sanitizer report in st_tests_asan, fails.
TEST_CASE("frame decoder: image corpus replay", "[server][image][portable]") {
  auto dir = st::test::source_dir() / "tests" / "image_corpus";
  if (!std::filesystem::is_directory(dir)) ST_SKIP("tests/image_corpus/ is missing");
  std::vector<std::filesystem::path> files;
  for (auto& e : std::filesystem::directory_iterator(dir))
    if (e.is_regular_file()) files.push_back(e.path());
  std::sort(files.begin(), files.end());
  size_t ok = 0, err = 0;
  for (auto& path : files) {
    const std::string name = path.filename().string();
    INFO(name);
    const Bytes b = read_file(path);
    const FrameEncoding enc = (!b.empty() && b[0] == 0x89) ? FrameEncoding::Png : FrameEncoding::Jpeg;
    int64_t w = 64, h = 48;
    if (!st::io::key_frame_header_size(b.data(), b.size(), enc, &w, &h) || w < 1 || h < 1 ||
        w > 1024 || h > 1024)
      w = 64, h = 48;
    const std::string e = decode_error(b, enc, w, h);
    decode_error(b, enc == FrameEncoding::Png ? FrameEncoding::Jpeg : FrameEncoding::Png, w, h);
    if (name.rfind("ok_", 0) == 0) {
      CHECK(e.empty());
      CHECK_FALSE(decode_error(b, enc, w, h + 1).empty());
      ++ok;
    } else if (name.rfind("err_", 0) == 0) {
      CHECK_THAT(e, Catch::StartsWith("key frame: "));
      ++err;
    }
  }
  CHECK(ok >= 4);
  CHECK(err >= 6);
}

// Writes the seed corpus. Hidden: run by hand after changing what it holds,
//   st_tests "[.image-corpus-gen]"
// then review and commit tests/image_corpus/ (keep it small: each file is a fuzzer seed).
TEST_CASE("frame decoder: regenerate the image corpus", "[.image-corpus-gen]") {
  auto dir = st::test::source_dir() / "tests" / "image_corpus";
  std::filesystem::create_directories(dir);
  auto write = [&](const std::string& name, const Bytes& b) {
    std::ofstream f(dir / name, std::ios::binary);
    f.write(reinterpret_cast<const char*>(b.data()), std::streamsize(b.size()));
  };
  image::Image rgb = noise(23, 37, 1), grey{12, 20, 1, Bytes(240)}, rgba{9, 11, 4, Bytes(396)};
  for (size_t i = 0; i < grey.pixels.size(); ++i) grey.pixels[i] = uint8_t(i * 3);
  for (size_t i = 0; i < rgba.pixels.size(); ++i) rgba.pixels[i] = uint8_t(i * 7 + 5);
  const Bytes png = image::encode_png(rgb), jpg = image::encode_jpeg(rgb, 90);
  write("ok_png_rgb.png", png);
  write("ok_png_grey.png", image::encode_png(grey));
  write("ok_png_rgba.png", image::encode_png(rgba));
  write("ok_jpeg_420_q90.jpg", jpg);
  write("ok_jpeg_444_q100.jpg", image::encode_jpeg(rgb, 100));
  write("ok_jpeg_grey.jpg", image::encode_jpeg(grey, 75));
  write("err_png_truncated.png", Bytes(png.begin(), png.begin() + long(png.size() / 2)));
  write("err_jpeg_truncated.jpg", Bytes(jpg.begin(), jpg.begin() + long(jpg.size() / 2)));
  Bytes crc = png;
  crc[png.size() / 2] ^= 1;
  write("err_png_bad_crc.png", crc);
  Bytes prog = jpg;
  prog[find_marker(prog, 0xC0) + 1] = 0xC2;
  write("err_jpeg_progressive.jpg", prog);
  // stb 2.27's Huffman-table overflow: a DHT of 16 counts of 17 (272 symbols) after SOI.
  Bytes evil(jpg.begin(), jpg.begin() + 2);
  const size_t n = 16 * 17, len = 2 + 1 + 16 + n;
  evil.insert(evil.end(), {0xFF, 0xC4, uint8_t(len >> 8), uint8_t(len & 255), 0x00});
  for (int i = 0; i < 16; ++i) evil.push_back(17);
  for (size_t i = 0; i < n; ++i) evil.push_back(uint8_t(i));
  evil.insert(evil.end(), jpg.begin() + 2, jpg.end());
  write("err_jpeg_dht_over_256.jpg", evil);
  // Bombs: 1024x512 black (1.5 MiB of pixels in 15 KB) as it is (announced at its size, it
  // decodes), its zlib stream behind a 64x48 header (longer than the image needs), and a
  // 60000x60000 header over a small stream.
  Bytes black = image::encode_png(image::Image{512, 1024, 3, Bytes(size_t(1024) * 512 * 3)});
  write("ok_png_black_1024x512.png", black);
  write("bomb_png_long_stream_64x48.png", make_png(64, 48, idat_of(black)));
  write("err_png_ihdr_60000x60000.png", make_png(60000, 60000, idat_of(png)));
}
