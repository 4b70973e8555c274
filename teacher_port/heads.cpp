#include "teacher_port/heads.h"

#include <cmath>

#include "teacher_port/detect_ops.h"
#include "tensor/autograd.h"
#include "tensor/ops.h"

namespace st::teacher {

namespace {
Tensor need(const safetensors::File& f, const std::string& name, int64_t rank) {
  ST_CHECK(f.contains(name), "teacher weights: missing tensor '", name, "'");
  Tensor t = f.get(name);
  ST_CHECK(t.dim() == rank, "teacher weights: tensor '", name, "' has shape ", t.shape(),
           ", expected rank ", rank);
  return t.to(DType::F32).contiguous();
}
void expect(bool ok, const std::string& name, const Tensor& t, const char* want) {
  ST_CHECK(ok, "teacher weights: tensor '", name, "' has shape ", t.shape(), ", expected ", want);
}
// A tensor of exactly this shape (named in the error).
void expect_shape(const std::string& name, const Tensor& t, const Shape& want) {
  ST_CHECK(t.shape() == want, "teacher weights: tensor '", name, "' has shape ", t.shape(),
           ", expected ", want);
}
}  // namespace

namespace {
// ROIAlign of each box on its level, on the features' device, without leaving it: rows grouped by
// level (P2 first), each group in box order; order[i] is the box of row i.
Tensor pool_grouped(const std::vector<Tensor>& p, const Tensor& boxes, int64_t out,
                    const PoolerOptions& o, std::vector<int64_t>& order) {
  ST_CHECK(p.size() == 4, "pool_levels: needs P2..P5, got ", p.size(), " maps");
  ST_CHECK(boxes.dim() == 2 && boxes.size(1) == 4, "pool_levels: boxes must be (R, 4), got ",
           boxes.shape());
  const int64_t R = boxes.size(0), C = p[0].size(1);
  const Device d = p[0].device();
  const auto lvl = assign_levels(boxes, o.levels);
  const auto bv = boxes.to_vector<float>();
  std::vector<Tensor> parts;
  order.clear();
  for (int64_t l = 2; l <= 5; ++l) {
    std::vector<float> rois;
    int64_t n = 0;
    for (int64_t r = 0; r < R; ++r)
      if (lvl[size_t(r)] == l) {
        rois.insert(rois.end(), {0.0f, bv[size_t(r * 4)], bv[size_t(r * 4 + 1)],
                                 bv[size_t(r * 4 + 2)], bv[size_t(r * 4 + 3)]});
        order.push_back(r);
        ++n;
      }
    if (n == 0) continue;
    parts.push_back(roi_align(p[size_t(l - 2)], Tensor::from_vector(rois, {n, 5}), out, out,
                              1.0 / double(int64_t(1) << l), o.sampling_ratio, o.aligned));
  }
  if (parts.empty()) return Tensor::zeros({0, C, out, out}).to(d);
  return parts.size() == 1 ? parts[0] : cat(parts, 0);
}

// The rows of a grouped result back in box order, as a CPU tensor.
Tensor in_box_order(const Tensor& grouped, const std::vector<int64_t>& order) {
  const int64_t R = grouped.size(0);
  Shape shape = grouped.shape();
  const auto v = grouped.to_vector<float>();
  const size_t row = R ? v.size() / size_t(R) : 0;
  std::vector<float> y(v.size());
  for (int64_t i = 0; i < R; ++i)
    std::copy(v.begin() + i * row, v.begin() + (i + 1) * row, y.begin() + order[size_t(i)] * row);
  return Tensor::from_vector(y, shape);
}
}  // namespace

Tensor pool_levels(const std::vector<Tensor>& p, const Tensor& boxes, int64_t out,
                   const PoolerOptions& o) {
  std::vector<int64_t> order;
  Tensor g = pool_grouped(p, boxes, out, o, order);
  return in_box_order(g, order).to(p[0].device());
}

RpnHead::RpnHead(const safetensors::File& f) {
  const std::string n = "proposal_generator.rpn_head.";
  conv_w_ = need(f, n + "conv.weight", 4);
  conv_b_ = need(f, n + "conv.bias", 1);
  obj_w_ = need(f, n + "objectness_logits.weight", 4);
  obj_b_ = need(f, n + "objectness_logits.bias", 1);
  del_w_ = need(f, n + "anchor_deltas.weight", 4);
  del_b_ = need(f, n + "anchor_deltas.bias", 1);
  A_ = obj_w_.size(0);
  expect_shape(n + "conv.weight", conv_w_, {256, 256, 3, 3});
  expect_shape(n + "conv.bias", conv_b_, {256});
  expect_shape(n + "objectness_logits.weight", obj_w_, {A_, 256, 1, 1});
  expect_shape(n + "objectness_logits.bias", obj_b_, {A_});
  expect_shape(n + "anchor_deltas.weight", del_w_, {4 * A_, 256, 1, 1});
  expect_shape(n + "anchor_deltas.bias", del_b_, {4 * A_});
}

void RpnHead::to(Device d) {
  for (Tensor* t : {&conv_w_, &conv_b_, &obj_w_, &obj_b_, &del_w_, &del_b_}) *t = t->to(d);
}

std::vector<RpnLevel> RpnHead::forward(const std::vector<Tensor>& levels) const {
  NoGradGuard ng;
  std::vector<RpnLevel> out;
  for (const Tensor& x : levels) {
    const Device d = x.device();
    Tensor h = relu(conv2d(x, conv_w_.to(d), conv_b_.to(d), {1, 1, 1, 1, 1}));
    auto obj = conv2d(h, obj_w_.to(d), obj_b_.to(d)).to_vector<float>();
    auto del = conv2d(h, del_w_.to(d), del_b_.to(d)).to_vector<float>();
    const int64_t H = x.size(2), W = x.size(3), A = A_, n = H * W * A;
    std::vector<float> lg(static_cast<size_t>(n)), dl(static_cast<size_t>(n * 4));
    for (int64_t a = 0; a < A; ++a)
      for (int64_t y = 0; y < H; ++y)
        for (int64_t xx = 0; xx < W; ++xx) {
          const int64_t i = (y * W + xx) * A + a;
          lg[size_t(i)] = obj[size_t((a * H + y) * W + xx)];
          for (int64_t k = 0; k < 4; ++k)
            dl[size_t(i * 4 + k)] = del[size_t(((a * 4 + k) * H + y) * W + xx)];
        }
    out.push_back({Tensor::from_vector(lg, {n}), Tensor::from_vector(dl, {n, 4}), Tensor()});
  }
  return out;
}

BoxHead::BoxHead(const safetensors::File& f) {
  fc1_w_ = need(f, "roi_heads.box_head.fc1.weight", 2);
  fc1_b_ = need(f, "roi_heads.box_head.fc1.bias", 1);
  fc2_w_ = need(f, "roi_heads.box_head.fc2.weight", 2);
  fc2_b_ = need(f, "roi_heads.box_head.fc2.bias", 1);
  cls_w_ = need(f, "roi_heads.box_predictor.cls_score.weight", 2);
  cls_b_ = need(f, "roi_heads.box_predictor.cls_score.bias", 1);
  box_w_ = need(f, "roi_heads.box_predictor.bbox_pred.weight", 2);
  box_b_ = need(f, "roi_heads.box_predictor.bbox_pred.bias", 1);
  expect(fc1_w_.size(1) == 256 * 7 * 7, "roi_heads.box_head.fc1.weight", fc1_w_, "(1024, 12544)");
  const int64_t h1 = fc1_w_.size(0), h2 = fc2_w_.size(0), K1 = cls_w_.size(0);
  expect_shape("roi_heads.box_head.fc1.bias", fc1_b_, {h1});
  expect_shape("roi_heads.box_head.fc2.weight", fc2_w_, {h2, h1});
  expect_shape("roi_heads.box_head.fc2.bias", fc2_b_, {h2});
  expect_shape("roi_heads.box_predictor.cls_score.weight", cls_w_, {K1, h2});
  expect_shape("roi_heads.box_predictor.cls_score.bias", cls_b_, {K1});
  // Detectron2: class-specific deltas for the K foreground classes; torchvision: for all K+1.
  expect(box_w_.size(1) == h2 && (box_w_.size(0) == 4 * (K1 - 1) || box_w_.size(0) == 4 * K1),
         "roi_heads.box_predictor.bbox_pred.weight", box_w_, "(4K or 4(K+1), fc2 outputs)");
  expect_shape("roi_heads.box_predictor.bbox_pred.bias", box_b_, {box_w_.size(0)});
}

void BoxHead::to(Device d) {
  for (Tensor* t : {&fc1_w_, &fc1_b_, &fc2_w_, &fc2_b_, &cls_w_, &cls_b_, &box_w_, &box_b_}) *t = t->to(d);
}

BoxHead::Out BoxHead::forward(const std::vector<Tensor>& p, const Tensor& proposals,
                              const PoolerOptions& o) const {
  NoGradGuard ng;
  const Device d = p.at(0).device();
  std::vector<int64_t> order;
  Tensor x = pool_grouped(p, proposals, 7, o, order);
  x = x.reshape({x.size(0), x.size(1) * 7 * 7});  // explicit: R may be 0
  x = relu(linear(x, fc1_w_.to(d), fc1_b_.to(d)));
  x = relu(linear(x, fc2_w_.to(d), fc2_b_.to(d)));
  return {in_box_order(linear(x, cls_w_.to(d), cls_b_.to(d)), order),
          in_box_order(linear(x, box_w_.to(d), box_b_.to(d)), order)};
}

MaskHead::MaskHead(const safetensors::File& f) {
  for (int k = 0; k < 4; ++k) {
    const std::string n = "roi_heads.mask_head.mask_fcn" + std::to_string(k + 1);
    fcn_w_[k] = need(f, n + ".weight", 4);
    fcn_b_[k] = need(f, n + ".bias", 1);
  }
  deconv_w_ = need(f, "roi_heads.mask_head.deconv.weight", 4);
  deconv_b_ = need(f, "roi_heads.mask_head.deconv.bias", 1);
  pred_w_ = need(f, "roi_heads.mask_head.predictor.weight", 4);
  pred_b_ = need(f, "roi_heads.mask_head.predictor.bias", 1);
  for (int k = 0; k < 4; ++k) {
    const std::string n = "roi_heads.mask_head.mask_fcn" + std::to_string(k + 1);
    expect_shape(n + ".weight", fcn_w_[k], {256, 256, 3, 3});
    expect_shape(n + ".bias", fcn_b_[k], {256});
  }
  expect_shape("roi_heads.mask_head.deconv.weight", deconv_w_, {256, 256, 2, 2});
  expect_shape("roi_heads.mask_head.deconv.bias", deconv_b_, {256});
  const int64_t K = pred_w_.size(0);
  expect_shape("roi_heads.mask_head.predictor.weight", pred_w_, {K, 256, 1, 1});
  expect_shape("roi_heads.mask_head.predictor.bias", pred_b_, {K});
}

void MaskHead::to(Device d) {
  for (int k = 0; k < 4; ++k) {
    fcn_w_[k] = fcn_w_[k].to(d);
    fcn_b_[k] = fcn_b_[k].to(d);
  }
  for (Tensor* t : {&deconv_w_, &deconv_b_, &pred_w_, &pred_b_}) *t = t->to(d);
}

Tensor MaskHead::forward(const std::vector<Tensor>& p, const Tensor& boxes,
                         const PoolerOptions& o) const {
  NoGradGuard ng;
  const Device d = p.at(0).device();
  std::vector<int64_t> order;
  Tensor x = pool_grouped(p, boxes, 14, o, order);
  for (int k = 0; k < 4; ++k) x = relu(conv2d(x, fcn_w_[k].to(d), fcn_b_[k].to(d), {1, 1, 1, 1, 1}));
  Conv2dParams up{2, 2, 0, 0, 1};
  x = relu(conv_transpose2d(x, deconv_w_.to(d), deconv_b_.to(d), up));
  return in_box_order(conv2d(x, pred_w_.to(d), pred_b_.to(d)), order);
}

}  // namespace st::teacher
