"""Gate maths: small pointwise functions, one per gate, with the paper's equation.

Every recurrent variant in :mod:`gated.variants` is assembled from these functions, so this module
is the single place where the paper's gate equations live. References:

- Gu, Gulcehre, Paine, Hoffman, Pascanu, "Improving the Gating Mechanism of Recurrent Neural
  Networks", ICML 2020 (arXiv:1910.09890), "the paper" below.
- Shen, Tan, Sordoni, Courville, "Ordered Neurons", ICLR 2019 (cumax and master gates).
- Tallec & Ollivier, "Can recurrent neural networks warp time?", ICLR 2018 (chrono init).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "sigmoid_gate",
    "refine_gate",
    "cumax",
    "master_gates",
    "tied_input_gate",
    "timescale",
    "logit",
]


def sigmoid_gate(pre: Tensor) -> Tensor:
    r"""Standard sigmoid gate :math:`f = \sigma(P_f(x_t, h_{t-1}))` (paper Eq. 1)."""
    return torch.sigmoid(pre)


def refine_gate(f: Tensor, r: Tensor) -> Tensor:
    r"""Effective gate of the refine mechanism (paper §3.2, Eq. 10).

    .. math:: g = r \cdot (1 - (1 - f)^2) + (1 - r) \cdot f^2 = f^2 + 2 r f (1 - f)

    ``r`` interpolates between the lower band :math:`f^2` (``r = 0``) and the upper band
    :math:`1 - (1 - f)^2` (``r = 1``); ``r = 1/2`` gives back ``f``. The function is symmetric:
    ``refine_gate(1 - f, 1 - r) == 1 - refine_gate(f, r)``.
    """
    return f * f + 2.0 * r * f * (1.0 - f)


def cumax(pre: Tensor, dim: int = -1) -> Tensor:
    r"""Cumulative softmax of Ordered Neurons: :math:`\mathrm{cumax}(x) = \mathrm{cumsum}(\mathrm{softmax}(x))`.

    Monotone non-decreasing along ``dim`` and ending at 1 (Shen et al. 2019, Eq. 6). The paper uses it
    as the primary-gate activation of its ``O`` variants (paper §5).
    """
    return torch.cumsum(torch.softmax(pre, dim=dim), dim=dim)


def master_gates(
    f: Tensor, i: Tensor, master_f: Tensor, master_i: Tensor
) -> tuple[Tensor, Tensor]:
    r"""ON-LSTM master-gate combination (Shen et al. 2019, Eqs. 9-14; paper §5, ``*M`` variants).

    .. math::
        \omega = \tilde f \odot \tilde i, \quad
        \hat f = f \odot \omega + (\tilde f - \omega), \quad
        \hat i = i \odot \omega + (\tilde i - \omega)

    Args:
        f, i: fine-grained forget and input (write) gates, ``(..., H)``.
        master_f, master_i: master forget and input gates already upsampled to ``(..., H)``.

    Returns:
        ``(f_hat, i_hat)``, the effective keep and write gates.
    """
    omega = master_f * master_i
    return f * omega + (master_f - omega), i * omega + (master_i - omega)


def tied_input_gate(g: Tensor) -> Tensor:
    r"""Input gate tied to the forget gate, :math:`i = 1 - g` (paper Eq. 11, "CIFG" coupling).

    The refine variants use it so that the input gate's parameters can hold the refine gate.
    """
    return 1.0 - g


def timescale(g: Tensor) -> Tensor:
    r"""Characteristic memory length of a keep gate, :math:`T = 1 / (1 - g)` (paper §2).

    A unit with a constant keep value ``g`` scales an input seen ``k`` steps ago by ``g**k``.
    Returns ``inf`` where ``g == 1``.
    """
    return 1.0 / (1.0 - g)


def logit(u: Tensor | float) -> Tensor | float:
    r"""Inverse sigmoid :math:`\sigma^{-1}(u) = \log(u / (1 - u))` (UGI, paper Eq. 12)."""
    if isinstance(u, Tensor):
        return torch.log(u) - torch.log1p(-u)
    return math.log(u) - math.log1p(-u)
