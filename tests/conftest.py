"""Shared test fixtures and skips."""

from __future__ import annotations

import os
import shutil

import pytest


def have_root_netns() -> str | None:
    """None when network-namespace tests can run here, else the one-line reason they cannot."""
    if os.geteuid() != 0:
        return "needs root for network namespaces"
    if shutil.which("ip") is None:
        return "needs iproute2 (ip)"
    return None


@pytest.fixture
def require_root_netns() -> None:
    reason = have_root_netns()
    if reason:
        pytest.skip(reason)
