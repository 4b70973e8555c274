// The teacher's ResNet-50 + FPN backbone against torchvision's own forward on a seeded model
// (MASKRCNN.md §10.2): tools/make_teacher_golden.py builds it with calibrated FrozenBN statistics,
// writes the weights under Detectron2 names (~110 MB, to a temporary folder, never committed) and
// the stage outputs; we load, fold FrozenBN and compare C2..C5, P2..P6 in both stride
// conventions. Needs Debian's python3-torchvision; reported as skipped without it.
// Tolerance (tests/README.md): the reference is the same network in float64 on the same input,
// and each element carries sigma, the bound on the standard deviation of any float32 forward's
// rounding error there (tools/error_model.py: every dot product's accumulation bound in any
// summation order, the folded batch norms, the residual adds, carried through the layers). Ours
// must stay within lambda * sigma, lambda = 8; the generator checks torch's float32 against the
// same bound.
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>

#include "teacher_port/backbone.h"
#include "teacher_port/heads.h"
#include "edge/simulate.h"
#include "teacher/teacher.h"
#include "synthetic_clip.h"
#include "teacher_port/maskrcnn.h"
#include "teacher_port/random_weights.h"
#include "golden_checks.h"
#include "test_util.h"

using namespace st;
using Catch::Matchers::Contains;
namespace fs = std::filesystem;

namespace {
struct TempDir {
  fs::path p;
  TempDir() {
    p = fs::temp_directory_path() / ("st_teacher_" + std::to_string(::getpid()));
    fs::create_directories(p);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(p, ec);
  }
};

}  // namespace

bool test::have_torchvision() {
  return std::system("/usr/bin/python3 -c 'import torchvision' >/dev/null 2>&1") == 0;
}
using test::have_torchvision;

void test::check_teacher_backbone_golden(Device device) {
  TempDir tmp;
  for (const char* mode : {"d2", "tv"}) {
    INFO("mode " << mode);
    const fs::path dir = tmp.p / mode;
    const std::string cmd = "/usr/bin/python3 '" + (test::source_dir() / "tools" / "make_teacher_golden.py").string() +
                            "' '" + dir.string() + "' --mode " + mode + " --size 64x96";
    REQUIRE(std::system(cmd.c_str()) == 0);
    auto w = safetensors::load(dir / "weights.safetensors");
    auto s = safetensors::load(dir / "stages.safetensors");
    teacher::BackboneOptions o;
    o.stride_in_1x1 = std::string(mode) == "d2";
    teacher::Backbone bb(w, o);
    bb.to(device);
    auto out = bb.forward(s.get("x").to(device));
    REQUIRE(out.p[0].device() == device);
    REQUIRE(s.metadata.count("error_model_lambda"));
    const double lambda = std::stod(s.metadata.at("error_model_lambda"));
    REQUIRE(lambda == 8.0);
    INFO("torch float32 worst |err| / sigma per stage: " << s.metadata.at("torch_f32_worst_ratio"));
    auto bound = [&](const std::string& name) { return mul_scalar(s.get(name + "_sigma"), lambda); };
    auto check = [&](const Tensor& ours, const std::string& name) {
      INFO(name);
      REQUIRE(ours.shape() == s.get(name).shape());
      ST_REQUIRE_WITHIN(ours.to(Device::cpu()), s.get(name + "_f64"), bound(name));
    };
    for (int i = 0; i < 4; ++i) check(out.c[size_t(i)], "c" + std::to_string(i + 2));
    for (int i = 0; i < 5; ++i) check(out.p[size_t(i)], "p" + std::to_string(i + 2));
    // The other stride convention computes something else, far outside the bound.
    o.stride_in_1x1 = !o.stride_in_1x1;
    teacher::Backbone other(w, o);
    REQUIRE_FALSE(test::compare_within(other.forward(s.get("x")).c[1], s.get("c3_f64"), bound("c3")).ok);
  }
}

TEST_CASE("teacher: ResNet-50 + FPN backbone matches torchvision (Detectron2 and torchvision strides)",
          "[teacher][golden]") {
  if (!have_torchvision()) ST_SKIP("Debian's python3-torchvision is not installed (tools/bootstrap.sh --bench)");
  test::check_teacher_backbone_golden(Device::cpu());
}

TEST_CASE("teacher: backbone weights are validated by name and shape", "[teacher][errors]") {
  safetensors::File empty;
  REQUIRE_THROWS_WITH(teacher::Backbone(empty), Contains("missing tensor 'backbone.bottom_up.stem.conv1.weight'"));
}

// Heads, teacher-forced on torchvision's own P2..P6 and boxes. The reference is the same heads in
// float64 on the same inputs, and each output element carries sigma, the bound on the standard
// deviation of any float32 implementation's rounding error there (tools/error_model.py: the
// accumulation bound of every dot product, in any summation order, carried through the layers,
// and ROIAlign's sample-coordinate rounding). Ours must stay within lambda * sigma (lambda = 8:
// a chance of 2.5e-14 per element to exceed it); the generator checks torch's float32 against
// the same bound (its worst ratio is printed).
TEST_CASE("teacher: RPN, box and mask heads match torchvision (teacher-forced)", "[teacher][golden]") {
  if (!have_torchvision()) ST_SKIP("Debian's python3-torchvision is not installed (tools/bootstrap.sh --bench)");
  TempDir tmp;
  const std::string cmd = "/usr/bin/python3 '" + (test::source_dir() / "tools" / "make_teacher_golden.py").string() +
                          "' '" + tmp.p.string() + "' --mode heads --size 64x96";
  REQUIRE(std::system(cmd.c_str()) == 0);
  auto w = safetensors::load(tmp.p / "heads_weights.safetensors");
  auto io = safetensors::load(tmp.p / "heads_io.safetensors");
  REQUIRE(io.metadata.count("error_model_lambda"));
  const double lambda = std::stod(io.metadata.at("error_model_lambda"));
  REQUIRE(lambda == 8.0);
  INFO("torch float32 worst |err| / sigma per output: " << io.metadata.at("torch_f32_worst_ratio"));
  // The float64 reference of an output and its bound, in the layout `view` gives them.
  auto ref = [&](const std::string& name, const std::function<Tensor(const Tensor&)>& view) {
    return std::make_pair(view(io.get(name + "_f64")), mul_scalar(view(io.get(name + "_sigma")), lambda));
  };
  auto same = [](const Tensor& t) { return t; };
  std::vector<Tensor> p;
  for (int l = 2; l <= 6; ++l) p.push_back(io.get("p" + std::to_string(l)));
  // RPN head: per level, flattened in (y, x, a) order.
  teacher::RpnHead rpn(w);
  auto lv = rpn.forward(p);
  REQUIRE(lv.size() == 5);
  for (int l = 0; l < 5; ++l) {
    INFO("level P" << l + 2);
    const Tensor obj = io.get("rpn_obj" + std::to_string(l + 2));  // (1, A, H, W)
    const int64_t A = obj.size(1), H = obj.size(2), W = obj.size(3);
    auto logits = ref("rpn_obj" + std::to_string(l + 2),
                      [&](const Tensor& t) { return t.permute({0, 2, 3, 1}).reshape({H * W * A}); });
    auto deltas = ref("rpn_deltas" + std::to_string(l + 2), [&](const Tensor& t) {
      return t.reshape({1, A, 4, H, W}).permute({0, 3, 4, 1, 2}).reshape({H * W * A, 4});
    });
    ST_REQUIRE_WITHIN(lv[size_t(l)].logits, logits.first, logits.second);
    ST_REQUIRE_WITHIN(lv[size_t(l)].deltas, deltas.first, deltas.second);
  }
  // torchvision's pooler: its level rule, unaligned ROIAlign with 2 samples per bin.
  teacher::PoolerOptions po;
  po.levels = teacher::Convention::Torchvision;
  po.aligned = false;
  po.sampling_ratio = 2;
  std::vector<Tensor> p25(p.begin(), p.begin() + 4);
  teacher::BoxHead box(w);
  auto bo = box.forward(p25, io.get("proposals"), po);
  auto cls = ref("class_logits", same), reg = ref("box_regression", same);
  ST_REQUIRE_WITHIN(bo.class_logits, cls.first, cls.second);
  ST_REQUIRE_WITHIN(bo.box_deltas, reg.first, reg.second);
  teacher::MaskHead mask(w);
  REQUIRE(mask.classes() == 91);
  auto ml = ref("mask_logits", same);
  ST_REQUIRE_WITHIN(mask.forward(p25, io.get("mask_boxes"), po), ml.first, ml.second);
  // The bound is tight enough to see a real mistake: the mask head on the boxes shifted by one
  // pixel is far outside it.
  Tensor shifted = add_scalar(io.get("mask_boxes"), 1.0);
  REQUIRE_FALSE(test::compare_within(mask.forward(p25, shifted, po), ml.first, ml.second).ok);
  safetensors::File empty;
  REQUIRE_THROWS_WITH(teacher::BoxHead(empty), Contains("roi_heads.box_head.fc1.weight"));
}

// torchvision's model([img]) vs ours in torchvision conventions on the seeded model, with the
// model's resize set to (min_size, max_size) (the input is 64 x 96), ours on `device`.
void test::check_teacher_end_to_end(int64_t min_size, int64_t max_size, Device device) {
  TempDir tmp;
  const std::string cmd = "/usr/bin/python3 '" + (test::source_dir() / "tools" / "make_teacher_golden.py").string() +
                          "' '" + tmp.p.string() + "' --mode e2e --size 64x96 --resize " +
                          std::to_string(min_size) + "," + std::to_string(max_size);
  REQUIRE(std::system(cmd.c_str()) == 0);
  auto w = safetensors::load(tmp.p / "e2e_weights.safetensors");
  auto io = safetensors::load(tmp.p / "e2e_io.safetensors");
  teacher::MaskRcnnOptions opt = teacher::MaskRcnnOptions::torchvision();
  opt.min_size = min_size;
  opt.max_size = max_size;
  teacher::MaskRcnn model(w, opt);
  model.to(device);
  Tensor bgr = io.get("bgr");
  const int64_t H = bgr.size(0), W = bgr.size(1);
  // The network's input: normalised ((x / 255 - mean) / std: three roundings on values up to
  // (1 + |mean|) / std), resized (bilinear, torch's float rounding: a few roundings of the value),
  // zero-padded to /32; ours and torchvision's are each within that of the exact input.
  const Tensor input = model.preprocess(bgr.data<uint8_t>(), H, W);
  const Tensor ref_in = io.get("input");
  REQUIRE(input.shape() == ref_in.shape());
  {
    const int64_t plane = ref_in.size(2) * ref_in.size(3);
    auto rv = ref_in.to_vector<double>();
    std::vector<double> bound(rv.size());
    for (size_t i = 0; i < rv.size(); ++i) {
      const size_t c = i / size_t(plane) % 3;
      bound[i] = 2 * (4 * test::kU32 * (1 + opt.mean[c]) / opt.std[c] + 8 * test::kU32 * std::abs(rv[i]));
    }
    INFO("network input");
    ST_REQUIRE_WITHIN(input, ref_in, Tensor::from_vector(bound, ref_in.shape()));
  }
  auto r = model.run(bgr.data<uint8_t>(), H, W);
  Tensor rb = io.get("boxes");
  INFO("network input " << model.network_size(H, W)[0] << "x" << model.network_size(H, W)[1]
       << "; ours " << r.detections.boxes.size(0) << " detections, torchvision " << rb.size(0));
  REQUIRE(rb.size(0) > 10);
  REQUIRE(r.detections.boxes.shape() == rb.shape());
  // The one comparison in the suite whose tolerances are fixed, not derived (tests/README.md):
  // this random network's detections are full of near-ties (top-k, NMS, the top-100 cut) that
  // float32 rounding may flip, and a rigorous bound carried through ~60 layers is far too loose to
  // tell which. So detections are matched as a set (MASKRCNN.md §10.2): each of torchvision's must
  // have one of ours with its label, its box to 0.1 px and its score to 1e-3; at least 95% must
  // match. The generator checks on every run that these are at least twice torch's own float32
  // error on this model and input (against its float64 run; in the metadata), and each stage is
  // tested with derived bounds on its own (backbone, heads, proposals, box inference, pastes). The
  // same weights run with one switch wrong (Detectron2's stride placement) match fewer than half.
  INFO("torch float32 vs float64 on this model: " << io.metadata.at("torch_f32_vs_f64"));
  const auto tb = rb.to_vector<float>(), ts = io.get("scores").to_vector<float>();
  const auto tl = io.get("labels").to_vector<int64_t>();
  const int64_t n = rb.size(0);
  std::vector<int64_t> match;  // match[i]: our detection for torchvision's i, or -1
  auto count_matches = [&](const teacher::Detections& d) {
    const auto ob = d.boxes.to_vector<float>(), os = d.scores.to_vector<float>();
    const int64_t m = d.boxes.size(0);
    int64_t matched = 0;
    std::vector<bool> used(size_t(m), false);
    match.assign(size_t(n), -1);
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j < m; ++j) {
        if (used[size_t(j)] || d.classes[size_t(j)] != tl[size_t(i)]) continue;
        bool same = std::abs(os[size_t(j)] - ts[size_t(i)]) <= 1e-3f;
        for (int k = 0; k < 4 && same; ++k)
          same = std::abs(ob[size_t(j * 4 + k)] - tb[size_t(i * 4 + k)]) <= 0.1f;
        if (same) {
          used[size_t(j)] = true;
          match[size_t(i)] = j;
          ++matched;
          break;
        }
      }
    return matched;
  };
  teacher::MaskRcnnOptions wrong = opt;
  wrong.stride_in_1x1 = true;  // Detectron2's stride placement on torchvision's weights
  teacher::MaskRcnn model_wrong(w, wrong);
  model_wrong.to(device);
  auto rw = model_wrong.run(bgr.data<uint8_t>(), H, W);
  const int64_t matched_wrong = count_matches(rw.detections);
  const int64_t matched = count_matches(r.detections);
  INFO(matched << " of " << n << " detections matched; " << matched_wrong
               << " with Detectron2's stride placement");
  REQUIRE(matched >= n * 95 / 100);
  REQUIRE(matched_wrong < n / 2);
  REQUIRE(r.mask_probs.size(0) == n);
  REQUIRE(r.masks.size() == size_t(n));
  // Masks (torchvision's interpolating paste, thresholded at 0.5) of the matched detections, by
  // mismatch fraction: pixels that differ over pixels that are on in either. Boxes agree to
  // ~0.02 px, so the integer box of the paste can move by one pixel where a coordinate sits at a
  // truncation edge; over all matched masks at most 2% of the pixels may differ.
  const Tensor tm = io.get("masks");
  REQUIRE(tm.shape() == Shape{n, H, W});
  const uint8_t* tmv = tm.data<uint8_t>();
  int64_t differ = 0, on = 0;
  for (int64_t i = 0; i < n; ++i) {
    if (match[size_t(i)] < 0) continue;
    const auto& ours = r.masks[size_t(match[size_t(i)])];
    for (int64_t k = 0; k < H * W; ++k) {
      const bool a = ours[size_t(k)] != 0, b = tmv[i * H * W + k] != 0;
      differ += a != b;
      on += a || b;
    }
  }
  INFO(differ << " of " << on << " mask pixels differ");
  REQUIRE(on > 0);
  REQUIRE(double(differ) <= 0.02 * double(on));
}

TEST_CASE("teacher: end to end in torchvision conventions matches torchvision's model output",
          "[teacher][golden]") {
  if (!have_torchvision()) ST_SKIP("Debian's python3-torchvision is not installed (tools/bootstrap.sh --bench)");
  test::check_teacher_end_to_end(64, 96, Device::cpu());  // the input at its own size
}

TEST_CASE("teacher: end to end with torchvision's resize matches torchvision's model output",
          "[teacher][golden]") {
  if (!have_torchvision()) ST_SKIP("Debian's python3-torchvision is not installed (tools/bootstrap.sh --bench)");
  test::check_teacher_end_to_end(80, 120, Device::cpu());  // 64 x 96 -> 80 x 120: resize, boxes and masks mapped back
}

TEST_CASE("teacher: the Mask R-CNN server teacher labels frames (seeded model)", "[teacher]") {
  REQUIRE_THROWS_WITH(
      teachers::MaskRcnnTeacher::load("/nonexistent/teacher.safetensors", Device::cpu()),
      Contains("does not exist"));
  if (!have_torchvision()) ST_SKIP("Debian's python3-torchvision is not installed (tools/bootstrap.sh --bench)");
  TempDir tmp;
  const std::string cmd = "/usr/bin/python3 '" + (test::source_dir() / "tools" / "make_teacher_golden.py").string() +
                          "' '" + tmp.p.string() + "' --mode e2e --size 64x96";
  REQUIRE(std::system(cmd.c_str()) == 0);
  // The seeded model converted to Detectron2's class layout by tools/convert_teacher.py.
  // Detectron2 conventions for the heads and glue, but the backbone stride placement and input
  // normalisation the seeded (torchvision-built) model was made and calibrated with.
  teacher::MaskRcnnOptions o = teacher::MaskRcnnOptions::detectron2();
  const auto tv = teacher::MaskRcnnOptions::torchvision();
  o.stride_in_1x1 = tv.stride_in_1x1;
  o.bgr255 = tv.bgr255;
  o.mean = tv.mean;
  o.std = tv.std;
  auto model = teachers::MaskRcnnTeacher::load(tmp.p / "e2e_weights_d2layout.safetensors",
                                               Device::cpu(), &o);
  teachers::MaskRcnnTeacher t(model, "seeded");
  auto io = safetensors::load(tmp.p / "e2e_io.safetensors");
  const Tensor& frame = io.get("bgr");
  auto out = t.run(0, frame.data<uint8_t>(), 64, 96);
  REQUIRE(out.height == 64);
  REQUIRE(out.width == 96);
  REQUIRE(out.labels.size() == size_t(64 * 96));
  for (uint8_t v : out.labels) REQUIRE(v <= 8);
  REQUIRE(out.boxes.has_value());
  // The seeded model favours COCO person (torchvision label 1 -> Detectron2 class 0): with
  // Detectron2's conventions and the 0.5 threshold, whatever it keeps is painted as class 0.
  int64_t person = 0;
  for (uint8_t v : out.labels) person += v == 0;
  INFO(out.boxes->size() << " boxes, " << person << " person pixels");
  REQUIRE(out.boxes->size() > 0);
  REQUIRE(person > 0);
  for (uint8_t v : out.labels) REQUIRE((v == 0 || v == 2 || v == 8));

  // The same weights as the live teacher of `shadowtutor simulate` (Detectron2 conventions): a
  // short synthetic clip, partial distillation on the Mask R-CNN's labels and boxes.
  test::SyntheticClip clip("maskrcnn", 12);
  edge::SimOptions so;
  so.video = clip.frames;
  so.maskrcnn = tmp.p / "e2e_weights_d2layout.safetensors";
  so.progress = false;
  so.eval_every = 4;
  so.distill.max_stride = so.distill.min_stride;  // key frames 0 and 8
  edge::SimResult sr = edge::simulate(so);
  REQUIRE(sr.frames == 12);
  REQUIRE(sr.key_frames == 2);
  REQUIRE(sr.teacher.find("Mask R-CNN") != std::string::npos);
  REQUIRE(sr.teacher_calls >= 3);
  REQUIRE(sr.frame_miou.size() == 3);
  for (double m : sr.frame_miou) REQUIRE((m >= 0.0 && m <= 1.0));
}

TEST_CASE("teacher: a seeded random model loads, runs end to end and is deterministic", "[teacher]") {
  const auto w = teacher::random_maskrcnn_weights(5);
  const auto w2 = teacher::random_maskrcnn_weights(5);
  REQUIRE(w.tensors.size() == w2.tensors.size());
  for (size_t i = 0; i < w.tensors.size(); ++i)
    REQUIRE(w.tensors[i].second.to_vector<float>() == w2.tensors[i].second.to_vector<float>());
  const int64_t H = 96, W = 128;
  std::vector<uint8_t> frame(size_t(H * W * 3));
  for (size_t i = 0; i < frame.size(); ++i) frame[i] = uint8_t((i * 7 + i / 300) % 256);
  teacher::MaskRcnn m(w);
  auto a = m.run(frame.data(), H, W), b = m.run(frame.data(), H, W);
  INFO(a.detections.boxes.size(0) << " detections");
  REQUIRE(a.detections.boxes.size(0) > 0);  // the classifier is biased towards person and car
  REQUIRE(a.detections.boxes.to_vector<float>() == b.detections.boxes.to_vector<float>());
  REQUIRE(a.label_map == b.label_map);
  REQUIRE(a.label_map.size() == size_t(H * W));
  for (uint8_t v : a.label_map) REQUIRE(v <= 8);
  int64_t biased = 0;
  for (int64_t c : a.detections.classes) {
    REQUIRE((c >= 0 && c < 80));
    biased += c == 0 || c == 2;
  }
  REQUIRE(biased * 2 > a.detections.boxes.size(0));
  REQUIRE(a.ms.total() > 0);
  REQUIRE(a.ms.backbone > 0);
  // Loading validates names: drop one tensor and the error names it.
  auto broken = w;
  broken.tensors.erase(broken.tensors.begin() + 7);
  const std::string dropped = w.tensors[7].first;
  REQUIRE_THROWS_WITH(teacher::MaskRcnn(broken), Contains(dropped));
  // A head tensor of the wrong shape is named at load time, not at the first frame.
  for (const char* name : {"roi_heads.box_head.fc2.weight", "roi_heads.box_predictor.bbox_pred.bias",
                           "roi_heads.mask_head.deconv.weight", "proposal_generator.rpn_head.anchor_deltas.bias"}) {
    auto bad = w;
    for (auto& [n, t] : bad.tensors)
      if (n == name) t = Tensor::zeros({t.size(0) + 1});
    REQUIRE_THROWS_WITH(teacher::MaskRcnn(bad), Contains(name));
  }
}
