// The conversation checker (protocol/conversation.h); the rules are docs/protocol.md
// "State machine".
#include "protocol/conversation.h"

namespace st::protocol {
namespace {
const char* role_name(Role r) { return r == Role::Edge ? "edge" : "server"; }
[[noreturn]] void unexpected(Role from, MessageType t, const std::string& why) {
  throw ProtocolError(ErrorCode::UnexpectedMessage,
                      std::string(message_type_name(t)) + " from the " + role_name(from) + ": " +
                          why);
}
bool blob_accepted(uint8_t accept, BlobEncoding k) {
  return k == BlobEncoding::None || (k == BlobEncoding::F32 && (accept & kAcceptF32)) ||
         (k == BlobEncoding::F16 && (accept & kAcceptF16));
}
}  // namespace

void Conversation::check(Role from, const Message& m) {
  const MessageType t = m.type();
  const Role other = from == Role::Edge ? Role::Server : Role::Edge;
  const bool edge = from == Role::Edge;
  if (error_seen_) unexpected(from, t, "the conversation ended with an ERROR");
  if (done_[size_t(from)]) unexpected(from, t, "the sender already ended with BYE");

  // Before WELCOME only the handshake, BYE and ERROR may go.
  if (!welcome_ && t != MessageType::Hello && t != MessageType::Welcome &&
      t != MessageType::Error && t != MessageType::Bye)
    unexpected(from, t, "before WELCOME");

  switch (t) {
    case MessageType::Hello: {
      if (!edge) unexpected(from, t, "only the edge sends HELLO");
      if (hello_) unexpected(from, t, "HELLO was already sent");
      hello_ = m.as<Hello>();
      break;
    }
    case MessageType::Welcome: {
      if (edge) unexpected(from, t, "only the server sends WELCOME");
      if (!hello_) unexpected(from, t, "no HELLO yet");
      if (welcome_) unexpected(from, t, "WELCOME was already sent");
      const Welcome& w = m.as<Welcome>();
      if (w.version < hello_->min_version || w.version > hello_->max_version)
        unexpected(from, t, "version " + std::to_string(w.version) + " is outside HELLO's [" +
                                std::to_string(hello_->min_version) + ", " +
                                std::to_string(hello_->max_version) + "]");
      if (w.mode != hello_->mode) unexpected(from, t, "mode differs from the one HELLO asked");
      if (!blob_accepted(hello_->accept_blobs, w.blob_kind))
        unexpected(from, t, "blob encoding not in HELLO.accept_blobs");
      welcome_ = w;
      weights_wanted_ = w.scope == WeightsScope::Wanted;
      break;
    }
    case MessageType::KeyFrame: {
      if (!edge) unexpected(from, t, "only the edge sends KEY_FRAME");
      if (weights_wanted_) unexpected(from, t, "WELCOME asked for the edge's WEIGHTS first");
      const KeyFrame& k = m.as<KeyFrame>();
      if (last_key_frame_ && k.frame_index <= *last_key_frame_)
        unexpected(from, t, "frame_index " + std::to_string(k.frame_index) +
                                " does not follow the previous key frame " +
                                std::to_string(*last_key_frame_));
      if (key_frames_.size() >= kMaxOutstandingKeyFrames)
        unexpected(from, t, "the previous key frame " + std::to_string(key_frames_.front()) +
                                " is not answered yet");
      if ((welcome_->accept_frames & (1u << uint8_t(k.encoding))) == 0)
        unexpected(from, t, "encoding not in WELCOME.accept_frames");
      if (k.width != hello_->frame_width || k.height != hello_->frame_height)
        unexpected(from, t, "frame size " + std::to_string(k.width) + "x" +
                                std::to_string(k.height) + " differs from HELLO's " +
                                std::to_string(hello_->frame_width) + "x" +
                                std::to_string(hello_->frame_height));
      last_key_frame_ = k.frame_index;
      key_frames_.push_back(k.frame_index);
      break;
    }
    case MessageType::Update:
    case MessageType::Labels: {
      if (edge) unexpected(from, t, "only the server answers key frames");
      const bool naive = welcome_->mode == Mode::Naive;
      if (naive != (t == MessageType::Labels))
        unexpected(from, t, naive ? "a Naive session answers with LABELS"
                                  : "a distillation session answers with UPDATE");
      const uint64_t idx =
          t == MessageType::Update ? m.as<Update>().key_frame : m.as<Labels>().frame_index;
      if (key_frames_.empty() || key_frames_.front() != idx)
        unexpected(from, t, "answers frame " + std::to_string(idx) + ", but " +
                                (key_frames_.empty() ? std::string("no key frame is pending")
                                                     : "the pending key frame is " +
                                                           std::to_string(key_frames_.front())));
      if (t == MessageType::Update) {
        const Update& u = m.as<Update>();
        if (u.next_stride < welcome_->min_stride || u.next_stride > welcome_->max_stride)
          unexpected(from, t, "next_stride " + std::to_string(u.next_stride) +
                                  " is outside WELCOME's [" +
                                  std::to_string(welcome_->min_stride) + ", " +
                                  std::to_string(welcome_->max_stride) + "]");
        if (u.blob_kind == BlobEncoding::Update) {
          if (welcome_->version < 2)
            unexpected(from, t, "an update blob (blob_kind 3) needs protocol version 2");
        } else if (!blob_accepted(hello_->accept_blobs, u.blob_kind)) {
          unexpected(from, t, "blob encoding not in HELLO.accept_blobs");
        }
      } else {
        const Labels& l = m.as<Labels>();
        if (l.width != hello_->frame_width || l.height != hello_->frame_height)
          unexpected(from, t, "label map size differs from HELLO's frame size");
      }
      key_frames_.pop_front();
      break;
    }
    case MessageType::Ping: {
      auto& q = pings_[size_t(from)];
      if (q.size() >= kMaxOutstandingPings)
        unexpected(from, t, std::to_string(q.size()) + " PINGs are unanswered");
      q.push_back(m.as<Ping>().nonce);
      break;
    }
    case MessageType::Pong: {
      auto& q = pings_[size_t(other)];
      const uint64_t nonce = m.as<Pong>().nonce;
      if (q.empty() || q.front() != nonce)
        unexpected(from, t, "nonce " + std::to_string(nonce) + " does not answer the oldest PING");
      q.pop_front();
      break;
    }
    case MessageType::Resync: {
      if (!edge) unexpected(from, t, "only the edge sends RESYNC");
      if (welcome_->version < 2) unexpected(from, t, "RESYNC needs protocol version 2");
      if (welcome_->mode == Mode::Naive) unexpected(from, t, "a Naive session has no weights");
      if (weights_wanted_) unexpected(from, t, "WELCOME asked for the edge's WEIGHTS first");
      if (resync_pending_) unexpected(from, t, "the previous RESYNC is not answered yet");
      resync_pending_ = true;
      break;
    }
    case MessageType::Weights: {
      if (edge) {  // version 3: session migration, once, when WELCOME asked for it
        if (!weights_wanted_)
          unexpected(from, t, "the edge sends WEIGHTS only when WELCOME asked for them (scope 2)");
        if (m.as<Weights>().blob_kind != BlobEncoding::F32)
          unexpected(from, t, "the edge's weights go in fp32 (blob_kind 1): they must hash to "
                              "HELLO.weights_hash");
        weights_wanted_ = false;
        break;
      }
      if (!resync_pending_) unexpected(from, t, "no RESYNC to answer");
      if (!blob_accepted(hello_->accept_blobs, m.as<Weights>().blob_kind))
        unexpected(from, t, "blob encoding not in HELLO.accept_blobs");
      resync_pending_ = false;
      break;
    }
    case MessageType::Error: error_seen_ = true; done_[size_t(from)] = true; break;
    case MessageType::Bye: done_[size_t(from)] = true; break;
  }
}

}  // namespace st::protocol
