"""Pixel-by-pixel image classification (paper §8): sMNIST, pMNIST, sequential Fashion-MNIST and
sequential CIFAR-10. Images are read one pixel per step (784 steps; CIFAR 1024 steps of RGB),
or ``pixels_per_step`` pixels per step; a 10-way head reads the last hidden state.

Splits: "train" is the training set minus its last ``val_size`` images, which form "val";
"test" is the official test set. Training batches walk a fresh permutation each epoch (seeded by
the run's seed and the epoch), so batch ``i`` depends on the seed and ``i`` only.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from gated.harness.tasks import Batch, Task, TaskSpec, example_generator


class PixelSequence(Task):
    """A 10-way classifier over images read as sequences.

    Shapes: images are stored ``(N, P, C)`` uint8 (P pixels, C channels); batches are
    ``x: (P / k, B, k * C)`` normalised floats (k = ``pixels_per_step``) and ``y: (B,)``.
    """

    output_size, readout = 10, "last"
    main_metric, higher_is_better = "accuracy", True
    baseline = {"loss": math.log(10), "accuracy": 0.1}
    dataset = "mnist"
    channels = 1
    permuted = False

    def __init__(self, cfg, seed: int):
        super().__init__(cfg, seed)
        arrays = self._load_arrays(cfg)
        x_train, x_test = self._pixels(arrays["x_train"]), self._pixels(arrays["x_test"])
        n_pix = x_train.shape[1]
        k = cfg.pixels_per_step
        if n_pix % k:
            raise ValueError(f"--pixels-per-step {k} must divide the {n_pix} pixels of an image")
        if not 0 < cfg.val_size < len(x_train):
            raise ValueError(f"--val-size must be in [1, {len(x_train) - 1}] for {self.dataset}, "
                             f"got {cfg.val_size}")
        self.perm = None  # pMNIST: one fixed permutation per seed (saved with the run)
        if self.permuted:
            self.perm = torch.randperm(n_pix, generator=example_generator(seed, "permutation", 0))
        cut = len(x_train) - cfg.val_size
        self.x = {"train": x_train[:cut], "val": x_train[cut:], "test": x_test}  # (N, P, C) uint8
        ys = [arrays["y_train"][:cut], arrays["y_train"][cut:], arrays["y_test"]]
        self.y = {s: torch.from_numpy(np.asarray(y, np.int64)) for s, y in zip(self.x, ys, strict=True)}
        self.mean = float(self.x["train"].float().mean()) / 255
        self.std = float(self.x["train"].float().std()) / 255
        self.k, self.seq_len, self.input_size = k, n_pix // k, k * self.channels
        self.majority = int(torch.bincount(self.y["train"], minlength=10).argmax())

    def _load_arrays(self, cfg) -> dict[str, np.ndarray]:
        from gated.harness.data import load

        return load(self.dataset)

    def _pixels(self, flat: np.ndarray) -> Tensor:
        # MNIST rows are (784,); CIFAR rows are 1024 R, 1024 G, 1024 B -> (1024, 3)
        x = torch.from_numpy(np.ascontiguousarray(flat))
        return x.reshape(len(x), self.channels, -1).transpose(1, 2).contiguous()  # (N, P, C)

    def _sequence(self, images: Tensor) -> Tensor:
        x = (images.float() / 255 - self.mean) / self.std  # (B, P, C)
        if self.perm is not None:
            x = x[:, self.perm]
        B = x.shape[0]
        return x.reshape(B, self.seq_len, self.input_size).transpose(0, 1)  # (P / k, B, k * C)

    def _train_ids(self, index: int, batch_size: int) -> Tensor:
        n = len(self.y["train"])
        pos = torch.arange(index * batch_size, (index + 1) * batch_size)
        ids = torch.empty(batch_size, dtype=torch.long)
        for epoch in pos.div(n, rounding_mode="floor").unique().tolist():
            perm = torch.randperm(n, generator=example_generator(self.seed, "epoch", epoch))
            sel = pos.div(n, rounding_mode="floor") == epoch
            ids[sel] = perm[pos[sel] % n]
        return ids

    def batch(self, split: str, index: int, batch_size: int) -> Batch:
        if split == "train":
            ids = self._train_ids(index, batch_size)
        else:
            ids = torch.arange(index * batch_size, min((index + 1) * batch_size, len(self.y[split])))
        return Batch(self._sequence(self.x[split][ids]), self.y[split][ids])

    def num_batches(self, split: str, batch_size: int) -> int:
        return math.ceil(len(self.y[split]) / batch_size)

    def trivial(self, x: Tensor, y: Tensor) -> Tensor:
        """Always the training set's most frequent class (uniform logits nudged toward it)."""
        out = torch.zeros(*y.shape, 10)
        out[..., self.majority] = 1e-6
        return out

    def artifacts(self) -> dict[str, list]:
        return {} if self.perm is None else {"permutation": self.perm.tolist()}


class PermutedMNIST(PixelSequence):
    permuted = True


class FashionMNIST(PixelSequence):
    dataset = "fashion-mnist"


class CIFAR10(PixelSequence):
    dataset, channels = "cifar10", 3

    def _load_arrays(self, cfg) -> dict[str, np.ndarray]:
        if cfg.data_path is None:
            return super()._load_arrays(cfg)
        from gated.harness.data import registry

        path = Path(cfg.data_path).expanduser()  # the user's batches, read without the cache
        if not path.is_dir():
            raise ValueError(f"--data-path {path} must be a directory of CIFAR-10 python batches "
                             "(for the .tar.gz archive run: gated data fetch cifar10 --from ARCHIVE)")
        inner = path / "cifar-10-batches-py"
        return registry.convert_cifar10(inner if inner.is_dir() else path)


_IMAGE_DEFAULTS = {"batch_size": 50, "hidden_size": 256, "steps": 20000, "eval_every": 1000, "eval_batches": 0,
                   "ckpt_every": 1000}

SPECS = [
    TaskSpec("smnist", "sequential MNIST: 784 pixels one per step, 10-way (paper §8); accuracy, chance 0.1",
             PixelSequence, "mnist", _IMAGE_DEFAULTS,
             "--task smnist --hidden-size 512 --batch-size 64 --steps 100000 --lr 1e-3", 0.9),
    TaskSpec("pmnist", "permuted MNIST: one fixed pixel permutation from the run's seed (paper §8)",
             PermutedMNIST, "mnist", _IMAGE_DEFAULTS,
             "--task pmnist --hidden-size 512 --batch-size 64 --steps 100000 --lr 1e-3", 0.9),
    TaskSpec("sfmnist", "sequential Fashion-MNIST: same shape as sMNIST, harder", FashionMNIST,
             "fashion-mnist", _IMAGE_DEFAULTS,
             "--task sfmnist --hidden-size 512 --batch-size 64 --steps 100000 --lr 1e-3", 0.8),
    TaskSpec("scifar10", "sequential CIFAR-10: 1024 steps of RGB pixels (paper §8); needs user-given data",
             CIFAR10, "cifar10", _IMAGE_DEFAULTS,
             "--task scifar10 --hidden-size 512 --batch-size 64 --steps 100000 --lr 1e-3", 0.6),
]
