"""The source stays lint-clean and type-checked: ruff over the tree, mypy over lbcore/ and plugins/."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=600)


@pytest.mark.skipif(shutil.which("ruff") is None, reason="needs ruff (the test extra)")
def test_ruff_finds_nothing():
    result = run(["ruff", "check", "."])
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_finds_nothing_in_the_pure_python_parts():
    pytest.importorskip("mypy")
    result = run([sys.executable, "-m", "mypy"])
    assert result.returncode == 0, result.stdout + result.stderr
