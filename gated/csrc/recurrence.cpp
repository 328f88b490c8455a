// Fused CPU recurrence for the gated cores (LSTM, GRU, MGU) in their plain and refine variants.
//
// The time loop runs here, outside Python: per step one GEMM for the recurrent projection and one
// vectorised pointwise pass over the gates. The input projection for all steps is one GEMM before
// the loop. Backward walks time in reverse, writing the pre-activation gradients of every step
// into one (T, B, G) buffer, so the weight gradients are single large GEMMs done by the caller.
// The LayerNorm cell: the caller passes the normalised input projection as x (no w_ih) and the
// norms' parameters; the kernels normalise each step's recurrent product (and the LSTM's c) per
// row on the non-tiled path, forward's last output holding the statistics and backward's the raw
// recurrent product's gradients (time_loop.h); with projections too, each is one flat buffer with
// m_t (forward) or dH (backward) after it.
// Glossary: T time, B batch, H hidden, G gate rows; "refine" = paper Eq. 10 with shared b_f.
// The equations are those of gated/cores.py (the reference); tests/test_fused.py checks equality.
// Layout: vec_math.h (vectorised maths), recurrent_gemm.h (the per-step GEMM), cells.h (the
// pointwise cells), projection.h (zoneout and the recurrent-dropout mask of a projected h),
// time_loop.h (forward_impl, backward_impl), cell_step.h (one step of the cells on given
// projections, for the single-step modules); this file holds the checks, the
// entry points and the op registration, and scan.h the scan cores.

#include "vec_math.h"  // first: its CPU_CAPABILITY defines must precede every ATen header

#include <ATen/ATen.h>
#include <torch/library.h>

#if defined(__GLIBC__)
#include <malloc.h>
#endif

#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "cell_step.h"
#include "pool.h"
#include "recurrent_gemm.h"
#include "tiled_gemm.h"
#include "time_loop.h"

using at::Tensor;

namespace {

void check(const Tensor& x, const Tensor& w_hh) {
  TORCH_CHECK(x.device().is_cpu(), "gated fused CPU backend: tensors must be on the CPU");
  TORCH_CHECK(x.dim() == 3 && x.size(0) > 0 && x.size(1) > 0,
              "gated fused CPU backend: a (T, B, .) sequence with T > 0 and B > 0 expected, got ", x.sizes());
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble,
              "gated fused CPU backend: float32 or float64 only, got ", x.scalar_type());
  TORCH_CHECK(x.is_contiguous() && w_hh.is_contiguous(), "gated fused CPU backend: contiguous tensors expected");
  TORCH_CHECK(w_hh.scalar_type() == x.scalar_type() ||
                  (w_hh.scalar_type() == at::kBFloat16 && x.scalar_type() == at::kFloat),
              "gated fused CPU backend: w_hh must have the input's dtype, or be bfloat16 with float32 inputs "
              "(bfloat16 matmuls), got ", w_hh.scalar_type(), " and ", x.scalar_type());
}

// The optional options (gated/options.py): the recurrent-dropout mask rmask (B, P) and per state
// zoneout, a keep mask, (T, B, P) for h and (T, B, H) for c, or the eval probability p (used where
// the mask is absent); P is the width of h (proj_size with projections, else H).
void check_options(const Tensor& like, int64_t Tn, int64_t B, int64_t P, int64_t H, const std::optional<Tensor>& rmask,
                   const std::optional<Tensor>& zone_h, const std::optional<Tensor>& zone_c, double p_h, double p_c,
                   bool lstm) {
  TORCH_CHECK(lstm || (!zone_c && p_c == 0), "gated fused CPU backend: zoneout of c is LSTM only");
  auto ok = [&](const std::optional<Tensor>& t, at::IntArrayRef shape, const char* what) {
    TORCH_CHECK(!t || (t->sizes() == shape && t->scalar_type() == like.scalar_type() && t->is_contiguous()),
                "gated fused CPU backend: ", what, " must be a contiguous ", shape, " tensor of the input's dtype");
  };
  ok(rmask, {B, P}, "the recurrent-dropout mask");
  ok(zone_h, {Tn, B, P}, "the zoneout mask of h");
  ok(zone_c, {Tn, B, H}, "the zoneout mask of c");
}

// The LayerNorm cell's parameters (time_loop.h's Ln): the recurrent product's norm, ln_w and ln_b
// (G each), and the LSTM's cell norm, lnc_w and lnc_b (H each). The input side is the caller's:
// with them x is the input projection (T, B, G) and w_ih and b_ih are absent; or, in inference
// (save false), the input norm's lni_w and lni_b (G each; lni_b with b_ih and b_hh but b_hn added)
// come with x and w_ih, and no b_ih. With projections the cell norm is still over c's H units.
void check_ln(const Tensor& like, bool pre, int64_t G, int64_t H, bool lstm, const std::optional<Tensor>& w,
              const std::optional<Tensor>& b, const std::optional<Tensor>& cw, const std::optional<Tensor>& cb,
              const std::optional<Tensor>& iw = std::nullopt, const std::optional<Tensor>& ib = std::nullopt) {
  TORCH_CHECK(iw.has_value() == ib.has_value() && (!iw || w), "gated fused CPU backend: the input norm takes lni_w "
              "and lni_b, with the recurrent norm's");
  if (!w && !b && !cw && !cb) return;
  TORCH_CHECK(w && b && (lstm ? cw && cb : !cw && !cb),
              "gated fused CPU backend: LayerNorm takes ln_w and ln_b, and for the LSTM lnc_w and lnc_b");
  TORCH_CHECK(pre != iw.has_value(), "gated fused CPU backend: with LayerNorm x is the input projection (w_ih "
              "absent), or in inference x and w_ih with the input norm (lni_w, lni_b)");
  auto ok = [&](const std::optional<Tensor>& t, int64_t n, const char* what) {
    TORCH_CHECK(!t || (t->dim() == 1 && t->size(0) == n && t->scalar_type() == like.scalar_type() && t->is_contiguous()),
                "gated fused CPU backend: ", what, " must be a contiguous (", n, ",) tensor of the input's dtype");
  };
  ok(w, G, "ln_w");
  ok(b, G, "ln_b");
  ok(cw, H, "lnc_w");
  ok(cb, H, "lnc_b");
  ok(iw, G, "lni_w");
  ok(ib, G, "lni_b");
}

template <typename T>
Ln<T> ln_args(const std::optional<Tensor>& w, const std::optional<Tensor>& b, const std::optional<Tensor>& cw,
              const std::optional<Tensor>& cb, const std::optional<Tensor>& iw = std::nullopt,
              const std::optional<Tensor>& ib = std::nullopt) {
  auto p = [](const std::optional<Tensor>& t) -> const T* { return t ? t->data_ptr<T>() : nullptr; };
  return {p(w), p(b), p(cw), p(cb), p(iw), p(ib)};
}

template <typename T>
Zone<T> zone(const std::optional<Tensor>& mask, double p) {
  return mask ? Zone<T>{mask->data_ptr<T>(), T(0)} : Zone<T>{nullptr, T(p)};
}

using Tensors6 = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>;
using Tensors5 = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor>;

// torch's two biases as the kernels take them: b_ih + b_hh added to the input projection, except
// that GRU/MGU keep the candidate block's b_hn apart (it sits inside the reset product). With the
// caller's input projection or the input norm (pre) only b_hn is the kernel's: b_ih is absent, and
// b_hh, if given (GRU/MGU), is read for its candidate block alone (the rest is in the input side).
// Plain vectors and pointers, not tensor ops: at one step and batch 1 four small ATen calls cost a
// fifth of the call.
template <typename T>
struct Biases {
  std::vector<T> x;       // b_ih + b_hh (without b_hn); empty: no bias on the input projection
  Tensor hh;              // b_hh, contiguous: what hn points into
  const T* hn = nullptr;  // GRU/MGU: b_hn
  const T* xp() const { return x.empty() ? nullptr : x.data(); }
};

template <typename T>
Biases<T> split_biases(const std::optional<Tensor>& b_ih, const std::optional<Tensor>& b_hh, int64_t core, int64_t H,
                       bool pre) {
  Biases<T> r;
  if (!b_hh || (pre && core == LSTM)) return r;
  r.hh = b_hh->contiguous();
  const T* hh = r.hh.template data_ptr<T>();
  const int64_t n0 = (core == GRU ? 2 : 1) * H, n1 = core == LSTM ? n0 : n0 + H;  // the candidate block
  if (core != LSTM) r.hn = hh + n0;
  if (pre || !b_ih) return r;
  const Tensor ih = b_ih->contiguous();
  const T* ip = ih.data_ptr<T>();
  r.x.resize(r.hh.numel());
  for (int64_t g = 0; g < r.hh.numel(); ++g) r.x[g] = ip[g] + (g >= n0 && g < n1 ? T(0) : hh[g]);
  return r;
}

Tensors6 recurrence_forward(const Tensor& x, const std::optional<Tensor>& w_ih, const Tensor& w_hh, const std::optional<Tensor>& b_ih,
                            const std::optional<Tensor>& b_hh, const std::optional<Tensor>& fb, const Tensor& h0,
                            const std::optional<Tensor>& c0, const std::optional<Tensor>& lengths,
                            const std::optional<Tensor>& w_hr, int64_t core, bool refine, bool save,
                            const std::optional<Tensor>& rmask, const std::optional<Tensor>& zone_h,
                            const std::optional<Tensor>& zone_c, double p_h, double p_c,
                            const std::optional<Tensor>& ln_w, const std::optional<Tensor>& ln_b,
                            const std::optional<Tensor>& lnc_w, const std::optional<Tensor>& lnc_b,
                            const std::optional<Tensor>& lni_w, const std::optional<Tensor>& lni_b) {
  check(x, w_hh);
  TORCH_CHECK(!w_hr || (core == LSTM && w_hr->is_contiguous()), "gated fused CPU backend: projections are LSTM only");
  const int64_t G = w_hh.size(0), P = w_hh.size(1), H = w_hr ? w_hr->size(1) : P;
  check_options(x, x.size(0), x.size(1), P, H, rmask, zone_h, zone_c, p_h, p_c, core == LSTM);
  const bool pre = !w_ih.has_value(), lni = lni_w.has_value();
  TORCH_CHECK(pre || w_hh.scalar_type() == x.scalar_type(),
              "gated fused CPU backend: with bfloat16 matmuls x is the caller's input projection (w_ih absent)");
  TORCH_CHECK(pre || lni ? !b_ih && (!pre || x.size(2) == G) && (core != LSTM || !b_hh)
                         : b_ih.has_value() == b_hh.has_value(),
              "gated fused CPU backend: both biases or neither; without w_ih x is the (T, B, G) input projection, "
              "without b_ih (and the LSTM without b_hh), and so with the input norm");
  TORCH_CHECK(!lni || !save, "gated fused CPU backend: the input norm is the kernel's in inference only (save false)");
  check_ln(x, pre, G, H, core == LSTM, ln_w, ln_b, lnc_w, lnc_b, lni_w, lni_b);
  at::NoGradGuard no_grad;
  auto r = AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "gated_recurrence_forward", [&] {
    const auto biases = split_biases<scalar_t>(b_ih, b_hh, core, H, pre || lni);
    return forward_impl<scalar_t>(x, pre ? Tensor() : *w_ih, w_hh, biases.xp(), biases.hn, fb, h0.contiguous(),
                                  c0 ? std::optional<Tensor>(c0->contiguous()) : c0, lengths, w_hr, core, refine,
                                  save, rmask, zone<scalar_t>(zone_h, p_h), zone<scalar_t>(zone_c, p_c),
                                  ln_args<scalar_t>(ln_w, ln_b, lnc_w, lnc_b, lni_w, lni_b));
  });
  return {r[0], r[1], r[2], r[3], r[4], r[5]};
}

Tensors5 recurrence_backward(const Tensor& dout, const Tensor& dh_n, const std::optional<Tensor>& dc_n,
                             const Tensor& A, const Tensor& aux, const Tensor& out, const Tensor& h0,
                             const std::optional<Tensor>& c0, const Tensor& w_hh, const std::optional<Tensor>& lengths,
                             const std::optional<Tensor>& w_hr, int64_t core, bool refine,
                             const std::optional<Tensor>& rmask, const std::optional<Tensor>& zone_h,
                             const std::optional<Tensor>& zone_c, double p_h, double p_c,
                             const std::optional<Tensor>& ln, const std::optional<Tensor>& ln_w,
                             const std::optional<Tensor>& lnc_w, const std::optional<Tensor>& lnc_b) {
  check(A, w_hh);
  const int64_t Tn = A.size(0), B = A.size(1), G = A.size(2), H = w_hr ? w_hr->size(1) : w_hh.size(1);
  check_options(A, Tn, B, w_hh.size(1), H, rmask, zone_h, zone_c, p_h, p_c, core == LSTM);
  // ln: the forward's saved LayerNorm statistics (its last output, without m_t's part with
  // projections); ln_b is not needed
  check_ln(A, true, G, H, core == LSTM, ln_w, ln_w, lnc_w, lnc_b);
  TORCH_CHECK(ln_w.has_value() == ln.has_value(), "gated fused CPU backend: LayerNorm needs ln and ln_w");
  TORCH_CHECK(!ln || (ln->numel() == Tn * B * (G + 1 + (core == LSTM ? H + 1 : 0)) && ln->is_contiguous() &&
                      ln->scalar_type() == A.scalar_type()),
              "gated fused CPU backend: ln must be the forward's saved LayerNorm statistics");
  at::NoGradGuard no_grad;
  auto r = AT_DISPATCH_FLOATING_TYPES(A.scalar_type(), "gated_recurrence_backward", [&] {
    return backward_impl<scalar_t>(dout.contiguous(), dh_n, dc_n, A, aux, out, h0.contiguous(),
                                   c0 ? std::optional<Tensor>(c0->contiguous()) : c0, w_hh, lengths, w_hr, core,
                                   refine, rmask, zone<scalar_t>(zone_h, p_h), zone<scalar_t>(zone_c, p_c),
                                   ln_args<scalar_t>(ln_w, ln_w, lnc_w, lnc_b), ln ? ln->data_ptr<scalar_t>() : nullptr);
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
int64_t direct_runs() { return g_direct_runs.load(); }
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
  k.push_back(kDirect);
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
  m.def("direct_runs", &direct_runs);
  m.def("isa", &isa);
  m.def("set_pool", &set_pool);
  m.def("empty_cache", &empty_cache);
  m.def("tiled_mm(Tensor a, Tensor b, bool transpose_a, bool append_sums) -> Tensor");
  m.def("xh_mm(Tensor a, Tensor? a2, Tensor x2, Tensor h0, Tensor out, bool append_sums) -> (Tensor, Tensor)");
  m.def(
      "recurrence_forward(Tensor x, Tensor? w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh, Tensor? fb, Tensor h0, "
      "Tensor? c0, Tensor? lengths, Tensor? w_hr, int core, bool refine, bool save, Tensor? rmask=None, "
      "Tensor? zone_h=None, Tensor? zone_c=None, float p_h=0., float p_c=0., Tensor? ln_w=None, Tensor? ln_b=None, "
      "Tensor? lnc_w=None, Tensor? lnc_b=None, Tensor? lni_w=None, Tensor? lni_b=None) "
      "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "recurrence_backward(Tensor dout, Tensor dh_n, Tensor? dc_n, Tensor A, Tensor aux, Tensor out, Tensor h0, "
      "Tensor? c0, Tensor w_hh, Tensor? lengths, Tensor? w_hr, int core, bool refine, Tensor? rmask=None, "
      "Tensor? zone_h=None, Tensor? zone_c=None, float p_h=0., float p_c=0., Tensor? ln=None, Tensor? ln_w=None, "
      "Tensor? lnc_w=None, Tensor? lnc_b=None) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def("cell_forward(Tensor gi, Tensor gh, Tensor h, Tensor? c, Tensor? fb, int core, bool refine) "
        "-> (Tensor, Tensor, Tensor, Tensor)");
  m.def("cell_backward(Tensor dh, Tensor? dc, Tensor A, Tensor q, Tensor h, Tensor? c, Tensor? c_new, int core, "
        "bool refine) -> (Tensor, Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(gated_fused, CPU, m) {
  m.impl("tiled_mm", &tiled_mm);
  m.impl("xh_mm", &xh_mm);
  m.impl("recurrence_forward", &recurrence_forward);
  m.impl("recurrence_backward", &recurrence_backward);
  m.impl("cell_forward", &cell_forward);
  m.impl("cell_backward", &cell_backward);
}
#include "scan.h"  // the scan cores (MinGRU, MinLSTM): their own ops in the same library
