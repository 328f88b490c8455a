"""``gated compare``: a grid of variants x seeds x task settings, each run a separate ``gated train``
process, N at a time; then a markdown table and a learning-curve figure (the paper's Fig. 3 style).

Run directories are ``OUT/<setting>/<variant>/seed<k>``; a finished run is reused and an unfinished
one resumed (from step 0 if it stopped before its first checkpoint), so an interrupted comparison
continues where it stopped. A run that another process is training (its lock is held: a second
``gated compare`` on the same OUT, or a ``gated train --resume``) is skipped and reported.

The terminal shows the one-time kernel build, a line per run as it starts and ends (a failed
run's last lines of ``train.log`` with it), and a progress bar with an ETA over the grid's steps
(``--no-progress`` turns it off; it is off anyway when the output is not a terminal). Each run is a
child Python that imports the very ``gated`` this process imported, never a ``gated/`` folder in
the working directory.
"""

from __future__ import annotations

import itertools
import os
import sys
import time
from pathlib import Path

HELP = "run a variants x seeds x settings grid in parallel; write table.md and curves.png"


def add_arguments(parser) -> None:
    from gated.harness import config, launch

    parser.add_argument("--variants", "--variant", nargs="+", default=["-", "UR"],
                        help="variants to compare (default: - UR)")
    parser.add_argument("--seeds", "--seed", nargs="+", type=int, default=[0], help="seeds (default: 0)")
    parser.add_argument("--grid", action="append", default=[], metavar="FIELD=V1,V2",
                        help="a task/config setting to sweep, e.g. --grid delay=50,100 (repeatable)")
    parser.add_argument("--jobs", type=int, default=0, help="runs at a time (default: CPU cores, at most the runs; "
                        "with --launcher slurm all of them)")
    parser.add_argument("--threshold", type=float, help="main-metric level for 'steps to threshold' "
                        "(default: the task's registry value)")
    parser.add_argument("--config", metavar="FILE", help="JSON config applied to every run")
    launch.add_arguments(parser)
    config.add_flags(parser, exclude=COMPARE_OWN)


# Config fields gated compare sets itself: --variants/--seeds (lists) and the run directories
# under --out. ``--progress/--no-progress`` is kept: it is the grid's bar (the runs log to files).
COMPARE_OWN = ("variant", "seed")


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
    base = {k: v for k, v in vars(args).items() if k in config.FIELDS and k not in (*COMPARE_OWN, "out")}
    file_values = config.load_file(args.config) if args.config else {}
    runs = []
    for setting in itertools.product(*sweeps) if sweeps else [()]:
        label = ",".join(f"{k}={v}" for k, v in setting) or "default"
        for variant, seed in itertools.product(args.variants, args.seeds):
            values = file_values | base | dict(setting) | {"variant": variant, "seed": seed}
            run_dir = Path(args.out) / label / _label(variant) / f"seed{seed}"
            cfg = config.build(values | {"out": str(run_dir)})  # validates every run before any starts
            check_existing(run_dir, cfg, config)
            runs.append({"setting": label, "variant": variant, "seed": seed, "dir": run_dir, "cfg": cfg})
    return runs


def check_existing(run_dir: Path, cfg, config) -> None:
    """Refuse a grid whose run directory holds a run of another task/model (it would be reused)."""
    from gated.harness.files import read_json

    if (run_dir / "config.json").exists():
        saved = config.from_dict(read_json(run_dir / "config.json")).flat()
        changed = [config.flag(k) for k, v in cfg.flat().items()
                   if config.FIELDS[k][0] in config.SCHEMA.frozen and saved[k] != v]
        if changed:
            raise ValueError(f"{run_dir} holds a run that differs in {', '.join(changed)}; choose another --out")


def run_command(run: dict, threads: int, prefix: list[str], config, total: int) -> list[str] | None:
    """The argv of a run of ``gated train`` (or ``gated rl train``: ``prefix``, its ``config``
    module and its length ``total`` in checkpoint steps): a fresh run, ``--resume`` (also of a
    run stopped before its first checkpoint), or None when it already finished: its checkpoint is
    at ``total``, or it recorded its end (:func:`gated.harness.checkpoint.mark_finished`), so a run
    whose checkpoints were pruned, or whose results were copied without them, is not trained again."""
    from gated.harness import checkpoint

    cfg, run_dir = run["cfg"], run["dir"]
    flags = []
    for name, value in cfg.flat().items():
        if value is None or name in ("progress", "threads", "out"):
            continue
        if isinstance(value, bool):
            flags.append(config.flag(name) if value else "--no-" + config.flag(name)[2:])
        else:
            flags += [config.flag(name), str(value)]
    flags += ["--threads", str(threads), "--no-progress"]
    start = child_python() + prefix
    if not (run_dir / "config.json").exists():
        return start + flags + ["--out", str(run_dir)]
    if checkpoint.ended_at(run_dir, total) is not None:
        return None
    return start + ["--resume", str(run_dir)] + flags


def child_python() -> list[str]:
    """The argv prefix of a child ``gated`` command: this Python, importing the ``gated`` package
    this process imported. (``python -m`` would put the working directory first on the path, and a
    ``gated/`` folder there, such as a checkout seen from its parent, would shadow the package.)"""
    import gated

    root = str(Path(gated.__file__).resolve().parent.parent)
    code = f"import sys; sys.path[0] = {root!r}; from gated.harness.cli import main; sys.exit(main())"
    return [sys.executable, "-c", code]


def _end_lines(path: Path, size: int) -> list[str]:
    """The lines in the last ``size`` bytes of a file ([] if it cannot be read), without reading the rest."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - size))
            return f.read().decode(errors="replace").splitlines()
    except OSError:
        return []


def _tail(path: Path, lines: int = 6) -> str:
    """The last lines of a run's log, indented, for the terminal ("" if there is none)."""
    kept = [ln for ln in _end_lines(path, 8192) if ln.strip()][-lines:]
    return "".join(f"\n      | {ln}" for ln in kept)


def _last_step(run_dir: Path) -> int:
    """The step of the last record in a run's ``metrics.jsonl`` (0 if none), read from its end."""
    import json

    for line in reversed(_end_lines(run_dir / "metrics.jsonl", 4096)):
        try:
            return int(json.loads(line).get("step", 0))
        except (ValueError, AttributeError, TypeError):
            continue
    return 0


class _GridBar:
    """A progress bar over the steps of a grid's runs, with an ETA, polled from their metrics."""

    def __init__(self, runs: list[dict], show: bool):
        self.runs = runs
        self.total = sum(int(getattr(r["cfg"].train, "steps", 0) or 0) for r in runs)
        self.bar = None
        if show and self.total:
            from tqdm import tqdm

            # disable=None: a bar on a terminal, nothing in logs and pipes
            self.bar = tqdm(total=self.total, disable=None, unit="step", dynamic_ncols=True, desc="grid",
                            initial=self._done())
        self.next_poll = 0.0

    def _done(self) -> int:
        return sum(min(_last_step(r["dir"]), int(r["cfg"].train.steps)) for r in self.runs)

    def poll(self, force: bool = False) -> None:
        if self.bar is None or (not force and time.monotonic() < self.next_poll):
            return
        self.next_poll = time.monotonic() + 2.0
        self.bar.update(max(0, self._done() - self.bar.n))

    def write(self, line: str, log) -> None:
        if self.bar is not None and log is print:
            self.bar.write(line)
        else:
            log(line)

    def close(self) -> None:
        if self.bar is not None:
            self.poll(force=True)
            self.bar.close()


def prebuild(runs: list[dict], log=print) -> None:
    """Build the fused CPU kernels once, here, so the terminal shows it (the runs would each
    report it only in their train.log), when a run may use them."""
    def on_cpu(cfg) -> bool:
        model, train = getattr(cfg, "model", None), getattr(cfg, "train", None)
        backend = getattr(model, "backend", "auto")
        device = str(getattr(train, "device", "auto"))
        return backend in ("auto", "fused_cpu") and (device == "cpu" or device == "auto")

    if os.environ.get("GATED_DISABLE_FUSED") or not any(on_cpu(r["cfg"]) for r in runs):
        return
    from gated.backends import _build

    try:
        _build._build()  # prints its own "building ..." lines on stderr when it compiles
    except Exception as e:  # the runs fall back to the reference backend, each logging why
        log(f"gated: the fused CPU kernels are not available ({str(e).splitlines()[0] if str(e) else e}); "
            "the runs use the reference backend (slower)")


def _command(run: dict, threads: int) -> list[str] | None:
    from gated.harness import config

    return run_command(run, threads, ["train"], config, run["cfg"].train.steps)


def execute(runs: list[dict], jobs: int, log=print, launcher=None, progress: bool = True) -> list[dict]:
    """Start the runs, ``jobs`` at a time, through ``launcher`` (:mod:`gated.harness.launch`;
    default: subprocesses on this machine); raise if any fails. Returns the runs skipped because
    another process is training them (each is logged).

    A run may carry its own ``"command": f(run, threads) -> argv | None`` (None: finished);
    otherwise it is a ``gated train`` run (``gated rl compare`` passes ``gated rl train`` ones).
    A run's threads are its ``--threads``, else the launcher's (the CPU cores shared between the
    jobs; a Slurm job's CPUs)."""
    from gated.harness import checkpoint
    from gated.harness.status import EXIT_IN_USE
    from gated.harness.launch import Subprocess

    launcher = launcher or Subprocess()
    jobs = jobs or launcher.default_jobs(len(runs))
    pending, active, failed, skipped = list(runs), [], [], []
    prebuild(runs, log)
    start = time.perf_counter()
    bar = _GridBar(runs, progress)

    def report(run, status):
        bar.write(f"  [{time.perf_counter() - start:6.0f} s] {run['setting']} {run['variant']} seed {run['seed']}: "
                  f"{status}", log)

    while pending or active:
        while pending and len(active) < jobs:
            run = pending.pop(0)
            threads = run["cfg"].train.threads or launcher.threads(jobs)
            run["dir"].mkdir(parents=True, exist_ok=True)
            try:
                checkpoint.lock_run(run["dir"])  # nobody writes the run while its state is read
                try:
                    cmd = run.get("command", _command)(run, threads)
                finally:
                    checkpoint.close_run(run["dir"])
            except checkpoint.RunInUse as e:
                report(run, f"skipped: {e}")
                skipped.append(run)
                continue
            except (checkpoint.CheckpointError, OSError) as e:
                report(run, f"FAILED: {e}")
                failed.append(run)
                continue
            if cmd is None:
                report(run, "already finished")
                continue
            name = f"gated-{run['setting']}-{_label(run['variant'])}-seed{run['seed']}"
            try:
                handle = launcher.start(cmd, run["dir"] / "train.log", {"OMP_NUM_THREADS": str(threads)}, name)
            except OSError as e:  # train.log is a link or unwritable
                report(run, f"FAILED: {e}")
                failed.append(run)
                continue
            active.append((run, handle))
            report(run, f"{'resumed' if '--resume' in cmd else 'started'} ({threads} thread{'s' * (threads > 1)}; "
                        f"log {run['dir'] / 'train.log'})")
        time.sleep(0.2)
        bar.poll()
        for item in list(active):
            run, handle = item
            code = handle.poll()
            if code is None:
                continue
            active.remove(item)
            if code == EXIT_IN_USE:  # another process took the run after the check above
                report(run, "skipped: in use by another process (see its train.log)")
                skipped.append(run)
            elif code:
                report(run, f"FAILED (exit {code}; the end of its train.log:){_tail(run['dir'] / 'train.log')}")
                failed.append(run)
            else:
                report(run, "done")
    bar.close()
    if skipped:
        log(f"{len(skipped)} of {len(runs)} runs skipped: another process is training them; the results "
            "show them as they stand (run this again when they finish)")
    if failed:
        raise RunFailed(f"{len(failed)} of {len(runs)} runs failed; e.g. {failed[0]['dir']}/train.log")
    return skipped


def main(args) -> int:
    from gated.harness import launch
    from gated.harness.files import write_text
    from gated.harness.plots import learning_curves
    from gated.harness.report import table

    runs = plan(args)
    out = Path(args.out)
    launcher = launch.from_args(args, out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"compare: {len(runs)} runs ({len(args.variants)} variants x {len(args.seeds)} seeds x "
          f"{len({r['setting'] for r in runs})} settings) in {out}", flush=True)
    execute(runs, args.jobs, launcher=launcher, progress=getattr(args, "progress", True))
    md = table(out, args.threshold)
    write_text(out / "table.md", md)
    figs = learning_curves(out, out / "curves.png")
    print("\n" + md)
    print(f"table: {out / 'table.md'}\nfigure: {', '.join(map(str, figs))}")
    return 0
