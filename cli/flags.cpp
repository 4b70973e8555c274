// Command-line pieces the programs share (flags.h).
#include "cli/flags.h"

#include <fstream>

#include "common/error.h"

namespace st::cli {

Device parse_device(const std::string& s) {
  if (s == "cpu") return Device::cpu();
  if (s == "cuda") return Device::cuda(0);
  if (s.rfind("cuda:", 0) == 0 && s.size() > 5 && s.size() < 8 &&
      s.find_first_not_of("0123456789", 5) == std::string::npos)
    return Device::cuda(std::stoi(s.substr(5)));
  throw Error("bad device '" + s + "' (cpu, cuda or cuda:N)");
}

bool read_token_file(const std::string& path, std::string& token) {
  std::ifstream f(path);
  if (!f) return false;
  std::getline(f, token);
  if (!token.empty() && token.back() == '\r') token.pop_back();
  return true;
}

}  // namespace st::cli
