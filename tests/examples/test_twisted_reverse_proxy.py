"""examples/twisted_reverse_proxy.py in front of real backends, while pods move.

Twisted's reactor runs once per process: one reactor thread serves every test of this module.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from live_cluster import (
    NAMESPACE,
    SERVICE,
    Traffic,
    assert_followed,
    eligible_names,
    get,
    load_example,
    move_pods_during_traffic,
    refusing_pod,
    wait_until,
)

import lbcore

pytest.importorskip("twisted", reason="needs twisted (the test extra)")


@pytest.fixture(scope="module")
def reactor() -> Iterator[Any]:
    from twisted.internet import reactor as the_reactor

    thread = threading.Thread(target=the_reactor.run, kwargs={"installSignalHandlers": False},
                              name="reactor", daemon=True)
    thread.start()
    try:
        yield the_reactor
    finally:
        the_reactor.callFromThread(the_reactor.stop)
        thread.join(10)


class Proxy:
    """The example's resource in a Site on 127.0.0.1 at a free port."""

    def __init__(self, reactor: Any, picker: lbcore.Picker) -> None:
        self.reactor = reactor
        self.picker = picker

    def __enter__(self) -> int:
        from twisted.internet.threads import blockingCallFromThread
        from twisted.web import server

        example = load_example("twisted_reverse_proxy")
        self.resource = example.ServiceProxyResource(self.picker, self.reactor)
        site = server.Site(self.resource)
        self.port = blockingCallFromThread(self.reactor, self.reactor.listenTCP, 0, site,
                                           interface="127.0.0.1")
        return int(self.port.getHost().port)

    def __exit__(self, *exc: object) -> None:
        from twisted.internet.threads import blockingCallFromThread

        blockingCallFromThread(self.reactor, self.port.stopListening)
        blockingCallFromThread(self.reactor, self.resource.close)


def test_the_proxy_follows_pods_moving_during_traffic_with_no_failed_request(cluster, reactor):
    with lbcore.connect(cluster.url) as live:
        picker = live.picker(NAMESPACE, SERVICE, "http", algorithm="least_conn",
                             tcp_closing_timeout=0.001)
        with Proxy(reactor, picker) as port:

            def send(i: int) -> str:
                return get("127.0.0.1", port)

            with Traffic(send) as traffic:
                move_pods_during_traffic(cluster, picker, traffic)
            assert_followed(cluster, send, traffic)
    assert cluster.backends["web-0"].forwarded_for[-1] == "127.0.0.1"


def test_a_pod_that_refuses_is_marked_down_and_the_request_goes_to_another(cluster, reactor):
    with lbcore.connect(cluster.url) as live:
        picker = live.picker(NAMESPACE, SERVICE, "http", tcp_closing_timeout=0.001)
        with Proxy(reactor, picker) as port:
            refusing_pod(cluster)
            wait_until(lambda: "web-9" in eligible_names(picker), what="web-9 added")
            answers = [get("127.0.0.1", port) for _ in range(30)]
    assert set(answers) == {"web-0", "web-1", "web-2"}


def test_a_deleted_service_answers_503(cluster, reactor):
    with lbcore.connect(cluster.url) as live:
        picker = live.picker(NAMESPACE, SERVICE, "http", tcp_closing_timeout=0.001)
        with Proxy(reactor, picker) as port:
            cluster.store.delete("Service", NAMESPACE, SERVICE)
            wait_until(lambda: picker.gone, what="gone")
            with pytest.raises(OSError, match="HTTP 503"):
                get("127.0.0.1", port)
