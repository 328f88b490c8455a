"""Gated causal 1-D convolutions: Dauphin et al.'s gated linear unit over a convolution ("Language
Modeling with Gated Convolutional Networks", ICML 2017, arXiv 1612.08083, Eq. 1) and WaveNet's gated
activation (van den Oord et al. 2016, arXiv 1609.03499, Eq. 2), with the sigmoid gate optionally
built like Gu et al. 2020's keep gate (our extension).

.. code-block:: text

    [A; G] = W ∗ pad_left(x) + b                 pad (k − 1)·dilation zeros on the left: causal
    'glu'  : y = A ⊙ σ(G)                         (Dauphin et al.)
    'tanh' : y = tanh(A) ⊙ σ(G)                   (WaveNet)
    'U'    : σ(G + b_G), b_G = logit(u), u ~ U[1/d, 1 − 1/d]   (UGI)
    'R'    : σ(G + b_G) refined by σ(Q − b_G), Q = W_Q ∗ pad_left(x) + b_Q, b_G starting at 0

Output ``t`` sees inputs ``t, t − dilation, …, t − (k − 1)·dilation`` only. Glossary: ``B`` batch,
``C`` in_channels, ``O`` out_channels, ``T`` time, ``k`` kernel_size, ``d`` gate units (``O``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gated.feedforward._checks import check_size
from gated.feedforward._checks import check_input, choose
from gated.feedforward._gate import gate_variant, initial_gate_bias, variant_gate
from gated.feedforward.glu import ACTIVATIONS

__all__ = ["GATED_CONV_KINDS", "GatedConv1d"]

#: kind -> activation (a key of :data:`gated.feedforward.glu.ACTIVATIONS`) on the value half ``A``.
GATED_CONV_KINDS = {"glu": "identity", "tanh": "tanh"}


class GatedConv1d(nn.Module):
    """Causal gated convolution ``act(A) ⊙ σ(G)``; see the module docstring.

    Parameters: ``conv`` (an ``nn.Conv1d`` ``C -> 2·O``, output channels ``[A; G]``, plus ``Q`` in
    refine variants) and ``gate_bias`` (``b_G``, variants ``U``, ``R``, ``UR``; the conv's bias on
    the ``G`` and ``Q`` channels then starts at 0).

    Args:
        in_channels, out_channels, kernel_size, dilation, bias: as in ``torch.nn.Conv1d``.
        kind: ``"glu"`` (Dauphin et al., default) or ``"tanh"`` (WaveNet).
        variant: ``"-"`` (the papers), ``"U"``, ``"R"`` or ``"UR"`` (long names work too).
        generator: ``torch.Generator`` for the UGI draw.

    Shape:
        ``(B, C, T) -> (B, O, T)`` or unbatched ``(C, T) -> (O, T)``.

    Example:
        >>> conv = GatedConv1d(16, 32, kernel_size=3, dilation=2, kind="tanh")
        >>> conv(torch.randn(4, 16, 100)).shape
        torch.Size([4, 32, 100])
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, dilation: int = 1,
                 bias: bool = True, *, kind: str = "glu", variant: str = "-",
                 generator: torch.Generator | None = None, device=None, dtype=None) -> None:
        super().__init__()
        self.in_channels = check_size("in_channels", in_channels)
        self.out_channels = check_size("out_channels", out_channels)
        self.kernel_size, self.dilation = check_size("kernel_size", kernel_size), check_size("dilation", dilation)
        self.kind = choose("kind", kind, GATED_CONV_KINDS)
        self.act = ACTIVATIONS[GATED_CONV_KINDS[self.kind]]
        self.variant = gate_variant(variant, "GatedConv1d")
        self.refine = self.variant.auxiliary == "refine"
        blocks = 3 if self.refine else 2
        self.conv = nn.Conv1d(in_channels, blocks * out_channels, kernel_size, dilation=dilation, bias=bias,
                              device=device, dtype=dtype)
        own_bias = self.variant.name != "-"
        self.gate_bias = nn.Parameter(torch.empty(out_channels, device=device, dtype=dtype)) if own_bias else None
        self.reset_parameters(generator)

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """``nn.Conv1d``'s init, then the variant's gate bias."""
        self.conv.reset_parameters()
        if self.gate_bias is None:
            return
        with torch.no_grad():
            if self.conv.bias is not None:  # b_G alone sets the gates at init (G and Q channels)
                self.conv.bias[self.out_channels:].zero_()
            self.gate_bias.copy_(initial_gate_bias(self.variant, self.out_channels, 0.0, generator))

    @property
    def receptive_field(self) -> int:
        """Input steps that one output sees: ``(k − 1)·dilation + 1``."""
        return (self.kernel_size - 1) * self.dilation + 1

    def _pre(self, x: Tensor) -> list[Tensor]:
        check_input(x, self.in_channels, "in_channels", dim=-2, min_dims=2, layout="(B, C, T) or (C, T)")
        c = self.conv(F.pad(x, (self.receptive_field - 1, 0)))  # (B, 2O or 3O, T)
        return list(c.chunk(3 if self.refine else 2, dim=-2))  # A, G (, Q): (B, O, T) each

    def _gate(self, g: Tensor, q: Tensor | None) -> Tensor:
        b = None if self.gate_bias is None else self.gate_bias.unsqueeze(-1)  # (O, 1): broadcast over T
        return variant_gate(g, b, q)

    def gate(self, x: Tensor) -> Tensor:
        """The sigmoid gate ``σ(G)`` (refined in refine variants): ``(B, O, T)``, in (0, 1)."""
        _, g, *q = self._pre(x)
        return self._gate(g, q[0] if q else None)

    def forward(self, x: Tensor) -> Tensor:
        a, g, *q = self._pre(x)
        return self.act(a) * self._gate(g, q[0] if q else None)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, dilation={self.dilation}, "
                f"bias={self.conv.bias is not None}, kind={self.kind!r}, variant={self.variant.name!r}")
