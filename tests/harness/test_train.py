"""``gated train``: a CLI smoke run per task, resume equals an uninterrupted run, checkpoints."""

from __future__ import annotations

import errno
import json
import subprocess
import sys

import pytest
import torch

from gated.harness import checkpoint
from gated.harness.cli import main

SMALL = ["--hidden-size", "8", "--steps", "3", "--batch-size", "4", "--log-every", "1", "--eval-batches", "2",
         "--no-progress"]
TASK_ARGS = {
    "copy": ["--delay", "5"], "adding": ["--length", "20"],
    "smnist": ["--pixels-per-step", "28", "--val-size", "10"],
    "pmnist": ["--pixels-per-step", "28", "--val-size", "10"],
    "sfmnist": ["--pixels-per-step", "28", "--val-size", "10"],
    "scifar10": ["--pixels-per-step", "32", "--val-size", "10"],
    "brown": ["--bptt", "8", "--vocab-size", "20", "--embed-size", "8"], "kjv": ["--bptt", "8", "--embed-size", "8"],
}
MAIN = {"copy": "loss", "adding": "loss", "brown": "ppl", "kjv": "bpc"}


def records(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("task", list(TASK_ARGS))
def test_cli_smoke_run_per_task(task, fixture_data, tmp_path):
    run = tmp_path / "run"
    assert main(["train", "--task", task, *TASK_ARGS[task], *SMALL, "--out", str(run)]) == 0
    recs = records(run)
    assert [r["step"] for r in recs] == [1, 2, 3]
    key = MAIN.get(task, "accuracy")
    for r in recs:
        assert torch.isfinite(torch.tensor(r["loss"])) and r["steps_per_s"] > 0 and key in r
    assert f"val_{key}" in recs[-1] and f"test_{key}" in recs[-1]
    if key == "accuracy":
        assert 0 <= recs[-1]["val_accuracy"] <= 1
    if task == "copy":  # an untrained model guesses: the loss starts near log 8
        assert abs(recs[0]["loss"] - 2.0794) < 0.2
    assert checkpoint.load(run).step == 3
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["task"]["task"] == task and cfg["model"]["hidden_size"] == 8
    assert (run / "permutation.json").exists() == (task == "pmnist")


def _comparable(recs):
    return [{k: v for k, v in r.items() if "per_s" not in k and not k.startswith(("val_", "test_"))} for r in recs]


@pytest.mark.parametrize("task,extra", [("copy", ["--delay", "5", "--num-layers", "2", "--dropout", "0.3",
                                                  "--schedule", "cosine", "--warmup", "3"]),
                                        ("kjv", ["--bptt", "8", "--embed-size", "8"])])
def test_interrupted_run_resumes_exactly(task, extra, fixture_data, tmp_path, monkeypatch):
    """A run killed after its step-6 checkpoint (metrics logged up to step 8) and resumed gives
    the uninterrupted run's metrics and weights: RNG, optimizer, schedule, carried LM state."""
    args = ["train", "--task", task, *extra, "--hidden-size", "8", "--batch-size", "4", "--log-every", "2",
            "--eval-every", "0", "--ckpt-every", "3", "--steps", "10", "--no-progress", "--seed", "3"]
    a, b = tmp_path / "a", tmp_path / "b"
    assert main([*args, "--out", str(a)]) == 0
    real = checkpoint.save

    def crash_at_9(run, step, *rest):
        if step == 9:
            raise KeyboardInterrupt
        return real(run, step, *rest)

    monkeypatch.setattr(checkpoint, "save", crash_at_9)
    assert main([*args, "--out", str(b)]) == 130  # Ctrl-C: "gated train: interrupted", no traceback
    monkeypatch.setattr(checkpoint, "save", real)
    assert records(b)[-1]["step"] == 8 and checkpoint.load(b).step == 6
    assert main(["train", "--resume", str(b), "--no-progress"]) == 0
    assert _comparable(records(b)) == _comparable(records(a))
    wa, wb = checkpoint.load(a).model, checkpoint.load(b).model
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert records(b)[-1]["val_loss"] == records(a)[-1]["val_loss"]


def test_readme_train_and_resume_commands(tmp_path, monkeypatch):
    """The issue's exact commands; the extended run equals a 240-step run from scratch."""
    monkeypatch.chdir(tmp_path)
    cmd = "train --task copy --delay 50 --core lstm --variant UR --hidden-size 64 --steps 120 --seed 0 --out runs/demo"
    assert main(cmd.split()) == 0
    assert main("train --resume runs/demo --steps 240".split()) == 0
    assert main(cmd.replace("120", "240").replace("demo", "full").split()) == 0
    demo, full = records(tmp_path / "runs/demo"), records(tmp_path / "runs/full")
    assert [r["step"] for r in demo] == list(range(10, 241, 10))
    assert _comparable(demo) == _comparable(full)
    assert json.loads((tmp_path / "runs/demo/config.json").read_text())["train"]["steps"] == 240


def _run(tmp_path, steps=4, extra=()):
    run = tmp_path / "run"
    assert main(["train", "--task", "copy", "--delay", "3", "--hidden-size", "4", "--batch-size", "2",
                 "--steps", str(steps), "--ckpt-every", "2", "--log-every", "2", "--no-progress",
                 "--out", str(run), *extra]) == 0
    return run


def test_corrupted_checkpoint_is_reported_not_replaced(tmp_path, capsys):
    run = _run(tmp_path)
    target = run / "checkpoints" / "step-000004" / "model.safetensors"
    raw = bytearray(target.read_bytes())
    raw[-5] ^= 0xFF
    target.write_bytes(bytes(raw))
    before = (run / "metrics.jsonl").read_text()
    assert main(["train", "--resume", str(run), "--steps", "6", "--no-progress"]) == 1
    assert "corrupted" in capsys.readouterr().err
    assert target.read_bytes() == bytes(raw) and (run / "metrics.jsonl").read_text() == before
    (run / "checkpoints" / "latest.json").write_text('{"format": "gated-harn')
    with pytest.raises(checkpoint.CheckpointError, match="latest.json is corrupted"):
        checkpoint.load(run)


def test_incompatible_checkpoint(tmp_path, capsys):
    run = _run(tmp_path)
    cfg = json.loads((run / "config.json").read_text())
    cfg["model"]["hidden_size"] = 5
    (run / "config.json").write_text(json.dumps(cfg))
    assert main(["train", "--resume", str(run), "--steps", "6", "--no-progress"]) == 1
    assert "incompatible" in capsys.readouterr().err
    with pytest.raises(checkpoint.CheckpointError, match="incompatible"):
        checkpoint.load_model_state(torch.nn.Linear(2, 2), checkpoint.load(run).model, "x")


def test_full_disk_keeps_previous_checkpoint(tmp_path, monkeypatch):
    calls = []
    real = checkpoint.save_file

    def flaky(tensors, path, metadata=None):
        calls.append(path)
        if len(calls) == 2:  # the step-4 checkpoint: the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        real(tensors, path, metadata=metadata)

    monkeypatch.setattr(checkpoint, "save_file", flaky)
    with pytest.raises(checkpoint.CheckpointError, match="previous checkpoint \\(step 2\\) is intact"):
        from gated.harness.config import build
        from gated.harness.train import train

        train(build({"task": "copy", "delay": 3, "hidden_size": 4, "batch_size": 2, "steps": 4, "ckpt_every": 2,
                     "log_every": 2, "progress": False, "out": str(tmp_path / "run")}), log=lambda *a, **k: None)
    c = checkpoint.load(tmp_path / "run")
    assert c.step == 2 and sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == \
        ["latest.json", "step-000002"]


@pytest.mark.parametrize("args,code,message", [
    (["--task", "nope"], 2, "unknown task 'nope'; choose from copy, adding, smnist"),
    (["--core", "xlstm"], 2, "unknown core 'xlstm'; choose from gru, hgrn, lstm, mgu, mingru, minlstm, rglru"),
    (["--core", "mgu", "--variant", "OM"], 2, "choose from -, C, U, R, UR"),
    (["--variant", "Q"], 2, "choose from -, C, O, U, R, OM, OR, UM, UR"),
    (["--hidden-size", "-3"], 2, "--hidden-size must be a positive integer"),
    (["--lr", "abc"], 2, "--lr expects a number, got 'abc'"),
    (["--steps", "1.5"], 2, "--steps expects an integer, got '1.5'"),
    (["--optimizer", "sgd"], 2, "choose from adam, adamw"),
    (["--device", "tpu"], 2, "unknown device 'tpu'"),
    (["--batch-size", "4", "--task", "smnist"], 1, "gated data fetch mnist"),
])
def test_bad_input_messages(args, code, message, tmp_path, data_home, capsys):
    out = tmp_path / "run"
    assert main(["train", *args, "--steps", "1", "--no-progress", "--out", str(out)] if "--steps" not in args
                else ["train", *args, "--no-progress", "--out", str(out)]) == code
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_existing_run_and_bad_resume(tmp_path, capsys):
    run = _run(tmp_path, steps=2)
    assert main(["train", "--task", "copy", "--out", str(run)]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert main(["train", "--resume", str(run), "--hidden-size", "9"]) == 2
    assert "cannot change what is trained (--hidden-size)" in capsys.readouterr().err
    assert main(["train", "--resume", str(tmp_path / "nothing")]) == 2
    assert "no run there" in capsys.readouterr().err


def test_config_file_then_flags(tmp_path):
    cfg_file = tmp_path / "c.json"
    cfg_file.write_text(json.dumps({"model": {"hidden_size": 6, "variant": "U"}, "delay": 4, "steps": 2}))
    run = tmp_path / "run"
    assert main(["train", "--config", str(cfg_file), "--hidden-size", "5", "--out", str(run), "--no-progress"]) == 0
    cfg = json.loads((run / "config.json").read_text())
    assert (cfg["model"]["hidden_size"], cfg["model"]["variant"], cfg["task"]["delay"]) == (5, "U", 4)
    assert cfg["optim"]["batch_size"] == 10  # the copy task's registry default
    cfg_file.write_text(json.dumps({"hiden_size": 3}))
    assert main(["train", "--config", str(cfg_file), "--out", str(tmp_path / "x")]) == 2


def test_import_gated_does_not_load_harness():
    code = "import sys, gated; sys.exit(any(m.startswith('gated.harness') for m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_help_lists_the_choices_of_fields_that_have_them(capsys):
    from gated import VARIANTS
    from gated.harness.tasks import TASKS

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    for expected in ("--task {" + ",".join(TASKS) + "}", "--core {lstm,gru,mgu,mingru,minlstm,rglru,hgrn}",
                     "--variant {" + ",".join(VARIANTS) + "}", "--optimizer {adam,adamw}",
                     "--schedule {constant,cosine,linear}", "--device {auto,cpu,cuda,cuda:N}",
                     "--backend {auto,fused_cpu,triton,reference}"):
        assert f"\n  {expected}" in text, expected
    with pytest.raises(SystemExit):
        main(["rl", "train", "--help"])
    text = capsys.readouterr().out
    assert "\n  --core {lstm,gru,mgu}" in text and "\n  --variant {" + ",".join(VARIANTS) + "}" in text


def test_autocast_runs_the_forward_in_mixed_precision(tmp_path):
    """--autocast bfloat16: the same seed trains to nearly the same losses (the model computes in
    float32 inside; the readout's matmul and the rounded outputs differ), not to identical ones,
    which would mean autocast was never entered."""
    plain = [r["loss"] for r in records(_run(tmp_path / "a", steps=6, extra=["--log-every", "1"]))]
    amp = [r["loss"] for r in records(_run(tmp_path / "b", steps=6, extra=["--log-every", "1", "--autocast",
                                                                             "bfloat16"]))]
    assert len(plain) == len(amp) == 6 and plain != amp
    assert max(abs(a - b) for a, b in zip(plain, amp)) < 0.05
    cfg = json.loads((tmp_path / "b" / "run" / "config.json").read_text())
    assert cfg["train"]["autocast"] == "bfloat16"
