// Band layouts, work items (bands, pixel chunks), band building and per-thread scratch of the
// float convolutions (conv2d_internal.h; the design: conv2d.cpp).
#include "kernels/cpu/conv2d_internal.h"

namespace st::cpu::conv2d_detail {

Layout make_layout(const Source& s, const std::vector<Tap>& taps, int64_t OH, int64_t OW,
                   int64_t extra_per_row, int64_t max_bh, int64_t budget) {
  Layout L;
  L.OH = OH;
  L.OW = OW;
  max_bh = std::clamp<int64_t>(max_bh, 1, std::max<int64_t>(OH, 1));
  int64_t maxr = 0, maxs = 0;
  for (const Tap& t : taps) maxr = std::max(maxr, t.r), maxs = std::max(maxs, t.s);
  std::vector<int> plane_of(static_cast<size_t>(s.sy * s.sx), -1);
  for (const Tap& t : taps) {
    const int ab = static_cast<int>((t.r % s.sy) * s.sx + t.s % s.sx);
    if (plane_of[ab] < 0) {
      plane_of[ab] = static_cast<int>(L.plane_ab.size());
      L.plane_ab.push_back(ab);
    }
  }
  L.nplanes = static_cast<int64_t>(L.plane_ab.size());
  L.zero_copy = !taps.empty() && s.sy == 1 && s.sx == 1 && s.py == 0 && s.px == 0 && maxr == 0 &&
                maxs == 0 && OW == s.W && OH <= s.H;
  L.offs.resize(taps.size());
  if (L.zero_copy) {
    L.V = s.W;
    L.halo = 0;
    L.BH = extra_per_row > 0 ? std::clamp<int64_t>(budget / extra_per_row, 1, max_bh) : max_bh;
    L.chan_stride = s.H * s.W;
    for (size_t k = 0; k < taps.size(); ++k) L.offs[k] = taps[k].c * L.chan_stride;
    L.buf_floats = 0;
    return L;
  }
  L.V = OW + maxs / s.sx;
  L.halo = maxr / s.sy;
  const int64_t row = s.C * L.nplanes * L.V;  // band floats per plane row
  const int64_t per_row = row + extra_per_row;
  L.BH =
      std::clamp<int64_t>((budget - L.halo * row) / std::max<int64_t>(per_row, 1), 1, max_bh);
  L.tail = L.V - OW;
  L.plane_stride = (L.BH + L.halo) * L.V + L.tail;
  L.chan_stride = L.nplanes * L.plane_stride;
  for (size_t k = 0; k < taps.size(); ++k) {
    const Tap& t = taps[k];
    const int ab = static_cast<int>((t.r % s.sy) * s.sx + t.s % s.sx);
    L.offs[k] =
        t.c * L.chan_stride + plane_of[ab] * L.plane_stride + (t.r / s.sy) * L.V + t.s / s.sx;
  }
  L.buf_floats = s.C * L.chan_stride + kSlack;
  return L;
}


// Band height cap giving about kItemsPerThread work items per thread when the call is parallel.
int64_t band_cap(int64_t OH, int64_t other_items, int nth) {
  if (nth <= 1) return OH;
  const int64_t bands = ceil_div(kItemsPerThread * nth, std::max<int64_t>(other_items, 1));
  return std::max<int64_t>(1, ceil_div(OH, bands));
}

// Bands over OH rows, each at most bh_max rows: when parallel, their number times other_items is
// made a multiple of the thread count and the rows are split evenly (band bi is rows
// [band_start(bi), band_start(bi + 1)), heights differing by at most one), so that no thread is
// left with an extra band at the end (7 bands of 14 rows on 2 threads had idled one 1/8 of
// the time).
int64_t balanced_bands(int64_t OH, int64_t bh_max, int64_t other_items, int nth) {
  if (OH <= 0) return 0;
  int64_t nb = ceil_div(OH, bh_max);
  if (nth > 1)
    for (int64_t n = nb; n <= std::min(OH, nb + nth); ++n)
      if (n * other_items % nth == 0) return n;
  return nb;
}

int64_t chunk_rows_hint(int64_t OH, int64_t other_items, int nth) {
  if (nth <= 1) return OH;
  if (other_items > 1) return band_cap(OH, other_items, nth) + 1;
  const int64_t n = kItemsPerThread * nth;  // weights: 2 (n - nth chunks), 1 (nth chunks)
  return ceil_div(2 * OH, 2 * n - nth) + 2;
}
// The chunk count: at least kItemsPerThread per thread (with other_items items of other kinds),
// if possible a multiple of the thread count, and no chunk touching more than BH rows (a run of
// at most (BH - 1) * OW + 1 pixels touches at most BH rows). n = 0: no valid split (BH too small
// for a 3-pixel tile); the caller uses bands of rows.
PixelChunks pixel_chunks(int64_t OH, int64_t OW, int64_t BH, int64_t other_items, int nth) {
  PixelChunks c;
  c.npix = OH * OW, c.OW = OW;
  const int64_t tiles = ceil_div(c.npix, 3), max_tiles = ((BH - 1) * OW + 1) / 3;
  if (tiles == 0 || max_tiles < 1) return c;
  if (nth > 1 && other_items == 1) {  // one image: big chunks, then nth half-size ones
    for (int64_t n = kItemsPerThread * nth; n <= tiles && n < 64 * nth; n += nth)
      if (ceil_div(2 * tiles, 2 * n - nth) + 1 <= max_tiles) {
        c.n = n, c.tail = nth;
        return c;
      }
  }
  const int64_t min_n = std::max(ceil_div(tiles, max_tiles),
                                 nth > 1 ? ceil_div(kItemsPerThread * nth, other_items) : 1);
  c.n = std::min(min_n, tiles);
  if (nth > 1)
    for (int64_t n = c.n; n <= std::min(tiles, c.n + nth); ++n)
      if (n * other_items % nth == 0) {
        c.n = n;
        break;
      }
  if (OH % c.n == 0 && OH / c.n <= BH) c.rows_each = OH / c.n;
  return c;
}

// Fill a (thread-private) band buffer for output rows [i0, i0 + bh).

void build_band(const Source& s, const Layout& L, int64_t i0, int64_t bh, float* buf,
                int64_t c0, int64_t c1) {
  const convk::Gather2Fn gather2 = convk::kernels().gather2;
  const int64_t rows = bh + L.halo;
  const int64_t V = L.V;
  if (c1 < 0) c1 = s.C;
  for (int64_t c = c0; c < c1; ++c)
    for (int64_t pl = 0; pl < L.nplanes; ++pl) {
      const int64_t a = L.plane_ab[pl] / s.sx;
      const int64_t b = L.plane_ab[pl] % s.sx;
      // valid j: 0 <= j*sx + off <= W-1
      const int64_t off = b - s.px;
      const int64_t jlo = std::clamp<int64_t>(-floor_div(off, s.sx), 0, V);
      const int64_t jhi = std::clamp<int64_t>(floor_div(s.W - 1 - off, s.sx) + 1, jlo, V);
      for (int64_t t = 0; t < rows; ++t) {
        float* d = buf + c * L.chan_stride + pl * L.plane_stride + t * V;  // one plane row (V)
        const int64_t hs = (i0 + t) * s.sy + a - s.py;
        if (hs < 0 || hs >= s.H || jhi <= jlo) {
          std::memset(d, 0, sizeof(float) * V);
          continue;
        }
        const float* sp = s.p + c * s.H * s.W + hs * s.W + off;  // sp[j*sx] = src column
        if (jlo > 0) std::memset(d, 0, sizeof(float) * jlo);
        if (s.sx == 1) {
          std::memcpy(d + jlo, sp + jlo, sizeof(float) * (jhi - jlo));
        } else if (s.sx == 2) {
          gather2(sp + 2 * jlo, d + jlo, jhi - jlo);
        } else {
          for (int64_t j = jlo; j < jhi; ++j) d[j] = sp[j * s.sx];
        }
        if (jhi < V) std::memset(d + jhi, 0, sizeof(float) * (V - jhi));
      }
      if (L.tail > 0)
        std::memset(buf + c * L.chan_stride + pl * L.plane_stride + rows * V, 0,
                    sizeof(float) * L.tail);
    }
}

// (conv2d_internal.h describes the buffers.)
Scratch::Scratch(ScratchSlot slot, size_t n) {
  if (g_fail_scratch.load(std::memory_order_relaxed) > 0 && omp_get_level() > 0 &&
      g_fail_scratch.fetch_sub(1) > 0)
    throw std::bad_alloc();  // test hook: as if the allocation had failed
  if (n > kScratchKeep) {
    own_.alloc(n, true);
    p_ = own_.data();
    return;
  }
  thread_local ABuf<float> pool[kNumSlots];
  thread_local size_t cap[kNumSlots] = {};
  if (cap[slot] < n || !pool[slot].data()) {
    pool[slot].alloc(n, true);
    cap[slot] = n;
  }
  p_ = pool[slot].data();
}

}  // namespace st::cpu::conv2d_detail
