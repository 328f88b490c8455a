"""``gated demo highway|channel-gating|glu-ffn|gated-attention [flags]``: run one feed-forward demonstration and
write its table (``NAME.md``), figure (``NAME.png``) and raw results (``NAME.json``) into ``--out``.

    gated data fetch mnist && gated demo highway --out runs/demos/highway
    gated demo channel-gating --steps 300 --thresholds 0 1
    gated demo glu-ffn --variants relu swiglu
    gated demo gated-attention --quick
"""

from __future__ import annotations

import importlib
import time
from pathlib import Path

from gated.harness.demos import DEMOS

HELP = "run a feed-forward gating demonstration (" + ", ".join(DEMOS) + ")"
_POSITIVE = ("steps", "batch_size", "tail", "log_every", "threads", "width", "channels", "eval_batch", "layers",
             "d_model", "heads", "d_ff", "context", "warmup", "val_windows")
_UNIQUE = ("depths", "models", "seeds", "variants")


def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest="demo", metavar="DEMO", required=True)
    for name, path in DEMOS.items():
        module = importlib.import_module(path)
        p = sub.add_parser(name, help=module.HELP, description=module.__doc__.split("\n\n")[0])
        module.add_arguments(p)


def check(args) -> None:
    """Flags the demos cannot run with; raises ValueError naming the flag and what it needs."""
    for k in _POSITIVE:
        v = getattr(args, k, None)
        if v is not None and v < 1:
            raise ValueError(f"--{k.replace('_', '-')} must be at least 1, got {v}")
    for k in _UNIQUE:
        v = getattr(args, k, None)
        if v is not None and len(set(v)) != len(v):
            raise ValueError(f"--{k} lists a value twice: {' '.join(map(str, v))}")
    if getattr(args, "depths", None) is not None and min(args.depths) < 0:
        raise ValueError(f"--depths must be >= 0, got {min(args.depths)}")
    if getattr(args, "d_model", 1) % getattr(args, "heads", 1):
        raise ValueError(f"--d-model {args.d_model} must be a multiple of --heads {args.heads}")


def main(args) -> int:
    import torch

    from gated.harness.demos import common

    module = importlib.import_module(DEMOS[args.demo])
    check(args)
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    cfg = common.config(args)
    bar = common.Progress(module.total_steps(args), enabled=not args.no_progress)
    t0 = time.time()
    try:
        found = module.run(args, bar)
        results = {"demo": args.demo, "command": common.command(args.demo, cfg), "config": cfg,
                   **common.provenance(), "seconds": time.time() - t0, **found}
    finally:
        bar.close()
        torch.set_num_threads(threads)  # when called as a library, leave the caller's setting
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    extra = module.save_extra(results, out, args.name) if hasattr(module, "save_extra") else []
    paths = common.write_outputs(out, args.name, results, module.table, module.figure)
    print(f"gated demo {args.demo}: wrote " + ", ".join(str(p) for p in (*paths, *extra)))
    return 0
