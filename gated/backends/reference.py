"""Reference backend: a plain Python loop over time steps. The oracle for every fast path.

Glossary: T time, B batch, I input features, H hidden_size, G gate rows (``layout.rows``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from gated.cores import Layout


def run_layer(
    x: Tensor,
    state: tuple[Tensor, ...],
    w_ih: Tensor,
    w_hh: Tensor | None,
    b_ih: Tensor | None,
    b_hh: Tensor | None,
    forget_bias: Tensor | None,
    layout: Layout,
    mask: Tensor | None = None,
    record: list | None = None,
    w_hr: Tensor | None = None,
    extras=None,
) -> tuple[Tensor, tuple[Tensor, ...]]:
    """Run one layer in one direction over a time-major sequence.

    Args:
        x: ``(T, B, I)`` input (already reversed for a backward direction).
        state: initial states, each ``(B, H)``; ``state[0]`` is ``h``.
        w_hh: the recurrent weight, or None for the scan cores (minGRU, minLSTM: gates from ``x_t``
            only; their step gets ``gh=None``), for which this loop is also the oracle of the scan.
        mask: optional ``(T, B, 1)`` bool, False past each sequence's end: the state is held and
            the output is zero there (PackedSequence semantics).
        record: if a list, each step's gates ``(f, r, master_f, keep)`` are appended to it.
        w_hr: LSTM with projections: ``(P, H)``, ``h' = (o * tanh(c')) W_hr^T`` (``state[0]`` and
            ``out`` then have ``P`` features).
        extras: a :class:`gated.options.Extras` (LayerNorm, zoneout, recurrent dropout) or None.

    Returns:
        ``(out, state)``: ``out`` is ``(T, B, H)``, ``state`` the final states.
    """
    step = layout.core.step
    # bfloat16 matmul weights (gated/precision.py): the oracle computes in x's dtype
    w_ih, w_hh = (None if w is None else w.to(x.dtype) for w in (w_ih, w_hh))
    ln = extras is not None and extras.ln is not None
    gi_all = F.linear(x, w_ih, None if ln else b_ih)  # (T, B, G): the input projection, hoisted out of the loop
    if ln:
        gi_all = extras.project(gi_all, 0, b_ih)
    norm_c = None if extras is None else extras.cell_norm()
    kw = {} if norm_c is None else {"cell_norm": norm_c}
    rmask = None if extras is None else extras.rmask
    outs = []
    # unbind, not gi_all[t]: each indexed slice's backward would write a full (T, B, G) zero tensor
    for t, gi in enumerate(gi_all.unbind(0)):
        gh = None  # the scan cores have no recurrent weight
        if w_hh is not None:
            h = state[0] if rmask is None else state[0] * rmask
            gh = F.linear(h, w_hh, None if ln else b_hh)  # (B, G)
            if ln:
                gh = extras.project(gh, 1, b_hh)
        new, gates = step(gi, gh, state, forget_bias, layout, **kw)
        if w_hr is not None:
            new = (F.linear(new[0], w_hr), *new[1:])
        if extras is not None and extras.zoneout is not None:
            new = extras.zone(t, new, state)
        if mask is not None:
            m = mask[t]
            new = tuple(torch.where(m, n, s) for n, s in zip(new, state))
            outs.append(new[0] * m)
        else:
            outs.append(new[0])
        if record is not None:
            record.append(gates)
        state = new
    return torch.stack(outs), state
