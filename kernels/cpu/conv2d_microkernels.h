// Private header of kernels/cpu/conv2d.cpp: the register-blocked float micro-kernels used by the
// fast conv2d path, in an AVX2+FMA flavour (compiled with a target attribute, so the translation
// unit itself needs no -mavx2) and a portable fallback, plus the run-time selection between them.
//
//  * gemm 4x24: C[4][24] (+)= A[kc][4]^T * B[kc][24]   (A and B packed, 32-byte aligned, C aligned)
//      12 ymm accumulators, 3 B loads + 4 broadcasts per 12 FMAs.
//  * dot 4x3:  out[j][i] = sum_t a[i*lda + t] * b_j[t],  i < 4, j < 3   (any alignment, any n)
//      reductions along the pixel axis for the weight gradient; 12 ymm accumulators.
//  * gemm 4x24 direct: the same with B row k read in place at src + offs[k] (no packing).
//  * gemm 4x24 ldc: the same with C rows at a stride (a panel written straight into the output
//      rows, the accumulators starting from the bias).
//  * pack 24: B[k][0..23] = src[offs[k] + 0..23], the implicit-im2col panel gather.
//  * gemm 32x3 (pixels broadcast): C[3][32] (+)= sum_k src[offs[k] + 0..2] (x) W[k][0..31]. The
//      weights are the vector operand (packed once per call) and the 3 pixels are broadcast from
//      the band where they lie, so nothing is packed per pixel; 12 ymm accumulators, 4 weight
//      loads + 3 broadcasts per 12 FMAs (the 4x24 kernel's ratio, transposed).
//  * transpose 8: an 8x8 block transpose (the 32x3 engine's pixel-major results to NCHW rows).
//  * gather2 / interleave2: stride-2 column (de)interleaving for the phase planes and the
//    stride-2 backward-data output.
#pragma once
#include <cstdint>
#include <cstdlib>
#include <cstring>

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#include <immintrin.h>
#define ST_CONV_HAVE_X86 1
#else
#define ST_CONV_HAVE_X86 0
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

// ---------------------------------------------------------------- portable fallback
inline void gemm_4x24_generic(int64_t kc, const float* A, const float* B, float* C, bool acc) {
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

inline void gemm_4x24_ldc_generic(int64_t kc, const float* A, const float* B, float* C,
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

inline void gemm_4x24_direct_ldc_generic(int64_t kc, const float* A, const float* src,
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

inline void gemm_4x24_direct_generic(int64_t kc, const float* A, const float* src,
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

inline void dot_4x3_generic(int64_t n, const float* a, int64_t lda, const float* b0,
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
inline void gather2_generic(const float* sp, float* d, int64_t n) {
  for (int64_t j = 0; j < n; ++j) d[j] = sp[2 * j];
}

// out[2*j] = p0[j], out[2*j+1] = p1[j] for j < n
using Interleave2Fn = void (*)(const float* p0, const float* p1, float* out, int64_t n);
inline void interleave2_generic(const float* p0, const float* p1, float* out, int64_t n) {
  for (int64_t j = 0; j < n; ++j) out[2 * j] = p0[j], out[2 * j + 1] = p1[j];
}

inline void gemm_32x3_generic(int64_t kc, const float* W, const float* const* px,
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

inline void transpose8_generic(const float* S, int64_t sp, float* D, int64_t dp) {
  for (int i = 0; i < 8; ++i)
    for (int j = 0; j < 8; ++j) D[j * dp + i] = S[i * sp + j];
}

inline void pack_24_generic(int64_t kc, const float* src, const int64_t* offs, float* B) {
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
  bool avx2;
};

// The portable set (always available; also used by the tests as the reference set).
inline Kernels generic_kernels() {
  return Kernels{&gemm_4x24_generic,
                 &gemm_4x24_ldc_generic,
                 &gemm_32x3_generic,
                 &transpose8_generic,
                 &gemm_4x24_direct_generic,
                 &gemm_4x24_direct_ldc_generic,
                 &dot_4x3_generic,
                 &pack_24_generic,
                 &gather2_generic,
                 &interleave2_generic,
                 false};
}

// Chosen once per process: AVX2+FMA when the CPU has it, unless the environment variable
// ST_CONV_FORCE_GENERIC is set to a non-empty value other than "0" (used to test the fallback).
inline const Kernels& kernels() {
  static const Kernels k = [] {
    Kernels r = generic_kernels();
    const char* force = std::getenv("ST_CONV_FORCE_GENERIC");
    const bool forced = force && *force && std::strcmp(force, "0") != 0;
#if ST_CONV_HAVE_X86
    __builtin_cpu_init();
    if (!forced && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
      r = Kernels{&gemm_4x24_avx2, &gemm_4x24_ldc_avx2, &gemm_32x3_avx2,   &transpose8_avx2,
                  &gemm_4x24_direct_avx2, &gemm_4x24_direct_ldc_avx2, &dot_4x3_avx2, &pack_24_avx2,
                  &gather2_avx2,   &interleave2_avx2, true};
#else
    (void)forced;
#endif
    return r;
  }();
  return k;
}

}  // namespace st::cpu::convk
