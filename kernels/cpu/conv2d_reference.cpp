// The double-precision reference convolutions: direct loops over the definition, for the
// finite-difference tests on tiny shapes (conv2d_internal.h).
#include "kernels/cpu/conv2d_internal.h"

namespace st::cpu::conv2d_detail {
namespace {

// Calls term(yi, xi, wi) for every product x[xi] * w[wi] that output y[yi] sums, in the order
// (n, k, oh, ow) of the outputs and (c, r, s) within one output (flat NCHW / KCRS indices).
template <class Term>
void for_each_term(const ConvGeom& g, Term term) {
  const int64_t Cg = g.C / g.groups, Kg = g.K / g.groups;
  for (int64_t n = 0; n < g.N; ++n)
    for (int64_t k = 0; k < g.K; ++k) {
      const int64_t gi = k / Kg;
      for (int64_t oh = 0; oh < g.OH; ++oh)
        for (int64_t ow = 0; ow < g.OW; ++ow) {
          const int64_t yi = ((n * g.K + k) * g.OH + oh) * g.OW + ow;
          for (int64_t c = 0; c < Cg; ++c)
            for (int64_t r = 0; r < g.R; ++r) {
              const int64_t ih = oh * g.stride_h - g.pad_h + r;
              if (ih < 0 || ih >= g.H) continue;
              for (int64_t q = 0; q < g.S; ++q) {
                const int64_t iw = ow * g.stride_w - g.pad_w + q;
                if (iw < 0 || iw >= g.W) continue;
                term(yi, ((n * g.C + gi * Cg + c) * g.H + ih) * g.W + iw,
                     ((k * Cg + c) * g.R + r) * g.S + q);
              }
            }
        }
    }
}

}  // namespace

void forward_ref(const ConvGeom& g, const double* x, const double* w, const double* bias,
                 double* y) {
  for (int64_t i = 0; i < g.N * g.K * g.OH * g.OW; ++i)
    y[i] = bias ? bias[i / (g.OH * g.OW) % g.K] : 0.0;
  for_each_term(g, [&](int64_t yi, int64_t xi, int64_t wi) { y[yi] += x[xi] * w[wi]; });
}

void backward_data_ref(const ConvGeom& g, const double* gy, const double* w, double* gx) {
  std::fill_n(gx, g.N * g.C * g.H * g.W, 0.0);
  for_each_term(g, [&](int64_t yi, int64_t xi, int64_t wi) { gx[xi] += gy[yi] * w[wi]; });
}

void backward_weight_ref(const ConvGeom& g, const double* gy, const double* x, double* gw) {
  std::fill_n(gw, g.K * (g.C / g.groups) * g.R * g.S, 0.0);
  for_each_term(g, [&](int64_t yi, int64_t xi, int64_t wi) { gw[wi] += gy[yi] * x[xi]; });
}

void backward_bias_ref(const ConvGeom& g, const double* gy, double* gb) {
  const int64_t P = g.OH * g.OW;
  for (int64_t k = 0; k < g.K; ++k) {
    double s = 0.0;
    for (int64_t n = 0; n < g.N; ++n)
      for (int64_t i = 0; i < P; ++i) s += gy[(n * g.K + k) * P + i];
    gb[k] = s;
  }
}

}  // namespace st::cpu::conv2d_detail
