"""Events: what happens to a Service, written as core/v1 Event objects into the store.

A cluster's components record Events about the objects they act on (``kubectl describe``
shows them, ``kubectl get events`` lists them); the daemon does the same for its services:

- ``ClusterIPAllocated`` and ``NodePortAllocated`` (Normal), when a Service is given a
  ClusterIP or a NodePort: :class:`AllocationEvents` follows the store's commits;
- ``FrontendSyncFailed`` (Warning), when a frontend could not program the services of a sync,
  with the frontend's error, and ``NodePortNotServed`` (Warning), when a NodePort service has
  no running frontend that serves node ports: :class:`FrontendEvents`, called after each sync
  beside :class:`lbcore.runtime.observers.UnservedNodePorts`, which logs the same.

:class:`EventRecorder` writes them as client-go's recorder does: an Event named
``{object}.{hex nanoseconds}`` in the object's namespace, ``involvedObject`` naming the object
(with its uid, which ``kubectl describe`` selects on), ``source.component`` and
``reportingComponent`` ``lbcore``; an Event that repeats one already written (same object,
type, reason and message) counts up (``count``, ``lastTimestamp``) instead of adding one. Like
the API server's ``--event-ttl``, Events are deleted an hour after they last happened.

Writes happen on the event loop, in :meth:`EventRecorder.run`, never in the thread of the
write or the sync that caused them: recording only queues.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as _dt
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from lbcore.model.objects import format_timestamp, parse_timestamp
from lbcore.runtime.logs import event as log_event
from lbcore.runtime.observers import ports_of_changed
from lbcore.runtime.store import call_in_loop

log = logging.getLogger("lbcore.runtime.events")

COMPONENT = "lbcore"
EVENT_TTL = 3600.0  # seconds, the API server's default --event-ttl
# at most this many services get an Event about one failed sync (the rest are in the log)
MAX_SERVICES_PER_FAILURE = 100


@dataclass(frozen=True, slots=True)
class _Record:
    kind: str
    namespace: str
    name: str
    type: str
    reason: str
    message: str
    involved: Mapping[str, Any] | None = None  # the object, when the caller has it


class EventRecorder:
    """Queues Events about objects and writes them into ``store`` from :meth:`run`.

    :param store: a :class:`lbcore.runtime.store.Store`.
    :param instance: ``reportingInstance`` (the node's name).
    :param ttl: seconds after its last occurrence an Event is deleted.
    """

    def __init__(self, store: Any, instance: str = "", ttl: float = EVENT_TTL,
                 clock: Callable[[], _dt.datetime] | None = None) -> None:
        self.store = store
        self.instance = instance
        self.ttl = ttl
        self._clock = clock or (lambda: _dt.datetime.now(_dt.UTC))
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue[_Record] | None = None
        with contextlib.suppress(RuntimeError):  # made on the loop: record from now on
            self._loop = asyncio.get_running_loop()
            self._queue = asyncio.Queue()
        self._written: dict[tuple[str, ...], str] = {}  # what an Event is about -> its name
        self.recorded = 0

    def record(self, kind: str, namespace: str, name: str, type_: str, reason: str,
               message: str, involved: Mapping[str, Any] | None = None) -> None:
        """Queue an Event about the object (from any thread; dropped before :meth:`run`)."""
        loop, queue = self._loop, self._queue
        if loop is None or queue is None or loop.is_closed():
            return
        call_in_loop(loop, queue.put_nowait,
                     _Record(kind, namespace, name, type_, reason, message, involved))

    async def run(self) -> None:
        """Write what is recorded, and delete Events past their ttl, until cancelled."""
        if self._loop is not asyncio.get_running_loop() or self._queue is None:
            self._loop, self._queue = asyncio.get_running_loop(), asyncio.Queue()
        next_sweep = time.monotonic()
        try:
            while True:
                # asyncio.timeout, not wait_for: a stop that cancels wait_for (3.11) as a record
                # comes in waited for the timeout's end, up to a minute
                item = None
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(60.0, self.ttl)):
                        item = await self._queue.get()
                if item is not None:
                    try:
                        self._write(item)
                    except Exception as exc:  # an Event is never worth stopping for
                        log_event(log, "event not written", logging.WARNING,
                                  object=f"{item.namespace}/{item.name}", reason=item.reason,
                                  error=repr(exc))
                if time.monotonic() >= next_sweep:
                    next_sweep = time.monotonic() + min(60.0, self.ttl)
                    with contextlib.suppress(Exception):
                        self._sweep()
        finally:
            self._loop = None

    def _write(self, item: _Record) -> None:
        from lbcore.runtime.store import NotFound

        involved = item.involved
        if involved is None:
            try:
                involved = self.store.get(item.kind, item.namespace, item.name)
            except NotFound:
                return  # the object is gone: nothing to tell about it
        meta = involved.get("metadata") or {}
        key = (str(meta.get("uid")), item.type, item.reason, item.message)
        now = format_timestamp(self._clock())
        name = self._written.get(key)
        if name is not None:
            with contextlib.suppress(NotFound):
                current = self.store.get("Event", item.namespace, name)
                current["count"] = int(current.get("count") or 1) + 1
                current["lastTimestamp"] = now
                self.store.update(current)
                self.recorded += 1
                return
        name = f"{item.name}.{time.time_ns():x}"
        self.store.create({
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": name, "namespace": item.namespace},
            "involvedObject": {
                "kind": item.kind,
                "namespace": item.namespace,
                "name": item.name,
                "uid": meta.get("uid", ""),
                "apiVersion": involved.get("apiVersion", "v1"),
                "resourceVersion": meta.get("resourceVersion", ""),
            },
            "reason": item.reason,
            "message": item.message,
            "type": item.type,
            "source": {"component": COMPONENT},
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
            "reportingComponent": COMPONENT,
            "reportingInstance": self.instance,
        })
        self._written[key] = name
        self.recorded += 1

    def _sweep(self) -> None:
        """Delete the Events that last happened more than ``ttl`` seconds ago."""
        from lbcore.runtime.store import NotFound

        cutoff = self._clock() - _dt.timedelta(seconds=self.ttl)
        events, _ = self.store.list("Event")
        for ev in events:
            last = parse_timestamp(ev.get("lastTimestamp") or ev.get("firstTimestamp"))
            if last is not None and last < cutoff:
                meta = ev["metadata"]
                with contextlib.suppress(NotFound):
                    self.store.delete("Event", meta["namespace"], meta["name"])
        kept = {ev["metadata"]["name"] for ev in self.store.list("Event")[0]}
        self._written = {k: n for k, n in self._written.items() if n in kept}


def _node_ports(service: Mapping[str, Any]) -> dict[str, int]:
    return {f"{p.get('port')}/{p.get('protocol', 'TCP')}": int(p["nodePort"])
            for p in (service.get("spec") or {}).get("ports") or []
            if isinstance(p, Mapping) and p.get("nodePort")}


class AllocationEvents:
    """A store listener: ``ClusterIPAllocated`` and ``NodePortAllocated`` when a Service gets
    an address or a node port it did not hold (on create, or on an update that adds one)."""

    def __init__(self, recorder: EventRecorder, services: Iterable[Mapping[str, Any]] = ()):
        self.recorder = recorder
        # namespace/name -> (ClusterIPs, node ports) the service held when last seen
        self._held: dict[str, tuple[frozenset[str], dict[str, int]]] = {}
        for svc in services:
            self._held[self._key(svc)] = self._allocated(svc)

    @staticmethod
    def _key(svc: Mapping[str, Any]) -> str:
        meta = svc.get("metadata") or {}
        return f"{meta.get('namespace', '')}/{meta.get('name', '')}"

    @staticmethod
    def _allocated(svc: Mapping[str, Any]) -> tuple[frozenset[str], dict[str, int]]:
        ips = (svc.get("spec") or {}).get("clusterIPs") or []
        return frozenset(ip for ip in ips if ip and ip != "None"), _node_ports(svc)

    def __call__(self, change: Mapping[str, Any]) -> None:
        svc = change.get("object") or {}
        if svc.get("kind") != "Service":
            return
        key = self._key(svc)
        if change.get("type") == "DELETED":
            self._held.pop(key, None)
            return
        ips, ports = self._allocated(svc)
        old_ips, old_ports = self._held.get(key, (frozenset(), {}))
        self._held[key] = (ips, ports)
        meta = svc.get("metadata") or {}
        namespace, name = str(meta.get("namespace", "")), str(meta.get("name", ""))
        spec = svc.get("spec") or {}
        families = dict(zip(spec.get("clusterIPs") or [], spec.get("ipFamilies") or [],
                            strict=False))
        for ip in sorted(ips - old_ips):
            family = f" ({families[ip]})" if ip in families else ""
            self.recorder.record("Service", namespace, name, "Normal", "ClusterIPAllocated",
                                 f"Allocated ClusterIP {ip}{family}", svc)
        for port, node_port in sorted(ports.items()):
            if old_ports.get(port) != node_port:
                self.recorder.record("Service", namespace, name, "Normal", "NodePortAllocated",
                                     f"Allocated NodePort {node_port} for port {port}", svc)


class FrontendEvents:
    """An ``on_sync_done`` observer: a Warning Event on the services a frontend could not
    program (``FrontendSyncFailed``), and on NodePort services no running frontend serves
    (``NodePortNotServed``, once per service and node port)."""

    def __init__(self, recorder: EventRecorder, frontends: Iterable[str],
                 serves_node_ports: bool) -> None:
        self.recorder = recorder
        self.frontends = sorted(frontends)
        self.serves_node_ports = serves_node_ports
        self._told: set[tuple[str, int]] = set()

    def __call__(self, snapshot: Any, changed: Iterable[str] = (),
                 errors: Mapping[str, str] | None = None, **_: Any) -> None:
        for frontend, error in sorted((errors or {}).items()):
            for key in sorted(changed)[:MAX_SERVICES_PER_FAILURE]:
                namespace, _sep, name = key.partition("/")
                self.recorder.record("Service", namespace, name, "Warning",
                                     "FrontendSyncFailed",
                                     f"frontend {frontend} could not program the service: {error}")
        if self.serves_node_ports:
            return
        for sp in ports_of_changed(snapshot, changed):  # a node port comes with its service
            if sp.type in ("NodePort", "LoadBalancer") and sp.node_port \
                    and (sp.service, sp.node_port) not in self._told:
                self._told.add((sp.service, sp.node_port))
                namespace, _sep, name = sp.service.partition("/")
                self.recorder.record(
                    "Service", namespace, name, "Warning", "NodePortNotServed",
                    f"node port {sp.node_port} is not served: no running frontend serves node "
                    f"ports (frontends: {', '.join(self.frontends) or 'none'}); add nodeport, "
                    "iptables or nftables to the config's frontends")
