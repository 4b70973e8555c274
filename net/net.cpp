// Host:port parsing, log lines, SIGPIPE (net.h).
#include "net/net.h"

#include <csignal>
#include <cstdio>
#include <cstring>
#include <mutex>

#include "common/error.h"

namespace st::net {

std::pair<std::string, int> parse_host_port(const std::string& s) {
  std::string host, port;
  if (!s.empty() && s[0] == '[') {
    auto close = s.find(']');
    if (close == std::string::npos || close + 1 >= s.size() || s[close + 1] != ':')
      throw Error("bad address '" + s + "' (expected [IPV6]:PORT)");
    host = s.substr(1, close - 1);
    port = s.substr(close + 2);
  } else {
    auto colon = s.rfind(':');
    if (colon == std::string::npos) throw Error("bad address '" + s + "' (expected HOST:PORT)");
    host = s.substr(0, colon);
    port = s.substr(colon + 1);
  }
  if (host.empty()) host = "127.0.0.1";
  if (port.empty() || port.size() > 5 || port.find_first_not_of("0123456789") != std::string::npos)
    throw Error("bad port in '" + s + "'");
  int p = std::stoi(port);
  if (p < 1 || p > 65535)
    throw Error("port " + std::to_string(p) + " out of range in '" + s + "'");
  return {host, p};
}

std::string escape_nonprintable(const std::string& message, bool escape_backslash) {
  static const char* hex = "0123456789abcdef";
  std::string out;
  out.reserve(message.size());
  for (unsigned char c : message) {
    if (c == '\\' && escape_backslash) {
      out += "\\\\";
    } else if (c >= 0x20 && c <= 0x7e) {
      out += char(c);
    } else {
      out += "\\x";
      out += hex[c >> 4];
      out += hex[c & 15];
    }
  }
  return out;
}

std::string peer_text(const std::string& text, size_t max_chars) {
  std::string out = "\"" + escape_nonprintable(text.substr(0, max_chars), true) + "\"";
  if (text.size() > max_chars) out += "...[" + std::to_string(text.size()) + " bytes]";
  return out;
}

void log_line(const char* tag, const std::string& message) {
  static std::mutex m;
  const std::string line = escape_nonprintable(message, false);
  std::lock_guard<std::mutex> lock(m);
  std::fprintf(stderr, "[%s] %s\n", tag, line.c_str());
  std::fflush(stderr);
}

void ignore_sigpipe() { std::signal(SIGPIPE, SIG_IGN); }

}  // namespace st::net
