#include "teacher_port/maskrcnn.h"

#include <algorithm>
#include <chrono>
#include <cmath>

#include "tensor/autograd.h"
#include "tensor/ops.h"

namespace st::teacher {

MaskRcnnOptions MaskRcnnOptions::torchvision() {
  MaskRcnnOptions o;
  o.convention = Convention::Torchvision;
  o.stride_in_1x1 = false;
  o.bgr255 = false;
  o.mean = {0.485f, 0.456f, 0.406f};
  o.std = {0.229f, 0.224f, 0.225f};
  o.score_thresh = 0.05;
  o.min_size = 800;
  o.max_size = 1333;
  return o;
}

MaskRcnn::MaskRcnn(const safetensors::File& w, MaskRcnnOptions o)
    : opt_(o),
      backbone_(w, BackboneOptions{o.stride_in_1x1, o.bn_eps}),
      rpn_(w),
      box_(w),
      mask_(w) {
  const int64_t k1 = box_.score_classes(), km = mask_.classes();
  ST_CHECK(km == k1 - 1 || km == k1, "teacher weights: the mask predictor has ", km,
           " classes but the box classifier scores ", k1, " (", k1 - 1, " + background)");
}

void MaskRcnn::to(Device d) {
  backbone_.to(d);
  rpn_.to(d);
  box_.to(d);
  mask_.to(d);
  device_ = d;
}

std::array<int64_t, 2> MaskRcnn::network_size(int64_t h, int64_t w) const {
  if (opt_.min_size <= 0 || opt_.max_size <= 0) return {h, w};
  // torchvision: scale = min(min_size / shorter, max_size / longer) in float32; the output size
  // is floor(size * scale) in double (interpolate with recompute_scale_factor=True).
  const float scale = std::min(float(opt_.min_size) / float(std::min(h, w)),
                               float(opt_.max_size) / float(std::max(h, w)));
  return {int64_t(std::floor(double(h) * double(scale))), int64_t(std::floor(double(w) * double(scale)))};
}

Tensor MaskRcnn::preprocess(const uint8_t* bgr, int64_t h, int64_t w) const {
  ST_CHECK(h > 0 && w > 0, "maskrcnn: bad frame size ", w, "x", h);
  const auto [rh, rw] = network_size(h, w);
  ST_CHECK(rh > 0 && rw > 0, "maskrcnn: a ", w, "x", h, " frame resizes to nothing (", rw, "x", rh, ")");
  const bool resize = rh != h || rw != w;
  // Normalised at the input size (then resized, as torchvision does), zero padding after.
  const int64_t H = (rh + 31) / 32 * 32, W = (rw + 31) / 32 * 32;
  const int64_t nh = resize ? h : H, nw = resize ? w : W;
  std::vector<float> x(size_t(3 * nh * nw), 0.0f);
  for (int64_t c = 0; c < 3; ++c) {
    const int64_t src = opt_.bgr255 ? c : 2 - c;  // channel c of the model's input order
    for (int64_t y = 0; y < h; ++y)
      for (int64_t xx = 0; xx < w; ++xx) {
        float v = float(bgr[(y * w + xx) * 3 + src]);
        if (!opt_.bgr255) v = v / 255.0f;
        x[size_t((c * nh + y) * nw + xx)] = (v - opt_.mean[size_t(c)]) / opt_.std[size_t(c)];
      }
  }
  Tensor t = Tensor::from_vector(x, {1, 3, nh, nw}).to(device_);
  if (!resize) return t;
  t = resize_bilinear(t, rh, rw);
  if (rh == H && rw == W) return t;
  Tensor padded = Tensor::zeros({1, 3, H, W}).to(device_);
  padded.narrow(2, 0, rh).narrow(3, 0, rw).copy_(t);
  return padded;
}

namespace {
// Milliseconds since the last lap, after the device's queued work is done.
struct Laps {
  Device d;
  std::chrono::steady_clock::time_point t = std::chrono::steady_clock::now();
  double lap() {
    backend_for(d).synchronize();
    const auto now = std::chrono::steady_clock::now();
    const double ms = std::chrono::duration<double, std::milli>(now - t).count();
    t = now;
    return ms;
  }
};
}  // namespace

MaskRcnn::Result MaskRcnn::run(const uint8_t* bgr, int64_t h, int64_t w) const {
  NoGradGuard ng;
  Result r;
  Laps laps{device_};
  const bool d2 = opt_.convention == Convention::Detectron2;
  Tensor x = preprocess(bgr, h, w);
  const auto [rh, rw] = network_size(h, w);
  r.ms.preprocess = laps.lap();
  auto feats = backbone_.forward(x);
  r.ms.backbone = laps.lap();
  std::vector<Tensor> p(feats.p.begin(), feats.p.end());
  auto levels = rpn_.forward(p);
  for (size_t l = 0; l < levels.size(); ++l) {
    const int64_t stride = int64_t(4) << l;
    auto cell = cell_anchors(double(32 << l), {0.5, 1.0, 2.0}, opt_.convention);
    levels[l].anchors = grid_anchors(cell, p[l].size(2), p[l].size(3), stride);
  }
  Proposals props = select_proposals(levels, rh, rw, opt_.convention);
  r.ms.rpn = laps.lap();
  PoolerOptions po;
  po.levels = opt_.convention;
  po.aligned = d2;
  po.sampling_ratio = d2 ? 0 : 2;
  std::vector<Tensor> p25(p.begin(), p.begin() + 4);
  auto bo = box_.forward(p25, props.boxes, po);
  BoxInferenceConfig cfg;
  cfg.score_thresh = opt_.score_thresh;
  r.detections = box_inference(bo.class_logits, bo.box_deltas, props.boxes, rh, rw, opt_.convention, cfg);
  r.ms.box = laps.lap();
  const int64_t D = r.detections.boxes.size(0);
  if (D == 0) {
    r.mask_probs = Tensor::zeros({0, 28, 28});
  } else {
    auto logits = mask_.forward(p25, r.detections.boxes, po).to_vector<float>();  // (D, K, 28, 28)
    const int64_t K = mask_.classes(), M = 28 * 28;
    std::vector<float> probs(size_t(D * M));
    for (int64_t i = 0; i < D; ++i) {
      const int64_t c = r.detections.classes[size_t(i)];
      ST_CHECK(c >= 0 && c < K, "maskrcnn: class ", c, " has no mask channel (", K, ")");
      for (int64_t k = 0; k < M; ++k)
        probs[size_t(i * M + k)] = 1.0f / (1.0f + std::exp(-logits[size_t((i * K + c) * M + k)]));
    }
    r.mask_probs = Tensor::from_vector(probs, {D, 28, 28});
  }
  r.ms.mask = laps.lap();
  // Boxes back to the input's pixels (torchvision's resize_boxes: float32 ratios).
  auto bx = r.detections.boxes.to_vector<float>();
  if (rh != h || rw != w) {
    const float ry = float(h) / float(rh), rx = float(w) / float(rw);
    for (int64_t i = 0; i < D; ++i) {
      bx[size_t(i * 4)] *= rx;
      bx[size_t(i * 4 + 1)] *= ry;
      bx[size_t(i * 4 + 2)] *= rx;
      bx[size_t(i * 4 + 3)] *= ry;
    }
    r.detections.boxes = Tensor::from_vector(bx, {D, 4});
  }
  // Paste and threshold (an empty box pastes nothing); then the label map.
  const auto pv = r.mask_probs.to_vector<float>();
  for (int64_t i = 0; i < D; ++i) {
    const float* b = &bx[size_t(i * 4)];
    const std::array<float, 4> box{b[0], b[1], b[2], b[3]};
    std::vector<uint8_t> m(size_t(h * w), 0);
    if (d2)
      paste_mask(&pv[size_t(i * 784)], 28, box, h, w, m.data(), float(opt_.mask_thresh));
    else
      paste_mask_torchvision(&pv[size_t(i * 784)], 28, box, h, w, m.data(), float(opt_.mask_thresh));
    r.masks.push_back(std::move(m));
  }
  if (d2) r.label_map = label_map(r.detections.classes, r.masks, h, w);
  r.ms.paste = laps.lap();
  return r;
}

}  // namespace st::teacher
