// One step of the pointwise cells (cells.h) for the single-step modules (gated.LSTMCell, GRUCell,
// MGUCell; gated/backends/fused_cell.py): the caller computes both projections with ATen, as
// torch.nn's cells do, and these ops do the gate maths of a step, forward and backward, in one
// pass each (in Python they are some twenty small ops each way, most of a small cell's time).
// Glossary: B batch, H hidden, G gate rows; gi = x W_ih^T + b_ih, gh = h W_hh^T + b_hh (B, G); fb
// the shared forget bias b_f (refine variants); A the activations (B, G) that backward reads; q the
// GRU/MGU candidate's W_hn h + b_hn (B, H), which is gh's candidate block here (b_hn is in gh).
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <optional>
#include <tuple>

#include "cells.h"

namespace {

void check_cell(const at::Tensor& gi, const at::Tensor& gh, const at::Tensor& h, int64_t core) {
  TORCH_CHECK(gi.device().is_cpu() && gh.device().is_cpu() && h.device().is_cpu(),
              "gated fused cell: tensors must be on the CPU");
  TORCH_CHECK(gi.scalar_type() == at::kFloat || gi.scalar_type() == at::kDouble,
              "gated fused cell: float32 or float64 only, got ", gi.scalar_type());
  TORCH_CHECK(gh.scalar_type() == gi.scalar_type() && h.scalar_type() == gi.scalar_type(),
              "gated fused cell: gi, gh and h must share a dtype");
  TORCH_CHECK(gi.dim() == 2 && gh.sizes() == gi.sizes() && h.dim() == 2 && h.size(0) == gi.size(0) &&
                  h.size(1) > 0 && gi.size(1) % h.size(1) == 0,
              "gated fused cell: gi, gh (B, G) and h (B, H) expected, got ", gi.sizes(), ", ", gh.sizes(), ", ",
              h.sizes());
  TORCH_CHECK(core == LSTM || core == GRU || core == MGU, "gated fused cell: unknown core ", core);
}

// batch rows [b0, b1) per task; a small step runs on the calling thread
template <typename F>
void cell_rows(int64_t B, int64_t G, const F& f) {
  at::parallel_for(0, B, std::max<int64_t>(1, 16384 / std::max<int64_t>(G, 1)), f);
}

// Returns h', c' (LSTM; else empty), A and q (GRU/MGU; else empty).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> cell_forward(const at::Tensor& gi_, const at::Tensor& gh_,
                                                                        const at::Tensor& h_,
                                                                        const std::optional<at::Tensor>& c_,
                                                                        const std::optional<at::Tensor>& fb_,
                                                                        int64_t core, bool refine) {
  check_cell(gi_, gh_, h_, core);
  TORCH_CHECK((core == LSTM) == c_.has_value(), "gated fused cell: c is given for the LSTM only");
  const at::Tensor gh = gh_.contiguous(), h = h_.contiguous();
  const int64_t B = gi_.size(0), G = gi_.size(1), H = h.size(1);
  at::Tensor hn = at::empty({B, H}, h.options()), cn = at::empty({0}, h.options()), q = at::empty({0}, h.options());
  // the kernels overwrite A's pre-activations with the activations
  at::Tensor A = core == LSTM ? at::add(gi_, gh) : gi_.contiguous().clone();
  const at::Tensor c = c_ ? c_->contiguous() : at::Tensor(), fb = fb_ ? fb_->contiguous() : at::Tensor();
  if (core == LSTM) cn = at::empty({B, H}, h.options());
  if (core != LSTM) q = at::empty({B, H}, h.options());
  AT_DISPATCH_FLOATING_TYPES(A.scalar_type(), "cell_forward", [&] {
    using T = scalar_t;
    const Step s{B, H, G, 0, nullptr, refine, 0, H};
    const T* fbp = fb.defined() ? fb.data_ptr<T>() : nullptr;
    T *a = A.data_ptr<T>(), *hp = hn.data_ptr<T>();
    cell_rows(B, G, [&](int64_t b0, int64_t b1) {
      if (core == LSTM) {
        lstm_fwd<T>(s, a, a, c.data_ptr<T>(), cn.data_ptr<T>(), hp, fbp, b0, b1);
      } else {
        gru_mgu_fwd<T>(s, core, a, gh.data_ptr<T>(), h.data_ptr<T>(), hp, q.data_ptr<T>(), nullptr, fbp, b0, b1);
      }
    });
  });
  return {hn, cn, A, q};
}

// From dh' (and dc' for the LSTM) and what forward returned: the gradients of gi and of gh (the
// same tensor for the LSTM; GRU/MGU: they differ in the candidate block), the part of dh that does
// not go through W_hh (GRU/MGU; else empty) and dc (LSTM; else empty).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> cell_backward(
    const at::Tensor& dh_, const std::optional<at::Tensor>& dc_, const at::Tensor& A, const at::Tensor& q,
    const at::Tensor& h_, const std::optional<at::Tensor>& c_, const std::optional<at::Tensor>& c_new_, int64_t core,
    bool refine) {
  check_cell(A, A, h_, core);
  TORCH_CHECK(A.is_contiguous(), "gated fused cell: the saved activations must be contiguous");
  TORCH_CHECK((core == LSTM) == (c_.has_value() && c_new_.has_value()), "gated fused cell: c, c' for the LSTM only");
  const int64_t B = A.size(0), G = A.size(1), H = h_.size(1);
  const at::Tensor dh = dh_.contiguous(), h = h_.contiguous(), zero = at::zeros({B, H}, h.options());
  at::Tensor dA = at::empty({B, G}, A.options()), S = dA, dhn = at::empty({0}, h.options()), dc = dhn;
  if (core == LSTM) {
    dc = dc_ ? dc_->contiguous().clone() : at::zeros({B, H}, h.options());  // in: dc', out: dc
  } else {
    S = at::empty({B, G}, A.options());
    dhn = at::empty({B, H}, h.options());
  }
  AT_DISPATCH_FLOATING_TYPES(A.scalar_type(), "cell_backward", [&] {
    using T = scalar_t;
    const Step s{B, H, G, 0, nullptr, refine, 0, H};
    const T *a = A.data_ptr<T>(), *dhp = dh.data_ptr<T>(), *zp = zero.data_ptr<T>();
    T* dap = dA.data_ptr<T>();
    if (core == LSTM) {
      const at::Tensor c = c_->contiguous(), cnew = c_new_->contiguous();
      at::Tensor scratch = at::empty({B, H}, h.options());  // lstm_bwd's dhn: zeros without zoneout
      cell_rows(B, G, [&](int64_t b0, int64_t b1) {
        lstm_bwd<T>(s, a, c.data_ptr<T>(), cnew.data_ptr<T>(), dhp, zp, dc.data_ptr<T>(), dap, scratch.data_ptr<T>(),
                    b0, b1);
      });
    } else {
      const at::Tensor qc = q.contiguous();
      at::Tensor dq = at::empty({B, H}, h.options());  // the candidate's own gradient (gh's block, in S)
      cell_rows(B, G, [&](int64_t b0, int64_t b1) {
        gru_mgu_bwd<T>(s, core, a, qc.data_ptr<T>(), h.data_ptr<T>(), dhp, zp, dap, S.data_ptr<T>(), dq.data_ptr<T>(),
                       dhn.data_ptr<T>(), b0, b1);
      });
    }
  });
  return {dA, S, dhn, dc};
}

}  // namespace
