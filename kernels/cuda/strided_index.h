// Index arithmetic of the CUDA backend's strided kernels, shared by the kernels (device) and
// their launch code (host): the strided-tensor descriptors, the element offset of a linear index
// in 64-bit and in 32-bit arithmetic, the exact 32-bit division by a run-time constant, dimension
// collapsing, and the test that chooses the 32-bit path. Plain C++17 (__host__ __device__ under
// nvcc) so that tests/test_strided_index.cpp runs on the CPU the very functions the kernels run.
#pragma once
#include <cstdint>

#if defined(__CUDACC__)
#define ST_HOST_DEVICE __host__ __device__
#else
#define ST_HOST_DEVICE
#endif

namespace st::cuda {

constexpr int kMaxRank = 8;

// A strided view: `rank` dims of size[d] elements, stride[d] elements apart.
struct Strided {
  int rank = 0;
  int64_t size[kMaxRank] = {};
  int64_t stride[kMaxRank] = {};
};

// Element offset of the linear (row-major) index `i` over `s.size`, for 0 <= i < numel: the
// index left after the inner dims are divided out is dim 0's coordinate, so dim 0 needs no
// division (a rank-1 view none at all).
ST_HOST_DEVICE inline int64_t strided_offset(const Strided& s, int64_t i) {
  int64_t off = 0;
  for (int d = s.rank - 1; d > 0; --d) {
    const int64_t n = s.size[d], q = i / n;
    off += (i - q * n) * s.stride[d];
    i = q;
  }
  return off + i * s.stride[0];
}

// Exact floor(n / d) for 0 <= n < 2^31 and 1 <= d < 2^31 with one 32x32 -> 64-bit multiply
// (Granlund and Montgomery's method, here for 31-bit numerators):
//   l = ceil(log2 d), m = ceil(2^(31+l) / d), floor(n / d) = floor(n * m / 2^(31+l)).
// Why exact: m*d = 2^(31+l) + r with 0 <= r < d <= 2^l. Writing n = q*d + rho (0 <= rho < d),
//   n*m / 2^(31+l) = q + rho/d + n*r / (d * 2^(31+l)),
// and n*r < 2^31 * 2^l makes the last term < 1/d, so the fraction is < (d-1)/d + 1/d = 1.
// m fits 32 bits: d = 2^l gives m = 2^31; otherwise d >= 2^(l-1) + 1 gives
// 2^(31+l)/d <= 2^32/(1 + 2^(1-l)) <= 2^32 - 3.99 (l <= 31), so its ceiling is < 2^32.
// Evaluated as umulhi(2n, m) >> l: 2n < 2^32, and floor(2nm / 2^(32+l)) = floor(nm / 2^(31+l)).
struct DivMod32 {
  uint32_t d = 1, m = 0x80000000u, l = 0;
  DivMod32() = default;
  // d in [1, 2^31); d = 0 (an empty dim, never divided by) is kept as 1.
  explicit DivMod32(uint32_t divisor) : d(divisor ? divisor : 1u) {
    while (l < 31 && (uint64_t(1) << l) < d) ++l;
    const uint64_t p = uint64_t(1) << (31 + l);
    m = uint32_t((p + d - 1) / d);
  }
  ST_HOST_DEVICE uint32_t div(uint32_t n) const {
#if defined(__CUDA_ARCH__)
    return __umulhi(n << 1, m) >> l;
#else
    return uint32_t((uint64_t(n << 1) * m) >> 32) >> l;
#endif
  }
};

// The 32-bit form of a Strided, for views whose element count and reachable offsets all fit in
// int32 (fits_index32): 32-bit sizes with their dividers, 32-bit strides.
struct Strided32 {
  int rank = 0;
  DivMod32 size[kMaxRank];
  int32_t stride[kMaxRank] = {};
};

// Offset of the linear index i (0 <= i < numel < 2^31). Every partial sum is a sum of
// coordinate * stride terms over a subset of the dims, so |partial| <= reach(s) < 2^31.
ST_HOST_DEVICE inline int32_t strided_offset(const Strided32& s, uint32_t i) {
  int32_t off = 0;
  for (int d = s.rank - 1; d > 0; --d) {
    const uint32_t q = s.size[d].div(i);
    off += int32_t(i - q * s.size[d].d) * s.stride[d];
    i = q;
  }
  return off + int32_t(i) * s.stride[0];
}

inline Strided32 to_strided32(const Strided& s) {
  Strided32 r;
  r.rank = s.rank;
  for (int d = 0; d < s.rank; ++d) {
    r.size[d] = DivMod32(uint32_t(s.size[d]));
    r.stride[d] = int32_t(s.stride[d]);
  }
  return r;
}

constexpr int64_t kIndex32Limit = int64_t(1) << 31;

// The largest |offset| a view reaches: sum over d of (size[d] - 1) * |stride[d]|, saturated at
// kIndex32Limit (no overflow for any sizes); 0 for an empty view.
inline int64_t reach(const Strided& s) {
  int64_t acc = 0;
  for (int d = 0; d < s.rank; ++d) {
    if (s.size[d] == 0) return 0;
    const int64_t a = s.stride[d] < 0 ? -s.stride[d] : s.stride[d];
    const int64_t n = s.size[d] - 1;
    if (n == 0 || a == 0) continue;
    if (a > (kIndex32Limit - acc) / n) return kIndex32Limit;
    acc += n * a;
    if (acc >= kIndex32Limit) return kIndex32Limit;
  }
  return acc;
}

// Whether a kernel over `numel` linear indices whose operands reach `total_reach` (the sum of
// the operands' reach() when one offset is the sum of two views' offsets, the largest otherwise)
// may run in 32-bit arithmetic: numel < 2^31 and every offset < 2^31 in magnitude. Strides wider
// than int32 make the reach exceed the limit, so they take the 64-bit path too.
inline bool fits_index32(int64_t numel, int64_t total_reach) {
  return numel >= 0 && numel < kIndex32Limit && total_reach < kIndex32Limit;
}

// Collapses the dims of `count` views of the same sizes in place, keeping every view's offset of
// every linear index: dims of size 1 are dropped, and adjacent dims d, d+1 are merged where
// stride[d] == size[d+1] * stride[d+1] in every view (a contiguous tensor becomes rank 1,
// consecutive broadcast dims one stride-0 dim). Views with an empty dim are left as they are
// (nothing is indexed). The result has rank >= 1.
inline void collapse_dims(Strided* const* views, int count) {
  if (count <= 0) return;
  const Strided& first = *views[0];
  for (int d = 0; d < first.rank; ++d)
    if (first.size[d] == 0) return;
  const int rank = first.rank;
  int out = 0;  // dims written so far (the same for every view: the sizes are shared)
  for (int d = 0; d < rank; ++d) {
    const int64_t n = first.size[d];
    if (n == 1) continue;
    bool merge = out > 0;
    for (int v = 0; merge && v < count; ++v)
      merge = views[v]->stride[out - 1] == n * views[v]->stride[d];
    for (int v = 0; v < count; ++v) {
      Strided& s = *views[v];
      if (merge) {
        s.size[out - 1] *= n;
        s.stride[out - 1] = s.stride[d];
      } else {
        s.size[out] = n;
        s.stride[out] = s.stride[d];
      }
    }
    if (!merge) ++out;
  }
  for (int v = 0; v < count; ++v) {
    Strided& s = *views[v];
    if (out == 0) {  // every dim had size 1: one element
      s.size[0] = 1;
      s.stride[0] = 0;
    }
    s.rank = out == 0 ? 1 : out;
    for (int d = s.rank; d < kMaxRank; ++d) s.size[d] = 0, s.stride[d] = 0;
  }
}

}  // namespace st::cuda
