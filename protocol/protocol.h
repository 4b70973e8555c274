// The ShadowTutor wire protocol between edge and server: constants, error codes, the typed
// messages and their encoding. docs/protocol.md is the specification; this header follows it.
//
//   Message m{.seq = 0, .body = Ping{42}};
//   std::vector<uint8_t> bytes = encode(m);        // 32-byte header + payload
//   Decoder d; d.feed(bytes.data(), bytes.size()); // protocol/decoder.h
//   Message got; while (d.next(got)) { ... }
//
// Everything is std-only; ProtocolError derives from st::Error (common/error.h) so callers that
// catch st::Error see protocol failures too. The session mode (st::Mode) and the blob encoding
// (st::BlobEncoding) are the common/ enums every layer uses; their values are the wire's.
#pragma once
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include "common/blob_encoding.h"
#include "common/error.h"
#include "common/frame_encoding.h"
#include "common/mode.h"

namespace st::protocol {

// ---- constants (docs/protocol.md "Limits") ----
inline constexpr uint8_t kMagic[4] = {'S', 'T', 'W', '1'};
inline constexpr size_t kHeaderSize = 32;
// Protocol versions this library speaks. Version 2 added WELCOME's partial split (train_from,
// train), compact update blobs, RESYNC/WEIGHTS and the error code SplitMismatch; version 3 added
// session migration (WELCOME scope Wanted: the edge answers with WEIGHTS, its whole student) and
// the error code WeightsMismatch; everything else is version 1's.
inline constexpr uint16_t kVersionMin = 1;
inline constexpr uint16_t kVersionMax = 3;
inline constexpr uint16_t kProtocolVersion = kVersionMax;
// Default cap on one message, header included: a 1280x720 raw BGR key frame is 2,764,800 B,
// a full fp32 student blob 1.94 MB.
inline constexpr size_t kDefaultMaxMessageSize = size_t(16) << 20;
inline constexpr uint32_t kMaxFrameDim = 16384;     // width or height of a frame / label map
inline constexpr size_t kMaxAuthToken = 1024;       // bytes
inline constexpr size_t kMaxEdgeName = 256;         // bytes
inline constexpr size_t kMaxErrorText = 4096;       // bytes
inline constexpr uint32_t kMaxStride = 1u << 20;    // any stride on the wire
inline constexpr uint32_t kMaxSteps = 1u << 16;     // UPDATE.steps
// WELCOME.train_from (version 2): the first block partial distillation trains, counted in the
// student's forward order (SPEC's student: 0 in_conv1, 1 in_conv2, ..., 6 dec2, ..., 10
// out_conv3; nn/student.h). 0 = no partial split (modes Full and Naive).
inline constexpr uint8_t kMinTrainFrom = 1;   // in_conv2: everything but the first block
inline constexpr uint8_t kMaxTrainFrom = 10;  // out_conv3: the last block alone
inline constexpr uint8_t kPaperTrainFrom = 6;  // dec2 (SPEC §4); what a version-1 WELCOME means

enum class MessageType : uint16_t {
  Hello = 1,
  Welcome = 2,
  KeyFrame = 3,
  Update = 4,
  Labels = 5,
  Error = 6,
  Ping = 7,
  Pong = 8,
  Bye = 9,
  Resync = 10,   // version 2
  Weights = 11,  // version 2
};
inline constexpr uint16_t kMaxMessageType = 11;
// The highest message type of a protocol version (1: 9, from 2 on: 11); a header of that
// version with a higher type is UnknownType.
inline constexpr uint16_t max_message_type(uint16_t version) { return version >= 2 ? 11 : 9; }
const char* message_type_name(MessageType t);  // "HELLO", ...; "UNKNOWN" otherwise

// One code space for what the decoder detects (1..15), what the conversation checker detects
// (16..31) and what the programs report in an ERROR message (32..). Values are on the wire.
enum class ErrorCode : uint16_t {
  BadMagic = 1,            // the first 4 bytes of a header are not "STW1"
  UnsupportedVersion = 2,  // header version outside the accepted range; or no common version
  UnknownType = 3,         // header type is not a known message type
  Oversize = 4,            // payload larger than the message limit or the type's maximum
  BadHeaderCrc = 5,        // header CRC does not match header bytes 0..27
  BadCrc = 6,              // payload CRC32C mismatch
  BadFlags = 7,            // a reserved flag bit is set
  BadSequence = 8,         // sequence number is not the previous one + 1
  Truncated = 9,           // a field runs past the payload end; or the stream ended mid-message
  Malformed = 10,          // a field holds a value the spec forbids (enum, range, size)
  TrailingBytes = 11,      // bytes left after the last field of a payload
  UnexpectedMessage = 16,  // a valid message the conversation state does not allow
  AuthFailed = 32,         // HELLO's auth token was refused
  LayoutMismatch = 33,     // the edge's student layout hash is not the server's
  BadFrame = 34,           // a key frame could not be decoded (bad PNG/JPEG, wrong size)
  UnsupportedMode = 35,    // the server does not offer the requested session mode
  Busy = 36,               // the server takes no more sessions now
  Internal = 37,           // a bug or resource failure on the sender's side
  Timeout = 38,            // the peer was silent for too long
  ShuttingDown = 39,       // the sender is stopping
  Overflow = 40,           // the peer does not read: the sender's outgoing queue is over its cap
  SplitMismatch = 41,      // (version 2) edge: WELCOME's partial split is not the one it requires
  WeightsMismatch = 42,    // (version 3) server: the edge's WEIGHTS do not hash to HELLO.weights_hash
};
const char* error_code_name(ErrorCode c);  // "BadMagic", ...; "Unknown" for other values

// A protocol failure. what() = "<CodeName>: <text naming the field and the problem>".
class ProtocolError : public st::Error {
 public:
  ProtocolError(ErrorCode code, const std::string& text);
  ErrorCode code() const { return code_; }
  const std::string& text() const { return text_; }  // without the code name

 private:
  ErrorCode code_;
  std::string text_;
};

using FrameEncoding = st::FrameEncoding;  // KEY_FRAME.encoding (common/frame_encoding.h)
// A session's mode is st::Mode (common/mode.h): Partial 0, Full 1 or Naive 2 on the wire (Wild
// is not a session mode: the codec refuses it as it refuses any unknown value). What a parameter
// blob (nn/blob.h) in WELCOME/UPDATE holds is st::BlobEncoding (common/blob_encoding.h): None 0
// = no blob ("no change"), F32 1, F16 2.
// Which tensors WELCOME's blob holds: the trained part of the mode, or the full student; or
// (version 3, no blob) Wanted: the server does not hold the weights HELLO names and asks for
// them: the edge's next message is WEIGHTS with its whole student in fp32 (session migration).
enum class WeightsScope : uint8_t { Trained = 0, Full = 1, Wanted = 2 };
// Of the blocks partial distillation trains (WELCOME.train, version 2): every tensor, or only
// the biases and batch-norm affine parameters.
enum class TrainedTensors : uint8_t { All = 0, BiasOnly = 1 };

// HELLO.accept_blobs bits (blob encodings the edge can apply).
inline constexpr uint8_t kAcceptF32 = 1u << 0;
inline constexpr uint8_t kAcceptF16 = 1u << 1;
// WELCOME.accept_frames bits (key-frame encodings the server can decode; raw is mandatory).
inline constexpr uint8_t kAcceptRawBgr = 1u << 0;
inline constexpr uint8_t kAcceptPng = 1u << 1;
inline constexpr uint8_t kAcceptJpeg = 1u << 2;

// ---- messages (payload layouts: docs/protocol.md "Messages") ----

// Edge -> server, first message. Sent under header version = min_version.
struct Hello {
  uint16_t min_version = kVersionMin;  // protocol versions the edge speaks
  uint16_t max_version = kVersionMax;
  Mode mode = Mode::Partial;  // requested: Partial, Full or Naive
  uint64_t layout_hash = 0;   // nn::layout_hash(student, Full) of the edge's student
  uint64_t weights_hash = 0;  // hash of the edge's full student weights (opaque to the protocol)
  uint32_t frame_width = 0;   // the video's frame size
  uint32_t frame_height = 0;
  uint8_t accept_blobs = kAcceptF32;  // kAcceptF32 | kAcceptF16
  std::string auth_token;             // <= kMaxAuthToken bytes, compared with constant_time_equal
  std::string edge_name;              // <= kMaxEdgeName bytes, for logs
  bool operator==(const Hello&) const = default;
};

// Server -> edge, answers HELLO.
struct Welcome {
  uint16_t version = kProtocolVersion;  // the negotiated version; used from here on
  uint64_t session_id = 0;
  Mode mode = Mode::Partial;                // in force
  uint32_t min_stride = 8;                  // key-frame stride limits (SPEC 5)
  uint32_t max_stride = 64;
  float threshold = 0.8f;                   // mIoU threshold of Algorithm 1
  uint8_t accept_frames = kAcceptRawBgr;    // kAcceptRawBgr | kAcceptPng | kAcceptJpeg
  WeightsScope scope = WeightsScope::Trained;
  BlobEncoding blob_kind = BlobEncoding::None;  // None <=> blob empty
  // The partial split in force (mode Partial): the first block trained and which of its tensors.
  // Modes Full and Naive: train_from 0, train All. On the wire from version 2 on; a version-1
  // WELCOME means the paper's split, and the encoder refuses one that says otherwise.
  uint8_t train_from = kPaperTrainFrom;
  TrainedTensors train = TrainedTensors::All;
  std::vector<uint8_t> blob;            // nn/blob.h parameter blob, opaque here
  bool operator==(const Welcome&) const = default;
};
// The split a version-1 WELCOME of this mode implies: the paper's for Partial, none otherwise.
inline uint8_t implied_train_from(Mode m) { return m == Mode::Partial ? kPaperTrainFrom : 0; }

// Edge -> server: a key frame.
struct KeyFrame {
  uint64_t frame_index = 0;  // strictly increasing within a session
  FrameEncoding encoding = FrameEncoding::RawBgr;
  uint32_t width = 0, height = 0;  // RawBgr: data.size() == width * height * 3
  std::vector<uint8_t> data;       // the encoded image, non-empty
  bool operator==(const KeyFrame&) const = default;
};

// Server -> edge: the answer to one KEY_FRAME in Partial / Full mode.
// blob_kind Update (version 2) is an nn/update.h blob: every edge of version 2 applies it (it is
// not in HELLO.accept_blobs); it names the weights hash the edge must hold after it.
struct Update {
  uint64_t key_frame = 0;     // the frame_index of the KEY_FRAME it answers
  uint32_t next_stride = 8;   // next key frame = key_frame + next_stride
  float accuracy = 0.f;       // mIoU after distillation, in [0, 1]
  uint32_t steps = 0;         // optimizer steps taken (0 = training skipped)
  BlobEncoding blob_kind = BlobEncoding::None;  // None = "no change": keep the current weights
  std::vector<uint8_t> blob;            // the trained-part blob; empty iff None
  bool operator==(const Update&) const = default;
};

// Server -> edge: the teacher's label map, the answer to one KEY_FRAME in Naive mode.
struct Labels {
  uint64_t frame_index = 0;
  uint32_t width = 0, height = 0;
  std::vector<uint8_t> labels;  // width * height class indices, row-major
  bool operator==(const Labels&) const = default;
};

// Either direction: a fatal error; the sender closes the connection after it.
struct ErrorMessage {
  ErrorCode code = ErrorCode::Internal;  // any non-zero u16 is accepted (newer peers' codes)
  std::string text;                      // <= kMaxErrorText bytes
  bool operator==(const ErrorMessage&) const = default;
};

struct Ping {
  uint64_t nonce = 0;
  bool operator==(const Ping&) const = default;
};
struct Pong {
  uint64_t nonce = 0;  // the PING's nonce
  bool operator==(const Pong&) const = default;
};
// Either direction: the sender sends nothing more.
struct Bye {
  bool operator==(const Bye&) const = default;
};

// Edge -> server (version 2, modes Partial and Full): an UPDATE's weights hash was not what the
// edge's weights hash to after applying it; the edge kept its weights and asks for all of them.
struct Resync {
  uint64_t weights_hash = 0;  // nn::weights_hash of what the edge holds
  bool operator==(const Resync&) const = default;
};

// Server -> edge (version 2): the answer to RESYNC, the whole student as a plain fp32 or fp16
// blob (nn/blob.h, Distillation::Full); the server's mirror of the edge is that from now on.
// Edge -> server (version 3): the answer to a WELCOME of scope Wanted, the edge's whole student
// in fp32 (it must hash to HELLO.weights_hash); the session continues from it.
struct Weights {
  BlobEncoding blob_kind = BlobEncoding::F32;  // F32 or F16
  std::vector<uint8_t> blob;                   // non-empty
  bool operator==(const Weights&) const = default;
};

// The alternatives are in MessageType order: index() + 1 == type.
using Body = std::variant<Hello, Welcome, KeyFrame, Update, Labels, ErrorMessage, Ping, Pong, Bye,
                          Resync, Weights>;

struct Message {
  uint64_t seq = 0;                     // per-direction sequence number: 0, 1, 2, ...
  uint16_t version = kProtocolVersion;  // header version
  Body body;

  MessageType type() const { return MessageType(body.index() + 1); }
  template <class T>
  bool is() const { return std::holds_alternative<T>(body); }
  // Throws ProtocolError(UnexpectedMessage) naming both types when the body is not a T.
  template <class T>
  const T& as() const;
  template <class T>
  T& as();
  bool operator==(const Message&) const = default;
};

// ---- the 32-byte header (docs/protocol.md "Framing") ----
struct Header {
  uint16_t version = kProtocolVersion;
  uint16_t type = 0;  // raw: may be unknown when parsed
  uint32_t flags = 0;
  uint64_t seq = 0;
  uint32_t payload_size = 0;
  uint32_t payload_crc = 0;
};
// Writes magic, the fields and the header CRC into out[0..32).
void write_header(const Header& h, uint8_t* out);
// Reads the fields of a 32-byte header; no validation (the Decoder does that).
Header read_header(const uint8_t* in);
// CRC32C of header bytes 0..27, stored at offset 28.
uint32_t header_crc(const uint8_t* in);

// Smallest and largest payload a message type may have (from its fixed fields and per-field
// caps; SIZE_MAX when only the message limit bounds it). Unknown type: {0, 0}.
struct PayloadBounds {
  size_t min, max;
};
PayloadBounds payload_bounds(MessageType t);

// ---- encoding ----
// The payload bytes of a body. Validates the fields first (the same checks the decoder makes)
// and throws ProtocolError(Malformed / Oversize) on a message no peer would accept.
std::vector<uint8_t> encode_payload(const Body& body);
// Appends header + payload of m to out.
void encode_to(const Message& m, std::vector<uint8_t>& out);
std::vector<uint8_t> encode(const Message& m);
// Parses and validates a payload of the given type (the decoder's last step, after the CRC).
// Throws ProtocolError: Truncated, Malformed, TrailingBytes, UnknownType.
Body decode_payload(MessageType t, const uint8_t* data, size_t size);
// Checks a body's field values (enums, ranges, sizes); throws ProtocolError(Malformed).
void validate(const Body& body);

// Numbers outgoing messages of one direction (seq 0, 1, 2, ...) under one header version.
class Encoder {
 public:
  explicit Encoder(uint16_t version = kProtocolVersion) : version_(version) {}
  std::vector<uint8_t> encode(Body body);
  void encode_to(Body body, std::vector<uint8_t>& out);
  void set_version(uint16_t v) { version_ = v; }  // after negotiation
  uint16_t version() const { return version_; }
  uint64_t next_seq() const { return next_seq_; }

 private:
  uint16_t version_;
  uint64_t next_seq_ = 0;
};

// ---- version negotiation (docs/protocol.md "Versions") ----
// The highest version in both ranges, or nullopt (the server then answers
// ERROR(UnsupportedVersion)).
std::optional<uint16_t> negotiate_version(uint16_t edge_min, uint16_t edge_max,
                                          uint16_t server_min = kVersionMin,
                                          uint16_t server_max = kVersionMax);

// Compares two secrets in time that depends only on a.size(), not on where they differ or on
// b. Pass the received token as `a` and the expected secret as `b`.
bool constant_time_equal(const std::string& a, const std::string& b);

// ---- template definitions ----
namespace detail {
[[noreturn]] void wrong_body(MessageType have, size_t want_index);
}
template <class T>
const T& Message::as() const {
  if (const T* p = std::get_if<T>(&body)) return *p;
  detail::wrong_body(type(), Body(std::in_place_type<T>).index());
}
template <class T>
T& Message::as() {
  if (T* p = std::get_if<T>(&body)) return *p;
  detail::wrong_body(type(), Body(std::in_place_type<T>).index());
}

}  // namespace st::protocol
