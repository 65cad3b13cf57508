"""examples/httpx_client_balancing.py: httpx clients balancing over real backends, while pods move."""

from __future__ import annotations

import asyncio
import collections
import threading

import pytest
from live_cluster import (
    NAMESPACE,
    SERVICE,
    Traffic,
    assert_followed,
    eligible_names,
    load_example,
    move_pods_during_traffic,
    refusing_pod,
    wait_until,
)

import lbcore

httpx = pytest.importorskip("httpx", reason="needs httpx (the test extra)")
BASE = "http://web.default"


def test_clients_follow_pods_moving_during_traffic_with_no_failed_request(cluster):
    example = load_example("httpx_client_balancing")
    with lbcore.connect(cluster.url) as live:
        picker = live.picker(NAMESPACE, SERVICE, "http", algorithm="least_conn",
                             tcp_closing_timeout=0.001)
        local = threading.local()
        clients: list[httpx.Client] = []

        def send(i: int) -> str:
            if not hasattr(local, "client"):  # one client (and pool) per thread, kept alive
                local.client = httpx.Client(transport=example.LbcoreTransport(picker),
                                            base_url=BASE, timeout=10)
                clients.append(local.client)
            response = local.client.get("/")
            response.raise_for_status()
            return response.text

        try:
            with Traffic(send) as traffic:
                move_pods_during_traffic(cluster, picker, traffic)
            assert_followed(cluster, send, traffic)
        finally:
            for client in clients:
                client.close()


def test_a_hashed_header_keeps_each_key_on_its_pod_and_moves_only_the_removed_pods_keys(cluster):
    example = load_example("httpx_client_balancing")
    with lbcore.connect(cluster.url) as live:
        picker = live.picker(NAMESPACE, SERVICE, "http", algorithm="ring_hash",
                             tcp_closing_timeout=0.001)
        transport = example.LbcoreTransport(picker, hash_header="X-User")
        with httpx.Client(transport=transport, base_url=BASE, timeout=10) as client:

            def pods_of_users() -> dict[str, str]:
                out = {}
                for user in range(100):
                    answers = {client.get("/", headers={"X-User": f"user-{user}"}).text
                               for _ in range(2)}
                    assert len(answers) == 1, (user, answers)
                    out[f"user-{user}"] = answers.pop()
                return out

            before = pods_of_users()
            # 100 keys land on all three pods (a pod's share of the ring is near a third: it gets
            # none with p < 1e-12)
            assert len(set(before.values())) == 3
            cluster.set_ready("web-1", False)
            wait_until(lambda: "web-1" not in eligible_names(picker), what="not ready")
            after = pods_of_users()
        moved = {user for user in before if before[user] != after[user]}
        assert moved == {user for user, pod in before.items() if pod == "web-1"}


def test_a_refusing_pod_is_marked_down_and_the_request_goes_to_another(cluster):
    example = load_example("httpx_client_balancing")
    with lbcore.connect(cluster.url) as live:
        picker = live.picker(NAMESPACE, SERVICE, "http", tcp_closing_timeout=0.001)
        refusing_pod(cluster)
        wait_until(lambda: "web-9" in eligible_names(picker), what="web-9 added")
        transport = example.LbcoreTransport(picker)
        with httpx.Client(transport=transport, base_url=BASE, timeout=10) as client:
            answers = collections.Counter(client.get("/").text for _ in range(30))
    assert set(answers) == {"web-0", "web-1", "web-2"}


def test_the_async_transport_balances_and_retries_too(cluster):
    example = load_example("httpx_client_balancing")

    async def main() -> collections.Counter[str]:
        async with lbcore.connect(cluster.url) as live:
            picker = live.picker(NAMESPACE, SERVICE, "http", tcp_closing_timeout=0.001)
            refusing_pod(cluster)
            for _ in range(1000):
                if "web-9" in eligible_names(picker):
                    break
                await asyncio.sleep(0.01)
            transport = example.AsyncLbcoreTransport(picker)
            async with httpx.AsyncClient(transport=transport, base_url=BASE, timeout=10) as client:
                answers = await asyncio.gather(*(client.get("/") for _ in range(30)))
        return collections.Counter(a.text for a in answers)

    assert set(asyncio.run(main())) == {"web-0", "web-1", "web-2"}
