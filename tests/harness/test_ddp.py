"""torchrun with 2 CPU processes (gloo) computes what one process computes on the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from gated.harness import checkpoint
from gated.harness.cli import main

ARGS = ["train", "--task", "kjv", "--bptt", "6", "--embed-size", "6", "--hidden-size", "8", "--batch-size", "8",
        "--steps", "5", "--log-every", "1", "--eval-every", "0", "--eval-batches", "2", "--no-progress"]


@pytest.mark.slow
@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not built")
def test_two_process_ddp_equals_one_process(fixture_data, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    assert main([*ARGS, "--out", str(one)]) == 0
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           "-m", "gated.harness.cli", *ARGS, "--threads", "1", "--out", str(two)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 process(es)" in proc.stdout
    r1 = [json.loads(x) for x in (one / "metrics.jsonl").read_text().splitlines()]
    r2 = [json.loads(x) for x in (two / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in r2] == [1, 2, 3, 4, 5]
    for a, b in zip(r1, r2, strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5, abs=1e-6)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-4)
    w1, w2 = checkpoint.load(one).model, checkpoint.load(two).model
    assert all(torch.allclose(w1[k], w2[k], rtol=1e-4, atol=1e-6) for k in w1)
    assert r2[-1]["val_loss"] == pytest.approx(r1[-1]["val_loss"], rel=1e-5)
    assert checkpoint.load(two).state["world"] == 2 and len(checkpoint.load(two).state["carry"]) == 2
