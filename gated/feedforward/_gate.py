"""The sigmoid gate of the feed-forward modules, built like Gu et al. 2020's keep gate: the one place
where the registry's ``-``/``U``/``R``/``UR`` labels become parameters and a gate value.

.. code-block:: text

    '-'  : g = σ(P + s·b)                              b = the module's constant (or no b at all)
    'U'  : g = σ(P + s·b)                              b = logit(u), u ~ U[1/d, 1 − 1/d]   (UGI)
    'R'  : g = refine(σ(P + s·b), σ(P_r − s·b))        b = the module's constant, trainable, shared
    'UR' : g = refine(σ(P + s·b), σ(P_r − s·b))        b from UGI

``P`` and ``P_r`` are the module's own projections (``P_r`` from extra rows or channels), ``s`` is
``+1`` except in GTrXL's ``z = σ(W_z y + U_z x − b_g)`` (``s = −1``), and ``refine`` is
:func:`gated.gates.refine_gate`. As in the paper's pseudo-code (Section 3) the refine gate gets the
opposite bias of the gate it refines. Glossary: ``n`` gate units.
"""

from __future__ import annotations

import torch
from torch import Tensor

from gated.feedforward.highway import _ugi
from gated.gates import refine_gate
from gated.variants import Variant, get_variant

__all__ = ["GATE_VARIANTS", "gate_variant", "initial_gate_bias", "variant_gate"]

#: Labels of :data:`gated.variants.VARIANTS` that a feed-forward sigmoid gate supports.
GATE_VARIANTS = ("-", "U", "R", "UR")


def gate_variant(variant: str | Variant, owner: str) -> Variant:
    """Look ``variant`` up in the registry and check that ``owner``'s gate supports it."""
    v = get_variant(variant)
    if v.name not in GATE_VARIANTS:
        choices = ", ".join(repr(c) for c in GATE_VARIANTS)
        raise ValueError(f"variant {v.name!r} does not exist for {owner}; choose one of {choices}")
    return v


def initial_gate_bias(variant: Variant, n: int, constant: float, generator: torch.Generator | None) -> Tensor:
    """The variant's ``b`` at init, ``(n,)`` float64: UGI's ``logit(u)`` or ``constant``."""
    if variant.init == "uniform":
        return _ugi(n, generator)
    return torch.full((n,), float(constant), dtype=torch.float64)


def variant_gate(logits: Tensor, bias: Tensor | None = None, refine_logits: Tensor | None = None,
                 sign: float = 1.0) -> Tensor:
    """``σ(P + s·b)``, refined by ``σ(P_r − s·b)`` when ``refine_logits`` is given; ``b`` broadcasts
    against ``P`` (``None``: no bias)."""
    sb = 0.0 if bias is None else sign * bias
    g = torch.sigmoid(logits + sb)
    if refine_logits is None:
        return g
    return refine_gate(g, torch.sigmoid(refine_logits - sb))
