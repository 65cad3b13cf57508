"""``ServiceTable``: services, pods and endpoints in one place, for embedding lbcore.

Objects go in with :meth:`ServiceTable.apply` and out as a
:class:`~lbcore.model.snapshot.Snapshot` that frontends consume, with
:meth:`ServiceTable.changes_since` telling which services changed. Every change bumps
:attr:`ServiceTable.version`.

With ``allocate=True`` (the default) the table plays the API server: every apply goes through
:func:`lbcore.model.admission.admit` (defaults, validation, ClusterIPs and NodePorts, keeping
what a service already holds, uid and timestamps), the one admission the embedded store uses
too. With ``allocate=False`` objects come admitted (by the store or a cluster's API server) and
are only parsed (:func:`lbcore.model.objects.parse_admitted`), never judged again.
"""

from __future__ import annotations

import bisect
import builtins
import ipaddress
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Any

from lbcore.core._selectors import Selector, parse_selector, selector_from_map
from lbcore.model.admission import Admission, ServiceAllocators, admit
from lbcore.model.allocators import (
    DEFAULT_NODE_PORT_RANGE,
    KUBERNETES_SERVICE_CIDR,
    ClusterIPAllocator,
    NodePortAllocator,
)
from lbcore.model.describe import describe_service as _describe_service
from lbcore.model.endpoints import (
    EndpointTracker,
    PortEndpoints,
    reconcile_endpoint_slices,
    wants_endpoints,
)
from lbcore.model.kinds import KINDS, kind_for
from lbcore.model.objects import (
    CLASSES,
    Endpoints,
    EndpointSlice,
    Object,
    Pod,
    Service,
    manifest_documents,
    parse_admitted,
    parse_object,
)
from lbcore.model.snapshot import ServicePortInfo, Snapshot

__all__ = ["ServiceTable"]

_PARSED = tuple(CLASSES.values())
# kinds a snapshot carries as objects (for the routing table) -> the Snapshot field
_CARRIED = {"Route": "routes", "Ingress": "ingresses", "Secret": "secrets"}
_Names = list[str]  # the ``list`` method shadows the builtin inside the class
_Slices = list[EndpointSlice]


class ServiceTable:
    """Services, pods, EndpointSlices and Endpoints with their endpoints and allocations.

    :param service_cidr: where cluster IPs come from; ``"10.96.0.0/12,fd00:10:96::/108"`` gives
        one range per family (a service takes its first ``ipFamilies`` entry, else the first
        CIDR's family).
    :param node_port_range: node ports for NodePort and LoadBalancer services.
    :param allocate: admit what is applied, as an API server does (validation, cluster IPs
        and node ports, uid and timestamps). With False, objects were admitted elsewhere (a
        store, a cluster) and are only parsed: never refused for what lbcore's validation
        would say, and a service without a cluster IP is kept but not proxied.
    :param node_zones: node name -> zone, for endpoints' zone (else the pod's zone label).
    :raises AllocationError: a service CIDR or node port range that cannot be used.
    """

    def __init__(self, service_cidr: str = KUBERNETES_SERVICE_CIDR,
                 node_port_range: tuple[int, int] | str = DEFAULT_NODE_PORT_RANGE,
                 allocate: bool = True, node_zones: Mapping[str, str] | None = None) -> None:
        self.allocate = allocate
        self.allocators = ServiceAllocators(service_cidr, node_port_range)
        self._objects: dict[str, dict[str, Any]] = {k.kind: {} for k in KINDS}  # by kind, key
        self._tracker = EndpointTracker(node_zones)
        self._version = 0
        self._changed_at: dict[str, int] = {}  # service key -> version of its last change
        self._log: list[tuple[int, str]] = []  # (version, service key), in version order
        self._port_infos: dict[str, tuple[ServicePortInfo, ...]] = {}
        self._ports_map: dict[str, ServicePortInfo] = {}
        self._dirty: set[str] = set()
        # kinds the endpoint tracker does not follow (Route, Ingress, Secret), changed since the
        # last snapshot, and their maps as the last snapshot carried them
        self._unserved_changed: set[str] = set(_CARRIED)
        self._carried: dict[str, Mapping[str, Any]] = {}

    # -- changes -----------------------------------------------------------------------------

    @property
    def version(self) -> int:
        """Bumped by every change; compare with :meth:`changes_since`."""
        return self._version

    def _record(self, changed: Iterable[str]) -> None:
        self._version += 1
        for key in changed:
            self._changed_at[key] = self._version
            self._log.append((self._version, key))
            self._dirty.add(key)
        # keep the log bounded: past a few entries per service it is rebuilt from _changed_at
        if len(self._log) > 4 * len(self._changed_at) + 1024:
            self._log = sorted((v, k) for k, v in self._changed_at.items())

    def changes_since(self, version: int) -> tuple[int, frozenset[str]]:
        """(current version, ``namespace/name`` of every service changed after ``version``).

        A service counts as changed when its definition or its endpoints changed, or when it
        was deleted.
        """
        start = bisect.bisect_right(self._log, (version, "\U0010ffff"))
        return self._version, frozenset(k for _, k in self._log[start:])

    def changed_since(self, version: int) -> bool:
        """Whether any service changed after ``version`` (what :meth:`changes_since` would
        name is not empty), or a Route, Ingress or Secret changed since the last snapshot (the
        routing table follows them), in constant time."""
        return bool(self._unserved_changed) or (bool(self._log) and self._log[-1][0] > version)

    # -- writing -----------------------------------------------------------------------------

    @property
    def cluster_ips(self) -> list[ClusterIPAllocator]:
        """The ClusterIP allocators, one per family, in the order of ``service_cidr``."""
        return list(self.allocators.ips.values())

    @property
    def node_ports(self) -> NodePortAllocator:
        """The NodePort allocator."""
        return self.allocators.ports

    def apply(self, obj_or_manifest: Any) -> Object:
        """Store one object (a model object, a dict, or a one-object manifest); returns the
        stored object. A failing apply leaves the table unchanged.

        :raises ValidationError: an invalid object (every problem listed); with
            ``allocate=False``, only an object that cannot be read at all.
        :raises AllocationError: a requested cluster IP or node port that cannot be given.
        """
        given: Any
        if isinstance(obj_or_manifest, (*_PARSED, Mapping)):
            given = obj_or_manifest
        else:
            docs = manifest_documents(obj_or_manifest)
            if len(docs) != 1:
                raise ValueError(f"apply takes one object, the manifest holds {len(docs)};"
                                 " use apply_all")
            given = docs[0]
        admission: Admission | None = None
        if self.allocate:
            raw = given.raw if isinstance(given, _PARSED) else given
            old = self._stored(raw)
            admission = admit(raw, old.raw if old is not None else None, self.allocators,
                              resource_version=str(self._version + 1))
            given = admission.obj
        try:
            obj = parse_admitted(given)
            changed = self._track(obj)
        except BaseException:
            if admission is not None:
                admission.undo()
            raise
        self._objects[obj.kind][obj.key] = obj
        if admission is not None:
            admission.commit()
        self._record(changed)
        return obj

    def _track(self, obj: Object) -> Iterable[str]:
        if isinstance(obj, Service):
            return self._tracker.set_service(obj)
        if isinstance(obj, Pod):
            return self._tracker.set_pod(obj)
        if isinstance(obj, EndpointSlice):
            return self._tracker.set_endpoint_slice(obj)
        if isinstance(obj, Endpoints):
            return self._tracker.set_endpoints_object(obj)
        self._unserved_changed.add(obj.kind)
        return ()  # Routes, Ingresses, Secrets: the snapshot carries them as they are

    def _stored(self, raw: Mapping[str, Any]) -> Object | None:
        """The stored version of the object ``raw`` would replace, if any."""
        meta = raw.get("metadata")
        meta = meta if isinstance(meta, Mapping) else {}
        kind = raw.get("kind")
        items = self._objects.get(kind) if isinstance(kind, str) else None
        if items is None:
            return None
        stored: Object | None = items.get(
            f"{meta.get('namespace') or 'default'}/{meta.get('name') or ''}")
        return stored

    def apply_all(self, source: Any) -> list[Object]:
        """Apply every object of a manifest source (see :func:`lbcore.load_manifests`).

        With ``allocate=True`` every object is validated first, so nothing is stored when one
        is invalid.
        """
        docs = manifest_documents(source)
        if self.allocate:
            for doc in docs:
                parse_object(doc)  # every problem before any write
        return [self.apply(doc) for doc in docs]

    def delete(self, kind: str, namespace: str, name: str) -> Object | None:
        """Remove an object; returns it, or None when there was none."""
        kind = kind_for(kind).kind
        obj = self._objects[kind].pop(f"{namespace}/{name}", None)
        if obj is None:
            return None
        changed: Iterable[str]
        if kind == "Service":
            changed = self._tracker.remove_service(namespace, name)
            if self.allocate:
                self.allocators.release(obj.raw)
        elif kind == "Pod":
            changed = self._tracker.remove_pod(namespace, name)
        elif kind == "EndpointSlice":
            changed = self._tracker.remove_endpoint_slice(namespace, name)
        elif kind == "Endpoints":
            changed = self._tracker.remove_endpoints_object(namespace, name)
        else:
            self._unserved_changed.add(kind)
            changed = ()
        self._record(changed)
        return obj

    def set_node_zone(self, node_name: str, zone: str | None) -> None:
        """Record (None: forget) the zone of a node; its pods' endpoints take it."""
        self._record(self._tracker.set_node_zone(node_name, zone))

    # -- reading -----------------------------------------------------------------------------

    def get(self, kind: str, namespace: str, name: str) -> Object | None:
        """The stored object, or None."""
        result: Object | None = self._objects[kind_for(kind).kind].get(f"{namespace}/{name}")
        return result

    def list(self, kind: str, namespace: str | None = None,
             selector: str | Mapping[str, str] | Selector | None = None) -> list[Any]:
        """Objects of ``kind`` (in ``namespace``, or all), filtered by a label selector
        (a string, a map or a Selector), ordered by namespace and name."""
        if isinstance(selector, str):
            selector = parse_selector(selector)
        elif isinstance(selector, Mapping):
            selector = selector_from_map(selector) if selector else None
        items = self._objects[kind_for(kind).kind]
        out = [obj for obj in items.values()
               if (namespace is None or obj.namespace == namespace)
               and (selector is None or selector.matches(obj.labels))]
        return sorted(out, key=lambda o: (o.namespace, o.name))

    def endpoints(self, namespace: str, name: str) -> PortEndpoints:
        """Endpoints of a service per port name ("" for an unnamed port).

        :raises KeyError: no such service.
        """
        key = f"{namespace}/{name}"
        if self._tracker.service(key) is None:
            raise KeyError(f'service "{key}" not found')
        return self._tracker.endpoints(key)

    def services_without_slices(self) -> builtins.list[str]:  # list: the method above
        """``namespace/name`` of the services whose endpoints come from their Endpoints object
        or their pods, having no EndpointSlice (ExternalName services have no endpoints)."""
        return self._tracker.services_without_slices()

    def selected_pods(self, namespace: str, name: str) -> _Names:
        """``namespace/name`` of the pods a service's selector picks."""
        return self._tracker.selected_pods(f"{namespace}/{name}")

    def describe_service(self, namespace: str, name: str) -> str:
        """``kubectl describe service`` output.

        :raises KeyError: no such service.
        """
        service = self._objects["Service"].get(f"{namespace}/{name}")
        if service is None:
            raise KeyError(f'service "{namespace}/{name}" not found')
        return _describe_service(service, endpoint_slices=self.endpoint_slices(namespace, name))

    def endpoint_slices(self, namespace: str, name: str) -> _Slices:
        """The EndpointSlices of a service, in name order: those applied to the table, else, for
        a service with a selector, those an endpoints controller would write from its pods.

        :raises KeyError: no such service.
        """
        key = f"{namespace}/{name}"
        service = self._tracker.service(key)
        if service is None:
            raise KeyError(f'service "{key}" not found')
        stored = self._tracker.endpoint_slices(key)
        if stored or not wants_endpoints(service):
            return stored
        pods = [p for p in map(self._tracker.pod, self._tracker.selected_pods(key)) if p]
        create, _, _ = reconcile_endpoint_slices(service, pods, ())
        for i, body in enumerate(create):  # named as the API server would name them
            body["metadata"]["name"] = f"{body['metadata'].pop('generateName')}{i:05d}"
        return [EndpointSlice.from_dict(body, validate=False) for body in create]

    # -- snapshot ----------------------------------------------------------------------------

    def _port_infos_of(self, key: str) -> tuple[ServicePortInfo, ...]:
        service = self._tracker.service(key)
        if service is None or not service.proxied:
            return ()
        endpoints = self._tracker.endpoints(key)
        ips = tuple(ip for ip in service.cluster_ips if ip != "None")
        return tuple(
            ServicePortInfo(
                namespace=service.namespace, name=service.name, port_name=sp.name,
                protocol=sp.protocol, port=sp.port, cluster_ips=ips,
                endpoints=endpoints.get(sp.name, ()), type=service.type,
                node_port=sp.node_port, session_affinity=service.session_affinity,
                affinity_timeout=service.affinity_timeout,
                external_traffic_policy=service.external_traffic_policy or "Cluster",
                internal_traffic_policy=service.internal_traffic_policy or "Cluster",
                external_ips=service.external_ips, load_balancer_ips=service.load_balancer_ips,
            )
            for sp in service.ports
        )

    def snapshot(self, node_name: str = "localhost",
                 node_addresses: Iterable[str] = ()) -> Snapshot:
        """Every proxied service port (a cluster IP, not headless) with its endpoints.

        Only services changed since the previous snapshot are rebuilt.
        """
        removed = False
        for key in self._dirty:
            old = self._port_infos.get(key, ())
            infos = self._port_infos_of(key)
            # replaced in place: a dict that had entries removed is copied entry by entry
            # below, 20 times slower than a compact one (6 ms at 30,000 ports, every sync)
            for info in infos:
                self._ports_map[info.key] = info
            for gone in {info.key for info in old} - {info.key for info in infos}:
                del self._ports_map[gone]
                removed = True
            if infos:
                self._port_infos[key] = infos
            elif old:
                del self._port_infos[key]
                removed = True
        self._dirty.clear()
        ports, by_service = dict(self._ports_map), dict(self._port_infos)
        if removed:  # the copies are compact: keep them, and later copies are fast again
            self._ports_map, self._port_infos = dict(ports), dict(by_service)
        for kind in self._unserved_changed & set(_CARRIED):
            self._carried[kind] = MappingProxyType(dict(self._objects[kind]))
        self._unserved_changed.clear()
        addresses = tuple(str(ipaddress.ip_address(a)) for a in node_addresses)
        return Snapshot(version=self._version,
                        service_ports=MappingProxyType(ports),
                        by_service=MappingProxyType(by_service),
                        node_name=node_name,
                        node_addresses=addresses,
                        **{field: self._carried[kind] for kind, field in _CARRIED.items()})
