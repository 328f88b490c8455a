"""What the feed-forward demonstrations share: flags, data, the progress bar, provenance and the
three output files (``NAME.json`` raw results, ``NAME.md`` table, ``NAME.png`` figure); and, for the
character-level Transformer demos (``glu_ffn``, ``gated_attention``), the corpus, the model shell
(embeddings, blocks, head), the warm-up + cosine schedule, the training loop and validation bpc.

The table and the figure are drawn from the results dict alone (the one saved as JSON), so both can
be redrawn from a finished run: ``table(json.load(...))``.
"""

from __future__ import annotations

import json
import math
import os
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

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


# --- character-level language modelling (glu_ffn, gated_attention) ------------------------------------

def char_corpus(dataset: str, context: int) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """``(itos, train, val)`` of a text dataset: the training split's sorted characters, and both
    splits as ``int64`` index tensors (a validation character unseen in training maps to index 0).
    Raises ValueError when a split is too short for one window of ``context + 1`` characters."""
    from gated.harness.data import load, text_split

    arrays = load(dataset)
    train, val = text_split(arrays, "train"), text_split(arrays, "val")
    itos = sorted(set(train))
    stoi = {c: i for i, c in enumerate(itos)}
    tr, va = (torch.tensor([stoi.get(c, 0) for c in s], dtype=torch.long) for s in (train, val))
    if min(len(tr), len(va)) < context + 2:
        raise ValueError(f"--context {context} needs splits longer than {context + 1} characters "
                         f"(train has {len(tr)}, val {len(va)})")
    return itos, tr, va


def windows(text: torch.Tensor, starts: torch.Tensor, context: int) -> torch.Tensor:
    """``(len(starts), context + 1)``: the windows of ``text`` starting at ``starts`` (inputs and targets)."""
    return torch.stack([text[s:s + context + 1] for s in starts.tolist()])


def warmup_cosine(opt, warmup: int, steps: int):
    """Linear warm-up over ``warmup`` steps, then cosine decay to 0 at ``steps`` (a ``LambdaLR``)."""
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (
        1 + math.cos(math.pi * min(s, steps) / steps)))


class CharTransformer(nn.Module):
    """Token + learned position embeddings, ``layers`` blocks ``make_block(i)``, LayerNorm, linear head
    (created in that order, so a seed fixes the weights). A block maps ``(B, T, D) -> (B, T, D)``,
    residuals included."""

    def __init__(self, vocab: int, d: int, layers: int, context: int, make_block):
        super().__init__()
        self.tok, self.pos = nn.Embedding(vocab, d), nn.Embedding(context, d)
        self.blocks = nn.ModuleList(make_block(i) for i in range(layers))
        self.ln, self.head = nn.LayerNorm(d), nn.Linear(d, vocab, bias=False)

    def hidden_states(self, idx) -> list[torch.Tensor]:
        """The residual stream: ``[embeddings, after block 1, ..., after block L]``, each ``(B, T, D)``."""
        xs = [self.tok(idx) + self.pos.weight[: idx.shape[1]]]
        for b in self.blocks:
            xs.append(b(xs[-1]))
        return xs

    def forward(self, idx):  # (B, T) -> (B, T, V)
        x = self.tok(idx) + self.pos.weight[: idx.shape[1]]
        for b in self.blocks:
            x = b(x)
        return self.head(self.ln(x))


def char_bpc(net, vx: torch.Tensor, batch: int = 64) -> float:
    """Bits per character of ``net`` (eval mode, no grad) over windows ``vx: (W, T+1)``, every target counted."""
    net.eval()
    with torch.no_grad():
        nats = sum(F.cross_entropy(net(vx[i:i + batch, :-1]).flatten(0, 1), vx[i:i + batch, 1:].reshape(-1),
                                   reduction="sum").item() for i in range(0, len(vx), batch))
    return nats / (vx.shape[0] * (vx.shape[1] - 1)) / math.log(2)


def train_char_lm(net, opt, sched, text: torch.Tensor, starts: torch.Tensor, context: int, bar, label: str,
                  log_every: int, losses: list | None = None, first: int = 0, t0: float | None = None,
                  after_step=None) -> list:
    """Train ``net`` on next-character prediction, one step per row of ``starts: (steps, B)`` (starts
    of windows of ``context + 1`` characters of ``text``), from step ``first`` (a resumed run:
    ``losses`` holds the earlier steps'), with gradient clipping 1.0. Logs the mean train bpc every
    ``log_every`` steps as ``LABEL step S/N train bpc X (Ts)``, ``T`` counted from ``t0``.
    ``after_step(s)`` runs after step ``s`` (1-based; it may evaluate, but must leave the weights
    alone). Returns the per-step training bpc (``losses``, extended in place)."""
    import time

    losses = [] if losses is None else losses
    t0 = time.time() if t0 is None else t0
    steps = len(starts)
    for step in range(first, steps):
        net.train()
        xy = windows(text, starts[step], context)  # (B, T+1)
        logits = net(xy[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), xy[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item() / math.log(2))
        bar.step()
        if (step + 1) % log_every == 0:
            bar.log(f"{label} step {step + 1:5d}/{steps} train bpc {np.mean(losses[-log_every:]):.4f} "
                    f"({time.time() - t0:.1f}s)")
        if after_step is not None:
            after_step(step + 1)
    return losses
