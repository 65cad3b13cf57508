"""Endpoints of services, as Kubernetes' endpoint controllers compute them, kept incrementally.

For each port of a service, an endpoint is a selected pod of the same namespace that has an IP,
with the target port resolved for that pod (a named ``targetPort`` is looked up among the pod's
container ports of the same protocol; a pod without it is left out of that port). Conditions
follow EndpointSlices: ``serving`` is the pod's Ready condition, ``terminating`` is set by a
deletionTimestamp, ``ready`` is serving and not terminating (or always, with
``publishNotReadyAddresses``).

A service's endpoints come from, in this order: the EndpointSlices labelled with its name
(what a cluster's controller published), else an Endpoints object of the same name, else its
selector over the pods. A service without selector, slices or Endpoints has none.

:class:`EndpointTracker` keeps them up to date on a :class:`~lbcore.SelectorIndex` per
namespace: a pod change looks only at the services that selected the pod before or select it
after, and work per service is proportional to that one pod, not to the service's size.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from socket import AF_INET, AF_INET6, inet_pton

from lbcore.core._selectors import SelectorIndex, selector_from_map
from lbcore.model.objects import (
    ZONE_LABEL,
    Endpoints,
    EndpointSlice,
    Pod,
    Service,
    ServicePort,
)
from lbcore.model.snapshot import EndpointInfo

__all__ = [
    "EndpointTracker",
    "PortEndpoints",
    "endpoints_from_endpoints_object",
    "endpoints_from_pods",
    "endpoints_from_slices",
    "pod_endpoints",
    "resolve_target_port",
]

# port name ("" for an unnamed port) -> the endpoints of that service port
PortEndpoints = dict[str, tuple[EndpointInfo, ...]]


def _address_key(ep: EndpointInfo) -> tuple[bool, bytes, int]:
    # IPv4 before IPv6, then numeric address order; inet_pton is C, ipaddress is far slower
    v6 = ":" in ep.ip
    return v6, inet_pton(AF_INET6 if v6 else AF_INET, ep.ip), ep.port


def _order(eps: Iterable[EndpointInfo]) -> tuple[EndpointInfo, ...]:
    return tuple(sorted(eps, key=_address_key))


def resolve_target_port(port: ServicePort, pod: Pod) -> int | None:
    """The pod's port for service port ``port``; None when a named targetPort is not on the pod."""
    target = port.target_port
    if isinstance(target, int):
        return target
    return pod.container_port(target, port.protocol)


def _family_ip(service: Service, pod: Pod) -> str | None:
    if not service.ip_families:
        return pod.pod_ip
    want_v6 = service.ip_families[0] == "IPv6"
    for ip in pod.pod_ips:
        if (":" in ip) == want_v6:
            return ip
    return None


def pod_endpoints(service: Service, pod: Pod,
                  node_zones: Mapping[str, str] | None = None) -> tuple[EndpointInfo | None, ...]:
    """One entry per service port: the pod as an endpoint of that port, or None."""
    ip = None if pod.finished else _family_ip(service, pod)
    if ip is None:
        return (None,) * len(service.ports)
    serving = pod.ready or service.publish_not_ready_addresses
    ready = serving and (not pod.terminating or service.publish_not_ready_addresses)
    zone = (node_zones or {}).get(pod.node_name or "") or pod.labels.get(ZONE_LABEL)
    out: list[EndpointInfo | None] = []
    for sp in service.ports:
        target = resolve_target_port(sp, pod)
        out.append(None if target is None else EndpointInfo(
            ip=ip, port=target, ready=ready, serving=serving, terminating=pod.terminating,
            node_name=pod.node_name, zone=zone, target=pod.key))
    return tuple(out)


def endpoints_from_pods(service: Service, pods: Iterable[Pod],
                        node_zones: Mapping[str, str] | None = None) -> PortEndpoints:
    """A service's endpoints from its selector over ``pods`` (all pods; filtered here)."""
    result: dict[str, list[EndpointInfo]] = {sp.name: [] for sp in service.ports}
    if not service.selector:
        return {name: () for name in result}
    selector = selector_from_map(service.selector)
    for pod in pods:
        if pod.namespace != service.namespace or not selector.matches(pod.labels):
            continue
        for sp, ep in zip(service.ports, pod_endpoints(service, pod, node_zones), strict=True):
            if ep is not None:
                result[sp.name].append(ep)
    return {name: _order(eps) for name, eps in result.items()}


def _port_for(service_port: ServicePort, ports: Iterable[object]) -> int | None:
    for p in ports:
        if (getattr(p, "name", "") == service_port.name
                and getattr(p, "protocol", "TCP") == service_port.protocol):
            return getattr(p, "port", None)
    return None


def endpoints_from_slices(service: Service, slices: Iterable[EndpointSlice]) -> PortEndpoints:
    """A service's endpoints from its EndpointSlices (first address of each endpoint, as
    kube-proxy does); an address seen in several slices counts once."""
    family = service.ip_families[0] if service.ip_families else None
    result: PortEndpoints = {}
    for sp in service.ports:
        seen: dict[tuple[str, int], EndpointInfo] = {}
        for sl in slices:
            if sl.address_type == "FQDN" or (family and sl.address_type != family):
                continue
            port = _port_for(sp, sl.ports)
            if port is None:
                continue
            for ep in sl.endpoints:
                if not ep.addresses:
                    continue
                info = EndpointInfo(ip=ep.addresses[0], port=port, ready=ep.ready,
                                    serving=ep.serving, terminating=ep.terminating,
                                    node_name=ep.node_name, zone=ep.zone, target=ep.target)
                seen.setdefault((info.ip, port), info)
        result[sp.name] = _order(seen.values())
    return result


def endpoints_from_endpoints_object(service: Service, endpoints: Endpoints) -> PortEndpoints:
    """A service's endpoints from a v1 Endpoints object (notReadyAddresses are not ready)."""
    result: PortEndpoints = {}
    for sp in service.ports:
        found: dict[tuple[str, int], EndpointInfo] = {}
        for subset in endpoints.subsets:
            port = _port_for(sp, subset.ports)
            if port is None:
                continue
            for ready, addresses in ((True, subset.addresses), (False, subset.not_ready_addresses)):
                for a in addresses:
                    found.setdefault((a.ip, port), EndpointInfo(
                        ip=a.ip, port=port, ready=ready, serving=ready, terminating=False,
                        node_name=a.node_name, target=a.target))
        result[sp.name] = _order(found.values())
    return result


_Member = tuple[tuple[bool, bytes, str], tuple[EndpointInfo | None, ...]]


def _first(member: _Member) -> tuple[bool, bytes, str]:
    return member[0]


def _member_key(per_port: tuple[EndpointInfo | None, ...], pod_key: str) -> tuple[bool, bytes, str]:
    ep = next(ep for ep in per_port if ep is not None)
    v6 = ":" in ep.ip
    return v6, inet_pton(AF_INET6 if v6 else AF_INET, ep.ip), pod_key


class EndpointTracker:
    """Services, pods, slices and Endpoints objects, with every service's endpoints up to date.

    Each ``set_*``/``remove_*`` returns the ``namespace/name`` of the services whose endpoints
    (or, for a service, whose definition) changed.
    """

    def __init__(self, node_zones: Mapping[str, str] | None = None) -> None:
        self.node_zones: dict[str, str] = dict(node_zones or {})
        self._index: defaultdict[str, SelectorIndex] = defaultdict(SelectorIndex)
        self._services: dict[str, Service] = {}
        self._pods: dict[str, Pod] = {}
        self._pods_by_node: defaultdict[str, set[str]] = defaultdict(set)
        # service key -> pod key -> that pod's endpoint per service port (None: not on that port)
        # sort key first, so that reading a service's endpoints is one sort of its members
        self._members: dict[str, dict[str, _Member]] = {}
        self._slices: dict[str, EndpointSlice] = {}
        self._slices_by_service: defaultdict[str, dict[str, EndpointSlice]] = defaultdict(dict)
        self._endpoints_objects: dict[str, Endpoints] = {}
        self._cache: dict[str, PortEndpoints] = {}

    # -- reading ---------------------------------------------------------------------------

    def service(self, key: str) -> Service | None:
        """The tracked service ``namespace/name``."""
        return self._services.get(key)

    def endpoints(self, key: str) -> PortEndpoints:
        """Endpoints per port name of service ``namespace/name`` (empty when unknown)."""
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        service = self._services.get(key)
        if service is None:
            return {}
        slices = self._slices_by_service.get(key)
        if slices:
            result = endpoints_from_slices(service, slices.values())
        elif key in self._endpoints_objects:
            result = endpoints_from_endpoints_object(service, self._endpoints_objects[key])
        else:
            ordered = sorted(self._members.get(key, {}).values(), key=_first)
            result = {
                sp.name: tuple(pp[i] for _, pp in ordered if pp[i] is not None)  # type: ignore[misc]
                for i, sp in enumerate(service.ports)
            }
        self._cache[key] = result
        return result

    def selected_pods(self, key: str) -> list[str]:
        """``namespace/name`` of the pods a service's selector picks (with or without an IP)."""
        service = self._services.get(key)
        if service is None or not service.selector:
            return []
        idx = self._index.get(service.namespace)
        if idx is None or not idx.has_selector(service.name):
            return []
        return sorted(f"{service.namespace}/{p}" for p in idx.matching(service.name))

    # -- services ----------------------------------------------------------------------------

    def set_service(self, service: Service) -> set[str]:
        """Add or replace a service; its endpoints are recomputed from what is tracked."""
        key = service.key
        self._services[key] = service
        self._cache.pop(key, None)
        idx = self._index[service.namespace]
        if service.selector:
            idx.set_selector(service.name, selector_from_map(service.selector))
            members = {}
            for pod_name in idx.matching(service.name):
                pod = self._pods[f"{service.namespace}/{pod_name}"]
                per_port = pod_endpoints(service, pod, self.node_zones)
                if any(ep is not None for ep in per_port):
                    members[pod.key] = (_member_key(per_port, pod.key), per_port)
            self._members[key] = members
        else:
            idx.remove_selector(service.name)
            self._members.pop(key, None)
        return {key}

    def remove_service(self, namespace: str, name: str) -> set[str]:
        """Forget a service."""
        key = f"{namespace}/{name}"
        if self._services.pop(key, None) is None:
            return set()
        self._index[namespace].remove_selector(name)
        self._members.pop(key, None)
        self._cache.pop(key, None)
        return {key}

    # -- pods --------------------------------------------------------------------------------

    def _refresh_member(self, service_key: str, pod: Pod | None, pod_key: str) -> bool:
        members = self._members.setdefault(service_key, {})
        old = members.get(pod_key)
        per_port: tuple[EndpointInfo | None, ...] | None = None
        if pod is not None:
            per_port = pod_endpoints(self._services[service_key], pod, self.node_zones)
            if all(ep is None for ep in per_port):
                per_port = None
        if per_port == (old[1] if old is not None else None):
            return False
        if per_port is None:
            del members[pod_key]
        else:
            members[pod_key] = (_member_key(per_port, pod_key), per_port)
        self._cache.pop(service_key, None)
        return True

    def _pod_changed(self, ns: str, pod_key: str, pod: Pod | None,
                     services: Iterable[object]) -> set[str]:
        changed = set()
        for sname in services:
            skey = f"{ns}/{sname}"
            if self._refresh_member(skey, pod, pod_key) and not self._slices_by_service.get(skey) \
                    and skey not in self._endpoints_objects:
                changed.add(skey)
        return changed

    def set_pod(self, pod: Pod) -> set[str]:
        """Add or replace a pod; returns the services whose endpoints changed."""
        key = pod.key
        old = self._pods.get(key)
        if old is not None and old.node_name:
            self._pods_by_node[old.node_name].discard(key)
        self._pods[key] = pod
        if pod.node_name:
            self._pods_by_node[pod.node_name].add(key)
        idx = self._index[pod.namespace]
        _added, removed = idx.set_labels(pod.name, pod.labels)
        now = idx.selectors_matching(pod.name)
        changed = self._pod_changed(pod.namespace, key, pod, now)
        return changed | self._pod_changed(pod.namespace, key, None, removed)

    def remove_pod(self, namespace: str, name: str) -> set[str]:
        """Forget a pod; returns the services whose endpoints changed."""
        key = f"{namespace}/{name}"
        pod = self._pods.pop(key, None)
        if pod is None:
            return set()
        if pod.node_name:
            self._pods_by_node[pod.node_name].discard(key)
        removed = self._index[namespace].remove_labels(name)
        return self._pod_changed(namespace, key, None, removed)

    def set_node_zone(self, node_name: str, zone: str | None) -> set[str]:
        """Record (or forget, with None) a node's zone; its pods' endpoints take it."""
        if zone is None:
            self.node_zones.pop(node_name, None)
        else:
            self.node_zones[node_name] = zone
        changed: set[str] = set()
        for pod_key in list(self._pods_by_node.get(node_name, ())):
            pod = self._pods[pod_key]
            services = self._index[pod.namespace].selectors_matching(pod.name)
            changed |= self._pod_changed(pod.namespace, pod_key, pod, services)
        return changed

    # -- EndpointSlices and Endpoints ----------------------------------------------------------

    def _slice_owner(self, eps: EndpointSlice) -> str | None:
        return f"{eps.namespace}/{eps.service_name}" if eps.service_name else None

    def set_endpoint_slice(self, eps: EndpointSlice) -> set[str]:
        """Add or replace an EndpointSlice; returns the services it concerns."""
        changed = self.remove_endpoint_slice(eps.namespace, eps.name)
        self._slices[eps.key] = eps
        owner = self._slice_owner(eps)
        if owner:
            self._slices_by_service[owner][eps.key] = eps
            self._cache.pop(owner, None)
            if owner in self._services:
                changed.add(owner)
        return changed

    def remove_endpoint_slice(self, namespace: str, name: str) -> set[str]:
        """Forget an EndpointSlice."""
        eps = self._slices.pop(f"{namespace}/{name}", None)
        owner = self._slice_owner(eps) if eps is not None else None
        if eps is None or owner is None:
            return set()
        by_service = self._slices_by_service[owner]
        by_service.pop(eps.key, None)
        if not by_service:
            del self._slices_by_service[owner]
        self._cache.pop(owner, None)
        return {owner} if owner in self._services else set()

    def set_endpoints_object(self, ep: Endpoints) -> set[str]:
        """Add or replace a v1 Endpoints object (it carries its service's name)."""
        self._endpoints_objects[ep.key] = ep
        self._cache.pop(ep.key, None)
        return {ep.key} if ep.key in self._services else set()

    def remove_endpoints_object(self, namespace: str, name: str) -> set[str]:
        """Forget a v1 Endpoints object."""
        key = f"{namespace}/{name}"
        if self._endpoints_objects.pop(key, None) is None:
            return set()
        self._cache.pop(key, None)
        return {key} if key in self._services else set()
