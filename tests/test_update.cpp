// Compact updates (nn/update.h): the mirror equals what the edge holds after applying, bit for
// bit; the int8 delta's error is within the bound its rounding allows (derived below); what is not
// sent stays in the next delta (error feedback), also under top-k; zstd changes bytes, never
// values; every malformed blob is refused, decompression bombs before anything is allocated, and
// a refused blob leaves the student as it was.
#include <zstd.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <random>

#include "edge/simulate.h"
#include "nn/blob.h"
#include "nn/update.h"
#include "nn/update_fuzz_layout.h"
#include "synthetic_clip.h"
#include "tensor/autograd.h"
#include "test_util.h"

using namespace st;
using namespace st::nn;
using Catch::Contains;

namespace {

std::vector<float> values(const Tensor& t) { return t.to_vector<float>(); }

// A student as distillation leaves it: `base` with every trained tensor moved by noise of
// `rel` times the tensor's largest magnitude (plus a few large outliers: what top-k is for).
void perturb(Student& s, Distillation mode, double rel, uint32_t seed) {
  std::mt19937 rng(seed);
  NoGradGuard ng;
  for (Tensor& p : s.trained_parameters(mode)) {
    std::vector<float> v = values(p);
    float big = 1e-3f;
    for (float f : v) big = std::max(big, std::fabs(f));
    std::normal_distribution<float> noise(0.f, float(rel) * big);
    for (auto& f : v) f += noise(rng);
    v[rng() % v.size()] += 20 * float(rel) * big;
    p.copy_(Tensor::from_vector(v, p.shape()));
  }
}

std::unique_ptr<Student> copy_of(const Student& s) {
  auto c = std::make_unique<Student>(0);
  c->set_partial_split(s.partial_split());
  c->load_state(s.named_parameters(), "copy");
  return c;
}

// The largest |a - b| over the trained tensors, and the entry-wise check of a bound.
double max_diff(const Student& a, const Student& b, Distillation mode) {
  const auto ta = a.trained_parameters(mode), tb = b.trained_parameters(mode);
  double m = 0;
  for (size_t t = 0; t < ta.size(); ++t) {
    const auto va = values(ta[t]), vb = values(tb[t]);
    for (size_t i = 0; i < va.size(); ++i) m = std::max(m, std::fabs(double(va[i]) - vb[i]));
  }
  return m;
}

// The scales of an int8 delta as the encoder chooses them: per output channel (per tensor for
// 1-D), the largest |target - mirror| of the entries sent, over 127.
std::vector<std::vector<double>> scales_of(const Student& target, const Student& mirror,
                                           Distillation mode) {
  std::vector<std::vector<double>> out;
  const auto tt = target.trained_parameters(mode), tm = mirror.trained_parameters(mode);
  for (size_t t = 0; t < tt.size(); ++t) {
    const auto w = values(tt[t]), m = values(tm[t]);
    const int64_t S = tt[t].dim() >= 2 ? tt[t].size(0) : 1;
    const size_t per = w.size() / size_t(S);
    std::vector<double> sc(size_t(S), 0);
    for (size_t i = 0; i < w.size(); ++i)
      sc[i / per] = std::max(sc[i / per], double(std::fabs(w[i] - m[i])));
    for (auto& x : sc) x /= 127;
    out.push_back(sc);
  }
  return out;
}

}  // namespace

TEST_CASE("update: codec names parse back, and bad ones are refused naming the text",
          "[update][portable]") {
  for (const char* n : {"fp32", "fp16", "int8", "int8:top10", "int8:top1", "int8:top0.5",
                        "fp32+zstd", "fp16+zstd", "int8+zstd", "int8:top10+zstd"}) {
    INFO(n);
    REQUIRE(parse_update_codec(n).name() == n);
  }
  REQUIRE(parse_update_codec("int8:top10").keep == 0.1);  // 10 / 100, correctly rounded
  for (const char* bad : {"int4", "int8:top0", "int8:top101", "int8:topx", "fp32+gzip", "+zstd",
                          "int8:top"})
    REQUIRE_THROWS_WITH(parse_update_codec(bad), Contains(std::string("'") + bad + "'"));
}

TEST_CASE("update: absolute values, with and without zstd, land exactly (fp16: to the nearest "
          "half)", "[update][portable]") {
  for (const char* codec : {"fp32", "fp32+zstd", "fp16", "fp16+zstd"}) {
    INFO(codec);
    Student base(1), trained(1), edge(1);
    perturb(trained, Distillation::Partial, 1e-2, 3);
    UpdateEncoder enc(base, Distillation::Partial, parse_update_codec(codec));
    const auto blob = enc.encode(trained);
    apply_update(edge, Distillation::Partial, blob.data(), blob.size());
    REQUIRE(weights_hash(edge) == enc.mirror_hash());
    const bool half = std::string(codec).rfind("fp16", 0) == 0;
    const auto te = edge.trained_parameters(Distillation::Partial);
    const auto tt = trained.trained_parameters(Distillation::Partial);
    for (size_t t = 0; t < tt.size(); ++t) {
      const auto a = values(te[t]), b = values(tt[t]);
      for (size_t i = 0; i < a.size(); ++i) {
        // fp16 rounds to nearest: within 2^-11 relative for normal halves, half the subnormal
        // spacing 2^-24 below 2^-14
        if (half)
          REQUIRE(std::fabs(double(a[i]) - b[i]) <=
                  std::max(std::ldexp(std::fabs(double(b[i])), -11), std::ldexp(1.0, -25)));
        else REQUIRE(a[i] == b[i]);
      }
    }
    // the untrained front is untouched
    const std::string front = edge.named_parameters().front().first;  // in_conv1's first tensor
    REQUIRE(values(edge.parameter(front)) == values(base.parameter(front)));
  }
}

TEST_CASE("update: int8 delta: the edge equals the mirror bit for bit, and every entry is "
          "within its derived bound", "[update][portable]") {
  for (Distillation mode : {Distillation::Partial, Distillation::Full}) {
    INFO(distillation_name(mode));
    Student base(1), trained(1), edge(1);
    perturb(trained, mode, 1e-2, 5);
    UpdateEncoder enc(base, mode, parse_update_codec("int8"));
    const auto sc = scales_of(trained, base, mode);
    const auto blob = enc.encode(trained);
    // body: per tensor S scales and n int8s
    size_t body = 0;
    for (const Tensor& p : trained.trained_parameters(mode))
      body += 4 * size_t(p.dim() >= 2 ? p.size(0) : 1) + size_t(p.numel());
    REQUIRE(blob.size() == 32 + body);
    apply_update(edge, mode, blob.data(), blob.size());
    REQUIRE(weights_hash(edge) == enc.mirror_hash());
    REQUIRE(max_diff(edge, enc.mirror(), mode) == 0);
    // The bound, for an entry with target w, mirror m, scale s (float), d = fl(w - m):
    //   q = round(fl(d / s)), |fl(d / s) - d / s| <= 2^-24 * 127  =>  |q s - d| <= s (1/2 + 2^-17)
    //   |d - (w - m)| <= 2^-24 |w - m|;  w' = fl(m + q s) (fmaf: one rounding) within 2^-24 |w'|
    //   =>  |w' - w| <= s (1/2 + 2^-17) + 2^-24 (|w - m| + |w'|).
    const auto te = edge.trained_parameters(mode), tt = trained.trained_parameters(mode),
               tb = base.trained_parameters(mode);
    bool tight = false;  // some entry's error is above a quarter of its bound (else it is loose)
    for (size_t t = 0; t < tt.size(); ++t) {
      const auto e = values(te[t]), w = values(tt[t]), m = values(tb[t]);
      const size_t per = w.size() / sc[t].size();
      for (size_t i = 0; i < w.size(); ++i) {
        const double s = sc[t][i / per] * (1 + std::ldexp(1.0, -23));  // s itself is fl(max/127)
        const double bound =
            s * (0.5 + std::ldexp(1.0, -17)) +
            std::ldexp(std::fabs(double(w[i]) - m[i]) + std::fabs(double(e[i])), -24);
        const double err = std::fabs(double(e[i]) - w[i]);
        REQUIRE(err <= bound);
        tight |= err > bound / 4;
      }
    }
    REQUIRE(tight);
  }
}

TEST_CASE("update: error feedback: what one update leaves out, the next one sends", "[update][portable]") {
  SECTION("dense int8: the error shrinks by ~254x per update of the same target") {
    Student base(1), trained(1);
    perturb(trained, Distillation::Partial, 1e-2, 7);
    UpdateEncoder enc(base, Distillation::Partial, parse_update_codec("int8"));
    double err = max_diff(trained, base, Distillation::Partial);
    for (int round = 0; round < 3; ++round) {
      enc.encode(trained);
      const double next = max_diff(trained, enc.mirror(), Distillation::Partial);
      INFO("round " << round << ": " << err << " -> " << next);
      // per entry at most s/2 (+ rounding) with s <= err/127; a float's own rounding is the floor
      REQUIRE(next <= err / 254 * (1 + 1e-4) + 1e-6);
      err = next;
    }
  }
  SECTION("top 10%: each update changes at most 10% of each tensor, the largest deltas, and the "
          "residual keeps shrinking") {
    Student base(1), trained(1), edge(1);
    perturb(trained, Distillation::Partial, 1e-2, 9);
    UpdateEncoder enc(base, Distillation::Partial, parse_update_codec("int8:top10+zstd"));
    auto residual = [&] {
      double s = 0;
      const auto a = trained.trained_parameters(Distillation::Partial);
      const auto b = enc.mirror().trained_parameters(Distillation::Partial);
      for (size_t t = 0; t < a.size(); ++t) {
        const auto va = values(a[t]), vb = values(b[t]);
        for (size_t i = 0; i < va.size(); ++i) s += std::fabs(double(va[i]) - vb[i]);
      }
      return s;
    };
    double before = residual();
    for (int round = 0; round < 6; ++round) {
      const auto prev = copy_of(edge);
      const auto blob = enc.encode(trained);
      apply_update(edge, Distillation::Partial, blob.data(), blob.size());
      REQUIRE(weights_hash(edge) == enc.mirror_hash());
      const auto now = edge.trained_parameters(Distillation::Partial);
      const auto was = prev->trained_parameters(Distillation::Partial);
      const auto want = trained.trained_parameters(Distillation::Partial);
      for (size_t t = 0; t < now.size(); ++t) {
        const auto a = values(now[t]), b = values(was[t]), w = values(want[t]);
        const size_t k = size_t(std::ceil(0.1 * double(a.size())));
        size_t changed = 0;
        double smallest_sent = INFINITY, largest_kept = 0;  // |delta| before this update
        for (size_t i = 0; i < a.size(); ++i) {
          const double d = std::fabs(double(w[i]) - b[i]);
          if (a[i] != b[i]) {
            ++changed;
            smallest_sent = std::min(smallest_sent, d);
          } else {
            largest_kept = std::max(largest_kept, d);
          }
        }
        REQUIRE(changed <= k);
        // An entry left alone had a delta no larger than any entry sent, unless its int8 was 0
        // (its delta under half a scale), which cannot change it either.
        if (changed == k) REQUIRE(largest_kept <= smallest_sent + 1e-12);
      }
      const double after = residual();
      INFO("round " << round << ": residual " << before << " -> " << after);
      REQUIRE(after < before);
      before = after;
    }
  }
}

TEST_CASE("update: zstd and top-k make the blob smaller, and every blob decodes to the mirror",
          "[update][portable]") {
  Student base(1), trained(1);
  perturb(trained, Distillation::Partial, 1e-2, 11);
  size_t plain = blob_size(base, Distillation::Partial, BlobEncoding::F32), last = plain;
  for (const char* codec : {"int8", "int8+zstd", "int8:top10+zstd", "int8:top1+zstd"}) {
    INFO(codec);
    Student edge(1);
    UpdateEncoder enc(base, Distillation::Partial, parse_update_codec(codec));
    const auto blob = enc.encode(trained);
    REQUIRE(blob.size() < last);
    last = blob.size();
    apply_update(edge, Distillation::Partial, blob.data(), blob.size());
    REQUIRE(weights_hash(edge) == enc.mirror_hash());
  }
  REQUIRE(last * 50 < plain);  // 1% of the entries, compressed: well under 2% of fp32
}

namespace {
// A blob with its header fields rewritten.
std::vector<uint8_t> with(std::vector<uint8_t> b, size_t at, std::vector<uint8_t> bytes) {
  std::memcpy(b.data() + at, bytes.data(), bytes.size());
  return b;
}
std::vector<uint8_t> le32(uint32_t v) {
  return {uint8_t(v), uint8_t(v >> 8), uint8_t(v >> 16), uint8_t(v >> 24)};
}
// Header + a zstd frame of `body` (content size stated or not).
std::vector<uint8_t> zstd_blob(const std::vector<uint8_t>& header, const std::vector<uint8_t>& body,
                               bool state_size) {
  std::vector<uint8_t> out = header;
  ZSTD_CCtx* c = ZSTD_createCCtx();
  ZSTD_CCtx_setParameter(c, ZSTD_c_contentSizeFlag, state_size ? 1 : 0);
  std::vector<uint8_t> z(ZSTD_compressBound(body.size()));
  ZSTD_inBuffer in{body.data(), body.size(), 0};
  ZSTD_outBuffer o{z.data(), z.size(), 0};
  if (state_size) ZSTD_CCtx_setPledgedSrcSize(c, body.size());
  const size_t rc = ZSTD_compressStream2(c, &o, &in, ZSTD_e_end);
  ZSTD_freeCCtx(c);
  REQUIRE(rc == 0);
  out.insert(out.end(), z.begin(), z.begin() + ptrdiff_t(o.pos));
  return out;
}
}  // namespace

TEST_CASE("update: malformed blobs and decompression bombs are refused, naming the problem, "
          "and change nothing", "[update][portable]") {
  Student base(1), trained(1), edge(1);
  perturb(trained, Distillation::Partial, 1e-2, 13);
  UpdateEncoder dense(base, Distillation::Partial, parse_update_codec("int8"));
  UpdateEncoder sparse(base, Distillation::Partial, parse_update_codec("int8:top10"));
  const auto d = dense.encode(trained), s = sparse.encode(trained);
  const uint64_t h0 = weights_hash(edge);
  const std::vector<uint8_t> header(d.begin(), d.begin() + 32), body(d.begin() + 32, d.end());
  const size_t cap = max_update_body(edge, Distillation::Partial);
  REQUIRE(cap >= body.size());
  auto refused = [&](const std::vector<uint8_t>& b, const std::string& why) {
    INFO(why);
    REQUIRE_THROWS_WITH(apply_update(edge, Distillation::Partial, b.data(), b.size()),
                        Contains("update blob") && Contains(why));
    REQUIRE(weights_hash(edge) == h0);
  };
  refused({d.begin(), d.begin() + 30}, "shorter than its 32-byte header");
  refused(with(d, 0, {'X'}), "bad magic");
  refused(with(d, 4, {2, 0}), "version 2");
  refused(with(d, 6, {3}), "unknown value type 3");
  refused(with(d, 7, {4}), "unknown flag bits 4");
  refused(with(with(d, 6, {0}), 7, {1}), "only int8 deltas can be sparse");
  refused(with(d, 8, {0x55}), "layout hash mismatch");
  refused(with(d, 16, le32(25)), "25 tensors, expected 26");
  refused({d.begin(), d.end() - 1}, "bytes of body, the header says");
  // A body header beyond what any update of this student can hold: refused from the header.
  refused(with(d, 20, le32(uint32_t(cap + 1))), "more than any update of this student can hold");
  // Bombs: a small zstd frame that inflates past the stated body (the frame's own content size
  // must equal the header's), one that does not state its size, one cut short, one with bytes
  // after it.
  std::vector<uint8_t> zh = with(header, 7, {2});
  refused(zstd_blob(zh, std::vector<uint8_t>(cap, 0), true), "the zstd frame holds");
  refused(zstd_blob(zh, body, false), "does not state its content size");
  {
    auto z = zstd_blob(zh, body, true);
    z.resize(z.size() - 3);
    refused(z, "truncated");
    z = zstd_blob(zh, body, true);
    z.push_back(0);
    refused(z, "bytes after the zstd frame");
    refused(zh /* the header alone */, "not a zstd frame");
  }
  // Values: an int8 of -128, a negative or non-finite scale, an index past the tensor, k of 0.
  {
    auto b = d;
    b[32 + 4] = 0x80;  // the first tensor (dec2.preact_path.0.weight, 1-D: one scale): int8 0
    refused(b, "-128 is not a delta");
    refused(with(d, 32, {0, 0, 0x80, 0xbf}), "a scale of -1");
    refused(with(d, 32, {0, 0, 0x80, 0x7f}), "a scale of inf");
  }
  {
    // sparse: u32 k, then scales, then gaps: make k 0, then k larger than the tensor
    refused(with(s, 32, le32(0)), "0 entries of");
    refused(with(s, 32, le32(1u << 30)), "entries of");
    // the first gap (after k and the first tensor's one scale) pointing past the tensor
    const size_t gap = 32 + 4 + 4;
    size_t len = 1;
    while (s[gap + len - 1] & 0x80) ++len;  // the varint it replaces
    std::vector<uint8_t> b(s.begin(), s.begin() + ptrdiff_t(gap));
    b.insert(b.end(), {0xff, 0xff, 0xff, 0x7f});  // gap 2^28 - 1
    b.insert(b.end(), s.begin() + ptrdiff_t(gap + len), s.end());
    b = with(b, 20, le32(uint32_t(b.size() - 32)));
    refused(b, "an index past");
  }
  refused(with(d, 20, le32(uint32_t(body.size() - 1))), "bytes of body, the header says");
  // Well-formed, but made against other weights than these, or with another hash: the result
  // is not the mirror's, which the edge must learn (resync), not apply.
  {
    Student other(1);
    perturb(other, Distillation::Partial, 1e-3, 17);
    const uint64_t ho = weights_hash(other);
    REQUIRE_THROWS_AS(apply_update(other, Distillation::Partial, d.data(), d.size()),
                      WeightsMismatch);
    REQUIRE(weights_hash(other) == ho);
    auto b = d;
    b[24] ^= 1;
    REQUIRE_THROWS_AS(apply_update(edge, Distillation::Partial, b.data(), b.size()),
                      WeightsMismatch);
    REQUIRE(weights_hash(edge) == h0);
  }
  // And the good ones still apply.
  apply_update(edge, Distillation::Partial, d.data(), d.size());
  REQUIRE(weights_hash(edge) == dense.mirror_hash());
}

TEST_CASE("update: simulate with compact updates and compressed key frames", "[simulate][update]") {
  test::SyntheticClip clip("update", 24);
  edge::SimOptions o;
  o.video = clip.frames;
  o.labels = clip.labels;
  o.progress = false;
  const edge::SimResult plain = edge::simulate(o);
  o.update = parse_update_codec("int8:top10+zstd");
  o.key_encoding = FrameEncoding::Jpeg;
  o.jpeg_quality = 80;
  // simulate itself checks, after every update, that the edge half holds the mirror's weights
  const edge::SimResult compact = edge::simulate(o);
  INFO(edge::to_json(compact));
  REQUIRE(compact.update == "int8:top10+zstd");
  REQUIRE(compact.key_encoding == "jpeg:80");
  REQUIRE(plain.key_frames >= 2);
  REQUIRE(compact.key_frames >= 2);
  REQUIRE(compact.bytes_down / compact.key_frames * 5 < plain.bytes_down / plain.key_frames);
  REQUIRE(compact.bytes_up / compact.key_frames * 3 < plain.bytes_up / plain.key_frames);
  // The updates reach the edge half and help: better than the same student never updated.
  o.mode = st::Mode::Wild;
  const edge::SimResult wild = edge::simulate(o);
  INFO("mean mIoU: plain " << plain.mean_miou << ", compact " << compact.mean_miou << ", wild "
                           << wild.mean_miou);
  REQUIRE(compact.mean_miou > wild.mean_miou);
  // key_encoding_auto (simulate's default, as the server's --key-frames auto): a student from
  // random initialisation gets PNG key frames for JPEG, a trained one (weights given) the JPEG.
  o.mode = st::Mode::Partial;
  o.key_encoding_auto = true;
  const edge::SimResult from_scratch = edge::simulate(o);
  REQUIRE(from_scratch.key_encoding == "png");
  o.weights = clip.dir / "trained.safetensors";
  Student(0).save_safetensors(o.weights);
  const edge::SimResult trained = edge::simulate(o);
  REQUIRE(trained.key_encoding == "jpeg:80");
  o.key_encoding = FrameEncoding::RawBgr;
  o.weights.clear();
  REQUIRE(edge::simulate(o).key_encoding == "raw");
}

TEST_CASE("update: weights_hash_with of the current values is weights_hash", "[update][portable]") {
  Student s(3);
  s.set_partial_split({student_block("enc3"), true});
  for (Distillation mode : {Distillation::Partial, Distillation::Full}) {
    std::vector<std::vector<float>> now;
    for (const Tensor& t : s.trained_parameters(mode)) now.push_back(values(t));
    REQUIRE(weights_hash_with(s, mode, now) == weights_hash(s));
    now.back()[0] += 1;
    REQUIRE(weights_hash_with(s, mode, now) != weights_hash(s));
  }
}

namespace {
std::filesystem::path update_corpus() { return st::test::source_dir() / "tests" / "update_corpus"; }
std::vector<uint8_t> read_bytes(const std::filesystem::path& p) {
  std::ifstream f(p, std::ios::binary);
  return std::vector<uint8_t>(std::istreambuf_iterator<char>(f), {});
}
}  // namespace

// Writes the fuzz target's seed corpus. Hidden: run by hand after a format change,
//   st_tests "[.update-corpus-gen]"
// then review and commit tests/update_corpus/.
TEST_CASE("update: regenerate the seed corpus", "[.update-corpus-gen]") {
  namespace fz = st::nn::fuzz;
  const auto dir = update_corpus();
  std::filesystem::create_directories(dir);
  auto write = [&](const std::string& name, const std::vector<uint8_t>& b) {
    std::ofstream(dir / name, std::ios::binary)
        .write(reinterpret_cast<const char*>(b.data()), std::streamsize(b.size()));
  };
  const auto target = fz::values(777);
  auto blob = [&](const char* codec) {
    return encode_update(fz::layout(), target, fz::current(), parse_update_codec(codec));
  };
  for (const char* c : {"fp32", "fp16+zstd", "int8", "int8+zstd", "int8:top10", "int8:top10+zstd",
                        "int8:top1"}) {
    std::string n = c;
    for (char& ch : n)
      if (ch == ':' || ch == '+') ch = '_';
    write("ok_" + n + ".bin", blob(c));
  }
  const auto dense = blob("int8");
  const size_t cap = max_update_body(fz::layout());
  auto cut = dense;
  cut.resize(cut.size() - 5);
  write("err_truncated.bin", cut);
  auto big = dense;
  const uint32_t over = uint32_t(cap + 1);
  std::memcpy(big.data() + 20, &over, 4);
  write("err_body_over_cap.bin", big);
  {  // a zstd frame inflating to more than the header's body size (and the cap)
    std::vector<uint8_t> b(dense.begin(), dense.begin() + 32);
    b[7] = 2;
    std::vector<uint8_t> zeros(cap + 4096, 0), z(ZSTD_compressBound(zeros.size()));
    z.resize(ZSTD_compress(z.data(), z.size(), zeros.data(), zeros.size(), 3));
    b.insert(b.end(), z.begin(), z.end());
    write("err_zstd_bomb.bin", b);
  }
  {  // sparse, the first gap past the tensor
    auto s = blob("int8:top10");
    const size_t gap = 32 + 4 + 4 * fz::layout()[0].scales();
    size_t len = 1;
    while (s[gap + len - 1] & 0x80) ++len;
    std::vector<uint8_t> b(s.begin(), s.begin() + ptrdiff_t(gap));
    b.insert(b.end(), {0xff, 0xff, 0x03});
    b.insert(b.end(), s.begin() + ptrdiff_t(gap + len), s.end());
    const uint32_t body = uint32_t(b.size() - 32);
    std::memcpy(b.data() + 20, &body, 4);
    write("err_index_past_tensor.bin", b);
  }
}

TEST_CASE("update: the fuzz seed corpus decodes as its names say", "[update][portable]") {
  namespace fz = st::nn::fuzz;
  const auto dir = update_corpus();
  if (!std::filesystem::is_directory(dir)) ST_SKIP("tests/update_corpus/ is missing");
  size_t ok = 0, err = 0;
  for (const auto& e : std::filesystem::directory_iterator(dir)) {
    const std::string name = e.path().filename().string();
    INFO(name);
    const auto b = read_bytes(e.path());
    if (name.rfind("ok_", 0) == 0) {
      const DecodedUpdate d = decode_update(fz::layout(), fz::current(), b.data(), b.size());
      REQUIRE(d.values.size() == fz::layout().size());
      ++ok;
    } else if (name.rfind("err_", 0) == 0) {
      REQUIRE_THROWS_AS(decode_update(fz::layout(), fz::current(), b.data(), b.size()), st::Error);
      ++err;
    }
  }
  REQUIRE(ok >= 7);
  REQUIRE(err >= 4);
}

namespace {
// The frame indices each process of a teacher command was asked for, one log per process.
std::vector<std::vector<int64_t>> teacher_logs(const std::filesystem::path& dir) {
  std::vector<std::vector<int64_t>> logs;
  if (!std::filesystem::exists(dir)) return logs;
  for (const auto& e : std::filesystem::directory_iterator(dir)) {
    std::ifstream in(e.path());
    std::vector<int64_t> frames;
    for (int64_t f; in >> f;) frames.push_back(f);
    logs.push_back(std::move(frames));
  }
  std::sort(logs.begin(), logs.end(), [](const auto& a, const auto& b) { return a.size() > b.size(); });
  return logs;
}
}  // namespace

TEST_CASE("update: simulate with a live teacher command: it labels the decoded key frame and the "
          "raw frames the mIoU is measured on, in two processes", "[simulate][update]") {
  test::SyntheticClip clip("teachercmd", 16);
  // A teacher from docs/teacher_pipe.md: person (0) where a pixel is bright, background (8)
  // elsewhere: the synthetic clip's rectangle, seen through whatever the frame went through.
  // Each process logs the frames it is asked for (a recurrent teacher's state depends on them).
  const auto py = clip.dir / "bright.py";
  const auto logs = clip.dir / "teacher_logs";
  std::ofstream(py) << R"(import os, struct, sys
i, o = sys.stdin.buffer, sys.stdout.buffer
os.makedirs(sys.argv[1], exist_ok=True)
log = open(os.path.join(sys.argv[1], str(os.getpid())), "w")
while True:
    head = i.read(20)
    if len(head) < 20:
        break
    magic, frame, h, w = struct.unpack("<IQII", head)
    log.write("%d\n" % frame)
    log.flush()
    bgr = i.read(h * w * 3)
    labels = bytes(0 if bgr[3 * k] + bgr[3 * k + 1] + bgr[3 * k + 2] > 384 else 8
                   for k in range(h * w))
    o.write(struct.pack("<III", 0x41545453, h, w) + labels + struct.pack("<I", 0xFFFFFFFF))
    o.flush()
)";
  edge::SimOptions o;
  o.video = clip.frames;
  o.teacher_cmd = "/usr/bin/python3 '" + py.string() + "' '" + logs.string() + "'";
  o.teacher_timeout_s = test::kHungS;
  o.progress = false;
  o.update = parse_update_codec("int8+zstd");
  std::vector<int64_t> all_frames(16);
  std::iota(all_frames.begin(), all_frames.end(), 0);
  // The reference process sees every frame once, in order; the server half's process sees the
  // key frames and nothing else, raw or decoded alike.
  auto check_processes = [&](const edge::SimResult& r) {
    const auto seen = teacher_logs(logs);
    REQUIRE(seen.size() == 2);
    CHECK(seen[0] == all_frames);
    std::vector<int64_t> keys;
    for (const auto& k : r.key_log) keys.push_back(k.frame);
    CHECK(seen[1] == keys);
    std::filesystem::remove_all(logs);
  };
  const edge::SimResult raw = edge::simulate(o);
  INFO(edge::to_json(raw));
  REQUIRE(raw.teacher.find("command") != std::string::npos);
  REQUIRE(raw.key_frames >= 2);
  REQUIRE(raw.teacher_calls == raw.frames + raw.key_frames);
  check_processes(raw);
  o.key_encoding = FrameEncoding::Jpeg;
  o.jpeg_quality = 30;
  const edge::SimResult jpeg = edge::simulate(o);
  INFO(edge::to_json(jpeg));
  // Every frame labelled raw for the mIoU, and each key frame once more, decoded, for training.
  REQUIRE(jpeg.teacher_calls == jpeg.frames + jpeg.key_frames);
  REQUIRE(jpeg.key_frames >= 2);
  check_processes(jpeg);
  // Naive offloading of raw frames: the server's sequence is the reference's, one process.
  o.key_encoding = FrameEncoding::RawBgr;
  o.mode = st::Mode::Naive;
  const edge::SimResult naive = edge::simulate(o);
  REQUIRE(naive.teacher_calls == naive.frames);
  REQUIRE(teacher_logs(logs) == std::vector<std::vector<int64_t>>{all_frames});
  std::filesystem::remove_all(logs);
  o.key_encoding = FrameEncoding::Jpeg;
  o.mode = st::Mode::Wild;
  const edge::SimResult wild = edge::simulate(o);
  REQUIRE(teacher_logs(logs) == std::vector<std::vector<int64_t>>{all_frames});
  REQUIRE(jpeg.mean_miou > wild.mean_miou);
  // Exactly one teacher.
  o.labels = clip.labels;
  REQUIRE_THROWS_WITH(edge::simulate(o), Contains("exactly one teacher"));
}
