// The flag table of the programs' command lines (flags.h).
#include "cli/flags.h"

#include <charconv>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <system_error>

#include "common/error.h"
#include "tensor/profile.h"

namespace st::cli {

namespace {

// `v` as the shortest text that reads back as the same double ("1", "0.5", "1e+06").
std::string number_text(double v) {
  char buf[32];
  auto [end, ec] = std::to_chars(buf, buf + sizeof buf, v);
  return ec == std::errc() ? std::string(buf, end) : std::to_string(v);
}

bool ends_with(const std::string& s, const std::string& tail) {
  return s.size() >= tail.size() && s.compare(s.size() - tail.size(), tail.size(), tail) == 0;
}

}  // namespace

// ---------------------------------------------------------------- Flag

Flags::Flag& Flags::Flag::at_least(double v) {
  lo = v;
  lo_open = false;
  return *this;
}

Flags::Flag& Flags::Flag::above(double v) {
  lo = v;
  lo_open = true;
  return *this;
}

Flags::Flag& Flags::Flag::at_most(double v) {
  hi = v;
  return *this;
}

Flags::Flag& Flags::Flag::allow_infinity() {
  infinity = true;
  return *this;
}

void Flags::Flag::check(double v, const std::string& text) const {
  if (lo && (lo_open ? !(v > *lo) : !(v >= *lo)))
    throw Error(std::string("must be ") + (lo_open ? "> " : ">= ") + number_text(*lo) +
                ", not '" + text + "'");
  if (hi && !(v <= *hi))
    throw Error("must be <= " + number_text(*hi) + ", not '" + text + "'");
}

// ---------------------------------------------------------------- Flags

Flags::Flags(std::string program, std::string synopsis)
    : program_(std::move(program)), synopsis_(std::move(synopsis)) {}

Flags::~Flags() = default;

Flags::Flag& Flags::add(const std::string& name, const std::string& arg, const std::string& help,
                        bool takes_value,
                        std::function<void(const Flag&, const std::string&)> apply) {
  if (name.rfind("--", 0) != 0 || name.find('=') != std::string::npos || find(name))
    throw Error("flags: bad or repeated flag name '" + name + "'");
  auto f = std::make_unique<Flag>();
  f->name = name;
  f->arg = arg;
  f->help = help;
  f->takes_value = takes_value;
  f->apply = std::move(apply);
  flags_.push_back(std::move(f));
  return *flags_.back();
}

const Flags::Flag* Flags::find(const std::string& name) const {
  for (const auto& f : flags_)
    if (f->name == name) return f.get();
  return nullptr;
}

Flags::Flag& Flags::boolean(const std::string& name, bool& target, const std::string& help) {
  return add(name, "", help, false, [&target](const Flag&, const std::string& text) {
    if (text == "true" || text == "1" || text == "yes") target = true;
    else if (text == "false" || text == "0" || text == "no") target = false;
    else throw Error("expected true or false, not '" + text + "'");
  });
}

Flags::Flag& Flags::action(const std::string& name, std::function<void()> on,
                           const std::string& help) {
  return add(name, "", help, false, [on = std::move(on)](const Flag&, const std::string& text) {
    if (text != "true") throw Error("takes no value, not '" + text + "'");
    on();
  });
}

Flags::Flag& Flags::text(const std::string& name, std::string& target, const std::string& arg,
                         const std::string& help) {
  return add(name, arg, help, true,
             [&target](const Flag&, const std::string& text) { target = text; });
}

Flags::Flag& Flags::path(const std::string& name, std::filesystem::path& target,
                         const std::string& arg, const std::string& help) {
  return add(name, arg, help, true,
             [&target](const Flag&, const std::string& text) { target = text; });
}

Flags::Flag& Flags::number(const std::string& name, double& target, const std::string& arg,
                           const std::string& help) {
  return add(name, arg, help, true, [&target](const Flag& f, const std::string& text) {
    const double v = parse_number(text, f.infinity);
    f.check(v, text);
    target = v;
  });
}

Flags::Flag& Flags::seconds(const std::string& name, double& target, const std::string& arg,
                            const std::string& help) {
  return add(name, arg, help, true, [&target](const Flag& f, const std::string& text) {
    double scale = 1;
    std::string digits = text;
    if (ends_with(text, "ms")) scale = 1e-3, digits = text.substr(0, text.size() - 2);
    else if (ends_with(text, "s")) digits = text.substr(0, text.size() - 1);
    double v = 0;
    try {
      v = parse_number(digits, f.infinity) * scale;
    } catch (const Error&) {
      throw Error("expected seconds (30, 1.5s, 250ms" + std::string(f.infinity ? ", inf" : "") +
                  "), not '" + text + "'");
    }
    if (v < 0) throw Error("a duration is never negative, not '" + text + "'");
    f.check(v, text);
    target = v;
  });
}

Flags::Flag& Flags::device(const std::string& name, Device& target, const std::string& arg,
                           const std::string& help) {
  return add(name, arg, help, true,
             [&target](const Flag&, const std::string& text) { target = parse_device(text); });
}

Flags::Flag& Flags::custom(const std::string& name, const std::string& arg,
                           const std::string& help,
                           std::function<void(const std::string&)> parse) {
  return add(name, arg, help, true,
             [parse = std::move(parse)](const Flag&, const std::string& text) { parse(text); });
}

long long Flags::parse_signed(const std::string& text) {
  long long v = 0;
  const char* end = text.data() + text.size();
  auto [p, ec] = std::from_chars(text.data(), end, v);
  if (ec == std::errc::result_out_of_range) throw Error("'" + text + "' is out of range");
  if (ec != std::errc() || p != end) throw Error("expected an integer, not '" + text + "'");
  return v;
}

unsigned long long Flags::parse_unsigned(const std::string& text) {
  unsigned long long v = 0;
  const char* end = text.data() + text.size();
  // from_chars takes no sign for an unsigned type: "-1" fails here instead of wrapping around.
  auto [p, ec] = std::from_chars(text.data(), end, v);
  if (ec == std::errc::result_out_of_range) throw Error("'" + text + "' is out of range");
  if (ec != std::errc() || p != end)
    throw Error("expected a non-negative integer, not '" + text + "'");
  return v;
}

double Flags::parse_number(const std::string& text, bool infinity) {
  double v = 0;
  const char* end = text.data() + text.size();
  auto [p, ec] = std::from_chars(text.data(), end, v);
  if (ec == std::errc::result_out_of_range) throw Error("'" + text + "' is out of range");
  if (ec != std::errc() || p != end || std::isnan(v))
    throw Error("expected a number, not '" + text + "'");
  if (std::isinf(v) && !infinity) throw Error("expected a finite number, not '" + text + "'");
  return v;
}

void Flags::range_error(const std::string& text, const std::string& lo, const std::string& hi) {
  throw Error("must be within " + lo + ".." + hi + ", not '" + text + "'");
}

std::optional<int> Flags::parse(int argc, char** argv, int first) {
  given_.clear();
  error_.clear();
  for (int i = first; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "-h" || a == "--help") {
      std::fputs(help().c_str(), stdout);
      return 0;
    }
    const size_t eq = a.find('=');
    const std::string name = a.substr(0, eq);
    const Flag* f = a.rfind("--", 0) == 0 ? find(name) : nullptr;
    if (!f) return usage_error("unknown option " + a);
    std::string value;
    if (eq != std::string::npos) {
      value = a.substr(eq + 1);
    } else if (!f->takes_value) {
      value = "true";
    } else {
      if (i + 1 >= argc) return usage_error("option " + name + " needs a value");
      value = argv[++i];
    }
    try {
      f->apply(*f, value);
    } catch (const std::exception& e) {
      return usage_error(name + ": " + e.what());
    }
    given_.push_back(name);
  }
  return std::nullopt;
}

bool Flags::given(const std::string& name) const {
  for (const auto& g : given_)
    if (g == name) return true;
  return false;
}

int Flags::usage_error(const std::string& message) {
  error_ = message;
  std::fprintf(stderr, "%s: %s\n\n%s", program_.c_str(), message.c_str(), help().c_str());
  return 2;
}

std::string Flags::help() const {
  // "  --name ARG" in a column wide enough for most names; a longer one gets its own line when
  // it leaves no room. Continuation lines of a help text line up with its first.
  constexpr size_t kColumn = 23;
  std::string out = synopsis_;
  if (!out.empty() && out.back() != '\n') out += '\n';
  out += '\n';
  for (const auto& f : flags_) {
    std::string head = "  " + f->name + (f->arg.empty() ? "" : " " + f->arg);
    if (head.size() + 1 > kColumn) {
      out += head + "\n";
      head.clear();
    }
    head.resize(kColumn, ' ');
    size_t at = 0;
    for (;;) {
      const size_t nl = f->help.find('\n', at);
      out += head + f->help.substr(at, nl == std::string::npos ? nl : nl - at) + "\n";
      if (nl == std::string::npos) break;
      at = nl + 1;
      head.assign(kColumn, ' ');
    }
  }
  return out;
}

// ---------------------------------------------------------------- values

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

// ---------------------------------------------------------------- shared tables

void declare_split_flags(Flags& flags, nn::PartialSplit& split, bool edge) {
  // The edge trains nothing: its flags state what it requires of the server's split.
  flags.custom("--train-from", "BLOCK",
               edge ? "require the server's partial split to start at BLOCK: in_conv2 ..\n"
                      "out_conv3 (dec2 is the paper's)"
                    : "partial distillation trains BLOCK and every block after it: in_conv2 ..\n"
                      "out_conv3 (default dec2, the paper's)",
               [&split](const std::string& v) {
                 const int first = nn::student_block(v);
                 if (first == 0)
                   throw Error("--train-from in_conv1 trains every block: that is --mode full");
                 split.first = first;
               });
  flags.custom("--train-last", "K",
               std::string(edge ? "require the server's partial split to be the last K blocks"
                                : "partial distillation trains the last K blocks") +
                   " (1 .. 10):\n--train-from counted from the end (out_conv3 is the last block, "
                   "dec2 the 5th\nfrom the end)",
               [&split](const std::string& v) {
                 const long long k = Flags::parse_signed(v);
                 if (k < 1 || k > nn::kStudentBlocks - 1)
                   throw Error("--train-last takes 1 .. " + std::to_string(nn::kStudentBlocks - 1) +
                               ", not " + v);
                 split.first = nn::kStudentBlocks - int(k);
               });
  flags.custom("--train", "WHAT",
               "all | bias: of the blocks trained, every tensor (default) or only the\n"
               "biases and batch-norm affine parameters" +
                   std::string(edge ? " (a requirement, as above)" : ""),
               [&split](const std::string& v) {
                 if (v != "all" && v != "bias")
                   throw Error("--train takes all or bias, not '" + v + "'");
                 split.bias_only = v == "bias";
               });
}

void declare_key_encoding_flag(Flags& flags, FrameEncoding& enc, int& jpeg_quality,
                               bool* automatic) {
  std::string now = frame_encoding_name(enc);
  if (enc == FrameEncoding::Jpeg) now += ":" + std::to_string(jpeg_quality);
  if (automatic) {
    *automatic = true;
    now = "auto: " + now + " for a student given --weights, png from random\n"
          "initialisation, as the server's --key-frames auto";
  }
  flags.custom("--key-encoding", "E",
               std::string("key frames as raw | png | jpeg[:QUALITY]") + (automatic ? " | auto" : "") +
                   "\n(default " + now + "; jpeg alone = quality 90)",
               [&enc, &jpeg_quality, automatic](const std::string& v) {
                 if (automatic) *automatic = v == "auto";
                 if (automatic && v == "auto") {
                   return;
                 } else if (v == "raw") {
                   enc = FrameEncoding::RawBgr;
                 } else if (v == "png") {
                   enc = FrameEncoding::Png;
                 } else if (v == "jpeg") {
                   enc = FrameEncoding::Jpeg;
                   jpeg_quality = 90;
                 } else if (v.rfind("jpeg:", 0) == 0) {
                   const long long q = v.size() > 5 ? Flags::parse_signed(v.substr(5)) : 0;
                   if (q < 1 || q > 100)
                     throw Error("JPEG quality must be 1..100, not '" + v + "'");
                   enc = FrameEncoding::Jpeg;
                   jpeg_quality = int(q);
                 } else {
                   throw Error("raw, png, jpeg or jpeg:QUALITY, not '" + v + "'");
                 }
               });
}

void declare_update_flag(Flags& flags, std::optional<nn::UpdateCodec>& update) {
  const std::string now = update ? update->name() : "plain";
  flags.custom("--update", "CODEC",
               "updates as compact blobs: fp32 | fp16 | int8 | int8:topP, each optionally\n"
               "+zstd (int8: a delta against the edge's weights, a scale per output channel;\n"
               "topP: only the P% largest entries of each tensor); plain: the fp32/fp16 blobs\n"
               "of --encoding (default " + now + ")",
               [&update](const std::string& v) {
                 if (v == "plain") update.reset();
                 else update = nn::parse_update_codec(v);
               });
}

void declare_profile_flag(Flags& flags, std::string& trace_path) {
  flags.text("--profile", trace_path, "FILE",
             "profile every kernel call: tables on stderr at exit, Chrome trace JSON in FILE");
}

void start_profile(const std::string& trace_path) {
  if (trace_path.empty()) return;
  profile::Options o;
  o.trace_path = trace_path;
  profile::start(o);
}

void declare_distill_flags(Flags& flags, nn::DistillConfig& cfg) {
  flags.number("--threshold", cfg.threshold, "T", "Algorithm 1/2 threshold (default 0.8)");
  flags.integer("--max-updates", cfg.max_updates, "U",
                "distillation steps per key frame (default 8)");
  flags.integer("--min-stride", cfg.min_stride, "S", "key-frame stride limits of Algorithm 2");
  flags.integer("--max-stride", cfg.max_stride, "S", "(defaults 8 and 64)");
  flags.action("--restore-weights-only", [&cfg] { cfg.rewind_optimizer = false; },
               "Algorithm 1's best-restore keeps Adam's state (SPEC §4 as written);\n"
               "default: Adam's state rewinds with the weights, as the authors' code does");
}

void warn_token_on_command_line(const Flags& flags) {
  if (flags.given("--token"))
    std::fprintf(stderr,
                 "%s: warning: --token is visible to other users of this machine (ps, /proc); "
                 "use --token-file\n",
                 flags.program().c_str());
}

std::optional<int> resolve_token(Flags& flags, const std::string& token_file, std::string& token) {
  if (!token_file.empty()) {
    if (!read_token_file(token_file, token))
      return flags.usage_error("cannot read token file " + token_file);
    return std::nullopt;
  }
  if (!flags.given("--token")) return flags.usage_error("--token-file or --token is required");
  return std::nullopt;
}

void write_report(const std::string& path, const std::string& json) {
  if (path.empty()) {
    std::cout << json << "\n";
    return;
  }
  std::ofstream f(path);
  if (!(f << json << "\n")) throw Error("cannot write " + path);
}

}  // namespace st::cli
