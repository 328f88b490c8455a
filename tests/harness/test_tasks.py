"""Every task's batches are deterministic and well-formed, and its trivial predictor scores the
known baseline: copy log 8, adding 1/6, chance on images, uniform perplexity on text."""

from __future__ import annotations

import math

import pytest
import torch

from gated.harness.config import build
from gated.harness.tasks import TASKS, build_task

FAST = {"pixels_per_step": 28, "val_size": 10, "bptt": 16, "vocab_size": 12}


def make(name, seed=0, **kw):
    return build_task(build({"task": name, **FAST, **kw}).task, seed)


def test_registry_lists_all_tasks():
    assert list(TASKS) == ["copy", "adding", "smnist", "pmnist", "sfmnist", "scifar10", "brown", "kjv"]


def test_copy_batch_layout_and_baseline():
    task = make("copy", delay=7)
    b = task.batch("train", 3, 64)
    tokens = b.x.argmax(-1)  # (27, 64)
    assert b.x.shape == (27, 64, 10) and b.y.shape == (10, 64)
    assert torch.equal(tokens[:10] - 1, b.y) and (tokens[10:17] == 0).all() and (tokens[17:] == 9).all()
    assert b.y.min() >= 0 and b.y.max() <= 7
    assert task.loss(task.trivial(b.x, b.y), b.y).item() == pytest.approx(math.log(8), abs=1e-6)
    assert task.baseline["loss"] == pytest.approx(2.0794, abs=1e-4)


def test_batches_depend_on_seed_split_and_index_only():
    a, b, c = make("copy", delay=5, seed=0), make("copy", delay=5, seed=0), make("copy", delay=5, seed=1)
    assert torch.equal(a.batch("train", 5, 8).x, b.batch("train", 5, 8).x)
    assert not torch.equal(a.batch("train", 5, 8).x, a.batch("train", 6, 8).x)
    assert not torch.equal(a.batch("train", 5, 8).x, c.batch("train", 5, 8).x)
    assert not torch.equal(a.batch("train", 0, 8).x, a.batch("val", 0, 8).x)


def test_adding_batch_and_baseline():
    task = make("adding", length=50)
    b = task.batch("train", 0, 16)
    marks = b.x[..., 1]
    assert b.x.shape == (50, 16, 2) and (marks.sum(0) == 2).all()
    assert (marks[:25].sum(0) == 1).all() and (marks[25:].sum(0) == 1).all()
    assert torch.allclose((b.x[..., 0] * marks).sum(0), b.y)
    mse = sum(task.loss(task.trivial(bb.x, bb.y), bb.y).item()
              for bb in (task.batch("val", i, 4000) for i in range(10))) / 10
    assert mse == pytest.approx(1 / 6, abs=0.006)  # std of the estimate ~0.001


@pytest.mark.parametrize("name", ["smnist", "pmnist", "sfmnist", "scifar10"])
def test_image_task_chance_baseline(name, fixture_data):
    k = 32 if name == "scifar10" else 28
    task = make(name, pixels_per_step=k)
    channels = 3 if name == "scifar10" else 1
    pixels = 1024 if name == "scifar10" else 784
    b = task.batch("train", 0, 8)
    assert b.x.shape == (pixels // k, 8, k * channels) and b.y.shape == (8,)
    scores = [task.metrics(task.trivial(bb.x, bb.y), bb.y) for bb in
              (task.batch("test", i, 10) for i in range(task.num_batches("test", 10)))]
    assert sum(s["accuracy"] for s in scores) / len(scores) == pytest.approx(0.1)  # balanced fixture
    assert scores[0]["loss"] == pytest.approx(math.log(10), abs=1e-5)
    assert task.baseline == {"loss": math.log(10), "accuracy": 0.1}


def test_train_epochs_cover_every_image_once(fixture_data):
    task = make("smnist")  # 60 - 10 = 50 training images
    seen = torch.cat([task.batch("train", i, 10).x for i in range(5)], dim=1)  # one epoch
    flat = seen.transpose(0, 1).reshape(50, -1)
    assert len(torch.unique(flat, dim=0)) == 50


def test_pmnist_permutation_is_fixed_and_seeded(fixture_data):
    s, p0, p0b, p1 = make("smnist"), make("pmnist", seed=0), make("pmnist", seed=0), make("pmnist", seed=1)
    perm = torch.tensor(p0.artifacts()["permutation"])
    assert sorted(perm.tolist()) == list(range(784)) and perm.tolist() == p0b.artifacts()["permutation"]
    assert perm.tolist() != p1.artifacts()["permutation"]
    xs = s.batch("test", 0, 4).x.transpose(0, 1).reshape(4, 784)
    xp = p0.batch("test", 0, 4).x.transpose(0, 1).reshape(4, 784)
    assert torch.equal(xp, xs[:, perm])


def test_scifar_reads_rgb_pixels_in_order(fixture_data):
    import numpy as np

    from gated.harness.data import load

    task = make("scifar10", pixels_per_step=1)
    raw = load("cifar10")["x_test"][0].reshape(3, 1024).T  # (1024, 3)
    x = task.batch("test", 0, 1).x[:, 0]  # (1024, 3)
    np.testing.assert_allclose(x.numpy(), ((raw / 255 - task.mean) / task.std), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["brown", "kjv"])
def test_language_model_streams_and_uniform_baseline(name, fixture_data):
    task = make(name)
    V = task.output_size
    b0, b1 = task.batch("train", 0, 4), task.batch("train", 1, 4)
    assert b0.reset and not b1.reset and b0.x.shape == (16, 4)
    assert torch.equal(b0.y[:-1], b0.x[1:]) and torch.equal(b0.y[-1], b1.x[0])  # contiguous streams
    loss = task.loss(task.trivial(b0.x, b0.y), b0.y).item()
    assert loss == pytest.approx(math.log(V), abs=1e-5)
    key = "ppl" if name == "brown" else "bpc"
    assert task.derived({"loss": loss})[key] == pytest.approx(V if name == "brown" else math.log2(V), rel=1e-5)
    if name == "brown":
        assert V == 12 and task.itos[0] == "<unk>"  # vocab_size caps the vocabulary
