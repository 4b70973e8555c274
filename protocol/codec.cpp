// Encoding and decoding of the header and of every message payload (docs/protocol.md).
// Payloads are read by a bounds-checked Reader: every fixed field checks the bytes left, every
// length prefix is checked against the bytes left before anything is allocated, and a payload
// must end exactly after its last field. Field values are then checked by validate(), which the
// encoder runs too, so we never send what a peer would reject.
#include <cmath>
#include <cstring>
#include <limits>

#include "protocol/crc32c.h"
#include "protocol/protocol.h"

namespace st::protocol {

static_assert(std::variant_size_v<Body> == kMaxMessageType);
static_assert(std::is_same_v<std::variant_alternative_t<size_t(MessageType::Bye) - 1, Body>, Bye>);
static_assert(std::is_same_v<std::variant_alternative_t<size_t(MessageType::Error) - 1, Body>,
                             ErrorMessage>);
static_assert(sizeof(float) == 4 && std::numeric_limits<float>::is_iec559);

const char* message_type_name(MessageType t) {
  switch (t) {
    case MessageType::Hello: return "HELLO";
    case MessageType::Welcome: return "WELCOME";
    case MessageType::KeyFrame: return "KEY_FRAME";
    case MessageType::Update: return "UPDATE";
    case MessageType::Labels: return "LABELS";
    case MessageType::Error: return "ERROR";
    case MessageType::Ping: return "PING";
    case MessageType::Pong: return "PONG";
    case MessageType::Bye: return "BYE";
    case MessageType::Resync: return "RESYNC";
    case MessageType::Weights: return "WEIGHTS";
  }
  return "UNKNOWN";
}

const char* error_code_name(ErrorCode c) {
  switch (c) {
    case ErrorCode::BadMagic: return "BadMagic";
    case ErrorCode::UnsupportedVersion: return "UnsupportedVersion";
    case ErrorCode::UnknownType: return "UnknownType";
    case ErrorCode::Oversize: return "Oversize";
    case ErrorCode::BadHeaderCrc: return "BadHeaderCrc";
    case ErrorCode::BadCrc: return "BadCrc";
    case ErrorCode::BadFlags: return "BadFlags";
    case ErrorCode::BadSequence: return "BadSequence";
    case ErrorCode::Truncated: return "Truncated";
    case ErrorCode::Malformed: return "Malformed";
    case ErrorCode::TrailingBytes: return "TrailingBytes";
    case ErrorCode::UnexpectedMessage: return "UnexpectedMessage";
    case ErrorCode::AuthFailed: return "AuthFailed";
    case ErrorCode::LayoutMismatch: return "LayoutMismatch";
    case ErrorCode::BadFrame: return "BadFrame";
    case ErrorCode::UnsupportedMode: return "UnsupportedMode";
    case ErrorCode::Busy: return "Busy";
    case ErrorCode::Internal: return "Internal";
    case ErrorCode::Timeout: return "Timeout";
    case ErrorCode::ShuttingDown: return "ShuttingDown";
    case ErrorCode::Overflow: return "Overflow";
    case ErrorCode::SplitMismatch: return "SplitMismatch";
    case ErrorCode::WeightsMismatch: return "WeightsMismatch";
  }
  return "Unknown";
}

ProtocolError::ProtocolError(ErrorCode code, const std::string& text)
    : st::Error(std::string(error_code_name(code)) + ": " + text), code_(code), text_(text) {}

namespace detail {
void wrong_body(MessageType have, size_t want_index) {
  throw ProtocolError(ErrorCode::UnexpectedMessage,
                      std::string("expected ") + message_type_name(MessageType(want_index + 1)) +
                          ", got " + message_type_name(have));
}
}  // namespace detail

namespace {

[[noreturn]] void fail(ErrorCode c, const std::string& s) { throw ProtocolError(c, s); }

// ---- little-endian writer ----
class Writer {
 public:
  explicit Writer(std::vector<uint8_t>& out) : out_(out) {}
  void u8(uint8_t v) { *grow(1) = v; }
  void u16(uint16_t v) { put(v, 2); }
  void u32(uint32_t v) { put(v, 4); }
  void u64(uint64_t v) { put(v, 8); }
  void f32(float v) {
    uint32_t b;
    std::memcpy(&b, &v, 4);
    u32(b);
  }
  void bytes(const uint8_t* p, size_t n) {
    if (n > 0) std::memcpy(grow(n), p, n);
  }
  void str16(const std::string& s) {  // caller validated s.size() <= 0xFFFF
    u16(uint16_t(s.size()));
    bytes(reinterpret_cast<const uint8_t*>(s.data()), s.size());
  }
  void bytes32(const std::vector<uint8_t>& v) {  // caller validated v.size() <= 0xFFFFFFFF
    u32(uint32_t(v.size()));
    bytes(v.data(), v.size());
  }

 private:
  // Grows the output by n bytes (resize + stores: GCC 12 warns falsely about insert/push_back
  // of bytes into an empty vector at -O3).
  uint8_t* grow(size_t n) {
    const size_t at = out_.size();
    out_.resize(at + n);
    return out_.data() + at;
  }
  void put(uint64_t v, int n) {
    uint8_t* p = grow(size_t(n));
    for (int i = 0; i < n; ++i) p[i] = uint8_t(v >> (8 * i));
  }
  std::vector<uint8_t>& out_;
};

inline uint16_t le16(const uint8_t* p) { return uint16_t(p[0] | p[1] << 8); }
inline uint32_t le32(const uint8_t* p) {
  return uint32_t(p[0]) | uint32_t(p[1]) << 8 | uint32_t(p[2]) << 16 | uint32_t(p[3]) << 24;
}
inline uint64_t le64(const uint8_t* p) { return uint64_t(le32(p)) | uint64_t(le32(p + 4)) << 32; }
inline void put16(uint8_t* p, uint16_t v) {
  p[0] = uint8_t(v);
  p[1] = uint8_t(v >> 8);
}
inline void put32(uint8_t* p, uint32_t v) {
  for (int i = 0; i < 4; ++i) p[i] = uint8_t(v >> (8 * i));
}
inline void put64(uint8_t* p, uint64_t v) {
  for (int i = 0; i < 8; ++i) p[i] = uint8_t(v >> (8 * i));
}

// ---- bounds-checked payload reader ----
// Field names in errors read "KEY_FRAME.width". Never reads outside [data, data + size).
class Reader {
 public:
  Reader(const char* msg, const uint8_t* data, size_t size) : msg_(msg), p_(data), n_(size) {}
  uint8_t u8(const char* f) { return *take(f, 1); }
  uint16_t u16(const char* f) { return le16(take(f, 2)); }
  uint32_t u32(const char* f) { return le32(take(f, 4)); }
  uint64_t u64(const char* f) { return le64(take(f, 8)); }
  float f32(const char* f) {
    uint32_t b = u32(f);
    float v;
    std::memcpy(&v, &b, 4);
    return v;
  }
  // u16 length + bytes; the length is checked against `cap` and the bytes left before copying.
  std::string str16(const char* f, size_t cap) {
    size_t len = u16(f);
    check_len(f, len, cap);
    const uint8_t* p = take(f, len);
    return std::string(reinterpret_cast<const char*>(p), len);
  }
  // u32 length + bytes.
  std::vector<uint8_t> bytes32(const char* f) {
    size_t len = u32(f);
    check_len(f, len, std::numeric_limits<size_t>::max());
    const uint8_t* p = take(f, len);
    return std::vector<uint8_t>(p, p + len);
  }
  void finish() {
    if (left() != 0)
      fail(ErrorCode::TrailingBytes, std::string(msg_) + ": " + std::to_string(left()) +
                                         " bytes after the last field (payload is " +
                                         std::to_string(n_) + " bytes)");
  }

 private:
  size_t left() const { return n_ - pos_; }
  void check_len(const char* f, size_t len, size_t cap) {
    if (len > cap)
      fail(ErrorCode::Malformed, std::string(msg_) + "." + f + ": length " + std::to_string(len) +
                                     " exceeds the limit " + std::to_string(cap));
    if (len > left())
      fail(ErrorCode::Truncated, std::string(msg_) + "." + f + ": length " + std::to_string(len) +
                                     " exceeds the " + std::to_string(left()) +
                                     " bytes left in the payload");
  }
  const uint8_t* take(const char* f, size_t k) {
    if (k > left())
      fail(ErrorCode::Truncated, std::string(msg_) + "." + f + ": needs " + std::to_string(k) +
                                     " bytes at offset " + std::to_string(pos_) + ", payload is " +
                                     std::to_string(n_) + " bytes");
    const uint8_t* p = p_ + pos_;
    pos_ += k;
    return p;
  }
  const char* msg_;
  const uint8_t* p_;
  size_t n_;
  size_t pos_ = 0;
};

// ---- field validation ----
[[noreturn]] void bad(const char* msg, const char* field, const std::string& why) {
  fail(ErrorCode::Malformed, std::string(msg) + "." + field + ": " + why);
}
void check_dim(const char* msg, const char* field, uint32_t v) {
  if (v < 1 || v > kMaxFrameDim)
    bad(msg, field, std::to_string(v) + " is outside [1, " + std::to_string(kMaxFrameDim) + "]");
}
void check_cap(const char* msg, const char* field, size_t size, size_t cap) {
  if (size > cap)
    bad(msg, field, std::to_string(size) + " bytes exceeds the limit " + std::to_string(cap));
}
void check_u32_size(const char* msg, const char* field, size_t size) {
  if (size > std::numeric_limits<uint32_t>::max())
    bad(msg, field, std::to_string(size) + " bytes does not fit a u32 length");
}
void check_blob(const char* msg, BlobEncoding kind, size_t size,
                BlobEncoding highest = BlobEncoding::F16) {
  if (uint8_t(kind) > uint8_t(highest))
    bad(msg, "blob_kind", "unknown value " + std::to_string(int(kind)));
  if (kind == BlobEncoding::None && size != 0)
    bad(msg, "blob", "blob_kind None but the blob has " + std::to_string(size) + " bytes");
  if (kind != BlobEncoding::None && size == 0) bad(msg, "blob", "empty for a non-None blob_kind");
  check_u32_size(msg, "blob", size);
}
void check_mode(const char* msg, Mode m) {
  // Partial, Full, Naive: the session modes. Mode::Wild (3), the student alone, never goes on
  // the wire and is refused like any other unknown value.
  if (uint8_t(m) > uint8_t(Mode::Naive))
    bad(msg, "mode", "unknown value " + std::to_string(int(m)));
}
void check_stride(const char* msg, const char* field, uint32_t v) {
  if (v < 1 || v > kMaxStride)
    bad(msg, field, std::to_string(v) + " is outside [1, " + std::to_string(kMaxStride) + "]");
}
void check_unit(const char* msg, const char* field, float v) {
  if (!(v >= 0.f && v <= 1.f)) bad(msg, field, std::to_string(v) + " is not in [0, 1]");
}

void validate_one(const Hello& m) {
  const char* n = "HELLO";
  if (m.min_version < 1) bad(n, "min_version", "0 is not a protocol version");
  if (m.max_version < m.min_version)
    bad(n, "max_version", std::to_string(m.max_version) + " < min_version " +
                              std::to_string(m.min_version));
  check_mode(n, m.mode);
  if (m.accept_blobs == 0 || (m.accept_blobs & ~(kAcceptF32 | kAcceptF16)) != 0)
    bad(n, "accept_blobs", "bit mask " + std::to_string(m.accept_blobs) +
                               " is empty or has unknown bits (F32 = 1, F16 = 2)");
  check_dim(n, "frame_width", m.frame_width);
  check_dim(n, "frame_height", m.frame_height);
  check_cap(n, "auth_token", m.auth_token.size(), kMaxAuthToken);
  check_cap(n, "edge_name", m.edge_name.size(), kMaxEdgeName);
}
void validate_one(const Welcome& m) {
  const char* n = "WELCOME";
  if (m.version < 1) bad(n, "version", "0 is not a protocol version");
  if (m.version > kVersionMax)
    bad(n, "version", std::to_string(m.version) + " is not a version this library speaks (1.." +
                          std::to_string(kVersionMax) + ")");
  check_mode(n, m.mode);
  check_stride(n, "min_stride", m.min_stride);
  check_stride(n, "max_stride", m.max_stride);
  if (m.max_stride < m.min_stride)
    bad(n, "max_stride", std::to_string(m.max_stride) + " < min_stride " +
                             std::to_string(m.min_stride));
  check_unit(n, "threshold", m.threshold);
  if ((m.accept_frames & kAcceptRawBgr) == 0 ||
      (m.accept_frames & ~(kAcceptRawBgr | kAcceptPng | kAcceptJpeg)) != 0)
    bad(n, "accept_frames", "bit mask " + std::to_string(m.accept_frames) +
                                " lacks RawBgr (1) or has unknown bits (Png = 2, Jpeg = 4)");
  if (uint8_t(m.scope) > uint8_t(WeightsScope::Wanted))
    bad(n, "scope", "unknown value " + std::to_string(int(m.scope)));
  if (m.scope == WeightsScope::Wanted && m.version < 3)
    bad(n, "scope", "2 (Wanted: the edge's weights) needs version 3");
  if (m.scope == WeightsScope::Wanted && m.blob_kind != BlobEncoding::None)
    bad(n, "blob_kind", "a WELCOME of scope 2 (Wanted) carries no blob");
  if (m.scope == WeightsScope::Wanted && m.mode == Mode::Naive)
    bad(n, "scope", "2 (Wanted) in mode Naive, which uses no student weights");
  check_blob(n, m.blob_kind, m.blob.size());
  if (uint8_t(m.train) > uint8_t(TrainedTensors::BiasOnly))
    bad(n, "train", "unknown value " + std::to_string(int(m.train)) + " (0 all, 1 bias only)");
  if (m.mode == Mode::Partial) {
    if (m.train_from < kMinTrainFrom || m.train_from > kMaxTrainFrom)
      bad(n, "train_from", std::to_string(m.train_from) + " is outside [" +
                               std::to_string(kMinTrainFrom) + ", " +
                               std::to_string(kMaxTrainFrom) + "] in mode Partial");
  } else if (m.train_from != 0 || m.train != TrainedTensors::All) {
    bad(n, "train_from", "mode " + std::to_string(int(m.mode)) +
                             " has no partial split: train_from and train must be 0");
  }
  if (m.version < 2 && (m.train_from != implied_train_from(m.mode) ||
                        m.train != TrainedTensors::All))
    bad(n, "train_from", "a version-1 WELCOME cannot carry a split other than the paper's (dec2, "
                         "all tensors): it needs version 2");
}
void validate_one(const KeyFrame& m) {
  const char* n = "KEY_FRAME";
  if (uint8_t(m.encoding) > uint8_t(FrameEncoding::Jpeg))
    bad(n, "encoding", "unknown value " + std::to_string(int(m.encoding)));
  check_dim(n, "width", m.width);
  check_dim(n, "height", m.height);
  check_u32_size(n, "data", m.data.size());
  if (m.data.empty()) bad(n, "data", "empty");
  if (m.encoding == FrameEncoding::RawBgr) {
    uint64_t want = uint64_t(m.width) * m.height * 3;
    if (m.data.size() != want)
      bad(n, "data", std::to_string(m.data.size()) + " bytes, raw BGR " +
                         std::to_string(m.width) + "x" + std::to_string(m.height) + " needs " +
                         std::to_string(want));
  }
}
void validate_one(const Update& m) {
  const char* n = "UPDATE";
  check_stride(n, "next_stride", m.next_stride);
  check_unit(n, "accuracy", m.accuracy);
  if (m.steps > kMaxSteps)
    bad(n, "steps", std::to_string(m.steps) + " exceeds " + std::to_string(kMaxSteps));
  check_blob(n, m.blob_kind, m.blob.size(), BlobEncoding::Update);
}
void validate_one(const Labels& m) {
  const char* n = "LABELS";
  check_dim(n, "width", m.width);
  check_dim(n, "height", m.height);
  uint64_t want = uint64_t(m.width) * m.height;
  if (m.labels.size() != want)
    bad(n, "labels", std::to_string(m.labels.size()) + " bytes, a " + std::to_string(m.width) +
                         "x" + std::to_string(m.height) + " label map needs " +
                         std::to_string(want));
}
void validate_one(const ErrorMessage& m) {
  if (uint16_t(m.code) == 0) bad("ERROR", "code", "0 is not an error code");
  check_cap("ERROR", "text", m.text.size(), kMaxErrorText);
}
void validate_one(const Ping&) {}
void validate_one(const Pong&) {}
void validate_one(const Bye&) {}
void validate_one(const Resync&) {}
void validate_one(const Weights& m) {
  if (m.blob_kind == BlobEncoding::None)
    bad("WEIGHTS", "blob_kind", "None: WEIGHTS always carries the student (fp32 1, fp16 2)");
  check_blob("WEIGHTS", m.blob_kind, m.blob.size());
}

// ---- payload writers ----
void write_body(Writer& w, const Hello& m) {
  w.u16(m.min_version);
  w.u16(m.max_version);
  w.u8(uint8_t(m.mode));
  w.u8(m.accept_blobs);
  w.u64(m.layout_hash);
  w.u64(m.weights_hash);
  w.u32(m.frame_width);
  w.u32(m.frame_height);
  w.str16(m.auth_token);
  w.str16(m.edge_name);
}
void write_body(Writer& w, const Welcome& m) {
  w.u16(m.version);
  w.u64(m.session_id);
  w.u8(uint8_t(m.mode));
  w.u8(m.accept_frames);
  w.u32(m.min_stride);
  w.u32(m.max_stride);
  w.f32(m.threshold);
  w.u8(uint8_t(m.scope));
  w.u8(uint8_t(m.blob_kind));
  if (m.version >= 2) {
    w.u8(m.train_from);
    w.u8(uint8_t(m.train));
  }
  w.bytes32(m.blob);
}
void write_body(Writer& w, const KeyFrame& m) {
  w.u64(m.frame_index);
  w.u8(uint8_t(m.encoding));
  w.u32(m.width);
  w.u32(m.height);
  w.bytes32(m.data);
}
void write_body(Writer& w, const Update& m) {
  w.u64(m.key_frame);
  w.u32(m.next_stride);
  w.f32(m.accuracy);
  w.u32(m.steps);
  w.u8(uint8_t(m.blob_kind));
  w.bytes32(m.blob);
}
void write_body(Writer& w, const Labels& m) {
  w.u64(m.frame_index);
  w.u32(m.width);
  w.u32(m.height);
  w.bytes32(m.labels);
}
void write_body(Writer& w, const ErrorMessage& m) {
  w.u16(uint16_t(m.code));
  w.str16(m.text);
}
void write_body(Writer& w, const Ping& m) { w.u64(m.nonce); }
void write_body(Writer& w, const Pong& m) { w.u64(m.nonce); }
void write_body(Writer&, const Bye&) {}
void write_body(Writer& w, const Resync& m) { w.u64(m.weights_hash); }
void write_body(Writer& w, const Weights& m) {
  w.u8(uint8_t(m.blob_kind));
  w.bytes32(m.blob);
}

// ---- payload readers (structure only; values are checked by validate_one) ----
Hello read_hello(Reader& r) {
  Hello m;
  m.min_version = r.u16("min_version");
  m.max_version = r.u16("max_version");
  m.mode = Mode(r.u8("mode"));
  m.accept_blobs = r.u8("accept_blobs");
  m.layout_hash = r.u64("layout_hash");
  m.weights_hash = r.u64("weights_hash");
  m.frame_width = r.u32("frame_width");
  m.frame_height = r.u32("frame_height");
  m.auth_token = r.str16("auth_token", kMaxAuthToken);
  m.edge_name = r.str16("edge_name", kMaxEdgeName);
  return m;
}
Welcome read_welcome(Reader& r) {
  Welcome m;
  m.version = r.u16("version");
  m.session_id = r.u64("session_id");
  m.mode = Mode(r.u8("mode"));
  m.accept_frames = r.u8("accept_frames");
  m.min_stride = r.u32("min_stride");
  m.max_stride = r.u32("max_stride");
  m.threshold = r.f32("threshold");
  m.scope = WeightsScope(r.u8("scope"));
  m.blob_kind = BlobEncoding(r.u8("blob_kind"));
  if (m.version >= 2) {  // the layout follows the payload's own version field
    m.train_from = r.u8("train_from");
    m.train = TrainedTensors(r.u8("train"));
  } else {
    m.train_from = implied_train_from(m.mode);
    m.train = TrainedTensors::All;
  }
  m.blob = r.bytes32("blob");
  return m;
}
KeyFrame read_key_frame(Reader& r) {
  KeyFrame m;
  m.frame_index = r.u64("frame_index");
  m.encoding = FrameEncoding(r.u8("encoding"));
  m.width = r.u32("width");
  m.height = r.u32("height");
  m.data = r.bytes32("data");
  return m;
}
Update read_update(Reader& r) {
  Update m;
  m.key_frame = r.u64("key_frame");
  m.next_stride = r.u32("next_stride");
  m.accuracy = r.f32("accuracy");
  m.steps = r.u32("steps");
  m.blob_kind = BlobEncoding(r.u8("blob_kind"));
  m.blob = r.bytes32("blob");
  return m;
}
Labels read_labels(Reader& r) {
  Labels m;
  m.frame_index = r.u64("frame_index");
  m.width = r.u32("width");
  m.height = r.u32("height");
  m.labels = r.bytes32("labels");
  return m;
}
ErrorMessage read_error(Reader& r) {
  ErrorMessage m;
  m.code = ErrorCode(r.u16("code"));
  m.text = r.str16("text", kMaxErrorText);
  return m;
}

}  // namespace

// ---- header ----
uint32_t header_crc(const uint8_t* in) { return crc32c(in, 28); }

void write_header(const Header& h, uint8_t* out) {
  std::memcpy(out, kMagic, 4);
  put16(out + 4, h.version);
  put16(out + 6, h.type);
  put32(out + 8, h.flags);
  put64(out + 12, h.seq);
  put32(out + 20, h.payload_size);
  put32(out + 24, h.payload_crc);
  put32(out + 28, header_crc(out));
}

Header read_header(const uint8_t* in) {
  Header h;
  h.version = le16(in + 4);
  h.type = le16(in + 6);
  h.flags = le32(in + 8);
  h.seq = le64(in + 12);
  h.payload_size = le32(in + 20);
  h.payload_crc = le32(in + 24);
  return h;
}

PayloadBounds payload_bounds(MessageType t) {
  constexpr size_t kAny = std::numeric_limits<size_t>::max();
  switch (t) {
    case MessageType::Hello: return {34, 34 + kMaxAuthToken + kMaxEdgeName};
    case MessageType::Welcome: return {30, kAny};
    case MessageType::KeyFrame: return {22, kAny};
    case MessageType::Update: return {25, kAny};
    case MessageType::Labels: return {21, kAny};
    case MessageType::Error: return {4, 4 + kMaxErrorText};
    case MessageType::Ping: return {8, 8};
    case MessageType::Pong: return {8, 8};
    case MessageType::Bye: return {0, 0};
    case MessageType::Resync: return {8, 8};
    case MessageType::Weights: return {5, kAny};
  }
  return {0, 0};
}

// ---- encoding ----
void validate(const Body& body) {
  std::visit([](const auto& m) { validate_one(m); }, body);
}

std::vector<uint8_t> encode_payload(const Body& body) {
  validate(body);
  std::vector<uint8_t> out;
  Writer w(out);
  std::visit([&](const auto& m) { write_body(w, m); }, body);
  return out;
}

void encode_to(const Message& m, std::vector<uint8_t>& out) {
  validate(m.body);
  const size_t start = out.size();
  out.resize(start + kHeaderSize);  // header written last, once the payload is known
  Writer w(out);
  std::visit([&](const auto& b) { write_body(w, b); }, m.body);
  const size_t payload = out.size() - start - kHeaderSize;
  PayloadBounds pb = payload_bounds(m.type());
  if (payload > pb.max || payload > std::numeric_limits<uint32_t>::max() - kHeaderSize) {
    out.resize(start);
    fail(ErrorCode::Oversize, std::string(message_type_name(m.type())) + ": payload of " +
                                  std::to_string(payload) + " bytes is too large");
  }
  Header h;
  h.version = m.version;
  h.type = uint16_t(m.type());
  h.flags = 0;
  h.seq = m.seq;
  h.payload_size = uint32_t(payload);
  h.payload_crc = crc32c(out.data() + start + kHeaderSize, payload);
  write_header(h, out.data() + start);
}

std::vector<uint8_t> encode(const Message& m) {
  std::vector<uint8_t> out;
  encode_to(m, out);
  return out;
}

Body decode_payload(MessageType t, const uint8_t* data, size_t size) {
  Reader r(message_type_name(t), data, size);
  Body body;
  switch (t) {
    case MessageType::Hello: body = read_hello(r); break;
    case MessageType::Welcome: body = read_welcome(r); break;
    case MessageType::KeyFrame: body = read_key_frame(r); break;
    case MessageType::Update: body = read_update(r); break;
    case MessageType::Labels: body = read_labels(r); break;
    case MessageType::Error: body = read_error(r); break;
    case MessageType::Ping: body = Ping{r.u64("nonce")}; break;
    case MessageType::Pong: body = Pong{r.u64("nonce")}; break;
    case MessageType::Bye: body = Bye{}; break;
    case MessageType::Resync: body = Resync{r.u64("weights_hash")}; break;
    case MessageType::Weights: {
      Weights m;
      m.blob_kind = BlobEncoding(r.u8("blob_kind"));
      m.blob = r.bytes32("blob");
      body = std::move(m);
      break;
    }
    default: fail(ErrorCode::UnknownType, "message type " + std::to_string(uint16_t(t)));
  }
  r.finish();
  validate(body);
  return body;
}

std::vector<uint8_t> Encoder::encode(Body body) {
  std::vector<uint8_t> out;
  encode_to(std::move(body), out);
  return out;
}

void Encoder::encode_to(Body body, std::vector<uint8_t>& out) {
  Message m{next_seq_, version_, std::move(body)};
  protocol::encode_to(m, out);
  ++next_seq_;  // only once the message is encoded: a rejected message uses no number
}

// ---- versions, secrets ----
std::optional<uint16_t> negotiate_version(uint16_t edge_min, uint16_t edge_max,
                                          uint16_t server_min, uint16_t server_max) {
  uint16_t lo = std::max(edge_min, server_min), hi = std::min(edge_max, server_max);
  if (lo < 1 || hi < lo) return std::nullopt;
  return hi;
}

bool constant_time_equal(const std::string& a, const std::string& b) {
  // Touches every byte of `a` whatever the contents; a length mismatch still costs the full
  // loop. volatile keeps the compiler from turning the OR-accumulation into an early exit.
  volatile uint8_t diff = a.size() == b.size() ? 0 : 1;
  const size_t nb = b.size();
  for (size_t i = 0; i < a.size(); ++i) {
    uint8_t y = nb ? uint8_t(b[i % nb]) : 0;
    diff = diff | uint8_t(uint8_t(a[i]) ^ y);
  }
  return diff == 0;
}

}  // namespace st::protocol
