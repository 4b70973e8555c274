// Packing and unpacking the trained-parameter blob (layout in blob.h).
#include "nn/blob.h"

#include <cmath>
#include <cstring>

#include "tensor/autograd.h"
#include "tensor/half.h"

namespace st::nn {

namespace {
constexpr uint32_t kMagic = 0x42505453;  // "STPB"
constexpr uint16_t kVersion = 1;
constexpr size_t kHeader = 24;

template <class T>
void put(std::vector<uint8_t>& b, size_t at, T v) {
  std::memcpy(b.data() + at, &v, sizeof(T));
}
template <class T>
T get(const uint8_t* p, size_t at) {
  T v;
  std::memcpy(&v, p + at, sizeof(T));
  return v;
}

// The blob header numbers its encoding 0 = fp32, 1 = fp16, while BlobEncoding (the wire's
// blob_kind) has None = 0, F32 = 1, F16 = 2. Both formats are fixed (docs/protocol.md), so the
// two numberings meet here and only here.
uint8_t header_code(BlobEncoding enc) {
  ST_CHECK(enc == BlobEncoding::F32 || enc == BlobEncoding::F16, "parameter blob: encoding ",
           blob_encoding_name(enc), " holds no values (fp32 or fp16)");
  return enc == BlobEncoding::F32 ? 0 : 1;
}
BlobEncoding from_header_code(uint8_t code) {
  ST_CHECK(code <= 1, "parameter blob: unknown encoding ", int(code));
  return code == 0 ? BlobEncoding::F32 : BlobEncoding::F16;
}
size_t bytes_per_value(BlobEncoding enc) { return header_code(enc) == 0 ? 4 : 2; }
}  // namespace

std::vector<TensorSpec> trained_specs(const Student& s, Distillation mode) {
  std::vector<TensorSpec> specs;
  for (auto& n : s.trained_names(mode)) {
    const Shape& sh = s.parameter(n).shape();
    specs.push_back({n, std::vector<int64_t>(sh.begin(), sh.end())});
  }
  return specs;
}

uint64_t layout_hash(const Student& s, Distillation mode) {
  return layout_hash(trained_specs(s, mode));
}

size_t blob_size(const Student& s, Distillation mode, BlobEncoding enc) {
  size_t n = 0;
  for (auto& t : s.trained_parameters(mode)) n += size_t(t.numel());
  return kHeader + n * bytes_per_value(enc);
}

std::vector<uint8_t> pack_trained(const Student& s, Distillation mode, BlobEncoding enc) {
  auto params = s.trained_parameters(mode);
  std::vector<uint8_t> b(blob_size(s, mode, enc), 0);
  put<uint32_t>(b, 0, kMagic);
  put<uint16_t>(b, 4, kVersion);
  put<uint8_t>(b, 6, header_code(enc));
  put<uint64_t>(b, 8, layout_hash(s, mode));
  put<uint32_t>(b, 16, uint32_t(params.size()));
  size_t at = kHeader;
  for (auto& p : params) {
    auto v = p.to_vector<float>();
    if (enc == BlobEncoding::F32) {
      std::memcpy(b.data() + at, v.data(), v.size() * 4);
      at += v.size() * 4;
    } else {
      for (float f : v) {
        put<uint16_t>(b, at, float_to_half(f));
        at += 2;
      }
    }
  }
  return b;
}

void unpack_trained(Student& s, Distillation mode, const uint8_t* data, size_t size) {
  ST_CHECK(size >= kHeader, "parameter blob: ", size, " bytes, shorter than its ", kHeader,
           "-byte header");
  ST_CHECK(get<uint32_t>(data, 0) == kMagic, "parameter blob: bad magic");
  ST_CHECK(get<uint16_t>(data, 4) == kVersion, "parameter blob: version ",
           get<uint16_t>(data, 4), ", expected ", kVersion);
  const BlobEncoding enc = from_header_code(get<uint8_t>(data, 6));
  ST_CHECK(get<uint64_t>(data, 8) == layout_hash(s, mode),
           "parameter blob: layout hash mismatch (the sender trains a different set of tensors "
           "or shapes than this ", distillation_name(mode), " student)");
  auto params = s.trained_parameters(mode);
  ST_CHECK(get<uint32_t>(data, 16) == params.size(), "parameter blob: ", get<uint32_t>(data, 16),
           " tensors, expected ", params.size());
  size_t expect = blob_size(s, mode, enc);
  ST_CHECK(size == expect, "parameter blob: ", size, " bytes, expected ", expect);
  // Decode everything first, then assign (no partial update on error above).
  std::vector<Tensor> decoded;
  size_t at = kHeader;
  for (auto& p : params) {
    std::vector<float> v(size_t(p.numel()));
    if (enc == BlobEncoding::F32) {
      std::memcpy(v.data(), data + at, v.size() * 4);
      at += v.size() * 4;
    } else {
      for (auto& f : v) {
        f = half_to_float(get<uint16_t>(data, at));
        at += 2;
      }
    }
    for (float f : v) ST_CHECK(std::isfinite(f), "parameter blob: non-finite value in a tensor");
    decoded.push_back(Tensor::from_vector(v, p.shape()));
  }
  NoGradGuard ng;
  for (size_t i = 0; i < params.size(); ++i) params[i].copy_(decoded[i].to(params[i].device()));
}

namespace {
// FNV-1a 64 over every parameter in model order: name, shape, float32 bytes; `values_of(i, t)`
// gives parameter i's values (nullptr: the tensor's own).
template <class Values>
uint64_t hash_parameters(const Student& s, Values values_of) {
  uint64_t h = 0xcbf29ce484222325ull;
  auto mix = [&](const void* p, size_t n) {
    const unsigned char* c = static_cast<const unsigned char*>(p);
    for (size_t i = 0; i < n; ++i) {
      h ^= c[i];
      h *= 0x100000001b3ull;
    }
  };
  size_t i = 0;
  for (auto& [name, t] : s.named_parameters()) {
    mix(name.data(), name.size());
    for (int64_t d : t.shape()) mix(&d, sizeof d);
    if (const std::vector<float>* v = values_of(i++, name)) {
      mix(v->data(), v->size() * sizeof(float));
      continue;
    }
    Tensor c = t.device().is_cpu() ? t.contiguous() : t.to(Device::cpu());
    ST_CHECK(c.dtype() == DType::F32, "weights_hash: parameter ", name, " is not float32");
    mix(c.data<float>(), size_t(c.numel()) * sizeof(float));
  }
  return h;
}
}  // namespace

uint64_t weights_hash(const Student& s) {
  return hash_parameters(s, [](size_t, const std::string&) -> const std::vector<float>* {
    return nullptr;
  });
}

uint64_t weights_hash_with(const Student& s, Distillation mode,
                           const std::vector<std::vector<float>>& trained) {
  const std::vector<std::string> names = s.trained_names(mode);
  ST_CHECK(trained.size() == names.size(), "weights_hash_with: ", trained.size(),
           " tensors for ", names.size(), " trained ones");
  size_t next = 0;  // trained names are in model order too
  return hash_parameters(s, [&](size_t, const std::string& name) -> const std::vector<float>* {
    if (next < names.size() && names[next] == name) return &trained[next++];
    return nullptr;
  });
}

}  // namespace st::nn
