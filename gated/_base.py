"""Parameter creation, initialisation and argument checks shared by the gated RNNs and cells."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from gated.cores import make_layout
from gated.init import VARIANT_INITS


def _check_int(name: str, value, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return value


class GatedModule(nn.Module):
    """Base of every gated recurrent module: owns ``layout`` and the torch-named parameters.

    Subclasses set ``core`` (a key of :data:`gated.cores.CORES`) and fill ``_suffixes`` with the
    name suffix of each parameter set (``""`` for a cell, ``"_l0"``, ``"_l0_reverse"``... for a
    sequence module), then call :meth:`reset_parameters`.
    """

    core: str = ""

    def _setup(self, input_size, hidden_size, bias, variant, t_max, chunk_size):
        self.input_size = _check_int("input_size", input_size)
        self.hidden_size = _check_int("hidden_size", hidden_size)
        self.layout = make_layout(self.core, variant, hidden_size, _check_int("chunk_size", chunk_size))
        self.variant = self.layout.variant
        self.bias = bool(bias)
        if self.variant.init is not None and not self.bias and not self.variant.has_forget_bias:
            raise ValueError(
                f"variant {self.variant.name!r} initialises the gate biases; it needs bias=True"
            )
        self.t_max = float(hidden_size if t_max is None else t_max)
        if self.variant.init == "chrono" and not self.t_max > 2:
            raise ValueError(f"variant 'C' needs t_max > 2, got {self.t_max!r}")
        self._suffixes: list[str] = []

    def _add_params(self, suffix: str, in_size: int, factory_kwargs: dict) -> None:
        """Register ``weight_ih``/``weight_hh``/``bias_ih``/``bias_hh`` (+ ``forget_bias``) + suffix."""
        G, H = self.layout.rows, self.hidden_size
        new = lambda *shape: nn.Parameter(torch.empty(*shape, **factory_kwargs))  # noqa: E731
        self.register_parameter("weight_ih" + suffix, new(G, in_size))
        self.register_parameter("weight_hh" + suffix, new(G, H))
        if self.bias:
            self.register_parameter("bias_ih" + suffix, new(G))
            self.register_parameter("bias_hh" + suffix, new(G))
        if self.variant.has_forget_bias:
            self.register_parameter("forget_bias" + suffix, new(H))
        self._suffixes.append(suffix)

    def _params(self, suffix: str):
        get = lambda name: getattr(self, name + suffix, None)  # noqa: E731
        return get("weight_ih"), get("weight_hh"), get("bias_ih"), get("bias_hh"), get("forget_bias")

    def reset_parameters(self) -> None:
        """torch's init (every parameter ~ U(-1/sqrt(H), 1/sqrt(H)), in the same order, so that
        ``variant="-"`` draws exactly what torch.nn draws under the same seed), then ``b_f = 0``,
        then the variant's initialiser (UGI or chrono)."""
        k = 1.0 / math.sqrt(self.hidden_size)
        for p in self.parameters():
            nn.init.uniform_(p, -k, k)
        with torch.no_grad():
            for sfx in self._suffixes:
                fb = getattr(self, "forget_bias" + sfx, None)
                if fb is not None:
                    fb.zero_()
        if self.variant.init is not None:
            VARIANT_INITS[self.variant.init](self)

    def _check_tensor(self, what: str, t, shape: tuple[int, ...]) -> None:
        name = type(self).__name__
        if not isinstance(t, Tensor):
            raise TypeError(f"gated.{name}: {what} must be a Tensor, got {type(t).__name__}")
        w = self.weight_hh if hasattr(self, "weight_hh") else self.weight_hh_l0
        if tuple(t.shape) != shape:
            raise ValueError(f"gated.{name}: expected {what} of shape {shape}, got {tuple(t.shape)}")
        if t.dtype != w.dtype:
            raise TypeError(f"gated.{name}: {what} has dtype {t.dtype}, the module's parameters {w.dtype}")
        if t.device != w.device:
            raise ValueError(f"gated.{name}: {what} is on {t.device}, the module's parameters on {w.device}")

    def _check_input(self, x: Tensor, dims: tuple[int, ...], names: str) -> None:
        name = type(self).__name__
        if not isinstance(x, Tensor):
            raise TypeError(f"gated.{name}: input must be a Tensor or PackedSequence, got {type(x).__name__}")
        if x.dim() not in dims:
            raise ValueError(f"gated.{name}: expected input with {names}, got {x.dim()}-D input of shape {tuple(x.shape)}")
        if x.shape[-1] != self.input_size:
            raise ValueError(
                f"gated.{name}: expected input_size={self.input_size} features in the last dim, got {x.shape[-1]}"
            )
        if not x.is_floating_point():
            raise TypeError(f"gated.{name}: input must be floating point, got {x.dtype}")
        self._check_tensor("input", x, tuple(x.shape))

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}, variant={self.variant.name!r}"
        if not self.bias:
            s += ", bias=False"
        return s
