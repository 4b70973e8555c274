// The trained-parameter blob: the tensors a distillation mode trains (26 for partial, 68 for
// full), packed in model order into one buffer that the server sends and the edge applies.
//
// Layout (little-endian), 24-byte header then payload:
//   0  u32 magic 'STPB' (0x42505453)       4  u16 version (1)
//   6  u8  encoding (0 = fp32, 1 = fp16: not BlobEncoding's values, see blob.cpp)
//   7  u8  reserved (0)
//   8  u64 layout hash: FNV-1a 64 over "name:d0,d1,...;" of each packed tensor, in order
//   16 u32 tensor count                    20 u32 reserved (0)
//   24 payload: each tensor's elements, row-major, in order, 4 or 2 bytes each
// Unpacking validates everything before touching a weight: on any error the student is
// unchanged.
#pragma once
#include <cstdint>
#include <vector>

#include "common/blob_encoding.h"
#include "nn/student.h"
#include "nn/update_codec.h"

namespace st::nn {

// The names and shapes of the tensors `mode` trains, in model order.
std::vector<TensorSpec> trained_specs(const Student& s, Distillation mode);
// nn::layout_hash of trained_specs (update_codec.h defines the hash).
uint64_t layout_hash(const Student& s, Distillation mode);
// `enc`: F32 or F16 (st::BlobEncoding, common/blob_encoding.h; None is no blob and throws).
std::vector<uint8_t> pack_trained(const Student& s, Distillation mode, BlobEncoding enc);
// Copies the blob's values into the student's trained tensors. Throws st::Error naming the
// problem (size, magic, version, encoding, hash) and leaves the student untouched.
void unpack_trained(Student& s, Distillation mode, const uint8_t* data, size_t size);
// Bytes of a blob for this mode and encoding.
size_t blob_size(const Student& s, Distillation mode, BlobEncoding enc);

// FNV-1a 64 over every parameter of the student, in model order: name, shape, then the raw
// float32 bytes. HELLO.weights_hash; the server compares it with the hash of its base weights
// and sends the full student when they differ.
uint64_t weights_hash(const Student& s);
// weights_hash of `s` with the trained tensors of `mode` holding `trained` instead (in the order
// of trained_names, each tensor's values row-major): what s would hash to after an update.
uint64_t weights_hash_with(const Student& s, Distillation mode,
                           const std::vector<std::vector<float>>& trained);

}  // namespace st::nn
