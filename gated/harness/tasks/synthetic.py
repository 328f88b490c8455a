"""Synthetic memory tasks: copy (paper §6.1) and adding (paper §6.2).

Every batch is drawn from a generator seeded by ``(seed, split, index)``: the training stream is
endless, and "val"/"test" are fixed, distinct streams. Validation reads the first
``--eval-batches`` batches of its stream; the test split is the first ``TEST_SIZE`` examples of
its stream (rounded up to whole batches), evaluated once at the end of training.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.nn import functional as F

from gated.harness.tasks import Batch, Task, TaskSpec, example_generator

TEST_SIZE = 1000  # examples in the test split of a synthetic task


class Synthetic(Task):
    """An endless training stream and a validation stream; a finite test split."""

    def num_batches(self, split: str, batch_size: int) -> int | None:
        return math.ceil(TEST_SIZE / batch_size) if split == "test" else None


class Copy(Synthetic):
    """Copy: 10 symbols from {1..8}, ``delay`` blanks (0), 10 cues (9), one-hot over 10 tokens.

    The model must output the 10 symbols during the 10 cue steps; cross-entropy is scored on those
    steps only, so a model without memory stays at the uniform guess, log 8 = 2.079.
    """

    input_size, output_size, readout, tail = 10, 8, "tail", 10
    main_metric, higher_is_better = "loss", False
    baseline = {"loss": math.log(8), "accuracy": 1 / 8}

    def __init__(self, cfg, seed: int):
        super().__init__(cfg, seed)
        self.delay = cfg.delay
        self.seq_len = cfg.delay + 20

    def batch(self, split: str, index: int, batch_size: int) -> Batch:
        """Returns ``x: (delay + 20, B, 10)`` one-hot and ``y: (10, B)`` symbol ids in 0..7."""
        g = example_generator(self.seed, split, index)
        symbols = torch.randint(1, 9, (10, batch_size), generator=g)  # (10, B)
        tokens = torch.cat([symbols, torch.zeros(self.delay, batch_size, dtype=torch.long),
                            torch.full((10, batch_size), 9, dtype=torch.long)])  # (T, B)
        return Batch(F.one_hot(tokens, 10).float(), symbols - 1)


class Adding(Synthetic):
    """Adding: channel 0 holds U[0, 1] values, channel 1 marks one position in each half; the
    target is the sum of the two marked values, read from the last step. Loss and metric: MSE.
    Predicting the constant 1 scores Var(a + b) = 2/12 = 1/6."""

    input_size, output_size, readout = 2, 1, "last"
    main_metric, higher_is_better = "loss", False
    baseline = {"loss": 1 / 6}

    def __init__(self, cfg, seed: int):
        super().__init__(cfg, seed)
        if cfg.length < 2:
            raise ValueError(f"--length must be >= 2 for the adding task, got {cfg.length}")
        self.seq_len = cfg.length

    def batch(self, split: str, index: int, batch_size: int) -> Batch:
        """Returns ``x: (T, B, 2)`` and ``y: (B,)``."""
        g, T = example_generator(self.seed, split, index), self.seq_len
        values = torch.rand(T, batch_size, generator=g)  # (T, B)
        first = torch.randint(0, T // 2, (batch_size,), generator=g)
        second = torch.randint(T // 2, T, (batch_size,), generator=g)
        marks = torch.zeros(T, batch_size)
        cols = torch.arange(batch_size)
        marks[first, cols] = 1.0
        marks[second, cols] = 1.0
        y = values[first, cols] + values[second, cols]
        return Batch(torch.stack([values, marks], dim=-1), y)

    def loss(self, out: Tensor, y: Tensor) -> Tensor:
        return F.mse_loss(out.reshape(y.shape), y)

    def metrics(self, out: Tensor, y: Tensor) -> dict[str, float]:
        return {"loss": self.loss(out, y).item()}

    def trivial(self, x: Tensor, y: Tensor) -> Tensor:
        return torch.ones(*y.shape, 1)


SPECS = [
    TaskSpec("copy", "copy 10 symbols across a delay of N blanks (paper §6.1); CE, baseline log 8",
             Copy, defaults={"batch_size": 10, "hidden_size": 256, "steps": 10000, "eval_batches": 10},
             paper="--task copy --delay 480 --hidden-size 256 --batch-size 10 --steps 10000 --lr 1e-3 --clip 1",
             threshold=0.5 * math.log(8)),
    TaskSpec("adding", "add the two marked values of a length-T sequence (paper §6.2); MSE, baseline 1/6",
             Adding, defaults={"batch_size": 10, "hidden_size": 256, "steps": 100000, "eval_batches": 10},
             paper="--task adding --length 2000 --hidden-size 256 --batch-size 10 --steps 100000 --lr 1e-3 --clip 1",
             threshold=1 / 60),
]
