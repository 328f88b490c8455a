"""Run directories under stress: the run lock, runs killed before their first checkpoint,
a full disk or Ctrl-C while checkpointing, torn and damaged files, crafted checkpoints, bad specs
rejected before any run, ``gated compare``'s flags, ``gated plot curves --metric``, test metrics
once at the end, and ``--help``."""

from __future__ import annotations

import errno
import json
import logging
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors import SafetensorError

from gated.harness import checkpoint, compare, files, launch, plots
from gated.harness.cli import build_parser, main
from gated.harness.files import BadFile, read_jsonl

TINY = ["--task", "copy", "--delay", "3", "--hidden-size", "4", "--batch-size", "2", "--no-progress"]


def _train(run, *extra):
    return main(["train", *TINY, "--log-every", "2", "--out", str(run), *extra])


def _comparable(run):
    return [{k: v for k, v in r.items() if "per_s" not in k} for r in read_jsonl(run / "metrics.jsonl")]


def _interrupt_first_save(monkeypatch):
    """Ctrl-C at the first checkpoint: the run has its config and metrics, but no checkpoint."""
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint, "save", interrupted)
    return monkeypatch.undo


def _wait(predicate, what, timeout=60.0):
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


# -- runs stopped before their first checkpoint ---------------------------------------------------

def test_run_stopped_before_its_first_checkpoint_continues_from_step_0(tmp_path, monkeypatch, capsys):
    """By --resume or by the same command, it equals an uninterrupted run; a stale checkpoint
    temporary and atomic-write temporary are removed; another config is still refused."""
    whole = tmp_path / "whole"
    assert _train(whole, "--steps", "6") == 0
    for how in ("resume", "same command"):
        run = tmp_path / how.replace(" ", "-")
        undo = _interrupt_first_save(monkeypatch)  # --ckpt-every 500: the first save is at the last step
        assert _train(run, "--steps", "6") == 130
        undo()
        assert (run / "config.json").exists() and not checkpoint.has_checkpoint(run)
        assert [r["step"] for r in read_jsonl(run / "metrics.jsonl")] == [2, 4, 6]
        (run / "checkpoints" / ".tmp-step-000006-abc123").mkdir(parents=True)  # left by a kill -9
        (run / ".metrics.jsonl.xyz.tmp").write_text("half")
        assert _train(run, "--steps", "6", "--hidden-size", "5") == 2
        assert "already holds a run with another config (--hidden-size differ)" in capsys.readouterr().err
        if how == "resume":
            assert main(["train", "--resume", str(run), "--no-progress"]) == 0
            assert "no checkpoint yet; starting from step 0" in capsys.readouterr().out
        else:
            assert _train(run, "--steps", "6") == 0
        assert _comparable(run) == _comparable(whole)
        assert checkpoint.load(run).step == 6
        assert not list((run / "checkpoints").glob(".tmp-*")) and not list(run.glob(".*.tmp"))
    # with a checkpoint the same command still points to --resume
    assert _train(whole, "--steps", "6") == 2
    assert "already holds a run; continue it with `gated train --resume" in capsys.readouterr().err


@pytest.mark.slow
def test_compare_continues_its_interrupted_grid(tmp_path, monkeypatch, capsys):
    out = tmp_path / "cmp"
    undo = _interrupt_first_save(monkeypatch)
    assert _train(out / "default" / "UR" / "seed0", "--steps", "4", "--variant", "UR") == 130
    undo()
    assert main(["compare", *TINY[:-1], "--variants", "UR", "--steps", "4", "--log-every", "2", "--jobs", "1",
                 "--out", str(out)]) == 0
    assert "UR seed 0: done" in capsys.readouterr().out
    assert checkpoint.load(out / "default" / "UR" / "seed0").step == 4


# -- the run lock ---------------------------------------------------------------------------------

@pytest.mark.slow
def test_a_second_writer_is_refused_and_compare_skips_the_run(tmp_path, capsys, caplog):
    """A training process holds its run; --resume, the same command and gated compare leave it
    alone; kill -9 releases the lock."""
    out = tmp_path / "cmp"
    run = out / "default" / "UR" / "seed0"
    holder = subprocess.Popen([sys.executable, "-m", "gated.harness.cli", "train", *TINY, "--variant", "UR",
                               "--steps", "100000000", "--log-every", "20", "--ckpt-every", "0", "--threads", "1",
                               "--out", str(run)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              env=dict(os.environ, OMP_NUM_THREADS="1"))
    try:
        _wait(lambda: len(read_jsonl(run / "metrics.jsonl")) >= 2 or holder.poll() is not None, "the first records")
        assert holder.poll() is None, holder.stderr.read().decode()
        assert main(["train", "--resume", str(run), "--steps", "8", "--no-progress"]) == 3
        assert f"run {run} is in use by pid {holder.pid}" in capsys.readouterr().err
        assert main(["train", *TINY, "--variant", "UR", "--out", str(run)]) == 3
        assert main(["compare", *TINY[:-1], "--variants", "-", "UR", "--steps", "4", "--log-every", "2",
                     "--jobs", "2", "--out", str(out)]) == 0
        printed = capsys.readouterr().out
        assert f"UR seed 0: skipped: run {run} is in use by pid {holder.pid}" in printed
        assert "1 of 2 runs skipped" in printed and "- seed 0: done" in printed
        steps = [r["step"] for r in read_jsonl(run / "metrics.jsonl")]
        assert steps == list(range(20, 20 * len(steps) + 1, 20))  # nobody truncated or appended
        with pytest.raises(checkpoint.RunInUse, match=f"in use by pid {holder.pid}"):
            checkpoint.lock_run(run)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        holder.stderr.close()
    checkpoint.lock_run(run)  # kill -9 dropped the lock
    checkpoint.close_run(run)
    with caplog.at_level(logging.WARNING, "gated.harness"):  # kill -9 may have torn the last line
        assert main(["train", "--resume", str(run), "--steps", "40", "--no-progress"]) == 0
    assert [r["step"] for r in read_jsonl(run / "metrics.jsonl")] == [20, 40]


# -- a full disk or Ctrl-C while checkpointing ----------------------------------------------------

def _enospc(*a, **k):
    raise OSError(errno.ENOSPC, "No space left on device")


def _safetensors_full(*a, **k):
    raise SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space" })')


def _torch_full(*a, **k):
    raise RuntimeError("[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing file data/0: "
                       "file write failed")


def _ctrl_c(*a, **k):
    raise KeyboardInterrupt


@pytest.mark.parametrize("target,fail,status", [("save_file", _enospc, 1), ("save_file", _safetensors_full, 1),
                                                 ("torch_save", _torch_full, 1), ("torch_save", _ctrl_c, 130),
                                                 ("write_json", _enospc, 1)])
def test_a_failed_checkpoint_leaves_the_previous_one_and_no_temporaries(target, fail, status, tmp_path, monkeypatch,
                                                                         capsys):
    whole, run = tmp_path / "whole", tmp_path / "run"
    assert _train(whole, "--steps", "4", "--ckpt-every", "2") == 0
    real = {"save_file": checkpoint.save_file, "torch_save": torch.save, "write_json": checkpoint.write_json}[target]
    calls = []

    def second_fails(*args, **kwargs):  # the step-4 checkpoint fails (write_json: publishing its latest.json)
        if target != "write_json" or Path(args[0]).name == "latest.json":
            calls.append(1)
        return (fail if len(calls) == 2 else real)(*args, **kwargs)

    if target == "torch_save":
        monkeypatch.setattr(torch, "save", second_fails)
    else:
        monkeypatch.setattr(checkpoint, target, second_fails)
    assert _train(run, "--steps", "4", "--ckpt-every", "2") == status
    err = capsys.readouterr().err
    if status == 1:
        assert err.startswith("gated train: error: could not write the checkpoint for step 4 in ")
        assert err.rstrip().endswith("the previous checkpoint (step 2) is intact") and err.count("\n") == 1
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["latest.json", "step-000002"]
    assert checkpoint.load(run).step == 2
    monkeypatch.undo()  # the disk has room again
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    assert _comparable(run) == _comparable(whole)


def test_plain_writes_on_a_full_disk_or_read_only_output_are_one_line_errors(tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"

    class FullDisk:
        def __init__(self, *a, **k):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")  # a write to an open file: no file name

    monkeypatch.setattr(files, "open", FullDisk, raising=False)
    assert _train(run, "--steps", "2") == 1
    err = capsys.readouterr().err
    assert err == f"gated train: error: [Errno 28] No space left on device: '{run / 'metrics.jsonl'}'\n"
    monkeypatch.undo()
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0

    def read_only(*a, **k):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(files.tempfile, "mkstemp", read_only)
    assert main(["plot", "curves", str(run), "--out", str(tmp_path / "c.png")]) == 1
    assert capsys.readouterr().err == f"gated plot: error: [Errno 30] Read-only file system: '{tmp_path / 'c.png'}'\n"


# -- torn and damaged files -----------------------------------------------------------------------

def test_torn_last_metrics_line_is_skipped_once_and_resume_truncates_it(tmp_path, caplog, capsys):
    run = tmp_path / "run"
    assert _train(run, "--steps", "4", "--ckpt-every", "2") == 0
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 6, "lo')  # the process died while writing it
    with caplog.at_level(logging.WARNING, "gated.harness"):
        assert main(["plot", "curves", str(run), "--out", str(tmp_path / "c.png")]) == 0
        assert [r["step"] for r in read_jsonl(run / "metrics.jsonl")] == [2, 4]
    torn = [r for r in caplog.records if "torn last line 3" in r.getMessage()]
    assert len(torn) == 1 and str(run / "metrics.jsonl") in torn[0].getMessage()
    assert main(["train", "--resume", str(run), "--steps", "6", "--no-progress"]) == 0
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(ln)["step"] for ln in lines] == [2, 4, 6]
    # a damaged line that is not the last is an error naming the file and the line
    (run / "metrics.jsonl").write_text(lines[0] + "\n{oops\n" + lines[2] + "\n")
    capsys.readouterr()
    assert main(["plot", "curves", str(run)]) == 2
    assert f"{run / 'metrics.jsonl'} is not valid JSON (line 2, column 2" in capsys.readouterr().err


@pytest.mark.parametrize("damaged", ["config.json", "task.json", "--config", "manifest"])
def test_json_errors_name_their_file_and_line(damaged, tmp_path, data_home, capsys):
    run = tmp_path / "run"
    bad = '{"a": 1,\n "b" 2}'
    if damaged == "manifest":
        data_home.mkdir()
        (data_home / "mnist.npz").write_bytes(b"x")
        path = data_home / "mnist.json"
        path.write_text(bad)
        args, status = ["train", "--task", "smnist", "--steps", "1", "--out", str(run)], 1
    elif damaged == "--config":
        path = tmp_path / "c.json"
        path.write_text(bad)
        args, status = ["train", "--config", str(path), "--out", str(run)], 2
    else:
        assert _train(run, "--steps", "2") == 0
        path = run / damaged
        path.write_text(bad)
        args = ["train", "--resume", str(run)] if damaged == "config.json" else ["plot", "curves", str(run)]
        status = 2
    assert main(args) == status
    err = capsys.readouterr().err
    assert f"{path} is not valid JSON (line 2, column 6: Expecting ':' delimiter)" in err and "Traceback" not in err


class _Payload:
    """Unpickling this runs code (it creates a file)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return open, (self.marker, "w")


@pytest.mark.parametrize("content,message", [
    ("payload", "state.pt holds objects other than tensors and plain data"),
    ("list", "state.pt holds a list, not a dict"),
    ("empty dict", "incompatible or corrupted state: KeyError"),
])
def test_crafted_state_pt_is_refused_as_unreadable(content, message, tmp_path, capsys):
    run = tmp_path / "run"
    assert _train(run, "--steps", "2") == 0
    marker = tmp_path / "executed"
    latest = json.loads((run / "checkpoints" / "latest.json").read_text())
    state = run / "checkpoints" / latest["dir"] / "state.pt"
    torch.save({"payload": {"optimizer": _Payload(str(marker))}, "list": [1, 2], "empty dict": {}}[content], state)
    latest["files"]["state.pt"] = files_sha(state)  # a consistent, crafted checkpoint
    (run / "checkpoints" / "latest.json").write_text(json.dumps(latest))
    assert main(["train", "--resume", str(run), "--steps", "4", "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    if content != "empty dict":
        assert "is corrupted or unreadable" in err
    assert not marker.exists()


def files_sha(path):
    from gated.harness.data.formats import sha256_file

    return sha256_file(path)


# -- experiment specs: every field checked before the first run -----------------------------------

GOOD = {"suite": "full", "variants": ["-", "UR"], "seeds": [0],
        "config": {"task": "copy", "delay": 3, "hidden_size": 4, "batch_size": 2, "steps": 2}}


@pytest.mark.parametrize("change,message", [
    ({"seeds": ["a"]}, "'seeds' must be integers >= 0, got ['a']"),
    ({"seeds": [1.5]}, "'seeds' must be integers"),
    ({"seeds": [True]}, "'seeds' must be integers"),
    ({"grid": {"delay": 5}}, "'grid' maps a config field to a non-empty list of values"),
    ({"grid": {"delay": []}}, "'grid' maps a config field to a non-empty list"),
    ({"check": {"better": "Q", "worse": "-"}}, "check 'better': unknown variant 'Q'"),
    ({"check": {"better": "R", "worse": "-"}}, "check 'better' names 'R', which is not in the spec's variants"),
    ({"variants": ["-", "Q"]}, "unknown variant 'Q'"),
    ({"threshold": "low"}, "'threshold' must be a number"),
    ({"jobs": -1}, "'jobs' must be an integer >= 0"),
    ({"config": GOOD["config"] | {"delay": "x"}}, "experiment bad: --delay expects an integer"),
])
def test_invalid_specs_are_rejected_before_any_run(change, message, tmp_path, capsys):
    exp, out = tmp_path / "experiments", tmp_path / "out"
    exp.mkdir()
    (exp / "good.json").write_text(json.dumps(GOOD))
    (exp / "bad.json").write_text(json.dumps(GOOD | change))
    assert main(["reproduce", "--only", "good", "bad", "--experiments", str(exp), "--out", str(out)]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()  # not even the good experiment ran


def test_long_variant_names_in_a_check_match_the_spec(tmp_path):
    from gated.harness import reproduce

    (tmp_path / "s.json").write_text(json.dumps(GOOD | {"check": {"better": "uniform-refine", "worse": "standard"}}))
    assert reproduce.load_spec(tmp_path / "s.json")["check"] == {"better": "uniform-refine", "worse": "standard"}



@pytest.mark.slow
def test_a_check_over_runs_in_use_is_not_decided(tmp_path, monkeypatch, capsys):
    """Runs another process is still training cannot pass or fail a check: exit 1, saying so."""
    exp, out = tmp_path / "experiments", tmp_path / "out"
    exp.mkdir()
    (exp / "tiny.json").write_text(json.dumps(GOOD | {"suite": "quick", "check": {"better": "UR", "worse": "-"}}))
    argv = ["reproduce", "--quick", "--experiments", str(exp), "--out", str(out), "--jobs", "2"]
    assert main(argv) in (0, 1)  # trains both runs; the verdict at 2 steps does not matter here
    monkeypatch.setattr(compare, "execute", lambda runs, jobs, **kw: runs[:1])  # as if one were in use
    assert main(argv) == 1
    assert "the ordering check is not decided for tiny" in capsys.readouterr().out
    summary = json.loads((out / "tiny" / "summary.json").read_text())
    assert summary["check"]["passed"] is None and len(summary["check"]["skipped"]) == 1

# -- gated compare's flags ------------------------------------------------------------------------

def _plan(*flags):
    args = build_parser("compare").parse_args(["compare", *TINY[:-1], "--steps", "2", *flags])
    return args, compare.plan(args)


def test_compare_honours_variant_seed_and_threads(tmp_path, monkeypatch):
    args, runs = _plan("--variant", "UR", "--seed", "3", "--out", str(tmp_path / "c"))
    assert [(r["variant"], r["seed"]) for r in runs] == [("UR", 3)]
    args, runs = _plan("--variants", "-", "UR", "--seeds", "0", "--threads", "1", "--jobs", "1",
                       "--out", str(tmp_path / "c"))
    started = []

    class Done:
        returncode = 0

        def __init__(self, cmd, env, **kwargs):
            started.append((cmd, env))

        def poll(self):
            return 0

    monkeypatch.setattr(launch.subprocess, "Popen", Done)
    assert compare.execute(runs, args.jobs, log=lambda *a: None) == []
    for cmd, env in started:
        i = cmd.index("--threads")
        assert cmd[i + 1] == "1" and "--threads" not in cmd[i + 1:] and env["OMP_NUM_THREADS"] == "1"
    # without --threads a run gets the cores shared between the jobs
    args, runs = _plan("--variants", "UR", "--jobs", "1", "--out", str(tmp_path / "d"))
    started.clear()
    compare.execute(runs, args.jobs, log=lambda *a: None)
    cores = str(os.cpu_count() or 1)
    assert started[0][0][started[0][0].index("--threads") + 1] == cores and started[0][1]["OMP_NUM_THREADS"] == cores


def test_compare_rejects_flags_it_cannot_honour(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        _plan("--resume", str(tmp_path), "--out", str(tmp_path / "c"))
    assert e.value.code == 2 and "unrecognized arguments: --resume" in capsys.readouterr().err


def test_compare_refuses_an_out_holding_runs_of_another_model(tmp_path, capsys):
    out = tmp_path / "cmp"
    assert _train(out / "default" / "UR" / "seed0", "--steps", "2", "--variant", "UR") == 0
    assert main(["compare", *TINY[:-1], "--variants", "UR", "--hidden-size", "6", "--steps", "2",
                 "--out", str(out)]) == 2
    assert "holds a run that differs in --hidden-size; choose another --out" in capsys.readouterr().err


# -- gated plot curves --metric -------------------------------------------------------------------

def test_plot_curves_rejects_unknown_metrics_and_labels_validation(tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    assert _train(run, "--steps", "4", "--eval-every", "2") == 0
    assert main(["plot", "curves", str(run), "--metric", "unknown"]) == 2
    err = capsys.readouterr().err
    assert "unknown metric 'unknown'" in err and "available: accuracy, grad_norm, loss, lr" in err
    assert "val_loss" in err and not (run / "curves.png").exists()
    figures = []
    monkeypatch.setattr(plots, "save_figure", lambda fig, out, *rest: figures.append(fig) or [Path(out)])
    for metric, label in (("val_loss", "validation loss"), ("loss", "training loss"), ("test_loss", "test loss")):
        assert main(["plot", "curves", str(run), "--metric", metric]) == 0
        ax = figures[-1].axes[0]
        assert ax.get_ylabel() == label
        assert any(t.get_text() == f"trivial baseline ({math.log(8):.4g})" for t in ax.get_legend().get_texts())


# -- test metrics: once, at the end, on the whole test split --------------------------------------

def test_test_metrics_once_at_the_end_on_the_whole_test_split(tmp_path):
    from gated.harness import config
    from gated.harness.model import SequenceModel
    from gated.harness.tasks import build_task
    from gated.harness.tasks.synthetic import TEST_SIZE

    run = tmp_path / "run"
    assert _train(run, "--steps", "6", "--eval-every", "2", "--eval-batches", "1") == 0
    recs = read_jsonl(run / "metrics.jsonl")
    assert [r["step"] for r in recs if "val_loss" in r] == [2, 4, 6]
    assert [r["step"] for r in recs if "test_loss" in r] == [6]
    cfg = config.from_dict(json.loads((run / "config.json").read_text()))
    task = build_task(cfg.task, cfg.train.seed)
    model = SequenceModel(cfg.model, task)
    model.load_state_dict(checkpoint.load(run).model)
    n = task.num_batches("test", 2)
    assert n * 2 == TEST_SIZE
    with torch.no_grad():
        losses = [task.loss(model(b.x)[0], b.y).item() for b in (task.batch("test", i, 2) for i in range(n))]
    assert recs[-1]["test_loss"] == pytest.approx(sum(losses) / n, rel=1e-6)


# -- --help ---------------------------------------------------------------------------------------

def test_help_lists_tasks_and_variants_without_contributor_text(capsys):
    from gated import VARIANTS
    from gated.harness.tasks import TASKS

    for argv in (["train", "--help"], ["--help"], ["demo", "--help"]):
        with pytest.raises(SystemExit):
            main(argv)
        text = capsys.readouterr().out
        assert "issue" not in text and "``" not in text and "add_arguments" not in text, argv
        if argv[0] == "train":
            assert all(f"\n  {name} " in text for name in TASKS)
            assert all(f"\n  {v.name:<3} {v.long_name} " in text for v in VARIANTS.values())
            assert "mgu takes - C U R UR" in text


def test_read_jsonl_rejects_records_that_are_not_objects(tmp_path):
    (tmp_path / "m.jsonl").write_text('{"step": 1}\n[1]\n{"step": 2}\n')
    with pytest.raises(BadFile, match=r"m.jsonl, line 2: expected a JSON object, got list"):
        read_jsonl(tmp_path / "m.jsonl")
