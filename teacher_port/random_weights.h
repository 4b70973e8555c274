// A seeded random Mask R-CNN R50-FPN under Detectron2's names and class layout (MASKRCNN.md §8):
// every tensor the teacher reads, with shapes from the architecture, for tests and benchmarks
// that need a model without Python (CPU/CUDA parity, GPU timing). He-normal convolutions and
// linears, identity FrozenBN (weight 1, bias 0, mean 0, var 1), each bottleneck's last conv
// scaled down so activations stay O(1) through 16 residual blocks, and a box classifier biased
// towards a few classes so that detections pass the 0.5 threshold. Deterministic for a seed on
// one standard library (std::mt19937_64; the normal distribution is the library's).
#pragma once
#include <cstdint>

#include "tensor/safetensors.h"

namespace st::teacher {

safetensors::File random_maskrcnn_weights(uint64_t seed, int64_t classes = 80);

}  // namespace st::teacher
