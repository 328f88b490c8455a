"""``gated demo gated-attention``: the --quick mode end to end on the KJV fixture (table, JSON and
figure written; the table a function of the JSON), a cached rerun and a resumed interrupted run
giving the uninterrupted numbers, and the metrics against hand computations."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from gated.feedforward.attention import GatedMultiheadAttention
from gated.harness.cli import main
from gated.harness.data.fetch import fetch
from gated.harness.demos import common
from gated.harness.demos import gated_attention as ga

from .conftest import fixture_source, trust

STEM = "gated_attention_kjv_quick"
QUICK = ["demo", "gated-attention", "--quick", "--threads", "1", "--no-progress"]


@pytest.fixture(scope="module")
def kjv(tmp_path_factory):
    """The kjv fixture (400 verses) in a temporary $GATED_DATA."""
    root = tmp_path_factory.mktemp("ga-data")
    with pytest.MonkeyPatch.context() as mp:
        src = fixture_source("kjv", root / "src")
        trust(mp, "kjv", src)
        mp.setenv("GATED_DATA", str(root / "cache"))
        fetch("kjv", src, log=lambda *a: None)
    return root / "cache"


@pytest.fixture(scope="module")
def quick(kjv, tmp_path_factory):
    """One ``--quick`` run through ``gated.harness.cli.main``: ``(out dir, saved results)``."""
    out = tmp_path_factory.mktemp("ga-quick")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GATED_DATA", str(kjv))
        assert main([*QUICK, "--out", str(out)]) == 0
    return out, json.loads((out / f"{STEM}.json").read_text())


def _strip(rows):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


def test_quick_writes_table_json_and_figure(quick):
    out, results = quick
    md = (out / f"{STEM}.md").read_text()
    assert md == ga.table(results)  # the table is a function of the saved JSON alone
    assert f"`{results['command']}`" in md and results["command"].startswith("gated demo gated-attention --quick ")
    cfg = results["config"]
    assert cfg["quick"] and cfg["seeds"] == [0] and cfg["steps"] == ga.QUICK["steps"] and cfg["name"] == STEM
    rows = results["rows"]
    assert [r["arm"] for r in rows] == list(ga.ARMS)  # every arm, one seed
    L, T = cfg["layers"], cfg["context"]
    for r in rows:
        assert len(r["losses"]) == cfg["steps"] and math.isfinite(r["val_bpc"])
        assert [p[0] for p in r["curve"]] == [3, 6]  # --eval-every 3 of 6 steps
        assert len(r["sink"]) == len(r["max_act"]) == L and all(0 < s <= 1 for s in r["sink"])
        assert all(m > 0 for m in r["max_act"])
        assert (r["gate_parameters"] == 0) == (r["arm"] == "none")
    d, H = cfg["d_model"], cfg["heads"]
    params = {r["arm"]: r["gate_parameters"] for r in rows}
    assert params == {"none": 0, "elementwise": L * d * d, "headwise": L * d * H, "elementwise-U": L * (d * d + d),
                      "elementwise-UR": L * (2 * d * d + d)}
    assert results["uniform_first_token_share"] == pytest.approx(np.mean([1 / (i + 1) for i in range(1, T)]))
    assert [c["id"] for c in results["checks"]] == [1, 2, 3, 4]
    assert all(c["outcome"] in ("PASS", "FAIL", "REPORT") for c in results["checks"])
    for line in ("1. **", "2. **", "3. **REPORT**", "4. **"):
        assert line in md
    for ext in ("json", "md", "png", "pdf", "svg"):
        assert (out / f"{STEM}.{ext}").stat().st_size > 0
    import matplotlib.image

    img = matplotlib.image.imread(out / f"{STEM}.png")
    assert img.ndim == 3 and img.shape[0] > 100 and np.asarray(img).std() > 0.01  # not a blank canvas
    cache = out / f"{STEM}.runs"
    assert sorted(p.name for p in cache.glob("*/*.json")) == sorted(
        ["config.json", *(f"{a}-seed0.json" for a in ga.ARMS)])
    assert not list(cache.glob("*/*.pt"))  # finished runs leave no checkpoint


def test_rerun_reads_the_cache(quick, kjv, monkeypatch, capsys):
    out, results = quick
    monkeypatch.setenv("GATED_DATA", str(kjv))
    assert main([*QUICK, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.count("cached result") == len(ga.ARMS)
    again = json.loads((out / f"{STEM}.json").read_text())
    assert again["rows"] == results["rows"] and len(again["from_cache"]) == len(ga.ARMS)


def test_interrupted_run_resumes_to_the_same_numbers(quick, kjv, tmp_path, monkeypatch, capsys):
    _, results = quick
    monkeypatch.setenv("GATED_DATA", str(kjv))
    calls = {"n": 0}

    def step(self, n=1):  # interrupt in the second arm's 4th step (its step-3 checkpoint is on disk)
        calls["n"] += n
        if calls["n"] == ga.QUICK["steps"] + 4:
            raise KeyboardInterrupt

    with monkeypatch.context() as mp:
        mp.setattr(common.Progress, "step", step)
        assert main([*QUICK, "--out", str(tmp_path)]) != 0
    runs = next((tmp_path / f"{STEM}.runs").iterdir())
    assert (runs / "none-seed0.json").exists() and (runs / "elementwise-seed0.pt").exists()
    assert not (runs / "elementwise-seed0.json").exists()
    capsys.readouterr()
    assert main([*QUICK, "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "none seed 0: cached result" in printed and "elementwise seed 0: resumed from step 3" in printed
    again = json.loads((tmp_path / f"{STEM}.json").read_text())
    assert _strip(again["rows"]) == _strip(results["rows"])  # bit for bit, losses and curves included


def test_first_token_share_by_hand():
    # two heads, three queries, three keys; rows sum to 1, causal (no weight after the query)
    w = torch.tensor([[[[1.0, 0.0, 0.0], [0.9, 0.1, 0.0], [0.5, 0.2, 0.3]],
                       [[1.0, 0.0, 0.0], [0.2, 0.8, 0.0], [0.1, 0.1, 0.8]]]])  # (B=1, H=2, L=3, S=3)
    # queries 1 and 2 only: head 0 (0.9 + 0.5) / 2 = 0.7, head 1 (0.2 + 0.1) / 2 = 0.15; mean 0.425
    assert ga.first_token_share(w) == pytest.approx(0.425)
    assert ga.first_token_share_per_head(w) == pytest.approx([0.7, 0.15])
    assert ga.first_token_share(w.mean(1)) == pytest.approx(0.425)  # head-averaged weights give the same
    w2 = w.clone()
    w2[..., 0, 0] = 0.0  # query 0 is left out: changing it changes nothing
    assert ga.first_token_share(w2) == pytest.approx(0.425)
    w2[0, 1, 2] = torch.tensor([0.9, 0.1, 0.0])  # head 1, query 2: 0.1 -> 0.9 on position 0
    assert ga.first_token_share(w2) == pytest.approx((0.9 + 0.5 + 0.2 + 0.9) / 4)
    assert ga.uniform_first_token_share(4) == pytest.approx((1 / 2 + 1 / 3 + 1 / 4) / 3)  # = 13/36


def test_probe_against_an_explicit_forward():
    """The probe's sink share and max |x| equal the ones recomputed from an explicit causal softmax."""
    import argparse

    p = argparse.ArgumentParser()
    ga.add_arguments(p)
    args = p.parse_args(["--quick"])
    net = ga.build(args, "elementwise", vocab=11, seed=0)
    x = torch.randint(0, 11, (3, args.context), generator=torch.Generator().manual_seed(1))
    found = ga.probe(net, x)
    with torch.no_grad():
        h = net.tok(x) + net.pos.weight[: x.shape[1]]
        for i, b in enumerate(net.blocks):
            a = b.ln1(h)
            attn: GatedMultiheadAttention = b.attn
            q, k, _ = (a @ attn.in_proj_weight.T).chunk(3, dim=-1)
            D = attn.head_dim
            q, k = (t.unflatten(-1, (attn.num_heads, D)).transpose(1, 2) for t in (q, k))
            s = q @ k.transpose(-1, -2) / math.sqrt(D)
            s = s.masked_fill(torch.ones(x.shape[1], x.shape[1], dtype=torch.bool).triu(1), float("-inf"))
            w = s.softmax(-1)  # (B, H, T, T)
            share = sum(w[bb, hh, qq, 0].item() for bb in range(3) for hh in range(attn.num_heads)
                        for qq in range(1, x.shape[1])) / (3 * attn.num_heads * (x.shape[1] - 1))
            assert found["sink"][i] == pytest.approx(share, rel=1e-5)
            h = b(h)
            assert found["max_act"][i] == pytest.approx(h.abs().max().item())
    assert all(0 < g < 1 for g in found["gate_mean"])
    assert not any(b.probe for b in net.blocks)  # training forwards are back to SDPA


def test_gated_arms_share_the_plain_initial_weights():
    import argparse

    p = argparse.ArgumentParser()
    ga.add_arguments(p)
    args = p.parse_args(["--quick"])
    plain = ga.build(args, "none", vocab=11, seed=3).state_dict()
    for arm in ga.ARMS:
        sd = ga.build(args, arm, vocab=11, seed=3).state_dict()
        assert all(torch.equal(sd[k], v) for k, v in plain.items())
        assert all(k in plain or ".attn.gate_" in k for k in sd)


@pytest.mark.parametrize(("argv", "message"), [
    (["--arms", "none", "none"], "--arms lists an arm twice"),
    (["--sink-windows", "9"], "--sink-windows 9 exceeds --val-windows 8"),
    (["--eval-every", "0"], "--eval-every must be at least 1"),
])
def test_bad_flags_are_named(argv, message, kjv, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("GATED_DATA", str(kjv))
    assert main([*QUICK, *argv, "--out", str(tmp_path)]) != 0
    assert message in capsys.readouterr().err
