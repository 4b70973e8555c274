// libFuzzer target for the decoding of untrusted update blobs (nn/update_codec.h), as the edge
// uses it. Built by tools/fuzz_update.sh with clang++ -fsanitize=fuzzer,address,undefined (a .cc
// file, so the main build's nn/*.cpp glob does not compile it into st_core); libzstd is Debian's,
// not instrumented.
//
// The layout and current values are nn/update_fuzz_layout.h's, the ones the seed corpus
// tests/update_corpus/ was made for. Each input is a blob, decoded against them. A clean decode or an st::Error is fine; anything else (a
// crash, a sanitizer report, another exception) is a finding. A decode must also give finite
// values of the layout's sizes, the same ones twice, and, re-encoded as fp32, decode to them.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "common/error.h"
#include "nn/update_codec.h"
#include "nn/update_fuzz_layout.h"

namespace {

using namespace st::nn;
using fuzz::current;
using fuzz::layout;

[[noreturn]] void broken(const char* what) {
  std::fprintf(stderr, "fuzz_update: %s\n", what);
  std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  DecodedUpdate d;
  try {
    d = decode_update(layout(), current(), data, size);
  } catch (const st::Error&) {
    return 0;
  }
  if (d.values.size() != layout().size()) broken("tensor count");
  for (size_t t = 0; t < d.values.size(); ++t) {
    if (d.values[t].size() != layout()[t].numel()) broken("tensor size");
    for (float f : d.values[t])
      if (!std::isfinite(f)) broken("a non-finite value accepted");
  }
  const DecodedUpdate again = decode_update(layout(), current(), data, size);
  if (again.values != d.values || again.after_hash != d.after_hash) broken("not deterministic");
  UpdateCodec fp32;
  const auto blob = encode_update(layout(), d.values, current(), fp32);
  if (decode_update(layout(), current(), blob.data(), blob.size()).values != d.values)
    broken("fp32 re-encoding differs");
  return 0;
}
