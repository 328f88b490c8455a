"""bfloat16/float16 on the CPU (gated/precision.py): torch's result dtypes, float32 inside.

Checked against torch.nn's dtypes, against the float32 computation (autocast must equal it rounded,
bit for bit), against the float64 reference on the same rounded weights, and on saturated forget
gates, whose gradients a bfloat16 computation loses (the control test shows that it does).
"""

import logging

import pytest
import torch
from torch.nn.utils.rnn import pack_sequence

import gated
from gated import precision
from gated.backends import reference

SEQ = ["LSTM", "GRU", "MGU", "MinGRU", "MinLSTM", "RGLRU", "HGRN"]
RECURRENT = ["LSTM", "GRU", "MGU"]
VARIANTS = ["-", "UR"]
BF16 = {"rtol": 8e-3, "atol": 2e-3}  # the output's own rounding: half an ulp is 2^-9 relative


def _module(name, variant, dtype=torch.float32, seed=0, **kw):
    torch.manual_seed(seed)
    return getattr(gated, name)(5, 8, variant=variant, dtype=dtype, **kw)


def _states(st):
    return list(st) if isinstance(st, tuple) else [st]


def _grads(m):
    return {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", SEQ)
def test_autocast_returns_the_autocast_dtype(name, dtype):
    m = _module(name, "UR")
    with torch.autocast("cpu", dtype=dtype):
        out, st = m(torch.randn(4, 3, 5))
    assert out.dtype == dtype and all(s.dtype == dtype for s in _states(st))
    out.float().sum().backward()
    assert all(p.grad.dtype == torch.float32 for p in m.parameters() if p.grad is not None)


# every core on its default backend; the reference (whose matmuls autocast would otherwise turn
# into bfloat16) for the recurrent cores' UR
@pytest.mark.parametrize("name, variant, backend", [(n, v, "auto") for n in SEQ for v in VARIANTS]
                         + [(n, "UR", "reference") for n in RECURRENT])
def test_autocast_is_the_float32_computation_rounded(name, variant, backend):
    """Under autocast the kernels run in float32: the results are float32's rounded, bit for bit,
    and the parameters' gradients are float32's (the output's gradient, all ones, is exact)."""
    kw = {} if backend == "auto" else {"backend": backend}
    m = _module(name, variant, **kw)
    x = torch.randn(6, 3, 5)
    out, st = m(x)
    out.sum().backward()
    want, want_grads = [out, *_states(st)], _grads(m)
    m.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, st = m(x)
    out.float().sum().backward()
    for got, ref in zip([out, *_states(st)], want):
        assert torch.equal(got, ref.detach().to(torch.bfloat16))
    got_grads = _grads(m)
    assert got_grads.keys() == want_grads.keys()
    for n in want_grads:
        torch.testing.assert_close(got_grads[n], want_grads[n], rtol=1e-6, atol=1e-6, msg=n)


def _reference64(m, x, hx=None):
    """The module's float64 copy on the reference backend (same, already rounded, weights)."""
    ref = type(m)(m.input_size, m.hidden_size, num_layers=m.num_layers, bidirectional=m.bidirectional,
                  variant=m.variant.name, dtype=torch.float64,
                  **({"backend": "reference"} if m.core in ("lstm", "gru", "mgu") else {"backend": "reference"}))
    ref.load_state_dict({k: v.double() for k, v in m.state_dict().items()})
    return ref


@pytest.mark.parametrize("name, variant, case", [(n, v, "plain") for n in SEQ for v in VARIANTS]
                         + [(n, "UR", c) for n in SEQ for c in ("packed", "bidirectional")])
def test_bfloat16_parameters_against_float64(name, variant, case):
    kw = {"num_layers": 2, "bidirectional": True} if case == "bidirectional" else {}
    m = _module(name, variant, dtype=torch.bfloat16, **kw)
    ref = _reference64(m, None)
    torch.manual_seed(1)
    if case == "packed":
        seqs = [torch.randn(n, 5).bfloat16() for n in (7, 4, 2)]
        x, x64 = pack_sequence(seqs), pack_sequence([s.double() for s in seqs])
    else:
        x = torch.randn(7, 3, 5).bfloat16()
        x64 = x.double()
    out, st = m(x)
    out64, st64 = ref(x64)
    data = (lambda o: o.data) if case == "packed" else (lambda o: o)
    assert data(out).dtype == torch.bfloat16 and all(s.dtype == torch.bfloat16 for s in _states(st))
    for got, want in zip([data(out), *_states(st)], [data(out64), *_states(st64)]):
        torch.testing.assert_close(got.double(), want, **BF16)
    w = torch.randn(data(out).shape, dtype=torch.float64)
    (data(out).double() * w).sum().backward()
    (data(out64) * w).sum().backward()
    for (n, p), (_, p64) in zip(m.named_parameters(), ref.named_parameters()):
        assert p.grad.dtype == torch.bfloat16, n
        scale = p64.grad.abs().max().item()
        torch.testing.assert_close(p.grad.double(), p64.grad, rtol=1e-2, atol=1e-2 * scale + 1e-6, msg=n)


@pytest.mark.parametrize("name", RECURRENT)
def test_bfloat16_runs_on_the_fused_kernels(name):
    """backend='fused_cpu' raises where it cannot run a call: bfloat16 is no longer such a call."""
    m = _module(name, "UR", dtype=torch.bfloat16, backend="fused_cpu")
    out, _ = m(torch.randn(4, 2, 5).bfloat16())
    out.float().sum().backward()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, _ = _module(name, "UR", backend="fused_cpu")(torch.randn(4, 2, 5))
    assert out.dtype == torch.bfloat16


def _saturated(name, dtype):
    """A UR module whose forget gates sit at about 0.999: b_f = 7, small weights and inputs."""
    torch.manual_seed(0)
    m = getattr(gated, name)(4, 16, variant="UR")
    with torch.no_grad():
        for p in m.parameters():
            p.mul_(0.05)
        m.forget_bias_l0.fill_(7.0)  # sigma(7) = 0.99909
    return m.to(dtype)


def _saturation_grads(m, x, direct=False):
    """forget_bias's gradient and the refine block's bias gradient of ``sum(out * w)``; ``direct``
    runs the reference loop on the module's own dtype, without the float32 plan (the control)."""
    torch.manual_seed(2)
    w = torch.randn(x.shape[0], x.shape[1], m.hidden_size)
    m.zero_grad()
    if direct:
        p = m._params("_l0")
        h0 = tuple(torch.zeros(x.shape[1], m.hidden_size, dtype=x.dtype) for _ in range(m.layout.core.num_states))
        out, _ = reference.run_layer(x, h0, *p, m.layout)
    else:
        out, _ = m(x)
    (out.float() * w).sum().backward()
    return m.forget_bias_l0.grad.float(), m.bias_ih_l0.grad[m.layout.refine].float()


def _rel(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("name", ["LSTM", "GRU"])
def test_saturated_forget_gates_keep_their_gradients_in_bfloat16(name):
    """The issue's check: at f = 0.999 (which bfloat16 rounds to 1.0) the forget-bias and refine
    gradients in bfloat16 are within 5 % of float32's; a computation that keeps its activations
    in bfloat16 is not (the control: the reference loop run directly in bfloat16)."""
    m16 = _saturated(name, torch.bfloat16)
    m32 = _saturated(name, torch.bfloat16).float()  # the same rounded weights in float32
    x = (0.05 * torch.randn(30, 4, 4)).bfloat16()
    fb32, r32 = _saturation_grads(m32, x.float())
    fb16, r16 = _saturation_grads(m16, x)
    assert _rel(fb16, fb32) < 0.05 and _rel(r16, r32) < 0.05, (_rel(fb16, fb32), _rel(r16, r32))
    fbd, rd = _saturation_grads(m16, x, direct=True)
    assert max(_rel(fbd, fb32), _rel(rd, r32)) > 0.05, "the control should lose the saturated gradients"


@pytest.mark.parametrize("name", SEQ)
def test_nan_propagates_in_bfloat16_as_in_float32(name):
    m = _module(name, "UR")
    x = torch.randn(6, 2, 5)
    x[2, 0, 1] = float("nan")
    want = m(x)[0].isnan()
    got = m.bfloat16()(x.bfloat16())[0].isnan()
    assert torch.equal(got, want) and want[2:, 0].all() and not want[:, 1].any()


@pytest.mark.parametrize("name", ["LSTMCell", "GRUCell", "MGUCell"])
def test_cells(name):
    """Cells: bfloat16 parameters give bfloat16 results computed in float32; under autocast a cell
    returns float32, as torch.nn.LSTMCell/GRUCell do, equal to the float32 step."""
    torch.manual_seed(0)
    cell = getattr(gated, name)(5, 8, variant="UR")
    x = torch.randn(3, 5)
    want = cell(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = cell(x)
    for g, w in zip(*(t if isinstance(t, tuple) else (t,) for t in (got, want))):
        assert g.dtype == torch.float32 and torch.equal(g, w)
    c16 = cell.bfloat16()
    f32 = getattr(gated, name)(5, 8, variant="UR")
    f32.load_state_dict({k: v.float() for k, v in c16.state_dict().items()})
    got, want = c16(x.bfloat16()), f32(x.bfloat16().float())
    for g, w in zip(*(t if isinstance(t, tuple) else (t,) for t in (got, want))):
        assert g.dtype == torch.bfloat16 and torch.equal(g, w.detach().bfloat16())


def test_float64_is_left_alone_by_autocast():
    m = _module("LSTM", "UR", dtype=torch.float64)
    x = torch.randn(4, 2, 5, dtype=torch.float64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, (h, c) = m(x)
    assert out.dtype == h.dtype == c.dtype == torch.float64
    torch.testing.assert_close(out, m(x)[0], rtol=0, atol=0)


def test_the_float32_path_is_logged_once_on_a_cpu_with_bfloat16_matmuls(monkeypatch, caplog):
    monkeypatch.setattr(precision, "native_bf16", lambda: "AMX")
    monkeypatch.setattr(precision, "_said", set())
    m = _module("LSTM", "UR")
    with caplog.at_level(logging.WARNING, logger="gated"), torch.autocast("cpu", dtype=torch.bfloat16):
        m(torch.randn(3, 2, 5))
        m(torch.randn(3, 2, 5))
    notes = [r.getMessage() for r in caplog.records if "float32 kernels" in r.getMessage()]
    assert len(notes) == 1 and "AMX" in notes[0]
    monkeypatch.setattr(precision, "native_bf16", lambda: None)
    monkeypatch.setattr(precision, "_said", set())
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="gated"), torch.autocast("cpu", dtype=torch.bfloat16):
        m(torch.randn(3, 2, 5))
    assert not [r for r in caplog.records if "float32 kernels" in r.getMessage()]
