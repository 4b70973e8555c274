// Tests of the wire protocol (protocol/, docs/protocol.md): CRC32C vectors, the header layout,
// round trips of every message, the incremental decoder under every split and random chunkings,
// one test per error code, version negotiation, the conversation checker, and a replay of the
// seed corpus in tests/protocol_corpus/ (the fuzzer's starting corpus; see tools/fuzz_protocol.sh).
#include <time.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <limits>
#include <random>

#include "protocol/conversation.h"
#include "protocol/crc32c.h"
#include "protocol/decoder.h"
#include "protocol/protocol.h"
#include "test_util.h"

namespace {

using namespace st::protocol;
using Bytes = std::vector<uint8_t>;

Bytes pattern(size_t n, uint32_t seed) {
  Bytes b(n);
  std::mt19937 rng(seed);
  for (auto& x : b) x = uint8_t(rng());
  return b;
}

// One message of every type and every enum value, small enough for byte-by-byte splitting.
std::vector<Body> sample_bodies() {
  std::vector<Body> v;
  Hello h;
  h.min_version = 1;
  h.max_version = 3;
  h.mode = st::Mode::Partial;
  h.layout_hash = 0x0123456789ABCDEFull;
  h.weights_hash = 0xFEDCBA9876543210ull;
  h.frame_width = 1280;
  h.frame_height = 720;
  h.accept_blobs = kAcceptF32 | kAcceptF16;
  h.auth_token = std::string("s3cr\0t", 6);
  h.edge_name = "jetson-nano-1";
  v.push_back(h);
  Hello h2;  // empty strings, other mode
  h2.mode = st::Mode::Naive;
  h2.frame_width = 1;
  h2.frame_height = kMaxFrameDim;
  v.push_back(h2);

  Welcome w;
  w.version = 1;
  w.session_id = 77;
  w.mode = st::Mode::Full;
  w.min_stride = 8;
  w.max_stride = 64;
  w.threshold = 0.8f;
  w.accept_frames = kAcceptRawBgr | kAcceptPng | kAcceptJpeg;
  w.scope = WeightsScope::Full;
  w.blob_kind = st::BlobEncoding::F32;
  w.train_from = 0;  // mode Full: no partial split
  w.blob = pattern(100, 1);
  v.push_back(w);
  Welcome w2;  // no blob; version 2, the paper's split on the wire
  v.push_back(w2);

  for (auto enc : {FrameEncoding::RawBgr, FrameEncoding::Png, FrameEncoding::Jpeg}) {
    KeyFrame k;
    k.frame_index = 1000 + uint64_t(enc);
    k.encoding = enc;
    k.width = 4;
    k.height = 3;
    k.data = pattern(enc == FrameEncoding::RawBgr ? 36 : 17, 2);
    v.push_back(k);
  }
  for (auto kind : {st::BlobEncoding::None, st::BlobEncoding::F32, st::BlobEncoding::F16}) {
    Update u;
    u.key_frame = 8;
    u.next_stride = 16;
    u.accuracy = 0.75f;
    u.steps = 3;
    u.blob_kind = kind;
    if (kind != st::BlobEncoding::None)
      u.blob = pattern(kind == st::BlobEncoding::F32 ? 40 : 20, 3);
    v.push_back(u);
  }
  Labels l;
  l.frame_index = 5;
  l.width = 5;
  l.height = 2;
  l.labels = {0, 1, 2, 3, 4, 5, 6, 7, 8, 8};
  v.push_back(l);
  v.push_back(ErrorMessage{ErrorCode::AuthFailed, "bad token"});
  v.push_back(ErrorMessage{ErrorCode(999), ""});  // a code from a newer peer is kept as is
  v.push_back(Ping{0xDEADBEEFCAFEull});
  v.push_back(Pong{0xDEADBEEFCAFEull});
  v.push_back(Bye{});
  v.push_back(Resync{0x0123456789ABCDEFull});              // version 2
  v.push_back(Weights{st::BlobEncoding::F16, pattern(12, 5)});  // version 2
  return v;
}

// Under the library's version; a WELCOME under the version it announces (docs/protocol.md §5).
Message msg(Body b, uint64_t seq = 0) {
  const Welcome* w = std::get_if<Welcome>(&b);
  const uint16_t version = w ? w->version : kProtocolVersion;
  return Message{seq, version, std::move(b)};
}

// A raw frame with correct CRCs around an arbitrary payload (for crafting malformed input).
Bytes frame(uint16_t type, const Bytes& payload, uint64_t seq = 0, uint16_t version = 1,
            uint32_t flags = 0) {
  Bytes out(kHeaderSize);
  Header h;
  h.version = version;
  h.type = type;
  h.flags = flags;
  h.seq = seq;
  h.payload_size = uint32_t(payload.size());
  h.payload_crc = crc32c(payload.data(), payload.size());
  write_header(h, out.data());
  out.insert(out.end(), payload.begin(), payload.end());
  return out;
}
Bytes frame(MessageType t, const Bytes& payload) { return frame(uint16_t(t), payload); }

// Decodes everything in `bytes` (fed in one piece); returns the messages. Requires no leftover.
std::vector<Message> decode_all(const Bytes& bytes, DecoderOptions opt = {}) {
  Decoder d(opt);
  d.feed(bytes);
  std::vector<Message> out;
  Message m;
  while (d.next(m)) out.push_back(m);
  d.finish();
  return out;
}

// Feeds `bytes` (in `chunk`-byte pieces, 0 = whole) and expects ProtocolError with `code`.
// Returns what() for further checks. Also checks that the decoder is poisoned afterwards.
std::string expect_code(const Bytes& bytes, ErrorCode code, DecoderOptions opt = {},
                        size_t chunk = 0) {
  Decoder d(opt);
  try {
    Message m;
    size_t pos = 0;
    do {
      size_t n = chunk == 0 ? bytes.size() : std::min(chunk, bytes.size() - pos);
      d.feed(bytes.data() + pos, n);
      pos += n;
      while (d.next(m)) {
      }
    } while (pos < bytes.size());
    d.finish();
  } catch (const ProtocolError& e) {
    INFO(e.what());
    CHECK(error_code_name(e.code()) == std::string(error_code_name(code)));
    if (d.failed()) {  // finish() reports end of stream without poisoning
      Message m;
      try {
        d.next(m);
        FAIL("a failed decoder must keep throwing");
      } catch (const ProtocolError& e2) {
        CHECK(e2.code() == e.code());
      }
      CHECK_THROWS_AS(d.feed(bytes.data(), 1), ProtocolError);
    }
    return e.what();
  }
  FAIL("no ProtocolError; expected " << error_code_name(code));
  return "";
}

uint32_t rd32(const Bytes& b, size_t off) {
  return uint32_t(b[off]) | uint32_t(b[off + 1]) << 8 | uint32_t(b[off + 2]) << 16 |
         uint32_t(b[off + 3]) << 24;
}
void wr32(Bytes& b, size_t off, uint32_t v) {
  for (int i = 0; i < 4; ++i) b[off + size_t(i)] = uint8_t(v >> (8 * i));
}

std::vector<std::filesystem::path> corpus_files() {
  std::vector<std::filesystem::path> files;
  auto dir = st::test::source_dir() / "tests" / "protocol_corpus";
  if (!std::filesystem::is_directory(dir)) return files;
  for (auto& e : std::filesystem::directory_iterator(dir))
    if (e.is_regular_file()) files.push_back(e.path());
  std::sort(files.begin(), files.end());
  return files;
}

Bytes read_file(const std::filesystem::path& p) {
  std::ifstream f(p, std::ios::binary);
  return Bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
}

}  // namespace

TEST_CASE("protocol: CRC32C test vectors", "[protocol][portable]") {
  const char* s = "123456789";
  CHECK(crc32c(s, 9) == 0xE3069283u);
  CHECK(crc32c_software(0, s, 9) == 0xE3069283u);
  CHECK(crc32c(s, 0) == 0u);
  // RFC 3720 (iSCSI) appendix B.4 vectors.
  Bytes zeros(32, 0), ones(32, 0xFF), inc(32), dec(32);
  for (int i = 0; i < 32; ++i) {
    inc[size_t(i)] = uint8_t(i);
    dec[size_t(i)] = uint8_t(31 - i);
  }
  CHECK(crc32c(zeros.data(), 32) == 0x8A9136AAu);
  CHECK(crc32c(ones.data(), 32) == 0x62A8AB43u);
  CHECK(crc32c(inc.data(), 32) == 0x46DD794Eu);
  CHECK(crc32c(dec.data(), 32) == 0x113FDB5Cu);
  // The dispatched path (SSE4.2 when present) equals the table path at every length and
  // alignment, and extend() chains.
  INFO("hardware crc32: " << crc32c_hardware());
  Bytes data = pattern(4096 + 16, 9);
  for (size_t off = 0; off < 8; ++off)
    for (size_t n : {size_t(0), size_t(1), size_t(7), size_t(8), size_t(9), size_t(63),
                     size_t(64), size_t(1000), size_t(4096)}) {
      const uint8_t* p = data.data() + off;
      uint32_t whole = crc32c(p, n);
      REQUIRE(whole == crc32c_software(0, p, n));
      size_t cut = n / 3;
      REQUIRE(crc32c_extend(crc32c(p, cut), p + cut, n - cut) == whole);
    }
}

TEST_CASE("protocol: header layout is the documented 32 bytes", "[protocol][portable]") {
  STATIC_REQUIRE(kHeaderSize == 32);
  Bytes b = encode(msg(Ping{0x1122334455667788ull}, 0x0102030405060708ull));
  REQUIRE(b.size() == 32 + 8);
  CHECK(std::memcmp(b.data(), "STW1", 4) == 0);
  CHECK(b[4] == kProtocolVersion);  // version u16 LE
  CHECK(b[5] == 0);
  CHECK(b[6] == uint8_t(MessageType::Ping));  // type u16 LE
  CHECK(b[7] == 0);
  CHECK(rd32(b, 8) == 0);                            // flags
  CHECK(rd32(b, 12) == 0x05060708u);                 // seq low
  CHECK(rd32(b, 16) == 0x01020304u);                 // seq high
  CHECK(rd32(b, 20) == 8);                           // payload size
  CHECK(rd32(b, 24) == crc32c(b.data() + 32, 8));    // payload CRC
  CHECK(rd32(b, 28) == crc32c(b.data(), 28));        // header CRC
  CHECK(b[32] == 0x88);                              // payload LE
  Header h = read_header(b.data());
  CHECK(h.seq == 0x0102030405060708ull);
  CHECK(h.type == uint16_t(MessageType::Ping));
}

// st::Mode and st::BlobEncoding (common/) are every layer's enums; the protocol puts them on the
// wire as they are, so their values are docs/protocol.md's.
TEST_CASE("protocol: mode and blob encoding keep their wire values and Wild never goes on the wire",
          "[protocol][portable]") {
  STATIC_REQUIRE(uint8_t(st::Mode::Partial) == 0);
  STATIC_REQUIRE(uint8_t(st::Mode::Full) == 1);
  STATIC_REQUIRE(uint8_t(st::Mode::Naive) == 2);
  STATIC_REQUIRE(uint8_t(st::BlobEncoding::None) == 0);
  STATIC_REQUIRE(uint8_t(st::BlobEncoding::F32) == 1);
  STATIC_REQUIRE(uint8_t(st::BlobEncoding::F16) == 2);
  Hello h;
  h.frame_width = 4;
  h.frame_height = 3;
  for (st::Mode m : {st::Mode::Partial, st::Mode::Full, st::Mode::Naive}) {
    h.mode = m;
    CHECK(encode_payload(h)[4] == uint8_t(m));  // mode: payload offset 4
  }
  // The encoder refuses what the decoder refuses ("bad enums" below: the byte 3 on the wire).
  h.mode = st::Mode::Wild;
  CHECK_THROWS_WITH(encode_payload(h), Catch::Contains("HELLO.mode"));
  CHECK(st::parse_mode("naive", {st::Mode::Partial, st::Mode::Naive}) == st::Mode::Naive);
  CHECK_THROWS_WITH(st::parse_mode("wild", {st::Mode::Partial, st::Mode::Full, st::Mode::Naive}),
                    "unknown mode 'wild' (partial, full, naive)");
  CHECK(st::parse_blob_encoding("fp16") == st::BlobEncoding::F16);
  CHECK_THROWS_WITH(st::parse_blob_encoding("none"), "must be fp32 or fp16, not 'none'");
}

TEST_CASE("protocol: every message type round-trips", "[protocol][portable]") {
  auto bodies = sample_bodies();
  std::vector<bool> seen(kMaxMessageType + 1, false);
  for (auto& b : bodies) {
    Message m = msg(b);
    seen[size_t(m.type())] = true;
    INFO(message_type_name(m.type()));
    Bytes bytes = encode(m);
    auto got = decode_all(bytes);
    REQUIRE(got.size() == 1);
    CHECK(got[0] == m);
    // encode_payload is the part after the header.
    CHECK(Bytes(bytes.begin() + 32, bytes.end()) == encode_payload(b));
  }
  for (uint16_t t = 1; t <= kMaxMessageType; ++t) CHECK(seen[t]);
  // as<T>() on the wrong type names both types.
  Message p = msg(Ping{1});
  CHECK_THROWS_WITH(p.as<Pong>(), Catch::Contains("expected PONG, got PING"));
}

TEST_CASE("protocol: decoder accepts every split of a message", "[protocol][portable]") {
  for (auto& b : sample_bodies()) {
    Message m = msg(b);
    Bytes bytes = encode(m);
    INFO(message_type_name(m.type()) << ", " << bytes.size() << " bytes");
    for (size_t k = 0; k <= bytes.size(); ++k) {
      Decoder d;
      Message got;
      d.feed(bytes.data(), k);
      bool early = d.next(got);
      REQUIRE(early == (k == bytes.size()));
      d.feed(bytes.data() + k, bytes.size() - k);
      if (!early) REQUIRE(d.next(got));
      REQUIRE(got == m);
      REQUIRE_FALSE(d.next(got));
      REQUIRE(d.buffered() == 0);
      d.finish();
    }
    // One byte at a time.
    Decoder d;
    Message got;
    for (size_t i = 0; i < bytes.size(); ++i) {
      REQUIRE_FALSE(d.next(got));
      d.feed(bytes.data() + i, 1);
    }
    REQUIRE(d.next(got));
    REQUIRE(got == m);
  }
}

TEST_CASE("protocol: several messages back to back, any chunking", "[protocol][portable]") {
  Encoder enc;
  Bytes stream;
  std::vector<Message> sent;
  for (auto& b : sample_bodies()) {
    // One encoder speaks one version: its WELCOME announces that version.
    if (auto* w = std::get_if<Welcome>(&b)) w->version = enc.version();
    sent.push_back(Message{enc.next_seq(), enc.version(), b});
    enc.encode_to(b, stream);
  }
  CHECK(enc.next_seq() == sent.size());
  // All at once.
  auto got = decode_all(stream);
  REQUIRE(got.size() == sent.size());
  for (size_t i = 0; i < got.size(); ++i) CHECK(got[i] == sent[i]);
  // Random chunkings, popping as we go.
  std::mt19937 rng(42);
  for (int trial = 0; trial < 50; ++trial) {
    Decoder d;
    std::vector<Message> out;
    Message m;
    size_t pos = 0;
    while (pos < stream.size()) {
      size_t n = std::min<size_t>(stream.size() - pos, 1 + rng() % 97);
      d.feed(stream.data() + pos, n);
      pos += n;
      while (d.next(m)) out.push_back(m);
    }
    d.finish();
    REQUIRE(out == sent);
  }
}

TEST_CASE("protocol: big messages in 64 KiB and random chunks", "[protocol][portable]") {
  // A 1280x720 raw BGR key frame (2,764,800 B) and a full fp32 student (1,935,492 B).
  KeyFrame k;
  k.frame_index = 1234;
  k.width = 1280;
  k.height = 720;
  k.data = pattern(size_t(1280) * 720 * 3, 5);
  Update u;
  u.key_frame = 1234;
  u.next_stride = 64;
  u.accuracy = 0.5f;
  u.steps = 8;
  u.blob_kind = st::BlobEncoding::F32;
  u.blob = pattern(1935492, 6);
  Encoder enc;
  Bytes stream = enc.encode(k);
  CHECK(stream.size() == 32 + 21 + 2764800);
  enc.encode_to(u, stream);
  const std::vector<Message> want = {Message{0, kProtocolVersion, k},
                                     Message{1, kProtocolVersion, u}};

  auto decode = [&](auto chunk_size) {
    Decoder d;
    std::vector<Message> out;
    Message m;
    size_t pos = 0;
    while (pos < stream.size()) {
      size_t n = std::min<size_t>(stream.size() - pos, chunk_size());
      d.feed(stream.data() + pos, n);
      pos += n;
      while (d.next(m)) out.push_back(std::move(m));
    }
    d.finish();
    return out;
  };
  auto run = [&](auto chunk_size) {
    std::vector<Message> out = decode(chunk_size);
    REQUIRE(out.size() == want.size());
    CHECK(out[0] == want[0]);
    CHECK(out[1] == want[1]);
  };
  run([] { return size_t(65536); });
  std::mt19937 rng(7);
  for (int trial = 0; trial < 3; ++trial) run([&] { return size_t(1 + rng() % 200000); });

  // Linear time, measured so that the machine's speed and load do not matter: decoding the
  // stream in 64 KiB chunks costs about what decoding it from one buffer does, while a decoder
  // that rescans or moves its whole buffer on every feed would cost ~70x the bytes. Each is
  // timed on this thread's CPU clock (time other processes take is not counted), best of 3.
  auto thread_cpu_s = [] {
    timespec ts{};
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return double(ts.tv_sec) + 1e-9 * double(ts.tv_nsec);
  };
  auto best_of_3 = [&](auto chunk_size) {
    double best = 1e30;
    for (int i = 0; i < 3; ++i) {
      const double t0 = thread_cpu_s();
      const size_t got = decode(chunk_size).size();
      best = std::min(best, thread_cpu_s() - t0);
      REQUIRE(got == want.size());
    }
    return best;
  };
  const double whole = best_of_3([&] { return stream.size(); });
  const double chunked = best_of_3([] { return size_t(65536); });
  WARN("decoding 4.7 MB: " << chunked * 1e3 << " ms CPU in 64 KiB chunks, " << whole * 1e3
                           << " ms from one buffer (hardware crc32: " << crc32c_hardware() << ")");
  CHECK(chunked < 3.0 * whole);

  // A frame bigger than a small limit is refused from its header alone.
  DecoderOptions small;
  small.max_message_size = 1 << 20;
  expect_code(Bytes(stream.begin(), stream.begin() + 32), ErrorCode::Oversize, small);
}

TEST_CASE("protocol: malformed framing gives the specific error", "[protocol][portable]") {
  const Bytes ping = encode(msg(Ping{5}));

  SECTION("bad magic, detected from the first byte") {
    Bytes b = ping;
    b[0] = 'X';
    CHECK_THAT(expect_code(b, ErrorCode::BadMagic), Catch::Contains("STW1"));
    expect_code(Bytes{'X'}, ErrorCode::BadMagic);
    b = ping;
    b[3] = '2';
    expect_code(b, ErrorCode::BadMagic, {}, 1);
  }
  SECTION("header CRC") {
    Bytes b = ping;
    b[20] ^= 1;  // payload size, header CRC not updated
    expect_code(b, ErrorCode::BadHeaderCrc);
    b = ping;
    b[29] ^= 0x80;
    expect_code(b, ErrorCode::BadHeaderCrc);
  }
  SECTION("unsupported version") {
    CHECK_THAT(expect_code(frame(uint16_t(MessageType::Ping), Bytes(8), 0, kVersionMax + 1),
                           ErrorCode::UnsupportedVersion),
               Catch::Contains("version " + std::to_string(kVersionMax + 1)));
    expect_code(frame(uint16_t(MessageType::Ping), Bytes(8), 0, 0), ErrorCode::UnsupportedVersion);
    // HELLO and ERROR are readable under any version >= 1 (their layout never changes) ...
    Bytes err = encode_payload(ErrorMessage{ErrorCode::UnsupportedVersion, "speak 1..1"});
    auto got = decode_all(frame(uint16_t(MessageType::Error), err, 0, 9));
    REQUIRE(got.size() == 1);
    CHECK(got[0].version == 9);
    Bytes hello = encode_payload(sample_bodies()[0]);
    CHECK(decode_all(frame(uint16_t(MessageType::Hello), hello, 0, 500)).size() == 1);
    // ... but not version 0.
    expect_code(frame(uint16_t(MessageType::Hello), hello, 0, 0), ErrorCode::UnsupportedVersion);
  }
  SECTION("unknown type") {
    for (uint16_t t : {uint16_t(0), uint16_t(kMaxMessageType + 1), uint16_t(0xFFFF)})
      CHECK_THAT(expect_code(frame(t, Bytes(8)), ErrorCode::UnknownType),
                 Catch::Contains(std::to_string(t)));
  }
  SECTION("reserved flags") {
    expect_code(frame(uint16_t(MessageType::Ping), Bytes(8), 0, 1, 4), ErrorCode::BadFlags);
  }
  SECTION("oversize from the header alone") {
    // Only the 32 header bytes are fed: a 20 MiB KEY_FRAME is refused inside feed().
    Bytes h(32);
    Header hd;
    hd.type = uint16_t(MessageType::KeyFrame);
    hd.payload_size = 20u << 20;
    write_header(hd, h.data());
    Decoder d;
    try {
      d.feed(h);
      FAIL("feed accepted an oversize header");
    } catch (const ProtocolError& e) {
      CHECK(e.code() == ErrorCode::Oversize);
      CHECK_THAT(e.what(), Catch::Contains("KEY_FRAME"));
    }
    CHECK(d.failed());
    // Exactly at the limit is fine (header seen, payload pending).
    DecoderOptions opt;
    opt.max_message_size = 32 + 1000;
    hd.payload_size = 1000;
    write_header(hd, h.data());
    Decoder ok(opt);
    ok.feed(h);
    Message m;
    CHECK_FALSE(ok.next(m));
    hd.payload_size = 1001;
    write_header(hd, h.data());
    expect_code(h, ErrorCode::Oversize, opt);
    // Header and payload in one feed(): refused before the payload is buffered.
    Bytes whole = h;
    whole.resize(32 + 1001, 0);
    Decoder early(opt);
    CHECK_THROWS_AS(early.feed(whole), ProtocolError);
    CHECK(early.buffered() == 32);
    // Per-type caps: a HELLO larger than its fields allow, a PING of 9 bytes.
    expect_code(frame(uint16_t(MessageType::Hello), Bytes(34 + 1024 + 256 + 1)),
                ErrorCode::Oversize);
    expect_code(frame(uint16_t(MessageType::Ping), Bytes(9)), ErrorCode::Oversize);
    expect_code(frame(uint16_t(MessageType::Bye), Bytes(1)), ErrorCode::Oversize);
  }
  SECTION("payload shorter than the type's fixed fields, from the header") {
    expect_code(frame(uint16_t(MessageType::Ping), Bytes(7)), ErrorCode::Truncated);
    expect_code(frame(uint16_t(MessageType::Update), Bytes(10)), ErrorCode::Truncated);
  }
  SECTION("payload CRC mismatch") {
    Bytes b = ping;
    b[35] ^= 0x10;
    CHECK_THAT(expect_code(b, ErrorCode::BadCrc), Catch::Contains("PING"));
  }
  SECTION("sequence numbers") {
    Bytes b = encode(msg(Ping{1}, 0));
    Bytes two = encode(msg(Ping{2}, 2));
    b.insert(b.end(), two.begin(), two.end());
    CHECK_THAT(expect_code(b, ErrorCode::BadSequence), Catch::Contains("expected 1"));
    DecoderOptions lax;
    lax.check_sequence = false;
    CHECK(decode_all(b, lax).size() == 2);
    expect_code(encode(msg(Ping{1}, 1)), ErrorCode::BadSequence);
  }
  SECTION("stream ends inside a message") {
    Bytes b(ping.begin(), ping.end() - 1);
    expect_code(b, ErrorCode::Truncated);
    expect_code(Bytes(ping.begin(), ping.begin() + 10), ErrorCode::Truncated);
    Decoder d;
    d.feed(b);
    CHECK_THROWS_WITH(d.finish(), Catch::Contains("PING"));
  }
  SECTION("the decoder is poisoned after an error") {
    Bytes b = ping;
    b[0] = 0;
    Decoder d;
    CHECK_THROWS_AS(d.feed(b), ProtocolError);
    CHECK(d.failed());
    Message m;
    CHECK_THROWS_WITH(d.next(m), Catch::Contains("already failed"));
    CHECK_THROWS_AS(d.feed(ping), ProtocolError);
    CHECK_THROWS_AS(d.finish(), ProtocolError);
  }
}

TEST_CASE("protocol: malformed payloads name the field", "[protocol][portable]") {
  auto bodies = sample_bodies();
  const Bytes hello = encode_payload(bodies[0]);  // token 6 B, name 13 B
  KeyFrame png;
  png.frame_index = 3;
  png.encoding = FrameEncoding::Png;
  png.width = 4;
  png.height = 4;
  png.data = pattern(10, 1);
  const Bytes kf = encode_payload(png);  // frame_index 0, encoding 8, width 9, height 13, len 17

  SECTION("bad enums") {
    Bytes b = kf;
    b[8] = 7;
    CHECK_THAT(expect_code(frame(MessageType::KeyFrame, b), ErrorCode::Malformed),
               Catch::Contains("KEY_FRAME.encoding"));
    b = hello;
    b[4] = 3;  // mode
    CHECK_THAT(expect_code(frame(MessageType::Hello, b), ErrorCode::Malformed),
               Catch::Contains("HELLO.mode"));
    b = hello;
    b[5] = 4;  // accept_blobs unknown bit
    CHECK_THAT(expect_code(frame(MessageType::Hello, b), ErrorCode::Malformed),
               Catch::Contains("accept_blobs"));
    Bytes u = encode_payload(bodies[7]);  // UPDATE, blob None; blob_kind at 20
    u[20] = 4;
    CHECK_THAT(expect_code(frame(MessageType::Update, u), ErrorCode::Malformed),
               Catch::Contains("UPDATE.blob_kind"));
    Bytes w = encode_payload(bodies[3]);  // WELCOME; scope at 24
    w[24] = 3;
    CHECK_THAT(expect_code(frame(MessageType::Welcome, w), ErrorCode::Malformed),
               Catch::Contains("WELCOME.scope"));
    Bytes e = encode_payload(bodies[11]);  // ERROR code 0
    e[0] = e[1] = 0;
    CHECK_THAT(expect_code(frame(MessageType::Error, e), ErrorCode::Malformed),
               Catch::Contains("ERROR.code"));
  }
  SECTION("truncated fields") {
    // Every proper prefix of the payload (with a header that agrees with it) is refused as
    // Truncated, either from the header (below the type's minimum) or at the missing field.
    for (size_t n = 0; n < kf.size(); ++n)
      expect_code(frame(MessageType::KeyFrame, Bytes(kf.begin(), kf.begin() + long(n))),
                  ErrorCode::Truncated);
    for (size_t n = 0; n < hello.size(); ++n)
      expect_code(frame(MessageType::Hello, Bytes(hello.begin(), hello.begin() + long(n))),
                  ErrorCode::Truncated);
  }
  SECTION("length fields larger than what is left") {
    Bytes b = kf;
    wr32(b, 17, 1000);
    CHECK_THAT(expect_code(frame(MessageType::KeyFrame, b), ErrorCode::Truncated),
               Catch::Contains("KEY_FRAME.data: length 1000"));
    b = hello;
    b[30] = 200;  // auth_token length 200 > bytes left
    CHECK_THAT(expect_code(frame(MessageType::Hello, b), ErrorCode::Truncated),
               Catch::Contains("HELLO.auth_token"));
  }
  SECTION("a huge count is refused before any allocation") {
    Bytes b = kf;
    wr32(b, 17, 0xFFFFFFFFu);
    CHECK_THAT(expect_code(frame(MessageType::KeyFrame, b), ErrorCode::Truncated),
               Catch::Contains("4294967295"));
    Bytes u = encode_payload(bodies[8]);  // UPDATE with F32 blob; length at 21
    wr32(u, 21, 0xFFFFFFF0u);
    expect_code(frame(MessageType::Update, u), ErrorCode::Truncated);
    // A string longer than its cap is Malformed, whatever follows.
    Bytes h = hello;
    h[30] = 0xFF;
    h[31] = 0xFF;
    CHECK_THAT(expect_code(frame(MessageType::Hello, h), ErrorCode::Malformed),
               Catch::Contains("exceeds the limit 1024"));
  }
  SECTION("trailing bytes") {
    Bytes b = kf;
    b.push_back(0);
    CHECK_THAT(expect_code(frame(MessageType::KeyFrame, b), ErrorCode::TrailingBytes),
               Catch::Contains("KEY_FRAME: 1 bytes after"));
    b = hello;
    b.push_back(1);
    b.push_back(2);
    expect_code(frame(MessageType::Hello, b), ErrorCode::TrailingBytes);
  }
  SECTION("values out of range") {
    // The encoder refuses bad values (so the wire bytes below are patched by hand) ...
    KeyFrame raw = std::get<KeyFrame>(bodies[4]);
    raw.data.pop_back();  // 35 bytes for 4x3x3
    CHECK_THROWS_WITH(encode_payload(raw), Catch::Contains("KEY_FRAME.data"));
    // ... and the decoder refuses them on the wire.
    Bytes r = encode_payload(bodies[4]);
    wr32(r, 9, 5);  // width 5: 60 bytes needed
    CHECK_THAT(expect_code(frame(MessageType::KeyFrame, r), ErrorCode::Malformed),
               Catch::Contains("KEY_FRAME.data"));
    wr32(r, 9, 0);
    CHECK_THAT(expect_code(frame(MessageType::KeyFrame, r), ErrorCode::Malformed),
               Catch::Contains("KEY_FRAME.width"));
    Bytes l = encode_payload(bodies[10]);  // LABELS 5x2; height at 12
    wr32(l, 12, 3);
    CHECK_THAT(expect_code(frame(MessageType::Labels, l), ErrorCode::Malformed),
               Catch::Contains("LABELS.labels"));
    Bytes w = encode_payload(bodies[2]);  // WELCOME: min_stride 12, max 16, threshold 20
    wr32(w, 12, 65);
    CHECK_THAT(expect_code(frame(MessageType::Welcome, w), ErrorCode::Malformed),
               Catch::Contains("WELCOME.max_stride"));
    w = encode_payload(bodies[2]);
    wr32(w, 20, 0x7FC00000u);  // NaN threshold
    CHECK_THAT(expect_code(frame(MessageType::Welcome, w), ErrorCode::Malformed),
               Catch::Contains("WELCOME.threshold"));
    w = encode_payload(bodies[2]);
    w[11] = kAcceptPng;  // no raw BGR
    expect_code(frame(MessageType::Welcome, w), ErrorCode::Malformed);
    // WELCOME goes under the version it announces: a version-2 payload under header version 1.
    CHECK_THAT(expect_code(frame(uint16_t(MessageType::Welcome), encode_payload(bodies[3]), 0, 1),
                           ErrorCode::Malformed),
               Catch::Contains("sent under header version 1"));
    w = encode_payload(bodies[2]);
    w[25] = uint8_t(st::BlobEncoding::None);  // None with a 100-byte blob
    CHECK_THAT(expect_code(frame(MessageType::Welcome, w), ErrorCode::Malformed),
               Catch::Contains("WELCOME.blob"));
    Bytes u = encode_payload(bodies[7]);  // UPDATE: next_stride 8, accuracy 12, steps 16
    wr32(u, 8, 0);
    CHECK_THAT(expect_code(frame(MessageType::Update, u), ErrorCode::Malformed),
               Catch::Contains("UPDATE.next_stride"));
    u = encode_payload(bodies[7]);
    u[20] = uint8_t(st::BlobEncoding::F16);  // F16 with an empty blob
    expect_code(frame(MessageType::Update, u), ErrorCode::Malformed);
    Bytes h = encode_payload(bodies[0]);
    h[0] = 4;  // min_version 4 > max_version 3
    CHECK_THAT(expect_code(frame(MessageType::Hello, h), ErrorCode::Malformed),
               Catch::Contains("HELLO.max_version"));
    h = encode_payload(bodies[0]);
    wr32(h, 22, kMaxFrameDim + 1);
    CHECK_THAT(expect_code(frame(MessageType::Hello, h), ErrorCode::Malformed),
               Catch::Contains("HELLO.frame_width"));
  }
  SECTION("the encoder refuses what the decoder would") {
    Hello h = std::get<Hello>(bodies[0]);
    h.auth_token.assign(kMaxAuthToken + 1, 'x');
    CHECK_THROWS_AS(encode(msg(h)), ProtocolError);
    Update u = std::get<Update>(bodies[7]);
    u.accuracy = std::numeric_limits<float>::infinity();
    CHECK_THROWS_AS(encode(msg(u)), ProtocolError);
    Encoder enc;
    Bytes out;
    CHECK_THROWS_AS(enc.encode_to(u, out), ProtocolError);
    CHECK(out.empty());
    CHECK(enc.next_seq() == 0);  // a refused message takes no sequence number
  }
}

TEST_CASE("protocol: version negotiation", "[protocol][portable]") {
  CHECK(negotiate_version(1, 1, 1, 1) == std::optional<uint16_t>(1));
  CHECK(negotiate_version(1, 5, 2, 3) == std::optional<uint16_t>(3));
  CHECK(negotiate_version(3, 5, 1, 4) == std::optional<uint16_t>(4));
  CHECK_FALSE(negotiate_version(2, 3, 1, 1).has_value());
  CHECK_FALSE(negotiate_version(5, 6, 1, 4).has_value());
  CHECK_FALSE(negotiate_version(0, 0, 0, 0).has_value());
  CHECK(negotiate_version(kVersionMin, kVersionMax) == std::optional<uint16_t>(kVersionMax));

  // A server speaking 1..2 locks its decoder to the chosen version after HELLO.
  Decoder d(DecoderOptions{kDefaultMaxMessageSize, 1, 2, true});
  Encoder edge(1);
  Hello h = std::get<Hello>(sample_bodies()[0]);  // edge speaks 1..3
  d.feed(edge.encode(h));
  Message m;
  REQUIRE(d.next(m));
  auto v = negotiate_version(m.as<Hello>().min_version, m.as<Hello>().max_version, 1, 2);
  REQUIRE(v == std::optional<uint16_t>(2));
  d.set_versions(*v, *v);
  edge.set_version(*v);
  d.feed(edge.encode(Ping{1}));
  REQUIRE(d.next(m));
  CHECK(m.version == 2);
  Bytes b = encode(Message{2, 1, Ping{2}});  // a version-1 PING after locking to 2
  CHECK_THROWS_AS(d.feed(b), ProtocolError);  // refused from the header, inside feed()
  CHECK_THROWS_AS(Decoder(DecoderOptions{kDefaultMaxMessageSize, 2, 1, true}), st::Error);
}

TEST_CASE("protocol: constant_time_equal", "[protocol][portable]") {
  CHECK(constant_time_equal("", ""));
  CHECK(constant_time_equal("token", "token"));
  CHECK_FALSE(constant_time_equal("token", "tokeN"));
  CHECK_FALSE(constant_time_equal("token", "token!"));
  CHECK_FALSE(constant_time_equal("token!", "token"));
  CHECK_FALSE(constant_time_equal("", "x"));
  CHECK_FALSE(constant_time_equal("x", ""));
  CHECK_FALSE(constant_time_equal("abab", "ab"));  // b repeated must not match
  CHECK(constant_time_equal(std::string("a\0b", 3), std::string("a\0b", 3)));
  CHECK_FALSE(constant_time_equal(std::string("a\0b", 3), std::string("a\0c", 3)));
}

namespace {
// The conversation checker refuses `m` (sent by this side, or received) as UnexpectedMessage
// with a text that contains `why`.
void expect_unexpected_message(Conversation& c, bool send, const Message& m, const char* why) {
  INFO(why);
  try {
    send ? c.on_send(m) : c.on_receive(m);
    FAIL("accepted");
  } catch (const ProtocolError& e) {
    CHECK(e.code() == ErrorCode::UnexpectedMessage);
    CHECK_THAT(e.what(), Catch::Contains(why));
  }
}
}  // namespace

TEST_CASE("protocol: conversation rules", "[protocol][portable]") {
  Hello h;
  h.frame_width = 4;
  h.frame_height = 3;
  h.accept_blobs = kAcceptF32;
  Welcome w;
  w.blob_kind = st::BlobEncoding::F32;
  w.blob = {1, 2, 3};
  KeyFrame k;
  k.frame_index = 0;
  k.width = 4;
  k.height = 3;
  k.data = Bytes(36, 1);
  Update u;
  u.key_frame = 0;
  u.next_stride = 8;
  u.blob_kind = st::BlobEncoding::F32;
  u.blob = {9};

  SECTION("a whole session, seen from both ends") {
    Conversation edge(Role::Edge), server(Role::Server);
    auto e2s = [&](Body b) {
      Message m = msg(std::move(b));
      edge.on_send(m);
      server.on_receive(m);
    };
    auto s2e = [&](Body b) {
      Message m = msg(std::move(b));
      server.on_send(m);
      edge.on_receive(m);
    };
    e2s(h);
    s2e(w);
    CHECK(edge.welcomed());
    e2s(k);
    CHECK(server.outstanding_key_frames() == 1);
    e2s(Ping{7});
    s2e(Pong{7});
    s2e(u);
    KeyFrame k2 = k;
    k2.frame_index = 8;
    e2s(k2);
    Update u2 = u;
    u2.key_frame = 8;
    u2.blob_kind = st::BlobEncoding::None;
    u2.blob.clear();
    s2e(u2);
    s2e(Ping{1});
    e2s(Pong{1});
    e2s(Bye{});
    CHECK_FALSE(server.closed());
    s2e(Bye{});
    CHECK(server.closed());
    CHECK(edge.closed());
  }
  SECTION("violations") {
    auto expect_unexpected = [](Conversation& c, bool send, Body b, const char* why) {
      expect_unexpected_message(c, send, msg(std::move(b)), why);
    };
    Conversation s(Role::Server);
    expect_unexpected(s, false, k, "before WELCOME");
    expect_unexpected(s, false, w, "only the server");
    expect_unexpected(s, true, w, "no HELLO");
    s.on_receive(msg(h));
    expect_unexpected(s, false, h, "already");
    Welcome w3 = w;
    w3.version = kVersionMax + 1;
    expect_unexpected(s, true, w3, "outside HELLO");
    Welcome wf16 = w;
    wf16.blob_kind = st::BlobEncoding::F16;
    expect_unexpected(s, true, wf16, "accept_blobs");
    s.on_send(msg(w));
    KeyFrame big = k;
    big.width = 5;
    big.data = Bytes(45, 0);
    expect_unexpected(s, false, big, "frame size");
    s.on_receive(msg(k));
    expect_unexpected(s, false, k, "does not follow");
    KeyFrame k2 = k;
    k2.frame_index = 3;
    expect_unexpected(s, false, k2, "not answered");
    Update wrong = u;
    wrong.key_frame = 1;
    expect_unexpected(s, true, wrong, "pending key frame is 0");
    Update stride = u;
    stride.next_stride = 65;
    expect_unexpected(s, true, stride, "next_stride");
    Labels l;
    l.frame_index = 0;
    l.width = 4;
    l.height = 3;
    l.labels = Bytes(12, 0);
    expect_unexpected(s, true, l, "answers with UPDATE");
    s.on_send(msg(u));
    expect_unexpected(s, true, u, "no key frame is pending");
    expect_unexpected(s, false, Pong{3}, "oldest PING");
    s.on_receive(msg(ErrorMessage{ErrorCode::BadFrame, "x"}));
    CHECK(s.closed());
    expect_unexpected(s, true, Ping{1}, "ended with an ERROR");
  }
}

TEST_CASE("protocol: version 3 session migration: a WELCOME of scope Wanted asks for the "
          "edge's WEIGHTS, which must come first and in fp32", "[protocol][portable]") {
  Hello h;
  h.frame_width = 4;
  h.frame_height = 3;
  h.accept_blobs = kAcceptF32 | kAcceptF16;
  Welcome w;
  w.version = 3;
  w.scope = WeightsScope::Wanted;
  KeyFrame k;
  k.width = 4;
  k.height = 3;
  k.data = Bytes(36, 1);
  const Weights up{st::BlobEncoding::F32, {1, 2, 3, 4}};

  SECTION("the codec: Wanted needs version 3, no blob, a mode with weights") {
    Welcome ok = w;
    CHECK_NOTHROW(validate(ok));
    Welcome v2 = w;
    v2.version = 2;
    CHECK_THROWS_WITH(validate(v2), Catch::Contains("scope") && Catch::Contains("version 3"));
    Welcome blob = w;
    blob.blob_kind = st::BlobEncoding::F32;
    blob.blob = {1};
    CHECK_THROWS_WITH(validate(blob), Catch::Contains("no blob"));
    Welcome naive = w;
    naive.mode = st::Mode::Naive;
    naive.train_from = 0;
    CHECK_THROWS_WITH(validate(naive), Catch::Contains("Naive"));
    Welcome unknown = w;
    unknown.scope = WeightsScope(3);
    CHECK_THROWS_WITH(validate(unknown), Catch::Contains("scope"));
  }
  auto expect_unexpected = [](Conversation& c, bool send, const Body& b, const char* why) {
    expect_unexpected_message(c, send, Message{0, 3, b}, why);
  };
  SECTION("the conversation, from both ends") {
    for (Role self : {Role::Server, Role::Edge}) {
      INFO((self == Role::Server ? "server" : "edge"));
      Conversation c(self);
      const bool server = self == Role::Server;
      auto from_edge = [&](const Body& b) {
        Message m{0, 3, b};
        server ? c.on_receive(m) : c.on_send(m);
      };
      from_edge(h);
      Message wm{0, 3, w};
      server ? c.on_send(wm) : c.on_receive(wm);
      expect_unexpected(c, !server, k, "WEIGHTS first");
      expect_unexpected(c, !server, Resync{1}, "WEIGHTS first");
      expect_unexpected(c, !server, Weights{st::BlobEncoding::F16, {1, 2}}, "fp32");
      from_edge(Ping{1});  // PING and PONG may go meanwhile
      from_edge(up);
      expect_unexpected(c, !server, up, "only when WELCOME asked");
      from_edge(k);  // then the session goes on as any other
      // The server still sends WEIGHTS only to answer RESYNC.
      expect_unexpected(c, server, up, "no RESYNC");
    }
  }
  SECTION("an edge's WEIGHTS without a WELCOME that asked for them") {
    Conversation c(Role::Server);
    c.on_receive(Message{0, 3, h});
    Welcome trained = w;
    trained.scope = WeightsScope::Trained;
    c.on_send(Message{0, 3, trained});
    expect_unexpected(c, false, up, "only when WELCOME asked");
    c.on_receive(Message{0, 3, k});
  }
}

TEST_CASE("protocol: corpus replay", "[protocol][portable]") {
  auto files = corpus_files();
  if (files.empty()) ST_SKIP("tests/protocol_corpus/ is missing");
  size_t ok = 0, err = 0;
  for (auto& path : files) {
    const std::string name = path.filename().string();
    INFO(name);
    Bytes bytes = read_file(path);
    // Fed whole, then in 7-byte pieces: the same messages and the same outcome.
    std::string outcome[2];
    std::vector<Message> msgs[2];
    for (int pass = 0; pass < 2; ++pass) {
      Decoder d;
      Message m;
      try {
        size_t pos = 0, step = pass == 0 ? std::max<size_t>(bytes.size(), 1) : 7;
        while (pos < bytes.size()) {
          size_t n = std::min(step, bytes.size() - pos);
          d.feed(bytes.data() + pos, n);
          pos += n;
          while (d.next(m)) msgs[pass].push_back(m);
        }
        d.finish();
        outcome[pass] = "ok";
      } catch (const ProtocolError& e) {
        outcome[pass] = error_code_name(e.code());
      }  // anything else escapes and fails the test
    }
    CHECK(outcome[0] == outcome[1]);
    CHECK(msgs[0] == msgs[1]);
    // Names say what to expect: ok_*.bin decode fully; err_<Code>_*.bin fail with <Code>;
    // other names (fuzzer finds) only must not crash.
    if (name.rfind("ok_", 0) == 0) {
      CHECK(outcome[0] == "ok");
      CHECK_FALSE(msgs[0].empty());
      // The encoding is canonical: re-encoding gives the same bytes.
      Bytes again;
      for (auto& m : msgs[0]) encode_to(m, again);
      CHECK(again == bytes);
      ++ok;
    } else if (name.rfind("err_", 0) == 0) {
      std::string code = name.substr(4, name.find('_', 4) - 4);
      CHECK(outcome[0] == code);
      ++err;
    }
  }
  CHECK(ok >= kMaxMessageType);
  CHECK(err >= 10);
}

// Writes the seed corpus. Hidden: run by hand after a format change,
//   st_tests "[.protocol-corpus-gen]"
// then review and commit tests/protocol_corpus/.
TEST_CASE("protocol: regenerate the seed corpus", "[.protocol-corpus-gen]") {
  auto dir = st::test::source_dir() / "tests" / "protocol_corpus";
  std::filesystem::create_directories(dir);
  auto write = [&](const std::string& name, const Bytes& b) {
    std::ofstream f(dir / name, std::ios::binary);
    f.write(reinterpret_cast<const char*>(b.data()), std::streamsize(b.size()));
  };
  auto bodies = sample_bodies();
  const char* names[] = {"hello",      "hello_naive", "welcome_f32", "welcome_none",
                         "keyframe_raw", "keyframe_png", "keyframe_jpeg", "update_none",
                         "update_f32", "update_f16", "labels", "error", "error_newcode",
                         "ping", "pong", "bye", "resync", "weights"};
  REQUIRE(std::size(names) == bodies.size());
  for (size_t i = 0; i < bodies.size(); ++i)
    write(std::string("ok_") + names[i] + ".bin", encode(msg(bodies[i])));
  {  // Version 2's split: training from enc3, biases and BN affine only, an fp16 blob.
    Welcome w;
    w.session_id = 3;
    w.train_from = 4;
    w.train = TrainedTensors::BiasOnly;
    w.blob_kind = st::BlobEncoding::F16;
    w.blob = pattern(6, 4);
    write("ok_welcome_split_bias.bin", encode(msg(w)));
  }
  {  // Version 3's session migration: WELCOME asks for the edge's weights; the edge's WEIGHTS.
    Welcome w;
    w.version = 3;
    w.session_id = 4;
    w.scope = WeightsScope::Wanted;
    write("ok_welcome_wanted_v3.bin", encode(msg(w)));
    write("ok_weights_edge_v3.bin",
          encode(Message{0, 3, Weights{st::BlobEncoding::F32, pattern(8, 6)}}));
  }
  // Conversations, one direction each.
  Encoder e;
  Bytes edge = e.encode(bodies[0]);
  e.encode_to(bodies[4], edge);
  e.encode_to(Ping{9}, edge);
  e.encode_to(Pong{4}, edge);
  e.encode_to(Bye{}, edge);
  write("ok_stream_edge.bin", edge);
  Encoder s;
  Welcome welcome = std::get<Welcome>(bodies[2]);
  welcome.version = s.version();  // the encoder's version, which WELCOME announces
  Bytes server = s.encode(welcome);
  s.encode_to(bodies[8], server);
  s.encode_to(bodies[7], server);
  s.encode_to(Ping{4}, server);
  s.encode_to(bodies[10], server);
  s.encode_to(ErrorMessage{ErrorCode::ShuttingDown, "bye"}, server);
  write("ok_stream_server.bin", server);

  Bytes ping = encode(msg(Ping{5}));
  Bytes b = ping;
  b[0] = 'X';
  write("err_BadMagic_first_byte.bin", b);
  b = ping;
  b[20] ^= 1;
  write("err_BadHeaderCrc_size.bin", b);
  write("err_UnsupportedVersion_ping_v" + std::to_string(kVersionMax + 1) + ".bin",
        frame(uint16_t(MessageType::Ping), Bytes(8), 0, kVersionMax + 1));
  write("err_UnknownType_10.bin", frame(uint16_t(10), Bytes(8)));  // RESYNC is version 2's
  write("err_UnknownType_12_v2.bin", frame(uint16_t(12), Bytes(8), 0, 2));
  write("err_BadFlags_ping.bin", frame(uint16_t(MessageType::Ping), Bytes(8), 0, 1, 1));
  {
    Bytes h(32);
    Header hd;
    hd.type = uint16_t(MessageType::KeyFrame);
    hd.payload_size = 20u << 20;
    write_header(hd, h.data());
    write("err_Oversize_keyframe_header_only.bin", h);
  }
  write("err_Oversize_ping_9.bin", frame(uint16_t(MessageType::Ping), Bytes(9)));
  b = ping;
  b[35] ^= 0x10;
  write("err_BadCrc_ping.bin", b);
  Bytes two = encode(msg(Ping{1}, 0));
  Bytes seq2 = encode(msg(Ping{2}, 2));
  two.insert(two.end(), seq2.begin(), seq2.end());
  write("err_BadSequence_skip.bin", two);
  write("err_Truncated_end_of_stream.bin", Bytes(ping.begin(), ping.end() - 1));
  KeyFrame png;
  png.frame_index = 3;
  png.encoding = FrameEncoding::Png;
  png.width = 4;
  png.height = 4;
  png.data = pattern(10, 1);
  Bytes kf = encode_payload(png);
  Bytes k = kf;
  wr32(k, 17, 0xFFFFFFFFu);
  write("err_Truncated_keyframe_huge_length.bin", frame(MessageType::KeyFrame, k));
  k = kf;
  k[8] = 7;
  write("err_Malformed_keyframe_encoding.bin", frame(MessageType::KeyFrame, k));
  k = kf;
  k.push_back(0);
  write("err_TrailingBytes_keyframe.bin", frame(MessageType::KeyFrame, k));
  Bytes h = encode_payload(bodies[0]);
  h[30] = 0xFF;
  h[31] = 0xFF;
  write("err_Malformed_hello_token_cap.bin", frame(MessageType::Hello, h));
  Bytes l = encode_payload(bodies[10]);
  wr32(l, 12, 3);
  write("err_Malformed_labels_size.bin", frame(MessageType::Labels, l));
  // A valid message followed by garbage: the first decodes, then BadMagic.
  Bytes vg = encode(msg(Ping{1}));
  vg.insert(vg.end(), {'G', 'E', 'T', ' ', '/'});
  write("err_BadMagic_after_valid.bin", vg);

  // Regression seed: the empty input (it crashed an early version of the fuzz target).
  write("fuzz_empty_input.bin", Bytes{});
  // A seed for the fuzz target's conversation-script pass (protocol/fuzz_decoder.cc, pass 4):
  // 3 bytes per message, byte 0 = sender (bit 0: edge 0, server 1) | (type - 1) << 1. As a
  // stream it is garbage (BadMagic), which the replay only requires not to crash.
  write("script_session.bin", Bytes{0, 0, 0,     // edge HELLO, Partial, F32, versions 1..1
                                    3, 0, 0,     // server WELCOME v1, no blob
                                    4, 0, 0,     // edge KEY_FRAME 0, raw 4x3
                                    7, 0, 7,     // server UPDATE 0, stride 8, no change
                                    12, 1, 0,    // edge PING 1
                                    15, 1, 0,    // server PONG 1
                                    16, 0, 0,    // edge BYE
                                    17, 0, 0});  // server BYE
}
