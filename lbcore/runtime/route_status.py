"""The route status controller: ``status.ingress[]`` of Routes and ``status.loadBalancer`` of
Ingresses in the embedded store, as a router writes them in a cluster.

An OpenShift router records, in each Route it considers, one ``status.ingress[]`` entry under
its ``routerName``: the host, the wildcard policy, and a condition ``Admitted`` that is ``True``,
or ``False`` with a reason (``HostAlreadyClaimed`` when an older route holds the host and path)
and a message. An ingress controller writes the addresses it serves an Ingress on into
``status.loadBalancer.ingress``. The daemon's store plays the API server, and this controller
plays that part of the router, so that ``kubectl get routes -o yaml`` and ``lbcore describe
route`` say why a route is not served.

How it runs, like the endpoints controller (:mod:`lbcore.runtime.endpoints_controller`):

- it subscribes to the store's commits, then lists Routes and Ingresses; a commit only queues
  its event, and the controller's task on the daemon's loop drains the queue;
- who holds a host is decided by the one conflict rule, :func:`lbcore.model.routes.
  claims_outcome`, over every Route and every Ingress of the served class, which the routing
  table of the route frontend asks too, so the status says what the data path does;
- a status that differs from the stored one is written through the store's normal write path
  (admission runs once, the resourceVersion advances, watchers see it); entries of other
  routers are kept, and a condition keeps its ``lastTransitionTime`` while it says the same.
  Its own writes come back as events and find nothing to change.
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import ipaddress
import logging
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from lbcore.errors import ValidationError
from lbcore.model.objects import Ingress, Route, format_timestamp, parse_admitted
from lbcore.model.routes import (
    DEFAULT_INGRESS_CLASS,
    Rejection,
    claims_of,
    claims_outcome,
    ingress_is_served,
)
from lbcore.runtime.logs import event
from lbcore.runtime.store import Conflict, NotFound, Store, StoreError, call_in_loop

log = logging.getLogger("lbcore.runtime.route_status")

__all__ = ["DEFAULT_ROUTER_NAME", "RouteStatusController", "ingress_status", "route_status"]

DEFAULT_ROUTER_NAME = "lbcore"
_KINDS = ("Route", "Ingress")


def _condition(rejection: Rejection | None, now: str,
               old: Mapping[str, Any] | None) -> dict[str, Any]:
    condition: dict[str, Any] = {"type": "Admitted", "status": "True"}
    if rejection is not None:
        condition.update(status="False", reason=rejection.reason, message=rejection.message)
    same = old is not None and all(old.get(k) == condition.get(k)
                                   for k in ("status", "reason", "message"))
    stamp = old.get("lastTransitionTime") if same and old is not None else None
    condition["lastTransitionTime"] = stamp or now
    return condition


def route_status(route: Route, rejection: Rejection | None, router_name: str, now: str,
                 canonical_hostname: str | None = None) -> dict[str, Any]:
    """The ``status`` a Route should have: its other routers' entries as they are, and this
    router's entry saying whether it is admitted (and why not)."""
    entries = [e for e in (route.raw.get("status") or {}).get("ingress") or []
               if isinstance(e, Mapping) and e.get("routerName") != router_name]
    mine = next((e for e in (route.raw.get("status") or {}).get("ingress") or []
                 if isinstance(e, Mapping) and e.get("routerName") == router_name), None)
    old_condition = next((c for c in (mine or {}).get("conditions") or []
                          if isinstance(c, Mapping) and c.get("type") == "Admitted"), None)
    entry: dict[str, Any] = {"host": route.host, "routerName": router_name,
                             "wildcardPolicy": route.wildcard_policy,
                             "conditions": [_condition(rejection, now, old_condition)]}
    if canonical_hostname:
        entry["routerCanonicalHostname"] = canonical_hostname
    return {**(route.raw.get("status") or {}), "ingress": [*entries, entry]}


def ingress_status(ingress: Ingress, addresses: Iterable[str]) -> dict[str, Any]:
    """The ``status`` a served Ingress should have: the addresses it is served on."""
    points = []
    for address in addresses:
        try:
            points.append({"ip": str(ipaddress.ip_address(address))})
        except ValueError:
            points.append({"hostname": address})
    return {**(ingress.raw.get("status") or {}),
            "loadBalancer": {"ingress": points} if points else {}}


class RouteStatusController:
    """Writes the status of every Route and served Ingress of ``store``.

    Call :meth:`run` as a task on the loop that owns the store's writers; cancel it to stop.

    :param router_name: this router's name in ``status.ingress[].routerName``.
    :param addresses: the addresses Ingresses are served on (the route frontend's listeners),
        or a function that returns them when a status is written.
    :param ingress_class: the IngressClass served; ``default_class`` also serves Ingresses
        that name none.
    :param canonical_hostname: ``status.ingress[].routerCanonicalHostname``, when given.
    """

    def __init__(self, store: Store, router_name: str = DEFAULT_ROUTER_NAME,
                 addresses: Iterable[str] | Callable[[], Iterable[str]] = (),
                 ingress_class: str = DEFAULT_INGRESS_CLASS, default_class: bool = False,
                 canonical_hostname: str | None = None,
                 clock: Callable[[], _dt.datetime] = lambda: _dt.datetime.now(_dt.UTC)):
        self.store = store
        self.router_name = router_name
        self._addresses = addresses
        self.ingress_class = ingress_class
        self.default_class = default_class
        self.canonical_hostname = canonical_hostname
        self._clock = clock
        self._events: deque[dict[str, Any]] = deque()
        self._wakeup = asyncio.Event()
        self._objects: dict[tuple[str, str, str], Route | Ingress] = {}
        self.synced = asyncio.Event()  # set once every object has been reconciled once
        self.writes = 0

    def addresses(self) -> list[str]:
        """The addresses Ingresses are served on, now."""
        given = self._addresses() if callable(self._addresses) else self._addresses
        return list(dict.fromkeys(given))

    # -- the loop -----------------------------------------------------------------------------

    async def run(self) -> None:
        """List, reconcile everything, then follow the store's commits until cancelled."""
        loop = asyncio.get_running_loop()

        def on_commit(change: dict[str, Any]) -> None:
            # in the writing thread, under the store's lock: queue only
            if (change.get("object") or {}).get("kind") not in _KINDS or loop.is_closed():
                return
            self._events.append(change)
            call_in_loop(loop, self._wakeup.set)

        unsubscribe = self.store.subscribe(on_commit)
        try:
            for kind in _KINDS:
                for obj in self.store.list(kind)[0]:
                    self._observe("ADDED", obj)
            self.reconcile()
            self.synced.set()
            while True:
                await self._wakeup.wait()
                self._wakeup.clear()
                while self._events:
                    change = self._events.popleft()
                    self._observe(change["type"], change["object"])
                self.reconcile()
        finally:
            unsubscribe()

    def _observe(self, typ: str, obj: Mapping[str, Any]) -> None:
        meta = obj.get("metadata") or {}
        key = (str(obj.get("kind")), meta.get("namespace") or "default", str(meta.get("name")))
        if typ == "DELETED":
            self._objects.pop(key, None)
            return
        stored = self._objects.get(key)
        version = int(meta.get("resourceVersion") or 0)
        if stored is not None and int(stored.raw["metadata"].get("resourceVersion") or 0) > version:
            return  # an older event than what is known (the list held a newer one)
        try:
            parsed = parse_admitted(obj)
        except ValidationError as exc:
            event(log, "object skipped: it cannot be read", logging.WARNING, error=str(exc))
            return
        if isinstance(parsed, Route | Ingress):
            self._objects[key] = parsed

    # -- writing ---------------------------------------------------------------------------------

    def reconcile(self) -> None:
        """Write every status that is not what the conflict rule says now."""
        routes = [o for o in self._objects.values() if isinstance(o, Route)]
        ingresses = [o for o in self._objects.values() if isinstance(o, Ingress)]
        _, rejected = claims_outcome(claims_of(routes, ingresses, self.ingress_class,
                                               self.default_class))
        why = {(r.kind, r.namespace, r.name): r for r in reversed(rejected)}
        now = format_timestamp(self._clock())
        for route in routes:
            if route.host:
                self._write(route, route_status(route, why.get(("Route", route.namespace,
                                                                 route.name)),
                                                self.router_name, now, self.canonical_hostname))
        addresses = self.addresses()
        for ing in ingresses:
            if ingress_is_served(ing, self.ingress_class, self.default_class):
                self._write(ing, ingress_status(ing, addresses))

    def _write(self, obj: Route | Ingress, status: dict[str, Any]) -> None:
        if (obj.raw.get("status") or {}) == status:
            return
        body = obj.to_dict()
        body["status"] = status
        try:
            written = self.store.update(body)
        except StoreError as exc:
            # a write raced with another writer: the event that follows brings it back here
            raced = isinstance(exc, Conflict | NotFound)
            event(log, "status not written", logging.DEBUG if raced else logging.WARNING,
                  object=f"{obj.kind} {obj.key}", error=str(exc))
            return
        self.writes += 1
        self._objects[(obj.kind, obj.namespace, obj.name)] = parse_admitted(written)  # type: ignore[assignment]
