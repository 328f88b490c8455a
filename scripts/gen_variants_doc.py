"""Write docs/variants.md from the variant and core registries."""

from pathlib import Path

from gated._docs import variants_markdown

path = Path(__file__).resolve().parent.parent / "docs" / "variants.md"
path.write_text(variants_markdown(), encoding="utf-8")
print(f"wrote {path}")
