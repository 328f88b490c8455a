"""Two different things called "channel gating", under two names.

- :class:`SqueezeExcite`: the SE block (Hu, Shen, Sun, CVPR 2018) scales each channel by a gate
  computed from the whole feature map: ``y = x ⊙ σ(W2 act(W1 mean_hw(x) + b1) + b2)``.
- :class:`ChannelGatedConv2d`: the dynamic-pruning convolution of Hua, Zhou, De Sa, Zhang, Suh,
  "Channel Gating Neural Networks" (NeurIPS 2019). A base path convolves the first
  ``base_channels`` input channels into a partial sum ``y_p``; a per-activation gate
  ``s = 1[norm(y_p) > Δ]`` (``Δ`` a learnable per-output-channel threshold, ``norm`` a BatchNorm
  without affine) decides where the conditional path over the remaining channels is computed:
  ``y = y_p + s ⊙ (W_r ∗ x_r)``. Training uses ``s = σ((norm(y_p) − Δ) / τ)`` and computes both
  paths densely; inference computes ``W_r ∗ x_r`` only at open ``(b, o, h, w)`` and counts the
  multiply-accumulates it performed (:attr:`ChannelGatedConv2d.last_cost`).

Glossary: ``B`` batch, ``C`` in_channels (``Cp`` base, ``Cr`` rest), ``O`` out_channels,
``k`` kernel area, ``L`` output positions ``Ho·Wo``, ``K = Cr·k``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gated.feedforward._checks import check_input, check_int
from gated.feedforward.glu import get_activation

__all__ = ["SqueezeExcite", "ChannelGatedConv2d", "ConvCost"]


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation channel gate: ``y = x ⊙ σ(W2 act(W1 mean(x) + b1) + b2)``.

    Parameters: ``reduce`` (Linear ``C -> S``), ``expand`` (Linear ``S -> C``).

    Args:
        channels: ``C``.
        squeeze_channels: ``S`` (default ``max(1, C // 16)``, Hu et al.'s reduction 16).
        activation: key of :data:`gated.feedforward.glu.ACTIVATIONS` between the two layers.

    Shape:
        ``(B, C, *spatial) -> (B, C, *spatial)``, at least one spatial dim.
    """

    def __init__(self, channels: int, squeeze_channels: int | None = None, activation: str = "relu",
                 *, device=None, dtype=None) -> None:
        super().__init__()
        fk = {"device": device, "dtype": dtype}
        self.channels = check_int("channels", channels)
        squeeze = max(1, channels // 16) if squeeze_channels is None else squeeze_channels
        self.squeeze_channels = check_int("squeeze_channels", squeeze)
        self.act = get_activation(activation)
        self.reduce = nn.Linear(channels, self.squeeze_channels, **fk)
        self.expand = nn.Linear(self.squeeze_channels, channels, **fk)

    def gate(self, x: Tensor) -> Tensor:
        """The channel gate ``σ(...)``: ``(B, C, *spatial) -> (B, C)``."""
        check_input(x, self.channels, "channels", dim=1, min_dims=3, layout="(B, C, *spatial)")
        s = x.mean(dim=tuple(range(2, x.dim())))  # (B, C)
        return torch.sigmoid(self.expand(self.act(self.reduce(s))))

    def forward(self, x: Tensor) -> Tensor:
        g = self.gate(x)
        return x * g.view(*g.shape, *([1] * (x.dim() - 2)))

    def extra_repr(self) -> str:
        return f"{self.channels}, squeeze_channels={self.squeeze_channels}, activation={self.act.name!r}"


@dataclass(frozen=True)
class ConvCost:
    """Multiply-accumulates of one :class:`ChannelGatedConv2d` call (bias adds and gating excluded).

    Attributes:
        base_macs: the base path, ``B·O·L·Cp·k``.
        conditional_macs: the conditional path as performed: ``(open activations)·Cr·k`` at
            inference, ``B·O·L·Cr·k`` in training (computed densely).
        dense_macs: a dense convolution, ``B·O·L·C·k``.
        open_fraction: share of output activations with an open gate (training: the mean of ``s``).
    """

    base_macs: int
    conditional_macs: int
    dense_macs: int
    open_fraction: float

    @property
    def macs(self) -> int:
        return self.base_macs + self.conditional_macs

    @property
    def flops(self) -> int:
        """``2 · macs`` (one multiply and one add each), the convention of ``torch.utils.flop_counter``."""
        return 2 * self.macs

    @property
    def dense_flops(self) -> int:
        return 2 * self.dense_macs

    @property
    def reduction(self) -> float:
        """``dense / performed``, the FLOP-reduction factor Hua et al. report."""
        return self.dense_macs / self.macs


def _pair(name: str, v, low: int) -> tuple[int, int]:
    v = (v, v) if isinstance(v, int) else tuple(v)
    if len(v) != 2:
        raise ValueError(f"{name} must be an int or a pair of ints, got {v!r}")
    return check_int(name, v[0], low), check_int(name, v[1], low)


class ChannelGatedConv2d(nn.Module):
    """Channel-gated 2-D convolution (Hua et al. 2019): a dense conv that skips the conditional
    path wherever the gate on the base path's partial sum is closed. See the module docstring.

    Parameters: ``weight`` ``(O, C, kh, kw)`` and ``bias`` ``(O,)``, exactly ``nn.Conv2d``'s (the
    base path uses ``weight[:, :Cp]``, the conditional path ``weight[:, Cp:]``; the bias joins the
    base path); ``threshold`` ``Δ`` ``(O,)``; ``norm``, a ``BatchNorm2d(O, affine=False)`` whose
    running statistics normalise the partial sum at inference.

    Args:
        in_channels, out_channels, kernel_size, stride, padding, dilation, bias: as ``nn.Conv2d``
            (``groups=1``, zero padding).
        base_fraction: share of the input channels in the base path; ``in_channels·base_fraction``
            must be a whole number in ``[1, in_channels)``. Default 1/4 (Hua et al.'s 4 groups).
        threshold: initial ``Δ`` (in units of the normalised partial sum).
        temperature: ``τ`` of the training gate ``σ((norm(y_p) − Δ)/τ)`` (0.5: slope 2).

    Shape:
        ``(B, C, H, W) -> (B, O, Ho, Wo)`` as ``nn.Conv2d``. Pass the output through the usual
        BatchNorm and ReLU, as in Hua et al. (the gate replaces neither).

    Attributes:
        last_cost: :class:`ConvCost` of the latest call.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 bias: bool = True, *, base_fraction: float = 0.25, threshold: float = 0.0,
                 temperature: float = 0.5, device=None, dtype=None) -> None:
        super().__init__()
        fk = {"device": device, "dtype": dtype}
        self.in_channels = check_int("in_channels", in_channels)
        self.out_channels = check_int("out_channels", out_channels)
        self.kernel_size = _pair("kernel_size", kernel_size, 1)
        self.stride, self.padding = _pair("stride", stride, 1), _pair("padding", padding, 0)
        self.dilation = _pair("dilation", dilation, 1)
        cp = in_channels * base_fraction
        if not (isinstance(base_fraction, (int, float)) and float(cp).is_integer() and 1 <= cp < in_channels):
            raise ValueError(
                f"base_fraction={base_fraction!r} of in_channels={in_channels} must give a whole number of "
                f"base channels in [1, {in_channels}), got {cp!r}"
            )
        if not (isinstance(temperature, (int, float)) and temperature > 0):
            raise ValueError(f"temperature must be a number > 0, got {temperature!r}")
        self.base_channels, self.temperature = int(cp), float(temperature)
        conv = nn.Conv2d(in_channels, out_channels, self.kernel_size, bias=bias, **fk)  # torch's init
        self.weight = nn.Parameter(conv.weight.detach())
        self.bias = nn.Parameter(conv.bias.detach()) if bias else None
        self.threshold = nn.Parameter(torch.full((out_channels,), float(threshold), **fk))
        self.norm = nn.BatchNorm2d(out_channels, affine=False, **fk)
        self.last_cost: ConvCost | None = None

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, **kwargs) -> ChannelGatedConv2d:
        """A gated copy of ``conv`` (same weight and bias); ``kwargs`` go to the constructor."""
        if conv.groups != 1 or conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise ValueError("from_conv needs groups=1, padding_mode='zeros' and integer padding")
        m = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                conv.dilation, conv.bias is not None, device=conv.weight.device, dtype=conv.weight.dtype, **kwargs)
        m.load_state_dict(conv.state_dict(), strict=False)
        return m

    def _conv(self, x: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
        return F.conv2d(x, w, b, self.stride, self.padding, self.dilation)

    def gate_logits(self, y_p: Tensor) -> Tensor:
        """``norm(y_p) − Δ``: the gate is open where this is > 0. ``(B, O, Ho, Wo)``."""
        return self.norm(y_p) - self.threshold.view(1, -1, 1, 1)

    def forward(self, x: Tensor) -> Tensor:
        if isinstance(x, Tensor) and x.dim() != 4:
            raise ValueError(f"expected input with 4 dims (B, C, H, W), got {x.dim()}-D input")
        check_input(x, self.in_channels, "in_channels", dim=1)
        cp = self.base_channels
        x_p, x_r = x[:, :cp], x[:, cp:]
        w_p, w_r = self.weight[:, :cp], self.weight[:, cp:]
        y_p = self._conv(x_p, w_p, self.bias)  # (B, O, Ho, Wo)
        z = self.gate_logits(y_p)
        base = y_p.numel() * w_p[0].numel()
        dense = y_p.numel() * self.weight[0].numel()
        if self.training:
            s = torch.sigmoid(z / self.temperature)
            y_r = self._conv(x_r, w_r, None)  # (B, O, Ho, Wo), all of it
            self.last_cost = ConvCost(base, y_r.numel() * w_r[0].numel(), dense, s.mean().item())
            return y_p + s * y_r
        open_ = z > 0  # (B, O, Ho, Wo)
        y_r, cond = self._sparse_conditional(x_r, w_r, open_)
        self.last_cost = ConvCost(base, cond, dense, open_.float().mean().item())
        return y_p + y_r

    def _sparse_conditional(self, x_r: Tensor, w_r: Tensor, open_: Tensor) -> tuple[Tensor, int]:
        """``s ⊙ (W_r ∗ x_r)`` computed at open activations only; returns it and the MACs performed."""
        B, O, Ho, Wo = open_.shape
        out = x_r.new_zeros(O, B * Ho * Wo)  # (O, B·L)
        if not open_.any():
            return out.view(O, B, Ho, Wo).transpose(0, 1), 0
        cols = F.unfold(x_r, self.kernel_size, self.dilation, self.padding, self.stride)  # (B, K, L)
        cols = cols.transpose(1, 2).reshape(B * Ho * Wo, -1)  # (B·L, K): one row per output position
        rows_open = open_.permute(1, 0, 2, 3).reshape(O, B * Ho * Wo)  # (O, B·L)
        w = w_r.reshape(O, -1)  # (O, K)
        macs = 0
        for o in range(O):  # one output channel at a time: gather its open positions, one matmul
            rows = rows_open[o].nonzero().squeeze(1)  # (n,)
            if rows.numel() == 0:
                continue
            picked = cols.index_select(0, rows)  # (n, K)
            out[o].index_copy_(0, rows, (picked @ w[o].unsqueeze(1)).squeeze(1))  # (n,) into (B·L,)
            macs += picked.shape[0] * picked.shape[1]
        return out.view(O, B, Ho, Wo).transpose(0, 1), macs

    def threshold_loss(self, target: float) -> Tensor:
        """Hua et al.'s target-threshold penalty ``Σ_o (Δ_o − target)²``; add ``λ·`` it to the loss
        to pull the thresholds (and so the sparsity) toward ``target``."""
        return ((self.threshold - target) ** 2).sum()

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, dilation={self.dilation}, bias={self.bias is not None}, "
                f"base_channels={self.base_channels}, temperature={self.temperature}")
