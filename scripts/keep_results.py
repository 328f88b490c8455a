"""Keep an experiment's finished ``gated train`` runs without their checkpoints, so that its grid
can be completed elsewhere or later: each finished run's config.json, task.json, metrics.jsonl and
finished.json are copied to DEST (the run directories' layout kept). Copied back under ``gated reproduce``'s OUT,
they count as finished (gated/harness/compare.py's run_command) and join the experiment's table
and curves.

    python scripts/keep_results.py runs/reproduce/brown-lm docs/results/brown-lm/runs

A run is finished when it recorded its end (finished.json) or its checkpoint is at its last step
(runs from before finished.json existed: the file is written into the copy); unfinished runs are
listed and left out.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from gated.harness import checkpoint
from gated.harness.files import read_json
from gated.harness.report import find_runs

FILES = ("config.json", "task.json", "metrics.jsonl")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", type=Path, help="an experiment's output folder (or one run)")
    parser.add_argument("dest", type=Path, help="where the runs' results go")
    args = parser.parse_args(argv)
    kept = 0
    for run in find_runs(args.root):
        src = run["dir"]
        done = checkpoint.ended_at(src, int(read_json(src / "config.json")["train"]["steps"]))
        if done is None:
            print(f"unfinished, left out: {src}")
            continue
        dst = args.dest / src.relative_to(args.root)
        dst.mkdir(parents=True, exist_ok=True)
        for name in FILES:
            if (src / name).exists():
                shutil.copy2(src / name, dst / name)
        checkpoint.mark_finished(dst, done)
        kept += 1
    print(f"kept {kept} finished run(s) in {args.dest}")
    return 0 if kept else 1


if __name__ == "__main__":
    sys.exit(main())
