"""One endpoint rule: the Picker and every frontend agree on which endpoints take new connections.

Table-driven over every combination of conditions (ready, serving, terminating) of three
endpoints, two of them on this node, for each traffic policy and kind of traffic. Each consumer
is asked in its own terms: the Picker's eligible set, the socket and NodePort frontends'
pickable table rows, where the iptables rule set can DNAT a packet (walked by ``ruletrace``), and
which endpoints the nftables table's chains reach from the service's verdict.
"""

from __future__ import annotations

import itertools
import re

import pytest
from kernel_snapshots import CLIENT, NODE_IP, OUTSIDE, POD_CIDR, snap
from lbcore_plugins.iptables import IptablesFrontend
from lbcore_plugins.nftables import NftablesFrontend
from lbcore_plugins.nodeport import NodePortFrontend
from lbcore_plugins.socket_frontend import SocketFrontend
from ruletrace import Packet, trace

from lbcore import EndpointInfo, Picker, RuntimeContext, ServicePortInfo, endpoints_for

NODE = "node-a"
# (ready, serving, terminating) as the endpoints controller can report them; the last is a
# terminating pod of a service with publishNotReadyAddresses
CONDITIONS = [
    (True, True, False),
    (False, False, False),
    (False, True, True),
    (False, False, True),
    (True, True, True),
]
NODES = [NODE, "node-b", NODE]
POLICIES = [(i, e) for i in ("Cluster", "Local") for e in ("Cluster", "Local")]


def service_port(conditions, internal: str, external: str) -> ServicePortInfo:
    eps = tuple(
        EndpointInfo(f"10.244.{k + 1}.2", 8080, ready=r, serving=s, terminating=t, node_name=node)
        for k, ((r, s, t), node) in enumerate(zip(conditions, NODES, strict=True))
    )
    return ServicePortInfo(
        namespace="ns", name="web", port_name="p", protocol="TCP", port=80,
        cluster_ips=("10.96.0.1",), endpoints=eps, type="NodePort", node_port=30080,
        internal_traffic_policy=internal, external_traffic_policy=external,
    )


def picker_answer(sp: ServicePortInfo, traffic: str) -> set[str]:
    picker = Picker(sp, node_name=NODE, traffic=traffic)  # type: ignore[arg-type]
    return {ep.address for ep in picker.eligible}


def socket_answer(sp: ServicePortInfo, traffic: str) -> set[str]:
    cls = SocketFrontend if traffic == "internal" else NodePortFrontend
    options = {} if traffic == "internal" else {"addresses": [NODE_IP]}
    frontend = cls(options, RuntimeContext(node_name=NODE))
    snapshot = snap(sp, node_name=NODE)
    _, tables = frontend.wanted(snapshot)
    (table_sp,) = tables.values()
    rows = frontend.rows(table_sp, frontend.node(snapshot))
    return {f"{ip}:{port}" for ip, port, _, pickable in rows if pickable}


def iptables_answer(sp: ServicePortInfo, traffic: str) -> set[str]:
    fe = IptablesFrontend({"cluster_cidr": POD_CIDR, "node_addresses": [NODE_IP]}, RuntimeContext())
    text = fe.render(snap(sp, node_name=NODE))
    packet = Packet(CLIENT, "10.96.0.1", 80) if traffic == "internal" else Packet(OUTSIDE, NODE_IP, 30080)
    return {o.dnat for o in trace(text, packet) if o.dnat is not None}


def nftables_answer(sp: ServicePortInfo, traffic: str) -> set[str]:
    text = NftablesFrontend({"cluster_cidr": POD_CIDR}, RuntimeContext()).render(snap(sp, node_name=NODE))
    key = "10.96.0.1 . tcp . 80" if traffic == "internal" else "tcp . 30080"
    start = re.findall(re.escape(key) + r" : goto ([^\s,}]+)", text)
    chains = dict(re.findall(r"\tchain (\S+) \{\n(.*?)\n\t\}", text, re.S))
    seen: set[str] = set()
    reached: set[str] = set()
    todo = list(start)
    while todo:
        name = todo.pop()
        if name in seen or name == "mark-for-masquerade":
            continue
        seen.add(name)
        body = chains[name]
        reached.update(re.findall(r"dnat ip to (\S+)", body))
        todo.extend(re.findall(r"(?:goto|jump) ([^\s,}]+)", body))
    return reached


CONSUMERS = {
    "picker": picker_answer,
    "socket/nodeport": socket_answer,
    "iptables": iptables_answer,
    "nftables": nftables_answer,
}


@pytest.mark.parametrize("traffic", ["internal", "external"])
@pytest.mark.parametrize(("internal", "external"), POLICIES)
def test_every_consumer_gives_new_connections_to_the_same_endpoints(internal, external, traffic):
    for conditions in itertools.product(CONDITIONS, repeat=3):
        sp = service_port(conditions, internal, external)
        expected = {ep.address for ep in endpoints_for(sp, traffic, NODE)}
        for name, answer in CONSUMERS.items():
            got = answer(sp, traffic)
            assert got == expected, (name, conditions, internal, external, traffic)


def test_the_rule_itself():
    """kube-proxy's CategorizeEndpoints: ready (terminating or not); else serving and
    terminating; a Local policy keeps this node's with no fallback to others."""
    ready, off, serving_term, term, ready_term = CONDITIONS
    sp = service_port([ready, serving_term, ready_term], "Cluster", "Local")
    assert [e.ip for e in endpoints_for(sp, "internal", NODE)] == ["10.244.1.2", "10.244.3.2"]
    sp = service_port([off, serving_term, term], "Cluster", "Local")
    assert [e.ip for e in endpoints_for(sp, "internal", NODE)] == ["10.244.2.2"]
    assert endpoints_for(sp, "external", NODE) == ()  # node-b's endpoint is not local
    sp = service_port([off, off, term], "Cluster", "Cluster")
    assert endpoints_for(sp, "internal", NODE) == ()
