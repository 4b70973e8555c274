// Tensor: a view (shape, strides, offset) over reference-counted storage, with the autograd
// fields needed for reverse-mode differentiation (see autograd.h).
//
// Copying a Tensor copies the handle, not the data (like torch.Tensor). Views share storage.
// Kernels state the layout they need; `contiguous()` is explicit and returns `*this` when the
// tensor already is densely packed in row-major order.
#pragma once
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "tensor/dtype.h"
#include "common/error.h"

namespace st {

using Shape = std::vector<int64_t>;
std::string shape_str(const Shape& s);
int64_t shape_numel(const Shape& s);

// Throws st::Error with the concatenation of the arguments when `cond` is false.
#define ST_CHECK(cond, ...)                                  \
  do {                                                       \
    if (!(cond)) ::st::detail::fail(__VA_ARGS__);            \
  } while (0)

namespace detail {
template <class... A>
[[noreturn]] void fail(const A&... a);
}

// Raw memory on one device. Freed by its backend when the last reference goes.
struct Storage {
  Storage(size_t nbytes, Device device);
  ~Storage();
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;
  void* data = nullptr;
  size_t nbytes = 0;
  Device device;
};

struct Node;
struct TensorImpl;

class Tensor {
 public:
  Tensor() = default;
  explicit Tensor(std::shared_ptr<TensorImpl> impl) : impl_(std::move(impl)) {}

  // ---- factories ----
  static Tensor empty(const Shape& shape, DType dtype = DType::F32, Device device = Device::cpu());
  static Tensor zeros(const Shape& shape, DType dtype = DType::F32, Device device = Device::cpu());
  static Tensor full(const Shape& shape, double value, DType dtype = DType::F32,
                     Device device = Device::cpu());
  // A CPU tensor holding a copy of `values` (values.size() must equal the shape's size).
  template <class T>
  static Tensor from_vector(const std::vector<T>& values, const Shape& shape);
  // Deterministic pseudo-random values (uniform in [lo, hi) / normal), for tests and init.
  static Tensor uniform(const Shape& shape, double lo, double hi, uint64_t seed,
                        DType dtype = DType::F32);
  static Tensor randn(const Shape& shape, uint64_t seed, DType dtype = DType::F32);

  // ---- properties ----
  bool defined() const { return impl_ != nullptr; }
  const Shape& shape() const;
  const Shape& strides() const;
  int64_t offset() const;  // in elements
  int64_t dim() const { return int64_t(shape().size()); }
  int64_t size(int64_t d) const;  // negative d counts from the end
  int64_t numel() const;
  DType dtype() const;
  Device device() const;
  bool is_contiguous() const;
  std::string str() const;  // "f32[2, 3, 4] cpu" (for messages)

  // Pointer to the first element. T must match the dtype (checked). Any device.
  template <class T> T* data() const;
  void* raw_data() const;
  const std::shared_ptr<Storage>& storage() const;

  // ---- layout and conversion (not recorded by autograd unless stated) ----
  Tensor contiguous() const;                 // differentiable
  Tensor to(Device device) const;            // differentiable (gradient moves back)
  Tensor to(DType dtype) const;              // differentiable between floating types
  Tensor clone() const;                      // a contiguous copy; differentiable
  Tensor reshape(const Shape& shape) const;  // view when contiguous; one dim may be -1; differentiable
  // Elements [start, end) with a step along one dim, as a view. Differentiable.
  Tensor slice(int64_t dim, int64_t start, int64_t end, int64_t step = 1) const;
  Tensor narrow(int64_t dim, int64_t start, int64_t length) const {
    return slice(dim, start, start + length, 1);
  }
  Tensor permute(const std::vector<int64_t>& order) const;  // view; differentiable
  Tensor transpose(int64_t d0, int64_t d1) const;           // view; differentiable
  Tensor expand(const Shape& shape) const;  // broadcast view (stride 0); differentiable

  // ---- element access (CPU, any layout) ----
  template <class T> std::vector<T> to_vector() const;  // converts from the tensor's dtype
  double item() const;                                  // one-element tensor
  double at(const std::vector<int64_t>& index) const;   // one element as double

  // ---- in-place (never recorded by autograd; for optimizers, init, and kernels' outputs) ----
  void fill_(double value);
  void copy_(const Tensor& src);  // same shape; any layouts, dtypes and devices

  // ---- autograd ----
  bool requires_grad() const;
  // Marks a leaf as a parameter to differentiate. Throws on a non-leaf.
  Tensor& set_requires_grad(bool on);
  bool is_leaf() const;
  // The accumulated gradient (undefined until a backward pass reaches this leaf).
  Tensor grad() const;
  void set_grad(const Tensor& g);
  const std::shared_ptr<Node>& grad_fn() const;
  // Runs reverse-mode differentiation from this tensor. `grad` defaults to 1 for a
  // one-element tensor. Gradients ACCUMULATE into the leaves' .grad() (sum over calls) until
  // they are zeroed (nn::zero_grad or set_grad({})). The graph is freed as backward goes, so a
  // second backward through the same graph throws.
  void backward(const Tensor& grad = Tensor()) const;
  // A tensor sharing storage but cut from the graph.
  Tensor detach() const;

  // A name (used by safetensors and modules; optional).
  const std::string& name() const;
  Tensor& set_name(std::string name);

  TensorImpl* impl() const { return impl_.get(); }
  const std::shared_ptr<TensorImpl>& impl_ptr() const { return impl_; }

 private:
  std::shared_ptr<TensorImpl> impl_;
};

struct TensorImpl {
  std::shared_ptr<Storage> storage;
  Shape shape;
  Shape strides;
  int64_t offset = 0;
  DType dtype = DType::F32;
  bool requires_grad = false;
  std::shared_ptr<Node> grad_fn;   // null for leaves
  std::shared_ptr<TensorImpl> grad;  // accumulated gradient of a leaf
  std::string name;
};

// Row-major strides of a densely packed tensor of `shape`.
Shape contiguous_strides(const Shape& shape);

// ---- detail: message building for ST_CHECK ----
namespace detail {
inline void append(std::string& s, const std::string& v) { s += v; }
inline void append(std::string& s, const char* v) { s += v; }
inline void append(std::string& s, char* v) { s += v; }
inline void append(std::string& s, char v) { s += v; }
inline void append(std::string& s, const Shape& v) { s += shape_str(v); }
inline void append(std::string& s, DType v) { s += dtype_name(v); }
inline void append(std::string& s, const Device& v) { s += v.str(); }
inline void append(std::string& s, const Tensor& v) { s += v.str(); }
template <class T>
inline void append(std::string& s, const T& v) { s += std::to_string(v); }
template <class... A>
[[noreturn]] void fail(const A&... a) {
  std::string s;
  (append(s, a), ...);
  throw Error(s);
}
}  // namespace detail

template <class T>
T* Tensor::data() const {
  ST_CHECK(defined(), "data(): undefined tensor");
  ST_CHECK(dtype_of<std::remove_const_t<T>>() == dtype(), "data<", dtype_of<std::remove_const_t<T>>(),
           ">(): tensor has dtype ", dtype());
  return static_cast<T*>(raw_data());
}

}  // namespace st
