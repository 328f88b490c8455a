"""Higher-order gradients and torch.func on every backend, against the reference backend.

The reference backend is plain torch ops, so autograd differentiates it to any order; the fused
backend's hand-written backward recomputes through it when a differentiable gradient is asked
for (``create_graph=True``). Every test compares values: gradients of a gradient penalty,
Hessian-vector products, Jacobians, gradgradcheck (finite differences), batched gradients.
"""

import os
import shutil

import pytest
import torch
import torch.func as tf
from torch.nn.utils.rnn import pack_sequence

import gated
from gated.backends import _build, fused_cpu

pytestmark = pytest.mark.skipif(shutil.which(os.environ.get("CXX", "c++")) is None, reason="no C++ compiler")

FUSED = [(c, v) for c in ("LSTM", "GRU", "MGU") for v in ("-", "C", "U", "R", "UR")]
BACKENDS = ["reference", "fused_cpu", "auto"]


def _module(core, variant, **kw):
    m = getattr(gated, core)(3, 4, variant=variant, dtype=torch.float64, **kw)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return m


def _penalty_grads(m, x, backend):
    """d/d(params, x) of ||d loss / d(params, x)||^2: a gradient penalty, as in WGAN-GP."""
    m.backend = backend
    out, _ = m(x)
    data = out.data if hasattr(out, "batch_sizes") else out
    leaves = [*m.parameters(), x.data if hasattr(x, "batch_sizes") else x]
    g = torch.autograd.grad(data.pow(2).sum(), leaves, create_graph=True)
    assert all(t.requires_grad for t in g)
    penalty = sum(t.pow(2).sum() for t in g)
    return torch.autograd.grad(penalty, leaves)


@pytest.mark.parametrize("core,variant", FUSED, ids=[f"{c}-{v}" for c, v in FUSED])
def test_double_backward_equals_reference(core, variant):
    m = _module(core, variant, num_layers=2, bidirectional=True)
    x = torch.randn(5, 2, 3, dtype=torch.float64, requires_grad=True)
    ref = _penalty_grads(m, x, "reference")
    names = [n for n, _ in m.named_parameters()] + ["input"]
    for backend in ("fused_cpu", "auto"):
        got = _penalty_grads(m, x, backend)
        for name, a, b in zip(names, got, ref):
            assert a is not None, name
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10, msg=lambda s, n=name: f"{backend} {n}: {s}")


def test_double_backward_packed_sequence():
    m = _module("LSTM", "UR", num_layers=2, bidirectional=True)
    x = pack_sequence([torch.randn(n, 3, dtype=torch.float64) for n in (4, 2, 5)], enforce_sorted=False)
    x.data.requires_grad_(True)
    for a, b in zip(_penalty_grads(m, x, "fused_cpu"), _penalty_grads(m, x, "reference")):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("core,variant", FUSED, ids=[f"{c}-{v}" for c, v in FUSED])
def test_gradgradcheck_fused(core, variant):
    m = _module(core, variant)
    m.backend = "fused_cpu"
    x = torch.randn(3, 2, 3, dtype=torch.float64, requires_grad=True)
    h = torch.randn(1, 2, 4, dtype=torch.float64, requires_grad=True)
    hx = (h, h * 0.5) if core == "LSTM" else h

    def f(x, h):
        out, st = m(x, (h, h * 0.5) if core == "LSTM" else h)
        return out, *(st if isinstance(st, tuple) else (st,))

    assert hx is not None
    assert torch.autograd.gradgradcheck(f, (x, h), check_batched_grad=True)


def test_hvp_is_the_references():
    m = _module("GRU", "UR")
    x = torch.randn(4, 2, 3, dtype=torch.float64)
    v = torch.randn_like(x)
    res = {}
    for backend in ("reference", "fused_cpu"):
        m.backend = backend
        res[backend] = torch.autograd.functional.hvp(lambda x: m(x)[0].pow(3).sum(), x, v)[1]
    assert res["fused_cpu"].abs().sum() > 0
    torch.testing.assert_close(res["fused_cpu"], res["reference"], rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("core", ["LSTM", "GRU", "MGU"])
def test_batched_gradcheck_fused(core):
    """gradcheck with torch's defaults plus batched gradients (autograd.grad(is_grads_batched=True),
    which vmaps the fused backward)."""
    m = _module(core, "UR")
    m.backend = "fused_cpu"
    x = torch.randn(3, 2, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: m(x)[0], (x,), check_batched_grad=True)


# --------------------------------------------------------------------------- torch.func

def _f(m, backend):
    def run(x):
        m.backend = backend
        out, st = m(x)
        return out
    return run


@pytest.mark.parametrize("backend", BACKENDS)
def test_func_grad_and_jacrev(backend):
    m = _module("LSTM", "UR", num_layers=2)
    x = torch.randn(4, 2, 3, dtype=torch.float64)
    ref_grad = tf.grad(lambda x: _f(m, "reference")(x).pow(2).sum())(x)
    ref_jac = tf.jacrev(_f(m, "reference"))(x)
    torch.testing.assert_close(tf.grad(lambda x: _f(m, backend)(x).pow(2).sum())(x), ref_grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(tf.jacrev(_f(m, backend))(x), ref_jac, rtol=1e-10, atol=1e-12)
    # the reference's Jacobian is the Jacobian: finite differences on one input element
    eps = 1e-6
    dx = torch.zeros_like(x)
    dx[2, 1, 0] = eps
    fd = (_f(m, "reference")(x + dx) - _f(m, "reference")(x - dx)) / (2 * eps)
    torch.testing.assert_close(ref_jac[..., 2, 1, 0], fd, rtol=1e-6, atol=1e-8)


def test_func_grad_over_parameters():
    """functional_call + grad, the meta-learning pattern, equals the module's .grad."""
    m = _module("GRU", "UR")
    x = torch.randn(5, 3, 3, dtype=torch.float64)
    params = {k: v.detach() for k, v in m.named_parameters()}
    got = tf.grad(lambda p: torch.func.functional_call(m, p, (x,))[0].sum())(params)
    m.backend = "fused_cpu"
    m(x)[0].sum().backward()
    for name, p in m.named_parameters():
        torch.testing.assert_close(got[name], p.grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_func_vmap_over_the_batch_and_over_weights(backend):
    m = _module("MGU", "UR")
    x = torch.randn(4, 5, 3, dtype=torch.float64)
    ref = _f(m, "reference")(x)
    got = tf.vmap(lambda xb: _f(m, backend)(xb.unsqueeze(1)).squeeze(1), in_dims=1, out_dims=1)(x)
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-12)
    # an ensemble: vmap over stacked copies of the weights
    models = [_module("MGU", "UR") for _ in range(3)]
    params, buffers = torch.func.stack_module_state(models)

    def call(p, b):
        m.backend = backend
        return torch.func.functional_call(m, (p, b), (x,))[0]

    got = tf.vmap(call)(params, buffers)
    for k, mk in enumerate(models):
        torch.testing.assert_close(got[k], mk._run(x, backend="reference")[0], rtol=1e-10, atol=1e-12)


def test_func_jvp_and_forward_ad():
    m = _module("LSTM", "UR")
    x = torch.randn(4, 2, 3, dtype=torch.float64)
    v = torch.randn_like(x)
    jac = tf.jacrev(_f(m, "reference"))(x)
    expected = (jac * v).sum(dim=(-3, -2, -1))
    for backend in ("auto", "reference"):
        _, tangent = tf.jvp(_f(m, backend), (x,), (v,))
        torch.testing.assert_close(tangent, expected, rtol=1e-10, atol=1e-12)
    with torch.autograd.forward_ad.dual_level():
        dual = torch.autograd.forward_ad.make_dual(x, v)
        m.backend = "auto"
        tangent = torch.autograd.forward_ad.unpack_dual(m(dual)[0]).tangent
    torch.testing.assert_close(tangent, expected, rtol=1e-10, atol=1e-12)
    with pytest.raises(RuntimeError, match="forward-mode AD"):
        tf.jvp(_f(m, "fused_cpu"), (x,), (v,))


def test_func_hessian():
    m = _module("GRU", "-")
    x = torch.randn(3, 1, 3, dtype=torch.float64)
    hess = {b: tf.hessian(lambda x: _f(m, b)(x).pow(2).sum())(x) for b in ("reference", "auto")}
    torch.testing.assert_close(hess["auto"], hess["reference"], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(hess["reference"], hess["reference"].flatten(0, 2).flatten(1).t().reshape_as(hess["reference"]))


def test_opcheck_fused_ops():
    """torch.library.opcheck: schemas, fake implementations (shapes under FakeTensor and dynamic
    shapes) and AOT dispatch of the extension's compute ops."""
    ops = _build.load()
    assert ops is not None
    torch.manual_seed(0)
    T, B, I, H = 4, 3, 5, 6
    for core, blocks, refine in ((0, 4, True), (1, 4, True), (2, 2, False)):
        G = blocks * H
        x, w_ih, w_hh = torch.randn(T, B, I), torch.randn(G, I), torch.randn(G, H)
        b_ih, b_hh, fb = torch.randn(G), torch.randn(G), torch.randn(H)
        h0, c0 = torch.randn(B, H), (torch.randn(B, H) if core == 0 else None)
        lengths = torch.tensor([4, 2, 3])
        args = (x, w_ih, w_hh, b_ih, b_hh, fb if refine else None, h0, c0, lengths, None, core, refine, True)
        torch.library.opcheck(torch.ops.gated_fused.recurrence_forward.default, args)
        out, h_n, c_n, A, aux, _ = torch.ops.gated_fused.recurrence_forward(*args)
        dc = torch.randn(B, H) if core == 0 else None
        bwd = (torch.randn_like(out), torch.randn_like(h_n), dc, A, aux, out, h0, c0, w_hh, lengths, None, core, refine)
        torch.library.opcheck(torch.ops.gated_fused.recurrence_backward.default, bwd)
        dA = torch.randn(T * B, G)
        a2 = None if core == 0 else torch.randn(T * B, H)
        torch.library.opcheck(torch.ops.gated_fused.xh_mm.default, (dA, a2, x.reshape(T * B, I), h0, out, True))
    torch.library.opcheck(torch.ops.gated_fused.tiled_mm.default, (torch.randn(7, 5), torch.randn(7, 3), True, True))
    assert fused_cpu.available()
