"""Squeeze-excitation and the channel-gated conv: formulas, dense equality, FLOPs counted by torch."""

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from gated.feedforward import ChannelGatedConv2d, SqueezeExcite


def test_squeeze_excite_equals_formula():
    se = SqueezeExcite(32, 4, dtype=torch.float64)
    x = torch.randn(2, 32, 5, 6, dtype=torch.float64)
    s = x.sum((2, 3)) / 30
    g = torch.sigmoid(torch.relu(s @ se.reduce.weight.T + se.reduce.bias) @ se.expand.weight.T + se.expand.bias)
    torch.testing.assert_close(se(x), x * g[:, :, None, None], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(se.gate(x), g, rtol=1e-12, atol=1e-12)
    assert SqueezeExcite(64).squeeze_channels == 4  # reduction 16 by default
    x1 = torch.randn(2, 8, 5, dtype=torch.float64, requires_grad=True)  # 1-D maps work too
    assert torch.autograd.gradcheck(SqueezeExcite(8, 3, dtype=torch.float64), (x1,))


def _conv(m, x, w=None):
    return F.conv2d(x, m.weight if w is None else w, None, m.stride, m.padding, m.dilation)


def _set_threshold(m, value):
    with torch.no_grad():
        m.threshold.copy_(torch.as_tensor(value, dtype=m.threshold.dtype).expand_as(m.threshold))


def _counted_flops(m, x):
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        y = m(x)
    return y, counter.get_total_flops()


CONFIGS = [  # (in, out, kernel, stride, padding, dilation, base_fraction, H, W)
    (8, 6, 3, 1, 1, 1, 0.25, 7, 9),
    (12, 5, (3, 1), 2, (0, 1), 1, 0.5, 8, 8),
    (6, 4, 3, 1, 2, 2, 1 / 3, 9, 7),
]


@pytest.mark.parametrize("cfg", CONFIGS)
@pytest.mark.parametrize("train", [True, False])
def test_fully_open_equals_dense_conv(cfg, train):
    cin, cout, k, s, p, d, frac, H, W = cfg
    conv = torch.nn.Conv2d(cin, cout, k, s, p, d, dtype=torch.float64)
    m = ChannelGatedConv2d.from_conv(conv, base_fraction=frac).train(train)
    _set_threshold(m, float("-inf"))
    x = torch.randn(3, cin, H, W, dtype=torch.float64)
    torch.testing.assert_close(m(x), conv(x), rtol=1e-12, atol=1e-12)
    assert m.last_cost.macs == m.last_cost.dense_macs and m.last_cost.open_fraction == 1.0


@pytest.mark.parametrize("train", [True, False])
def test_fully_closed_is_the_base_path(train):
    m = ChannelGatedConv2d(8, 6, 3, padding=1, dtype=torch.float64).train(train)
    _set_threshold(m, float("inf"))
    x = torch.randn(2, 8, 5, 5, dtype=torch.float64)
    want = F.conv2d(x[:, :2], m.weight[:, :2], m.bias, padding=1)
    torch.testing.assert_close(m(x), want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("cfg", CONFIGS)
def test_inference_equals_masked_dense_reference(cfg):
    cin, cout, k, s, p, d, frac, H, W = cfg
    m = ChannelGatedConv2d(cin, cout, k, s, p, d, base_fraction=frac, dtype=torch.float64).eval()
    x = torch.randn(2, cin, H, W, dtype=torch.float64)
    cp = m.base_channels
    y_p = _conv(m, x[:, :cp], m.weight[:, :cp]) + m.bias.view(1, -1, 1, 1)
    _set_threshold(m, torch.randn(cout, dtype=torch.float64) * 0.5)
    with torch.no_grad():  # running statistics near the batch's, so that some gates open
        m.norm.running_mean.copy_(y_p.mean((0, 2, 3)) + 0.1 * torch.randn(cout, dtype=torch.float64))
        m.norm.running_var.copy_(y_p.var((0, 2, 3)) * torch.empty(cout, dtype=torch.float64).uniform_(0.5, 2))
    z = (y_p - m.norm.running_mean.view(1, -1, 1, 1)) / torch.sqrt(m.norm.running_var.view(1, -1, 1, 1) + m.norm.eps)
    open_ = z > m.threshold.view(1, -1, 1, 1)
    assert 0.1 < open_.double().mean() < 0.9
    want = y_p + open_ * _conv(m, x[:, cp:], m.weight[:, cp:])
    y, flops = _counted_flops(m, x)
    torch.testing.assert_close(y, want, rtol=1e-12, atol=1e-12)
    kk = m.kernel_size[0] * m.kernel_size[1]
    assert m.last_cost.base_macs == y_p.numel() * cp * kk
    assert m.last_cost.conditional_macs == open_.sum().item() * (cin - cp) * kk
    assert flops == m.last_cost.flops  # torch's own counter agrees with the module's


def test_closed_and_half_open_flops_counted_by_torch():
    """The 64->64 3x3 conv at 16x16: torch's FlopCounterMode sees only the MACs the gate allows."""
    m = ChannelGatedConv2d(64, 64, 3, padding=1).eval()
    x = torch.randn(2, 64, 16, 16)
    dense = 2 * (2 * 64 * 16 * 16) * 64 * 9  # 2 FLOPs per MAC, B·O·L·C·k
    _set_threshold(m, float("-inf"))
    _, flops = _counted_flops(m, x)
    assert flops == dense == m.last_cost.dense_flops
    _set_threshold(m, float("inf"))
    _, flops = _counted_flops(m, x)
    assert flops == dense // 4 == m.last_cost.flops  # base path: 16 of 64 channels
    _set_threshold(m, torch.tensor([float("-inf"), float("inf")]).repeat(32))  # every other channel open
    _, flops = _counted_flops(m, x)
    assert flops == dense // 4 + (dense * 3 // 4) // 2 == m.last_cost.flops
    assert m.last_cost.open_fraction == 0.5 and m.last_cost.reduction == pytest.approx(1.6)


def test_training_gate_is_smooth_and_differentiable():
    m = ChannelGatedConv2d(4, 3, 3, padding=1, temperature=0.7, dtype=torch.float64).train()
    x = torch.randn(2, 4, 5, 5, dtype=torch.float64)
    y = m(x)
    y_p = _conv(m, x[:, :1], m.weight[:, :1]) + m.bias.view(1, -1, 1, 1)
    mu, var = y_p.mean((0, 2, 3), keepdim=True), y_p.var((0, 2, 3), unbiased=False, keepdim=True)
    s = torch.sigmoid(((y_p - mu) / torch.sqrt(var + 1e-5) - m.threshold.view(1, -1, 1, 1)) / 0.7)
    torch.testing.assert_close(y, y_p + s * _conv(m, x[:, 1:], m.weight[:, 1:]), rtol=1e-10, atol=1e-10)
    assert m.last_cost.conditional_macs == 3 * 25 * 2 * 3 * 9  # training computes it densely
    y.sum().backward()
    assert m.threshold.grad.abs().min() > 0  # the smooth gate trains the thresholds
    xg = x[:1, :, :3, :3].clone().requires_grad_()
    assert torch.autograd.gradcheck(m, (xg,))  # training mode: batch statistics, deterministic
    torch.testing.assert_close(m.threshold_loss(0.5), ((m.threshold - 0.5) ** 2).sum())
