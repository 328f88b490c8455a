"""LSTM with projections (``proj_size``, torch.nn.LSTM's LSTMP) and torch's RNN attributes.

variant "-" equals torch.nn.LSTM(proj_size=...) on every backend (outputs, states, every gradient,
packed sequences, 2 layers bidirectional); every other LSTM variant's fused run equals its
reference run, with the kernels' buffers NaN-poisoned.
"""

import os
import shutil
import warnings

import pytest
import torch
from torch.nn.utils.rnn import pack_sequence

import gated
from gated.backends import _build

needs_cxx = pytest.mark.skipif(shutil.which(os.environ.get("CXX", "c++")) is None, reason="no C++ compiler")
TOL = {torch.float64: {"rtol": 1e-10, "atol": 1e-10}, torch.float32: {"rtol": 2e-5, "atol": 2e-5}}


def _inputs(dtype, packed, D):
    if packed:
        x = pack_sequence([torch.randn(n, 3, dtype=dtype) for n in (5, 2, 4)], enforce_sorted=False)
        x.data.requires_grad_()
    else:
        x = torch.randn(5, 3, 3, dtype=dtype, requires_grad=True)
    h = (torch.randn(2 * D, 3, 4, dtype=dtype, requires_grad=True), torch.randn(2 * D, 3, 6, dtype=dtype, requires_grad=True))
    return x, h


def _run(m, x, h):
    out, (hn, cn) = m(x, h)
    o = out.data if hasattr(out, "batch_sizes") else out
    weights = torch.arange(o.numel(), dtype=o.dtype).view_as(o).sin()
    loss = (o * weights).sum() + hn.pow(2).sum() + cn.sum()
    leaf = x.data if hasattr(x, "batch_sizes") else x
    return [o, hn, cn], torch.autograd.grad(loss, [leaf, *h, *m.parameters()])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("backend", ["reference", pytest.param("fused_cpu", marks=needs_cxx), "auto"])
def test_proj_equals_torch(backend, bidirectional, packed, dtype):
    torch.manual_seed(0)
    t = torch.nn.LSTM(3, 6, num_layers=2, proj_size=4, bidirectional=bidirectional).to(dtype)
    g = gated.LSTM(3, 6, num_layers=2, proj_size=4, bidirectional=bidirectional, variant="-", backend=backend, dtype=dtype)
    assert [n for n, _ in g.named_parameters()] == [n for n, _ in t.named_parameters()]
    g.load_state_dict(t.state_dict())
    x, h = _inputs(dtype, packed, 2 if bidirectional else 1)
    vals, grads = _run(g, x, h)
    with warnings.catch_warnings():  # torch's oneDNN path has no projections and says so (once)
        warnings.filterwarnings("ignore", "LSTM with projections is not supported with oneDNN")
        ref_vals, ref_grads = _run(t, x, h)
    for a, b in zip(vals + list(grads), ref_vals + list(ref_grads)):
        torch.testing.assert_close(a, b, **TOL[dtype])


def test_proj_init_draws_what_torch_draws():
    torch.manual_seed(3)
    t = torch.nn.LSTM(3, 6, proj_size=2, num_layers=2)
    torch.manual_seed(3)
    g = gated.LSTM(3, 6, proj_size=2, num_layers=2, variant="-")
    for (n, a), b in zip(t.named_parameters(), g.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=n)


@needs_cxx
@pytest.mark.parametrize("variant", ["C", "U", "R", "UR"])
def test_proj_fused_equals_reference(variant):
    ops = _build.load()
    ops.set_poison(True)
    try:
        torch.manual_seed(0)
        m = gated.LSTM(3, 6, num_layers=2, proj_size=4, bidirectional=True, variant=variant, dtype=torch.float64)
        x, h = _inputs(torch.float64, True, 2)
        m.backend = "reference"
        ref = _run(m, x, h)
        m.backend = "fused_cpu"
        got = _run(m, x, h)
    finally:
        ops.set_poison(False)
    for a, b in zip(got[0] + list(got[1]), ref[0] + list(ref[1])):
        torch.testing.assert_close(a, b, **TOL[torch.float64])


def test_proj_other_variants_and_gate_activations():
    m = gated.LSTM(3, 6, proj_size=2, variant="OM")  # the reference backend serves it
    out, (h, c) = m(torch.randn(4, 2, 3))
    assert out.shape == (4, 2, 2) and h.shape == (1, 2, 2) and c.shape == (1, 2, 6)
    stats = gated.gate_activations(gated.LSTM(3, 6, proj_size=2), torch.randn(4, 2, 3))
    assert stats["effective"].shape == (1, 1, 4, 2, 6)


def test_torch_attributes():
    t = torch.nn.LSTM(3, 6, num_layers=2, proj_size=2, bidirectional=True, bias=False)
    g = gated.LSTM(3, 6, num_layers=2, proj_size=2, bidirectional=True, bias=False, variant="-")
    assert g._flat_weights_names == t._flat_weights_names
    assert [[p.shape for p in ps] for ps in g.all_weights] == [[p.shape for p in ps] for ps in t.all_weights]
    assert all(a is b for a, b in zip(g._flat_weights, g.parameters()))
    assert g.mode == t.mode == "LSTM" and gated.GRU(3, 4).mode == "GRU" and g.proj_size == 2
    ur = gated.LSTM(3, 6, variant="UR")
    assert ur._flat_weights_names == ["weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0", "forget_bias_l0"]
    assert repr(gated.GRU(3, 4, num_layers=2, batch_first=True, dropout=0.5, bidirectional=True, variant="-")) == (
        "GRU(3, 4, num_layers=2, batch_first=True, dropout=0.5, bidirectional=True, variant='-')"
    )
    assert repr(torch.nn.GRU(3, 4, num_layers=2, batch_first=True, dropout=0.5, bidirectional=True)) == (
        "GRU(3, 4, num_layers=2, batch_first=True, dropout=0.5, bidirectional=True)"
    )
    assert repr(gated.LSTM(3, 6, proj_size=2, bias=False)) == "LSTM(3, 6, proj_size=2, bias=False, variant='UR')"
