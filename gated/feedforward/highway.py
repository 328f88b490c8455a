"""Highway layers (Srivastava, Greff, Schmidhuber 2015, arXiv 1505.00387), with the transform gate
optionally built like Gu et al. 2020's keep gate (UGI and/or refine gate) — our extension.

.. code-block:: text

    y = H(x) ⊙ T(x) + x ⊙ (1 − T(x)),    H(x) = act(W_H x + b_H)
    '-'  : T = σ(W_T x + b_T),                      b_T = gate_bias (default −2: carry x at init)
    'U'  : T = σ(W_T x + b_T),                      b_T = logit(u), u ~ U[1/d, 1 − 1/d]   (UGI)
    'R'  : T = refine(σ(W_T x + b_T), σ(W_R x − b_T)),  b_T = gate_bias
    'UR' : T = refine(σ(W_T x + b_T), σ(W_R x − b_T)),  b_T from UGI

with ``refine(t, r) = t² + 2rt(1 − t)`` (:func:`gated.gates.refine_gate`) and, in the refine
variants, ``b_T`` one trainable vector shared by ``t`` (``+b_T``) and ``r`` (``−b_T``), as in the
paper's pseudo-code (Gu et al. 2020, arXiv 1910.09890, Section 3). Labels follow
:data:`gated.variants.VARIANTS`. Because
``refine(1 − t, 1 − r) = 1 − refine(t, r)``, refining ``T`` or the carry gate ``C = 1 − T`` gives the
same family. Glossary: ``d`` size.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from gated.feedforward._checks import check_input, check_int
from gated.feedforward.glu import get_activation
from gated.gates import logit, refine_gate
from gated.variants import get_variant

__all__ = ["HIGHWAY_VARIANTS", "DEFAULT_GATE_BIAS", "Highway", "HighwayNetwork"]

#: Labels of :data:`gated.variants.VARIANTS` that a highway gate supports.
HIGHWAY_VARIANTS = ("-", "U", "R", "UR")
DEFAULT_GATE_BIAS = -2.0


def _ugi(n: int, generator: torch.Generator | None) -> Tensor:
    """UGI biases ``logit(u)``, ``u ~ U[1/d, 1 - 1/d]`` (paper Eq. 12), ``d = max(n, 3)``, float64."""
    d = max(n, 3)
    return logit(1.0 / d + (1.0 - 2.0 / d) * torch.rand(n, dtype=torch.float64, generator=generator))


class Highway(nn.Module):
    """One highway layer ``y = H(x)·T(x) + x·(1 − T(x))``; see the module docstring for the gates.

    Parameters: ``hidden`` (Linear ``d -> d``, the transform ``H``); ``gate`` (Linear ``d -> d``,
    or ``d -> 2d`` with rows ``[W_T; W_R]`` in refine variants); ``bias_t`` (the shared ``b_T``,
    refine variants only; their ``gate.bias`` starts at 0).

    Args:
        size: features ``d`` (input = output).
        activation: the nonlinearity of ``H``, a key of :data:`gated.feedforward.glu.ACTIVATIONS`.
        variant: ``"-"`` (standard), ``"U"``, ``"R"`` or ``"UR"`` (long names such as
            ``"uniform-refine"`` work too).
        gate_bias: the constant ``b_T`` of ``"-"`` and ``"R"`` (default −2.0, i.e. ``T ≈ 0.12``:
            the layer starts close to the identity). UGI variants draw ``b_T`` and reject it.
        generator: ``torch.Generator`` for the UGI draw.

    Shape:
        ``(*, d) -> (*, d)``.

    Example:
        >>> layer = Highway(64, variant="UR")
        >>> layer(torch.randn(8, 64)).shape
        torch.Size([8, 64])
    """

    def __init__(self, size: int, activation: str = "relu", variant: str = "-", gate_bias: float | None = None,
                 *, generator: torch.Generator | None = None, device=None, dtype=None) -> None:
        super().__init__()
        fk = {"device": device, "dtype": dtype}
        self.size = check_int("size", size)
        self.variant = get_variant(variant)
        if self.variant.name not in HIGHWAY_VARIANTS:
            choices = ", ".join(repr(v) for v in HIGHWAY_VARIANTS)
            raise ValueError(f"variant {self.variant.name!r} does not exist for Highway; choose one of {choices}")
        self.uniform = self.variant.init == "uniform"
        self.refine = self.variant.auxiliary == "refine"
        if self.uniform and gate_bias is not None:
            raise ValueError(f"variant {self.variant.name!r} draws the gate bias with UGI; gate_bias does not apply")
        self.gate_bias = DEFAULT_GATE_BIAS if gate_bias is None else float(gate_bias)
        self.act = get_activation(activation)
        self.hidden = nn.Linear(size, size, **fk)
        self.gate = nn.Linear(size, (2 if self.refine else 1) * size, **fk)
        self.bias_t = nn.Parameter(torch.empty(size, **fk)) if self.refine else None
        self.reset_parameters(generator)

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """torch's Linear init for the weights, then the variant's gate bias."""
        self.hidden.reset_parameters()
        self.gate.reset_parameters()
        with torch.no_grad():
            b = _ugi(self.size, generator) if self.uniform else torch.full((self.size,), self.gate_bias)
            if self.refine:
                self.gate.bias.zero_()  # t and r start at exactly sigma(+-b_T) plus the weights' part
                self.bias_t.copy_(b)
            else:
                self.gate.bias.copy_(b)

    def transform_gate(self, x: Tensor) -> Tensor:
        """``T(x)``: ``(*, d) -> (*, d)``, in (0, 1)."""
        check_input(x, self.size, "size")
        pre = self.gate(x)  # (*, d) or (*, 2d)
        if not self.refine:
            return torch.sigmoid(pre)
        p_t, p_r = pre.chunk(2, dim=-1)  # (*, d) each
        return refine_gate(torch.sigmoid(p_t + self.bias_t), torch.sigmoid(p_r - self.bias_t))

    def forward(self, x: Tensor) -> Tensor:
        t = self.transform_gate(x)
        return self.act(self.hidden(x)) * t + x * (1.0 - t)

    def extra_repr(self) -> str:
        bias = "" if self.uniform else f", gate_bias={self.gate_bias}"
        return f"{self.size}, activation={self.act.name!r}, variant={self.variant.name!r}{bias}"


class HighwayNetwork(nn.Module):
    """``num_layers`` :class:`Highway` layers of the same size, applied in order.

    Args:
        size, activation, variant, gate_bias, generator: as in :class:`Highway`.
        num_layers: depth.

    Shape:
        ``(*, d) -> (*, d)``.
    """

    def __init__(self, size: int, num_layers: int, activation: str = "relu", variant: str = "-",
                 gate_bias: float | None = None, *, generator: torch.Generator | None = None,
                 device=None, dtype=None) -> None:
        super().__init__()
        check_int("num_layers", num_layers)
        self.layers = nn.ModuleList(
            Highway(size, activation, variant, gate_bias, generator=generator, device=device, dtype=dtype)
            for _ in range(num_layers)
        )

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.layers:
            x = layer(x)
        return x

    def transform_gates(self, x: Tensor) -> list[Tensor]:
        """``T`` of every layer along the forward pass: ``num_layers`` tensors ``(*, d)``."""
        gates = []
        for layer in self.layers:
            gates.append(layer.transform_gate(x))
            x = layer(x)
        return gates
