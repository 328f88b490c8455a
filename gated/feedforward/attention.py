"""Gated multi-head attention (Qiu et al., "Gated Attention for Large Language Models", NeurIPS 2025,
arXiv 2505.06708): ``torch.nn.MultiheadAttention`` with a sigmoid gate on the SDPA output that is
computed from the query input, specific to each head, and applied before the output projection.

.. code-block:: text

    Q, K, V = X W_q + b_q,  K_in W_k + b_k,  V_in W_v + b_v          # torch's in-projection
    Y_h     = softmax(Q_h K_hᵀ / √D + mask) V_h                       # per head h (SDPA)
    Y'      = Y ⊙ G(X),   G(X) = σ(X W_θ)                            # Qiu et al.'s G1 gate
    out     = Y' W_o + b_o

``gate="elementwise"``: one gate per channel of ``Y`` (``E`` units); ``"headwise"``: one per head
(``H`` units, broadcast over the head's ``D`` channels). The variant builds ``G`` from the registry
(:mod:`gated.feedforward._gate`): ``U`` adds a UGI-drawn bias ``b``, ``R`` a refine gate from rows
``W_r`` of its own, ``σ(X W_θ + b)`` refined by ``σ(X W_r − b)`` (our extension of Gu et al. 2020).
``gate=None`` is ``torch.nn.MultiheadAttention``: same parameters, state-dict keys, outputs.
Glossary: ``B`` batch, ``L`` target length, ``S`` source length, ``E`` embed_dim, ``H`` num_heads,
``D = E / H``, ``n`` gate units.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.linear import NonDynamicallyQuantizableLinear

from gated.feedforward._checks import check_number, check_size
from gated.feedforward._attention_masks import AttentionError, MaskedInputs, prepare
from gated.feedforward._gate import gate_variant, initial_gate_bias, variant_gate

__all__ = ["ATTENTION_GATES", "AttentionError", "GatedMultiheadAttention", "attention_output_gate"]


def _elementwise(embed_dim: int, num_heads: int) -> int:
    return embed_dim


def _headwise(embed_dim: int, num_heads: int) -> int:
    return num_heads


#: gate name -> number of gate units ``n`` given ``(embed_dim, num_heads)``.
ATTENTION_GATES = {"elementwise": _elementwise, "headwise": _headwise}


def _gate_heads(y: Tensor, g: Tensor, num_heads: int) -> Tensor:
    """``y ⊙ g`` per head: ``y (*, E)`` heads concatenated, ``g (*, E)`` or ``(*, H)``."""
    y_h = y.unflatten(-1, (num_heads, -1))  # (*, H, D)
    return (y_h * g.unflatten(-1, (num_heads, -1))).flatten(-2)  # g: (*, H, D) or (*, H, 1)


def attention_output_gate(attn_out: Tensor, gate_logits: Tensor, num_heads: int,
                          refine_logits: Tensor | None = None) -> Tensor:
    """Qiu et al.'s output gate for an attention you compute yourself: ``Y ⊙ σ(P)``, or
    ``Y ⊙ refine(σ(P), σ(P_r))`` with ``refine_logits`` (:func:`gated.gates.refine_gate`).

    Args:
        attn_out: ``(*, E)``, the attention output before the output projection, heads concatenated
            (head ``h`` is channels ``h·D : (h+1)·D``, as after ``transpose(1, 2).reshape(B, L, E)``).
        gate_logits: ``(*, E)`` (elementwise) or ``(*, H)`` (headwise) pre-activations, biases included;
            usually ``x @ W_θ.T`` from the query input ``x``.
        num_heads: ``H``; must divide ``E``.
        refine_logits: refine-gate pre-activations, same shape as ``gate_logits``.

    Returns:
        ``(*, E)``.

    Example:
        >>> y, x = torch.randn(2, 5, 8), torch.randn(2, 5, 8)
        >>> attention_output_gate(y, x @ torch.randn(4, 8).T, num_heads=4).shape
        torch.Size([2, 5, 8])
    """
    for name, t in (("attn_out", attn_out), ("gate_logits", gate_logits)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a Tensor, got {type(t).__name__}")
    check_size("num_heads", num_heads)
    e = attn_out.shape[-1] if attn_out.dim() else 0
    if e % num_heads:
        raise AttentionError(f"attn_out's last dim {e} must be divisible by num_heads={num_heads}")
    if gate_logits.shape[:-1] != attn_out.shape[:-1] or gate_logits.shape[-1] not in (e, num_heads):
        raise AttentionError(f"gate_logits must have shape {(*attn_out.shape[:-1], e)} (elementwise) or "
                             f"{(*attn_out.shape[:-1], num_heads)} (headwise), got {tuple(gate_logits.shape)}")
    if refine_logits is not None and (not isinstance(refine_logits, Tensor)
                                      or refine_logits.shape != gate_logits.shape):
        got = tuple(refine_logits.shape) if isinstance(refine_logits, Tensor) else type(refine_logits).__name__
        raise AttentionError(f"refine_logits must be a Tensor of gate_logits' shape {tuple(gate_logits.shape)}, "
                             f"got {got}")
    return _gate_heads(attn_out, variant_gate(gate_logits, None, refine_logits), num_heads)


class GatedMultiheadAttention(nn.Module):
    """``torch.nn.MultiheadAttention`` with Qiu et al.'s output gate; see the module docstring.

    Takes torch's arguments and returns what torch returns (``(attn_output, attn_weights)``);
    ``need_weights=False`` computes with ``F.scaled_dot_product_attention``, ``need_weights=True``
    explicitly (softmax of the scores, as torch does, to return them).

    Parameters: torch's (``in_proj_weight`` or ``q/k/v_proj_weight``, ``in_proj_bias``,
    ``out_proj``, ``bias_k``, ``bias_v``), plus ``gate_proj`` (Linear ``E -> n`` without bias, rows
    ``[W_θ; W_r]`` in refine variants) and ``gate_bias`` (``(n,)``, variants ``U``, ``R``, ``UR``).

    Args:
        embed_dim, num_heads, dropout, bias, add_bias_kv, add_zero_attn, kdim, vdim, batch_first:
            as in ``torch.nn.MultiheadAttention``.
        gate: ``"elementwise"`` (default), ``"headwise"`` or ``None`` (plain attention).
        variant: ``"-"`` (Qiu et al.: no gate bias), ``"U"`` (UGI bias), ``"R"`` (refine gate, shared
            bias starting at 0) or ``"UR"``; long names such as ``"uniform-refine"`` work too.
        generator: ``torch.Generator`` for the UGI draw.

    Inside ``torch.nn.TransformerEncoderLayer`` (and ``TransformerEncoder``) in eval mode under
    ``no_grad``, torch runs a fused kernel that reads ``in_proj_weight`` and never calls this
    module's ``forward``. A gated module reports ``_qkv_same_embed_dim = False``, one of the
    conditions torch checks, so torch takes the ordinary path, which calls ``forward``;
    ``gate=None`` keeps the fused path.

    Example:
        >>> attn = GatedMultiheadAttention(64, 4, batch_first=True, variant="UR")
        >>> x = torch.randn(2, 10, 64)
        >>> attn(x, x, x, need_weights=False)[0].shape
        torch.Size([2, 10, 64])
    """

    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0, bias: bool = True,
                 add_bias_kv: bool = False, add_zero_attn: bool = False, kdim: int | None = None,
                 vdim: int | None = None, batch_first: bool = False, device=None, dtype=None, *,
                 gate: str | None = "elementwise", variant: str = "-",
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        fk = {"device": device, "dtype": dtype}
        self.embed_dim, self.num_heads = check_size("embed_dim", embed_dim), check_size("num_heads", num_heads)
        self.kdim = embed_dim if kdim is None else check_size("kdim", kdim)
        self.vdim = embed_dim if vdim is None else check_size("vdim", vdim)
        if embed_dim % num_heads:
            raise AttentionError(f"embed_dim must be divisible by num_heads, got {embed_dim} and {num_heads}")
        self.head_dim = embed_dim // num_heads
        self.dropout = check_number("dropout", dropout, 0.0, 1.0)
        self.batch_first, self.add_zero_attn = batch_first, add_zero_attn
        self.gate = _gate_name(gate)
        self.variant = gate_variant(variant, "GatedMultiheadAttention")
        if self.gate is None and self.variant.name != "-":
            raise ValueError(f"variant {self.variant.name!r} shapes the gate, but gate=None has none")
        self._packed = self.kdim == embed_dim and self.vdim == embed_dim  # q, k, v in one in_proj_weight
        # torch's parameters, created in torch's order so that a seed gives torch's initial weights
        if self._packed:
            self.in_proj_weight = nn.Parameter(torch.empty(3 * embed_dim, embed_dim, **fk))
            for name in ("q_proj_weight", "k_proj_weight", "v_proj_weight"):
                self.register_parameter(name, None)
        else:
            self.q_proj_weight = nn.Parameter(torch.empty(embed_dim, embed_dim, **fk))
            self.k_proj_weight = nn.Parameter(torch.empty(embed_dim, self.kdim, **fk))
            self.v_proj_weight = nn.Parameter(torch.empty(embed_dim, self.vdim, **fk))
            self.register_parameter("in_proj_weight", None)
        if bias:
            self.in_proj_bias = nn.Parameter(torch.empty(3 * embed_dim, **fk))
        else:
            self.register_parameter("in_proj_bias", None)
        self.out_proj = NonDynamicallyQuantizableLinear(embed_dim, embed_dim, bias=bias, **fk)
        self.bias_k = nn.Parameter(torch.empty(1, 1, embed_dim, **fk)) if add_bias_kv else None
        self.bias_v = nn.Parameter(torch.empty(1, 1, embed_dim, **fk)) if add_bias_kv else None
        self._reset_parameters()
        n = 0 if self.gate is None else ATTENTION_GATES[self.gate](embed_dim, num_heads)
        self.gate_units, self.refine = n, self.variant.auxiliary == "refine"
        self.gate_proj = nn.Linear(embed_dim, (2 if self.refine else 1) * n, bias=False, **fk) if n else None
        self.gate_bias = nn.Parameter(torch.empty(n, **fk)) if n and self.variant.name != "-" else None
        self._reset_gate_bias(generator)

    @property
    def _qkv_same_embed_dim(self) -> bool:
        """What torch's Transformer layers check before their fused kernel, which reads
        ``in_proj_weight`` and has no gate: ``True`` only for packed weights and no gate."""
        return self._packed and self.gate is None

    def _reset_parameters(self) -> None:
        """torch's init: Xavier-uniform in-projection, zero biases, Xavier-normal ``bias_k/v``."""
        for w in (self.in_proj_weight, self.q_proj_weight, self.k_proj_weight, self.v_proj_weight):
            if w is not None:
                nn.init.xavier_uniform_(w)
        if self.in_proj_bias is not None:
            nn.init.zeros_(self.in_proj_bias)
            nn.init.zeros_(self.out_proj.bias)
        for b in (self.bias_k, self.bias_v):
            if b is not None:
                nn.init.xavier_normal_(b)

    def _reset_gate_bias(self, generator: torch.Generator | None) -> None:
        if self.gate_bias is not None:  # U: UGI; R: 0, the constant of Qiu et al.'s bias-free gate
            with torch.no_grad():
                self.gate_bias.copy_(initial_gate_bias(self.variant, self.gate_units, 0.0, generator))

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """torch's init for the attention, ``nn.Linear``'s for ``gate_proj``, the variant's gate bias."""
        self._reset_parameters()
        self.out_proj.reset_parameters()
        if self.in_proj_bias is not None:
            nn.init.zeros_(self.out_proj.bias)
        if self.gate_proj is not None:
            self.gate_proj.reset_parameters()
        self._reset_gate_bias(generator)

    @classmethod
    def from_torch(cls, mha: nn.MultiheadAttention, *, gate: str | None = "elementwise", variant: str = "-",
                   generator: torch.Generator | None = None) -> GatedMultiheadAttention:
        """A gated copy of a ``torch.nn.MultiheadAttention``: its configuration and weights, a new gate."""
        w = mha.out_proj.weight
        new = cls(mha.embed_dim, mha.num_heads, mha.dropout, mha.in_proj_bias is not None, mha.bias_k is not None,
                  mha.add_zero_attn, mha.kdim, mha.vdim, mha.batch_first, w.device, w.dtype,
                  gate=gate, variant=variant, generator=generator)
        missing, unexpected = new.load_state_dict(mha.state_dict(), strict=False)
        if unexpected or any(not k.startswith("gate_") for k in missing):
            raise ValueError(f"cannot copy {type(mha).__name__}: missing {missing}, unexpected {unexpected}")
        return new

    def output_gate(self, query: Tensor) -> Tensor:
        """``G(X)`` from the query input: ``(*, E) -> (*, n)``, in (0, 1); any layout (it is per position)."""
        if self.gate_proj is None:
            raise RuntimeError("this GatedMultiheadAttention was built with gate=None")
        p = self.gate_proj(query)  # (*, n) or (*, 2n)
        p, p_r = p.chunk(2, dim=-1) if self.refine else (p, None)
        return variant_gate(p, self.gate_bias, p_r)

    def forward(self, query: Tensor, key: Tensor, value: Tensor, key_padding_mask: Tensor | None = None,
                need_weights: bool = True, attn_mask: Tensor | None = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[Tensor, Tensor | None]:
        """torch's call; shapes as in ``torch.nn.MultiheadAttention.forward``."""
        m: MaskedInputs = prepare(self, query, key, value, key_padding_mask, attn_mask, is_causal, need_weights)
        q, k, v = self._project(m.query, m.key, m.value)  # (B, L, E), (B, S, E), (B, S, E)
        B, L, E = q.shape
        H, D = self.num_heads, self.head_dim
        if self.bias_k is not None:  # one learned key/value appended to every sequence
            k = torch.cat([k, self.bias_k.expand(B, 1, E)], dim=1)
            v = torch.cat([v, self.bias_v.expand(B, 1, E)], dim=1)
        q = q.view(B, L, H, D).transpose(1, 2)  # (B, H, L, D)
        k = k.view(B, -1, H, D).transpose(1, 2)  # (B, H, S', D)
        v = v.view(B, -1, H, D).transpose(1, 2)  # (B, H, S', D)
        if self.add_zero_attn:  # one all-zero key/value appended
            k, v = (torch.cat([t, t.new_zeros(B, H, 1, D)], dim=2) for t in (k, v))
        p = self.dropout if self.training else 0.0
        weights = None
        if need_weights:  # explicitly, to return the weights (dropout acts on them, as in torch)
            scores = (q * math.sqrt(1.0 / D)) @ k.transpose(-2, -1)  # (B, H, L, S')
            weights = torch.softmax(scores if m.mask is None else scores + m.mask, dim=-1)
            weights = F.dropout(weights, p) if p > 0 else weights
            y = weights @ v  # (B, H, L, D)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=m.mask, dropout_p=p, is_causal=m.is_causal)
        y = y.transpose(1, 2).reshape(B, L, E)  # heads concatenated
        if self.gate_proj is not None:
            y = _gate_heads(y, self.output_gate(m.query), H)
        out = self.out_proj(y)  # (B, L, E)
        if weights is not None and average_attn_weights:
            weights = weights.mean(dim=1)  # (B, L, S')
        if not m.batched:
            return out.squeeze(0), None if weights is None else weights.squeeze(0)
        return (out if self.batch_first else out.transpose(0, 1)), weights

    def _project(self, query: Tensor, key: Tensor, value: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        if self._packed and query is key and key is value:  # self-attention: one matmul
            return F.linear(query, self.in_proj_weight, self.in_proj_bias).chunk(3, dim=-1)
        if self._packed:
            w_q, w_k, w_v = self.in_proj_weight.chunk(3)
        else:
            w_q, w_k, w_v = self.q_proj_weight, self.k_proj_weight, self.v_proj_weight
        b_q, b_k, b_v = (None,) * 3 if self.in_proj_bias is None else self.in_proj_bias.chunk(3)
        return F.linear(query, w_q, b_q), F.linear(key, w_k, b_k), F.linear(value, w_v, b_v)

    def merge_masks(self, attn_mask: Tensor | None, key_padding_mask: Tensor | None,
                    query: Tensor) -> tuple[Tensor | None, int | None]:
        """The masks as one for torch's fused path (reached only with ``gate=None``), with torch's
        mask type: 1 for ``key_padding_mask (B, L)`` alone, 2 for a ``(B, H, L, L)`` sum when
        ``attn_mask`` is given, ``(None, None)`` for no mask."""
        if attn_mask is None:
            return key_padding_mask, (None if key_padding_mask is None else 1)
        B, L, _ = query.shape  # the fused path is batch-first self-attention: S = L
        merged = attn_mask.view(B, -1, L, L) if attn_mask.dim() == 3 else attn_mask.view(1, 1, L, L)
        merged = merged.expand(B, self.num_heads, L, L)
        if key_padding_mask is not None:
            merged = merged + key_padding_mask.view(B, 1, 1, L)
        return merged, 2

    def extra_repr(self) -> str:
        dims = "" if self._packed else f", kdim={self.kdim}, vdim={self.vdim}"
        gate = "gate=None" if self.gate is None else f"gate={self.gate!r}, variant={self.variant.name!r}"
        return f"{self.embed_dim}, num_heads={self.num_heads}{dims}, batch_first={self.batch_first}, {gate}"


def _gate_name(gate) -> str | None:
    if gate is None:
        return None
    if not isinstance(gate, str):
        raise TypeError(f"gate must be a str or None, got {type(gate).__name__}")
    key = gate.strip().lower()
    if key not in ATTENTION_GATES:
        choices = ", ".join(repr(c) for c in ATTENTION_GATES)
        raise ValueError(f"unknown gate {gate!r}; choose one of {choices} or None")
    return key
