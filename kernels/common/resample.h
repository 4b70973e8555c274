// Source-coordinate rules for resampling, shared by every backend (host and device).
#pragma once
#include <cmath>
#include <cstdint>

#include "tensor/half.h"  // ST_HD

namespace st {

// Bilinear, align_corners=False (PyTorch): src = (dst + 0.5) * in/out - 0.5, clamped at 0;
// the two taps are i0 and i0+1 (clamped to in-1) with weights 1-l and l. `single` reproduces
// torch's CPU float32 rounding (measured against torch 1.13: the scale in float, float(in)/out,
// the source coordinate in double, the weight rounded to float), so that float tensors resample
// as torch's do to an ulp; otherwise everything is double.
struct BilinearTap {
  int64_t i0, i1;
  double l0, l1;
};
ST_HD inline BilinearTap bilinear_tap(int64_t dst, int64_t in, int64_t out, bool single = false) {
  const double scale = single ? double(float(in) / float(out)) : double(in) / double(out);
  double src = (double(dst) + 0.5) * scale - 0.5;
  if (src < 0) src = 0;
  int64_t i0 = int64_t(src);
  if (i0 > in - 1) i0 = in - 1;
  const int64_t i1 = i0 < in - 1 ? i0 + 1 : i0;
  if (single) {
    const float l1 = float(src - double(i0));
    return {i0, i1, double(1.0f - l1), double(l1)};
  }
  const double l1 = src - double(i0);
  return {i0, i1, 1.0 - l1, l1};
}

// PyTorch's legacy "nearest": src = min(floor(dst * (float)in/out), in-1), computed in float
// as PyTorch does (so indices agree with it bit for bit).
ST_HD inline int64_t nearest_src(int64_t dst, int64_t in, int64_t out) {
  if (in == out) return dst;
  if (out == 2 * in) return dst >> 1;
  float scale = float(in) / float(out);
  int64_t s = int64_t(floorf(float(dst) * scale));
  return s < in - 1 ? s : in - 1;
}

}  // namespace st
