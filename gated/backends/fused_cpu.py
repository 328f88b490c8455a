"""Fused CPU backend: the time loop and the pointwise gate maths in C++ (gated/csrc/recurrence.cpp).

Supports every core in its plain (``-``, ``C``, ``U``) and sigmoid-refine (``R``, ``UR``) variants,
float32 and float64 on the CPU, with LayerNorm, zoneout and recurrent dropout (gated/options.py),
also with ``proj_size``: the kernels take the recurrent-dropout mask ``(B, P)`` and per state a
zoneout keep mask (``(T, B, P)`` for ``h``, ``(T, B, H)`` for ``c``; training) or the probability
``p`` as a float (eval: the expectation, no ``(T, B, ·)`` tensor of a constant). With
LayerNorm the input side ``LN_ih(x W_ih^T) + b_ih + b_hh`` (GRU/MGU without ``b_hn``) of all steps
is, in training, torch ops here (:func:`_input_side`, differentiated by autograd) and replaces ``x``
and ``W_ih`` in the kernels; in inference the kernels normalise ``x W_ih^T`` themselves, a chunk of
steps at a time as they compute it (the input norm's bias carries ``b_ih + b_hh``; no torch-ops
pass over ``(T, B, G)`` and no copy of it). The kernels normalise each step's
``h W_hh^T`` and the LSTM's ``c`` per batch row (in the tiled team too: whole rows per thread after
each step's product) and save the statistics; their backward returns the raw recurrent product's
gradients, of which ``W_hh``'s is one matmul here, and the norms' gains' and biases' gradients
summed over steps per batch row (:func:`_pre_backward`). With bfloat16 matmul weights
(gated/precision.py) the input side is the same function's bfloat16 product and the kernels run
each step's recurrent product on bfloat16 operands (gated/csrc/recurrent_gemm.h); everything else
stays float32. Same signature and results as :func:`gated.backends.reference.run_layer`
(tests/test_fused.py). Backward is
hand-written: the C++ pass returns the gradients of every step's pre-activations ``(T, B, G)``;
the weight gradients are then single large matmuls here. In float32 on AVX-512 and AVX2 CPUs
every matmul but the input gradient runs on the register-tiled kernel of gated/csrc/tiled_gemm.h
(a forward of few rows, such as a one-step streaming call, on the weights as they lie,
gated/csrc/direct_gemm.h, instead of a packed copy); buffers above 32 MiB are reused across calls
(gated/csrc/pool.h, :func:`empty_cache`). A training call of one step (an agent stepping a layer)
takes the cells' path instead (:mod:`gated.backends.fused_cell`: ATen's two projections and the
fused gate maths), which has none of the sequence kernels' per-call costs.

Glossary: T time, B batch, I input features, H hidden_size, P the width of h (``proj_size`` or
``H``), G gate rows.
"""

from __future__ import annotations

import functools
import logging

import torch
import torch.nn.functional as F
from torch import Tensor

from gated.backends import _build, fused_cell, reference
from gated.backends._context import builds_graph, recording
from gated.cores import Layout
from gated.gates import sigmoid_gate
from gated.options import EPS, Extras

_said = {"proj": False}  # one-time notes


def available() -> bool:
    """Whether the extension is built and loaded (it is built on the first call)."""
    return _build.load() is not None


# torch.compile calls this at trace time and keeps the answer as a constant (what
# torch.compiler.assume_constant_result does, without importing dynamo with gated)
available._dynamo_marked_constant = True


def transformed() -> bool:
    """Whether a torch.func transform or torch.compile's tracing is running: then only ops with
    batching rules or fake implementations may be called (not torch's oneDNN linear ops)."""
    return torch.compiler.is_compiling() or torch._C._functorch.peek_interpreter_stack() is not None


def variant_reason(layout: Layout) -> str | None:
    """None if the kernels have ``layout``'s variant, else the reason (asks nothing of the build)."""
    v = layout.variant
    if v.primary is not sigmoid_gate or v.auxiliary not in (None, "refine"):
        return f"variant {v.name!r} (only -, C, U, R, UR have fused kernels)"
    return None


def why_not(layout: Layout, x: Tensor) -> str | None:
    """None if this backend can run the call, else the reason (for the one-time log)."""
    reason = variant_reason(layout)
    if reason is not None:
        return reason
    if x.device.type != "cpu":
        return f"device {x.device.type!r}"
    if x.dtype not in (torch.float32, torch.float64):
        return f"dtype {x.dtype}"
    if not available():
        return f"the extension could not be built ({_build._state.get('error')})"
    return None


def _n_rows(layout: Layout) -> slice | None:
    # GRU/MGU: the candidate's b_hn sits inside the reset product, so it is kept apart
    return layout.block("n") if layout.core.name != "lstm" else None


def cell_usable(layout: Layout, x: Tensor) -> bool:
    """Whether :func:`gated.backends.fused_cell.step` can run a step whose ``gi`` is ``x``, else the
    caller runs :mod:`gated.cores`' step (also for empty calls: zero batch or ``hidden_size``)."""
    return x.numel() > 0 and why_not(layout, x) is None and not recording()


def _option_args(extras, x: Tensor) -> tuple:
    """The kernels' ``(rmask, zone_h, zone_c, p_h, p_c)`` from a :class:`gated.options.Extras`:
    masks contiguous in ``x``'s dtype, an eval zoneout as its float ``p`` (0: off)."""
    if extras is None:
        return None, None, None, 0.0, 0.0
    prep = lambda t: None if t is None else t.to(x.dtype).contiguous()  # noqa: E731
    zone = tuple(extras.zoneout or ()) + (None,) * 2
    masks = [prep(z) if isinstance(z, Tensor) else None for z in zone[:2]]
    probs = [float(z) if z is not None and not isinstance(z, Tensor) else 0.0 for z in zone[:2]]
    return prep(extras.rmask), masks[0], masks[1], probs[0], probs[1]


def _extras(rmask, zh, zc, ph, pc, n_states: int, ln=None):
    """The :class:`gated.options.Extras` of the kernels' option arguments (for the reference)."""
    if rmask is None and zh is None and zc is None and not ph and not pc and ln is None:
        return None
    zone = tuple(m if m is not None else (p or None) for m, p in ((zh, ph), (zc, pc)))[:n_states]
    return Extras(ln, rmask, None if all(z is None for z in zone) else zone)


def _input_side(x: Tensor, w_ih: Tensor, b_ih: Tensor | None, b_hh: Tensor | None, ln_ih: tuple | None,
                layout: Layout) -> Tensor:
    """The input side of all steps, ``x W_ih^T`` (LayerNorm cell: ``LN_ih(x W_ih^T)``) ``+ b_ih + b_hh``
    ``(T, B, G)``, in torch ops (autograd differentiates it): it is not recurrent, so the kernels take
    it in place of ``x`` and ``W_ih``. GRU/MGU: without ``b_hn``, which the kernel adds inside the
    reset product. The product runs in ``W_ih``'s dtype (bfloat16 matmuls, gated/precision.py) and
    returns in ``x``'s. With a norm the biases join its own (one pass over ``(T, B, G)``, not two)."""
    proj = F.linear(x.to(w_ih.dtype), w_ih).to(x.dtype)
    if ln_ih is None:
        b = _input_bias(b_ih, b_hh, layout)
        return proj if b is None else proj + b
    return F.layer_norm(proj, (w_ih.shape[0],), ln_ih[0], _input_norm_bias(b_ih, b_hh, ln_ih, layout), EPS)


def _input_bias(b_ih: Tensor | None, b_hh: Tensor | None, layout: Layout) -> Tensor | None:
    """``b_ih + b_hh``, GRU/MGU without ``b_hn`` (the kernel adds it inside the reset product)."""
    if b_ih is None:
        return None
    n = _n_rows(layout)
    return b_ih + (b_hh if n is None else _splice(b_hh, n, b_hh.new_zeros(n.stop - n.start)))


def _input_norm_bias(b_ih: Tensor | None, b_hh: Tensor | None, ln_ih: tuple, layout: Layout) -> Tensor:
    """The input norm's bias with the layer's (:func:`_input_bias`): they follow the norm, so one
    vector adds them all."""
    b = _input_bias(b_ih, b_hh, layout)
    return ln_ih[1] if b is None else ln_ih[1] + b


_NO_OPT = (None, None, None, 0.0, 0.0)
_NO_LN = (None, None, None, None)


def _forward(x, w_ih, w_hh, b_ih, b_hh, fb, w_hr, h0, c0, lengths, layout, save: bool, opt=_NO_OPT, ln=_NO_LN,
             ln_in=(None, None)):
    """The forward op; with LayerNorm (``ln``: the recurrent norm's and the LSTM cell norm's weight
    and bias) ``x`` is :func:`_input_side`'s ``(T, B, G)`` and ``w_ih``, ``b_ih`` are None, or in
    inference ``ln_in`` is the input norm's weight and bias (:func:`_input_norm_bias`), which the
    kernel applies to ``x W_ih^T``, and ``b_ih`` is None."""
    core, refine = fused_cell.kernel_ids(layout)
    # the overload itself: the packet's call checks every schema for TorchBind arguments each time
    return torch.ops.gated_fused.recurrence_forward.default(
        x.contiguous(), None if w_ih is None else w_ih.contiguous(), w_hh.contiguous(), b_ih, b_hh, fb, h0, c0,
        lengths, None if w_hr is None else w_hr.contiguous(), core, refine, save, *opt, *ln, *ln_in,
    )


def _input_grad(dA2: Tensor, w_ih: Tensor) -> Tensor:
    """``dA2 @ w_ih``: (T*B, G) @ (G, I). On oneDNN with a packed weight in float32 (3-4x faster than
    ATen's MKL call on the development machine's AMD CPU, where MKL runs generic kernels)."""
    # packing w_ih pays off only over many rows (a one-step call has B)
    if not transformed() and dA2.shape[0] >= 64 and dA2.dtype == torch.float32 and onednn_linear_available():
        packed = torch.ops.mkldnn._reorder_linear_weight(w_ih.t().contiguous(), dA2.shape[0])
        return torch.ops.mkldnn._linear_pointwise(dA2, packed, None, "none", [], "")
    return dA2 @ w_ih


def empty_cache() -> int:
    """Free the fused kernels' idle pooled buffers and return the bytes freed.

    Buffers above 32 MiB (activations and gradients of long sequences) are kept for reuse once
    their last user drops them, because fresh ones page-fault (``gated/csrc/pool.h``); up to 16
    are kept. ``GATED_POOL=0`` turns the reuse off. Like ``torch.cuda.empty_cache``.
    """
    ops = _build.load()
    return 0 if ops is None else int(ops.empty_cache())


@functools.cache
def onednn_linear_available() -> bool:
    """Whether torch's oneDNN linear ops exist in this build."""
    ops = getattr(torch.ops, "mkldnn", None)
    try:
        return bool(torch.backends.mkldnn.is_available() and ops is not None
                    and callable(ops._reorder_linear_weight) and callable(ops._linear_pointwise))
    except (AttributeError, RuntimeError):
        return False


class _Recurrence(torch.autograd.Function):
    """Autograd around the fused kernels, in torch.func's form (``setup_context``), so that
    ``torch.func.grad``/``vjp``/``vmap`` and batched gradcheck can run it. The forward also
    returns the saved activations ``A`` and ``aux``, which are not differentiable."""

    generate_vmap_rule = True  # vmap runs forward and backward on the ops' batching rules (_ops.py)

    @staticmethod
    def forward(x, w_ih, w_hh, b_ih, b_hh, fb, w_hr, h0, c0, lengths, layout, rmask, zh, zc, ph, pc,
                lnw=None, lnb=None, lncw=None, lncb=None):
        return _forward(x, w_ih, w_hh, b_ih, b_hh, fb, w_hr, h0, c0, lengths, layout, True, (rmask, zh, zc, ph, pc),
                        (lnw, lnb, lncw, lncb))

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, w_ih, w_hh, b_ih, b_hh, fb, w_hr, h0, c0, lengths, layout, rmask, zh, zc, ph, pc = inputs[:16]
        ln = tuple(inputs[16:]) + (None,) * (20 - len(inputs))
        out, h_n, c_n, A, aux, m = output
        ctx.mark_non_differentiable(A, aux, m)
        ctx.save_for_backward(x, w_ih, w_hh, b_ih, b_hh, fb, w_hr, h0, c0, lengths, A, aux, m, out, rmask, zh, zc, *ln)
        ctx.layout = layout
        ctx.probs = (ph, pc)
        # no zero-filled gradients for the unused outputs: A, aux and m are (T, B, G)-sized and
        # never differentiated (filling them cost ~8 % of a LayerNorm cell's train step)
        ctx.set_materialize_grads(False)

    @staticmethod
    def backward(ctx, dout, dh_n, dc_n, _dA, _daux, _dm):
        out, h0, c0 = ctx.saved_tensors[13], ctx.saved_tensors[7], ctx.saved_tensors[8]
        dout = torch.zeros_like(out) if dout is None else dout
        dh_n = torch.zeros_like(h0) if dh_n is None else dh_n
        dc_n = torch.zeros_like(c0) if dc_n is None and c0 is not None else dc_n
        if torch.is_grad_enabled():  # create_graph: the gradients must themselves be differentiable
            return _differentiable_backward(ctx, dout, dh_n, dc_n)
        x, w_ih, w_hh, b_ih, b_hh, fb, w_hr, h0, c0, lengths, A, aux, m, out, rmask, zh, zc = ctx.saved_tensors[:17]
        lnw, _, lncw, lncb = ctx.saved_tensors[17:]
        layout = ctx.layout
        core, refine = fused_cell.kernel_ids(layout)
        stats = None if lnw is None else _ln_stats(m, w_hr, out, c0)
        dA, dghn, dh0, dc0, dH = torch.ops.gated_fused.recurrence_backward(
            dout.contiguous(), dh_n.contiguous(), None if c0 is None else dc_n.contiguous(), A, aux, out, h0, c0,
            w_hh.contiguous(), lengths, None if w_hr is None else w_hr.contiguous(), core, refine,
            rmask, zh, zc, *ctx.probs, stats, lnw, lncw, lncb,
        )
        if w_ih is None:  # the caller's input projection (LayerNorm, bfloat16 matmuls)
            return _pre_backward(ctx, dA, dghn, dh0, dc0, dH)
        T, B, G = dA.shape
        I, H = x.shape[-1], h0.shape[-1]  # H: the width of h (proj_size with projections)
        dA2 = dA.view(T * B, G)
        dx = _input_grad(dA2, w_ih).view_as(x) if ctx.needs_input_grad[0] else None
        # One matmul for every weight and bias gradient: dA^T @ [h_{t-1}, x_t] with the sums of dA
        # as the bias column (a single pass over dA; separate products were up to 2.3x slower, MKL
        # being slow on the thin dA^T @ x). On the tiled kernel in float32, which reads h0, out
        # and x straight into its panels (see xh_mm in recurrence.cpp).
        n_rows = _n_rows(layout)  # GRU/MGU: the candidate block's recurrent grads differ from dA
        has_bias = b_ih is not None
        h_in, out_in = (h0, out) if rmask is None else (h0 * rmask, out * rmask)  # what W_hh multiplied
        grads = torch.ops.gated_fused.xh_mm(dA2, None if n_rows is None else dghn.view(T * B, -1),
                                            x.reshape(T * B, I), h_in, out_in, has_bias)
        dW = grads[0]
        dw_hh, dw_ih = dW[:, :H].contiguous(), dW[:, H:H + I].contiguous()
        if n_rows is not None:
            dw_hh = _splice(dw_hh, n_rows, grads[1].narrow(1, 0, H))
        db_ih = db_hh = dfb = None
        if has_bias:
            db_ih = dW[:, -1].contiguous()
            db_hh = db_ih if n_rows is None else _splice(db_ih, n_rows, grads[1][:, H])
        if fb is not None:  # b_f enters the keep gate with + and the refine gate with -
            total = dW[:, -1] if has_bias else dA2.sum(0)  # dA summed over steps and batch
            dfb = total[layout.keep] - total[layout.refine]
        dw_hr = None
        if w_hr is not None:  # dL/dW_hr = sum over steps of dh_t^T m_t
            dw_hr = torch.ops.gated_fused.tiled_mm(dH.view(T * B, H), m.view(T * B, -1), True, False)
        return (dx, dw_ih, dw_hh, db_ih, db_hh, dfb, dw_hr, dh0, (dc0 if c0 is not None else None), None, None,
                None, None, None, None, None, None, None, None, None)


def _ln_stats(m: Tensor, w_hr: Tensor | None, out: Tensor, c0: Tensor) -> Tensor:
    """LayerNorm's saved statistics from the forward op's last output ``m``: all of it, or with
    projections its flat ``[statistics | m_t (T, B, H)]``'s first part (gated/csrc/time_loop.h)."""
    if w_hr is None:
        return m
    return m[:m.numel() - out.shape[0] * out.shape[1] * c0.shape[-1]]


def _pre_backward(ctx, dA, dghn, dh0, dc0, dL):
    """The first-order gradients of a call whose input side :func:`_input_side` computed (autograd
    takes ``dA``, the gradient of its ``(T, B, G)`` result, back through it), from the backward op's
    results. ``W_hh``'s gradient is one product with the raw recurrent product's gradient: with
    LayerNorm the first part of the flat ``dL`` ``[d(h W_hh^T) before the norm (T, B, G) | LSTM: the
    cell norm's dy (T, B, H) | the norms' parameter gradients per batch row (B, 2 G (+ 2 H))]``, whose
    statistics are the forward's ``m`` ``[xhat (T, B, G) | rstd (T, B) | LSTM: chat (T, B, H) | rstd
    (T, B)]`` (gated/csrc/time_loop.h); without, ``dA`` itself (GRU/MGU: ``dghn`` in the candidate
    block, what the reset gate multiplied). With projections ``dL`` ends with ``dH`` (``(T, B, P)``,
    ``W_hr``'s) and ``m`` with ``m_t`` (``(T, B, H)``): all of them without LayerNorm, each one flat
    buffer with it. The norms' gains and biases (sums of ``dy * xhat`` and ``dy`` over steps and
    batch) come from the kernel summed over steps, per batch row: one sum over rows here. Gradients
    return in their inputs' dtypes (a bfloat16 ``W_hh``'s in bfloat16)."""
    x, _, w_hh, _, b_hh, fb, w_hr, h0, c0, _, A, _, m, out, rmask = ctx.saved_tensors[:15]
    lnw, lncw = ctx.saved_tensors[17], ctx.saved_tensors[19]
    layout = ctx.layout
    T, B, G = dA.shape
    P, TB = h0.shape[-1], T * B  # P: the width of h (proj_size with projections)
    n_rows = _n_rows(layout)
    h_in, out_in = (h0, out) if rmask is None else (h0 * rmask, out * rmask)  # what W_hh multiplied
    if lnw is not None:
        d_rec = dL[:TB * G].view(T, B, G)
    else:
        d_rec = dA if n_rows is None else torch.cat([dA[..., :n_rows.start], dghn, dA[..., n_rows.stop:]], -1)
    # d_rec^T [h_0, h_1, ..., h_{T-2}], the h_{t-1} read where they lie (no shifted copy)
    dw_hh = torch.ops.gated_fused.xh_mm(d_rec.reshape(TB, G), None, h0.new_empty(TB, 0), h_in, out_in, False)[0]
    dlnw = dlnb = dlncw = dlncb = None
    if lnw is not None:
        Hc = 0 if lncw is None else lncw.shape[0]
        sums = dL[TB * (G + Hc):TB * (G + Hc) + B * 2 * (G + Hc)].view(B, -1).sum(0)
        dlnw, dlnb, dlncw, dlncb = sums.split([G, G, Hc, Hc])
        if lncw is None:
            dlncw = dlncb = None
    db_hh = None
    if b_hh is not None:  # GRU/MGU: b_hn (the rest of b_hh is in the input side)
        db_hh = _splice(torch.zeros_like(b_hh), n_rows, dghn.sum((0, 1)))
    dfb = None
    if fb is not None:
        total = dA.sum((0, 1))
        dfb = total[layout.keep] - total[layout.refine]
    dw_hr = None
    if w_hr is not None:  # dL/dW_hr = sum over steps of dh_t^T m_t (the last parts of dL and m)
        dH, m_t = dL.reshape(-1)[-TB * P:], m.reshape(-1)[-TB * w_hr.shape[1]:]
        dw_hr = torch.ops.gated_fused.tiled_mm(dH.view(TB, P), m_t.view(TB, -1), True, False)
    dx = dA if ctx.needs_input_grad[0] else None
    return (dx, None, dw_hh.to(w_hh.dtype), None, db_hh, dfb, dw_hr, dh0, (dc0 if c0 is not None else None), None,
            None, None, None, None, None, None, dlnw, dlnb, dlncw, dlncb)


def _splice(t: Tensor, rows: slice, block: Tensor) -> Tensor:
    """``t`` with ``rows`` replaced by ``block``, built by cat from the non-empty pieces, not written
    in place: torch's batched gradients (the vmap behind gradcheck's batched check) take neither
    in-place writes into views nor cat's no-op aliases."""
    pieces = [t[:rows.start], block, t[rows.stop:]]
    return torch.cat([p for p in pieces if p.shape[0] > 0])


def _differentiable_backward(ctx, dout, dh_n, dc_n):
    """Gradients that can be differentiated again (double backward, Hessian-vector products,
    torch.func's nested transforms): the layer is recomputed on the reference backend, whose ops
    all have derivatives, and its vector-Jacobian product taken with torch.func.vjp (which, unlike
    autograd.grad, also composes with an enclosing torch.func transform). Slower than the fused
    backward, and only taken when the caller asked for a differentiable gradient."""
    saved = ctx.saved_tensors
    x, w_ih, w_hh, b_ih, b_hh, fb, w_hr, h0, c0, lengths = saved[:10]
    lnw, lnb, lncw, lncb = saved[17:21]
    inputs = dict(enumerate((x, w_ih, w_hh, b_ih, b_hh, fb, w_hr, h0, c0))) | {16: lnw, 17: lnb, 18: lncw, 19: lncb}
    wanted = [k for k, t in inputs.items() if t is not None and ctx.needs_input_grad[k]]
    mask = None
    if lengths is not None:
        steps = torch.arange(x.shape[0], device=x.device).unsqueeze(1)
        mask = (steps < lengths.unsqueeze(0)).unsqueeze(-1)

    def layer(*diff):
        args = dict(inputs)
        args.update(zip(wanted, diff))
        state = (args[7],) if c0 is None else (args[7], args[8])
        ln = None
        w_in, b_rec = args[1], args[4]
        if w_ih is None:  # x is the input side (_input_side): its product, norm and biases are done
            if lnw is not None:
                ln = (None, (args[16], args[17]), None if lncw is None else (args[18], args[19]))
            w_in = torch.eye(x.shape[-1], dtype=x.dtype, device=x.device)  # an identity W_ih
            n = _n_rows(ctx.layout)
            if b_rec is not None:  # only b_hn is the kernel's
                b_rec = _splice(torch.zeros_like(b_rec), n, b_rec[n])
        extras = _extras(*saved[14:17], *ctx.probs, 1 if c0 is None else 2, ln)
        out, final = reference.run_layer(args[0], state, w_in, args[2], args[3], b_rec, args[5], ctx.layout, mask,
                                         w_hr=args[6], extras=extras)
        return (out, *final)

    _, vjp = torch.func.vjp(layer, *(inputs[k] for k in wanted))
    got = vjp((dout, dh_n) if c0 is None else (dout, dh_n, dc_n))
    grads: list = [None] * len(ctx.needs_input_grad)  # one per input of the caller's Function
    for k, g in zip(wanted, got):
        grads[k] = g
    return tuple(grads)


def _one_step_train(x, state, w_ih, w_hh, b_ih, b_hh, fb, mask, w_hr, extras) -> bool:
    """A T = 1 call that records a graph, with none of what only the sequence kernels run (masks,
    projections, cell options, bfloat16 matmul weights) and outside compile, export and torch.func."""
    if mask is not None or w_hr is not None or extras is not None or w_hh.dtype != x.dtype:
        return False
    return builds_graph(x, *state, w_ih, w_hh, b_ih, b_hh, fb) and not recording()


def run_layer(x, state, w_ih, w_hh, b_ih, b_hh, forget_bias, layout, mask=None, record=None, w_hr=None, extras=None):
    """Same contract as :func:`gated.backends.reference.run_layer` (``record`` is not supported)."""
    if record is not None:
        raise ValueError("the fused backend records no gates; gate_activations uses the reference backend")
    if x.shape[1] == 0:  # an empty batch: nothing to compute, and the kernels need B > 0
        return reference.run_layer(x, state, w_ih, w_hh, b_ih, b_hh, forget_bias, layout, mask, w_hr=w_hr,
                                   extras=extras)
    if x.shape[0] == 1 and _one_step_train(x, state, w_ih, w_hh, b_ih, b_hh, forget_bias, mask, w_hr, extras):
        # a training step of T = 1 (an agent stepping a layer): the cells' path, ATen's two
        # projections and the fused gate maths, instead of the sequence kernels' fixed costs
        new = fused_cell.step(F.linear(x[0], w_ih, b_ih), F.linear(state[0], w_hh, b_hh), tuple(state), forget_bias,
                              layout)
        return new[0].unsqueeze(0), new
    opt = _option_args(extras, x)
    ln, ln_in = _NO_LN, (None, None)
    has_ln = extras is not None and extras.ln is not None
    if has_ln or w_hh.dtype != x.dtype:  # the LayerNorm cell, or bfloat16 matmuls: the input side here
        if w_hh.dtype != x.dtype and (x.dtype != torch.float32 or w_hh.dtype != torch.bfloat16):
            raise ValueError(f"the fused kernels take {x.dtype} weights, or bfloat16 matmul weights with float32 "
                             f"inputs (gated/precision.py), got {w_hh.dtype}")
        ln_ih, ln_hh, ln_c = extras.ln if has_ln else (None, None, None)
        if has_ln and w_hh.dtype == x.dtype and not builds_graph(x, *state, w_ih, w_hh, b_ih, b_hh, forget_bias, w_hr,
                                                              *ln_ih, *ln_hh, *(ln_c or ())):
            # inference: the kernel normalises x W_ih^T where it computes it (a chunk at a time)
            ln_in = (ln_ih[0].contiguous(), _input_norm_bias(b_ih, b_hh, ln_ih, layout).contiguous())
        else:
            x = _input_side(x, w_ih, b_ih, b_hh, ln_ih, layout)
            w_ih = None
        b_ih = None
        b_hh = None if _n_rows(layout) is None else b_hh  # GRU/MGU: the kernel reads b_hn from it
        if has_ln:
            ln_c = _NO_LN[:2] if ln_c is None else tuple(t.contiguous() for t in ln_c)
            ln = tuple(t.contiguous() for t in ln_hh) + ln_c
    if w_hr is not None and x.dtype == torch.float32 and not _said["proj"] and not torch.compiler.is_compiling():
        _said["proj"] = True
        logging.getLogger("gated").warning(
            "gated: an LSTM with projections runs the fused kernels with one oneDNN/MKL GEMM per step, not the "
            "register-tiled kernel (slower per step than proj_size=0)")
    lengths = None if mask is None else mask[:, :, 0].sum(0).to(torch.int64)
    c0 = state[1].contiguous() if len(state) == 2 else None
    args = (x, w_ih, w_hh, b_ih, b_hh, forget_bias, w_hr, state[0].contiguous(), c0, lengths, layout)
    if ln_in[0] is None and builds_graph(*args[:9], *ln):
        out, h_n, c_n = _Recurrence.apply(*args, *opt, *ln)[:3]
    else:  # inference: no graph, and the kernel keeps no per-step activations
        out, h_n, c_n = _forward(*args, save=False, opt=opt, ln=ln, ln_in=ln_in)[:3]
    return out, (h_n, c_n) if c0 is not None else (h_n,)
