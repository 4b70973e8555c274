// Update blobs: encoding against the mirror, decoding and applying (layout in update.h).
#include "nn/update.h"

#include <zstd.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>

#include "tensor/autograd.h"
#include "tensor/half.h"

namespace st::nn {

namespace {

constexpr uint32_t kMagic = 0x55505453;      // "STPU"
constexpr uint32_t kPlainMagic = 0x42505453;  // "STPB", nn/blob.h
constexpr uint16_t kVersion = 1;
constexpr size_t kHeader = 32;
constexpr uint8_t kSparse = 1, kZstd = 2;

template <class T>
void put(std::vector<uint8_t>& b, T v) {
  const size_t at = b.size();
  b.resize(at + sizeof(T));
  std::memcpy(b.data() + at, &v, sizeof(T));
}
template <class T>
T get(const uint8_t* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}

// Output channels of a tensor's scales: size(0) for 2-D and up, else one scale.
int64_t scale_count(const Shape& s) { return s.size() >= 2 ? s[0] : 1; }

void put_varint(std::vector<uint8_t>& b, uint64_t v) {
  while (v >= 0x80) {
    b.push_back(uint8_t(v | 0x80));
    v >>= 7;
  }
  b.push_back(uint8_t(v));
}

// Reads the body with bounds checks; every failure names the tensor.
struct Reader {
  const uint8_t* p;
  size_t n, at = 0;
  void need(size_t k, const std::string& what) {
    ST_CHECK(k <= n - at, "update blob: the body ends inside ", what);
  }
  template <class T>
  T take(const std::string& what) {
    need(sizeof(T), what);
    T v = get<T>(p + at);
    at += sizeof(T);
    return v;
  }
  uint64_t varint(const std::string& what) {
    uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      const uint8_t b = take<uint8_t>(what);
      v |= uint64_t(b & 0x7F) << shift;
      if ((b & 0x80) == 0) return v;
    }
    throw Error("update blob: a varint of " + what + " runs past 64 bits");
  }
};

std::vector<float> values_of(const Tensor& t) { return t.to_vector<float>(); }

}  // namespace

std::string UpdateCodec::name() const {
  std::string s = values == Values::F32 ? "fp32" : values == Values::F16 ? "fp16" : "int8";
  if (values == Values::Int8Delta && keep < 1.0) {
    char buf[32];
    std::snprintf(buf, sizeof buf, ":top%g", keep * 100.0);
    s += buf;
  }
  return zstd ? s + "+zstd" : s;
}

UpdateCodec parse_update_codec(const std::string& text) {
  UpdateCodec c;
  std::string s = text;
  const std::string z = "+zstd";
  if (s.size() > z.size() && s.compare(s.size() - z.size(), z.size(), z) == 0) {
    c.zstd = true;
    s.resize(s.size() - z.size());
  }
  const std::string forms = "fp32, fp16, int8 or int8:topP (0 < P <= 100), optionally +zstd";
  if (s == "fp32") {
    c.values = UpdateCodec::Values::F32;
  } else if (s == "fp16") {
    c.values = UpdateCodec::Values::F16;
  } else if (s == "int8") {
    c.values = UpdateCodec::Values::Int8Delta;
  } else if (s.rfind("int8:top", 0) == 0 && s.size() > 8) {
    c.values = UpdateCodec::Values::Int8Delta;
    const std::string p = s.substr(8);
    size_t used = 0;
    double pct = 0;
    try {
      pct = std::stod(p, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    ST_CHECK(used == p.size() && pct > 0 && pct <= 100, "update codec '", text, "': ", forms);
    c.keep = pct / 100.0;
  } else {
    throw Error("update codec '" + text + "': " + forms);
  }
  return c;
}

size_t max_update_body(const Student& s, Distillation mode) {
  // Every form's body for a tensor of n entries and S scales is within 4 (k) + 4 S (scales) +
  // 5 n (gaps below n < 2^32: at most 5 LEB128 bytes each) + n (the int8s); fp32 takes 4 n.
  size_t total = 0;
  for (const Tensor& t : s.trained_parameters(mode)) {
    const size_t n = size_t(t.numel());
    total += 4 + 4 * size_t(scale_count(t.shape())) + 5 * n + n;
  }
  return total;
}

namespace {
// Parses and checks an STPU blob against `s` and returns the trained tensors' values after it
// (nothing is assigned); `after_hash` gets the header's hash.
std::vector<std::vector<float>> decode_values(const Student& s, Distillation mode,
                                              const uint8_t* data, size_t size,
                                              uint64_t* after_hash) {
  ST_CHECK(size >= kHeader, "update blob: ", size, " bytes, shorter than its ", kHeader,
           "-byte header");
  ST_CHECK(get<uint32_t>(data) == kMagic, "update blob: bad magic");
  ST_CHECK(get<uint16_t>(data + 4) == kVersion, "update blob: version ", get<uint16_t>(data + 4),
           ", expected ", kVersion);
  const uint8_t values = data[6], flags = data[7];
  ST_CHECK(values <= 2, "update blob: unknown value type ", int(values));
  ST_CHECK((flags & ~(kSparse | kZstd)) == 0, "update blob: unknown flag bits ", int(flags));
  ST_CHECK(!(flags & kSparse) || values == 2, "update blob: only int8 deltas can be sparse");
  ST_CHECK(get<uint64_t>(data + 8) == layout_hash(s, mode),
           "update blob: layout hash mismatch (the sender trains a different set of tensors or "
           "shapes than this ", distillation_name(mode), " student)");
  std::vector<Tensor> params = s.trained_parameters(mode);
  ST_CHECK(get<uint32_t>(data + 16) == params.size(), "update blob: ", get<uint32_t>(data + 16),
           " tensors, expected ", params.size());
  const size_t body_bytes = get<uint32_t>(data + 20);
  *after_hash = get<uint64_t>(data + 24);
  const size_t cap = max_update_body(s, mode);
  ST_CHECK(body_bytes <= cap, "update blob: a body of ", body_bytes, " bytes, more than any ",
           "update of this student can hold (", cap, ")");

  // The body: in place, or decompressed into exactly body_bytes (checked before allocating).
  std::vector<uint8_t> inflated;
  const uint8_t* body = data + kHeader;
  if (flags & kZstd) {
    const unsigned long long content = ZSTD_getFrameContentSize(body, size - kHeader);
    ST_CHECK(content != ZSTD_CONTENTSIZE_ERROR, "update blob: the body is not a zstd frame");
    ST_CHECK(content != ZSTD_CONTENTSIZE_UNKNOWN,
             "update blob: the zstd frame does not state its content size");
    ST_CHECK(content == body_bytes, "update blob: the zstd frame holds ", content,
             " bytes, the header says ", body_bytes);
    ST_CHECK(ZSTD_findFrameCompressedSize(body, size - kHeader) == size - kHeader,
             "update blob: bytes after the zstd frame, or a truncated frame");
    inflated.resize(body_bytes);
    const size_t got = ZSTD_decompress(inflated.data(), inflated.size(), body, size - kHeader);
    ST_CHECK(!ZSTD_isError(got), "update blob: zstd: ", ZSTD_isError(got) ? ZSTD_getErrorName(got) : "");
    ST_CHECK(got == body_bytes, "update blob: zstd gave ", got, " bytes, the header says ",
             body_bytes);
    body = inflated.data();
  } else {
    ST_CHECK(size - kHeader == body_bytes, "update blob: ", size - kHeader,
             " bytes of body, the header says ", body_bytes);
  }

  // Decode every tensor into new values, then assign (nothing changes on an error above).
  Reader r{body, body_bytes};
  std::vector<std::vector<float>> decoded;
  decoded.reserve(params.size());
  const auto names = s.trained_names(mode);
  for (size_t t = 0; t < params.size(); ++t) {
    const std::string& name = names[t];
    const size_t n = size_t(params[t].numel());
    std::vector<float> v;
    if (values == 0 || values == 1) {
      v.resize(n);
      for (auto& f : v)
        f = values == 0 ? r.take<float>(name) : half_to_float(r.take<uint16_t>(name));
    } else {
      v = values_of(params[t]);
      const int64_t S = scale_count(params[t].shape());
      const size_t per = n / size_t(S);  // entries per output channel
      size_t k = n;
      if (flags & kSparse) {
        k = r.take<uint32_t>(name);
        ST_CHECK(k >= 1 && k <= n, "update blob: ", name, ": ", k, " entries of ", n);
      }
      std::vector<float> scale(static_cast<size_t>(S));
      for (auto& sc : scale) {
        sc = r.take<float>(name);
        ST_CHECK(std::isfinite(sc) && sc >= 0, "update blob: ", name, ": a scale of ", sc);
      }
      std::vector<uint32_t> index;
      if (flags & kSparse) {
        index.resize(k);
        uint64_t next = 0;  // the smallest index the next entry may have
        for (auto& i : index) {
          const uint64_t gap = r.varint(name);
          ST_CHECK(gap < n && next + gap < n, "update blob: ", name, ": an index past ", n,
                   " entries");
          i = uint32_t(next + gap);
          next = uint64_t(i) + 1;
        }
      }
      r.need(k, name);
      for (size_t j = 0; j < k; ++j) {
        const int8_t q = int8_t(body[r.at + j]);
        ST_CHECK(q != -128, "update blob: ", name, ": -128 is not a delta");
        const size_t i = (flags & kSparse) ? index[j] : j;
        v[i] = std::fmaf(float(q), scale[i / per], v[i]);
      }
      r.at += k;
    }
    for (float f : v) ST_CHECK(std::isfinite(f), "update blob: ", name, ": a non-finite value");
    decoded.push_back(std::move(v));
  }
  ST_CHECK(r.at == body_bytes, "update blob: ", body_bytes - r.at, " bytes after the last tensor");
  return decoded;
}

void assign(Student& s, Distillation mode, const std::vector<std::vector<float>>& values) {
  std::vector<Tensor> params = s.trained_parameters(mode);
  NoGradGuard ng;
  for (size_t t = 0; t < params.size(); ++t)
    params[t].copy_(Tensor::from_vector(values[t], params[t].shape()).to(params[t].device()));
}
}  // namespace

void apply_update(Student& s, Distillation mode, const uint8_t* data, size_t size) {
  ST_CHECK(size >= 4, "update blob: ", size, " bytes, too short for a magic number");
  if (get<uint32_t>(data) == kPlainMagic) {
    unpack_trained(s, mode, data, size);
    return;
  }
  uint64_t want = 0;
  const std::vector<std::vector<float>> values = decode_values(s, mode, data, size, &want);
  const uint64_t got = weights_hash_with(s, mode, values);
  if (got != want)
    throw WeightsMismatch("update blob: the weights after it hash to " + std::to_string(got) +
                          ", the sender's mirror of them to " + std::to_string(want) +
                          ": the weights it was made against are not these (resync)");
  assign(s, mode, values);
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
  const std::vector<Tensor> want = trained.trained_parameters(mode_);
  const std::vector<Tensor> have = mirror_->trained_parameters(mode_);
  const bool delta = codec_.values == UpdateCodec::Values::Int8Delta;
  const bool sparse = delta && codec_.keep < 1.0;

  std::vector<uint8_t> body;
  for (size_t t = 0; t < want.size(); ++t) {
    const std::vector<float> w = values_of(want[t]);
    if (!delta) {
      for (float f : w) {
        if (codec_.values == UpdateCodec::Values::F32) put<float>(body, f);
        else put<uint16_t>(body, float_to_half(f));
      }
      continue;
    }
    const std::vector<float> m = values_of(have[t]);
    const size_t n = w.size();
    std::vector<float> d(n);
    for (size_t i = 0; i < n; ++i) d[i] = w[i] - m[i];
    // The entries sent: all, or the k largest |delta| (ties: the lower index), in index order.
    std::vector<uint32_t> index;
    if (sparse) {
      const size_t k = std::max<size_t>(1, size_t(std::ceil(codec_.keep * double(n))));
      index.resize(n);
      std::iota(index.begin(), index.end(), 0u);
      auto larger = [&](uint32_t a, uint32_t b) {
        const float fa = std::fabs(d[a]), fb = std::fabs(d[b]);
        return fa != fb ? fa > fb : a < b;
      };
      if (k < n) std::nth_element(index.begin(), index.begin() + ptrdiff_t(k), index.end(), larger);
      index.resize(k);
      std::sort(index.begin(), index.end());
    }
    const size_t k = sparse ? index.size() : n;
    auto at = [&](size_t j) { return sparse ? size_t(index[j]) : j; };
    const int64_t S = scale_count(want[t].shape());
    const size_t per = n / size_t(S);
    std::vector<float> scale(size_t(S), 0.f);
    for (size_t j = 0; j < k; ++j) {
      const size_t i = at(j);
      scale[i / per] = std::max(scale[i / per], std::fabs(d[i]));
    }
    for (auto& sc : scale) sc /= 127.f;
    if (sparse) put<uint32_t>(body, uint32_t(k));
    for (float sc : scale) put<float>(body, sc);
    if (sparse) {
      uint64_t next = 0;
      for (uint32_t i : index) {
        put_varint(body, i - next);
        next = uint64_t(i) + 1;
      }
    }
    for (size_t j = 0; j < k; ++j) {
      const size_t i = at(j);
      const float sc = scale[i / per];
      const float q = sc > 0 ? std::nearbyint(d[i] / sc) : 0.f;
      body.push_back(uint8_t(int8_t(std::clamp(q, -127.f, 127.f))));
    }
  }

  std::vector<uint8_t> blob;
  blob.reserve(kHeader + body.size());
  put<uint32_t>(blob, kMagic);
  put<uint16_t>(blob, kVersion);
  put<uint8_t>(blob, uint8_t(codec_.values));
  put<uint8_t>(blob, uint8_t((sparse ? kSparse : 0) | (codec_.zstd ? kZstd : 0)));
  put<uint64_t>(blob, layout_hash(*mirror_, mode_));
  put<uint32_t>(blob, uint32_t(want.size()));
  put<uint32_t>(blob, uint32_t(body.size()));
  put<uint64_t>(blob, 0);  // the hash after it, filled in below
  if (codec_.zstd) {
    std::vector<uint8_t> z(ZSTD_compressBound(body.size()));
    const size_t got = ZSTD_compress(z.data(), z.size(), body.data(), body.size(), kUpdateZstdLevel);
    ST_CHECK(!ZSTD_isError(got), "update encoder: zstd: ", ZSTD_getErrorName(got));
    blob.insert(blob.end(), z.begin(), z.begin() + ptrdiff_t(got));
  } else {
    blob.insert(blob.end(), body.begin(), body.end());
  }
  // The weights the edge will hold: this blob decoded by the edge's code against the mirror.
  uint64_t unused = 0;
  const auto after = decode_values(*mirror_, mode_, blob.data(), blob.size(), &unused);
  const uint64_t h = weights_hash_with(*mirror_, mode_, after);
  std::memcpy(blob.data() + 24, &h, 8);
  assign(*mirror_, mode_, after);
  return blob;
}

}  // namespace st::nn
