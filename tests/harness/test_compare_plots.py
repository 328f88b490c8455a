"""``gated compare`` (grid in subprocesses, table, curves) and ``gated plot``; figures are opened."""

from __future__ import annotations

import numpy as np
import pytest

from gated.harness import checkpoint
from gated.harness.cli import main
from gated.harness.report import find_runs


def _open_png(path):
    import matplotlib.image

    img = matplotlib.image.imread(path)
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
    assert np.asarray(img).std() > 0.01  # not a blank canvas
    return img


@pytest.mark.slow
def test_compare_grid_table_and_curves(tmp_path, capsys):
    out = tmp_path / "cmp"
    args = ["compare", "--task", "copy", "--delay", "3", "--variants", "UR", "--seeds", "0", "1",
            "--grid", "hidden_size=4,6", "--steps", "4", "--batch-size", "2", "--log-every", "2",
            "--eval-every", "2", "--jobs", "2", "--out", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    md = (out / "table.md").read_text()
    assert md in printed
    rows = [line for line in md.splitlines() if line.startswith("| hidden_size")]
    assert [r.split(" | ")[:3] for r in rows] == [["| hidden_size=4", "UR-LSTM", "2"],
                                                  ["| hidden_size=6", "UR-LSTM", "2"]]
    runs = [r for r in find_runs(out) if r["setting"] == "hidden_size=4" and r["variant"] == "UR"]
    finals = [r["records"][-1]["val_loss"] for r in runs]
    mean, sd = np.mean(finals), np.std(finals, ddof=1)
    assert f"| {mean:.4g} ± {sd:.2g} |" in rows[0]
    assert "trivial baseline 2.079" in md
    _open_png(out / "curves.png")
    # a second call reuses the finished runs
    assert main(args) == 0
    assert capsys.readouterr().out.count("already finished") == 4
    # finished runs whose checkpoints were pruned (or whose results were copied without them)
    # are still finished (finished.json); one without that record starts again
    import shutil

    from gated.harness import compare
    from gated.harness.cli import build_parser

    for run in find_runs(out):
        assert checkpoint.finished_step(run["dir"]) == 4
        shutil.rmtree(run["dir"] / "checkpoints")
    (runs[0]["dir"] / "finished.json").unlink()
    planned = compare.plan(build_parser().parse_args(args))
    commands = {str(r["dir"]): compare._command(r, 1) for r in planned}
    assert [str(runs[0]["dir"])] == [d for d, cmd in commands.items() if cmd is not None]
    assert "--resume" in commands[str(runs[0]["dir"])]
    checkpoint.mark_finished(runs[0]["dir"], 4)
    # scripts/keep_results.py copies the results alone; a grid pointed at the copy reuses every run
    # and makes the same table
    import runpy
    from pathlib import Path

    keep = runpy.run_path(str(Path(__file__).parents[2] / "scripts" / "keep_results.py"))["main"]
    kept = tmp_path / "kept"
    assert keep([str(out), str(kept)]) == 0
    assert not list(kept.rglob("checkpoints")) and len(list(kept.rglob("finished.json"))) == 4
    assert main(args[:-1] + [str(kept)]) == 0
    assert capsys.readouterr().out.count("already finished") == 4
    assert (kept / "table.md").read_text() == (out / "table.md").read_text().replace(str(out), str(kept))


def test_compare_rejects_bad_grid_before_running(tmp_path, capsys):
    assert main(["compare", "--task", "copy", "--grid", "delay=3,x", "--out", str(tmp_path / "c")]) == 2
    assert "--delay expects an integer" in capsys.readouterr().err
    assert main(["compare", "--task", "copy", "--grid", "colour=red", "--out", str(tmp_path / "c")]) == 2
    assert not (tmp_path / "c").exists()


@pytest.mark.parametrize("variant,low,high", [("UR", 0.1, 0.4), ("-", 0.0, 0.02)])
def test_plot_gates_from_checkpoint(variant, low, high, tmp_path, capsys):
    """UGI spreads the initial forget gates over (0, 1) (about a fifth near 0 or 1 at H = 64);
    the default init keeps them near 0.5."""
    run = tmp_path / "run"
    assert main(["train", "--task", "copy", "--delay", "10", "--variant", variant, "--hidden-size", "64",
                 "--steps", "2", "--batch-size", "4", "--no-progress", "--out", str(run)]) == 0
    assert main(["plot", "gates", str(run)]) == 0
    printed = capsys.readouterr().out
    _open_png(run / "gates.png")
    init = float(printed.split("forget_init_binary ")[1].split(",")[0])
    assert low <= init <= high
    if variant == "-":  # no refine gate: the effective gate is the forget gate
        assert printed.split("effective_init_binary ")[1].split(",")[0] == printed.split(
            "forget_init_binary ")[1].split(",")[0]
    assert main(["plot", "curves", str(run), "--out", str(tmp_path / "c.png")]) == 0
    _open_png(tmp_path / "c.png")


def test_plot_gates_reports_bad_run(tmp_path, capsys):
    assert main(["plot", "gates", str(tmp_path)]) == 2
    assert "not a run directory" in capsys.readouterr().err
