#include "teacher_port/maskrcnn.h"

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
  return o;
}

MaskRcnn::MaskRcnn(const safetensors::File& w, MaskRcnnOptions o)
    : opt_(o),
      backbone_(w, BackboneOptions{o.stride_in_1x1, o.bn_eps}),
      rpn_(w),
      box_(w),
      mask_(w) {}

void MaskRcnn::to(Device d) {
  backbone_.to(d);
  device_ = d;
}

Tensor MaskRcnn::preprocess(const uint8_t* bgr, int64_t h, int64_t w) const {
  ST_CHECK(h > 0 && w > 0, "maskrcnn: bad frame size ", w, "x", h);
  const int64_t H = (h + 31) / 32 * 32, W = (w + 31) / 32 * 32;
  std::vector<float> x(size_t(3 * H * W), 0.0f);  // zero padding after normalisation
  for (int64_t c = 0; c < 3; ++c) {
    const int64_t src = opt_.bgr255 ? c : 2 - c;  // channel c of the model's input order
    for (int64_t y = 0; y < h; ++y)
      for (int64_t xx = 0; xx < w; ++xx) {
        float v = float(bgr[(y * w + xx) * 3 + src]);
        if (!opt_.bgr255) v = v / 255.0f;
        x[size_t((c * H + y) * W + xx)] = (v - opt_.mean[size_t(c)]) / opt_.std[size_t(c)];
      }
  }
  return Tensor::from_vector(x, {1, 3, H, W}).to(device_);
}

MaskRcnn::Result MaskRcnn::run(const uint8_t* bgr, int64_t h, int64_t w) const {
  NoGradGuard ng;
  const bool d2 = opt_.convention == Convention::Detectron2;
  Tensor x = preprocess(bgr, h, w);
  auto feats = backbone_.forward(x);
  std::vector<Tensor> p(feats.p.begin(), feats.p.end());
  auto levels = rpn_.forward(p);
  for (size_t l = 0; l < levels.size(); ++l) {
    const int64_t stride = int64_t(4) << l;
    auto cell = cell_anchors(double(32 << l), {0.5, 1.0, 2.0}, opt_.convention);
    levels[l].anchors = grid_anchors(cell, p[l].size(2), p[l].size(3), stride);
  }
  Proposals props = select_proposals(levels, h, w, opt_.convention);
  PoolerOptions po;
  po.levels = opt_.convention;
  po.aligned = d2;
  po.sampling_ratio = d2 ? 0 : 2;
  std::vector<Tensor> p25(p.begin(), p.begin() + 4);
  auto bo = box_.forward(p25, props.boxes, po);
  BoxInferenceConfig cfg;
  cfg.score_thresh = opt_.score_thresh;
  Result r;
  r.detections = box_inference(bo.class_logits, bo.box_deltas, props.boxes, h, w, opt_.convention, cfg);
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
  // Detectron2 post-processing: drop empty boxes, paste, threshold; then the label map.
  const auto bx = r.detections.boxes.to_vector<float>();
  const auto pv = r.mask_probs.to_vector<float>();
  std::vector<int64_t> cls;
  for (int64_t i = 0; i < D; ++i) {
    const float* b = &bx[size_t(i * 4)];
    std::vector<uint8_t> m(size_t(h * w), 0);
    if (b[2] > b[0] && b[3] > b[1])
      paste_mask(&pv[size_t(i * 784)], 28, {b[0], b[1], b[2], b[3]}, h, w, m.data(),
                 float(opt_.mask_thresh));
    r.masks.push_back(std::move(m));
    cls.push_back(r.detections.classes[size_t(i)]);
  }
  if (d2) r.label_map = label_map(cls, r.masks, h, w);
  return r;
}

}  // namespace st::teacher
