"""Build and load the fused CPU extension (gated/csrc/recurrence.cpp) on first use.

The shared library is compiled with the system C++ compiler against the installed torch and
cached under ``$GATED_CACHE`` (default ``~/.cache/gated``)/``ext``, named by a hash of the sources,
the flags, the compiler, the torch version and the CPU's features, so a change to any of them
rebuilds it. The build is written to a temporary file and renamed into place, so concurrent
processes never load half a file.
Any failure (no compiler, no headers) is reported once and the caller falls back to the reference.
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import torch

SOURCE = Path(__file__).resolve().parent.parent / "csrc" / "recurrence.cpp"
_state: dict = {}


def cache_dir() -> Path:
    return Path(os.environ.get("GATED_CACHE", Path.home() / ".cache" / "gated")) / "ext"


def _command(src: Path, out: Path, cxx: str) -> list[str]:
    from torch.utils import cpp_extension

    inc = cpp_extension.include_paths()
    lib = os.path.join(os.path.dirname(torch.__file__), "lib")
    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    return [
        cxx, "-O3", "-std=c++20", "-fPIC", "-shared", "-march=native", "-fopenmp",
        f"-D_GLIBCXX_USE_CXX11_ABI={abi}", *[f"-I{p}" for p in inc], f"-I{sysconfig.get_paths()['include']}",
        str(src), "-o", str(out), f"-L{lib}", "-lc10", "-ltorch_cpu", "-ltorch", f"-Wl,-rpath,{lib}",
    ]


def cpu_features() -> str:
    """The CPU's feature flags (Linux): ``-march=native`` builds for them, so a cache shared by
    machines with different CPUs must not hand one's build to the other."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return " ".join(sorted(line.split(":", 1)[1].split()))
    except OSError:
        pass
    return platform.machine() + " " + platform.processor()


def artefact(source: Path, cxx: str) -> Path:
    """Cache path of the library built from ``source`` by ``cxx``: a new source, flag set,
    compiler, torch version or CPU gives a new name, so a stale build is never loaded."""
    version = subprocess.run([cxx, "--version"], capture_output=True, text=True, check=True).stdout
    key = hashlib.sha256()
    headers = sorted(source.parent.glob("*.h"))  # what the source includes from its folder
    command = " ".join(_command(Path("s"), Path("o"), cxx))
    for part in (source.read_bytes(), *(h.read_bytes() for h in headers), command.encode(), version.encode(),
                 torch.__version__.encode(), sys.version.encode(), cpu_features().encode()):
        key.update(part)
    return cache_dir() / f"gated_fused_{key.hexdigest()[:20]}.so"


def _build() -> Path:
    cxx = os.environ.get("CXX", "c++")
    if shutil.which(cxx) is None:
        raise RuntimeError(f"no C++ compiler ({cxx!r} not found; set CXX)")
    target = artefact(SOURCE, cxx)
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    start = time.perf_counter()
    print(f"gated: building the fused CPU kernels (first use; cached in {target.parent}) ...", file=sys.stderr)
    proc = subprocess.run(_command(SOURCE, Path(tmp), cxx), capture_output=True, text=True)
    if proc.returncode != 0:
        os.unlink(tmp)
        raise RuntimeError(f"compiling {SOURCE.name} failed:\n{proc.stderr[-4000:]}")
    os.replace(tmp, target)
    print(f"gated: built the fused CPU kernels in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    return target


def _tune_malloc(ops) -> None:
    """Raise glibc's mmap threshold (see tune_malloc in recurrence.cpp) unless the user set it.

    Opt out with GATED_MALLOPT=0 or by setting MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_THRESHOLD_.
    """
    env = os.environ
    if env.get("GATED_MALLOPT", "1") == "0" or "MALLOC_MMAP_THRESHOLD_" in env or "MALLOC_TRIM_THRESHOLD_" in env:
        return
    if ops.tune_malloc():
        logging.getLogger("gated").info("gated: set glibc M_MMAP_THRESHOLD=32 MiB (GATED_MALLOPT=0 disables)")


def load():
    """Return the ``torch.ops.gated_fused`` namespace, or None (the reason is in ``_state["error"]``)."""
    if "ops" not in _state:
        _state["ops"] = None
        if os.environ.get("GATED_DISABLE_FUSED"):
            _state["error"] = "disabled by GATED_DISABLE_FUSED"
        else:
            try:
                torch.ops.load_library(str(_build()))
                from gated.backends import _ops

                _ops.register()
                _state["ops"] = torch.ops.gated_fused
                _tune_malloc(_state["ops"])
                if os.environ.get("GATED_POOL", "1") == "0":  # no reuse of large buffers (pool.h)
                    _state["ops"].set_pool(False)
                if 4 not in _state["ops"].gemm_kinds():  # the slower GEMM path, said once
                    logging.getLogger("gated").warning(
                        "gated: compiled without AVX-512, so the fused kernels' float32 matmuls use oneDNN/MKL "
                        "instead of the register-tiled kernel (slower, most at small batch)")
            except Exception as exc:  # no compiler, missing headers, a failed build: fall back
                # reported once, with context, by gated.backends.resolve
                _state["error"] = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return _state["ops"]
