"""lbcore: Kubernetes-style service load balancing for Python.

A label selector picks a set of pods, a service gets a stable virtual address and ports, and each
connection is sent to one ready pod. The compiled core (selectors, balancers, connection tracking)
is embeddable on its own; the runtime adds a store, a daemon, plugins and frontends.

Public names are imported on first use (PEP 562), so ``import lbcore`` stays cheap and a proxy
that only needs the core never loads the runtime.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS: dict[str, str] = {
    # selectors (compiled)
    "parse_selector": "lbcore.core._selectors",
    "selector_from_map": "lbcore.core._selectors",
    "selector_from_label_selector": "lbcore.core._selectors",
    "Selector": "lbcore.core._selectors",
    "SelectorIndex": "lbcore.core._selectors",
    "SelectorError": "lbcore.errors",
    # hashing and balancers (compiled)
    "hash64": "lbcore.core._hashing",
    "balancers": "lbcore.balancers",
    # connection tracking (compiled)
    "ConnTable": "lbcore.core._conntrack",
    "AffinityTable": "lbcore.core._conntrack",
    "Picker": "lbcore.model.picker",
    "NO_ENDPOINTS": "lbcore.model.picker",
    # service model
    "load_manifests": "lbcore.model.objects",
    "Service": "lbcore.model.objects",
    "Pod": "lbcore.model.objects",
    "EndpointSlice": "lbcore.model.objects",
    "Endpoints": "lbcore.model.objects",
    "ValidationError": "lbcore.errors",
    "AllocationError": "lbcore.errors",
    "ClusterIPAllocator": "lbcore.model.allocators",
    "NodePortAllocator": "lbcore.model.allocators",
    "ServiceTable": "lbcore.model.service_table",
    # the registry of kinds (kind, plural, short names, group/version)
    "Kind": "lbcore.model.kinds",
    "KINDS": "lbcore.model.kinds",
    "kind_for": "lbcore.model.kinds",
    "UnknownKind": "lbcore.model.kinds",
    # frontends' view of the state
    "Snapshot": "lbcore.model.snapshot",
    "ServicePortInfo": "lbcore.model.snapshot",
    "EndpointInfo": "lbcore.model.snapshot",
    # which endpoints take new connections (kube-proxy's CategorizeEndpoints)
    # the routing table of Routes and Ingresses (the route frontend's whole input)
    "routing_table": "lbcore.model.routes",
    "RoutingTable": "lbcore.model.routes",
    "VirtualHost": "lbcore.model.routes",
    "PathRule": "lbcore.model.routes",
    "WeightedBackend": "lbcore.model.routes",
    "Certificate": "lbcore.model.routes",
    "Route": "lbcore.model.objects",
    "Ingress": "lbcore.model.objects",
    "Secret": "lbcore.model.objects",
    "takes_new_connections": "lbcore.model.topology",
    "endpoints_for": "lbcore.model.topology",
    "policy_is_local": "lbcore.model.topology",
    "Traffic": "lbcore.model.topology",
    # plugins: the hook marker and the interfaces sources and frontends implement
    "hookimpl": "lbcore.hookspecs",
    "Source": "lbcore.runtime.interfaces",
    "SourceSink": "lbcore.runtime.interfaces",
    "Frontend": "lbcore.runtime.interfaces",
    "FrontendUnavailable": "lbcore.runtime.interfaces",
    "RuntimeContext": "lbcore.runtime.interfaces",
    # live pickers for embedding: follow a cluster's (or the store's) services
    "connect": "lbcore.runtime.live",
    "LiveCluster": "lbcore.runtime.live",
    "LivePicker": "lbcore.runtime.live",
    "ServiceNotFound": "lbcore.runtime.live",
    "ServiceGone": "lbcore.runtime.live",
    "SourceNotReady": "lbcore.runtime.live",
    "ConfigError": "lbcore.errors",
    "LbcoreError": "lbcore.errors",
    # a plugin's options, checked as the daemon's own config is
    "read_options": "lbcore.runtime.config",
    "option": "lbcore.runtime.config",
    # process limits a daemon and its frontends share
    "raise_open_files_limit": "lbcore.runtime.admin_server",
}

# public names that are whole modules
_MODULES = {"balancers"}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'lbcore' has no attribute {name!r}")
    mod = importlib.import_module(module)
    value = mod if name in _MODULES else getattr(mod, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:  # pragma: no cover - static view of the lazy names
    from lbcore import balancers as balancers
    from lbcore.core._conntrack import AffinityTable as AffinityTable
    from lbcore.core._conntrack import ConnTable as ConnTable
    from lbcore.core._hashing import hash64 as hash64
    from lbcore.core._selectors import Selector as Selector
    from lbcore.core._selectors import SelectorIndex as SelectorIndex
    from lbcore.core._selectors import parse_selector as parse_selector
    from lbcore.core._selectors import selector_from_label_selector as selector_from_label_selector
    from lbcore.core._selectors import selector_from_map as selector_from_map
    from lbcore.errors import AllocationError as AllocationError
    from lbcore.errors import ConfigError as ConfigError
    from lbcore.errors import LbcoreError as LbcoreError
    from lbcore.errors import SelectorError as SelectorError
    from lbcore.errors import ValidationError as ValidationError
    from lbcore.hookspecs import hookimpl as hookimpl
    from lbcore.model.allocators import ClusterIPAllocator as ClusterIPAllocator
    from lbcore.model.allocators import NodePortAllocator as NodePortAllocator
    from lbcore.model.kinds import KINDS as KINDS
    from lbcore.model.kinds import Kind as Kind
    from lbcore.model.kinds import UnknownKind as UnknownKind
    from lbcore.model.kinds import kind_for as kind_for
    from lbcore.model.objects import Endpoints as Endpoints
    from lbcore.model.objects import EndpointSlice as EndpointSlice
    from lbcore.model.objects import Ingress as Ingress
    from lbcore.model.objects import Pod as Pod
    from lbcore.model.objects import Route as Route
    from lbcore.model.objects import Secret as Secret
    from lbcore.model.objects import Service as Service
    from lbcore.model.objects import load_manifests as load_manifests
    from lbcore.model.picker import NO_ENDPOINTS as NO_ENDPOINTS
    from lbcore.model.picker import Picker as Picker
    from lbcore.model.routes import Certificate as Certificate
    from lbcore.model.routes import PathRule as PathRule
    from lbcore.model.routes import RoutingTable as RoutingTable
    from lbcore.model.routes import VirtualHost as VirtualHost
    from lbcore.model.routes import WeightedBackend as WeightedBackend
    from lbcore.model.routes import routing_table as routing_table
    from lbcore.model.service_table import ServiceTable as ServiceTable
    from lbcore.model.snapshot import EndpointInfo as EndpointInfo
    from lbcore.model.snapshot import ServicePortInfo as ServicePortInfo
    from lbcore.model.snapshot import Snapshot as Snapshot
    from lbcore.model.topology import Traffic as Traffic
    from lbcore.model.topology import endpoints_for as endpoints_for
    from lbcore.model.topology import policy_is_local as policy_is_local
    from lbcore.model.topology import takes_new_connections as takes_new_connections
    from lbcore.runtime.admin_server import raise_open_files_limit as raise_open_files_limit
    from lbcore.runtime.config import option as option
    from lbcore.runtime.config import read_options as read_options
    from lbcore.runtime.interfaces import Frontend as Frontend
    from lbcore.runtime.interfaces import FrontendUnavailable as FrontendUnavailable
    from lbcore.runtime.interfaces import RuntimeContext as RuntimeContext
    from lbcore.runtime.interfaces import Source as Source
    from lbcore.runtime.interfaces import SourceSink as SourceSink
    from lbcore.runtime.live import LiveCluster as LiveCluster
    from lbcore.runtime.live import LivePicker as LivePicker
    from lbcore.runtime.live import ServiceGone as ServiceGone
    from lbcore.runtime.live import ServiceNotFound as ServiceNotFound
    from lbcore.runtime.live import SourceNotReady as SourceNotReady
    from lbcore.runtime.live import connect as connect
