"""Type stub of the Picker's compiled core (used through ``lbcore.Picker``)."""

from collections.abc import Callable, Collection
from typing import Any
from typing import Any as EndpointInfo

from typing_extensions import disjoint_base

from lbcore.core._conntrack_c import AffinityTable, ConnTable

@disjoint_base
class PickCore:
    """Connection table, affinity and balancer; see ``lbcore.model.picker``.

    Picks, closes and ``mark_down`` are serialized by the GIL alone while no ``lock()`` is held;
    while one is, they wait for it (with the GIL released)."""

    def __init__(
        self, conns: ConnTable, affinity: AffinityTable | None, clock: Callable[[], float]
    ) -> None: ...
    def lock(self) -> None:
        """Take the core's lock (waits with the GIL released); picks wait until ``unlock``."""
    def unlock(self) -> None:
        """Give the core's lock back."""
    def install(
        self,
        eps: list[EndpointInfo | None],
        id_of: dict[tuple[str, int], int],
        bal_ids: list[int],
        balancer: Any,
    ) -> None:
        """Take a new endpoint set (call with the lock held)."""
    def mark_down(self, ident: int, until: float) -> None:
        """No new connection for endpoint ``ident`` before ``until``."""
    def pick(
        self,
        proto: str | int,
        src: Any,
        sport: int,
        dst: Any,
        dport: int,
        now: float | None = None,
        exclude: Collection[Any] | None = None,
    ) -> Any:
        """The EndpointInfo for this connection, or NO_ENDPOINTS."""
    def pick_index(
        self,
        proto: str | int,
        src: Any,
        sport: int,
        dst: Any,
        dport: int,
        now: float | None = None,
        exclude: Collection[Any] | None = None,
    ) -> int:
        """The endpoint id for this connection, or -1."""
    def close(
        self, proto: str | int, src: Any, sport: int, dst: Any, dport: int, now: float | None = None
    ) -> bool:
        """This connection ended; False when it was not open."""
