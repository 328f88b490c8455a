"""Cell options: LayerNorm, zoneout, recurrent (variational) dropout and weight dropout, in one place.

Each option composes with every core (LSTM, GRU, MGU) and variant, and is off by default (then
nothing changes: variant ``-`` still equals torch.nn). What each one does:

- ``layer_norm`` (Ba et al. 2016, the LayerNorm recurrent cell): the input product ``x W_ih^T`` and
  the recurrent product ``h W_hh^T`` are each normalised over their ``G`` gate rows with their own
  gain and bias (``layer_norm_ih_l{k}``, ``layer_norm_hh_l{k}``: :class:`torch.nn.LayerNorm` of
  ``G``, eps 1e-5), then the gate biases ``b_ih``, ``b_hh`` (and a refine variant's ``forget_bias``)
  are added as without it, so UGI, chrono and ``forget_bias_`` keep their meaning. The GRU's reset
  gate multiplies the normalised ``n`` rows of the recurrent product plus ``b_hn``, as haste's
  LayerNormGRU. The LSTM also normalises its cell for the output, ``h = o * tanh(LN_c(c))``
  (``layer_norm_c_l{k}``, of ``H``), while the state ``c`` itself stays unnormalised.
- ``zoneout`` (Krueger et al. 2017): in training each state unit keeps its previous value with
  probability ``p`` at each step, ``s_t = z s_{t-1} + (1 - z) s~_t`` with ``z ~ Bernoulli(p)``;
  in eval the expectation ``s_t = p s_{t-1} + (1 - p) s~_t``. A float applies to every state; an
  LSTM takes a pair ``(p_h, p_c)``.
- ``recurrent_dropout`` (Gal & Ghahramani 2016, variational): the ``h_{t-1}`` fed to the recurrent
  product is multiplied by one mask per sequence, fixed across time, scaled by ``1 / (1 - p)``;
  the state itself is not dropped. Identity in eval.
- ``weight_dropout`` (Wan et al. 2013's DropConnect on ``W_hh``, as Merity et al. 2018's AWD-LSTM):
  one mask over the recurrent weight per forward call, scaled by ``1 / (1 - p)``. Identity in eval.

Masks are drawn once per call, per layer and direction, from torch's default generator on the
input's device (so a seed reproduces them, whatever the backend), by :meth:`CellOptions.extras`.
Which backends run what: weight dropout changes only the weight a backend is given, so every
backend runs it; the fused CPU kernels and the Triton kernels also run LayerNorm, zoneout and
recurrent dropout, with ``proj_size`` too.

Glossary: T time, B batch, H hidden_size, P state width (``proj_size`` or ``H``), G gate rows.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["CellOptions", "Extras"]

EPS = 1e-5  # torch.nn.LayerNorm's default


class Extras(NamedTuple):
    """What one call of one layer and direction needs beyond the weights (None: not in use).

    - ``ln``: ``(ih, hh, c)``, each ``(weight, bias)`` of a LayerNorm or None (``c``: LSTM only;
      ``ih`` None: the input is not normalised);
    - ``rmask``: ``(B, P)``, the scaled variational mask on the ``h`` fed to ``W_hh``;
    - ``zoneout``: per state, ``(T, B, ·)`` keep masks (1: keep the previous value) in training,
      or the float ``p`` (the expectation) in eval; None for a state without zoneout.
    """

    ln: tuple | None = None
    rmask: Tensor | None = None
    zoneout: tuple | None = None

    # -- the reference loop's hooks (gated/backends/reference.py) ------------------------------
    def project(self, v: Tensor, which: int, bias: Tensor | None) -> Tensor:
        """``x W_ih^T`` (``which`` 0) or ``h W_hh^T`` (1), without its bias, normalised, plus the bias
        (a None norm: none; the fused backend's double backward passes the normalised input side)."""
        if self.ln[which] is not None:
            w, b = self.ln[which]
            v = F.layer_norm(v, (v.shape[-1],), w, b, EPS)
        return v if bias is None else v + bias

    def cell_norm(self):
        """LSTM: the normalisation of ``c`` in ``h = o tanh(LN_c(c))``, or None."""
        if self.ln is None or self.ln[2] is None:
            return None
        w, b = self.ln[2]
        return lambda c: F.layer_norm(c, (c.shape[-1],), w, b, EPS)

    def zone(self, t: int, new: tuple, old: tuple) -> tuple:
        """The states after zoneout at step ``t``."""
        out = []
        for k, (n, s) in enumerate(zip(new, old)):
            z = self.zoneout[k]
            if z is None:
                out.append(n)
            elif isinstance(z, Tensor):
                out.append(torch.lerp(n, s, z[t]))  # z s + (1 - z) n
            else:
                out.append(torch.lerp(n, s, z))
        return tuple(out)


def _prob(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} should be a float in [0, 1), got {type(value).__name__}")
    if not 0.0 <= float(value) < 1.0:
        raise ValueError(f"{name} should be a probability in [0, 1), got {value!r}")
    return float(value)


def _bernoulli(shape, p: float, like: Tensor) -> Tensor:
    """A 0/1 tensor in ``like``'s dtype and device, 1 with probability ``p``, from torch's generator
    there. Each 63-bit draw of ``randint`` gives two 31-bit uniforms ``u`` (its two 32-bit halves,
    read in place, less their top bits), and the mask is ``u < round(p 2^31)``: probability ``p`` to
    within ``2^-32``, finer than ``bernoulli_``'s float draw, at half its time on the CPU (the zoneout
    masks, ``(T, B, H)`` per call, cost 6 % of a LayerNorm LSTM's train step with ``bernoulli_``;
    100x64x256x256, AVX2). The halves' order is the machine's (low first on little-endian ones)."""
    n, threshold = math.prod(shape), round(p * 2**31)
    if threshold >= 2**31:  # p within 2^-32 of 1
        return torch.ones(shape, dtype=like.dtype, device=like.device)
    words = torch.randint(0, 2**63 - 1, ((n + 1) // 2,), dtype=torch.int64, device=like.device)
    u = words.view(torch.int32)[:n] & 0x7FFFFFFF  # no copy of the halves (20 % of the mask's time)
    return torch.lt(u, threshold).view(shape).to(like.dtype)


@dataclass(frozen=True)
class CellOptions:
    """The options of one module, validated by :meth:`make` (``active`` False when all are off)."""

    layer_norm: bool = False
    zoneout: tuple[float, ...] = ()  # per state, () when off
    recurrent_dropout: float = 0.0
    weight_dropout: float = 0.0
    # derived by make(), as plain constants (torch.compile treats float attributes as symbolic):
    active: bool = False  # any option on

    @classmethod
    def make(cls, core, layer_norm=False, zoneout=0.0, recurrent_dropout=0.0, weight_dropout=0.0) -> CellOptions:
        """Check the constructor's arguments (torch's exception types) for ``core`` (a
        :class:`gated.cores.Core`)."""
        if not isinstance(layer_norm, bool):
            raise TypeError(f"layer_norm should be of type bool, got: {type(layer_norm).__name__}")
        n = core.num_states
        if isinstance(zoneout, (tuple, list)):
            if len(zoneout) != n:
                what = "a float or a pair (h, c)" if n == 2 else "a float (its one state is h)"
                raise ValueError(f"zoneout for {core.name.upper()} should be {what}, got {tuple(zoneout)!r}")
            probs = tuple(_prob("zoneout", z) for z in zoneout)
        else:
            probs = (_prob("zoneout", zoneout),) * n
        if core.scan and (layer_norm or any(probs) or recurrent_dropout or weight_dropout):
            raise ValueError(f"layer_norm, zoneout, recurrent_dropout and weight_dropout are not available for the "
                             f"scan core {core.name!r} (it has no recurrent weight)")
        rd, wd = _prob("recurrent_dropout", recurrent_dropout), _prob("weight_dropout", weight_dropout)
        return cls(layer_norm, probs if any(probs) else (), rd, wd, bool(layer_norm or any(probs) or rd or wd))

    def add_params(self, module: nn.Module, suffix: str, factory_kwargs: dict) -> None:
        """Register the LayerNorms of one layer and direction (torch-style names)."""
        if not self.layer_norm:
            return
        G = module.layout.rows
        module.add_module("layer_norm_ih" + suffix, nn.LayerNorm(G, eps=EPS, **factory_kwargs))
        module.add_module("layer_norm_hh" + suffix, nn.LayerNorm(G, eps=EPS, **factory_kwargs))
        if module.layout.core.num_states == 2:
            module.add_module("layer_norm_c" + suffix, nn.LayerNorm(module.hidden_size, eps=EPS, **factory_kwargs))

    def reset_parameters(self, module: nn.Module) -> None:
        """Gains 1, biases 0 (torch's LayerNorm init)."""
        for m in module.modules():
            if isinstance(m, nn.LayerNorm):
                m.reset_parameters()

    def recurrent_weight(self, w_hh: Tensor, training: bool) -> Tensor:
        """``W_hh`` of one call: with weight dropout in training, masked and scaled."""
        p = self.weight_dropout
        if not p or not training:
            return w_hh
        return w_hh * _bernoulli(w_hh.shape, 1.0 - p, w_hh) / (1.0 - p)

    def extras(self, module: nn.Module, suffix: str, x: Tensor, state_sizes: tuple[int, ...],
               training: bool, rmask: Tensor | None = None, cast=None) -> Extras | None:
        """The norms and masks of one call of layer/direction ``suffix`` on time-major ``x``
        (``(T, B, ·)``); None when nothing is in use. ``rmask``: a recurrent-dropout mask to use
        instead of drawing one (a cell's, kept for its sequence); ``cast``: applied to the norms'
        parameters (gated/precision.py runs low precision in float32)."""
        T, B = x.shape[0], x.shape[1]
        ln = zone = None
        if self.layer_norm:
            get = lambda name: getattr(module, name + suffix, None)  # noqa: E731
            cast = cast or (lambda t: t)
            pair = lambda m: None if m is None else (cast(m.weight), cast(m.bias))  # noqa: E731
            ln = (pair(get("layer_norm_ih")), pair(get("layer_norm_hh")), pair(get("layer_norm_c")))
        if self.recurrent_dropout and training and rmask is None:
            p = self.recurrent_dropout
            rmask = _bernoulli((B, state_sizes[0]), 1.0 - p, x) / (1.0 - p)
        elif not training:
            rmask = None
        if self.zoneout:
            zone = tuple(None if not p else (_bernoulli((T, B, size), p, x) if training else p)
                         for p, size in zip(self.zoneout, state_sizes))
        if ln is None and rmask is None and zone is None:
            return None
        return Extras(ln, rmask, zone)

    def repr_args(self) -> list[str]:
        out = ["layer_norm=True"] if self.layer_norm else []
        if self.zoneout:
            z = self.zoneout
            out.append(f"zoneout={z[0]}" if len(set(z)) == 1 else f"zoneout={z}")
        out += [f"recurrent_dropout={self.recurrent_dropout}"] if self.recurrent_dropout else []
        out += [f"weight_dropout={self.weight_dropout}"] if self.weight_dropout else []
        return out

