"""Every module in gated pickles: pickle, torch.save(model) / torch.load(weights_only=False), and
a fresh interpreter (what mp.spawn, DDP-spawn, Ray and submitit do) give back a module with the
same outputs. Registry entries (cores, variants, activations) pickle by name."""

import io
import pickle
import subprocess
import sys

import pytest
import torch
from torch import nn

import gated

X = {"seq": torch.randn(5, 2, 4), "cell": torch.randn(2, 4), "vec": torch.randn(3, 8), "img": torch.randn(2, 4, 6, 6),
     "conv": torch.randn(2, 4, 7), "tokens": torch.randn(2, 5, 8), "pair": (torch.randn(3, 8), torch.randn(3, 8))}

MODULES = [
    ("LSTM", lambda: gated.LSTM(4, 8, num_layers=2, bidirectional=True), "seq"),
    ("LSTM-OM", lambda: gated.LSTM(4, 8, variant="OM"), "seq"),
    ("GRU", lambda: gated.GRU(4, 8, variant="UR"), "seq"),
    ("GRU-OR", lambda: gated.GRU(4, 8, variant="OR"), "seq"),
    ("MGU", lambda: gated.MGU(4, 8), "seq"),
    ("LSTMCell", lambda: gated.LSTMCell(4, 8), "cell"),
    ("GRUCell", lambda: gated.GRUCell(4, 8, variant="UM"), "cell"),
    ("MGUCell", lambda: gated.MGUCell(4, 8), "cell"),
    ("MinGRU", lambda: gated.MinGRU(4, 8, num_layers=2, bidirectional=True), "seq"),
    ("MinLSTM", lambda: gated.MinLSTM(4, 8, variant="C"), "seq"),
    ("RGLRU", lambda: gated.RGLRU(4, 8, num_layers=2, bidirectional=True, variant="UR"), "seq"),
    ("HGRN", lambda: gated.HGRN(4, 8, num_layers=2, variant="UR", lower_bound=True), "seq"),
    ("GLU", lambda: gated.GLU(), "vec"),
    ("FeedForward", lambda: gated.FeedForward(8, 16, "swiglu"), "vec"),
    ("Highway", lambda: gated.Highway(8, variant="UR"), "vec"),
    ("HighwayNetwork", lambda: gated.HighwayNetwork(8, 3), "vec"),
    ("SqueezeExcite", lambda: gated.SqueezeExcite(4), "img"),
    ("ChannelGatedConv2d", lambda: gated.ChannelGatedConv2d(4, 4, 3, padding=1), "img"),
    ("GatedMultiheadAttention", lambda: gated.GatedMultiheadAttention(8, 2, batch_first=True, variant="UR"), "tokens"),
    ("GatedResidual", lambda: gated.GatedResidual(8, variant="UR"), "pair"),
    ("GatedConv1d", lambda: gated.GatedConv1d(4, 4, 3, dilation=2, kind="tanh"), "conv"),
    ("GatedRMSNorm", lambda: gated.GatedRMSNorm(8), "pair"),
    ("LSTM-options", lambda: gated.LSTM(4, 8, layer_norm=True, zoneout=(0.1, 0.2), recurrent_dropout=0.2,
                                        weight_dropout=0.3), "seq"),
]


def _out(m, x):
    if isinstance(m, gated.GatedMultiheadAttention):
        y = m(x, x, x)
    else:
        y = m(*x) if isinstance(x, tuple) else m(x)
    while isinstance(y, tuple):
        y = y[0]
    return y


def test_every_exported_module_is_covered():
    exported = {n for n in gated.__all__ if isinstance(getattr(gated, n), type) and issubclass(getattr(gated, n), nn.Module)}
    assert exported <= {name.split("-")[0] for name, _, _ in MODULES}


@pytest.mark.parametrize("name,make,kind", MODULES, ids=[m[0] for m in MODULES])
def test_pickle_and_torch_save_round_trip(name, make, kind):
    m = make().eval()
    x = X[kind]
    ref = _out(m, x)
    for proto in range(2, pickle.HIGHEST_PROTOCOL + 1):
        torch.testing.assert_close(_out(pickle.loads(pickle.dumps(m, protocol=proto)), x), ref, rtol=0, atol=0)
    buf = io.BytesIO()
    torch.save(m, buf)
    buf.seek(0)
    torch.testing.assert_close(_out(torch.load(buf, weights_only=False), x), ref, rtol=0, atol=0)


def test_unpickled_in_a_fresh_interpreter():
    m = gated.LSTM(4, 8, variant="UR")
    x = torch.randn(3, 2, 4)
    blob = pickle.dumps((m, x, m(x)[0].detach()))
    code = (
        "import pickle, sys, torch\n"
        "m, x, ref = pickle.loads(sys.stdin.buffer.read())\n"
        "assert m.variant.name == 'UR' and torch.equal(m(x)[0], ref)\n"
        "print('ok')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], input=blob, capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout.decode().strip() == "ok"
