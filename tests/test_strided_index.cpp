// The index arithmetic of the CUDA strided kernels (kernels/cuda/strided_index.h), run on the
// CPU: the same functions the kernels call. Needs no GPU.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cstdint>
#include <numeric>
#include <random>
#include <vector>

#include "kernels/cuda/strided_index.h"

using st::cuda::collapse_dims;
using st::cuda::DivMod32;
using st::cuda::fits_index32;
using st::cuda::kIndex32Limit;
using st::cuda::reach;
using st::cuda::Strided;
using st::cuda::strided_offset;
using st::cuda::to_strided32;

namespace {

// The offset of linear index i by the definition: row-major coordinates times strides.
int64_t reference_offset(const Strided& s, int64_t i) {
  int64_t off = 0;
  for (int d = s.rank - 1; d >= 0; --d) {
    off += (i % s.size[d]) * s.stride[d];
    i /= s.size[d];
  }
  return off;
}
int64_t numel(const Strided& s) {
  int64_t n = 1;
  for (int d = 0; d < s.rank; ++d) n *= s.size[d];
  return n;
}
Strided make(std::vector<int64_t> size, std::vector<int64_t> stride) {
  Strided s;
  s.rank = int(size.size());
  for (int d = 0; d < s.rank; ++d) s.size[d] = size[size_t(d)], s.stride[d] = stride[size_t(d)];
  return s;
}
void check_divisor(uint32_t d, const std::vector<uint32_t>& numerators) {
  const DivMod32 dm(d);
  for (uint32_t n : numerators) {
    INFO("n = " << n << ", d = " << d);
    REQUIRE(dm.div(n) == n / d);
  }
}
std::vector<uint32_t> numerators_for(uint32_t d, std::mt19937_64& rng) {
  const uint32_t top = uint32_t(kIndex32Limit - 1);
  std::vector<uint32_t> v = {0, 1, top, top - 1, d - 1, d, top / d * d, top / d * d - 1};
  if (uint64_t(d) + 1 <= top) v.push_back(d + 1);
  // Around multiples of d spread over the range: where a wrong quotient shows first.
  for (int k = 0; k < 64; ++k) {
    const uint64_t q = rng() % (uint64_t(top) / d + 1);
    const uint64_t m = q * d;
    if (m <= top) v.push_back(uint32_t(m));
    if (m >= 1 && m - 1 <= top) v.push_back(uint32_t(m - 1));
    v.push_back(uint32_t(rng() % (uint64_t(top) + 1)));
  }
  return v;
}

}  // namespace

TEST_CASE("strided_index: DivMod32 divides exactly for every numerator below 2^31",
          "[strided_index]") {
  std::mt19937_64 rng(7);
  // Every divisor up to 2^12 against its boundary numerators; all numerators for a few small ones.
  for (uint32_t d = 1; d <= 4096; ++d) check_divisor(d, numerators_for(d, rng));
  for (uint32_t d : {1u, 3u, 7u, 640u, 1000u}) {
    const DivMod32 dm(d);
    for (uint32_t n = 0; n < (1u << 20); ++n)
      if (dm.div(n) != n / d) FAIL("n = " << n << ", d = " << d);
  }
  // Powers of two and their neighbours up to 2^31 - 1, and random divisors.
  for (int k = 1; k <= 31; ++k) {
    const uint64_t p = uint64_t(1) << k;
    for (uint64_t d : {p - 1, p, p + 1})
      if (d >= 1 && d < uint64_t(kIndex32Limit)) check_divisor(uint32_t(d), numerators_for(uint32_t(d), rng));
  }
  for (int t = 0; t < 2000; ++t) {
    const uint32_t d = uint32_t(1 + rng() % uint64_t(kIndex32Limit - 1));
    check_divisor(d, numerators_for(d, rng));
  }
  // An empty dim (size 0) is never divided by; it must not break the descriptor.
  CHECK(DivMod32(0).div(12345) == 12345u);
}

TEST_CASE("strided_index: collapsed views and the 32-bit offsets give every element's offset",
          "[strided_index]") {
  std::mt19937_64 rng(11);
  for (int trial = 0; trial < 3000; ++trial) {
    // A random contiguous base shape, permuted (transposes), some dims sliced with a step or
    // broadcast (stride 0), seen by two views of the same sizes (as copy's src and dst).
    const int rank = 1 + int(rng() % 8);
    Strided views[2];
    for (Strided& v : views) {
      const size_t r = static_cast<size_t>(rank);
      std::vector<int64_t> size(r);
      for (int d = 0; d < rank; ++d) size[size_t(d)] = 1 + int64_t(rng() % 4);
      if (&v == &views[1]) size.assign(views[0].size, views[0].size + rank);
      std::vector<int> perm(r);
      std::iota(perm.begin(), perm.end(), 0);
      if (rng() % 2) std::shuffle(perm.begin(), perm.end(), rng);
      // Strides of a contiguous tensor whose dims are the view's dims in the order perm.
      int64_t acc = 1;
      std::vector<int64_t> stride(r);
      for (int j = rank - 1; j >= 0; --j) {
        const int d = perm[size_t(j)];
        const int64_t step = rng() % 5 == 0 ? 2 : 1;  // a strided slice
        stride[size_t(d)] = acc * step;
        acc *= size[size_t(d)] * step;
      }
      for (int d = 0; d < rank; ++d)
        if (rng() % 6 == 0) stride[size_t(d)] = 0;  // broadcast
      v = make(size, stride);
    }
    const Strided orig[2] = {views[0], views[1]};
    Strided* ptrs[] = {&views[0], &views[1]};
    collapse_dims(ptrs, 2);
    REQUIRE(views[0].rank == views[1].rank);
    REQUIRE(views[0].rank >= 1);
    REQUIRE(views[0].rank <= orig[0].rank);
    const int64_t n = numel(orig[0]);
    REQUIRE(numel(views[0]) == n);
    const bool i32 = fits_index32(n, std::max(reach(views[0]), reach(views[1])));
    REQUIRE(i32);  // small shapes
    for (int v = 0; v < 2; ++v) {
      const auto s32 = to_strided32(views[v]);
      for (int64_t i = 0; i < n; ++i) {
        const int64_t want = reference_offset(orig[v], i);
        REQUIRE(strided_offset(orig[v], i) == want);   // uncollapsed, 64-bit
        REQUIRE(strided_offset(views[v], i) == want);  // collapsed, 64-bit
        REQUIRE(int64_t(strided_offset(s32, uint32_t(i))) == want);  // collapsed, 32-bit
      }
    }
  }
}

TEST_CASE("strided_index: collapsing merges contiguous and broadcast runs only",
          "[strided_index]") {
  // Contiguous (2,3,4): one dim of 24.
  Strided c = make({2, 3, 4}, {12, 4, 1});
  Strided* pc[] = {&c};
  collapse_dims(pc, 1);
  CHECK(c.rank == 1);
  CHECK(c.size[0] == 24);
  CHECK(c.stride[0] == 1);
  // Transposed last two dims of (2,3,4): (2,4,3) with strides (12,1,4) -- nothing merges.
  Strided t = make({2, 4, 3}, {12, 1, 4});
  Strided* pt[] = {&t};
  collapse_dims(pt, 1);
  CHECK(t.rank == 3);
  // Two views: one contiguous, one broadcast over dim 0 -- dims 1 and 2 merge in both.
  Strided a = make({5, 3, 4}, {12, 4, 1}), b = make({5, 3, 4}, {0, 4, 1});
  Strided* pab[] = {&a, &b};
  collapse_dims(pab, 2);
  CHECK(a.rank == 2);
  CHECK(a.size[0] == 5);
  CHECK(a.size[1] == 12);
  CHECK(b.stride[0] == 0);
  CHECK(b.stride[1] == 1);
  // All size 1: one element.
  Strided one = make({1, 1, 1}, {7, 9, 3});
  Strided* po[] = {&one};
  collapse_dims(po, 1);
  CHECK(one.rank == 1);
  CHECK(one.size[0] == 1);
  // An empty view is left alone.
  Strided e = make({3, 0, 2}, {2, 2, 1});
  Strided* pe[] = {&e};
  collapse_dims(pe, 1);
  CHECK(e.rank == 3);
}

TEST_CASE("strided_index: the 32-bit path is chosen only when count and offsets fit in int32",
          "[strided_index]") {
  const int64_t L = kIndex32Limit;
  // reach = sum (size - 1) * |stride|.
  CHECK(reach(make({3, 5}, {10, 2})) == 2 * 10 + 4 * 2);
  CHECK(reach(make({3, 5}, {-10, 2})) == 2 * 10 + 4 * 2);  // |stride|
  CHECK(reach(make({1, 5}, {int64_t(1) << 40, 1})) == 4);  // size-1 dims reach nothing
  CHECK(reach(make({3, 0}, {10, 1})) == 0);                // empty
  // Boundaries: reach 2^31 - 1 fits, 2^31 does not; numel 2^31 does not.
  CHECK(fits_index32(L - 1, reach(make({L}, {1}))));
  CHECK_FALSE(fits_index32(2, reach(make({2}, {L}))));
  CHECK(fits_index32(2, reach(make({2}, {L - 1}))));
  CHECK_FALSE(fits_index32(L, 0));
  // A broadcast view of few elements with a huge count: the count decides.
  CHECK_FALSE(fits_index32(int64_t(1) << 32, reach(make({int64_t(1) << 32}, {0}))));
  // Saturation: no overflow for huge sizes and strides.
  CHECK(reach(make({int64_t(1) << 40, int64_t(1) << 40}, {int64_t(1) << 40, 1})) == L);
  CHECK(reach(make({3, 3}, {L - 10, L - 10})) == L);
  // A 2^15 x 2^15 transposed view: reach 2^30 - 1, 32-bit; the last elements agree.
  const int64_t k = int64_t(1) << 15;
  const Strided tr = make({k, k}, {1, k});
  REQUIRE(fits_index32(k * k, reach(tr)));
  const auto t32 = to_strided32(tr);
  for (int64_t i : {int64_t(0), k - 1, k, k * k - k, k * k - 2, k * k - 1, int64_t(123456789)})
    CHECK(int64_t(strided_offset(t32, uint32_t(i))) == reference_offset(tr, i));
  // Offsets near 2^31 in both directions (negative strides) in 32-bit arithmetic.
  const Strided big = make({2, 3, 7}, {-(L / 4), 1 << 20, -3});
  REQUIRE(fits_index32(42, reach(big)));
  const auto b32 = to_strided32(big);
  for (int64_t i = 0; i < 42; ++i)
    CHECK(int64_t(strided_offset(b32, uint32_t(i))) == reference_offset(big, i));
}
