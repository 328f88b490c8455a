"""Figures for a paper: PNG (200 dpi), PDF and SVG; a log y-axis where a metric spans decades;
the curves of the metric the table reports (validation where it exists); the baseline a light band
behind the curves, so a curve lying on it stays visible; UR drawn last, thickest, in its own colour;
every model its own marker; at most three readable panels a row."""

from __future__ import annotations

import json
import math
import os

import matplotlib.image
import matplotlib.text
import pytest

from gated.harness import plots
from gated.harness.cli import main


def _runs(root, settings=("default",), variants=("-", "R", "U", "UR"), stuck=None):
    """Run directories as gated compare leaves them: UR's loss falls from log 8 to 1e-3 (three
    decades), the others stay near the baseline (exactly at ``stuck`` in every seed where it is
    given); validation every 50 steps."""
    for setting in settings:
        for variant in variants:
            for seed in (0, 1):
                run = root / setting / ("base" if variant == "-" else variant) / f"seed{seed}"
                run.mkdir(parents=True)
                (run / "config.json").write_text(json.dumps({"model": {"variant": variant, "core": "lstm"},
                                                             "train": {"seed": seed}}))
                (run / "task.json").write_text(json.dumps({"task": "copy", "main_metric": "loss", "seq_len": 70,
                                                           "baseline": {"loss": math.log(8)}}))
                lines = []
                for step in range(10, 201, 10):
                    loss = (math.log(8) * (1e-3 / math.log(8)) ** (step / 200) if variant == "UR"
                            else 2.0 + 0.01 * seed if stuck is None else stuck)
                    rec = {"step": step, "loss": loss, "accuracy": 0.2 + step / 400}
                    if step % 50 == 0:
                        rec["val_loss"] = loss if loss == stuck else loss * 1.1
                    lines.append(json.dumps(rec))
                (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    return root


def _curves(ax):
    return [line for line in ax.lines if not line.get_label().startswith("trivial baseline")]


def test_ur_is_drawn_last_thickest_over_the_baseline_on_a_log_axis(tmp_path):
    fig = plots.curves_figure(_runs(tmp_path))
    ax = fig.axes[0]
    assert ax.get_ylabel() == "validation loss"  # what the table reports
    assert ax.get_yscale() == "log"  # 2.08 -> 1e-3 spans three decades
    curves = _curves(ax)
    assert [c.get_label() for c in curves] == ["LSTM (2 seeds)", "U-LSTM (2 seeds)", "R-LSTM (2 seeds)",
                                               "UR-LSTM (2 seeds)"]  # the paper's order, UR last
    ur, others = curves[-1], curves[:-1]
    assert ur.get_linewidth() > max(c.get_linewidth() for c in others)
    assert ur.get_zorder() > max(c.get_zorder() for c in others)
    assert ur.get_color() not in {c.get_color() for c in others}
    assert [c.get_linestyle() for c in others] == ["--", "--", "-"]  # plain dashed, refine solid: LSTM shows
    assert list(curves[0].get_xdata()) == [50, 100, 150, 200]  # validation points
    baseline = next(line for line in ax.lines if line.get_label().startswith("trivial baseline"))
    assert baseline.get_zorder() < min(c.get_zorder() for c in curves)
    assert len({c.get_marker() for c in curves}) == len(curves)
    plots._pyplot().close(fig)


def test_log_axis_only_where_values_span_decades(tmp_path):
    root = _runs(tmp_path)
    for metric, yscale, expected in (("accuracy", "auto", "linear"), ("loss", "auto", "log"),
                                     ("loss", "linear", "linear"), ("accuracy", "log", "log")):
        fig = plots.curves_figure(root, metric, yscale)
        assert fig.axes[0].get_yscale() == expected, (metric, yscale)
        plots._pyplot().close(fig)
    assert not plots.wants_log([0.0, 1.0, 1e-4]) and not plots.wants_log([0.5, 40]) and plots.wants_log([0.01, 2])


def test_panels_three_a_row_at_print_size(tmp_path):
    fig = plots.curves_figure(_runs(tmp_path, settings=("delay=10", "delay=20", "delay=30", "delay=40")))
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert len(visible) == 4 and len(fig.axes) == 6  # two rows of three, the last two hidden
    width, height = fig.get_size_inches()
    assert height == pytest.approx(2 * 3.2) and width == pytest.approx(3 * 4.5 + 1.9)  # + the shared legend
    assert fig.legends and [t.get_text() for t in fig.legends[0].get_texts()][-1].startswith("trivial baseline")
    plots._pyplot().close(fig)


def test_plot_curves_writes_png_pdf_and_svg(tmp_path):
    root = _runs(tmp_path / "runs", variants=("-", "UR"))
    (tmp_path / "fig").mkdir()
    assert main(["plot", "curves", str(root), "--out", str(tmp_path / "fig" / "curves.png"), "--format", "png",
                 "pdf", "svg"]) == 0
    png, pdf, svg = (tmp_path / "fig" / f"curves.{ext}" for ext in ("png", "pdf", "svg"))
    assert pdf.read_bytes().startswith(b"%PDF") and b"<svg" in svg.read_bytes()[:500]
    umask = os.umask(0)
    os.umask(umask)
    assert all(p.stat().st_mode & 0o777 == 0o666 & ~umask for p in (png, pdf, svg))  # as open() makes them
    height, width = matplotlib.image.imread(png).shape[:2]
    assert (width, height) == (round(4.5 * 200), round(3.2 * 200))  # one panel at the default 200 dpi
    assert main(["plot", "curves", str(root), "--out", str(tmp_path / "only.pdf"), "--dpi", "50"]) == 0
    assert (tmp_path / "only.pdf").exists() and not (tmp_path / "only.png").exists()  # the --out suffix alone


def _pixels_shown(fig, artist) -> int:
    """How many pixels of the drawn figure change when ``artist`` is hidden: 0 for a curve that
    others cover."""
    import numpy as np

    def draw():
        fig.canvas.draw()
        return np.asarray(fig.canvas.buffer_rgba())[..., :3].astype(int)

    shown = draw()
    artist.set_visible(False)
    hidden = draw()
    artist.set_visible(True)
    return int((np.abs(shown - hidden).max(-1) > 40).sum())


def test_curves_on_the_baseline_stay_visible(tmp_path):
    """The LSTM and U-LSTM of copy at T = 500 sit exactly on log 8 in every seed: the baseline is a
    light band behind every curve, in a colour no model has, labelled in the legend; and two models
    on the same values are both seen (their markers fall on different points)."""
    fig = plots.curves_figure(_runs(tmp_path, variants=("-", "U", "UR"), stuck=math.log(8)))
    ax = fig.axes[0]
    baseline = next(line for line in ax.lines if line.get_label().startswith("trivial baseline"))
    curves = _curves(ax)
    assert [c.get_label() for c in curves] == ["LSTM (2 seeds)", "U-LSTM (2 seeds)", "UR-LSTM (2 seeds)"]
    assert baseline.get_zorder() < min(c.get_zorder() for c in curves)
    assert baseline.get_zorder() < min(band.get_zorder() for band in ax.collections)  # under the seed bands too
    assert baseline.get_color() not in {c.get_color() for c in curves}
    assert f"trivial baseline ({math.log(8):.4g})" in [t.get_text() for t in ax.get_legend().get_texts()]
    lstm, ulstm = curves[:2]
    assert list(lstm.get_ydata()) == list(ulstm.get_ydata()) == [math.log(8)] * 4  # on each other and the baseline
    assert lstm.get_marker() != ulstm.get_marker()
    ax.get_legend().remove()  # the legend's samples would count as visible curves
    for c in curves:
        assert _pixels_shown(fig, c) >= 50, f"{c.get_label()} is hidden"
    plots._pyplot().close(fig)


@pytest.mark.parametrize("depths", [[50], [10, 30, 50]])
def test_highway_demo_title_fits_one_panel_or_several(depths, monkeypatch):
    """``gated demo highway --depths 50`` draws one 5-inch panel: its title is wrapped to fit, not
    clipped at both edges."""
    from gated.harness.demos import highway

    figures = []
    monkeypatch.setattr(highway, "save_figure", lambda fig, path: figures.append(fig))
    runs = [{"depth": d, "model": m, "seed": s, "losses": [2.3 - 0.001 * i for i in range(40)]}
            for d in depths for m in highway.MODELS for s in (0, 1, 2)]
    highway.figure({"config": {"depths": depths, "models": list(highway.MODELS), "seeds": [0, 1, 2], "steps": 40,
                               "width": 128}, "runs": runs}, "unused.png")
    fig, = figures
    fig.canvas.draw()
    title = next(t for t in fig.findobj(matplotlib.text.Text) if t.get_text() and t.get_text() == fig.get_suptitle())
    box, page = title.get_window_extent(), fig.bbox
    assert page.x0 <= box.x0 and box.x1 <= page.x1 and box.y1 <= page.y1, (box, page)
    assert all(not box.overlaps(ax.get_window_extent()) for ax in fig.axes)
    plots._pyplot().close(fig)
