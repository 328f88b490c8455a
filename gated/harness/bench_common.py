"""What every ``gated bench`` table shares (the recurrent grid, the scan cores, the cell options):
shape parsing, timing, the train and inference steps, the commit for headers, the cell formats."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import torch


def _parse_shape(s: str) -> tuple[int, int, int, int]:
    try:
        T, B, I, H = (int(v) for v in s.lower().split("x"))
    except ValueError:
        raise ValueError(f"shape {s!r} must be TxBxIxH, e.g. 256x64x32x256") from None
    return T, B, I, H


def ms(v) -> str:
    """A time in seconds as a table cell in milliseconds ("-": not measured)."""
    return "-" if v is None else f"{v * 1e3:.1f}"


def ratio(a, b) -> str:
    """``a / b`` as a table cell ("-" when either was not measured)."""
    return "-" if a is None or b is None else f"{a / b:.2f}"


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _time(fn, repeats: int, device: str) -> float:
    fn()  # warm-up (and first-use builds)
    best = float("inf")
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return best


def _time_together(fns: dict, repeats: int, device: str) -> dict:
    """The best of ``repeats`` calls of each of ``fns`` (name -> callable), in seconds, timed in
    rounds that call each once (the order reversed every other round), so that the anchor and the
    timed module see the same machine: on a shared host the speed drifts by 30 % within a minute,
    which timing each one's repeats in a block turns into a ratio error. A warm-up call each first."""
    for fn in fns.values():
        fn()
    best = dict.fromkeys(fns, float("inf"))
    names = list(fns)
    for r in range(repeats):
        for name in names if r % 2 == 0 else reversed(names):
            _sync(device)
            start = time.perf_counter()
            fns[name]()
            _sync(device)
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def _steps(module, x):
    def train():
        out, _ = module(x)
        out.sum().backward()

    def infer():
        with torch.no_grad():
            module(x)

    return train, infer


def _commit() -> str:
    """The checkout's short commit hash for the table headers ("unknown" outside a git checkout)."""
    return subprocess.run(["git", "-C", str(Path(__file__).parent), "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True).stdout.strip() or "unknown"
