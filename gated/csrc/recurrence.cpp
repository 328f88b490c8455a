// Fused CPU recurrence for the gated cores (LSTM, GRU, MGU) in their plain and refine variants.
//
// The time loop runs here, outside Python: per step one GEMM for the recurrent projection and one
// vectorised pointwise pass over the gates. The input projection for all steps is one GEMM before
// the loop. Backward walks time in reverse, writing the pre-activation gradients of every step
// into one (T, B, G) buffer, so the weight gradients are single large GEMMs done by the caller.
// Glossary: T time, B batch, H hidden, G gate rows; "refine" = paper Eq. 10 with shared b_f.
// The equations are those of gated/cores.py (the reference); tests/test_fused.py checks equality.

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512DQ__) && defined(__AVX512VL__)
#define CPU_CAPABILITY AVX512
#define CPU_CAPABILITY_AVX512
#elif defined(__AVX2__) && defined(__FMA__)
#define CPU_CAPABILITY AVX2
#define CPU_CAPABILITY_AVX2
#else
#define CPU_CAPABILITY DEFAULT
#endif

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/stack.h>
#include <omp.h>
#include <torch/library.h>

#if defined(__GLIBC__)
#include <malloc.h>
#endif

#include <atomic>
#include <limits>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "pool.h"
#include "tiled_gemm.h"

using at::Tensor;

namespace {

enum Core : int64_t { LSTM = 0, GRU = 1, MGU = 2 };

// Tests set this so that every buffer starts as NaN: a value the kernels forget to write shows up.
bool g_poison = false;

Tensor empty(at::IntArrayRef sizes, const at::TensorOptions& opts) {
  Tensor t = pool::empty(sizes, opts);
  if (g_poison) t.fill_(std::numeric_limits<double>::quiet_NaN());
  return t;
}

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

struct Step {  // what one pointwise pass needs; pointers to row 0, strides in elements
  int64_t B, H, G, t;
  const int64_t* len;  // (B,) or nullptr
  bool refine;
  int64_t j0, j1;  // the hidden units [j0, j1) this pass covers (a thread's share, or all H)
  bool masked(int64_t b) const { return len != nullptr && t >= len[b]; }
};

// row[k * H + j] = v for every gate block k < G / H and unit j in [s.j0, s.j1)
template <typename T>
inline void fill_units(const Step& s, T* row, T v) {
  for (int64_t k = 0; k < s.G; k += s.H) std::fill(row + k + s.j0, row + k + s.j1, v);
}

// ---------------------------------------------------------------- recurrent GEMM

// oneDNN's matmul with a weight reordered once into its blocked layout (torch's mkldnn ops,
// the same kernels its own LSTM uses). Looked up in the dispatcher; absent without mkldnn.
struct OneDnn {
  std::optional<c10::OperatorHandle> reorder, linear, linear_add;
  OneDnn() {
    auto& d = c10::Dispatcher::singleton();
    reorder = d.findSchema({"mkldnn::_reorder_linear_weight", ""});
    linear = d.findSchema({"mkldnn::_linear_pointwise", ""});
    linear_add = d.findSchema({"mkldnn::_linear_pointwise", "binary"});
  }
  bool ok() const { return reorder && linear && linear_add; }
};

const OneDnn& onednn() {
  static OneDnn o;
  return o;
}

// 2 was MKL's packed GEMM, removed: the tiled kernel serves AVX2 and AVX-512, and oneDNN (in every
// torch CPU build) the rest
enum GemmKind : int64_t { kAuto = 0, kOneDnn = 1, kAddmm = 3, kTiled = 4 };
int64_t g_gemm = kAuto;  // tests pin each path
std::atomic<int64_t> g_tiled_runs{0};  // time loops run on the tiled kernel (gated bench reports it)

// C + A (M x K) @ op(W), with op(W) = W^T for W (N, K) or W for W (K, N); the recurrent weight is
// prepared once per call and reused by the T steps. run() returns the result: C itself where the
// product accumulates in place, else a new tensor.
class RecurrentGemm {
 public:
  // steps: how many products will use the weight; with one, preparing it costs more than it saves
  RecurrentGemm(const Tensor& w, bool transpose, int64_t M, int64_t steps) : w_(w), transpose_(transpose), M_(M) {
    K_ = transpose ? w.size(1) : w.size(0);
    N_ = transpose ? w.size(0) : w.size(1);
    const bool f32 = w.scalar_type() == at::kFloat && (steps > 1 || g_gemm != kAuto);
    if (f32 && (g_gemm == kAuto || g_gemm == kOneDnn) && onednn().ok()) {
      Tensor wt = transpose ? w : w.t().contiguous();  // oneDNN's linear takes (N, K)
      packed_ = onednn().reorder->typed<Tensor(const Tensor&, std::optional<int64_t>)>().call(wt, M);
      kind_ = kOneDnn;
    }
  }
  // C may be undefined (no accumulation); out is scratch of shape (M, N) for that case.
  Tensor run(const Tensor& A, const Tensor& C, Tensor& out) const {
    const bool acc = C.defined();
    if (kind_ == kOneDnn) {
      if (acc) {
        return onednn().linear_add->typed<Tensor(const Tensor&, const Tensor&, const Tensor&,
                                                 const std::optional<Tensor>&, c10::string_view)>()
            .call(A, C, packed_, std::nullopt, "add");
      }
      torch::jit::Stack stack{A, packed_, c10::IValue(), std::string("none"),
                              c10::List<std::optional<at::Scalar>>(), c10::IValue()};
      onednn().linear->callBoxed(stack);
      return stack[0].toTensor();
    }
    Tensor dst = acc ? C : out;
    if (acc) {
      dst.addmm_(A, transpose_ ? w_.t() : w_);
    } else {
      at::mm_out(dst, A, transpose_ ? w_.t() : w_);
    }
    return dst;
  }

 private:
  Tensor w_, packed_;
  bool transpose_;
  int64_t M_, K_ = 0, N_ = 0, kind_ = kAddmm;
};

// ---------------------------------------------------------------- forward pointwise

// LSTM: A holds pre-activations (i|r, f, g, o) and gets the activations back.
template <typename T>
void lstm_fwd(const Step& s, const T* P, T* A, const T* cp, T* ct, T* ht, const T* fb, int64_t b0, int64_t b1) {
  const int64_t H = s.H, G = s.G;
  for (int64_t b = b0; b < b1; ++b) {
    const T* p = P + b * G;  // pre-activations (may alias a)
    T* a = A + b * G;
    const T* c0 = cp + b * H;
    T *c1 = ct + b * H, *h1 = ht + b * H;
    if (s.masked(b)) {  // past the sequence's end: hold the state, output 0
      std::copy(c0 + s.j0, c0 + s.j1, c1 + s.j0);
      std::fill(h1 + s.j0, h1 + s.j1, T(0));
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
      Vec<T> c = keep * ld(c0, j, n) + write * u;
      (o * th(c)).store(h1 + j, n);
      c.store(c1 + j, n);
      i.store(a + j, n);
      f.store(a + H + j, n);
      u.store(a + 2 * H + j, n);
      o.store(a + 3 * H + j, n);
    });
  }
}

// GRU (blocks s, z, n[, rho]) and MGU (blocks f, n[, rho]): A holds the input projection (with
// every bias but b_hn), gh the recurrent projection; ghn_out keeps W_hn h + b_hn for backward.
template <typename T>
void gru_mgu_fwd(const Step& s, int64_t core, T* A, const T* gh, const T* hp, T* ht, T* ghn_out, const T* bhn,
                 const T* fb, int64_t b0, int64_t b1) {
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
      (keep * ld(h0, j, n) + (one - keep) * cand).store(h1 + j, n);
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
// dhn gets the part of dh_{t-1} that does not go through W_hh (the carry of masked rows).
template <typename T>
void lstm_bwd(const Step& s, const T* A, const T* cp, const T* ct, const T* dout, const T* dh, T* dc, T* dA, T* dhn,
              int64_t b0, int64_t b1) {
  const int64_t H = s.H, G = s.G;
  for (int64_t b = b0; b < b1; ++b) {
    const T* a = A + b * G;
    T* da = dA + b * G;
    if (s.masked(b)) {  // the state was held: gradients pass through unchanged
      fill_units(s, da, T(0));
      std::copy(dh + b * H + s.j0, dh + b * H + s.j1, dhn + b * H + s.j0);
      continue;
    }
    std::fill(dhn + b * H + s.j0, dhn + b * H + s.j1, T(0));
    lanes<T>(s.j0, s.j1, [&](int64_t j, int64_t n) {
      Vec<T> one(T(1));
      Vec<T> i = ld(a, j, n), f = ld(a + H, j, n), u = ld(a + 2 * H, j, n), o = ld(a + 3 * H, j, n);
      Vec<T> c0 = ld(cp + b * H, j, n), tc = th(ld(ct + b * H, j, n));
      Vec<T> dht = ld(dout + b * H, j, n) + ld(dh + b * H, j, n);
      Vec<T> dct = ld(dc + b * H, j, n) + dht * o * (one - tc * tc);
      Vec<T> dpo = dht * tc * o * (one - o), dpu, dpi, dpf, dcp;
      if (s.refine) {
        Vec<T> g, dgdf, dgdr;
        refine_grads(f, i, g, dgdf, dgdr);
        Vec<T> dg = dct * (c0 - u);
        dpu = dct * (one - g) * (one - u * u);
        dpf = dg * dgdf * f * (one - f);
        dpi = dg * dgdr * i * (one - i);
        dcp = dct * g;
      } else {
        dpu = dct * i * (one - u * u);
        dpf = dct * c0 * f * (one - f);
        dpi = dct * u * i * (one - i);
        dcp = dct * f;
      }
      dpi.store(da + j, n);
      dpf.store(da + H + j, n);
      dpu.store(da + 2 * H + j, n);
      dpo.store(da + 3 * H + j, n);
      dcp.store(dc + b * H + j, n);
    });
  }
}

// GRU / MGU: writes dA_t (grads of the input projection), S (grads of the recurrent projection,
// which differ in the candidate block), dghn_t, and dhn = the direct part of dh_{t-1}.
template <typename T>
void gru_mgu_bwd(const Step& s, int64_t core, const T* A, const T* ghn_t, const T* hp, const T* dout, const T* dh,
                 T* dA, T* S, T* dghn, T* dhn, int64_t b0, int64_t b1) {
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
      Vec<T> h0 = ld(hp + b * H, j, n), dht = ld(dout + b * H, j, n) + ld(dh + b * H, j, n);
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
      (dht * keep).store(dhn + b * H + j, n);
    });
  }
}

template <typename F>
void rows(int64_t B, int64_t H, const F& f) {
  const int64_t grain = std::max<int64_t>(1, 4096 / std::max<int64_t>(H, 1));
  at::parallel_for(0, B, grain, f);
}

// ---------------------------------------------------------------- drivers

inline int64_t ring(bool save, int64_t t) { return save ? t : t % 2; }  // row of step t's state

// A team of threads for a whole time loop: one OpenMP parallel region, synchronised by barrier()
// between steps (cheaper than a fork and join per step). body(tid, nth) runs on each thread; the
// team has at most `work` threads (its units of work), and one inside another parallel region.
template <typename F>
void team(int64_t work, const F& body) {
  const int64_t nth = at::in_parallel_region() ? 1 : std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), work));
  if (nth == 1) {
    body(0, 1);
    return;
  }
#pragma omp parallel num_threads(nth)
  body(omp_get_thread_num(), omp_get_num_threads());
}

inline void barrier() {
#pragma omp barrier
}

// the start of thread tid's share of n items split into nth contiguous, near-equal parts
inline int64_t share(int64_t n, int64_t tid, int64_t nth) { return n * tid / nth; }

// The tiled AVX-512 path (tiled_gemm.h) for float32: at each time step every thread of one team
// computes its hidden units' share of the recurrent product and then their gate maths.
template <typename T>
constexpr bool use_tiled() {
#if defined(GATED_TILED_GEMM)
  return std::is_same_v<T, float>;
#else
  return false;
#endif
}

inline bool tiled_chosen() { return g_gemm == kAuto || g_gemm == kTiled; }

// save: keep what backward needs (every step's gate activations, c_t or W_hn h + b_hn). Without
// it (inference) the input projection runs in chunks of steps into one reused buffer and the
// per-step states live in two rows, so memory does not grow with T beyond the output.
template <typename T>
std::vector<Tensor> forward_impl(const Tensor& x, const Tensor& w_ih, const Tensor& w_hh,
                                 const std::optional<Tensor>& bias_x, const std::optional<Tensor>& b_hn,
                                 const std::optional<Tensor>& fb, const Tensor& h0, const std::optional<Tensor>& c0,
                                 const std::optional<Tensor>& lengths, const std::optional<Tensor>& w_hr,
                                 int64_t core, bool refine, bool save) {
  // P: the width of h (proj_size with projections, else H); H: the hidden units (the gates' width)
  const int64_t Tn = x.size(0), B = x.size(1), I = x.size(2), G = w_ih.size(0), P = w_hh.size(1);
  const bool proj = w_hr.has_value();
  const int64_t H = proj ? w_hr->size(1) : P;
  auto opts = x.options();
  // steps per input projection: about 512 rows keeps the buffer in cache and reused across calls
  const int64_t chunk = save ? Tn : std::min(Tn, std::max<int64_t>(1, 512 / B));
  Tensor A = empty({chunk, B, G}, opts);  // gate pre-activations, then activations
  Tensor out = empty({Tn, B, P}, opts);
  Tensor aux = empty({save ? Tn : 2, B, H}, opts);  // LSTM: c_t; GRU/MGU: W_hn h + b_hn
  // with projections: m_t = o_t * tanh(c_t) before the projection h_t = m_t W_hr^T (kept for
  // W_hr's gradient when saving)
  Tensor M = proj ? empty({save ? Tn : 2, B, H}, opts) : Tensor();
  Tensor gh = empty({B, G}, opts);
  Tensor len = lengths ? lengths->contiguous() : Tensor();
  const int64_t* lp = len.defined() ? len.data_ptr<int64_t>() : nullptr;
  const T* fbp = fb ? fb->data_ptr<T>() : nullptr;
  const T* bhnp = b_hn ? b_hn->data_ptr<T>() : nullptr;
  std::optional<RecurrentGemm> gemm;  // h (B, H) @ W_hh^T -> (B, G)
#if defined(GATED_TILED_GEMM)
  std::optional<tiled::Panels> wh, wi;
  if constexpr (use_tiled<T>()) {
    // projections run the per-step GEMMs below; so do calls of fewer than 4 rows (T x B), where
    // packing the weights (a copy of each) costs more than the products (one-step streaming at
    // batch 1: 83 us against 117 us for a UR-LSTM with H = 256, one thread)
    if (tiled_chosen() && !proj && (Tn * B >= 4 || g_gemm == kTiled)) {
      wh.emplace(w_hh.data_ptr<float>(), 1, H, H, G / H, H);  // B(k, n) = W_hh[n, k]
      wi.emplace(w_ih.data_ptr<float>(), 1, I, I, G / H, H);
    }
  }
  const bool tiled = wh.has_value();
  if (tiled) ++g_tiled_runs;
#else
  const bool tiled = false;
#endif
  // step t's rows: gate buffer, output, state (c or W_hn h + b_hn), previous h and c; raw pointers,
  // since indexing tensors per step costs microseconds of dispatch at small sizes
  T *Ap = A.data_ptr<T>(), *outp = out.data_ptr<T>(), *auxp = aux.data_ptr<T>();
  T* Mp = proj ? M.data_ptr<T>() : nullptr;
  const T *h0p = h0.data_ptr<T>(), *c0p = core == LSTM ? c0->data_ptr<T>() : nullptr;
  auto step = [&](int64_t t, int64_t t0) {
    struct {
      T *a, *h, *state;  // h: where the pointwise pass writes h_t (m_t with projections)
      const T *h_prev, *c_prev;
    } r{Ap + (t - t0) * B * G, proj ? Mp + ring(save, t) * B * H : outp + t * B * H, auxp + ring(save, t) * B * H,
        nullptr, nullptr};
    r.h_prev = t == 0 ? h0p : outp + (t - 1) * B * P;
    if (core == LSTM) r.c_prev = t == 0 ? c0p : auxp + ring(save, t - 1) * B * H;
    return r;
  };
  // LSTM: pre = gx_t + h W_hh^T (accumulated into A_t); GRU/MGU: pre = h W_hh^T on its own
  auto pointwise = [&](const Step& s, const auto& r, const T* pre, int64_t b0, int64_t b1) {
    if (core == LSTM) {
      lstm_fwd<T>(s, pre, r.a, r.c_prev, r.state, r.h, fbp, b0, b1);
    } else {
      gru_mgu_fwd<T>(s, core, r.a, pre, r.h_prev, r.h, r.state, bhnp, fbp, b0, b1);
    }
  };
#if defined(GATED_TILED_GEMM)
  if constexpr (use_tiled<T>()) {
    if (tiled) {
      // one team for the whole sequence: per chunk, its share of the input projection's rows;
      // per step, its groups' share of the recurrent product and then their units' gate maths
      const float *xp = x.data_ptr<float>(), *bp = bias_x ? bias_x->data_ptr<float>() : nullptr;
      float* ghp = gh.data_ptr<float>();
      const int64_t groups = wh->groups();
      team(groups, [&](int64_t tid, int64_t nth) {
        const int64_t q0 = share(groups, tid, nth), q1 = share(groups, tid + 1, nth);
        for (int64_t t0 = 0; t0 < Tn; t0 += chunk) {
          const int64_t n = std::min(chunk, Tn - t0);
          wi->run(xp + t0 * B * I, I, share(n * B, tid, nth), share(n * B, tid + 1, nth), Ap, G, 0, wi->groups(), bp, 0);
          barrier();
          for (int64_t t = t0; t < t0 + n; ++t) {
            const auto r = step(t, t0);
            float* dst = core == LSTM ? r.a : ghp;
            wh->run(r.h_prev, H, 0, B, dst, G, q0, q1, core == LSTM ? dst : nullptr, G);
            const Step own{B, H, G, t, lp, refine, wh->unit_begin(q0), wh->unit_end(q1)};
            pointwise(own, r, dst, 0, B);
            barrier();
          }
        }
      });
    }
  }
#endif
  if (!tiled) {
    gemm.emplace(w_hh, /*transpose=*/true, B, Tn);
    std::optional<RecurrentGemm> projection;  // m_t (B, H) @ W_hr^T -> h_t (B, P)
    if (proj) projection.emplace(*w_hr, /*transpose=*/true, B, Tn);
    for (int64_t t0 = 0; t0 < Tn; t0 += chunk) {
      const int64_t n = std::min(chunk, Tn - t0);
      Tensor a2 = A.narrow(0, 0, n).view({n * B, G}), x2 = x.narrow(0, t0, n).reshape({n * B, I});
      // the input projection of n steps at once, written in place (addmm_out with a broadcast bias
      // would go through a fresh temporary on every chunk)
      if (bias_x) {
        a2.copy_(bias_x->expand({n * B, G}));
        a2.addmm_(x2, w_ih.t());
      } else {
        at::mm_out(a2, x2, w_ih.t());
      }
      for (int64_t t = t0; t < t0 + n; ++t) {
        const auto r = step(t, t0);
        Tensor pre = gemm->run(t == 0 ? h0 : out[t - 1], core == LSTM ? A[t - t0] : Tensor(), gh);
        const T* pp = pre.data_ptr<T>();
        const Step s{B, H, G, t, lp, refine, 0, H};
        rows(B, H, [&](int64_t b0, int64_t b1) { pointwise(s, r, pp, b0, b1); });
        if (proj) {  // masked rows of m are 0, so their outputs are too
          Tensor h_t = out[t];
          Tensor res = projection->run(M[ring(save, t)], Tensor(), h_t);
          if (res.data_ptr() != h_t.data_ptr()) h_t.copy_(res);
        }
      }
    }
  }
  Tensor h_n = empty({B, P}, opts);
  if (lp == nullptr) {
    h_n.copy_(out[Tn - 1]);
  } else {  // each sequence's state at its last step
    for (int64_t b = 0; b < B; ++b) h_n[b].copy_(lp[b] > 0 ? out[lp[b] - 1][b] : h0[b]);
  }
  Tensor c_n = core == LSTM ? aux[ring(save, Tn - 1)].clone() : empty({0}, opts);  // c is held past each end
  if (!save) return {out, h_n, c_n, empty({0}, opts), empty({0}, opts), empty({0}, opts)};
  return {out, h_n, c_n, A, aux, proj ? M : empty({0}, opts)};
}

template <typename T>
std::vector<Tensor> backward_impl(const Tensor& dout, const Tensor& dh_n, const std::optional<Tensor>& dc_n,
                                  const Tensor& A, const Tensor& aux, const Tensor& out, const Tensor& h0,
                                  const std::optional<Tensor>& c0, const Tensor& w_hh,
                                  const std::optional<Tensor>& lengths, const std::optional<Tensor>& w_hr,
                                  int64_t core, bool refine) {
  const int64_t Tn = A.size(0), B = A.size(1), G = A.size(2), P = w_hh.size(1);
  const int64_t H = w_hr ? w_hr->size(1) : P;
  auto opts = A.options();
  Tensor dA = empty({Tn, B, G}, opts);
  Tensor dghn = core == LSTM ? empty({0}, opts) : empty({Tn, B, H}, opts);
  // GRU/MGU: the grads of the recurrent projection, two buffers (the tiled path reads step t+1's
  // while it writes step t's)
  Tensor S = core == LSTM ? Tensor() : empty({2, B, G}, opts);
  Tensor dh = dh_n.contiguous().clone();  // dL/dh_t carried backwards
  Tensor buf0 = empty({B, H}, opts), buf1 = empty({B, H}, opts);
  Tensor dc = core == LSTM ? dc_n->contiguous().clone() : Tensor();
  Tensor len = lengths ? lengths->contiguous() : Tensor();
  const int64_t* lp = len.defined() ? len.data_ptr<int64_t>() : nullptr;
  // the grads that feed W_hh at step t: dA_t (LSTM) or S_t
  auto src = [&](int64_t t) -> Tensor { return core == LSTM ? dA[t] : S[t % 2]; };
  // raw row pointers of step t (per-step tensor indexing costs microseconds at small sizes)
  const T *Ap = A.data_ptr<T>(), *auxp = aux.data_ptr<T>(), *outp = out.data_ptr<T>(), *doutp = dout.data_ptr<T>();
  T *dAp = dA.data_ptr<T>(), *Sp = core == LSTM ? nullptr : S.data_ptr<T>();
  T* dghnp = core == LSTM ? nullptr : dghn.data_ptr<T>();
  T* dcp = core == LSTM ? dc.data_ptr<T>() : nullptr;
  auto pointwise = [&](const Step& s, const T* dhp, T* dhnp, int64_t b0, int64_t b1) {
    const int64_t t = s.t, BG = B * G, BH = B * H;
    const T *ap = Ap + t * BG, *dop = doutp + t * BH;
    T* dap = dAp + t * BG;
    if (core == LSTM) {
      const T *cp = t == 0 ? c0->data_ptr<T>() : auxp + (t - 1) * BH, *ct = auxp + t * BH;
      lstm_bwd<T>(s, ap, cp, ct, dop, dhp, dcp, dap, dhnp, b0, b1);
    } else {
      const T *q = auxp + t * BH, *hp = t == 0 ? h0.data_ptr<T>() : outp + (t - 1) * BH;
      gru_mgu_bwd<T>(s, core, ap, q, hp, dop, dhp, dap, Sp + (t % 2) * BG, dghnp + t * BH, dhnp, b0, b1);
    }
  };
  if (w_hr) {
    // LSTM with projections, h_t = m_t W_hr^T: per step the gradient of h_t (dout_t plus the carry
    // from step t+1, kept in dH for W_hr's gradient) goes back through W_hr to m_t, then through
    // the gates; the carry to step t-1 is dA_t @ W_hh, plus the carry itself on rows already past
    // their sequence's end (held state; their dout is not part of the graph)
    Tensor dH = empty({Tn, B, P}, opts), dm = empty({B, H}, opts);
    Tensor zero = at::zeros({B, H}, opts), unused = empty({B, H}, opts), scratch = empty({B, P}, opts);
    Tensor carry0 = empty({B, P}, opts), carry1 = empty({B, P}, opts);
    RecurrentGemm gemm(w_hh, /*transpose=*/false, B, Tn);  // dgates (B, G) @ W_hh -> (B, P)
    for (int64_t t = Tn - 1; t >= 0; --t) {
      Tensor d = dH[t];
      at::add_out(d, dout[t], dh);
      at::mm_out(dm, d, *w_hr);
      Tensor carry = dh.data_ptr() == carry0.data_ptr() ? carry1 : carry0;
      const T* dhp = dh.data_ptr<T>();
      T* kp = carry.data_ptr<T>();
      for (int64_t b = 0; b < B; ++b) {
        if (lp != nullptr && t >= lp[b]) {
          std::copy(dhp + b * P, dhp + (b + 1) * P, kp + b * P);
        } else {
          std::fill(kp + b * P, kp + (b + 1) * P, T(0));
        }
      }
      const Step s{B, H, G, t, lp, refine, 0, H};
      const T *ap = Ap + t * B * G, *cp = t == 0 ? c0->data_ptr<T>() : auxp + (t - 1) * B * H, *ct = auxp + t * B * H;
      const T *dmp = dm.data_ptr<T>(), *zp = zero.data_ptr<T>();
      T* up = unused.data_ptr<T>();
      rows(B, H, [&](int64_t b0, int64_t b1) { lstm_bwd<T>(s, ap, cp, ct, dmp, zp, dcp, dAp + t * B * G, up, b0, b1); });
      dh = gemm.run(dA[t], carry, scratch);
    }
    return {dA, dghn, dh, dc, dH};
  }
#if defined(GATED_TILED_GEMM)
  if constexpr (use_tiled<T>()) {
    if (tiled_chosen() && (Tn * B >= 4 || g_gemm == kTiled)) {
      // step t, per thread: dh_t = src_{t+1} @ W_hh + dhn_{t+1} for its units, then step t's
      // pointwise on them (which overwrites dhn with dhn_t); the last pass only finishes dh_0
      const tiled::Panels wh(w_hh.data_ptr<float>(), H, 1, G, 1, H);  // B(k, n) = W_hh[k, n]
      float *dhp = dh.data_ptr<float>(), *dhnp = buf0.data_ptr<float>();
      const int64_t groups = wh.groups();
      team(groups, [&](int64_t tid, int64_t nth) {
        const int64_t q0 = share(groups, tid, nth), q1 = share(groups, tid + 1, nth);
        for (int64_t t = Tn - 1; t >= -1; --t) {
          const float* sp = t + 1 >= Tn ? nullptr : core == LSTM ? dAp + (t + 1) * B * G : Sp + ((t + 1) % 2) * B * G;
          if (sp != nullptr) wh.run(sp, G, 0, B, dhp, H, q0, q1, dhnp, H);
          if (t >= 0) {
            const Step own{B, H, G, t, lp, refine, wh.unit_begin(q0), wh.unit_end(q1)};
            pointwise(own, dhp, dhnp, 0, B);
          }
          barrier();
        }
      });
      return {dA, dghn, dh, core == LSTM ? dc : empty({0}, opts), empty({0}, opts)};
    }
  }
#endif
  RecurrentGemm gemm(w_hh, /*transpose=*/false, B, Tn);  // dgates (B, G) @ W_hh -> (B, H)
  Tensor scratch = empty({B, H}, opts);
  for (int64_t t = Tn - 1; t >= 0; --t) {
    Step s{B, H, G, t, lp, refine, 0, H};
    Tensor dhn = dh.data_ptr() == buf0.data_ptr() ? buf1 : buf0;  // the part of dh_{t-1} outside W_hh
    const T* dhp = dh.data_ptr<T>();
    T* dhnp = dhn.data_ptr<T>();
    rows(B, H, [&](int64_t b0, int64_t b1) { pointwise(s, dhp, dhnp, b0, b1); });
    dh = gemm.run(src(t), dhn, scratch);
  }
  return {dA, dghn, dh, core == LSTM ? dc : empty({0}, opts), empty({0}, opts)};
}

void check(const Tensor& x, const Tensor& w_hh) {
  TORCH_CHECK(x.device().is_cpu(), "gated fused CPU backend: tensors must be on the CPU");
  TORCH_CHECK(x.dim() == 3 && x.size(0) > 0 && x.size(1) > 0,
              "gated fused CPU backend: a (T, B, .) sequence with T > 0 and B > 0 expected, got ", x.sizes());
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble,
              "gated fused CPU backend: float32 or float64 only, got ", x.scalar_type());
  TORCH_CHECK(x.is_contiguous() && w_hh.is_contiguous(), "gated fused CPU backend: contiguous tensors expected");
}

using Tensors6 = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>;
using Tensors5 = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor>;

// torch's two biases as the kernels take them: b_ih + b_hh added to the input projection, except
// that GRU/MGU keep the candidate block's b_hn apart (it sits inside the reset product)
std::pair<std::optional<Tensor>, std::optional<Tensor>> split_biases(const std::optional<Tensor>& b_ih,
                                                                    const std::optional<Tensor>& b_hh, int64_t core,
                                                                    int64_t H) {
  if (!b_ih) return {std::nullopt, std::nullopt};
  if (core == LSTM) return {*b_ih + *b_hh, std::nullopt};
  const int64_t kn = core == GRU ? 2 : 1;  // the candidate block
  Tensor rec = b_hh->clone(), b_hn = b_hh->narrow(0, kn * H, H).contiguous();
  rec.narrow(0, kn * H, H).zero_();
  return {*b_ih + rec, b_hn};
}

Tensors6 recurrence_forward(const Tensor& x, const Tensor& w_ih, const Tensor& w_hh, const std::optional<Tensor>& b_ih,
                            const std::optional<Tensor>& b_hh, const std::optional<Tensor>& fb, const Tensor& h0,
                            const std::optional<Tensor>& c0, const std::optional<Tensor>& lengths,
                            const std::optional<Tensor>& w_hr, int64_t core, bool refine, bool save) {
  check(x, w_hh);
  TORCH_CHECK(!w_hr || (core == LSTM && w_hr->is_contiguous()), "gated fused CPU backend: projections are LSTM only");
  TORCH_CHECK(b_ih.has_value() == b_hh.has_value(), "gated fused CPU backend: both biases or neither");
  at::NoGradGuard no_grad;
  const auto [bias_x, b_hn] = split_biases(b_ih, b_hh, core, w_hr ? w_hr->size(1) : w_hh.size(1));
  auto r = AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "gated_recurrence_forward", [&] {
    return forward_impl<scalar_t>(x, w_ih, w_hh, bias_x, b_hn, fb, h0.contiguous(),
                                  c0 ? std::optional<Tensor>(c0->contiguous()) : c0, lengths, w_hr, core, refine,
                                  save);
  });
  return {r[0], r[1], r[2], r[3], r[4], r[5]};
}

Tensors5 recurrence_backward(const Tensor& dout, const Tensor& dh_n, const std::optional<Tensor>& dc_n,
                             const Tensor& A, const Tensor& aux, const Tensor& out, const Tensor& h0,
                             const std::optional<Tensor>& c0, const Tensor& w_hh, const std::optional<Tensor>& lengths,
                             const std::optional<Tensor>& w_hr, int64_t core, bool refine) {
  check(A, w_hh);
  at::NoGradGuard no_grad;
  auto r = AT_DISPATCH_FLOATING_TYPES(A.scalar_type(), "gated_recurrence_backward", [&] {
    return backward_impl<scalar_t>(dout.contiguous(), dh_n, dc_n, A, aux, out, h0.contiguous(),
                                   c0 ? std::optional<Tensor>(c0->contiguous()) : c0, w_hh, lengths, w_hr, core,
                                   refine);
  });
  return {r[0], r[1], r[2], r[3], r[4]};
}

}  // namespace

void set_poison(bool on) { g_poison = on; }

// The per-step GEMM outputs (B x G floats, often > 128 KB) would otherwise go through glibc's
// mmap/munmap on every step and page-fault each time. Keep blocks up to 32 MB on the heap.
bool tune_malloc() {
#if defined(__GLIBC__)
  return mallopt(M_MMAP_THRESHOLD, 32 << 20) == 1 && mallopt(M_TRIM_THRESHOLD, 64 << 20) == 1;
#else
  return false;
#endif
}
// a @ b, or a^T @ b with transpose_a (a is (K, M) then), for float32 on the tiled kernel; other
// dtypes, builds without AVX-512 and a pinned non-tiled GEMM path go through at::mm. With
// append_sums the result has one more column, the sums over k of op(a) (= op(a) @ ones). The
// backward uses it for the weight and bias gradients dA^T @ [x, h_{t-1}, 1], where the thin
// transposed product is slow on MKL's generic kernels.
Tensor tiled_mm(const Tensor& a, const Tensor& b, bool transpose_a, bool append_sums) {
  TORCH_CHECK(a.dim() == 2 && b.dim() == 2, "tiled_mm: 2-D operands expected");
  TORCH_CHECK(a.size(transpose_a ? 0 : 1) == b.size(0), "tiled_mm: inner sizes differ");
  const Tensor opa = transpose_a ? a.t() : a;
#if defined(GATED_TILED_GEMM)
  if (a.scalar_type() == at::kFloat && b.scalar_type() == at::kFloat && tiled_chosen() && a.device().is_cpu() &&
      b.device().is_cpu() && a.size(0) > 0 && a.size(1) > 0 && b.size(1) > 0) {
    at::NoGradGuard no_grad;
    Tensor ac = a.contiguous(), bc = b.stride(1) == 1 ? b : b.contiguous();
    const int64_t K = bc.size(0), N = bc.size(1), M = opa.size(0), ldc = N + (append_sums ? 1 : 0);
    Tensor c = empty({M, ldc}, bc.options());
    Tensor sums = append_sums ? empty({M}, bc.options()) : Tensor();
    const tiled::Panels panels(bc.data_ptr<float>(), bc.stride(0), 1, K, 1, N);
    panels.matmul(ac.data_ptr<float>(), transpose_a ? 1 : K, transpose_a ? M : 1, M, c.data_ptr<float>(), ldc,
                  append_sums ? sums.data_ptr<float>() : nullptr);
    if (append_sums) c.select(1, N).copy_(sums);
    return c;
  }
#endif
  Tensor c = opa.mm(b);
  return append_sums ? at::cat({c, opa.sum(1, /*keepdim=*/true)}, 1) : c;
}

// The weight-gradient products of the backward, with a (T*B, M) = dA, x2 (T*B, I), h0 (B, H),
// out (T, B, H) and P = [h_{t-1}, x_t] (T*B, H + I): returns a^T @ P with the sums of a as one more
// column when append_sums, and, given a2 (T*B, M2) (the GRU/MGU candidate's own recurrent
// grads), a2^T @ h_{t-1} (+ sums) from the same packed P (else an empty second result). The tiled kernel reads P piece by
// piece into its panels, never materialising it; other paths build it and call tiled_mm.
std::tuple<Tensor, Tensor> xh_mm(const Tensor& a, const std::optional<Tensor>& a2, const Tensor& x2, const Tensor& h0,
                          const Tensor& out, bool append_sums) {
  const int64_t TB = a.size(0), I = x2.size(1), Bn = h0.size(0), H = h0.size(1), M = a.size(1), N = H + I;
  TORCH_CHECK(x2.size(0) == TB && out.numel() == TB * H && (!a2 || a2->size(0) == TB), "xh_mm: sizes disagree");
  const int64_t extra = append_sums ? 1 : 0;
#if defined(GATED_TILED_GEMM)
  if (a.scalar_type() == at::kFloat && tiled_chosen() && TB > 0 && M > 0 && H > 0) {
    at::NoGradGuard no_grad;
    Tensor xc = x2.contiguous(), hc = h0.contiguous(), oc = out.contiguous();
    const float *xp = xc.data_ptr<float>(), *hp = hc.data_ptr<float>(), *op = oc.data_ptr<float>();
    auto at = [&](int64_t k, int64_t c) -> const float* {
      if (c >= H) return xp + k * I + (c - H);
      return k < Bn ? hp + k * H + c : op + (k - Bn) * H + c;
    };
    const tiled::Panels panels(at, {H}, TB, N);
    auto product = [&](const Tensor& lhs, int64_t cols, int64_t groups) {
      Tensor l = lhs.contiguous();
      const int64_t m = l.size(1), ldc = cols + extra;
      Tensor c = empty({m, ldc}, l.options());
      Tensor sums = append_sums ? empty({m}, l.options()) : Tensor();
      panels.matmul(l.data_ptr<float>(), 1, m, m, c.data_ptr<float>(), ldc, append_sums ? sums.data_ptr<float>() : nullptr,
                    groups);
      if (append_sums) c.select(1, cols).copy_(sums);
      return c;
    };
    std::tuple<Tensor, Tensor> res{product(a, N, -1), at::empty({0}, a.options())};
    if (a2) {  // the groups that cover h's columns; they may run into x's, which are dropped
      const int64_t groups = (H + panels.units() - 1) / panels.units();
      const int64_t cols = std::min(N, groups * panels.units());
      Tensor c = product(*a2, cols, groups);
      std::get<1>(res) = cols == H ? c : at::cat({c.narrow(1, 0, H), c.narrow(1, cols, extra)}, 1);
    }
    return res;
  }
#endif
  Tensor h_prev = at::cat({h0.unsqueeze(0), out.reshape({-1, Bn, H}).narrow(0, 0, TB / std::max<int64_t>(Bn, 1) - 1)}, 0)
                      .reshape({TB, H});
  Tensor second = a2 ? tiled_mm(*a2, h_prev, /*transpose_a=*/true, append_sums) : at::empty({0}, a.options());
  return {tiled_mm(a, at::cat({h_prev, x2}, 1), /*transpose_a=*/true, append_sums), second};
}

void set_gemm(int64_t kind) { g_gemm = kind; }
int64_t tiled_runs() { return g_tiled_runs.load(); }
std::string isa() {  // the instruction set this build's kernels use
#if defined(CPU_CAPABILITY_AVX512)
  return "avx512";
#elif defined(CPU_CAPABILITY_AVX2)
  return "avx2";
#else
  return "default";
#endif
}
// the pooled buffers (pool.h): switching reuse on and off, and dropping the idle buffers
void set_pool(bool on) { pool::enabled() = on; }
int64_t empty_cache() { return pool::release(); }
std::vector<int64_t> gemm_kinds() {  // which recurrent GEMMs this build can use
  std::vector<int64_t> k{kAddmm};
  if (onednn().ok()) k.push_back(kOneDnn);
#if defined(GATED_TILED_GEMM)
  k.push_back(kTiled);
#endif
  return k;
}

// The compute ops have schemas (so torch.compile, torch.export and torch.func see typed, functional
// operators; their fake implementations and batching rules are in gated/backends/_ops.py) and CPU
// kernels only. The settings ops are plain functions.
TORCH_LIBRARY(gated_fused, m) {
  m.def("set_poison", &set_poison);
  m.def("tune_malloc", &tune_malloc);
  m.def("set_gemm", &set_gemm);
  m.def("gemm_kinds", &gemm_kinds);
  m.def("tiled_runs", &tiled_runs);
  m.def("isa", &isa);
  m.def("set_pool", &set_pool);
  m.def("empty_cache", &empty_cache);
  m.def("tiled_mm(Tensor a, Tensor b, bool transpose_a, bool append_sums) -> Tensor");
  m.def("xh_mm(Tensor a, Tensor? a2, Tensor x2, Tensor h0, Tensor out, bool append_sums) -> (Tensor, Tensor)");
  m.def(
      "recurrence_forward(Tensor x, Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh, Tensor? fb, Tensor h0, "
      "Tensor? c0, Tensor? lengths, Tensor? w_hr, int core, bool refine, bool save) "
      "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "recurrence_backward(Tensor dout, Tensor dh_n, Tensor? dc_n, Tensor A, Tensor aux, Tensor out, Tensor h0, "
      "Tensor? c0, Tensor w_hh, Tensor? lengths, Tensor? w_hr, int core, bool refine) "
      "-> (Tensor, Tensor, Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(gated_fused, CPU, m) {
  m.impl("tiled_mm", &tiled_mm);
  m.impl("xh_mm", &xh_mm);
  m.impl("recurrence_forward", &recurrence_forward);
  m.impl("recurrence_backward", &recurrence_backward);
}
#include "scan.h"  // the scan cores (MinGRU, MinLSTM): their own ops in the same library
