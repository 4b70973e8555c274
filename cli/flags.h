// Command lines of the three programs (shadowtutor simulate, shadowtutor-edge,
// shadowtutor-server): one declaration per flag, with the variable it sets and its help text;
// parsing, the error messages and --help all come from the declarations.
//
//   Flags flags("shadowtutor-edge", "usage: shadowtutor-edge --server HOST:PORT ... [options]");
//   flags.integer("--frames", o.max_frames, "N", "stop after N frames");
//   flags.seconds("--update-timeout", o.update_timeout_s, "S", "... (default 60)").above(0);
//   flags.boolean("--loop", o.loop, "replay the video from its start when it ends");
//   if (auto exit_code = flags.parse(argc, argv)) return *exit_code;   // --help, or a bad flag
//   if (server.empty()) return flags.usage_error("--server is required");
//
// A value follows its flag (`--frames 10`) or is joined to it (`--frames=10`); a switch takes no
// value (`--loop`; `--loop=false` also works). An error names the flag and the text it refused
// ("--frames: expected an integer, not '10x'"); the program prints it with the help and exits 2.
#pragma once
#include <concepts>
#include <filesystem>
#include <functional>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <type_traits>
#include <vector>

#include "common/frame_encoding.h"
#include "nn/distill.h"
#include "nn/update_codec.h"
#include "tensor/dtype.h"

namespace st::cli {

class Flags {
 public:
  // One declared flag. Its bounds apply to integers, numbers and durations and are checked
  // before the target is written.
  class Flag {
   public:
    Flag& at_least(double lo);  // the value must be >= lo
    Flag& above(double lo);     // the value must be > lo
    Flag& at_most(double hi);   // the value must be <= hi
    Flag& allow_infinity();     // numbers and durations: "inf" is accepted too

   private:
    friend class Flags;
    // Throws st::Error "must be >= 1, not '0'" when `v` is outside the bounds.
    void check(double v, const std::string& text) const;
    std::string name, arg, help;
    bool takes_value = true;
    // Reads the text into the target; throws st::Error saying what is wrong with it.
    std::function<void(const Flag&, const std::string&)> apply;
    std::optional<double> lo, hi;
    bool lo_open = false, infinity = false;
  };

  // `program` starts every error line; `synopsis` opens the help (the usage line or lines).
  Flags(std::string program, std::string synopsis);
  ~Flags();
  Flags(const Flags&) = delete;
  Flags& operator=(const Flags&) = delete;

  // Declarations, listed by --help in this order. `arg` names the value there ("N", "FILE");
  // `help` may span lines ('\n').
  Flag& boolean(const std::string& name, bool& target, const std::string& help);
  // A switch that does more than set one variable.
  Flag& action(const std::string& name, std::function<void()> on, const std::string& help);
  Flag& text(const std::string& name, std::string& target, const std::string& arg,
             const std::string& help);
  Flag& path(const std::string& name, std::filesystem::path& target, const std::string& arg,
             const std::string& help);
  template <std::integral T>
  Flag& integer(const std::string& name, T& target, const std::string& arg,
                const std::string& help);
  // A finite decimal number ("inf" too after allow_infinity()).
  Flag& number(const std::string& name, double& target, const std::string& arg,
               const std::string& help);
  // A duration, in seconds: "30", "1.5s" or "250ms"; never negative.
  Flag& seconds(const std::string& name, double& target, const std::string& arg,
                const std::string& help);
  // "cpu", "cuda" or "cuda:N" (parse_device).
  Flag& device(const std::string& name, Device& target, const std::string& arg,
               const std::string& help);
  // Any other value: `parse` reads the text and throws st::Error saying what is wrong with it.
  Flag& custom(const std::string& name, const std::string& arg, const std::string& help,
               std::function<void(const std::string&)> parse);

  // Parses argv[first..argc). nullopt: go on. Otherwise the exit status for main: 0 after
  // -h/--help (the help is printed to stdout), 2 after a bad command line (usage_error).
  std::optional<int> parse(int argc, char** argv, int first = 1);
  // Whether the last parse() saw the flag.
  bool given(const std::string& name) const;
  // Prints "<program>: <message>", a blank line and the help to stderr; returns 2.
  int usage_error(const std::string& message);
  // The message of the last usage error ("" if none).
  const std::string& error() const { return error_; }
  const std::string& program() const { return program_; }
  // The synopsis, a blank line, then one entry per flag: "  --name ARG" and its help beside.
  std::string help() const;

  // The value parsers behind the declarations, for custom ones. Each reads all of `text` and
  // throws st::Error naming it otherwise. Integers: decimal digits, '-' before a signed one.
  // Numbers: decimal, "1e3" form too; "inf" only when `infinity`; never "nan".
  static long long parse_signed(const std::string& text);
  static unsigned long long parse_unsigned(const std::string& text);
  static double parse_number(const std::string& text, bool infinity);

 private:
  [[noreturn]] static void range_error(const std::string& text, const std::string& lo,
                                       const std::string& hi);
  Flag& add(const std::string& name, const std::string& arg, const std::string& help,
            bool takes_value, std::function<void(const Flag&, const std::string&)> apply);
  const Flag* find(const std::string& name) const;

  std::string program_, synopsis_;
  std::vector<std::unique_ptr<Flag>> flags_;
  std::vector<std::string> given_;
  std::string error_;
};

// "cpu", "cuda" (= cuda:0) or "cuda:N"; throws st::Error naming the text otherwise.
Device parse_device(const std::string& s);

// The first line of a token file (a trailing CR dropped) into `token`; false when unreadable.
bool read_token_file(const std::string& path, std::string& token);

// ---- what two programs' tables share ----

// Algorithm 1/2's settings (shadowtutor-server, shadowtutor simulate): --threshold,
// --max-updates, --min-stride, --max-stride, --restore-weights-only.
void declare_distill_flags(Flags& flags, nn::DistillConfig& cfg);

// What partial distillation trains: --train-from BLOCK (in_conv2 .. out_conv3, default dec2) or
// --train-last K (the same, counted from the end), and --train all|bias (bias: biases and
// batch-norm affine only). simulate and bench_student run that split, the server announces it to
// partial sessions, the edge requires it.
void declare_split_flags(Flags& flags, nn::PartialSplit& split, bool edge = false);

// The programs' defaults for bytes on the wire (docs/results.md, "Bytes"): key frames as JPEG
// of quality 90, updates as zstd-coded int8 deltas. (The library's option structs keep the
// paper's raw frames and fp32 blobs; the programs set these before parsing their flags.)
inline constexpr FrameEncoding kDefaultKeyEncoding = FrameEncoding::Jpeg;
inline constexpr int kDefaultJpegQuality = 90;
inline constexpr const char* kDefaultUpdateCodec = "int8+zstd";

// --key-encoding raw | png | jpeg[:QUALITY] (shadowtutor-edge, shadowtutor simulate): how key
// frames go up; "jpeg" alone is quality 90. The help shows the values in `enc` and
// `jpeg_quality` as the default. With `automatic` (simulate) the value "auto" is accepted too and
// is the default: *automatic says whether the flag left the choice to the caller, which then
// applies the server's policy (ServerOptions::accept_frames): the given encoding for a trained
// student, PNG for one from random initialisation.
void declare_key_encoding_flag(Flags& flags, FrameEncoding& enc, int& jpeg_quality,
                               bool* automatic = nullptr);

// A program's JSON report: to `path`, or to stdout when `path` is empty; throws naming the file
// when it cannot be written.
void write_report(const std::string& path, const std::string& json);

// --update CODEC | plain (shadowtutor-server, shadowtutor simulate): compact updates
// (nn/update_codec.h) or, with plain, none; the help shows `update` as the default.
void declare_update_flag(Flags& flags, std::optional<nn::UpdateCodec>& update);

// --profile FILE (shadowtutor simulate, shadowtutor-edge, shadowtutor-server): the kernel
// profiler (tensor/profile.h), tables per kernel and per module scope on stderr at exit and a
// Chrome trace (chrome://tracing, ui.perfetto.dev) in FILE. start_profile() starts it when the
// flag was given: call it once parse() succeeded.
void declare_profile_flag(Flags& flags, std::string& trace_path);
void start_profile(const std::string& trace_path);

// The auth token (shadowtutor-server, shadowtutor-edge), declared by each program as
// --token-file F or --token T. Right after parse, before any other complaint: a token given as
// --token is visible to every user of the machine (`ps`, /proc), and this says so on stderr.
void warn_token_on_command_line(const Flags& flags);
// After the program's other checks: reads `token_file` (when given) into `token`. nullopt when
// there is a token; else the exit status of the usage error printed ("cannot read token file
// F", "--token-file or --token is required").
std::optional<int> resolve_token(Flags& flags, const std::string& token_file, std::string& token);

// ---- template definitions ----
template <std::integral T>
Flags::Flag& Flags::integer(const std::string& name, T& target, const std::string& arg,
                            const std::string& help) {
  return add(name, arg, help, true, [&target](const Flag& f, const std::string& text) {
    using Lim = std::numeric_limits<T>;
    T v;
    if constexpr (std::is_signed_v<T>) {
      const long long x = parse_signed(text);
      if (x < (long long)Lim::min() || x > (long long)Lim::max())
        range_error(text, std::to_string(Lim::min()), std::to_string(Lim::max()));
      v = T(x);
    } else {
      const unsigned long long x = parse_unsigned(text);
      if (x > (unsigned long long)Lim::max()) range_error(text, "0", std::to_string(Lim::max()));
      v = T(x);
    }
    f.check(double(v), text);
    target = v;
  });
}

}  // namespace st::cli
