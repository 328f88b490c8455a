"""bfloat16 and float16 on the CPU: low-precision parameters and ``torch.autocast("cpu")``.

One policy for every sequence module (``gated.LSTM``, ``GRU``, ``MGU`` and the scan cores) and cell:

- **What a call returns** follows torch. Under ``torch.autocast("cpu", dtype=torch.bfloat16)`` (or
  ``float16``) with float32 (or low-precision) parameters, a sequence module returns its output and
  final states in the autocast dtype, as ``torch.nn.LSTM`` does there (its oneDNN LSTM returns
  ``output, h_n, c_n`` in bfloat16). ``torch.nn.GRU`` ignores CPU autocast and returns float32;
  ``gated.GRU`` and ``MGU`` return the autocast dtype like gated's LSTM, so every gated core behaves
  the same. A cell under autocast returns float32, as ``torch.nn.LSTMCell``/``GRUCell`` do. With
  bfloat16/float16 parameters (``module.bfloat16()``) and no autocast, the input must have the
  parameters' dtype (torch's check) and outputs, states and gradients come back in it.
- **How it computes**: the gate maths, the cell state and every saved activation in float32.
  The parameters and inputs are cast to float32 (a differentiable cast, so gradients return in the
  parameters' dtype), the layer runs on the float32 kernels with autocast switched off inside, and
  the results are cast to the returned dtype. So a saturated forget gate (above about 0.998, which
  bfloat16 rounds to 1.0) keeps its gradient.
- **The matmuls** of the recurrent layers (``gated.LSTM``, ``GRU``, ``MGU``) in bfloat16 on CPUs with
  native bfloat16 matrix instructions (AMX, AVX512-BF16): ``W_ih`` and ``W_hh`` are cast to bfloat16
  (:attr:`Plan.gemm`) and the fused kernels run ``x W_ih^T`` and each step's ``h_{t-1} W_hh^T`` on
  oneDNN's bfloat16 GEMMs (float32 accumulation, the product rounded to bfloat16 as torch.nn.LSTM's
  bfloat16 kernels round it), adding the products to float32 pre-activations; the biases, the
  forget bias, the gate maths and the states stay float32, as above. :func:`set_bf16_gemm`
  chooses: ``"auto"`` (the default; ``GATED_BF16_GEMM`` sets it at import) takes them where the CPU
  has the instructions, ``"off"`` keeps float32 matmuls everywhere (then autocast's results are
  float32's rounded, bit for bit), ``"on"`` takes them everywhere (on CPUs without the
  instructions torch emulates bfloat16 matmuls, about 110x slower than float32 on the AVX2
  machine of BENCHMARKS.md: for tests). float16 always runs float32 matmuls. The reference backend
  (the oracle) computes such calls in float32; the scan cores and the cells always do.

CUDA tensors, and CPU tensors given to ``backend="triton"`` (Triton's interpreter), are not handled
here: the Triton backend runs its own mixed precision (gated/backends/triton_gpu.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import os

import torch
from torch import Tensor

__all__ = ["Plan", "plan", "native_bf16", "set_bf16_gemm", "get_bf16_gemm"]

LOW = (torch.bfloat16, torch.float16)
_said: set[str] = set()


@dataclasses.dataclass(frozen=True)
class Plan:
    """How one call runs: ``compute`` is the dtype of the kernels, ``result`` the returned dtype."""

    compute: torch.dtype
    result: torch.dtype
    gemm: torch.dtype | None = None  # the recurrent layers' matmul operands, if not ``compute``

    def cast(self, t):
        """``t`` in the compute dtype (a float32 tensor is returned as is, None stays None, a tuple
        is cast item by item: the scan cores' extra parameters, e.g. HGRN's ``(lower bound, b_f)``)."""
        if isinstance(t, tuple):
            return tuple(self.cast(v) for v in t)
        return t if t is None or t.dtype == self.compute else t.to(self.compute)

    def operand(self, w: Tensor) -> Tensor:
        """A recurrent layer's matmul weight (``W_ih``, ``W_hh``) in the :attr:`gemm` dtype."""
        return w if self.gemm is None or w.dtype == self.gemm else w.to(self.gemm)

    def back(self, t: Tensor) -> Tensor:
        """A result in the returned dtype."""
        return t if t.dtype == self.result else t.to(self.result)

    def region(self):
        """Where the float32 computation runs: CPU autocast off, so that the reference backend's
        matmuls stay float32 like the fused kernels'."""
        return torch.autocast("cpu", enabled=False)


@functools.cache
def native_bf16() -> str | None:
    """The CPU's native bfloat16 matrix instructions (``"AMX"``, ``"AVX512-BF16"``) or None."""
    cpu = getattr(torch, "cpu", None)
    try:
        if cpu._is_amx_tile_supported():
            return "AMX"
        if cpu._is_avx512_bf16_supported():
            return "AVX512-BF16"
    except AttributeError:  # an older torch without these probes
        pass
    return None


_MODES = ("auto", "on", "off")
_gemm_mode = {"mode": os.environ.get("GATED_BF16_GEMM", "auto")}
if _gemm_mode["mode"] not in _MODES:
    raise ValueError(f"GATED_BF16_GEMM must be one of {', '.join(_MODES)}, got {_gemm_mode['mode']!r}")


def set_bf16_gemm(mode: str) -> None:
    """Where the recurrent layers run their matmuls in bfloat16 under bfloat16 autocast or with
    bfloat16 parameters: ``"auto"`` on CPUs with AMX or AVX512-BF16, ``"on"`` everywhere, ``"off"``
    nowhere (float32 matmuls). See the module docstring."""
    if mode not in _MODES:
        raise ValueError(f"set_bf16_gemm: mode must be one of {', '.join(map(repr, _MODES))}, got {mode!r}")
    _gemm_mode["mode"] = mode


def get_bf16_gemm() -> str:
    """The current :func:`set_bf16_gemm` mode."""
    return _gemm_mode["mode"]


def _gemm(dtype: torch.dtype) -> torch.dtype | None:
    """The matmul operand dtype of a call in ``dtype`` (None: the compute dtype)."""
    mode = _gemm_mode["mode"]
    if dtype == torch.bfloat16 and (mode == "on" or (mode == "auto" and native_bf16() is not None)):
        return torch.bfloat16
    _note(dtype)
    return None


def _note(dtype: torch.dtype) -> None:
    isa = native_bf16()
    key = f"{isa}:{dtype}"
    if isa is None or key in _said or torch.compiler.is_compiling():
        return
    _said.add(key)
    if dtype == torch.float16:
        why = "gated has no float16 matmuls; under bfloat16 autocast it would use them"
    else:
        why = "gated.precision.set_bf16_gemm('off'); 'auto' would use them"
    logging.getLogger("gated").warning(
        "gated: %s on this CPU runs float32 matmuls, though the CPU has %s bfloat16 matmuls (%s)", dtype, isa, why)


def plan(x: Tensor, weight_dtype: torch.dtype, cell: bool = False) -> Plan | None:
    """The plan of a call on input ``x`` with parameters of ``weight_dtype``, or None when the call
    runs in its own dtype (float32 or float64 without autocast, or any CUDA tensor)."""
    if not x.is_cpu or weight_dtype == torch.float64:
        return None  # autocast leaves float64 alone, as torch does
    if torch._C._is_any_autocast_enabled() and torch.is_autocast_enabled("cpu"):  # the first, cheap, per call
        dtype = torch.get_autocast_dtype("cpu")
        if dtype in LOW:
            result = torch.float32 if cell and weight_dtype == torch.float32 else dtype
            return Plan(torch.float32, result, None if cell else _gemm(dtype))
    if weight_dtype in LOW:
        return Plan(torch.float32, weight_dtype, None if cell else _gemm(weight_dtype))
    return None


def region(p: Plan | None):
    """The context a call computes in: ``p.region()``, or nothing without a plan."""
    return contextlib.nullcontext() if p is None else p.region()
