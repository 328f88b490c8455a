"""Data parallelism under ``torchrun`` (DDP): process group set-up and small collectives.

Every process draws the same global batch (batches are a function of seed and step) and trains
on its slice; DDP averages gradients, so N processes compute the same update as one process on
the global batch. Rank 0 writes the run directory.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def shard(self, t: torch.Tensor, batch_size: int, dim: int) -> torch.Tensor:
        """This process's slice of a global batch along its batch dimension."""
        if not self.enabled:
            return t
        per = batch_size // self.world
        return t.narrow(dim, self.rank * per, per)

    def mean(self, values: dict[str, float]) -> dict[str, float]:
        """Average scalars over processes (equal weights: every process holds an equal slice)."""
        if not self.enabled or not values:
            return values
        keys = list(values)
        t = torch.tensor([values[k] for k in keys], dtype=torch.float64)
        dist.all_reduce(t)
        return {k: v / self.world for k, v in zip(keys, t.tolist(), strict=True)}

    def gather(self, obj) -> list:
        """Every process's ``obj`` (on every process)."""
        if not self.enabled:
            return [obj]
        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()


def setup(device: torch.device) -> Dist:
    """Join the process group when started by torchrun (``WORLD_SIZE`` > 1)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def teardown(d: Dist) -> None:
    if d.enabled and dist.is_initialized():
        dist.destroy_process_group()
