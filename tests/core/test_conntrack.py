"""ConnTable behaviour, run against the compiled table and its readable twin."""

from __future__ import annotations

import ipaddress

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lbcore.core import _conntrack_c, _conntrack_py
from lbcore.errors import ConfigError, ValidationError


@pytest.fixture(params=["c", "py"])
def mod(request):
    return _conntrack_c if request.param == "c" else _conntrack_py


def conn(i: int, proto: str = "TCP") -> tuple:
    return (proto, f"10.1.{i // 250}.{i % 250 + 1}", 40000 + i, "10.96.0.10", 80)


def test_chooser_picks_compiled_table_unless_told_not_to():
    from lbcore import ConnTable
    from lbcore.core import _conntrack
    from lbcore.core._extensions import NO_EXTENSIONS

    twin = _conntrack_py if NO_EXTENSIONS else _conntrack_c
    assert ConnTable is _conntrack.ConnTable is twin.ConnTable


def test_miss_then_hit(mod):
    t = mod.ConnTable(16)
    assert t.lookup(*conn(1), 0.0) == -1
    t.insert(*conn(1), 7, 0.0)
    assert t.lookup(*conn(1), 1.0) == 7
    assert t.lookup(*conn(2), 1.0) == -1
    assert len(t) == 1


def test_insert_replaces_backend_of_same_key(mod):
    t = mod.ConnTable(16)
    t.insert(*conn(1), 1, 0.0)
    t.insert(*conn(1), 2, 0.0)
    assert len(t) == 1 and t.lookup(*conn(1), 0.0) == 2
    assert t.count(1) == 0 and t.count(2) == 1


def test_every_field_of_the_five_tuple_is_part_of_the_key(mod):
    t = mod.ConnTable(16)
    base = ("TCP", "10.0.0.1", 1000, "10.96.0.1", 80)
    t.insert(*base, 1, 0.0)
    variants = [
        ("UDP", "10.0.0.1", 1000, "10.96.0.1", 80),
        ("TCP", "10.0.0.2", 1000, "10.96.0.1", 80),
        ("TCP", "10.0.0.1", 1001, "10.96.0.1", 80),
        ("TCP", "10.0.0.1", 1000, "10.96.0.2", 80),
        ("TCP", "10.0.0.1", 1000, "10.96.0.1", 81),
    ]
    for v in variants:
        assert t.lookup(*v, 0.0) == -1, v
    assert t.lookup(*base, 0.0) == 1


def test_protocol_by_name_or_number_and_address_as_str_or_packed(mod):
    t = mod.ConnTable(16)
    t.insert("tcp", "10.0.0.1", 1, "2001:db8::1", 80, 3, 0.0)
    assert t.lookup(6, bytes([10, 0, 0, 1]), 1, ipaddress.ip_address("2001:db8::1").packed, 80, 0.0) == 3
    assert t.lookup("TCP", ipaddress.ip_address("10.0.0.1"), 1, "2001:db8:0::1", 80, 0.0) == 3
    # an IPv4-mapped IPv6 address is the same peer as the IPv4 one
    assert t.lookup("TCP", "::ffff:10.0.0.1", 1, "2001:db8::1", 80, 0.0) == 3
    assert t.lookup("SCTP", "10.0.0.1", 1, "2001:db8::1", 80, 0.0) == -1
    t.insert(132, "10.0.0.1", 1, "2001:db8::1", 80, 4, 0.0)
    assert t.lookup("SCTP", "10.0.0.1", 1, "2001:db8::1", 80, 0.0) == 4


def test_ipv6_keys(mod):
    t = mod.ConnTable(64)
    for i in range(40):
        t.insert("TCP", f"fd00::{i:x}", 5000 + i, "fd00:96::1", 443, i, 0.0)
    assert [t.lookup("TCP", f"fd00::{i:x}", 5000 + i, "fd00:96::1", 443, 1.0) for i in range(40)] == list(range(40))
    assert t.lookup("TCP", "fd00::1", 5000, "fd00:96::1", 443, 1.0) == -1  # port of another entry
    assert t.entries()[0][1:5] == ("fd00::", 5000, "fd00:96::1", 443)


@pytest.mark.parametrize(
    "field,args",
    [
        ("proto", ("ICMPX", "10.0.0.1", 1, "10.0.0.2", 2)),
        ("proto", (256, "10.0.0.1", 1, "10.0.0.2", 2)),
        ("src", ("TCP", "10.0.0.256", 1, "10.0.0.2", 2)),
        ("src", ("TCP", b"\x01\x02\x03", 1, "10.0.0.2", 2)),
        ("dst", ("TCP", "10.0.0.1", 1, "fe80::1%eth0", 2)),
        ("sport", ("TCP", "10.0.0.1", 65536, "10.0.0.2", 2)),
        ("dport", ("TCP", "10.0.0.1", 1, "10.0.0.2", -1)),
    ],
)
def test_bad_key_names_field_and_value(mod, field, args):
    t = mod.ConnTable(4)
    with pytest.raises(ValidationError) as err:
        t.lookup(*args, 0.0)
    assert err.value.causes[0].field == field
    assert repr(args[["proto", "src", "sport", "dst", "dport"].index(field)]) in str(err.value)


def test_bad_backend_and_settings(mod):
    t = mod.ConnTable(4)
    with pytest.raises(ValidationError, match="backend"):
        t.insert(*conn(1), -1, 0.0)
    with pytest.raises(ConfigError, match="capacity"):
        mod.ConnTable(0)
    with pytest.raises(ConfigError, match="udp_timeout: .* got 0"):
        mod.ConnTable(4, udp_timeout=0)


def test_defaults_are_the_kernel_and_kube_proxy_timeouts(mod):
    assert mod.ConnTable(1).timeouts == {
        "tcp_timeout": 86400.0, "tcp_closing_timeout": 120.0, "udp_timeout": 30.0,
    }


# -- timeouts on a fake clock --------------------------------------------------------------------


def test_udp_entry_expires_after_idle_timeout(mod):
    t = mod.ConnTable(8, udp_timeout=30)
    t.insert(*conn(1, "UDP"), 1, 100.0)
    assert t.lookup(*conn(1, "UDP"), 129.999) == 1  # refreshed at 129.999
    assert t.lookup(*conn(1, "UDP"), 159.998) == 1
    assert t.lookup(*conn(1, "UDP"), 189.998) == -1  # idle exactly 30 s
    assert len(t) == 0


def test_hit_refreshes_idle_timer_but_miss_does_not_create(mod):
    t = mod.ConnTable(8, tcp_timeout=10)
    t.insert(*conn(1), 1, 0.0)
    for now in (9.0, 18.0, 27.0):
        assert t.lookup(*conn(1), now) == 1
    assert t.expire(36.9) == 0
    assert t.expire(37.0) == 1
    assert t.lookup(*conn(1), 37.0) == -1


def test_close_moves_tcp_to_closing_timeout(mod):
    t = mod.ConnTable(8, tcp_timeout=1000, tcp_closing_timeout=120)
    t.insert(*conn(1), 1, 0.0)
    t.insert(*conn(2), 2, 0.0)
    assert t.close(*conn(1), 10.0) is True
    assert t.close(*conn(1), 11.0) is False  # once only: the timer runs from the first close
    assert t.entries()[0][5:] == (1, True)
    assert t.expire(129.9) == 0
    assert t.expire(130.0) == 1
    assert t.lookup(*conn(1), 130.0) == -1 and t.lookup(*conn(2), 130.0) == 2


def test_insert_after_close_reopens_the_entry(mod):
    t = mod.ConnTable(8, tcp_timeout=1000, tcp_closing_timeout=5)
    t.insert(*conn(1), 1, 0.0)
    t.close(*conn(1), 0.0)
    t.insert(*conn(1), 1, 1.0)
    assert t.expire(500.0) == 0 and t.lookup(*conn(1), 500.0) == 1


def test_close_of_udp_removes_and_close_of_unknown_is_false(mod):
    t = mod.ConnTable(8)
    t.insert(*conn(1, "UDP"), 1, 0.0)
    assert t.close(*conn(1, "UDP"), 1.0) is True
    assert len(t) == 0
    assert t.close(*conn(1, "UDP"), 1.0) is False
    t.insert(*conn(2), 1, 0.0)
    assert t.close(*conn(2), 90000.0) is False  # expired before it was closed
    assert len(t) == 0


def test_expire_visits_only_expired_entries_of_each_class(mod):
    t = mod.ConnTable(100, tcp_timeout=100, udp_timeout=10)
    for i in range(10):
        t.insert(*conn(i, "UDP"), i, float(i))
        t.insert(*conn(i), i, float(i))
    assert t.expire(14.5) == 5  # UDP used at 0..4
    assert t.expire(104.5) == 5 + 5  # the rest of UDP, TCP used at 0..4
    assert len(t) == 5


def test_clock_going_back_counts_as_no_time(mod):
    t = mod.ConnTable(8, udp_timeout=30)
    t.insert(*conn(1, "UDP"), 1, 1000.0)
    assert t.lookup(*conn(1, "UDP"), 900.0) == 1
    assert t.lookup(*conn(1, "UDP"), 1029.0) == 1


def test_long_uptime_keeps_timeouts_exact():
    # 60 days of simulated time: the compiled table rebases its 32-bit millisecond clock
    t = _conntrack_c.ConnTable(8, udp_timeout=30, tcp_timeout=86400)
    start = 1_700_000_000.0
    t.insert(*conn(1), 1, start)
    t.insert(*conn(2, "UDP"), 2, start)
    half_day = 43200.0
    for d in range(1, 121):
        now = start + d * half_day
        assert t.lookup(*conn(1), now) == 1
        t.insert(*conn(2, "UDP"), 2, now)
        assert t.lookup(*conn(2, "UDP"), now + 29.9) == 2
        assert t.lookup(*conn(3, "UDP"), now) == -1
        t._check()
    now = start + 120 * half_day
    assert t.lookup(*conn(2, "UDP"), now + 29.9 + 30.0) == -1
    assert t.lookup(*conn(1), now + 86399.9) == 1
    assert t.lookup(*conn(1), now + 86399.9 + 86400.0) == -1


# -- capacity and LRU ----------------------------------------------------------------------------


def test_full_table_evicts_least_recently_used(mod):
    t = mod.ConnTable(4)
    for i in range(4):
        t.insert(*conn(i), i, float(i))
    assert t.lookup(*conn(0), 10.0) == 0  # 0 is now the most recent
    t.insert(*conn(4), 4, 11.0)  # evicts 1
    assert t.lookup(*conn(1), 12.0) == -1
    assert [t.lookup(*conn(i), 12.0) for i in (0, 2, 3, 4)] == [0, 2, 3, 4]
    t.insert(*conn(5), 5, 13.0)  # evicts 0 (looked up first at 12.0)
    assert t.lookup(*conn(0), 14.0) == -1
    assert len(t) == 4


def test_full_table_evicts_across_protocol_classes_by_last_use(mod):
    t = mod.ConnTable(3, tcp_timeout=1000, udp_timeout=1000)
    t.insert(*conn(0, "UDP"), 0, 0.0)
    t.insert(*conn(1), 1, 1.0)
    t.insert(*conn(2, "UDP"), 2, 2.0)
    t.lookup(*conn(0, "UDP"), 3.0)
    t.insert(*conn(3), 3, 4.0)  # the TCP entry used at 1.0 is the oldest
    assert t.lookup(*conn(1), 5.0) == -1
    assert len(t) == 3


def test_full_table_drops_an_expired_entry_before_a_live_one(mod):
    t = mod.ConnTable(2, tcp_timeout=1000, udp_timeout=5)
    t.insert(*conn(0), 0, 0.0)  # older but alive
    t.insert(*conn(1, "UDP"), 1, 1.0)  # expired by 10.0
    t.insert(*conn(2), 2, 10.0)
    assert t.lookup(*conn(0), 10.0) == 0 and t.lookup(*conn(2), 10.0) == 2


def test_capacity_one(mod):
    t = mod.ConnTable(1)
    for i in range(20):
        t.insert(*conn(i), i, float(i))
        assert len(t) == 1 and t.lookup(*conn(i), float(i)) == i


# -- purge ---------------------------------------------------------------------------------------


def test_purge_backend_removes_exactly_its_entries(mod):
    t = mod.ConnTable(1000)
    for i in range(900):
        t.insert(*conn(i), i % 9, 0.0)
    assert t.count(4) == 100
    assert t.purge_backend(4) == 100
    assert t.purge_backend(4) == 0 and t.purge_backend(12345) == 0
    assert len(t) == 800
    got = [t.lookup(*conn(i), 1.0) for i in range(900)]
    assert got == [-1 if i % 9 == 4 else i % 9 for i in range(900)]


def test_purged_slots_are_reused(mod):
    t = mod.ConnTable(10)
    for round_ in range(5):
        for i in range(10):
            t.insert(*conn(round_ * 10 + i), round_, float(round_))
        assert t.purge_backend(round_) == 10
        assert len(t) == 0


# -- batches -------------------------------------------------------------------------------------


def test_batch_insert_and_lookup_match_single_calls(mod):
    n = 500
    rng = np.random.default_rng(7)
    src = rng.integers(0, 2**32, n, dtype=np.uint32)
    sport = rng.integers(1024, 65536, n)
    dst = np.tile(np.array([[10, 96, 0, 1]], dtype=np.uint8), (n, 1))
    backends = (np.arange(n) % 13).astype(np.int32)
    t = mod.ConnTable(1024)
    t.insert_many("TCP", src, sport, dst, 80, backends, 0.0)
    assert len(t) == len(set(zip(src.tolist(), sport.tolist(), strict=True)))
    out = t.lookup_many(6, src, sport, dst, np.full(n, 80, dtype=np.uint16), 1.0)
    assert out.dtype == np.int32
    single = [t.lookup("TCP", str(ipaddress.IPv4Address(int(s))), int(p), "10.96.0.1", 80, 1.0)
              for s, p in zip(src, sport, strict=True)]
    assert out.tolist() == single
    assert set(out.tolist()) <= set(range(13))
    misses = t.lookup_many(np.full(n, 17, dtype=np.uint8), src, sport, dst, 80, 1.0)
    assert (misses == -1).all()


def test_batch_ipv6_columns(mod):
    n = 64
    src = np.zeros((n, 16), dtype=np.uint8)
    src[:, 0] = 0xFD
    src[:, 15] = np.arange(n)
    dst = np.zeros((n, 16), dtype=np.uint8)
    dst[:, 0] = 0xFD
    dst[:, 1] = 0x96
    t = mod.ConnTable(128)
    t.insert_many("UDP", src, np.arange(n) + 1000, dst, 53, 3, 0.0)
    assert t.lookup("UDP", f"fd00::{n - 1:x}", 1000 + n - 1, "fd96::", 53, 0.0) == 3


def test_batch_rejects_mismatched_or_out_of_range_columns(mod):
    t = mod.ConnTable(8)
    src = np.zeros((3, 4), dtype=np.uint8)
    with pytest.raises(ValidationError, match="dst"):
        t.lookup_many("TCP", src, [1, 2, 3], np.zeros((2, 4), dtype=np.uint8), 80, 0.0)
    with pytest.raises(ValidationError, match="sport"):
        t.lookup_many("TCP", src, [1, 2, 70000], src, 80, 0.0)
    with pytest.raises(ValidationError, match="backend"):
        t.insert_many("TCP", src, [1, 2, 3], src, 80, [0, -1, 2], 0.0)


# -- open addressing under churn -----------------------------------------------------------------


def test_deletion_keeps_every_survivor_reachable():
    # Many keys colliding into long probe runs, deleted in every order: backward-shift deletion
    # must keep each remaining key reachable from its home slot.
    rng = np.random.default_rng(1)
    t = _conntrack_c.ConnTable(300, udp_timeout=1000)
    live: dict[int, int] = {}
    for step in range(6000):
        i = int(rng.integers(0, 600))
        action = rng.random()
        if action < 0.5:
            t.insert(*conn(i, "UDP"), i % 50, 0.0)
            live[i] = i % 50
            if len(live) > 300:  # the table evicted its LRU entry; forget what it dropped
                live = {k: v for k, v in live.items() if conn(k, "UDP") in t}
        elif action < 0.8:
            assert t.remove(*conn(i, "UDP")) == (i in live)
            live.pop(i, None)
        elif action < 0.82:
            b = int(rng.integers(0, 50))
            assert t.purge_backend(b) == sum(1 for v in live.values() if v == b)
            live = {k: v for k, v in live.items() if v != b}
        if step % 500 == 0:
            t._check()
    t._check()
    assert len(t) == len(live)
    for i in range(600):
        assert t.lookup(*conn(i, "UDP"), 0.0) == live.get(i, -1)


def test_memory_per_entry_is_at_most_64_bytes():
    t = _conntrack_c.ConnTable(100_000)
    assert _conntrack_c.entry_size() == 56
    t.insert(*conn(1), 99, 0.0)
    assert t.memory_bytes() / t.capacity <= 64


@pytest.mark.parametrize("n", [0, 1, 15, 16, 17, 33])
def test_batch_sizes_around_the_pipeline_depth(mod, n):
    src = np.arange(1, n + 1, dtype=np.uint32)
    t = mod.ConnTable(64, udp_timeout=10)
    t.insert_many("UDP", src, np.full(n, 53), src, 53, np.arange(n, dtype=np.int32), 0.0)
    assert len(t) == n
    assert t.lookup_many("UDP", src, np.full(n, 53), src, 53, 5.0).tolist() == list(range(n))
    assert (t.lookup_many("UDP", src, np.full(n, 53), src, 53, 15.0) == -1).all() and len(t) == 0


def test_batch_rows_apply_in_order_even_for_repeated_keys(mod):
    src = np.array([7, 8, 7, 7, 8], dtype=np.uint32)
    t = mod.ConnTable(8)
    t.insert_many("TCP", src, np.full(5, 1000), src, 80, np.array([1, 2, 3, 4, 5], dtype=np.int32), 0.0)
    assert t.lookup_many("TCP", src, np.full(5, 1000), src, 80, 0.0).tolist() == [4, 5, 4, 4, 5]
    # a full table evicting inside one batch still keeps the last rows
    t = mod.ConnTable(4)
    many = np.arange(1, 41, dtype=np.uint32)
    t.insert_many("TCP", many, np.full(40, 1000), many, 80, np.arange(40, dtype=np.int32), 0.0)
    assert len(t) == 4
    assert t.lookup_many("TCP", many[-4:], np.full(4, 1000), many[-4:], 80, 0.0).tolist() == [36, 37, 38, 39]


@settings(max_examples=60, deadline=None)
@given(rows=st.lists(st.tuples(st.integers(0, 40), st.sampled_from([6, 17]), st.integers(0, 3)),
                     max_size=90),
       capacity=st.integers(1, 48), first=st.integers(0, 40))
def test_a_batch_is_its_rows_inserted_one_by_one(rows, capacity, first):
    # Batches past the pipeline's depth, repeated keys, keys that change backend or protocol, and
    # a table small enough to evict inside the batch: what a row's earlier look at its index slot
    # saw may be stale by its turn, and the answer must not depend on it.
    one, batch = _conntrack_c.ConnTable(capacity), _conntrack_c.ConnTable(capacity)
    for i in range(first):  # a table already holding keys, in an order of their own
        for t in (one, batch):
            t.insert("UDP", f"10.0.0.{i % 37 + 1}", 53, "10.96.0.1", 53, i % 4, 0.0)
    for key, proto, backend in rows:
        one.insert(proto, f"10.0.0.{key + 1}", 53, "10.96.0.1", 53, backend, 1.0)
    src = np.array([(10 << 24) | (key + 1) for key, _, _ in rows], dtype=np.uint32)
    batch.insert_many(np.array([p for _, p, _ in rows], dtype=np.uint8), src, 53,
                      np.full(len(rows), (10 << 24) | (96 << 16) | 1, dtype=np.uint32), 53,
                      np.array([b for _, _, b in rows], dtype=np.int32), 1.0)
    assert batch.entries() == one.entries()
    assert [batch.count(b) for b in range(4)] == [one.count(b) for b in range(4)]


def test_batch_scalars_apply_to_every_row_and_are_checked(mod):
    src = np.array([[10, 0, 0, 1], [10, 0, 0, 2]], dtype=np.uint8)
    t = mod.ConnTable(8)
    t.insert_many(np.uint8(17), src, np.int64(53), src, 53, np.int32(4), 0.0)
    assert t.lookup("UDP", "10.0.0.2", 53, "10.0.0.2", 53, 0.0) == 4
    with pytest.raises(ValidationError, match="backend"):
        t.insert_many("UDP", src, 53, src, 53, -1, 0.0)
    with pytest.raises(ValidationError, match="dport"):
        t.lookup_many("UDP", src, 53, src, 70000, 0.0)
    with pytest.raises(ValidationError, match="src"):
        t.lookup_many("UDP", "10.0.0.1", 53, src, 53, 0.0)


def test_address_spellings_beyond_plain_ascii_str_and_bytes(mod):
    class Text(str):
        pass

    class Packed(bytes):
        pass

    t = mod.ConnTable(8)
    t.insert("TCP", Text("10.0.0.1"), 1, Packed(b"\x0a\x60\x00\x01"), 80, 5, 0.0)
    assert t.lookup("TCP", "10.0.0.1", 1, "10.96.0.1", 80, 0.0) == 5
    # "\xe9" and "\xb9" (superscript one) keep a str one byte per character without being ASCII
    for bad in ("10.0.0.1\x00", "10.0.0.1 ", "1０.0.0.1", "fe80::1\x00junk", "\udcff", "01.2.3.4",
                "10.0.0.\xb9", "10.0.0.1\xe9", "fe80::\xe9"):
        with pytest.raises(ValidationError) as err:
            t.lookup("TCP", bad, 1, "10.96.0.1", 80, 0.0)
        assert err.value.causes[0].field == "src"


def test_ports_and_protocol_numbers_out_of_range_even_when_huge(mod):
    t = mod.ConnTable(8)
    for field, args in [("sport", ("TCP", "10.0.0.1", 2**70, "10.0.0.2", 80)),
                        ("dport", ("TCP", "10.0.0.1", 1, "10.0.0.2", -(2**70))),
                        ("proto", (2**70, "10.0.0.1", 1, "10.0.0.2", 80)),
                        ("sport", ("TCP", "10.0.0.1", True, "10.0.0.2", 80))]:
        with pytest.raises(ValidationError) as err:
            t.lookup(*args, 0.0)
        assert err.value.causes[0].field == field


def test_ports_and_backend_ids_read_alike_at_any_size_of_int(mod):
    """Exact ints are read inline when small and through the public conversion otherwise; both
    give the same answers at the edges (one machine digit, 2**30 and up, past a C long)."""
    t = mod.ConnTable(8)
    max_backend = 0x7FFFFF
    for port, backend in [(0, 0), (65535, max_backend), (2**15, 2**22)]:
        t.insert("TCP", "10.0.0.1", port, "10.0.0.2", 80, backend, 0.0)
        assert t.lookup("TCP", "10.0.0.1", port, "10.0.0.2", 80, 0.0) == backend
        assert t.lookup("TCP", "10.0.0.1", int(str(port)), "10.0.0.2", 80, 0.0) == backend
    for bad_port in (65536, 2**30, 2**31, 2**62, 2**64, -1, -(2**30)):
        with pytest.raises(ValidationError, match="sport"):
            t.lookup("TCP", "10.0.0.1", bad_port, "10.0.0.2", 80, 0.0)
    for bad_backend in (max_backend + 1, 2**30, 2**63, -1, -(2**62)):
        with pytest.raises(ValidationError, match="backend"):
            t.insert("TCP", "10.0.0.1", 1, "10.0.0.2", 80, bad_backend, 0.0)


def test_reinserting_the_most_recent_entry_refreshes_its_timer_and_keeps_lru_order(mod):
    t = mod.ConnTable(3, udp_timeout=10)
    t.insert(*conn(1, "UDP"), 1, 0.0)
    t.insert(*conn(2, "UDP"), 2, 0.0)
    t.insert(*conn(2, "UDP"), 2, 8.0)  # already the most recent entry: only its stamp moves
    t.insert(*conn(3, "UDP"), 3, 9.0)
    t.insert(*conn(3, "UDP"), 4, 9.5)  # most recent, new backend: moves to that backend's list
    assert t.count(3) == 0 and t.count(4) == 1
    t.insert(*conn(4, "UDP"), 5, 9.5)  # full: evicts conn 1, the least recently used
    assert t.lookup(*conn(1, "UDP"), 9.5) == -1
    assert t.expire(15.0) == 0 and t.lookup(*conn(2, "UDP"), 15.0) == 2
    assert t.expire(30.0) == 3 and len(t) == 0
    if mod is _conntrack_c:
        t._check()


def test_batch_reinsert_of_the_same_rows_keeps_the_table_consistent(mod):
    src = np.arange(1, 201, dtype=np.uint32)
    sport = np.full(200, 1000)
    t = mod.ConnTable(300)
    for now, b in ((0.0, 1), (1.0, 1), (2.0, 2)):
        t.insert_many("TCP", src, sport, src, 80, np.full(200, b, dtype=np.int32), now)
    assert t.count(1) == 0 and t.count(2) == 200
    assert t.lookup_many("TCP", src, sport, src, 80, 3.0).tolist() == [2] * 200
    assert [e[1] for e in t.entries()][:2] == ["0.0.0.1", "0.0.0.2"]
    if mod is _conntrack_c:
        t._check()


# -- a single insert completes on the table's next use: every reader sees it at once -------------

READERS = {
    "len": lambda t: len(t) == 1,
    "lookup": lambda t: t.lookup(*conn(1), 1.0) == 7,
    "contains": lambda t: conn(1) in t,
    "count": lambda t: t.count(7) == 1,
    "entries": lambda t: [e[5] for e in t.entries()] == [7],
    "purge_backend": lambda t: t.purge_backend(7) == 1 and len(t) == 0,
    "expire": lambda t: t.expire(86401.0) == 1 and len(t) == 0,
    "close": lambda t: t.close(*conn(1), 1.0) is True,
    "remove": lambda t: t.remove(*conn(1)) is True and len(t) == 0,
    "lookup_many": lambda t: t.lookup_many(
        "TCP", np.array([[10, 1, 0, 2]], dtype=np.uint8), 40001,
        np.array([[10, 96, 0, 10]], dtype=np.uint8), 80, 1.0).tolist() == [7],
    "insert_many": lambda t: t.insert_many(
        "TCP", np.array([[10, 1, 0, 3]], dtype=np.uint8), 40002,
        np.array([[10, 96, 0, 10]], dtype=np.uint8), 80, 8, 1.0) is None and len(t) == 2,
    "clear": lambda t: t.clear() is None and len(t) == 0 and t.lookup(*conn(1), 1.0) == -1,
}


@pytest.mark.parametrize("reader", sorted(READERS))
def test_the_last_insert_is_seen_by_every_reader(mod, reader):
    t = mod.ConnTable(4)
    t.insert(*conn(1), 7, 0.0)
    assert READERS[reader](t)
    if mod is _conntrack_c:
        t._check()


def test_an_insert_followed_by_a_full_table_evicts_in_call_order(mod):
    t = mod.ConnTable(2)
    t.insert(*conn(1), 1, 0.0)
    t.insert(*conn(2), 2, 1.0)
    t.insert(*conn(1), 1, 2.0)  # conn 1 most recent again
    t.insert(*conn(3), 3, 3.0)  # full: evicts conn 2
    assert [t.lookup(*conn(i), 4.0) for i in (1, 2, 3)] == [1, -1, 3]


def test_an_insert_pending_across_a_clock_rebase_keeps_its_age():
    # the second insert's time moves the compiled table's epoch forward (past ~37 days), which
    # drops every entry idle for longer than any timeout: the first insert, still pending, must
    # be one of them, not start afresh in the new epoch
    t = _conntrack_c.ConnTable(4, tcp_timeout=2_000_000)
    start = 1_700_000_000.0
    t.insert(*conn(1), 1, start)
    t.insert(*conn(2), 2, start + 38 * 86400.0)
    assert len(t) == 1 and t.count(1) == 0
    assert t.lookup(*conn(1), start + 38 * 86400.0) == -1
    assert t.lookup(*conn(2), start + 38 * 86400.0) == 2
    t._check()


def test_batch_insert_grows_the_per_backend_lists_to_its_largest_id(mod):
    t = mod.ConnTable(8)
    src = np.array([1, 2, 3], dtype=np.uint32)
    t.insert_many("TCP", src, 5, src, 80, np.array([7, 5_000_000, 0], dtype=np.int32), 1.0)
    t.insert_many("TCP", np.array([4], dtype=np.uint32), 5, src[:1], 80, 8_000_000, 1.0)
    assert [t.count(b) for b in (0, 7, 5_000_000, 8_000_000)] == [1, 1, 1, 1]
    assert t.purge_backend(5_000_000) == 1 and len(t) == 3
    if mod is _conntrack_c:
        t._check()


# -- lookup and insert are plain methods in every call shape (compiled table) ------------------------


def test_bound_lookup_and_insert_behave_like_methods():
    import sys

    t = _conntrack_c.ConnTable(64)
    insert, lookup = t.insert, t.lookup
    assert lookup.__self__ is t and lookup.__name__ == "lookup" and "backend" in lookup.__doc__
    assert "lookup" in repr(lookup) and "lookup" in repr(_conntrack_c.ConnTable.lookup)
    insert(*conn(1), 3, 0.0)
    assert _conntrack_c.ConnTable.lookup(t, *conn(1), 1.0) == 3
    assert t.lookup(proto="TCP", src=conn(1)[1], sport=conn(1)[2], dst=conn(1)[3],
                    dport=80, now=1.0) == 3
    # many bound methods alive at once, each bound to its own table
    tables = [_conntrack_c.ConnTable(4) for _ in range(40)]
    bound = [x.insert for x in tables]
    for i, f in enumerate(bound):
        f(*conn(i), i, 0.0)
    assert [x.lookup(*conn(i), 0.0) for i, x in enumerate(tables)] == list(range(40))
    refs = sys.getrefcount(t)
    for _ in range(1000):
        t.lookup(*conn(1), 1.0)
        t.insert(*conn(2), 1, 1.0)
    assert sys.getrefcount(t) == refs


def test_a_bound_method_keeps_its_table_alive():
    lookup = _conntrack_c.ConnTable(4).lookup
    insert = lookup.__self__.insert
    insert(*conn(1), 2, 0.0)
    assert lookup(*conn(1), 1.0) == 2


def test_calling_a_table_method_on_something_else_is_a_type_error():
    with pytest.raises(TypeError):
        _conntrack_c.ConnTable.lookup(object(), *conn(1), 0.0)
    with pytest.raises(TypeError):
        _conntrack_c.ConnTable.insert()
    with pytest.raises(TypeError):
        _conntrack_c.ConnTable(4).lookup(*conn(1))  # no time


def test_every_call_shape_of_lookup_and_insert_gives_the_same_answer_and_errors():
    import sys

    class Seconds(float):
        pass

    t = _conntrack_c.ConnTable(64)
    src, dst = conn(1)[1], conn(1)[3]
    args = ("TCP", src, conn(1)[2], dst, 80)
    t.lookup(*args, 0.0)  # the table module keeps the last destination it parsed
    refs = [sys.getrefcount(x) for x in (t, src, dst)]
    # positional with a float time (the direct path), an int time, a float subclass, keywords
    for i, now in enumerate((1.0, 2, Seconds(3.0), np.float64(4.0))):
        t.insert(*args, i, now)
        assert t.lookup(*args, now) == i
    t.insert(*args, backend=7, now=5.0)
    assert t.lookup(*args, now=5.0) == 7 and len(t) == 1
    assert [sys.getrefcount(x) for x in (t, src, dst)] == refs
    for bad_now in (float("nan"), "1.0", None):
        with pytest.raises((TypeError, ValidationError)):
            t.lookup(*args, bad_now)
        with pytest.raises((TypeError, ValidationError)):
            t.insert(*args, 1, bad_now)
    with pytest.raises(ValidationError, match="sport"):
        t.lookup("TCP", src, -1, dst, 80, 1.0)
    with pytest.raises(ValidationError, match="backend"):
        t.insert(*args, -1, 1.0)
    with pytest.raises(TypeError):
        t.lookup(*args, 1.0, 2.0)  # one too many
    with pytest.raises(TypeError):
        t.insert(*args, 1.0)  # no backend
    assert t.lookup(*args, 6.0) == 7 and len(t) == 1


@pytest.mark.compiled
def test_the_compiled_picker_and_the_tables_agree_on_where_keys_live():
    # the Picker's core probes and inserts with the hash it computes itself (ct_hash); the
    # tables' own methods and their index upkeep on removal must find the same slots
    from lbcore import EndpointInfo, Picker

    p = Picker(compiled=True, algorithm="round_robin", capacity=64, session_affinity="ClientIP")
    p.update([EndpointInfo(f"10.0.0.{i}", 8080) for i in range(1, 5)])
    conns = [conn(i) for i in range(40)]
    picked = [p.pick(*c, now=1.0) for c in conns]
    table, affinity = p._conns, p._affinity
    table._check()
    affinity._check()
    assert all(c in table for c in conns) and len(table) == 40
    assert [affinity.lookup(c[1], 1.0) >= 0 for c in conns] == [True] * 40
    for c in conns[::2]:
        assert table.remove(*c)
    table._check()
    assert [p.pick(*c, now=2.0) for c in conns[1::2]] == picked[1::2]
    assert len(table) == 20


def test_each_table_hashes_keys_with_its_own_secret():
    # the index's layout follows a per-table random seed, so a client cannot work out ports or
    # addresses that pile up in one probe run of every table
    keys = [conn(i) for i in range(200)]
    layouts = []
    for _ in range(2):
        t = _conntrack_c.ConnTable(1024)
        for i, k in enumerate(keys):
            t.insert(*k, i, 1.0)
        t._check()
        layouts.append([t._slot(k) for k in keys])
        assert -1 not in layouts[-1] and t._slot(conn(999)) == -1
        assert [t.lookup(*k, 2.0) for k in keys] == list(range(200))
    assert layouts[0] != layouts[1]
