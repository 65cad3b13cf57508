"""What frontends see: an immutable view of every proxied service port and its endpoints, and
of the Routes, Ingresses and Secrets the routing table (:mod:`lbcore.model.routes`) is built from.

The runtime builds one ``Snapshot`` per sync from the service model and hands it to every
frontend with the set of services that changed since the previous sync. Frontends never read
a source or the store; this is their whole input.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the objects module does not import this one; only types are needed here
    from lbcore.model.objects import Ingress, Route, Secret

_NONE: Mapping[str, Any] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class EndpointInfo:
    """One backend of one service port: a pod address and the resolved target port."""

    ip: str
    port: int
    ready: bool = True
    serving: bool = True
    terminating: bool = False
    node_name: str | None = None
    zone: str | None = None
    weight: int = 1
    # "namespace/name" of the pod (or of the target ref), when known
    target: str | None = None

    @property
    def address(self) -> str:
        """``ip:port``, with brackets for IPv6."""
        return f"[{self.ip}]:{self.port}" if ":" in self.ip else f"{self.ip}:{self.port}"


@dataclass(frozen=True, slots=True)
class ServicePortInfo:
    """One port of one proxied service: what a frontend listens on and where it forwards."""

    namespace: str
    name: str
    port_name: str  # "" for an unnamed port
    protocol: str  # "TCP" | "UDP" | "SCTP"
    port: int
    cluster_ips: tuple[str, ...]
    endpoints: tuple[EndpointInfo, ...] = ()
    type: str = "ClusterIP"  # ClusterIP | NodePort | LoadBalancer
    node_port: int | None = None
    session_affinity: str = "None"  # "None" | "ClientIP"
    affinity_timeout: int = 10800  # seconds, for ClientIP
    external_traffic_policy: str = "Cluster"
    internal_traffic_policy: str = "Cluster"
    external_ips: tuple[str, ...] = ()
    load_balancer_ips: tuple[str, ...] = ()

    @property
    def service(self) -> str:
        """``namespace/name`` of the service, the unit of ``changed`` sets."""
        return f"{self.namespace}/{self.name}"

    @property
    def key(self) -> str:
        """``namespace/name:port_name``, kube-proxy's ServicePortName."""
        return f"{self.namespace}/{self.name}:{self.port_name}"


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Every proxied service port at one point, with the node it runs on."""

    version: int = 0
    service_ports: Mapping[str, ServicePortInfo] = field(
        default_factory=lambda: MappingProxyType({})
    )
    node_name: str = "localhost"
    node_addresses: tuple[str, ...] = ()
    # "namespace/name" -> the object, for the routing table (lbcore.model.routes)
    routes: Mapping[str, Route] = field(default_factory=lambda: _NONE)
    ingresses: Mapping[str, Ingress] = field(default_factory=lambda: _NONE)
    secrets: Mapping[str, Secret] = field(default_factory=lambda: _NONE, repr=False)
    # "namespace/name" -> its ports in ``service_ports``, so that what one service asks costs
    # the same with 10 services or 10,000; None (a snapshot made by hand): looked up by a scan
    by_service: Mapping[str, tuple[ServicePortInfo, ...]] | None = field(
        default=None, repr=False, compare=False)

    def ports_of(self, service: str) -> list[ServicePortInfo]:
        """The ports of service ``namespace/name`` (empty when it is gone or headless)."""
        if self.by_service is not None:
            return list(self.by_service.get(service, ()))
        return [sp for sp in self.service_ports.values() if sp.service == service]

    @property
    def services(self) -> frozenset[str]:
        """Every ``namespace/name`` that has at least one proxied port."""
        if self.by_service is not None:
            return frozenset(self.by_service)
        return frozenset(sp.service for sp in self.service_ports.values())
