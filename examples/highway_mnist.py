"""Deep highway MLP on MNIST (issue 5, demonstration 1).

Flattened 784 pixels -> Linear to `--width` -> `depth` blocks -> Linear to 10. Blocks are either
plain (Linear+ReLU) or `gated.feedforward.Highway` layers with variant "-" (gate bias -2) or "UR"
(UGI + refine transform gate). Every (depth, model) pair trains for the same fixed budget (Adam,
same seed, same batches); we report the final training loss (mean of the last `--tail` steps) and
the accuracy on the 10,000 MNIST test images, and plot the loss curves.

    .venv/bin/gated data fetch mnist      # once
    .venv/bin/python examples/highway_mnist.py
"""

from __future__ import annotations

import argparse
import subprocess
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from gated.feedforward import Highway
from gated.harness.data import load

MODELS = ("plain", "highway-", "highway-UR")


def build(model: str, depth: int, width: int) -> nn.Module:
    if model == "plain":
        blocks = [nn.Sequential(nn.Linear(width, width), nn.ReLU()) for _ in range(depth)]
    else:
        variant = model.split("-", 1)[1] or "-"
        blocks = [Highway(width, "relu", variant) for _ in range(depth)]
    return nn.Sequential(nn.Linear(784, width), nn.ReLU(), *blocks, nn.Linear(width, 10))


def mean_transform_gate(net: nn.Module, x: torch.Tensor):
    """Mean transform gate T over a batch and over all Highway layers at initialisation (None if plain),
    and the mean over the batch of prod_layers (1 - T), the share of the input carried straight through."""
    layers = [m for m in net if isinstance(m, Highway)]
    if not layers:
        return None
    with torch.no_grad():
        h = net[1](net[0](x))
        ts, carry = [], torch.ones_like(h)
        for layer in layers:
            t = layer.transform_gate(h)
            ts.append(t.mean().item())
            carry = carry * (1 - t)
            h = layer(h)
    return (float(np.mean(ts)), carry.mean().item())


def run(args, depth, model, seed, x_tr, y_tr, x_te, y_te, curves):
    # per seed: one stream of batch indices and one init seed, shared by every (depth, model)
    g = torch.Generator().manual_seed(seed)
    order = torch.cat([torch.randperm(len(y_tr), generator=g)
                       for _ in range(args.steps * args.batch_size // len(y_tr) + 1)])
    torch.manual_seed(seed)
    net = build(model, depth, args.width)
    t_init = mean_transform_gate(net, x_tr[order[:512]])
    opt = torch.optim.Adam(net.parameters(), lr=args.lr)
    losses, t0 = [], time.time()
    for step in range(args.steps):
        ids = order[step * args.batch_size:(step + 1) * args.batch_size]
        loss = nn.functional.cross_entropy(net(x_tr[ids]), y_tr[ids])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if (step + 1) % args.log_every == 0:
            print(f"depth {depth:3d} {model:11s} seed {seed} step {step + 1:5d}/{args.steps} "
                  f"loss {np.mean(losses[-args.log_every:]):.4f} ({time.time() - t0:.1f}s)", flush=True)
    net.eval()
    with torch.no_grad():
        acc = (net(x_te).argmax(-1) == y_te).float().mean().item()
    params = sum(q.numel() for q in net.parameters())
    secs = time.time() - t0
    final = float(np.mean(losses[-args.tail:]))
    curves[(depth, model, seed)] = losses
    print(f"== depth {depth} {model} seed {seed}: T0/carry0 {t_init}, final loss {final:.4f}, "
          f"test acc {acc:.4f}, {secs:.1f}s", flush=True)
    return (depth, model, seed, params, t_init, final, acc, secs)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--depths", type=int, nargs="+", default=[10, 30, 50])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--tail", type=int, default=50, help="final loss = mean over the last TAIL steps")
    p.add_argument("--log-every", type=int, default=100)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--name", default="highway_mnist")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    a = load("mnist")
    x_tr = torch.from_numpy(a["x_train"].reshape(len(a["x_train"]), -1).astype(np.float32) / 255)
    x_te = torch.from_numpy(a["x_test"].reshape(len(a["x_test"]), -1).astype(np.float32) / 255)
    mean, std = x_tr.mean(), x_tr.std()
    x_tr, x_te = (x_tr - mean) / std, (x_te - mean) / std
    y_tr = torch.from_numpy(a["y_train"].astype(np.int64))
    y_te = torch.from_numpy(a["y_test"].astype(np.int64))
    rows, curves, t_all = [], {}, time.time()
    for depth in args.depths:
        for model in args.models:
            for seed in args.seeds:
                rows.append(run(args, depth, model, seed, x_tr, y_tr, x_te, y_te, curves))
    total = time.time() - t_all
    write_outputs(args, rows, curves, total)


def write_outputs(args, rows, curves, total) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    root = Path(__file__).resolve().parents[1]
    fig_path, md_path = root / "docs/figures" / f"{args.name}.png", root / "docs/demos" / f"{args.name}.md"
    fig, axes = plt.subplots(1, len(args.depths), figsize=(5 * len(args.depths), 4), sharey=True, squeeze=False)
    colors = {"plain": "tab:gray", "highway-": "tab:blue", "highway-UR": "tab:red"}
    k = max(1, min(20, args.steps // 10))
    for ax, depth in zip(axes[0], args.depths):
        for model in args.models:
            for i, seed in enumerate(args.seeds):
                l = np.asarray(curves[(depth, model, seed)])
                smooth = np.convolve(l, np.ones(k) / k, mode="valid")
                ax.plot(np.arange(k, len(l) + 1), smooth, label=model if i == 0 else None, color=colors[model],
                        lw=1.1, alpha=0.8)
        ax.axhline(np.log(10), ls=":", color="k", lw=0.8)
        ax.set_title(f"depth {depth}")
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(f"training loss ({k}-step moving mean)")
    axes[0][0].legend()
    fig.suptitle(f"MNIST MLP, width {args.width}: plain vs highway ('-' and 'UR'), one line per seed "
                 f"({len(args.seeds)} seeds); dotted: ln 10")
    fig.tight_layout()
    fig.savefig(fig_path, dpi=110)

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, check=False,
                            text=True).stdout.strip()
    cmd = "python examples/highway_mnist.py" + "".join(
        f" --{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
        for k, v in vars(args).items())
    lines = [
        "# Deep highway MLP on MNIST",
        "",
        "Does a highway carry trainability at depth, and does the UR transform gate change it?",
        "",
        f"- command: `{cmd}`",
        f"- commit: `{commit}`; machine: 2 CPU cores, torch {torch.__version__}; total wall time {total:.0f} s",
        (f"- budget: {args.steps} steps of batch {args.batch_size}, Adam lr {args.lr}, seeds {args.seeds} "
        f"(per seed: the same init seed and the same batch order for every (depth, model))"),
        (f"- model: 784 -> Linear({args.width}) + ReLU -> depth x block -> Linear(10). `plain` block: "
        "Linear+ReLU (torch default init); `highway-`: `Highway(variant='-')`, gate bias -2; "
        "`highway-UR`: `Highway(variant='UR')` (UGI bias + refine gate). Inputs standardised."),
        (f"- final train loss: mean of the last {args.tail} steps' minibatch losses; test accuracy on all "
        "10,000 MNIST test images; both as mean over seeds, with the per-seed values in brackets. "
        "T0: the transform gate at initialisation averaged over 512 training images and all highway layers; "
        "carry0: the mean over those images and units of ∏_layers (1 − T), how much of the first hidden "
        "layer reaches the top of the highway stack through the carry path alone at initialisation (seed means)."),
        "",
        "| depth | model | parameters | T0 | carry0 | final train loss | test accuracy | time per run (s) |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for depth in args.depths:
        for model in args.models:
            rs = [r for r in rows if r[0] == depth and r[1] == model]
            loss, acc = [r[5] for r in rs], [100 * r[6] for r in rs]
            t0 = "—" if rs[0][4] is None else f"{np.mean([r[4][0] for r in rs]):.3f}"
            c0 = "—" if rs[0][4] is None else f"{np.mean([r[4][1] for r in rs]):.2g}"
            lines.append(f"| {depth} | {model} | {rs[0][3]:,} | {t0} | {c0} | {np.mean(loss):.4f} "
                         f"({', '.join(f'{v:.3f}' for v in loss)}) | {np.mean(acc):.2f}% "
                         f"({', '.join(f'{v:.1f}' for v in acc)}) | {np.mean([r[7] for r in rs]):.1f} |")
    lines += ["", f"![loss curves](../figures/{args.name}.png)", ""]
    md_path.write_text("\n".join(lines))
    print(f"wrote {md_path} and {fig_path}")


if __name__ == "__main__":
    main()
