"""``gated compare``: a grid of variants x seeds x task settings, each run a separate ``gated train``
process, N at a time; then a markdown table and a learning-curve figure (the paper's Fig. 3 style).

Run directories are ``OUT/<setting>/<variant>/seed<k>``; a finished run is reused and an unfinished
one resumed, so an interrupted comparison continues where it stopped.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import time
from pathlib import Path

HELP = "run a variants x seeds x settings grid in parallel; write table.md and curves.png"


def add_arguments(parser) -> None:
    from gated.harness import config

    parser.add_argument("--variants", nargs="+", default=["-", "UR"], help="variants to compare (default: - UR)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0], help="seeds (default: 0)")
    parser.add_argument("--grid", action="append", default=[], metavar="FIELD=V1,V2",
                        help="a task/config setting to sweep, e.g. --grid delay=50,100 (repeatable)")
    parser.add_argument("--jobs", type=int, default=0, help="runs at a time (default: CPU cores, at most the runs)")
    parser.add_argument("--threshold", type=float, help="main-metric level for 'steps to threshold' "
                        "(default: the task's registry value)")
    parser.add_argument("--config", metavar="FILE", help="JSON config applied to every run")
    config.add_flags(parser)


class RunFailed(RuntimeError):
    """One or more runs of the grid exited with an error."""


def _label(variant: str) -> str:
    return "base" if variant == "-" else variant


def plan(args) -> list[dict]:
    """One dict per run: setting label, overrides, variant, seed, run dir."""
    from gated.harness import config

    if args.jobs < 0:
        raise ValueError(f"--jobs must be >= 0, got {args.jobs}")
    if not getattr(args, "out", None):
        raise ValueError("--out is required: the directory for the runs, table.md and curves.png")
    sweeps = []
    for item in args.grid:
        name, _, values = item.partition("=")
        name = name.strip().lstrip("-").replace("-", "_")
        if name not in config.FIELDS or not values or name in ("variant", "seed", "out"):
            raise ValueError(f"--grid {item!r}: expected FIELD=V1,V2 with FIELD a config field "
                             f"(not variant/seed/out); fields are {', '.join(sorted(config.FIELDS))}")
        sweeps.append([(name, v) for v in values.split(",")])
    base = {k: v for k, v in vars(args).items() if k in config.FIELDS and k not in ("variant", "seed", "out")}
    file_values = config.load_file(args.config) if args.config else {}
    runs = []
    for setting in itertools.product(*sweeps) if sweeps else [()]:
        label = ",".join(f"{k}={v}" for k, v in setting) or "default"
        for variant, seed in itertools.product(args.variants, args.seeds):
            values = file_values | base | dict(setting) | {"variant": variant, "seed": seed}
            run_dir = Path(args.out) / label / _label(variant) / f"seed{seed}"
            cfg = config.build(values | {"out": str(run_dir)})  # validates every run before any starts
            runs.append({"setting": label, "variant": variant, "seed": seed, "dir": run_dir, "cfg": cfg})
    return runs


def _command(run: dict, threads: int) -> list[str] | None:
    from gated.harness import checkpoint, config

    cfg, run_dir = run["cfg"], run["dir"]
    prefix = [sys.executable, "-m", "gated.harness.cli", "train"]
    if checkpoint.has_checkpoint(run_dir):
        if checkpoint.load(run_dir).step >= cfg.train.steps:
            return None  # finished earlier
        return prefix + ["--resume", str(run_dir), "--steps", str(cfg.train.steps), "--no-progress"]
    flags = []
    for name, value in cfg.flat().items():
        if value is not None and name != "progress":
            flags += [config.flag(name), str(value)]
    return prefix + flags + ["--threads", str(threads), "--no-progress"]


def execute(runs: list[dict], jobs: int, log=print) -> None:
    """Start the runs as subprocesses, ``jobs`` at a time; raise if any fails.

    A run may carry its own ``"command": f(run, threads) -> argv | None`` (None: finished);
    otherwise it is a ``gated train`` run (``gated rl compare`` passes ``gated rl train`` ones)."""
    cores = os.cpu_count() or 1
    jobs = jobs or min(len(runs), cores)
    threads = max(1, cores // jobs)
    pending, active, failed = list(runs), [], []
    start = time.perf_counter()
    while pending or active:
        while pending and len(active) < jobs:
            run = pending.pop(0)
            cmd = run.get("command", _command)(run, threads)
            if cmd is None:
                log(f"  {run['dir']}: already finished")
                continue
            run["dir"].mkdir(parents=True, exist_ok=True)
            logf = open(run["dir"] / "train.log", "a")
            env = dict(os.environ, OMP_NUM_THREADS=str(threads))
            active.append((run, subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, env=env), logf))
        time.sleep(0.2)
        for item in list(active):
            run, proc, logf = item
            if proc.poll() is None:
                continue
            active.remove(item)
            logf.close()
            status = "done" if not proc.returncode else f"FAILED (exit {proc.returncode}; see its train.log)"
            elapsed = time.perf_counter() - start
            log(f"  [{elapsed:6.0f} s] {run['setting']} {run['variant']} seed {run['seed']}: {status}")
            if proc.returncode:
                failed.append(run)
    if failed:
        raise RunFailed(f"{len(failed)} of {len(runs)} runs failed; e.g. {failed[0]['dir']}/train.log")


def main(args) -> int:
    from gated.harness.plots import learning_curves
    from gated.harness.report import table

    runs = plan(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"compare: {len(runs)} runs ({len(args.variants)} variants x {len(args.seeds)} seeds x "
          f"{len({r['setting'] for r in runs})} settings) in {out}", flush=True)
    execute(runs, args.jobs)
    md = table(out, args.threshold)
    (out / "table.md").write_text(md)
    fig = learning_curves(out, out / "curves.png")
    print("\n" + md)
    print(f"table: {out / 'table.md'}\nfigure: {fig}")
    return 0
