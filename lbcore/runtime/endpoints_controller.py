"""The endpoints controller: the embedded store's Endpoints and EndpointSlices, from its pods.

In a cluster, kube-controller-manager's endpoints and EndpointSlice controllers watch Services
and Pods and write, for every Service with a selector, a v1 ``Endpoints`` object and
``discovery.k8s.io/v1`` EndpointSlices; kube-proxy and kubectl read those. The daemon's store
plays the API server, and this module plays those two controllers, so that ``kubectl get ep``,
``kubectl get endpointslices``, ``describe service`` and the data path read the same stored
objects from ``lbcore run`` as from a cluster.

How it runs:

- it subscribes to the store's commits before it lists Services, Pods, Endpoints and
  EndpointSlices, and skips events its lists already hold (every change carries the store's
  revision), so nothing is lost or seen twice; the daemon has it list once the frontends'
  first full sync is done (``run(after=...)``): the data path reads the stored slices, which
  the controller only brings in line, so at start the two do not share the interpreter's one
  lock while the frontends are programmed;
- a commit only queues the event (the writer never waits for the controller); the controller's
  task on the daemon's event loop drains the queue, keeps a :class:`~lbcore.SelectorIndex` per
  namespace, and marks dirty only the services that selected a changed pod before or select it
  after (work proportional to the pod's labels, not to the number of services), then
  reconciles each dirty service once, however many of its pods changed in the batch;
- what to write is decided by :func:`lbcore.model.endpoints.reconcile_endpoint_slices` and
  :func:`lbcore.model.endpoints.endpoints_object` (Kubernetes' rules: ready, serving and
  terminating conditions, at most 100 endpoints per slice, a placeholder slice for a service
  without endpoints), and written through the store's normal write path, so admission runs
  once, resourceVersions advance and watches see every change. What it holds of each stored
  slice and Endpoints is the store's parsed object (no text) and the digest of what a
  reconcile compares (:func:`lbcore.model.endpoints.slice_digest`, ``endpoints_digest``): a
  reconcile that writes nothing reads nothing from the store, and one that rewrites a slice
  reads that slice's text (for its metadata) once;
- slices it manages carry ``endpointslice.kubernetes.io/managed-by`` and Endpoints it manages
  ``endpointslice.kubernetes.io/skip-mirror``; it never touches others, so a service without a
  selector keeps the Endpoints and EndpointSlices users write, as in Kubernetes. A managed
  object someone else changes or deletes is written again, as the controllers would;
- and, as the EndpointSliceMirroring controller, it mirrors the Endpoints a user writes for a
  service without selector into EndpointSlices (:func:`lbcore.model.endpoints.
  mirror_endpoint_slices`), so that what reads slices (kubectl's describe, the data path) sees
  them, as in a cluster.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from lbcore.core._selectors import SelectorIndex, selector_from_map
from lbcore.errors import ValidationError
from lbcore.model.endpoints import (
    MANAGED_BY,
    MANAGED_BY_LABEL,
    MAX_ENDPOINTS_PER_SLICE,
    MIRRORED_BY,
    SKIP_MIRROR_LABEL,
    StoredSlice,
    endpoint_fields,
    endpoints_digest,
    endpoints_object,
    mirror_endpoint_slices,
    reconcile_endpoint_slices,
    slice_digest,
    wants_endpoints,
)
from lbcore.model.objects import (
    SERVICE_NAME_LABEL,
    Endpoints,
    EndpointSlice,
    Object,
    Pod,
    Service,
)
from lbcore.runtime import jsontext
from lbcore.runtime.logs import event
from lbcore.runtime.store import (
    AlreadyExists,
    Conflict,
    NotFound,
    Store,
    StoreError,
    call_in_loop,
)

log = logging.getLogger("lbcore.runtime.endpoints_controller")

__all__ = ["EndpointsController"]

# services reconciled between two yields to the event loop, so that a full resync of thousands
# of services does not hold the admin API for its whole length
_BATCH = 64


def _meta(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    meta = obj.get("metadata")
    return meta if isinstance(meta, Mapping) else {}


def _identity(obj: Mapping[str, Any] | Object) -> tuple[Any, str, str]:
    """(kind, namespace, name) of a stored dict or of an object the store parsed."""
    if isinstance(obj, Object):
        return obj.kind, obj.namespace or "default", obj.name
    meta = _meta(obj)
    return obj.get("kind"), meta.get("namespace") or "default", str(meta.get("name") or "")


def _managed_slice(obj: Mapping[str, Any] | Object) -> str | None:
    """``namespace/service`` of a slice this controller manages, else None."""
    if isinstance(obj, Object):
        labels: Mapping[str, Any] = getattr(obj, "labels", {})
    else:
        labels = _meta(obj).get("labels") or {}
    if labels.get(MANAGED_BY_LABEL) not in (MANAGED_BY, MIRRORED_BY) or not labels.get(
            SERVICE_NAME_LABEL):
        return None
    return f"{_identity(obj)[1]}/{labels[SERVICE_NAME_LABEL]}"


def _version(obj: Mapping[str, Any] | Object) -> int:
    if isinstance(obj, Object):
        return int(obj.resource_version or 0)
    return int(_meta(obj).get("resourceVersion") or 0)


# What the controller keeps of a stored EndpointSlice or Endpoints: its resourceVersion, the
# object as the store parsed it, which ClusterState holds too (it keeps no text: the store reads
# it when asked), or the dict when it cannot be parsed, and the digest of what a reconcile
# compares of it (slice_digest, endpoints_digest): a reconcile that writes nothing reads no text.
_Kept = tuple[int, Any, bytes]


def _name(kept: _Kept) -> str:
    obj = kept[1]
    return obj.name if isinstance(obj, Object) else str(_meta(obj).get("name") or "")


def _labels(kept: _Kept) -> Mapping[str, str]:
    obj = kept[1]
    if isinstance(obj, EndpointSlice | Endpoints):
        return obj.labels
    return _meta(obj).get("labels") or {}


def _managed_endpoints(kept: _Kept) -> bool:
    return _labels(kept).get(SKIP_MIRROR_LABEL) == "true"


class EndpointsController:
    """Writes Endpoints and EndpointSlices into ``store`` for every Service with a selector.

    Call :meth:`run` as a task on the loop that owns the store's writers; cancel it to stop.

    :param max_endpoints_per_slice: Kubernetes' ``--max-endpoints-per-slice`` (default 100).
    """

    def __init__(self, store: Store, max_endpoints_per_slice: int = MAX_ENDPOINTS_PER_SLICE):
        self.store = store
        store.slices_kept = True
        self.max_endpoints_per_slice = max_endpoints_per_slice
        self._events: deque[dict[str, Any]] = deque()
        self._wakeup = asyncio.Event()
        self._index: defaultdict[str, SelectorIndex] = defaultdict(SelectorIndex)
        self._services: dict[str, Service] = {}
        self._pods: dict[str, Pod] = {}
        # service key -> slice name -> the managed slice as stored
        self._slices: defaultdict[str, dict[str, _Kept]] = defaultdict(dict)
        self._endpoints: dict[str, _Kept] = {}  # key -> stored Endpoints (any)
        self._dirty: set[str] = set()
        self._listed_at: dict[str, int] = {}
        self.synced = asyncio.Event()  # set once every service has been reconciled once
        self.writes = 0  # objects written (created, updated or deleted)
        self.reconciles = 0  # services reconciled

    @property
    def backlog(self) -> int:
        """Store commits queued for this controller and not yet drained."""
        return len(self._events)

    # -- the loop -----------------------------------------------------------------------------

    async def run(self, after: Callable[[], Awaitable[Any]] | None = None) -> None:
        """List, reconcile every service, then follow the store's commits until cancelled.

        :param after: what to await before the lists are read (the commits meanwhile are kept
            and applied after them).
        """
        loop = asyncio.get_running_loop()

        def on_commit(change: dict[str, Any]) -> None:
            # in the writing thread, under the store's lock: queue only
            self._events.append(change)
            call_in_loop(loop, self._wakeup.set)

        unsubscribe: Callable[[], None] = self.store.subscribe(on_commit)
        try:
            if after is not None:
                await after()
            # lists of many thousands of pods are parsed on a worker thread, so that the admin
            # API goes on answering meanwhile (nothing else touches this controller's state)
            await asyncio.to_thread(self._list)
            self._dirty.update(self._services)
            self._dirty.update(self._slices)  # managed slices of services gone meanwhile
            self._dirty.update(k for k, e in self._endpoints.items() if _managed_endpoints(e))
            await self._reconcile_dirty()
            self.synced.set()
            while True:
                await self._wakeup.wait()
                self._wakeup.clear()
                self._drain()
                await self._reconcile_dirty()
        finally:
            unsubscribe()

    def _list(self) -> None:
        for kind in ("Service", "Pod"):
            items, rv = self.store.list_parsed(kind)
            self._listed_at[kind] = int(rv)
            for obj in items:
                if not isinstance(obj, Object):  # one the store could not parse
                    obj.setdefault("kind", kind)
                self._observe("ADDED", obj)
        # Endpoints and slices as their texts: each is decoded once for its digest (the
        # parsed objects, which the store's parse gives back as ClusterState holds them, keep
        # no text), and the decoded dict dropped at once
        for kind in ("Endpoints", "EndpointSlice"):
            texts, rv = self.store.list_json(kind)
            self._listed_at[kind] = int(rv)
            for text in texts:
                obj = jsontext.loads(text)
                obj.setdefault("kind", kind)
                self._observe("ADDED", obj)

    def _drain(self) -> None:
        while self._events:
            change = self._events.popleft()
            obj = change["object"]
            kind = obj.get("kind")
            if kind not in self._listed_at:
                continue
            if int(_meta(obj).get("resourceVersion") or 0) <= self._listed_at[kind]:
                continue  # the list held it already
            self._observe(change["type"], obj)

    # -- what the store holds -------------------------------------------------------------------

    def _observe(self, typ: str, obj: dict[str, Any] | Object) -> None:
        kind, namespace, name = _identity(obj)
        key = f"{namespace}/{name}"
        deleted = typ == "DELETED"
        if kind == "Pod":
            self._observe_pod(namespace, name, None if deleted else obj)
        elif kind == "Service":
            self._observe_service(namespace, name, None if deleted else obj)
        elif kind == "EndpointSlice":
            owner = _managed_slice(obj)
            if owner is None:
                return
            slices = self._slices[owner]
            stored = slices.get(name)
            if deleted:
                if stored is not None:  # someone else deleted it: write it again
                    del slices[name]
                    self._dirty.add(owner)
            elif stored is None or _version(obj) > stored[0]:
                slices[name] = self._kept(obj)  # someone else wrote it: bring it back in line
                self._dirty.add(owner)
            if not slices:
                del self._slices[owner]
        elif kind == "Endpoints":
            stored = self._endpoints.get(key)
            if deleted:
                if stored is not None:
                    del self._endpoints[key]
                    self._dirty.add(key)
            elif stored is None or _version(obj) > stored[0]:
                self._endpoints[key] = self._kept(obj)
                self._dirty.add(key)

    def _kept(self, obj: Mapping[str, Any] | Object) -> _Kept:
        """What to keep of a stored slice or Endpoints, from its dict (listed, committed or
        written): the parsed object (or the dict, when it cannot be parsed) and its digest."""
        try:
            parsed: Any = self.store.parse(obj)
        except ValidationError:
            parsed = obj
        body = obj.raw if isinstance(obj, Object) else obj  # a dict, but for a caller's object
        digest = slice_digest if body.get("kind") == "EndpointSlice" else endpoints_digest
        return _version(obj), parsed, digest(body)

    def _parse(self, obj: Mapping[str, Any] | Object) -> Any:
        try:
            return self.store.parse(obj)
        except ValidationError as exc:
            event(log, "object skipped: it cannot be read", logging.WARNING, error=str(exc))
            return None

    def _observe_pod(self, namespace: str, name: str, obj: dict[str, Any] | Object | None) -> None:
        idx = self._index[namespace]
        pod = self._parse(obj) if obj is not None else None
        key = pod.key if pod is not None else f"{namespace}/{name}"  # the pod's: one string
        if pod is None:
            if self._pods.pop(key, None) is None:
                return
            touched = idx.remove_labels(name)
        else:
            before = self._pods.get(key)
            self._pods[key] = pod
            added, removed = idx.set_labels(name, pod.labels)
            if before is not None and endpoint_fields(before) == endpoint_fields(pod):
                # nothing the endpoints show changed: only the services that gained or lost it
                touched = set(added) | set(removed)
            else:
                touched = set(removed) | set(idx.selectors_matching(name))
        self._dirty.update(f"{namespace}/{s}" for s in touched)

    def _observe_service(self, namespace: str, name: str,
                         obj: dict[str, Any] | Object | None) -> None:
        key = f"{namespace}/{name}"
        idx = self._index[namespace]
        service = self._parse(obj) if obj is not None else None
        self._dirty.add(key)
        if service is None or not wants_endpoints(service):
            idx.remove_selector(name)
            if service is None:
                self._services.pop(key, None)
            else:
                self._services[key] = service
            return
        self._services[key] = service
        assert service.selector is not None
        idx.set_selector(name, selector_from_map(service.selector))

    # -- writing ---------------------------------------------------------------------------------

    async def _reconcile_dirty(self) -> None:
        done = 0
        while self._dirty:
            key = self._dirty.pop()
            try:
                self._reconcile(key)
            except StoreError as exc:
                # a write raced with another writer: the event that follows brings it back here
                raced = isinstance(exc, Conflict | NotFound | AlreadyExists)
                level = logging.DEBUG if raced else logging.WARNING
                event(log, "endpoints not written", level, service=key, error=str(exc))
            done += 1
            self.reconciles += 1
            if done % _BATCH == 0:
                await asyncio.sleep(0)
                self._drain()

    def _reconcile(self, key: str) -> None:
        service = self._services.get(key)
        if service is None or not wants_endpoints(service):
            endpoints = self._endpoints.get(key)
            if (service is not None and service.type != "ExternalName"
                    and endpoints is not None and not _managed_endpoints(endpoints)):
                self._mirror(key, service, endpoints)
            else:
                self._remove(key)
            return
        idx = self._index[service.namespace]
        pods = [self._pods[f"{service.namespace}/{p}"] for p in idx.matching(service.name)]
        self._write_slices(key, MANAGED_BY, lambda existing: reconcile_endpoint_slices(
            service, pods, existing, self.max_endpoints_per_slice))
        self._write_endpoints(key, endpoints_object(service, pods))

    def _mirror(self, key: str, service: Service, endpoints: _Kept) -> None:
        """A service without selector and a user's Endpoints: EndpointSlices mirrored from it,
        as Kubernetes' EndpointSliceMirroring controller writes them."""
        parsed = endpoints[1]
        if not isinstance(parsed, Endpoints):
            self._parse(parsed)  # says why it cannot be read
            return
        self._write_slices(key, MIRRORED_BY, lambda existing: mirror_endpoint_slices(
            service, parsed, existing, self.max_endpoints_per_slice))

    def _write_slices(self, key: str, managed_by: str, plan: Callable[
            [list[StoredSlice]], tuple[list[Any], ...]]) -> None:
        """Write what ``plan`` says for the slices ``managed_by`` holds; delete the slices the
        other manager of this controller left (a service that gained or lost its selector)."""
        mine: list[StoredSlice] = []
        others: list[str] = []
        for kept in self._slices.get(key, {}).values():
            if (isinstance(kept[1], EndpointSlice)
                    and _labels(kept).get(MANAGED_BY_LABEL) == managed_by):
                mine.append(StoredSlice(kept[1], kept[2]))
            else:  # the other manager's, or one that cannot be read: written anew
                others.append(_name(kept))
        create, update, delete = plan(mine)
        for stale in delete:
            assert isinstance(stale, StoredSlice)  # as given
            others.append(stale.slice.name)
        for name in others:
            self._delete_slice(key, name)
        for body in update:
            self._write_slice(key, self.store.update(body))
        for body in create:
            self._write_slice(key, self.store.create(body))

    def _write_slice(self, key: str, stored: dict[str, Any]) -> None:
        self.writes += 1
        self._slices[key][stored["metadata"]["name"]] = self._kept(stored)

    def _delete_slice(self, key: str, name: str) -> None:
        self._slices[key].pop(name, None)
        if not self._slices[key]:
            del self._slices[key]
        try:
            self.store.delete("EndpointSlice", key.partition("/")[0], name)
            self.writes += 1
        except NotFound:
            pass

    def _write_endpoints(self, key: str, desired: dict[str, Any]) -> None:
        kept = self._endpoints.get(key)
        if kept is not None:
            if endpoints_digest(desired) == kept[2]:
                return
            desired["metadata"]["resourceVersion"] = str(kept[0])
            written = self.store.update(desired)
        else:
            written = self.store.create(desired)
        self.writes += 1
        self._endpoints[key] = self._kept(written)

    def _remove(self, key: str) -> None:
        """The service is gone or has no selector: delete what this controller wrote for it."""
        for kept in list(self._slices.get(key, {}).values()):
            self._delete_slice(key, _name(kept))
        stored = self._endpoints.get(key)
        if stored is not None and _managed_endpoints(stored):
            namespace, _, name = key.partition("/")
            del self._endpoints[key]
            try:
                self.store.delete("Endpoints", namespace, name)
                self.writes += 1
            except NotFound:
                pass
