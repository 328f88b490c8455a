"""Figures (matplotlib, Agg): learning curves over the trivial baseline (paper Fig. 3 style) and
histograms of forget / effective gate activations from a checkpoint (paper Fig. 5), each written
as PNG (200 dpi), PDF and SVG.

    gated plot curves runs/cmp [--out curves.png] [--metric val_loss] [--format pdf] [--yscale log]
    gated plot gates runs/demo [--out gates.png]
"""

from __future__ import annotations

import io
from pathlib import Path

HELP = "draw learning curves of runs, or gate-activation histograms of a checkpoint"


FORMATS = ("png", "pdf", "svg")
DPI = 200  # of the PNG; PDF and SVG are vector
PANEL = (4.5, 3.2)  # inches per panel, at most PER_ROW panels a row: readable at print size
PER_ROW = 3
# One colour family per primary gate: grey for the standard sigmoid (-, R), orange chrono (C),
# blue cumax (O, OM, OR), green UGI (U, UM); refine variants darker and solid, plain ones lighter
# and dashed, master-gate ones dash-dot. UR, the paper's model, is vermilion, thick and on top.
# Each model of a figure also gets its own marker, on points no other model marks (``_markers``), so
# two models with the same values (both stuck on the baseline) are both seen.
STYLES = {
    "-": {"color": "#8c8c8c", "ls": "--"}, "R": {"color": "#333333", "ls": "-"},
    "C": {"color": "#e69f00", "ls": "--"},
    "O": {"color": "#80bbe6", "ls": "--"}, "OM": {"color": "#3d8fcc", "ls": "-."},
    "OR": {"color": "#0b5394", "ls": "-"},
    "U": {"color": "#7fcfae", "ls": "--"}, "UM": {"color": "#2e9e74", "ls": "-."},
    "UR": {"color": "#d55e00", "ls": "-", "lw": 2.6, "ms": 5.5, "zorder": 6},
}
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "h", "*", "p")
MARKS_PER_CURVE = 8  # about this many markers on a long curve
# The trivial baseline: a light lavender band (a colour no model has) behind every curve and seed
# band, so a curve lying on it stays visible; labelled in the legend with its value.
BASELINE_STYLE = {"color": "#cdb8e8", "lw": 5, "ls": "-", "solid_capstyle": "butt", "zorder": 1}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, out: str | Path, formats=FORMATS, dpi: int = DPI) -> list[Path]:
    """Write ``fig`` as ``out`` with each suffix of ``formats`` (PNG at ``dpi``; PDF and SVG are
    vector), each atomically (a full disk leaves no half-written file), and close it. Returns the
    paths in the order of ``formats``."""
    from gated.harness.files import atomic_write

    paths = []
    for fmt in formats:
        buf = io.BytesIO()
        fig.savefig(buf, format=fmt, dpi=dpi, metadata={"Date": None} if fmt in ("pdf", "svg") else None)
        path = Path(out).with_suffix(f".{fmt}")
        atomic_write(path, buf.getvalue())
        paths.append(path)
    _pyplot().close(fig)
    return paths


def style(variant: str) -> dict:
    """Line style of a variant (any spelling gated.get_variant takes): colour, dashes, width, z-order."""
    import gated

    try:
        name = gated.get_variant(variant).name
    except ValueError:
        name = variant
    return {"lw": 1.5, "ms": 4.5, "zorder": 3} | STYLES.get(name, {})


def _markers(index: int, groups: int, points: int) -> dict:
    """Marker of the ``index``-th of ``groups`` models of a figure on a curve of ``points`` points:
    its own shape, on every ``step``-th point from an offset no other model has (``step >= groups``),
    so that models lying on each other show each other's markers; every point of a short curve
    (``test_*`` metrics: one point per run)."""
    look = {"marker": MARKERS[index % len(MARKERS)], "markeredgecolor": "white", "markeredgewidth": 0.6}
    if points < 3:
        return look
    step = max(groups, points // MARKS_PER_CURVE)
    return look | {"markevery": ((index * step // groups) % points, step)}


def describe_metric(key: str) -> tuple[str, str]:
    """``("validation", "loss")`` for ``val_loss``, ``("test", ...)`` for ``test_*``, else training."""
    for prefix, split in (("val_", "validation"), ("test_", "test")):
        if key.startswith(prefix):
            return split, key[len(prefix):]
    return "training", key


def wants_log(values: list[float]) -> bool:
    """A log y-axis for positive values spanning more than two decades (max / min > 100)."""
    finite = [v for v in values if v == v and abs(v) != float("inf")]
    return bool(finite) and min(finite) > 0 and max(finite) / min(finite) > 100


def _panel_metric(runs: list[dict], metric: str | None, info: dict) -> str:
    """The metric a panel draws: ``metric``, else what the table reports: the task's main metric
    on validation where the runs evaluated it, else on training."""
    if metric is not None:
        return metric
    main = info.get("main_metric", "loss")
    return f"val_{main}" if any(f"val_{main}" in rec for r in runs for rec in r["records"]) else main


def curves_figure(root: str | Path, metric: str | None = None, yscale: str = "auto"):
    """The figure of :func:`learning_curves` (returned, not saved: tests read its Axes)."""
    from gated.harness.report import find_runs, label, variant_order

    runs = find_runs(root)
    if not runs:
        raise ValueError(f"no runs (config.json + metrics.jsonl) under {root}")
    if yscale not in ("auto", "linear", "log"):
        raise ValueError(f"--yscale must be auto, linear or log, got {yscale!r}")
    if metric is not None:
        logged = {k for r in runs for rec in r["records"] for k, v in rec.items()
                  if isinstance(v, (int, float)) and not isinstance(v, bool)}
        # a task's main metric is known even before a record holds it (an RL run with no finished episode)
        available = sorted((logged | {r["info"].get("main_metric", "loss") for r in runs}) - {"step"})
        if metric not in available:
            raise ValueError(f"unknown metric {metric!r} for the runs under {root}; available: {', '.join(available)}")
    settings = sorted({r["setting"] for r in runs})
    groups_per_panel = len({(r["core"], r["variant"]) for r in runs})
    shared_legend = len(settings) > 1 or groups_per_panel > 4  # one legend beside the panels, not over curves
    cols = min(PER_ROW, len(settings))
    rows = -(-len(settings) // cols)
    plt = _pyplot()
    fig = plt.figure(figsize=(PANEL[0] * cols + (1.9 if shared_legend else 0), PANEL[1] * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).flatten()
    legend: dict = {}
    # every (model, variant) of the figure in drawing order: its index picks its marker in every panel
    names = list(dict.fromkeys((label(r["core"], r["variant"]), r["variant"]) for r in sorted(
        runs, key=lambda r: (style(r["variant"])["zorder"], variant_order(r["core"], r["variant"])))))
    for ax, setting in zip(axes, settings):
        panel = [r for r in runs if r["setting"] == setting]
        info = panel[0]["info"]
        key = _panel_metric(panel, metric, info)
        groups: dict = {}
        # UR last, so it is drawn over the others (and is the last curve of ax.lines)
        for r in sorted(panel, key=lambda r: (style(r["variant"])["zorder"], variant_order(r["core"], r["variant"]))):
            groups.setdefault((label(r["core"], r["variant"]), r["variant"]), []).append(r["records"])
        plotted = []
        for (name, variant), curves in groups.items():
            by_step = [{rec["step"]: rec[key] for rec in c if key in rec} for c in curves]
            steps = sorted(set.intersection(*(set(c) for c in by_step)))
            ys = [[c[s] for s in steps] for c in by_step]
            n = len(steps)
            mean = [sum(y[i] for y in ys) / len(ys) for i in range(n)]
            plotted += mean
            look = style(variant)
            line, = ax.plot(steps, mean, label=f"{name} ({len(ys)} seed{'s' * (len(ys) > 1)})",
                            **look, **_markers(names.index((name, variant)), len(names), n))
            legend.setdefault(name, line)
            if len(ys) > 1:
                if info.get("band") == "std":
                    sd = [(sum((y[i] - mean[i]) ** 2 for y in ys) / (len(ys) - 1)) ** 0.5 for i in range(n)]
                    lo = [m - d for m, d in zip(mean, sd, strict=True)]
                    hi = [m + d for m, d in zip(mean, sd, strict=True)]
                else:
                    lo, hi = [min(y[i] for y in ys) for i in range(n)], [max(y[i] for y in ys) for i in range(n)]
                ax.fill_between(steps, lo, hi, color=look["color"] if "color" in look else line.get_color(),
                                alpha=0.15, lw=0, zorder=look["zorder"] - 1)
        split, base_key = describe_metric(key)
        base = info.get("baseline", {}).get(base_key)
        if base is not None:
            base_line = ax.axhline(base, label=f"{info.get('baseline_name', 'trivial baseline')} ({base:.4g})",
                                   **BASELINE_STYLE)
            legend.setdefault(base_line.get_label(), base_line)
        if yscale == "log" or (yscale == "auto" and wants_log(plotted)):
            ax.set_yscale("log")
        where = f", {setting}" if setting and setting != "default" and setting != info.get("task") else ""
        ax.set(xlabel=info.get("x_label", "training step"), ylabel=f"{split} {base_key}",
               title=f"{info.get('task', '')} (T = {info.get('seq_len', '?')}{where})")
        ax.grid(alpha=0.3, which="both" if ax.get_yscale() == "log" else "major")
        if not shared_legend:
            ax.legend(fontsize=8)
    for ax in axes[len(settings):]:
        ax.set_visible(False)
    if shared_legend:
        fig.legend(list(legend.values()), [h.get_label() for h in legend.values()], loc="outside right upper",
                   fontsize=8)
    return fig


def learning_curves(root: str | Path, out: str | Path, metric: str | None = None, formats=FORMATS,
                    dpi: int = DPI, yscale: str = "auto") -> list[Path]:
    """One panel per setting (at most three a row): the curve of ``metric`` (default: the
    metric the table reports, the task's main metric on validation where it was evaluated, else
    on training) of each model, mean over seeds with a min-max band, each model with its own
    marker on points no other model marks, over the task's trivial baseline drawn as a light band
    behind every curve; a log y-axis where the values span more than two decades (``yscale``).
    Written as ``out`` in each of ``formats`` (:func:`save_figure`); returns the paths.

    A run's ``task.json`` may change the presentation (``gated rl`` runs do): ``x_label`` (e.g.
    "environment steps"), ``band: "std"`` (mean ± std over seeds instead of min-max) and
    ``baseline_name``. Each panel uses its own setting's ``task.json``; seeds are averaged at the
    x values all of them logged."""
    return save_figure(curves_figure(root, metric, yscale), out, formats, dpi)


def gate_statistics(run: str | Path, batch_size: int = 16) -> dict:
    """Gate activations of the run's checkpoint and of its initialisation on one validation batch.

    Returns ``{"trained": acts, "init": acts, "cfg": RunConfig, "step": int}`` where ``acts`` is
    :func:`gated.gate_activations`' dict of ``(L, D, T, B, H)`` tensors.
    """
    import torch

    import gated
    from gated.harness import checkpoint, config
    from gated.harness.files import read_json
    from gated.harness.model import SequenceModel
    from gated.harness.tasks import build_task

    run = Path(run)
    if not (run / "config.json").is_file():
        raise ValueError(f"{run} is not a run directory (no config.json)")
    cfg = config.from_dict(read_json(run / "config.json"))
    c = checkpoint.load(run, cfg.to_dict())
    task = build_task(cfg.task, cfg.train.seed)
    torch.manual_seed(cfg.train.seed)  # the run's initial weights (train.py seeds the same way)
    init = SequenceModel(cfg.model, task)
    trained = SequenceModel(cfg.model, task)
    checkpoint.load_model_state(trained, c.model, str(run))
    x = task.batch("val", 0, batch_size).x
    acts = {name: gated.gate_activations(m.rnn, m.features(x)) for name, m in (("init", init), ("trained", trained))}
    return acts | {"cfg": cfg, "step": c.step}


def draw_gate_histograms(axes, stats: dict, name: str = "") -> dict:
    """Draw the forget gate ``f`` and the effective gate ``g`` of :func:`gate_statistics`' output on
    two axes, init (outline) vs trained (filled); return the fraction of each below 0.1 or above
    0.9, keyed ``{gate}_{init|trained}_binary``."""
    summary = {}
    for ax, key, title in zip(axes, ("forget", "effective"), ("forget gate f", "effective gate g"), strict=True):
        for when, look in (("init", {"histtype": "step", "lw": 1.5}), ("trained", {"alpha": 0.6})):
            v = stats[when][key].flatten()
            frac = float(((v < 0.1) | (v > 0.9)).double().mean())
            summary[f"{key}_{when}_binary"] = frac
            ax.hist(v.numpy(), bins=50, range=(0, 1), density=True, label=f"{when} ({frac:.0%} < 0.1 or > 0.9)",
                    **look)
        ax.set(title=f"{name}: {title}" if name else title, xlabel="activation", ylabel="density")
        ax.legend(fontsize=8)
    return summary


def gate_histograms(run: str | Path, out: str | Path | None = None, formats=FORMATS,
                    dpi: int = DPI) -> tuple[list[Path], dict]:
    """Histograms of the forget gate ``f`` and the effective gate ``g`` (all layers, steps, units),
    at initialisation and after training. Returns the written files (:func:`save_figure`) and the
    fraction of near-binary gates (``< 0.1`` or ``> 0.9``)."""
    stats = gate_statistics(run)
    cfg = stats["cfg"]
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(2 * PANEL[0], PANEL[1] + 0.3), layout="constrained")
    summary = draw_gate_histograms(axes, stats)
    from gated.harness.report import label

    fig.suptitle(f"{label(cfg.model.core, cfg.model.variant)} on {cfg.task.task}, step {stats['step']}")
    return save_figure(fig, out or Path(run) / "gates.png", formats, dpi), summary


def _add_output_arguments(parser, default: str) -> None:
    parser.add_argument("--out", help=f"output path; its suffix is replaced by each --format (default: {default})")
    parser.add_argument("--format", nargs="+", choices=FORMATS, help="file formats (default: the --out suffix if it "
                        "is one of them, else png pdf svg)")
    parser.add_argument("--dpi", type=int, default=DPI, help=f"resolution of the PNG (default: {DPI})")


def _outputs(args, default: Path) -> tuple[Path, tuple[str, ...]]:
    """The output path and formats the flags ask for."""
    if args.dpi <= 0:
        raise ValueError(f"--dpi must be a positive integer, got {args.dpi}")
    out = Path(args.out) if args.out else default
    suffix = out.suffix.lstrip(".").lower()
    return out, tuple(args.format or ((suffix,) if args.out and suffix in FORMATS else FORMATS))


def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest="plot_command", metavar="FIGURE", required=True)
    curves = sub.add_parser("curves", help="learning curves of the runs under a directory")
    curves.add_argument("root", help="a run directory or a gated compare output directory")
    _add_output_arguments(curves, "ROOT/curves.png, .pdf and .svg")
    curves.add_argument("--metric", help="metric key to plot, e.g. loss, val_loss, grad_norm (default: the task's "
                        "main metric, on validation where the runs evaluated it, as the table reports)")
    curves.add_argument("--yscale", choices=("auto", "linear", "log"), default="auto",
                        help="auto: log where the values span more than two decades (default)")
    gates = sub.add_parser("gates", help="forget/effective gate histograms from a run's checkpoint (paper Fig. 5)")
    gates.add_argument("run", help="a run directory")
    _add_output_arguments(gates, "RUN/gates.png, .pdf and .svg")


def main(args) -> int:
    if args.plot_command == "curves":
        root = Path(args.root)
        out, formats = _outputs(args, root / "curves.png")
        print("\n".join(map(str, learning_curves(root, out, args.metric, formats, args.dpi, args.yscale))))
        return 0
    out, formats = _outputs(args, Path(args.run) / "gates.png")
    paths, summary = gate_histograms(args.run, out, formats, args.dpi)
    print("\n".join(map(str, paths)) + "\nnear-binary (<0.1 or >0.9) fraction: "
          + ", ".join(f"{k} {v:.3f}" for k, v in summary.items()))
    return 0
