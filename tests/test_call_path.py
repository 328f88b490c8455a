"""The per-call path of the sequence modules: parameters read straight from ``_parameters`` (with
what replaces a parameter, a parametrization's property, still honoured) and the backend kept per
module (re-resolved when the mode, dtype or requested backend changes)."""

import pickle

import torch
import torch.nn.utils.parametrize as parametrize

import gated
from gated import recurrent


class _Scale(torch.nn.Module):
    def forward(self, w):
        return 2.0 * w


def test_a_parametrized_weight_is_the_one_used():
    torch.manual_seed(0)
    m = gated.GRU(5, 8, variant="UR")
    plain = gated.GRU(5, 8, variant="UR")
    plain.load_state_dict(m.state_dict())
    with torch.no_grad():
        plain.weight_hh_l0.mul_(2.0)
    parametrize.register_parametrization(m, "weight_hh_l0", _Scale())
    x = torch.randn(4, 3, 5)
    for backend in ("auto", "reference"):
        got, want = m._run(x, backend=backend)[0], plain._run(x, backend=backend)[0]
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    loss = m(x)[0].sum()
    loss.backward()
    assert m.parametrizations.weight_hh_l0.original.grad is not None


def test_the_backend_kept_per_module_follows_dtype_and_name():
    torch.manual_seed(0)
    m = gated.LSTM(5, 8, variant="UR", zoneout=0.2)
    x = torch.randn(3, 2, 5)
    for mode in ("train", "eval", "train"):
        getattr(m, mode)()
        torch.manual_seed(1)
        got = m(x)[0]
        torch.manual_seed(1)
        want = m._run(x, backend="reference")[0]
        torch.testing.assert_close(got, want, rtol=2e-6, atol=2e-6)
    m = m.double()
    torch.manual_seed(2)
    got = m(x.double())[0]
    torch.manual_seed(2)
    want = m._run(x.double(), backend="reference")[0]
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    assert {k for k in recurrent._RESOLVED[m] if k[0] == "auto"} == {("auto", torch.float32), ("auto", torch.float64)}
    # weak and not pickled: a copy resolves again (on its own machine)
    assert recurrent._RESOLVED.get(pickle.loads(pickle.dumps(m))) is None
