"""Gated RMSNorm, the normalisation before the output projection of Mamba-2 (Dao & Gu 2024, arXiv
2405.21060) and of gated linear-attention layers (GLA, Yang et al. 2024): an RMSNorm (Zhang &
Sennrich 2019) and a Swish (or sigmoid) gate from a second input ``z``.

.. code-block:: text

    norm_before_gate=True  : y = RMSNorm(x) ⊙ w ⊙ act(z)            (fla's FusedRMSNormGated)
    norm_before_gate=False : y = RMSNorm(x ⊙ act(z)) ⊙ w            (Mamba-2's layer)
    RMSNorm(x) = x / sqrt(mean(x²) + eps)        over groups of group_size features (default: all)

``act`` is Swish (``x·σ(x)``, default) or sigmoid. Without ``z`` it is ``torch.nn.RMSNorm``.
It is computed in at least float32 and returned in the input's dtype. Glossary: ``d`` hidden_size.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from gated.feedforward._checks import check_number, check_size
from gated.feedforward._checks import check_input, choose
from gated.feedforward.glu import ACTIVATIONS

__all__ = ["NORM_GATE_ACTIVATIONS", "GatedRMSNorm"]

#: activations the gate ``z`` may take (keys of :data:`gated.feedforward.glu.ACTIVATIONS`).
NORM_GATE_ACTIVATIONS = ("swish", "sigmoid")


class GatedRMSNorm(nn.Module):
    """RMSNorm with a gate: ``RMSNorm(x) ⊙ w ⊙ swish(z)``; see the module docstring.

    Parameters: ``weight`` (``(d,)``, ones at init; absent with ``elementwise_affine=False``).

    Args:
        hidden_size: features ``d``.
        eps: added to ``mean(x²)`` (default 1e-5, as Mamba-2 and fla; ``None``: the machine epsilon of
            the computing dtype, like ``torch.nn.RMSNorm``).
        elementwise_affine: learn ``w``.
        norm_before_gate: ``True`` (default): normalise, then gate; ``False``: gate, then normalise.
        group_size: normalise each group of this many features (Mamba-2 with ``ngroups > 1``);
            must divide ``d``. Default ``d``.
        activation: ``"swish"`` (default) or ``"sigmoid"``, applied to ``z``.

    Shape:
        ``x, z: (*, d) -> (*, d)``; ``z`` may be omitted (plain RMSNorm).

    Example:
        >>> norm = GatedRMSNorm(64)
        >>> norm(torch.randn(2, 10, 64), torch.randn(2, 10, 64)).shape
        torch.Size([2, 10, 64])
    """

    def __init__(self, hidden_size: int, eps: float | None = 1e-5, elementwise_affine: bool = True, *,
                 norm_before_gate: bool = True, group_size: int | None = None, activation: str = "swish",
                 device=None, dtype=None) -> None:
        super().__init__()
        self.hidden_size = check_size("hidden_size", hidden_size)
        self.eps = None if eps is None else check_number("eps", eps, 0.0, open_low=True)
        self.group_size = hidden_size if group_size is None else check_size("group_size", group_size)
        if hidden_size % self.group_size:
            raise ValueError(f"group_size must divide hidden_size, got group_size={group_size} and "
                             f"hidden_size={hidden_size}")
        self.norm_before_gate = bool(norm_before_gate)
        self.act = ACTIVATIONS[choose("gate activation", activation, NORM_GATE_ACTIVATIONS)]
        if elementwise_affine:
            self.weight = nn.Parameter(torch.ones(hidden_size, device=device, dtype=dtype))
        else:
            self.register_parameter("weight", None)

    def reset_parameters(self) -> None:
        if self.weight is not None:
            nn.init.ones_(self.weight)

    def forward(self, x: Tensor, z: Tensor | None = None) -> Tensor:
        check_input(x, self.hidden_size, "hidden_size")
        dtype = x.dtype
        wide = torch.promote_types(dtype, torch.float32)  # half and bfloat16 are normalised in float32
        x = x.to(wide)
        if z is not None:
            check_input(z, self.hidden_size, "hidden_size")
            if z.shape != x.shape:
                raise ValueError(f"x and z must have the same shape, got {tuple(x.shape)} and {tuple(z.shape)}")
            gate = self.act(z.to(wide))
            if not self.norm_before_gate:
                x = x * gate
        eps = torch.finfo(wide).eps if self.eps is None else self.eps  # torch.nn.RMSNorm's default
        xg = x.unflatten(-1, (-1, self.group_size))  # (*, d / group_size, group_size)
        y = (xg * torch.rsqrt(xg.pow(2).mean(-1, keepdim=True) + eps)).flatten(-2)  # (*, d)
        if self.weight is not None:
            y = y * self.weight.to(wide)
        if z is not None and self.norm_before_gate:
            y = y * gate
        return y.to(dtype)

    def extra_repr(self) -> str:
        group = "" if self.group_size == self.hidden_size else f", group_size={self.group_size}"
        return (f"{self.hidden_size}, eps={self.eps}, elementwise_affine={self.weight is not None}, "
                f"norm_before_gate={self.norm_before_gate}{group}, activation={self.act.name!r}")
