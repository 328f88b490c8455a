"""Channel-gated small CNN on Fashion-MNIST: ``gated demo channel-gating``.

A small CNN whose three inner convolutions are :class:`gated.feedforward.ChannelGatedConv2d` (Hua et
al. 2019; base path = 1/4 of the input channels) trains briefly with the smooth gate
``sigma((norm(y_p) - Delta)/tau)`` plus ``threshold_loss`` pulling Delta toward ``--target``. It is
then evaluated in eval mode (hard gate, sparse conditional path) with the learned thresholds and
with every gate's Delta set to each value of ``--thresholds``. The FLOP reduction is the one the
layers *count* while running (``.last_cost``: multiply-accumulates actually performed), summed over
the test set; nothing is assumed. The trained network is saved as ``NAME.pt`` (a ``state_dict``).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from gated.feedforward import ChannelGatedConv2d
from gated.harness.demos import common
from gated.harness.plots import save_figure

HELP = "channel-gated CNN on Fashion-MNIST: accuracy vs counted FLOP reduction"
DATASET = "fashion-mnist"
DENSE = -1e9  # a threshold below every normalised partial sum: every gate open


def add_arguments(p) -> None:
    p.add_argument("--channels", type=int, default=16)
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--base-fraction", type=float, default=0.25)
    p.add_argument("--temperature", type=float, default=0.5)
    p.add_argument("--target", type=float, default=1.0, help="threshold_loss target for every Delta")
    p.add_argument("--lam", type=float, default=1e-2, help="weight of threshold_loss")
    p.add_argument("--thresholds", type=float, nargs="+", default=[-1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.0, 3.0],
                   help="constant Delta values to sweep (a dense, all-open evaluation is always added)")
    p.add_argument("--eval-batch", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-baseline", action="store_true", help="skip the ungated nn.Conv2d baseline")
    p.add_argument("--log-every", type=int, default=100)
    common.add_output_flags(p, "channel-gating", "channel_gating_fmnist")


class Net(nn.Module):
    """conv(1->c) 28x28, pool -> CG(c->2c) 14x14, pool -> CG(2c->4c) 7x7 -> CG(4c->4c) 7x7 -> GAP -> fc.

    ``ungated=True`` uses ``nn.Conv2d`` in place of the three gated convolutions (the baseline)."""

    def __init__(self, c: int, base_fraction: float, temperature: float, ungated: bool = False):
        super().__init__()
        kw = {"base_fraction": base_fraction, "temperature": temperature}

        def conv(i, o):
            return nn.Conv2d(i, o, 3, padding=1) if ungated else ChannelGatedConv2d(i, o, 3, padding=1, **kw)

        self.conv0 = nn.Conv2d(1, c, 3, padding=1)
        self.gated = nn.ModuleList([conv(c, 2 * c), conv(2 * c, 4 * c), conv(4 * c, 4 * c)])
        self.bns = nn.ModuleList(nn.BatchNorm2d(n) for n in (c, 2 * c, 4 * c, 4 * c))
        self.fc = nn.Linear(4 * c, 10)
        self.pool = nn.MaxPool2d(2)

    def forward(self, x):  # (B, 1, 28, 28)
        x = self.pool(torch.relu(self.bns[0](self.conv0(x))))  # (B, c, 14, 14)
        x = self.pool(torch.relu(self.bns[1](self.gated[0](x))))  # (B, 2c, 7, 7)
        x = torch.relu(self.bns[2](self.gated[1](x)))  # (B, 4c, 7, 7)
        x = torch.relu(self.bns[3](self.gated[2](x)))  # (B, 4c, 7, 7)
        return self.fc(x.mean(dim=(2, 3)))

    def ungated_macs(self, batch: int) -> int:
        """MACs of the ungated conv0 (28x28 outputs) and fc, from their shapes."""
        w = self.conv0.weight
        return batch * (w.shape[0] * 28 * 28 * w[0].numel() + self.fc.weight.numel())


def evaluate(net: Net, x: torch.Tensor, y: torch.Tensor, batch: int) -> dict:
    """Eval-mode accuracy and the MACs the gated layers counted, summed over ``x: (N, 1, 28, 28)``."""
    net.eval()
    correct = performed = dense = 0
    opened = []
    with torch.no_grad():
        for i in range(0, len(y), batch):
            xb, yb = x[i:i + batch], y[i:i + batch]
            correct += (net(xb).argmax(-1) == yb).sum().item()
            costs = [g.last_cost for g in net.gated]
            performed += sum(c.macs for c in costs)
            dense += sum(c.dense_macs for c in costs)
            opened.append([c.open_fraction for c in costs])
    other = net.ungated_macs(len(y))
    return {"acc": correct / len(y), "gated_reduction": dense / performed,
            "net_reduction": (dense + other) / (performed + other), "open": np.mean(opened, axis=0).tolist(),
            "mflops": 2 * (performed + other) / len(y) / 1e9 * 1e3, "dense_macs": dense, "performed_macs": performed,
            "ungated_macs": other}


def train(net: Net, args, order, data, bar, tag: str, gated: bool) -> list[float]:
    """``args.steps`` Adam steps on the shared batch ``order``; returns the cross-entropy per step."""
    x_tr, y_tr = data[0], data[1]
    opt = torch.optim.Adam(net.parameters(), lr=args.lr)
    t0, losses = time.time(), []
    for step in range(args.steps):
        net.train()
        ids = order[step * args.batch_size:(step + 1) * args.batch_size]
        ce = nn.functional.cross_entropy(net(x_tr[ids]), y_tr[ids])
        loss = ce + args.lam * sum(gc.threshold_loss(args.target) for gc in net.gated) if gated else ce
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(ce.item())
        bar.step()
        if (step + 1) % args.log_every == 0:
            extra = ""
            if gated:
                soft_open = [round(gc.last_cost.open_fraction, 3) for gc in net.gated]
                mean_delta = [round(gc.threshold.mean().item(), 3) for gc in net.gated]
                extra = f" soft-open {soft_open} mean Delta {mean_delta}"
            bar.log(f"{tag}step {step + 1:5d}/{args.steps} ce {np.mean(losses[-args.log_every:]):.4f}{extra} "
                    f"({time.time() - t0:.1f}s)")
    return losses


def run(args, bar) -> dict:
    """Baseline (unless ``--no-baseline``), the gated network, then the threshold sweep."""
    x_tr, y_tr, x_te, y_te = common.standardised_images(DATASET)
    data = (x_tr.view(-1, 1, 28, 28), y_tr)
    x_te = x_te.view(-1, 1, 28, 28)
    torch.manual_seed(args.seed)
    order = common.batch_order(len(y_tr), args.steps, args.batch_size, args.seed)
    results: dict = {"baseline": None, "test_images": len(y_te)}
    if not args.no_baseline:  # the same CNN with plain nn.Conv2d, same init seed, batches and budget
        torch.manual_seed(args.seed)
        base = Net(args.channels, args.base_fraction, args.temperature, ungated=True)
        losses = train(base, args, order, data, bar, "[ungated baseline] ", gated=False)
        base.eval()
        with torch.no_grad():
            acc = sum((base(x_te[i:i + args.eval_batch]).argmax(-1) == y_te[i:i + args.eval_batch]).sum().item()
                      for i in range(0, len(y_te), args.eval_batch)) / len(y_te)
        bar.log(f"[ungated baseline] test acc {acc:.4f}")
        results["baseline"] = {"acc": acc, "losses": losses}

    torch.manual_seed(args.seed)
    net = Net(args.channels, args.base_fraction, args.temperature)
    t0 = time.time()
    results["losses"] = train(net, args, order, data, bar, "", gated=True)
    results["train_seconds"] = time.time() - t0

    learned = [gc.threshold.detach().clone() for gc in net.gated]
    t1, rows = time.time(), []
    r = evaluate(net, x_te, y_te, args.eval_batch)
    rows.append({"label": "learned (mean " + ", ".join(f"{d.mean():.2f}" for d in learned) + ")",
                 "threshold": None, "mean_thresholds": [d.mean().item() for d in learned], **r})
    bar.log(f"eval learned Delta: acc {r['acc']:.4f} gated-layer reduction {r['gated_reduction']:.2f}x")
    for th in [DENSE] + args.thresholds:
        with torch.no_grad():
            for gc in net.gated:
                gc.threshold.fill_(th)
        r = evaluate(net, x_te, y_te, args.eval_batch)
        rows.append({"label": "all gates open (dense)" if th <= DENSE else f"{th:g}", "threshold": th, **r})
        bar.log(f"eval Delta={th:g}: acc {r['acc']:.4f} gated-layer reduction {r['gated_reduction']:.2f}x "
                f"open {[round(o, 3) for o in r['open']]}")
    with torch.no_grad():
        for gc, d in zip(net.gated, learned, strict=True):
            gc.threshold.copy_(d)
    results["eval_seconds"] = time.time() - t1
    results["rows"] = rows
    results["state_dict"] = net.state_dict()  # saved as NAME.pt by save_extra, not into the JSON
    return results


def save_extra(results: dict, out: Path, name: str) -> list[Path]:
    """Move the trained network out of ``results`` into ``out/NAME.pt``."""
    path = out / f"{name}.pt"
    torch.save(results.pop("state_dict"), path)
    return [path]


def total_steps(args) -> int:
    return args.steps * (1 if args.no_baseline else 2)


def table(results: dict) -> str:
    """The markdown report of a results dict (as saved in the JSON)."""
    a, rows = results["config"], results["rows"]
    c = a["channels"]
    lines = [
        "# Channel-gated CNN on Fashion-MNIST: accuracy vs counted FLOP reduction",
        "",
        f"- command: `{results['command']}`",
        (f"- {common.machine_line(results)}; training {results['train_seconds']:.0f} s, "
         f"evaluation sweep {results['eval_seconds']:.0f} s"),
        (f"- budget: {a['steps']} training steps of batch {a['batch_size']}, Adam lr {a['lr']}, one seed "
         f"({a['seed']}); smooth gate (τ={a['temperature']}) in training, plus "
         f"{a['lam']}·Σ threshold_loss(target={a['target']})."),
        (f"- model: Conv2d(1→{c}, 3×3) at 28×28 (ungated), pool; ChannelGatedConv2d({c}→{2 * c}) at 14×14, pool; "
         f"ChannelGatedConv2d({2 * c}→{4 * c}) and ({4 * c}→{4 * c}) at 7×7; each conv followed by BatchNorm+ReLU; "
         f"global average pool; Linear({4 * c}→10). Base path = {a['base_fraction']:g} of the input channels."),
        ("- evaluation: eval mode (hard gate `norm(y_p) > Δ`, conditional path computed only at open "
         f"activations) on all {results['test_images']:,} test images, first with the learned Δ, then with every "
         "Δ set to one value. FLOP reduction = dense MACs / performed MACs, summed over the test set from each "
         "layer's `.last_cost` (gated layers), and the same with the ungated conv0 and fc MACs (from their shapes) "
         "added to both sides (whole network). Open fraction = share of output activations whose gate was open, "
         "per gated layer."),
        "",
        ("| Δ | test accuracy | FLOP reduction, gated layers | FLOP reduction, whole network | MFLOPs / image "
         "| open fraction per gated layer |"),
        "|---|---:|---:|---:|---:|---|",
    ]
    if results["baseline"] is not None:
        lines.append(f"| ungated baseline (nn.Conv2d, same init seed, batches, steps) | "
                     f"{100 * results['baseline']['acc']:.2f}% | 1.00× | 1.00× | {rows[1]['mflops']:.2f} | — |")
    for r in rows:
        lines.append(f"| {r['label']} | {100 * r['acc']:.2f}% | {r['gated_reduction']:.2f}× | "
                     f"{r['net_reduction']:.2f}× | {r['mflops']:.2f} | {', '.join(f'{o:.2f}' for o in r['open'])} |")
    lines += ["", ("The `learned` row uses the thresholds as trained. The `all gates open` row (Δ = -1e9) is the "
                   "gated network's weights with every conditional path computed: it is not a baseline, since the "
                   "network was trained with its gates partly closed; the ungated baseline row is the reference "
                   "accuracy. Δ is in units of the partial sum normalised by the gate's BatchNorm running "
                   "statistics."), "", f"![accuracy vs FLOP reduction]({a['name']}.png)", ""]
    return "\n".join(lines)


def figure(results: dict, path) -> None:
    """Test accuracy against FLOP reduction over the threshold sweep, the learned Δ starred."""
    plt = common.pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    sweep = [r for r in results["rows"] if r["threshold"] is not None]
    ax.plot([r["gated_reduction"] for r in sweep], [100 * r["acc"] for r in sweep], "o-", label="gated layers' FLOPs")
    ax.plot([r["net_reduction"] for r in sweep], [100 * r["acc"] for r in sweep], "s--",
            label="whole network's FLOPs")
    for r in sweep:
        ax.annotate("dense" if r["threshold"] <= DENSE else f"Δ={r['label']}", (r["gated_reduction"], 100 * r["acc"]),
                    textcoords="offset points", xytext=(4, 4), fontsize=8)
    learned = results["rows"][0]
    ax.plot([learned["gated_reduction"]], [100 * learned["acc"]], "r*", ms=12, label="learned Δ")
    if results["baseline"] is not None:
        ax.axhline(100 * results["baseline"]["acc"], color="gray", ls=":", label="ungated nn.Conv2d baseline")
    ax.set_xlabel("FLOP reduction (dense / performed, counted by .last_cost)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Channel-gated CNN, Fashion-MNIST: accuracy vs FLOP reduction")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)  # PNG (200 dpi), PDF, SVG
