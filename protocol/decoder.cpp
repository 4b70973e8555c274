// The incremental decoder: one growing buffer read through an offset. Consumed bytes are
// dropped by compaction only when they are at least as many as the bytes kept, so every byte is
// moved O(1) times on average and a 2.7 MB key frame fed in 64 KiB chunks costs linear time.
#include "protocol/decoder.h"

#include <algorithm>
#include <cstring>

#include "protocol/crc32c.h"

namespace st::protocol {
namespace {
std::string hex_bytes(const uint8_t* p, size_t n) {
  static const char* d = "0123456789abcdef";
  std::string s;
  for (size_t i = 0; i < n; ++i) {
    if (i) s += ' ';
    s += d[p[i] >> 4];
    s += d[p[i] & 15];
  }
  return s;
}
}  // namespace

Decoder::Decoder(DecoderOptions options) : opt_(options) {
  if (opt_.max_message_size < kHeaderSize)
    throw st::Error("protocol::Decoder: max_message_size " + std::to_string(opt_.max_message_size) +
                    " is smaller than the 32-byte header");
  set_versions(opt_.min_version, opt_.max_version);
}

size_t max_pre_welcome_message_size() {
  size_t m = 0;
  for (MessageType t : {MessageType::Hello, MessageType::Bye, MessageType::Error})
    m = std::max(m, kHeaderSize + payload_bounds(t).max);
  return m;
}

void Decoder::set_limits(size_t max_message_size, uint32_t accepted_types) {
  if (max_message_size < kHeaderSize)
    throw st::Error("protocol::Decoder: max_message_size " + std::to_string(max_message_size) +
                    " is smaller than the 32-byte header");
  opt_.max_message_size = max_message_size;
  opt_.accepted_types = accepted_types;
}

void Decoder::set_versions(uint16_t min_version, uint16_t max_version) {
  if (min_version < 1 || max_version < min_version)
    throw st::Error("protocol::Decoder: bad version range [" + std::to_string(min_version) + ", " +
                    std::to_string(max_version) + "]");
  opt_.min_version = min_version;
  opt_.max_version = max_version;
}

void Decoder::throw_if_failed() const {
  if (error_) throw ProtocolError(error_->code(), "decoder already failed: " + error_->text());
}

void Decoder::fail(ErrorCode code, const std::string& text) {
  error_.emplace(code, text);
  throw *error_;
}

void Decoder::feed(const uint8_t* data, size_t size) {
  throw_if_failed();
  if (size == 0) return;
  if (off_ == buf_.size()) {
    buf_.clear();
    off_ = 0;
  } else if (off_ > 0 && off_ >= buf_.size() - off_) {
    const size_t keep = buf_.size() - off_;
    std::memmove(buf_.data(), buf_.data() + off_, keep);
    buf_.resize(keep);
    off_ = 0;
  }
  // Complete the pending header first and validate it, so a bad or oversize header is refused
  // before any of its payload is buffered (and a valid one reserves room for the payload).
  if (!have_header_ && buffered() < kHeaderSize) {
    const size_t head = std::min(size, kHeaderSize - buffered());
    buf_.insert(buf_.end(), data, data + head);
    data += head;
    size -= head;
    check_header();
  }
  if (size > 0) {
    buf_.insert(buf_.end(), data, data + size);
    check_header();
  }
}

void Decoder::check_header() {
  if (have_header_) return;
  const size_t avail = buffered();
  const uint8_t* p = buf_.data() + off_;
  // The magic is checked byte by byte as it arrives: garbage is refused at once.
  const size_t m = avail < 4 ? avail : 4;
  if (m > 0 && std::memcmp(p, kMagic, m) != 0)
    fail(ErrorCode::BadMagic, "message at stream offset " + std::to_string(consumed_) +
                                  " starts with [" + hex_bytes(p, m) +
                                  "], expected \"STW1\" [53 54 57 31]");
  if (avail < kHeaderSize) return;

  const uint32_t stored_crc = uint32_t(p[28]) | uint32_t(p[29]) << 8 | uint32_t(p[30]) << 16 |
                              uint32_t(p[31]) << 24;
  const uint32_t crc = header_crc(p);
  if (crc != stored_crc)
    fail(ErrorCode::BadHeaderCrc, "header CRC32C is " + std::to_string(stored_crc) +
                                      ", bytes 0..27 give " + std::to_string(crc));
  const Header h = read_header(p);

  const bool any_version = h.type == uint16_t(MessageType::Hello) ||
                           h.type == uint16_t(MessageType::Error);
  if (h.version == 0 ||
      (!any_version && (h.version < opt_.min_version || h.version > opt_.max_version)))
    fail(ErrorCode::UnsupportedVersion,
         "header version " + std::to_string(h.version) + " (type " + std::to_string(h.type) +
             ") is outside the accepted range [" + std::to_string(opt_.min_version) + ", " +
             std::to_string(opt_.max_version) + "]");
  if (h.type < 1 || h.type > max_message_type(h.version))
    fail(ErrorCode::UnknownType, "header type " + std::to_string(h.type) +
                                     " is not a message type of version " +
                                     std::to_string(h.version));
  const MessageType type = MessageType(h.type);
  const char* name = message_type_name(type);
  if ((opt_.accepted_types & (1u << h.type)) == 0)
    fail(ErrorCode::UnexpectedMessage,
         std::string(name) + " is not accepted at this point of the conversation" +
             (opt_.accepted_types == kPreWelcomeTypes ? " (before WELCOME: HELLO, BYE, ERROR)"
                                                       : ""));
  if (h.flags != 0)
    fail(ErrorCode::BadFlags, std::string(name) + ": reserved flag bits set (flags = " +
                                  std::to_string(h.flags) + ")");
  const uint64_t total = uint64_t(kHeaderSize) + h.payload_size;
  if (total > opt_.max_message_size)
    fail(ErrorCode::Oversize, std::string(name) + ": message of " + std::to_string(total) +
                                  " bytes exceeds the limit of " +
                                  std::to_string(opt_.max_message_size));
  const PayloadBounds pb = payload_bounds(type);
  if (h.payload_size < pb.min)
    fail(ErrorCode::Truncated, std::string(name) + ": payload of " +
                                   std::to_string(h.payload_size) + " bytes, at least " +
                                   std::to_string(pb.min) + " needed");
  if (h.payload_size > pb.max)
    fail(ErrorCode::Oversize, std::string(name) + ": payload of " +
                                  std::to_string(h.payload_size) + " bytes, at most " +
                                  std::to_string(pb.max) + " allowed");
  if (opt_.check_sequence && h.seq != expected_seq_)
    fail(ErrorCode::BadSequence, std::string(name) + ": sequence number " +
                                     std::to_string(h.seq) + ", expected " +
                                     std::to_string(expected_seq_));
  hdr_ = h;
  have_header_ = true;
  // Room for the whole message now, so a big payload arriving in chunks does not reallocate.
  if (buf_.capacity() < off_ + total) buf_.reserve(off_ + size_t(total));
}

bool Decoder::next(Message& out) {
  throw_if_failed();
  check_header();
  if (!have_header_) return false;
  const size_t total = kHeaderSize + size_t(hdr_.payload_size);
  if (buffered() < total) return false;
  const uint8_t* payload = buf_.data() + off_ + kHeaderSize;
  const MessageType type = MessageType(hdr_.type);
  const uint32_t crc = crc32c(payload, hdr_.payload_size);
  if (crc != hdr_.payload_crc)
    fail(ErrorCode::BadCrc, std::string(message_type_name(type)) + ": payload CRC32C is " +
                                std::to_string(crc) + ", header says " +
                                std::to_string(hdr_.payload_crc));
  Body body;
  try {
    body = decode_payload(type, payload, hdr_.payload_size);
  } catch (const ProtocolError& e) {
    fail(e.code(), e.text());
  }
  // WELCOME is sent under the version it announces (docs/protocol.md §5).
  if (const Welcome* w = std::get_if<Welcome>(&body); w && w->version != hdr_.version)
    fail(ErrorCode::Malformed, "WELCOME.version " + std::to_string(w->version) +
                                   " but sent under header version " +
                                   std::to_string(hdr_.version));
  out.seq = hdr_.seq;
  out.version = hdr_.version;
  out.body = std::move(body);
  off_ += total;
  consumed_ += total;
  have_header_ = false;
  ++expected_seq_;
  if (off_ == buf_.size()) {
    buf_.clear();
    off_ = 0;
  }
  return true;
}

void Decoder::finish() const {
  throw_if_failed();
  if (buffered() == 0) return;
  std::string what = std::to_string(buffered()) + " bytes of an unfinished message at end of stream";
  if (have_header_)
    what += " (" + std::string(message_type_name(MessageType(hdr_.type))) + " of " +
            std::to_string(kHeaderSize + hdr_.payload_size) + " bytes)";
  throw ProtocolError(ErrorCode::Truncated, what);
}

}  // namespace st::protocol
