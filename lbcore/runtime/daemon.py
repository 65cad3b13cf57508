"""The daemon behind ``lbcore run``: store, admin API, source, ClusterState and frontends.

Start order: plugins, the data directory (created if needed, then locked: one daemon per
data dir, :func:`lock_data_dir`), the soft open-files limit raised to the hard one, the store
(``data_dir/lbcore.db``) and its endpoints controller (Endpoints and EndpointSlices of every
Service with a selector, :mod:`lbcore.runtime.endpoints_controller`; it lists once the first
full sync is done), the frontends (each
``start()`` checks its prerequisites and fails with a message saying what is missing), the
admin API, then the sync loop and the source. The address
the admin API listens on is written to ``data_dir/admin-address`` so that the CLI finds it.
SIGTERM and SIGINT stop everything in the reverse order; frontends get
``stop(keep=keep_rules_on_exit)``.

Python's cyclic garbage collector is paused from the start until the source and the endpoints
controller have listed everything and the sync that follows is done; then every object made so
far is frozen (``gc.freeze``: never scanned again, still freed when no longer referenced) and
the collector resumes. A full collection scans every tracked object: at 10,000 services and
100,000 pods, 2 to 8 s each on the event loop, a dozen of them while the store is read, and one
every few minutes afterwards, each a pause that every change waiting for a sync shares. The
start makes no garbage cycles worth collecting (those collections found none).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import fcntl
import gc
import logging
import os
import secrets
import signal
import ssl
import time
from collections.abc import Callable, Coroutine, Mapping
from pathlib import Path
from typing import Any, TypeVar

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from lbcore import __version__
from lbcore.errors import ConfigError
from lbcore.plugins import get_plugin_manager, registered
from lbcore.runtime import tls
from lbcore.runtime.admin_server import IDLE_TIMEOUT, AdminServer, raise_open_files_limit
from lbcore.runtime.config import Config, format_host, resolve_plugins
from lbcore.runtime.events import AllocationEvents, EventRecorder, FrontendEvents
from lbcore.runtime.interfaces import (
    Frontend,
    FrontendUnavailable,
    RuntimeContext,
    Source,
    all_listed_event,
    synced_event,
)
from lbcore.runtime.logs import event
from lbcore.runtime.observers import UnservedNodePorts, all_of
from lbcore.runtime.probes import ReadinessProber
from lbcore.runtime.sources import run_source_forever
from lbcore.runtime.state import ClusterState, SyncMetrics

_P = TypeVar("_P")

log = logging.getLogger("lbcore.runtime.daemon")

ADDRESS_FILE = "admin-address"
# the longest the collector stays paused at start (a source that cannot list, a stuck sync)
GC_PAUSE_MAX = 600.0
# at most this long the endpoints controller waits for the first full sync before it lists
CONTROLLER_WAIT_MAX = 120.0
TOKEN_FILE = "token"
DB_FILE = "lbcore.db"
LOCK_FILE = "lbcore.lock"


class StartError(ConfigError):
    """The daemon cannot start here (a frontend's prerequisite, a port in use, ...)."""


def read_or_create_token(data_dir: Path) -> str:
    """The bearer token in ``data_dir/token``, created (mode 0600) when absent."""
    path = data_dir / TOKEN_FILE
    with contextlib.suppress(FileNotFoundError):
        token = path.read_text().strip()
        if token:
            return token
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return token


def lock_data_dir(data_dir: Path) -> int:
    """Create ``data_dir`` if needed and take its lock (an exclusive ``flock`` on
    ``data_dir/lbcore.lock``, which holds the owner's pid): one daemon per data dir. The
    descriptor holds the lock until it is closed (or the process ends, even by SIGKILL).

    :raises StartError: the data dir cannot be made or written, or another daemon holds it.
    """
    try:
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    except FileExistsError:
        raise StartError(f"data_dir: {data_dir} exists and is not a directory") from None
    except OSError as exc:
        raise StartError(f"data_dir: cannot create {data_dir}: {exc.strerror or exc}") from None
    if not data_dir.is_dir():
        raise StartError(f"data_dir: {data_dir} exists and is not a directory")
    path = data_dir / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise StartError(f"data_dir: cannot write in {data_dir}: {exc.strerror or exc}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = ""
        for _ in range(20):  # the holder writes its pid just after it locks
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            if holder:
                break
            time.sleep(0.05)
        os.close(fd)
        raise StartError(
            f"data dir {data_dir} is in use by pid {holder or 'unknown'} "
            "(one lbcore run per data dir; stop it or choose another --data-dir)"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def ensure_ingress_class(store: Any) -> None:
    """The IngressClass ``lbcore`` in the store, as installing an ingress controller adds its
    class to a cluster (kept as a user changed it; written again when deleted at a restart)."""
    from lbcore.model.objects import INGRESS_CONTROLLER
    from lbcore.runtime.store import AlreadyExists

    with contextlib.suppress(AlreadyExists):
        store.create({"apiVersion": "networking.k8s.io/v1", "kind": "IngressClass",
                      "metadata": {"name": "lbcore"},
                      "spec": {"controller": INGRESS_CONTROLLER}})


def load_plugins() -> tuple[dict[str, Any], dict[str, Any]]:
    """The installed sources and frontends; a plugin that fails to load is a one-line error."""
    try:
        return registered("lbcore_register_sources"), registered("lbcore_register_frontends")
    except Exception as exc:
        raise StartError(
            f"plugins: cannot load the lbcore plugins: {type(exc).__name__}: {exc} "
            "(LBCORE_LOAD_PLUGINS=name,... loads only the named ones)"
        ) from None


def make_plugin(where: str, factory: Callable[..., _P], options: Mapping[str, Any],
          context: RuntimeContext) -> _P:
    """A plugin made from its options; its ConfigError (which names the option) gets the
    option's place in the config file in front: ``frontends[0].options.workers: ...``."""
    try:
        return factory(options, context)
    except ConfigError as exc:
        raise StartError(f"{where}.options.{exc}") from None


def give_back_free_memory() -> bool:
    """Return the C allocator's free pages to the kernel (glibc's ``malloc_trim``); False
    where there is none (another C library)."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (AttributeError, OSError):
        return False
    trim(0)
    return True


def resident_bytes() -> int:
    """This process's resident set size, from /proc (0 where there is none)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


class Daemon:
    """One running lbcore: call :meth:`start`, then :meth:`stop` (or :meth:`run_until_signal`)."""

    def __init__(self, config: Config):
        self.config = config
        self.metrics = SyncMetrics()
        self.metrics.registry.register(_SourceMetrics(self))
        self.metrics.registry.register(_BacklogMetrics(self))
        self.store: Any = None
        self.endpoints_controller: Any = None
        self.route_status: Any = None
        self.events: EventRecorder | None = None
        self.state: ClusterState | None = None
        self.source: Source | None = None
        self.frontends: dict[str, Frontend] = {}
        self.token: str | None = None
        self.admin_url: str | None = None
        self._admin: AdminServer | None = None
        # seconds the admin API waits for a complete request header (see admin_server)
        self.admin_idle_timeout = IDLE_TIMEOUT
        self._lock_fd: int | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._stopping = asyncio.Event()
        self._source_ok = False
        self._gc_paused = False  # by this daemon, until its start is done (module docstring)

    # -- start ----------------------------------------------------------------------------

    async def start(self) -> None:
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise

    async def _start(self) -> None:
        if gc.isenabled():
            gc.disable()
            self._gc_paused = True
        config = self.config
        sources, frontend_factories = load_plugins()
        config = self.config = resolve_plugins(config, sources, frontend_factories)
        data_dir = config.data_dir
        self._lock_fd = lock_data_dir(data_dir)
        limit = raise_open_files_limit()

        from lbcore.model.objects import parse_admitted
        from lbcore.model.service_table import ServiceTable
        from lbcore.runtime.endpoints_controller import EndpointsController
        from lbcore.runtime.store import Store

        self.store = Store(data_dir / DB_FILE, list(config.service_cidrs), config.node_port_range)
        # the store behaves like a small cluster: Endpoints and EndpointSlices from its pods;
        # the controller lists once the frontends are programmed (see _first_full_sync)
        self.endpoints_controller = EndpointsController(self.store)
        self._tasks.append(asyncio.create_task(
            self.endpoints_controller.run(
                after=lambda: self._first_full_sync(CONTROLLER_WAIT_MAX)),
            name="lbcore-endpoints-controller"))
        # Events about services, as a cluster's components record them (kubectl describe)
        self.events = EventRecorder(self.store, instance=config.node_name)
        self._tasks.append(asyncio.create_task(self.events.run(), name="lbcore-events"))
        self.store.subscribe(AllocationEvents(self.events, self.store.list("Service")[0]))
        context = RuntimeContext(
            node_name=config.node_name,
            node_addresses=config.node_addresses,
            data_dir=data_dir,
            service_cidrs=config.service_cidrs,
            node_port_range=config.node_port_range,
            store=self.store,
            log=logging.getLogger("lbcore"),
        )
        loop = asyncio.get_running_loop()
        for i, choice in enumerate(config.frontends or ()):
            frontend = make_plugin(f"frontends[{i}]", frontend_factories[choice.name], choice.options,
                             context)
            frontend.name = frontend.name or choice.name
            try:
                await loop.run_in_executor(None, frontend.start)
            except FrontendUnavailable as exc:
                raise StartError(f"frontend {choice.name}: {exc}") from None
            except Exception as exc:
                raise StartError(
                    f"frontend {choice.name}: cannot start: {type(exc).__name__}: {exc}"
                ) from None
            self.frontends[choice.name] = frontend
            event(log, "frontend started", frontend=choice.name)
        self.source = make_plugin("source", sources[config.source.name], config.source.options, context)

        table = ServiceTable(config.service_cidr, config.node_port_range, allocate=False)
        self.state = ClusterState(
            table,
            self.frontends,
            node_name=config.node_name,
            node_addresses=config.node_addresses,
            min_sync_period=config.min_sync_period,
            check_period=config.rules_check_period,
            resync_period=config.sync_period,
            metrics=self.metrics,
            on_sync_done=all_of(
                [get_plugin_manager().hook.lbcore_sync_done, UnservedNodePorts(self.frontends),
                 FrontendEvents(self.events, self.frontends, serves_node_ports=any(
                     getattr(f, "serves_node_ports", False) for f in self.frontends.values()))]
            ),
            # over the embedded store, one parse of each object for it and the controller
            parse=self.store.parse if config.source.name == "local" else parse_admitted,
            listed=synced_event(self.source),
        )
        await self._serve_admin(config)
        self._tasks.append(asyncio.create_task(self.state.run(), name="lbcore-sync"))
        self._tasks.append(asyncio.create_task(self.state.run_checks(), name="lbcore-checks"))
        self._tasks.append(asyncio.create_task(self._run_source(), name="lbcore-source"))
        if config.source.name == "local":
            # the store's pods are probed here, as a kubelet would (a cluster's kubelets probe its own)
            self._tasks.append(
                asyncio.create_task(ReadinessProber(self.store).run(), name="lbcore-probes")
            )
            # and the status of its Routes and Ingresses, as a router writes it in a cluster
            from lbcore.runtime.route_status import RouteStatusController

            frontends = list(self.frontends.values())
            self.route_status = RouteStatusController(self.store, addresses=lambda: [
                a for f in frontends for a in f.route_addresses()])
            ensure_ingress_class(self.store)
            self._tasks.append(asyncio.create_task(self.route_status.run(),
                                                   name="lbcore-route-status"))
        self._tasks.append(asyncio.create_task(self._give_back_after_start(),
                                               name="lbcore-give-back"))
        self.state.request_sync()
        self._tasks.append(asyncio.create_task(self._resume_gc_when_started(),
                                               name="lbcore-gc-freeze"))
        event(
            log,
            "daemon started",
            version=__version__,
            admin=self.admin_url,
            source=config.source.name,
            frontends=",".join(self.frontends) or "none",
            data_dir=str(data_dir),
            open_files=limit,
            event_loop=event_loop_name(asyncio.get_running_loop()),
        )

    async def _resume_gc_when_started(self, cap: float = GC_PAUSE_MAX) -> None:
        """Once the source and the endpoints controller have listed and the sync that follows
        is done (at most ``cap`` seconds), freeze what the start made and resume the collector."""
        assert self.state is not None
        state = self.state
        listed = [self.endpoints_controller.synced, all_listed_event(self.source)]

        async def started() -> None:
            for flag in listed:
                if flag is not None:
                    await flag.wait()
            while state.busy or not state.synced_once.is_set():
                await asyncio.sleep(0.05)

        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(started(), cap)
        self._resume_gc(freeze=True)

    def _resume_gc(self, freeze: bool) -> None:
        if not self._gc_paused:
            return
        self._gc_paused = False
        if freeze:
            gc.freeze()
        gc.enable()
        if freeze:
            event(log, "start objects frozen", objects=gc.get_freeze_count())

    async def _serve_admin(self, config: Config) -> None:
        from lbcore.runtime import admin_api
        # over TLS a token is always asked for writes: that is what TLS is for (kubectl
        # sends a token only over it)
        if config.admin_token or not config.admin_is_loopback or config.admin_tls:
            self.token = config.admin_token or read_or_create_token(config.data_dir)
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics)
        admin_api.add_routes(app, self.store, token=self.token)
        self._admin = AdminServer(app, idle_timeout=self.admin_idle_timeout)
        host, port = config.admin_address
        context, ca_pem = self._tls(config)
        try:
            bound = await self._admin.start(host, port, context)
        except OSError as exc:
            raise StartError(
                f"admin_address: cannot listen on {format_host(host)}:{port}: {exc.strerror or exc}"
            ) from None
        scheme = "https" if context is not None else "http"
        self.admin_url = f"{scheme}://{format_host(bound[0])}:{bound[1]}"
        tls.write_kubeconfig(config.data_dir, self.admin_url, ca_pem, self.token)
        address_file = config.data_dir / ADDRESS_FILE
        tmp = address_file.with_suffix(".tmp")
        tmp.write_text(self.admin_url + "\n")
        tmp.replace(address_file)

    @staticmethod
    def _tls(config: Config) -> tuple[ssl.SSLContext | None, bytes | None]:
        """The admin API's TLS context and the CA a client trusts (PEM), per ``admin_tls``."""
        settings = config.admin_tls
        if settings is None:
            return None, None
        try:
            if settings.cert_file is None or settings.key_file is None:
                names = tls.serving_names(config.admin_address[0], config.node_addresses)
                cert_file, key_file, ca_pem = tls.generate_certificates(config.data_dir, names)
            else:
                cert_file, key_file = settings.cert_file, settings.key_file
                ca_pem = (settings.ca_file or cert_file).read_bytes()
            return tls.server_context(cert_file, key_file), ca_pem
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise StartError(f"admin_tls: cannot use the certificate: {exc}") from None

    async def _first_full_sync(self, cap: float | None = None) -> None:
        """Until the source has listed and a sync that carries its lists is done, or ``cap``
        seconds. The endpoints controller lists after it: over a store of 100,000 pods its
        list and first pass (which writes nothing when the stored slices are in line) took a
        third of the interpreter's time before the first full sync, and the data path reads
        the stored slices, not the controller."""

        # asyncio.timeout, not wait_for: wait_for (3.11) drops a cancellation that comes as
        # the wait ends, and the stop that cancelled would wait for the controller for ever
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(cap):
                while self.state is None:  # made later in _start
                    await asyncio.sleep(0.05)
                listed = synced_event(self.source)
                if listed is not None:
                    await listed.wait()
                await self.state.wait_synced()

    async def _give_back_after_start(self) -> None:
        """The start decodes every stored object (at 100,000 pods, several hundred MB that are
        freed once parsed) between what it keeps; once the first full sync and the endpoints
        controller's first pass are done and the source has listed every kind, give the
        allocator's free pages back to the kernel (glibc keeps them otherwise), once."""
        await self._first_full_sync()
        for flag in (self.endpoints_controller.synced, all_listed_event(self.source)):
            if flag is not None:
                await flag.wait()
        before = resident_bytes()
        if await asyncio.get_running_loop().run_in_executor(None, give_back_free_memory):
            event(log, "free memory given back after the start", rss_before=before,
                  rss_after=resident_bytes())

    async def _run_source(self) -> None:
        """Run the source; if it ever ends or raises, log it and start it again with backoff."""
        assert self.source is not None and self.state is not None

        def report(error: str | None) -> None:
            self._source_ok = error is None

        await run_source_forever(self.source, self.state, self.config.source.name, report)

    # -- admin endpoints ------------------------------------------------------------------

    def _source_health(self) -> dict[str, Any]:
        """The source's own report (a source may define ``health()``: a dict with ``healthy``,
        as the kubernetes source does while it cannot list or its watch is silent)."""
        health: dict[str, Any] = {"name": self.config.source.name, "healthy": self._source_ok}
        report = getattr(self.source, "health", None)
        if callable(report) and self._source_ok:
            health.update(report())
            health["healthy"] = bool(health.get("healthy", True))
        return health

    async def _healthz(self, request: web.Request) -> web.Response:
        state = self.state
        frontends = state.health() if state else {}
        source = self._source_health()
        healthy = bool(state and state.healthy and source["healthy"])
        body = {
            "status": "ok" if healthy else "unhealthy",
            "source": source,
            "frontends": frontends,
            "syncs": state.syncs if state else 0,
        }
        return web.json_response(body, status=200 if healthy else 503)

    async def _readyz(self, request: web.Request) -> web.Response:
        """Ready once synced, while the source is in sync and every frontend's rules are in
        place; a frontend whose rules are not shows as "rules missing since T: what"."""
        missing = self.state.rules_missing() if self.state else {}
        source = self._source_health()
        # the source's first list must be in (a source that does not say counts as synced)
        ready = bool(self.state and self.state.synced_once.is_set() and source["healthy"]
                     and source.get("synced", True) and not missing)
        body: dict[str, Any] = {"status": "ready" if ready else "not ready"}
        if missing:
            body["frontends"] = missing
        return web.json_response(body, status=200 if ready else 503)

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(self.metrics.registry),
            headers={"Content-Type": CONTENT_TYPE_LATEST},
        )

    # -- stop -----------------------------------------------------------------------------

    def request_stop(self) -> None:
        self._stopping.set()

    async def run_until_signal(self) -> None:
        """Start, wait for SIGTERM/SIGINT (or :meth:`request_stop`), then stop."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)
        try:
            await self.start()
            await self._stopping.wait()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
            await self.stop()

    def _on_signal(self, sig: signal.Signals) -> None:
        event(log, "signal received; stopping", signal=signal.Signals(sig).name)
        self._stopping.set()

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        if self._admin is not None:
            await self._admin.stop()
            self._admin = None
            with contextlib.suppress(OSError):
                address_file = self.config.data_dir / ADDRESS_FILE
                if address_file.read_text().strip() == self.admin_url:
                    address_file.unlink()
        loop = asyncio.get_running_loop()
        keep = self.config.keep_rules_on_exit
        for name, frontend in reversed(list(self.frontends.items())):
            try:
                await loop.run_in_executor(None, frontend.stop, keep)
            except Exception as exc:
                event(log, "frontend stop failed", logging.WARNING, frontend=name, error=repr(exc))
        self.frontends.clear()
        close = getattr(self.store, "close", None)
        if close is not None:
            with contextlib.suppress(Exception):
                close()
        self.store = None
        if self.admin_url is not None:
            event(log, "daemon stopped", admin=self.admin_url, kept_rules=keep)
            self.admin_url = None
        if self._lock_fd is not None:  # the data dir is free for another daemon
            os.close(self._lock_fd)
            self._lock_fd = None
        self._resume_gc(freeze=False)  # stopped before its start was done


class _SourceMetrics:
    """The source's health on /metrics: ``lbcore_source_healthy`` and, from a source that
    reports them per kind (the kubernetes source), relists and the last time it was in sync."""

    def __init__(self, daemon: Daemon):
        self.daemon = daemon

    def collect(self) -> Any:
        health = self.daemon._source_health()
        healthy = GaugeMetricFamily(
            "lbcore_source_healthy", "1 while the source is in sync with where objects come from"
        )
        healthy.add_metric([], 1.0 if health["healthy"] else 0.0)
        yield healthy
        kinds = health.get("kinds") or {}
        relists = CounterMetricFamily(
            "lbcore_source_relists", "Lists after a watch could not resume (410, 504)", labels=["kind"]
        )
        last_sync = GaugeMetricFamily(
            "lbcore_source_last_sync_timestamp_seconds",
            "When the source last heard from its server in sync", labels=["kind"],
        )
        for kind, report in kinds.items():
            relists.add_metric([kind], float(report.get("relists") or 0))
            if report.get("lastSync") is not None:
                last_sync.add_metric([kind], float(report["lastSync"]))
        yield relists
        yield last_sync


class _BacklogMetrics:
    """What waits to be handled on /metrics: the store's commits queued for the endpoints
    controller, and the changes queued for open watches (both stay near 0 while they keep up)."""

    def __init__(self, daemon: Daemon):
        self.daemon = daemon

    def collect(self) -> Any:
        controller = self.daemon.endpoints_controller
        queued = GaugeMetricFamily(
            "lbcore_endpoints_controller_queue", "Store commits the endpoints controller has "
            "not handled yet")
        queued.add_metric([], float(controller.backlog if controller is not None else 0))
        yield queued
        store = self.daemon.store
        pending = GaugeMetricFamily(
            "lbcore_watch_queue", "Changes waiting for the clients of open watches to read them")
        pending.add_metric([], float(store.watch_backlog if store is not None else 0))
        yield pending
        commits = CounterMetricFamily(
            "lbcore_store_commits", "SQLite transactions that committed writes (a group commit "
            "is one)")
        commits.add_metric([], float(store.commits if store is not None else 0))
        yield commits
        writes = CounterMetricFamily("lbcore_store_writes", "Writes committed")
        writes.add_metric([], float(store.committed if store is not None else 0))
        yield writes


def event_loop_runner(choice: str) -> Callable[[Coroutine[Any, Any, None]], None]:
    """What runs the daemon's main coroutine for the config's ``event_loop``: ``uvloop.run``
    (uvloop, or auto when uvloop is installed) or ``asyncio.run``. On uvloop each admin API
    request costs the loop less (its transports, callbacks and futures are compiled): see
    docs/benchmarks/programming_latency.md, "Writes through the admin API".

    :raises ConfigError: ``uvloop`` was asked for and is not installed."""
    if choice != "asyncio":
        try:
            import uvloop
        except ImportError:
            if choice == "uvloop":
                raise ConfigError(
                    "event_loop: 'uvloop' is not installed; install it "
                    "(pip install 'lbcore[uvloop]') or set event_loop: asyncio"
                ) from None
        else:
            return uvloop.run
    return asyncio.run


def event_loop_name(loop: asyncio.AbstractEventLoop) -> str:
    """``uvloop`` or ``asyncio``: which event loop ``loop`` is."""
    return "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"


def run(config: Config) -> int:
    """Run the daemon in this process until SIGTERM/SIGINT; the exit status."""
    event_loop_runner(config.event_loop)(Daemon(config).run_until_signal())
    return 0
