// The normalisation of the fused kernels' LayerNorm cells (included by cells.h): row statistics,
// a row's normalisation and its input gradient, and the LSTM cell norm's saved state.
// Glossary: T the element type, n a row's length (G gate rows for the recurrent product, H hidden
// units for the LSTM's cell norm), w/b the LayerNorm's gain and bias, xhat the normalised row,
// rstd 1 / sqrt(var + eps), dy the gradient of w xhat + b, c~ (chat normalised) the LSTM's new cell.
#pragma once

#include "vec_math.h"

#include <cmath>
#include <cstdint>

namespace {

// ---------------------------------------------------------------- LayerNorm (gated/options.py)
// The LayerNorm cell's row-wise pieces, on whole rows (so only on the non-tiled path, whose
// pointwise pass splits batch rows, never units): the normalisation of a recurrent product row
// over its G gate rows, and the LSTM's cell norm over H. xhat = (x - mean) * rstd, rstd = 1 /
// sqrt(var + eps) with the biased variance (torch.nn.LayerNorm's, eps 1e-5).
constexpr double kLnEps = 1e-5;

template <typename T>
inline T hsum(const Vec<T>& v) {
  __at_align__ T buf[Vec<T>::size()];
  v.store(buf);
  T s = T(0);
  for (int64_t k = 0; k < Vec<T>::size(); ++k) s += buf[k];
  return s;
}

// mean and rstd of x[0, n), two passes (the partial loads of lanes() fill the rest with zeros)
template <typename T>
inline void ln_stats(const T* x, int64_t n, T& mean, T& rstd) {
  const Vec<T> zero(T(0));
  Vec<T> acc = zero;
  lanes<T>(0, n, [&](int64_t j, int64_t k) { acc = acc + ld(x, j, k); });
  mean = hsum(acc) / T(n);
  const Vec<T> m(mean);
  acc = zero;
  lanes<T>(0, n, [&](int64_t j, int64_t k) {
    Vec<T> d = ld(x, j, k) - m;
    if (k < Vec<T>::size()) d = Vec<T>::set(zero, d, k);
    acc = acc + d * d;
  });
  rstd = T(1) / std::sqrt(hsum(acc) / T(n) + T(kLnEps));
}

// y = w xhat + b over a row of n (y += with add; y may be x itself); xhat and rstd are saved where
// the pointers are given (training)
template <typename T>
inline void ln_row(const T* x, int64_t n, const T* w, const T* b, T* y, bool add, T* xhat, T* rstd_out) {
  T mean, rstd;
  ln_stats(x, n, mean, rstd);
  const Vec<T> m(mean), r(rstd);
  lanes<T>(0, n, [&](int64_t j, int64_t k) {
    Vec<T> xh = (ld(x, j, k) - m) * r;
    if (xhat != nullptr) xh.store(xhat + j, k);
    Vec<T> v = ld(w, j, k) * xh + ld(b, j, k);
    if (add) v = v + ld(y, j, k);
    v.store(y + j, k);
  });
  if (rstd_out != nullptr) *rstd_out = rstd;
}

// the input gradient of a LayerNorm row: dx = rstd (g - mean(g) - xhat mean(g xhat)), g = w dy
template <typename T>
inline void ln_row_bwd(const T* dy, const T* xhat, T rstd, const T* w, int64_t n, T* dx) {
  Vec<T> s1(T(0)), s2(T(0));
  lanes<T>(0, n, [&](int64_t j, int64_t k) {  // zero-filled tails add nothing
    Vec<T> g = ld(w, j, k) * ld(dy, j, k);
    s1 = s1 + g;
    s2 = s2 + g * ld(xhat, j, k);
  });
  const Vec<T> m1(hsum(s1) / T(n)), m2(hsum(s2) / T(n)), r(rstd);
  lanes<T>(0, n, [&](int64_t j, int64_t k) {
    Vec<T> xh = ld(xhat, j, k);
    (r * (ld(w, j, k) * ld(dy, j, k) - m1 - xh * m2)).store(dx + j, k);
  });
}

// A LayerNorm's parameter gradients, one row's part accumulated: sw += dy xhat, sb += dy (n each).
// The backward keeps one (sw, sb) pair per batch row, summed over the steps there and over the
// rows by the caller (deterministic for any number of threads: each row has one owner per step).
template <typename T>
inline void ln_param_acc(const T* dy, const T* xhat, int64_t n, T* sw, T* sb) {
  lanes<T>(0, n, [&](int64_t j, int64_t k) {
    const Vec<T> d = ld(dy, j, k);
    (ld(sw, j, k) + d * ld(xhat, j, k)).store(sw + j, k);
    (ld(sb, j, k) + d).store(sb + j, k);
  });
}

// The LSTM's cell norm h = o tanh(w chat + b), chat the normalised c~ over H: forward, chat and
// rstd of step t's rows are saved where given; backward reads them and writes dy, the gradient of
// w chat + b (its sums give the LayerNorm's parameter gradients, summed by the caller)
template <typename T>
struct CellNorm {
  const T *w = nullptr, *b = nullptr;
  T *chat = nullptr, *rstd = nullptr, *dy = nullptr;  // step t's rows: (B, H), (B,), (B, H)
  bool on() const { return w != nullptr; }
};

}  // namespace
