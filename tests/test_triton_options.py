"""The Triton backend with LayerNorm, zoneout and recurrent dropout (gated/options.py) equals the reference.

Conventions of tests/test_triton.py: on CPU tensors through Triton's interpreter
(``TRITON_INTERPRET=1``, set per test), every buffer the backend allocates starts as NaN
(``set_poison``), tiny shapes; ``GATED_TEST_DEVICE=cuda`` runs the same tests on a GPU. The masks
are drawn from torch's default generator: seeding it identically before each backend's call draws
the same masks (as tests/test_options.py's fused tests do).
"""

import importlib.util
import logging
import os
import types

import pytest
import torch
from torch.nn.utils.rnn import pack_sequence

import gated
from gated import backends
from gated.backends import triton_gpu

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None,
                                reason="triton is not installed (pip install -e '.[gpu]')")

DEVICE = os.environ.get("GATED_TEST_DEVICE", "cpu")
PAIRS = [(c, v) for c in ("LSTM", "GRU", "MGU") for v in ("-", "UR")]
TOL = {torch.float64: {"rtol": 1e-10, "atol": 1e-10}, torch.float32: {"rtol": 2e-5, "atol": 2e-5}}
I, H = 4, 5


@pytest.fixture(autouse=True)
def interpreter(monkeypatch):
    if DEVICE == "cpu":
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    triton_gpu.set_poison(True)
    yield
    triton_gpu.set_poison(False)


def _sets(core):
    pair = core == "LSTM"
    return {  # (module options, training)
        "zoneout_h": (dict(zoneout=(0.3, 0.0) if pair else 0.3), True),
        "all": (dict(zoneout=(0.25, 0.35) if pair else 0.25, recurrent_dropout=0.3, weight_dropout=0.2), True),
        "eval": (dict(zoneout=(0.3, 0.15) if pair else 0.35, recurrent_dropout=0.3), False),
    }


def _ln_sets(core):
    """LayerNorm alone (training and eval), and with every other option in training and in eval."""
    more = {name: (dict(kw, layer_norm=True), training) for name, (kw, training) in _sets(core).items()
            if name != "zoneout_h"}
    return {"layer_norm": (dict(layer_norm=True), True), "layer_norm_eval": (dict(layer_norm=True), False), **more}


def _module(core, variant, kw, training, dtype, **more):
    torch.manual_seed(0)
    m = getattr(gated, core)(I, H, variant=variant, dtype=dtype, device=DEVICE, **kw, **more).train(training)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return m


def _hx(m, B, dtype):
    n = m.num_layers * m.num_directions
    hx = tuple(torch.randn(n, B, H, dtype=dtype, device=DEVICE, requires_grad=True)
               for _ in range(2 if m.core == "lstm" else 1))
    return hx if m.core == "lstm" else hx[0]


def _run(m, x, hx, backend, autocast=None, seed=11):
    """Outputs, final states and the gradients of a random projection of them with respect to the
    input, the initial states and every parameter; the masks from ``seed``."""
    torch.manual_seed(seed)
    with torch.autocast(DEVICE, dtype=autocast, enabled=autocast is not None):
        out, st = m._run(x, hx, backend=backend)
    states = list(st) if isinstance(st, tuple) else [st]
    data = out.data if hasattr(out, "batch_sizes") else out
    gen = torch.Generator(device=DEVICE).manual_seed(5)
    vals = [data, *states]
    loss = sum((v.double() * torch.randn(v.shape, generator=gen, dtype=torch.float64, device=DEVICE)).sum()
               for v in vals)
    leaves = [x.data if hasattr(x, "batch_sizes") else x, *(hx if isinstance(hx, tuple) else (hx,))]
    names = ["input", "h0", "c0"][: len(leaves)] + [n for n, _ in m.named_parameters()]
    return vals, dict(zip(names, torch.autograd.grad(loss, [*leaves, *m.parameters()])))


def _compare(m, x, hx, tol, what):
    want, want_grads = _run(m, x, hx, "reference")
    got, got_grads = _run(m, x, hx, "triton")
    for k, (a, b) in enumerate(zip(got, want, strict=True)):
        torch.testing.assert_close(a, b, **tol, msg=lambda s, k=k: f"{what}, value {k}: {s}")
    for k in want_grads:
        torch.testing.assert_close(got_grads[k], want_grads[k], **tol, msg=lambda s, k=k: f"{what}, grad of {k}: {s}")


@pytest.mark.parametrize("core,variant", PAIRS, ids=[f"{c}-{v}" for c, v in PAIRS])
def test_triton_equals_reference_with_zoneout_and_recurrent_dropout(core, variant):
    """Zoneout (h, the LSTM's (h, c), the eval expectation) and recurrent dropout with weight
    dropout, float64 to 1e-10: outputs, final states, the gradients of the input, h0/c0 and every
    parameter; then everything on in float32. "auto" would pick Triton for these options."""
    for name, (kw, training) in _sets(core).items():
        m = _module(core, variant, kw, training, torch.float64)
        x = torch.randn(3, 2, I, dtype=torch.float64, device=DEVICE, requires_grad=True)
        _compare(m, x, _hx(m, 2, torch.float64), TOL[torch.float64], name)
    if variant == "-":  # float32's path is the same for both; float64 checks each exactly
        return
    kw, training = _sets(core)["all"]
    m = _module(core, variant, kw, training, torch.float32)
    x = torch.randn(3, 2, I, device=DEVICE, requires_grad=True)
    _compare(m, x, _hx(m, 2, torch.float32), TOL[torch.float32], "all, float32")


@pytest.mark.parametrize("core,variant", PAIRS, ids=[f"{c}-{v}" for c, v in PAIRS])
def test_triton_equals_reference_with_layer_norm(core, variant):
    """LayerNorm (the input side in torch ops, the recurrent and LSTM cell norms in the kernels),
    alone and with zoneout, recurrent and weight dropout, in training and eval, float64 to 1e-10:
    outputs, final states, the gradients of the input, h0/c0 and every parameter (the norms' gains
    and biases too); then everything on in float32. "auto" would pick Triton for these options."""
    for name, (kw, training) in _ln_sets(core).items():
        m = _module(core, variant, kw, training, torch.float64)
        x = torch.randn(3, 2, I, dtype=torch.float64, device=DEVICE, requires_grad=True)
        _compare(m, x, _hx(m, 2, torch.float64), TOL[torch.float64], name)
        if name == "layer_norm":
            assert {n for n, _ in m.named_parameters() if n.startswith("layer_norm")} >= {
                "layer_norm_ih_l0.weight", "layer_norm_hh_l0.bias"}
    if variant == "-":  # float32's path is the same for both; float64 checks each exactly
        return
    kw, training = _ln_sets(core)["all"]
    m = _module(core, variant, kw, training, torch.float32)
    x = torch.randn(3, 2, I, device=DEVICE, requires_grad=True)
    _compare(m, x, _hx(m, 2, torch.float32), TOL[torch.float32], "layer_norm and all, float32")


@pytest.mark.parametrize("core", ["LSTM", "GRU", "MGU"])
def test_triton_double_backward_with_layer_norm(core):
    """A differentiable gradient (create_graph) recomputes on the reference through fused_cpu's
    _differentiable_backward, with the input side as its input and the norms' weights."""
    kw, training = _ln_sets(core)["all"]
    m = _module(core, "UR", kw, training, torch.float64)
    x = torch.randn(3, 2, I, dtype=torch.float64, device=DEVICE, requires_grad=True)
    grads = {}
    for backend in ("reference", "triton"):
        torch.manual_seed(3)
        out, _ = m._run(x, backend=backend)
        (gx,) = torch.autograd.grad((out ** 2).sum(), x, create_graph=True)
        grads[backend] = torch.autograd.grad(gx.sum(), [x, *m.parameters()], allow_unused=True)
    for name, a, b in zip(["input", *(n for n, _ in m.named_parameters())], grads["triton"], grads["reference"],
                          strict=True):
        if b is None:
            assert a is None or not a.any(), name
        else:
            torch.testing.assert_close(a, b, **TOL[torch.float64], msg=lambda s, name=name: f"{name}: {s}")


@pytest.mark.parametrize("ln", [False, True], ids=["options", "layer_norm"])
@pytest.mark.parametrize("core", ["LSTM", "GRU", "MGU"])
def test_triton_packed_bidirectional_with_zoneout_and_recurrent_dropout(core, ln):
    """Packed sequences (rows past their end hold their state, zoneout or not) through a
    bidirectional module, everything on (LayerNorm too, or not)."""
    kw, training = (_ln_sets if ln else _sets)(core)["all"]
    m = _module(core, "UR", kw, training, torch.float64, bidirectional=True)
    seqs = [torch.randn(n, I, dtype=torch.float64, device=DEVICE) for n in (2, 3, 1)]  # unsorted lengths
    x = pack_sequence(seqs, enforce_sorted=False)
    x.data.requires_grad_(True)
    _compare(m, x, _hx(m, 3, torch.float64), TOL[torch.float64], "packed")


@pytest.mark.parametrize("variant", ["-", "UR"])
def test_triton_projections_with_options(variant):
    """proj_size with zoneout of (h, c), recurrent and weight dropout and LayerNorm: zoneout of h
    and the dropout mask act on the projected h (gated/csrc/projection.h's order), the norms on
    W_hh's product of it and on c; training and eval, float64 to 1e-10, outputs, final states and
    every gradient (W_hr's and the norms' too); then packed sequences through a bidirectional
    module, and float32, with every option on."""
    P = 3
    ln_sets = {f"ln_{name}": v for name, v in _ln_sets("LSTM").items()}
    ln_sets["ln_zoneout_h"] = (dict(_sets("LSTM")["zoneout_h"][0], layer_norm=True), True)
    if variant == "-":  # LayerNorm's part of the kernels does not depend on the refine gate
        ln_sets = {"ln_all": ln_sets["ln_all"]}
    for name, (kw, training) in (_sets("LSTM") | ln_sets).items():
        m = _module("LSTM", variant, kw, training, torch.float64, proj_size=P)
        x = torch.randn(4, 2, I, dtype=torch.float64, device=DEVICE, requires_grad=True)
        hx = (torch.randn(1, 2, P, dtype=torch.float64, device=DEVICE, requires_grad=True),
              torch.randn(1, 2, H, dtype=torch.float64, device=DEVICE, requires_grad=True))
        _compare(m, x, hx, TOL[torch.float64], name)
    for ln in (False, True):
        kw, training = (_ln_sets if ln else _sets)("LSTM")["all"]
        m = _module("LSTM", variant, kw, training, torch.float64, proj_size=P, bidirectional=True)
        seqs = [torch.randn(n, I, dtype=torch.float64, device=DEVICE) for n in (2, 4, 1)]
        x = pack_sequence(seqs, enforce_sorted=False)
        x.data.requires_grad_(True)
        hx = (torch.randn(2, 3, P, dtype=torch.float64, device=DEVICE, requires_grad=True),
              torch.randn(2, 3, H, dtype=torch.float64, device=DEVICE, requires_grad=True))
        _compare(m, x, hx, TOL[torch.float64], f"packed, bidirectional, layer_norm={ln}")
    m = _module("LSTM", variant, kw, training, torch.float32, proj_size=P)
    x = torch.randn(4, 2, I, device=DEVICE, requires_grad=True)
    hx = (torch.randn(1, 2, P, device=DEVICE, requires_grad=True),
          torch.randn(1, 2, H, device=DEVICE, requires_grad=True))
    _compare(m, x, hx, TOL[torch.float32], "layer_norm and all, float32")


def _close_normwise(a, b, what, rel=0.05, atol=1e-3):
    a, b = a.detach().double(), b.detach().double()
    err, size = float((a - b).norm()), float(b.norm())
    assert err <= rel * size + atol, f"{what}: |error| {err:.3g} against |reference| {size:.3g}"


BF16_CASES = [("LSTM", False, 0), ("LSTM", True, 0), ("GRU", False, 0), ("GRU", True, 0), ("LSTM", True, 3)]


@pytest.mark.parametrize("core,ln,proj", BF16_CASES, ids=["LSTM-options", "LSTM-layer_norm", "GRU-options",
                                                          "GRU-layer_norm", "LSTM-layer_norm-proj"])
def test_triton_bfloat16_autocast_with_zoneout_and_recurrent_dropout(core, ln, proj):
    """Under bfloat16 autocast, everything on (LayerNorm too, or not; with proj_size too): within
    bfloat16's rounding of the float32 reference (in norm, as tests/test_triton.py), gradients in
    float32; the masks, the norms' weights and their saved statistics, which backward reads, are
    float32 (the state dtype)."""
    kw, training = (_ln_sets if ln else _sets)(core)["all"]
    m = _module(core, "UR", kw, training, torch.float32, **({"proj_size": proj} if proj else {}))
    x = torch.randn(4, 3, I, device=DEVICE, requires_grad=True)
    hx = _hx(m, 3, torch.float32)
    if proj:
        hx = (torch.randn(1, 3, proj, device=DEVICE, requires_grad=True), hx[1])
    want, want_grads = _run(m, x, hx, "reference")
    got, got_grads = _run(m, x, hx, "triton", autocast=torch.bfloat16)
    assert all(v.dtype == torch.bfloat16 for v in got)
    for k, (a, b) in enumerate(zip(got, want, strict=True)):
        _close_normwise(a, b, f"value {k}")
    # with proj_size 3, recurrent dropout and LayerNorm, h0's gradient (through W_hh's 3 columns and
    # LN_hh's mean-free backward) is 40x smaller than the input's here, and its error is the same
    # bfloat16 rounding as theirs (|error| 0.02 against |grad| 0.08; the float64 and float32 tests
    # check the same path exactly): there the errors are bounded by 1 % of the largest gradient
    scale = max(float(g.norm()) for g in want_grads.values())
    for k in want_grads:
        assert got_grads[k].dtype == torch.float32, k
        _close_normwise(got_grads[k], want_grads[k], f"grad of {k}", atol=0.01 * scale if proj else 1e-3)
    used = [s for s in triton_gpu._workspaces if s.cd == torch.bfloat16 and s.rdrop and s.zh == 1 and s.ln == ln]
    assert used and all(triton_gpu._workspaces[s].zp.dtype == torch.float32 for s in used)
    if ln:
        assert all(triton_gpu._workspaces[s].lnw.dtype == torch.float32 for s in used)


def test_triton_ops_opcheck_with_layer_norm():
    """torch.library.opcheck of the operators with LayerNorm's arguments (the input side as ``x``,
    no ``w_ih``): the saved statistics are in the state dtype (float32 under bfloat16), the raw
    product's gradients (and the LSTM cell norm's dy) in the flat ``dH``."""
    T, B, H_ = 3, 2, 4
    f64, bf16, f32 = torch.float64, torch.bfloat16, torch.float32
    # LSTM (cell norm, lengths); GRU; LSTM with proj_size 3 (m_t after the statistics, dL/dh~ after dH's parts)
    for core, blocks, refine, cd, P in ((0, 4, True, f64, 0), (1, 3, False, bf16, 0), (0, 4, False, bf16, 3)):
        G, sd, W = blocks * H_, (f32 if cd == bf16 else cd), P or H_
        rnd = lambda *s, dtype=cd: torch.randn(*s, dtype=dtype, device=DEVICE)  # noqa: E731
        h0, c0 = rnd(B, W, dtype=sd), (rnd(B, H_, dtype=sd) if core == 0 else None)
        lengths = torch.tensor([3, 2], device=DEVICE) if core == 0 else None
        b_hh = None if core == 0 else rnd(G, dtype=sd)
        cell = (rnd(H_, dtype=sd), rnd(H_, dtype=sd)) if core == 0 else (None, None)
        ln = (rnd(G, dtype=sd), rnd(G, dtype=sd), *cell)
        w_hr = rnd(P, H_) if P else None
        args = (rnd(T, B, G), None, rnd(G, W), None, b_hh, None, h0, c0, lengths, w_hr, core, refine, True,
                None, None, None, 0.0, 0.0, *ln)
        torch.library.opcheck(torch.ops.gated_triton.recurrence_forward.default, args)
        out, h_n, c_n, A, aux, ls, hf = torch.ops.gated_triton.recurrence_forward(*args)
        n_m = T * B * H_ if P else 0
        assert ls.dtype == sd and ls.numel() == T * B * (G + 1) + (T * B * (H_ + 1) if core == 0 else 0) + n_m
        dc = rnd(B, H_, dtype=sd) if core == 0 else None
        bwd = (torch.randn_like(out), torch.randn_like(h_n), dc, A, aux, hf, out, h0, c0, args[2], lengths, w_hr,
               core, refine, None, None, None, 0.0, 0.0, ls, ln[0], ln[2], ln[3])
        torch.library.opcheck(torch.ops.gated_triton.recurrence_backward.default, bwd)
        dH = torch.ops.gated_triton.recurrence_backward(*bwd)[4]
        assert dH.dtype == cd and dH.numel() == T * B * (G + (H_ if core == 0 else 0) + P)


def test_triton_options_graph_replay_takes_new_masks(monkeypatch):
    """The CUDA-graph property with options (as test_triton_loop_reads_only_its_workspace_and_table):
    a replayed loop reads each call's masks through the table; eval's p comes from the workspace."""
    def fake_capture(ws):
        ptrs = {k: t.data_ptr() for k, t in vars(ws).items() if isinstance(t, torch.Tensor)}

        def replay():
            assert ptrs == {k: t.data_ptr() for k, t in vars(ws).items() if isinstance(t, torch.Tensor)}
            ws.loop()

        return replay

    if DEVICE == "cpu":
        real_init = triton_gpu._Workspace.__init__

        def init(self, spec):
            real_init(self, spec)
            self.graphs = True

        monkeypatch.setattr(triton_gpu._Workspace, "__init__", init)
        monkeypatch.setattr(triton_gpu, "_capture", fake_capture)
    monkeypatch.setenv("GATED_CUDA_GRAPHS", "1")
    triton_gpu.empty_cache()
    kw, training = _sets("LSTM")["all"]
    m = _module("LSTM", "-", kw, training, torch.float64)
    for k in range(3):  # launches, capture, replay: a new draw of every mask each time
        x = torch.randn(2, 2, I, dtype=torch.float64, device=DEVICE, requires_grad=True)
        _compare(m, x, _hx(m, 2, torch.float64), TOL[torch.float64], f"call {k}")
    assert sum(ws.graph is not None for ws in triton_gpu._workspaces.values()) == 2
    triton_gpu.empty_cache()


def test_every_option_is_taken(monkeypatch, caplog):
    """LayerNorm, zoneout and recurrent dropout, with proj_size or not, run on Triton:
    backend="triton" takes them, and "auto" on CUDA tensors picks Triton with no fallback line."""
    monkeypatch.setitem(backends._CHECKS, "triton", lambda layout, x: None)  # as if on a GPU
    x = torch.randn(2, 1, I)
    cuda_like = types.SimpleNamespace(device=torch.device("cuda"))  # resolve reads only the device
    for m in (gated.GRU(I, H, layer_norm=True, zoneout=0.1, recurrent_dropout=0.2),
              gated.LSTM(I, H, proj_size=3, zoneout=0.1, recurrent_dropout=0.2),
              gated.LSTM(I, H, proj_size=3, layer_norm=True, zoneout=0.1, recurrent_dropout=0.2)):
        for training in (True, False):
            m.train(training)
            assert backends.resolve("triton", m.layout, x) is backends.BACKENDS["triton"]
            with caplog.at_level(logging.WARNING, "gated"):
                backends._logged.clear()
                assert backends.resolve("auto", m.layout, cuda_like) is backends.BACKENDS["triton"]
            assert not [r for r in caplog.records if r.name == "gated"]
