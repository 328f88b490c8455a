"""The extension build (gated/backends/_build.py) with a fake compiler and a tiny fake source in a
temporary GATED_CACHE, so nothing here compiles the real kernels: the compiler's output is kept in
a log the error names, a failed build is not retried (in this or a fresh process) until its key
changes or GATED_REBUILD=1, concurrent processes compile once, and a killed build blocks nobody."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gated.backends import _build

FAKE_CXX = """#!/bin/sh
# a stand-in for c++: counts its builds, then fails with a known message or writes its -o file
if [ "$1" = "--version" ]; then echo "fake-c++ 1.0"; exit 0; fi
echo build >> "$FAKE_CXX_CALLS"
if [ -n "$FAKE_CXX_FAIL" ]; then echo "recurrence.cpp:1:1: error: fake failure 42" >&2; exit 1; fi
sleep "${FAKE_CXX_SLEEP:-0}"
while [ $# -gt 0 ]; do [ "$1" = "-o" ] && echo library > "$2"; shift; done
"""

# a fresh process: point the build at the fake source, then run CALL
FRESH = """import sys, time
from pathlib import Path
from gated.backends import _build
_build.SOURCE = Path(sys.argv[1])
"""


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """The fake compiler (CXX), a fake source and a fresh cache; ``fake.calls()`` counts builds."""
    cxx = tmp_path / "fake-cxx"
    cxx.write_text(FAKE_CXX)
    cxx.chmod(0o755)
    src = tmp_path / "src" / "recurrence.cpp"
    src.parent.mkdir()
    src.write_text("// version 1\n")
    calls = tmp_path / "calls"
    for name, value in (("CXX", str(cxx)), ("GATED_CACHE", str(tmp_path / "cache")), ("FAKE_CXX_CALLS", str(calls))):
        monkeypatch.setenv(name, value)
    for name in ("GATED_REBUILD", "GATED_DISABLE_FUSED", "FAKE_CXX_FAIL", "FAKE_CXX_SLEEP"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(_build, "SOURCE", src)
    monkeypatch.setattr(_build, "_state", {})

    class Fake:
        source = src

        @staticmethod
        def calls() -> int:
            return len(calls.read_text().splitlines()) if calls.exists() else 0

        @staticmethod
        def target() -> Path:
            return _build.artefact(src, str(cxx))

        @staticmethod
        def fresh(call: str, *args: str, **kw):
            return subprocess.Popen([sys.executable, "-c", FRESH + call, str(src), *args], stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True, **kw)

    return Fake


def test_failed_build_is_logged_and_remembered(fake, monkeypatch):
    monkeypatch.setenv("FAKE_CXX_FAIL", "1")
    with pytest.raises(RuntimeError) as err:
        _build._build()
    log = fake.target().with_suffix(".log")
    first = str(err.value).splitlines()[0]
    assert f"the compiler's output is in {log}" in first
    assert "fake failure 42" in log.read_text() and "-march=native" in log.read_text()  # all of it, and the command
    assert fake.calls() == 1 and fake.target().with_suffix(".failed").exists()
    # a fresh process does not run the failing compiler again; its one-line reason names the log
    proc = fake.fresh("print(_build.load(), '|', _build._state['error'])")
    out, errs = proc.communicate(timeout=120)
    assert proc.returncode == 0, errs
    assert out.startswith("None | an earlier build") and str(log) in out and "GATED_REBUILD=1" in out
    assert fake.calls() == 1
    # GATED_REBUILD=1 retries the same build; a changed source is a new key and builds anew
    monkeypatch.setenv("GATED_REBUILD", "1")
    with pytest.raises(RuntimeError, match="failed"):
        _build._build()
    assert fake.calls() == 2
    monkeypatch.delenv("GATED_REBUILD")
    monkeypatch.delenv("FAKE_CXX_FAIL")
    fake.source.write_text("// version 2, fixed\n")
    assert _build._build().read_text() == "library\n" and fake.calls() == 3


@pytest.mark.slow
def test_concurrent_processes_build_once(fake, tmp_path, monkeypatch):
    """Two processes ask for the library at the same moment (a barrier): one compiles, the other
    waits for the lock and loads its result."""
    monkeypatch.setenv("FAKE_CXX_SLEEP", "1")
    ready = tmp_path / "ready"
    ready.mkdir()
    barrier = ("(Path(sys.argv[2]) / sys.argv[3]).touch()\n"
               "while len(list(Path(sys.argv[2]).iterdir())) < 2: time.sleep(0.005)\n"
               "print(_build._build())")
    procs = [fake.fresh(barrier, str(ready), name) for name in ("a", "b")]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    assert {o.strip() for o, _ in outs} == {str(fake.target())}
    assert fake.calls() == 1
    assert sum("waiting for another process" in e for _, e in outs) == 1


def test_killed_build_blocks_nobody(fake, tmp_path, monkeypatch):
    """A build killed by SIGKILL leaves no lock behind (flock dies with its process) and no failure
    marker: the next build runs."""
    monkeypatch.setenv("FAKE_CXX_SLEEP", "60")
    proc = fake.fresh("_build._build()", start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while fake.calls() == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert fake.calls() == 1
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the process and its sleeping fake compiler
        proc.communicate()
    monkeypatch.setenv("FAKE_CXX_SLEEP", "0")
    assert _build._build() == fake.target() and fake.calls() == 2
    assert not list(fake.target().parent.glob("*.tmp"))  # the killed build's half-written file is gone


def test_no_compiler_is_one_line(fake, monkeypatch):
    monkeypatch.setenv("CXX", str(Path(fake.source).parent / "no-such-c++"))
    assert _build.load() is None
    assert _build._state["error"].startswith("no C++ compiler")
