"""The paper's ablation grid as data: one :class:`Variant` entry per label (paper §5).

A label is ``[primary gate][auxiliary gate]``:

- primary: ``-`` sigmoid with the framework's default init, ``C`` chrono init, ``O`` cumax
  activation (Ordered Neurons), ``U`` uniform gate initialisation (UGI);
- auxiliary: ``-`` none, ``M`` ON-LSTM master gates, ``R`` refine gate.

Adding a variant means adding one entry to :data:`VARIANTS`; the modules, the initialisers, the
tests and ``docs/variants.md`` (``python scripts/gen_variants_doc.py``) all read this table.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor

from gated.gates import cumax, sigmoid_gate

__all__ = ["Variant", "VARIANTS", "get_variant"]


@dataclass(frozen=True)
class Variant:
    """One cell of the paper's ablation grid.

    Attributes:
        name: the paper's short label, e.g. ``"UR"`` (``"-"`` for the baseline).
        long_name: a readable alias accepted wherever a name is, e.g. ``"uniform-refine"``.
        primary: activation of the primary (keep) gate: :func:`~gated.gates.sigmoid_gate` or
            :func:`~gated.gates.cumax`. In master variants it is the master gates' activation.
        init: name of the initialiser in :data:`gated.init.VARIANT_INITS` applied after the
            framework's default init (``None``: default init only).
        auxiliary: ``None``, ``"refine"`` (paper §3.2) or ``"master"`` (ON-LSTM).
        summary: one line for docs and ``repr``.
        assumed: what we chose where the paper is silent (see ``docs/variants.md``).
    """

    name: str
    long_name: str
    primary: Callable[[Tensor], Tensor]
    init: str | None
    auxiliary: str | None
    summary: str
    assumed: str = ""

    def __reduce__(self):  # pickled by label: a module holding one loads the registry's entry
        return get_variant, (self.name,)

    @property
    def has_forget_bias(self) -> bool:
        """Whether the variant owns the paper's shared trainable ``b_f`` (``forget_bias_l{k}``).

        The refine pseudo-code adds ``b_f`` to the forget gate and subtracts it from the refine
        gate (paper §4.2); a cumax primary has no such bias.
        """
        return self.auxiliary == "refine" and self.primary is sigmoid_gate


_ENTRIES = [
    Variant("-", "standard", sigmoid_gate, None, None,
            "standard gates, framework default init (the baseline)",
            "untied input gate (the paper takes the untied LSTM as its baseline)"),
    Variant("C", "chrono", sigmoid_gate, "chrono", None,
            "chrono init: b_f ~ log U[1, t_max - 1], input-gate bias -b_f",
            "t_max defaults to hidden_size (the longest UGI timescale) unless given"),
    Variant("O", "cumax", cumax, None, None,
            "cumax (ordered-neurons) activation on the forget gate",
            "f = cumax(P_f) over the hidden units; input gate stays an untied sigmoid"),
    Variant("U", "uniform", sigmoid_gate, "uniform", None,
            "uniform gate initialisation: b_f = logit(u), u ~ U[1/d, 1 - 1/d]",
            "UGI bias goes into the ordinary bias (b_ih = logit(u), b_hh = 0); input gate untied"),
    Variant("R", "refine", sigmoid_gate, None, "refine",
            "refine gate, tied input gate 1 - g, shared trainable b_f starting at 0",
            "b_f is a trainable vector shared by f (+b_f) and r (-b_f), as in the pseudo-code"),
    Variant("OM", "cumax-master", cumax, None, "master",
            "ON-LSTM: cumax master forget/input gates over ceil(d/C) units",
            "chunk_size C defaults to 4; master blocks are appended after the core's blocks"),
    Variant("OR", "cumax-refine", cumax, None, "refine",
            "cumax forget gate refined by a refine gate, tied input gate",
            "no shared b_f (cumax has no UGI bias); the refine gate keeps its own bias"),
    Variant("UM", "uniform-master", sigmoid_gate, "uniform", "master",
            "master gates with sigmoid activation and UGI in place of cumax",
            "master forget bias = logit(u) (u over the ceil(d/C) master units), master input "
            "gate 1 - sigma(P + logit(u)) with the same u, mirroring cumax's init"),
    Variant("UR", "uniform-refine", sigmoid_gate, "uniform", "refine",
            "UGI + refine gate: the paper's UR cell",
            "UGI zeroes the f and r slices of b_ih/b_hh so that the gates start at exactly "
            "sigma(+-b_f)"),
]

VARIANTS: dict[str, Variant] = {v.name: v for v in _ENTRIES}
_ALIASES = {v.long_name: v.name for v in _ENTRIES} | {"--": "-", "": "-", "on": "OM"}


def get_variant(name: str | Variant) -> Variant:
    """Look up a variant by label or long name, case-insensitively (``"ur"``, ``"UR-"``,
    ``"uniform-refine"`` all give ``UR``). Raises ``ValueError`` listing the choices and the
    closest names (``"unknown variant 'UX'; ...; did you mean 'U', 'UR' or 'UM'?"``)."""
    if isinstance(name, Variant):
        return name
    if not isinstance(name, str):
        raise TypeError(f"variant must be a str, got {type(name).__name__}")
    key = name.strip()
    key = _ALIASES.get(key.lower(), key.upper())
    if len(key) > 1 and key.endswith("-"):  # "UR-" as the paper writes it
        key = key[:-1]
    if key not in VARIANTS:
        choices = ", ".join(repr(k) for k in VARIANTS)
        longs = ", ".join(repr(v.long_name) for v in _ENTRIES)
        raise ValueError(f"unknown variant {name!r}; choose one of {choices} (or {longs}){_hint(name)}")
    return VARIANTS[key]


def did_you_mean(name: str, names) -> str:
    """``"; did you mean 'UR'?"``: the (at most three) ``names`` closest to ``name``, compared
    case-insensitively with :func:`difflib.get_close_matches`; ``""`` when none is close."""
    import difflib

    spelled: dict[str, str] = {}
    for n in names:
        spelled.setdefault(n.lower(), n)
    close = [repr(spelled[c]) for c in difflib.get_close_matches(name.strip().lower(), spelled, n=3, cutoff=0.5)]
    if not close:
        return ""
    return f"; did you mean {close[0] if len(close) == 1 else ', '.join(close[:-1]) + ' or ' + close[-1]}?"


def _hint(name: str) -> str:
    """The suggestion for an unknown variant name: the variant of a model name as the tables
    print it (``"UR-LSTM"``: core lstm, variant UR; ``"GRU"``: variant ``-``), else the closest labels."""
    import sys

    # the core registry's names, read from the loaded module: gated.cores imports this one, not back
    cores = getattr(sys.modules.get("gated.cores"), "CORES", {})
    head, _, tail = name.strip().rpartition("-")
    if tail.lower() in cores:
        try:
            variant = get_variant(head).name
        except ValueError:
            pass
        else:
            return (f"; did you mean {variant!r}? ({name.strip()!r} is a model: the {tail.lower()} core with "
                    f"variant {variant})")
    longs = [v.long_name for v in _ENTRIES] if len(name.strip()) > 2 else []  # "UX" is a label's typo, not cumax's
    return did_you_mean(name, [*VARIANTS, *longs])
