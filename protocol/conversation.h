// The conversation rules of docs/protocol.md "State machine", as a checker both programs run
// over every message they send and receive on one connection:
//   edge:   HELLO, then (after WELCOME) WEIGHTS when WELCOME asked for them (version 3, before
//           anything but PING/PONG), KEY_FRAME*, PING/PONG*, RESYNC* (version 2, one at a
//           time), then BYE or ERROR
//   server: WELCOME (or ERROR) after HELLO, then one UPDATE (Partial/Full) or LABELS (Naive)
//           per KEY_FRAME in order, one WEIGHTS per RESYNC, PING/PONG*, then BYE or ERROR
// A violation throws ProtocolError(UnexpectedMessage) naming the rule; the program then sends
// ERROR(UnexpectedMessage) (when the violation was the peer's) and closes.
#pragma once
#include <cstdint>
#include <deque>
#include <optional>

#include "protocol/protocol.h"

namespace st::protocol {

enum class Role : uint8_t { Edge = 0, Server = 1 };

class Conversation {
 public:
  // At most this many KEY_FRAMEs without their UPDATE/LABELS (protocol version 1: the edge
  // picks the next key frame from the answer's stride, so one is all it can have).
  static constexpr size_t kMaxOutstandingKeyFrames = 1;
  static constexpr size_t kMaxOutstandingPings = 8;  // per side

  explicit Conversation(Role self) : self_(self) {}

  // Checks a message this side is about to send / has just decoded, and records it.
  void on_send(const Message& m) { check(self_, m); }
  void on_receive(const Message& m) { check(self_ == Role::Edge ? Role::Server : Role::Edge, m); }

  const std::optional<Hello>& hello() const { return hello_; }
  const std::optional<Welcome>& welcome() const { return welcome_; }
  bool welcomed() const { return welcome_.has_value(); }
  // True once an ERROR went either way, or both sides said BYE: close the connection.
  bool closed() const { return error_seen_ || (done_[0] && done_[1]); }
  bool finished(Role r) const { return done_[size_t(r)]; }  // r sent BYE or ERROR
  size_t outstanding_key_frames() const { return key_frames_.size(); }

 private:
  void check(Role from, const Message& m);

  Role self_;
  std::optional<Hello> hello_;
  std::optional<Welcome> welcome_;
  bool error_seen_ = false;
  bool done_[2] = {false, false};
  std::optional<uint64_t> last_key_frame_;
  bool resync_pending_ = false;  // a RESYNC the server has not answered with WEIGHTS
  bool weights_wanted_ = false;  // WELCOME asked for the edge's WEIGHTS (version 3), not sent yet
  std::deque<uint64_t> key_frames_;  // sent, not yet answered, oldest first
  std::deque<uint64_t> pings_[2];    // nonces of PINGs sent by each role, not yet answered
};

}  // namespace st::protocol
