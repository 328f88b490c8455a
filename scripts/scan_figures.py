"""The paper's Figure 5 for the scan experiments (REPORT.md, "Beyond the paper"): gate histograms and
timescale distributions of minGRU -, U, R, UR beside LSTM and UR-LSTM, seed 0 of each, on one task.

    python scripts/scan_figures.py --task copy      # runs/reproduce/scan-copy + copy-T500
    python scripts/scan_figures.py --task adding    # runs/reproduce/scan-adding (2 layers) + scan-adding-lstm

Writes docs/figures/reproduce_scan_<task>_gates.png (and .pdf, .svg): forget f and effective g, at
init (outline) and trained (filled), with the share below 0.1 or above 0.9; and
docs/figures/reproduce_scan_<task>_timescales.png: the survival P(T > t) of the effective gates'
timescales T = 1 / (1 - g) on a validation batch, at init (dashed) and trained (solid). The numbers go
to runs/reproduce/figures/scan_<task>.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from gated.harness.mechanism import gate_histogram_figure, survival
from gated.harness.plots import PANEL, _pyplot, gate_statistics, save_figure

RUNS = {  # label -> (experiment, setting, variant folder)
    "copy": {"LSTM": ("copy-T500", "default", "base"), "UR-LSTM": ("copy-T500", "default", "UR"),
             "minGRU": ("scan-copy", "default", "base"), "U-minGRU": ("scan-copy", "default", "U"),
             "R-minGRU": ("scan-copy", "default", "R"), "UR-minGRU": ("scan-copy", "default", "UR")},
    "adding": {"LSTM": ("scan-adding-lstm", "default", "base"), "UR-LSTM": ("scan-adding-lstm", "default", "UR"),
               "minGRU": ("scan-adding", "num_layers=2", "base"), "U-minGRU": ("scan-adding", "num_layers=2", "U"),
               "R-minGRU": ("scan-adding", "num_layers=2", "R"), "UR-minGRU": ("scan-adding", "num_layers=2", "UR")},
}


def timescale_figure(runs: dict[str, Path], out: Path) -> dict:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(PANEL[0] + 1.5, PANEL[1] + 0.8), layout="constrained")
    ts = torch.logspace(0, 5, 300, dtype=torch.float64)
    numbers = {}
    for k, (name, run) in enumerate(runs.items()):
        stats = gate_statistics(run)
        color = f"C{k}"
        for when, style in (("init", "--"), ("trained", "-")):
            g = stats[when]["effective"].double().flatten()
            tau = 1 / (1 - g).clamp_min(1e-12)
            ax.loglog(ts, survival(tau, ts).clamp_min(1e-5), style, color=color, lw=1.3,
                      label=f"{name} ({when})" if when == "trained" else None)
            numbers[f"{name}_{when}"] = {"median": float(tau.median()), "share_over_100": float((tau > 100).double().mean()),
                                         "share_over_1000": float((tau > 1000).double().mean())}
    ax.loglog(ts, 1 / ts, "k:", lw=1, label="1 / t")
    ax.set(xlabel="t (steps)", ylabel="P(T > t)", ylim=(1e-5, 1.5), title="effective-gate timescales T = 1/(1 - g); dashed: at init")
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3, which="both")
    save_figure(fig, out)
    return numbers


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", choices=sorted(RUNS), default="copy")
    p.add_argument("--root", default="runs/reproduce")
    p.add_argument("--out", default="docs/figures")
    args = p.parse_args()
    root, out = Path(args.root), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runs = {name: root / exp / setting / sub / "seed0" for name, (exp, setting, sub) in RUNS[args.task].items()}
    runs = {k: v for k, v in runs.items() if (v / "config.json").exists()}
    if not runs:
        raise SystemExit(f"no runs of {args.task} under {root}")
    _, hist = gate_histogram_figure(runs, out / f"reproduce_scan_{args.task}_gates.png")
    numbers = {"histograms": hist, "timescales": timescale_figure(runs, out / f"reproduce_scan_{args.task}_timescales.png")}
    (root / "figures").mkdir(parents=True, exist_ok=True)
    path = root / "figures" / f"scan_{args.task}.json"
    path.write_text(json.dumps(numbers, indent=1) + "\n")
    print(json.dumps(numbers, indent=1))
    print(f"wrote {out}/reproduce_scan_{args.task}_*.png and {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
