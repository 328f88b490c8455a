"""``gated bench --cores mingru minlstm``: the scan cores' speed, in one run (default shape
1024x32x256x256, variants ``-`` and ``UR``):

1. the bare linear scan ``h_t = a_t h_{t-1} + b_t`` (``gated.linear_scan``), forward and forward+backward,
   against the memory floor (one read and write of its operands at the copy bandwidth measured on the
   same buffers), the pure-torch loop, and the log-space (Heinsen) scan of lucidrains' ``mingru-pytorch``;
2. one layer's train step (forward + backward of ``out.sum()``) and inference against torch.nn.GRU
   (torch.nn.LSTM for minLSTM) and against ``mingru-pytorch``'s minGRU / minLSTM at the same sizes
   (``pip install "gated[compare]"``; its columns are ``-`` without it);
3. the layer's train time over T (``--sweep-t``, default T/4, T, 4T): linear in T.

Times are the minimum over ``--repeats`` runs after a warm-up, the layer's columns timed in alternation
(:func:`gated.harness.bench_common._time_together`).
"""

from __future__ import annotations

import os
import platform

import torch

import gated
from gated.harness import bench_common as _bench
from gated.harness.bench_common import _parse_shape, _steps, _time, _time_together
from gated.harness.bench_common import ms as _ms
from gated.harness.bench_common import ratio as _ratio

SCAN_CORES = ("mingru", "minlstm", "rglru", "hgrn")
SHAPES = ["1024x32x256x256"]  # the shape: T = 1024, B = 32, I = H = 256
_TORCH = {"mingru": torch.nn.GRU, "minlstm": torch.nn.LSTM, "rglru": torch.nn.GRU, "hgrn": torch.nn.GRU}
_GATED = {"mingru": gated.MinGRU, "minlstm": gated.MinLSTM, "rglru": gated.RGLRU, "hgrn": gated.HGRN}


def _lucidrains(core: str):
    """lucidrains' mingru-pytorch class for ``core``, or None if it is not installed."""
    try:
        from minGRU_pytorch.minGRU import minGRU
        from minGRU_pytorch.minLSTM import minLSTM
    except ImportError:
        return None
    return {"mingru": minGRU, "minlstm": minLSTM}.get(core)  # it has no RG-LRU or HGRN


def _grads(fn, leaves, grad):
    return lambda: torch.autograd.grad(fn(), leaves, grad)


def scan_alone(shape, args, dtype) -> dict:
    """The bare scan at ``(T, B, H)``. The floor streams every operand once at the measured copy
    bandwidth: the forward reads a, b and writes h (3 arrays of T*B*H), the backward reads dh, a, h
    and writes da, db (5 arrays)."""
    T, B, _, H = shape
    g = torch.Generator().manual_seed(0)
    u = 1 / H + (1 - 2 / H) * torch.rand(H, generator=g)  # keep gates spread as UGI spreads them
    a = torch.sigmoid(torch.randn(T, B, H, generator=g) + torch.log(u / (1 - u))).to(dtype).requires_grad_()
    b = torch.randn(T, B, H, generator=g).to(dtype).requires_grad_()
    h0 = (0.5 * torch.randn(B, H, generator=g)).to(dtype).requires_grad_()
    dh = torch.randn(T, B, H, generator=g).to(dtype)
    dst = torch.empty_like(dh)
    copy = _time(lambda: dst.copy_(dh), args.repeats, args.device)  # one read and one write of T*B*H
    row = {"shape": f"{T}x{B}x{H}", "floor_fwd": 1.5 * copy, "floor": 4 * copy}
    for name, backend in (("fused", "fused_cpu"), ("loop", "torch")):
        fwd = lambda backend=backend: gated.linear_scan(a, b, h0, backend=backend)  # noqa: E731
        with torch.no_grad():
            row[f"{name}_fwd"] = _time(fwd, args.repeats, args.device)
        row[f"{name}_train"] = _time(_grads(fwd, [a, b, h0], dh), args.repeats, args.device)
    try:
        from minGRU_pytorch.minGRU import heinsen_associative_scan_log
    except ImportError:
        return row
    # its log-space scan needs b > 0 and h0 > 0 (timed on |b|, |h0|): batch-first, h0 as step 0
    la = a.detach().transpose(0, 1).log().requires_grad_()
    lb = torch.cat([h0.detach().abs().log().unsqueeze(1), b.detach().abs().log().transpose(0, 1)], 1)
    lb.requires_grad_()
    heinsen = lambda: heinsen_associative_scan_log(torch.nn.functional.pad(la, (0, 0, 1, 0)), lb)  # noqa: E731
    with torch.no_grad():
        row["heinsen_fwd"] = _time(heinsen, 1, args.device)
    row["heinsen_train"] = _time(_grads(heinsen, [la, lb], torch.cat([dh[:1], dh]).transpose(0, 1)), 1, args.device)
    return row


def scan_layer(core: str, variant: str, shape, args, dtype) -> dict:
    """Train and inference times of one layer: torch.nn, mingru-pytorch (batch-first, bias-free; its
    ``to_out`` projection too when H != I), gated (and gated's reference loop unless --no-reference)."""
    T, B, I, H = shape
    kw = {"device": args.device, "dtype": dtype}
    x = torch.randn(T, B, I, **kw)
    row = {"shape": "x".join(map(str, shape)), "core": core, "variant": variant}
    fns = {}
    fns["torch_train"], fns["torch_infer"] = _steps(_TORCH[core](I, H, **kw), x)
    ours = _GATED[core](I, H, variant=variant, **kw)
    fns["fused_train"], fns["fused_infer"] = _steps(ours, x)
    cls = _lucidrains(core)
    if cls is not None:
        theirs = cls(I, expansion_factor=H / I).to(**kw)
        pair = lambda v: (theirs(v), None)  # noqa: E731  (their forward returns the output only)
        fns["luci_train"], fns["luci_infer"] = _steps(pair, x.transpose(0, 1).contiguous())
    row.update(_time_together(fns, args.repeats, args.device))  # in alternation
    if not args.no_reference:
        ref = _GATED[core](I, H, variant=variant, backend="reference", **kw)
        row["ref_train"] = _time(_steps(ref, x)[0], 1, args.device)
    return row


def main(args, dtype) -> int:
    """The three tables (module docstring); ``args`` are gated bench's."""
    from gated.backends import _build as ext

    if args.device != "cpu":
        raise SystemExit("gated bench: error: the scan cores' bench times CPU kernels; use --device cpu")
    if any(c not in SCAN_CORES for c in args.cores):
        raise SystemExit(f"gated bench: error: time the scan cores ({', '.join(SCAN_CORES)}) in a run of their own")
    # the grid's defaults are gated bench's; this bench has its own (--quick's are small enough as they are)
    defaulted = set(args.defaulted) if hasattr(args, "defaulted") and not args.quick else set()
    shapes = [_parse_shape(s) for s in (SHAPES if "shapes" in defaulted else args.shapes)]
    variants = ["-", "UR"] if "variants" in defaulted else args.variants
    for v in variants:
        gated.get_variant(v)
    ops = ext.load()
    print(f"# gated bench (scan cores): gated {gated.__version__} (commit {_bench._commit()}), torch {torch.__version__}, "
          f"{platform.machine()} {os.cpu_count()} cores, {args.threads} threads, {args.dtype}; load average "
          f"{os.getloadavg()[0]:.2f}; torch CPU capability {torch.backends.cpu.get_cpu_capability()}; "
          f"extension built for {ops.isa() if ops is not None else 'none (torch scan)'}; "
          f"mingru-pytorch {'installed' if _lucidrains('mingru') else 'not installed'}")
    print("\n| T x B x H | floor fwd ms | floor fwd+bwd ms | gated fwd ms | gated fwd+bwd ms | fwd+bwd / floor | "
          "torch loop fwd+bwd ms | mingru-pytorch log-space fwd+bwd ms |\n" + "|---" * 8 + "|", flush=True)
    for shape in shapes:
        r = scan_alone(shape, args, dtype)
        print(f"| {r['shape']} | {_ms(r['floor_fwd'])} | {_ms(r['floor'])} | {_ms(r['fused_fwd'])} | "
              f"{_ms(r['fused_train'])} | {_ratio(r['fused_train'], r['floor'])} | {_ms(r['loop_train'])} | "
              f"{_ms(r.get('heinsen_train'))} |", flush=True)
    print("\n| shape | core | variant | torch.nn train ms | mingru-pytorch train ms | gated train ms | vs torch.nn | "
          "vs mingru-pytorch | reference train ms | torch.nn infer ms | mingru-pytorch infer ms | gated infer ms | "
          "infer vs torch.nn |\n" + "|---" * 13 + "|", flush=True)
    for shape in shapes:
        for core in args.cores:
            for variant in variants:
                r = scan_layer(core, variant, shape, args, dtype)
                print(f"| {r['shape']} | {core} | {variant} | {_ms(r['torch_train'])} | {_ms(r.get('luci_train'))} | "
                      f"{_ms(r['fused_train'])} | {_ratio(r['fused_train'], r['torch_train'])} | "
                      f"{_ratio(r['fused_train'], r.get('luci_train'))} | {_ms(r.get('ref_train'))} | "
                      f"{_ms(r['torch_infer'])} | {_ms(r.get('luci_infer'))} | {_ms(r['fused_infer'])} | "
                      f"{_ratio(r['fused_infer'], r['torch_infer'])} |", flush=True)
    core, variant, (T, B, I, H) = args.cores[0], variants[-1], shapes[0]
    print(f"\n| T | {core} {variant} train ms | ms per step |\n|---|---|---|")
    for t in args.sweep_t or [T // 4, T, 4 * T]:
        ours = _GATED[core](I, H, variant=variant, device=args.device, dtype=dtype)
        sec = _time(_steps(ours, torch.randn(t, B, I, device=args.device, dtype=dtype))[0], args.repeats, args.device)
        print(f"| {t} | {sec * 1e3:.1f} | {sec / t * 1e3:.4f} |", flush=True)
    return 0

