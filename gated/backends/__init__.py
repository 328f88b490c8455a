"""Backends: functions that run one layer in one direction over a sequence.

Every backend has the signature of :func:`gated.backends.reference.run_layer` and reads the same
weights in the same layout:

- ``"reference"``: a Python loop over time (:mod:`gated.backends.reference`), the oracle;
- ``"fused_cpu"``: the time loop and gate maths in C++ (:mod:`gated.backends.fused_cpu`), for the
  plain and refine variants in float32/float64 on the CPU, built on first use;
- ``"triton"``: Triton kernels for the gate maths and cuBLAS for the matmuls
  (:mod:`gated.backends.triton_gpu`), for the same variants on CUDA tensors (and on CPU tensors in
  Triton's interpreter, ``TRITON_INTERPRET=1``, for tests), when triton is installed.

``"auto"`` picks ``fused_cpu`` for CPU tensors and ``triton`` for CUDA tensors where they can run
the call and otherwise the reference, logging each reason for a fallback once. Under
``torch.compile`` the fused kernels are opaque operators with fake implementations
(gated/backends/_ops.py); under ``torch.export``, ``torch.jit.trace``, ONNX export, torch.func
transforms and forward-mode AD ``"auto"`` uses the reference, whose plain torch ops all of those
understand (and an exported program then needs no extension).
"""

from __future__ import annotations

import logging

import torch

from gated.backends import fused_cpu, reference, triton_gpu
from gated.backends._context import _forward_ad, _onnx_exporting, _traced, _transformed, recording  # noqa: F401

__all__ = ["BACKENDS", "resolve", "check_name", "recording"]

logger = logging.getLogger("gated")

BACKENDS = {"reference": reference.run_layer, "fused_cpu": fused_cpu.run_layer, "triton": triton_gpu.run_layer}
_CHECKS = {"fused_cpu": fused_cpu.why_not, "triton": triton_gpu.why_not}
_logged: set[str] = set()


def check_name(name: str) -> str:
    if name != "auto" and name not in BACKENDS:
        choices = ", ".join(repr(k) for k in ["auto", *BACKENDS])
        raise ValueError(f"unknown backend {name!r}; choose one of {choices}")
    return name


def _log_once(msg: str) -> None:
    if msg not in _logged:
        _logged.add(msg)
        logger.warning(msg)


_SLOWER = {"fused_cpu": ("the fused kernels", "fused kernel"), "triton": ("the Triton kernels", "Triton kernel")}


def resolve(name: str, layout, x: torch.Tensor):
    """The ``run_layer`` function that runs ``layout`` on input ``x`` (``name``: "auto" or a backend).
    Every backend runs every cell option (gated/options.py), so only the layout and the input decide."""
    check_name(name)
    if name != "auto":
        reason = _CHECKS[name](layout, x) if name in _CHECKS else None
        if reason is None and name in ("fused_cpu", "triton") and _forward_ad():
            reason = "forward-mode AD (torch.func.jvp, forward_ad.dual_level) needs backend='reference' or 'auto'"
        if reason is not None:
            raise RuntimeError(f"backend {name!r} cannot run this call: {reason}")
        return BACKENDS[name]
    if _traced():
        # plain torch ops, which an exported program runs without the extension and which ONNX
        # (whose exporters go through torch.export or torch.jit.trace) can translate
        return BACKENDS["reference"]
    fast = "triton" if x.device.type == "cuda" else "fused_cpu"
    if torch.compiler.is_compiling():  # the fused ops are opaque calls with fake implementations
        return BACKENDS[fast] if _CHECKS[fast](layout, x) is None else BACKENDS["reference"]
    if _transformed():
        _log_once("gated: using the reference backend under a torch.func transform or forward-mode AD "
                  "(it composes with every transform; the fused kernels have no forward-mode derivative)")
        return BACKENDS["reference"]
    reason = _CHECKS[fast](layout, x)
    if reason is None:
        return BACKENDS[fast]
    kernels, kernel = _SLOWER[fast]
    _log_once(f"gated: using the reference backend (a Python loop over time, slower than {kernels}) "
              f"for {layout.core.name.upper()}: no {kernel} for {reason}")
    return BACKENDS["reference"]
