"""The Picker: connection table, fallback rules, updates, retries and threads, for both cores."""

from __future__ import annotations

import pickle
import random
import threading
import time

import pytest

from lbcore import NO_ENDPOINTS, EndpointInfo, Picker, ServicePortInfo
from lbcore.core._extensions import NO_EXTENSIONS
from lbcore.errors import ConfigError


@pytest.fixture(params=[True, False], ids=["compiled", "python"])
def compiled(request):
    if request.param and NO_EXTENSIONS:
        pytest.skip("LBCORE_NO_EXTENSIONS is set: the compiled core is not offered")
    return request.param


def ep(i: int, **kw) -> EndpointInfo:
    return EndpointInfo(f"10.0.0.{i}", 8080, **kw)


def terminating(i: int, serving: bool = True) -> EndpointInfo:
    return ep(i, ready=False, serving=serving, terminating=True)


def conn(i: int, proto: str = "TCP") -> tuple:
    return (proto, f"192.168.{i // 250}.{i % 250 + 1}", 30000 + i, "10.96.0.10", 80)


def test_no_endpoints_is_a_falsy_singleton():
    from lbcore.model.picker import NoEndpoints

    assert NoEndpoints() is NO_ENDPOINTS
    assert not NO_ENDPOINTS and repr(NO_ENDPOINTS) == "NO_ENDPOINTS"
    assert pickle.loads(pickle.dumps(NO_ENDPOINTS)) is NO_ENDPOINTS


def test_compiled_core_is_the_default_unless_told_not_to():
    from lbcore.core._extensions import NO_EXTENSIONS

    assert Picker().compiled is not NO_EXTENSIONS
    assert Picker(algorithm="round_robin", compiled=False).compiled is False


def test_picker_without_endpoints_answers_no_endpoints(compiled):
    p = Picker(compiled=compiled)
    assert p.pick(*conn(1), now=0.0) is NO_ENDPOINTS
    assert p.pick_index(*conn(1), now=0.0) == -1
    assert len(p.connections) == 0


def test_round_robin_over_ready_endpoints_and_tracked_connections_stay(compiled):
    p = Picker(algorithm="round_robin", compiled=compiled)
    p.update([ep(1), ep(2), ep(3)])
    first = [p.pick(*conn(i), now=0.0).ip for i in range(6)]
    assert sorted(first) == ["10.0.0.1", "10.0.0.1", "10.0.0.2", "10.0.0.2", "10.0.0.3", "10.0.0.3"]
    assert [p.pick(*conn(i), now=1.0).ip for i in range(6)] == first


def test_service_port_gives_settings_and_endpoints(compiled):
    sp = ServicePortInfo("default", "web", "http", "TCP", 80, ("10.96.0.10",),
                         endpoints=(ep(1), ep(2)), session_affinity="ClientIP", affinity_timeout=60)
    p = Picker(sp, compiled=compiled)
    assert p.session_affinity == "ClientIP" and p.affinity.timeout == 60.0
    assert {e.ip for e in p.endpoints} == {"10.0.0.1", "10.0.0.2"}


def test_bad_settings_are_config_errors():
    with pytest.raises(ConfigError, match="session_affinity: .*'Cookie'"):
        Picker(session_affinity="Cookie")
    with pytest.raises(ConfigError, match="algorithm: unknown 'fastest'"):
        Picker(algorithm="fastest")


def test_not_ready_endpoints_get_no_new_connections(compiled):
    p = Picker(compiled=compiled)
    p.update([ep(1), ep(2, ready=False, serving=False)])
    assert {p.pick(*conn(i), now=0.0).ip for i in range(10)} == {"10.0.0.1"}


def test_terminating_endpoint_keeps_its_connections_but_gets_no_new_ones(compiled):
    p = Picker(compiled=compiled)
    p.update([ep(1), ep(2)])
    on_2 = [i for i in range(10) if p.pick(*conn(i), now=0.0).ip == "10.0.0.2"]
    assert on_2
    p.update([ep(1), terminating(2)])
    for i in on_2:
        got = p.pick(*conn(i), now=1.0)
        assert got.ip == "10.0.0.2" and got.terminating
    assert {p.pick(*conn(i), now=1.0).ip for i in range(100, 120)} == {"10.0.0.1"}


def test_serving_terminating_endpoints_are_used_when_none_is_ready(compiled):
    p = Picker(compiled=compiled)
    p.update([terminating(1), terminating(2), terminating(3, serving=False)])
    assert {p.pick(*conn(i), now=0.0).ip for i in range(10)} == {"10.0.0.1", "10.0.0.2"}
    assert {e.ip for e in p.eligible} == {"10.0.0.1", "10.0.0.2"}
    p.update([terminating(3, serving=False)])
    assert p.pick(*conn(50), now=0.0) is NO_ENDPOINTS


def test_update_purges_removed_endpoints_and_keeps_survivor_ids(compiled):
    p = Picker(compiled=compiled)
    p.update([ep(1), ep(2), ep(3)])
    ids = {p.endpoint(p.pick_index(*conn(i), now=0.0)).ip: p.pick_index(*conn(i), now=0.0)
           for i in range(9)}
    on = {i: p.pick(*conn(i), now=0.0).ip for i in range(9)}
    p.update([ep(3), ep(1, weight=1), ep(4)])  # 2 goes, 4 comes
    assert len(p.connections) == sum(1 for v in on.values() if v != "10.0.0.2")
    for i, ip in on.items():
        if ip != "10.0.0.2":
            assert p.pick(*conn(i), now=1.0).ip == ip
            assert p.pick_index(*conn(i), now=1.0) == ids[ip]
    assert p.endpoint(ids["10.0.0.2"]).ip == "10.0.0.4"  # the freed id is reused
    moved = {p.pick(*conn(i), now=1.0).ip for i, ip in on.items() if ip == "10.0.0.2"}
    assert moved and "10.0.0.2" not in moved


def test_update_replaces_endpoint_info_of_survivors(compiled):
    p = Picker(compiled=compiled)
    p.update([ep(1, zone="a")])
    p.pick(*conn(1), now=0.0)
    p.update([ep(1, zone="b")])
    assert p.pick(*conn(1), now=0.0).zone == "b"


def test_exclude_moves_a_refused_connection_to_another_endpoint(compiled):
    p = Picker(compiled=compiled)
    p.update([ep(1), ep(2), ep(3)])
    first = p.pick(*conn(1), now=0.0)
    second = p.pick(*conn(1), now=0.0, exclude=[first])
    assert second.ip != first.ip
    third = p.pick(*conn(1), now=0.0, exclude=[first, second])
    assert third.ip not in (first.ip, second.ip)
    assert p.pick(*conn(1), now=0.0, exclude=[first, second, third]) is NO_ENDPOINTS
    assert p.pick(*conn(1), now=0.0).ip == third.ip  # the table follows the retry


def test_mark_down_skips_an_endpoint_for_a_while(compiled):
    p = Picker(compiled=compiled)
    p.update([ep(1), ep(2)])
    p.mark_down("10.0.0.1:8080", 10.0, now=0.0)
    assert {p.pick(*conn(i), now=1.0).ip for i in range(10)} == {"10.0.0.2"}
    assert {p.pick(*conn(i), now=11.0).ip for i in range(10, 20)} == {"10.0.0.1", "10.0.0.2"}
    p.mark_down(ep(1), 10.0, now=20.0)
    p.mark_down(ep(2), 10.0, now=20.0)  # every candidate down: they are used anyway
    assert p.pick(*conn(99), now=21.0) is not NO_ENDPOINTS
    with pytest.raises(KeyError, match="10.0.0.9"):
        p.mark_down(ep(9), 1.0)


def test_close_releases_least_conn_counts_once(compiled):
    p = Picker(algorithm="least_conn", compiled=compiled, seed=3)
    p.update([ep(1), ep(2)])
    for i in range(10):
        p.pick(*conn(i), now=0.0)
    bal = p._balancer
    assert sum(bal.active) == 10
    assert p.close(*conn(0), now=1.0) is True
    assert p.close(*conn(0), now=1.0) is False
    assert p.close(*conn(77), now=1.0) is False
    assert sum(bal.active) == 9
    # least connections: new ones go where fewer are open
    for i in range(1, 10):
        if p.pick(*conn(i), now=1.0).ip == "10.0.0.1":
            p.close(*conn(i), now=1.0)
    assert bal.active[0] == 0 and bal.active[1] > 3
    picks = []
    for i in range(100, 160):  # each closed at once, so the loads stay (0, 5)
        picks.append(p.pick(*conn(i), now=2.0).ip)
        assert p.close(*conn(i), now=2.0)
    assert bal.active[0] == 0
    assert picks.count("10.0.0.1") >= 36, picks  # power of two choices: 3 in 4 expected


def test_udp_flow_expires_and_is_picked_afresh(compiled):
    p = Picker(compiled=compiled, udp_timeout=5.0)
    p.update([ep(1), ep(2)])
    a = p.pick(*conn(1, "UDP"), now=0.0)
    assert p.pick(*conn(1, "UDP"), now=4.0) == a
    assert p.pick(*conn(1, "UDP"), now=9.5) != a  # expired: round robin moved on


def test_ipv6_connections(compiled):
    p = Picker(compiled=compiled)
    p.update([EndpointInfo("fd00::1", 80), EndpointInfo("fd00::2", 80)])
    got = {p.pick("TCP", f"fd00:1::{i:x}", 4000, "fd96::10", 80, now=0.0).ip for i in range(4)}
    assert got == {"fd00::1", "fd00::2"}


def test_weights_shape_the_share():
    p = Picker(algorithm="weighted_round_robin")
    p.update([ep(1, weight=3), ep(2, weight=1)])
    picks = [p.pick(*conn(i), now=0.0).ip for i in range(400)]
    assert picks.count("10.0.0.1") == 300


@pytest.mark.parametrize("algorithm,affinity", [("round_robin", "None"), ("maglev", "ClientIP"),
                                                ("least_conn", "None")])
@pytest.mark.skipif(NO_EXTENSIONS, reason="LBCORE_NO_EXTENSIONS is set: no compiled core")
def test_compiled_core_answers_as_the_python_core(algorithm, affinity):
    rng = random.Random(5)
    opts = {"seed": 11} if algorithm == "least_conn" else {}
    pc = Picker(algorithm=algorithm, session_affinity=affinity, affinity_timeout=20,
                capacity=64, compiled=True, udp_timeout=3.0, **opts)
    pp = Picker(algorithm=algorithm, session_affinity=affinity, affinity_timeout=20,
                capacity=64, compiled=False, udp_timeout=3.0, **opts)
    pool = [ep(i) for i in range(1, 9)]
    now = 0.0
    for step in range(1500):
        now += rng.choice([0.0, 0.01, 0.5, 2.0])
        r = rng.random()
        c = conn(rng.randrange(120), rng.choice(["TCP", "UDP"]))
        if r < 0.03:
            eps = rng.sample(pool, rng.randrange(0, 6))
            eps = [e if rng.random() < 0.8 else terminating(int(e.ip.rsplit(".", 1)[1]))
                   for e in eps]
            pc.update(eps)
            pp.update(eps)
        elif r < 0.15:
            assert pc.close(*c, now=now) == pp.close(*c, now=now), step
        elif r < 0.18:
            excl = rng.sample(pool, 2)
            assert pc.pick(*c, now=now, exclude=excl) == pp.pick(*c, now=now, exclude=excl), step
        else:
            assert pc.pick_index(*c, now=now) == pp.pick_index(*c, now=now), step
    assert pc.connections.entries() == pp.connections.entries()


def test_picks_and_updates_from_two_threads(compiled):
    # the data path picks while the sync path swaps endpoint sets; every answer must come from
    # a set that was installed, and no entry may outlive its endpoint
    p = Picker(compiled=compiled, capacity=4096)
    sets = [[ep(1), ep(2), ep(3)], [ep(3), ep(4)], [ep(5)], []]
    everyone = {e.ip for s in sets for e in s}
    p.update(sets[0])
    stop = threading.Event()
    errors: list[BaseException] = []

    def picker() -> None:
        i = 0
        try:
            while not stop.is_set() and i < 200_000:
                got = p.pick(*conn(i % 3000), now=float(i))
                assert got is NO_ENDPOINTS or got.ip in everyone
                i += 1
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    t = threading.Thread(target=picker)
    t.start()
    deadline = time.monotonic() + 1.5
    n = 0
    while time.monotonic() < deadline and n < 400:
        p.update(sets[n % len(sets)])
        n += 1
    stop.set()
    t.join(10)
    assert not t.is_alive() and not errors
    p.update(sets[1])
    current = {e.ip for e in p.endpoints}
    assert {entry[5] for entry in p.connections.entries()} <= {
        i for i in range(8) if i < len(p._eps) and p._eps[i] is not None
    }
    assert all(p.pick(*conn(i), now=1e9).ip in current for i in range(3000))


def test_a_pick_waits_while_an_update_holds_the_lock(compiled):
    # picks run under the GIL alone while no update is in progress; once the sync path holds
    # the lock, a pick from another thread must wait for it, not read a half-installed set
    p = Picker(compiled=compiled)
    p.update([ep(1)])
    got: list = []
    p._core.lock()
    try:
        t = threading.Thread(target=lambda: got.append(p.pick(*conn(1), now=1.0)))
        t.start()
        t.join(0.2)
        assert t.is_alive() and got == []
    finally:
        p._core.unlock()
    t.join(5)
    assert not t.is_alive() and got == [ep(1)]


def test_each_destination_address_is_its_own_key(compiled):
    # the compiled core keeps the last destination it parsed; a new one must not reuse it
    p = Picker(compiled=compiled, algorithm="round_robin")
    p.update([ep(1), ep(2)])
    first = p.pick("TCP", "192.168.0.1", 40000, "10.96.0.10", 80, now=1.0)
    other = p.pick("TCP", "192.168.0.1", 40000, "10.96.0.11", 80, now=1.0)
    assert first != other
    assert len(p.connections) == 2
    for _ in range(3):
        assert p.pick("TCP", "192.168.0.1", 40000, "10.96.0.10", 80, now=2.0) == first
        assert p.pick("TCP", "192.168.0.1", 40000, b"\x0a\x60\x00\x0b", 80, now=2.0) == other


def test_a_time_that_is_no_number_is_refused_before_anything_changes(compiled):
    from lbcore.errors import ValidationError

    p = Picker(compiled=compiled)
    p.update([ep(1)])
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ValidationError, match="now"):
            p.pick(*conn(1), now=bad)
        with pytest.raises(ValidationError, match="now"):
            p.close(*conn(1), now=bad)
    assert len(p.connections) == 0


def test_eligible_read_from_another_thread_is_always_one_installed_set(compiled):
    # the view of the endpoints taking new connections is published in one step: a reader
    # never pairs one update's ids with another's endpoints (a removed slot read as None)
    p = Picker(compiled=compiled)
    sets = [(ep(1), ep(2), ep(3)), (ep(1), ep(2)), (ep(4), ep(2))]
    p.update(sets[0])
    stop = threading.Event()
    seen: list[tuple] = []

    def reader() -> None:
        for _ in range(200_000):
            if stop.is_set():
                return
            view = p.eligible
            if view not in sets:
                seen.append(view)

    t = threading.Thread(target=reader)
    t.start()
    try:
        for n in range(20_000):
            if seen:
                break
            p.update(sets[n % len(sets)])
    finally:
        stop.set()
        t.join(30)
    assert seen == []
