// The GEMM engines of the float convolutions over one band, weight packing and storing
// (conv2d_internal.h; the design: conv2d.cpp).
#include "kernels/cpu/conv2d_internal.h"

namespace st::cpu::conv2d_detail {

Engine choose_engine(int64_t M, int64_t Kred, bool one_by_one) {
  Engine e;
  const int64_t m4 = round_up(M, kMR), m32 = round_up(M, kWR);
  e.direct = m4 <= kDirectMaxM;
  e.w32 = !e.direct && g_use32.load(std::memory_order_relaxed) && 4 * m32 <= 5 * m4 &&
          m32 <= kMax32 && Kred >= kMinKred32 && !one_by_one;
  e.mr = e.w32 ? kWR : kMR;
  e.Mpad = e.w32 ? m32 : m4;
  return e;
}

// The packed weights [Mpad/mr][Kred][mr] (zero padded) are made by all threads of the call
// inside its parallel region, in pieces of one row block and kPackTaps reduction entries (on the

// Forward: A is W[m][k] itself (M rows of Kred). Piece (mb, part): row block mb, reduction
// entries of part. Blocks of 8 rows x 8 entries go through an 8x8 transpose (a scalar loop had
// strided 32 rows at once and cost ~6% of a 128-channel 3x3 layer's call).
void pack_rows(const float* W, int64_t M, int64_t mr, int64_t Kred, float* out, int64_t mb,
               int64_t part, const Kernels& kn) {
  const int64_t k0 = part * kPackTaps, k1 = std::min(Kred, k0 + kPackTaps);
  float* ob = out + mb * Kred * mr;
  for (int64_t i8 = 0; i8 < mr; i8 += 8) {
    const int64_t m0 = mb * mr + i8;
    const int64_t rows = std::clamp<int64_t>(M - m0, 0, std::min<int64_t>(8, mr));
    int64_t k = k0;
    if (rows == 8 && mr >= 8)
      for (; k + 8 <= k1; k += 8) kn.transpose8(W + m0 * Kred + k, Kred, ob + k * mr + i8, mr);
    for (; k < k1; ++k)
      for (int64_t i = i8; i < std::min(mr, i8 + 8); ++i) {
        const int64_t m = mb * mr + i;
        ob[k * mr + i] = m < M ? W[m * Kred + k] : 0.0f;
      }
  }
}

// Backward data: the GEMM rows are input channels c and a stride phase's reduction entries are
// t = k * nrs + q (output channel k, the phase's q-th kernel tap, at offset rs[q] of w[k][c]).
// Piece `part`: output channels [part*kPackK, ...), all row blocks and all phases. Each packed
// row of mr channels is written contiguously from a strided read of w (writing one entry of
// many rows per w[k][c] read had stalled on the scattered stores: 5x slower, ~7% of a 3x3

void pack_taps(const float* w, int64_t Cg, int64_t Kg, int64_t RS, const std::vector<PhasePack>& ph,
               int64_t mr, int64_t Mpad, int64_t part) {
  for (int64_t k = part * kPackK; k < std::min(Kg, (part + 1) * kPackK); ++k)
    for (int64_t mb = 0; mb < Mpad / mr; ++mb) {
      const int64_t nc = std::clamp<int64_t>(Cg - mb * mr, 0, mr);  // real channels of the block
      const float* wb = w + (k * Cg + mb * mr) * RS;
      for (const PhasePack& P : ph)
        for (int64_t q = 0; q < P.nrs; ++q) {
          float* o = P.out + (mb * Kg * P.nrs + k * P.nrs + q) * mr;
          const float* src = wb + P.rs[q];
          for (int64_t i = 0; i < nc; ++i) o[i] = src[i * RS];
          for (int64_t i = nc; i < mr; ++i) o[i] = 0.0f;
        }
    }
}

// The stored runs of flat pixels [f0, f0+len) of a band with row pitch V and OW valid columns:
// fn(t, i, j, valid) for each band row i the range touches, where pixel f0 + t is at row i,

// f0 + t is Cb[m*pitch + t].
// V: the row pitch of the flat pixel numbering (default the band's; OW when the junk columns
// were skipped).
void store_panel(const GemmJob& J, int64_t i0, int64_t f0, int64_t len, const float* Cb,
                 int64_t pitch, int64_t V) {
  const int64_t pitch_v = V > 0 ? V : J.L->V;
  for_each_run(pitch_v, J.L->OW, f0, len, [&](int64_t t, int64_t i, int64_t j, int64_t valid) {
    float* base = J.dst + (J.oy0 + (i0 + i) * J.osy) * J.dW + J.ox0 + j * J.osx;
    for (int64_t m = 0; m < J.M; ++m) {
      const float* c = Cb + m * pitch + t;
      const float bv = J.bias ? J.bias[m] : 0.0f;
      float* o = base + m * J.dcs;
      // The next panel usually continues this row: start fetching its lines for writing.
      __builtin_prefetch(o + valid * J.osx + 16, 1, 3);
      __builtin_prefetch(o + valid * J.osx + 32, 1, 3);
      if (J.osx == 1) {
        for (int64_t q = 0; q < valid; ++q) o[q] = c[q] + bv;
      } else {
        for (int64_t q = 0; q < valid; ++q) o[q * J.osx] = c[q] + bv;
      }
    }
  });
}

// Working buffers kept per thread from call to call (OpenMP keeps its threads), so that a call

void group32(const GemmJob& J, const float* band, int64_t p0, int64_t glen, GemmScratch& S,
             const Kernels& kn, float* Ct) {
  const Layout& L = *J.L;
  const auto [nkb, kcs] = k_blocks(J.Kred, kKC32);
  const int64_t nmb = J.Mpad / kWR;
  const int64_t* offs = L.offs.data();
  float* Cb = S.Cb.data();
  const float** px = S.px.data();
  const int64_t ntile = ceil_div(glen, kPR);
  for (int64_t t = 0; t < ntile * kPR; ++t) {
    const int64_t p = p0 + std::min(t, glen - 1);
    px[t] = band + p / L.OW * L.V + p % L.OW;
  }
  if (nkb == 0) std::memset(Cb, 0, sizeof(float) * J.Mpad * kGroup32);
  for (int64_t kb = 0; kb < nkb; ++kb) {
    const int64_t k0 = kb * kcs, k1 = std::min(J.Kred, k0 + kcs);
    for (int64_t mb = 0; mb < nmb; ++mb) {
      const float* w = J.A + (mb * J.Kred + k0) * kWR;
      float* cb = Cb + mb * kGroup32 * kWR;
      for (int64_t t = 0; t < ntile; ++t)
        kn.gemm32(k1 - k0, w, px + t * kPR, offs + k0, cb + t * kPR * kWR, kb > 0);
    }
  }
  for (int64_t mb = 0; mb < nmb; ++mb)
    for (int64_t q0 = 0; q0 < glen; q0 += 8)
      for (int64_t c8 = 0; c8 < kWR; c8 += 8)
        kn.transpose8(Cb + (mb * kGroup32 + q0) * kWR + c8, kWR,
                      Ct + (mb * kWR + c8) * kGroup32 + q0, kGroup32);
}
// Stored pixels [q0, q1) of the band (q1 < 0: all bh * OW of them).
static void gemm_rows32(const GemmJob& J, const float* band, int64_t i0, int64_t bh, GemmScratch& S,
                 const Kernels& kn, int64_t q0, int64_t q1) {
  const int64_t npix = q1 < 0 ? bh * J.L->OW : q1;
  for (int64_t p0 = q0; p0 < npix; p0 += kGroup32) {
    const int64_t glen = std::min(kGroup32, npix - p0);
    group32(J, band, p0, glen, S, kn, S.Ct.data());
    store_panel(J, i0, p0, glen, S.Ct.data(), kGroup32, J.L->OW);
  }
}

// Direct engine (M <= 8): one panel (flat pixels [f0, f0+len) of the band) of a job into
// Cb[m*24 + t]; B rows are read in place (a partial panel is copied to Bp first).
void direct_panel(const GemmJob& J, const float* band, int64_t f0, int64_t len, float* Cb,
                  float* Bp, const Kernels& kn) {
  const auto [nkb, kcs] = k_blocks(J.Kred, kKCMax);
  const int64_t nmb = J.Mpad / kMR;
  const int64_t* offs = J.L->offs.data();
  if (nkb == 0) std::memset(Cb, 0, sizeof(float) * J.Mpad * kNR);
  for (int64_t kb = 0; kb < nkb; ++kb) {
    const int64_t k0 = kb * kcs, k1 = std::min(J.Kred, k0 + kcs);
    const float* src = band + f0;
    if (len == kNR) {
      for (int64_t mb = 0; mb < nmb; ++mb)
        kn.gemm_direct(k1 - k0, J.A + (mb * J.Kred + k0) * kMR, src, offs + k0,
                       Cb + mb * kMR * kNR, kb > 0);
      continue;
    }
    for (int64_t k = k0; k < k1; ++k) {
      float* d = Bp + (k - k0) * kNR;
      std::memcpy(d, src + offs[k], sizeof(float) * len);
      std::memset(d + len, 0, sizeof(float) * (kNR - len));
    }
    for (int64_t mb = 0; mb < nmb; ++mb)
      kn.gemm(k1 - k0, J.A + (mb * J.Kred + k0) * kMR, Bp, Cb + mb * kMR * kNR, kb > 0);
  }
}

// Computes output rows [i0, i0+bh) of a job on the calling thread. prebuilt: the band, when the
// caller has built it already (shared by the stride phases of backward data).
void gemm_rows(const GemmJob& J, int64_t i0, int64_t bh, GemmScratch& S, const Kernels& kn,
               const float* prebuilt, int64_t q0, int64_t q1) {
  const Layout& L = *J.L;
  const float* band;
  if (prebuilt) {
    band = prebuilt;
  } else if (L.zero_copy) {
    band = J.src.p + i0 * J.src.W;
  } else {
    build_band(J.src, L, i0, bh, S.band.data());
    band = S.band.data();
  }
  if (J.w32) return gemm_rows32(J, band, i0, bh, S, kn, q0, q1);
  float* Bp = S.Bp.data();
  float* Cb = S.Cb.data();
  const int64_t nflat = bh * L.V;
  const int64_t npan = ceil_div(nflat, kNR);
  const auto [nkb, kcs] = k_blocks(J.Kred, kKCMax);
  const int64_t nmb = J.Mpad / kMR;
  const int64_t* offs = L.offs.data();
  // With few output-channel blocks packing costs more than it saves: read B in place.
  const bool direct = J.Mpad <= kDirectMaxM;
  if (direct) {
    for (int64_t p = 0; p < npan; ++p) {
      const int64_t f0 = p * kNR;
      const int64_t len = std::min<int64_t>(kNR, nflat - f0);
      // A full panel inside one row's stored columns (all rows real) is written straight into
      // the output row by the micro-kernel (no tile, no store pass: that pass had been ~15% of
      // in_conv1's forward).
      const int64_t pi = f0 / L.V, pj = f0 % L.V;
      if (len == kNR && J.osx == 1 && pj + kNR <= L.OW && J.Mpad == J.M) {
        float* o = J.dst + (J.oy0 + (i0 + pi) * J.osy) * J.dW + J.ox0 + pj;
        for (int64_t kb = 0; kb < nkb; ++kb) {
          const int64_t k0 = kb * kcs, k1 = std::min(J.Kred, k0 + kcs);
          for (int64_t mb = 0; mb < nmb; ++mb)
            kn.gemm_direct_ldc(k1 - k0, J.A + (mb * J.Kred + k0) * kMR, band + f0, offs + k0,
                               o + mb * kMR * J.dcs, J.dcs, kb > 0,
                               J.bias ? J.bias + mb * kMR : nullptr);
        }
        if (nkb > 0) continue;
      }
      direct_panel(J, band, f0, len, Cb, Bp, kn);
      store_panel(J, i0, f0, len, Cb);
    }
    return;
  }
  // Panels in groups of kPanelGroup: each K block of the packed weights is read once per group
  // (not once per panel) while the group's packed pixels stay in cache.
  // When the band is the source itself (1x1, stride 1) and the output rows are contiguous in the
  // same flat order, a full panel is written straight into the output (no tile buffer, no store
  // pass; the bias starts the accumulators).
  const bool out_direct = L.zero_copy && J.osx == 1 && J.osy == 1 && J.ox0 == 0 &&
                          J.dW == L.V && J.Mpad == J.M;
  float* const drow = J.dst + (J.oy0 + i0) * J.dW;  // out_direct: flat pixel f of channel m at
                                                    // drow[m * dcs + f]
  for (int64_t p0 = 0; p0 < npan; p0 += kPanelGroup) {
    const int64_t pg = std::min<int64_t>(kPanelGroup, npan - p0);
    if (nkb == 0) std::memset(Cb, 0, sizeof(float) * pg * J.Mpad * kNR);
    for (int64_t kb = 0; kb < nkb; ++kb) {
      const int64_t k0 = kb * kcs, k1 = std::min(J.Kred, k0 + kcs);
      for (int64_t g = 0; g < pg; ++g) {
        const int64_t f0 = (p0 + g) * kNR;
        const int64_t len = std::min<int64_t>(kNR, nflat - f0);
        const float* src = band + f0;
        float* bp = Bp + g * kKCMax * kNR;
        if (len == kNR) {
          kn.pack(k1 - k0, src, offs + k0, bp);
        } else {
          for (int64_t k = k0; k < k1; ++k) {
            float* d = bp + (k - k0) * kNR;
            std::memcpy(d, src + offs[k], sizeof(float) * len);
            std::memset(d + len, 0, sizeof(float) * (kNR - len));
          }
        }
      }
      for (int64_t mb = 0; mb < nmb; ++mb) {
        const float* a = J.A + (mb * J.Kred + k0) * kMR;
        for (int64_t g = 0; g < pg; ++g) {
          const int64_t f0 = (p0 + g) * kNR;
          if (out_direct && f0 + kNR <= nflat)
            kn.gemm_ldc(k1 - k0, a, Bp + g * kKCMax * kNR, drow + mb * kMR * J.dcs + f0, J.dcs,
                        kb > 0, J.bias ? J.bias + mb * kMR : nullptr);
          else
            kn.gemm(k1 - k0, a, Bp + g * kKCMax * kNR, Cb + (g * nmb + mb) * kMR * kNR, kb > 0);
        }
      }
    }
    for (int64_t g = 0; g < pg; ++g) {
      const int64_t f0 = (p0 + g) * kNR;
      if (!out_direct || f0 + kNR > nflat)
        store_panel(J, i0, f0, std::min<int64_t>(kNR, nflat - f0), Cb + g * nmb * kMR * kNR);
    }
  }
}

}  // namespace st::cpu::conv2d_detail
