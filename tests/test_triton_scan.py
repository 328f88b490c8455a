"""The Triton scan (``backend="triton"`` of the scan cores, gated/backends/_triton_scan.py) equals
the reference loop and the ``"torch"`` scan: outputs, h_n, every gradient.

CI has no GPU: the kernels run on CPU tensors in Triton's interpreter (``TRITON_INTERPRET=1``, set
per test), so the sizes are tiny (T <= 7, H <= 6); with ``GATED_TEST_DEVICE=cuda`` the same tests
run the compiled kernels on a GPU. The kernels are also compiled for the real target (sm_90)
without a GPU (Triton's compiler and its bundled ptxas). Skipped when triton is not installed.
"""

import contextlib
import importlib.util
import inspect
import os
import re
import types

import pytest
import torch
from torch.nn.utils.rnn import pack_sequence

import gated
from gated import backends
from gated.backends import scan

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None,
                                reason="triton is not installed (pip install -e '.[gpu]')")
if importlib.util.find_spec("triton") is not None:  # imported at collection, outside the fixture's
    import triton.language  # noqa: F401  TRITON_INTERPRET=1: compiled library functions (the sm_90 tests)

DEVICE = os.environ.get("GATED_TEST_DEVICE", "cpu")
CORES = ("MinGRU", "MinLSTM", "RGLRU", "HGRN")
PAIRS = [(c, v) for c in CORES for v in ("-", "UR")]
TOL = {torch.float64: {"rtol": 1e-10, "atol": 1e-10}, torch.float32: {"rtol": 1e-5, "atol": 1e-5}}


@pytest.fixture(autouse=True)
def interpreter(monkeypatch):
    if DEVICE == "cpu":
        monkeypatch.setenv("TRITON_INTERPRET", "1")


def _module(core, variant, dtype=torch.float64, I=5, H=6, **kw):
    torch.manual_seed(0)
    m = getattr(gated, core)(I, H, variant=variant, dtype=dtype, device=DEVICE, **kw)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return m


def _data(t):
    return t.data if hasattr(t, "batch_sizes") else t


def _run(m, x, h0, backend):
    """Outputs, h_n and the gradients of the input, h0 and every parameter of a random loss."""
    out, h_n = m._run(x, h0, backend=backend)
    vals = [_data(out), h_n]
    gen = torch.Generator(device=DEVICE).manual_seed(5)
    loss = sum((v.double() * torch.randn(v.shape, generator=gen, dtype=torch.float64, device=DEVICE)).sum()
               for v in vals)
    return vals, torch.autograd.grad(loss, [_data(x), h0, *m.parameters()])


def _compare(m, x, h0, tol, against=("reference", "torch")):
    vals, grads = _run(m, x, h0, "triton")
    names = ["input", "h0"] + [n for n, _ in m.named_parameters()]
    for other in against:
        ref_vals, ref_grads = _run(m, x, h0, other)
        for k, (a, b) in enumerate(zip(vals, ref_vals, strict=True)):
            torch.testing.assert_close(a, b, **tol, msg=lambda s, k=k: f"value {k} against {other}: {s}")
        for name, a, b in zip(names, grads, ref_grads, strict=True):
            assert a.dtype == b.dtype, name
            torch.testing.assert_close(a, b, **tol, msg=lambda s, name=name: f"grad of {name} against {other}: {s}")


def _h0(m, B, dtype=torch.float64):
    n = m.num_layers * m.num_directions
    return torch.randn(n, B, m.hidden_size, dtype=dtype, device=DEVICE, requires_grad=True)


@pytest.mark.parametrize("core,variant", PAIRS, ids=[f"{c}-{v}" for c, v in PAIRS])
def test_triton_scan_equals_reference_and_torch(core, variant):
    m = _module(core, variant)
    x = torch.randn(5, 3, 5, dtype=torch.float64, device=DEVICE, requires_grad=True)
    _compare(m, x, _h0(m, 3), TOL[torch.float64])


@pytest.mark.parametrize("core", CORES)
def test_triton_scan_float32_batch_first(core):
    m = _module(core, "UR", dtype=torch.float32, batch_first=True)
    x = torch.randn(2, 7, 5, device=DEVICE, requires_grad=True)
    _compare(m, x, _h0(m, 2, torch.float32), TOL[torch.float32])


@pytest.mark.parametrize("core", CORES)
def test_triton_scan_packed(core):
    m = _module(core, "UR", H=4)
    seqs = [torch.randn(n, 5, dtype=torch.float64, device=DEVICE) for n in (2, 4, 1)]  # unsorted lengths
    x = pack_sequence(seqs, enforce_sorted=False)
    x.data.requires_grad_(True)
    _compare(m, x, _h0(m, 3), TOL[torch.float64], against=("reference",))


def test_triton_scan_packed_two_layers_bidirectional():
    m = _module("MinLSTM", "UR", H=4, num_layers=2, bidirectional=True)
    seqs = [torch.randn(n, 5, dtype=torch.float64, device=DEVICE) for n in (3, 1, 2)]
    x = pack_sequence(seqs, enforce_sorted=False)
    x.data.requires_grad_(True)
    _compare(m, x, _h0(m, 3), TOL[torch.float64])


def test_run_layer_contract_with_a_mask():
    """run_layer itself: past each sequence's end the state is held and the output is zero, and a
    masked output's gradient flows nowhere (as the reference backend's)."""
    m = _module("RGLRU", "UR")
    x = torch.randn(4, 3, 5, dtype=torch.float64, device=DEVICE, requires_grad=True)
    lengths = torch.tensor([4, 1, 2], device=DEVICE)
    mask = (torch.arange(4, device=DEVICE)[:, None] < lengths).unsqueeze(-1)
    h0 = torch.randn(3, 6, dtype=torch.float64, device=DEVICE, requires_grad=True)
    args = (*m._params("_l0"), m.layout, mask)
    results = []
    for run in (backends.reference.run_layer, scan.run_layer_triton):
        out, (h_n,) = run(x, (h0,), *args)
        assert torch.equal(out[~mask.expand_as(out)], torch.zeros_like(out[~mask.expand_as(out)]))
        gen = torch.Generator(device=DEVICE).manual_seed(3)
        loss = sum((v * torch.randn(v.shape, generator=gen, dtype=v.dtype, device=DEVICE)).sum() for v in (out, h_n))
        results.append([out, h_n, *torch.autograd.grad(loss, [x, h0, *m.parameters()])])
    torch.testing.assert_close(results[1][1][1], results[1][0][0, 1])  # row 1 (length 1): its first state, held
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, **TOL[torch.float64])


@pytest.mark.parametrize("shape", [(6, 2, 3), (5, 4)])
def test_linear_scan_triton_and_double_backward(shape):
    a = torch.rand(shape, dtype=torch.float64, device=DEVICE, requires_grad=True)
    b = torch.randn(shape, dtype=torch.float64, device=DEVICE, requires_grad=True)
    h0 = torch.randn(shape[1:], dtype=torch.float64, device=DEVICE, requires_grad=True)
    w = torch.randn(shape, dtype=torch.float64, device=DEVICE)
    got, want = (gated.linear_scan(a, b, h0, backend=be) for be in ("triton", "reference"))
    torch.testing.assert_close(got, want, **TOL[torch.float64])
    g1 = torch.autograd.grad((got * w).sum(), [a, b, h0], create_graph=True)
    g2 = torch.autograd.grad((want * w).sum(), [a, b, h0], create_graph=True)
    for x, y in zip(g1, g2, strict=True):
        torch.testing.assert_close(x, y, **TOL[torch.float64])
    gg1 = torch.autograd.grad(sum((g * g).sum() for g in g1), [a, h0])  # the second derivative
    gg2 = torch.autograd.grad(sum((g * g).sum() for g in g2), [a, h0])
    for x, y in zip(gg1, gg2, strict=True):
        torch.testing.assert_close(x, y, **TOL[torch.float64])
    with torch.no_grad():  # h0 = None: zeros; a single step
        torch.testing.assert_close(gated.linear_scan(a[:1], b[:1], backend="triton"), b[:1])


def test_linear_scan_bfloat16_accumulates_in_float32():
    """bfloat16 in and out, the state carried in float32 inside: within bfloat16's rounding of the
    float32 scan of the same (bfloat16) values, gradients too."""
    T, N = 12, 16
    a = (0.9 + 0.1 * torch.rand(T, N, device=DEVICE)).bfloat16().requires_grad_()
    b = torch.randn(T, N, device=DEVICE).bfloat16().requires_grad_()
    h0 = torch.randn(N, device=DEVICE).bfloat16().requires_grad_()
    out = gated.linear_scan(a, b, h0, backend="triton")
    leaves32 = [t.detach().float().requires_grad_() for t in (a, b, h0)]
    ref = gated.linear_scan(*leaves32, backend="reference")
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref, rtol=1e-2, atol=1e-2)
    w = torch.randn(T, N, device=DEVICE)
    grads = torch.autograd.grad((out.float() * w).sum(), [a, b, h0])
    refs = torch.autograd.grad((ref * w).sum(), leaves32)
    for g, r in zip(grads, refs, strict=True):
        assert g.dtype == torch.bfloat16
        torch.testing.assert_close(g.float(), r, rtol=2e-2, atol=2e-2)


def test_nan_propagates_as_in_the_torch_loop():
    """A NaN (and an infinity) in a, b and h0 reaches the same outputs and gradients as the torch loop's."""
    T, B, H = 6, 2, 3
    a = torch.rand(T, B, H, dtype=torch.float64, device=DEVICE)
    b = torch.randn(T, B, H, dtype=torch.float64, device=DEVICE)
    h0 = torch.randn(B, H, dtype=torch.float64, device=DEVICE)
    a[2, 0, 1], b[4, 1, 2], h0[1, 0], a[3, 1, 1] = float("nan"), float("nan"), float("nan"), float("inf")
    w = torch.randn(T, B, H, dtype=torch.float64, device=DEVICE)
    w[5, 0, 0] = float("nan")  # and one in the incoming gradient
    runs = []
    for be in ("triton", "torch"):
        leaves = [t.clone().requires_grad_() for t in (a, b, h0)]
        out = gated.linear_scan(*leaves, backend=be)
        runs.append([out, *torch.autograd.grad((out * w).sum(), leaves)])
    assert runs[1][0].isnan().any() and not runs[1][0].isnan().all()
    for what, x, y in zip(["out", "da", "db", "dh0"], *runs, strict=True):
        assert torch.equal(x.isnan(), y.isnan()), what
        torch.testing.assert_close(x, y, **TOL[torch.float64], equal_nan=True)


def test_routing():
    """"auto" picks the Triton scan for CUDA tensors when triton imports, the C++ scan (or the torch
    loop) on the CPU as before; the interpreter runs CPU tensors only, when asked by name."""
    layout = gated.MinGRU(3, 4).layout
    cuda_x = types.SimpleNamespace(device=torch.device("cuda"), dtype=torch.float32)  # routing only
    assert scan.resolve("auto", layout, torch.zeros(2, 1, 3)) is not scan.run_layer_triton
    if DEVICE == "cpu":
        assert scan.resolve("triton", layout, torch.zeros(2, 1, 3)) is scan.run_layer_triton
        assert "under TRITON_INTERPRET=1" in scan.triton_why_not(layout, cuda_x)
        assert scan.resolve("auto", layout, cuda_x) is scan.BACKENDS["torch"]
    os.environ.pop("TRITON_INTERPRET", None)  # the fixture's monkeypatch restores it
    assert scan.resolve("auto", layout, cuda_x) is scan.run_layer_triton
    assert scan._linear_backend("auto", cuda_x) == "triton"
    with pytest.raises(RuntimeError, match="backend 'triton' cannot run this call: CPU tensors"):
        gated.MinGRU(3, 4, backend="triton")(torch.randn(2, 1, 3))
    with pytest.raises(RuntimeError, match="backend 'triton' cannot run this call: CPU tensors"):
        gated.linear_scan(torch.rand(2, 3), torch.rand(2, 3), backend="triton")
    assert scan.triton_why_not(layout, types.SimpleNamespace(device=torch.device("cuda"), dtype=torch.int32)) \
        == "dtype torch.int32"


def test_auto_logs_why_a_cuda_call_is_not_on_triton_once(monkeypatch, caplog):
    layout = gated.HGRN(3, 4).layout
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    cuda_x = types.SimpleNamespace(device=torch.device("cuda"), dtype=torch.int32)
    backends._logged.clear()
    with caplog.at_level("WARNING", logger="gated"):
        for _ in range(2):
            assert scan.resolve("auto", layout, cuda_x) is scan.BACKENDS["torch"]
    msgs = [r.getMessage() for r in caplog.records if "Triton scan" in r.getMessage()]
    assert len(msgs) == 1 and "no Triton scan for dtype torch.int32" in msgs[0], msgs


def test_kernels_call_no_jitted_library_function():
    """As tests/test_triton.py's: only Triton builtins, so the interpreter runs the kernels whatever
    imported triton first."""
    import triton.language as tl

    from gated.backends import _triton_scan

    src = "".join(inspect.getsource(f) for f in _triton_scan._FUNCTIONS)
    used = set(re.findall(r"\btl\.([A-Za-z_0-9]+)\s*\(", src))
    jitted = sorted(n for n in used if not getattr(getattr(tl, n, None), "__triton_builtin__", False))
    assert used and not jitted, f"jitted tl functions in the kernels: {jitted}"


def _sm90():
    try:
        import triton
        import triton.language.standard
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource
        from triton.runtime.jit import JITFunction
    except Exception as e:  # an older or partial triton
        pytest.skip(f"triton's compile API is not available: {e}")
    # triton's @jit library functions (tl.cdiv, ...) are interpreted ones when triton was first
    # imported under TRITON_INTERPRET=1, and its compiler then fails on an assertion (when this
    # test ran alone, the fixture's TRITON_INTERPRET=1 was set at that first import: hence the
    # import at collection above)
    if not isinstance(triton.language.standard.cdiv, JITFunction):
        pytest.skip("triton was first imported under TRITON_INTERPRET=1: its compiler refuses interpreted functions")
    return triton, GPUTarget, ASTSource, JITFunction


@pytest.mark.parametrize("dtype", ["fp32", "fp64", "bf16", "fp16"])
def test_kernels_compile_for_sm90(dtype, monkeypatch):
    """Triton's real compiler (not the interpreter) lowers both kernels to sm_90 PTX and a cubin,
    with no GPU: the mistakes the interpreter forgives (types, loop-carried pointers) fail here."""
    triton, GPUTarget, ASTSource, JITFunction = _sm90()
    from gated.backends import _triton_scan

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setenv("TRITON_DEFAULT_FP_FUSION", "1")  # triton 3.9 warns when unset; 1 is its default
    low = dtype in ("bf16", "fp16")
    state = "fp32" if low else dtype  # autocast: bfloat16 coefficients, a float32 state
    sigs = {
        _triton_scan.scan_fwd: {"A": dtype, "B": dtype, "H0": state, "OUT": state},
        _triton_scan.scan_bwd: {"DOUT": state, "A": dtype, "OUT": state, "H0": state, "DA": dtype, "DB": dtype,
                                "DH0": state},
    }
    for fn, ptrs in sigs.items():
        if low and fn is _triton_scan.scan_fwd:  # and all in the low dtype
            ptrs = dict.fromkeys(ptrs, dtype)
        sig = {k: f"*{v}" for k, v in ptrs.items()}
        sig.update(T="i32", N="i32")
        if fn is _triton_scan.scan_bwd:
            sig["LAST"] = "i64"
        sig.update(WIDEN="constexpr", BLOCK="constexpr")
        try:
            compiled = triton.compile(ASTSource(JITFunction(fn), sig, {"WIDEN": low, "BLOCK": 256}),
                                      target=GPUTarget("cuda", 90, 32))
        except RuntimeError as e:
            if "ptxas" in str(e) and "not found" in str(e).lower():
                pytest.skip(f"no ptxas: {e}")
            raise
        assert re.search(r"\.target sm_90a?\b", compiled.asm["ptx"]), fn.__name__
        assert len(compiled.asm["cubin"]) > 0


def _hook_launches(monkeypatch, hook):
    """Every launch of the scan kernels calls ``hook(name, grid)`` first."""
    from gated.backends import _triton_scan

    real = _triton_scan.kernels

    def kernels(interpret):
        k = real(interpret)

        def launcher(name):
            class Launcher:
                def __getitem__(self, grid):
                    def launch(*args, **kwargs):
                        hook(name, grid)
                        return getattr(k, name)[grid](*args, **kwargs)

                    return launch

            return Launcher()

        return types.SimpleNamespace(**{name: launcher(name) for name in vars(k)})

    monkeypatch.setattr(_triton_scan, "kernels", kernels)


def test_scan_launches_run_under_the_device_guard(monkeypatch):
    """Both kernels launch inside ``triton_gpu.device_guard`` of their tensors' device (Triton
    launches on the current CUDA device, tests/test_triton.py)."""
    from gated.backends import triton_gpu

    real, active, devices, launched = triton_gpu.device_guard, [], [], []

    @contextlib.contextmanager
    def recording(device):
        devices.append(device)
        with real(device):
            active.append(device)
            try:
                yield
            finally:
                active.pop()

    def hook(name, grid):
        assert len(active) == 1, f"{name} launched outside the device guard"
        launched.append(name)

    monkeypatch.setattr(triton_gpu, "device_guard", recording)
    _hook_launches(monkeypatch, hook)
    m = _module("MinGRU", "UR")
    x = torch.randn(3, 2, 5, dtype=torch.float64, device=DEVICE, requires_grad=True)
    _compare(m, x, _h0(m, 2), TOL[torch.float64], against=("reference",))
    assert launched == ["scan_fwd", "scan_bwd"] and devices == [x.device] * 2


@pytest.mark.parametrize("core", ["MinLSTM", "RGLRU"])
def test_triton_scan_several_programs_per_launch(core, monkeypatch):
    """BLOCK 4 (instead of the interpreter's one program per launch): the columns (B * H = 30) split
    over 8 programs, the last one partial; PackedSequence lengths differ per row. Outputs, h_n and
    every gradient, against the reference; and gated.linear_scan with N = 21 columns."""
    from gated.backends import _triton_scan

    grids = []
    monkeypatch.setattr(_triton_scan, "_block", lambda n, interpret: 4)
    _hook_launches(monkeypatch, lambda name, grid: grids.append((name, grid)))
    m = _module(core, "UR")
    seqs = [torch.randn(n, 5, dtype=torch.float64, device=DEVICE) for n in (4, 1, 3, 4, 2)]
    x = pack_sequence(seqs, enforce_sorted=False)
    x.data.requires_grad_(True)
    _compare(m, x, _h0(m, 5), TOL[torch.float64], against=("reference",))
    assert grids == [("scan_fwd", (8,)), ("scan_bwd", (8,))]
    a = torch.rand(6, 3, 7, dtype=torch.float64, device=DEVICE, requires_grad=True)
    b = torch.randn(6, 3, 7, dtype=torch.float64, device=DEVICE, requires_grad=True)
    h0 = torch.randn(3, 7, dtype=torch.float64, device=DEVICE, requires_grad=True)
    w = torch.randn(6, 3, 7, dtype=torch.float64, device=DEVICE)
    got, want = (gated.linear_scan(a, b, h0, backend=be) for be in ("triton", "reference"))
    torch.testing.assert_close(got, want, **TOL[torch.float64])
    for g, r in zip(torch.autograd.grad((got * w).sum(), [a, b, h0]), torch.autograd.grad((want * w).sum(), [a, b, h0]),
                    strict=True):
        torch.testing.assert_close(g, r, **TOL[torch.float64])
    assert grids[2:] == [("scan_fwd", (6,)), ("scan_bwd", (6,))]


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_triton_scan_on_the_second_gpu_while_the_first_is_current(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    previous = torch.cuda.current_device()
    torch.cuda.set_device(0)
    try:
        m = gated.HGRN(5, 6, variant="UR", dtype=torch.float64, device="cuda:1")
        x = torch.randn(4, 3, 5, dtype=torch.float64, device="cuda:1", requires_grad=True)
        h0 = torch.randn(1, 3, 6, dtype=torch.float64, device="cuda:1", requires_grad=True)
        results = []
        for backend in ("triton", "reference"):
            out, h_n = m._run(x, h0, backend=backend)
            loss = sum((v * torch.linspace(-1, 1, v.numel(), dtype=v.dtype, device=v.device).view_as(v)).sum()
                       for v in (out, h_n))
            results.append([out, h_n, *torch.autograd.grad(loss, [x, h0, *m.parameters()])])
        for a, b in zip(*results, strict=True):
            assert a.device == torch.device("cuda:1")
            torch.testing.assert_close(a, b, **TOL[torch.float64])
        assert torch.cuda.current_device() == 0
    finally:
        torch.cuda.set_device(previous)
