"""The README's embedding example works when pasted."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def test_embedding_example_runs_and_prints_its_answers():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert blocks, "README.md has no python example"
    out = subprocess.run(
        [sys.executable, "-c", blocks[0]], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.split()
    assert lines[0] == "True"
    assert int(lines[1]) >= 0
    assert lines[2] in {"10.0.0.1:8080", "10.0.0.2:8080", "10.0.0.3:8080"}
    assert lines[3] in {"10.0.0.1:8080", "10.0.0.2:8080", "10.0.0.3:8080"}


def test_ci_runs_the_readme_test_command():
    ci = (README.parent / ".ci" / "run").read_text()
    assert "<!-- test-command -->" in ci and "README.md" in ci
    assert "<!-- test-command -->" in README.read_text()
