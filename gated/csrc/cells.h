// The pointwise cells of the fused kernels (included by time_loop.h): per step and per batch row,
// the gate maths of LSTM, GRU and MGU (plain and refine) on a range of hidden units, forward
// (pre-activations -> activations, state, output) and backward (-> pre-activation gradients).
// Glossary: T the element type, B batch, H hidden, G gate rows (4H LSTM, 3H GRU, 2H MGU, + H with
// a refine gate for GRU/MGU), t the step, b a batch row, j a unit; A/a activations (and, forward,
// the pre-activations they overwrite), P/p pre-activations, gh the recurrent projection, c/h the
// states, fb the shared forget bias b_f, "refine" = paper Eq. 10 (g = f^2 + 2 r f (1 - f)),
// d<name> the gradient of <name>, dhn the part of dh_{t-1} that does not go through W_hh, z a
// zoneout keep mask (1: the unit keeps its previous value).
#pragma once

#include "norm.h"
#include "vec_math.h"

#include <algorithm>
#include <cmath>
#include <cstdint>

namespace {

enum Core : int64_t { LSTM = 0, GRU = 1, MGU = 2 };

struct Step {  // what one pointwise pass needs; pointers to row 0, strides in elements
  int64_t B, H, G, t;
  const int64_t* len;  // (B,) or nullptr
  bool refine;
  int64_t j0, j1;  // the hidden units [j0, j1) this pass covers (a thread's share, or all H)
  bool masked(int64_t b) const { return len != nullptr && t >= len[b]; }
};

// Zoneout of one state (gated/options.py): s_t = s~_t + z (s_{t-1} - s~_t), z per step from a
// (T, B, H) 0/1 keep mask in training, or the probability p itself in eval (the expectation).
// Off when there is neither (p = 0).
template <typename T>
struct Zone {
  const T* mask = nullptr;  // (T, B, H) or nullptr
  T p = T(0);
  bool on() const { return mask != nullptr || p != T(0); }
  Vec<T> at(const Step& s, int64_t b, int64_t j, int64_t n) const {
    return mask != nullptr ? ld(mask + (s.t * s.B + b) * s.H, j, n) : Vec<T>(p);
  }
};

// row[k * H + j] = v for every gate block k < G / H and unit j in [s.j0, s.j1)
template <typename T>
inline void fill_units(const Step& s, T* row, T v) {
  for (int64_t k = 0; k < s.G; k += s.H) std::fill(row + k + s.j0, row + k + s.j1, v);
}

// ---------------------------------------------------------------- forward pointwise

// LSTM: A holds pre-activations (i|r, f, g, o) and gets the activations back. With zoneout the
// states written are the zoned ones (h~ = o tanh(c~) from the un-zoned c~; hp: h_{t-1}). With the
// cell norm (whole rows: j0 = 0, j1 = H) a first pass writes the gates and c~ (into ct), a second
// normalises c~ and writes h and the zoned c.
template <typename T>
void lstm_fwd(const Step& s, const T* P, T* A, const T* cp, T* ct, T* ht, const T* fb, int64_t b0, int64_t b1,
              const T* hp = nullptr, const Zone<T>& zh = {}, const Zone<T>& zc = {}, const CellNorm<T>& cn = {}) {
  const int64_t H = s.H, G = s.G;
  for (int64_t b = b0; b < b1; ++b) {
    const T* p = P + b * G;  // pre-activations (may alias a)
    T* a = A + b * G;
    const T* c0 = cp + b * H;
    T *c1 = ct + b * H, *h1 = ht + b * H;
    if (s.masked(b)) {  // past the sequence's end: hold the state, output 0
      std::copy(c0 + s.j0, c0 + s.j1, c1 + s.j0);
      std::fill(h1 + s.j0, h1 + s.j1, T(0));
      if (cn.chat != nullptr) {  // defined values for backward (whose gradients here are 0)
        std::fill(cn.chat + b * H, cn.chat + (b + 1) * H, T(0));
        cn.rstd[b] = T(0);
      }
      continue;
    }
    lanes<T>(s.j0, s.j1, [&](int64_t j, int64_t n) {
      Vec<T> pi = ld(p, j, n), pf = ld(p + H, j, n);
      if (fb != nullptr) {
        Vec<T> bf = ld(fb, j, n);
        pf = pf + bf;
        pi = pi - bf;
      }
      Vec<T> i = sig(pi), f = sig(pf), u = th(ld(p + 2 * H, j, n)), o = sig(ld(p + 3 * H, j, n));
      Vec<T> one(T(1)), keep = f, write = i;
      if (s.refine) {  // i holds r: g = f^2 + 2 r f (1 - f), input tied to 1 - g
        keep = f * f + Vec<T>(T(2)) * i * f * (one - f);
        write = one - keep;
      }
      Vec<T> cprev = ld(c0, j, n), c = keep * cprev + write * u;
      i.store(a + j, n);
      f.store(a + H + j, n);
      u.store(a + 2 * H + j, n);
      o.store(a + 3 * H + j, n);
      if (cn.on()) {  // c~ for the second pass
        c.store(c1 + j, n);
        return;
      }
      Vec<T> h = o * th(c);
      if (zh.on()) h = h + zh.at(s, b, j, n) * (ld(hp + b * H, j, n) - h);
      if (zc.on()) c = c + zc.at(s, b, j, n) * (cprev - c);
      h.store(h1 + j, n);
      c.store(c1 + j, n);
    });
    if (!cn.on()) continue;
    T mean, rstd;
    ln_stats(c1, H, mean, rstd);
    if (cn.rstd != nullptr) cn.rstd[b] = rstd;
    const Vec<T> m(mean), r(rstd);
    lanes<T>(0, H, [&](int64_t j, int64_t n) {
      Vec<T> c = ld(c1, j, n), chat = (c - m) * r;
      if (cn.chat != nullptr) chat.store(cn.chat + b * H + j, n);
      Vec<T> h = ld(a + 3 * H, j, n) * th(ld(cn.w, j, n) * chat + ld(cn.b, j, n));
      if (zh.on()) h = h + zh.at(s, b, j, n) * (ld(hp + b * H, j, n) - h);
      if (zc.on()) c = c + zc.at(s, b, j, n) * (ld(c0, j, n) - c);
      h.store(h1 + j, n);
      c.store(c1 + j, n);
    });
  }
}

// GRU (blocks s, z, n[, rho]) and MGU (blocks f, n[, rho]): A holds the input projection (with
// every bias but b_hn), gh the recurrent projection; ghn_out keeps W_hn h + b_hn for backward.
template <typename T>
void gru_mgu_fwd(const Step& s, int64_t core, T* A, const T* gh, const T* hp, T* ht, T* ghn_out, const T* bhn,
                 const T* fb, int64_t b0, int64_t b1, const Zone<T>& zh = {}) {
  const int64_t H = s.H, G = s.G;
  const int64_t kz = core == GRU ? 1 : 0, kn = kz + 1, kr = kn + 1;  // keep, candidate, refine blocks
  for (int64_t b = b0; b < b1; ++b) {
    T* a = A + b * G;
    const T* g = gh + b * G;
    const T* h0 = hp + b * H;
    T *h1 = ht + b * H, *q = ghn_out + b * H;
    if (s.masked(b)) {  // past the sequence's end (backward reads none of it; zero, so outputs are defined)
      std::fill(h1 + s.j0, h1 + s.j1, T(0));
      std::fill(q + s.j0, q + s.j1, T(0));
      continue;
    }
    lanes<T>(s.j0, s.j1, [&](int64_t j, int64_t n) {
      Vec<T> one(T(1)), pz = ld(a + kz * H, j, n) + ld(g + kz * H, j, n);
      if (fb != nullptr) pz = pz + ld(fb, j, n);
      Vec<T> z = sig(pz), ghn = ld(g + kn * H, j, n);
      if (bhn != nullptr) ghn = ghn + ld(bhn, j, n);
      Vec<T> reset = one - z;  // MGU: the candidate's reset is 1 - f
      if (core == GRU) {
        reset = sig(ld(a, j, n) + ld(g, j, n));
        reset.store(a + j, n);
      }
      Vec<T> cand = th(ld(a + kn * H, j, n) + reset * ghn), keep = z;
      if (s.refine) {
        Vec<T> pr = ld(a + kr * H, j, n) + ld(g + kr * H, j, n);
        if (fb != nullptr) pr = pr - ld(fb, j, n);
        Vec<T> r = sig(pr);
        keep = z * z + Vec<T>(T(2)) * r * z * (one - z);
        r.store(a + kr * H + j, n);
      }
      Vec<T> hprev = ld(h0, j, n), h = keep * hprev + (one - keep) * cand;
      if (zh.on()) h = h + zh.at(s, b, j, n) * (hprev - h);
      h.store(h1 + j, n);
      z.store(a + kz * H + j, n);
      cand.store(a + kn * H + j, n);
      ghn.store(q + j, n);
    });
  }
}

// ---------------------------------------------------------------- backward pointwise

// dg/df and dg/dr of g = f^2 + 2 r f (1 - f)
template <typename T>
inline void refine_grads(const Vec<T>& f, const Vec<T>& r, Vec<T>& g, Vec<T>& dgdf, Vec<T>& dgdr) {
  Vec<T> one(T(1)), two(T(2));
  g = f * f + two * r * f * (one - f);
  dgdf = two * (r * (one - f) + (one - r) * f);
  dgdr = two * f * (one - f);
}

// LSTM: reads activations A_t, writes pre-activation grads dA_t; dc is updated in place;
// dhn gets the part of dh_{t-1} that does not go through W_hh (the carry of masked rows, and with
// zoneout z_h dh_t). With zoneout of c, ct holds the zoned c_t, so c~_t is recomputed from the
// activations and c_{t-1} (no saved buffer). With the cell norm (whole rows) a first pass gets
// the gradient of w chat + b (into cn.dy) and its row means, a second the rest.
template <typename T>
void lstm_bwd(const Step& s, const T* A, const T* cp, const T* ct, const T* dout, const T* dh, T* dc, T* dA, T* dhn,
              int64_t b0, int64_t b1, const Zone<T>& zh = {}, const Zone<T>& zc = {}, const CellNorm<T>& cn = {}) {
  const int64_t H = s.H, G = s.G;
  for (int64_t b = b0; b < b1; ++b) {
    const T* a = A + b * G;
    T* da = dA + b * G;
    if (s.masked(b)) {  // the state was held: gradients pass through unchanged
      fill_units(s, da, T(0));
      std::copy(dh + b * H + s.j0, dh + b * H + s.j1, dhn + b * H + s.j0);
      if (cn.on()) std::fill(cn.dy + b * H, cn.dy + (b + 1) * H, T(0));
      continue;
    }
    if (!zh.on()) std::fill(dhn + b * H + s.j0, dhn + b * H + s.j1, T(0));
    // the gradient of h~_t (what reaches o tanh(.)), with zoneout's direct part stored into dhn
    auto dh_cell = [&](int64_t j, int64_t n) {
      Vec<T> dht = ld(dout + b * H, j, n) + ld(dh + b * H, j, n);
      if (zh.on()) {  // h_t = h~ + z (h_{t-1} - h~): z dh_t goes straight to h_{t-1}
        Vec<T> direct = zh.at(s, b, j, n) * dht;
        direct.store(dhn + b * H + j, n);
        dht = dht - direct;
      }
      return dht;
    };
    Vec<T> m1(T(0)), m2(T(0)), rc(T(0));
    if (cn.on()) {
      Vec<T> s1(T(0)), s2(T(0));
      lanes<T>(0, H, [&](int64_t j, int64_t n) {
        Vec<T> one(T(1)), o = ld(a + 3 * H, j, n), chat = ld(cn.chat + b * H, j, n), w = ld(cn.w, j, n);
        Vec<T> tc = th(w * chat + ld(cn.b, j, n)), dht = dh_cell(j, n);
        Vec<T> dy = dht * o * (one - tc * tc), g = w * dy;
        dy.store(cn.dy + b * H + j, n);
        (dht * tc * o * (one - o)).store(da + 3 * H + j, n);
        s1 = s1 + g;
        s2 = s2 + g * chat;
      });
      m1 = Vec<T>(hsum(s1) / T(H));
      m2 = Vec<T>(hsum(s2) / T(H));
      rc = Vec<T>(cn.rstd[b]);
    }
    lanes<T>(s.j0, s.j1, [&](int64_t j, int64_t n) {
      Vec<T> one(T(1));
      Vec<T> i = ld(a, j, n), f = ld(a + H, j, n), u = ld(a + 2 * H, j, n), o = ld(a + 3 * H, j, n);
      Vec<T> c0 = ld(cp + b * H, j, n);
      Vec<T> keep = f, write = i, dgdf, dgdr;
      if (s.refine) {
        refine_grads(f, i, keep, dgdf, dgdr);
        write = one - keep;
      }
      Vec<T> dcin = ld(dc + b * H, j, n), dcd(T(0));
      if (zc.on()) {
        dcd = zc.at(s, b, j, n) * dcin;
        dcin = dcin - dcd;
      }
      Vec<T> dct;
      if (cn.on()) {  // through the LayerNorm of c~ (dpo is written)
        Vec<T> chat = ld(cn.chat + b * H, j, n);
        dct = dcin + rc * (ld(cn.w, j, n) * ld(cn.dy + b * H, j, n) - m1 - chat * m2);
      } else {
        Vec<T> tc = th(zc.on() ? keep * c0 + write * u : ld(ct + b * H, j, n));
        Vec<T> dht = dh_cell(j, n);
        dct = dcin + dht * o * (one - tc * tc);
        (dht * tc * o * (one - o)).store(da + 3 * H + j, n);
      }
      Vec<T> dpu, dpi, dpf, dcp;
      if (s.refine) {
        Vec<T> dg = dct * (c0 - u);
        dpu = dct * (one - keep) * (one - u * u);
        dpf = dg * dgdf * f * (one - f);
        dpi = dg * dgdr * i * (one - i);
        dcp = dct * keep;
      } else {
        dpu = dct * i * (one - u * u);
        dpf = dct * c0 * f * (one - f);
        dpi = dct * u * i * (one - i);
        dcp = dct * f;
      }
      if (zc.on()) dcp = dcp + dcd;
      dpi.store(da + j, n);
      dpf.store(da + H + j, n);
      dpu.store(da + 2 * H + j, n);
      dcp.store(dc + b * H + j, n);
    });
  }
}

// GRU / MGU: writes dA_t (grads of the input projection), S (grads of the recurrent projection,
// which differ in the candidate block), dghn_t, and dhn = the direct part of dh_{t-1}.
template <typename T>
void gru_mgu_bwd(const Step& s, int64_t core, const T* A, const T* ghn_t, const T* hp, const T* dout, const T* dh,
                 T* dA, T* S, T* dghn, T* dhn, int64_t b0, int64_t b1, const Zone<T>& zh = {}) {
  const int64_t H = s.H, G = s.G;
  const int64_t kz = core == GRU ? 1 : 0, kn = kz + 1, kr = kn + 1;
  for (int64_t b = b0; b < b1; ++b) {
    const T* a = A + b * G;
    T *da = dA + b * G, *sr = S + b * G;
    if (s.masked(b)) {
      fill_units(s, da, T(0));
      fill_units(s, sr, T(0));
      std::fill(dghn + b * H + s.j0, dghn + b * H + s.j1, T(0));
      std::copy(dh + b * H + s.j0, dh + b * H + s.j1, dhn + b * H + s.j0);
      continue;
    }
    lanes<T>(s.j0, s.j1, [&](int64_t j, int64_t n) {
      Vec<T> one(T(1)), z = ld(a + kz * H, j, n), cand = ld(a + kn * H, j, n), q = ld(ghn_t + b * H, j, n);
      Vec<T> h0 = ld(hp + b * H, j, n), dht = ld(dout + b * H, j, n) + ld(dh + b * H, j, n), direct(T(0));
      if (zh.on()) {  // h_t = h~ + z (h_{t-1} - h~): z dh_t goes straight to h_{t-1}
        direct = zh.at(s, b, j, n) * dht;
        dht = dht - direct;
      }
      Vec<T> keep = z, dgdf(T(1)), dgdr, r;
      if (s.refine) {
        r = ld(a + kr * H, j, n);
        refine_grads(z, r, keep, dgdf, dgdr);
      }
      Vec<T> dkeep = dht * (h0 - cand);
      Vec<T> dpn = dht * (one - keep) * (one - cand * cand);  // grad of the candidate's pre-activation
      Vec<T> dz = dkeep * dgdf;
      if (core == GRU) {
        Vec<T> rs = ld(a, j, n);
        Vec<T> dps = dpn * q * rs * (one - rs);
        dps.store(da + j, n);
        dps.store(sr + j, n);
        (dpn * rs).store(sr + kn * H + j, n);
      } else {
        dz = dz - dpn * q;  // the reset 1 - f also depends on f
        (dpn * (one - z)).store(sr + kn * H + j, n);
      }
      Vec<T> dpz = dz * z * (one - z);
      dpz.store(da + kz * H + j, n);
      dpz.store(sr + kz * H + j, n);
      dpn.store(da + kn * H + j, n);
      ld(sr + kn * H, j, n).store(dghn + b * H + j, n);
      if (s.refine) {
        Vec<T> dpr = dkeep * dgdr * r * (one - r);
        dpr.store(da + kr * H + j, n);
        dpr.store(sr + kr * H + j, n);
      }
      (zh.on() ? dht * keep + direct : dht * keep).store(dhn + b * H + j, n);
    });
  }
}

}  // namespace
