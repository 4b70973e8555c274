// Raw protocol clients for the server tests (test_server.cpp, test_hostile.cpp): a blocking
// TCP socket that sends whatever bytes a test gives it, valid or not, and the messages a test
// needs to build them.
#pragma once
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>
#include <vector>

#include "nn/blob.h"
#include "nn/student.h"
#include "protocol/crc32c.h"
#include "protocol/decoder.h"
#include "protocol/protocol.h"
#include "net/net.h"
#include "synthetic_clip.h"
#include "test_util.h"

namespace st::test {

using namespace st::protocol;

// A blocking raw TCP client for feeding the server bytes no real edge would send.
struct Raw {
  int fd = -1;
  Decoder dec;
  // rcvbuf > 0: the socket's receive buffer (set before connecting, so the window stays small).
  explicit Raw(int port, int rcvbuf = 0) {
    fd = ::socket(AF_INET, SOCK_STREAM, 0);
    REQUIRE(fd >= 0);
    if (rcvbuf > 0) ::setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(uint16_t(port));
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    REQUIRE(::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
    timeval tv{time_t(test::kHungS), 0};  // a read that waits this long: a hung test
    ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  }
  ~Raw() { close(); }
  void close() {
    if (fd >= 0) ::close(fd);
    fd = -1;
  }
  void send(const std::vector<uint8_t>& b) {
    size_t off = 0;
    while (off < b.size()) {
      ssize_t n = ::send(fd, b.data() + off, b.size() - off, MSG_NOSIGNAL);
      REQUIRE(n > 0);
      off += size_t(n);
    }
  }
  // Reads messages until the peer closes (then `closed`) or a read times out.
  struct Got {
    std::vector<Message> msgs;
    bool closed = false;
  };
  Got read_until_closed() {
    Got g;
    uint8_t buf[65536];
    for (;;) {
      ssize_t n = ::recv(fd, buf, sizeof buf, 0);
      if (n == 0 || (n < 0 && errno == ECONNRESET)) {
        g.closed = true;
        break;
      }
      if (n < 0) break;  // timeout
      dec.feed(buf, size_t(n));
      Message m;
      while (dec.next(m)) g.msgs.push_back(m);
    }
    return g;
  }
  // Sends what the peer takes, stopping at the first error (it closed, or a send blocked for
  // kHungS). Returns the bytes sent.
  size_t send_until_error(const uint8_t* p, size_t size) {
    size_t off = 0;
    while (off < size) {
      ssize_t n = ::send(fd, p + off, size - off, MSG_NOSIGNAL);
      if (n <= 0) break;
      off += size_t(n);
    }
    return off;
  }
  Message read_one() {
    uint8_t buf[65536];
    Message m;
    while (!dec.next(m)) {
      ssize_t n = ::recv(fd, buf, sizeof buf, 0);
      REQUIRE(n > 0);
      dec.feed(buf, size_t(n));
    }
    return m;
  }
};

inline Hello good_hello(const std::string& token = "sesame", int64_t width = 64,
                        int64_t height = 48) {
  nn::Student s(0);
  Hello h;
  h.mode = st::Mode::Partial;
  h.layout_hash = nn::layout_hash(s, nn::Distillation::Full);
  h.weights_hash = nn::weights_hash(s);
  h.frame_width = uint32_t(width);
  h.frame_height = uint32_t(height);
  h.auth_token = token;
  h.edge_name = "raw";
  return h;
}

// Under the library's protocol version, which the server picks for good_hello()'s range.
inline std::vector<uint8_t> encode_msg(Body b, uint64_t seq = 0,
                                       uint16_t version = kProtocolVersion) {
  return encode(Message{seq, version, std::move(b)});
}

// Rewrites the payload CRC and header CRC after a payload byte was changed.
inline void fix_crcs(std::vector<uint8_t>& m) {
  uint32_t pc = crc32c(m.data() + 32, m.size() - 32);
  std::memcpy(m.data() + 24, &pc, 4);
  uint32_t hc = header_crc(m.data());
  std::memcpy(m.data() + 28, &hc, 4);
}

// A header alone, with valid CRCs (payload CRC of zero bytes of that size).
inline std::vector<uint8_t> header_only(MessageType t, uint32_t payload_size) {
  Header h;
  h.type = uint16_t(t);
  h.payload_size = payload_size;
  std::vector<uint8_t> zeros(std::min<uint32_t>(payload_size, 1u << 20), 0);
  h.payload_crc = crc32c(zeros.data(), zeros.size());
  std::vector<uint8_t> out(32);
  write_header(h, out.data());
  return out;
}

inline ErrorCode expect_error_and_close(Raw& r) {
  auto g = r.read_until_closed();
  REQUIRE(g.closed);
  REQUIRE(!g.msgs.empty());
  REQUIRE(g.msgs.back().is<ErrorMessage>());
  return g.msgs.back().as<ErrorMessage>().code;
}

inline KeyFrame key_frame(uint64_t idx, int64_t width = 64, int64_t height = 48) {
  KeyFrame k;
  k.frame_index = idx;
  k.width = uint32_t(width);
  k.height = uint32_t(height);
  k.data.assign(size_t(width * height * 3), 50);
  return k;
}

}  // namespace st::test
