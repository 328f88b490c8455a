"""Channel-gated small CNN on Fashion-MNIST (issue 5, demonstration 2).

A small CNN whose three inner convolutions are `gated.feedforward.ChannelGatedConv2d` (Hua et al.
2019; base path = 1/4 of the input channels) trains briefly with the smooth gate
sigma((norm(y_p) - Delta)/tau) plus `threshold_loss` pulling Delta toward `--target`. It is then
evaluated in eval mode (hard gate, sparse conditional path) with the learned thresholds and with
every gate's Delta set to each value of `--thresholds`. The FLOP reduction is the one the layers
*count* while running (`.last_cost`: multiply-accumulates actually performed), summed over the
test set; nothing is assumed.

    .venv/bin/gated data fetch fashion-mnist      # once
    .venv/bin/python examples/channel_gating_fmnist.py
"""

from __future__ import annotations

import argparse
import subprocess
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from gated.feedforward import ChannelGatedConv2d
from gated.harness.data import load


class Net(nn.Module):
    """conv(1->c) 28x28, pool -> CG(c->2c) 14x14, pool -> CG(2c->4c) 7x7 -> CG(4c->4c) 7x7 -> GAP -> fc."""

    def __init__(self, c: int, base_fraction: float, temperature: float, ungated: bool = False):
        super().__init__()
        kw = {"base_fraction": base_fraction, "temperature": temperature}
        conv = (lambda i, o: nn.Conv2d(i, o, 3, padding=1)) if ungated else \
            (lambda i, o: ChannelGatedConv2d(i, o, 3, padding=1, **kw))
        self.conv0 = nn.Conv2d(1, c, 3, padding=1)
        self.gated = nn.ModuleList([conv(c, 2 * c), conv(2 * c, 4 * c), conv(4 * c, 4 * c)])
        self.bns = nn.ModuleList(nn.BatchNorm2d(n) for n in (c, 2 * c, 4 * c, 4 * c))
        self.fc = nn.Linear(4 * c, 10)
        self.pool = nn.MaxPool2d(2)

    def forward(self, x):
        x = self.pool(torch.relu(self.bns[0](self.conv0(x))))  # (B, c, 14, 14)
        x = self.pool(torch.relu(self.bns[1](self.gated[0](x))))  # (B, 2c, 7, 7)
        x = torch.relu(self.bns[2](self.gated[1](x)))
        x = torch.relu(self.bns[3](self.gated[2](x)))
        return self.fc(x.mean(dim=(2, 3)))

    def ungated_macs(self, batch: int) -> int:
        """MACs of the ungated conv0 (28x28 outputs) and fc, from their shapes."""
        w = self.conv0.weight
        return batch * (w.shape[0] * 28 * 28 * w[0].numel() + self.fc.weight.numel())


def evaluate(net: Net, x: torch.Tensor, y: torch.Tensor, batch: int) -> dict:
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
            "net_reduction": (dense + other) / (performed + other),
            "open": np.mean(opened, axis=0).tolist(), "gflops": 2 * (performed + other) / len(y) / 1e9 * 1e3}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
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
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--name", default="channel_gating_fmnist")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    a = load("fashion-mnist")
    def prep(v):
        return torch.from_numpy(v.reshape(len(v), 1, 28, 28).astype(np.float32) / 255)
    x_tr, x_te = prep(a["x_train"]), prep(a["x_test"])
    mean, std = x_tr.mean(), x_tr.std()
    x_tr, x_te = (x_tr - mean) / std, (x_te - mean) / std
    y_tr = torch.from_numpy(a["y_train"].astype(np.int64))
    y_te = torch.from_numpy(a["y_test"].astype(np.int64))

    g = torch.Generator().manual_seed(args.seed)
    order = torch.cat([torch.randperm(len(y_tr), generator=g)
                       for _ in range(args.steps * args.batch_size // len(y_tr) + 1)])
    baseline_acc = None
    if not args.no_baseline:  # the same CNN with plain nn.Conv2d, same init seed, batches and budget
        torch.manual_seed(args.seed)
        base = Net(args.channels, args.base_fraction, args.temperature, ungated=True)
        opt = torch.optim.Adam(base.parameters(), lr=args.lr)
        t0 = time.time()
        for step in range(args.steps):
            base.train()
            ids = order[step * args.batch_size:(step + 1) * args.batch_size]
            ce = nn.functional.cross_entropy(base(x_tr[ids]), y_tr[ids])
            opt.zero_grad()
            ce.backward()
            opt.step()
            if (step + 1) % args.log_every == 0:
                print(f"[ungated baseline] step {step + 1:5d}/{args.steps} ce {ce.item():.4f} "
                      f"({time.time() - t0:.1f}s)", flush=True)
        base.eval()
        with torch.no_grad():
            baseline_acc = sum((base(x_te[i:i + args.eval_batch]).argmax(-1) == y_te[i:i + args.eval_batch]).sum().item()
                               for i in range(0, len(y_te), args.eval_batch)) / len(y_te)
        print(f"[ungated baseline] test acc {baseline_acc:.4f}", flush=True)

    torch.manual_seed(args.seed)
    net = Net(args.channels, args.base_fraction, args.temperature)
    opt = torch.optim.Adam(net.parameters(), lr=args.lr)
    t0, losses = time.time(), []
    for step in range(args.steps):
        net.train()
        ids = order[step * args.batch_size:(step + 1) * args.batch_size]
        ce = nn.functional.cross_entropy(net(x_tr[ids]), y_tr[ids])
        loss = ce + args.lam * sum(gc.threshold_loss(args.target) for gc in net.gated)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(ce.item())
        if (step + 1) % args.log_every == 0:
            soft_open = [round(gc.last_cost.open_fraction, 3) for gc in net.gated]
            mean_delta = [round(gc.threshold.mean().item(), 3) for gc in net.gated]
            print(f"step {step + 1:5d}/{args.steps} ce {np.mean(losses[-args.log_every:]):.4f} "
                  f"soft-open {soft_open} mean Delta {mean_delta} ({time.time() - t0:.1f}s)", flush=True)
    train_s = time.time() - t0

    learned = [gc.threshold.detach().clone() for gc in net.gated]
    rows = []
    t1 = time.time()
    r = evaluate(net, x_te, y_te, args.eval_batch)
    rows.append(("learned (mean " + ", ".join(f"{d.mean():.2f}" for d in learned) + ")", None, r))
    print(f"eval learned Delta: acc {r['acc']:.4f} gated-layer reduction {r['gated_reduction']:.2f}x", flush=True)
    for th in [-1e9] + args.thresholds:
        with torch.no_grad():
            for gc in net.gated:
                gc.threshold.fill_(th)
        r = evaluate(net, x_te, y_te, args.eval_batch)
        rows.append(("all gates open (dense)" if th <= -1e8 else f"{th:g}", th, r))
        print(f"eval Delta={th:g}: acc {r['acc']:.4f} gated-layer reduction {r['gated_reduction']:.2f}x "
              f"open {[round(o, 3) for o in r['open']]}", flush=True)
    with torch.no_grad():
        for gc, d in zip(net.gated, learned):
            gc.threshold.copy_(d)
    eval_s = time.time() - t1
    write_outputs(args, rows, baseline_acc, train_s, eval_s)


def write_outputs(args, rows, baseline_acc, train_s, eval_s) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    root = Path(__file__).resolve().parents[1]
    fig_path, md_path = root / "docs/figures" / f"{args.name}.png", root / "docs/demos" / f"{args.name}.md"
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    sweep = [(r["gated_reduction"], r["net_reduction"], r["acc"], label) for label, th, r in rows if th is not None]
    ax.plot([s[0] for s in sweep], [100 * s[2] for s in sweep], "o-", label="gated layers' FLOPs")
    ax.plot([s[1] for s in sweep], [100 * s[2] for s in sweep], "s--", label="whole network's FLOPs")
    for gr, nr, acc, label in sweep:
        ax.annotate("dense" if label.startswith("all") else f"Δ={label}", (gr, 100 * acc),
                    textcoords="offset points", xytext=(4, 4), fontsize=8)
    lr = rows[0][2]
    ax.plot([lr["gated_reduction"]], [100 * lr["acc"]], "r*", ms=12, label="learned Δ")
    if baseline_acc is not None:
        ax.axhline(100 * baseline_acc, color="gray", ls=":", label="ungated nn.Conv2d baseline")
    ax.set_xlabel("FLOP reduction (dense / performed, counted by .last_cost)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Channel-gated CNN, Fashion-MNIST: accuracy vs FLOP reduction")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(fig_path, dpi=110)

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, check=False,
                            text=True).stdout.strip()
    cmd = "python examples/channel_gating_fmnist.py" + "".join(
        f" --{k.replace('_', '-')} {' '.join(f'{x:g}' if isinstance(x, float) else str(x) for x in v) if isinstance(v, list) else v}"
        for k, v in vars(args).items() if not isinstance(v, bool))
    cmd += " --no-baseline" if args.no_baseline else ""
    c = args.channels
    lines = [
        "# Channel-gated CNN on Fashion-MNIST: accuracy vs counted FLOP reduction",
        "",
        f"- command: `{cmd}`",
        (f"- commit: `{commit}`; machine: 2 CPU cores, torch {torch.__version__}; training {train_s:.0f} s, "
        f"evaluation sweep {eval_s:.0f} s"),
        (f"- budget: {args.steps} training steps of batch {args.batch_size}, Adam lr {args.lr}, one seed ({args.seed}); "
        f"smooth gate (τ={args.temperature}) in training, plus {args.lam}·Σ threshold_loss(target={args.target})."),
        (f"- model: Conv2d(1→{c}, 3×3) at 28×28 (ungated), pool; ChannelGatedConv2d({c}→{2 * c}) at 14×14, pool; "
        f"ChannelGatedConv2d({2 * c}→{4 * c}) and ({4 * c}→{4 * c}) at 7×7; each conv followed by BatchNorm+ReLU; "
        f"global average pool; Linear({4 * c}→10). Base path = {args.base_fraction:g} of the input channels."),
        ("- evaluation: eval mode (hard gate `norm(y_p) > Δ`, conditional path computed only at open "
        "activations) on all 10,000 test images, first with the learned Δ, then with every Δ set to one value. "
        "FLOP reduction = dense MACs / performed MACs, summed over the test set from each layer's `.last_cost` "
        "(gated layers), and the same with the ungated conv0 and fc MACs (from their shapes) added to both sides "
        "(whole network). Open fraction = share of output activations whose gate was open, per gated layer."),
        "",
        "| Δ | test accuracy | FLOP reduction, gated layers | FLOP reduction, whole network | MFLOPs / image | open fraction per gated layer |",
        "|---|---:|---:|---:|---:|---|",
    ]
    if baseline_acc is not None:
        lines.append(f"| ungated baseline (nn.Conv2d, same init seed, batches, steps) | {100 * baseline_acc:.2f}% | 1.00× | "
                     f"1.00× | {rows[1][2]['gflops']:.2f} | — |")
    for label, th, r in rows:
        lines.append(f"| {label} | {100 * r['acc']:.2f}% | {r['gated_reduction']:.2f}× | {r['net_reduction']:.2f}× | "
                     f"{r['gflops']:.2f} | {', '.join(f'{o:.2f}' for o in r['open'])} |")
    lines += ["", ("The `learned` row uses the thresholds as trained. The `all gates open` row (Δ = -1e9) is the gated "
              "network's weights with every conditional path computed: it is not a baseline, since the network was "
              "trained with its gates partly closed; the ungated baseline row is the reference accuracy. "
              "Δ is in units of the partial sum normalised by the gate's BatchNorm running statistics."), "",
              f"![accuracy vs FLOP reduction](../figures/{args.name}.png)", ""]
    md_path.write_text("\n".join(lines))
    print(f"wrote {md_path} and {fig_path}")


if __name__ == "__main__":
    main()
