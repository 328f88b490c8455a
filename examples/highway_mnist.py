"""Deep highway MLP on MNIST (feed-forward demonstration 1):
thin wrapper around ``gated demo highway``.

The demonstration's code lives in ``gated/harness/demos/``; this script passes its arguments on,
so the commands recorded in ``docs/demos/highway_mnist.md`` still run (same flags, same
defaults, same numbers).
Outputs go to ``--out`` (default ``runs/demos/highway``).

    .venv/bin/gated data fetch mnist      # once
    .venv/bin/python examples/highway_mnist.py          # = .venv/bin/gated demo highway
"""

import sys

from gated.harness.cli import main

if __name__ == "__main__":
    sys.exit(main(["demo", "highway", *sys.argv[1:]]))
