// The student network (SPEC §2): structure, loading the published checkpoint, golden logits
// against PyTorch on two real frames, partial-distillation bookkeeping.
#include <cmath>

#include "nn/student.h"
#include "tensor/autograd.h"
#include "tensor/ops.h"
#include "tensor/image.h"
#include "golden_checks.h"
#include "test_util.h"

using namespace st;
using Catch::Contains;

namespace {
std::filesystem::path model_path() {
  return test::shared_dir() / "models" / "student_lvs9_pretrained.safetensors";
}
}  // namespace

TEST_CASE("student: 68 tensors, 483,873 parameters, 26 trained by partial distillation",
          "[student][portable]") {
  nn::Student s;
  REQUIRE(s.named_parameters().size() == 68);
  REQUIRE(s.parameter_count() == 483873);
  auto names = s.trained_names(nn::Distillation::Partial);
  REQUIRE(names.size() == 26);
  int64_t n = 0;
  for (auto& t : s.trained_parameters(nn::Distillation::Partial)) n += t.numel();
  REQUIRE(n == 103465);
  REQUIRE(n * 4 == 413860);
  REQUIRE(names.front() == "dec2.preact_path.0.weight");
  REQUIRE(names.back() == "out_conv3.bias");
  REQUIRE(s.trained_names(nn::Distillation::Full).size() == 68);
  REQUIRE(s.trained_names(nn::Distillation::None).empty());
}

TEST_CASE("student: the tensors each mode trains", "[student][portable]") {
  CHECK(nn::distillation_of(Mode::Partial) == nn::Distillation::Partial);
  CHECK(nn::distillation_of(Mode::Full) == nn::Distillation::Full);
  CHECK(nn::distillation_of(Mode::Naive) == nn::Distillation::None);  // nothing is distilled
  CHECK(nn::distillation_of(Mode::Wild) == nn::Distillation::None);
}

namespace {
// SPEC §2's graph written out again from its text with the tensor ops (nothing of
// nn/student.cpp's wiring): conv(k, s) pads k//2 per axis, BN normalises with the batch's own
// statistics, `diff` and `same` blocks, `up` to the sizes named, `cat` in the order shown, and
// out_conv3 AFTER the last upsample, as the SPEC writes it.
Tensor spec_student_forward(const nn::Student& s, const Tensor& x, Tensor* before_out_conv3) {
  auto P = [&](const std::string& n) { return s.parameter(n); };
  auto conv = [&](const Tensor& in, const std::string& n, int64_t stride) {
    const Tensor w = P(n + ".weight");
    Conv2dParams p;
    p.stride_h = p.stride_w = stride;
    p.pad_h = w.size(2) / 2;
    p.pad_w = w.size(3) / 2;
    return conv2d(in, w, P(n + ".bias"), p);
  };
  auto block = [&](const Tensor& in, const std::string& n, int64_t stride, bool same) {
    const Tensor p = relu(batch_norm(in, P(n + ".preact_path.0.weight"), P(n + ".preact_path.0.bias"), 1e-5));
    const Tensor shortcut = same ? subsample(in, stride) : conv(p, n + ".short_path", stride);
    const Tensor lp = conv(conv(relu(conv(p, n + ".long_path.0", stride)), n + ".long_path.2", 1),
                           n + ".long_path.3", 1);
    return add(shortcut, lp);
  };
  const Tensor x1 = conv(x, "in_conv1", 2);
  const Tensor x2 = conv(x1, "in_conv2", 2);
  const Tensor e1 = block(x2, "enc1", 2, false);
  const Tensor e2 = block(e1, "enc2", 2, true);
  const Tensor e3 = block(e2, "enc3", 2, false);
  const Tensor d1 = resize_bilinear(block(e3, "dec1", 1, false), e2.size(2), e2.size(3));
  const Tensor d2 = resize_bilinear(block(cat({d1, e2}, 1), "dec2", 1, false), e1.size(2), e1.size(3));
  const Tensor d3 = resize_bilinear(block(cat({d2, e1}, 1), "dec3", 1, false), x1.size(2), x1.size(3));
  const Tensor o = conv(conv(d3, "out_conv1", 1), "out_conv2", 1);
  *before_out_conv3 = o;
  return conv(resize_bilinear(o, x.size(2), x.size(3)), "out_conv3", 1);
}

Tensor abs_of(const Tensor& t) {
  auto v = t.to_vector<float>();
  for (float& e : v) e = std::abs(e);
  return Tensor::from_vector(v, t.shape());
}
}  // namespace

TEST_CASE("student: any input size gives the graph of SPEC section 2", "[student][portable]") {
  nn::Student s;
  NoGradGuard ng;
  for (auto [h, w] : {std::pair<int64_t, int64_t>{64, 64}, {37, 53}, {96, 128}, {33, 17}}) {
    INFO(h << "x" << w);
    const Tensor x = Tensor::randn({1, 3, h, w}, 5) * 50.0;
    Tensor y = s.forward(x);
    REQUIRE(y.shape() == Shape{1, 9, h, w});
    Tensor o;
    const Tensor ref = spec_student_forward(s, x, &o);
    REQUIRE(ref.shape() == y.shape());
    // Up to out_conv3 both run the same ops on the same values; they differ only in the order of
    // out_conv3 (1x1, K = 32 inputs and a bias) and the last upsample (4 taps, weights summing
    // to 1 up to a few roundings), which commute exactly. Each order rounds the 1x1 sum
    // (K + 1 terms) and the 4-tap sum and its weights, each at most gamma(K + 10) relative to
    // the sum of magnitudes |b| + sum_k |W_k| up(|o_k|); the bound is twice that.
    const Tensor w3 = s.parameter("out_conv3.weight"), b3 = s.parameter("out_conv3.bias");
    const Tensor mag = conv2d(resize_bilinear(abs_of(o), h, w), abs_of(w3), abs_of(b3));
    const Tensor bound = mul_scalar(mag, 2 * test::gamma(32 + 10));
    ST_REQUIRE_WITHIN(y, ref, bound);
  }
}

TEST_CASE("student: refuses a checkpoint whose names or shapes differ", "[student][errors][portable]") {
  nn::Student s;
  auto state = s.named_parameters();
  Tensor before = s.parameter("enc1.long_path.0.weight").clone();
  nn::NamedTensors bad = state;
  bad[5].second = Tensor::zeros({3, 3});
  REQUIRE_THROWS_WITH(s.load_state(bad, "bad.safetensors"),
                      Contains(bad[5].first) && Contains("[3, 3]"));
  bad = state;
  bad[7].first = "enc1.long_path.9.weight";
  REQUIRE_THROWS_WITH(s.load_state(bad, "bad.safetensors"), Contains("missing tensor"));
  bad = state;
  bad.emplace_back("extra.weight", Tensor::zeros({1}));
  REQUIRE_THROWS_WITH(s.load_state(bad, "bad.safetensors"), Contains("unexpected tensor 'extra.weight'"));
  // Nothing changed.
  REQUIRE(s.parameter("enc1.long_path.0.weight").to_vector<float>() == before.to_vector<float>());
  REQUIRE_THROWS_WITH(s.load_safetensors("/nonexistent/student.safetensors"), Contains("cannot open"));
}

// Tolerances (tests/README.md): the reference is float64 PyTorch with the SPEC's operator order
// (tools/make_student_golden.py); we run float32, with out_conv3 moved before the last upsample
// (exact algebraically). The generator also estimates, for every logit, sigma: the standard
// deviation of a float32 forward's rounding error (every operation's rounding replaced by its
// bound times a random sign, first order, 32 runs: the correlated errors of a channel's batch
// statistics or an upsampling row's coordinate are carried as they are), and checks torch's own
// float32 forward against it. Here:
//  - every sampled logit must be within lambda * sigma of the reference (lambda = 8);
//  - the argmax must agree wherever it is certain: the top class leads every other by more than
//    lambda times the sum of their sigmas (the generator lists the other pixels); elsewhere a
//    float32 forward may legitimately pick either class;
//  - per class, the mean of the logits within lambda * mean(sigma), their standard deviation
//    within lambda * rms(sigma) (|sd(a) - sd(b)| <= rms(a - b)), plus the rounding of our own
//    double sums over P pixels, gamma_P(2^-53) times the mean |logit|.
namespace st::test {
bool student_golden_available(std::string& why) {
  if (std::filesystem::exists(model_path())) return true;
  why = "shared model absent: " + model_path().string();
  return false;
}

void check_student_golden(Device device) {
  nn::Student s;
  s.load_safetensors(model_path());
  s.to(device);
  auto g = safetensors::load(test::source_dir() / "tests" / "golden" / "student.safetensors");
  REQUIRE(g.metadata.count("error_model_lambda"));
  const double lambda = std::stod(g.metadata.at("error_model_lambda"));
  REQUIRE(lambda == 8.0);
  for (std::string fr : {"000000", "000400"}) {
    INFO("frame " << fr);
    auto img = image::read_bgr(test::shared_dir() / "data" / "vtest" / "frames" / (fr + ".png"));
    Tensor x = nn::Student::preprocess_bgr(img.pixels.data(), img.height, img.width);
    NoGradGuard ng;
    Tensor y = s.forward(x.to(device));
    REQUIRE(y.device() == device);
    y = y.to(Device::cpu());
    REQUIRE(y.shape() == Shape{1, 9, 576, 768});
    Tensor sampled = y.slice(2, 0, 576, 16).slice(3, 0, 768, 16).reshape({9, 36, 48});
    ST_REQUIRE_WITHIN(sampled, g.get(fr + ".logits_s16"), mul_scalar(g.get(fr + ".logits_s16_sigma"), lambda));
    auto ref = g.get(fr + ".argmax").to_vector<int64_t>();
    auto ours = argmax_channels(y).to_vector<int64_t>();
    REQUIRE(ref.size() == ours.size());
    std::vector<uint8_t> certain(ref.size(), 1);
    for (int64_t i : g.get(fr + ".argmax_uncertain").to_vector<int64_t>()) {
      REQUIRE((i >= 0 && i < int64_t(ref.size())));
      certain[size_t(i)] = 0;
    }
    int64_t n_certain = 0, disagree_certain = 0, disagree_other = 0;
    for (size_t i = 0; i < ref.size(); ++i) {
      n_certain += certain[i];
      if (ref[i] != ours[i]) ++(certain[i] ? disagree_certain : disagree_other);
    }
    INFO(n_certain << " of " << ref.size() << " pixels have a certain argmax; " << disagree_certain
                   << " of them disagree, " << disagree_other << " of the others");
    REQUIRE(disagree_certain == 0);
    // The criterion leaves almost every pixel certain (a bound that let everything pass would not).
    REQUIRE(n_certain >= int64_t(ref.size()) * 99 / 100);
    // Per-class statistics over all pixels.
    auto v = y.to_vector<double>();
    auto mean_ref = g.get(fr + ".logit_mean").to_vector<double>();
    auto std_ref = g.get(fr + ".logit_std").to_vector<double>();
    auto sig_mean = g.get(fr + ".sigma_mean").to_vector<double>();
    auto sig_rms = g.get(fr + ".sigma_rms").to_vector<double>();
    const size_t P = 576 * 768;
    for (size_t c = 0; c < 9; ++c) {
      INFO("class " << c);
      double m = 0, q = 0, a = 0;
      for (size_t i = 0; i < P; ++i) m += v[c * P + i], a += std::abs(v[c * P + i]);
      m /= double(P);
      a /= double(P);
      for (size_t i = 0; i < P; ++i) q += (v[c * P + i] - m) * (v[c * P + i] - m);
      double sd = std::sqrt(q / double(P));
      const double own = test::gamma(double(P) + 2, 0x1p-53) * (a + std::abs(m));
      REQUIRE(std::abs(m - mean_ref[c]) <= lambda * sig_mean[c] + own);
      REQUIRE(std::abs(sd - std_ref[c]) <= lambda * sig_rms[c] + own);
    }
  }
}
}  // namespace st::test

TEST_CASE("student: pretrained logits match PyTorch on real frames", "[student][golden][portable]") {
  std::string why;
  if (!test::student_golden_available(why)) ST_SKIP(why);
  test::check_student_golden(Device::cpu());
}
