"""The Picker: one per service port, it answers "which endpoint takes this connection?".

A frontend (or any embedding proxy) calls ``pick`` with a connection's 5-tuple and gets an
``EndpointInfo`` back, or ``NO_ENDPOINTS``, which it turns into a refusal (kube-proxy's REJECT).
For every call, in this order:

1. the connection table: a connection (or UDP flow) already tracked stays on its endpoint while
   that endpoint is in the set, even when it is terminating or no longer ready;
2. for a new connection, ClientIP session affinity (when the service asks for it): the client's
   endpoint from the affinity table, if it still takes new connections; the binding is refreshed
   by every connection it sends, as kube-proxy's ``recent --set`` does, and lapses after the
   service's ``timeoutSeconds`` of disuse;
3. else the balancing algorithm, over the endpoints that take new connections, as
   ``lbcore.model.topology`` decides for every consumer (kube-proxy's rule: the ready ones, or,
   when none is ready, the serving and terminating ones; a ``Local`` traffic policy keeps this
   node's). An endpoint marked down (``mark_down``) is skipped unless every candidate is down.

Why the connection table comes before affinity (the Service spec reads "affinity, then
balancing"): affinity decides where a client's *new* connections go, and an open connection
must never move. In the kernel the same holds: conntrack answers every packet of a known flow
before any NAT rule runs, so kube-proxy's ``recent`` match (its ClientIP affinity) only ever
sees the first packet of a connection. Checking affinity first would move a tracked connection
whenever its client had been rebound meanwhile (its endpoint stopped taking new connections, or
the binding lapsed and was made again elsewhere), breaking it mid-stream; and a tracked
connection, the common case, costs one table probe instead of two.

``update(endpoints)`` applies a new endpoint set. Endpoints are identified by ``ip:port``:
survivors keep their ids (and their connections and affinity), the entries of removed ones are
purged at once.

Threads: a pick sees the endpoint set either before or after an update, never a mix, and a data
path thread may pick while the sync thread updates. ``update`` and ``expire`` take the core's
lock. In the compiled core, every entry point (``pick``, ``pick_index``, ``close``,
``mark_down``) holds the GIL and, from the moment it checks that no update holds the lock to its
return, runs no Python code, so nothing can switch threads in between: the GIL is the lock, and
the C lock (50 to 100 ns a pair) is only taken, with the GIL released while waiting, when an
update holds it. Code that changes the core must keep that rule: anything that can run Python
code (the clock, the exclusion list, parsing and its errors) comes before the check. The Python
core takes its ``threading.Lock`` on every call.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Collection, Iterable
from typing import Any

from lbcore.core import balancers
from lbcore.core._conntrack import AffinityTable, ConnTable
from lbcore.core._extensions import NO_EXTENSIONS
from lbcore.core._picker_py import NO_ENDPOINTS, NoEndpoints
from lbcore.core._picker_py import PickCore as _PickCorePy
from lbcore.errors import ConfigError
from lbcore.model.snapshot import EndpointInfo, ServicePortInfo
from lbcore.model.topology import Traffic, policy_is_local, takes_new_connections

__all__ = ["NO_ENDPOINTS", "NoEndpoints", "Picker"]


def _compiled_core() -> Any:
    if NO_EXTENSIONS:
        return None
    try:
        from lbcore.core import _picker_c
    except ImportError:  # pragma: no cover - an unbuilt checkout
        return None
    return _picker_c.PickCore


class Picker:
    """Chooses the endpoint of each connection to one service port.

    Order: the connection table, then ClientIP affinity, then the balancer. A tracked connection
    stays where it is even when its client has since been bound elsewhere (as in the kernel,
    where conntrack answers a known flow before kube-proxy's ``recent`` affinity rule is ever
    reached); affinity only places new connections. The module docstring gives the whole rule
    and the locking rule.

    :param service_port: the port's settings (session affinity and its timeout) and its first
        endpoint set; ``None`` to configure by keywords and ``update`` later.
    :param algorithm: a name from ``lbcore.core.balancers.available()``.
    :param capacity: most connections tracked at once (the least recently used go first).
    :param session_affinity: ``"None"`` or ``"ClientIP"``; overrides ``service_port``'s.
    :param affinity_timeout: seconds; overrides ``service_port``'s (10800 by default).
    :param tcp_timeout: idle seconds of an open TCP connection in the table.
    :param tcp_closing_timeout: idle seconds of a TCP connection after ``close``.
    :param udp_timeout: idle seconds of a UDP flow.
    :param clock: the time source when a call passes no ``now`` (``time.monotonic``).
    :param node_name: the node this proxy runs on, for a ``Local`` traffic policy (None: every
        endpoint counts as this node's).
    :param traffic: ``"internal"`` (to a ClusterIP: ``internalTrafficPolicy`` applies) or
        ``"external"`` (NodePort, external IPs: ``externalTrafficPolicy``).
    :param hash_key: what hashed algorithms (ring_hash, maglev, jump, rendezvous,
        bounded_load) hash: ``"client_ip"`` (a client stays on one endpoint, the default) or
        ``"five_tuple"`` (each connection on its own); see ``lbcore.core._policy_c``.
    :param options: the algorithm's options (``table_size`` for maglev, ...).
    """

    def __init__(
        self,
        service_port: ServicePortInfo | None = None,
        algorithm: str = "round_robin",
        capacity: int = 65536,
        *,
        session_affinity: str | None = None,
        affinity_timeout: float | None = None,
        affinity_capacity: int | None = None,
        tcp_timeout: float = 86400.0,
        tcp_closing_timeout: float = 120.0,
        udp_timeout: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        compiled: bool | None = None,
        node_name: str | None = None,
        traffic: Traffic = "internal",
        hash_key: str = "client_ip",
        **options: Any,
    ) -> None:
        if session_affinity is None:
            session_affinity = service_port.session_affinity if service_port else "None"
        if session_affinity not in ("None", "ClientIP"):
            raise ConfigError(f'session_affinity: must be "None" or "ClientIP", got {session_affinity!r}')
        if affinity_timeout is None:
            affinity_timeout = service_port.affinity_timeout if service_port else 10800
        if algorithm not in balancers.available():
            raise ConfigError(
                f"algorithm: unknown {algorithm!r}; available: {', '.join(balancers.available())}"
            )
        if traffic not in ("internal", "external"):
            raise ConfigError(f'traffic: must be "internal" or "external", got {traffic!r}')
        self.service_port = service_port
        # a Local policy keeps this node's endpoints only (None: no such policy)
        self._local_node = (
            node_name if service_port is not None and policy_is_local(service_port, traffic) else None
        )
        self.algorithm = algorithm
        self.session_affinity = session_affinity
        self._options = options
        self._conns = ConnTable(capacity, tcp_timeout, tcp_closing_timeout, udp_timeout)
        self._affinity = (
            AffinityTable(affinity_capacity or capacity, affinity_timeout)
            if session_affinity == "ClientIP"
            else None
        )
        # the compiled core takes only compiled balancers
        compiled_core: Any = _compiled_core() if balancers.COMPILED else None
        if compiled is None:
            compiled = compiled_core is not None and algorithm in balancers.builtin()
        if compiled and compiled_core is None:
            raise ConfigError("compiled: the compiled core is not available here")
        core_cls = compiled_core if compiled else _PickCorePy
        self.compiled = bool(compiled)
        self._core = core_cls(self._conns, self._affinity, clock, hash_key)
        self._clock = clock
        self._update_lock = threading.Lock()  # one update at a time; picks use the core's lock
        self._balancer: Any = None
        self._ids: dict[tuple[str, int], int] = {}
        self._eps: list[EndpointInfo | None] = []
        self._free: list[int] = []
        # the endpoints taking new connections, published in one assignment so that a reader
        # in another thread never pairs one update's ids with another's endpoints
        self._eligible: tuple[EndpointInfo, ...] = ()
        # the hot calls go straight to the core
        self.pick = self._core.pick  # type: ignore[method-assign]
        self.pick_index = self._core.pick_index  # type: ignore[method-assign]
        self.close = self._core.close  # type: ignore[method-assign]
        if service_port is not None:
            self.update(service_port.endpoints)

    # -- the data path (bound to the core in __init__; these document the calls) --------------------

    def pick(self, proto: str | int, src: Any, sport: int, dst: Any, dport: int,
             now: float | None = None, exclude: Collection[Any] | None = None
             ) -> EndpointInfo | NoEndpoints:
        """The endpoint for this connection, or ``NO_ENDPOINTS``.

        :param exclude: endpoints (or ids) not to use for it, e.g. one that refused it; a tracked
            connection on an excluded endpoint is moved to another one.
        """
        return self._core.pick(proto, src, sport, dst, dport, now, exclude)  # pragma: no cover

    def pick_index(self, proto: str | int, src: Any, sport: int, dst: Any, dport: int,
                   now: float | None = None, exclude: Collection[Any] | None = None) -> int:
        """As ``pick``, but the endpoint's id (``endpoint(i)``), or -1."""
        return self._core.pick_index(proto, src, sport, dst, dport, now, exclude)  # pragma: no cover

    def close(self, proto: str | int, src: Any, sport: int, dst: Any, dport: int,
              now: float | None = None) -> bool:
        """This connection ended: it leaves the live counts (least_conn) and the connection table
        keeps it for the closing timeout (TCP) or forgets it (UDP). False when it was not open."""
        return self._core.close(proto, src, sport, dst, dport, now)  # pragma: no cover

    release = close

    def mark_down(self, endpoint: EndpointInfo | str | int, seconds: float,
                  now: float | None = None) -> None:
        """Give ``endpoint`` (an EndpointInfo, ``ip:port`` or id) no new connection for ``seconds``
        (e.g. after it refused one); connections it has are untouched."""
        ident = self._id_of(endpoint)
        if ident is None:
            raise KeyError(f"endpoint: {endpoint!r} is not an endpoint of this picker")
        self._core.mark_down(ident, (self._clock() if now is None else now) + seconds)

    def _id_of(self, endpoint: EndpointInfo | str | int) -> int | None:
        if isinstance(endpoint, int):
            return endpoint if 0 <= endpoint < len(self._eps) and self._eps[endpoint] else None
        if isinstance(endpoint, str):
            ip, _, port = endpoint.rpartition(":")
            return self._ids.get((ip.strip("[]"), int(port)))
        return self._ids.get((endpoint.ip, endpoint.port))

    # -- the sync path -----------------------------------------------------------------------------

    def update(self, endpoints: Iterable[EndpointInfo]) -> None:
        """Apply a new endpoint set: survivors (same ``ip:port``) keep their ids, connections and
        affinity; the entries of removed endpoints are purged."""
        new: dict[tuple[str, int], EndpointInfo] = {}
        for ep in endpoints:
            new[(ep.ip, ep.port)] = ep
        with self._update_lock:
            eps = list(self._eps)
            ids = dict(self._ids)
            removed = [ids.pop(addr) for addr in list(ids) if addr not in new]
            for ident in removed:
                eps[ident] = None
            free = sorted(set(self._free) | set(removed), reverse=True)
            for addr, ep in new.items():
                known = ids.get(addr)
                if known is None:
                    known = free.pop() if free else len(eps)
                    if known == len(eps):
                        eps.append(None)
                    ids[addr] = known
                eps[known] = ep
            allowed = set(takes_new_connections(new.values(), self._local_node))
            eligible = [i for i, ep in enumerate(eps) if ep is not None and ep in allowed]
            self._core.lock()
            try:
                # the balancer changes in place (it keeps its structure and live counts), so
                # only under the lock the picks take
                balancer = self._balancer_for([eps[i] for i in eligible])  # type: ignore[misc]
                self._core.install(eps, ids, eligible, balancer)
                for ident in removed:
                    self._conns.purge_backend(ident)
                    if self._affinity is not None:
                        self._affinity.purge_backend(ident)
            finally:
                self._core.unlock()
            self._eps, self._ids, self._free, self._balancer = eps, ids, free, balancer
            self._eligible = tuple(eps[i] for i in eligible)  # type: ignore[misc]

    def _balancer_for(self, eligible: list[EndpointInfo]) -> Any:
        if not eligible:
            return None
        names = [ep.address for ep in eligible]
        weights: list[float] | None = [float(ep.weight) for ep in eligible]
        if all(w == 1.0 for w in weights) or not any(w > 0 for w in weights):  # type: ignore[union-attr]
            weights = None
        if self._balancer is not None:
            self._balancer.update(names, weights)
            return self._balancer
        return balancers.create(self.algorithm, names, weights, **self._options)

    # -- views -------------------------------------------------------------------------------------

    def endpoint(self, ident: int) -> EndpointInfo:
        """The endpoint with id ``ident``."""
        ep = self._eps[ident] if 0 <= ident < len(self._eps) else None
        if ep is None:
            raise KeyError(f"endpoint id {ident} is not in use")
        return ep

    @property
    def endpoints(self) -> tuple[EndpointInfo, ...]:
        """The current endpoints, by id."""
        return tuple(ep for ep in self._eps if ep is not None)

    @property
    def eligible(self) -> tuple[EndpointInfo, ...]:
        """The endpoints that take new connections now (``lbcore.model.topology``'s rule)."""
        return self._eligible

    @property
    def connections(self) -> Any:
        """The connection table (``lbcore.ConnTable``)."""
        return self._conns

    @property
    def affinity(self) -> Any:
        """The ClientIP affinity table, or None when the service has no session affinity."""
        return self._affinity

    def expire(self, now: float | None = None) -> int:
        """Drop idle connections and lapsed affinities; return how many entries went."""
        now = self._clock() if now is None else now
        self._core.lock()
        try:
            gone = self._conns.expire(now)
            if self._affinity is not None:
                gone += self._affinity.expire(now)
            return gone
        finally:
            self._core.unlock()
