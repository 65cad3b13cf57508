"""The nftables table: maps, numgen balancing, affinity sets, and transactional partial updates."""

from __future__ import annotations

import dataclasses
import re

import pytest
from kernel_snapshots import POD_CIDR, many, port, snap
from lbcore_plugins.nftables import NftablesFrontend, endpoint_chain, service_chain

from lbcore.model.snapshot import EndpointInfo, Snapshot
from lbcore.runtime.interfaces import RuntimeContext

PODS = ["10.244.1.2", "10.244.2.2", "10.244.3.2"]


def fe(**options: object) -> NftablesFrontend:
    return NftablesFrontend({"cluster_cidr": POD_CIDR, **options}, RuntimeContext())


def chain_body(text: str, name: str) -> list[str]:
    m = re.search(r"\tchain " + re.escape(name) + r" \{\n(.*?)\n\t\}", text, re.S)
    assert m, name
    return [line.strip() for line in m.group(1).splitlines()]


def test_cluster_ip_is_one_map_element_and_endpoints_a_numgen_cascade():
    sp = port("web", "10.96.0.1", PODS)
    text = fe().render(snap(sp))
    svc = service_chain(sp)
    assert f"10.96.0.1 . tcp . 80 : goto {svc}" in text
    chains = [endpoint_chain(sp, ep) for ep in sp.endpoints]
    # each rule draws a fresh number: 1/3, then 1/2 of the rest, then the rest
    assert chain_body(text, svc)[1:] == [
        f"numgen random mod 3 0 goto {chains[0]}",
        f"numgen random mod 2 0 goto {chains[1]}",
        f"goto {chains[2]}",
    ]


def test_vmap_option_writes_one_numgen_vmap_per_service():
    sp = port("web", "10.96.0.1", PODS)
    text = fe(endpoint_selection="vmap").render(snap(sp))
    svc = service_chain(sp)
    assert f"10.96.0.1 . tcp . 80 : goto {svc}" in text
    body = chain_body(text, svc)
    assert body[0] == f"ip daddr 10.96.0.1 tcp dport 80 ip saddr != {POD_CIDR} jump mark-for-masquerade"
    targets = ", ".join(f"{i} : goto {endpoint_chain(sp, ep)}" for i, ep in enumerate(sp.endpoints))
    assert body[1] == f"numgen random mod 3 vmap {{ {targets} }}"
    assert chain_body(text, endpoint_chain(sp, sp.endpoints[0]))[-1] == "meta l4proto tcp dnat ip to 10.244.1.2:8080"


def test_dispatch_is_a_fixed_number_of_rules_whatever_the_number_of_services():
    small = chain_body(fe().render(many(3)), "services")
    large_text = fe().render(many(300))
    assert chain_body(large_text, "services") == small
    assert large_text.count(" . tcp . 80 : goto service-") == 300


def test_weights_become_numgen_ranges():
    sp = dataclasses.replace(
        port("web", "10.96.0.1", []),
        endpoints=tuple(EndpointInfo(ip=p, port=8080, weight=w) for p, w in zip(PODS, (2, 4, 10), strict=True)),
    )
    chains = [endpoint_chain(sp, ep) for ep in sp.endpoints]
    body = chain_body(fe(endpoint_selection="vmap").render(snap(sp)), service_chain(sp))
    assert body[-1] == f"numgen random mod 8 vmap {{ 0 : goto {chains[0]}, 1-2 : goto {chains[1]}, 3-7 : goto {chains[2]} }}"
    # cascade: 1/8, then 2/7 of the rest (= 2/8), then the rest (5/8)
    body = chain_body(fe().render(snap(sp)), service_chain(sp))
    assert body == [f"ip daddr 10.96.0.1 tcp dport 80 ip saddr != {POD_CIDR} jump mark-for-masquerade",
                    f"numgen random mod 8 0 goto {chains[0]}", f"numgen random mod 7 < 2 goto {chains[1]}",
                    f"goto {chains[2]}"]


def test_affinity_uses_a_timed_dynamic_set_per_endpoint():
    sp = port("web", "10.96.0.1", PODS[:2], session_affinity="ClientIP", affinity_timeout=77)
    text = fe().render(snap(sp))
    assert text.count("flags dynamic,timeout; timeout 77s") == 2
    ep_body = chain_body(text, endpoint_chain(sp, sp.endpoints[0]))
    assert ep_body[1].startswith("update @affinity-") and ep_body[1].endswith("{ ip saddr }")
    assert chain_body(text, service_chain(sp))[1].startswith("ip saddr @affinity-")


def test_no_endpoints_and_node_ports_go_to_their_maps():
    empty = port("empty", "10.96.0.2", [], type="NodePort", node_port=30002)
    np = port("np", "10.96.0.3", PODS, type="NodePort", node_port=30003)
    text = fe().render(snap(empty, np))
    assert "10.96.0.2 . tcp . 80 : goto reject-chain" in text
    assert "tcp . 30002 : goto reject-chain" in text
    assert f"tcp . 30003 : goto {service_chain(np, 'external')}" in text
    assert chain_body(text, service_chain(np, "external")) == ["jump mark-for-masquerade", f"goto {service_chain(np)}"]


def test_outside_traffic_only_reaches_node_ports():
    services = chain_body(fe().render(many(2)), "services")
    assert services[0] == f"ip saddr != {POD_CIDR} fib saddr type != local goto external"
    assert chain_body(fe().render(many(2)), "external") == ["fib daddr type local jump nodeports"]


def test_partial_update_of_one_endpoint_touches_only_that_service():
    before = many(100)
    key = sorted(before.service_ports)[5]
    sp = before.service_ports[key]
    ports = dict(before.service_ports)
    ports[key] = dataclasses.replace(sp, endpoints=sp.endpoints[:-1])
    after = Snapshot(version=2, service_ports=ports, node_name=before.node_name)
    update = fe().render_update(before, after, frozenset({sp.service}))
    lines = update.splitlines()
    assert "table" not in update.split("inet lbcore")[0]  # no table replacement
    assert lines[0] == f"flush chain inet lbcore {service_chain(sp)}"
    gone = endpoint_chain(sp, sp.endpoints[-1])
    assert lines[-2:] == [f"flush chain inet lbcore {gone}", f"delete chain inet lbcore {gone}"]
    assert not any("element" in line for line in lines)


def test_partial_update_moves_a_service_between_maps_in_one_transaction():
    sp = port("web", "10.96.0.1", PODS)
    before = snap(sp)
    after = snap(dataclasses.replace(sp, endpoints=()))
    update = fe().render_update(before, after, frozenset({sp.service})).splitlines()
    delete = "delete element inet lbcore service-ips-v4 { 10.96.0.1 . tcp . 80 }"
    # a map block, not `add element`: nft then reads no chain list from the kernel
    add = ("add map inet lbcore no-endpoint-services-v4 { type ipv4_addr . inet_proto . inet_service : verdict;"
           " elements = { 10.96.0.1 . tcp . 80 : goto reject-chain } }")
    assert delete in update and add in update
    # elements that point at a chain go before the chain is deleted
    assert update.index(delete) < update.index(f"delete chain inet lbcore {service_chain(sp)}")


def test_unchanged_snapshot_needs_no_transaction():
    s = many(10)
    assert fe().render_update(s, s, frozenset(s.services)) == ""


def test_deletions_leave_the_script_and_elements_only_when_asked():
    from lbcore_plugins.nftables import _split_deletions

    t = "inet lbcore"
    script = f"flush chain {t} svc\nflush chain {t} gone\ndelete chain {t} gone\ndelete set {t} aff\n"
    kept = f"flush chain {t} svc\nflush chain {t} gone\n"
    assert _split_deletions(script) == (kept, (["gone"], ["aff"]), [])
    with_element = f"delete element {t} service-ips-v4 {{ 10.96.0.1 . tcp . 80 }}\n{script}"
    assert _split_deletions(with_element) == (with_element, ([], []), [])
    assert _split_deletions(with_element, elements=True) == (
        kept, (["gone"], ["aff"]), [("service-ips-v4", "10.96.0.1 . tcp . 80")])
    assert _split_deletions(f"delete chain {t} gone\n") == ("", (["gone"], []), [])


def test_element_keys_are_encoded_as_nft_pads_concatenations():
    from lbcore_plugins.nftlib import element_key

    assert element_key("10.96.0.1 . tcp . 80") == bytes([10, 96, 0, 1, 6, 0, 0, 0, 0, 80, 0, 0])
    assert element_key("udp . 30001") == bytes([17, 0, 0, 0, 0x75, 0x31, 0, 0])
    assert element_key("fd00::1 . sctp . 443") == bytes([0xfd] + [0] * 14 + [1]) + bytes(
        [132, 0, 0, 0, 1, 187, 0, 0])


def reached_endpoints(text: str, verdict_key: str) -> tuple[set[str], bool]:
    """The ``ip:port`` a packet whose verdict-map key is ``verdict_key`` can be DNATed to, in
    every form (chains, inline rules, anonymous maps, the shared maps of ``maps``), and whether
    every way there marks it for masquerading."""
    chains = dict(re.findall(r"\tchain (\S+) \{\n(.*?)\n\t\}", text, re.S))
    (start,) = re.findall(re.escape(verdict_key) + r" : goto ([^\s,}]+)", text)
    reached: set[str] = set()
    marked = True
    todo = [(start, False)]
    while todo:
        name, mark = todo.pop()
        body = chains[name]
        mark = mark or body.lstrip().startswith("jump mark-for-masquerade")
        found = re.findall(r"dnat ip to (\d+\.\d+\.\d+\.\d+:\d+)", body)
        found += [f"{ip}:{p}" for ip, p in re.findall(r": (\d+\.\d+\.\d+\.\d+) \. (\d+)", body)]
        if "map @nodeport-endpoints-v4" in body or "map @service-endpoints-v4" in body:  # maps: the slots
            found += [f"{ip}:{p}" for ip, p in re.findall(re.escape(verdict_key) + r" \. \d+ : (\S+) \. (\d+)", text)]
        if found:
            reached.update(found)
            marked = marked and mark
        todo.extend((target, mark) for target in re.findall(r"(?:goto|jump) ([^\s,}]+)", body)
                    if target != "mark-for-masquerade")
    return reached, marked


@pytest.mark.parametrize("selection", ["cascade", "vmap", "inline", "map", "maps"])
def test_internal_policy_local_leaves_node_port_traffic_of_a_cluster_policy_every_endpoint(selection):
    sp = dataclasses.replace(
        port("np", "10.96.0.3", [], type="NodePort", node_port=30080, internal_traffic_policy="Local"),
        endpoints=(EndpointInfo(ip="10.244.1.2", port=8080, node_name="node-a"),
                   EndpointInfo(ip="10.244.2.2", port=8080, node_name="node-b")),
    )
    text = fe(endpoint_selection=selection).render(snap(sp, node_name="node-a"))
    assert reached_endpoints(text, "tcp . 30080") == ({"10.244.1.2:8080", "10.244.2.2:8080"}, True)
    assert reached_endpoints(text, "10.96.0.3 . tcp . 80")[0] == {"10.244.1.2:8080"}
