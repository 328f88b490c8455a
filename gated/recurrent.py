"""Sequence modules ``gated.LSTM``, ``gated.GRU``, ``gated.MGU``: torch.nn.LSTM/GRU's API and weights.

Glossary: T time, B batch, I input_size, H hidden_size, L num_layers, D directions (1 or 2).
"""

from __future__ import annotations

import numbers
import warnings
import weakref

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.utils.rnn import PackedSequence, pad_packed_sequence

from gated import backends, precision
from gated._base import GatedModule, InputError, _check_bool, _check_int, _dtype_mismatch
from gated.options import CellOptions

__all__ = ["LSTM", "GRU", "MGU", "RNNBase"]


def _reverse(x: Tensor, index: Tensor | None) -> Tensor:
    """Reverse the time axis of ``(T, B, ·)``; with ``index`` only within each sequence's length."""
    if index is None:
        return x.flip(0)
    return x.gather(0, index.unsqueeze(-1).expand_as(x))


def _pack_like(out: Tensor, like: PackedSequence) -> PackedSequence:
    # (T, B, ·) padded in the caller's batch order -> the packed layout of ``like``
    if like.sorted_indices is not None:
        out = out.index_select(1, like.sorted_indices)
    data = torch.cat([out[t, :n] for t, n in enumerate(like.batch_sizes.tolist())])
    return PackedSequence(data, like.batch_sizes, like.sorted_indices, like.unsorted_indices)


# per module, the backend of CPU calls by (backend name, dtype) (RNNBase._resolve_backend); weak,
# so it neither keeps a module alive nor travels with a pickle or a deepcopy
_RESOLVED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class RNNBase(GatedModule):
    """Base of gated's sequence modules (``gated.LSTM``, ``GRU``, ``MGU``, ``MinGRU``, ``MinLSTM``), as
    ``torch.nn.RNNBase`` is of torch's: torch.nn's constructor, call, attributes and argument-check
    methods. It is not a subclass of ``torch.nn.RNNBase`` (see docs/compatibility.md); code that takes
    either checks ``isinstance(m, (torch.nn.RNNBase, gated.recurrent.RNNBase))``."""

    _reference_weight = "weight_ih_l0"

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        proj_size: int = 0,
        device=None,
        dtype=None,
        *,
        variant: str = "UR",
        t_max: float | None = None,
        chunk_size: int = 4,
        backend: str = "auto",
        layer_norm: bool = False,
        zoneout: float | tuple[float, float] = 0.0,
        recurrent_dropout: float = 0.0,
        weight_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if isinstance(dropout, bool) or not isinstance(dropout, numbers.Number) or not 0 <= dropout <= 1:
            raise ValueError("dropout should be a number in range [0, 1] representing the probability of an "
                             f"element being zeroed, got {dropout!r}")
        self.batch_first = _check_bool("batch_first", batch_first)
        self._setup(input_size, hidden_size, bias, variant, t_max, chunk_size, proj_size)
        self.opts = CellOptions.make(self.layout.core, layer_norm, zoneout, recurrent_dropout, weight_dropout)
        self.num_layers = _check_int("num_layers", num_layers)
        if dropout > 0 and num_layers == 1:
            warnings.warn("dropout option adds dropout after all but last recurrent layer, so non-zero dropout "
                          f"expects num_layers greater than 1, but got dropout={dropout} and num_layers={num_layers}",
                          stacklevel=2)
        self.dropout = float(dropout)
        self.bidirectional = bool(bidirectional)
        self.backend = self._check_backend(backend)
        factory_kwargs = {"device": device, "dtype": dtype}
        D = 2 if bidirectional else 1
        for layer in range(self.num_layers):
            for d in range(D):
                in_size = input_size if layer == 0 else self._state_size * D
                self._add_params(f"_l{layer}" + ("_reverse" if d else ""), in_size, factory_kwargs)
        for sfx in self._suffixes:  # after every RNN weight: torch's init order is kept (reset_parameters)
            self.opts.add_params(self, sfx, factory_kwargs)
        self.reset_parameters()

    @property
    def mode(self) -> str:
        """torch.nn.RNNBase's ``mode``: ``"LSTM"``, ``"GRU"`` or ``"MGU"``."""
        return self.core.upper()

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    def flatten_parameters(self) -> None:
        """No-op, for code written against torch.nn.LSTM."""

    # torch.nn.RNNBase's and torch.nn.LSTM's argument checks, as public methods with torch's signatures,
    # results and messages, for code written against them (subclasses, wrappers, torch's own tests).
    # forward does not call them: it runs its own checks (the same conditions, more cases, the
    # messages prefixed with the module's name), so overriding them does not change forward.
    def check_input(self, input: Tensor, batch_sizes: Tensor | None) -> None:
        """torch.nn.RNNBase.check_input: ``input`` is ``(T, B, I)`` (``(N, I)``, the data of a
        PackedSequence, with ``batch_sizes``) of the weights' dtype. Raises :class:`gated.InputError`
        (a ValueError for the dtype, a RuntimeError otherwise, as torch) with torch's message."""
        dtype = self._flat_weights[0].dtype
        if input.dtype != dtype and (not input.is_floating_point() or not torch._C._is_any_autocast_enabled()):
            raise InputError(_dtype_mismatch(input.dtype, dtype))
        expected_input_dim = 2 if batch_sizes is not None else 3
        if input.dim() != expected_input_dim:
            raise InputError(f"input must have {expected_input_dim} dimensions, got {input.dim()}")
        if self.input_size != input.size(-1):
            raise InputError(
                f"input.size(-1) must be equal to input_size. Expected {self.input_size}, got {input.size(-1)}")

    def _mini_batch(self, input: Tensor, batch_sizes: Tensor | None) -> int:
        if batch_sizes is not None:
            return int(batch_sizes[0])
        return input.size(0) if self.batch_first else input.size(1)

    def get_expected_hidden_size(self, input: Tensor, batch_sizes: Tensor | None) -> tuple[int, int, int]:
        """torch.nn.RNNBase.get_expected_hidden_size: ``(L*D, B, H)``, ``proj_size`` for ``H`` with
        projections."""
        return (self.num_layers * self.num_directions, self._mini_batch(input, batch_sizes), self._state_size)

    def get_expected_cell_size(self, input: Tensor, batch_sizes: Tensor | None) -> tuple[int, int, int]:
        """torch.nn.LSTM.get_expected_cell_size: ``(L*D, B, hidden_size)``, the LSTM's ``c`` (modules
        with one state have no ``c``)."""
        return (self.num_layers * self.num_directions, self._mini_batch(input, batch_sizes), self.hidden_size)

    def check_hidden_size(self, hx: Tensor, expected_hidden_size: tuple[int, int, int],
                          msg: str = "Expected hidden size {}, got {}") -> None:
        """torch.nn.RNNBase.check_hidden_size: :class:`gated.InputError` (a RuntimeError) with ``msg``
        formatted as torch's if ``hx`` is not ``expected_hidden_size``."""
        if hx.size() != expected_hidden_size:
            raise InputError(msg.format(expected_hidden_size, list(hx.size())))

    def check_forward_args(self, input: Tensor, hidden, batch_sizes: Tensor | None) -> None:
        """torch.nn.RNNBase.check_forward_args (torch.nn.LSTM's for an LSTM, whose ``hidden`` is
        ``(h_0, c_0)``): :meth:`check_input`, then the states' sizes."""
        self.check_input(input, batch_sizes)
        if self.layout.core.num_states == 2:
            self.check_hidden_size(hidden[0], self.get_expected_hidden_size(input, batch_sizes),
                                   "Expected hidden[0] size {}, got {}")
            self.check_hidden_size(hidden[1], self.get_expected_cell_size(input, batch_sizes),
                                   "Expected hidden[1] size {}, got {}")
        else:
            self.check_hidden_size(hidden, self.get_expected_hidden_size(input, batch_sizes))

    def permute_hidden(self, hx, permutation: Tensor | None):
        """torch.nn.RNNBase.permute_hidden (torch.nn.LSTM's for an LSTM): the states' batch entries
        (dim 1) in the order ``permutation``, ``hx`` itself if it is None."""
        if permutation is None:
            return hx
        if self.layout.core.num_states == 2:
            return hx[0].index_select(1, permutation), hx[1].index_select(1, permutation)
        return hx.index_select(1, permutation)

    def _check_backend(self, name: str) -> str:
        return backends.check_name(name)

    def _resolve_backend(self, name: str, x: Tensor):
        """The ``run_layer`` of one call (gated.MinGRU/MinLSTM bring the scan backends). For CPU
        tensors outside export, tracing, torch.compile and torch.func the answer depends only on
        the module's layout and the dtype (every backend runs every cell option), so it is kept per
        module: resolving is a sixth of a one-step call's time."""
        if not x.is_cpu or backends.recording():
            return backends.resolve(name, self.layout, x)
        memo = _RESOLVED.setdefault(self, {})
        hit = memo.get((name, x.dtype))
        if hit is not None and hit[0] is self.layout:
            return hit[1]
        run = backends.resolve(name, self.layout, x)
        memo[name, x.dtype] = (self.layout, run)
        return run

    def _initial_states(self, hx, batch: int, batched: bool, ref: Tensor) -> list[Tensor]:
        """``hx`` checked as torch.nn.LSTM/GRU check it (same conditions and wording), as a list of
        ``(L*D, B, ·)`` states; zeros if None."""
        n = self.layout.core.num_states
        LD = self.num_layers * self.num_directions
        shapes = [(LD, batch, self._state_size), (LD, batch, self.hidden_size)][:n]
        if hx is None:
            return [torch.zeros(shape, dtype=ref.dtype, device=ref.device) for shape in shapes]
        if n == 2:
            if not isinstance(hx, (tuple, list)) or len(hx) != 2:
                self._fail(f"hx must be a tuple (h_0, c_0), got {type(hx).__name__}")
            states, names = list(hx), ["hx[0] (h_0)", "hx[1] (c_0)"]
        else:
            states, names = [hx], ["hx (h_0)"]
        for name, s in zip(names, states):
            if not isinstance(s, Tensor):
                self._fail(f"{name} must be a Tensor, got {type(s).__name__}")
        want = 3 if batched else 2
        if any(s.dim() != want for s in states):
            dims = ", ".join(f"{s.dim()}-D" for s in states)
            what = "hx and cx" if n == 2 else "hx"
            got = f"({dims}) tensors" if n == 2 else f"{dims} tensor"
            self._fail(f"For {'batched 3-D' if batched else 'unbatched 2-D'} input, {what} should also be "
                       f"{want}-D but got {got}")
        if not batched:
            states = [s.unsqueeze(1) for s in states]
        for k, (name, s, shape) in enumerate(zip(names, states, shapes)):
            if tuple(s.shape) != shape:
                label = f"hidden[{k}]" if n == 2 else "hidden"
                self._fail(f"Expected {label} size {shape}, got {list(s.shape)} ({name})")
            self._check_like_weights(name, s)
        return states

    def _check_sequence(self, x: Tensor, packed: bool) -> None:
        name = type(self).__name__
        if not isinstance(x, Tensor):
            raise TypeError(f"gated.{name}: input must be a Tensor or PackedSequence, got {type(x).__name__}")
        if packed and x.dim() != 2:
            self._fail(f"input must have 2 dimensions, got {x.dim()} (the data of a PackedSequence)")
        if not packed and x.dim() not in (2, 3):
            self._fail(f"{self.mode}: Expected input to be 2D or 3D, got {x.dim()}D instead")
        self._check_like_weights("input", x)
        if x.shape[-1] != self.input_size:
            self._fail(f"input.size(-1) must be equal to input_size. Expected {self.input_size}, got {x.shape[-1]}")

    def _run(self, input, hx=None, record: dict | None = None, backend: str | None = None):
        packed = input if isinstance(input, PackedSequence) else None
        if packed is not None:
            self._check_sequence(packed.data, packed=True)
            x, lengths = pad_packed_sequence(packed)  # (T, B, I), caller's batch order
            batched = True
        else:
            self._check_sequence(input, packed=False)
            batched = input.dim() == 3
            x = input if not batched else (input.transpose(0, 1) if self.batch_first else input)
            x = x if batched else x.unsqueeze(1)
            lengths = None
        T, B = x.shape[0], x.shape[1]
        if T == 0:
            self._fail("Expected sequence length to be larger than 0 in RNN")
        h0 = self._initial_states(hx, B, batched, x)
        # bfloat16/float16 on the CPU: computed in float32 (Triton, also in its interpreter on CPU
        # tensors, runs its own mixed precision)
        w0 = self._param(self._reference_weight)
        prec = None if (backend or self.backend) == "triton" else precision.plan(x, w0.dtype)
        if prec is not None:
            with prec.region():
                out, states = self._layers(prec.cast(x), [prec.cast(s) for s in h0], lengths, record, backend, prec)
            out, states = prec.back(out), [prec.back(s) for s in states]
        else:
            out, states = self._layers(x, h0, lengths, record, backend, None)
        if packed is not None:
            out = _pack_like(out, packed)
        elif not batched:
            out, states = out.squeeze(1), [s.squeeze(1) for s in states]
        else:
            out = out.transpose(0, 1) if self.batch_first else out
        return out, (tuple(states) if len(states) == 2 else states[0])

    def _layers(self, x: Tensor, h0: list[Tensor], lengths: Tensor | None, record: dict | None,
                backend: str | None, prec) -> tuple[Tensor, list[Tensor]]:
        """Every layer and direction on time-major ``x`` ``(T, B, I)``: the last layer's output and the
        final states ``(L*D, B, ·)``; with a plan (gated/precision.py) the parameters are cast to its
        compute dtype."""
        T = x.shape[0]
        cast = (lambda t: t) if prec is None else prec.cast  # noqa: E731
        mask = rev = None
        if lengths is not None:
            t = torch.arange(T, device=x.device).unsqueeze(1)  # (T, 1)
            lens = lengths.to(x.device).unsqueeze(0)  # (1, B)
            mask = (t < lens).unsqueeze(-1)  # (T, B, 1)
            rev = torch.where(t < lens, lens - 1 - t, t)  # (T, B): time reversal inside each length
        run = self._resolve_backend(backend or self.backend, x)
        per = [s.unbind(0) for s in h0]  # each state's (B, ·) per layer and direction
        finals: list[list[Tensor]] = [[] for _ in h0]
        D = self.num_directions
        for layer in range(self.num_layers):
            outs = []
            for d in range(D):
                idx = layer * D + d
                sfx = self._suffixes[idx]  # f"_l{layer}", + "_reverse" for d = 1
                xin = _reverse(x, rev) if d else x
                rec = [] if record is not None else None
                w_ih, w_hh, *rest = (cast(p) for p in self._params(sfx))
                more = {}
                if self.opts.active:  # masks drawn per call, layer and direction (gated/options.py)
                    w_hh = self.opts.recurrent_weight(w_hh, self.training)
                    sizes = (self._state_size, self.hidden_size)[: len(h0)]
                    extras = self.opts.extras(self, sfx, xin, sizes, self.training, cast=cast)
                    more = {} if extras is None else {"extras": extras}
                if prec is not None and w_hh is not None:  # bfloat16 matmuls (gated/precision.py)
                    w_ih, w_hh = prec.operand(w_ih), prec.operand(w_hh)
                out, st = run(xin, tuple([s[idx] for s in per]), w_ih, w_hh, *rest, self.layout, mask, rec,
                              w_hr=cast(self._param("weight_hr" + sfx)), **more)
                if record is not None:
                    record[(layer, d)] = rec
                outs.append(_reverse(out, rev) if d else out)
                for f, s in zip(finals, st):
                    f.append(s)
            x = torch.cat(outs, dim=-1) if len(outs) > 1 else outs[0]  # (T, B, D*H)
            if self.dropout and self.training and layer < self.num_layers - 1:
                x = F.dropout(x, self.dropout, training=True)
        return x, [torch.stack(f) if len(f) > 1 else f[0].unsqueeze(0) for f in finals]  # states each (L*D, B, H)

    def forward(self, input, hx=None):
        """Run the sequence; see the class docstring for shapes."""
        return self._run(input, hx)


_DOC_ARGS = """
    Args:
        input_size: features per time step, ``I``.
        hidden_size: hidden units ``H`` per direction.
        num_layers: stacked layers; layer ``k > 0`` reads the previous layer's ``D*H`` outputs.
        bias: if False, no ``b_ih``/``b_hh`` (refine variants keep their ``forget_bias``).
        batch_first: input and output are ``(B, T, ·)`` instead of ``(T, B, ·)``; states are not.
        dropout: dropout on the outputs of every layer but the last, in training mode; in [0, 1].
        bidirectional: also run each layer backwards and concatenate (``D = 2``).
        proj_size: LSTM only: if > 0, an LSTM with projections (LSTMP, Sak et al. 2014, as
            torch.nn.LSTM): ``h_t = W_hr (o_t * tanh(c_t))`` of size ``P = proj_size < H``; ``h``
            and the output have ``P`` features and ``weight_hh_l{{k}}`` is ``(G, P)``.
        device, dtype: where and how the parameters are created.
        variant: a label of the paper's grid (keyword only): ``"-"``, ``"C"``, ``"O"``, ``"U"``,
            ``"R"``, ``"OM"``, ``"OR"``, ``"UM"``, ``"UR"`` (case-insensitive; long names such as
            ``"uniform-refine"`` too). See ``docs/variants.md``.
        t_max: the chrono init's longest timescale (variant ``C``); default ``hidden_size``.
        chunk_size: master-gate downsampling factor ``C`` (``*M`` variants); default 4.
        backend: ``"auto"`` (the fused CPU kernels where they apply, else the reference loop;
            fallbacks are logged once), ``"fused_cpu"`` or ``"reference"``.

    Inputs: ``input, hx``
        - input: ``(T, B, I)``, ``(B, T, I)`` if ``batch_first``, ``(T, I)`` unbatched, or a
          ``PackedSequence``.
        - hx: initial state{states_in}, each ``(L*D, B, H)`` (``(L*D, H)`` unbatched; ``h`` has
          ``proj_size`` features with projections); zeros if None.

    Outputs: ``output, {states_out}``
        - output: ``(T, B, D*H)`` (``(B, T, D*H)`` if ``batch_first``; a ``PackedSequence`` if the
          input was one): the last layer's ``h_t`` for every ``t``.
        - {states_out}: the final states of every layer and direction, each ``(L*D, B, H)``.

    Parameters (torch.nn's names and shapes, ``G = layout.rows``):
        ``weight_ih_l{{k}}`` ``(G, I or D*H)``, ``weight_hh_l{{k}}`` ``(G, H)``, ``bias_ih_l{{k}}`` and
        ``bias_hh_l{{k}}`` ``(G,)``, ``weight_hr_l{{k}}`` ``(P, H)`` with ``proj_size``,
        ``forget_bias_l{{k}}`` ``(H,)`` for ``R``/``UR``; ``_reverse`` for the backward direction.
        ``all_weights``, ``_flat_weights`` and ``_flat_weights_names`` list them in torch's order.

    Input errors raise :class:`gated.InputError` (a RuntimeError, ValueError and TypeError) with
    torch.nn's wording.
"""


_RNN = RNNBase  # the former private name


class LSTM(RNNBase):
    core = "lstm"
    __doc__ = r"""Multi-layer LSTM with the paper's gate variants; a drop-in ``torch.nn.LSTM``.

    Default ``variant="UR"``, the UR-LSTM of Gu et al. 2020 (Eqs. 9-12)::

        f = sigma(P_f + b_f)          r = sigma(P_r - b_f)        # r in the i block
        g = r (1 - (1 - f)^2) + (1 - r) f^2
        c' = g c + (1 - g) tanh(P_g)  h' = sigma(P_o) tanh(c')

    ``variant="-"`` is exactly ``torch.nn.LSTM``; its weights load with ``load_state_dict``.
    """ + _DOC_ARGS.format(states_in=" ``(h_0, c_0)``", states_out="(h_n, c_n)") + """
    Example:
        >>> rnn = gated.LSTM(10, 20, num_layers=2)            # UR-LSTM
        >>> out, (h, c) = rnn(torch.randn(5, 3, 10))          # out: (5, 3, 20)
    """


class GRU(RNNBase):
    core = "gru"
    __doc__ = r"""Multi-layer GRU with the paper's gate variants; a drop-in ``torch.nn.GRU``.

    torch's GRU with ``z`` the keep gate; ``variant="UR"`` (default) refines it with an extra
    block ``rho`` (chunk order ``r, z, n, rho``)::

        s = sigma(P_r)    n = tanh(W_in x + b_in + s (W_hn h + b_hn))
        z = sigma(P_z + b_f)   rho = sigma(P_rho - b_f)   g = rho (1 - (1 - z)^2) + (1 - rho) z^2
        h' = g h + (1 - g) n
    """ + _DOC_ARGS.format(states_in=" ``h_0``", states_out="h_n") + """
    Example:
        >>> out, h = gated.GRU(10, 20)(torch.randn(5, 3, 10))
    """


class MGU(RNNBase):
    core = "mgu"
    __doc__ = r"""Minimal gated unit (Zhou et al. 2016) with the paper's gate variants.

    One gate ``f`` (the keep gate, ``f = 1 - f_zhou``) with torch's GRU conventions; chunk order
    ``(f, n)`` plus a refine block in ``R``/``UR``::

        n = tanh(W_in x + b_in + (1 - f)(W_hn h + b_hn))      h' = f h + (1 - f) n

    Variants: ``-``, ``C``, ``U``, ``R``, ``UR`` (default).
    """ + _DOC_ARGS.format(states_in=" ``h_0``", states_out="h_n")
