"""gated.RGLRU and gated.HGRN: Griffin's and HGRN's equations (an independent oracle), the scan backends against
the sequential step loop, numerics near a = 1, the native inits, UGI and the refine gate, torch's API.

The oracle is written here from the papers (naive formulas, none of the library's); ``backend="reference"``
is the core's step run one time step at a time. ``fused_cpu`` (the gates as torch ops, the C++ linear scan)
and ``torch`` (the same gates, the Python-loop scan) must give its outputs, final states and every gradient
to 1e-10 relative in float64.
"""

import math
import pickle

import pytest
import torch
from torch.nn.utils.rnn import pack_sequence, unpack_sequence

import gated
from gated.backends import _build
from gated.backends import scan as scan_backend

D = torch.float64
CORES = ("RGLRU", "HGRN")
CASES = [(c, v) for c in CORES for v in gated.CORES[c.lower()].variants]
# the fast backends; "fused_cpu" cases skip at run time where the kernels are not built (asking at
# collection would build them then, before tests/conftest.py starts its side-by-side builds)
FAST = ["fused_cpu", "torch"]


@pytest.fixture(autouse=True)
def _needs_scan_kernels(request):
    callspec = getattr(request.node, "callspec", None)
    wants = request.node.get_closest_marker("fused") is not None or (
        callspec is not None and callspec.params.get("backend") == "fused_cpu")
    if wants and not scan_backend.available():
        pytest.skip("no scan kernels")


@pytest.fixture(autouse=True)
def poison():
    """Every buffer the C++ linear scan allocates starts as NaN here (as in tests/test_scan.py)."""
    ops = _build.load()
    if ops is None or not hasattr(ops, "set_poison"):
        yield
        return
    ops.set_poison(True)
    yield
    ops.set_poison(False)


def _sig(x):
    return 1.0 / (1.0 + torch.exp(-x))


def _rglru_oracle(x, h0, w, b, lam, refine, project=True):
    """Griffin Eqs. 1-4: r = sigma(W_a x + b_a), i = sigma(W_x x + b_x), a_t = sigma(Lambda)^(8 r),
    h = a_t h + sqrt(1 - a_t^2) (i x~), with x~ the n block of the projection (or x itself); with a
    refine gate a_t -> rho (1 - (1 - a_t)^2) + (1 - rho) a_t^2, rho from the 4th block."""
    H = h0.shape[-1]
    P = torch.einsum("tbi,gi->tbg", x, w) + (b if b is not None else 0.0)
    h, outs = h0, []
    for t in range(x.shape[0]):
        r, i = _sig(P[t, :, :H]), _sig(P[t, :, H:2 * H])
        xt = P[t, :, 2 * H:3 * H] if project else x[t]
        a = _sig(lam) ** (8.0 * r)
        if refine:
            rho = _sig(P[t, :, 3 * H:])
            a = rho * (1 - (1 - a) ** 2) + (1 - rho) * a ** 2
        h = a * h + torch.sqrt(1 - a * a) * (i * xt)
        outs.append(h)
    return torch.stack(outs)


def _hgrn_oracle(x, h0, w, b, fb, lb, refine):
    """HGRN (real-valued, fla): f = sigma(W_f x + b_f), k = lb + (1 - lb) f, h = k h + (1 - k) SiLU(W_i x + b_i);
    with a refine gate f -> r (1 - (1 - f)^2) + (1 - r) f^2, f = sigma(P_f + b_f), r = sigma(P_rho - b_f)."""
    H = h0.shape[-1]
    P = torch.einsum("tbi,gi->tbg", x, w) + (b if b is not None else 0.0)
    h, outs = h0, []
    for t in range(x.shape[0]):
        pf, pi = P[t, :, :H], P[t, :, H:2 * H]
        f = _sig(pf + (fb if fb is not None else 0.0))
        if refine:
            r = _sig(P[t, :, 2 * H:] - fb)
            f = r * (1 - (1 - f) ** 2) + (1 - r) * f ** 2
        k = lb + (1 - lb) * f
        h = k * h + (1 - k) * (pi * _sig(pi))
        outs.append(h)
    return torch.stack(outs)


def _hgrn_bounds(raw):
    """HGRN's lower bounds from the raw parameter (L, H): lb_k = sum_{1 <= j <= k} e^{l_j} / sum_j e^{l_j}."""
    e = torch.exp(raw)
    return [sum((e[j] for j in range(1, k + 1)), torch.zeros_like(e[0])) / e.sum(0) for k in range(raw.shape[0])]


def _module(core, variant, dtype=D, scale=0.5, I=5, H=6, **kw):
    m = getattr(gated, core)(I, H, variant=variant, dtype=dtype, **kw)
    with torch.no_grad():  # away from the init, so that every gate and both refine bands matter
        for p in m.parameters():
            p.add_(scale * torch.randn_like(p))
    return m


def _values_and_grads(m, x, h0, backend):
    out, h = m._run(x, h0, backend=backend)
    data = out.data if hasattr(out, "batch_sizes") else out
    g = torch.Generator().manual_seed(5)
    loss = (data * torch.randn(data.shape, generator=g, dtype=data.dtype)).sum()
    loss = loss + (h * torch.randn(h.shape, generator=g, dtype=h.dtype)).sum()
    leaves = [x.data if hasattr(x, "batch_sizes") else x, h0, *m.parameters()]
    return [data, h], torch.autograd.grad(loss, leaves)


def _rel(a, b):
    a, b = a.detach(), b.detach()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))


def _oracle(m, x, h0):
    """The module's parameters through the oracle, layer by layer (unidirectional)."""
    refine = m.variant.auxiliary == "refine"
    bounds = _hgrn_bounds(m.lower_bounds) if hasattr(m, "lower_bounds") else [0.0] * m.num_layers
    outs, finals = x, []
    for k in range(m.num_layers):
        w, b = getattr(m, f"weight_ih_l{k}"), getattr(m, f"bias_ih_l{k}", None)
        if m.core == "rglru":
            outs = _rglru_oracle(outs, h0[k], w, b, getattr(m, f"lambda_l{k}"), refine)
        else:
            outs = _hgrn_oracle(outs, h0[k], w, b, getattr(m, f"forget_bias_l{k}", None), bounds[k], refine)
        finals.append(outs[-1])
    return outs, torch.stack(finals)


@pytest.mark.parametrize("backend", ["reference", *FAST])
@pytest.mark.parametrize("core,variant", [(c, v) for c in CORES for v in ("-", "UR")])
def test_equals_the_papers_equations(core, variant, backend):
    """Outputs, final states and every gradient (input, h0, each parameter, HGRN's lower bounds) in float64."""
    m = _module(core, variant, num_layers=2)
    x = torch.randn(7, 2, 5, dtype=D, requires_grad=True)
    h0 = torch.randn(2, 2, 6, dtype=D, requires_grad=True)
    want_vals = _oracle(m, x, h0)
    g = torch.Generator().manual_seed(5)
    w_out = torch.randn(want_vals[0].shape, generator=g, dtype=D)
    w_h = torch.randn(want_vals[1].shape, generator=g, dtype=D)
    leaves = [x, h0, *m.parameters()]
    want_grads = torch.autograd.grad((want_vals[0] * w_out).sum() + (want_vals[1] * w_h).sum(), leaves)
    out, h = m._run(x, h0, backend=backend)
    grads = torch.autograd.grad((out * w_out).sum() + (h * w_h).sum(), leaves)
    names = ["output", "h_n", "d input", "d h0"] + [f"d {n}" for n, _ in m.named_parameters()]
    if core == "HGRN":
        assert "lower_bounds" in dict(m.named_parameters())
    for name, a, b in zip(names, [out, h, *grads], [*want_vals, *want_grads], strict=True):
        assert _rel(a, b) < 1e-10, (name, _rel(a, b))


def test_rglru_starts_as_the_paper_on_x_itself_where_widths_match():
    """With I = H the input block starts as the identity: x~_t = x_t (Griffin's RG-LRU on its input)."""
    m = gated.RGLRU(4, 4, dtype=D)
    H = 4
    torch.testing.assert_close(m.weight_ih_l0[2 * H:].detach(), torch.eye(H, dtype=D))
    assert (m.bias_ih_l0[2 * H:] == 0).all()
    x, h0 = torch.randn(6, 3, 4, dtype=D), torch.randn(1, 3, 4, dtype=D)
    want = _rglru_oracle(x, h0[0], m.weight_ih_l0, m.bias_ih_l0, m.lambda_l0, False, project=False)
    torch.testing.assert_close(m(x, h0)[0], want, rtol=1e-12, atol=1e-12)
    wide = gated.RGLRU(3, 4)  # I != H: a torch.nn.Linear block
    assert not torch.allclose(wide.weight_ih_l0[2 * H:, :3], torch.eye(4, 3))


@pytest.mark.parametrize("core,variant,backend",
                         [(c, v, FAST[0]) for c, v in CASES] + [(c, "UR", "torch") for c in CORES])
def test_scan_equals_the_sequential_loop_float64(core, variant, backend):
    """2 layers, both directions, signed h0: every value and gradient to 1e-10."""
    m = _module(core, variant, num_layers=2, bidirectional=True)
    x = torch.randn(9, 3, 5, dtype=D, requires_grad=True)
    h0 = torch.randn(4, 3, 6, dtype=D, requires_grad=True)
    ref_vals, ref_grads = _values_and_grads(m, x, h0, "reference")
    vals, grads = _values_and_grads(m, x, h0, backend)
    names = ["output", "h_n", "d input", "d h0"] + [f"d {n}" for n, _ in m.named_parameters()]
    for name, a, b in zip(names, [*vals, *grads], [*ref_vals, *ref_grads], strict=True):
        assert _rel(a, b) < 1e-10, (name, _rel(a, b))


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("core", CORES)
def test_packed_sequences_equal_the_loop_and_each_sequence_alone(core, backend):
    m = _module(core, "UR", num_layers=2, bidirectional=True)
    seqs = [torch.randn(n, 5, dtype=D) for n in (7, 3, 5, 1)]
    x = pack_sequence(seqs, enforce_sorted=False)
    x.data.requires_grad_(True)
    h0 = torch.randn(4, 4, 6, dtype=D, requires_grad=True)
    ref_vals, ref_grads = _values_and_grads(m, x, h0, "reference")
    vals, grads = _values_and_grads(m, x, h0, backend)
    for a, b in zip([*vals, *grads], [*ref_vals, *ref_grads], strict=True):
        assert _rel(a, b) < 1e-10
    out, h = m._run(x, h0, backend=backend)
    for k, s in enumerate(seqs):
        alone, h_alone = m._run(s, h0[:, k], backend=backend)
        torch.testing.assert_close(unpack_sequence(out)[k], alone, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(h[:, k], h_alone, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("core", CORES)
def test_streaming_equals_the_scan(core):
    m = _module(core, "UR", num_layers=2)
    x = torch.randn(20, 2, 5, dtype=D)
    whole, h_whole = m(x)
    h, outs = None, []
    for t in range(x.shape[0]):
        o, h = m(x[t:t + 1], h)
        outs.append(o)
    torch.testing.assert_close(torch.cat(outs), whole, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(h, h_whole, rtol=1e-12, atol=1e-12)


def _long_memory(core, dtype):
    """Decays pushed towards 1 (UR): RG-LRU with Lambda + 9 on UGI's (a step's decay up to 1 - 3e-6), HGRN
    with a fixed lower bound of 0.999 (up to 1 - 4e-5). Measured: outputs within 6e-6 of float64, gradients
    within 5e-5 (2e-7 and 5e-6 at the init)."""
    torch.manual_seed(1)
    if core == "RGLRU":
        m = gated.RGLRU(3, 8, variant="UR", dtype=dtype)
        with torch.no_grad():
            m.lambda_l0.add_(9.0)
        return m
    return gated.HGRN(3, 8, variant="UR", lower_bound=0.999, dtype=dtype)


@pytest.mark.parametrize("core", CORES)
def test_float32_stays_within_1e4_of_float64_over_10000_steps(core):
    m64 = _long_memory(core, D)
    m32 = _long_memory(core, torch.float32)
    m32.load_state_dict(m64.state_dict())
    x = torch.randn(10_000, 2, 3, dtype=D)
    h0 = torch.randn(1, 2, 8, dtype=D)
    x32, h32 = x.float().requires_grad_(), h0.float().requires_grad_()
    x64, h64 = x.clone().requires_grad_(), h0.clone().requires_grad_()
    out32, _ = m32(x32, h32)
    out64, _ = m64(x64, h64)
    assert _rel(out32.double(), out64) < 1e-4
    w = torch.randn(out64.shape, dtype=D)
    (out32 * w.float()).sum().backward()
    (out64 * w).sum().backward()
    for a, b in [(x32.grad, x64.grad), (h32.grad, h64.grad), *zip(m32.parameters(), m64.parameters())]:
        a, b = (a.grad, b.grad) if isinstance(a, torch.nn.Parameter) else (a, b)
        assert _rel(a.double(), b) < 1e-3


@pytest.mark.parametrize("backend", ["reference", *FAST])
@pytest.mark.parametrize("core,variant", [(c, v) for c in CORES for v in ("-", "UR")])
def test_no_nan_or_inf_from_finite_inputs(core, variant, backend):
    """Pre-activations of +-1e4, |h0| up to 1e3, and (RG-LRU) Lambda from -1e4 to 1e4: a_t from 0 to
    exactly 1, where sqrt(1 - a_t^2) has an infinite derivative."""
    m = _module(core, variant, dtype=torch.float32, scale=2.0, num_layers=2)
    if core == "RGLRU":
        with torch.no_grad():
            m.lambda_l0.copy_(torch.tensor([-1e4, 0.0, 20.0, 60.0, 200.0, 1e4]))
            m.lambda_l1.copy_(torch.tensor([30.0, 40.0, 50.0, 90.0, 120.0, 1e4]))
    x = (1e4 * torch.randn(30, 4, 5)).requires_grad_()
    h0 = (1e3 * torch.randn(2, 4, 6)).requires_grad_()
    out, h = m._run(x, h0, backend=backend)
    (out.sum() + h.sum()).backward()
    for t in [out, h, x.grad, h0.grad, *(p.grad for p in m.parameters())]:
        assert torch.isfinite(t).all()


def test_rglru_sqrt_at_a_equal_one_is_exact_and_differentiable():
    """a_t = 1 exactly (Lambda large): the state is carried unchanged, the write is 0, gradients finite;
    just below 1 (1 - a ~ 1e-13), 1 - a^2 = -expm1(2 log a) keeps the write's precision, which
    1 - a*a would lose."""
    m = gated.RGLRU(2, 3, dtype=D)
    with torch.no_grad():
        m.lambda_l0.copy_(torch.tensor([800.0, 30.0, 2.0], dtype=D))
    x = torch.randn(5, 1, 2, dtype=D, requires_grad=True)
    h0 = torch.randn(1, 1, 3, dtype=D, requires_grad=True)
    out, _ = m(x, h0)
    torch.testing.assert_close(out[:, 0, 0], h0[0, 0, 0].expand(5), rtol=0, atol=0)
    out.sum().backward()
    assert all(torch.isfinite(t).all() for t in [x.grad, h0.grad, *(p.grad for p in m.parameters())])
    first, _ = m(x[:1].detach(), torch.zeros(1, 1, 3, dtype=D))  # h_1 = sqrt(1 - a_1^2) i_1 x~_1
    P = torch.nn.functional.linear(x[0, 0].detach(), m.weight_ih_l0, m.bias_ih_l0).detach()
    log_a = -8.0 * torch.sigmoid(P[1]) * math.log1p(math.exp(-30.0))
    scale = torch.sigmoid(P[4]) * P[7]
    exact = torch.sqrt(-torch.expm1(2 * log_a)) * scale
    naive = torch.sqrt(1 - torch.exp(log_a) ** 2) * scale
    assert _rel(first[0, 0, 1], exact) < 1e-12 and _rel(naive, exact) > 1e-5


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("core", CORES)
def test_nan_propagates_as_in_the_reference(core, backend):
    m = _module(core, "UR")
    x = torch.randn(12, 3, 5, dtype=D)
    x[4, 1, 2] = float("nan")
    x[7, 2, 0] = float("inf")
    h0 = torch.randn(1, 3, 6, dtype=D)
    ref, ref_h = m._run(x, h0, backend="reference")
    out, h = m._run(x, h0, backend=backend)
    assert ref[:4].isfinite().all() and ref[4:, 1].isnan().all() and ref[:4, 1].isfinite().all()
    torch.testing.assert_close(out, ref, equal_nan=True, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(h, ref_h, equal_nan=True, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("core,variant", [(c, v) for c in CORES for v in ("-", "UR")])
def test_gradcheck(core, variant):
    m = _module(core, variant, scale=1.0, I=3, H=3, num_layers=2)
    x = torch.randn(3, 2, 3, dtype=D, requires_grad=True)
    h0 = torch.randn(2, 2, 3, dtype=D, requires_grad=True)
    names = [n for n, _ in m.named_parameters()]

    def f(x, h0, *ps):
        return torch.func.functional_call(m, dict(zip(names, ps)), (x, h0))

    # functional_call keeps the module's backend choice: the C++ linear scan where it is built
    fast = "fused_cpu" if scan_backend.available() else "torch"
    assert scan_backend.resolve("auto", m.layout, x) is scan_backend.BACKENDS[fast]
    assert torch.autograd.gradcheck(f, (x, h0, *m.parameters()), fast_mode=True)


def test_gradgradcheck_through_the_linear_scan():
    m = _module("RGLRU", "UR", scale=1.0, I=2, H=2)
    x = torch.randn(2, 1, 2, dtype=D, requires_grad=True)
    h0 = torch.randn(1, 1, 2, dtype=D, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda x, h0: m(x, h0)[0], (x, h0), fast_mode=True)


def _ks_uniform(values, low, high):
    v = values.detach().double().sort().values
    grid = (torch.arange(v.numel(), dtype=D) + 0.5) / v.numel()
    return float((v - (low + (high - low) * grid)).abs().max() / (high - low))


def test_native_inits():
    """RG-LRU: a^c ~ U[0.9, 0.999] in every layer and direction; HGRN: lower bounds 0, 1/L, ..., (L-1)/L."""
    m = gated.RGLRU(1, 2048, bidirectional=True, dtype=D)
    for sfx in ("_l0", "_l0_reverse"):
        ac = torch.sigmoid(getattr(m, "lambda" + sfx)) ** 8
        assert 0.9 <= ac.min() and ac.max() <= 0.999
        assert _ks_uniform(ac, 0.9, 0.999) < 0.04
    deep = gated.RGLRU(2, 16, num_layers=2, dtype=D)
    assert ((torch.sigmoid(deep.lambda_l1) ** 8 - 0.9495).abs() <= 0.0495 + 1e-12).all()
    gated.init.rglru_decay_(deep, 0.5, 0.6, generator=torch.Generator().manual_seed(0))
    assert ((torch.sigmoid(deep.lambda_l1) ** 8 - 0.55).abs() <= 0.05 + 1e-12).all()
    h = gated.HGRN(3, 5, num_layers=4, dtype=D)
    assert (h.lower_bounds == 0).all() and h.lower_bounds.shape == (4, 5)
    want = torch.arange(4, dtype=D).div(4).unsqueeze(1).expand(4, 5)
    torch.testing.assert_close(h.layer_lower_bounds(), want)
    assert not hasattr(gated.HGRN(3, 5), "lower_bounds")  # one layer: no bound, as fla's first layer
    assert (gated.HGRN(3, 5, num_layers=3, lower_bound=False).layer_lower_bounds() == 0).all()
    assert (gated.HGRN(3, 5, num_layers=3, lower_bound=0.25).layer_lower_bounds() == 0.25).all()
    # the bound acts from layer 1 on: layer 0's output does not depend on lower_bounds
    x = torch.randn(4, 2, 3, dtype=D)
    y0, _ = h(x)
    with torch.no_grad():
        h.lower_bounds.add_(torch.randn(4, 5, dtype=D))
    y1, hn1 = h(x)
    assert not torch.allclose(y0, y1)
    single = gated.HGRN(3, 5, dtype=D, lower_bound=False)
    single.load_state_dict({k: v for k, v in h.state_dict().items() if k.endswith("_l0")})
    torch.testing.assert_close(single(x)[1][0], hn1[0])


def test_ugi_and_refine_differ_from_the_native_variant_as_documented():
    H = 2048
    # RG-LRU U: a^c ~ U[1/d, 1 - 1/d] in place of U[0.9, 0.999]
    u = gated.RGLRU(1, H, variant="U", dtype=D)
    ac = torch.sigmoid(u.lambda_l0) ** 8
    assert 1 / H - 1e-12 <= ac.min() and ac.max() <= 1 - 1 / H + 1e-12
    assert _ks_uniform(ac, 1 / H, 1 - 1 / H) < 0.04
    # RG-LRU UR: UGI, and the refine block's bias zeroed; with W_rho = 0 it equals U (rho = 1/2: g = a)
    ur = gated.RGLRU(3, 6, variant="UR", dtype=D)
    assert (ur.bias_ih_l0[18:] == 0).all() and ur.weight_ih_l0.shape == (24, 3)
    plain = gated.RGLRU(3, 6, variant="U", dtype=D)
    plain.load_state_dict({"weight_ih_l0": ur.weight_ih_l0[:18], "bias_ih_l0": ur.bias_ih_l0[:18],
                           "lambda_l0": ur.lambda_l0})
    with torch.no_grad():
        ur.weight_ih_l0[18:] = 0.0
    x = torch.randn(8, 2, 3, dtype=D)
    torch.testing.assert_close(ur(x)[0], plain(x)[0], rtol=1e-12, atol=1e-12)
    with torch.no_grad():
        ur.weight_ih_l0[18:] = torch.randn(6, 3, dtype=D)
    acts = gated.gate_activations(ur, x)
    P = torch.nn.functional.linear(x, ur.weight_ih_l0, ur.bias_ih_l0).detach()
    a = torch.sigmoid(ur.lambda_l0.detach()) ** (8 * torch.sigmoid(P[..., :6]))
    rho = torch.sigmoid(P[..., 18:])
    torch.testing.assert_close(acts["forget"][0, 0], a)
    torch.testing.assert_close(acts["refine"][0, 0], rho)
    torch.testing.assert_close(acts["effective"][0, 0], gated.gates.refine_gate(a, rho))
    assert not torch.allclose(ur(x)[0], plain(x)[0])
    # HGRN U: b_f = logit(u) on the forget gate's rows; UR: in forget_bias, the f and rho rows zeroed
    hu = gated.HGRN(1, H, variant="U", dtype=D)
    assert _ks_uniform(torch.sigmoid(hu.bias_ih_l0[:H]), 1 / H, 1 - 1 / H) < 0.04
    hur = gated.HGRN(3, 6, num_layers=2, variant="UR", dtype=D)
    fb = hur.forget_bias_l1.detach()
    assert fb.abs().max() > 0 and (hur.bias_ih_l1[:6] == 0).all() and (hur.bias_ih_l1[12:] == 0).all()
    acts = gated.gate_activations(hur, x)
    P1 = torch.nn.functional.linear(_layer0(hur, x), hur.weight_ih_l1, hur.bias_ih_l1).detach()  # layer 1 reads layer 0
    f, r = torch.sigmoid(P1[..., :6] + fb), torch.sigmoid(P1[..., 12:] - fb)
    lb = hur.layer_lower_bounds()[1].detach()
    torch.testing.assert_close(acts["forget"][1, 0], f)
    torch.testing.assert_close(acts["refine"][1, 0], r)
    torch.testing.assert_close(acts["effective"][1, 0], lb + (1 - lb) * gated.gates.refine_gate(f, r))
    torch.testing.assert_close(acts["timescale"], 1 / (1 - acts["effective"]))


def _layer0(m, x):
    one = gated.HGRN(m.input_size, m.hidden_size, variant=m.variant.name, dtype=D)
    one.load_state_dict({k: v for k, v in m.state_dict().items() if k.endswith("_l0")})
    return one(x)[0].detach()


def test_initialisers_act_on_the_decay():
    m = gated.RGLRU(3, 4, num_layers=2, bias=False, variant="U", dtype=D)  # Lambda carries UGI: no bias needed
    assert [n for n, _ in m.named_parameters()] == ["weight_ih_l0", "lambda_l0", "weight_ih_l1", "lambda_l1"]
    gated.init.forget_bias_(m, 2.0)
    torch.testing.assert_close(torch.sigmoid(m.lambda_l1) ** 8, torch.sigmoid(torch.tensor(2.0, dtype=D)).expand(4))
    gated.init.chrono_(m, 50.0)
    assert (torch.sigmoid(m.lambda_l0) ** 8 >= 0.5).all()
    h = gated.HGRN(3, 4, variant="-")
    gated.init.uniform_gate_(h)
    assert (h.bias_ih_l0[:4] != 0).all()


def test_torch_api_shapes_names_and_repr():
    m = gated.RGLRU(5, 6, num_layers=2, bidirectional=True, batch_first=True, variant="UR")
    out, h = m(torch.randn(3, 7, 5))
    assert out.shape == (3, 7, 12) and h.shape == (4, 3, 6)
    out1, h1 = m(torch.randn(7, 5))  # unbatched
    assert out1.shape == (7, 12) and h1.shape == (4, 6)
    names = [n for n, _ in m.named_parameters()]
    params = ("weight_ih", "bias_ih", "lambda")
    assert names == [f"{p}_l{k}{d}" for k in (0, 1) for d in ("", "_reverse") for p in params]
    assert m.weight_ih_l0.shape == (24, 5) and m.weight_ih_l1.shape == (24, 12)
    assert repr(m) == "RGLRU(5, 6, num_layers=2, batch_first=True, bidirectional=True, variant='UR')"
    h = gated.HGRN(5, 6, num_layers=2, variant="R", lower_bound=0.5)
    assert repr(h) == "HGRN(5, 6, num_layers=2, variant='R', lower_bound=0.5)"
    assert [n for n, _ in h.named_parameters()][:3] == ["weight_ih_l0", "bias_ih_l0", "forget_bias_l0"]
    assert repr(gated.HGRN(5, 6)) == "HGRN(5, 6, variant='-')" and gated.RGLRU(5, 6).variant.name == "-"
    assert gated.CORES["rglru"].variants == ("-", "U", "R", "UR") == gated.CORES["hgrn"].variants


def test_backend_choice():
    m = gated.RGLRU(4, 8)
    x = torch.randn(5, 2, 4)
    if scan_backend.available():
        assert scan_backend.resolve("auto", m.layout, x) is scan_backend.run_layer  # C++ linear scan
    assert scan_backend.why_not(m.layout, x.to(torch.bfloat16)) == "dtype torch.bfloat16"
    b = gated.HGRN(4, 8, dtype=torch.bfloat16)
    out, _ = b(torch.randn(5, 2, 4, dtype=torch.bfloat16))  # the C++ scan in float32 (gated/precision.py)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()


def test_pickle_state_dict_and_torch_func():
    for m in (gated.RGLRU(3, 4, variant="UR"), gated.HGRN(3, 4, num_layers=2, variant="UR")):
        x = torch.randn(5, 2, 3)
        clone = pickle.loads(pickle.dumps(m))
        torch.testing.assert_close(clone(x)[0], m(x)[0])
        assert clone.layout.core is gated.CORES[m.core] and clone.variant is gated.VARIANTS["UR"]
        other = type(m)(3, 4, num_layers=m.num_layers, variant="UR")
        other.load_state_dict(m.state_dict())
        torch.testing.assert_close(other(x)[0], m(x)[0])
        out, tangent = torch.func.jvp(lambda x: m(x)[0], (x,), (torch.ones_like(x),))  # the reference loop
        torch.testing.assert_close(out, m(x)[0])
        assert torch.isfinite(tangent).all()
    assert pickle.loads(pickle.dumps(gated.CORES["hgrn"])) is gated.CORES["hgrn"]


@pytest.mark.parametrize("make, message, kind", [
    (lambda: gated.RGLRU(4, 8)(torch.randn(5, 3, 5)),
     "input.size\\(-1\\) must be equal to input_size. Expected 4, got 5",
     gated.InputError),
    (lambda: gated.HGRN(4, 8)(torch.randn(5, 3, 4, 1)), "HGRN: Expected input to be 2D or 3D, got 4D",
     gated.InputError),
    (lambda: gated.RGLRU(4, 8)(torch.randn(5, 3, 4), torch.zeros(2, 3, 8)), "Expected hidden size \\(1, 3, 8\\)",
     gated.InputError),
    (lambda: gated.HGRN(4, 8)(torch.randn(5, 3, 4, dtype=D)), "does not match weight dtype", gated.InputError),
    (lambda: gated.RGLRU(4, 8)(torch.randn(0, 3, 4)), "sequence length to be larger than 0", gated.InputError),
    (lambda: gated.RGLRU(4, 8, variant="C"), "does not exist for core 'rglru'; choose one of '-', 'U', 'R', 'UR'",
     ValueError),
    (lambda: gated.HGRN(4, 8, variant="OM"), "does not exist for core 'hgrn'", ValueError),
    (lambda: gated.HGRN(4, 8, proj_size=2), "proj_size argument is only supported for LSTM, not HGRN", ValueError),
    (lambda: gated.RGLRU(4, 8, backend="cuda"), "unknown backend 'cuda'", ValueError),
    (lambda: gated.HGRN(4, 8, variant="U", bias=False), "needs bias=True", ValueError),
    (lambda: gated.RGLRU(4, 8, bias=1), "bias should be of type bool", TypeError),
    (lambda: gated.RGLRU(4, 0), "hidden_size must be greater than zero", ValueError),
    (lambda: gated.HGRN(4, 8, lower_bound=1.0), "lower_bound should be a bool or a float in \\[0, 1\\), got 1.0",
     ValueError),
    (lambda: gated.HGRN(4, 8, lower_bound="yes"), "lower_bound should be a bool or a float in \\[0, 1\\), got: str",
     TypeError),
    (lambda: gated.init.rglru_decay_(gated.HGRN(4, 8)), "rglru_decay_ initialises gated.RGLRU", TypeError),
    (lambda: gated.init.rglru_decay_(gated.RGLRU(4, 8), 0.9, 1.0), "0 < low < high < 1", ValueError),
])
def test_bad_arguments_are_rejected_clearly(make, message, kind):
    with pytest.raises(kind, match=message):
        make()


# ---- the fused kernels (gated/csrc/scan.h: lru_forward, lru_backward) ----

fused = pytest.mark.fused  # skipped where the kernels are not built (_needs_scan_kernels)
LRU_CONFIGS = [  # (core, variant, module kwargs): every variant, HGRN's bounds learned / fixed / none, no bias
    *[(c, v, {}) for c, v in CASES],
    ("HGRN", "UR", {"lower_bound": 0.3}),
    ("HGRN", "-", {"lower_bound": False}),
    ("HGRN", "R", {"bias": False}),
    ("RGLRU", "UR", {"bias": False}),
]
LRU_IDS = [f"{c}-{v}-{'-'.join(f'{k}={w}' for k, w in kw.items())}" for c, v, kw in LRU_CONFIGS]


@fused
@pytest.mark.parametrize("core,variant,kw", LRU_CONFIGS, ids=LRU_IDS)
def test_fused_kernel_runs_the_layer(core, variant, kw):
    """fused_cpu runs RG-LRU and HGRN on their own kernel (no torch-op gates, no bare linear scan)."""
    m = _module(core, variant, num_layers=2, **kw)
    x = torch.randn(4, 2, 5, dtype=D, requires_grad=True)
    out, _ = m._run(x, None, backend="fused_cpu")
    assert type(out.grad_fn).__name__ == "_LruLayerBackward"
    assert not any("LinearScan" in type(n).__name__ for n in _graph(out.grad_fn))


def _graph(fn, seen=None):
    seen = set() if seen is None else seen
    if fn is not None and fn not in seen:
        seen.add(fn)
        for nxt, _ in fn.next_functions:
            _graph(nxt, seen)
    return seen


@fused
@pytest.mark.parametrize("dtype", [D, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("core,variant,kw", LRU_CONFIGS, ids=LRU_IDS)
def test_fused_equals_the_sequential_loop(core, variant, kw, dtype):
    """2 layers, both directions, signed h0: outputs, h_n and the gradients of the input, h0 and every
    parameter (Lambda, HGRN's lower_bounds and forget_bias) to 1e-10 in float64, 1e-5 in float32."""
    m = _module(core, variant, dtype=dtype, num_layers=2, bidirectional=True, **kw)
    x = torch.randn(9, 3, 5, dtype=dtype, requires_grad=True)
    h0 = torch.randn(4, 3, 6, dtype=dtype, requires_grad=True)
    ref_vals, ref_grads = _values_and_grads(m, x, h0, "reference")
    vals, grads = _values_and_grads(m, x, h0, "fused_cpu")
    names = ["output", "h_n", "d input", "d h0"] + [f"d {n}" for n, _ in m.named_parameters()]
    tol = 1e-10 if dtype == D else 1e-5
    for name, a, b in zip(names, [*vals, *grads], [*ref_vals, *ref_grads], strict=True):
        assert _rel(a, b) < tol, (name, _rel(a, b))


@fused
@pytest.mark.parametrize("dtype", [D, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("core,variant", CASES)
def test_fused_packed_sequences_equal_the_loop(core, variant, dtype):
    """Steps past a sequence's end hold the state and give zero gradients, as the loop's mask."""
    m = _module(core, variant, dtype=dtype, num_layers=2, bidirectional=True)
    seqs = [torch.randn(n, 5, dtype=dtype) for n in (7, 3, 5, 1)]
    x = pack_sequence(seqs, enforce_sorted=False)
    x.data.requires_grad_(True)
    h0 = torch.randn(4, 4, 6, dtype=dtype, requires_grad=True)
    ref_vals, ref_grads = _values_and_grads(m, x, h0, "reference")
    vals, grads = _values_and_grads(m, x, h0, "fused_cpu")
    tol = 1e-10 if dtype == D else 1e-5
    for k, (a, b) in enumerate(zip([*vals, *grads], [*ref_vals, *ref_grads], strict=True)):
        assert _rel(a, b) < tol, (k, _rel(a, b))


@fused
@pytest.mark.parametrize("core,variant,kw", LRU_CONFIGS, ids=LRU_IDS)
def test_fused_gradcheck(core, variant, kw):
    """gradcheck in float64 of the fused layer (the kernel's backward), every parameter and h0, packed."""
    m = _module(core, variant, scale=1.0, I=3, H=3, num_layers=2, bidirectional=True, **kw)
    names = [n for n, _ in m.named_parameters()]
    h0 = torch.randn(4, 2, 3, dtype=D, requires_grad=True)
    x = torch.randn(4, 2, 3, dtype=D, requires_grad=True)
    lengths = torch.tensor([4, 2])

    def f(x, h0, *ps):
        packed = torch.nn.utils.rnn.pack_padded_sequence(x, lengths)
        out, h = torch.func.functional_call(m, dict(zip(names, ps)), (packed, h0))
        return out.data, h

    assert scan_backend.resolve("auto", m.layout, x) is scan_backend.run_layer
    assert torch.autograd.gradcheck(f, (x, h0, *m.parameters()), fast_mode=True)


@fused
@pytest.mark.parametrize("core", CORES)
def test_fused_float32_within_1e4_of_float64_over_10000_steps_native_variant(core):
    """As test_float32_stays_within_1e4_of_float64_over_10000_steps, for the '-' variant's kernel."""
    torch.manual_seed(2)
    if core == "RGLRU":
        m64 = gated.RGLRU(3, 8, variant="U", dtype=D)
        with torch.no_grad():
            m64.lambda_l0.add_(9.0)
    else:
        m64 = gated.HGRN(3, 8, variant="U", lower_bound=0.999, dtype=D)
    m32 = type(m64)(3, 8, variant="U", dtype=torch.float32, **({} if core == "RGLRU" else {"lower_bound": 0.999}))
    m32.load_state_dict(m64.state_dict())
    x = torch.randn(10_000, 2, 3, dtype=D)
    x32, x64 = x.float().requires_grad_(), x.clone().requires_grad_()
    out32, _ = m32._run(x32, None, backend="fused_cpu")
    out64, _ = m64._run(x64, None, backend="fused_cpu")
    assert _rel(out32.double(), out64) < 1e-4
    w = torch.randn(out64.shape, dtype=D)
    (out32 * w.float()).sum().backward()
    (out64 * w).sum().backward()
    assert _rel(x32.grad.double(), x64.grad) < 1e-3
    for a, b in zip(m32.parameters(), m64.parameters()):
        assert _rel(a.grad.double(), b.grad) < 1e-3


@fused
@pytest.mark.parametrize("dtype", [D, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("variant", ["-", "UR"])
def test_fused_rglru_saturated_decay_is_finite_and_matches(variant, dtype):
    """a_t from just below 1 to exactly 1 (softplus(-Lambda) from 1e-9 down to denormal and 0, r -> 0):
    sqrt(1 - a^2)'s derivative is unbounded there; the kernel's gradients stay finite and equal the
    reference (whose square root has gradient 0 at 1 - a^2 = 0)."""
    m = _module("RGLRU", variant, dtype=dtype, scale=1.0, I=5, H=6)
    with torch.no_grad():
        m.lambda_l0.copy_(torch.tensor([20.0, 40.0, 60.0, 95.0, 110.0, 800.0], dtype=dtype))
        m.weight_ih_l0[:6].mul_(30.0)  # r_t from ~0 to ~1
    x = torch.randn(40, 3, 5, dtype=dtype, requires_grad=True)
    h0 = torch.randn(1, 3, 6, dtype=dtype, requires_grad=True)
    ref_vals, ref_grads = _values_and_grads(m, x, h0, "reference")
    vals, grads = _values_and_grads(m, x, h0, "fused_cpu")
    for k, (a, b) in enumerate(zip([*vals, *grads], [*ref_vals, *ref_grads], strict=True)):
        assert torch.isfinite(a).all(), k
        if dtype == D:
            assert _rel(a, b) < 1e-10, (k, _rel(a, b))


@fused
@pytest.mark.parametrize("core,variant", [(c, v) for c in CORES for v in ("-", "UR")])
def test_fused_no_nan_from_extreme_inputs_float64(core, variant):
    """As test_no_nan_or_inf_from_finite_inputs, in float64 on the kernel (Lambda up to 1e4: a_t = 1)."""
    m = _module(core, variant, dtype=D, scale=2.0, num_layers=2)
    if core == "RGLRU":
        with torch.no_grad():
            m.lambda_l0.copy_(torch.tensor([-1e4, 0.0, 20.0, 60.0, 700.0, 1e4], dtype=D))
            m.lambda_l1.copy_(torch.tensor([30.0, 40.0, 50.0, 90.0, 745.0, 1e4], dtype=D))
    x = (1e4 * torch.randn(30, 4, 5, dtype=D)).requires_grad_()
    h0 = (1e3 * torch.randn(2, 4, 6, dtype=D)).requires_grad_()
    out, h = m._run(x, h0, backend="fused_cpu")
    (out.sum() + h.sum()).backward()
    for t in [out, h, x.grad, h0.grad, *(p.grad for p in m.parameters())]:
        assert torch.isfinite(t).all()


@fused
def test_fused_only_h_n_used_and_gradgradcheck():
    """A loss on h_n alone (no dout), and double backward (recomputed on the reference)."""
    for core in CORES:
        m = _module(core, "UR", num_layers=2)
        x = torch.randn(6, 2, 5, dtype=D, requires_grad=True)
        h0 = torch.randn(2, 2, 6, dtype=D, requires_grad=True)
        want = torch.autograd.grad(m._run(x, h0, backend="reference")[1].sum(), [x, h0, *m.parameters()])
        got = torch.autograd.grad(m._run(x, h0, backend="fused_cpu")[1].sum(), [x, h0, *m.parameters()])
        for a, b in zip(got, want, strict=True):
            assert _rel(a, b) < 1e-10
    m = _module("HGRN", "UR", scale=1.0, I=2, H=2, num_layers=2)
    x = torch.randn(3, 1, 2, dtype=D, requires_grad=True)
    h0 = torch.randn(2, 1, 2, dtype=D, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda x, h0: m._run(x, h0, backend="fused_cpu")[0], (x, h0), fast_mode=True)


@fused
def test_lru_ops_fakes_and_checks():
    ops = torch.ops.gated_fused
    checks = ("test_schema", "test_faketensor")
    P, b, h0 = torch.randn(5, 2, 24), torch.randn(24), torch.randn(2, 6)
    units = torch.rand(2, 6)
    lengths = torch.tensor([5, 3])
    out, _ = ops.lru_forward(P, b, None, units, h0, lengths, 2, True)
    torch.library.opcheck(ops.lru_forward.default, (P, b, None, units, h0, lengths, 2, True), test_utils=checks)
    torch.library.opcheck(ops.lru_backward.default, (torch.randn(5, 2, 6), None, P, b, None, units, out, h0, lengths,
                                                     2, True, True), test_utils=checks)
    Ph, fb, lb = torch.randn(5, 2, 18), torch.randn(6), torch.rand(1, 6)
    torch.library.opcheck(ops.lru_forward.default, (Ph, None, fb, lb, h0, None, 3, True), test_utils=checks)
    out, _ = ops.lru_forward(Ph, None, fb, None, h0, None, 3, True)
    torch.library.opcheck(ops.lru_backward.default, (None, torch.randn(2, 6), Ph, None, fb, None, out, h0, None, 3,
                                                     True, False), test_utils=checks)
    with pytest.raises(RuntimeError, match="G must be 4 x H"):
        ops.lru_forward(P[..., :18], None, None, units, h0, None, 2, True)
    with pytest.raises(RuntimeError, match="RG-LRU needs units"):
        ops.lru_forward(P, None, None, None, h0, None, 2, True)
    with pytest.raises(RuntimeError, match="unknown cell"):
        ops.lru_forward(P, None, None, units, h0, None, 0, True)
    with pytest.raises(RuntimeError, match="float32 or float64"):
        ops.lru_forward(P.half(), None, None, units.half(), h0.half(), None, 2, True)
