// Running error analysis for the tests of composite ops (softmax, cross-entropy, batch norm,
// Adam, box decoding, ...): a Bounded is a quantity an implementation computes in floating
// point, held as its exact value and a rigorous bound on how far the computed value can be from
// it. Writing an op's formula with Bounded values, in the implementation's own operation order,
// gives a per-element error bound for its result (see tests/README.md).
//
// Every operation adds the error propagated from its operands (exactly, including second-order
// terms, over all operand values within their bounds) plus one rounding of the result,
// u * (|exact| + propagated error), since |fl(z) - z| <= u|z| for the value z actually rounded.
// A fused multiply-add rounds once where this model rounds twice, so the bounds hold with or
// without FMA; sums are bounded for any summation order. Products, quotients and library
// functions also add the underflow term (half the smallest subnormal of the format). An
// operation on exact operands whose exact result is representable (x*0.5, 60*0.25 - 0.5, x/1)
// is exact in every implementation, and is counted so.
// Library functions (exp, log, pow of glibc, musl or another libm, scalar or vectorised):
// at most 2 ulp, i.e. 4u relative to the result. sqrt and the arithmetic are correctly rounded.
//
// The bounds themselves are evaluated in double. Their own rounding is relatively ~1e-15 of a
// bound (and `exact` values are exact to ~1e-16 relative); that is far below the margin a bound
// has over a real error, so it is ignored.
#pragma once
#include <algorithm>
#include <cmath>
#include <vector>

#include "test_util.h"

namespace st::test {

// Unit roundoff of float64: torch's float64 references and our f64 path round with it.
constexpr double kU64 = 0x1p-53;

// Half the smallest subnormal of the format with unit roundoff u (binary16/32/64): the absolute
// error an underflowing product, quotient or library result may add (Higham, §2.1).
inline double underflow_eta(double u) {
  if (u >= kU16) return 0x1p-25;
  if (u >= kU32) return 0x1p-150;
  return 0x1p-1074;  // 2^-1075 is not a double; the smallest subnormal bounds it
}

struct Bounded {
  double v = 0;     // the exact value (real arithmetic on the exact inputs), evaluated in double
  double e = 0;     // bound on |computed - exact|
  double u = kU64;  // unit roundoff of the format the computed value is held in
};

// An input held exactly in the format with unit roundoff u (a value read from a float tensor).
inline Bounded exact(double x, double u) { return {x, 0, u}; }

// A constant given as a double (a parameter such as beta1 = 0.9, or 1/N), stored in the format
// with unit roundoff u: the exact value is the double itself; storing it in float rounds it
// once (0 when it is representable, e.g. 0.5 or -1.5).
inline Bounded constant(double c, double u) {
  double e = 0;
  if (u >= kU16)
    e = u * std::abs(c);
  else if (u >= kU32)
    e = std::abs(double(float(c)) - c);
  return {c, e, u};
}

namespace bound_detail {
// Whether the double v is a finite value of the format with unit roundoff u (binary32/64; for
// binary16 this is not checked and a rounding is always counted).
inline bool representable(double v, double u) {
  if (!std::isfinite(v) || u >= kU16) return false;
  return u < kU32 || double(float(v)) == v;
}
// The computed result of an operation whose exact result is v (evaluated in double; `v_exact`
// says that evaluation was itself exact). With exact operands (e0 == 0) and an exact result
// representable in the format, a correctly rounded operation returns it: error 0, with or
// without FMA. Otherwise: the operands' propagated error e0, then one rounding.
inline Bounded rounded(double v, double e0, double u, bool may_underflow, bool v_exact) {
  if (e0 == 0 && v_exact && representable(v, u)) return {v, 0, u};
  return {v, e0 + u * (std::abs(v) + e0) + (may_underflow ? underflow_eta(u) : 0.0), u};
}
// A library function's result: e0 propagated, then 2 ulp <= 4u relative.
inline Bounded library(double v, double e0, double u) {
  return {v, e0 + 4 * u * (std::abs(v) + e0) + underflow_eta(u), u};
}
// C++ arithmetic promotes to the wider operand's format.
inline double wider(const Bounded& a, const Bounded& b) { return std::min(a.u, b.u); }
}  // namespace bound_detail

inline Bounded operator-(const Bounded& a) { return {-a.v, a.e, a.u}; }

inline Bounded operator+(const Bounded& a, const Bounded& b) {
  const double s = a.v + b.v, bb = s - a.v;
  const bool s_exact = (a.v - (s - bb)) + (b.v - bb) == 0;  // TwoSum's error term
  return bound_detail::rounded(s, a.e + b.e, bound_detail::wider(a, b), false, s_exact);
}
inline Bounded operator-(const Bounded& a, const Bounded& b) { return a + (-b); }

inline Bounded operator*(const Bounded& a, const Bounded& b) {
  const double p = a.v * b.v, e0 = std::abs(a.v) * b.e + std::abs(b.v) * a.e + a.e * b.e;
  return bound_detail::rounded(p, e0, bound_detail::wider(a, b), true,
                               std::fma(a.v, b.v, -p) == 0);
}

// |a^/b^ - a/b| = |(a^ - a) b - a (b^ - b)| / |b b^| <= (a.e |b| + |a| b.e) / (|b| (|b| - b.e)).
inline Bounded operator/(const Bounded& a, const Bounded& b) {
  const double ab = std::abs(b.v);
  if (!(ab > b.e)) FAIL("error bound: divisor " << b.v << " +- " << b.e << " may be zero");
  const double q = a.v / b.v, e0 = (a.e * ab + std::abs(a.v) * b.e) / (ab * (ab - b.e));
  return bound_detail::rounded(q, e0, bound_detail::wider(a, b), true,
                               std::fma(q, b.v, -a.v) == 0);
}

// Conversion to the format with unit roundoff u: rounds when it narrows (double -> float),
// exact when it widens.
inline Bounded to_format(const Bounded& a, double u) {
  if (u > a.u) return bound_detail::rounded(a.v, a.e, u, true, true);
  return {a.v, a.e, u};
}

// max/min (and so clamps) are exact and 1-Lipschitz in each operand; when one operand is the
// larger (smaller) whatever the errors, the result is that operand.
inline Bounded max(const Bounded& a, const Bounded& b) {
  const double u = bound_detail::wider(a, b);
  if (a.v - a.e >= b.v + b.e) return {a.v, a.e, u};
  if (b.v - b.e >= a.v + a.e) return {b.v, b.e, u};
  return {std::max(a.v, b.v), std::max(a.e, b.e), u};
}
inline Bounded min(const Bounded& a, const Bounded& b) { return -max(-a, -b); }

// exp(a^) is within exp(a)(e^{a.e} - 1) of exp(a) for |a^ - a| <= a.e.
inline Bounded exp(const Bounded& a) {
  const double y = std::exp(a.v);
  return bound_detail::library(y, y * std::expm1(a.e), a.u);
}

// log(a^) is within -log(1 - a.e/a) of log(a) for |a^ - a| <= a.e < a.
inline Bounded log(const Bounded& a) {
  if (!(a.v > a.e)) FAIL("error bound: log argument " << a.v << " +- " << a.e << " may be <= 0");
  return bound_detail::library(std::log(a.v), -std::log1p(-a.e / a.v), a.u);
}

// sqrt is correctly rounded; sqrt(a^) is within sqrt(a) - sqrt(a - a.e) of sqrt(a).
inline Bounded sqrt(const Bounded& a) {
  if (!(a.v >= a.e)) FAIL("error bound: sqrt argument " << a.v << " +- " << a.e << " may be < 0");
  const double y = std::sqrt(a.v);
  return bound_detail::rounded(y, y - std::sqrt(a.v - a.e), a.u, false, std::fma(y, y, -a.v) == 0);
}

// pow(base, k) of an exactly held base (a library function).
inline Bounded pow(const Bounded& base, double k) {
  if (base.e != 0) FAIL("error bound: pow of an inexact base is not modelled");
  return bound_detail::library(std::pow(base.v, k), 0.0, base.u);
}

// A sum of n terms in format u, in any order: |fl(sum t^) - sum t^| <= gamma(n-1) sum |t^|
// (Higham, (4.4)), and |t^| <= |t| + t.e.
inline Bounded sum(const std::vector<Bounded>& terms, double u) {
  double v = 0, e = 0, abs_sum = 0;
  for (const Bounded& t : terms) {
    v += t.v;
    e += t.e;
    abs_sum += std::abs(t.v) + t.e;
  }
  const double n = double(terms.size());
  return {v, e + (n > 1 ? gamma(n - 1, u) : 0.0) * abs_sum, u};
}

}  // namespace st::test
