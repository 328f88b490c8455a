"""Gate diagnostics: every layer's gate activations over time, for the paper's histograms (Fig. 5).

Glossary: L num_layers, D directions, T time, B batch, H hidden_size.
"""

from __future__ import annotations

import torch
from torch import Tensor

from gated.gates import timescale

__all__ = ["gate_activations"]


def _as_gated(module):
    """A ``torch.nn.LSTM``/``GRU`` as the gated module with variant ``"-"`` and its weights."""
    from gated.recurrent import GRU, LSTM

    cls = {torch.nn.LSTM: LSTM, torch.nn.GRU: GRU}.get(type(module))
    if cls is None:
        raise TypeError("gate_activations takes gated.LSTM/GRU/MGU or torch.nn.LSTM/GRU (or gated.MinGRU/MinLSTM), "
                        f"got {type(module).__name__}")
    w = next(module.parameters())
    kw = {"proj_size": module.proj_size} if module.proj_size else {}
    twin = cls(module.input_size, module.hidden_size, module.num_layers, module.bias, module.batch_first,
               module.dropout, module.bidirectional, device=w.device, dtype=w.dtype, variant="-", **kw)
    twin.load_state_dict(module.state_dict())
    return twin.train(module.training)


@torch.no_grad()
def gate_activations(module, input: Tensor, hx=None) -> dict[str, Tensor | None]:
    """Run ``module`` (a ``gated.LSTM/GRU/MGU/MinGRU/MinLSTM``, or a ``torch.nn.LSTM/GRU``, read as
    variant ``"-"``) on ``input`` and return its gates.

    Runs the reference backend, without gradients, on a padded tensor input (time-major, or
    batch-major with ``batch_first``; a PackedSequence works too, with garbage past each length).

    Returns:
        A dict of ``(L, D, T, B, H)`` tensors, in forward time order for both directions:

        - ``"forget"``: the primary gate ``f`` (the fine-grained sigmoid gate in ``*M`` variants);
        - ``"refine"``: the refine gate ``r`` (``None`` without one);
        - ``"master_forget"``: the upsampled master forget gate (``None`` without one);
        - ``"effective"``: the keep gate ``g`` that multiplies the state (``f`` when unrefined; the
          normalised ``g / (g + i)`` of a MinLSTM);
        - ``"timescale"``: ``1 / (1 - g)``, the effective memory length in steps.
    """
    if not hasattr(module, "_run"):
        module = _as_gated(module)
    record: dict = {}
    module._run(input, hx, record=record, backend="reference")
    names = ["forget", "refine", "master_forget", "effective"]
    D = module.num_directions
    result: dict[str, Tensor | None] = {}
    for k, name in enumerate(names):
        if record[(0, 0)][0][k] is None:
            result[name] = None
            continue
        layers = []
        for layer in range(module.num_layers):
            dirs = []
            for d in range(D):
                seq = torch.stack([g[k] for g in record[(layer, d)]])  # (T, B, H)
                dirs.append(seq.flip(0) if d else seq)
            layers.append(torch.stack(dirs))
        result[name] = torch.stack(layers)
    result["timescale"] = timescale(result["effective"])
    return result
