"""Connection table, affinity and the Picker against plain Python, measured in the same run.

Run: ``python -m pytest benchmarks/test_bench_conntrack.py -s``. Each test prints ``RATIO`` lines.

Ours and the peer are timed in alternating rounds of the same run and each keeps its best round,
in CPU time of the process (the machine is shared: a round during which another job held the
core costs wall time, not CPU time), so load that comes and goes hits both sides alike.

The peer, ``DictConnTable``, is what one writes in Python for the same job: an ``OrderedDict``
keyed by the 5-tuple, with an idle timeout checked on look-up and LRU eviction at capacity.
"""

from __future__ import annotations

import gc
import statistics
import time
import tracemalloc
from collections import OrderedDict
from collections.abc import Callable

import numpy as np
import pytest

from lbcore import EndpointInfo, Picker
from lbcore.core import _conntrack_c

N = 100_000
BIG = 1_000_000


class DictConnTable:
    """5-tuple -> backend in an OrderedDict: idle timeout, LRU eviction, purge by scanning."""

    def __init__(self, capacity: int, timeout: float = 86400.0) -> None:
        self.capacity = capacity
        self.timeout = timeout
        self.d: OrderedDict[tuple, list] = OrderedDict()

    def lookup(self, proto, src, sport, dst, dport, now) -> int:
        key = (proto, src, sport, dst, dport)
        e = self.d.get(key)
        if e is None:
            return -1
        if now - e[1] >= self.timeout:
            del self.d[key]
            return -1
        e[1] = now
        self.d.move_to_end(key)
        return e[0]

    def insert(self, proto, src, sport, dst, dport, backend, now) -> None:
        key = (proto, src, sport, dst, dport)
        e = self.d.get(key)
        if e is not None:
            e[0], e[1] = backend, now
            self.d.move_to_end(key)
            return
        if len(self.d) >= self.capacity:
            self.d.popitem(last=False)
        self.d[key] = [backend, now]

    def purge_backend(self, backend: int) -> int:
        gone = [k for k, e in self.d.items() if e[0] == backend]
        for k in gone:
            del self.d[k]
        return len(gone)


def best_of(fn: Callable[[], object], rounds: int = 5) -> float:
    """Best CPU time of ``rounds`` calls, with the collector off."""
    return interleaved({"fn": fn}, rounds)["fn"]


def interleaved(fns: dict[str, Callable[[], object]], rounds: int = 5) -> dict[str, float]:
    """Best CPU time of each function over ``rounds`` rounds, the functions alternating."""
    best = dict.fromkeys(fns, float("inf"))
    gc.disable()
    try:
        for _ in range(rounds):
            for name, fn in fns.items():
                t0 = time.process_time()
                fn()
                best[name] = min(best[name], time.process_time() - t0)
    finally:
        gc.enable()
    return best


def tuples(n: int, seed: int = 1) -> list[tuple]:
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 2**32, n, dtype=np.uint32)
    p = rng.integers(1024, 65536, n)
    return [("TCP", f"{x >> 24}.{(x >> 16) & 255}.{(x >> 8) & 255}.{x & 255}", int(q),
             "10.96.0.10", 80) for x, q in zip(a.tolist(), p.tolist(), strict=True)]


def columns(n: int, seed: int = 1):
    rng = np.random.default_rng(seed)
    src = rng.integers(0, 2**32, n, dtype=np.uint32)
    sport = rng.integers(1024, 65536, n).astype(np.uint16)
    dst = np.full(n, 0x0A60000A, dtype=np.uint32)
    return src, sport, dst


@pytest.fixture(scope="module")
def conns() -> list[tuple]:
    return tuples(N)


def test_single_lookup_and_insert(benchmark, conns):
    ours = _conntrack_c.ConnTable(2 * N)
    peer = DictConnTable(2 * N)

    # two call shapes: star-unpacking a stored tuple plus the time (an extra list and tuple per
    # call, paid by both sides), and plain arguments, as a proxy holding the fields calls it
    def insert_star(t):
        return lambda: [t.insert(*c, i & 127, 1.0) for i, c in enumerate(conns)]

    def lookup_star(t):
        return lambda: [t.lookup(*c, 2.0) for c in conns]

    def insert_args(t):
        def run():
            insert = t.insert
            for i, (p, s, sp, d, dp) in enumerate(conns):
                insert(p, s, sp, d, dp, i & 127, 1.0)
        return run

    def lookup_args(t):
        def run():
            lookup = t.lookup
            return [lookup(p, s, sp, d, dp, 2.0) for p, s, sp, d, dp in conns]
        return run

    tables = {"lbcore": ours, "dict": peer}
    shapes = {"insert": insert_star, "lookup": lookup_star,
              "insert args": insert_args, "lookup args": lookup_args}
    # inserts first (the first round fills the tables), then look-ups, each pair interleaved
    best: dict[str, float] = {}
    for op, make in shapes.items():
        best.update(interleaved({f"{op}/{name}": make(t) for name, t in tables.items()}, 7))
    assert ours.lookup(*conns[7], 3.0) == peer.lookup(*conns[7], 3.0) == 7
    print()
    for op in shapes:
        o, p = best[f"{op}/lbcore"], best[f"{op}/dict"]
        print(f"conntrack {op:11s} per call: lbcore {o / N * 1e9:.0f} ns, dict {p / N * 1e9:.0f} ns")
        shape = "single" if " " not in op else "single, plain arguments,"
        print(f"RATIO conntrack {op.split()[0]} {shape} vs dict: {p / o:.1f}x")
    benchmark.pedantic(lookup_star(ours), rounds=3, iterations=1)


def test_batched_lookup_and_insert(benchmark, conns):
    src, sport, dst = columns(N)
    ours = _conntrack_c.ConnTable(2 * N)
    peer = DictConnTable(2 * N)
    backends = (np.arange(N) % 100).astype(np.int32)
    srcs, sports, bl = src.tolist(), sport.tolist(), backends.tolist()

    def peer_insert():
        for s, p, b in zip(srcs, sports, bl, strict=True):
            peer.insert(6, s, p, 0x0A60000A, 80, b, 1.0)

    def peer_lookup():
        return [peer.lookup(6, s, p, 0x0A60000A, 80, 2.0) for s, p in zip(srcs, sports, strict=True)]

    best = interleaved({"ins_ours": lambda: ours.insert_many(6, src, sport, dst, 80, backends, 1.0),
                        "ins_peer": peer_insert}, 7)
    best.update(interleaved({"look_ours": lambda: ours.lookup_many(6, src, sport, dst, 80, 2.0),
                             "look_peer": peer_lookup}, 7))
    ins_ours, ins_peer, look_ours, look_peer = (
        best["ins_ours"], best["ins_peer"], best["look_ours"], best["look_peer"])
    assert ours.lookup_many(6, src, sport, dst, 80, 2.0).tolist() == peer_lookup()
    print(f"\nconntrack insert_many per row: {ins_ours / N * 1e9:.0f} ns, dict loop {ins_peer / N * 1e9:.0f} ns")
    print(f"RATIO conntrack insert batched vs dict: {ins_peer / ins_ours:.1f}x")
    print(f"conntrack lookup_many per row: {look_ours / N * 1e9:.0f} ns, dict loop {look_peer / N * 1e9:.0f} ns")
    print(f"RATIO conntrack lookup batched vs dict: {look_peer / look_ours:.1f}x")
    benchmark.pedantic(lambda: ours.lookup_many(6, src, sport, dst, 80, 2.0), rounds=3, iterations=1)


@pytest.fixture(scope="module")
def big():
    src, sport, dst = columns(BIG, seed=2)
    backends = (np.arange(BIG) % 100).astype(np.int32)
    ours = _conntrack_c.ConnTable(BIG)
    ours.insert_many(6, src, sport, dst, 80, backends, 1.0)
    return ours, src, sport, dst, backends


def test_memory_per_entry_at_one_million(benchmark, big):
    ours = big[0]
    per_entry = ours.memory_bytes() / len(ours)
    src, sport = big[1][:200_000].tolist(), big[2][:200_000].tolist()
    tracemalloc.start()
    peer = DictConnTable(BIG)
    for i, (s, p) in enumerate(zip(src, sport, strict=True)):
        peer.insert("TCP", f"{s >> 24}.{(s >> 16) & 255}.{(s >> 8) & 255}.{s & 255}", p,
                    "10.96.0.10", 80, i % 100, 1.0)
    peer_bytes = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    peer_per_entry = peer_bytes / len(peer.d)
    print(f"\nconntrack memory at {len(ours):,} entries: lbcore {per_entry:.1f} B/entry "
          f"(slab {_conntrack_c.entry_size()} B + index), dict {peer_per_entry:.0f} B/entry "
          f"(measured on {len(peer.d):,})")
    print(f"RATIO conntrack memory per entry dict vs lbcore: {peer_per_entry / per_entry:.1f}x")
    assert len(ours) > 0.99 * BIG and per_entry <= 64
    benchmark.pedantic(lambda: ours.memory_bytes(), rounds=1, iterations=1)


def test_purge_one_backend_of_100_from_one_million(benchmark, big):
    ours, src, sport, dst, backends = big
    before = len(ours)
    t0 = time.perf_counter()
    gone = ours.purge_backend(42)
    t_ours = time.perf_counter() - t0
    assert gone == ours.count(42) + gone and len(ours) == before - gone
    peer = DictConnTable(BIG)
    for s, p, b in zip(src.tolist(), sport.tolist(), backends.tolist(), strict=True):
        peer.d[(6, s, p, 0x0A60000A, 80)] = [b, 1.0]
    t0 = time.perf_counter()
    gone_peer = peer.purge_backend(42)
    t_peer = time.perf_counter() - t0
    print(f"\npurge one backend of 100 from {before:,}: lbcore {t_ours * 1e3:.2f} ms "
          f"({gone:,} entries), dict scan {t_peer * 1e3:.1f} ms ({gone_peer:,})")
    print(f"RATIO conntrack purge_backend vs dict scan: {t_peer / t_ours:.0f}x")
    benchmark.pedantic(lambda: ours.purge_backend(43), rounds=1, iterations=1)


@pytest.mark.parametrize("affinity", ["None", "ClientIP"])
def test_picker_pick_end_to_end(benchmark, conns, affinity):
    eps = [EndpointInfo(f"10.0.{i // 250}.{i % 250 + 1}", 8080) for i in range(100)]
    n = 50_000
    sample = conns[:n]
    results = {}
    for compiled in (True, False):
        rounds = 3 if compiled else 1  # the Python core takes seconds a round
        t_new = t_hit = t_args = float("inf")
        for _ in range(rounds):
            p = Picker(algorithm="maglev", capacity=2 * N, session_affinity=affinity,
                       compiled=compiled)
            p.update(eps)
            pick = p.pick
            # first sight of each connection: table miss, affinity, balancer, inserts
            t_new = min(t_new, best_of(lambda pick=pick: [pick(*c, 1.0) for c in sample], 1))
            # the same connections again: table hits
            t_hit = min(t_hit, best_of(lambda pick=pick: [pick(*c, 2.0) for c in sample], 1))
            t_args = min(t_args, best_of(
                lambda pick=pick: [pick(pr, s, sp, d, dp, 3.0) for pr, s, sp, d, dp in sample], 1))
        results[compiled] = (t_new / n, t_hit / n, t_args / n)
    print(f"\nPicker.pick compiled, tracked connection, plain arguments (affinity {affinity}): "
          f"{results[True][2] * 1e9:.0f} ns")
    (new_c, hit_c, _), (new_py, hit_py, _) = results[True], results[False]
    print(f"Picker.pick (maglev, 100 endpoints, affinity {affinity}) per connection: "
          f"new {new_c * 1e9:.0f} ns, tracked {hit_c * 1e9:.0f} ns; python core new "
          f"{new_py * 1e9:.0f} ns, tracked {hit_py * 1e9:.0f} ns")
    print(f"RATIO picker pick new connection compiled vs python core (affinity {affinity}): "
          f"{new_py / new_c:.1f}x")
    print(f"RATIO picker pick tracked connection compiled vs python core (affinity {affinity}): "
          f"{hit_py / hit_c:.1f}x")
    p = Picker(algorithm="maglev", capacity=2 * N, session_affinity=affinity)
    p.update(eps)
    benchmark.pedantic(lambda: [p.pick(*c, 1.0) for c in sample[:10_000]], rounds=3, iterations=1)
    assert statistics.fmean([new_c, hit_c]) < 5e-6
