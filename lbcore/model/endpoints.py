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

import copy
import hashlib
import json
from collections import defaultdict
from collections.abc import Iterable, Mapping
from socket import AF_INET, AF_INET6, inet_pton
from typing import Any, NamedTuple

import orjson

from lbcore.core._selectors import SelectorIndex, selector_from_map
from lbcore.model.objects import (
    SERVICE_NAME_LABEL,
    ZONE_LABEL,
    Endpoints,
    EndpointSlice,
    Pod,
    Service,
    ServicePort,
)
from lbcore.model.snapshot import EndpointInfo

__all__ = [
    "MANAGED_BY",
    "MANAGED_BY_LABEL",
    "MIRRORED_BY",
    "MAX_ENDPOINTS_PER_SLICE",
    "SKIP_MIRROR_LABEL",
    "EndpointTracker",
    "PortEndpoints",
    "StoredSlice",
    "endpoint_fields",
    "endpoints_digest",
    "endpoints_from_endpoints_object",
    "endpoints_from_pods",
    "endpoints_from_slices",
    "endpoints_object",
    "mirror_endpoint_slices",
    "pod_endpoints",
    "reconcile_endpoint_slices",
    "resolve_target_port",
    "slice_digest",
    "wants_endpoints",
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
    # as Kubernetes' EndpointSlice controller: serving is the pod's readiness alone; ready is
    # serving and not terminating, unless publishNotReadyAddresses makes every address ready
    serving = pod.ready
    ready = service.publish_not_ready_addresses or (pod.ready and not pod.terminating)
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
        # sort key first, so that reading a service's endpoints is one sort of its members;
        # kept only for the services whose endpoints come from their pods (a selector, and no
        # EndpointSlices or Endpoints object, which would be a second copy of them: _on_pods)
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

    def endpoint_slices(self, key: str) -> list[EndpointSlice]:
        """The EndpointSlices labelled with service ``namespace/name``, in name order."""
        return sorted(self._slices_by_service.get(key, {}).values(), key=lambda s: s.name)

    def services_without_slices(self) -> list[str]:
        """``namespace/name`` of the services that have endpoints and no EndpointSlice, whose
        endpoints therefore come from their Endpoints object or their pods (see
        :meth:`endpoints`); ExternalName services have none."""
        return [key for key, service in self._services.items()
                if service.type != "ExternalName" and not self._slices_by_service.get(key)]

    def pod(self, key: str) -> Pod | None:
        """The tracked pod ``namespace/name``."""
        return self._pods.get(key)

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
        else:
            idx.remove_selector(service.name)
        self._follow_pods(key)
        return {key}

    def _on_pods(self, key: str) -> bool:
        """Whether service ``key``'s endpoints come from the pods its selector picks: it has
        neither EndpointSlices nor an Endpoints object (see :meth:`endpoints`)."""
        return not self._slices_by_service.get(key) and key not in self._endpoints_objects

    def _follow_pods(self, key: str) -> None:
        """Compute the members of service ``key`` from its pods when its endpoints come from
        them, else forget them (the slices or the Endpoints object say the same)."""
        service = self._services.get(key)
        if service is None or not service.selector or not self._on_pods(key):
            self._members.pop(key, None)
            return
        members = {}
        for pod_name in self._index[service.namespace].matching(service.name):
            pod = self._pods[f"{service.namespace}/{pod_name}"]
            per_port = pod_endpoints(service, pod, self.node_zones)
            if any(ep is not None for ep in per_port):
                members[pod.key] = (_member_key(per_port, pod.key), per_port)
        self._members[key] = members

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
            if self._on_pods(skey) and self._refresh_member(skey, pod, pod_key):
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
            self._members.pop(owner, None)  # its endpoints come from its slices now
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
            self._follow_pods(owner)
        self._cache.pop(owner, None)
        return {owner} if owner in self._services else set()

    def set_endpoints_object(self, ep: Endpoints) -> set[str]:
        """Add or replace a v1 Endpoints object (it carries its service's name)."""
        self._endpoints_objects[ep.key] = ep
        self._members.pop(ep.key, None)
        self._cache.pop(ep.key, None)
        # a service with EndpointSlices takes its endpoints from them: this changes nothing
        return {ep.key} if ep.key in self._services and not self._slices_by_service.get(ep.key) \
            else set()

    def remove_endpoints_object(self, namespace: str, name: str) -> set[str]:
        """Forget a v1 Endpoints object."""
        key = f"{namespace}/{name}"
        if self._endpoints_objects.pop(key, None) is None:
            return set()
        self._follow_pods(key)
        self._cache.pop(key, None)
        return {key} if key in self._services and not self._slices_by_service.get(key) else set()


# -- what an endpoints controller writes ----------------------------------------------------------
#
# The objects Kubernetes' endpoint controllers write for a service with a selector, computed from
# the service and the pods it selects: EndpointSlices (discovery.k8s.io/v1, at most
# ``max_endpoints`` endpoints each, one group of slices per address type and set of ports) and
# the v1 Endpoints object. lbcore.runtime.endpoints_controller stores them; the rules live here.

MANAGED_BY_LABEL = "endpointslice.kubernetes.io/managed-by"
MANAGED_BY = "endpointslice-controller.lbcore.io"
MIRRORED_BY = "endpointslicemirroring-controller.lbcore.io"  # slices mirrored from Endpoints
SKIP_MIRROR_LABEL = "endpointslice.kubernetes.io/skip-mirror"  # on Endpoints a controller owns
HEADLESS_LABEL = "service.kubernetes.io/headless"
MAX_ENDPOINTS_PER_SLICE = 100  # kube-controller-manager's --max-endpoints-per-slice default
MAX_ENDPOINTS_ADDRESSES = 1000  # an Endpoints object holds no more, as in Kubernetes
OVER_CAPACITY_ANNOTATION = "endpoints.kubernetes.io/over-capacity"

_SliceGroup = tuple[str, tuple[tuple[str, int, str, str | None], ...]]  # (addressType, ports)


def wants_endpoints(service: Service) -> bool:
    """Whether an endpoints controller writes this service's Endpoints and EndpointSlices: it
    has a selector and is no ExternalName (selectorless services keep what users write)."""
    return bool(service.selector) and service.type != "ExternalName"


def _pod_ref(pod: Pod) -> dict[str, Any]:
    ref = {"kind": "Pod", "namespace": pod.namespace, "name": pod.name}
    if pod.uid:
        ref["uid"] = pod.uid
    return ref


def _ip_of(pod: Pod, family: str) -> str | None:
    for ip in pod.pod_ips:
        if (":" in ip) == (family == "IPv6"):
            return ip
    return None


def _resolved_ports(service: Service, pod: Pod) -> tuple[tuple[str, int, str, str | None], ...]:
    out = []
    for sp in service.ports:
        target = resolve_target_port(sp, pod)
        if target is not None:
            out.append((sp.name, target, sp.protocol, sp.app_protocol))
    return tuple(out)


def _hostname(service: Service, pod: Pod) -> str | None:
    if pod.hostname and pod.subdomain == service.name:
        return pod.hostname
    return None


def endpoint_fields(pod: Pod) -> tuple[Any, ...]:
    """What the Endpoints and EndpointSlices of the services selecting ``pod`` take from it:
    two versions of a pod with equal fields give every service the same endpoints (a change
    of labels alone changes only which services select it)."""
    return (pod.namespace, pod.name, pod.pod_ips, pod.ready, pod.terminating, pod.finished,
            pod.node_name, pod.labels.get(ZONE_LABEL), pod.container_ports,
            pod.uid, pod.hostname, pod.subdomain)


def _address_families(service: Service) -> tuple[str, ...]:
    return service.ip_families or ("IPv4",)


def _slice_endpoints(service: Service, pods: Iterable[Pod]) -> dict[_SliceGroup, dict[str, dict[str, Any]]]:
    """The desired endpoints, by (address type, ports) and then by address."""
    groups: dict[_SliceGroup, dict[str, dict[str, Any]]] = {}
    families = _address_families(service)
    for pod in pods:
        if pod.finished or not pod.pod_ips:
            continue
        ports = _resolved_ports(service, pod)
        if service.ports and not ports:
            continue
        ready = service.publish_not_ready_addresses or (pod.ready and not pod.terminating)
        for family in families:
            ip = _ip_of(pod, family)
            if ip is None:
                continue
            ep: dict[str, Any] = {
                "addresses": [ip],
                "conditions": {"ready": ready, "serving": pod.ready,
                               "terminating": pod.terminating},
            }
            hostname = _hostname(service, pod)
            if hostname:
                ep["hostname"] = hostname
            ep["targetRef"] = _pod_ref(pod)
            if pod.node_name:
                ep["nodeName"] = pod.node_name
            groups.setdefault((family, ports), {})[ip] = ep
    return groups


def _slice_ports(ports: tuple[tuple[str, int, str, str | None], ...]) -> list[dict[str, Any]]:
    out = []
    for name, port, protocol, app_protocol in ports:
        entry: dict[str, Any] = {"name": name, "port": port, "protocol": protocol}
        if app_protocol:
            entry["appProtocol"] = app_protocol
        out.append(entry)
    return out


def _group_of(stored: EndpointSlice) -> _SliceGroup:
    ports = tuple((p.name or "", int(p.port or 0), p.protocol or "TCP", p.app_protocol)
                  for p in stored.ports)
    return str(stored.address_type or "IPv4"), ports


def _managed_labels(service: Service, base: Mapping[str, str] | None = None,
                    managed_by: str = MANAGED_BY) -> dict[str, str]:
    labels = dict(service.labels if base is None else base)
    labels.pop(MANAGED_BY_LABEL, None)
    labels.pop(SKIP_MIRROR_LABEL, None)
    labels[SERVICE_NAME_LABEL] = service.name
    labels[MANAGED_BY_LABEL] = managed_by
    if service.headless:
        labels[HEADLESS_LABEL] = ""
    return labels


def _owner_reference(service: Service) -> list[dict[str, Any]]:
    ref: dict[str, Any] = {"apiVersion": "v1", "kind": "Service", "name": service.name,
                           "controller": True, "blockOwnerDeletion": True}
    if service.uid:
        ref["uid"] = service.uid
    return [ref]


def _ordered_endpoints(eps: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    def key(ep: Mapping[str, Any]) -> tuple[bool, bytes]:
        ip = ep["addresses"][0]
        v6 = ":" in ip
        return v6, inet_pton(AF_INET6 if v6 else AF_INET, ip)
    return sorted(eps, key=key)


def _slice_body(service: Service, group: _SliceGroup, endpoints: Iterable[dict[str, Any]],
                existing: Mapping[str, Any] | None,
                labels: dict[str, str] | None = None) -> dict[str, Any]:
    meta: dict[str, Any]
    if existing is not None:
        meta = copy.deepcopy(dict(existing["metadata"]))
    else:
        # the API server names it: <service>-<5 characters>, as Kubernetes' controller asks
        meta = {"generateName": f"{service.name[:57]}-", "namespace": service.namespace}
    meta["labels"] = dict(labels) if labels is not None else _managed_labels(service)
    meta["ownerReferences"] = _owner_reference(service)
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "metadata": meta,
            "addressType": group[0], "endpoints": _ordered_endpoints(endpoints),
            "ports": _slice_ports(group[1])}


def _digest(fields: Any) -> bytes:
    """A digest of JSON-shaped ``fields`` (keys sorted): equal digests, equal fields. Their
    canonical text is stricter than ``==`` (``1`` is not ``true`` nor ``1.0`` there, and what
    orjson refuses, an integer beyond 64 bits, is written by the standard library): at worst
    a write that changes nothing, never a change left unwritten."""
    try:
        text = orjson.dumps(fields, option=orjson.OPT_SORT_KEYS)
    except TypeError:  # orjson.JSONEncodeError
        text = json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.blake2b(text, digest_size=16).digest()


def slice_digest(body: Mapping[str, Any]) -> bytes:
    """What a reconcile compares of an EndpointSlice, as a digest: its address type,
    endpoints, ports, labels and owner references; two slices with the same digest need no
    write from one to the other (the rest of the metadata is the API server's). A controller
    keeps it beside the parsed slice (:class:`StoredSlice`), not the slice's text."""
    meta = body.get("metadata") or {}
    return _digest((body.get("addressType"), body.get("endpoints") or [],
                    body.get("ports") or [], meta.get("labels") or {},
                    meta.get("ownerReferences") or []))


def endpoints_digest(body: Mapping[str, Any]) -> bytes:
    """What a reconcile compares of a v1 Endpoints object, as a digest: its subsets, labels
    and annotations (as :func:`slice_digest` for a slice)."""
    meta = body.get("metadata") or {}
    return _digest((body.get("subsets") or [], meta.get("labels") or {},
                    meta.get("annotations") or {}))


class StoredSlice(NamedTuple):
    """A stored EndpointSlice as the reconcilers read it: the slice as parsed, whose fields
    give its address type, ports and endpoints' addresses, and :func:`slice_digest` of its
    body, computed once per stored version. The body itself (``raw``) is read only for a
    slice that is rewritten: the text of 10,000 slices is neither kept nor read at each
    reconcile."""

    slice: EndpointSlice
    digest: bytes

    @classmethod
    def of(cls, body: Mapping[str, Any]) -> StoredSlice:
        """A slice as stored (admitted and defaulted), read from its dict."""
        return cls(EndpointSlice.from_server(dict(body)), slice_digest(body))

    def body(self) -> Mapping[str, Any]:
        """The slice as stored (read from its store when the parsed slice keeps no text)."""
        return self.slice.raw


# what a reconciler is given of the slices stored, and what it deletes of them (as given)
_Existing = Mapping[str, Any] | StoredSlice
_Writes = tuple[list[dict[str, Any]], list[dict[str, Any]], list[_Existing]]


def reconcile_endpoint_slices(
    service: Service, pods: Iterable[Pod], existing: Iterable[_Existing],
    max_endpoints: int = MAX_ENDPOINTS_PER_SLICE,
) -> _Writes:
    """The EndpointSlice writes that bring a service's managed slices (``existing``, each as
    stored or as a :class:`StoredSlice`) to what its selected ``pods`` make:
    ``(create, update, delete)``.

    As Kubernetes' reconciler: endpoints are grouped by address type and by their resolved
    ports; an endpoint stays in the slice that holds it, changed ones are rewritten in place,
    new ones fill slices that are rewritten anyway, then one existing slice with room, then new
    slices of at most ``max_endpoints``; a slice left empty is deleted; a service with no
    endpoint keeps one empty slice per address type (the placeholder), with no ports.
    Slices to create have ``metadata.generateName``; the others carry their stored metadata;
    those to delete are the entries of ``existing``. A slice is compared by its
    :func:`slice_digest`: only one that is rewritten has its body read.
    """
    return _reconcile(service, _slice_endpoints(service, pods), existing, max_endpoints,
                      _managed_labels(service), placeholder=True)


def mirror_endpoint_slices(
    service: Service, endpoints: Endpoints, existing: Iterable[_Existing],
    max_endpoints: int = MAX_ENDPOINTS_PER_SLICE,
) -> _Writes:
    """The writes that bring the slices mirrored from a user's ``Endpoints`` of a service
    without selector to it, as Kubernetes' EndpointSliceMirroring controller: ``addresses``
    ready, ``notReadyAddresses`` not, the Endpoints' labels, ``managed-by`` the mirroring
    controller's name; no placeholder when it has no address."""
    desired: dict[_SliceGroup, dict[str, dict[str, Any]]] = {}
    for subset in endpoints.subsets:
        ports = tuple((p.name, p.port or 0, p.protocol, None) for p in subset.ports)
        for ready, addresses in ((True, subset.addresses), (False, subset.not_ready_addresses)):
            for a in addresses:
                ep: dict[str, Any] = {"addresses": [a.ip], "conditions": {"ready": ready}}
                if a.target:
                    ns, _, name = a.target.partition("/")
                    ep["targetRef"] = {"kind": "Pod", "namespace": ns, "name": name}
                if a.node_name:
                    ep["nodeName"] = a.node_name
                family = "IPv6" if ":" in a.ip else "IPv4"
                desired.setdefault((family, ports), {}).setdefault(a.ip, ep)
    labels = _managed_labels(service, endpoints.labels, MIRRORED_BY)
    return _reconcile(service, desired, existing, max_endpoints, labels, placeholder=False)


def _holds(service: Service, group: _SliceGroup, eps: Iterable[dict[str, Any]],
           stored: StoredSlice, labels: dict[str, str]) -> bool:
    """Whether ``stored`` is what the slice of ``eps`` would be written as (by digest)."""
    return slice_digest(_slice_body(service, group, eps, None, labels)) == stored.digest


def _reconcile(
    service: Service, desired: dict[_SliceGroup, dict[str, dict[str, Any]]],
    existing: Iterable[_Existing], max_endpoints: int, labels: dict[str, str],
    placeholder: bool,
) -> _Writes:
    create: list[dict[str, Any]] = []
    update: list[dict[str, Any]] = []
    empties: list[tuple[StoredSlice, _Existing]] = []  # stored slices left without an endpoint
    by_group: dict[_SliceGroup, list[tuple[StoredSlice, _Existing]]] = {}
    for given in existing:
        stored = given if isinstance(given, StoredSlice) else StoredSlice.of(given)
        by_group.setdefault(_group_of(stored.slice), []).append((stored, given))
    kept = 0
    for group, slices in by_group.items():
        wanted = desired.get(group, {})
        # (the stored slice, as given, its endpoints)
        changed: list[tuple[StoredSlice, _Existing, list[dict[str, Any]]]] = []
        unchanged: list[tuple[StoredSlice, _Existing, list[dict[str, Any]]]] = []
        for stored, given in slices:
            eps = []
            for ep in stored.slice.endpoints:
                ip = ep.addresses[0] if ep.addresses else None
                if ip in wanted:
                    eps.append(wanted.pop(ip))
            same = _holds(service, group, eps, stored, labels)
            (unchanged if same else changed).append((stored, given, eps))
        # new endpoints: slices being rewritten anyway, then one unchanged slice with room
        rest = list(wanted.values())
        for _, _, eps in changed:
            while rest and len(eps) < max_endpoints:
                eps.append(rest.pop())
        if rest:
            roomy = sorted((u for u in unchanged if max_endpoints - len(u[2]) >= len(rest)),
                           key=lambda u: -len(u[2]))
            if roomy:
                unchanged.remove(roomy[0])
                roomy[0][2].extend(rest)
                changed.append(roomy[0])
                rest = []
        desired[group] = {ep["addresses"][0]: ep for ep in rest}
        for stored, given, eps in changed:
            if eps:
                update.append(_slice_body(service, group, eps, stored.body(), labels))
                kept += 1
            else:
                empties.append((stored, given))
        for stored, given, eps in unchanged:
            if eps:
                kept += 1
            else:
                empties.append((stored, given))
    for group, wanted in desired.items():
        rest = _ordered_endpoints(wanted.values())
        for i in range(0, len(rest), max_endpoints):
            create.append(_slice_body(service, group, rest[i:i + max_endpoints], None, labels))
    if placeholder and kept + len(create) == 0:
        # no endpoint at all: one empty slice per address type (an existing empty one if any)
        for family in _address_families(service):
            empty: _SliceGroup = (family, ())
            reuse = next((e for e in empties if _group_of(e[0].slice)[0] == family), None)
            if reuse is None:
                create.append(_slice_body(service, empty, (), None, labels))
                continue
            empties.remove(reuse)
            if not _holds(service, empty, (), reuse[0], labels):
                update.append(_slice_body(service, empty, (), reuse[0].body(), labels))
    delete = [given for _, given in empties]
    return create, update, delete


def endpoints_object(service: Service, pods: Iterable[Pod]) -> dict[str, Any]:
    """The v1 Endpoints object Kubernetes' endpoints controller writes for ``service``: the
    primary family's address of each selected pod, ready ones under ``addresses``, the others
    under ``notReadyAddresses``, one subset per set of resolved ports; terminating pods only
    with ``publishNotReadyAddresses``."""
    family = _address_families(service)[0]
    subsets: dict[tuple[tuple[str, int, str, str | None], ...], dict[str, list[Any]]] = {}
    for pod in pods:
        if pod.finished or (pod.terminating and not service.publish_not_ready_addresses):
            continue
        ip = _ip_of(pod, family)
        ports = _resolved_ports(service, pod)
        if ip is None or (service.ports and not ports):
            continue
        address: dict[str, Any] = {"ip": ip}
        hostname = _hostname(service, pod)
        if hostname:
            address["hostname"] = hostname
        if pod.node_name:
            address["nodeName"] = pod.node_name
        address["targetRef"] = _pod_ref(pod)
        ready = service.publish_not_ready_addresses or pod.ready
        entry = subsets.setdefault(ports, {"addresses": [], "notReadyAddresses": []})
        entry["addresses" if ready else "notReadyAddresses"].append(address)
    out = []
    for ports, entry in sorted(subsets.items(), key=lambda kv: kv[0]):
        subset: dict[str, Any] = {}
        for field in ("addresses", "notReadyAddresses"):
            if entry[field]:
                subset[field] = sorted(entry[field], key=lambda a: _ip_key(a["ip"]))
        # the name even when empty: the store's defaults write it so (and nothing is rewritten)
        subset["ports"] = [
            {k: v for k, v in (("name", n), ("port", p), ("protocol", pr), ("appProtocol", ap))
             if v is not None}
            for n, p, pr, ap in ports]
        out.append(subset)
    labels = dict(service.labels)
    labels[SKIP_MIRROR_LABEL] = "true"
    if service.headless:
        labels[HEADLESS_LABEL] = ""
    meta: dict[str, Any] = {"name": service.name, "namespace": service.namespace,
                            "labels": labels}
    body: dict[str, Any] = {"apiVersion": "v1", "kind": "Endpoints", "metadata": meta}
    if _truncate(out, MAX_ENDPOINTS_ADDRESSES):
        meta["annotations"] = {OVER_CAPACITY_ANNOTATION: "truncated"}
    if out:
        body["subsets"] = out
    return body


def _truncate(subsets: list[dict[str, Any]], limit: int) -> bool:
    """Keep at most ``limit`` addresses (ready ones first), as Kubernetes' endpoints controller
    does past 1,000; True when some were dropped. EndpointSlices hold them all."""
    total = sum(len(s.get(f, ())) for s in subsets for f in ("addresses", "notReadyAddresses"))
    if total <= limit:
        return False
    left = limit
    for field in ("addresses", "notReadyAddresses"):
        for subset in subsets:
            kept = subset.get(field, [])[:left]
            left -= len(kept)
            if kept:
                subset[field] = kept
            else:
                subset.pop(field, None)
    subsets[:] = [s for s in subsets if s.get("addresses") or s.get("notReadyAddresses")]
    return True


def _ip_key(ip: str) -> tuple[bool, bytes]:
    v6 = ":" in ip
    return v6, inet_pton(AF_INET6 if v6 else AF_INET, ip)
