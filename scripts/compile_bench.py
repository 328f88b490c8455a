"""torch.compile on gated modules: compile time, recompiles and compiled/eager step time.

    python scripts/compile_bench.py [--backend inductor] [--shape 100x32x64x256] [--core lstm]

Compiles the loss (forward and ``out.pow(2).mean()``; AOTAutograd compiles its backward too) of a
2-layer UR module with ``fullgraph=True`` and times training steps (the loss and its backward), then reports: the first call's time (tracing and compiling), the first call at a
second and a third sequence length (with dynamic shapes the second marks T dynamic, the third
must not compile), and the minimum step time over repeats, compiled and eager, in the same run.
"""

from __future__ import annotations

import argparse
import os
import time

import torch

import gated


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backend", default="inductor")
    p.add_argument("--shape", default="100x32x64x256", help="TxBxIxH")
    p.add_argument("--core", default="lstm", choices=["lstm", "gru", "mgu"])
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    T, B, I, H = (int(v) for v in args.shape.split("x"))
    torch.manual_seed(0)
    m = getattr(gated, args.core.upper())(I, H, num_layers=2)

    def loss(x):
        return m(x)[0].pow(2).mean()

    compiled_loss = torch.compile(loss, backend=args.backend, fullgraph=True)

    def step(x, f=loss):
        out = f(x)
        out.backward()
        return out

    def compiled(x):
        return step(x, compiled_loss)

    from torch._dynamo.utils import counters

    print(f"# torch {torch.__version__}, {args.threads} threads, load average {os.getloadavg()[0]:.2f}; "
          f"2-layer UR-{args.core.upper()} {args.shape}, backend {args.backend}")
    for steps in (T, T + T // 2, 2 * T):
        x = torch.randn(steps, B, I)
        start = time.perf_counter()
        compiled(x)
        print(f"first call at T = {steps}: {time.perf_counter() - start:.2f} s "
              f"(frames compiled so far: {counters['stats']['unique_graphs']})")
    x = torch.randn(T, B, I)
    times = {}
    for name, fn in (("eager", step), ("compiled", compiled)):
        fn(x)
        best = float("inf")
        for _ in range(args.repeats):
            start = time.perf_counter()
            fn(x)
            best = min(best, time.perf_counter() - start)
        times[name] = best
    print(f"train step at T = {T}: eager {times['eager'] * 1e3:.1f} ms, compiled {times['compiled'] * 1e3:.1f} ms, "
          f"compiled / eager {times['compiled'] / times['eager']:.2f}")


if __name__ == "__main__":
    main()
