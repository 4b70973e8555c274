// The update blob format of nn/update.h on plain values: encoding a blob from target and mirror
// values, decoding one against the values held now. Std-only (and zstd), with no Student in
// sight, so that the decoder of these untrusted bytes builds alone into a fuzz target
// (nn/fuzz_update.cc, tools/fuzz_update.sh); nn/update.h binds it to the student and its hash.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace st::nn {

// One tensor of a layout: its name and shape (values row-major).
struct TensorSpec {
  std::string name;
  std::vector<int64_t> shape;
  size_t numel() const;
  // Scales of an int8 delta: one per output channel (size(0)) for 2-D and up, else one.
  size_t scales() const;
};
// FNV-1a 64 over "name:d0,d1,...;" of each tensor, in order (nn::layout_hash's definition).
uint64_t layout_hash(const std::vector<TensorSpec>& specs);

struct UpdateCodec {
  enum class Values : uint8_t { F32 = 0, F16 = 1, Int8Delta = 2 };
  Values values = Values::F32;
  double keep = 1.0;  // int8 delta: the fraction (0, 1] of each tensor's entries sent
  bool zstd = false;  // entropy-code the body
  // "fp32", "fp16+zstd", "int8", "int8:top10+zstd" (keep as a percentage), ...
  std::string name() const;
  bool operator==(const UpdateCodec&) const = default;
};
// Parses name()'s forms: fp32 | fp16 | int8 | int8:topP (0 < P <= 100, percent), each optionally
// followed by +zstd. Throws st::Error naming `s` otherwise.
UpdateCodec parse_update_codec(const std::string& s);

inline constexpr int kUpdateZstdLevel = 9;  // the zstd level of update bodies
inline constexpr size_t kUpdateHeader = 32;

// The largest body any well-formed update of this layout can have.
size_t max_update_body(const std::vector<TensorSpec>& specs);

// An update blob taking `mirror` towards `target` (both in `specs`' order and sizes) under
// `codec`; its weights-hash field is 0 until set_update_hash.
std::vector<uint8_t> encode_update(const std::vector<TensorSpec>& specs,
                                   const std::vector<std::vector<float>>& target,
                                   const std::vector<std::vector<float>>& mirror,
                                   const UpdateCodec& codec);
void set_update_hash(std::vector<uint8_t>& blob, uint64_t after_hash);

// Decodes an update blob for tensors `specs` that now hold `current`: the values after it, and
// the weights hash its header names. Throws st::Error naming the problem ("update blob: ...");
// allocates nothing larger than max_update_body(specs) plus the values themselves.
struct DecodedUpdate {
  std::vector<std::vector<float>> values;
  uint64_t after_hash = 0;
};
DecodedUpdate decode_update(const std::vector<TensorSpec>& specs,
                            const std::vector<std::vector<float>>& current, const uint8_t* data,
                            size_t size);

}  // namespace st::nn
