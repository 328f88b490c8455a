// Scan kernels of the input-gated cores (minGRU, minLSTM; Feng et al. 2024; RG-LRU, De et al. 2024; HGRN,
// Qin et al. 2023) and the bare linear scan.
//
// Their gates read x_t only, so h_t = a_t h_{t-1} + b_t is a diagonal linear recurrence. On a CPU the
// sequential scan is the fast one: it is memory-bound and every element is read once, where parallel
// (Blelloch, chunked, log-space) scans make several passes (measurements: docs/scan.md). So the loop
// runs over T in order, vectorised over the hidden units with ATen's Vectorized (AVX-512, AVX2 or
// plain builds), and split over (batch row, 64-unit chunk) pieces across threads; each thread keeps
// its pieces' state in a small buffer that stays in cache.
//
// The forward reads the projection P = x W^T (T, B, G), computed by one GEMM in Python, adds the bias
// and computes a_t, b_t from it in the loop (the gates are fused). The backward is the reverse scan,
// dh_{t-1} = a_t dh_t (+ dout_{t-1}), with the gates recomputed from P and their derivatives taken in
// the same pass, giving dP (T, B, G): the weight gradients are then one GEMM. Equations are those of
// gated/cores.py (scan_gates, mingru_step, rglru_coefficients, hgrn_coefficients); tests/test_scan*.py
// check them against it.
// Glossary: T time, B batch, H hidden, G gate rows (2H minGRU, 3H minLSTM, + H with a refine gate).
//
// Included at the end of recurrence.cpp (one translation unit): Vec, ld, lanes, fast_exp, recip
// (vec_math.h) and empty (time_loop.h; NaN-poisoned buffers in tests) come from there.

namespace scan {

enum Cell : int64_t { MINGRU = 0, MINLSTM = 1 };
constexpr int64_t kChunk = 64;  // units per work piece: a few vectors, small enough to split one row
constexpr int64_t kStreamBytes = int64_t(8) << 20;  // outputs above this are written with streaming stores

// v to p[0, m): a non-temporal store when `stream` and p is a whole aligned vector. The big outputs
// (every h_t, every dP_t) are not read again soon; a streaming store skips the read-for-ownership a
// normal store does (two of the backward's seven memory streams).
template <typename T>
inline void put(T* p, const Vec<T>& v, int64_t m, bool stream) {
#if defined(CPU_CAPABILITY_AVX512)
  if (stream && m == Vec<T>::size() && (reinterpret_cast<uintptr_t>(p) & 63) == 0) {
    if constexpr (std::is_same_v<T, float>) _mm512_stream_ps(p, v);
    else _mm512_stream_pd(p, v);
    return;
  }
#elif defined(CPU_CAPABILITY_AVX2)
  if (stream && m == Vec<T>::size() && (reinterpret_cast<uintptr_t>(p) & 31) == 0) {
    if constexpr (std::is_same_v<T, float>) _mm256_stream_ps(p, v);
    else _mm256_stream_pd(p, v);
    return;
  }
#endif
  v.store(p, m);
}

inline void fence() {  // streaming stores are weakly ordered: drain them before the thread is done
#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
  _mm_sfence();
#endif
}

// s = sigma(x) and c = sigma(-x) = 1 - s from one e = exp(-|x|): neither is formed as 1 - the other,
// so c keeps its relative precision where s is near 1. Exact limits, NaN in -> NaN out (as vec_math.h's sig).
template <typename T>
inline void sig2(const Vec<T>& x, Vec<T>& s, Vec<T>& c, Vec<T>* e_out = nullptr) {
  const Vec<T> e = fast_exp<T>(x.abs().neg()), d = recip<T>(Vec<T>(T(1)) + e), ed = e * d;
  const Vec<T> pos = x >= Vec<T>(T(0));
  s = Vec<T>::blendv(ed, d, pos);
  c = Vec<T>::blendv(d, ed, pos);
  if (e_out) *e_out = e;
}

// log sigma(x) = min(x, 0) - log1p(exp(-|x|)), given e = exp(-|x|); finite for finite x
template <typename T>
inline Vec<T> logsig(const Vec<T>& x, const Vec<T>& e) {
  return at::vec::minimum(x, Vec<T>(T(0))) - e.log1p();
}

// Where the gate pre-activations of one (t, b) row live: P's row, its gradient's row, the forget bias.
template <typename T>
struct Row {
  const T* p;
  const T* bias;  // (G,) added to p, or nullptr
  const T* fb;    // (H,) or nullptr
  int64_t H;
  inline Vec<T> pre(int64_t block, int64_t j, int64_t m) const {
    const Vec<T> v = ld(p + block * H, j, m);
    return bias ? v + ld(bias + block * H, j, m) : v;
  }
};

// Block offsets in units of H: minGRU (f, n[, r]), minLSTM (f, i, n[, r]).
template <int C>
struct Blocks {
  static constexpr int64_t f = 0, i = 1, n = C == MINGRU ? 1 : 2, r = C == MINGRU ? 2 : 3, count = C == MINGRU ? 2 : 3;
};

// The gates of lanes [j, j + m) of one row: primary f (and 1 - f), refine r (and 1 - r), candidate n,
// keep a and write w (a + w = 1, each computed without cancellation).
template <typename T, int C, bool R>
struct Gates {
  Vec<T> f, fc, r, rc, n, a, w;
  Vec<T> ic, v;  // minLSTM: 1 - i, and v of g = f v (refine)

  Gates(const Row<T>& row, int64_t j, int64_t m) {
    using K = Blocks<C>;
    const int64_t H = row.H;
    Vec<T> p = row.pre(K::f, j, m), q;
    if (row.fb) p = p + ld(row.fb, j, m);
    n = row.pre(K::n, j, m);
    Vec<T> ep;
    sig2<T>(p, f, fc, &ep);
    if constexpr (R) {
      q = row.pre(K::r, j, m);
      if (row.fb) q = q - ld(row.fb, j, m);
      sig2<T>(q, r, rc);
    }
    const Vec<T> two(T(2));
    if constexpr (C == MINGRU) {
      if constexpr (R) {  // g = f (f + 2 r (1 - f)), 1 - g = (1 - f)((1 - f) + 2 (1 - r) f)
        a = f * at::vec::fmadd(two * r, fc, f);
        w = fc * at::vec::fmadd(two * rc, f, fc);
      } else {
        a = f;
        w = fc;
      }
    } else {  // k = sigma(D), w = sigma(-D), D = log f (+ log v) - log i
      const Vec<T> pi = row.pre(K::i, j, m);
      Vec<T> i, ei;
      sig2<T>(pi, i, ic, &ei);
      Vec<T> d = logsig<T>(p, ep) - logsig<T>(pi, ei);
      if constexpr (R) {
        v = at::vec::fmadd(two * r, fc, f);
        d = d + at::vec::maximum(v, Vec<T>(std::numeric_limits<T>::min())).log();
      }
      sig2<T>(d, a, w);
    }
  }
};

// h = a h + w n for lanes [j, j + m) of one row
template <typename T, int C, bool R>
struct CellFwd {
  const T* P;
  const T* bias;
  const T* fb;
  int64_t B, H, G;
  inline void operator()(int64_t t, int64_t b, int64_t j, int64_t m, Vec<T>& a, Vec<T>& c) const {
    const Gates<T, C, R> g(Row<T>{P + (t * B + b) * G, bias, fb, H}, j, m);
    a = g.a;
    c = g.w * g.n;
  }
};

// Given dh (dL/dh_t, carried and direct) and h_{t-1}: writes dP of lanes [j, j + m), returns a_t.
template <typename T, int C, bool R>
struct CellBwd {
  const T* P;
  T* dP;
  const T* bias;
  const T* fb;
  int64_t B, H, G;
  bool stream;
  inline Vec<T> operator()(int64_t t, int64_t b, int64_t j, int64_t m, const Vec<T>& dh, const Vec<T>& hp) const {
    using K = Blocks<C>;
    const int64_t row = (t * B + b) * G;
    const Gates<T, C, R> g(Row<T>{P + row, bias, fb, H}, j, m);
    T* d = dP + row;
    const Vec<T> two(T(2));
    put(d + K::n * H + j, dh * g.w, m, stream);  // dn
    const Vec<T> dk = dh * (hp - g.n);       // dL/da - dL/dw, as w = 1 - a
    const Vec<T> ffc = g.f * g.fc;
    if constexpr (C == MINGRU) {
      if constexpr (R) {  // dg/dp = 2 (r (1 - f) + (1 - r) f) f (1 - f), dg/dq = 2 f (1 - f) r (1 - r)
        put(d + K::f * H + j, dk * two * at::vec::fmadd(g.r, g.fc, g.rc * g.f) * ffc, m, stream);
        put(d + K::r * H + j, dk * two * ffc * (g.r * g.rc), m, stream);
      } else {
        put(d + K::f * H + j, dk * ffc, m, stream);
      }
    } else {
      const Vec<T> dd = dk * g.a * g.w;  // dL/dD
      if constexpr (R) {                 // dlog v/dp = (1 - 2r) f (1 - f) / v, dlog v/dq = 2 (1 - f) r (1 - r) / v
        const Vec<T> inv = Vec<T>::blendv(Vec<T>(T(0)), Vec<T>(T(1)) / g.v, g.v >= Vec<T>(std::numeric_limits<T>::min()));
        put(d + K::f * H + j, dd * at::vec::fmadd((g.rc - g.r) * ffc, inv, g.fc), m, stream);
        put(d + K::r * H + j, dd * two * g.fc * g.r * g.rc * inv, m, stream);
      } else {
        put(d + K::f * H + j, dd * g.fc, m, stream);
      }
      put(d + K::i * H + j, Vec<T>(T(0)) - dd * g.ic, m, stream);
    }
    return g.a;
  }
  void zero(int64_t t, int64_t b, int64_t j0, int64_t j1) const {  // a step past the sequence's end
    T* d = dP + (t * B + b) * G;
    for (int64_t k = 0; k < G; k += H) std::fill(d + k + j0, d + k + j1, T(0));
  }
};

// the bare scan: a, c given as (T, B, H) tensors
template <typename T>
struct LinFwd {
  const T* A;
  const T* Cc;
  int64_t B, H;
  inline void operator()(int64_t t, int64_t b, int64_t j, int64_t m, Vec<T>& a, Vec<T>& c) const {
    const int64_t o = (t * B + b) * H;
    a = ld(A + o, j, m);
    c = ld(Cc + o, j, m);
  }
};

template <typename T>
struct LinBwd {
  const T* A;
  T* dA;
  T* dC;
  int64_t B, H;
  bool stream;
  inline Vec<T> operator()(int64_t t, int64_t b, int64_t j, int64_t m, const Vec<T>& dh, const Vec<T>& hp) const {
    const int64_t o = (t * B + b) * H;
    put(dA + o + j, dh * hp, m, stream);
    put(dC + o + j, dh, m, stream);
    return ld(A + o, j, m);
  }
  void zero(int64_t, int64_t, int64_t, int64_t) const {}
};

// ---- RG-LRU and HGRN (gated/cores.py: rglru_coefficients, hgrn_coefficients) ----
// Their gates read P_t and per-unit vectors only, so they take the same forward/backward loops with
// their own gate hooks. RG-LRU, blocks (a, i, n[, rho]), units (sp, q) = (softplus(-Lambda),
// sigma(-Lambda) / sp): u = c r sp = -log a_t, 1 - a = -expm1(-u), the decay g = a (refine: a^2 +
// 2 rho a (1 - a), 1 - g = (1 - a)((1 - a) + 2 (1 - rho) a)), b_t = s i P_n with s = sqrt((1 - g)(1 + g)).
// HGRN, blocks (f, i[, rho]), unit lb (or none): g = sigma(P_f + b_f) (refined as minGRU's),
// k = lb + (1 - lb) g, 1 - k = (1 - lb)(1 - g), b_t = (1 - k) SiLU(P_i).
// The backward also sums, per (row, unit), the gradient of the per-unit parameter (Lambda, lb) into
// du (B, H): each (row, unit) belongs to one piece, so one thread adds its T terms in time order.
constexpr double kRgC = 8.0;  // Griffin's c (gated.cores.RGLRU_C)

// RG-LRU blocks (a, i, n[, rho]); HGRN (f, i[, rho])
enum LruCell : int64_t { RGLRU = 2, HGRN = 3 };

template <typename T, bool R>
struct RgGates {
  Vec<T> r, rc, i, ic, n, u, a, ac, rho, rhoc, g, s;

  RgGates(const Row<T>& row, const T* sp, int64_t j, int64_t m) {
    const int64_t H = row.H;
    sig2<T>(row.pre(0, j, m), r, rc);
    sig2<T>(row.pre(1, j, m), i, ic);
    n = row.pre(2, j, m);
    u = Vec<T>(T(kRgC)) * r * ld(sp, j, m);      // -log a_t >= 0
    ac = fast_expm1<T>(u.neg()).neg();            // 1 - a_t, exact as a_t -> 1
    const Vec<T> one(T(1)), two(T(2));
    a = one - ac;
    Vec<T> norm;                                  // 1 - g^2
    if constexpr (R) {
      sig2<T>(row.pre(3, j, m), rho, rhoc);
      g = a * at::vec::fmadd(two * rho, ac, a);
      norm = ac * at::vec::fmadd(two * rhoc, a, ac) * (one + g);
    } else {
      g = a;
      norm = ac * (one + a);
    }
    s = norm.sqrt();
    (void)H;
  }
};

template <typename T, bool R>
struct RgFwd {
  const T* P;
  const T* bias;
  const T* sp;
  int64_t B, H, G;
  inline void operator()(int64_t t, int64_t b, int64_t j, int64_t m, Vec<T>& a, Vec<T>& c) const {
    const RgGates<T, R> g(Row<T>{P + (t * B + b) * G, bias, nullptr, H}, sp, j, m);
    a = g.g;
    c = g.s * g.i * g.n;
  }
};

// h_t = g h_{t-1} + s i n. With dg0 = dh h_{t-1} and ds = dh i n: dL/dg = dg0 - ds g / s, which is
// unbounded as g -> 1; it only enters multiplied by u (dg/du = -a dg/da) or by 1 - a (dg/drho =
// 2 a (1 - a)), and u / s and (1 - a) / s are bounded, so those are formed (0 where s = 0 exactly,
// as the reference's square root, whose gradient is 0 there).
template <typename T, bool R>
struct RgBwd {
  const T* P;
  T* dP;
  const T* bias;
  const T* sp;
  const T* q;   // sigma(-Lambda) / sp: du/dLambda = -u q
  T* du;        // (B, H) sums of dL/dLambda, or nullptr
  int64_t B, H, G;
  bool stream;
  inline Vec<T> operator()(int64_t t, int64_t b, int64_t j, int64_t m, const Vec<T>& dh, const Vec<T>& hp) const {
    const int64_t row = (t * B + b) * G;
    const RgGates<T, R> g(Row<T>{P + row, bias, nullptr, H}, sp, j, m);
    T* d = dP + row;
    const Vec<T> zero(T(0)), two(T(2));
    const Vec<T> dsi = dh * g.s;
    put(d + 2 * H + j, dsi * g.i, m, stream);                     // dP_n
    put(d + H + j, dsi * g.n * g.i * g.ic, m, stream);            // dP_i
    const Vec<T> ds = dh * g.i * g.n, dg0 = dh * hp;
    const Vec<T> inv = Vec<T>::blendv(g.s.reciprocal(), zero, g.s == zero);
    const Vec<T> sg = ds * g.g;
    Vec<T> duu;  // u dL/du
    if constexpr (R) {
      const Vec<T> dgda = two * at::vec::fmadd(g.rho, g.ac, g.rhoc * g.a);
      duu = (g.a * dgda * at::vec::fmsub(g.u, dg0, sg * (g.u * inv))).neg();
      put(d + 3 * H + j, two * g.a * g.rho * g.rhoc * at::vec::fmsub(g.ac, dg0, sg * (g.ac * inv)), m, stream);
    } else {
      duu = (g.a * at::vec::fmsub(g.u, dg0, sg * (g.u * inv))).neg();
    }
    put(d + j, duu * g.rc, m, stream);                            // dP_a: du/dP_a = u (1 - r)
    if (du != nullptr) {
      T* acc = du + b * H + j;
      (ld(acc, 0, m) - duu * ld(q, j, m)).store(acc, m);
    }
    return g.g;
  }
  void zero(int64_t t, int64_t b, int64_t j0, int64_t j1) const {
    T* d = dP + (t * B + b) * G;
    for (int64_t k = 0; k < G; k += H) std::fill(d + k + j0, d + k + j1, T(0));
  }
};

template <typename T, bool R>
struct HgGates {
  Vec<T> f, fc, r, rc, g, gc, k, kc, lbc, pi, si, sic, n;

  HgGates(const Row<T>& row, const T* lb, int64_t j, int64_t m) {
    const Vec<T> one(T(1)), two(T(2));
    Vec<T> p = row.pre(0, j, m);
    if (row.fb) p = p + ld(row.fb, j, m);
    sig2<T>(p, f, fc);
    if constexpr (R) {
      Vec<T> qq = row.pre(2, j, m);
      if (row.fb) qq = qq - ld(row.fb, j, m);
      sig2<T>(qq, r, rc);
      g = f * at::vec::fmadd(two * r, fc, f);
      gc = fc * at::vec::fmadd(two * rc, f, fc);
    } else {
      g = f;
      gc = fc;
    }
    if (lb != nullptr) {
      const Vec<T> l = ld(lb, j, m);
      lbc = one - l;
      k = at::vec::fmadd(lbc, g, l);
      kc = lbc * gc;
    } else {
      lbc = one;
      k = g;
      kc = gc;
    }
    pi = row.pre(1, j, m);
    sig2<T>(pi, si, sic);
    n = pi * si;  // SiLU
  }
};

template <typename T, bool R>
struct HgFwd {
  const T* P;
  const T* bias;
  const T* fb;
  const T* lb;
  int64_t B, H, G;
  inline void operator()(int64_t t, int64_t b, int64_t j, int64_t m, Vec<T>& a, Vec<T>& c) const {
    const HgGates<T, R> g(Row<T>{P + (t * B + b) * G, bias, fb, H}, lb, j, m);
    a = g.k;
    c = g.kc * g.n;
  }
};

template <typename T, bool R>
struct HgBwd {
  const T* P;
  T* dP;
  const T* bias;
  const T* fb;
  const T* lb;
  T* du;  // (B, H) sums of dL/dlb, or nullptr
  int64_t B, H, G;
  bool stream;
  inline Vec<T> operator()(int64_t t, int64_t b, int64_t j, int64_t m, const Vec<T>& dh, const Vec<T>& hp) const {
    const int64_t row = (t * B + b) * G;
    const HgGates<T, R> g(Row<T>{P + row, bias, fb, H}, lb, j, m);
    T* d = dP + row;
    const Vec<T> one(T(1)), two(T(2));
    // dSiLU/dx = s (1 + x (1 - s))
    put(d + H + j, dh * g.kc * g.si * at::vec::fmadd(g.pi, g.sic, one), m, stream);
    const Vec<T> dk = dh * (hp - g.n);  // dL/dk - dL/d(1 - k)
    const Vec<T> dg = dk * g.lbc, ffc = g.f * g.fc;
    if constexpr (R) {
      put(d + j, dg * two * at::vec::fmadd(g.r, g.fc, g.rc * g.f) * ffc, m, stream);
      put(d + 2 * H + j, dg * two * ffc * (g.r * g.rc), m, stream);
    } else {
      put(d + j, dg * ffc, m, stream);
    }
    if (du != nullptr) {  // dk/dlb = 1 - g, d(1 - k)/dlb = -(1 - g)
      T* acc = du + b * H + j;
      at::vec::fmadd(dk, g.gc, ld(acc, 0, m)).store(acc, m);
    }
    return g.k;
  }
  void zero(int64_t t, int64_t b, int64_t j0, int64_t j1) const {
    T* d = dP + (t * B + b) * G;
    for (int64_t k = 0; k < G; k += H) std::fill(d + k + j0, d + k + j1, T(0));
  }
};

// The pieces a call is split into: (row b, units [j0, j1)), kChunk units each.
struct Pieces {
  int64_t B, H, per_row, count;
  Pieces(int64_t B_, int64_t H_) : B(B_), H(H_), per_row((H_ + kChunk - 1) / kChunk), count(B_ * per_row) {}
  int64_t b(int64_t u) const { return u / per_row; }
  int64_t j0(int64_t u) const { return (u % per_row) * kChunk; }
  int64_t j1(int64_t u) const { return std::min(j0(u) + kChunk, H); }
};

// Pieces per thread: a whole call on one thread when it is small (threads cost more than they save).
inline int64_t grain(const Pieces& pc, int64_t Tn) { return Tn * pc.B * pc.H < (int64_t(1) << 16) ? pc.count : 1; }

// out[t] = h_t = a_t h_{t-1} + c_t (0 and the state held where t >= len[b]); hn = the last state.
template <typename T, typename F>
void forward(int64_t Tn, int64_t B, int64_t H, const T* h0, const int64_t* len, T* out, T* hn, const F& coef) {
  const Pieces pc(B, H);
  const bool stream = Tn * B * H * int64_t(sizeof(T)) >= kStreamBytes;
  at::parallel_for(0, pc.count, grain(pc, Tn), [&](int64_t u0, int64_t u1) {
    std::vector<T> st((u1 - u0) * kChunk);
    for (int64_t u = u0; u < u1; ++u)
      std::copy(h0 + pc.b(u) * H + pc.j0(u), h0 + pc.b(u) * H + pc.j1(u), st.data() + (u - u0) * kChunk);
    for (int64_t t = 0; t < Tn; ++t) {
      for (int64_t u = u0; u < u1; ++u) {
        const int64_t b = pc.b(u), j0 = pc.j0(u), j1 = pc.j1(u);
        T* o = out + (t * B + b) * H;
        if (len != nullptr && t >= len[b]) {
          std::fill(o + j0, o + j1, T(0));
          continue;
        }
        T* s = st.data() + (u - u0) * kChunk;  // the piece's state, unit j at s[j - j0]
        lanes<T>(j0, j1, [&](int64_t j, int64_t m) {
          Vec<T> a, c;
          coef(t, b, j, m, a, c);
          const Vec<T> h = at::vec::fmadd(a, ld(s, j - j0, m), c);
          put(o + j, h, m, stream);
          h.store(s + (j - j0), m);
        });
      }
    }
    for (int64_t u = u0; u < u1; ++u)
      std::copy(st.data() + (u - u0) * kChunk, st.data() + (u - u0) * kChunk + (pc.j1(u) - pc.j0(u)),
                hn + pc.b(u) * H + pc.j0(u));
    fence();
  });
}

// The reverse scan: dh = dout_t + carry; grad(...) writes the step's gradients and returns a_t;
// carry = a_t dh. dh0 = the carry left at t = 0. Steps past a sequence's end pass the carry through.
template <typename T, typename F>
void backward(int64_t Tn, int64_t B, int64_t H, const T* dout, const T* dhn, const T* out, const T* h0,
              const int64_t* len, T* dh0, const F& grad) {
  const Pieces pc(B, H);
  at::parallel_for(0, pc.count, grain(pc, Tn), [&](int64_t u0, int64_t u1) {
    std::vector<T> st((u1 - u0) * kChunk, T(0));
    if (dhn != nullptr)
      for (int64_t u = u0; u < u1; ++u)
        std::copy(dhn + pc.b(u) * H + pc.j0(u), dhn + pc.b(u) * H + pc.j1(u), st.data() + (u - u0) * kChunk);
    for (int64_t t = Tn - 1; t >= 0; --t) {
      for (int64_t u = u0; u < u1; ++u) {
        const int64_t b = pc.b(u), j0 = pc.j0(u), j1 = pc.j1(u);
        if (len != nullptr && t >= len[b]) {
          grad.zero(t, b, j0, j1);
          continue;
        }
        T* s = st.data() + (u - u0) * kChunk;
        const T* g = dout != nullptr ? dout + (t * B + b) * H : nullptr;  // no dout: only h_n was used
        const T* hp = t > 0 ? out + ((t - 1) * B + b) * H : h0 + b * H;
        lanes<T>(j0, j1, [&](int64_t j, int64_t m) {
          const Vec<T> dh = g != nullptr ? ld(s, j - j0, m) + ld(g, j, m) : ld(s, j - j0, m);
          (grad(t, b, j, m, dh, ld(hp, j, m)) * dh).store(s + (j - j0), m);
        });
      }
    }
    for (int64_t u = u0; u < u1; ++u)
      std::copy(st.data() + (u - u0) * kChunk, st.data() + (u - u0) * kChunk + (pc.j1(u) - pc.j0(u)),
                dh0 + pc.b(u) * H + pc.j0(u));
    fence();
  });
}

// The weight and bias gradients of a layer with few inputs: dWb (G, K) = dP^T [x, 1], dP (N, G), x (N, I),
// N = T B, K = I (+ 1 with the sums column). A product with a long inner dimension and a thin result,
// which BLAS libraries split over the inner dimension across threads (MKL's sgemm does at these
// shapes), so that its sums depend on the thread count. Here the sums have a fixed order: rows in
// groups of kGradSub summed in registers, the groups added in order into the partial sum of their
// chunk of kGradRows rows, and the chunks' partial sums added in chunk order; the same arithmetic,
// so the same bits, for any thread count. Work pieces are (chunk, kGradCols columns); six columns
// of [x, 1] at a time keep 12 accumulators in registers (two vectors of dP's columns each, within
// AVX2's 16 registers) while the group's rows (16 KB in float32) stay in L1 for the next six.
constexpr int64_t kGradRows = 1024;
constexpr int64_t kGradSub = 16;
constexpr int64_t kGradCols = 256;

// sums over the rows r in [0, n) of d[r * G + j] * xs[r * K + k0 + kk], kk < KN, lanes j < m (two
// vectors, whole ones when FULL): stored to part[(k0 + kk) * G + j] when `first`, else added to it
template <typename T, int KN, bool FULL>
inline void thin_block(const T* d, const T* xs, int64_t n, int64_t G, int64_t K, int64_t k0, int64_t m, T* part,
                       bool first) {
  constexpr int64_t L = Vec<T>::size();
  const int64_t m0 = FULL ? L : std::min(m, L), m1 = FULL ? L : m - m0;  // lanes of the two vectors
  Vec<T> acc[KN][2];
  for (int kk = 0; kk < KN; ++kk) acc[kk][0] = acc[kk][1] = Vec<T>(T(0));
  for (int64_t r = 0; r < n; ++r, d += G) {
    Vec<T> d0, d1;
    if constexpr (FULL) {
      d0 = Vec<T>::loadu(d);
      d1 = Vec<T>::loadu(d + L);
    } else {
      d0 = Vec<T>::loadu(d, m0);
      d1 = m1 > 0 ? Vec<T>::loadu(d + L, m1) : Vec<T>(T(0));
    }
    const T* xr = xs + r * K + k0;
    for (int kk = 0; kk < KN; ++kk) {
      const Vec<T> xv(xr[kk]);
      acc[kk][0] = at::vec::fmadd(xv, d0, acc[kk][0]);
      acc[kk][1] = at::vec::fmadd(xv, d1, acc[kk][1]);
    }
  }
  for (int kk = 0; kk < KN; ++kk) {
    T* dst = part + (k0 + kk) * G;
    if (first) {
      acc[kk][0].store(dst, m0);
      if (m1 > 0) acc[kk][1].store(dst + L, m1);
    } else {
      (Vec<T>::loadu(dst, m0) + acc[kk][0]).store(dst, m0);
      if (m1 > 0) (Vec<T>::loadu(dst + L, m1) + acc[kk][1]).store(dst + L, m1);
    }
  }
}

template <typename T, bool FULL>
inline void thin_columns(const T* d, const T* xs, int64_t n, int64_t G, int64_t K, int64_t m, T* part, bool first) {
  int64_t k0 = 0;
  for (; k0 + 6 <= K; k0 += 6) thin_block<T, 6, FULL>(d, xs, n, G, K, k0, m, part, first);
  switch (K - k0) {
    case 5: thin_block<T, 5, FULL>(d, xs, n, G, K, k0, m, part, first); break;
    case 4: thin_block<T, 4, FULL>(d, xs, n, G, K, k0, m, part, first); break;
    case 3: thin_block<T, 3, FULL>(d, xs, n, G, K, k0, m, part, first); break;
    case 2: thin_block<T, 2, FULL>(d, xs, n, G, K, k0, m, part, first); break;
    case 1: thin_block<T, 1, FULL>(d, xs, n, G, K, k0, m, part, first); break;
    default: break;
  }
}

template <typename T>
void thin_grad(const T* dP, const T* x, int64_t N, int64_t G, int64_t I, int64_t K, T* out) {
  constexpr int64_t W = 2 * Vec<T>::size();
  const int64_t chunks = (N + kGradRows - 1) / kGradRows, cols = (G + kGradCols - 1) / kGradCols;
  std::vector<T> part(chunks * K * G);  // chunk c's sums at part[c K G + k G + g], every one written below
  at::parallel_for(0, chunks * cols, 1, [&](int64_t p0, int64_t p1) {
    std::vector<T> xs(kGradSub * K);  // a group's rows of [x, 1]
    for (int64_t p = p0; p < p1; ++p) {
      const int64_t c = p / cols, g0 = (p % cols) * kGradCols, g1 = std::min(G, g0 + kGradCols);
      const int64_t r0 = c * kGradRows, r1 = std::min(N, r0 + kGradRows);
      T* dst = part.data() + c * K * G;
      for (int64_t s = r0; s < r1; s += kGradSub) {
        const int64_t n = std::min(r1 - s, kGradSub);
        for (int64_t r = 0; r < n; ++r) {
          std::copy(x + (s + r) * I, x + (s + r + 1) * I, xs.data() + r * K);
          if (K > I) xs[r * K + I] = T(1);
        }
        for (int64_t g = g0; g < g1; g += W) {
          const T* d = dP + s * G + g;
          if (g + W <= g1) thin_columns<T, true>(d, xs.data(), n, G, K, W, dst + g, s == r0);
          else thin_columns<T, false>(d, xs.data(), n, G, K, g1 - g, dst + g, s == r0);
        }
      }
    }
  });
  at::parallel_for(0, G, 256, [&](int64_t g0, int64_t g1) {  // the chunks' sums, in chunk order
    for (int64_t g = g0; g < g1; ++g) {
      for (int64_t k = 0; k < K; ++k) {
        T total = part[k * G + g];
        for (int64_t c = 1; c < chunks; ++c) total += part[(c * K + k) * G + g];
        out[g * K + k] = total;
      }
    }
  });
}

inline void check_float(const Tensor& t, const char* what) {
  TORCH_CHECK(t.device().is_cpu(), "gated scan: ", what, " must be a CPU tensor");
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, "gated scan: ", what,
              " must be float32 or float64, got ", t.scalar_type());
}

inline int64_t blocks(int64_t cell, bool refine) {
  TORCH_CHECK(cell == MINGRU || cell == MINLSTM, "gated scan: unknown cell ", cell);
  return (cell == MINGRU ? 2 : 3) + (refine ? 1 : 0);
}

// Checks shared by the fused ops; returns H.
inline int64_t check_cell(const Tensor& P, const std::optional<Tensor>& bias, const std::optional<Tensor>& fb,
                          const Tensor& h0, const std::optional<Tensor>& lengths, int64_t cell, bool refine) {
  TORCH_CHECK(P.dim() == 3, "gated scan: the projection must be (T, B, G), got ", P.sizes());
  check_float(P, "the projection");
  const int64_t H = h0.size(-1), k = blocks(cell, refine);
  TORCH_CHECK(h0.dim() == 2 && h0.size(0) == P.size(1) && P.size(2) == k * H, "gated scan: projection ", P.sizes(),
              " and h0 ", h0.sizes(), " disagree (G must be ", k, " x H)");
  TORCH_CHECK(h0.scalar_type() == P.scalar_type(), "gated scan: h0 and the projection differ in dtype");
  if (bias) TORCH_CHECK(bias->dim() == 1 && bias->size(0) == P.size(2) && bias->scalar_type() == P.scalar_type(),
                        "gated scan: bias must be (G,) of the projection's dtype");
  if (fb) TORCH_CHECK(fb->dim() == 1 && fb->size(0) == H && fb->scalar_type() == P.scalar_type(),
                      "gated scan: forget_bias must be (H,) of the projection's dtype");
  if (lengths) {
    TORCH_CHECK(lengths->scalar_type() == at::kLong && lengths->dim() == 1 && lengths->size(0) == P.size(1),
                "gated scan: lengths must be (B,) int64");
    TORCH_CHECK(lengths->device().is_cpu(), "gated scan: lengths must be on the CPU");
  }
  return H;
}

template <typename F>
inline void dispatch(int64_t cell, bool refine, const F& f) {  // f(cell tag, refine tag)
  if (cell == MINGRU) {
    if (refine) f(std::integral_constant<int, MINGRU>{}, std::true_type{});
    else f(std::integral_constant<int, MINGRU>{}, std::false_type{});
  } else {
    if (refine) f(std::integral_constant<int, MINLSTM>{}, std::true_type{});
    else f(std::integral_constant<int, MINLSTM>{}, std::false_type{});
  }
}

inline const int64_t* len_ptr(const std::optional<Tensor>& lc) { return lc ? lc->data_ptr<int64_t>() : nullptr; }

inline std::optional<Tensor> contig(const std::optional<Tensor>& t) {
  return t ? std::optional<Tensor>(t->contiguous()) : std::nullopt;
}

template <typename T>
inline const T* ptr(const std::optional<Tensor>& t) { return t ? t->data_ptr<T>() : nullptr; }

}  // namespace scan

// (out (T, B, H), h_n (B, H)) of a minGRU / minLSTM layer from its projection P = x W^T (+ bias, added here).
std::tuple<Tensor, Tensor> scan_forward(const Tensor& P_, const std::optional<Tensor>& bias_,
                                        const std::optional<Tensor>& fb_, const Tensor& h0_,
                                        const std::optional<Tensor>& lengths, int64_t cell, bool refine) {
  const int64_t H = scan::check_cell(P_, bias_, fb_, h0_, lengths, cell, refine);
  at::NoGradGuard no_grad;
  const Tensor P = P_.contiguous(), h0 = h0_.contiguous();
  const auto bias = scan::contig(bias_), fb = scan::contig(fb_), lc = scan::contig(lengths);
  const int64_t Tn = P.size(0), B = P.size(1), G = P.size(2);
  Tensor out = empty({Tn, B, H}, P.options()), hn = empty({B, H}, P.options());
  if (B == 0 || H == 0) return {out.zero_(), hn.zero_()};
  AT_DISPATCH_FLOATING_TYPES(P.scalar_type(), "scan_forward", [&] {
    using T = scalar_t;
    scan::dispatch(cell, refine, [&](auto c, auto r) {
      scan::forward<T>(Tn, B, H, h0.data_ptr<T>(), scan::len_ptr(lc), out.data_ptr<T>(), hn.data_ptr<T>(),
                       scan::CellFwd<T, decltype(c)::value, decltype(r)::value>{
                           P.data_ptr<T>(), scan::ptr<T>(bias), scan::ptr<T>(fb), B, H, G});
    });
  });
  return {out, hn};
}

// (dP (T, B, G), dh0 (B, H)) given dL/dout and dL/dh_n (either may be absent: zero), from the forward's P and out.
std::tuple<Tensor, Tensor> scan_backward(const std::optional<Tensor>& dout_, const std::optional<Tensor>& dhn_,
                                         const Tensor& P_,
                                         const std::optional<Tensor>& bias_, const std::optional<Tensor>& fb_,
                                         const Tensor& out_, const Tensor& h0_, const std::optional<Tensor>& lengths,
                                         int64_t cell, bool refine) {
  const int64_t H = scan::check_cell(P_, bias_, fb_, h0_, lengths, cell, refine);
  TORCH_CHECK(out_.dim() == 3 && out_.size(0) == P_.size(0) && out_.size(1) == P_.size(1) && out_.size(2) == H &&
                  (!dout_ || dout_->sizes() == out_.sizes()),
              "gated scan: dout and out must be (T, B, H)");
  if (dhn_) TORCH_CHECK(dhn_->sizes() == h0_.sizes(), "gated scan: dh_n must be (B, H)");
  at::NoGradGuard no_grad;
  const Tensor P = P_.contiguous(), h0 = h0_.contiguous(), out = out_.contiguous();
  const auto dout = scan::contig(dout_), dhn = scan::contig(dhn_), bias = scan::contig(bias_), fb = scan::contig(fb_), lc = scan::contig(lengths);
  const int64_t Tn = P.size(0), B = P.size(1), G = P.size(2);
  Tensor dP = empty({Tn, B, G}, P.options()), dh0 = empty({B, H}, P.options());
  if (B == 0 || H == 0) return {dP.zero_(), dh0.zero_()};
  AT_DISPATCH_FLOATING_TYPES(P.scalar_type(), "scan_backward", [&] {
    using T = scalar_t;
    scan::dispatch(cell, refine, [&](auto c, auto r) {
      scan::backward<T>(Tn, B, H, scan::ptr<T>(dout), scan::ptr<T>(dhn), out.data_ptr<T>(), h0.data_ptr<T>(),
                        scan::len_ptr(lc), dh0.data_ptr<T>(),
                        scan::CellBwd<T, decltype(c)::value, decltype(r)::value>{
                            P.data_ptr<T>(), dP.data_ptr<T>(), scan::ptr<T>(bias), scan::ptr<T>(fb), B, H, G,
                            dP.nbytes() >= scan::kStreamBytes});
    });
  });
  return {dP, dh0};
}

// h_t = a_t h_{t-1} + c_t over (T, B, H) (any (T, N) is (T, 1, N)); returns every h_t.
Tensor linear_scan(const Tensor& a_, const Tensor& c_, const Tensor& h0_) {
  scan::check_float(a_, "a");
  TORCH_CHECK(a_.dim() == 3 && c_.sizes() == a_.sizes() && h0_.dim() == 2 && h0_.size(0) == a_.size(1) &&
                  h0_.size(1) == a_.size(2),
              "gated linear_scan: a and b must be (T, B, H) and h0 (B, H); got ", a_.sizes(), ", ", c_.sizes(), ", ",
              h0_.sizes());
  TORCH_CHECK(c_.scalar_type() == a_.scalar_type() && h0_.scalar_type() == a_.scalar_type(),
              "gated linear_scan: a, b and h0 must have one dtype");
  at::NoGradGuard no_grad;
  const Tensor a = a_.contiguous(), c = c_.contiguous(), h0 = h0_.contiguous();
  const int64_t Tn = a.size(0), B = a.size(1), H = a.size(2);
  Tensor out = empty({Tn, B, H}, a.options()), hn = empty({B, H}, a.options());
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "linear_scan", [&] {
    using T = scalar_t;
    scan::forward<T>(Tn, B, H, h0.data_ptr<T>(), nullptr, out.data_ptr<T>(), hn.data_ptr<T>(),
                     scan::LinFwd<T>{a.data_ptr<T>(), c.data_ptr<T>(), B, H});
  });
  return out;
}

// (da, db, dh0) of linear_scan given dL/dout, from its a, out and h0.
std::tuple<Tensor, Tensor, Tensor> linear_scan_backward(const Tensor& dout_, const Tensor& a_, const Tensor& out_,
                                                        const Tensor& h0_) {
  scan::check_float(a_, "a");
  TORCH_CHECK(dout_.sizes() == a_.sizes() && out_.sizes() == a_.sizes() && a_.dim() == 3,
              "gated linear_scan_backward: dout, a and out must be (T, B, H)");
  at::NoGradGuard no_grad;
  const Tensor a = a_.contiguous(), out = out_.contiguous(), h0 = h0_.contiguous(), dout = dout_.contiguous();
  const int64_t Tn = a.size(0), B = a.size(1), H = a.size(2);
  Tensor da = empty({Tn, B, H}, a.options()), dc = empty({Tn, B, H}, a.options()), dh0 = empty({B, H}, a.options());
  if (a.numel() == 0) return {da, dc, dh0.zero_()};
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "linear_scan_backward", [&] {
    using T = scalar_t;
    scan::backward<T>(Tn, B, H, dout.data_ptr<T>(), nullptr, out.data_ptr<T>(), h0.data_ptr<T>(), nullptr,
                      dh0.data_ptr<T>(),
                      scan::LinBwd<T>{a.data_ptr<T>(), da.data_ptr<T>(), dc.data_ptr<T>(), B, H,
                                      da.nbytes() >= scan::kStreamBytes});
  });
  return {da, dc, dh0};
}

// dP^T [x, 1] (G, I + 1), or dP^T x (G, I) without append_sums: the weight and bias gradients of a
// thin layer, dP (N, G) and x (N, I), with sums that do not depend on the thread count (thin_grad).
Tensor scan_weight_grad(const Tensor& dP_, const Tensor& x_, bool append_sums) {
  scan::check_float(dP_, "dP");
  TORCH_CHECK(dP_.dim() == 2 && x_.dim() == 2 && dP_.size(0) == x_.size(0), "gated scan_weight_grad: dP (N, G) and ",
              "x (N, I) expected, got ", dP_.sizes(), " and ", x_.sizes());
  TORCH_CHECK(x_.scalar_type() == dP_.scalar_type() && x_.device() == dP_.device(),
              "gated scan_weight_grad: dP and x differ in dtype or device");
  at::NoGradGuard no_grad;
  const Tensor dP = dP_.contiguous(), x = x_.contiguous();
  const int64_t N = dP.size(0), G = dP.size(1), I = x.size(1), K = I + (append_sums ? 1 : 0);
  Tensor out = empty({G, K}, dP.options());
  if (N == 0) return out.zero_();
  if (G == 0 || K == 0) return out;
  AT_DISPATCH_FLOATING_TYPES(dP.scalar_type(), "scan_weight_grad", [&] {
    scan::thin_grad<scalar_t>(dP.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), N, G, I, K, out.data_ptr<scalar_t>());
  });
  return out;
}

namespace scan {
// Checks of the RG-LRU / HGRN ops; returns H. units: RG-LRU (2, H) = (sp, q), HGRN (1, H) = lb or absent.
inline int64_t check_lru(const Tensor& P, const std::optional<Tensor>& bias, const std::optional<Tensor>& fb,
                         const std::optional<Tensor>& units, const Tensor& h0, const std::optional<Tensor>& lengths,
                         int64_t cell, bool refine) {
  TORCH_CHECK(cell == RGLRU || cell == HGRN, "gated lru scan: unknown cell ", cell);
  TORCH_CHECK(P.dim() == 3, "gated lru scan: the projection must be (T, B, G), got ", P.sizes());
  check_float(P, "the projection");
  const int64_t H = h0.size(-1), k = (cell == RGLRU ? 3 : 2) + (refine ? 1 : 0);
  TORCH_CHECK(h0.dim() == 2 && h0.size(0) == P.size(1) && P.size(2) == k * H, "gated lru scan: projection ",
              P.sizes(), " and h0 ", h0.sizes(), " disagree (G must be ", k, " x H)");
  TORCH_CHECK(h0.scalar_type() == P.scalar_type(), "gated lru scan: h0 and the projection differ in dtype");
  if (bias) TORCH_CHECK(bias->dim() == 1 && bias->size(0) == P.size(2) && bias->scalar_type() == P.scalar_type(),
                        "gated lru scan: bias must be (G,) of the projection's dtype");
  if (fb) TORCH_CHECK(cell == HGRN && fb->dim() == 1 && fb->size(0) == H && fb->scalar_type() == P.scalar_type(),
                      "gated lru scan: forget_bias must be (H,) of the projection's dtype (HGRN only)");
  if (cell == RGLRU) {
    TORCH_CHECK(units && units->dim() == 2 && units->size(0) == 2 && units->size(1) == H &&
                    units->scalar_type() == P.scalar_type(),
                "gated lru scan: RG-LRU needs units (2, H) = (softplus(-Lambda), sigmoid(-Lambda) / softplus(-Lambda))");
  } else if (units) {
    TORCH_CHECK(units->dim() == 2 && units->size(0) == 1 && units->size(1) == H && units->scalar_type() == P.scalar_type(),
                "gated lru scan: HGRN's units must be (1, H): the lower bound");
  }
  if (lengths) {
    TORCH_CHECK(lengths->scalar_type() == at::kLong && lengths->dim() == 1 && lengths->size(0) == P.size(1),
                "gated lru scan: lengths must be (B,) int64");
    TORCH_CHECK(lengths->device().is_cpu(), "gated lru scan: lengths must be on the CPU");
  }
  return H;
}

template <typename F>
inline void dispatch_refine(bool refine, const F& f) {
  if (refine) f(std::true_type{});
  else f(std::false_type{});
}
}  // namespace scan

// (out (T, B, H), h_n (B, H)) of an RG-LRU / HGRN layer from its projection P = x W^T (+ bias, added here).
std::tuple<Tensor, Tensor> lru_forward(const Tensor& P_, const std::optional<Tensor>& bias_,
                                       const std::optional<Tensor>& fb_, const std::optional<Tensor>& units_,
                                       const Tensor& h0_, const std::optional<Tensor>& lengths, int64_t cell,
                                       bool refine) {
  const int64_t H = scan::check_lru(P_, bias_, fb_, units_, h0_, lengths, cell, refine);
  at::NoGradGuard no_grad;
  const Tensor P = P_.contiguous(), h0 = h0_.contiguous();
  const auto bias = scan::contig(bias_), fb = scan::contig(fb_), units = scan::contig(units_), lc = scan::contig(lengths);
  const int64_t Tn = P.size(0), B = P.size(1), G = P.size(2);
  Tensor out = empty({Tn, B, H}, P.options()), hn = empty({B, H}, P.options());
  if (B == 0 || H == 0) return {out.zero_(), hn.zero_()};
  AT_DISPATCH_FLOATING_TYPES(P.scalar_type(), "lru_forward", [&] {
    using T = scalar_t;
    const T* u = scan::ptr<T>(units);
    scan::dispatch_refine(refine, [&](auto r) {
      constexpr bool Rf = decltype(r)::value;
      if (cell == scan::RGLRU)
        scan::forward<T>(Tn, B, H, h0.data_ptr<T>(), scan::len_ptr(lc), out.data_ptr<T>(), hn.data_ptr<T>(),
                         scan::RgFwd<T, Rf>{P.data_ptr<T>(), scan::ptr<T>(bias), u, B, H, G});
      else
        scan::forward<T>(Tn, B, H, h0.data_ptr<T>(), scan::len_ptr(lc), out.data_ptr<T>(), hn.data_ptr<T>(),
                         scan::HgFwd<T, Rf>{P.data_ptr<T>(), scan::ptr<T>(bias), scan::ptr<T>(fb), u, B, H, G});
    });
  });
  return {out, hn};
}

// (dP (T, B, G), dh0 (B, H), du (B, H)) given dL/dout and dL/dh_n (either may be absent: zero): du holds,
// per batch row, the gradient of the per-unit parameter (RG-LRU: Lambda; HGRN: the lower bound), summed
// over time, when unit_grad (else it is (0,)).
std::tuple<Tensor, Tensor, Tensor> lru_backward(const std::optional<Tensor>& dout_, const std::optional<Tensor>& dhn_,
                                                const Tensor& P_, const std::optional<Tensor>& bias_,
                                                const std::optional<Tensor>& fb_, const std::optional<Tensor>& units_,
                                                const Tensor& out_, const Tensor& h0_,
                                                const std::optional<Tensor>& lengths, int64_t cell, bool refine,
                                                bool unit_grad) {
  const int64_t H = scan::check_lru(P_, bias_, fb_, units_, h0_, lengths, cell, refine);
  TORCH_CHECK(out_.dim() == 3 && out_.size(0) == P_.size(0) && out_.size(1) == P_.size(1) && out_.size(2) == H &&
                  (!dout_ || dout_->sizes() == out_.sizes()),
              "gated lru scan: dout and out must be (T, B, H)");
  if (dhn_) TORCH_CHECK(dhn_->sizes() == h0_.sizes(), "gated lru scan: dh_n must be (B, H)");
  TORCH_CHECK(!unit_grad || units_, "gated lru scan: unit_grad needs units");
  at::NoGradGuard no_grad;
  const Tensor P = P_.contiguous(), h0 = h0_.contiguous(), out = out_.contiguous();
  const auto dout = scan::contig(dout_), dhn = scan::contig(dhn_), bias = scan::contig(bias_), fb = scan::contig(fb_),
             units = scan::contig(units_), lc = scan::contig(lengths);
  const int64_t Tn = P.size(0), B = P.size(1), G = P.size(2);
  Tensor dP = empty({Tn, B, G}, P.options()), dh0 = empty({B, H}, P.options());
  Tensor du = unit_grad ? at::zeros({B, H}, P.options()) : at::zeros({0}, P.options());
  if (B == 0 || H == 0) return {dP.zero_(), dh0.zero_(), du};
  AT_DISPATCH_FLOATING_TYPES(P.scalar_type(), "lru_backward", [&] {
    using T = scalar_t;
    const T* u = scan::ptr<T>(units);
    T* dup = unit_grad ? du.data_ptr<T>() : nullptr;
    const bool stream = dP.nbytes() >= scan::kStreamBytes;
    scan::dispatch_refine(refine, [&](auto r) {
      constexpr bool Rf = decltype(r)::value;
      if (cell == scan::RGLRU)
        scan::backward<T>(Tn, B, H, scan::ptr<T>(dout), scan::ptr<T>(dhn), out.data_ptr<T>(), h0.data_ptr<T>(),
                          scan::len_ptr(lc), dh0.data_ptr<T>(),
                          scan::RgBwd<T, Rf>{P.data_ptr<T>(), dP.data_ptr<T>(), scan::ptr<T>(bias), u, u + H, dup,
                                             B, H, G, stream});
      else
        scan::backward<T>(Tn, B, H, scan::ptr<T>(dout), scan::ptr<T>(dhn), out.data_ptr<T>(), h0.data_ptr<T>(),
                          scan::len_ptr(lc), dh0.data_ptr<T>(),
                          scan::HgBwd<T, Rf>{P.data_ptr<T>(), dP.data_ptr<T>(), scan::ptr<T>(bias), scan::ptr<T>(fb),
                                             u, dup, B, H, G, stream});
    });
  });
  return {dP, dh0, du};
}

TORCH_LIBRARY_FRAGMENT(gated_fused, m) {
  m.def(
      "scan_forward(Tensor P, Tensor? bias, Tensor? fb, Tensor h0, Tensor? lengths, int cell, bool refine) "
      "-> (Tensor, Tensor)");
  m.def(
      "scan_backward(Tensor? dout, Tensor? dh_n, Tensor P, Tensor? bias, Tensor? fb, Tensor out, Tensor h0, "
      "Tensor? lengths, int cell, bool refine) -> (Tensor, Tensor)");
  m.def("linear_scan(Tensor a, Tensor b, Tensor h0) -> Tensor");
  m.def("linear_scan_backward(Tensor dout, Tensor a, Tensor out, Tensor h0) -> (Tensor, Tensor, Tensor)");
  m.def("scan_weight_grad(Tensor dP, Tensor x, bool append_sums) -> Tensor");
  m.def(
      "lru_forward(Tensor P, Tensor? bias, Tensor? fb, Tensor? units, Tensor h0, Tensor? lengths, int cell, "
      "bool refine) -> (Tensor, Tensor)");
  m.def(
      "lru_backward(Tensor? dout, Tensor? dh_n, Tensor P, Tensor? bias, Tensor? fb, Tensor? units, Tensor out, "
      "Tensor h0, Tensor? lengths, int cell, bool refine, bool unit_grad) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(gated_fused, CPU, m) {
  m.impl("scan_forward", &scan_forward);
  m.impl("scan_backward", &scan_backward);
  m.impl("linear_scan", &linear_scan);
  m.impl("linear_scan_backward", &linear_scan_backward);
  m.impl("scan_weight_grad", &scan_weight_grad);
  m.impl("lru_forward", &lru_forward);
  m.impl("lru_backward", &lru_backward);
}
