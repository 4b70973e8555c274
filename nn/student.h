// The ShadowTutor student network (SPEC §2): a JITNet-style encoder/decoder with
// pre-activation blocks, 68 tensors, 483,873 parameters, 9 output classes.
//
// The forward pass is split at the partial-distillation boundary: `front()` runs the frozen
// part (in_conv1 .. dec1) and returns the activations the back needs; `back()` runs the trained
// part (dec2 .. out_conv3). For partial distillation the front's result on a key frame can be
// computed once and reused for every training step (SPEC §4).
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "common/mode.h"
#include "nn/module.h"

namespace st::nn {

// diff(ci->co, s): p = relu(BN(x)); short = conv1x1_s(p); long = conv3x1(conv1x3(relu(conv3x3_s(p))))
// same(c, s): like diff but short = x[:, :, ::s, ::s] (raw input, strided), no short conv.
class StudentBlock : public Module {
 public:
  StudentBlock(int64_t in, int64_t out, int64_t stride, bool same);
  Tensor forward(const Tensor& x) const;

 private:
  bool same_;
  int64_t stride_;
  BatchNorm2d* bn_;
  Conv2d* short_ = nullptr;
  Conv2d *long0_, *long2_, *long3_;
};

// The student's blocks in forward order: the units a partial split is made of.
// in_conv1 in_conv2 enc1 enc2 enc3 dec1 dec2 dec3 out_conv1 out_conv2 out_conv3
inline constexpr int kStudentBlocks = 11;
const char* student_block_name(int block);  // "in_conv1", ...; throws outside [0, 11)
// The block of that name; throws st::Error listing the names otherwise.
int student_block(const std::string& name);
inline constexpr int kDefaultSplit = 6;  // dec2: the paper's partial distillation (SPEC §4)

// Which tensors partial distillation trains: every block from `first` on (in_conv2 .. out_conv3;
// default dec2, the paper's), and of those either all tensors or only the biases and batch-norm
// affine parameters (`bias_only`). Full distillation trains everything whatever the split.
struct PartialSplit {
  int first = kDefaultSplit;
  bool bias_only = false;
  bool operator==(const PartialSplit&) const = default;
};
// "dec2", "dec2 (biases and BN affine only)".
std::string split_name(const PartialSplit& s);

// What the frozen front hands to the trained back: the activations of the blocks before the
// split (those the back reads are defined; the rest may be too).
struct StudentFront {
  int split = kDefaultSplit;  // the first block the back runs
  Tensor x;                   // the input (kept only when the back starts at in_conv1)
  Tensor x1, x2, e1, e2, e3;  // in_conv1 .. enc3 outputs
  Tensor d1, d2, d3;          // dec1 .. dec3 outputs, upsampled (to e2, e1, x1 sizes)
  Tensor o1, o2;              // out_conv1, out_conv2 outputs
  int64_t x1_h = 0, x1_w = 0;  // size of in_conv1's output (H/2)
  int64_t h = 0, w = 0;        // input size
};

// Which of the student's tensors train (and travel in a blob). Not a second mode enum: it is a
// property of one student copy, derived from the run's Mode by distillation_of, and it has a
// value no Mode has: None, the copy that never trains (the edge's own, a frozen student).
enum class Distillation { None, Partial, Full };
const char* distillation_name(Distillation d);  // "none" | "partial" | "full"
// The tensors a mode trains: Partial -> Partial (dec2 .. out_conv3), Full -> Full (all),
// Naive and Wild -> None (nothing is distilled).
Distillation distillation_of(Mode mode);

class Student : public Module {
 public:
  static constexpr int64_t kClasses = 9;
  // Mean subtracted from BGR pixels (Detectron2 defaults, SPEC §2).
  static constexpr float kMeanBGR[3] = {103.53f, 116.28f, 123.675f};

  // Random initialisation (PyTorch's defaults), deterministic for a given seed.
  explicit Student(uint64_t seed = 0);

  // x: (N, 3, H, W) normalised BGR float. Returns logits (N, 9, H, W).
  Tensor forward(const Tensor& x) const { return back(front(x, 0)); }
  // The blocks before `split` (default: this student's partial split) and the blocks from it
  // on; back(front(x, k)) is forward(x), bit for bit, for every k in [0, 11).
  StudentFront front(const Tensor& x) const { return front(x, split_.first); }
  StudentFront front(const Tensor& x, int split) const;
  Tensor back(const StudentFront& f) const;

  // The tensors partial distillation trains on this student copy (default: dec2 .. out_conv3,
  // all tensors). Changing it reconfigures nothing by itself: call configure() after.
  void set_partial_split(const PartialSplit& s);
  const PartialSplit& partial_split() const { return split_; }

  // Names of the parameters trained (and transmitted) by a mode, in model order: Partial, the
  // split's (by default the 26 tensors of dec2, dec3, out_conv1, out_conv2, out_conv3); Full,
  // all 68; None, none.
  std::vector<std::string> trained_names(Distillation mode) const;
  // Sets requires_grad: trained parameters on, the rest off. None freezes everything.
  void configure(Distillation mode);
  std::vector<Tensor> trained_parameters(Distillation mode) const;

  // Whether a profiler scope (tensor/profile.h) belongs to the frozen front of this student's
  // partial split (by default in_conv1 .. dec1) or a submodule of it. A partial step whose
  // split trains whole blocks must run no backward kernel in one.
  bool front_scope(const std::string& scope) const;

  // Converts an interleaved 8-bit BGR image (H, W, 3) to the normalised (1, 3, H, W) input.
  static Tensor preprocess_bgr(const uint8_t* bgr, int64_t h, int64_t w);

 private:
  Conv2d *in_conv1_, *in_conv2_;
  StudentBlock *enc1_, *enc2_, *enc3_, *dec1_, *dec2_, *dec3_;
  Conv2d *out_conv1_, *out_conv2_, *out_conv3_;
  PartialSplit split_;
  void run_blocks(StudentFront& f, int from, int to) const;
};

}  // namespace st::nn
