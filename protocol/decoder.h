// The incremental decoder of the wire protocol: feed() it bytes as they arrive, in any split,
// and pop complete messages with next(). Validation order and error codes: docs/protocol.md
// "Decoding". Any error throws ProtocolError and poisons the decoder: every later call throws
// the same code again, because the stream can no longer be framed; close the connection.
//
//   Decoder d;                                   // one per connection and direction
//   on_read(buf, n): d.feed(buf, n); Message m; while (d.next(m)) handle(m);
//   on_eof():        d.finish();                 // throws Truncated inside a message
#pragma once
#include <cstddef>
#include <cstdint>
#include <optional>
#include <vector>

#include "protocol/protocol.h"

namespace st::protocol {

struct DecoderOptions {
  size_t max_message_size = kDefaultMaxMessageSize;  // header + payload, bytes
  uint16_t min_version = kVersionMin;                // header versions accepted (HELLO and
  uint16_t max_version = kVersionMax;                //   ERROR accept any version >= 1)
  bool check_sequence = true;                        // seq must be 0, 1, 2, ...
  // Message types accepted now, one bit per type (bit 1 << type); any other type is refused as
  // UnexpectedMessage from its header alone, before its payload is buffered. A server accepts
  // only HELLO, BYE and ERROR before WELCOME (kPreWelcomeTypes).
  uint32_t accepted_types = kAllTypes;
  static constexpr uint32_t kAllTypes = ~0u;
};

// The types an edge may send before WELCOME (docs/protocol.md §4, rule 1).
inline constexpr uint32_t kPreWelcomeTypes = (1u << uint16_t(MessageType::Hello)) |
                                             (1u << uint16_t(MessageType::Bye)) |
                                             (1u << uint16_t(MessageType::Error));
// The largest message of those: ERROR with the longest text (4,132 B; HELLO is at most 1,346 B).
size_t max_pre_welcome_message_size();

class Decoder {
 public:
  explicit Decoder(DecoderOptions options = {});

  // Appends bytes. Validates the pending message's header as soon as its bytes are here, so a
  // bad magic, an oversize length, ... throw before the payload is buffered.
  void feed(const uint8_t* data, size_t size);
  void feed(const std::vector<uint8_t>& bytes) { feed(bytes.data(), bytes.size()); }
  // Pops the next complete message into `out` (true), or returns false when more bytes are
  // needed. Throws ProtocolError on a malformed message.
  bool next(Message& out);
  // The stream has ended: throws ProtocolError(Truncated) if part of a message is buffered.
  void finish() const;

  // Locks the accepted header versions, e.g. to the negotiated one after HELLO / WELCOME.
  void set_versions(uint16_t min_version, uint16_t max_version);
  // Changes the message size limit and the accepted types for the messages whose headers have
  // not been checked yet (e.g. a server widens both after WELCOME).
  void set_limits(size_t max_message_size, uint32_t accepted_types);

  size_t buffered() const { return buf_.size() - off_; }  // bytes not yet popped
  bool failed() const { return error_.has_value(); }
  uint64_t expected_seq() const { return expected_seq_; }
  const DecoderOptions& options() const { return opt_; }

 private:
  void throw_if_failed() const;
  [[noreturn]] void fail(ErrorCode code, const std::string& text);
  // Validates the header at off_ when (part of) it is buffered; sets have_header_.
  void check_header();

  DecoderOptions opt_;
  std::vector<uint8_t> buf_;  // bytes [off_, size) are not yet consumed
  size_t off_ = 0;
  bool have_header_ = false;  // hdr_ holds the validated header of the message at off_
  Header hdr_;
  uint64_t expected_seq_ = 0;
  uint64_t consumed_ = 0;  // stream bytes popped so far
  std::optional<ProtocolError> error_;
};

}  // namespace st::protocol
