"""The pick policy's hash key: hashed algorithms key by the client IP unless told otherwise."""

from __future__ import annotations

import ipaddress

import pytest

from lbcore import EndpointInfo, Picker, ServicePortInfo, hash64
from lbcore.core import balancers
from lbcore.errors import ConfigError

EPS = tuple(EndpointInfo(f"10.0.0.{i}", 8080) for i in range(1, 6))
SP = ServicePortInfo(namespace="default", name="web", port_name="", protocol="TCP", port=80,
                     cluster_ips=("10.96.0.10",), endpoints=EPS)


@pytest.mark.parametrize("compiled", [False, True])
@pytest.mark.parametrize("algorithm", sorted(balancers.CONSISTENT))
def test_by_default_a_client_keeps_one_endpoint_whatever_its_source_port(algorithm, compiled):
    from lbcore.core._extensions import NO_EXTENSIONS

    if compiled and NO_EXTENSIONS:
        pytest.skip("LBCORE_NO_EXTENSIONS is set: no compiled core")
    picker = Picker(SP, algorithm=algorithm, compiled=compiled)
    reference = balancers.create(algorithm, [ep.address for ep in EPS])
    for client in ("192.168.1.5", "192.168.1.6", "fd00::7"):
        got = {picker.pick("TCP", client, port, "10.96.0.10", 80).address for port in range(40000, 40050)}
        packed = ipaddress.ip_address(client).packed
        assert got == {EPS[reference.pick_hashed(hash64(packed))].address}


@pytest.mark.parametrize("compiled", [False, True])
def test_five_tuple_key_spreads_one_clients_connections(compiled):
    from lbcore.core._extensions import NO_EXTENSIONS

    if compiled and NO_EXTENSIONS:
        pytest.skip("LBCORE_NO_EXTENSIONS is set: no compiled core")
    picker = Picker(SP, algorithm="maglev", hash_key="five_tuple", compiled=compiled)
    got = {picker.pick("TCP", "192.168.1.5", p, "10.96.0.10", 80).address for p in range(40000, 40200)}
    # 200 connections over 5 equal endpoints: all land on one or two with probability < 1e-50
    assert len(got) >= 3


def test_an_unknown_hash_key_is_refused_by_name():
    with pytest.raises((ConfigError, ValueError), match="hash_key"):
        Picker(SP, algorithm="maglev", hash_key="source_port")


@pytest.mark.parametrize("compiled", [False, True])
@pytest.mark.parametrize("algorithm", ["round_robin", "maglev", "ring_hash", "random"])
def test_a_down_endpoints_share_is_spread_over_the_others_not_handed_to_one(algorithm, compiled):
    """Asking the balancer again spreads a down endpoint's share (HAProxy and Envoy do the
    same); walking to its neighbour would give that neighbour twice the others' share."""
    from lbcore.core._extensions import NO_EXTENSIONS

    if compiled and NO_EXTENSIONS:
        pytest.skip("LBCORE_NO_EXTENSIONS is set: no compiled core")
    three = SP.__class__(**{**{f: getattr(SP, f) for f in SP.__dataclass_fields__},
                            "endpoints": EPS[:3]})
    picker = Picker(three, algorithm=algorithm, compiled=compiled)
    picker.mark_down(EPS[0], 3600, now=0.0)
    counts = {ep.address: 0 for ep in EPS[1:3]}
    for i in range(3000):
        client = f"10.{i // 65536}.{i // 256 % 256}.{i % 256}"
        counts[picker.pick("TCP", client, 40000, "10.96.0.10", 80, now=1.0).address] += 1
    # an even split is 1500 each; a neighbour taking the whole share would have about 2000.
    # The keys are fixed, so hashed algorithms give the same counts every run; for random, a
    # count of 3000 fair draws leaves 1500 +- 27 (one sd): 1750 is 9 sd away (p < 1e-18).
    assert max(counts.values()) < 1750, counts
