"""What researchers expect beside metrics.jsonl: a TensorBoard sink with gate histograms at each
evaluation (``--tensorboard``), and the checkpoint of the best validation metric (``--keep-best``)."""

from __future__ import annotations

import json

import pytest
import torch

from gated.harness import checkpoint
from gated.harness import train as train_module
from gated.harness.cli import main

# batch 50: the test split (1,000 examples, evaluated at the end) in 20 batches
TINY = ["train", "--task", "copy", "--delay", "3", "--hidden-size", "4", "--batch-size", "50", "--log-every", "1",
        "--eval-batches", "1", "--no-progress"]


def _losses(run):
    return [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_tensorboard_scalars_and_gate_histograms(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run, plain = tmp_path / "run", tmp_path / "plain"
    assert main([*TINY, "--steps", "4", "--eval-every", "2", "--tensorboard", "--out", str(run)]) == 0
    assert main([*TINY, "--steps", "4", "--eval-every", "2", "--out", str(plain)]) == 0
    assert _losses(run) == _losses(plain)  # logging does not touch the run
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"histograms": 0, "scalars": 0})
    events.Reload()
    scalars = events.Scalars("train/loss")
    assert [e.step for e in scalars] == [1, 2, 3, 4]
    assert [e.value for e in scalars] == pytest.approx(_losses(run))
    assert [e.step for e in events.Scalars("val/loss")] == [2, 4]
    assert [e.step for e in events.Scalars("test/loss")] == [4]
    for gate in ("effective", "forget", "refine"):  # UR: the refine gate too
        hist = events.Histograms(f"gates/{gate}_l0")
        assert [h.step for h in hist] == [2, 4]
        assert hist[0].histogram_value.num == 23 * 50 * 4  # T x B x H values of one validation batch
        assert 0 <= hist[0].histogram_value.min <= hist[0].histogram_value.max <= 1


def test_keep_best_keeps_the_best_validation_checkpoint(tmp_path, monkeypatch):
    """Validation losses 3, 1, 2, 1.5 at steps 2..8: best/ holds step 4 (the weights a 4-step run
    ends with), untouched by later saves; resumed, the run remembers it (1.2 at step 10 does not
    replace it) and replaces it with the 0.5 of step 12."""
    real = train_module.evaluate
    scripted = iter([3.0, 1.0, 2.0, 1.5, 1.2, 0.5])

    def evaluate(model, task, split, *args):
        res = real(model, task, split, *args)
        return res | {"loss": next(scripted)} if split == "val" else res

    monkeypatch.setattr(train_module, "evaluate", evaluate)
    run = tmp_path / "run"
    argv = [*TINY, "--steps", "8", "--eval-every", "2", "--ckpt-every", "2", "--keep-best", "--out", str(run)]
    assert main(argv) == 0
    best = checkpoint.best_record(run)
    assert (best["step"], best["metric"], best["value"], best["higher_is_better"]) == (4, "val_loss", 1.0, False)
    assert sorted(p.name for p in (run / "checkpoints" / "best").iterdir()) == ["best.json", "step-000004"]
    assert checkpoint.latest_step(run) == 8
    monkeypatch.setattr(train_module, "evaluate", real)
    assert main([*TINY, "--steps", "4", "--eval-every", "2", "--out", str(tmp_path / "four")]) == 0
    at4, kept = checkpoint.load(tmp_path / "four").model, checkpoint.load(run, best=True).model
    assert all(torch.equal(at4[k], kept[k]) for k in at4)
    monkeypatch.setattr(train_module, "evaluate", evaluate)
    assert main(["train", "--resume", str(run), "--steps", "10", "--no-progress"]) == 0
    assert checkpoint.best_record(run)["step"] == 4
    assert main(["train", "--resume", str(run), "--steps", "12", "--no-progress"]) == 0
    assert checkpoint.best_record(run)["step"] == 12 and checkpoint.load(run, best=True).step == 12
    assert sorted(p.name for p in (run / "checkpoints" / "best").iterdir()) == ["best.json", "step-000012"]
