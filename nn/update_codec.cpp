// The update blob format on plain values (layout: nn/update.h; interface: update_codec.h).
#include "nn/update_codec.h"

#include <zstd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <numeric>
#include <sstream>

#include "common/error.h"
#include "tensor/half.h"

namespace st::nn {

namespace {

constexpr uint32_t kMagic = 0x55505453;  // "STPU"
constexpr uint16_t kVersion = 1;
constexpr size_t kHeader = kUpdateHeader;
constexpr uint8_t kSparse = 1, kZstd = 2;

template <class... A>
void check(bool ok, const A&... what) {
  if (ok) return;
  std::ostringstream o;
  (o << ... << what);
  throw Error(o.str());
}

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
    check(k <= n - at, "update blob: the body ends inside ", what);
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

}  // namespace

size_t TensorSpec::numel() const {
  size_t n = 1;
  for (int64_t d : shape) n *= size_t(d);
  return n;
}
size_t TensorSpec::scales() const { return shape.size() >= 2 ? size_t(shape[0]) : 1; }

uint64_t layout_hash(const std::vector<TensorSpec>& specs) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (const TensorSpec& t : specs) {
    std::string item = t.name + ":";
    for (size_t i = 0; i < t.shape.size(); ++i) {
      if (i) item += ',';
      item += std::to_string(t.shape[i]);
    }
    item += ";";
    for (unsigned char c : item) {
      h ^= c;
      h *= 0x100000001b3ull;
    }
  }
  return h;
}

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
    check(used == p.size() && pct > 0 && pct <= 100, "update codec '", text, "': ", forms);
    c.keep = pct / 100.0;
  } else {
    throw Error("update codec '" + text + "': " + forms);
  }
  return c;
}

size_t max_update_body(const std::vector<TensorSpec>& specs) {
  // Every form's body for a tensor of n entries and S scales is within 4 (k) + 4 S (scales) +
  // 5 n (gaps below n < 2^32: at most 5 LEB128 bytes each) + n (the int8s); fp32 takes 4 n.
  size_t total = 0;
  for (const TensorSpec& t : specs) total += 4 + 4 * t.scales() + 6 * t.numel();
  return total;
}

void set_update_hash(std::vector<uint8_t>& blob, uint64_t after_hash) {
  check(blob.size() >= kHeader, "update blob: no header to put the hash in");
  std::memcpy(blob.data() + 24, &after_hash, 8);
}

std::vector<uint8_t> encode_update(const std::vector<TensorSpec>& specs,
                                   const std::vector<std::vector<float>>& target,
                                   const std::vector<std::vector<float>>& mirror,
                                   const UpdateCodec& codec) {
  check(codec.keep > 0 && codec.keep <= 1, "update codec: keep ", codec.keep,
        " is not within (0, 1]");
  check(codec.values == UpdateCodec::Values::Int8Delta || codec.keep == 1.0,
        "update codec: only int8 deltas can be sparse");
  check(target.size() == specs.size() && mirror.size() == specs.size(),
        "update encoder: ", target.size(), " and ", mirror.size(), " tensors for ", specs.size());
  const bool delta = codec.values == UpdateCodec::Values::Int8Delta;
  const bool sparse = delta && codec.keep < 1.0;

  std::vector<uint8_t> body;
  for (size_t t = 0; t < specs.size(); ++t) {
    const std::vector<float>& w = target[t];
    const size_t n = specs[t].numel();
    check(w.size() == n && mirror[t].size() == n, "update encoder: ", specs[t].name, " has ",
          w.size(), " and ", mirror[t].size(), " values, not ", n);
    if (!delta) {
      for (float f : w) {
        if (codec.values == UpdateCodec::Values::F32) put<float>(body, f);
        else put<uint16_t>(body, float_to_half(f));
      }
      continue;
    }
    const std::vector<float>& m = mirror[t];
    std::vector<float> d(n);
    for (size_t i = 0; i < n; ++i) d[i] = w[i] - m[i];
    // The entries sent: all, or the k largest |delta| (ties: the lower index), in index order.
    std::vector<uint32_t> index;
    if (sparse) {
      const size_t k = std::max<size_t>(1, size_t(std::ceil(codec.keep * double(n))));
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
    const size_t S = specs[t].scales(), per = n / S;
    std::vector<float> scale(S, 0.f);
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
  put<uint8_t>(blob, uint8_t(codec.values));
  put<uint8_t>(blob, uint8_t((sparse ? kSparse : 0) | (codec.zstd ? kZstd : 0)));
  put<uint64_t>(blob, layout_hash(specs));
  put<uint32_t>(blob, uint32_t(specs.size()));
  put<uint32_t>(blob, uint32_t(body.size()));
  put<uint64_t>(blob, 0);  // the hash after it: set_update_hash
  if (codec.zstd) {
    std::vector<uint8_t> z(ZSTD_compressBound(body.size()));
    const size_t got = ZSTD_compress(z.data(), z.size(), body.data(), body.size(), kUpdateZstdLevel);
    check(!ZSTD_isError(got), "update encoder: zstd: ", ZSTD_isError(got) ? ZSTD_getErrorName(got) : "");
    blob.insert(blob.end(), z.begin(), z.begin() + ptrdiff_t(got));
  } else {
    blob.insert(blob.end(), body.begin(), body.end());
  }
  return blob;
}

DecodedUpdate decode_update(const std::vector<TensorSpec>& specs,
                            const std::vector<std::vector<float>>& current, const uint8_t* data,
                            size_t size) {
  check(size >= kHeader, "update blob: ", size, " bytes, shorter than its ", kHeader,
        "-byte header");
  check(get<uint32_t>(data) == kMagic, "update blob: bad magic");
  check(get<uint16_t>(data + 4) == kVersion, "update blob: version ", get<uint16_t>(data + 4),
        ", expected ", kVersion);
  const uint8_t values = data[6], flags = data[7];
  check(values <= 2, "update blob: unknown value type ", int(values));
  check((flags & ~(kSparse | kZstd)) == 0, "update blob: unknown flag bits ", int(flags));
  check(!(flags & kSparse) || values == 2, "update blob: only int8 deltas can be sparse");
  check(get<uint64_t>(data + 8) == layout_hash(specs),
        "update blob: layout hash mismatch (the sender trains a different set of tensors or "
        "shapes than this student)");
  check(get<uint32_t>(data + 16) == specs.size(), "update blob: ", get<uint32_t>(data + 16),
        " tensors, expected ", specs.size());
  check(current.size() == specs.size(), "update blob: ", current.size(), " current tensors for ",
        specs.size());
  const size_t body_bytes = get<uint32_t>(data + 20);
  DecodedUpdate out;
  out.after_hash = get<uint64_t>(data + 24);
  const size_t cap = max_update_body(specs);
  check(body_bytes <= cap, "update blob: a body of ", body_bytes, " bytes, more than any ",
        "update of this student can hold (", cap, ")");

  // The body: in place, or decompressed into exactly body_bytes (checked before allocating).
  std::vector<uint8_t> inflated;
  const uint8_t* body = data + kHeader;
  const size_t stored = size - kHeader;
  if (flags & kZstd) {
    const unsigned long long content = ZSTD_getFrameContentSize(body, stored);
    check(content != ZSTD_CONTENTSIZE_ERROR, "update blob: the body is not a zstd frame");
    check(content != ZSTD_CONTENTSIZE_UNKNOWN,
          "update blob: the zstd frame does not state its content size");
    check(content == body_bytes, "update blob: the zstd frame holds ", content,
          " bytes, the header says ", body_bytes);
    check(ZSTD_findFrameCompressedSize(body, stored) == stored,
          "update blob: bytes after the zstd frame, or a truncated frame");
    inflated.resize(body_bytes);
    const size_t got = ZSTD_decompress(inflated.data(), inflated.size(), body, stored);
    check(!ZSTD_isError(got), "update blob: zstd: ", ZSTD_isError(got) ? ZSTD_getErrorName(got) : "");
    check(got == body_bytes, "update blob: zstd gave ", got, " bytes, the header says ",
          body_bytes);
    body = inflated.data();
  } else {
    check(stored == body_bytes, "update blob: ", stored, " bytes of body, the header says ",
          body_bytes);
  }

  // Decode every tensor into new values.
  Reader r{body, body_bytes};
  out.values.reserve(specs.size());
  for (size_t t = 0; t < specs.size(); ++t) {
    const std::string& name = specs[t].name;
    const size_t n = specs[t].numel();
    check(current[t].size() == n, "update blob: ", name, " holds ", current[t].size(),
          " values, not ", n);
    std::vector<float> v;
    if (values == 0 || values == 1) {
      r.need(n * (values == 0 ? 4 : 2), name);
      v.resize(n);
      for (auto& f : v)
        f = values == 0 ? r.take<float>(name) : half_to_float(r.take<uint16_t>(name));
    } else {
      v = current[t];
      const size_t S = specs[t].scales(), per = n / S;
      size_t k = n;
      if (flags & kSparse) {
        k = r.take<uint32_t>(name);
        check(k >= 1 && k <= n, "update blob: ", name, ": ", k, " entries of ", n);
      }
      r.need(4 * S, name);
      std::vector<float> scale(S);
      for (auto& sc : scale) {
        sc = r.take<float>(name);
        check(std::isfinite(sc) && sc >= 0, "update blob: ", name, ": a scale of ", sc);
      }
      std::vector<uint32_t> index;
      if (flags & kSparse) {
        index.resize(k);
        uint64_t next = 0;  // the smallest index the next entry may have
        for (auto& i : index) {
          const uint64_t gap = r.varint(name);
          check(gap < n && next + gap < n, "update blob: ", name, ": an index past ", n,
                " entries");
          i = uint32_t(next + gap);
          next = uint64_t(i) + 1;
        }
      }
      r.need(k, name);
      for (size_t j = 0; j < k; ++j) {
        const int8_t q = int8_t(body[r.at + j]);
        check(q != -128, "update blob: ", name, ": -128 is not a delta");
        const size_t i = (flags & kSparse) ? index[j] : j;
        v[i] = std::fmaf(float(q), scale[i / per], v[i]);
      }
      r.at += k;
    }
    for (float f : v) check(std::isfinite(f), "update blob: ", name, ": a non-finite value");
    out.values.push_back(std::move(v));
  }
  check(r.at == body_bytes, "update blob: ", body_bytes - r.at, " bytes after the last tensor");
  return out;
}

}  // namespace st::nn
