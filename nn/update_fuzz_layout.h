// The layout and current values the update-blob fuzz target (nn/fuzz_update.cc) decodes against,
// and that its seed corpus tests/update_corpus/ is made for (st_tests "[.update-corpus-gen]"):
// a small stand-in for the student's trained part (a 4-D convolution and its bias, a 1x1
// convolution, a batch-norm pair), so that seeds reach the body. Not used by the programs.
#pragma once
#include <cstdint>
#include <vector>

#include "nn/update_codec.h"

namespace st::nn::fuzz {

inline const std::vector<TensorSpec>& layout() {
  static const std::vector<TensorSpec> specs = {{"conv.weight", {8, 4, 3, 3}},
                                                {"conv.bias", {8}},
                                                {"proj.weight", {16, 8, 1, 1}},
                                                {"bn.weight", {16}},
                                                {"bn.bias", {16}}};
  return specs;
}

// Deterministic values in [-0.25, 0.25] (a linear congruential sequence from `seed`).
inline std::vector<std::vector<float>> values(uint32_t seed) {
  std::vector<std::vector<float>> v;
  uint32_t x = seed;
  for (const TensorSpec& t : layout()) {
    std::vector<float> a(t.numel());
    for (auto& f : a) {
      x = x * 1664525u + 1013904223u;
      f = float(int32_t(x >> 8) % 2001 - 1000) / 4096.f;
    }
    v.push_back(a);
  }
  return v;
}

inline const std::vector<std::vector<float>>& current() {
  static const std::vector<std::vector<float>> v = values(12345);
  return v;
}

}  // namespace st::nn::fuzz
