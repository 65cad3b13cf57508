"""Fixtures of the socket and nodeport frontend tests: loopback backends and frontends."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from proxy_helpers import TcpBackend, UdpBackend

from lbcore.runtime.interfaces import RuntimeContext


@pytest.fixture
def backends() -> Iterator[Callable[..., TcpBackend]]:
    made: list[TcpBackend] = []

    def make(tag: str, host: str = "127.0.0.1") -> TcpBackend:
        made.append(TcpBackend(tag, host))
        return made[-1]

    yield make
    for b in made:
        if not b._stop:
            b.close()


@pytest.fixture
def udp_backends() -> Iterator[Callable[..., UdpBackend]]:
    made: list[UdpBackend] = []

    def make(tag: str) -> UdpBackend:
        made.append(UdpBackend(tag))
        return made[-1]

    yield make
    for b in made:
        if not b._stop:
            b.close()


@pytest.fixture
def context() -> RuntimeContext:
    return RuntimeContext(node_name="node-a", node_addresses=("127.0.0.1",))


@pytest.fixture
def make_frontend(context: RuntimeContext) -> Iterator[Callable[..., object]]:
    from lbcore_plugins.socket_frontend import SocketFrontend

    made: list = []

    def make(cls: type = SocketFrontend, ctx: RuntimeContext | None = None, **options: object):
        fe = cls(options, ctx or context)
        fe.start()
        made.append(fe)
        return fe

    yield make
    for fe in made:
        fe.stop()
