"""GPU backend: Triton kernels for the gate maths, cuBLAS for the matmuls, a CUDA graph per loop.

Supports what the fused CPU backend supports: every core in its plain (``-``, ``C``, ``U``) and
sigmoid-refine (``R``, ``UR``) variants, ``proj_size``, masks (PackedSequence), in float32,
float64, and bfloat16/float16 (as parameters, or under ``torch.autocast``), and LayerNorm, zoneout
and recurrent dropout (gated/options.py; with ``proj_size`` zoneout of h and the dropout mask act
on the projected h, as gated/csrc/projection.h's).
Same signature and results as :func:`gated.backends.reference.run_layer` (tests/test_triton.py,
tests/test_triton_options.py). ``"auto"`` picks it
for CUDA tensors when triton imports (``pip install 'gated[gpu]'``).

Per layer and direction, forward:

1. the input projection of all steps as one GEMM, ``x W_ih^T + b`` into ``(T, B, G)``;
2. per step, the recurrent product ``h_{t-1} W_hh^T`` (``torch.mm``: cuBLAS) into a fixed
   ``(B, G)`` buffer, then one Triton kernel for the gate maths, which writes ``h_t``, ``c_t``
   and, when training, what backward reads: the activations into ``A`` ``(T, B, G)`` (over the
   input projection, unless ``A`` is float32 and the projection is not), ``c_t`` (or the GRU's
   ``W_hn h + b_hn``) and, in low precision, GRU/MGU's ``h_t`` (gated/backends/_triton_kernels.py).

Backward walks time in reverse with one Triton kernel and one ``torch.mm`` per step, writing the
gradients of every step's pre-activations into one ``(T, B, G)`` buffer; the weight gradients are
then single large GEMMs (``dA^T [x | h_{t-1}]``), as in the CPU backend. A differentiable gradient
(``create_graph=True``) is recomputed on the reference backend instead (fused_cpu's
``_differentiable_backward``).

**CUDA graphs.** The per-step launches of a loop only touch a fixed per-shape workspace
(:class:`_Workspace`) and the per-call arrays through an offset table (see _triton_kernels.py),
so on CUDA the second call of a shape captures the loop into a CUDA graph and every later call
replays it: one launch per loop instead of two to four per step. ``GATED_CUDA_GRAPHS=1`` turns
this on; it is off by default until it has run on a GPU (this code was written without one). Graphs are never used on CPU tensors (Triton's interpreter) or inside another
capture; a failed capture falls back to the launches, logged once.

**Mixed precision.** Under ``torch.autocast`` (or with bfloat16/float16 tensors) the GEMMs run in
the low-precision dtype (cuBLAS accumulates in float32), with their outputs (the input projection,
the per-step products) and operands (``h_{t-1}``, ``m_t`` with projections, the pre-activations'
gradients ``dA``) in it; the recurrent state (``c``, and ``h`` of GRU/MGU) and the gate maths stay
float32. Everything that backward reads elementwise is saved in float32: the activations ``A``
(in bfloat16 a forget gate above about 0.998 is exactly 1.0, which would zero ``f (1 - f)`` and
the refine terms of exactly the saturated units), ``c_t`` (or ``W_hn h + b_hn``), and GRU/MGU's
``h_t`` (a float32 copy beside the rounded outputs). ``dA`` is computed in float32 from them and
rounded once into the GEMMs' dtype (a relative rounding: bfloat16 has float32's exponent range;
float16 needs loss scaling there, as under any autocast); bias and ``forget_bias`` gradients are
summed from it in float32. The outputs and final states are in the low-precision dtype, as
torch.nn.LSTM/GRU return them under autocast; every gradient comes back in its tensor's dtype.
Training keeps, per step and batch row, ``4 G + 4 H`` bytes (GRU/MGU ``4 G + 8 H``) besides the
outputs, as float32 does; the forward's input projection is a separate low-precision array.

**Zoneout and recurrent dropout** (as the CPU kernels, gated/csrc/cells.h and time_loop.h): the
masks reach the kernels through table slots in the state dtype (``RM_`` ``(B, H)``, ``ZH_``/``ZC_``
``(T, B, H)``), eval zoneout's ``p`` through the workspace's ``zp``; which of off/mask/p each state
uses is in the spec (a constexpr). Forward: ``s_t = s~ + z (s_{t-1} - s~)`` after the cell (the
LSTM's ``h~`` from the un-zoned ``c~``; with zoneout of ``h`` the LSTM keeps ``h`` in a ring of its
own), the next product's input ``h_t * rmask``. Backward: ``dh_{t-1} = (dA_t W_hh) * rmask +
direct``, ``z dh_t`` (and ``z dc_t``) passed straight to step ``t - 1``, the LSTM's ``c~_t``
recomputed from the activations when ``c`` is zoned; ``dW_hh`` from ``h_0 * rmask`` and
``out * rmask``.

**LayerNorm** (as the fused CPU backend): the input side ``LN_ih(x W_ih^T) + b_ih + b_hh`` (GRU/MGU
without ``b_hn``) of all steps is torch ops before the loop (:func:`_input_side`, differentiated by
autograd) and replaces ``x W_ih^T + b`` as the kernels' ``PX``. Each step's ``h W_hh^T`` and the
LSTM's ``c~`` (for ``h = o tanh(LN_c(c~))``) are normalised inside the gate kernels, which then run
one program per batch row (BLOCK >= H) instead of flat slices of ``B x H``: the norms reduce over
the row, and the cell norm sits between ``c~`` and ``h`` in the kernel, so a separate statistics
pass (a kernel, or torch ops between the GEMM and the kernel) would still leave the cell norm to
split the kernel in two; one launch per step stays one. Forward saves ``xhat`` and ``rstd`` of both
norms (float32 under bfloat16/float16); backward takes the pre-activations' gradients back through
LN_hh per row into the next product's input and ``dH`` (the raw product's gradients, ``W_hh``'s
GEMM operand), and the cell norm's ``dy`` into ``dH``'s tail; the norms' gains and biases are sums
here (:func:`_ln_grads`). With projections forward's saved ``m`` is one flat state-dtype buffer
``[statistics | m_t (T, B, H)]`` and backward's ``dH`` ``[raw product's gradients | cell norm's
dy | dL/dh~_t (T, B, P)]``, as the CPU operator's.

**CPU tensors** run only through Triton's interpreter, when ``TRITON_INTERPRET=1``: slow, for
tests (CI has no GPU). The same kernels and the same loop run as on the GPU.

Glossary: T time, B batch, I input features, H hidden_size, P the width of h (proj_size, else
H), G gate rows.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import logging
import os
import types

import torch
from torch import Tensor

from gated.backends import _ops, fused_cell, fused_cpu, reference
from gated.backends._context import builds_graph
from gated.cores import Layout
from gated.gates import sigmoid_gate

logger = logging.getLogger("gated")

LSTM, GRU, MGU = 0, 1, 2  # the core ids of fused_cell.kernel_ids, which the kernels share
_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
_LOW = (torch.bfloat16, torch.float16)
_state: dict = {}  # "error": why triton could not be imported (None: it could)
_poison = [False]  # tests: every buffer the backend allocates starts as NaN
_said: set[str] = set()


def import_error() -> str | None:
    """None if triton and the kernels import, else the reason (one line)."""
    if "error" not in _state:
        try:
            from gated.backends import _triton_kernels  # noqa: F401  (imports triton)

            _state["error"] = None
        except Exception as e:  # ImportError, or a broken install
            _state["error"] = f"{type(e).__name__}: {e}".splitlines()[0]
    return _state["error"]


def available() -> bool:
    """Whether triton is installed and the kernels import (checked once, on first use)."""
    return import_error() is None


def interpreting() -> bool:
    """Whether ``TRITON_INTERPRET`` asks for Triton's interpreter (as triton reads it)."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "yes", "on", "y")


# torch.compile calls these at trace time and keeps the answers as constants
available._dynamo_marked_constant = True
interpreting._dynamo_marked_constant = True


def why_not(layout: Layout, x: Tensor) -> str | None:
    """None if this backend can run the call, else the reason (for the one-time log)."""
    v = layout.variant
    if v.primary is not sigmoid_gate or v.auxiliary not in (None, "refine"):
        return f"variant {v.name!r} (only -, C, U, R, UR have fused kernels)"
    if x.device.type == "cpu":
        if not interpreting():
            return "CPU tensors (they run the Triton kernels only in Triton's interpreter, TRITON_INTERPRET=1)"
    elif x.device.type != "cuda":
        return f"device {x.device.type!r}"
    elif interpreting():  # the interpreter copies each argument to the host: the offset table would miss
        return "CUDA tensors under TRITON_INTERPRET=1 (the interpreter runs this backend on CPU tensors only)"
    if x.dtype not in _DTYPES:
        return f"dtype {x.dtype}"
    if not available():
        return f"triton could not be imported ({import_error()}; pip install 'gated[gpu]')"
    return None


def set_poison(on: bool) -> None:
    """Tests: fill every buffer the backend allocates (and its workspaces, at every call) with NaN,
    so that a value the kernels forget to write shows up."""
    _poison[0] = bool(on)


def _empty(shape, dtype, device) -> Tensor:
    t = torch.empty(shape, dtype=dtype, device=device)
    return t.fill_(float("nan")) if _poison[0] and dtype.is_floating_point else t


def device_guard(device: torch.device):
    """``device`` as the current CUDA device while the backend allocates and launches: Triton launches
    on the current device, not on its arguments' (tensors on ``cuda:1`` while ``cuda:0`` is current
    would run on cuda:0's stream with cuda:1's pointers). No CUDA call for CPU tensors (the interpreter)."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def _on_input_device(impl):
    """Run an operator's implementation under :func:`device_guard` of its first tensor's device
    (the scan's launches take the same guard, gated/backends/_triton_scan.py)."""

    @functools.wraps(impl)
    def run(*args, **kwargs):
        with device_guard(args[0].device):
            return impl(*args, **kwargs)

    return run


def _state_dtype(cd: torch.dtype) -> torch.dtype:
    return torch.float32 if cd in _LOW else cd


def compute_dtype(x: Tensor) -> torch.dtype:
    """The GEMMs' dtype: autocast's low-precision dtype where autocast is on, else ``x``'s."""
    dev = x.device.type
    if x.dtype != torch.float64 and torch.is_autocast_enabled(dev):
        return torch.get_autocast_dtype(dev)
    return x.dtype


def _split_biases(b_ih, b_hh, core: int, H: int):
    """torch's two biases as the loop takes them (as in recurrence.cpp): ``b_ih + b_hh`` added to
    the input projection, except that GRU/MGU keep the candidate's ``b_hn`` apart (it sits
    inside the reset product)."""
    if b_ih is None:
        return None, None
    if core == LSTM:
        return b_ih + b_hh, None
    kn = 2 if core == GRU else 1
    rec = torch.cat([b_hh[: kn * H], torch.zeros_like(b_hh[kn * H:(kn + 1) * H]), b_hh[(kn + 1) * H:]])
    return b_ih + rec, b_hh[kn * H:(kn + 1) * H]


# ---------------------------------------------------------------- the loops and their workspaces

@dataclasses.dataclass(frozen=True)
class _Spec:
    """Everything that fixes a loop's sequence of launches (one workspace, one graph, per spec)."""

    backward: bool
    core: int
    refine: bool
    has_fb: bool
    has_bhn: bool
    masked: bool
    save: bool
    proj: bool
    T: int
    B: int
    G: int
    H: int
    P: int
    cd: torch.dtype
    device: torch.device
    stream: int  # the CUDA stream the calls run on (0 on the CPU)
    zh: int = 0  # zoneout of h: 0 off, 1 a keep mask per step (training), 2 the probability (eval)
    zc: int = 0  # zoneout of c (LSTM), likewise
    rdrop: bool = False  # recurrent dropout: the products read h_{t-1} times a (B, H) mask
    ln: bool = False  # LayerNorm: one batch row per program (the kernels normalise over it)


def _block(n: int, interpret: bool) -> int:
    # the interpreter runs each program in Python: one program per step where possible
    if interpret:
        return min(4096, 1 << max(n - 1, 0).bit_length())
    return 256


def _grid(s: _Spec, interpret: bool) -> tuple[int, tuple[int]]:
    """The gate kernels' BLOCK and grid: with LayerNorm one program per batch row (BLOCK >= H),
    else flat slices of the ``B x H`` units."""
    if s.ln:
        return 1 << max(s.H - 1, 0).bit_length(), (s.B,)
    blk = _block(s.B * s.H, interpret)
    return blk, ((s.B * s.H + blk - 1) // blk,)


class _Workspace:
    """The fixed buffers of one loop shape: states, the per-step products, copies of the weights
    and inputs, and the offset table through which the kernels reach the per-call arrays (from
    ``base`` for those of the compute dtype, from ``sbase`` for those of the state dtype). The
    loop (:meth:`loop`) reads nothing else, so a CUDA graph of it serves every call."""

    def __init__(self, spec: _Spec):
        from gated.backends import _triton_kernels as tk

        self.spec, s = spec, spec
        self.interpret = s.device.type == "cpu"  # CPU tensors: Triton's interpreter (why_not checks TRITON_INTERPRET)
        self.k = tk.kernels(self.interpret)
        self.graphs = s.device.type == "cuda" and not self.interpret  # CUDA graphs may capture the loop
        self.slots = tk.SLOTS
        cd, sd, dev = s.cd, _state_dtype(s.cd), s.device
        self.sd = sd
        self.base = torch.zeros(1, dtype=cd, device=dev)  # the table's offsets count from here (compute dtype)
        self.sbase = torch.zeros(1, dtype=sd, device=dev)  # or from here (the state-dtype slots)
        self.state_slots = frozenset(tk.STATE_SLOTS)
        self.tab = torch.zeros(tk.SLOTS, dtype=torch.int64, device=dev)
        self.w_hh = torch.empty(s.G, s.P, dtype=cd, device=dev)
        self.w_hr = torch.empty(s.P, s.H, dtype=cd, device=dev) if s.proj else None
        self.len = torch.zeros(s.B, dtype=torch.int64, device=dev)
        self.zp = torch.zeros(2, dtype=sd, device=dev)  # eval zoneout's (p_h, p_c), exact in the state dtype
        B, H, P, G = s.B, s.H, s.P, s.G
        if not s.backward:
            self.gh = torch.empty(B, G, dtype=cd, device=dev)  # h_{t-1} W_hh^T
            self.hs = torch.empty(B, P, dtype=cd, device=dev)  # h_{t-1}, the product's input
            self.ms = torch.empty(B, H, dtype=cd, device=dev) if s.proj else None  # m_t
            self.ring = torch.empty(2, B, H, dtype=sd, device=dev)  # c (LSTM) or h (GRU/MGU), t % 2
            # LSTM with zoneout of h: h is a state of its own (h_{t-1} enters h_t), t % 2
            lstm_zh = s.core == LSTM and s.zh and not s.proj
            self.hring = torch.empty(2, B, H, dtype=sd, device=dev) if lstm_zh else None
            # with projections zoneout acts on the projected h (proj_out): h_0 for its first step
            self.h0p = torch.empty(B, P, dtype=cd, device=dev) if s.proj and s.zh else None
            self.fb = torch.empty(H, dtype=sd, device=dev)
            self.bhn = torch.empty(H, dtype=sd, device=dev)
            self.lnb = torch.empty(G, dtype=sd, device=dev) if s.ln else self.fb  # LN_hh's bias
        else:
            self.src = torch.empty(B, G, dtype=cd, device=dev)  # dA_t (LSTM) or S_t: the product's input
            self.g = torch.empty(B, P, dtype=cd, device=dev)  # src W_hh
            self.dhn = torch.empty(B, P, dtype=sd, device=dev)  # dh_n
            self.carry = torch.empty(2, B, P, dtype=sd, device=dev)  # the part of dh bypassing W_hh, t % 2
            self.dc = torch.empty(B, H, dtype=sd, device=dev)  # dc_t, in place
            self.h0 = torch.empty(B, H if s.core == LSTM else P, dtype=sd, device=dev)  # c0 (LSTM) or h0
            self.dhs = torch.empty(B, P, dtype=cd, device=dev) if s.proj else None  # dh_t, projections
            self.dm = torch.empty(B, H, dtype=cd, device=dev) if s.proj else None  # dh_t W_hr
        # LayerNorm's gains (LN_hh: G; the LSTM cell norm: H) and the cell norm's bias, state dtype;
        # without it any tensor stands for the unused pointers
        self.lnw = torch.empty(G, dtype=sd, device=dev) if s.ln else self.zp
        self.lncw = torch.empty(H, dtype=sd, device=dev) if s.ln and s.core == LSTM else self.zp
        self.lncb = torch.empty(H, dtype=sd, device=dev) if s.ln and s.core == LSTM else self.zp
        self.calls = 0  # loops run by their launches
        self.graph = None  # the replay function, once captured

    def poison(self) -> None:
        for t in vars(self).values():
            if isinstance(t, Tensor) and t.dtype.is_floating_point and t is not self.base and t is not self.sbase:
                t.fill_(float("nan"))

    def write_table(self, arrays: dict[int, Tensor]) -> None:
        """Point the table's slots at this call's arrays (offsets in elements from ``base``, or
        from ``sbase`` for the state-dtype slots)."""
        offs = [0] * self.slots
        for slot, t in arrays.items():
            if t is not None and t.numel() > 0:
                base = self.sbase if slot in self.state_slots else self.base
                assert t.dtype == base.dtype and t.is_contiguous(), (slot, t.dtype, base.dtype)
                delta = t.data_ptr() - base.data_ptr()
                assert delta % base.element_size() == 0
                offs[slot] = delta // base.element_size()
        if self.tab.device.type == "cpu":
            self.tab.copy_(torch.tensor(offs, dtype=torch.int64))
        elif _capturing(self.tab.device):  # inside a caller's graph: values baked into fills
            for slot, v in enumerate(offs):
                self.tab[slot].fill_(v)
        else:  # pinned and asynchronous: no synchronisation with the stream (the host allocator keeps
            # the pinned block until the copy has run)
            self.tab.copy_(torch.tensor(offs, dtype=torch.int64).pin_memory(), non_blocking=True)

    def run(self) -> None:
        """Run the loop: by its CUDA graph where there is one, else by its launches."""
        if _capturing(self.spec.device):  # inside a caller's capture: the launches go into that graph
            self.loop()
            return
        if self.graph is not None:
            self.graph()
            return
        if self.calls >= 1 and self.graphs and _graphs_enabled():
            try:
                self.graph = _capture(self)
            except Exception as e:  # never fatal: the launches do the same work
                _graphs_failed(e)
            else:
                self.graph()
                return
        self.calls += 1
        self.loop()

    def loop(self) -> None:
        (self._backward_loop if self.spec.backward else self._forward_loop)()

    def _forward_loop(self) -> None:
        s, k = self.spec, self.k
        B, H, G, P = s.B, s.H, s.G, s.P
        blk, grid = _grid(s, self.interpret)
        blk_p = _block(B * P, self.interpret)
        grid_p = ((B * P + blk_p - 1) // blk_p,)
        w_t = self.w_hh.t()
        kz, kn = (1, 2) if s.core == GRU else (0, 1)
        for t in range(s.T):
            torch.mm(self.hs, w_t, out=self.gh)
            prev, new = self.ring[(t + 1) % 2], self.ring[t % 2]  # t = 0 reads ring[1], the initial state
            if s.core == LSTM:
                hp, hn = (self.hring[(t + 1) % 2], self.hring[t % 2]) if self.hring is not None else (prev, new)
                # with projections zoneout of h and the dropout mask act on the projected h (proj_out)
                k.lstm_fwd[grid](self.tab, self.base, self.sbase, self.gh, prev, new, self.ms if s.proj else self.hs,
                                 self.fb, self.len, hp, hn, self.zp, self.lnw, self.lnb, self.lncw, self.lncb, t,
                                 B, H, G, REFINE=s.refine, HAS_FB=s.has_fb, MASKED=s.masked, SAVE=s.save,
                                 PROJ=s.proj, ZH=0 if s.proj else s.zh, ZC=s.zc, RDROP=s.rdrop and not s.proj,
                                 LN=s.ln, BLOCK=blk)
                if s.proj:
                    torch.mm(self.ms, self.w_hr.t(), out=self.hs)
                    k.proj_out[grid_p](self.tab, self.base, self.sbase, self.hs, self.h0p if s.zh else self.hs,
                                       self.len, self.zp, t, B, P, FIRST=t == 0, MASKED=s.masked, ZH=s.zh,
                                       RDROP=s.rdrop, BLOCK=blk_p)
            else:
                k.gru_fwd[grid](self.tab, self.base, self.sbase, self.gh, prev, new, self.hs, self.bhn, self.fb,
                                self.len, self.zp, self.lnw, self.lnb, t, B, H, G, GRU=s.core == GRU, KZ=kz,
                                KN=kn, KR=kn + 1, REFINE=s.refine, HAS_FB=s.has_fb, HAS_BHN=s.has_bhn,
                                MASKED=s.masked, SAVE=s.save, SAVE_H=s.save and self.sd != s.cd, ZH=s.zh,
                                RDROP=s.rdrop, LN=s.ln, BLOCK=blk)

    def _backward_loop(self) -> None:
        s, k = self.spec, self.k
        B, H, G, P, T = s.B, s.H, s.G, s.P, s.T
        blk, grid = _grid(s, self.interpret)
        blk_p = _block(B * P, self.interpret)
        grid_p = ((B * P + blk_p - 1) // blk_p,)
        kz, kn = (1, 2) if s.core == GRU else (0, 1)
        for t in range(T - 1, -1, -1):
            last = t == T - 1
            carry_in, carry_out = self.carry[(t + 1) % 2], self.carry[t % 2]
            if s.core == LSTM:
                d2 = self.dhn if last else carry_in  # dh_n, or the carry (rows past their end, zoneout of h)
                has_d2 = last or s.masked or bool(s.zh)
                if s.proj:
                    k.proj_dh[grid_p](self.tab, self.base, self.sbase, self.g, d2, self.dhs, carry_out, self.len,
                                      self.zp, t, B, P, HAS_D1=not last, HAS_D2=has_d2, MASKED=s.masked, ZH=s.zh,
                                      RDROP=s.rdrop, BLOCK=blk_p)
                    torch.mm(self.dhs, self.w_hr, out=self.dm)
                k.lstm_bwd[grid](self.tab, self.base, self.sbase, self.h0, self.g, d2, self.dc, self.src,
                                 carry_out, self.dm if s.proj else self.dc, self.len, self.zp, self.lnw, self.lncw,
                                 self.lncb, t, B, H, G, REFINE=s.refine, HAS_D1=not last and not s.proj,
                                 HAS_D2=has_d2 and not s.proj, MASKED=s.masked, FIRST=t == 0, PROJ=s.proj,
                                 ZH=0 if s.proj else s.zh, ZC=s.zc, RDROP=s.rdrop and not s.proj, LN=s.ln, BLOCK=blk)
            else:
                k.gru_bwd[grid](self.tab, self.base, self.sbase, self.h0, self.g, self.dhn if last else carry_in,
                                self.src, carry_out, self.len, self.zp, self.lnw, t, B, H, G, GRU=s.core == GRU,
                                KZ=kz, KN=kn, KR=kn + 1, REFINE=s.refine, HAS_D1=not last, MASKED=s.masked,
                                FIRST=t == 0, ZH=s.zh, RDROP=s.rdrop, LN=s.ln, BLOCK=blk)
            torch.mm(self.src, self.w_hh, out=self.g)

    def dh0(self, rmask: Tensor | None = None) -> Tensor:
        """dL/dh_0 after the backward loop, in the state dtype: the last product (times the
        recurrent-dropout mask ``rmask``) plus the carry (rows past their end, zoneout of h)."""
        s = self.spec
        g = self.g.to(self.sd, copy=True)
        if rmask is not None:
            g = g * rmask
        if s.core != LSTM or s.masked or s.zh:
            return g + self.carry[0]
        return g


_workspaces: collections.OrderedDict = collections.OrderedDict()
_MAX_WORKSPACES = 64  # least recently used ones (and their graphs) go beyond this
_graph_pools: dict = {}


def _workspace(spec: _Spec) -> _Workspace:
    ws = _workspaces.get(spec)
    if ws is None:
        ws = _workspaces[spec] = _Workspace(spec)
        while len(_workspaces) > _MAX_WORKSPACES:
            _workspaces.popitem(last=False)
    else:
        _workspaces.move_to_end(spec)
    if _poison[0]:
        ws.poison()
    return ws


def empty_cache() -> None:
    """Drop every workspace and CUDA graph (they are rebuilt on the next call)."""
    _workspaces.clear()
    _graph_pools.clear()


def _capturing(device: torch.device) -> bool:
    """Whether the current CUDA stream is being captured (by a caller's graph, or by ours)."""
    return device.type == "cuda" and torch.cuda.is_current_stream_capturing()


def _graphs_enabled() -> bool:
    # opt-in until the graphs have been checked on a GPU (scripts/gpu_check.sh): never a default
    # that no machine has run
    return os.environ.get("GATED_CUDA_GRAPHS", "0") == "1" and "graphs" not in _said


def _graphs_failed(e: Exception) -> None:
    _said.add("graphs")  # no further attempts in this process
    logger.warning("gated: capturing the Triton backend's time loop into a CUDA graph failed (%s: %s); "
                   "running its launches instead", type(e).__name__, str(e).splitlines()[0] if str(e) else "")


def _capture(ws: _Workspace):
    """Capture ``ws``'s loop (already run once: the kernels are compiled) into a CUDA graph and
    return its replay. The graphs of one stream share a memory pool: they hold no tensors, only
    what cuBLAS allocates, and one stream replays them one at a time."""
    key = (ws.spec.device, ws.spec.stream)
    if key not in _graph_pools:
        side = torch.cuda.Stream(ws.spec.device)  # the capture stream, warmed up once: cuBLAS sets up
        side.wait_stream(torch.cuda.current_stream(ws.spec.device))  # its handle and workspace there
        with torch.cuda.stream(side):
            torch.mm(ws.w_hh, ws.w_hh.t())
        torch.cuda.current_stream(ws.spec.device).wait_stream(side)
        _graph_pools[key] = (torch.cuda.graph_pool_handle(), side)
    pool, side = _graph_pools[key]
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=pool, stream=side, capture_error_mode="thread_local"):
        ws.loop()
    return graph.replay


def _spec(backward, core, refine, has_fb, has_bhn, masked, save, proj, T, B, G, H, P, x, opt=None,
          ln: bool = False) -> _Spec:
    stream = torch.cuda.current_stream(x.device).cuda_stream if x.device.type == "cuda" else 0
    zh = zc = 0
    rdrop = False
    if opt is not None:
        rmask, mh, mc, ph, pc = opt
        zh, zc, rdrop = (1 if mh is not None else 2 if ph else 0), (1 if mc is not None else 2 if pc else 0), \
            rmask is not None
    return _Spec(backward, core, refine, has_fb, has_bhn, masked, save, proj, T, B, G, H, P, x.dtype, x.device,
                 stream, zh, zc, rdrop, ln)


def _ln_slots(ls: Tensor, T: int, B: int, G: int, H: int, core: int) -> dict:
    """The table's slots of LayerNorm's saved statistics, views of the flat ``ls`` (state dtype)
    ``[xhat (T, B, G) | rstd (T, B) | LSTM: chat (T, B, H) | rstd (T, B)]`` (fused_cpu's layout),
    which with projections ``m_t`` (T, B, H) follows."""
    from gated.backends._triton_kernels import CH_, MS_, RC_, RS_, XH_

    n, size = T * B, _ln_size(T, B, G, H, core)
    slots = {XH_: ls[:n * G], RS_: ls[n * G:n * (G + 1)]}
    if core == LSTM:
        slots |= {CH_: ls[n * (G + 1):n * (G + 1 + H)], RC_: ls[n * (G + 1 + H):size], MS_: ls[size:]}
    return slots


def _ln_size(T: int, B: int, G: int, H: int, core: int) -> int:
    """The LayerNorm statistics' part of the saved flat buffer (see :func:`_ln_slots`)."""
    return T * B * (G + 1) + (T * B * (H + 1) if core == LSTM else 0)


def _ln_saved_size(T: int, B: int, G: int, H: int, core: int, proj: bool) -> int:
    """The forward's saved flat buffer with LayerNorm: the statistics, then with projections m_t."""
    return _ln_size(T, B, G, H, core) + (T * B * H if proj else 0)


def _dh_size(T: int, B: int, G: int, H: int, P: int, core: int, ln: bool, proj: bool) -> int:
    """The backward's flat ``dH``'s size (see :func:`_dh_parts`)."""
    return T * B * ((G + (H if core == LSTM else 0) if ln else 0) + (P if proj else 0))


def _dh_parts(dH: Tensor, T: int, B: int, G: int, H: int, P: int, core: int, ln: bool, proj: bool) -> dict:
    """The backward's flat ``dH`` by slot: with LayerNorm ``[the raw recurrent product's gradients
    (T, B, G) | LSTM: the cell norm's dy (T, B, H)]``, with projections then ``dL/dh~_t`` (T, B, P)."""
    from gated.backends._triton_kernels import DH_, DP_, DYC_

    n = T * B
    parts = {DP_: dH[dH.numel() - n * P:]} if proj else {}
    if ln:
        parts |= {DH_: dH[:n * G]} | ({DYC_: dH[n * G:n * (G + H)]} if core == LSTM else {})
    return parts


def _set_options(ws: _Workspace, opt, arrays: dict) -> None:
    """The options' per-call arrays into the table's slots, the eval probabilities into ``ws.zp``."""
    from gated.backends._triton_kernels import RM_, ZC_, ZH_

    rmask, mh, mc, ph, pc = opt
    arrays.update({RM_: rmask, ZH_: mh, ZC_: mc})
    if ws.spec.zh == 2 or ws.spec.zc == 2:
        ws.zp[0].fill_(ph)
        ws.zp[1].fill_(pc)


# ---------------------------------------------------------------- operators

def _load(ws: _Workspace, core: int, w_hh: Tensor, w_hr: Tensor | None, lengths: Tensor | None,
          lnw: Tensor | None, lncw: Tensor | None, lncb: Tensor | None) -> None:
    """Copy what forward and backward both read into the workspace: the recurrent weights, the
    lengths and the LayerNorms' weights (the LSTM's cell norm's bias too)."""
    ws.w_hh.copy_(w_hh)
    if lnw is not None:
        ws.lnw.copy_(lnw)
        if core == LSTM:
            ws.lncw.copy_(lncw)
            ws.lncb.copy_(lncb)
    if w_hr is not None:
        ws.w_hr.copy_(w_hr)
    if lengths is not None:
        ws.len.copy_(lengths)


@_on_input_device
def _forward_impl(x: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor | None, b_hh: Tensor | None,
                  fb: Tensor | None, h0: Tensor, c0: Tensor | None, lengths: Tensor | None,
                  w_hr: Tensor | None, core: int, refine: bool, save: bool, rmask: Tensor | None = None,
                  zh: Tensor | None = None, zc: Tensor | None = None, ph: float = 0.0, pc: float = 0.0,
                  lnw: Tensor | None = None, lnb: Tensor | None = None, lncw: Tensor | None = None,
                  lncb: Tensor | None = None):
    T, B, I = x.shape
    G, P = w_hh.shape
    H = P if w_hr is None else w_hr.shape[1]
    cd, dev = x.dtype, x.device
    sd = _state_dtype(cd)
    px = _empty((T, B, G), cd, dev)  # the pre-activations (a GEMM's output: compute dtype)
    if w_ih is None:  # x is the input side (LayerNorm, :func:`_input_side`); b_hh: GRU/MGU's b_hn
        kn = 2 if core == GRU else 1
        b_hn = None if b_hh is None or core == LSTM else b_hh[kn * H:(kn + 1) * H]
        px.copy_(x)  # a copy: the kernel overwrites it with the activations
    else:
        bias_x, b_hn = _split_biases(b_ih, b_hh, core, H)
        x2, px2 = x.reshape(T * B, I), px.view(T * B, G)
        if bias_x is None:
            torch.mm(x2, w_ih.t(), out=px2)
        else:
            torch.addmm(bias_x.to(cd), x2, w_ih.t(), out=px2)
    # what backward reads elementwise is kept in the state dtype: the activations (the kernel
    # overwrites the pre-activations with them where the dtypes agree), c_t or W_hn h + b_hn,
    # and GRU/MGU's h_t, which the outputs hold unless they are rounded
    A = (px if sd == cd else _empty((T, B, G), sd, dev)) if save else x.new_empty(0)
    aux = _empty((T, B, H), sd, dev) if save else x.new_empty(0)
    hf = _empty((T, B, H), sd, dev) if save and core != LSTM and sd != cd else x.new_empty(0)
    out = _empty((T, B, P), cd, dev)
    m = _empty((T, B, H), cd, dev) if save and w_hr is not None else x.new_empty(0)
    if save and lnw is not None:  # LayerNorm's statistics (then m_t, with projections) instead
        m = _empty((_ln_saved_size(T, B, G, H, core, w_hr is not None),), sd, dev)
    opt = (rmask, zh, zc, ph, pc)
    ws = _workspace(_spec(False, core, refine, fb is not None, b_hn is not None, lengths is not None, save,
                          w_hr is not None, T, B, G, H, P, x, opt, lnw is not None))
    _load(ws, core, w_hh, w_hr, lengths, lnw, lncw, lncb)
    if lnw is not None:
        ws.lnb.copy_(lnb)
    if fb is not None:
        ws.fb.copy_(fb)
    if b_hn is not None:
        ws.bhn.copy_(b_hn)
    ws.hs.copy_(h0 if rmask is None else h0 * rmask)
    ws.ring[1].copy_(c0 if core == LSTM else h0)
    if ws.hring is not None:
        ws.hring[1].copy_(h0)
    if ws.h0p is not None:
        ws.h0p.copy_(h0)
    from gated.backends._triton_kernels import A_, AUX_, HF_, M_, OUT_, PX_

    arrays = {PX_: px, A_: A, OUT_: out, AUX_: aux, M_: None if lnw is not None else m, HF_: hf}
    if save and lnw is not None:
        arrays |= _ln_slots(m, T, B, G, H, core)
    _set_options(ws, opt, arrays)
    ws.write_table(arrays)
    ws.run()
    if lengths is None:
        h_n = out[T - 1].clone()
    else:  # each sequence's output at its last step
        h_n = out[(lengths - 1).clamp_min(0), torch.arange(B, device=dev)]
    c_n = ws.ring[(T - 1) % 2].to(cd, copy=True) if core == LSTM else x.new_empty(0)
    return out, h_n, c_n, A, aux, m, hf


@_on_input_device
def _backward_impl(dout: Tensor, dh_n: Tensor, dc_n: Tensor | None, A: Tensor, aux: Tensor, hf: Tensor,
                   out: Tensor, h0: Tensor, c0: Tensor | None, w_hh: Tensor, lengths: Tensor | None,
                   w_hr: Tensor | None, core: int, refine: bool, rmask: Tensor | None = None,
                   zh: Tensor | None = None, zc: Tensor | None = None, ph: float = 0.0, pc: float = 0.0,
                   ls: Tensor | None = None, lnw: Tensor | None = None, lncw: Tensor | None = None,
                   lncb: Tensor | None = None):
    T, B, G = A.shape
    P = w_hh.shape[1]
    H = P if w_hr is None else w_hr.shape[1]
    cd, dev = w_hh.dtype, A.device  # A, aux and hf are in the state dtype
    # the pre-activations' gradients are the weight GEMMs' operands: compute dtype, each element
    # computed in the state dtype and rounded once (relative precision: bfloat16 keeps float32's
    # exponent, so small gradients of saturated gates stay representable)
    dA = _empty((T, B, G), cd, dev)
    dghn = _empty((T, B, H), cd, dev) if core != LSTM else w_hh.new_empty(0)
    dH = _empty((_dh_size(T, B, G, H, P, core, lnw is not None, w_hr is not None),), cd, dev)
    opt = (rmask, zh, zc, ph, pc)
    ws = _workspace(_spec(True, core, refine, False, False, lengths is not None, True, w_hr is not None,
                          T, B, G, H, P, w_hh, opt, lnw is not None))
    _load(ws, core, w_hh, w_hr, lengths, lnw, lncw, lncb)
    ws.dhn.copy_(dh_n)
    if core == LSTM:
        ws.dc.copy_(dc_n)
        ws.h0.copy_(c0)
    else:
        ws.h0.copy_(h0)
    from gated.backends._triton_kernels import A_, AUX_, DA_, DGHN_, DOUT_, HF_, OUT_

    dout = dout.to(cd).contiguous()
    if core != LSTM and hf.numel() == 0:  # the outputs are h_t in the state dtype
        hf = out
    arrays = {A_: A, AUX_: aux, HF_: hf, OUT_: out, DOUT_: dout, DA_: dA, DGHN_: dghn}
    arrays |= _dh_parts(dH, T, B, G, H, P, core, lnw is not None, w_hr is not None)
    if lnw is not None:
        arrays |= _ln_slots(ls, T, B, G, H, core)
    _set_options(ws, opt, arrays)
    ws.write_table(arrays)
    ws.run()
    dc0 = ws.dc.clone() if core == LSTM else w_hh.new_empty(0)
    return dA, dghn, ws.dh0(rmask), dc0, dH


_FWD_SCHEMA = ("(Tensor x, Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh, Tensor? fb, Tensor h0, Tensor? c0, "
               "Tensor? lengths, Tensor? w_hr, int core, bool refine, bool save, Tensor? rmask=None, Tensor? zh=None, "
               "Tensor? zc=None, float ph=0., float pc=0., Tensor? lnw=None, Tensor? lnb=None, Tensor? lncw=None, "
               "Tensor? lncb=None) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)")
_BWD_SCHEMA = ("(Tensor dout, Tensor dh_n, Tensor? dc_n, Tensor A, Tensor aux, Tensor hf, Tensor out, Tensor h0, "
               "Tensor? c0, Tensor w_hh, Tensor? lengths, Tensor? w_hr, int core, bool refine, Tensor? rmask=None, "
               "Tensor? zh=None, Tensor? zc=None, float ph=0., float pc=0., Tensor? ls=None, Tensor? lnw=None, "
               "Tensor? lncw=None, Tensor? lncb=None) -> (Tensor, Tensor, Tensor, Tensor, Tensor)")


def _forward_fake(x, w_ih, w_hh, b_ih, b_hh, fb, h0, c0, lengths, w_hr, core, refine, save, rmask=None, zh=None,
                  zc=None, ph=0.0, pc=0.0, lnw=None, lnb=None, lncw=None, lncb=None):
    """The fused CPU operator's shapes (gated/backends/_ops.py), with the saved ``A`` and ``aux``
    in the state dtype, ``hf``: GRU/MGU's h_t in the state dtype where the outputs are rounded,
    and with LayerNorm ``m`` its flat statistics in the state dtype."""
    T, B, _ = x.shape
    G, P = w_hh.shape
    H = P if w_hr is None else w_hr.shape[1]
    sd = _state_dtype(x.dtype)
    c_n = x.new_empty(B, H) if c0 is not None else x.new_empty(0)
    A = x.new_empty(T, B, G, dtype=sd) if save else x.new_empty(0)
    aux = x.new_empty(T, B, H, dtype=sd) if save else x.new_empty(0)
    m = x.new_empty(T, B, H) if save and w_hr is not None else x.new_empty(0)
    hf = x.new_empty(T, B, H, dtype=sd) if save and core != LSTM and sd != x.dtype else x.new_empty(0)
    if save and lnw is not None:
        m = x.new_empty(_ln_saved_size(T, B, G, H, core, w_hr is not None), dtype=sd)
    return x.new_empty(T, B, P), x.new_empty(B, P), c_n, A, aux, m, hf


def _backward_fake(dout, dh_n, dc_n, A, aux, hf, out, h0, c0, w_hh, lengths, w_hr, core, refine, rmask=None,
                   zh=None, zc=None, ph=0.0, pc=0.0, ls=None, lnw=None, lncw=None, lncb=None):
    """dA, dghn and dH in the compute dtype (``w_hh``'s), dh0 and dc0 in the state dtype (``A``'s)."""
    T, B, G = A.shape
    P = w_hh.shape[1]
    H = P if w_hr is None else w_hr.shape[1]
    dghn = w_hh.new_empty(0) if core == LSTM else w_hh.new_empty(T, B, H)
    dc0 = A.new_empty(B, H) if core == LSTM else w_hh.new_empty(0)
    dH = w_hh.new_empty(_dh_size(T, B, G, H, P, core, lnw is not None, w_hr is not None))
    return w_hh.new_empty(T, B, G), dghn, A.new_empty(B, P), dc0, dH


# The two loops as operators with the fused CPU kernels' schemas (plus hf), fake implementations and
# batching rules (gated/backends/_ops.py), so torch.compile keeps each layer as one opaque call on
# both devices and torch.func's vmap runs them per element
recurrence_forward = torch.library.custom_op("gated_triton::recurrence_forward", _forward_impl, mutates_args=(),
                                             schema=_FWD_SCHEMA)
recurrence_backward = torch.library.custom_op("gated_triton::recurrence_backward", _backward_impl,
                                              mutates_args=(), schema=_BWD_SCHEMA)
for _op, _fake in ((recurrence_forward, _forward_fake), (recurrence_backward, _backward_fake)):
    _op.register_fake(_fake)
    torch.library.register_vmap(_op)(_ops._per_element(_op))


# ---------------------------------------------------------------- autograd

_NO_OPTIONS = (None, None, None, 0.0, 0.0)
_NO_LN = (None, None, None, None)


def _option_args(extras, sd: torch.dtype) -> tuple:
    """The operators' ``(rmask, zh, zc, ph, pc)`` from a :class:`gated.options.Extras`: the masks
    contiguous in the state dtype ``sd`` (backward reads them elementwise), an eval zoneout as its
    float ``p`` (0: off)."""
    if extras is None:  # literal constants: torch.compile would trace a global tuple's floats as symbolic
        return None, None, None, 0.0, 0.0
    prep = lambda t: None if t is None else t.to(sd).contiguous()  # noqa: E731
    zone = tuple(extras.zoneout or ()) + (None,) * 2
    masks = [prep(z) if isinstance(z, Tensor) else None for z in zone[:2]]
    probs = [float(z) if z is not None and not isinstance(z, Tensor) else 0.0 for z in zone[:2]]
    return prep(extras.rmask), masks[0], masks[1], probs[0], probs[1]


def _input_side(x: Tensor, w_ih: Tensor, b_ih: Tensor | None, b_hh: Tensor | None, ln_ih: tuple | None,
                layout: Layout, cd: torch.dtype) -> Tensor:
    """LayerNorm: ``LN_ih(x W_ih^T) + b_ih + b_hh`` (GRU/MGU without ``b_hn``) of all steps
    ``(T, B, G)``, fused_cpu's :func:`~gated.backends.fused_cpu._input_side` in torch ops (autograd
    differentiates it): the product in the compute dtype ``cd``, the norm and the biases in the
    state dtype (the loop then reads it in ``cd``, as it reads the projection without a norm)."""
    sd = _state_dtype(cd)
    to_sd = lambda t: None if t is None else t.to(sd)  # noqa: E731
    with torch.autocast(x.device.type, enabled=False):
        return fused_cpu._input_side(x.to(sd), w_ih.to(cd), to_sd(b_ih), to_sd(b_hh),
                                     None if ln_ih is None else tuple(map(to_sd, ln_ih)), layout)


def _forward(x, w_ih, w_hh, b_ih, b_hh, fb, w_hr, h0, c0, lengths, layout, cd, save: bool, opt=_NO_OPTIONS,
             ln=_NO_LN):
    """The forward operator on ``x`` and the weights cast to the compute dtype ``cd`` and the states
    to the state dtype (autocast is off inside: the casts are explicit); ``opt``: the options'
    arguments (:func:`_option_args`); ``ln``: LayerNorm's recurrent and cell norms' weights and
    biases, with ``x`` :func:`_input_side`'s result and ``w_ih``, ``b_ih`` None."""
    core, refine = fused_cell.kernel_ids(layout)
    sd = _state_dtype(cd)
    with torch.autocast(x.device.type, enabled=False):
        return torch.ops.gated_triton.recurrence_forward(
            x.to(cd).contiguous(), None if w_ih is None else w_ih.to(cd).contiguous(), w_hh.to(cd).contiguous(),
            b_ih, b_hh, fb, h0.to(sd).contiguous(), None if c0 is None else c0.to(sd).contiguous(), lengths,
            None if w_hr is None else w_hr.to(cd).contiguous(), core, refine, save, *opt, *ln)


def _hprev_mm(d: Tensor, h0: Tensor, out: Tensor) -> Tensor:
    """``sum_t d_t^T h_{t-1}`` with ``h_{-1} = h0``, ``h_t = out_t``, as two GEMMs (no copy of the
    shifted outputs); ``d`` may be a column slice of a ``(T, B, G)`` buffer."""
    if d.shape[-1] == 0:  # an absent block (GRU/MGU without refine)
        return h0.new_empty(0, h0.shape[-1])
    r = d[0].t() @ h0
    if d.shape[0] > 1:
        r = torch.addmm(r, d[1:].reshape(-1, d.shape[-1]).t(), out[:-1].reshape(-1, out.shape[-1]))
    return r


def _cat(parts: list[Tensor]) -> Tensor:
    return torch.cat([p for p in parts if p.shape[0] > 0])


class _Recurrence(torch.autograd.Function):
    """Autograd around the operators, as fused_cpu._Recurrence (``setup_context``, vmap rule);
    the forward also returns what backward reads (activations, c_t or W_hn h + b_hn, GRU/MGU's
    h_t), which is not differentiable."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x, w_ih, w_hh, b_ih, b_hh, fb, w_hr, h0, c0, lengths, layout, cd, rmask, zh, zc, ph, pc,
                lnw=None, lnb=None, lncw=None, lncb=None):
        return _forward(x, w_ih, w_hh, b_ih, b_hh, fb, w_hr, h0, c0, lengths, layout, cd, True,
                        (rmask, zh, zc, ph, pc), (lnw, lnb, lncw, lncb))

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, w_ih, w_hh, b_ih, b_hh, fb, w_hr, h0, c0, lengths, layout, cd, rmask, zh, zc, ph, pc = inputs[:17]
        ln = tuple(inputs[17:]) + (None,) * (21 - len(inputs))
        out, h_n, c_n, A, aux, m, hf = output
        ctx.mark_non_differentiable(A, aux, m, hf)
        ctx.save_for_backward(x, w_ih, w_hh, b_ih, b_hh, fb, w_hr, h0, c0, lengths, A, aux, m, hf, out,
                              rmask, zh, zc, *ln)
        ctx.layout, ctx.cd, ctx.probs = layout, cd, (ph, pc)
        ctx.autocast = cd if cd != w_hh.dtype else None  # the forward ran under autocast

    @staticmethod
    def backward(ctx, dout, dh_n, dc_n, _dA, _daux, _dm, _dhf):
        if torch.is_grad_enabled():  # create_graph: recompute on the reference, differentiably
            saved, need = ctx.saved_tensors, ctx.needs_input_grad
            # fused_cpu's order: the option masks at 14:17, LayerNorm's weights at 17:21 (its inputs 16:20)
            view = types.SimpleNamespace(saved_tensors=(*saved[:14], *saved[15:22]), layout=ctx.layout,
                                         needs_input_grad=(*need[:11], *(False,) * 5, *need[17:21]), probs=ctx.probs)
            device = ctx.saved_tensors[0].device.type
            cast = torch.autocast(device, dtype=ctx.autocast) if ctx.autocast else contextlib.nullcontext()
            with cast:  # the recomputation under the forward's autocast
                g = fused_cpu._differentiable_backward(view, dout, dh_n, dc_n)
            return (*g[:11], None, *(None,) * 5, *g[16:20])
        x, w_ih, w_hh, b_ih, b_hh, fb, w_hr, h0, c0, lengths, A, aux, m, hf, out, rmask, zh, zc = ctx.saved_tensors[:18]
        lnw, _, lncw, lncb = ctx.saved_tensors[18:]
        layout, cd = ctx.layout, ctx.cd
        sd = _state_dtype(cd)
        core, refine = fused_cell.kernel_ids(layout)
        need = ctx.needs_input_grad
        with torch.autocast(x.device.type, enabled=False):
            h0s = h0.to(sd).contiguous()
            w_hh_c = w_hh.to(cd).contiguous()
            w_hr_c = None if w_hr is None else w_hr.to(cd).contiguous()
            dA, dghn, dh0, dc0, dH = torch.ops.gated_triton.recurrence_backward(
                dout.contiguous(), dh_n.contiguous(), None if c0 is None else dc_n.contiguous(), A, aux, hf, out,
                h0s, None if c0 is None else c0.to(sd).contiguous(), w_hh_c, lengths, w_hr_c, core, refine,
                rmask, zh, zc, *ctx.probs, None if lnw is None else m, lnw, lncw, lncb)
            T, B, G = dA.shape
            I, H = x.shape[-1], layout.hidden_size
            dA2 = dA.view(T * B, G)
            dx = dw_ih = None
            if w_ih is None:  # LayerNorm: x is the input side, whose gradient is dA
                dx = dA.to(x.dtype) if need[0] else None
            else:
                dx = (dA2 @ w_ih.to(cd)).view(T, B, I).to(x.dtype) if need[0] else None
                dw_ih = (dA2.t() @ x.to(cd).reshape(T * B, I)).to(w_ih.dtype) if need[1] else None
            h0c = h0s.to(cd)
            if rmask is not None:  # what W_hh multiplied: h_{t-1} times the recurrent-dropout mask
                h0c, out = (h0s * rmask).to(cd), (out.to(sd) * rmask).to(cd)
            dw_hh = None
            if need[2]:
                if lnw is not None:  # the raw product's gradients, through LN_hh
                    dw_hh = _hprev_mm(dH[:T * B * G].view(T, B, G), h0c, out)
                elif core == LSTM:
                    dw_hh = _hprev_mm(dA, h0c, out)
                else:  # the candidate block's recurrent gradients are dghn, not dA
                    kn = 2 if core == GRU else 1
                    dw_hh = _cat([_hprev_mm(dA[..., :kn * H], h0c, out), _hprev_mm(dghn, h0c, out),
                                  _hprev_mm(dA[..., (kn + 1) * H:], h0c, out)])
                dw_hh = dw_hh.to(w_hh.dtype)
            total = dA2.sum(0, dtype=sd)  # dA summed over steps and batch
            db_ih = db_hh = dfb = None
            if b_ih is None and b_hh is not None:  # LayerNorm, GRU/MGU: only b_hn is the loop's
                kn = 2 if core == GRU else 1
                db_hh = _cat([total.new_zeros(kn * H), dghn.sum((0, 1), dtype=sd),
                              total.new_zeros(G - (kn + 1) * H)]).to(b_hh.dtype)
            if b_ih is not None:
                db_ih = total.to(b_ih.dtype)
                if core == LSTM:
                    db_hh = db_ih
                else:
                    kn = 2 if core == GRU else 1
                    db_hh = _cat([total[:kn * H], dghn.sum((0, 1), dtype=sd), total[(kn + 1) * H:]]).to(b_hh.dtype)
            if fb is not None:  # b_f enters the keep gate with + and the refine gate with -
                dfb = (total[layout.keep] - total[layout.refine]).to(fb.dtype)
            dw_hr = None
            if w_hr is not None and need[6]:  # dL/dW_hr = sum over steps of dh~_t^T m_t (the ends of dH and m)
                n, P = T * B, w_hr.shape[0]
                d_p, m_t = dH[dH.numel() - n * P:].view(n, P), m.reshape(-1)[m.numel() - n * H:].view(n, H)
                dw_hr = (d_p.t() @ m_t.to(cd)).to(w_hr.dtype)
            dh0 = dh0.to(h0.dtype)
            dc0 = dc0.to(c0.dtype) if c0 is not None else None
            dln = _ln_grads(layout, dA, dghn, dH, m, ctx.saved_tensors[18:]) if lnw is not None else _NO_LN
        return (dx, dw_ih, dw_hh, db_ih, db_hh, dfb, dw_hr, dh0, dc0, None, None, None, None, None, None, None, None,
                *dln)


def _ln_grads(layout: Layout, dA: Tensor, dghn: Tensor, dL: Tensor, ls: Tensor, ln: tuple) -> tuple:
    """The LayerNorms' gains and biases' gradients, sums over steps and batch of ``dy xhat`` and
    ``dy``: LN_hh's ``dy`` is ``dA`` but in GRU/MGU's candidate block ``dghn`` (what the reset gate
    multiplied), its ``xhat`` the first part of ``ls``; the LSTM cell norm's ``dy`` is the second
    part of the backward's ``dL``, its ``chat`` the third of ``ls`` (:func:`_ln_slots`)."""
    T, B, G = dA.shape
    H, n, sd = layout.hidden_size, T * B, ls.dtype
    n_rows = layout.block("n") if layout.core.name != "lstm" else None
    dy = dA if n_rows is None else torch.cat([dA[..., :n_rows.start], dghn, dA[..., n_rows.stop:]], -1)
    xhat = ls[:n * G].view(T, B, G)
    grads = [(dy.to(sd) * xhat).sum((0, 1)), dy.sum((0, 1), dtype=sd), None, None]
    if ln[2] is not None:
        dyc, chat = dL[n * G:n * (G + H)].view(T, B, H).to(sd), ls[n * (G + 1):n * (G + 1 + H)].view(T, B, H)
        grads[2:] = (dyc * chat).sum((0, 1)), dyc.sum((0, 1))
    return tuple(None if g is None else g.to(w.dtype) for g, w in zip(grads, ln))


def run_layer(x, state, w_ih, w_hh, b_ih, b_hh, forget_bias, layout, mask=None, record=None, w_hr=None, extras=None):
    """Same contract as :func:`gated.backends.reference.run_layer` (``record`` is not supported;
    ``extras``: LayerNorm, zoneout and recurrent dropout).
    Under autocast the outputs and states are in autocast's dtype, as torch.nn's."""
    if record is not None:
        raise ValueError("the triton backend records no gates; gate_activations uses the reference backend")
    if x.shape[1] == 0:  # an empty batch: nothing to compute
        return reference.run_layer(x, state, w_ih, w_hh, b_ih, b_hh, forget_bias, layout, mask, w_hr=w_hr,
                                   extras=extras)
    cd = compute_dtype(x)
    opt = _option_args(extras, _state_dtype(cd))
    ln = _NO_LN
    if extras is not None and extras.ln is not None:  # the input side here, the recurrent norms in the loop
        ln_ih, ln_hh, ln_c = extras.ln
        x = _input_side(x, w_ih, b_ih, b_hh, ln_ih, layout, cd)
        w_ih = b_ih = None
        b_hh = None if layout.core.name == "lstm" else b_hh  # GRU/MGU: the loop reads b_hn from it
        ln = (*ln_hh, *(ln_c or (None, None)))
    lengths = None if mask is None else mask[:, :, 0].sum(0).to(torch.int64)
    c0 = state[1] if len(state) == 2 else None
    args = (x, w_ih, w_hh, b_ih, b_hh, forget_bias, w_hr, state[0], c0, lengths, layout, cd)
    if builds_graph(*args[:9], *ln):
        out, h_n, c_n = _Recurrence.apply(*args, *opt, *ln)[:3]
    else:  # inference: no graph, and no activations kept
        out, h_n, c_n = _forward(*args, save=False, opt=opt, ln=ln)[:3]
    return out, (h_n, c_n) if c0 is not None else (h_n,)
