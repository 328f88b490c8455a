"""Deep highway MLP on MNIST: ``gated demo highway``.

Flattened 784 pixels -> Linear to ``--width`` -> ``depth`` blocks -> Linear to 10. Blocks are either
plain (Linear+ReLU) or :class:`gated.feedforward.Highway` layers with variant "-" (gate bias -2) or
"UR" (UGI + refine transform gate). Every (depth, model) pair trains for the same fixed budget
(Adam, same seed, same batches); the table gives the final training loss (mean of the last
``--tail`` steps) and the accuracy on the MNIST test images, the figure the loss curves.
"""

from __future__ import annotations

import textwrap
import time

import numpy as np
import torch
from torch import nn

from gated.feedforward import Highway
from gated.harness.demos import common
from gated.harness.plots import BASELINE_STYLE, save_figure

HELP = "deep highway MLP vs plain MLP on MNIST"
DATASET = "mnist"
MODELS = ("plain", "highway-", "highway-UR")
INIT_IMAGES = 512  # T0 and carry0 average over the first this many images of the batch order


def add_arguments(p) -> None:
    p.add_argument("--depths", type=int, nargs="+", default=[10, 30, 50])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--tail", type=int, default=50, help="final loss = mean over the last TAIL steps")
    p.add_argument("--log-every", type=int, default=100)
    common.add_output_flags(p, "highway", "highway_mnist")


def build(model: str, depth: int, width: int) -> nn.Sequential:
    """``784 -> Linear(width) + ReLU -> depth x block -> Linear(10)``; ``model`` is one of :data:`MODELS`."""
    if model not in MODELS:
        raise ValueError(f"unknown model {model!r}; choose from {', '.join(MODELS)}")
    if model == "plain":
        blocks = [nn.Sequential(nn.Linear(width, width), nn.ReLU()) for _ in range(depth)]
    else:
        variant = model.split("-", 1)[1] or "-"
        blocks = [Highway(width, "relu", variant) for _ in range(depth)]
    return nn.Sequential(nn.Linear(784, width), nn.ReLU(), *blocks, nn.Linear(width, 10))


def mean_transform_gate(net: nn.Sequential, x: torch.Tensor) -> tuple[float, float] | None:
    """``(T0, carry0)`` of a network from :func:`build` on inputs ``x: (N, 784)`` (None if plain).

    T0 is the transform gate averaged over the batch, the units and all Highway layers; carry0 the
    mean over the batch and units of ``prod_layers (1 - T)``, the share of the first hidden layer
    that reaches the top of the stack through the carry path alone."""
    layers = [m for m in net if isinstance(m, Highway)]
    if not layers:
        return None
    with torch.no_grad():
        h = net[1](net[0](x))  # (N, width)
        ts, carry = [], torch.ones_like(h)
        for layer in layers:
            t = layer.transform_gate(h)  # (N, width)
            ts.append(t.mean().item())
            carry = carry * (1 - t)
            h = layer(h)
    return (float(np.mean(ts)), carry.mean().item())


def train_one(args, depth, model, seed, data, bar) -> dict:
    """Train one (depth, model, seed) and evaluate it; the batch order and init depend on ``seed`` only."""
    x_tr, y_tr, x_te, y_te = data
    order = common.batch_order(len(y_tr), args.steps, args.batch_size, seed)
    torch.manual_seed(seed)
    net = build(model, depth, args.width)
    t_init = mean_transform_gate(net, x_tr[order[:INIT_IMAGES]])
    opt = torch.optim.Adam(net.parameters(), lr=args.lr)
    losses, t0 = [], time.time()
    for step in range(args.steps):
        ids = order[step * args.batch_size:(step + 1) * args.batch_size]
        loss = nn.functional.cross_entropy(net(x_tr[ids]), y_tr[ids])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        bar.step()
        if (step + 1) % args.log_every == 0:
            bar.log(f"depth {depth:3d} {model:11s} seed {seed} step {step + 1:5d}/{args.steps} "
                    f"loss {np.mean(losses[-args.log_every:]):.4f} ({time.time() - t0:.1f}s)")
    net.eval()
    with torch.no_grad():
        acc = (net(x_te).argmax(-1) == y_te).float().mean().item()
    final = float(np.mean(losses[-args.tail:]))
    bar.log(f"== depth {depth} {model} seed {seed}: T0/carry0 {t_init}, final loss {final:.4f}, "
            f"test acc {acc:.4f}, {time.time() - t0:.1f}s")
    return {"depth": depth, "model": model, "seed": seed, "parameters": sum(q.numel() for q in net.parameters()),
            "t0": None if t_init is None else t_init[0], "carry0": None if t_init is None else t_init[1],
            "init_images": len(order[:INIT_IMAGES]), "final_loss": final, "test_accuracy": acc, "seconds": time.time() - t0, "losses": losses}


def run(args, bar) -> dict:
    """Every depth x model x seed; returns ``{"runs": [...], "test_images": N}``."""
    data = common.standardised_images(DATASET)
    runs = [train_one(args, depth, model, seed, data, bar)
            for depth in args.depths for model in args.models for seed in args.seeds]
    return {"runs": runs, "test_images": len(data[3])}


def total_steps(args) -> int:
    return len(args.depths) * len(args.models) * len(args.seeds) * args.steps


def table(results: dict) -> str:
    """The markdown report of a results dict (as saved in the JSON)."""
    c = results["config"]
    lines = [
        "# Deep highway MLP on MNIST",
        "",
        "Does a highway carry trainability at depth, and does the UR transform gate change it?",
        "",
        f"- command: `{results['command']}`",
        f"- {common.machine_line(results)}; total wall time {results['seconds']:.0f} s",
        (f"- budget: {c['steps']} steps of batch {c['batch_size']}, Adam lr {c['lr']}, seeds {c['seeds']} "
         "(per seed: the same init seed and the same batch order for every (depth, model))"),
        (f"- model: 784 -> Linear({c['width']}) + ReLU -> depth x block -> Linear(10). `plain` block: "
         "Linear+ReLU (torch default init); `highway-`: `Highway(variant='-')`, gate bias -2; "
         "`highway-UR`: `Highway(variant='UR')` (UGI bias + refine gate). Inputs standardised."),
        (f"- final train loss: mean of the last {c['tail']} steps' minibatch losses; test accuracy on all "
         f"{results['test_images']:,} MNIST test images; both as mean over seeds, with the per-seed values in "
         f"brackets. T0: the transform gate at initialisation averaged over the first "
         f"{results['runs'][0]['init_images']} training images of the batch order and all highway "
         "layers; carry0: the mean over those images and units of ∏_layers (1 − T), how much of the first hidden "
         "layer reaches the top of the highway stack through the carry path alone at initialisation (seed means)."),
        "",
        "| depth | model | parameters | T0 | carry0 | final train loss | test accuracy | time per run (s) |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for depth in c["depths"]:
        for model in c["models"]:
            rs = [r for r in results["runs"] if r["depth"] == depth and r["model"] == model]
            loss, acc = [r["final_loss"] for r in rs], [100 * r["test_accuracy"] for r in rs]
            t0 = "—" if rs[0]["t0"] is None else f"{np.mean([r['t0'] for r in rs]):.3f}"
            c0 = "—" if rs[0]["carry0"] is None else f"{np.mean([r['carry0'] for r in rs]):.2g}"
            lines.append(f"| {depth} | {model} | {rs[0]['parameters']:,} | {t0} | {c0} | {np.mean(loss):.4f} "
                         f"({', '.join(f'{v:.3f}' for v in loss)}) | {np.mean(acc):.2f}% "
                         f"({', '.join(f'{v:.1f}' for v in acc)}) | {np.mean([r['seconds'] for r in rs]):.1f} |")
    return "\n".join(lines + ["", f"![loss curves]({c['name']}.png)", ""])


def figure(results: dict, path) -> None:
    """Training-loss curves, one panel per depth, one line per (model, seed); the plain MLP's lines
    wider, so that where a highway's lie on them (both at chance) they still show at the edges."""
    c = results["config"]
    plt = common.pyplot()
    fig, axes = plt.subplots(1, len(c["depths"]), figsize=(5 * len(c["depths"]), 4), sharey=True, squeeze=False,
                             layout="constrained")
    colors = {"plain": "tab:gray", "highway-": "tab:blue", "highway-UR": "tab:red"}
    widths = {"plain": 2.8}  # drawn first, under the others
    k = max(1, min(20, c["steps"] // 10))
    for ax, depth in zip(axes[0], c["depths"], strict=True):
        for model in c["models"]:
            rs = [r for r in results["runs"] if r["depth"] == depth and r["model"] == model]
            for i, r in enumerate(rs):
                ax.plot(*common.moving_mean(r["losses"], k), label=model if i == 0 else None, color=colors[model],
                        lw=widths.get(model, 1.1), alpha=0.8)
        ax.axhline(np.log(10), **BASELINE_STYLE)  # chance: a light band behind the curves that reach it
        ax.set_title(f"depth {depth}")
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(f"training loss ({k}-step moving mean)")
    axes[0][0].legend()
    parts = (f"MNIST MLP, width {c['width']}: plain vs highway ('-' and 'UR')",
             f"one line per seed ({len(c['seeds'])} seeds); band: ln 10")
    # one line where it fits the figure (about 11 characters an inch at the suptitle's 12 pt), else a
    # line per part: one 5-inch panel is narrower than the single line
    fits = int(11 * fig.get_figwidth())
    title = ", ".join(parts)
    fig.suptitle(title if len(title) <= fits else "\n".join(textwrap.fill(p, fits) for p in parts))
    save_figure(fig, path)  # PNG (200 dpi), PDF, SVG
