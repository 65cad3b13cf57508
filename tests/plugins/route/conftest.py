"""Fixtures of the route frontend tests: a started frontend on free loopback ports, a cluster
fed to it, and backends closed at the end."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from route_helpers import Cluster, HttpBackend, backends_on_one_port

from lbcore.runtime.interfaces import RuntimeContext


@pytest.fixture
def make_cluster() -> Iterator[Callable[..., Cluster]]:
    from lbcore_plugins.route_frontend import RouteFrontend

    made: list[Any] = []

    def make(**options: Any) -> Cluster:
        fe = RouteFrontend({"http_port": 0, "https_port": 0, **options},
                           RuntimeContext(node_name="localhost"))
        fe.start()
        made.append(fe)
        return Cluster(fe)

    yield make
    for fe in made:
        fe.stop()


@pytest.fixture
def cluster(make_cluster: Callable[..., Cluster]) -> Cluster:
    return make_cluster()


@pytest.fixture
def pods() -> Iterator[Callable[..., list[HttpBackend]]]:
    made: list[HttpBackend] = []

    def make(*tags: str, cert: tuple[str, str] | None = None) -> list[HttpBackend]:
        out = backends_on_one_port(list(tags), cert)
        made.extend(out)
        return out

    yield make
    for b in made:
        try:
            b.close()
        except OSError:
            pass
