"""gated.MinGRU / MinLSTM / RGLRU / HGRN give the same bits at any thread count: outputs, final states and every
gradient at 1 and 2 threads (torch.equal), as gated.LSTM does.

What used to differ (by up to ~1e-5 relative in float32): the weight and bias gradients of layers
with fewer than 16 inputs, taken as one BLAS product ``[x, 1]^T dP`` whose long inner dimension
(T * B) MKL splits over the threads. They now come from ``gated_fused::scan_weight_grad``
(gated/csrc/scan.h), whose sums have a fixed order. Every buffer the kernels allocate starts as NaN.
"""

import os
import shutil

import pytest
import torch
from torch.nn.utils.rnn import pack_sequence

import gated
from gated.backends import _build

pytestmark = pytest.mark.skipif(shutil.which(os.environ.get("CXX", "c++")) is None, reason="no C++ compiler")


@pytest.fixture(autouse=True)
def poison():
    ops = _build.load()
    assert ops is not None and hasattr(ops, "scan_weight_grad"), f"no scan kernels: {_build._state.get('error')}"
    ops.set_poison(True)
    yield
    ops.set_poison(False)


def _at_threads(n, fn):
    threads = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        return fn()
    finally:
        torch.set_num_threads(threads)


def _values_and_grads(m, x, h0):
    """Output, h_n and the gradients of x, h_0 and every parameter, by name."""
    m.zero_grad(set_to_none=True)
    data = x.data if isinstance(x, torch.nn.utils.rnn.PackedSequence) else x
    data.grad = h0.grad = None
    out, h = m(x, h0)
    out = out.data if isinstance(out, torch.nn.utils.rnn.PackedSequence) else out
    (out.sin().sum() + (h * h).sum()).backward()
    got = {"output": out.detach().clone(), "h_n": h.detach().clone(), "x.grad": data.grad.clone(),
           "h_0.grad": h0.grad.clone()}
    got.update({f"{n}.grad": p.grad.clone() for n, p in m.named_parameters()})
    return got


# (input_size, hidden_size, bias, variant): thin inputs with a bias, thin without one (the forget
# bias's gradient from the sums of dP), and a wide input (the tiled kernel's product)
CASES = [(5, 70, True, "UR"), (8, 128, True, "U"), (3, 40, False, "R"), (20, 36, True, "UR")]


@pytest.mark.parametrize("case", CASES, ids=[f"I{c[0]}-H{c[1]}-{'bias' if c[2] else 'nobias'}-{c[3]}" for c in CASES])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("core", ["MinGRU", "MinLSTM", "RGLRU", "HGRN"])
def test_outputs_and_gradients_equal_at_one_and_two_threads(core, dtype, case):
    I, H, bias, variant = case
    m = getattr(gated, core)(I, H, num_layers=2, bidirectional=True, bias=bias, variant=variant, dtype=dtype)
    x = torch.randn(150, 16, I, dtype=dtype, requires_grad=True)  # T * B = 2400: three 1024-row chunks
    h0 = torch.randn(4, 16, H, dtype=dtype, requires_grad=True)
    one = _at_threads(1, lambda: _values_and_grads(m, x, h0))
    two = _at_threads(2, lambda: _values_and_grads(m, x, h0))
    assert one.keys() == two.keys() and len(one) == 4 + len(list(m.parameters()))
    for name in one:
        assert torch.equal(one[name], two[name]), name


@pytest.mark.parametrize("I", [5, 20])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("core", ["LSTM", "GRU", "MGU"])
def test_recurrent_modules_equal_at_one_and_two_threads(core, dtype, I):
    """The recurrent cores' fused kernels, for comparison (docs/compatibility.md claims both)."""
    m = getattr(gated, core)(I, 40, num_layers=2, bidirectional=True, dtype=dtype)
    x = torch.randn(60, 16, I, dtype=dtype, requires_grad=True)
    h0 = torch.randn(4, 16, 40, dtype=dtype, requires_grad=True)

    class _H(torch.nn.Module):  # the state as one tensor: (h, 0) for the LSTM
        def __init__(self):
            super().__init__()
            self.m = m

        def forward(self, x, h0):
            out, h = self.m(x, (h0, torch.zeros_like(h0)) if core == "LSTM" else h0)
            return out, (h[0] if core == "LSTM" else h)

    wrapped = _H()
    one = _at_threads(1, lambda: _values_and_grads(wrapped, x, h0))
    two = _at_threads(2, lambda: _values_and_grads(wrapped, x, h0))
    for name in one:
        assert torch.equal(one[name], two[name]), name


def test_packed_sequences_equal_at_one_and_two_threads():
    m = gated.MinLSTM(6, 50, variant="UR")
    seqs = [torch.randn(n, 6) for n in torch.randint(100, 200, (12,)).tolist()]
    x = pack_sequence(seqs, enforce_sorted=False)
    x.data.requires_grad_(True)
    h0 = torch.randn(1, 12, 50, requires_grad=True)
    one = _at_threads(1, lambda: _values_and_grads(m, x, h0))
    two = _at_threads(2, lambda: _values_and_grads(m, x, h0))
    for name in one:
        assert torch.equal(one[name], two[name]), name


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_scan_weight_grad_is_the_product_at_any_thread_count(dtype):
    """``dP^T [x, 1]`` against a float64 product, bitwise equal at 1 to 4 threads; shapes with partial
    column blocks, partial row groups and chunks, a single row, no input column."""
    ops = torch.ops.gated_fused
    for N, G, I in ((1, 1, 1), (3, 5, 2), (1025, 37, 7), (2500, 300, 15), (2049, 33, 0), (100, 70, 16)):
        dP, x = torch.randn(N, G, dtype=dtype), torch.randn(N, I, dtype=dtype)
        for sums in (True, False):
            results = [_at_threads(n, lambda: ops.scan_weight_grad(dP, x, sums)) for n in (1, 2, 3, 4)]
            xa = torch.cat([x, torch.ones(N, 1, dtype=dtype)], 1) if sums else x
            want = dP.double().t() @ xa.double()
            assert results[0].shape == want.shape
            scale = dP.double().abs().t() @ xa.double().abs()  # the sums' magnitude, for the rounding bound
            eps = torch.finfo(dtype).eps
            assert ((results[0].double() - want).abs() <= 4 * eps * (N ** 0.5 + 4) * scale + 1e-300).all()
            assert all(torch.equal(results[0], r) for r in results[1:]), (N, G, I, sums)


def test_scan_weight_grad_fake_and_schema():
    checks = ("test_schema", "test_faketensor")
    torch.library.opcheck(torch.ops.gated_fused.scan_weight_grad.default, (torch.randn(7, 5), torch.randn(7, 3), True),
                          test_utils=checks)
    torch.library.opcheck(torch.ops.gated_fused.scan_weight_grad.default,
                          (torch.randn(7, 5, dtype=torch.float64), torch.randn(7, 2, dtype=torch.float64), False),
                          test_utils=checks)


def test_scan_weight_grad_rejects_bad_calls():
    ops = torch.ops.gated_fused
    with pytest.raises(RuntimeError, match="dP \\(N, G\\) and x \\(N, I\\) expected"):
        ops.scan_weight_grad(torch.randn(7, 5), torch.randn(6, 3), True)
    with pytest.raises(RuntimeError, match="differ in dtype"):
        ops.scan_weight_grad(torch.randn(7, 5), torch.randn(7, 3, dtype=torch.float64), True)
    with pytest.raises(RuntimeError, match="float32 or float64"):
        ops.scan_weight_grad(torch.randn(7, 5).half(), torch.randn(7, 3).half(), True)
