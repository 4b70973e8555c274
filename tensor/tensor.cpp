// Tensor handles, storage, views and conversions.
#include "tensor/tensor.h"

#include <cmath>
#include <numeric>

#include "tensor/autograd.h"
#include "tensor/backend.h"
#include "tensor/half.h"

namespace st {

std::string shape_str(const Shape& s) {
  std::string r = "[";
  for (size_t i = 0; i < s.size(); ++i) {
    if (i) r += ", ";
    r += std::to_string(s[i]);
  }
  return r + "]";
}

int64_t shape_numel(const Shape& s) {
  int64_t n = 1;
  for (auto d : s) n *= d;
  return n;
}

Shape contiguous_strides(const Shape& shape) {
  Shape st(shape.size());
  int64_t acc = 1;
  for (size_t i = shape.size(); i-- > 0;) {
    st[i] = acc;
    acc *= std::max<int64_t>(shape[i], 1);
  }
  return st;
}

// ---------------- Storage ----------------
Storage::Storage(size_t n, Device dev) : nbytes(n), device(dev) {
  data = backend_for(dev).allocate(n, dev.index);
}
Storage::~Storage() {
  if (data) backend_for(device).deallocate(data, nbytes, device.index);
}

// ---------------- factories ----------------
static Tensor make(const Shape& shape, DType dtype, Device device) {
  for (auto d : shape) ST_CHECK(d >= 0, "Tensor: negative dimension in shape ", shape);
  auto impl = std::make_shared<TensorImpl>();
  size_t nbytes = size_t(shape_numel(shape)) * dtype_size(dtype);
  impl->storage = std::make_shared<Storage>(nbytes, device);
  impl->shape = shape;
  impl->strides = contiguous_strides(shape);
  impl->dtype = dtype;
  return Tensor(std::move(impl));
}

Tensor Tensor::empty(const Shape& shape, DType dtype, Device device) {
  return make(shape, dtype, device);
}
Tensor Tensor::zeros(const Shape& shape, DType dtype, Device device) {
  Tensor t = make(shape, dtype, device);
  t.fill_(0.0);
  return t;
}
Tensor Tensor::full(const Shape& shape, double value, DType dtype, Device device) {
  Tensor t = make(shape, dtype, device);
  t.fill_(value);
  return t;
}

template <class T>
Tensor Tensor::from_vector(const std::vector<T>& values, const Shape& shape) {
  ST_CHECK(int64_t(values.size()) == shape_numel(shape), "from_vector: ", values.size(),
           " values for shape ", shape);
  Tensor t = make(shape, dtype_of<T>(), Device::cpu());
  std::copy(values.begin(), values.end(), t.data<T>());
  return t;
}
template Tensor Tensor::from_vector(const std::vector<float>&, const Shape&);
template Tensor Tensor::from_vector(const std::vector<double>&, const Shape&);
template Tensor Tensor::from_vector(const std::vector<uint8_t>&, const Shape&);
template Tensor Tensor::from_vector(const std::vector<int32_t>&, const Shape&);
template Tensor Tensor::from_vector(const std::vector<int64_t>&, const Shape&);

namespace {
struct SplitMix {
  uint64_t s;
  uint64_t next() {
    uint64_t z = (s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  double uniform() { return double(next() >> 11) * (1.0 / 9007199254740992.0); }
};
}  // namespace

Tensor Tensor::uniform(const Shape& shape, double lo, double hi, uint64_t seed, DType dtype) {
  SplitMix rng{seed};
  std::vector<double> v(size_t(shape_numel(shape)));
  for (auto& x : v) x = lo + (hi - lo) * rng.uniform();
  return Tensor::from_vector(v, shape).to(dtype);
}

Tensor Tensor::randn(const Shape& shape, uint64_t seed, DType dtype) {
  SplitMix rng{seed};
  std::vector<double> v(size_t(shape_numel(shape)));
  for (auto& x : v) {
    double u1 = std::max(rng.uniform(), 1e-300), u2 = rng.uniform();
    x = std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
  }
  return Tensor::from_vector(v, shape).to(dtype);
}

// ---------------- properties ----------------
static TensorImpl& checked(const std::shared_ptr<TensorImpl>& p) {
  ST_CHECK(p != nullptr, "operation on an undefined tensor");
  return *p;
}
const Shape& Tensor::shape() const { return checked(impl_).shape; }
const Shape& Tensor::strides() const { return checked(impl_).strides; }
int64_t Tensor::offset() const { return checked(impl_).offset; }
int64_t Tensor::numel() const { return shape_numel(shape()); }
DType Tensor::dtype() const { return checked(impl_).dtype; }
Device Tensor::device() const { return checked(impl_).storage->device; }
const std::shared_ptr<Storage>& Tensor::storage() const { return checked(impl_).storage; }

int64_t Tensor::size(int64_t d) const {
  int64_t n = dim();
  ST_CHECK(d >= -n && d < n, "size(", d, "): tensor has ", n, " dims");
  return shape()[size_t(d < 0 ? d + n : d)];
}

bool Tensor::is_contiguous() const {
  if (numel() == 0) return true;  // nothing to lay out
  const auto& sh = shape();
  const auto& st = strides();
  int64_t acc = 1;
  for (size_t i = sh.size(); i-- > 0;) {
    if (sh[i] != 1 && st[i] != acc) return false;
    acc *= sh[i];
  }
  return true;
}

std::string Tensor::str() const {
  if (!defined()) return "undefined";
  return std::string(dtype_name(dtype())) + shape_str(shape()) + " " + device().str();
}

void* Tensor::raw_data() const {
  auto& t = checked(impl_);
  return static_cast<char*>(t.storage->data) + t.offset * int64_t(dtype_size(t.dtype));
}

const std::string& Tensor::name() const { return checked(impl_).name; }
Tensor& Tensor::set_name(std::string n) {
  checked(impl_).name = std::move(n);
  return *this;
}

// ---------------- views ----------------
static Tensor view_of(const Tensor& base, Shape shape, Shape strides, int64_t offset) {
  auto impl = std::make_shared<TensorImpl>();
  impl->storage = base.storage();
  impl->shape = std::move(shape);
  impl->strides = std::move(strides);
  impl->offset = offset;
  impl->dtype = base.dtype();
  return Tensor(std::move(impl));
}

static int64_t wrap_dim(int64_t d, int64_t n, const char* op) {
  ST_CHECK(d >= -n && d < n, op, ": dim ", d, " out of range for a ", n, "-d tensor");
  return d < 0 ? d + n : d;
}

Tensor Tensor::slice(int64_t dim_, int64_t start, int64_t end, int64_t step) const {
  int64_t d = wrap_dim(dim_, dim(), "slice");
  ST_CHECK(step >= 1, "slice: step must be >= 1, got ", step);
  int64_t n = shape()[size_t(d)];
  if (start < 0) start += n;
  if (end < 0) end += n;
  start = std::clamp<int64_t>(start, 0, n);
  end = std::clamp<int64_t>(end, start, n);
  Shape sh = shape(), stv = strides();
  sh[size_t(d)] = (end - start + step - 1) / step;
  stv[size_t(d)] *= step;
  Tensor out = view_of(*this, sh, stv, offset() + start * strides()[size_t(d)]);
  if (any_requires_grad({this})) {
    Shape in_shape = shape();
    DType dt = dtype();
    Device dev = device();
    auto node = std::make_shared<LambdaNode>(
        "slice", [=](const LambdaNode&, const Tensor& g) -> std::vector<Tensor> {
          Tensor gx = Tensor::zeros(in_shape, dt, dev);
          Tensor dst = gx.slice(d, start, end, step);
          count_backward_kernel("slice.grad_input");
          dst.copy_(g);
          return {gx};
        });
    record(node, {this}, out);
  }
  return out;
}

Tensor Tensor::permute(const std::vector<int64_t>& order) const {
  int64_t n = dim();
  ST_CHECK(int64_t(order.size()) == n, "permute: ", order.size(), " dims given for a ", n,
           "-d tensor");
  std::vector<bool> seen(size_t(n), false);
  Shape sh(static_cast<size_t>(n)), stv(static_cast<size_t>(n));
  std::vector<int64_t> inverse(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    int64_t d = wrap_dim(order[size_t(i)], n, "permute");
    ST_CHECK(!seen[size_t(d)], "permute: dim ", d, " repeated");
    seen[size_t(d)] = true;
    sh[size_t(i)] = shape()[size_t(d)];
    stv[size_t(i)] = strides()[size_t(d)];
    inverse[size_t(d)] = i;
  }
  Tensor out = view_of(*this, sh, stv, offset());
  if (any_requires_grad({this})) {
    auto node = std::make_shared<LambdaNode>(
        "permute", [inverse](const LambdaNode&, const Tensor& g) -> std::vector<Tensor> {
          return {g.permute(inverse)};
        });
    record(node, {this}, out);
  }
  return out;
}

Tensor Tensor::transpose(int64_t d0, int64_t d1) const {
  std::vector<int64_t> order(static_cast<size_t>(dim()));
  std::iota(order.begin(), order.end(), 0);
  std::swap(order[size_t(wrap_dim(d0, dim(), "transpose"))],
            order[size_t(wrap_dim(d1, dim(), "transpose"))]);
  return permute(order);
}

Tensor Tensor::expand(const Shape& target) const {
  ST_CHECK(target.size() >= shape().size(), "expand: cannot expand ", shape(), " to ", target);
  size_t lead = target.size() - shape().size();
  Shape stv(target.size(), 0);
  for (size_t i = 0; i < target.size(); ++i) {
    if (i < lead) continue;
    int64_t s = shape()[i - lead];
    ST_CHECK(s == target[i] || s == 1, "expand: cannot expand ", shape(), " to ", target);
    stv[i] = (s == target[i]) ? strides()[i - lead] : 0;
  }
  Tensor out = view_of(*this, target, stv, offset());
  if (any_requires_grad({this})) {
    Shape in_shape = shape();
    auto node = std::make_shared<LambdaNode>(
        "expand", [in_shape, lead](const LambdaNode&, const Tensor& g) -> std::vector<Tensor> {
          // Sum over broadcast dims, then drop the leading ones.
          Shape keep(g.shape().size(), 1);
          for (size_t i = lead; i < keep.size(); ++i) keep[i] = in_shape[i - lead];
          if (keep == g.shape()) return {g.reshape(in_shape)};
          Tensor gc = g.contiguous();
          Tensor r = Tensor::empty(keep, g.dtype(), g.device());
          count_backward_kernel("expand.grad_input");
          backend_for(g.device()).sum_to(gc, r);
          return {r.reshape(in_shape)};
        });
    record(node, {this}, out);
  }
  return out;
}

Tensor Tensor::reshape(const Shape& target_in) const {
  Shape target = target_in;
  int64_t known = 1, infer = -1;
  for (size_t i = 0; i < target.size(); ++i) {
    if (target[i] == -1) {
      ST_CHECK(infer < 0, "reshape: more than one -1 in ", target_in);
      infer = int64_t(i);
    } else {
      ST_CHECK(target[i] >= 0, "reshape: bad size in ", target_in);
      known *= target[i];
    }
  }
  if (infer >= 0) {
    ST_CHECK(known > 0 && numel() % known == 0, "reshape: cannot reshape ", shape(), " to ",
             target_in);
    target[size_t(infer)] = numel() / known;
  }
  ST_CHECK(shape_numel(target) == numel(), "reshape: cannot reshape ", shape(), " (", numel(),
           " elements) to ", target_in);
  Tensor src = contiguous();
  Tensor out = view_of(src, target, contiguous_strides(target), src.offset());
  if (any_requires_grad({&src})) {
    Shape in_shape = src.shape();
    auto node = std::make_shared<LambdaNode>(
        "reshape", [in_shape](const LambdaNode&, const Tensor& g) -> std::vector<Tensor> {
          return {g.reshape(in_shape)};
        });
    record(node, {&src}, out);
  }
  return out;
}

// ---------------- copies and conversions ----------------
void Tensor::fill_(double value) {
  if (numel() == 0) return;
  if (!is_contiguous()) {  // fill a dense buffer, then place it through the view
    copy_(Tensor::full(shape(), value, dtype(), device()));
    return;
  }
  backend_for(device()).fill(*this, value);
}

void Tensor::copy_(const Tensor& src) {
  ST_CHECK(src.shape() == shape(), "copy_: shape mismatch, destination ", shape(), " source ",
           src.shape());
  if (numel() == 0) return;
  if (src.device() == device()) {
    backend_for(device()).copy(src, *this);
    return;
  }
  // Across devices: bring the source to a contiguous buffer of the destination's dtype, then
  // move bytes, then place them.
  NoGradGuard ng;
  Tensor s = src.to(dtype()).contiguous();
  Tensor staging = is_contiguous() ? *this : Tensor::empty(shape(), dtype(), device());
  Backend& b = backend_for(device().is_cpu() ? s.device() : device());
  // `s` may be a temporary, freed when this returns: the backend's memcpy is ordered after the
  // work that produced its source and done with it before it returns (the CUDA backend, between
  // two GPUs: an event from the source's stream, then a wait for the copy; cuda/backend.cu).
  b.memcpy(staging.raw_data(), device(), s.raw_data(), s.device(),
           size_t(numel()) * dtype_size(dtype()));
  if (staging.raw_data() != raw_data()) backend_for(device()).copy(staging, *this);
}

Tensor Tensor::contiguous() const {
  if (is_contiguous()) return *this;
  return clone();
}

Tensor Tensor::clone() const {
  Tensor out = Tensor::empty(shape(), dtype(), device());
  if (numel()) backend_for(device()).copy(*this, out);
  if (any_requires_grad({this})) {
    auto node = std::make_shared<LambdaNode>(
        "clone", [](const LambdaNode&, const Tensor& g) -> std::vector<Tensor> { return {g}; });
    record(node, {this}, out);
  }
  return out;
}

Tensor Tensor::to(Device dev) const {
  if (dev == device()) return *this;
  Tensor out = Tensor::empty(shape(), dtype(), dev);
  out.copy_(*this);
  if (any_requires_grad({this})) {
    Device back = device();
    auto node = std::make_shared<LambdaNode>(
        "to_device", [back](const LambdaNode&, const Tensor& g) -> std::vector<Tensor> {
          return {g.to(back)};
        });
    record(node, {this}, out);
  }
  return out;
}

Tensor Tensor::to(DType dt) const {
  if (dt == dtype()) return *this;
  Tensor out = Tensor::empty(shape(), dt, device());
  if (numel()) backend_for(device()).copy(*this, out);
  if (any_requires_grad({this}) && is_floating(dt) && is_floating(dtype())) {
    DType back = dtype();
    auto node = std::make_shared<LambdaNode>(
        "to_dtype", [back](const LambdaNode&, const Tensor& g) -> std::vector<Tensor> {
          return {g.to(back)};
        });
    record(node, {this}, out);
  }
  return out;
}

template <class T>
std::vector<T> Tensor::to_vector() const {
  Tensor c = to(Device::cpu()).to(dtype_of<T>()).contiguous();
  const T* p = c.data<T>();
  return std::vector<T>(p, p + c.numel());
}
template std::vector<float> Tensor::to_vector() const;
template std::vector<double> Tensor::to_vector() const;
template std::vector<uint8_t> Tensor::to_vector() const;
template std::vector<int32_t> Tensor::to_vector() const;
template std::vector<int64_t> Tensor::to_vector() const;

double Tensor::item() const {
  ST_CHECK(numel() == 1, "item(): tensor has ", numel(), " elements, expected 1");
  return to_vector<double>()[0];
}

double Tensor::at(const std::vector<int64_t>& index) const {
  ST_CHECK(int64_t(index.size()) == dim(), "at(): ", index.size(), " indices for ", str());
  for (size_t i = 0; i < index.size(); ++i) {
    ST_CHECK(index[i] >= 0 && index[i] < shape()[i], "at(): index ", index[i], " out of range in dim ", i, " of ", str());
  }
  int64_t off = offset();
  for (size_t i = 0; i < index.size(); ++i) off += index[i] * strides()[i];
  return view_of(*this, {}, {}, off).item();
}

// ---------------- autograd accessors ----------------
bool Tensor::requires_grad() const { return checked(impl_).requires_grad; }
bool Tensor::is_leaf() const { return checked(impl_).grad_fn == nullptr; }
const std::shared_ptr<Node>& Tensor::grad_fn() const { return checked(impl_).grad_fn; }

Tensor& Tensor::set_requires_grad(bool on) {
  ST_CHECK(is_leaf(), "set_requires_grad: only leaves can be marked (this tensor is the output of ",
           grad_fn()->name(), ")");
  ST_CHECK(!on || is_floating(dtype()), "set_requires_grad: dtype ", dtype(),
           " cannot require a gradient");
  impl_->requires_grad = on;
  return *this;
}

Tensor Tensor::grad() const {
  auto& g = checked(impl_).grad;
  return g ? Tensor(g) : Tensor();
}
void Tensor::set_grad(const Tensor& g) {
  if (g.defined())
    ST_CHECK(g.shape() == shape(), "set_grad: gradient shape ", g.shape(), " != tensor shape ",
             shape());
  checked(impl_).grad = g.impl_ptr();
}

Tensor Tensor::detach() const {
  return view_of(*this, shape(), strides(), offset());
}

void Tensor::backward(const Tensor& grad) const { run_backward(*this, grad); }

}  // namespace st
