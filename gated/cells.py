"""Single-step cells ``gated.LSTMCell``, ``GRUCell``, ``MGUCell``: torch's cell API plus ``variant``.

Glossary: B batch, I input_size, H hidden_size, G gate rows.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from gated import options, precision
from gated._base import GatedModule
from gated.backends import fused_cell, fused_cpu, reference

__all__ = ["LSTMCell", "GRUCell", "MGUCell"]


class _Cell(GatedModule):
    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        bias: bool = True,
        device=None,
        dtype=None,
        *,
        variant: str = "UR",
        t_max: float | None = None,
        chunk_size: int = 4,
        layer_norm: bool = False,
        zoneout: float | tuple[float, float] = 0.0,
        recurrent_dropout: float = 0.0,
        weight_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self._setup(input_size, hidden_size, bias, variant, t_max, chunk_size, cell=True)
        self.opts = options.CellOptions.make(self.layout.core, layer_norm, zoneout, recurrent_dropout, weight_dropout)
        self._add_params("", input_size, {"device": device, "dtype": dtype})
        self.opts.add_params(self, "", {"device": device, "dtype": dtype})
        self._masks: dict = {}  # the sequence's recurrent-dropout and weight-dropout masks (reset_dropout_mask)
        self.reset_parameters()

    def reset_dropout_mask(self) -> None:
        """Start a new sequence: the next training call draws new ``recurrent_dropout`` and
        ``weight_dropout`` masks, which then stay fixed for every step until the next reset (a cell
        sees one step per call; a mask per call would not be variational). The masks are also
        redrawn when the batch size changes. Zoneout draws a new mask at every step."""
        self._masks.clear()

    def _extras(self, x: Tensor, w_hh: Tensor, cast):
        """``(W_hh, Extras)`` of one training or eval step (:mod:`gated.options`), masks cached;
        ``w_hh`` is the (cast) recurrent weight, ``cast`` is applied to the norms' parameters."""
        B = x.shape[0]
        if self.training and self.opts.weight_dropout:
            if "w" not in self._masks:
                self._masks["w"] = self.opts.recurrent_weight(torch.ones_like(w_hh.detach()), True)
            w_hh = w_hh * self._masks["w"]
        cached = self._masks.get("r")
        if cached is not None and cached.shape[0] != B:  # a new batch size: a new sequence
            cached = None
        extras = self.opts.extras(self, "", x.unsqueeze(0), (self.hidden_size,) * self.layout.core.num_states,
                                  self.training, rmask=cached, cast=cast)
        if extras is not None and extras.rmask is not None:
            self._masks["r"] = extras.rmask  # drawn on the sequence's first step, then reused
        return w_hh, extras

    def forward(self, input: Tensor, hx=None):
        """One step. ``input``: ``(B, I)`` or ``(I,)``; ``hx``: ``(h, c)`` (LSTM) or ``h``, each ``(B, H)``.

        Bad input raises :class:`gated.InputError` with torch.nn's wording."""
        name = type(self).__name__
        if not isinstance(input, Tensor):
            raise TypeError(f"gated.{name}: input must be a Tensor, got {type(input).__name__}")
        if input.dim() not in (1, 2):
            self._fail(f"{name}: Expected input to be 1D or 2D, got {input.dim()}D instead")
        if input.shape[-1] != self.input_size:  # sizes first, then dtype and device, in torch's order
            self._fail(f"input has inconsistent input_size: got {input.shape[-1]} expected {self.input_size}")
        batched = input.dim() == 2
        x = input if batched else input.unsqueeze(0)
        B, H, n = x.shape[0], self.hidden_size, self.layout.core.num_states
        if hx is None:
            state = tuple(torch.zeros(B, H, dtype=x.dtype, device=x.device) for _ in range(n))
        else:
            if n == 2 and (not isinstance(hx, (tuple, list)) or len(hx) != 2):
                self._fail(f"hx must be a tuple (h, c), got {type(hx).__name__}")
            state = tuple(hx) if n == 2 else (hx,)
            labels = ["hx[0]", "hx[1]"] if n == 2 else ["hidden"]
            for k, (label, s) in enumerate(zip(labels, state)):
                if not isinstance(s, Tensor):
                    self._fail(f"{label} must be a Tensor, got {type(s).__name__}")
                if s.dim() not in (1, 2):
                    self._fail(f"{name}: Expected {label} to be 1D or 2D, got {s.dim()}D instead")
                if s.dim() != input.dim():
                    self._fail(f"{label} is {s.dim()}-D but the input is {input.dim()}-D (batched input needs batched "
                               "states, unbatched input unbatched states)")
                if s.shape[-1] != H:
                    self._fail(f"hidden{k} has inconsistent hidden_size: got {s.shape[-1]}, expected {H}")
                if batched and s.shape[0] != B:
                    self._fail(f"Input batch size {B} doesn't match hidden{k} batch size {s.shape[0]}")
            for label, s in zip(labels, state):
                self._check_like_weights(label, s)
            if not batched:
                state = tuple(s.unsqueeze(0) for s in state)
        self._check_like_weights("input", input)
        prec = precision.plan(x, self.weight_ih.dtype, cell=True)  # low precision: computed in float32
        if prec is not None:
            with prec.region():
                new = self._step(prec.cast(x), tuple(prec.cast(s) for s in state), prec.cast)
            new = tuple(prec.back(s) for s in new)
        else:
            new = self._step(x, state, lambda t: t)
        if not batched:
            new = tuple(s.squeeze(0) for s in new)
        return new if n == 2 else new[0]


    def _step(self, x: Tensor, state: tuple, cast) -> tuple:
        """The new state from ``x`` ``(B, I)`` and ``state`` (each ``(B, H)``); ``cast`` is applied to
        every parameter."""
        w_ih, w_hh, b_ih, b_hh, fb = (cast(p) for p in self._params(""))
        if self.opts.active:  # the sequence modules' reference step, one step long (gated/options.py)
            w_hh, extras = self._extras(x, w_hh, cast)
            _, new = reference.run_layer(x.unsqueeze(0), state, w_ih, w_hh, b_ih, b_hh, fb, self.layout,
                                         extras=extras)
            return new
        gi = F.linear(x, w_ih, b_ih)  # (B, G)
        gh = F.linear(state[0], w_hh, b_hh)  # (B, G)
        if fused_cpu.cell_usable(self.layout, gi):  # the gate maths in one C++ pass each way
            return fused_cell.step(gi, gh, state, fb, self.layout)
        return self.layout.core.step(gi, gh, state, fb, self.layout)[0]


class LSTMCell(_Cell):
    """One LSTM step with the paper's variants (default ``"UR"``); ``variant="-"`` is ``torch.nn.LSTMCell``.

    The cell options (``layer_norm``, ``zoneout``, ``recurrent_dropout``, ``weight_dropout``) are the
    sequence modules' (:mod:`gated.options`); with dropout, call :meth:`reset_dropout_mask` at the
    start of each sequence.

    Returns ``(h', c')``. Parameters ``weight_ih (G, I)``, ``weight_hh (G, H)``, ``bias_ih``,
    ``bias_hh`` ``(G,)``, and ``forget_bias (H,)`` in ``R``/``UR``; see :class:`gated.LSTM`.
    """

    core = "lstm"


class GRUCell(_Cell):
    """One GRU step with the paper's variants (default ``"UR"``); ``variant="-"`` is ``torch.nn.GRUCell``."""

    core = "gru"


class MGUCell(_Cell):
    """One minimal-gated-unit step (see :class:`gated.MGU`)."""

    core = "mgu"
