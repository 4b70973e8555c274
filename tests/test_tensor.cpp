// Tensor core: views and layout, conversions, broadcasting, autograd mechanics, partial
// backward, and clear errors on bad input.
#include "bounds.h"
#include "nn/optim.h"
#include "tensor/half.h"
#include "test_util.h"

using namespace st;
using Catch::Contains;

TEST_CASE("tensor: views share storage and contiguous() copies only when needed", "[tensor][portable]") {
  Tensor x = Tensor::from_vector(std::vector<float>{0, 1, 2, 3, 4, 5}, {2, 3});
  REQUIRE(x.is_contiguous());
  REQUIRE(x.contiguous().raw_data() == x.raw_data());
  Tensor t = x.transpose(0, 1);
  REQUIRE(t.shape() == Shape{3, 2});
  REQUIRE_FALSE(t.is_contiguous());
  REQUIRE(t.storage() == x.storage());
  REQUIRE(t.to_vector<float>() == std::vector<float>{0, 3, 1, 4, 2, 5});
  Tensor c = t.contiguous();
  REQUIRE(c.is_contiguous());
  REQUIRE(c.raw_data() != x.raw_data());
  REQUIRE(x.slice(1, 0, 3, 2).to_vector<float>() == std::vector<float>{0, 2, 3, 5});
  REQUIRE(x.narrow(0, 1, 1).to_vector<float>() == std::vector<float>{3, 4, 5});
  REQUIRE(x.reshape({3, -1}).shape() == Shape{3, 2});
  REQUIRE(x.at({1, 2}) == 5);
  // A write through a view is seen by the base.
  Tensor v = x.narrow(1, 1, 1);
  v.fill_(0);  // a (2,1) view with stride 3 is not dense
  REQUIRE(x.to_vector<float>() == std::vector<float>{0, 0, 2, 3, 0, 5});
}

TEST_CASE("tensor: strided subsample is a view with the right values", "[tensor][portable]") {
  Tensor x = Tensor::from_vector(std::vector<float>(35), {1, 1, 5, 7});
  std::vector<float> v(35);
  for (int i = 0; i < 35; ++i) v[size_t(i)] = float(i);
  x = Tensor::from_vector(v, {1, 1, 5, 7});
  Tensor s = subsample(x, 2);
  REQUIRE(s.shape() == Shape{1, 1, 3, 4});
  REQUIRE(s.storage() == x.storage());
  REQUIRE(s.to_vector<float>() ==
          std::vector<float>{0, 2, 4, 6, 14, 16, 18, 20, 28, 30, 32, 34});
}

TEST_CASE("tensor: dtype conversions including f16", "[tensor][portable]") {
  Tensor x = Tensor::from_vector(std::vector<float>{1.5f, -2.25f, 65504.f, 1e-7f, 0.1f}, {5});
  Tensor h = x.to(DType::F16);
  REQUIRE(h.dtype() == DType::F16);
  auto back = h.to(DType::F32).to_vector<float>();
  REQUIRE(back[0] == 1.5f);
  REQUIRE(back[1] == -2.25f);
  REQUIRE(back[2] == 65504.f);
  // Conversions are exact functions: 1e-7 lies between the f16 subnormals 2^-24 and 2^-23 (their
  // step is 2^-24), nearer 2^-23; 0.1f rounds to 0x1.998p-4 = 0.0999755859375 (11 bits).
  REQUIRE(back[3] == 0x1p-23f);
  REQUIRE(back[4] == 0x1.998p-4f);
  // Exhaustive round trip: every finite f16 survives f16 -> f32 -> f16.
  for (uint32_t b = 0; b < 65536; ++b) {
    uint16_t h16 = uint16_t(b);
    if (((h16 >> 10) & 0x1f) == 0x1f) continue;  // inf/nan
    REQUIRE(float_to_half(half_to_float(h16)) == h16);
  }
  REQUIRE(Tensor::from_vector(std::vector<int64_t>{3, -1}, {2}).to(DType::F32).to_vector<float>() ==
          std::vector<float>{3, -1});
  REQUIRE(Tensor::full({2}, 7, DType::U8).to_vector<int64_t>() == std::vector<int64_t>{7, 7});
}

TEST_CASE("tensor: broadcasting rules", "[tensor][portable]") {
  Tensor a = Tensor::from_vector(std::vector<float>{1, 2, 3}, {3, 1});
  Tensor b = Tensor::from_vector(std::vector<float>{10, 20}, {2});
  Tensor c = add(a, b);
  REQUIRE(c.shape() == Shape{3, 2});
  REQUIRE(c.to_vector<float>() == std::vector<float>{11, 21, 12, 22, 13, 23});
  REQUIRE(broadcast_shapes({2, 1, 4}, {3, 1}) == Shape{2, 3, 4});
  REQUIRE(broadcast_shapes({}, {5}) == Shape{5});
  REQUIRE_THROWS_WITH(add(Tensor::zeros({2, 3}), Tensor::zeros({4})),
                      Contains("not compatible") && Contains("[2, 3]") && Contains("[4]"));
  // Non-contiguous operands.
  Tensor m = Tensor::from_vector(std::vector<float>{1, 2, 3, 4, 5, 6}, {2, 3});
  REQUIRE(mul(m.transpose(0, 1), m.transpose(0, 1)).to_vector<float>() ==
          std::vector<float>{1, 16, 4, 25, 9, 36});
}

TEST_CASE("tensor: bad input raises clear errors", "[tensor][errors][portable]") {
  Tensor x = Tensor::zeros({1, 3, 8, 8});
  Tensor w = Tensor::zeros({4, 2, 3, 3});
  REQUIRE_THROWS_WITH(conv2d(x, w, Tensor(), {}), Contains("conv2d") && Contains("3 channels"));
  REQUIRE_THROWS_WITH(conv2d(x, Tensor::zeros({4, 3, 3, 3}, DType::F64), Tensor(), {}),
                      Contains("dtype f64") && Contains("f32"));
  REQUIRE_THROWS_WITH(conv2d(x.to(DType::U8), Tensor::zeros({4, 3, 3, 3}, DType::U8), Tensor(), {}),
                      Contains("u8") && Contains("not supported"));
  REQUIRE_THROWS_WITH(conv2d(Tensor::zeros({3, 8, 8}), w, Tensor(), {}), Contains("4-D"));
  REQUIRE_THROWS_WITH(conv2d(x, Tensor::zeros({4, 3, 3, 3}), Tensor::zeros({5}), {}),
                      Contains("bias shape"));
  REQUIRE_THROWS_WITH(conv2d(Tensor::zeros({1, 3, 2, 2}), Tensor::zeros({4, 3, 5, 5}), Tensor(), {}),
                      Contains("larger than padded input"));
  REQUIRE_THROWS_WITH(matmul(Tensor::zeros({2, 3}), Tensor::zeros({4, 2})),
                      Contains("inner dimensions"));
  REQUIRE_THROWS_WITH(cat({Tensor::zeros({1, 2, 3, 3}), Tensor::zeros({1, 2, 4, 3})}, 1),
                      Contains("cat") && Contains("dim 2"));
  REQUIRE_THROWS_WITH(weighted_cross_entropy(Tensor::zeros({1, 9, 2, 2}),
                                             Tensor::full({1, 2, 2}, 9, DType::I64),
                                             Tensor::zeros({1, 2, 2})),
                      Contains("target value 9") && Contains("[0, 9)"));
  REQUIRE_THROWS_WITH(weighted_cross_entropy(Tensor::zeros({1, 9, 2, 2}),
                                             Tensor::zeros({1, 2, 2}), Tensor::zeros({1, 2, 2})),
                      Contains("integer"));
  REQUIRE_THROWS_WITH(x.reshape({5, -1}), Contains("cannot reshape"));
  REQUIRE_THROWS_WITH(x.item(), Contains("expected 1"));
  REQUIRE_THROWS_WITH(Tensor().shape(), Contains("undefined"));
  REQUIRE_THROWS_WITH(x.data<double>(), Contains("dtype f32"));
  REQUIRE_THROWS_WITH(resize_bilinear(x, 0, 4), Contains("positive"));
  REQUIRE_THROWS_WITH(batch_norm(x, Tensor::zeros({2}), Tensor::zeros({3})), Contains("weight shape"));
}

// The CUDA backend is a separate library opened on first use: in a build that has it, opening it
// must work on any machine (no GPU needed to resolve its symbols and libraries), and a program
// that never asks for a CUDA device must not have loaded it (nor cuBLAS).
TEST_CASE("tensor: devices — the CUDA backend library loads on first use", "[tensor]") {
  if (!backend_built(DeviceType::CUDA)) ST_SKIP("this build has no CUDA backend (-DST_CUDA=OFF)");
  REQUIRE(backend_load_error(DeviceType::CUDA) == "");
  REQUIRE(backend_load_error(DeviceType::CPU) == "");
}

TEST_CASE("tensor: devices — CUDA tensors without a GPU fail clearly", "[tensor][errors]") {
  if (device_available(DeviceType::CUDA)) {
    // With a GPU, mixing devices in one op must be refused by name.
    Tensor a = Tensor::zeros({2, 2});
    Tensor b = Tensor::zeros({2, 2}, DType::F32, Device::cuda(0));
    REQUIRE_THROWS_WITH(add(a, b), Contains("cuda:0") && Contains("cpu"));
    return;
  }
  try {
    Tensor::zeros({2, 2}, DType::F32, Device::cuda(0));
    FAIL("creating a CUDA tensor without a usable GPU must throw");
  } catch (const Error& e) {
    REQUIRE_THAT(e.what(), Contains("cuda:0"));
  }
}

TEST_CASE("autograd: records only when an input requires a gradient", "[autograd][portable]") {
  Tensor a = Tensor::randn({3}, 1), b = Tensor::randn({3}, 2);
  Tensor c = add(a, b);
  REQUIRE_FALSE(c.requires_grad());
  REQUIRE(c.grad_fn() == nullptr);
  a.set_requires_grad(true);
  Tensor d = mul(a, b);
  REQUIRE(d.requires_grad());
  REQUIRE(d.grad_fn() != nullptr);
  {
    NoGradGuard ng;
    Tensor e = mul(a, b);
    REQUIRE_FALSE(e.requires_grad());
  }
  REQUIRE_THROWS_WITH(d.set_requires_grad(false), Contains("only leaves"));
  REQUIRE_THROWS_WITH(Tensor::zeros({2}, DType::I64).set_requires_grad(true),
                      Contains("cannot require"));
}

TEST_CASE("autograd: gradients accumulate across backward calls, graph freed", "[autograd][portable]") {
  Tensor w = Tensor::from_vector(std::vector<float>{1, 2, 3}, {3});
  w.set_requires_grad(true);
  Tensor x = Tensor::from_vector(std::vector<float>{4, 5, 6}, {3});
  Tensor loss = sum(mul(w, x));
  loss.backward();
  REQUIRE(w.grad().to_vector<float>() == std::vector<float>{4, 5, 6});
  REQUIRE_THROWS_WITH(loss.backward(), Contains("already freed"));
  sum(mul(w, x)).backward();
  REQUIRE(w.grad().to_vector<float>() == std::vector<float>{8, 10, 12});
  nn::zero_grad({w});
  REQUIRE_FALSE(w.grad().defined());
  // A tensor used twice gets the sum of both paths.
  sum(add(mul(w, w), w)).backward();
  REQUIRE(w.grad().to_vector<float>() == std::vector<float>{3, 5, 7});
  REQUIRE_THROWS_WITH(mul(w, x).backward(), Contains("gradient must be given"));
  REQUIRE_THROWS_WITH(x.backward(), Contains("does not require"));
}

TEST_CASE("autograd: partial backward — a frozen front costs nothing", "[autograd][partial][portable]") {
  // front: conv -> bn -> relu -> conv (all frozen); back: conv -> bn -> relu -> conv (trained).
  auto param = [](Shape s, uint64_t seed, bool train) {
    Tensor t = Tensor::randn(s, seed) * 0.3;
    t.set_requires_grad(train);
    return t;
  };
  Tensor fw1 = param({8, 3, 3, 3}, 1, false), fb1 = param({8}, 2, false);
  Tensor fg = param({8}, 3, false), fbeta = param({8}, 4, false);
  Tensor fw2 = param({8, 8, 3, 3}, 5, false), fb2 = param({8}, 6, false);
  Tensor bw1 = param({8, 8, 1, 3}, 7, true), bb1 = param({8}, 8, true);
  Tensor bg = param({8}, 9, true), bbeta = param({8}, 10, true);
  Tensor bw2 = param({4, 8, 3, 1}, 11, true), bb2 = param({4}, 12, true);
  Tensor x = Tensor::randn({1, 3, 16, 16}, 13);
  Tensor target = Tensor::full({1, 8, 8}, 2, DType::I64);
  Tensor weight = Tensor::full({1, 8, 8}, 1.0);

  reset_backward_kernel_counts();
  Tensor f = conv2d(relu(batch_norm(conv2d(x, fw1, fb1, {2, 2, 1, 1, 1}), fg, fbeta)), fw2, fb2,
                    {1, 1, 1, 1, 1});
  REQUIRE_FALSE(f.requires_grad());  // no graph at all for the frozen part
  Tensor h = relu(batch_norm(conv2d(f, bw1, bb1, {1, 1, 0, 1, 1}), bg, bbeta));
  Tensor logits = conv2d(h, bw2, bb2, {1, 1, 1, 0, 1});
  weighted_cross_entropy(logits, target, weight).backward();

  for (const Tensor& p : {fw1, fb1, fg, fbeta, fw2, fb2}) REQUIRE_FALSE(p.grad().defined());
  for (const Tensor& p : {bw1, bb1, bg, bbeta, bw2, bb2}) REQUIRE(p.grad().defined());
  // Two trained convs: two weight and two bias gradients, but only ONE input gradient (the
  // second conv's input leads to trained tensors; the first conv's input is the frozen front).
  REQUIRE(backward_kernel_count("conv2d.grad_weight") == 2);
  REQUIRE(backward_kernel_count("conv2d.grad_bias") == 2);
  REQUIRE(backward_kernel_count("conv2d.grad_input") == 1);
  REQUIRE(backward_kernel_count("batch_norm.grad_input") == 1);  // leads to bw1
  REQUIRE(backward_kernel_count("batch_norm.grad_affine") == 1);
  int64_t total = 0;
  for (auto& [k, v] : backward_kernel_counts()) total += v;
  // CE 1 + conv2 (weight, bias, input) 3 + relu 1 + bn (input, affine) 2 + conv1 (weight,
  // bias) 2: nothing in the frozen front ran.
  REQUIRE(total == 9);

  // Full training of the same network: now every kernel runs.
  for (Tensor* p : {&fw1, &fb1, &fg, &fbeta, &fw2, &fb2}) p->set_requires_grad(true);
  reset_backward_kernel_counts();
  Tensor f2 = conv2d(relu(batch_norm(conv2d(x, fw1, fb1, {2, 2, 1, 1, 1}), fg, fbeta)), fw2, fb2,
                     {1, 1, 1, 1, 1});
  Tensor l2 = conv2d(relu(batch_norm(conv2d(f2, bw1, bb1, {1, 1, 0, 1, 1}), bg, bbeta)), bw2, bb2,
                     {1, 1, 1, 0, 1});
  weighted_cross_entropy(l2, target, weight).backward();
  REQUIRE(backward_kernel_count("conv2d.grad_weight") == 4);
  REQUIRE(backward_kernel_count("conv2d.grad_input") == 3);  // not for the network input x
  for (const Tensor& p : {fw1, fb1, fg, fbeta, fw2, fb2}) REQUIRE(p.grad().defined());
}

TEST_CASE("autograd: detach cuts the graph", "[autograd][portable]") {
  Tensor w = Tensor::randn({4}, 3);
  w.set_requires_grad(true);
  Tensor y = mul(w, w).detach();
  REQUIRE_FALSE(y.requires_grad());
  REQUIRE(y.storage() != nullptr);
}

TEST_CASE("ops: non-contiguous inputs give the same results as contiguous ones", "[tensor][portable]") {
  // A permuted (channels-last storage) view and a strided slice feed every image op.
  Tensor base = Tensor::randn({2, 7, 5, 4}, 77);                      // N,H,W,C storage
  Tensor x = base.permute({0, 3, 1, 2});                               // (2,4,7,5) view
  REQUIRE_FALSE(x.is_contiguous());
  Tensor xc = x.contiguous();
  Tensor w = Tensor::randn({6, 4, 3, 3}, 78), b = Tensor::randn({6}, 79);
  Tensor g = Tensor::randn({4}, 80), be = Tensor::randn({4}, 81);
  auto same = [](const Tensor& a, const Tensor& c) {
    REQUIRE(a.to_vector<float>() == c.to_vector<float>());
  };
  same(conv2d(x, w, b, {1, 1, 1, 1, 1}), conv2d(xc, w, b, {1, 1, 1, 1, 1}));
  same(conv2d(xc, w.permute({0, 1, 3, 2}).contiguous().permute({0, 1, 3, 2}), b, {}),
       conv2d(xc, w, b, {}));
  same(batch_norm(x, g, be), batch_norm(xc, g, be));
  same(relu(x), relu(xc));
  same(resize_bilinear(x, 9, 3), resize_bilinear(xc, 9, 3));
  same(softmax_channels(x), softmax_channels(xc));
  same(max_pool2d(x, {3, 3, 2, 2, 1, 1}), max_pool2d(xc, {3, 3, 2, 2, 1, 1}));
  same(cat({x, x.slice(1, 0, 4, 2)}, 1), cat({xc, xc.slice(1, 0, 4, 2).contiguous()}, 1));
  same(add(x, xc.slice(3, 0, 1)), add(xc, xc.slice(3, 0, 1).contiguous()));
  Tensor sub = subsample(x, 2);
  REQUIRE(sub.shape() == Shape{2, 4, 4, 3});
  same(conv2d(sub, w, b, {}), conv2d(sub.contiguous(), w, b, {}));
  REQUIRE(argmax_channels(x).to_vector<int64_t>() == argmax_channels(xc).to_vector<int64_t>());
}

TEST_CASE("ops: odd sizes and 1x1 spatial inputs", "[tensor][portable]") {
  Tensor x = Tensor::randn({1, 3, 1, 1}, 90);
  REQUIRE(conv2d(x, Tensor::randn({5, 3, 3, 3}, 91), Tensor(), {1, 1, 1, 1, 1}).shape() ==
          Shape{1, 5, 1, 1});
  REQUIRE(resize_bilinear(x, 4, 3).shape() == Shape{1, 3, 4, 3});
  // Upsampling a 1x1 image is a constant image: both taps read the one pixel and the exact
  // weights sum to 1. In float the weights and the weighted sum round: within the bilinear bound
  // of the exact value (tests/bounds.h, the golden tests' model).
  ST_REQUIRE_WITHIN(resize_bilinear(x, 4, 3), x.expand({1, 3, 4, 3}).contiguous(),
                    test::bilinear_bounds(x, Tensor::zeros({1, 3, 4, 3}, DType::F64), test::kU32, true)
                        .at("y"));
  REQUIRE(max_pool2d(Tensor::randn({1, 2, 1, 1}, 92), {3, 3, 2, 2, 1, 1}).shape() == Shape{1, 2, 1, 1});
  REQUIRE(conv2d(Tensor::randn({3, 2, 13, 11}, 93), Tensor::randn({3, 2, 3, 1}, 94), Tensor(),
                 {2, 3, 1, 0, 1})
              .shape() == Shape{3, 3, 7, 4});
}

// Large float GEMMs (M*N*K >= 2^21) run through the convolution engine (kernels/cpu/matmul.cpp);
// checked against the double path on plain, transposed and strided views.
// Each output sums K products: whatever the blocking, order and FMA use, the float result is
// within gamma(K, 2^-24) * sum_k |a_ik b_kj| of the exact sum, and the double reference within
// gamma(K, 2^-53) of it (tests/README.md); sum_k |a_ik b_kj| is |a| @ |b| in double.
TEST_CASE("matmul float fast path matches the double reference (large, any layout)", "[tensor][portable]") {
  const int64_t M = 131, K = 257, N = 97;  // 3.3M multiply-adds, odd sizes
  Tensor a = Tensor::uniform({M, K}, -1, 1, 11), bt = Tensor::uniform({N, K}, -1, 1, 12);
  Tensor wide = Tensor::uniform({M, 2 * K}, -1, 1, 13);
  const Tensor bs[] = {bt.transpose(0, 1), bt.transpose(0, 1).contiguous()};
  const Tensor as[] = {a, wide.narrow(1, 0, K), a.transpose(0, 1).contiguous().transpose(0, 1)};
  auto abs64 = [](const Tensor& t) {
    auto v = t.to_vector<double>();
    for (double& e : v) e = std::abs(e);
    return Tensor::from_vector(v, t.shape());
  };
  const double g = test::gamma(double(K), test::kU32) + test::gamma(double(K), test::kU64);
  for (const Tensor& x : as)
    for (const Tensor& b : bs) {
      Tensor y = matmul(x, b);
      Tensor ref = matmul(x.to(DType::F64), b.to(DType::F64));
      ST_REQUIRE_WITHIN(y, ref, mul_scalar(matmul(abs64(x), abs64(b)), g));
    }
  Tensor lin = linear(a, bt, Tensor());
  ST_REQUIRE_WITHIN(lin, matmul(a.to(DType::F64), bt.transpose(0, 1).to(DType::F64)),
                    mul_scalar(matmul(abs64(a), abs64(bt).transpose(0, 1)), g));
}
