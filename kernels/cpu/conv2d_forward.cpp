// conv2d forward, float path (conv2d_internal.h; the design: conv2d.cpp).
#include "kernels/cpu/conv2d_internal.h"

#include <optional>
#include <stdexcept>

namespace st::cpu::conv2d_detail {

// ------------------------------------------------------------------ float entry points
void forward_f32(const ConvGeom& g, const float* x, const float* w, const float* bias, float* y) {
  const int64_t G = g.groups, Cg = g.C / G, Kg = g.K / G;
  const int64_t Kred = Cg * g.R * g.S;
  const Engine eng = choose_engine(Kg, Kred, g.R * g.S == 1);
  const int64_t Mpad = eng.Mpad;
  if (g.N * g.K * g.OH * g.OW == 0) return;
  if (Kred == 0) {  // empty reduction: y = bias
    for (int64_t n = 0; n < g.N; ++n)
      for (int64_t k = 0; k < g.K; ++k)
        std::fill_n(y + (n * g.K + k) * g.OH * g.OW, g.OH * g.OW, bias ? bias[k] : 0.0f);
    return;
  }
  const double flops = 2.0 * g.N * g.K * Kred * g.OH * g.OW;
  const bool par = go_parallel(flops);
  const std::vector<Tap> taps = all_taps(Cg, g.R, g.S);
  Source s0{nullptr, Cg, g.H, g.W, g.stride_h, g.stride_w, g.pad_h, g.pad_w};
  // The 32x3 engine's items are pixel chunks (one row more than their share of rows each).
  const int64_t cap = band_cap(g.OH, g.N * G, team_size(par));
  Layout L = make_layout(s0, taps, g.OH, g.OW, 0,
                         eng.w32 ? chunk_rows_hint(g.OH, g.N * G, team_size(par)) : cap);
  Scratch A(kSlotA, G * Mpad * Kred);  // packed weights, per group [Mpad/mr][Kred][mr]
  const int64_t nmbA = Mpad / eng.mr;
  const Kernels& kn = convk::kernels();
  const PixelChunks pc =
      eng.w32 ? pixel_chunks(g.OH, g.OW, L.BH, g.N * G, team_size(par)) : PixelChunks{};
  const bool chunks = pc.n > 0;
  // Whole-row chunks need no spare row: the band then has the rows' own height (with the spare
  // row's longer plane strides enc1.long3x3 forward measured 1-5% slower).
  if (pc.rows_each > 0 && pc.rows_each < L.BH)
    L = make_layout(s0, taps, g.OH, g.OW, 0, pc.rows_each);
  const int64_t nb = chunks ? pc.n : balanced_bands(g.OH, L.BH, g.N * G, team_size(par));
  const int64_t items = g.N * G * nb;  // (image, group, band or chunk)
  RegionErrors errs;
#pragma omp parallel if (par)
  {
    const int64_t npart = pack_pieces(Kred);
#pragma omp for schedule(static)
    for (int64_t q = 0; q < G * nmbA * npart; ++q) {  // (group, row block, part)
      const int64_t gi = q / (nmbA * npart), mb = q / npart % nmbA, part = q % npart;
      errs.run([&] {
        pack_rows(w + gi * Kg * Kred, Kg, eng.mr, Kred, A.data() + gi * Mpad * Kred, mb, part, kn);
      });
    }
    std::optional<GemmScratch> Sopt;  // (not made: errs has failed, the loop below is skipped)
    errs.run([&] { Sopt.emplace(L.buf_floats, Mpad); });
#pragma omp for schedule(dynamic, 1)
    for (int64_t it = 0; it < items; ++it) errs.run([&] {
      GemmScratch& S = *Sopt;
      const int64_t bi = it % nb, gi = (it / nb) % G, n = it / (nb * G);
      GemmJob J;
      J.src = s0;
      J.src.p = x + (n * g.C + gi * Cg) * g.H * g.W;
      J.L = &L;
      J.A = A.data() + gi * Mpad * Kred;
      J.M = Kg, J.Mpad = Mpad, J.Kred = Kred, J.w32 = eng.w32;
      J.dst = y + (n * g.K + gi * Kg) * g.OH * g.OW;
      J.dcs = g.OH * g.OW, J.dW = g.OW;
      J.bias = bias ? bias + gi * Kg : nullptr;
      if (chunks) {
        const int64_t i0 = pc.row0(bi), q0 = pc.begin(bi) - i0 * g.OW;
        if (pc.rows(bi) > L.BH) throw std::logic_error("conv2d: pixel chunk overflows its band");
        gemm_rows(J, i0, pc.rows(bi), S, kn, nullptr, q0, pc.begin(bi + 1) - i0 * g.OW);
        return;
      }
      const int64_t i0 = band_start(bi, nb, g.OH);
      gemm_rows(J, i0, band_start(bi + 1, nb, g.OH) - i0, S, kn);
    });
  }
  errs.rethrow();
}

}  // namespace st::cpu::conv2d_detail
