"""gated: gating mechanisms for neural networks, built around Gu et al., "Improving the Gating
Mechanism of Recurrent Neural Networks" (ICML 2020)."""

from gated import feedforward, gates, init
from gated._base import InputError
from gated.cells import GRUCell, LSTMCell, MGUCell
from gated.cores import CORES
from gated.diagnostics import gate_activations
from gated.feedforward import (
    FFN_VARIANTS,
    GLU,
    ChannelGatedConv2d,
    FeedForward,
    GatedConv1d,
    GatedMultiheadAttention,
    GatedResidual,
    GatedRMSNorm,
    Highway,
    HighwayNetwork,
    SqueezeExcite,
    ffn_hidden_size,
    glu_hidden_size,
)
from gated.minimal import MinGRU, MinLSTM, linear_scan
from gated.lru import HGRN, RGLRU
from gated.recurrent import GRU, LSTM, MGU
from gated.variants import VARIANTS, Variant, get_variant

__version__ = "0.1.0"

__all__ = [
    "LSTM", "GRU", "MGU", "LSTMCell", "GRUCell", "MGUCell", "MinGRU", "MinLSTM", "RGLRU", "HGRN", "linear_scan",
    "InputError",
    "VARIANTS", "CORES", "Variant", "get_variant", "gate_activations", "gates", "init",
    "feedforward", "FeedForward", "FFN_VARIANTS", "GLU", "Highway", "HighwayNetwork", "SqueezeExcite",
    "ChannelGatedConv2d", "glu_hidden_size", "ffn_hidden_size",
    "GatedMultiheadAttention", "GatedResidual", "GatedConv1d", "GatedRMSNorm",
]
