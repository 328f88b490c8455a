"""``gated reproduce``: re-run the paper's claims from the experiment specs that ship with the
package (``gated/harness/experiments/``) and write one summary per experiment.

    gated reproduce --quick                 # copy task, LSTM vs UR-LSTM, 2 seeds (~2 min on 2 cores)
    gated reproduce --full                  # everything in REPORT.md (about 6 h on 2 cores, 2 runs at a time)
    gated reproduce --only copy-grid adding # chosen experiments

An experiment spec is a JSON file (``gated/harness/experiments/<name>.json``)::

    {"suite": "full", "claim": "...", "config": {<run config fields>},
     "variants": ["-", "UR"], "seeds": [0, 1, 2], "grid": {"core": ["gru", "mgu"]},
     "threshold": 1.04, "check": {"better": "UR", "worse": "-"}}

or, for memory RL (``gated rl compare``), ``"kind": "rl"`` with ``"envs": [ids]`` and
``gated rl`` config fields (no grid, threshold or check). ``"config": {"extends": "file.json", ...}``
starts from a config file (path relative to the spec) and overrides some of its fields.

Each runs as a ``gated compare`` grid in ``OUT/<name>`` (finished runs are reused, unfinished ones
resumed), then writes ``table.md``, ``curves.png`` and ``summary.json``. A ``check`` asserts an
ordering on the final main metric: every seed of ``better`` beats every seed of ``worse`` in each
setting; a failed check makes the command exit with status 1, and so does a check that runs
in use by another process leave undecided (it says so). Every field of every spec is checked when
it is read (seeds are integers, grid values lists, the check's variants among the spec's), and
every run's config is validated, before the first run starts. The mechanism figures (paper
Fig. 2b and 5, and the UGI timescale law) are drawn by :mod:`gated.harness.mechanism`.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

HELP = "re-run the paper's experiments (the specs shipped in gated/harness/experiments); --quick checks LSTM < UR-LSTM"

SPEC_KEYS = {"suite", "claim", "config", "variants", "seeds", "grid", "threshold", "check", "jobs", "kind", "envs"}
KINDS = ("train", "rl")  # a ``gated compare`` grid of ``gated train`` runs, or a ``gated rl compare`` one
SUITES = ("quick", "full")


def default_experiments_dir() -> Path:
    """The specs shipped inside the package (package data: a wheel, an editable install or a checkout)."""
    return Path(__file__).resolve().parent / "experiments"


def load_spec(path: str | Path) -> dict:
    """Read and check one experiment spec, every field, before any run starts; raise ValueError
    naming the file and the problem."""
    import gated
    from gated.harness.files import read_json

    path = Path(path)
    spec = read_json(path)

    def bad(message: str) -> ValueError:
        return ValueError(f"experiment spec {path}: {message}")

    unknown = set(spec) - SPEC_KEYS
    if unknown:
        raise bad(f"unknown keys {sorted(unknown)}; allowed: {sorted(SPEC_KEYS)}")
    if spec.get("suite") not in SUITES:
        raise bad(f"'suite' must be one of {SUITES}, got {spec.get('suite')!r}")
    if isinstance(spec.get("config"), dict) and "extends" in spec["config"]:  # a base config file + overrides
        cfg_path = path.parent / spec["config"]["extends"]
        try:
            base = read_json(cfg_path)
        except (OSError, ValueError) as e:
            raise bad(f"cannot read the config it extends, {cfg_path}: {e}") from None
        spec["config"] = [base, {k: v for k, v in spec["config"].items() if k != "extends"}]
    for key, kind in (("config", (dict, list)), ("variants", list), ("seeds", list), ("grid", dict), ("check", dict),
                      ("envs", list)):
        if key in spec and not isinstance(spec[key], kind):
            raise bad(f"{key!r} must be a JSON {'object' if key in ('config', 'grid', 'check') else 'list'}")
    if spec.get("kind", "train") not in KINDS:
        raise bad(f"'kind' must be one of {KINDS}, got {spec.get('kind')!r}")
    if (spec.get("kind") == "rl") != ("envs" in spec):
        raise bad("'envs' (a list of environment ids) goes with \"kind\": \"rl\"")
    if spec.get("kind") == "rl" and {"grid", "threshold", "check"} & set(spec):
        raise bad("an rl spec takes no 'grid', 'threshold' or 'check'")
    if not spec.get("variants") or not spec.get("seeds"):
        raise bad("needs non-empty 'variants' and 'seeds'")
    if not all(_is_int(s) and s >= 0 for s in spec["seeds"]):
        raise bad(f"'seeds' must be integers >= 0, got {spec['seeds']}")
    if not all(isinstance(x, str) for x in spec["variants"] + spec.get("envs", [])):
        raise bad("'variants' and 'envs' must be lists of strings")
    try:
        variants = {gated.get_variant(v).name for v in spec["variants"]}
    except ValueError as e:
        raise bad(str(e)) from None
    for field, values in spec.get("grid", {}).items():
        if not isinstance(values, list) or not values or not all(isinstance(v, (str, int, float)) for v in values):
            raise bad(f"'grid' maps a config field to a non-empty list of values, e.g. {{{field!r}: [50, 100]}}; "
                      f"got {field!r}: {json.dumps(values)}")
    if "threshold" in spec and (isinstance(spec["threshold"], bool) or not isinstance(spec["threshold"], (int, float))):
        raise bad(f"'threshold' must be a number, got {spec['threshold']!r}")
    if "jobs" in spec and not (_is_int(spec["jobs"]) and spec["jobs"] >= 0):
        raise bad(f"'jobs' must be an integer >= 0, got {spec['jobs']!r}")
    if "check" in spec:
        if set(spec["check"]) != {"better", "worse"}:
            raise bad("'check' must be {\"better\": V, \"worse\": V}")
        for role, v in spec["check"].items():
            try:
                name = gated.get_variant(str(v)).name
            except ValueError as e:
                raise bad(f"check {role!r}: {e}") from None
            if name not in variants:
                raise bad(f"check {role!r} names {v!r}, which is not in the spec's variants {spec['variants']}")
    return spec | {"name": path.stem}


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def find_specs(directory: str | Path, suite: str | None, only: list[str] | None) -> list[dict]:
    directory = Path(directory)
    if not directory.is_dir():
        raise ValueError(f"no experiments directory at {directory}; pass --experiments DIR "
                         "(a folder of spec files such as gated/harness/experiments/)")
    specs = {p.stem: p for p in sorted(directory.glob("*.json"))}
    if only:
        missing = [n for n in only if n not in specs]
        if missing:
            raise ValueError(f"unknown experiment(s) {missing}; choose from {', '.join(specs)}")
        return [load_spec(specs[n]) for n in only]
    chosen = [load_spec(p) for p in specs.values()]
    return [s for s in chosen if s["suite"] == suite]


def _layers(spec: dict) -> list[dict]:
    """The spec's config as layers, later ones winning (a base file, then overrides)."""
    cfg = spec.get("config", {})
    return cfg if isinstance(cfg, list) else [cfg]


def compare_args(spec: dict, out: Path, jobs: int) -> argparse.Namespace:
    """The ``gated compare`` arguments that run this spec."""
    from gated.harness import config

    flat = {k: v for layer in _layers(spec) for k, v in config._flatten(layer, spec["name"]).items()}
    grid = [f"{k}={','.join(map(str, v))}" for k, v in spec.get("grid", {}).items()]
    return argparse.Namespace(variants=[str(v) for v in spec["variants"]], seeds=[int(s) for s in spec["seeds"]],
                              grid=grid, jobs=jobs or spec.get("jobs", 0), threshold=spec.get("threshold"),
                              config=None, out=str(out), **flat)


def rl_compare_args(spec: dict, out: Path, jobs: int) -> argparse.Namespace:
    """The ``gated rl compare`` arguments that run an rl spec."""
    from gated.harness.rl import config as rl_config

    flat = {k: v for layer in _layers(spec) for k, v in rl_config.flatten(layer, spec["name"]).items()}
    return argparse.Namespace(envs=[str(e) for e in spec["envs"]], variants=[str(v) for v in spec["variants"]],
                              seeds=[int(s) for s in spec["seeds"]], jobs=jobs or spec.get("jobs", 0),
                              config=None, out=str(out), **flat)


def summarize(root: Path, threshold: float | None) -> list[dict]:
    """Per (setting, core, variant): the seeds' final validation and test main metric and the
    steps to threshold (None where it was not reached)."""
    from gated.harness.report import find_runs
    from gated.harness.report import summarize as run_summary

    groups: dict = {}
    for run in find_runs(root):
        info = run["info"]
        thr = info.get("threshold") if threshold is None else threshold
        s = run_summary(run, thr)
        key = info.get("main_metric", "loss")
        test = [r[f"test_{key}"] for r in run["records"] if f"test_{key}" in r]
        g = groups.setdefault((run["setting"], run["core"], run["variant"]), {
            "setting": run["setting"], "core": run["core"], "variant": run["variant"], "metric": key,
            "higher_is_better": info.get("higher_is_better", False), "threshold": thr,
            "baseline": info.get("baseline", {}).get(key), "seeds": [], "final": [], "test": [],
            "to_threshold": [], "steps": []})
        g["seeds"].append(run["seed"])
        g["final"].append(s["final"])
        g["test"].append(test[-1] if test else None)
        g["to_threshold"].append(s["to_threshold"])
        g["steps"].append(s["steps"])
    return list(groups.values())


def check_ordering(rows: list[dict], better: str, worse: str) -> list[str]:
    """Failures of "every seed of ``better`` beats every seed of ``worse``" per setting and core."""
    import gated

    better, worse = gated.get_variant(better).name, gated.get_variant(worse).name
    failures = []
    keyed = {(r["setting"], r["core"], r["variant"]): r for r in rows}
    for (setting, core, variant), b in keyed.items():
        if variant != better:
            continue
        w = keyed.get((setting, core, worse))
        if w is None:
            failures.append(f"{setting} {core}: no {worse!r} runs to compare with")
            continue
        hi = b["higher_is_better"]
        ok = min(b["final"]) > max(w["final"]) if hi else max(b["final"]) < min(w["final"])
        if not ok or any(math.isnan(v) for v in b["final"] + w["final"]):
            failures.append(f"{setting} {core}: {better} final {b['metric']} {b['final']} does not beat "
                            f"{worse} {w['final']}")
    if not any(v == better for _, _, v in keyed):
        failures.append(f"no {better!r} runs")
    return failures


def plan_spec(spec: dict, out_root: Path, jobs: int) -> tuple[int, list[dict]]:
    """Validate and plan every run of a spec: ``(jobs, runs)`` for :func:`gated.harness.compare.execute`."""
    out = out_root / spec["name"]
    try:
        if spec.get("kind") == "rl":
            from gated.harness.rl import compare as rl_compare

            args = rl_compare_args(spec, out, jobs)
            return args.jobs, rl_compare.plan(args)
        from gated.harness import compare

        args = compare_args(spec, out, jobs)
        return args.jobs, compare.plan(args)
    except ValueError as e:
        raise ValueError(f"experiment {spec['name']}: {e}") from None


def run_spec(spec: dict, out_root: Path, jobs: int, runs: list[dict], log=print, launcher=None,
             progress: bool = True) -> dict:
    """Run a planned spec (through ``launcher``, :mod:`gated.harness.launch`), then write its
    ``table.md``, ``curves.png`` and ``summary.json``."""
    from gated.harness.compare import execute
    from gated.harness.files import write_text
    from gated.harness.plots import learning_curves

    out = out_root / spec["name"]
    out.mkdir(parents=True, exist_ok=True)
    rl = spec.get("kind") == "rl"
    log(f"[{spec['name']}] {len(runs)} {'rl ' if rl else ''}runs -> {out}"
        + (f"  ({spec['claim']})" if spec.get("claim") else ""))
    skipped = execute(runs, jobs, log=log, launcher=launcher, progress=progress)
    result = {"name": spec["name"], "claim": spec.get("claim"), "check": None}
    if rl:
        from gated.harness.rl.compare import table as rl_table

        md = result["table"] = rl_table(out)
    else:
        from gated.harness.report import table

        md = table(out, spec.get("threshold"))
        rows = result["rows"] = summarize(out, spec.get("threshold"))
        if "check" in spec:
            failures = check_ordering(rows, spec["check"]["better"], spec["check"]["worse"])
            # runs that another process is still training cannot decide the check (passed: None)
            result["check"] = {**spec["check"], "passed": None if skipped else not failures, "failures": failures,
                               "skipped": [str(r["dir"]) for r in skipped]}
    write_text(out / "table.md", md)
    figures = learning_curves(out, out / "curves.png", "return" if rl else None)
    write_text(out / "summary.json", json.dumps(result, indent=1, default=str) + "\n")
    log(md)
    log(f"[{spec['name']}] table: {out / 'table.md'}; figure: {', '.join(map(str, figures or [out / 'curves.png']))}; "
        f"summary: {out / 'summary.json'}")
    if result["check"] is not None:
        c = result["check"]
        verdict = ("NOT DECIDED: runs in use by another process" if c["passed"] is None else "PASSED" if c["passed"]
                   else "FAILED\n  " + "\n  ".join(c["failures"]))
        log(f"[{spec['name']}] check {c['better']} beats {c['worse']} in every seed: {verdict}")
    return result


def add_arguments(parser) -> None:
    from gated.harness import launch

    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--quick", action="store_true", help="the quick suite: copy task, LSTM vs UR-LSTM, 2 seeds")
    which.add_argument("--full", action="store_true", help="every experiment in REPORT.md")
    which.add_argument("--only", nargs="+", metavar="NAME", help="named experiments (file stems in --experiments)")
    parser.add_argument("--experiments", metavar="DIR", help="a folder of experiment specs (default: the ones "
                        "shipped with gated, in gated/harness/experiments/)")
    parser.add_argument("--out", default="runs/reproduce", help="output root (default: runs/reproduce)")
    parser.add_argument("--jobs", type=int, default=0, help="runs at a time (default: the spec's, else CPU cores; "
                        "with --launcher slurm all of them)")
    parser.add_argument("--no-figures", action="store_true", help="skip the mechanism figures (full suite)")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                        help="a progress bar with an ETA over each experiment's runs (on a terminal)")
    launch.add_arguments(parser)


def main(args) -> int:
    from gated.harness import launch
    from gated.harness.files import write_text

    suite = "quick" if args.quick else "full" if args.full else None
    specs = find_specs(args.experiments or default_experiments_dir(), suite, args.only)
    if not specs:
        raise ValueError(f"no experiment specs of suite {suite!r} in {args.experiments or default_experiments_dir()}")
    out = Path(args.out)
    plans = [plan_spec(spec, out, args.jobs) for spec in specs]  # every run validated before the first starts
    launcher = launch.from_args(args, out)
    total = sum(len(runs) for _, runs in plans)
    print(f"reproduce: {len(specs)} experiment(s), {total} runs, in {out}", flush=True)
    results = [run_spec(spec, out, jobs, runs, launcher=launcher, progress=args.progress)
               for spec, (jobs, runs) in zip(specs, plans, strict=True)]
    if args.full and not args.no_figures:
        from gated.harness.mechanism import all_figures

        for path in all_figures(out, out / "figures"):
            print(f"figure: {path}")
    failed = [r["name"] for r in results if r["check"] is not None and r["check"]["passed"] is False]
    undecided = [r["name"] for r in results if r["check"] is not None and r["check"]["passed"] is None]
    write_text(out / "results.json", json.dumps(results, indent=1, default=str) + "\n")
    print(f"results: {out / 'results.json'}")
    if failed:
        print(f"gated reproduce: the ordering check FAILED for {', '.join(failed)}")
    if undecided:
        print(f"gated reproduce: the ordering check is not decided for {', '.join(undecided)}: some of their runs "
              "are in use by another process; run this again when they finish")
    if failed or undecided:
        return 1
    checked = [r["name"] for r in results if r["check"] is not None]
    if checked:
        print(f"gated reproduce: ordering checks passed ({', '.join(checked)})")
    return 0
