"""Figures (matplotlib, Agg): learning curves with the trivial baseline (paper Fig. 3 style) and
histograms of forget / effective gate activations from a checkpoint (paper Fig. 5).

    gated plot curves runs/cmp [--out curves.png]
    gated plot gates runs/demo [--out gates.png]
"""

from __future__ import annotations

import io
from pathlib import Path

HELP = "draw learning curves of runs, or gate-activation histograms of a checkpoint"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, out: str | Path) -> Path:
    """Write ``fig`` as a PNG atomically (a full disk leaves no half-written file) and close it."""
    from gated.harness.files import atomic_write

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    _pyplot().close(fig)
    atomic_write(Path(out), buf.getvalue())
    return Path(out)


def describe_metric(key: str) -> tuple[str, str]:
    """``("validation", "loss")`` for ``val_loss``, ``("test", ...)`` for ``test_*``, else training."""
    for prefix, split in (("val_", "validation"), ("test_", "test")):
        if key.startswith(prefix):
            return split, key[len(prefix):]
    return "training", key


def learning_curves(root: str | Path, out: str | Path, metric: str | None = None) -> Path:
    """One panel per setting: the curve of ``metric`` (default: the task's main metric on
    training) of each model (mean over seeds, min-max band), with the task's trivial baseline
    dashed. ``val_*`` and ``test_*`` metrics are labelled as such. Returns the written PNG.

    A run's ``task.json`` may change the presentation (``gated rl`` runs do): ``x_label`` (e.g.
    "environment steps"), ``band: "std"`` (mean ± std over seeds instead of min-max) and
    ``baseline_name``. Each panel uses its own setting's ``task.json``; seeds are averaged at the
    x values all of them logged."""
    from gated.harness.report import find_runs, label, variant_order

    runs = find_runs(root)
    if not runs:
        raise ValueError(f"no runs (config.json + metrics.jsonl) under {root}")
    if metric is not None:
        logged = {k for r in runs for rec in r["records"] for k, v in rec.items()
                  if isinstance(v, (int, float)) and not isinstance(v, bool)}
        # a task's main metric is known even before a record holds it (an RL run with no finished episode)
        available = sorted((logged | {r["info"].get("main_metric", "loss") for r in runs}) - {"step"})
        if metric not in available:
            raise ValueError(f"unknown metric {metric!r} for the runs under {root}; available: {', '.join(available)}")
    settings = sorted({r["setting"] for r in runs})
    plt = _pyplot()
    many = len({(r["core"], r["variant"]) for r in runs}) > 5  # legend beside the axes, not over the curves
    fig, axes = plt.subplots(1, len(settings), figsize=((8.5 if many else 6) * len(settings), 4.5 if many else 4),
                             squeeze=False)
    for ax, setting in zip(axes[0], settings, strict=True):
        info = next(r["info"] for r in runs if r["setting"] == setting)
        key = metric or info.get("main_metric", "loss")
        groups: dict = {}
        for r in sorted(runs, key=lambda r: variant_order(r["core"], r["variant"])):
            if r["setting"] == setting:
                groups.setdefault(label(r["core"], r["variant"]), []).append(r["records"])
        for name, curves in groups.items():
            by_step = [{rec["step"]: rec[key] for rec in c if key in rec} for c in curves]
            steps = sorted(set.intersection(*(set(c) for c in by_step)))
            ys = [[c[s] for s in steps] for c in by_step]
            n = len(steps)
            mean = [sum(y[i] for y in ys) / len(ys) for i in range(n)]
            line, = ax.plot(steps, mean, marker="o" if n < 3 else None,  # test_*: one point per run
                            label=f"{name} ({len(ys)} seed{'s' * (len(ys) > 1)})")
            if len(ys) > 1 and info.get("band") == "std":
                sd = [(sum((y[i] - mean[i]) ** 2 for y in ys) / (len(ys) - 1)) ** 0.5 for i in range(n)]
                ax.fill_between(steps, [m - d for m, d in zip(mean, sd, strict=True)],
                                [m + d for m, d in zip(mean, sd, strict=True)], color=line.get_color(), alpha=0.2)
            elif len(ys) > 1:
                ax.fill_between(steps, [min(y[i] for y in ys) for i in range(n)],
                                [max(y[i] for y in ys) for i in range(n)], color=line.get_color(), alpha=0.2)
        split, base_key = describe_metric(key)
        base = info.get("baseline", {}).get(base_key)
        if base is not None:
            ax.axhline(base, color="k", ls="--", lw=1, zorder=1,
                       label=f"{info.get('baseline_name', 'trivial baseline')} ({base:.4g})")
        where = f", {setting}" if setting and setting != "default" and setting != info.get("task") else ""
        ax.set(xlabel=info.get("x_label", "training step"), ylabel=f"{split} {base_key}",
               title=f"{info.get('task', '')} (T = {info.get('seq_len', '?')}{where})")
        if many:
            ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)
        else:
            ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, out)


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
        for when, style in (("init", {"histtype": "step", "lw": 1.5}), ("trained", {"alpha": 0.6})):
            v = stats[when][key].flatten()
            frac = float(((v < 0.1) | (v > 0.9)).double().mean())
            summary[f"{key}_{when}_binary"] = frac
            ax.hist(v.numpy(), bins=50, range=(0, 1), density=True, label=f"{when} ({frac:.0%} < 0.1 or > 0.9)",
                    **style)
        ax.set(title=f"{name}: {title}" if name else title, xlabel="activation", ylabel="density")
        ax.legend(fontsize=8)
    return summary


def gate_histograms(run: str | Path, out: str | Path | None = None) -> tuple[Path, dict]:
    """Histograms of the forget gate ``f`` and the effective gate ``g`` (all layers, steps, units),
    at initialisation and after training. Returns the PNG and the fraction of near-binary gates
    (``< 0.1`` or ``> 0.9``)."""
    stats = gate_statistics(run)
    cfg = stats["cfg"]
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    summary = draw_gate_histograms(axes, stats)
    from gated.harness.report import label

    fig.suptitle(f"{label(cfg.model.core, cfg.model.variant)} on {cfg.task.task}, step {stats['step']}")
    fig.tight_layout()
    return save_figure(fig, out or Path(run) / "gates.png"), summary


def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest="plot_command", metavar="FIGURE", required=True)
    curves = sub.add_parser("curves", help="learning curves of the runs under a directory")
    curves.add_argument("root", help="a run directory or a gated compare output directory")
    curves.add_argument("--out", help="PNG path (default: ROOT/curves.png)")
    curves.add_argument("--metric", help="metric key to plot, e.g. loss, val_loss, grad_norm (default: the task's "
                        "main metric, on training)")
    gates = sub.add_parser("gates", help="forget/effective gate histograms from a run's checkpoint (paper Fig. 5)")
    gates.add_argument("run", help="a run directory")
    gates.add_argument("--out", help="PNG path (default: RUN/gates.png)")


def main(args) -> int:
    if args.plot_command == "curves":
        root = Path(args.root)
        print(learning_curves(root, args.out or root / "curves.png", args.metric))
        return 0
    path, summary = gate_histograms(args.run, args.out)
    print(f"{path}\nnear-binary (<0.1 or >0.9) fraction: " + ", ".join(f"{k} {v:.3f}" for k, v in summary.items()))
    return 0
