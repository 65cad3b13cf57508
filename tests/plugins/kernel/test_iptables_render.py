"""The iptables rule set, proven by walking packets through it with the rule tracer."""

from __future__ import annotations

import dataclasses
import random

import pytest
from kernel_snapshots import CLIENT, NODE_IP, OUTSIDE, POD_CIDR, many, port, snap
from lbcore_plugins.iptables import IptablesFrontend
from lbcore_plugins.netfilter import plan_ports
from ruletrace import Packet, RuleSet, trace

from lbcore.model.snapshot import EndpointInfo, Snapshot
from lbcore.runtime.interfaces import RuntimeContext

PODS = ["10.244.1.2", "10.244.2.2", "10.244.3.2"]


def render(s: Snapshot, **options: object) -> str:
    opts = {"cluster_cidr": POD_CIDR, **options}
    return IptablesFrontend(opts, RuntimeContext()).render(s)


def dnat_shares(text: str, packet: Packet, **kw: object) -> dict[str | None, float]:
    return {o.dnat: round(o.probability, 9) for o in trace(text, packet, **kw)}  # type: ignore[arg-type]


def test_cluster_ip_gives_each_of_three_endpoints_one_third():
    text = render(snap(port("web", "10.96.0.1", PODS)))
    shares = dnat_shares(text, Packet(CLIENT, "10.96.0.1", 80))
    assert shares == {f"{p}:8080": pytest.approx(1 / 3) for p in PODS}


@pytest.mark.parametrize("n", [1, 2, 5, 17])
def test_n_endpoints_share_traffic_equally(n):
    pods = [f"10.244.{i}.2" for i in range(1, n + 1)]
    shares = dnat_shares(render(snap(port("web", "10.96.0.1", pods))), Packet(CLIENT, "10.96.0.1", 80))
    assert len(shares) == n and all(v == pytest.approx(1 / n) for v in shares.values())


def test_endpoint_weights_are_honoured():
    sp = dataclasses.replace(
        port("web", "10.96.0.1", []),
        endpoints=tuple(EndpointInfo(ip=p, port=8080, weight=w) for p, w in zip(PODS, (1, 2, 5), strict=True)),
    )
    shares = dnat_shares(render(snap(sp)), Packet(CLIENT, "10.96.0.1", 80))
    assert shares == {"10.244.1.2:8080": pytest.approx(1 / 8), "10.244.2.2:8080": pytest.approx(2 / 8),
                      "10.244.3.2:8080": pytest.approx(5 / 8)}


def test_wrong_port_or_protocol_is_not_touched():
    text = render(snap(port("web", "10.96.0.1", PODS)))
    for packet in (Packet(CLIENT, "10.96.0.1", 81), Packet(CLIENT, "10.96.0.1", 80, proto="udp")):
        (outcome,) = trace(text, packet)
        assert outcome.dnat is None and outcome.verdict == "ACCEPT"


def test_client_ip_affinity_sends_a_known_client_to_its_endpoint():
    text = render(snap(port("web", "10.96.0.1", PODS, session_affinity="ClientIP", affinity_timeout=30)))
    first = trace(text, Packet(CLIENT, "10.96.0.1", 80))
    assert len(first) == 3
    chosen = first[1]
    assert "--seconds 30" in text
    (again,) = trace(text, Packet(CLIENT, "10.96.0.1", 80, sport=41000), recent=chosen.recent)
    assert again.dnat == chosen.dnat and again.probability == pytest.approx(1.0)
    # another client is not bound by it
    assert len(trace(text, Packet("10.244.100.3", "10.96.0.1", 80), recent=chosen.recent)) == 3


def test_service_without_endpoints_is_rejected_in_filter():
    text = render(snap(port("empty", "10.96.0.2", [])))
    (outcome,) = trace(text, Packet(CLIENT, "10.96.0.2", 80))
    assert outcome.verdict == "REJECT"
    (local,) = trace(text, Packet(NODE_IP, "10.96.0.2", 80), origin="OUTPUT", local_addresses=[NODE_IP])
    assert local.verdict == "REJECT"


def test_terminating_endpoints_serve_only_when_none_is_ready():
    sp = dataclasses.replace(
        port("web", "10.96.0.1", []),
        endpoints=(EndpointInfo(ip="10.244.1.2", port=8080, ready=False, serving=True, terminating=True),),
    )
    assert dnat_shares(render(snap(sp)), Packet(CLIENT, "10.96.0.1", 80)) == {"10.244.1.2:8080": 1.0}
    sp2 = dataclasses.replace(sp, endpoints=(*sp.endpoints, EndpointInfo(ip="10.244.2.2", port=8080)))
    assert dnat_shares(render(snap(sp2)), Packet(CLIENT, "10.96.0.1", 80)) == {"10.244.2.2:8080": 1.0}


def test_cluster_ip_is_not_served_to_traffic_from_outside_the_pod_network():
    text = render(snap(port("web", "10.96.0.1", PODS)))
    (outcome,) = trace(text, Packet(OUTSIDE, "10.96.0.1", 80), local_addresses=[NODE_IP])
    assert outcome.dnat is None


def test_without_cluster_cidr_cluster_ip_is_served_to_every_source():
    text = IptablesFrontend({}, RuntimeContext()).render(snap(port("web", "10.96.0.1", PODS)))
    assert len(trace(text, Packet(OUTSIDE, "10.96.0.1", 80))) == 3


def test_node_port_from_outside_is_dnatted_and_masqueraded():
    text = render(snap(port("np", "10.96.0.3", PODS, type="NodePort", node_port=30080)))
    outcomes = trace(text, Packet(OUTSIDE, NODE_IP, 30080), local_addresses=[NODE_IP])
    assert {o.dnat for o in outcomes} == {f"{p}:8080" for p in PODS}
    assert all(o.masquerade for o in outcomes)
    # a port that is no NodePort, or a non-local destination, is left alone
    (other,) = trace(text, Packet(OUTSIDE, NODE_IP, 30081), local_addresses=[NODE_IP])
    assert other.dnat is None
    (remote,) = trace(text, Packet(OUTSIDE, "192.168.77.9", 30080), local_addresses=[NODE_IP])
    assert remote.dnat is None


def test_node_addresses_option_limits_node_ports_to_those_addresses():
    text = render(snap(port("np", "10.96.0.3", PODS, type="NodePort", node_port=30080)),
                  node_addresses=["192.168.77.1"])
    local = [NODE_IP, "10.244.100.1"]
    assert len(trace(text, Packet(OUTSIDE, NODE_IP, 30080), local_addresses=local)) == 3
    (outcome,) = trace(text, Packet(CLIENT, "10.244.100.1", 30080), local_addresses=local)
    assert outcome.dnat is None


def test_external_traffic_policy_local_uses_only_local_endpoints_without_snat():
    sp = dataclasses.replace(
        port("np", "10.96.0.3", [], type="NodePort", node_port=30080, external_traffic_policy="Local"),
        endpoints=(EndpointInfo(ip="10.244.1.2", port=8080, node_name="node-a"),
                   EndpointInfo(ip="10.244.2.2", port=8080, node_name="node-b")),
    )
    text = render(snap(sp, node_name="node-a"))
    (outcome,) = trace(text, Packet(OUTSIDE, NODE_IP, 30080), local_addresses=[NODE_IP])
    assert outcome.dnat == "10.244.1.2:8080" and not outcome.masquerade
    # ClusterIP traffic still uses every endpoint
    assert len(trace(text, Packet(CLIENT, "10.96.0.3", 80))) == 2


def test_internal_policy_local_leaves_node_port_traffic_of_a_cluster_policy_every_endpoint():
    """internalTrafficPolicy Local narrows ClusterIP traffic only: NodePort traffic under
    externalTrafficPolicy Cluster reaches every endpoint, masqueraded (kube-proxy's SVC chain
    beside its SVL chain)."""
    sp = dataclasses.replace(
        port("np", "10.96.0.3", [], type="NodePort", node_port=30080, internal_traffic_policy="Local"),
        endpoints=(EndpointInfo(ip="10.244.1.2", port=8080, node_name="node-a"),
                   EndpointInfo(ip="10.244.2.2", port=8080, node_name="node-b")),
    )
    text = render(snap(sp, node_name="node-a"))
    external = trace(text, Packet(OUTSIDE, NODE_IP, 30080), local_addresses=[NODE_IP])
    assert {o.dnat: round(o.probability, 9) for o in external} == {"10.244.1.2:8080": 0.5, "10.244.2.2:8080": 0.5}
    assert all(o.masquerade for o in external)
    assert dnat_shares(text, Packet(CLIENT, "10.96.0.3", 80)) == {"10.244.1.2:8080": 1.0}


def test_node_port_without_endpoints_is_rejected():
    text = render(snap(port("np", "10.96.0.3", [], type="NodePort", node_port=30080)))
    (outcome,) = trace(text, Packet(OUTSIDE, NODE_IP, 30080), local_addresses=[NODE_IP])
    assert outcome.verdict == "REJECT"


def test_hairpin_and_node_local_clients_are_masqueraded_pod_clients_are_not():
    text = render(snap(port("web", "10.96.0.1", PODS[:1])))
    (hairpin,) = trace(text, Packet(PODS[0], "10.96.0.1", 80))
    assert hairpin.dnat == f"{PODS[0]}:8080" and hairpin.masquerade
    (local,) = trace(text, Packet(NODE_IP, "10.96.0.1", 80), origin="OUTPUT", local_addresses=[NODE_IP])
    assert local.masquerade
    (pod,) = trace(text, Packet(CLIENT, "10.96.0.1", 80))
    assert not pod.masquerade


def test_masquerade_all_masquerades_pod_clients_too():
    text = render(snap(port("web", "10.96.0.1", PODS[:1])), masquerade_all=True)
    (pod,) = trace(text, Packet(CLIENT, "10.96.0.1", 80))
    assert pod.masquerade


def test_ipv6_services_render_for_ip6tables():
    sp = port("web6", "fd00:96::1", ["fd00:244::2", "10.244.1.2"])
    text = render(snap(sp), cluster_cidr=["10.244.0.0/16", "fd00:244::/64"])
    assert "# IPv6 (ip6tables-restore)" in text
    v6 = text.split("# IPv6 (ip6tables-restore)")[1]
    assert "--to-destination [fd00:244::2]:8080" in v6 and "10.244.1.2" not in v6


def test_only_own_chains_appear_and_builtin_chains_are_never_declared():
    text = render(many(20))
    for line in text.splitlines():
        if line.startswith((":", "-A", "-X")):
            name = line.split()[1] if not line.startswith(":") else line[1:].split()[0]
            assert name.startswith("LBCORE-"), line


def test_unchanged_service_keeps_its_chain_names():
    a = port("a", "10.96.0.1", PODS)
    b = port("b", "10.96.0.2", PODS[:1])
    before = RuleSet(render(snap(a, b))).dump()["nat"]
    after = RuleSet(render(snap(a, dataclasses.replace(b, endpoints=())))).dump()["nat"]
    kept = {c for c in before if "SVC" in c or "SEP" in c} & set(after)
    assert len(kept) == 4  # a's service chain and its three endpoint chains
    assert all(before[c] == after[c] for c in kept)


def _random_change(rng: random.Random, s: Snapshot) -> tuple[Snapshot, frozenset[str]]:
    ports = dict(s.service_ports)
    changed = set()
    for key in rng.sample(sorted(ports), 3):
        sp = ports[key]
        action = rng.choice(["drop-endpoint", "no-endpoints", "delete", "affinity", "add-endpoint"])
        if action == "delete":
            del ports[key]
        elif action == "no-endpoints":
            ports[key] = dataclasses.replace(sp, endpoints=())
        elif action == "drop-endpoint" and sp.endpoints:
            ports[key] = dataclasses.replace(sp, endpoints=sp.endpoints[1:])
        elif action == "affinity":
            ports[key] = dataclasses.replace(sp, session_affinity="ClientIP")
        else:
            ports[key] = dataclasses.replace(sp, endpoints=(*sp.endpoints, EndpointInfo(ip="10.250.0.9", port=9)))
        changed.add(sp.service)
    new = Snapshot(version=s.version + 1, service_ports=ports, node_name=s.node_name)
    return new, frozenset(changed)


def dispatch_normalized(dump: dict[str, dict[str, list[str]]]) -> dict[str, dict[str, list[str]]]:
    """``dump`` with the per-port rules of each dispatch chain sorted (they match disjoint
    addresses and ports, so their order changes no packet's way), after checking that they sit
    together between the chain's fixed head and tail (the jumps to LBCORE-NODEPORTS, RETURN)."""
    out = {table: dict(chains) for table, chains in dump.items()}
    for table, chains in out.items():
        for name in ("LBCORE-SERVICES", "LBCORE-NODEPORTS"):
            if name not in chains:
                continue
            rules = chains[name]
            fixed = [i for i, r in enumerate(rules) if r.endswith(("LBCORE-NODEPORTS", "-j RETURN"))]
            per_port = [i for i in range(len(rules)) if i not in fixed]
            if per_port:
                assert per_port == list(range(per_port[0], per_port[-1] + 1)), (table, name, rules)
                rules = [*rules[: per_port[0]], *sorted(rules[i] for i in per_port), *rules[per_port[-1] + 1 :]]
            chains[name] = rules
    return out


@pytest.mark.parametrize("seed", range(5))
def test_partial_sync_applied_over_full_render_equals_full_render_of_new_state(seed):
    rng = random.Random(seed)
    fe = IptablesFrontend({"cluster_cidr": POD_CIDR}, RuntimeContext())
    state = many(25, endpoints=3)
    applied = RuleSet(fe.render(state))
    for _ in range(4):
        new, changed = _random_change(rng, state)
        update = fe.render_update(state, new, changed)
        # a partial sync names only chains of changed services and the dispatch chains
        for line in update.splitlines():
            if line.startswith(":LBCORE-S"):
                assert any(f'"{svc.split("/")[0]}/{svc.split("/")[1]}:' in update for svc in changed)
        applied.apply(update)
        assert dispatch_normalized(applied.dump()) == dispatch_normalized(RuleSet(fe.render(new)).dump())
        state = new


def test_partial_sync_of_an_endpoint_change_rewrites_only_that_service():
    fe = IptablesFrontend({"cluster_cidr": POD_CIDR}, RuntimeContext())
    before = many(200)
    key = sorted(before.service_ports)[7]
    sp = before.service_ports[key]
    ports = dict(before.service_ports)
    ports[key] = dataclasses.replace(sp, endpoints=sp.endpoints[1:])
    update = fe.render_update(before, Snapshot(version=2, service_ports=ports, node_name=before.node_name),
                              frozenset({sp.service}))
    declared = [line for line in update.splitlines() if line.startswith(":")]
    # the service chain rewritten, the removed endpoint's chain declared to delete it; the four
    # endpoint chains that stay and every other service are not mentioned
    assert len(declared) == 2 and ":LBCORE-SERVICES - [0:0]" not in declared
    assert declared[0].startswith(":LBCORE-SVC-")
    assert sum(line.startswith("-X ") for line in update.splitlines()) == 1


def test_no_change_means_no_restore_at_all():
    fe = IptablesFrontend({"cluster_cidr": POD_CIDR}, RuntimeContext())
    s = many(10)
    assert fe.render_update(s, s, frozenset({"ns0/svc0"})) == ""


def test_large_full_sync_split_in_transactions_adds_up_to_the_single_one():
    fe = IptablesFrontend({"cluster_cidr": POD_CIDR}, RuntimeContext())
    plans = plan_ports(many(30), 4)
    (single,), _ = fe._render_family(plans, 4, stale_nat={"LBCORE-SEP-OLD"})
    split, _ = fe._render_family(plans, 4, stale_nat={"LBCORE-SEP-OLD"}, chunk=25)
    assert len(split) > 3
    # no service is cut in two: each SVC chain sits in the transaction of its endpoint chains
    for text in split[:-1]:
        assert "LBCORE-SERVICES" not in text and "-X " not in text
    old = "*nat\n:LBCORE-SEP-OLD - [0:0]\nCOMMIT\n"
    assert RuleSet(old).apply("".join(split)).dump() == RuleSet(old).apply(single).dump()


def test_chunked_removal_deletes_every_chain_and_never_one_still_jumped_to():
    from lbcore_plugins.iptables import _deletion_texts

    fe = IptablesFrontend({"cluster_cidr": POD_CIDR}, RuntimeContext())
    # stop() removes the jumps from built-in chains first, so load the rules without them
    text = "\n".join(line for line in fe.render(many(30)).splitlines() if not line.startswith("# lbcore-hook"))
    rs = RuleSet(text)
    nat = {c for c in rs.dump()["nat"] if c.startswith("LBCORE-")}
    filt = {c for c in rs.dump()["filter"] if c.startswith("LBCORE-")}
    assert filt == {"LBCORE-SERVICES", "LBCORE-CANARY"}
    texts = _deletion_texts(nat, filt, chunk=20)
    assert len(texts) > 5
    for text in texts:
        rs.apply(text)  # the tracer refuses a commit that leaves a jump to a missing chain
    assert not [c for table in rs.dump().values() for c in table if c.startswith("LBCORE-")]
