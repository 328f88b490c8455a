"""Reading run directories back: metric curves per run, and the comparison table (markdown)."""

from __future__ import annotations

import math
from pathlib import Path

from gated.harness.files import read_json, read_jsonl


def variant_order(core: str, variant: str) -> tuple:
    """Sort key: core, then the paper's variant order (gated.VARIANTS)."""
    import gated

    order = list(gated.VARIANTS)
    return core, order.index(variant) if variant in order else len(order), variant


def find_runs(root: str | Path) -> list[dict]:
    """Every run under ``root`` (a run directory or a tree of them), with its records.

    Each entry: ``dir``, ``setting`` (first path component below ``root``, "" for a single run),
    ``variant``, ``seed``, ``core``, ``info`` (task.json), ``records`` (metrics.jsonl).
    """
    root = Path(root)
    runs = []
    for cfg_path in sorted(root.rglob("config.json")):
        run = cfg_path.parent
        if not (run / "metrics.jsonl").exists():
            continue
        cfg = read_json(cfg_path)
        rel = run.relative_to(root).parts
        records = read_jsonl(run / "metrics.jsonl")
        info = read_json(run / "task.json") if (run / "task.json").exists() else {}
        runs.append({"dir": run, "setting": rel[0] if len(rel) == 3 else "",
                     "variant": _canonical(cfg["model"]["variant"]),
                     "core": cfg["model"]["core"], "seed": cfg["train"]["seed"], "info": info, "records": records})
    return runs


_NAMES = {"mingru": "minGRU", "minlstm": "minLSTM"}  # Feng et al.'s spelling; the others upper-cased


def _canonical(variant: str) -> str:
    """The registry label of a variant as a run stored it (older runs kept the spelling typed:
    ``ur`` and ``uniform-refine`` are one series, ``UR``); an unknown name is kept as it is."""
    import gated

    try:
        return gated.get_variant(variant).name
    except ValueError:
        return variant


def label(core: str, variant: str) -> str:
    """The paper's names: LSTM, UR-LSTM, C-GRU, ..., UR-minGRU."""
    name = _NAMES.get(core, core.upper())
    return name if variant == "-" else f"{variant}-{name}"


def _mean_std(values: list[float], digits: int = 4, integer: bool = False) -> str:
    if not values:
        return "–"
    m = sum(values) / len(values)
    sd = math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else None
    if integer:
        return f"{m:.0f}" + ("" if sd is None else f" ± {sd:.0f}")
    return f"{m:.{digits}g}" + ("" if sd is None else f" ± {sd:.2g}")


def first_crossing(records: list[dict], key: str, threshold: float, higher: bool) -> int | None:
    for r in records:
        if key in r and (r[key] >= threshold if higher else r[key] <= threshold):
            return r["step"]
    return None


def summarize(run: dict, threshold: float | None) -> dict:
    """Final/best of the main metric (validation if evaluated, else training) and steps to threshold
    (on the training curve: logged window means)."""
    info, recs = run["info"], run["records"]
    key, higher = info.get("main_metric", "loss"), info.get("higher_is_better", False)
    val = [r[f"val_{key}"] for r in recs if f"val_{key}" in r]
    train = [r[key] for r in recs if key in r]
    tail = train[-max(1, len(train) // 10):]
    pick = max if higher else min
    curve = val or train
    return {"final": curve[-1] if curve else float("nan"), "best": pick(curve) if curve else float("nan"),
            "train_final": sum(tail) / len(tail) if tail else float("nan"),
            "to_threshold": None if threshold is None else first_crossing(recs, key, threshold, higher),
            "steps": recs[-1]["step"] if recs else 0}


def table(root: str | Path, threshold: float | None = None) -> str:
    """Markdown: one row per (setting, variant), mean ± std over seeds."""
    runs = find_runs(root)
    if not runs:
        raise ValueError(f"no runs (config.json + metrics.jsonl) under {root}")
    info = runs[0]["info"]
    key = info.get("main_metric", "loss")
    threshold = info.get("threshold") if threshold is None else threshold
    src = "val" if any(f"val_{key}" in r for r in runs[0]["records"]) else "train"
    base = info.get("baseline", {}).get(key)
    direction = "≥" if info.get("higher_is_better") else "≤"
    better = "higher" if info.get("higher_is_better") else "lower"
    title = f"Task `{info.get('task', '?')}`: {key} ({better} is better)"
    if base is not None:
        title += f"; trivial baseline {base:.4g}"
    reach = f"steps to {key} {direction} {threshold:.3g}" if threshold is not None else "steps to threshold"
    lines = [title, "", f"| setting | model | seeds | final {src} {key} | best {src} {key} | "
             f"final train {key} (last 10%) | {reach} |", "|---|---|---|---|---|---|---|"]
    groups: dict = {}
    for run in runs:
        groups.setdefault((run["setting"], run["core"], run["variant"]), []).append(summarize(run, threshold))
    for (setting, core, variant), rows in sorted(groups.items(), key=lambda kv: (kv[0][0], *variant_order(*kv[0][1:]))):
        reached = [float(r["to_threshold"]) for r in rows if r["to_threshold"] is not None]
        hit = "–" if threshold is None else f"{_mean_std(reached, integer=True)} ({len(reached)}/{len(rows)} reached)"
        lines.append(f"| {setting or '–'} | {label(core, variant)} | {len(rows)} | "
                     f"{_mean_std([r['final'] for r in rows])} | {_mean_std([r['best'] for r in rows])} | "
                     f"{_mean_std([r['train_final'] for r in rows])} | {hit} |")
    return "\n".join(lines) + "\n"
