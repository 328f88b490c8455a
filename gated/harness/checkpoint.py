"""Checkpoints: weights in safetensors, optimizer/scheduler/RNG/loop state in ``state.pt``.

Layout of ``RUN/checkpoints/``::

    latest.json          {"step", "dir", "files": {name: sha256}, "format", "fingerprint"}
    step-000120/         model.safetensors, state.pt, manifest.json (latest.json's record less "dir")
    best/                with ``--keep-best``: the checkpoint of the best validation metric so far,
      best.json          as latest.json plus {"metric", "value", "higher_is_better"}
      step-000060/       (later saves of latest never touch it; a better evaluation replaces it)

A checkpoint is written into a temp directory (every file fsync'd), renamed into place, and only
then published by atomically replacing ``latest.json``; older step directories are removed after
that. Only step directories of earlier steps are removed (superseded); one of a later step is kept.
A failure at any point (a full disk) leaves the previous checkpoint intact and raises
:class:`CheckpointError`. Loading checks every file's sha256 and the config fingerprint and
raises on any mismatch: a damaged checkpoint is reported, never silently replaced.

``latest.json`` is only an index: each step directory carries its own ``manifest.json``. When
the index is missing or unreadable but step directories exist, loading takes the newest one whose
files match their manifest's checksums and logs that it did; with none intact it raises an error
naming each directory and what is wrong with it. A run is never restarted from step 0 while a
step directory exists.

A training process holds an exclusive lock on its run directory (``flock`` on ``RUN/.lock``,
which the kernel drops when the process ends, even by kill -9): see :func:`open_run`. The lock
file is opened without following symbolic links and must be a regular file with one link, so
the lock can never write through a link to a file outside the run.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import logging
import os
import pickle
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from gated.harness.data.formats import sha256_file
from gated.harness.files import BadFile, open_regular, read_json, write_json

FORMAT = "gated-harness-ckpt-1"
LOCK = ".lock"
MANIFEST = "manifest.json"  # in each step directory: its step, files' sha256, format and fingerprint
_STEP_DIR = re.compile(r"step-(\d+)(-.+)?")  # step-000120, or step-000120-PID-XXXXXX (a re-save of a step)
logger = logging.getLogger("gated.harness")
BEST = "best"  # RUN/checkpoints/best/, indexed by best.json
OUTSIDE_RESULTS = ("out", "progress", "tensorboard")  # flags that change no result: a restart may differ in them
_held: dict[Path, int] = {}  # run directory -> descriptor of its locked .lock file


class CheckpointError(RuntimeError):
    """A checkpoint could not be written, or is missing, corrupted or incompatible."""


class RunInUse(CheckpointError):
    """Another process holds the run directory's lock (it is training that run)."""




@dataclass
class Checkpoint:
    step: int
    model: dict  # name -> tensor (CPU)
    state: dict  # optimizer, scheduler, rng, loop state


def fingerprint(cfg_dict: dict) -> str:
    """Hash of the config sections that define the trained function (task and model); a field
    added after runs were saved (``config.LATER_FIELDS``) counts only when it is not at its
    default, so those runs keep their fingerprint."""
    from gated.harness.config import LATER_FIELDS

    frozen = {k: {f: v for f, v in cfg_dict[k].items() if f not in LATER_FIELDS.get(k, {})
                  or v != LATER_FIELDS[k][f]} for k in ("task", "model")}
    return hashlib.sha256(json.dumps(frozen, sort_keys=True).encode()).hexdigest()[:16]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write(path: Path, writer) -> None:
    writer(path)
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _slot(run: Path, best: bool) -> tuple[Path, str]:
    """The directory and index file of the latest checkpoint, or of the best one."""
    root = Path(run) / "checkpoints"
    return (root / BEST, "best.json") if best else (root, "latest.json")


def save(run: Path, step: int, model_state: dict, state: dict, cfg_dict: dict, best: dict | None = None) -> Path:
    """Write a checkpoint for ``step`` and publish it; returns its directory. With ``best``
    (``{"metric", "value", "higher_is_better"}``) it is the keep-best checkpoint, in ``best/``.

    Raises:
        CheckpointError: writing failed; the previous checkpoint (if any) is untouched.
    """
    root, index = _slot(run, best is not None)
    name = f"step-{step:06d}"
    tmp = final = None
    try:
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".tmp-{name}-"))
        weights = {k: v.detach().to("cpu").contiguous() for k, v in model_state.items()}
        _write(tmp / "model.safetensors", lambda p: save_file(weights, str(p), metadata={"format": FORMAT,
                                                                                        "step": str(step)}))
        _write(tmp / "state.pt", lambda p: torch.save(state, p))
        files = {f: sha256_file(tmp / f) for f in ("model.safetensors", "state.pt")}
        record = {"format": FORMAT, "step": step, "files": files, "fingerprint": fingerprint(cfg_dict)} | (best or {})
        write_json(tmp / MANIFEST, record)  # atomic and fsync'd
        _fsync_dir(tmp)
        final = root / name
        if os.path.lexists(final):  # the same step saved before (published or not): never replace it in place
            final = root / f"{name}-{os.getpid()}-{tmp.name[-6:]}"
        os.replace(tmp, final)
        _fsync_dir(root)
        write_json(root / index, record | {"dir": final.name})
    except BaseException as e:  # a full disk, Ctrl-C, ...: remove what this save wrote, keep the rest
        prev = _published(root, index)
        for path in (tmp, final):
            if path is not None and path.exists() and (prev is None or path.name != prev["dir"]):
                shutil.rmtree(path, ignore_errors=True)
        # a full disk raises OSError, or SafetensorError / torch's RuntimeError (inline_container.cc)
        if not isinstance(e, (OSError, SafetensorError, RuntimeError)):
            raise
        kept = f"the previous checkpoint (step {prev['step']}) is intact" if prev else "no earlier checkpoint exists"
        raise CheckpointError(f"could not write the checkpoint for step {step} in {root}: {_full(e, root)}{e}; "
                              f"{kept}") from None
    for old in _step_dirs(root):  # superseded: earlier steps, and older copies of this one
        old_step = _step_of(old)
        if old.name != final.name and old_step is not None and old_step <= step:
            shutil.rmtree(old, ignore_errors=True)
    return final


FULL = 64 << 20  # below this many free bytes a failed write is reported as a full disk


def _full(e: BaseException, root: Path) -> str:
    """"the disk is full (...): " when the failure is one (torch's writer says only "file write
    failed"), else ""."""
    try:
        free = shutil.disk_usage(root).free
    except OSError:
        free = None
    if getattr(e, "errno", None) == errno.ENOSPC or (free is not None and free < FULL):
        return f"the disk is full ({'?' if free is None else free >> 20} MiB free on the file system of {root}): "
    return ""


def _step_of(path: Path) -> int | None:
    m = _STEP_DIR.fullmatch(path.name)
    return int(m.group(1)) if m else None


def _step_dirs(root: Path) -> list[Path]:
    """The step directories in ``root`` (real directories, not links), newest step first."""
    found = [p for p in root.glob("step-*") if _step_of(p) is not None and p.is_dir() and not p.is_symlink()]
    return sorted(found, key=lambda p: (_step_of(p), p.stat().st_mtime), reverse=True)


def _check_files(ckpt_dir: Path, files: dict) -> str | None:
    """What is wrong with the checkpoint files against their recorded sha256, None if nothing."""
    for fname, digest in files.items():
        path = ckpt_dir / str(fname)
        if not path.is_file():
            return f"{fname} is missing"
        got = sha256_file(path)
        if got != digest:
            return f"{fname} has sha256 {got[:16]}..., its index records {str(digest)[:16]}..."
    return None


def _recover(root: Path, index: str, why: str) -> dict | None:
    """The record of the newest intact step directory when the index is missing or unreadable
    (``why``), logged; None when there is no step directory at all; :class:`CheckpointError`
    naming every step directory and its fault when none is intact."""
    faults = []
    for ckpt_dir in _step_dirs(root):
        manifest = ckpt_dir / MANIFEST
        if not manifest.is_file():
            faults.append(f"{ckpt_dir.name}: no {MANIFEST} (written by an older gated; its files cannot be verified)")
            continue
        try:
            record = read_json(manifest)
            if record.get("format") != FORMAT:
                raise BadFile(f"format {record.get('format')!r} is not {FORMAT!r}")
            int(record["step"]), dict(record["files"])
        except (BadFile, OSError, KeyError, TypeError, ValueError) as e:
            faults.append(f"{ckpt_dir.name}: {MANIFEST} is unreadable ({e})")
            continue
        fault = _check_files(ckpt_dir, record["files"])
        if fault is not None:
            faults.append(f"{ckpt_dir.name}: {fault}")
            continue
        logger.warning("%s %s; using %s, the newest intact checkpoint (step %d, checksums verified)",
                       root / index, why, ckpt_dir, int(record["step"]))
        return record | {"dir": ckpt_dir.name}
    if not faults:
        return None
    raise CheckpointError(f"{root / index} {why}, and no step directory in {root} holds an intact checkpoint: "
                          f"{'; '.join(faults)}. Nothing was changed; restore {index} (or move these directories "
                          "away to start the run over)")


def _published(root: Path, index: str = "latest.json") -> dict | None:
    """The index (``latest.json``) if it is readable, else None."""
    try:
        return _read_latest(root, missing_ok=True, index=index, recover=False)
    except (CheckpointError, OSError):
        return None


def _read_index(path: Path) -> dict:
    try:
        latest = read_json(path)
    except BadFile as e:
        raise CheckpointError(f"{path} is corrupted: {e}") from None
    if latest.get("format") != FORMAT:
        raise CheckpointError(f"{path}: format {latest.get('format')!r} is not {FORMAT!r} (incompatible)")
    try:
        int(latest["step"]), str(latest["dir"]), dict(latest["files"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path} is corrupted ({e.__class__.__name__}: {e})") from None
    return latest


def _read_latest(root: Path, missing_ok: bool = False, index: str = "latest.json", recover: bool = True) -> dict | None:
    """The index record of ``root``; with ``recover``, a missing or unreadable index falls back to
    the newest intact step directory (:func:`_recover`)."""
    path = root / index
    if not os.path.lexists(path):
        found = _recover(root, index, "is missing") if recover else None
        if found is not None or missing_ok:
            return found
        raise CheckpointError(f"no checkpoint in {root.parent} ({path} is missing)")
    try:
        return _read_index(path)
    except (CheckpointError, OSError) as e:
        found = _recover(root, index, f"is unreadable ({e})") if recover and _step_dirs(root) else None
        if found is not None:
            return found
        if isinstance(e, OSError):
            raise CheckpointError(f"{path} is unreadable: {e}") from None
        raise


def open_run(cfg, resume: bool, command: str) -> Path:
    """Open the run directory ``cfg.train.out`` of ``gated train`` or ``gated rl train``
    (``command``) for training, and lock it until :func:`close_run` or the process's end.

    Raises :class:`RunInUse` if another process holds it. A new run refuses a directory that
    already holds a run, except one with this very config and no checkpoint (a run stopped
    before its first checkpoint), which starts again from step 0, as ``--resume`` does. Removes
    the temporaries a killed process left, then writes ``config.json``."""
    if cfg.train.out is None:
        raise ValueError("--out is required: the run directory for config.json, metrics.jsonl and checkpoints")
    run = Path(cfg.train.out)
    run.mkdir(parents=True, exist_ok=True)
    lock_run(run)
    try:
        if not resume:
            _refuse_other_run(run, cfg, command)
        slots = (run / "checkpoints", run / "checkpoints" / BEST)
        for tmp in [*run.glob(".*.tmp"), *(t for s in slots for t in (*s.glob(".*.tmp"), *s.glob(".tmp-*")))]:
            if tmp.is_dir() and not tmp.is_symlink():
                shutil.rmtree(tmp)
            else:
                tmp.unlink()
        write_json(run / "config.json", cfg.to_dict(), indent=2)
    except BaseException:
        close_run(run)
        raise
    return run


def _refuse_other_run(run: Path, cfg, command: str) -> None:
    cont = f"continue it with `{command} --resume {run}` or choose another --out"
    if has_checkpoint(run):
        raise ValueError(f"{run} already holds a run; {cont}")
    if (run / "config.json").exists():
        saved = read_json(run / "config.json")
        changed = [f"--{k.replace('_', '-')}" for section, values in cfg.to_dict().items() for k, v in values.items()
                   if k not in OUTSIDE_RESULTS
                   and (not isinstance(saved.get(section), dict) or saved[section].get(k, ...) != v)]
        if changed:
            raise ValueError(f"{run} already holds a run with another config ({', '.join(changed)} differ); {cont}")
    elif (run / "metrics.jsonl").exists():
        raise ValueError(f"{run} holds a metrics.jsonl but no config.json; choose another --out")


def lock_run(run: Path) -> None:
    """Take the run's exclusive lock for this process; :class:`RunInUse` names the holder's pid."""
    key = Path(run).resolve()
    if key in _held:
        return
    fd = open_regular(Path(run) / LOCK, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        pid = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise RunInUse(f"run {run} is in use by pid {pid} (another process is training it)") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    _held[key] = fd


def close_run(run: str | Path | None) -> None:
    """Release the lock :func:`open_run` or :func:`lock_run` took (nothing if this process holds none)."""
    fd = _held.pop(Path(run).resolve(), None) if run is not None else None
    if fd is not None:
        os.close(fd)  # closing the descriptor drops the flock


def has_checkpoint(run: Path) -> bool:
    """Whether the run has a published checkpoint or any step directory (which :func:`load` then
    verifies: a lost ``latest.json`` never makes a run start over)."""
    root = Path(run) / "checkpoints"
    return os.path.lexists(root / "latest.json") or bool(_step_dirs(root))


FINISHED = "finished.json"  # in a run directory: {"step": the step its training ended at}


def mark_finished(run: Path, step: int) -> None:
    """Record that the run's training ended at ``step`` (after its last checkpoint is written): its
    results stand without the checkpoints, which may then be pruned, or be left behind when the
    results are copied (config.json, task.json, metrics.jsonl and this file)."""
    write_json(Path(run) / FINISHED, {"step": int(step)})


def finished_step(run: Path) -> int | None:
    """The step :func:`mark_finished` recorded, None if there is none (or it is unreadable)."""
    try:
        return int(read_json(Path(run) / FINISHED)["step"])
    except (OSError, BadFile, KeyError, TypeError, ValueError):
        return None


def ended_at(run: Path, total: int) -> int | None:
    """The step the run's training ended at when it reached ``total``: its checkpoint's, or the one
    :func:`mark_finished` recorded (its checkpoints pruned, or its results copied without them);
    None while it is unfinished."""
    for step in (latest_step(run), finished_step(run)):
        if step is not None and step >= total:
            return step
    return None


def latest_step(run: Path) -> int | None:
    """The step of the run's checkpoint (``latest.json``, or the newest intact step directory when
    it is lost), None if it has none."""
    latest = _read_latest(Path(run) / "checkpoints", missing_ok=True)
    return None if latest is None else int(latest["step"])


def best_record(run: Path) -> dict | None:
    """``best.json`` of the keep-best checkpoint (step, metric, value, ...), None if there is none."""
    root, index = _slot(run, True)
    return _read_latest(root, missing_ok=True, index=index)


def load(run: Path, cfg_dict: dict | None = None, best: bool = False) -> Checkpoint:
    """Load and verify the latest checkpoint of a run (``best``: the keep-best one), tensors on CPU.

    Args:
        run: the run directory.
        cfg_dict: the run's config (``config.json``); its task and model sections must match the
            checkpoint's fingerprint.
    Raises:
        CheckpointError: missing, corrupted (checksum, unreadable) or incompatible.
    """
    root, index = _slot(run, best)
    latest = _read_latest(root, index=index)
    ckpt_dir = root / latest["dir"]
    fault = _check_files(ckpt_dir, latest["files"])
    if fault is not None:
        raise CheckpointError(f"checkpoint {ckpt_dir} is corrupted: {fault}; refusing to resume or start fresh "
                              "(delete the run directory to start over)")
    if cfg_dict is not None and latest.get("fingerprint") != fingerprint(cfg_dict):
        raise CheckpointError(f"checkpoint {ckpt_dir} was written for a different task/model config than "
                              f"{Path(run) / 'config.json'} (incompatible)")
    try:
        model = load_file(str(ckpt_dir / "model.safetensors"))
        state = torch.load(ckpt_dir / "state.pt", map_location="cpu", weights_only=True)
        if not isinstance(state, dict):
            raise TypeError(f"state.pt holds a {type(state).__name__}, not a dict")
    except pickle.UnpicklingError:  # weights_only=True refuses pickles of anything but tensors and plain data
        raise CheckpointError(f"checkpoint {ckpt_dir} is corrupted or unreadable: state.pt holds objects other than "
                              "tensors and plain data (refused, not loaded)") from None
    except (SafetensorError, RuntimeError, OSError, EOFError, ValueError, TypeError) as e:
        raise CheckpointError(f"checkpoint {ckpt_dir} is corrupted or unreadable: {e}") from None
    return Checkpoint(int(latest["step"]), model, state)


def load_model_state(module: torch.nn.Module, weights: dict, where: str) -> None:
    """``load_state_dict(strict=True)``, reporting a mismatch as an incompatible checkpoint."""
    try:
        module.load_state_dict(weights, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint {where} does not fit this model (incompatible): {e}") from None
