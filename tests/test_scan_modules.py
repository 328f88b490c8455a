"""gated.MinGRU / MinLSTM as modules: Feng et al.'s and the issue's equations (an independent oracle), torch's
API and input checks, the initialisers, gate diagnostics and the harness's use of them."""

import pickle

import pytest
import torch

import gated
from gated.harness import config

D = torch.float64


def _sig(x):
    return 1.0 / (1.0 + torch.exp(-x))


def _oracle(core, variant, x, h0, w, b, fb):
    """Feng et al. 2024 written out in their convention (update gate z = 1 - f; minLSTM's f/(f+i)),
    with the paper's refine gate in its band form g = r(1 - (1 - f)^2) + (1 - r) f^2. Naive formulas,
    none of the library's: ``w``/``b`` hold gated's blocks (f, n[, rho]) / (f, i, n[, rho])."""
    H = h0.shape[-1]
    blocks = (w @ x.unsqueeze(-1)).squeeze(-1) + b  # (T, B, G)
    P = list(blocks.split(H, -1))
    pf = P[0] + (fb if fb is not None else 0)
    z = 1 - _sig(pf)  # Feng et al.'s update gate
    h, outs = h0, []
    for t in range(x.shape[0]):
        f = 1 - z[t]
        if variant in ("R", "UR"):
            r = _sig(P[-1][t] - fb)
            f = r * (1 - (1 - f) ** 2) + (1 - r) * f ** 2
        if core == "MinGRU":
            h = f * h + (1 - f) * P[1][t]
        else:
            i = _sig(P[1][t])
            h = f / (f + i) * h + i / (f + i) * P[2][t]
        outs.append(h)
    return torch.stack(outs)


@pytest.mark.parametrize("core", ["MinGRU", "MinLSTM"])
@pytest.mark.parametrize("variant", ["-", "UR"])
def test_equals_the_papers_equations(core, variant):
    m = getattr(gated, core)(3, 4, variant=variant, dtype=D)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p))
    x, h0 = torch.randn(6, 2, 3, dtype=D), torch.randn(1, 2, 4, dtype=D)
    fb = getattr(m, "forget_bias_l0", None)
    want = _oracle(core, variant, x, h0[0], m.weight_ih_l0, m.bias_ih_l0, fb)
    for backend in ("reference", "torch", "fused_cpu"):
        out, h = m._run(x, h0, backend=backend)
        torch.testing.assert_close(out, want, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(h[0], want[-1], rtol=1e-12, atol=1e-12)


def test_torch_api_shapes_and_names():
    m = gated.MinGRU(5, 6, num_layers=2, bidirectional=True, batch_first=True)
    out, h = m(torch.randn(3, 7, 5))
    assert out.shape == (3, 7, 12) and h.shape == (4, 3, 6)
    out1, h1 = m(torch.randn(7, 5))  # unbatched
    assert out1.shape == (7, 12) and h1.shape == (4, 6)
    names = [n for n, _ in m.named_parameters()]
    assert names == [f"{p}_l{k}{d}" for k in (0, 1) for d in ("", "_reverse") for p in ("weight_ih", "bias_ih", "forget_bias")]
    assert m.weight_ih_l0.shape == (18, 5) and m.weight_ih_l1.shape == (18, 12) and m.forget_bias_l1.shape == (6,)
    assert repr(m) == "MinGRU(5, 6, num_layers=2, batch_first=True, bidirectional=True, variant='UR')"
    assert [len(w) for w in m.all_weights] == [3] * 4
    lstm = gated.MinLSTM(5, 6, variant="-", bias=False)
    assert [n for n, _ in lstm.named_parameters()] == ["weight_ih_l0"] and lstm.weight_ih_l0.shape == (18, 5)


@pytest.mark.parametrize("core,blocks", [("MinGRU", 2), ("MinLSTM", 3)])
def test_parameter_counts(core, blocks):
    n, d = 5, 10
    for variant in gated.CORES[core.lower()].variants:
        m = getattr(gated, core)(n, d, variant=variant)
        refine = variant in ("R", "UR")
        want = (blocks + refine) * d * (n + 1) + (d if refine else 0)
        assert sum(p.numel() for p in m.parameters()) == want, variant


def test_stacking_dropout_and_directions_compose_like_torch():
    """Layer k reads layer k-1's outputs (both directions concatenated), as torch.nn.GRU stacks."""
    m = gated.MinLSTM(4, 5, num_layers=2, bidirectional=True, dropout=0.5, dtype=D).eval()
    x = torch.randn(6, 2, 4, dtype=D)
    out, h = m(x)
    layers = []
    for k, n_in in ((0, 4), (1, 10)):
        single = gated.MinLSTM(n_in, 5, bidirectional=True, dtype=D)
        single.load_state_dict({n.replace(f"_l{k}", "_l0"): p for n, p in m.named_parameters() if f"_l{k}" in n})
        layers.append(single)
    mid, h0 = layers[0](x)
    top, h1 = layers[1](mid)
    torch.testing.assert_close(out, top)
    torch.testing.assert_close(h, torch.cat([h0, h1]))
    m.train()
    torch.manual_seed(3)
    a, _ = m(x)
    torch.manual_seed(3)
    b, _ = m(x)
    assert torch.equal(a, b) and not torch.allclose(a, out)  # dropout between the layers in training


@pytest.mark.parametrize("make, message, kind", [
    (lambda: gated.MinGRU(4, 8)(torch.randn(5, 3, 5)), "input.size\\(-1\\) must be equal to input_size. Expected 4, got 5",
     gated.InputError),
    (lambda: gated.MinGRU(4, 8)(torch.randn(5, 3, 4, 1)), "Expected input to be 2D or 3D, got 4D", gated.InputError),
    (lambda: gated.MinGRU(4, 8)(torch.randn(5, 3, 4), torch.zeros(2, 3, 8)), "Expected hidden size \\(1, 3, 8\\)",
     gated.InputError),
    (lambda: gated.MinGRU(4, 8)(torch.randn(5, 3, 4), (torch.zeros(1, 3, 8),)), "must be a Tensor", gated.InputError),
    (lambda: gated.MinLSTM(4, 8)(torch.randn(5, 3, 4, dtype=D)), "does not match weight dtype", gated.InputError),
    (lambda: gated.MinGRU(4, 8)(torch.randn(0, 3, 4)), "sequence length to be larger than 0", gated.InputError),
    (lambda: gated.MinGRU(4, 8)([1.0]), "must be a Tensor or PackedSequence", TypeError),
    (lambda: gated.MinGRU(4, 8, variant="OM"), "does not exist for core 'mingru'; choose one of '-', 'C', 'U', 'R', 'UR'",
     ValueError),
    (lambda: gated.MinGRU(4, 8, proj_size=2), "proj_size argument is only supported for LSTM", ValueError),
    (lambda: gated.MinGRU(4, 8, backend="cuda"), "unknown backend 'cuda'; choose one of 'auto', 'reference', 'torch'",
     ValueError),
    (lambda: gated.MinGRU(4, 8, variant="U", bias=False), "needs bias=True", ValueError),
    (lambda: gated.MinGRU(4, 0), "hidden_size must be greater than zero", ValueError),
])
def test_bad_inputs_are_rejected_clearly(make, message, kind):
    with pytest.raises(kind, match=message):
        make()


def test_bfloat16_runs():  # in float32 inside (gated/precision.py, tests/test_precision.py)
    m = gated.MinGRU(4, 8, dtype=torch.bfloat16)
    out, h = m(torch.randn(5, 2, 4, dtype=torch.bfloat16))
    ref, _ = m._run(torch.randn(5, 2, 4, dtype=torch.bfloat16), None, backend="reference")
    assert out.dtype == torch.bfloat16 and out.shape == ref.shape and torch.isfinite(out).all()


def test_ugi_spreads_the_keep_gates_and_minlstm_ties_its_input_gate():
    H = 2048
    u = gated.MinGRU(1, H, variant="U", dtype=D)
    f = torch.sigmoid(u.bias_ih_l0[:H]).detach().sort().values
    assert 1 / H <= f[0] and f[-1] <= 1 - 1 / H
    grid = (torch.arange(H, dtype=D) + 0.5) / H
    assert (f - (1 / H + (1 - 2 / H) * grid)).abs().max() < 0.04  # uniform on [1/d, 1 - 1/d] (KS distance)
    ur = gated.MinLSTM(1, 16, variant="UR")
    fb = ur.forget_bias_l0.detach()
    assert fb.abs().max() > 0 and (ur.bias_ih_l0[:16] == 0).all() and (ur.bias_ih_l0[-16:] == 0).all()
    torch.testing.assert_close(ur.bias_ih_l0[16:32].detach(), -fb)  # i = 1 - f at init
    ul = gated.MinLSTM(1, 16, variant="U")
    torch.testing.assert_close(ul.bias_ih_l0[16:32].detach(), -ul.bias_ih_l0[:16].detach())
    c = gated.MinLSTM(1, 16, variant="C", t_max=100)
    b = c.bias_ih_l0[:16].detach()
    assert (b >= 0).all() and (b <= torch.log(torch.tensor(99.0))).all()
    torch.testing.assert_close(c.bias_ih_l0[16:32].detach(), -b)


@pytest.mark.parametrize("core", ["MinGRU", "MinLSTM"])
def test_gate_activations_and_initialisers(core):
    m = getattr(gated, core)(3, 8, num_layers=2, bidirectional=True, variant="U")
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.startswith("weight_ih"):
                p.zero_()  # the gates see their biases only
    acts = gated.gate_activations(m, torch.randn(5, 2, 3))
    assert acts["forget"].shape == (2, 2, 5, 2, 8) and acts["refine"] is None and acts["master_forget"] is None
    f_init = torch.sigmoid(m.bias_ih_l0[:8]).detach()
    torch.testing.assert_close(acts["forget"][0, 0, 0, 0], f_init)
    torch.testing.assert_close(acts["effective"], acts["forget"])  # minLSTM: k = f / (f + 1 - f) = f
    torch.testing.assert_close(acts["timescale"], 1 / (1 - acts["effective"]))
    gated.init.forget_bias_(m, 2.0)
    assert (m.bias_ih_l1_reverse[:8] == 2.0).all()
    gated.init.chrono_(m, 50.0)
    assert (m.bias_ih_l0[:8] >= 0).all()


def test_gate_activations_of_ur_mingru_match_its_equations():
    m = gated.MinGRU(3, 4, variant="UR", dtype=D)
    x = torch.randn(6, 2, 3, dtype=D)
    acts = gated.gate_activations(m, x)
    P = torch.nn.functional.linear(x, m.weight_ih_l0, m.bias_ih_l0).detach()
    fb = m.forget_bias_l0.detach()
    f, r = torch.sigmoid(P[..., :4] + fb), torch.sigmoid(P[..., 8:] - fb)
    torch.testing.assert_close(acts["forget"][0, 0], f)
    torch.testing.assert_close(acts["refine"][0, 0], r)
    torch.testing.assert_close(acts["effective"][0, 0], gated.gates.refine_gate(f, r))


def test_pickle_state_dict_and_torch_func():
    m = gated.MinLSTM(3, 4, variant="UR")
    x = torch.randn(5, 2, 3)
    clone = pickle.loads(pickle.dumps(m))
    torch.testing.assert_close(clone(x)[0], m(x)[0])
    other = gated.MinLSTM(3, 4, variant="UR")
    other.load_state_dict(m.state_dict())
    torch.testing.assert_close(other(x)[0], m(x)[0])
    # forward-mode AD and vmap go through the reference loop
    out, tangent = torch.func.jvp(lambda x: m(x)[0], (x,), (torch.ones_like(x),))
    torch.testing.assert_close(out, m(x)[0])
    assert torch.isfinite(tangent).all()


def test_the_harness_trains_them():
    cfg = config.build({"task": "copy", "delay": 5, "core": "mingru", "variant": "ur"})
    assert cfg.model.core == "mingru"
    with pytest.raises(ValueError, match="unknown variant 'O' for core 'minlstm'"):
        config.build({"task": "copy", "core": "minlstm", "variant": "O"})
