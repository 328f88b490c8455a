"""The Triton kernels of the GPU backend: one launch per time step for the pointwise gate maths.

Each kernel covers the ``B x H`` units of one step (program ``p`` takes units ``[p * BLOCK,
(p + 1) * BLOCK)`` of the row-major ``(B, H)`` grid; unit ``(b, j)`` reads gate ``k`` at
``b * G + k * H + j``); the recurrent matmuls run between launches on cuBLAS (``torch.mm``). The
equations are those of gated/cores.py and of the C++ kernels (gated/csrc/recurrence.cpp):

- LSTM ``(i|r, f, g, o)``: ``c' = k c + w tanh(P_g)``, ``h' = sigma(P_o) tanh(c')``;
- GRU ``(s, z, n[, rho])`` and MGU ``(f, n[, rho])``: ``n = tanh(gx_n + reset (W_hn h + b_hn))``,
  ``h' = k h + (1 - k) n``, with ``reset = s`` (GRU) or ``1 - f`` (MGU);
- refine: ``g = f^2 + 2 r f (1 - f)`` with ``f = sigma(P_f + b_f)``, ``r = sigma(P_r - b_f)``.

**Addressing.** The per-call arrays (``(T, B, .)``: pre-activations, gate activations, outputs,
saved states and their gradients) are not kernel arguments: each kernel reads their positions
from ``TAB``, a small int64 tensor of element offsets, in the slots below, and adds the step's
offset ``t * B * width``. The arrays of the compute (operand) dtype count from ``BASE``, those
of the state dtype (float32 under bfloat16/float16, else the compute dtype) from ``SBASE``:
each slot's dtype, and so its base, is fixed (``STATE_SLOTS``). The state-dtype arrays are what
backward reads elementwise: the activations ``A`` (``1 - f`` of a gate at 0.999 is 0 in
bfloat16), ``AUX`` (``c_t``, or ``W_hn h + b_hn``) and ``HF`` (GRU/MGU's ``h_t``; in float32
and float64 the outputs themselves). Everything else a step touches (states, the recurrent
products, the weights' copies) lives in a fixed per-shape workspace. So the launches of a whole
time loop have the same arguments for every call of one shape, and a CUDA graph captured once
replays them for any call after its table is rewritten (gated/backends/triton_gpu.py).

The functions are plain Python; :func:`kernels` wraps them with ``triton.jit`` for CUDA tensors
or with Triton's interpreter for CPU tensors. They call only Triton builtins (``tl.exp``,
``tl.where``, ...), not ``tl.sigmoid``, which is itself a jitted function that the interpreter
runs only when ``TRITON_INTERPRET=1`` was set before triton was imported. Arithmetic runs in the
state dtype (float32, or float64): bfloat16/float16 operands are widened on load (the
interpreter mis-computes arithmetic on unwidened bfloat16) and rounded on store (the
interpreter rounds toward zero there, a GPU to nearest). Masked steps
(``t >= len[b]``, PackedSequence) hold the state, write a zero output and pass gradients
through, as the reference backend's ``torch.where`` does.

**LayerNorm** (``LN``, gated/options.py): the norms reduce over a batch row, so with them each
program owns one whole row (``b = program_id``, units ``j < H`` of ``BLOCK >= H``) instead of a
flat slice of ``B x H``. Forward normalises the raw recurrent product GH over the row's ``G`` gate
rows (``LW xhat + LB``) before the gate maths and, in the LSTM, ``c~`` over ``H`` for the output,
``h = o tanh(CW chat + CB)``; it saves xhat and rstd (XH, RS, CH, RC, state dtype). Backward
takes the pre-activation gradients (GRU/MGU: of the recurrent side, S) back through LN_hh per row,
``d raw = rstd (w dy - mean(w dy) - xhat mean(w dy xhat))``, into the next product's input and DH.
The input side ``LN_ih(x W_ih^T) + biases`` is torch ops outside the loop (triton_gpu.py).

Only APIs present in Triton 3.6 (the GPU machine's) are used.
"""

from __future__ import annotations

import functools
import types

import triton
import triton.language as tl
from triton.runtime.jit import JITFunction

# slots of the offset table (host side); the kernels read them as the constexprs below. PX: the
# input projection (pre-activations); A: the activations saved for backward (the same array as PX
# when both dtypes agree); HF: GRU/MGU's h_t in the state dtype
PX_, OUT_, M_, DOUT_, DA_, DGHN_, DH_, A_, AUX_, HF_, RM_, ZH_, ZC_, XH_, RS_, CH_, RC_, DYC_, MS_, DP_ = range(20)
SLOTS = 20
# offsets from SBASE (state dtype); the others from BASE (compute dtype). RM: the recurrent-dropout
# mask (B, H); ZH, ZC: the zoneout keep masks of h and c (T, B, H), in training. LayerNorm (LN):
# XH, RS the recurrent norm's xhat (T, B, G) and rstd (T, B), CH, RC the LSTM cell norm's chat
# (T, B, H) and rstd (T, B); backward writes DH (T, B, G: the raw recurrent product's gradients)
# and DYC (T, B, H: the cell norm's dy). Projections: forward saves m_t (T, B, H) into M, or with
# LayerNorm into MS (state dtype, beside the statistics); backward writes dL/dh~_t (T, B, P, W_hr's
# GEMM operand) into DP
STATE_SLOTS = (A_, AUX_, HF_, RM_, ZH_, ZC_, XH_, RS_, CH_, RC_, MS_)
(_PX, _OUT, _M, _DOUT, _DA, _DGHN, _DH, _A, _AUX, _HF, _RM, _ZH, _ZC, _XH, _RS, _CH, _RC,
 _DYC, _MS, _DP) = (tl.constexpr(k) for k in range(SLOTS))
EPS = tl.constexpr(1e-5)  # torch.nn.LayerNorm's (gated/options.py)



def _add_fn(a, b):
    return a + b


# the row sums' combine function: a JITFunction, as tl.reduce needs it for the compiler; the
# interpreter calls its ``.fn`` (tl.sum itself is a jitted library function, which the interpreter
# cannot run when triton was imported before TRITON_INTERPRET was set). Built as JITFunction, not
# triton.jit, which returns an interpreted function when TRITON_INTERPRET=1 is set at import and
# the compiler then refuses it (tests/test_triton.py's sm_90 compile)
_add = JITFunction(_add_fn)

# sigma(v) = 1 / (1 + exp(-v)): sigma(-inf) = 0, sigma(inf) = 1, NaN in, NaN out (as tl.sigmoid)
# tanh(v) = 2 sigma(2 v) - 1: exact limits +-1, NaN in, NaN out


def lstm_fwd(TAB, BASE, SBASE, GH, Cp, Cn, HS, FB, LEN, Hp, Hn, ZP, LW, LB, CW, CB, t, B, H, G,
             REFINE: tl.constexpr, HAS_FB: tl.constexpr, MASKED: tl.constexpr, SAVE: tl.constexpr,
             PROJ: tl.constexpr, ZH: tl.constexpr, ZC: tl.constexpr, RDROP: tl.constexpr, LN: tl.constexpr,
             BLOCK: tl.constexpr):
    """One LSTM step. Reads PX_t (``x_t W_ih^T + b``) and GH (``h_{t-1} W_hh^T``); writes c_t
    into Cn (from Cp, the state dtype), h_t into HS (the next product's input; m_t =
    o tanh(c_t) with projections; h_t RM with recurrent dropout, RDROP) and OUT_t; if SAVE, the
    activations into A_t and c_t into AUX_t (state dtype), and m_t into M_t (MS_t with LN). Zoneout (no
    projections): ZH, ZC 0 off, 1 the keep mask ZH_t / ZC_t, 2 the eval probability ZP[0] / ZP[1];
    ``s_t = s~ + z (s_{t-1} - s~)``, h~ from the un-zoned c~; with ZH, h lives in Hp -> Hn (state
    dtype), held past a sequence's end. LN: one row per program, GH normalised over the row (LW,
    LB), ``h~ = o tanh(LN_c(c~))`` (CW, CB); SAVE also saves their xhat and rstd."""
    if LN:  # one batch row per program (the norms reduce over it)
        j = tl.arange(0, BLOCK)
        b = tl.program_id(0) + j * 0
        inb = j < H
        offs = b * H + j
    else:
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        inb = offs < B * H
        b = offs // H
        j = offs - b * H
    step = t.to(tl.int64) * B
    px = BASE + tl.load(TAB + _PX) + step * G + b * G + j
    a = SBASE + tl.load(TAB + _A) + step * G + b * G + j
    g = GH + b * G + j
    cp = tl.load(Cp + offs, mask=inb, other=0.0)
    sd = cp.dtype
    gi = tl.load(g, mask=inb, other=0.0).to(sd)
    gf = tl.load(g + H, mask=inb, other=0.0).to(sd)
    gg = tl.load(g + 2 * H, mask=inb, other=0.0).to(sd)
    go = tl.load(g + 3 * H, mask=inb, other=0.0).to(sd)
    if LN:  # LN_hh over the row's G gate rows: xhat = (v - mean) rstd, then LW xhat + LB
        mean = tl.reduce(gi + gf + gg + go, 0, _add) / G
        gi, gf = tl.where(inb, gi - mean, 0.0), tl.where(inb, gf - mean, 0.0)
        gg, go = tl.where(inb, gg - mean, 0.0), tl.where(inb, go - mean, 0.0)
        rstd = 1.0 / tl.sqrt(tl.reduce(gi * gi + gf * gf + gg * gg + go * go, 0, _add) / G + EPS)
        gi, gf, gg, go = gi * rstd, gf * rstd, gg * rstd, go * rstd
        if SAVE:
            xh = SBASE + tl.load(TAB + _XH) + step * G + b * G + j
            tl.store(xh, gi, mask=inb)
            tl.store(xh + H, gf, mask=inb)
            tl.store(xh + 2 * H, gg, mask=inb)
            tl.store(xh + 3 * H, go, mask=inb)
            tl.store(SBASE + tl.load(TAB + _RS) + step + b, rstd + 0.0 * gi, mask=j == 0)
        gi = tl.load(LW + j, mask=inb, other=0.0) * gi + tl.load(LB + j, mask=inb, other=0.0)
        gf = tl.load(LW + H + j, mask=inb, other=0.0) * gf + tl.load(LB + H + j, mask=inb, other=0.0)
        gg = tl.load(LW + 2 * H + j, mask=inb, other=0.0) * gg + tl.load(LB + 2 * H + j, mask=inb, other=0.0)
        go = tl.load(LW + 3 * H + j, mask=inb, other=0.0) * go + tl.load(LB + 3 * H + j, mask=inb, other=0.0)
    pi = tl.load(px, mask=inb, other=0.0).to(sd) + gi
    pf = tl.load(px + H, mask=inb, other=0.0).to(sd) + gf
    pg = tl.load(px + 2 * H, mask=inb, other=0.0).to(sd) + gg
    po = tl.load(px + 3 * H, mask=inb, other=0.0).to(sd) + go
    if HAS_FB:
        bf = tl.load(FB + j, mask=inb, other=0.0).to(sd)
        pf = pf + bf
        pi = pi - bf
    i = 1.0 / (1.0 + tl.exp(-pi))
    f = 1.0 / (1.0 + tl.exp(-pf))
    u = 2.0 / (1.0 + tl.exp(-2.0 * pg)) - 1.0
    o = 1.0 / (1.0 + tl.exp(-po))
    if REFINE:  # i holds the refine gate r; the input gate is tied to 1 - g
        keep = f * f + 2.0 * i * f * (1.0 - f)
        c = keep * cp + (1.0 - keep) * u
    else:
        c = f * cp + i * u
    if LN:  # h~ = o tanh(LN_c(c~)) over the row's H units; c stays unnormalised
        cm = tl.where(inb, c - tl.reduce(tl.where(inb, c, 0.0), 0, _add) / H, 0.0)
        rc = 1.0 / tl.sqrt(tl.reduce(cm * cm, 0, _add) / H + EPS)
        y = tl.load(CW + j, mask=inb, other=0.0) * (cm * rc) + tl.load(CB + j, mask=inb, other=0.0)
        h = o * (2.0 / (1.0 + tl.exp(-2.0 * y)) - 1.0)
        if SAVE:
            tl.store(SBASE + tl.load(TAB + _CH) + step * H + offs, cm * rc, mask=inb)
            tl.store(SBASE + tl.load(TAB + _RC) + step + b, rc + 0.0 * cm, mask=j == 0)
    else:
        h = o * (2.0 / (1.0 + tl.exp(-2.0 * c)) - 1.0)
    if ZH != 0:
        hp = tl.load(Hp + offs, mask=inb, other=0.0)
        if ZH == 1:
            zh = tl.load(SBASE + tl.load(TAB + _ZH) + step * H + offs, mask=inb, other=0.0)
        else:
            zh = tl.load(ZP)
        h = h + zh * (hp - h)
    if ZC != 0:
        if ZC == 1:
            zc = tl.load(SBASE + tl.load(TAB + _ZC) + step * H + offs, mask=inb, other=0.0)
        else:
            zc = tl.load(ZP + 1)
        c = c + zc * (cp - c)
    if MASKED:
        live = t < tl.load(LEN + b, mask=inb, other=0)
        c = tl.where(live, c, cp)
        if ZH != 0:
            tl.store(Hn + offs, tl.where(live, h, hp), mask=inb)
        h = tl.where(live, h, 0.0)
    elif ZH != 0:
        tl.store(Hn + offs, h, mask=inb)
    tl.store(Cn + offs, c, mask=inb)
    if RDROP:  # the next product reads h_t times the recurrent-dropout mask
        tl.store(HS + offs, h * tl.load(SBASE + tl.load(TAB + _RM) + offs, mask=inb, other=0.0), mask=inb)
    else:
        tl.store(HS + offs, h, mask=inb)
    if PROJ:
        if SAVE:
            if LN:  # beside the statistics, in the state dtype
                tl.store(SBASE + tl.load(TAB + _MS) + step * H + offs, h, mask=inb)
            else:
                tl.store(BASE + tl.load(TAB + _M) + step * H + offs, h, mask=inb)
    else:
        tl.store(BASE + tl.load(TAB + _OUT) + step * H + offs, h, mask=inb)
    if SAVE:
        tl.store(SBASE + tl.load(TAB + _AUX) + step * H + offs, c, mask=inb)
        tl.store(a, i, mask=inb)
        tl.store(a + H, f, mask=inb)
        tl.store(a + 2 * H, u, mask=inb)
        tl.store(a + 3 * H, o, mask=inb)


def gru_fwd(TAB, BASE, SBASE, GH, Hp, Hn, HS, BHN, FB, LEN, ZP, LW, LB, t, B, H, G,
            GRU: tl.constexpr, KZ: tl.constexpr, KN: tl.constexpr, KR: tl.constexpr, REFINE: tl.constexpr,
            HAS_FB: tl.constexpr, HAS_BHN: tl.constexpr, MASKED: tl.constexpr, SAVE: tl.constexpr,
            SAVE_H: tl.constexpr, ZH: tl.constexpr, RDROP: tl.constexpr, LN: tl.constexpr, BLOCK: tl.constexpr):
    """One GRU/MGU step. Reads PX_t (the input projection with every bias but b_hn), GH
    (``h_{t-1} W_hh^T``) and Hp (h_{t-1}, state dtype); writes h_t into Hn, HS (the next
    product's input, zero past a sequence's end) and OUT_t; if SAVE, the activations s, z, n,
    rho into A_t and ``W_hn h + b_hn`` into AUX_t (state dtype); if SAVE_H (low precision), h_t
    as OUT_t holds it into HF_t (state dtype). Zoneout ZH as lstm_fwd's (``h_t = h~ + z
    (h_{t-1} - h~)``); RDROP: HS gets h_t RM. LN: one row per program, GH normalised over the
    row's gate rows (LW, LB; SAVE saves xhat and rstd), so W_hn h is the normalised n rows."""
    if LN:  # one batch row per program (the norm reduces over it)
        j = tl.arange(0, BLOCK)
        b = tl.program_id(0) + j * 0
        inb = j < H
        offs = b * H + j
    else:
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        inb = offs < B * H
        b = offs // H
        j = offs - b * H
    step = t.to(tl.int64) * B
    px = BASE + tl.load(TAB + _PX) + step * G + b * G + j
    a = SBASE + tl.load(TAB + _A) + step * G + b * G + j
    g = GH + b * G + j
    hp = tl.load(Hp + offs, mask=inb, other=0.0)
    sd = hp.dtype
    gz = tl.load(g + KZ * H, mask=inb, other=0.0).to(sd)
    gn = tl.load(g + KN * H, mask=inb, other=0.0).to(sd)
    gs = tl.full([BLOCK], 0.0, dtype=sd)  # the GRU's reset block (absent from the MGU)
    gr = tl.full([BLOCK], 0.0, dtype=sd)  # the refine block
    if GRU:
        gs = tl.load(g, mask=inb, other=0.0).to(sd)
    if REFINE:
        gr = tl.load(g + KR * H, mask=inb, other=0.0).to(sd)
    if LN:  # LN_hh over the row's G gate rows (an absent block is zeros and adds nothing)
        mean = tl.reduce(gz + gn + gs + gr, 0, _add) / G
        gz, gn = tl.where(inb, gz - mean, 0.0), tl.where(inb, gn - mean, 0.0)
        if GRU:
            gs = tl.where(inb, gs - mean, 0.0)
        if REFINE:
            gr = tl.where(inb, gr - mean, 0.0)
        rstd = 1.0 / tl.sqrt(tl.reduce(gz * gz + gn * gn + gs * gs + gr * gr, 0, _add) / G + EPS)
        gz, gn, gs, gr = gz * rstd, gn * rstd, gs * rstd, gr * rstd
        xh = SBASE + tl.load(TAB + _XH) + step * G + b * G + j
        if SAVE:
            tl.store(xh + KZ * H, gz, mask=inb)
            tl.store(xh + KN * H, gn, mask=inb)
            tl.store(SBASE + tl.load(TAB + _RS) + step + b, rstd + 0.0 * gz, mask=j == 0)
        gz = tl.load(LW + KZ * H + j, mask=inb, other=0.0) * gz + tl.load(LB + KZ * H + j, mask=inb, other=0.0)
        gn = tl.load(LW + KN * H + j, mask=inb, other=0.0) * gn + tl.load(LB + KN * H + j, mask=inb, other=0.0)
        if GRU:
            if SAVE:
                tl.store(xh, gs, mask=inb)
            gs = tl.load(LW + j, mask=inb, other=0.0) * gs + tl.load(LB + j, mask=inb, other=0.0)
        if REFINE:
            if SAVE:
                tl.store(xh + KR * H, gr, mask=inb)
            gr = tl.load(LW + KR * H + j, mask=inb, other=0.0) * gr + tl.load(LB + KR * H + j, mask=inb, other=0.0)
    pz = tl.load(px + KZ * H, mask=inb, other=0.0).to(sd) + gz
    if HAS_FB:
        bf = tl.load(FB + j, mask=inb, other=0.0).to(sd)
        pz = pz + bf
    z = 1.0 / (1.0 + tl.exp(-pz))
    ghn = gn
    if HAS_BHN:
        ghn = ghn + tl.load(BHN + j, mask=inb, other=0.0).to(sd)
    if GRU:
        ps = tl.load(px, mask=inb, other=0.0).to(sd) + gs
        reset = 1.0 / (1.0 + tl.exp(-ps))
    else:  # MGU: the candidate's reset is 1 - f
        reset = 1.0 - z
    pn = tl.load(px + KN * H, mask=inb, other=0.0).to(sd) + reset * ghn
    cand = 2.0 / (1.0 + tl.exp(-2.0 * pn)) - 1.0
    keep = z
    if REFINE:
        pr = tl.load(px + KR * H, mask=inb, other=0.0).to(sd) + gr
        if HAS_FB:
            pr = pr - bf
        r = 1.0 / (1.0 + tl.exp(-pr))
        keep = z * z + 2.0 * r * z * (1.0 - z)
    h = keep * hp + (1.0 - keep) * cand
    if ZH != 0:
        if ZH == 1:
            zh = tl.load(SBASE + tl.load(TAB + _ZH) + step * H + offs, mask=inb, other=0.0)
        else:
            zh = tl.load(ZP)
        h = h + zh * (hp - h)
    tl.store(Hn + offs, h, mask=inb)  # rows past their end stay so: their state is never read again
    if MASKED:
        h = tl.where(t < tl.load(LEN + b, mask=inb, other=0), h, 0.0)
    if RDROP:  # the next product reads h_t times the recurrent-dropout mask
        tl.store(HS + offs, h * tl.load(SBASE + tl.load(TAB + _RM) + offs, mask=inb, other=0.0), mask=inb)
    else:
        tl.store(HS + offs, h, mask=inb)
    tl.store(BASE + tl.load(TAB + _OUT) + step * H + offs, h, mask=inb)
    if SAVE_H:
        tl.store(SBASE + tl.load(TAB + _HF) + step * H + offs, h, mask=inb)
    if SAVE:
        if GRU:
            tl.store(a, reset, mask=inb)
        tl.store(a + KZ * H, z, mask=inb)
        tl.store(a + KN * H, cand, mask=inb)
        if REFINE:
            tl.store(a + KR * H, r, mask=inb)
        tl.store(SBASE + tl.load(TAB + _AUX) + step * H + offs, ghn, mask=inb)


def proj_out(TAB, BASE, SBASE, HS, H0, LEN, ZP, t, B, P, FIRST: tl.constexpr, MASKED: tl.constexpr,
             ZH: tl.constexpr, RDROP: tl.constexpr, BLOCK: tl.constexpr):
    """LSTM with projections: HS holds h~ = m_t W_hr^T; writes OUT_t = h_t and, with an option, HS =
    what the next product reads. As projection.h's project_fwd: ZH, zoneout of the projected h
    (h_t = h~ + z (h_{t-1} - h~), on rows still in their sequence; h_{t-1} is OUT_{t-1}, or H0 at
    t = 0, FIRST), then RDROP, HS = h_t RM."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    inb = offs < B * P
    step = t.to(tl.int64) * B * P
    h = tl.load(HS + offs, mask=inb, other=0.0)
    if ZH != 0:
        if FIRST:
            hp = tl.load(H0 + offs, mask=inb, other=0.0)
        else:
            hp = tl.load(BASE + tl.load(TAB + _OUT) + step - B * P + offs, mask=inb, other=0.0)
        if ZH == 1:  # the state dtype, as the masks and ZP are
            z = tl.load(SBASE + tl.load(TAB + _ZH) + step + offs, mask=inb, other=0.0)
        else:
            z = tl.load(ZP)
        hs = h.to(z.dtype)
        hz = hs + z * (hp.to(z.dtype) - hs)
        if MASKED:
            live = t < tl.load(LEN + offs // P, mask=inb, other=0)
            hz = tl.where(live, hz, hs)
        h = hz.to(h.dtype)
    tl.store(BASE + tl.load(TAB + _OUT) + step + offs, h, mask=inb)
    if RDROP:
        rm = tl.load(SBASE + tl.load(TAB + _RM) + offs, mask=inb, other=0.0)
        tl.store(HS + offs, (h.to(rm.dtype) * rm).to(h.dtype), mask=inb)
    elif ZH != 0:
        tl.store(HS + offs, h, mask=inb)


def lstm_bwd(TAB, BASE, SBASE, C0, D1, D2, DC, DAS, DHN, DM, LEN, ZP, LW, CW, CB, t, B, H, G,
             REFINE: tl.constexpr, HAS_D1: tl.constexpr, HAS_D2: tl.constexpr, MASKED: tl.constexpr,
             FIRST: tl.constexpr, PROJ: tl.constexpr, ZH: tl.constexpr, ZC: tl.constexpr, RDROP: tl.constexpr,
             LN: tl.constexpr, BLOCK: tl.constexpr):
    """One LSTM step backwards. dL/dh_t = DOUT_t + D1 (``dA_{t+1} W_hh``) + D2 (dh_n at the last
    step, else the carry of rows past their end); with projections dL/dm_t = DM instead. DC:
    dL/dc_t, updated in place to dL/dc_{t-1}; writes the pre-activation gradients into DA_t and
    DAS (the next product's input) and, if MASKED, the part of dL/dh_{t-1} that bypasses W_hh
    (the carry, nonzero only past a sequence's end) into DHN. FIRST: t = 0, c_{-1} = C0. A_t and
    AUX_t (c_t) are read in the state dtype. Options (no projections), as cells.h's lstm_bwd:
    RDROP scales D1 by RM (``dh_{t-1} = (dA_t W_hh) RM + direct``); ZH sends ``z_h dh_t`` straight
    to DHN (then always written); ZC splits dc_t likewise and recomputes c~_t from A_t and
    c_{t-1} (AUX_t holds the zoned c_t). LN: one row per program; through the cell norm (CH_t,
    RC_t; its dy into DYC_t) and LN_hh (XH_t, RS_t): DAS and DH_t get the raw product's gradients."""
    if LN:  # one batch row per program (the norms reduce over it)
        j = tl.arange(0, BLOCK)
        b = tl.program_id(0) + j * 0
        inb = j < H
        offs = b * H + j
    else:
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        inb = offs < B * H
        b = offs // H
        j = offs - b * H
    step = t.to(tl.int64) * B
    a = SBASE + tl.load(TAB + _A) + step * G + b * G + j
    da = BASE + tl.load(TAB + _DA) + step * G + b * G + j
    das = DAS + b * G + j
    dc = tl.load(DC + offs, mask=inb, other=0.0)
    sd = dc.dtype
    carry = tl.full([BLOCK], 0.0, dtype=sd)
    if HAS_D1:
        d1 = tl.load(D1 + offs, mask=inb, other=0.0).to(sd)
        if RDROP:
            d1 = d1 * tl.load(SBASE + tl.load(TAB + _RM) + offs, mask=inb, other=0.0)
        carry = carry + d1
    if HAS_D2:
        carry = carry + tl.load(D2 + offs, mask=inb, other=0.0).to(sd)
    if PROJ:
        dht = tl.load(DM + offs, mask=inb, other=0.0).to(sd)
    else:
        dht = tl.load(BASE + tl.load(TAB + _DOUT) + step * H + offs, mask=inb, other=0.0).to(sd) + carry
    i = tl.load(a, mask=inb, other=0.0).to(sd)
    f = tl.load(a + H, mask=inb, other=0.0).to(sd)
    u = tl.load(a + 2 * H, mask=inb, other=0.0).to(sd)
    o = tl.load(a + 3 * H, mask=inb, other=0.0).to(sd)
    aux = SBASE + tl.load(TAB + _AUX) + step * H + offs
    if FIRST:
        c0 = tl.load(C0 + offs, mask=inb, other=0.0).to(sd)
    else:
        c0 = tl.load(aux - B * H, mask=inb, other=0.0).to(sd)
    if REFINE:
        keep = f * f + 2.0 * i * f * (1.0 - f)
    else:
        keep = f
    dcin = dc
    if ZH != 0:  # h_t = h~ + z (h_{t-1} - h~): z dh_t goes straight to h_{t-1}
        if ZH == 1:
            zh = tl.load(SBASE + tl.load(TAB + _ZH) + step * H + offs, mask=inb, other=0.0)
        else:
            zh = tl.load(ZP)
        direct = zh * dht
        dht = dht - direct
    if ZC != 0:
        if ZC == 1:
            zc = tl.load(SBASE + tl.load(TAB + _ZC) + step * H + offs, mask=inb, other=0.0)
        else:
            zc = tl.load(ZP + 1)
        dcd = zc * dc
        dcin = dc - dcd
    if LN:  # h~ = o tanh(y), y = CW chat + CB: dy, then back through the row's cell norm
        chat = tl.load(SBASE + tl.load(TAB + _CH) + step * H + offs, mask=inb, other=0.0)
        cw = tl.load(CW + j, mask=inb, other=0.0)
        ty = 2.0 / (1.0 + tl.exp(-2.0 * (cw * chat + tl.load(CB + j, mask=inb, other=0.0)))) - 1.0
        dy = dht * o * (1.0 - ty * ty)
        dpo = dht * ty * o * (1.0 - o)
        gy = tl.where(inb, cw * dy, 0.0)
        rc = tl.load(SBASE + tl.load(TAB + _RC) + step + b, mask=inb, other=0.0)
        dct = dcin + rc * (gy - tl.reduce(gy, 0, _add) / H - chat * (tl.reduce(gy * chat, 0, _add) / H))
    else:
        if ZC != 0:  # AUX_t holds the zoned c_t: c~_t from the activations
            if REFINE:
                ct = keep * c0 + (1.0 - keep) * u
            else:
                ct = f * c0 + i * u
        else:
            ct = tl.load(aux, mask=inb, other=0.0).to(sd)
        tc = 2.0 / (1.0 + tl.exp(-2.0 * ct)) - 1.0
        dct = dcin + dht * o * (1.0 - tc * tc)
        dpo = dht * tc * o * (1.0 - o)
    if REFINE:
        dgdf = 2.0 * (i * (1.0 - f) + (1.0 - i) * f)
        dgdr = 2.0 * f * (1.0 - f)
        dg = dct * (c0 - u)
        dpu = dct * (1.0 - keep) * (1.0 - u * u)
        dpf = dg * dgdf * f * (1.0 - f)
        dpi = dg * dgdr * i * (1.0 - i)
        dcp = dct * keep
    else:
        dpu = dct * i * (1.0 - u * u)
        dpf = dct * c0 * f * (1.0 - f)
        dpi = dct * u * i * (1.0 - i)
        dcp = dct * f
    if ZC != 0:
        dcp = dcp + dcd
    if ZH != 0:
        live_direct = direct
    else:
        live_direct = tl.full([BLOCK], 0.0, dtype=sd)
    if MASKED:  # past the sequence's end the state was held: gradients pass through
        live = t < tl.load(LEN + b, mask=inb, other=0)
        dpi = tl.where(live, dpi, 0.0)
        dpf = tl.where(live, dpf, 0.0)
        dpu = tl.where(live, dpu, 0.0)
        dpo = tl.where(live, dpo, 0.0)
        dcp = tl.where(live, dcp, dc)
        if LN:
            dy = tl.where(live, dy, 0.0)
        if not PROJ:
            tl.store(DHN + offs, tl.where(live, live_direct, carry), mask=inb)
    elif ZH != 0:
        tl.store(DHN + offs, live_direct, mask=inb)
    tl.store(da, dpi, mask=inb)
    tl.store(da + H, dpf, mask=inb)
    tl.store(da + 2 * H, dpu, mask=inb)
    tl.store(da + 3 * H, dpo, mask=inb)
    if LN:  # the pre-activations add LN_hh's output: back through it, over the row's G gate rows
        tl.store(BASE + tl.load(TAB + _DYC) + step * H + offs, dy, mask=inb)
        xh = SBASE + tl.load(TAB + _XH) + step * G + b * G + j
        xi, xf = tl.load(xh, mask=inb, other=0.0), tl.load(xh + H, mask=inb, other=0.0)
        xu, xo = tl.load(xh + 2 * H, mask=inb, other=0.0), tl.load(xh + 3 * H, mask=inb, other=0.0)
        dpi, dpf = tl.load(LW + j, mask=inb, other=0.0) * dpi, tl.load(LW + H + j, mask=inb, other=0.0) * dpf
        dpu = tl.load(LW + 2 * H + j, mask=inb, other=0.0) * dpu
        dpo = tl.load(LW + 3 * H + j, mask=inb, other=0.0) * dpo
        m1 = tl.reduce(dpi + dpf + dpu + dpo, 0, _add) / G
        m2 = tl.reduce(dpi * xi + dpf * xf + dpu * xu + dpo * xo, 0, _add) / G
        rs = tl.load(SBASE + tl.load(TAB + _RS) + step + b, mask=inb, other=0.0)
        dpi, dpf = rs * (dpi - m1 - xi * m2), rs * (dpf - m1 - xf * m2)
        dpu, dpo = rs * (dpu - m1 - xu * m2), rs * (dpo - m1 - xo * m2)
        dr = BASE + tl.load(TAB + _DH) + step * G + b * G + j
        tl.store(dr, dpi, mask=inb)
        tl.store(dr + H, dpf, mask=inb)
        tl.store(dr + 2 * H, dpu, mask=inb)
        tl.store(dr + 3 * H, dpo, mask=inb)
    tl.store(das, dpi, mask=inb)
    tl.store(das + H, dpf, mask=inb)
    tl.store(das + 2 * H, dpu, mask=inb)
    tl.store(das + 3 * H, dpo, mask=inb)
    tl.store(DC + offs, dcp, mask=inb)


def gru_bwd(TAB, BASE, SBASE, H0, D1, D2, S, DHN, LEN, ZP, LW, t, B, H, G,
            GRU: tl.constexpr, KZ: tl.constexpr, KN: tl.constexpr, KR: tl.constexpr, REFINE: tl.constexpr,
            HAS_D1: tl.constexpr, MASKED: tl.constexpr, FIRST: tl.constexpr, ZH: tl.constexpr,
            RDROP: tl.constexpr, LN: tl.constexpr, BLOCK: tl.constexpr):
    """One GRU/MGU step backwards. dL/dh_t = DOUT_t + D1 (``S_{t+1} W_hh``) + D2 (the direct part
    of dL/dh_t from step t+1, or dh_n); writes DA_t (gradients of the input projection), S (of
    the recurrent projection: they differ in the candidate block), DGHN_t (S's candidate block,
    for W_hh's gradient) and DHN (the direct part of dL/dh_{t-1}, state dtype). h_{t-1} is
    HF_{t-1}, or H0 at t = 0 (FIRST); it, A_t and AUX_t are read in the state dtype. RDROP
    scales D1 by RM; ZH sends ``z_h dh_t`` straight to DHN (cells.h's gru_mgu_bwd). LN: one row
    per program; S (the recurrent side's gradients) back through LN_hh (XH_t, RS_t) into S and DH_t."""
    if LN:  # one batch row per program (the norm reduces over it)
        j = tl.arange(0, BLOCK)
        b = tl.program_id(0) + j * 0
        inb = j < H
        offs = b * H + j
    else:
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        inb = offs < B * H
        b = offs // H
        j = offs - b * H
    step = t.to(tl.int64) * B
    a = SBASE + tl.load(TAB + _A) + step * G + b * G + j
    da = BASE + tl.load(TAB + _DA) + step * G + b * G + j
    sr = S + b * G + j
    carry = tl.load(D2 + offs, mask=inb, other=0.0)
    sd = carry.dtype
    if HAS_D1:
        d1 = tl.load(D1 + offs, mask=inb, other=0.0).to(sd)
        if RDROP:
            d1 = d1 * tl.load(SBASE + tl.load(TAB + _RM) + offs, mask=inb, other=0.0)
        carry = carry + d1
    dht = tl.load(BASE + tl.load(TAB + _DOUT) + step * H + offs, mask=inb, other=0.0).to(sd) + carry
    if ZH != 0:  # h_t = h~ + z (h_{t-1} - h~): z dh_t goes straight to h_{t-1}
        if ZH == 1:
            zh = tl.load(SBASE + tl.load(TAB + _ZH) + step * H + offs, mask=inb, other=0.0)
        else:
            zh = tl.load(ZP)
        direct = zh * dht
        dht = dht - direct
    z = tl.load(a + KZ * H, mask=inb, other=0.0).to(sd)
    cand = tl.load(a + KN * H, mask=inb, other=0.0).to(sd)
    q = tl.load(SBASE + tl.load(TAB + _AUX) + step * H + offs, mask=inb, other=0.0).to(sd)
    if FIRST:
        h0 = tl.load(H0 + offs, mask=inb, other=0.0).to(sd)
    else:
        h0 = tl.load(SBASE + tl.load(TAB + _HF) + step * H - B * H + offs, mask=inb, other=0.0).to(sd)
    keep = z
    dgdf = 1.0
    if REFINE:
        r = tl.load(a + KR * H, mask=inb, other=0.0).to(sd)
        keep = z * z + 2.0 * r * z * (1.0 - z)
        dgdf = 2.0 * (r * (1.0 - z) + (1.0 - r) * z)
        dgdr = 2.0 * z * (1.0 - z)
    dkeep = dht * (h0 - cand)
    dpn = dht * (1.0 - keep) * (1.0 - cand * cand)  # grad of the candidate's pre-activation
    dz = dkeep * dgdf
    if GRU:
        rs = tl.load(a, mask=inb, other=0.0).to(sd)
        dps = dpn * q * rs * (1.0 - rs)
        sn = dpn * rs
    else:
        dz = dz - dpn * q  # the reset 1 - f also depends on f
        sn = dpn * (1.0 - z)
    dpz = dz * z * (1.0 - z)
    dhn = dht * keep
    if ZH != 0:
        dhn = dhn + direct
    if REFINE:
        dpr = dkeep * dgdr * r * (1.0 - r)
    if MASKED:  # past the sequence's end: no gradient into the gates, dh passes through
        live = t < tl.load(LEN + b, mask=inb, other=0)
        dpn = tl.where(live, dpn, 0.0)
        sn = tl.where(live, sn, 0.0)
        dpz = tl.where(live, dpz, 0.0)
        dhn = tl.where(live, dhn, carry)
        if GRU:
            dps = tl.where(live, dps, 0.0)
        if REFINE:
            dpr = tl.where(live, dpr, 0.0)
    if GRU:
        tl.store(da, dps, mask=inb)
    tl.store(da + KZ * H, dpz, mask=inb)
    tl.store(da + KN * H, dpn, mask=inb)
    tl.store(BASE + tl.load(TAB + _DGHN) + step * H + offs, sn, mask=inb)
    if REFINE:
        tl.store(da + KR * H, dpr, mask=inb)
    zero = tl.full([BLOCK], 0.0, dtype=sd)
    sz, ss, srf = dpz, zero, zero  # the recurrent side's gradients, block by block
    if GRU:
        ss = dps
    if REFINE:
        srf = dpr
    if LN:  # back through LN_hh over the row's G gate rows (an absent block is zeros)
        xh = SBASE + tl.load(TAB + _XH) + step * G + b * G + j
        xz, xn = tl.load(xh + KZ * H, mask=inb, other=0.0), tl.load(xh + KN * H, mask=inb, other=0.0)
        sz, sn = tl.load(LW + KZ * H + j, mask=inb, other=0.0) * sz, tl.load(LW + KN * H + j, mask=inb, other=0.0) * sn
        xs, xr = zero, zero
        if GRU:
            xs = tl.load(xh, mask=inb, other=0.0)
            ss = tl.load(LW + j, mask=inb, other=0.0) * ss
        if REFINE:
            xr = tl.load(xh + KR * H, mask=inb, other=0.0)
            srf = tl.load(LW + KR * H + j, mask=inb, other=0.0) * srf
        m1 = tl.reduce(sz + sn + ss + srf, 0, _add) / G
        m2 = tl.reduce(sz * xz + sn * xn + ss * xs + srf * xr, 0, _add) / G
        rs = tl.load(SBASE + tl.load(TAB + _RS) + step + b, mask=inb, other=0.0)
        sz, sn = rs * (sz - m1 - xz * m2), rs * (sn - m1 - xn * m2)
        ss, srf = rs * (ss - m1 - xs * m2), rs * (srf - m1 - xr * m2)
        dr = BASE + tl.load(TAB + _DH) + step * G + b * G + j
        tl.store(dr + KZ * H, sz, mask=inb)
        tl.store(dr + KN * H, sn, mask=inb)
        if GRU:
            tl.store(dr, ss, mask=inb)
        if REFINE:
            tl.store(dr + KR * H, srf, mask=inb)
    if GRU:
        tl.store(sr, ss, mask=inb)
    tl.store(sr + KZ * H, sz, mask=inb)
    tl.store(sr + KN * H, sn, mask=inb)
    if REFINE:
        tl.store(sr + KR * H, srf, mask=inb)
    tl.store(DHN + offs, dhn, mask=inb)


def proj_dh(TAB, BASE, SBASE, D1, D2, DHS, CARRY, LEN, ZP, t, B, P,
            HAS_D1: tl.constexpr, HAS_D2: tl.constexpr, MASKED: tl.constexpr, ZH: tl.constexpr,
            RDROP: tl.constexpr, BLOCK: tl.constexpr):
    """LSTM with projections, one step backwards, as projection.h's project_bwd: dL/dh_t = DOUT_t +
    D1 (times RM with RDROP: the product read h_t RM) + D2; ZH sends z dL/dh_t straight to h_{t-1}
    (CARRY) on rows in their sequence, and the rest, dh~, goes into DP_t (for W_hr's gradient) and
    DHS (the next product's input); CARRY: D1 + D2 on rows past their end (their state was held)."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    inb = offs < B * P
    b = offs // P
    step = t.to(tl.int64) * B * P
    d = tl.full([BLOCK], 0.0, dtype=CARRY.dtype.element_ty)
    if HAS_D1:
        d1 = tl.load(D1 + offs, mask=inb, other=0.0).to(d.dtype)
        if RDROP:
            d1 = d1 * tl.load(SBASE + tl.load(TAB + _RM) + offs, mask=inb, other=0.0).to(d.dtype)
        d = d + d1
    if HAS_D2:
        d = d + tl.load(D2 + offs, mask=inb, other=0.0).to(d.dtype)
    dh = tl.load(BASE + tl.load(TAB + _DOUT) + step + offs, mask=inb, other=0.0).to(d.dtype) + d
    carry = tl.full([BLOCK], 0.0, dtype=d.dtype)
    if ZH != 0:
        if ZH == 1:
            z = tl.load(SBASE + tl.load(TAB + _ZH) + step + offs, mask=inb, other=0.0).to(d.dtype)
        else:
            z = tl.load(ZP).to(d.dtype)
        carry = z * dh
        dh = dh - carry
    if MASKED:
        live = t < tl.load(LEN + b, mask=inb, other=0)
        carry = tl.where(live, carry, d)
        if ZH != 0:
            dh = tl.where(live, dh, 0.0)
    tl.store(BASE + tl.load(TAB + _DP) + step + offs, dh, mask=inb)
    tl.store(DHS + offs, dh, mask=inb)
    if MASKED or ZH != 0:
        tl.store(CARRY + offs, carry, mask=inb)


_FUNCTIONS = (lstm_fwd, gru_fwd, proj_out, lstm_bwd, gru_bwd, proj_dh)


@functools.cache
def kernels(interpret: bool) -> types.SimpleNamespace:
    """The kernels, jitted for the GPU or run by Triton's interpreter (CPU tensors)."""
    if interpret:
        from triton.runtime.interpreter import InterpretedFunction

        return types.SimpleNamespace(**{fn.__name__: InterpretedFunction(fn) for fn in _FUNCTIONS})
    import triton

    # t changes every step: no specialisation on its value (t == 1, t % 16 == 0)
    return types.SimpleNamespace(**{fn.__name__: triton.jit(fn, do_not_specialize=["t"]) for fn in _FUNCTIONS})
