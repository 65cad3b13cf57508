"""iptables and nftables rule sets at 10,000 services: render, apply, partial sync, packet cost.

Run: python -m pytest benchmarks/test_bench_rules.py -s

Apply, partial-sync and latency benchmarks need root (they make their own network namespaces);
without it they skip. Each figure is printed with its target and its ratio to the peer measured
in the same run (nftables against iptables, 10,000 services against 10, partial against full).
The targets: a full sync (render and apply) of 10,000 services x 5 endpoints under 3 s, a
partial sync after one endpoint change under 50 ms. kube-proxy's published figures are cited
beside ours in docs/benchmarks/rules.md.
"""

from __future__ import annotations

import dataclasses
import json
import os
import resource
import secrets
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import MappingProxyType

import lbcore_plugins.netfilter as netfilter
import pytest
from lbcore_plugins.iptables import IptablesFrontend
from lbcore_plugins.nftables import NftablesFrontend

from lbcore.model.snapshot import EndpointInfo, ServicePortInfo, Snapshot
from lbcore.runtime.interfaces import RuntimeContext

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "e2e"))
from netns import CLIENT_IP, POD_CIDR, SERVER_PORT, Cluster  # noqa: E402

# frontend and options of each measured variant
VARIANTS: dict[str, tuple[type, dict[str, object]]] = {
    "iptables": (IptablesFrontend, {}),
    "iptables-legacy": (IptablesFrontend, {"backend": "legacy"}),
    "nftables": (NftablesFrontend, {}),
    "nftables-inline": (NftablesFrontend, {"endpoint_selection": "inline"}),
    "nftables-maps": (NftablesFrontend, {"endpoint_selection": "maps"}),
}
RENDERED = ["iptables", "nftables", "nftables-inline", "nftables-maps"]
# connection set-up latency
LATENCY = ["iptables", "nftables", "nftables-maps"]


def make(variant: str, **options: object):
    cls, extra = VARIANTS[variant]
    return cls({"cluster_cidr": POD_CIDR, **extra, **options}, RuntimeContext())


SERVICES = 10_000
ENDPOINTS = 5
FULL_SYNC_TARGET = 3.0  # seconds: render and apply of the whole rule set
PARTIAL_SYNC_TARGET = 0.050  # seconds: render and apply after one endpoint change
RESULTS: dict[str, float] = {"target full sync": FULL_SYNC_TARGET, "target partial sync": PARTIAL_SYNC_TARGET}

LATENCY_CLIENT = r"""
import json, socket, sys, time
host, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
samples = []
for _ in range(count):
    t = time.perf_counter()
    with socket.create_connection((host, port), timeout=5) as s:
        s.recv(100)
    samples.append(time.perf_counter() - t)
print(json.dumps(samples))
"""


def filler(services: int, endpoints: int = ENDPOINTS) -> list[ServicePortInfo]:
    """``services`` ClusterIP services (every tenth a NodePort) with endpoints nobody calls."""
    out = []
    for i in range(services):
        base = i * endpoints
        eps = tuple(
            EndpointInfo(ip=f"10.{128 + (base + j) // 65536}.{(base + j) // 256 % 256}.{(base + j) % 256}", port=8080)
            for j in range(endpoints)
        )
        kw: dict[str, object] = {"type": "NodePort", "node_port": 30000 + i // 10} if i % 10 == 0 else {}
        out.append(ServicePortInfo(
            namespace=f"ns{i % 50}", name=f"svc{i}", port_name="p", protocol="TCP", port=80,
            cluster_ips=(f"10.96.{i // 250}.{i % 250 + 1}",), endpoints=eps, **kw,  # type: ignore[arg-type]
        ))
    return out


def snapshot(ports: list[ServicePortInfo], version: int = 1) -> Snapshot:
    return Snapshot(version=version, node_name="bench", service_ports=MappingProxyType({p.key: p for p in ports}))


BIG = snapshot(filler(SERVICES))


def one_endpoint_less(s: Snapshot, index: int = 123) -> tuple[Snapshot, frozenset[str]]:
    key = sorted(s.service_ports)[index]
    sp = s.service_ports[key]
    ports = dict(s.service_ports)
    ports[key] = dataclasses.replace(sp, endpoints=sp.endpoints[1:])
    return Snapshot(version=s.version + 1, node_name=s.node_name, service_ports=ports), frozenset({sp.service})


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.1f} ms"


def need_root() -> None:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("needs root and iproute2 for network namespaces")


@pytest.fixture
def netns() -> Iterator[str]:
    need_root()
    name = f"lbbench-{secrets.token_hex(4)}"
    subprocess.run(["ip", "netns", "add", name], check=True, timeout=30)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], timeout=60)


# ---------------------------------------------------------------------------------------------
# Render: no root
# ---------------------------------------------------------------------------------------------


def cpu_with_children() -> float:
    """User + system time of this process (every thread, so libnftables' kernel work too) and of
    the children it waited for (``ip netns exec``, ``nft``, ``iptables-restore``)."""
    own, waited = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + waited.ru_utime + waited.ru_stime


def cpu_seconds(fn, *args: object) -> float:
    t = time.process_time()
    fn(*args)
    return time.process_time() - t


@pytest.mark.parametrize("kind", RENDERED)
def test_render_full_rule_set_10k_services(benchmark, kind):
    """Warm: every port unchanged since the last render (the render cache holds its text), the
    case of a full sync after the first. Cold: a new frontend, empty render cache.
    Figures are CPU time of this process (the machine is shared), medians of 5."""
    fe = make(kind)
    colds = []
    for _ in range(5):
        fe.cache.clear()
        colds.append(cpu_seconds(fe.render, BIG))
    text = fe.render(BIG)
    warms = [cpu_seconds(fe.render, BIG) for _ in range(5)]
    benchmark.pedantic(fe.render, args=(BIG,), rounds=5, iterations=1)
    warm, cold = statistics.median(warms), statistics.median(colds)
    RESULTS[f"render {kind}"] = warm
    RESULTS[f"render cold {kind}"] = cold
    print(f"\nrender {kind} {SERVICES} services x {ENDPOINTS} endpoints, CPU: warm cache median {ms(warm)}"
          f" (target < 200 ms), cold median {ms(cold)}; wall median {ms(benchmark.stats.stats.median)};"
          f" {text.count(chr(10))} lines, {len(text) // 1024} KiB")


@pytest.mark.parametrize("kind", RENDERED)
def test_render_partial_sync_one_endpoint_change(benchmark, kind):
    fe = make(kind)
    after, changed = one_endpoint_less(BIG)
    if kind.startswith("iptables"):
        old = fe._render_family(netfilter.plan_ports(BIG, 4), 4)[1]
        benchmark.pedantic(fe._partial, args=(after, 4, old, changed), rounds=20, iterations=1)
    else:
        old = fe._render(BIG)[1]
        benchmark.pedantic(fe._partial, args=(after, old, changed), rounds=20, iterations=1)
    RESULTS[f"render partial {kind}"] = benchmark.stats.stats.median
    print(f"\nrender partial sync {kind} (1 endpoint of {SERVICES} services): median {ms(benchmark.stats.stats.median)}")


# ---------------------------------------------------------------------------------------------
# Apply into a network namespace: root
# ---------------------------------------------------------------------------------------------


def met(seconds: float, target: float) -> str:
    return "met" if seconds < target else "NOT met"


@pytest.mark.parametrize("kind", sorted(VARIANTS))
def test_apply_full_rule_set_10k_services(benchmark, kind, netns):
    """A full sync by a new frontend into an empty namespace: the cold render (empty render
    cache) and every transaction, as at daemon start."""
    fe = make(kind, netns=netns, timeout=900)
    fe.start()
    cpu: list[float] = []

    def full() -> None:
        t = cpu_with_children()
        fe.sync(BIG, frozenset())
        cpu.append(cpu_with_children() - t)

    benchmark.pedantic(full, rounds=1, iterations=1)
    wall = benchmark.stats.stats.median
    RESULTS[f"apply {kind}"] = wall
    t = time.perf_counter()
    fe.stop()
    RESULTS[f"stop {kind}"] = time.perf_counter() - t
    print(f"\nfull sync {kind} {SERVICES} services x {ENDPOINTS} endpoints (render + apply): {wall:.2f} s;"
          f" target < {FULL_SYNC_TARGET:g} s: {met(wall, FULL_SYNC_TARGET)}; CPU (user + system, this process and"
          f" the tools it ran) {cpu[0]:.2f} s; removal on stop: {RESULTS[f'stop {kind}']:.2f} s")


@pytest.mark.parametrize("kind", sorted(VARIANTS))
def test_partial_sync_one_endpoint_change_applied(benchmark, kind, netns):
    fe = make(kind, netns=netns, timeout=900)
    fe.start()
    fe.sync(BIG, frozenset())
    after, changed = one_endpoint_less(BIG)
    states = [after, BIG]
    flip = {"i": 0}
    cpu: list[float] = []

    def partial() -> None:
        t = cpu_with_children()
        fe.sync(states[flip["i"] % 2], changed)
        cpu.append(cpu_with_children() - t)
        flip["i"] += 1

    benchmark.pedantic(partial, rounds=10, iterations=1)
    wall = benchmark.stats.stats.median
    RESULTS[f"partial {kind}"] = wall
    fe.stop()
    print(f"\npartial sync {kind} (render + apply, 1 endpoint of {SERVICES} services): median"
          f" {ms(wall)}; target < {ms(PARTIAL_SYNC_TARGET)}: {met(wall, PARTIAL_SYNC_TARGET)}; CPU (user +"
          f" system, this process and the tools it ran) median {ms(statistics.median(cpu))}")


# ---------------------------------------------------------------------------------------------
# Connection set-up latency through the rules: root
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    need_root()
    c = Cluster(pods=3)
    try:
        yield c
    finally:
        c.close()


@pytest.mark.parametrize("services", [10, SERVICES])
@pytest.mark.parametrize("kind", LATENCY)
def test_connection_setup_latency(benchmark, kind, services, cluster):
    """Connections to the service whose dispatch rule comes last (worst case for a linear list)."""
    target = ServicePortInfo(
        namespace="zz", name="target", port_name="p", protocol="TCP", port=80, cluster_ips=("10.99.0.1",),
        endpoints=tuple(EndpointInfo(ip=ip, port=SERVER_PORT) for ip in cluster.pod_ips),
    )
    fe = make(kind, netns=cluster.node, timeout=900)
    fe.sync(snapshot([*filler(services - 1), target]), frozenset())
    try:
        def measure() -> list[float]:
            out = subprocess.run(
                ["ip", "netns", "exec", cluster.client, sys.executable, "-c", LATENCY_CLIENT, "10.99.0.1", "80", "600"],
                capture_output=True, text=True, timeout=300, check=True,
            ).stdout
            return json.loads(out)

        samples = benchmark.pedantic(measure, rounds=1, iterations=1)
    finally:
        fe.stop()
        subprocess.run(["ip", "netns", "exec", cluster.node, "conntrack", "-F"], capture_output=True)
    median = statistics.median(samples)
    p90 = statistics.quantiles(samples, n=10)[-1]
    RESULTS[f"connect {kind} {services}"] = median
    benchmark.extra_info.update({"median_connect_us": median * 1e6, "p90_connect_us": p90 * 1e6})
    print(f"\nconnect {kind} with {services} services: median {median * 1e6:.0f} us, p90 {p90 * 1e6:.0f} us"
          f" ({len(samples)} connections from {CLIENT_IP})")


def test_print_ratios():
    """The RATIO lines of this run (whatever ran; skipped parts are left out)."""
    r = RESULTS

    def ratio(label: str, a: str, b: str) -> None:
        if a in r and b in r and r[b] > 0:
            print(f"RATIO {label}: {r[a] / r[b]:.3g}x ({r[a] * 1e3:.1f} ms vs {r[b] * 1e3:.1f} ms)")

    print()
    ratio("render nftables vs iptables", "render nftables", "render iptables")
    ratio("render warm vs cold, iptables", "render iptables", "render cold iptables")
    ratio("render warm vs cold, nftables", "render nftables", "render cold nftables")
    for kind in sorted(VARIANTS):
        ratio(f"full sync {kind} vs its target", f"apply {kind}", "target full sync")
        ratio(f"partial sync {kind} vs its target", f"partial {kind}", "target partial sync")
    ratio("render nftables inline vs cascade", "render nftables-inline", "render nftables")
    ratio("apply full nftables inline vs cascade", "apply nftables-inline", "apply nftables")
    ratio("partial sync nftables inline vs cascade", "partial nftables-inline", "partial nftables")
    ratio("partial sync nftables inline vs iptables", "partial nftables-inline", "partial iptables")
    ratio("render nftables maps vs cascade", "render nftables-maps", "render nftables")
    ratio("render cold nftables maps vs cascade", "render cold nftables-maps", "render cold nftables")
    ratio("apply full nftables maps vs cascade", "apply nftables-maps", "apply nftables")
    ratio("partial sync nftables maps vs cascade", "partial nftables-maps", "partial nftables")
    ratio("partial sync nftables maps vs inline", "partial nftables-maps", "partial nftables-inline")
    ratio("partial sync nftables maps vs iptables", "partial nftables-maps", "partial iptables")
    ratio("apply full iptables legacy vs nft", "apply iptables-legacy", "apply iptables")
    ratio("partial sync iptables legacy vs nft", "partial iptables-legacy", "partial iptables")
    ratio("render partial vs full, iptables", "render partial iptables", "render iptables")
    ratio("render partial vs full, nftables", "render partial nftables", "render nftables")
    ratio("apply full nftables vs iptables", "apply nftables", "apply iptables")
    ratio("partial sync vs full apply, iptables", "partial iptables", "apply iptables")
    ratio("partial sync vs full apply, nftables", "partial nftables", "apply nftables")
    ratio("partial sync nftables vs iptables", "partial nftables", "partial iptables")
    ratio(f"iptables connect latency {SERVICES} vs 10 services", f"connect iptables {SERVICES}", "connect iptables 10")
    ratio(f"nftables connect latency {SERVICES} vs 10 services", f"connect nftables {SERVICES}", "connect nftables 10")
    ratio(f"connect latency at {SERVICES} services, iptables vs nftables", f"connect iptables {SERVICES}",
          f"connect nftables {SERVICES}")
    ratio(f"nftables maps connect latency {SERVICES} vs 10 services", f"connect nftables-maps {SERVICES}",
          "connect nftables-maps 10")
    ratio(f"connect latency at {SERVICES} services, nftables maps vs cascade", f"connect nftables-maps {SERVICES}",
          f"connect nftables {SERVICES}")
    assert len(r) > 2, "no benchmark ran"
