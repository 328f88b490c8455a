"""``gated rl compare``: a grid of environments x variants x seeds of ``gated rl train`` runs, N at
a time (``gated compare``'s runner), then ``table.md`` and ``curves.png`` (return against
environment steps, mean ± std over seeds, the random policy dashed).

Run directories are ``OUT/<env>/<variant>/seed<k>``; a finished run is reused, an unfinished
one resumed and one in use by another process skipped, as in ``gated compare``. Comparisons with different budgets per environment can share one OUT (run the
command once per environment); the table and figure always cover every run under OUT.
"""

from __future__ import annotations

import math
from pathlib import Path

TABLE_HELP = """Columns: random = the uniform random policy on the evaluation episodes; AUC = mean training
return over all logged records (higher: learned faster); final train = mean over the last 10% of
records; eval = the sampled policy on the fixed evaluation episodes after the last update.
Each cell is mean ± std over seeds."""


def add_arguments(parser) -> None:
    from gated.harness import launch
    from gated.harness.rl import config

    parser.add_argument("--envs", "--env", nargs="+", help="environment ids (default: --config's env, else "
                        f"{config.EnvConfig.env})")
    parser.add_argument("--variants", "--variant", nargs="+", default=["-", "UR"],
                        help="variants to compare (default: - UR)")
    parser.add_argument("--seeds", "--seed", nargs="+", type=int, default=[0], help="seeds (default: 0)")
    parser.add_argument("--jobs", type=int, default=0, help="runs at a time (default: CPU cores, at most the runs; "
                        "with --launcher slurm all of them)")
    parser.add_argument("--config", metavar="FILE", help="JSON config applied to every run")
    launch.add_arguments(parser)
    config.add_flags(parser, exclude=OWN)


OWN = ("env", "variant", "seed")  # set by --envs/--variants/--seeds; --progress is the grid's bar


def plan(args) -> list[dict]:
    """One dict per run (setting = env id, variant, seed, dir, cfg, command); validates all first."""
    from gated.harness.compare import check_existing
    from gated.harness.rl import config
    from gated.harness.rl.envs import resolve_env_id

    if args.jobs < 0:
        raise ValueError(f"--jobs must be >= 0, got {args.jobs}")
    if not getattr(args, "out", None):
        raise ValueError("--out is required: the directory for the runs, table.md and curves.png")
    base = {k: v for k, v in vars(args).items() if k in config.FIELDS and k not in (*OWN, "out")}
    file_values = config.load_file(args.config) if args.config else {}
    envs = args.envs or [file_values.get("env") or config.EnvConfig.env]
    runs = []
    for env in [resolve_env_id(e) for e in envs]:
        for variant in args.variants:
            for seed in args.seeds:
                run_dir = Path(args.out) / env / ("base" if variant == "-" else variant) / f"seed{seed}"
                values = file_values | base | {"env": env, "variant": variant, "seed": seed, "out": str(run_dir)}
                cfg = config.build(values)
                check_existing(run_dir, cfg, config)
                runs.append({"setting": env, "variant": variant, "seed": seed, "dir": run_dir, "cfg": cfg,
                             "command": command})
    return runs


def command(run: dict, threads: int) -> list[str] | None:
    """``gated rl train`` argv for a run: fresh, ``--resume``, or None if it already finished."""
    from gated.harness.compare import run_command
    from gated.harness.rl import config

    return run_command(run, threads, ["rl", "train"], config, run["cfg"].updates)


def _mean_std(values: list[float]) -> str:
    if not values:
        return "–"
    m = sum(values) / len(values)
    if len(values) == 1:
        return f"{m:.3f}"
    sd = math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))
    return f"{m:.3f} ± {sd:.3f}"


def table(root: str | Path) -> str:
    """Markdown: one row per (environment, model), mean ± std over seeds."""
    from gated.harness.report import find_runs, label, variant_order

    runs = [r for r in find_runs(root) if r["info"].get("kind") == "rl"]
    if not runs:
        raise ValueError(f"no gated rl runs (config.json + metrics.jsonl + task.json) under {root}")
    header = "| environment | model | seeds | env steps | random | AUC (mean train return) | final train return | eval return |"
    lines = [header, "|---|---|---|---|---|---|---|---|"]
    groups: dict = {}
    for run in runs:
        groups.setdefault((run["info"]["task"], run["core"], run["variant"]), []).append(run)
    for (env, core, variant), rs in sorted(groups.items(), key=lambda kv: (kv[0][0], *variant_order(*kv[0][1:]))):
        auc, final, ev, steps = [], [], [], []
        for r in rs:
            rets = [rec["return"] for rec in r["records"] if "return" in rec]
            tail = rets[-max(1, len(rets) // 10):]
            auc += [sum(rets) / len(rets)] if rets else []
            final += [sum(tail) / len(tail)] if tail else []
            ev += [rec["val_return"] for rec in r["records"][-1:] if "val_return" in rec]
            steps.append(r["records"][-1]["step"] if r["records"] else 0)
        steps_text = f"{min(steps):,}" if min(steps) == max(steps) else f"{min(steps):,}–{max(steps):,}"
        lines.append(f"| {env} | {label(core, variant)} | {len(rs)} | {steps_text} | "
                     f"{rs[0]['info']['baseline']['return']:.3f} | {_mean_std(auc)} | {_mean_std(final)} | "
                     f"{_mean_std(ev)} |")
    return "\n".join(lines) + "\n\n" + TABLE_HELP + "\n"


def main(args) -> int:
    from gated.harness import launch
    from gated.harness.compare import execute
    from gated.harness.files import write_text
    from gated.harness.plots import learning_curves

    runs = plan(args)
    out = Path(args.out)
    launcher = launch.from_args(args, out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"rl compare: {len(runs)} runs ({len(args.variants)} variants x {len(args.seeds)} seeds x "
          f"{len({r['setting'] for r in runs})} envs) in {out}", flush=True)
    execute(runs, args.jobs, launcher=launcher, progress=getattr(args, "progress", True))
    md = table(out)
    write_text(out / "table.md", md)
    figs = learning_curves(out, out / "curves.png", "return")
    print("\n" + md)
    print(f"table: {out / 'table.md'}\nfigure: {', '.join(map(str, figs))}")
    return 0
