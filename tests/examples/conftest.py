"""Fixtures for the embedding examples: a daemon in this process and real loopback backends."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from live_cluster import NAMESPACE, SERVICE, Cluster, service, wait_until


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    """A daemon with service ``default/web`` (port ``http``, 80 -> ``http``) and pods web-0..2."""
    c = Cluster(tmp_path)
    try:
        c.store.apply(service())
        for i in range(3):
            c.add_pod(f"web-{i}")
        # the daemon's endpoints controller writes the service's slices after the pods: a
        # picker made before it has caught up would start from a slice of fewer pods
        wait_until(lambda: _stored_endpoints(c) == 3, what="the stored slices of web-0..2")
        yield c
    finally:
        c.close()


def _stored_endpoints(cluster: Cluster) -> int:
    slices, _ = cluster.store.list("EndpointSlice", NAMESPACE,
                                   f"kubernetes.io/service-name={SERVICE}")
    return sum(len(s.get("endpoints") or []) for s in slices)
