"""The Triton backend equals the reference backend: outputs, final states, every gradient.

CI has no GPU: these tests run the backend on CPU tensors through Triton's interpreter
(``TRITON_INTERPRET=1``, set per test). The kernels call only Triton builtins, so the interpreter
runs them whatever imported triton first (torch.compile does, in other test files). The
interpreter is slow (about 50 ms a launch), so the sizes are small: T <= 4, H <= 8 (T = 12,
H = 16 for the saturated gates in bfloat16). With ``GATED_TEST_DEVICE=cuda``
(scripts/gpu_check.sh) the same tests run on a GPU with the compiled kernels and real CUDA
graphs. Every buffer the backend allocates starts as NaN (``set_poison``),
so a value the kernels forget to write shows up as a mismatch. The kernels are also compiled for
the real target (sm_90) without a GPU (Triton's compiler and its bundled ptxas), with the
arguments the backend launches them with. Skipped when triton is not
installed (``pip install -e ".[gpu]"``; the ``test`` extra includes it).
"""

import collections
import contextlib
import importlib.util
import os
import subprocess
import sys
import types

import pytest
import torch
from torch.nn.utils.rnn import pack_sequence

import gated
from gated import backends
from gated.backends import triton_gpu

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None,
                                reason="triton is not installed (pip install -e '.[gpu]')")
if importlib.util.find_spec("triton") is not None:  # imported at collection, outside the fixture's
    import triton.language  # noqa: F401  TRITON_INTERPRET=1: compiled library functions (the sm_90 tests)

DEVICE = os.environ.get("GATED_TEST_DEVICE", "cpu")
CORES = ("LSTM", "GRU", "MGU")
FUSED = ("-", "C", "U", "R", "UR")  # the variants with kernels (the fused CPU backend's)
ALL = [(c, v) for c in CORES for v in gated.CORES[c.lower()].variants if v in FUSED]
PAIRS = [(c, v) for c in CORES for v in ("-", "UR")]  # one plain and one refine kernel per core
TOL = {torch.float64: {"rtol": 1e-10, "atol": 1e-10}, torch.float32: {"rtol": 2e-5, "atol": 2e-5}}


@pytest.fixture(autouse=True)
def interpreter(monkeypatch):
    if DEVICE == "cpu":
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    triton_gpu.set_poison(True)
    yield
    triton_gpu.set_poison(False)


def _module(core, variant, dtype=torch.float64, I=5, H=6, **kw):
    m = getattr(gated, core)(I, H, variant=variant, dtype=dtype, device=DEVICE, **kw)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return m


def _hx(m, B, dtype=torch.float64):
    n = m.num_layers * m.num_directions
    h = torch.randn(n, B, m.proj_size or m.hidden_size, dtype=dtype, device=DEVICE, requires_grad=True)
    if m.core != "lstm":
        return h
    return h, torch.randn(n, B, m.hidden_size, dtype=dtype, device=DEVICE, requires_grad=True)


def _data(t):
    return t.data if hasattr(t, "batch_sizes") else t


def _run(m, x, hx, backend, autocast=None):
    """Outputs, final states and the gradients of every input and parameter of a random loss."""
    leaves = [_data(x), *(hx if isinstance(hx, tuple) else (hx,))]
    with torch.autocast(DEVICE, dtype=autocast, enabled=autocast is not None):
        out, st = m._run(x, hx, backend=backend)
    states = list(st) if isinstance(st, tuple) else [st]
    vals = [_data(out), *states]
    gen = torch.Generator(device=DEVICE).manual_seed(5)
    loss = sum((v.double() * torch.randn(v.shape, generator=gen, dtype=torch.float64, device=DEVICE)).sum()
               for v in vals)
    grads = torch.autograd.grad(loss, [*leaves, *m.parameters()])
    return vals, grads


def _names(m, hx):
    return ["input", "h0", "c0"][: 1 + (len(hx) if isinstance(hx, tuple) else 1)] + [n for n, _ in m.named_parameters()]


def _compare(m, x, hx, tol, autocast=None, ref_autocast=None):
    ref_vals, ref_grads = _run(m, x, hx, "reference", ref_autocast)
    vals, grads = _run(m, x, hx, "triton", autocast)
    for k, (a, b) in enumerate(zip(vals, ref_vals, strict=True)):
        torch.testing.assert_close(a.double(), b.double(), **tol, msg=lambda s, k=k: f"value {k}: {s}")
    for name, a, b in zip(_names(m, hx), grads, ref_grads, strict=True):
        assert a.dtype == b.dtype, name
        torch.testing.assert_close(a.double(), b.double(), **tol, msg=lambda s, name=name: f"grad of {name}: {s}")
    return vals


def test_the_backend_covers_what_the_fused_cpu_backend_covers():
    assert len(ALL) == 15
    x = torch.zeros(1, device=DEVICE)
    for c in CORES:
        for v in gated.CORES[c.lower()].variants:
            layout = gated.cores.make_layout(c.lower(), v, 4)
            assert (triton_gpu.why_not(layout, x) is None) == (v in FUSED), (c, v)
            fused = gated.backends.fused_cpu.why_not(layout, torch.zeros(1))
            assert fused is None or "variant" not in fused or v not in FUSED


@pytest.mark.parametrize("core,variant", ALL, ids=[f"{c}-{v}" for c, v in ALL])
def test_triton_equals_reference(core, variant):
    m = _module(core, variant)
    x = torch.randn(4, 3, 5, dtype=torch.float64, device=DEVICE, requires_grad=True)
    _compare(m, x, _hx(m, 3), TOL[torch.float64])


@pytest.mark.parametrize("core,variant", PAIRS, ids=[f"{c}-{v}" for c, v in PAIRS])
def test_triton_packed_two_layers_bidirectional(core, variant):
    m = _module(core, variant, num_layers=2, bidirectional=True, H=4)
    seqs = [torch.randn(n, 5, dtype=torch.float64, device=DEVICE) for n in (2, 3, 1)]  # unsorted lengths
    x = pack_sequence(seqs, enforce_sorted=False)
    x.data.requires_grad_(True)
    _compare(m, x, _hx(m, 3), TOL[torch.float64])


@pytest.mark.parametrize("core", CORES)
def test_run_layer_contract_with_a_mask(core):
    """run_layer itself, as the reference defines it: past each sequence's end the state is held
    and the output is zero (the modules drop those positions, so only this call sees them), and
    the gradient of a masked output flows nowhere."""
    m = _module(core, "UR", proj_size=3 if core == "LSTM" else 0)
    x = torch.randn(3, 3, 5, dtype=torch.float64, device=DEVICE, requires_grad=True)
    mask = (torch.arange(3, device=DEVICE)[:, None] < torch.tensor([3, 1, 2], device=DEVICE)).unsqueeze(-1)
    hx = _hx(m, 3)
    state = tuple(s[0] for s in (hx if isinstance(hx, tuple) else (hx,)))
    args = (*m._params("_l0"), m.layout, mask)
    results = []
    for run in (backends.reference.run_layer, triton_gpu.run_layer):
        out, final = run(x, state, *args, w_hr=getattr(m, "weight_hr_l0", None))
        gen = torch.Generator(device=DEVICE).manual_seed(3)
        loss = sum((v * torch.randn(v.shape, generator=gen, dtype=v.dtype, device=DEVICE)).sum() for v in (out, *final))
        results.append([out, *final, *torch.autograd.grad(loss, [x, *state, *m.parameters()], allow_unused=True)])
    assert (results[1][0][~mask.expand_as(results[1][0])] == 0).all()
    for a, b in zip(*results, strict=True):
        if b is None:
            assert a is None or not a.any()
        else:
            torch.testing.assert_close(a, b, **TOL[torch.float64])


@pytest.mark.parametrize("variant", ["-", "UR"])
def test_triton_projections(variant):
    m = _module("LSTM", variant, H=6, proj_size=3, num_layers=2, bidirectional=True)
    seqs = [torch.randn(n, 5, dtype=torch.float64, device=DEVICE) for n in (3, 1)]
    x = pack_sequence(seqs, enforce_sorted=False)
    x.data.requires_grad_(True)
    _compare(m, x, _hx(m, 2), TOL[torch.float64])
    m = _module("LSTM", variant, H=6, proj_size=3)
    x = torch.randn(3, 2, 5, dtype=torch.float64, device=DEVICE, requires_grad=True)  # no mask
    _compare(m, x, _hx(m, 2), TOL[torch.float64])


@pytest.mark.parametrize("core", CORES)
def test_triton_float32_and_inference(core):
    m = _module(core, "UR", dtype=torch.float32, num_layers=2, batch_first=True)
    x = torch.randn(3, 4, 5, device=DEVICE, requires_grad=True)  # batch_first: a non-contiguous time-major view
    _compare(m, x, _hx(m, 3, torch.float32), TOL[torch.float32])
    with torch.no_grad():  # the inference path keeps no activations
        out, st = m._run(x, backend="triton")
        ref, ref_st = m._run(x, backend="reference")
    torch.testing.assert_close(out, ref, **TOL[torch.float32])
    for a, b in zip(st if isinstance(st, tuple) else (st,), ref_st if isinstance(ref_st, tuple) else (ref_st,)):
        torch.testing.assert_close(a, b, **TOL[torch.float32])


LOW = [torch.bfloat16] if DEVICE == "cpu" else [torch.bfloat16, torch.float16]


def _close_normwise(a, b, what, rel=0.05):
    """Low precision against float32: the error's norm within ``rel`` of the reference's (measured:
    at most 0.02 in bfloat16; elementwise checks fail on sums of rounded terms that nearly cancel)."""
    a, b = a.detach().double(), b.detach().double()
    err, size = float((a - b).norm()), float(b.norm())
    assert err <= rel * size + 1e-3, f"{what}: |error| {err:.3g} against |reference| {size:.3g}"


@pytest.mark.parametrize("dtype", LOW, ids=lambda d: str(d).split(".")[-1])
@pytest.mark.parametrize("core", CORES)
def test_triton_autocast_keeps_float32_state(core, dtype):
    """Under autocast the GEMMs run in bfloat16/float16, the gate maths and the state in float32;
    outputs and states come back in autocast's dtype (as torch.nn's), weight gradients in float32.
    Against the float32 reference: within the low-precision dtype's rounding."""
    m = _module(core, "UR", dtype=torch.float32, num_layers=2, H=8)
    seqs = [torch.randn(n, 5, device=DEVICE) for n in (3, 2, 3)]
    x = pack_sequence(seqs, enforce_sorted=False)
    x.data.requires_grad_(True)
    hx = _hx(m, 3, torch.float32)
    ref_vals, ref_grads = _run(m, x, hx, "reference")
    vals, grads = _run(m, x, hx, "triton", autocast=dtype)
    assert all(v.dtype == dtype for v in vals)
    try:
        with torch.autocast(DEVICE, dtype=dtype):
            nn_dtypes = {t.dtype for t in torch.nn.LSTM(5, 4).to(DEVICE)(torch.randn(2, 1, 5, device=DEVICE))[1]}
    except RuntimeError as e:  # oneDNN has no low-precision LSTM on this CPU (an AVX2-only one): torch.nn raises
        if "primitive descriptor" not in str(e):
            raise
    else:
        assert nn_dtypes == {dtype}  # torch.nn's states too
    for k, (a, b) in enumerate(zip(vals, ref_vals, strict=True)):
        _close_normwise(a, b, f"value {k}")
    for name, a, b in zip(_names(m, hx), grads, ref_grads, strict=True):
        assert a.dtype == b.dtype == torch.float32, name
        _close_normwise(a, b, f"grad of {name}")
    used = [ws for spec, ws in triton_gpu._workspaces.items() if spec.cd == dtype]
    assert used and all((ws.ring if not ws.spec.backward else ws.dc).dtype == torch.float32 for ws in used)


def test_triton_low_precision_parameters():
    """A module in bfloat16 (no autocast): bfloat16 outputs and gradients, float32 state inside."""
    m = _module("LSTM", "UR", dtype=torch.float32, H=8)
    x = torch.randn(4, 2, 5, device=DEVICE, requires_grad=True)
    hx = _hx(m, 2, torch.float32)
    ref_vals, ref_grads = _run(m, x, hx, "reference")
    mb = _module("LSTM", "UR", dtype=torch.bfloat16, H=8)
    mb.load_state_dict(m.state_dict())
    xb = x.detach().bfloat16().requires_grad_()
    hb = tuple(h.detach().bfloat16().requires_grad_() for h in hx)
    vals, grads = _run(mb, xb, hb, "triton")
    for k, (a, b) in enumerate(zip([*vals, *grads], [*ref_vals, *ref_grads], strict=True)):
        assert a.dtype == torch.bfloat16
        _close_normwise(a, b, f"value or gradient {k}")


def test_triton_double_backward_recomputes_on_the_reference():
    m = _module("GRU", "UR")
    x = torch.randn(3, 2, 5, dtype=torch.float64, device=DEVICE, requires_grad=True)
    grads = {}
    for backend in ("reference", "triton"):
        out, _ = m._run(x, backend=backend)
        (gx,) = torch.autograd.grad((out ** 2).sum(), x, create_graph=True)
        grads[backend] = torch.autograd.grad(gx.sum(), [x, *m.parameters()])
    for a, b in zip(grads["triton"], grads["reference"], strict=True):
        torch.testing.assert_close(a, b, **TOL[torch.float64])


def test_triton_ops_opcheck():
    """torch.library.opcheck: schemas, fake implementations and AOT dispatch of the operators; in
    bfloat16 too, where what backward reads is in float32 (the state dtype)."""
    T, B, I, H = 3, 2, 3, 4
    f64, bf16, f32 = torch.float64, torch.bfloat16, torch.float32
    for core, blocks, refine, cd in ((0, 4, True, f64), (1, 3, False, f64), (0, 4, True, bf16), (1, 4, True, bf16)):
        G, sd = blocks * H, (f32 if cd == bf16 else cd)
        rnd = lambda *s, dtype=cd: torch.randn(*s, dtype=dtype, device=DEVICE)  # noqa: E731
        x, w_ih, w_hh = rnd(T, B, I), rnd(G, I), rnd(G, H)
        h0, c0 = rnd(B, H, dtype=sd), (rnd(B, H, dtype=sd) if core == 0 else None)
        lengths = torch.tensor([3, 2], device=DEVICE) if core == 0 else None  # masked, and not
        fb = rnd(H, dtype=sd) if refine else None
        args = (x, w_ih, w_hh, rnd(G, dtype=sd), rnd(G, dtype=sd), fb, h0, c0, lengths, None, core, refine, True)
        torch.library.opcheck(torch.ops.gated_triton.recurrence_forward.default, args)
        out, h_n, c_n, A, aux, _, hf = torch.ops.gated_triton.recurrence_forward(*args)
        assert A.dtype == aux.dtype == sd and (hf.dtype == sd and hf.shape == (T, B, H)) == (core == 1 and cd == bf16)
        dc = rnd(B, H, dtype=sd) if core == 0 else None
        bwd = (torch.randn_like(out), torch.randn_like(h_n), dc, A, aux, hf, out, h0, c0, w_hh, lengths, None, core,
               refine)
        torch.library.opcheck(torch.ops.gated_triton.recurrence_backward.default, bwd)


def test_compile_keeps_the_triton_op_opaque():
    """Under torch.compile each layer is one opaque operator (the fake implementations give the
    shapes), as on the fused CPU backend: one graph for several sequence lengths, no per-step ops,
    and the compiled forward and backward equal the reference's."""
    torch._dynamo.reset()
    graphs = []

    def capture(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    m = _module("LSTM", "UR", dtype=torch.float32, num_layers=2, H=4)
    m.backend = "triton"
    compiled = torch.compile(m, backend=capture, fullgraph=True, dynamic=True)
    for steps in (3, 4):  # sizes 0 and 1 are specialised by dynamo (and T - 1 = 1 in the backward)
        x = torch.randn(steps, 2, 5, device=DEVICE, requires_grad=True)
        out, (h, c) = compiled(x)
        (gx,) = torch.autograd.grad(out.sum() + c.sum(), x)
        ref, (_, rc) = m._run(x, backend="reference")
        (rgx,) = torch.autograd.grad(ref.sum() + rc.sum(), x)
        for a, b in ((out, ref), (c, rc), (gx, rgx)):
            torch.testing.assert_close(a, b, **TOL[torch.float32])
    assert len(graphs) == 1, f"{len(graphs)} graphs for two sequence lengths"
    targets = [str(n.target) for g in graphs[0].modules() for n in g.graph.nodes if n.op == "call_function"]
    assert targets.count("gated_triton.recurrence_forward") == 2  # one per layer
    assert targets.count("gated_triton.recurrence_backward") == 2
    assert not any(a in t for t in targets for a in ("sigmoid", "tanh", "linear")), targets
    torch._dynamo.reset()


def _allow_graphs(monkeypatch):
    """Let CPU workspaces take the CUDA-graph path (their kernels stay interpreted)."""
    real_init = triton_gpu._Workspace.__init__

    def init(self, spec):
        real_init(self, spec)
        self.graphs = True

    monkeypatch.setattr(triton_gpu._Workspace, "__init__", init)
    monkeypatch.setenv("GATED_CUDA_GRAPHS", "1")  # opt-in (off by default until run on a GPU)


def test_triton_loop_reads_only_its_workspace_and_table(monkeypatch):
    """The CUDA-graph logic, without a GPU: a fake capture whose replay reruns the loop, as a
    graph would replay its launches (same arguments, new table and workspace contents). The first
    call of a shape runs the launches, the second captures, later ones replay; results equal the
    reference's at every call; the workspace's buffers never move; a new shape gets its own."""
    captured = []

    def fake_capture(ws):
        ptrs = {k: t.data_ptr() for k, t in vars(ws).items() if isinstance(t, torch.Tensor)}
        captured.append(ws.spec)

        def replay():
            assert ptrs == {k: t.data_ptr() for k, t in vars(ws).items() if isinstance(t, torch.Tensor)}
            ws.loop()

        return replay

    if DEVICE == "cpu":  # on a GPU the real capture runs
        monkeypatch.setattr(triton_gpu, "_capture", fake_capture)
        _allow_graphs(monkeypatch)
    monkeypatch.setenv("GATED_CUDA_GRAPHS", "1")
    triton_gpu.empty_cache()
    m = _module("LSTM", "UR", num_layers=1)
    for k, T in enumerate((3, 3, 3, 2)):
        x = torch.randn(T, 2, 5, dtype=torch.float64, device=DEVICE, requires_grad=True)
        _compare(m, x, _hx(m, 2), TOL[torch.float64])
        graphs = sum(ws.graph is not None for ws in triton_gpu._workspaces.values())
        assert graphs == [0, 2, 2, 2][k], (k, graphs)  # forward and backward loops of T = 3
    if DEVICE == "cpu":
        assert len(captured) == 2 and all(s.T == 3 for s in captured)
    triton_gpu.empty_cache()


def test_triton_graph_capture_failure_falls_back_once(monkeypatch, caplog):
    def broken(ws):
        raise RuntimeError("capture not supported here")

    monkeypatch.setattr(triton_gpu, "_capture", broken)
    monkeypatch.setattr(triton_gpu, "_said", set())
    _allow_graphs(monkeypatch)
    triton_gpu.empty_cache()
    m = _module("GRU", "-")
    x = torch.randn(2, 2, 5, dtype=torch.float64, device=DEVICE)
    with caplog.at_level("WARNING", logger="gated"), torch.no_grad():
        outs = [m._run(x, backend="triton")[0] for _ in range(3)]
    ref = m._run(x, backend="reference")[0]
    for out in outs:
        torch.testing.assert_close(out, ref, **TOL[torch.float64])
    msgs = [r.getMessage() for r in caplog.records if "CUDA graph" in r.getMessage()]
    assert len(msgs) == 1 and "capture not supported here" in msgs[0]
    triton_gpu.empty_cache()


def test_auto_picks_triton_for_cuda_tensors_only(monkeypatch, caplog):
    layout = gated.LSTM(3, 4, variant="UR").layout
    cuda_x = types.SimpleNamespace(device=torch.device("cuda"), dtype=torch.float32)  # routing only
    cpu = backends.resolve("auto", layout, torch.zeros(2, 1, 3))  # TRITON_INTERPRET=1 does not change the CPU's
    assert cpu is not triton_gpu.run_layer
    if DEVICE == "cpu":  # the interpreter cannot run CUDA tensors (it copies them to the host)
        assert "under TRITON_INTERPRET=1" in triton_gpu.why_not(layout, cuda_x)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert backends.resolve("auto", layout, cuda_x) is triton_gpu.run_layer
    backends._logged.clear()
    caplog.clear()  # only the CUDA call's lines (the CPU call logs one under GATED_DISABLE_FUSED=1, gpu_check.sh)
    with caplog.at_level("WARNING", logger="gated"):
        om = gated.LSTM(3, 4, variant="OM").layout
        assert backends.resolve("auto", om, cuda_x) is backends.BACKENDS["reference"]
        backends.resolve("auto", om, cuda_x)
    msgs = [r.getMessage() for r in caplog.records if "reference backend" in r.getMessage()]
    assert len(msgs) == 1 and "no Triton kernel for variant 'OM'" in msgs[0]
    with pytest.raises(RuntimeError, match="backend 'triton' cannot run this call: CPU tensors"):
        gated.LSTM(3, 4, backend="triton")(torch.randn(2, 1, 3))
    with pytest.raises(ValueError, match="records no gates"):
        triton_gpu.run_layer(torch.zeros(1, 1, 3), (torch.zeros(1, 4),) * 2, *([None] * 5), layout, record=[])


def test_import_without_triton_falls_back_with_one_reason(tmp_path):
    """Without triton: ``import gated`` works, CPU calls are untouched, and a CUDA call's "auto"
    takes the reference backend with one logged reason (a fake CUDA tensor stands in)."""
    code = (
        "import sys, types, logging\n"
        "sys.modules['triton'] = None  # import triton raises ImportError\n"
        "import torch, gated\n"
        "from gated import backends\n"
        "from gated.backends import triton_gpu\n"
        "m = gated.LSTM(3, 4)\n"
        "x = torch.randn(5, 2, 3)\n"
        "assert torch.equal(m(x)[0], m._run(x, backend='auto')[0])\n"
        "cuda_x = types.SimpleNamespace(device=torch.device('cuda'), dtype=torch.float32)\n"
        "for _ in range(2):\n"
        "    assert backends.resolve('auto', m.layout, cuda_x) is backends.BACKENDS['reference']\n"
        "print(triton_gpu.why_not(m.layout, cuda_x))\n"
    )
    env = {**os.environ, "GATED_DISABLE_FUSED": "1"}
    env.pop("TRITON_INTERPRET", None)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "triton could not be imported (ModuleNotFoundError" in proc.stdout and "gated[gpu]" in proc.stdout
    assert proc.stderr.count("no Triton kernel for triton could not be imported") == 1, proc.stderr


def test_kernels_call_no_jitted_library_function():
    """The interpreter patches only Triton's builtins once triton is imported; a jitted library
    function (tl.zeros, tl.sigmoid, ...) fails in it when something imported triton before
    TRITON_INTERPRET was set, as torch.compile does earlier in the suite."""
    import inspect
    import re

    import triton.language as tl

    from gated.backends import _triton_kernels

    used = set(re.findall(r"\btl\.([A-Za-z_0-9]+)\s*\(", inspect.getsource(_triton_kernels)))
    calls = {name for name in used if not isinstance(getattr(tl, name, None), type)}  # not tl.constexpr(...)
    jitted = sorted(name for name in calls if not getattr(getattr(tl, name, None), "__triton_builtin__", False))
    assert used and not jitted, f"jitted tl functions in the kernels: {jitted}"


SATURATED = ["LSTM", "GRU"]


def _saturated(core, H=16):
    """A UR layer whose forget gates all sit at about 0.999 (``forget_bias`` = logit(0.999), small
    weights and biases): the long-memory units that UR exists to create. In bfloat16 every value
    in (1 - 2^-9, 1] rounds to 1.0, so 1 - f, and with it f (1 - f) and the refine terms, would be
    lost. The weights are bfloat16 values, so that a bfloat16 copy of the module is the same one."""
    torch.manual_seed(0)
    m = getattr(gated, core)(5, H, variant="UR", device=DEVICE)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(0.05 * torch.randn_like(p))
        m.forget_bias_l0.fill_(6.9068)  # sigma(6.9068) = 0.999
        for p in m.parameters():
            p.copy_(p.bfloat16())
    return m


def _relative_error(a, b):
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("mode", ["autocast", "parameters"])
@pytest.mark.parametrize("core", SATURATED)
def test_triton_bfloat16_keeps_saturated_forget_gate_gradients(core, mode):
    """The issue on bfloat16: the forget and refine gates' gradients of saturated units (f = 0.999)
    in bfloat16 (under autocast, or as the parameters' dtype) within 5% (relative, in norm) of the
    float32 reference's (measured: under 1%). While the backend saved the activations in bfloat16
    they were 240-280% off here (the interpreter rounds toward zero: f = 1 - 2^-8, 1 - f 4x too
    large) and would be zero on a GPU (f rounds to 1.0, zeroing sigma'(P_f) = f (1 - f) and the
    refine gate's dg/dr = 2 f (1 - f))."""
    m = _saturated(core)
    T, B = 12, 3
    x = torch.randn(T, B, 5, device=DEVICE).bfloat16().float().requires_grad_()
    hx = _hx(m, B, torch.float32)
    hx = tuple(h.detach().bfloat16().float().requires_grad_() for h in hx) if isinstance(hx, tuple) else \
        hx.detach().bfloat16().float().requires_grad_()
    names = _names(m, hx)
    _, ref = _run(m, x, hx, "reference")
    if mode == "autocast":
        _, got = _run(m, x, hx, "triton", autocast=torch.bfloat16)
    else:
        mb = getattr(gated, core)(5, m.hidden_size, variant="UR", device=DEVICE, dtype=torch.bfloat16)
        mb.load_state_dict(m.state_dict())
        xb = x.detach().bfloat16().requires_grad_()
        hb = tuple(h.detach().bfloat16().requires_grad_() for h in hx) if isinstance(hx, tuple) else \
            hx.detach().bfloat16().requires_grad_()
        _, got = _run(mb, xb, hb, "triton")
    ref, got = dict(zip(names, ref, strict=True)), dict(zip(names, got, strict=True))
    assert got["forget_bias_l0"].dtype == (torch.float32 if mode == "autocast" else torch.bfloat16)
    lay = m.layout
    checks = {"forget_bias": (got["forget_bias_l0"], ref["forget_bias_l0"]),
              "bias_ih refine rows": (got["bias_ih_l0"][lay.refine], ref["bias_ih_l0"][lay.refine]),
              "bias_ih forget rows": (got["bias_ih_l0"][lay.keep], ref["bias_ih_l0"][lay.keep])}
    errors = {what: _relative_error(a, b) for what, (a, b) in checks.items()}
    assert all(b.norm() > 0 for _, b in checks.values())
    assert all(e <= 0.05 for e in errors.values()), errors


@pytest.mark.parametrize("core", SATURATED)
def test_triton_bfloat16_nan_propagates_as_in_float32(core):
    """A NaN in the input reaches the same outputs and gradients under bfloat16 autocast as in float32."""
    m = _saturated(core, H=8)
    x = torch.randn(4, 2, 5, device=DEVICE)
    x[1, 1, 2] = float("nan")
    x.requires_grad_()
    hx = _hx(m, 2, torch.float32)
    runs = [_run(m, x, hx, "triton", autocast=amp) for amp in (None, torch.bfloat16)]
    (vals32, grads32), (vals16, grads16) = runs
    assert vals32[0].isnan().any() and not vals32[0][:, 0].isnan().any()
    for what, a, b in zip(["output", "h_n", "c_n"] + _names(m, hx), [*vals16, *grads16], [*vals32, *grads32]):
        assert torch.equal(a.isnan(), b.isnan()), what


class _Launches:
    """A kernels namespace whose launches first call ``hook(name, grid)`` (and then launch)."""

    def __init__(self, real, hook):
        self.real, self.hook = real, hook

    def __getattr__(self, name):
        fn = getattr(self.real, name)

        class Launcher:
            def __getitem__(_, grid):
                def launch(*args, **kwargs):
                    self.hook(name, grid)
                    return fn[grid](*args, **kwargs)

                return launch

        return Launcher()


def _hook_launches(monkeypatch, module, hook):
    """Every launch of ``module``'s kernels (_triton_kernels or _triton_scan) calls ``hook`` first;
    fresh workspaces, which fetch the kernels."""
    real = module.kernels
    monkeypatch.setattr(module, "kernels", lambda interpret: _Launches(real(interpret), hook))
    triton_gpu.empty_cache()


def test_device_guard_enters_the_tensors_cuda_device_only(monkeypatch):
    """Triton launches on the current CUDA device: the guard makes it the tensors' (cuda:1 while
    cuda:0 is current), and calls nothing of CUDA for CPU tensors (the interpreter)."""
    entered = []
    monkeypatch.setattr(torch.cuda, "device", lambda d: entered.append(d) or "torch.cuda.device")
    assert triton_gpu.device_guard(torch.device("cuda:1")) == "torch.cuda.device"
    assert entered == [torch.device("cuda:1")]
    with triton_gpu.device_guard(torch.device("cpu")):
        pass
    assert entered == [torch.device("cuda:1")]


def test_every_launch_runs_under_the_device_guard(monkeypatch):
    """The operators' implementations (forward and backward loops: allocations, workspaces, launches)
    run inside ``device_guard`` of their inputs' device."""
    from gated.backends import _triton_kernels

    real, depth, devices, launched = triton_gpu.device_guard, [0], [], set()

    @contextlib.contextmanager
    def recording(device):
        devices.append(device)
        with real(device):
            depth[0] += 1
            try:
                yield
            finally:
                depth[0] -= 1

    def hook(name, grid):
        assert depth[0] == 1, f"{name} launched outside the device guard"
        launched.add(name)

    monkeypatch.setattr(triton_gpu, "device_guard", recording)
    _hook_launches(monkeypatch, _triton_kernels, hook)
    for core, proj in (("LSTM", 3), ("GRU", 0)):
        m = _module(core, "UR", proj_size=proj)
        x = torch.randn(3, 2, 5, dtype=torch.float64, device=DEVICE, requires_grad=True)
        _compare(m, x, _hx(m, 2), TOL[torch.float64])
    assert launched == {"lstm_fwd", "proj_out", "lstm_bwd", "proj_dh", "gru_fwd", "gru_bwd"}
    assert len(devices) == 4 and set(devices) == {x.device}  # a forward and a backward per module
    triton_gpu.empty_cache()


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
@pytest.mark.parametrize("core", CORES)
def test_triton_on_the_second_gpu_while_the_first_is_current(core, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    previous = torch.cuda.current_device()
    torch.cuda.set_device(0)
    try:
        m = getattr(gated, core)(5, 6, variant="UR", dtype=torch.float64, device="cuda:1")
        x = torch.randn(4, 3, 5, dtype=torch.float64, device="cuda:1", requires_grad=True)
        hx = tuple(torch.randn(1, 3, 6, dtype=torch.float64, device="cuda:1", requires_grad=True)
                   for _ in range(2 if core == "LSTM" else 1))
        hx = hx if core == "LSTM" else hx[0]
        monkeypatch.setenv("GATED_CUDA_GRAPHS", "1")
        with torch.no_grad():
            ref, _ = m._run(x, hx, backend="reference")
            for _ in range(3):  # launches, capture (on cuda:1's stream), replay
                out, _ = m._run(x, hx, backend="triton")
                torch.testing.assert_close(out, ref, **TOL[torch.float64])
        assert out.device == torch.device("cuda:1") and torch.cuda.current_device() == 0
        leaves = [x, *(hx if core == "LSTM" else (hx,)), *m.parameters()]
        results = []
        for backend in ("triton", "reference"):  # outputs, states and every gradient
            out, st = m._run(x, hx, backend=backend)
            vals = [out, *(st if core == "LSTM" else (st,))]
            loss = sum((v * torch.linspace(-1, 1, v.numel(), dtype=v.dtype, device=v.device).view_as(v)).sum()
                       for v in vals)
            results.append([*vals, *torch.autograd.grad(loss, leaves)])
        for a, b in zip(*results, strict=True):
            assert a.device == torch.device("cuda:1")
            torch.testing.assert_close(a, b, **TOL[torch.float64])
    finally:
        torch.cuda.set_device(previous)
        triton_gpu.empty_cache()


MANY = [("LSTM", 0), ("LSTM", 3), ("GRU", 0), ("MGU", 0)]


@pytest.mark.parametrize("core,proj", MANY, ids=[f"{c}-proj{p}" for c, p in MANY])
def test_triton_several_programs_per_launch(core, proj, monkeypatch):
    """Every other test has B * H <= 32, one program per launch (BLOCK is B * H rounded up to a
    power of two in the interpreter, 256 on a GPU). Here BLOCK is 4: each launch has several
    programs, the last one partial, and their boundaries cut through batch rows (B * H = 30,
    B * P = 15); PackedSequence lengths differ per row. Outputs, states and every gradient."""
    from gated.backends import _triton_kernels

    grids = collections.defaultdict(set)
    monkeypatch.setattr(triton_gpu, "_block", lambda n, interpret: 4)
    _hook_launches(monkeypatch, _triton_kernels, lambda name, grid: grids[name].add(grid))
    m = _module(core, "UR", H=6, proj_size=proj)
    seqs = [torch.randn(n, 5, dtype=torch.float64, device=DEVICE) for n in (3, 1, 3, 2, 3)]
    x = pack_sequence(seqs, enforce_sorted=False)
    x.data.requires_grad_(True)
    _compare(m, x, _hx(m, 5), TOL[torch.float64])
    units = {"proj_out": 5 * proj, "proj_dh": 5 * proj}
    expected = {"lstm_fwd", "lstm_bwd"} | ({"proj_out", "proj_dh"} if proj else set()) if core == "LSTM" else \
        {"gru_fwd", "gru_bwd"}
    assert set(grids) == expected
    for name, seen in grids.items():
        assert seen == {((units.get(name, 30) + 3) // 4,)}, (name, seen)  # 8 programs, or 4
    triton_gpu.empty_cache()


# What each recurrent kernel is launched with (triton_gpu._Workspace's loops): pointer arguments
# in the compute dtype "cd", the state dtype "sd" or int64, then the constexpr combinations the
# backend uses, rotated over the dtypes so that every branch compiles at least once
_PTRS = {
    "lstm_fwd": "TAB:i64 BASE:cd SBASE:sd GH:cd Cp:sd Cn:sd HS:cd FB:sd LEN:i64 Hp:sd Hn:sd ZP:sd LW:sd LB:sd CW:sd CB:sd",
    "gru_fwd": "TAB:i64 BASE:cd SBASE:sd GH:cd Hp:sd Hn:sd HS:cd BHN:sd FB:sd LEN:i64 ZP:sd LW:sd LB:sd",
    "proj_out": "TAB:i64 BASE:cd SBASE:sd HS:cd H0:cd LEN:i64 ZP:sd",
    "lstm_bwd": "TAB:i64 BASE:cd SBASE:sd C0:sd D1:cd D2:sd DC:sd DAS:cd DHN:sd DM:sd LEN:i64 ZP:sd LW:sd CW:sd CB:sd",
    "gru_bwd": "TAB:i64 BASE:cd SBASE:sd H0:sd D1:cd D2:sd S:cd DHN:sd LEN:i64 ZP:sd LW:sd",
    "proj_dh": "TAB:i64 BASE:cd SBASE:sd D1:cd D2:sd DHS:cd CARRY:sd LEN:i64 ZP:sd",
}
_ON = dict.fromkeys(("REFINE", "HAS_FB", "MASKED", "SAVE", "RDROP"), True)
_GRU, _MGU = {"GRU": True, "KZ": 1, "KN": 2, "KR": 3}, {"GRU": False, "KZ": 0, "KN": 1, "KR": 2}
_CONSTEXPRS = {
    "lstm_fwd": [{**_ON, "PROJ": False, "ZH": 1, "ZC": 1, "LN": True},  # training: every option, LayerNorm
                 {**_ON, "PROJ": True, "ZH": 0, "ZC": 1, "RDROP": False, "LN": False},  # projections
                 {**dict.fromkeys(_ON, False), "PROJ": False, "ZH": 2, "ZC": 2, "LN": False},  # eval, inference
                 {**_ON, "PROJ": True, "ZH": 0, "ZC": 1, "RDROP": False, "LN": True}],  # projections, LayerNorm
    "gru_fwd": [{**_GRU, **_ON, "HAS_BHN": True, "ZH": 1, "LN": True},
                {**_MGU, **dict.fromkeys(_ON, False), "HAS_BHN": False, "ZH": 2, "LN": False}],
    "proj_out": [{"FIRST": False, "MASKED": True, "ZH": 1, "RDROP": True},
                 {"FIRST": True, "MASKED": False, "ZH": 2, "RDROP": False},
                 {"FIRST": False, "MASKED": False, "ZH": 0, "RDROP": False}],
    "lstm_bwd": [{"REFINE": True, "HAS_D1": True, "HAS_D2": True, "MASKED": True, "FIRST": False, "PROJ": False,
                  "ZH": 1, "ZC": 1, "RDROP": True, "LN": True},
                 {"REFINE": True, "HAS_D1": False, "HAS_D2": False, "MASKED": True, "FIRST": True, "PROJ": True,
                  "ZH": 0, "ZC": 0, "RDROP": False, "LN": False},
                 {"REFINE": False, "HAS_D1": True, "HAS_D2": True, "MASKED": False, "FIRST": False, "PROJ": False,
                  "ZH": 2, "ZC": 2, "RDROP": False, "LN": False},
                 {"REFINE": False, "HAS_D1": False, "HAS_D2": False, "MASKED": True, "FIRST": False, "PROJ": True,
                  "ZH": 0, "ZC": 1, "RDROP": False, "LN": True}],
    "gru_bwd": [{**_GRU, "REFINE": True, "HAS_D1": True, "MASKED": True, "FIRST": False, "ZH": 1, "RDROP": True,
                 "LN": True},
                {**_MGU, "REFINE": False, "HAS_D1": False, "MASKED": False, "FIRST": True, "ZH": 2, "RDROP": False,
                 "LN": False}],
    "proj_dh": [{"HAS_D1": True, "HAS_D2": True, "MASKED": True, "ZH": 1, "RDROP": True},
                {"HAS_D1": False, "HAS_D2": True, "MASKED": False, "ZH": 2, "RDROP": False},
                {"HAS_D1": True, "HAS_D2": False, "MASKED": False, "ZH": 0, "RDROP": False}],
}
_SM90_DTYPES = ["fp32", "fp64", "bf16", "fp16"]


def _sm90():
    """Triton's compiler API, or a skip (tests/test_triton_scan.py's helper, shared)."""
    from test_triton_scan import _sm90 as compile_api

    return compile_api()


@pytest.mark.parametrize("dtype", _SM90_DTYPES)
def test_kernels_compile_for_sm90(dtype, monkeypatch):
    """Triton's real compiler (not the interpreter) lowers every recurrent kernel to sm_90 PTX and a
    cubin, with no GPU (its bundled ptxas), with the argument types and constexprs the backend
    launches them with: bfloat16/float16 operands with float32 state, float32, float64."""
    import inspect
    import re

    from gated.backends import _triton_kernels

    triton, GPUTarget, ASTSource, JITFunction = _sm90()

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setenv("TRITON_DEFAULT_FP_FUSION", "1")  # triton 3.9 warns when unset; 1 is its default
    types_ = {"cd": dtype, "sd": "fp32" if dtype in ("bf16", "fp16") else dtype, "i64": "i64"}
    assert [fn.__name__ for fn in _triton_kernels._FUNCTIONS] == list(_PTRS)
    for fn in _triton_kernels._FUNCTIONS:
        cases = _CONSTEXPRS[fn.__name__]
        constexprs = {**cases[_SM90_DTYPES.index(dtype) % len(cases)], "BLOCK": 256}
        if fn is _triton_kernels.gru_fwd:  # GRU/MGU's h_t in float32 beside rounded outputs
            constexprs["SAVE_H"] = constexprs["SAVE"] and dtype in ("bf16", "fp16")
        ptrs = dict(p.split(":") for p in _PTRS[fn.__name__].split())
        if fn is _triton_kernels.lstm_bwd and constexprs["PROJ"]:
            ptrs["DM"] = "cd"  # dh_t W_hr (else the workspace's dc stands in, unread)
        sig = {}
        for name in inspect.signature(fn).parameters:
            if name in ptrs:
                sig[name] = "*" + types_[ptrs[name]]
            else:
                sig[name] = "constexpr" if name in constexprs else "i32"
        declared = {k for k, p in inspect.signature(fn).parameters.items() if "constexpr" in str(p.annotation)}
        assert set(constexprs) == declared, (fn.__name__, set(constexprs) ^ declared)
        assert set(ptrs) <= set(sig), (fn.__name__, set(ptrs) - set(sig))
        try:
            compiled = triton.compile(ASTSource(JITFunction(fn), sig, constexprs), target=GPUTarget("cuda", 90, 32))
        except RuntimeError as e:
            if "ptxas" in str(e) and "not found" in str(e).lower():
                pytest.skip(f"no ptxas: {e}")
            raise
        assert re.search(r"\.target sm_90a?\b", compiled.asm["ptx"]), fn.__name__
        assert len(compiled.asm["cubin"]) > 0, fn.__name__
