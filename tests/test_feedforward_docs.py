"""docs/feedforward.md: its example runs, and it names every registry entry."""

import re
from pathlib import Path

import torch

from gated.feedforward import ACTIVATIONS, FFN_VARIANTS, HIGHWAY_VARIANTS, ffn_hidden_size

DOC = Path(__file__).resolve().parent.parent / "docs" / "feedforward.md"


def test_example_runs():
    code = re.search(r"```python\n(.*?)```", DOC.read_text(), re.S).group(1)
    scope = {"print": lambda *a: None}
    exec(code, scope)
    assert scope["y"].shape == (8, 100, 512) and ffn_hidden_size("swiglu", 2048) == 1368
    assert scope["g"].shape == (4, 16)
    assert scope["cg"].last_cost.dense_flops == 2 * 64 * 256 * 64 * 9


def test_doc_names_every_entry():
    text = DOC.read_text()
    for name in [*FFN_VARIANTS, *ACTIVATIONS, *HIGHWAY_VARIANTS]:
        assert f"`{name}`" in text, name
