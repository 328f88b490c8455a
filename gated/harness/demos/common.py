"""What the feed-forward demonstrations share: flags, data, the progress bar, provenance and the
three output files (``NAME.json`` raw results, ``NAME.md`` table, ``NAME.png`` figure).

The table and the figure are drawn from the results dict alone (the one saved as JSON), so both can
be redrawn from a finished run: ``table(json.load(...))``.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

#: Keys of the parsed arguments that are not the demo's flags (argparse bookkeeping).
_NOT_FLAGS = {"command", "demo", "no_progress"}


def add_output_flags(parser, demo: str, name: str, threads: int = 2) -> None:
    """``--out``, ``--name``, ``--threads``, ``--no-progress`` (every demo has them)."""
    parser.add_argument("--out", default=f"runs/demos/{demo}", metavar="DIR",
                        help="directory for NAME.md, NAME.png and NAME.json (default: %(default)s)")
    parser.add_argument("--name", default=name, help="file name stem of the outputs (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=threads, help="torch CPU threads (default: %(default)s)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (there is none off a terminal)")


def config(args) -> dict:
    """The demo's flags as a JSON-able dict (argparse bookkeeping left out)."""
    return {k: v for k, v in vars(args).items() if not k.startswith("_") and k not in _NOT_FLAGS}


def _value(v) -> str:
    if isinstance(v, list):
        return " ".join(_value(x) for x in v)
    if isinstance(v, float):
        return f"{v:g}" if float(f"{v:g}") == v else repr(v)  # short, but never rounded
    return shlex.quote(str(v))


def command(demo: str, cfg: dict) -> str:
    """The ``gated demo`` command line that reruns ``cfg`` (every flag spelled out)."""
    parts = [f"gated demo {demo}"]
    for k, v in cfg.items():
        flag = "--" + k.replace("_", "-")
        if isinstance(v, bool):
            parts += [flag] if v else []
        elif v is not None:
            parts.append(f"{flag} {_value(v)}")
    return " ".join(parts)


def provenance() -> dict:
    """Commit of the checkout this code runs from (None outside git), torch version, cores, threads."""
    root = Path(__file__).resolve().parents[3]
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True,
                                check=False, text=True).stdout.strip() or None
    except OSError:
        commit = None
    return {"commit": commit, "torch": torch.__version__, "cpu_count": os.cpu_count(),
            "threads": torch.get_num_threads()}


def machine_line(results: dict) -> str:
    """``commit ...; machine ...`` for the header of a table."""
    return (f"commit: `{results['commit'] or 'unknown'}`; machine: {results['cpu_count']} CPU cores, "
            f"{results['threads']} torch threads, torch {results['torch']}")


def standardised_images(name: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(x_train, y_train, x_test, y_test)`` of an image dataset from ``$GATED_DATA``: pixels / 255,
    then standardised with the training set's mean and std. ``x: (N, 784)`` float32, ``y: (N,)`` int64."""
    from gated.harness.data import load

    a = load(name)
    x_tr = torch.from_numpy(a["x_train"].reshape(len(a["x_train"]), -1).astype(np.float32) / 255)
    x_te = torch.from_numpy(a["x_test"].reshape(len(a["x_test"]), -1).astype(np.float32) / 255)
    mean, std = x_tr.mean(), x_tr.std()
    y_tr = torch.from_numpy(a["y_train"].astype(np.int64))
    y_te = torch.from_numpy(a["y_test"].astype(np.int64))
    return (x_tr - mean) / std, y_tr, (x_te - mean) / std, y_te


def batch_order(n: int, steps: int, batch_size: int, seed: int) -> torch.Tensor:
    """Enough concatenated permutations of ``range(n)`` for ``steps`` batches (seeded)."""
    g = torch.Generator().manual_seed(seed)
    return torch.cat([torch.randperm(n, generator=g) for _ in range(steps * batch_size // n + 1)])


def moving_mean(values, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``(x, y)`` of the ``k``-step moving mean of a curve, ``x`` the 1-based step each window ends at."""
    v = np.asarray(values)
    return np.arange(k, len(v) + 1), np.convolve(v, np.ones(k) / k, mode="valid")


class Progress:
    """A tqdm bar over ``total`` steps on a terminal (none when disabled or piped); ``log`` prints
    above the bar."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.bar = None
        if enabled:
            from tqdm import tqdm

            # disable=None: a bar on a terminal, nothing in logs and pipes
            self.bar = tqdm(total=total, disable=None, unit="step", dynamic_ncols=True, file=sys.stderr)

    def log(self, msg: str) -> None:
        if self.bar is not None and not self.bar.disable:
            self.bar.write(msg)
        else:
            print(msg, flush=True)

    def step(self, n: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def write_outputs(out: str | Path, name: str, results: dict, table, figure) -> tuple[Path, Path, Path]:
    """Write ``NAME.json`` (``results``), ``NAME.md`` (``table(results)``) and ``NAME.png``
    (``figure(results, path)``) into ``out``; returns their paths."""
    from gated.harness.files import atomic_write

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path, fig_path = out / f"{name}.json", out / f"{name}.md", out / f"{name}.png"
    atomic_write(json_path, (json.dumps(results, indent=1) + "\n").encode())
    atomic_write(md_path, table(results).encode())
    figure(results, fig_path)
    return json_path, md_path, fig_path
