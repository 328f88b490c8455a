"""Bad input raises with a message that names what was expected."""

import pytest
import torch

import gated


@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        ({"variant": "XR"}, ValueError, r"unknown variant 'XR'; choose one of '-', 'C', 'O', 'U', 'R', 'OM', 'OR', 'UM', 'UR'"),
        ({"variant": 3}, TypeError, "variant must be a str"),
        ({"dropout": 1.0}, ValueError, r"dropout must be a number in \[0, 1\), got 1.0"),
        ({"dropout": -0.1}, ValueError, r"dropout must be a number in \[0, 1\)"),
        ({"hidden_size": 0}, ValueError, "hidden_size must be an integer >= 1, got 0"),
        ({"hidden_size": 2.5}, ValueError, "hidden_size must be an integer >= 1"),
        ({"num_layers": 0}, ValueError, "num_layers must be an integer >= 1"),
        ({"input_size": 0}, ValueError, "input_size must be an integer >= 1"),
        ({"backend": "cuda-magic"}, ValueError, "unknown backend 'cuda-magic'; choose one of 'auto', 'reference'"),
        ({"variant": "C", "t_max": 1}, ValueError, "t_max > 2"),
        ({"variant": "OM", "chunk_size": 0}, ValueError, "chunk_size must be an integer >= 1"),
    ],
)
def test_bad_constructor_args(kwargs, exc, match):
    args = {"input_size": 3, "hidden_size": 4} | kwargs
    with pytest.raises(exc, match=match):
        gated.LSTM(**args)


def test_variant_not_for_core():
    with pytest.raises(ValueError, match=r"variant 'OM' does not exist for core 'mgu'; choose one of '-', 'C', 'U', 'R', 'UR'"):
        gated.MGU(3, 4, variant="OM")
    with pytest.raises(ValueError, match="does not exist for core 'mgu'"):
        gated.MGUCell(3, 4, variant="cumax")


@pytest.mark.parametrize("cls", [gated.LSTM, gated.GRU, gated.MGU])
def test_bad_input(cls):
    m = cls(3, 4, num_layers=2)
    with pytest.raises(ValueError, match=r"expected input with 2 dims \(T, I\) or 3 dims .* got 4-D input"):
        m(torch.randn(2, 2, 2, 3))
    with pytest.raises(ValueError, match=r"expected input_size=3 features in the last dim, got 5"):
        m(torch.randn(6, 2, 5))
    with pytest.raises(TypeError, match="has dtype torch.float64, the module's parameters torch.float32"):
        m(torch.randn(6, 2, 3, dtype=torch.float64))
    with pytest.raises(TypeError, match="must be floating point"):
        m(torch.ones(6, 2, 3, dtype=torch.long))
    with pytest.raises(TypeError, match="input must be a Tensor or PackedSequence, got list"):
        m([[0.0, 1.0, 2.0]])


def test_bad_hx_lstm():
    m = gated.LSTM(3, 4, num_layers=2, bidirectional=True)
    x = torch.randn(5, 2, 3)
    good = torch.zeros(4, 2, 4)
    with pytest.raises(TypeError, match=r"hx must be a tuple \(h_0, c_0\), got Tensor"):
        m(x, good)
    with pytest.raises(ValueError, match=r"expected hx\[0\] \(h_0\) of shape \(4, 2, 4\), got \(2, 2, 4\)"):
        m(x, (torch.zeros(2, 2, 4), good))
    with pytest.raises(ValueError, match=r"expected hx\[1\] \(c_0\) of shape \(4, 2, 4\), got \(4, 3, 4\)"):
        m(x, (good, torch.zeros(4, 3, 4)))
    with pytest.raises(TypeError, match=r"hx\[1\] \(c_0\) has dtype torch.float64"):
        m(x, (good, good.double()))
    with pytest.raises(ValueError, match=r"for unbatched 2-D input, hx\[0\] \(h_0\) must be 2-D \(4, 4\), got 3-D"):
        m(torch.randn(5, 3), (good, good))
    with pytest.raises(ValueError, match="is on meta, the module's parameters on cpu"):
        m(x, (good, torch.zeros(4, 2, 4, device="meta")))


def test_bad_hx_gru_and_cells():
    m = gated.GRU(3, 4)
    with pytest.raises(ValueError, match=r"expected hx \(h_0\) of shape \(1, 2, 4\), got \(1, 2, 5\)"):
        m(torch.randn(5, 2, 3), torch.zeros(1, 2, 5))
    with pytest.raises(TypeError, match=r"hx \(h_0\) must be a Tensor, got tuple"):
        m(torch.randn(5, 2, 3), (torch.zeros(1, 2, 4),))
    cell = gated.LSTMCell(3, 4)
    with pytest.raises(ValueError, match=r"expected input with 1 dim \(I,\) or 2 dims \(B, I\), got 3-D"):
        cell(torch.randn(1, 2, 3))
    with pytest.raises(ValueError, match=r"expected hx\[0\] of shape \(2, 4\), got \(3, 4\)"):
        cell(torch.randn(2, 3), (torch.zeros(3, 4), torch.zeros(2, 4)))
    with pytest.raises(ValueError, match=r"expected input_size=3"):
        gated.GRUCell(3, 4)(torch.randn(2, 7))
