// How a parameter blob (nn/blob.h) stores its values: float32 or float16; None = no blob at all
// ("keep your weights"). One enum for the blob packer, the server's choice and the wire protocol
// (WELCOME/UPDATE.blob_kind, a u8: None 0, F32 1, F16 2; docs/protocol.md). The blob's own
// header numbers its encoding differently (0 fp32, 1 fp16); nn/blob.cpp translates.
#pragma once
#include <cstdint>
#include <string>

#include "common/error.h"

namespace st {

// Update (3, protocol version 2, UPDATE only): an nn/update.h update blob, fp32 / fp16 / int8
// delta, sparse or not, zstd or not, as its own header says; it carries the weights hash after it.
enum class BlobEncoding : uint8_t { None = 0, F32 = 1, F16 = 2, Update = 3 };

// "none", "fp32", "fp16"; "unknown" for a value outside the enum.
inline const char* blob_encoding_name(BlobEncoding e) {
  switch (e) {
    case BlobEncoding::None: return "none";
    case BlobEncoding::F32: return "fp32";
    case BlobEncoding::F16: return "fp16";
    case BlobEncoding::Update: return "update";
  }
  return "unknown";
}

// "fp32" or "fp16" (a blob's encoding: never None); otherwise throws st::Error naming `s`.
inline BlobEncoding parse_blob_encoding(const std::string& s) {
  if (s == "fp32") return BlobEncoding::F32;
  if (s == "fp16") return BlobEncoding::F16;
  throw Error("must be fp32 or fp16, not '" + s + "'");
}

}  // namespace st
