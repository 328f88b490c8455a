"""Metric averaging (training windows and evaluation passes) and one-line formatting."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from gated.harness.model import detach_state


@dataclass
class Window:
    """Target-weighted sums of per-batch metric means since the last log line."""

    sums: dict = field(default_factory=dict)
    weight: float = 0.0
    norm_sum: float = 0.0
    count: int = 0

    def add(self, metrics: dict[str, float], grad_norm: float, weight: float) -> None:
        for k, v in metrics.items():
            self.sums[k] = self.sums.get(k, 0.0) + v * weight
        self.weight += weight
        self.norm_sum += grad_norm
        self.count += 1

    def means(self) -> dict[str, float]:
        out = {k: v / self.weight for k, v in self.sums.items()} if self.weight else {}
        return out | ({"grad_norm": self.norm_sum / self.count} if self.count else {})

    def state(self) -> dict:
        return {"sums": dict(self.sums), "weight": self.weight, "norm_sum": self.norm_sum, "count": self.count}


@torch.no_grad()
def evaluate(model, task, split: str, batch_size: int, max_batches: int, device) -> dict[str, float]:
    """Average the task's metrics over ``split`` (the first ``max_batches`` batches; 0: all of a
    finite split, 10 of an endless one such as a synthetic task's validation stream), carrying the
    state across windows for language models."""
    n = task.num_batches(split, batch_size)
    if n is None:
        n = max_batches or 10
    elif max_batches:
        n = min(n, max_batches)
    was_training = model.training
    model.eval()
    sums: dict[str, float] = {}
    weight, carry = 0, None
    try:
        for i in range(n):
            b = task.batch(split, i, batch_size)
            if not task.stateful or b.reset:
                carry = None
            out, carry = model(b.x.to(device), carry)
            carry = detach_state(carry) if task.stateful else None
            w = b.y.numel()
            for k, v in task.metrics(out, b.y.to(device)).items():
                sums[k] = sums.get(k, 0.0) + v * w
            weight += w
    finally:
        model.train(was_training)
    return task.derived({k: v / weight for k, v in sums.items()})


def fmt(record: dict, main: str, short: bool = False) -> str:
    """``step 120 | loss 2.0794 | accuracy 0.125 | val_loss ...`` (short: for the progress bar)."""
    if short:
        keys = ["loss", main, "accuracy"]
    else:
        keys = ["loss", main, "val_loss", f"val_{main}", f"test_{main}", "steps_per_s"]
    parts = [] if short else [f"step {record.get('step', 0)}"]
    for k in dict.fromkeys(keys):
        if k in record:
            parts.append(f"{k} {record[k]:.4g}")
    return (" " if short else " | ").join(parts)
