"""Independent scalar oracle for the paper's gate equations, checked against every (core, variant).

What this file checks
---------------------
For each recurrent core (LSTM, GRU, MGU) and each of its variants (``-``, ``C``, ``O``, ``U``,
``R``, ``OM``, ``OR``, ``UM``, ``UR``; MGU has no cumax/master variants), the module's outputs,
final states and the gradients of a random scalar loss with respect to the input, the initial
states and *every* parameter are compared, in float64 at rtol=1e-10 / atol=1e-12, with a
transcription of the equations of Gu et al. 2020 ("Improving the Gating Mechanism of Recurrent
Neural Networks", arXiv 1910.09890, Sections 2-3) and of Shen et al. 2019 (ON-LSTM master gates).

Why it is independent
---------------------
The oracle below was written from the equations, not from ``gated/cores.py`` or
``gated/backends``: it loops over time steps, batch rows and hidden units, and computes every
pre-activation as an explicit scalar sum ``sum(W[row, k] * x[k] for k ...)`` on 0-d float64
tensors (so that autograd still gives gradients).  No matrix product on a gate block, no
``chunk``, no library gate function is used.  The only thing shared with the library is the
parameter layout (torch's ``weight_ih_l0`` / ``weight_hh_l0`` / ``bias_ih_l0`` / ``bias_hh_l0``
plus ``forget_bias_l0`` in the ``R`` / ``UR`` variants), which is part of the public interface.

The oracle itself is validated against ``torch.nn.LSTM`` / ``torch.nn.GRU`` (``-`` variant),
the MGU ``-`` variant against Zhou et al. 2016's MGU in its own convention, and
``gated.gates.refine_gate`` against the two closed forms of the paper's effective gate.
"""

from __future__ import annotations

import math

import pytest
import torch

import gated

I, H, B, T = 2, 3, 2, 3
RTOL, ATOL = 1e-10, 1e-12
DT = torch.float64

REFINE_VARIANTS = ("R", "OR", "UR")
MASTER_VARIANTS = ("OM", "UM")
CUMAX_VARIANTS = ("O", "OM", "OR")
UGI_BIAS_VARIANTS = ("R", "UR")  # the variants with a trainable ``forget_bias_l0``

# Order of the H-row blocks in the fused weight matrices, per core.
BLOCKS = {"LSTM": ("i", "f", "g", "o"), "GRU": ("r", "z", "n"), "MGU": ("f", "n")}
KEEP_BLOCK = {"LSTM": "f", "GRU": "z", "MGU": "f"}


# ------------------------------------------------------------------------------------------------
# Scalar building blocks (0-d tensors only)
# ------------------------------------------------------------------------------------------------

def _sigmoid(v):
    """Logistic sigmoid of a 0-d tensor, written out."""
    return 1.0 / (1.0 + torch.exp(-v))


def _tanh(v):
    return torch.tanh(v)


def _cumax(values):
    """cumax over a list of 0-d tensors: cumulative sum of the softmax (Shen et al. 2019, Eq. 6)."""
    top = max(float(v.detach()) for v in values)  # constant shift: the softmax is unchanged
    exps = [torch.exp(v - top) for v in values]
    total = sum(exps)
    out, running = [], 0.0
    for e in exps:
        running = running + e / total
        out.append(running)
    return out


def _upsample(master, chunk_size):
    """Master vector of length m -> H units; unit j takes master unit floor(j / chunk_size)."""
    return [master[j // chunk_size] for j in range(H)]


def _refine(f, r):
    """Paper Eq. 10: g = r * (1 - (1 - f)^2) + (1 - r) * f^2."""
    return r * (1.0 - (1.0 - f) ** 2) + (1.0 - r) * f ** 2


# ------------------------------------------------------------------------------------------------
# Row layout of the fused parameters
# ------------------------------------------------------------------------------------------------

def _num_master(chunk_size):
    return math.ceil(H / chunk_size)


def _block_rows(core, variant, chunk_size):
    """Map block name -> list of row indices in weight_ih / weight_hh / biases."""
    rows, start = {}, 0
    for name in BLOCKS[core]:
        rows[name] = list(range(start, start + H))
        start += H
    if variant in REFINE_VARIANTS:
        if core == "LSTM":
            rows["refine"] = rows["i"]  # the input gate's rows hold the refine gate
        else:
            rows["refine"] = list(range(start, start + H))
            start += H
    if variant in MASTER_VARIANTS:
        m = _num_master(chunk_size)
        rows["master_f"] = list(range(start, start + m))
        start += m
        rows["master_i"] = list(range(start, start + m))
        start += m
    return rows, start


def _pre_parts(p, row, x, h):
    """(W_ih[row] x + b_ih[row], W_hh[row] h + b_hh[row]) as two scalars, summed unit by unit."""
    from_x = sum(p["weight_ih_l0"][row, k] * x[k] for k in range(I)) + p["bias_ih_l0"][row]
    from_h = sum(p["weight_hh_l0"][row, k] * h[k] for k in range(H)) + p["bias_hh_l0"][row]
    return from_x, from_h


def _pre(p, row, x, h):
    a, b = _pre_parts(p, row, x, h)
    return a + b


# ------------------------------------------------------------------------------------------------
# Gate rules shared by all cores
# ------------------------------------------------------------------------------------------------

def _gates(core, variant, p, rows, x, h, chunk_size):
    """Return (f, keep, write) for one sample, each a list of H scalars.

    ``f`` is the primary gate (before refinement / master gates), used by the MGU candidate.
    """
    act = _cumax if variant in CUMAX_VARIANTS else (lambda vs: [_sigmoid(v) for v in vs])
    bf = ([p["forget_bias_l0"][j] for j in range(H)] if variant in UGI_BIAS_VARIANTS
          else [0.0] * H)
    p_keep = [_pre(p, rows[KEEP_BLOCK[core]][j], x, h) for j in range(H)]

    if variant in MASTER_VARIANTS:
        f = [_sigmoid(v) for v in p_keep]  # fine-grained gate is a plain sigmoid
        if core == "LSTM":
            w0 = [_sigmoid(_pre(p, rows["i"][j], x, h)) for j in range(H)]
        else:
            w0 = [1.0 - fj for fj in f]
        m_act = _cumax if variant == "OM" else (lambda vs: [_sigmoid(v) for v in vs])
        mf = _upsample(m_act([_pre(p, r, x, h) for r in rows["master_f"]]), chunk_size)
        mi = _upsample([1.0 - v for v in m_act([_pre(p, r, x, h) for r in rows["master_i"]])],
                       chunk_size)
        keep, write = [], []
        for j in range(H):
            omega = mf[j] * mi[j]
            keep.append(f[j] * omega + (mf[j] - omega))
            write.append(w0[j] * omega + (mi[j] - omega))
        return f, keep, write

    f = act([p_keep[j] + bf[j] for j in range(H)])
    if variant in REFINE_VARIANTS:
        r = [_sigmoid(_pre(p, rows["refine"][j], x, h) - bf[j]) for j in range(H)]
        g = [_refine(f[j], r[j]) for j in range(H)]
        return f, g, [1.0 - gj for gj in g]
    if core == "LSTM":
        write = [_sigmoid(_pre(p, rows["i"][j], x, h)) for j in range(H)]
    else:
        write = [1.0 - fj for fj in f]
    return f, f, write


# ------------------------------------------------------------------------------------------------
# One step per core, for one sample (lists of scalars)
# ------------------------------------------------------------------------------------------------

def _scalar_step_lstm(variant, p, rows, x, h, c, chunk_size):
    _, keep, write = _gates("LSTM", variant, p, rows, x, h, chunk_size)
    c_new, h_new = [], []
    for j in range(H):
        u = _tanh(_pre(p, rows["g"][j], x, h))
        o = _sigmoid(_pre(p, rows["o"][j], x, h))
        cj = keep[j] * c[j] + write[j] * u
        c_new.append(cj)
        h_new.append(o * _tanh(cj))
    return h_new, c_new


def _scalar_step_gru(variant, p, rows, x, h, chunk_size):
    _, keep, write = _gates("GRU", variant, p, rows, x, h, chunk_size)
    h_new = []
    for j in range(H):
        s = _sigmoid(_pre(p, rows["r"][j], x, h))
        nx, nh = _pre_parts(p, rows["n"][j], x, h)
        n = _tanh(nx + s * nh)  # torch's "reset-after" candidate
        h_new.append(keep[j] * h[j] + write[j] * n)
    return h_new


def _scalar_step_mgu(variant, p, rows, x, h, chunk_size):
    f, keep, write = _gates("MGU", variant, p, rows, x, h, chunk_size)
    h_new = []
    for j in range(H):
        nx, nh = _pre_parts(p, rows["n"][j], x, h)
        n = _tanh(nx + (1.0 - f[j]) * nh)  # primary gate f, before refinement
        h_new.append(keep[j] * h[j] + write[j] * n)
    return h_new


def _oracle(core, variant, p, x, h0, c0=None, chunk_size=4):
    """Run the scalar oracle over (T, B, I) input. Returns out (T, B, H), h_n (1, B, H), c_n."""
    rows, _ = _block_rows(core, variant, chunk_size)
    outs = [[None] * B for _ in range(T)]
    h_fin, c_fin = [], []
    for b in range(B):
        h = [h0[0, b, j] for j in range(H)]
        c = [c0[0, b, j] for j in range(H)] if c0 is not None else None
        for t in range(T):
            xt = [x[t, b, k] for k in range(I)]
            if core == "LSTM":
                h, c = _scalar_step_lstm(variant, p, rows, xt, h, c, chunk_size)
            elif core == "GRU":
                h = _scalar_step_gru(variant, p, rows, xt, h, chunk_size)
            else:
                h = _scalar_step_mgu(variant, p, rows, xt, h, chunk_size)
            outs[t][b] = torch.stack(h)
        h_fin.append(torch.stack(h))
        if c is not None:
            c_fin.append(torch.stack(c))
    out = torch.stack([torch.stack(row) for row in outs])
    h_n = torch.stack(h_fin).unsqueeze(0)
    c_n = torch.stack(c_fin).unsqueeze(0) if c0 is not None else None
    return out, h_n, c_n


# ------------------------------------------------------------------------------------------------
# Test harness
# ------------------------------------------------------------------------------------------------

def _perturbed(module, gen):
    with torch.no_grad():
        for prm in module.parameters():
            prm.add_(0.3 * torch.randn(prm.shape, generator=gen, dtype=DT))
    return module


def _inputs(gen, lstm):
    x = torch.randn(T, B, I, generator=gen, dtype=DT)
    h0 = torch.randn(1, B, H, generator=gen, dtype=DT)
    c0 = torch.randn(1, B, H, generator=gen, dtype=DT) if lstm else None
    w_out = torch.randn(T, B, H, generator=gen, dtype=DT)
    w_h = torch.randn(1, B, H, generator=gen, dtype=DT)
    w_c = torch.randn(1, B, H, generator=gen, dtype=DT)
    return x, h0, c0, (w_out, w_h, w_c)


def _loss(out, h_n, c_n, weights):
    w_out, w_h, w_c = weights
    loss = (out * w_out).sum() + (h_n * w_h).sum()
    if c_n is not None:
        loss = loss + (c_n * w_c).sum()
    return loss


def _run_module(module, x, h0, c0, weights):
    """Forward + backward through a module; returns (out, h_n, c_n, grads for x, h0, c0, params)."""
    names = [n for n, _ in module.named_parameters()]
    params = [prm for _, prm in module.named_parameters()]
    x, h0 = x.clone().requires_grad_(), h0.clone().requires_grad_()
    leaves = [x, h0]
    if c0 is not None:
        c0 = c0.clone().requires_grad_()
        leaves.append(c0)
        out, (h_n, c_n) = module(x, (h0, c0))
    else:
        out, h_n = module(x, h0)
        c_n = None
    grads = torch.autograd.grad(_loss(out, h_n, c_n, weights), leaves + params)
    return out.detach(), h_n.detach(), None if c_n is None else c_n.detach(), \
        dict(zip(["x", "h0", "c0"][: len(leaves)] + names, grads))


def _run_oracle(core, variant, module, x, h0, c0, weights, chunk_size=4):
    p = {n: prm.detach().clone().requires_grad_() for n, prm in module.named_parameters()}
    x, h0 = x.clone().requires_grad_(), h0.clone().requires_grad_()
    leaves = [x, h0]
    if c0 is not None:
        c0 = c0.clone().requires_grad_()
        leaves.append(c0)
    out, h_n, c_n = _oracle(core, variant, p, x, h0, c0, chunk_size=chunk_size)
    grads = torch.autograd.grad(_loss(out, h_n, c_n, weights), leaves + list(p.values()))
    return out.detach(), h_n.detach(), None if c_n is None else c_n.detach(), \
        dict(zip(["x", "h0", "c0"][: len(leaves)] + list(p), grads))


def _expected_param_shapes(core, variant, chunk_size):
    _, rows = _block_rows(core, variant, chunk_size)
    shapes = {"weight_ih_l0": (rows, I), "weight_hh_l0": (rows, H),
              "bias_ih_l0": (rows,), "bias_hh_l0": (rows,)}
    if variant in UGI_BIAS_VARIANTS:
        shapes["forget_bias_l0"] = (H,)
    return shapes


CASES = [(core, v, 4) for core in ("LSTM", "GRU", "MGU") for v in gated.CORES[core.lower()].variants]
CASES += [(core, v, cs) for core in ("LSTM", "GRU") for v in MASTER_VARIANTS for cs in (2, 1)]


@pytest.mark.parametrize(
    "core,variant,chunk_size", CASES, ids=[f"{c}-{v}-chunk{cs}" for c, v, cs in CASES]
)
def test_module_matches_scalar_oracle(core, variant, chunk_size):
    seed = 1000 + CASES.index((core, variant, chunk_size))
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    kwargs = {"chunk_size": chunk_size} if chunk_size != 4 else {}
    module = _perturbed(getattr(gated, core)(I, H, variant=variant, dtype=DT, **kwargs), gen)
    # The layout the oracle assumes must be the module's layout.
    got_shapes = {n: tuple(prm.shape) for n, prm in module.named_parameters()}
    assert got_shapes == _expected_param_shapes(core, variant, chunk_size)

    x, h0, c0, weights = _inputs(gen, lstm=core == "LSTM")
    out, h_n, c_n, grads = _run_module(module, x, h0, c0, weights)
    o_out, o_h, o_c, o_grads = _run_oracle(core, variant, module, x, h0, c0, weights, chunk_size)

    torch.testing.assert_close(out, o_out, rtol=RTOL, atol=ATOL, msg=lambda m: f"out: {m}")
    torch.testing.assert_close(h_n, o_h, rtol=RTOL, atol=ATOL, msg=lambda m: f"h_n: {m}")
    if core == "LSTM":
        torch.testing.assert_close(c_n, o_c, rtol=RTOL, atol=ATOL, msg=lambda m: f"c_n: {m}")
    assert grads.keys() == o_grads.keys()
    for name in grads:
        torch.testing.assert_close(grads[name], o_grads[name], rtol=RTOL, atol=ATOL,
                                   msg=lambda m, name=name: f"grad {name}: {m}")


# ------------------------------------------------------------------------------------------------
# Validating the oracle itself
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("core", ["LSTM", "GRU"])
def test_oracle_plain_variant_matches_torch_nn(core):
    """The oracle's "-" variant is exactly torch.nn.LSTM / torch.nn.GRU (same parameter layout)."""
    torch.manual_seed(7)
    gen = torch.Generator().manual_seed(7)
    module = _perturbed(getattr(torch.nn, core)(I, H, dtype=DT), gen)
    x, h0, c0, weights = _inputs(gen, lstm=core == "LSTM")
    out, h_n, c_n, grads = _run_module(module, x, h0, c0, weights)
    o_out, o_h, o_c, o_grads = _run_oracle(core, "-", module, x, h0, c0, weights)
    torch.testing.assert_close(out, o_out, rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(h_n, o_h, rtol=RTOL, atol=ATOL)
    if core == "LSTM":
        torch.testing.assert_close(c_n, o_c, rtol=RTOL, atol=ATOL)
    for name in grads:
        torch.testing.assert_close(grads[name], o_grads[name], rtol=RTOL, atol=ATOL)


def test_mgu_plain_matches_zhou_convention():
    """MGU "-" equals Zhou et al. 2016's MGU written with its own gate f_z = 1 - f.

    Zhou: f_z = σ(W_f [h, x] + b_f), h~ = tanh(W_h [f_z ⊙ h, x] + b_h), h' = (1 - f_z) h + f_z h~.
    The library keeps torch's parameter layout and torch's "reset-after" candidate, so the gate
    multiplies the whole recurrent term, bias included: h~ = tanh(W_ih[n] x + b_ih[n]
    + f_z ⊙ (W_hh[n] h + b_hh[n])). We compare against that reset-after form. With the library's
    keep-gate convention f, f_z = 1 - f = σ(-P_f), i.e. Zhou's weights are the f block negated.
    """
    torch.manual_seed(11)
    gen = torch.Generator().manual_seed(11)
    module = _perturbed(gated.MGU(I, H, variant="-", dtype=DT), gen)
    x, h0, _, _ = _inputs(gen, lstm=False)
    with torch.no_grad():
        out, h_n = module(x, h0)
    p = dict(module.named_parameters())
    wz_x, wz_h = -p["weight_ih_l0"][:H], -p["weight_hh_l0"][:H]  # Zhou's forget-gate weights
    bz = -(p["bias_ih_l0"][:H] + p["bias_hh_l0"][:H])
    wn_x, wn_h = p["weight_ih_l0"][H:2 * H], p["weight_hh_l0"][H:2 * H]
    bn_x, bn_h = p["bias_ih_l0"][H:2 * H], p["bias_hh_l0"][H:2 * H]
    h = h0[0].detach()
    ref = []
    with torch.no_grad():
        for t in range(T):
            fz = torch.sigmoid(x[t] @ wz_x.T + h @ wz_h.T + bz)
            cand = torch.tanh(x[t] @ wn_x.T + bn_x + fz * (h @ wn_h.T + bn_h))
            h = (1 - fz) * h + fz * cand
            ref.append(h)
    torch.testing.assert_close(out, torch.stack(ref), rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(h_n[0], h, rtol=RTOL, atol=ATOL)


# ------------------------------------------------------------------------------------------------
# Refine-gate algebra
# ------------------------------------------------------------------------------------------------

def test_refine_gate_closed_forms():
    """gated.gates.refine_gate(f, r) equals the paper's Eq. 10 and the pseudo-code form 2rf + (1-2r)f^2."""
    grid = torch.linspace(0.0, 1.0, 41, dtype=DT)
    f, r = torch.meshgrid(grid, grid, indexing="ij")
    f = f + 1e-3 * torch.sin(7 * r)  # off the regular grid points, still in [0, 1]
    f = f.clamp(0.0, 1.0)
    got = gated.gates.refine_gate(f, r)
    eq10 = r * (1 - (1 - f) ** 2) + (1 - r) * f ** 2
    pseudo = 2 * r * f + (1 - 2 * r) * f ** 2
    torch.testing.assert_close(got, eq10, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(got, pseudo, rtol=1e-12, atol=1e-14)
    # r = 0 / 1 reach the lower / upper bands, r = 1/2 gives back f.
    torch.testing.assert_close(gated.gates.refine_gate(grid, torch.zeros_like(grid)), grid ** 2)
    torch.testing.assert_close(gated.gates.refine_gate(grid, torch.ones_like(grid)),
                               1 - (1 - grid) ** 2)
    torch.testing.assert_close(gated.gates.refine_gate(grid, torch.full_like(grid, 0.5)), grid)
