"""Parameter creation, initialisation and argument checks shared by the gated RNNs and cells."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from gated.cores import make_layout
from gated.init import VARIANT_INITS


class InputError(RuntimeError, ValueError, TypeError):
    """Bad input to a module's ``forward`` (shape, size, dtype, device).

    torch.nn's RNNs raise RuntimeError for most of these and ValueError or TypeError for some;
    this class is all three, so every ``except`` clause written against torch.nn (or against
    earlier versions of gated, which raised ValueError and TypeError) still catches it.
    """


def _check_int(name: str, value, low: int = 1) -> int:
    """torch.nn.RNNBase's checks and wording: TypeError for a non-int, ValueError below ``low``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} should be of type int, got: {type(value).__name__}")
    if value < low:
        raise ValueError(f"{name} must be greater than zero" if low == 1 else f"{name} must be >= {low}, got {value}")
    return value


def _dtype_mismatch(input_dtype: torch.dtype, weight_dtype: torch.dtype) -> str:
    """The message for an input whose dtype is not the parameters': torch.nn.RNNBase's for a floating
    input (convert either); for an integer, bool or complex input only the conversion of the input,
    since the parameters of a gated RNN must stay real floating point (torch's suggestion,
    ``model.to(torch.int64)``, would not give a working model)."""
    msg = f"RNN input dtype ({input_dtype}) does not match weight dtype ({weight_dtype}). "
    if input_dtype.is_floating_point:
        return msg + f"Convert input: input.to({weight_dtype}), or convert model: model.to({input_dtype})"
    msg += f"Convert input: input.to({weight_dtype})"
    if not input_dtype.is_complex and input_dtype != torch.bool:
        msg += " (integer token ids need an embedding first, e.g. torch.nn.Embedding)"
    return msg


def _check_bool(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} should be of type bool, got: {type(value).__name__}")
    return value


class GatedModule(nn.Module):
    """Base of every gated recurrent module: owns ``layout`` and the torch-named parameters.

    Subclasses set ``core`` (a key of :data:`gated.cores.CORES`) and fill ``_suffixes`` with the
    name suffix of each parameter set (``""`` for a cell, ``"_l0"``, ``"_l0_reverse"``... for a
    sequence module), then call :meth:`reset_parameters`.
    """

    core: str = ""
    _reference_weight = "weight_ih"  # the parameter whose dtype and device inputs must have (sequence modules: _l0's)

    def _setup(self, input_size, hidden_size, bias, variant, t_max, chunk_size, proj_size=0, cell=False):
        """``cell``: torch's RNNCellBase checks less than RNNBase (a bias is taken for its truth
        value, hidden_size 0 is allowed); the cells follow it."""
        self.input_size = _check_int("input_size", input_size)
        self.hidden_size = _check_int("hidden_size", hidden_size, low=0 if cell else 1)
        self.layout = make_layout(self.core, variant, hidden_size, _check_int("chunk_size", chunk_size))
        self.variant = self.layout.variant
        self.bias = bool(bias) if cell else _check_bool("bias", bias)
        if isinstance(proj_size, bool) or not isinstance(proj_size, int) or proj_size < 0:
            raise ValueError("proj_size should be a positive integer or zero to disable projections")
        if proj_size and self.core != "lstm":  # torch's wording for GRU
            raise ValueError("proj_size argument is only supported for LSTM, not "
                             + ("RNN or GRU" if self.core == "gru" else self.core.upper()))
        if proj_size and proj_size >= hidden_size:
            raise ValueError("proj_size has to be smaller than hidden_size")
        self.proj_size = proj_size
        if self.variant.init is not None and not self.bias and not self.variant.has_forget_bias:
            raise ValueError(
                f"variant {self.variant.name!r} initialises the gate biases; it needs bias=True"
            )
        self.t_max = float(hidden_size if t_max is None else t_max)
        if self.variant.init == "chrono" and not self.t_max > 2:
            raise ValueError(f"variant 'C' needs t_max > 2, got {self.t_max!r}")
        self._suffixes: list[str] = []
        self._all_weights: list[list[str]] = []

    @property
    def _state_size(self) -> int:
        """Width of ``h``: ``proj_size`` for an LSTM with projections, else ``hidden_size``."""
        return self.proj_size or self.hidden_size

    def _add_params(self, suffix: str, in_size: int, factory_kwargs: dict) -> None:
        """Register ``weight_ih``/``weight_hh``/``bias_ih``/``bias_hh``/``weight_hr`` (torch's names
        and order) and ``forget_bias``, each + suffix."""
        G, H, P = self.layout.rows, self.hidden_size, self._state_size
        names = ["weight_ih", "weight_hh"] + (["bias_ih", "bias_hh"] if self.bias else [])
        names += ["weight_hr"] if self.proj_size else []
        names += ["forget_bias"] if self.variant.has_forget_bias else []
        shapes = {"weight_ih": (G, in_size), "weight_hh": (G, P), "bias_ih": (G,), "bias_hh": (G,),
                  "weight_hr": (P, H), "forget_bias": (H,)}
        for name in names:
            self.register_parameter(name + suffix, nn.Parameter(torch.empty(shapes[name], **factory_kwargs)))
        self._suffixes.append(suffix)
        self._all_weights.append([name + suffix for name in names])

    @property
    def _flat_weights_names(self) -> list[str]:
        """Every parameter's name in torch's order (layer by layer, forward then reverse)."""
        return [name for names in self._all_weights for name in names]

    @property
    def _flat_weights(self) -> list[Tensor]:
        """The parameters themselves, in ``_flat_weights_names`` order (always the current ones,
        also under ``torch.func.functional_call``)."""
        return [getattr(self, name) for name in self._flat_weights_names]

    @property
    def all_weights(self) -> list[list[nn.Parameter]]:
        """Per layer and direction, its parameters (as ``torch.nn.LSTM.all_weights``)."""
        return [[getattr(self, name) for name in names] for names in self._all_weights]

    def _param(self, name: str):
        """The parameter ``name`` or None, read from ``_parameters`` (where ``Module.__getattr__`` finds
        it, without its cost: a one-step call reads a dozen); a weight that something else provides
        (a parametrization's property, old-style weight_norm's attribute, a buffer) through getattr."""
        p = self._parameters
        if name in p:
            return p[name]
        if name in self.__dict__ or hasattr(type(self), name) or name in self._buffers:
            return getattr(self, name)
        return None

    def _params(self, suffix: str):
        get = self._param
        return (get("weight_ih" + suffix), get("weight_hh" + suffix), get("bias_ih" + suffix), get("bias_hh" + suffix),
                get("forget_bias" + suffix))

    def reset_parameters(self) -> None:
        """torch's init (every parameter ~ U(-1/sqrt(H), 1/sqrt(H)), in the same order, so that
        ``variant="-"`` draws exactly what torch.nn draws under the same seed), then ``b_f = 0``,
        then the variant's initialiser (UGI or chrono)."""
        k = 1.0 / math.sqrt(self.hidden_size) if self.hidden_size > 0 else 0.0  # as torch (cells allow 0)
        for p in self._flat_weights:  # torch's order; LayerNorms (gated/options.py) start at gain 1, bias 0
            nn.init.uniform_(p, -k, k)
        opts = getattr(self, "opts", None)
        if opts is not None:
            opts.reset_parameters(self)
        with torch.no_grad():
            for sfx in self._suffixes:
                fb = getattr(self, "forget_bias" + sfx, None)
                if fb is not None:
                    fb.zero_()
        if self.variant.init is not None:
            VARIANT_INITS[self.variant.init](self)

    def _fail(self, msg: str):
        raise InputError(f"gated.{type(self).__name__}: {msg}")

    def _check_like_weights(self, what: str, t) -> None:
        """``t`` is a tensor of the parameters' dtype (unless autocast is on) and device."""
        if not isinstance(t, Tensor):
            self._fail(f"{what} must be a Tensor, got {type(t).__name__}")
        w = self._param(self._reference_weight)
        # autocast casts floating inputs; an integer one is wrong under autocast too
        if t.dtype != w.dtype and (not t.is_floating_point() or not torch._C._is_any_autocast_enabled()):
            if what == "input":  # torch.nn.RNNBase's wording (without model.to for an integer input)
                self._fail(_dtype_mismatch(t.dtype, w.dtype))
            self._fail(f"{what} dtype ({t.dtype}) does not match weight dtype ({w.dtype})")
        if t.device != w.device:
            self._fail(f"Input and parameter tensors are not at the same device, found {what} tensor at "
                       f"{t.device} and parameter tensor at {w.device}")

    def extra_repr(self) -> str:
        """torch's repr (every non-default argument) and the variant, e.g.
        ``LSTM(10, 20, num_layers=2, batch_first=True, variant='UR')``."""
        s = f"{self.input_size}, {self.hidden_size}"
        defaults = {"proj_size": 0, "num_layers": 1, "bias": True, "batch_first": False, "dropout": 0.0,
                    "bidirectional": False}
        for name, default in defaults.items():
            value = getattr(self, name, default)
            if value != default:
                s += f", {name}={value}"
        s += f", variant={self.variant.name!r}"
        if self.variant.init == "chrono":
            s += f", t_max={self.t_max:g}"
        if self.variant.auxiliary == "master":
            s += f", chunk_size={self.layout.chunk_size}"
        if getattr(self, "backend", "auto") != "auto":
            s += f", backend={self.backend!r}"
        opts = getattr(self, "opts", None)
        if opts is not None:
            s += "".join(f", {arg}" for arg in opts.repr_args())
        return s
