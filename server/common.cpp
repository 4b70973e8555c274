#include "server/common.h"

#include <csignal>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <mutex>

namespace st::net {

uint64_t weights_hash(const nn::Student& s) {
  uint64_t h = 0xcbf29ce484222325ull;
  auto mix = [&](const void* p, size_t n) {
    const unsigned char* c = static_cast<const unsigned char*>(p);
    for (size_t i = 0; i < n; ++i) {
      h ^= c[i];
      h *= 0x100000001b3ull;
    }
  };
  for (auto& [name, t] : s.named_parameters()) {
    mix(name.data(), name.size());
    for (int64_t d : t.shape()) mix(&d, sizeof d);
    Tensor c = t.device().is_cpu() ? t.contiguous() : t.to(Device::cpu());
    ST_CHECK(c.dtype() == DType::F32, "weights_hash: parameter ", name, " is not float32");
    mix(c.data<float>(), size_t(c.numel()) * sizeof(float));
  }
  return h;
}

bool read_token_file(const std::string& path, std::string& token) {
  std::ifstream f(path);
  if (!f) return false;
  std::getline(f, token);
  if (!token.empty() && token.back() == '\r') token.pop_back();
  return true;
}

Device parse_device(const std::string& s) {
  if (s == "cpu") return Device::cpu();
  if (s == "cuda") return Device::cuda(0);
  if (s.rfind("cuda:", 0) == 0 && s.size() > 5 && s.size() < 8 &&
      s.find_first_not_of("0123456789", 5) == std::string::npos)
    return Device::cuda(std::stoi(s.substr(5)));
  throw Error("bad device '" + s + "' (cpu, cuda or cuda:N)");
}

std::pair<std::string, int> parse_host_port(const std::string& s) {
  std::string host, port;
  if (!s.empty() && s[0] == '[') {
    auto close = s.find(']');
    ST_CHECK(close != std::string::npos && close + 1 < s.size() && s[close + 1] == ':',
             "bad address '", s, "' (expected [IPV6]:PORT)");
    host = s.substr(1, close - 1);
    port = s.substr(close + 2);
  } else {
    auto colon = s.rfind(':');
    ST_CHECK(colon != std::string::npos, "bad address '", s, "' (expected HOST:PORT)");
    host = s.substr(0, colon);
    port = s.substr(colon + 1);
  }
  if (host.empty()) host = "127.0.0.1";
  ST_CHECK(!port.empty() && port.size() <= 5 &&
               port.find_first_not_of("0123456789") == std::string::npos,
           "bad port in '", s, "'");
  int p = std::stoi(port);
  ST_CHECK(p >= 1 && p <= 65535, "port ", p, " out of range in '", s, "'");
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
