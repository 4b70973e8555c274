// CPU kernels of the detection ops (the Mask R-CNN teacher): ROIAlign, the grouped NMS overlap
// mask, the stable descending sort (top-k), the row gather, mask paste. Per-element math shared
// with CUDA (kernels/common/roi_align.h, kernels/common/detect_math.h).
#include <algorithm>
#include <numeric>

#include "kernels/common/detect_math.h"
#include "kernels/common/roi_align.h"
#include "kernels/cpu/backend.h"
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

void CpuBackend::nms_mask(const Tensor& boxes, const Tensor& groups, double iou_threshold,
                          Tensor& mask) {
  const int64_t K = boxes.size(0), words = mask.size(1);
  const float* b = boxes.data<float>();
  const int64_t* g = groups.data<int64_t>();
  int64_t* m = mask.data<int64_t>();
  const float thr = float(iou_threshold);
#pragma omp parallel for schedule(dynamic, 16) if (K > 256)
  for (int64_t i = 0; i < K; ++i) {
    uint64_t* row = reinterpret_cast<uint64_t*>(m + i * words);
    const detect::GroupSpan span = detect::group_span(g, K, i);
    for (int64_t w = 0; w < words; ++w)
      row[w] = w * 64 < span.hi - span.lo ? detect::nms_mask_word(b, span, i, w, thr) : 0;
  }
}

void CpuBackend::sort_desc(const Tensor& scores, Tensor& order) {
  const int64_t K = scores.size(0);
  const float* s = scores.data<float>();
  int64_t* o = order.data<int64_t>();
  std::iota(o, o + K, int64_t(0));
  std::stable_sort(o, o + K, [&](int64_t a, int64_t b) { return s[a] > s[b]; });
}

void CpuBackend::gather_rows(const Tensor& src, const Tensor& index, Tensor& out) {
  const int64_t N = src.size(0), C = src.size(1), k = index.size(0);
  const float* ps = src.data<float>();
  const int64_t* pi = index.data<int64_t>();
  float* po = out.data<float>();
  for (int64_t i = 0; i < k; ++i) {
    const int64_t r = pi[i];
    ST_CHECK(r >= 0 && r < N, "gather_rows: index ", i, " is ", r, ", the source has ", N, " rows");
    std::copy_n(ps + r * C, C, po + i * C);
  }
}

void CpuBackend::paste_masks(const Tensor& masks, const Tensor& boxes, bool torchvision,
                             double threshold, Tensor& out) {
  const int64_t D = masks.size(0), M = masks.size(1), H = out.size(1), W = out.size(2);
  const float* pm = masks.data<float>();
  const float* pb = boxes.data<float>();
  uint8_t* po = out.data<uint8_t>();
  const float thr = float(threshold);
#pragma omp parallel for if (D > 1)
  for (int64_t d = 0; d < D; ++d) {
    const float* m = pm + d * M * M;
    const float* box = pb + d * 4;
    uint8_t* o = po + d * H * W;
    std::fill_n(o, H * W, uint8_t(0));
    if (torchvision)
      detect::paste_tv_into(m, M, box, H, W, o, thr);
    else
      detect::paste_d2_into(m, M, box, H, W, o, thr);
  }
}

}  // namespace st::cpu
