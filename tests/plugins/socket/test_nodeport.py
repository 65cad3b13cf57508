"""The nodeport frontend on loopback node addresses: reachability, traffic policy, syncs."""

from __future__ import annotations

import collections
import socket

import pytest
from lbcore_plugins import nodeport
from lbcore_plugins.nodeport import NodePortFrontend
from proxy_helpers import service_port, snapshot, tag_of, wait_until

from lbcore.core import balancers
from lbcore.errors import ConfigError
from lbcore.runtime.interfaces import RuntimeContext

NODE_ADDRESSES = ["127.0.0.1", "127.0.0.2", "127.0.0.3"]


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def have_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


def test_node_port_answers_on_every_node_address(backends, make_frontend):
    a = backends("A")
    port = free_port()
    sp = service_port("web", [a.endpoint()], type="NodePort", node_port=port)
    fe = make_frontend(NodePortFrontend, addresses=NODE_ADDRESSES)
    fe.sync(snapshot(sp), frozenset({"default/web"}))
    assert fe.listening == [(addr, port, "TCP") for addr in NODE_ADDRESSES]
    for addr in NODE_ADDRESSES:
        assert tag_of((addr, port)) == "A"


@pytest.mark.skipif(not have_ipv6_loopback(), reason="needs an IPv6 loopback (::1)")
def test_node_port_answers_on_ipv6_loopback(backends, make_frontend):
    a = backends("A")
    port = free_port()
    sp = service_port("web", [a.endpoint()], type="NodePort", node_port=port)
    fe = make_frontend(NodePortFrontend, addresses=["::1"])
    fe.sync(snapshot(sp), frozenset({"default/web"}))
    assert tag_of(("::1", port)) == "A"


def test_node_port_carries_udp_with_replies_from_the_node_address(udp_backends, make_frontend):
    u = udp_backends("U")
    port = free_port(socket.SOCK_DGRAM)
    sp = service_port("dns", [u.endpoint()], protocol="UDP", type="NodePort", node_port=port)
    fe = make_frontend(NodePortFrontend, addresses=NODE_ADDRESSES)
    fe.sync(snapshot(sp), frozenset({"default/dns"}))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:
        c.settimeout(3)
        for addr in NODE_ADDRESSES:
            c.sendto(b"q", (addr, port))
            data, peer = c.recvfrom(100)
            assert (data, peer) == (b"U:q", (addr, port))


def test_cluster_ip_only_services_get_no_node_port(backends, make_frontend):
    a = backends("A")
    sp = service_port("web", [a.endpoint()])
    fe = make_frontend(NodePortFrontend, addresses=NODE_ADDRESSES)
    fe.sync(snapshot(sp), frozenset({"default/web"}))
    assert fe.listening == []


def test_local_traffic_policy_uses_only_this_nodes_endpoints(backends, make_frontend):
    here, there = backends("HERE"), backends("THERE")
    port = free_port()
    eps = [here.endpoint(node_name="node-a"), there.endpoint(node_name="node-b")]
    cluster = service_port("web", eps, type="NodePort", node_port=port)
    fe = make_frontend(NodePortFrontend, addresses=["127.0.0.1"])
    fe.sync(snapshot(cluster), frozenset({"default/web"}))
    both = collections.Counter(tag_of(("127.0.0.1", port)) for _ in range(20))
    assert both == {"HERE": 10, "THERE": 10}
    local = service_port(
        "web", eps, type="NodePort", node_port=port, external_traffic_policy="Local"
    )
    fe.sync(snapshot(local, version=2), frozenset({"default/web"}))
    assert {tag_of(("127.0.0.1", port)) for _ in range(20)} == {"HERE"}


def test_local_traffic_policy_without_local_endpoint_refuses(backends, make_frontend):
    there = backends("THERE")
    port = free_port()
    sp = service_port(
        "web",
        [there.endpoint(node_name="node-b")],
        type="NodePort",
        node_port=port,
        external_traffic_policy="Local",
    )
    fe = make_frontend(NodePortFrontend, addresses=["127.0.0.1"])
    fe.sync(snapshot(sp), frozenset({"default/web"}))
    # not listened on while no local endpoint takes connections: refused, as kube-proxy does
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=3).close()
    assert there.accepted == 0


def test_node_port_listeners_follow_syncs(backends, make_frontend):
    a = backends("A")
    p1, p2 = free_port(), free_port()
    fe = make_frontend(NodePortFrontend, addresses=["127.0.0.1"])
    fe.sync(
        snapshot(service_port("web", [a.endpoint()], type="NodePort", node_port=p1)),
        frozenset({"default/web"}),
    )
    assert tag_of(("127.0.0.1", p1)) == "A"
    fe.sync(
        snapshot(service_port("web", [a.endpoint()], type="NodePort", node_port=p2), version=2),
        frozenset({"default/web"}),
    )
    assert tag_of(("127.0.0.1", p2)) == "A"
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", p1), timeout=3)
    fe.sync(snapshot(version=3), frozenset({"default/web"}))
    assert fe.listening == []


def test_addresses_default_to_the_context_then_to_local_ones():
    ctx = RuntimeContext(node_name="n", node_addresses=("127.0.0.9",))
    assert NodePortFrontend({}, ctx).addresses == ("127.0.0.9",)
    found = NodePortFrontend({}, RuntimeContext(node_name="n")).addresses
    assert "127.0.0.1" in found or found == ("0.0.0.0",)
    with pytest.raises(ConfigError, match="addresses: '127.0.0.1'"):
        NodePortFrontend({"addresses": "127.0.0.1"}, ctx)


def test_plugin_registers_the_nodeport_frontend():
    assert nodeport.lbcore_register_frontends() == {"nodeport": NodePortFrontend}


@pytest.mark.parametrize("algorithm", ["maglev", "bounded_load"])
def test_node_port_balances_with_lbcore_algorithms(backends, make_frontend, algorithm):
    bs = [backends(t) for t in "ABC"]
    port = free_port()
    sp = service_port("web", [b.endpoint() for b in bs], type="NodePort", node_port=port)
    fe = make_frontend(NodePortFrontend, addresses=["127.0.0.1"], algorithm=algorithm)
    fe.sync(snapshot(sp), frozenset({"default/web"}))
    reference = balancers.create(algorithm, [f"127.0.0.1:{b.port}" for b in bs])
    for i in range(2, 10):
        src = f"127.0.1.{i}"
        # one connection at a time: bounded_load's bound never binds, it answers as its ring
        expected = "ABC"[reference.pick(socket.inet_aton(src))]
        for _ in range(3):
            assert wait_until(lambda: fe.stats()["connections"] == 0)
            assert tag_of(("127.0.0.1", port), source=src) == expected


def test_udp_flows_of_one_client_ip_share_a_backend_with_a_hash_algorithm(
    udp_backends, make_frontend
):
    us = [udp_backends(t) for t in ("U1", "U2", "U3")]
    port = free_port(socket.SOCK_DGRAM)
    sp = service_port(
        "dns", [u.endpoint() for u in us], protocol="UDP", type="NodePort", node_port=port
    )
    fe = make_frontend(NodePortFrontend, addresses=["127.0.0.1"], algorithm="rendezvous")
    fe.sync(snapshot(sp), frozenset({"default/dns"}))
    reference = balancers.create("rendezvous", [f"127.0.0.1:{u.port}" for u in us])
    for i in range(2, 8):
        src = f"127.0.2.{i}"
        expected = ("U1", "U2", "U3")[reference.pick(socket.inet_aton(src))]
        for _ in range(3):  # a new flow (source port) each time
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:
                c.settimeout(3)
                c.bind((src, 0))
                c.sendto(b"q", ("127.0.0.1", port))
                assert c.recvfrom(100)[0] == expected.encode() + b":q"
    assert fe.stats()["udp_flows"] == 18
