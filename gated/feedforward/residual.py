"""GTrXL's gated residual connection: the GRU-type gating layer of Parisotto et al., "Stabilizing
Transformers for Reinforcement Learning" (ICML 2020, arXiv 1910.06764, "Gating Layers"), which replaces
``x + y`` after a Transformer sub-layer, with the update gate ``z`` optionally built like Gu et al.
2020's keep gate (our extension).

.. code-block:: text

    r = σ(W_r y + U_r x)
    z = σ(W_z y + U_z x − b_g)                         b_g = gate_bias, default 2: z small, out ≈ x
    h = tanh(W_g y + U_g (r ⊙ x))
    out = (1 − z) ⊙ x + z ⊙ h
    'U'  : b_g = logit(u), u ~ U[1/d, 1 − 1/d]         (UGI)
    'R'  : z = refine(σ(W_z y + U_z x − b_g), σ(W_q y + U_q x + b_g))
    'UR' : both

``x`` is the residual stream (the sub-layer's input) and ``y`` the sub-layer's output. The refine
gate gets ``+b_g`` where ``z`` gets ``−b_g`` (:mod:`gated.feedforward._gate`). Glossary: ``d`` size.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from gated.feedforward._checks import check_size
from gated.feedforward._checks import check_input
from gated.feedforward._gate import gate_variant, initial_gate_bias, variant_gate

__all__ = ["GatedResidual"]

DEFAULT_GATE_BIAS = 2.0


class GatedResidual(nn.Module):
    """``out = (1 − z) ⊙ x + z ⊙ h`` (GTrXL's GRU gate); see the module docstring.

    Parameters (bias-free Linears, as in the paper's equations): ``w`` (``d -> 3d``, rows
    ``[W_r; W_z; W_g]``, plus ``W_q`` in refine variants), ``u`` (``d -> 2d``, rows ``[U_r; U_z]``,
    plus ``U_q``), ``u_g`` (``d -> d``), ``gate_bias`` (``b_g``, trainable).

    Args:
        size: features ``d`` of ``x`` and ``y``.
        variant: ``"-"`` (the paper), ``"U"``, ``"R"`` or ``"UR"`` (long names work too).
        gate_bias: the constant ``b_g`` of ``"-"`` and ``"R"`` (default 2.0: ``z ≈ σ(−2) ≈ 0.12``,
            near the identity). UGI variants draw ``b_g`` and reject it.
        generator: ``torch.Generator`` for the UGI draw.

    Shape:
        ``x, y: (*, d) -> (*, d)``.

    Example:
        >>> gate = GatedResidual(64, variant="UR")
        >>> x = torch.randn(8, 10, 64)
        >>> gate(x, torch.relu(torch.randn(8, 10, 64))).shape
        torch.Size([8, 10, 64])
    """

    def __init__(self, size: int, variant: str = "-", gate_bias: float | None = None, *,
                 generator: torch.Generator | None = None, device=None, dtype=None) -> None:
        super().__init__()
        fk = {"device": device, "dtype": dtype}
        self.size = check_size("size", size)
        self.variant = gate_variant(variant, "GatedResidual")
        self.refine = self.variant.auxiliary == "refine"
        if self.variant.init == "uniform" and gate_bias is not None:
            raise ValueError(f"variant {self.variant.name!r} draws the gate bias with UGI; gate_bias does not apply")
        if gate_bias is not None and (isinstance(gate_bias, bool) or not isinstance(gate_bias, (int, float))):
            raise TypeError(f"gate_bias must be a number, got {type(gate_bias).__name__}")
        self.constant = DEFAULT_GATE_BIAS if gate_bias is None else float(gate_bias)
        k = 1 if self.refine else 0
        self.w = nn.Linear(size, (3 + k) * size, bias=False, **fk)
        self.u = nn.Linear(size, (2 + k) * size, bias=False, **fk)
        self.u_g = nn.Linear(size, size, bias=False, **fk)
        self.gate_bias = nn.Parameter(torch.empty(size, **fk))
        self.reset_parameters(generator)

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """``nn.Linear``'s init for the weights, then the variant's ``b_g``."""
        for lin in (self.w, self.u, self.u_g):
            lin.reset_parameters()
        with torch.no_grad():
            self.gate_bias.copy_(initial_gate_bias(self.variant, self.size, self.constant, generator))

    def _gates(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(r, z, W_g y)``, each ``(*, d)``."""
        check_input(x, self.size, "size")
        check_input(y, self.size, "size")
        if x.shape != y.shape:
            raise ValueError(f"x and y must have the same shape, got {tuple(x.shape)} and {tuple(y.shape)}")
        wy = self.w(y).chunk(4 if self.refine else 3, dim=-1)  # W_r y, W_z y, W_g y (, W_q y)
        ux = self.u(x).chunk(3 if self.refine else 2, dim=-1)  # U_r x, U_z x (, U_q x)
        r = torch.sigmoid(wy[0] + ux[0])
        q = wy[3] + ux[2] if self.refine else None
        z = variant_gate(wy[1] + ux[1], self.gate_bias, q, sign=-1.0)
        return r, z, wy[2]

    def update_gate(self, x: Tensor, y: Tensor) -> Tensor:
        """``z``, the share of the new value ``h`` in the output: ``(*, d)``, in (0, 1)."""
        return self._gates(x, y)[1]

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        r, z, wg_y = self._gates(x, y)
        h = torch.tanh(wg_y + self.u_g(r * x))
        return (1.0 - z) * x + z * h

    def extra_repr(self) -> str:
        bias = "" if self.variant.init == "uniform" else f", gate_bias={self.constant}"
        return f"{self.size}, variant={self.variant.name!r}{bias}"
