"""Transformer feed-forward blocks, plain and GLU-gated (Shazeer 2020, "GLU Variants Improve
Transformer", arXiv 2002.05202).

.. code-block:: text

    plain:  FFN_act(x)  = act(x W1 + b1) W2 + b2                        # relu, gelu, swish
    gated:  FFN_act(x)  = (act(x W + b) ⊙ (x V + c)) W2 + b2            # glu, bilinear, reglu, geglu, swiglu

With ``bias=False`` these are exactly Shazeer's bias-free forms. A gated block has three matrices,
so :func:`glu_hidden_size` shrinks ``d_ff`` by 2/3 to keep the parameter count of a plain block
(T5-base: 3072 -> 2048). Glossary: ``D`` d_model, ``F`` d_ff, ``O`` d_out.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

import torch
from torch import Tensor, nn

from gated.feedforward._checks import check_input, check_int, choose
from gated.feedforward.glu import ACTIVATIONS, GLU_ACTIVATIONS, _check_beta, gated_linear

__all__ = ["FFNVariant", "FFN_VARIANTS", "FFN_LAYOUTS", "FeedForward", "glu_hidden_size", "ffn_hidden_size"]


@dataclass(frozen=True)
class FFNVariant:
    """One row of Shazeer's Table 1.

    Attributes:
        name: registry key (``"swiglu"``).
        activation: key of :data:`gated.feedforward.glu.ACTIVATIONS` applied to ``x W1`` / ``x W``.
        gated: ``True``: three matrices ``W, V, W2``; ``False``: two, ``W1, W2``.
    """

    name: str
    activation: str
    gated: bool


FFN_VARIANTS: dict[str, FFNVariant] = {
    v.name: v
    for v in [FFNVariant("relu", "relu", False), FFNVariant("gelu", "gelu", False),
              FFNVariant("swish", "swish", False)]
    + [FFNVariant(name, act, True) for name, act in GLU_ACTIVATIONS.items()]
}

#: Parameter layouts of a gated block: ``"packed"`` holds ``W ‖ V`` in one ``wv`` Linear
#: (rows ``[W; V]``, one matmul); ``"separate"`` holds Linears ``w`` and ``v``.
FFN_LAYOUTS = ("packed", "separate")


def glu_hidden_size(d_ff: int, multiple_of: int = 8) -> int:
    """Hidden size of a gated FFN with the parameters of a plain one of width ``d_ff`` (2/3 rule).

    Returns ``2 * d_ff / 3`` rounded to the **nearest** multiple of ``multiple_of`` (halves round
    up), and at least ``multiple_of``. Bias-free, the gated block then has ``3 * D * h`` weights
    against ``2 * D * d_ff``: equal when ``d_ff`` is a multiple of ``3 * multiple_of / 2``
    (``glu_hidden_size(3072) == 2048``), otherwise off by less than ``1.5 * D * multiple_of``.

    Args:
        d_ff: hidden size of the plain FFN.
        multiple_of: round to a multiple of this (8 suits tensor cores; 1 rounds to an integer).
    """
    check_int("d_ff", d_ff)
    check_int("multiple_of", multiple_of)
    k = Fraction(2 * d_ff, 3 * multiple_of) + Fraction(1, 2)
    return max(k.numerator // k.denominator, 1) * multiple_of


def ffn_hidden_size(activation: str, d_ff: int, multiple_of: int = 8) -> int:
    """``d_ff`` for a plain variant, :func:`glu_hidden_size` for a gated one, so every row of
    :data:`FFN_VARIANTS` gets (close to) the same parameter count."""
    variant = FFN_VARIANTS[choose("FFN activation", activation, FFN_VARIANTS)]
    return glu_hidden_size(d_ff, multiple_of) if variant.gated else check_int("d_ff", d_ff)


class FeedForward(nn.Module):
    """Position-wise feed-forward block, one :data:`FFN_VARIANTS` entry per activation.

    Parameters (``nn.Linear`` submodules, torch's ``(out, in)`` weights): plain ``w1: D -> F``,
    ``w2: F -> O``; gated, ``layout="separate"``: ``w: D -> F`` (activated), ``v: D -> F``,
    ``w2: F -> O``; gated, ``layout="packed"``: ``wv: D -> 2F`` (rows ``[W; V]``), ``w2``. The two
    gated layouts load each other's ``state_dict``. Linears keep torch's default init.

    Args:
        d_model: input features ``D``.
        d_ff: hidden size ``F`` (see :func:`ffn_hidden_size` for equal parameter counts).
        activation: ``relu``, ``gelu``, ``swish`` (plain) or ``glu``, ``bilinear``, ``reglu``,
            ``geglu``, ``swiglu`` (gated). Case-insensitive.
        d_out: output features ``O`` (default ``D``).
        bias: add biases ``b, c, b2`` (``False``: Shazeer's bias-free forms).
        layout: ``"packed"`` (default, one matmul for ``W ‖ V``) or ``"separate"``.
        beta: Swish's β (``swish``/``swiglu`` only).
        dropout: dropout on the hidden activation, before ``W2`` (as in T5).

    Shape:
        ``(*, D) -> (*, O)``.

    Example:
        >>> ffn = FeedForward(512, ffn_hidden_size("swiglu", 2048), "swiglu", bias=False)
        >>> ffn(torch.randn(2, 10, 512)).shape
        torch.Size([2, 10, 512])
    """

    def __init__(self, d_model: int, d_ff: int, activation: str = "swiglu", *, d_out: int | None = None,
                 bias: bool = True, layout: str = "packed", beta: float = 1.0, dropout: float = 0.0,
                 device=None, dtype=None) -> None:
        super().__init__()
        fk = {"device": device, "dtype": dtype}
        self.d_model, self.d_ff = check_int("d_model", d_model), check_int("d_ff", d_ff)
        self.d_out = d_model if d_out is None else check_int("d_out", d_out)
        self.variant = FFN_VARIANTS[choose("FFN activation", activation, FFN_VARIANTS)]
        self.layout = choose("layout", layout, FFN_LAYOUTS)
        _check_beta(ACTIVATIONS[self.variant.activation], beta, self.variant.name)
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
            raise ValueError(f"dropout must be a number in [0, 1), got {dropout!r}")
        self.beta, self.bias = float(beta), bool(bias)
        if not self.variant.gated:
            self.w1 = nn.Linear(d_model, d_ff, bias, **fk)
        elif self.layout == "packed":
            self.wv = nn.Linear(d_model, 2 * d_ff, bias, **fk)
        else:
            self.w = nn.Linear(d_model, d_ff, bias, **fk)
            self.v = nn.Linear(d_model, d_ff, bias, **fk)
        self.w2 = nn.Linear(d_ff, self.d_out, bias, **fk)
        self.dropout = nn.Dropout(dropout)

    @property
    def activation(self) -> str:
        return self.variant.name

    def hidden(self, x: Tensor) -> Tensor:
        """The hidden activation before dropout and ``W2``: ``(*, D) -> (*, F)``."""
        check_input(x, self.d_model, "d_model")
        if not self.variant.gated:
            return ACTIVATIONS[self.variant.activation](self.w1(x), self.beta)
        if self.layout == "packed":
            xw, xv = self.wv(x).chunk(2, dim=-1)  # (*, F) each
        else:
            xw, xv = self.w(x), self.v(x)
        # the two-argument form gates its second argument: a ⊙ act(b) with a = xV, b = xW
        return gated_linear(xv, xw, self.variant.name, self.beta)

    def forward(self, x: Tensor) -> Tensor:
        return self.w2(self.dropout(self.hidden(x)))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # convert between the packed (wv) and separate (w, v) layouts before the usual load
        if self.variant.gated:
            for p in ("weight", "bias"):
                w, v, wv = (f"{prefix}{n}.{p}" for n in ("w", "v", "wv"))
                if self.layout == "packed" and w in state_dict and v in state_dict:
                    state_dict[wv] = torch.cat([state_dict.pop(w), state_dict.pop(v)], dim=0)
                elif self.layout == "separate" and wv in state_dict:
                    state_dict[w], state_dict[v] = state_dict.pop(wv).chunk(2, dim=0)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        beta = f", beta={self.beta}" if self.beta != 1.0 else ""
        layout = f", layout={self.layout!r}" if self.variant.gated else ""
        return f"{self.d_model}, {self.d_ff}, {self.activation!r}, d_out={self.d_out}, bias={self.bias}{layout}{beta}"
