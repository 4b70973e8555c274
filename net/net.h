// Small networking pieces shared by shadowtutor-server and shadowtutor-edge: host:port parsing,
// a thread-safe log line with peer text escaped, and SIGPIPE off. Std only.
#pragma once
#include <cstddef>
#include <string>
#include <utility>

namespace st::net {

// "HOST:PORT" (HOST may be empty = 127.0.0.1, or a bracketed IPv6 "[::1]:7000"). Throws
// st::Error naming the text when it is not of that form or the port is not 1..65535.
std::pair<std::string, int> parse_host_port(const std::string& s);

// Writes "[tag] message" plus a newline to stderr under a process-wide mutex. Control
// characters and bytes outside printable ASCII in `message` are written as \xNN, so that no
// text can start a new line or move the terminal's cursor.
void log_line(const char* tag, const std::string& message);
// `message` with every byte outside printable ASCII (0x20..0x7e) as \xNN (and, when asked, '\'
// as \\, so that the result reads back unambiguously).
std::string escape_nonprintable(const std::string& message, bool escape_backslash);
// Text that came from a peer, for a log line: escaped as above, cut to `max_chars` bytes of
// the original (then "...[N bytes]"), and quoted.
std::string peer_text(const std::string& text, size_t max_chars = 120);

// Ignores SIGPIPE process-wide (writes to a closed socket or teacher pipe must return EPIPE,
// not kill the process). Idempotent.
void ignore_sigpipe();

}  // namespace st::net
