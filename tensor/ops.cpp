// Differentiable operations: checks, dispatch to the backend, and their backward functions.
#include "tensor/ops.h"

#include <cmath>

#include "tensor/autograd.h"

namespace st {

namespace {

Backend& be(const Tensor& t) { return backend_for(t.device()); }

void check_defined(const char* op, const Tensor& t, const char* what) {
  ST_CHECK(t.defined(), op, ": ", what, " is undefined");
}

// Same device and dtype as `ref`; floating point (f32/f64 for compute).
void check_like(const char* op, const Tensor& ref, const Tensor& t, const char* what) {
  check_defined(op, t, what);
  ST_CHECK(t.device() == ref.device(), op, ": ", what, " is on ", t.device(), " but the input is on ",
           ref.device());
  ST_CHECK(t.dtype() == ref.dtype(), op, ": ", what, " has dtype ", t.dtype(),
           " but the input has dtype ", ref.dtype());
}

void check_compute_dtype(const char* op, const Tensor& t) {
  check_defined(op, t, "input");
  ST_CHECK(t.dtype() == DType::F32 || t.dtype() == DType::F64, op, ": dtype ", t.dtype(),
           " is not supported (f32 or f64; convert with .to())");
}

void check_nchw(const char* op, const Tensor& t, const char* what = "input") {
  ST_CHECK(t.dim() == 4, op, ": ", what, " must be 4-D (N,C,H,W), got shape ", t.shape());
}

Tensor like(const Tensor& ref, const Shape& shape) {
  return Tensor::empty(shape, ref.dtype(), ref.device());
}

Tensor empty_like(const Tensor& t) { return like(t, t.shape()); }

}  // namespace

// ---------------- element-wise ----------------
static Tensor unary_op(const char* op_name, UnaryOp op, const Tensor& x_in, double alpha) {
  check_compute_dtype(op_name, x_in);
  Tensor x = x_in.contiguous();
  Tensor y = empty_like(x);
  if (x.numel()) be(x).unary(op, x, y, alpha);
  if (any_requires_grad({&x})) {
    // relu/sigmoid differentiate through their output; scale/add need nothing saved.
    Tensor saved = (op == UnaryOp::Relu || op == UnaryOp::Sigmoid) ? y.detach() : Tensor();
    std::string kind = std::string(op_name) + ".grad_input";
    auto node = std::make_shared<LambdaNode>(
        op_name, [=](const LambdaNode&, const Tensor& g_in) -> std::vector<Tensor> {
          if (op == UnaryOp::AddScalar) return {g_in};
          Tensor g = g_in.contiguous();
          Tensor gx = empty_like(g);
          count_backward_kernel(kind.c_str());
          if (g.numel()) be(g).unary_backward(op, g, saved, gx, alpha);
          return {gx};
        });
    record(node, {&x}, y);
  }
  return y;
}

Tensor relu(const Tensor& x) { return unary_op("relu", UnaryOp::Relu, x, 0); }
Tensor sigmoid(const Tensor& x) { return unary_op("sigmoid", UnaryOp::Sigmoid, x, 0); }
Tensor mul_scalar(const Tensor& x, double a) { return unary_op("mul_scalar", UnaryOp::Scale, x, a); }
Tensor add_scalar(const Tensor& x, double a) {
  return unary_op("add_scalar", UnaryOp::AddScalar, x, a);
}

Shape broadcast_shapes(const Shape& a, const Shape& b) {
  size_t n = std::max(a.size(), b.size());
  Shape out(n);
  for (size_t i = 0; i < n; ++i) {
    int64_t da = i < n - a.size() ? 1 : a[i - (n - a.size())];
    int64_t db = i < n - b.size() ? 1 : b[i - (n - b.size())];
    ST_CHECK(da == db || da == 1 || db == 1, "broadcast: shapes ", a, " and ", b,
             " are not compatible");
    out[i] = da == 1 ? db : da;
  }
  return out;
}

static Tensor binary_op(const char* op_name, BinaryOp op, const Tensor& a, const Tensor& b) {
  check_compute_dtype(op_name, a);
  check_like(op_name, a, b, "second operand");
  Shape out_shape = broadcast_shapes(a.shape(), b.shape());
  Tensor y = like(a, out_shape);
  Tensor ae = a.detach().expand(out_shape), bexp = b.detach().expand(out_shape);
  if (y.numel()) be(a).binary(op, ae, bexp, y);
  if (any_requires_grad({&a, &b})) {
    Tensor sa = op == BinaryOp::Mul ? b.detach() : Tensor();  // d(a*b)/da = b
    Tensor sb = op == BinaryOp::Mul ? a.detach() : Tensor();
    Shape sha = a.shape(), shb = b.shape();
    std::string ka = std::string(op_name) + ".grad_a", kb = std::string(op_name) + ".grad_b";
    auto node = std::make_shared<LambdaNode>(
        op_name, [=](const LambdaNode& n, const Tensor& g) -> std::vector<Tensor> {
          auto reduce = [&](Tensor full, const Shape& target) {
            if (full.shape() == target) return full;
            // Sum over the broadcast dims: pad the target with leading 1s to full rank.
            Shape keep(full.shape().size(), 1);
            size_t lead = keep.size() - target.size();
            for (size_t i = 0; i < target.size(); ++i) keep[lead + i] = target[i];
            Tensor r = like(full, keep);
            be(full).sum_to(full.contiguous(), r);
            return r.reshape(target);
          };
          std::vector<Tensor> out(2);
          for (int i = 0; i < 2; ++i) {
            if (!n.needs_input_grad(size_t(i))) continue;
            count_backward_kernel((i == 0 ? ka : kb).c_str());
            Tensor full = g;
            if (op == BinaryOp::Mul) {
              full = like(g, g.shape());
              const Tensor& other = i == 0 ? sa : sb;
              be(g).binary(BinaryOp::Mul, g, other.expand(g.shape()), full);
            }
            out[size_t(i)] = reduce(full, i == 0 ? sha : shb);
          }
          return out;
        });
    record(node, {&a, &b}, y);
  }
  return y;
}

Tensor add(const Tensor& a, const Tensor& b) { return binary_op("add", BinaryOp::Add, a, b); }
Tensor mul(const Tensor& a, const Tensor& b) { return binary_op("mul", BinaryOp::Mul, a, b); }

// ---------------- reductions ----------------
Tensor sum(const Tensor& x) {
  check_compute_dtype("sum", x);
  Tensor y = like(x, {});
  be(x).sum_all(x, y);
  if (any_requires_grad({&x})) {
    Shape sh = x.shape();
    auto node = std::make_shared<LambdaNode>(
        "sum", [sh](const LambdaNode&, const Tensor& g) -> std::vector<Tensor> {
          return {g.reshape({}).expand(sh)};
        });
    record(node, {&x}, y);
  }
  return y;
}

Tensor mean(const Tensor& x) {
  ST_CHECK(x.defined() && x.numel() > 0, "mean: empty tensor");
  return mul_scalar(sum(x), 1.0 / double(x.numel()));
}

// ---------------- convolution ----------------
static void check_conv(const char* op, const Tensor& x, const Tensor& w, const Tensor& bias,
                       const Conv2dParams& p, int64_t w_in_per_group, int64_t out_channels) {
  check_compute_dtype(op, x);
  check_nchw(op, x);
  check_like(op, x, w, "weight");
  ST_CHECK(w.dim() == 4, op, ": weight must be 4-D, got shape ", w.shape());
  ST_CHECK(p.groups >= 1, op, ": groups must be >= 1, got ", p.groups);
  ST_CHECK(p.stride_h >= 1 && p.stride_w >= 1, op, ": stride must be >= 1");
  ST_CHECK(p.pad_h >= 0 && p.pad_w >= 0, op, ": padding must be >= 0");
  ST_CHECK(x.size(1) % p.groups == 0, op, ": input channels ", x.size(1),
           " not divisible by groups ", p.groups);
  ST_CHECK(x.size(1) / p.groups == w_in_per_group, op, ": input has ", x.size(1),
           " channels but weight ", w.shape(), " expects ", w_in_per_group * p.groups,
           " (groups=", p.groups, ")");
  ST_CHECK(out_channels % p.groups == 0, op, ": output channels ", out_channels,
           " not divisible by groups ", p.groups);
  if (bias.defined()) {
    check_like(op, x, bias, "bias");
    ST_CHECK(bias.dim() == 1 && bias.size(0) == out_channels, op, ": bias shape ", bias.shape(),
             " does not match ", out_channels, " output channels");
  }
}

Tensor conv2d(const Tensor& x_in, const Tensor& w_in, const Tensor& bias_in,
              const Conv2dParams& p) {
  check_defined("conv2d", w_in, "weight");
  check_conv("conv2d", x_in, w_in, bias_in, p, w_in.dim() == 4 ? w_in.size(1) : -1,
             w_in.dim() == 4 ? w_in.size(0) : -1);
  Tensor x = x_in.contiguous(), w = w_in.contiguous();
  Tensor bias = bias_in.defined() ? bias_in.contiguous() : Tensor();
  int64_t oh = (x.size(2) + 2 * p.pad_h - w.size(2)) / p.stride_h + 1;
  int64_t ow = (x.size(3) + 2 * p.pad_w - w.size(3)) / p.stride_w + 1;
  ST_CHECK(x.size(2) + 2 * p.pad_h >= w.size(2) && x.size(3) + 2 * p.pad_w >= w.size(3),
           "conv2d: kernel ", w.size(2), "x", w.size(3), " larger than padded input ", x.shape());
  Tensor y = like(x, {x.size(0), w.size(0), oh, ow});
  be(x).conv2d_forward(x, w, bias.defined() ? &bias : nullptr, p, y);
  if (any_requires_grad({&x, &w, &bias})) {
    // Save only what backward will use: x for the weight gradient, w for the input gradient.
    bool need_x = w.requires_grad(), need_w = x.requires_grad();
    Tensor sx = need_x ? x.detach() : Tensor(), sw = need_w ? w.detach() : Tensor();
    Shape xs = x.shape(), wsh = w.shape();
    auto node = std::make_shared<LambdaNode>(
        "conv2d", [=](const LambdaNode& n, const Tensor& g_in) -> std::vector<Tensor> {
          Tensor g = g_in.contiguous();
          std::vector<Tensor> out(3);
          if (n.needs_input_grad(0)) {
            count_backward_kernel("conv2d.grad_input");
            out[0] = like(g, xs);
            be(g).conv2d_backward_data(g, sw, p, out[0]);
          }
          if (n.needs_input_grad(1)) {
            count_backward_kernel("conv2d.grad_weight");
            out[1] = like(g, wsh);
            be(g).conv2d_backward_weight(g, sx, p, out[1]);
          }
          if (n.needs_input_grad(2)) {
            count_backward_kernel("conv2d.grad_bias");
            out[2] = like(g, {wsh[0]});
            be(g).conv2d_backward_bias(g, out[2]);
          }
          return out;
        });
    record(node, {&x, &w, &bias}, y);
  }
  return y;
}

Tensor conv_transpose2d(const Tensor& x_in, const Tensor& w_in, const Tensor& bias_in,
                        const Conv2dParams& p) {
  check_defined("conv_transpose2d", w_in, "weight");
  ST_CHECK(!any_requires_grad({&x_in, &w_in, &bias_in}),
           "conv_transpose2d: backward is not implemented (forward only); use NoGradGuard");
  ST_CHECK(w_in.dim() == 4, "conv_transpose2d: weight must be 4-D, got shape ", w_in.shape());
  // Weight (C_in, C_out/groups, kh, kw): input channels per group = C_in/groups.
  ST_CHECK(p.groups >= 1 && w_in.size(0) % p.groups == 0, "conv_transpose2d: weight ",
           w_in.shape(), " not divisible by groups ", p.groups);
  check_conv("conv_transpose2d", x_in, w_in, bias_in, p, w_in.size(0) / p.groups,
             w_in.size(1) * p.groups);
  ST_CHECK(p.output_pad_h >= 0 && p.output_pad_w >= 0 &&
               (p.output_pad_h < p.stride_h) && (p.output_pad_w < p.stride_w),
           "conv_transpose2d: output padding must be smaller than the stride");
  Tensor x = x_in.contiguous(), w = w_in.contiguous();
  Tensor bias = bias_in.defined() ? bias_in.contiguous() : Tensor();
  int64_t oh = (x.size(2) - 1) * p.stride_h - 2 * p.pad_h + w.size(2) + p.output_pad_h;
  int64_t ow = (x.size(3) - 1) * p.stride_w - 2 * p.pad_w + w.size(3) + p.output_pad_w;
  ST_CHECK(oh > 0 && ow > 0, "conv_transpose2d: output size ", oh, "x", ow, " is empty");
  Tensor y = like(x, {x.size(0), w.size(1) * p.groups, oh, ow});
  be(x).conv_transpose2d_forward(x, w, bias.defined() ? &bias : nullptr, p, y);
  return y;
}

// ---------------- batch norm ----------------
static void check_bn(const char* op, const Tensor& x, const Tensor& t, const char* what) {
  check_like(op, x, t, what);
  ST_CHECK(t.dim() == 1 && t.size(0) == x.size(1), op, ": ", what, " shape ", t.shape(),
           " does not match ", x.size(1), " channels");
}

Tensor batch_norm(const Tensor& x_in, const Tensor& gamma_in, const Tensor& beta_in, double eps) {
  check_compute_dtype("batch_norm", x_in);
  check_nchw("batch_norm", x_in);
  check_bn("batch_norm", x_in, gamma_in, "weight");
  check_bn("batch_norm", x_in, beta_in, "bias");
  ST_CHECK(eps > 0, "batch_norm: eps must be positive");
  ST_CHECK(x_in.size(0) * x_in.size(2) * x_in.size(3) > 0, "batch_norm: empty input ",
           x_in.shape());
  Tensor x = x_in.contiguous(), gamma = gamma_in.contiguous(), beta = beta_in.contiguous();
  Tensor y = empty_like(x), mean = like(x, {x.size(1)}), invstd = like(x, {x.size(1)});
  be(x).batch_norm_forward(x, gamma, beta, eps, y, mean, invstd);
  if (any_requires_grad({&x, &gamma, &beta})) {
    Tensor sx = x.detach(), sg = gamma.detach();
    auto node = std::make_shared<LambdaNode>(
        "batch_norm", [=](const LambdaNode& n, const Tensor& g_in) -> std::vector<Tensor> {
          Tensor g = g_in.contiguous();
          std::vector<Tensor> out(3);
          for (size_t i = 0; i < 3; ++i)
            if (n.needs_input_grad(i)) out[i] = i == 0 ? empty_like(g) : empty_like(sg);
          if (out[0].defined()) count_backward_kernel("batch_norm.grad_input");
          if (out[1].defined() || out[2].defined()) count_backward_kernel("batch_norm.grad_affine");
          be(g).batch_norm_backward(g, sx, sg, mean, invstd, out[0].defined() ? &out[0] : nullptr,
                                    out[1].defined() ? &out[1] : nullptr,
                                    out[2].defined() ? &out[2] : nullptr);
          return out;
        });
    record(node, {&x, &gamma, &beta}, y);
  }
  return y;
}

Tensor batch_norm_frozen(const Tensor& x_in, const Tensor& gamma_in, const Tensor& beta_in,
                         const Tensor& mean_in, const Tensor& var_in, double eps) {
  const char* op = "batch_norm_frozen";
  check_compute_dtype(op, x_in);
  check_nchw(op, x_in);
  check_bn(op, x_in, gamma_in, "weight");
  check_bn(op, x_in, beta_in, "bias");
  check_bn(op, x_in, mean_in, "running mean");
  check_bn(op, x_in, var_in, "running var");
  Tensor x = x_in.contiguous(), gamma = gamma_in.contiguous(), beta = beta_in.contiguous();
  Tensor mean = mean_in.contiguous().detach();
  // invstd = 1/sqrt(var + eps), computed on the host (C values).
  std::vector<double> var = var_in.to_vector<double>();
  for (auto& v : var) {
    ST_CHECK(v + eps > 0, op, ": running var + eps must be positive");
    v = 1.0 / std::sqrt(v + eps);
  }
  Tensor invstd = Tensor::from_vector(var, {x.size(1)}).to(x.dtype()).to(x.device());
  Tensor y = empty_like(x);
  be(x).batch_norm_frozen_forward(x, gamma, beta, mean, invstd, y);
  if (any_requires_grad({&x, &gamma, &beta})) {
    Tensor sx = x.detach(), sg = gamma.detach();
    auto node = std::make_shared<LambdaNode>(
        op, [=](const LambdaNode& n, const Tensor& g_in) -> std::vector<Tensor> {
          Tensor g = g_in.contiguous();
          std::vector<Tensor> out(3);
          for (size_t i = 0; i < 3; ++i)
            if (n.needs_input_grad(i)) out[i] = i == 0 ? empty_like(g) : empty_like(sg);
          if (out[0].defined()) count_backward_kernel("batch_norm_frozen.grad_input");
          if (out[1].defined() || out[2].defined())
            count_backward_kernel("batch_norm_frozen.grad_affine");
          be(g).batch_norm_frozen_backward(g, sx, sg, mean, invstd,
                                           out[0].defined() ? &out[0] : nullptr,
                                           out[1].defined() ? &out[1] : nullptr,
                                           out[2].defined() ? &out[2] : nullptr);
          return out;
        });
    record(node, {&x, &gamma, &beta}, y);
  }
  return y;
}

// ---------------- shape ----------------
Tensor cat(const std::vector<Tensor>& xs, int64_t dim) {
  ST_CHECK(!xs.empty(), "cat: no tensors given");
  const Tensor& ref = xs[0];
  check_defined("cat", ref, "tensor 0");
  int64_t nd = ref.dim();
  ST_CHECK(dim >= -nd && dim < nd, "cat: dim ", dim, " out of range for ", nd, "-d tensors");
  if (dim < 0) dim += nd;
  Shape out_shape = ref.shape();
  out_shape[size_t(dim)] = 0;
  for (size_t i = 0; i < xs.size(); ++i) {
    check_like("cat", ref, xs[i], "a tensor");
    ST_CHECK(xs[i].dim() == nd, "cat: tensor ", i, " has shape ", xs[i].shape(), ", tensor 0 has ",
             ref.shape());
    for (int64_t d = 0; d < nd; ++d)
      ST_CHECK(d == dim || xs[i].size(d) == ref.size(d), "cat: tensor ", i, " has shape ",
               xs[i].shape(), ", incompatible with ", ref.shape(), " along dim ", d);
    out_shape[size_t(dim)] += xs[i].size(dim);
  }
  Tensor y = like(ref, out_shape);
  std::vector<int64_t> starts;
  int64_t at = 0;
  for (const Tensor& t : xs) {
    starts.push_back(at);
    Tensor dst = y.detach().narrow(dim, at, t.size(dim));
    if (t.numel()) be(ref).copy(t, dst);
    at += t.size(dim);
  }
  bool any = false;
  for (const Tensor& t : xs) any = any || (grad_mode_enabled() && t.requires_grad());
  if (any) {
    std::vector<int64_t> sizes;
    for (const Tensor& t : xs) sizes.push_back(t.size(dim));
    auto node = std::make_shared<LambdaNode>(
        "cat", [=](const LambdaNode& n, const Tensor& g) -> std::vector<Tensor> {
          std::vector<Tensor> out(sizes.size());
          for (size_t i = 0; i < sizes.size(); ++i)
            if (n.needs_input_grad(i)) out[i] = g.narrow(dim, starts[i], sizes[i]);
          return out;
        });
    // record() takes an initializer list; build the edges by hand for a variable count.
    for (const Tensor& t : xs) {
      Node::Edge e;
      if (t.requires_grad()) {
        if (t.grad_fn())
          e.fn = t.grad_fn();
        else
          e.leaf = t.impl_ptr();
      }
      node->next.push_back(std::move(e));
    }
    y.impl()->grad_fn = node;
    y.impl()->requires_grad = true;
  }
  return y;
}

Tensor subsample(const Tensor& x, int64_t step) {
  check_defined("subsample", x, "input");
  check_nchw("subsample", x);
  ST_CHECK(step >= 1, "subsample: step must be >= 1, got ", step);
  return x.slice(2, 0, x.size(2), step).slice(3, 0, x.size(3), step);
}

// ---------------- resampling ----------------
static Tensor resize(const char* op, bool bilinear, const Tensor& x_in, int64_t oh, int64_t ow) {
  check_compute_dtype(op, x_in);
  check_nchw(op, x_in);
  ST_CHECK(oh > 0 && ow > 0, op, ": output size must be positive, got ", oh, "x", ow);
  ST_CHECK(x_in.size(2) > 0 && x_in.size(3) > 0, op, ": empty input ", x_in.shape());
  Tensor x = x_in.contiguous();
  Tensor y = like(x, {x.size(0), x.size(1), oh, ow});
  if (bilinear)
    be(x).resize_bilinear_forward(x, y);
  else
    be(x).resize_nearest_forward(x, y);
  if (any_requires_grad({&x})) {
    Shape xs = x.shape();
    std::string kind = std::string(op) + ".grad_input";
    auto node = std::make_shared<LambdaNode>(
        op, [=](const LambdaNode&, const Tensor& g_in) -> std::vector<Tensor> {
          Tensor g = g_in.contiguous();
          Tensor gx = like(g, xs);
          count_backward_kernel(kind.c_str());
          if (bilinear)
            be(g).resize_bilinear_backward(g, gx);
          else
            be(g).resize_nearest_backward(g, gx);
          return {gx};
        });
    record(node, {&x}, y);
  }
  return y;
}

Tensor resize_bilinear(const Tensor& x, int64_t oh, int64_t ow) {
  return resize("resize_bilinear", true, x, oh, ow);
}
Tensor resize_nearest(const Tensor& x, int64_t oh, int64_t ow) {
  return resize("resize_nearest", false, x, oh, ow);
}

Tensor max_pool2d(const Tensor& x_in, const Pool2dParams& p) {
  const char* op = "max_pool2d";
  check_compute_dtype(op, x_in);
  check_nchw(op, x_in);
  ST_CHECK(p.kernel_h >= 1 && p.kernel_w >= 1 && p.stride_h >= 1 && p.stride_w >= 1, op,
           ": kernel and stride must be >= 1");
  ST_CHECK(p.pad_h >= 0 && p.pad_w >= 0 && 2 * p.pad_h <= p.kernel_h && 2 * p.pad_w <= p.kernel_w,
           op, ": padding must be between 0 and half the kernel size");
  Tensor x = x_in.contiguous();
  int64_t oh = (x.size(2) + 2 * p.pad_h - p.kernel_h) / p.stride_h + 1;
  int64_t ow = (x.size(3) + 2 * p.pad_w - p.kernel_w) / p.stride_w + 1;
  ST_CHECK(oh > 0 && ow > 0, op, ": input ", x.shape(), " too small for the kernel");
  Tensor y = like(x, {x.size(0), x.size(1), oh, ow});
  Tensor idx = Tensor::empty(y.shape(), DType::I64, x.device());
  be(x).max_pool2d_forward(x, p, y, idx);
  if (any_requires_grad({&x})) {
    Shape xs = x.shape();
    auto node = std::make_shared<LambdaNode>(
        op, [=](const LambdaNode&, const Tensor& g_in) -> std::vector<Tensor> {
          Tensor g = g_in.contiguous();
          Tensor gx = like(g, xs);
          count_backward_kernel("max_pool2d.grad_input");
          be(g).max_pool2d_backward(g, idx, gx);
          return {gx};
        });
    record(node, {&x}, y);
  }
  return y;
}

// ---------------- softmax family ----------------
static Tensor softmax_impl(const char* op, bool log, const Tensor& x_in) {
  check_compute_dtype(op, x_in);
  ST_CHECK(x_in.dim() >= 2, op, ": input must have a channel dim (N,C,...), got ", x_in.shape());
  Tensor x = x_in.contiguous();
  Tensor y = empty_like(x);
  if (x.numel()) be(x).softmax_channels(x, log, y);
  if (any_requires_grad({&x})) {
    Tensor sy = y.detach();
    std::string kind = std::string(op) + ".grad_input";
    auto node = std::make_shared<LambdaNode>(
        op, [=](const LambdaNode&, const Tensor& g_in) -> std::vector<Tensor> {
          Tensor g = g_in.contiguous();
          Tensor gx = empty_like(g);
          count_backward_kernel(kind.c_str());
          if (g.numel()) be(g).softmax_channels_backward(g, sy, log, gx);
          return {gx};
        });
    record(node, {&x}, y);
  }
  return y;
}

Tensor softmax_channels(const Tensor& x) { return softmax_impl("softmax_channels", false, x); }
Tensor log_softmax_channels(const Tensor& x) {
  return softmax_impl("log_softmax_channels", true, x);
}

Tensor weighted_cross_entropy(const Tensor& logits_in, const Tensor& target_in,
                              const Tensor& weight_in) {
  const char* op = "weighted_cross_entropy";
  check_compute_dtype(op, logits_in);
  check_nchw(op, logits_in, "logits");
  check_defined(op, target_in, "target");
  check_defined(op, weight_in, "weight");
  Shape pix{logits_in.size(0), logits_in.size(2), logits_in.size(3)};
  ST_CHECK(target_in.shape() == pix, op, ": target shape ", target_in.shape(),
           " does not match logits ", logits_in.shape(), " (expected ", pix, ")");
  ST_CHECK(weight_in.shape() == pix, op, ": weight shape ", weight_in.shape(),
           " does not match logits ", logits_in.shape(), " (expected ", pix, ")");
  ST_CHECK(target_in.dtype() == DType::U8 || target_in.dtype() == DType::I32 ||
               target_in.dtype() == DType::I64,
           op, ": target must be an integer tensor (u8, i32, i64), got ", target_in.dtype());
  ST_CHECK(target_in.device() == logits_in.device(), op, ": target is on ", target_in.device(),
           " but logits are on ", logits_in.device());
  check_like(op, logits_in, weight_in, "weight");
  ST_CHECK(shape_numel(pix) > 0, op, ": no pixels");
  Tensor logits = logits_in.contiguous();
  Tensor target = target_in.to(DType::I64).contiguous();
  Tensor weight = weight_in.contiguous().detach();
  Tensor loss = like(logits, {});
  be(logits).weighted_cross_entropy_forward(logits, target, weight, loss);
  if (any_requires_grad({&logits})) {
    Tensor sl = logits.detach();
    auto node = std::make_shared<LambdaNode>(
        op, [=](const LambdaNode&, const Tensor& g) -> std::vector<Tensor> {
          Tensor gl = empty_like(sl);
          count_backward_kernel("weighted_cross_entropy.grad_input");
          be(sl).weighted_cross_entropy_backward(g.contiguous(), sl, target, weight, gl);
          return {gl};
        });
    record(node, {&logits}, loss);
  }
  return loss;
}

Tensor argmax_channels(const Tensor& x_in) {
  check_compute_dtype("argmax_channels", x_in);
  check_nchw("argmax_channels", x_in);
  ST_CHECK(x_in.size(1) > 0, "argmax_channels: no channels");
  Tensor x = x_in.contiguous();
  Tensor out = Tensor::empty({x.size(0), x.size(2), x.size(3)}, DType::I64, x.device());
  if (out.numel()) be(x).argmax_channels(x, out);
  return out;
}

// ---------------- dense ----------------
Tensor matmul(const Tensor& a, const Tensor& b) {
  check_compute_dtype("matmul", a);
  check_like("matmul", a, b, "second operand");
  ST_CHECK(a.dim() == 2 && b.dim() == 2, "matmul: both operands must be 2-D, got ", a.shape(),
           " and ", b.shape());
  ST_CHECK(a.size(1) == b.size(0), "matmul: inner dimensions differ: ", a.shape(), " @ ",
           b.shape());
  Tensor y = like(a, {a.size(0), b.size(1)});
  be(a).matmul(a, b, y);
  if (any_requires_grad({&a, &b})) {
    Tensor sa = b.requires_grad() ? a.detach() : Tensor();
    Tensor sb = a.requires_grad() ? b.detach() : Tensor();
    auto node = std::make_shared<LambdaNode>(
        "matmul", [=](const LambdaNode& n, const Tensor& g) -> std::vector<Tensor> {
          std::vector<Tensor> out(2);
          if (n.needs_input_grad(0)) {  // ga = g @ b^T
            count_backward_kernel("matmul.grad_a");
            out[0] = like(g, {g.size(0), sb.size(0)});
            be(g).matmul(g, sb.transpose(0, 1), out[0]);
          }
          if (n.needs_input_grad(1)) {  // gb = a^T @ g
            count_backward_kernel("matmul.grad_b");
            out[1] = like(g, {sa.size(1), g.size(1)});
            be(g).matmul(sa.transpose(0, 1), g, out[1]);
          }
          return out;
        });
    record(node, {&a, &b}, y);
  }
  return y;
}

Tensor linear(const Tensor& x, const Tensor& weight, const Tensor& bias) {
  check_defined("linear", weight, "weight");
  ST_CHECK(weight.dim() == 2, "linear: weight must be 2-D (out,in), got ", weight.shape());
  Tensor y = matmul(x, weight.transpose(0, 1));
  if (!bias.defined()) return y;
  ST_CHECK(bias.dim() == 1 && bias.size(0) == weight.size(0), "linear: bias shape ",
           bias.shape(), " does not match ", weight.size(0), " outputs");
  return add(y, bias);
}

}  // namespace st
