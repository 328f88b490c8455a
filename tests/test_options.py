"""LayerNorm, zoneout, recurrent dropout and weight dropout (gated/options.py) against equations
written here (Ba et al. 2016's LayerNorm cell, haste's LayerNormGRU, Krueger et al.'s zoneout and
its expectation, Gal & Ghahramani's variational mask, DropConnect on W_hh), in float64, outputs,
states and every gradient, with the masks the module drew (recorded, then replayed here)."""

from __future__ import annotations

import logging
import pickle
import sys

import pytest
import torch
import torch.nn.functional as F

import gated
from gated import options

T, B, I, H = 5, 3, 4, 6
CLS = {"lstm": gated.LSTM, "gru": gated.GRU, "mgu": gated.MGU}
OPTION_SETS = {
    "layer_norm": dict(layer_norm=True),
    "zoneout": dict(zoneout=0.3),
    "recurrent_dropout": dict(recurrent_dropout=0.4),
    "weight_dropout": dict(weight_dropout=0.5),
    "all": dict(layer_norm=True, zoneout=0.25, recurrent_dropout=0.3, weight_dropout=0.2),
}


@pytest.fixture(autouse=True)
def _float64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


@pytest.fixture
def drawn(monkeypatch):
    """Every mask the module draws, in order."""
    seen = []
    real = options._bernoulli

    def record(shape, p, like):
        m = real(shape, p, like)
        seen.append(m)
        return m

    monkeypatch.setattr(options, "_bernoulli", record)
    return seen


def _ln(v, w, b):
    mu = v.mean(-1, keepdim=True)
    var = ((v - mu) ** 2).mean(-1, keepdim=True)
    return (v - mu) / torch.sqrt(var + 1e-5) * w + b


def _refine(f, r):  # the paper's Eq. (the refine gate): g = r (1 - (1 - f)^2) + (1 - r) f^2
    return r * (1 - (1 - f) ** 2) + (1 - r) * f ** 2


def formula(m, x, masks, training):
    """One layer, one direction, time-major ``x``: the cell written from the papers."""
    core, refine = m.core, m.variant.auxiliary == "refine"
    o = m.opts
    masks = list(masks)
    w_hh = m.weight_hh_l0
    if o.weight_dropout and training:
        w_hh = w_hh * masks.pop(0) / (1 - o.weight_dropout)
    rmask = masks.pop(0) / (1 - o.recurrent_dropout) if o.recurrent_dropout and training else None
    zs = [None] * (2 if core == "lstm" else 1)
    for k, p in enumerate(o.zoneout):
        if p:
            zs[k] = masks.pop(0) if training else p
    assert not masks
    fb = getattr(m, "forget_bias_l0", None)
    h = torch.zeros(B, H)
    c = torch.zeros(B, H)
    outs = []
    for t in range(T):
        a = x[t] @ m.weight_ih_l0.T
        hin = h if rmask is None else h * rmask
        bb = hin @ w_hh.T
        if o.layer_norm:
            a = _ln(a, m.layer_norm_ih_l0.weight, m.layer_norm_ih_l0.bias)
            bb = _ln(bb, m.layer_norm_hh_l0.weight, m.layer_norm_hh_l0.bias)
        a, bb = a + m.bias_ih_l0, bb + m.bias_hh_l0
        pre = a + bb
        blk = lambda k: slice(k * H, (k + 1) * H)  # noqa: E731
        if core == "lstm":
            if refine:
                f = torch.sigmoid(pre[:, blk(1)] + fb)
                r = torch.sigmoid(pre[:, blk(0)] - fb)
                keep = _refine(f, r)
                write = 1 - keep
            else:
                keep, write = torch.sigmoid(pre[:, blk(1)]), torch.sigmoid(pre[:, blk(0)])
            c_new = keep * c + write * torch.tanh(pre[:, blk(2)])
            cn = _ln(c_new, m.layer_norm_c_l0.weight, m.layer_norm_c_l0.bias) if o.layer_norm else c_new
            h_new = torch.sigmoid(pre[:, blk(3)]) * torch.tanh(cn)
        else:
            kb = 1 if core == "gru" else 0
            f = torch.sigmoid(pre[:, blk(kb)] + (fb if refine else 0))
            keep = _refine(f, torch.sigmoid(pre[:, blk(3 if core == "gru" else 2)] - fb)) if refine else f
            reset = torch.sigmoid(pre[:, blk(0)]) if core == "gru" else 1 - f
            nb = blk(2 if core == "gru" else 1)
            n = torch.tanh(a[:, nb] + reset * bb[:, nb])
            h_new = keep * h + (1 - keep) * n
            c_new = c
        if zs[0] is not None:
            z = zs[0][t] if training else zs[0]
            h_new = z * h + (1 - z) * h_new
        if core == "lstm" and zs[1] is not None:
            z = zs[1][t] if training else zs[1]
            c_new = z * c + (1 - z) * c_new
        h, c = h_new, c_new
        outs.append(h)
    return torch.stack(outs), h, c


def _module(core, variant, **kw):
    torch.manual_seed(0)
    m = CLS[core](I, H, variant=variant, backend="reference", **kw)
    with torch.no_grad():  # LayerNorm's gains and biases away from 1 and 0, so that they matter
        for name, p in m.named_parameters():
            if name.startswith("layer_norm"):
                p.add_(torch.randn_like(p) * 0.3)
    return m


@pytest.mark.parametrize("opt", list(OPTION_SETS))
@pytest.mark.parametrize("variant", ["-", "UR"])
@pytest.mark.parametrize("core", ["lstm", "gru", "mgu"])
@pytest.mark.parametrize("training", [True, False])
def test_reference_equals_the_equations(core, variant, opt, training, drawn):
    m = _module(core, variant, **OPTION_SETS[opt]).train(training)
    x = torch.randn(T, B, I, requires_grad=True)
    torch.manual_seed(1)
    out, st = m(x)
    h_n = st[0] if core == "lstm" else st
    want, h, c = formula(m, x, drawn, training)
    torch.testing.assert_close(out, want, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(h_n[0], h, rtol=1e-10, atol=1e-10)
    if core == "lstm":
        torch.testing.assert_close(st[1][0], c, rtol=1e-10, atol=1e-10)
    params = [x, *m.parameters()]
    g = torch.randn_like(out)
    got = torch.autograd.grad((out * g).sum(), params, allow_unused=True)
    exp = torch.autograd.grad((want * g).sum(), params, allow_unused=True)
    for a, b in zip(got, exp):
        if a is None or b is None:
            assert a is None and b is None
            continue
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)


def test_masks_have_the_documented_shapes_and_rates(drawn):
    m = _module("lstm", "UR", recurrent_dropout=0.5, zoneout=(0.2, 0.6), weight_dropout=0.3).train()
    torch.manual_seed(3)
    m(torch.randn(400, 50, I))
    w, r, zh, zc = drawn
    assert w.shape == m.weight_hh_l0.shape and r.shape == (50, H)  # one variational mask per sequence
    assert zh.shape == zc.shape == (400, 50, H)
    for mask, keep in ((w, 0.7), (r, 0.5), (zh, 0.2), (zc, 0.6)):
        assert set(mask.unique().tolist()) <= {0.0, 1.0}
        assert abs(mask.mean().item() - keep) < 4 * (keep * (1 - keep) / mask.numel()) ** 0.5  # 4 sigma


@pytest.mark.parametrize("p", [0.1, 0.5, 0.97, 3e-4])
def test_bernoulli_masks_have_the_rate_and_independent_halves(p):
    """options._bernoulli splits each 64-bit draw into two 31-bit uniforms: the rate is p (4 sigma),
    the two masks from one draw (even and odd elements) are independent (both 1 at rate p^2), an
    odd count and the dtype are kept, and a seed reproduces the mask."""
    like = torch.empty(0, dtype=torch.float64)
    torch.manual_seed(5)
    m = options._bernoulli((1001, 999), p, like)
    assert m.shape == (1001, 999) and m.dtype == torch.float64
    assert set(m.unique().tolist()) <= {0.0, 1.0}
    n = m.numel()
    assert abs(m.mean().item() - p) < 4 * (p * (1 - p) / n) ** 0.5
    pairs = m.flatten()[:n - 1].view(-1, 2)
    both, q = (pairs[:, 0] * pairs[:, 1]).mean().item(), p * p
    assert abs(both - q) < 4 * (q * (1 - q) / pairs.shape[0]) ** 0.5
    torch.manual_seed(5)
    assert torch.equal(options._bernoulli((1001, 999), p, like), m)
    # the uniforms are each draw's low 31 bits, then its bits 32-62 (on a little-endian machine)
    if sys.byteorder == "little":
        torch.manual_seed(5)
        words = torch.randint(0, 2**63 - 1, ((n + 1) // 2,), dtype=torch.int64)
        u = torch.stack((words % 2**31, words // 2**32), -1).flatten()[:n]
        assert torch.equal(m.flatten(), (u < round(p * 2**31)).double())


def test_options_off_or_zero_equal_the_plain_module_bit_for_bit():
    x = torch.randn(T, B, I, dtype=torch.float32)
    for core in CLS:
        torch.manual_seed(0)
        plain = CLS[core](I, H, variant="UR", dtype=torch.float32)
        torch.manual_seed(0)
        zero = CLS[core](I, H, variant="UR", zoneout=0.0, recurrent_dropout=0.0, weight_dropout=0.0,
                         dtype=torch.float32)
        assert list(zero.state_dict()) == list(plain.state_dict())
        torch.manual_seed(5)
        a = plain.train()(x)[0]
        torch.manual_seed(5)
        b = zero.train()(x)[0]
        assert torch.equal(a, b)


def test_eval_mode_dropouts_are_the_identity_and_zoneout_the_expectation():
    torch.manual_seed(0)
    m = gated.LSTM(I, H, recurrent_dropout=0.5, weight_dropout=0.5).eval()
    ref = gated.LSTM(I, H)
    ref.load_state_dict(m.state_dict())
    x = torch.randn(T, B, I)
    torch.testing.assert_close(m(x)[0], ref(x)[0], rtol=0, atol=0)
    z = _module("gru", "-", zoneout=0.4).eval()
    want, _, _ = formula(z, x, [], training=False)
    torch.testing.assert_close(z(x)[0], want, rtol=1e-12, atol=1e-12)


def test_layer_norm_parameters_have_torch_style_names_and_pickle():
    m = gated.LSTM(I, H, num_layers=2, bidirectional=True, layer_norm=True, zoneout=(0.1, 0.2))
    names = [n for n in m.state_dict() if n.startswith("layer_norm")]
    assert "layer_norm_ih_l0.weight" in names and "layer_norm_hh_l1_reverse.bias" in names
    assert "layer_norm_c_l1.weight" in names and len(names) == 4 * 3 * 2
    assert m.layer_norm_ih_l0.weight.shape == (m.layout.rows,) and m.layer_norm_c_l0.weight.shape == (H,)
    assert "layer_norm=True" in repr(m) and "zoneout=(0.1, 0.2)" in repr(m)
    m.eval()
    x = torch.randn(T, B, I)
    back = pickle.loads(pickle.dumps(m))
    torch.testing.assert_close(back(x)[0], m(x)[0], rtol=0, atol=0)
    assert gated.GRU(I, H, layer_norm=True).layer_norm_ih_l0.weight.shape == (3 * H + H,)  # UR: a refine block
    assert not hasattr(gated.GRU(I, H, layer_norm=True), "layer_norm_c_l0")


def test_ugi_sets_the_bias_added_after_normalisation():
    torch.manual_seed(0)
    m = gated.LSTM(I, H, layer_norm=True, variant="U")
    torch.manual_seed(0)
    ref = gated.LSTM(I, H, variant="U")
    for name, p in ref.named_parameters():  # the same draw: LayerNorm adds no random parameters
        torch.testing.assert_close(getattr(m, name), p, rtol=0, atol=0)
    assert torch.equal(m.layer_norm_ih_l0.weight, torch.ones(4 * H)) and not m.layer_norm_hh_l0.bias.any()


def test_packed_bidirectional_stacked_in_eval_equals_each_sequence_alone():
    torch.manual_seed(0)
    m = gated.GRU(I, H, num_layers=2, bidirectional=True, layer_norm=True, zoneout=0.3, variant="UR").eval()
    seqs = [torch.randn(n, I) for n in (5, 2, 4)]
    packed = torch.nn.utils.rnn.pack_sequence(seqs, enforce_sorted=False)
    out, h = m(packed)
    padded, lengths = torch.nn.utils.rnn.pad_packed_sequence(out)
    for k, s in enumerate(seqs):
        alone, h_alone = m(s.unsqueeze(1))
        torch.testing.assert_close(padded[: len(s), k], alone[:, 0], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(h[:, k], h_alone[:, 0], rtol=1e-12, atol=1e-12)


@pytest.mark.slow
def test_gradcheck_with_every_option():
    torch.manual_seed(0)
    m = gated.LSTM(2, 2, layer_norm=True, zoneout=(0.2, 0.3), recurrent_dropout=0.3, weight_dropout=0.2,
                   backend="reference")
    x = torch.randn(3, 2, 2, requires_grad=True)

    def f(x, *params):
        torch.manual_seed(7)  # the same masks in every evaluation
        out, (h, c) = torch.func.functional_call(m, dict(zip(names, params)), (x,))
        return out, c

    names = [n for n, _ in m.named_parameters()]
    assert torch.autograd.gradcheck(f, (x, *m.parameters()))
    m.eval()
    assert torch.autograd.gradgradcheck(f, (x, *m.parameters()))


def test_weight_dropout_runs_on_the_fused_backend_and_equals_the_reference():
    pytest.importorskip("gated.backends.fused_cpu")
    if gated.backends.fused_cpu.why_not(gated.LSTM(I, H).layout, torch.randn(1, 1, I)) is not None:
        pytest.skip("no fused kernels here")
    x = torch.randn(T, B, I, requires_grad=True)
    results = []
    for backend in ("fused_cpu", "reference"):
        torch.manual_seed(0)
        m = gated.LSTM(I, H, weight_dropout=0.5, backend=backend).train()
        torch.manual_seed(1)
        out, _ = m(x)
        results.append((out, torch.autograd.grad(out.sum(), [x, *m.parameters()])))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-10, atol=1e-10)
    for a, b in zip(results[0][1], results[1][1]):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)


def test_fused_cpu_takes_every_option_with_and_without_projections(caplog):
    """No option keeps a CPU call off the fused kernels (proj_size included): "auto" picks them
    without a fallback line and backend="fused_cpu" runs the call."""
    _fused_ops()
    from gated import backends

    x = torch.randn(T, B, I)
    kw = dict(layer_norm=True, zoneout=0.1, recurrent_dropout=0.2, weight_dropout=0.3)
    for m in (gated.LSTM(I, H, proj_size=3, **kw), gated.GRU(I, H, **kw)):
        for training in (True, False):
            m.train(training)
            with caplog.at_level(logging.WARNING, "gated"):
                backends._logged.clear()
                assert m._resolve_backend("auto", x) is backends.BACKENDS["fused_cpu"]
            assert not [r for r in caplog.records if "using the reference backend" in r.getMessage()]
            m.backend = "fused_cpu"
            m(x)


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(zoneout=-0.1), ValueError, "zoneout should be a probability in \\[0, 1\\)"),
    (dict(zoneout=1.0), ValueError, "zoneout should be a probability"),
    (dict(zoneout="0.1"), TypeError, "zoneout should be a float"),
    (dict(zoneout=(0.1, 0.2, 0.3)), ValueError, "a float or a pair \\(h, c\\)"),
    (dict(recurrent_dropout=1.5), ValueError, "recurrent_dropout should be a probability"),
    (dict(recurrent_dropout=True), TypeError, "recurrent_dropout should be a float"),
    (dict(weight_dropout=-1), ValueError, "weight_dropout should be a probability"),
    (dict(layer_norm=1), TypeError, "layer_norm should be of type bool"),
])
def test_bad_values_get_torch_style_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        gated.LSTM(I, H, **kwargs)


def test_gru_takes_one_zoneout_and_scan_cores_refuse_the_options():
    with pytest.raises(ValueError, match="its one state is h"):
        gated.GRU(I, H, zoneout=(0.1, 0.2))
    with pytest.raises(ValueError, match="scan core 'mingru'"):
        gated.MinGRU(I, H, zoneout=0.1)


@pytest.mark.parametrize("core", ["lstm", "gru"])
def test_a_cell_stepped_over_a_sequence_equals_the_equations_with_fixed_dropout_masks(core, drawn):
    """Cells: LayerNorm and zoneout per step, the recurrent and weight dropout masks drawn once per
    sequence (until reset_dropout_mask) and equal to the sequence module's equations."""
    kw = dict(layer_norm=True, zoneout=0.3, recurrent_dropout=0.4, weight_dropout=0.25, variant="UR")
    torch.manual_seed(0)
    cell = {"lstm": gated.LSTMCell, "gru": gated.GRUCell}[core](I, H, **kw).train()
    with torch.no_grad():
        for name, p in cell.named_parameters():
            if name.startswith("layer_norm"):
                p.add_(torch.randn_like(p) * 0.3)
    seq = CLS[core](I, H, **kw)
    seq.load_state_dict({(n.replace("layer_norm_ih", "layer_norm_ih_l0").replace("layer_norm_hh", "layer_norm_hh_l0")
                          .replace("layer_norm_c", "layer_norm_c_l0") if n.startswith("layer_norm")
                          else n + "_l0"): v for n, v in cell.state_dict().items()})
    x = torch.randn(T, B, I, requires_grad=True)
    for attempt in range(2):  # a second sequence after reset_dropout_mask draws new masks
        drawn.clear()
        cell.reset_dropout_mask()
        state, outs = None, []
        for t in range(T):
            state = cell(x[t], state)
            outs.append(state[0] if core == "lstm" else state)
        n = 2 if core == "lstm" else 1
        w, r = drawn[0], drawn[1]
        per_step = [d for d in drawn[1:] if d.dim() == 3]  # each step: zoneout masks (1, B, H) per state
        zone = [torch.cat(per_step[k::n]) for k in range(n)]
        want, h, c = formula(seq, x, [w, r, *zone], training=True)
        torch.testing.assert_close(torch.stack(outs), want, rtol=1e-10, atol=1e-10)
        g = torch.autograd.grad(torch.stack(outs).sum(), [x, *cell.parameters()])
        e = torch.autograd.grad(want.sum(), [x, *seq.parameters()])
        for a, b in zip(g, e):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)


# ------------------------------------------------------------------ the fused CPU kernels

def _fused_ops():
    from gated.backends import _build, fused_cpu

    if fused_cpu.why_not(gated.LSTM(I, H).layout, torch.randn(1, 1, I)) is not None:
        pytest.skip("no fused kernels here")
    return _build.load()


GEMMS = {0: "auto", 1: "onednn", 3: "addmm", 4: "tiled", 5: "direct"}  # as tests/test_fused.py


def _fused_sets(core):
    pair = core == "lstm"
    return {  # (module options, training)
        "zoneout_h": (dict(zoneout=(0.3, 0.0) if pair else 0.3), True),
        "zoneout_pair": (dict(zoneout=(0.2, 0.4)), True) if pair else None,
        "zoneout_eval": (dict(zoneout=(0.3, 0.15) if pair else 0.35, recurrent_dropout=0.3), False),
        "recurrent_dropout": (dict(recurrent_dropout=0.4), True),
        "all": (dict(zoneout=(0.25, 0.35) if pair else 0.25, recurrent_dropout=0.3, weight_dropout=0.2), True),
    }


def _backend_run(m, x, hx, backend, seed=11):
    """Outputs, final states and the gradients of a random projection of them with respect to the
    input, the initial states and every parameter; the masks from ``seed`` (the same for each backend)."""
    torch.manual_seed(seed)
    out, st = m._run(x, hx, backend=backend)
    states = list(st) if isinstance(st, tuple) else [st]
    data = out.data if hasattr(out, "batch_sizes") else out
    torch.manual_seed(5)
    loss = (data * torch.randn_like(data)).sum() + sum((s * torch.randn_like(s)).sum() for s in states)
    leaves = [x.data if hasattr(x, "batch_sizes") else x, *(hx if isinstance(hx, tuple) else (hx,))]
    names = ["input", "h0", "c0"][: len(leaves)] + [n for n, _ in m.named_parameters()]
    return [data, *states], dict(zip(names, torch.autograd.grad(loss, [*leaves, *m.parameters()])))


# float64 runs the addmm GEMM on every path setting: every option set there; float32 the option
# set with everything on each GEMM path (the paths differ in how the masked h reaches the product)
PATHS = [(torch.float64, 0), (torch.float32, 1), (torch.float32, 3), (torch.float32, 4), (torch.float32, 5)]


@pytest.mark.parametrize("dtype,path", PATHS, ids=["f64", "f32-onednn", "f32-addmm", "f32-tiled", "f32-direct"])
@pytest.mark.parametrize("variant", ["-", "UR"])
@pytest.mark.parametrize("core", ["lstm", "gru", "mgu"])
def test_fused_equals_the_reference_with_zoneout_and_recurrent_dropout(core, variant, dtype, path):
    """Zoneout (h, the (h, c) pair, the eval expectation), recurrent dropout and both with weight
    dropout on the fused kernels equal the reference: outputs, final states, the gradients of the
    input, h0/c0 and every parameter; packed sequences through a bidirectional 2-layer module
    (every kernel buffer starts as NaN)."""
    ops = _fused_ops()
    if path and path not in ops.gemm_kinds():
        pytest.skip(f"{GEMMS[path]} is not available in this torch build")
    tol = {"rtol": 1e-10, "atol": 1e-10} if dtype == torch.float64 else {"rtol": 2e-5, "atol": 2e-5}
    n = 2 if core == "lstm" else 1
    sets = _fused_sets(core)
    if dtype == torch.float32:
        sets = {"all": sets["all"]}
    ops.set_poison(True)
    ops.set_gemm(path)
    try:
        for name, spec in sets.items():
            if spec is None:
                continue
            kw, training = spec
            torch.manual_seed(0)
            m = CLS[core](I, H, variant=variant, num_layers=2, bidirectional=True, dtype=dtype, **kw).train(training)
            with torch.no_grad():
                for p in m.parameters():
                    p.add_(0.2 * torch.randn_like(p))
            seqs = [torch.randn(k, I, dtype=dtype) for k in (3, 7, 1, 5)]  # unsorted lengths
            x = torch.nn.utils.rnn.pack_sequence(seqs, enforce_sorted=False)
            x.data.requires_grad_(True)
            hx = tuple(torch.randn(4, 4, H, dtype=dtype, requires_grad=True) for _ in range(n))
            hx = hx if n == 2 else hx[0]
            assert gated.backends.resolve("auto", m.layout, x.data) is \
                gated.backends.BACKENDS["fused_cpu"], name
            got, got_grads = _backend_run(m, x, hx, "fused_cpu")
            want, want_grads = _backend_run(m, x, hx, "reference")
            for a, b in zip(got, want):
                torch.testing.assert_close(a, b, **tol, msg=lambda s, name=name: f"{name}: {s}")
            for k in want_grads:
                torch.testing.assert_close(got_grads[k], want_grads[k], **tol,
                                           msg=lambda s, name=name, k=k: f"{name}, grad of {k}: {s}")
    finally:
        ops.set_poison(False)
        ops.set_gemm(0)


@pytest.mark.parametrize("core", ["lstm", "gru"])
def test_fused_tiled_team_with_zoneout_and_recurrent_dropout(core):
    """float32 at a width of several tiled groups on 2 threads: each thread masks and zones its own
    units (forward) and masks its units of the backward product."""
    ops = _fused_ops()
    if 4 not in ops.gemm_kinds():
        pytest.skip("no tiled GEMM in this build")
    threads = torch.get_num_threads()
    ops.set_poison(True)
    ops.set_gemm(4)
    torch.set_num_threads(2)
    try:
        torch.manual_seed(0)
        zone = (0.2, 0.3) if core == "lstm" else 0.2
        m = CLS[core](7, 40, variant="UR", dtype=torch.float32, zoneout=zone, recurrent_dropout=0.3).train()
        x = torch.randn(6, 5, 7, dtype=torch.float32, requires_grad=True)
        hx = torch.randn(1, 5, 40, dtype=torch.float32, requires_grad=True)
        hx = (hx, torch.randn(1, 5, 40, dtype=torch.float32, requires_grad=True)) if core == "lstm" else hx
        got, gg = _backend_run(m, x, hx, "fused_cpu")
        want, wg = _backend_run(m, x, hx, "reference")
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, rtol=2e-5, atol=2e-5)
        for k in wg:
            torch.testing.assert_close(gg[k], wg[k], rtol=2e-5, atol=2e-5, msg=lambda s, k=k: f"grad of {k}: {s}")
    finally:
        torch.set_num_threads(threads)
        ops.set_poison(False)
        ops.set_gemm(0)


@pytest.mark.parametrize("core,training", [("lstm", True), ("gru", True), ("mgu", True), ("lstm", False)])
def test_fused_gradcheck_with_fixed_zoneout_and_recurrent_dropout_masks(core, training):
    """torch.autograd.gradcheck of the fused backend's hand-written backward (float64), with fixed
    masks (training) or the eval expectation, called through run_layer with an Extras."""
    _fused_ops()
    from gated.backends import fused_cpu
    from gated.cores import make_layout

    torch.manual_seed(0)
    T_, B_, I_, H_ = 3, 2, 2, 3
    layout = make_layout(core, "UR", H_)
    G = layout.rows
    n = 2 if core == "lstm" else 1
    if training:
        rmask = torch.bernoulli(torch.full((B_, H_), 0.6)) / 0.6
        zone = tuple(torch.bernoulli(torch.full((T_, B_, H_), p)) for p in (0.4, 0.5)[:n])
    else:
        rmask, zone = None, (0.3, 0.45)[:n]
    extras = options.Extras(None, rmask, zone)
    mask = torch.tensor([[True, True], [True, True], [True, False]]).unsqueeze(-1)  # a shorter sequence
    leaves = [torch.randn(T_, B_, I_), torch.randn(G, I_), torch.randn(G, H_), torch.randn(G), torch.randn(G),
              torch.randn(H_), *(torch.randn(B_, H_) for _ in range(n))]
    leaves = [t.requires_grad_() for t in leaves]

    def f(x, w_ih, w_hh, b_ih, b_hh, fb, *state):
        out, st = fused_cpu.run_layer(x, state, w_ih, w_hh, b_ih, b_hh, fb, layout, mask, extras=extras)
        return (out, *st)

    assert torch.autograd.gradcheck(f, leaves)


def test_every_option_takes_both_fast_backends(monkeypatch):
    """LayerNorm, zoneout and recurrent dropout, with proj_size or not, in training and eval: both
    fast backends take the call (tests/test_triton_options.py runs Triton's)."""
    _fused_ops()
    from gated import backends

    x = torch.randn(T, B, I)
    monkeypatch.setitem(backends._CHECKS, "triton", lambda layout, x: None)  # as if Triton could run it
    kw = dict(layer_norm=True, zoneout=0.1, recurrent_dropout=0.2)
    for m in (gated.LSTM(I, H, proj_size=3, **kw), gated.LSTM(I, H, proj_size=3, zoneout=0.1), gated.GRU(I, H, **kw)):
        for training in (True, False):
            m.train(training)
            assert backends.resolve("auto", m.layout, x) is backends.BACKENDS["fused_cpu"]
            for name in ("fused_cpu", "triton"):
                assert backends.resolve(name, m.layout, x) is backends.BACKENDS[name]


def test_opcheck_fused_ops_with_zoneout_and_recurrent_dropout():
    """torch.library.opcheck (schemas, fake implementations) with the option arguments."""
    _fused_ops()
    torch.manual_seed(0)
    T_, B_, I_, H_ = 4, 3, 5, 6
    for core, blocks, zc, refine in ((0, 4, True, True), (1, 4, False, True)):  # MGU's arguments: as the GRU's
        G = blocks * H_
        x, w_ih, w_hh = torch.randn(T_, B_, I_), torch.randn(G, I_), torch.randn(G, H_)
        b_ih, b_hh, fb = torch.randn(G), torch.randn(G), torch.randn(H_)
        h0, c0 = torch.randn(B_, H_), (torch.randn(B_, H_) if core == 0 else None)
        lengths = torch.tensor([4, 2, 3])
        rmask = torch.bernoulli(torch.full((B_, H_), 0.7)) / 0.7
        zh = torch.bernoulli(torch.full((T_, B_, H_), 0.3))
        zcm = torch.bernoulli(torch.full((T_, B_, H_), 0.3)) if zc else None
        # training masks for the LSTM, the eval floats for the GRU; schema and fake implementation
        # (AOT dispatch, seconds per op, is tested without the options in tests/test_autograd.py)
        utils = ("test_schema", "test_faketensor")
        for opt in ((rmask, zh, zcm, 0.0, 0.0),) if core == 0 else ((None, None, None, 0.2, 0.0),):
            args = (x, w_ih, w_hh, b_ih, b_hh, fb if refine else None, h0, c0, lengths, None, core, refine, True, *opt)
            torch.library.opcheck(torch.ops.gated_fused.recurrence_forward.default, args, test_utils=utils)
            out, h_n, c_n, A, aux, _ = torch.ops.gated_fused.recurrence_forward(*args)
            dc = torch.randn(B_, H_) if core == 0 else None
            bwd = (torch.randn_like(out), torch.randn_like(h_n), dc, A, aux, out, h0, c0, w_hh, lengths, None, core,
                   refine, *opt)
            torch.library.opcheck(torch.ops.gated_fused.recurrence_backward.default, bwd, test_utils=utils)


# ------------------------------------------------------------------ LayerNorm on the fused CPU kernels

def _randomise(m, scale=0.3):
    """Every parameter moved off its initial value (the LayerNorms' gains off 1, biases off 0)."""
    with torch.no_grad():
        for p in m.parameters():
            p.add_(scale * torch.randn_like(p))


@pytest.mark.parametrize("dtype,path", PATHS, ids=["f64", "f32-onednn", "f32-addmm", "f32-tiled", "f32-direct"])
@pytest.mark.parametrize("variant", ["-", "UR"])
@pytest.mark.parametrize("core", ["lstm", "gru", "mgu"])
def test_fused_equals_the_reference_with_layer_norm(core, variant, dtype, path):
    """layer_norm=True alone, with zoneout and recurrent and weight dropout (training) and with the
    eval zoneout, on the fused kernels equals the reference: outputs, final states, the gradients
    of the input, h0/c0 and every parameter (the three LayerNorms' gains and biases included,
    randomised); packed sequences through a bidirectional 2-layer module, buffers NaN-poisoned.
    The pinned tiled setting runs the tiled team (the norms on whole rows between its products)."""
    ops = _fused_ops()
    if path and path not in ops.gemm_kinds():
        pytest.skip(f"{GEMMS[path]} is not available in this torch build")
    tol = {"rtol": 1e-10, "atol": 1e-10} if dtype == torch.float64 else {"rtol": 2e-5, "atol": 2e-5}
    n = 2 if core == "lstm" else 1
    pair = n == 2
    sets = {
        "ln": (dict(layer_norm=True), True),
        "ln_all": (dict(layer_norm=True, zoneout=(0.25, 0.35) if pair else 0.25, recurrent_dropout=0.3,
                        weight_dropout=0.2), True),
        "ln_eval": (dict(layer_norm=True, zoneout=(0.3, 0.15) if pair else 0.35, recurrent_dropout=0.3), False),
    }
    if dtype == torch.float32:
        sets = {"ln_all": sets["ln_all"]}
    ops.set_poison(True)
    ops.set_gemm(path)
    try:
        for name, (kw, training) in sets.items():
            torch.manual_seed(0)
            m = CLS[core](I, H, variant=variant, num_layers=2, bidirectional=True, dtype=dtype, **kw).train(training)
            # float32: smaller moves. A recurrent product whose G values spread little is badly
            # conditioned under LayerNorm (rounding amplified by rstd): at 0.3 an MGU-UR's float32
            # reference is 1e-2 off its float64 result (the fused kernels' float32 3e-4)
            _randomise(m, 0.3 if dtype == torch.float64 else 0.1)
            seqs = [torch.randn(k, I, dtype=dtype) for k in (3, 7, 1, 5)]  # unsorted lengths
            x = torch.nn.utils.rnn.pack_sequence(seqs, enforce_sorted=False)
            x.data.requires_grad_(True)
            hx = tuple(torch.randn(4, 4, H, dtype=dtype, requires_grad=True) for _ in range(n))
            hx = hx if n == 2 else hx[0]
            assert gated.backends.resolve("auto", m.layout, x.data) is \
                gated.backends.BACKENDS["fused_cpu"], name
            got, got_grads = _backend_run(m, x, hx, "fused_cpu")
            want, want_grads = _backend_run(m, x, hx, "reference")
            assert sum("layer_norm" in k for k in want_grads) == 8 * (3 if pair else 2)  # 2 layers x 2 directions
            for a, b in zip(got, want):
                torch.testing.assert_close(a, b, **tol, msg=lambda s, name=name: f"{name}: {s}")
            for k in want_grads:
                torch.testing.assert_close(got_grads[k], want_grads[k], **tol,
                                           msg=lambda s, name=name, k=k: f"{name}, grad of {k}: {s}")
    finally:
        ops.set_poison(False)
        ops.set_gemm(0)


@pytest.mark.parametrize("batch", [5, 1])
@pytest.mark.parametrize("core", ["lstm", "gru", "mgu"])
def test_fused_layer_norm_in_the_tiled_team_on_two_threads(core, batch):
    """float32 at a width of several tiled groups on 2 threads with the automatic GEMM choice: a
    LayerNorm call runs the tiled team (its time-loop counter moves: the packed weights at batch 5,
    the unpacked ones at batch 1; each step's product split by units, then the norms and gate
    maths split by batch rows, one thread idle at batch 1) with
    zoneout and recurrent dropout, and equals the reference, also in inference (no saved
    statistics; at T = 300 the input side is copied in chunks of steps)."""
    ops = _fused_ops()
    if 4 not in ops.gemm_kinds():
        pytest.skip("no tiled GEMM in this build")
    threads = torch.get_num_threads()
    ops.set_poison(True)
    torch.set_num_threads(2)
    try:
        torch.manual_seed(0)
        m = CLS[core](7, 40, variant="UR", dtype=torch.float32, layer_norm=True, zoneout=0.2,
                      recurrent_dropout=0.3).train()
        _randomise(m, 0.1)
        x = torch.randn(6, batch, 7, dtype=torch.float32, requires_grad=True)
        hx = torch.randn(1, batch, 40, dtype=torch.float32, requires_grad=True)
        hx = (hx, torch.randn(1, batch, 40, dtype=torch.float32, requires_grad=True)) if core == "lstm" else hx
        before = (ops.tiled_runs(), ops.direct_runs())
        got, gg = _backend_run(m, x, hx, "fused_cpu")
        # batch 1: the team on the unpacked weights (direct_gemm.h); batch 5 (30 rows): packed
        assert (ops.tiled_runs() - before[0], ops.direct_runs() - before[1]) == ((0, 1) if batch == 1 else (1, 0))
        want, wg = _backend_run(m, x, hx, "reference")
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, rtol=2e-5, atol=2e-5)
        for k in wg:
            torch.testing.assert_close(gg[k], wg[k], rtol=2e-5, atol=2e-5, msg=lambda s, k=k: f"grad of {k}: {s}")
        m.eval()
        # inference also at T = 300: the input side is copied into the gate buffer in chunks of
        # 512 / B steps (3 chunks at batch 5)
        long = torch.randn(300, batch, 7, dtype=torch.float32)
        with torch.no_grad():
            for xs in (x, long):
                got = _backend_run_nograd(m, xs, hx, "fused_cpu")
                for a, b in zip(got, _backend_run_nograd(m, xs, hx, "reference")):
                    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    finally:
        torch.set_num_threads(threads)
        ops.set_poison(False)


def _backend_run_nograd(m, x, hx, backend):
    out, st = m._run(x, hx, backend=backend)
    return [out, *(st if isinstance(st, tuple) else (st,))]


@pytest.mark.parametrize("core", ["lstm", "gru", "mgu"])
def test_fused_gradcheck_with_layer_norm(core):
    """torch.autograd.gradcheck of the fused backward with LayerNorm (float64, every LayerNorm
    parameter a leaf, fixed zoneout and recurrent-dropout masks, a shorter sequence), and for the
    LSTM and GRU gradgradcheck (on a few leaves, for time), whose double backward recomputes on the
    reference from the kernels' normalised input side."""
    _fused_ops()
    from gated.backends import fused_cpu
    from gated.cores import make_layout

    torch.manual_seed(0)
    T_, B_, I_, H_ = 3, 2, 2, 3
    layout = make_layout(core, "UR", H_)
    G = layout.rows
    n = 2 if core == "lstm" else 1
    rmask = torch.bernoulli(torch.full((B_, H_), 0.6)) / 0.6
    zone = tuple(torch.bernoulli(torch.full((T_, B_, H_), p)) for p in (0.4, 0.5)[:n])
    mask = torch.tensor([[True, True], [True, True], [True, False]]).unsqueeze(-1)
    leaves = [torch.randn(T_, B_, I_), torch.randn(G, I_), torch.randn(G, H_), torch.randn(G), torch.randn(G),
              torch.randn(H_), *(torch.randn(B_, H_) for _ in range(n)),
              1 + 0.3 * torch.randn(G), 0.3 * torch.randn(G), 1 + 0.3 * torch.randn(G), 0.3 * torch.randn(G)]
    if n == 2:
        leaves += [1 + 0.3 * torch.randn(H_), 0.3 * torch.randn(H_)]
    leaves = [t.requires_grad_() for t in leaves]

    def f(x, w_ih, w_hh, b_ih, b_hh, fb, *rest):
        state, norms = rest[:n], rest[n:]
        ln = ((norms[0], norms[1]), (norms[2], norms[3]), (norms[4], norms[5]) if n == 2 else None)
        extras = options.Extras(ln, rmask, zone)
        out, st = fused_cpu.run_layer(x, state, w_ih, w_hh, b_ih, b_hh, fb, layout, mask, extras=extras)
        return (out, *st)

    assert torch.autograd.gradcheck(f, leaves)
    if core != "mgu":  # x, W_hh, b_hh, the recurrent norm's gain and (LSTM) the cell norm's bias
        _gradgradcheck_some(f, leaves, [0, 2, 4, 8 + n, *([11 + n] if n == 2 else [])])


def _gradgradcheck_some(f, leaves, some):
    """gradgradcheck of ``f(*leaves)`` in the leaves at indices ``some`` (the others held fixed)."""
    def g(*diff):
        args = list(leaves)
        for k, t in zip(some, diff):
            args[k] = t
        return f(*args)

    assert torch.autograd.gradgradcheck(g, [leaves[k] for k in some], fast_mode=True)


def test_opcheck_fused_ops_with_layer_norm():
    """torch.library.opcheck (schemas, fake implementations) with the LayerNorm arguments: the input
    projection as x without w_ih, the flat statistics (forward) and gradients (backward) as the
    last outputs."""
    _fused_ops()
    torch.manual_seed(0)
    T_, B_, H_ = 4, 3, 6
    utils = ("test_schema", "test_faketensor")
    for core, blocks in ((0, 4), (1, 4)):  # LSTM-UR, GRU-UR (with b_hn from b_hh)
        G = blocks * H_
        gi, w_hh, fb = torch.randn(T_, B_, G), torch.randn(G, H_), torch.randn(H_)
        b_hh = torch.randn(G) if core == 1 else None
        h0, c0 = torch.randn(B_, H_), (torch.randn(B_, H_) if core == 0 else None)
        lengths = torch.tensor([4, 2, 3])
        lnw, lnb = torch.randn(G), torch.randn(G)
        lnc = (torch.randn(H_), torch.randn(H_)) if core == 0 else (None, None)
        args = (gi, None, w_hh, None, b_hh, fb, h0, c0, lengths, None, core, True, True, None, None, None, 0.0, 0.0,
                lnw, lnb, *lnc)
        torch.library.opcheck(torch.ops.gated_fused.recurrence_forward.default, args, test_utils=utils)
        out, h_n, c_n, A, aux, stats = torch.ops.gated_fused.recurrence_forward(*args)
        assert stats.numel() == T_ * B_ * (G + 1 + (H_ + 1 if core == 0 else 0))
        dc = torch.randn(B_, H_) if core == 0 else None
        bwd = (torch.randn_like(out), torch.randn_like(h_n), dc, A, aux, out, h0, c0, w_hh, lengths, None, core, True,
               None, None, None, 0.0, 0.0, stats, lnw, *lnc)
        torch.library.opcheck(torch.ops.gated_fused.recurrence_backward.default, bwd, test_utils=utils)


# ------------------------------------------------------------------ projections on the fused CPU kernels

P = 3  # proj_size: h is P wide (zoneout of h and the recurrent-dropout mask too), c is H wide


def _proj_sets():
    """(module options, training): each option alone and all together, in training and in eval."""
    one = {
        "layer_norm": dict(layer_norm=True),
        "zoneout_h": dict(zoneout=(0.3, 0.0)),
        "zoneout_c": dict(zoneout=(0.0, 0.4)),
        "zoneout": dict(zoneout=(0.2, 0.35)),
        "recurrent_dropout": dict(recurrent_dropout=0.4),
        "weight_dropout": dict(weight_dropout=0.3),
        "all": dict(layer_norm=True, zoneout=(0.25, 0.35), recurrent_dropout=0.3, weight_dropout=0.2),
    }
    return {f"{name}-{'train' if training else 'eval'}": (kw, training) for name, kw in one.items()
            for training in (True, False)}


def _proj_module(variant, dtype, kw, training):
    torch.manual_seed(0)
    m = gated.LSTM(I, H, proj_size=P, variant=variant, num_layers=2, bidirectional=True, dtype=dtype, **kw)
    _randomise(m, 0.3 if dtype == torch.float64 else 0.05)  # float32: smaller (see the LayerNorm test above)
    return m.train(training)


def _packed_input(dtype):
    seqs = [torch.randn(k, I, dtype=dtype) for k in (3, 7, 1, 5)]  # unsorted lengths
    x = torch.nn.utils.rnn.pack_sequence(seqs, enforce_sorted=False)
    x.data.requires_grad_(True)
    return x, tuple(torch.randn(4, 4, n, dtype=dtype, requires_grad=True) for n in (P, H))  # h0, c0


@pytest.mark.parametrize("dtype,path", [(torch.float64, 0), (torch.float32, 1), (torch.float32, 3)],
                         ids=["f64", "f32-onednn", "f32-addmm"])
@pytest.mark.parametrize("variant", ["-", "UR"])
def test_fused_equals_the_reference_with_projections_and_options(variant, dtype, path):
    """LSTM with proj_size and each option alone and all together, in training (the same masks:
    the generator seeded alike before each backend's call) and in eval, on the fused kernels equals
    the reference: outputs, final states, the gradients of the input, h0, c0 and every parameter
    (W_hr and the LayerNorms' included); packed sequences of unsorted lengths through a
    bidirectional 2-layer module, every kernel buffer NaN-poisoned. Projections run the per-step
    GEMMs (oneDNN or addmm; float64: addmm). float32: outputs and states to 2e-5, gradients to 5e-5
    of each tensor's largest value (or 1): under LayerNorm both float32 backends are up to 3e-5
    (fused) and 1.5e-4 (reference) of it off the float64 result (measured on these sizes)."""
    ops = _fused_ops()
    if path and path not in ops.gemm_kinds():
        pytest.skip(f"{GEMMS[path]} is not available in this torch build")

    def close(a, b, what, grad=False):
        tol = 1e-10 if dtype == torch.float64 else (5e-5 * max(1.0, b.abs().max().item()) if grad else 2e-5)
        torch.testing.assert_close(a, b, rtol=1e-10 if dtype == torch.float64 else 2e-5, atol=tol,
                                   msg=lambda s: f"{what}: {s}")

    sets = _proj_sets()
    if dtype == torch.float32:
        sets = {k: sets[k] for k in ("all-train", "all-eval")}
    ops.set_poison(True)
    ops.set_gemm(path)
    try:
        for name, (kw, training) in sets.items():
            m = _proj_module(variant, dtype, kw, training)
            x, hx = _packed_input(dtype)
            assert gated.backends.resolve("auto", m.layout, x.data) is \
                gated.backends.BACKENDS["fused_cpu"], name
            got, got_grads = _backend_run(m, x, hx, "fused_cpu")
            want, want_grads = _backend_run(m, x, hx, "reference")
            assert got[0].shape[-1] == 2 * P and sum(k.startswith("weight_hr") for k in want_grads) == 4
            for a, b in zip(got, want):
                close(a, b, name)
            for k in want_grads:
                close(got_grads[k], want_grads[k], f"{name}, grad of {k}", grad=True)
    finally:
        ops.set_poison(False)
        ops.set_gemm(0)


def test_fused_projections_with_options_in_inference():
    """Without grad (the kernels keep two rows of m_t and no statistics) the fused call with
    projections and every option equals the reference, in training (masks) and eval."""
    _fused_ops()
    kw = dict(layer_norm=True, zoneout=(0.25, 0.35), recurrent_dropout=0.3, weight_dropout=0.2)
    for training in (True, False):
        m = _proj_module("UR", torch.float64, kw, training)
        x, hx = _packed_input(torch.float64)
        with torch.no_grad():
            torch.manual_seed(11)
            got = _backend_run_nograd(m, x, hx, "fused_cpu")
            torch.manual_seed(11)
            want = _backend_run_nograd(m, x, hx, "reference")
        for a, b in zip(got, want):
            a, b = (a.data, b.data) if hasattr(a, "batch_sizes") else (a, b)
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("training", [True, False])
def test_fused_gradcheck_with_projections_and_options(training):
    """torch.autograd.gradcheck of the fused backward with projections (float64): W_hr, the three
    LayerNorms' gains and biases, fixed zoneout masks (h: (T, B, P), c: (T, B, H)) and a fixed
    recurrent-dropout mask (B, P) in training, the eval expectation otherwise, a shorter sequence;
    then gradgradcheck on a few leaves (the double backward recomputes on the reference)."""
    _fused_ops()
    from gated.backends import fused_cpu
    from gated.cores import make_layout

    torch.manual_seed(0)
    T_, B_, I_, H_, P_ = 3, 2, 2, 3, 2
    layout = make_layout("lstm", "UR", H_)
    G = layout.rows
    if training:
        rmask = torch.bernoulli(torch.full((B_, P_), 0.6)) / 0.6
        zone = (torch.bernoulli(torch.full((T_, B_, P_), 0.4)), torch.bernoulli(torch.full((T_, B_, H_), 0.5)))
    else:
        rmask, zone = None, (0.3, 0.45)
    mask = torch.tensor([[True, True], [True, True], [True, False]]).unsqueeze(-1)
    leaves = [torch.randn(T_, B_, I_), torch.randn(G, I_), torch.randn(G, P_), torch.randn(G), torch.randn(G),
              torch.randn(H_), torch.randn(P_, H_), torch.randn(B_, P_), torch.randn(B_, H_),
              1 + 0.3 * torch.randn(G), 0.3 * torch.randn(G), 1 + 0.3 * torch.randn(G), 0.3 * torch.randn(G),
              1 + 0.3 * torch.randn(H_), 0.3 * torch.randn(H_)]
    leaves = [t.requires_grad_() for t in leaves]

    def f(x, w_ih, w_hh, b_ih, b_hh, fb, w_hr, h0, c0, *norms):
        ln = ((norms[0], norms[1]), (norms[2], norms[3]), (norms[4], norms[5]))
        extras = options.Extras(ln, rmask, zone)
        out, st = fused_cpu.run_layer(x, (h0, c0), w_ih, w_hh, b_ih, b_hh, fb, layout, mask, w_hr=w_hr, extras=extras)
        return (out, *st)

    assert torch.autograd.gradcheck(f, leaves)
    _gradgradcheck_some(f, leaves, [0, 2, 6, 11, 14])  # x, W_hh, W_hr, the recurrent norm's gain, the cell norm's bias


def test_fused_double_backward_with_projections_equals_the_reference():
    """Second-order gradients through a module with projections and every option (the gradient
    of a gradient's norm) are the reference's: the fused backward's create_graph path recomputes
    on the reference with the call's own masks."""
    _fused_ops()
    kw = dict(layer_norm=True, zoneout=(0.25, 0.35), recurrent_dropout=0.3, weight_dropout=0.2)
    m = _proj_module("UR", torch.float64, kw, True)
    x, hx = _packed_input(torch.float64)
    results = []
    for backend in ("fused_cpu", "reference"):
        torch.manual_seed(11)
        out, st = m._run(x, hx, backend=backend)
        loss = (out.data ** 2).sum() + (st[0] * st[1][..., :P]).sum()
        params = [x.data, *hx, *m.parameters()]
        first = torch.autograd.grad(loss, params, create_graph=True)
        second = torch.autograd.grad(sum((g ** 2).sum() for g in first), params, allow_unused=True)
        results.append(second)
    for a, b in zip(*results):
        if a is None or b is None:
            assert a is None and b is None
            continue
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)


def test_opcheck_fused_ops_with_projections_and_options():
    """torch.library.opcheck (schemas, fake implementations) with projections and every option:
    the last outputs are the flat [statistics | m_t] (forward) and [gradients | dH] (backward), the
    gradients ending with the norms' parameter gradients per batch row."""
    _fused_ops()
    torch.manual_seed(0)
    T_, B_, H_, P_ = 4, 3, 6, 2
    G = 4 * H_
    gi, w_hh, w_hr, fb = torch.randn(T_, B_, G), torch.randn(G, P_), torch.randn(P_, H_), torch.randn(H_)
    h0, c0, lengths = torch.randn(B_, P_), torch.randn(B_, H_), torch.tensor([4, 2, 3])
    rmask = torch.bernoulli(torch.full((B_, P_), 0.7)) / 0.7
    zh, zc = torch.bernoulli(torch.full((T_, B_, P_), 0.3)), torch.bernoulli(torch.full((T_, B_, H_), 0.3))
    lnw, lnb, lncw, lncb = torch.randn(G), torch.randn(G), torch.randn(H_), torch.randn(H_)
    utils = ("test_schema", "test_faketensor")
    args = (gi, None, w_hh, None, None, fb, h0, c0, lengths, w_hr, 0, True, True, rmask, zh, zc, 0.0, 0.0,
            lnw, lnb, lncw, lncb)
    torch.library.opcheck(torch.ops.gated_fused.recurrence_forward.default, args, test_utils=utils)
    out, h_n, c_n, A, aux, saved = torch.ops.gated_fused.recurrence_forward(*args)
    n_stats = T_ * B_ * (G + 1 + H_ + 1)
    assert out.shape == (T_, B_, P_) and saved.numel() == n_stats + T_ * B_ * H_
    bwd = (torch.randn_like(out), torch.randn_like(h_n), torch.randn(B_, H_), A, aux, out, h0, c0, w_hh, lengths,
           w_hr, 0, True, rmask, zh, zc, 0.0, 0.0, saved[:n_stats], lnw, lncw, lncb)
    torch.library.opcheck(torch.ops.gated_fused.recurrence_backward.default, bwd, test_utils=utils)
    grads = torch.ops.gated_fused.recurrence_backward(*bwd)[-1]
    assert grads.numel() == T_ * B_ * (G + H_) + B_ * 2 * (G + H_) + T_ * B_ * P_


@pytest.mark.parametrize("core", ["lstm", "gru", "mgu"])
def test_fused_inference_normalises_the_input_side_in_the_kernel(core, monkeypatch):
    """Without grad the fused kernels compute LN_ih(x W_ih^T) + biases themselves (the input norm's
    weight and its bias with b_ih and b_hh, GRU/MGU's b_hn kept apart): every variant pair, packed
    and bidirectional over two layers, zoneout and recurrent dropout in training and eval, float64
    to 1e-10 against the reference; in float32 through the tiled team at 2 threads, on the unpacked
    weights (batch 1) and the packed ones with the input projection in chunks of steps (T = 40 at
    batch 64: 512 / B = 8 steps a chunk)."""
    ops = _fused_ops()
    from gated.backends import fused_cpu

    calls = []
    real = fused_cpu._forward
    monkeypatch.setattr(fused_cpu, "_forward", lambda *a, **k: calls.append(k.get("ln_in")) or real(*a, **k))
    for variant in ("-", "UR"):
        for training in (True, False):
            torch.manual_seed(0)
            m = CLS[core](I, H, variant=variant, num_layers=2, bidirectional=True, dtype=torch.float64,
                          layer_norm=True, zoneout=0.3, recurrent_dropout=0.25).train(training)
            _randomise(m)
            seqs = [torch.randn(k, I, dtype=torch.float64) for k in (3, 7, 1, 5)]
            x = torch.nn.utils.rnn.pack_sequence(seqs, enforce_sorted=False)
            hx = torch.randn(4, 4, H, dtype=torch.float64)
            hx = (hx, torch.randn(4, 4, H, dtype=torch.float64)) if core == "lstm" else hx
            with torch.no_grad():
                calls.clear()
                torch.manual_seed(3)
                got = _backend_run_nograd(m, x, hx, "fused_cpu")
                assert len(calls) == 4 and all(c is not None and c[0] is not None for c in calls)
                torch.manual_seed(3)
                want = _backend_run_nograd(m, x, hx, "reference")
            for a, b in zip(got, want):
                a, b = (a.data, b.data) if hasattr(a, "batch_sizes") else (a, b)
                torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10, msg=lambda s: f"{variant}, {training}: {s}")
    if 4 not in ops.gemm_kinds():
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    ops.set_poison(True)
    try:
        torch.manual_seed(0)
        m = CLS[core](7, 40, variant="UR", layer_norm=True, zoneout=0.2, dtype=torch.float32).eval()
        _randomise(m, 0.1)
        for batch, runs in ((1, (0, 1)), (64, (1, 0))):  # the unpacked weights (direct_gemm.h), the packed ones
            x = torch.randn(40, batch, 7, dtype=torch.float32)
            with torch.no_grad():
                before = (ops.tiled_runs(), ops.direct_runs())
                got = _backend_run_nograd(m, x, None, "fused_cpu")
                assert (ops.tiled_runs() - before[0], ops.direct_runs() - before[1]) == runs
                want = _backend_run_nograd(m, x, None, "reference")
            for a, b in zip(got, want):
                torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    finally:
        torch.set_num_threads(threads)
        ops.set_poison(False)
