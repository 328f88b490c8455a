"""Single-step cells ``gated.LSTMCell``, ``GRUCell``, ``MGUCell``: torch's cell API plus ``variant``.

Glossary: B batch, I input_size, H hidden_size, G gate rows.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from gated._base import GatedModule

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
    ) -> None:
        super().__init__()
        self._setup(input_size, hidden_size, bias, variant, t_max, chunk_size)
        self._add_params("", input_size, {"device": device, "dtype": dtype})
        self.reset_parameters()

    def forward(self, input: Tensor, hx=None):
        """One step. ``input``: ``(B, I)`` or ``(I,)``; ``hx``: ``(h, c)`` (LSTM) or ``h``, each ``(B, H)``."""
        self._check_input(input, (1, 2), "1 dim (I,) or 2 dims (B, I)")
        batched = input.dim() == 2
        x = input if batched else input.unsqueeze(0)
        shape = (x.shape[0], self.hidden_size)
        n = self.layout.core.num_states
        if hx is None:
            state = tuple(torch.zeros(shape, dtype=x.dtype, device=x.device) for _ in range(n))
        else:
            state = tuple(hx) if n == 2 else (hx,)
            if n == 2 and len(state) != 2:
                raise TypeError(f"gated.{type(self).__name__}: hx must be a tuple (h, c)")
            if not batched:
                state = tuple(s.unsqueeze(0) if isinstance(s, Tensor) and s.dim() == 1 else s for s in state)
            for k, s in enumerate(state):
                self._check_tensor(f"hx[{k}]" if n == 2 else "hx", s, shape)
        w_ih, w_hh, b_ih, b_hh, fb = self._params("")
        gi = F.linear(x, w_ih, b_ih)  # (B, G)
        gh = F.linear(state[0], w_hh, b_hh)  # (B, G)
        new, _ = self.layout.core.step(gi, gh, state, fb, self.layout)
        if not batched:
            new = tuple(s.squeeze(0) for s in new)
        return new if n == 2 else new[0]


class LSTMCell(_Cell):
    """One LSTM step with the paper's variants (default ``"UR"``); ``variant="-"`` is ``torch.nn.LSTMCell``.

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
