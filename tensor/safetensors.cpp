// safetensors reader and writer (see safetensors.h for the format).
//
// The reader treats its input as hostile: every length and offset is checked against the bytes
// actually present before anything is read or allocated, so a corrupt file yields an st::Error
// naming the file and the problem, never a crash, an out-of-bounds read or a huge allocation.
// Returned tensors are CPU, contiguous and own their memory (copied out of the file buffer).
//
// The header is read in two passes over the same bytes: a SAX pass that checks the JSON is well
// formed, limits nesting, rejects duplicate keys (a DOM parser would silently keep one of them)
// and records the order of the top-level names; then a DOM pass whose values are validated.
//
// Accepted although the reference implementation rejects them: gaps between tensors' data
// and unused bytes after the last tensor (other readers may refuse such files; our writer never
// produces them). Entries may carry extra keys besides dtype, shape and data_offsets; they are
// ignored.
#include "tensor/safetensors.h"

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <unordered_set>

namespace st::safetensors {

static_assert(std::endian::native == std::endian::little,
              "safetensors stores little-endian data; big-endian hosts are not supported");

namespace {

using json = nlohmann::json;

constexpr uint64_t kMaxHeaderBytes = 100ull * 1000 * 1000;  // as the reference implementation
constexpr size_t kMaxDepth = 64;                             // far deeper than any valid header
constexpr const char* kMetadataKey = "__metadata__";

// The concatenation of strings and numbers (avoids "literal" + std::string&&, which GCC 12
// at -O3 flags with a false -Wrestrict warning).
template <class... A>
std::string cat(const A&... parts) {
  std::string s;
  (::st::detail::append(s, parts), ...);
  return s;
}

// A name from the file, quoted and shortened for messages (a hostile name may be megabytes).
std::string quote(const std::string& s) {
  constexpr size_t kMax = 80;
  if (s.size() <= kMax) return cat("'", s, "'");
  return cat("'", s.substr(0, kMax), "...' (", s.size(), " bytes)");
}

std::string shorten(const std::string& s, size_t max = 200) {
  return s.size() <= max ? s : cat(s.substr(0, max), "...");
}

// Throws st::Error "safetensors <source>: <message parts>".
template <class... A>
[[noreturn]] void fail_in(const std::string& source, const A&... parts) {
  ::st::detail::fail("safetensors ", source, ": ", parts...);
}

const char* file_dtype_name(DType t) {
  switch (t) {
    case DType::F32: return "F32";
    case DType::F64: return "F64";
    case DType::F16: return "F16";
    case DType::U8: return "U8";
    case DType::I32: return "I32";
    case DType::I64: return "I64";
  }
  return "?";
}

bool parse_dtype(const std::string& s, DType& out) {
  for (DType t : {DType::F32, DType::F64, DType::F16, DType::U8, DType::I32, DType::I64}) {
    if (s == file_dtype_name(t)) {
      out = t;
      return true;
    }
  }
  return false;
}

// SAX pass over the header: well-formedness, nesting depth, duplicate keys at any level, and the
// order of the top-level keys. Throws st::Error for depth and duplicates; records JSON syntax
// errors in `syntax_error` (nlohmann reports them through parse_error).
class HeaderScan : public nlohmann::json_sax<json> {
 public:
  explicit HeaderScan(const std::string& source) : source_(source) {}

  std::vector<std::string> top_keys;  // in header order
  std::string syntax_error;

  bool null() override { return true; }
  bool boolean(bool) override { return true; }
  bool number_integer(number_integer_t) override { return true; }
  bool number_unsigned(number_unsigned_t) override { return true; }
  bool number_float(number_float_t, const string_t&) override { return true; }
  bool string(string_t&) override { return true; }
  bool binary(binary_t&) override { return true; }

  bool start_object(std::size_t) override {
    push(true);
    return true;
  }
  bool key(string_t& k) override {
    Frame& f = frames_.back();
    if (!f.keys.insert(k).second) {
      if (frames_.size() == 1) fail_in(source_, "duplicate tensor name ", quote(k), " in header");
      fail_in(source_, "duplicate key ", quote(k), " in header");
    }
    if (frames_.size() == 1) top_keys.push_back(k);
    return true;
  }
  bool end_object() override {
    frames_.pop_back();
    return true;
  }
  bool start_array(std::size_t) override {
    push(false);
    return true;
  }
  bool end_array() override {
    frames_.pop_back();
    return true;
  }
  bool parse_error(std::size_t, const std::string&, const nlohmann::detail::exception& ex) override {
    syntax_error = shorten(ex.what());
    return false;
  }

 private:
  struct Frame {
    bool is_object;
    std::unordered_set<std::string> keys;
  };
  void push(bool is_object) {
    if (frames_.size() >= kMaxDepth)
      fail_in(source_, "header nests deeper than ", kMaxDepth, " levels");
    frames_.push_back(Frame{is_object, {}});
  }
  const std::string& source_;
  std::vector<Frame> frames_;
};

// A JSON value as a non-negative int64, or a message saying why it is not one.
bool as_index(const json& v, int64_t& out, std::string& why) {
  if (v.is_number_unsigned()) {
    uint64_t u = v.get<uint64_t>();
    if (u > uint64_t(std::numeric_limits<int64_t>::max())) {
      why = cat("too large (", u, ")");
      return false;
    }
    out = int64_t(u);
    return true;
  }
  if (v.is_number_integer()) {
    int64_t i = v.get<int64_t>();
    if (i < 0) {
      why = cat("negative (", i, ")");
      return false;
    }
    out = i;
    return true;
  }
  why = v.is_number_float() ? cat("not an integer (", shorten(v.dump(), 40), ")")
                            : cat("not an integer (a JSON ", v.type_name(), ")");
  return false;
}

struct Entry {
  std::string name;
  DType dtype;
  Shape shape;
  int64_t begin, end;  // relative to the data section
  size_t header_index;
};

Entry parse_entry(const std::string& source, const std::string& name, const json& e,
                  size_t header_index, uint64_t data_size) {
  const std::string who = cat("tensor ", quote(name));
  ST_CHECK(e.is_object(), "safetensors ", source, ": entry for ", who, " is not a JSON object (a ",
           e.type_name(), ")");
  for (const char* k : {"dtype", "shape", "data_offsets"})
    if (!e.contains(k)) fail_in(source, who, " has no '", k, "'");

  Entry out{name, DType::F32, {}, 0, 0, header_index};

  const json& dt = e["dtype"];
  if (!dt.is_string()) fail_in(source, who, ": dtype is not a string (a ", dt.type_name(), ")");
  const std::string& dts = dt.get_ref<const std::string&>();
  if (!parse_dtype(dts, out.dtype))
    fail_in(source, "unsupported dtype ", shorten(dts, 40), " for ", who,
            " (supported: F32, F64, F16, U8, I32, I64)");

  const json& sh = e["shape"];
  if (!sh.is_array()) fail_in(source, who, ": shape is not an array (a ", sh.type_name(), ")");
  // numel, and the product of max(dim, 1) (what the strides need), must both fit in int64.
  int64_t numel = 1, span = 1;
  for (size_t i = 0; i < sh.size(); ++i) {
    int64_t d;
    std::string why;
    if (!as_index(sh[i], d, why)) fail_in(source, who, ": shape dim ", i, " is ", why);
    if (__builtin_mul_overflow(span, std::max<int64_t>(d, 1), &span))
      fail_in(source, who, ": shape product overflows int64 (dim ", i, " = ", d, ")");
    numel *= d;  // |numel| <= span: cannot overflow
    out.shape.push_back(d);
  }
  int64_t nbytes;
  if (__builtin_mul_overflow(numel, int64_t(dtype_size(out.dtype)), &nbytes))
    fail_in(source, who, ": shape ", out.shape, " of ", dts, " overflows the byte count");

  const json& off = e["data_offsets"];
  if (!off.is_array() || off.size() != 2)
    fail_in(source, who, ": data_offsets must be [begin, end], got ",
            off.is_array() ? cat("an array of ", off.size()) : cat("a JSON ", off.type_name()));
  std::string why;
  if (!as_index(off[0], out.begin, why)) fail_in(source, who, ": data_offsets begin is ", why);
  if (!as_index(off[1], out.end, why)) fail_in(source, who, ": data_offsets end is ", why);
  if (out.begin > out.end)
    fail_in(source, who, ": data_offsets begin ", out.begin, " is after end ", out.end);
  if (uint64_t(out.end) > data_size)
    fail_in(source, who, ": data_offsets end ", out.end, " is beyond the data section (",
            data_size, " bytes)");
  if (out.end - out.begin != nbytes)
    fail_in(source, who, ": data_offsets [", out.begin, ", ", out.end, "] hold ",
            out.end - out.begin, " bytes but shape ", out.shape, " of ", dts, " needs ", nbytes);
  return out;
}

}  // namespace

// ---------------- File ----------------

bool File::contains(const std::string& name) const {
  for (const auto& [n, t] : tensors)
    if (n == name) return true;
  return false;
}

const Tensor& File::get(const std::string& name) const {
  for (const auto& [n, t] : tensors)
    if (n == name) return t;
  std::string listed;
  constexpr size_t kShown = 8;
  for (size_t i = 0; i < tensors.size() && i < kShown; ++i)
    listed += (i ? ", " : "") + quote(tensors[i].first);
  if (tensors.size() > kShown) listed += ", ...";
  fail_in(source, "no tensor named ", quote(name), " (the file has ", tensors.size(),
          " tensors", tensors.empty() ? "" : ": ", listed, ")");
}

const Tensor& File::get(const std::string& name, const Shape& shape, DType dtype) const {
  const Tensor& t = get(name);
  if (t.shape() != shape || t.dtype() != dtype)
    fail_in(source, "tensor ", quote(name), " has shape ", t.shape(), " dtype ", t.dtype(),
            ", expected ", shape, " ", dtype);
  return t;
}

std::vector<std::string> File::names() const {
  std::vector<std::string> r;
  r.reserve(tensors.size());
  for (const auto& [n, t] : tensors) r.push_back(n);
  return r;
}

// ---------------- reading ----------------

File parse(const uint8_t* data, size_t size, const std::string& source) {
  if (size < 8 || data == nullptr)
    fail_in(source, "file is ", size, " bytes, shorter than the 8-byte header length");
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | data[i];  // u64 little-endian
  if (header_len > kMaxHeaderBytes)
    fail_in(source, "header length ", header_len, " exceeds the limit of ", kMaxHeaderBytes,
            " bytes");
  if (header_len > size - 8)
    fail_in(source, "header length ", header_len, " is larger than the file allows (",
            size - 8, " bytes after the length; truncated file?)");

  const char* hbegin = reinterpret_cast<const char*>(data + 8);
  const char* hend = hbegin + header_len;
  const uint8_t* section = data + 8 + header_len;
  const uint64_t section_size = size - 8 - header_len;

  // nlohmann's lexer takes a NUL byte for the end of input and would ignore what follows it;
  // JSON never contains a raw NUL, so reject it here.
  if (const void* nul = std::memchr(hbegin, 0, header_len))
    fail_in(source, "header is not valid JSON: NUL byte at header offset ",
            static_cast<const char*>(nul) - hbegin);
  HeaderScan scan(source);
  if (!json::sax_parse(hbegin, hend, &scan) || !scan.syntax_error.empty())
    fail_in(source, "header is not valid JSON: ",
            scan.syntax_error.empty() ? std::string("parse failed") : scan.syntax_error);
  json header;
  try {
    header = json::parse(hbegin, hend);
  } catch (const json::exception& e) {  // not expected after the SAX pass
    fail_in(source, "header is not valid JSON: ", shorten(e.what()));
  }
  if (!header.is_object())
    fail_in(source, "header is not a JSON object (a ", header.type_name(), ")");

  File file;
  file.source = source;
  std::vector<Entry> entries;
  entries.reserve(scan.top_keys.size());
  for (size_t i = 0; i < scan.top_keys.size(); ++i) {
    const std::string& name = scan.top_keys[i];
    const json& v = header.at(name);
    if (name == kMetadataKey) {
      if (!v.is_object())
        fail_in(source, "__metadata__ is not a JSON object (a ", v.type_name(), ")");
      for (const auto& [k, mv] : v.items()) {
        if (!mv.is_string())
          fail_in(source, "__metadata__ value for key ", quote(k), " is not a string (a ",
                  mv.type_name(), ")");
        file.metadata[k] = mv.get<std::string>();
      }
      continue;
    }
    entries.push_back(parse_entry(source, name, v, i, section_size));
  }

  // Data order is the writer's order; header order breaks ties between empty tensors.
  std::sort(entries.begin(), entries.end(), [](const Entry& a, const Entry& b) {
    if (a.begin != b.begin) return a.begin < b.begin;
    if (a.end != b.end) return a.end < b.end;
    return a.header_index < b.header_index;
  });
  // Sorted by begin, non-empty ranges overlap iff one starts before the furthest end so far.
  const Entry* furthest = nullptr;
  for (const Entry& e : entries) {
    if (e.begin == e.end) continue;  // empty tensors occupy no bytes
    if (furthest && e.begin < furthest->end)
      fail_in(source, "tensors ", quote(furthest->name), " [", furthest->begin, ", ",
              furthest->end, ") and ", quote(e.name), " [", e.begin, ", ", e.end, ") overlap");
    if (!furthest || e.end > furthest->end) furthest = &e;
  }

  file.tensors.reserve(entries.size());
  for (const Entry& e : entries) {
    Tensor t = Tensor::empty(e.shape, e.dtype);
    if (e.end > e.begin) std::memcpy(t.raw_data(), section + e.begin, size_t(e.end - e.begin));
    t.set_name(e.name);
    file.tensors.emplace_back(e.name, std::move(t));
  }
  return file;
}

File load(const std::filesystem::path& path) {
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec))
    ::st::detail::fail("safetensors: cannot open ", path.string(), ": it is a directory");
  std::ifstream in(path, std::ios::binary);
  if (!in) ::st::detail::fail("safetensors: cannot open ", path.string(), ": ", std::string(std::strerror(errno)));
  in.seekg(0, std::ios::end);
  std::streamoff n = in.tellg();
  in.seekg(0, std::ios::beg);
  if (n < 0 || !in) ::st::detail::fail("safetensors: cannot read ", path.string());
  std::vector<uint8_t> buf(static_cast<size_t>(n));
  if (n > 0 && !in.read(reinterpret_cast<char*>(buf.data()), n))
    ::st::detail::fail("safetensors: cannot read ", path.string(), ": short read");
  return parse(buf.data(), buf.size(), path.string());
}

// ---------------- writing ----------------

std::vector<uint8_t> serialize(const std::vector<std::pair<std::string, Tensor>>& tensors,
                               const std::map<std::string, std::string>& metadata) {
  std::unordered_set<std::string> seen;
  std::vector<Tensor> cpu;  // contiguous CPU copies (or the tensors themselves when already so)
  cpu.reserve(tensors.size());
  for (const auto& [name, t] : tensors) {
    ST_CHECK(!name.empty(), "safetensors write: empty tensor name");
    ST_CHECK(name != kMetadataKey, "safetensors write: '__metadata__' is reserved, not a tensor name");
    ST_CHECK(seen.insert(name).second, "safetensors write: duplicate tensor name ", quote(name));
    ST_CHECK(t.defined(), "safetensors write: tensor ", quote(name), " is undefined");
    cpu.push_back(t.detach().to(Device::cpu()).contiguous());
  }

  // The header is built by hand so the entries keep the caller's order.
  std::string header = "{";
  uint64_t offset = 0;
  try {
    if (!metadata.empty()) header += json(kMetadataKey).dump() + ":" + json(metadata).dump();
    for (size_t i = 0; i < tensors.size(); ++i) {
      const Tensor& t = cpu[i];
      uint64_t nbytes = uint64_t(t.numel()) * dtype_size(t.dtype());
      nlohmann::ordered_json entry;
      entry["dtype"] = file_dtype_name(t.dtype());
      entry["shape"] = t.shape();
      entry["data_offsets"] = {offset, offset + nbytes};
      offset += nbytes;
      if (header.size() > 1) header += ",";
      header += json(tensors[i].first).dump() + ":" + entry.dump();
    }
  } catch (const json::exception& e) {  // names or metadata that are not valid UTF-8
    ::st::detail::fail("safetensors write: ", shorten(e.what()));
  }
  header += "}";
  header.append((8 - header.size() % 8) % 8, ' ');  // data starts 8-byte aligned

  std::vector<uint8_t> out(8 + header.size() + offset);
  uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) out[size_t(i)] = uint8_t(n >> (8 * i));
  std::memcpy(out.data() + 8, header.data(), header.size());
  uint8_t* p = out.data() + 8 + header.size();
  for (const Tensor& t : cpu) {
    size_t nbytes = size_t(t.numel()) * dtype_size(t.dtype());
    if (nbytes) std::memcpy(p, t.raw_data(), nbytes);
    p += nbytes;
  }
  return out;
}

void save(const std::filesystem::path& path,
          const std::vector<std::pair<std::string, Tensor>>& tensors,
          const std::map<std::string, std::string>& metadata) {
  std::vector<uint8_t> bytes = serialize(tensors, metadata);
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out)
    ::st::detail::fail("safetensors: cannot open ", path.string(), " for writing: ",
                       std::string(std::strerror(errno)));
  out.write(reinterpret_cast<const char*>(bytes.data()), std::streamsize(bytes.size()));
  out.close();
  if (!out) ::st::detail::fail("safetensors: error writing ", path.string());
}

}  // namespace st::safetensors
