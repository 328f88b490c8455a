"""``gated rl``: memory reinforcement learning with a gated recurrent core.

    gated rl train --env MiniGrid-MemoryS7-v0 --core lstm --variant UR --steps 200000 --out runs/rl
    gated rl train --resume runs/rl --steps 400000
    gated rl compare --envs popgym-RepeatFirstEasy-v0 --variants - UR --seeds 0 1 2 --steps 100000 --out runs/rlcmp
    gated rl envs
"""

from __future__ import annotations

from pathlib import Path

HELP = "memory RL (recurrent PPO, gated core): train | compare | envs"


def add_arguments(parser) -> None:
    from gated.harness.rl import compare, config

    sub = parser.add_subparsers(dest="rl_command", metavar="COMMAND", required=True)
    train = sub.add_parser("train", help="train one agent (or continue one with --resume)",
                           description="Train a recurrent PPO agent whose core is a gated cell.")
    train.add_argument("--config", metavar="FILE", help="JSON config (nested like config.json, or flat)")
    train.add_argument("--resume", metavar="RUN", help="continue the run in this directory from its checkpoint")
    config.add_flags(train)
    cmp = sub.add_parser("compare", help="variants x seeds x environments; table.md and curves.png",
                         description=compare.__doc__.split("\n\n")[0])
    compare.add_arguments(cmp)
    sub.add_parser("envs", help="list the installed memory environments")


def resolve(args):
    """The run's config and whether it resumes, from parsed ``gated rl train`` arguments."""
    from gated.harness.rl import config
    from gated.harness.train_cli import resolve as resolve_run

    return resolve_run(args, config)


def main(args) -> int:
    if args.rl_command == "envs":
        from gated.harness.status import install_hint
        from gated.harness.rl.envs import memory_envs

        print("\n".join(memory_envs()) or f"none installed ({install_hint('rl')})")
        return 0
    if args.rl_command == "compare":
        from gated.harness.rl import compare

        return compare.main(args)
    from gated.harness.rl.train import train

    cfg, resume = resolve(args)
    last = train(cfg, resume=resume)
    print(f"run {cfg.train.out}: {last.get('step', 0):,} env steps; metrics in {Path(cfg.train.out) / 'metrics.jsonl'}")
    return 0
