"""GLU-variant Transformer FFNs on character-level King James Bible:
``gated demo glu-ffn``.

A tiny pre-LayerNorm decoder-only Transformer (``--layers`` blocks, ``--d-model``, ``--heads``,
context ``--context``) whose FFN is ``FeedForward(d_model, ffn_hidden_size(act, d_ff), act,
bias=False)`` for each of Shazeer's (2020) eight variants; the 2/3 rule keeps the FFN parameter
count (nearly) equal. Every variant trains for the same steps on the same batches from the same
init seed; the table gives validation bits per character beside Shazeer's T5 numbers (Shazeer 2020, arXiv 2002.05202, Table 1).
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from gated.feedforward import FeedForward, ffn_hidden_size
from gated.harness.demos import common
from gated.harness.plots import save_figure

HELP = "GLU-variant FFNs in a tiny character-level Transformer on KJV"
DATASET = "kjv"
VARIANTS = ("relu", "gelu", "swish", "glu", "bilinear", "reglu", "geglu", "swiglu")
# Shazeer (2020) Table 1, held-out log-perplexity on C4 after 65,536 steps (Shazeer 2020, arXiv 2002.05202, Table 1)
SHAZEER_65K = {"relu": 1.997, "gelu": 1.983, "swish": 1.994, "glu": 1.982, "bilinear": 1.960,
               "geglu": 1.942, "swiglu": 1.944, "reglu": 1.953}
VAL_BATCH = 64  # validation windows per forward pass


def add_arguments(p) -> None:
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
    common.add_output_flags(p, "glu-ffn", "glu_ffn_kjv")


class Block(nn.Module):
    """Pre-LayerNorm block: causal self-attention then the FFN, each with a residual."""

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


class CharTransformer(common.CharTransformer):
    """Token + learned position embeddings, ``layers`` :class:`Block` s, LayerNorm, linear head."""

    def __init__(self, vocab: int, d: int, layers: int, heads: int, d_ff: int, context: int, act: str):
        super().__init__(vocab, d, layers, context, lambda i: Block(d, heads, d_ff, act))


def spearman_of_ranks(a: list[int], b: list[int]) -> float:
    """Spearman's rho of two rankings without ties: the Pearson correlation of the ranks."""
    return float(np.corrcoef(a, b)[0, 1]) if len(a) > 2 else float("nan")


def train_one(args, act, vocab, tr, starts, vx, bar) -> dict:
    """Train one FFN variant on the shared windows ``starts`` and score it on ``vx: (W, T+1)``."""
    T = args.context
    torch.manual_seed(args.seed)
    net = CharTransformer(vocab, args.d_model, args.layers, args.heads, args.d_ff, T, act)
    ffn_params = sum(q.numel() for b in net.blocks for q in b.ffn.parameters())
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=0.0)
    sched = common.warmup_cosine(opt, args.warmup, args.steps)
    t0 = time.time()
    losses = common.train_char_lm(net, opt, sched, tr, starts, T, bar, f"{act:8s}", args.log_every, t0=t0)
    bpc = common.char_bpc(net, vx, VAL_BATCH)
    bar.log(f"== {act}: val bpc {bpc:.4f}, {time.time() - t0:.1f}s")
    return {"variant": act, "hidden_size": ffn_hidden_size(act, args.d_ff), "ffn_parameters": ffn_params,
            "parameters": sum(q.numel() for q in net.parameters()),
            "final_train_bpc": float(np.mean(losses[-args.log_every:])), "val_bpc": bpc,
            "seconds": time.time() - t0, "losses": losses}


def run(args, bar) -> dict:
    """Every variant in ``--variants`` on the same windows; ranks against Shazeer's ordering."""
    itos, tr, va = common.char_corpus(DATASET, args.context)
    T = args.context
    g = torch.Generator().manual_seed(args.seed)
    starts = torch.randint(0, len(tr) - T - 1, (args.steps, args.batch_size), generator=g)  # shared batches
    vstarts = torch.randint(0, len(va) - T - 1, (args.val_windows,), generator=g)
    vx = common.windows(va, vstarts, T)  # (W, T+1)
    rows = [train_one(args, act, len(itos), tr, starts, vx, bar) for act in args.variants]
    ours = {r["variant"]: i + 1 for i, r in enumerate(sorted(rows, key=lambda r: r["val_bpc"]))}
    theirs = {a: i + 1 for i, a in enumerate(sorted(args.variants, key=lambda a: SHAZEER_65K[a]))}
    for r in rows:
        r |= {"rank": ours[r["variant"]], "shazeer_65k": SHAZEER_65K[r["variant"]], "shazeer_rank": theirs[r["variant"]]}
    rho = spearman_of_ranks([r["rank"] for r in rows], [r["shazeer_rank"] for r in rows])
    return {"rows": rows, "vocab": len(itos), "spearman": None if math.isnan(rho) else rho}


def total_steps(args) -> int:
    return len(args.variants) * args.steps


def table(results: dict) -> str:
    """The markdown report of a results dict (as saved in the JSON)."""
    a, rho = results["config"], results["spearman"]
    lines = [
        "# GLU-variant FFNs in a tiny character-level Transformer (King James Bible)",
        "",
        f"- command: `{results['command']}`",
        f"- {common.machine_line(results)}; total wall time {results['seconds']:.0f} s",
        (f"- budget: {a['steps']} steps of {a['batch_size']} random windows of {a['context']} characters (the same "
         f"windows and the same init seed {a['seed']} for every variant; one seed), AdamW lr {a['lr']} "
         f"(no weight decay), {a['warmup']}-step warm-up then cosine decay, gradient clipping 1.0."),
        (f"- model: pre-LayerNorm decoder, {a['layers']} blocks, d_model {a['d_model']}, {a['heads']} heads, "
         f"learned positions, context {a['context']}, vocabulary {results['vocab']} characters; FFN = "
         f"`FeedForward(d_model, ffn_hidden_size(act, {a['d_ff']}), act, bias=False)`."),
        (f"- validation: bits per character over {a['val_windows']} fixed random windows of the validation split "
         f"({a['val_windows'] * a['context']:,} predicted characters; each window starts with no context)."),
        ("- Shazeer column: held-out log-perplexity on C4 after 65,536 steps, T5-base (Shazeer 2020, arXiv 2002.05202, Table 1); a different "
         "task, scale and metric, compared only by rank. Spearman rank correlation of the two orderings: "
         f"{'n/a (fewer than 3 variants)' if rho is None else f'{rho:.2f}'}."),
        "",
        ("| FFN | hidden size | FFN params (all blocks) | model params | final train bpc | val bpc | rank here | "
         "Shazeer 65k | Shazeer rank | time (s) |"),
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results["rows"]:
        lines.append(f"| {r['variant']} | {r['hidden_size']} | {r['ffn_parameters']:,} | {r['parameters']:,} | "
                     f"{r['final_train_bpc']:.4f} | {r['val_bpc']:.4f} | {r['rank']} | {r['shazeer_65k']:.3f} | "
                     f"{r['shazeer_rank']} | {r['seconds']:.0f} |")
    lines += ["", f"Final train bpc: mean of the last {a['log_every']} steps' minibatch values.", "",
              f"![training curves and ordering]({a['name']}.png)", ""]
    return "\n".join(lines)


def figure(results: dict, path) -> None:
    """Left: training curves; right: this run's validation bpc against Shazeer's numbers."""
    a = results["config"]
    plt = common.pyplot()
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 4.2))
    k = max(1, min(25, a["steps"] // 10))
    for i, r in enumerate(results["rows"]):
        ax.plot(*common.moving_mean(r["losses"], k), label=r["variant"],
                ls="-" if r["variant"] in ("relu", "gelu", "swish") else "--", color=f"C{i}")
    ax.set_xlabel("step")
    ax.set_ylabel(f"training bits/char ({k}-step moving mean)")
    ax.set_ylim(top=min(ax.get_ylim()[1], 4.5))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    ax.set_title("training curves (dashed: gated FFNs)")
    for i, r in enumerate(results["rows"]):
        ax2.scatter(r["shazeer_65k"], r["val_bpc"], color=f"C{i}")
        ax2.annotate(r["variant"], (r["shazeer_65k"], r["val_bpc"]), textcoords="offset points", xytext=(4, 3),
                     fontsize=8)
    ax2.set_xlabel("Shazeer 2020, C4 log-perplexity at 65k steps (T5-base)")
    ax2.set_ylabel("this run: KJV validation bits/char")
    ax2.grid(alpha=0.3)
    ax2.set_title("ordering: this run vs Shazeer")
    fig.tight_layout()
    save_figure(fig, path)  # PNG (200 dpi), PDF, SVG
