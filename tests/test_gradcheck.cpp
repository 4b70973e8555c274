// Finite-difference gradient checks, in double on the CPU, for every op with a backward.
// Central differences with eps 1e-6 have truncation error O(eps^2 * f''') and rounding error
// O(1e-16 / eps) ~ 1e-10 relative, so 1e-6 relative agreement is a strict test.
#include "test_util.h"

using namespace st;
using st::test::check_gradients;
using st::test::rand64;

TEST_CASE("gradcheck: relu and sigmoid", "[gradcheck][portable]") {
  // Keep relu inputs away from the kink at 0, where finite differences straddle it.
  Tensor x = Tensor::uniform({2, 3, 4, 5}, 0.05, 1.0, 1, DType::F64);
  Tensor sign = Tensor::uniform({2, 3, 4, 5}, -1, 1, 2, DType::F64);
  std::vector<double> v = x.to_vector<double>(), s = sign.to_vector<double>();
  for (size_t i = 0; i < v.size(); ++i) v[i] *= s[i] < 0 ? -1 : 1;
  Tensor xr = Tensor::from_vector(v, {2, 3, 4, 5});
  xr.set_requires_grad(true);
  check_gradients([](auto& in) { return relu(in[0]); }, {xr});
  check_gradients([](auto& in) { return sigmoid(in[0]); }, {rand64({3, 7}, 3)});
}

TEST_CASE("gradcheck: add and mul with broadcasting, scalar ops", "[gradcheck][portable]") {
  std::vector<std::pair<Shape, Shape>> shapes = {
      {{2, 3, 4}, {2, 3, 4}}, {{2, 3, 4, 5}, {1, 3, 1, 1}}, {{2, 3, 4}, {4}},
      {{2, 1, 4, 1}, {1, 3, 1, 5}}, {{3}, {2, 3}}, {{}, {2, 2}}};
  uint64_t seed = 10;
  for (auto& [sa, sb] : shapes) {
    INFO("shapes " << shape_str(sa) << " " << shape_str(sb));
    check_gradients([](auto& in) { return add(in[0], in[1]); }, {rand64(sa, seed++), rand64(sb, seed++)});
    check_gradients([](auto& in) { return mul(in[0], in[1]); }, {rand64(sa, seed++), rand64(sb, seed++)});
  }
  check_gradients([](auto& in) { return mul_scalar(in[0], -2.5); }, {rand64({4, 3}, 30)});
  check_gradients([](auto& in) { return add_scalar(in[0], 0.7); }, {rand64({4, 3}, 31)});
  check_gradients([](auto& in) { return in[0] - in[1]; }, {rand64({4, 3}, 32), rand64({3}, 33)});
  check_gradients([](auto& in) { return mean(in[0]).reshape({1}); }, {rand64({4, 3}, 34)});
}

TEST_CASE("gradcheck: conv2d over kernel shapes, strides, padding, groups", "[gradcheck][portable]") {
  struct Case {
    Shape x, w;
    Conv2dParams p;
    bool bias;
  };
  std::vector<Case> cases = {
      {{1, 3, 6, 5}, {4, 3, 3, 3}, {1, 1, 1, 1, 1}, true},
      {{2, 3, 7, 5}, {2, 3, 3, 3}, {2, 2, 1, 1, 1}, true},
      {{1, 2, 5, 6}, {3, 2, 1, 3}, {1, 1, 0, 1, 1}, true},   // 1x3
      {{1, 2, 6, 5}, {3, 2, 3, 1}, {1, 1, 1, 0, 1}, true},   // 3x1
      {{1, 4, 7, 6}, {5, 4, 1, 1}, {2, 2, 0, 0, 1}, true},   // 1x1 stride 2
      {{1, 4, 5, 5}, {6, 2, 3, 3}, {1, 1, 1, 1, 2}, true},   // groups 2
      {{1, 3, 5, 4}, {3, 1, 3, 3}, {1, 1, 1, 1, 3}, false},  // depthwise, no bias
      {{2, 3, 1, 1}, {2, 3, 3, 3}, {1, 1, 1, 1, 1}, true},   // 1x1 spatial input
      {{1, 2, 8, 7}, {2, 2, 5, 5}, {3, 2, 2, 2, 1}, true},   // 5x5, stride (3,2)
  };
  uint64_t seed = 100;
  for (auto& c : cases) {
    INFO("x " << shape_str(c.x) << " w " << shape_str(c.w) << " groups " << c.p.groups);
    Tensor b = c.bias ? rand64({c.w[0]}, seed++) : Tensor();
    auto p = c.p;
    std::vector<Tensor> in = {rand64(c.x, seed++), rand64(c.w, seed++)};
    if (c.bias) in.push_back(b);
    check_gradients(
        [p](auto& v) { return conv2d(v[0], v[1], v.size() > 2 ? v[2] : Tensor(), p); }, in);
  }
}

TEST_CASE("gradcheck: batch norm, batch statistics and frozen", "[gradcheck][portable]") {
  for (Shape s : {Shape{2, 3, 4, 5}, Shape{1, 2, 2, 3}, Shape{3, 4, 1, 1}}) {
    INFO("shape " << shape_str(s));
    check_gradients([](auto& in) { return batch_norm(in[0], in[1], in[2], 1e-5); },
                    {rand64(s, 200), rand64({s[1]}, 201), rand64({s[1]}, 202)}, 1e-6, 1e-5);
  }
  Tensor var = Tensor::uniform({3}, 0.5, 2.0, 203, DType::F64);
  Tensor mu = Tensor::randn({3}, 204, DType::F64);
  check_gradients(
      [&](auto& in) { return batch_norm_frozen(in[0], in[1], in[2], mu, var, 1e-5); },
      {rand64({2, 3, 4, 3}, 205), rand64({3}, 206), rand64({3}, 207)});
}

TEST_CASE("gradcheck: cat, subsample, views", "[gradcheck][portable]") {
  check_gradients([](auto& in) { return cat({in[0], in[1], in[2]}, 1); },
                  {rand64({2, 2, 3, 4}, 300), rand64({2, 3, 3, 4}, 301), rand64({2, 1, 3, 4}, 302)});
  check_gradients([](auto& in) { return subsample(in[0], 2); }, {rand64({2, 3, 7, 9}, 303)});
  check_gradients([](auto& in) { return subsample(in[0], 3); }, {rand64({1, 2, 8, 8}, 304)});
  check_gradients([](auto& in) { return in[0].permute({0, 2, 3, 1}).contiguous(); },
                  {rand64({2, 3, 4, 5}, 305)});
  check_gradients([](auto& in) { return in[0].transpose(0, 1).reshape({-1}); },
                  {rand64({3, 4}, 306)});
  check_gradients([](auto& in) { return in[0].expand({3, 2, 4}); }, {rand64({2, 1}, 307)});
  check_gradients([](auto& in) { return in[0].slice(1, 1, 5, 2).clone(); },
                  {rand64({3, 6}, 308)});
}

TEST_CASE("gradcheck: bilinear and nearest resize", "[gradcheck][portable]") {
  std::vector<std::pair<Shape, std::pair<int64_t, int64_t>>> cases = {
      {{1, 2, 5, 7}, {11, 13}}, {{1, 2, 11, 13}, {5, 6}}, {{2, 1, 4, 4}, {8, 8}},
      {{1, 1, 1, 1}, {3, 5}},   {{1, 2, 6, 3}, {4, 9}}};
  uint64_t seed = 400;
  for (auto& [s, o] : cases) {
    auto [oh, ow] = o;
    INFO("in " << shape_str(s) << " out " << oh << "x" << ow);
    check_gradients([=](auto& in) { return resize_bilinear(in[0], oh, ow); }, {rand64(s, seed++)});
    check_gradients([=](auto& in) { return resize_nearest(in[0], oh, ow); }, {rand64(s, seed++)});
  }
}

TEST_CASE("gradcheck: max_pool2d", "[gradcheck][portable]") {
  // Distinct values spaced well beyond eps so the argmax is stable under perturbation.
  auto distinct = [](Shape s, uint64_t seed) {
    int64_t n = shape_numel(s);
    std::vector<double> v(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) v[size_t(i)] = double((i * 37 + int64_t(seed)) % n) * 0.01;
    Tensor t = Tensor::from_vector(v, s);
    t.set_requires_grad(true);
    return t;
  };
  check_gradients([](auto& in) { return max_pool2d(in[0], {3, 3, 2, 2, 1, 1}); },
                  {distinct({1, 2, 9, 7}, 1)});
  check_gradients([](auto& in) { return max_pool2d(in[0], {2, 2, 2, 2, 0, 0}); },
                  {distinct({2, 1, 7, 9}, 5)});
  check_gradients([](auto& in) { return max_pool2d(in[0], {3, 3, 1, 1, 1, 1}); },
                  {distinct({1, 1, 5, 7}, 3)});
}

TEST_CASE("gradcheck: softmax, log_softmax, weighted cross-entropy", "[gradcheck][portable]") {
  check_gradients([](auto& in) { return softmax_channels(in[0]); }, {rand64({2, 5, 3, 4}, 500)});
  check_gradients([](auto& in) { return log_softmax_channels(in[0]); }, {rand64({2, 5, 3, 4}, 501)});
  Tensor target = Tensor::from_vector(std::vector<int64_t>{0, 8, 3, 3, 1, 2, 8, 7, 5, 4, 6, 0},
                                      {1, 3, 4});
  Tensor weight = Tensor::from_vector(
      std::vector<double>{1, 5, 1, 1, 5, 5, 1, 1, 1, 5, 1, 1}, {1, 3, 4});
  check_gradients(
      [&](auto& in) { return weighted_cross_entropy(in[0], target, weight).reshape({1}); },
      {rand64({1, 9, 3, 4}, 502)});
}

TEST_CASE("gradcheck: matmul and linear", "[gradcheck][portable]") {
  check_gradients([](auto& in) { return matmul(in[0], in[1]); }, {rand64({3, 5}, 600), rand64({5, 7}, 601)});
  check_gradients([](auto& in) { return matmul(in[0].transpose(0, 1), in[1]); },
                  {rand64({4, 2}, 602), rand64({4, 3}, 603)});
  check_gradients([](auto& in) { return linear(in[0], in[1], in[2]); },
                  {rand64({3, 5}, 604), rand64({4, 5}, 605), rand64({4}, 606)});
}

TEST_CASE("gradcheck: a small network end to end", "[gradcheck][portable]") {
  // conv -> bn -> relu -> strided conv -> upsample -> cat -> 1x1 conv -> weighted CE.
  Tensor target = Tensor::from_vector(std::vector<int64_t>(36, 1), {1, 6, 6});
  Tensor weight = Tensor::full({1, 6, 6}, 1.0, DType::F64);
  auto net = [&](const std::vector<Tensor>& v) {
    Tensor h = relu(batch_norm(conv2d(v[0], v[1], v[2], {1, 1, 1, 1, 1}), v[3], v[4]));
    Tensor d = conv2d(h, v[5], Tensor(), {2, 2, 1, 1, 1});
    Tensor u = resize_bilinear(d, 6, 6);
    Tensor logits = conv2d(cat({u, h}, 1), v[6], Tensor(), {});
    return weighted_cross_entropy(logits, target, weight).reshape({1});
  };
  check_gradients(net, {rand64({1, 2, 6, 6}, 700), rand64({3, 2, 3, 3}, 701), rand64({3}, 702),
                        rand64({3}, 703), rand64({3}, 704), rand64({2, 3, 3, 3}, 705),
                        rand64({3, 5, 1, 1}, 706)},
                  1e-6, 1e-5);
}
