"""nftables ``endpoint_selection: maps``: per-port state in map and set elements, a few shared
chains; a partial sync is element changes only and ends where a full sync ends (root tests
make their own network namespaces)."""

from __future__ import annotations

import dataclasses
import random
import re

import pytest
from kernel_snapshots import POD_CIDR, many, port, snap
from lbcore_plugins.nftables import PICK_SLOTS, NftablesFrontend
from test_apply_netns import listing, mutate, namespaces  # noqa: F401  (namespaces: a fixture)

from lbcore.model.snapshot import EndpointInfo
from lbcore.runtime.interfaces import RuntimeContext


def fe(**options: object) -> NftablesFrontend:
    return NftablesFrontend({"endpoint_selection": "maps", "cluster_cidr": POD_CIDR, **options}, RuntimeContext())


def elements(text: str, name: str) -> list[str]:
    """The elements of map or set ``name`` in a rendered table (declared in the table's block,
    its elements added after it)."""
    assert re.search(rf"\t(?:map|set) {re.escape(name)} {{\n", text), name
    found = re.search(rf"^add element inet lbcore {re.escape(name)} \{{ (.*?) \}}$", text, re.S | re.M)
    return [item.strip() for item in found.group(1).split(",")] if found else []


def chain(text: str, name: str) -> list[str]:
    block = re.search(rf"\tchain {re.escape(name)} {{\n(.*?)\n\t}}", text, re.S)
    assert block, name
    return [line.strip() for line in block.group(1).splitlines()]


def test_a_service_port_is_elements_of_shared_maps_and_no_chain_of_its_own():
    text = fe().render(snap(port("web", "10.96.0.10", ["10.244.1.2", "10.244.2.2", "10.244.3.2"])))
    assert elements(text, "service-ips-v4") == ["10.96.0.10 . tcp . 80 : goto pick-v4-3"]
    assert elements(text, "service-endpoints-v4") == [
        "10.96.0.10 . tcp . 80 . 0 : 10.244.1.2 . 8080",
        "10.96.0.10 . tcp . 80 . 1 : 10.244.2.2 . 8080",
        "10.96.0.10 . tcp . 80 . 2 : 10.244.3.2 . 8080",
    ]
    assert elements(text, "hairpin-v4") == [f"10.244.{i}.2 . 10.244.{i}.2 . tcp . 8080" for i in (1, 2, 3)]
    assert chain(text, "pick-v4-3") == [
        "ip saddr != 10.244.0.0/16 jump mark-for-masquerade",
        "dnat ip to ip daddr . meta l4proto . th dport . numgen random mod 3 map @service-endpoints-v4",
    ]
    # the shared chains exist for 1 .. PICK_SLOTS slots whatever the services, and nothing else
    names = re.findall(r"\tchain (\S+) \{", text)
    assert [n for n in names if n.startswith(("service-", "endpoint-", "external-"))] == []
    assert f"pick-v6-{PICK_SLOTS}" in names and f"pick-v4-{PICK_SLOTS + 1}" not in names
    assert chain(text, "masquerading")[0] == (
        "ct status dnat ip saddr . ip daddr . meta l4proto . th dport @hairpin-v4 meta mark set meta mark | 0x4000"
    )


def test_no_endpoints_is_a_set_element_that_the_filter_chains_reject():
    text = fe().render(snap(port("empty", "10.96.0.16", []), port("np", "10.96.0.17", [], type="NodePort", node_port=30080)))
    assert elements(text, "no-endpoint-services-v4") == ["10.96.0.16 . tcp . 80", "10.96.0.17 . tcp . 80"]
    assert elements(text, "no-endpoint-nodeports-v4") == ["tcp . 30080"]
    assert elements(text, "service-ips-v4") == []
    assert "ip daddr . meta l4proto . th dport @no-endpoint-services-v4 reject" in chain(text, "reject-services")


def test_weights_become_slots_in_proportion():
    sp = port("w", "10.96.0.30", [])
    sp = dataclasses.replace(sp, endpoints=(EndpointInfo(ip="10.244.1.2", port=80, weight=4),
                                            EndpointInfo(ip="10.244.2.2", port=80, weight=2)))
    text = fe().render(snap(sp))
    assert elements(text, "service-ips-v4") == ["10.96.0.30 . tcp . 80 : goto pick-v4-3"]
    assert [e.rpartition(" : ")[2] for e in elements(text, "service-endpoints-v4")] == [
        "10.244.1.2 . 80", "10.244.1.2 . 80", "10.244.2.2 . 80"]


def test_node_ports_pick_through_their_own_map_masquerading_unless_local():
    cluster = port("a", "10.96.0.40", ["10.244.1.2"], type="NodePort", node_port=30001)
    local = port("b", "10.96.0.41", ["10.244.1.2", "10.244.2.2"], type="NodePort", node_port=30002,
                 external_traffic_policy="Local")
    local = dataclasses.replace(local, endpoints=(dataclasses.replace(local.endpoints[0], node_name="node-a"),
                                                  local.endpoints[1]))
    text = fe().render(snap(cluster, local))
    assert elements(text, "service-nodeports-v4") == ["tcp . 30001 : goto pick-external-v4-1",
                                                      "tcp . 30002 : goto pick-local-v4-1"]
    assert elements(text, "nodeport-endpoints-v4") == ["tcp . 30001 . 0 : 10.244.1.2 . 8080",
                                                       "tcp . 30002 . 0 : 10.244.1.2 . 8080"]
    assert chain(text, "pick-external-v4-1")[0] == "jump mark-for-masquerade"
    assert chain(text, "pick-local-v4-1") == [
        "dnat ip to meta l4proto . th dport . numgen random mod 1 map @nodeport-endpoints-v4"]


def test_ipv6_ports_use_the_v6_maps():
    text = fe().render(snap(port("v6", "fd00:96::10", ["fd00:244::2"], protocol="UDP")))
    assert elements(text, "service-ips-v6") == ["fd00:96::10 . udp . 80 : goto pick-v6-1"]
    assert elements(text, "service-endpoints-v6") == ["fd00:96::10 . udp . 80 . 0 : fd00:244::2 . 8080"]
    assert elements(text, "service-ips-v4") == []


def test_client_ip_affinity_keeps_its_chains_and_sets():
    sp = port("sticky", "10.96.0.50", ["10.244.1.2", "10.244.2.2"], session_affinity="ClientIP", affinity_timeout=60)
    text = fe().render(snap(sp))
    [verdict] = elements(text, "service-ips-v4")
    assert verdict.startswith("10.96.0.50 . tcp . 80 : goto service-")
    assert len(re.findall(r"\tchain endpoint-", text)) == 2
    assert len(re.findall(r"\tset affinity-", text)) == 2
    assert elements(text, "hairpin-v4") == []  # its endpoint chains mark hairpin traffic


def test_removing_an_endpoint_changes_only_elements():
    before = many(20, endpoints=3)
    key = sorted(before.service_ports)[4]
    sp = before.service_ports[key]
    ports = dict(before.service_ports)
    ports[key] = dataclasses.replace(sp, endpoints=sp.endpoints[1:])
    after = dataclasses.replace(before, service_ports=ports, version=2)
    script = fe().render_update(before, after, frozenset({sp.service}))
    lines = script.splitlines()
    assert lines and all(line.startswith(("delete element ", "add element ")) for line in lines), script
    assert f"add element inet lbcore service-ips-v4 {{ {sp.cluster_ips[0]} . tcp . 80 : goto pick-v4-2 }}" in lines
    gone = sp.endpoints[0].ip
    assert f"delete element inet lbcore hairpin-v4 {{ {gone} . {gone} . tcp . 8080 }}" in lines


def test_an_endpoint_two_services_share_stays_in_the_hairpin_set_until_neither_uses_it():
    a, b = port("a", "10.96.0.60", ["10.244.1.2"]), port("b", "10.96.0.61", ["10.244.1.2"])
    frontend = fe()
    state = frontend._render(snap(a, b))[1]
    script, state = frontend._partial(snap(a), state, frozenset({b.service}))
    assert "hairpin" not in script
    script, state = frontend._partial(snap(), state, frozenset({a.service}))
    assert "delete element inet lbcore hairpin-v4 { 10.244.1.2 . 10.244.1.2 . tcp . 8080 }" in script.splitlines()


def test_an_endpoint_two_changed_services_bring_in_is_added_once():
    a, b = port("a", "10.96.0.60", ["10.244.1.2"]), port("b", "10.96.0.61", ["10.244.1.2"])
    frontend = fe()
    script, state = frontend._partial(snap(a, b), frontend._render(snap())[1], frozenset({a.service, b.service}))
    assert script.count("add element inet lbcore hairpin-v4 { 10.244.1.2 . 10.244.1.2 . tcp . 8080 }") == 1
    assert state.shared == {("hairpin-v4", "10.244.1.2 . 10.244.1.2 . tcp . 8080"): 2}


def test_more_slots_than_the_table_has_chains_replace_the_table():
    small = port("big", "10.96.0.70", ["10.244.1.2"])
    wide = dataclasses.replace(small, endpoints=tuple(EndpointInfo(ip=f"10.244.1.{i}", port=80) for i in range(2, PICK_SLOTS + 3)))
    frontend = fe()
    script, state = frontend._partial(snap(wide), frontend._render(snap(small))[1], frozenset({small.service}))
    assert script.startswith("add table inet lbcore\ndelete table inet lbcore\n")
    assert f"\tchain pick-v4-{PICK_SLOTS + 1} {{" in script
    assert state.pick_slots == PICK_SLOTS + 1
    # and the next partial sync is elements again
    script, _ = frontend._partial(snap(small), state, frozenset({small.service}))
    assert "chain" not in script


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "readable"])
def test_the_widest_port_of_either_family_sizes_the_pick_chains(compiled):
    """Slots in three digits, of an IPv6 port and its NodePort, whichever renderer wrote them."""
    narrow = port("narrow", "10.96.0.80", ["10.244.1.2", "10.244.1.3"])
    wide = dataclasses.replace(
        port("wide", "fd00:96::81", [], type="NodePort", node_port=30081),
        endpoints=(EndpointInfo(ip="fd00:244::2", port=80, weight=100), EndpointInfo(ip="fd00:244::3", port=80)),
    )
    frontend = fe()
    if not compiled:
        frontend.renderer._writer = None
    text, state = frontend._render(snap(narrow, wide))
    assert elements(text, "service-ips-v6") == ["fd00:96::81 . tcp . 80 : goto pick-v6-101"]
    assert elements(text, "service-nodeports-v6") == ["tcp . 30081 : goto pick-external-v6-101"]
    assert len(elements(text, "nodeport-endpoints-v6")) == 101
    assert state.pick_slots == 101
    names = re.findall(r"\tchain (\S+) \{", text)
    assert "pick-local-v4-101" in names and "pick-v6-102" not in names


# ---------------------------------------------------------------------------------------------
# In the kernel: root
# ---------------------------------------------------------------------------------------------


def test_partial_syncs_end_where_a_full_sync_of_the_same_state_does(namespaces):  # noqa: F811
    a, b = namespaces
    rng = random.Random(11)
    state = many(60, endpoints=3)
    ports = dict(state.service_ports)
    # an endpoint two services share, and one that grows past the pick chains
    first, second = sorted(ports)[:2]
    ports[second] = dataclasses.replace(ports[second], endpoints=ports[first].endpoints)
    state = dataclasses.replace(state, service_ports=ports)
    incremental = fe(netns=a, node_addresses=["192.168.77.1", "fd00:77::1"])
    incremental.start()
    incremental.sync(state, frozenset())
    for round_ in range(5):
        if round_ == 3:
            ports = dict(state.service_ports)
            sp = ports[first]
            ports[first] = dataclasses.replace(sp, endpoints=tuple(
                EndpointInfo(ip=f"10.250.1.{i}", port=80) for i in range(PICK_SLOTS + 2)))
            state, changed = dataclasses.replace(state, service_ports=ports, version=state.version + 1), frozenset({sp.service})
        else:
            state, changed = mutate(rng, state)
        incremental.sync(state, changed)
        fresh = fe(netns=b, node_addresses=["192.168.77.1", "fd00:77::1"])
        fresh.sync(state, frozenset())
        held = listing("nftables", a)
        assert any("service-endpoints-v4" in line for line in held), held[:5]
        assert held == listing("nftables", b), f"round {round_}"
    incremental.stop()
    fresh.stop()


def test_dual_stack_and_every_option_load_into_the_kernel(namespaces):  # noqa: F811
    a, _ = namespaces
    v6 = port("v6", "fd00:96::10", ["fd00:244::2", "fd00:244::3"], protocol="UDP", type="NodePort", node_port=30090)
    sticky = port("sticky", "10.96.0.50", ["10.244.1.2"], session_affinity="ClientIP", affinity_timeout=60)
    frontend = fe(netns=a, masquerade_all=True, cluster_cidr=[POD_CIDR, "fd00:244::/64"],
                  node_addresses=["192.168.77.1", "fd00:77::1"])
    frontend.start()
    frontend.sync(snap(v6, sticky, port("sctp", "10.96.0.51", ["10.244.1.2"], protocol="SCTP")), frozenset())
    held = listing("nftables", a)
    assert "fd00:96::10 . udp . 80 . 1 : fd00:244::3 . 8080" in held
    assert "jump mark-for-masquerade" in held
    frontend.stop()


@pytest.mark.parametrize("protocol", ["TCP", "UDP"])
def test_an_endpoint_change_commits_without_touching_a_chain(namespaces, protocol):  # noqa: F811
    """The script of an endpoint removal names no chain, so the table's chains stay as loaded."""
    a, _ = namespaces
    before = many(30, endpoints=3)
    key = sorted(before.service_ports)[7]
    sp = dataclasses.replace(before.service_ports[key], protocol=protocol)
    ports = {**before.service_ports, key: sp}
    before = dataclasses.replace(before, service_ports=ports)
    after = dataclasses.replace(before, service_ports={**ports, key: dataclasses.replace(sp, endpoints=sp.endpoints[:2])},
                                version=2)
    frontend = fe(netns=a)
    frontend.start()
    frontend.sync(before, frozenset())
    chains = [line for line in listing("nftables", a) if line.startswith("chain ")]
    frontend.sync(after, frozenset({sp.service}))
    assert [line for line in listing("nftables", a) if line.startswith("chain ")] == chains
    # its service-ips element out and in (3 slots -> 2), the third slot out, one hairpin element out
    assert frontend.last_script_lines == 4
    frontend.stop()
