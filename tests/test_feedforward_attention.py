"""GatedMultiheadAttention: gate=None is torch.nn.MultiheadAttention (weights, keys, outputs, attention
weights, gradients); with a gate it equals Qiu et al.'s formula written out here; torch's Transformer
layers run the gate in eval mode under no_grad; variants, functional form, errors, pickle, compile."""

import io
import math
import pickle

import pytest
import torch
from scipy import stats
from torch import nn

from gated.feedforward import (
    ATTENTION_GATES,
    GATE_VARIANTS,
    AttentionError,
    GatedMultiheadAttention,
    attention_output_gate,
)

F64 = torch.float64
E, H = 8, 2


def _sig(x):
    return 1.0 / (1.0 + torch.exp(-x))


def _gate_formula(m, x):
    """G(X) from the raw parameters: σ(X W_θ + b), refined by σ(X W_r − b): r(1 − (1 − f)²) + (1 − r)f²."""
    p = x @ m.gate_proj.weight.T
    b = 0.0 if m.gate_bias is None else m.gate_bias
    if not m.refine:
        return _sig(p + b)
    n = m.gate_units
    f, r = _sig(p[..., :n] + b), _sig(p[..., n:] - b)
    return r * (1 - (1 - f) ** 2) + (1 - r) * f**2


def _attention_formula(m, query, key, value, kpm=None, attn_mask=None):
    """Batch-first ``(B, L, E)`` inputs -> ``(out, per-head weights)``, from the raw parameters."""
    e, h = m.embed_dim, m.num_heads
    d = e // h
    if m.in_proj_weight is not None:
        w_q, w_k, w_v = m.in_proj_weight.split(e)
    else:
        w_q, w_k, w_v = m.q_proj_weight, m.k_proj_weight, m.v_proj_weight
    b_q, b_k, b_v = m.in_proj_bias.split(e) if m.in_proj_bias is not None else (0.0, 0.0, 0.0)
    q, k, v = query @ w_q.T + b_q, key @ w_k.T + b_k, value @ w_v.T + b_v
    B, L, S = q.shape[0], q.shape[1], k.shape[1]
    heads = lambda t: t.reshape(B, -1, h, d).permute(0, 2, 1, 3)  # noqa: E731  (B, H, ·, D)
    scores = heads(q) @ heads(k).transpose(-1, -2) / math.sqrt(d)  # (B, H, L, S)
    if attn_mask is not None:
        scores = scores.masked_fill(attn_mask, -math.inf) if attn_mask.dtype == torch.bool else scores + attn_mask
    if kpm is not None:
        scores = scores.masked_fill(kpm.view(B, 1, 1, S), -math.inf)
    w = torch.exp(scores - scores.amax(-1, keepdim=True))
    w = w / w.sum(-1, keepdim=True)
    y = (w @ heads(v)).permute(0, 2, 1, 3).reshape(B, L, e)
    if m.gate_proj is not None:
        g = _gate_formula(m, query)
        y = y * (g if g.shape[-1] == e else g.repeat_interleave(d, dim=-1))
    return y @ m.out_proj.weight.T + (0.0 if m.out_proj.bias is None else m.out_proj.bias), w


def _perturb(m):
    with torch.no_grad():  # zero-initialised biases would hide a wrong term
        for p in m.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return m


def _grads(out, wrt, seed=1):
    cot = torch.randn(out.shape, dtype=out.dtype, generator=torch.Generator().manual_seed(seed))
    return torch.autograd.grad((out * cot).sum(), wrt)


def _close(a, b, tol=1e-10):
    torch.testing.assert_close(a, b, rtol=tol, atol=tol)


# --------------------------------------------------------------------------- gate=None is torch's

CONFIGS = {"packed": {}, "kdim-vdim": {"kdim": 5, "vdim": 3},
           "bias-kv-zero-attn": {"add_bias_kv": True, "add_zero_attn": True}, "no-bias": {"bias": False}}
MASKS = ["none", "key-padding", "bool-attn", "float-3d+padding"]


def _masks(kind, B, L, S):
    g = torch.Generator().manual_seed(7)
    kpm = torch.zeros(B, S, dtype=torch.bool)
    kpm[0, -2:] = True
    attn = torch.rand(L, S, generator=g) < 0.3
    attn[:, 0] = False  # no fully masked row (both sides would give NaN)
    f3 = torch.randn(B * H, L, S, dtype=F64, generator=g)
    f_kpm = torch.zeros(B, S, dtype=F64).masked_fill(kpm, -math.inf)  # same type as f3, as torch asks
    return {"none": {}, "key-padding": {"key_padding_mask": kpm}, "bool-attn": {"attn_mask": attn},
            "float-3d+padding": {"attn_mask": f3, "key_padding_mask": f_kpm}}[kind]


def _pair(config, batch_first):
    kw = CONFIGS[config]
    ref = _perturb(nn.MultiheadAttention(E, H, batch_first=batch_first, dtype=F64, **kw))
    ours = GatedMultiheadAttention(E, H, batch_first=batch_first, dtype=F64, gate=None, **kw)
    ours.load_state_dict(ref.state_dict())
    return ref, ours


@pytest.mark.parametrize("need_weights", [False, True], ids=["sdpa", "weights"])
@pytest.mark.parametrize("mask", MASKS)
@pytest.mark.parametrize("batch_first", [False, True], ids=["seq-first", "batch-first"])
@pytest.mark.parametrize("config", CONFIGS)
def test_gate_none_equals_torch(config, batch_first, mask, need_weights):
    ref, ours = _pair(config, batch_first)
    assert list(ours.state_dict()) == list(ref.state_dict())
    B, L, S = 3, 4, 6
    kw = CONFIGS[config]
    shape = lambda n, d: (B, n, d) if batch_first else (n, B, d)  # noqa: E731
    q = torch.randn(shape(L, E), dtype=F64, requires_grad=True)
    k = torch.randn(shape(S, kw.get("kdim", E)), dtype=F64, requires_grad=True)
    v = torch.randn(shape(S, kw.get("vdim", E)), dtype=F64, requires_grad=True)
    masks = _masks(mask, B, L, S)
    a = ref(q, k, v, need_weights=need_weights, average_attn_weights=False, **masks)
    b = ours(q, k, v, need_weights=need_weights, average_attn_weights=False, **masks)
    _close(b[0], a[0])
    if need_weights:
        _close(b[1], a[1])
    else:
        assert b[1] is None
    g_ref, g_ours = _grads(a[0], [q, k, v, *ref.parameters()]), _grads(b[0], [q, k, v, *ours.parameters()])
    for ga, gb in zip(g_ref, g_ours, strict=True):
        _close(gb, ga)


@pytest.mark.parametrize("need_weights", [False, True])
def test_gate_none_self_attention_unbatched_and_causal(need_weights):
    ref, ours = _pair("packed", True)
    x = torch.randn(2, 5, E, dtype=F64)
    causal = nn.Transformer.generate_square_subsequent_mask(5, dtype=F64)
    a = ref(x, x, x, need_weights=need_weights, attn_mask=causal, is_causal=True)
    b = ours(x, x, x, need_weights=need_weights, attn_mask=causal, is_causal=True)
    _close(b[0], a[0])
    if need_weights:
        _close(b[1], a[1])  # averaged over heads
    u = torch.randn(5, E, dtype=F64)  # unbatched (L, E), padding mask (S,)
    kpm = torch.tensor([False, False, True, False, True])
    a, b = ref(u, u, u, key_padding_mask=kpm), ours(u, u, u, key_padding_mask=kpm)
    _close(b[0], a[0])
    _close(b[1], a[1])


@pytest.mark.parametrize("kw", [{}, {"kdim": 4, "vdim": 6, "add_bias_kv": True}], ids=["packed", "separate"])
@pytest.mark.parametrize("gate", [None, "headwise"])
def test_seed_gives_torch_initial_weights(kw, gate):
    torch.manual_seed(3)
    ref = nn.MultiheadAttention(E, H, **kw)
    torch.manual_seed(3)
    ours = GatedMultiheadAttention(E, H, gate=gate, **kw)
    for name, p in ref.state_dict().items():
        torch.testing.assert_close(ours.state_dict()[name], p, rtol=0, atol=0)


# --------------------------------------------------------------------------- the gate

@pytest.mark.parametrize("need_weights", [False, True], ids=["sdpa", "weights"])
@pytest.mark.parametrize("variant", GATE_VARIANTS)
@pytest.mark.parametrize("gate", ATTENTION_GATES)
def test_gated_equals_formula(gate, variant, need_weights):
    m = _perturb(GatedMultiheadAttention(E, H, batch_first=True, dtype=F64, gate=gate, variant=variant))
    x = torch.randn(3, 4, E, dtype=F64, requires_grad=True)
    kpm = torch.zeros(3, 4, dtype=torch.bool)
    kpm[1, -1] = True
    out, w = m(x, x, x, key_padding_mask=kpm, need_weights=need_weights, average_attn_weights=False)
    ref, ref_w = _attention_formula(m, x, x, x, kpm=kpm)
    _close(out, ref)
    if need_weights:
        _close(w, ref_w)
    params = list(m.parameters())
    names = ["x", *dict(m.named_parameters())]
    for name, g, r in zip(names, _grads(out, [x, *params]), _grads(ref, [x, *params]), strict=True):
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-10, msg=lambda s, name=name: f"grad of {name}: {s}")


@pytest.mark.parametrize("gate", ATTENTION_GATES)
def test_cross_attention_gate_comes_from_the_query(gate):
    m = _perturb(GatedMultiheadAttention(E, H, kdim=5, vdim=3, dtype=F64, gate=gate, variant="UR"))
    q, k, v = torch.randn(4, 2, E, dtype=F64), torch.randn(6, 2, 5, dtype=F64), torch.randn(6, 2, 3, dtype=F64)
    out, _ = m(q, k, v)  # sequence-first
    ref, _ = _attention_formula(m, q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1))
    _close(out, ref.transpose(0, 1))
    _close(m.output_gate(q), _gate_formula(m, q))


def test_gate_scales_torch_output():
    """From a trained torch module with W_θ = 0: G = σ(0) = 1/2, so out = ½·Y W_o + b_o."""
    ref = _perturb(nn.MultiheadAttention(E, H, dtype=F64))
    ours = GatedMultiheadAttention.from_torch(ref, gate="elementwise")
    assert (ours.gate, ours.batch_first, ours.out_proj.weight.dtype) == ("elementwise", False, F64)
    with torch.no_grad():
        ours.gate_proj.weight.zero_()
    q, kv = torch.randn(4, 2, E, dtype=F64), torch.randn(5, 2, E, dtype=F64)
    y_wo = ref(q, kv, kv)[0] - ref.out_proj.bias
    _close(ours(q, kv, kv)[0], 0.5 * y_wo + ref.out_proj.bias)
    _close(GatedMultiheadAttention.from_torch(ref, gate=None)(q, kv, kv)[0], ref(q, kv, kv)[0])


@pytest.mark.parametrize("refine", [False, True])
@pytest.mark.parametrize("units", ["elementwise", "headwise"])
def test_functional_form(units, refine):
    B, L, h, d = 2, 3, 4, 5
    y = torch.randn(B, L, h * d, dtype=F64, requires_grad=True)
    n = h * d if units == "elementwise" else h
    p = torch.randn(B, L, n, dtype=F64, requires_grad=True)
    p_r = torch.randn(B, L, n, dtype=F64, requires_grad=True) if refine else None
    got = attention_output_gate(y, p, h, p_r)
    g = _sig(p)
    if refine:
        r = _sig(p_r)
        g = r * (1 - (1 - g) ** 2) + (1 - r) * g**2
    ref = y * (g if n == h * d else g.repeat_interleave(d, dim=-1))
    _close(got, ref)
    wrt = [y, p] + ([p_r] if refine else [])
    for a, b in zip(_grads(got, wrt), _grads(ref, wrt), strict=True):
        _close(a, b)


def test_variant_parameters():
    n = {"elementwise": E, "headwise": H}
    for gate, units in n.items():
        assert GatedMultiheadAttention(E, H, gate=gate).gate_bias is None  # Qiu et al.: σ(X W_θ), no bias
        m = GatedMultiheadAttention(E, H, gate=gate, variant="R")
        assert m.gate_proj.weight.shape == (2 * units, E) and m.gate_proj.bias is None
        torch.testing.assert_close(m.gate_bias, torch.zeros(units))
    assert GatedMultiheadAttention(E, H, gate=None).gate_proj is None
    assert GatedMultiheadAttention(E, H, variant="uniform-refine").variant.name == "UR"


@pytest.mark.parametrize("variant", ["U", "UR"])
def test_uniform_gate_init(variant):
    n = 1024
    m = GatedMultiheadAttention(n, 8, variant=variant, generator=torch.Generator().manual_seed(3))
    u = torch.sigmoid(m.gate_bias.detach().double())
    assert u.min() >= 1 / n - 1e-6 and u.max() <= 1 - 1 / n + 1e-6
    assert stats.kstest(u.numpy(), stats.uniform(1 / n, 1 - 2 / n).cdf).pvalue > 0.01
    again = GatedMultiheadAttention(n, 8, variant=variant, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(again.gate_bias, m.gate_bias)


# --------------------------------------------------------------------------- inside torch's Transformer layers

@pytest.fixture
def fused_calls(monkeypatch):
    """Counts the calls of torch's fused encoder-layer kernel (which would skip self_attn.forward)."""
    calls, fused = [], torch._transformer_encoder_layer_fwd

    def spy(*args, **kwargs):
        calls.append(1)
        return fused(*args, **kwargs)

    monkeypatch.setattr(torch, "_transformer_encoder_layer_fwd", spy)
    return calls


def _encoder_layer(gate, variant="UR"):
    layer = nn.TransformerEncoderLayer(E, H, 16, dropout=0.0, batch_first=True, dtype=F64)
    layer.self_attn = _perturb(GatedMultiheadAttention.from_torch(layer.self_attn, gate=gate, variant=variant))
    return layer.eval()


def _encoder_formula(layer, x, kpm=None):
    x = layer.norm1(x + _attention_formula(layer.self_attn, x, x, x, kpm=kpm)[0])
    return layer.norm2(x + layer.linear2(torch.relu(layer.linear1(x))))


@pytest.mark.parametrize("gate", ["elementwise", "headwise"])
def test_encoder_layer_eval_no_grad_runs_the_gate(gate, fused_calls):
    layer = _encoder_layer(gate)
    x = torch.randn(3, 5, E, dtype=F64)
    kpm = torch.tensor([[False] * 5, [False] * 3 + [True] * 2, [False] * 4 + [True]])
    with torch.no_grad():
        _close(layer(x), _encoder_formula(layer, x))
        _close(layer(x, src_key_padding_mask=kpm), _encoder_formula(layer, x, kpm))
    assert fused_calls == []


def test_encoder_layer_keeps_the_fused_path_without_a_gate(fused_calls):
    layer = _encoder_layer(None, "-")
    x = torch.randn(3, 5, E, dtype=F64)
    kpm = torch.tensor([[False] * 5, [False] * 3 + [True] * 2, [False] * 4 + [True]])
    causal = nn.Transformer.generate_square_subsequent_mask(5, dtype=F64) == -math.inf
    with torch.no_grad():  # the fused kernel gets its masks from our merge_masks
        _close(layer(x), _encoder_formula(layer, x))
        _close(layer(x, src_key_padding_mask=kpm), _encoder_formula(layer, x, kpm))
        got = layer(x, src_mask=causal)
    ref = layer.norm1(x + _attention_formula(layer.self_attn, x, x, x, attn_mask=causal)[0])
    _close(got, layer.norm2(ref + layer.linear2(torch.relu(layer.linear1(ref)))))
    assert fused_calls == [1, 1, 1]  # the checks above are real ones: torch took the fused path


def test_encoder_stack_with_padding_runs_the_gate(fused_calls):
    layer = _encoder_layer("elementwise")
    with pytest.warns(UserWarning, match="_qkv_same_embed_dim was not True"):  # torch's own notice
        encoder = nn.TransformerEncoder(layer, num_layers=2).eval()
    x = torch.randn(2, 5, E, dtype=F64)
    kpm = torch.tensor([[False] * 5, [False] * 3 + [True] * 2])
    with torch.no_grad():
        got = encoder(x, src_key_padding_mask=kpm)
    ref = x
    for lyr in encoder.layers:
        ref = _encoder_formula(lyr, ref, kpm)
    _close(got, ref)
    assert fused_calls == []


@pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors is in prototype stage")
def test_encoder_stack_built_before_the_swap_raises():
    layer = nn.TransformerEncoderLayer(E, H, 16, dropout=0.0, batch_first=True)
    encoder = nn.TransformerEncoder(layer, num_layers=1, enable_nested_tensor=True).eval()
    encoder.layers[0].self_attn = GatedMultiheadAttention.from_torch(encoder.layers[0].self_attn)
    kpm = torch.tensor([[False] * 5, [False] * 3 + [True] * 2])
    with torch.no_grad(), pytest.raises(AttentionError, match="NestedTensor .* enable_nested_tensor=False"):
        encoder(torch.randn(2, 5, E), src_key_padding_mask=kpm)


def test_decoder_layer_eval_no_grad_runs_both_gates():
    layer = nn.TransformerDecoderLayer(E, H, 16, dropout=0.0, batch_first=True, dtype=F64)
    layer.self_attn = _perturb(GatedMultiheadAttention.from_torch(layer.self_attn, variant="R"))
    layer.multihead_attn = _perturb(GatedMultiheadAttention.from_torch(layer.multihead_attn, gate="headwise"))
    layer.eval()
    x, mem = torch.randn(2, 4, E, dtype=F64), torch.randn(2, 6, E, dtype=F64)
    causal = nn.Transformer.generate_square_subsequent_mask(4, dtype=F64)
    with torch.no_grad():
        got = layer(x, mem, tgt_mask=causal, tgt_is_causal=True)
    h = layer.norm1(x + _attention_formula(layer.self_attn, x, x, x, attn_mask=causal)[0])
    h = layer.norm2(h + _attention_formula(layer.multihead_attn, h, mem, mem)[0])
    _close(got, layer.norm3(h + layer.linear2(torch.relu(layer.linear1(h)))))


# --------------------------------------------------------------------------- errors, pickle, compile

@pytest.mark.parametrize(
    "call,exc,match",
    [
        (lambda: GatedMultiheadAttention(10, 3),
         AssertionError, "embed_dim must be divisible by num_heads, got 10 and 3"),
        (lambda: GatedMultiheadAttention(10, 3), ValueError, "divisible"),
        (lambda: GatedMultiheadAttention(0, 2), ValueError, "embed_dim must be greater than 0, got embed_dim=0"),
        (lambda: GatedMultiheadAttention(8, -1), ValueError, "num_heads must be greater than 0"),
        (lambda: GatedMultiheadAttention(8.0, 2), TypeError, "embed_dim must be an int, got float"),
        (lambda: GatedMultiheadAttention(8, 2, kdim=0), ValueError, "kdim must be greater than 0"),
        (lambda: GatedMultiheadAttention(8, 2, dropout=1.5), ValueError, r"dropout must be in \[0.0, 1.0\], got 1.5"),
        (lambda: GatedMultiheadAttention(8, 2, gate="channel"),
         ValueError, "unknown gate 'channel'; choose one of 'elementwise', 'headwise' or None"),
        (lambda: GatedMultiheadAttention(8, 2, gate=1), TypeError, "gate must be a str or None, got int"),
        (lambda: GatedMultiheadAttention(8, 2, variant="OM"),
         ValueError, "variant 'OM' does not exist for GatedMultiheadAttention; choose one of '-', 'U', 'R', 'UR'"),
        (lambda: GatedMultiheadAttention(8, 2, variant="XR"), ValueError, "unknown variant 'XR'; choose one of"),
        (lambda: GatedMultiheadAttention(8, 2, gate=None, variant="U"), ValueError, "gate=None has none"),
        (lambda: GatedMultiheadAttention(8, 2)(torch.randn(3, 8), torch.randn(2, 3, 8), torch.randn(2, 3, 8)),
         AssertionError, "For unbatched .2-D. `query`, expected `key` and `value` to be 2-D"),
        (lambda: GatedMultiheadAttention(8, 2)(*[torch.randn(3, 2, 7)] * 3),
         ValueError, "expected query with 8 features in the last dim, got 7"),
        (lambda: GatedMultiheadAttention(8, 2)(torch.randn(3, 2, 8), torch.randn(4, 2, 8), torch.randn(5, 2, 8)),
         AssertionError, "key and value the sequence length"),
        (lambda: GatedMultiheadAttention(8, 2)(*[torch.randn(3, 2, 8)] * 3,
                                               attn_mask=torch.zeros(3, 4, dtype=torch.bool)),
         RuntimeError, r"The shape of the 2D attn_mask is \(3, 4\), but should be \(3, 3\)"),
        (lambda: GatedMultiheadAttention(8, 2)(*[torch.randn(3, 2, 8)] * 3,
                                               key_padding_mask=torch.zeros(2, 4, dtype=torch.bool)),
         AssertionError, r"key_padding_mask of shape \(2, 3\), got \(2, 4\)"),
        (lambda: GatedMultiheadAttention(8, 2)(*[torch.randn(3, 2, 8)] * 3,
                                               attn_mask=torch.zeros(3, 3, dtype=torch.long)),
         AssertionError, "only bool and floating types of attn_mask"),
        (lambda: GatedMultiheadAttention(8, 2)(*[torch.randn(3, 2, 8)] * 3, is_causal=True),
         RuntimeError, "Need attn_mask if specifying the is_causal hint"),
        (lambda: GatedMultiheadAttention(8, 2)([1.0], torch.randn(3, 8), torch.randn(3, 8)),
         TypeError, "query must be a Tensor"),
        (lambda: attention_output_gate(torch.randn(2, 6), torch.randn(2, 4), 2),
         ValueError, r"gate_logits must have shape \(2, 6\) \(elementwise\) or \(2, 2\) \(headwise\), got \(2, 4\)"),
        (lambda: attention_output_gate(torch.randn(2, 6), torch.randn(2, 2), 4),
         ValueError, "divisible by num_heads=4"),
        (lambda: attention_output_gate(torch.randn(2, 6), torch.randn(2, 2), 2, torch.randn(2, 6)),
         ValueError, "refine_logits must be a Tensor of gate_logits' shape"),
        (lambda: GatedMultiheadAttention(8, 2, gate=None).output_gate(torch.randn(8)), RuntimeError, "gate=None"),
    ],
)
def test_bad_input(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


@pytest.mark.parametrize("variant", ["-", "UR"])
def test_pickle_and_torch_save(variant):
    m = GatedMultiheadAttention(E, H, batch_first=True, gate="headwise", variant=variant)
    x = torch.randn(2, 3, E)
    ref = m(x, x, x)[0]
    buf = io.BytesIO()
    torch.save(m, buf)
    buf.seek(0)
    for loaded in (pickle.loads(pickle.dumps(m)), torch.load(buf, weights_only=False)):
        assert loaded.variant.name == variant and not loaded._qkv_same_embed_dim
        torch.testing.assert_close(loaded(x, x, x)[0], ref, rtol=0, atol=0)


@pytest.mark.slow
def test_compile():
    torch._dynamo.reset()
    m = _perturb(GatedMultiheadAttention(E, H, batch_first=True, variant="UR"))
    x = torch.randn(2, 5, E, requires_grad=True)
    kpm = torch.tensor([[False] * 5, [False] * 4 + [True]])
    compiled = torch.compile(m, backend="aot_eager", fullgraph=True)  # one graph: no break, SDPA path
    kw = {"key_padding_mask": kpm, "need_weights": False}
    got, ref = compiled(x, x, x, **kw), m(x, x, x, **kw)
    torch.testing.assert_close(got[0], ref[0])
    for a, b in zip(_grads(got[0], [x, *m.parameters()]), _grads(ref[0], [x, *m.parameters()]), strict=True):
        torch.testing.assert_close(a, b)
