// Vectorised maths of the fused kernels (included by recurrence.cpp, its headers and scan.h).
//
// The instruction set of the build (CPU_CAPABILITY, from the compiler's -march flags; defined here,
// so this header must come before every ATen header), ATen's Vectorized<T> as Vec<T>, and the gate
// activations on it: exp, 1 / x, sigma and tanh with torch's limits and NaN propagation, plus the
// loop over the lanes of a row and the partial load.
// Glossary: T the element type (float or double) in templates, W lanes per vector, H hidden units
// (a row's width), j, n the first lane and the number of lanes of one piece, e = exp(-|x|).
#pragma once

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512DQ__) && defined(__AVX512VL__)
#define CPU_CAPABILITY AVX512
#define CPU_CAPABILITY_AVX512
#elif defined(__AVX2__) && defined(__FMA__)
#define CPU_CAPABILITY AVX2
#define CPU_CAPABILITY_AVX2
#else
#define CPU_CAPABILITY DEFAULT
#endif

#include <ATen/cpu/vec/vec.h>

#include <cstdint>
#include <type_traits>

namespace {

template <typename T>
using Vec = at::vec::Vectorized<T>;

// Transcendentals: float uses ATen's polynomial exp_u20 (a few ulp; the gates' activations do not
// need Sleef's 1-ulp exp, and it is most of the pointwise cost); double keeps Sleef's 1-ulp exp.
// exp_u20 clamps its argument with min/max, which turn NaN into the upper bound; the NaN is put
// back, so that NaN propagates through every gate as it does in torch.
template <typename T>
inline Vec<T> fast_exp(const Vec<T>& x) {
  return x.exp();
}
#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
template <>
inline Vec<float> fast_exp<float>(const Vec<float>& x) {
  return Vec<float>::blendv(x.exp_u20(), x, x != x);
}
#endif

// expm1(x) = exp(x) - 1 without cancellation near 0. float: the degree-8 Taylor polynomial for
// |x| < 1/2 (truncation below 2e-8 relative) and fast_exp(x) - 1 elsewhere (|exp(x) - 1| > 0.39 there,
// so exp_u20's few-ulp error stays a few ulp), inline: Sleef's expm1 is an out-of-line call that
// costs more than the rest of RG-LRU's gate maths. double keeps Sleef's 1-ulp expm1. NaN in, NaN out.
template <typename T>
inline Vec<T> fast_expm1(const Vec<T>& x) {
  return x.expm1();
}
#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
template <>
inline Vec<float> fast_expm1<float>(const Vec<float>& x) {
  using V = Vec<float>;
  V p(1.0f / 40320.0f);
  p = at::vec::fmadd(p, x, V(1.0f / 5040.0f));
  p = at::vec::fmadd(p, x, V(1.0f / 720.0f));
  p = at::vec::fmadd(p, x, V(1.0f / 120.0f));
  p = at::vec::fmadd(p, x, V(1.0f / 24.0f));
  p = at::vec::fmadd(p, x, V(1.0f / 6.0f));
  p = at::vec::fmadd(p, x, V(0.5f));
  p = at::vec::fmadd(p, x, V(1.0f));
  return V::blendv(fast_exp<float>(x) - V(1.0f), p * x, x.abs() < V(0.5f));
}
#endif

// 1 / x: on AVX-512 float uses the hardware's reciprocal estimate refined by one Newton step
// (about 1e-8 relative error, and exactly 1 at x = 1, so saturated gates are exactly 1 as in
// torch) instead of a division, which is the slowest instruction of the gate maths. AVX2's 12-bit
// estimate would leave sigma(large x) just below 1 after one Newton step, so it divides.
// Only called on finite values >= 1 here, so the Newton step never meets inf * 0.
template <typename T>
inline Vec<T> recip(const Vec<T>& x) {
  return x.reciprocal();
}
#if defined(CPU_CAPABILITY_AVX512)
template <>
inline Vec<float> recip<float>(const Vec<float>& x) {
  __m512 r = _mm512_rcp14_ps(x);
  return _mm512_mul_ps(r, _mm512_fnmadd_ps(x, r, _mm512_set1_ps(2.0f)));
}
#endif

// sigma(x) from e = exp(-|x|) in (0, 1]: 1 / (1 + e) for x >= 0, e / (1 + e) below. No overflow,
// exact limits (sigma(-inf) = 0, sigma(inf) = 1, as torch's, so 0 * inf stays NaN downstream)
// and NaN in, NaN out.
template <typename T>
inline Vec<T> sig(const Vec<T>& x) {
  const Vec<T> e = fast_exp<T>(x.abs().neg()), s = recip<T>(Vec<T>(T(1)) + e);
  return Vec<T>::blendv(e * s, s, x >= Vec<T>(T(0)));
}

// tanh(x) = 1 - 2 / (exp(2x) + 1) on x clamped to [-10, 10], where float32's tanh is already +-1
// (exp_u20 overflows to inf above 88, and the reciprocal's Newton step would turn inf into NaN);
// NaN in, NaN out
template <typename T>
inline Vec<T> th(const Vec<T>& x) {
  if constexpr (std::is_same_v<T, float>) {
    const Vec<T> one(T(1)), lim(T(10)), y = at::vec::clamp(x, lim.neg(), lim);
    return Vec<T>::blendv(one - Vec<T>(T(2)) * recip<T>(fast_exp<T>(y + y) + one), x, x != x);
  } else {
    return x.tanh();
  }
}

// f(j, n): process lanes [j, j + n) of a row of H values
template <typename T, typename F>
inline void lanes(int64_t j0, int64_t j1, const F& f) {
  constexpr int64_t W = Vec<T>::size();
  int64_t j = j0;
  for (; j + W <= j1; j += W) f(j, W);
  if (j < j1) f(j, j1 - j);
}

template <typename T>
inline Vec<T> ld(const T* p, int64_t j, int64_t n) {
  return Vec<T>::loadu(p + j, n);
}

}  // namespace
