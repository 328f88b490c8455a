// The LSTM projection's pointwise pieces (included by time_loop.h): with proj_size, h_t is the
// projected m_t W_hr^T, so zoneout of h and the recurrent-dropout mask act on it, after the
// projection's GEMM (time_loop.h runs that GEMM per step), not inside the cell (cells.h's lstm_fwd
// and lstm_bwd then run without zoneout of h). The order is the reference's (gated/backends/
// reference.py): cell, projection, zoneout, then the mask the next step's W_hh product reads.
// Glossary: T the element type, B batch, P the width of h (proj_size), b a batch row, j a unit of
// h; h~ the projected m_t W_hr^T, h_t = h~ + z (h_{t-1} - h~) the zoned state, z a zoneout keep
// mask (cells.h's Zone, on a Step whose H is P), rm the recurrent-dropout mask (B, P), hm the
// masked h_t * rm, dh d<name> gradients, dhn the part of dh_{t-1} that does not go through W_hh.
#pragma once

#include "cells.h"
#include "vec_math.h"

#include <algorithm>
#include <cstdint>

namespace {

// Forward, in place on h (row 0 of step t, holding h~): zoneout on rows still in their sequence
// (rows past their end hold 0, since their m_t is 0, and keep it), then hm = h_t * rm where rm is
// given. s.H is P.
template <typename T>
void project_fwd(const Step& s, T* h, const T* hp, const Zone<T>& zh, const T* rm, T* hm, int64_t b0, int64_t b1) {
  const int64_t P = s.H;
  for (int64_t b = b0; b < b1; ++b) {
    T* hb = h + b * P;
    if (zh.on() && !s.masked(b)) {
      lanes<T>(0, P, [&](int64_t j, int64_t n) {
        Vec<T> v = ld(hb, j, n);
        (v + zh.at(s, b, j, n) * (ld(hp + b * P, j, n) - v)).store(hb + j, n);
      });
    }
    if (rm != nullptr) {
      lanes<T>(0, P, [&](int64_t j, int64_t n) { (ld(hb, j, n) * ld(rm + b * P, j, n)).store(hm + b * P + j, n); });
    }
  }
}

// Backward of step t from dL/dh_t = dout_t + dh (the carry from step t + 1): on rows in their
// sequence, z dL/dh_t goes straight to h_{t-1} (dhn) and dh~ = (1 - z) dL/dh_t (dht: W_hr's
// gradient reads it, and m_t's is dh~ W_hr); on rows past their end the state was held, so the
// carry dh goes to h_{t-1} whole (their dout is not part of the graph) and dh~ = 0. s.H is P.
template <typename T>
void project_bwd(const Step& s, const T* dout, const T* dh, const Zone<T>& zh, T* dht, T* dhn, int64_t b0,
                 int64_t b1) {
  const int64_t P = s.H;
  for (int64_t b = b0; b < b1; ++b) {
    const T *dob = dout + b * P, *dhb = dh + b * P;
    T *db = dht + b * P, *nb = dhn + b * P;
    if (s.masked(b)) {
      std::copy(dhb, dhb + P, nb);
      std::fill(db, db + P, T(0));
      continue;
    }
    lanes<T>(0, P, [&](int64_t j, int64_t n) {
      Vec<T> d = ld(dob, j, n) + ld(dhb, j, n), direct(T(0));
      if (zh.on()) direct = zh.at(s, b, j, n) * d;
      direct.store(nb + j, n);
      (d - direct).store(db + j, n);
    });
  }
}

}  // namespace
