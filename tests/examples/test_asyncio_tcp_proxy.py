"""examples/asyncio_tcp_proxy.py on uvloop, in front of real backends, while pods move."""

from __future__ import annotations

import pytest
from live_cluster import (
    NAMESPACE,
    SERVICE,
    LoopThread,
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

uvloop = pytest.importorskip("uvloop", reason="needs uvloop (the test extra)")


def serve(picker: lbcore.Picker, loop: LoopThread) -> int:
    proxy = load_example("asyncio_tcp_proxy").TcpProxy(picker)
    server = loop.run(proxy.serve("127.0.0.1", 0))
    return int(server.sockets[0].getsockname()[1])


def test_the_proxy_follows_pods_moving_during_traffic_with_no_failed_request(cluster):
    with lbcore.connect(cluster.url) as live, LoopThread(uvloop.new_event_loop()) as loop:
        picker = live.picker(NAMESPACE, SERVICE, "http", algorithm="least_conn")
        port = serve(picker, loop)

        def send(i: int) -> str:
            return get("127.0.0.1", port)

        with Traffic(send) as traffic:
            move_pods_during_traffic(cluster, picker, traffic)
        assert_followed(cluster, send, traffic)


def test_a_pod_that_refuses_is_marked_down_and_the_connection_goes_to_another(cluster):
    with lbcore.connect(cluster.url) as live, LoopThread(uvloop.new_event_loop()) as loop:
        picker = live.picker(NAMESPACE, SERVICE, "http")
        port = serve(picker, loop)
        refusing_pod(cluster)
        wait_until(lambda: "web-9" in eligible_names(picker), what="web-9 added")
        answers = [get("127.0.0.1", port) for _ in range(30)]
        assert set(answers) == {"web-0", "web-1", "web-2"}


def test_a_deleted_service_refuses_new_connections(cluster):
    with lbcore.connect(cluster.url) as live, LoopThread(uvloop.new_event_loop()) as loop:
        picker = live.picker(NAMESPACE, SERVICE, "http")
        port = serve(picker, loop)
        assert get("127.0.0.1", port).startswith("web-")
        cluster.store.delete("Service", NAMESPACE, SERVICE)
        wait_until(lambda: picker.gone, what="gone")
        with pytest.raises(OSError):  # closed at once: no stale pod answers
            get("127.0.0.1", port)
