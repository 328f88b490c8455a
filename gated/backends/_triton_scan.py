"""Triton kernels of the linear scan ``h_t = a_t h_{t-1} + b_t`` (the scan cores on CUDA tensors).

The scan cores' gates are torch ops over the whole sequence (:data:`gated.cores.SCAN_COEFFICIENTS`,
:func:`gated.cores.scan_gates`, differentiated by autograd); what is left is the diagonal
recurrence, which these two kernels run with the time loop inside the kernel (one launch per
direction and layer, instead of a Python loop of ``T`` steps):

- :func:`scan_fwd`: ``h_t = a_t h_{t-1} + b_t`` for ``t = 0 .. T-1`` from ``h0``; writes every
  ``h_t`` into ``OUT``;
- :func:`scan_bwd`: the reverse scan ``g_t = dout_t + a_{t+1} g_{t+1}``, ``da_t = g_t h_{t-1}``,
  ``db_t = g_t``, and ``dh0 = a_0 g_0``, in the order of operations of the torch loop
  (gated/backends/scan.py's ``_LoopScan``), so NaN and infinity propagate as there.

Each program owns ``BLOCK`` columns of the ``(T, N)`` row-major arrays (``N`` = every trailing
element, e.g. ``B * H``) and walks time sequentially; the pointers advance by ``N`` per step
(64-bit address arithmetic: no ``t * N`` product that could overflow 32 bits). The state and the
gradient carry are kept in the accumulation dtype: float32 for bfloat16/float16 inputs (widened
on load, rounded on store), else the inputs' own (float32, float64). Masks (PackedSequence) are
not the kernels' concern: the callers set ``a = 1``, ``b = 0`` past a sequence's end (the state is
held) and zero those outputs afterwards, as the torch backend does.

The functions are plain Python; :func:`kernels` wraps them with ``triton.jit`` (CUDA tensors) or
Triton's interpreter (CPU tensors under ``TRITON_INTERPRET=1``, for tests). As in
_triton_kernels.py they call only Triton builtins, so the interpreter runs them whatever imported
triton first.

Glossary: T time steps, N columns (every element of one step), BLOCK columns per program,
``g`` the gradient carry ``dL/dh_t``.
"""

from __future__ import annotations

import functools
import types

import torch
import triton.language as tl

from gated.backends import triton_gpu

_LOW = (torch.bfloat16, torch.float16)


def scan_fwd(A, B, H0, OUT, T, N, WIDEN: tl.constexpr, BLOCK: tl.constexpr):
    """``OUT_t = A_t OUT_{t-1} + B_t`` with ``OUT_{-1} = H0``, columns of this program; ``T >= 1``."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    inb = offs < N
    h = tl.load(H0 + offs, mask=inb, other=0.0)
    if WIDEN:  # bfloat16/float16 out: the state in float32
        h = h.to(tl.float32)
    else:
        h = h.to(OUT.dtype.element_ty)
    pa = A + offs
    pb = B + offs
    po = OUT + offs
    for _ in range(T):
        a = tl.load(pa, mask=inb, other=0.0).to(h.dtype)
        b = tl.load(pb, mask=inb, other=0.0).to(h.dtype)
        h = a * h + b
        tl.store(po, h.to(OUT.dtype.element_ty), mask=inb)
        pa += N
        pb += N
        po += N


def scan_bwd(DOUT, A, OUT, H0, DA, DB, DH0, T, N, LAST, WIDEN: tl.constexpr, BLOCK: tl.constexpr):
    """The reverse scan from ``t = T - 1`` (``LAST = (T - 1) N``, the last step's offset) down to 0:
    ``g += DOUT_t``, ``DA_t = g h_{t-1}``, ``DB_t = g``, ``g *= A_t``; then ``DH0 = g``. ``h_{t-1}``
    is read from ``OUT`` (``H0`` at ``t = 0``)."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    inb = offs < N
    if WIDEN:  # any bfloat16/float16 operand: the carry in float32
        g = tl.full([BLOCK], 0.0, dtype=tl.float32)
    else:
        g = tl.full([BLOCK], 0.0, dtype=DOUT.dtype.element_ty)
    h0 = tl.load(H0 + offs, mask=inb, other=0.0).to(g.dtype)
    pd = DOUT + LAST + offs
    pa = A + LAST + offs
    pp = OUT + LAST + offs - N  # h_{t-1}
    pda = DA + LAST + offs
    pdb = DB + LAST + offs
    for _ in range(T - 1):  # t = T - 1 .. 1
        g = g + tl.load(pd, mask=inb, other=0.0).to(g.dtype)
        prev = tl.load(pp, mask=inb, other=0.0).to(g.dtype)
        tl.store(pda, (g * prev).to(DA.dtype.element_ty), mask=inb)
        tl.store(pdb, g.to(DB.dtype.element_ty), mask=inb)
        g = g * tl.load(pa, mask=inb, other=0.0).to(g.dtype)
        pd -= N
        pa -= N
        pp -= N
        pda -= N
        pdb -= N
    g = g + tl.load(pd, mask=inb, other=0.0).to(g.dtype)  # t = 0: h_{-1} = h0
    tl.store(pda, (g * h0).to(DA.dtype.element_ty), mask=inb)
    tl.store(pdb, g.to(DB.dtype.element_ty), mask=inb)
    g = g * tl.load(pa, mask=inb, other=0.0).to(g.dtype)
    tl.store(DH0 + offs, g.to(DH0.dtype.element_ty), mask=inb)


_FUNCTIONS = (scan_fwd, scan_bwd)


@functools.cache
def kernels(interpret: bool) -> types.SimpleNamespace:
    """The kernels, jitted for the GPU or run by Triton's interpreter (CPU tensors)."""
    if interpret:
        from triton.runtime.interpreter import InterpretedFunction

        return types.SimpleNamespace(**{fn.__name__: InterpretedFunction(fn) for fn in _FUNCTIONS})
    import triton

    # no specialisation on the sizes' values (T == 1 would become a constant); N keeps its
    # divisibility hint, which the vectorised loads use
    return types.SimpleNamespace(**{fn.__name__: triton.jit(fn, do_not_specialize=["T", "LAST"])
                                    for fn in _FUNCTIONS})


def _block(n: int, interpret: bool) -> int:
    if interpret:  # each program runs in Python: one program where possible
        return min(4096, 1 << max(n - 1, 0).bit_length())
    return max(32, min(256, 1 << max(n - 1, 0).bit_length()))


def forward(a, b, h0):
    """Every state ``(T, N)`` of the scan of ``a``, ``b`` ``(T, N)`` (contiguous, ``T >= 1``) from ``h0``
    ``(N,)``; in the promoted dtype of ``a``, ``b`` and ``h0`` (as the torch loop's ``addcmul``)."""
    T, N = a.shape
    dtype = torch.promote_types(torch.promote_types(a.dtype, b.dtype), h0.dtype)
    out = torch.empty((T, N), dtype=dtype, device=a.device)
    interpret = a.device.type == "cpu"
    blk = _block(N, interpret)
    with triton_gpu.device_guard(a.device):  # Triton launches on the current device, not a's
        kernels(interpret).scan_fwd[(triton_cdiv(N, blk),)](a, b, h0, out, T, N, WIDEN=out.dtype in _LOW,
                                                            BLOCK=blk)
    return out


def backward(dout, a, out, h0, b_dtype):
    """``(da, db, dh0)`` of :func:`forward` given ``dout`` ``(T, N)``, in the dtypes of ``a``, ``b``, ``h0``."""
    T, N = a.shape
    da = torch.empty_like(a)
    db = torch.empty((T, N), dtype=b_dtype, device=a.device)
    dh0 = torch.empty_like(h0)
    interpret = a.device.type == "cpu"
    blk = _block(N, interpret)
    widen = any(t.dtype in _LOW for t in (dout, a, out, h0))
    with triton_gpu.device_guard(a.device):
        kernels(interpret).scan_bwd[(triton_cdiv(N, blk),)](dout.contiguous(), a, out, h0, da, db, dh0, T, N,
                                                            (T - 1) * N, WIDEN=widen, BLOCK=blk)
    return da, db, dh0


def triton_cdiv(n: int, d: int) -> int:
    return (n + d - 1) // d
