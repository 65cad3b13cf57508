"""``ServiceTable``: services, pods and endpoints in one place, for embedding lbcore.

Objects go in with :meth:`ServiceTable.apply` (validated, defaulted, and for services given a
cluster IP and node ports when absent) and out as a :class:`~lbcore.model.snapshot.Snapshot` that
frontends consume, with :meth:`ServiceTable.changes_since` telling which services changed.
Every change bumps :attr:`ServiceTable.version`.
"""

from __future__ import annotations

import bisect
import datetime as _dt
import ipaddress
import uuid
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Any

from lbcore.core._selectors import Selector, parse_selector, selector_from_map
from lbcore.errors import AllocationError, Cause, ValidationError
from lbcore.model.allocators import (
    DEFAULT_NODE_PORT_RANGE,
    DEFAULT_SERVICE_CIDR,
    ClusterIPAllocator,
    NodePortAllocator,
)
from lbcore.model.describe import describe_service as _describe_service
from lbcore.model.endpoints import EndpointTracker, PortEndpoints
from lbcore.model.kinds import KINDS, kind_for
from lbcore.model.objects import (
    Endpoints,
    EndpointSlice,
    Object,
    Pod,
    Service,
    format_timestamp,
    load_manifests,
    parse_object,
)
from lbcore.model.snapshot import ServicePortInfo, Snapshot

__all__ = ["ServiceTable"]


_Names = list[str]  # the ``list`` method shadows the builtin inside the class


def _now() -> _dt.datetime:
    return _dt.datetime.now(_dt.UTC).replace(microsecond=0)


class ServiceTable:
    """Services, pods, EndpointSlices and Endpoints with their endpoints and allocations.

    :param service_cidr: where cluster IPs come from; ``"10.96.0.0/12,fd00:10:96::/108"`` gives
        one allocator per family (a service takes its first ``ipFamilies`` entry, else the
        first CIDR).
    :param node_port_range: node ports for NodePort and LoadBalancer services.
    :param allocate: give cluster IPs and node ports to services that have none. With False
        (objects from a store or a cluster, already allocated) a service without a cluster IP
        is kept but not proxied.
    :param node_zones: node name -> zone, for endpoints' zone (else the pod's zone label).
    """

    def __init__(self, service_cidr: str = DEFAULT_SERVICE_CIDR,
                 node_port_range: tuple[int, int] | str = DEFAULT_NODE_PORT_RANGE,
                 allocate: bool = True, node_zones: Mapping[str, str] | None = None) -> None:
        self.allocate = allocate
        self.cluster_ips = [ClusterIPAllocator(c.strip()) for c in service_cidr.split(",")]
        self.node_ports = NodePortAllocator(node_port_range)
        self._objects: dict[str, dict[tuple[str, str], Any]] = {k.kind: {} for k in KINDS}
        self._tracker = EndpointTracker(node_zones)
        self._version = 0
        self._changed_at: dict[str, int] = {}  # service key -> version of its last change
        self._log: list[tuple[int, str]] = []  # (version, service key), in version order
        self._port_infos: dict[str, tuple[ServicePortInfo, ...]] = {}
        self._ports_map: dict[str, ServicePortInfo] = {}
        self._dirty: set[str] = set()

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

    # -- writing -----------------------------------------------------------------------------

    def apply(self, obj_or_manifest: Any) -> Object:
        """Validate and store one object (a model object, a dict, or a one-object manifest);
        returns the stored object. A failing apply leaves the table unchanged.

        :raises ValidationError: an invalid object (every problem listed).
        :raises AllocationError: a requested cluster IP or node port that cannot be given.
        """
        if isinstance(obj_or_manifest, Service | Pod | EndpointSlice | Endpoints | Mapping):
            obj = parse_object(obj_or_manifest)
        else:
            objs = load_manifests(obj_or_manifest)
            if len(objs) != 1:
                raise ValueError(f"apply takes one object, the manifest holds {len(objs)};"
                                 " use apply_all")
            obj = objs[0]
        store = self._objects[obj.kind]
        old = store.get((obj.namespace, obj.name))
        obj = self._stamp(obj, old)
        if isinstance(obj, Service):
            obj = self._allocate(obj, old)
            changed = self._tracker.set_service(obj)
        elif isinstance(obj, Pod):
            changed = self._tracker.set_pod(obj)
        elif isinstance(obj, EndpointSlice):
            changed = self._tracker.set_endpoint_slice(obj)
        else:
            changed = self._tracker.set_endpoints_object(obj)
        store[(obj.namespace, obj.name)] = obj
        self._record(changed)
        return obj

    def apply_all(self, source: Any) -> list[Object]:
        """Apply every object of a manifest source (see :func:`lbcore.load_manifests`).

        Objects are validated first, all of them, so nothing is stored when one is invalid.
        """
        return [self.apply(obj) for obj in load_manifests(source)]

    def delete(self, kind: str, namespace: str, name: str) -> Object | None:
        """Remove an object; returns it, or None when there was none."""
        kind = kind_for(kind).kind
        obj = self._objects[kind].pop((namespace, name), None)
        if obj is None:
            return None
        if kind == "Service":
            changed = self._tracker.remove_service(namespace, name)
            self._release(obj)
        elif kind == "Pod":
            changed = self._tracker.remove_pod(namespace, name)
        elif kind == "EndpointSlice":
            changed = self._tracker.remove_endpoint_slice(namespace, name)
        else:
            changed = self._tracker.remove_endpoints_object(namespace, name)
        self._record(changed)
        return obj

    def set_node_zone(self, node_name: str, zone: str | None) -> None:
        """Record (None: forget) the zone of a node; its pods' endpoints take it."""
        self._record(self._tracker.set_node_zone(node_name, zone))

    def _stamp(self, obj: Object, old: Object | None) -> Object:
        # what the API server sets on create and keeps on update
        meta = obj.raw["metadata"]
        fields: dict[str, Any] = {}
        for name in ("creationTimestamp", "uid"):
            if not meta.get(name):
                if old is not None and old.raw["metadata"].get(name):
                    fields[name] = old.raw["metadata"][name]
                else:
                    fields[name] = format_timestamp(_now()) if name == "creationTimestamp" \
                        else str(uuid.uuid4())
        if not fields:
            return obj
        raw = obj.to_dict()
        raw["metadata"].update(fields)
        return type(obj).from_dict(raw, validate=False)

    # -- allocation --------------------------------------------------------------------------

    def _cluster_allocator(self, ip: str) -> ClusterIPAllocator:
        for alloc in self.cluster_ips:
            if alloc.contains(ip):
                return alloc
        cidrs = ", ".join(str(a.network) for a in self.cluster_ips)
        raise AllocationError(f"ClusterIP {ip} is not in the service CIDR {cidrs}")

    def _family_allocator(self, service: Service) -> ClusterIPAllocator:
        if service.ip_families:
            for alloc in self.cluster_ips:
                if alloc.family == service.ip_families[0]:
                    return alloc
            raise AllocationError(
                f"no service CIDR of family {service.ip_families[0]} is configured")
        return self.cluster_ips[0]

    def _allocate(self, service: Service, old: Service | None) -> Service:
        """``service`` with its cluster IP and node ports; allocators hold them on success."""
        if not self.allocate:
            return service  # allocated elsewhere (a store, a cluster): taken as given
        if old is not None and old.cluster_ip and service.cluster_ip \
                and service.cluster_ip != old.cluster_ip and old.type != "ExternalName" \
                and service.type != "ExternalName":
            raise ValidationError("Service", service.name, [Cause(
                "spec.clusterIPs[0]", "FieldValueInvalid",
                f'Invalid value: "{service.cluster_ip}": field is immutable')])
        owner = service.key
        taken_ips: list[tuple[ClusterIPAllocator, str]] = []
        taken_ports: list[int] = []
        try:
            spec: dict[str, Any] = {}
            if service.type != "ExternalName" and not service.headless:
                ips = list(service.cluster_ips)
                if not ips and old is not None and old.cluster_ips and not old.headless:
                    ips = list(old.cluster_ips)  # an apply without clusterIP keeps the old one
                if ips:
                    for ip in ips:
                        alloc = self._cluster_allocator(ip)
                        if not alloc.in_use(ip):
                            taken_ips.append((alloc, ip))
                        alloc.allocate(ip, owner)
                else:
                    alloc = self._family_allocator(service)
                    ip = alloc.allocate(None, owner)
                    taken_ips.append((alloc, ip))
                    ips = [ip]
                if ips != list(service.cluster_ips):
                    spec["clusterIPs"] = ips
            if service.type in ("NodePort", "LoadBalancer"):
                ports = self._allocate_node_ports(service, old, taken_ports)
                if ports is not None:
                    spec["ports"] = ports
        except AllocationError:
            for alloc, ip in taken_ips:
                alloc.release(ip)
            for port in taken_ports:
                self.node_ports.release(port)
            raise
        self._release_unused(old, service, spec)
        return service.with_spec(**spec) if spec else service

    def _allocate_node_ports(self, service: Service, old: Service | None,
                             taken: list[int]) -> list[dict[str, Any]] | None:
        raw_ports = [dict(p) for p in service.raw["spec"]["ports"]]
        old_ports = {(p.port, p.protocol): p.node_port for p in (old.ports if old else ())
                     if p.node_port}
        changed = False
        for p in raw_ports:
            requested = p.get("nodePort") or old_ports.get((p["port"], p["protocol"]))
            if not requested:
                # TCP and UDP of the same port share one node port, as Kubernetes gives them
                requested = next((q.get("nodePort") for q in raw_ports
                                  if q is not p and q["port"] == p["port"] and q.get("nodePort")),
                                 None)
            if requested and not self.node_ports.in_use(requested):
                taken.append(requested)
            port = self.node_ports.allocate(requested, service.key)
            if not requested:
                taken.append(port)
            if p.get("nodePort") != port:
                p["nodePort"] = port
                changed = True
        return raw_ports if changed else None

    def _release_unused(self, old: Service | None, new: Service, spec: Mapping[str, Any]) -> None:
        if old is None or not self.allocate:
            return
        new_ips = set(spec.get("clusterIPs") or new.cluster_ips)
        for ip in old.cluster_ips:
            if ip not in new_ips and ip != "None":
                try:
                    self._cluster_allocator(ip).release(ip)
                except AllocationError:
                    pass  # never ours (given with allocate=False or out of range)
        new_ports = {p.get("nodePort") for p in spec.get("ports") or new.raw["spec"].get("ports", [])}
        for p in old.ports:
            if p.node_port and p.node_port not in new_ports \
                    and self.node_ports.owner_of(p.node_port) == old.key:
                self.node_ports.release(p.node_port)

    def _release(self, service: Service) -> None:
        if not self.allocate:
            return
        for alloc in self.cluster_ips:
            alloc.release_owner(service.key)
        self.node_ports.release_owner(service.key)

    # -- reading -----------------------------------------------------------------------------

    def get(self, kind: str, namespace: str, name: str) -> Object | None:
        """The stored object, or None."""
        result: Object | None = self._objects[kind_for(kind).kind].get((namespace, name))
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
        out = [obj for (ns, _), obj in items.items()
               if (namespace is None or ns == namespace)
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

    def selected_pods(self, namespace: str, name: str) -> _Names:
        """``namespace/name`` of the pods a service's selector picks."""
        return self._tracker.selected_pods(f"{namespace}/{name}")

    def describe_service(self, namespace: str, name: str) -> str:
        """``kubectl describe service`` output.

        :raises KeyError: no such service.
        """
        service = self._objects["Service"].get((namespace, name))
        if service is None:
            raise KeyError(f'service "{namespace}/{name}" not found')
        return _describe_service(service, self._tracker.endpoints(service.key))

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
        for key in self._dirty:
            for info in self._port_infos.pop(key, ()):
                self._ports_map.pop(info.key, None)
            infos = self._port_infos_of(key)
            if infos:
                self._port_infos[key] = infos
                for info in infos:
                    self._ports_map[info.key] = info
        self._dirty.clear()
        addresses = tuple(str(ipaddress.ip_address(a)) for a in node_addresses)
        return Snapshot(version=self._version,
                        service_ports=MappingProxyType(dict(self._ports_map)),
                        node_name=node_name,
                        node_addresses=addresses)
