"""Data parallelism under ``torchrun`` (DDP): process group set-up and small collectives.

Every process draws the same global batch (batches are a function of seed and step) and trains
on its slice; DDP averages gradients, so N processes compute the same update as one process on
the global batch. Rank 0 writes the run directory. On CUDA each process drives the GPU of its
``LOCAL_RANK`` (``torch.cuda.set_device``, DDP's ``device_ids``/``output_device``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))  # this process's device

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

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """``model`` (already on :attr:`device`) in DDP when there are several processes; on CUDA
        DDP is told this process's one device."""
        if not self.enabled:
            return model
        if self.device.type == "cuda":
            return torch.nn.parallel.DistributedDataParallel(model, device_ids=[self.device.index],
                                                             output_device=self.device.index)
        return torch.nn.parallel.DistributedDataParallel(model)


def setup(device: torch.device) -> Dist:
    """Join the process group when started by torchrun (``WORLD_SIZE`` > 1). On CUDA the
    process's device is ``cuda:LOCAL_RANK`` (made current before the NCCL group starts)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist(device=device)
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        if device.index is not None and device.index != local:
            raise ValueError(f"--device {device}: under torchrun each process uses cuda:LOCAL_RANK (this one "
                             f"cuda:{local}); pass --device cuda (or auto)")
        if local >= torch.cuda.device_count():
            raise ValueError(f"LOCAL_RANK {local} but this machine has {torch.cuda.device_count()} CUDA device(s); "
                             "start at most that many processes per node")
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), local, device)


def teardown(d: Dist) -> None:
    if d.enabled and dist.is_initialized():
        dist.destroy_process_group()
