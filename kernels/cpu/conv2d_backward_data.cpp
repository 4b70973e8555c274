// conv2d backward data, float path: per stride phase of gx, through the forward engines
// (conv2d_internal.h; the design: conv2d.cpp).
#include "kernels/cpu/conv2d_internal.h"

#include <limits>
#include <optional>
#include <stdexcept>

namespace st::cpu::conv2d_detail {

void backward_data_f32(const ConvGeom& g, const float* gy, const float* w, float* gx) {
  const int64_t G = g.groups, Cg = g.C / G, Kg = g.K / G;
  const int64_t RS = g.R * g.S;
  const int64_t sh = g.stride_h, sw = g.stride_w;
  // (the longest phase reduction: Kg x taps of one stride phase)
  const Engine eng = choose_engine(Cg, Kg * ceil_div(g.R, sh) * ceil_div(g.S, sw), RS == 1);
  const int64_t Mpad = eng.Mpad;
  if (g.N * g.C * g.H * g.W == 0) return;
  const double flops = 2.0 * g.N * g.K * Cg * RS * g.OH * g.OW;
  const bool par = go_parallel(flops);
  // One job description per stride phase (a, b) of gx: gx[a::sh, b::sw] is a stride-1
  // correlation of gy with the taps r = a+ph (mod sh), s = b+pw (mod sw).
  struct Phase {
    int64_t a, b, Ha, Wb;
    Source s0;
    std::vector<Tap> taps;
    std::vector<int64_t> rs;  // the phase's kernel taps (r, s) as offsets r*S + s, in tap order
    Layout L;
    int64_t Kred = 0;
    size_t aoff = 0;  // into packed A: per group blocks of Mpad*Kred
  };
  std::vector<Phase> phases;
  for (int64_t a = 0; a < sh; ++a)
    for (int64_t b = 0; b < sw; ++b) {
      Phase P;
      P.a = a, P.b = b;
      P.Ha = a < g.H ? ceil_div(g.H - a, sh) : 0;
      P.Wb = b < g.W ? ceil_div(g.W - b, sw) : 0;
      if (P.Ha == 0 || P.Wb == 0) continue;
      std::vector<int64_t> R_, S_, dy, dx;  // taps of this phase and their gy offsets
      for (int64_t r = 0; r < g.R; ++r)
        if (((a + g.pad_h - r) % sh + sh) % sh == 0)
          R_.push_back(r), dy.push_back((a + g.pad_h - r) / sh);
      for (int64_t s = 0; s < g.S; ++s)
        if (((b + g.pad_w - s) % sw + sw) % sw == 0)
          S_.push_back(s), dx.push_back((b + g.pad_w - s) / sw);
      const int64_t py = R_.empty() ? 0 : -*std::min_element(dy.begin(), dy.end());
      const int64_t px = S_.empty() ? 0 : -*std::min_element(dx.begin(), dx.end());
      P.s0 = Source{nullptr, Kg, g.OH, g.OW, 1, 1, py, px};
      for (size_t ri = 0; ri < R_.size(); ++ri)
        for (size_t si = 0; si < S_.size(); ++si) P.rs.push_back(R_[ri] * g.S + S_[si]);
      for (int64_t k = 0; k < Kg; ++k)
        for (size_t ri = 0; ri < R_.size(); ++ri)
          for (size_t si = 0; si < S_.size(); ++si)
            P.taps.push_back({k, dy[ri] + py, dx[si] + px});
      P.Kred = static_cast<int64_t>(P.taps.size());
      phases.push_back(std::move(P));
    }
  const int64_t nph = static_cast<int64_t>(phases.size());
  // All phases of a work item cover the same phase rows [i0, i0+BH), i.e. the same gx rows, so
  // the (strided) writes of the sh*sw phases hit gx lines that are still in cache. The gx block
  // of one item (Cg x BH*sh rows x W) shares the band budget.
  int64_t maxHa = 0, BH = std::numeric_limits<int64_t>::max();
  for (Phase& P : phases) {
    maxHa = std::max(maxHa, P.Ha);
    // (one row more for the 32x3 engine's pixel chunks)
    P.L = make_layout(P.s0, P.taps, P.Ha, P.Wb, 0,
                      eng.w32 ? chunk_rows_hint(P.Ha, g.N * G, team_size(par))
                              : band_cap(P.Ha, g.N * G, team_size(par)));
    BH = std::min(BH, P.L.BH);
  }
  // Several phases read the same gy rows, each at its own offsets: they share one band, built
  // once per work item with the union of their paddings (PY rows above, PX columns left, row
  // pitch Vu wide enough for every phase's columns), instead of one band copy per phase
  // (3x3 stride 2: 4-13% faster). Not when only one phase has taps (a 1x1 stride 2 kernel: that
  // phase reads gy in place).
  const bool shared_band =
      std::count_if(phases.begin(), phases.end(), [](const Phase& P) { return P.Kred > 0; }) > 1;
  int64_t PY = 0, PX = 0, Vu = 0, halo_u = 0;
  if (shared_band) {
    for (const Phase& P : phases) PY = std::max(PY, P.s0.py), PX = std::max(PX, P.s0.px);
    for (const Phase& P : phases)
      for (const Tap& t : P.taps) {
        halo_u = std::max(halo_u, t.r - P.s0.py + PY);
        Vu = std::max(Vu, P.Wb + t.s - P.s0.px + PX);
      }
    const int64_t row = Kg * Vu;
    BH = std::min(BH, std::max<int64_t>(1, (kBandBudget - halo_u * row) / row));
  }
  // gx block of one item (Cg x BH*sh rows x W): aim at L2 residency.
  if (nph > 1) BH = std::min(BH, std::max<int64_t>(1, kBandBudget / 4 / (Cg * sh * g.W)));
  // With a column stride the phases go to a private buffer tmp[a][b][Mpad][BH][Wq] (contiguous
  // stores) and are then interleaved into gx rows; otherwise they are stored into gx directly.
  const bool use_tmp = sw > 1;
  const int64_t Wq = ceil_div(g.W, sw);
  size_t afloats = 0;
  int64_t bandmax = 0;
  // The shared band: gy with padding (PY, PX), one plane, rows [i0 - PY, i0 + BH + halo_u - PY).
  const Source su{nullptr, Kg, g.OH, g.OW, 1, 1, PY, PX};
  Layout Lu;
  if (shared_band) {
    Lu.OH = maxHa, Lu.V = Vu, Lu.halo = halo_u, Lu.BH = BH, Lu.nplanes = 1, Lu.plane_ab = {0};
    Lu.plane_stride = Lu.chan_stride = (BH + halo_u) * Vu;
    Lu.buf_floats = Kg * Lu.chan_stride + kSlack;
  }
  for (Phase& P : phases) {
    if (shared_band) {  // the phase's taps as offsets into the shared band
      P.L = Lu;
      P.L.OH = P.Ha, P.L.OW = P.Wb;
      P.L.offs.resize(P.taps.size());
      for (size_t k = 0; k < P.taps.size(); ++k) {
        const Tap& t = P.taps[k];
        P.L.offs[k] = t.c * Lu.chan_stride + (t.r - P.s0.py + PY) * Vu + (t.s - P.s0.px + PX);
      }
    } else {  // every phase with the same band height
      P.L = make_layout(P.s0, P.taps, P.Ha, P.Wb, 0, BH);
    }
    bandmax = std::max(bandmax, P.L.buf_floats);
    P.aoff = afloats;
    afloats += static_cast<size_t>(G * Mpad * P.Kred);
  }
  Scratch A(kSlotA, afloats);
  const int64_t npart = ceil_div(Kg, kPackK);
  const Kernels& kn = convk::kernels();
  const int64_t tplane = BH * Wq;  // one (phase, channel) plane of tmp
  // Column stride 2, even width, few input channels (the direct engine), shared band: the two
  // column phases (a, 0) and (a, 1) cover the same flat pixels of the band, so each panel of
  // both is computed back to back and its two tiles are interleaved straight into the gx rows
  // (no private buffer, no second pass over gx).
  const bool pairs = eng.direct && sw == 2 && g.W % 2 == 0 && shared_band && nph == 2 * sh;
  // The same with the 32x3 engine: per group of stored pixels, both column phases into Ct.
  const bool pairs32 = eng.w32 && sw == 2 && g.W % 2 == 0 && shared_band && nph == 2 * sh;
  // The 32x3 engine with one phase or phase pairs (all phases Wb wide) works on pixel chunks of
  // the maxHa x Wb phase grid (see PixelChunks), the other cases on bands of phase rows.
  const int64_t Wb0 = phases.empty() ? 1 : phases[0].Wb;
  const PixelChunks pc = eng.w32 && (nph == 1 || pairs32)
                             ? pixel_chunks(maxHa, Wb0, BH, g.N * G, team_size(par))
                             : PixelChunks{};
  const bool chunks = pc.n > 0;
  const int64_t nb = chunks ? pc.n : balanced_bands(maxHa, BH, g.N * G, team_size(par));
  const int64_t items = g.N * G * nb;  // (image, group, band of phase rows or pixel chunk)
  RegionErrors errs;
#pragma omp parallel if (par)
  {
#pragma omp for schedule(static)
    for (int64_t q = 0; q < G * npart; ++q) errs.run([&] {  // (group, part)
      const int64_t gi = q / npart, part = q % npart;
      std::vector<PhasePack> pp;
      for (const Phase& P : phases)
        pp.push_back({P.rs.data(), static_cast<int64_t>(P.rs.size()),
                      A.data() + P.aoff + gi * Mpad * P.Kred});
      pack_taps(w + gi * Kg * Cg * RS, Cg, Kg, RS, pp, eng.mr, Mpad, part);
    });
    std::optional<GemmScratch> Sopt;  // (not made: errs has failed, the loop below is skipped)
    std::optional<Scratch> tmpopt;
    errs.run([&] {
      Sopt.emplace(bandmax, Mpad);
      tmpopt.emplace(kSlotTmp, use_tmp ? sh * sw * Mpad * tplane : 0);
    });
#pragma omp for schedule(dynamic, 1)
    for (int64_t it = 0; it < items; ++it) errs.run([&] {
      GemmScratch& S = *Sopt;
      const Scratch& tmp = *tmpopt;
      const int64_t bi = it % nb, gi = (it / nb) % G, n = it / (nb * G);
      // phase rows [i0, i1); the chunk's pixels [q0, q1) of the band (Wb0 per row)
      int64_t i0, i1, q0 = 0, q1 = -1;
      if (chunks) {
        i0 = pc.row0(bi), i1 = i0 + pc.rows(bi);
        q0 = pc.begin(bi) - i0 * Wb0, q1 = pc.begin(bi + 1) - i0 * Wb0;
        if (i1 - i0 > BH) throw std::logic_error("conv2d: pixel chunk overflows its band");
      } else {
        i0 = band_start(bi, nb, maxHa), i1 = band_start(bi + 1, nb, maxHa);
      }
      float* gxg = gx + (n * g.C + gi * Cg) * g.H * g.W;  // [Cg][H][W]
      const float* gyg = gy + (n * g.K + gi * Kg) * g.OH * g.OW;
      if (shared_band) {
        Source s = su;
        s.p = gyg;
        build_band(s, Lu, i0, i1 - i0, S.band.data());
      }
      if (pairs || pairs32) {
        // Column phases (a, 0) and (a, 1) computed block by block into two tiles T0, T1 (channel
        // m's pixels at T + m * tp), then interleaved into the gx rows. Blocks: groups of stored
        // pixels (32x3 engine: the chunk's pixels [q0, q1), row pitch Wb) or 24-pixel panels of
        // the band (direct engine: row pitch Vu, junk columns computed and not stored).
        const int64_t tp = pairs32 ? kGroup32 : kNR, step = tp;
        float* T0 = pairs32 ? S.Ct.data() : S.Cb.data();
        float* T1 = T0 + Mpad * tp;
        for (int64_t a = 0; a < sh; ++a) {
          const Phase& P0 = phases[2 * a];
          const Phase& P1 = phases[2 * a + 1];
          if (i0 >= P0.Ha) continue;
          GemmJob J0, J1;
          J0.L = &P0.L, J1.L = &P1.L;
          J0.A = A.data() + P0.aoff + gi * Mpad * P0.Kred;
          J1.A = A.data() + P1.aoff + gi * Mpad * P1.Kred;
          J0.M = J1.M = Cg, J0.Mpad = J1.Mpad = Mpad, J0.Kred = P0.Kred, J1.Kred = P1.Kred;
          const int64_t Wb = P0.Wb, rows = std::min(i1, P0.Ha) - i0, V = pairs32 ? Wb : Vu;
          const int64_t end = pairs32 && q1 >= 0 ? std::min(q1, rows * Wb) : rows * V;
          for (int64_t p0 = pairs32 ? q0 : 0; p0 < end; p0 += step) {
            const int64_t len = std::min(step, end - p0);
            if (pairs32) {
              group32(J0, S.band.data(), p0, len, S, kn, T0);
              group32(J1, S.band.data(), p0, len, S, kn, T1);
            } else {
              direct_panel(J0, S.band.data(), p0, len, T0, S.Bp.data(), kn);
              direct_panel(J1, S.band.data(), p0, len, T1, S.Bp.data(), kn);
            }
            for_each_run(V, Wb, p0, len, [&](int64_t t, int64_t i, int64_t j, int64_t valid) {
              for (int64_t m = 0; m < Cg; ++m)
                kn.interleave2(T0 + m * tp + t, T1 + m * tp + t,
                               gxg + (m * g.H + a + sh * (i0 + i)) * g.W + 2 * j, valid);
            });
          }
        }
        return;
      }
      for (const Phase& P : phases) {
        if (i0 >= P.Ha) continue;
        GemmJob J;
        J.src = P.s0;
        J.src.p = gyg;
        J.L = &P.L;
        J.A = A.data() + P.aoff + gi * Mpad * P.Kred;
        J.M = Cg, J.Mpad = Mpad, J.Kred = P.Kred, J.w32 = eng.w32;
        if (use_tmp) {
          J.dst = tmp.data() + (P.a * sw + P.b) * Mpad * tplane;
          J.dcs = tplane, J.dW = Wq, J.oy0 = -i0, J.ox0 = 0, J.osy = 1, J.osx = 1;
        } else {
          J.dst = gxg;
          J.dcs = g.H * g.W, J.dW = g.W, J.oy0 = P.a, J.ox0 = P.b, J.osy = sh, J.osx = sw;
        }
        gemm_rows(J, i0, std::min(i1, P.Ha) - i0, S, kn, shared_band ? S.band.data() : nullptr, q0,
                  q1);
      }
      if (!use_tmp) return;
      for (int64_t a = 0; a < sh; ++a) {
        const int64_t Ha = a < g.H ? ceil_div(g.H - a, sh) : 0;
        for (int64_t c = 0; c < Cg; ++c)
          for (int64_t t = 0; t < std::min(i1, Ha) - i0; ++t) {
            float* out = gxg + (c * g.H + a + sh * (i0 + t)) * g.W;  // one gx row
            const float* p0 = tmp.data() + ((a * sw) * Mpad + c) * tplane + t * Wq;
            if (sw == 2) {
              const float* p1 = p0 + Mpad * tplane;  // phase (a, 1)
              const int64_t n1 = g.W / 2;            // columns of phase b = 1
              kn.interleave2(p0, p1, out, n1);
              if (g.W % 2) out[g.W - 1] = p0[n1];
            } else {
              for (int64_t b = 0; b < sw; ++b)
                for (int64_t j = 0; b + j * sw < g.W; ++j)
                  out[b + j * sw] = p0[b * Mpad * tplane + j];
            }
          }
      }
    });
  }
  errs.rethrow();
}

}  // namespace st::cpu::conv2d_detail
