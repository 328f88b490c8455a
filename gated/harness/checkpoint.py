"""Checkpoints: weights in safetensors, optimizer/scheduler/RNG/loop state in ``state.pt``.

Layout of ``RUN/checkpoints/``::

    latest.json          {"step", "dir", "files": {name: sha256}, "format", "fingerprint"}
    step-000120/         model.safetensors, state.pt

A checkpoint is written into a temp directory (every file fsync'd), renamed into place, and only
then published by atomically replacing ``latest.json``; older step directories are removed after
that. A failure at any point (a full disk) leaves the previous checkpoint intact and raises
:class:`CheckpointError`. Loading checks every file's sha256 and the config fingerprint and
raises on any mismatch: a damaged checkpoint is reported, never silently replaced.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from gated.harness.data.fetch import atomic_write
from gated.harness.data.formats import sha256_file

FORMAT = "gated-harness-ckpt-1"


class CheckpointError(RuntimeError):
    """A checkpoint could not be written, or is missing, corrupted or incompatible."""


@dataclass
class Checkpoint:
    step: int
    model: dict  # name -> tensor (CPU)
    state: dict  # optimizer, scheduler, rng, loop state


def fingerprint(cfg_dict: dict) -> str:
    """Hash of the config sections that define the trained function (task and model)."""
    frozen = {k: cfg_dict[k] for k in ("task", "model")}
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


def save(run: Path, step: int, model_state: dict, state: dict, cfg_dict: dict) -> Path:
    """Write a checkpoint for ``step`` and publish it; returns its directory.

    Raises:
        CheckpointError: writing failed; the previous checkpoint (if any) is untouched.
    """
    root = Path(run) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    name = f"step-{step:06d}"
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".tmp-{name}-"))
    try:
        weights = {k: v.detach().to("cpu").contiguous() for k, v in model_state.items()}
        _write(tmp / "model.safetensors", lambda p: save_file(weights, str(p), metadata={"format": FORMAT,
                                                                                        "step": str(step)}))
        _write(tmp / "state.pt", lambda p: torch.save(state, p))
        files = {f: sha256_file(tmp / f) for f in ("model.safetensors", "state.pt")}
        _fsync_dir(tmp)
        final = root / name
        current = _read_latest(root, missing_ok=True)
        if final.exists() and (current is None or current["dir"] != name):
            shutil.rmtree(final)
        if final.exists():  # re-saving the published step: publish under a fresh name first
            final = root / f"{name}-{os.getpid()}-{tmp.name[-6:]}"
        os.replace(tmp, final)
        _fsync_dir(root)
        latest = {"format": FORMAT, "step": step, "dir": final.name, "files": files,
                  "fingerprint": fingerprint(cfg_dict)}
        atomic_write(root / "latest.json", (json.dumps(latest, indent=1) + "\n").encode())
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        prev = _read_latest(root, missing_ok=True)
        kept = f"the previous checkpoint (step {prev['step']}) is intact" if prev else "no earlier checkpoint exists"
        raise CheckpointError(f"could not write the checkpoint for step {step} in {root}: {e}; {kept}") from e
    for old in root.glob("step-*"):
        if old.name != final.name:
            shutil.rmtree(old, ignore_errors=True)
    return final


def _read_latest(root: Path, missing_ok: bool = False) -> dict | None:
    path = root / "latest.json"
    if not path.exists():
        if missing_ok:
            return None
        raise CheckpointError(f"no checkpoint in {root.parent} ({path} is missing)")
    try:
        latest = json.loads(path.read_text())
        if latest.get("format") != FORMAT:
            raise CheckpointError(f"{path}: format {latest.get('format')!r} is not {FORMAT!r} (incompatible)")
        int(latest["step"]), latest["dir"], dict(latest["files"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as e:
        raise CheckpointError(f"{path} is corrupted ({e.__class__.__name__}: {e})") from None
    return latest


def open_run(cfg, resume: bool, command: str) -> Path:
    """The run directory ``cfg.train.out`` of ``gated train`` or ``gated rl train`` (``command``).
    A new run refuses a directory that already holds one and writes ``config.json``; a resumed run
    is used as it is."""
    if cfg.train.out is None:
        raise ValueError("--out is required: the run directory for config.json, metrics.jsonl and checkpoints")
    run = Path(cfg.train.out)
    if not resume:
        if (run / "config.json").exists() or has_checkpoint(run):
            raise ValueError(f"{run} already holds a run; continue it with `{command} --resume {run}` "
                             "or choose another --out")
        run.mkdir(parents=True, exist_ok=True)
        atomic_write(run / "config.json", (json.dumps(cfg.to_dict(), indent=2) + "\n").encode())
    return run


def has_checkpoint(run: Path) -> bool:
    return (Path(run) / "checkpoints" / "latest.json").exists()


def load(run: Path, cfg_dict: dict | None = None) -> Checkpoint:
    """Load and verify the latest checkpoint of a run (tensors on CPU).

    Args:
        run: the run directory.
        cfg_dict: the run's config (``config.json``); its task and model sections must match the
            checkpoint's fingerprint.
    Raises:
        CheckpointError: missing, corrupted (checksum, unreadable) or incompatible.
    """
    root = Path(run) / "checkpoints"
    latest = _read_latest(root)
    ckpt_dir = root / latest["dir"]
    for fname, digest in latest["files"].items():
        path = ckpt_dir / fname
        if not path.is_file():
            raise CheckpointError(f"checkpoint {ckpt_dir} is corrupted: {fname} is missing")
        got = sha256_file(path)
        if got != digest:
            raise CheckpointError(f"checkpoint {ckpt_dir} is corrupted: {fname} has sha256 {got[:16]}..., "
                                  f"latest.json records {digest[:16]}...; refusing to resume or start fresh "
                                  "(delete the run directory to start over)")
    if cfg_dict is not None and latest.get("fingerprint") != fingerprint(cfg_dict):
        raise CheckpointError(f"checkpoint {ckpt_dir} was written for a different task/model config than "
                              f"{Path(run) / 'config.json'} (incompatible)")
    try:
        model = load_file(str(ckpt_dir / "model.safetensors"))
        state = torch.load(ckpt_dir / "state.pt", map_location="cpu", weights_only=True)
    except (SafetensorError, RuntimeError, OSError, EOFError, ValueError) as e:
        raise CheckpointError(f"checkpoint {ckpt_dir} is corrupted or unreadable: {e}") from None
    return Checkpoint(int(latest["step"]), model, state)


def load_model_state(module: torch.nn.Module, weights: dict, where: str) -> None:
    """``load_state_dict(strict=True)``, reporting a mismatch as an incompatible checkpoint."""
    try:
        module.load_state_dict(weights, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint {where} does not fit this model (incompatible): {e}") from None
