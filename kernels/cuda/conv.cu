// Convolutions through cuDNN (forward, backward-data, backward-filter; transposed convolution as
// backward-data). Algorithms are chosen once per problem (shape, dtype, parameters) and cached in
// the device context with the math type cuDNN chose them with; the workspace is the context's one
// grow-only buffer, capped by cudnn_workspace_limit(). Benchmark mode (ST_CUDNN_BENCHMARK=1) times
// the candidates in a search buffer of the full limit that is freed right after the search.
#include <string>
#include <vector>

#include "kernels/cuda/backend.cuh"

namespace st::cuda {

namespace {

template <class T> cudnnDataType_t cudnn_type();
template <> cudnnDataType_t cudnn_type<float>() { return CUDNN_DATA_FLOAT; }
template <> cudnnDataType_t cudnn_type<double>() { return CUDNN_DATA_DOUBLE; }

struct TensorDesc {
  cudnnTensorDescriptor_t d = nullptr;
  TensorDesc(cudnnDataType_t t, const Tensor& x) {
    ST_CUDNN_CHECK(cudnnCreateTensorDescriptor(&d));
    ST_CUDNN_CHECK(cudnnSetTensor4dDescriptor(d, CUDNN_TENSOR_NCHW, t, int(x.size(0)),
                                              int(x.size(1)), int(x.size(2)), int(x.size(3))));
  }
  ~TensorDesc() { cudnnDestroyTensorDescriptor(d); }
};
struct FilterDesc {
  cudnnFilterDescriptor_t d = nullptr;
  FilterDesc(cudnnDataType_t t, const Tensor& w) {
    ST_CUDNN_CHECK(cudnnCreateFilterDescriptor(&d));
    ST_CUDNN_CHECK(cudnnSetFilter4dDescriptor(d, t, CUDNN_TENSOR_NCHW, int(w.size(0)),
                                              int(w.size(1)), int(w.size(2)), int(w.size(3))));
  }
  ~FilterDesc() { cudnnDestroyFilterDescriptor(d); }
};
struct ConvDesc {
  cudnnConvolutionDescriptor_t d = nullptr;
  cudnnMathType_t requested = CUDNN_DEFAULT_MATH;  // what the search may use (set below)
  ConvDesc(cudnnDataType_t t, const Conv2dParams& p) {
    ST_CUDNN_CHECK(cudnnCreateConvolutionDescriptor(&d));
    ST_CUDNN_CHECK(cudnnSetConvolution2dDescriptor(d, int(p.pad_h), int(p.pad_w), int(p.stride_h),
                                                   int(p.stride_w), 1, 1, CUDNN_CROSS_CORRELATION,
                                                   t));
    ST_CUDNN_CHECK(cudnnSetConvolutionGroupCount(d, int(p.groups)));
    // f32: TF32 tensor cores unless ST_CUDA_TF32=0 (PyTorch's cuDNN default is TF32 on too).
    requested = t == CUDNN_DATA_FLOAT && allow_tf32() ? CUDNN_DEFAULT_MATH : CUDNN_FMA_MATH;
    ST_CUDNN_CHECK(cudnnSetConvolutionMathType(d, requested));
  }
  // Before running a chosen algorithm: its math type, as the search reported it (an algorithm may
  // have been measured, and its workspace sized, with tensor-core math the descriptor's default
  // would not give it). FMA math, once requested (ST_CUDA_TF32=0, f64), stays: the search's
  // answer may not turn TF32 back on.
  void use(const AlgoChoice& c) {
    ST_CUDNN_CHECK(
        cudnnSetConvolutionMathType(d, requested == CUDNN_FMA_MATH ? requested : c.math));
  }
  ~ConvDesc() { cudnnDestroyConvolutionDescriptor(d); }
};

std::string problem_key(const char* kind, DType t, const Tensor& x, const Tensor& w,
                        const Tensor& y, const Conv2dParams& p) {
  std::string k = kind;
  k += dtype_name(t);
  for (const Tensor* a : {&x, &w, &y})
    for (auto s : a->shape()) k += "," + std::to_string(s);
  k += "|" + std::to_string(p.pad_h) + "," + std::to_string(p.pad_w) + "," +
       std::to_string(p.stride_h) + "," + std::to_string(p.stride_w) + "," +
       std::to_string(p.groups) + (allow_tf32() ? "t" : "f");
  return k;
}

// 2 * N * K * OH * OW * (C / groups) * R * S for the convolution with output y, weight w.
double conv_flops(const Tensor& y, const Tensor& w) {
  return 2.0 * double(y.numel()) * double(w.size(1)) * double(w.size(2)) * double(w.size(3));
}

// Whether an algorithm computes through a transform (FFT or Winograd) rather than as sums of
// products of the inputs.
bool transform_algo(cudnnConvolutionFwdAlgo_t a) {
  return a == CUDNN_CONVOLUTION_FWD_ALGO_FFT || a == CUDNN_CONVOLUTION_FWD_ALGO_FFT_TILING ||
         a == CUDNN_CONVOLUTION_FWD_ALGO_WINOGRAD ||
         a == CUDNN_CONVOLUTION_FWD_ALGO_WINOGRAD_NONFUSED;
}
bool transform_algo(cudnnConvolutionBwdDataAlgo_t a) {
  return a == CUDNN_CONVOLUTION_BWD_DATA_ALGO_FFT ||
         a == CUDNN_CONVOLUTION_BWD_DATA_ALGO_FFT_TILING ||
         a == CUDNN_CONVOLUTION_BWD_DATA_ALGO_WINOGRAD ||
         a == CUDNN_CONVOLUTION_BWD_DATA_ALGO_WINOGRAD_NONFUSED;
}
bool transform_algo(cudnnConvolutionBwdFilterAlgo_t a) {
  return a == CUDNN_CONVOLUTION_BWD_FILTER_ALGO_FFT ||
         a == CUDNN_CONVOLUTION_BWD_FILTER_ALGO_FFT_TILING ||
         a == CUDNN_CONVOLUTION_BWD_FILTER_ALGO_WINOGRAD ||
         a == CUDNN_CONVOLUTION_BWD_FILTER_ALGO_WINOGRAD_NONFUSED;
}

// The first algorithm (cuDNN's heuristic order, or measured order in benchmark mode) that
// succeeds and fits the workspace limit (and, under ST_CUDNN_DIRECT_SUMS, is no transform), with
// its math type. Results whose math converts f32 data down to f16 are skipped: the descriptor
// never asks for that (TF32 at most, ST_CUDA_TF32).
template <class Perf>
AlgoChoice pick(const Perf* perf, int n, const std::string& key) {
  for (int i = 0; i < n; ++i)
    if (perf[i].status == CUDNN_STATUS_SUCCESS && perf[i].memory <= cudnn_workspace_limit() &&
        perf[i].mathType != CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION &&
        !(cudnn_direct_sums() && transform_algo(perf[i].algo)))
      return {int(perf[i].algo), perf[i].mathType};
  throw Error("cuDNN has no algorithm for " + key + " within the workspace limit of " +
              std::to_string(cudnn_workspace_limit()) + " bytes" +
              (cudnn_direct_sums() ? " (ST_CUDNN_DIRECT_SUMS: no FFT or Winograd)" : ""));
}

// Benchmark mode's search buffer. The search may time any algorithm within the limit, so it
// needs the full limit, but only while it runs: kept as the context's workspace, that much
// memory would stay held for good although the chosen algorithms usually need far less. So it is
// allocated apart and handed back to the driver (not to the allocator's cache, which keeps
// blocks until empty_cache or an allocation failure) once the search is done; the context's
// workspace then grows only to what the chosen algorithms need (workspace_at_least).
struct SearchWorkspace {
  Context& ctx;
  void* ptr = nullptr;
  size_t bytes = 0;
  explicit SearchWorkspace(Context& c) : ctx(c), bytes(cudnn_workspace_limit()) {
    if (bytes <= ctx.workspace_bytes) {  // the context's workspace is already large enough
      ptr = ctx.workspace;
      return;
    }
    cudaError_t e = cudaMalloc(&ptr, bytes);
    if (e == cudaErrorMemoryAllocation) {  // give the cache back to the driver and try again
      cudaGetLastError();
      backend().empty_cache();
      e = cudaMalloc(&ptr, bytes);
    }
    if (e != cudaSuccess) {
      cudaGetLastError();
      ptr = nullptr;
      throw Error("cuda:" + std::to_string(ctx.device) + ": out of memory allocating the cuDNN " +
                  "benchmark search workspace of " + std::to_string(bytes) +
                  " bytes (lower it: Backend::set_workspace_limit or ST_CUDNN_WORKSPACE_MB)");
    }
  }
  ~SearchWorkspace() {
    if (!ptr || ptr == ctx.workspace) return;
    cudaStreamSynchronize(ctx.stream);  // the search's work may still be queued
    cudaFree(ptr);
  }
  SearchWorkspace(const SearchWorkspace&) = delete;
  SearchWorkspace& operator=(const SearchWorkspace&) = delete;
};

// The algorithm (with its math type) for a problem: from the context's cache, else chosen by
// cuDNN and cached: timed in benchmark mode (find(ws, ws_bytes, &n, perf) over SearchWorkspace),
// from its heuristic otherwise (heuristic(&n, perf)); pick takes the first that qualifies.
template <class Perf, int kCount, class Find, class Heuristic>
const AlgoChoice& choose_algo(Context& ctx, const std::string& key, Find find,
                              Heuristic heuristic) {
  auto it = ctx.algo_cache.find(key);
  if (it != ctx.algo_cache.end()) return it->second;
  Perf perf[kCount];
  int n = 0;
  if (cudnn_benchmark()) {
    SearchWorkspace ws(ctx);
    find(ws.ptr, ws.bytes, &n, perf);
  } else {
    heuristic(&n, perf);
  }
  return ctx.algo_cache.emplace(key, pick(perf, n, key)).first->second;
}

template <class T>
__global__ void add_bias_kernel(T* y, const T* b, int64_t n, int64_t C, int64_t P) {
  ST_GRID_STRIDE(i, n) y[i] += b[(i / P) % C];
}

template <class T>
void add_bias(Context& ctx, Tensor& y, const Tensor& bias) {
  const int64_t n = y.numel();
  add_bias_kernel<<<blocks_for(n), 256, 0, ctx.stream>>>(y.data<T>(), bias.data<T>(), n, y.size(1),
                                                          y.size(2) * y.size(3));
  ST_CUDA_LAUNCHED(ctx);
}

}  // namespace

void CudaBackend::conv2d_forward(const Tensor& x, const Tensor& w, const Tensor* bias,
                                 const Conv2dParams& p, Tensor& y) {
  if (y.numel() == 0) return;
  Op op("conv2d_forward", x.device().index, conv_flops(y, w));
  Context& ctx = op.ctx;
  dispatch_float("conv2d_forward", x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    const cudnnDataType_t t = cudnn_type<T>();
    TensorDesc xd(t, x), yd(t, y);
    FilterDesc wd(t, w);
    ConvDesc cd(t, p);
    constexpr int kCount = CUDNN_CONVOLUTION_FWD_ALGO_COUNT;
    const AlgoChoice& choice = choose_algo<cudnnConvolutionFwdAlgoPerf_t, kCount>(
        ctx, problem_key("fwd", x.dtype(), x, w, y, p),
        [&](void* ws, size_t ws_bytes, int* n, cudnnConvolutionFwdAlgoPerf_t* perf) {
          ST_CUDNN_CHECK(cudnnFindConvolutionForwardAlgorithmEx(
              ctx.cudnn, xd.d, x.raw_data(), wd.d, w.raw_data(), cd.d, yd.d, y.raw_data(), kCount,
              n, perf, ws, ws_bytes));
        },
        [&](int* n, cudnnConvolutionFwdAlgoPerf_t* perf) {
          ST_CUDNN_CHECK(cudnnGetConvolutionForwardAlgorithm_v7(ctx.cudnn, xd.d, wd.d, cd.d, yd.d,
                                                                kCount, n, perf));
        });
    cd.use(choice);
    const auto algo = cudnnConvolutionFwdAlgo_t(choice.algo);
    size_t ws_bytes = 0;
    ST_CUDNN_CHECK(
        cudnnGetConvolutionForwardWorkspaceSize(ctx.cudnn, xd.d, wd.d, cd.d, yd.d, algo, &ws_bytes));
    void* ws = ctx.workspace_at_least(ws_bytes);
    const T one = 1, zero = 0;
    ST_CUDNN_CHECK(cudnnConvolutionForward(ctx.cudnn, &one, xd.d, x.raw_data(), wd.d, w.raw_data(),
                                           cd.d, algo, ws, ws_bytes, &zero, yd.d, y.raw_data()));
    if (bias) add_bias<T>(ctx, y, *bias);
  });
  ST_CUDA_LAUNCHED(ctx);
}

// dx of the convolution x -> dy with weight w (also the transposed convolution's forward).
template <class T>
static void backward_data(Context& ctx, const Tensor& dy, const Tensor& w, const Conv2dParams& p,
                          Tensor& dx, const char* kind) {
  const cudnnDataType_t t = cudnn_type<T>();
  TensorDesc dyd(t, dy), dxd(t, dx);
  FilterDesc wd(t, w);
  ConvDesc cd(t, p);
  constexpr int kCount = CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT;
  const AlgoChoice& choice = choose_algo<cudnnConvolutionBwdDataAlgoPerf_t, kCount>(
      ctx, problem_key(kind, dx.dtype(), dx, w, dy, p),
      [&](void* ws, size_t ws_bytes, int* n, cudnnConvolutionBwdDataAlgoPerf_t* perf) {
        ST_CUDNN_CHECK(cudnnFindConvolutionBackwardDataAlgorithmEx(
            ctx.cudnn, wd.d, w.raw_data(), dyd.d, dy.raw_data(), cd.d, dxd.d, dx.raw_data(),
            kCount, n, perf, ws, ws_bytes));
      },
      [&](int* n, cudnnConvolutionBwdDataAlgoPerf_t* perf) {
        ST_CUDNN_CHECK(cudnnGetConvolutionBackwardDataAlgorithm_v7(ctx.cudnn, wd.d, dyd.d, cd.d,
                                                                   dxd.d, kCount, n, perf));
      });
  cd.use(choice);
  const auto algo = cudnnConvolutionBwdDataAlgo_t(choice.algo);
  size_t ws_bytes = 0;
  ST_CUDNN_CHECK(cudnnGetConvolutionBackwardDataWorkspaceSize(ctx.cudnn, wd.d, dyd.d, cd.d, dxd.d,
                                                              algo, &ws_bytes));
  void* ws = ctx.workspace_at_least(ws_bytes);
  const T one = 1, zero = 0;
  ST_CUDNN_CHECK(cudnnConvolutionBackwardData(ctx.cudnn, &one, wd.d, w.raw_data(), dyd.d,
                                              dy.raw_data(), cd.d, algo, ws, ws_bytes, &zero,
                                              dxd.d, dx.raw_data()));
}

void CudaBackend::conv2d_backward_data(const Tensor& gy, const Tensor& w, const Conv2dParams& p,
                                       Tensor& gx) {
  if (gx.numel() == 0) return;
  Op op("conv2d_backward_data", gy.device().index, conv_flops(gy, w));
  dispatch_float("conv2d_backward_data", gy.dtype(), [&](auto tag) {
    backward_data<decltype(tag)>(op.ctx, gy, w, p, gx, "bwd_data");
  });
  ST_CUDA_LAUNCHED(op.ctx);
}

void CudaBackend::conv2d_backward_weight(const Tensor& gy, const Tensor& x, const Conv2dParams& p,
                                         Tensor& gw) {
  if (gw.numel() == 0) return;
  Op op("conv2d_backward_weight", gy.device().index, conv_flops(gy, gw));
  Context& ctx = op.ctx;
  dispatch_float("conv2d_backward_weight", gy.dtype(), [&](auto tag) {
    using T = decltype(tag);
    const cudnnDataType_t t = cudnn_type<T>();
    TensorDesc xd(t, x), dyd(t, gy);
    FilterDesc wd(t, gw);
    ConvDesc cd(t, p);
    constexpr int kCount = CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT;
    const AlgoChoice& choice = choose_algo<cudnnConvolutionBwdFilterAlgoPerf_t, kCount>(
        ctx, problem_key("bwd_filter", x.dtype(), x, gw, gy, p),
        [&](void* ws, size_t ws_bytes, int* n, cudnnConvolutionBwdFilterAlgoPerf_t* perf) {
          ST_CUDNN_CHECK(cudnnFindConvolutionBackwardFilterAlgorithmEx(
              ctx.cudnn, xd.d, x.raw_data(), dyd.d, gy.raw_data(), cd.d, wd.d, gw.raw_data(),
              kCount, n, perf, ws, ws_bytes));
        },
        [&](int* n, cudnnConvolutionBwdFilterAlgoPerf_t* perf) {
          ST_CUDNN_CHECK(cudnnGetConvolutionBackwardFilterAlgorithm_v7(
              ctx.cudnn, xd.d, dyd.d, cd.d, wd.d, kCount, n, perf));
        });
    cd.use(choice);
    const auto algo = cudnnConvolutionBwdFilterAlgo_t(choice.algo);
    size_t ws_bytes = 0;
    ST_CUDNN_CHECK(cudnnGetConvolutionBackwardFilterWorkspaceSize(ctx.cudnn, xd.d, dyd.d, cd.d,
                                                                  wd.d, algo, &ws_bytes));
    void* ws = ctx.workspace_at_least(ws_bytes);
    const T one = 1, zero = 0;
    ST_CUDNN_CHECK(cudnnConvolutionBackwardFilter(ctx.cudnn, &one, xd.d, x.raw_data(), dyd.d,
                                                  gy.raw_data(), cd.d, algo, ws, ws_bytes, &zero,
                                                  wd.d, gw.raw_data()));
  });
  ST_CUDA_LAUNCHED(ctx);
}

void CudaBackend::conv2d_backward_bias(const Tensor& gy, Tensor& gb) {
  reduce_sum(gy, {false, true, false, false}, gb);  // sum over N, H, W per channel
}

void CudaBackend::conv_transpose2d_forward(const Tensor& x, const Tensor& w, const Tensor* bias,
                                           const Conv2dParams& p, Tensor& y) {
  if (y.numel() == 0) return;
  Op op("conv_transpose2d_forward", x.device().index, conv_flops(x, w));
  dispatch_float("conv_transpose2d_forward", x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    // The convolution that maps y (C_out channels) to x (C_in), weight (C_in, C_out/g, kh, kw):
    // its input gradient for "dy" = x is the transposed convolution of x.
    backward_data<T>(op.ctx, x, w, p, y, "convT");
    if (bias) add_bias<T>(op.ctx, y, *bias);
  });
  ST_CUDA_LAUNCHED(op.ctx);
}

}  // namespace st::cuda
