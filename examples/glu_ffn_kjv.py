"""GLU-variant Transformer FFNs on character-level KJV (feed-forward demonstration 3):
thin wrapper around ``gated demo glu-ffn``.

The demonstration's code lives in ``gated/harness/demos/``; this script passes its arguments on,
so the commands recorded in ``docs/demos/glu_ffn_kjv.md`` still run (same flags, same
defaults, same numbers).
Outputs go to ``--out`` (default ``runs/demos/glu-ffn``).

    .venv/bin/gated data fetch kjv      # once
    .venv/bin/python examples/glu_ffn_kjv.py          # = .venv/bin/gated demo glu-ffn
"""

import sys

from gated.harness.cli import main

if __name__ == "__main__":
    sys.exit(main(["demo", "glu-ffn", *sys.argv[1:]]))
