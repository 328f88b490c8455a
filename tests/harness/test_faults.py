"""The last harness faults: a lost ``latest.json`` never throws training away, nothing is written
through a link planted in a run directory, child runs import the parent's ``gated`` (not a
``gated/`` folder in the working directory), and the grid commands say what they are doing."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest
import torch

from gated.harness import checkpoint, compare, files
from gated.harness.cli import main
from gated.harness.files import read_jsonl

TINY = ["--task", "copy", "--delay", "3", "--hidden-size", "4", "--batch-size", "2", "--no-progress"]


def _train(run, *extra):
    return main(["train", *TINY, "--log-every", "2", "--out", str(run), *extra])


def _ckpt_dirs(run):
    return sorted(p.name for p in (run / "checkpoints").iterdir() if p.name.startswith("step-"))


# -- a lost or unreadable latest.json -------------------------------------------------------------

@pytest.mark.parametrize("damage", ["deleted", "garbage", "empty"])
def test_a_lost_latest_json_resumes_from_the_newest_intact_step(damage, tmp_path, caplog):
    whole, run = tmp_path / "whole", tmp_path / "run"
    assert _train(whole, "--steps", "6", "--ckpt-every", "2") == 0
    assert _train(run, "--steps", "4", "--ckpt-every", "2") == 0
    latest = run / "checkpoints" / "latest.json"
    {"deleted": latest.unlink, "garbage": lambda: latest.write_text("{not json"),
     "empty": lambda: latest.write_text("")}[damage]()
    assert checkpoint.has_checkpoint(run) and checkpoint.latest_step(run) == 4
    with caplog.at_level(logging.WARNING, "gated.harness"):
        assert main(["train", "--resume", str(run), "--steps", "6", "--no-progress"]) == 0
    said = caplog.text
    assert "newest intact checkpoint (step 4, checksums verified)" in said and "step-000004" in said
    losses = [(r["step"], r["loss"]) for r in read_jsonl(run / "metrics.jsonl")]
    assert losses == [(r["step"], r["loss"]) for r in read_jsonl(whole / "metrics.jsonl")]  # resumed at 4, not 0
    assert checkpoint.load(run).step == 6 and _ckpt_dirs(run) == ["step-000006"]


def test_a_lost_latest_json_with_no_intact_step_is_an_error_that_changes_nothing(tmp_path, capsys):
    run = tmp_path / "run"
    assert _train(run, "--steps", "4", "--ckpt-every", "2") == 0
    (run / "checkpoints" / "latest.json").unlink()
    weights = run / "checkpoints" / "step-000004" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8] + b"\0" * 8)
    before = (run / "metrics.jsonl").read_bytes()
    assert main(["train", "--resume", str(run), "--steps", "6", "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "latest.json is missing, and no step directory" in err and "step-000004: model.safetensors has sha256" in err
    assert err.count("\n") == 1
    assert _ckpt_dirs(run) == ["step-000004"] and (run / "metrics.jsonl").read_bytes() == before
    # a step directory of an older gated (no manifest) is named as such, and kept
    (run / "checkpoints" / "step-000004" / "manifest.json").unlink()
    assert main(["train", "--resume", str(run), "--no-progress"]) == 1
    assert "step-000004: no manifest.json (written by an older gated" in capsys.readouterr().err
    assert _ckpt_dirs(run) == ["step-000004"] and (run / "metrics.jsonl").read_bytes() == before
    # nor does a new run take the directory over
    assert _train(run, "--steps", "4", "--ckpt-every", "2") == 2
    assert "already holds a run" in capsys.readouterr().err


def test_a_newer_step_directory_is_never_deleted_by_an_older_save(tmp_path):
    """Only superseded checkpoints (earlier steps) are removed after a save."""
    run = tmp_path / "run"
    assert _train(run, "--steps", "2", "--ckpt-every", "2") == 0
    stray = run / "checkpoints" / "step-000008"
    stray.mkdir()
    (stray / "model.safetensors").write_bytes(b"kept")
    assert main(["train", "--resume", str(run), "--steps", "4", "--no-progress"]) == 0
    assert _ckpt_dirs(run) == ["step-000004", "step-000008"] and (stray / "model.safetensors").read_bytes() == b"kept"


def test_a_full_disk_while_saving_says_so(tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"

    def torch_full(*a, **k):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing file "
                           "data/0: file write failed")

    real = checkpoint.shutil.disk_usage
    monkeypatch.setattr(torch, "save", torch_full)
    monkeypatch.setattr(checkpoint.shutil, "disk_usage", lambda p: real(p)._replace(free=3 << 20))
    assert _train(run, "--steps", "2") == 1
    err = capsys.readouterr().err
    assert "the disk is full (3 MiB free on the file system of" in err and "file write failed" in err
    monkeypatch.setattr(checkpoint.shutil, "disk_usage", real)  # a failure with room left is not called full
    assert main(["train", "--resume", str(run), "--no-progress"]) == 1
    assert "disk is full" not in capsys.readouterr().err


# -- links planted in a run directory -------------------------------------------------------------

@pytest.mark.parametrize("kind", ["symlink", "dangling", "hardlink"])
def test_the_run_lock_never_writes_through_a_link(kind, tmp_path, capsys):
    run, victim = tmp_path / "run", tmp_path / "victim.txt"
    assert _train(run, "--steps", "2") == 0
    lock = run / ".lock"
    lock.unlink()
    if kind == "dangling":
        os.symlink(victim, lock)
    else:
        victim.write_text("precious\n")
        (os.symlink if kind == "symlink" else os.link)(victim, lock)
    assert main(["train", "--resume", str(run), "--steps", "4", "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert str(lock) in err and ("symbolic link" in err if kind != "hardlink" else "hard link (2 names)" in err)
    if kind == "dangling":
        assert not victim.exists()
    else:
        assert victim.read_text() == "precious\n"
    if kind != "symlink":
        return
    # gated compare uses the same lock: the run is reported as failed, the file untouched
    out = tmp_path / "cmp"
    assert _train(out / "default" / "UR" / "seed0", "--steps", "2", "--variant", "UR") == 0  # as compare would
    (out / "default" / "UR" / "seed0" / ".lock").unlink()
    os.symlink(victim, out / "default" / "UR" / "seed0" / ".lock")
    assert main(["compare", *TINY[:-1], "--variants", "UR", "--steps", "4", "--jobs", "1", "--out", str(out)]) == 1
    assert "symbolic link" in capsys.readouterr().out
    assert victim.read_text() == "precious\n"


def test_files_the_harness_writes_in_a_run_are_never_written_through_links(tmp_path, capsys):
    """task.json and metrics.jsonl: a planted link is replaced, its target untouched; a link to a
    device is refused; append_jsonl and a compare run's train.log refuse a link outright."""
    run, victim = tmp_path / "run", tmp_path / "victim.txt"
    victim.write_text("precious\n")
    assert _train(run, "--steps", "2", "--ckpt-every", "2") == 0
    with pytest.raises(files.UnsafeFile, match="symbolic link"):
        os.replace(run / "metrics.jsonl", tmp_path / "metrics.jsonl")
        os.symlink(victim, run / "metrics.jsonl")
        files.append_jsonl(run / "metrics.jsonl", {"step": 1})
    os.replace(tmp_path / "metrics.jsonl", run / "metrics.jsonl")
    (run / "task.json").unlink()
    os.symlink(victim, run / "task.json")
    assert main(["train", "--resume", str(run), "--steps", "4", "--no-progress"]) == 0
    assert not (run / "task.json").is_symlink() and json.loads((run / "task.json").read_text())["task"] == "copy"
    os.symlink("/dev/null", run / "figure.png")
    with pytest.raises(files.UnsafeFile, match="figure.png is a symbolic link to '/dev/null'"):
        files.atomic_write(run / "figure.png", b"png")
    files.atomic_write(Path("/dev/null"), b"a device named by the user is written through")
    assert victim.read_text() == "precious\n"
    out = tmp_path / "cmp"
    log = out / "default" / "UR" / "seed0" / "train.log"
    log.parent.mkdir(parents=True)
    os.symlink(victim, log)
    assert main(["compare", *TINY[:-1], "--variants", "UR", "--steps", "2", "--jobs", "1", "--out", str(out)]) == 1
    assert f"{log} is a symbolic link" in capsys.readouterr().out
    assert victim.read_text() == "precious\n"


# -- child runs, progress, flags ------------------------------------------------------------------

@pytest.mark.slow
def test_compare_children_import_the_parents_gated_not_a_folder_in_the_working_directory(tmp_path, monkeypatch,
                                                                                          capsys):
    (tmp_path / "gated").mkdir()  # e.g. the checkout itself, seen from its parent directory
    monkeypatch.chdir(tmp_path)
    assert main(["compare", *TINY, "--variants", "UR", "--steps", "2", "--jobs", "1", "--out", "cmp"]) == 0
    printed = capsys.readouterr().out
    assert "UR seed 0: started (" in printed and "UR seed 0: done" in printed
    assert compare.child_python()[-1].startswith("import sys; sys.path[0] = ")


@pytest.mark.slow
def test_a_failed_run_shows_the_end_of_its_log_in_the_terminal(tmp_path, capsys):
    out = tmp_path / "cmp"
    run = out / "default" / "UR" / "seed0"
    assert _train(run, "--steps", "2", "--ckpt-every", "2", "--variant", "UR") == 0  # the run compare would make
    weights = next((run / "checkpoints").glob("step-*")) / "model.safetensors"
    weights.write_bytes(b"\0" * weights.stat().st_size)
    capsys.readouterr()
    assert main(["compare", *TINY, "--variants", "UR", "--steps", "4", "--jobs", "1", "--out", str(out)]) == 1
    printed = capsys.readouterr().out
    assert "UR seed 0: FAILED (exit 1; the end of its train.log:)" in printed
    assert "| gated train: error: checkpoint" in printed and "is corrupted" in printed


def test_compare_accepts_progress_flags_and_counts_the_grids_steps(tmp_path, monkeypatch):
    seen = {}
    monkeypatch.setattr(compare, "execute", lambda runs, jobs, **kw: seen.update(kw) or [])
    monkeypatch.setattr(compare, "learning_curves", lambda *a, **k: [], raising=False)
    for flag, value in (("--no-progress", False), ("--progress", True)):
        try:
            main(["compare", *TINY[:-1], flag, "--variants", "UR", "--steps", "2", "--out", str(tmp_path / "c")])
        except Exception:  # no runs were made, so the table may fail; only the flag matters here
            pass
        assert seen["progress"] is value
    runs = compare.plan(compare_args(tmp_path / "g"))
    for k, run in enumerate(runs):
        run["dir"].mkdir(parents=True)
        (run["dir"] / "metrics.jsonl").write_text("".join(json.dumps({"step": s}) + "\n" for s in range(2, 2 * k + 3, 2)))
    bar = compare._GridBar(runs, show=False)
    assert bar.total == 10 * len(runs) and bar._done() == sum(2 * k + 2 for k in range(len(runs)))
    (runs[0]["dir"] / "metrics.jsonl").write_text('{"step": 99}\n{"torn')
    assert compare._last_step(runs[0]["dir"]) == 99 and compare._GridBar(runs, False)._done() == 10 + 4


def compare_args(out):
    from gated.harness.cli import build_parser

    return build_parser("compare").parse_args(["compare", *TINY[:-1], "--variants", "-", "UR", "--steps", "10",
                                               "--out", str(out)])


def test_the_kernel_build_runs_once_in_the_parent_for_cpu_runs(tmp_path, monkeypatch):
    from gated.backends import _build

    calls = []
    monkeypatch.setattr(_build, "_build", lambda: calls.append(1))
    monkeypatch.delenv("GATED_DISABLE_FUSED", raising=False)
    runs = compare.plan(compare_args(tmp_path / "g"))
    compare.prebuild(runs)
    assert calls == [1]
    monkeypatch.setenv("GATED_DISABLE_FUSED", "1")
    compare.prebuild(runs)
    assert calls == [1]
    monkeypatch.delenv("GATED_DISABLE_FUSED")
    for run in runs:
        run["cfg"].model.backend = "reference"
    compare.prebuild(runs)
    assert calls == [1]


def test_a_failed_tensorboard_start_leaves_nothing_that_blocks_the_run(tmp_path, monkeypatch, capsys):
    from gated.harness import tensorboard

    def missing():
        raise ValueError("--tensorboard needs the tensorboard package; install it")

    monkeypatch.setattr(tensorboard, "require", missing)
    run = tmp_path / "run"
    assert _train(run, "--steps", "2", "--tensorboard") == 2
    assert "needs the tensorboard package" in capsys.readouterr().err
    assert not (run / "config.json").exists()
    assert _train(run, "--steps", "2") == 0
