// Update blobs bound to the student: the mirror, applying, hashing (layout in update.h; the
// format itself in update_codec.cpp).
#include "nn/update.h"

#include <cstring>

#include "tensor/autograd.h"

namespace st::nn {

namespace {

constexpr uint32_t kPlainMagic = 0x42505453;  // "STPB", nn/blob.h

std::vector<std::vector<float>> values_of(const Student& s, Distillation mode) {
  std::vector<std::vector<float>> v;
  for (const Tensor& t : s.trained_parameters(mode)) v.push_back(t.to_vector<float>());
  return v;
}

void assign(Student& s, Distillation mode, const std::vector<std::vector<float>>& values) {
  std::vector<Tensor> params = s.trained_parameters(mode);
  NoGradGuard ng;
  for (size_t t = 0; t < params.size(); ++t)
    params[t].copy_(Tensor::from_vector(values[t], params[t].shape()).to(params[t].device()));
}

}  // namespace

size_t max_update_body(const Student& s, Distillation mode) {
  return max_update_body(trained_specs(s, mode));
}

void apply_update(Student& s, Distillation mode, const uint8_t* data, size_t size) {
  ST_CHECK(size >= 4, "update blob: ", size, " bytes, too short for a magic number");
  uint32_t magic;
  std::memcpy(&magic, data, 4);
  if (magic == kPlainMagic) {
    unpack_trained(s, mode, data, size);
    return;
  }
  const DecodedUpdate d = decode_update(trained_specs(s, mode), values_of(s, mode), data, size);
  const uint64_t got = weights_hash_with(s, mode, d.values);
  if (got != d.after_hash)
    throw WeightsMismatch("update blob: the weights after it hash to " + std::to_string(got) +
                          ", the sender's mirror of them to " + std::to_string(d.after_hash) +
                          ": the weights it was made against are not these (resync)");
  assign(s, mode, d.values);
}

UpdateEncoder::UpdateEncoder(const Student& edge_weights, Distillation mode, UpdateCodec codec)
    : mirror_(std::make_unique<Student>(0)), mode_(mode), codec_(codec) {
  ST_CHECK(codec.keep > 0 && codec.keep <= 1, "update codec: keep ", codec.keep,
           " is not within (0, 1]");
  ST_CHECK(codec.values == UpdateCodec::Values::Int8Delta || codec.keep == 1.0,
           "update codec: only int8 deltas can be sparse");
  mirror_->set_partial_split(edge_weights.partial_split());
  mirror_->configure(Distillation::None);
  reset(edge_weights);
}

UpdateEncoder::~UpdateEncoder() = default;

void UpdateEncoder::reset(const Student& edge_weights) {
  ST_CHECK(edge_weights.partial_split() == mirror_->partial_split(),
           "update encoder: the edge's split changed");
  mirror_->load_state(edge_weights.named_parameters(), "the edge's weights");
}

uint64_t UpdateEncoder::mirror_hash() const { return weights_hash(*mirror_); }

std::vector<uint8_t> UpdateEncoder::encode(const Student& trained) {
  ST_CHECK(trained.partial_split() == mirror_->partial_split(),
           "update encoder: the trained student has another split than the edge");
  const std::vector<TensorSpec> specs = trained_specs(*mirror_, mode_);
  const auto mirror = values_of(*mirror_, mode_);
  std::vector<uint8_t> blob = encode_update(specs, values_of(trained, mode_), mirror, codec_);
  // The weights the edge will hold: this blob decoded by the edge's code against the mirror.
  const DecodedUpdate after = decode_update(specs, mirror, blob.data(), blob.size());
  set_update_hash(blob, weights_hash_with(*mirror_, mode_, after.values));
  assign(*mirror_, mode_, after.values);
  return blob;
}

}  // namespace st::nn
