// CUDA kernels of the detection ops (the Mask R-CNN teacher): ROIAlign, one thread per output
// value, with the CPU path's shared per-value routine (kernels/cpu/roi_align.h).
#include "kernels/cpu/roi_align.h"
#include "kernels/cuda/cuda_backend_impl.cuh"

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

}  // namespace st::cuda
