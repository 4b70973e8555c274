// Helpers for CPU kernels: dtype dispatch and iteration over strided (non-contiguous) views.
#pragma once
#include <array>
#include <cstdint>
#include <vector>

#include "tensor/half.h"
#include "tensor/tensor.h"

namespace st::cpu {

// f16 as stored: 16 bits, converted on load/store.
struct Half {
  uint16_t bits;
};

template <class T> inline double load_as_double(T v) { return double(v); }
template <> inline double load_as_double(Half v) { return double(half_to_float(v.bits)); }
template <class T> inline T store_from_double(double v) { return T(v); }
template <> inline Half store_from_double(double v) { return Half{float_to_half(float(v))}; }
template <> inline uint8_t store_from_double(double v) { return uint8_t(int64_t(v)); }

// Calls f(dtype_tag) with a value of the element type of `t` (all dtypes).
template <class F>
void dispatch_all(DType t, F&& f) {
  switch (t) {
    case DType::F32: f(float{}); return;
    case DType::F64: f(double{}); return;
    case DType::F16: f(Half{}); return;
    case DType::U8: f(uint8_t{}); return;
    case DType::I32: f(int32_t{}); return;
    case DType::I64: f(int64_t{}); return;
  }
}

// Calls f(float{}) or f(double{}); other dtypes throw naming the kernel.
template <class F>
void dispatch_float(const char* kernel, DType t, F&& f) {
  if (t == DType::F32) return f(float{});
  if (t == DType::F64) return f(double{});
  ST_CHECK(false, kernel, ": dtype ", t, " not supported on cpu (f32, f64)");
}

// Visits every row along the last dim of `shape` for K operands with their own strides:
// f(offsets (elements, one per operand), row length, per-operand stride along the row).
template <size_t K, class F>
void for_each_row(const Shape& shape, const std::array<const Shape*, K>& strides, F&& f) {
  const size_t nd = shape.size();
  std::array<int64_t, K> off{};
  std::array<int64_t, K> inner_stride{};
  if (nd == 0) {
    f(off, int64_t(1), inner_stride);
    return;
  }
  const int64_t inner = shape[nd - 1];
  for (size_t k = 0; k < K; ++k) inner_stride[k] = (*strides[k])[nd - 1];
  int64_t outer = 1;
  for (size_t d = 0; d + 1 < nd; ++d) outer *= shape[d];
  if (inner == 0 || outer == 0) return;
  std::vector<int64_t> idx(nd, 0);
  for (int64_t o = 0; o < outer; ++o) {
    f(off, inner, inner_stride);
    for (size_t d = nd - 1; d-- > 0;) {  // increment the multi-index, carrying
      ++idx[d];
      for (size_t k = 0; k < K; ++k) off[k] += (*strides[k])[d];
      if (idx[d] < shape[d]) break;
      for (size_t k = 0; k < K; ++k) off[k] -= idx[d] * (*strides[k])[d];
      idx[d] = 0;
    }
  }
}

}  // namespace st::cpu
