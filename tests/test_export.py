"""gated.LSTM / GRU / MGU under torch.compile, torch.jit.trace and ONNX export (run in onnxruntime).

Every test compares numbers with the eager module (outputs, final states and, for compile, the
gradients of the input and of every parameter), never only shapes.

torch.compile: the fused kernels are custom operators with fake implementations
(gated/backends/_ops.py), so a compiled module keeps one opaque call per layer and direction.
The backend ``aot_eager`` (dynamo + AOTAutograd, no code generation, ~1 s per case)
checks every case; the default ``inductor`` backend checks one case only (UR-LSTM, forward and
backward), because on 2 CPU cores its first compile takes ~15-25 s with a cold cache (each further
case adds ~10-15 s). ``fullgraph=True``: the traced forward must have no graph break. The compiled call
comes first, before the one-time "reference backend" log has been written: dynamo cannot trace a
logger call, so ``backends.resolve`` skips the log while compiling.

ONNX: both exporters of torch 2.13, the default torch.export-based one (``dynamo=True``, needs
``onnxscript``) and the legacy TorchScript one (``dynamo=False``). Export traces the reference
backend (plain torch ops), so the time loop is unrolled and an exported model has a fixed sequence
length T (the batch size may be made dynamic). The ONNX tests
skip without ``onnx`` / ``onnxscript`` / ``onnxruntime``. Narrow warning filters: the legacy
exporter and ``torch.jit.trace`` emit ``torch.jit.TracerWarning`` ("Converting a tensor to a Python
boolean ...") from the argument checks in ``gated/_base.py``; harmless here because the traced
shapes are the ones checked.

TorchScript: ``torch.jit.script`` is not supported (the modules use ``dict | None`` annotations,
``PackedSequence`` isinstance checks, frozen dataclasses holding functions, module-level dict
registries); ``torch.jit.trace`` works for a fixed T and is tested.
"""

import pytest
import torch

import gated

T, B, I, H = 4, 2, 3, 5

TRACER_WARNING = "ignore:Converting a tensor to a Python boolean:torch.jit.TracerWarning"


def _flat(result):
    """``(out, (h, c))`` or ``(out, h)`` -> ``[out, h, (c)]``."""
    out, states = result
    return [out, *states] if isinstance(states, tuple) else [out, states]


def _input(module, requires_grad=False):
    shape = (B, T, I) if module.batch_first else (T, B, I)
    return torch.randn(shape, requires_grad=requires_grad)


# --------------------------------------------------------------------------- torch.compile

def _loss(outputs, weights):
    return sum((o * w).sum() for o, w in zip(outputs, weights))


def _check_compile(cls, variant, backend, **kw):
    torch._dynamo.reset()  # no cache or recompile count carried over from another test
    m = cls(I, H, variant=variant, **kw)
    x = _input(m, requires_grad=True)
    params = list(m.parameters())

    gated.backends._logged.clear()  # the compiled call comes first and meets the one-time log
    compiled = torch.compile(m, backend=backend, fullgraph=True)
    got = _flat(compiled(x))
    ref = _flat(m(x))
    weights = [torch.randn_like(o) for o in ref]  # a loss that reaches every output and state
    ref_grads = torch.autograd.grad(_loss(ref, weights), [x, *params])
    got_grads = torch.autograd.grad(_loss(got, weights), [x, *params])

    assert len(got) == len(ref)
    for g, r in zip(got, ref):
        torch.testing.assert_close(g, r)
    names = ["input", *(n for n, _ in m.named_parameters())]
    for name, g, r in zip(names, got_grads, ref_grads):
        torch.testing.assert_close(g, r, msg=lambda s, name=name: f"grad of {name}: {s}")


@pytest.mark.parametrize(
    "cls, variant",
    [(gated.LSTM, "UR"), (gated.LSTM, "-"), (gated.GRU, "UR"), (gated.MGU, "UR")],
    ids=["LSTM-UR", "LSTM--", "GRU-UR", "MGU-UR"],
)
def test_compile_aot_eager_matches_eager(cls, variant):
    _check_compile(cls, variant, "aot_eager")


@pytest.mark.parametrize(
    "kw", [{"batch_first": True}, {"num_layers": 2, "bidirectional": True}], ids=["batch_first", "2layer-bidir"]
)
def test_compile_aot_eager_layouts(kw):
    _check_compile(gated.LSTM, "UR", "aot_eager", **kw)


@pytest.mark.slow
def test_compile_inductor_matches_eager():
    _check_compile(gated.LSTM, "UR", "inductor")


@pytest.mark.parametrize("cls", [gated.LSTM, gated.GRU, gated.MGU], ids=["LSTM", "GRU", "MGU"])
def test_compile_keeps_the_fused_op_opaque(cls):
    """Under torch.compile the fused kernels are single operators in the graph (their fake
    implementations give the shapes): no per-step ops, and with dynamic shapes one graph serves
    every sequence length and batch size (the unrolled loop compiled once per T and grew with T)."""
    from gated.backends import fused_cpu

    if not fused_cpu.available():
        pytest.skip("the fused extension is not built here")
    torch._dynamo.reset()
    graphs = []

    def capture(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    m = cls(I, H, num_layers=2)
    compiled = torch.compile(m, backend=capture, fullgraph=True, dynamic=True)
    for steps, batch in ((4, 2), (9, 3), (17, 5)):  # sizes 0 and 1 are specialised by dynamo
        x = torch.randn(steps, batch, I)
        for g, r in zip(_flat(compiled(x)), _flat(m(x))):
            torch.testing.assert_close(g, r)
    assert len(graphs) == 1, f"{len(graphs)} graphs for three sequence lengths"
    # the autograd.Function's forward and backward are subgraphs of the one graph
    targets = [str(n.target) for g in graphs[0].modules() for n in g.graph.nodes if n.op == "call_function"]
    assert sum(t.startswith("gated_fused.recurrence_forward") for t in targets) == 2  # one per layer
    assert targets.count("gated_fused.recurrence_backward") == 2
    # no per-step work: no gate maths, and the only matmul is layer 2's input gradient
    assert not any(a in t for t in targets for a in ("sigmoid", "tanh", "linear", "addmm")), targets
    assert sum("matmul" in t for t in targets) == 1, targets


@pytest.mark.parametrize("cls", [gated.LSTM, gated.GRU], ids=["LSTM", "GRU"])
def test_torch_export_runs_the_reference_ops(cls):
    """torch.export traces the reference backend: the program needs no extension to run."""
    m = cls(I, H, num_layers=2, bidirectional=True).eval()
    x = _input(m)
    ep = torch.export.export(m, (x,))
    targets = [str(n.target) for n in ep.graph.nodes if n.op == "call_function"]
    assert not any("gated_fused" in t for t in targets)
    x2 = _input(m)
    for g, r in zip(_flat(ep.module()(x2)), _flat(m(x2))):
        torch.testing.assert_close(g, r)


# --------------------------------------------------------------------------- torch.jit.trace

@pytest.mark.filterwarnings(TRACER_WARNING)
def test_jit_trace_fixed_length():
    m = gated.LSTM(I, H)
    x = _input(m)
    traced = torch.jit.trace(m, x)
    x2 = _input(m)  # same shape, new values
    for g, r in zip(_flat(traced(x2)), _flat(m(x2))):
        torch.testing.assert_close(g, r)


# --------------------------------------------------------------------------- ONNX

@pytest.fixture
def ort():
    pytest.importorskip("onnx")
    return pytest.importorskip("onnxruntime")


def _check_onnx(ort, m, path, dynamo):
    m.eval()
    x = _input(m)
    if dynamo:
        pytest.importorskip("onnxscript")
        torch.onnx.export(m, (x,), path, dynamo=True, verbose=False)
    else:
        torch.onnx.export(m, (x,), path, dynamo=False)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (inp,) = sess.get_inputs()  # hx=None: zeros are built inside the graph
    x2 = _input(m)  # new values, the exported shape
    got = sess.run(None, {inp.name: x2.numpy()})
    with torch.no_grad():
        ref = _flat(m(x2))
    assert len(got) == len(ref)
    for g, r in zip(got, ref):
        torch.testing.assert_close(torch.from_numpy(g), r, rtol=1e-5, atol=1e-5)


ONNX_CASES = [
    pytest.param(gated.LSTM, "UR", {}, id="LSTM-UR"),
    pytest.param(gated.LSTM, "-", {}, id="LSTM--"),
    pytest.param(gated.GRU, "UR", {}, id="GRU-UR"),
    pytest.param(gated.MGU, "UR", {}, id="MGU-UR"),
    pytest.param(gated.LSTM, "UR", {"batch_first": True}, id="LSTM-UR-batch_first"),
    pytest.param(gated.LSTM, "UR", {"num_layers": 2, "bidirectional": True}, id="LSTM-UR-2layer-bidir"),
    pytest.param(gated.GRU, "UR", {"num_layers": 2, "bidirectional": True}, id="GRU-UR-2layer-bidir"),
]


# the torch.export-based exporter takes a few seconds a case: a plain and a refine cell, two layers
# and both directions, and the MGU's tied gates (the legacy exporter runs every case)
ONNX_DYNAMO = [c for c in ONNX_CASES if c.id in ("LSTM--", "LSTM-UR-2layer-bidir", "MGU-UR")]


@pytest.mark.slow
@pytest.mark.parametrize("cls, variant, kw", ONNX_DYNAMO)
def test_onnx_dynamo_export_matches_eager(ort, tmp_path, cls, variant, kw):
    _check_onnx(ort, cls(I, H, variant=variant, **kw), tmp_path / "model.onnx", dynamo=True)


@pytest.mark.filterwarnings(TRACER_WARNING)
@pytest.mark.parametrize("cls, variant, kw", ONNX_CASES)
def test_onnx_legacy_export_matches_eager(ort, tmp_path, cls, variant, kw):
    _check_onnx(ort, cls(I, H, variant=variant, **kw), tmp_path / "model.onnx", dynamo=False)


@pytest.mark.parametrize("cls", [gated.LSTM, gated.GRU], ids=["LSTM", "GRU"])
def test_compile_keeps_the_fused_op_opaque_with_zoneout_and_recurrent_dropout(cls):
    """Zoneout and recurrent dropout in training run the fused kernels under torch.compile too: one
    opaque op per layer, forward and backward (the masks are drawn by ordinary ops outside it), and
    the same numbers as eager with the same seed."""
    from gated.backends import fused_cpu

    if not fused_cpu.available():
        pytest.skip("the fused extension is not built here")
    torch._dynamo.reset()
    graphs = []

    def capture(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    m = cls(I, H, num_layers=2, zoneout=0.2, recurrent_dropout=0.3).train()
    compiled = torch.compile(m, backend=capture, fullgraph=True)
    x = torch.randn(T, B, I, requires_grad=True)
    torch.manual_seed(3)
    got = _flat(compiled(x))
    torch.manual_seed(3)
    ref = _flat(m(x))
    for g, r in zip(got, ref):
        torch.testing.assert_close(g, r)
    gg = torch.autograd.grad(_loss(got, [torch.ones_like(o) for o in got]), [x, *m.parameters()])
    rg = torch.autograd.grad(_loss(ref, [torch.ones_like(o) for o in ref]), [x, *m.parameters()])
    for g, r in zip(gg, rg):
        torch.testing.assert_close(g, r)
    targets = [str(n.target) for g in graphs[0].modules() for n in g.graph.nodes if n.op == "call_function"]
    assert sum(t.startswith("gated_fused.recurrence_forward") for t in targets) == 2
    assert targets.count("gated_fused.recurrence_backward") == 2
    assert not any(a in t for t in targets for a in ("sigmoid", "tanh", "lerp")), targets


@pytest.mark.parametrize("cls", [gated.LSTM, gated.GRU], ids=["LSTM", "GRU"])
def test_compile_keeps_the_fused_op_opaque_with_layer_norm(cls):
    """The LayerNorm cell (with zoneout and recurrent dropout) runs the fused kernels under
    torch.compile: one opaque op per layer, forward and backward; the input side's LayerNorm is
    an ordinary op outside it (not recurrent), the recurrent one and the cell norm are inside."""
    from gated.backends import fused_cpu

    if not fused_cpu.available():
        pytest.skip("the fused extension is not built here")
    torch._dynamo.reset()
    graphs = []

    def capture(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    m = cls(I, H, num_layers=2, layer_norm=True, zoneout=0.1, recurrent_dropout=0.25).train()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.1 * torch.randn_like(p))
    compiled = torch.compile(m, backend=capture, fullgraph=True)
    x = torch.randn(T, B, I, requires_grad=True)
    torch.manual_seed(3)
    got = _flat(compiled(x))
    torch.manual_seed(3)
    ref = _flat(m(x))
    for g, r in zip(got, ref):
        torch.testing.assert_close(g, r)
    gg = torch.autograd.grad(_loss(got, [torch.ones_like(o) for o in got]), [x, *m.parameters()])
    rg = torch.autograd.grad(_loss(ref, [torch.ones_like(o) for o in ref]), [x, *m.parameters()])
    for g, r in zip(gg, rg):
        torch.testing.assert_close(g, r)
    targets = [str(n.target) for g in graphs[0].modules() for n in g.graph.nodes if n.op == "call_function"]
    assert sum(t.startswith("gated_fused.recurrence_forward") for t in targets) == 2
    assert targets.count("gated_fused.recurrence_backward") == 2
    assert sum("layer_norm" in t for t in targets) == 2, targets  # LN_ih of each layer
    assert not any(a in t for t in targets for a in ("sigmoid", "tanh", "lerp")), targets
