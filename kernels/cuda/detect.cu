// CUDA kernels of the detection ops (the Mask R-CNN teacher): ROIAlign (one thread per output
// value), the grouped NMS overlap mask (one thread per 64-box word), the stable descending sort
// (CUB's radix sort), the row gather, mask paste (one thread per pixel); the per-element math
// is the CPU path's (kernels/common/roi_align.h, kernels/common/detect_math.h).
#include <cub/device/device_radix_sort.cuh>

#include "kernels/common/detect_math.h"
#include "kernels/common/roi_align.h"
#include "kernels/cuda/backend.cuh"

namespace st::cuda {

namespace {
template <class T>
__global__ void roi_align_kernel(const T* x, const T* rois, T* out, int64_t R, int64_t C,
                                 int64_t H, int64_t W, int64_t PH, int64_t PW, T scale,
                                 int64_t sampling_ratio, bool aligned) {
  ST_GRID_STRIDE(idx, R * C * PH * PW) {
    const int64_t pw = idx % PW, ph = (idx / PW) % PH, c = (idx / (PW * PH)) % C,
                  r = idx / (PW * PH * C);
    const T* roi = rois + r * 5;
    const RoiGeom<T> g = roi_geom<T>(roi + 1, scale, PH, PW, sampling_ratio, aligned);
    out[idx] = roi_align_value(x + (int64_t(roi[0]) * C + c) * H * W, H, W, g, ph, pw);
  }
}
}  // namespace

// Batch indices are validated by the op (teacher_port/detect_ops.cpp) before it gets here.
void CudaBackend::roi_align_forward(const Tensor& x, const Tensor& rois, double spatial_scale,
                                    int64_t sampling_ratio, bool aligned, Tensor& out) {
  const int64_t n = out.numel();
  if (n == 0) return;
  Op op("roi_align_forward", x.device().index);
  dispatch_float("roi_align_forward", x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    roi_align_kernel<<<blocks_for(n), 256, 0, op.ctx.stream>>>(
        x.data<T>(), rois.data<T>(), out.data<T>(), rois.size(0), x.size(1), x.size(2), x.size(3),
        out.size(2), out.size(3), T(spatial_scale), sampling_ratio, aligned);
  });
  ST_CUDA_LAUNCHED(op.ctx);
}

namespace {
// One thread per (row i, word w) of the grouped mask: the overlap bits of box i with the boxes
// 64w..64w+63 of its own group, counted from the group's first box (detect::nms_mask_word, the
// CPU kernel's function); words past the group's end are 0.
__global__ void nms_mask_kernel(const float* boxes, const int64_t* groups, uint64_t* mask,
                                int64_t K, int64_t words, float thr) {
  ST_GRID_STRIDE(idx, K * words) {
    const int64_t i = idx / words, w = idx % words;
    const detect::GroupSpan span = detect::group_span(groups, K, i);
    mask[idx] = w * 64 < span.hi - span.lo ? detect::nms_mask_word(boxes, span, i, w, thr) : 0;
  }
}

// One thread per output element: out[i, c] = src[index[i], c].
__global__ void gather_rows_kernel(const float* src, const int64_t* index, float* out, int64_t k,
                                   int64_t C) {
  ST_GRID_STRIDE(idx, k * C) {
    const int64_t i = idx / C, c = idx % C;
    out[idx] = src[index[i] * C + c];
  }
}

__global__ void iota_kernel(int64_t* v, int64_t n) {
  ST_GRID_STRIDE(i, n) { v[i] = i; }
}

// One thread per image pixel of each mask.
__global__ void paste_kernel(const float* masks, const float* boxes, uint8_t* out, int64_t D,
                             int64_t M, int64_t H, int64_t W, bool torchvision, float thr) {
  ST_GRID_STRIDE(idx, D * H * W) {
    const int64_t x = idx % W, y = (idx / W) % H, d = idx / (W * H);
    const float* m = masks + d * M * M;
    const float* box = boxes + d * 4;
    uint8_t v = 0;
    if (torchvision) {
      const detect::PasteTv g = detect::paste_tv_geometry(box, M, H, W);
      if (x >= g.x_0 && x < g.x_1 && y >= g.y_0 && y < g.y_1)
        v = detect::paste_tv_value(m, M, g, x, y) > thr;
    } else {
      const detect::PasteWindow w = detect::paste_d2_window(box, H, W);
      if (x >= w.x_lo && x < w.x_hi && y >= w.y_lo && y < w.y_hi)
        v = detect::paste_d2_value(m, M, box, x, y) >= thr;
    }
    out[idx] = v;
  }
}
}  // namespace

void CudaBackend::nms_mask(const Tensor& boxes, const Tensor& groups, double iou_threshold,
                           Tensor& mask) {
  const int64_t K = boxes.size(0), words = mask.size(1);
  if (K == 0 || words == 0) return;
  Op op("nms_mask", boxes.device().index);
  nms_mask_kernel<<<blocks_for(K * words), 256, 0, op.ctx.stream>>>(
      boxes.data<float>(), groups.data<int64_t>(),
      reinterpret_cast<uint64_t*>(mask.data<int64_t>()), K, words, float(iou_threshold));
  ST_CUDA_LAUNCHED(op.ctx);
}

// Indices are not checked here (that would need a read-back): the op takes them from sort_desc.
void CudaBackend::gather_rows(const Tensor& src, const Tensor& index, Tensor& out) {
  const int64_t n = out.numel();
  if (n == 0) return;
  Op op("gather_rows", src.device().index);
  gather_rows_kernel<<<blocks_for(n), 256, 0, op.ctx.stream>>>(
      src.data<float>(), index.data<int64_t>(), out.data<float>(), out.size(0), out.size(1));
  ST_CUDA_LAUNCHED(op.ctx);
}

// CUB's radix sort is stable: keys in index order give ties in index order.
void CudaBackend::sort_desc(const Tensor& scores, Tensor& order) {
  const int64_t K = scores.size(0);
  if (K == 0) return;
  ST_CHECK(K <= int64_t(INT32_MAX), "sort_desc: ", K, " values is more than one sort takes");
  Op op("sort_desc", scores.device().index);
  const Device dev = scores.device();
  Tensor keys_out = Tensor::empty({K}, DType::F32, dev), idx = Tensor::empty({K}, DType::I64, dev);
  iota_kernel<<<blocks_for(K), 256, 0, op.ctx.stream>>>(idx.data<int64_t>(), K);
  ST_CUDA_LAUNCHED(op.ctx);
  size_t bytes = 0;
  ST_CUDA_CHECK(cub::DeviceRadixSort::SortPairsDescending(
      nullptr, bytes, scores.data<float>(), keys_out.data<float>(), idx.data<int64_t>(),
      order.data<int64_t>(), int(K), 0, 32, op.ctx.stream));
  Tensor temp = Tensor::empty({int64_t(bytes) + 1}, DType::U8, dev);
  ST_CUDA_CHECK(cub::DeviceRadixSort::SortPairsDescending(
      temp.data<uint8_t>(), bytes, scores.data<float>(), keys_out.data<float>(),
      idx.data<int64_t>(), order.data<int64_t>(), int(K), 0, 32, op.ctx.stream));
  ST_CUDA_LAUNCHED(op.ctx);
}

void CudaBackend::paste_masks(const Tensor& masks, const Tensor& boxes, bool torchvision,
                              double threshold, Tensor& out) {
  const int64_t n = out.numel();
  if (n == 0) return;
  Op op("paste_masks", masks.device().index);
  paste_kernel<<<blocks_for(n), 256, 0, op.ctx.stream>>>(
      masks.data<float>(), boxes.data<float>(), out.data<uint8_t>(), out.size(0), masks.size(1),
      out.size(1), out.size(2), torchvision, float(threshold));
  ST_CUDA_LAUNCHED(op.ctx);
}

}  // namespace st::cuda
