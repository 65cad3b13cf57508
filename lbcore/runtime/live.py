"""Live pickers: ``lbcore.connect(source)`` keeps the Pickers of a program that embeds lbcore current.

A proxy or a client that embeds lbcore wants "the picker of ``default/my-service:http``, kept
current", not a ``Picker`` built by hand from a fixed endpoint list. :func:`connect` runs what
``lbcore run`` runs between a source and its frontends, without a store, an admin API or a data
path of its own:

- the source plugin, found through the plugin manager as the daemon finds it: ``local`` for an
  in-process :class:`~lbcore.runtime.store.Store`, ``kubernetes`` for an API server (the admin
  API of a running ``lbcore run``, or a cluster's through a kubeconfig). Its own code lists,
  watches, relists on 410 Gone and backs off; when it ends or fails it is started again with
  backoff, as the daemon does;
- a :class:`~lbcore.runtime.state.ClusterState` over a ``ServiceTable(allocate=False)``, which
  turns the objects into ``ServicePortInfo``s with the one endpoint rule and syncs on a bounded
  frequency (a burst of changes makes one sync);
- one frontend, :class:`_PickerFrontend`: each sync, every live picker of a service that changed
  gets the new ``ServicePortInfo`` through ``Picker.update`` (survivors keep their connections
  and affinity). A change of session affinity, its timeout or the traffic policy swaps in a new
  core built for the new settings, since those shape the core's tables.

Why a thread of its own: the source and the sync loop run on one thread with its own event
loop, so the handle behaves the same from threads, from asyncio (any loop, uvloop included) and
from both at once, and a pick never waits on them. A pick is the compiled ``Picker.pick``
itself: following a service costs the data path nothing.

Lifecycle: :func:`connect` starts the thread and returns; the first call that needs the
cluster's state (``picker``, ``service_port``, ``with``, ``async with``, ``wait_ready``) waits
until the source has listed every kind and one sync has applied the lists. ``close()`` (or
leaving the ``with`` block) stops the source; from then on the pickers raise
:class:`ServiceGone`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import threading
import weakref
from collections.abc import Mapping
from concurrent.futures import Future, InvalidStateError
from pathlib import Path
from types import TracebackType
from typing import Any, NoReturn

from lbcore.errors import ConfigError, LbcoreError
from lbcore.model.picker import Picker
from lbcore.model.service_table import ServiceTable
from lbcore.model.snapshot import ServicePortInfo, Snapshot
from lbcore.model.topology import Traffic, policy_is_local
from lbcore.plugins import registered
from lbcore.runtime.interfaces import Frontend, RuntimeContext, Source, synced_event
from lbcore.runtime.sources import run_source_forever
from lbcore.runtime.state import ClusterState

__all__ = [
    "LiveCluster",
    "LivePicker",
    "ServiceGone",
    "ServiceNotFound",
    "SourceNotReady",
    "connect",
]

log = logging.getLogger("lbcore.live")

_ids = itertools.count(1)


class ServiceNotFound(LbcoreError, LookupError):
    """``picker`` or ``service_port`` named a service, or a port of it, that does not exist."""


class ServiceGone(ServiceNotFound):
    """A live picker's service or port was deleted (or the handle closed): its picks raise this
    instead of returning backends that are no longer the service's. Should the service come back
    under the same name and port name, the picker follows it again."""


class SourceNotReady(LbcoreError, TimeoutError):
    """The source did not list the cluster in time; the message gives its last error."""


# -- the picker ------------------------------------------------------------------------------


class LivePicker(Picker):
    """A :class:`~lbcore.Picker` that follows one service port of a :class:`LiveCluster`.

    It is a ``Picker`` in every way (``pick``, ``pick_index``, ``close``, ``mark_down``,
    ``endpoints``...); the handle's sync thread calls ``update`` when the service changes and
    ``service_port`` is always the latest ``ServicePortInfo``. While the service or the port is
    deleted, ``pick`` and ``pick_index`` raise :class:`ServiceGone`.
    """

    def __init__(self, key: str, service_port: ServicePortInfo, algorithm: str,
                 traffic: Traffic, node_name: str | None, options: Mapping[str, Any]) -> None:
        self.key = key  # namespace/name:port_name, what it follows
        self.service = service_port.service  # namespace/name
        self.gone = False
        self._build = (algorithm, traffic, node_name, dict(options))
        super().__init__(service_port, algorithm, traffic=traffic, node_name=node_name, **options)

    def _shape(self, info: ServicePortInfo) -> tuple[Any, ...]:
        """What the core's tables are built for: a change of it needs a new core."""
        _, traffic, node_name, options = self._build
        return (
            options.get("session_affinity", info.session_affinity),
            options.get("affinity_timeout", info.affinity_timeout),
            node_name is not None and policy_is_local(info, traffic),
        )

    def _follow(self, info: ServicePortInfo | None, why: str = "was deleted") -> None:
        """Called by the sync thread (one at a time) with the port's latest info, or None."""
        if info is None:
            if not self.gone:
                self.gone = True
                message = f"service port {self.key} {why}; its picker has no endpoints"
                self.pick = self.pick_index = _raiser(message)  # type: ignore[method-assign]
                self.update(())  # a pick that raced the swap finds no endpoint, never a stale one
            return
        previous = self.service_port
        if previous is None or self._shape(info) != self._shape(previous):
            self._adopt(info)
        else:
            self.service_port = info
            self.update(info.endpoints)
        if self.gone:
            self.gone = False
            self.pick, self.pick_index = self._core.pick, self._core.pick_index  # type: ignore[method-assign]

    def _adopt(self, info: ServicePortInfo) -> None:
        """Take over a fresh core built for ``info``'s settings, in one dict update. The old
        attributes stay referenced until it is done, so no finalizer runs (and no thread switch
        happens) halfway: each look-up of ``pick`` or ``close`` finds the old core's or the new
        one's. The new core starts with empty tables and counts; a connection picked on the
        old one and closed on the new one is unknown to it (``close`` returns False)."""
        algorithm, traffic, node_name, options = self._build
        fresh = Picker(info, algorithm, traffic=traffic, node_name=node_name, **options)
        old = dict(self.__dict__)
        state = dict(fresh.__dict__)
        if self.gone:  # stays raising until _follow says otherwise
            state.pop("pick"), state.pop("pick_index")
        self.__dict__.update(state)
        del old


def _raiser(message: str) -> Any:
    def gone(*args: Any, **kwargs: Any) -> NoReturn:
        raise ServiceGone(message)

    return gone


# -- the frontend that keeps the pickers current -----------------------------------------------


class _PickerFrontend(Frontend):
    """ClusterState's one frontend here: applies each sync to the live pickers."""

    name = "live"

    def __init__(self, context: RuntimeContext) -> None:
        super().__init__({}, context)
        self.lock = threading.Lock()  # a picker is made and registered between two syncs
        self.snapshot = Snapshot()
        self.pickers: weakref.WeakSet[LivePicker] = weakref.WeakSet()
        self.ready: Future[None] = Future()
        self.ready_at: int | None = None  # the table's version once the source had listed

    def sync(self, snapshot: Snapshot, changed: frozenset[str]) -> None:
        with self.lock:
            self.snapshot = snapshot
            for picker in list(self.pickers):
                if picker.service in changed:
                    picker._follow(snapshot.service_ports.get(picker.key))
        ready = self.ready
        if not ready.done() and self.ready_at is not None and snapshot.version >= self.ready_at:
            with contextlib.suppress(InvalidStateError):  # close() may have failed it meanwhile
                ready.set_result(None)


class _LastError(logging.Handler):
    """Keeps the source's last warning, for the message of :class:`SourceNotReady`."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.last: str | None = None

    def emit(self, record: logging.LogRecord) -> None:
        self.last = record.getMessage()


# -- the handle ---------------------------------------------------------------------------------


class LiveCluster:
    """A running view of a cluster's services; made by :func:`connect`.

    :meth:`picker` gives a :class:`LivePicker` per call. Usable from any thread and from any
    event loop; a context manager (``with`` and ``async with``), or call :meth:`close`.
    """

    def __init__(self, source: Source, *, description: str, node_name: str | None = None,
                 min_sync_period: float = 0.05, timeout: float = 10.0,
                 errors: _LastError | None = None) -> None:
        self.source = source
        self.description = description
        self.node_name = node_name
        self.timeout = timeout
        self._errors = errors or _LastError()
        self._frontend = _PickerFrontend(source.context)
        self._min_sync_period = min_sync_period
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._closed = False
        self._started = threading.Event()
        self._thread = threading.Thread(
            target=self._serve, name=f"lbcore-live-{source.name}", daemon=True
        )
        self._thread.start()

    # -- state --------------------------------------------------------------------------------

    @property
    def snapshot(self) -> Snapshot:
        """The latest snapshot applied to the pickers (empty until ready)."""
        return self._frontend.snapshot

    @property
    def ready(self) -> bool:
        """True once the source has listed and a sync has applied the lists."""
        return self._frontend.ready.done() and self._frontend.ready.exception() is None

    def wait_ready(self, timeout: float | None = None) -> None:
        """Block until the first full sync; :class:`SourceNotReady` after ``timeout`` seconds
        (the handle's default when None)."""
        self._check_open()
        limit = self.timeout if timeout is None else timeout
        try:
            self._frontend.ready.result(limit)
        except TimeoutError:
            raise SourceNotReady(self._not_ready(limit)) from None

    async def wait_ready_async(self, timeout: float | None = None) -> None:
        """As :meth:`wait_ready`, without blocking the running event loop."""
        self._check_open()
        limit = self.timeout if timeout is None else timeout
        try:
            # shielded: a timeout here must not cancel the handle's own future
            await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(self._frontend.ready)), limit)
        except TimeoutError:
            raise SourceNotReady(self._not_ready(limit)) from None

    def _not_ready(self, limit: float) -> str:
        why = self._errors.last or "no error was reported; it is still listing"
        return f"{self.description}: no full list within {limit:g} s (last error: {why})"

    def service_port(self, namespace: str, name: str, port: str | int | None = None
                     ) -> ServicePortInfo:
        """The current ``ServicePortInfo`` of a port (by name, by number, or the only one).

        :raises ServiceNotFound: no such service, or no such port (the message lists them).
        """
        self.wait_ready()
        return self._find(self._frontend.snapshot, namespace, name, port)

    def picker(self, namespace: str, name: str, port: str | int | None = None, *,
               algorithm: str = "round_robin", traffic: Traffic = "internal",
               **options: Any) -> LivePicker:
        """A new :class:`LivePicker` of one service port, following it until :meth:`close`.

        :param port: the port's name, its number (then followed by its name), or None for a
            service with one port.
        :param algorithm: any of ``lbcore.balancers.available()``.
        :param traffic: ``"internal"`` or ``"external"``, for the service's traffic policies.
        :param options: the other arguments of :class:`~lbcore.Picker` (``capacity``,
            ``hash_key``, ``session_affinity`` to override the service's, timeouts, the
            algorithm's options).
        :raises ServiceNotFound: no such service or port now.
        """
        self.wait_ready()
        frontend = self._frontend
        with frontend.lock:  # no sync between reading the snapshot and registering
            info = self._find(frontend.snapshot, namespace, name, port)
            picker = LivePicker(info.key, info, algorithm, traffic, self.node_name, options)
            frontend.pickers.add(picker)
        return picker

    @staticmethod
    def _find(snapshot: Snapshot, namespace: str, name: str, port: str | int | None
              ) -> ServicePortInfo:
        ports = snapshot.ports_of(f"{namespace}/{name}")
        if not ports:
            raise ServiceNotFound(
                f'service "{namespace}/{name}" not found (or it has no cluster IP: headless '
                "services have no picker)"
            )
        if port is None:
            if len(ports) == 1:
                return ports[0]
            matches = []
        elif isinstance(port, int):
            matches = [p for p in ports if p.port == port]
        else:
            matches = [p for p in ports if p.port_name == port]
        if len(matches) == 1:
            return matches[0]
        known = ", ".join(f"{p.port_name or '(unnamed)'} ({p.port}/{p.protocol})" for p in ports)
        what = "a port is needed" if port is None else f"no port {port!r}"
        raise ServiceNotFound(f'service "{namespace}/{name}": {what}; its ports: {known}')

    # -- lifecycle ----------------------------------------------------------------------------

    def close(self, timeout: float = 10.0) -> None:
        """Stop the source and the sync loop; the pickers' picks raise :class:`ServiceGone`.
        Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._started.wait(timeout)
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None:
            with contextlib.suppress(RuntimeError):  # the loop already ended
                loop.call_soon_threadsafe(stop.set)
        self._thread.join(timeout)
        with self._frontend.lock:
            for picker in list(self._frontend.pickers):
                picker._follow(None, "is no longer followed: its lbcore.connect() handle closed")
        if not self._frontend.ready.done():
            self._frontend.ready.set_exception(SourceNotReady(f"{self.description}: closed"))

    def _check_open(self) -> None:
        if self._closed:
            raise LbcoreError(f"{self.description}: this handle is closed")

    def __enter__(self) -> LiveCluster:
        try:
            self.wait_ready()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    async def __aenter__(self) -> LiveCluster:
        try:
            await self.wait_ready_async()
        except BaseException:
            await self.aclose()
            raise
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """:meth:`close`, without blocking the running event loop."""
        await asyncio.get_running_loop().run_in_executor(None, self.close)

    def __repr__(self) -> str:
        state = "closed" if self._closed else "ready" if self.ready else "listing"
        return f"<LiveCluster {self.description} {state}>"

    # -- the handle's thread ------------------------------------------------------------------

    def _serve(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # pragma: no cover - reported to whoever waits
            if not self._frontend.ready.done():
                self._frontend.ready.set_exception(exc)
        finally:
            self._started.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._started.set()
        if self._closed:
            return
        state = ClusterState(
            ServiceTable(allocate=False), {"live": self._frontend},
            node_name=self.node_name or "localhost", min_sync_period=self._min_sync_period,
            listed=synced_event(self.source),
        )
        tasks = [
            asyncio.create_task(state.run(), name="lbcore-live-sync"),
            asyncio.create_task(self._run_source(state), name="lbcore-live-source"),
            asyncio.create_task(self._mark_ready(state), name="lbcore-live-ready"),
        ]
        try:
            await self._stop.wait()
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    async def _mark_ready(self, state: ClusterState) -> None:
        """Ready once the source has listed every kind and a sync carried those lists. The
        built-in sources say when they have listed with a ``synced`` event; a source without
        one is taken as ready at the first sync."""
        listed = synced_event(self.source)
        if listed is not None:
            await listed.wait()
        self._frontend.ready_at = state.table.version
        state.request_sync()

    async def _run_source(self, state: ClusterState) -> None:
        """Run the source; when it ends or fails, log it and start it again with backoff."""

        def report(error: str | None) -> None:
            if error is not None:
                self._errors.last = error

        await run_source_forever(self.source, state, self.description, report)


# -- connect ------------------------------------------------------------------------------------


def connect(source: Any, *, token: str | None = None, context: str | None = None,
            mode: str | None = None, namespace: str | None = None,
            options: Mapping[str, Any] | None = None, node_name: str | None = None,
            min_sync_period: float = 0.05, timeout: float = 10.0) -> LiveCluster:
    """Follow a cluster's services; ``handle.picker(namespace, name, port)`` gives live pickers.

    :param source: where the services come from:

        - ``"http://127.0.0.1:10257"`` (any ``http://`` or ``https://`` URL): an API server, such
          as the admin API of a running ``lbcore run``, through the ``kubernetes`` source;
        - a path (``str`` or ``Path``) to a kubeconfig file: its cluster, through the same source;
        - an :class:`lbcore.runtime.store.Store` (for instance ``Daemon.store``): that store in
          this process, through the ``local`` source.
    :param token: a bearer token for a URL (``lbcore run`` beyond loopback needs one).
    :param context: the kubeconfig context (default: its current one).
    :param mode: ``"pods"`` (Services and Pods: lbcore computes endpoints, as the daemon does)
        or ``"endpointslices"`` (Services and EndpointSlices, as kube-proxy). Default: pods for
        a URL (what lbcore's store holds), endpointslices for a kubeconfig.
    :param namespace: follow one namespace only (default: all).
    :param options: more options of the source plugin (``backoff_initial``, ``read_timeout``...).
    :param node_name: this node, for services with a ``Local`` traffic policy (None: every
        endpoint counts as local).
    :param min_sync_period: seconds between two syncs at most as often (a burst makes one).
    :param timeout: seconds the first call that needs the state waits for the source's lists.
    :raises ConfigError: a source that cannot be used (an unknown option, a missing kubeconfig).

    The handle starts at once and lists in the background; see :class:`LiveCluster`.
    """
    extra = dict(options or {})
    if namespace is not None:
        extra["namespace"] = namespace
    if hasattr(source, "subscribe") and hasattr(source, "list"):
        plugin, description = "local", "the in-process store"
        store: Any = source
    elif isinstance(source, str) and source.startswith(("http://", "https://")):
        plugin, description, store = "kubernetes", source, None
        extra = {"server": source, "mode": mode or "pods", **extra}
        if token:
            extra["token"] = token
    elif isinstance(source, str | os.PathLike):
        path = Path(source).expanduser()
        if not path.is_file():
            raise ConfigError(f"source: {str(source)!r} is neither a URL nor a kubeconfig file")
        plugin, description, store = "kubernetes", f"kubeconfig {path}", None
        extra = {"kubeconfig": str(path), "mode": mode or "endpointslices", **extra}
        if context:
            extra["context"] = context
    else:
        raise ConfigError(
            f"source: expected a URL, a kubeconfig path or a Store, got {type(source).__name__}"
        )
    sources = registered("lbcore_register_sources")
    if plugin not in sources:
        raise ConfigError(
            f"source: the {plugin!r} source plugin is not installed; "
            f"available: {', '.join(sorted(sources)) or 'none'}"
        )
    errors = _LastError()
    logger = logging.getLogger(f"lbcore.live.{next(_ids)}")
    logger.addHandler(errors)
    runtime = RuntimeContext(node_name=node_name or "localhost", store=store, log=logger)
    return LiveCluster(
        sources[plugin](extra, runtime), description=description, node_name=node_name,
        min_sync_period=min_sync_period, timeout=timeout, errors=errors,
    )
