"""One step of the single-step modules (``gated.LSTMCell``, ``GRUCell``, ``MGUCell``) with its gate
maths fused: the two projections stay ATen's (as in torch.nn's cells, so autograd differentiates
them and their weight gradients are single matmuls), and ``gated_fused::cell_forward`` /
``cell_backward`` (gated/csrc/cell_step.h) replace the pointwise part, about twenty small torch
ops each way in :mod:`gated.cores`, which were most of a small cell's time.

Taken for the plain and refine variants in float32/float64 on the CPU when the extension is
built, in eager mode (:func:`gated.backends.fused_cpu.cell_usable`), by the cells and by the fused
backend's one-step training calls; under torch.compile, export, tracing and torch.func the
cell keeps the plain torch ops of :mod:`gated.cores`, which every one of those understands. A
gradient that must itself be differentiable (double backward) is taken through those ops too.

Glossary: B batch, H hidden_size, G gate rows; ``gi = x W_ih^T + b_ih``, ``gh = h W_hh^T + b_hh``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from gated.backends._context import builds_graph
from gated.cores import Layout

_CORE_ID = {"lstm": 0, "gru": 1, "mgu": 2}


def kernel_ids(layout: Layout) -> tuple[int, bool]:
    """The C++ kernels' core id and whether they run the refine gate (every fused CPU op's)."""
    return _CORE_ID[layout.core.name], layout.variant.auxiliary == "refine"


def step(gi: Tensor, gh: Tensor, state: tuple, fb: Tensor | None, layout: Layout) -> tuple:
    """The new state ``(h', c')`` (LSTM) or ``(h',)`` from the projections ``gi``, ``gh`` ``(B, G)``,
    the state (each ``(B, H)``) and the shared forget bias; the same values as
    ``layout.core.step(gi, gh, state, fb, layout)[0]``."""
    if builds_graph(gi, gh, fb, *state):
        out = _Step.apply(gi, gh, fb, layout, *state)
        return out if len(state) == 2 else (out,)
    core, refine = kernel_ids(layout)  # inference: no graph, nothing kept
    h, c = torch.ops.gated_fused.cell_forward.default(gi, gh, state[0], state[1] if len(state) == 2 else None, fb,
                                                      core, refine)[:2]
    return (h, c) if len(state) == 2 else (h,)


class _Step(torch.autograd.Function):
    @staticmethod
    def forward(ctx, gi, gh, fb, layout, h, c=None):
        core, refine = kernel_ids(layout)
        h_new, c_new, A, q = torch.ops.gated_fused.cell_forward.default(gi, gh, h, c, fb, core, refine)
        ctx.layout = layout
        ctx.save_for_backward(gi, gh, fb, h, c, A, q, c_new if c is not None else None)
        return (h_new, c_new) if c is not None else h_new

    @staticmethod
    def backward(ctx, dh, dc=None):
        gi, gh, fb, h, c, A, q, c_new = ctx.saved_tensors
        layout = ctx.layout
        if torch.is_grad_enabled():  # create_graph: through the differentiable torch ops of gated.cores
            return _differentiable(ctx, dh, dc)
        core, refine = kernel_ids(layout)
        dgi, dgh, dh_direct, dc_prev = torch.ops.gated_fused.cell_backward.default(
            dh, dc, A, q, h, c, c_new, core, refine)
        dfb = None
        if fb is not None and ctx.needs_input_grad[2]:  # b_f enters the keep gate with + and the refine gate with -
            total = dgi.sum(0)
            dfb = total[layout.keep] - total[layout.refine]
        if c is None:  # GRU/MGU: h reaches h' directly as well as through W_hh (whose part autograd adds)
            return dgi, dgh, dfb, None, dh_direct
        return dgi, dgh, dfb, None, None, dc_prev


def _differentiable(ctx, dh, dc):
    """Gradients that can be differentiated again (double backward): the step recomputed in the torch
    ops of :mod:`gated.cores` and its vector-Jacobian product taken with torch.func.vjp."""
    gi, gh, fb, h, c, _, _, _ = ctx.saved_tensors
    inputs = {0: gi, 1: gh, 2: fb, 4: h, 5: c}
    wanted = [k for k, t in inputs.items() if t is not None and ctx.needs_input_grad[k]]

    def cell(*diff):
        args = dict(inputs)
        args.update(zip(wanted, diff))
        state = (args[4],) if c is None else (args[4], args[5])
        return ctx.layout.core.step(args[0], args[1], state, args[2], ctx.layout)[0]

    _, vjp = torch.func.vjp(cell, *(inputs[k] for k in wanted))
    grads = vjp((dh,) if c is None else (dh, torch.zeros_like(c) if dc is None else dc))
    out = [None] * (5 if c is None else 6)
    for k, g in zip(wanted, grads):
        out[k] = g
    return tuple(out)
