"""What is recording or transforming the current call (export, tracing, ONNX export, torch.compile,
torch.func, forward-mode AD): the questions :func:`gated.backends.resolve` and the fused paths ask
before taking a C++ kernel. Apart from the package's ``__init__`` so that the backends can import
it without importing each other."""

from __future__ import annotations

import torch


def _forward_ad() -> bool:
    return torch.autograd.forward_ad._current_level >= 0


_onnx: list = []  # the function that says whether an ONNX export is running (_onnx_exporting)


def _onnx_exporting() -> bool:
    """``torch.onnx.is_in_onnx_export()`` without its two imports on every call (each call of a
    module asks): its flags read directly, or the function itself where they have moved, and
    under torch.compile (dynamo folds that function, but will not trace the flags' properties)."""
    if torch.compiler.is_compiling():
        return torch.onnx.is_in_onnx_export()
    if not _onnx:
        try:
            from torch.onnx._internal.exporter import _flags
            from torch.onnx._internal.torchscript_exporter._globals import GLOBALS

            _onnx.append(lambda: bool(GLOBALS.in_onnx_export or _flags._is_onnx_exporting))
            _onnx[0]()
        except (ImportError, AttributeError):
            _onnx[:] = [torch.onnx.is_in_onnx_export]
    return _onnx[0]()


def _traced() -> bool:
    """torch.export, torch.jit.trace or ONNX export is recording the call."""
    return torch.compiler.is_exporting() or torch.jit.is_tracing() or _onnx_exporting()


def _transformed() -> bool:
    """A torch.func transform or forward-mode AD is active."""
    return torch._C._functorch.peek_interpreter_stack() is not None or _forward_ad()


def recording() -> bool:
    """Export, tracing, ONNX export, torch.compile, a torch.func transform or forward-mode AD is
    active: :func:`resolve`'s answer then depends on more than the layout, device and dtype."""
    return torch.compiler.is_compiling() or _traced() or _transformed()


def builds_graph(*tensors) -> bool:
    """Whether a call on these tensors (None for absent ones) records an autograd graph: grad mode
    is on and one of them requires grad."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)
