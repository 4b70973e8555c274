// The student network (SPEC §2): structure, loading the published checkpoint, golden logits
// against PyTorch on two real frames, partial-distillation bookkeeping.
#include "nn/student.h"
#include "tensor/image.h"
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

TEST_CASE("student: any input size works", "[student][portable]") {
  nn::Student s;
  NoGradGuard ng;
  for (auto [h, w] : {std::pair<int64_t, int64_t>{64, 64}, {37, 53}, {96, 128}}) {
    Tensor y = s.forward(Tensor::randn({1, 3, h, w}, 5) * 50.0);
    REQUIRE(y.shape() == Shape{1, 9, h, w});
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

// Tolerances: the reference is float64 PyTorch with the SPEC's operator order; we run float32
// with out_conv3 moved before the last upsample (exact algebraically). Logits are O(10); f32
// error through ~20 layers of O(1e2)-term reductions stays below ~1e-3 relative, so sampled
// logits must match to atol 2e-2 + rtol 1e-3, per-class means/stds to 1e-3 relative, and
// argmax must agree on >= 99.9% of pixels (disagreement only where the top-2 margin is tiny).
TEST_CASE("student: pretrained logits match PyTorch on real frames", "[student][golden][portable]") {
  if (!std::filesystem::exists(model_path())) ST_SKIP("shared model absent: " + model_path().string());
  nn::Student s;
  s.load_safetensors(model_path());
  auto g = safetensors::load(test::source_dir() / "tests" / "golden" / "student.safetensors");
  for (std::string fr : {"000000", "000400"}) {
    INFO("frame " << fr);
    auto img = image::read_bgr(test::shared_dir() / "data" / "vtest" / "frames" / (fr + ".png"));
    Tensor x = nn::Student::preprocess_bgr(img.pixels.data(), img.height, img.width);
    NoGradGuard ng;
    Tensor y = s.forward(x);
    REQUIRE(y.shape() == Shape{1, 9, 576, 768});
    Tensor sampled = y.slice(2, 0, 576, 16).slice(3, 0, 768, 16).reshape({9, 36, 48});
    ST_REQUIRE_CLOSE(sampled, g.get(fr + ".logits_s16"), 2e-2, 1e-3);
    auto ref = g.get(fr + ".argmax").to_vector<int64_t>();
    auto ours = argmax_channels(y).to_vector<int64_t>();
    int64_t agree = 0;
    for (size_t i = 0; i < ref.size(); ++i) agree += ref[i] == ours[i];
    double frac = double(agree) / double(ref.size());
    INFO("argmax agreement " << frac);
    REQUIRE(frac >= 0.999);
    // Per-class statistics over all pixels.
    auto v = y.to_vector<double>();
    auto mean_ref = g.get(fr + ".logit_mean").to_vector<double>();
    auto std_ref = g.get(fr + ".logit_std").to_vector<double>();
    const size_t P = 576 * 768;
    for (size_t c = 0; c < 9; ++c) {
      double m = 0, q = 0;
      for (size_t i = 0; i < P; ++i) m += v[c * P + i];
      m /= double(P);
      for (size_t i = 0; i < P; ++i) q += (v[c * P + i] - m) * (v[c * P + i] - m);
      double sd = std::sqrt(q / double(P));
      REQUIRE(std::abs(m - mean_ref[c]) <= 1e-3 * (1 + std::abs(mean_ref[c])));
      REQUIRE(std::abs(sd - std_ref[c]) <= 1e-3 * (1 + std::abs(std_ref[c])));
    }
  }
}
