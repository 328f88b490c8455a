"""Channel-gated small CNN on Fashion-MNIST (feed-forward demonstration 2):
thin wrapper around ``gated demo channel-gating``.

The demonstration's code lives in ``gated/harness/demos/``; this script passes its arguments on,
so the commands recorded in ``docs/demos/channel_gating_fmnist.md`` still run (same flags, same
defaults, same numbers).
Outputs go to ``--out`` (default ``runs/demos/channel-gating``).

    .venv/bin/gated data fetch fashion-mnist      # once
    .venv/bin/python examples/channel_gating_fmnist.py          # = .venv/bin/gated demo channel-gating
"""

import sys

from gated.harness.cli import main

if __name__ == "__main__":
    sys.exit(main(["demo", "channel-gating", *sys.argv[1:]]))
