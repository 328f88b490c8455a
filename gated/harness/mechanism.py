"""Figures for the paper's mechanism claims (claim 4 in REPORT.md):

- :func:`bands_figure`: the refine gate's bands ``f^2`` and ``1 - (1 - f)^2`` with ``g`` for several
  refine activations (paper Fig. 2b), from :func:`gated.gates.refine_gate` itself;
- :func:`timescale_figure`: the survival function ``P(T > t)`` of the initial forget-gate
  timescales ``T = 1 / (1 - f)`` of freshly built modules (UGI, chrono, default init) against the
  paper's ``1/t`` law;
- :func:`gate_histogram_figure`: forget and effective gate activations at initialisation and after
  training for trained runs (paper Fig. 5), with the near-binary fraction of each.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch


def initial_forget_gates(core: str, variant: str, hidden_size: int, seed: int = 0, **kwargs) -> torch.Tensor:
    """The forget (keep) gate of a freshly initialised one-layer module at zero input and state,
    i.e. ``sigmoid(b_f)``: the gate the initialisation chose, for each of ``hidden_size`` units."""
    import gated
    from gated.harness.model import CORE_MODULES

    torch.manual_seed(seed)
    module = CORE_MODULES[core](1, hidden_size, variant=variant, dtype=torch.float64, **kwargs)
    acts = gated.gate_activations(module, torch.zeros(1, 1, 1, dtype=torch.float64))
    return acts["forget"].flatten()


def survival(timescales: torch.Tensor, ts: torch.Tensor) -> torch.Tensor:
    """Empirical ``P(T > t)`` at each ``t`` in ``ts``."""
    return (timescales[None, :] > ts[:, None]).double().mean(1)


def ugi_law_distance(f: torch.Tensor, d: int) -> dict:
    """How far the timescales ``1 / (1 - f)`` of ``d`` gates are from UGI's law.

    With ``f ~ U[1/d, 1 - 1/d]``, ``P(T > t) = (1/t - 1/d) / (1 - 2/d)`` exactly for ``t`` in
    ``[d/(d-1), d]``, which is ``1/t`` up to O(1/d). Returns the largest absolute gap between the
    empirical survival function and that law (a Kolmogorov-Smirnov distance) and between it and
    ``1/t``, over ``2 <= t <= d / 2``.
    """
    t = torch.linspace(2, d / 2, 2000, dtype=torch.float64)
    emp = survival(1 / (1 - f.double()), t)
    law = (1 / t - 1 / d) / (1 - 2 / d)
    return {"ks_vs_ugi_law": float((emp - law).abs().max()), "max_gap_vs_1_over_t": float((emp - 1 / t).abs().max())}


def timescale_figure(out: Path, hidden_size: int = 4096) -> tuple[Path, dict]:
    """Survival of initial timescales; returns the PNG (PDF and SVG beside it) and
    :func:`ugi_law_distance` of UGI."""
    from gated.harness.plots import PANEL, _pyplot, save_figure

    ts = torch.logspace(0, 4, 200, dtype=torch.float64)
    curves = {
        "UGI (variant U)": initial_forget_gates("lstm", "U", hidden_size),
        f"chrono (variant C, t_max = {hidden_size})": initial_forget_gates("lstm", "C", hidden_size),
        "default init (variant -)": initial_forget_gates("lstm", "-", hidden_size),
    }
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(PANEL[0] + 0.5, PANEL[1] + 0.5), layout="constrained")
    for name, f in curves.items():
        ax.loglog(ts, survival(1 / (1 - f), ts).clamp_min(1e-6), label=name)
    ax.loglog(ts, 1 / ts, "k--", lw=1, label="1 / t (the paper's law)")
    ax.set(xlabel="t (steps)", ylabel="P(T > t)", ylim=(1e-4, 1.5),
           title=f"initial forget-gate timescales, H = {hidden_size}")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, which="both")
    stats = {"hidden_size": hidden_size} | ugi_law_distance(curves["UGI (variant U)"], hidden_size)
    return save_figure(fig, out)[0], stats


def bands_figure(out: Path) -> tuple[Path, dict]:
    """Paper Fig. 2b from the library's refine gate; returns the PNG (PDF and SVG beside it) and
    g(f = 0.9, r = 1)."""
    from gated.gates import refine_gate
    from gated.harness.plots import PANEL, _pyplot, save_figure

    f = torch.linspace(0, 1, 401, dtype=torch.float64)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(PANEL[0], PANEL[1] + 0.5), layout="constrained")
    ax.fill_between(f, f**2, 1 - (1 - f) ** 2, color="0.85", label="reachable band")
    for r in (0.0, 0.25, 0.5, 0.75, 1.0):
        ax.plot(f, refine_gate(f, torch.full_like(f, r)), lw=1.2, label=f"g, r = {r:g}")
    # wide and light, behind the curves: g at r = 0.5 is exactly f and must stay visible on it
    ax.plot(f, f, color="0.6", lw=4.5, solid_capstyle="butt", zorder=1.5, label="g = f (no refine gate)")
    ax.set(xlabel="forget gate f", ylabel="effective gate g", title="refine gate: g = f² + 2 r f (1 - f)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    path = save_figure(fig, out)[0]
    g = refine_gate(torch.tensor(0.9, dtype=torch.float64), torch.tensor(1.0, dtype=torch.float64))
    return path, {"g_at_f0.9_r1": float(g)}


def gate_histogram_figure(runs: dict[str, Path], out: Path) -> tuple[Path, dict]:
    """Rows: the given runs; columns: forget gate f, effective gate g; init (outline) vs trained
    (filled). Returns the PNG (PDF and SVG beside it) and, per run, the fraction of activations
    below 0.1 or above 0.9."""
    from gated.harness.plots import PANEL, _pyplot, draw_gate_histograms, gate_statistics, save_figure

    plt = _pyplot()
    fig, axes = plt.subplots(len(runs), 2, figsize=(2 * PANEL[0], PANEL[1] * len(runs)), squeeze=False,
                             layout="constrained")
    summary = {}
    for row, (name, run) in zip(axes, runs.items(), strict=True):
        stats = gate_statistics(run)
        summary[name] = {"step": stats["step"], **draw_gate_histograms(row, stats, name)}
    return save_figure(fig, out)[0], summary


def all_figures(out_root: Path, figdir: Path) -> list[Path]:
    """The mechanism figures of ``gated reproduce --full``; histograms use the copy-grid runs
    (seed 0) when they exist. Writes ``mechanism.json`` with the numbers the figures show."""
    figdir.mkdir(parents=True, exist_ok=True)
    paths, numbers = [], {}
    for name, fn in (("bands", bands_figure), ("timescales", timescale_figure)):
        path, stats = fn(figdir / f"mechanism_{name}.png")
        paths.append(path)
        numbers[name] = stats
    grid = out_root / "copy-grid" / "default"
    runs = {label: grid / sub / "seed0" for label, sub in (("LSTM", "base"), ("U-LSTM", "U"), ("R-LSTM", "R"),
                                                           ("UR-LSTM", "UR"))}
    runs = {k: v for k, v in runs.items() if (v / "config.json").exists()}
    if runs:
        path, stats = gate_histogram_figure(runs, figdir / "mechanism_gate_histograms.png")
        paths.append(path)
        numbers["histograms"] = stats
    (figdir / "mechanism.json").write_text(json.dumps(numbers, indent=1) + "\n")
    return paths
