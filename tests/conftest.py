"""Shared test fixtures and skips."""

from __future__ import annotations

import importlib
import os
import shutil
from pathlib import Path

import pytest

from lbcore.core._extensions import NO_EXTENSIONS

ROOT = Path(__file__).resolve().parents[1]

# every compiled module (one per .pyx); a test marked ``compiled`` needs them all
COMPILED_MODULES = sorted(
    [f"lbcore.core.{p.stem}" for p in (ROOT / "lbcore" / "core").glob("_*_c.pyx")]
    + [f"lbcore_plugins.{p.stem}" for p in (ROOT / "plugins" / "lbcore_plugins").glob("_*_c.pyx")]
)


def compiled_unavailable() -> str | None:
    """None when the compiled twins can be tested here, else the one-line reason they cannot."""
    if NO_EXTENSIONS:
        return "LBCORE_NO_EXTENSIONS is set: only the readable twins are tested"
    for name in COMPILED_MODULES:
        try:
            importlib.import_module(name)
        except ImportError:
            return f"{name} is not built"
    return None


def have_root_netns() -> str | None:
    """None when network-namespace tests can run here, else the one-line reason they cannot."""
    if os.geteuid() != 0:
        return "needs root for network namespaces"
    if shutil.which("ip") is None:
        return "needs iproute2 (ip)"
    return None


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "compiled: tests a compiled module itself; skipped under LBCORE_NO_EXTENSIONS or unbuilt",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    marked = [item for item in items if item.get_closest_marker("compiled")]
    reason = compiled_unavailable() if marked else None
    if reason:
        for item in marked:
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture
def require_root_netns() -> None:
    reason = have_root_netns()
    if reason:
        pytest.skip(reason)
