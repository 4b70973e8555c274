// The programs' command lines (cli/flags.h): values of every kind, the errors (naming the flag
// and the text it refused), --help from the declarations; and the small parsers the programs
// share (host:port, device, token file). The programs themselves: the "cli:" ctest entries
// (CMakeLists.txt) run them.
#include <unistd.h>

#include <catch2/catch.hpp>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "cli/flags.h"
#include "common/error.h"
#include "net/net.h"
#include "test_util.h"

using namespace st;

namespace {

// argv for Flags::parse: the program name, then `args`.
struct Argv {
  std::vector<std::string> words;
  std::vector<char*> ptrs;
  explicit Argv(std::vector<std::string> args) : words(std::move(args)) {
    words.insert(words.begin(), "prog");
    for (auto& w : words) ptrs.push_back(w.data());
    ptrs.push_back(nullptr);
  }
  int argc() const { return int(words.size()); }
  char** argv() { return ptrs.data(); }
};

// What the flags below write to.
struct Targets {
  int64_t frames = -1;
  int port = 0;
  size_t bytes = 16;
  double rate = 0, timeout = 60, wait = 3;
  bool loop = false;
  std::string name;
  std::filesystem::path dir;
  Device device = Device::cpu();
  std::string mode = "partial";
  int quiet = 0;
};

void declare(cli::Flags& f, Targets& t) {
  f.integer("--frames", t.frames, "N", "stop after N frames");
  f.integer("--port", t.port, "P", "port").at_least(0).at_most(65535);
  f.integer("--bytes", t.bytes, "N", "a size");
  f.number("--rate", t.rate, "R", "a rate");
  f.seconds("--timeout", t.timeout, "S", "a timeout\nover two lines").above(0);
  f.seconds("--wait", t.wait, "S", "a wait").allow_infinity();
  f.boolean("--loop", t.loop, "loop");
  f.text("--name", t.name, "TEXT", "a name");
  f.path("--dir", t.dir, "DIR", "a directory");
  f.device("--device", t.device, "D", "a device");
  f.custom("--mode", "M", "a mode", [&t](const std::string& v) {
    if (v != "partial" && v != "full") throw Error("partial or full, not '" + v + "'");
    t.mode = v;
  });
  f.action("--quiet", [&t] { ++t.quiet; }, "quiet");
  f.text("--a-rather-long-flag-name", t.name, "VALUE", "help on a line of its own");
}

// Parses `args`; returns the exit status (-1: go on) and leaves the error in flags.error().
int parse(cli::Flags& f, std::vector<std::string> args) {
  Argv a(std::move(args));
  auto rc = f.parse(a.argc(), a.argv());
  return rc ? *rc : -1;
}

}  // namespace

TEST_CASE("cli: flags set their targets from either form", "[cli][portable]") {
  Targets t;
  cli::Flags f("prog", "usage: prog [options]");
  declare(f, t);
  REQUIRE(parse(f, {"--frames", "10", "--port=7070", "--bytes", "1048576", "--rate", "2.5e1",
                    "--timeout", "250ms", "--wait", "inf", "--loop", "--name", "a b",
                    "--dir=/tmp/x", "--device", "cuda:1", "--mode", "full", "--quiet",
                    "--quiet"}) == -1);
  CHECK(f.error().empty());
  CHECK(t.frames == 10);
  CHECK(t.port == 7070);
  CHECK(t.bytes == 1048576);
  CHECK(t.rate == 25.0);
  CHECK(t.timeout == 0.25);  // 250 * 1e-3 rounds to the double nearest 0.25
  CHECK(std::isinf(t.wait));
  CHECK(t.loop);
  CHECK(t.name == "a b");
  CHECK(t.dir == "/tmp/x");
  CHECK(t.device == Device::cuda(1));
  CHECK(t.mode == "full");
  CHECK(t.quiet == 2);
  CHECK(f.given("--frames"));
  CHECK(f.given("--port"));
  CHECK_FALSE(f.given("--name-x"));
  REQUIRE(parse(f, {"--loop=false", "--timeout", "2s", "--frames=-1"}) == -1);
  CHECK_FALSE(t.loop);
  CHECK(t.timeout == 2.0);
  CHECK(t.frames == -1);
  CHECK_FALSE(f.given("--port"));  // given() is about the last parse only
}

TEST_CASE("cli: a bad flag or value is an error naming the flag and the text", "[cli][portable]") {
  Targets t;
  cli::Flags f("prog", "usage: prog [options]");
  declare(f, t);
  // Each error leaves its target as it was (the value is checked before it is written).
  const std::vector<std::pair<std::vector<std::string>, std::string>> cases = {
      {{"--frames", "10x"}, "--frames: expected an integer, not '10x'"},
      {{"--frames", ""}, "--frames: expected an integer, not ''"},
      {{"--frames", "99999999999999999999"}, "--frames: '99999999999999999999' is out of range"},
      {{"--port", "-1"}, "--port: must be >= 0, not '-1'"},
      {{"--port", "65536"}, "--port: must be <= 65535, not '65536'"},
      {{"--port", "4294967296"},
       "--port: must be within -2147483648..2147483647, not '4294967296'"},
      {{"--bytes", "-1"}, "--bytes: expected a non-negative integer, not '-1'"},
      {{"--rate", "fast"}, "--rate: expected a number, not 'fast'"},
      {{"--rate", "nan"}, "--rate: expected a number, not 'nan'"},
      {{"--rate", "inf"}, "--rate: expected a finite number, not 'inf'"},
      {{"--rate", "1.5x"}, "--rate: expected a number, not '1.5x'"},
      {{"--timeout", "0"}, "--timeout: must be > 0, not '0'"},
      {{"--timeout", "-2s"}, "--timeout: a duration is never negative, not '-2s'"},
      {{"--timeout", "inf"}, "--timeout: expected seconds (30, 1.5s, 250ms), not 'inf'"},
      {{"--timeout", "5min"}, "--timeout: expected seconds (30, 1.5s, 250ms), not '5min'"},
      {{"--loop=maybe"}, "--loop: expected true or false, not 'maybe'"},
      {{"--quiet=no"}, "--quiet: takes no value, not 'no'"},
      {{"--device", "gpu"}, "--device: bad device 'gpu' (cpu, cuda or cuda:N)"},
      {{"--mode", "naive"}, "--mode: partial or full, not 'naive'"},
      {{"--frames"}, "option --frames needs a value"},
      {{"--bogus", "1"}, "unknown option --bogus"},
      {{"frames"}, "unknown option frames"},
      {{"-f"}, "unknown option -f"},
  };
  for (const auto& [args, message] : cases) {
    INFO(args.front());
    const Targets before = t;
    CHECK(parse(f, args) == 2);
    CHECK(f.error() == message);
    CHECK(t.frames == before.frames);
    CHECK(t.port == before.port);
    CHECK(t.timeout == before.timeout);
    CHECK(t.mode == before.mode);
  }
  // A value that looks like a flag is still the value.
  REQUIRE(parse(f, {"--name", "--frames"}) == -1);
  CHECK(t.name == "--frames");
}

TEST_CASE("cli: --help is made from the declarations", "[cli][portable]") {
  Targets t;
  cli::Flags f("prog", "usage: prog [options]");
  declare(f, t);
  const std::string h = f.help();
  CHECK(h.rfind("usage: prog [options]\n\n", 0) == 0);
  CHECK(h.find("\n  --frames N           stop after N frames\n") != std::string::npos);
  CHECK(h.find("\n  --timeout S          a timeout\n                       over two lines\n") !=
        std::string::npos);
  CHECK(h.find("\n  --loop               loop\n") != std::string::npos);
  CHECK(h.find("\n  --a-rather-long-flag-name VALUE\n                       help on a line of its "
               "own\n") != std::string::npos);
  // Declared order.
  CHECK(h.find("--frames") < h.find("--port"));
  CHECK(h.find("--quiet") < h.find("--a-rather-long-flag-name"));
  // A flag cannot be declared twice.
  CHECK_THROWS_AS(f.text("--name", t.name, "X", "again"), Error);
}

TEST_CASE("cli: host:port, device and token file", "[cli][portable]") {
  CHECK(net::parse_host_port("10.0.0.1:7070") == std::pair<std::string, int>("10.0.0.1", 7070));
  CHECK(net::parse_host_port(":7070") == std::pair<std::string, int>("127.0.0.1", 7070));
  CHECK(net::parse_host_port("[::1]:80") == std::pair<std::string, int>("::1", 80));
  CHECK(net::parse_host_port("edge.local:1") == std::pair<std::string, int>("edge.local", 1));
  CHECK_THROWS_WITH(net::parse_host_port("nocolon"), "bad address 'nocolon' (expected HOST:PORT)");
  CHECK_THROWS_WITH(net::parse_host_port("[::1]80"),
                    "bad address '[::1]80' (expected [IPV6]:PORT)");
  CHECK_THROWS_WITH(net::parse_host_port("h:0x50"), "bad port in 'h:0x50'");
  CHECK_THROWS_WITH(net::parse_host_port("h:70000"), "port 70000 out of range in 'h:70000'");
  CHECK(cli::parse_device("cpu") == Device::cpu());
  CHECK(cli::parse_device("cuda") == Device::cuda(0));
  CHECK(cli::parse_device("cuda:12") == Device::cuda(12));
  CHECK_THROWS_WITH(cli::parse_device("cuda:"), "bad device 'cuda:' (cpu, cuda or cuda:N)");
  const auto dir = std::filesystem::temp_directory_path() /
                   ("st_cli_test_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  {
    std::ofstream(dir / "token") << "s3cret\r\nsecond line\n";
  }
  std::string token;
  REQUIRE(cli::read_token_file((dir / "token").string(), token));
  CHECK(token == "s3cret");
  CHECK_FALSE(cli::read_token_file((dir / "missing").string(), token));
  std::filesystem::remove_all(dir);
}
