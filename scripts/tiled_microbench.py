"""The tiled-kernel timings quoted in BENCHMARKS.md ("What changed since 02d734e"):

1. the fused LSTM forward (inference, UR) per time step with each recurrent GEMM path pinned
   (oneDNN per step, the tiled kernel), against torch.nn.LSTM; microseconds per step, the minimum
   of 20 calls, at 1 and 2 threads;
2. the backward's weight-gradient product ``dA^T @ X`` plus the sums column, on the tiled kernel
   (``tiled_mm``) and on MKL (``dA.t() @ X`` and ``dA.sum(0)``); milliseconds, the minimum of 5;
3. the cost of a fresh buffer above glibc's mmap threshold against a reused one (what
   gated/csrc/pool.h avoids): filling 67 MB.

    python scripts/tiled_microbench.py [--shape 64x8x64x512]
"""

import argparse

import torch
from gemm_microbench import _best_ms  # this folder is on sys.path when run as a script

from gated.backends import _build

GEMM = {"oneDNN per step": 1, "tiled": 4}


def forward_per_step(ops, T: int, B: int, I: int, H: int) -> None:
    G = 4 * H
    x, w_ih, w_hh = torch.randn(T, B, I), torch.randn(G, I) * 0.05, torch.randn(G, H) * 0.05
    b, h0, c0 = torch.zeros(G), torch.zeros(B, H), torch.zeros(B, H)
    lstm = torch.nn.LSTM(I, H)
    for threads in (1, 2):
        torch.set_num_threads(threads)
        for name, kind in GEMM.items():
            if kind not in ops.gemm_kinds():
                continue
            ops.set_gemm(kind)
            ms = _best_ms(lambda: ops.recurrence_forward(x, w_ih, w_hh, b, None, None, h0, c0, None, 0, True, False), 20)
            print(f"{threads} thread(s), fused UR-LSTM forward, {name}: {ms * 1e3 / T:.1f} us/step")
        ops.set_gemm(0)
        with torch.no_grad():
            ms = _best_ms(lambda: lstm(x), 20)
        print(f"{threads} thread(s), torch.nn.LSTM forward: {ms * 1e3 / T:.1f} us/step")
    torch.set_num_threads(2)


def weight_grads(ops) -> None:
    for G, TB, N in [(2048, 512, 576), (1024, 16384, 288), (1024, 32000, 266), (512, 50176, 129)]:
        dA, X = torch.randn(TB, G), torch.randn(TB, N)
        tiled = _best_ms(lambda dA=dA, X=X: ops.tiled_mm(dA, X, True, True), 5)
        mkl = _best_ms(lambda dA=dA, X=X: (dA.t() @ X, dA.sum(0)), 5)
        print(f"dA^T @ X + sums, G={G} T*B={TB} N={N}: tiled {tiled:.1f} ms, MKL {mkl:.1f} ms")


def fresh_vs_reused() -> None:
    n = 256 * 64 * 1024  # the (T, B, G) activations of 256x64x32x256: 67 MB
    buf = torch.empty(n)
    print(f"fill 67 MB: fresh {_best_ms(lambda: torch.empty(n).fill_(1), 20):.1f} ms, "
          f"reused {_best_ms(lambda: buf.fill_(1), 20):.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="64x8x64x512", help="TxBxIxH of the per-step timing")
    args = parser.parse_args()
    ops = _build.load()
    if ops is None:
        raise SystemExit(f"the fused extension is unavailable: {_build._state.get('error')}")
    torch.set_num_threads(2)
    forward_per_step(ops, *(int(v) for v in args.shape.split("x")))
    weight_grads(ops)
    fresh_vs_reused()


if __name__ == "__main__":
    main()
