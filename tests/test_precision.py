"""bfloat16/float16 on the CPU (gated/precision.py): torch's result dtypes, float32 inside.

Checked against torch.nn's dtypes, against the float32 computation (with float32 matmuls autocast
must equal it rounded, bit for bit), against the float64 reference on the same rounded weights,
and on saturated forget gates, whose gradients a bfloat16 computation loses (the control test shows
that it does). The bfloat16 matmuls (``set_bf16_gemm``) are tested with ``"on"``, which runs them
on any CPU (emulated by torch where the CPU lacks the instructions): against float64, against a
step loop written here that rounds the same products, and on the saturated gates.
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


@pytest.fixture
def gemm_mode():
    """Set :func:`gated.precision.set_bf16_gemm` for one test (restored after it)."""
    before = precision.get_bf16_gemm()
    yield precision.set_bf16_gemm
    precision.set_bf16_gemm(before)


@pytest.fixture
def f32_matmuls(gemm_mode):
    """float32 matmuls whatever the CPU (on one with AMX, ``"auto"`` would take bfloat16 ones)."""
    gemm_mode("off")


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
def test_autocast_is_the_float32_computation_rounded(name, variant, backend, f32_matmuls):
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
def test_bfloat16_parameters_against_float64(name, variant, case, f32_matmuls):
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
def test_saturated_forget_gates_keep_their_gradients_in_bfloat16(name, f32_matmuls):
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
def test_nan_propagates_in_bfloat16_as_in_float32(name, f32_matmuls):
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


def _notes(caplog):
    return [r.getMessage() for r in caplog.records if "float32 matmuls" in r.getMessage()]


def test_the_matmul_dtype_follows_the_cpu_and_the_mode(monkeypatch, caplog, gemm_mode):
    """``"auto"``: bfloat16 matmuls where the CPU has AMX/AVX512-BF16, float32 elsewhere; ``"off"``
    on such a CPU, and float16 there, are logged once; the cells and float16 never take them."""
    x = torch.randn(3, 2, 5)
    monkeypatch.setattr(precision, "_said", set())
    gemm_mode("auto")
    for isa, want in (("AMX", torch.bfloat16), ("AVX512-BF16", torch.bfloat16), (None, None)):
        monkeypatch.setattr(precision, "native_bf16", lambda isa=isa: isa)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert precision.plan(x, torch.float32).gemm == want, isa
            assert precision.plan(x, torch.float32, cell=True).gemm is None
        assert precision.plan(x, torch.bfloat16).gemm == want
        with torch.autocast("cpu", dtype=torch.float16):
            assert precision.plan(x, torch.float32).gemm is None
    assert precision.plan(x, torch.float32) is None  # no autocast, float32 parameters: no plan
    monkeypatch.setattr(precision, "native_bf16", lambda: "AMX")
    monkeypatch.setattr(precision, "_said", set())
    caplog.clear()
    m = _module("LSTM", "UR")
    with caplog.at_level(logging.WARNING, logger="gated"):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            m(x)  # bfloat16 matmuls (emulated on this CPU): nothing to say
        assert not _notes(caplog)
        gemm_mode("off")
        with torch.autocast("cpu", dtype=torch.bfloat16):
            m(x)
            m(x)
        with torch.autocast("cpu", dtype=torch.float16):
            m(x)
    notes = _notes(caplog)
    assert len(notes) == 2 and all("AMX" in n for n in notes), notes
    assert "set_bf16_gemm('off')" in notes[0] and "float16" in notes[1] and "bfloat16 autocast" in notes[1]
    gemm_mode("on")
    monkeypatch.setattr(precision, "native_bf16", lambda: None)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert precision.plan(x, torch.float32).gemm == torch.bfloat16
    with pytest.raises(ValueError, match="'auto', 'on', 'off'"):
        precision.set_bf16_gemm("fast")


def _lstm_with_bf16_products(m, x):
    """A one-layer plain LSTM whose matmuls take bfloat16 operands and round their products to
    bfloat16, everything else float32: the semantics of the bfloat16 matmuls, written out."""
    p = {n: t.detach() for n, t in m.named_parameters()}
    mm = lambda a, w: (a.bfloat16() @ w.bfloat16().t()).float()  # noqa: E731
    gx = mm(x, p["weight_ih_l0"]) + (p["bias_ih_l0"] + p["bias_hh_l0"])
    h = c = torch.zeros(x.shape[1], m.hidden_size)
    outs = []
    for t in range(x.shape[0]):
        i, f, g, o = (gx[t] + mm(h, p["weight_hh_l0"])).chunk(4, -1)
        c = f.sigmoid() * c + i.sigmoid() * g.tanh()
        h = o.sigmoid() * c.tanh()
        outs.append(h)
    return torch.stack(outs)


def test_bfloat16_matmuls_round_the_products_and_nothing_else(gemm_mode):
    """The fused kernels with bfloat16 matmul weights equal the loop above (the same products,
    rounded the same way; on CPUs with the instructions oneDNN's and at::mm's accumulation orders
    may round a product one bfloat16 step apart), and differ from the float32 computation."""
    m = _module("LSTM", "-", backend="fused_cpu")
    x = torch.randn(9, 3, 5)
    gemm_mode("on")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        p = precision.plan(x, torch.float32)
    got = m._layers(x, [torch.zeros(1, 3, 8)] * 2, None, None, None, p)[0]
    want = _lstm_with_bf16_products(m, x)
    tol = 1e-6 if precision.native_bf16() is None else 1e-2
    torch.testing.assert_close(got, want, rtol=tol, atol=tol)
    f32 = m._layers(x, [torch.zeros(1, 3, 8)] * 2, None, None, None, None)[0]
    assert (f32 - want).abs().max() > 1e-4, "the float32 computation should differ from the bfloat16 products"


_GEMM_CASES = [(n, v, "plain") for n in RECURRENT for v in VARIANTS] + [
    (n, "UR", c) for n in RECURRENT for c in ("packed", "bidirectional")] + [
    ("LSTM", "UR", "proj"), ("LSTM", "UR", "options"), ("GRU", "UR", "options")]
BF16_GEMM = {"rtol": 3e-2, "atol": 1e-2}  # two bfloat16 roundings of each pre-activation, over the steps


@pytest.mark.parametrize("name, variant, case", _GEMM_CASES)
def test_bfloat16_matmuls_against_float64(name, variant, case, gemm_mode):
    """Under autocast with bfloat16 matmuls, on the fused kernels: outputs, states and every
    parameter's and the input's gradient within bfloat16's tolerance of the float64 reference."""
    gemm_mode("on")
    kw = {"backend": "fused_cpu", "num_layers": 2, "bidirectional": True} if case == "bidirectional" else {
        "backend": "fused_cpu"}
    if case == "proj":
        kw["proj_size"] = 5
    if case == "options":
        kw.update(layer_norm=True, zoneout=0.1, recurrent_dropout=0.2)
    m = _module(name, variant, **kw)
    if case == "options":
        m.eval()  # the expectation of zoneout, no masks: the float64 copy computes the same
    ref = type(m)(5, 8, variant=variant, dtype=torch.float64, backend="reference",
                  **{k: v for k, v in kw.items() if k != "backend"})
    ref.load_state_dict({k: v.double() for k, v in m.state_dict().items()})
    ref.train(m.training)
    torch.manual_seed(1)
    if case == "packed":
        seqs = [torch.randn(n, 5, requires_grad=True) for n in (7, 4, 2)]
        x, x64 = pack_sequence(seqs), pack_sequence([s.detach().double().requires_grad_() for s in seqs])
        leaves, leaves64 = seqs, None
    else:
        x = torch.randn(7, 3, 5, requires_grad=True)
        x64 = x.detach().double().requires_grad_()
        leaves, leaves64 = [x], [x64]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, st = m(x)
    out64, st64 = ref(x64)
    data = (lambda o: o.data) if case == "packed" else (lambda o: o)
    assert data(out).dtype == torch.bfloat16
    for got, want in zip([data(out), *_states(st)], [data(out64), *_states(st64)]):
        torch.testing.assert_close(got.double(), want, **BF16_GEMM)
    w = torch.randn(data(out).shape, dtype=torch.float64)
    (data(out).double() * w).sum().backward()
    (data(out64) * w).sum().backward()
    pairs = list(zip(m.named_parameters(), ref.named_parameters()))
    if leaves64 is not None:
        pairs += [(("input", a), ("input", b)) for a, b in zip(leaves, leaves64)]
    for (n, p), (_, p64) in pairs:
        assert p.grad is not None and p.grad.dtype == torch.float32, n
        scale = p64.grad.abs().max().item()
        torch.testing.assert_close(p.grad.double(), p64.grad, rtol=3e-2, atol=3e-2 * scale + 1e-6, msg=n)


@pytest.mark.parametrize("name", ["LSTM", "GRU"])
def test_saturated_forget_gates_keep_their_gradients_with_bfloat16_matmuls(name, gemm_mode):
    """The saturation check of the issue with bfloat16 matmuls: the products are rounded, the gates
    are not, so the forget-bias and refine gradients stay within 5 % of float32's."""
    gemm_mode("on")
    m16 = _saturated(name, torch.bfloat16)
    m32 = _saturated(name, torch.bfloat16).float()
    x = (0.05 * torch.randn(30, 4, 4)).bfloat16()
    fb32, r32 = _saturation_grads(m32, x.float())
    fb16, r16 = _saturation_grads(m16, x)
    assert _rel(fb16, fb32) < 0.05 and _rel(r16, r32) < 0.05, (_rel(fb16, fb32), _rel(r16, r32))


@pytest.mark.parametrize("name", RECURRENT)
def test_nan_propagates_with_bfloat16_matmuls(name, gemm_mode):
    gemm_mode("on")
    m = _module(name, "UR")
    x = torch.randn(6, 2, 5)
    x[2, 0, 1] = float("nan")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = m(x)[0].isnan()
    assert got[2:, 0].all() and not got[:, 1].any()


def test_double_backward_with_bfloat16_matmuls(gemm_mode):
    """create_graph=True recomputes on the reference backend, in float32 (the oracle has no
    bfloat16 matmuls): the gradient of a gradient norm is float32's within bfloat16's tolerance."""
    def hvp_like(mode):
        gemm_mode(mode)
        m = _module("LSTM", "UR", backend="fused_cpu")
        x = torch.randn(5, 2, 5, generator=torch.Generator().manual_seed(3))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out, _ = m(x)
        (g,) = torch.autograd.grad(out.float().pow(2).sum(), m.weight_hh_l0, create_graph=True)
        g.pow(2).sum().backward()
        return m.weight_ih_l0.grad

    got, want = hvp_like("on"), hvp_like("off")
    torch.testing.assert_close(got, want, rtol=5e-2, atol=5e-2 * want.abs().max().item())


def test_the_kernels_refuse_bfloat16_weights_beside_their_own_input_projection():
    from gated.backends import fused_cpu  # noqa: F401  (builds and registers the ops)
    x, w_ih, w_hh = torch.randn(3, 2, 5), torch.randn(32, 5), torch.randn(32, 8).bfloat16()
    h0 = c0 = torch.zeros(2, 8)
    with pytest.raises(RuntimeError, match="input projection"):
        torch.ops.gated_fused.recurrence_forward(x, w_ih, w_hh, None, None, None, h0, c0, None, None, 0, False, False)
    with pytest.raises(RuntimeError, match="bfloat16 with float32 inputs"):
        torch.ops.gated_fused.recurrence_forward(x.double(), None, w_hh, None, None, None, h0.double(), c0.double(),
                                                 None, None, 0, False, False)
