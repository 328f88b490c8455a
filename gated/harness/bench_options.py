"""``gated bench --cell-options``: the LayerNorm cell with zoneout and recurrent dropout, in one run
beside what a user writes today and the plain anchor.

Rows per shape and core (LSTM, GRU), train step (forward + backward) and inference:

- ``gated``: ``gated.LSTM``/``GRU`` with ``variant="UR"``, ``layer_norm=True``, ``zoneout=0.1``,
  ``recurrent_dropout=0.25`` (training mode for the train step, eval for inference);
- ``loop``: the Python loop over a LayerNorm cell that PyTorch's own benchmark template writes
  (``benchmarks/fastrnns/custom_lstms.py``'s LayerNormLSTMCell design: ``LN(W_ih x) + LN(W_hh h)``,
  the LSTM's cell normalised), eager, and ``loop compiled`` the same loop under ``torch.compile``
  (compile time excluded: the first call is the warm-up);
- ``torch.nn``: plain ``torch.nn.LSTM``/``GRU`` (oneDNN), the floor.

Ratios are gated's time over each row's, measured in the same process. The loop is written here
(no zoneout or dropout in it: it is the cheaper baseline).
"""

from __future__ import annotations

import os
import platform

import torch
import torch.nn.functional as F
from torch import nn

import gated
from gated.harness import bench_common as _bench
from gated.harness.bench_common import ms as _ms
from gated.harness.bench_common import ratio as _ratio

SHAPES = ["100x64x256x256", "64x8x64x512"]  # the shapes
CORES = ("lstm", "gru")
OPTIONS = {"layer_norm": True, "zoneout": 0.1, "recurrent_dropout": 0.25}


class LoopLayerNorm(nn.Module):
    """A LayerNorm LSTM/GRU layer as a Python loop over a cell (the design users copy today)."""

    def __init__(self, core: str, I: int, H: int, **kw):
        super().__init__()
        G = (4 if core == "lstm" else 3) * H
        self.core = core
        self.w_ih = nn.Parameter(torch.randn(G, I, **kw) / I ** 0.5)
        self.w_hh = nn.Parameter(torch.randn(G, H, **kw) / H ** 0.5)
        self.ln_ih, self.ln_hh = nn.LayerNorm(G, **kw), nn.LayerNorm(G, **kw)
        self.ln_c = nn.LayerNorm(H, **kw) if core == "lstm" else None
        self.b = nn.Parameter(torch.zeros(G, **kw))

    def forward(self, x):
        T, B, _ = x.shape
        H = self.w_hh.shape[1]
        h = x.new_zeros(B, H)
        c = x.new_zeros(B, H)
        gi_all = self.ln_ih(F.linear(x, self.w_ih))
        outs = []
        for gi in gi_all.unbind(0):
            gh = self.ln_hh(F.linear(h, self.w_hh))
            if self.core == "lstm":
                i, f, g, o = (gi + gh + self.b).chunk(4, 1)
                c = self.ln_c(torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g))
                h = torch.sigmoid(o) * torch.tanh(c)
            else:
                a_r, a_z, a_n = (gi + self.b).chunk(3, 1)
                h_r, h_z, h_n = gh.chunk(3, 1)
                r, z = torch.sigmoid(a_r + h_r), torch.sigmoid(a_z + h_z)
                h = z * h + (1 - z) * torch.tanh(a_n + r * h_n)
            outs.append(h)
        return torch.stack(outs), h


class _Eval:
    """The module in eval mode for the call only (its train steps, timed in alternation, need training)."""

    def __init__(self, module):
        self.module = module

    def __call__(self, x):
        self.module.eval()
        try:
            return self.module(x)
        finally:
            self.module.train()


def measure(core: str, shape, args, dtype) -> dict:
    T, B, I, H = shape
    kw = {"device": args.device, "dtype": dtype}
    x = torch.randn(T, B, I, **kw)
    ours = getattr(gated, core.upper())(I, H, variant="UR", **OPTIONS, **kw)
    ours_train, _ = _bench._steps(ours.train(), x)
    _, ours_infer = _bench._steps(_Eval(ours), x)
    loop = LoopLayerNorm(core, I, H, **kw)
    plain = {"lstm": nn.LSTM, "gru": nn.GRU}[core](I, H, **kw)
    fns = {"gated_train": ours_train, "gated_infer": ours_infer}
    fns["loop_train"], fns["loop_infer"] = _bench._steps(loop, x)
    if not args.no_compile:
        fns["compiled_train"], fns["compiled_infer"] = _bench._steps(torch.compile(loop), x)
    fns["torch_train"], fns["torch_infer"] = _bench._steps(plain, x)
    row = {"shape": "x".join(map(str, shape)), "core": core}
    row.update(_bench._time_together(fns, args.repeats, args.device))  # every column in alternation
    return row


def main(args, dtype) -> int:
    if args.device != "cpu":
        raise SystemExit("gated bench: error: --cell-options times CPU paths; use --device cpu")
    shapes = [_bench._parse_shape(s) for s in (SHAPES if "shapes" in args.defaulted else args.shapes)]
    cores = [c for c in (CORES if "cores" in args.defaulted else args.cores)]
    bad = [c for c in cores if c not in CORES]
    if bad:
        raise SystemExit(f"gated bench: error: --cell-options times the lstm and gru cores, not {', '.join(bad)}")
    print(f"# gated bench (cell options {OPTIONS}, variant UR): gated {gated.__version__} (commit "
          f"{_bench._commit()}), torch {torch.__version__}, {platform.machine()} {os.cpu_count()} cores, "
          f"{args.threads} threads, {args.dtype}; load average {os.getloadavg()[0]:.2f}; torch CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}")
    print("\n| shape | core | mode | gated ms | eager loop ms | compiled loop ms | torch.nn ms | vs eager loop | "
          "vs compiled loop | vs torch.nn |\n" + "|---" * 10 + "|", flush=True)
    for shape in shapes:
        for core in cores:
            r = measure(core, shape, args, dtype)
            for mode in ("train", "infer"):
                g = r[f"gated_{mode}"]
                print(f"| {r['shape']} | {core} | {mode} | {_ms(g)} | {_ms(r[f'loop_{mode}'])} | "
                      f"{_ms(r.get(f'compiled_{mode}'))} | {_ms(r[f'torch_{mode}'])} | "
                      f"{_ratio(g, r[f'loop_{mode}'])} | {_ratio(g, r.get(f'compiled_{mode}'))} | "
                      f"{_ratio(g, r[f'torch_{mode}'])} |", flush=True)
    return 0
