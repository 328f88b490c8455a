"""Gate initialisers that work in place on gated modules *and* on plain torch.nn RNNs.

On ``torch.nn.LSTM/GRU/LSTMCell/GRUCell`` the two biases ``b_ih + b_hh`` add up, so each
initialiser writes the target into ``b_ih`` and zeroes ``b_hh`` on the gate's rows, for every
layer and direction, in torch's gate order. The module keeps its torch type, so it still runs on
oneDNN / cuDNN: ``uniform_gate_(nn.LSTM(...))`` is a U-LSTM at full speed.

On gated modules the initialiser follows the module's variant (see :mod:`gated.variants`):

- refine variants with a sigmoid primary own a shared trainable ``forget_bias`` ``b_f``: it is set
  to the target, and the ``f`` and refine rows of ``b_ih``/``b_hh`` are zeroed, so that at
  init ``f = sigma(P_f + b_f)`` and ``r = sigma(P_r - b_f)`` exactly (paper §4.2);
- master variants set the master forget and master input rows (their primary gates);
- the other variants set the keep gate's rows like the torch modules;
- on ``gated.MinLSTM``, whose keep gate is normalised, ``k = f / (f + i)``, the input gate's rows
  get ``-b`` wherever the keep gate gets ``b``, so that ``i = 1 - f`` and ``k = f`` at init;
- on ``gated.RGLRU``, whose decay ``a_t = a^(c r_t)`` has no bias, the target ``b`` sets the decay at
  ``r_t = 1`` through ``Lambda`` (``a = sigma(Lambda)``): ``a^c = sigma(b)``, the quantity Griffin's
  own init (:func:`rglru_decay_`) spreads; refine variants' ``rho`` rows of ``bias_ih`` are zeroed;
- on ``gated.HGRN`` the keep gate's rows are the sigmoid part ``sigma(P_f)`` of ``lb + (1 - lb) sigma(P_f)``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from gated.cores import RGLRU_C, Layout, make_layout
from gated.gates import cumax, logit

__all__ = ["uniform_gate_", "chrono_", "forget_bias_", "rglru_decay_", "VARIANT_INITS"]


def _targets(module: nn.Module) -> tuple[Layout, list[str]]:
    """The module's gate layout and the name suffixes of its bias sets (``_l0``, ``_l0_reverse``...)."""
    if hasattr(module, "layout") and hasattr(module, "_suffixes"):  # a gated module
        return module.layout, list(module._suffixes)
    torch_cores = {nn.LSTM: "lstm", nn.LSTMCell: "lstm", nn.GRU: "gru", nn.GRUCell: "gru"}
    core = torch_cores.get(type(module))
    if core is None:
        names = "gated.LSTM/GRU/MGU/MinGRU/MinLSTM/RGLRU/HGRN, the cells, torch.nn.LSTM, GRU, LSTMCell, GRUCell"
        raise TypeError(f"cannot initialise gates of {type(module).__name__}; expected one of {names}")
    layout = make_layout(core, "-", module.hidden_size)
    if isinstance(module, nn.RNNBase):
        dirs = ["", "_reverse"] if module.bidirectional else [""]
        return layout, [f"_l{k}{d}" for k in range(module.num_layers) for d in dirs]
    return layout, [""]


def _apply(module: nn.Module, sample, what: str, set_input_gate: bool) -> nn.Module:
    """Write ``sample(n)`` (a ``(n,)`` float64 tensor) as the keep-gate bias of every bias set."""
    layout, suffixes = _targets(module)
    v = layout.variant
    if v.primary is cumax:
        raise ValueError(
            f"{what} sets a sigmoid gate's bias, but variant {v.name!r} uses cumax for its primary gate"
        )
    with torch.no_grad():
        for sfx in suffixes:
            b_ih = getattr(module, "bias_ih" + sfx, None)
            b_hh = getattr(module, "bias_hh" + sfx, None)
            fb = getattr(module, "forget_bias" + sfx, None)
            lam = getattr(module, "lambda" + sfx, None)
            if lam is not None:  # RG-LRU: a^c = sigma(b); its refine gate starts at sigma(W_rho x)
                lam.copy_(_rglru_lambda(sample(lam.numel())).to(lam))
                if b_ih is not None and layout.refine is not None:
                    b_ih[layout.refine] = 0.0
                continue
            if b_ih is None and fb is None:
                raise ValueError(f"{what} needs a bias to set; build the module with bias=True")

            def put(rows: slice, value):
                b_ih[rows] = value
                if b_hh is not None:  # the scan cores (MinGRU, MinLSTM) have one bias
                    b_hh[rows] = 0.0

            if layout.master is not None:
                # master gates are the primary gates; the master input gate is 1 - sigma(P),
                # so the same bias starts it at 1 - master_f, as cumax's init does
                b = sample(layout.master_size).to(b_ih)
                put(layout.master[0], b)
                put(layout.master[1], b)
            elif fb is not None:
                fb.copy_(sample(fb.numel()).to(fb))
                if b_ih is not None:  # the refine gate is tied to -b_f by the cell itself
                    put(layout.keep, 0.0)
                    put(layout.refine, 0.0)
                    if layout.core.normalised:  # minLSTM: i = 1 - f at init, so k = f / (f + i) starts at f
                        put(layout.write, -fb)
            else:
                b = sample(layout.hidden_size).to(b_ih)
                put(layout.keep, b)
                if (set_input_gate or layout.core.normalised) and layout.write is not None:
                    put(layout.write, -b)
    return module


def _rglru_lambda(b: Tensor) -> Tensor:
    """``Lambda`` with ``sigma(Lambda)^c = sigma(b)`` (float64): ``log a = log sigma(b) / c``,
    ``Lambda = log a - log(1 - a)``, with ``1 - a = -expm1(log a)``."""
    log_a = -torch.nn.functional.softplus(-b) / RGLRU_C
    return log_a - torch.log(-torch.expm1(log_a))


def rglru_decay_(module: nn.Module, low: float = 0.9, high: float = 0.999,
                 generator: torch.Generator | None = None) -> nn.Module:
    r"""RG-LRU's own init (De et al. 2024, §2.4), in place: ``Lambda`` such that

    .. math:: a^c \sim \mathcal U[\text{low}, \text{high}], \quad a = \sigma(\Lambda), \ c = 8

    for every layer and direction, so that the decay at ``r_t = 1`` starts between 0.9 and 0.999.
    The biases and the refine gate are left as they are. (recurrentgemma's code draws ``a`` itself
    on the ring instead, ``a^2 ~ U[0.81, 0.998]``; the paper's text is followed here.)

    Args:
        module: a ``gated.RGLRU``.
        low, high: the range of ``a^c``, ``0 < low < high < 1``.
        generator: optional ``torch.Generator`` for the draw.

    Returns:
        ``module``.
    """
    if not (hasattr(module, "layout") and module.layout.core.name == "rglru"):
        raise TypeError(f"rglru_decay_ initialises gated.RGLRU, got {type(module).__name__}")
    if not (isinstance(low, (int, float)) and isinstance(high, (int, float)) and 0 < low < high < 1):
        raise ValueError(f"rglru_decay_ needs 0 < low < high < 1, got low={low!r}, high={high!r}")
    with torch.no_grad():
        for sfx in module._suffixes:
            lam = getattr(module, "lambda" + sfx)
            u = low + (high - low) * _rand(lam.numel(), generator)
            lam.copy_(_rglru_lambda(logit(u)).to(lam))
    return module


def _rand(n: int, generator: torch.Generator | None) -> Tensor:
    return torch.rand(n, dtype=torch.float64, generator=generator)


def uniform_gate_(module: nn.Module, generator: torch.Generator | None = None) -> nn.Module:
    r"""Uniform gate initialisation (UGI, paper Eq. 12), in place.

    .. math:: b_f = \sigma^{-1}(u), \quad u \sim \mathcal U[1/d, 1 - 1/d]

    with ``d`` the number of units of the gate (``hidden_size``; master gates: their ``ceil(d/C)``
    units). With the weights' contribution near 0, the initial keep activations are spread uniformly
    and the timescales ``1/(1-f)`` follow ``P(T > t) ~ 1/t`` up to ``d``. The input gate of an
    untied LSTM is left as it is.

    Args:
        module: a gated module or ``torch.nn.LSTM/GRU/LSTMCell/GRUCell``.
        generator: optional ``torch.Generator`` for the draw.

    Returns:
        ``module``.

    Example:
        >>> lstm = gated.init.uniform_gate_(torch.nn.LSTM(32, 128))  # a U-LSTM on oneDNN/cuDNN
    """

    def sample(n):
        d = max(n, 3)  # U[1/d, 1-1/d] is empty or a point for d <= 2
        return logit(1.0 / d + (1.0 - 2.0 / d) * _rand(n, generator))

    return _apply(module, sample, "uniform_gate_", set_input_gate=False)


def chrono_(module: nn.Module, t_max: float, generator: torch.Generator | None = None) -> nn.Module:
    r"""Chrono initialisation (Tallec & Ollivier 2018), in place.

    .. math:: b_f = \log X, \quad X \sim \mathcal U[1, t_{max} - 1], \qquad b_i = -b_f

    so that the initial timescales ``1/(1-f) = 1 + X`` are uniform on ``[2, t_max]``. The input-gate
    rule applies to untied LSTMs; GRU/MGU tie their write gate to ``1 - z``, and refine variants tie
    the refine gate's bias to ``-b_f`` already.

    Args:
        module: a gated module or ``torch.nn.LSTM/GRU/LSTMCell/GRUCell``.
        t_max: the longest timescale, typically the longest dependency length; must be > 2.
    """
    if not (isinstance(t_max, (int, float)) and math.isfinite(t_max) and t_max > 2):
        raise ValueError(f"chrono_ needs a finite t_max > 2, got {t_max!r}")

    def sample(n):
        return torch.log(1.0 + (t_max - 2.0) * _rand(n, generator))

    return _apply(module, sample, "chrono_", set_input_gate=True)


def forget_bias_(module: nn.Module, value: float = 1.0) -> nn.Module:
    """Set every keep-gate bias to ``value`` (Gers et al. 2000; ``1.0`` as in Jozefowicz et al. 2015)."""
    return _apply(module, lambda n: torch.full((n,), float(value), dtype=torch.float64),
                  "forget_bias_", set_input_gate=False)


VARIANT_INITS = {
    "uniform": uniform_gate_,
    "chrono": lambda module: chrono_(module, module.t_max),
}
