"""The fused kernels on the instruction sets this CPU is not built for by default.

The suite builds the extension with ``-march=native``, so on an AVX-512 machine the AVX2 kernels
(8-lane tiles, an 8 x 8 transpose, AVX2's division for 1/x) and the plain C++ ones would never run.
Here the extension is rebuilt with ``GATED_MARCH`` for every lower instruction set the CPU can run,
and a subset of the suite runs against each build in a fresh process: the tiled GEMM at sizes that
fill whole and partial panels, every core and variant against the reference (NaN-poisoned
buffers), NaN and infinity propagation, and one-step streaming calls.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gated.backends import _build

pytestmark = pytest.mark.skipif(shutil.which(os.environ.get("CXX", "c++")) is None, reason="no C++ compiler")

TESTS = Path(__file__).parent
# -march target -> the CPU flags it needs and the kernels' instruction set (recurrence.cpp's isa())
TARGETS = {"x86-64-v3": ({"avx2", "fma"}, "avx2"), "x86-64-v2": (set(), "default")}
SUBSET = [
    f"{TESTS / 'test_fused.py'}::test_fused_tiled_gemm_at_full_panel_sizes",
    f"{TESTS / 'test_fused.py'}::test_one_step_calls_equal_the_sequence",
    f"{TESTS / 'test_fused.py'}::test_fused_packed_sequence",
    f"{TESTS / 'test_nonfinite.py'}::test_nonfinite_propagates_like_the_reference",
]


def _flags() -> set[str]:
    return set(_build.cpu_features().split())


def _can_run(target: str) -> bool:
    """Whether this CPU runs ``target``'s code."""
    return os.uname().machine == "x86_64" and TARGETS[target][0] <= _flags()


def runnable(target: str) -> bool:
    """Whether this CPU runs ``target``'s code and its kernels differ from the native build's (by
    the CPU's flags, without building: tests/conftest.py builds these beside the suite's own)."""
    if not _can_run(target):
        return False
    flags = _flags()
    native = "avx512" if "avx512f" in flags else "avx2" if {"avx2", "fma"} <= flags else "default"
    return _build.march() == "native" and native != TARGETS[target][1]


@pytest.mark.slow
@pytest.mark.parametrize("target", list(TARGETS))
def test_kernels_on_a_lower_instruction_set(target):
    isa = TARGETS[target][1]
    if not _can_run(target):
        pytest.skip(f"this CPU cannot run {target} code")
    ops = _build.load()
    if ops is not None and ops.isa() == isa:
        pytest.skip(f"the native build already is {isa} (the rest of the suite tests it)")
    env = {**os.environ, "GATED_MARCH": target}
    check = subprocess.run([sys.executable, "-c", "from gated.backends import _build; print(_build.load().isa())"],
                           capture_output=True, text=True, env=env, timeout=600)
    assert check.returncode == 0 and check.stdout.split()[-1] == isa, check.stderr[-3000:]
    # the parametrised cases in f32 only (f64 runs the same code on every instruction set), fewer GEMM pins
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *SUBSET,
                           "-k", "not f64 and not onednn"],
                          capture_output=True, text=True, env=env, timeout=900, cwd=TESTS.parent)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout
