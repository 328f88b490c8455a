"""Every (core, variant): gradcheck, chunked state, layout, names, cells vs sequence modules."""

import pytest
import torch

import gated
from gated.variants import get_variant

GRID = [(core, v) for core in ("LSTM", "GRU", "MGU") for v in gated.CORES[core.lower()].variants]
IDS = [f"{c}-{v}" for c, v in GRID]


def _module(core, variant, **kw):
    m = getattr(gated, core)(3, 4, variant=variant, dtype=torch.float64, chunk_size=2, **kw)
    with torch.no_grad():  # move every parameter off its special init value
        for p in m.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return m


def _hx(core, L, B, requires_grad=True):
    n = 2 if core == "LSTM" else 1
    s = [torch.randn(L, B, 4, dtype=torch.float64, requires_grad=requires_grad) for _ in range(n)]
    return tuple(s) if n == 2 else s[0]


@pytest.mark.parametrize("core,variant", GRID, ids=IDS)
def test_gradcheck(core, variant):
    m = _module(core, variant, num_layers=2, bidirectional=True)
    x = torch.randn(3, 2, 3, dtype=torch.float64, requires_grad=True)
    hx = _hx(core, 4, 2)
    flat_hx = list(hx) if isinstance(hx, tuple) else [hx]
    names = [n for n, _ in m.named_parameters()]

    def f(x, *rest):
        states, params = rest[: len(flat_hx)], rest[len(flat_hx):]
        h = tuple(states) if len(states) == 2 else states[0]
        out, st = torch.func.functional_call(m, dict(zip(names, params)), (x, h))
        return (out, *st) if isinstance(st, tuple) else (out, st)

    params = [p.detach().clone().requires_grad_() for p in m.parameters()]
    assert torch.autograd.gradcheck(f, (x, *flat_hx, *params), eps=1e-6, atol=1e-7, fast_mode=True)


@pytest.mark.parametrize("core,variant", GRID, ids=IDS)
def test_state_carries_across_chunks(core, variant):
    """run(x) == run(x[:k]) then run(x[k:], state): outputs, states and gradients."""
    m = _module(core, variant, num_layers=2)
    x = torch.randn(7, 2, 3, dtype=torch.float64, requires_grad=True)
    out, st = m(x)
    out1, st1 = m(x[:3])
    out2, st2 = m(x[3:], st1)
    torch.testing.assert_close(torch.cat([out1, out2]), out, rtol=1e-12, atol=1e-12)
    for a, b in zip(st2 if isinstance(st2, tuple) else (st2,), st if isinstance(st, tuple) else (st,)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    g_full = torch.autograd.grad(out.sum(), [x, *m.parameters()])
    g_chunk = torch.autograd.grad(torch.cat([out1, out2]).sum(), [x, *m.parameters()])
    for a, b in zip(g_chunk, g_full):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("core,variant", GRID, ids=IDS)
def test_cell_equals_sequence_module(core, variant):
    """Stepping the cell by hand equals the sequence module with the same weights."""
    seq = _module(core, variant)
    cell = getattr(gated, core + "Cell")(3, 4, variant=variant, dtype=torch.float64, chunk_size=2)
    cell.load_state_dict({k.replace("_l0", ""): v for k, v in seq.state_dict().items()})
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    out, st = seq(x)
    state = None
    for t in range(5):
        state = cell(x[t], state)
        h = state[0] if isinstance(state, tuple) else state
        torch.testing.assert_close(h, out[t], rtol=1e-12, atol=1e-12)
    if isinstance(st, tuple):
        torch.testing.assert_close(state[1], st[1][0], rtol=1e-12, atol=1e-12)


def test_layout_shapes():
    H, I = 8, 3
    assert gated.LSTM(I, H, variant="UR").weight_ih_l0.shape == (4 * H, I)  # refine in the i block
    assert gated.GRU(I, H, variant="UR").weight_ih_l0.shape == (4 * H, I)  # (r, z, n, refine)
    assert gated.GRU(I, H, variant="U").weight_ih_l0.shape == (3 * H, I)
    assert gated.MGU(I, H, variant="-").weight_hh_l0.shape == (2 * H, H)
    assert gated.MGU(I, H, variant="UR").weight_hh_l0.shape == (3 * H, H)
    assert gated.LSTM(I, H, variant="OM", chunk_size=4).weight_ih_l0.shape == (4 * H + 2 * 2, I)
    assert gated.LSTM(I, 10, variant="OM", chunk_size=4).weight_ih_l0.shape == (40 + 2 * 3, I)  # ceil(10/4)
    assert gated.LSTM(I, H, variant="UR").forget_bias_l0.shape == (H,)
    assert not hasattr(gated.LSTM(I, H, variant="OR"), "forget_bias_l0")
    assert not hasattr(gated.LSTM(I, H, variant="U"), "forget_bias_l0")


@pytest.mark.parametrize(
    "name,expected",
    [("ur", "UR"), ("UR-", "UR"), ("uniform-refine", "UR"), ("Uniform-Refine", "UR"), ("-", "-"),
     ("--", "-"), ("standard", "-"), ("c", "C"), ("C-", "C"), ("on", "OM"), ("cumax-master", "OM")],
)
def test_variant_names(name, expected):
    assert get_variant(name).name == expected
    assert gated.LSTM(2, 3, variant=name).variant.name == expected


def test_refine_gate_reaches_bands():
    f = torch.tensor(0.9, dtype=torch.float64)
    assert gated.gates.refine_gate(f, torch.tensor(1.0)).item() == pytest.approx(0.99)  # paper's example
    assert gated.gates.refine_gate(f, torch.tensor(0.0)).item() == pytest.approx(0.81)
    assert gated.gates.refine_gate(f, torch.tensor(0.5)).item() == pytest.approx(0.9)


def test_cumax_monotone_and_ends_at_one():
    c = gated.gates.cumax(torch.randn(3, 7, dtype=torch.float64))
    assert (c.diff(dim=-1) > 0).all()
    torch.testing.assert_close(c[:, -1], torch.ones(3, dtype=torch.float64))


def test_diagnostics_match_reference_gates():
    """gate_activations returns f, r, g with g = refine(f, r) and the run's own states."""
    m = gated.LSTM(3, 6, num_layers=2, bidirectional=True, variant="UR", dtype=torch.float64)
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    d = gated.gate_activations(m, x)
    assert d["forget"].shape == (2, 2, 5, 2, 6) and d["master_forget"] is None
    torch.testing.assert_close(d["effective"], gated.gates.refine_gate(d["forget"], d["refine"]))
    torch.testing.assert_close(d["timescale"], 1 / (1 - d["effective"]))
    # the first step's forward-direction f equals sigma(W_ih x + b + b_f) with h0 = 0
    pre = x[0] @ m.weight_ih_l0.T + m.bias_ih_l0 + m.bias_hh_l0
    f0 = torch.sigmoid(pre[:, 6:12] + m.forget_bias_l0)
    torch.testing.assert_close(d["forget"][0, 0, 0], f0)
    # the reverse direction's last time step is its first step: h0 = 0 again
    pre = x[-1] @ m.weight_ih_l0_reverse.T + m.bias_ih_l0_reverse + m.bias_hh_l0_reverse
    r0 = torch.sigmoid(pre[:, 0:6] - m.forget_bias_l0_reverse)
    torch.testing.assert_close(d["refine"][0, 1, -1], r0)
    plain = gated.gate_activations(gated.GRU(3, 6, variant="U"), torch.randn(4, 1, 3))
    assert plain["refine"] is None
    torch.testing.assert_close(plain["effective"], plain["forget"])


@pytest.mark.parametrize("core,variant", GRID, ids=IDS)
def test_packed_equals_each_sequence_alone(core, variant):
    """A PackedSequence of unsorted lengths gives, per sequence, what that sequence gives alone."""
    from torch.nn.utils.rnn import pack_sequence, pad_packed_sequence

    m = _module(core, variant, num_layers=2, bidirectional=True)
    seqs = [torch.randn(n, 3, dtype=torch.float64) for n in (2, 5, 1, 4)]
    hx = _hx(core, 4, 4, requires_grad=False)
    out, st = m(pack_sequence(seqs, enforce_sorted=False), hx)
    padded, lengths = pad_packed_sequence(out)
    states = st if isinstance(st, tuple) else (st,)
    for b, s in enumerate(seqs):
        h_b = tuple(h[:, b:b + 1] for h in (hx if isinstance(hx, tuple) else (hx,)))
        o_b, st_b = m(s.unsqueeze(1), h_b if len(h_b) == 2 else h_b[0])
        torch.testing.assert_close(padded[: len(s), b], o_b[:, 0], rtol=1e-12, atol=1e-12)
        assert torch.all(padded[len(s):, b] == 0)
        for a, e in zip(states, st_b if isinstance(st_b, tuple) else (st_b,)):
            torch.testing.assert_close(a[:, b], e[:, 0], rtol=1e-12, atol=1e-12)


def test_diagnostics_on_torch_nn_modules():
    """gate_activations reads a torch.nn.LSTM/GRU as variant '-': its first-step forget gate is
    sigma(W_if x + b_if + b_hf) with h0 = 0, and a gated copy with its weights gives the same."""
    t = torch.nn.LSTM(3, 6, num_layers=2).double()
    x = torch.randn(4, 2, 3, dtype=torch.float64)
    d = gated.gate_activations(t, x)
    pre = x[0] @ t.weight_ih_l0.T + t.bias_ih_l0 + t.bias_hh_l0
    torch.testing.assert_close(d["forget"][0, 0, 0], torch.sigmoid(pre[:, 6:12]))
    twin = gated.LSTM(3, 6, num_layers=2, variant="-", dtype=torch.float64)
    twin.load_state_dict(t.state_dict())
    torch.testing.assert_close(d["effective"], gated.gate_activations(twin, x)["effective"])
    g = gated.gate_activations(torch.nn.GRU(3, 5, batch_first=True), torch.randn(2, 4, 3))
    assert g["forget"].shape == (1, 1, 4, 2, 5)
    with pytest.raises(TypeError, match="takes gated.LSTM/GRU/MGU or torch.nn.LSTM/GRU"):
        gated.gate_activations(torch.nn.RNN(3, 4), torch.randn(4, 2, 3))
