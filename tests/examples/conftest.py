"""Fixtures for the embedding examples: a daemon in this process and real loopback backends."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from live_cluster import Cluster, service


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    """A daemon with service ``default/web`` (port ``http``, 80 -> ``http``) and pods web-0..2."""
    c = Cluster(tmp_path)
    try:
        c.store.apply(service())
        for i in range(3):
            c.add_pod(f"web-{i}")
        yield c
    finally:
        c.close()
