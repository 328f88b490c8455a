"""GLU family, two-argument and split forms: explicit formulas, torch.nn.functional.glu, gradcheck."""

import math

import pytest
import torch
import torch.nn.functional as F

from gated.feedforward import GLU, GLU_ACTIVATIONS, bilinear, gated_linear, geglu, glu, reglu, split_glu, swiglu, swish


def _gelu_exact(x):
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


# written out independently of gated.feedforward.glu's registry
FORMULAS = {
    "glu": lambda a, b, beta: a / (1.0 + torch.exp(-b)),
    "bilinear": lambda a, b, beta: a * b,
    "reglu": lambda a, b, beta: a * torch.where(b > 0, b, torch.zeros_like(b)),
    "geglu": lambda a, b, beta: a * _gelu_exact(b),
    "swiglu": lambda a, b, beta: a * b / (1.0 + torch.exp(-beta * b)),
}
FUNCS = {"glu": glu, "bilinear": bilinear, "reglu": reglu, "geglu": geglu, "swiglu": swiglu}


def test_registry_covers_the_family():
    assert sorted(GLU_ACTIVATIONS) == sorted(FORMULAS) == sorted(FUNCS)


@pytest.mark.parametrize("name", list(FORMULAS))
def test_two_argument_form_equals_formula(name):
    a, b = torch.randn(2, 3, 7, dtype=torch.float64).unbind(0)
    want = FORMULAS[name](a, b, 1.0)
    torch.testing.assert_close(FUNCS[name](a, b), want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gated_linear(a, b, name.upper()), want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("beta", [0.5, 1.0, 1.702, 3.0])
def test_swiglu_beta(beta):
    a, b = torch.randn(2, 20, dtype=torch.float64).unbind(0)
    torch.testing.assert_close(swiglu(a, b, beta), FORMULAS["swiglu"](a, b, beta), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(swish(b, beta), b * torch.sigmoid(beta * b), rtol=1e-12, atol=1e-12)
    # β = 1 is SiLU, large β tends to ReLU
    if beta == 1.0:
        torch.testing.assert_close(swish(b), F.silu(b))
    torch.testing.assert_close(swish(b, 200.0), F.relu(b), rtol=0, atol=1e-3)


@pytest.mark.parametrize("name", list(FORMULAS))
def test_gradcheck(name):
    a = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    b = (torch.randn(3, 4, dtype=torch.float64) + 0.3).requires_grad_()  # keep ReLU's kink away from 0
    beta = 1.7 if name == "swiglu" else 1.0
    assert torch.autograd.gradcheck(lambda a, b: gated_linear(a, b, name, beta), (a, b))
    assert torch.autograd.gradgradcheck(lambda a, b: gated_linear(a, b, name, beta), (a, b))


@pytest.mark.parametrize("dim", [0, 1, -1, -2])
def test_split_form_equals_torch_glu(dim):
    x = torch.randn(4, 6, 8, dtype=torch.float64)
    torch.testing.assert_close(split_glu(x, dim), F.glu(x, dim), rtol=0, atol=0)
    torch.testing.assert_close(GLU(dim=dim)(x), torch.nn.GLU(dim)(x), rtol=0, atol=0)


@pytest.mark.parametrize("name", list(FORMULAS))
def test_split_form_gates_the_second_half(name):
    x = torch.randn(5, 10, dtype=torch.float64)
    a, b = x[:, :5], x[:, 5:]
    torch.testing.assert_close(GLU(name, dim=1)(x), FORMULAS[name](a, b, 1.0), rtol=1e-12, atol=1e-12)
