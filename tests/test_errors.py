"""Bad input raises with a message that names what was expected, in torch.nn's wording and with
an exception ``except`` clauses written for torch.nn catch (gated.InputError is a RuntimeError,
ValueError and TypeError at once)."""

import pytest
import torch

import gated


@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        ({"variant": "XR"}, ValueError, r"unknown variant 'XR'; choose one of '-', 'C', 'O', 'U', 'R', 'OM', 'OR', 'UM', 'UR'"),
        ({"variant": 3}, TypeError, "variant must be a str"),
        ({"dropout": 1.5}, ValueError, r"dropout should be a number in range \[0, 1\]"),
        ({"dropout": -0.1}, ValueError, r"dropout should be a number in range \[0, 1\]"),
        ({"dropout": True}, ValueError, r"dropout should be a number"),
        ({"hidden_size": 0}, ValueError, "hidden_size must be greater than zero"),
        ({"hidden_size": 2.5}, TypeError, "hidden_size should be of type int, got: float"),
        ({"num_layers": 0}, ValueError, "num_layers must be greater than zero"),
        ({"input_size": 0}, ValueError, "input_size must be greater than zero"),
        ({"input_size": "3"}, TypeError, "input_size should be of type int, got: str"),
        ({"bias": 1}, TypeError, "bias should be of type bool, got: int"),
        ({"batch_first": "yes"}, TypeError, "batch_first should be of type bool, got: str"),
        ({"proj_size": 4}, ValueError, "proj_size has to be smaller than hidden_size"),
        ({"proj_size": -1}, ValueError, "proj_size should be a positive integer or zero"),
        ({"backend": "cuda-magic"}, ValueError, "unknown backend 'cuda-magic'; choose one of 'auto', 'reference'"),
        ({"variant": "C", "t_max": 1}, ValueError, "t_max > 2"),
        ({"variant": "OM", "chunk_size": 0}, ValueError, "chunk_size must be greater than zero"),
    ],
)
def test_bad_constructor_args(kwargs, exc, match):
    args = {"input_size": 3, "hidden_size": 4} | kwargs
    with pytest.raises(exc, match=match):
        gated.LSTM(**args)


def test_dropout_with_one_layer_warns_like_torch():
    with pytest.warns(UserWarning, match="non-zero dropout expects num_layers greater than 1"):
        gated.GRU(3, 4, dropout=0.5)
    assert gated.GRU(3, 4, num_layers=2, dropout=1.0).dropout == 1.0  # torch allows p = 1


def test_proj_size_is_lstm_only():
    with pytest.raises(ValueError, match="proj_size argument is only supported for LSTM, not RNN or GRU"):
        gated.GRU(3, 4, proj_size=2)
    assert gated.GRU(3, 4, proj_size=0).proj_size == 0  # torch's default, passed on by wrappers


def test_variant_not_for_core():
    with pytest.raises(ValueError, match=r"variant 'OM' does not exist for core 'mgu'; choose one of '-', 'C', 'U', 'R', 'UR'"):
        gated.MGU(3, 4, variant="OM")
    with pytest.raises(ValueError, match="does not exist for core 'mgu'"):
        gated.MGUCell(3, 4, variant="cumax")


def test_input_error_is_every_type_torch_and_gated_used():
    assert issubclass(gated.InputError, RuntimeError)
    assert issubclass(gated.InputError, ValueError)
    assert issubclass(gated.InputError, TypeError)


@pytest.mark.parametrize("cls", [gated.LSTM, gated.GRU, gated.MGU])
def test_bad_input(cls):
    m = cls(3, 4, num_layers=2)
    mode = cls.__name__
    with pytest.raises(ValueError, match=rf"{mode}: Expected input to be 2D or 3D, got 4D instead"):
        m(torch.randn(2, 2, 2, 3))
    with pytest.raises(RuntimeError, match=r"input.size\(-1\) must be equal to input_size. Expected 3, got 5"):
        m(torch.randn(6, 2, 5))
    with pytest.raises(ValueError, match=r"RNN input dtype \(torch.float64\) does not match weight dtype \(torch.float32\)"):
        m(torch.randn(6, 2, 3, dtype=torch.float64))
    with pytest.raises(gated.InputError, match=r"RNN input dtype \(torch.int64\)"):
        m(torch.ones(6, 2, 3, dtype=torch.long))
    with pytest.raises(TypeError, match="input must be a Tensor or PackedSequence, got list"):
        m([[0.0, 1.0, 2.0]])
    with pytest.raises(RuntimeError, match="Expected sequence length to be larger than 0 in RNN"):
        m(torch.randn(0, 2, 3))


def test_bad_hx_lstm():
    m = gated.LSTM(3, 4, num_layers=2, bidirectional=True)
    x = torch.randn(5, 2, 3)
    good = torch.zeros(4, 2, 4)
    with pytest.raises(gated.InputError, match=r"hx must be a tuple \(h_0, c_0\), got Tensor"):
        m(x, good)
    with pytest.raises(RuntimeError, match=r"Expected hidden\[0\] size \(4, 2, 4\), got \[2, 2, 4\]"):
        m(x, (torch.zeros(2, 2, 4), good))
    with pytest.raises(RuntimeError, match=r"Expected hidden\[1\] size \(4, 2, 4\), got \[4, 3, 4\]"):
        m(x, (good, torch.zeros(4, 3, 4)))
    with pytest.raises(gated.InputError, match=r"hx\[1\] \(c_0\) dtype \(torch.float64\) does not match"):
        m(x, (good, good.double()))
    with pytest.raises(RuntimeError, match=r"For unbatched 2-D input, hx and cx should also be 2-D but got \(3-D, 3-D\)"):
        m(torch.randn(5, 3), (good, good))
    with pytest.raises(RuntimeError, match=r"For batched 3-D input, hx and cx should also be 3-D but got \(2-D, 3-D\)"):
        m(x, (good[0], good))
    with pytest.raises(RuntimeError, match="Input and parameter tensors are not at the same device"):
        m(x, (good, torch.zeros(4, 2, 4, device="meta")))


def test_bad_hx_gru_and_cells():
    m = gated.GRU(3, 4)
    with pytest.raises(RuntimeError, match=r"Expected hidden size \(1, 2, 4\), got \[1, 2, 5\]"):
        m(torch.randn(5, 2, 3), torch.zeros(1, 2, 5))
    with pytest.raises(TypeError, match=r"hx \(h_0\) must be a Tensor, got tuple"):
        m(torch.randn(5, 2, 3), (torch.zeros(1, 2, 4),))
    cell = gated.LSTMCell(3, 4)
    with pytest.raises(ValueError, match=r"LSTMCell: Expected input to be 1D or 2D, got 3D instead"):
        cell(torch.randn(1, 2, 3))
    with pytest.raises(RuntimeError, match=r"Input batch size 2 doesn't match hidden0 batch size 3"):
        cell(torch.randn(2, 3), (torch.zeros(3, 4), torch.zeros(2, 4)))
    with pytest.raises(RuntimeError, match=r"hidden1 has inconsistent hidden_size: got 5, expected 4"):
        cell(torch.randn(2, 3), (torch.zeros(2, 4), torch.zeros(2, 5)))
    with pytest.raises(ValueError, match=r"LSTMCell: Expected hx\[0\] to be 1D or 2D, got 4D instead"):
        cell(torch.randn(2, 3), (torch.zeros(2, 1, 1, 4), torch.zeros(2, 4)))
    with pytest.raises(RuntimeError, match=r"input has inconsistent input_size: got 7 expected 3"):
        gated.GRUCell(3, 4)(torch.randn(2, 7))
    with pytest.raises(ValueError, match=r"GRUCell: Expected hidden to be 1D or 2D, got 4D instead"):
        gated.GRUCell(3, 4)(torch.randn(2, 3), torch.zeros(2, 1, 1, 4))


def test_empty_batch_like_torch():
    """B = 0: empty outputs and states, zero parameter gradients, as torch.nn (no crash)."""
    for cls, tcls in ((gated.LSTM, torch.nn.LSTM), (gated.GRU, torch.nn.GRU)):
        t = tcls(3, 4, num_layers=2)
        for backend in ("reference", "fused_cpu", "auto"):
            m = cls(3, 4, num_layers=2, variant="-", backend=backend)
            m.load_state_dict(t.state_dict())
            x = torch.randn(5, 0, 3, requires_grad=True)
            with torch.no_grad():
                got, ref = m(x), t(x)
            assert got[0].shape == ref[0].shape == (5, 0, 4)
            out, st = m(x)
            (out.sum() + sum(s.sum() for s in (st if isinstance(st, tuple) else (st,)))).backward()
            assert x.grad.shape == x.shape
            assert all(p.grad is not None and p.grad.abs().sum() == 0 for p in m.parameters())
