"""FeedForward: Shazeer's eight rows against explicit formulas, packed = separate, the 2/3 rule."""

import pytest
import torch
import torch.nn.functional as F

from gated.feedforward import FFN_VARIANTS, FeedForward, ffn_hidden_size, glu_hidden_size

ACT = {  # the activation on x W1 / x W, written out
    "relu": F.relu, "gelu": F.gelu, "swish": lambda x: x * torch.sigmoid(x),
    "glu": torch.sigmoid, "bilinear": lambda x: x, "reglu": F.relu, "geglu": F.gelu,
    "swiglu": lambda x: x * torch.sigmoid(x),
}
GATED = {"glu", "bilinear", "reglu", "geglu", "swiglu"}


def test_registry_is_shazeers_table():
    assert set(FFN_VARIANTS) == set(ACT)
    assert {n for n, v in FFN_VARIANTS.items() if v.gated} == GATED


def _reference(ffn, x):
    """Shazeer's formula from the raw weights, float64."""
    lin = lambda m, h: h @ m.weight.T + (m.bias if m.bias is not None else 0)  # noqa: E731
    name = ffn.activation
    if name not in GATED:
        return lin(ffn.w2, ACT[name](lin(ffn.w1, x)))
    if ffn.layout == "packed":
        d_ff = ffn.d_ff
        W, V = ffn.wv.weight[:d_ff], ffn.wv.weight[d_ff:]
        b, c = (ffn.wv.bias[:d_ff], ffn.wv.bias[d_ff:]) if ffn.bias else (0, 0)
    else:
        W, V = ffn.w.weight, ffn.v.weight
        b, c = (ffn.w.bias, ffn.v.bias) if ffn.bias else (0, 0)
    return lin(ffn.w2, ACT[name](x @ W.T + b) * (x @ V.T + c))


@pytest.mark.parametrize("layout", ["packed", "separate"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("name", list(ACT))
def test_equals_formula(name, bias, layout):
    ffn = FeedForward(6, 10, name, d_out=5, bias=bias, layout=layout, dtype=torch.float64)
    x = torch.randn(3, 4, 6, dtype=torch.float64)
    torch.testing.assert_close(ffn(x), _reference(ffn, x), rtol=1e-12, atol=1e-12)
    assert (ffn.w2.bias is not None) == bias


@pytest.mark.parametrize("name", sorted(GATED))
def test_packed_and_separate_load_each_other(name):
    packed = FeedForward(8, 12, name, layout="packed", dtype=torch.float64)
    sep = FeedForward(8, 12, name, layout="separate", dtype=torch.float64)
    x = torch.randn(5, 8, dtype=torch.float64)
    assert not torch.allclose(packed(x), sep(x))  # different random weights before loading
    sep.load_state_dict(packed.state_dict())
    torch.testing.assert_close(sep(x), packed(x), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(sep.w.weight, packed.wv.weight[:12], rtol=0, atol=0)
    # and back, into a fresh packed module, also nested under a prefix
    outer = torch.nn.Sequential(FeedForward(8, 12, name, layout="packed", dtype=torch.float64))
    outer.load_state_dict(torch.nn.Sequential(sep).state_dict())
    torch.testing.assert_close(outer(x), packed(x), rtol=1e-12, atol=1e-12)
    assert set(outer.state_dict()) == {"0.wv.weight", "0.wv.bias", "0.w2.weight", "0.w2.bias"}


def test_layout_load_still_strict():
    sep = FeedForward(8, 12, "swiglu", layout="separate", bias=False)
    with pytest.raises(RuntimeError, match="Unexpected key"):
        sep.load_state_dict(FeedForward(8, 12, "swiglu", layout="packed", bias=True).state_dict())


def test_packed_gradients_equal_separate():
    packed = FeedForward(8, 12, "geglu", layout="packed", dtype=torch.float64)
    sep = FeedForward(8, 12, "geglu", layout="separate", dtype=torch.float64)
    sep.load_state_dict(packed.state_dict())
    x = torch.randn(5, 8, dtype=torch.float64)
    packed(x).pow(2).sum().backward()
    sep(x).pow(2).sum().backward()
    torch.testing.assert_close(torch.cat([sep.w.weight.grad, sep.v.weight.grad]), packed.wv.weight.grad)
    torch.testing.assert_close(sep.w2.weight.grad, packed.w2.weight.grad)


@pytest.mark.parametrize("name", ["swiglu", "reglu", "gelu"])
def test_gradcheck(name):
    ffn = FeedForward(4, 6, name, dtype=torch.float64)
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(ffn, (x,))


def test_swiglu_beta_and_dropout():
    ffn = FeedForward(4, 6, "swiglu", beta=2.0, dropout=0.5, layout="separate", dtype=torch.float64)
    x = torch.randn(3, 4, dtype=torch.float64)
    h = (x @ ffn.w.weight.T + ffn.w.bias) * torch.sigmoid(2.0 * (x @ ffn.w.weight.T + ffn.w.bias))
    h = h * (x @ ffn.v.weight.T + ffn.v.bias)
    torch.testing.assert_close(ffn.eval()(x), h @ ffn.w2.weight.T + ffn.w2.bias)
    ffn.train()
    torch.testing.assert_close(ffn.hidden(x), h)  # dropout acts after hidden(), before W2
    torch.manual_seed(1)
    mask = torch.nn.functional.dropout(torch.ones_like(h), 0.5)
    torch.manual_seed(1)
    torch.testing.assert_close(ffn(x), (h * mask) @ ffn.w2.weight.T + ffn.w2.bias)


@pytest.mark.parametrize(
    "d_ff,multiple_of,want",
    [(3072, 8, 2048), (3072, 1, 2048), (256, 8, 168), (256, 1, 171), (4, 8, 8), (12, 8, 8), (1000, 64, 640),
     (6, 2, 4), (9, 2, 6), (3, 2, 2), (9, 4, 8)],
)
def test_glu_hidden_size(d_ff, multiple_of, want):
    # 2/3·256 = 170.67 -> nearest multiple of 8 is 168; 2/3·1000 = 666.7 -> 640 (10.4 x 64);
    # 2/3·9 = 6 = 1.5 x 4 -> a tie, rounded up to 8
    assert glu_hidden_size(d_ff, multiple_of) == want


def _count(m):
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("name", list(ACT))
def test_parameter_counts_under_two_thirds_rule(name):
    # T5-base sizes, bias-free as in Shazeer: every row has exactly 2·768·3072 = 4,718,592 weights
    d_ff = ffn_hidden_size(name, 3072)
    assert _count(FeedForward(768, d_ff, name, bias=False, device="meta")) == 4_718_592
    # a size that does not divide: 3·64·168 = 32,256 gated vs 2·64·256 = 32,768 plain
    want = 32_256 if name in GATED else 32_768
    assert _count(FeedForward(64, ffn_hidden_size(name, 256), name, bias=False)) == want
    # with biases: plain 2·64·256 + 256 + 64; gated 3·64·168 + 2·168 + 64
    want = 32_256 + 400 if name in GATED else 32_768 + 320
    assert _count(FeedForward(64, ffn_hidden_size(name, 256), name)) == want
