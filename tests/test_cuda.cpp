// CPU-vs-CUDA parity for every op, forward and backward, over odd and non-contiguous shapes;
// the student's forward and one partial distillation step end to end; partial backward on the
// GPU; the caching allocator. Without a GPU (or in a build without the CUDA backend) every test
// here is reported as skipped.
//
// Tolerances: the CUDA kernels follow the CPU reference's formulas in the same precision, but
// with other summation orders (parallel reductions, cuDNN's algorithms, atomics) and fused
// multiply-adds, so f32 results differ by rounding: relative 1e-4 for element-wise ops and
// reductions, 1e-3 (absolute, on O(1) values) for convolutions and everything downstream of
// them. TF32 is turned off here (ST_CUDA_TF32=0) so cuDNN computes in full f32; f64 matches to
// 1e-10.
#include <cstdlib>

#include "nn/blob.h"
#include "nn/distill.h"
#include "nn/student.h"
#include "teacher_port/backbone.h"
#include "teacher_port/detect_ops.h"
#include "teacher_port/glue.h"
#include "teacher_port/maskrcnn.h"
#include "teacher_port/random_weights.h"
#include "test_util.h"

using namespace st;
using Catch::Matchers::Contains;

namespace {

const Device kGpu = Device::cuda(0);

bool have_gpu() {
  static const bool b = [] {
    ::setenv("ST_CUDA_TF32", "0", 1);  // before the first convolution of this process
    return device_available(DeviceType::CUDA);
  }();
  return b;
}

#define REQUIRE_GPU()                                                                  \
  do {                                                                                 \
    if (!have_gpu()) ST_SKIP("no usable CUDA GPU (or a build without the CUDA backend)"); \
  } while (0)

Tensor gpu(const Tensor& t) { return t.to(kGpu); }
Tensor cpu(const Tensor& t) { return t.to(Device::cpu()); }

// A leaf on each device with the same values, both requiring grad.
struct Pair {
  Tensor c, g;
};
Pair leaf(const Shape& s, uint64_t seed, double scale = 1.0, DType dt = DType::F32) {
  Tensor base = Tensor::randn(s, seed, dt) * scale;
  Pair p{base.detach().clone(), gpu(base.detach())};
  p.c.set_requires_grad(true);
  p.g.set_requires_grad(true);
  return p;
}

// Runs f on both devices, compares the outputs and the gradients of sum(f * r).
void parity(const std::function<Tensor(const std::vector<Tensor>&)>& f, std::vector<Pair> in,
            double atol, double rtol) {
  std::vector<Tensor> xc, xg;
  for (auto& p : in) xc.push_back(p.c), xg.push_back(p.g);
  Tensor yc = f(xc), yg = f(xg);
  REQUIRE(yg.device() == kGpu);
  ST_REQUIRE_CLOSE(cpu(yg), yc, atol, rtol);
  if (!yc.requires_grad()) return;
  Tensor r = Tensor::randn(yc.shape(), 99, yc.dtype());
  sum(mul(yc, r)).backward();
  sum(mul(yg, gpu(r))).backward();
  for (size_t k = 0; k < in.size(); ++k) {
    if (!in[k].c.requires_grad()) continue;
    INFO("gradient of input " << k);
    REQUIRE(in[k].g.grad().defined());
    ST_REQUIRE_CLOSE(cpu(in[k].g.grad()), in[k].c.grad(), atol, rtol);
  }
}

}  // namespace

TEST_CASE("cuda: memory, copies, dtype conversion, non-contiguous views", "[cuda]") {
  REQUIRE_GPU();
  for (DType dt : {DType::F32, DType::F64, DType::F16, DType::U8, DType::I32, DType::I64}) {
    Tensor a = (Tensor::uniform({3, 5, 7}, 0, 100, 1)).to(dt);
    Tensor back = cpu(gpu(a));
    REQUIRE(back.dtype() == dt);
    REQUIRE(back.to_vector<double>() == a.to_vector<double>());
  }
  Tensor a = Tensor::randn({4, 6, 5}, 2);
  Tensor g = gpu(a);
  // Views on the GPU: transpose, slice with a step, then a device-side contiguous copy.
  Tensor v = g.transpose(0, 2).slice(1, 1, 6, 2).contiguous();
  ST_REQUIRE_CLOSE(cpu(v), a.transpose(0, 2).slice(1, 1, 6, 2).contiguous(), 0, 0);
  // Conversions on the device match the CPU's (f16 rounding included).
  ST_REQUIRE_CLOSE(cpu(g.to(DType::F16)).to(DType::F32), a.to(DType::F16).to(DType::F32), 0, 0);
  ST_REQUIRE_CLOSE(cpu(g.to(DType::F64)), a.to(DType::F64), 0, 0);
  Tensor f = Tensor::full({3, 3}, 2.5, DType::F32, kGpu);
  REQUIRE(cpu(f).to_vector<float>() == std::vector<float>(9, 2.5f));
  Tensor z = Tensor::zeros({5}, DType::I64, kGpu);
  REQUIRE(cpu(z).to_vector<int64_t>() == std::vector<int64_t>(5, 0));
}

TEST_CASE("cuda: element-wise ops with broadcasting and non-contiguous inputs", "[cuda]") {
  REQUIRE_GPU();
  parity([](auto& x) { return relu(x[0]); }, {leaf({2, 3, 17, 9}, 1)}, 1e-6, 1e-5);
  parity([](auto& x) { return sigmoid(x[0]); }, {leaf({2, 3, 17, 9}, 2)}, 1e-6, 1e-5);
  parity([](auto& x) { return x[0] * 0.7 + 1.5; }, {leaf({33}, 3)}, 1e-6, 1e-5);
  // (2,3,5,4) + (3,1,1) broadcast, and a transposed operand.
  parity([](auto& x) { return add(x[0], x[1]) * x[2].transpose(2, 3); },
         {leaf({2, 3, 5, 4}, 4), leaf({3, 1, 1}, 5), leaf({2, 3, 4, 5}, 6)}, 1e-5, 1e-5);
  parity([](auto& x) { return mul(x[0].slice(3, 0, 9, 2), x[1]); },
         {leaf({1, 2, 3, 9}, 7), leaf({1, 1, 3, 1}, 8)}, 1e-5, 1e-5);
  parity([](auto& x) { return mean(x[0]); }, {leaf({7, 11, 13}, 9)}, 1e-6, 1e-5);
  // f64 is (nearly) exact.
  parity([](auto& x) { return sigmoid(x[0]) * x[1]; },
         {leaf({4, 5}, 10, 1.0, DType::F64), leaf({1, 5}, 11, 1.0, DType::F64)}, 1e-12, 1e-10);
}

TEST_CASE("cuda: conv2d forward and backward over kernel shapes, strides, groups", "[cuda]") {
  REQUIRE_GPU();
  struct Case {
    Shape x, w;
    Conv2dParams p;
  };
  const std::vector<Case> cases = {
      {{2, 3, 13, 11}, {8, 3, 3, 3}, {1, 1, 1, 1, 1}},
      {{1, 8, 9, 16}, {8, 8, 1, 3}, {1, 1, 0, 1, 1}},
      {{1, 8, 16, 9}, {6, 8, 3, 1}, {1, 1, 1, 0, 1}},
      {{2, 4, 15, 15}, {6, 4, 3, 3}, {2, 2, 1, 1, 1}},
      {{1, 4, 10, 12}, {6, 2, 3, 3}, {1, 1, 1, 1, 2}},   // groups 2
      {{1, 5, 1, 1}, {7, 5, 1, 1}, {1, 1, 0, 0, 1}},     // 1x1 spatial
      {{1, 16, 24, 40}, {32, 16, 3, 3}, {1, 2, 1, 1, 1}},  // uneven strides
  };
  for (size_t i = 0; i < cases.size(); ++i) {
    const Case& c = cases[i];
    INFO("case " << i);
    parity([&](auto& t) { return conv2d(t[0], t[1], t[2], c.p); },
           {leaf(c.x, 20 + i), leaf(c.w, 40 + i, 0.3), leaf({c.w[0]}, 60 + i)}, 1e-3, 1e-3);
  }
  // f64 through cuDNN's double path.
  parity([](auto& t) { return conv2d(t[0], t[1], t[2], Conv2dParams{1, 1, 1, 1, 1}); },
         {leaf({1, 3, 7, 6}, 80, 1.0, DType::F64), leaf({4, 3, 3, 3}, 81, 0.3, DType::F64),
          leaf({4}, 82, 1.0, DType::F64)},
         1e-10, 1e-9);
  // A non-contiguous input is made contiguous by the op layer, on the device.
  Pair x = leaf({1, 4, 9, 7}, 90);
  Tensor wc = Tensor::randn({5, 4, 3, 3}, 91) * 0.3, bc = Tensor::randn({5}, 92);
  Tensor yc = conv2d(x.c.transpose(2, 3), wc, bc, {1, 1, 1, 1, 1});
  Tensor yg = conv2d(x.g.transpose(2, 3), gpu(wc), gpu(bc), {1, 1, 1, 1, 1});
  ST_REQUIRE_CLOSE(cpu(yg), yc, 1e-3, 1e-3);
}

TEST_CASE("cuda: conv_transpose2d forward", "[cuda]") {
  REQUIRE_GPU();
  Conv2dParams p{2, 2, 1, 1, 1};
  p.output_pad_h = p.output_pad_w = 1;
  Tensor x = Tensor::randn({2, 6, 7, 5}, 1), w = Tensor::randn({6, 4, 3, 3}, 2) * 0.3,
         b = Tensor::randn({4}, 3);
  ST_REQUIRE_CLOSE(cpu(conv_transpose2d(gpu(x), gpu(w), gpu(b), p)), conv_transpose2d(x, w, b, p),
                   1e-3, 1e-3);
  Conv2dParams g{2, 2, 0, 0, 2};
  Tensor w2 = Tensor::randn({6, 3, 2, 2}, 4) * 0.3, b2 = Tensor::randn({6}, 5);
  ST_REQUIRE_CLOSE(cpu(conv_transpose2d(gpu(x), gpu(w2), gpu(b2), g)),
                   conv_transpose2d(x, w2, b2, g), 1e-3, 1e-3);
}

TEST_CASE("cuda: batch norm with batch statistics and frozen", "[cuda]") {
  REQUIRE_GPU();
  parity([](auto& t) { return batch_norm(t[0], t[1], t[2]); },
         {leaf({3, 5, 9, 7}, 1, 2.0), leaf({5}, 2), leaf({5}, 3)}, 1e-4, 1e-3);
  parity([](auto& t) { return batch_norm(t[0], t[1], t[2]); },
         {leaf({1, 4, 1, 1}, 4), leaf({4}, 5), leaf({4}, 6)}, 1e-4, 1e-3);  // one pixel per channel
  // A large plane: split reductions across many blocks.
  parity([](auto& t) { return batch_norm(t[0], t[1], t[2]); },
         {leaf({1, 3, 181, 243}, 7, 3.0), leaf({3}, 8), leaf({3}, 9)}, 1e-4, 1e-3);
  Tensor mean = Tensor::randn({5}, 10), var = Tensor::uniform({5}, 0.5, 2.0, 11);
  parity([&](auto& t) {
    return batch_norm_frozen(t[0], t[1], t[2], mean.to(t[0].device()), var.to(t[0].device()));
  }, {leaf({2, 5, 6, 7}, 12), leaf({5}, 13), leaf({5}, 14)}, 1e-5, 1e-4);
}

TEST_CASE("cuda: resampling, pooling, concat, subsample", "[cuda]") {
  REQUIRE_GPU();
  parity([](auto& t) { return resize_bilinear(t[0], 23, 37); }, {leaf({2, 3, 9, 14}, 1)}, 1e-5, 1e-4);
  parity([](auto& t) { return resize_bilinear(t[0], 5, 4); }, {leaf({1, 2, 17, 13}, 2)}, 1e-5, 1e-4);
  parity([](auto& t) { return resize_nearest(t[0], 20, 28); }, {leaf({2, 3, 10, 14}, 3)}, 1e-6, 1e-5);
  parity([](auto& t) { return resize_nearest(t[0], 7, 5); }, {leaf({1, 2, 15, 11}, 4)}, 1e-6, 1e-5);
  Pool2dParams p{3, 3, 2, 2, 1, 1};
  parity([&](auto& t) { return max_pool2d(t[0], p); }, {leaf({2, 3, 11, 10}, 5)}, 1e-6, 1e-5);
  parity([](auto& t) { return cat({t[0], t[1]}, 1); }, {leaf({2, 3, 4, 5}, 6), leaf({2, 2, 4, 5}, 7)},
         0, 0);
  parity([](auto& t) { return subsample(t[0], 2); }, {leaf({1, 3, 9, 8}, 8)}, 0, 0);
}

TEST_CASE("cuda: softmax, log-softmax, weighted cross-entropy, argmax", "[cuda]") {
  REQUIRE_GPU();
  parity([](auto& t) { return softmax_channels(t[0]); }, {leaf({2, 9, 7, 13}, 1, 3.0)}, 1e-6, 1e-4);
  parity([](auto& t) { return log_softmax_channels(t[0]); }, {leaf({2, 9, 7, 13}, 2, 3.0)}, 1e-5, 1e-4);
  Tensor target = Tensor::uniform({2, 7, 13}, 0, 9, 3).to(DType::I64);
  Tensor weight = Tensor::uniform({2, 7, 13}, 1, 5, 4);
  parity([&](auto& t) {
    return weighted_cross_entropy(t[0], target.to(t[0].device()), weight.to(t[0].device()));
  }, {leaf({2, 9, 7, 13}, 5, 2.0)}, 1e-5, 1e-4);
  Tensor x = Tensor::randn({2, 9, 33, 17}, 6);
  REQUIRE(cpu(argmax_channels(gpu(x))).to_vector<int64_t>() ==
          argmax_channels(x).to_vector<int64_t>());
  // A bad target is named on the GPU as on the CPU.
  Tensor bad = target.clone();
  bad.data<int64_t>()[17] = 9;
  REQUIRE_THROWS_WITH(weighted_cross_entropy(gpu(x.slice(2, 0, 7).slice(3, 0, 13).contiguous()),
                                             gpu(bad), gpu(weight)),
                      Contains("target value 9") && Contains("pixel 17"));
}

TEST_CASE("cuda: matmul (transposed views), linear, sums, Adam", "[cuda]") {
  REQUIRE_GPU();
  parity([](auto& t) { return matmul(t[0], t[1]); }, {leaf({7, 5}, 1), leaf({5, 9}, 2)}, 1e-5, 1e-4);
  parity([](auto& t) { return matmul(t[0].transpose(0, 1), t[1].transpose(0, 1)); },
         {leaf({5, 7}, 3), leaf({9, 5}, 4)}, 1e-5, 1e-4);
  parity([](auto& t) { return matmul(t[0].slice(1, 0, 10, 2), t[1]); },
         {leaf({4, 10}, 5), leaf({5, 3}, 6)}, 1e-5, 1e-4);  // neither layout: copied first
  parity([](auto& t) { return linear(t[0], t[1], t[2]); },
         {leaf({6, 8}, 7), leaf({3, 8}, 8), leaf({3}, 9)}, 1e-5, 1e-4);
  parity([](auto& t) { return matmul(t[0], t[1]); },
         {leaf({1, 1}, 10), leaf({1, 6}, 11)}, 1e-6, 1e-5);  // degenerate shapes
  // Adam: five steps on each device from the same start.
  Tensor pc = Tensor::randn({1000}, 12), pg = gpu(pc);
  Tensor mc = Tensor::zeros({1000}), vc = Tensor::zeros({1000});
  Tensor mg = gpu(mc), vg = gpu(vc);
  for (int64_t s = 1; s <= 5; ++s) {
    Tensor g = Tensor::randn({1000}, 100 + uint64_t(s));
    AdamParams ap;
    ap.lr = 0.01;
    ap.step = s;
    backend_for(Device::cpu()).adam_step(pc, g, mc, vc, ap);
    Tensor gg = gpu(g);
    backend_for(kGpu).adam_step(pg, gg, mg, vg, ap);
  }
  ST_REQUIRE_CLOSE(cpu(pg), pc, 1e-6, 1e-5);
  ST_REQUIRE_CLOSE(cpu(vg), vc, 1e-9, 1e-5);
}

TEST_CASE("cuda: partial backward does no work for the frozen front", "[cuda][partial]") {
  REQUIRE_GPU();
  auto param = [](Shape s, uint64_t seed, bool train) {
    Tensor t = gpu(Tensor::randn(s, seed) * 0.3);
    t.set_requires_grad(train);
    return t;
  };
  Tensor fw = param({8, 3, 3, 3}, 1, false), fb = param({8}, 2, false);
  Tensor bw1 = param({8, 8, 3, 3}, 3, true), bb1 = param({8}, 4, true);
  Tensor bw2 = param({4, 8, 1, 1}, 5, true), bb2 = param({4}, 6, true);
  Tensor x = gpu(Tensor::randn({1, 3, 16, 16}, 7));
  Tensor target = gpu(Tensor::full({1, 16, 16}, 1, DType::I64));
  Tensor weight = gpu(Tensor::full({1, 16, 16}, 1.0));
  reset_backward_kernel_counts();
  Tensor f = relu(conv2d(x, fw, fb, {1, 1, 1, 1, 1}));
  Tensor logits = conv2d(relu(conv2d(f, bw1, bb1, {1, 1, 1, 1, 1})), bw2, bb2);
  weighted_cross_entropy(logits, target, weight).backward();
  REQUIRE_FALSE(fw.grad().defined());
  REQUIRE(bw1.grad().defined());
  REQUIRE(bw1.grad().device() == kGpu);
  REQUIRE(backward_kernel_count("conv2d.grad_weight") == 2);
  REQUIRE(backward_kernel_count("conv2d.grad_input") == 1);  // only into bw1's conv output
}

TEST_CASE("cuda: the student's forward and one partial distillation step match the CPU",
          "[cuda][student]") {
  REQUIRE_GPU();
  const int64_t H = 48, W = 80;
  nn::Student sc(3), sg(3);
  sg.to(kGpu);
  REQUIRE(sg.device() == kGpu);
  std::vector<uint8_t> bgr(size_t(H * W * 3));
  for (size_t i = 0; i < bgr.size(); ++i) bgr[i] = uint8_t((i * 37 + i / 97) % 256);
  Tensor x = nn::Student::preprocess_bgr(bgr.data(), H, W);
  {
    NoGradGuard ng;
    ST_REQUIRE_CLOSE(cpu(sg.forward(gpu(x))), sc.forward(x), 2e-3, 1e-3);
  }
  std::vector<uint8_t> labels(size_t(H * W), 8);
  for (int64_t y = 10; y < 30; ++y)
    for (int64_t xx = 20; xx < 50; ++xx) labels[size_t(y * W + xx)] = 0;
  nn::Target t = nn::make_target(labels, H, W);
  nn::DistillConfig cfg;
  cfg.max_updates = 1;
  cfg.threshold = 1.1;  // always train
  nn::Distiller dc(sc, nn::Distillation::Partial, cfg), dg(sg, nn::Distillation::Partial, cfg);
  reset_backward_kernel_counts();
  auto oc = dc.distill(x, t);
  auto cpu_counts = backward_kernel_counts();
  reset_backward_kernel_counts();
  auto og = dg.distill(x, t);  // CPU frame and target: moved to the GPU by the distiller
  REQUIRE(backward_kernel_counts() == cpu_counts);  // the same partial backward on both
  REQUIRE(og.steps == oc.steps);
  REQUIRE(og.acc_before == Approx(oc.acc_before).margin(0.02));
  sg.to(Device::cpu());
  auto pc = sc.named_parameters(), pg = sg.named_parameters();
  for (size_t i = 0; i < pc.size(); ++i) {
    INFO(pc[i].first);
    ST_REQUIRE_CLOSE(pg[i].second, pc[i].second, 2e-3, 1e-2);
  }
}

TEST_CASE("cuda: the caching allocator stops calling the driver in steady state", "[cuda]") {
  REQUIRE_GPU();
  Tensor w = gpu(Tensor::randn({16, 8, 3, 3}, 1)), b = gpu(Tensor::randn({16}, 2));
  Tensor x = gpu(Tensor::randn({1, 8, 64, 64}, 3));
  auto step = [&] {
    Tensor y = relu(conv2d(x, w, b, {1, 1, 1, 1, 1}));
    return sum(y).item();
  };
  step();
  step();
  const MemoryStats s0 = backend_for(kGpu).memory_stats();
  for (int i = 0; i < 5; ++i) step();
  const MemoryStats s1 = backend_for(kGpu).memory_stats();
  REQUIRE(s1.device_allocations == s0.device_allocations);
  REQUIRE(s1.cache_hits > s0.cache_hits);
}

TEST_CASE("cuda: errors name the problem", "[cuda][errors]") {
  REQUIRE_GPU();
  REQUIRE_THROWS_WITH(Tensor::empty({int64_t(1) << 46}, DType::F32, kGpu),
                      Contains("out of memory") && Contains("cuda:0"));
  Tensor a = Tensor::zeros({2, 2}, DType::F32, kGpu);
  REQUIRE_THROWS_WITH(relu(a.to(DType::I32)), Contains("i32"));
}

TEST_CASE("cuda: ROIAlign (the teacher's pooler) matches the CPU", "[cuda][teacher]") {
  REQUIRE_GPU();
  Tensor x = Tensor::randn({2, 5, 19, 23}, 1);
  std::vector<float> rv;
  for (int i = 0; i < 30; ++i) {
    const float x0 = float((i * 37) % 90) - 10, y0 = float((i * 53) % 70) - 10;
    rv.insert(rv.end(), {float(i % 2), x0, y0, x0 + float(i % 17) + 0.5f, y0 + float(i % 11) + 1.5f});
  }
  Tensor rois = Tensor::from_vector(rv, {30, 5});
  for (bool aligned : {true, false})
    for (int64_t sr : {int64_t(0), int64_t(2)}) {
      INFO("aligned " << aligned << " sampling " << sr);
      Tensor yc = teacher::roi_align(x, rois, 7, 7, 0.25, sr, aligned);
      Tensor yg = teacher::roi_align(gpu(x), rois, 7, 7, 0.25, sr, aligned);
      REQUIRE(yg.device() == kGpu);
      ST_REQUIRE_CLOSE(cpu(yg), yc, 1e-5, 1e-5);
    }
}

TEST_CASE("cuda: NMS, top-k and mask paste (the teacher's glue ops) match the CPU", "[cuda][teacher]") {
  REQUIRE_GPU();
  // 700 boxes in clusters (many overlaps near the threshold), scores with ties.
  const int64_t K = 700;
  std::vector<float> bv, sv;
  for (int64_t i = 0; i < K; ++i) {
    const float cx = float((i % 37) * 9), cy = float((i % 23) * 11), w = 8.0f + float(i % 7), h = 9.0f + float(i % 5);
    bv.insert(bv.end(), {cx - w, cy - h, cx + w + float(i % 3) * 0.25f, cy + h});
    sv.push_back(float((i * 7919) % 101) / 100.0f);  // ties
  }
  Tensor boxes = Tensor::from_vector(bv, {K, 4}), scores = Tensor::from_vector(sv, {K});
  for (double thr : {0.3, 0.5, 0.7}) {
    INFO("threshold " << thr);
    REQUIRE(teacher::nms(gpu(boxes), gpu(scores), thr) == teacher::nms(boxes, scores, thr));
  }
  std::vector<int64_t> groups;
  for (int64_t i = 0; i < K; ++i) groups.push_back(i % 5);
  REQUIRE(teacher::batched_nms(gpu(boxes), gpu(scores), groups, 0.5) ==
          teacher::batched_nms(boxes, scores, groups, 0.5));
  Tensor big = Tensor::uniform({200003}, -3, 3, 9);
  REQUIRE(teacher::topk(gpu(big), 1000) == teacher::topk(big, 1000));
  REQUIRE(teacher::topk(gpu(scores), K) == teacher::topk(scores, K));  // ties: lower index first
  // Paste: 40 random masks and boxes (some partly outside), both conventions, bit for bit.
  const int64_t D = 40, M = 28, H = 90, W = 130;
  Tensor masks = Tensor::uniform({D, M, M}, 0, 1, 4);
  std::vector<float> pb;
  for (int64_t d = 0; d < D; ++d) {
    const float x0 = float((d * 13) % 140) - 10.5f, y0 = float((d * 7) % 95) - 5.25f;
    pb.insert(pb.end(), {x0, y0, x0 + 3.0f + float(d % 11) * 4.1f, y0 + 2.0f + float(d % 9) * 3.7f});
  }
  Tensor pboxes = Tensor::from_vector(pb, {D, 4});
  for (auto conv : {teacher::Convention::Detectron2, teacher::Convention::Torchvision}) {
    Tensor c = teacher::paste_masks(masks, pboxes, H, W, conv);
    Tensor g = teacher::paste_masks(gpu(masks), pboxes, H, W, conv);
    REQUIRE(g.device() == kGpu);
    REQUIRE(cpu(g).to_vector<uint8_t>() == c.to_vector<uint8_t>());
  }
}

namespace {
// A synthetic 3-channel frame: smooth gradients and a few bright rectangles.
std::vector<uint8_t> teacher_frame(int64_t h, int64_t w) {
  std::vector<uint8_t> f(size_t(h * w * 3));
  for (int64_t y = 0; y < h; ++y)
    for (int64_t x = 0; x < w; ++x)
      for (int64_t c = 0; c < 3; ++c) {
        int v = int((x * 3 + y * 2 + c * 40) % 256);
        if ((x / 24 + y / 20) % 3 == 0) v = 230 - int(c) * 30;
        f[size_t((y * w + x) * 3 + c)] = uint8_t(v);
      }
  return f;
}
}  // namespace

TEST_CASE("cuda: the Mask R-CNN teacher (backbone, heads, end to end) matches the CPU", "[cuda][teacher]") {
  REQUIRE_GPU();
  const auto w = teacher::random_maskrcnn_weights(3);
  const int64_t H = 120, W = 160;
  const auto frame = teacher_frame(H, W);
  teacher::MaskRcnn mc(w), mg(w);
  mg.to(kGpu);
  // Backbone: P2..P6 to 1e-4 of each map's largest value (cuDNN sums in its own order).
  teacher::Backbone bc(w), bg(w);
  bg.to(kGpu);
  Tensor x = mc.preprocess(frame.data(), H, W);
  auto fc = bc.forward(x), fg = bg.forward(gpu(x));
  for (size_t l = 0; l < 5; ++l) {
    INFO("P" << l + 2);
    REQUIRE(fg.p[l].device() == kGpu);
    const auto a = fc.p[l].to_vector<float>(), b = cpu(fg.p[l]).to_vector<float>();
    double amax = 0, dmax = 0;
    for (size_t i = 0; i < a.size(); ++i) {
      amax = std::max(amax, double(std::abs(a[i])));
      dmax = std::max(dmax, double(std::abs(a[i] - b[i])));
    }
    REQUIRE(dmax <= 1e-4 * amax + 1e-6);
  }
  // End to end: detections as a set (class, box to 0.05 px, score to 1e-3), >= 90% matched;
  // label maps differ on at most 1% of the pixels.
  auto rc = mc.run(frame.data(), H, W), rg = mg.run(frame.data(), H, W);
  const int64_t n = rc.detections.boxes.size(0);
  INFO("CPU " << n << " detections, CUDA " << rg.detections.boxes.size(0));
  REQUIRE(n > 0);
  const auto cb = rc.detections.boxes.to_vector<float>(), gb = rg.detections.boxes.to_vector<float>();
  const auto cs = rc.detections.scores.to_vector<float>(), gs = rg.detections.scores.to_vector<float>();
  int64_t matched = 0;
  std::vector<bool> used(size_t(rg.detections.boxes.size(0)), false);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < rg.detections.boxes.size(0); ++j) {
      if (used[size_t(j)] || rg.detections.classes[size_t(j)] != rc.detections.classes[size_t(i)]) continue;
      bool same = std::abs(cs[size_t(i)] - gs[size_t(j)]) <= 1e-3f;
      for (int k = 0; k < 4 && same; ++k) same = std::abs(cb[size_t(i * 4 + k)] - gb[size_t(j * 4 + k)]) <= 0.05f;
      if (same) {
        used[size_t(j)] = true;
        ++matched;
        break;
      }
    }
  INFO(matched << " of " << n << " matched");
  REQUIRE(matched * 10 >= n * 9);
  REQUIRE(rg.label_map.size() == rc.label_map.size());
  int64_t differ = 0;
  for (size_t i = 0; i < rc.label_map.size(); ++i) differ += rc.label_map[i] != rg.label_map[i];
  REQUIRE(differ * 100 <= int64_t(rc.label_map.size()));
}
