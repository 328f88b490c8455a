"""Grids beyond one machine: ``gated compare --launcher`` through submitit (its local executor runs
here; the Slurm path with a stand-in ``AutoExecutor``, as this machine has no ``srun``), and DDP's
device per rank on CUDA (CUDA and the process group faked)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist

from gated.harness import compare, distributed, launch, train
from gated.harness.cli import build_parser, main
from gated.harness.config import build
from gated.harness.evaluate import Window
from gated.harness.model import resolve_device

# batch 50: the test split (1,000 examples, evaluated at the end) in 20 batches
TINY = ["--task", "copy", "--delay", "3", "--hidden-size", "4", "--batch-size", "50", "--log-every", "1",
        "--eval-every", "0", "--eval-batches", "1"]


def _steps(run):
    return [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_compare_through_submitits_local_executor(tmp_path, capsys):
    """A fresh run, a resumed one and a finished one, each as in the default launcher."""
    out = tmp_path / "cmp"
    argv = ["compare", *TINY, "--variants", "UR", "--launcher", "submitit-local", "--out", str(out)]
    assert main([*argv, "--steps", "2"]) == 0
    run = out / "default" / "UR" / "seed0"
    assert _steps(run) == [1, 2] and "UR-LSTM" in (out / "table.md").read_text()
    assert list((out / ".submitit").glob("*_log.out"))  # submitit ran it
    assert main([*argv, "--steps", "3"]) == 0  # resumed from its step-2 checkpoint by a second job
    assert _steps(run) == [1, 2, 3] and len(list((out / ".submitit").glob("*_log.out"))) == 2
    capsys.readouterr()
    assert main([*argv, "--steps", "3"]) == 0
    assert "already finished" in capsys.readouterr().out


def test_slurm_flags_reach_submitit(tmp_path, monkeypatch):
    submitit = pytest.importorskip("submitit")
    made, jobs = {}, []

    class Job:
        job_id, paths = "42", None

        def done(self):
            return True

        def result(self):
            return 0

    class Executor:  # submitit.AutoExecutor's interface, recording instead of calling sbatch
        def __init__(self, folder, cluster):
            made.update(folder=folder, cluster=cluster, params={})

        def update_parameters(self, **params):
            made["params"].update(params)

        def submit(self, fn, *args, **kwargs):
            jobs.append((fn, args, kwargs, dict(made["params"])))
            return Job()

    monkeypatch.setattr(submitit, "AutoExecutor", Executor)
    out = tmp_path / "cmp"
    args = build_parser("compare").parse_args([
        "compare", *TINY, "--steps", "2", "--variants", "-", "UR", "--out", str(out), "--launcher", "slurm",
        "--slurm-partition", "gpu", "--slurm-time", "30", "--slurm-cpus-per-task", "2", "--slurm-gpus-per-node", "1",
        "--slurm-mem-gb", "8", "--slurm-account", "lab", "--slurm-param", "constraint=v100"])
    runs = compare.plan(args)
    assert compare.execute(runs, args.jobs, log=lambda *a: None, launcher=launch.from_args(args, out)) == []
    assert made["cluster"] == "slurm" and made["folder"] == out / ".submitit"
    assert len(jobs) == 2  # every run queued at once (no --jobs)
    for (fn, (command,), kwargs, params), run in zip(jobs, runs, strict=True):
        assert fn is subprocess.call and kwargs == {"cwd": os.getcwd()}
        assert command[:6] == [*command[:4], str(run["dir"] / "train.log"), "OMP_NUM_THREADS=2"]  # added to the node's env
        assert command[6:9] == compare.child_python()  # this Python, importing this gated
        assert command[command.index("--threads") + 1] == "2"
        assert params == {"slurm_partition": "gpu", "timeout_min": 30, "cpus_per_task": 2, "gpus_per_node": 1,
                          "mem_gb": 8.0, "slurm_account": "lab", "slurm_constraint": "v100",
                          "name": f"gated-default-{'base' if run['variant'] == '-' else 'UR'}-seed0"}


def test_slurm_flags_without_the_slurm_launcher_are_refused(tmp_path, capsys):
    assert main(["compare", *TINY, "--steps", "2", "--slurm-partition", "gpu", "--out", str(tmp_path / "c")]) == 2
    assert "the --slurm-* flags need --launcher slurm" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()


@pytest.fixture
def fake_cuda(monkeypatch):
    """Two CUDA devices and a process group that record what they are asked for."""
    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: calls.append(("set_device", torch.device(device))))
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda backend, **kw: calls.append(("init", backend)))
    monkeypatch.setattr(dist, "get_rank", lambda: int(__import__("os").environ["RANK"]))
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(torch.nn.parallel, "DistributedDataParallel", lambda model, **kw: ("DDP", kw))
    monkeypatch.setenv("WORLD_SIZE", "2")
    return calls


@pytest.mark.parametrize("rank", [0, 1])
def test_ddp_rank_drives_the_gpu_of_its_local_rank(rank, fake_cuda, monkeypatch):
    monkeypatch.setenv("RANK", str(rank))
    monkeypatch.setenv("LOCAL_RANK", str(rank))
    d = distributed.setup(resolve_device("auto"))
    assert d.device == torch.device("cuda", rank) and (d.rank, d.local_rank) == (rank, rank)
    assert fake_cuda == [("set_device", torch.device("cuda", rank)), ("init", "nccl")]  # the device first
    assert d.wrap(torch.nn.Linear(1, 1)) == ("DDP", {"device_ids": [rank], "output_device": rank})
    with pytest.raises(ValueError, match="each process uses cuda:LOCAL_RANK"):
        distributed.setup(torch.device("cuda", 1 - rank))
    fake_cuda.clear()
    cpu = distributed.setup(torch.device("cpu"))  # gloo, and DDP without devices
    assert cpu.device == torch.device("cpu") and fake_cuda == [("init", "gloo")]
    assert cpu.wrap(torch.nn.Linear(1, 1)) == ("DDP", {})


def test_checkpoints_carry_this_devices_cuda_generator(tmp_path, monkeypatch):
    """Saved: the CUDA generator of this process's device; restored to that device on resume.
    Checkpoints without one (CPU runs, older versions) restore the CPU generator only."""
    states = {0: torch.tensor([7], dtype=torch.uint8), 1: torch.tensor([9], dtype=torch.uint8)}
    restored, saved = [], {}
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device: states[torch.device(device).index])
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device: restored.append((state, device)))
    monkeypatch.setattr(train.ckpt, "save", lambda run, step, weights, state, cfg, best=None: saved.update(state))
    cfg = build({"task": "copy", "delay": 3, "hidden_size": 4})
    model = torch.nn.Linear(2, 2)
    opt, sched = train.make_optimizer(cfg.optim, model, 10)
    d = distributed.Dist(device=torch.device("cuda", 1))
    train._save(tmp_path, 1, model, opt, sched, Window(), None, cfg, d)
    assert torch.equal(saved["cuda_rng"][0], states[1]) and torch.equal(saved["rng"][0], torch.get_rng_state())
    train.restore_rng(saved, 0, d.device)
    assert len(restored) == 1 and torch.equal(restored[0][0], states[1]) and restored[0][1] == d.device
    restored.clear()
    train.restore_rng({"rng": saved["rng"]}, 0, d.device)
    train.restore_rng(saved, 0, torch.device("cpu"))
    assert restored == []
