// The edge's network thread: a libuv loop that owns the TCP connection to shadowtutor-server
// (connect, HELLO/WELCOME, KEY_FRAME out, UPDATE/LABELS in, PING/PONG, reconnect with
// exponential backoff, an optional token-bucket link-rate limit per direction). The frame loop
// (client.h, EdgeSession in client.cpp) talks to it through two queues: commands to the network
// thread (send, drop, stop; a uv_async_t wakes the loop) and events back (connected, a message,
// disconnected; mutex + condition variable).
//
// Each TCP connection has an epoch (1, 2, ...): a command names the connection it is meant for
// and is dropped when that connection is gone, so nothing meant for a lost session reaches a
// new one.
#pragma once
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "protocol/protocol.h"

namespace st::edge {

struct ClientOptions {
  std::string host = "127.0.0.1";
  int port = 0;
  double link_mbps = 0;        // > 0: token bucket per direction at this rate (Mbit/s)
  double backoff_initial_s = 0.1, backoff_max_s = 5.0;
  size_t max_message_bytes = protocol::kDefaultMaxMessageSize;
  bool log = true;
};

// The network thread. Thread-safe: every public method may be called from any thread.
class NetClient {
 public:
  struct Event {
    enum Kind { Connected, Message, Disconnected } kind = Connected;
    uint64_t epoch = 0;            // one per TCP connection, 1, 2, ...
    protocol::Message message;     // Kind::Message: WELCOME, UPDATE or LABELS
    std::string text;              // Kind::Disconnected: why
  };

  explicit NetClient(ClientOptions o);
  ~NetClient();  // stop()s
  void start();
  // Sends BYE when connected (best effort), closes, joins the thread.
  void stop();
  // Queues a message on connection `epoch`; dropped when that connection is gone.
  void send(uint64_t epoch, protocol::Body body);
  // Drops connection `epoch` (if current) and reconnects after the backoff; with `error`, first
  // tells the server why (best effort: an ERROR message, when it can go out at once).
  void drop(uint64_t epoch, const std::string& why,
            std::optional<protocol::ErrorMessage> error = std::nullopt);
  bool poll(Event& e);                        // non-blocking
  bool wait(Event& e, double timeout_s);      // false on timeout
  int64_t bytes_up() const { return bytes_up_; }
  int64_t bytes_down() const { return bytes_down_; }

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
  std::atomic<int64_t> bytes_up_{0}, bytes_down_{0};
  friend struct Impl;
};

}  // namespace st::edge
