// The backends' memory controls on the Backend interface (empty_cache, set_workspace_limit: a
// program reaches them through backend_for(device), since libst_cuda.so is opened RTLD_LOCAL), on
// the CPU; and, on the first GPU, the CUDA backend's checks and orderings that cannot run here:
// reduce_sum's rank limit, the cuDNN workspace limit with the chosen algorithm's math type,
// empty_cache and the allocator's segments (its pool logic is tested on the CPU:
// tests/test_block_pool.cpp), copies through the pinned staging buffers, the cross-entropy
// target check deferred to the next host read, and a copy between two GPUs ordered after the
// work that produced its source.
// Without a GPU (or in a build without the CUDA backend) the [cuda] tests are reported skipped.
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <string>
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

TEST_CASE("backend memory: a loop whose working set exceeds 256 MB stops allocating from the system",
          "[backend]") {
  // Ten large blocks of different sizes (20 .. 38 MB, 290 MB in all: more than the 256 MB the
  // cache held at most before) allocated, then freed smallest-last, per iteration: the shape of
  // a training step at 1280x720. Under a fixed 256 MB bound the blocks freed after the cache is
  // full go back to the system and the next iteration allocates (and page-faults) them again;
  // the bound follows the peak in use, so from the second iteration on every block comes from
  // the cache. (The blocks are never written: no memory is touched.)
  const char* mb = std::getenv("ST_CPU_CACHE_MB");
  if (mb && *mb) ST_SKIP("ST_CPU_CACHE_MB is set: the cache has a fixed bound");
  Backend& b = backend_for(Device::cpu());
  b.empty_cache();
  std::vector<size_t> sizes;
  size_t total = 0;
  for (int i = 0; i < 10; ++i) sizes.push_back(size_t(20 + 2 * i) << 20), total += sizes.back();
  REQUIRE(total > (size_t(256) << 20));
  uint64_t after_first = 0;
  for (int it = 0; it < 4; ++it) {
    std::vector<void*> ptrs;
    for (size_t n : sizes) ptrs.push_back(b.allocate(n, 0));
    REQUIRE(b.memory_stats().in_use_bytes >= total);
    for (size_t i = sizes.size(); i-- > 0;) b.deallocate(ptrs[i], sizes[i], 0);
    if (it == 0) after_first = b.memory_stats().device_allocations;
  }
  const MemoryStats s = b.memory_stats();
  REQUIRE(s.device_allocations == after_first);  // iterations 2..4 came from the cache
  REQUIRE(s.cache_hits >= 3 * sizes.size());
  REQUIRE(s.peak_in_use_bytes >= total);
  // What is held is bounded by twice the peak in use (or 256 MB), never more.
  REQUIRE(s.cached_bytes <= std::max(2 * s.peak_in_use_bytes, size_t(256) << 20));
  b.empty_cache();
  REQUIRE(b.memory_stats().cached_bytes == 0);
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
  // empty_cache hands every wholly free segment back; tensors alive keep their contents. A
  // segment with a block in use stays (with its free rest counted in cached_bytes), so what is
  // held after empty_cache is what was held after the previous one: a 24 MiB temporary in
  // between either reused a free block of a segment kept (which it leaves as it found it) or got
  // a segment of its own, which is wholly free again once it is gone.
  Tensor keep = Tensor::full({1000}, 3.0, DType::F32, kGpu);
  b.empty_cache();
  const MemoryStats s0 = b.memory_stats();
  { Tensor tmp = Tensor::full({6 << 20}, 1.0, DType::F32, kGpu); }
  const MemoryStats s1 = b.memory_stats();
  const char* cache = std::getenv("ST_CUDA_CACHE");  // "0": blocks go straight back
  if (!(cache && cache[0] == '0')) REQUIRE(s1.cached_bytes >= (size_t(24) << 20));
  else REQUIRE(s1.cached_bytes == 0);
  b.empty_cache();
  const MemoryStats s2 = b.memory_stats();
  REQUIRE(s2.reserved_bytes == s0.reserved_bytes);
  REQUIRE(s2.segments == s0.segments);
  REQUIRE(s2.cached_bytes == s2.reserved_bytes - s2.in_use_bytes);
  REQUIRE(s2.largest_free_block <= s2.cached_bytes);
  REQUIRE(s2.fragmentation >= 0.0);
  REQUIRE(s2.fragmentation <= 1.0);
  REQUIRE(keep.to(Device::cpu()).to_vector<float>() == std::vector<float>(1000, 3.0f));
}

TEST_CASE("cuda: the allocator serves changing sizes from its segments", "[cuda]") {
  REQUIRE_GPU();
  // Sizes that change every round (as the teacher's do) around a few shapes: after the first
  // rounds, no new segment (kernels/common/block_pool.h; its rules are tested on the CPU in
  // tests/test_block_pool.cpp). With ST_CUDA_CACHE=0 every block is its own allocation.
  const char* cache = std::getenv("ST_CUDA_CACHE");
  if (cache && cache[0] == '0') ST_SKIP("ST_CUDA_CACHE=0: no caching to test");
  Backend& b = backend_for(kGpu);
  auto round = [&](int r) {
    const int64_t h = 90 + (r * 7) % 13, w = 160 + (r * 5) % 11;
    Tensor a = Tensor::full({3, h, w}, 1.0, DType::F32, kGpu);
    Tensor f = Tensor::full({64, h, w}, 2.0, DType::F32, kGpu);
    Tensor g = Tensor::full({64, h, w}, 3.0, DType::F32, kGpu);
    Tensor small = Tensor::full({int64_t(10 + r % 50)}, 4.0, DType::F32, kGpu);
    return sum(g).to(Device::cpu()).item();
  };
  for (int r = 0; r < 30; ++r) round(r);
  const MemoryStats s0 = b.memory_stats();
  for (int r = 30; r < 90; ++r) round(r);
  const MemoryStats s1 = b.memory_stats();
  REQUIRE(s1.device_allocations == s0.device_allocations);
  REQUIRE(s1.cache_hits > s0.cache_hits);
  REQUIRE(s1.reserved_bytes == s1.in_use_bytes + s1.cached_bytes);
}

TEST_CASE("cuda: copies between host and device, staged or direct, keep every byte", "[cuda]") {
  REQUIRE_GPU();
  Backend& b = backend_for(kGpu);
  const Device cpu = Device::cpu();
  // Around the direct/staged threshold (64 KiB) and the staging chunk (4 MiB), and a 720p RGB
  // float frame (1280 x 720 x 3 x 4 bytes, three chunks).
  const size_t K = 1024, M = K * K;
  for (size_t n : {size_t(1), size_t(1000), 64 * K - 4, 64 * K, 4 * M - 4, 4 * M, 4 * M + 4,
                   8 * M + 12, size_t(1280) * 720 * 3 * 4}) {
    CAPTURE(n);
    std::vector<unsigned char> src(n), back(n, 0);
    uint64_t x = n * 0x9E3779B97F4A7C15ull;
    for (auto& v : src) {  // xorshift: a different byte pattern per size
      x ^= x << 13;
      x ^= x >> 7;
      x ^= x << 17;
      v = (unsigned char)(x >> 24);
    }
    const std::vector<unsigned char> expect = src;
    void* d1 = b.allocate(n, 0);
    void* d2 = b.allocate(n, 0);
    b.memcpy(d1, kGpu, src.data(), cpu, n);
    // Returned: the source has been read, so it may be overwritten (or freed) at once; a second
    // copy right after reuses the staging buffers only once the first copy has read them.
    std::fill(src.begin(), src.end(), (unsigned char)0xA5);
    b.memcpy(d2, kGpu, src.data(), cpu, n);
    std::fill(src.begin(), src.end(), (unsigned char)0x5A);
    b.memcpy(back.data(), cpu, d1, kGpu, n);
    REQUIRE(back == expect);
    b.memcpy(back.data(), cpu, d2, kGpu, n);
    REQUIRE(back == std::vector<unsigned char>(n, 0xA5));
    b.memcpy(d2, kGpu, d1, kGpu, n);  // on the device: direct
    b.memcpy(back.data(), cpu, d2, kGpu, n);
    REQUIRE(back == expect);
    b.deallocate(d1, n, 0);
    b.deallocate(d2, n, 0);
  }
}

TEST_CASE("cuda: a bad cross-entropy target is reported at the next host read, as on the CPU",
          "[cuda][errors]") {
  REQUIRE_GPU();
  Backend& b = backend_for(kGpu);
  Tensor logits = Tensor::randn({2, 5, 3, 4}, 11);
  Tensor weight = Tensor::uniform({2, 3, 4}, 1, 2, 12);
  std::vector<int64_t> t(24);
  for (size_t i = 0; i < t.size(); ++i) t[i] = int64_t(i % 5);
  Tensor good = Tensor::from_vector(t, {2, 3, 4});
  t[13] = 7;
  t[20] = -1;  // a later bad pixel: the first one (13) is named
  Tensor bad = Tensor::from_vector(t, {2, 3, 4});
  // The CPU's message.
  std::string cpu_message;
  try {
    Tensor loss = Tensor::empty({}, DType::F32);
    backend_for(Device::cpu()).weighted_cross_entropy_forward(logits, bad, weight, loss);
  } catch (const Error& e) {
    cpu_message = e.what();
  }
  REQUIRE_THAT(cpu_message, Contains("target value 7 at pixel 13 is outside [0, 5)"));
  const Tensor gl = logits.to(kGpu), gw = weight.to(kGpu), gbad = bad.to(kGpu),
               ggood = good.to(kGpu);
  Tensor loss = Tensor::empty({}, DType::F32, kGpu);
  b.weighted_cross_entropy_forward(gl, ggood, gw, loss);
  const double good_loss = loss.to(Device::cpu()).item();  // before any bad target
  const char* sync = std::getenv("ST_CUDA_SYNC");  // "1": reported by the call itself
  if (sync && sync[0] == '1') {
    REQUIRE_THROWS_WITH(b.weighted_cross_entropy_forward(gl, gbad, gw, loss), cpu_message);
  } else {
    // Queued, not waited for: the error comes with the next copy to the host.
    REQUIRE_NOTHROW(b.weighted_cross_entropy_forward(gl, gbad, gw, loss));
    REQUIRE_THROWS_WITH(loss.to(Device::cpu()), cpu_message);
  }
  // Reported once: the next read is clean, and good targets give the same loss as before (the
  // same launch shape sums in the same order: the same bits).
  REQUIRE_NOTHROW(loss.to(Device::cpu()));
  b.weighted_cross_entropy_forward(gl, ggood, gw, loss);
  REQUIRE(loss.to(Device::cpu()).item() == good_loss);
  if (!(sync && sync[0] == '1')) {
    // A bad forward followed by a good one: the first bad target is kept until the device is
    // synchronised, then reported (by synchronize() as by a copy).
    b.weighted_cross_entropy_forward(gl, gbad, gw, loss);
    b.weighted_cross_entropy_forward(gl, ggood, gw, loss);
    REQUIRE_THROWS_WITH(b.synchronize(), cpu_message);
    REQUIRE_NOTHROW(b.synchronize());
    REQUIRE_NOTHROW(loss.to(Device::cpu()));
  }
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
