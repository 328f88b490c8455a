"""Argument and input checks shared by the feed-forward modules (messages name what was expected)."""

from __future__ import annotations

from collections.abc import Iterable

from torch import Tensor


def check_int(name: str, value, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return value


def choose(kind: str, name, choices: Iterable[str]) -> str:
    """Normalise ``name`` (case-insensitive) and check that it is one of ``choices``."""
    choices = list(choices)
    if not isinstance(name, str):
        raise TypeError(f"{kind} must be a str, got {type(name).__name__}")
    key = name.strip().lower()
    if key not in choices:
        listed = ", ".join(repr(c) for c in choices)
        raise ValueError(f"unknown {kind} {name!r}; choose one of {listed}")
    return key


def check_input(x, features: int, name: str, dim: int = -1, min_dims: int = 1, layout: str = "") -> None:
    """Raise if ``x`` is not a floating tensor with ``features`` entries along ``dim``."""
    if not isinstance(x, Tensor):
        raise TypeError(f"input must be a Tensor, got {type(x).__name__}")
    if x.dim() < min_dims:
        layout = f" {layout}" if layout else ""
        raise ValueError(f"expected input with at least {min_dims} dims{layout}, got {x.dim()}-D input")
    if not x.is_floating_point():
        raise TypeError(f"input must be floating point, got {x.dtype}")
    if x.shape[dim] != features:
        where = "the last dim" if dim == -1 else f"dim {dim}"
        raise ValueError(f"expected {name}={features} features in {where}, got {x.shape[dim]}")


# torch's exception types (TypeError for a wrong type, ValueError out of range), as torch.nn.MultiheadAttention,
# Conv1d and Dropout raise them: the checks of the gated attention, residual, convolution and norm
def check_size(name: str, value) -> int:
    """A positive ``int`` (``bool`` is rejected: ``True`` is not a size)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value <= 0:
        raise ValueError(f"{name} must be greater than 0, got {name}={value}")
    return value


def check_number(name: str, value, low: float, high: float | None = None, *, open_low: bool = False) -> float:
    """A real number in ``[low, high]`` (``(low, high]`` with ``open_low``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    below = value <= low if open_low else value < low
    if below or (high is not None and value > high) or value != value:
        lo = "(" if open_low else "["
        span = f"{lo}{low}, {high}]" if high is not None else f"{lo}{low}, inf)"
        raise ValueError(f"{name} must be in {span}, got {value}")
    return float(value)
