"""Tasks: one :class:`TaskSpec` registry entry per task (paper §6, §8, §9).

A task turns ``(split, index)`` into a batch deterministically, so a run's data depends only on
its seed and step (resume and data-parallel training need no data-loader state), and it owns its
loss, metrics and trivial baseline. Glossary: T time, B batch, I input features, V vocabulary.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from torch import Tensor

LOG2 = math.log(2)


class Batch(NamedTuple):
    """``x``: ``(T, B, I)`` floats or ``(T, B)`` token ids; ``y``: task-shaped targets;
    ``reset``: start the carried recurrent state afresh (always True for stateless tasks)."""

    x: Tensor
    y: Tensor
    reset: bool = True


class Task:
    """Base class. Subclasses set the attributes below and implement :meth:`batch`.

    Attributes:
        input_size: features per step (or vocabulary size when ``vocab`` is set: token inputs).
        output_size: readout width (classes, symbols, 1 for regression, V for language models).
        readout: which RNN outputs feed the head: ``"last"`` (the final step), ``"tail"`` (the
            last ``tail`` steps), ``"all"``.
        main_metric: the key of :meth:`metrics` that comparisons use; ``higher_is_better`` says how.
        baseline: the trivial predictor's score for ``loss`` and ``main_metric`` (paper baselines).
        stateful: carry the recurrent state across batches (truncated BPTT).
        seq_len: steps per example (for throughput and chrono's ``t_max``).
    """

    input_size: int
    output_size: int
    readout: str = "last"
    tail: int = 1
    vocab: bool = False
    main_metric: str = "loss"
    higher_is_better: bool = False
    baseline: dict[str, float] = {}
    stateful: bool = False
    seq_len: int = 1

    def __init__(self, cfg, seed: int):
        self.cfg, self.seed = cfg, seed

    def batch(self, split: str, index: int, batch_size: int) -> Batch:
        """The ``index``-th batch of ``split`` ("train", "val", "test"), ``batch_size`` examples."""
        raise NotImplementedError

    def num_batches(self, split: str, batch_size: int) -> int | None:
        """Batches in one pass over an evaluation split; None: unbounded (synthetic data)."""
        return None

    def loss(self, out: Tensor, y: Tensor) -> Tensor:
        """Cross-entropy over the scored positions (``out`` ends in the class dimension)."""
        return torch.nn.functional.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))

    def metrics(self, out: Tensor, y: Tensor) -> dict[str, float]:
        """Per-target means (loss, accuracy): combinable by weighting with ``y.numel()``."""
        loss = self.loss(out, y).item()
        return {"loss": loss, "accuracy": (out.argmax(-1) == y).float().mean().item()}

    def derived(self, m: dict[str, float]) -> dict[str, float]:
        """Metrics computed from the averaged ones (perplexity, bits per character)."""
        return m

    def trivial(self, x: Tensor, y: Tensor) -> Tensor:
        """The trivial predictor's output, shaped like the model's (uniform logits by default)."""
        return torch.zeros(*y.shape, self.output_size)

    def artifacts(self) -> dict[str, list]:
        """JSON-able things saved in the run directory (pMNIST's permutation)."""
        return {}


def example_generator(seed: int, split: str, index: int) -> torch.Generator:
    """A generator seeded from ``(seed, split, index)`` by hashing, so streams never overlap."""
    digest = hashlib.sha256(f"{seed}/{split}/{index}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))


@dataclass(frozen=True)
class TaskSpec:
    """A registry entry.

    Attributes:
        name: the ``--task`` value.
        summary: one line for help and docs.
        build: ``(TaskConfig, seed) -> Task``; loads data lazily (missing data stops there).
        dataset: the dataset it reads (``gated data fetch NAME``), or None for synthetic tasks.
        defaults: config values for this task (any field, e.g. batch size), below config file/flags.
        paper: flags for a paper-scale run (README).
        threshold: the main metric's "solved" level for ``gated compare``'s steps-to-threshold.
    """

    name: str
    summary: str
    build: Callable
    dataset: str | None = None
    defaults: dict = field(default_factory=dict)
    paper: str = ""
    threshold: float | None = None


def _registry() -> dict[str, TaskSpec]:
    from gated.harness.tasks import images, lm, synthetic

    return {s.name: s for s in [*synthetic.SPECS, *images.SPECS, *lm.SPECS]}


TASKS: dict[str, TaskSpec] = _registry()


def get_task_spec(name: str) -> TaskSpec:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; choose from {', '.join(TASKS)}")
    return TASKS[name]


def build_task(cfg, seed: int) -> Task:
    """Build the task of ``cfg.task`` (a TaskConfig) for a run's seed."""
    return get_task_spec(cfg.task).build(cfg, seed)

