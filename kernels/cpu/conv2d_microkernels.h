// Private header of the float convolutions (kernels/cpu/conv2d_*.cpp): the register-blocked
// float micro-kernels of the fast conv2d path, in three flavours, plus the run-time choice
// between them:
//   * avx2:     x86-64 with AVX2+FMA (compiled with a target attribute, so the translation unit
//               itself needs no -mavx2; used only when the CPU reports both features);
//   * neon:     aarch64 (Advanced SIMD is part of the base architecture, so always usable there);
//   * portable: plain C++ loops, on every CPU; the reference the others are tested against.
// ST_CPU_KERNELS=portable|avx2|neon picks one (unset, empty or "auto": the best this CPU runs);
// a value that is unknown or that this build/CPU cannot run is an st::Error (select_kernels).
//
//  * gemm 4x24: C[4][24] (+)= A[kc][4]^T * B[kc][24]   (A and B packed, 32-byte aligned, C aligned)
//      AVX2: 12 ymm accumulators, 3 B loads + 4 broadcasts per 12 FMAs.
//      NEON: 24 q-register accumulators, 6 B loads + 1 A load per 24 FMAs (A taken by lane).
//  * dot 4x3:  out[j][i] = sum_t a[i*lda + t] * b_j[t],  i < 4, j < 3   (any alignment, any n)
//      reductions along the pixel axis for the weight gradient; 12 vector accumulators.
//  * gemm 4x24 direct: the same with B row k read in place at src + offs[k] (no packing).
//  * gemm 4x24 ldc: the same with C rows at a stride (a panel written straight into the output
//      rows, the accumulators starting from the bias).
//  * pack 24: B[k][0..23] = src[offs[k] + 0..23], the implicit-im2col panel gather.
//  * gemm 32x3 (pixels broadcast): C[3][32] (+)= sum_k src[offs[k] + 0..2] (x) W[k][0..31]. The
//      weights are the vector operand (packed once per call) and the 3 pixels are broadcast from
//      the band where they lie, so nothing is packed per pixel; AVX2: 12 ymm accumulators, 4
//      weight loads + 3 broadcasts per 12 FMAs (the 4x24 kernel's ratio, transposed); NEON: 24
//      accumulators, 8 weight loads + 3 pixel loads per 24 FMAs.
//  * transpose 8: an 8x8 block transpose (the 32x3 engine's pixel-major results to NCHW rows).
//  * gather2 / interleave2: stride-2 column (de)interleaving for the phase planes and the
//    stride-2 backward-data output.
#pragma once
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "tensor/tensor.h"  // st::Error

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#include <immintrin.h>
#define ST_CONV_HAVE_X86 1
#else
#define ST_CONV_HAVE_X86 0
#endif

#if defined(__aarch64__)
#include <arm_neon.h>
#define ST_CONV_HAVE_NEON 1
#else
#define ST_CONV_HAVE_NEON 0
#endif

namespace st::cpu::convk {

constexpr int kMR = 4;   // rows of the GEMM micro-tile (output channels)
constexpr int kNR = 24;  // columns of the GEMM micro-tile (pixels)

// C (4x24, row-major, 32-byte aligned) = (acc ? C : 0) + sum_k A[k][0..3] (x) B[k][0..23]
using GemmFn = void (*)(int64_t kc, const float* A, const float* B, float* C, bool acc);
// out[j*4 + i] = sum_{t<n} a[i*lda + t] * bj[t]
using DotFn = void (*)(int64_t n, const float* a, int64_t lda, const float* b0, const float* b1,
                       const float* b2, float* out);
// C rows at C + i*ldc (any alignment): C[i*ldc + j] = (acc ? C[i*ldc + j] : bias ? bias[i] : 0)
// + sum_k A[k][i] B[k][j]; used to write a panel straight into a contiguous output row.
using GemmLdcFn = void (*)(int64_t kc, const float* A, const float* B, float* C, int64_t ldc,
                           bool acc, const float* bias);
// Same as GemmFn with B row k read in place at src + offs[k] (any alignment).
using GemmDirectFn = void (*)(int64_t kc, const float* A, const float* src, const int64_t* offs,
                              float* C, bool acc);
// GemmDirectFn with C rows at C + i*ldc as in GemmLdcFn (a panel straight into output rows).
using GemmDirectLdcFn = void (*)(int64_t kc, const float* A, const float* src, const int64_t* offs,
                                 float* C, int64_t ldc, bool acc, const float* bias);
// B[k][0..23] = src[offs[k] + 0..23] for k < kc  (B 32-byte aligned; src any alignment)
using PackFn = void (*)(int64_t kc, const float* src, const int64_t* offs, float* B);

constexpr int kWR = 32;  // output channels of the pixel-broadcast tile (the vector operand)
constexpr int kPR = 3;   // pixels of the pixel-broadcast tile
// C[p*32 + m] = (acc ? C[p*32 + m] : 0) + sum_{k<kc} px[p][offs[k]] * W[k*32 + m] for p < 3,
// m < 32 (W and C 32-byte aligned). Each of the 3 pixels has its own base px[p] (any alignment),
// so a tile can take any 3 pixels of a band: the junk columns between its rows are skipped.
using Gemm32Fn = void (*)(int64_t kc, const float* W, const float* const* px, const int64_t* offs,
                          float* C, bool acc);
// Dst[j*dp + i] = Src[i*sp + j] for i, j < 8 (an 8x8 block transpose; any alignment).
using Transpose8Fn = void (*)(const float* Src, int64_t sp, float* Dst, int64_t dp);

// ---------------------------------------------------------------- portable
inline void gemm_4x24_portable(int64_t kc, const float* A, const float* B, float* C, bool acc) {
  float c[kMR][kNR];
  for (int i = 0; i < kMR; ++i)
    for (int j = 0; j < kNR; ++j) c[i][j] = acc ? C[i * kNR + j] : 0.0f;
  for (int64_t k = 0; k < kc; ++k) {
    const float* b = B + k * kNR;
    for (int i = 0; i < kMR; ++i) {
      const float a = A[k * kMR + i];
      for (int j = 0; j < kNR; ++j) c[i][j] += a * b[j];
    }
  }
  for (int i = 0; i < kMR; ++i)
    for (int j = 0; j < kNR; ++j) C[i * kNR + j] = c[i][j];
}

inline void gemm_4x24_ldc_portable(int64_t kc, const float* A, const float* B, float* C,
                                   int64_t ldc, bool acc, const float* bias) {
  float c[kMR][kNR];
  for (int i = 0; i < kMR; ++i)
    for (int j = 0; j < kNR; ++j) c[i][j] = acc ? C[i * ldc + j] : bias ? bias[i] : 0.0f;
  for (int64_t k = 0; k < kc; ++k)
    for (int i = 0; i < kMR; ++i)
      for (int j = 0; j < kNR; ++j) c[i][j] += A[k * kMR + i] * B[k * kNR + j];
  for (int i = 0; i < kMR; ++i)
    for (int j = 0; j < kNR; ++j) C[i * ldc + j] = c[i][j];
}

inline void gemm_4x24_direct_ldc_portable(int64_t kc, const float* A, const float* src,
                                          const int64_t* offs, float* C, int64_t ldc, bool acc,
                                          const float* bias) {
  float c[kMR][kNR];
  for (int i = 0; i < kMR; ++i)
    for (int j = 0; j < kNR; ++j) c[i][j] = acc ? C[i * ldc + j] : bias ? bias[i] : 0.0f;
  for (int64_t k = 0; k < kc; ++k)
    for (int i = 0; i < kMR; ++i)
      for (int j = 0; j < kNR; ++j) c[i][j] += A[k * kMR + i] * src[offs[k] + j];
  for (int i = 0; i < kMR; ++i)
    for (int j = 0; j < kNR; ++j) C[i * ldc + j] = c[i][j];
}

inline void gemm_4x24_direct_portable(int64_t kc, const float* A, const float* src,
                                      const int64_t* offs, float* C, bool acc) {
  float c[kMR][kNR];
  for (int i = 0; i < kMR; ++i)
    for (int j = 0; j < kNR; ++j) c[i][j] = acc ? C[i * kNR + j] : 0.0f;
  for (int64_t k = 0; k < kc; ++k) {
    const float* b = src + offs[k];
    for (int i = 0; i < kMR; ++i) {
      const float a = A[k * kMR + i];
      for (int j = 0; j < kNR; ++j) c[i][j] += a * b[j];
    }
  }
  for (int i = 0; i < kMR; ++i)
    for (int j = 0; j < kNR; ++j) C[i * kNR + j] = c[i][j];
}

inline void dot_4x3_portable(int64_t n, const float* a, int64_t lda, const float* b0,
                             const float* b1, const float* b2, float* out) {
  const float* b[3] = {b0, b1, b2};
  for (int j = 0; j < 3; ++j)
    for (int i = 0; i < 4; ++i) {
      // 8 partial sums so that the compiler can vectorise without reassociation flags.
      float p[8] = {0, 0, 0, 0, 0, 0, 0, 0};
      const float* ai = a + i * lda;
      const float* bj = b[j];
      int64_t t = 0;
      for (; t + 8 <= n; t += 8)
        for (int q = 0; q < 8; ++q) p[q] += ai[t + q] * bj[t + q];
      float s = ((p[0] + p[1]) + (p[2] + p[3])) + ((p[4] + p[5]) + (p[6] + p[7]));
      for (; t < n; ++t) s += ai[t] * bj[t];
      out[j * 4 + i] = s;
    }
}

// d[j] = sp[2*j] for j < n (reads sp[0 .. 2n-2] only)
using Gather2Fn = void (*)(const float* sp, float* d, int64_t n);
inline void gather2_portable(const float* sp, float* d, int64_t n) {
  for (int64_t j = 0; j < n; ++j) d[j] = sp[2 * j];
}

// out[2*j] = p0[j], out[2*j+1] = p1[j] for j < n
using Interleave2Fn = void (*)(const float* p0, const float* p1, float* out, int64_t n);
inline void interleave2_portable(const float* p0, const float* p1, float* out, int64_t n) {
  for (int64_t j = 0; j < n; ++j) out[2 * j] = p0[j], out[2 * j + 1] = p1[j];
}

inline void gemm_32x3_portable(int64_t kc, const float* W, const float* const* px,
                               const int64_t* offs, float* C, bool acc) {
  float c[kPR][kWR];
  for (int p = 0; p < kPR; ++p)
    for (int m = 0; m < kWR; ++m) c[p][m] = acc ? C[p * kWR + m] : 0.0f;
  for (int64_t k = 0; k < kc; ++k)
    for (int p = 0; p < kPR; ++p) {
      const float x = px[p][offs[k]];
      for (int m = 0; m < kWR; ++m) c[p][m] += x * W[k * kWR + m];
    }
  for (int p = 0; p < kPR; ++p)
    for (int m = 0; m < kWR; ++m) C[p * kWR + m] = c[p][m];
}

inline void transpose8_portable(const float* S, int64_t sp, float* D, int64_t dp) {
  for (int i = 0; i < 8; ++i)
    for (int j = 0; j < 8; ++j) D[j * dp + i] = S[i * sp + j];
}

inline void pack_24_portable(int64_t kc, const float* src, const int64_t* offs, float* B) {
  for (int64_t k = 0; k < kc; ++k) std::memcpy(B + k * kNR, src + offs[k], sizeof(float) * kNR);
}

#if ST_CONV_HAVE_X86
// ---------------------------------------------------------------- AVX2 + FMA
#define ST_AVX2 __attribute__((target("avx2,fma")))

// B row k is at Bsrc + (offs ? offs[k] : k*24); aligned loads only for the packed layout.
// kLdc: C rows at C + i*ldc, unaligned, and the accumulators start from bias when !acc.
template <bool kDirect, bool kLdc = false>
ST_AVX2 inline void gemm_4x24_avx2_impl(int64_t kc, const float* __restrict A,
                                        const float* __restrict Bsrc,
                                        const int64_t* __restrict offs, float* __restrict C,
                                        bool acc, int64_t ldc = 24,
                                        const float* __restrict bias = nullptr) {
  __m256 c00, c01, c02, c10, c11, c12, c20, c21, c22, c30, c31, c32;
  if constexpr (kLdc) {
    float* C1 = C + ldc;
    float* C2 = C + 2 * ldc;
    float* C3 = C + 3 * ldc;
    if (acc) {
      c00 = _mm256_loadu_ps(C), c01 = _mm256_loadu_ps(C + 8), c02 = _mm256_loadu_ps(C + 16);
      c10 = _mm256_loadu_ps(C1), c11 = _mm256_loadu_ps(C1 + 8), c12 = _mm256_loadu_ps(C1 + 16);
      c20 = _mm256_loadu_ps(C2), c21 = _mm256_loadu_ps(C2 + 8), c22 = _mm256_loadu_ps(C2 + 16);
      c30 = _mm256_loadu_ps(C3), c31 = _mm256_loadu_ps(C3 + 8), c32 = _mm256_loadu_ps(C3 + 16);
    } else if (bias) {
      c00 = c01 = c02 = _mm256_broadcast_ss(bias);
      c10 = c11 = c12 = _mm256_broadcast_ss(bias + 1);
      c20 = c21 = c22 = _mm256_broadcast_ss(bias + 2);
      c30 = c31 = c32 = _mm256_broadcast_ss(bias + 3);
    } else {
      c00 = c01 = c02 = c10 = c11 = c12 = c20 = c21 = c22 = c30 = c31 = c32 = _mm256_setzero_ps();
    }
  } else if (acc) {
    c00 = _mm256_load_ps(C + 0), c01 = _mm256_load_ps(C + 8), c02 = _mm256_load_ps(C + 16);
    c10 = _mm256_load_ps(C + 24), c11 = _mm256_load_ps(C + 32), c12 = _mm256_load_ps(C + 40);
    c20 = _mm256_load_ps(C + 48), c21 = _mm256_load_ps(C + 56), c22 = _mm256_load_ps(C + 64);
    c30 = _mm256_load_ps(C + 72), c31 = _mm256_load_ps(C + 80), c32 = _mm256_load_ps(C + 88);
  } else {
    c00 = c01 = c02 = c10 = c11 = c12 = c20 = c21 = c22 = c30 = c31 = c32 = _mm256_setzero_ps();
  }
#define ST_GEMM_STEP(k)                                     \
  {                                                         \
    __m256 b0, b1, b2;                                      \
    if constexpr (kDirect) {                                \
      const float* B = Bsrc + offs[k];                      \
      b0 = _mm256_loadu_ps(B), b1 = _mm256_loadu_ps(B + 8); \
      b2 = _mm256_loadu_ps(B + 16);                         \
    } else {                                                \
      const float* B = Bsrc + (k)*24;                       \
      b0 = _mm256_load_ps(B), b1 = _mm256_load_ps(B + 8);   \
      b2 = _mm256_load_ps(B + 16);                          \
    }                                                       \
    __m256 a = _mm256_broadcast_ss(A + (k)*4 + 0);          \
    c00 = _mm256_fmadd_ps(a, b0, c00);                      \
    c01 = _mm256_fmadd_ps(a, b1, c01);                      \
    c02 = _mm256_fmadd_ps(a, b2, c02);                      \
    a = _mm256_broadcast_ss(A + (k)*4 + 1);                 \
    c10 = _mm256_fmadd_ps(a, b0, c10);                      \
    c11 = _mm256_fmadd_ps(a, b1, c11);                      \
    c12 = _mm256_fmadd_ps(a, b2, c12);                      \
    a = _mm256_broadcast_ss(A + (k)*4 + 2);                 \
    c20 = _mm256_fmadd_ps(a, b0, c20);                      \
    c21 = _mm256_fmadd_ps(a, b1, c21);                      \
    c22 = _mm256_fmadd_ps(a, b2, c22);                      \
    a = _mm256_broadcast_ss(A + (k)*4 + 3);                 \
    c30 = _mm256_fmadd_ps(a, b0, c30);                      \
    c31 = _mm256_fmadd_ps(a, b1, c31);                      \
    c32 = _mm256_fmadd_ps(a, b2, c32);                      \
  }
  int64_t k = 0;
  for (; k + 4 <= kc; k += 4) {
    ST_GEMM_STEP(k) ST_GEMM_STEP(k + 1) ST_GEMM_STEP(k + 2) ST_GEMM_STEP(k + 3)
  }
  for (; k < kc; ++k) ST_GEMM_STEP(k)
#undef ST_GEMM_STEP
  if constexpr (kLdc) {
    float* C1 = C + ldc;
    float* C2 = C + 2 * ldc;
    float* C3 = C + 3 * ldc;
    _mm256_storeu_ps(C, c00), _mm256_storeu_ps(C + 8, c01), _mm256_storeu_ps(C + 16, c02);
    _mm256_storeu_ps(C1, c10), _mm256_storeu_ps(C1 + 8, c11), _mm256_storeu_ps(C1 + 16, c12);
    _mm256_storeu_ps(C2, c20), _mm256_storeu_ps(C2 + 8, c21), _mm256_storeu_ps(C2 + 16, c22);
    _mm256_storeu_ps(C3, c30), _mm256_storeu_ps(C3 + 8, c31), _mm256_storeu_ps(C3 + 16, c32);
    return;
  }
  _mm256_store_ps(C + 0, c00), _mm256_store_ps(C + 8, c01), _mm256_store_ps(C + 16, c02);
  _mm256_store_ps(C + 24, c10), _mm256_store_ps(C + 32, c11), _mm256_store_ps(C + 40, c12);
  _mm256_store_ps(C + 48, c20), _mm256_store_ps(C + 56, c21), _mm256_store_ps(C + 64, c22);
  _mm256_store_ps(C + 72, c30), _mm256_store_ps(C + 80, c31), _mm256_store_ps(C + 88, c32);
}

ST_AVX2 inline void gemm_4x24_avx2(int64_t kc, const float* A, const float* B, float* C, bool acc) {
  gemm_4x24_avx2_impl<false>(kc, A, B, nullptr, C, acc);
}
ST_AVX2 inline void gemm_4x24_ldc_avx2(int64_t kc, const float* A, const float* B, float* C,
                                       int64_t ldc, bool acc, const float* bias) {
  gemm_4x24_avx2_impl<false, true>(kc, A, B, nullptr, C, acc, ldc, bias);
}
ST_AVX2 inline void gemm_4x24_direct_avx2(int64_t kc, const float* A, const float* src,
                                          const int64_t* offs, float* C, bool acc) {
  gemm_4x24_avx2_impl<true>(kc, A, src, offs, C, acc);
}
ST_AVX2 inline void gemm_4x24_direct_ldc_avx2(int64_t kc, const float* A, const float* src,
                                              const int64_t* offs, float* C, int64_t ldc,
                                              bool acc, const float* bias) {
  gemm_4x24_avx2_impl<true, true>(kc, A, src, offs, C, acc, ldc, bias);
}

ST_AVX2 inline void gemm_32x3_avx2(int64_t kc, const float* __restrict W,
                                   const float* const* px, const int64_t* __restrict offs,
                                   float* __restrict C, bool acc) {
  const float* __restrict s0 = px[0];
  const float* __restrict s1 = px[1];
  const float* __restrict s2 = px[2];
  // c<v><p>: channels 8v..8v+7 of pixel p. 12 accumulators + 3 broadcast pixels + 1 weight
  // vector = the 16 ymm registers, so no FMA has to take its weights from memory.
  __m256 c00, c01, c02, c10, c11, c12, c20, c21, c22, c30, c31, c32;
  if (acc) {
    c00 = _mm256_load_ps(C + 0), c10 = _mm256_load_ps(C + 8);
    c20 = _mm256_load_ps(C + 16), c30 = _mm256_load_ps(C + 24);
    c01 = _mm256_load_ps(C + 32), c11 = _mm256_load_ps(C + 40);
    c21 = _mm256_load_ps(C + 48), c31 = _mm256_load_ps(C + 56);
    c02 = _mm256_load_ps(C + 64), c12 = _mm256_load_ps(C + 72);
    c22 = _mm256_load_ps(C + 80), c32 = _mm256_load_ps(C + 88);
  } else {
    c00 = c01 = c02 = c10 = c11 = c12 = c20 = c21 = c22 = c30 = c31 = c32 = _mm256_setzero_ps();
  }
#define ST_G32_STEP(k)                                                                      \
  {                                                                                         \
    const int64_t o = offs[k];                                                              \
    const float* w = W + (k)*32;                                                            \
    const __m256 x0 = _mm256_broadcast_ss(s0 + o), x1 = _mm256_broadcast_ss(s1 + o);        \
    const __m256 x2 = _mm256_broadcast_ss(s2 + o);                                          \
    __m256 v = _mm256_load_ps(w);                                                           \
    c00 = _mm256_fmadd_ps(v, x0, c00), c01 = _mm256_fmadd_ps(v, x1, c01);                   \
    c02 = _mm256_fmadd_ps(v, x2, c02);                                                      \
    v = _mm256_load_ps(w + 8);                                                              \
    c10 = _mm256_fmadd_ps(v, x0, c10), c11 = _mm256_fmadd_ps(v, x1, c11);                   \
    c12 = _mm256_fmadd_ps(v, x2, c12);                                                      \
    v = _mm256_load_ps(w + 16);                                                             \
    c20 = _mm256_fmadd_ps(v, x0, c20), c21 = _mm256_fmadd_ps(v, x1, c21);                   \
    c22 = _mm256_fmadd_ps(v, x2, c22);                                                      \
    v = _mm256_load_ps(w + 24);                                                             \
    c30 = _mm256_fmadd_ps(v, x0, c30), c31 = _mm256_fmadd_ps(v, x1, c31);                   \
    c32 = _mm256_fmadd_ps(v, x2, c32);                                                      \
  }
  int64_t k = 0;
  for (; k + 4 <= kc; k += 4) {
    ST_G32_STEP(k) ST_G32_STEP(k + 1) ST_G32_STEP(k + 2) ST_G32_STEP(k + 3)
  }
  for (; k < kc; ++k) ST_G32_STEP(k)
#undef ST_G32_STEP
  _mm256_store_ps(C + 0, c00), _mm256_store_ps(C + 8, c10);
  _mm256_store_ps(C + 16, c20), _mm256_store_ps(C + 24, c30);
  _mm256_store_ps(C + 32, c01), _mm256_store_ps(C + 40, c11);
  _mm256_store_ps(C + 48, c21), _mm256_store_ps(C + 56, c31);
  _mm256_store_ps(C + 64, c02), _mm256_store_ps(C + 72, c12);
  _mm256_store_ps(C + 80, c22), _mm256_store_ps(C + 88, c32);
}

ST_AVX2 inline void transpose8_avx2(const float* S, int64_t sp, float* D, int64_t dp) {
  __m256 r[8];
  for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(S + i * sp);
  const __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
  const __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
  const __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
  const __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
  const __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
  const __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
  const __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE);
  const __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
  _mm256_storeu_ps(D + 0 * dp, _mm256_permute2f128_ps(u0, u4, 0x20));
  _mm256_storeu_ps(D + 1 * dp, _mm256_permute2f128_ps(u1, u5, 0x20));
  _mm256_storeu_ps(D + 2 * dp, _mm256_permute2f128_ps(u2, u6, 0x20));
  _mm256_storeu_ps(D + 3 * dp, _mm256_permute2f128_ps(u3, u7, 0x20));
  _mm256_storeu_ps(D + 4 * dp, _mm256_permute2f128_ps(u0, u4, 0x31));
  _mm256_storeu_ps(D + 5 * dp, _mm256_permute2f128_ps(u1, u5, 0x31));
  _mm256_storeu_ps(D + 6 * dp, _mm256_permute2f128_ps(u2, u6, 0x31));
  _mm256_storeu_ps(D + 7 * dp, _mm256_permute2f128_ps(u3, u7, 0x31));
}

ST_AVX2 inline void pack_24_avx2(int64_t kc, const float* __restrict src,
                                 const int64_t* __restrict offs, float* __restrict B) {
  for (int64_t k = 0; k < kc; ++k) {
    const float* s = src + offs[k];
    // The next panel reads s[24..47]: fetch it into L1 while this panel computes.
    _mm_prefetch(reinterpret_cast<const char*>(s + 24), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(s + 40), _MM_HINT_T0);
    _mm256_store_ps(B + k * 24, _mm256_loadu_ps(s));
    _mm256_store_ps(B + k * 24 + 8, _mm256_loadu_ps(s + 8));
    _mm256_store_ps(B + k * 24 + 16, _mm256_loadu_ps(s + 16));
  }
}

ST_AVX2 inline void gather2_avx2(const float* __restrict sp, float* __restrict d, int64_t n) {
  int64_t j = 0;
  for (; j + 9 <= n; j += 8) {  // reads sp[2j .. 2j+15] <= sp[2n-2]
    const __m256 v0 = _mm256_loadu_ps(sp + 2 * j);
    const __m256 v1 = _mm256_loadu_ps(sp + 2 * j + 8);
    const __m256 e = _mm256_shuffle_ps(v0, v1, 0x88);  // v0_0 v0_2 v1_0 v1_2 | v0_4 v0_6 v1_4 v1_6
    _mm256_storeu_ps(d + j, _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(e), 0xD8)));
  }
  for (; j < n; ++j) d[j] = sp[2 * j];
}

ST_AVX2 inline void interleave2_avx2(const float* __restrict p0, const float* __restrict p1,
                                     float* __restrict out, int64_t n) {
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) {
    const __m256 a = _mm256_loadu_ps(p0 + j), b = _mm256_loadu_ps(p1 + j);
    const __m256 lo = _mm256_unpacklo_ps(a, b);  // a0 b0 a1 b1 | a4 b4 a5 b5
    const __m256 hi = _mm256_unpackhi_ps(a, b);  // a2 b2 a3 b3 | a6 b6 a7 b7
    _mm256_storeu_ps(out + 2 * j, _mm256_permute2f128_ps(lo, hi, 0x20));
    _mm256_storeu_ps(out + 2 * j + 8, _mm256_permute2f128_ps(lo, hi, 0x31));
  }
  for (; j < n; ++j) out[2 * j] = p0[j], out[2 * j + 1] = p1[j];
}

// Sums of 4 vectors: result lane i = horizontal sum of v_i.
ST_AVX2 inline __m128 hsum4_avx2(__m256 v0, __m256 v1, __m256 v2, __m256 v3) {
  const __m256 s01 = _mm256_hadd_ps(v0, v1);
  const __m256 s23 = _mm256_hadd_ps(v2, v3);
  const __m256 s = _mm256_hadd_ps(s01, s23);
  return _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
}

ST_AVX2 inline void dot_4x3_avx2(int64_t n, const float* __restrict a, int64_t lda,
                                 const float* __restrict b0, const float* __restrict b1,
                                 const float* __restrict b2, float* __restrict out) {
  __m256 c00, c01, c02, c10, c11, c12, c20, c21, c22, c30, c31, c32;
  c00 = c01 = c02 = c10 = c11 = c12 = c20 = c21 = c22 = c30 = c31 = c32 = _mm256_setzero_ps();
  const float* a0 = a;
  const float* a1 = a + lda;
  const float* a2 = a + 2 * lda;
  const float* a3 = a + 3 * lda;
  int64_t t = 0;
  for (; t + 8 <= n; t += 8) {
    const __m256 x0 = _mm256_loadu_ps(b0 + t);
    const __m256 x1 = _mm256_loadu_ps(b1 + t);
    const __m256 x2 = _mm256_loadu_ps(b2 + t);
    __m256 g = _mm256_loadu_ps(a0 + t);
    c00 = _mm256_fmadd_ps(g, x0, c00);
    c01 = _mm256_fmadd_ps(g, x1, c01);
    c02 = _mm256_fmadd_ps(g, x2, c02);
    g = _mm256_loadu_ps(a1 + t);
    c10 = _mm256_fmadd_ps(g, x0, c10);
    c11 = _mm256_fmadd_ps(g, x1, c11);
    c12 = _mm256_fmadd_ps(g, x2, c12);
    g = _mm256_loadu_ps(a2 + t);
    c20 = _mm256_fmadd_ps(g, x0, c20);
    c21 = _mm256_fmadd_ps(g, x1, c21);
    c22 = _mm256_fmadd_ps(g, x2, c22);
    g = _mm256_loadu_ps(a3 + t);
    c30 = _mm256_fmadd_ps(g, x0, c30);
    c31 = _mm256_fmadd_ps(g, x1, c31);
    c32 = _mm256_fmadd_ps(g, x2, c32);
  }
  __m128 s0 = hsum4_avx2(c00, c10, c20, c30);
  __m128 s1 = hsum4_avx2(c01, c11, c21, c31);
  __m128 s2 = hsum4_avx2(c02, c12, c22, c32);
  _mm_storeu_ps(out + 0, s0);
  _mm_storeu_ps(out + 4, s1);
  _mm_storeu_ps(out + 8, s2);
  for (; t < n; ++t) {
    const float x[3] = {b0[t], b1[t], b2[t]};
    const float g[4] = {a0[t], a1[t], a2[t], a3[t]};
    for (int j = 0; j < 3; ++j)
      for (int i = 0; i < 4; ++i) out[j * 4 + i] += g[i] * x[j];
  }
}
#undef ST_AVX2
#endif  // ST_CONV_HAVE_X86

#if ST_CONV_HAVE_NEON
// ---------------------------------------------------------------- NEON (aarch64)
// The AVX2 tiles on 128-bit vectors. aarch64 has 32 of them, so a 24-accumulator tile plus its
// operands stays in registers, and a multiply-add can take its scalar operand from a lane of a
// vector (fmla by element): the 4 A values of a 4x24 step are one load, not 4 broadcasts.
// Loads and stores need no alignment.

// B row k is at Bsrc + (kDirect ? offs[k] : k*24). kLdc: C rows at C + i*ldc, and the
// accumulators start from bias when !acc (as gemm_4x24_avx2_impl).
template <bool kDirect, bool kLdc = false>
inline void gemm_4x24_neon_impl(int64_t kc, const float* __restrict A,
                                const float* __restrict Bsrc, const int64_t* __restrict offs,
                                float* __restrict C, bool acc, int64_t ldc = 24,
                                const float* __restrict bias = nullptr) {
  const int64_t rs = kLdc ? ldc : kNR;  // row stride of C
  float* C0 = C;
  float* C1 = C + rs;
  float* C2 = C + 2 * rs;
  float* C3 = C + 3 * rs;
  // c<i><v>: row i, columns 4v..4v+3
  float32x4_t c00, c01, c02, c03, c04, c05, c10, c11, c12, c13, c14, c15;
  float32x4_t c20, c21, c22, c23, c24, c25, c30, c31, c32, c33, c34, c35;
#define ST_NEON_LOAD_ROW(i)                                                            \
  c##i##0 = vld1q_f32(C##i), c##i##1 = vld1q_f32(C##i + 4), c##i##2 = vld1q_f32(C##i + 8), \
  c##i##3 = vld1q_f32(C##i + 12), c##i##4 = vld1q_f32(C##i + 16),                       \
  c##i##5 = vld1q_f32(C##i + 20)
#define ST_NEON_SET_ROW(i, v) c##i##0 = c##i##1 = c##i##2 = c##i##3 = c##i##4 = c##i##5 = (v)
  if (acc) {
    ST_NEON_LOAD_ROW(0);
    ST_NEON_LOAD_ROW(1);
    ST_NEON_LOAD_ROW(2);
    ST_NEON_LOAD_ROW(3);
  } else if (kLdc && bias) {
    ST_NEON_SET_ROW(0, vdupq_n_f32(bias[0]));
    ST_NEON_SET_ROW(1, vdupq_n_f32(bias[1]));
    ST_NEON_SET_ROW(2, vdupq_n_f32(bias[2]));
    ST_NEON_SET_ROW(3, vdupq_n_f32(bias[3]));
  } else {
    const float32x4_t z = vdupq_n_f32(0.0f);
    ST_NEON_SET_ROW(0, z);
    ST_NEON_SET_ROW(1, z);
    ST_NEON_SET_ROW(2, z);
    ST_NEON_SET_ROW(3, z);
  }
#undef ST_NEON_LOAD_ROW
#undef ST_NEON_SET_ROW
#define ST_NEON_FMA_ROW(i)                                                          \
  c##i##0 = vfmaq_laneq_f32(c##i##0, b0, a, i), c##i##1 = vfmaq_laneq_f32(c##i##1, b1, a, i), \
  c##i##2 = vfmaq_laneq_f32(c##i##2, b2, a, i), c##i##3 = vfmaq_laneq_f32(c##i##3, b3, a, i), \
  c##i##4 = vfmaq_laneq_f32(c##i##4, b4, a, i), c##i##5 = vfmaq_laneq_f32(c##i##5, b5, a, i)
#define ST_NEON_GEMM_STEP(k)                                                      \
  {                                                                               \
    const float* B = kDirect ? Bsrc + offs[k] : Bsrc + (k)*kNR;                   \
    const float32x4_t b0 = vld1q_f32(B), b1 = vld1q_f32(B + 4);                   \
    const float32x4_t b2 = vld1q_f32(B + 8), b3 = vld1q_f32(B + 12);              \
    const float32x4_t b4 = vld1q_f32(B + 16), b5 = vld1q_f32(B + 20);             \
    const float32x4_t a = vld1q_f32(A + (k)*kMR); /* A[k][0..3] */                \
    ST_NEON_FMA_ROW(0);                                                           \
    ST_NEON_FMA_ROW(1);                                                           \
    ST_NEON_FMA_ROW(2);                                                           \
    ST_NEON_FMA_ROW(3);                                                           \
  }
  // One step per iteration: unrolled by 2, GCC 12 (-mcpu=cortex-a78 or neoverse-n1) hoisted
  // the next step's loads and spilled accumulators in the loop.
  for (int64_t k = 0; k < kc; ++k) ST_NEON_GEMM_STEP(k)
#undef ST_NEON_GEMM_STEP
#undef ST_NEON_FMA_ROW
#define ST_NEON_STORE_ROW(i)                                                       \
  vst1q_f32(C##i, c##i##0), vst1q_f32(C##i + 4, c##i##1), vst1q_f32(C##i + 8, c##i##2), \
  vst1q_f32(C##i + 12, c##i##3), vst1q_f32(C##i + 16, c##i##4),                    \
  vst1q_f32(C##i + 20, c##i##5)
  ST_NEON_STORE_ROW(0);
  ST_NEON_STORE_ROW(1);
  ST_NEON_STORE_ROW(2);
  ST_NEON_STORE_ROW(3);
#undef ST_NEON_STORE_ROW
}

inline void gemm_4x24_neon(int64_t kc, const float* A, const float* B, float* C, bool acc) {
  gemm_4x24_neon_impl<false>(kc, A, B, nullptr, C, acc);
}
inline void gemm_4x24_ldc_neon(int64_t kc, const float* A, const float* B, float* C, int64_t ldc,
                               bool acc, const float* bias) {
  gemm_4x24_neon_impl<false, true>(kc, A, B, nullptr, C, acc, ldc, bias);
}
inline void gemm_4x24_direct_neon(int64_t kc, const float* A, const float* src,
                                  const int64_t* offs, float* C, bool acc) {
  gemm_4x24_neon_impl<true>(kc, A, src, offs, C, acc);
}
inline void gemm_4x24_direct_ldc_neon(int64_t kc, const float* A, const float* src,
                                      const int64_t* offs, float* C, int64_t ldc, bool acc,
                                      const float* bias) {
  gemm_4x24_neon_impl<true, true>(kc, A, src, offs, C, acc, ldc, bias);
}

inline void gemm_32x3_neon(int64_t kc, const float* __restrict W, const float* const* px,
                           const int64_t* __restrict offs, float* __restrict C, bool acc) {
  const float* __restrict s0 = px[0];
  const float* __restrict s1 = px[1];
  const float* __restrict s2 = px[2];
  // c<p><v>: channels 4v..4v+3 of pixel p, at C + p*32 + 4v. 24 accumulators + the 3 pixels
  // + 4 weight vectors = 31 of the 32 registers. Left alone, GCC 12's scheduler loads all 8
  // weight vectors of a step first and spills accumulators inside the loop; the empty asm with
  // a memory clobber between the two halves of a step keeps the second half's loads after it.
  float32x4_t c00, c01, c02, c03, c04, c05, c06, c07;
  float32x4_t c10, c11, c12, c13, c14, c15, c16, c17;
  float32x4_t c20, c21, c22, c23, c24, c25, c26, c27;
#define ST_NEON_LOAD_PX(p)                                                                  \
  c##p##0 = vld1q_f32(C + p * 32), c##p##1 = vld1q_f32(C + p * 32 + 4),                     \
  c##p##2 = vld1q_f32(C + p * 32 + 8), c##p##3 = vld1q_f32(C + p * 32 + 12),                \
  c##p##4 = vld1q_f32(C + p * 32 + 16), c##p##5 = vld1q_f32(C + p * 32 + 20),               \
  c##p##6 = vld1q_f32(C + p * 32 + 24), c##p##7 = vld1q_f32(C + p * 32 + 28)
#define ST_NEON_SET_PX(p, v) \
  c##p##0 = c##p##1 = c##p##2 = c##p##3 = c##p##4 = c##p##5 = c##p##6 = c##p##7 = (v)
  if (acc) {
    ST_NEON_LOAD_PX(0);
    ST_NEON_LOAD_PX(1);
    ST_NEON_LOAD_PX(2);
  } else {
    const float32x4_t z = vdupq_n_f32(0.0f);
    ST_NEON_SET_PX(0, z);
    ST_NEON_SET_PX(1, z);
    ST_NEON_SET_PX(2, z);
  }
#undef ST_NEON_LOAD_PX
#undef ST_NEON_SET_PX
#define ST_NEON_G32_V(v)                                                  \
  {                                                                       \
    const float32x4_t wv = vld1q_f32(w + 4 * v);                          \
    c0##v = vfmaq_n_f32(c0##v, wv, x0);                                   \
    c1##v = vfmaq_n_f32(c1##v, wv, x1);                                   \
    c2##v = vfmaq_n_f32(c2##v, wv, x2);                                   \
  }
#define ST_NEON_G32_STEP(k)                                                  \
  {                                                                          \
    const int64_t o = offs[k];                                               \
    const float* w = W + (k)*kWR;                                            \
    const float x0 = s0[o], x1 = s1[o], x2 = s2[o];                          \
    ST_NEON_G32_V(0) ST_NEON_G32_V(1) ST_NEON_G32_V(2) ST_NEON_G32_V(3)      \
    __asm__ volatile("" ::: "memory"); /* 4 weight vectors at a time */      \
    ST_NEON_G32_V(4) ST_NEON_G32_V(5) ST_NEON_G32_V(6) ST_NEON_G32_V(7)      \
  }
  for (int64_t k = 0; k < kc; ++k) ST_NEON_G32_STEP(k)
#undef ST_NEON_G32_STEP
#undef ST_NEON_G32_V
#define ST_NEON_STORE_PX(p)                                                             \
  vst1q_f32(C + p * 32, c##p##0), vst1q_f32(C + p * 32 + 4, c##p##1),                   \
  vst1q_f32(C + p * 32 + 8, c##p##2), vst1q_f32(C + p * 32 + 12, c##p##3),              \
  vst1q_f32(C + p * 32 + 16, c##p##4), vst1q_f32(C + p * 32 + 20, c##p##5),             \
  vst1q_f32(C + p * 32 + 24, c##p##6), vst1q_f32(C + p * 32 + 28, c##p##7)
  ST_NEON_STORE_PX(0);
  ST_NEON_STORE_PX(1);
  ST_NEON_STORE_PX(2);
#undef ST_NEON_STORE_PX
}

// Rows i0..i0+3, columns j0..j0+3 of the source as 4 vectors -> its 4 columns as 4 vectors.
inline void transpose4_neon(float32x4_t r0, float32x4_t r1, float32x4_t r2, float32x4_t r3,
                            float32x4_t& c0, float32x4_t& c1, float32x4_t& c2, float32x4_t& c3) {
  // t0 = r0_0 r1_0 r0_2 r1_2, t1 = r0_1 r1_1 r0_3 r1_3 (t2, t3 the same for rows 2 and 3)
  const float32x4_t t0 = vtrn1q_f32(r0, r1), t1 = vtrn2q_f32(r0, r1);
  const float32x4_t t2 = vtrn1q_f32(r2, r3), t3 = vtrn2q_f32(r2, r3);
  c0 = vreinterpretq_f32_f64(vtrn1q_f64(vreinterpretq_f64_f32(t0), vreinterpretq_f64_f32(t2)));
  c1 = vreinterpretq_f32_f64(vtrn1q_f64(vreinterpretq_f64_f32(t1), vreinterpretq_f64_f32(t3)));
  c2 = vreinterpretq_f32_f64(vtrn2q_f64(vreinterpretq_f64_f32(t0), vreinterpretq_f64_f32(t2)));
  c3 = vreinterpretq_f32_f64(vtrn2q_f64(vreinterpretq_f64_f32(t1), vreinterpretq_f64_f32(t3)));
}

inline void transpose8_neon(const float* S, int64_t sp, float* D, int64_t dp) {
  // Four 4x4 blocks; block (bi, bj) of S becomes block (bj, bi) of D.
  for (int bi = 0; bi < 8; bi += 4)
    for (int bj = 0; bj < 8; bj += 4) {
      const float* s = S + bi * sp + bj;
      float32x4_t c0, c1, c2, c3;
      transpose4_neon(vld1q_f32(s), vld1q_f32(s + sp), vld1q_f32(s + 2 * sp),
                      vld1q_f32(s + 3 * sp), c0, c1, c2, c3);
      float* d = D + bj * dp + bi;
      vst1q_f32(d, c0), vst1q_f32(d + dp, c1), vst1q_f32(d + 2 * dp, c2);
      vst1q_f32(d + 3 * dp, c3);
    }
}

inline void pack_24_neon(int64_t kc, const float* __restrict src, const int64_t* __restrict offs,
                         float* __restrict B) {
  for (int64_t k = 0; k < kc; ++k) {
    const float* s = src + offs[k];
    // The next panel reads s[24..47]: fetch it into L1 while this panel computes.
    __builtin_prefetch(s + 24);
    __builtin_prefetch(s + 40);
    float* b = B + k * kNR;
    vst1q_f32(b, vld1q_f32(s)), vst1q_f32(b + 4, vld1q_f32(s + 4));
    vst1q_f32(b + 8, vld1q_f32(s + 8)), vst1q_f32(b + 12, vld1q_f32(s + 12));
    vst1q_f32(b + 16, vld1q_f32(s + 16)), vst1q_f32(b + 20, vld1q_f32(s + 20));
  }
}

inline void gather2_neon(const float* __restrict sp, float* __restrict d, int64_t n) {
  int64_t j = 0;
  for (; j + 9 <= n; j += 8) {  // reads sp[2j .. 2j+15] <= sp[2n-2]
    vst1q_f32(d + j, vld2q_f32(sp + 2 * j).val[0]);
    vst1q_f32(d + j + 4, vld2q_f32(sp + 2 * j + 8).val[0]);
  }
  for (; j + 5 <= n; j += 4) vst1q_f32(d + j, vld2q_f32(sp + 2 * j).val[0]);  // sp[2j .. 2j+7]
  for (; j < n; ++j) d[j] = sp[2 * j];
}

inline void interleave2_neon(const float* __restrict p0, const float* __restrict p1,
                             float* __restrict out, int64_t n) {
  int64_t j = 0;
  for (; j + 4 <= n; j += 4) {
    float32x4x2_t v;
    v.val[0] = vld1q_f32(p0 + j), v.val[1] = vld1q_f32(p1 + j);
    vst2q_f32(out + 2 * j, v);  // p0_j p1_j p0_j+1 p1_j+1 ...
  }
  for (; j < n; ++j) out[2 * j] = p0[j], out[2 * j + 1] = p1[j];
}

inline void dot_4x3_neon(int64_t n, const float* __restrict a, int64_t lda,
                         const float* __restrict b0, const float* __restrict b1,
                         const float* __restrict b2, float* __restrict out) {
  // c<i><j>: partial sums of a_i . b_j, 4 lanes each
  const float32x4_t z = vdupq_n_f32(0.0f);
  float32x4_t c00 = z, c01 = z, c02 = z, c10 = z, c11 = z, c12 = z;
  float32x4_t c20 = z, c21 = z, c22 = z, c30 = z, c31 = z, c32 = z;
  const float* a0 = a;
  const float* a1 = a + lda;
  const float* a2 = a + 2 * lda;
  const float* a3 = a + 3 * lda;
  int64_t t = 0;
  for (; t + 4 <= n; t += 4) {
    const float32x4_t x0 = vld1q_f32(b0 + t), x1 = vld1q_f32(b1 + t), x2 = vld1q_f32(b2 + t);
    float32x4_t g = vld1q_f32(a0 + t);
    c00 = vfmaq_f32(c00, g, x0), c01 = vfmaq_f32(c01, g, x1), c02 = vfmaq_f32(c02, g, x2);
    g = vld1q_f32(a1 + t);
    c10 = vfmaq_f32(c10, g, x0), c11 = vfmaq_f32(c11, g, x1), c12 = vfmaq_f32(c12, g, x2);
    g = vld1q_f32(a2 + t);
    c20 = vfmaq_f32(c20, g, x0), c21 = vfmaq_f32(c21, g, x1), c22 = vfmaq_f32(c22, g, x2);
    g = vld1q_f32(a3 + t);
    c30 = vfmaq_f32(c30, g, x0), c31 = vfmaq_f32(c31, g, x1), c32 = vfmaq_f32(c32, g, x2);
  }
  // Lane i of sum4(v0, v1, v2, v3) = the horizontal sum of v_i (pairwise adds).
  auto sum4 = [](float32x4_t v0, float32x4_t v1, float32x4_t v2, float32x4_t v3) {
    return vpaddq_f32(vpaddq_f32(v0, v1), vpaddq_f32(v2, v3));
  };
  vst1q_f32(out + 0, sum4(c00, c10, c20, c30));
  vst1q_f32(out + 4, sum4(c01, c11, c21, c31));
  vst1q_f32(out + 8, sum4(c02, c12, c22, c32));
  for (; t < n; ++t) {
    const float x[3] = {b0[t], b1[t], b2[t]};
    const float g[4] = {a0[t], a1[t], a2[t], a3[t]};
    for (int j = 0; j < 3; ++j)
      for (int i = 0; i < 4; ++i) out[j * 4 + i] += g[i] * x[j];
  }
}
#endif  // ST_CONV_HAVE_NEON

struct Kernels {
  GemmFn gemm;
  GemmLdcFn gemm_ldc;
  Gemm32Fn gemm32;
  Transpose8Fn transpose8;
  GemmDirectFn gemm_direct;
  GemmDirectLdcFn gemm_direct_ldc;
  DotFn dot;
  PackFn pack;
  Gather2Fn gather2;
  Interleave2Fn interleave2;
  const char* name;  // the flavour: "portable", "avx2" or "neon" (the ST_CPU_KERNELS values)
};

// The portable set (always available; the tests' reference set).
inline Kernels portable_kernels() {
  return Kernels{&gemm_4x24_portable,
                 &gemm_4x24_ldc_portable,
                 &gemm_32x3_portable,
                 &transpose8_portable,
                 &gemm_4x24_direct_portable,
                 &gemm_4x24_direct_ldc_portable,
                 &dot_4x3_portable,
                 &pack_24_portable,
                 &gather2_portable,
                 &interleave2_portable,
                 "portable"};
}

#if ST_CONV_HAVE_X86
inline bool cpu_has_avx2_fma() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}
inline Kernels avx2_kernels() {
  return Kernels{&gemm_4x24_avx2,        &gemm_4x24_ldc_avx2,        &gemm_32x3_avx2,
                 &transpose8_avx2,       &gemm_4x24_direct_avx2,     &gemm_4x24_direct_ldc_avx2,
                 &dot_4x3_avx2,          &pack_24_avx2,              &gather2_avx2,
                 &interleave2_avx2,      "avx2"};
}
#endif

#if ST_CONV_HAVE_NEON
inline Kernels neon_kernels() {
  return Kernels{&gemm_4x24_neon,        &gemm_4x24_ldc_neon,        &gemm_32x3_neon,
                 &transpose8_neon,       &gemm_4x24_direct_neon,     &gemm_4x24_direct_ldc_neon,
                 &dot_4x3_neon,          &pack_24_neon,              &gather2_neon,
                 &interleave2_neon,      "neon"};
}
#endif

// The flavours that this build has and this CPU can run, best first (portable is always last).
inline std::vector<Kernels> available_kernels() {
  std::vector<Kernels> r;
#if ST_CONV_HAVE_NEON
  r.push_back(neon_kernels());
#endif
#if ST_CONV_HAVE_X86
  if (cpu_has_avx2_fma()) r.push_back(avx2_kernels());
#endif
  r.push_back(portable_kernels());
  return r;
}

// The flavour that `value` (the value of ST_CPU_KERNELS) names: null, empty or "auto" is the
// best available one. Anything else that is not an available flavour throws st::Error with the
// variable, the value, why it cannot be used and the flavours that can.
inline Kernels select_kernels(const char* value) {
  const std::vector<Kernels> avail = available_kernels();
  if (value == nullptr || *value == '\0' || std::strcmp(value, "auto") == 0) return avail.front();
  std::string names;
  for (const Kernels& k : avail) {
    if (std::strcmp(value, k.name) == 0) return k;
    names += names.empty() ? "" : ", ";
    names += k.name;
  }
  const std::string v = value;
  std::string why;
  if (v == "avx2")
    why = ST_CONV_HAVE_X86 ? "this CPU lacks AVX2 or FMA"
                           : "avx2 kernels exist only in x86-64 builds";
  else if (v == "neon")
    why = "neon kernels exist only in aarch64 builds";
  else
    why = "unknown flavour (known: portable, avx2, neon, or auto for the best available)";
  throw Error("ST_CPU_KERNELS=" + v + ": " + why + "; available here: " + names);
}

// The set chosen once per process from ST_CPU_KERNELS (see select_kernels). A bad value throws
// st::Error from the first call, and again from every later one (a function-local static whose
// initialisation throws is not initialised). Each float entry point (conv2d_forward.cpp, ...)
// takes the set before it opens any OpenMP parallel region, so the error reaches the
// convolution's caller as an exception.
inline const Kernels& kernels() {
  static const Kernels k = select_kernels(std::getenv("ST_CPU_KERNELS"));
  return k;
}

}  // namespace st::cpu::convk
