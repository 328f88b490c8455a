"""Feed-forward and convolutional gating: the GLU family and gated Transformer FFNs (Dauphin et al.
2017; Shazeer 2020), highway layers (Srivastava et al. 2015) with optional UGI/refine transform gates,
squeeze-and-excitation, and Hua et al. (2019)'s channel-gated convolution. See docs/feedforward.md."""

from gated.feedforward.channel import ChannelGatedConv2d, ConvCost, SqueezeExcite
from gated.feedforward.ffn import FFN_LAYOUTS, FFN_VARIANTS, FeedForward, FFNVariant, ffn_hidden_size, glu_hidden_size
from gated.feedforward.glu import (
    ACTIVATIONS, GLU, GLU_ACTIVATIONS, bilinear, gated_linear, geglu, glu, reglu, split_glu, swiglu, swish,
)
from gated.feedforward.highway import HIGHWAY_VARIANTS, Highway, HighwayNetwork

__all__ = [
    "glu", "bilinear", "reglu", "geglu", "swiglu", "gated_linear", "split_glu", "swish", "GLU",
    "ACTIVATIONS", "GLU_ACTIVATIONS",
    "FeedForward", "FFN_VARIANTS", "FFNVariant", "FFN_LAYOUTS", "glu_hidden_size", "ffn_hidden_size",
    "Highway", "HighwayNetwork", "HIGHWAY_VARIANTS",
    "SqueezeExcite", "ChannelGatedConv2d", "ConvCost",
]
