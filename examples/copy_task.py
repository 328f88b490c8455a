"""Copy task (paper §6.1): a standard LSTM against the UR-LSTM, a few hundred steps on CPU.

Input: 10 symbols from {1..8}, then ``delay`` blanks (0), then 10 cue tokens (9), one-hot.
Target: the 10 symbols, during the 10 cue steps. Loss: cross-entropy over those steps only, so
guessing uniformly scores log 8 = 2.079 (the baseline a model without memory stays at).

    python examples/copy_task.py --delay 50 --steps 400
"""

from __future__ import annotations

import argparse
import math
import time

import torch
from torch import nn

import gated


def copy_batch(batch: int, delay: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns one-hot inputs ``(T, B, 10)`` with ``T = delay + 20`` and targets ``(10, B)`` in 0..7."""
    symbols = torch.randint(1, 9, (10, batch), generator=generator)
    tokens = torch.cat([symbols, torch.zeros(delay, batch, dtype=torch.long),
                        torch.full((10, batch), 9, dtype=torch.long)])
    return nn.functional.one_hot(tokens, 10).float(), symbols - 1


class CopyModel(nn.Module):
    def __init__(self, variant: str, hidden_size: int):
        super().__init__()
        self.rnn = gated.LSTM(10, hidden_size, variant=variant)
        self.head = nn.Linear(hidden_size, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)  # (T, B, H)
        return self.head(out[-10:])  # (10, B, 8): logits during the cue


def label(variant: str) -> str:
    return "LSTM" if variant == "-" else f"{variant}-LSTM"


def train(variant: str, args) -> list[float]:
    torch.manual_seed(args.seed)
    model = CopyModel(variant, args.hidden_size)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    data = torch.Generator().manual_seed(args.seed)  # the same batches for every variant
    losses, start = [], time.perf_counter()
    for step in range(1, args.steps + 1):
        x, y = copy_batch(args.batch_size, args.delay, data)
        loss = nn.functional.cross_entropy(model(x).reshape(-1, 8), y.reshape(-1))
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        if step % args.log_every == 0 or step == args.steps:
            rate = step / (time.perf_counter() - start)
            print(f"  {label(variant):>8} step {step:4d}/{args.steps}  loss {loss.item():.4f}  ({rate:.1f} steps/s)",
                  flush=True)
    return losses


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", nargs="+", default=["-", "UR"], help="gated.LSTM variants to compare")
    p.add_argument("--delay", type=int, default=50, help="blanks between the symbols and the cue")
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--hidden-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--log-every", type=int, default=50)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"copy task: delay {args.delay} (T = {args.delay + 20}), {args.steps} steps, batch {args.batch_size}, "
          f"hidden {args.hidden_size}; baseline log 8 = {math.log(8):.4f}")
    results = {v: train(v, args) for v in args.variants}
    tail = max(1, args.steps // 10)
    print(f"\n| variant | final loss (mean of last {tail} steps) | best loss |\n|---|---|---|")
    for v, losses in results.items():
        print(f"| {label(v)} | {sum(losses[-tail:]) / tail:.4f} | {min(losses):.4f} |")


if __name__ == "__main__":
    main()
