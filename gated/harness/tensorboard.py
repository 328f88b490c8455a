"""The optional TensorBoard sink of ``gated train --tensorboard`` (``pip install 'gated[tensorboard]'``).

It writes ``RUN/tensorboard/`` beside ``metrics.jsonl`` (which stays the record every tool reads):
each record's numbers as scalars, grouped ``train/``, ``val/`` and ``test/`` (``val_loss`` is
``val/loss``), and at each evaluation histograms of the gates on the first validation batch
(:func:`gated.gate_activations`): ``gates/effective_l{k}`` (the keep gate ``g`` that multiplies
the state), ``gates/forget_l{k}`` and, with a refine gate, ``gates/refine_l{k}``, per layer ``k``.
A resumed run purges the events past its checkpoint, as it truncates ``metrics.jsonl``.
"""

from __future__ import annotations

from pathlib import Path

import torch


def tag(key: str) -> str:
    """The scalar's TensorBoard tag: ``val_loss`` -> ``val/loss``, ``loss`` -> ``train/loss``."""
    for split in ("val", "test"):
        if key.startswith(split + "_"):
            return f"{split}/{key[len(split) + 1:]}"
    return f"train/{key}"


def require():
    """torch's ``SummaryWriter``, or ValueError saying how to install it: called before the run
    directory is written, so a missing package leaves nothing behind."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        from gated.harness.status import install_hint

        raise ValueError(f"--tensorboard needs the tensorboard package; {install_hint('tensorboard')}") from None
    return SummaryWriter


class TensorBoard:
    """A ``SummaryWriter`` on ``RUN/tensorboard`` for a run (re)starting after step ``start``."""

    def __init__(self, run: Path, start: int):
        SummaryWriter = require()
        self.writer = SummaryWriter(log_dir=str(Path(run) / "tensorboard"), purge_step=start + 1 if start else None)

    def record(self, record: dict) -> None:
        for key, value in record.items():
            if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(tag(key), value, record["step"])
        self.writer.flush()

    @torch.no_grad()
    def gates(self, step: int, model, x: torch.Tensor) -> None:
        """Histograms of the gates of ``model`` (a :class:`~gated.harness.model.SequenceModel`) on ``x``."""
        import gated

        was_training = model.training
        model.eval()  # no dropout between layers
        try:
            acts = gated.gate_activations(model.rnn, model.features(x))
        finally:
            model.train(was_training)
        for name in ("effective", "forget", "refine"):
            if acts[name] is not None:
                for layer, values in enumerate(acts[name]):
                    self.writer.add_histogram(f"gates/{name}_l{layer}", values.float().cpu(), step, bins="auto")
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
