"""The small interfaces that sources and frontends implement."""

from __future__ import annotations

import abc
import asyncio
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lbcore.model.objects import Object
from lbcore.model.snapshot import Snapshot


class FrontendUnavailable(RuntimeError):
    """A frontend cannot run here; the message says what to install or how to run."""


@dataclass(frozen=True)
class RuntimeContext:
    """What the daemon tells every plugin about where it runs."""

    node_name: str = "localhost"
    node_addresses: tuple[str, ...] = ()
    data_dir: Path = Path(".")
    service_cidrs: tuple[str, ...] = ()
    node_port_range: tuple[int, int] = (30000, 32767)
    # the embedded store (lbcore.runtime.store.Store) when the daemon runs one, for the local source
    store: Any = None
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("lbcore"))


class Frontend(abc.ABC):
    """Turns snapshots into a data path (listeners, kernel rules, ...).

    ``sync`` is the only place where a frontend changes what it installed, as kube-proxy's
    ``syncProxyRules`` is. It is called from one thread at a time.
    """

    name: str = ""
    #: whether this frontend serves NodePorts (the daemon warns about a NodePort service when
    #: no running frontend does)
    serves_node_ports: bool = False

    def __init__(self, options: Mapping[str, Any], context: RuntimeContext):
        self.options = dict(options)
        self.context = context

    def start(self) -> None:  # noqa: B027 - optional
        """Check prerequisites; raise :class:`FrontendUnavailable` naming what is missing."""

    @abc.abstractmethod
    def sync(self, snapshot: Snapshot, changed: frozenset[str]) -> None:
        """Make the data path match ``snapshot``; ``changed`` names services that changed."""

    def stop(self, keep: bool = False) -> None:  # noqa: B027 - optional
        """Remove everything installed, unless ``keep`` asks to leave it for a restart."""

    def route_addresses(self) -> tuple[str, ...]:
        """The addresses this frontend serves Routes and Ingresses on (its HTTP and HTTPS
        listeners; none by default). The daemon writes them into the ``status.loadBalancer``
        of every Ingress it serves."""
        return ()

    def check(self) -> str | None:
        """Whether what the last sync installed is still in place, found cheaply (a canary that
        an outside flush removes along with the rest, as kube-proxy's ``KUBE-PROXY-CANARY``).

        The daemon calls it every ``rules_check_period`` on the sync thread, between syncs.
        None: in place, or nothing to check (the default). Otherwise one line saying what is
        missing: the daemon reports it on ``/readyz``, counts it, and asks for a :meth:`resync`.
        """
        return None

    def resync(self) -> None:  # noqa: B027 - optional
        """Make the next sync rewrite everything, whatever this frontend believes is installed.

        Called after :meth:`check` found something missing, and every ``sync_period`` as a
        safety net for changes a canary does not show (kube-proxy's ``--iptables-sync-period``).
        """


class SourceSink(abc.ABC):
    """Where a source sends what it learns. Implemented by the runtime's ``ClusterState``.

    Objects are Kubernetes-shaped dicts (``apiVersion``, ``kind``, ``metadata``, ...) of the kinds
    Service, Pod, Endpoints and EndpointSlice, or objects the embedded store parsed already
    (``Store.list_parsed``, which the ``local`` source lists with), taken as they are. Methods
    are called on the daemon's event-loop
    thread; a source working in another thread hands calls over with
    ``loop.call_soon_threadsafe``.
    """

    @abc.abstractmethod
    def upsert(self, obj: Mapping[str, Any] | Object) -> None:
        """An object was added or modified."""

    @abc.abstractmethod
    def delete(self, kind: str, namespace: str, name: str) -> None:
        """An object was deleted."""

    @abc.abstractmethod
    def replace(self, kind: str, objects: Sequence[Mapping[str, Any] | Object]) -> None:
        """A full list of ``kind`` (after a list or relist): anything else of that kind is gone."""

    def slices_suffice(self) -> bool:
        """Whether every service given so far has EndpointSlices, so that neither Endpoints
        objects nor pods change what the data path does. A source that lists Services and
        EndpointSlices first may then set its ``synced`` event (the daemon's first sync waits
        for it) before it lists those kinds. False unless the sink can tell."""
        return False

    async def wait_synced(self) -> None:  # noqa: B027 - optional
        """Until a sync has handed the frontends everything given so far (at once unless the
        sink can tell). A source with more to list after its ``synced`` lets the first sync
        run alone: at 10,000 services, sharing the interpreter with a list made it 3 times
        longer."""


class Source(abc.ABC):
    """Feeds the cluster state from somewhere (the local store, a Kubernetes API server).

    A source may have a ``synced`` attribute, an :class:`asyncio.Event` it sets once the sink
    has the first lists the data path needs; the daemon runs no sync before it is set. When it
    sets ``synced`` before it has listed every kind (see :meth:`SourceSink.slices_suffice`),
    it also has an ``all_listed`` event, set after the last list, which the daemon waits for
    before it counts its start as done (the collector is paused until then).
    """

    name: str = ""

    def __init__(self, options: Mapping[str, Any], context: RuntimeContext):
        self.options = dict(options)
        self.context = context

    @abc.abstractmethod
    async def run(self, sink: SourceSink) -> None:
        """List, then follow changes into ``sink`` until cancelled. Never hang silently:
        reconnect with backoff and log each failure on one line."""


def _event(source: Source | None, name: str) -> asyncio.Event | None:
    event = getattr(source, name, None)
    return event if isinstance(event, asyncio.Event) else None


def synced_event(source: Source | None) -> asyncio.Event | None:
    """The ``synced`` event of ``source`` (see :class:`Source`), or None when it has none."""
    return _event(source, "synced")


def all_listed_event(source: Source | None) -> asyncio.Event | None:
    """The ``all_listed`` event of ``source`` (see :class:`Source`), else its ``synced``."""
    return _event(source, "all_listed") or synced_event(source)
