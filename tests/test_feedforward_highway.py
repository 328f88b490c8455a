"""Highway layers: the formula, carrying x at init, the gate biases of each variant, UR gates."""

import math

import pytest
import torch
from scipy import stats

from gated.feedforward import HIGHWAY_VARIANTS, Highway, HighwayNetwork
from gated.gates import refine_gate


def _reference(layer, x):
    """y = H(x)·T(x) + x·(1 − T(x)) from the raw parameters."""
    h = torch.relu(x @ layer.hidden.weight.T + layer.hidden.bias)
    pre = x @ layer.gate.weight.T + layer.gate.bias
    if layer.bias_t is None:
        t = 1.0 / (1.0 + torch.exp(-pre))
    else:
        d = layer.size
        f = torch.sigmoid(pre[..., :d] + layer.bias_t)
        r = torch.sigmoid(pre[..., d:] - layer.bias_t)
        t = r * (1 - (1 - f) ** 2) + (1 - r) * f**2  # paper Eq. 10, upper/lower band form
    return h * t + x * (1 - t), t


@pytest.mark.parametrize("variant", HIGHWAY_VARIANTS)
def test_equals_formula(variant):
    layer = Highway(7, variant=variant, dtype=torch.float64)
    with torch.no_grad():  # move the zero-initialised biases so that every term is exercised
        for p in layer.parameters():
            p.add_(0.3 * torch.randn_like(p))
    x = torch.randn(4, 3, 7, dtype=torch.float64)
    y, t = _reference(layer, x)
    torch.testing.assert_close(layer(x), y, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(layer.transform_gate(x), t, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("variant", HIGHWAY_VARIANTS)
def test_gradcheck(variant):
    layer = Highway(3, activation="tanh", variant=variant, dtype=torch.float64)
    x = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(layer, (x,))


@pytest.mark.parametrize("variant", ["-", "R"])
def test_carries_x_at_init_with_negative_gate_bias(variant):
    x = torch.randn(16, 32)
    net = HighwayNetwork(32, num_layers=4, variant=variant, gate_bias=-20.0)
    torch.testing.assert_close(net(x), x, rtol=0, atol=1e-6)
    # with the default bias -2 the layer is only near the identity: T ≈ σ(-2) ≈ 0.12 on average
    layer = Highway(256, variant="-")
    assert layer.gate_bias == -2.0
    torch.testing.assert_close(layer.gate.bias, torch.full((256,), -2.0))
    assert abs(layer.transform_gate(torch.randn(512, 256)).mean().item() - 0.13) < 0.03
    assert (layer(x := torch.randn(64, 256)) - x).abs().mean() < 0.5 * x.abs().mean()


def test_refine_variants_tie_the_bias():
    layer = Highway(10, variant="R", gate_bias=-1.5)
    torch.testing.assert_close(layer.bias_t, torch.full((10,), -1.5))
    torch.testing.assert_close(layer.gate.bias, torch.zeros(20))
    with torch.no_grad():
        layer.gate.weight.zero_()
    # weights 0: t = σ(b), r = σ(-b) = 1 - t, so T = t² + 2t(1-t)²
    t = torch.sigmoid(torch.tensor(-1.5))
    torch.testing.assert_close(layer.transform_gate(torch.randn(3, 10)), (t**2 + 2 * t * (1 - t) ** 2).expand(3, 10))
    torch.testing.assert_close(layer.transform_gate(torch.randn(3, 10)), refine_gate(t, 1 - t).expand(3, 10))


@pytest.mark.parametrize("variant", ["U", "UR"])
def test_uniform_gate_init(variant):
    d = 2000
    layer = Highway(d, variant=variant, generator=torch.Generator().manual_seed(3))
    b = layer.bias_t if variant == "UR" else layer.gate.bias
    u = torch.sigmoid(b.detach().double())
    assert u.min() >= 1 / d - 1e-6 and u.max() <= 1 - 1 / d + 1e-6
    assert stats.kstest(u.numpy(), stats.uniform(1 / d, 1 - 2 / d).cdf).pvalue > 0.01
    # the same generator seed gives the same draw
    again = Highway(d, variant=variant, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(again.bias_t if variant == "UR" else again.gate.bias, b)


def test_variant_names():
    assert Highway(4, variant="uniform-refine").variant.name == "UR"
    assert Highway(4, variant="standard").variant.name == "-"
    assert math.isclose(Highway(4, variant="standard", gate_bias=-3).gate.bias[0].item(), -3.0)


def test_network_gates_follow_the_forward_pass():
    net = HighwayNetwork(6, 3, variant="UR", dtype=torch.float64)
    x = torch.randn(2, 6, dtype=torch.float64)
    gates, h = net.transform_gates(x), x
    for layer, g in zip(net.layers, gates, strict=True):
        torch.testing.assert_close(g, _reference(layer, h)[1])
        h = _reference(layer, h)[0]
    torch.testing.assert_close(net(x), h)
