#!/usr/bin/env bash
# The GPU check of the Triton backend, for a session that is lent a GPU machine: one
# prepared run of at most 9 minutes (each part has its own time limit; what a part printed comes
# back even if it runs out). Nothing in it has been run on a GPU yet: see docs/gpu.md.
#
#   device run, from the repository root:  bash scripts/gpu_check.sh      (timeout_s 600)
#
# Uses the machine's python3 (torch 2.11, triton 3.6 there) with this checkout on PYTHONPATH, no
# install. Writes into $OUT (the device tool brings it back; default ./gpu-check-out):
#   env.txt    torch, triton, GPU, cuDNN, TF32 settings
#   tests.txt  tests/test_triton.py, test_triton_options.py and test_triton_scan.py on CUDA: compiled
#              kernels, real CUDA graphs, float16 too
#   graphs.txt CUDA graphs on and off give the same results; their train and inference times
#   bench_f32.md, bench_bf16.md  gated bench --device cuda against torch.nn (cuDNN), with peak
#              training memory (torch.cuda.max_memory_allocated), the six GPU benchmark shapes
#   bench_f32_tf32.md  the float32 times again with TF32 on in cuBLAS (our GEMMs) and cuDNN
#              (torch.nn's), LSTM and GRU (the kernels do no matmul of their own: TF32 changes only those)
#   summary.txt  the parts that failed (tests, a graphs mismatch, a time limit, a crash), if any
# Every part runs whatever the earlier ones did; the script exits 1 if any part failed.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-check-out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export GATED_DISABLE_FUSED=1  # no C++ build of the CPU kernels there: nothing here runs them
unset TRITON_INTERPRET
failed=()

check() {  # check NAME STATUS: a part's exit status (124: its time limit) into the summary
    if [ "$2" -ne 0 ]; then
        local why="exit status $2"
        [ "$2" -eq 124 ] && why="timed out"
        echo "!! part '$1' failed ($why)"
        failed+=("$1: $why")
    fi
}

$PY - <<'EOF' 2>&1 | tee "$OUT/env.txt"
import torch, triton, gated
print("torch", torch.__version__, "triton", triton.__version__, "cuda", torch.version.cuda)
print(torch.cuda.get_device_name(), "cuDNN", torch.backends.cudnn.version())
print("TF32: cuDNN", torch.backends.cudnn.allow_tf32, "cuBLAS", torch.backends.cuda.matmul.allow_tf32)
EOF
check env $?

echo "== tests (compiled kernels on CUDA)"
GATED_TEST_DEVICE=cuda timeout 170 $PY -m pytest -q -p no:cacheprovider --maxfail=10 -rfE \
    tests/test_triton.py tests/test_triton_options.py tests/test_triton_scan.py 2>&1 | tee "$OUT/tests.txt"
check tests $?

echo "== CUDA graphs on and off"
timeout 80 $PY - <<'EOF' 2>&1 | tee "$OUT/graphs.txt"
import os, time
import torch, gated
from gated.backends import triton_gpu

def step(m, x, train):
    if train:
        out, _ = m(x)
        out.float().pow(2).sum().backward()
        return [out.detach()] + [p.grad.clone() for p in m.parameters()]
    with torch.no_grad():
        return [m(x)[0]]

def timed(fn, n=5):
    fn(); fn(); torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(n):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t) / n * 1e3

for core, (T, B, I, H) in (("LSTM", (256, 64, 32, 256)), ("GRU", (784, 64, 1, 128)), ("MGU", (100, 64, 512, 512))):
    for amp in (None, torch.bfloat16):
        torch.manual_seed(0)
        m = getattr(gated, core)(I, H, num_layers=2, bidirectional=True, device="cuda")
        x = torch.randn(T, B, I, device="cuda")
        res, ms = {}, {}
        for graphs in ("0", "1"):
            os.environ["GATED_CUDA_GRAPHS"] = graphs
            triton_gpu.empty_cache()
            with torch.autocast("cuda", dtype=amp or torch.float32, enabled=amp is not None):
                for train in (True, False):
                    m.zero_grad(set_to_none=True)
                    step(m, x, train); step(m, x, train)  # first call launches, second captures
                    m.zero_grad(set_to_none=True)
                    res[graphs, train] = step(m, x, train)
                    ms[graphs, train] = timed(lambda: (m.zero_grad(set_to_none=True), step(m, x, train)))
            n = sum(ws.graph is not None for ws in triton_gpu._workspaces.values())
            print(f"{core} {T}x{B}x{I}x{H} 2 layers bidirectional {amp or 'float32'}: graphs={graphs}: "
                  f"{n} loops captured; train {ms[graphs, True]:.2f} ms, infer {ms[graphs, False]:.2f} ms")
        tol = 1e-5 if amp is None else 2e-2  # the same launches; cuBLAS may pick another algorithm on the capture stream
        for train in (True, False):
            for a, b in zip(res["0", train], res["1", train]):
                torch.testing.assert_close(a.float(), b.float(), rtol=tol, atol=tol)
        ref = getattr(gated, core)(I, H, num_layers=2, bidirectional=True, device="cuda", backend="reference")
        ref.load_state_dict(m.state_dict())
        with torch.no_grad():
            got, want = m(x[:32])[0].float(), ref(x[:32])[0].float()
        print(f"  same results with graphs and without; max |triton - reference| over 32 steps {float((got - want).abs().max()):.2e}")
print("graphs check passed")
EOF
check graphs $?

for amp in f32 bf16 f32_tf32; do
    echo "== gated bench --device cuda ($amp)"
    args=(--device cuda --variants UR --layers 1 --directions 1 --no-reference --repeats 3)
    case $amp in
        f32) timeout 100 $PY -m gated.harness.bench "${args[@]}" --cores lstm gru mgu --memory ;;
        bf16) timeout 100 $PY -m gated.harness.bench "${args[@]}" --cores lstm gru mgu --memory --autocast bfloat16 ;;
        f32_tf32)  # the float32 modules with TF32 matmuls and convolutions (the bench's header says so)
            timeout 70 $PY -c 'import runpy, torch
torch.backends.cuda.matmul.allow_tf32 = True
torch.backends.cudnn.allow_tf32 = True
runpy.run_module("gated.harness.bench", run_name="__main__", alter_sys=True)' "${args[@]}" --cores lstm gru ;;
    esac 2>&1 | tee "$OUT/bench_$amp.md"
    check "bench $amp" $?
done

echo "== summary"
if [ ${#failed[@]} -eq 0 ]; then
    echo "every part passed" | tee "$OUT/summary.txt"
    exit 0
fi
printf '%s\n' "failed parts:" "${failed[@]}" | tee "$OUT/summary.txt"
exit 1
