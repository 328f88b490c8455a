"""``gated train``: flags from the config dataclasses, ``--config FILE``, ``--resume RUN``."""

from __future__ import annotations

import inspect
import os
from pathlib import Path

HELP = "run one experiment (or continue one with --resume)"
EXIT_STATUS = """exit status: 0 done; 1 failed (missing or damaged data or checkpoint, disk error); 2 bad flags or
config; 3 the run directory is in use by another process; 130 interrupted (Ctrl-C)"""


def epilog() -> str:
    """The tasks and variants, for ``--help``."""
    import gated
    from gated.harness.model import CORE_MODULES
    from gated.harness.tasks import TASKS

    tasks = "\n".join(f"  {name:<9} {spec.summary}" for name, spec in TASKS.items())
    variants = "\n".join(f"  {v.name:<3} {v.long_name:<15} {v.summary}" for v in gated.VARIANTS.values())
    takes = {core: gated.CORES[core].variants for core in CORE_MODULES}
    cores = "; ".join(f"{core} takes {'all' if set(v) == set(gated.VARIANTS) else ' '.join(v)}"
                      for core, v in takes.items())
    return f"tasks (--task):\n{tasks}\n\nvariants (--variant; {cores}):\n{variants}\n\n{EXIT_STATUS}"


def add_arguments(parser) -> None:
    import argparse

    from gated.harness import config

    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = epilog()
    parser.add_argument("--config", metavar="FILE", help="JSON config (nested like config.json, or flat)")
    parser.add_argument("--resume", metavar="RUN", help="continue the run in this directory from its checkpoint "
                        "(or from step 0 if it stopped before its first one)")
    config.add_flags(parser)


def resolve(args, config=None) -> tuple:
    """The run's config and whether it resumes, from parsed arguments. ``config`` is the command's
    config module: ``gated.harness.config`` by default, ``gated.harness.rl.config`` for ``gated rl``."""
    from gated.harness.files import read_json

    if config is None:
        from gated.harness import config

    given = {k: v for k, v in vars(args).items() if k in config.FIELDS}
    file_values = config.load_file(args.config) if args.config else {}
    if not args.resume:
        return config.build(file_values, given), False
    run = Path(args.resume)
    if not (run / "config.json").is_file():
        raise ValueError(f"--resume {run}: no run there ({run / 'config.json'} is missing)")
    # as written: a run configured before variants were stored as labels keeps its "ur", which its
    # checkpoints' fingerprint was computed from (--variant UR on resume is no change)
    exact = {"canonical": False} if "canonical" in inspect.signature(config.from_dict).parameters else {}
    saved = config.from_dict(read_json(run / "config.json"), **exact)
    cfg = config.from_dict(config.SCHEMA.resumed(run, saved.flat(), file_values | given), **exact)
    return cfg, True


def main(args) -> int:
    from gated.harness.train import train

    cfg, resume = resolve(args)
    last = train(cfg, resume=resume)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"run {cfg.train.out}: step {last.get('step')}; metrics in {Path(cfg.train.out) / 'metrics.jsonl'}")
    return 0
