"""``gated.MinGRU`` and ``gated.MinLSTM``: the paper's gates on parallel-scan recurrences.

minGRU and minLSTM (Feng et al. 2024, "Were RNNs All We Needed?", arXiv 2410.01201) drop the
recurrent weight from the gates, so every coefficient of ``h_t = a_t h_{t-1} + b_t`` is a function of
``x_t`` and a layer trains with a scan (:mod:`gated.backends.scan`) instead of a step loop. The
paper's refine gate and UGI act on their keep gate unchanged, and the result is still a scan:
UR-minGRU is ``f = sigma(P_f + b_f)``, ``r = sigma(P_r - b_f)``, ``g = f^2 + 2 r f (1 - f)``,
``h_t = g h_{t-1} + (1 - g) P_n``. Conventions and measurements: ``docs/scan.md``.

Glossary: T time, B batch, I input_size, H hidden_size, L num_layers, D directions.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from gated.backends import scan
from gated.backends.scan import linear_scan
from gated.init import VARIANT_INITS
from gated.recurrent import RNNBase

__all__ = ["MinGRU", "MinLSTM", "linear_scan"]


class _ScanRNN(RNNBase):
    """torch.nn.GRU's constructor, call, checks and PackedSequence handling (:class:`gated.recurrent.RNNBase`),
    with the scan cores' parameters (no ``weight_hh``/``bias_hh``) and the scan backends."""

    @property
    def mode(self) -> str:
        return type(self).__name__

    def _check_backend(self, name: str) -> str:
        return scan.check_name(name)

    def _resolve_backend(self, name: str, x: Tensor):
        return scan.resolve(name, self.layout, x)

    def _add_params(self, suffix: str, in_size: int, factory_kwargs: dict) -> None:
        """``weight_ih`` ``(G, in)``, ``bias_ih`` ``(G,)`` and ``forget_bias`` ``(H,)``, each + suffix."""
        G, H = self.layout.rows, self.hidden_size
        names = ["weight_ih"] + (["bias_ih"] if self.bias else []) + (["forget_bias"] if self.variant.has_forget_bias else [])
        shapes = {"weight_ih": (G, in_size), "bias_ih": (G,), "forget_bias": (H,)}
        for name in names:
            self.register_parameter(name + suffix, nn.Parameter(torch.empty(shapes[name], **factory_kwargs)))
        self._suffixes.append(suffix)
        self._all_weights.append([name + suffix for name in names])

    def reset_parameters(self) -> None:
        """torch.nn.Linear's init (weights and biases ~ U(-1/sqrt(n), 1/sqrt(n)), ``n`` the layer's
        input width: the gates and the candidate are projections of ``x_t`` alone), then ``b_f = 0``,
        then the variant's initialiser (UGI or chrono)."""
        with torch.no_grad():
            for sfx in self._suffixes:
                w = getattr(self, "weight_ih" + sfx)
                k = 1.0 / math.sqrt(w.shape[1])
                for name in ("weight_ih", "bias_ih"):
                    p = getattr(self, name + sfx, None)
                    if p is not None:
                        nn.init.uniform_(p, -k, k)
                fb = getattr(self, "forget_bias" + sfx, None)
                if fb is not None:
                    fb.zero_()
        if self.variant.init is not None:
            VARIANT_INITS[self.variant.init](self)


_DOC_ARGS = """
    Args:
        input_size: features per time step, ``I``.
        hidden_size: units ``H`` per direction. Feng et al. widen the layer by an expansion factor
            (``H = alpha I``); here that is just ``hidden_size``, and no down-projection follows.
        num_layers: stacked layers as in torch.nn.GRU (layer ``k > 0`` reads the ``D*H`` outputs of
            layer ``k - 1``); Feng et al.'s residual blocks (norm, conv, MLP) are not part of it.
        bias: if False, no ``bias_ih`` (refine variants keep their ``forget_bias``; ``C`` and ``U``
            need a bias).
        batch_first, dropout, bidirectional, device, dtype: as torch.nn.GRU. ``proj_size`` is
            accepted for torch's signature and must be 0.
        variant: ``"-"``, ``"C"``, ``"U"``, ``"R"`` or ``"UR"`` (default), keyword only.
        t_max: the chrono init's longest timescale (variant ``C``); default ``hidden_size``.
        backend: ``"auto"`` (the C++ scan on CPU float32/float64, else the pure-torch scan; logged
            once), ``"fused_cpu"``, ``"torch"`` or ``"reference"`` (the sequential step loop).

    Inputs: ``input, h_0``
        - input: ``(T, B, I)``, ``(B, T, I)`` with ``batch_first``, ``(T, I)`` unbatched, or a
          ``PackedSequence``. ``T = 1`` with ``h_0`` carried is the streaming (recurrent) mode; it
          equals one scan over the whole sequence.
        - h_0: ``(L*D, B, H)`` (``(L*D, H)`` unbatched); zeros if None.

    Outputs: ``output, h_n``
        - output: ``(T, B, D*H)`` (``(B, T, D*H)`` with ``batch_first``; a PackedSequence if the input
          was one): the last layer's ``h_t``, zero past each sequence's end.
        - h_n: ``(L*D, B, H)``: every layer's and direction's final state.

    Parameters (torch's names; ``_reverse`` for the backward direction):
        ``weight_ih_l{{k}}`` ``(G, I or D*H)``, ``bias_ih_l{{k}}`` ``(G,)``, ``forget_bias_l{{k}}``
        ``(H,)`` for ``R``/``UR``; no recurrent weight. {blocks}

    Input errors raise :class:`gated.InputError` with torch.nn's wording.
"""


class MinGRU(_ScanRNN):
    core = "mingru"
    __doc__ = r"""minGRU (Feng et al. 2024) with the paper's gate variants, trained with a scan.

    The gates read ``x_t`` only, so each layer is ``h_t = a_t h_{t-1} + b_t``, solved by a scan.
    ``f`` is the keep gate (Feng et al.'s update gate is ``z = 1 - f``); the candidate is linear.
    Default ``variant="UR"``::

        f = sigma(P_f + b_f)    r = sigma(P_r - b_f)    g = f^2 + 2 r f (1 - f)
        h_t = g h_{t-1} + (1 - g) P_n                    P = W_ih x_t + b_ih

    ``"-"`` is Feng et al.'s minGRU with a gate bias (``h_t = f h_{t-1} + (1 - f) P_n``); ``U`` sets
    that bias by UGI, ``C`` by chrono; ``R`` adds the refine gate with ``b_f = 0``.
    """ + _DOC_ARGS.format(blocks="Blocks ``(f, n)`` and, with a refine gate, ``rho``: ``G = 2H`` or ``3H``.") + """
    Example:
        >>> rnn = gated.MinGRU(32, 128, num_layers=2, batch_first=True)   # UR-minGRU
        >>> out, h = rnn(torch.randn(8, 1000, 32))                         # out: (8, 1000, 128)
    """


class MinLSTM(_ScanRNN):
    core = "minlstm"
    __doc__ = r"""minLSTM (Feng et al. 2024) with the paper's gate variants, trained with a scan.

    Forget and input gates from ``x_t``, normalised to sum to one; the refine gate refines ``f``
    before the normalisation (``UR``, default)::

        f = sigma(P_f + b_f)    r = sigma(P_r - b_f)    g = f^2 + 2 r f (1 - f)    i = sigma(P_i)
        k = g / (g + i)         h_t = k h_{t-1} + (1 - k) P_n

    computed in log space (``k = sigma(log g - log i)``), so two gates that both underflow give no
    NaN. UGI and chrono also set the input gate's bias to ``-b_f``, so the pair starts at ``k = f``
    (the input gate's default bias would cap the initial ``k`` near ``f / (f + 1/2)``).
    """ + _DOC_ARGS.format(blocks="Blocks ``(f, i, n)`` and, with a refine gate, ``rho``: ``G = 3H`` or ``4H``.")
