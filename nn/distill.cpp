// Targets, mIoU, Algorithm 1 and Algorithm 2 (SPEC §3–§5).
#include "nn/distill.h"

#include <algorithm>
#include <cmath>
#include <optional>

#include "tensor/autograd.h"

namespace st::nn {

std::vector<Box> component_boxes(const std::vector<uint8_t>& labels, int64_t h, int64_t w) {
  ST_CHECK(int64_t(labels.size()) == h * w, "component_boxes: ", labels.size(),
           " labels for a ", h, "x", w, " image");
  std::vector<uint8_t> seen(labels.size(), 0);
  std::vector<Box> boxes;
  std::vector<int64_t> stack;
  for (int64_t start = 0; start < h * w; ++start) {
    if (seen[size_t(start)] || labels[size_t(start)] == 8) continue;
    int64_t x0 = w, y0 = h, x1 = -1, y1 = -1;
    stack.assign(1, start);
    seen[size_t(start)] = 1;
    while (!stack.empty()) {
      int64_t p = stack.back();
      stack.pop_back();
      int64_t y = p / w, x = p % w;
      x0 = std::min(x0, x);
      x1 = std::max(x1, x);
      y0 = std::min(y0, y);
      y1 = std::max(y1, y);
      for (int64_t dy = -1; dy <= 1; ++dy)
        for (int64_t dx = -1; dx <= 1; ++dx) {
          int64_t ny = y + dy, nx = x + dx;
          if (ny < 0 || ny >= h || nx < 0 || nx >= w) continue;
          int64_t q = ny * w + nx;
          if (seen[size_t(q)] || labels[size_t(q)] == 8) continue;
          seen[size_t(q)] = 1;
          stack.push_back(q);
        }
    }
    boxes.push_back({double(x0), double(y0), double(x1 + 1), double(y1 + 1)});
  }
  return boxes;
}

std::vector<float> box_weights(const std::vector<Box>& boxes, int64_t h, int64_t w) {
  std::vector<float> weight(size_t(h * w), 1.0f);
  for (const Box& b : boxes) {
    double bw = b.x2 - b.x1, bh = b.y2 - b.y1;
    // int() truncates toward zero, as Python's int() does (ref), then clamp to the image.
    int64_t x0 = std::clamp<int64_t>(int64_t(b.x1 - 0.075 * bw), 0, w - 1);
    int64_t y0 = std::clamp<int64_t>(int64_t(b.y1 - 0.075 * bh), 0, h - 1);
    int64_t x1 = std::clamp<int64_t>(int64_t(b.x2 + 0.075 * bw), 0, w - 1);
    int64_t y1 = std::clamp<int64_t>(int64_t(b.y2 + 0.075 * bh), 0, h - 1);
    for (int64_t y = y0; y <= y1; ++y)
      for (int64_t x = x0; x <= x1; ++x) weight[size_t(y * w + x)] = 5.0f;
  }
  return weight;
}

Target make_target(const std::vector<uint8_t>& labels, int64_t h, int64_t w,
                   const std::vector<Box>* boxes) {
  ST_CHECK(int64_t(labels.size()) == h * w, "make_target: ", labels.size(), " labels for a ", h,
           "x", w, " image");
  for (size_t i = 0; i < labels.size(); ++i)
    ST_CHECK(labels[i] < Student::kClasses, "make_target: label ", int(labels[i]), " at pixel ",
             i, " is not a class index 0..8");
  Target t;
  std::vector<int64_t> l(labels.begin(), labels.end());
  t.labels = Tensor::from_vector(l, {1, h, w});
  std::vector<Box> found;
  if (!boxes) found = component_boxes(labels, h, w);
  t.weight = Tensor::from_vector(box_weights(boxes ? *boxes : found, h, w), {1, h, w});
  return t;
}

namespace {
template <class T>
double miou_impl(const T* p, const T* t, size_t n, int64_t classes) {
  std::vector<int64_t> inter(size_t(classes), 0), uni(size_t(classes), 0);
  for (size_t i = 0; i < n; ++i) {
    ST_CHECK(int64_t(p[i]) >= 0 && int64_t(p[i]) < classes && int64_t(t[i]) >= 0 &&
                 int64_t(t[i]) < classes,
             "miou: class index out of range at pixel ", i);
    if (p[i] == t[i]) {
      ++inter[size_t(p[i])];
      ++uni[size_t(p[i])];
    } else {
      ++uni[size_t(p[i])];
      ++uni[size_t(t[i])];
    }
  }
  double sum = 0;
  int k = 0;
  for (int64_t c = 0; c < classes; ++c)
    if (uni[size_t(c)] > 0) {
      sum += double(inter[size_t(c)]) / double(uni[size_t(c)]);
      ++k;
    }
  return k ? sum / k : 0.0;
}
}  // namespace

double miou(const Tensor& pred, const Tensor& target, int64_t classes) {
  ST_CHECK(pred.numel() == target.numel(), "miou: prediction ", pred.shape(), " and target ",
           target.shape(), " differ in size");
  auto p = pred.to_vector<int64_t>(), t = target.to_vector<int64_t>();
  return miou_impl(p.data(), t.data(), p.size(), classes);
}

double miou(const std::vector<uint8_t>& pred, const std::vector<uint8_t>& target,
            int64_t classes) {
  ST_CHECK(pred.size() == target.size(), "miou: prediction (", pred.size(), " pixels) and target (",
           target.size(), " pixels) differ in size");
  return miou_impl(pred.data(), target.data(), pred.size(), classes);
}

int next_stride(double acc, int current, const DistillConfig& cfg) {
  const double T = cfg.threshold;
  double ratio = acc > T ? (acc + 1 - 2 * T) / (1 - T) : acc / T;
  // Truncation as Python's int(), after a 1e-9 nudge so that exact products are not lost to
  // binary rounding: (0.9 + 1 - 1.6) / 0.2 is 1.4999999999999996 in doubles, and the reference
  // implementation's int(ratio * 16) gives 23 where the paper's rule means 24.
  int next = int(ratio * double(current) + 1e-9);
  return std::clamp(next, cfg.min_stride, cfg.max_stride);
}

Distiller::Distiller(Student& student, Distillation mode, DistillConfig cfg)
    : student_(student), mode_(mode), cfg_(cfg) {
  ST_CHECK(cfg.threshold > 0 && cfg.threshold < 1, "distill: threshold must be in (0, 1)");
  ST_CHECK(cfg.min_stride >= 1 && cfg.min_stride <= cfg.max_stride,
           "distill: need 1 <= min_stride <= max_stride");
  ST_CHECK(cfg.max_updates >= 0, "distill: max_updates must be >= 0");
  student_.configure(mode);
  trained_ = student_.trained_parameters(mode);
  if (!trained_.empty()) adam_ = std::make_unique<Adam>(trained_, Adam::Options{cfg.lr, 0.9, 0.999, 1e-8});
}

namespace {
std::vector<Tensor> snapshot(const std::vector<Tensor>& ps) {
  NoGradGuard ng;
  std::vector<Tensor> out;
  for (auto& p : ps) out.push_back(p.detach().clone());
  return out;
}
void restore(std::vector<Tensor>& ps, const std::vector<Tensor>& saved) {
  NoGradGuard ng;
  for (size_t i = 0; i < ps.size(); ++i) ps[i].copy_(saved[i]);
}
}  // namespace

DistillOutcome Distiller::distill(const Tensor& x_in, const Target& target_in, bool reuse_front) {
  // Frame and target go where the student is (a CUDA student trains on the GPU).
  const Device dev = student_.device();
  const Tensor x = x_in.device() == dev ? x_in : x_in.to(dev);
  Target target = target_in;
  if (target.labels.device() != dev) target.labels = target.labels.to(dev);
  if (target.weight.device() != dev) target.weight = target.weight.to(dev);
  DistillOutcome out;
  const bool train = mode_ != Distillation::None && cfg_.max_updates > 0;
  // The frozen front does not change across steps (same frame, frozen weights, batch-stat BN).
  StudentFront front;
  const bool cache_front = reuse_front && mode_ == Distillation::Partial;
  if (cache_front) front = student_.front(x);
  auto forward = [&]() {
    if (!train) {
      NoGradGuard ng;
      return student_.forward(x);
    }
    return cache_front ? student_.back(front) : student_.forward(x);
  };
  Tensor logits = forward();
  out.acc = out.acc_before = miou(argmax_channels(logits.detach()), target.labels);
  if (!train || out.acc > cfg_.threshold) return out;

  std::vector<Tensor> best = snapshot(trained_);
  std::optional<Adam::State> best_adam;
  if (cfg_.rewind_optimizer) best_adam = adam_->state();
  double best_acc = out.acc;
  bool broke = false;
  for (int step = 1; step <= cfg_.max_updates; ++step) {
    adam_->zero_grad();
    weighted_cross_entropy(logits, target.labels, target.weight).backward();
    adam_->step();
    out.steps = step;
    logits = forward();
    out.acc = miou(argmax_channels(logits.detach()), target.labels);
    if (out.acc > cfg_.threshold) {
      broke = true;
      break;
    }
    if (out.acc > best_acc) {
      best = snapshot(trained_);
      if (best_adam) best_adam = adam_->state();
      best_acc = out.acc;
    }
  }
  if (!broke && out.acc < best_acc) {
    restore(trained_, best);
    if (best_adam) adam_->load_state(*best_adam);
    out.acc = best_acc;
    out.restored = true;
  }
  adam_->zero_grad();
  return out;
}

}  // namespace st::nn
