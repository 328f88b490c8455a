// The time loop of the fused kernels (included by recurrence.cpp): forward_impl and backward_impl
// walk the T steps, each one recurrent GEMM (recurrent_gemm.h) and one pointwise pass (cells.h).
// On the tiled path one OpenMP team runs the whole loop, each thread on its share of the hidden
// units (the weights packed, tiled_gemm.h, or for a small forward read where they lie,
// direct_gemm.h); otherwise each step's pointwise pass splits the batch rows (rows()); the buffers come
// from empty() (pool.h, NaN-filled in tests).
// Glossary: T time (Tn its count), B batch, I input features, H hidden, P the width of h
// (proj_size with projections, else H), G gate rows; A gate (pre-)activations, aux the saved
// state (c_t, or W_hn h + b_hn), M m_t before the projection W_hr, S the recurrent projection's
// gradients (GRU/MGU), dA dh dc d<name> gradients, tid/nth a thread and the team's size, q0/q1 a
// thread's range of tiled groups; rm the recurrent-dropout mask (B, P), HM the masked h the next
// step's GEMM reads, zh/zc zoneout (cells.h's Zone; zh on h, P wide, applied after the projection
// with one: projection.h); ln the LayerNorm cell's parameters (Ln), LS its saved statistics, flat:
// [xhat of the recurrent product (T, B, G) | its rstd (T, B) | LSTM: chat, the normalised c~
// (T, B, H) | its rstd (T, B)], DL the backward's flat [the recurrent product's gradients before
// the norm (T, B, G) | LSTM: the cell norm's dy (T, B, H) | PS], PS the norms' parameter
// gradients summed over steps, per batch row (B, 2 G (+ 2 H)), dH the gradients of the projected
// h~ (T, B, P). The last output, forward: M, LS, or with both one flat [LS | M]; backward: dH, DL,
// or with both one flat [DL | dH].
#pragma once

#include "vec_math.h"  // first: its CPU_CAPABILITY defines must precede every ATen header

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <omp.h>

#include <algorithm>
#include <limits>
#include <optional>
#include <vector>

#include "cells.h"
#include "pool.h"
#include "projection.h"
#include "recurrent_gemm.h"
#include "tiled_gemm.h"
#include "direct_gemm.h"

namespace {

// Tests set this so that every buffer starts as NaN: a value the kernels forget to write shows up.
bool g_poison = false;

Tensor empty(at::IntArrayRef sizes, const at::TensorOptions& opts) {
  Tensor t = pool::empty(sizes, opts);
  if (g_poison) t.fill_(std::numeric_limits<double>::quiet_NaN());
  return t;
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

// The LayerNorm cell's parameters (gated/options.py): the recurrent product's norm (w, b; G each)
// and the LSTM's cell norm (cw, cb; H each). The input side, LN_ih(x W_ih^T) + biases, is not
// recurrent: when training the caller computes it (torch ops, differentiated by autograd) and
// passes it as x, without w_ih; in inference the input norm comes too (iw, and ib: its bias plus
// b_ih and b_hh but b_hn, so the input projection has no bias of its own) and the kernel normalises
// each row of x W_ih^T where it computes it, a chunk of steps at a time (no (T, B, G) pass of its
// own, and no copy). The norms need whole rows: on the non-tiled path each step's GEMM is followed
// by the pointwise pass split over batch rows by rows(); in the tiled team each step is two phases,
// the product over each thread's groups of units, a barrier, then the norms and the pointwise pass
// over each thread's share of batch rows. With projections they normalise the same way: the cell
// norm acts on c (H wide), before m_t = o tanh(LN_c(c)) is projected.
template <typename T>
struct Ln {
  const T *w = nullptr, *b = nullptr, *cw = nullptr, *cb = nullptr, *iw = nullptr, *ib = nullptr;
  bool on() const { return w != nullptr; }
  bool input() const { return iw != nullptr; }  // the input norm is the kernel's (inference)
  // rows [r0, r1) of an input projection (G wide) normalised in place by the input norm
  void input_rows(T* a, int64_t G, int64_t r0, int64_t r1) const {
    for (int64_t r = r0; r < r1; ++r) ln_row<T>(a + r * G, G, iw, ib, a + r * G, false, nullptr, nullptr);
  }
};

// save: keep what backward needs (every step's gate activations, c_t or W_hn h + b_hn). Without
// it (inference) the input projection runs in chunks of steps into one reused buffer and the
// per-step states live in two rows, so memory does not grow with T beyond the output.
// w_ih undefined: x is the input projection already, (T, B, G) with its biases (bias_x absent).
template <typename T>
std::vector<Tensor> forward_impl(const Tensor& x, const Tensor& w_ih, const Tensor& w_hh,
                                 const T* bias_x, const T* b_hn, const std::optional<Tensor>& fb, const Tensor& h0,
                                 const std::optional<Tensor>& c0,
                                 const std::optional<Tensor>& lengths, const std::optional<Tensor>& w_hr,
                                 int64_t core, bool refine, bool save, const std::optional<Tensor>& rmask,
                                 const Zone<T>& zh, const Zone<T>& zc, const Ln<T>& ln = {}) {
  // P: the width of h (proj_size with projections, else H); H: the hidden units (the gates' width)
  const int64_t Tn = x.size(0), B = x.size(1), I = x.size(2), G = w_hh.size(0), P = w_hh.size(1);
  const bool proj = w_hr.has_value(), pre = !w_ih.defined();
  const int64_t H = proj ? w_hr->size(1) : P;
  auto opts = x.options();
  // steps per input projection: about 512 rows keeps the buffer in cache and reused across calls
  const int64_t chunk = save ? Tn : std::min(Tn, std::max<int64_t>(1, 512 / B));
  Tensor A = empty({chunk, B, G}, opts);  // gate pre-activations, then activations
  Tensor out = empty({Tn, B, P}, opts);
  Tensor aux = empty({save ? Tn : 2, B, H}, opts);  // LSTM: c_t; GRU/MGU: W_hn h + b_hn
  Tensor gh = empty({B, G}, opts);
  const int64_t TB = Tn * B;
  // what backward needs beyond A and aux, in one flat buffer: [LS | M], with M (projections) m_t =
  // o_t * tanh(c_t) before the projection h_t = m_t W_hr^T (kept for W_hr's gradient when saving)
  const int64_t n_stats = save && ln.on() ? TB * (G + 1) + (core == LSTM ? TB * (H + 1) : 0) : 0;
  const int64_t n_m = proj ? (save ? Tn : 2) * B * H : 0;
  Tensor saved = empty({n_stats + n_m}, opts), LS = saved.narrow(0, 0, n_stats);
  Tensor M = proj ? saved.narrow(0, n_stats, n_m).view({n_m / (B * H), B, H}) : Tensor();
  T *xhp = nullptr, *rsp = nullptr, *chp = nullptr, *rcp = nullptr;
  if (LS.numel() > 0) {
    xhp = LS.data_ptr<T>();
    rsp = xhp + TB * G;
    if (core == LSTM) chp = rsp + TB, rcp = chp + TB * H;
  }
  // recurrent dropout: the GEMM reads h_{t-1} * rm, which each step's pointwise pass writes for its
  // units into HM (two rows: step t writes one while step t's GEMM has read the other); h_0 * rm
  // before the loop
  const T* rm = rmask ? rmask->data_ptr<T>() : nullptr;
  Tensor HM = rm ? empty({2, B, P}, opts) : Tensor(), h0m = rm ? h0 * *rmask : Tensor();
  Tensor len = lengths ? lengths->contiguous() : Tensor();
  const int64_t* lp = len.defined() ? len.data_ptr<int64_t>() : nullptr;
  const T* fbp = fb ? fb->data_ptr<T>() : nullptr;
  const T* bhnp = b_hn;
  std::optional<RecurrentGemm> gemm;  // h (B, H) @ W_hh^T -> (B, G)
#if defined(GATED_TILED_GEMM)
  std::optional<tiled::Panels> wh, wi;  // the packed weights
  std::optional<tiled::Rows> rh, ri;    // or the weights as they lie (direct_gemm.h), for small calls
  if constexpr (use_tiled<T>()) {
    // projections run the per-step GEMMs below. Calls of few steps read the weights where they lie
    // (packing them, a copy of each, costs more than those steps' products); longer ones pack.
    // (a given input side, pre, only with LayerNorm: otherwise it comes with a bfloat16 W_hh)
    const bool fp32 = w_hh.scalar_type() == at::kFloat;
    if (!proj && fp32 && (!pre || ln.on())) {
      if (direct_chosen(Tn, B)) {
        rh.emplace(w_hh.data_ptr<float>(), H, H, G / H, H);
        if (!pre) ri.emplace(w_ih.data_ptr<float>(), I, I, G / H, H);
      } else if (tiled_chosen()) {
        wh.emplace(w_hh.data_ptr<float>(), 1, H, H, G / H, H);  // B(k, n) = W_hh[n, k]
        if (!pre) wi.emplace(w_ih.data_ptr<float>(), 1, I, I, G / H, H);
      }
    }
  }
  const bool tiled = wh.has_value() || rh.has_value();
  if (wh) ++g_tiled_runs;
  if (rh) ++g_direct_runs;
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
      const T* gin;  // what the GEMM reads: h_{t-1}, or h_{t-1} * rm
      T* hm;         // recurrent dropout: where h_t * rm goes
    } r{Ap + (t - t0) * B * G, proj ? Mp + ring(save, t) * B * H : outp + t * B * H, auxp + ring(save, t) * B * H,
        nullptr, nullptr, nullptr, nullptr};
    r.h_prev = t == 0 ? h0p : outp + (t - 1) * B * P;
    if (core == LSTM) r.c_prev = t == 0 ? c0p : auxp + ring(save, t - 1) * B * H;
    r.gin = r.h_prev;
    if (rm != nullptr) {
      T* hmp = HM.data_ptr<T>();
      r.gin = t == 0 ? h0m.data_ptr<T>() : hmp + ((t - 1) % 2) * B * P;
      r.hm = hmp + (t % 2) * B * P;
    }
    return r;
  };
  // LSTM: pre = gx_t + h W_hh^T (accumulated into A_t); GRU/MGU: pre = h W_hh^T on its own
  // (with projections the zoneout of h and the mask come after the projection: projection.h)
  const Zone<T> zcell = proj ? Zone<T>{} : zh;
  // With LayerNorm, pre is the raw recurrent product of rows [b0, b1) (whole rows: s spans every
  // unit), normalised here: LN_hh(h W_hh^T) into A_t (LSTM, += gx_t) or in place (GRU/MGU)
  auto pointwise = [&](const Step& s, const auto& r, T* pre, int64_t b0, int64_t b1) {
    if (ln.on()) {
      for (int64_t b = b0; b < b1; ++b) {
        const int64_t k = s.t * B + b;
        ln_row<T>(pre + b * G, G, ln.w, ln.b, core == LSTM ? r.a + b * G : pre + b * G, core == LSTM,
                  xhp ? xhp + k * G : nullptr, rsp ? rsp + k : nullptr);
      }
      if (core == LSTM) pre = r.a;
    }
    if (core == LSTM) {
      CellNorm<T> cn;
      if (ln.on()) cn = {ln.cw, ln.cb, chp ? chp + s.t * B * H : nullptr, rcp ? rcp + s.t * B : nullptr, nullptr};
      lstm_fwd<T>(s, pre, r.a, r.c_prev, r.state, r.h, fbp, b0, b1, r.h_prev, zcell, zc, cn);
    } else {
      gru_mgu_fwd<T>(s, core, r.a, pre, r.h_prev, r.h, r.state, bhnp, fbp, b0, b1, zh);
    }
    if (rm != nullptr && !proj) {  // h_t is (B, H) here
      for (int64_t b = b0; b < b1; ++b) {
        const T *hb = r.h + b * H, *mb = rm + b * H;
        T* ob = r.hm + b * H;
        for (int64_t j = s.j0; j < s.j1; ++j) ob[j] = hb[j] * mb[j];
      }
    }
  };
#if defined(GATED_TILED_GEMM)
  if constexpr (use_tiled<T>()) {
    if (tiled) {
      // one team for the whole sequence: per chunk, its share of the input projection's rows (or
      // of the given one's copy); per step, its groups' share of the recurrent product and then
      // their units' gate maths; with LayerNorm, a barrier between the two and then the norms and
      // gate maths of its share of batch rows [b0, b1)
      const float *xp = x.data_ptr<float>(), *bp = bias_x;
      float* ghp = gh.data_ptr<float>();
      // wh_: the recurrent weight (Panels or Rows), wi_: the input weight (null with a given input side)
      auto drive = [&](const auto& wh_, const auto* wi_) {
        constexpr bool direct = std::is_same_v<std::decay_t<decltype(wh_)>, tiled::Rows>;
        const int64_t groups = wh_.groups();
        team(groups, [&](int64_t tid, int64_t nth) {
          const int64_t q0 = share(groups, tid, nth), q1 = share(groups, tid + 1, nth);
          const int64_t b0 = share(B, tid, nth), b1 = share(B, tid + 1, nth);
          for (int64_t t0 = 0; t0 < Tn; t0 += chunk) {
            const int64_t n = std::min(chunk, Tn - t0), r0 = share(n * B, tid, nth), r1 = share(n * B, tid + 1, nth);
            if (pre) {
              std::copy(xp + (t0 * B + r0) * G, xp + (t0 * B + r1) * G, Ap + r0 * G);
            } else if (direct) {  // every row, the thread's groups: its rows of W_ih stay in its cache too
              wi_->run(xp + t0 * B * I, I, 0, n * B, Ap, G, q0, q1, bp, 0);
            } else {
              wi_->run(xp + t0 * B * I, I, r0, r1, Ap, G, 0, wi_->groups(), bp, 0);
            }
            if (ln.input()) {  // the thread's whole rows: after the others' groups (direct) are in
              if (direct) barrier();
              ln.input_rows(Ap, G, r0, r1);
            }
            barrier();
            for (int64_t t = t0; t < t0 + n; ++t) {
              const auto r = step(t, t0);
              if (ln.on()) {  // the raw product, then the norms and gate maths on whole rows
                wh_.run(r.gin, H, 0, B, ghp, G, q0, q1, nullptr, G);
                barrier();
                pointwise(Step{B, H, G, t, lp, refine, 0, H}, r, ghp, b0, b1);
              } else {
                float* dst = core == LSTM ? r.a : ghp;
                wh_.run(r.gin, H, 0, B, dst, G, q0, q1, core == LSTM ? dst : nullptr, G);
                const Step own{B, H, G, t, lp, refine, wh_.unit_begin(q0), wh_.unit_end(q1)};
                pointwise(own, r, dst, 0, B);
              }
              barrier();
            }
          }
        });
      };
      if (wh) {
        drive(*wh, wi ? &*wi : nullptr);
      } else {
        drive(*rh, ri ? &*ri : nullptr);
      }
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
      if (pre) {  // the caller's input projection
        a2.copy_(x2);
      } else if (bias_x) {
        for (int64_t i = 0; i < n * B; ++i) std::copy(bias_x, bias_x + G, Ap + i * G);
        a2.addmm_(x2, w_ih.t());
      } else {
        at::mm_out(a2, x2, w_ih.t());
      }
      if (ln.input()) rows(n * B, G, [&](int64_t r0, int64_t r1) { ln.input_rows(Ap, G, r0, r1); });
      for (int64_t t = t0; t < t0 + n; ++t) {
        const auto r = step(t, t0);
        Tensor gin = rm != nullptr ? (t == 0 ? h0m : HM[(t - 1) % 2]) : (t == 0 ? h0 : out[t - 1]);
        // with LayerNorm the product stays apart (normalised by pointwise, then added to A_t for the LSTM)
        Tensor prod = gemm->run(gin, core == LSTM && !ln.on() ? A[t - t0] : Tensor(), gh);
        T* pp = prod.data_ptr<T>();
        const Step s{B, H, G, t, lp, refine, 0, H};
        rows(B, H, [&](int64_t b0, int64_t b1) { pointwise(s, r, pp, b0, b1); });
        if (proj) {  // masked rows of m are 0, so their outputs are too
          Tensor h_t = out[t];
          Tensor res = projection->run(M[ring(save, t)], Tensor(), h_t);
          if (res.data_ptr() != h_t.data_ptr()) h_t.copy_(res);
          if (zh.on() || rm != nullptr) {  // zoneout of the projected h, then the next product's mask
            const Step sh{B, P, G, t, lp, refine, 0, P};
            T* h = outp + t * B * P;
            rows(B, P, [&](int64_t b0, int64_t b1) { project_fwd<T>(sh, h, r.h_prev, zh, rm, r.hm, b0, b1); });
          }
        }
      }
    }
  }
  // the final states, copied by pointer (indexing tensors costs microseconds at one step)
  Tensor h_n = empty({B, P}, opts);
  T* hnp = h_n.data_ptr<T>();
  for (int64_t b = 0; b < B; ++b) {  // each sequence's state at its last step
    const int64_t last = lp == nullptr ? Tn : lp[b];
    const T* src = last > 0 ? outp + ((last - 1) * B + b) * P : h0p + b * P;
    std::copy(src, src + P, hnp + b * P);
  }
  Tensor c_n = core == LSTM ? empty({B, H}, opts) : empty({0}, opts);  // c is held past each end
  if (core == LSTM) {
    const T* c_last = auxp + ring(save, Tn - 1) * B * H;
    std::copy(c_last, c_last + B * H, c_n.data_ptr<T>());
  }
  if (!save) return {out, h_n, c_n, empty({0}, opts), empty({0}, opts), empty({0}, opts)};
  return {out, h_n, c_n, A, aux, proj && n_stats == 0 ? M : saved};  // the last: M, LS, or [LS | M]
}

template <typename T>
std::vector<Tensor> backward_impl(const Tensor& dout, const Tensor& dh_n, const std::optional<Tensor>& dc_n,
                                  const Tensor& A, const Tensor& aux, const Tensor& out, const Tensor& h0,
                                  const std::optional<Tensor>& c0, const Tensor& w_hh,
                                  const std::optional<Tensor>& lengths, const std::optional<Tensor>& w_hr,
                                  int64_t core, bool refine, const std::optional<Tensor>& rmask, const Zone<T>& zh,
                                  const Zone<T>& zc, const Ln<T>& ln = {}, const T* LSp = nullptr) {
  const int64_t Tn = A.size(0), B = A.size(1), G = A.size(2), P = w_hh.size(1);
  const bool proj = w_hr.has_value();
  const int64_t H = proj ? w_hr->size(1) : P, TB = Tn * B;
  auto opts = A.options();
  // the last output, flat: [DL | dH]; LayerNorm (forward_impl's LS, DL): the statistics read, the
  // gradients written, DL ending with the norms' parameter gradients per batch row (PS); projections: dH
  const int64_t Hc = core == LSTM ? H : 0, n_ps = ln.on() ? B * 2 * (G + Hc) : 0;
  const int64_t n_dl = ln.on() ? TB * (G + Hc) + n_ps : 0;
  Tensor grads = empty({n_dl + (proj ? TB * P : 0)}, opts), DL = grads.narrow(0, 0, n_dl);
  T* psp = ln.on() ? DL.data_ptr<T>() + TB * (G + Hc) : nullptr;
  if (ln.on()) std::fill(psp, psp + n_ps, T(0));
  Tensor dH = proj ? grads.narrow(0, n_dl, TB * P).view({Tn, B, P}) : Tensor();
  const T *xhp = LSp, *rsp = LSp ? LSp + TB * G : nullptr;
  const T *chp = LSp && core == LSTM ? rsp + TB : nullptr, *rcp = chp ? chp + TB * H : nullptr;
  T *dgp = ln.on() ? DL.data_ptr<T>() : nullptr, *dyc = ln.on() && core == LSTM ? dgp + TB * G : nullptr;
  Tensor dA = empty({Tn, B, G}, opts);
  Tensor dghn = core == LSTM ? empty({0}, opts) : empty({Tn, B, H}, opts);
  // GRU/MGU: the grads of the recurrent projection, two buffers (the tiled path reads step t+1's
  // while it writes step t's)
  Tensor S = core == LSTM ? Tensor() : empty({2, B, G}, opts);
  Tensor dh = dh_n.contiguous().clone();  // dL/dh_t carried backwards
  Tensor buf0 = empty({B, P}, opts), buf1 = empty({B, P}, opts);
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
  // the cell's zoneout of h (with projections: on the projected h, projection.h's project_bwd)
  const Zone<T> zcell = proj ? Zone<T>{} : zh;
  // dop: the gradient of the cell's output at step t (dout_t, or m_t's with projections)
  // then with LayerNorm, rows [b0, b1) of step t back through LN_hh (into DL) and their part of the
  // norms' parameter gradients (PS, per row b: [w (G) | b (G) | LSTM: the cell norm's w (H) | b (H)])
  auto pointwise = [&](const Step& s, const T* dop, const T* dhp, T* dhnp, int64_t b0, int64_t b1) {
    const int64_t t = s.t, BG = B * G, BH = B * H;
    const T* ap = Ap + t * BG;
    T* dap = dAp + t * BG;
    if (core == LSTM) {
      const T *cp = t == 0 ? c0->data_ptr<T>() : auxp + (t - 1) * BH, *ct = auxp + t * BH;
      CellNorm<T> cn;
      if (ln.on()) cn = {ln.cw, ln.cb, const_cast<T*>(chp + t * BH), const_cast<T*>(rcp + t * B), dyc + t * BH};
      lstm_bwd<T>(s, ap, cp, ct, dop, dhp, dcp, dap, dhnp, b0, b1, zcell, zc, cn);
    } else {
      const T *q = auxp + t * BH, *hp = t == 0 ? h0.data_ptr<T>() : outp + (t - 1) * BH;
      gru_mgu_bwd<T>(s, core, ap, q, hp, dop, dhp, dap, Sp + (t % 2) * BG, dghnp + t * BH, dhnp, b0, b1, zh);
    }
    if (!ln.on()) return;
    const T* sp = core == LSTM ? dap : Sp + (t % 2) * BG;  // the gradient of LN_hh's output
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t k = t * B + b;
      T* ps = psp + b * 2 * (G + Hc);
      ln_row_bwd<T>(sp + b * G, xhp + k * G, rsp[k], ln.w, G, dgp + k * G);
      ln_param_acc<T>(sp + b * G, xhp + k * G, G, ps, ps + G);
      if (core == LSTM) ln_param_acc<T>(dyc + k * H, chp + k * H, H, ps + 2 * G, ps + 2 * G + H);
    }
  };
  // recurrent dropout: dh_{t-1} = (src_t @ W_hh) * rm + dhn_t, on units [j0, j1) of every row
  const T* rm = rmask ? rmask->data_ptr<T>() : nullptr;
  auto mask_add = [&](T* d, const T* direct, int64_t j0, int64_t j1) {
    for (int64_t b = 0; b < B; ++b) {
      for (int64_t j = j0; j < j1; ++j) d[b * P + j] = d[b * P + j] * rm[b * P + j] + direct[b * P + j];
    }
  };
#if defined(GATED_TILED_GEMM)
  if constexpr (use_tiled<T>()) {
    if (tiled_chosen() && !proj && w_hh.scalar_type() == at::kFloat && (Tn * B >= 4 || g_gemm == kTiled)) {
      // step t, per thread: dh_t = src_{t+1} @ W_hh + dhn_{t+1} for its units, then step t's
      // pointwise on them (which overwrites dhn with dhn_t); the last pass only finishes dh_0.
      // With LayerNorm src is DL, and the pointwise pass (with the norms) takes whole rows: a
      // barrier after the product, then the thread's share of batch rows [b0, b1).
      const tiled::Panels wh(w_hh.data_ptr<float>(), H, 1, G, 1, H);  // B(k, n) = W_hh[k, n]
      float *dhp = dh.data_ptr<float>(), *dhnp = buf0.data_ptr<float>();
      const int64_t groups = wh.groups();
      team(groups, [&](int64_t tid, int64_t nth) {
        const int64_t q0 = share(groups, tid, nth), q1 = share(groups, tid + 1, nth);
        const int64_t b0 = share(B, tid, nth), b1 = share(B, tid + 1, nth);
        for (int64_t t = Tn - 1; t >= -1; --t) {
          const float* sp = t + 1 >= Tn ? nullptr
                            : ln.on()   ? dgp + (t + 1) * B * G
                            : core == LSTM ? dAp + (t + 1) * B * G
                                           : Sp + ((t + 1) % 2) * B * G;
          if (sp != nullptr && rm != nullptr) {
            wh.run(sp, G, 0, B, dhp, H, q0, q1, nullptr, 0);
            mask_add(dhp, dhnp, wh.unit_begin(q0), wh.unit_end(q1));
          } else if (sp != nullptr) {
            wh.run(sp, G, 0, B, dhp, H, q0, q1, dhnp, H);
          }
          if (t >= 0 && ln.on()) {
            barrier();
            pointwise(Step{B, H, G, t, lp, refine, 0, H}, doutp + t * B * H, dhp, dhnp, b0, b1);
          } else if (t >= 0) {
            const Step own{B, H, G, t, lp, refine, wh.unit_begin(q0), wh.unit_end(q1)};
            pointwise(own, doutp + t * B * H, dhp, dhnp, 0, B);
          }
          barrier();
        }
      });
      return {dA, dghn, dh, core == LSTM ? dc : empty({0}, opts), grads};  // grads: DL, or empty
    }
  }
#endif
  // LSTM with projections, h_t = h~ + z (h_{t-1} - h~), h~ = m_t W_hr^T: per step the gradient of
  // h_t (dout_t plus the carry from step t+1) goes through the zoneout (projection.h: dH_t, the
  // gradient of h~, and the direct part of dh_{t-1}), back through W_hr to m_t (dm), then through
  // the gates with no gradient arriving at h_t itself (zero); the cell's own dh_{t-1} part is not
  // used (spare)
  Tensor dm, zero, spare;
  if (proj) dm = empty({B, H}, opts), zero = at::zeros({B, H}, opts), spare = empty({B, H}, opts);
  RecurrentGemm gemm(w_hh, /*transpose=*/false, B, Tn);  // dgates (B, G) @ W_hh -> (B, P)
  Tensor scratch = empty({B, P}, opts);
  for (int64_t t = Tn - 1; t >= 0; --t) {
    Step s{B, H, G, t, lp, refine, 0, H};
    Tensor dhn = dh.data_ptr() == buf0.data_ptr() ? buf1 : buf0;  // the part of dh_{t-1} outside W_hh
    const T* dhp = dh.data_ptr<T>();
    T* dhnp = dhn.data_ptr<T>();
    const T *dop = doutp + t * B * P, *dcell = dhp;
    T* dhn_cell = dhnp;
    if (proj) {
      const Step sh{B, P, G, t, lp, refine, 0, P};
      T* dht = dH.data_ptr<T>() + t * B * P;
      rows(B, P, [&](int64_t b0, int64_t b1) { project_bwd<T>(sh, dop, dhp, zh, dht, dhnp, b0, b1); });
      at::mm_out(dm, dH[t], *w_hr);
      dop = dm.data_ptr<T>(), dcell = zero.data_ptr<T>(), dhn_cell = spare.data_ptr<T>();
    }
    rows(B, H, [&](int64_t b0, int64_t b1) { pointwise(s, dop, dcell, dhn_cell, b0, b1); });
    // what W_hh's product carries back: the grads of the (raw, with LayerNorm) recurrent product
    Tensor g_t = ln.on() ? DL.narrow(0, t * B * G, B * G).view({B, G}) : src(t);
    if (rm != nullptr) {
      Tensor g = gemm.run(g_t, Tensor(), scratch);
      mask_add(g.data_ptr<T>(), dhnp, 0, P);
      dh = g;  // scratch or a new tensor: read by the next pointwise pass before the next product
    } else {
      dh = gemm.run(g_t, dhn, scratch);
    }
  }
  // the last: [DL | dH] (one of them, or empty)
  return {dA, dghn, dh, core == LSTM ? dc : empty({0}, opts), proj && n_dl == 0 ? dH : grads};
}

}  // namespace
