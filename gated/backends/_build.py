"""Build and load the fused CPU extension (gated/csrc/recurrence.cpp) on first use.

The shared library is compiled with the system C++ compiler against the installed torch and
cached under ``$GATED_CACHE`` (default ``~/.cache/gated``)/``ext``, named by a hash of the sources,
the flags, the compiler, the torch version and the CPU's features (:func:`artefact`), so a change
to any of them builds anew. Beside each ``gated_fused_<key>.so`` lie:

- ``.log``: the compile command and the compiler's whole output (the warning names this file);
- ``.failed``: written when that build failed, so neither this nor any later process runs the
  same failing build again; a new source, compiler or torch is a new key and builds again, and
  ``GATED_REBUILD=1`` (or deleting the file) retries the same one;
- ``.lock``: an ``flock`` held while building, so concurrent processes (``gated compare --jobs``)
  build once: the others wait for it and load the result. The kernel drops the lock of a
  process that dies, so a killed build never blocks the next one.

The library is written to a temporary file and renamed into place, so nobody loads half a file.
Any failure (no compiler, no headers, a failed build) is reported once, in one line, and the
caller falls back to the reference backend. ``python -c "from gated.backends import _build;
_build.main()"`` builds now (retrying a failed build) and prints the compiler's output.

Why not ``torch.utils.cpp_extension.load`` (it also caches and locks)? It needs ninja, which
torch's wheels do not install; its cache does not tell CPUs apart (``-march=native`` builds of
one node would be loaded on another through a shared home directory), and a change of flags
rebuilds in place rather than keeping one build per key; its lock is a file that a killed build
leaves behind, after which every process waits forever; and a failed build is retried by every
process. It is no faster: it runs the same compiler on the same one source.
"""

from __future__ import annotations

import contextlib
import fcntl
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


def march() -> str:
    """The target of ``-march``: ``native`` (this CPU), or ``$GATED_MARCH`` (e.g. ``x86-64-v3`` for an
    AVX2 build, ``x86-64-v2`` for one without AVX, to test those kernels on a newer CPU)."""
    value = os.environ.get("GATED_MARCH", "native")
    if not value or not all(c.isalnum() or c in "-_." for c in value):
        raise RuntimeError(f"GATED_MARCH={value!r} is not a -march target such as native or x86-64-v3")
    return value


def _command(src: Path, out: Path, cxx: str) -> list[str]:
    from torch.utils import cpp_extension

    inc = cpp_extension.include_paths()
    lib = os.path.join(os.path.dirname(torch.__file__), "lib")
    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    return [
        cxx, "-O3", "-std=c++20", "-fPIC", "-shared", f"-march={march()}", "-fopenmp",
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


@contextlib.contextmanager
def _locked(path: Path):
    """Hold an exclusive ``flock`` on ``path`` (waiting, with one line, if another process has it)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"gated: waiting for another process that is building the fused CPU kernels ({path}) ...",
                  file=sys.stderr)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # drops the lock


def _mtime(path: Path) -> int | None:
    try:
        return path.stat().st_mtime_ns
    except FileNotFoundError:
        return None


def _build(retry: bool | None = None) -> Path:
    """The path of the built library, building it (once across processes) if needed.

    Raises RuntimeError, first line naming the log, if there is no compiler, the build fails, or
    it failed before (the ``.failed`` marker) and ``retry`` (default: ``GATED_REBUILD=1``) is off."""
    if retry is None:
        retry = os.environ.get("GATED_REBUILD", "0") not in ("", "0")
    cxx = os.environ.get("CXX", "c++")
    if shutil.which(cxx) is None:
        raise RuntimeError(f"no C++ compiler ({cxx!r} not found; set CXX)")
    target = artefact(SOURCE, cxx)
    failed, log = target.with_suffix(".failed"), target.with_suffix(".log")
    _state["log"] = log
    earlier = (f"an earlier build of {SOURCE.name} with this compiler and torch failed, so it is not retried "
               f"(compiler output: {log}; GATED_REBUILD=1 or deleting {failed.name} retries it)")
    if target.exists():
        return target
    seen = _mtime(failed)
    if seen is not None and not retry:
        raise RuntimeError(earlier)
    target.parent.mkdir(parents=True, exist_ok=True)
    with _locked(target.with_suffix(".lock")):
        if target.exists():  # another process built it while this one waited
            return target
        if _mtime(failed) != seen:  # another process tried it while this one waited, and failed
            raise RuntimeError(earlier)
        return _compile(cxx, target, failed, log)


def _compile(cxx: str, target: Path, failed: Path, log: Path) -> Path:
    """Run the compiler (the caller holds the key's lock) into a temporary, then rename it into place."""
    for stale in target.parent.glob(f"{target.name}.*.tmp"):  # left by a killed build of this key
        stale.unlink(missing_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f"{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    command = _command(SOURCE, Path(tmp), cxx)
    start = time.perf_counter()
    print(f"gated: building the fused CPU kernels (first use, half a minute or more; cached in {target.parent}) ...",
          file=sys.stderr)
    try:
        proc = subprocess.run(command, capture_output=True, text=True)
        log.write_text(f"$ {' '.join(command)}\n{proc.stdout}{proc.stderr}exit status {proc.returncode}\n")
        if proc.returncode != 0:
            again = "retried next time"
            if proc.returncode > 0:  # the compiler said no; a signal (Ctrl-C, the OOM killer) may not recur
                failed.write_text(f"exit status {proc.returncode}; see {log.name}\n")
                again = "not retried unless GATED_REBUILD=1"
            last = next((ln for ln in reversed(proc.stderr.splitlines()) if "error" in ln), "")
            raise RuntimeError(f"compiling {SOURCE.name} failed (exit status {proc.returncode}; the compiler's output "
                               f"is in {log}; {again})\n{last}")
        os.replace(tmp, target)
    finally:
        Path(tmp).unlink(missing_ok=True)
    failed.unlink(missing_ok=True)
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
    """Return the ``torch.ops.gated_fused`` namespace, or None (the reason is in ``_state["error"]``,
    one line; the compiler's output, if it ran, in the file ``_state["log"]``)."""
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
                        "gated: compiled without AVX2 (-march=%s), so the fused kernels' float32 matmuls use "
                        "oneDNN/MKL per step instead of the register-tiled kernel (slower)", march())
            except Exception as exc:  # no compiler, missing headers, a failed build: fall back
                # reported once, with context, by gated.backends.resolve
                _state["error"] = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return _state["ops"]


def main() -> int:
    """Build now, retrying a failed build, and print the compiler's output if it fails (exit
    status 1): the debugging entry of DEVELOPERS.md."""
    try:
        print(_build(retry=True))
        return 0
    except RuntimeError as exc:
        print(f"gated: {str(exc).splitlines()[0]}", file=sys.stderr)
        log = _state.get("log")
        if log is not None and Path(log).exists():
            print(Path(log).read_text(), file=sys.stderr)
        return 1
