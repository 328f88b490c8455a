"""Input checks, layout and masks of :class:`gated.feedforward.attention.GatedMultiheadAttention`,
following ``torch.nn.MultiheadAttention``'s rules (``F.multi_head_attention_forward``):

- ``query`` is ``(L, E)`` unbatched, ``(L, B, E)``, or ``(B, L, E)`` with ``batch_first``;
- a bool mask is ``True`` where attention is not allowed and becomes ``-inf``; a float mask is added;
- ``attn_mask`` is ``(L, S)`` or ``(B·H, L, S)``; ``key_padding_mask`` is ``(B, S)`` (``(S,)`` unbatched);
- ``bias_k``/``add_zero_attn`` append keys that every query may attend (masks padded with 0);
- ``is_causal`` is a hint that ``attn_mask`` is causal: with no ``key_padding_mask`` and no weights
  asked for, SDPA builds the causal mask itself; it needs an ``attn_mask`` all the same.

Glossary: ``B`` batch, ``L`` target length, ``S`` source length (``S'`` with appended keys), ``H`` heads.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from gated._base import InputError


class AttentionError(InputError, AssertionError):
    """A shape the attention cannot use. ``torch.nn.MultiheadAttention`` raises ``AssertionError``
    (and ``RuntimeError`` for some masks) here; this is both, and gated's :class:`InputError`."""


class MaskedInputs(NamedTuple):
    query: Tensor  # (B, L, E)
    key: Tensor  # (B, S, kdim)
    value: Tensor  # (B, S, vdim)
    mask: Tensor | None  # float, broadcastable to (B, H, L, S'); None: no mask
    is_causal: bool  # let SDPA apply the causal mask
    batched: bool


def prepare(attn, query, key, value, key_padding_mask, attn_mask, is_causal: bool,
            need_weights: bool) -> MaskedInputs:
    """Check the call, move it to batch-first and merge the masks into one float mask."""
    for name, t in (("query", query), ("key", key), ("value", value)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a Tensor, got {type(t).__name__}")
        if t.is_nested:
            raise AttentionError(
                f"GatedMultiheadAttention got a NestedTensor {name}. torch.nn.TransformerEncoder packs padded "
                "batches into NestedTensors for its fused path, which has no gate: build the encoder after "
                "setting self_attn (or pass enable_nested_tensor=False)")
    batched = _check_dims(query, key, value, key_padding_mask, attn_mask)
    if not batched:
        query, key, value = _same(lambda t: t.unsqueeze(0), query, key, value)
        key_padding_mask = None if key_padding_mask is None else key_padding_mask.unsqueeze(0)
    elif not attn.batch_first:
        query, key, value = _same(lambda t: t.transpose(0, 1), query, key, value)
    (B, L, _), S = query.shape, key.shape[1]
    for name, t, size in (("query", query, attn.embed_dim), ("key", key, attn.kdim), ("value", value, attn.vdim)):
        if t.shape[-1] != size:
            raise AttentionError(f"expected {name} with {size} features in the last dim, got {t.shape[-1]}")
    if key.shape[:2] != value.shape[:2] or key.shape[0] != B:
        raise AttentionError(f"query, key and value must share the batch size and key and value the sequence "
                             f"length; got (B, L)={tuple(query.shape[:2])}, key {tuple(key.shape[:2])} and "
                             f"value {tuple(value.shape[:2])} in batch-first order")
    kpm = _float_mask(key_padding_mask, "key_padding_mask", query.dtype)
    mask = _float_mask(attn_mask, "attn_mask", query.dtype)
    if is_causal and mask is None:
        raise AttentionError("Need attn_mask if specifying the is_causal hint. You may use the Transformer module "
                             "method `generate_square_subsequent_mask` to create this mask.")
    causal = bool(is_causal) and kpm is None and not need_weights
    H, extra = attn.num_heads, int(attn.bias_k is not None) + int(attn.add_zero_attn)
    if causal:
        mask = None
    elif mask is not None:
        want = (L, S) if mask.dim() == 2 else (B * H, L, S)
        if tuple(mask.shape) != want:
            raise AttentionError(f"The shape of the {mask.dim()}D attn_mask is {tuple(mask.shape)}, "
                                 f"but should be {want}.")
        mask = F.pad(mask, (0, extra)).view(-1, H, L, S + extra) if mask.dim() == 3 else F.pad(mask, (0, extra))
    if kpm is not None:
        if tuple(kpm.shape) != (B, S):
            raise AttentionError(f"expected key_padding_mask of shape {(B, S)}, got {tuple(kpm.shape)}")
        kpm = F.pad(kpm, (0, extra)).view(B, 1, 1, S + extra)
        mask = kpm if mask is None else mask + kpm
    return MaskedInputs(query, key, value, mask, causal, batched)


def _same(fn, query, key, value):
    """``fn`` on each input, once per distinct tensor (``query is key`` stays true: one matmul)."""
    q = fn(query)
    k = q if key is query else fn(key)
    v = k if value is key else (q if value is query else fn(value))
    return q, k, v


def _check_dims(query, key, value, key_padding_mask, attn_mask) -> bool:
    if query.dim() not in (2, 3):
        raise AttentionError("query should be unbatched 2D or batched 3D tensor but received "
                             f"{query.dim()}-D query tensor")
    d = query.dim()
    kind = "batched (3-D)" if d == 3 else "unbatched (2-D)"
    if key.dim() != d or value.dim() != d:
        raise AttentionError(f"For {kind} `query`, expected `key` and `value` to be {d}-D but found "
                             f"{key.dim()}-D and {value.dim()}-D tensors respectively")
    if key_padding_mask is not None and key_padding_mask.dim() != d - 1:
        raise AttentionError(f"For {kind} `query`, expected `key_padding_mask` to be `None` or {d - 1}-D but found "
                             f"{key_padding_mask.dim()}-D tensor instead")
    if attn_mask is not None and attn_mask.dim() not in (2, 3):
        raise AttentionError(f"For {kind} `query`, expected `attn_mask` to be `None`, 2-D or 3-D but found "
                             f"{attn_mask.dim()}-D tensor instead")
    return d == 3


def _float_mask(mask, name: str, dtype: torch.dtype) -> Tensor | None:
    """A bool mask (``True``: masked) as ``0 / -inf``; a float mask in ``dtype``."""
    if mask is None:
        return None
    if not isinstance(mask, Tensor):
        raise TypeError(f"{name} must be a Tensor or None, got {type(mask).__name__}")
    if mask.dtype == torch.bool:
        return torch.zeros_like(mask, dtype=dtype).masked_fill_(mask, float("-inf"))
    if not mask.is_floating_point():
        raise AttentionError(f"only bool and floating types of {name} are supported, got {mask.dtype}")
    return mask.to(dtype)
