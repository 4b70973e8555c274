// The ShadowTutor algorithm pieces that run on one key frame (SPEC §3–§5): training targets
// from a teacher's output, the frame mIoU, Algorithm 1 (distillation with skip-when-good and
// best-copy restore) and Algorithm 2 (the next key-frame stride).
#pragma once
#include <vector>

#include "nn/optim.h"
#include "nn/student.h"

namespace st::nn {

struct Box {
  double x1, y1, x2, y2;  // pixel-edge coordinates (a box around pixel column c spans c..c+1)
};

struct Target {
  Tensor labels;  // i64 (1, H, W), class index 0..8 (8 = background)
  Tensor weight;  // f32 (1, H, W), 1.0 or 5.0 (SPEC §3)
};

// Boxes of the 8-connected components of non-background pixels of `labels` (u8 H*W).
std::vector<Box> component_boxes(const std::vector<uint8_t>& labels, int64_t h, int64_t w);
// The loss-weight map: 1 everywhere, 5 inside each box expanded by 7.5% of its width/height on
// each side, truncated to int, clamped to the image, inclusive of the far edge.
std::vector<float> box_weights(const std::vector<Box>& boxes, int64_t h, int64_t w);
// Target from a label map (values 0..8); boxes from connected components when none are given.
Target make_target(const std::vector<uint8_t>& labels, int64_t h, int64_t w,
                   const std::vector<Box>* boxes = nullptr);

// mIoU of one frame (SPEC §3): per-class IoU of one-hot prediction vs target, averaged over
// the classes whose union is non-empty. pred and target: integer (1,H,W) or (H,W) tensors.
double miou(const Tensor& pred, const Tensor& target, int64_t classes = Student::kClasses);
// The same on label maps (values < classes), e.g. decoded PNGs.
double miou(const std::vector<uint8_t>& pred, const std::vector<uint8_t>& target,
            int64_t classes = Student::kClasses);

struct DistillConfig {
  double threshold = 0.8;  // THRESHOLD
  int max_updates = 8;     // MAX_UPDATES
  int min_stride = 8;      // MIN_STRIDE
  int max_stride = 64;     // MAX_STRIDE
  double lr = 0.01;        // Adam lr (betas 0.9, 0.999, eps 1e-8)
  // When Algorithm 1 restores its best copy, the Adam state (moments, step counts) is rewound to
  // that copy's too: the authors deep-copy the model wrapper that owns the optimizer (SPEC §4's
  // note). false: the weights only, SPEC §4's pseudocode as written.
  bool rewind_optimizer = true;
};

// Algorithm 2: next = clamp(int(ratio * current), MIN_STRIDE, MAX_STRIDE).
int next_stride(double acc, int current, const DistillConfig& cfg);

struct DistillOutcome {
  double acc_before = 0;  // mIoU of the student before any step
  double acc = 0;         // mIoU after (of the weights kept)
  int steps = 0;          // optimizer steps taken (0 when skipped)
  bool restored = false;  // the best copy (an earlier step's, or the start's) was put back
};

// Algorithm 1 over a session: owns the Adam state for the trained tensors, which persists
// across key frames. mode None only evaluates.
class Distiller {
 public:
  Distiller(Student& student, Distillation mode, DistillConfig cfg = {});
  // x: (1,3,H,W) normalised frame. For partial distillation the frozen front is computed once
  // and reused across the steps unless reuse_front is false (results are identical).
  DistillOutcome distill(const Tensor& x, const Target& target, bool reuse_front = true);
  const DistillConfig& config() const { return cfg_; }
  Distillation mode() const { return mode_; }
  const Student& student() const { return student_; }
  // The optimizer over the trained tensors (nullptr in mode None).
  const Adam* optimizer() const { return adam_.get(); }
  // The student's weights were adapted elsewhere (a migrated session): the optimizer continues
  // instead of starting cold (Adam::warm_start).
  void continue_adapted() {
    if (adam_) adam_->warm_start();
  }

 private:
  Student& student_;
  Distillation mode_;
  DistillConfig cfg_;
  std::vector<Tensor> trained_;
  std::unique_ptr<Adam> adam_;
};

}  // namespace st::nn
