// Whole-network golden checks that run on any device: the CPU tests call them with the CPU, the
// CUDA tests (test_cuda.cpp) with the GPU, against the same float64 reference and the same
// derived bound (a float32 forward's rounding error in any summation order, tests/README.md).
#pragma once
#include <cstdint>
#include <string>

#include "tensor/dtype.h"

namespace st::test {

// test_student.cpp: the pretrained student on two vtest frames against torch's float64 logits,
// within lambda * sigma; the argmax on every certain pixel. Needs ../shared.
bool student_golden_available(std::string& why);
void check_student_golden(Device device);

// test_teacher_backbone.cpp: Debian's python3-torchvision (the generator needs it).
bool have_torchvision();
// C2..C5, P2..P6 of the seeded ResNet-50 + FPN against torchvision's float64, within lambda *
// sigma, both stride conventions.
void check_teacher_backbone_golden(Device device);
// The seeded Mask R-CNN end to end against torchvision's model output: the network input within
// its derived bound, detections and masks matched as sets with the suite's one set of fixed
// tolerances (tests/README.md, "the one exception").
void check_teacher_end_to_end(int64_t min_size, int64_t max_size, Device device);

}  // namespace st::test
