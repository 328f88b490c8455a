"""docs/feedforward.md section 5 and README's paragraph on it: the examples run, the parameter table
is right for every module and variant, and every gate name is documented."""

import re
from pathlib import Path

import pytest

import gated.feedforward as ff

ROOT = Path(__file__).resolve().parent.parent
DOC = (ROOT / "docs" / "feedforward.md").read_text(encoding="utf-8")
SECTION = DOC[DOC.index("## 5. Gated attention"): DOC.index("## Not included")]
SIZES = {"E": 8, "H": 2, "d": 6, "C": 3, "O": 4, "k": 5}


def _first_block(text, lang="python"):
    return re.search(rf"```{lang}\n(.*?)```", text, re.S).group(1)


def test_section_example_runs():
    scope = {}
    exec(_first_block(SECTION), scope)
    assert scope["y"].shape == (2, 10, 64) and scope["w"].shape == (2, 10, 10)
    assert scope["h"].shape == (2, 10, 64) and scope["c"].shape == (2, 64, 10) and scope["o"].shape == (2, 10, 64)
    attn = scope["layer"].self_attn
    assert isinstance(attn, ff.GatedMultiheadAttention) and attn.gate == "headwise" and attn.variant.name == "UR"


def test_readme_example_runs():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    part = readme[readme.index("**Gated attention, residuals, convolutions and norms.**"):]
    scope = {}
    exec(_first_block(part), scope)
    assert scope["layer"].self_attn.gate_units == 8


def _rows():
    for line in SECTION.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 5 and cells[0].startswith("`Gated"):
            yield cells[0].strip("`"), dict(zip(ff.GATE_VARIANTS, cells[1:], strict=True))


def test_table_has_every_module():
    assert [name.split("(")[0] for name, _ in _rows()] == [
        "GatedMultiheadAttention", "GatedMultiheadAttention", "GatedMultiheadAttention",
        "GatedResidual", "GatedConv1d", "GatedRMSNorm"]


@pytest.mark.parametrize("variant", ff.GATE_VARIANTS)
def test_documented_parameter_counts(variant):
    for code, formulas in _rows():
        formula = formulas[variant].strip("`")
        call = code if variant == "-" else f"{code[:-1]}, variant={variant!r})"
        if formula == "n/a":
            with pytest.raises((ValueError, TypeError)):  # gate=None has no gate; GatedRMSNorm no variant
                eval(call, vars(ff), dict(SIZES))  # noqa: S307 - our own doc's constructor
            continue
        module = eval(call, vars(ff), dict(SIZES))  # noqa: S307
        expected = eval(formula.replace("·", "*").replace("²", "**2"), {}, dict(SIZES))  # noqa: S307
        assert sum(p.numel() for p in module.parameters()) == expected, (code, variant, formula)


def test_names_are_documented():
    for name in [*ff.ATTENTION_GATES, *ff.GATED_CONV_KINDS, *ff.NORM_GATE_ACTIVATIONS, *ff.GATE_VARIANTS]:
        assert f"`{name}`" in SECTION or f'"{name}"' in SECTION, name
