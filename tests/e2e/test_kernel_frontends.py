"""The iptables and nftables frontends with real packets, in network namespaces made here.

One topology per frontend (see netns.py); each test syncs its own services into the "node"
namespace through a real frontend instance (option ``netns``) and stops it afterwards.
"""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
import subprocess
from collections import Counter
from collections.abc import Iterator
from types import MappingProxyType

import pytest
from lbcore_plugins.iptables import IptablesFrontend
from lbcore_plugins.nftables import NftablesFrontend
from netns import CLIENT_GW, CLIENT_IP, OUTSIDE_GW, POD_CIDR, SERVER_PORT, Cluster, UdpSession, sh

from lbcore.model.snapshot import EndpointInfo, ServicePortInfo, Snapshot
from lbcore.runtime.interfaces import FrontendUnavailable, RuntimeContext

pytestmark = [pytest.mark.root, pytest.mark.timeout(180)]

# each topology runs the whole suite through one of these: a frontend and its options
KINDS: dict[str, tuple[type[IptablesFrontend] | type[NftablesFrontend], dict[str, object]]] = {
    "iptables": (IptablesFrontend, {}),
    "nftables": (NftablesFrontend, {}),
    "nftables-maps": (NftablesFrontend, {"endpoint_selection": "maps"}),
}


def make(kind: str, options: dict[str, object]) -> IptablesFrontend | NftablesFrontend:
    cls, extra = KINDS[kind]
    return cls({**extra, **options}, RuntimeContext())


#: connections each spread test makes to a service of three pods
SPREAD_CONNECTIONS = 900
#: the chi-square critical value for three pods (2 degrees of freedom) at p = 1e-6. With 2
#: degrees of freedom the statistic is exponential with mean 2, P(chi2 > x) = exp(-x / 2), so
#: the upper 1e-6 quantile is -2 ln(1e-6) = 27.63 (scipy: chi2.isf(1e-6, 2))
CHI2_DF2_P1E6 = -2 * math.log(1e-6)


def assert_even_spread(counts: Counter[str]) -> None:
    """``SPREAD_CONNECTIONS`` connections fell evenly on the three pods.

    An even spread fails this once in a million runs. A pod taking half and the others a
    quarter each passes it in 3 runs of 100 million (noncentrality 112), and the 1/3, 2/9, 4/9
    split of a cascade whose probabilities are not renormalised in 0.14 % of runs (noncentrality
    67)."""
    assert set(counts) == {"pod1", "pod2", "pod3"}, counts
    expected = SPREAD_CONNECTIONS / 3
    chi2 = sum((n - expected) ** 2 / expected for n in counts.values())
    assert chi2 < CHI2_DF2_P1E6, counts


def service(name: str, ip: str, pod_ips: list[str], protocol: str = "TCP", **kw: object) -> ServicePortInfo:
    return ServicePortInfo(
        namespace="e2e", name=name, port_name="p", protocol=protocol, port=80, cluster_ips=(ip,),
        endpoints=tuple(EndpointInfo(ip=p, port=SERVER_PORT) for p in pod_ips), **kw,  # type: ignore[arg-type]
    )


def snapshot(*ports: ServicePortInfo, version: int = 1) -> Snapshot:
    return Snapshot(version=version, service_ports=MappingProxyType({sp.key: sp for sp in ports}))


def kernel_reason(cluster: Cluster, kind: str) -> str | None:
    """None when ``kind`` can run in the node namespace, else a one-line reason."""
    try:
        make(kind, {"netns": cluster.node}).start()
    except FrontendUnavailable as exc:
        return str(exc).splitlines()[0]
    return None


@pytest.fixture(scope="module", params=sorted(KINDS))
def cluster(request: pytest.FixtureRequest) -> Iterator[tuple[str, Cluster]]:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("needs root and iproute2 for network namespaces")
    c = Cluster(pods=3)
    try:
        reason = kernel_reason(c, request.param)
        if reason:
            pytest.skip(reason)
        yield request.param, c
    finally:
        c.close()


@pytest.fixture
def frontend(cluster: tuple[str, Cluster]) -> Iterator[IptablesFrontend | NftablesFrontend]:
    kind, c = cluster
    fe = make(kind, {"netns": c.node, "cluster_cidr": POD_CIDR})
    fe.start()
    try:
        yield fe
    finally:
        fe.stop()
        sh("conntrack", "-F", netns=c.node, check=False)


def test_cluster_ip_spreads_connections_evenly_over_three_pods(cluster, frontend):
    _, c = cluster
    frontend.sync(snapshot(service("web", "10.96.0.10", c.pod_ips)), frozenset({"e2e/web"}))
    replies = c.tcp(c.client, "10.96.0.10", 80, count=SPREAD_CONNECTIONS)
    assert_even_spread(Counter(c.pod_name(r) for r in replies))
    # the pods see the client's own address: pod-network traffic is not masqueraded
    assert {r.split()[1] for r in replies} == {CLIENT_IP}


def test_cluster_ip_reachable_from_a_process_on_the_node(cluster, frontend):
    _, c = cluster
    frontend.sync(snapshot(service("web", "10.96.0.10", c.pod_ips)), frozenset({"e2e/web"}))
    replies = c.tcp(c.node, "10.96.0.10", 80, count=10)
    assert all(c.pod_name(r) in {"pod1", "pod2", "pod3"} for r in replies), replies


def test_client_ip_affinity_keeps_a_client_on_one_pod(cluster, frontend):
    _, c = cluster
    sp = service("sticky", "10.96.0.11", c.pod_ips, session_affinity="ClientIP", affinity_timeout=60)
    frontend.sync(snapshot(sp), frozenset({"e2e/sticky"}))
    replies = c.tcp(c.client, "10.96.0.11", 80, count=40)
    assert len({c.pod_name(r) for r in replies}) == 1, replies


def test_removed_endpoint_gets_no_new_connections_after_sync(cluster, frontend):
    _, c = cluster
    frontend.sync(snapshot(service("web", "10.96.0.12", c.pod_ips)), frozenset({"e2e/web"}))
    before = Counter(c.pod_name(r) for r in c.tcp(c.client, "10.96.0.12", 80, count=60))
    assert before["pod3"] > 0  # misses pod3 in (2/3)^60 = 3e-11 of runs
    frontend.sync(snapshot(service("web", "10.96.0.12", c.pod_ips[:2]), version=2), frozenset({"e2e/web"}))
    after = Counter(c.pod_name(r) for r in c.tcp(c.client, "10.96.0.12", 80, count=60))
    assert set(after) == {"pod1", "pod2"}, after


def test_udp_flows_move_to_a_live_pod_when_their_endpoint_is_removed(cluster, frontend):
    _, c = cluster
    sp = service("dns", "10.96.0.13", c.pod_ips, protocol="UDP")
    frontend.sync(snapshot(sp), frozenset({"e2e/dns"}))
    session = UdpSession(c.client, "10.96.0.13", 80)
    try:
        first = session.ask()
        assert first != "timeout" and not first.startswith("error"), first
        pinned = c.pod_name(first)
        # the same socket keeps its conntrack entry, so it stays on one pod
        assert {c.pod_name(session.ask()) for _ in range(5)} == {pinned}
        survivors = [ip for ip, pod in zip(c.pod_ips, ("pod1", "pod2", "pod3"), strict=True) if pod != pinned]
        frontend.sync(snapshot(dataclasses.replace(sp, endpoints=tuple(
            EndpointInfo(ip=ip, port=SERVER_PORT) for ip in survivors)), version=2), frozenset({"e2e/dns"}))
        moved = session.ask()
        assert c.pod_name(moved) in {"pod1", "pod2", "pod3"} - {pinned}, moved
    finally:
        session.close()


def test_node_port_reachable_from_client_and_from_outside(cluster, frontend):
    _, c = cluster
    sp = service("np", "10.96.0.14", c.pod_ips, type="NodePort", node_port=30080)
    frontend.sync(snapshot(sp), frozenset({"e2e/np"}))
    inside = c.tcp(c.client, CLIENT_GW, 30080, count=10)
    outside = c.tcp(c.outside, OUTSIDE_GW, 30080, count=10)
    for reply in inside + outside:
        assert c.pod_name(reply) in {"pod1", "pod2", "pod3"}, reply
    # NodePort traffic is masqueraded: the pod answers the node, not the outside host
    assert {r.split()[1] for r in outside} <= set(c.node_addresses)


def test_a_pod_reaches_itself_through_its_service(cluster, frontend):
    _, c = cluster
    frontend.sync(snapshot(service("self", "10.96.0.21", c.pod_ips[:1])), frozenset({"e2e/self"}))
    # unmasqueraded, pod1 would answer its own address directly and the handshake would fail
    replies = c.tcp(c.pods[0], "10.96.0.21", 80, count=3)
    assert [c.pod_name(r) for r in replies] == ["pod1"] * 3, replies
    assert {r.split()[1] for r in replies} <= set(c.node_addresses), replies


def test_cluster_ip_is_not_reachable_from_outside(cluster, frontend):
    _, c = cluster
    frontend.sync(snapshot(service("web", "10.96.0.15", c.pod_ips)), frozenset({"e2e/web"}))
    assert c.pod_name(c.tcp(c.client, "10.96.0.15", 80)[0]) in {"pod1", "pod2", "pod3"}
    replies = c.tcp(c.outside, "10.96.0.15", 80, count=3, timeout=1.0)
    assert all(r in ("timeout", "refused") or r.startswith("error") for r in replies), replies


def test_service_without_endpoints_is_refused_at_once(cluster, frontend):
    _, c = cluster
    empty = service("empty", "10.96.0.16", [])
    udp_empty = service("empty-udp", "10.96.0.16", [], protocol="UDP")
    frontend.sync(snapshot(empty, udp_empty), frozenset({"e2e/empty", "e2e/empty-udp"}))
    # without the REJECT the black-hole default route would make this a timeout
    assert c.tcp(c.client, "10.96.0.16", 80, count=3, timeout=3.0) == ["refused"] * 3
    assert c.tcp(c.node, "10.96.0.16", 80, count=1, timeout=3.0) == ["refused"]
    session = UdpSession(c.client, "10.96.0.16", 80, timeout=3.0)
    try:
        assert session.ask() == "error 111"  # ECONNREFUSED from the ICMP port unreachable
    finally:
        session.close()


def _foreign_state(c: Cluster) -> tuple[str, str, str]:
    nat = sh("iptables", "-t", "nat", "-S", "PREROUTING", netns=c.node)
    chain = sh("iptables", "-t", "filter", "-S", "FOREIGN", netns=c.node)
    table = sh("nft", "list", "table", "inet", "foreign", netns=c.node)
    return nat, chain, table


def _lbcore_leftovers(c: Cluster) -> list[str]:
    saved = sh("iptables-save", netns=c.node)
    ruleset = sh("nft", "list", "ruleset", netns=c.node)
    left = [line for line in saved.splitlines() if "LBCORE" in line or "lbcore" in line]
    left += [line for line in ruleset.splitlines() if "table inet lbcore" in line]
    return left


def test_foreign_rules_stay_and_nothing_of_lbcore_is_left_after_stop(cluster):
    kind, c = cluster
    sh("iptables", "-t", "filter", "-N", "FOREIGN", netns=c.node)
    sh("iptables", "-t", "filter", "-A", "FOREIGN", "-p", "tcp", "--dport", "9999", "-j", "ACCEPT", netns=c.node)
    sh("iptables", "-t", "nat", "-A", "PREROUTING", "-p", "tcp", "--dport", "9998", "-j", "RETURN", netns=c.node)
    sh("nft", "add table inet foreign; add chain inet foreign c; add rule inet foreign c tcp dport 9997 accept", netns=c.node)
    try:
        before = _foreign_state(c)
        fe = make(kind, {"netns": c.node, "cluster_cidr": POD_CIDR})
        fe.start()
        sp = service("np", "10.96.0.17", c.pod_ips, type="NodePort", node_port=30081)
        fe.sync(snapshot(sp, service("empty", "10.96.0.18", [])), frozenset({"e2e/np", "e2e/empty"}))
        fe.sync(snapshot(dataclasses.replace(sp, endpoints=sp.endpoints[:1]), version=2), frozenset({"e2e/np", "e2e/empty"}))
        assert c.pod_name(c.tcp(c.client, "10.96.0.17", 80)[0]) == "pod1"
        assert _lbcore_leftovers(c), "the frontend installed nothing"
        fe.stop()
        assert _lbcore_leftovers(c) == []
        assert _foreign_state(c) == before
        # and the service is gone with it
        assert c.tcp(c.client, "10.96.0.17", 80, timeout=1.0) == ["timeout"]
    finally:
        sh("iptables", "-t", "nat", "-D", "PREROUTING", "-p", "tcp", "--dport", "9998", "-j", "RETURN", netns=c.node, check=False)
        sh("iptables", "-t", "filter", "-F", "FOREIGN", netns=c.node, check=False)
        sh("iptables", "-t", "filter", "-X", "FOREIGN", netns=c.node, check=False)
        sh("nft", "delete table inet foreign", netns=c.node, check=False)


def test_stop_keep_leaves_the_rules_serving(cluster):
    kind, c = cluster
    fe = make(kind, {"netns": c.node, "cluster_cidr": POD_CIDR})
    fe.start()
    fe.sync(snapshot(service("web", "10.96.0.19", c.pod_ips[:1])), frozenset({"e2e/web"}))
    fe.stop(keep=True)
    try:
        assert c.pod_name(c.tcp(c.client, "10.96.0.19", 80)[0]) == "pod1"
        # a new instance takes over what the old one left, then removes it
        fe2 = make(kind, {"netns": c.node, "cluster_cidr": POD_CIDR})
        fe2.sync(snapshot(service("web", "10.96.0.19", c.pod_ips[1:2])), frozenset({"e2e/web"}))
        assert c.pod_name(c.tcp(c.client, "10.96.0.19", 80)[0]) == "pod2"
        fe2.stop()
    finally:
        subprocess.run(["ip", "netns", "exec", c.node, "nft", "delete", "table", "inet", "lbcore"], capture_output=True)
    assert _lbcore_leftovers(c) == []


@pytest.mark.parametrize("selection", ["vmap", "inline", "map"])
def test_nftables_other_endpoint_selections_spread_connections_too(cluster, selection):
    kind, c = cluster
    if kind != "nftables":
        pytest.skip("an nftables option")
    fe = NftablesFrontend({"netns": c.node, "cluster_cidr": POD_CIDR, "endpoint_selection": selection}, RuntimeContext())
    fe.sync(snapshot(service("web", "10.96.0.20", c.pod_ips)), frozenset({"e2e/web"}))
    try:
        counts = Counter(c.pod_name(r) for r in c.tcp(c.client, "10.96.0.20", 80, count=SPREAD_CONNECTIONS))
    finally:
        fe.stop()
    assert_even_spread(counts)
