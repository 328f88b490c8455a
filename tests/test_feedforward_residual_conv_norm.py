"""GatedResidual (GTrXL), GatedConv1d (Dauphin GLU / WaveNet) and GatedRMSNorm (Mamba-2): each equals
its formula written out here in float64 (outputs and gradients), plus init, causality, torch
equivalences, errors, pickle and torch.compile."""

import io
import pickle

import pytest
import torch
import torch.nn.functional as F
from scipy import stats
from torch import nn

from gated.feedforward import GATE_VARIANTS, GATED_CONV_KINDS, GatedConv1d, GatedResidual, GatedRMSNorm

F64 = torch.float64


def _sig(x):
    return 1.0 / (1.0 + torch.exp(-x))


def _refine(f, r):
    return r * (1 - (1 - f) ** 2) + (1 - r) * f**2  # paper Eq. 10, upper/lower band form


def _perturb(m):
    with torch.no_grad():  # zero-initialised biases would hide a wrong term
        for p in m.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return m


def _check_grads(got, ref, wrt, names):
    cot = torch.randn(got.shape, dtype=got.dtype, generator=torch.Generator().manual_seed(1))
    g_got = torch.autograd.grad((got * cot).sum(), wrt)
    g_ref = torch.autograd.grad((ref * cot).sum(), wrt)
    for name, a, b in zip(names, g_got, g_ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10, msg=lambda s, name=name: f"grad of {name}: {s}")


def _roundtrip(m):
    buf = io.BytesIO()
    torch.save(m, buf)
    buf.seek(0)
    return [pickle.loads(pickle.dumps(m)), torch.load(buf, weights_only=False)]


def _compiled_matches(m, *inputs):
    torch._dynamo.reset()
    compiled = torch.compile(m, backend="aot_eager", fullgraph=True)
    got, ref = compiled(*inputs), m(*inputs)
    torch.testing.assert_close(got, ref)
    wrt = [*inputs, *m.parameters()]
    cot = torch.randn_like(ref)
    g_got, g_ref = torch.autograd.grad((got * cot).sum(), wrt), torch.autograd.grad((ref * cot).sum(), wrt)
    for a, b in zip(g_got, g_ref, strict=True):
        torch.testing.assert_close(a, b)


# --------------------------------------------------------------------------- GatedResidual

def _residual_formula(m, x, y):
    """GTrXL Section 3.2 from the raw weights; R variants refine z with σ(W_q y + U_q x + b_g)."""
    d, b = m.size, m.gate_bias
    W = m.w.weight.split(d)  # W_r, W_z, W_g (, W_q)
    U = m.u.weight.split(d)  # U_r, U_z (, U_q)
    r = _sig(y @ W[0].T + x @ U[0].T)
    z = _sig(y @ W[1].T + x @ U[1].T - b)
    if m.refine:
        z = _refine(z, _sig(y @ W[3].T + x @ U[2].T + b))
    h = torch.tanh(y @ W[2].T + (r * x) @ m.u_g.weight.T)
    return (1 - z) * x + z * h, z


@pytest.mark.parametrize("variant", GATE_VARIANTS)
def test_residual_equals_formula(variant):
    m = _perturb(GatedResidual(6, variant=variant, dtype=F64))
    x = torch.randn(4, 3, 6, dtype=F64, requires_grad=True)
    y = torch.randn(4, 3, 6, dtype=F64, requires_grad=True)
    ref, z = _residual_formula(m, x, y)
    out = m(x, y)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(m.update_gate(x, y), z, rtol=1e-12, atol=1e-12)
    _check_grads(out, ref, [x, y, *m.parameters()], ["x", "y", *dict(m.named_parameters())])


@pytest.mark.parametrize("variant", ["-", "R"])
def test_residual_starts_near_the_identity(variant):
    m = GatedResidual(256, variant=variant)
    torch.testing.assert_close(m.gate_bias, torch.full((256,), 2.0))
    x, y = torch.randn(512, 256), torch.relu(torch.randn(512, 256))
    z = m.update_gate(x, y)
    assert z.mean() < 0.25  # σ(−2) ≈ 0.12 plus the weights' spread (R: z² + 2rz(1 − z), r ≈ σ(2))
    assert (m(x, y) - x).abs().mean() < 0.3 * x.abs().mean()
    big = GatedResidual(16, variant=variant, gate_bias=30.0)  # z ≈ 0: exactly the skip path
    x16 = torch.randn(8, 16)
    torch.testing.assert_close(big(x16, torch.randn(8, 16)), x16, rtol=0, atol=1e-6)


@pytest.mark.parametrize("variant", ["U", "UR"])
def test_residual_uniform_gate_init(variant):
    d = 2000
    m = GatedResidual(d, variant=variant, generator=torch.Generator().manual_seed(3))
    u = torch.sigmoid(m.gate_bias.detach().double())
    assert u.min() >= 1 / d - 1e-6 and u.max() <= 1 - 1 / d + 1e-6
    assert stats.kstest(u.numpy(), stats.uniform(1 / d, 1 - 2 / d).cdf).pvalue > 0.01


# --------------------------------------------------------------------------- GatedConv1d

def _causal_conv(x, weight, bias, dilation):
    """y[b, o, t] = bias[o] + Σ_c Σ_j W[o, c, j] · x[b, c, t − (k − 1 − j)·dilation], zero before t = 0."""
    k, T = weight.shape[-1], x.shape[-1]
    y = torch.zeros(x.shape[0], weight.shape[0], T, dtype=x.dtype) + (0.0 if bias is None else bias[:, None])
    for j in range(k):
        shift = (k - 1 - j) * dilation
        shifted = torch.cat([x.new_zeros(*x.shape[:-1], shift), x[..., : T - shift]], dim=-1)[..., :T]
        y = y + torch.einsum("oc,bct->bot", weight[:, :, j], shifted)
    return y


def _conv_formula(m, x):
    n = m.out_channels
    c = _causal_conv(x, m.conv.weight, m.conv.bias, m.dilation)
    a, g = c[:, :n], c[:, n : 2 * n]
    b = 0.0 if m.gate_bias is None else m.gate_bias[:, None]
    gate = _sig(g + b)
    if m.refine:
        gate = _refine(gate, _sig(c[:, 2 * n :] - b))
    return (a if m.kind == "glu" else torch.tanh(a)) * gate


@pytest.mark.parametrize("variant", GATE_VARIANTS)
@pytest.mark.parametrize("kind", GATED_CONV_KINDS)
def test_conv_equals_formula(kind, variant):
    m = _perturb(GatedConv1d(3, 4, kernel_size=3, dilation=2, kind=kind, variant=variant, dtype=F64))
    x = torch.randn(2, 3, 11, dtype=F64, requires_grad=True)
    out, ref = m(x), _conv_formula(m, x)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    _check_grads(out, ref, [x, *m.parameters()], ["x", *dict(m.named_parameters())])


def test_conv_glu_is_torch_glu_of_a_causal_conv():
    m = GatedConv1d(5, 6, kernel_size=4, dilation=3, dtype=F64)
    x = torch.randn(2, 5, 20, dtype=F64)
    ref = F.glu(F.conv1d(F.pad(x, (9, 0)), m.conv.weight, m.conv.bias, dilation=3), dim=1)
    torch.testing.assert_close(m(x), ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(m(x[0]), ref[0], rtol=1e-12, atol=1e-12)  # unbatched (C, T)
    assert m.receptive_field == 10


@pytest.mark.parametrize("kind", GATED_CONV_KINDS)
def test_conv_is_causal(kind):
    m = GatedConv1d(2, 3, kernel_size=3, dilation=4, kind=kind, variant="UR")
    x = torch.randn(1, 2, 30)
    x2 = x.clone()
    x2[..., 17:] += torch.randn(1, 2, 13)  # change the future from t = 17 on
    y, y2 = m(x), m(x2)
    torch.testing.assert_close(y[..., :17], y2[..., :17], rtol=0, atol=0)
    assert (y[..., 17] - y2[..., 17]).abs().max() > 1e-3
    x3 = x.clone()
    x3[..., 10] += 1.0  # an input reaches t .. t + (k − 1)·dilation = 10 .. 18, at taps 10, 14, 18 only
    changed = ((m(x3) - y).abs().amax(dim=(0, 1)) > 0).nonzero().flatten().tolist()
    assert changed == [10, 14, 18]


@pytest.mark.parametrize("variant", ["U", "R", "UR"])
def test_conv_gate_bias(variant):
    m = GatedConv1d(8, 1000, kernel_size=2, variant=variant, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(m.conv.bias[1000:], torch.zeros(m.conv.bias.numel() - 1000))  # b_G alone
    if variant == "R":
        torch.testing.assert_close(m.gate_bias, torch.zeros(1000))
    else:
        u = torch.sigmoid(m.gate_bias.detach().double())
        assert stats.kstest(u.numpy(), stats.uniform(1e-3, 1 - 2e-3).cdf).pvalue > 0.01
    assert GatedConv1d(8, 4, 2).gate_bias is None


# --------------------------------------------------------------------------- GatedRMSNorm

def _norm_formula(x, z, weight, eps, before, group, act):
    a = (z * _sig(z) if act == "swish" else _sig(z)) if z is not None else None
    if a is not None and not before:
        x = x * a
    xs = x.reshape(*x.shape[:-1], -1, group)
    y = (xs / torch.sqrt((xs**2).sum(-1, keepdim=True) / group + eps)).reshape(x.shape)
    y = y * weight if weight is not None else y
    return y * a if a is not None and before else y


@pytest.mark.parametrize("act", ["swish", "sigmoid"])
@pytest.mark.parametrize("group", [None, 3])
@pytest.mark.parametrize("before", [True, False], ids=["norm-then-gate", "gate-then-norm"])
def test_norm_equals_formula(before, group, act):
    m = _perturb(GatedRMSNorm(12, eps=1e-3, norm_before_gate=before, group_size=group, activation=act, dtype=F64))
    x = torch.randn(2, 5, 12, dtype=F64, requires_grad=True)
    z = torch.randn(2, 5, 12, dtype=F64, requires_grad=True)
    out, ref = m(x, z), _norm_formula(x, z, m.weight, 1e-3, before, group or 12, act)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    _check_grads(out, ref, [x, z, m.weight], ["x", "z", "weight"])


@pytest.mark.parametrize("eps", [1e-5, None])
def test_norm_without_gate_is_torch_rmsnorm(eps):
    m = _perturb(GatedRMSNorm(16, eps=eps, dtype=F64))
    ref = nn.RMSNorm(16, eps=eps, dtype=F64)
    ref.load_state_dict(m.state_dict())
    x = torch.randn(3, 16, dtype=F64) * 1e-6  # small enough that eps matters
    torch.testing.assert_close(m(x), ref(x), rtol=1e-12, atol=1e-12)
    plain = GatedRMSNorm(16, elementwise_affine=False)
    assert plain.weight is None and not list(plain.parameters())


def test_norm_low_precision():
    m = GatedRMSNorm(64)
    x, z = torch.randn(4, 64), torch.randn(4, 64)
    out = m(x.bfloat16(), z.bfloat16())
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), m(x.bfloat16().float(), z.bfloat16().float()), rtol=1e-2, atol=1e-2)


# --------------------------------------------------------------------------- errors, pickle, compile

@pytest.mark.parametrize(
    "call,exc,match",
    [
        (lambda: GatedResidual(0), ValueError, "size must be greater than 0"),
        (lambda: GatedResidual(4.0), TypeError, "size must be an int, got float"),
        (lambda: GatedResidual(4, variant="C"),
         ValueError, "variant 'C' does not exist for GatedResidual; choose one of '-', 'U', 'R', 'UR'"),
        (lambda: GatedResidual(4, variant="U", gate_bias=1.0), ValueError, "draws the gate bias with UGI"),
        (lambda: GatedResidual(4, gate_bias="2"), TypeError, "gate_bias must be a number, got str"),
        (lambda: GatedResidual(4)(torch.randn(2, 4), torch.randn(3, 4)), ValueError, "same shape"),
        (lambda: GatedResidual(4)(torch.randn(2, 5), torch.randn(2, 5)), ValueError, "expected size=4 features"),
        (lambda: GatedConv1d(4, 4, 0), ValueError, "kernel_size must be greater than 0"),
        (lambda: GatedConv1d(4, 4, 3, dilation=0), ValueError, "dilation must be greater than 0"),
        (lambda: GatedConv1d(4, True, 3), TypeError, "out_channels must be an int, got bool"),
        (lambda: GatedConv1d(4, 4, 3, kind="gated"), ValueError, "unknown kind 'gated'; choose one of 'glu', 'tanh'"),
        (lambda: GatedConv1d(4, 4, 3, variant="OR"), ValueError, "variant 'OR' does not exist for GatedConv1d"),
        (lambda: GatedConv1d(4, 4, 3)(torch.randn(2, 5, 9)),
         ValueError, "expected in_channels=4 features in dim -2, got 5"),
        (lambda: GatedConv1d(4, 4, 3)(torch.randn(4)), ValueError, r"at least 2 dims \(B, C, T\) or \(C, T\)"),
        (lambda: GatedRMSNorm(12, group_size=5), ValueError, "group_size must divide hidden_size"),
        (lambda: GatedRMSNorm(12, eps=0.0), ValueError, r"eps must be in \(0.0, inf\), got 0.0"),
        (lambda: GatedRMSNorm(12, activation="relu"),
         ValueError, "unknown gate activation 'relu'; choose one of 'swish', 'sigmoid'"),
        (lambda: GatedRMSNorm(12)(torch.randn(2, 12), torch.randn(2, 1, 12)),
         ValueError, "x and z must have the same shape"),
        (lambda: GatedRMSNorm(12)(torch.ones(2, 12, dtype=torch.long)), TypeError, "must be floating point"),
    ],
)
def test_bad_input(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


MODULES = [
    (lambda: GatedResidual(6, variant="UR"), lambda: (torch.randn(2, 6), torch.randn(2, 6))),
    (lambda: GatedConv1d(3, 4, 3, dilation=2, kind="tanh", variant="UR"), lambda: (torch.randn(2, 3, 9),)),
    (lambda: GatedRMSNorm(6, norm_before_gate=False, group_size=3), lambda: (torch.randn(2, 6), torch.randn(2, 6))),
]
IDS = ["GatedResidual", "GatedConv1d", "GatedRMSNorm"]


@pytest.mark.parametrize("make,inputs", MODULES, ids=IDS)
def test_pickle_and_torch_save(make, inputs):
    m, x = _perturb(make()), inputs()
    for loaded in _roundtrip(m):
        assert repr(loaded) == repr(m)
        torch.testing.assert_close(loaded(*x), m(*x), rtol=0, atol=0)


@pytest.mark.slow
@pytest.mark.parametrize("make,inputs", MODULES, ids=IDS)
def test_compile(make, inputs):
    _compiled_matches(_perturb(make()), *(t.requires_grad_() for t in inputs()))
