// ROIAlign, one output value at a time, shared by the CPU and CUDA backends (host and device).
// torchvision's algorithm (roi_align_kernel.cpp / roi_align_common.h; MASKRCNN.md §5.1), in the
// element type T with its operation order, so float results match torchvision's float kernel.
#pragma once
#include <cmath>
#include <cstdint>

#include "tensor/half.h"  // ST_HD

namespace st {

template <class T>
struct RoiGeom {
  T x0 = 0, y0 = 0, bin_w = 0, bin_h = 0;
  int64_t grid_h = 0, grid_w = 0;  // sampling points per bin (may be <= 0 for empty boxes)
  T count = 1;
};

// box: x0, y0, x1, y1 in input pixels.
template <class T>
ST_HD inline RoiGeom<T> roi_geom(const T* box, T scale, int64_t PH, int64_t PW,
                                 int64_t sampling_ratio, bool aligned) {
  RoiGeom<T> g;
  const T off = aligned ? T(0.5) : T(0);
  g.x0 = box[0] * scale - off;
  g.y0 = box[1] * scale - off;
  T w = box[2] * scale - off - g.x0;
  T h = box[3] * scale - off - g.y0;
  if (!aligned) {
    w = w > T(1) ? w : T(1);
    h = h > T(1) ? h : T(1);
  }
  g.bin_h = h / T(PH);
  g.bin_w = w / T(PW);
  g.grid_h = sampling_ratio > 0 ? sampling_ratio : int64_t(ceil(h / T(PH)));
  g.grid_w = sampling_ratio > 0 ? sampling_ratio : int64_t(ceil(w / T(PW)));
  const int64_t c = g.grid_h * g.grid_w;
  g.count = T(c > 1 ? c : 1);
  return g;
}

// Output (ph, pw) of one channel plane (H x W, row-major).
template <class T>
ST_HD inline T roi_align_value(const T* plane, int64_t H, int64_t W, const RoiGeom<T>& g,
                               int64_t ph, int64_t pw) {
  T acc = 0;
  for (int64_t iy = 0; iy < g.grid_h; ++iy) {
    const T yy = g.y0 + T(ph) * g.bin_h + T(float(iy) + 0.5f) * g.bin_h / T(g.grid_h);
    for (int64_t ix = 0; ix < g.grid_w; ++ix) {
      T x = g.x0 + T(pw) * g.bin_w + T(float(ix) + 0.5f) * g.bin_w / T(g.grid_w);
      T y = yy;
      if (y < T(-1) || y > T(H) || x < T(-1) || x > T(W)) continue;  // contributes 0
      if (y <= T(0)) y = 0;
      if (x <= T(0)) x = 0;
      int64_t yl = int64_t(y), xl = int64_t(x), yh, xh;
      if (yl >= H - 1) {
        yh = yl = H - 1;
        y = T(yl);
      } else {
        yh = yl + 1;
      }
      if (xl >= W - 1) {
        xh = xl = W - 1;
        x = T(xl);
      } else {
        xh = xl + 1;
      }
      const T ly = y - T(yl), lx = x - T(xl), hy = T(1) - ly, hx = T(1) - lx;
      acc += hy * hx * plane[yl * W + xl] + hy * lx * plane[yl * W + xh] +
             ly * hx * plane[yh * W + xl] + ly * lx * plane[yh * W + xh];
    }
  }
  return acc / g.count;
}

}  // namespace st
