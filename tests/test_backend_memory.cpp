// The backends' memory controls on the Backend interface (empty_cache, set_workspace_limit: a
// program reaches them through backend_for(device), since libst_cuda.so is opened RTLD_LOCAL), on
// the CPU; and, on the first GPU, the CUDA backend's checks and orderings that cannot run here:
// reduce_sum's rank limit, the cuDNN workspace limit with the chosen algorithm's math type,
// empty_cache, and a copy between two GPUs ordered after the work that produced its source.
// Without a GPU (or in a build without the CUDA backend) the [cuda] tests are reported skipped.
#include <cmath>
#include <cstdlib>
#include <vector>

#include "test_util.h"

using namespace st;
using Catch::Matchers::Contains;

namespace {

const Device kGpu = Device::cuda(0);

bool have_gpu() {
  test::set_cuda_parity_numerics();
  return device_available(DeviceType::CUDA);
}

// Skips without a usable GPU, fails instead under ST_REQUIRE_GPU=1 (tests/test_util.h).
#define REQUIRE_GPU() ST_REQUIRE_CUDA_GPU()

// A second GPU, if there is one (allocation on a missing device throws).
bool have_second_gpu() {
  if (!have_gpu()) return false;
  try {
    Tensor t = Tensor::empty({1}, DType::F32, Device::cuda(1));
    return true;
  } catch (const Error&) {
    return false;
  }
}

std::vector<double> abs_of(const Tensor& t) {
  std::vector<double> v = t.to_vector<double>();
  for (double& e : v) e = std::abs(e);
  return v;
}

}  // namespace

TEST_CASE("backend memory: the CPU backend's empty_cache frees its large-block cache",
          "[backend]") {
  Backend& b = backend_for(Device::cpu());
  b.empty_cache();
  REQUIRE(b.memory_stats().cached_bytes == 0);
  // A large block (over the 256 KiB threshold) goes to the cache when freed, unless the cache
  // was turned off (ST_CPU_CACHE_MB=0).
  const size_t n = size_t(1) << 20;
  void* p = b.allocate(n, 0);
  REQUIRE(p != nullptr);
  b.deallocate(p, n, 0);
  const char* mb = std::getenv("ST_CPU_CACHE_MB");
  const bool cache_on = !(mb && std::atoll(mb) == 0);
  if (cache_on) REQUIRE(b.memory_stats().cached_bytes >= n);
  b.empty_cache();
  REQUIRE(b.memory_stats().cached_bytes == 0);
  // Tensors alive across empty_cache are untouched; allocation still works after it.
  Tensor a = Tensor::full({600, 600}, 1.5);  // 1.44 MB: a cached-size block
  b.empty_cache();
  REQUIRE(sum(a).item() == 1.5 * 600 * 600);
  Tensor c = Tensor::full({600, 600}, 2.0);
  REQUIRE(sum(c).item() == 2.0 * 600 * 600);
}

TEST_CASE("backend memory: the CPU backend has no workspace and ignores a workspace limit",
          "[backend]") {
  Backend& b = backend_for(Device::cpu());
  REQUIRE(b.workspace_limit() == 0);
  REQUIRE_NOTHROW(b.set_workspace_limit(size_t(1) << 20));
  REQUIRE(b.workspace_limit() == 0);
  // Convolutions (whose scratch is per call) give the same bits as before.
  Tensor x = Tensor::randn({1, 3, 9, 9}, 1), w = Tensor::randn({4, 3, 3, 3}, 2);
  Tensor y0 = conv2d(x, w, Tensor::zeros({4}));
  b.set_workspace_limit(0);
  Tensor y1 = conv2d(x, w, Tensor::zeros({4}));
  REQUIRE(y0.to_vector<float>() == y1.to_vector<float>());
}

TEST_CASE("cuda: reduce_sum and the strided kernels reject a rank above their limit, naming it",
          "[cuda]") {
  REQUIRE_GPU();
  const Shape nine(9, 1);  // rank 9 > the CUDA kernels' limit of 8
  Tensor x = Tensor::full(nine, 1.0, DType::F32, kGpu);
  Tensor out = Tensor::empty({}, DType::F32, kGpu);
  Backend& b = backend_for(kGpu);
  REQUIRE_THROWS_WITH(b.sum_all(x, out), Contains("reduce_sum") && Contains("rank 9") &&
                                             Contains("max 8"));
  Tensor out9 = Tensor::empty(nine, DType::F32, kGpu);
  REQUIRE_THROWS_WITH(b.sum_to(x, out9), Contains("rank 9") && Contains("max 8"));
  // Rank 8 is within the limit.
  Tensor x8 = Tensor::full(Shape(8, 2), 1.0, DType::F32, kGpu);
  b.sum_all(x8, out);
  REQUIRE(out.to(Device::cpu()).item() == 256.0);
}

TEST_CASE("cuda: workspace limit and empty_cache through the Backend interface", "[cuda]") {
  REQUIRE_GPU();
  Backend& b = backend_for(kGpu);
  const size_t old_limit = b.workspace_limit();
  REQUIRE(old_limit > 0);
  b.set_workspace_limit(size_t(1) << 20);
  REQUIRE(b.workspace_limit() == (size_t(1) << 20));
  // A convolution under the lowered limit (its algorithm chosen afresh, run with the math type
  // cuDNN chose it with) against the float64 CPU result: |err| <= gamma(K + 2) sum |products|.
  Tensor x = Tensor::randn({2, 3, 17, 13}, 3), w = Tensor::randn({5, 3, 3, 3}, 4);
  Conv2dParams p;
  p.pad_h = p.pad_w = 1;
  Tensor y = conv2d(x.to(kGpu), w.to(kGpu), Tensor::zeros({5}, DType::F32, kGpu), p)
                 .to(Device::cpu());
  Tensor ref = conv2d(x.to(DType::F64), w.to(DType::F64), Tensor::zeros({5}, DType::F64), p);
  Tensor ax = Tensor::from_vector(abs_of(x), x.shape());
  Tensor aw = Tensor::from_vector(abs_of(w), w.shape());
  const double g = test::gamma(3 * 3 * 3 + 2);
  Tensor bound = mul(conv2d(ax, aw, Tensor::zeros({5}, DType::F64), p),
                     Tensor::full(ref.shape(), g, DType::F64));
  ST_REQUIRE_WITHIN(y.to(DType::F64), ref, bound);
  b.set_workspace_limit(old_limit);
  REQUIRE(b.workspace_limit() == old_limit);
  // empty_cache hands every free block back; tensors alive keep their contents.
  Tensor keep = Tensor::full({1000}, 3.0, DType::F32, kGpu);
  { Tensor tmp = Tensor::full({1 << 20}, 1.0, DType::F32, kGpu); }
  const char* cache = std::getenv("ST_CUDA_CACHE");  // "0": blocks go straight back
  if (!(cache && cache[0] == '0')) REQUIRE(b.memory_stats().cached_bytes > 0);
  b.empty_cache();
  REQUIRE(b.memory_stats().cached_bytes == 0);
  REQUIRE(keep.to(Device::cpu()).to_vector<float>() == std::vector<float>(1000, 3.0f));
}

TEST_CASE("cuda: a copy between two GPUs waits for the work that produced its source", "[cuda]") {
  REQUIRE_GPU();
  if (!have_second_gpu()) ST_SKIP("fewer than two CUDA GPUs");
  const Device g1 = Device::cuda(1);
  for (int round = 0; round < 20; ++round) {
    // Produced on cuda:0's stream (a chain of kernels, large enough to still be running), then a
    // non-contiguous view, so the copy's source is a temporary that goes back to cuda:0's cache
    // at once; the next allocation of that size on cuda:0 reuses it and overwrites it.
    Tensor a = Tensor::full({64, 4096}, double(round), DType::F32, kGpu);
    for (int k = 0; k < 8; ++k) a = add(a, Tensor::full({64, 4096}, 1.0, DType::F32, kGpu));
    Tensor moved = a.transpose(0, 1).to(g1);
    Tensor clobber = Tensor::full({4096, 64}, -1.0, DType::F32, kGpu);
    REQUIRE(moved.to(Device::cpu()).to_vector<float>() ==
            std::vector<float>(64 * 4096, float(round + 8)));
    REQUIRE(clobber.to(Device::cpu()).to_vector<float>()[0] == -1.0f);
  }
  // And back, from the second GPU to the first.
  Tensor b = add(Tensor::full({256, 256}, 2.0, DType::F32, g1),
                 Tensor::full({256, 256}, 3.0, DType::F32, g1));
  REQUIRE(b.to(kGpu).to(Device::cpu()).to_vector<float>() == std::vector<float>(256 * 256, 5.0f));
}
