// Command-line pieces the three programs (shadowtutor, shadowtutor-edge, shadowtutor-server)
// share.
#pragma once
#include <string>

#include "tensor/dtype.h"

namespace st::cli {

// "cpu", "cuda" (= cuda:0) or "cuda:N"; throws st::Error naming the text otherwise.
Device parse_device(const std::string& s);

// The first line of a token file (a trailing CR dropped) into `token`; false when unreadable.
bool read_token_file(const std::string& path, std::string& token);

}  // namespace st::cli
