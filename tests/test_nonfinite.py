"""NaN and infinity propagate as in torch.nn, on every backend, GEMM path and dtype.

A NaN in the input, the initial state, a weight or a bias must reach the outputs, the states and
the gradients exactly where torch.nn's (and the reference backend's plain torch ops) put it; an
infinite input saturates the gates (sigmoid(+-inf) = 1 / 0, tanh(+-inf) = +-1) as in torch.
Before this was tested, the fused float32 kernels returned h = 0 (LSTM) or h = 1 (GRU) for a NaN:
exp_u20 clamps its argument with min/max, which turn NaN into a finite bound.
"""

import os
import shutil

import pytest
import torch

import gated
from gated.backends import _build

pytestmark = pytest.mark.skipif(shutil.which(os.environ.get("CXX", "c++")) is None, reason="no C++ compiler")

GEMMS = {0: "auto", 1: "onednn", 3: "addmm", 4: "tiled"}
SOURCES = ["x-nan", "x-inf", "x-neginf", "h0-nan", "c0-nan", "w_hh-nan", "w_ih-inf", "bias-nan", "forget_bias-nan"]
TORCH = {"LSTM": torch.nn.LSTM, "GRU": torch.nn.GRU}


@pytest.fixture(params=list(GEMMS), ids=lambda k: GEMMS[k])
def gemm(request):
    ops = _build.load()
    if request.param and request.param not in ops.gemm_kinds():
        pytest.skip(f"{GEMMS[request.param]} is not available in this build")
    ops.set_gemm(request.param)
    yield request.param
    ops.set_gemm(0)


def _poisoned(core, variant, dtype, source):
    torch.manual_seed(0)
    m = getattr(gated, core)(3, 20, variant=variant, dtype=dtype)
    x = torch.randn(6, 3, 3, dtype=dtype)
    h = [torch.randn(1, 3, 20, dtype=dtype) for _ in range(2 if core == "LSTM" else 1)]
    what, kind = source.split("-")
    value = {"nan": float("nan"), "inf": float("inf"), "neginf": -float("inf")}[kind]
    with torch.no_grad():
        if what == "x":
            x[2, 1, 0] = value
        elif what == "h0":
            h[0][0, 2, 5] = value
        elif what == "c0":
            h[-1][0, 2, 5] = value
        elif what == "bias":
            m.bias_hh_l0[7] = value
        else:
            p = getattr(m, what.replace("w_", "weight_") + "_l0", None)
            if p is None:
                return None
            p.view(-1)[11] = value
    return m, x, (tuple(h) if core == "LSTM" else h[0])


def _run(m, x, hx, backend):
    x = x.clone().requires_grad_()
    hx = tuple(s.clone().requires_grad_() for s in hx) if isinstance(hx, tuple) else hx.clone().requires_grad_()
    out, st = m._run(x, hx, backend=backend)
    states = list(st) if isinstance(st, tuple) else [st]
    loss = out.sum() + sum(s.sum() for s in states)
    leaves = [x, *(hx if isinstance(hx, tuple) else (hx,)), *m.parameters()]
    return [out, *states], list(torch.autograd.grad(loss, leaves))


def _same(a, b, what, dtype):
    assert torch.equal(a.isnan(), b.isnan()), f"{what}: NaN at different places ({int(a.isnan().sum())} vs {int(b.isnan().sum())})"
    assert torch.equal(a.isinf(), b.isinf()) and torch.equal(a[a.isinf()], b[b.isinf()]), f"{what}: inf differ"
    fin = a.isfinite()
    tol = 1e-10 if dtype == torch.float64 else 2e-5
    torch.testing.assert_close(a[fin], b[fin], rtol=tol, atol=tol, msg=lambda s: f"{what}: {s}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("core,variant", [("LSTM", "-"), ("LSTM", "UR"), ("GRU", "-"), ("GRU", "UR"), ("MGU", "UR")])
def test_nonfinite_propagates_like_the_reference(core, variant, source, dtype, gemm):
    case = _poisoned(core, variant, dtype, source)
    if case is None or (source.startswith("c0") and core != "LSTM"):
        pytest.skip("no such tensor for this core and variant")
    m, x, hx = case
    vals, grads = _run(m, x, hx, "fused_cpu")
    ref_vals, ref_grads = _run(m, x, hx, "reference")
    if source.endswith("nan"):  # the case poisons what it means to (an infinity may just saturate a gate)
        assert any(v.isnan().any() for v in ref_vals)
    for k, (a, b) in enumerate(zip(vals, ref_vals)):
        _same(a, b, f"output {k}", dtype)
    names = ["x", "h0", "c0"][: len(grads) - len(list(m.parameters()))] + [n for n, _ in m.named_parameters()]
    for name, a, b in zip(names, grads, ref_grads):
        _same(a, b, f"grad of {name}", dtype)


@pytest.mark.parametrize("source", ["x-nan", "x-inf", "x-neginf", "h0-nan", "w_hh-nan"])
@pytest.mark.parametrize("core", ["LSTM", "GRU"])
def test_nonfinite_matches_torch_nn(core, source):
    """variant "-" on the default backend against torch.nn itself, forward and backward."""
    m, x, hx = _poisoned(core, "-", torch.float32, source)
    t = TORCH[core](3, 20)
    t.load_state_dict(m.state_dict())
    vals, grads = _run(m, x, hx, "auto")

    xt = x.clone().requires_grad_()
    ht = tuple(s.clone().requires_grad_() for s in hx) if isinstance(hx, tuple) else hx.clone().requires_grad_()
    out, st = t(xt, ht)
    states = list(st) if isinstance(st, tuple) else [st]
    leaves = [xt, *(ht if isinstance(ht, tuple) else (ht,)), *t.parameters()]
    ref_grads = torch.autograd.grad(out.sum() + sum(s.sum() for s in states), leaves)
    for k, (a, b) in enumerate(zip(vals, [out, *states])):
        _same(a, b, f"output {k}", torch.float32)
    for k, (a, b) in enumerate(zip(grads, ref_grads)):
        _same(a, b, f"grad {k}", torch.float32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("source", ["x-nan", "x-inf", "w_ih-nan", "norm-nan"])
@pytest.mark.parametrize("core", ["LSTM", "GRU"])
def test_nonfinite_through_the_kernels_input_norm(core, source, dtype, gemm):
    """Inference with LayerNorm: the kernel normalises x W_ih^T itself (fused_cpu's input norm), so a
    NaN or infinity in the input, W_ih or the input norm's gain lands where the reference's does."""
    torch.manual_seed(0)
    m = getattr(gated, core)(3, 20, variant="UR", layer_norm=True, zoneout=0.1, dtype=dtype).eval()
    x = torch.randn(6, 3, 3, dtype=dtype)
    what, kind = source.split("-")
    value = float("nan") if kind == "nan" else float("inf")
    with torch.no_grad():
        {"x": x, "w_ih": m.weight_ih_l0, "norm": m.layer_norm_ih_l0.weight}[what].view(-1)[4] = value
        got = m._run(x, backend="fused_cpu")
        want = m._run(x, backend="reference")
    if kind == "nan":
        assert want[0].isnan().any()
    for k, (a, b) in enumerate(zip([got[0], *got[1]] if core == "LSTM" else got, [want[0], *want[1]] if core == "LSTM"
                                   else want)):
        _same(a, b, f"output {k}", dtype)
