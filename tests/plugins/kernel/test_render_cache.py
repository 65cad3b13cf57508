"""Rendering reuses what an unchanged service port rendered to, and never a stale result; the
nftables inline endpoint forms DNAT in the service chain; the iptables backend option."""

from __future__ import annotations

import dataclasses
import re

import pytest
from kernel_snapshots import POD_CIDR, many, port, snap
from lbcore_plugins.iptables import IptablesFrontend
from lbcore_plugins.nftables import NftablesFrontend, service_chain

from lbcore.errors import ConfigError
from lbcore.model.snapshot import EndpointInfo, Snapshot
from lbcore.runtime.interfaces import RuntimeContext

FRONTENDS = {"iptables": IptablesFrontend, "nftables": NftablesFrontend}
PODS = ["10.244.1.2", "10.244.2.2", "10.244.3.2"]


def changed_copy(s: Snapshot, index: int, **changes: object) -> Snapshot:
    ports = dict(s.service_ports)
    key = sorted(ports)[index]
    ports[key] = dataclasses.replace(ports[key], **changes)  # type: ignore[arg-type]
    return Snapshot(version=s.version + 1, node_name=s.node_name, service_ports=ports)


@pytest.mark.parametrize("kind", sorted(FRONTENDS))
def test_second_render_of_the_same_snapshot_hits_the_cache_and_is_identical(kind):
    fe = FRONTENDS[kind]({"cluster_cidr": POD_CIDR}, RuntimeContext())
    s = many(40)
    first = fe.render(s)
    misses = fe.cache.misses
    assert fe.render(s) == first
    assert fe.cache.misses == misses  # nothing recomputed
    assert fe.cache.hits >= 40


@pytest.mark.parametrize("kind", sorted(FRONTENDS))
def test_a_changed_port_is_rendered_again_and_equals_a_cold_render(kind):
    fe = FRONTENDS[kind]({"cluster_cidr": POD_CIDR}, RuntimeContext())
    s = many(40)
    fe.render(s)
    fewer = changed_copy(s, 7, endpoints=s.service_ports[sorted(s.service_ports)[7]].endpoints[1:])
    node_moved = Snapshot(version=9, node_name="node-b", service_ports=fewer.service_ports)
    for after in (fewer, node_moved, s):
        cold = FRONTENDS[kind]({"cluster_cidr": POD_CIDR}, RuntimeContext()).render(after)
        assert fe.render(after) == cold


@pytest.mark.parametrize("kind", sorted(FRONTENDS))
def test_an_equal_but_new_port_value_is_a_hit_and_the_cache_holds_only_the_snapshot(kind):
    fe = FRONTENDS[kind]({"cluster_cidr": POD_CIDR}, RuntimeContext())
    s = many(20)
    fe.render(s)
    copies = {k: dataclasses.replace(sp) for k, sp in s.service_ports.items()}
    misses = fe.cache.misses
    fe.render(Snapshot(version=2, node_name=s.node_name, service_ports=copies))
    assert fe.cache.misses == misses
    small = many(5)
    fe.render(small)
    assert set(fe.cache.entries[4][1]) == set(small.service_ports)


def nft_body(text: str, name: str) -> list[str]:
    m = re.search(r"\tchain " + re.escape(name) + r" \{\n(.*?)\n\t\}", text, re.S)
    assert m, name
    return [line.strip() for line in m.group(1).splitlines()]


def test_inline_selection_dnats_in_the_service_chain_without_endpoint_chains():
    sp = port("web", "10.96.0.1", PODS)
    text = NftablesFrontend({"cluster_cidr": POD_CIDR, "endpoint_selection": "inline"}, RuntimeContext()).render(snap(sp))
    assert "chain endpoint-" not in text
    assert nft_body(text, service_chain(sp))[1:] == [
        *(f"ip saddr {ip} jump mark-for-masquerade" for ip in PODS),
        "numgen random mod 3 0 meta l4proto tcp dnat ip to 10.244.1.2:8080",
        "numgen random mod 2 0 meta l4proto tcp dnat ip to 10.244.2.2:8080",
        "meta l4proto tcp dnat ip to 10.244.3.2:8080",
    ]


def test_map_selection_writes_one_weighted_numgen_dnat_map():
    sp = dataclasses.replace(port("web", "10.96.0.1", []), endpoints=(
        EndpointInfo(ip="10.244.1.2", port=8080, weight=2), EndpointInfo(ip="10.244.2.2", port=9090, weight=6)))
    text = NftablesFrontend({"endpoint_selection": "map"}, RuntimeContext()).render(snap(sp))
    assert nft_body(text, service_chain(sp))[-1] == (
        "meta l4proto tcp dnat ip to numgen random mod 4 map { 0 : 10.244.1.2 . 8080, 1-3 : 10.244.2.2 . 9090 }"
    )


def test_inline_selection_keeps_endpoint_chains_for_client_ip_affinity():
    sp = port("web", "10.96.0.1", PODS, session_affinity="ClientIP")
    text = NftablesFrontend({"endpoint_selection": "inline"}, RuntimeContext()).render(snap(sp))
    assert text.count("\tchain endpoint-") == 3 and "update @affinity-" in text


def test_backend_option_picks_the_commands_and_rejects_other_values():
    ctx = RuntimeContext()
    assert IptablesFrontend({}, ctx).tool(4) == "iptables"
    assert IptablesFrontend({"backend": "legacy"}, ctx).tool(6) == "ip6tables-legacy"
    assert IptablesFrontend({"backend": "nft"}, ctx).tool(4) == "iptables-nft"
    with pytest.raises(ConfigError, match="backend: invalid value 'xtables'"):
        IptablesFrontend({"backend": "xtables"}, ctx)
    with pytest.raises(ConfigError, match="endpoint_selection: invalid value 'random'"):
        NftablesFrontend({"endpoint_selection": "random"}, ctx)
