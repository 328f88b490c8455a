"""The network every task trains: input layer -> gated RNN (``gated.LSTM/GRU/MGU/MinGRU/MinLSTM/RGLRU/HGRN``)
-> linear head.

Glossary: T time, B batch, I input features, E embedding, H hidden_size, O task outputs.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

import gated

CORE_MODULES = {"lstm": gated.LSTM, "gru": gated.GRU, "mgu": gated.MGU, "mingru": gated.MinGRU, "minlstm": gated.MinLSTM,
                "rglru": gated.RGLRU, "hgrn": gated.HGRN}


class SequenceModel(nn.Module):
    """A task's model: token embedding (language tasks) or raw features, a gated RNN, and a
    linear readout on the steps the task scores (``task.readout``).

    Args:
        cfg: a :class:`~gated.harness.config.ModelConfig`.
        task: the :class:`~gated.harness.tasks.Task` (sizes, readout).
    """

    def __init__(self, cfg, task):
        super().__init__()
        self.readout, self.tail = task.readout, task.tail
        self.embed = nn.Embedding(task.input_size, cfg.embed_size) if task.vocab else None
        in_size = cfg.embed_size if task.vocab else task.input_size
        t_max = cfg.t_max if cfg.t_max is not None else float(max(task.seq_len, 3))
        opts = {k: getattr(cfg, k) for k in ("layer_norm", "zoneout", "recurrent_dropout", "weight_dropout")
                if getattr(cfg, k, None)}  # the cell options that are on (the scan cores take none)
        if "C" in gated.CORES[cfg.core].variants:  # the chrono init's t_max (RG-LRU and HGRN have no chrono)
            opts["t_max"] = t_max
        self.rnn = CORE_MODULES[cfg.core](in_size, cfg.hidden_size, cfg.num_layers, dropout=cfg.dropout,
                                          variant=cfg.variant, backend=cfg.backend, **opts)
        if cfg.forget_bias is not None:
            gated.init.forget_bias_(self.rnn, cfg.forget_bias)
        self.head = nn.Linear(cfg.hidden_size, task.output_size)

    def features(self, x: Tensor) -> Tensor:
        """The RNN's input: ``(T, B, I)`` floats, or ``(T, B)`` ids embedded to ``(T, B, E)``."""
        return self.embed(x) if self.embed is not None else x

    def forward(self, x: Tensor, state=None) -> tuple[Tensor, object]:
        """Returns ``(out, state)``: ``out`` is ``(B, O)`` for "last", ``(tail, B, O)`` for
        "tail", ``(T, B, O)`` for "all"; ``state`` is the RNN's final state."""
        h, state = self.rnn(self.features(x), state)  # (T, B, H)
        if self.readout == "last":
            h = h[-1]  # (B, H)
        elif self.readout == "tail":
            h = h[-self.tail:]  # (tail, B, H)
        out = self.head(h)
        return (out.squeeze(-1) if out.shape[-1] == 1 else out), state


def detach_state(state):
    """Cut the graph between truncated-BPTT windows."""
    if state is None:
        return None
    if isinstance(state, tuple):
        return tuple(s.detach() for s in state)
    return state.detach()


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
    return torch.device(name)
