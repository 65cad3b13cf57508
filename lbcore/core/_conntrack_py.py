"""Readable twin of ``lbcore.core._conntrack_c``: the same tables with Python dicts.

It answers exactly as the compiled tables do, decision for decision (which entry a full table
evicts, when an entry expires, what a purge removes), so the tests hold the compiled tables to it.
Times are kept to the millisecond, as in the compiled tables.
"""

from __future__ import annotations

import ipaddress
import sys
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from lbcore.errors import Cause, ConfigError, ValidationError

MAX_CAPACITY = 0xFFFFFE
MAX_BACKEND = 0x7FFFFF
MAX_TIMEOUT = 2147483.0
PROTOCOLS = {"TCP": 6, "UDP": 17, "SCTP": 132}
_PROTOCOL_NAMES = {6: "TCP", 17: "UDP", 132: "SCTP"}

ESTABLISHED, CLOSING, DATAGRAM = 0, 1, 2
# classes in the order expiry visits them and eviction breaks ties
_ORDER = (CLOSING, DATAGRAM, ESTABLISHED)

Key = tuple[int, bytes, int, bytes, int]


def _invalid(field: str, value: Any, why: str) -> ValidationError:
    return ValidationError("ConnTable", "key", [Cause(field, "FieldValueInvalid", f"{value!r}: {why}")])


def pack_proto(proto: str | int) -> int:
    """Protocol as "TCP" / "UDP" / "SCTP" (any case) or an IANA number 0..255."""
    if isinstance(proto, str):
        number = PROTOCOLS.get(proto.upper())
        if number is None:
            raise _invalid("proto", proto, 'must be "TCP", "UDP", "SCTP" or a number 0..255')
        return number
    if isinstance(proto, int) and not isinstance(proto, bool):
        if not 0 <= proto <= 255:
            raise _invalid("proto", proto, "must be a protocol number 0..255")
        return proto
    raise _invalid("proto", proto, 'must be "TCP", "UDP", "SCTP" or a number 0..255')


def pack_address(addr: Any, field: str = "addr") -> bytes:
    """The 16 bytes a table keys ``addr`` by (IPv4 as ``::ffff:a.b.c.d``)."""
    if isinstance(addr, str):
        try:
            parsed = ipaddress.ip_address(addr)
        except ValueError:
            raise _invalid(field, addr, "not an IPv4 or IPv6 address") from None
        if isinstance(parsed, ipaddress.IPv6Address) and parsed.scope_id:
            raise _invalid(field, addr, "not an IPv4 or IPv6 address")
        return pack_address(parsed.packed, field)
    if isinstance(addr, bytes):
        if len(addr) == 4:
            return b"\0" * 10 + b"\xff\xff" + addr
        if len(addr) == 16:
            return addr
        raise _invalid(field, addr, "packed address must be 4 or 16 bytes")
    if isinstance(addr, ipaddress.IPv4Address | ipaddress.IPv6Address):
        return pack_address(addr.packed, field)
    raise _invalid(field, addr, "must be an address string or packed bytes")


def _port(port: Any, field: str) -> int:
    if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
        raise _invalid(field, port, "must be a port number 0..65535")
    return port


def _key(proto: Any, src: Any, sport: Any, dst: Any, dport: Any) -> Key:
    return (
        pack_proto(proto),
        pack_address(src, "src"),
        _port(sport, "sport"),
        pack_address(dst, "dst"),
        _port(dport, "dport"),
    )


def _check_backend(backend: Any) -> int:
    if not isinstance(backend, int) or not 0 <= backend <= MAX_BACKEND:
        raise _invalid("backend", backend, f"must be a backend id 0..{MAX_BACKEND}")
    return int(backend)


def _timeout_ms(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= MAX_TIMEOUT:
        raise ConfigError(f"{name}: must be seconds in (0, {MAX_TIMEOUT:g}], got {value!r}")
    return int(value * 1000)


def _addr_str(packed: bytes) -> str:
    a = ipaddress.IPv6Address(packed)
    return str(a.ipv4_mapped) if a.ipv4_mapped is not None else str(a)


def _addresses16(addrs: Any, field: str, n: int) -> npt.NDArray[np.uint8]:
    """A batch of addresses as an (n, 16) uint8 array: from uint8 (n, 16) or (n, 4), or uint32
    (n,) IPv4 in host order."""
    a = np.asarray(addrs)
    if a.ndim == 1 and a.dtype == np.uint32:
        a = a.astype(">u4").view(np.uint8).reshape(-1, 4)
    if a.ndim == 2 and a.dtype == np.uint8 and a.shape[1] == 4:
        out = np.zeros((a.shape[0], 16), dtype=np.uint8)
        out[:, 10:12] = 0xFF
        out[:, 12:] = a
        a = out
    if not (a.ndim == 2 and a.dtype == np.uint8 and a.shape[1] == 16):
        raise _invalid(field, f"array{a.shape} of {a.dtype}",
                       "must be uint8 (n, 4) or (n, 16), or uint32 (n,) IPv4")
    if a.shape[0] != n:
        raise _invalid(field, f"{a.shape[0]} rows", f"every column needs {n} rows")
    return a


def _column(values: Any, field: str, n: int, dtype: Any, lo: int, hi: int) -> npt.NDArray[Any]:
    a = np.asarray(values)
    if a.ndim == 0:
        a = np.full(n, a)
    if a.ndim != 1 or a.shape[0] != n:
        raise _invalid(field, f"array{a.shape}", f"must be a scalar or {n} values")
    if a.dtype != dtype:
        if a.dtype.kind not in "iu" or (n and (a.min() < lo or a.max() > hi)):
            raise _invalid(field, f"array of {a.dtype}", f"must be integers {lo}..{hi}")
        a = a.astype(dtype)
    return a


def _protocols(proto: Any, n: int) -> npt.NDArray[np.uint8]:
    if isinstance(proto, str | int):
        return np.full(n, pack_proto(proto), dtype=np.uint8)
    return _column(proto, "proto", n, np.uint8, 0, 255)


@dataclass
class _Entry:
    backend: int
    stamp: int
    closing: bool = False


class _FlatTable:
    """Shared core: one LRU-ordered dict per timeout class, one key set per backend."""

    _order: tuple[int, ...] = _ORDER

    def __init__(self, capacity: int) -> None:
        if not isinstance(capacity, int) or isinstance(capacity, bool) or not (
            1 <= capacity <= MAX_CAPACITY
        ):
            raise ConfigError(f"capacity: must be an integer 1..{MAX_CAPACITY}, got {capacity!r}")
        self.capacity = capacity
        self._timeout_ms = [0, 0, 0]
        self.clear()

    def clear(self) -> None:
        """Remove every entry and forget the epoch."""
        self._entries: dict[Key, _Entry] = {}
        self._classes: list[OrderedDict[Key, None]] = [OrderedDict() for _ in range(3)]
        self._by_backend: dict[int, dict[Key, None]] = {}
        self._epoch: float | None = None

    # the clock, to the millisecond since the first time given
    def _now_ms(self, now: float) -> int:
        now = float(now)
        if now != now or now in (float("inf"), float("-inf")):
            raise _invalid("now", now, "must be a finite number of seconds")
        if self._epoch is None:
            self._epoch = now
        d = (now - self._epoch) * 1000.0
        return int(d) if d > 0 else 0

    def _class_of(self, key: Key, entry: _Entry) -> int:
        if entry.closing:
            return CLOSING
        return ESTABLISHED if key[0] in (6, 132) else DATAGRAM

    def _expired(self, key: Key, entry: _Entry, now: int) -> bool:
        return max(0, now - entry.stamp) >= self._timeout_ms[self._class_of(key, entry)]

    def _drop(self, key: Key) -> None:
        entry = self._entries.pop(key)
        del self._classes[self._class_of(key, entry)][key]
        del self._by_backend[entry.backend][key]

    def _evict_one(self, now: int) -> None:
        heads = [(c, next(iter(self._classes[c]))) for c in self._order if self._classes[c]]
        for _, key in heads:
            if self._expired(key, self._entries[key], now):
                self._drop(key)
                return
        oldest = heads[0][1]
        for _, key in heads[1:]:
            if self._entries[key].stamp < self._entries[oldest].stamp:
                oldest = key
        self._drop(oldest)

    def _lookup(self, key: Key, now: int) -> int:
        entry = self._entries.get(key)
        if entry is None:
            return -1
        if self._expired(key, entry, now):
            self._drop(key)
            return -1
        entry.stamp = now
        self._classes[self._class_of(key, entry)].move_to_end(key)
        return entry.backend

    def _insert(self, key: Key, backend: int, now: int) -> None:
        entry = self._entries.get(key)
        if entry is not None:
            del self._classes[self._class_of(key, entry)][key]
            if entry.backend != backend:
                del self._by_backend[entry.backend][key]
                self._by_backend.setdefault(backend, {})[key] = None
            entry.backend, entry.stamp, entry.closing = backend, now, False
        else:
            if len(self._entries) == self.capacity:
                self._evict_one(now)
            entry = self._entries[key] = _Entry(backend, now)
            self._by_backend.setdefault(backend, {})[key] = None
        self._classes[self._class_of(key, entry)][key] = None

    def __len__(self) -> int:
        return len(self._entries)

    def purge_backend(self, backend: int) -> int:
        """Remove every entry that points at ``backend``; return how many went."""
        keys = list(self._by_backend.get(backend, ()))
        for key in keys:
            self._drop(key)
        return len(keys)

    def expire(self, now: float) -> int:
        """Remove every entry idle for at least its timeout at ``now``; return how many went."""
        t = self._now_ms(now)
        gone = 0
        for c in self._order:
            while self._classes[c]:
                key = next(iter(self._classes[c]))
                if not self._expired(key, self._entries[key], t):
                    break
                self._drop(key)
                gone += 1
        return gone

    def count(self, backend: int) -> int:
        """Entries that point at ``backend`` (expired ones count until they are removed)."""
        return len(self._by_backend.get(backend, ()))

    def memory_bytes(self) -> int:
        """Approximate bytes held by the dicts (not counting the shared key objects)."""
        return sys.getsizeof(self._entries) + sum(sys.getsizeof(d) for d in self._classes)

    def _ordered(self) -> list[tuple[Key, _Entry]]:
        return [(k, self._entries[k]) for c in self._order for k in self._classes[c]]


class ConnTable(_FlatTable):
    """Connection tracking: (protocol, source, source port, destination, destination port) ->
    backend id, for IPv4 and IPv6. See ``lbcore.core._conntrack_c.ConnTable``."""

    def __init__(
        self,
        capacity: int,
        tcp_timeout: float = 86400.0,
        tcp_closing_timeout: float = 120.0,
        udp_timeout: float = 30.0,
    ) -> None:
        super().__init__(capacity)
        self._timeout_ms = [
            _timeout_ms("tcp_timeout", tcp_timeout),
            _timeout_ms("tcp_closing_timeout", tcp_closing_timeout),
            _timeout_ms("udp_timeout", udp_timeout),
        ]

    @property
    def timeouts(self) -> dict[str, float]:
        """The idle timeouts in seconds, by name."""
        names = ("tcp_timeout", "tcp_closing_timeout", "udp_timeout")
        return {n: ms / 1000.0 for n, ms in zip(names, self._timeout_ms, strict=True)}

    def lookup(self, proto: str | int, src: Any, sport: int, dst: Any, dport: int, now: float) -> int:
        """The backend of this connection, or -1; a hit refreshes its timer."""
        return self._lookup(_key(proto, src, sport, dst, dport), self._now_ms(now))

    def insert(
        self, proto: str | int, src: Any, sport: int, dst: Any, dport: int, backend: int, now: float
    ) -> None:
        """Track this connection as going to ``backend`` (replacing any entry of the same key)."""
        key = _key(proto, src, sport, dst, dport)
        self._insert(key, _check_backend(backend), self._now_ms(now))

    def close(self, proto: str | int, src: Any, sport: int, dst: Any, dport: int, now: float) -> bool:
        """The connection ended: TCP/SCTP move to the closing timeout, UDP and others go.

        Returns whether an open entry was closed (False when absent, expired or closed already)."""
        key = _key(proto, src, sport, dst, dport)
        t = self._now_ms(now)
        entry = self._entries.get(key)
        if entry is None:
            return False
        c = self._class_of(key, entry)
        alive = not self._expired(key, entry, t)
        if alive and c == CLOSING:
            return False  # closed before: the first close started its timer
        if not alive or c == DATAGRAM:
            self._drop(key)
            return alive
        del self._classes[c][key]
        entry.closing, entry.stamp = True, t
        self._classes[CLOSING][key] = None
        return True

    def remove(self, proto: str | int, src: Any, sport: int, dst: Any, dport: int) -> bool:
        """Forget this connection at once; return whether it was there."""
        key = _key(proto, src, sport, dst, dport)
        if key not in self._entries:
            return False
        self._drop(key)
        return True

    def __contains__(self, key: tuple[Any, Any, int, Any, int]) -> bool:
        return _key(*key) in self._entries

    def _rows(self, proto: Any, src: Any, sport: Any, dst: Any, dport: Any) -> list[Key]:
        n = np.asarray(src).shape[0] if np.ndim(src) else 0
        if not np.ndim(src):
            raise _invalid("src", src, "a batch needs an array of addresses")
        s, d = _addresses16(src, "src", n), _addresses16(dst, "dst", n)
        sp = _column(sport, "sport", n, np.uint16, 0, 65535)
        dp = _column(dport, "dport", n, np.uint16, 0, 65535)
        p = _protocols(proto, n)
        return [
            (int(p[i]), bytes(s[i]), int(sp[i]), bytes(d[i]), int(dp[i])) for i in range(n)
        ]

    def lookup_many(
        self, proto: Any, src: Any, sport: Any, dst: Any, dport: Any, now: float
    ) -> npt.NDArray[np.int32]:
        """Look up a batch of connections (columns as in the compiled table)."""
        t = self._now_ms(now)
        rows = self._rows(proto, src, sport, dst, dport)
        return np.array([self._lookup(k, t) for k in rows], dtype=np.int32)

    def insert_many(
        self, proto: Any, src: Any, sport: Any, dst: Any, dport: Any, backend: Any, now: float
    ) -> None:
        """Insert a batch of connections, in row order."""
        t = self._now_ms(now)
        rows = self._rows(proto, src, sport, dst, dport)
        backends = np.broadcast_to(np.asarray(backend), (len(rows),))
        for key, b in zip(rows, backends, strict=True):
            self._insert(key, _check_backend(int(b)), t)

    def entries(self) -> list[tuple[Any, ...]]:
        """Every entry as ``(proto, src, sport, dst, dport, backend, closing)``, each timeout class
        (closing, UDP and others, open TCP/SCTP) from least to most recently used."""
        return [
            (_PROTOCOL_NAMES.get(k[0], k[0]), _addr_str(k[1]), k[2], _addr_str(k[3]), k[4],
             e.backend, e.closing)
            for k, e in self._ordered()
        ]


class AffinityTable(_FlatTable):
    """ClientIP session affinity: client address -> backend id, alive for ``timeout`` seconds
    after its last use. See ``lbcore.core._conntrack_c.AffinityTable``."""

    _order = (ESTABLISHED,)

    def __init__(self, capacity: int, timeout: float = 10800.0) -> None:
        super().__init__(capacity)
        self._timeout_ms = [_timeout_ms("timeout", timeout), 0, 0]

    def _class_of(self, key: Key, entry: _Entry) -> int:
        return ESTABLISHED

    @property
    def timeout(self) -> float:
        """The affinity timeout in seconds."""
        return self._timeout_ms[0] / 1000.0

    @staticmethod
    def _client(client: Any) -> Key:
        return (0, pack_address(client, "client"), 0, bytes(16), 0)

    def lookup(self, client: Any, now: float) -> int:
        """The backend this client is bound to, or -1; a hit refreshes the binding."""
        return self._lookup(self._client(client), self._now_ms(now))

    def insert(self, client: Any, backend: int, now: float) -> None:
        """Bind ``client`` to ``backend`` as of ``now``."""
        key = self._client(client)
        self._insert(key, _check_backend(backend), self._now_ms(now))

    def remove(self, client: Any) -> bool:
        """Forget ``client``'s binding; return whether there was one."""
        key = self._client(client)
        if key not in self._entries:
            return False
        self._drop(key)
        return True

    def entries(self) -> list[tuple[str, int]]:
        """Every binding as ``(client, backend)``, least recently used first."""
        return [(_addr_str(k[1]), e.backend) for k, e in self._ordered()]


def entry_size() -> int:
    """Not meaningful for the dict model; kept for the same API (the compiled entry's size)."""
    return 56
