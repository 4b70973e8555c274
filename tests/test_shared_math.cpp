// The per-element math that the CPU and CUDA backends share (kernels/common/roi_align.h,
// detect_math.h, resample.h) must give the same bits on every host: it follows the reference
// implementations' float operation order, and the device evaluates it with every product and sum
// rounded on its own. A compiler that fuses a multiply and an add into one FMA (GCC does so by
// default wherever the target has FMA, e.g. every aarch64 build) would round differently, so the
// library's files that include these headers are compiled with -ffp-contract=off
// (CMakeLists.txt: ST_SHARED_MATH_SOURCES), and so is this file. Here the library's results must
// equal, bit for bit, the same headers evaluated in this file; and the inputs are such that a
// fused evaluation of the coordinates differs, so a fused library build fails these tests.
#include <cmath>
#include <cstring>
#include <random>

#include "kernels/common/detect_math.h"
#include "kernels/common/resample.h"
#include "kernels/common/roi_align.h"
#include "teacher_port/detect_ops.h"
#include "teacher_port/glue.h"
#include "test_util.h"

using namespace st;

namespace {

std::vector<uint32_t> bits(const std::vector<float>& v) {
  std::vector<uint32_t> b(v.size());
  std::memcpy(b.data(), v.data(), v.size() * sizeof(float));
  return b;
}

// ROIAlign rows (batch, x0, y0, x1, y1) with coordinates that are not short binary fractions, so
// that products and sums of the sample coordinates round.
std::vector<float> random_rois(int64_t R, float W, float H, uint32_t seed) {
  std::mt19937 g(seed);
  std::uniform_real_distribution<float> u(0.0f, 1.0f);
  std::vector<float> r;
  for (int64_t i = 0; i < R; ++i) {
    const float x0 = u(g) * (W - 4), y0 = u(g) * (H - 4);
    const float x1 = x0 + 1.3f + u(g) * (W - x0 - 1.3f), y1 = y0 + 1.3f + u(g) * (H - y0 - 1.3f);
    r.insert(r.end(), {0.0f, x0, y0, x1, y1});
  }
  return r;
}

}  // namespace

// The comparisons below evaluate the shared headers in this file, so this file must itself be
// compiled without contraction (it is in ST_SHARED_MATH_SOURCES with the library's files): a
// contracted a * b + c would be one FMA here.
TEST_CASE("shared math: this file is compiled without floating-point contraction", "[portable]") {
  volatile float va = 1.0f + 0x1p-12f, vb = 1.0f + 0x1p-12f, vc = -(1.0f + 0x1p-11f);
  const float a = va, b = vb, c = vc;
  const float plain = a * b + c;  // a * b rounds to 1 + 2^-11 (a tie, to even): 0
  INFO("a * b + c = " << plain << ", fma(a, b, c) = " << std::fma(a, b, c));
  REQUIRE(std::fma(a, b, c) == 0x1p-24f);
  REQUIRE(plain == 0.0f);
}

TEST_CASE("shared math: ROIAlign on the CPU equals the shared header evaluated without FMA",
          "[portable][teacher]") {
  const int64_t C = 3, H = 23, W = 37, R = 64;
  Tensor x = Tensor::randn({1, C, H, W}, 41);
  const auto xv = x.to_vector<float>();
  const float scale = 0.25f;  // rois in "image" pixels, 4x the map
  const auto rv = random_rois(R, float(W) * 4, float(H) * 4, 7);
  Tensor rois = Tensor::from_vector(rv, {R, 5});
  int64_t fused_differs = 0;
  for (bool aligned : {false, true})
    for (int64_t sr : {0, 2}) {
      INFO("aligned " << aligned << ", sampling ratio " << sr);
      const int64_t P = 7;
      const auto got = teacher::roi_align(x, rois, P, P, scale, sr, aligned).to_vector<float>();
      std::vector<float> want(got.size());
      for (int64_t r = 0; r < R; ++r) {
        const RoiGeom<float> geom = roi_geom<float>(&rv[size_t(r * 5 + 1)], scale, P, P, sr, aligned);
        for (int64_t c = 0; c < C; ++c)
          for (int64_t ph = 0; ph < P; ++ph)
            for (int64_t pw = 0; pw < P; ++pw)
              want[size_t(((r * C + c) * P + ph) * P + pw)] =
                  roi_align_value<float>(xv.data() + c * H * W, H, W, geom, ph, pw);
        // What a fused build would compute for the first sample's x coordinate of each bin.
        for (int64_t pw = 0; pw < P; ++pw) {
          const float step = 0.5f * geom.bin_w / float(std::max<int64_t>(geom.grid_w, 1));
          const float plain = geom.x0 + float(pw) * geom.bin_w + step;
          const float fused = std::fma(float(pw), geom.bin_w, geom.x0) + step;
          fused_differs += plain != fused;
        }
      }
      REQUIRE(bits(got) == bits(want));
    }
  // The test can see a fused build: for these rois, fusing the coordinate's multiply-add changes
  // some coordinates (and so the interpolation weights).
  INFO(fused_differs << " bin coordinates change when fused");
  REQUIRE(fused_differs > 0);
}

TEST_CASE("shared math: bilinear resize on the CPU equals the shared taps evaluated without FMA",
          "[portable]") {
  const int64_t C = 2, H = 13, W = 17, OH = 31, OW = 45;
  Tensor x = Tensor::randn({1, C, H, W}, 5);
  const auto xv = x.to_vector<float>();
  const auto got = resize_bilinear(x, OH, OW).to_vector<float>();
  std::vector<float> want(got.size());
  int64_t fused_differs = 0;
  for (int64_t oy = 0; oy < OH; ++oy) {
    const BilinearTap ty = bilinear_tap(oy, H, OH, true);
    for (int64_t ox = 0; ox < OW; ++ox) {
      const BilinearTap tx = bilinear_tap(ox, W, OW, true);
      for (int64_t c = 0; c < C; ++c) {
        const float* p = xv.data() + c * H * W;
        const float v = float(ty.l0) * (float(tx.l0) * p[ty.i0 * W + tx.i0] + float(tx.l1) * p[ty.i0 * W + tx.i1]) +
                        float(ty.l1) * (float(tx.l0) * p[ty.i1 * W + tx.i0] + float(tx.l1) * p[ty.i1 * W + tx.i1]);
        want[size_t((c * OH + oy) * OW + ox)] = v;
        // The same value as a compiler that fuses would compute it.
        const float l0 = std::fma(float(tx.l0), p[ty.i0 * W + tx.i0], float(tx.l1) * p[ty.i0 * W + tx.i1]);
        const float l1 = std::fma(float(tx.l0), p[ty.i1 * W + tx.i0], float(tx.l1) * p[ty.i1 * W + tx.i1]);
        fused_differs += std::fma(float(ty.l0), l0, float(ty.l1) * l1) != v;
      }
    }
  }
  // The kernel (kernels/cpu/image.cpp) sums in this order too (torch's).
  REQUIRE(bits(got) == bits(want));
  INFO(fused_differs << " values change when fused");
  REQUIRE(fused_differs > 0);
}

TEST_CASE("shared math: both mask pastes on the CPU equal the shared header evaluated without FMA",
          "[portable][teacher]") {
  const int64_t M = 28, D = 12, H = 61, W = 83;
  std::mt19937 g(3);
  std::uniform_real_distribution<float> u(0.0f, 1.0f);
  std::vector<float> masks(size_t(D * M * M)), boxes;
  for (auto& v : masks) v = u(g);
  for (int64_t d = 0; d < D; ++d) {
    const float x0 = u(g) * (W - 10), y0 = u(g) * (H - 10);
    boxes.insert(boxes.end(), {x0, y0, x0 + 3.7f + u(g) * (W - x0 - 3.7f), y0 + 3.7f + u(g) * (H - y0 - 3.7f)});
  }
  Tensor mt = Tensor::from_vector(masks, {D, M, M}), bt = Tensor::from_vector(boxes, {D, 4});
  for (auto conv : {teacher::Convention::Detectron2, teacher::Convention::Torchvision}) {
    const auto got = teacher::paste_masks(mt, bt, H, W, conv).to_vector<uint8_t>();
    std::vector<uint8_t> want(size_t(D * H * W), 0);
    for (int64_t d = 0; d < D; ++d) {
      if (conv == teacher::Convention::Detectron2)
        detect::paste_d2_into(&masks[size_t(d * M * M)], M, &boxes[size_t(d * 4)], H, W, &want[size_t(d * H * W)], 0.5f);
      else
        detect::paste_tv_into(&masks[size_t(d * M * M)], M, &boxes[size_t(d * 4)], H, W, &want[size_t(d * H * W)], 0.5f);
    }
    REQUIRE(got == want);
  }
}
