"""The readable pick core: the connection table, ClientIP affinity, then the balancer.

The policy of a new connection and its hash key are ``lbcore.core._policy_c``'s (its module
docstring says why the client IP is the default key).

The compiled twin is ``lbcore.core._picker_c.PickCore``; the tests hold the two to each other.
Endpoints are opaque objects here, known by their id; ``lbcore.model.picker.Picker`` decides which
ids take new connections (the model's endpoint rule) and hands them over with ``install``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Collection
from typing import Any, Final

from lbcore.core._balancers_py import GOLDEN, MASK, mix64
from lbcore.core._conntrack_py import _port, pack_address, pack_proto
from lbcore.core._hashing import hash64

__all__ = ["NO_ENDPOINTS", "NoEndpoints", "PickCore"]

REPICKS = 4  # new picks before walking the balancer's order (lbcore.core._policy_c's)


class NoEndpoints:
    """The answer when a service port has no endpoint to take a new connection (a singleton)."""

    _instance: NoEndpoints | None = None

    def __new__(cls) -> NoEndpoints:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __bool__(self) -> bool:
        return False

    def __repr__(self) -> str:
        return "NO_ENDPOINTS"

    def __reduce__(self) -> str:
        return "NO_ENDPOINTS"


NO_ENDPOINTS: Final = NoEndpoints()


def client_ip_hash(client: bytes) -> int:
    """The hashed algorithms' default key: the hash of the client's IP, 4 bytes for IPv4 (held
    as ``::ffff:a.b.c.d`` in ``client``) and 16 for IPv6 (``lbcore.core._policy_c``)."""
    if client[:12] == b"\0" * 10 + b"\xff\xff":
        return hash64(client[12:])
    return hash64(client)


def _key_bytes(proto: Any, src: Any, sport: int, dst: Any, dport: int) -> tuple[bytes, bytes]:
    """The packed 5-tuple the balancer hashes (the same bytes the compiled core hashes), and the
    packed client address."""
    s = pack_address(src, "src")
    key = (
        s
        + pack_address(dst, "dst")
        + _port(sport, "sport").to_bytes(2, "little")
        + _port(dport, "dport").to_bytes(2, "little")
        + bytes([pack_proto(proto)])
    )
    return key, s


class PickCore:
    """The readable pick core: what the compiled ``lbcore.core._picker_c.PickCore`` does."""

    def __init__(self, conns: Any, affinity: Any, clock: Callable[[], float],
                 hash_key: str = "client_ip") -> None:
        if hash_key not in ("client_ip", "five_tuple"):
            raise ValueError(f'hash_key: must be "client_ip" or "five_tuple", got {hash_key!r}')
        self.five_tuple = hash_key == "five_tuple"
        self.conns = conns
        self.affinity = affinity
        self.clock = clock
        self._lock = threading.Lock()
        self.install([], {}, [], None)

    def lock(self) -> None:
        self._lock.acquire()

    def unlock(self) -> None:
        self._lock.release()

    def install(self, eps: list[Any], id_of: dict[tuple[str, int], int],
                bal_ids: list[int], balancer: Any) -> None:
        """Take a new endpoint set (call with the lock held)."""
        self.eps = list(eps)
        self.id_of = dict(id_of)
        self.bal_ids = list(bal_ids)
        self.bidx = [-1] * len(self.eps)
        for i, ident in enumerate(self.bal_ids):
            self.bidx[ident] = i
        self.balancer = balancer
        self.down = [0.0] * len(self.eps)

    def mark_down(self, ident: int, until: float) -> None:
        with self._lock:
            self.down[ident] = until

    def _excluded(self, exclude: Collection[Any] | None) -> set[int]:
        out: set[int] = set()
        for item in exclude or ():
            if isinstance(item, int):
                out.add(item)
            elif hasattr(item, "ip"):  # an endpoint (lbcore.EndpointInfo)
                ident = self.id_of.get((item.ip, item.port))
                if ident is not None:
                    out.add(ident)
        return out

    def _choose(self, h: int, excl: set[int], now: float) -> int:
        if self.balancer is None:
            return -1
        n = len(self.bal_ids)
        first = self.balancer.pick_hashed(h)
        if first < 0:
            return -1
        # the balancer asked again first, so a down endpoint's share is spread, not handed on
        i = first
        for attempt in range(REPICKS + 1):
            if attempt > 0:
                i = self.balancer.pick_hashed(mix64(h ^ ((attempt * GOLDEN) & MASK)))
                if not 0 <= i < n:
                    break
            ident = self.bal_ids[i]
            if ident not in excl and not self.down[ident] > now:
                return ident
        for honour_down in (True, False):
            for j in range(n):
                ident = self.bal_ids[(first + j) % n]
                if ident in excl or (honour_down and self.down[ident] > now):
                    continue
                return ident
        return -1

    def pick_index(self, proto: Any, src: Any, sport: int, dst: Any, dport: int,
                   now: float | None = None, exclude: Collection[Any] | None = None) -> int:
        key, client = _key_bytes(proto, src, sport, dst, dport)
        if now is None:
            now = self.clock()
        with self._lock:
            return self._pick_locked(proto, src, sport, dst, dport, key, client, now, exclude)

    def pick(self, proto: Any, src: Any, sport: int, dst: Any, dport: int,
             now: float | None = None, exclude: Collection[Any] | None = None) -> Any:
        key, client = _key_bytes(proto, src, sport, dst, dport)
        if now is None:
            now = self.clock()
        # the id is read back under the same lock: an update in between could empty its slot
        with self._lock:
            i = self._pick_locked(proto, src, sport, dst, dport, key, client, now, exclude)
            return NO_ENDPOINTS if i < 0 else self.eps[i]

    def _pick_locked(self, proto: Any, src: Any, sport: int, dst: Any, dport: int, key: bytes,
                     client: bytes, now: float, exclude: Collection[Any] | None) -> int:
        """pick_index with the lock held: the id, or -1."""
        excl = self._excluded(exclude)
        b = self.conns.lookup(proto, src, sport, dst, dport, now)
        if 0 <= b < len(self.eps) and self.eps[b] is not None and b not in excl:
            return b
        chosen = -1
        if self.affinity is not None:
            a = self.affinity.lookup(client, now)
            if (0 <= a < len(self.eps) and self.bidx[a] >= 0 and a not in excl
                    and not self.down[a] > now):
                chosen = a
        if chosen < 0:
            h = hash64(key) if self.five_tuple else client_ip_hash(client)
            chosen = self._choose(h, excl, now)
        if chosen < 0:
            return -1
        if 0 <= b < len(self.eps) and b != chosen and self.bidx[b] >= 0:
            self._release(self.bidx[b])
        self.conns.insert(proto, src, sport, dst, dport, chosen, now)
        if self.affinity is not None:
            self.affinity.insert(client, chosen, now)
        self.balancer.acquire(self.bidx[chosen])
        return chosen

    def _release(self, i: int) -> None:
        if self.balancer.active[i] > 0:
            self.balancer.release(i)

    def close(self, proto: Any, src: Any, sport: int, dst: Any, dport: int,
              now: float | None = None) -> bool:
        if now is None:
            now = self.clock()
        with self._lock:
            b = self.conns.lookup(proto, src, sport, dst, dport, now)
            if b < 0 or not self.conns.close(proto, src, sport, dst, dport, now):
                return False
            if b < len(self.bidx) and self.bidx[b] >= 0:
                self._release(self.bidx[b])
            return True
