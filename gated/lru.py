"""``gated.RGLRU`` and ``gated.HGRN``: the paper's gates on the gated linear recurrences of Griffin and HGRN.

Both are scan cores (:mod:`gated.cores`, :mod:`gated.backends.scan`): every coefficient of
``h_t = a_t h_{t-1} + b_t`` is a function of ``x_t``, so a layer is one projection and a scan, with
torch.nn.GRU's constructor and call like :class:`gated.MinGRU`. ``variant="-"`` (the default) is each
paper's recurrence with its own init; ``U`` puts UGI on the decay / forget gate, ``R`` and ``UR`` add the
refine gate on it. Equations, choices and measurements: ``docs/scan.md``.

- RG-LRU: De et al. 2024, "Griffin: Mixing Gated Linear Recurrences with Local Attention for Efficient
  Language Models" (arXiv 2402.19427), Eqs. 1-4.
- HGRN: Qin, Yang, Zhong 2023, "Hierarchically Gated Recurrent Neural Network for Sequence Modeling"
  (NeurIPS 2023, arXiv 2311.04823), real-valued as fla's ``HGRNAttention`` and ``HGRNModel``
  (fla-org/flash-linear-attention, ``fla/layers/hgrn.py``, ``fla/models/hgrn/modeling_hgrn.py``; the
  equations are re-derived here, no code is taken).

Glossary: T time, B batch, I input_size, H hidden_size, L num_layers, D directions.
"""

from __future__ import annotations

import math
import numbers

import torch
from torch import Tensor, nn

from gated import init as _init
from gated._base import _check_bool
from gated.cores import RGLRU_C
from gated.init import VARIANT_INITS
from gated.minimal import _ScanRNN

__all__ = ["RGLRU", "HGRN"]


_DOC_ARGS = """
    Args:
        input_size: features per time step, ``I``.
        hidden_size: units ``H`` per direction.
        num_layers: stacked layers as in torch.nn.GRU (layer ``k > 0`` reads the ``D*H`` outputs of
            layer ``k - 1``); the papers' residual blocks (norms, convolution, MLP, output gate and
            projection) are not part of it.
        bias: if False, no ``bias_ih``.{bias_note}
        batch_first, dropout, bidirectional, device, dtype: as torch.nn.GRU. ``proj_size`` is
            accepted for torch's signature and must be 0.
        variant: ``"-"`` (default: the paper's equations and init), ``"U"``, ``"R"`` or ``"UR"``,
            keyword only.{extra}
        backend: ``"auto"`` (on CPU in float32/float64 the C++ scan with the gates fused into it,
            elsewhere the pure-torch scan, logged once), ``"fused_cpu"``, ``"torch"`` or
            ``"reference"`` (the sequential step loop).

    Inputs: ``input, h_0``
        - input: ``(T, B, I)``, ``(B, T, I)`` with ``batch_first``, ``(T, I)`` unbatched, or a
          ``PackedSequence``. ``T = 1`` with ``h_0`` carried is the streaming (recurrent) mode.
        - h_0: ``(L*D, B, H)`` (``(L*D, H)`` unbatched); zeros if None.

    Outputs: ``output, h_n``
        - output: ``(T, B, D*H)`` (``(B, T, D*H)`` with ``batch_first``; a PackedSequence if the input
          was one): the last layer's ``h_t``, zero past each sequence's end.
        - h_n: ``(L*D, B, H)``: every layer's and direction's final state.

    Parameters (``_reverse`` for the backward direction): {params}

    Input errors raise :class:`gated.InputError` with torch.nn's wording.
"""


class RGLRU(_ScanRNN):
    core = "rglru"
    c = RGLRU_C
    __doc__ = r"""Griffin's Real-Gated Linear Recurrent Unit (De et al. 2024) with the paper's gate variants.

    ``variant="-"`` (default) is Griffin's Eqs. 1-4, computed in log space::

        r = sigma(P_a)    i = sigma(P_i)    log a_t = -c r softplus(-Lambda)    (a_t = sigma(Lambda)^(c r), c = 8)
        h_t = a_t h_{t-1} + sqrt(1 - a_t^2) (i P_n)                        P = W_ih x_t + b_ih

    ``1 - a_t^2 = -expm1(2 log a_t)`` keeps its precision as ``a_t -> 1``, and the square root's gradient
    is 0 where ``a_t = 1`` exactly (no NaN). ``P_n = W_n x_t + b_n`` is the recurrence's input ``x~_t``:
    a block of ``weight_ih`` in every layer, initialised to the identity (``W_n = I``, ``b_n = 0``)
    where the layer's input width is ``H``, so that such a layer starts as the paper's RG-LRU on
    ``x_t`` itself, and as ``torch.nn.Linear`` elsewhere (Griffin's linear branch before the RG-LRU).

    Init: ``Lambda`` such that ``a^c ~ U[0.9, 0.999]`` (:func:`gated.init.rglru_decay_`), the gates'
    weights and biases as ``torch.nn.Linear``. ``U``: ``a^c = u``, ``u ~ U[1/d, 1 - 1/d]`` (UGI on the
    decay at ``r = 1``). ``R``/``UR``: the decay is refined by its own block ``rho``,
    ``g_t = a_t^2 + 2 rho a_t (1 - a_t)``, ``rho = sigma(P_rho)``, in the recurrence and the normaliser
    (``h_t = g_t h_{t-1} + sqrt(1 - g_t^2) i P_n``); ``UR`` zeroes ``b_rho``, so that it starts at
    ``g = a`` for a zero ``W_rho x``.
    """ + _DOC_ARGS.format(
        bias_note=" ``Lambda`` stays, so every variant works without a bias.",
        extra="",
        params="``weight_ih_l{k}`` ``(G, I or D*H)`` with blocks ``(a, i, n[, rho])`` (``G = 3H`` or "
               "``4H``), ``bias_ih_l{k}`` ``(G,)``, ``lambda_l{k}`` ``(H,)`` (``a = sigma(Lambda)``; "
               "recurrentgemma's ``a_param`` is ``-Lambda``); no recurrent weight.") + """
    Example:
        >>> rnn = gated.RGLRU(64, 64, batch_first=True)         # Griffin's RG-LRU
        >>> out, h = rnn(torch.randn(8, 1000, 64))               # out: (8, 1000, 64)
        >>> ur = gated.RGLRU(64, 64, variant="UR")               # UGI + refine gate on the decay
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 proj_size: int = 0, device=None, dtype=None, *, variant: str = "-",
                 backend: str = "auto") -> None:
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                         proj_size, device, dtype, variant=variant, backend=backend)

    def _setup(self, input_size, hidden_size, bias, *args, **kwargs):
        bias = _check_bool("bias", bias)
        super()._setup(input_size, hidden_size, True, *args, **kwargs)  # UGI sets Lambda, not a bias
        self.bias = bias

    def _add_params(self, suffix: str, in_size: int, factory_kwargs: dict) -> None:
        """``weight_ih`` ``(G, in)``, ``bias_ih`` ``(G,)`` and ``lambda`` ``(H,)``, each + suffix."""
        G, H = self.layout.rows, self.hidden_size
        names = ["weight_ih"] + (["bias_ih"] if self.bias else []) + ["lambda"]
        shapes = {"weight_ih": (G, in_size), "bias_ih": (G,), "lambda": (H,)}
        for name in names:
            self.register_parameter(name + suffix, nn.Parameter(torch.empty(shapes[name], **factory_kwargs)))
        self._suffixes.append(suffix)
        self._all_weights.append([name + suffix for name in names])

    def _params(self, suffix: str):
        get = lambda name: getattr(self, name + suffix, None)  # noqa: E731
        return get("weight_ih"), None, get("bias_ih"), None, (get("lambda"),)

    def reset_parameters(self) -> None:
        """``torch.nn.Linear``'s init for ``weight_ih``/``bias_ih`` (``U(-1/sqrt(n), 1/sqrt(n))``), the
        identity on the ``n`` block where the layer's input width is ``H``, Griffin's ``Lambda``
        (:func:`gated.init.rglru_decay_`), then the variant's initialiser (UGI)."""
        H, n_rows = self.hidden_size, self.layout.block("n")
        with torch.no_grad():
            for sfx in self._suffixes:
                w, b = getattr(self, "weight_ih" + sfx), getattr(self, "bias_ih" + sfx, None)
                k = 1.0 / math.sqrt(w.shape[1])
                for p in (w, b):
                    if p is not None:
                        nn.init.uniform_(p, -k, k)
                if w.shape[1] == H:
                    w[n_rows] = torch.eye(H, dtype=w.dtype, device=w.device)
                    if b is not None:
                        b[n_rows] = 0.0
        _init.rglru_decay_(self)
        if self.variant.init is not None:
            VARIANT_INITS[self.variant.init](self)


def _check_lower_bound(value) -> bool | float:
    if isinstance(value, bool):
        return value
    if not isinstance(value, numbers.Real):
        raise TypeError(f"lower_bound should be a bool or a float in [0, 1), got: {type(value).__name__}")
    if not (math.isfinite(value) and 0 <= value < 1):
        raise ValueError(f"lower_bound should be a bool or a float in [0, 1), got {value!r}")
    return float(value)


class HGRN(_ScanRNN):
    core = "hgrn"
    __doc__ = r"""HGRN's linear recurrence (Qin et al. 2023), real-valued as fla's, with the paper's gate variants.

    ``variant="-"`` (default), for layer ``k`` with lower bound ``lb_k``::

        f = sigma(P_f)    k_t = lb_k + (1 - lb_k) f    h_t = k_t h_{t-1} + (1 - k_t) SiLU(P_i)

    (fla writes it as ``log k = logaddexp(log lb, log(1 - lb) + logsigmoid(P_f))`` and
    ``h = exp(log k) h + swiglu(P_i, 1 - k)``.) ``lower_bound=True`` (default) is HGRN's learned,
    depth-increasing bound over this module's layers: a parameter ``lower_bounds`` ``(L, H)``, zero at
    init, and ``lb = cumsum(softmax(lower_bounds, 0)) - softmax(lower_bounds, 0)[0]``, so that layer 0 has
    no bound and layer ``k`` starts at ``k / L`` (fla's ``HGRNModel``; a one-layer module has none).
    ``lower_bound=False`` drops it; a float ``gamma`` in ``[0, 1)`` is a fixed bound for every layer (a
    one-layer module used as layer ``k`` of an ``L``-layer stack takes fla's initial ``k / L``).

    Init: weights and biases as ``torch.nn.Linear`` (fla's projections have no bias; ``bias=False``
    gives its layer). ``U``: UGI on the forget gate's bias, ``b_f = logit(u)``. ``R``/``UR``: the
    sigmoid part is refined as in :class:`gated.MinGRU`, ``f = refine_gate(sigma(P_f + b_f),
    sigma(P_rho - b_f))`` with the shared trainable ``forget_bias`` ``b_f``, and then bounded.
    The output gate, norm and projection of fla's layer are left to the user, as the block around it.
    """ + _DOC_ARGS.format(
        bias_note=" ``U`` needs a bias; refine variants keep their ``forget_bias``.",
        extra="\n        lower_bound: ``True`` (default), ``False`` or a float in ``[0, 1)``, keyword only (above).",
        params="``weight_ih_l{k}`` ``(G, I or D*H)`` with blocks ``(f, i[, rho])`` (``G = 2H`` or "
               "``3H``), ``bias_ih_l{k}`` ``(G,)``, ``forget_bias_l{k}`` ``(H,)`` for ``R``/``UR``, and "
               "``lower_bounds`` ``(L, H)`` with a learned bound and ``L > 1`` (shared by the two "
               "directions of a layer); no recurrent weight.") + """
    Example:
        >>> rnn = gated.HGRN(64, 64, num_layers=4, batch_first=True)   # bounds 0, 1/4, 1/2, 3/4 at init
        >>> out, h = rnn(torch.randn(8, 1000, 64))
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 proj_size: int = 0, device=None, dtype=None, *, variant: str = "-",
                 lower_bound: bool | float = True, backend: str = "auto") -> None:
        lower_bound = _check_lower_bound(lower_bound)
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                         proj_size, device, dtype, variant=variant, backend=backend)
        self.lower_bound = lower_bound
        if lower_bound is True and self.num_layers > 1:
            self.lower_bounds = nn.Parameter(torch.zeros(self.num_layers, hidden_size, device=device, dtype=dtype))

    def layer_lower_bounds(self) -> Tensor:
        """``(L, H)``: every layer's lower bound ``lb_k`` (zeros where it has none)."""
        w = self.weight_ih_l0
        L, H = self.num_layers, self.hidden_size
        bounds = getattr(self, "lower_bounds", None)
        if bounds is not None:
            s = torch.softmax(bounds, 0)
            return s.cumsum(0) - s[0]
        return torch.full((L, H), float(self.lower_bound), dtype=w.dtype, device=w.device)

    def _params(self, suffix: str):
        get = lambda name: getattr(self, name + suffix, None)  # noqa: E731
        layer = int(suffix[2:].split("_")[0])
        lb = None
        if getattr(self, "lower_bounds", None) is not None and layer > 0:
            lb = self.layer_lower_bounds()[layer]
        elif self.lower_bound is not True and self.lower_bound > 0:
            lb = self.layer_lower_bounds()[layer]
        return get("weight_ih"), None, get("bias_ih"), None, (lb, get("forget_bias"))

    def reset_parameters(self) -> None:
        """:class:`gated.MinGRU`'s init (``torch.nn.Linear``'s, ``b_f = 0``, then UGI for ``U``/``UR``) and
        ``lower_bounds = 0``."""
        super().reset_parameters()
        bounds = getattr(self, "lower_bounds", None)
        if bounds is not None:
            with torch.no_grad():
                bounds.zero_()

    def extra_repr(self) -> str:
        s = super().extra_repr()
        return s if self.lower_bound is True else s + f", lower_bound={self.lower_bound!r}"
