// SPEC §3–§5: targets and weights, mIoU, Algorithm 2 (table-driven), Algorithm 1 (skip,
// steps, best-copy restore, partial backward, front reuse), and the parameter blob.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "algorithm_reference.h"
#include "nn/blob.h"
#include "nn/distill.h"
#include "io/video.h"
#include "synthetic_clip.h"
#include "tensor/image.h"
#include "test_util.h"

using namespace st;
using namespace st::nn;
using Catch::Contains;

TEST_CASE("algorithm 2: next key-frame stride, T = 0.8", "[distill][portable]") {
  DistillConfig cfg;  // T 0.8, strides [8, 64]
  struct Row {
    double acc;
    int current, expected;
  };
  std::vector<Row> table = {
      {1.0, 16, 32},   // acc 1.0 doubles
      {0.9, 16, 24},   // 0.9 -> x1.5
      {0.8, 16, 16},   // 0.8 -> x1 (the "otherwise" branch: 0.8/0.8)
      {0.4, 32, 16},   // 0.4 halves
      {0.85, 13, 16},  // x1.25 = 16.25 -> truncated to 16
      {0.5, 20, 12},   // x0.625 = 12.5 -> 12
      {0.7, 10, 8},    // x0.875 = 8.75 -> 8
      {1.0, 40, 64},   // 80 clamped to MAX_STRIDE
      {0.1, 16, 8},    // 2 clamped to MIN_STRIDE
      {0.0, 64, 8},
      {0.95, 64, 64},
  };
  for (auto& r : table) {
    INFO("acc " << r.acc << " current " << r.current);
    REQUIRE(next_stride(r.acc, r.current, cfg) == r.expected);
  }
  DistillConfig other;
  other.threshold = 0.5;
  other.min_stride = 2;
  other.max_stride = 100;
  REQUIRE(next_stride(0.75, 10, other) == 15);  // (0.75 + 1 - 1) / 0.5 = 1.5
}

TEST_CASE("miou: per-class IoU averaged over classes present in prediction or target",
          "[distill][portable]") {
  // target: 0 0 8 8 ; pred: 0 8 8 8 -> class 0: 1/2, class 8: 2/3 -> mean 7/12.
  Tensor t = Tensor::from_vector(std::vector<int64_t>{0, 0, 8, 8}, {1, 2, 2});
  Tensor p = Tensor::from_vector(std::vector<int64_t>{0, 8, 8, 8}, {1, 2, 2});
  REQUIRE(miou(p, t) == Approx(7.0 / 12.0));
  REQUIRE(miou(t, t) == 1.0);
  // A class only in the prediction counts (IoU 0).
  Tensor p2 = Tensor::from_vector(std::vector<int64_t>{0, 0, 8, 3}, {1, 2, 2});
  REQUIRE(miou(p2, t) == Approx((1.0 + 0.5 + 0.0) / 3.0));
  REQUIRE_THROWS_WITH(miou(p, Tensor::zeros({1, 3}, DType::I64)), Contains("differ"));
}

TEST_CASE("targets: box weights expand 7.5%, truncate, clamp, include the far edge",
          "[distill][portable]") {
  // Box x 10..30 (w 20 -> 1.5 px), y 4..8 (h 4 -> 0.3 px) in a 40x12 image.
  auto w = box_weights({{10, 4, 30, 8}}, 12, 40);
  auto at = [&](int64_t y, int64_t x) { return w[size_t(y * 40 + x)]; };
  // x: int(8.5) = 8 .. int(31.5) = 31 ; y: int(3.7) = 3 .. int(8.3) = 8, inclusive.
  REQUIRE(at(3, 8) == 5.0f);
  REQUIRE(at(8, 31) == 5.0f);
  REQUIRE(at(2, 8) == 1.0f);
  REQUIRE(at(3, 7) == 1.0f);
  REQUIRE(at(9, 20) == 1.0f);
  REQUIRE(at(5, 32) == 1.0f);
  int64_t fives = 0;
  for (float v : w) fives += v == 5.0f;
  REQUIRE(fives == (31 - 8 + 1) * (8 - 3 + 1));
  // Clamping at the borders.
  auto c = box_weights({{-5, -5, 100, 100}}, 12, 40);
  for (float v : c) REQUIRE(v == 5.0f);
}

TEST_CASE("targets: label-only teachers get boxes from connected components", "[distill][portable]") {
  // Two blobs (8-connected diagonal pair counts as one), background 8.
  std::vector<uint8_t> l(6 * 8, 8);
  l[1 * 8 + 1] = 0;
  l[2 * 8 + 2] = 0;  // diagonal neighbour: same component
  l[4 * 8 + 6] = 2;
  l[4 * 8 + 7] = 2;
  auto boxes = component_boxes(l, 6, 8);
  REQUIRE(boxes.size() == 2);
  REQUIRE(boxes[0].x1 == 1);
  REQUIRE(boxes[0].y1 == 1);
  REQUIRE(boxes[0].x2 == 3);
  REQUIRE(boxes[0].y2 == 3);
  REQUIRE(boxes[1].x1 == 6);
  REQUIRE(boxes[1].x2 == 8);
  Target t = make_target(l, 6, 8);
  REQUIRE(t.labels.shape() == Shape{1, 6, 8});
  REQUIRE(t.weight.at({0, 1, 1}) == 5.0);
  REQUIRE(t.weight.at({0, 0, 5}) == 1.0);
  std::vector<uint8_t> bad(48, 9);
  REQUIRE_THROWS_WITH(make_target(bad, 6, 8), Contains("label 9"));
}

namespace {
// A small scene: a random image and a synthetic target (a "person" rectangle).
struct Scene {
  Tensor x;
  Target target;
  Scene(int64_t h, int64_t w, uint64_t seed) {
    x = Tensor::randn({1, 3, h, w}, seed) * 40.0;
    std::vector<uint8_t> l(size_t(h * w), 8);
    for (int64_t y = h / 4; y < 3 * h / 4; ++y)
      for (int64_t xx = w / 3; xx < 2 * w / 3; ++xx) l[size_t(y * w + xx)] = 0;
    target = make_target(l, h, w);
  }
};

std::vector<std::vector<float>> values(const std::vector<Tensor>& ts) {
  std::vector<std::vector<float>> v;
  for (auto& t : ts) v.push_back(t.to_vector<float>());
  return v;
}
}  // namespace

TEST_CASE("algorithm 1: partial distillation trains only the back, with no front backward",
          "[distill][partial][portable]") {
  Student s;
  Scene sc(64, 96, 1);
  Student ref_student;  // the same init, trained by the reference Algorithm 1
  auto before = values(s.parameters());
  Distiller d(s, Distillation::Partial);
  reset_backward_kernel_counts();
  DistillOutcome o = d.distill(sc.x, sc.target);
  auto counts = backward_kernel_counts();
  // The steps taken, the accuracies and the weights kept are Algorithm 1's (SPEC §4), written
  // out again in tests/algorithm_reference.h with the SPEC weight map.
  std::vector<uint8_t> l8;
  for (int64_t v : sc.target.labels.to_vector<int64_t>()) l8.push_back(uint8_t(v));
  test::ReferenceDistiller ref(ref_student);
  test::RefOutcome ro = ref.run(sc.x, l8, 64, 96);
  REQUIRE(o.steps == ro.steps);
  REQUIRE(o.acc_before == ro.acc_before);
  REQUIRE(o.acc == ro.acc);
  REQUIRE(values(s.parameters()) == values(ref_student.parameters()));
  REQUIRE(o.steps >= 1);  // (else nothing below was exercised)
  auto after = values(s.parameters());
  auto names = s.named_parameters();
  auto trained = s.trained_names(Distillation::Partial);
  for (size_t i = 0; i < names.size(); ++i) {
    bool is_trained = std::find(trained.begin(), trained.end(), names[i].first) != trained.end();
    INFO(names[i].first);
    if (!is_trained) REQUIRE(after[i] == before[i]);
    if (!is_trained) REQUIRE_FALSE(names[i].second.grad().defined());
  }
  // Back convs: dec2 (short, long0, long2, long3), dec3 (4), out_conv1..3 = 11 convs, each
  // with weight, bias and input gradients per step (dec2's convs read relu(BN(.)) whose affine
  // is trained). Backward stops at dec2's BN: its input, cat[d1, e2], is the frozen front's, so
  // exactly one BN input gradient (dec3's) runs, and nothing of the front (its 7 BNs, 20 convs,
  // the d1 upsample, enc2's subsample) shows up in the counters.
  const int64_t steps = o.steps;
  std::map<std::string, int64_t> expected = {
      {"conv2d.grad_weight", 11 * steps},    {"conv2d.grad_bias", 11 * steps},
      {"conv2d.grad_input", 11 * steps},     {"batch_norm.grad_input", 1 * steps},
      {"batch_norm.grad_affine", 2 * steps}, {"relu.grad_input", 4 * steps},
      {"resize_bilinear.grad_input", 3 * steps},
      {"weighted_cross_entropy.grad_input", 1 * steps},
      {"add.grad_a", 2 * steps},             {"add.grad_b", 2 * steps},  // short + long
  };
  for (auto& [k, v] : counts) {
    INFO("kernel " << k);
    REQUIRE(expected.count(k));
    REQUIRE(v == expected[k]);
  }
  REQUIRE(counts.size() == expected.size());
}

TEST_CASE("algorithm 1: reusing the frozen front is bit-identical to recomputing it",
          "[distill][partial][portable]") {
  Scene sc(48, 64, 2);
  Student a, b;
  b.load_state(a.named_parameters());
  Distiller da(a, Distillation::Partial), db(b, Distillation::Partial);
  for (int k = 0; k < 2; ++k) {  // two key frames: Adam state carries over
    DistillOutcome oa = da.distill(sc.x, sc.target, true);
    DistillOutcome ob = db.distill(sc.x, sc.target, false);
    REQUIRE(oa.steps == ob.steps);
    REQUIRE(oa.acc == ob.acc);
  }
  REQUIRE(values(a.parameters()) == values(b.parameters()));
}

namespace {
// Algorithm 1 on one frame and its teacher label, by the Distiller and by the reference, from
// the same student weights (`weights`: a .safetensors, or empty for the random init); returns
// the reference's outcome and the SPEC loss (float64) before each step.
struct Learned {
  DistillOutcome o;
  test::RefOutcome ro;
  std::vector<double> loss64;
};
Learned distill_both(const Tensor& x, const std::vector<uint8_t>& l8, int64_t H, int64_t W,
                     const std::filesystem::path& weights) {
  const int64_t P = H * W;
  // The product's target: the teacher's labels and the SPEC weight map (5 in the expanded box).
  const Target target = make_target(l8, H, W);
  const std::vector<float> weight = test::spec_weight_map(l8, H, W);
  REQUIRE(target.weight.to_vector<float>() == weight);
  REQUIRE(std::count(weight.begin(), weight.end(), 5.0f) > 0);
  REQUIRE(std::count(weight.begin(), weight.end(), 1.0f) > 0);

  // Every step runs (threshold 0.99 is not reached on this frame in 8 steps).
  DistillConfig cfg;
  cfg.threshold = 0.99;
  Student a, b;
  if (!weights.empty()) a.load_safetensors(weights), b.load_safetensors(weights);
  Distiller d(a, Distillation::Partial, cfg);
  test::ReferenceDistiller ref(b, cfg.threshold, cfg.max_updates);
  // At every step of the reference, before Adam moves: the loss the op gives and the gradient
  // of out_conv3's bias against SPEC §3's loss computed here in float64 from the logits, the
  // teacher label and the weight map. d loss / d bias_c = sum_p d loss / d logit[c, p]
  // = (1/P) sum_p w_p (softmax_c(p) - [c == t_p]) (the bias is added before the last upsample,
  // whose adjoint keeps sums: its weights for each output pixel add up to 1).
  //   Rounding: per pixel the float log-sum-exp and the difference l - lse are off by at most
  //   e_p = gamma(C + 6) (2 max_c |l_c(p)| + log C + 1) (C exps and adds, the max, the log, the
  //   subtraction); exp(l - lse) then has relative error e_p + u, the scale w/P two roundings.
  //   The loss adds P such terms (block sums in double, then one float rounding); the bias
  //   gradient adds them through the upsample's adjoint and the bias reduction, at most
  //   P + 64 roundings in a row: gamma(P + 64) times the sum of their magnitudes.
  std::vector<double> loss64;
  int checked = 0;
  ref.on_gradients = [&](const Tensor& logits, const Tensor&, const Tensor&) {
    const auto l = logits.to_vector<double>();
    const int64_t C = 9;
    double loss = 0, loss_err = 0;
    std::vector<double> gb(C, 0), gb_abs(C, 0), gb_err(C, 0);
    for (int64_t p = 0; p < P; ++p) {
      double mx = -1e300, big = 0;
      for (int64_t c = 0; c < C; ++c) mx = std::max(mx, l[size_t(c * P + p)]), big = std::max(big, std::abs(l[size_t(c * P + p)]));
      double se = 0;
      for (int64_t c = 0; c < C; ++c) se += std::exp(l[size_t(c * P + p)] - mx);
      const double lse = mx + std::log(se), wp = weight[size_t(p)];
      const int64_t t = l8[size_t(p)];
      const double e = test::gamma(double(C + 6)) * (2 * big + std::log(double(C)) + 1);
      loss += wp * (lse - l[size_t(t * P + p)]) / double(P);
      loss_err += wp * (e + test::kU32 * std::abs(lse - l[size_t(t * P + p)])) / double(P);
      for (int64_t c = 0; c < C; ++c) {
        const double sm = std::exp(l[size_t(c * P + p)] - lse);
        const double g = wp * (sm - (c == t ? 1.0 : 0.0)) / double(P);
        gb[size_t(c)] += g;
        gb_abs[size_t(c)] += std::abs(g);
        gb_err[size_t(c)] += wp / double(P) * (sm * (e + test::gamma(3)) + test::kU32 * std::abs(sm - (c == t)));
      }
    }
    loss_err += test::kU32 * loss;
    const double loss_op = weighted_cross_entropy(logits, target.labels, target.weight).item();
    INFO("step " << checked << ": loss " << loss << ", op " << loss_op);
    REQUIRE(std::abs(loss_op - loss) <= loss_err);
    const auto grad = b.parameter("out_conv3.bias").grad().to_vector<double>();
    for (int64_t c = 0; c < C; ++c) {
      INFO("class " << c << ": d loss / d bias " << gb[size_t(c)] << ", backward " << grad[size_t(c)]);
      REQUIRE(std::abs(grad[size_t(c)] - gb[size_t(c)]) <=
              gb_err[size_t(c)] + test::gamma(double(P + 64)) * gb_abs[size_t(c)]);
    }
    loss64.push_back(loss);
    ++checked;
  };
  Learned r;
  r.o = d.distill(x, target);
  r.ro = ref.run(x, l8, H, W);
  r.loss64 = loss64;
  REQUIRE(checked == r.ro.steps);
  // The distiller did exactly Algorithm 1 with these weights: same steps, accuracies, weights.
  REQUIRE(r.o.steps == r.ro.steps);
  REQUIRE(r.o.acc_before == r.ro.acc_before);
  REQUIRE(r.o.acc == r.ro.acc);
  REQUIRE(values(a.parameters()) == values(b.parameters()));
  return r;
}

// What "it learns" means for Algorithm 1 with the authors' Adam (lr 0.01): not that every step
// helps (on both frames below single steps overshoot: the loss jumps for a step and mIoU drops),
// but that over the steps the loss falls well below where it started and the weights kept are
// those of the best mIoU seen, above the start (the best copy: mIoU of the result never goes
// down). Measured at the commit that added this test: real frame loss 0.74 -> 0.16 after 7
// steps, mIoU 0.24 -> 0.75 kept; synthetic frame 3.66 -> 0.78, mIoU 0 -> 0.71.
void check_learns(const Learned& r) {
  REQUIRE(r.ro.steps == 8);
  REQUIRE(r.loss64.size() == 8);
  double best = r.ro.acc_before;
  for (size_t k = 0; k < r.ro.trace.size(); ++k) {
    INFO("step " << k + 1 << ": loss before " << r.loss64[k] << ", mIoU after " << r.ro.trace[k].acc);
    best = std::max(best, r.ro.trace[k].acc);
  }
  INFO("loss " << r.loss64.front() << " -> " << r.loss64.back() << ", mIoU " << r.o.acc_before
               << " -> " << r.o.acc);
  REQUIRE(r.loss64.back() < 0.5 * r.loss64.front());
  REQUIRE(r.o.acc == best);
  REQUIRE(r.o.acc > r.o.acc_before + 0.2);
}
}  // namespace

TEST_CASE("algorithm 1 learns on a real frame: the SPEC loss falls, mIoU does not, box weights "
          "in the loss", "[distill][partial][portable]") {
  // The pretrained student on a 192x256 crop of vtest frame 0 (several people) with its
  // recorded teacher label (SPEC §8).
  const auto shared = test::shared_dir();
  const auto model = shared / "models" / "student_lvs9_pretrained.safetensors";
  const auto frame = shared / "data" / "vtest" / "frames" / "000000.png";
  const auto labels = shared / "data" / "vtest" / "labels";
  if (!std::filesystem::exists(model) || !std::filesystem::exists(frame) ||
      !std::filesystem::exists(labels / "000000.png"))
    ST_SKIP("shared vtest frame, labels or pretrained student not found under " + shared.string());
  const int64_t Y0 = 160, X0 = 160, H = 192, W = 256;
  const auto img = image::read_bgr(frame);
  const auto full = io::LabelSource(labels).labels(0, img.height, img.width);
  std::vector<uint8_t> bgr, l8;
  for (int64_t y = Y0; y < Y0 + H; ++y)
    for (int64_t x = X0; x < X0 + W; ++x) {
      l8.push_back(full[size_t(y * img.width + x)]);
      for (int c = 0; c < 3; ++c) bgr.push_back(img.pixels[size_t((y * img.width + x) * 3 + c)]);
    }
  check_learns(distill_both(Student::preprocess_bgr(bgr.data(), H, W), l8, H, W, model));
}

TEST_CASE("algorithm 1 learns on the synthetic clip: the SPEC loss falls, mIoU does not, box "
          "weights in the loss", "[distill][partial][portable]") {
  // Frame 0 of the synthetic clip (tests/synthetic_clip.h) with its recorded teacher label: a
  // 48x64 frame, 3072 pixels, so the loss kernels' 256-pixel blocks and their offsets all count.
  test::SyntheticClip clip("learn", 1);
  auto src = io::open_video(clip.frames);
  io::Frame f;
  REQUIRE(src->next(f));
  const int64_t H = f.bgr.height, W = f.bgr.width;
  const std::vector<uint8_t> l8 = io::LabelSource(clip.labels).labels(0, H, W);
  const Tensor x = Student::preprocess_bgr(f.bgr.pixels.data(), H, W);
  check_learns(distill_both(x, l8, H, W, {}));
}

TEST_CASE("algorithm 1: skip when the student is already good", "[distill][portable]") {
  Student s;
  Scene sc(32, 48, 3);
  Tensor pred;
  {
    NoGradGuard ng;
    pred = argmax_channels(s.forward(sc.x));
  }
  Target own{pred, Tensor::full({1, 32, 48}, 1.0)};
  auto before = values(s.parameters());
  Distiller d(s, Distillation::Partial);
  DistillOutcome o = d.distill(sc.x, own);
  REQUIRE(o.acc_before == 1.0);
  REQUIRE(o.steps == 0);
  REQUIRE(values(s.parameters()) == before);
}

TEST_CASE("algorithm 1: best copy is restored when training makes things worse",
          "[distill][portable]") {
  Student s;
  Scene sc(32, 48, 4);
  DistillConfig cfg;
  cfg.lr = 50.0;  // absurd learning rate: every step destroys the back
  cfg.max_updates = 3;
  auto before = values(s.parameters());
  Distiller d(s, Distillation::Partial, cfg);
  DistillOutcome o = d.distill(sc.x, sc.target);
  REQUIRE(o.steps == 3);
  REQUIRE(o.acc >= o.acc_before);
  // Whatever was kept, the reported acc is that of the weights now in the student.
  {
    NoGradGuard ng;
    REQUIRE(miou(argmax_channels(s.forward(sc.x)), sc.target.labels) == Approx(o.acc));
  }
  // Both branches of the restore are fixed by this scene, and the reference Algorithm 1
  // (tests/algorithm_reference.h) shows which: a middle step is the best (above the start) and
  // the last is worse, so that step's weights come back, bit for bit.
  Student r;
  test::ReferenceDistiller ref(r, cfg.threshold, cfg.max_updates, cfg.lr);
  std::vector<uint8_t> l8;
  for (int64_t v : sc.target.labels.to_vector<int64_t>()) l8.push_back(uint8_t(v));
  test::RefOutcome ro = ref.run(sc.x, l8, 32, 48);
  REQUIRE(ro.steps == 3);
  REQUIRE(ro.trace.back().acc < ro.acc);  // the last step made things worse: restored
  REQUIRE(ro.acc > ro.acc_before);        // to a step's weights, not the start's
  REQUIRE(o.acc == ro.acc);
  REQUIRE(o.acc_before == ro.acc_before);
  REQUIRE(values(s.parameters()) == values(r.parameters()));
  REQUIRE(values(s.parameters()) != before);
}

TEST_CASE("algorithm 1: the best-restore rewinds Adam's state with the weights, unless told not to",
          "[distill][portable]") {
  // The scene and lr of the case above: a middle step is the best, the last is worse, so the
  // weights of the best step come back. With the authors' behaviour (the default) Adam's
  // moments and step counts come back with them; with rewind_optimizer = false they stay those
  // of the last step. Each is checked against the reference Algorithm 1 run the same way, and on
  // a second key frame, whose steps start from those moments, the two still agree bit for bit.
  Scene sc(32, 48, 4);
  std::vector<uint8_t> l8;
  for (int64_t v : sc.target.labels.to_vector<int64_t>()) l8.push_back(uint8_t(v));
  for (const bool rewind : {true, false}) {
    INFO("rewind_optimizer " << rewind);
    Student s, r;
    DistillConfig cfg;
    cfg.lr = 50.0;
    cfg.max_updates = 3;
    cfg.rewind_optimizer = rewind;
    Distiller d(s, Distillation::Partial, cfg);
    test::ReferenceDistiller ref(r, cfg.threshold, cfg.max_updates, cfg.lr, rewind);
    const DistillOutcome o = d.distill(sc.x, sc.target);
    const test::RefOutcome ro = ref.run(sc.x, l8, 32, 48);
    REQUIRE(o.steps == 3);
    REQUIRE(ro.trace.back().acc < ro.acc);  // restored to a middle step
    REQUIRE(ro.acc > ro.acc_before);
    const nn::Adam& adam = *d.optimizer();
    for (size_t i = 0; i < adam.params().size(); ++i) {
      // the best copy was taken after a middle step (1 or 2): the step count says which state
      REQUIRE(adam.steps(i) == (rewind ? ref.adam().steps(i) : 3));
      REQUIRE(ref.adam().steps(i) == (rewind ? adam.steps(i) : 3));
      REQUIRE(adam.exp_avg(i).to_vector<float>() == ref.adam().exp_avg(i).to_vector<float>());
      REQUIRE(adam.exp_avg_sq(i).to_vector<float>() == ref.adam().exp_avg_sq(i).to_vector<float>());
    }
    if (rewind) REQUIRE(adam.steps(0) < 3);
    // The next key frame trains from those moments: same as the reference, bit for bit.
    Scene sc2(32, 48, 7);
    std::vector<uint8_t> l82;
    for (int64_t v : sc2.target.labels.to_vector<int64_t>()) l82.push_back(uint8_t(v));
    (void)d.distill(sc2.x, sc2.target);
    (void)ref.run(sc2.x, l82, 32, 48);
    REQUIRE(values(s.parameters()) == values(r.parameters()));
  }
}

TEST_CASE("algorithm 1: no distillation only evaluates", "[distill][portable]") {
  Student s;
  Scene sc(32, 32, 5);
  auto before = values(s.parameters());
  Distiller d(s, Distillation::None);
  DistillOutcome o = d.distill(sc.x, sc.target);
  REQUIRE(o.steps == 0);
  REQUIRE(values(s.parameters()) == before);
}

TEST_CASE("blob: partial fp32 is 24 + 413,860 bytes and round-trips exactly", "[blob][portable]") {
  Student a, b;
  REQUIRE(blob_size(a, Distillation::Partial, BlobEncoding::F32) == 24 + 413860);
  REQUIRE(blob_size(a, Distillation::Full, BlobEncoding::F32) == 24 + 483873 * 4);
  REQUIRE(blob_size(a, Distillation::Partial, BlobEncoding::F16) == 24 + 413860 / 2);
  auto blob = pack_trained(a, Distillation::Partial, BlobEncoding::F32);
  unpack_trained(b, Distillation::Partial, blob.data(), blob.size());
  for (auto& n : a.trained_names(Distillation::Partial))
    REQUIRE(a.parameter(n).to_vector<float>() == b.parameter(n).to_vector<float>());
  // fp16: each value is rounded to nearest half once (tensor/half.h), so it is off by at most
  // u = 2^-11 of itself where the half is normal (|x| >= 2^-14) and by at most half the subnormal
  // spacing, 2^-25, below that; 2^-11 |x| + 2^-25 bounds both. Overflow (|x| >= 65520 rounds to
  // inf) is ruled out by checking the magnitudes first.
  Student c;
  auto h = pack_trained(a, Distillation::Partial, BlobEncoding::F16);
  unpack_trained(c, Distillation::Partial, h.data(), h.size());
  for (auto& n : a.trained_names(Distillation::Partial)) {
    INFO(n);
    auto v = a.parameter(n).to_vector<double>();
    double largest = 0;
    for (double& x : v) {
      largest = std::max(largest, std::abs(x));
      x = test::kU16 * std::abs(x) + 0x1p-25;
    }
    REQUIRE(largest < 65504.0);
    const Tensor bound = Tensor::from_vector(v, a.parameter(n).shape());
    ST_REQUIRE_WITHIN(c.parameter(n), a.parameter(n), bound);
  }
}

TEST_CASE("blob: every corruption is refused and leaves the weights untouched", "[blob][errors][portable]") {
  Student a, b;
  auto blob = pack_trained(a, Distillation::Partial, BlobEncoding::F32);
  auto before = values(b.parameters());
  auto expect_refused = [&](std::vector<uint8_t> bad, const char* what) {
    INFO(what);
    REQUIRE_THROWS_WITH(unpack_trained(b, Distillation::Partial, bad.data(), bad.size()),
                        Contains(what));
    REQUIRE(values(b.parameters()) == before);
  };
  expect_refused(std::vector<uint8_t>(blob.begin(), blob.begin() + 10), "shorter");
  expect_refused(std::vector<uint8_t>(blob.begin(), blob.end() - 4), "bytes, expected");
  auto m = blob;
  m[0] ^= 1;
  expect_refused(m, "magic");
  m = blob;
  m[4] = 7;
  expect_refused(m, "version");
  m = blob;
  m[6] = 5;
  expect_refused(m, "encoding");
  m = blob;
  m[9] ^= 0x40;
  expect_refused(m, "layout hash");
  m = blob;
  float nan = std::numeric_limits<float>::quiet_NaN();
  std::memcpy(m.data() + 24 + 400, &nan, 4);
  expect_refused(m, "non-finite");
  // A full-mode blob is not a partial-mode blob.
  auto full = pack_trained(a, Distillation::Full, BlobEncoding::F32);
  expect_refused(full, "layout hash");
}

TEST_CASE("Adam::warm_start: a migrated optimisation steps lr / 10, then lr * 0.19, per parameter, "
          "whatever the gradient's size, and a rewind to before its first step re-arms it",
          "[distill][portable]") {
  const double lr = 0.01;
  const std::vector<float> w0 = {0.5f, -0.25f, 1.0f, 0.0f};
  const std::vector<float> g = {1e-3f, -1.0f, 50.0f, -0.02f};  // sizes 5 orders of magnitude apart
  Tensor w = Tensor::from_vector(w0, {4});
  w.set_requires_grad(true);
  Adam opt({w}, {lr, 0.9, 0.999, 1e-8});
  // Float32 rounding of one step: w - step is rounded once (2^-24 relative of a value below
  // |w| + lr), the step itself carries a few roundings (m, v, sqrt, division: < 16 x 2^-24
  // relative); eps 1e-8 against |g| >= 1e-3 changes it by < 1e-5 relative.
  auto check_step = [&](const std::vector<float>& before, double factor) {
    const auto after = w.to_vector<float>();
    for (size_t i = 0; i < before.size(); ++i) {
      const double want = -factor * lr * (g[i] > 0 ? 1.0 : -1.0);
      const double bound = std::ldexp(std::abs(double(before[i])) + lr, -24) +
                           std::abs(want) * (16 * std::ldexp(1.0, -24) + 1e-5);
      INFO("parameter " << i << ": step " << double(after[i]) - before[i] << ", want " << want);
      REQUIRE(std::abs((double(after[i]) - before[i]) - want) <= bound);
    }
  };
  opt.warm_start();
  const Adam::State armed = opt.state();
  REQUIRE(armed.warm_pending);
  w.set_grad(Tensor::from_vector(g, {4}));
  opt.step();
  check_step(w0, 0.1);  // m = (1 - beta1) g, v = g^2, no bias correction
  REQUIRE(opt.steps(0) == Adam::kWarmStartSteps + 1);
  REQUIRE_FALSE(opt.state().warm_pending);
  const auto v = opt.exp_avg_sq(0).to_vector<float>();
  for (size_t i = 0; i < g.size(); ++i)
    REQUIRE(std::abs(double(v[i]) - double(g[i]) * g[i]) <= 4 * std::ldexp(double(g[i]) * g[i], -24));
  const auto w1 = w.to_vector<float>();
  w.set_grad(Tensor::from_vector(g, {4}));
  opt.step();
  check_step(w1, 0.19);  // the momentum builds up: m = 0.9 * 0.1 g + 0.1 g
  // Algorithm 1's best-restore rewinds the optimizer to before its first step: armed again.
  opt.load_state(armed);
  w.set_grad(Tensor::from_vector(g, {4}));
  const auto w2 = w.to_vector<float>();
  opt.step();
  check_step(w2, 0.1);
  // A cold Adam's first step is the full lr for every parameter (the shock warm_start avoids).
  Tensor c = Tensor::from_vector(w0, {4});
  c.set_requires_grad(true);
  Adam cold({c}, {lr, 0.9, 0.999, 1e-8});
  c.set_grad(Tensor::from_vector(g, {4}));
  cold.step();
  const auto ca = c.to_vector<float>();
  for (size_t i = 0; i < g.size(); ++i)
    REQUIRE(std::abs(std::abs(double(ca[i]) - w0[i]) - lr) <=
            std::ldexp(std::abs(double(w0[i])) + lr, -24) + lr * (16 * std::ldexp(1.0, -24) + 1e-5));
}
