"""GLU-variant Transformer FFNs on character-level King James Bible (issue 5, demonstration 3).

A tiny pre-LayerNorm decoder-only Transformer (`--layers` blocks, `--d-model`, `--heads`, context
`--context`) whose FFN is `gated.feedforward.FeedForward(d_model, ffn_hidden_size(act, d_ff), act,
bias=False)` for each of Shazeer's (2020) eight variants; the 2/3 rule keeps the FFN parameter count
(nearly) equal. Every variant trains for the same steps on the same batches from the same init seed;
the table gives validation bits per character beside Shazeer's T5 numbers (paper.md §12.5).

    .venv/bin/gated data fetch kjv      # once
    .venv/bin/python examples/glu_ffn_kjv.py
"""

from __future__ import annotations

import argparse
import math
import subprocess
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from gated.feedforward import FeedForward, ffn_hidden_size
from gated.harness.data import load, text_split

VARIANTS = ("relu", "gelu", "swish", "glu", "bilinear", "reglu", "geglu", "swiglu")
# Shazeer (2020) Table 1, held-out log-perplexity on C4 after 65,536 steps (paper.md §12.5)
SHAZEER_65K = {"relu": 1.997, "gelu": 1.983, "swish": 1.994, "glu": 1.982, "bilinear": 1.960,
               "geglu": 1.942, "swiglu": 1.944, "reglu": 1.953}


class Block(nn.Module):
    def __init__(self, d: int, heads: int, d_ff: int, act: str):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d, bias=False), nn.Linear(d, d, bias=False)
        self.ffn = FeedForward(d, ffn_hidden_size(act, d_ff), act, bias=False)

    def forward(self, x):  # (B, T, D)
        B, T, D = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(B, T, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, H, T, D/H)
        x = x + self.proj(a.transpose(1, 2).reshape(B, T, D))
        return x + self.ffn(self.ln2(x))


class CharTransformer(nn.Module):
    def __init__(self, vocab: int, d: int, layers: int, heads: int, d_ff: int, context: int, act: str):
        super().__init__()
        self.tok, self.pos = nn.Embedding(vocab, d), nn.Embedding(context, d)
        self.blocks = nn.ModuleList(Block(d, heads, d_ff, act) for _ in range(layers))
        self.ln, self.head = nn.LayerNorm(d), nn.Linear(d, vocab, bias=False)

    def forward(self, idx):  # (B, T) -> (B, T, V)
        x = self.tok(idx) + self.pos.weight[: idx.shape[1]]
        for b in self.blocks:
            x = b(x)
        return self.head(self.ln(x))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--d-ff", type=int, default=512, help="plain FFN width; gated variants get ffn_hidden_size")
    p.add_argument("--context", type=int, default=128)
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--warmup", type=int, default=40)
    p.add_argument("--val-windows", type=int, default=256, help="validation: this many fixed windows of CONTEXT chars")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--name", default="glu_ffn_kjv")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    arrays = load("kjv")
    train, val = text_split(arrays, "train"), text_split(arrays, "val")
    itos = sorted(set(train))
    stoi = {c: i for i, c in enumerate(itos)}
    enc = lambda s: torch.tensor([stoi.get(c, 0) for c in s], dtype=torch.long)
    tr, va = enc(train), enc(val)
    T = args.context
    g = torch.Generator().manual_seed(args.seed)
    starts = torch.randint(0, len(tr) - T - 1, (args.steps, args.batch_size), generator=g)  # shared batches
    vstarts = torch.randint(0, len(va) - T - 1, (args.val_windows,), generator=g)
    vx = torch.stack([va[s:s + T + 1] for s in vstarts.tolist()])

    rows, curves, t_all = [], {}, time.time()
    for act in args.variants:
        torch.manual_seed(args.seed)
        net = CharTransformer(len(itos), args.d_model, args.layers, args.heads, args.d_ff, T, act)
        ffn_params = sum(q.numel() for b in net.blocks for q in b.ffn.parameters())
        params = sum(q.numel() for q in net.parameters())
        opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=0.0)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / args.warmup) * 0.5 * (
            1 + math.cos(math.pi * min(s, args.steps) / args.steps)))
        losses, t0 = [], time.time()
        for step in range(args.steps):
            net.train()
            xy = torch.stack([tr[s:s + T + 1] for s in starts[step].tolist()])
            loss = F.cross_entropy(net(xy[:, :-1]).reshape(-1, len(itos)), xy[:, 1:].reshape(-1))
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            opt.step()
            sched.step()
            losses.append(loss.item() / math.log(2))
            if (step + 1) % args.log_every == 0:
                print(f"{act:8s} step {step + 1:5d}/{args.steps} train bpc {np.mean(losses[-args.log_every:]):.4f} "
                      f"({time.time() - t0:.1f}s)", flush=True)
        net.eval()
        with torch.no_grad():
            vl = sum(F.cross_entropy(net(vx[i:i + 64, :-1]).reshape(-1, len(itos)), vx[i:i + 64, 1:].reshape(-1),
                                     reduction="sum").item() for i in range(0, len(vx), 64))
        bpc = vl / (len(vx) * T) / math.log(2)
        secs = time.time() - t0
        rows.append((act, ffn_hidden_size(act, args.d_ff), ffn_params, params, float(np.mean(losses[-args.log_every:])),
                     bpc, secs))
        curves[act] = losses
        print(f"== {act}: val bpc {bpc:.4f}, {secs:.1f}s", flush=True)
    write_outputs(args, rows, curves, time.time() - t_all, len(itos))


def write_outputs(args, rows, curves, total, vocab) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    root = Path(__file__).resolve().parents[1]
    fig_path, md_path = root / "docs/figures" / f"{args.name}.png", root / "docs/demos" / f"{args.name}.md"
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 4.2))
    k = max(1, min(25, args.steps // 10))
    for i, act in enumerate(args.variants):
        l = np.asarray(curves[act])
        ax.plot(np.arange(k, len(l) + 1), np.convolve(l, np.ones(k) / k, mode="valid"), label=act,
                ls="-" if act in ("relu", "gelu", "swish") else "--", color=f"C{i}")
    ax.set_xlabel("step")
    ax.set_ylabel(f"training bits/char ({k}-step moving mean)")
    ax.set_ylim(top=min(ax.get_ylim()[1], 4.5))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    ax.set_title("training curves (dashed: gated FFNs)")
    for i, (act, *_rest) in enumerate(rows):
        ax2.scatter(SHAZEER_65K[act], _rest[4], color=f"C{i}")
        ax2.annotate(act, (SHAZEER_65K[act], _rest[4]), textcoords="offset points", xytext=(4, 3), fontsize=8)
    ax2.set_xlabel("Shazeer 2020, C4 log-perplexity at 65k steps (T5-base)")
    ax2.set_ylabel("this run: KJV validation bits/char")
    ax2.grid(alpha=0.3)
    ax2.set_title("ordering: this run vs Shazeer")
    fig.tight_layout()
    fig.savefig(fig_path, dpi=110)

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, check=False,
                            text=True).stdout.strip()
    cmd = "python examples/glu_ffn_kjv.py" + "".join(
        f" --{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}" for k, v in vars(args).items())
    ours = {r[0]: i + 1 for i, r in enumerate(sorted(rows, key=lambda r: r[5]))}
    theirs = {a: i + 1 for i, a in enumerate(sorted([r[0] for r in rows], key=lambda a: SHAZEER_65K[a]))}
    from scipy.stats import spearmanr
    rho = spearmanr([ours[r[0]] for r in rows], [theirs[r[0]] for r in rows]).statistic if len(rows) > 2 else float("nan")
    lines = [
        "# GLU-variant FFNs in a tiny character-level Transformer (King James Bible)",
        "",
        f"- command: `{cmd}`",
        f"- commit: `{commit}`; machine: 2 CPU cores, torch {torch.__version__}; total wall time {total:.0f} s",
        (f"- budget: {args.steps} steps of {args.batch_size} random windows of {args.context} characters (the same "
        f"windows and the same init seed {args.seed} for every variant; one seed), AdamW lr {args.lr} "
        f"(no weight decay), {args.warmup}-step warm-up then cosine decay, gradient clipping 1.0."),
        (f"- model: pre-LayerNorm decoder, {args.layers} blocks, d_model {args.d_model}, {args.heads} heads, "
        f"learned positions, context {args.context}, vocabulary {vocab} characters; FFN = "
        f"`FeedForward(d_model, ffn_hidden_size(act, {args.d_ff}), act, bias=False)`."),
        (f"- validation: bits per character over {args.val_windows} fixed random windows of the validation split "
        f"({args.val_windows * args.context:,} predicted characters; each window starts with no context)."),
        (f"- Shazeer column: held-out log-perplexity on C4 after 65,536 steps, T5-base (paper.md §12.5); a different "
        f"task, scale and metric, compared only by rank. Spearman rank correlation of the two orderings: {rho:.2f}."),
        "",
        ("| FFN | hidden size | FFN params (all blocks) | model params | final train bpc | val bpc | rank here | "
        "Shazeer 65k | Shazeer rank | time (s) |"),
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for act, h, fp, mp, trb, bpc, s in rows:
        lines.append(f"| {act} | {h} | {fp:,} | {mp:,} | {trb:.4f} | {bpc:.4f} | {ours[act]} | {SHAZEER_65K[act]:.3f} | "
                     f"{theirs[act]} | {s:.0f} |")
    lines += ["", f"Final train bpc: mean of the last {args.log_every} steps' minibatch values.", "",
              f"![training curves and ordering](../figures/{args.name}.png)", ""]
    md_path.write_text("\n".join(lines))
    print(f"wrote {md_path} and {fig_path}")


if __name__ == "__main__":
    main()
