"""Recurrent cores (LSTM, GRU, MGU, minGRU, minLSTM, RG-LRU, HGRN) as pointwise steps over torch's weight layout.

Glossary: B batch, H hidden_size, G rows of the gate pre-activations (``layout.rows``),
m master units (``ceil(H / chunk_size)``).

A step receives the input projection ``gi = x W_ih^T + b_ih`` and the recurrent projection
``gh = h W_hh^T + b_hh`` separately (the GRU's reset gate acts on ``gh`` alone, as in torch) and
does only pointwise work. The matmuls and the time loop live in a backend.

Block order is torch's, so ``load_state_dict`` moves weights between torch.nn and gated:

- LSTM ``(i, f, g, o)``; in refine variants the ``i`` block holds the refine gate (input tied to
  ``1 - g``);
- GRU ``(r, z, n)`` with ``z`` the keep gate, ``h' = z h + (1 - z) n``; refine appends a block;
- MGU ``(f, n)`` with ``f`` the keep gate, ``h' = f h + (1 - f) n`` and the candidate's reset
  ``1 - f``: Zhou et al. 2016 written with ``f = 1 - f_zhou``, so the keep gate sits where the
  paper's gates act; refine appends a block.

Master variants append two blocks of ``m`` rows (master forget, master input) to any core.

Scan cores (``scan=True``: minGRU, minLSTM of Feng et al. 2024) have gates that read ``x_t`` only, so
``h_t = a_t h_{t-1} + b_t`` is a linear recurrence solved by a scan; they have no recurrent weight,
and their step gets ``gh=None``:

- minGRU ``(f, n)``: ``h' = k h + w n`` with ``n = P_n`` (no activation), ``f`` the keep gate
  (Feng et al.'s ``z`` is ``1 - f``); refine appends a block;
- minLSTM ``(f, i, n)``: the keep and write gates are normalised, ``k = f / (f + i)``,
  ``w = i / (f + i)`` (``normalised=True``); refine appends a block and refines ``f`` before the
  normalisation.

Two more scan cores carry the gated linear recurrences of later papers (modules in :mod:`gated.lru`).
Their step gets, in the slot where the other cores get ``forget_bias``, a tuple of the layer's
per-unit vectors (``units``):

- RG-LRU ``(a, i, n)`` (De et al. 2024, Griffin), ``units = (Lambda,)``: recurrence gate
  ``r = sigma(P_a)``, input gate ``i = sigma(P_i)``, ``log a_t = -c r softplus(-Lambda)`` (``a = sigma(Lambda)``,
  ``c = 8``), ``h' = a_t h + sqrt(1 - a_t^2) i P_n``; refine appends a block ``rho`` and replaces
  ``a_t`` by ``refine_gate(a_t, sigma(P_rho))`` (in the decay and in the normaliser);
- HGRN ``(f, i)`` (Qin et al. 2023, real-valued as fla's ``HGRNAttention``),
  ``units = (lb, b_f)``: ``f = sigma(P_f)`` (refined as minGRU's in ``R``/``UR``),
  ``k = lb + (1 - lb) f``, ``h' = k h + (1 - k) SiLU(P_i)``; ``lb`` is the layer's lower bound
  (None: 0), ``b_f`` the refine variants' forget bias (None without one).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from gated.gates import cumax, master_gates, refine_gate
from gated.variants import VARIANTS, Variant, get_variant

__all__ = ["Core", "Layout", "CORES", "SCAN_COEFFICIENTS", "RGLRU_C", "get_core", "make_layout", "scan_gates"]


@dataclass(frozen=True)
class Core:
    """A recurrent core: its torch block order, which block is the keep gate, and its step."""

    name: str
    blocks: tuple[str, ...]
    keep: int  # index of the keep (forget / update) gate block
    write: int | None  # index of an untied write (input) gate block; None: tied to 1 - keep
    num_states: int  # 2 for (h, c), 1 for h
    step: Callable  # (gi, gh, state, forget_bias, layout) -> (state, gates)
    supports: Callable[[Variant], bool] = lambda v: True  # pickled by name, see __reduce__
    # gates read x_t only (no weight_hh): h_t = a_t h_{t-1} + b_t, solved by a scan (gated/backends/scan.py)
    scan: bool = False
    # keep and write gates divided by their sum (minLSTM): refine variants keep the write gate and append
    # the refine block (tying w = 1 - g would give back minGRU), and initialisers set the write gate's
    # bias to -b with the keep gate's b, so that the pair starts at k = f
    normalised: bool = False

    def __reduce__(self):  # a pickled module refers to the registry's core, not to its functions
        return get_core, (self.name,)

    @property
    def variants(self) -> tuple[str, ...]:
        """Names of the registered variants this core supports, in registry order."""
        return tuple(name for name, v in VARIANTS.items() if self.supports(v))


@dataclass(frozen=True)
class Layout:
    """Where each gate lives in the ``(G, ·)`` weights of one layer, for a core and variant."""

    core: Core
    variant: Variant
    hidden_size: int
    chunk_size: int
    rows: int
    keep: slice
    write: slice | None  # untied write gate (LSTM input gate)
    refine: slice | None
    master: tuple[slice, slice] | None  # (master forget, master input), m rows each

    def block(self, name: str) -> slice:
        k, H = self.core.blocks.index(name), self.hidden_size
        return slice(k * H, (k + 1) * H)

    @property
    def master_size(self) -> int:
        return math.ceil(self.hidden_size / self.chunk_size)


def make_layout(core: Core | str, variant: Variant | str, hidden_size: int, chunk_size: int = 4) -> Layout:
    """Compute the row layout of ``core`` under ``variant`` (one place for every module and init)."""
    core, variant = get_core(core), get_variant(variant)
    if variant.name not in core.variants:
        raise ValueError(
            f"variant {variant.name!r} does not exist for core {core.name!r}; "
            f"choose one of {', '.join(repr(v) for v in core.variants)}"
        )
    H = hidden_size
    rows = len(core.blocks) * H
    blk = lambda k: slice(k * H, (k + 1) * H)  # noqa: E731
    write = blk(core.write) if core.write is not None else None
    refine = master = None
    if variant.auxiliary == "refine":
        if write is not None and not core.normalised:  # LSTM: the input gate's rows hold the refine gate
            refine, write = write, None
        else:
            refine, rows = slice(rows, rows + H), rows + H
    elif variant.auxiliary == "master":
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        m = math.ceil(H / chunk_size)
        master, rows = (slice(rows, rows + m), slice(rows + m, rows + 2 * m)), rows + 2 * m
    return Layout(core, variant, H, chunk_size, rows, blk(core.keep), write, refine, master)


def _upsample(x: Tensor, layout: Layout) -> Tensor:
    # (B, m) -> (B, H): each master unit covers chunk_size consecutive units (ON-LSTM)
    return x.repeat_interleave(layout.chunk_size, dim=-1)[..., : layout.hidden_size]


def keep_write(pre: Tensor, fb: Tensor | None, L: Layout):
    """Keep gate ``k`` and write gate ``w`` of the update ``s' = k s + w cand`` for any variant.

    Args:
        pre: summed pre-activations ``gi + gh``, ``(B, G)``.
        fb: the shared forget bias ``b_f`` ``(H,)`` of refine variants, else ``None``.

    Returns:
        ``(keep, write, f, r, master_f)``: ``f`` is the primary gate (the fine-grained sigmoid
        gate in master variants), ``r`` the refine gate and ``master_f`` the upsampled master
        forget gate, ``None`` where the variant has no such gate.
    """
    v = L.variant
    f_pre = pre[:, L.keep]
    if v.auxiliary == "master":
        f = torch.sigmoid(f_pre)
        w = torch.sigmoid(pre[:, L.write]) if L.write is not None else 1.0 - f
        mf = _upsample(v.primary(pre[:, L.master[0]]), L)
        mi = 1.0 - _upsample(v.primary(pre[:, L.master[1]]), L)
        keep, write = master_gates(f, w, mf, mi)
        return keep, write, f, None, mf
    f = v.primary(f_pre if fb is None else f_pre + fb)
    if v.auxiliary == "refine":
        r_pre = pre[:, L.refine]
        r = torch.sigmoid(r_pre if fb is None else r_pre - fb)
        g = refine_gate(f, r)
        return g, 1.0 - g, f, r, None
    w = torch.sigmoid(pre[:, L.write]) if L.write is not None else 1.0 - f
    return f, w, f, None, None


def lstm_step(gi: Tensor, gh: Tensor, state, fb: Tensor | None, L: Layout, cell_norm=None):
    """``c' = k c + w tanh(P_g)``, ``h' = sigma(P_o) tanh(c')`` (paper Eqs. 1, 9-11); with
    ``cell_norm`` (the LayerNorm cell, :mod:`gated.options`) ``h' = sigma(P_o) tanh(cell_norm(c'))``."""
    h, c = state
    pre = gi + gh  # (B, G)
    keep, write, f, r, mf = keep_write(pre, fb, L)
    c = keep * c + write * torch.tanh(pre[:, L.block("g")])
    h = torch.sigmoid(pre[:, L.block("o")]) * torch.tanh(c if cell_norm is None else cell_norm(c))
    return (h, c), (f, r, mf, keep)


def gru_step(gi: Tensor, gh: Tensor, state, fb: Tensor | None, L: Layout):
    """``n = tanh(W_in x + b_in + s (W_hn h + b_hn))``, ``h' = k h + w n`` (torch's GRU, paper §4.3)."""
    (h,) = state
    pre = gi + gh
    s = torch.sigmoid(pre[:, L.block("r")])  # reset gate
    n_rows = L.block("n")
    n = torch.tanh(gi[:, n_rows] + s * gh[:, n_rows])
    keep, write, f, r, mf = keep_write(pre, fb, L)
    return (keep * h + write * n,), (f, r, mf, keep)


def mgu_step(gi: Tensor, gh: Tensor, state, fb: Tensor | None, L: Layout):
    """``n = tanh(W_in x + b_in + (1 - f)(W_hn h + b_hn))``, ``h' = k h + w n`` (Zhou et al. 2016)."""
    (h,) = state
    pre = gi + gh
    keep, write, f, r, mf = keep_write(pre, fb, L)
    n_rows = L.block("n")
    n = torch.tanh(gi[:, n_rows] + (1.0 - f) * gh[:, n_rows])
    return (keep * h + write * n,), (f, r, mf, keep)


def scan_gates(gi: Tensor, fb: Tensor | None, L: Layout):
    """Keep gate ``k`` and write gate ``w`` of a scan core, from the input projection alone.

    ``w`` is computed from ``sigma(-x)`` rather than as ``1 - k``, so it keeps its relative precision
    when ``k`` is near 1 (the long memories UGI creates), as the C++ kernel computes it; minGRU with a
    refine gate uses the band symmetry
    ``1 - g(f, r) = g(1 - f, 1 - r)``. minLSTM normalises in log space, ``k = sigma(D)``,
    ``w = sigma(-D)`` with ``D = log k_raw - log i`` (its gates may both underflow to 0, where
    ``k_raw / (k_raw + i)`` would be 0/0); ``log v`` of the refined gate ``g = f v``,
    ``v = f + 2 r (1 - f)``, is taken on ``v`` clamped to the dtype's smallest normal number.

    Args:
        gi: ``(..., G)`` pre-activations ``x W_ih^T + b_ih``.
        fb: the shared forget bias ``(H,)`` of refine variants, else ``None``.

    Returns:
        ``(keep, write, f, r)``: ``f`` the primary gate, ``r`` the refine gate (``None`` without one).
    """
    refine = L.variant.auxiliary == "refine"
    p = gi[..., L.keep] if fb is None else gi[..., L.keep] + fb
    f, fc = torch.sigmoid(p), torch.sigmoid(-p)  # f and 1 - f
    r = None
    if refine:
        q = gi[..., L.refine] if fb is None else gi[..., L.refine] - fb
        r, rc = torch.sigmoid(q), torch.sigmoid(-q)
    if not L.core.normalised:
        if not refine:
            return f, fc, f, None
        return f * (f + 2.0 * r * fc), fc * (fc + 2.0 * rc * f), f, r  # g = f^2 + 2 r f (1 - f), 1 - g
    d = F.logsigmoid(p) - F.logsigmoid(gi[..., L.write])  # log f - log i
    if refine:
        v = f + 2.0 * r * fc  # g = f v
        d = d + torch.log(v.clamp_min(torch.finfo(v.dtype).tiny))
    return torch.sigmoid(d), torch.sigmoid(-d), f, r


def mingru_step(gi: Tensor, gh, state, fb: Tensor | None, L: Layout):
    """``h' = k h + w P_n`` with ``k``, ``w`` from ``x`` only (Feng et al. 2024, minGRU; minLSTM
    when ``L.core`` is normalised). ``gh`` is unused (scan cores have no recurrent weight)."""
    (h,) = state
    keep, write, f, r = scan_gates(gi, fb, L)
    return (keep * h + write * gi[..., L.block("n")],), (f, r, None, keep)


RGLRU_C = 8.0  # Griffin's fixed exponent c: a_t = a^(c r_t)


def _sqrt0(y: Tensor) -> Tensor:
    """``sqrt(y)`` for ``y >= 0`` whose gradient at ``y = 0`` is 0, not infinity (which times the zero
    derivative of ``y`` there would give NaN); NaN stays NaN."""
    zero = y == 0
    return torch.where(zero, 0.0, torch.sqrt(torch.where(zero, 1.0, y)))


def rglru_coefficients(P: Tensor, units, L: Layout):
    """``a_t`` and ``b_t`` of RG-LRU's ``h_t = a_t h_{t-1} + b_t`` (De et al. 2024, Eqs. 1-4) for every
    step at once.

    ``log a_t = -c r_t softplus(-Lambda)`` (``= c r_t log sigma(Lambda)``), ``a_t = exp(log a_t)``;
    ``b_t = sqrt(1 - a_t^2) i_t P_n`` with ``1 - a_t^2 = -expm1(2 log a_t)``, exact near ``a_t = 1``,
    and a square root whose gradient is 0 where ``a_t = 1`` exactly (:func:`_sqrt0`). With a refine
    gate the decay is ``g = refine_gate(a_t, rho)``, ``rho = sigma(P_rho)``, and
    ``1 - g^2 = (1 - g)(1 + g)`` with ``1 - g = (1 - a)((1 - a) + 2 (1 - rho) a)`` (the band symmetry)
    and ``1 - a = -expm1(log a_t)``.

    Args:
        P: ``(..., G)`` pre-activations ``x W_ih^T + b_ih``.
        units: ``(Lambda,)``, ``Lambda`` ``(H,)``.

    Returns:
        ``(a, b, gates)``, ``gates = (a_t, rho, None, g)`` as the steps record them.
    """
    (lam,) = units
    r = torch.sigmoid(P[..., L.block("a")])
    i = torch.sigmoid(P[..., L.block("i")])
    log_a = (-RGLRU_C) * r * F.softplus(-lam)
    a = torch.exp(log_a)
    rho = None
    if L.variant.auxiliary == "refine":
        q = P[..., L.refine]
        rho, rhoc = torch.sigmoid(q), torch.sigmoid(-q)
        ac = -torch.expm1(log_a)  # 1 - a
        keep = a * (a + 2.0 * rho * ac)
        norm = ac * (ac + 2.0 * rhoc * a) * (1.0 + keep)  # (1 - g)(1 + g)
    else:
        keep = a
        norm = -torch.expm1(2.0 * log_a)  # 1 - a^2
    return keep, _sqrt0(norm) * i * P[..., L.block("n")], (a, rho, None, keep)


def hgrn_coefficients(P: Tensor, units, L: Layout):
    """``a_t`` and ``b_t`` of HGRN's ``h_t = k_t h_{t-1} + (1 - k_t) SiLU(P_i)`` (Qin et al. 2023, real-valued
    as fla's ``HGRNAttention``) for every step at once: ``k = lb + (1 - lb) f`` with ``f = sigma(P_f)``
    (``R``/``UR``: ``f = refine_gate(sigma(P_f + b_f), sigma(P_rho - b_f))``); ``1 - k = (1 - lb)(1 - f)``
    with ``1 - f`` from ``sigma(-x)`` and the band symmetry, as :func:`scan_gates`.

    Args:
        P: ``(..., G)`` pre-activations.
        units: ``(lb, b_f)``: the layer's lower bound ``(H,)`` (None: no bound) and the refine
            variants' forget bias ``(H,)`` (None without one).

    Returns:
        ``(a, b, gates)``, ``gates = (sigma(P_f [+ b_f]), r, None, k)``.
    """
    lb, fb = units
    f, fc, f0, r = scan_gates(P, fb, L)  # the (refined) gate and its complement; HGRN is not normalised
    if lb is not None:
        f, fc = lb + (1.0 - lb) * f, (1.0 - lb) * fc
    return f, fc * F.silu(P[..., L.block("i")]), (f0, r, None, f)


def _coefficient_step(coefficients):
    def step(gi: Tensor, gh, state, units, L: Layout):
        (h,) = state
        a, b, gates = coefficients(gi, units, L)
        return (a * h + b,), gates

    step.__name__ = coefficients.__name__.replace("coefficients", "step")
    step.__doc__ = f"""One step ``h' = a h + b`` of :func:`{coefficients.__name__}` (``gh`` is unused)."""
    return step


rglru_step = _coefficient_step(rglru_coefficients)
hgrn_step = _coefficient_step(hgrn_coefficients)

# scan cores whose coefficients the torch backend computes as torch ops (fused_cpu: scan.h's lru kernels)
SCAN_COEFFICIENTS = {"rglru": rglru_coefficients, "hgrn": hgrn_coefficients}


def _native_uniform_refine(v: Variant) -> bool:
    """RG-LRU and HGRN: ``-`` (the paper's equations and init), ``U``, ``R``, ``UR``."""
    return v.name in ("-", "U", "R", "UR")


def _sigmoid_primary_no_master(v: Variant) -> bool:
    return v.primary is not cumax and v.auxiliary != "master"


CORES: dict[str, Core] = {
    "lstm": Core("lstm", ("i", "f", "g", "o"), keep=1, write=0, num_states=2, step=lstm_step),
    "gru": Core("gru", ("r", "z", "n"), keep=1, write=None, num_states=1, step=gru_step),
    # MGU takes the paper's init and refine gate on its one gate, not the ordered-neurons family
    "mgu": Core("mgu", ("f", "n"), keep=0, write=None, num_states=1, step=mgu_step,
                supports=_sigmoid_primary_no_master),
    # Feng et al. 2024 ("Were RNNs All We Needed?"): gates from x_t only, trained with a scan
    "mingru": Core("mingru", ("f", "n"), keep=0, write=None, num_states=1, step=mingru_step,
                   supports=_sigmoid_primary_no_master, scan=True),
    "minlstm": Core("minlstm", ("f", "i", "n"), keep=0, write=1, num_states=1, step=mingru_step,
                    supports=_sigmoid_primary_no_master, scan=True, normalised=True),
    # De et al. 2024 (Griffin): Real-Gated Linear Recurrent Unit; the a block holds the recurrence gate
    "rglru": Core("rglru", ("a", "i", "n"), keep=0, write=None, num_states=1, step=rglru_step,
                  supports=_native_uniform_refine, scan=True),
    # Qin et al. 2023: HGRN's real-valued recurrence (fla); the i block is the candidate SiLU(P_i)
    "hgrn": Core("hgrn", ("f", "i"), keep=0, write=None, num_states=1, step=hgrn_step,
                 supports=_native_uniform_refine, scan=True),
}


def get_core(name: str | Core) -> Core:
    if isinstance(name, Core):
        return name
    key = str(name).lower()
    if key not in CORES:
        raise ValueError(f"unknown core {name!r}; choose one of {', '.join(map(repr, CORES))}")
    return CORES[key]
