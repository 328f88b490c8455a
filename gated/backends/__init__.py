"""Backends: functions that run one layer in one direction over a sequence.

Every backend has the signature of :func:`gated.backends.reference.run_layer` and reads the same
weights in the same layout. ``"auto"`` picks the fastest backend that supports the call and logs
the choice once; ``"reference"`` forces the Python loop.
"""

from __future__ import annotations

import logging

import torch

from gated.backends import reference

__all__ = ["BACKENDS", "resolve"]

logger = logging.getLogger("gated")

BACKENDS = {"reference": reference.run_layer}
_logged: set[str] = set()


def resolve(name: str):
    """Return the ``run_layer`` function for ``name`` (``"auto"`` or a key of :data:`BACKENDS`)."""
    if name == "auto":
        # No fused backend is registered yet: say so once instead of silently running slow.
        # (not while torch.compile traces: dynamo cannot trace a logger call)
        if "auto" not in _logged and not torch.compiler.is_compiling():
            _logged.add("auto")
            logger.warning(
                "gated: no fast backend available; using the reference backend "
                "(a Python loop over time, slower than torch.nn's fused kernels)"
            )
        return BACKENDS["reference"]
    if name not in BACKENDS:
        choices = ", ".join(repr(k) for k in ["auto", *BACKENDS])
        raise ValueError(f"unknown backend {name!r}; choose one of {choices}")
    return BACKENDS[name]
