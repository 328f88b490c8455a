"""Gate diagnostics: every layer's gate activations over time, for the paper's histograms (Fig. 5).

Glossary: L num_layers, D directions, T time, B batch, H hidden_size.
"""

from __future__ import annotations

import torch
from torch import Tensor

from gated.gates import timescale

__all__ = ["gate_activations"]


@torch.no_grad()
def gate_activations(module, input: Tensor, hx=None) -> dict[str, Tensor | None]:
    """Run ``module`` (a ``gated.LSTM/GRU/MGU``) on ``input`` and return its gates.

    Runs the reference backend, without gradients, on a padded tensor input (time-major, or
    batch-major with ``batch_first``; a PackedSequence works too, with garbage past each length).

    Returns:
        A dict of ``(L, D, T, B, H)`` tensors, in forward time order for both directions:

        - ``"forget"``: the primary gate ``f`` (the fine-grained sigmoid gate in ``*M`` variants);
        - ``"refine"``: the refine gate ``r`` (``None`` without one);
        - ``"master_forget"``: the upsampled master forget gate (``None`` without one);
        - ``"effective"``: the keep gate ``g`` that multiplies the state (``f`` when unrefined);
        - ``"timescale"``: ``1 / (1 - g)``, the effective memory length in steps.
    """
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
