"""The GEMM timings quoted in BENCHMARKS.md ("The matmul peak, measured fairly"), outside gated:

1. one recurrent step's product (B x H) @ (H x 4H) through MKL (``h @ W.t()``), oneDNN's linear with
   a plain weight, and oneDNN's linear with the weight prepacked for batch B (what the fused path
   uses); microseconds per call, the minimum of 10 loops of 64 calls;
2. the backward's weight-gradient product ``dA^T @ X`` (K = T*B) through MKL and through oneDNN's
   linear on transposed views; milliseconds, the minimum of 7;
3. the backward's pieces before and after commit 02d734e at 1000x32x10x256: ``dA @ W_ih`` on MKL
   and on oneDNN, and the separate ``dA^T @ x``, ``dA^T @ h_prev`` and ``dA.sum(0)`` against one
   ``dA^T @ [x, h_prev, 1]``.

    python scripts/gemm_microbench.py [--threads 2]
"""

import argparse
import time

import torch


def _best_ms(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times) * 1e3


def step_gemm(B: int, H: int) -> None:
    W, h = torch.randn(4 * H, H), torch.randn(B, H)
    packed = torch.ops.mkldnn._reorder_linear_weight(W, B)
    calls = {"MKL h @ W.t()": lambda: h @ W.t(),
             "oneDNN linear": lambda: torch.ops.mkldnn._linear_pointwise(h, W, None, "none", [], ""),
             "oneDNN linear, prepacked": lambda: torch.ops.mkldnn._linear_pointwise(h, packed, None, "none", [], "")}
    for name, fn in calls.items():
        us = min(_best_ms(lambda fn=fn: [fn() for _ in range(64)], 1) for _ in range(10)) / 64 * 1e3
        print(f"step ({B}x{H}) @ ({H}x{4 * H}), {name}: {us:.1f} us/call ({2 * B * H * 4 * H / us / 1e3:.0f} GFLOP/s)")


def weight_grad(T: int, B: int, I: int, H: int) -> None:
    dA, X = torch.randn(T * B, 4 * H), torch.randn(T * B, I + H + 1)
    mkl = _best_ms(lambda: dA.t() @ X, 7)
    dnn = _best_ms(lambda: torch.ops.mkldnn._linear_pointwise(dA.t(), X.t(), None, "none", [], ""), 7)
    print(f"dA^T @ X at {T}x{B}x{I}x{H}: MKL {mkl:.1f} ms, oneDNN on transposed views {dnn:.1f} ms")


def backward_pieces(T: int, B: int, I: int, H: int) -> None:
    G, TB = 4 * H, T * B
    dA, x, h, w_ih = torch.randn(TB, G), torch.randn(TB, I), torch.randn(TB, H), torch.randn(G, I)
    packed = torch.ops.mkldnn._reorder_linear_weight(w_ih.t().contiguous(), TB)
    xh1 = torch.cat([x, h, torch.ones(TB, 1)], 1)
    t = {"dA @ W_ih, MKL": _best_ms(lambda: dA @ w_ih, 5),
         "dA @ W_ih, oneDNN prepacked": _best_ms(
             lambda: torch.ops.mkldnn._linear_pointwise(dA, packed, None, "none", [], ""), 5),
         "dA^T @ x": _best_ms(lambda: dA.t() @ x, 5), "dA^T @ h_prev": _best_ms(lambda: dA.t() @ h, 5),
         "dA.sum(0)": _best_ms(lambda: dA.sum(0), 5), "dA^T @ [x, h_prev, 1]": _best_ms(lambda: dA.t() @ xh1, 5)}
    print(f"backward pieces at {T}x{B}x{I}x{H}: " + "; ".join(f"{k} {v:.1f} ms" for k, v in t.items()))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    torch.set_num_threads(p.parse_args().threads)
    step_gemm(8, 512)
    for shape in [(784, 64, 1, 128), (256, 64, 32, 256), (64, 8, 64, 512)]:
        weight_grad(*shape)
    backward_pieces(1000, 32, 10, 256)


if __name__ == "__main__":
    main()
