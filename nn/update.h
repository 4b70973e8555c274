// Compact updates: what the server sends after distilling a key frame, smaller than the fp32
// trained part (nn/blob.h) it replaces.
//
// The server keeps an exact mirror of the weights the edge holds (UpdateEncoder). An update is
// either the trained tensors themselves (fp32 or fp16, as nn/blob.h, optionally entropy-coded) or
// an int8 *delta* against the mirror: per output channel (per tensor for 1-D tensors) a float
// scale and one int8 per entry, optionally only the largest entries of each tensor (top-k: their
// indices travel as LEB128 gaps), optionally zstd-compressed. The mirror is advanced by applying
// the update blob itself, with the edge's own code (apply_update), so it equals what the edge
// holds bit for bit whatever was lost to quantisation; what was not sent stays in the next delta
// (error feedback: the server's own student keeps training from its unquantised weights).
//
// Update blob layout ("STPU", little-endian), 32-byte header then the body (the format on plain
// values, std-only and fuzzed: nn/update_codec.h):
//   0  u32 magic 'STPU' (0x55505453)       4  u16 version (1)
//   6  u8  values: 0 fp32, 1 fp16 (the trained tensors), 2 int8 delta
//   7  u8  flags: bit 0 sparse (int8 delta only), bit 1 zstd; no other bits
//   8  u64 layout hash (nn::layout_hash of the mode's trained tensors)
//   16 u32 tensor count                    20 u32 body bytes (before zstd)
//   24 u64 the nn::weights_hash of the whole student after applying (the server's mirror)
//   32 body: per trained tensor, in model order,
//        fp32 / fp16: its n values, 4 or 2 bytes each
//        int8 delta, dense:  S f32 scales, then n int8 (-127..127)
//        int8 delta, sparse: u32 k (1..n), S f32 scales, k LEB128 gaps (index - previous - 1;
//                            the first is the index), k int8
//      S = the tensor's size(0) for tensors of 2 or more dimensions, else 1. Entry i of output
//      channel c becomes fmaf(q, scale[c], w) (one rounding, the same on every machine).
//   With zstd the body is one zstd frame whose content size is in its header and must equal
//   `body bytes`, which must not exceed max_update_body(): nothing larger is ever allocated.
// apply_update validates everything before touching a weight, the hash of the result included:
// on any error the student is unchanged. A hash that differs (WeightsMismatch) means the edge
// did not hold what the server's mirror holds: the blob is well-formed, the edge must resync.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "nn/blob.h"
#include "nn/student.h"
#include "nn/update_codec.h"

namespace st::nn {

// The largest body any well-formed update of this student and mode can have (the cap a decoder
// holds `body bytes` to before it allocates).
size_t max_update_body(const Student& s, Distillation mode);

// The update is well-formed, but the weights it leads to are not the ones the sender's mirror
// holds (the receiver's weights differed before it).
class WeightsMismatch : public Error {
 public:
  using Error::Error;
};

// Applies an update blob to `s`: an "STPU" blob (above) or a plain "STPB" parameter blob
// (nn/blob.h; it carries no hash). Throws WeightsMismatch as above, st::Error naming the problem
// for a malformed blob; either way `s` is untouched.
void apply_update(Student& s, Distillation mode, const uint8_t* data, size_t size);

// The server's side of one edge: the mirror of the edge's weights and the codec.
class UpdateEncoder {
 public:
  // `edge_weights`: what the edge holds now (the session's base, or the full student sent).
  UpdateEncoder(const Student& edge_weights, Distillation mode, UpdateCodec codec);
  ~UpdateEncoder();
  // The update that moves the edge towards `trained`'s trained tensors; the mirror becomes what
  // the edge holds once it has applied it.
  std::vector<uint8_t> encode(const Student& trained);
  // The edge's weights are `edge_weights` again (a full resync).
  void reset(const Student& edge_weights);
  // nn::weights_hash of the mirror: what the edge must hold after the last update.
  uint64_t mirror_hash() const;
  const Student& mirror() const { return *mirror_; }
  const UpdateCodec& codec() const { return codec_; }

 private:
  std::unique_ptr<Student> mirror_;
  Distillation mode_;
  UpdateCodec codec_;
};

}  // namespace st::nn
