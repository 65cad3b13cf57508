"""The compiled tables against the readable twin, step for step (hypothesis state machines).

Small capacities and a handful of keys keep the table full and the probe runs crowded, so LRU
eviction, expiry, purge and backward-shift deletion all run many times in every example.
"""

from __future__ import annotations

import socket

from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from lbcore.core import _conntrack_c, _conntrack_py

ADDRS = ["10.0.0.1", "10.0.0.2", "fd00::1", "fd00::2", "::ffff:10.0.0.1"]
keys = st.tuples(
    st.sampled_from(["TCP", "UDP", "SCTP", 1]),
    st.sampled_from(ADDRS),
    st.integers(1000, 1003),
    st.sampled_from(["10.96.0.1", "fd96::1"]),
    st.sampled_from([80, 443]),
)
backends = st.integers(0, 5)
# steps of whole and fractional milliseconds, sometimes past a timeout
steps = st.one_of(st.floats(0, 3.0), st.sampled_from([0.0, 0.001, 5.0, 10.0, 30.0, 60.0]))


class ConnTableMatchesModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.capacity = 6
        args = dict(tcp_timeout=20.0, tcp_closing_timeout=4.0, udp_timeout=7.5)
        self.c = _conntrack_c.ConnTable(self.capacity, **args)
        self.py = _conntrack_py.ConnTable(self.capacity, **args)
        self.now = 1000.0

    @rule(dt=steps)
    def tick(self, dt: float) -> None:
        self.now += dt

    @rule(key=keys, backend=backends)
    def insert(self, key, backend) -> None:
        self.c.insert(*key, backend, self.now)
        self.py.insert(*key, backend, self.now)

    @rule(key=keys)
    def lookup(self, key) -> None:
        assert self.c.lookup(*key, self.now) == self.py.lookup(*key, self.now)

    @rule(key=keys)
    def close(self, key) -> None:
        assert self.c.close(*key, self.now) == self.py.close(*key, self.now)

    @rule(key=keys)
    def remove(self, key) -> None:
        assert self.c.remove(*key) == self.py.remove(*key)

    @rule(backend=backends)
    def purge(self, backend) -> None:
        assert self.c.purge_backend(backend) == self.py.purge_backend(backend)

    @rule()
    def expire(self) -> None:
        assert self.c.expire(self.now) == self.py.expire(self.now)

    @precondition(lambda self: len(self.py) > 0)
    @rule(data=st.data())
    def lookup_many_known(self, data) -> None:
        import numpy as np

        from lbcore.core._conntrack_py import pack_address, pack_proto

        entries = self.py.entries()
        picked = data.draw(st.lists(st.sampled_from(entries), min_size=1, max_size=4))
        cols = list(zip(*[(pack_proto(e[0]), pack_address(e[1]), e[2], pack_address(e[3]), e[4])
                          for e in picked], strict=True))
        proto = np.array(cols[0], dtype=np.uint8)
        src = np.frombuffer(b"".join(cols[1]), dtype=np.uint8).reshape(-1, 16)
        dst = np.frombuffer(b"".join(cols[3]), dtype=np.uint8).reshape(-1, 16)
        got = self.c.lookup_many(proto, src, list(cols[2]), dst, list(cols[4]), self.now)
        want = self.py.lookup_many(proto, src, list(cols[2]), dst, list(cols[4]), self.now)
        assert got.tolist() == want.tolist()

    @invariant()
    def same_entries_in_same_order(self) -> None:
        assert len(self.c) == len(self.py) <= self.capacity
        assert self.c.entries() == self.py.entries()
        assert [self.c.count(b) for b in range(6)] == [self.py.count(b) for b in range(6)]
        assert all(e[:5] in self.c for e in self.py.entries())
        self.c._check()


class AffinityTableMatchesModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.c = _conntrack_c.AffinityTable(4, timeout=10.0)
        self.py = _conntrack_py.AffinityTable(4, timeout=10.0)
        self.now = 0.0

    @rule(dt=steps)
    def tick(self, dt: float) -> None:
        self.now += dt

    @rule(client=st.sampled_from(ADDRS + ["10.0.0.3", "fd00::3"]), backend=backends)
    def insert(self, client, backend) -> None:
        self.c.insert(client, backend, self.now)
        self.py.insert(client, backend, self.now)

    @rule(client=st.sampled_from(ADDRS + ["10.0.0.3", "fd00::3"]))
    def lookup(self, client) -> None:
        assert self.c.lookup(client, self.now) == self.py.lookup(client, self.now)

    @rule(backend=backends)
    def purge(self, backend) -> None:
        assert self.c.purge_backend(backend) == self.py.purge_backend(backend)

    @rule()
    def expire(self) -> None:
        assert self.c.expire(self.now) == self.py.expire(self.now)

    @invariant()
    def same_entries(self) -> None:
        assert self.c.entries() == self.py.entries()
        self.c._check()


TestConnTableMatchesModel = ConnTableMatchesModel.TestCase
TestConnTableMatchesModel.settings = settings(
    max_examples=100, stateful_step_count=50, deadline=None
)
TestAffinityTableMatchesModel = AffinityTableMatchesModel.TestCase
TestAffinityTableMatchesModel.settings = settings(
    max_examples=50, stateful_step_count=30, deadline=None
)


# -- address text: the compiled parser accepts exactly what inet_pton and the twin accept ---------

DOTTED = st.text(alphabet="0123456789.", min_size=0, max_size=17)
QUADS = st.tuples(*[st.integers(0, 255)] * 4).map(lambda q: ".".join(map(str, q)))
V6ISH = st.text(alphabet="0123456789abcdefABCDEF:.%", min_size=0, max_size=46)


def _packed_or_none(mod, text):
    from lbcore.errors import ValidationError

    try:
        return mod.pack_address(text)
    except ValidationError:
        return None


def _inet_pton_packed(text):
    """The 16 bytes inet_pton gives ``text`` (IPv4 mapped; with a ':' it may be IPv6), or None."""
    try:
        return b"\0" * 10 + b"\xff\xff" + socket.inet_pton(socket.AF_INET, text)
    except OSError:
        pass
    try:
        return socket.inet_pton(socket.AF_INET6, text)
    except OSError:
        return None


@settings(max_examples=3000, deadline=None)
@given(text=st.one_of(DOTTED, QUADS))
def test_dotted_quad_parser_agrees_with_inet_pton_and_the_twin(text):
    want = _inet_pton_packed(text)
    assert _packed_or_none(_conntrack_c, text) == want
    assert _packed_or_none(_conntrack_py, text) == want


# every length the parser reads whole (7 to 15), with the characters on either side of the
# digits ('/' and ':'), so a range check off by one shows
NEAR_DOTTED = st.text(alphabet="0123456789./: ", min_size=7, max_size=15)
ONE_SLIP = st.tuples(QUADS, st.integers(0, 14), st.sampled_from("/:. 0a")).map(
    lambda t: t[0][: t[1]] + t[2] + t[0][t[1] + 1:])


@settings(max_examples=3000, deadline=None)
@given(text=st.one_of(NEAR_DOTTED, ONE_SLIP))
def test_dotted_quad_parser_rejects_near_misses_as_inet_pton_does(text):
    assert _packed_or_none(_conntrack_c, text) == _inet_pton_packed(text)


@settings(max_examples=2000, deadline=None)
@given(text=st.one_of(V6ISH, st.ip_addresses(v=6).map(str)))
def test_ipv6_text_is_packed_as_the_twin_packs_it(text):
    assert _packed_or_none(_conntrack_c, text) == _packed_or_none(_conntrack_py, text)
