"""The GLU family in its two-argument form, ``a ⊙ act(b)`` (Dauphin et al. 2017, arXiv 1612.08083; Shazeer 2020, arXiv 2002.05202).

References: Dauphin, Fan, Auli, Grangier, "Language Modeling with Gated Convolutional Networks",
ICML 2017 (GLU); Shazeer, "GLU Variants Improve Transformer", 2020 (Bilinear, ReGLU, GEGLU, SwiGLU).

.. code-block:: text

    GLU(a, b)          = a ⊙ σ(b)
    Bilinear(a, b)     = a ⊙ b
    ReGLU(a, b)        = a ⊙ ReLU(b)
    GEGLU(a, b)        = a ⊙ GELU(b)            # exact (erf) GELU
    SwiGLU(a, b, β)    = a ⊙ Swish_β(b),  Swish_β(x) = x · σ(βx)

The **second** argument is gated, as in ``torch.nn.functional.glu``, which splits its input into
``(a, b)`` and returns ``a * sigmoid(b)``; :func:`split_glu` does the same split for every member.
Adding an activation is one entry in :data:`ACTIVATIONS` (and one in :data:`GLU_ACTIVATIONS`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gated.feedforward._checks import choose

__all__ = [
    "Activation", "ACTIVATIONS", "GLU_ACTIVATIONS", "swish", "gated_linear", "glu", "bilinear",
    "reglu", "geglu", "swiglu", "split_glu", "GLU",
]


def swish(x: Tensor, beta: float = 1.0) -> Tensor:
    r"""Swish_β(x) = x · σ(βx) (Ramachandran et al. 2017); β = 1 is SiLU."""
    return F.silu(x) if beta == 1.0 else x * torch.sigmoid(beta * x)


@dataclass(frozen=True)
class Activation:
    """One element-wise activation.

    Attributes:
        name: registry key.
        fn: ``fn(x, beta) -> Tensor``; ``beta`` is ignored unless ``has_beta``.
        has_beta: whether the activation takes Swish's β.
    """

    name: str
    fn: Callable[[Tensor, float], Tensor]
    has_beta: bool = False

    def __call__(self, x: Tensor, beta: float = 1.0) -> Tensor:
        return self.fn(x, beta)

    def __reduce__(self):  # pickled by name: a module holding one pickles and loads the registry's
        return _registered, (self.name,)


def _registered(name: str) -> "Activation":
    return ACTIVATIONS[name]


def _identity(x: Tensor, beta: float) -> Tensor:
    return x


def _sigmoid(x: Tensor, beta: float) -> Tensor:
    return torch.sigmoid(x)


def _tanh(x: Tensor, beta: float) -> Tensor:
    return torch.tanh(x)


def _relu(x: Tensor, beta: float) -> Tensor:
    return F.relu(x)


def _gelu(x: Tensor, beta: float) -> Tensor:
    return F.gelu(x)


ACTIVATIONS: dict[str, Activation] = {
    a.name: a
    for a in [
        Activation("identity", _identity),
        Activation("sigmoid", _sigmoid),
        Activation("tanh", _tanh),
        Activation("relu", _relu),
        Activation("gelu", _gelu),
        Activation("swish", swish, has_beta=True),
    ]
}

#: GLU member -> the activation applied to its gated argument.
GLU_ACTIVATIONS: dict[str, str] = {
    "glu": "sigmoid",
    "bilinear": "identity",
    "reglu": "relu",
    "geglu": "gelu",
    "swiglu": "swish",
}


def get_activation(name: str, beta: float = 1.0) -> Activation:
    """Look up an element-wise activation; rejects a β the activation does not take."""
    act = ACTIVATIONS[choose("activation", name, ACTIVATIONS)]
    _check_beta(act, beta)
    return act


def _check_beta(act: Activation, beta, label: str | None = None) -> None:
    if isinstance(beta, bool) or not isinstance(beta, (int, float)):
        raise TypeError(f"beta must be a number, got {type(beta).__name__}")
    if beta != 1.0 and not act.has_beta:
        raise ValueError(f"beta={beta} only applies to 'swish' and 'swiglu'; {label or act.name!r} has no beta")


def gated_linear(a: Tensor, b: Tensor, activation: str = "glu", beta: float = 1.0) -> Tensor:
    r"""Two-argument GLU member ``a ⊙ act(b)``, with ``act`` from :data:`GLU_ACTIVATIONS`.

    Args:
        a: the value, ``(*)``.
        b: the gate pre-activation, same shape as ``a``.
        activation: ``"glu"``, ``"bilinear"``, ``"reglu"``, ``"geglu"`` or ``"swiglu"``.
        beta: Swish's β (``"swiglu"`` only).

    Returns:
        ``(*)``, the gated value.
    """
    name = choose("GLU activation", activation, GLU_ACTIVATIONS)
    act = ACTIVATIONS[GLU_ACTIVATIONS[name]]
    _check_beta(act, beta, name)
    if not isinstance(a, Tensor) or not isinstance(b, Tensor):
        raise TypeError(f"a and b must be Tensors, got {type(a).__name__} and {type(b).__name__}")
    if a.shape != b.shape:
        raise ValueError(f"a and b must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    return a * act(b, beta)


def glu(a: Tensor, b: Tensor) -> Tensor:
    """GLU(a, b) = a ⊙ σ(b) (Dauphin et al. 2017)."""
    return gated_linear(a, b, "glu")


def bilinear(a: Tensor, b: Tensor) -> Tensor:
    """Bilinear(a, b) = a ⊙ b (Shazeer 2020)."""
    return gated_linear(a, b, "bilinear")


def reglu(a: Tensor, b: Tensor) -> Tensor:
    """ReGLU(a, b) = a ⊙ ReLU(b) (Shazeer 2020)."""
    return gated_linear(a, b, "reglu")


def geglu(a: Tensor, b: Tensor) -> Tensor:
    """GEGLU(a, b) = a ⊙ GELU(b), exact erf GELU (Shazeer 2020)."""
    return gated_linear(a, b, "geglu")


def swiglu(a: Tensor, b: Tensor, beta: float = 1.0) -> Tensor:
    """SwiGLU(a, b, β) = a ⊙ Swish_β(b) (Shazeer 2020)."""
    return gated_linear(a, b, "swiglu", beta)


def split_glu(x: Tensor, dim: int = -1, activation: str = "glu", beta: float = 1.0) -> Tensor:
    """Split ``x`` in halves ``(a, b)`` along ``dim`` and return ``a ⊙ act(b)``.

    With ``activation="glu"`` this is ``torch.nn.functional.glu(x, dim)``.

    Args:
        x: ``(*, 2n, *)`` with an even size along ``dim``.
        dim: the dimension to split.
        activation, beta: as in :func:`gated_linear`.

    Returns:
        ``(*, n, *)``.
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a Tensor, got {type(x).__name__}")
    if x.dim() == 0 or not -x.dim() <= dim < x.dim():
        raise ValueError(f"dim {dim} is out of range for a {x.dim()}-D input")
    if x.shape[dim] % 2:
        raise ValueError(
            f"split_glu halves dim {dim} into (a, b), which needs an even size; got {x.shape[dim]}"
        )
    a, b = x.chunk(2, dim)
    return gated_linear(a, b, activation, beta)


class GLU(nn.Module):
    """Module form of :func:`split_glu`: ``torch.nn.GLU`` for every member of the family.

    Args:
        activation: ``"glu"`` (default; equals ``torch.nn.GLU``), ``"bilinear"``, ``"reglu"``,
            ``"geglu"`` or ``"swiglu"``.
        dim: the dimension split into ``(a, b)``.
        beta: Swish's β (``"swiglu"`` only).

    Shape:
        ``(*, 2n, *) -> (*, n, *)``.

    Example:
        >>> GLU("swiglu")(torch.randn(4, 10)).shape
        torch.Size([4, 5])
    """

    def __init__(self, activation: str = "glu", dim: int = -1, beta: float = 1.0) -> None:
        super().__init__()
        self.activation = choose("GLU activation", activation, GLU_ACTIVATIONS)
        _check_beta(ACTIVATIONS[GLU_ACTIVATIONS[self.activation]], beta, self.activation)
        self.dim, self.beta = dim, float(beta)

    def forward(self, x: Tensor) -> Tensor:
        return split_glu(x, self.dim, self.activation, self.beta)

    def extra_repr(self) -> str:
        beta = f", beta={self.beta}" if self.beta != 1.0 else ""
        return f"{self.activation!r}, dim={self.dim}{beta}"
