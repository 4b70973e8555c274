// The Mask R-CNN teacher's detection ops against torchvision 0.14 (tests/golden/teacher_ops.safetensors,
// made by tools/make_teacher_ops_golden.py): ROIAlign in both conventions, NMS, exact per-group
// NMS, box decoding with the clamp. Our kernels follow torchvision's float32 operation order, so
// tolerances are tight: ROIAlign 1e-5 absolute on O(1) features; boxes 1e-4 px (exp() of two
// libms); NMS indices exactly.
#include <nlohmann/json.hpp>

#include "teacher_port/detect_ops.h"
#include "teacher_port/box_inference.h"
#include "teacher_port/glue.h"
#include "teacher_port/proposals.h"
#include "tensor/safetensors.h"
#include "test_util.h"

using namespace st;
using Catch::Matchers::Contains;

namespace {
safetensors::File golden() {
  auto f = safetensors::load(test::source_dir() / "tests" / "golden" / "teacher_ops.safetensors");
  REQUIRE(f.metadata.at("generator") == "tools/make_teacher_ops_golden.py");
  return f;
}
std::vector<int64_t> ints(const Tensor& t) { return t.to_vector<int64_t>(); }
}  // namespace

TEST_CASE("teacher ops: ROIAlign matches torchvision (aligned/adaptive and unaligned/sampling 2)",
          "[teacher][golden][portable]") {
  auto f = golden();
  auto cases = nlohmann::json::parse(f.metadata.at("cases"));
  Tensor x = f.get("roi.x");
  for (const char* name : {"roi_box", "roi_mask", "roi_tv"}) {
    INFO(name);
    const auto& c = cases.at(name);
    Tensor rois = f.get(std::string(name) + ".rois"), ref = f.get(std::string(name) + ".y");
    Tensor y = teacher::roi_align(x, rois, c.at("out_h"), c.at("out_w"), c.at("scale"),
                                  c.at("sampling_ratio"), c.at("aligned"));
    REQUIRE(y.shape() == ref.shape());
    ST_REQUIRE_CLOSE(y, ref, 1e-5, 1e-5);
    // The f64 path agrees with the f32 reference up to f32 rounding.
    Tensor y64 = teacher::roi_align(x.to(DType::F64), rois.to(DType::F64), c.at("out_h"),
                                    c.at("out_w"), c.at("scale"), c.at("sampling_ratio"),
                                    c.at("aligned"));
    ST_REQUIRE_CLOSE(y64, ref.to(DType::F64), 1e-5, 1e-5);
  }
  // The special boxes at the end: fully outside and empty give zeros.
  Tensor y = teacher::roi_align(x, f.get("roi_box.rois"), 7, 7, 0.25, 0, true);
  const int64_t R = y.size(0);
  for (int64_t r : {R - 5, R - 4}) {
    auto v = y.slice(0, r, r + 1).contiguous().to_vector<float>();
    for (float e : v) REQUIRE(e == 0.0f);
  }
}

TEST_CASE("teacher ops: NMS and exact per-group NMS match torchvision", "[teacher][golden][portable]") {
  auto f = golden();
  Tensor boxes = f.get("nms.boxes"), scores = f.get("nms.scores");
  std::vector<int64_t> groups = ints(f.get("nms.groups"));
  for (const char* tag : {"05", "07"}) {
    const double thr = std::string(tag) == "05" ? 0.5 : 0.7;
    INFO("threshold " << thr);
    REQUIRE(teacher::nms(boxes, scores, thr) == ints(f.get(std::string("nms.keep") + tag)));
    REQUIRE(teacher::batched_nms(boxes, scores, groups, thr) ==
            ints(f.get(std::string("nms.bkeep") + tag)));
  }
  REQUIRE(teacher::nms(boxes, scores, 0.5).size() < size_t(boxes.size(0)));  // it suppressed
}

TEST_CASE("teacher ops: box decoding with the dw/dh clamp matches torchvision", "[teacher][golden][portable]") {
  auto f = golden();
  Tensor anchors = f.get("decode.anchors"), deltas = f.get("decode.deltas");
  ST_REQUIRE_CLOSE(teacher::decode_boxes(deltas, anchors, {1, 1, 1, 1}), f.get("decode.w1"), 1e-4,
                   1e-6);
  ST_REQUIRE_CLOSE(teacher::decode_boxes(deltas, anchors, {10, 10, 5, 5}), f.get("decode.w10"),
                   1e-4, 1e-6);
}

TEST_CASE("teacher ops: small hand-checked cases and bad input", "[teacher][errors][portable]") {
  // Two identical boxes: the lower score goes; a disjoint one stays. IoU exactly 0.5 is kept
  // (suppression needs IoU > threshold).
  Tensor b = Tensor::from_vector<float>({0, 0, 10, 10, 0, 0, 10, 10, 20, 20, 30, 30, 0, 0, 10, 5},
                                        {4, 4});
  Tensor s = Tensor::from_vector<float>({0.5f, 0.9f, 0.1f, 0.3f}, {4});
  REQUIRE(teacher::nms(b, s, 0.5) == std::vector<int64_t>{1, 3, 2});
  REQUIRE(teacher::nms(b, s, 0.49) == std::vector<int64_t>{1, 2});
  // In different groups the identical boxes 0 and 1 no longer suppress each other.
  REQUIRE(teacher::batched_nms(b, s, {0, 1, 0, 1}, 0.5) == std::vector<int64_t>{1, 0, 3, 2});
  REQUIRE(teacher::batched_nms(b, s, {0, 0, 0, 0}, 0.5) == teacher::nms(b, s, 0.5));
  REQUIRE(teacher::topk(s, 2) == std::vector<int64_t>{1, 0});
  REQUIRE(teacher::topk(s, 10).size() == 4);
  // ROIAlign of a constant map is that constant wherever the box lies inside.
  Tensor x = Tensor::full({1, 2, 8, 8}, 3.0);
  Tensor r = Tensor::from_vector<float>({0, 4, 4, 20, 24}, {1, 5});
  auto v = teacher::roi_align(x, r, 2, 2, 0.25, 0, true).to_vector<float>();
  for (float e : v) REQUIRE(e == Approx(3.0f));

  REQUIRE_THROWS_WITH(teacher::roi_align(x, Tensor::from_vector<float>({1, 0, 0, 4, 4}, {1, 5}), 2,
                                         2, 1.0, 0, true),
                      Contains("batch index 1") && Contains("1 images"));
  REQUIRE_THROWS_WITH(teacher::roi_align(x, Tensor::zeros({3, 4}), 2, 2, 1.0, 0, true),
                      Contains("(R, 5)"));
  REQUIRE_THROWS_WITH(teacher::roi_align(Tensor::zeros({2, 8, 8}), r, 2, 2, 1.0, 0, true),
                      Contains("(N, C, H, W)"));
  REQUIRE_THROWS_WITH(teacher::nms(b, Tensor::zeros({3}), 0.5), Contains("scores"));
  REQUIRE_THROWS_WITH(teacher::batched_nms(b, s, {0, 1}, 0.5), Contains("2 group ids"));
  REQUIRE_THROWS_WITH(teacher::decode_boxes(Tensor::zeros({2, 4}), b, {1, 1, 1, 1}),
                      Contains("2 deltas for 4 boxes"));
}

TEST_CASE("teacher glue: anchors in both conventions", "[teacher][golden][portable]") {
  auto f = golden();
  for (int size : {32, 64, 128, 256, 512}) {
    INFO("size " << size);
    for (auto [conv, tag] : {std::pair{teacher::Convention::Torchvision, "tv"},
                             std::pair{teacher::Convention::Detectron2, "d2"}}) {
      auto cell = teacher::cell_anchors(size, {0.5, 1.0, 2.0}, conv);
      std::vector<float> flat;
      for (auto& c : cell) flat.insert(flat.end(), c.begin(), c.end());
      Tensor ref = f.get(std::string("anchors.") + tag + std::to_string(size));
      REQUIRE(flat == ref.to_vector<float>());  // exact
    }
  }
  auto cell = teacher::cell_anchors(64, {0.5, 1.0, 2.0}, teacher::Convention::Torchvision);
  Tensor grid = teacher::grid_anchors(cell, 5, 7, 16);
  REQUIRE(grid.to_vector<float>() == f.get("anchors.grid_tv64_5x7_s16").to_vector<float>());
  // Detectron2's documented values for size 32 (MASKRCNN.md §4.2).
  auto d2 = teacher::cell_anchors(32, {0.5, 1.0, 2.0}, teacher::Convention::Detectron2);
  REQUIRE(d2[0][0] == Approx(-22.627417f));
  REQUIRE(d2[1][1] == -16.0f);
}

TEST_CASE("teacher glue: FPN level assignment in both conventions", "[teacher][golden][portable]") {
  auto f = golden();
  Tensor boxes = f.get("levels.boxes");
  REQUIRE(teacher::assign_levels(boxes, teacher::Convention::Torchvision) == ints(f.get("levels.tv")));
  REQUIRE(teacher::assign_levels(boxes, teacher::Convention::Detectron2) == ints(f.get("levels.d2")));
  // 224 x 224 is level 4 by definition; tiny boxes clamp to 2, huge ones to 5.
  Tensor b = Tensor::from_vector<float>({0, 0, 224, 224, 0, 0, 2, 2, 0, 0, 5000, 5000}, {3, 4});
  REQUIRE(teacher::assign_levels(b, teacher::Convention::Detectron2) == std::vector<int64_t>{4, 2, 5});
}

TEST_CASE("teacher glue: Detectron2 mask paste and the 9-class label map", "[teacher][golden][portable]") {
  auto f = golden();
  Tensor masks = f.get("paste.masks"), boxes = f.get("paste.boxes"), ref = f.get("paste.out");
  const int64_t n = masks.size(0), H = ref.size(1), W = ref.size(2);
  auto m = masks.to_vector<float>();
  auto b = boxes.to_vector<float>();
  auto r = ref.to_vector<uint8_t>();
  std::vector<std::vector<uint8_t>> pasted;
  int64_t mismatches = 0, on = 0;
  for (int64_t i = 0; i < n; ++i) {
    std::vector<uint8_t> out(size_t(H * W), 0);
    teacher::paste_mask(m.data() + i * 28 * 28, 28, {b[i * 4], b[i * 4 + 1], b[i * 4 + 2], b[i * 4 + 3]},
                        H, W, out.data());
    for (int64_t p = 0; p < H * W; ++p) {
      mismatches += out[size_t(p)] != r[size_t(i * H * W + p)];
      on += out[size_t(p)];
    }
    pasted.push_back(std::move(out));
  }
  INFO(mismatches << " mismatching pixels of " << n * H * W << " (" << on << " on)");
  REQUIRE(on > 100);
  // Masks by mismatch fraction: a pixel whose value is within float rounding of 0.5 may flip.
  REQUIRE(double(mismatches) / double(n * H * W) <= 1e-3);
  auto classes = ints(f.get("paste.classes"));
  auto label = teacher::label_map(classes, pasted, H, W);
  auto lref = f.get("paste.label").to_vector<uint8_t>();
  int64_t lmis = 0;
  for (size_t p = 0; p < label.size(); ++p) lmis += label[p] != lref[p];
  REQUIRE(double(lmis) / double(label.size()) <= 1e-3);
  // The same pastes as one op (the backend kernel, both conventions) give the same bits as the
  // per-mask functions.
  for (auto conv : {teacher::Convention::Detectron2, teacher::Convention::Torchvision}) {
    Tensor op = teacher::paste_masks(masks.reshape({n, 28, 28}), boxes, H, W, conv);
    REQUIRE(op.shape() == Shape{n, H, W});
    const auto ov = op.to_vector<uint8_t>();
    for (int64_t i = 0; i < n; ++i) {
      std::vector<uint8_t> one(size_t(H * W), 0);
      const std::array<float, 4> bx{b[i * 4], b[i * 4 + 1], b[i * 4 + 2], b[i * 4 + 3]};
      if (conv == teacher::Convention::Detectron2)
        teacher::paste_mask(m.data() + i * 784, 28, bx, H, W, one.data());
      else
        teacher::paste_mask_torchvision(m.data() + i * 784, 28, bx, H, W, one.data());
      REQUIRE(std::equal(one.begin(), one.end(), ov.begin() + i * H * W));
    }
  }
  REQUIRE_THROWS_WITH(teacher::paste_masks(Tensor::zeros({2, 28, 27}), Tensor::zeros({2, 4}), 8, 8,
                                           teacher::Convention::Detectron2),
                      Contains("(D, M, M)"));
  REQUIRE_THROWS_WITH(teacher::paste_masks(Tensor::zeros({2, 28, 28}), Tensor::zeros({3, 4}), 8, 8,
                                           teacher::Convention::Detectron2),
                      Contains("boxes must be (2, 4)"));
  // torchvision's paste by hand (and as paste_masks_in_image gives it): an all-ones 2x2 mask in
  // the box (2, 2, 5, 5) expands by (2+2)/2 to (0.5, 0.5, 6.5, 6.5) -> integer box (0, 0)-(6, 6),
  // 7x7 pixels; the padded 4-wide row resized to 7 reads 0, .357, .929, 1, .929, .357, 0.
  {
    std::vector<uint8_t> out(100, 0);
    const std::vector<float> ones(4, 1.0f);
    teacher::paste_mask_torchvision(ones.data(), 2, {2, 2, 5, 5}, 10, 10, out.data());
    for (int64_t y = 0; y < 10; ++y)
      for (int64_t x = 0; x < 10; ++x) {
        INFO("pixel " << x << "," << y);
        const bool inside = x >= 2 && x <= 4 && y >= 2 && y <= 4;
        REQUIRE(out[size_t(y * 10 + x)] == uint8_t(inside));
      }
  }
  // Class 3 (motorcycle) is not tracked: background.
  REQUIRE(teacher::shadowtutor_label(3) == 8);
  REQUIRE(teacher::shadowtutor_label(5) == 2);
  REQUIRE_THROWS_WITH(teacher::label_map({0}, {std::vector<uint8_t>(5)}, 2, 2), Contains("5 pixels"));
}

TEST_CASE("teacher: RPN proposal selection in both conventions", "[teacher][golden][portable]") {
  auto f = golden();
  auto c = nlohmann::json::parse(f.metadata.at("cases")).at("rpn");
  const int64_t H = c.at("img_h"), W = c.at("img_w");
  auto logits = f.get("rpn.logits").to_vector<float>();
  auto deltas = f.get("rpn.deltas").to_vector<float>();
  auto counts = ints(f.get("rpn.counts"));
  std::vector<teacher::RpnLevel> levels;
  int64_t off = 0;
  size_t li = 0;
  for (const auto& g : c.at("grids")) {
    const int64_t gh = g[0], gw = g[1], stride = g[2], size = g[3], n = counts[li++];
    auto cell = teacher::cell_anchors(double(size), {0.5, 1.0, 2.0}, teacher::Convention::Torchvision);
    Tensor anchors = teacher::grid_anchors(cell, gh, gw, stride);
    REQUIRE(anchors.size(0) == n);
    levels.push_back({Tensor::from_vector(std::vector<float>(logits.begin() + off, logits.begin() + off + n), {n}),
                      Tensor::from_vector(std::vector<float>(deltas.begin() + off * 4, deltas.begin() + (off + n) * 4), {n, 4}),
                      anchors});
    off += n;
  }
  for (auto [conv, tag] : {std::pair{teacher::Convention::Torchvision, "tv"},
                           std::pair{teacher::Convention::Detectron2, "d2"}}) {
    INFO(tag);
    auto p = teacher::select_proposals(levels, H, W, conv);
    Tensor rb = f.get(std::string("rpn.") + tag + "_boxes"), rs = f.get(std::string("rpn.") + tag + "_scores");
    REQUIRE(p.boxes.shape() == rb.shape());
    ST_REQUIRE_CLOSE(p.boxes, rb, 1e-3, 1e-6);  // boxes to 1e-3 px
    ST_REQUIRE_CLOSE(p.scores, rs, 1e-6, 1e-5);
    REQUIRE(int64_t(p.level.size()) == p.boxes.size(0));
  }
}

TEST_CASE("teacher: box-head inference in both conventions", "[teacher][golden][portable]") {
  auto f = golden();
  auto c = nlohmann::json::parse(f.metadata.at("cases")).at("boxinf");
  Tensor prop = f.get("boxinf.proposals");
  for (auto [conv, tag, thr] : {std::tuple{teacher::Convention::Torchvision, "tv", 0.05},
                                std::tuple{teacher::Convention::Detectron2, "d2", 0.5}}) {
    INFO(tag);
    teacher::BoxInferenceConfig cfg;
    cfg.score_thresh = thr;
    const std::string p = std::string("boxinf.") + tag;
    auto d = teacher::box_inference(f.get(p + "_logits"), f.get(p + "_deltas"), prop, c.at("img_h"),
                                    c.at("img_w"), conv, cfg);
    Tensor rb = f.get(p + "_boxes");
    REQUIRE(rb.size(0) > 10);
    REQUIRE(d.boxes.shape() == rb.shape());
    ST_REQUIRE_CLOSE(d.boxes, rb, 1e-3, 1e-6);
    ST_REQUIRE_CLOSE(d.scores, f.get(p + "_scores"), 1e-6, 1e-5);
    REQUIRE(d.classes == ints(f.get(p + "_classes")));
  }
  REQUIRE_THROWS_WITH(teacher::box_inference(Tensor::zeros({3, 81}), Tensor::zeros({3, 324}),
                                             Tensor::zeros({3, 4}), 10, 10,
                                             teacher::Convention::Detectron2),
                      Contains("(3, 320)"));
}
