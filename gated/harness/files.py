"""The harness's file reads and writes, in one place, with errors that name the file.

- :func:`atomic_write`: temp file in the same directory, fsync, ``os.replace``; a failure
  (a full disk, a read-only directory, Ctrl-C) leaves the old file or none, never half a file.
- :func:`read_json`: a JSON file; bad JSON raises :class:`BadFile` naming the file and line.
- :func:`read_jsonl` / :func:`append_jsonl` / :func:`truncate_jsonl`: ``metrics.jsonl``. A torn
  last line (the process died mid-write) is skipped with one logged warning; a bad line
  elsewhere is an error naming its line.

Every ``OSError`` raised here names the file (a write to an open file reports none by itself).

Nothing is written through a link planted in a run directory: :func:`atomic_write` replaces a
symbolic link (never its target) and writes through only to a device or pipe named by the user
(``/dev/null``, ``/dev/stdout``), and :func:`append_jsonl` and :func:`open_regular` (the run lock,
``train.log``) open only a regular file with one link, without following a link, or raise
:class:`UnsafeFile`.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import stat
import tempfile
from pathlib import Path

logger = logging.getLogger("gated.harness")
_warned: set[Path] = set()
_UMASK = os.umask(0o022)  # read once, at import: a new file gets 0o666 & ~umask, as open() would give it
os.umask(_UMASK)


class BadFile(ValueError):
    """A file the harness reads holds something else than it should (the message names it)."""


class UnsafeFile(OSError):
    """A file the harness would write is a symbolic link, a hard link or not a regular file."""


def open_regular(path: str | Path, flags: int, mode: int = 0o644) -> int:
    """``os.open`` of a file the harness writes in a run directory, never through a link: the last
    component is not followed (``O_NOFOLLOW``, also when creating it), and what is opened must be a
    regular file with one link (a hard link to a file elsewhere would be written too). Raises
    :class:`UnsafeFile` naming the file and what it is."""
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, mode)
    except OSError as e:
        if e.errno == errno.ELOOP or os.path.islink(path):
            raise UnsafeFile(f"{path} is a symbolic link (to {os.readlink(path)!r}); refusing to write through it: "
                             "remove it (gated writes only regular files there)") from None
        raise _named(e, Path(path)) from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
        os.close(fd)
        what = "not a regular file" if not stat.S_ISREG(st.st_mode) else f"a hard link ({st.st_nlink} names)"
        raise UnsafeFile(f"{path} is {what}; refusing to write to it: remove it (gated writes only regular files "
                         "there)")
    os.set_blocking(fd, True)
    return fd


def nofollow(path, flags):  # an ``opener`` for open(): open_regular with open()'s mode
    return open_regular(path, flags, 0o666 & ~_UMASK)


def _named(e: OSError, path: Path) -> OSError:
    if isinstance(e, UnsafeFile):  # names its file already
        return e
    return OSError(e.errno, e.strerror or str(e), str(path))


def atomic_write(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temp file in the same directory, fsync, ``os.replace``."""
    path, tmp = Path(path), None
    try:
        if path.exists() and not path.is_file():  # /dev/null, a FIFO: write through, never replace it
            if path.is_symlink() and path.parent != Path("/dev"):  # not /dev/stdout: a link planted in a run
                raise UnsafeFile(f"{path} is a symbolic link to {os.readlink(path)!r}, not a regular file; refusing "
                                 "to write through it: remove it")
            with open(path, "wb") as f:
                f.write(data)
            return
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o666 & ~_UMASK)  # mkstemp's 0o600 would hide results from a shared group
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise _named(e, path) from None
        raise


def write_text(path: str | Path, text: str) -> None:
    atomic_write(path, text.encode())


def write_json(path: str | Path, value, indent: int | None = 1) -> None:
    atomic_write(path, (json.dumps(value, indent=indent) + "\n").encode())


def _loads(text: str, path: Path, line: int | None = None):
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        where = f"line {line if line is not None else e.lineno}, column {e.colno}"
        raise BadFile(f"{path} is not valid JSON ({where}: {e.msg})") from None


def read_json(path: str | Path, kind: type | None = dict):
    """The JSON value in ``path`` (a ``kind`` unless None); :class:`BadFile` names file and line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise BadFile(f"{path} is not valid JSON (not UTF-8 text)") from None
    value = _loads(text, path)
    if kind is not None and not isinstance(value, kind):
        raise BadFile(f"{path} must hold a JSON {'object' if kind is dict else kind.__name__}, "
                      f"got {type(value).__name__}")
    return value


def read_jsonl(path: str | Path) -> list[dict]:
    """The records (JSON objects, one a line) of ``path``; a torn last line is skipped with one
    logged warning per file."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except FileNotFoundError:
        return []
    numbered = [(i, ln) for i, ln in enumerate(lines, 1) if ln.strip()]
    records = []
    for k, (i, line) in enumerate(numbered):
        try:
            record = _loads(line, path, i)
            if not isinstance(record, dict):
                raise BadFile(f"{path}, line {i}: expected a JSON object, got {type(record).__name__}")
        except BadFile:
            if k < len(numbered) - 1:
                raise
            if path not in _warned:
                _warned.add(path)
                logger.warning("%s: skipping its torn last line %d (a process stopped while writing it)", path, i)
            break
        records.append(record)
    return records


def append_jsonl(path: str | Path, record: dict) -> None:
    try:
        with open(path, "a", encoding="utf-8", opener=nofollow) as f:
            f.write(json.dumps(record) + "\n")
    except OSError as e:
        raise _named(e, Path(path)) from None


def truncate_jsonl(path: str | Path, key: str, last: int) -> None:
    """Keep the records with ``record[key] <= last`` (and drop a torn last line): what a run
    resumed from its checkpoint at ``last`` had logged up to it."""
    path = Path(path)
    if path.exists():
        kept = [r for r in read_jsonl(path) if r.get(key, 0) <= last]
        atomic_write(path, "".join(json.dumps(r) + "\n" for r in kept).encode())
        _warned.discard(path)
