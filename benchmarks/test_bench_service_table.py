"""Endpoints at scale: 10,000 services and 100,000 pods.

The full build (every service and pod into the endpoint tracker) is the peer of one pod change
(a label flip that moves the pod between two services, with the changed services' endpoints
read back): the ratio says what incremental tracking saves. Target: one change under 100 us.

Run: python -m pytest benchmarks/test_bench_service_table.py -s
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from lbcore.model.endpoints import EndpointTracker
from lbcore.model.objects import Pod, Service
from lbcore.model.service_table import ServiceTable

SERVICES = 10_000
PODS = 100_000
_results: dict[str, float] = {}


def _service(i: int) -> Service:
    return Service.from_dict({"kind": "Service", "metadata": {"name": f"svc-{i}"}, "spec": {
        "selector": {"app": f"app-{i}"}, "clusterIP": f"10.{96 + i // 65536}.{i // 256 % 256}.{i % 256 + 0}",
        "ports": [{"name": "http", "port": 80, "targetPort": "http"},
                  {"name": "metrics", "port": 9100}]}}, validate=False)


def _pod(i: int, app: int) -> Pod:
    return Pod.from_dict({"kind": "Pod", "metadata": {"name": f"pod-{i}", "labels": {
        "app": f"app-{app}", "tier": "web", "pod-template-hash": f"h{app % 97}"}},
        "spec": {"nodeName": f"node-{i % 50}", "containers": [
            {"name": "c", "ports": [{"name": "http", "containerPort": 8080}]}]},
        "status": {"podIP": f"10.{i >> 16}.{(i >> 8) & 255}.{i & 255}",
                   "conditions": [{"type": "Ready", "status": "True"}]}}, validate=False)


@pytest.fixture(scope="module")
def objects() -> tuple[list[Service], list[Pod]]:
    services = [_service(i) for i in range(SERVICES)]
    pods = [_pod(i, i % SERVICES) for i in range(PODS)]
    return services, pods


def _build(services: list[Service], pods: list[Pod]) -> EndpointTracker:
    tracker = EndpointTracker()
    for s in services:
        tracker.set_service(s)
    for p in pods:
        tracker.set_pod(p)
    for s in services:
        tracker.endpoints(s.key)
    return tracker


def test_full_build(benchmark: Any, objects: tuple[list[Service], list[Pod]]) -> None:
    services, pods = objects
    tracker = benchmark.pedantic(_build, args=(services, pods), rounds=3, iterations=1)
    assert sum(len(tracker.endpoints(s.key)["http"]) for s in services) == PODS
    _results["full"] = benchmark.stats.stats.median
    print(f"\nfull build of {SERVICES} services / {PODS} pods: "
          f"{_results['full'] * 1e3:.0f} ms")


def test_one_pod_change(benchmark: Any, objects: tuple[list[Service], list[Pod]]) -> None:
    services, pods = objects
    tracker = _build(services, pods)
    moved = [_pod(123, 123), _pod(123, 124)]
    state = {"i": 0}

    def change() -> None:
        state["i"] ^= 1
        for key in tracker.set_pod(moved[state["i"]]):
            tracker.endpoints(key)

    benchmark.pedantic(change, rounds=2000, iterations=1, warmup_rounds=50)
    assert len(tracker.endpoints("default/svc-123")["http"]) in (9, 10)
    one = benchmark.stats.stats.median
    _results["change"] = one
    full = _results.get("full")
    print(f"\none pod change (tracker): median {one * 1e6:.1f} us,"
          f" min {benchmark.stats.stats.min * 1e6:.1f} us")
    if full:
        print(f"RATIO service_table one pod change vs full rebuild: {full / one:,.0f}x")
    print(f"CPU check: 10^6 Python additions take {_calibrate() * 1e3:.0f} ms"
          " (compare across runs: a loaded machine inflates every figure alike)")


def _calibrate() -> float:
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        x = 0
        for i in range(1_000_000):
            x += i
        best = min(best, time.perf_counter() - t0)
    return best


def test_one_pod_change_through_the_table(objects: tuple[list[Service], list[Pod]]) -> None:
    services, pods = objects
    table = ServiceTable(allocate=False)
    for s in services:
        table.apply(s)
    for p in pods:
        table.apply(p)
    table.snapshot()
    moved = [_pod(123, 123).to_dict(), _pod(123, 124).to_dict()]
    moved_objs = [_pod(123, 123), _pod(123, 124)]
    rounds = 2000
    t0 = time.perf_counter()
    for i in range(rounds):
        table.apply(moved_objs[i & 1])
    parsed = (time.perf_counter() - t0) / rounds
    t0 = time.perf_counter()
    for i in range(rounds):
        table.apply(moved[i & 1])
    from_dict = (time.perf_counter() - t0) / rounds
    t0 = time.perf_counter()
    for i in range(200):
        table.apply(moved_objs[i & 1])
        table.snapshot()
    with_snapshot = (time.perf_counter() - t0) / 200
    print(f"\nServiceTable.apply(parsed Pod): {parsed * 1e6:.1f} us;"
          f" apply(dict, validated): {from_dict * 1e6:.1f} us;"
          f" apply + snapshot of {2 * SERVICES} ports: {with_snapshot * 1e6:.0f} us")
    full = _results.get("full")
    if full:
        print(f"RATIO service_table apply(parsed pod) vs full rebuild: {full / parsed:,.0f}x")
