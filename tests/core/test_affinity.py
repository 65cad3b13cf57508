"""ClientIP session affinity: the AffinityTable (both twins) and the Picker's use of it."""

from __future__ import annotations

import pytest

from lbcore import EndpointInfo, Picker
from lbcore.core import _conntrack_c, _conntrack_py
from lbcore.core._extensions import NO_EXTENSIONS
from lbcore.errors import ConfigError


@pytest.fixture(params=["c", "py"])
def mod(request):
    return _conntrack_c if request.param == "c" else _conntrack_py


@pytest.fixture(params=[True, False], ids=["compiled", "python"])
def compiled(request):
    if request.param and NO_EXTENSIONS:
        pytest.skip("LBCORE_NO_EXTENSIONS is set: the compiled core is not offered")
    return request.param


def ep(i: int, **kw) -> EndpointInfo:
    return EndpointInfo(f"10.0.0.{i}", 8080, **kw)


def test_binding_lapses_after_timeout_of_disuse(mod):
    t = mod.AffinityTable(16, timeout=10800)
    t.insert("192.168.1.5", 3, 0.0)
    assert t.lookup("192.168.1.5", 10799.999) == 3  # refreshed here
    assert t.lookup("192.168.1.5", 21599.998) == 3
    assert t.lookup("192.168.1.5", 32399.998) == -1
    assert len(t) == 0


def test_clients_are_keyed_by_address_only_ipv4_and_ipv6(mod):
    t = mod.AffinityTable(16, timeout=60)
    t.insert("192.168.1.5", 1, 0.0)
    t.insert("fd00::5", 2, 0.0)
    assert t.lookup(bytes([192, 168, 1, 5]), 1.0) == 1
    assert t.lookup("::ffff:192.168.1.5", 1.0) == 1
    assert t.lookup("fd00:0::5", 1.0) == 2
    assert t.lookup("192.168.1.6", 1.0) == -1
    assert t.entries() == [("192.168.1.5", 1), ("fd00::5", 2)]


def test_purge_expire_remove_and_capacity(mod):
    t = mod.AffinityTable(3, timeout=10)
    for i in range(3):
        t.insert(f"192.168.0.{i}", i % 2, float(i))
    assert t.purge_backend(0) == 2 and len(t) == 1
    t.insert("192.168.0.7", 5, 3.0)
    t.insert("192.168.0.8", 5, 4.0)
    t.insert("192.168.0.9", 5, 5.0)  # full: the least recently used (192.168.0.1) goes
    assert t.lookup("192.168.0.1", 5.0) == -1 and len(t) == 3
    assert t.remove("192.168.0.9") and not t.remove("192.168.0.9")
    assert t.expire(13.5) == 1 and t.expire(14.0) == 1 and len(t) == 0
    with pytest.raises(ConfigError, match="timeout"):
        mod.AffinityTable(3, timeout=-1)


def test_same_client_sticks_across_connections(compiled):
    p = Picker(session_affinity="ClientIP", affinity_timeout=100, compiled=compiled)
    p.update([ep(1), ep(2), ep(3)])
    for client in range(1, 7):
        got = {p.pick("TCP", f"192.168.0.{client}", 40000 + i, "10.96.0.1", 80, now=float(i)).ip
               for i in range(20)}
        assert len(got) == 1
    # different clients spread (round robin over new clients)
    firsts = {p.pick("TCP", f"192.168.0.{c}", 1, "10.96.0.1", 80, now=30.0).ip for c in range(1, 7)}
    assert firsts == {"10.0.0.1", "10.0.0.2", "10.0.0.3"}


def test_affinity_is_refreshed_by_use_and_lapses_without(compiled):
    p = Picker(session_affinity="ClientIP", affinity_timeout=10, compiled=compiled)
    p.update([ep(1), ep(2), ep(3)])
    c = "192.168.0.9"
    first = p.pick("TCP", c, 1, "10.96.0.1", 80, now=0.0)
    for i in range(1, 9):  # a new connection every 9 s keeps the binding past 10 s
        assert p.pick("TCP", c, 1 + i, "10.96.0.1", 80, now=9.0 * i) == first
    assert p.pick("TCP", "192.168.0.10", 1, "10.96.0.1", 80, now=80.0) != first
    assert p.pick("TCP", c, 98, "10.96.0.1", 80, now=72.0 + 9.999) == first
    got = p.pick("TCP", c, 99, "10.96.0.1", 80, now=81.999 + 10.0)  # lapsed: round robin's turn
    assert got != first and got.ip == "10.0.0.3"


def test_affinity_to_an_endpoint_that_stops_taking_connections_is_rebound(compiled):
    p = Picker(session_affinity="ClientIP", compiled=compiled)
    p.update([ep(1), ep(2)])
    c = "192.168.0.9"
    first = p.pick("TCP", c, 1, "10.96.0.1", 80, now=0.0)
    other = [e for e in p.endpoints if e.ip != first.ip][0]
    p.update([EndpointInfo(first.ip, 8080, ready=False, serving=True, terminating=True), other])
    # the open connection stays; a new one goes to the other endpoint and the client follows
    assert p.pick("TCP", c, 1, "10.96.0.1", 80, now=1.0).ip == first.ip
    assert p.pick("TCP", c, 2, "10.96.0.1", 80, now=1.0).ip == other.ip
    p.update([first, other])
    assert p.pick("TCP", c, 3, "10.96.0.1", 80, now=2.0).ip == other.ip


def test_update_keeps_survivors_bindings_and_purges_removed(compiled):
    p = Picker(session_affinity="ClientIP", compiled=compiled)
    p.update([ep(1), ep(2), ep(3)])
    bound = {c: p.pick("TCP", f"192.168.0.{c}", 1, "10.96.0.1", 80, now=0.0).ip for c in range(9)}
    p.update([ep(1), ep(3)])
    assert len(p.affinity) == sum(1 for ip in bound.values() if ip != "10.0.0.2")
    for c, ip in bound.items():
        got = p.pick("TCP", f"192.168.0.{c}", 2, "10.96.0.1", 80, now=1.0).ip
        if ip != "10.0.0.2":
            assert got == ip
        else:
            assert got in ("10.0.0.1", "10.0.0.3")


def test_no_affinity_table_without_client_ip():
    p = Picker()
    assert p.affinity is None and p.session_affinity == "None"
