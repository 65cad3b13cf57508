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
    "parse_selector": "lbcore._selectors",
    "selector_from_map": "lbcore._selectors",
    "selector_from_label_selector": "lbcore._selectors",
    "Selector": "lbcore._selectors",
    "SelectorIndex": "lbcore._selectors",
    "SelectorError": "lbcore.errors",
    # hashing and balancers (compiled)
    "hash64": "lbcore._hashing",
    "balancers": "lbcore.balancers",
    # connection tracking (compiled)
    "ConnTable": "lbcore._conntrack",
    "AffinityTable": "lbcore._conntrack",
    "Picker": "lbcore.picker",
    "NO_ENDPOINTS": "lbcore.picker",
    # service model
    "load_manifests": "lbcore.model",
    "Service": "lbcore.model",
    "Pod": "lbcore.model",
    "EndpointSlice": "lbcore.model",
    "Endpoints": "lbcore.model",
    "ValidationError": "lbcore.errors",
    "AllocationError": "lbcore.errors",
    "ClusterIPAllocator": "lbcore.allocators",
    "NodePortAllocator": "lbcore.allocators",
    "ServiceTable": "lbcore.service_table",
    # frontends' view of the state
    "Snapshot": "lbcore.snapshot",
    "ServicePortInfo": "lbcore.snapshot",
    "EndpointInfo": "lbcore.snapshot",
    # plugins
    "hookimpl": "lbcore.hookspecs",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'lbcore' has no attribute {name!r}")
    mod = importlib.import_module(module)
    value = mod if module == f"lbcore.{name}" else getattr(mod, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:  # pragma: no cover - static view of the lazy names
    from lbcore import balancers as balancers
    from lbcore._conntrack import AffinityTable as AffinityTable
    from lbcore._conntrack import ConnTable as ConnTable
    from lbcore._hashing import hash64 as hash64
    from lbcore._selectors import Selector as Selector
    from lbcore._selectors import SelectorIndex as SelectorIndex
    from lbcore._selectors import parse_selector as parse_selector
    from lbcore._selectors import selector_from_label_selector as selector_from_label_selector
    from lbcore._selectors import selector_from_map as selector_from_map
    from lbcore.allocators import ClusterIPAllocator as ClusterIPAllocator
    from lbcore.allocators import NodePortAllocator as NodePortAllocator
    from lbcore.errors import AllocationError as AllocationError
    from lbcore.errors import SelectorError as SelectorError
    from lbcore.errors import ValidationError as ValidationError
    from lbcore.hookspecs import hookimpl as hookimpl
    from lbcore.model import Endpoints as Endpoints
    from lbcore.model import EndpointSlice as EndpointSlice
    from lbcore.model import Pod as Pod
    from lbcore.model import Service as Service
    from lbcore.model import load_manifests as load_manifests
    from lbcore.picker import NO_ENDPOINTS as NO_ENDPOINTS
    from lbcore.picker import Picker as Picker
    from lbcore.service_table import ServiceTable as ServiceTable
    from lbcore.snapshot import EndpointInfo as EndpointInfo
    from lbcore.snapshot import ServicePortInfo as ServicePortInfo
    from lbcore.snapshot import Snapshot as Snapshot
