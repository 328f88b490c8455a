"""torch.nn.RNNBase's and torch.nn.LSTM's public helper methods on gated's sequence modules, the
documented ``isinstance`` check for code that takes torch's and gated's modules, and the message for
an input of the wrong dtype.

Every method is compared with torch's on a torch.nn module of the same configuration: the same
return value, or an exception of torch's type (gated raises :class:`gated.InputError`, which is a
RuntimeError, ValueError and TypeError) with torch's message.
"""

import inspect
import re
from pathlib import Path

import pytest
import torch
from torch import nn

import gated

DOC = Path(__file__).resolve().parent.parent / "docs" / "compatibility.md"
METHODS = ["check_input", "get_expected_hidden_size", "check_hidden_size", "check_forward_args", "permute_hidden"]

# (gated class, torch class, extra constructor arguments): the scan cores take torch.nn.GRU's call
PAIRS = [
    (gated.LSTM, nn.LSTM, {}),
    (gated.LSTM, nn.LSTM, {"proj_size": 3}),
    (gated.GRU, nn.GRU, {}),
    (gated.MGU, nn.GRU, {}),
    (gated.MinGRU, nn.GRU, {}),
    (gated.MinLSTM, nn.GRU, {}),
]
IDS = ["LSTM", "LSTM-proj", "GRU", "MGU", "MinGRU", "MinLSTM"]


def _outcome(fn, *args):
    try:
        return "ok", fn(*args)
    except Exception as e:  # noqa: BLE001 - the exception is the result compared
        return "raised", e


def _assert_same(got, want):
    """gated's outcome equals torch's: equal results, or torch's exception type and message."""
    assert got[0] == want[0], (got, want)
    if want[0] == "raised":
        assert isinstance(got[1], type(want[1])), (type(got[1]), type(want[1]))
        assert isinstance(got[1], gated.InputError)
        assert str(got[1]) == str(want[1])
        return
    a, b = got[1], want[1]
    if isinstance(b, torch.Tensor):
        assert torch.equal(a, b)
    elif isinstance(b, tuple) and b and isinstance(b[0], torch.Tensor):
        assert len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))
    else:
        assert a == b and type(a) is type(b)


def _pair(g_cls, t_cls, extra, **kw):
    args = dict(num_layers=2, bidirectional=True, **extra, **kw)
    return g_cls(4, 6, **args), t_cls(4, 6, **args)


def _states(t_mod, batch, lstm):
    """Correct states for ``t_mod`` (LSTM: (h, c))."""
    LD = t_mod.num_layers * (2 if t_mod.bidirectional else 1)
    h = torch.randn(LD, batch, t_mod.proj_size or t_mod.hidden_size)
    return (h, torch.randn(LD, batch, t_mod.hidden_size)) if lstm else h


def _forward_args_cases(t_mod, lstm):
    """(input, hidden, batch_sizes) cases: valid ones and every error torch checks."""
    B, I, H = 3, 4, 6
    x = torch.randn(5, B, I)
    good = _states(t_mod, B, lstm)
    bad_batch = _states(t_mod, B + 1, lstm)
    packed = torch.randn(6, I)  # the data of a PackedSequence of lengths 3, 2, 1
    sizes = torch.tensor([3, 2, 1])
    cases = [
        (x, good, None),
        (packed, good, sizes),
        (x, bad_batch, None),  # wrong batch in h (hidden[0] for the LSTM)
        (torch.randn(5, B), good, None),  # 2-D input without batch_sizes
        (x, good, sizes),  # 3-D input with batch_sizes
        (torch.randn(5, B, I + 1), good, None),  # wrong input_size
        (torch.randn(5, B, I, dtype=torch.float64), good, None),  # dtype (torch: ValueError)
    ]
    if lstm:
        h, c = good
        cases += [
            (x, (h, torch.randn(c.shape[0], B, H + 1)), None),  # wrong c: hidden[1]
            # proj_size: h of hidden_size where proj_size is expected; else h of hidden_size + 1
            (x, (c.new_zeros(h.shape[0], B, H if t_mod.proj_size else H + 1), c), None),
            (x, (h, h), None) if t_mod.proj_size else (x, (h, c[:1]), None),  # c of proj_size / too few layers
        ]
    else:
        cases.append((x, good[:1], None))  # too few layers
    return cases


@pytest.mark.parametrize("g_cls,t_cls,extra", PAIRS, ids=IDS)
@pytest.mark.parametrize("batch_first", [False, True])
def test_check_forward_args_equals_torch(g_cls, t_cls, extra, batch_first):
    g, t = _pair(g_cls, t_cls, extra, batch_first=batch_first)
    lstm = t_cls is nn.LSTM
    outcomes = []
    for x, hidden, sizes in _forward_args_cases(t, lstm):
        if batch_first and sizes is None and x.dim() == 3:
            x = x.transpose(0, 1).contiguous()
        want = _outcome(t.check_forward_args, x, hidden, sizes)
        _assert_same(_outcome(g.check_forward_args, x, hidden, sizes), want)
        outcomes.append(want[0])
    # only the first two cases are valid: the others really are errors for torch
    assert outcomes[:2] == ["ok", "ok"] and "ok" not in outcomes[2:]


@pytest.mark.parametrize("g_cls,t_cls,extra", PAIRS, ids=IDS)
def test_size_helpers_equal_torch(g_cls, t_cls, extra):
    for batch_first in (False, True):
        g, t = _pair(g_cls, t_cls, extra, batch_first=batch_first)
        x = torch.randn(5, 3, 4)
        for sizes in (None, torch.tensor([7, 2])):
            _assert_same(_outcome(g.get_expected_hidden_size, x, sizes), _outcome(t.get_expected_hidden_size, x, sizes))
            if t_cls is nn.LSTM:
                _assert_same(_outcome(g.get_expected_cell_size, x, sizes), _outcome(t.get_expected_cell_size, x, sizes))
            inp = x if sizes is None else torch.randn(9, 4)
            _assert_same(_outcome(g.check_input, inp, sizes), _outcome(t.check_input, inp, sizes))
        expected = t.get_expected_hidden_size(x, None)
        for hx in (torch.zeros(expected), torch.zeros(2, 2, 2)):
            _assert_same(_outcome(g.check_hidden_size, hx, expected), _outcome(t.check_hidden_size, hx, expected))
            _assert_same(_outcome(g.check_hidden_size, hx, expected, "custom {} / {}"),
                         _outcome(t.check_hidden_size, hx, expected, "custom {} / {}"))
    assert g.get_expected_hidden_size(x, None)[2] == (extra.get("proj_size") or 6)


def test_error_types_are_torchs():
    """torch raises ValueError for the dtype and RuntimeError for shapes: gated's errors are both."""
    g, t = _pair(gated.LSTM, nn.LSTM, {})
    with pytest.raises(ValueError, match=re.escape("Convert input: input.to(torch.float32), or convert model")):
        g.check_input(torch.randn(5, 3, 4, dtype=torch.float64), None)
    with pytest.raises(RuntimeError, match="input must have 3 dimensions, got 2"):
        g.check_input(torch.randn(5, 4), None)
    with pytest.raises(RuntimeError, match=re.escape("Expected hidden[1] size (4, 3, 6), got [4, 3, 7]")):
        g.check_forward_args(torch.randn(5, 3, 4), (torch.zeros(4, 3, 6), torch.zeros(4, 3, 7)), None)


@pytest.mark.parametrize("g_cls,t_cls,extra", PAIRS, ids=IDS)
def test_permute_hidden_equals_torch(g_cls, t_cls, extra):
    g, t = _pair(g_cls, t_cls, extra)
    hx = _states(t, 5, t_cls is nn.LSTM)
    perm = torch.tensor([3, 0, 4, 1, 2])
    got, want = g.permute_hidden(hx, perm), t.permute_hidden(hx, perm)
    _assert_same(("ok", got), ("ok", want))
    first = got[0] if isinstance(got, tuple) else got
    assert not torch.equal(first, hx[0] if isinstance(hx, tuple) else hx)  # it did permute
    assert g.permute_hidden(hx, None) is hx and t.permute_hidden(hx, None) is hx


def test_signatures_are_torchs():
    for name in METHODS:
        for g_cls, t_cls in ((gated.GRU, nn.GRU), (gated.LSTM, nn.LSTM)):
            got = inspect.signature(getattr(g_cls, name)).parameters
            want = inspect.signature(getattr(t_cls, name)).parameters
            assert list(got) == list(want), name
            assert [p.default for p in got.values()] == [p.default for p in want.values()], name
    got = inspect.signature(gated.LSTM.get_expected_cell_size).parameters
    assert list(got) == list(inspect.signature(nn.LSTM.get_expected_cell_size).parameters)


def test_methods_live_in_one_place():
    """Defined once on gated.recurrent.RNNBase, shared by every sequence module."""
    for name in [*METHODS, "get_expected_cell_size"]:
        for cls in (gated.LSTM, gated.GRU, gated.MGU, gated.MinGRU, gated.MinLSTM):
            assert getattr(cls, name) is getattr(gated.recurrent.RNNBase, name), (cls, name)


# ---- isinstance: the check docs/compatibility.md documents --------------------------------------


def _documented_snippet() -> str:
    text = DOC.read_text(encoding="utf-8")
    section = text[text.index("## isinstance"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_documented_isinstance_check_accepts_torch_and_gated_modules():
    ns: dict = {}
    exec(_documented_snippet(), ns)  # noqa: S102 - our own documentation's code
    is_rnn, is_lstm = ns["is_rnn"], ns["is_lstm"]
    rnns = [nn.RNN(3, 4), nn.LSTM(3, 4), nn.GRU(3, 4), nn.LSTM(3, 4, proj_size=2), gated.LSTM(3, 4),
            gated.LSTM(3, 4, proj_size=2, variant="-"), gated.GRU(3, 4), gated.MGU(3, 4), gated.MinGRU(3, 4),
            gated.MinLSTM(3, 4)]
    others = [nn.Linear(3, 4), nn.LSTMCell(3, 4), gated.LSTMCell(3, 4), gated.GRUCell(3, 4), nn.Sequential()]
    assert all(is_rnn(m) for m in rnns)
    assert not any(is_rnn(m) for m in others)
    lstms = [nn.LSTM(3, 4), nn.LSTM(3, 4, proj_size=2), gated.LSTM(3, 4), gated.LSTM(3, 4, variant="-")]
    assert all(is_lstm(m) for m in lstms)
    assert not any(is_lstm(m) for m in [nn.GRU(3, 4), gated.GRU(3, 4), gated.MinLSTM(3, 4), gated.LSTMCell(3, 4)])
    # the duck-typed check the page gives: torch's and gated's LSTMs report mode "LSTM"
    assert [m.mode == "LSTM" for m in rnns] == [is_lstm(m) for m in rnns]


def test_gated_modules_are_not_torch_subclasses():
    """What docs/compatibility.md states: not torch.nn.LSTM nor torch.nn.RNNBase instances (change
    the page if this ever changes)."""
    m = gated.LSTM(3, 4)
    assert not isinstance(m, nn.LSTM) and not isinstance(m, nn.RNNBase)
    assert isinstance(m, gated.recurrent.RNNBase) and isinstance(m, nn.Module)
    assert not isinstance(nn.LSTM(3, 4), gated.recurrent.RNNBase)


# ---- an input of the wrong dtype -----------------------------------------------------------------

MODULES = [gated.LSTM, gated.GRU, gated.MGU, gated.MinGRU, gated.MinLSTM]
CELLS = [gated.LSTMCell, gated.GRUCell, gated.MGUCell]


@pytest.mark.parametrize("cls", MODULES + CELLS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool])
def test_integer_input_suggests_converting_the_input(cls, dtype):
    m = cls(3, 4)
    x = torch.ones(5, 2, 3, dtype=dtype) if cls in MODULES else torch.ones(2, 3, dtype=dtype)
    with pytest.raises(gated.InputError) as info:
        m(x)
    msg = str(info.value)
    assert f"RNN input dtype ({dtype}) does not match weight dtype (torch.float32)" in msg
    assert "Convert input: input.to(torch.float32)" in msg
    assert "model.to" not in msg
    assert ("Embedding" in msg) == (dtype != torch.bool)
    assert isinstance(info.value, ValueError)  # what torch.nn raises for the dtype
    if cls in MODULES:  # the public check_input says the same
        with pytest.raises(gated.InputError) as direct:
            m.check_input(x, None)
        assert f"gated.{cls.__name__}: {direct.value}" == msg


def test_integer_input_message_names_the_weights_dtype():
    m = gated.GRU(3, 4, dtype=torch.float64)
    with pytest.raises(gated.InputError, match=re.escape("Convert input: input.to(torch.float64) (integer")):
        m(torch.ones(5, 2, 3, dtype=torch.long))


def test_integer_input_is_rejected_under_autocast():
    """autocast lets floating inputs through (it casts them); an integer one is still an error."""
    m = gated.LSTM(3, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16), pytest.raises(gated.InputError, match="Convert input"):
        m(torch.ones(5, 2, 3, dtype=torch.long))


@pytest.mark.parametrize("g_cls,t_cls", [(gated.LSTM, nn.LSTM), (gated.GRU, nn.GRU)], ids=["LSTM", "GRU"])
def test_float_mismatch_keeps_torchs_message_and_float_input_runs(g_cls, t_cls):
    torch.manual_seed(0)
    t = t_cls(3, 4)
    g = g_cls(3, 4, variant="-")
    g.load_state_dict(t.state_dict())
    x64 = torch.randn(5, 2, 3, dtype=torch.float64)
    with pytest.raises(ValueError) as want:
        t(x64)
    with pytest.raises(gated.InputError) as got:
        g(x64)
    assert str(got.value) == f"gated.{g_cls.__name__}: {want.value}"
    out, _ = g(x64.float())  # the suggested conversion works, and gives torch.nn's result
    torch.testing.assert_close(out, t(x64.float())[0])
