"""The socket data path picks with lbcore's balancers and affinity table, over real sockets."""

from __future__ import annotations

import collections
import socket
import threading

import pytest
from lbcore_plugins.socket_frontend import SocketFrontend
from proxy_helpers import cluster_ip, read_line, service_port, snapshot, tag_of, wait_until

from lbcore.core import balancers
from lbcore.errors import ConfigError

HASHES = ["ring_hash", "maglev", "jump", "rendezvous"]


def sources(count: int) -> list[str]:
    return [f"127.0.{i // 200}.{i % 200 + 2}" for i in range(count)]


@pytest.mark.parametrize("algorithm", balancers.available())
def test_every_available_algorithm_serves_every_connection(backends, make_frontend, algorithm):
    bs = [backends(t) for t in "ABC"]
    sp = service_port("web", [b.endpoint() for b in bs])
    fe = make_frontend(algorithm=algorithm)
    fe.sync(snapshot(sp), frozenset({"default/web"}))
    tags = [tag_of((sp.cluster_ips[0], 8080), source=src) for src in sources(30)]
    assert set(tags) <= {"A", "B", "C"} and len(tags) == 30
    # 30 clients (or turns) never all land on one of three: a uniform pick does so in
    # 3 * 3**-30 = 1.5e-14 of runs; the hashed algorithms' keys are fixed
    assert len(set(tags)) >= 2, tags
    assert fe.engine.service_info(f"cluster/{sp.key}")["algorithm"] == algorithm


@pytest.mark.parametrize("algorithm", HASHES)
def test_hash_algorithm_keeps_each_client_on_the_backend_lbcore_picks(
    backends, make_frontend, algorithm
):
    bs = [backends(t) for t in "ABCD"]
    sp = service_port("web", [b.endpoint() for b in bs])
    fe = make_frontend(algorithm=algorithm)
    fe.sync(snapshot(sp), frozenset({"default/web"}))
    # the same balancer, built from the same names, in this process: the client IP's packed
    # bytes are the key the data path hashes
    reference = balancers.create(algorithm, [f"127.0.0.1:{b.port}" for b in bs])
    for src in sources(12):
        tags = {tag_of((sp.cluster_ips[0], 8080), source=src) for _ in range(4)}
        expected = "ABCD"[reference.pick(socket.inet_aton(src))]
        assert tags == {expected}, (src, tags, expected)


def test_maglev_client_stays_when_another_backend_goes(backends, make_frontend):
    bs = [backends(t) for t in "ABCD"]
    ip = cluster_ip()
    fe = make_frontend(algorithm="maglev")
    fe.sync(snapshot(service_port("web", [b.endpoint() for b in bs], ip=ip)), frozenset())
    before = {src: tag_of((ip, 8080), source=src) for src in sources(40)}
    # D goes: only D's clients may move (Maglev's minimal disruption, through a new balancer)
    fe.sync(
        snapshot(service_port("web", [b.endpoint() for b in bs[:3]], ip=ip), version=2),
        frozenset({"default/web"}),
    )
    after = {src: tag_of((ip, 8080), source=src) for src in before}
    moved = [src for src in before if before[src] != after[src]]
    assert all(before[src] == "D" for src in moved), moved
    assert "D" not in after.values()


@pytest.mark.parametrize("algorithm", ["least_conn", "bounded_load"])
def test_live_connection_counts_return_to_zero_after_close(backends, make_frontend, algorithm):
    bs = [backends(t) for t in "ABC"]
    sp = service_port("web", [b.endpoint() for b in bs])
    fe = make_frontend(algorithm=algorithm)
    fe.sync(snapshot(sp), frozenset({"default/web"}))
    table = f"cluster/{sp.key}"
    held = []
    try:
        for src in sources(30):
            s = socket.create_connection(
                (sp.cluster_ips[0], 8080), timeout=3, source_address=(src, 0)
            )
            held.append(s)
            assert read_line(s) in "ABC"
        rows = fe.engine.service_endpoints(table)
        assert sum(r["balancer_active"] for r in rows) == 30
        assert [r["balancer_active"] for r in rows] == [r["active"] for r in rows]
        # both spread held connections: none of three backends holds more than half
        assert max(r["balancer_active"] for r in rows) <= 15, rows
    finally:
        for s in held:
            s.close()
    assert wait_until(lambda: fe.stats()["connections"] == 0)
    rows = fe.engine.service_endpoints(table)
    assert [(r["active"], r["balancer_active"]) for r in rows] == [(0, 0)] * 3


def test_live_counts_carry_over_to_the_balancer_of_the_next_sync(backends, make_frontend):
    a, b, c = backends("A"), backends("B"), backends("C")
    ip = cluster_ip()
    fe = make_frontend(algorithm="least_conn")
    fe.sync(snapshot(service_port("web", [a.endpoint(), b.endpoint()], ip=ip)), frozenset())
    table = "cluster/" + service_port("web", [], ip=ip).key
    held = [socket.create_connection((ip, 8080), timeout=3) for _ in range(6)]
    try:
        assert {read_line(s) for s in held} <= {"A", "B"}
        fe.sync(
            snapshot(
                service_port("web", [a.endpoint(), b.endpoint(), c.endpoint()], ip=ip), version=2
            ),
            frozenset({"default/web"}),
        )
        rows = {r["address"]: r for r in fe.engine.service_endpoints(table)}
        assert rows[f"127.0.0.1:{c.port}"]["balancer_active"] == 0
        assert sum(r["balancer_active"] for r in rows.values()) == 6
        held += [socket.create_connection((ip, 8080), timeout=3) for _ in range(3)]
        assert all(read_line(s) in "ABC" for s in held[6:])
        rows = fe.engine.service_endpoints(table)
        assert sum(r["balancer_active"] for r in rows) == 9
        assert [r["balancer_active"] for r in rows] == [r["active"] for r in rows]
    finally:
        for s in held:
            s.close()
    assert wait_until(lambda: fe.stats()["connections"] == 0)
    rows = fe.engine.service_endpoints(table)
    assert [(r["active"], r["balancer_active"]) for r in rows] == [(0, 0)] * 3


def test_client_ip_affinity_lives_in_an_affinity_table(backends, make_frontend):
    bs = [backends(t) for t in "ABC"]
    ip = cluster_ip()
    sp = service_port("web", [b.endpoint() for b in bs], ip=ip, session_affinity="ClientIP")
    fe = make_frontend(algorithm="random")
    fe.sync(snapshot(sp), frozenset({"default/web"}))
    chosen = {src: {tag_of((ip, 8080), source=src) for _ in range(5)} for src in sources(9)}
    assert all(len(tags) == 1 for tags in chosen.values()), chosen
    info = fe.engine.service_info(f"cluster/{sp.key}")
    assert info["affinity_bindings"] == 9
    # the endpoint of some clients goes: their bindings are purged, they move, others stay
    gone = next(iter(chosen["127.0.0.2"]))
    keep = [b for b in bs if b.tag.decode() != gone]
    sp2 = service_port("web", [b.endpoint() for b in keep], ip=ip, session_affinity="ClientIP")
    fe.sync(snapshot(sp2, version=2), frozenset({"default/web"}))
    lost = sum(1 for tags in chosen.values() if gone in tags)
    assert fe.engine.service_info(f"cluster/{sp.key}")["affinity_bindings"] == 9 - lost
    for src, tags in chosen.items():
        now = {tag_of((ip, 8080), source=src) for _ in range(3)}
        assert len(now) == 1 and gone not in now
        if gone not in tags:
            assert now == tags


def test_affinity_clock_moves_forward_after_weeks_and_keeps_working(backends, make_frontend):
    bs = [backends(t) for t in "AB"]
    ip = cluster_ip()
    sp = service_port(
        "web", [b.endpoint() for b in bs], ip=ip, session_affinity="ClientIP", affinity_timeout=60
    )
    fe = make_frontend()
    fe.sync(snapshot(sp), frozenset({"default/web"}))
    table = f"cluster/{sp.key}"
    first = tag_of((ip, 8080), source="127.0.0.2")
    fe.engine._age_affinity_clock(table, 40 * 86400.0)  # past the table's 32-bit clock limit
    assert fe.engine.service_info(table)["affinity_clock_ms"] > 2**31
    # the binding lapsed long ago; a new one is made and kept, on a clock moved forward
    again = {tag_of((ip, 8080), source="127.0.0.2") for _ in range(5)}
    assert len(again) == 1 and again <= {"A", "B"}, (first, again)
    info = fe.engine.service_info(table)
    assert info["affinity_clock_ms"] < 2**32 * 0.76
    assert info["affinity_bindings"] == 1


def test_unknown_algorithm_is_refused_with_the_available_names(context):
    with pytest.raises(ConfigError) as err:
        SocketFrontend({"algorithm": "least_connections"}, context)
    message = str(err.value)
    assert "algorithm: 'least_connections'" in message
    assert all(name in message for name in balancers.available())


def test_algorithm_options_are_checked_and_used(backends, make_frontend, context):
    with pytest.raises(ConfigError, match="algorithm_options: .*table_size"):
        SocketFrontend({"algorithm": "maglev", "algorithm_options": {"table_size": 1000}}, context)
    with pytest.raises(ConfigError, match="algorithm_options: .*colour"):
        SocketFrontend({"algorithm": "ring_hash", "algorithm_options": {"colour": 1}}, context)
    bs = [backends(t) for t in "AB"]
    sp = service_port("web", [b.endpoint() for b in bs])
    fe = make_frontend(algorithm="maglev", algorithm_options={"table_size": 251})
    fe.sync(snapshot(sp), frozenset({"default/web"}))
    reference = balancers.create("maglev", [f"127.0.0.1:{b.port}" for b in bs], table_size=251)
    for src in sources(6):
        expected = "AB"[reference.pick(socket.inet_aton(src))]
        assert tag_of((sp.cluster_ips[0], 8080), source=src) == expected


def test_jump_ignores_weights_and_weight_zero_takes_no_new_connection(backends, make_frontend):
    a, b, c = backends("A"), backends("B"), backends("C")
    sp = service_port("web", [a.endpoint(weight=3), b.endpoint(weight=1), c.endpoint(weight=0)])
    fe = make_frontend(algorithm="jump")
    fe.sync(snapshot(sp), frozenset({"default/web"}))
    counts = collections.Counter(tag_of((sp.cluster_ips[0], 8080), source=s) for s in sources(40))
    # the 40 client addresses are fixed; were they random keys, one of A and B would get none
    # in 2 * 2**-40 = 2e-12 of runs
    assert set(counts) == {"A", "B"}, counts


def test_counts_stay_exact_when_both_workers_pick_at_once(backends, make_frontend):
    bs = [backends(t) for t in "ABC"]
    sp = service_port("web", [b.endpoint() for b in bs])
    fe = make_frontend(algorithm="bounded_load", workers=2)
    fe.sync(snapshot(sp), frozenset({"default/web"}))
    errors: list[BaseException] = []

    def client(n: int) -> None:
        try:
            for _ in range(n):
                assert tag_of((sp.cluster_ips[0], 8080)) in ("A", "B", "C")
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(150,)) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and not any(t.is_alive() for t in threads)
    assert wait_until(lambda: fe.stats()["connections"] == 0)
    rows = fe.engine.service_endpoints(f"cluster/{sp.key}")
    assert [(r["active"], r["balancer_active"]) for r in rows] == [(0, 0)] * 3
    assert fe.stats()["accepted"] == 900


def test_syncs_swap_balancers_under_traffic_without_losing_a_connection(backends, make_frontend):
    bs = [backends(t) for t in "ABCD"]
    ip = cluster_ip()
    sets = [bs[:2], bs[1:], bs[::2], bs]
    fe = make_frontend(algorithm="least_conn", workers=2)
    fe.sync(snapshot(service_port("web", [b.endpoint() for b in bs], ip=ip)), frozenset())
    stop = threading.Event()
    served: list[str] = []
    errors: list[BaseException] = []

    def client() -> None:
        try:
            while not stop.is_set() and len(served) < 5000:
                served.append(tag_of((ip, 8080)))
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        for version in range(2, 42):
            chosen = sets[version % len(sets)]
            sp = service_port("web", [b.endpoint() for b in chosen], ip=ip)
            fe.sync(snapshot(sp, version=version), frozenset({"default/web"}))
            # a few connections between syncs, every one under another balancer
            goal = len(served) + 5
            assert wait_until(lambda: len(served) >= goal or bool(errors))  # noqa: B023
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert not errors, errors[:3]
    assert len(served) >= 100 and set(served) <= set("ABCD")
    assert wait_until(lambda: fe.stats()["connections"] == 0)
    assert fe.stats()["rejected"] == 0
    rows = fe.engine.service_endpoints("cluster/" + service_port("web", [], ip=ip).key)
    assert [(r["active"], r["balancer_active"]) for r in rows] == [(0, 0)] * len(rows)
