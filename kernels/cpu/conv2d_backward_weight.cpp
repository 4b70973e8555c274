// conv2d backward weight and bias gradient, float path (conv2d_internal.h; the design:
// conv2d.cpp).
#include "kernels/cpu/conv2d_internal.h"

#include <optional>

namespace st::cpu::conv2d_detail {

void backward_weight_f32(const ConvGeom& g, const float* gy, const float* x, float* gw) {
  const int64_t G = g.groups, Cg = g.C / G, Kg = g.K / G;
  const int64_t Kred = Cg * g.R * g.S, Mpad = round_up(Kg, kMR), K3 = round_up(Kred, 3);
  if (g.K * Kred == 0) return;
  if (g.N * g.OH * g.OW == 0) {
    std::fill_n(gw, g.K * Kred, 0.0f);
    return;
  }
  const double flops = 2.0 * g.N * g.K * Kred * g.OH * g.OW;
  const bool par = go_parallel(flops);
  const int nth = team_size(par);
  const std::vector<Tap> taps = all_taps(Cg, g.R, g.S);
  Source s0{nullptr, Cg, g.H, g.W, g.stride_h, g.stride_w, g.pad_h, g.pad_w};
  // Work items are (group, image, band, chunk of taps). Long bands keep the pixel reductions
  // long; when they are too few for the threads, the taps are split first (each chunk needs only
  // its own channels of the band), and only then the bands are made shorter.
  const int64_t extra = Mpad * (g.OW + g.S);  // gy band floats per row
  const int64_t want = kItemsPerThread * nth;
  const int64_t ntri = K3 / 3;
  Layout L = make_layout(s0, taps, g.OH, g.OW, extra, g.OH);
  // One image of one group that needs a few bands on several threads: if the whole of it fits
  // in kSharedBudget, take it as one band shared by all threads (below) rather than bands with
  // private accumulators (enc3.long3x3, 23 rows: two bands of 12 and 11 rows, whose
  // accumulators then took ~15% of the call to clear and add up).
  if (nth > 1 && G * g.N == 1 && L.BH < g.OH) {
    Layout Ls = make_layout(s0, taps, g.OH, g.OW, extra, g.OH, kSharedBudget);
    if (Ls.BH >= g.OH) L = std::move(Ls);
  }
  int64_t nchunk = 1;
  if (nth > 1 && G * g.N * ceil_div(g.OH, L.BH) < want) {
    nchunk = std::clamp<int64_t>(ceil_div(want, G * g.N * ceil_div(g.OH, L.BH)), 1,
                                 std::max<int64_t>(1, ntri / 8));
    const int64_t cap = band_cap(g.OH, G * g.N * nchunk, nth);
    if (cap < L.BH) L = make_layout(s0, taps, g.OH, g.OW, extra, cap);
  }
  const int64_t tri_per_chunk = ceil_div(ntri, nchunk);
  nchunk = ceil_div(ntri, tri_per_chunk);
  std::vector<int64_t> offs3(L.offs);  // taps padded to a multiple of 3 with harmless dummies
  offs3.resize(K3, L.offs[Kred - 1]);  // (the last tap's channel is in the last chunk)
  const int64_t gstride = round_up(L.BH * L.V, 8) + 8;  // row pitch of the flat gy band
  const Kernels& kn = convk::kernels();
  const int64_t nb = balanced_bands(g.OH, L.BH, G * g.N * nchunk, nth);
  const int64_t items = G * g.N * nb * nchunk;  // (group, image, band, tap chunk)
  // One (group, image, band) split into tap chunks (a small image on several threads): the band
  // and the flat gy copy are built once, by all threads together, and shared by the chunks
  // (each chunk copying them for itself had made two threads barely faster than one), and as
  // every chunk owns its taps, it sums them in its own small accumulator and writes them to gw
  // (no per-thread accumulators for all of gw to clear and add up: that had cost ~20% here).
  const bool shared = G * g.N * nb == 1 && nchunk > 1;
  const int64_t tc = tri_per_chunk * 3;                   // taps of a chunk (shared: [Mpad][tc])
  const int64_t accn = shared ? 0 : G * Mpad * K3;        // per-thread accumulator [G][Mpad][K3]
  // (buffers kept per thread between calls, see Scratch: a per-call allocation here had been
  // followed by ~170 us from the last item to the end of the parallel region on 2 threads)
  Scratch acc(kSlotAcc, 2 * static_cast<size_t>(nth) * accn);
  std::memset(acc.data(), 0, sizeof(double) * nth * accn);
  Scratch band_sh(kSlotBand, shared ? L.buf_floats : 0);
  Scratch gyv_sh(kSlotGy, shared ? Mpad * gstride : 0);
  // gy rows [m0, m1) of band bi into the flat layout (zeros in the junk columns)
  auto copy_gy = [&](const float* gyn, int64_t i0, int64_t bh, int64_t m0, int64_t m1,
                     float* dst) {
    for (int64_t m = m0; m < m1; ++m) {
      float* d = dst + m * gstride;
      for (int64_t t = 0; t < bh; ++t) {
        std::memcpy(d + t * L.V, gyn + (m * g.OH + i0 + t) * g.OW, sizeof(float) * g.OW);
        if (L.V > g.OW) std::memset(d + t * L.V + g.OW, 0, sizeof(float) * (L.V - g.OW));
      }
    }
  };
  RegionErrors errs;
#pragma omp parallel if (par)
  {
    const int tid = std::min(omp_get_thread_num(), nth - 1);
    double* my = acc.data_d() + static_cast<size_t>(tid) * accn;
    // (not made: errs has failed, the item loop below is skipped)
    std::optional<Scratch> bandopt, gyvopt, locopt;
    errs.run([&] {
      bandopt.emplace(kSlotBand, shared ? 0 : L.buf_floats);
      gyvopt.emplace(kSlotGy, shared ? 0 : Mpad * gstride);  // [Mpad][gstride]: flat gy rows
      locopt.emplace(kSlotLoc, shared ? 2 * Mpad * tc : 0);  // shared: this chunk's sums [Mpad][tc]
    });
    float out[12];
    if (shared) {
      Source s = s0;
      s.p = x;
#pragma omp for schedule(static) nowait
      for (int64_t c = 0; c < (L.zero_copy ? 0 : Cg); ++c)
        errs.run([&] { build_band(s, L, 0, g.OH, band_sh.data(), c, c + 1); });
#pragma omp for schedule(static)
      for (int64_t m = 0; m < Kg; ++m)
        errs.run([&] { copy_gy(gy, 0, g.OH, m, m + 1, gyv_sh.data()); });
    }
#pragma omp for schedule(dynamic, 1)
    for (int64_t it = 0; it < items; ++it) errs.run([&] {
      const Scratch& band = *bandopt;
      const Scratch& gyv = *gyvopt;
      const Scratch& loc = *locopt;
      const int64_t ch = it % nchunk, bi = (it / nchunk) % nb;
      const int64_t n = (it / (nchunk * nb)) % g.N, gi = it / (nchunk * nb * g.N);
      const int64_t t0 = ch * tri_per_chunk * 3, t1 = std::min(K3, t0 + tri_per_chunk * 3);
      Source s = s0;
      s.p = x + (n * g.C + gi * Cg) * g.H * g.W;
      const float* gyn = gy + (n * g.K + gi * Kg) * g.OH * g.OW;  // [Kg][OH][OW]
      const int64_t i0 = band_start(bi, nb, g.OH), bh = band_start(bi + 1, nb, g.OH) - i0;
      const float* bandp = L.zero_copy ? s.p + i0 * g.W : shared ? band_sh.data() : band.data();
      const float* gyp = shared ? gyv_sh.data() : gyv.data();
      if (!shared) {
        if (!L.zero_copy)  // channels of this chunk's taps
          build_band(s, L, i0, bh, band.data(), taps[t0].c, taps[std::min(t1, Kred) - 1].c + 1);
        copy_gy(gyn, i0, bh, 0, Kg, gyv.data());
      }
      // sums of tap tt (of this chunk) for row m: accg[m * ars + tt + acol]
      double* accg = shared ? loc.data_d() : my + gi * Mpad * K3;
      const int64_t ars = shared ? tc : K3, acol = shared ? -t0 : 0;
      if (shared) std::fill_n(loc.data_d(), Mpad * tc, 0.0);
      const int64_t nflat = bh * L.V;
      for (int64_t fs = 0; fs < nflat; fs += kDotChunk) {
        const int64_t len = std::min(kDotChunk, nflat - fs);
        for (int64_t mb = 0; mb < Mpad / kMR; ++mb) {
          const float* a = gyp + mb * kMR * gstride + fs;
          double* accm = accg + mb * kMR * ars + acol;
          const float* b = bandp + fs;
          for (int64_t tt = t0; tt < t1; tt += 3) {
            kn.dot(len, a, gstride, b + offs3[tt], b + offs3[tt + 1], b + offs3[tt + 2], out);
            for (int j = 0; j < 3; ++j)
              for (int i = 0; i < kMR; ++i) accm[i * ars + tt + j] += out[j * kMR + i];
          }
        }
      }
      if (shared)  // this chunk's taps of gw (one group, one image)
        for (int64_t m = 0; m < Kg; ++m)
          for (int64_t kk = t0; kk < std::min(t1, Kred); ++kk)
            gw[m * Kred + kk] = static_cast<float>(loc.data_d()[m * tc + kk - t0]);
    });
    // Sum the per-thread accumulators into gw (the loop above ended with a barrier).
    if (!shared) {
#pragma omp for schedule(static)
      for (int64_t q = 0; q < g.K * Kred; ++q) errs.run([&] {
        const int64_t k = q / Kred, kk = q % Kred, gi = k / Kg, m = k % Kg;
        double sum = 0.0;
        for (int t = 0; t < nth; ++t) sum += acc.data_d()[t * accn + (gi * Mpad + m) * K3 + kk];
        gw[q] = static_cast<float>(sum);
      });
    }
  }
  errs.rethrow();
}

void backward_bias_f32(const ConvGeom& g, const float* gy, float* gb) {
  const int64_t P = g.OH * g.OW;
  const bool par = go_parallel(static_cast<double>(g.N) * g.K * P * 8);
#pragma omp parallel for schedule(static) if (par)
  for (int64_t k = 0; k < g.K; ++k) {
    double total = 0.0;
    for (int64_t n = 0; n < g.N; ++n) {
      const float* p = gy + (n * g.K + k) * P;
      float part[16] = {};
      int64_t i = 0;
      for (; i + 16 <= P; i += 16)
        for (int q = 0; q < 16; ++q) part[q] += p[i + q];
      double s = 0.0;
      for (int q = 0; q < 16; ++q) s += part[q];
      for (; i < P; ++i) s += p[i];
      total += s;
    }
    gb[k] = static_cast<float>(total);
  }
}

}  // namespace st::cpu::conv2d_detail
