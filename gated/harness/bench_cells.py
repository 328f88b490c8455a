"""``gated bench --cells``: the single-step modules (``gated.LSTMCell``, ``GRUCell``, ``MGUCell``) as
an agent or a hand-written loop uses them, against torch.nn's cells (``torch.nn.GRUCell`` for
the MGU) the same way: an unroll of ``STEPS`` steps with the state carried, then (train) the
backward of the last ``h``; and the sequence modules stepped the same way with T = 1 calls
(``gated.GRU`` against ``torch.nn.GRU``). Time per step, gated's and torch.nn's calls in alternation."""

from __future__ import annotations

import torch
from torch import nn

import gated
from gated.harness.bench_common import _time_together

STEPS = 20
_TORCH = {"cell": {"lstm": nn.LSTMCell, "gru": nn.GRUCell, "mgu": nn.GRUCell},
          "layer": {"lstm": nn.LSTM, "gru": nn.GRU, "mgu": nn.GRU}}


def _unroll(module, x, train: bool, kind: str):
    def run():
        with torch.set_grad_enabled(train):
            state = None
            for _ in range(STEPS):
                if kind == "cell":
                    state = module(x, state)
                else:
                    _, state = module(x.unsqueeze(0), state)
            if train:
                (state[0] if isinstance(state, tuple) else state).sum().backward()

    return run


def main(args, dtype, shape, batches: list[int]) -> None:
    _, _, I, H = shape
    print(f"\n{STEPS}-step unrolls of the single-step cells and of T = 1 calls of the sequence modules, I = {I}, "
          f"H = {H}; us per step\n"
          "\n| core | kind | variant | B | torch train | gated train | train ratio | torch infer | gated infer | "
          "infer ratio |\n|---|---|---|---|---|---|---|---|---|---|")
    kw = {"device": args.device, "dtype": dtype}
    for core in args.cores:
        for variant in args.variants:
            if gated.get_variant(variant).name not in gated.CORES[core].variants:
                continue
            for B in batches:
                for kind in ("cell", "layer"):
                    x = torch.randn(B, I, **kw)
                    cls = getattr(gated, core.upper() + ("Cell" if kind == "cell" else ""))
                    ours = cls(I, H, variant=variant, **kw)
                    theirs = _TORCH[kind][core](I, H, **kw)
                    fns = {f"{who}_{mode}": _unroll(m, x, mode == "train", kind)
                           for who, m in (("torch", theirs), ("gated", ours)) for mode in ("train", "infer")}
                    t = {k: v / STEPS * 1e6 for k, v in _time_together(fns, args.repeats, args.device).items()}
                    print(f"| {core} | {kind} | {variant} | {B} | {t['torch_train']:.0f} | {t['gated_train']:.0f} | "
                          f"{t['gated_train'] / t['torch_train']:.2f} | {t['torch_infer']:.0f} | "
                          f"{t['gated_infer']:.0f} | {t['gated_infer'] / t['torch_infer']:.2f} |", flush=True)
