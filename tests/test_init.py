"""UGI / chrono / forget-bias initialisers on gated modules and in place on torch.nn modules."""

import math

import pytest
import torch
from scipy import stats
from torch import nn

import gated
from gated.init import chrono_, forget_bias_, uniform_gate_

H = 400


def _keep_biases(module, core):
    """Initial keep-gate activations sigma(total keep bias) of every layer and direction."""
    if isinstance(module, nn.RNNBase):
        ours = getattr(gated, core)(module.input_size, H, module.num_layers,
                                    bidirectional=module.bidirectional, variant="-")
        ours.load_state_dict(module.state_dict())
        module = ours
    keep, out = module.layout.keep, []
    for sfx in module._suffixes:
        b = getattr(module, "bias_ih" + sfx)[keep] + getattr(module, "bias_hh" + sfx)[keep]
        fb = getattr(module, "forget_bias" + sfx, None)
        out.append(torch.sigmoid(b if fb is None else b + fb))
    return torch.cat(out).double().detach()


def _ks_uniform(values, low, high):
    return stats.kstest(values.detach().numpy(), stats.uniform(loc=low, scale=high - low).cdf).pvalue


@pytest.mark.parametrize("core", ["LSTM", "GRU", "MGU"])
def test_ugi_gated_modules(core):
    m = getattr(gated, core)(3, H, num_layers=2, bidirectional=True, variant="U")
    f = _keep_biases(m, core)
    assert f.numel() == 4 * H
    assert f.min() >= 1 / H and f.max() <= 1 - 1 / H
    assert _ks_uniform(f, 1 / H, 1 - 1 / H) > 0.01
    # control: the default init is far from uniform, so the KS test can fail
    f_default = _keep_biases(getattr(gated, core)(3, H, num_layers=2, variant="-"), core)
    assert _ks_uniform(f_default, 1 / H, 1 - 1 / H) < 1e-6


@pytest.mark.parametrize("core", ["LSTM", "GRU", "MGU"])
def test_ugi_refine_variant_starts_at_tied_biases(core):
    m = getattr(gated, core)(3, H, num_layers=2, bidirectional=True, variant="UR")
    assert _ks_uniform(_keep_biases(m, core), 1 / H, 1 - 1 / H) > 0.01
    # end to end: on a zero input from a zero state, layer 0 starts at f = sigma(b_f) and
    # r = sigma(-b_f) = 1 - f exactly (paper §2: r_0 = 1 - f_0)
    d = gated.gate_activations(m, torch.zeros(1, 1, 3))
    f0, r0 = d["forget"][0, :, 0, 0], d["refine"][0, :, 0, 0]
    torch.testing.assert_close(f0, torch.sigmoid(torch.stack([m.forget_bias_l0, m.forget_bias_l0_reverse])))
    torch.testing.assert_close(r0, 1 - f0)


@pytest.mark.parametrize("cls,core", [(nn.LSTM, "LSTM"), (nn.GRU, "GRU")])
def test_ugi_in_place_on_torch(cls, core):
    torch_rnn = cls(3, H, num_layers=2, bidirectional=True)
    before = {k: v.clone() for k, v in torch_rnn.state_dict().items()}
    assert uniform_gate_(torch_rnn) is torch_rnn and type(torch_rnn) is cls
    f = _keep_biases(torch_rnn, core)
    assert f.numel() == 4 * H and _ks_uniform(f, 1 / H, 1 - 1 / H) > 0.01
    keep = slice(H, 2 * H)  # torch's f (LSTM) / z (GRU) rows
    for k, v in torch_rnn.state_dict().items():
        if k.startswith("bias_hh"):
            assert torch.all(v[keep] == 0)
        changed = torch.ones(v.shape[0], dtype=torch.bool)
        if k.startswith("bias"):
            changed[keep] = False
        assert torch.equal(v[changed], before[k][changed]), f"{k} changed outside the keep gate"
    # a torch U-LSTM computes what gated's U variant computes with the same weights
    ours = getattr(gated, core)(3, H, num_layers=2, bidirectional=True, variant="U")
    ours.load_state_dict(torch_rnn.state_dict())
    x = torch.randn(4, 2, 3)
    torch.testing.assert_close(ours(x)[0], torch_rnn(x)[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cls", [nn.LSTMCell, nn.GRUCell])
def test_ugi_on_torch_cells(cls):
    cell = uniform_gate_(cls(3, H))
    f = torch.sigmoid(cell.bias_ih[H:2 * H] + cell.bias_hh[H:2 * H]).double()
    assert _ks_uniform(f, 1 / H, 1 - 1 / H) > 0.01


@pytest.mark.parametrize("target", ["gated", "torch"])
def test_chrono_lstm(target):
    t_max = 100.0
    m = nn.LSTM(3, H, num_layers=2) if target == "torch" else gated.LSTM(3, H, num_layers=2, variant="-")
    chrono_(m, t_max)
    for k in range(2):
        b = getattr(m, f"bias_ih_l{k}") + getattr(m, f"bias_hh_l{k}")
        f, i = torch.sigmoid(b[H:2 * H]).double(), b[:H]
        T = 1 / (1 - f)  # = 1 + X, X ~ U[1, t_max - 1]
        assert T.min() >= 2 - 1e-3 and T.max() <= t_max + 1e-2
        assert _ks_uniform(T, 2, t_max) > 0.01
        torch.testing.assert_close(i, -b[H:2 * H])  # input-gate bias = -b_f


def test_chrono_variant_uses_t_max():
    m = gated.GRU(3, H, variant="C", t_max=50)
    b = (m.bias_ih_l0 + m.bias_hh_l0)[H:2 * H]
    T = 1 / (1 - torch.sigmoid(b).double())
    assert T.max() <= 50 + 1e-2 and _ks_uniform(T, 2, 50) > 0.01
    assert _ks_uniform(T, 2, H) < 1e-6  # default t_max = hidden_size would be another law


def test_chrono_on_refine_sets_shared_bias():
    m = chrono_(gated.LSTM(3, H, variant="R"), 30)
    T = 1 / (1 - torch.sigmoid(m.forget_bias_l0).double())
    assert _ks_uniform(T, 2, 30) > 0.01
    assert torch.all(m.bias_ih_l0[:2 * H] == 0) and torch.all(m.bias_hh_l0[:2 * H] == 0)


def test_ugi_master_variant_sets_master_rows():
    m = gated.LSTM(3, 64, variant="UM", chunk_size=4)  # 16 master units
    b = m.bias_ih_l0 + m.bias_hh_l0
    mf, mi = b[256:272], b[272:288]
    torch.testing.assert_close(mf, mi)
    u = torch.sigmoid(mf)
    assert u.min() >= 1 / 16 - 1e-6 and u.max() <= 1 - 1 / 16 + 1e-6


@pytest.mark.parametrize("value", [1.0, -2.0])
def test_forget_bias(value):
    lstm = forget_bias_(nn.LSTM(3, 8, num_layers=2), value)
    for k in range(2):
        b = getattr(lstm, f"bias_ih_l{k}") + getattr(lstm, f"bias_hh_l{k}")
        torch.testing.assert_close(b[8:16], torch.full((8,), value))
    ur = forget_bias_(gated.LSTM(3, 8, variant="UR"), value)
    torch.testing.assert_close(ur.forget_bias_l0, torch.full((8,), value))


def test_initialisers_reject_what_they_cannot_set():
    with pytest.raises(ValueError, match="cumax"):
        uniform_gate_(gated.LSTM(3, 8, variant="OR"))
    with pytest.raises(ValueError, match="bias=True"):
        uniform_gate_(nn.LSTM(3, 8, bias=False))
    with pytest.raises(TypeError, match="torch.nn.LSTM"):
        uniform_gate_(nn.Linear(3, 8))
    with pytest.raises(ValueError, match="t_max > 2"):
        chrono_(nn.LSTM(3, 8), 2)
    with pytest.raises(ValueError, match="needs bias=True"):
        gated.LSTM(3, 8, variant="U", bias=False)


def test_ugi_timescales_follow_power_law():
    """P(T > t) ~ 1/t for the initial UGI timescales (paper §2)."""
    m = gated.LSTM(1, 4096, variant="U")
    f = torch.sigmoid(m.bias_ih_l0 + m.bias_hh_l0)[4096:8192].double()
    T = 1 / (1 - f)
    for t in [2.0, 10.0, 100.0]:
        assert math.isclose((T > t).double().mean().item(), 1 / t, rel_tol=0.15)
