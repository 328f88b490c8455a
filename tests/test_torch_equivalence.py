"""variant="-" with torch.nn's weights gives torch.nn's outputs, states and every gradient."""

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import gated


PAIRS = {"LSTM": (nn.LSTM, gated.LSTM), "GRU": (nn.GRU, gated.GRU)}
def tol(dtype):
    """The issue's tolerances: float64 within 1e-10, float32 within 1e-5."""
    return {"rtol": 1e-10, "atol": 1e-10} if dtype == torch.float64 else {"rtol": 1e-5, "atol": 1e-5}


CELLS = {"LSTMCell": (nn.LSTMCell, gated.LSTMCell), "GRUCell": (nn.GRUCell, gated.GRUCell)}


def _pair(kind, dtype, **kw):
    ref_cls, our_cls = PAIRS[kind]
    ref = ref_cls(4, 5, dtype=dtype, **kw)
    ours = our_cls(4, 5, dtype=dtype, variant="-", **kw)
    ours.load_state_dict(ref.state_dict())  # strict: same names and shapes
    return ref, ours


def _states(kind, L, B, dtype, batched=True):
    shape = (L, B, 5) if batched else (L, 5)
    h = torch.randn(shape, dtype=dtype, requires_grad=True)
    if kind == "LSTM":
        return (h, torch.randn(shape, dtype=dtype, requires_grad=True))
    return h


def _flat(state):
    return list(state) if isinstance(state, tuple) else [state]


def _loss(out, state):
    torch.manual_seed(1)  # the same random cotangents for both runs
    data = out.data if hasattr(out, "batch_sizes") else out
    return (data * torch.randn_like(data)).sum() + sum((s * torch.randn_like(s)).sum() for s in _flat(state))


def _compare(ref, ours, run, dtype):
    """run(module) -> (out, state, leaves); compares outputs, states and all gradients."""
    r_out, r_state, r_leaves = run(ref)
    o_out, o_state, o_leaves = run(ours)
    t = tol(dtype)
    unpack = lambda o: o.data if hasattr(o, "batch_sizes") else o  # noqa: E731
    torch.testing.assert_close(unpack(o_out), unpack(r_out), **t)
    for a, b in zip(_flat(o_state), _flat(r_state)):
        torch.testing.assert_close(a, b, **t)
    r_grads = torch.autograd.grad(_loss(r_out, r_state), [*r_leaves, *ref.parameters()])
    o_grads = torch.autograd.grad(_loss(o_out, o_state), [*o_leaves, *ours.parameters()])
    names = [f"input{k}" for k in range(len(r_leaves))] + [n for n, _ in ref.named_parameters()]
    for name, a, b in zip(names, o_grads, r_grads):
        torch.testing.assert_close(a, b, **t, msg=lambda m: f"grad of {name}: {m}")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("layers", [1, 2, 3])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("kind", list(PAIRS))
def test_matches_torch(kind, bidirectional, layers, dtype):
    ref, ours = _pair(kind, dtype, num_layers=layers, bidirectional=bidirectional)
    x = torch.randn(6, 3, 4, dtype=dtype, requires_grad=True)
    D = 2 if bidirectional else 1
    hx = _states(kind, layers * D, 3, dtype)

    def run(m):
        out, state = m(x, hx)
        return out, state, [x, *_flat(hx)]

    _compare(ref, ours, run, dtype)

    def run_no_hx(m):
        out, state = m(x)
        return out, state, [x]

    _compare(ref, ours, run_no_hx, dtype)


@pytest.mark.parametrize("kind", list(PAIRS))
def test_batch_first_and_bias_false(kind):
    dtype = torch.float64
    ref, ours = _pair(kind, dtype, num_layers=2, batch_first=True, bias=False)
    x = torch.randn(3, 6, 4, dtype=dtype, requires_grad=True)

    def run(m):
        out, state = m(x)
        return out, state, [x]

    _compare(ref, ours, run, dtype)


@pytest.mark.parametrize("kind", list(PAIRS))
def test_unbatched(kind):
    dtype = torch.float64
    ref, ours = _pair(kind, dtype, num_layers=2, bidirectional=True)
    x = torch.randn(6, 4, dtype=dtype, requires_grad=True)
    hx = _states(kind, 4, None, dtype, batched=False)

    def run(m):
        out, state = m(x, hx)
        return out, state, [x, *_flat(hx)]

    _compare(ref, ours, run, dtype)


@pytest.mark.parametrize("batch_first", [False, True], ids=["time_major", "batch_first"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("kind", list(PAIRS))
def test_packed_unsorted(kind, bidirectional, batch_first):
    dtype = torch.float64
    ref, ours = _pair(kind, dtype, num_layers=2, bidirectional=bidirectional, batch_first=batch_first)
    lengths = torch.tensor([3, 7, 1, 5])  # unsorted, with a length-1 sequence
    x = torch.randn(4, 7, 4, dtype=dtype, requires_grad=True)
    xin = x if batch_first else x.transpose(0, 1)
    hx = _states(kind, 2 * (2 if bidirectional else 1), 4, dtype)

    def run(m):
        packed = pack_padded_sequence(xin, lengths, batch_first=batch_first, enforce_sorted=False)
        out, state = m(packed, hx)
        assert torch.equal(out.batch_sizes, packed.batch_sizes)
        assert torch.equal(out.unsorted_indices, packed.unsorted_indices)
        return out, state, [x, *_flat(hx)]

    _compare(ref, ours, run, dtype)
    # padded positions are zero, as torch gives after pad_packed_sequence
    packed = pack_padded_sequence(xin, lengths, batch_first=batch_first, enforce_sorted=False)
    out, _ = pad_packed_sequence(ours(packed)[0], batch_first=batch_first)
    ref_out, _ = pad_packed_sequence(ref(packed)[0], batch_first=batch_first)
    torch.testing.assert_close(out, ref_out, **tol(dtype))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("kind", list(CELLS))
def test_cells_match_torch(kind, dtype):
    ref_cls, our_cls = CELLS[kind]
    ref = ref_cls(4, 5, dtype=dtype)
    ours = our_cls(4, 5, dtype=dtype, variant="-")
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(3, 4, dtype=dtype, requires_grad=True)
    hx = torch.randn(3, 5, dtype=dtype, requires_grad=True)
    hx = (hx, torch.randn(3, 5, dtype=dtype, requires_grad=True)) if kind == "LSTMCell" else hx

    def run(m):
        # two chained steps, the second on an unbatched input
        s = m(x, hx)
        s1 = m(x[0], tuple(t[0] for t in s) if isinstance(s, tuple) else s[0])
        out = torch.cat([t.reshape(-1) for t in _flat(s) + _flat(s1)])
        return out, (), [x, *_flat(hx)]

    _compare(ref, ours, run, dtype)


@pytest.mark.parametrize("kind", list(PAIRS))
def test_same_seed_same_init(kind):
    """Under one seed, variant "-" draws exactly the weights torch.nn draws."""
    ref_cls, our_cls = PAIRS[kind]
    torch.manual_seed(3)
    ref = ref_cls(4, 5, num_layers=2, bidirectional=True)
    torch.manual_seed(3)
    ours = our_cls(4, 5, num_layers=2, bidirectional=True, variant="-")
    for (n1, p1), (n2, p2) in zip(ref.named_parameters(), ours.named_parameters()):
        assert n1 == n2
        assert torch.equal(p1, p2), n1


def test_ur_lstm_loads_torch_weights():
    """UR-LSTM has the LSTM's parameters plus forget_bias: torch weights load non-strictly."""
    ref = nn.LSTM(4, 5, num_layers=2)
    ours = gated.LSTM(4, 5, num_layers=2, variant="UR")
    result = ours.load_state_dict(ref.state_dict(), strict=False)
    assert sorted(result.missing_keys) == ["forget_bias_l0", "forget_bias_l1"]
    assert result.unexpected_keys == []
    assert torch.equal(ours.weight_hh_l1, ref.weight_hh_l1)
    n_lstm = sum(p.numel() for p in ref.parameters())
    assert sum(p.numel() for p in ours.parameters()) == n_lstm + 2 * 5
