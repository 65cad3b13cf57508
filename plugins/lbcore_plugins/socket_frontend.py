"""The ``socket`` frontend: a userspace TCP/UDP proxy on every ClusterIP service port.

For each service port it listens on the service's cluster IPs and port and relays each TCP
connection or UDP flow to an endpoint picked in the compiled data path
(:mod:`lbcore_plugins._proxy_c`). :class:`ProxyFrontend` keeps the engine's listeners and
endpoint tables in step with snapshots; the ``nodeport`` frontend reuses it with other
addresses and ports.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import shutil
import socket
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from typing import Any

from lbcore import (
    ConfigError,
    Frontend,
    FrontendUnavailable,
    RuntimeContext,
    ServicePortInfo,
    Snapshot,
    Traffic,
    balancers,
    endpoints_for,
    hookimpl,
    option,
    policy_is_local,
    raise_open_files_limit,
    read_options,
)

try:
    from lbcore_plugins._proxy_c import Engine
except ImportError as exc:  # pragma: no cover - only without a build
    Engine = None  # type: ignore[assignment,misc]
    _IMPORT_ERROR: ImportError | None = exc
else:
    _IMPORT_ERROR = None

PROTOCOLS = ("TCP", "UDP")


@dataclass(frozen=True)
class ProxyOptions:
    """The options of the ``socket`` and ``nodeport`` frontends (docs/frontends/socket.md)."""

    workers: int = option(2, least=1)
    algorithm: str = "round_robin"
    algorithm_options: dict[str, Any] = option({})
    hash_key: str = option("client_ip", choices=("client_ip", "five_tuple"))
    affinity_capacity: int = option(65536, least=1)
    connect_timeout: float = option(5.0, duration=True, least=0.001)
    server_timeout: float = option(60.0, duration=True)
    eject_after: int = option(5, least=1)
    max_ejected_share: float = option(0.5, least=0.0, most=1.0)
    idle_timeout: float = option(3600.0, duration=True)
    udp_idle_timeout: float = option(30.0, duration=True)
    retries: int = option(2, least=0)
    down_time: float = option(5.0, duration=True)
    max_connections: int = option(0, least=0)
    max_total_connections: int = option(0, least=0)
    backlog: int = option(4096, least=1)
    reuseport: bool = True
    buffer_size: int = option(16384, least=1)
    splice: str = "auto"
    pipe_size: int = option(1048576, least=1)
    udp_max_flows: int = option(65536, least=1)
    udp_max_client_flows: int = option(1024, least=1)
    udp_receive_buffer: int = option(4194304, least=0)

    @classmethod
    def from_options(cls, options: Mapping[str, Any], extra: Iterable[str] = ()) -> ProxyOptions:
        """Validate ``options`` (keys in ``extra`` belong to the frontend using the engine); a
        :class:`ConfigError` names the key and the value."""
        opts = read_options(cls, options, tuple(extra))
        opts.check_algorithm()
        return opts

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """The option names (those a frontend built on the engine passes through)."""
        return tuple(f.name for f in fields(cls))

    def check_algorithm(self) -> None:
        """The algorithm must be one ``lbcore.balancers.available()`` lists and take
        ``algorithm_options`` (tried on two stand-in backends)."""
        available = balancers.available()
        if self.algorithm not in available:
            raise ConfigError(f"algorithm: {self.algorithm!r} is not one of {', '.join(available)}")
        try:
            balancers.create(
                self.algorithm, ["192.0.2.1:1", "192.0.2.2:1"], **self.algorithm_options
            )
        except (TypeError, ValueError) as exc:
            raise ConfigError(
                f"algorithm_options: {self.algorithm_options!r} for {self.algorithm}: {exc}"
            ) from None

    def engine_kwargs(self) -> dict[str, Any]:
        return {
            "workers": self.workers,
            "buffer_size": self.buffer_size,
            "splice": self.splice,
            "pipe_size": self.pipe_size,
            "connect_timeout": self.connect_timeout,
            "idle_timeout": self.idle_timeout,
            "udp_idle_timeout": self.udp_idle_timeout,
            "retries": self.retries,
            "down_time": self.down_time,
            "server_timeout": self.server_timeout,
            "eject_after": self.eject_after,
            "max_ejected_share": self.max_ejected_share,
            "udp_max_flows": self.udp_max_flows,
            "udp_max_client_flows": self.udp_max_client_flows,
            "max_total_connections": self.max_total_connections,
        }


def endpoint_table(
    sp: ServicePortInfo, traffic: Traffic, node_name: str | None
) -> tuple[tuple[str, int, int, bool], ...]:
    """The ``(ip, port, weight, pickable)`` rows a service port's engine table gets.

    Pickable: what ``lbcore.endpoints_for`` says takes new ``traffic`` connections on this node.
    Other serving or terminating endpoints stay in the table, not pickable, so their
    established flows finish. Under a ``Local`` policy, other nodes' endpoints are left out.
    """
    pickable = set(endpoints_for(sp, traffic, node_name))
    local = node_name if policy_is_local(sp, traffic) else None
    return tuple(
        (e.ip, e.port, max(e.weight, 0), e in pickable)
        for e in sp.endpoints
        if (local is None or e.node_name == local) and (e in pickable or e.serving or e.terminating)
    )


def check_no_other_owner(address: str, port: int, protocol: str) -> None:
    """Raise EADDRINUSE when another socket already serves ``address:port``.

    Listeners share their port with ``SO_REUSEPORT`` (TCP) or ``SO_REUSEADDR`` (UDP), so a
    second daemon binding the same ClusterIP:port would succeed and the kernel would split the
    clients between the two. A probe bound without sharing fails while anyone else is there
    (for TCP with ``SO_REUSEADDR``, which passes over closed connections in TIME_WAIT but not a
    listening socket)."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    kind = socket.SOCK_STREAM if protocol == "TCP" else socket.SOCK_DGRAM
    with socket.socket(family, kind) as probe:
        if protocol == "TCP":
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            set_freebind(probe)
        try:
            probe.bind((address, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise OSError(errno.EADDRINUSE, "already served by another socket (another lbcore "
                              "daemon or program); refusing to share it") from None
            raise


def is_local(cidr: str) -> bool:
    """Whether this node accepts addresses of ``cidr`` as its own (a probe bind of one)."""
    net = ipaddress.ip_network(cidr, strict=False)
    probe_ip = str(net.network_address + 1) if net.num_addresses > 1 else str(net.network_address)
    family = socket.AF_INET6 if net.version == 6 else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind((probe_ip, 0))
        except OSError as exc:
            if exc.errno == errno.EADDRNOTAVAIL:
                return False
            raise
    return True


def local_route(action: str, cidr: str) -> list[str]:
    """The ``ip`` command that adds or deletes an AnyIP route making ``cidr`` local."""
    family = "-6" if ":" in cidr else "-4"
    return ["ip", family, "route", action, "local", cidr, "dev", "lo", "table", "local"]


def make_local(cidrs: Iterable[str], name: str) -> list[str]:
    """Make every service CIDR local, so the frontend can listen on its ClusterIPs: as root, with
    an AnyIP route on ``lo`` (the CIDRs this adds are returned, to delete at stop); otherwise a
    CIDR that is not local already is refused with what to do."""
    added: list[str] = []
    for cidr in cidrs:
        if is_local(cidr):
            continue
        if os.geteuid() != 0 or shutil.which("ip") is None:
            raise FrontendUnavailable(
                f"{name}: service CIDR {cidr} is not local to this node, so its ClusterIPs cannot "
                f"be listened on: run as root (lbcore then adds `{' '.join(local_route('add', cidr))}`"
                f" and removes it at stop), add that route yourself, or use a loopback range such "
                f"as 127.10.0.0/16"
            )
        result = subprocess.run(local_route("add", cidr), capture_output=True, text=True, timeout=30)
        if "File exists" in result.stderr:  # made local already (by someone else: theirs to keep)
            continue
        if result.returncode != 0:
            raise FrontendUnavailable(f"{name}: cannot make {cidr} local: {result.stderr.strip()}")
        added.append(cidr)
    return added


def set_freebind(sock: socket.socket) -> None:
    """Let an IPv6 socket bind an address no interface holds: a ClusterIP of a CIDR made local
    by an AnyIP route (IPv6, unlike IPv4, checks the interfaces' addresses, not the routes)."""
    try:
        sock.setsockopt(socket.IPPROTO_IPV6, IPV6_FREEBIND, 1)
    except OSError:  # kernels before 4.15: the IPv4 option covers IPv6 sockets too
        sock.setsockopt(socket.SOL_IP, IP_FREEBIND, 1)


IPV6_FREEBIND = getattr(socket, "IPV6_FREEBIND", 78)
IP_FREEBIND = getattr(socket, "IP_FREEBIND", 15)


def set_receive_buffer(sock: socket.socket, size: int) -> None:
    """Ask for a receive buffer of ``size`` bytes: past ``net.core.rmem_max`` when root may
    (``SO_RCVBUFFORCE``), else as far as the kernel allows."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, size)
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)


SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)


def bind_listener(
    address: str, port: int, protocol: str, count: int, backlog: int, reuseport: bool = True,
    receive_buffer: int = 0,
) -> list[int]:
    """Bound sockets for one listener, detached (the engine owns them): ``count`` sockets, one
    per worker, each its own socket sharing the port with ``SO_REUSEPORT`` (the kernel spreads
    TCP connections over them, and keeps each UDP client's 4-tuple on one); or, without
    ``reuseport``, ``count`` descriptors of one TCP socket (any idle worker takes the next
    connection) or one UDP socket. UDP sockets get a ``receive_buffer`` of that many bytes."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    kind = socket.SOCK_STREAM if protocol == "TCP" else socket.SOCK_DGRAM
    check_no_other_owner(address, port, protocol)
    socks: list[socket.socket] = []
    try:
        for _ in range(count if reuseport else 1):
            sock = socket.socket(family, kind)
            socks.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuseport:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if protocol == "UDP" and receive_buffer:
                set_receive_buffer(sock, receive_buffer)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                set_freebind(sock)
            sock.bind((address, port))
            # port 0: the kernel picks one for the first socket; every other worker's shares it
            port = sock.getsockname()[1]
            if protocol == "TCP":
                sock.listen(backlog)
            sock.setblocking(False)
        if protocol == "TCP" and not reuseport:
            socks += [socket.socket(fileno=os.dup(socks[0].fileno())) for _ in range(count - 1)]
    except OSError:
        for sock in socks:
            sock.close()
        raise
    return [sock.detach() for sock in socks]


@dataclass(frozen=True, slots=True)
class Listen:
    """One listener the frontend wants: where, and which endpoint table it serves."""

    address: str
    port: int
    protocol: str
    table: str


class ProxyFrontend(Frontend):
    """Keeps a :class:`~lbcore_plugins._proxy_c.Engine` in step with snapshots.

    Subclasses say which listeners and endpoint tables a snapshot asks for
    (:meth:`wanted`); this class adds, keeps and removes them, so that a change to one service
    never touches another's connections. After the first sync, a sync looks only at the
    services in ``changed``: their tables and listeners are rebuilt, every other one is left
    as it is, so a sync costs what changed, not what the snapshot holds. After a sync that
    failed, and after :meth:`stop`, the next sync compares everything.

    What a table was last programmed from is kept as the snapshot's own
    :class:`~lbcore.ServicePortInfo` (immutable, its endpoints shared with the snapshot), not
    as rows built from it: a table is programmed again when its service port differs from that
    one in any field (compared by identity first), and the rows, made only then, go to the
    engine and are not kept.
    """

    extra_options: tuple[str, ...] = ()
    #: the traffic a table's endpoints take (``lbcore.endpoints_for``)
    traffic: Traffic = "internal"

    def __init__(self, options: Mapping[str, Any], context: RuntimeContext):
        super().__init__(options, context)
        self.settings = ProxyOptions.from_options(self.options, self.extra_options)
        self.engine: Any = None
        self._listeners: dict[Listen, int] = {}
        # table -> the service port it was last programmed from (the snapshot's object)
        self._tables: dict[str, ServicePortInfo] = {}
        self._tables_of: dict[str, tuple[str, ...]] = {}  # service -> its tables in the engine
        self._listens_of: dict[str, tuple[Listen, ...]] = {}  # table -> its listeners
        self._node: str | None = None  # the node the tables were made for
        self._whole = True  # the next sync compares every service, not only ``changed``

    # -- what a snapshot asks for (subclasses) ---------------------------------------------

    def wanted(
        self, snapshot: Snapshot, services: frozenset[str] | None = None
    ) -> tuple[list[Listen], dict[str, ServicePortInfo]]:
        """``(listeners, the service port of each table)`` for the ports of ``services``
        (``namespace/name``), or of every service when None. A table is named
        ``<kind>/<ServicePortInfo.key>`` (:func:`table_service` reads the service back); its
        rows are :meth:`rows` of its service port."""
        raise NotImplementedError

    def node(self, snapshot: Snapshot) -> str | None:
        """The node whose view of the endpoints the tables take (``Local`` policies)."""
        return snapshot.node_name

    def rows(self, sp: ServicePortInfo, node: str | None) -> tuple[tuple[str, int, int, bool], ...]:
        """The ``(ip, port, weight, pickable)`` rows of ``sp``'s table (:func:`endpoint_table`
        for this frontend's kind of traffic)."""
        return endpoint_table(sp, self.traffic, node)

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        if Engine is None:
            raise FrontendUnavailable(
                f"{self.name}: the compiled data path is missing ({_IMPORT_ERROR}); "
                "build it with `python setup.py build_ext --inplace` or `pip install -e .`"
            )
        if self.engine is None:
            raise_open_files_limit()
            self.engine = Engine(**self.settings.engine_kwargs())
            self.engine.start()

    def sync(self, snapshot: Snapshot, changed: frozenset[str]) -> None:
        if self.engine is None:
            self.start()
        whole, self._whole = self._whole, True  # until this sync has worked
        node = self.node(snapshot)
        same_node = node == self._node
        if not same_node:  # every table is made again for another node (or the first time)
            whole = True
        scope = None if whole else changed
        listeners, tables = self.wanted(snapshot, scope)
        if scope is None:
            held_tables = set(self._tables)
        else:
            held_tables = {t for service in scope for t in self._tables_of.get(service, ())}
        held_listens = {lst for t in held_tables for lst in self._listens_of.get(t, ())}
        opts = self.settings
        serving: set[str] = set()  # the tables with an endpoint that takes new connections
        for table, sp in tables.items():
            held = self._tables.get(table)
            if held is not None and same_node and (held is sp or held == sp):
                if held is not sp:  # the snapshot's object from now on, not the previous one
                    self._tables[table] = sp
                if endpoints_for(sp, self.traffic, node):
                    serving.add(table)
                continue
            rows = self.rows(sp, node)
            self.engine.set_service(
                table,
                list(rows),
                opts.algorithm,
                float(sp.affinity_timeout) if sp.session_affinity == "ClientIP" else 0.0,
                opts.affinity_capacity,
                dict(opts.algorithm_options),
                opts.hash_key,
            )
            self._tables[table] = sp
            if held is None:
                service = table_service(table)
                self._tables_of[service] = (*self._tables_of.get(service, ()), table)
            if any(row[3] for row in rows):
                serving.add(table)
        self._node = node  # every table in scope is now made for it
        # a port with no endpoint to take a new connection is not listened on, so clients are
        # refused as kube-proxy refuses them: TCP gets ECONNREFUSED, UDP an ICMP port unreachable
        listeners = [lst for lst in listeners if lst.table in serving]
        wanted = set(listeners)
        gone = held_listens - wanted
        for listen in gone:
            self.engine.remove_listener(self._listeners.pop(listen))
        for table in {listen.table for listen in gone}:
            kept = tuple(lst for lst in self._listens_of[table] if lst not in gone)
            if kept:
                self._listens_of[table] = kept
            else:
                del self._listens_of[table]
        failures = []
        bound: list[tuple[Listen, list[int]]] = []
        for listen in listeners:
            if listen in self._listeners:
                continue
            try:
                fds = bind_listener(
                    listen.address,
                    listen.port,
                    listen.protocol,
                    self.settings.workers,
                    self.settings.backlog,
                    self.settings.reuseport,
                    self.settings.udp_receive_buffer,
                )
            except OSError as exc:
                failures.append(f"{listen.protocol} {listen.address}:{listen.port}: {exc.strerror}")
                continue
            bound.append((listen, fds))
        # handed to the workers together: one wait for them, not one per listener
        ids = self.engine.add_listeners([
            (listen.table, listen.protocol, fds, self.settings.max_connections)
            for listen, fds in bound])
        for (listen, _fds), ident in zip(bound, ids, strict=True):
            self._listeners[listen] = ident
            self._listens_of[listen.table] = (*self._listens_of.get(listen.table, ()), listen)
        for table in held_tables - tables.keys():
            self.engine.remove_service(table)
            del self._tables[table]
            self._listens_of.pop(table, None)
            service = table_service(table)
            others = tuple(t for t in self._tables_of[service] if t != table)
            if others:
                self._tables_of[service] = others
            else:
                del self._tables_of[service]
        if failures:
            self.context.log.error("%s: cannot listen on %s", self.name, "; ".join(failures))
            raise OSError(
                errno.EADDRNOTAVAIL, f"{self.name}: cannot listen on " + "; ".join(failures)
            )
        self._whole = False

    def stop(self, keep: bool = False) -> None:
        """Close every listener, connection and worker thread (a userspace proxy keeps none)."""
        if self.engine is not None:
            self.engine.stop()
            self.engine = None
        self._listeners.clear()
        self._tables.clear()
        self._tables_of.clear()
        self._listens_of.clear()
        self._node = None
        self._whole = True

    # -- introspection -----------------------------------------------------------------------

    @property
    def listening(self) -> list[tuple[str, int, str]]:
        """``(address, port, protocol)`` of every open listener."""
        return sorted((lst.address, lst.port, lst.protocol) for lst in self._listeners)

    def stats(self) -> dict[str, int]:
        """The data path's counters (connections, flows, retries, ...)."""
        return self.engine.stats() if self.engine is not None else {}


def proxied_ports(
    snapshot: Snapshot, services: frozenset[str] | None = None
) -> Iterable[ServicePortInfo]:
    """Service ports a userspace proxy can carry (TCP and UDP; SCTP is left to the kernel): of
    ``services`` (``namespace/name``) only, or of all when None."""
    ports: Iterable[ServicePortInfo] = snapshot.service_ports.values()
    if services is not None:
        ports = [sp for service in sorted(services) for sp in snapshot.ports_of(service)]
    return (sp for sp in ports if sp.protocol in PROTOCOLS)


def table_service(table: str) -> str:
    """The ``namespace/name`` of an endpoint table named ``<kind>/<namespace>/<name>:<port>``."""
    return table.partition("/")[2].rpartition(":")[0]


class SocketFrontend(ProxyFrontend):
    """Listens on each service's cluster IPs and port (TCP and UDP) and forwards to endpoints.

    The service CIDRs must be local to listen on their addresses: a loopback range is, and as
    root the frontend makes any other one local with an AnyIP route on ``lo`` (IPv6 has no
    loopback range to spare), removed at stop. Options: see :class:`ProxyOptions` and
    docs/frontends/socket.md.
    """

    name = "socket"

    def __init__(self, options: Mapping[str, Any], context: RuntimeContext):
        super().__init__(options, context)
        self._routes: list[str] = []  # the AnyIP routes this frontend added

    def start(self) -> None:
        if not self._routes:
            self._routes = make_local(self.context.service_cidrs, self.name)
        super().start()

    def stop(self, keep: bool = False) -> None:
        super().stop(keep)
        for cidr in self._routes:
            subprocess.run(local_route("del", cidr), capture_output=True, timeout=30)
        self._routes = []

    def wanted(
        self, snapshot: Snapshot, services: frozenset[str] | None = None
    ) -> tuple[list[Listen], dict[str, ServicePortInfo]]:
        listeners: list[Listen] = []
        tables: dict[str, ServicePortInfo] = {}
        for sp in proxied_ports(snapshot, services):
            ips = [ip for ip in sp.cluster_ips if ip and ip != "None"]
            if not ips:
                continue
            table = f"cluster/{sp.key}"
            tables[table] = sp
            listeners.extend(Listen(ip, sp.port, sp.protocol, table) for ip in ips)
        return listeners, tables


@hookimpl
def lbcore_register_frontends() -> Mapping[str, Any]:
    return {"socket": SocketFrontend}
