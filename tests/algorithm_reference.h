// Algorithms 1–3 of SPEC §3–§6 written out again for the integration tests (test_distill.cpp,
// test_simulate.cpp, test_server.cpp), from the SPEC's text and not from nn/distill.cpp or
// nn/key_frame.cpp: the loss-weight map (connected components, boxes expanded by 7.5%), the frame
// mIoU, Algorithm 1's loop (skip, steps, break, best copy), Algorithm 2's stride, and the
// server's key-frame schedule (key frame 0, stride MIN_STRIDE, next key = key + stride).
//
// The reference trains with the project's own building blocks — the student's forward, the
// weighted cross-entropy op and Adam — over the same tensors in the same order, so on a CPU its
// weights, steps and accuracies are bit-identical to those of a correct nn::Distiller, simulate
// and server (test_distill.cpp's front-reuse test shows reusing the front changes no bit). What
// it does NOT share is the logic around them: which weights go into the loss, which accuracy
// picks the stride, when to stop, what is kept. A mutant there shows as a difference.
#pragma once
#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <vector>

#include "io/video.h"
#include "nn/blob.h"
#include "nn/distill.h"
#include "nn/optim.h"
#include "nn/student.h"
#include "tensor/autograd.h"
#include "tensor/ops.h"

namespace st::test {

// SPEC §3: 1 everywhere, 5 inside the box of every 8-connected component of non-background
// (class 8) pixels; a component's box is written as Detectron2 writes a mask's (far edge = last
// pixel + 1), expanded by 7.5% of its width / height on each side, truncated toward zero,
// clamped to the image, inclusive of the far edge.
inline std::vector<float> spec_weight_map(const std::vector<uint8_t>& labels, int64_t h, int64_t w) {
  std::vector<float> weight(size_t(h * w), 1.0f);
  std::vector<int64_t> comp(size_t(h * w), -1);
  int64_t ncomp = 0;
  for (int64_t s = 0; s < h * w; ++s) {
    if (labels[size_t(s)] == 8 || comp[size_t(s)] >= 0) continue;
    // Grow component `ncomp` by repeated sweeps over the image (slow, and obviously right).
    comp[size_t(s)] = ncomp;
    int64_t ys = s / w, xs = s % w;
    int64_t bx0 = xs, by0 = ys, bx1 = xs, by1 = ys;
    for (bool grew = true; grew;) {
      grew = false;
      for (int64_t y = 0; y < h; ++y)
        for (int64_t x = 0; x < w; ++x) {
          if (labels[size_t(y * w + x)] == 8 || comp[size_t(y * w + x)] >= 0) continue;
          bool touches = false;
          for (int64_t dy = -1; dy <= 1 && !touches; ++dy)
            for (int64_t dx = -1; dx <= 1 && !touches; ++dx) {
              const int64_t ny = y + dy, nx = x + dx;
              touches = ny >= 0 && ny < h && nx >= 0 && nx < w && comp[size_t(ny * w + nx)] == ncomp;
            }
          if (!touches) continue;
          comp[size_t(y * w + x)] = ncomp;
          bx0 = std::min(bx0, x), bx1 = std::max(bx1, x), by0 = std::min(by0, y), by1 = std::max(by1, y);
          grew = true;
        }
    }
    ++ncomp;
    const double x1 = double(bx0), y1 = double(by0), x2 = double(bx1 + 1), y2 = double(by1 + 1);
    const double ew = 0.075 * (x2 - x1), eh = 0.075 * (y2 - y1);
    const int64_t X0 = std::clamp<int64_t>(int64_t(x1 - ew), 0, w - 1);
    const int64_t Y0 = std::clamp<int64_t>(int64_t(y1 - eh), 0, h - 1);
    const int64_t X1 = std::clamp<int64_t>(int64_t(x2 + ew), 0, w - 1);
    const int64_t Y1 = std::clamp<int64_t>(int64_t(y2 + eh), 0, h - 1);
    for (int64_t y = Y0; y <= Y1; ++y)
      for (int64_t x = X0; x <= X1; ++x) weight[size_t(y * w + x)] = 5.0f;
  }
  return weight;
}

// SPEC §3: per class, |pred = c and target = c| / |pred = c or target = c|, averaged over the
// classes where the union is non-empty.
inline double spec_miou(const std::vector<int64_t>& pred, const std::vector<int64_t>& target) {
  double sum = 0;
  int present = 0;
  for (int64_t c = 0; c < 9; ++c) {
    int64_t inter = 0, uni = 0;
    for (size_t i = 0; i < pred.size(); ++i) {
      inter += pred[i] == c && target[i] == c;
      uni += pred[i] == c || target[i] == c;
    }
    if (uni) sum += double(inter) / double(uni), ++present;
  }
  return present ? sum / present : 0.0;
}

// SPEC §5, with the defaults T 0.8 and strides [8, 64]. int() truncates; the 1e-9 nudge is the
// one nn/distill.cpp documents (ratio * current lands a few ulps below an exact integer product,
// e.g. (0.9 + 1 - 1.6) / 0.2 * 16 = 23.999..., which the rule means as 24).
inline int spec_next_stride(double acc, int current, double T = 0.8, int lo = 8, int hi = 64) {
  double ratio;
  if (acc > T) ratio = (acc + 1 - 2 * T) / (1 - T);
  else ratio = acc / T;
  const int next = int(ratio * double(current) + 1e-9);
  return next < lo ? lo : next > hi ? hi : next;
}

struct RefStep {
  double loss = 0;  // the SPEC loss of the prediction the step trained on
  double acc = 0;   // mIoU after the step
};

struct RefOutcome {
  double acc_before = 0, acc = 0;
  int steps = 0;
  std::vector<RefStep> trace;  // one per optimizer step
};

// Algorithm 1 (SPEC §4) on a partially distilled student, with its own Adam whose state persists
// across calls (key frames). `loss_of` (optional) is told each step's logits, labels and weights
// before the step (test_distill.cpp checks the loss and its gradient there).
class ReferenceDistiller {
 public:
  // rewind_optimizer: the best-restore puts back Adam's moments and step counts of the best
  // copy too (SPEC §4's note: the authors' deep copy holds the optimizer).
  explicit ReferenceDistiller(nn::Student& s, double threshold = 0.8, int max_updates = 8,
                              double lr = 0.01, bool rewind_optimizer = true)
      : s_(s), threshold_(threshold), max_updates_(max_updates), rewind_(rewind_optimizer) {
    s_.configure(nn::Distillation::Partial);
    params_ = s_.trained_parameters(nn::Distillation::Partial);
    adam_ = std::make_unique<nn::Adam>(params_, nn::Adam::Options{lr, 0.9, 0.999, 1e-8});
  }
  nn::Student& student() { return s_; }
  const nn::Adam& adam() const { return *adam_; }
  // A migrated session (server.cpp): the optimizer state is set before the first step from that
  // step's gradients, m = 0, v = g^2, step counts past bias correction (Adam::warm_start, here
  // through load_state).
  void warm_start() { warm_ = true; }

  RefOutcome run(const Tensor& x, const std::vector<uint8_t>& labels_u8, int64_t h, int64_t w) {
    const std::vector<int64_t> target(labels_u8.begin(), labels_u8.end());
    const Tensor labels = Tensor::from_vector(target, {1, h, w});
    const Tensor weight = Tensor::from_vector(spec_weight_map(labels_u8, h, w), {1, h, w});
    RefOutcome out;
    Tensor logits = s_.forward(x);
    auto acc_of = [&](const Tensor& l) {
      return spec_miou(argmax_channels(l.detach()).to_vector<int64_t>(), target);
    };
    out.acc = out.acc_before = acc_of(logits);
    if (out.acc > threshold_) return out;
    std::vector<std::vector<float>> best = values();
    AdamCopy best_adam = adam_copy();
    double best_acc = out.acc;
    bool broke = false;
    for (int step = 1; step <= max_updates_; ++step) {
      adam_->zero_grad();
      Tensor loss = weighted_cross_entropy(logits, labels, weight);
      RefStep rs;
      rs.loss = loss.item();
      loss.backward();
      if (on_gradients) on_gradients(logits.detach(), labels, weight);
      if (warm_) {
        nn::Adam::State st;
        for (size_t i = 0; i < params_.size(); ++i) {
          const auto g = params_[i].grad().to_vector<float>();
          std::vector<float> g2(g.size());
          for (size_t j = 0; j < g.size(); ++j) g2[j] = g[j] * g[j];
          st.m.push_back(Tensor::zeros(params_[i].shape()));
          st.v.push_back(Tensor::from_vector(g2, params_[i].shape()));
          st.t.push_back(nn::Adam::kWarmStartSteps);
        }
        adam_->load_state(st);
        warm_ = false;
      }
      adam_->step();
      out.steps = step;
      logits = s_.forward(x);
      out.acc = rs.acc = acc_of(logits);
      out.trace.push_back(rs);
      if (out.acc > threshold_) {
        broke = true;
        break;
      }
      if (out.acc > best_acc) best = values(), best_adam = adam_copy(), best_acc = out.acc;
    }
    if (!broke && out.acc < best_acc) {
      NoGradGuard ng;
      for (size_t i = 0; i < params_.size(); ++i)
        params_[i].copy_(Tensor::from_vector(best[i], params_[i].shape()));
      if (rewind_) {
        nn::Adam::State st;
        for (size_t i = 0; i < params_.size(); ++i) {
          st.m.push_back(Tensor::from_vector(best_adam.m[i], params_[i].shape()));
          st.v.push_back(Tensor::from_vector(best_adam.v[i], params_[i].shape()));
        }
        st.t = best_adam.t;
        adam_->load_state(st);
        warm_ = best_adam.warm;
      }
      out.acc = best_acc;
    }
    adam_->zero_grad();
    return out;
  }

  // Called after each step's backward, before the optimizer step (gradients are in the leaves).
  std::function<void(const Tensor& logits, const Tensor& labels, const Tensor& weight)> on_gradients;

 private:
  // Adam's state as plain values (read through the optimizer's accessors).
  struct AdamCopy {
    std::vector<std::vector<float>> m, v;
    std::vector<int64_t> t;
    bool warm = false;
  };
  AdamCopy adam_copy() const {
    AdamCopy c;
    c.warm = warm_;
    for (size_t i = 0; i < params_.size(); ++i) {
      c.m.push_back(adam_->exp_avg(i).to_vector<float>());
      c.v.push_back(adam_->exp_avg_sq(i).to_vector<float>());
      c.t.push_back(adam_->steps(i));
    }
    return c;
  }
  std::vector<std::vector<float>> values() const {
    std::vector<std::vector<float>> v;
    for (auto& p : params_) v.push_back(p.to_vector<float>());
    return v;
  }
  nn::Student& s_;
  double threshold_;
  int max_updates_;
  bool rewind_;
  bool warm_ = false;
  std::vector<Tensor> params_;
  std::unique_ptr<nn::Adam> adam_;
};

// One key frame of the server's schedule as the reference computes it.
struct RefKeyFrame {
  int64_t frame = 0;
  RefOutcome outcome;
  int next_stride = 0;          // Algorithm 2 of the accuracy reached
  int stride_from_before = 0;   // Algorithm 2 of the accuracy before training (for sensitivity)
  std::vector<uint8_t> blob;    // the trained tensors after Algorithm 1 (partial, fp32)
  uint64_t weights_hash = 0;    // nn::weights_hash of the whole student after Algorithm 1
};

// The server's half of Algorithms 3 and 4 (SPEC §6) on the first `n` frames of a clip with a
// recorded teacher: key frame 0 at stride MIN_STRIDE, then key + Algorithm 2's stride.
// `student` starts from the weights the server starts from; `migrated`: they came from the edge
// (its optimizer warm-started).
inline std::vector<RefKeyFrame> reference_schedule(const std::filesystem::path& frames,
                                                   const std::filesystem::path& labels,
                                                   nn::Student& student, int64_t n,
                                                   bool migrated = false) {
  ReferenceDistiller d(student);
  if (migrated) d.warm_start();
  auto src = io::open_video(frames);
  io::LabelSource teacher(labels);
  std::vector<RefKeyFrame> out;
  int stride = 8;
  int64_t key = 0;
  io::Frame f;
  while (f.index + 1 < n && src->next(f)) {
    if (f.index != key) continue;
    const int64_t h = f.bgr.height, w = f.bgr.width;
    RefKeyFrame k;
    k.frame = key;
    k.outcome = d.run(nn::Student::preprocess_bgr(f.bgr.pixels.data(), h, w),
                      teacher.labels(key, h, w), h, w);
    k.next_stride = spec_next_stride(k.outcome.acc, stride);
    k.stride_from_before = spec_next_stride(k.outcome.acc_before, stride);
    k.blob = nn::pack_trained(student, nn::Distillation::Partial, BlobEncoding::F32);
    k.weights_hash = nn::weights_hash(student);
    stride = k.next_stride;
    key += stride;
    out.push_back(std::move(k));
  }
  return out;
}

}  // namespace st::test
