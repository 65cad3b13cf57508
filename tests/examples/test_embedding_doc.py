"""docs/embedding.md stays true: its code compiles, and it names every public name of the handle."""

from __future__ import annotations

import re
from pathlib import Path

from lbcore.runtime import live

DOC = Path(__file__).resolve().parents[2] / "docs" / "embedding.md"


def test_the_python_in_the_doc_compiles():
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)
    assert blocks
    for block in blocks:
        compile(block, str(DOC), "exec")


def test_the_doc_names_every_public_name_and_example():
    text = DOC.read_text()
    for name in live.__all__:
        assert name in text, name
    for example in sorted((DOC.parents[1] / "examples").glob("*.py")):
        assert f"examples/{example.name}" in text, example.name
