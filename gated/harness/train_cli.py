"""``gated train``: flags from the config dataclasses, ``--config FILE``, ``--resume RUN``."""

from __future__ import annotations

import json
import os
from pathlib import Path

HELP = "run one experiment (or continue one with --resume)"


def add_arguments(parser) -> None:
    from gated.harness import config

    parser.add_argument("--config", metavar="FILE", help="JSON config (nested like config.json, or flat)")
    parser.add_argument("--resume", metavar="RUN", help="continue the run in this directory from its checkpoint")
    config.add_flags(parser)


def resolve(args, config=None) -> tuple:
    """The run's config and whether it resumes, from parsed arguments. ``config`` is the command's
    config module: ``gated.harness.config`` by default, ``gated.harness.rl.config`` for ``gated rl``."""
    if config is None:
        from gated.harness import config

    given = {k: v for k, v in vars(args).items() if k in config.FIELDS}
    file_values = config.load_file(args.config) if args.config else {}
    if not args.resume:
        return config.build(file_values, given), False
    run = Path(args.resume)
    if not (run / "config.json").is_file():
        raise ValueError(f"--resume {run}: no run there ({run / 'config.json'} is missing)")
    saved = config.from_dict(json.loads((run / "config.json").read_text()))
    cfg = config.from_dict(config.SCHEMA.resumed(run, saved.flat(), file_values | given))
    return cfg, True


def main(args) -> int:
    from gated.harness.data.fetch import atomic_write
    from gated.harness.train import train

    cfg, resume = resolve(args)
    if resume:
        atomic_write(Path(cfg.train.out) / "config.json", (json.dumps(cfg.to_dict(), indent=2) + "\n").encode())
    last = train(cfg, resume=resume)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"run {cfg.train.out}: step {last.get('step')}; metrics in {Path(cfg.train.out) / 'metrics.jsonl'}")
    return 0
