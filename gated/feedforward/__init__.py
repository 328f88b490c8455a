"""Feed-forward and convolutional gating: the GLU family and gated Transformer FFNs (Dauphin et al.
2017; Shazeer 2020), highway layers (Srivastava et al. 2015) with optional UGI/refine transform gates,
squeeze-and-excitation, Hua et al. (2019)'s channel-gated convolution, gated attention (Qiu et al.
2025), GTrXL's gated residual (Parisotto et al. 2020), gated causal convolutions (Dauphin et al. 2017;
WaveNet) and the gated RMSNorm of Mamba-2. See docs/feedforward.md."""

from gated.feedforward._gate import GATE_VARIANTS
from gated.feedforward.attention import ATTENTION_GATES, AttentionError, GatedMultiheadAttention, attention_output_gate
from gated.feedforward.channel import ChannelGatedConv2d, ConvCost, SqueezeExcite
from gated.feedforward.conv import GATED_CONV_KINDS, GatedConv1d
from gated.feedforward.ffn import FFN_LAYOUTS, FFN_VARIANTS, FeedForward, FFNVariant, ffn_hidden_size, glu_hidden_size
from gated.feedforward.glu import (
    ACTIVATIONS, GLU, GLU_ACTIVATIONS, bilinear, gated_linear, geglu, glu, reglu, split_glu, swiglu, swish,
)
from gated.feedforward.highway import HIGHWAY_VARIANTS, Highway, HighwayNetwork
from gated.feedforward.norm import NORM_GATE_ACTIVATIONS, GatedRMSNorm
from gated.feedforward.residual import GatedResidual

__all__ = [
    "glu", "bilinear", "reglu", "geglu", "swiglu", "gated_linear", "split_glu", "swish", "GLU",
    "ACTIVATIONS", "GLU_ACTIVATIONS",
    "FeedForward", "FFN_VARIANTS", "FFNVariant", "FFN_LAYOUTS", "glu_hidden_size", "ffn_hidden_size",
    "Highway", "HighwayNetwork", "HIGHWAY_VARIANTS",
    "SqueezeExcite", "ChannelGatedConv2d", "ConvCost",
    "GatedMultiheadAttention", "attention_output_gate", "ATTENTION_GATES", "AttentionError", "GATE_VARIANTS",
    "GatedResidual", "GatedConv1d", "GATED_CONV_KINDS", "GatedRMSNorm", "NORM_GATE_ACTIVATIONS",
]
