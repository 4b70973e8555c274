// Convolutions through cuDNN (forward, backward-data, backward-filter; transposed convolution as
// backward-data). Each problem (operation, dtype, shapes and strides, parameters, settings) gets a
// plan on its first call, kept in the device context: its descriptors, the algorithm cuDNN chose
// for it with that algorithm's math type set on the convolution descriptor, and its workspace
// size. Later calls of the same problem only look the plan up: no descriptor is made and no
// workspace size is asked for. The workspace is the context's one grow-only buffer, capped by
// cudnn_workspace_limit(). Benchmark mode (ST_CUDNN_BENCHMARK=1) times the candidates in a search
// buffer of the full limit that is freed right after the search.
#include <climits>
#include <cstdlib>
#include <cstring>
#include <list>
#include <string>
#include <type_traits>
#include <unordered_map>
#include <utility>

#include "kernels/cuda/backend.cuh"

namespace st::cuda {

namespace {

template <class T> cudnnDataType_t cudnn_type();
template <> cudnnDataType_t cudnn_type<float>() { return CUDNN_DATA_FLOAT; }
template <> cudnnDataType_t cudnn_type<double>() { return CUDNN_DATA_DOUBLE; }

// A cuDNN descriptor, created by the constructor and destroyed by the destructor, so that none
// leaks when a call between creating it and handing its plan to the cache throws. Movable (the
// plan moves into the cache), not copyable.
template <class D, cudnnStatus_t (*Create)(D*), cudnnStatus_t (*Destroy)(D)>
class Descriptor {
 public:
  Descriptor() { ST_CUDNN_CHECK(Create(&d_)); }
  ~Descriptor() {
    if (d_) Destroy(d_);  // a destructor cannot throw; destroying a valid descriptor succeeds
  }
  Descriptor(Descriptor&& o) noexcept : d_(std::exchange(o.d_, nullptr)) {}
  Descriptor& operator=(Descriptor&&) = delete;
  Descriptor(const Descriptor&) = delete;
  Descriptor& operator=(const Descriptor&) = delete;
  D get() const { return d_; }

 private:
  D d_ = nullptr;
};
using TensorDescriptor = Descriptor<cudnnTensorDescriptor_t, cudnnCreateTensorDescriptor,
                                    cudnnDestroyTensorDescriptor>;
using FilterDescriptor = Descriptor<cudnnFilterDescriptor_t, cudnnCreateFilterDescriptor,
                                    cudnnDestroyFilterDescriptor>;
using ConvolutionDescriptor =
    Descriptor<cudnnConvolutionDescriptor_t, cudnnCreateConvolutionDescriptor,
               cudnnDestroyConvolutionDescriptor>;

// cuDNN's three convolution operations. The transposed convolution is BackwardData.
enum class ConvOp : int64_t { Forward = 1, BackwardData = 2, BackwardFilter = 3 };

const char* op_name(int64_t op) {
  switch (ConvOp(op)) {
    case ConvOp::Forward: return "forward";
    case ConvOp::BackwardData: return "backward data";
    case ConvOp::BackwardFilter: return "backward filter";
  }
  return "?";
}

// Everything that decides a plan: each descriptor is made from these fields alone (so two
// problems that differ in anything cuDNN is told differ in their keys), plus the settings the
// choice of algorithm depends on. "in" is the convolution's input (x; dx for backward data),
// "out" its output (y; dy for backward data and backward filter). All int64_t: no padding, so
// the bytes compare and hash as the values.
struct ConvKey {
  int64_t op;                // ConvOp
  int64_t dtype;             // cudnnDataType_t of the tensors, the filter and the computation
  int64_t math;              // cudnnMathType_t the search may use (conv_math)
  int64_t settings;          // 1: ST_CUDNN_BENCHMARK, 2: ST_CUDNN_DIRECT_SUMS
  int64_t workspace_limit;   // bytes; no algorithm needing more is chosen
  int64_t in[8];             // N, C, H, W, then their strides as cuDNN gets them (packed NCHW)
  int64_t w[4];              // K, C / groups, KH, KW (NCHW filter)
  int64_t out[8];            // as `in`
  int64_t pad_h, pad_w, stride_h, stride_w, dilation_h, dilation_w, groups;
};
static_assert(std::has_unique_object_representations_v<ConvKey>,
              "ConvKey is compared and hashed as bytes: it must have no padding");

bool operator==(const ConvKey& a, const ConvKey& b) {
  return std::memcmp(&a, &b, sizeof(ConvKey)) == 0;
}

struct ConvKeyHash {
  size_t operator()(const ConvKey& k) const noexcept {
    uint64_t words[sizeof(ConvKey) / sizeof(uint64_t)];
    std::memcpy(words, &k, sizeof(ConvKey));
    uint64_t h = 0;
    for (uint64_t v : words) {  // each word mixed in with splitmix64's finaliser
      h ^= v + 0x9e3779b97f4a7c15ull + (h << 6) + (h >> 2);
      h = (h ^ (h >> 30)) * 0xbf58476d1ce4e5b9ull;
      h = (h ^ (h >> 27)) * 0x94d049bb133111ebull;
      h ^= h >> 31;
    }
    return size_t(h);
  }
};

// The math type the search may use: TF32 tensor cores for f32 unless ST_CUDA_TF32=0 (PyTorch's
// cuDNN default is TF32 on too); plain FMA otherwise (f64, or TF32 off).
cudnnMathType_t conv_math(cudnnDataType_t t) {
  return t == CUDNN_DATA_FLOAT && allow_tf32() ? CUDNN_DEFAULT_MATH : CUDNN_FMA_MATH;
}

// cuDNN's descriptors take int: a value outside its range is refused here rather than truncated.
int64_t cudnn_int(const char* kernel, const char* what, int64_t v) {
  ST_CHECK(v >= 0 && v <= INT_MAX, kernel, ": ", what, " ", v,
           " is outside the range cuDNN's descriptors take (0 to ", INT_MAX, ")");
  return v;
}

// N, C, H, W of a contiguous 4-D tensor and the strides of packed NCHW.
void put_tensor(const char* kernel, const char* what, const Tensor& a, int64_t* f) {
  for (int d = 0; d < 4; ++d) f[d] = cudnn_int(kernel, what, a.size(d));
  f[7] = 1;
  f[6] = cudnn_int(kernel, what, f[3]);
  f[5] = cudnn_int(kernel, what, f[2] * f[6]);
  f[4] = cudnn_int(kernel, what, f[1] * f[5]);
}

ConvKey conv_key(ConvOp op, const char* kernel, cudnnDataType_t t, const Tensor& in,
                 const Tensor& w, const Tensor& out, const Conv2dParams& p) {
  ConvKey k{};
  k.op = int64_t(op);
  k.dtype = int64_t(t);
  k.math = int64_t(conv_math(t));
  k.settings = (cudnn_benchmark() ? 1 : 0) | (cudnn_direct_sums() ? 2 : 0);
  k.workspace_limit = int64_t(cudnn_workspace_limit());
  put_tensor(kernel, "input size or stride", in, k.in);
  for (int d = 0; d < 4; ++d) k.w[d] = cudnn_int(kernel, "weight size", w.size(d));
  put_tensor(kernel, "output size or stride", out, k.out);
  k.pad_h = cudnn_int(kernel, "padding", p.pad_h);
  k.pad_w = cudnn_int(kernel, "padding", p.pad_w);
  k.stride_h = cudnn_int(kernel, "stride", p.stride_h);
  k.stride_w = cudnn_int(kernel, "stride", p.stride_w);
  k.dilation_h = 1;
  k.dilation_w = 1;
  k.groups = cudnn_int(kernel, "groups", p.groups);
  return k;
}

// The problem in words, for errors.
std::string describe(const ConvKey& k) {
  auto dims = [](const int64_t* f, int n) {
    std::string s = "(";
    for (int i = 0; i < n; ++i) s += (i ? "," : "") + std::to_string(f[i]);
    return s + ")";
  };
  return std::string(op_name(k.op)) + " " +
         (k.dtype == int64_t(CUDNN_DATA_DOUBLE) ? "f64" : "f32") + " in " + dims(k.in, 4) +
         " w " + dims(k.w, 4) + " out " + dims(k.out, 4) + " pad " + std::to_string(k.pad_h) +
         "," + std::to_string(k.pad_w) + " stride " + std::to_string(k.stride_h) + "," +
         std::to_string(k.stride_w) + " groups " + std::to_string(k.groups);
}

void set_tensor(cudnnTensorDescriptor_t d, cudnnDataType_t t, const int64_t* f) {
  ST_CUDNN_CHECK(cudnnSetTensor4dDescriptorEx(d, t, int(f[0]), int(f[1]), int(f[2]), int(f[3]),
                                              int(f[4]), int(f[5]), int(f[6]), int(f[7])));
}

// One problem's descriptors (made from its key), algorithm and workspace size.
struct ConvPlan {
  explicit ConvPlan(const ConvKey& k) {
    const auto t = cudnnDataType_t(k.dtype);
    set_tensor(in.get(), t, k.in);
    set_tensor(out.get(), t, k.out);
    ST_CUDNN_CHECK(cudnnSetFilter4dDescriptor(w.get(), t, CUDNN_TENSOR_NCHW, int(k.w[0]),
                                              int(k.w[1]), int(k.w[2]), int(k.w[3])));
    ST_CUDNN_CHECK(cudnnSetConvolution2dDescriptor(
        conv.get(), int(k.pad_h), int(k.pad_w), int(k.stride_h), int(k.stride_w),
        int(k.dilation_h), int(k.dilation_w), CUDNN_CROSS_CORRELATION, t));
    ST_CUDNN_CHECK(cudnnSetConvolutionGroupCount(conv.get(), int(k.groups)));
    ST_CUDNN_CHECK(cudnnSetConvolutionMathType(conv.get(), cudnnMathType_t(k.math)));
  }
  TensorDescriptor in, out;
  FilterDescriptor w;
  ConvolutionDescriptor conv;
  int algo = 0;                  // a cudnnConvolution{Fwd,BwdData,BwdFilter}Algo_t
  size_t workspace_bytes = 0;    // what `algo` needs with the math type set on `conv`
};

// How many plans a device keeps: ST_CUDNN_PLAN_CACHE (a whole number >= 1), default 1024. A
// frame size seen again after its plans were dropped only pays cuDNN's choice again (a full timed
// search in benchmark mode).
size_t plan_capacity() {
  static const size_t n = [] {
    const char* e = std::getenv("ST_CUDNN_PLAN_CACHE");
    if (!e || !*e) return size_t(1024);
    char* end = nullptr;
    const long long v = std::strtoll(e, &end, 10);
    ST_CHECK(*end == '\0' && v >= 1, "ST_CUDNN_PLAN_CACHE must be a whole number of plans >= 1, "
             "got '", e, "'");
    return size_t(v);
  }();
  return n;
}

}  // namespace

// Most recently used first; `index` points into `lru` (a list: its iterators and elements stay
// put while others are added, moved to the front or dropped).
struct ConvPlans::Impl {
  std::list<std::pair<ConvKey, ConvPlan>> lru;
  std::unordered_map<ConvKey, std::list<std::pair<ConvKey, ConvPlan>>::iterator, ConvKeyHash>
      index;

  // The plan for `k`, now the most recently used; null when there is none.
  ConvPlan* find(const ConvKey& k) {
    auto it = index.find(k);
    if (it == index.end()) return nullptr;
    lru.splice(lru.begin(), lru, it->second);
    return &it->second->second;
  }
  // Keeps `plan` for `k` (which has none), dropping the least recently used plans beyond the
  // capacity first.
  ConvPlan& insert(const ConvKey& k, ConvPlan&& plan) {
    while (!lru.empty() && lru.size() >= plan_capacity()) {
      index.erase(lru.back().first);
      lru.pop_back();  // destroys its descriptors
    }
    lru.emplace_front(k, std::move(plan));
    try {
      index.emplace(k, lru.begin());
    } catch (...) {
      lru.pop_front();
      throw;
    }
    return lru.front().second;
  }
};

ConvPlans::ConvPlans() : impl_(std::make_unique<Impl>()) {}
ConvPlans::~ConvPlans() = default;
void ConvPlans::clear() noexcept {
  impl_->index.clear();
  impl_->lru.clear();
}

namespace {

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
// succeeds and fits the key's workspace limit (and, under ST_CUDNN_DIRECT_SUMS, is no transform),
// with its math type. Results whose math converts f32 data down to f16 are skipped: the
// descriptor never asks for that (TF32 at most, ST_CUDA_TF32).
template <class Perf>
AlgoChoice pick(const Perf* perf, int n, const ConvKey& key) {
  const size_t limit = size_t(key.workspace_limit);
  for (int i = 0; i < n; ++i)
    if (perf[i].status == CUDNN_STATUS_SUCCESS && perf[i].memory <= limit &&
        perf[i].mathType != CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION &&
        !(cudnn_direct_sums() && transform_algo(perf[i].algo)))
      return {int(perf[i].algo), perf[i].mathType};
  throw Error("cuDNN has no algorithm for " + describe(key) + " within the workspace limit of " +
              std::to_string(limit) + " bytes" +
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
  SearchWorkspace(Context& c, size_t limit) : ctx(c), bytes(limit) {
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

// The plan for a problem: from the context's cache, else made and cached. The algorithm is
// chosen by cuDNN on the plan's descriptors (set up with the key's math type): timed in benchmark
// mode (find(plan, ws, ws_bytes, &n, perf) over SearchWorkspace), from its heuristic otherwise
// (heuristic(plan, &n, perf)); pick takes the first that qualifies. Then the descriptor gets the
// math type the search reported for it (an algorithm may have been measured, and its workspace
// sized, with tensor-core math the descriptor's default would not give it; FMA math, once
// requested, stays: the search's answer may not turn TF32 back on), and its workspace size is
// asked for once (workspace_size(plan)). A throw on the way drops the half-made plan.
template <class Perf, int kCount, class Find, class Heuristic, class WorkspaceSize>
const ConvPlan& plan_for(Context& ctx, const ConvKey& key, Find find, Heuristic heuristic,
                         WorkspaceSize workspace_size) {
  ConvPlans::Impl& plans = ctx.conv_plans.impl();
  if (const ConvPlan* hit = plans.find(key)) return *hit;
  ConvPlan plan(key);
  Perf perf[kCount];
  int n = 0;
  if (cudnn_benchmark()) {
    SearchWorkspace ws(ctx, size_t(key.workspace_limit));
    find(plan, ws.ptr, ws.bytes, &n, perf);
  } else {
    heuristic(plan, &n, perf);
  }
  const AlgoChoice choice = pick(perf, n, key);
  const auto requested = cudnnMathType_t(key.math);
  plan.algo = choice.algo;
  ST_CUDNN_CHECK(cudnnSetConvolutionMathType(
      plan.conv.get(), requested == CUDNN_FMA_MATH ? requested : choice.math));
  plan.workspace_bytes = workspace_size(plan);
  return plans.insert(key, std::move(plan));
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
  Op op("conv2d_forward", x.device().index);
  Context& ctx = op.ctx;
  dispatch_float("conv2d_forward", x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    using Perf = cudnnConvolutionFwdAlgoPerf_t;
    constexpr int kCount = CUDNN_CONVOLUTION_FWD_ALGO_COUNT;
    const ConvPlan& plan = plan_for<Perf, kCount>(
        ctx, conv_key(ConvOp::Forward, "conv2d_forward", cudnn_type<T>(), x, w, y, p),
        [&](const ConvPlan& pl, void* ws, size_t ws_bytes, int* n, Perf* perf) {
          ST_CUDNN_CHECK(cudnnFindConvolutionForwardAlgorithmEx(
              ctx.cudnn, pl.in.get(), x.raw_data(), pl.w.get(), w.raw_data(), pl.conv.get(),
              pl.out.get(), y.raw_data(), kCount, n, perf, ws, ws_bytes));
        },
        [&](const ConvPlan& pl, int* n, Perf* perf) {
          ST_CUDNN_CHECK(cudnnGetConvolutionForwardAlgorithm_v7(
              ctx.cudnn, pl.in.get(), pl.w.get(), pl.conv.get(), pl.out.get(), kCount, n, perf));
        },
        [&](const ConvPlan& pl) {
          size_t bytes = 0;
          ST_CUDNN_CHECK(cudnnGetConvolutionForwardWorkspaceSize(
              ctx.cudnn, pl.in.get(), pl.w.get(), pl.conv.get(), pl.out.get(),
              cudnnConvolutionFwdAlgo_t(pl.algo), &bytes));
          return bytes;
        });
    void* ws = ctx.workspace_at_least(plan.workspace_bytes);
    const T one = 1, zero = 0;
    ST_CUDNN_CHECK(cudnnConvolutionForward(
        ctx.cudnn, &one, plan.in.get(), x.raw_data(), plan.w.get(), w.raw_data(), plan.conv.get(),
        cudnnConvolutionFwdAlgo_t(plan.algo), ws, plan.workspace_bytes, &zero, plan.out.get(),
        y.raw_data()));
    if (bias) add_bias<T>(ctx, y, *bias);
  });
  ST_CUDA_LAUNCHED(ctx);
}

// dx of the convolution x -> dy with weight w (also the transposed convolution's forward).
template <class T>
static void backward_data(Context& ctx, const Tensor& dy, const Tensor& w, const Conv2dParams& p,
                          Tensor& dx, const char* kernel) {
  using Perf = cudnnConvolutionBwdDataAlgoPerf_t;
  constexpr int kCount = CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT;
  const ConvPlan& plan = plan_for<Perf, kCount>(
      ctx, conv_key(ConvOp::BackwardData, kernel, cudnn_type<T>(), dx, w, dy, p),
      [&](const ConvPlan& pl, void* ws, size_t ws_bytes, int* n, Perf* perf) {
        ST_CUDNN_CHECK(cudnnFindConvolutionBackwardDataAlgorithmEx(
            ctx.cudnn, pl.w.get(), w.raw_data(), pl.out.get(), dy.raw_data(), pl.conv.get(),
            pl.in.get(), dx.raw_data(), kCount, n, perf, ws, ws_bytes));
      },
      [&](const ConvPlan& pl, int* n, Perf* perf) {
        ST_CUDNN_CHECK(cudnnGetConvolutionBackwardDataAlgorithm_v7(
            ctx.cudnn, pl.w.get(), pl.out.get(), pl.conv.get(), pl.in.get(), kCount, n, perf));
      },
      [&](const ConvPlan& pl) {
        size_t bytes = 0;
        ST_CUDNN_CHECK(cudnnGetConvolutionBackwardDataWorkspaceSize(
            ctx.cudnn, pl.w.get(), pl.out.get(), pl.conv.get(), pl.in.get(),
            cudnnConvolutionBwdDataAlgo_t(pl.algo), &bytes));
        return bytes;
      });
  void* ws = ctx.workspace_at_least(plan.workspace_bytes);
  const T one = 1, zero = 0;
  ST_CUDNN_CHECK(cudnnConvolutionBackwardData(
      ctx.cudnn, &one, plan.w.get(), w.raw_data(), plan.out.get(), dy.raw_data(), plan.conv.get(),
      cudnnConvolutionBwdDataAlgo_t(plan.algo), ws, plan.workspace_bytes, &zero, plan.in.get(),
      dx.raw_data()));
}

void CudaBackend::conv2d_backward_data(const Tensor& gy, const Tensor& w, const Conv2dParams& p,
                                       Tensor& gx) {
  if (gx.numel() == 0) return;
  Op op("conv2d_backward_data", gy.device().index);
  dispatch_float("conv2d_backward_data", gy.dtype(), [&](auto tag) {
    backward_data<decltype(tag)>(op.ctx, gy, w, p, gx, "conv2d_backward_data");
  });
  ST_CUDA_LAUNCHED(op.ctx);
}

void CudaBackend::conv2d_backward_weight(const Tensor& gy, const Tensor& x, const Conv2dParams& p,
                                         Tensor& gw) {
  if (gw.numel() == 0) return;
  Op op("conv2d_backward_weight", gy.device().index);
  Context& ctx = op.ctx;
  dispatch_float("conv2d_backward_weight", gy.dtype(), [&](auto tag) {
    using T = decltype(tag);
    using Perf = cudnnConvolutionBwdFilterAlgoPerf_t;
    constexpr int kCount = CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT;
    const ConvPlan& plan = plan_for<Perf, kCount>(
        ctx, conv_key(ConvOp::BackwardFilter, "conv2d_backward_weight", cudnn_type<T>(), x, gw, gy,
                      p),
        [&](const ConvPlan& pl, void* ws, size_t ws_bytes, int* n, Perf* perf) {
          ST_CUDNN_CHECK(cudnnFindConvolutionBackwardFilterAlgorithmEx(
              ctx.cudnn, pl.in.get(), x.raw_data(), pl.out.get(), gy.raw_data(), pl.conv.get(),
              pl.w.get(), gw.raw_data(), kCount, n, perf, ws, ws_bytes));
        },
        [&](const ConvPlan& pl, int* n, Perf* perf) {
          ST_CUDNN_CHECK(cudnnGetConvolutionBackwardFilterAlgorithm_v7(
              ctx.cudnn, pl.in.get(), pl.out.get(), pl.conv.get(), pl.w.get(), kCount, n, perf));
        },
        [&](const ConvPlan& pl) {
          size_t bytes = 0;
          ST_CUDNN_CHECK(cudnnGetConvolutionBackwardFilterWorkspaceSize(
              ctx.cudnn, pl.in.get(), pl.out.get(), pl.conv.get(), pl.w.get(),
              cudnnConvolutionBwdFilterAlgo_t(pl.algo), &bytes));
          return bytes;
        });
    void* ws = ctx.workspace_at_least(plan.workspace_bytes);
    const T one = 1, zero = 0;
    ST_CUDNN_CHECK(cudnnConvolutionBackwardFilter(
        ctx.cudnn, &one, plan.in.get(), x.raw_data(), plan.out.get(), gy.raw_data(),
        plan.conv.get(), cudnnConvolutionBwdFilterAlgo_t(plan.algo), ws, plan.workspace_bytes,
        &zero, plan.w.get(), gw.raw_data()));
  });
  ST_CUDA_LAUNCHED(ctx);
}

void CudaBackend::conv2d_backward_bias(const Tensor& gy, Tensor& gb) {
  reduce_sum(gy, {false, true, false, false}, gb);  // sum over N, H, W per channel
}

void CudaBackend::conv_transpose2d_forward(const Tensor& x, const Tensor& w, const Tensor* bias,
                                           const Conv2dParams& p, Tensor& y) {
  if (y.numel() == 0) return;
  Op op("conv_transpose2d_forward", x.device().index);
  dispatch_float("conv_transpose2d_forward", x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    // The convolution that maps y (C_out channels) to x (C_in), weight (C_in, C_out/g, kh, kw):
    // its input gradient for "dy" = x is the transposed convolution of x.
    backward_data<T>(op.ctx, x, w, p, y, "conv_transpose2d_forward");
    if (bias) add_bias<T>(op.ctx, y, *bias);
  });
  ST_CUDA_LAUNCHED(op.ctx);
}

}  // namespace st::cuda
