"""``gated demo``: each demonstration end to end on tiny fixture datasets, its table checked
against the saved results and independent recounts; bad input names the choices."""

from __future__ import annotations

import json
import math
import runpy
import shlex
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gated.feedforward import Highway
from gated.harness.cli import main
from gated.harness.data.fetch import fetch
from gated.harness.demos import channel_gating, glu_ffn, highway

from .conftest import fixture_source, trust

ROOT = Path(__file__).resolve().parents[2]
TINY = {
    "highway": ["--depths", "2", "--width", "8", "--steps", "4", "--batch-size", "8", "--seeds", "0", "1",
                "--tail", "2", "--log-every", "2"],
    "channel-gating": ["--channels", "4", "--steps", "3", "--batch-size", "8", "--thresholds", "0", "1",
                       "--eval-batch", "10", "--log-every", "3"],
    "glu-ffn": ["--variants", "relu", "swiglu", "bilinear", "--layers", "1", "--d-model", "16", "--heads", "2",
                "--d-ff", "24", "--context", "16", "--steps", "4", "--batch-size", "4", "--val-windows", "8",
                "--warmup", "2", "--log-every", "2"],
}
STEM = {"highway": "highway_mnist", "channel-gating": "channel_gating_fmnist", "glu-ffn": "glu_ffn_kjv"}
MODULE = {"highway": highway, "channel-gating": channel_gating, "glu-ffn": glu_ffn}


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory):
    """mnist, fashion-mnist and kjv fixtures (60 train / 20 test images; 400 verses) in a temporary $GATED_DATA."""
    root = tmp_path_factory.mktemp("demo-data")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GATED_DATA", str(root / "cache"))
        for name in ("mnist", "fashion-mnist", "kjv"):
            src = fixture_source(name, root / "src" / name)
            trust(mp, name, src)
            fetch(name, src, log=lambda *a: None)
        yield root


@pytest.fixture(scope="module")
def runs(demo_data, tmp_path_factory):
    """Each demo run once through ``gated.harness.cli.main``; ``{demo: (out dir, saved results)}``."""
    done = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GATED_DATA", str(demo_data / "cache"))
        for demo, flags in TINY.items():
            out = tmp_path_factory.mktemp(demo)
            assert main(["demo", demo, *flags, "--threads", "1", "--no-progress", "--out", str(out)]) == 0
            done[demo] = (out, json.loads((out / f"{STEM[demo]}.json").read_text()))
    return done


def table_rows(md: str) -> list[list[str]]:
    """Cells of the markdown table's body rows."""
    lines = [line for line in md.splitlines() if line.startswith("| ") and not line.startswith("|---")]
    return [[c.strip() for c in line.strip("|").split("|")] for line in lines[1:]]


@pytest.mark.parametrize("demo", list(TINY))
def test_outputs_are_written_and_redrawn_from_the_json(demo, runs):
    out, results = runs[demo]
    stem = STEM[demo]
    md = (out / f"{stem}.md").read_text()
    assert md == MODULE[demo].table(results)  # the table is a function of the saved JSON alone
    assert results["config"] == results["config"] | {"threads": 1, "out": str(out), "name": stem}
    assert results["command"].startswith(f"gated demo {demo} ") and f"`{results['command']}`" in md
    import matplotlib.image

    img = matplotlib.image.imread(out / f"{stem}.png")
    assert img.ndim == 3 and img.shape[0] > 100 and np.asarray(img).std() > 0.01  # not a blank canvas


def test_recorded_command_reruns_to_the_same_numbers(runs, demo_data, tmp_path, monkeypatch, capsys):
    _, results = runs["highway"]
    monkeypatch.setenv("GATED_DATA", str(demo_data / "cache"))
    argv = shlex.split(results["command"])[1:]
    argv[argv.index("--out") + 1] = str(tmp_path)
    assert main([*argv, "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert all(str(tmp_path / f"highway_mnist.{ext}") in printed for ext in ("md", "png", "json"))
    again = json.loads((tmp_path / "highway_mnist.json").read_text())
    strip = ("seconds",)
    assert [{k: v for k, v in r.items() if k not in strip} for r in again["runs"]] == \
        [{k: v for k, v in r.items() if k not in strip} for r in results["runs"]]


def _highway_parameters(model: str, depth: int, w: int) -> int:
    per_block = {"plain": w * w + w, "highway-": 2 * (w * w + w), "highway-UR": (w * w + w) + (2 * w * w + 2 * w) + w}
    return 784 * w + w + depth * per_block[model] + 10 * w + 10


def test_highway_table_matches_the_runs(runs):
    _, results = runs["highway"]
    c = results["config"]
    rows = table_rows(highway.table(results))
    assert [(int(r[0]), r[1]) for r in rows] == [(d, m) for d in c["depths"] for m in c["models"]]
    for row in rows:
        rs = [r for r in results["runs"] if r["depth"] == int(row[0]) and r["model"] == row[1]]
        assert [r["seed"] for r in rs] == c["seeds"]
        assert int(row[2].replace(",", "")) == _highway_parameters(row[1], int(row[0]), c["width"])
        finals = [float(np.mean(r["losses"][-c["tail"]:])) for r in rs]  # recomputed from the saved curves
        assert [r["final_loss"] for r in rs] == finals
        assert row[5] == f"{np.mean(finals):.4f} ({', '.join(f'{v:.3f}' for v in finals)})"
        accs = [r["test_accuracy"] * results["test_images"] for r in rs]
        assert all(abs(a - round(a)) < 1e-4 for a in accs)  # a whole number of correct test images
        assert (row[3] == "—") == (row[1] == "plain")
        assert all(len(r["losses"]) == c["steps"] for r in rs)


def test_highway_gate_statistics_against_the_formula():
    torch.manual_seed(0)
    net = highway.build("highway-", 4, 8)
    x = torch.randn(32, 784)
    with torch.no_grad():  # the equations written out: T = σ(W_T h + b_T), h' = relu(W_H h + b_H)·T + h·(1 − T)
        h = torch.relu(x @ net[0].weight.T + net[0].bias)
        ts, carry = [], torch.ones_like(h)
        for layer in net[2:-1]:
            t = torch.sigmoid(h @ layer.gate.weight.T + layer.gate.bias)
            ts.append(t.mean().item())
            carry = carry * (1 - t)
            h = torch.relu(h @ layer.hidden.weight.T + layer.hidden.bias) * t + h * (1 - t)
    t0, carry0 = highway.mean_transform_gate(net, x)
    assert t0 == pytest.approx(np.mean(ts), rel=1e-6) and carry0 == pytest.approx(carry.mean().item(), rel=1e-5)
    assert highway.mean_transform_gate(highway.build("plain", 4, 8), x) is None
    # a strongly negative gate bias closes every transform gate: the stack carries its input unchanged
    for layer in net[2:-1]:
        torch.nn.init.constant_(layer.gate.bias, -40.0)
    t0, carry0 = highway.mean_transform_gate(net, x)
    assert t0 < 1e-12 and carry0 == pytest.approx(1.0, abs=1e-12)
    with torch.no_grad():
        first = net[1](net[0](x))
        assert torch.allclose(net[2:-1](first), first, atol=1e-6)
    assert all(isinstance(m, Highway) for m in net[2:-1])


def _count_macs(net, x, batch, thresholds):
    """Dense and performed MACs of the gated layers, recounted from the gate equations:
    open = (y_p − running_mean)/sqrt(running_var + eps) − Δ > 0, y_p = conv(x[:, :Cp], W[:, :Cp]) + b."""
    counts = {"dense": 0, "performed": 0}

    def hook(conv, inputs, _):
        (xin,) = inputs
        cp, k = conv.base_channels, conv.weight.shape[2] * conv.weight.shape[3]
        y_p = F.conv2d(xin[:, :cp], conv.weight[:, :cp], conv.bias, padding=1)
        mean, var = conv.norm.running_mean.view(1, -1, 1, 1), conv.norm.running_var.view(1, -1, 1, 1)
        opened = ((y_p - mean) / torch.sqrt(var + conv.norm.eps) - conv.threshold.view(1, -1, 1, 1) > 0).sum()
        counts["dense"] += y_p.numel() * conv.in_channels * k
        counts["performed"] += y_p.numel() * cp * k + int(opened) * (conv.in_channels - cp) * k

    handles = [g.register_forward_hook(hook) for g in net.gated]
    net.eval()
    with torch.no_grad():
        if thresholds is not None:
            for g in net.gated:
                g.threshold.fill_(thresholds)
        for i in range(0, len(x), batch):
            net(x[i:i + batch])
    for h in handles:
        h.remove()
    return counts


def test_channel_gating_flop_counts_equal_an_independent_count(runs, demo_data, monkeypatch):
    out, results = runs["channel-gating"]
    c = results["config"]
    monkeypatch.setenv("GATED_DATA", str(demo_data / "cache"))
    from gated.harness.demos.common import standardised_images

    _, _, x_te, y_te = standardised_images("fashion-mnist")
    x_te = x_te.view(-1, 1, 28, 28)
    saved = torch.load(out / "channel_gating_fmnist.pt", weights_only=True)
    assert [r["threshold"] for r in results["rows"]] == [None, channel_gating.DENSE, *c["thresholds"]]
    n, ch = len(y_te), c["channels"]
    ungated = n * (ch * 28 * 28 * 9 + 4 * ch * 10)  # conv0 at 28×28 and fc, from the architecture
    for row in results["rows"]:
        net = channel_gating.Net(ch, c["base_fraction"], c["temperature"])
        net.load_state_dict(saved)
        counts = _count_macs(net, x_te, c["eval_batch"], row["threshold"])
        assert (row["dense_macs"], row["performed_macs"], row["ungated_macs"]) == \
            (counts["dense"], counts["performed"], ungated)
        assert row["gated_reduction"] == counts["dense"] / counts["performed"]
        assert row["net_reduction"] == (counts["dense"] + ungated) / (counts["performed"] + ungated)
        with torch.no_grad():
            acc = (net(x_te).argmax(-1) == y_te).sum().item() / n
        assert row["acc"] == acc  # the saved weights give the reported accuracy
    dense_row = results["rows"][1]
    assert dense_row["performed_macs"] == dense_row["dense_macs"] and dense_row["open"] == [1.0, 1.0, 1.0]
    cells = table_rows(channel_gating.table(results))
    assert cells[0][0].startswith("ungated baseline") and cells[0][1] == f"{100 * results['baseline']['acc']:.2f}%"
    for row, cell in zip(results["rows"], cells[1:], strict=True):
        assert cell[:4] == [row["label"], f"{100 * row['acc']:.2f}%", f"{row['gated_reduction']:.2f}×",
                            f"{row['net_reduction']:.2f}×"]


def test_glu_ffn_table_matches_the_runs(runs):
    from scipy.stats import spearmanr

    _, results = runs["glu-ffn"]
    c = results["config"]
    rows = results["rows"]
    assert [r["variant"] for r in rows] == c["variants"]
    hidden = {"relu": c["d_ff"], "swiglu": 16, "bilinear": 16}  # 2/3 · 24 = 16, already a multiple of 8
    for r in rows:
        gated = r["variant"] != "relu"
        assert r["hidden_size"] == hidden[r["variant"]]
        assert r["ffn_parameters"] == c["layers"] * (3 if gated else 2) * c["d_model"] * r["hidden_size"]
        assert r["final_train_bpc"] == float(np.mean(r["losses"][-c["log_every"]:]))
        assert len(r["losses"]) == c["steps"] and all(math.isfinite(v) for v in r["losses"])
    assert sorted(rows, key=lambda r: r["val_bpc"]) == sorted(rows, key=lambda r: r["rank"])
    assert sorted(rows, key=lambda r: r["shazeer_65k"]) == sorted(rows, key=lambda r: r["shazeer_rank"])
    rho = spearmanr([r["val_bpc"] for r in rows], [r["shazeer_65k"] for r in rows]).statistic
    assert results["spearman"] == pytest.approx(rho, abs=1e-12)
    cells = table_rows(glu_ffn.table(results))
    for r, cell in zip(rows, cells, strict=True):
        assert cell[:9] == [r["variant"], str(r["hidden_size"]), f"{r['ffn_parameters']:,}", f"{r['parameters']:,}",
                            f"{r['final_train_bpc']:.4f}", f"{r['val_bpc']:.4f}", str(r["rank"]),
                            f"{r['shazeer_65k']:.3f}", str(r["shazeer_rank"])]


def test_unknown_demo_lists_the_demos(capsys):
    with pytest.raises(SystemExit) as e:
        main(["demo", "highways"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "highways" in err and all(name in err for name in TINY)


def test_unknown_activation_lists_the_variants(capsys):
    with pytest.raises(SystemExit) as e:
        main(["demo", "glu-ffn", "--variants", "relu", "tanh"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "tanh" in err and all(v in err for v in glu_ffn.VARIANTS)


@pytest.mark.parametrize(("argv", "message"), [
    (["highway", "--steps", "0"], "--steps must be at least 1, got 0"),
    (["highway", "--seeds", "0", "0"], "--seeds lists a value twice"),
    (["glu-ffn", "--d-model", "30", "--heads", "4"], "--d-model 30 must be a multiple of --heads 4"),
])
def test_bad_flags_are_named(argv, message, capsys, tmp_path):
    assert main(["demo", *argv, "--out", str(tmp_path)]) == 2
    assert message in capsys.readouterr().err


def test_missing_dataset_gives_the_fetch_command(data_home, tmp_path, capsys):
    assert main(["demo", "channel-gating", "--steps", "1", "--no-progress", "--out", str(tmp_path)]) == 1
    assert "gated data fetch fashion-mnist" in capsys.readouterr().err


@pytest.mark.parametrize(("script", "demo"), [("highway_mnist", "highway"),
                                              ("channel_gating_fmnist", "channel-gating"), ("glu_ffn_kjv", "glu-ffn")])
def test_example_scripts_are_the_demo_commands(script, demo, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", [f"examples/{script}.py", "--help"])
    with pytest.raises(SystemExit) as e:
        runpy.run_path(str(ROOT / "examples" / f"{script}.py"), run_name="__main__")
    assert e.value.code == 0
    assert f"usage: gated demo {demo}" in capsys.readouterr().out
