// CPU kernels of the detection ops (the Mask R-CNN teacher): ROIAlign.
#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/roi_align.h"
#include "kernels/cpu/strided.h"

namespace st::cpu {

void CpuBackend::roi_align_forward(const Tensor& x, const Tensor& rois, double spatial_scale,
                                   int64_t sampling_ratio, bool aligned, Tensor& out) {
  dispatch_float("roi_align_forward", x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
    const int64_t R = rois.size(0), PH = out.size(2), PW = out.size(3);
    const T* px = x.data<T>();
    const T* pr = rois.data<T>();
    T* po = out.data<T>();
    for (int64_t r = 0; r < R; ++r) {
      const int64_t b = int64_t(pr[r * 5]);
      ST_CHECK(b >= 0 && b < N, "roi_align: roi ", r, " has batch index ", b, ", the input has ",
               N, " images");
    }
#pragma omp parallel for collapse(2) if (R * C * PH * PW > 16384)
    for (int64_t r = 0; r < R; ++r)
      for (int64_t c = 0; c < C; ++c) {
        const T* roi = pr + r * 5;
        const RoiGeom<T> g = roi_geom<T>(roi + 1, T(spatial_scale), PH, PW, sampling_ratio, aligned);
        const T* plane = px + (int64_t(roi[0]) * C + c) * H * W;
        T* o = po + (r * C + c) * PH * PW;
        for (int64_t ph = 0; ph < PH; ++ph)
          for (int64_t pw = 0; pw < PW; ++pw) o[ph * PW + pw] = roi_align_value(plane, H, W, g, ph, pw);
      }
  });
}

}  // namespace st::cpu
