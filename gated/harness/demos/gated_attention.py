"""Gated attention (Qiu et al. 2025) in a small character-level Transformer on King James Bible:
``gated demo gated-attention``.

A pre-LayerNorm causal decoder (``--layers`` blocks, ``--d-model``, ``--heads``, context
``--context``, learned positions, a plain ``--ffn`` feed-forward) whose self-attention is
``GatedMultiheadAttention(d_model, heads, bias=False, batch_first=True, gate=..., variant=...)``,
one arm per ``--arms`` entry: ``none`` (``gate=None``: torch's ``MultiheadAttention``),
``elementwise`` and ``headwise`` (Qiu et al.'s G1 gate, no bias), ``elementwise-U`` (UGI gate bias)
and ``elementwise-UR`` (UGI bias and refine gate). For each seed in ``--seeds`` every arm trains on
the same batches from the same initial weights (the gate's own parameters aside). Each run reports
validation bits per character (final, and a curve), the attention sink (the mean attention weight on
position 0 of queries at positions >= 1, per layer, on a fixed validation batch) and the largest
activation (max |x| of the residual stream after each block, same batch). The checks and their
thresholds are the constants below, fixed before the experiment was run (docs/demos/gated_attention.md).

Every finished run is cached as JSON under ``OUT/NAME.runs/KEY/`` (``KEY`` hashes the settings
that change a run's numbers) and an unfinished one checkpoints every ``--checkpoint-every`` steps
there, so the same command continues an interrupted experiment where it stopped, with the numbers
an uninterrupted one gives. ``--quick``: a tiny model, 6 steps, one seed (a smoke test).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import math
import time
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch import nn

from gated.feedforward import FeedForward, ffn_hidden_size
from gated.feedforward.attention import GatedMultiheadAttention
from gated.harness.demos import common
from gated.harness.plots import save_figure

HELP = "gated attention (Qiu et al. 2025) vs plain attention in a small char Transformer on KJV: bpc, sink, max |x|"
DATASET = "kjv"
#: arm -> (gate, variant) of GatedMultiheadAttention
ARMS = {"none": (None, "-"), "elementwise": ("elementwise", "-"), "headwise": ("headwise", "-"),
        "elementwise-U": ("elementwise", "U"), "elementwise-UR": ("elementwise", "UR")}
VAL_BATCH = 64  # validation windows per forward pass
VAL_SEED = 1234  # the validation windows are the same for every seed and arm
CACHE_VERSION = 1  # bump when a code change alters what a cached run would contain

# --- Spec, fixed before running (docs/demos/gated_attention.md gives the reasons) ---------------------
#: check 1: mean over seeds of (val bpc of none - val bpc of elementwise) >= this, and elementwise
#: lower on every seed (paired: same batches, same shared initial weights)
CHECK1_MIN_BPC_GAIN = 0.01
#: check 2: last layer's first-token share, mean over seeds: none > this x elementwise
CHECK2_MIN_SINK_RATIO = 2.0
#: check 2's reading: the baseline has a sink at all when its last-layer share >= this x the share
#: of uniform causal attention (reported beside check 2; it does not change the outcome)
SINK_PRESENT_FACTOR = 3.0
#: check 4: largest |x| over layers, mean over seeds: none > this x elementwise
CHECK4_MIN_ACT_RATIO = 1.5
#: check 3 (elementwise-UR vs elementwise) is reported with no threshold.

#: --quick: the values it sets (flags given explicitly after --quick still win)
QUICK = {"layers": 2, "d_model": 16, "heads": 2, "d_ff": 32, "context": 16, "steps": 6, "batch_size": 4,
         "warmup": 2, "val_windows": 8, "curve_windows": 4, "sink_windows": 4, "eval_every": 3,
         "checkpoint_every": 3, "log_every": 3, "seeds": [0], "name": "gated_attention_kjv_quick"}
#: flags that do not change a run's numbers (left out of the cache key)
_NOT_IN_KEY = {"arms", "seeds", "out", "name", "threads", "log_every", "checkpoint_every", "quick"}
_COLOURS = {"none": "k", "elementwise": "C0", "headwise": "C1", "elementwise-U": "C2", "elementwise-UR": "C3"}


class _Quick(argparse.Action):
    """``--quick``: set the :data:`QUICK` values of every flag still at its default."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, default=False, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, True)
        for k, v in QUICK.items():
            if getattr(namespace, k) == parser.get_default(k):
                setattr(namespace, k, v)


def add_arguments(p) -> None:
    p.add_argument("--quick", action=_Quick,
                   help="smoke test: " + ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in QUICK.items())
                   .replace("[0]", "0") + " (flags after --quick override)")
    p.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS), help="attention variants")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2],
                   help="each seed: initial weights and training batches (the validation windows stay fixed)")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--d-ff", type=int, default=512)
    p.add_argument("--ffn", default="gelu", choices=["relu", "gelu", "swish"], help="plain FFN activation")
    p.add_argument("--context", type=int, default=128)
    p.add_argument("--steps", type=int, default=2500)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--val-windows", type=int, default=512,
                   help="final validation: this many fixed windows of CONTEXT chars")
    p.add_argument("--curve-windows", type=int, default=128,
                   help="validation curve: the first this-many validation windows")
    p.add_argument("--eval-every", type=int, default=250, help="a validation-curve point every this many steps")
    p.add_argument("--sink-windows", type=int, default=64,
                   help="attention sink and max |x|: the first this-many validation windows")
    p.add_argument("--checkpoint-every", type=int, default=250, help="save an unfinished run every this many steps")
    p.add_argument("--log-every", type=int, default=100)
    common.add_output_flags(p, "gated-attention", "gated_attention_kjv", threads=1)


# --- model --------------------------------------------------------------------------------------------

@lru_cache(maxsize=8)
def causal_mask(T: int) -> torch.Tensor:
    """``(T, T)`` float mask, ``-inf`` above the diagonal (key after query)."""
    return torch.triu(torch.full((T, T), float("-inf")), diagonal=1)


class Block(nn.Module):
    """Pre-LayerNorm block: causal (gated) self-attention then a plain FFN, each with a residual.

    With ``probe = True`` the attention also returns its per-head weights, kept in ``weights``
    ``(B, H, T, T)``, and the mean gate value in ``gate_mean`` (None without a gate)."""

    def __init__(self, d: int, heads: int, d_ff: int, ffn: str, gate: str | None, variant: str,
                 generator: torch.Generator | None):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = GatedMultiheadAttention(d, heads, bias=False, batch_first=True, gate=gate, variant=variant,
                                            generator=generator)
        self.ffn = FeedForward(d, ffn_hidden_size(ffn, d_ff), ffn, bias=False)
        self.probe, self.weights, self.gate_mean = False, None, None

    def forward(self, x):  # (B, T, D)
        h = self.ln1(x)
        a, w = self.attn(h, h, h, attn_mask=causal_mask(x.shape[1]), is_causal=True, need_weights=self.probe,
                         average_attn_weights=False)
        if self.probe:
            self.weights = w
            self.gate_mean = None if self.attn.gate_proj is None else self.attn.output_gate(h).mean().item()
        x = x + a
        return x + self.ffn(self.ln2(x))


def build(args, arm: str, vocab: int, seed: int) -> common.CharTransformer:
    """The arm's model. Seeded so that every arm of one seed starts from the same weights: the
    no-gate model's, into which a gated model loads (its gate's own parameters aside)."""
    def make(gate, variant, generator):
        return common.CharTransformer(vocab, args.d_model, args.layers, args.context, lambda i: Block(
            args.d_model, args.heads, args.d_ff, args.ffn, gate, variant, generator))

    gate, variant = ARMS[arm]
    torch.manual_seed(seed)
    plain = make(None, "-", None)
    if gate is None:
        return plain
    torch.manual_seed(seed)
    net = make(gate, variant, torch.Generator().manual_seed(seed))
    missing, unexpected = net.load_state_dict(plain.state_dict(), strict=False)
    if unexpected or not all(".attn.gate_" in k for k in missing):
        raise RuntimeError(f"shared weights do not line up: missing {missing}, unexpected {unexpected}")
    return net


# --- metrics ------------------------------------------------------------------------------------------

def first_token_share(weights: torch.Tensor) -> float:
    """The attention sink: the mean attention weight on key position 0 over queries at positions
    >= 1 (position 0 can attend nothing else), averaged over every other leading dim (batch, heads).
    ``weights``: ``(..., L, S)``, rows summing to 1."""
    return weights[..., 1:, 0].mean().item()


def first_token_share_per_head(weights: torch.Tensor) -> list[float]:
    """:func:`first_token_share` of each head of ``weights: (B, H, L, S)``."""
    return weights[:, :, 1:, 0].mean(dim=(0, 2)).tolist()


def uniform_first_token_share(T: int) -> float:
    """:func:`first_token_share` of uniform causal attention over ``T`` positions:
    ``mean over i = 1..T-1 of 1 / (i + 1)`` (the floor against which a sink is read)."""
    return float(np.mean([1 / (i + 1) for i in range(1, T)])) if T > 1 else float("nan")


def probe(net: common.CharTransformer, x: torch.Tensor) -> dict:
    """Attention sink, gate means and the residual stream's largest activations of ``net`` on input
    windows ``x: (B, T)`` (eval mode, no grad)."""
    net.eval()
    for b in net.blocks:
        b.probe = True
    try:
        with torch.no_grad():
            hs = net.hidden_states(x)  # [embeddings, after block 1, ..., after block L]
        return {"sink": [first_token_share(b.weights) for b in net.blocks],
                "sink_heads": [first_token_share_per_head(b.weights) for b in net.blocks],
                "gate_mean": [b.gate_mean for b in net.blocks],
                "max_act": [h.abs().max().item() for h in hs[1:]],
                "median_act": [h.abs().median().item() for h in hs[1:]],
                "embedding_max_act": hs[0].abs().max().item()}
    finally:
        for b in net.blocks:
            b.probe, b.weights, b.gate_mean = False, None, None


# --- runs ---------------------------------------------------------------------------------------------

def _check(args) -> None:
    if len(set(args.arms)) != len(args.arms):
        raise ValueError(f"--arms lists an arm twice: {' '.join(args.arms)}")
    for k in ("eval_every", "checkpoint_every", "curve_windows", "sink_windows"):
        if getattr(args, k) < 1:
            raise ValueError(f"--{k.replace('_', '-')} must be at least 1, got {getattr(args, k)}")
    for k in ("curve_windows", "sink_windows"):
        if getattr(args, k) > args.val_windows:
            raise ValueError(f"--{k.replace('_', '-')} {getattr(args, k)} exceeds --val-windows {args.val_windows}")


def cache_dir(args) -> Path:
    """``OUT/NAME.runs/KEY``: ``KEY`` hashes every flag that changes a run's numbers, the dataset's
    content checksum and :data:`CACHE_VERSION`; ``config.json`` there lists them."""
    from gated.harness.data import paths
    from gated.harness.files import atomic_write

    manifest = json.loads(paths(DATASET)[1].read_text())
    key_cfg = {k: v for k, v in common.config(args).items() if k not in _NOT_IN_KEY} | {
        "cache_version": CACHE_VERSION, "data": manifest.get("content_sha256") or manifest.get("sha256")}
    text = json.dumps(key_cfg, sort_keys=True)
    d = Path(args.out) / f"{args.name}.runs" / hashlib.sha256(text.encode()).hexdigest()[:12]
    d.mkdir(parents=True, exist_ok=True)
    if not (d / "config.json").exists():
        atomic_write(d / "config.json", (json.dumps(key_cfg, indent=1, sort_keys=True) + "\n").encode())
    return d


def _save_checkpoint(path: Path, state: dict) -> None:
    from gated.harness.files import atomic_write

    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write(path, buf.getvalue())


def train_run(args, arm: str, seed: int, vocab: int, tr, starts, vx, cache: Path, bar, tag: str) -> tuple[dict, bool]:
    """One (arm, seed): from its cached result, its checkpoint, or the start; ``(row, from the cache)``."""
    from gated.harness.files import atomic_write

    done, ckpt = cache / f"{arm}-seed{seed}.json", cache / f"{arm}-seed{seed}.pt"
    if done.exists():
        bar.step(args.steps)
        bar.log(f"{tag} {arm} seed {seed}: cached result {done}")
        return json.loads(done.read_text()), True
    net = build(args, arm, vocab, seed)
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    sched = common.warmup_cosine(opt, args.warmup, args.steps)
    losses, curve, first, spent = [], [], 0, 0.0
    if ckpt.exists():
        state = torch.load(ckpt, weights_only=True)
        net.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        losses, curve, first, spent = state["losses"], state["curve"], state["step"], state["seconds"]
        bar.step(first)
        bar.log(f"{tag} {arm} seed {seed}: resumed from step {first} ({ckpt})")
    else:
        bar.log(f"{tag} {arm} seed {seed}: start")
    t0 = time.time() - spent
    label = f"{arm:14s} s{seed}"

    def after_step(step: int) -> None:
        if step % args.eval_every == 0 or step == args.steps:
            curve.append([step, common.char_bpc(net, vx[:args.curve_windows], VAL_BATCH)])
            bar.log(f"{label} step {step:5d}/{args.steps} val bpc {curve[-1][1]:.4f} "
                    f"({args.curve_windows} windows)")
        if step % args.checkpoint_every == 0 and step < args.steps:
            _save_checkpoint(ckpt, {"model": net.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                                    "losses": losses, "curve": curve, "step": step, "seconds": time.time() - t0})

    common.train_char_lm(net, opt, sched, tr, starts, args.context, bar, label, args.log_every, losses=losses,
                         first=first, t0=t0, after_step=after_step)
    bpc = common.char_bpc(net, vx, VAL_BATCH)
    found = probe(net, vx[:args.sink_windows, :-1])
    gate = ARMS[arm][0]
    row = {"arm": arm, "gate": gate, "variant": ARMS[arm][1], "seed": seed,
           "parameters": sum(q.numel() for q in net.parameters()),
           "gate_parameters": sum(q.numel() for b in net.blocks for n, q in b.attn.named_parameters()
                                  if n.startswith("gate_")),
           "val_bpc": bpc, "final_train_bpc": float(np.mean(losses[-args.log_every:])), "curve": curve,
           **found, "seconds": time.time() - t0, "losses": losses}
    atomic_write(done, (json.dumps(row) + "\n").encode())
    ckpt.unlink(missing_ok=True)
    return row, False


def run(args, bar) -> dict:
    """Every (seed, arm), seed by seed, on fixed validation windows; then the summary and the checks."""
    _check(args)
    itos, tr, va = common.char_corpus(DATASET, args.context)
    T = args.context
    gv = torch.Generator().manual_seed(VAL_SEED)
    vx = common.windows(va, torch.randint(0, len(va) - T - 1, (args.val_windows,), generator=gv), T)  # (W, T+1)
    cache = cache_dir(args)
    plan = [(seed, arm) for seed in args.seeds for arm in args.arms]
    bar.log(f"gated-attention: {len(plan)} runs ({len(args.arms)} arms x {len(args.seeds)} seeds) of "
            f"{args.steps} steps; per-run results and checkpoints in {cache}")
    rows, cached, spent = [], [], []
    for i, (seed, arm) in enumerate(plan):
        g = torch.Generator().manual_seed(seed)
        starts = torch.randint(0, len(tr) - T - 1, (args.steps, args.batch_size), generator=g)  # per seed
        tag = f"[{i + 1}/{len(plan)}]"
        t = time.time()
        r, from_cache = train_run(args, arm, seed, len(itos), tr, starts, vx, cache, bar, tag)
        rows.append(r)
        if from_cache:
            cached.append(f"{arm}-seed{seed}")
        else:
            spent.append(time.time() - t)
        left = len(plan) - i - 1
        eta = f"; about {_duration(left * np.mean(spent))} left" if spent and left else ""
        bar.log(f"{tag} {arm} seed {seed}: val bpc {r['val_bpc']:.4f}, first-token share (last layer) "
                f"{r['sink'][-1]:.3f}, max |x| {max(r['max_act']):.1f}, {r['seconds']:.0f}s{eta}")
    results = {"rows": rows, "vocab": len(itos), "cache": str(cache), "from_cache": cached,
               "uniform_first_token_share": uniform_first_token_share(T)}
    results["summary"] = summarise(results)
    results["checks"] = checks(results)
    for c in results["checks"]:
        bar.log(f"check {c['id']} ({c['name']}): {c['outcome']} - {c['detail']}")
    return results


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def total_steps(args) -> int:
    return len(args.arms) * len(args.seeds) * args.steps


# --- summary and checks (functions of the saved results alone) ----------------------------------------

def _ms(values) -> dict:
    v = np.asarray(values, dtype=float)
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else None, "n": len(v)}


def summarise(results: dict) -> dict:
    """Per arm, over seeds: mean and std (ddof=1) of every metric; per-layer lists elementwise;
    the paired difference to ``none`` where both ran on the same seed."""
    rows = results["rows"]
    arms = list(dict.fromkeys(r["arm"] for r in rows))
    base = {r["seed"]: r for r in rows if r["arm"] == "none"}
    out = {}
    for arm in arms:
        rs = [r for r in rows if r["arm"] == arm]
        L = len(rs[0]["sink"])
        s = {"seeds": [r["seed"] for r in rs], "parameters": rs[0]["parameters"],
             "gate_parameters": rs[0]["gate_parameters"],
             "val_bpc": _ms([r["val_bpc"] for r in rs]), "val_bpc_by_seed": [r["val_bpc"] for r in rs],
             "final_train_bpc": _ms([r["final_train_bpc"] for r in rs]),
             "sink_last": _ms([r["sink"][-1] for r in rs]),
             "sink_mean_over_layers": _ms([np.mean(r["sink"]) for r in rs]),
             "sink_by_layer": [_ms([r["sink"][i] for r in rs]) for i in range(L)],
             "max_act": _ms([max(r["max_act"]) for r in rs]),
             "max_act_by_layer": [_ms([r["max_act"][i] for r in rs]) for i in range(L)],
             "gate_mean": None if rs[0]["gate"] is None else _ms([np.mean(r["gate_mean"]) for r in rs]),
             "seconds": _ms([r["seconds"] for r in rs])}
        paired = [base[r["seed"]]["val_bpc"] - r["val_bpc"] for r in rs if r["seed"] in base]
        s["bpc_gain_vs_none"] = _ms(paired) if paired and arm != "none" else None
        s["bpc_gain_vs_none_by_seed"] = paired if arm != "none" else None
        out[arm] = s
    return out


def checks(results: dict) -> list[dict]:
    """The spec's checks (thresholds: the module constants), each with ``outcome`` PASS / FAIL /
    REPORT / n/a and a one-line ``detail``."""
    s, u = results["summary"], results["uniform_first_token_share"]
    have = lambda *arms: all(a in s for a in arms)  # noqa: E731
    out = []
    c = {"id": 1, "name": "elementwise gate lowers val bpc", "threshold": CHECK1_MIN_BPC_GAIN}
    if have("none", "elementwise") and s["elementwise"]["bpc_gain_vs_none"]:
        gains = s["elementwise"]["bpc_gain_vs_none_by_seed"]
        gain = float(np.mean(gains))
        ok = gain >= CHECK1_MIN_BPC_GAIN and all(g > 0 for g in gains)
        c |= {"value": gain, "outcome": "PASS" if ok else "FAIL",
              "detail": (f"none - elementwise = {gain:+.4f} bpc (per seed {', '.join(f'{g:+.4f}' for g in gains)}); "
                         f"needs >= {CHECK1_MIN_BPC_GAIN} and > 0 on every seed")}
    else:
        c |= {"value": None, "outcome": "n/a", "detail": "needs arms none and elementwise on the same seeds"}
    out.append(c)
    c = {"id": 2, "name": "elementwise gate removes the attention sink (last layer)",
         "threshold": CHECK2_MIN_SINK_RATIO}
    if have("none", "elementwise"):
        a, b = s["none"]["sink_last"]["mean"], s["elementwise"]["sink_last"]["mean"]
        ratio = a / b if b > 0 else math.inf
        sink = a >= SINK_PRESENT_FACTOR * u
        c |= {"value": ratio, "outcome": "PASS" if ratio > CHECK2_MIN_SINK_RATIO else "FAIL", "baseline_has_sink": sink,
              "detail": (f"first-token share none {a:.3f} / elementwise {b:.3f} = {ratio:.2f}x; needs > "
                         f"{CHECK2_MIN_SINK_RATIO:g}x. Uniform causal attention gives {u:.3f}; the baseline "
                         f"{'has' if sink else 'has no'} sink (>= {SINK_PRESENT_FACTOR:g}x uniform = "
                         f"{SINK_PRESENT_FACTOR * u:.3f})")}
    else:
        c |= {"value": None, "outcome": "n/a", "detail": "needs arms none and elementwise"}
    out.append(c)
    c = {"id": 3, "name": "elementwise-UR vs elementwise", "threshold": None}
    if have("elementwise", "elementwise-UR"):
        by = {r["seed"]: r for r in results["rows"] if r["arm"] == "elementwise"}
        d = [by[r["seed"]]["val_bpc"] - r["val_bpc"] for r in results["rows"]
             if r["arm"] == "elementwise-UR" and r["seed"] in by]
        e, ur = s["elementwise"], s["elementwise-UR"]
        c |= {"value": float(np.mean(d)) if d else None, "outcome": "REPORT",
              "detail": (f"elementwise - elementwise-UR = {np.mean(d):+.4f} bpc (per seed "
                         f"{', '.join(f'{x:+.4f}' for x in d)}); last-layer first-token share "
                         f"{e['sink_last']['mean']:.3f} vs {ur['sink_last']['mean']:.3f}; max |x| "
                         f"{e['max_act']['mean']:.1f} vs {ur['max_act']['mean']:.1f}; no threshold")}
    else:
        c |= {"value": None, "outcome": "n/a", "detail": "needs arms elementwise and elementwise-UR"}
    out.append(c)
    c = {"id": 4, "name": "elementwise gate shrinks the largest activation", "threshold": CHECK4_MIN_ACT_RATIO}
    if have("none", "elementwise"):
        a, b = s["none"]["max_act"]["mean"], s["elementwise"]["max_act"]["mean"]
        ratio = a / b
        c |= {"value": ratio, "outcome": "PASS" if ratio > CHECK4_MIN_ACT_RATIO else "FAIL",
              "detail": f"max |x| over layers none {a:.1f} / elementwise {b:.1f} = {ratio:.2f}x; needs > "
                        f"{CHECK4_MIN_ACT_RATIO:g}x"}
    else:
        c |= {"value": None, "outcome": "n/a", "detail": "needs arms none and elementwise"}
    out.append(c)
    return out


def _pm(m: dict | None, fmt: str = ".4f", signed: bool = False) -> str:
    if m is None:
        return "—"
    f = ("+" if signed else "") + fmt
    return f"{m['mean']:{f}}" + ("" if m["std"] is None else f" ± {m['std']:{fmt}}")


def table(results: dict) -> str:
    """The markdown report of a results dict (as saved in the JSON)."""
    a, s, u = results["config"], results["summary"], results["uniform_first_token_share"]
    n_seeds = len(a["seeds"])
    L = a["layers"]
    lines = [
        "# Gated attention (Qiu et al. 2025) in a small character-level Transformer (King James Bible)",
        "",
        f"- command: `{results['command']}`",
        f"- {common.machine_line(results)}; total wall time {results['seconds']:.0f} s"
        + (f" ({len(results['from_cache'])} of {len(results['rows'])} runs read from the cache of an earlier "
           "invocation)" if results["from_cache"] else ""),
        (f"- budget per run: {a['steps']} steps of {a['batch_size']} random windows of {a['context']} characters, "
         f"AdamW lr {a['lr']:g} (weight decay {a['weight_decay']:g}), {a['warmup']}-step warm-up then cosine decay, "
         f"gradient clipping 1.0; seeds {', '.join(map(str, a['seeds']))} (a seed fixes the batches and the "
         "initial weights; every arm of a seed shares both, the gate's own parameters aside)."),
        (f"- model: pre-LayerNorm causal decoder, {L} blocks, d_model {a['d_model']}, {a['heads']} heads, learned "
         f"positions, context {a['context']}, vocabulary {results['vocab']} characters, plain {a['ffn']} FFN "
         f"{a['d_ff']}; attention `GatedMultiheadAttention(d_model, heads, bias=False, gate=..., variant=...)`."),
        (f"- validation: bits per character over {a['val_windows']} fixed windows of the validation split (the same "
         f"for every run; curve: the first {a['curve_windows']} every {a['eval_every']} steps). Attention sink = "
         f"mean attention weight (over heads, queries at positions >= 1 and the first {a['sink_windows']} windows) "
         f"on position 0; uniform causal attention gives {u:.3f}. max |x| = largest absolute value of the residual "
         "stream after a block, same windows."),
        f"- mean ± sample std over {n_seeds} seed{'s' if n_seeds > 1 else ''}"
        + (" (one seed: no spread)" if n_seeds == 1 else "")
        + "; gain vs none = val bpc of none − val bpc of the arm, paired by seed (positive: the arm is better).",
        "",
        ("| attention | gate params | model params | val bpc | gain vs none | final train bpc | first-token share, "
         "last layer | first-token share, mean of layers | max abs x (all layers) | mean gate | time/run (s) |"),
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for arm, m in s.items():
        lines.append(f"| {arm} | {m['gate_parameters']:,} | {m['parameters']:,} | {_pm(m['val_bpc'])} | "
                     f"{_pm(m['bpc_gain_vs_none'], signed=True)} | {_pm(m['final_train_bpc'])} | "
                     f"{_pm(m['sink_last'], '.3f')} | {_pm(m['sink_mean_over_layers'], '.3f')} | "
                     f"{_pm(m['max_act'], '.1f')} | {_pm(m['gate_mean'], '.3f')} | {m['seconds']['mean']:.0f} |")
    head = " | ".join(f"layer {i + 1}" for i in range(L))
    lines += ["", "First-token share by layer (uniform causal attention: "
              f"{u:.3f}):", "", f"| attention | {head} |", "|---|" + "---:|" * L]
    lines += [f"| {arm} | " + " | ".join(_pm(x, ".3f") for x in m["sink_by_layer"]) + " |" for arm, m in s.items()]
    lines += ["", "Largest |x| of the residual stream after each block:", "", f"| attention | {head} |",
              "|---|" + "---:|" * L]
    lines += [f"| {arm} | " + " | ".join(_pm(x, ".1f") for x in m["max_act_by_layer"]) + " |" for arm, m in s.items()]
    lines += ["", "## Checks (thresholds fixed before running; docs/demos/gated_attention.md)", ""]
    lines += [f"{c['id']}. **{c['outcome']}**: {c['name']}. {c['detail']}." for c in results["checks"]]
    lines += ["", f"Final train bpc: mean of the last {a['log_every']} steps' minibatch values.", "",
              f"![validation curves, attention sink and largest activations]({a['name']}.png)", ""]
    return "\n".join(lines)


def figure(results: dict, path) -> None:
    """Validation-bpc curves (mean over seeds, and each seed faint), first-token share and max |x| by layer."""
    a, s, u = results["config"], results["summary"], results["uniform_first_token_share"]
    plt = common.pyplot()
    fig, (ax, ax2, ax3) = plt.subplots(1, 3, figsize=(15, 4.2))
    lowest = math.inf
    for arm in s:
        rs = [r for r in results["rows"] if r["arm"] == arm]
        steps = [p[0] for p in rs[0]["curve"]]
        ys = np.array([[p[1] for p in r["curve"]] for r in rs])
        colour = _COLOURS.get(arm)
        lowest = min(lowest, float(ys.min()))
        ax.plot(steps, ys.mean(0), color=colour, label=arm, ls="-" if arm == "none" else "--", marker=".")
        if len(rs) > 1:
            for y in ys:
                ax.plot(steps, y, color=colour, lw=0.6, alpha=0.35)
    ax.set_xlabel("step")
    ax.set_ylabel(f"validation bits/char (first {a['curve_windows']} windows)")
    if lowest < 4.0:  # leave out the first points' high values, once training is past them
        ax.set_ylim(top=min(ax.get_ylim()[1], 4.5))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("validation curves (mean over seeds; faint: each seed)")
    layers = np.arange(1, a["layers"] + 1)
    width = 0.8 / max(1, len(s))
    for j, (arm, m) in enumerate(s.items()):
        x = layers + (j - (len(s) - 1) / 2) * width
        for axis, key in ((ax2, "sink_by_layer"), (ax3, "max_act_by_layer")):
            axis.bar(x, [v["mean"] for v in m[key]], width, color=_COLOURS.get(arm), label=arm,
                     yerr=None if m[key][0]["std"] is None else [v["std"] for v in m[key]], capsize=2)
    ax2.axhline(u, color="grey", ls=":", lw=1, label=f"uniform causal ({u:.3f})")
    ax2.set_ylabel("attention weight on position 0 (queries >= 1)")
    ax2.set_title("attention sink: first-token share by layer")
    ax3.set_ylabel("max |x| of the residual stream")
    acts = [v["mean"] for m in s.values() for v in m["max_act_by_layer"]]
    if max(acts) > 10 * min(acts):
        ax3.set_yscale("log")
    ax3.set_title("largest activation by layer")
    for axis in (ax2, ax3):
        axis.set_xlabel("layer")
        axis.set_xticks(layers)
        axis.grid(alpha=0.3, axis="y")
    ax2.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)  # PNG (200 dpi), PDF, SVG
