"""Fake (meta) implementations and batching rules of the scan ops (gated/csrc/scan.h).

``gated_fused::scan_forward``, ``scan_backward``, ``linear_scan``, ``linear_scan_backward`` and
``scan_weight_grad`` get output shapes from input shapes, so ``torch.compile`` and ``torch.export``
keep each as one opaque call, and per-element batching rules for ``torch.func.vmap``, as
:mod:`gated.backends._ops` does for the recurrent kernels (its ``register`` registers :data:`FAKES`).
Autograd is in :mod:`gated.backends.scan`.
"""

from __future__ import annotations


def _scan_forward_fake(P, bias, fb, h0, lengths, cell, refine):
    T, B, _ = P.shape
    H = h0.shape[-1]
    return P.new_empty(T, B, H), P.new_empty(B, H)


def _scan_backward_fake(dout, dh_n, P, bias, fb, out, h0, lengths, cell, refine):
    return P.new_empty(P.shape), P.new_empty(h0.shape)


def _linear_scan_fake(a, b, h0):
    return a.new_empty(a.shape)


def _linear_scan_backward_fake(dout, a, out, h0):
    return a.new_empty(a.shape), a.new_empty(a.shape), a.new_empty(h0.shape)


def _scan_weight_grad_fake(dP, x, append_sums):
    return dP.new_empty(dP.shape[1], x.shape[1] + (1 if append_sums else 0))


def _lru_forward_fake(P, bias, fb, units, h0, lengths, cell, refine):
    T, B, _ = P.shape
    H = h0.shape[-1]
    return P.new_empty(T, B, H), P.new_empty(B, H)


def _lru_backward_fake(dout, dh_n, P, bias, fb, units, out, h0, lengths, cell, refine, unit_grad):
    return P.new_empty(P.shape), P.new_empty(h0.shape), P.new_empty(h0.shape if unit_grad else (0,))


FAKES = {  # registered with the recurrent kernels' fakes by gated.backends._ops.register
    "scan_forward": _scan_forward_fake,
    "scan_backward": _scan_backward_fake,
    "linear_scan": _linear_scan_fake,
    "linear_scan_backward": _linear_scan_backward_fake,
    "scan_weight_grad": _scan_weight_grad_fake,
    "lru_forward": _lru_forward_fake,
    "lru_backward": _lru_backward_fake,
}
