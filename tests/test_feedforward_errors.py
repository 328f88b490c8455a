"""Bad input to the feed-forward modules raises with a message that names what was expected."""

import pytest
import torch

import gated.feedforward as ff

FFN_CHOICES = "'relu', 'gelu', 'swish', 'glu', 'bilinear', 'reglu', 'geglu', 'swiglu'"


@pytest.mark.parametrize(
    "call,exc,match",
    [
        # odd size where the split needs an even one
        (lambda: ff.split_glu(torch.randn(3, 5)), ValueError, "needs an even size; got 5"),
        (lambda: ff.GLU("geglu", dim=1)(torch.randn(2, 7, 4, 4)), ValueError, "split_glu halves dim 1 .* got 7"),
        (lambda: ff.split_glu(torch.randn(4), dim=3), ValueError, "dim 3 is out of range for a 1-D input"),
        # dimension mismatches
        (lambda: ff.glu(torch.randn(3), torch.randn(4)), ValueError, r"same shape, got \(3,\) and \(4,\)"),
        (lambda: ff.FeedForward(4, 8)(torch.randn(2, 5)),
         ValueError, "expected d_model=4 features in the last dim, got 5"),
        (lambda: ff.Highway(4)(torch.randn(3)), ValueError, "expected size=4 features in the last dim, got 3"),
        (lambda: ff.SqueezeExcite(8)(torch.randn(2, 6, 3, 3)),
         ValueError, "expected channels=8 features in dim 1, got 6"),
        (lambda: ff.SqueezeExcite(8)(torch.randn(2, 8)), ValueError, r"at least 3 dims \(B, C, \*spatial\), got 2-D"),
        (lambda: ff.ChannelGatedConv2d(8, 4, 3)(torch.randn(2, 6, 5, 5)),
         ValueError, "in_channels=8 features in dim 1, got 6"),
        (lambda: ff.ChannelGatedConv2d(8, 4, 3)(torch.randn(8, 5, 5)), ValueError, r"4 dims \(B, C, H, W\), got 3-D"),
        (lambda: ff.FeedForward(4, 8)(torch.ones(2, 4, dtype=torch.long)), TypeError, "must be floating point"),
        # unknown names list the choices
        (lambda: ff.FeedForward(4, 8, "swishglu"),
         ValueError, f"unknown FFN activation 'swishglu'; choose one of {FFN_CHOICES}"),
        (lambda: ff.GLU("relu"),
         ValueError, "unknown GLU activation 'relu'; choose one of 'glu', 'bilinear', 'reglu', 'geglu', 'swiglu'"),
        (lambda: ff.gated_linear(torch.ones(1), torch.ones(1), "tanh"), ValueError, "unknown GLU activation 'tanh'"),
        (lambda: ff.Highway(4, activation="foo"),
         ValueError, "unknown activation 'foo'; choose one of 'identity', 'sigmoid'"),
        (lambda: ff.FeedForward(4, 8, layout="fused"),
         ValueError, "unknown layout 'fused'; choose one of 'packed', 'separate'"),
        (lambda: ff.Highway(4, variant="OM"),
         ValueError, "variant 'OM' does not exist for Highway; choose one of '-', 'U', 'R', 'UR'"),
        (lambda: ff.Highway(4, variant="XR"), ValueError, "unknown variant 'XR'; choose one of"),
        (lambda: ff.FeedForward(4, 8, 3), TypeError, "FFN activation must be a str, got int"),
        # arguments that do not apply or are out of range
        (lambda: ff.FeedForward(4, 8, "reglu", beta=2.0),
         ValueError, "beta=2.0 only applies to 'swish' and 'swiglu'; 'reglu'"),
        (lambda: ff.Highway(4, variant="UR", gate_bias=-1.0), ValueError, "draws the gate bias with UGI"),
        (lambda: ff.ChannelGatedConv2d(6, 4, 3),
         ValueError, "base_fraction=0.25 of in_channels=6 must give a whole number"),
        (lambda: ff.ChannelGatedConv2d(8, 4, 3, temperature=0), ValueError, "temperature must be a number > 0"),
        (lambda: ff.ChannelGatedConv2d(8, 4, (3, 3, 3)), ValueError, "kernel_size must be an int or a pair"),
        (lambda: ff.FeedForward(4, 0), ValueError, "d_ff must be an integer >= 1, got 0"),
        (lambda: ff.FeedForward(4, 8, dropout=1.0), ValueError, r"dropout must be a number in \[0, 1\)"),
        (lambda: ff.glu_hidden_size(3072, multiple_of=0), ValueError, "multiple_of must be an integer >= 1"),
        (lambda: ff.HighwayNetwork(4, num_layers=0), ValueError, "num_layers must be an integer >= 1"),
    ],
)
def test_bad_input(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_names_are_case_insensitive():
    x = torch.randn(2, 4)
    a, b = ff.FeedForward(4, 8, "SwiGLU"), ff.FeedForward(4, 8, "swiglu")
    b.load_state_dict(a.state_dict())
    torch.testing.assert_close(a(x), b(x), rtol=0, atol=0)
    assert a.activation == "swiglu"
