"""The ``route`` frontend: HTTP and HTTPS by host name and path (OpenShift Routes, Kubernetes
Ingresses), in the socket frontend's compiled engine.

Each sync builds the routing table (:func:`lbcore.routing_table`: one table for Routes and
Ingresses, with the conflict rule) and hands the engine (:mod:`lbcore_plugins._proxy_c`) what
changed: an endpoint table per routed service port (the same tables, pick policy and Balancers
the socket frontend uses, with ClientIP affinity when the service asks), then the routing table
itself as plain data. The engine serves an HTTP listener and an HTTPS listener
(docs/frontends/route.md).
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from lbcore import (
    ConfigError,
    Frontend,
    FrontendUnavailable,
    RoutingTable,
    RuntimeContext,
    Snapshot,
    hookimpl,
    option,
    read_options,
    routing_table,
)
from lbcore_plugins.socket_frontend import (
    _IMPORT_ERROR,
    Engine,
    ProxyOptions,
    bind_listener,
    raise_open_files_limit,
)


@dataclass(frozen=True)
class RouteOptions:
    """The route frontend's own options, beside the engine's (:class:`ProxyOptions`)."""

    http_address: str = "127.0.0.1"
    http_port: int = option(8080, least=0, most=65535)
    https_address: str = "127.0.0.1"
    https_port: int = option(8443, least=0, most=65535)
    redirect_port: int = option(0, least=0, most=65535)
    max_body_bytes: int = option(0, least=0)
    header_timeout: float = option(10.0, duration=True, least=0.001)
    keepalive_timeout: float = option(300.0, duration=True, least=0.001)
    pool_idle_timeout: float = option(30.0, duration=True, least=0.001)
    pool_max_idle: int = option(1024, least=0)
    default_certificate: str = ""
    default_key: str = ""
    default_destination_ca: str = ""
    ingress_class: str = "lbcore"
    tls_session_resumption: bool = True

    def __post_init__(self) -> None:
        if bool(self.default_certificate) != bool(self.default_key):
            raise ConfigError("default_certificate, default_key: give both or neither")


ROUTE_OPTIONS = tuple(f.name for f in fields(RouteOptions))

Rows = tuple[tuple[str, int, int, bool], ...]


def service_host(service: str) -> str:
    """The DNS name of service ``namespace/name`` inside the cluster: ``name.namespace.svc``."""
    namespace, _, name = service.partition("/")
    return f"{name}.{namespace}.svc"


def engine_routes(table: RoutingTable, default_destination_ca: bytes = b""
                  ) -> tuple[list[dict[str, Any]], dict[str, Rows], dict[str, float]]:
    """The engine's view of ``table``: its hosts as plain data (``Engine.set_routes``), the
    endpoint rows of every routed service port, and the ClientIP affinity seconds of those that
    ask for it. A backend whose service or port does not exist is left out (its rule then
    answers 503).

    Reencrypt, as OpenShift's router verifies the pod: a route with a
    ``destinationCACertificate`` trusts the pods that chain to it, whatever name their
    certificate carries; a route without one, when ``default_destination_ca`` is given (the
    cluster's service CA), trusts the pods that chain to that CA and whose certificate names
    the service (``name.namespace.svc``); with neither, the system's trust store."""
    tables: dict[str, Rows] = {}
    affinity: dict[str, float] = {}

    def rule(r: Any) -> dict[str, Any]:
        backends: list[tuple[str, int] | tuple[str, int, str]] = []
        by_service = r.reencrypt and not r.destination_ca and bool(default_destination_ca)
        for b in r.backends:
            if not b.port_key:
                continue
            tables[b.port_key] = tuple((e.ip, e.port, max(e.weight, 0), True) for e in b.endpoints)
            if b.session_affinity == "ClientIP":
                affinity[b.port_key] = float(b.affinity_timeout)
            backends.append((b.port_key, b.weight, service_host(b.service)) if by_service
                            else (b.port_key, b.weight))
        return {"path": r.path, "match": r.match, "redirect": r.redirect,
                "reencrypt": r.reencrypt,
                "destination_ca": default_destination_ca if by_service else r.destination_ca,
                "backends": backends}

    hosts = []
    for vh in table.hosts:
        hosts.append({
            "host": vh.name,
            "certificate": vh.certificate.chain if vh.certificate else b"",
            "key": vh.certificate.key if vh.certificate else b"",
            "http": [rule(r) for r in vh.http],
            "https": [rule(r) for r in vh.https],
            "passthrough": rule(vh.passthrough) if vh.passthrough is not None else None,
        })
    return hosts, tables, affinity


class RouteFrontend(Frontend):
    """Serves Routes and Ingresses on one HTTP and one HTTPS listener (options:
    :class:`RouteOptions` and the socket frontend's engine options, docs/frontends/route.md)."""

    name = "route"

    def __init__(self, options: Mapping[str, Any], context: RuntimeContext):
        super().__init__(options, context)
        self.route_settings = read_options(RouteOptions, self.options, skip=ProxyOptions.names())
        # one listening socket for all workers by default (reuseport false): the idle worker
        # takes the next connection, where SO_REUSEPORT's hash left one worker with up to 64 %
        # of a client's kept-alive connections (docs/benchmarks/routes.md)
        self.settings = ProxyOptions.from_options({"reuseport": False, **self.options},
                                                  ROUTE_OPTIONS)
        self.engine: Any = None
        self._tables: dict[str, tuple[Rows, float]] = {}
        self._hosts: list[dict[str, Any]] | None = None
        self._listeners: dict[str, tuple[str, int]] = {}
        self._default_certificate: tuple[bytes, bytes] | None = None
        self._default_destination_ca = b""
        self.table: RoutingTable | None = None

    def start(self) -> None:
        if Engine is None:
            raise FrontendUnavailable(
                f"{self.name}: the compiled data path is missing ({_IMPORT_ERROR}); "
                "build it with `python setup.py build_ext --inplace` or `pip install -e .`"
            )
        if self.engine is not None:
            return
        opts = self.route_settings
        if opts.default_certificate:
            try:
                self._default_certificate = (Path(opts.default_certificate).read_bytes(),
                                             Path(opts.default_key).read_bytes())
            except OSError as exc:
                raise ConfigError(f"default_certificate: {exc}") from None
        if opts.default_destination_ca:
            try:
                self._default_destination_ca = Path(opts.default_destination_ca).read_bytes()
            except OSError as exc:
                raise ConfigError(f"default_destination_ca: {exc}") from None
            if b"-----BEGIN CERTIFICATE-----" not in self._default_destination_ca:
                raise ConfigError(f"default_destination_ca: {opts.default_destination_ca!r} "
                                  "holds no PEM certificate")
        raise_open_files_limit()
        engine = Engine(**self.settings.engine_kwargs())
        engine.configure_http(
            max_body_bytes=opts.max_body_bytes, header_timeout=opts.header_timeout,
            keepalive_timeout=opts.keepalive_timeout,
            pool_idle_timeout=opts.pool_idle_timeout, pool_max_idle=opts.pool_max_idle)
        engine.set_routes([], self._default_certificate)
        https_port = opts.https_port
        try:
            # HTTPS first: the HTTP listener's redirects need its port
            for scheme, address, port in (("https", opts.https_address, https_port),
                                          ("http", opts.http_address, opts.http_port)):
                fds = bind_listener(address, port, "TCP", self.settings.workers,
                                    self.settings.backlog, self.settings.reuseport)
                sock = socket.socket(fileno=fds[0])
                bound = sock.getsockname()[1]
                sock.detach()
                if scheme == "https":
                    https_port = bound
                engine.add_http_listener(
                    fds, https=scheme == "https", port=bound,
                    redirect_port=opts.redirect_port or https_port,
                    max_connections=self.settings.max_connections,
                    tls_resumption=opts.tls_session_resumption)
                self._listeners[scheme] = (address, bound)
        except OSError as exc:
            engine.stop()
            self._listeners.clear()
            raise OSError(exc.errno or errno.EADDRNOTAVAIL,
                          f"{self.name}: cannot listen: {exc.strerror or exc}") from None
        engine.start()
        self.engine = engine

    def route_addresses(self) -> tuple[str, ...]:
        """The addresses of the HTTP and HTTPS listeners (a wildcard one: the node's
        addresses), which the daemon writes into the status of the Ingresses served."""
        out: list[str] = []
        for address, _port in self._listeners.values():
            if address in ("", "0.0.0.0", "::"):
                out += self.context.node_addresses
            else:
                out.append(address)
        return tuple(dict.fromkeys(out))

    def sync(self, snapshot: Snapshot, changed: frozenset[str]) -> None:
        if self.engine is None:
            self.start()
        table = routing_table(snapshot, self.route_settings.ingress_class)
        hosts, tables, affinity = engine_routes(table, self._default_destination_ca)
        opts = self.settings
        for key, rows in tables.items():
            state = (rows, affinity.get(key, 0.0))
            if self._tables.get(key) != state:
                self.engine.set_service(key, list(rows), opts.algorithm, state[1],
                                        opts.affinity_capacity, dict(opts.algorithm_options),
                                        opts.hash_key)
                self._tables[key] = state
        if hosts != self._hosts:
            self.engine.set_routes(hosts, self._default_certificate)
            self._hosts = hosts
        for key in [k for k in self._tables if k not in tables]:
            self.engine.remove_service(key)  # the old table's requests keep it until they end
            del self._tables[key]
        self.table = table

    def stop(self, keep: bool = False) -> None:
        """Close both listeners, every connection and the workers."""
        if self.engine is not None:
            self.engine.stop()
            self.engine = None
        self._tables.clear()
        self._hosts = None
        self._listeners.clear()

    @property
    def listening(self) -> dict[str, tuple[str, int]]:
        """``{"http": (address, port), "https": (address, port)}`` once started."""
        return dict(self._listeners)

    def stats(self) -> dict[str, int]:
        """The engine's connection counters and the HTTP counters (requests, 404s, 503s, ...)."""
        if self.engine is None:
            return {}
        return {**self.engine.stats(), **self.engine.http_stats()}


@hookimpl
def lbcore_register_frontends() -> Mapping[str, Any]:
    return {"route": RouteFrontend}
