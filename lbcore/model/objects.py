"""Services, Pods, EndpointSlices, Endpoints, Secrets, Ingresses and Routes, loaded from manifests with Kubernetes' defaults.

Each object keeps the defaulted Kubernetes-shaped dict it came from (``to_dict()``, for
``-o yaml`` and the REST API) and exposes typed, read-only accessors for what load balancing
needs. ``from_dict`` applies Kubernetes' defaults (:func:`defaulted`), then validates
(:mod:`lbcore.model.validation`); an invalid object raises :class:`lbcore.ValidationError`, which
lists every problem.

Objects that a store or an API server has already admitted are read with
:func:`parse_admitted`: defaults where absent, never validation, so that lbcore never refuses
what the server accepted (:mod:`lbcore.model.admission` is where validation runs on a write).
"""

from __future__ import annotations

import base64
import binascii
import copy
import datetime as _dt
import ipaddress
import json
import os
import sys
import warnings
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, ClassVar, Self, TypeAlias

import yaml

from lbcore.errors import Cause, ValidationError
from lbcore.model import schema
from lbcore.model.kinds import kind_for

__all__ = [
    "ContainerPort",
    "EndpointAddress",
    "EndpointPort",
    "EndpointSlice",
    "EndpointSubset",
    "Endpoints",
    "Ingress",
    "IngressBackend",
    "IngressPath",
    "IngressRule",
    "IngressTLS",
    "ManifestSyntaxError",
    "CLASSES",
    "Object",
    "Pod",
    "Route",
    "RouteBackend",
    "RouteTLS",
    "Secret",
    "Service",
    "ServicePort",
    "SliceEndpoint",
    "StoredText",
    "format_timestamp",
    "load_manifests",
    "manifest_documents",
    "text_documents",
    "defaulted",
    "default_event",
    "default_namespace",
    "parse_admitted",
    "parse_object",
    "parse_stored",
    "parse_timestamp",
]

DEFAULT_AFFINITY_TIMEOUT = 10800  # seconds, Kubernetes' DefaultClientIPServiceAffinitySeconds
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
ZONE_LABEL = "topology.kubernetes.io/zone"

_EMPTY: Mapping[str, str] = MappingProxyType({})


# --- helpers ---------------------------------------------------------------------------------


def parse_timestamp(value: Any) -> _dt.datetime | None:
    """An RFC 3339 timestamp (``2026-11-25T08:00:00Z``) as an aware datetime; None if absent."""
    if value is None or value == "":
        return None
    if isinstance(value, _dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=_dt.UTC)
    text = str(value)
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    stamp = _dt.datetime.fromisoformat(text)
    return stamp if stamp.tzinfo else stamp.replace(tzinfo=_dt.UTC)


def format_timestamp(value: _dt.datetime) -> str:
    """``value`` as Kubernetes writes timestamps: UTC, whole seconds, ``Z``."""
    return value.astimezone(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _plain(value: Any) -> Any:
    """A deep copy with YAML's datetimes turned back into RFC 3339 strings (JSON-safe)."""
    cls = type(value)
    if cls is str or cls is int or cls is bool or value is None:
        return value
    if cls is dict:  # what JSON gives, without the slower checks below
        return {k if type(k) is str else str(k): _plain(v) for k, v in value.items()}
    if cls is list:
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k) if not isinstance(k, str) else k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, _dt.datetime):
        return format_timestamp(parse_timestamp(value))  # type: ignore[arg-type]
    if isinstance(value, _dt.date):
        return value.isoformat()
    return value


def _interned(value: Any) -> Any:
    """The one interned copy of a string ``value`` (label keys and values, namespaces and node
    names repeat across 100,000 pods); anything else as it is."""
    return sys.intern(value) if type(value) is str else value


def _str_map(value: Any) -> Mapping[str, str]:
    if not value:
        return _EMPTY
    return MappingProxyType({_interned(k): _interned(v) for k, v in value.items()})


class _SharedMap(dict):  # type: ignore[type-arg]
    """A dict that several read-only views share (it can be weakly referenced)."""

    __slots__ = ("__weakref__",)


# the items of a labels or selector map -> the one dict the objects with those items share
_SHARED_MAPS: weakref.WeakValueDictionary[Any, _SharedMap] = weakref.WeakValueDictionary()


def _shared_map(value: Any) -> Mapping[str, str]:
    """As :func:`_str_map`, the dict behind the read-only view shared by every object whose map
    has the same items (the pods of a service have the same labels: 100,000 pods keep a few
    thousand dicts, not 100,000); a shared dict goes when the last object holding it does."""
    if not value:
        return _EMPTY
    items = tuple((_interned(k), _interned(v)) for k, v in value.items())
    try:
        shared = _SHARED_MAPS.get(items)
        if shared is None:
            shared = _SHARED_MAPS.setdefault(items, _SharedMap(items))
    except TypeError:  # a value that cannot be hashed (admission lets none through)
        return MappingProxyType(dict(items))
    return MappingProxyType(shared)


_TIMESTAMPS: dict[str, _dt.datetime] = {}  # recent ones: objects made in the same second


def _timestamp(value: Any) -> _dt.datetime | None:
    """:func:`parse_timestamp` of an object's timestamp, the same datetime for the same text
    (of the last few thousand): 100,000 objects are made in a few hundred seconds."""
    if type(value) is not str:
        return parse_timestamp(value)
    stamp = _TIMESTAMPS.get(value)
    if stamp is None:
        if len(_TIMESTAMPS) >= 4096:
            _TIMESTAMPS.clear()
        stamp = _TIMESTAMPS[value] = parse_timestamp(value)  # type: ignore[assignment]
    return stamp


def _family(ip: str) -> str:
    return "IPv6" if ipaddress.ip_address(ip).version == 6 else "IPv4"


def _name_of(obj: Mapping[str, Any]) -> str:
    meta = obj.get("metadata")
    return str(meta.get("name") or "") if isinstance(meta, Mapping) else ""


def check(obj: Mapping[str, Any]) -> None:
    """Raise :class:`lbcore.ValidationError` listing every problem of a defaulted object."""
    # imported here: reading what a server admitted (the CLI's tables, describe) never needs it
    from lbcore.model import validation

    validation.raise_if_invalid(str(obj.get("kind")), _name_of(obj), validation.validate(obj))


def _default_type(obj: dict[str, Any], kind: str) -> None:
    obj.setdefault("apiVersion", kind_for(kind).api_version)
    obj.setdefault("kind", kind)


def _default_metadata(obj: dict[str, Any], namespaced: bool = True) -> dict[str, Any]:
    """``obj``'s metadata (made when missing), with namespace ``default`` when the kind is
    namespaced and none when it is cluster-scoped."""
    meta = obj.get("metadata")
    if not isinstance(meta, dict):
        meta = obj["metadata"] = {}
    if not namespaced:
        meta.pop("namespace", None)
    elif not meta.get("namespace"):
        meta["namespace"] = "default"
    return meta


class _Stored:
    """What every kind of object has: a ``namespace/name`` key and its Kubernetes-shaped dict.

    ``body`` is that dict, or (objects read by :func:`parse_stored`, which a daemon keeps by
    the hundred thousand) its compact JSON text, about a tenth of the dict's size, or a
    :class:`StoredText` that reads that text from the store holding the object; ``raw``
    gives the dict in every case. An object read by :func:`parse_stored` (or
    :func:`parse_admitted`) also knows its ``resource_version``, so that its holders need not keep the version beside it.
    """

    # not fields: _version is set by parse_stored and parse_admitted, _key by the first ``key``
    __slots__ = ("_version", "_key")
    _version: str
    _key: str
    kind: ClassVar[str]
    namespace: str
    name: str
    body: Mapping[str, Any] | str | StoredText

    @property
    def resource_version(self) -> str:
        """``metadata.resourceVersion`` of an object read by :func:`parse_stored` or
        :func:`parse_admitted` ("" for others, and for a copy made by
        ``dataclasses.replace``)."""
        try:
            return self._version
        except AttributeError:
            return ""

    @property
    def raw(self) -> Mapping[str, Any]:
        """The defaulted Kubernetes-shaped dict (not to be changed; decoded anew on each access
        when ``body`` is JSON text, or a :class:`StoredText` that reads it)."""
        body = self.body
        if isinstance(body, str):
            return json.loads(body)  # type: ignore[no-any-return]
        if isinstance(body, StoredText):
            return json.loads(body.read(self))  # type: ignore[no-any-return]
        return body

    @classmethod
    def from_dict(cls, obj: Mapping[str, Any], validate: bool = True) -> Self:
        """Default, validate (unless ``validate`` is False) and wrap a dict of this kind."""
        defaulted_obj = _DEFAULTS[cls.kind](obj)
        if validate:
            check(defaulted_obj)
        return cls._wrap(defaulted_obj)

    @classmethod
    def from_server(cls, obj: dict[str, Any]) -> Self:
        """An object of this kind as an API server (or the store) sent it, as JSON: admitted and
        defaulted there, so wrapped as it is, neither copied nor defaulted again (the CLI's
        tables read thousands this way). ``obj`` must not change afterwards."""
        return cls._wrap(obj)

    @classmethod
    def _wrap(cls, obj: dict[str, Any]) -> Self:
        raise NotImplementedError

    @property
    def key(self) -> str:
        """``namespace/name``: made on first use, then kept, and interned, so that what holds
        objects by key (the store's parse cache, the endpoint tracker, the endpoints controller,
        the target references of slices and Endpoints) shares one string per object."""
        try:
            return self._key
        except AttributeError:
            key = sys.intern(f"{self.namespace}/{self.name}")
            object.__setattr__(self, "_key", key)  # a cache of two fields, not a change
            return key

    def to_dict(self) -> dict[str, Any]:
        """The defaulted Kubernetes-shaped dict (a copy)."""
        body = self.body
        if isinstance(body, str | StoredText):
            return dict(self.raw)  # decoded anew: a copy
        return copy.deepcopy(dict(body))


class StoredText:
    """The ``body`` of objects whose JSON text a store keeps for them: ``read(obj)`` gives
    the text of ``obj`` at its ``resource_version``, read from the store when asked. One is
    shared by every object of a store; what a daemon holds of 100,000 pods is then their
    fields, not their text (about 0.5 kB each) as well.
    """

    __slots__ = ("read",)
    read: Callable[[Any], str]

    def __init__(self, read: Callable[[Any], str]):
        self.read = read

    def __repr__(self) -> str:
        return "StoredText(...)"


# --- Service ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ServicePort:
    """One entry of ``spec.ports``: ``port`` on the cluster IP goes to ``target_port`` on pods."""

    name: str
    protocol: str
    port: int
    target_port: int | str  # a number or a container port name
    node_port: int | None = None
    app_protocol: str | None = None


def default_service(obj: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of a Service dict with Kubernetes' defaults (SetDefaults_Service and the registry)."""
    svc = _plain(obj)
    _default_type(svc, "Service")
    _default_metadata(svc)
    spec = svc.get("spec")
    if not isinstance(spec, dict):
        return svc  # validation reports the missing spec
    stype = spec.setdefault("type", "ClusterIP")
    spec.setdefault("sessionAffinity", "None")
    if spec["sessionAffinity"] == "None":
        # as SetDefaults_Service: no affinity, no affinity config (an apply that drops
        # ``sessionAffinity: ClientIP`` leaves the defaulted config behind; it goes with it)
        spec.pop("sessionAffinityConfig", None)
    elif spec["sessionAffinity"] == "ClientIP":
        config = spec.setdefault("sessionAffinityConfig", {}) or {}
        spec["sessionAffinityConfig"] = config
        client_ip = config.setdefault("clientIP", {}) or {}
        config["clientIP"] = client_ip
        client_ip.setdefault("timeoutSeconds", DEFAULT_AFFINITY_TIMEOUT)
    for sp in spec.get("ports") or []:
        if not isinstance(sp, dict):
            continue
        sp.setdefault("protocol", "TCP")
        if sp.get("targetPort") in (None, "", 0):
            sp["targetPort"] = sp.get("port")
        if isinstance(sp.get("targetPort"), str) and sp["targetPort"].isdigit():
            sp["targetPort"] = int(sp["targetPort"])
    if stype in ("NodePort", "LoadBalancer"):
        spec.setdefault("externalTrafficPolicy", "Cluster")
    if stype == "LoadBalancer":
        spec.setdefault("allocateLoadBalancerNodePorts", True)
    if stype != "ExternalName":
        spec.setdefault("internalTrafficPolicy", "Cluster")
        _default_cluster_ips(spec)
    svc.setdefault("status", {"loadBalancer": {}})
    return svc


def _default_cluster_ips(spec: dict[str, Any]) -> None:
    cluster_ip = spec.get("clusterIP")
    ips = spec.get("clusterIPs")
    if cluster_ip and not ips:
        spec["clusterIPs"] = [cluster_ip]
    elif ips and not cluster_ip:
        spec["clusterIP"] = ips[0]
    ips = spec.get("clusterIPs") or []
    if ips == ["None"]:
        spec.setdefault("ipFamilyPolicy", "SingleStack")
        spec.setdefault("ipFamilies", ["IPv4"])
        return
    spec.setdefault("ipFamilyPolicy", "SingleStack")
    if ips and not spec.get("ipFamilies"):
        try:
            spec["ipFamilies"] = [_family(ip) for ip in ips]
        except ValueError:
            pass  # an invalid address; validation names it


@dataclass(frozen=True, slots=True)
class Service(_Stored):
    """A v1 Service. ``to_dict()`` gives the defaulted Kubernetes-shaped dict."""

    kind: ClassVar[str] = "Service"
    namespace: str
    name: str
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    selector: Mapping[str, str] | None  # None: endpoints come from EndpointSlices/Endpoints
    type: str
    cluster_ip: str | None  # "None" for a headless service, None while unallocated
    cluster_ips: tuple[str, ...]
    ports: tuple[ServicePort, ...]
    session_affinity: str
    affinity_timeout: int
    external_traffic_policy: str | None
    internal_traffic_policy: str | None
    ip_families: tuple[str, ...]
    ip_family_policy: str | None
    external_ips: tuple[str, ...]
    load_balancer_ips: tuple[str, ...]
    external_name: str | None
    publish_not_ready_addresses: bool
    created: _dt.datetime | None
    uid: str | None
    body: Mapping[str, Any] | str | StoredText = field(repr=False, compare=False)

    @classmethod
    def _wrap(cls, svc: dict[str, Any]) -> Service:
        meta, spec = svc["metadata"], svc.get("spec") or {}
        ports = tuple(
            ServicePort(
                name=sp.get("name") or "",
                protocol=sp.get("protocol", "TCP"),
                port=int(sp["port"]),
                target_port=sp.get("targetPort", sp["port"]),
                node_port=sp.get("nodePort") or None,
                app_protocol=sp.get("appProtocol"),
            )
            for sp in spec.get("ports") or []
        )
        selector = spec.get("selector")
        timeout = ((spec.get("sessionAffinityConfig") or {}).get("clientIP") or {}).get(
            "timeoutSeconds", DEFAULT_AFFINITY_TIMEOUT)
        ingress = ((svc.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []
        return cls(
            namespace=_interned(meta["namespace"]),
            name=meta.get("name", ""),
            labels=_shared_map(meta.get("labels")),
            annotations=_str_map(meta.get("annotations")),
            selector=_shared_map(selector) if selector else None,
            type=_interned(spec.get("type", "ClusterIP")),
            cluster_ip=_interned(spec.get("clusterIP") or None),
            cluster_ips=tuple(_interned(ip) for ip in spec.get("clusterIPs") or ()),
            ports=ports,
            session_affinity=_interned(spec.get("sessionAffinity", "None")),
            affinity_timeout=int(timeout),
            external_traffic_policy=_interned(spec.get("externalTrafficPolicy")),
            internal_traffic_policy=_interned(spec.get("internalTrafficPolicy")),
            ip_families=tuple(_interned(f) for f in spec.get("ipFamilies") or ()),
            ip_family_policy=_interned(spec.get("ipFamilyPolicy")),
            external_ips=tuple(spec.get("externalIPs") or ()),
            load_balancer_ips=tuple(i["ip"] for i in ingress if isinstance(i, Mapping) and i.get("ip")),
            external_name=spec.get("externalName"),
            publish_not_ready_addresses=bool(spec.get("publishNotReadyAddresses", False)),
            created=_timestamp(meta.get("creationTimestamp")),
            uid=meta.get("uid") or None,
            body=svc,
        )

    @property
    def headless(self) -> bool:
        """``clusterIP: None``: DNS only, never proxied."""
        return self.cluster_ip == "None"

    @property
    def proxied(self) -> bool:
        """True when a frontend serves it: it has a cluster IP and is not headless/ExternalName."""
        return bool(self.cluster_ip) and not self.headless and self.type != "ExternalName"



# --- Pod -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ContainerPort:
    """A port a container declares; a named targetPort is looked up among these."""

    name: str
    port: int
    protocol: str


# recent port lists -> their one tuple: the pods of a workload declare the same ports
_CONTAINER_PORTS: dict[tuple[tuple[str, int, str], ...], tuple[ContainerPort, ...]] = {}


def _container_ports(spec: Mapping[str, Any]) -> tuple[ContainerPort, ...]:
    """The ports the containers of a pod ``spec`` declare, the same tuple for the same ports
    (of the last few thousand lists): 100,000 pods keep a few thousand, not 100,000."""
    items = tuple((cp.get("name") or "", int(cp["containerPort"]), cp.get("protocol", "TCP"))
                  for c in spec.get("containers") or [] for cp in (c or {}).get("ports") or [])
    if not items:
        return ()
    try:
        ports = _CONTAINER_PORTS.get(items)
    except TypeError:  # a name that cannot be hashed (admission lets none through)
        return tuple(ContainerPort(*item) for item in items)
    if ports is None:
        if len(_CONTAINER_PORTS) >= 4096:
            _CONTAINER_PORTS.clear()
        ports = _CONTAINER_PORTS[items] = tuple(
            ContainerPort(_interned(name), port, _interned(protocol))
            for name, port, protocol in items)
    return ports


def default_pod(obj: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of a Pod dict with the defaults that matter here (namespace, port protocols)."""
    pod = _plain(obj)
    _default_type(pod, "Pod")
    _default_metadata(pod)
    spec = pod.setdefault("spec", {})
    if isinstance(spec, dict):
        for container in spec.get("containers") or []:
            for cp in (container or {}).get("ports") or []:
                if isinstance(cp, dict):
                    cp.setdefault("protocol", "TCP")
    status = pod.get("status")
    if isinstance(status, dict) and status.get("podIP") and not status.get("podIPs"):
        status["podIPs"] = [{"ip": status["podIP"]}]
    return pod


@dataclass(frozen=True, slots=True)
class Pod(_Stored):
    """A v1 Pod, as far as endpoints need it: labels, addresses, readiness, ports, node."""

    kind: ClassVar[str] = "Pod"
    namespace: str
    name: str
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    node_name: str | None
    pod_ip: str | None
    pod_ips: tuple[str, ...]
    phase: str | None
    ready: bool  # the Ready condition; a pod with an IP and no Ready condition counts as ready
    terminating: bool  # metadata.deletionTimestamp is set
    container_ports: tuple[ContainerPort, ...]
    created: _dt.datetime | None
    uid: str | None
    hostname: str | None  # spec.hostname and spec.subdomain: a headless service's DNS names
    subdomain: str | None
    body: Mapping[str, Any] | str | StoredText = field(repr=False, compare=False)

    @classmethod
    def _wrap(cls, pod: dict[str, Any]) -> Pod:
        meta, spec = pod["metadata"], pod.get("spec") or {}
        status = pod.get("status") or {}
        pod_ip = _interned(status.get("podIP") or None)
        ips = tuple(_interned(e["ip"]) for e in status.get("podIPs") or [] if isinstance(e, Mapping))
        ready_cond = next((c for c in status.get("conditions") or []
                           if isinstance(c, Mapping) and c.get("type") == "Ready"), None)
        if ready_cond is None:
            ready = pod_ip is not None
        else:
            ready = str(ready_cond.get("status")) == "True"
        return cls(
            namespace=_interned(meta["namespace"]),
            name=meta.get("name", ""),
            labels=_shared_map(meta.get("labels")),
            annotations=_str_map(meta.get("annotations")),
            node_name=_interned(spec.get("nodeName") or None),
            pod_ip=pod_ip,
            pod_ips=ips or ((pod_ip,) if pod_ip else ()),
            phase=_interned(status.get("phase")),
            ready=ready,
            terminating=bool(meta.get("deletionTimestamp")),
            container_ports=_container_ports(spec),
            created=_timestamp(meta.get("creationTimestamp")),
            uid=meta.get("uid") or None,
            hostname=spec.get("hostname") or None,
            subdomain=spec.get("subdomain") or None,
            body=pod,
        )

    @property
    def finished(self) -> bool:
        """Succeeded or Failed: never an endpoint again."""
        return self.phase in ("Succeeded", "Failed")

    def container_port(self, name: str, protocol: str) -> int | None:
        """The number of the container port called ``name`` with ``protocol``; None if absent."""
        for cp in self.container_ports:
            if cp.name == name and cp.protocol == protocol:
                return cp.port
        return None



# --- EndpointSlice (discovery.k8s.io/v1) -----------------------------------------------------


@dataclass(frozen=True, slots=True)
class EndpointPort:
    """A port of an EndpointSlice or of an Endpoints subset; ``name`` matches the service port."""

    name: str
    port: int | None
    protocol: str
    app_protocol: str | None = None


@dataclass(frozen=True, slots=True)
class SliceEndpoint:
    """One endpoint of an EndpointSlice, with its conditions as the slice states them."""

    addresses: tuple[str, ...]
    ready: bool
    serving: bool
    terminating: bool
    node_name: str | None = None
    zone: str | None = None
    target: str | None = None  # "namespace/name" of the target reference


def _ports(entries: Any) -> tuple[EndpointPort, ...]:
    return tuple(EndpointPort(p.get("name") or "", p.get("port"), p.get("protocol", "TCP"),
                              _interned(p.get("appProtocol")))
                 for p in entries or [] if isinstance(p, Mapping))


def _default_ports(entries: Any) -> None:
    for p in entries or []:
        if isinstance(p, dict):
            p.setdefault("protocol", "TCP")
            p.setdefault("name", "")


def _target(ref: Any, namespace: str) -> str | None:
    if not isinstance(ref, Mapping) or not ref.get("name"):
        return None
    # interned: a pod's slice and Endpoints entries name it with one string, its ``key``
    return sys.intern(f"{ref.get('namespace') or namespace}/{ref['name']}")


def default_endpoint_slice(obj: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of an EndpointSlice dict with its defaults (namespace, port protocols and names)."""
    eps = _plain(obj)
    _default_type(eps, "EndpointSlice")
    _default_metadata(eps)
    _default_ports(eps.get("ports"))
    return eps


@dataclass(frozen=True, slots=True)
class EndpointSlice(_Stored):
    """A discovery.k8s.io/v1 EndpointSlice; ``service_name`` is its kubernetes.io/service-name."""

    kind: ClassVar[str] = "EndpointSlice"
    namespace: str
    name: str
    labels: Mapping[str, str]
    address_type: str
    endpoints: tuple[SliceEndpoint, ...]
    ports: tuple[EndpointPort, ...]
    created: _dt.datetime | None
    body: Mapping[str, Any] | str | StoredText = field(repr=False, compare=False)

    @classmethod
    def _wrap(cls, eps: dict[str, Any]) -> EndpointSlice:
        meta = eps["metadata"]
        ns = _interned(meta["namespace"])
        endpoints = []
        for ep in eps.get("endpoints") or []:
            cond = ep.get("conditions") or {}
            # EndpointConditions: an unknown ready/serving is read as true
            ready = cond.get("ready") is not False
            endpoints.append(SliceEndpoint(
                addresses=tuple(_interned(a) for a in ep.get("addresses") or ()),
                ready=ready,
                serving=cond.get("serving", ready) is not False,
                terminating=bool(cond.get("terminating", False)),
                node_name=_interned(ep.get("nodeName")),
                zone=_interned(ep.get("zone")),
                target=_target(ep.get("targetRef"), ns),
            ))
        return cls(
            namespace=ns,
            name=meta.get("name", ""),
            labels=_shared_map(meta.get("labels")),
            address_type=_interned(eps.get("addressType", "IPv4")),
            endpoints=tuple(endpoints),
            ports=_ports(eps.get("ports")),
            created=_timestamp(meta.get("creationTimestamp")),
            body=eps,
        )

    @property
    def service_name(self) -> str | None:
        """The service this slice belongs to (label kubernetes.io/service-name)."""
        return self.labels.get(SERVICE_NAME_LABEL)



# --- Endpoints (v1) --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EndpointAddress:
    """An address of an Endpoints subset."""

    ip: str
    node_name: str | None = None
    target: str | None = None


@dataclass(frozen=True, slots=True)
class EndpointSubset:
    """Addresses (ready and not ready) that share the same ports."""

    addresses: tuple[EndpointAddress, ...]
    not_ready_addresses: tuple[EndpointAddress, ...]
    ports: tuple[EndpointPort, ...]


def default_endpoints(obj: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of an Endpoints dict with its defaults (namespace, port protocols and names)."""
    ep = _plain(obj)
    _default_type(ep, "Endpoints")
    _default_metadata(ep)
    for subset in ep.get("subsets") or []:
        _default_ports((subset or {}).get("ports"))
    return ep


@dataclass(frozen=True, slots=True)
class Endpoints(_Stored):
    """A v1 Endpoints object; it has the name of its service."""

    kind: ClassVar[str] = "Endpoints"
    namespace: str
    name: str
    labels: Mapping[str, str]
    subsets: tuple[EndpointSubset, ...]
    created: _dt.datetime | None
    body: Mapping[str, Any] | str | StoredText = field(repr=False, compare=False)

    @classmethod
    def _wrap(cls, ep: dict[str, Any]) -> Endpoints:
        meta = ep["metadata"]
        ns = _interned(meta["namespace"])

        def addresses(entries: Any) -> tuple[EndpointAddress, ...]:
            return tuple(EndpointAddress(_interned(a["ip"]), _interned(a.get("nodeName")),
                                         _target(a.get("targetRef"), ns))
                         for a in entries or [] if isinstance(a, Mapping))

        subsets = tuple(
            EndpointSubset(addresses(s.get("addresses")), addresses(s.get("notReadyAddresses")),
                           _ports(s.get("ports")))
            for s in ep.get("subsets") or [] if isinstance(s, Mapping)
        )
        return cls(ns, meta.get("name", ""), _shared_map(meta.get("labels")), subsets,
                   _timestamp(meta.get("creationTimestamp")), ep)



# --- Secret (v1) -----------------------------------------------------------------------------

TLS_SECRET_TYPE = "kubernetes.io/tls"


def default_secret(obj: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of a Secret dict with the API server's defaults: ``type`` Opaque, and
    ``stringData`` folded into ``data`` (base64) and dropped, as the API server stores it."""
    secret = _plain(obj)
    _default_type(secret, "Secret")
    _default_metadata(secret)
    if not secret.get("type"):
        secret["type"] = "Opaque"
    string_data = secret.pop("stringData", None)
    if isinstance(string_data, Mapping) and string_data:
        data = secret.get("data")
        if not isinstance(data, dict):
            data = secret["data"] = {}
        for key, value in string_data.items():
            data[key] = base64.b64encode(str(value).encode()).decode()
    return secret


def _decoded(data: Any) -> Mapping[str, bytes]:
    out = {}
    for key, value in (data or {}).items():
        try:
            out[str(key)] = base64.b64decode(str(value), validate=True)
        except (binascii.Error, ValueError):
            continue  # validation names it on a write; a reader skips what it cannot decode
    return MappingProxyType(out)


@dataclass(frozen=True, slots=True)
class Secret(_Stored):
    """A v1 Secret; ``data`` holds the decoded bytes (``tls.crt``, ``tls.key`` for TLS)."""

    kind: ClassVar[str] = "Secret"
    namespace: str
    name: str
    labels: Mapping[str, str]
    type: str
    data: Mapping[str, bytes] = field(repr=False)
    created: _dt.datetime | None
    body: Mapping[str, Any] | str | StoredText = field(repr=False, compare=False)

    @classmethod
    def _wrap(cls, secret: dict[str, Any]) -> Secret:
        meta = secret["metadata"]
        return cls(meta["namespace"], meta.get("name", ""), _shared_map(meta.get("labels")),
                   secret.get("type") or "Opaque", _decoded(secret.get("data")),
                   _timestamp(meta.get("creationTimestamp")), secret)


# --- Ingress (networking.k8s.io/v1) ----------------------------------------------------------

INGRESS_CLASS_ANNOTATION = "kubernetes.io/ingress.class"  # the legacy way to name a class


@dataclass(frozen=True, slots=True)
class IngressBackend:
    """``backend.service``: a service and one of its ports, by number or by name."""

    service: str
    port_number: int | None = None
    port_name: str = ""


@dataclass(frozen=True, slots=True)
class IngressPath:
    """One entry of ``rules[].http.paths``."""

    path: str
    path_type: str  # Exact | Prefix | ImplementationSpecific
    backend: IngressBackend | None


@dataclass(frozen=True, slots=True)
class IngressRule:
    """One entry of ``spec.rules``: a host ("" for every host) and its paths."""

    host: str
    paths: tuple[IngressPath, ...]


@dataclass(frozen=True, slots=True)
class IngressTLS:
    """One entry of ``spec.tls``: the hosts a Secret's certificate serves."""

    hosts: tuple[str, ...]
    secret_name: str


def _ingress_backend(backend: Any) -> IngressBackend | None:
    service = (backend or {}).get("service") if isinstance(backend, Mapping) else None
    if not isinstance(service, Mapping) or not service.get("name"):
        return None  # a resource backend, which lbcore does not serve
    port = service.get("port") or {}
    number = port.get("number") if isinstance(port, Mapping) else None
    return IngressBackend(str(service["name"]), int(number) if number else None,
                          str(port.get("name") or "") if isinstance(port, Mapping) else "")


def default_ingress(obj: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of an Ingress dict with its defaults (namespace, an empty status)."""
    ing = _plain(obj)
    _default_type(ing, "Ingress")
    _default_metadata(ing)
    ing.setdefault("status", {"loadBalancer": {}})
    return ing


@dataclass(frozen=True, slots=True)
class Ingress(_Stored):
    """A networking.k8s.io/v1 Ingress."""

    kind: ClassVar[str] = "Ingress"
    namespace: str
    name: str
    uid: str
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    ingress_class: str | None  # spec.ingressClassName, else the legacy annotation
    default_backend: IngressBackend | None
    rules: tuple[IngressRule, ...]
    tls: tuple[IngressTLS, ...]
    created: _dt.datetime | None
    body: Mapping[str, Any] | str | StoredText = field(repr=False, compare=False)

    @classmethod
    def _wrap(cls, ing: dict[str, Any]) -> Ingress:
        meta, spec = ing["metadata"], ing.get("spec") or {}
        annotations = _str_map(meta.get("annotations"))
        rules = tuple(
            IngressRule(str(r.get("host") or ""), tuple(
                IngressPath(str(p.get("path") or ""), str(p.get("pathType") or "Prefix"),
                            _ingress_backend(p.get("backend")))
                for p in (r.get("http") or {}).get("paths") or [] if isinstance(p, Mapping)))
            for r in spec.get("rules") or [] if isinstance(r, Mapping))
        tls = tuple(IngressTLS(tuple(str(h) for h in t.get("hosts") or ()),
                               str(t.get("secretName") or ""))
                    for t in spec.get("tls") or [] if isinstance(t, Mapping))
        return cls(
            namespace=meta["namespace"], name=meta.get("name", ""),
            uid=str(meta.get("uid") or ""), labels=_shared_map(meta.get("labels")),
            annotations=annotations,
            ingress_class=spec.get("ingressClassName") or annotations.get(
                INGRESS_CLASS_ANNOTATION) or None,
            default_backend=_ingress_backend(spec.get("defaultBackend")),
            rules=rules, tls=tls, created=_timestamp(meta.get("creationTimestamp")),
            body=ing,
        )


# --- Route (route.openshift.io/v1) -----------------------------------------------------------

DEFAULT_ROUTE_WEIGHT = 100  # OpenShift's default weight of spec.to and alternateBackends


@dataclass(frozen=True, slots=True)
class RouteBackend:
    """``spec.to`` or an entry of ``spec.alternateBackends``: a service and its weight."""

    kind: str
    name: str
    weight: int


@dataclass(frozen=True, slots=True)
class RouteTLS:
    """``spec.tls``: the termination and its PEM texts ("" when absent)."""

    termination: str  # edge | passthrough | reencrypt
    certificate: str = field(default="", repr=False)
    key: str = field(default="", repr=False)
    ca_certificate: str = field(default="", repr=False)
    destination_ca_certificate: str = field(default="", repr=False)
    insecure_edge_termination_policy: str = ""  # "" | None | Allow | Redirect


def _default_backend_ref(ref: Any) -> None:
    if isinstance(ref, dict):
        if not ref.get("kind"):
            ref["kind"] = "Service"
        if ref.get("weight") is None:
            ref["weight"] = DEFAULT_ROUTE_WEIGHT


def default_route(obj: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of a Route dict with OpenShift's defaults: ``to.kind`` Service, weights 100,
    ``wildcardPolicy`` None, a TLS termination of edge (reencrypt with a destination CA)."""
    route = _plain(obj)
    _default_type(route, "Route")
    _default_metadata(route)
    spec = route.get("spec")
    if not isinstance(spec, dict):
        return route  # validation reports the missing spec
    _default_backend_ref(spec.get("to"))
    for ref in spec.get("alternateBackends") or []:
        _default_backend_ref(ref)
    if not spec.get("wildcardPolicy"):
        spec["wildcardPolicy"] = "None"
    tls = spec.get("tls")
    if isinstance(tls, dict) and not tls.get("termination"):
        tls["termination"] = "reencrypt" if tls.get("destinationCACertificate") else "edge"
    port = spec.get("port")
    if isinstance(port, dict) and isinstance(port.get("targetPort"), str) \
            and port["targetPort"].isdigit():
        port["targetPort"] = int(port["targetPort"])
    route.setdefault("status", {})
    return route


def _route_backend(ref: Any) -> RouteBackend:
    ref = ref if isinstance(ref, Mapping) else {}
    weight = ref.get("weight")
    return RouteBackend(str(ref.get("kind") or "Service"), str(ref.get("name") or ""),
                        DEFAULT_ROUTE_WEIGHT if weight is None else int(weight))


@dataclass(frozen=True, slots=True)
class Route(_Stored):
    """A route.openshift.io/v1 Route: a host name (and path) served by weighted services."""

    kind: ClassVar[str] = "Route"
    namespace: str
    name: str
    uid: str
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    host: str
    path: str
    to: RouteBackend
    alternate_backends: tuple[RouteBackend, ...]
    target_port: int | str | None  # spec.port.targetPort: a number or an endpoint port name
    wildcard_policy: str  # None | Subdomain
    tls: RouteTLS | None
    created: _dt.datetime | None
    body: Mapping[str, Any] | str | StoredText = field(repr=False, compare=False)

    @classmethod
    def _wrap(cls, route: dict[str, Any]) -> Route:
        meta, spec = route["metadata"], route.get("spec") or {}
        tls = spec.get("tls")
        port = spec.get("port")
        target = port.get("targetPort") if isinstance(port, Mapping) else None
        return cls(
            namespace=meta["namespace"], name=meta.get("name", ""),
            uid=str(meta.get("uid") or ""), labels=_shared_map(meta.get("labels")),
            annotations=_str_map(meta.get("annotations")),
            host=str(spec.get("host") or "").lower(), path=str(spec.get("path") or ""),
            to=_route_backend(spec.get("to")),
            alternate_backends=tuple(_route_backend(r) for r in
                                     spec.get("alternateBackends") or []),
            target_port=target if target not in ("", None) else None,
            wildcard_policy=str(spec.get("wildcardPolicy") or "None"),
            tls=RouteTLS(
                termination=str(tls.get("termination") or "edge"),
                certificate=str(tls.get("certificate") or ""), key=str(tls.get("key") or ""),
                ca_certificate=str(tls.get("caCertificate") or ""),
                destination_ca_certificate=str(tls.get("destinationCACertificate") or ""),
                insecure_edge_termination_policy=str(tls.get("insecureEdgeTerminationPolicy") or ""),
            ) if isinstance(tls, Mapping) else None,
            created=_timestamp(meta.get("creationTimestamp")),
            body=route,
        )

    @property
    def backends(self) -> tuple[RouteBackend, ...]:
        """``to`` then ``alternateBackends``."""
        return (self.to, *self.alternate_backends)


# --- loading ---------------------------------------------------------------------------------

Object: TypeAlias = Service | Pod | EndpointSlice | Endpoints | Secret | Ingress | Route
# kind -> the class that parses it, for every kind of the registry
CLASSES: Mapping[str, type[Object]] = MappingProxyType({
    cls.kind: cls for cls in (Service, Pod, Endpoints, EndpointSlice, Secret, Ingress, Route)})


# --- Namespace and Event: kept by the store as a cluster keeps them, not read by balancing ----

NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"


def default_namespace(obj: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of a Namespace dict with the API server's defaults: no namespace of its own, the
    ``kubernetes.io/metadata.name`` label, the ``kubernetes`` finalizer, phase ``Active``."""
    ns = _plain(obj)
    _default_type(ns, "Namespace")
    meta = _default_metadata(ns, namespaced=False)
    if isinstance(meta.get("name"), str) and meta["name"]:
        labels = meta.get("labels")
        if labels is None:
            labels = meta["labels"] = {}
        if isinstance(labels, dict):
            labels[NAMESPACE_NAME_LABEL] = meta["name"]
    spec = ns.setdefault("spec", {})
    if isinstance(spec, dict):
        spec.setdefault("finalizers", ["kubernetes"])
    status = ns.setdefault("status", {})
    if isinstance(status, dict):
        status.setdefault("phase", "Active")
    return ns


def default_event(obj: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of a core/v1 Event dict with what the API server fills in: ``type`` Normal, a
    ``count`` of 1, ``reportingComponent`` and ``reportingInstance`` empty, and the involved
    object's namespace that of the event."""
    ev = _plain(obj)
    _default_type(ev, "Event")
    meta = _default_metadata(ev)
    ev.setdefault("type", "Normal")
    ev.setdefault("count", 1)
    ev.setdefault("reportingComponent", "")
    ev.setdefault("reportingInstance", "")
    ev.setdefault("source", {})
    ev.setdefault("eventTime", None)
    involved = ev.get("involvedObject")
    if isinstance(involved, dict) and involved.get("kind") != "Namespace":
        involved.setdefault("namespace", meta["namespace"])
    return ev


INGRESS_CONTROLLER = "lbcore.io/ingress-controller"  # the controller of the IngressClass lbcore
DEFAULT_CLASS_ANNOTATION = "ingressclass.kubernetes.io/is-default-class"


def default_ingress_class(obj: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of an IngressClass dict (networking.k8s.io/v1, cluster-scoped): no namespace."""
    cls = _plain(obj)
    _default_type(cls, "IngressClass")
    _default_metadata(cls, namespaced=False)
    cls.setdefault("spec", {})
    return cls


_DEFAULTS: Mapping[str, Callable[[Mapping[str, Any]], dict[str, Any]]] = MappingProxyType({
    "IngressClass": default_ingress_class,
    "Service": default_service, "Pod": default_pod, "EndpointSlice": default_endpoint_slice,
    "Endpoints": default_endpoints, "Secret": default_secret, "Ingress": default_ingress,
    "Route": default_route, "Namespace": default_namespace, "Event": default_event})


def _kind_of(obj: Any) -> str:
    """The kind of a Kubernetes-shaped dict; ValidationError when it has none lbcore knows."""
    if not isinstance(obj, Mapping):
        raise ValidationError("Object", "", [Cause("", "FieldValueInvalid",
                                                   f"Invalid value: {obj!r}: must be an object")])
    kind = obj.get("kind")
    if not kind:
        raise ValidationError("Object", _name_of(obj), [Cause(
            "kind", "FieldValueRequired", "Required value: a manifest names its kind")])
    if not isinstance(kind, str) or kind not in _DEFAULTS:
        supported = ", ".join(f'"{k}"' for k in sorted(_DEFAULTS))
        raise ValidationError(str(kind), _name_of(obj), [Cause(
            "kind", "FieldValueNotSupported",
            f'Unsupported value: "{kind}": supported values: {supported}')])
    return kind


def defaulted(obj: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of a Kubernetes-shaped dict with the defaults of its kind, as the API server
    applies them before validation.

    :raises ValidationError: no kind, or one lbcore does not know.
    """
    return _DEFAULTS[_kind_of(obj)](obj)


def parse_object(obj: Mapping[str, Any] | Object, validate: bool = True) -> Object:
    """One Kubernetes-shaped dict (or an already parsed object) as a defaulted, validated object.

    :raises ValidationError: also for a kind load balancing does not read (a Namespace)."""
    if isinstance(obj, _Stored):
        return obj  # type: ignore[return-value]
    kind = _kind_of(obj)
    if kind not in CLASSES:
        supported = ", ".join(f'"{k}"' for k in sorted(CLASSES))
        raise ValidationError(kind, _name_of(obj), [Cause(
            "kind", "FieldValueNotSupported",
            f'Unsupported value: "{kind}": supported values: {supported}')])
    return CLASSES[kind].from_dict(obj, validate=validate)


def parse_admitted(obj: Mapping[str, Any] | Object) -> Object:
    """An object a store or an API server has admitted, read without validation.

    Defaults fill what is absent; nothing is judged, so an object the server accepted is never
    refused here (lbcore's validation may be stricter than, or older than, the server's).

    :raises ValidationError: the object cannot be read at all (no kind lbcore knows, or a field
        load balancing needs of the wrong shape, such as a port without a number); its one cause
        says what was in the way.
    """
    try:
        parsed = parse_object(obj, validate=False)
    except ValidationError:
        raise
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        assert isinstance(obj, Mapping)  # parsed objects are returned as they are
        raise ValidationError(str(obj.get("kind")), _name_of(obj), [Cause(
            "", "FieldValueInvalid", f"cannot be read: {type(exc).__name__}: {exc}")]) from None
    if parsed is not obj:  # read from a dict: it knows its version, as parse_stored's do
        meta = obj.get("metadata")  # type: ignore[union-attr]
        version = meta.get("resourceVersion") if isinstance(meta, Mapping) else None
        object.__setattr__(parsed, "_version", str(version or ""))
    return parsed


def parse_stored(obj: Mapping[str, Any], text: str | None = None,
                 stored: StoredText | None = None) -> Object:
    """An object as a store holds it (admitted and defaulted when it was written), read as
    :meth:`_Stored.from_server` reads a server's: neither copied nor defaulted again; its
    ``body`` is the object's compact JSON text rather than the dict, so that what a daemon
    keeps of 100,000 pods is their fields and about 0.5 kB of text each (the dict would be
    about 5 kB). ``raw`` decodes the text when asked.

    :param text: ``obj`` as compact JSON text, when the caller has it (the store has the text
        it committed): it is kept rather than ``obj`` encoded again.
    :param stored: where the text can be read again when asked (the store that holds the
        object): the ``body``, instead of the text.

    :raises ValidationError: as :func:`parse_admitted`.
    """
    kind = _kind_of(obj)
    cls = CLASSES.get(kind)
    if cls is None:
        return parse_admitted(obj)  # the error that names the kinds there are
    try:
        parsed = cls._wrap(obj)  # type: ignore[arg-type]
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise ValidationError(kind, _name_of(obj), [Cause(
            "", "FieldValueInvalid", f"cannot be read: {type(exc).__name__}: {exc}")]) from None
    # the dataclass is frozen for its holders; this is its construction, finished
    if stored is not None:
        object.__setattr__(parsed, "body", stored)
    else:
        object.__setattr__(parsed, "body", json.dumps(obj, separators=(",", ":"))
                           if text is None else text)
    meta = obj.get("metadata")
    version = meta.get("resourceVersion") if isinstance(meta, Mapping) else None
    object.__setattr__(parsed, "_version", str(version or ""))
    return parsed


class ManifestSyntaxError(ValidationError):
    """A manifest that is not YAML (or JSON): the message names the source, line and column.

    A :class:`lbcore.ValidationError` whose one cause has the parser's words; ``source``,
    ``line`` and ``column`` (1-based, None when the parser gives none) say where.
    """

    def __init__(self, source: str, line: int | None, column: int | None, problem: str):
        where = f" line {line}, column {column}:" if line is not None else ""
        message = f"error parsing {source}:{where} {problem}"
        super().__init__("Object", "", [Cause("", "FieldValueInvalid", message)])
        self.source, self.line, self.column = source, line, column
        self.args = (message,)


def _documents(text: str, source: str = "<string>") -> Iterator[Any]:
    stripped = text.lstrip()
    if stripped.startswith(("{", "[")):
        try:
            yield json.loads(stripped)
            return
        except json.JSONDecodeError:
            pass  # YAML flow style is a superset; let YAML report the error
    try:
        yield from yaml.safe_load_all(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        problem = ": ".join(str(p) for p in (getattr(exc, "context", None),
                                            getattr(exc, "problem", None)) if p) or str(exc)
        raise ManifestSyntaxError(source, mark.line + 1 if mark else None,
                                  mark.column + 1 if mark else None, problem) from None


def _flatten(doc: Any) -> Iterator[Mapping[str, Any]]:
    if doc is None:
        return
    if isinstance(doc, list):
        for item in doc:
            yield from _flatten(item)
    elif isinstance(doc, Mapping) and str(doc.get("kind", "")).endswith("List") and "items" in doc:
        for item in doc.get("items") or []:
            yield from _flatten(item)
    else:
        yield doc


def text_documents(text: str, source: str) -> list[Any]:
    """Every document of a YAML or JSON ``text`` as written, ``kind: List`` unpacked;
    :raises ManifestSyntaxError: text that does not parse, naming ``source``, line and column."""
    return [obj for doc in _documents(text, source) for obj in _flatten(doc)]


def _read_path(path: Path) -> Iterator[Any]:
    if path.is_dir():
        for child in sorted(path.iterdir()):
            if child.suffix in (".yaml", ".yml", ".json") and child.is_file():
                yield from _read_path(child)
        return
    yield from _documents(path.read_text(encoding="utf-8"), str(path))


def _looks_like_text(source: str) -> bool:
    return "\n" in source or source.lstrip().startswith(("{", "[")) or ": " in source


def manifest_documents(
    source: str | os.PathLike[str] | bytes | Mapping[str, Any] | Iterable[Mapping[str, Any]],
) -> list[Any]:
    """Every object in ``source`` as written (not defaulted, not validated), in order.

    ``source`` is a path to a file or a directory (``*.yaml``, ``*.yml``, ``*.json``, in name
    order), a YAML or JSON string (one or several documents), a dict, or a list of dicts;
    ``kind: List`` (and ``ServiceList``, ``PodList``, ...) is unpacked.
    """
    docs: Iterable[Any]
    if isinstance(source, Mapping):
        docs = [source]
    elif isinstance(source, bytes):
        docs = _documents(source.decode("utf-8"))
    elif isinstance(source, os.PathLike):
        docs = _read_path(Path(source))
    elif isinstance(source, str):
        if not _looks_like_text(source) and Path(source).exists():
            docs = _read_path(Path(source))
        elif _looks_like_text(source):
            docs = _documents(source)
        else:
            raise FileNotFoundError(f"no such manifest file or directory: {source!r}")
    else:
        docs = list(source)
    return [obj for doc in docs for obj in _flatten(doc)]


def load_manifests(
    source: str | os.PathLike[str] | bytes | Mapping[str, Any] | Iterable[Mapping[str, Any]],
    validate: bool = True,
    field_validation: str = "Strict",
) -> list[Object]:
    """Every object in ``source`` (see :func:`manifest_documents`), defaulted and validated, in
    the order they appear. The first invalid object raises :class:`lbcore.ValidationError`
    listing all its problems; text that does not parse raises :class:`ManifestSyntaxError` (a
    ValidationError) naming the file, line and column.

    :param field_validation: fields the kind's schema does not have (a typo such as
        ``targetPrt``), as the API server's ``fieldValidation``: ``Strict`` (the default)
        refuses the object naming each one; ``Warn`` drops them with a :class:`UserWarning`;
        ``Ignore`` drops them. Without ``validate`` they are not looked for.
    """
    if field_validation not in schema.FIELD_VALIDATION:
        raise ValueError(f"field_validation: {field_validation!r} is not one of "
                         f"{', '.join(schema.FIELD_VALIDATION)}")
    docs = manifest_documents(source)
    if validate:
        docs = [_known_fields_only(obj, field_validation) for obj in docs]
    return [parse_object(obj, validate=validate) for obj in docs]


def _known_fields_only(obj: Any, field_validation: str) -> Any:
    if not isinstance(obj, Mapping):
        return obj
    kind = str(obj.get("kind", ""))
    problems = schema.unknown_fields(kind, obj)
    if not problems:
        return obj
    if field_validation == "Strict":
        raise ValidationError(kind, _name_of(obj), [
            Cause(p.path, "FieldValueDuplicate" if p.duplicate else "FieldValueUnknown",
                  "duplicate field" if p.duplicate else "unknown field") for p in problems])
    copied = copy.deepcopy(dict(obj))
    schema.drop_unknown_fields(kind, copied)
    if field_validation == "Warn":
        for p in problems:
            warnings.warn(f'{kind} "{_name_of(obj)}": {p}', UserWarning, stacklevel=3)
    return copied
