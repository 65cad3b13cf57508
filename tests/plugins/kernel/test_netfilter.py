"""Shared parts of the kernel frontends: names, options, endpoint choice, conntrack clean-up."""

from __future__ import annotations

import dataclasses
import gc

import pytest
from hypothesis import given
from hypothesis import strategies as st
from kernel_snapshots import port, snap
from lbcore_plugins.netfilter import (
    NetfilterOptions,
    StaleFlow,
    chain_hash,
    chain_name,
    changed_port_keys,
    paused_gc,
    plan_key,
    plan_ports,
    split_probabilities,
    stale_udp_flows,
)

from lbcore.errors import ConfigError
from lbcore.model.service_table import ServiceTable
from lbcore.model.snapshot import EndpointInfo, Snapshot


def test_chain_names_are_stable_prefixed_and_fit_iptables_limit():
    a = chain_name("LBCORE-SEP-", "ns/web:http/tcp/10.0.0.1:80")
    assert a == chain_name("LBCORE-SEP-", "ns/web:http/tcp/10.0.0.1:80")
    assert a != chain_name("LBCORE-SEP-", "ns/web:http/tcp/10.0.0.2:80")
    assert a.startswith("LBCORE-SEP-") and len(a) <= 28
    assert a[len("LBCORE-SEP-"):].isalnum()



@pytest.mark.parametrize(
    ("key", "digest"),
    [
        # published names: these must never change (an upgrade would orphan every chain)
        ("ns/web:http/tcp/10.0.0.1:80", "0E3095C903AA4661"),
        ("ns/web:http/tcp", "C312D152856FAADA"),
        ("\u00e9/\u00fc:p/udp/[fd00::1]:53", "2CDEEFA98356FD48"),
    ],
)
def test_chain_hash_is_xxh3_of_the_utf8_key_in_upper_hex(key, digest):
    import xxhash

    assert chain_hash(key) == digest
    # the same digest from an independent XXH3 implementation
    assert chain_hash(key) == xxhash.xxh3_64_hexdigest(key.encode()).upper()
    assert chain_name("LBCORE-SVC-", key) == "LBCORE-SVC-" + digest


@pytest.mark.parametrize("enabled", [True, False])
def test_paused_gc_restores_the_collector_state_even_on_error(enabled):
    was = gc.isenabled()
    try:
        gc.enable() if enabled else gc.disable()
        with pytest.raises(RuntimeError), paused_gc():
            assert not gc.isenabled()
            raise RuntimeError("boom")
        assert gc.isenabled() is enabled
    finally:
        gc.enable() if was else gc.disable()

@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        ({"keep_on_exit": "yes"}, "keep_on_exit: invalid value 'yes': expected true or false"),
        ({"cluster_cidr": "10.244.0.0/33"}, "cluster_cidr: invalid value '10.244.0.0/33'"),
        ({"cluster_cidr": ["10.0.0.0/8", "10.244.0.0/16"]}, "one CIDR per family"),
        ({"node_addresses": ["node-a"]}, "node_addresses: invalid value 'node-a'"),
        ({"netns": "a/b"}, "netns: invalid value 'a/b'"),
        ({"masquerade": True}, "masquerade: unknown option; known: backend, cluster_cidr"),
        ({"timeout": 0}, "timeout: invalid value 0"),
        ({"endpoint_selection": "random"}, "endpoint_selection: invalid value 'random': "
                                           "must be one of cascade, vmap"),
    ],
)
def test_bad_options_name_the_key_and_value(options, fragment):
    with pytest.raises(ConfigError, match=fragment.replace("/", "/").replace("[", r"\[")):
        NetfilterOptions.parse(options)


def test_options_parse_dual_stack_cidrs_and_addresses():
    opts = NetfilterOptions.parse(
        {"cluster_cidr": ["10.244.0.0/16", "fd00:10:244::/56"], "node_addresses": "192.168.1.5",
         "keep_on_exit": True, "netns": "node1"},
    )
    assert opts.cluster_cidrs == {4: "10.244.0.0/16", 6: "fd00:10:244::/56"}
    assert opts.node_addresses == ("192.168.1.5/32",)
    assert opts.keep_on_exit and opts.netns == "node1"


def ep(ip: str, **kw: object) -> EndpointInfo:
    return EndpointInfo(ip=ip, port=80, **kw)  # type: ignore[arg-type]


def test_internal_traffic_policy_local_keeps_only_this_nodes_endpoints():
    sp = dataclasses.replace(
        port("web", "10.96.0.1", []),
        endpoints=(ep("10.0.0.1", node_name="node-a"), ep("10.0.0.2", node_name="node-b")),
        internal_traffic_policy="Local",
    )
    (plan,) = plan_ports(snap(sp, node_name="node-a"), 4)
    assert [e.ip for e in plan.internal_endpoints] == ["10.0.0.1"]


@given(st.lists(st.integers(min_value=1, max_value=1000), min_size=1, max_size=40))
def test_cascade_probabilities_give_each_endpoint_its_weight_share(weights):
    probabilities = split_probabilities(weights)
    assert probabilities[-1] == 1.0
    reach = 1.0
    total = sum(weights)
    for w, p in zip(weights, probabilities, strict=True):
        assert reach * p == pytest.approx(w / total, rel=1e-9, abs=1e-12)
        reach *= 1.0 - p


def test_removed_udp_endpoint_yields_conntrack_deletions_for_cluster_ip_and_node_port():
    sp = port("dns", "10.96.0.10", ["10.244.1.2", "10.244.2.2"], protocol="UDP", port=53,
              type="NodePort", node_port=30053)
    before = {plan_key(p): p for p in plan_ports(snap(sp), 4)}
    after_sp = dataclasses.replace(sp, endpoints=sp.endpoints[:1])
    after = {plan_key(p): p for p in plan_ports(snap(after_sp), 4)}
    flows = stale_udp_flows(before, after)
    assert flows == [StaleFlow(53, "10.96.0.10", "10.244.2.2"), StaleFlow(30053, None, "10.244.2.2")]
    assert flows[0].argv() == [
        "conntrack", "-D", "-p", "udp", "--orig-port-dst", "53", "-f", "ipv4",
        "--orig-dst", "10.96.0.10", "--reply-src", "10.244.2.2",
    ]


def test_udp_service_getting_its_first_endpoint_clears_flows_to_its_cluster_ip():
    empty = port("dns", "10.96.0.10", [], protocol="UDP", port=53)
    before = {plan_key(p): p for p in plan_ports(snap(empty), 4)}
    after = {plan_key(p): p for p in plan_ports(snap(port("dns", "10.96.0.10", ["10.244.1.2"], protocol="UDP", port=53)), 4)}
    assert stale_udp_flows(before, after) == [StaleFlow(53, "10.96.0.10", None)]


def test_tcp_endpoint_removal_needs_no_conntrack_deletion():
    sp = port("web", "10.96.0.10", ["10.244.1.2", "10.244.2.2"])
    before = {plan_key(p): p for p in plan_ports(snap(sp), 4)}
    after = {plan_key(p): p for p in plan_ports(snap(dataclasses.replace(sp, endpoints=sp.endpoints[:1])), 4)}
    assert stale_udp_flows(before, after) == []


def test_changed_port_keys_by_the_snapshots_index_match_a_scan():
    """A table's snapshot carries an index by service; the keys found through it are the keys a
    scan of every port finds (a partial sync of 10,000 services looks at the changed ones)."""
    table = ServiceTable("127.10.0.0/16", allocate=False)
    for i, ports in enumerate(([80], [80, 443], [53])):
        table.apply({"kind": "Service", "metadata": {"name": f"s{i}", "namespace": "default"},
                     "spec": {"clusterIP": f"127.10.0.{i + 1}", "selector": {"app": f"s{i}"},
                              "ports": [{"name": f"p{p}", "port": p} for p in ports]}})
    indexed = table.snapshot()
    by_hand = Snapshot(service_ports=indexed.service_ports)  # no index: the scan
    assert indexed.by_service is not None and by_hand.by_service is None
    for changed in ({"default/s1"}, {"default/s0", "default/s2", "default/gone"}, set()):
        keys = changed_port_keys(indexed, frozenset(changed))
        assert sorted(keys) == sorted(changed_port_keys(by_hand, frozenset(changed)))
    assert sorted(changed_port_keys(indexed, frozenset({"default/s1"}))) == [
        "default/s1:p443", "default/s1:p80"]
