"""docs/variants.md is generated from the registries, and its parameter counts are right."""

import re
from pathlib import Path

import pytest

import gated
from gated._docs import variants_markdown

DOC = Path(__file__).resolve().parent.parent / "docs" / "variants.md"


def test_variants_doc_in_sync():
    assert DOC.read_text(encoding="utf-8") == variants_markdown(), (
        "docs/variants.md is stale: run `python scripts/gen_variants_doc.py`"
    )


def _rows():
    for line in DOC.read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 7 and cells[0].startswith("`") and cells[0] != "variant":
            yield cells


def test_every_variant_has_a_row():
    assert [r[0].strip("`") for r in _rows()] == list(gated.VARIANTS)


@pytest.mark.parametrize("col,core", [(4, "LSTM"), (5, "GRU"), (6, "MGU")])
def test_documented_parameter_counts(col, core):
    n, d, C = 5, 10, 4
    m = -(-d // C)
    for row in _rows():
        name, formula = row[0].strip("`"), row[col]
        if formula == "n/a":
            assert name not in gated.CORES[core.lower()].variants
            continue
        expr = re.sub(r"([\da-z)])\(", r"\1*(", re.sub(r"(\d)([a-z])", r"\1*\2", formula))
        expected = eval(expr, {"n": n, "d": d, "m": m})  # noqa: S307 - our own doc's formula
        module = getattr(gated, core)(n, d, variant=name, chunk_size=C)
        assert sum(p.numel() for p in module.parameters()) == expected, (core, name, formula)
