// Helpers shared by the benchmarks: running a peer process and reading its JSON lines.
#pragma once
#include <cstdio>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace st::bench {

// Runs `cmd` through the shell and returns its output lines; rc receives pclose's status
// (-1 if it did not run).
inline std::vector<std::string> run_lines(const std::string& cmd, int& rc) {
  std::vector<std::string> out;
  FILE* f = popen(cmd.c_str(), "r");
  if (!f) {
    rc = -1;
    return out;
  }
  char buf[4096];
  while (std::fgets(buf, sizeof buf, f)) out.emplace_back(buf);
  rc = pclose(f);
  return out;
}

// The value of "key" in a one-line JSON object, as text (strings unquoted, numbers as
// written); "" when the line is not a JSON object or lacks the key.
inline std::string json_field(const std::string& line, const std::string& key) {
  auto j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object() || !j.contains(key)) return "";
  const auto& v = j[key];
  return v.is_string() ? v.get<std::string>() : v.dump();
}

}  // namespace st::bench
