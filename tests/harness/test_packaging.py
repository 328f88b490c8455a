"""What a user of a wheel gets: the experiment specs ship inside the package and ``gated reproduce``
finds them from outside the checkout; without the harness extra the ``gated`` command says how to
install it; the package carries its licence."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from gated.harness.cli import HARNESS_EXTRA

ROOT = Path(__file__).resolve().parents[2]

# run from the unpacked wheel: the specs it ships are found and every run of every spec plans
FROM_WHEEL = """import json, sys
import gated
from gated.harness import compare, reproduce
from gated.harness.cli import main
quick = reproduce.find_specs(reproduce.default_experiments_dir(), "quick", None)
full = reproduce.find_specs(reproduce.default_experiments_dir(), "full", None)
planned = sum(len(reproduce.plan_spec(s, reproduce.Path("runs"), 0)[1]) for s in quick + full if s.get("kind") != "rl")
print(json.dumps({"gated": gated.__file__, "quick": [s["name"] for s in quick], "full": len(full), "planned": planned}))
sys.exit(main(["reproduce", "--only", "no-such-experiment"]))
"""


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel built from a copy of the checkout (a build writes build/ and *.egg-info beside the sources)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "gated", src / "gated", ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet",
                           str(src), "-w", str(tmp / "dist")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (whl,) = (tmp / "dist").glob("gated-*.whl")
    return whl


def test_wheel_ships_specs_and_reproduce_finds_them_outside_the_checkout(wheel, tmp_path):
    names = zipfile.ZipFile(wheel).namelist()
    assert "gated/harness/experiments/copy-quick.json" in names
    assert "gated/harness/experiments/rl/agent.json" in names  # what the rl specs extend
    assert "gated/csrc/recurrence.cpp" in names
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    away = tmp_path / "elsewhere"  # no experiments/ here or above
    away.mkdir()
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(site), "GATED_DISABLE_FUSED": "1", "HOME": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-c", FROM_WHEEL], cwd=away, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2, proc.stderr[-3000:]  # the unknown experiment; the choices are listed
    listed = proc.stderr.split("choose from ", 1)[-1]
    assert {"adding", "copy-T500", "copy-quick"} <= {name.strip() for name in listed.split(",")}
    got = json.loads(proc.stdout.splitlines()[-1])
    assert got["gated"].startswith(str(site))  # the wheel's copy, not the checkout's
    assert got["quick"] == ["copy-quick"] and got["full"] >= 10 and got["planned"] > 50


@pytest.mark.slow
def test_without_the_harness_extra_the_command_says_what_to_install():
    """A core-only install (safetensors, numpy, ... missing): ``gated --help`` and every command
    print how to install the harness extra and exit with status 1, without a traceback."""
    code = ("import contextlib, io, sys\nsys.modules['safetensors'] = None  # a core-only install\n"
            "from gated.harness.cli import main\n"
            "for argv in (['--help'], ['train', '--help'], ['reproduce', '--quick']):\n"
            "    err = io.StringIO()\n"
            "    with contextlib.redirect_stderr(err):\n"
            "        code = main(argv)\n"
            "    print(code, err.getvalue().strip().replace(chr(10), ' '))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert len(lines) == 3
    for line in lines:
        assert line == ("1 gated: the command needs safetensors, which is not installed; install the harness extra: "
                        "pip install 'gated[harness]' (from a checkout: pip install -e '.[harness]')")


def test_harness_extra_is_what_the_command_checks():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert tuple(meta["optional-dependencies"]["harness"]) == HARNESS_EXTRA
    assert meta["license"] == "MIT" and "Copyright (c) 2026 the gated developers" in (ROOT / "LICENSE").read_text()
