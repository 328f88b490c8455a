"""Scan backends of the input-gated cores (minGRU, minLSTM, RG-LRU, HGRN) and the bare linear scan.

The gates of a scan core read ``x_t`` only, so a layer is one GEMM for the projection
``P = x W^T + b`` of every step and then the diagonal linear recurrence
``h_t = a_t h_{t-1} + b_t`` with ``a_t``, ``b_t`` pointwise functions of ``P_t``. Three ways to run it,
each with the contract of :func:`gated.backends.reference.run_layer` (``w_hh``/``b_hh`` are None):

- ``"fused_cpu"``: the C++ kernels of ``gated/csrc/scan.h``: one sequential pass over T, vectorised
  over the units and split over threads, with the gates computed inside; the backward is the
  reverse scan with the gate derivatives in the same pass, returning ``dP``, so the weight and bias
  gradients are one GEMM (the register-tiled kernel in float32 on AVX-512);
- ``"torch"``: the pure-torch fallback (any device and dtype): the gates as whole-sequence torch ops,
  the recurrence as a Python loop inside an autograd.Function whose backward is the reverse scan;
- ``"triton"``: the ``"torch"`` backend's gates (torch ops, differentiated by autograd) with the
  recurrence as one Triton kernel per layer and direction instead of the Python loop, the time loop
  inside the kernel, and its backward (the reverse scan) as one more (gated/backends/_triton_scan.py);
  for CUDA tensors, and for CPU tensors in Triton's interpreter (``TRITON_INTERPRET=1``, tests);
- ``"reference"``: the sequential step loop of :mod:`gated.backends.reference` (its step gets ``gh=None``), the oracle.

RG-LRU and HGRN have their own gate hooks in ``scan.h`` (``gated_fused::lru_forward``/``lru_backward``,
:class:`_LruLayer`): RG-LRU's write ``sqrt(1 - g^2) i`` and ``Lambda``, HGRN's bound and SiLU candidate do
not fit minGRU's hook (whose backward assumes ``w = 1 - a``). Their backward also returns the per-unit
parameter's gradient (``Lambda``, the lower bound) summed over time per batch row. On ``"torch"`` their
``a_t``, ``b_t`` are torch ops over the whole sequence (:data:`gated.cores.SCAN_COEFFICIENTS`,
differentiated by autograd) and the recurrence is the Python loop.

``"auto"`` takes ``fused_cpu`` where it can run (CPU, float32/float64, the extension built),
``triton`` for CUDA tensors when triton imports, and the ``torch`` fallback elsewhere, logging the
reason once; under tracing, export, torch.func transforms
and forward-mode AD it takes the reference (plain torch ops), as :func:`gated.backends.resolve` does.

Glossary: T time, B batch, I input features, H hidden_size, G gate rows (``layout.rows``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from gated.backends import _build, _forward_ad, _log_once, _traced, _transformed, fused_cpu, reference
from gated.backends._context import builds_graph
from gated.cores import SCAN_COEFFICIENTS, Layout, scan_gates

__all__ = ["linear_scan", "resolve", "check_name", "why_not", "triton_why_not", "BACKENDS"]

_CELL_ID = {"mingru": 0, "minlstm": 1}  # scan.h's Cell
_LRU_ID = {"rglru": 2, "hgrn": 3}  # scan.h's LruCell


def available() -> bool:
    """Whether the extension is built and has the scan kernels."""
    ops = _build.load()
    return ops is not None and hasattr(ops, "scan_forward") and hasattr(ops, "lru_forward")


available._dynamo_marked_constant = True  # as fused_cpu.available: a constant for torch.compile


def why_not(layout: Layout | None, x: Tensor) -> str | None:
    """None if the fused scan can run the call, else the reason (for the one-time log)."""
    if layout is not None and layout.core.name not in _CELL_ID and layout.core.name not in SCAN_COEFFICIENTS:
        return f"core {layout.core.name!r}"
    if x.device.type != "cpu":
        return f"device {x.device.type!r}"
    if x.dtype not in (torch.float32, torch.float64):
        return f"dtype {x.dtype}"
    if not available():
        return f"the extension could not be built ({_build._state.get('error') or 'it has no scan kernels'})"
    return None


_TRITON_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def triton_why_not(layout: Layout | None, x: Tensor) -> str | None:
    """None if the Triton scan (``"triton"``) can run the call, else the reason (for the one-time log).
    CUDA tensors with the compiled kernels; CPU tensors only in Triton's interpreter (as
    :func:`gated.backends.triton_gpu.why_not`)."""
    from gated.backends import triton_gpu  # imports no triton by itself

    if layout is not None and layout.core.name not in _CELL_ID and layout.core.name not in SCAN_COEFFICIENTS:
        return f"core {layout.core.name!r}"
    if x.device.type == "cpu":
        if not triton_gpu.interpreting():
            return "CPU tensors (they run the Triton kernels only in Triton's interpreter, TRITON_INTERPRET=1)"
    elif x.device.type != "cuda":
        return f"device {x.device.type!r}"
    elif triton_gpu.interpreting():
        return "CUDA tensors under TRITON_INTERPRET=1 (the interpreter runs the Triton scan on CPU tensors only)"
    if x.dtype not in _TRITON_DTYPES:
        return f"dtype {x.dtype}"
    if not triton_gpu.available():
        return f"triton could not be imported ({triton_gpu.import_error()}; pip install 'gated[gpu]')"
    return None


def _ids(layout: Layout) -> tuple[int, bool]:
    return _CELL_ID[layout.core.name], layout.variant.auxiliary == "refine"


def _lengths_mask(lengths: Tensor | None, T: int) -> Tensor | None:
    if lengths is None:
        return None
    return (torch.arange(T, device=lengths.device).unsqueeze(1) < lengths.unsqueeze(0)).unsqueeze(-1)  # (T, B, 1)


def _project(x: Tensor, w: Tensor) -> Tensor:
    """``x W^T`` ``(T, B, G)``; the kernels add the bias as they read it. In float32 on the
    register-tiled kernel, whose output comes from the extension's buffer pool: ATen's matmul is 2-4x
    slower at these shapes here, and a fresh buffer above 32 MiB page-faults on every call."""
    T, B, I = x.shape
    if x.dtype != torch.float32 or fused_cpu.transformed():
        return F.linear(x, w)
    return torch.ops.gated_fused.tiled_mm(x.reshape(T * B, I), w.t().contiguous(), False, False).view(T, B, -1)


def _weight_grads(dP2: Tensor, x2: Tensor, with_bias: bool) -> tuple[Tensor, Tensor | None]:
    """``dW = dP^T x`` ``(G, I)`` and, ``with_bias``, ``db = sum dP`` ``(G,)`` in one pass over ``dP``
    ``(T*B, G)``. For thin inputs (``I < 16``) on the scan's own kernel (``scan_weight_grad``), else on
    the tiled kernel with the sums as an extra column. Both sum in an order that does not depend on
    the thread count; a BLAS call on the thin product (``[x, 1]^T dP``, a long inner dimension) would
    not: MKL splits that sum over the threads."""
    I = x2.shape[1]
    if I < 16:
        dWb = torch.ops.gated_fused.scan_weight_grad(dP2, x2, with_bias)  # (G, I [+ 1])
    else:
        dWb = torch.ops.gated_fused.tiled_mm(dP2, x2, True, with_bias)  # (G, I [+ 1])
    return dWb[:, :I].contiguous(), (dWb[:, I].contiguous() if with_bias else None)


class _ScanLayer(torch.autograd.Function):
    """One fused layer: ``P = x W^T + b``, then the scan kernel. The backward runs the reverse-scan
    kernel for ``dP`` and then one GEMM each for ``dx`` and for ``[dW, db]``."""

    @staticmethod
    def forward(x, w, b, fb, h0, lengths, layout):
        P = _project(x, w)  # (T, B, G), without the bias
        cell, refine = _ids(layout)
        out, h_n = torch.ops.gated_fused.scan_forward(P, b, fb, h0, lengths, cell, refine)
        return out, h_n, P

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, w, b, fb, h0, lengths, layout = inputs
        out, _, P = output
        ctx.mark_non_differentiable(P)
        ctx.set_materialize_grads(False)  # no zero (T, B, G) gradient for P, nor (T, B, H) when only h_n is used
        ctx.save_for_backward(x, w, b, fb, h0, lengths, P, out)
        ctx.layout = layout

    @staticmethod
    def backward(ctx, dout, dh_n, _dP):
        x, w, b, fb, h0, lengths, P, out = ctx.saved_tensors
        if dout is None and dh_n is None:
            return (None,) * 7
        if torch.is_grad_enabled():  # create_graph: gradients that can be differentiated again
            dout = torch.zeros_like(out) if dout is None else dout
            return _differentiable_backward(ctx, dout, torch.zeros_like(h0) if dh_n is None else dh_n)
        cell, refine = _ids(ctx.layout)
        dP, dh0 = torch.ops.gated_fused.scan_backward(dout, dh_n, P, b, fb, out, h0, lengths, cell, refine)
        T, B, G = dP.shape
        I = x.shape[-1]
        dP2 = dP.view(T * B, G)
        dx = fused_cpu._input_grad(dP2, w).view_as(x) if ctx.needs_input_grad[0] else None
        # the sums of dP (the bias gradient) also give b_f's, so they are taken whenever either is needed
        dw, total = _weight_grads(dP2, x.reshape(T * B, I), b is not None or fb is not None)
        db = total if b is not None else None
        dfb = None
        if fb is not None:  # b_f enters the keep gate with + and the refine gate with -
            dfb = total[ctx.layout.keep] - total[ctx.layout.refine]
        return dx, dw, db, dfb, dh0, None, None


def _layer_vjp(ctx, inputs: tuple, lengths, run, dout, dh_n):
    """The vector-Jacobian product on the reference loop (whose ops all have derivatives), for
    double backward; slower, taken only when the caller asks for a differentiable gradient.
    ``run(args, mask) -> (out, h_n)`` runs the loop on ``inputs`` with the differentiated ones
    replaced; one gradient per input of the caller's Function (``ctx.needs_input_grad``)."""
    wanted = [k for k, t in enumerate(inputs) if t is not None and ctx.needs_input_grad[k]]
    mask = _lengths_mask(lengths, inputs[0].shape[0])

    def layer(*diff):
        args = list(inputs)
        for k, t in zip(wanted, diff):
            args[k] = t
        return run(args, mask)

    _, vjp = torch.func.vjp(layer, *(inputs[k] for k in wanted))
    grads: list = [None] * len(ctx.needs_input_grad)
    for k, g in zip(wanted, vjp((dout, dh_n))):
        grads[k] = g
    return tuple(grads)


def _differentiable_backward(ctx, dout, dh_n):
    """:func:`_layer_vjp` for :class:`_ScanLayer`'s inputs ``(x, w, b, fb, h0)``."""
    x, w, b, fb, h0, lengths = ctx.saved_tensors[:6]

    def run(a, mask):
        out, (h_n,) = reference.run_layer(a[0], (a[4],), a[1], None, a[2], None, a[3], ctx.layout, mask)
        return out, h_n

    return _layer_vjp(ctx, (x, w, b, fb, h0), lengths, run, dout, dh_n)


def _lru_units(layout: Layout, unit: Tensor | None) -> Tensor | None:
    """The kernel's per-unit rows: RG-LRU ``(sp, q)`` ``(2, H)`` with ``sp = softplus(-Lambda)`` (``-log a_t
    = c r_t sp``) and ``q = sigma(-Lambda) / sp`` (``d sp / d Lambda = -q sp``; 1 where ``sp`` underflows,
    where ``a_t = 1`` and the factor it multiplies is 0); HGRN its lower bound ``(1, H)`` or None."""
    if unit is None:
        return None
    unit = unit.detach()
    if layout.core.name == "hgrn":
        return unit.reshape(1, -1).contiguous()
    sp = F.softplus(-unit)
    q = torch.where(sp > 0, torch.sigmoid(-unit) / torch.where(sp > 0, sp, 1.0), 1.0)
    return torch.stack([sp, q]).contiguous()


def _lru_split(layout: Layout, units) -> tuple[Tensor | None, Tensor | None]:
    """``(fb, unit)`` from a layer's per-unit tuple: RG-LRU ``(Lambda,)``, HGRN ``(lb, b_f)``."""
    if layout.core.name == "rglru":
        return None, units[0]
    lb, fb = units
    return fb, lb


class _LruLayer(torch.autograd.Function):
    """One RG-LRU / HGRN layer: ``P = x W^T``, then ``gated_fused::lru_forward`` (bias, gates and
    recurrence in one pass). The backward is ``lru_backward`` (the reverse scan with the gates'
    derivatives, giving ``dP`` and the per-unit parameter's gradient: ``Lambda`` or the lower bound),
    then the GEMMs for ``dx`` and ``[dW, db]``; ``b_f`` (HGRN's refine variants) from ``db``'s sums."""

    @staticmethod
    def forward(x, w, b, fb, unit, h0, lengths, layout):
        P = _project(x, w)  # (T, B, G), without the bias
        out, h_n = torch.ops.gated_fused.lru_forward(P, b, fb, _lru_units(layout, unit), h0, lengths,
                                                     _LRU_ID[layout.core.name], layout.variant.auxiliary == "refine")
        return out, h_n, P

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, w, b, fb, unit, h0, lengths, layout = inputs
        out, _, P = output
        ctx.mark_non_differentiable(P)
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(x, w, b, fb, unit, h0, lengths, P, out)
        ctx.layout = layout

    @staticmethod
    def backward(ctx, dout, dh_n, _dP):
        x, w, b, fb, unit, h0, lengths, P, out = ctx.saved_tensors
        if dout is None and dh_n is None:
            return (None,) * 8
        L = ctx.layout
        if torch.is_grad_enabled():  # create_graph: gradients that can be differentiated again
            dout = torch.zeros_like(out) if dout is None else dout
            return _lru_differentiable_backward(ctx, dout, torch.zeros_like(h0) if dh_n is None else dh_n)
        unit_grad = unit is not None and ctx.needs_input_grad[4]
        dP, dh0, du = torch.ops.gated_fused.lru_backward(dout, dh_n, P, b, fb, _lru_units(L, unit), out, h0, lengths,
                                                         _LRU_ID[L.core.name], L.variant.auxiliary == "refine",
                                                         unit_grad)
        T, B, G = dP.shape
        I = x.shape[-1]
        dP2 = dP.view(T * B, G)
        dx = fused_cpu._input_grad(dP2, w).view_as(x) if ctx.needs_input_grad[0] else None
        dw, total = _weight_grads(dP2, x.reshape(T * B, I), b is not None or fb is not None)
        db = total if b is not None else None
        dfb = total[L.keep] - total[L.refine] if fb is not None else None
        dunit = du.sum(0) if unit_grad else None
        return dx, dw, db, dfb, dunit, dh0, None, None


def _lru_differentiable_backward(ctx, dout, dh_n):
    """:func:`_layer_vjp` for :class:`_LruLayer`'s inputs ``(x, w, b, fb, unit, h0)``."""
    x, w, b, fb, unit, h0, lengths = ctx.saved_tensors[:7]
    L = ctx.layout

    def run(a, mask):
        units = (a[4],) if L.core.name == "rglru" else (a[4], a[3])
        out, (h_n,) = reference.run_layer(a[0], (a[5],), a[1], None, a[2], None, units, L, mask)
        return out, h_n

    return _layer_vjp(ctx, (x, w, b, fb, unit, h0), lengths, run, dout, dh_n)


def _run_lru(x, h0, w_ih, b_ih, units, layout, lengths):
    fb, unit = _lru_split(layout, units)
    args = (x, w_ih, b_ih, fb, unit, h0.contiguous(), lengths, layout)
    if builds_graph(*args[:6]):
        out, h_n, _ = _LruLayer.apply(*args)
    else:  # inference: no graph, nothing saved
        out, h_n = torch.ops.gated_fused.lru_forward(_project(x, w_ih), b_ih, fb, _lru_units(layout, unit), args[5],
                                                     lengths, _LRU_ID[layout.core.name],
                                                     layout.variant.auxiliary == "refine")
    return out, (h_n,)


def run_layer(x, state, w_ih, w_hh, b_ih, b_hh, forget_bias, layout, mask=None, record=None, w_hr=None):
    """The fused scan; the contract of :func:`gated.backends.reference.run_layer` (no ``record``)."""
    if record is not None:
        raise ValueError("the fused scan records no gates; gate_activations uses the reference backend")
    if x.shape[1] == 0:  # an empty batch: nothing to scan
        return reference.run_layer(x, state, w_ih, None, b_ih, None, forget_bias, layout, mask)
    lengths = None if mask is None else mask[:, :, 0].sum(0).to(torch.int64)
    if layout.core.name in _LRU_ID:  # RG-LRU, HGRN: their gates fused into the scan (scan.h's LruCell)
        return _run_lru(x, state[0], w_ih, b_ih, forget_bias, layout, lengths)
    args = (x, w_ih, b_ih, forget_bias, state[0].contiguous(), lengths, layout)
    if builds_graph(*args[:5]):
        out, h_n, _ = _ScanLayer.apply(*args)
    else:  # inference: no graph, nothing saved
        cell, refine = _ids(layout)
        out, h_n = torch.ops.gated_fused.scan_forward(_project(x, w_ih), b_ih, forget_bias, args[4], lengths,
                                                      cell, refine)
    return out, (h_n,)


def _save_scan(ctx, inputs, output):
    """``setup_context`` of both linear scans: ``a``, ``h0`` and every state (``b`` is not needed)."""
    a, _, h0 = inputs
    ctx.save_for_backward(a, h0, output)


class _LoopScan(torch.autograd.Function):
    """``h_t = a_t h_{t-1} + b_t`` as a Python loop over time, with the reverse scan as backward
    (``g_{t-1} = a_t g_t + dout_{t-1}``, ``da_t = g_t h_{t-1}``, ``db_t = g_t``): the pure-torch
    fallback, any device and dtype. Each step works on ``unbind`` slices (an indexed slice's
    backward would write a whole zero tensor per step)."""

    @staticmethod
    def forward(a, b, h0):
        h, outs = h0, []
        for a_t, b_t in zip(a.unbind(0), b.unbind(0)):
            h = torch.addcmul(b_t, a_t, h)
            outs.append(h)
        return torch.stack(outs)

    setup_context = staticmethod(_save_scan)

    @staticmethod
    def backward(ctx, dout):
        a, h0, out = ctx.saved_tensors
        if torch.is_grad_enabled():  # double backward: differentiate the plain loop instead
            return _reference_vjp(a, h0, out, dout)
        g = torch.zeros_like(h0)
        da, db = [], []
        prev = [h0, *out.unbind(0)[:-1]]
        for t in range(a.shape[0] - 1, -1, -1):
            g = g + dout[t]
            da.append(g * prev[t])
            db.append(g)
            g = g * a[t]
        return torch.stack(da[::-1]), torch.stack(db[::-1]), g


class _LinearScanOp(torch.autograd.Function):
    """The C++ linear scan (``gated_fused::linear_scan``) with its reverse-scan backward."""

    @staticmethod
    def forward(a, b, h0):
        return torch.ops.gated_fused.linear_scan(a, b, h0)

    setup_context = staticmethod(_save_scan)

    @staticmethod
    def backward(ctx, dout):
        a, h0, out = ctx.saved_tensors
        if torch.is_grad_enabled():
            return _reference_vjp(a, h0, out, dout)
        return torch.ops.gated_fused.linear_scan_backward(dout, a, out, h0)


def _save_triton_scan(ctx, inputs, output):
    """:func:`_save_scan`, and ``b``'s dtype (that of its gradient)."""
    _save_scan(ctx, inputs, output)
    ctx.b_dtype = inputs[1].dtype


class _TritonScan(torch.autograd.Function):
    """``h_t = a_t h_{t-1} + b_t`` as one Triton kernel (the time loop inside it), with the reverse
    scan as one more for backward (gated/backends/_triton_scan.py); ``a``, ``b`` ``(T, *S)``,
    ``h0`` ``(*S)``, ``T >= 1`` and at least one column. The output has the promoted dtype of ``a``
    and ``h0``, as :class:`_LoopScan`'s; bfloat16/float16 accumulate in float32."""

    @staticmethod
    def forward(a, b, h0):
        from gated.backends import _triton_scan

        T = a.shape[0]
        out = _triton_scan.forward(a.reshape(T, -1).contiguous(), b.reshape(T, -1).contiguous(),
                                   h0.reshape(-1).contiguous())
        return out.view((T, *h0.shape))

    setup_context = staticmethod(_save_triton_scan)

    @staticmethod
    def backward(ctx, dout):
        a, h0, out = ctx.saved_tensors
        if torch.is_grad_enabled():  # double backward: differentiate the plain loop instead
            return _reference_vjp(a, h0, out, dout)
        from gated.backends import _triton_scan

        T = a.shape[0]
        da, db, dh0 = _triton_scan.backward(dout.reshape(T, -1).contiguous(), a.reshape(T, -1).contiguous(),
                                            out.reshape(T, -1), h0.reshape(-1).contiguous(), ctx.b_dtype)
        return da.view(a.shape), db.view(a.shape), dh0.view(h0.shape)


def _scan(a: Tensor, b: Tensor, h0: Tensor, triton: bool) -> Tensor:
    """The recurrence of the torch and Triton backends: :class:`_TritonScan` if ``triton`` (and there
    is something to scan), else :class:`_LoopScan`."""
    if triton and a.numel() > 0 and a.shape == b.shape and a.shape[1:] == h0.shape:
        return _TritonScan.apply(a, b, h0)
    return _LoopScan.apply(a, b, h0)


def _reference_scan(a: Tensor, b: Tensor, h0: Tensor) -> Tensor:
    """The plain loop with autograd: the oracle of :func:`linear_scan`."""
    h, outs = h0, []
    for a_t, b_t in zip(a.unbind(0), b.unbind(0)):
        h = a_t * h + b_t
        outs.append(h)
    return torch.stack(outs)


def _reference_vjp(a: Tensor, h0: Tensor, out: Tensor, dout: Tensor):
    """Differentiable VJP of :func:`_reference_scan` for double backward; ``b`` is recovered from ``out``."""
    prev = torch.cat([h0.unsqueeze(0), out[:-1]])
    b = out - a * prev  # h_t = a_t h_{t-1} + b_t; b itself is not saved
    _, vjp = torch.func.vjp(_reference_scan, a, b, h0)
    return vjp(dout)


def _linear_backend(name: str, a: Tensor) -> str:
    check_name(name)
    if name != "auto":
        check = {"fused_cpu": why_not, "triton": triton_why_not}.get(name)
        reason = check(None, a) if check is not None else None
        if reason is not None:
            raise RuntimeError(f"backend {name!r} cannot run this call: {reason}")
        return name
    if _traced() or _transformed():
        return "reference"
    if a.device.type == "cuda" and not torch.compiler.is_compiling() and triton_why_not(None, a) is None:
        return "triton"
    return "fused_cpu" if why_not(None, a) is None else "torch"


def linear_scan(a: Tensor, b: Tensor, h0: Tensor | None = None, backend: str = "auto") -> Tensor:
    r"""Every state of the diagonal linear recurrence :math:`h_t = a_t \odot h_{t-1} + b_t`.

    Args:
        a, b: ``(T, *S)`` coefficients (any trailing shape ``S``, e.g. ``(B, H)``), time first.
        h0: ``(*S)`` initial state; zeros if None.
        backend: ``"auto"`` (the C++ kernel on CPU float32/float64, the Triton kernel on CUDA
            tensors when triton imports, else the pure-torch loop), ``"fused_cpu"``, ``"triton"``,
            ``"torch"`` or ``"reference"`` (the plain loop with autograd).

    Returns:
        ``(T, *S)``: ``h_1 ... h_T``. Differentiable in ``a``, ``b`` and ``h0`` (the backward is the
        reverse scan); NaN and infinity propagate as in the plain loop.

    Example:
        >>> h = gated.linear_scan(torch.rand(1024, 32, 256), torch.randn(1024, 32, 256))
    """
    if not (isinstance(a, Tensor) and isinstance(b, Tensor)) or a.shape != b.shape or a.dim() < 1:
        raise ValueError("linear_scan: a and b must be tensors of one shape (T, ...), got "
                         f"{getattr(a, 'shape', type(a).__name__)} and {getattr(b, 'shape', type(b).__name__)}")
    if a.dtype != b.dtype or a.device != b.device:
        raise ValueError(f"linear_scan: a and b differ in dtype or device ({a.dtype}/{a.device}, {b.dtype}/{b.device})")
    if h0 is None:
        h0 = a.new_zeros(a.shape[1:])
    elif not isinstance(h0, Tensor) or h0.shape != a.shape[1:] or h0.dtype != a.dtype or h0.device != a.device:
        raise ValueError(f"linear_scan: h0 must be a {tuple(a.shape[1:])} tensor of a's dtype and device, got "
                         f"{getattr(h0, 'shape', type(h0).__name__)}")
    T = a.shape[0]
    if T == 0:
        return a.new_empty(a.shape)
    how = _linear_backend(backend, a)
    if how == "reference":
        return _reference_scan(a, b, h0)
    if how in ("torch", "triton"):
        return _scan(a, b, h0, how == "triton")
    shape = a.shape
    flat = (T, 1, h0.numel())  # (T, B, H) for the kernel; contiguous copies of strided inputs
    out = _LinearScanOp.apply(a.reshape(flat), b.reshape(flat), h0.reshape(1, -1))
    return out.view(shape)


def _coefficients(x, w_ih, b_ih, units, layout, mask):
    """``a_t``, ``b_t`` ``(T, B, H)`` of a :data:`~gated.cores.SCAN_COEFFICIENTS` core (RG-LRU, HGRN) as torch
    ops; past a sequence's end ``a = 1``, ``b = 0``, so the state is held."""
    a, c, _ = SCAN_COEFFICIENTS[layout.core.name](F.linear(x, w_ih, b_ih), units, layout)
    if mask is not None:
        a, c = torch.where(mask, a, 1.0), torch.where(mask, c, 0.0)
    return a, c


def run_layer_torch(x, state, w_ih, w_hh, b_ih, b_hh, forget_bias, layout, mask=None, record=None, w_hr=None,
                    triton=False):
    """The pure-torch fallback: the gates for all steps at once, then :class:`_LoopScan` (with
    ``triton``: the Triton kernel, :class:`_TritonScan`)."""
    if record is not None:
        raise ValueError(f"the {'triton' if triton else 'torch'} scan records no gates; "
                         "gate_activations uses the reference backend")
    if layout.core.name in SCAN_COEFFICIENTS:
        keep, c = _coefficients(x, w_ih, b_ih, forget_bias, layout, mask)
    else:
        P = F.linear(x, w_ih, b_ih)  # (T, B, G)
        keep, write, _, _ = scan_gates(P, forget_bias, layout)
        c = write * P[..., layout.block("n")]  # (T, B, H)
        if mask is not None:  # past a sequence's end the state is held: a = 1, b = 0
            keep, c = torch.where(mask, keep, 1.0), torch.where(mask, c, 0.0)
    out = _scan(keep, c, state[0], triton)
    h_n = out[-1]
    return (out * mask if mask is not None else out), (h_n,)


def run_layer_triton(x, state, w_ih, w_hh, b_ih, b_hh, forget_bias, layout, mask=None, record=None, w_hr=None):
    """The Triton scan: :func:`run_layer_torch`'s gates (torch ops) and masks, the recurrence on
    :class:`_TritonScan`."""
    return run_layer_torch(x, state, w_ih, w_hh, b_ih, b_hh, forget_bias, layout, mask, record, w_hr, triton=True)


BACKENDS = {"reference": reference.run_layer, "torch": run_layer_torch, "fused_cpu": run_layer,
            "triton": run_layer_triton}


def check_name(name: str) -> str:
    if name != "auto" and name not in BACKENDS:
        choices = ", ".join(repr(k) for k in ["auto", *BACKENDS])
        raise ValueError(f"unknown backend {name!r}; choose one of {choices}")
    return name


def resolve(name: str, layout: Layout, x: Tensor):
    """The ``run_layer`` that runs ``layout`` (a scan core) on ``x`` (``name``: "auto" or a backend)."""
    check_name(name)
    if name != "auto":
        check = {"fused_cpu": why_not, "triton": triton_why_not}.get(name)
        reason = check(layout, x) if check is not None else None
        if reason is None and name != "reference" and _forward_ad():
            reason = "forward-mode AD (torch.func.jvp, forward_ad.dual_level) needs backend='reference' or 'auto'"
        if reason is not None:
            raise RuntimeError(f"backend {name!r} cannot run this call: {reason}")
        return BACKENDS[name]
    if _traced():  # plain torch ops: an exported program then needs no extension
        return BACKENDS["reference"]
    if torch.compiler.is_compiling():  # the scan ops are opaque calls with fake implementations
        return BACKENDS["fused_cpu"] if why_not(layout, x) is None else BACKENDS["reference"]
    if _transformed():
        _log_once("gated: the scan cores use the reference backend under a torch.func transform or forward-mode AD")
        return BACKENDS["reference"]
    if x.device.type == "cuda":
        reason = triton_why_not(layout, x)
        if reason is None:
            return BACKENDS["triton"]
        _log_once(f"gated: {layout.core.name} runs the pure-torch scan (a Python loop over time, slower than the "
                  f"Triton kernel): no Triton scan for {reason}")
        return BACKENDS["torch"]
    reason = why_not(layout, x)
    if reason is None:
        return BACKENDS["fused_cpu"]
    _log_once(f"gated: {layout.core.name} runs the pure-torch scan (a Python loop over time, slower than the "
              f"fused kernel): no fused scan for {reason}")
    return BACKENDS["torch"]
