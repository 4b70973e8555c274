// libFuzzer target for the wire protocol decoder. Built by tools/fuzz_protocol.sh with
//   clang++ -fsanitize=fuzzer,address,undefined
// (a .cc file, so the main build's protocol/*.cpp glob does not compile it into st_app).
//
// Every input is used three ways; anything other than a clean decode or a ProtocolError
// (a crash, a sanitizer report, another exception, a broken invariant) is a finding:
//  1. as a byte stream, fed whole to a default Decoder;
//  2. the same stream fed in pseudo-random chunks (1..64 bytes) under other options; with the
//     same options it must give the same messages and the same error code as (1), and the
//     re-encoding of the decoded messages must reproduce the input prefix byte for byte;
//  3. as "type byte + payload", wrapped in a frame with correct CRCs, so mutations reach the
//     payload parsers (in (1) nearly every mutation of a payload only breaks its CRC).
//  4. as a script of well-formed messages (3 bytes each: sender and type, two parameters) run
//     through the conversation checkers of both ends: the sender's on_send and the receiver's
//     on_receive must accept or refuse each message alike.
// Decoded messages of (1) and (3) also go through the conversation checker on both roles.
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "protocol/conversation.h"
#include "protocol/crc32c.h"
#include "protocol/decoder.h"
#include "protocol/protocol.h"

using namespace st::protocol;

namespace {

[[noreturn]] void broken(const char* what) {
  std::fprintf(stderr, "fuzz_decoder: invariant broken: %s\n", what);
  std::abort();
}

struct Outcome {
  std::vector<Message> msgs;
  std::string error = "ok";  // error_code_name of the ProtocolError, or "ok"
};

// chunk == 0: whole; otherwise sizes 1..chunk from a small LCG seeded with `seed`.
Outcome run(const uint8_t* data, size_t size, const DecoderOptions& opt, size_t chunk,
            uint32_t seed) {
  Outcome out;
  Decoder d(opt);
  try {
    size_t pos = 0;
    Message m;
    if (size == 0) d.next(m);
    while (pos < size) {
      size_t n = size - pos;
      if (chunk) {
        seed = seed * 1664525u + 1013904223u;
        n = std::min<size_t>(n, 1 + (seed >> 16) % chunk);
      }
      d.feed(data + pos, n);
      pos += n;
      while (d.next(m)) out.msgs.push_back(m);
    }
    d.finish();
  } catch (const ProtocolError& e) {
    out.error = error_code_name(e.code());
    if (e.code() != ErrorCode::Truncated && !d.failed()) broken("error without poisoning");
  }
  return out;
}

void converse(const std::vector<Message>& msgs) {
  for (Role self : {Role::Edge, Role::Server}) {
    Conversation c(self);
    try {
      for (const Message& m : msgs) c.on_receive(m);
    } catch (const ProtocolError& e) {
      if (e.code() != ErrorCode::UnexpectedMessage) broken("conversation error code");
    }
  }
}

void check_reencode(const std::vector<Message>& msgs, const uint8_t* data, size_t size) {
  std::vector<uint8_t> again;
  for (const Message& m : msgs) encode_to(m, again);  // must not throw: they were valid
  if (again.empty()) return;
  if (again.size() > size || std::memcmp(again.data(), data, again.size()) != 0)
    broken("re-encoding differs from the decoded bytes");
}

// A valid message from 3 script bytes; the parameters steer it into and out of the rules.
Body scripted(MessageType t, uint8_t p, uint8_t q) {
  switch (t) {
    case MessageType::Hello: {
      Hello h;
      h.max_version = uint16_t(1 + q % 3);
      h.mode = st::Mode(p % 3);
      h.accept_blobs = uint8_t(1 + (p >> 2) % 3);
      h.frame_width = 4;
      h.frame_height = 3;
      return h;
    }
    case MessageType::Welcome: {
      Welcome w;
      w.version = uint16_t(1 + q % 3);
      w.mode = st::Mode(p % 3);
      w.blob_kind = st::BlobEncoding((p >> 2) % 3);
      if (w.version >= 3 && w.mode != st::Mode::Naive && (p >> 4) % 2)  // asks for the weights
        w.scope = WeightsScope::Wanted, w.blob_kind = st::BlobEncoding::None;
      if (w.blob_kind != st::BlobEncoding::None) w.blob = {1, 2};
      w.accept_frames = uint8_t(kAcceptRawBgr | ((q >> 1) & 6));
      w.train_from = implied_train_from(w.mode);
      if (w.version >= 2 && w.mode == st::Mode::Partial) {  // any split version 2 can carry
        w.train_from = uint8_t(kMinTrainFrom + (q >> 4) % (kMaxTrainFrom - kMinTrainFrom + 1));
        w.train = TrainedTensors((q >> 3) & 1);
      }
      return w;
    }
    case MessageType::KeyFrame: {
      KeyFrame k;
      k.frame_index = p;
      k.encoding = FrameEncoding(q % 3);
      k.width = 4 + ((q >> 2) & 1);
      k.height = 3;
      k.data.assign(size_t(k.width) * k.height * 3, 0);
      return k;
    }
    case MessageType::Update: {
      Update u;
      u.key_frame = p;
      u.next_stride = uint32_t(1 + q % 80);
      u.blob_kind = st::BlobEncoding((q >> 6) % 4);  // 3: an update blob (version 2)
      if (u.blob_kind != st::BlobEncoding::None) u.blob = {3};
      return u;
    }
    case MessageType::Labels: {
      Labels l;
      l.frame_index = p;
      l.width = 4 + (q & 1);
      l.height = 3;
      l.labels.assign(size_t(l.width) * l.height, 0);
      return l;
    }
    case MessageType::Error: return ErrorMessage{ErrorCode::Internal, ""};
    case MessageType::Ping: return Ping{uint64_t(p % 4)};
    case MessageType::Pong: return Pong{uint64_t(p % 4)};
    case MessageType::Bye: return Bye{};
    case MessageType::Resync: return Resync{p};
    case MessageType::Weights: return Weights{st::BlobEncoding(1 + q % 2), {1, 2}};
  }
  return Bye{};
}

void script(const uint8_t* data, size_t size) {
  Conversation ends[2] = {Conversation(Role::Edge), Conversation(Role::Server)};
  for (size_t i = 0; i + 3 <= size; i += 3) {
    const size_t from = data[i] & 1;
    const MessageType t = MessageType((data[i] >> 1) % kMaxMessageType + 1);
    Message m{0, 1, scripted(t, data[i + 1], data[i + 2])};
    bool sent = true, received = true;
    try {
      ends[from].on_send(m);
    } catch (const ProtocolError&) {
      sent = false;
    }
    try {
      ends[1 - from].on_receive(m);
    } catch (const ProtocolError&) {
      received = false;
    }
    if (sent != received) broken("the two ends of a conversation disagree");
    if (!sent) return;  // the connection would be closed
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const uint32_t seed = crc32c(data, size);

  // 1 + 2: the input as a stream.
  DecoderOptions def;
  Outcome whole = run(data, size, def, 0, seed);
  Outcome chunked = run(data, size, def, 64, seed);
  if (whole.error != chunked.error) broken("chunking changed the error");
  if (whole.msgs != chunked.msgs) broken("chunking changed the messages");
  check_reencode(whole.msgs, data, size);
  converse(whole.msgs);

  DecoderOptions other;
  other.max_message_size = 4096;
  other.check_sequence = false;
  other.max_version = 3;
  Outcome small = run(data, size, other, 7, seed ^ 0x9E3779B9u);
  check_reencode(small.msgs, data, size);

  // 3: type byte + payload, framed with valid CRCs.
  if (size >= 1 && size - 1 <= 0xFFFFFFFFu) {
    std::vector<uint8_t> frame(kHeaderSize);
    Header h;
    h.type = uint16_t(data[0] % kMaxMessageType + 1);
    h.payload_size = uint32_t(size - 1);
    h.payload_crc = crc32c(data + 1, size - 1);
    write_header(h, frame.data());
    frame.insert(frame.end(), data + 1, data + size);
    Outcome framed = run(frame.data(), frame.size(), def, 0, seed);
    if (framed.msgs.size() > 1) broken("one frame gave several messages");
    check_reencode(framed.msgs, frame.data(), frame.size());
    converse(framed.msgs);
    // The payload parser alone agrees with the decoder.
    try {
      Body b = decode_payload(MessageType(h.type), data + 1, size - 1);
      // A WELCOME must come under the header version it announces, which the payload parser
      // alone cannot see: the decoder refuses the others.
      const Welcome* w = std::get_if<Welcome>(&b);
      if (w && w->version != h.version) {
        if (!framed.msgs.empty()) broken("a WELCOME under another header version was accepted");
      } else if (framed.msgs.size() != 1 || !(framed.msgs[0].body == b)) {
        broken("decode_payload differs");
      }
    } catch (const ProtocolError&) {
      if (!framed.msgs.empty()) broken("decode_payload threw on a decodable payload");
    }
  }

  // 4: a conversation script.
  script(data, size);
  return 0;
}
