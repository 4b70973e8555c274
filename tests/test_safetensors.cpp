// Tests for the safetensors reader and writer: round trips of every dtype and layout, a
// hand-built file (the format, not just our own writer), every corruption the reader must
// reject with a specific message, truncations and random header damage, and the shared model.
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "tensor/safetensors.h"
#include "test_util.h"

using namespace st;
namespace sf = st::safetensors;
using Catch::Contains;

namespace {

using Bytes = std::vector<uint8_t>;

// A file from a raw header text and data section, written byte by byte.
Bytes make_file(const std::string& header, const Bytes& data = {}) {
  Bytes b;
  uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) b.push_back(uint8_t(n >> (8 * i)));
  b.insert(b.end(), header.begin(), header.end());
  b.insert(b.end(), data.begin(), data.end());
  return b;
}

// A file whose 8-byte length field says `claimed` whatever the header really is.
Bytes with_length(uint64_t claimed, const std::string& rest) {
  Bytes b;
  for (int i = 0; i < 8; ++i) b.push_back(uint8_t(claimed >> (8 * i)));
  b.insert(b.end(), rest.begin(), rest.end());
  return b;
}

// One header entry: "name":{"dtype":..,"shape":..,"data_offsets":..} (shape, offsets verbatim).
std::string entry(const std::string& name, const std::string& dtype, const std::string& shape,
                  const std::string& offsets) {
  return "\"" + name + "\":{\"dtype\":\"" + dtype + "\",\"shape\":" + shape +
         ",\"data_offsets\":" + offsets + "}";
}

// A header object from its entries: "{e1,e2,...}".
std::string obj(std::initializer_list<std::string> entries) {
  std::string s = "{";
  for (const auto& e : entries) {
    if (s.size() > 1) s += ",";
    s += e;
  }
  s += "}";
  return s;
}

const std::string kSource = "corrupt.safetensors";

sf::File parse_bytes(const Bytes& b, const std::string& source = kSource) {
  // An exact-size heap copy, so a read past the end is a real out-of-bounds read under ASan.
  std::unique_ptr<uint8_t[]> exact(new uint8_t[std::max<size_t>(b.size(), 1)]);
  if (!b.empty()) std::memcpy(exact.get(), b.data(), b.size());
  return sf::parse(b.empty() ? nullptr : exact.get(), b.size(), source);
}

void require_error(const Bytes& b, const std::string& what) {
  INFO("expecting an error containing: " << what);
  REQUIRE_THROWS_AS(parse_bytes(b), st::Error);
  REQUIRE_THROWS_WITH(parse_bytes(b), Contains(what) && Contains(kSource));
}

Bytes tensor_bytes(const Tensor& t) {
  Tensor c = t.to(Device::cpu()).contiguous();
  const uint8_t* p = static_cast<const uint8_t*>(c.raw_data());
  return Bytes(p, p + size_t(c.numel()) * dtype_size(c.dtype()));
}

Tensor f16_from_bits(const std::vector<uint16_t>& bits, const Shape& shape) {
  Tensor t = Tensor::empty(shape, DType::F16);
  REQUIRE(size_t(t.numel()) == bits.size());
  if (!bits.empty()) std::memcpy(t.raw_data(), bits.data(), bits.size() * 2);
  return t;
}

// Tensors of every dtype and the awkward shapes: 0-d, a zero dim, a transposed view.
std::vector<std::pair<std::string, Tensor>> sample_tensors() {
  Tensor base = Tensor::from_vector<float>({1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}, {3, 4});
  Tensor transposed = base.transpose(0, 1);  // [4, 3], not contiguous
  REQUIRE_FALSE(transposed.is_contiguous());
  return {
      {"f32", Tensor::from_vector<float>({1.5f, -2.25f, 3e-38f, 1e30f, 0.f, -0.f}, {2, 3})},
      {"f64", Tensor::from_vector<double>({3.141592653589793, -1e-300, 1e300, 0.1}, {4})},
      {"f16", f16_from_bits({0x3c00, 0xc000, 0x0001, 0x7bff, 0x8000, 0x7e00}, {3, 2})},
      {"u8", Tensor::from_vector<uint8_t>({0, 1, 127, 128, 255}, {5})},
      {"i32", Tensor::from_vector<int32_t>({INT32_MIN, -1, 0, INT32_MAX}, {2, 1, 2})},
      {"i64", Tensor::from_vector<int64_t>({INT64_MIN, -1, INT64_MAX}, {3})},
      {"scalar_f32", Tensor::from_vector<float>({42.5f}, {})},
      {"scalar_i64", Tensor::from_vector<int64_t>({-7}, {})},
      {"empty_f32", Tensor::empty({0, 3}, DType::F32)},
      {"empty_i32", Tensor::empty({2, 0}, DType::I32)},
      {"transposed", transposed},
      {"z_last_but_named_first_alphabetically_a", Tensor::from_vector<float>({9.f}, {1})},
  };
}

void require_same(const std::vector<std::pair<std::string, Tensor>>& want, const sf::File& got) {
  REQUIRE(got.tensors.size() == want.size());
  for (size_t i = 0; i < want.size(); ++i) {
    INFO("tensor " << want[i].first);
    CHECK(got.tensors[i].first == want[i].first);  // order preserved
    const Tensor& t = got.tensors[i].second;
    CHECK(t.device().is_cpu());
    // (Tensor::is_contiguous() reports false for some shapes with a 0 dim, e.g. [2, 0].)
    CHECK((t.is_contiguous() || t.numel() == 0));
    CHECK(t.dtype() == want[i].second.dtype());
    CHECK(t.shape() == want[i].second.shape());
    CHECK(t.name() == want[i].first);
    CHECK(tensor_bytes(t) == tensor_bytes(want[i].second));
  }
}

}  // namespace

TEST_CASE("safetensors: round trip of every dtype and layout", "[safetensors][portable]") {
  auto tensors = sample_tensors();
  std::map<std::string, std::string> meta = {{"format", "pt"}, {"note", "h\xc3\xa9llo \"q\""}};
  sf::File f;
  {
    Bytes bytes = sf::serialize(tensors, meta);
    uint64_t n = 0;
    for (int i = 7; i >= 0; --i) n = (n << 8) | bytes[size_t(i)];
    CHECK((8 + n) % 8 == 0);  // header padded so the data starts 8-byte aligned
    CHECK(bytes[8] == '{');
    f = sf::parse(bytes.data(), bytes.size(), "roundtrip");
  }  // the buffer is gone: the tensors must own their memory
  require_same(tensors, f);
  CHECK(f.metadata == meta);
  CHECK(f.source == "roundtrip");
  CHECK(f.names().front() == "f32");
  CHECK(f.get("transposed").to_vector<float>() ==
        std::vector<float>{1, 5, 9, 2, 6, 10, 3, 7, 11, 4, 8, 12});
  CHECK(f.get("i64").to_vector<int64_t>() == std::vector<int64_t>{INT64_MIN, -1, INT64_MAX});
  CHECK(f.get("scalar_f32").item() == 42.5);
  CHECK(f.get("empty_f32").numel() == 0);

  // Through a real file, without metadata, and with nothing at all.
  std::string dir_name = "st_safetensors_test_";
  dir_name += std::to_string(::getpid());
  auto dir = std::filesystem::temp_directory_path() / dir_name;
  std::filesystem::create_directories(dir);
  sf::save(dir / "a.safetensors", tensors);
  sf::File g = sf::load(dir / "a.safetensors");
  require_same(tensors, g);
  CHECK(g.metadata.empty());
  CHECK(g.source == (dir / "a.safetensors").string());
  sf::save(dir / "empty.safetensors", {});
  CHECK(sf::load(dir / "empty.safetensors").tensors.empty());
  std::filesystem::remove_all(dir);
}

TEST_CASE("safetensors: a tensor requiring grad is written as its values", "[safetensors][portable]") {
  Tensor w = Tensor::from_vector<double>({1, 2, 3}, {3});
  w.set_requires_grad(true);
  Bytes b = sf::serialize({{"w", w}});
  auto f = sf::parse(b.data(), b.size());
  CHECK(f.get("w").to_vector<double>() == std::vector<double>{1, 2, 3});
  CHECK_FALSE(f.get("w").requires_grad());
}

TEST_CASE("safetensors: F16 bit patterns round trip exactly", "[safetensors][portable]") {
  std::vector<uint16_t> all(65536);
  for (size_t i = 0; i < all.size(); ++i) all[i] = uint16_t(i);  // incl. NaNs, subnormals, -0
  Tensor t = f16_from_bits(all, {256, 256});
  Bytes b = sf::serialize({{"h", t}});
  auto f = sf::parse(b.data(), b.size());
  const Tensor& h = f.get("h", {256, 256}, DType::F16);
  REQUIRE(std::memcmp(h.raw_data(), all.data(), all.size() * 2) == 0);
}

TEST_CASE("safetensors: a hand-built file parses (format, not just our writer)", "[safetensors][portable]") {
  // Header lists "b" first but its data comes second; "a" is at offset 0. Padded with spaces.
  std::string header = obj({"\"__metadata__\":{\"format\":\"pt\"}",
                            entry("b", "I32", "[2]", "[8,16]"), entry("a", "F32", "[2]", "[0,8]"),
                            entry("c", "F16", "[1,1]", "[16,18]"), entry("d", "U8", "[]", "[18,19]")});
  header.append((8 - (8 + header.size()) % 8) % 8, ' ');
  Bytes data = {
      0x00, 0x00, 0x80, 0x3f,  // a[0] = 1.0f
      0x00, 0x00, 0x00, 0xc0,  // a[1] = -2.0f
      0x07, 0x00, 0x00, 0x00,  // b[0] = 7
      0xff, 0xff, 0xff, 0xff,  // b[1] = -1
      0x00, 0x3c,              // c = 1.0 (f16)
      0xc8,                    // d = 200
  };
  sf::File f = parse_bytes(make_file(header, data), "hand.safetensors");
  REQUIRE(f.names() == std::vector<std::string>{"a", "b", "c", "d"});
  CHECK(f.metadata == std::map<std::string, std::string>{{"format", "pt"}});
  CHECK(f.get("a", {2}, DType::F32).to_vector<float>() == std::vector<float>{1.f, -2.f});
  CHECK(f.get("b", {2}, DType::I32).to_vector<int32_t>() == std::vector<int32_t>{7, -1});
  CHECK(f.get("c", {1, 1}, DType::F16).to_vector<float>() == std::vector<float>{1.f});
  CHECK(f.get("d", {}, DType::U8).item() == 200);
  CHECK(f.contains("a"));
  CHECK_FALSE(f.contains("__metadata__"));

  // Escaped names decode; unknown extra keys in an entry are ignored.
  std::string h2 = "{\"x\\u00e9\\n\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1],"
                   "\"extra\":[1,{\"k\":null}]}}";
  CHECK(parse_bytes(make_file(h2, {5})).contains("x\xc3\xa9\n"));
}

TEST_CASE("safetensors: gaps and empty tensors are accepted, order by offset", "[safetensors][portable]") {
  // A gap between a and b and unused bytes at the end: allowed (see safetensors.cpp).
  std::string h = obj({entry("b", "U8", "[2]", "[6,8]"), entry("e2", "F32", "[0]", "[4,4]"),
                       entry("e1", "F32", "[0]", "[4,4]"), entry("a", "U8", "[2]", "[0,2]"),
                       entry("inside", "I64", "[0,5]", "[1,1]")});
  sf::File f = parse_bytes(make_file(h, {1, 2, 0, 0, 0, 0, 3, 4, 9, 9}));
  // Ties between empty tensors keep header order.
  CHECK(f.names() == std::vector<std::string>{"a", "inside", "e2", "e1", "b"});
  CHECK(f.get("b").to_vector<uint8_t>() == std::vector<uint8_t>{3, 4});
  CHECK(f.get("inside").shape() == Shape{0, 5});
}

TEST_CASE("safetensors: corrupt files are rejected with a specific message", "[safetensors][portable]") {
  const std::string ok_a = entry("a", "F32", "[2]", "[0,8]");
  const Bytes eight(8, 0);

  SECTION("too short") {
    require_error({}, "shorter than the 8-byte header length");
    require_error({1, 2, 3}, "shorter than the 8-byte header length");
    require_error(Bytes(7, 0), "is 7 bytes");
  }
  SECTION("header length") {
    require_error(with_length(1000, "{}"), "larger than the file");
    require_error(with_length(3, "{}"), "larger than the file");
    require_error(with_length(200'000'000, "{}"), "exceeds the limit");
    require_error(with_length(~uint64_t(0), "{}"), "exceeds the limit");
    require_error(with_length(0, ""), "not valid JSON");
  }
  SECTION("not JSON, not an object") {
    require_error(make_file("{\"a\":"), "not valid JSON");
    require_error(make_file("{} x"), "not valid JSON");
    require_error(make_file(std::string("{}\0", 3)), "not valid JSON: NUL byte at header offset 2");
    require_error(make_file(std::string("{}\0garbage", 10)), "NUL byte");
    require_error(make_file("{\"a\xff\":1}"), "not valid JSON");  // bad UTF-8
    require_error(make_file("[1,2]"), "header is not a JSON object");
    require_error(make_file("\"str\""), "header is not a JSON object");
    std::string deep = "{\"a\":";
    deep.append(100, '[').append(100, ']') += "}";
    require_error(make_file(deep), "nests deeper than 64 levels");
  }
  SECTION("entries") {
    require_error(make_file("{\"a\":5}"), "entry for tensor 'a' is not a JSON object");
    require_error(make_file("{\"a\":{\"shape\":[1],\"data_offsets\":[0,4]}}", eight),
                  "tensor 'a' has no 'dtype'");
    require_error(make_file("{\"a\":{\"dtype\":\"F32\",\"data_offsets\":[0,4]}}", eight),
                  "tensor 'a' has no 'shape'");
    require_error(make_file("{\"a\":{\"dtype\":\"F32\",\"shape\":[1]}}", eight),
                  "tensor 'a' has no 'data_offsets'");
    require_error(make_file("{\"a\":{\"dtype\":7,\"shape\":[1],\"data_offsets\":[0,4]}}", eight),
                  "tensor 'a': dtype is not a string");
  }
  SECTION("unsupported dtypes name the tensor and the dtype") {
    for (const char* dt : {"BF16", "I8", "I16", "U16", "U32", "U64", "BOOL", "F8_E4M3", "f32", "?"})
      require_error(make_file(obj({entry("x", dt, "[1]", "[0,1]")}), eight),
                    std::string("unsupported dtype ") + dt + " for tensor 'x'");
  }
  SECTION("shapes") {
    require_error(make_file(obj({entry("a", "F32", "2", "[0,8]")}), eight),
                  "tensor 'a': shape is not an array");
    require_error(make_file(obj({entry("a", "F32", "[2,-1]", "[0,8]")}), eight),
                  "tensor 'a': shape dim 1 is negative");
    require_error(make_file(obj({entry("a", "F32", "[2.5]", "[0,8]")}), eight),
                  "tensor 'a': shape dim 0 is not an integer");
    require_error(make_file(obj({entry("a", "F32", "[2.0]", "[0,8]")}), eight),
                  "shape dim 0 is not an integer");
    require_error(make_file(obj({entry("a", "F32", "[\"2\"]", "[0,8]")}), eight),
                  "shape dim 0 is not an integer");
    require_error(make_file(obj({entry("a", "F32", "[18446744073709551615]", "[0,8]")}), eight),
                  "shape dim 0 is too large");
    require_error(make_file(obj({entry("a", "F32", "[1e400]", "[0,8]")}), eight),
                  "not valid JSON: [json.exception.out_of_range.406] number overflow");
    require_error(make_file(obj({entry("a", "F32", "[4294967296,4294967296]", "[0,8]")}), eight),
                  "tensor 'a': shape product overflows");
    // A zero dim does not excuse an overflowing shape (the strides would overflow).
    require_error(make_file(obj({entry("a", "F32", "[0,4294967296,4294967296]", "[0,0]")})),
                  "shape product overflows");
    require_error(make_file(obj({entry("a", "F64", "[2305843009213693952]", "[0,8]")}), eight),
                  "overflows the byte count");
  }
  SECTION("data offsets") {
    require_error(make_file(obj({entry("a", "F32", "[2]", "8")}), eight),
                  "tensor 'a': data_offsets must be [begin, end]");
    require_error(make_file(obj({entry("a", "F32", "[2]", "[0,4,8]")}), eight),
                  "data_offsets must be [begin, end], got an array of 3");
    require_error(make_file(obj({entry("a", "F32", "[2]", "[-1,7]")}), eight),
                  "data_offsets begin is negative");
    require_error(make_file(obj({entry("a", "F32", "[2]", "[0,8.5]")}), eight),
                  "data_offsets end is not an integer");
    require_error(make_file(obj({entry("a", "F32", "[0]", "[8,4]")}), eight),
                  "data_offsets begin 8 is after end 4");
    require_error(make_file(obj({entry("a", "F32", "[2]", "[4,12]")}), eight),
                  "data_offsets end 12 is beyond the data section (8 bytes)");
    require_error(make_file(obj({entry("a", "F32", "[2]", "[0,18446744073709551615]")}), eight),
                  "data_offsets end is too large");
    require_error(make_file(obj({entry("a", "F32", "[1]", "[0,8]")}), eight),
                  "hold 8 bytes but shape [1] of F32 needs 4");
    require_error(make_file(obj({entry("a", "F16", "[4,0]", "[0,8]")}), eight),
                  "needs 0");
  }
  SECTION("overlaps") {
    require_error(make_file(obj({entry("a", "F32", "[2]", "[0,8]"), entry("b", "F32", "[1]", "[4,8]")}),
                            eight),
                  "tensors 'a' [0, 8) and 'b' [4, 8) overlap");
    require_error(make_file(obj({entry("a", "U8", "[8]", "[0,8]"), entry("b", "U8", "[1]", "[2,3]"),
                                 entry("c", "U8", "[1]", "[5,6]")}),
                            eight),
                  "overlap");
    require_error(make_file(obj({ok_a, entry("b", "F32", "[2]", "[0,8]")}), eight),
                  "overlap");
  }
  SECTION("duplicates (which a JSON parser would silently merge)") {
    require_error(make_file(obj({ok_a, ok_a}), eight), "duplicate tensor name 'a'");
    require_error(make_file(obj({ok_a, "\"\\u0061\":{}"}), eight), "duplicate tensor name 'a'");
    require_error(
        make_file("{\"a\":{\"dtype\":\"F32\",\"dtype\":\"F64\",\"shape\":[2],\"data_offsets\":[0,8]}}", eight),
        "duplicate key 'dtype'");
    require_error(make_file("{\"__metadata__\":{},\"__metadata__\":{}}"),
                  "duplicate tensor name '__metadata__'");
  }
  SECTION("metadata") {
    require_error(make_file("{\"__metadata__\":{\"k\":1}}"),
                  "__metadata__ value for key 'k' is not a string");
    require_error(make_file("{\"__metadata__\":{\"k\":\"v\",\"n\":null}}"),
                  "__metadata__ value for key 'n' is not a string");
    require_error(make_file("{\"__metadata__\":[\"k\"]}"), "__metadata__ is not a JSON object");
  }
  SECTION("long hostile names are shortened in messages") {
    std::string name(100000, 'n');
    auto b = make_file("{\"" + name + "\":3}");
    REQUIRE_THROWS_WITH(parse_bytes(b), Contains("(100000 bytes)"));
    try {
      parse_bytes(b);
    } catch (const st::Error& e) {
      CHECK(std::strlen(e.what()) < 400);
    }
  }
}

TEST_CASE("safetensors: every truncation of a valid file throws", "[safetensors][portable]") {
  auto tensors = sample_tensors();
  Bytes full = sf::serialize(tensors, {{"format", "pt"}});
  REQUIRE_NOTHROW(parse_bytes(full));
  // The last tensor is non-empty and ends the file, so every proper prefix is invalid.
  for (size_t cut = 0; cut < full.size(); ++cut) {
    INFO("cut at " << cut << " of " << full.size());
    Bytes part(full.begin(), full.begin() + ptrdiff_t(cut));
    REQUIRE_THROWS_AS(parse_bytes(part), st::Error);
  }
}

TEST_CASE("safetensors: random header damage throws st::Error or parses, never crashes",
          "[safetensors][portable]") {
  auto tensors = sample_tensors();
  const Bytes full = sf::serialize(tensors, {{"format", "pt"}});
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | full[size_t(i)];
  const char interesting[] = "{}[]\",:-0123456789eE.\\ natu\x80\xff";
  std::mt19937_64 rng(20240607);
  int threw = 0, parsed = 0;
  for (int iter = 0; iter < 3000; ++iter) {
    Bytes b = full;
    int flips = 1 + int(rng() % 3);
    for (int k = 0; k < flips; ++k) {
      // Mostly the JSON text, sometimes the length field.
      size_t pos = rng() % 16 == 0 ? rng() % 8 : 8 + rng() % header_len;
      b[pos] = rng() % 2 ? uint8_t(rng()) : uint8_t(interesting[rng() % (sizeof(interesting) - 1)]);
    }
    try {
      sf::File f = parse_bytes(b);
      for (const auto& [n, t] : f.tensors) REQUIRE((t.is_contiguous() || t.numel() == 0));
      ++parsed;
    } catch (const st::Error& e) {
      REQUIRE_THAT(e.what(), Contains(kSource));
      ++threw;
    }
    // Any other exception type escapes and fails the test.
  }
  INFO("threw " << threw << ", parsed " << parsed);
  CHECK(threw > 0);
  CHECK(threw + parsed == 3000);
}

TEST_CASE("safetensors: get reports missing names and mismatches", "[safetensors][portable]") {
  Bytes b = sf::serialize({{"conv.weight", Tensor::zeros({2, 3})}, {"conv.bias", Tensor::zeros({2})}});
  sf::File f = sf::parse(b.data(), b.size(), "model.safetensors");
  REQUIRE_THROWS_AS(f.get("nope"), st::Error);
  REQUIRE_THROWS_WITH(f.get("nope"), Contains("safetensors model.safetensors: no tensor named 'nope'") &&
                                         Contains("'conv.weight'"));
  REQUIRE_THROWS_WITH(f.get("nope", {2}, DType::F32), Contains("no tensor named 'nope'"));
  REQUIRE_THROWS_WITH(f.get("conv.weight", {3, 2}, DType::F16),
                      Contains("safetensors model.safetensors: tensor 'conv.weight' has shape "
                               "[2, 3] dtype f32, expected [3, 2] f16"));
  REQUIRE_THROWS_WITH(f.get("conv.bias", {2}, DType::F64),
                      Contains("has shape [2] dtype f32, expected [2] f64"));
  CHECK(f.get("conv.bias", {2}, DType::F32).numel() == 2);
}

TEST_CASE("safetensors: the writer rejects bad names", "[safetensors][portable]") {
  Tensor t = Tensor::zeros({1});
  REQUIRE_THROWS_WITH(sf::serialize({{"", t}}), Contains("empty tensor name"));
  REQUIRE_THROWS_WITH(sf::serialize({{"__metadata__", t}}), Contains("'__metadata__' is reserved"));
  REQUIRE_THROWS_WITH(sf::serialize({{"a", t}, {"b", t}, {"a", t}}),
                      Contains("duplicate tensor name 'a'"));
  REQUIRE_THROWS_WITH(sf::serialize({{"u", Tensor()}}), Contains("tensor 'u' is undefined"));
  REQUIRE_THROWS_AS(sf::serialize({{"bad\xff", t}}), st::Error);
  REQUIRE_THROWS_AS(sf::serialize({{"a", t}}, {{"k", "bad\xff"}}), st::Error);
  REQUIRE_NOTHROW(sf::serialize({{"a", t}, {"b", t}}));  // the same tensor twice is fine
}

TEST_CASE("safetensors: load reports files it cannot read", "[safetensors][portable]") {
  REQUIRE_THROWS_WITH(sf::load("/nonexistent/dir/x.safetensors"),
                      Contains("cannot open /nonexistent/dir/x.safetensors") &&
                          Contains("No such file"));
  REQUIRE_THROWS_WITH(sf::load(std::filesystem::temp_directory_path()), Contains("directory"));
  REQUIRE_THROWS_WITH(sf::save("/nonexistent/dir/x.safetensors", {}),
                      Contains("cannot open /nonexistent/dir/x.safetensors for writing"));
}

TEST_CASE("safetensors: the shared pretrained student loads", "[safetensors][portable]") {
  auto path = st::test::shared_dir() / "models" / "student_lvs9_pretrained.safetensors";
  if (!std::filesystem::exists(path)) ST_SKIP("no " + path.string());
  sf::File f = sf::load(path);
  REQUIRE(f.tensors.size() == 68);
  int64_t total = 0;
  for (const auto& [name, t] : f.tensors) {
    INFO(name);
    CHECK(t.dtype() == DType::F32);
    total += t.numel();
  }
  CHECK(total == 483873);
}
