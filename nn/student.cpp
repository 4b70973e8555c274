// The student network of SPEC §2.
#include "nn/student.h"

#include <algorithm>
#include <cstring>

#include "tensor/autograd.h"

namespace st::nn {

StudentBlock::StudentBlock(int64_t in, int64_t out, int64_t stride, bool same)
    : same_(same), stride_(stride) {
  // Registration order defines parameter order: preact_path.0, short_path, long_path.{0,2,3}
  // (the order of the published checkpoint).
  bn_ = &register_module("preact_path.0", std::make_unique<BatchNorm2d>(in));
  if (!same) short_ = &register_module("short_path", std::make_unique<Conv2d>(in, out, 1, 1, stride));
  long0_ = &register_module("long_path.0", std::make_unique<Conv2d>(in, out, 3, 3, stride));
  long2_ = &register_module("long_path.2", std::make_unique<Conv2d>(out, out, 1, 3));
  long3_ = &register_module("long_path.3", std::make_unique<Conv2d>(out, out, 3, 1));
}

Tensor StudentBlock::forward(const Tensor& x) const {
  profile::Scope in(scope());
  Tensor p = relu(bn_->forward(x));
  Tensor s = same_ ? subsample(x, stride_) : short_->forward(p);
  Tensor l = long3_->forward(long2_->forward(relu(long0_->forward(p))));
  return add(s, l);
}

const char* distillation_name(Distillation d) {
  switch (d) {
    case Distillation::None: return "none";
    case Distillation::Partial: return "partial";
    case Distillation::Full: return "full";
  }
  return "?";
}

Distillation distillation_of(Mode mode) {
  switch (mode) {
    case Mode::Partial: return Distillation::Partial;
    case Mode::Full: return Distillation::Full;
    case Mode::Naive:
    case Mode::Wild: return Distillation::None;
  }
  throw Error("distillation_of: unknown mode " + std::to_string(int(mode)));
}

Student::Student(uint64_t seed) {
  in_conv1_ = &register_module("in_conv1", std::make_unique<Conv2d>(3, 8, 3, 3, 2));
  in_conv2_ = &register_module("in_conv2", std::make_unique<Conv2d>(8, 8, 3, 3, 2));
  enc1_ = &register_module("enc1", std::make_unique<StudentBlock>(8, 64, 2, false));
  enc2_ = &register_module("enc2", std::make_unique<StudentBlock>(64, 64, 2, true));
  enc3_ = &register_module("enc3", std::make_unique<StudentBlock>(64, 128, 2, false));
  dec1_ = &register_module("dec1", std::make_unique<StudentBlock>(128, 64, 1, false));
  dec2_ = &register_module("dec2", std::make_unique<StudentBlock>(128, 32, 1, false));
  dec3_ = &register_module("dec3", std::make_unique<StudentBlock>(96, 32, 1, false));
  out_conv1_ = &register_module("out_conv1", std::make_unique<Conv2d>(32, 32, 3, 3));
  out_conv2_ = &register_module("out_conv2", std::make_unique<Conv2d>(32, 32, 3, 3));
  out_conv3_ = &register_module("out_conv3", std::make_unique<Conv2d>(32, kClasses, 1, 1));
  init_conv_uniform(seed);
  name_scopes("student");
}

namespace {
constexpr const char* kBlockNames[kStudentBlocks] = {"in_conv1", "in_conv2", "enc1",      "enc2",
                                                     "enc3",     "dec1",     "dec2",      "dec3",
                                                     "out_conv1", "out_conv2", "out_conv3"};

// The activations a block boundary can cut, each with the block that makes it (-1: the input)
// and the last block that reads it: alive between the two.
struct Slot {
  Tensor StudentFront::*t;
  int made_by, last_read;
};
constexpr Slot kSlots[] = {{&StudentFront::x, -1, 0},  {&StudentFront::x1, 0, 1},
                           {&StudentFront::x2, 1, 2},  {&StudentFront::e1, 2, 7},
                           {&StudentFront::e2, 3, 6},  {&StudentFront::e3, 4, 5},
                           {&StudentFront::d1, 5, 6},  {&StudentFront::d2, 6, 7},
                           {&StudentFront::d3, 7, 8},  {&StudentFront::o1, 8, 9},
                           {&StudentFront::o2, 9, 10}};
}  // namespace

const char* student_block_name(int block) {
  ST_CHECK(block >= 0 && block < kStudentBlocks, "student: no block ", block, " (0 .. ",
           kStudentBlocks - 1, ")");
  return kBlockNames[block];
}

int student_block(const std::string& name) {
  std::string all;
  for (int b = 0; b < kStudentBlocks; ++b) {
    if (name == kBlockNames[b]) return b;
    all += (b ? ", " : "") + std::string(kBlockNames[b]);
  }
  throw Error("student: no block named '" + name + "' (blocks: " + all + ")");
}

std::string split_name(const PartialSplit& s) {
  return std::string(student_block_name(s.first)) +
         (s.bias_only ? " (biases and BN affine only)" : "");
}

void Student::set_partial_split(const PartialSplit& s) {
  ST_CHECK(s.first >= 1 && s.first < kStudentBlocks,
           "student: partial training starts at a block from in_conv2 to out_conv3, not ",
           s.first >= 0 && s.first < kStudentBlocks ? kBlockNames[s.first] : "that");
  split_ = s;
}

// Runs blocks [from, to) on f's activations, dropping each one after its last reader.
void Student::run_blocks(StudentFront& f, int from, int to) const {
  for (int b = from; b < to; ++b) {
    switch (b) {
      case 0:
        f.x1 = in_conv1_->forward(f.x);
        f.x1_h = f.x1.size(2);
        f.x1_w = f.x1.size(3);
        break;
      case 1: f.x2 = in_conv2_->forward(f.x1); break;
      case 2: f.e1 = enc1_->forward(f.x2); break;
      case 3: f.e2 = enc2_->forward(f.e1); break;
      case 4: f.e3 = enc3_->forward(f.e2); break;
      case 5: f.d1 = resize_bilinear(dec1_->forward(f.e3), f.e2.size(2), f.e2.size(3)); break;
      case 6:
        f.d2 = resize_bilinear(dec2_->forward(cat({f.d1, f.e2}, 1)), f.e1.size(2), f.e1.size(3));
        break;
      case 7: f.d3 = resize_bilinear(dec3_->forward(cat({f.d2, f.e1}, 1)), f.x1_h, f.x1_w); break;
      case 8: f.o1 = out_conv1_->forward(f.d3); break;
      case 9: f.o2 = out_conv2_->forward(f.o1); break;
      // out_conv3 (1x1) is linear per pixel and bilinear resize is a per-channel linear map
      // whose weights sum to 1, so they commute exactly: apply the 1x1 conv at half resolution
      // on 32 channels, then upsample 9 channels (bias passes through since the weights sum
      // to 1). Its result is the back's return value, not a slot.
      default: break;
    }
    for (const Slot& sl : kSlots)
      if (sl.last_read == b) f.*sl.t = Tensor();
  }
}

StudentFront Student::front(const Tensor& x, int split) const {
  ST_CHECK(x.dim() == 4 && x.size(1) == 3, "student: input must be (N, 3, H, W), got ",
           x.shape());
  ST_CHECK(split >= 0 && split < kStudentBlocks, "student: no block ", split, " to split at");
  profile::Scope in(scope());
  StudentFront f;
  f.split = split;
  f.h = x.size(2);
  f.w = x.size(3);
  f.x = x;
  run_blocks(f, 0, split);
  return f;
}

Tensor Student::back(const StudentFront& front) const {
  profile::Scope in(scope());
  StudentFront f = front;  // handles: the caller's cached activations stay
  run_blocks(f, f.split, kStudentBlocks - 1);
  Tensor o2 = f.o2;
  f = StudentFront();  // nothing else is read from here on
  return resize_bilinear(out_conv3_->forward(o2), front.h, front.w);
}

std::vector<std::string> Student::trained_names(Distillation mode) const {
  std::vector<std::string> out;
  if (mode == Distillation::None) return out;
  for (auto& [n, t] : named_parameters()) {
    if (mode == Distillation::Full) {
      out.push_back(n);
      continue;
    }
    bool in_back = false;
    for (int b = split_.first; b < kStudentBlocks && !in_back; ++b)
      in_back = n.rfind(std::string(kBlockNames[b]) + ".", 0) == 0;
    // bias_only: conv biases, and batch norm's weight and bias (the blocks' preact_path.0)
    const bool affine = n.size() >= 5 && (n.compare(n.size() - 5, 5, ".bias") == 0 ||
                                          n.find(".preact_path.") != std::string::npos);
    if (in_back && (!split_.bias_only || affine)) out.push_back(n);
  }
  return out;
}

void Student::configure(Distillation mode) {
  set_trainable(false);
  for (auto& n : trained_names(mode)) parameter(n).set_requires_grad(true);
}

std::vector<Tensor> Student::trained_parameters(Distillation mode) const {
  std::vector<Tensor> out;
  for (auto& n : trained_names(mode)) out.push_back(parameter(n));
  return out;
}

bool Student::front_scope(const std::string& scope) const {
  for (int b = 0; b < split_.first; ++b) {
    const size_t n = std::strlen(kBlockNames[b]);
    if (scope.compare(0, n, kBlockNames[b]) == 0 && (scope.size() == n || scope[n] == '.'))
      return true;
  }
  return false;
}

Tensor Student::preprocess_bgr(const uint8_t* bgr, int64_t h, int64_t w) {
  Tensor t = Tensor::empty({1, 3, h, w});
  float* p = t.data<float>();
  const int64_t plane = h * w;
#pragma omp parallel for if (plane > 65536)
  for (int64_t i = 0; i < plane; ++i)
    for (int c = 0; c < 3; ++c) p[c * plane + i] = float(bgr[i * 3 + c]) - kMeanBGR[c];
  return t;
}

}  // namespace st::nn
