"""examples/aiohttp_reverse_proxy.py in front of real backends, while pods move."""

from __future__ import annotations

import collections

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
    service,
    wait_until,
)

import lbcore


class Proxy:
    """The example's proxy on 127.0.0.1 at a free port, on a loop of its own."""

    def __init__(self, picker: lbcore.Picker, **options: bool) -> None:
        self.proxy = load_example("aiohttp_reverse_proxy").ReverseProxy(picker, **options)
        self.loop = LoopThread()

    def __enter__(self) -> int:
        self.loop.__enter__()
        self.runner = self.loop.run(self.proxy.start("127.0.0.1", 0))
        return int(self.runner.addresses[0][1])

    def __exit__(self, *exc: object) -> None:
        try:
            self.loop.run(self.runner.cleanup())
            self.loop.run(self.proxy.close())
        finally:
            self.loop.__exit__()


def test_the_proxy_follows_pods_moving_during_traffic_with_no_failed_request(cluster):
    with lbcore.connect(cluster.url) as live:
        picker = live.picker(NAMESPACE, SERVICE, "http", algorithm="least_conn",
                             tcp_closing_timeout=0.001)
        with Proxy(picker) as port:

            def send(i: int) -> str:
                return get("127.0.0.1", port)

            with Traffic(send) as traffic:
                move_pods_during_traffic(cluster, picker, traffic)
            assert_followed(cluster, send, traffic)
        # the pods saw who the client was
        assert cluster.backends["web-0"].forwarded_for[-1] == "127.0.0.1"


def test_client_ip_affinity_keys_on_x_forwarded_for_when_trusted(cluster):
    cluster.store.apply(service(affinity="ClientIP"))
    with lbcore.connect(cluster.url) as live:
        picker = live.picker(NAMESPACE, SERVICE, "http", tcp_closing_timeout=0.001)
        assert picker.session_affinity == "ClientIP"
        with Proxy(picker, trust_forwarded_for=True) as port:

            def send(client: int) -> str:
                return get("127.0.0.1", port, headers={"X-Forwarded-For": f"198.51.100.{client}"})

            pods = {c: collections.Counter(send(c) for _ in range(5)) for c in range(1, 13)}
            assert all(len(answers) == 1 for answers in pods.values()), pods
            assert len({next(iter(a)) for a in pods.values()}) == 3  # new clients are spread
            # the pod of client 1 stops being ready: it moves, once, and stays
            first = next(iter(pods[1]))
            cluster.set_ready(first, False)
            wait_until(lambda: first not in eligible_names(picker), what="not ready")
            moved = collections.Counter(send(1) for _ in range(5))
            assert len(moved) == 1 and first not in moved
        assert "198.51.100.1, 127.0.0.1" in cluster.backends[first].forwarded_for


def test_without_trust_every_request_is_the_proxys_client(cluster):
    cluster.store.apply(service(affinity="ClientIP"))
    with lbcore.connect(cluster.url) as live:
        picker = live.picker(NAMESPACE, SERVICE, "http", tcp_closing_timeout=0.001)
        with Proxy(picker) as port:
            answers = {get("127.0.0.1", port, headers={"X-Forwarded-For": f"198.51.100.{c}"})
                       for c in range(1, 13)}
    assert len(answers) == 1  # one client, 127.0.0.1, on one pod


def test_a_pod_that_refuses_is_marked_down_and_the_request_goes_to_another(cluster):
    with lbcore.connect(cluster.url) as live:
        picker = live.picker(NAMESPACE, SERVICE, "http", tcp_closing_timeout=0.001)
        with Proxy(picker) as port:
            refusing_pod(cluster)
            wait_until(lambda: "web-9" in eligible_names(picker), what="web-9 added")
            answers = [get("127.0.0.1", port) for _ in range(30)]
    assert set(answers) == {"web-0", "web-1", "web-2"}
