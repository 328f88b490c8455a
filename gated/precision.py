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
- **How it computes**: in float32. The parameters and inputs are cast to float32 (a differentiable
  cast, so gradients return in the parameters' dtype), the layer runs on the float32 kernels with
  autocast switched off inside, and the results are cast to the returned dtype. So the gate maths,
  the cell state and every saved activation are float32, and a saturated forget gate (above about
  0.998, which bfloat16 rounds to 1.0) keeps its gradient. On CPUs without native bfloat16 matrix
  instructions (AVX2, AVX-512 without BF16) this is also the fastest path there is: torch's
  bfloat16 matmul is emulated there, about 110x slower than float32 on the AVX2 machine of BENCHMARKS.md.
  On CPUs with AMX or AVX512-BF16, bfloat16 GEMMs would be faster; gated has no such path yet, and
  says so once in the log when it runs there.

CUDA tensors, and CPU tensors given to ``backend="triton"`` (Triton's interpreter), are not handled
here: the Triton backend runs its own mixed precision (gated/backends/triton_gpu.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging

import torch
from torch import Tensor

__all__ = ["Plan", "plan", "native_bf16"]

LOW = (torch.bfloat16, torch.float16)
_said: set[str] = set()


@dataclasses.dataclass(frozen=True)
class Plan:
    """How one call runs: ``compute`` is the dtype of the kernels, ``result`` the returned dtype."""

    compute: torch.dtype
    result: torch.dtype

    def cast(self, t):
        """``t`` in the compute dtype (a float32 tensor is returned as is, None stays None, a tuple
        is cast item by item: the scan cores' extra parameters, e.g. HGRN's ``(lower bound, b_f)``)."""
        if isinstance(t, tuple):
            return tuple(self.cast(v) for v in t)
        return t if t is None or t.dtype == self.compute else t.to(self.compute)

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


def _note(dtype: torch.dtype) -> None:
    isa = native_bf16()
    key = f"{isa}:{dtype}"
    if isa is None or key in _said or torch.compiler.is_compiling():
        return
    _said.add(key)
    logging.getLogger("gated").warning(
        "gated: %s on this CPU runs the float32 kernels (results returned in %s); this CPU has %s, whose "
        "low-precision GEMMs gated does not use yet, so torch.nn.LSTM's bfloat16 path can be faster here",
        dtype, dtype, isa)


def plan(x: Tensor, weight_dtype: torch.dtype, cell: bool = False) -> Plan | None:
    """The plan of a call on input ``x`` with parameters of ``weight_dtype``, or None when the call
    runs in its own dtype (float32 or float64 without autocast, or any CUDA tensor)."""
    if x.device.type != "cpu" or weight_dtype == torch.float64:
        return None  # autocast leaves float64 alone, as torch does
    if torch.is_autocast_enabled("cpu"):
        dtype = torch.get_autocast_dtype("cpu")
        if dtype in LOW:
            _note(dtype)
            return Plan(torch.float32, torch.float32 if cell and weight_dtype == torch.float32 else dtype)
    if weight_dtype in LOW:
        _note(weight_dtype)
        return Plan(torch.float32, weight_dtype)
    return None


def region(p: Plan | None):
    """The context a call computes in: ``p.region()``, or nothing without a plan."""
    return contextlib.nullcontext() if p is None else p.region()
