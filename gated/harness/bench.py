"""``gated bench``: speed (and peak memory) of gated's backends against torch.nn at the same shape.

For each shape ``TxBxIxH``, core, variant, layer count and direction count, in one process:
torch.nn time (LSTM for the LSTM core, GRU for GRU and MGU), the gated reference backend's time,
the fused backend's time, their ratios, the fused path's matmul GFLOP/s and its share of the
machine's float32 matmul peak, measured in the same run with a large square matmul (the faster
of MKL and oneDNN, see :func:`matmul_peak`). Times are the
minimum over ``--repeats`` runs after a warm-up, torch.nn's and gated's calls in alternation (so
a host whose speed drifts skews both alike: :func:`gated.harness.bench_common._time_together`);
"train" is forward + backward of ``out.sum()``,
"infer" a forward under ``torch.no_grad()``. ``--memory`` adds the peak memory of a train step,
each measured in a fresh process (the growth of its peak RSS during one step). ``--stream`` times
one-step calls with the state carried (agents, streaming decoders) instead of the grid. ``--gemm``
pins the fused kernels' matmul path, so one machine can compare them. The header names the CPU's
instruction set as torch sees it, the one the extension was built for, and whether the
register-tiled kernel ran. ``--quick`` times a small grid (:data:`QUICK`) in seconds; a header note
says when the other cores are busy (the times then include waits for them).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

import gated
from gated import precision
from gated.harness.bench_common import _commit, _parse_shape, _steps, _sync, _time, _time_together  # noqa: F401
from gated.harness.config import auto_threads, choose_threads, machine_load

HELP = "time gated's backends against torch.nn.LSTM/GRU (train and inference, GFLOP/s, memory)"
SHAPES = ["256x64x32x256", "784x64x1x128", "1000x32x10x256", "64x8x64x512", "100x64x512x512"]
GEMMS = {"auto": 0, "onednn": 1, "addmm": 3, "tiled": 4, "direct": 5}  # recurrent_gemm.h's GemmKind
_TORCH = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "mgu": torch.nn.GRU}
CUDA_SHAPES = ["1000x256x128x1024"]  # added to the default shapes with --device cuda (issue 16)
# The grid of a plain run and of --quick; a flag given on the command line wins over either.
FULL = {"shapes": SHAPES, "cores": ["lstm", "gru", "mgu"], "variants": ["-", "C", "U", "R", "UR"], "layers": [1, 2],
        "directions": [1, 2], "repeats": 3}
QUICK = {"shapes": ["64x16x32x64", "128x32x32x128"], "cores": ["lstm", "gru"], "variants": ["-", "UR"], "layers": [1],
         "directions": [1], "repeats": 2}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true",
                   help=f"a few small shapes ({' '.join(QUICK['shapes'])}), cores {' '.join(QUICK['cores'])}, "
                        f"variants {' '.join(QUICK['variants'])}, 1 layer and direction, {QUICK['repeats']} repeats, "
                        "no reference backend: 6-20 s on a loaded 2-core CPU (flags given as well win)")
    p.add_argument("--shapes", nargs="+", default=None,
                   help="TxBxIxH (default: four task shapes and fastrnns' 100x64x512x512)")
    p.add_argument("--cores", nargs="+", default=None, choices=sorted(gated.CORES),
                   help=f"default: {' '.join(FULL['cores'])}")
    p.add_argument("--variants", nargs="+", default=None, help=f"default: {' '.join(FULL['variants'])}")
    p.add_argument("--layers", nargs="+", type=int, default=None, help="default: 1 2")
    p.add_argument("--directions", nargs="+", type=int, default=None, choices=[1, 2], help="default: 1 2")
    p.add_argument("--repeats", type=int, default=None,
                   help=f"timed runs per measurement, the minimum is kept (default: {FULL['repeats']})")
    p.add_argument("--threads", type=int, default=torch.get_num_threads(),
                   help="torch CPU threads (default: torch's, here %(default)s; 0: gated train's automatic rule)")
    p.add_argument("--device", default="cpu",
                   help="cpu, or cuda: torch.nn on cuDNN against gated's Triton backend (the 'fused' columns), "
                        "--memory then reads torch.cuda.max_memory_allocated in this process; the default shapes "
                        f"add {' '.join(CUDA_SHAPES)}")
    p.add_argument("--autocast", default=None, choices=["bfloat16", "float16"],
                   help="run both sides under torch.autocast in this dtype, with float32 parameters (mixed precision)")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64", "bfloat16"])
    p.add_argument("--bf16-gemm", default=None, choices=["auto", "on", "off"],
                   help="gated.precision.set_bf16_gemm for this run: where the recurrent layers' matmuls run in "
                        "bfloat16 under bfloat16 autocast or parameters (default: the current mode, 'auto' unless "
                        "GATED_BF16_GEMM says otherwise: only on CPUs with AMX or AVX512-BF16)")
    p.add_argument("--no-reference", action="store_true", help="skip the (slow) reference backend")
    p.add_argument("--memory", action="store_true", help="also measure peak train-step memory (fresh processes)")
    p.add_argument("--sweep-t", nargs="*", type=int, default=None,
                   help="instead of the grid: time the first shape/core/variant at these sequence lengths")
    p.add_argument("--sweep-b", nargs="*", type=int, default=None,
                   help="instead of the grid: time the first shape/core/variant at these batch sizes")
    p.add_argument("--stream", nargs="*", type=int, default=None, metavar="B",
                   help="instead of the grid: one-step inference calls with the state carried, at these batch "
                        "sizes (default 1 16 64), with the first shape's I and H")
    p.add_argument("--cells", nargs="*", type=int, default=None, metavar="B",
                   help="instead of the grid: 20-step unrolls of the single-step cells (LSTMCell, GRUCell, MGUCell) "
                        "and of T = 1 calls of the sequence modules against torch.nn's, train and inference, at "
                        "these batch sizes (default 1 16 64), with the first shape's I and H "
                        "(gated/harness/bench_cells.py)")
    p.add_argument("--cell-options", action="store_true",
                   help="time the LayerNorm UR-LSTM/GRU with zoneout 0.1 and recurrent dropout 0.25 against a "
                   "Python-loop LayerNorm cell (eager and compiled) and plain torch.nn (gated/harness/bench_options.py)")
    p.add_argument("--no-compile", action="store_true", help="with --cell-options: skip the torch.compile'd loop")
    p.add_argument("--gemm", default="auto", choices=list(GEMMS),
                   help="pin the fused kernels' matmul path (default: auto, the tiled kernel where built; direct: "
                        "its team on the unpacked weights, which auto takes for small calls)")


def plan(args: argparse.Namespace) -> argparse.Namespace:
    """Fill in the grid flags not given on the command line from :data:`FULL`, or :data:`QUICK`
    with ``--quick`` (which also skips the reference backend); variants become the registry's labels."""
    args.quick = getattr(args, "quick", False)
    grid = QUICK if args.quick else FULL
    args.defaulted = [name for name in grid if getattr(args, name, None) is None]  # not given: the plan's
    for name in args.defaulted:
        value = grid[name]
        setattr(args, name, list(value) if isinstance(value, list) else value)
    if args.quick:
        args.no_reference = True
    labels = [gated.get_variant(v).name for v in args.variants]  # "ur" and "UR" are one row
    args.variants = list(dict.fromkeys(labels))
    if args.repeats < 1:
        raise ValueError(f"--repeats must be >= 1, got {args.repeats}")
    if args.threads < 0:
        raise ValueError(f"--threads must be >= 0, got {args.threads}")
    if args.threads == 0:  # automatic, as gated train's --threads 0
        args.threads = auto_threads(torch.get_num_threads(), *machine_load())
    return args


def _build(core, variant, shape, layers, dirs, dtype, device, backend="auto"):
    T, B, I, H = shape
    kw = dict(num_layers=layers, bidirectional=dirs == 2, device=device, dtype=dtype)
    if variant is None:
        return _TORCH[core](I, H, **kw)
    return getattr(gated, core.upper())(I, H, variant=variant, backend=backend, **kw)


def matmul_flops(module, shape, layers: int, dirs: int) -> float:
    """Matmul FLOPs of one forward: input and recurrent projections of every layer and direction."""
    T, B, I, H = shape
    G = module.weight_ih_l0.shape[0]
    flops = 0.0
    for layer in range(layers):
        in_size = I if layer == 0 else H * dirs
        flops += dirs * 2.0 * T * B * G * (in_size + H)
    return flops


def matmul_peak(device: str, dtype: torch.dtype, n: int = 2048) -> float:
    """The machine's measured matmul throughput (FLOP/s) on an n x n product: the faster of
    ``a @ a`` (MKL/cuBLAS) and, for float32 on the CPU, oneDNN's matmul with a prepacked weight.

    Both count because the fused path uses both, and they differ by hardware: on AMD CPUs MKL runs
    generic kernels while oneDNN uses AVX-512, so ``a @ a`` alone understates the peak there.
    """
    a = torch.randn(n, n, device=device, dtype=dtype)
    best = _time(lambda: a @ a, 3, device)
    from gated.backends.fused_cpu import onednn_linear_available

    if device == "cpu" and dtype == torch.float32 and onednn_linear_available():
        packed = torch.ops.mkldnn._reorder_linear_weight(a, n)
        best = min(best, _time(lambda: torch.ops.mkldnn._linear_pointwise(a, packed, None, "none", [], ""), 3, device))
    return 2.0 * n**3 / best


def _peak_rss_growth(spec: dict) -> float:
    """Peak RSS growth (bytes) of one train step, in a fresh process.

    Reads VmHWM from /proc (getrusage's ru_maxrss would carry over the parent's peak across exec).
    """
    code = (
        "import json,sys,torch\n"
        "from gated.harness.bench import _build, _steps\n"
        "hwm=lambda: int(next(l for l in open('/proc/self/status') if l.startswith('VmHWM')).split()[1])\n"
        "s=json.loads(sys.argv[1]); torch.set_num_threads(s['threads'])\n"
        "dt=getattr(torch,s['dtype']); m=_build(s['core'],s['variant'],s['shape'],s['layers'],s['dirs'],dt,'cpu')\n"
        "x=torch.randn(s['shape'][0],s['shape'][1],s['shape'][2],dtype=dt)\n"
        "if s['variant'] is not None: _build(s['core'],s['variant'],[2,1,1,1],1,1,dt,'cpu')(torch.randn(2,1,1,dtype=dt))\n"
        "before=hwm()\n"
        "_steps(m,x)[0]()\n"
        "print((hwm()-before)*1024)\n"
    )
    out = subprocess.run([sys.executable, "-c", code, json.dumps(spec)], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def _amp(fns, args):
    """The step functions, run under ``torch.autocast(args.autocast)`` if that is set."""
    if not getattr(args, "autocast", None):
        return fns
    kind, dt = torch.device(args.device).type, getattr(torch, args.autocast)

    def wrap(fn):
        def run():
            with torch.autocast(kind, dtype=dt):
                fn()

        return run

    return tuple(wrap(f) for f in fns)


def _cuda_peak_growth(module, x, args) -> float:
    """Peak CUDA memory growth (bytes) of one train step: ``torch.cuda.max_memory_allocated`` over
    what is already held after two warm-up steps (weights, input, gradients, and gated's
    per-shape workspaces and CUDA graphs, which persist)."""
    train = _amp(_steps(module, x), args)[0]
    train()
    train()
    torch.cuda.synchronize(args.device)
    base = torch.cuda.memory_allocated(args.device)
    torch.cuda.reset_peak_memory_stats(args.device)
    train()
    torch.cuda.synchronize(args.device)
    return float(torch.cuda.max_memory_allocated(args.device) - base)


def measure(core, variant, shape, layers, dirs, args, dtype) -> dict:
    x = torch.randn(shape[0], shape[1], shape[2], device=args.device, dtype=dtype)
    row = {"shape": "x".join(map(str, shape)), "core": core, "variant": variant, "layers": layers, "dirs": dirs}
    anchor = _build(core, None, shape, layers, dirs, dtype, args.device)
    fused = _build(core, variant, shape, layers, dirs, dtype, args.device, backend="auto")
    steps = {"torch": _amp(_steps(anchor, x), args), "fused": _amp(_steps(fused, x), args)}
    try:
        steps["torch"][1]()
    except RuntimeError as e:  # torch.nn.LSTM under CPU bf16 autocast without AVX-512 (oneDNN)
        if not getattr(args, "autocast", None):
            raise
        row["anchor_fp32"] = str(e).splitlines()[0][:120]  # the float32 torch.nn is the anchor then
        steps["torch"] = _steps(anchor, x)
    fns = {f"{name}_{mode}": f for name, pair in steps.items() for mode, f in zip(("train", "infer"), pair)}
    row.update(_time_together(fns, args.repeats, args.device))  # anchor and fused in alternation
    if not args.no_reference:
        ref = _build(core, variant, shape, layers, dirs, dtype, args.device, backend="reference")
        row["ref_train"] = _time(_amp(_steps(ref, x), args)[0], 1, args.device)
    flops = matmul_flops(fused, shape, layers, dirs)
    row["gflops_train"] = 3 * flops / row["fused_train"] / 1e9  # backward does twice the forward's matmuls
    row["gflops_infer"] = flops / row["fused_infer"] / 1e9
    if args.memory and args.device.startswith("cuda"):
        row["torch_mem"], row["fused_mem"] = _cuda_peak_growth(anchor, x, args), _cuda_peak_growth(fused, x, args)
    elif args.memory:
        spec = {"core": core, "shape": list(shape), "layers": layers, "dirs": dirs, "threads": args.threads,
                "dtype": args.dtype}
        row["torch_mem"] = _peak_rss_growth({**spec, "variant": None})
        row["fused_mem"] = _peak_rss_growth({**spec, "variant": variant})
    return row


def _fmt_row(r: dict, peak: float) -> str:
    ms = lambda v: f"{v * 1e3:.1f}"  # noqa: E731
    mark = "*" if "anchor_fp32" in r else ""  # torch.nn timed in float32: it raised under autocast
    cells = [r["shape"], r["core"], r["variant"], str(r["layers"]), str(r["dirs"]),
             ms(r["torch_train"]) + mark, ms(r["ref_train"]) if "ref_train" in r else "-", ms(r["fused_train"]),
             f"{r['fused_train'] / r['torch_train']:.2f}", ms(r["torch_infer"]) + mark, ms(r["fused_infer"]),
             f"{r['fused_infer'] / r['torch_infer']:.2f}", f"{r['gflops_train']:.0f}",
             f"{100 * r['gflops_train'] * 1e9 / peak:.0f}%"]
    if "fused_mem" in r:
        cells.append(f"{r['fused_mem'] / max(r['torch_mem'], 1):.2f}")
    return "| " + " | ".join(cells) + " |"


def _sweep(args, dtype, shape, name: str, values: list[int]) -> None:
    """One row per value of T or B (the other sizes from ``shape``): time should grow linearly."""
    core, variant, (T, B, I, H) = args.cores[0], args.variants[0], shape
    unit = "step" if name == "T" else "sequence"
    print(f"\n| {name} | torch train ms | fused train ms | ratio | fused ms per {unit} |\n|---|---|---|---|---|")
    quiet = argparse.Namespace(**{**vars(args), "no_reference": True, "memory": False})
    for v in values:
        r = measure(core, variant, (v, B, I, H) if name == "T" else (T, v, I, H), 1, 1, quiet, dtype)
        print(f"| {v} | {r['torch_train'] * 1e3:.1f} | {r['fused_train'] * 1e3:.1f} | "
              f"{r['fused_train'] / r['torch_train']:.2f} | {r['fused_train'] / v * 1e3:.3f} |", flush=True)


def _stream(args, dtype, shape, batches: list[int]) -> None:
    """Per-step time of T = 1 calls with the state carried (inference), against torch.nn the same way."""
    _, _, I, H = shape
    print("\n| core | variant | B | torch us per step | fused us per step | ratio | reference us per step |"
          "\n|---|---|---|---|---|---|---|")
    steps, raised = 200, ""
    for core in args.cores:
        for variant in args.variants:
            if gated.get_variant(variant).name not in gated.CORES[core].variants:
                continue
            for B in batches:
                xs = torch.randn(steps, 1, B, I, device=args.device, dtype=dtype)
                runs, star = {}, ""
                for v, backend in ((None, None), (variant, "auto"), (variant, "reference")):
                    m = _build(core, v, (1, B, I, H), 1, 1, dtype, args.device, backend=backend or "auto")

                    def run(m=m):
                        with torch.no_grad():
                            state = None
                            for x in xs:
                                _, state = m(x, state)

                    runs[backend] = _amp((run,), args)[0]
                    if v is None:
                        try:
                            runs[None]()
                        except RuntimeError:  # torch.nn.LSTM under CPU bf16 autocast without AVX-512
                            if not args.autocast:
                                raise
                            runs[None], star = run, "*"  # noted under the table
                best = _time_together(runs, args.repeats, args.device)  # in alternation
                times = [best[k] / steps * 1e6 for k in (None, "auto", "reference")]
                print(f"| {core} | {variant} | {B} | {times[0]:.0f}{star} | {times[1]:.0f} | {times[1] / times[0]:.2f} | "
                      f"{times[2]:.0f} |", flush=True)
                raised = raised or star
    if raised:
        print(f"\n\\* torch.nn raised under autocast {args.autocast} on this CPU; its float32 time is the anchor there")


def _kernel_info(args, dtype, shape) -> str:
    """The instruction sets (torch's, the extension's) and whether the tiled kernel runs here."""
    from gated.backends import _build as ext

    if args.device.startswith("cuda"):
        import triton

        from gated.backends import triton_gpu

        return (f"{torch.cuda.get_device_name(args.device)}; cuDNN {torch.backends.cudnn.version()}, triton "
                f"{triton.__version__}; TF32 in cuDNN {torch.backends.cudnn.allow_tf32}, in cuBLAS "
                f"{torch.backends.cuda.matmul.allow_tf32}; fused = gated's Triton backend, CUDA graphs "
                f"{'on' if triton_gpu._graphs_enabled() else 'off'}; autocast {args.autocast or 'off'}")
    info = (f"torch CPU capability {torch.backends.cpu.get_cpu_capability()}; native bfloat16 matmul: "
            f"{precision.native_bf16() or 'none (no AMX, no AVX512-BF16)'}; autocast {args.autocast or 'off'}")
    ops = ext.load() if args.device == "cpu" else None
    if ops is None:
        return info + ("; fused extension unavailable" if args.device == "cpu" else "")
    before = (int(ops.tiled_runs()), int(ops.direct_runs()))
    with torch.no_grad():
        _build(args.cores[0], args.variants[0], shape, 1, 1, dtype, "cpu")(
            torch.randn(shape[0], shape[1], shape[2], dtype=dtype))
    packed, direct = int(ops.tiled_runs()) > before[0], int(ops.direct_runs()) > before[1]
    ran = "ran (packed weights)" if packed else "ran (unpacked weights)" if direct else "did not run"
    return (f"{info}; extension built for {ops.isa()}, GEMM path {args.gemm}; "
            f"tiled kernel {ran} on the first shape")


def _cpu_gemm_dtype(args, dtype: torch.dtype) -> torch.dtype | None:
    """The dtype of gated's recurrent matmuls on the CPU in this run (None: not a low-precision run)."""
    low = getattr(torch, args.autocast) if args.autocast else dtype
    if low not in (torch.bfloat16, torch.float16):
        return None
    return precision._gemm(low) or torch.float32


def main(args) -> int:
    mode = getattr(args, "bf16_gemm", None)
    if not mode:
        return _main(args)
    before = precision.get_bf16_gemm()
    precision.set_bf16_gemm(mode)
    try:
        return _main(args)
    finally:
        precision.set_bf16_gemm(before)


def _main(args) -> int:
    plan(args)
    torch.set_num_threads(args.threads)
    from gated.backends import _build as ext

    if args.gemm != "auto":
        ops = ext.load()
        if ops is None or GEMMS[args.gemm] not in ops.gemm_kinds():
            raise SystemExit(f"gated bench: error: GEMM path {args.gemm!r} is not available in this build")
        ops.set_gemm(GEMMS[args.gemm])
    dtype = getattr(torch, args.dtype)
    from gated.harness import bench_options, bench_scan

    if getattr(args, "cell_options", False):
        return bench_options.main(args, dtype)
    if set(bench_scan.SCAN_CORES) & set(args.cores):  # the scan cores have tables of their own
        return bench_scan.main(args, dtype)
    if args.device.startswith("cuda") and "shapes" in args.defaulted and not args.quick:
        args.shapes = SHAPES + CUDA_SHAPES
    shapes = [_parse_shape(s) for s in args.shapes]
    # the fused path's matmul dtype: autocast's on CUDA (Triton's bf16 GEMMs); on the CPU what
    # gated/precision.py chooses (bfloat16 matmuls where set_bf16_gemm allows, else float32)
    gemm = _cpu_gemm_dtype(args, dtype) if args.device == "cpu" else None
    if gemm is not None:  # an emulated bfloat16 2048^3 product takes minutes: 512 there
        peak = matmul_peak("cpu", gemm, 2048 if gemm == torch.float32 or precision.native_bf16() else 512)
    else:
        peak = matmul_peak(args.device, getattr(torch, args.autocast) if args.autocast else dtype)
    print(f"# gated bench: gated {gated.__version__} (commit {_commit()}), torch {torch.__version__}, "
          f"{platform.machine()} {os.cpu_count()} cores, {args.threads} threads, {args.device}, {args.dtype}; "
          f"load average {os.getloadavg()[0]:.2f}; matmul peak {peak / 1e9:.0f} GFLOP/s"
          + ("; --quick plan" if args.quick else ""))
    print(f"# {_kernel_info(args, dtype, shapes[0])}")
    if args.device == "cpu" and (args.autocast or dtype in (torch.bfloat16, torch.float16)):
        low = getattr(torch, args.autocast) if args.autocast else dtype
        f32, lp = matmul_peak("cpu", torch.float32, 512), matmul_peak("cpu", low, 512)
        print(f"# {low} matmul {lp / 1e9:.1f} GFLOP/s against float32 {f32 / 1e9:.1f} GFLOP/s (512x512, this run); "
              f"gated's recurrent matmuls in {str(gemm).removeprefix('torch.')} (bf16 GEMM mode "
              f"{precision.get_bf16_gemm()!r}), gate maths and states in float32 (gated/precision.py)")
    _, note = choose_threads(args.threads, args.threads, *machine_load())
    if note:
        print(f"# note: {note} (these times include waits for the busy cores)")
    if args.stream is not None:
        _stream(args, dtype, shapes[0], args.stream or [1, 16, 64])
        return 0
    if getattr(args, "cells", None) is not None:
        from gated.harness import bench_cells

        bench_cells.main(args, dtype, shapes[0], args.cells or [1, 16, 64])
        return 0
    for name, values in (("T", args.sweep_t), ("B", args.sweep_b)):
        if values:
            _sweep(args, dtype, shapes[0], name, values)
            return 0
    head = ("| shape | core | variant | L | D | torch train ms | ref train ms | fused train ms | train ratio | "
            "torch infer ms | fused infer ms | infer ratio | fused train GFLOP/s | % of peak |")
    head += " mem ratio |" if args.memory else ""
    print("\n" + head + "\n" + "|---" * (head.count("|") - 1) + "|", flush=True)
    raised = None
    for shape in shapes:
        for core in args.cores:
            for variant in args.variants:
                if gated.get_variant(variant).name not in gated.CORES[core].variants:
                    continue
                for layers in args.layers:
                    for dirs in args.directions:
                        r = measure(core, variant, shape, layers, dirs, args, dtype)
                        print(_fmt_row(r, peak), flush=True)
                        raised = raised or r.get("anchor_fp32")
    if raised:
        print(f"\n\\* torch.nn raised under autocast {args.autocast} on this CPU ({raised}); its float32 time "
              "is the anchor in those rows")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="gated bench", description=HELP)
    add_arguments(parser)
    sys.exit(main(parser.parse_args()))
