"""Where a UR-MinGRU train step spends its time, at two sequence lengths (BENCHMARKS.md, "Scan cores").

    python scripts/scan_profile.py [--t 256 4096] [--threads 1]

Two warm-up steps, then three profiled train steps (forward + backward of ``out.sum()``) at
B = 32, I = H = 256, float32; prints torch.profiler's table by self CPU time for each T.
"""

from __future__ import annotations

import argparse

import torch

import gated


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--t", type=int, nargs="+", default=[256, 4096])
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    for T in args.t:
        m = gated.MinGRU(256, 256, variant="UR")
        x = torch.randn(T, 32, 256)
        for _ in range(2):
            m(x)[0].sum().backward()
        with torch.profiler.profile() as prof:
            for _ in range(3):
                m(x)[0].sum().backward()
        print(f"T = {T}")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=8))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
