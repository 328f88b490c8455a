"""What torch's tracing and transforms need to know of the fused kernels' compute ops.

The C++ extension (gated/csrc/recurrence.cpp) defines ``gated_fused::recurrence_forward``,
``recurrence_backward``, ``xh_mm``, ``tiled_mm``, ``cell_forward`` and ``cell_backward`` with
schemas and CPU kernels. Here they get

- fake (meta) implementations: output shapes from input shapes (the zoneout and recurrent-dropout
  arguments change none of them; LayerNorm's make the last output its flat statistics, forward,
  and gradients, backward, followed by ``m_t`` and ``dH`` with projections: see
  gated/csrc/time_loop.h), so ``torch.compile`` and ``torch.export`` keep each op as one opaque
  call (no unrolled time loop, dynamic T and B);
- batching rules for ``torch.func.vmap``: the op runs once per batch element and the results
  are stacked. (Batched gradients, ``autograd.grad(is_grads_batched=True)`` as gradcheck uses,
  go through torch's older vmap, whose per-element fallback serves the same purpose.) Correct for any batched
  argument, weights included; vmap over whole modules goes through the reference backend instead
  (see :func:`gated.backends.resolve`).

Autograd is not registered here: :class:`gated.backends.fused_cpu._Recurrence` wraps the ops.
"""

from __future__ import annotations

import torch
from torch import Tensor

from gated.backends import _scan_ops

_registered = False


def _recurrence_forward_fake(x, w_ih, w_hh, b_ih, b_hh, fb, h0, c0, lengths, w_hr, core, refine, save, rmask=None,
                             zone_h=None, zone_c=None, p_h=0.0, p_c=0.0, ln_w=None, ln_b=None, lnc_w=None, lnc_b=None,
                             lni_w=None, lni_b=None):
    T, B, _ = x.shape  # x: (T, B, I), or the input projection (T, B, G) without w_ih (LayerNorm)
    G, P = w_hh.shape  # P: the width of h (proj_size with projections)
    H = P if w_hr is None else w_hr.shape[1]
    out, h_n = x.new_empty(T, B, P), x.new_empty(B, P)
    c_n = x.new_empty(B, H) if c0 is not None else x.new_empty(0)
    A = x.new_empty(T, B, G) if save else x.new_empty(0)
    aux = x.new_empty(T, B, H) if save else x.new_empty(0)
    # the last output: m_t with projections, LayerNorm's saved statistics (flat), both as one flat
    # [statistics | m_t], else empty
    stats = T * B * (G + 1 + (H + 1 if c0 is not None else 0)) if save and ln_w is not None else 0
    if save and w_hr is not None:
        m = x.new_empty(T, B, H) if not stats else x.new_empty(stats + T * B * H)
    else:
        m = x.new_empty(stats)
    return out, h_n, c_n, A, aux, m


def _recurrence_backward_fake(dout, dh_n, dc_n, A, aux, out, h0, c0, w_hh, lengths, w_hr, core, refine, rmask=None,
                              zone_h=None, zone_c=None, p_h=0.0, p_c=0.0, ln=None, ln_w=None, lnc_w=None, lnc_b=None):
    T, B, G = A.shape
    P = w_hh.shape[1]
    H = P if w_hr is None else w_hr.shape[1]
    dghn = A.new_empty(0) if c0 is not None else A.new_empty(T, B, H)
    dc0 = A.new_empty(B, H) if c0 is not None else A.new_empty(0)
    # the last output: dH with projections, LayerNorm's gradients (flat: per step, then the norms'
    # parameter gradients per batch row), both as one flat [gradients | dH], else empty
    Hc = H if c0 is not None else 0
    grads = T * B * (G + Hc) + B * 2 * (G + Hc) if ln is not None else 0
    if w_hr is not None:
        dH = A.new_empty(T, B, P) if not grads else A.new_empty(grads + T * B * P)
    else:
        dH = A.new_empty(grads)
    return A.new_empty(T, B, G), dghn, A.new_empty(B, P), dc0, dH


def _xh_mm_fake(a, a2, x2, h0, out, append_sums):
    extra = 1 if append_sums else 0
    H, N = h0.shape[1], h0.shape[1] + x2.shape[1]
    second = a.new_empty(0) if a2 is None else a.new_empty(a2.shape[1], H + extra)
    return a.new_empty(a.shape[1], N + extra), second


def _tiled_mm_fake(a, b, transpose_a, append_sums):
    return a.new_empty(a.shape[1] if transpose_a else a.shape[0], b.shape[1] + (1 if append_sums else 0))


def _cell_forward_fake(gi, gh, h, c, fb, core, refine):
    B, G = gi.shape
    empty = h.new_empty(0)
    return h.new_empty(h.shape), h.new_empty(h.shape) if c is not None else empty, gi.new_empty(B, G), \
        h.new_empty(h.shape) if c is None else empty


def _cell_backward_fake(dh, dc, A, q, h, c, c_new, core, refine):
    lstm, empty = c is not None, h.new_empty(0)
    return A.new_empty(A.shape), A.new_empty(A.shape), empty if lstm else h.new_empty(h.shape), \
        h.new_empty(h.shape) if lstm else empty


def _per_element(op):
    """A batching rule that runs ``op`` on each element of the vmapped dimension and stacks."""

    def rule(info, in_dims, *args):
        results = []
        for k in range(info.batch_size):
            sliced = [a.select(d, k) if d is not None else a for a, d in zip(args, in_dims)]
            results.append(op(*sliced))
        if isinstance(results[0], Tensor):
            return torch.stack(results), 0
        stacked = tuple(torch.stack(list(parts)) for parts in zip(*results))
        return stacked, (0,) * len(stacked)

    return rule


def register() -> None:
    """Register the fake implementations and batching rules (once, after the library loaded)."""
    global _registered
    if _registered:
        return
    fakes = {
        "recurrence_forward": _recurrence_forward_fake,
        "recurrence_backward": _recurrence_backward_fake,
        "xh_mm": _xh_mm_fake,
        "tiled_mm": _tiled_mm_fake,
        "cell_forward": _cell_forward_fake,
        "cell_backward": _cell_backward_fake,
    }
    if hasattr(torch.ops.gated_fused, "scan_forward"):  # the scan kernels (gated/csrc/scan.h), if built
        fakes |= _scan_ops.FAKES
    for name, fake in fakes.items():
        qualname = f"gated_fused::{name}"
        torch.library.register_fake(qualname)(fake)
        torch.library.register_vmap(qualname)(_per_element(getattr(torch.ops.gated_fused, name).default))
    _registered = True
