"""Type stub of the compiled connection and affinity tables.

Keys are packed inside: an address is 16 bytes (IPv4 as ``::ffff:a.b.c.d``, so the IPv4 and the
IPv4-mapped IPv6 spelling of a peer are the same key). Times are float seconds from any clock the
caller chooses, kept to the millisecond. Every method runs to completion under the GIL.

Batch column layout (``lookup_many`` / ``insert_many``), n rows:

- ``proto``: "TCP" / "UDP" / "SCTP" / a number for every row, or uint8 (n,) IANA numbers;
- ``src``, ``dst``: uint8 (n, 16) IPv6 or IPv4-mapped, uint8 (n, 4) IPv4 in network order, or
  uint32 (n,) IPv4 as integers (``int(ipaddress.IPv4Address(...))``);
- ``sport``, ``dport``: integer (n,) arrays (uint16 is used as is), or one port for every row;
- ``backend`` (insert only): int32 (n,) ids 0..8388607, or one id for every row;
- result of ``lookup_many``: int32 (n,), the backend id or -1.
"""

from typing import Any

import numpy as np
import numpy.typing as npt
from typing_extensions import disjoint_base

_Address = str | bytes | Any  # str, packed bytes (4 or 16), or an ipaddress object
_Protocol = str | int

MAX_TIMEOUT: float
PROTOCOLS: dict[str, int]

@disjoint_base
class _FlatTable:
    @property
    def capacity(self) -> int: ...
    def __len__(self) -> int: ...
    def purge_backend(self, backend: int) -> int:
        """Remove every entry that points at ``backend``; return how many went."""
    def expire(self, now: float) -> int:
        """Remove every entry idle for at least its timeout at ``now``; return how many went."""
    def count(self, backend: int) -> int:
        """Entries that point at ``backend`` (expired ones count until they are removed)."""
    def clear(self) -> None:
        """Remove every entry and forget the epoch."""
    def memory_bytes(self) -> int:
        """Bytes held in C: the entry slab, the index and the per-backend arrays."""

class ConnTable(_FlatTable):
    """(protocol, source, source port, destination, destination port) -> backend id."""

    def __init__(
        self,
        capacity: int,
        tcp_timeout: float = 86400.0,
        tcp_closing_timeout: float = 120.0,
        udp_timeout: float = 30.0,
    ) -> None: ...
    @property
    def timeouts(self) -> dict[str, float]: ...
    def lookup(
        self, proto: _Protocol, src: _Address, sport: int, dst: _Address, dport: int, now: float
    ) -> int:
        """The backend of this connection, or -1; a hit refreshes its timer."""
    def insert(
        self,
        proto: _Protocol,
        src: _Address,
        sport: int,
        dst: _Address,
        dport: int,
        backend: int,
        now: float,
    ) -> None:
        """Track this connection as going to ``backend`` (replacing any entry of the same key)."""
    def close(
        self, proto: _Protocol, src: _Address, sport: int, dst: _Address, dport: int, now: float
    ) -> bool:
        """The connection ended: TCP/SCTP move to the closing timeout, UDP and others go."""
    def remove(self, proto: _Protocol, src: _Address, sport: int, dst: _Address, dport: int) -> bool:
        """Forget this connection at once; return whether it was there."""
    def __contains__(self, key: tuple[_Protocol, _Address, int, _Address, int], /) -> bool: ...
    def _slot(self, key: tuple[_Protocol, _Address, int, _Address, int]) -> int:
        """The index slot holding ``key``, or -1 (for tests of the index's layout)."""
    def lookup_many(
        self, proto: Any, src: npt.ArrayLike, sport: npt.ArrayLike, dst: npt.ArrayLike,
        dport: npt.ArrayLike, now: float,
    ) -> npt.NDArray[np.int32]:
        """Look up a batch (see the column layout above)."""
    def insert_many(
        self, proto: Any, src: npt.ArrayLike, sport: npt.ArrayLike, dst: npt.ArrayLike,
        dport: npt.ArrayLike, backend: npt.ArrayLike | int, now: float,
    ) -> None:
        """Insert a batch, in row order (see the column layout above)."""
    def entries(self) -> list[tuple[_Protocol, str, int, str, int, int, bool]]:
        """Every entry, each timeout class from least to most recently used."""

class AffinityTable(_FlatTable):
    """ClientIP session affinity: client address -> backend id, refreshed on use."""

    def __init__(self, capacity: int, timeout: float = 10800.0) -> None: ...
    @property
    def timeout(self) -> float: ...
    def lookup(self, client: _Address, now: float) -> int:
        """The backend this client is bound to, or -1; a hit refreshes the binding."""
    def insert(self, client: _Address, backend: int, now: float) -> None:
        """Bind ``client`` to ``backend`` as of ``now``."""
    def remove(self, client: _Address) -> bool:
        """Forget ``client``'s binding; return whether there was one."""
    def entries(self) -> list[tuple[str, int]]:
        """Every binding, least recently used first."""

def pack_address(addr: _Address) -> bytes:
    """The 16 bytes a table keys ``addr`` by."""

def entry_size() -> int:
    """Bytes of one slab entry."""
