"""The compiled per-port writers and planner (plugins/_rules_c.pyx) give, byte for byte, what their
readable twins give: over random ports of every shape, every option set and both families; the
objects a partial sync reads back from the compiled text equal the readable ones."""

from __future__ import annotations

import dataclasses
import random
from types import MappingProxyType

import lbcore_plugins.netfilter as netfilter
import pytest
from kernel_snapshots import POD_CIDR
from lbcore_plugins.iptables import IptablesFrontend, RuleRenderer
from lbcore_plugins.nftables import NftablesFrontend, NftRenderer

from lbcore.interfaces import RuntimeContext
from lbcore.snapshot import EndpointInfo, ServicePortInfo, Snapshot

rules_c = pytest.importorskip("lbcore_plugins._rules_c")

OPTIONS = [
    {"cluster_cidr": POD_CIDR},
    {"cluster_cidr": [POD_CIDR, "fd00:244::/64"], "node_addresses": ["192.168.1.1", "fd00::1", "192.168.2.0/24"]},
    {"masquerade_all": True},
    {},
]


def random_snapshot(seed: int, services: int = 150) -> Snapshot:
    """Ports of every shape the renderers tell apart: families (dual stack too), no endpoints,
    terminating and remote endpoints, weights, repeated endpoints, affinity, traffic policies,
    NodePorts, unnamed ports, protocols the kernel frontends skip."""
    r = random.Random(seed)
    ports = []
    for i in range(services):
        v6 = r.random() < 0.3
        dual = r.random() < 0.15
        eps = []
        for j in range(r.choice([0, 1, 1, 2, 3, 5, 8])):
            e6 = r.random() < 0.5 if dual else v6
            eps.append(EndpointInfo(
                ip=f"fd00::{i:x}:{j:x}" if e6 else f"10.{1 + i // 200}.{i % 200}.{j + 1}",
                port=r.choice([8080, 9090, 53]), ready=r.random() < 0.85, serving=r.random() < 0.9,
                terminating=r.random() < 0.15, node_name=r.choice(["node-a", "node-b", None]),
                weight=r.choice([1, 1, 1, 2, 3, 0]),
            ))
        if eps and r.random() < 0.2:
            eps.append(eps[0])
        ips = ([f"10.96.{i // 250}.{i % 250 + 1}"] if not v6 or dual else []) + ([f"fd00:96::{i:x}"] if v6 or dual else [])
        kind = r.choice(["ClusterIP", "ClusterIP", "NodePort", "LoadBalancer"])
        ports.append(ServicePortInfo(
            namespace=r.choice(["ns", "kube-system", "a.b"]), name=f"s{i}",
            port_name=r.choice(["p", "", "http", "dns-udp"]),
            protocol=r.choice(["TCP", "TCP", "UDP", "SCTP", "ICMP"]), port=r.choice([80, 443, 53]),
            cluster_ips=tuple(ips + (["None"] if r.random() < 0.05 else [])), endpoints=tuple(eps),
            type=kind, node_port=30000 + i if kind != "ClusterIP" else None,
            session_affinity=r.choice(["None", "None", "ClientIP"]), affinity_timeout=r.choice([10800, 60]),
            external_traffic_policy=r.choice(["Cluster", "Local"]),
            internal_traffic_policy=r.choice(["Cluster", "Cluster", "Local"]),
        ))
    return Snapshot(version=1, node_name="node-a", service_ports=MappingProxyType({p.key: p for p in ports}))


@pytest.mark.parametrize("seed", range(3))
def test_compiled_planner_and_plan_key_equal_the_readable_ones(seed):
    s = random_snapshot(seed)
    for node in ("node-a", "node-b", None):
        for sp in s.service_ports.values():
            for family in (4, 6):
                plan = rules_c.plan_port(sp, family, node)
                assert plan == netfilter.plan_port(sp, family, node)
                if plan is not None:
                    assert rules_c.plan_key(plan) == netfilter.plan_key(plan)


@pytest.mark.parametrize("options", OPTIONS)
@pytest.mark.parametrize("seed", range(3))
def test_iptables_writer_equals_the_readable_renderer(seed, options):
    s = random_snapshot(seed)
    for family in (4, 6):
        renderer = RuleRenderer(netfilter.NetfilterOptions.parse("iptables", options), family)
        for plan in netfilter.plan_ports(s, family):
            written, readable = renderer.port_rules(plan), renderer.port_rules_py(plan)
            assert written.text() == readable.text()
            assert (written.services, written.nodeports, written.reject) == (
                readable.services, readable.nodeports, readable.reject
            )
            assert written.chains == readable.chains  # read back from the text


@pytest.mark.parametrize("selection", netfilter.ENDPOINT_SELECTIONS)
@pytest.mark.parametrize("options", OPTIONS)
@pytest.mark.parametrize("seed", range(3))
def test_nftables_writer_equals_the_readable_renderer(seed, options, selection):
    s = random_snapshot(seed)
    renderer = NftRenderer(netfilter.NetfilterOptions.parse("nftables", {**options, "endpoint_selection": selection}))
    written_ports = 0
    for family in (4, 6):
        for plan in netfilter.plan_ports(s, family):
            written, readable = renderer.port_objects(plan), renderer.port_objects_py(plan)
            (elements, sets, chains), (elements_py, sets_py, chains_py) = written.text(), readable.text()
            assert (sets, chains) == (sets_py, chains_py)
            assert {name: list(items) for name, items in elements.items()} == elements_py
            # what a partial sync compares, read back from the text, in the same order
            assert list(written.chains.items()) == list(readable.chains.items())
            assert written.sets == readable.sets
            assert list(written.elements.items()) == list(readable.elements.items())
            written_ports += renderer._writer.write(plan) is not None
    # the writer takes cascade, inline and maps ports without affinity; vmap and map it leaves
    assert (written_ports > 50) == (selection in ("cascade", "inline", "maps"))


@pytest.mark.parametrize("kind", ["iptables", "nftables", "nftables-inline", "nftables-maps"])
def test_full_render_with_and_without_the_compiled_parts_is_identical(kind, monkeypatch):
    cls = IptablesFrontend if kind == "iptables" else NftablesFrontend
    options: dict[str, object] = {"cluster_cidr": POD_CIDR}
    if kind.startswith("nftables-"):
        options["endpoint_selection"] = kind.partition("-")[2]
    s = random_snapshot(7, services=400)
    compiled = cls(options, RuntimeContext()).render(s)
    monkeypatch.setattr(netfilter, "compiled", lambda name: None)
    readable_fe = cls(options, RuntimeContext())
    if kind == "iptables":
        monkeypatch.setattr(RuleRenderer, "port_rules", RuleRenderer.port_rules_py)
    else:
        readable_fe.renderer._writer = None
    assert readable_fe.render(s) == compiled


def test_a_name_that_is_not_ascii_is_left_to_the_readable_renderers():
    sp = ServicePortInfo(
        namespace="ns", name="café", port_name="p", protocol="TCP", port=80,
        cluster_ips=("10.96.0.1",), endpoints=(EndpointInfo(ip="10.1.0.1", port=8080),),
    )
    plan = netfilter.plan_port(sp, 4, "node-a")
    ipt = RuleRenderer(netfilter.NetfilterOptions.parse("iptables", {}), 4)
    nft = NftRenderer(netfilter.NetfilterOptions.parse("nftables", {}))
    assert ipt._writer.write(plan) is None and nft._writer.write(plan) is None
    assert ipt.port_rules(plan).text() == ipt.port_rules_py(plan).text()
    assert '--comment "ns/café:p"' in ipt.port_rules(plan).text()[1]
    assert nft.port_objects(plan).text() == nft.port_objects_py(plan).text()


def test_a_maps_port_with_an_address_that_is_not_ascii_is_left_to_the_readable_renderer():
    """The ``maps`` form names nothing after the service, so only its addresses matter."""
    nft = NftRenderer(netfilter.NetfilterOptions.parse("nftables", {"endpoint_selection": "maps"}))
    eps = (EndpointInfo(ip="10.1.0.1", port=8080, weight=3), EndpointInfo(ip="10.1.0.2", port=8080))
    named = ServicePortInfo(
        namespace="ns", name="café", port_name="p", protocol="TCP", port=80, cluster_ips=("10.96.0.1",),
        endpoints=eps,
    )
    plan = netfilter.plan_port(named, 4, "node-a")
    written = nft._writer.write(plan)
    assert written is not None
    assert {name: list(items) for name, items in written[0].items()} == nft.port_objects_py(plan).text()[0]
    odd = netfilter.plan_port(
        dataclasses.replace(named, endpoints=(*eps, EndpointInfo(ip="10.1.0.٣", port=8080))), 4, "node-a")
    assert nft._writer.write(odd) is None
    assert "10.96.0.1 . tcp . 80 . 4 : 10.1.0.٣ . 8080" in nft.port_objects(odd).text()[0]["service-endpoints-v4"]


@pytest.mark.parametrize("kind", ["iptables", "nftables", "nftables-maps"])
def test_a_writer_in_use_leaves_a_second_caller_to_the_readable_renderer(kind):
    """A writer's buffers belong to one call at a time: a call made while another is inside it
    (another thread, at a switch of the interpreter) gets None and falls back to the twin."""
    sp = ServicePortInfo(
        namespace="ns", name="web", port_name="p", protocol="TCP", port=80,
        cluster_ips=("10.96.0.1",), endpoints=(EndpointInfo(ip="10.1.0.1", port=8080),),
    )
    plan = netfilter.plan_port(sp, 4, "node-a")
    if kind == "iptables":
        writer = RuleRenderer(netfilter.NetfilterOptions.parse("iptables", {}), 4)._writer
    else:
        selection = "maps" if kind == "nftables-maps" else "cascade"
        writer = NftRenderer(netfilter.NetfilterOptions.parse("nftables", {"endpoint_selection": selection}))._writer
    inner: list[object] = []

    class Interleaved:
        """The plan, read by the writer; reading its ``sp`` runs a second call meanwhile."""

        family, cluster_ips = plan.family, plan.cluster_ips
        cluster_endpoints, local_endpoints = plan.cluster_endpoints, plan.local_endpoints

        @property
        def sp(self) -> ServicePortInfo:
            inner.append(writer.write(plan))
            return sp

    outer = writer.write(Interleaved())
    assert inner == [None]
    assert outer == writer.write(plan) and outer is not None
