"""The single-step modules' fused gate maths (gated/backends/fused_cell.py, gated/csrc/cell_step.h)
against the torch ops of gated.cores (the same cell with the fused step switched off) and against
torch.nn's cells: outputs, states and every gradient, float64 to 1e-12."""

from __future__ import annotations

import pytest
import torch

import gated
from gated.backends import fused_cell, fused_cpu



@pytest.fixture(autouse=True)
def _needs_kernels():  # asked at run time: at collection it would build the kernels then
    if not fused_cpu.available():
        pytest.skip("the C++ extension is not built here")


CELLS = {"lstm": gated.LSTMCell, "gru": gated.GRUCell, "mgu": gated.MGUCell}


def _run(m, x, state, seed=0):
    """Outputs of one step and the gradients of a random projection of them w.r.t. everything."""
    out = m(x, state)
    outs = out if isinstance(out, tuple) else (out,)
    g = torch.Generator().manual_seed(seed)
    loss = sum((o * torch.randn(o.shape, generator=g, dtype=o.dtype)).sum() for o in outs)
    states = state if isinstance(state, tuple) else (state,)
    return outs, torch.autograd.grad(loss, [x, *states, *m.parameters()])


def _unfused(monkeypatch):
    monkeypatch.setattr(fused_cpu, "cell_usable", lambda *a: False)


@pytest.mark.parametrize("variant", ["-", "UR", "R", "C"])
@pytest.mark.parametrize("core", list(CELLS))
def test_fused_step_equals_the_torch_ops(core, variant, monkeypatch):
    torch.manual_seed(0)
    m = CELLS[core](7, 5, variant=variant, dtype=torch.float64)
    with torch.no_grad():  # a non-zero shared forget bias, so its gradient's two signs both count
        for p in m.parameters():
            p.add_(0.3 * torch.randn_like(p))
    x = torch.randn(4, 7, dtype=torch.float64, requires_grad=True)
    n = 2 if core == "lstm" else 1
    states = tuple(torch.randn(4, 5, dtype=torch.float64, requires_grad=True) for _ in range(n))
    state = states if n == 2 else states[0]
    calls = []
    real = torch.ops.gated_fused.cell_forward.default
    monkeypatch.setattr(fused_cell.torch.ops.gated_fused.cell_forward, "default",
                        lambda *a: calls.append(1) or real(*a), raising=False)
    fused = _run(m, x, state)
    assert calls, "the fused step did not run"
    monkeypatch.undo()
    _unfused(monkeypatch)
    ref = _run(m, x, state)
    for a, b in zip((*fused[0], *fused[1]), (*ref[0], *ref[1])):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("core", ["lstm", "gru"])
def test_plain_variant_equals_torch_nn_in_float32(core):
    torch.manual_seed(0)
    ours = CELLS[core](16, 32, variant="-")
    theirs = {"lstm": torch.nn.LSTMCell, "gru": torch.nn.GRUCell}[core](16, 32)
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(8, 16, requires_grad=True)
    state = torch.randn(8, 32, requires_grad=True)
    st = (state, torch.randn(8, 32, requires_grad=True)) if core == "lstm" else state
    a, b = _run(ours, x, st), _run(theirs, x, st)
    for u, v in zip((*a[0], *a[1]), (*b[0], *b[1])):
        torch.testing.assert_close(u, v, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("core", list(CELLS))
def test_gradcheck_and_double_backward(core):
    torch.manual_seed(0)
    m = CELLS[core](3, 2, variant="UR", dtype=torch.float64)
    x = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    h = torch.randn(2, 2, dtype=torch.float64, requires_grad=True)
    c = torch.randn(2, 2, dtype=torch.float64, requires_grad=True)

    def f(x, h, c, *params):
        out = torch.func.functional_call(m, dict(zip([k for k, _ in m.named_parameters()], params)),
                                         (x, (h, c) if core == "lstm" else h))
        return out

    args = (x, h, c, *(p.detach().requires_grad_() for p in m.parameters()))
    assert torch.autograd.gradcheck(f, args)
    assert torch.autograd.gradgradcheck(f, args)


def test_a_long_chain_of_steps_keeps_every_gradient(monkeypatch):
    """Twenty steps of a UR-LSTM cell (as an agent unrolls it), the state carried: every gradient
    as with the torch ops."""
    torch.manual_seed(0)
    m = gated.LSTMCell(6, 8, variant="UR", dtype=torch.float64)
    xs = torch.randn(20, 3, 6, dtype=torch.float64, requires_grad=True)

    def unroll():
        h = c = torch.zeros(3, 8, dtype=torch.float64)
        for x in xs:
            h, c = m(x, (h, c))
        return torch.autograd.grad(h.square().sum() + c.sum(), [xs, *m.parameters()])

    fused = unroll()
    _unfused(monkeypatch)
    for a, b in zip(fused, unroll()):
        torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-11)


def test_compile_and_vmap_take_the_torch_ops(monkeypatch):
    m = gated.GRUCell(4, 3)
    x = torch.randn(2, 4)
    eager = m(x)
    assert fused_cpu.cell_usable(m.layout, x)  # eager, on the CPU, in float32
    monkeypatch.setattr(fused_cell, "step", lambda *a: pytest.fail("the fused step ran"))
    compiled = torch.compile(m, backend="eager")(x)
    torch.testing.assert_close(compiled, eager)
    batched = torch.func.vmap(lambda v: m(v.unsqueeze(0)).squeeze(0))(x)
    torch.testing.assert_close(batched, eager)


@pytest.mark.parametrize("core", list(CELLS))
def test_inference_calls_equal_the_torch_ops(core, monkeypatch):
    """Under no_grad the op runs without an autograd node (nothing saved); same values."""
    torch.manual_seed(0)
    m = CELLS[core](7, 5, variant="UR", dtype=torch.float64)
    x = torch.randn(4, 7, dtype=torch.float64)
    state = (torch.randn(4, 5, dtype=torch.float64),) * (2 if core == "lstm" else 1)
    state = state if core == "lstm" else state[0]
    with torch.no_grad():
        fused = m(x, state)
        monkeypatch.setattr(fused_cell, "_Step", None)  # the autograd path would raise now
        again = m(x, state)
        monkeypatch.setattr(fused_cpu, "cell_usable", lambda *a: False)
        ref = m(x, state)
    for a, b, c in zip(*(v if isinstance(v, tuple) else (v,) for v in (fused, again, ref))):
        torch.testing.assert_close(a, c, rtol=1e-12, atol=1e-12)
        assert torch.equal(a, b)


LAYERS = {"lstm": gated.LSTM, "gru": gated.GRU, "mgu": gated.MGU}


@pytest.mark.parametrize("variant", ["-", "UR"])
@pytest.mark.parametrize("core", list(LAYERS))
def test_one_step_training_calls_of_a_layer_take_the_cell_path(core, variant, monkeypatch):
    """A T = 1 call that records a graph (an agent stepping gated.GRU) runs the cells' fused step on
    the fused backend: outputs, states and every gradient equal the reference backend's, two layers,
    both directions; a T = 2 call and a no_grad call keep the sequence kernels."""
    torch.manual_seed(0)
    kw = dict(num_layers=2, bidirectional=True, variant=variant, dtype=torch.float64)
    m = LAYERS[core](5, 4, **kw)
    x = torch.randn(1, 3, 5, dtype=torch.float64, requires_grad=True)
    n = 2 if core == "lstm" else 1
    h0 = tuple(torch.randn(4, 3, 4, dtype=torch.float64, requires_grad=True) for _ in range(n))
    calls = []
    real = torch.ops.gated_fused.cell_forward.default
    monkeypatch.setattr(torch.ops.gated_fused.cell_forward, "default", lambda *a: calls.append(1) or real(*a),
                        raising=False)

    def run(backend, T=1):
        out, hn = m._run(x.expand(T, -1, -1), h0 if n == 2 else h0[0], backend=backend)
        hn = hn if isinstance(hn, tuple) else (hn,)
        g = torch.Generator().manual_seed(1)
        loss = sum((t * torch.randn(t.shape, generator=g, dtype=t.dtype)).sum() for t in (out, *hn))
        return (out, *hn, *torch.autograd.grad(loss, [x, *h0, *m.parameters()]))

    fused = run("fused_cpu")
    assert len(calls) == 4  # two layers, two directions
    for a, b in zip(fused, run("reference")):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    calls.clear()
    run("fused_cpu", T=2)
    with torch.no_grad():
        m._run(x, h0 if n == 2 else h0[0], backend="fused_cpu")
    assert not calls
