"""The fused CPU backend equals the reference backend: outputs, final states, every gradient.

Every buffer the C++ kernels allocate starts as NaN here (``set_poison``), so a value they forget
to write shows up as a mismatch. Runs wherever a C++ compiler is available (CI has one); the
no-compiler fallback is tested in a subprocess.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.nn.utils.rnn import pack_sequence

import gated
from gated import backends
from gated.backends import _build, fused_cpu

pytestmark = pytest.mark.skipif(shutil.which(os.environ.get("CXX", "c++")) is None, reason="no C++ compiler")

# (the variants alone: asking whether the kernels run would build them at collection, before
# tests/conftest.py starts its side-by-side builds)
FUSED = [(c, v) for c in ("LSTM", "GRU", "MGU") for v in gated.CORES[c.lower()].variants
         if fused_cpu.variant_reason(gated.cores.make_layout(c.lower(), v, 4)) is None]
# C and U run exactly the kernels of -, and R those of UR (they differ only in initialisation): the
# grids over GEMM paths and dtypes run - and UR; every variant runs on the default path in float64
KERNELS = [(c, v) for c, v in FUSED if v in ("-", "UR")]
TOL = {torch.float64: {"rtol": 1e-10, "atol": 1e-10}, torch.float32: {"rtol": 2e-5, "atol": 2e-5}}


GEMMS = {0: "auto", 1: "onednn", 3: "addmm", 4: "tiled", 5: "direct"}  # recurrent GEMM paths of the kernel


@pytest.fixture(autouse=True)
def poison():
    ops = _build.load()
    assert ops is not None, f"the fused backend failed to build: {_build._state.get('error')}"
    ops.set_poison(True)
    yield
    ops.set_poison(False)
    ops.set_gemm(0)


@pytest.fixture(params=list(GEMMS), ids=lambda k: GEMMS[k])
def gemm(request):
    if request.param and request.param not in _build.load().gemm_kinds():
        pytest.skip(f"{GEMMS[request.param]} is not available in this torch build")
    _build.load().set_gemm(request.param)
    return request.param


def test_fused_covers_the_plain_and_refine_variants():
    assert sorted(FUSED) == sorted((c, v) for c in ("LSTM", "GRU", "MGU") for v in ("-", "C", "U", "R", "UR"))


def _run(m, x, hx, backend):
    out, st = m._run(x, hx, backend=backend)
    states = list(st) if isinstance(st, tuple) else [st]
    data = out.data if hasattr(out, "batch_sizes") else out
    torch.manual_seed(5)
    loss = (data * torch.randn_like(data)).sum() + sum((s * torch.randn_like(s)).sum() for s in states)
    leaves = [x.data if hasattr(x, "batch_sizes") else x, *(hx if isinstance(hx, tuple) else (hx,))]
    grads = torch.autograd.grad(loss, [*leaves, *m.parameters()])
    return [data, *states], grads


def _compare(m, x, hx, dtype):
    ref_vals, ref_grads = _run(m, x, hx, "reference")
    vals, grads = _run(m, x, hx, "fused_cpu")
    names = ["input", "h0", "c0"][: 1 + (len(hx) if isinstance(hx, tuple) else 1)] + [n for n, _ in m.named_parameters()]
    for a, b in zip(vals, ref_vals):
        torch.testing.assert_close(a, b, **TOL[dtype])
    for name, a, b in zip(names, grads, ref_grads):
        torch.testing.assert_close(a, b, **TOL[dtype], msg=lambda s, name=name: f"grad of {name}: {s}")


def _module(core, variant, dtype, **kw):
    m = getattr(gated, core)(5, 6, variant=variant, dtype=dtype, **kw)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return m


def _hx(core, n, B, dtype):
    s = [torch.randn(n, B, 6, dtype=dtype, requires_grad=True) for _ in range(2 if core == "LSTM" else 1)]
    return tuple(s) if len(s) == 2 else s[0]


@pytest.mark.parametrize("core,variant", FUSED, ids=[f"{c}-{v}" for c, v in FUSED])
def test_every_variant_equals_reference(core, variant):
    m = _module(core, variant, torch.float64, num_layers=2, bidirectional=True)
    x = torch.randn(7, 3, 5, dtype=torch.float64, requires_grad=True)
    _compare(m, x, _hx(core, 4, 3, torch.float64), torch.float64)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("layers,bidirectional", [(1, False), (2, True)], ids=["L1", "L2-bi"])
@pytest.mark.parametrize("core,variant", KERNELS, ids=[f"{c}-{v}" for c, v in KERNELS])
def test_fused_equals_reference(core, variant, layers, bidirectional, dtype, gemm):
    m = _module(core, variant, dtype, num_layers=layers, bidirectional=bidirectional)
    x = torch.randn(7, 3, 5, dtype=dtype, requires_grad=True)
    _compare(m, x, _hx(core, layers * (2 if bidirectional else 1), 3, dtype), dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("core,variant", KERNELS, ids=[f"{c}-{v}" for c, v in KERNELS])
def test_fused_packed_sequence(core, variant, dtype, gemm):
    m = _module(core, variant, dtype, num_layers=2, bidirectional=True)
    seqs = [torch.randn(n, 5, dtype=dtype) for n in (3, 7, 1, 5)]  # unsorted lengths
    x = pack_sequence(seqs, enforce_sorted=False)
    x.data.requires_grad_(True)
    _compare(m, x, _hx(core, 4, 4, dtype), dtype)


@pytest.mark.parametrize("core,variant", [("LSTM", "UR"), ("GRU", "UR"), ("MGU", "R")])
def test_fused_gradcheck(core, variant):
    m = _module(core, variant, torch.float64, num_layers=1)
    x = torch.randn(4, 2, 5, dtype=torch.float64, requires_grad=True)
    hx = _hx(core, 1, 2, torch.float64)
    flat = list(hx) if isinstance(hx, tuple) else [hx]
    names = [n for n, _ in m.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in m.parameters()]

    def f(x, *rest):
        h = tuple(rest[: len(flat)]) if len(flat) == 2 else rest[0]
        p = dict(zip(names, rest[len(flat):]))
        out, st = torch.func.functional_call(m, p, (x, h), {})
        return (out, *st) if isinstance(st, tuple) else (out, st)

    m.backend = "fused_cpu"
    assert torch.autograd.gradcheck(f, (x, *flat, *params), eps=1e-6, atol=1e-7)


def test_auto_uses_fused_and_logs_fallbacks(caplog):
    layout = gated.LSTM(3, 4, variant="UR").layout
    assert backends.resolve("auto", layout, torch.zeros(2, 1, 3)) is fused_cpu.run_layer
    backends._logged.clear()
    m = gated.LSTM(3, 4, variant="OM")
    with caplog.at_level("WARNING", logger="gated"):
        m(torch.randn(2, 1, 3))
        m(torch.randn(2, 1, 3))
    msgs = [r.getMessage() for r in caplog.records if "reference backend" in r.getMessage()]
    assert len(msgs) == 1 and "variant 'OM'" in msgs[0]
    with pytest.raises(RuntimeError, match="backend 'fused_cpu' cannot run this call: variant 'OM'"):
        gated.LSTM(3, 4, variant="OM", backend="fused_cpu")(torch.randn(2, 1, 3))


def test_artefact_name_tracks_source_and_torch_version(tmp_path, monkeypatch):
    cxx = os.environ.get("CXX", "c++")
    src = tmp_path / "recurrence.cpp"
    src.write_bytes(_build.SOURCE.read_bytes())
    headers = sorted(_build.SOURCE.parent.glob("*.h"))
    assert headers, "recurrence.cpp includes tiled_gemm.h from its folder"
    for h in headers:
        (tmp_path / h.name).write_bytes(h.read_bytes())
    base = _build.artefact(src, cxx)
    assert base == _build.artefact(_build.SOURCE, cxx)
    header = tmp_path / headers[0].name
    header.write_bytes(headers[0].read_bytes() + b"\n// changed\n")  # an included header counts too
    assert _build.artefact(src, cxx) != base
    header.write_bytes(headers[0].read_bytes())
    src.write_bytes(_build.SOURCE.read_bytes() + b"\n// changed\n")
    assert _build.artefact(src, cxx) != base
    monkeypatch.setattr(_build, "cpu_features", lambda: "another cpu")  # -march=native builds
    assert _build.artefact(_build.SOURCE, cxx) != base
    monkeypatch.undo()
    assert _build.artefact(_build.SOURCE, cxx) == base
    monkeypatch.setattr(torch, "__version__", "0.0.0")
    assert _build.artefact(_build.SOURCE, cxx) != base


def test_import_without_compiler_falls_back(tmp_path):
    code = (
        "import torch, gated\n"
        "m = gated.LSTM(3, 4)\n"
        "x = torch.randn(5, 2, 3)\n"
        "a = m(x)[0]; b = m._run(x, backend='reference')[0]\n"
        "assert torch.equal(a, b)\n"
        "m(x)\n"
        "print('ok')\n"
    )
    env = {**os.environ, "CXX": str(tmp_path / "no-such-compiler"), "GATED_CACHE": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"
    assert proc.stderr.count("using the reference backend") == 1, proc.stderr
    assert "could not be built (no C++ compiler" in proc.stderr
    assert not list(Path(tmp_path).glob("ext/*.so"))


TILED = [("LSTM", "-", 13), ("LSTM", "UR", 1), ("LSTM", "UR", 2), ("LSTM", "UR", 3), ("LSTM", "UR", 13),
         ("GRU", "-", 13), ("GRU", "UR", 13), ("MGU", "-", 13), ("MGU", "UR", 13)]


@pytest.mark.parametrize("kind", [4, 5], ids=["packed", "direct"])
@pytest.mark.parametrize("core,variant,batch", TILED, ids=[f"{c}-{v}-B{b}" for c, v, b in TILED])
def test_fused_tiled_gemm_at_full_panel_sizes(core, variant, batch, kind):
    """The register-tiled paths (AVX-512, AVX2) at sizes the small cases above do not reach: H = 70
    fills whole 8- or 16-unit panels plus a partial one (in the forward's gate-interleaved groups
    and the backward's 64-column groups), K = I = 37 and K = H = 70 exercise the 16 x 16
    transposes and their tails, B in {1, 2, 3, 13} every row-tile height (13 = 5 + 4 + 4), with 2
    threads. ``direct``: the forward's team reads the weights unpacked (direct_gemm.h: tiles of
    4-8 weight rows by 2 batch rows and their one-row and one-column tails, K's partial register),
    also in a one-step inference call, the streaming case it serves."""
    ops = _build.load()
    if kind not in ops.gemm_kinds():
        pytest.skip("the tiled GEMMs need AVX-512 or AVX2 (not compiled in on this CPU)")
    ops.set_gemm(kind)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        torch.manual_seed(0)
        m = getattr(gated, core)(37, 70, variant=variant, dtype=torch.float32)
        with torch.no_grad():
            for p in m.parameters():
                p.add_(0.1 * torch.randn_like(p))
        x = torch.randn(5, batch, 37, requires_grad=True)
        hx = [torch.randn(1, batch, 70, requires_grad=True) for _ in range(2 if core == "LSTM" else 1)]
        _compare(m, x, tuple(hx) if len(hx) == 2 else hx[0], torch.float32)
        with torch.no_grad():
            out, _ = m._run(x, backend="fused_cpu")
            ref, _ = m._run(x, backend="reference")
        torch.testing.assert_close(out, ref, **TOL[torch.float32])
        state = tuple(hx) if len(hx) == 2 else hx[0]
        with torch.no_grad():  # one step, the state carried in
            got, want = (m._run(x[:1], state, backend=b) for b in ("fused_cpu", "reference"))
        torch.testing.assert_close(got, want, **TOL[torch.float32])
        if batch > 3:  # sequences ending at different steps: masked rows, handled per thread's units
            seqs = [torch.randn(n, 37) for n in torch.randint(1, 6, (batch,)).tolist()]
            packed = pack_sequence(seqs, enforce_sorted=False)
            packed.data.requires_grad_(True)
            _compare(m, packed, tuple(h[:, :batch] for h in hx) if len(hx) == 2 else hx[0], torch.float32)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.slow
def test_pooled_buffers_are_reused_only_when_idle():
    """Buffers above 32 MiB come from a pool (pool.h). Two graphs alive at once must not share
    one (their gradients would mix), a dropped output's buffer is handed out again, and
    empty_cache frees the idle ones. T x B x G = 512 x 64 x 256 floats = 32 MiB per buffer (a
    small layer over many steps: the pool's sizes at a fraction of the arithmetic)."""
    torch.manual_seed(0)
    m = gated.LSTM(16, 64, variant="UR")
    xs = [torch.randn(512, 64, 16, requires_grad=True) for _ in range(2)]
    wrt = [*xs, *m.parameters()]
    y1, y2 = (m._run(x, backend="fused_cpu")[0] for x in xs)  # both graphs alive
    both = torch.autograd.grad((y1 * y1).sum() + 2 * (y2 * y1.detach()).sum(), wrt, allow_unused=True)
    # the oracle: the same two terms, each from a graph alone in the pool
    y1 = m._run(xs[0], backend="fused_cpu")[0]
    first = torch.autograd.grad((y1 * y1).sum(), wrt, allow_unused=True)
    y1 = y1.detach()
    y2 = m._run(xs[1], backend="fused_cpu")[0]
    second = torch.autograd.grad(2 * (y2 * y1).sum(), wrt, allow_unused=True)
    for g, a, b in zip(both, first, second):
        alone = a if b is None else b if a is None else a + b
        torch.testing.assert_close(g, alone, rtol=1e-5, atol=1e-5)

    if os.environ.get("GATED_POOL") == "0":
        return  # reuse switched off: nothing below applies
    xs = [torch.randn(2048, 64, 16) for _ in range(2)]  # inference output 2048 x 64 x 64 floats
    with torch.no_grad():
        kept = m._run(xs[0], backend="fused_cpu")[0]
        held = kept.clone()
        second = m._run(xs[1], backend="fused_cpu")[0]  # kept is held: a different buffer
        assert second.data_ptr() != kept.data_ptr()
        torch.testing.assert_close(kept, held, rtol=0, atol=0)
        ptr = second.data_ptr()
        del second
        assert m._run(xs[1], backend="fused_cpu")[0].data_ptr() == ptr  # dropped: reused
    del kept
    assert fused_cpu.empty_cache() >= 2048 * 64 * 64 * 4
    assert fused_cpu.empty_cache() == 0


@pytest.mark.parametrize("transpose", [True, False], ids=["aT_b", "a_b"])
@pytest.mark.parametrize("sums", [True, False], ids=["sums", "plain"])
def test_tiled_mm_equals_a_float64_product(transpose, sums, gemm):
    """tiled_mm (the backward's weight-gradient product) against float64: K = 600 spans three
    256-deep blocks (accumulated in C), M = 700 several row blocks per thread, N = 130 two whole
    64-column groups and a partial one; b is a column slice with a row stride != N, like h_{t-1}."""
    torch.manual_seed(0)
    a = torch.randn(600, 700) if transpose else torch.randn(700, 600)
    b = torch.randn(600, 150)[:, 20:]
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        c = _build.load().tiled_mm(a, b, transpose, sums)
    finally:
        torch.set_num_threads(threads)
    opa = (a.t() if transpose else a).double()
    ref = opa @ b.double()
    if sums:
        ref = torch.cat([ref, opa.sum(1, keepdim=True)], 1)
    assert c.shape == ref.shape
    torch.testing.assert_close(c.double(), ref, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("core,variant", [("LSTM", "UR"), ("LSTM", "-"), ("GRU", "UR"), ("MGU", "U")])
def test_fused_inference_path(core, variant, gemm):
    """Without grad the kernel projects the input in chunks of steps (512 // B) and keeps no
    per-step activations; with B = 200 the 7 steps span four chunks."""
    m = _module(core, variant, torch.float32, num_layers=2, bidirectional=True)
    seqs = [torch.randn(n, 5) for n in torch.randint(1, 8, (200,)).tolist()]
    for x in (torch.randn(7, 200, 5), pack_sequence(seqs, enforce_sorted=False)):
        with torch.no_grad():
            out, st = m._run(x, backend="fused_cpu")
            ref, ref_st = m._run(x, backend="reference")
        data = (lambda o: o.data if hasattr(o, "batch_sizes") else o)
        torch.testing.assert_close(data(out), data(ref), **TOL[torch.float32])
        for a, b in zip(st if isinstance(st, tuple) else (st,), ref_st if isinstance(ref_st, tuple) else (ref_st,)):
            torch.testing.assert_close(a, b, **TOL[torch.float32])


@pytest.mark.parametrize("onednn", [True, False], ids=["onednn-dx", "aten-dx"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("input_grad", [True, False], ids=["x-grad", "x-nograd"])
@pytest.mark.parametrize("core,variant", [("LSTM", "UR"), ("GRU", "-"), ("MGU", "R")])
def test_fused_backward_paths(core, variant, bias, onednn, input_grad, monkeypatch):
    """The merged weight/bias-gradient matmul, the oneDNN and ATen input-gradient paths, and a
    first layer whose input needs no gradient, against the reference backend (float32)."""
    if onednn and not fused_cpu.onednn_linear_available():
        pytest.skip("this torch build has no oneDNN linear ops")
    monkeypatch.setattr(fused_cpu, "onednn_linear_available", lambda: onednn)
    m = _module(core, variant, torch.float32, num_layers=2, bias=bias)
    x = torch.randn(9, 4, 5, requires_grad=input_grad)
    hx = _hx(core, 2, 4, torch.float32)
    results = []
    for backend in ("reference", "fused_cpu"):
        out, _ = m._run(x, hx, backend=backend)
        torch.manual_seed(1)
        leaves = ([x] if input_grad else []) + list(m.parameters())
        results.append(torch.autograd.grad((out * torch.randn_like(out)).sum(), leaves))
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, **TOL[torch.float32])


STREAM = [("LSTM", "UR"), ("LSTM", "-"), ("GRU", "UR"), ("MGU", "UR")]


@pytest.mark.parametrize("core,variant", STREAM, ids=[f"{c}-{v}" for c, v in STREAM])
def test_one_step_calls_equal_the_sequence(core, variant):
    """Streaming: T = 1 calls with the state carried give the whole sequence's outputs, at
    B = 1, 2, 3 on 2 threads (where one thread may own no rows of the input projection)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        for batch in (1, 2, 3):
            m = _module(core, variant, torch.float32)
            x = torch.randn(6, batch, 5)
            with torch.no_grad():
                ref, ref_state = m._run(x, backend="reference")
                state, outs = None, []
                for t in range(6):
                    out, state = m._run(x[t:t + 1], state, backend="fused_cpu")
                    outs.append(out)
            torch.testing.assert_close(torch.cat(outs), ref, **TOL[torch.float32])
            for a, b in zip(state if isinstance(state, tuple) else (state,),
                            ref_state if isinstance(ref_state, tuple) else (ref_state,)):
                torch.testing.assert_close(a, b, **TOL[torch.float32])
    finally:
        torch.set_num_threads(threads)


@pytest.mark.slow
def test_one_step_calls_do_not_corrupt_the_heap():
    """A thread that owned no rows of a register tile used to write 6 rows past the buffer (heap
    corruption, then a crash in free()) at B = 1 on 2 threads: many such calls in a fresh process."""
    code = (
        "import torch, gated\n"
        "torch.set_num_threads(2)\n"
        "for core in ('LSTM', 'GRU'):\n"
        "    m = getattr(gated, core)(256, 256)\n"
        "    x = torch.randn(1, 1, 256)\n"
        "    for _ in range(300):\n"
        "        with torch.no_grad():\n"
        "            m(x)\n"
        "        m(x)[0].sum().backward()\n"
        "print('ok')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]
