"""The kinds lbcore knows, once: name, plural, short names, group and version.

Every part that names a kind asks this registry: the store (which kinds it keeps, under which
``apiVersion``), the admin API (URLs and discovery), the CLI and its client (``lbcore get svc``),
the model (defaults and ``ServiceTable``'s lookups), ``ClusterState`` and the sources. A kind is
found by any of the names kubectl accepts for it (kind, singular, plural, short names), in any
case, as ``kubectl get`` finds it. The short names are kubectl's (``kubectl api-resources``):
``svc``, ``po``, ``ep``, ``ing``; EndpointSlices, Secrets and Routes have none.

:data:`KINDS` are the kinds load balancing reads (the model parses them, ``ClusterState`` and
the sources follow them); :data:`ALL_KINDS` adds the kinds the store and the admin API also keep
as a cluster does, without load balancing reading them: ``Namespace`` (cluster-scoped) and
``Event``.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from lbcore.errors import LbcoreError

__all__ = ["ALL_KINDS", "KINDS", "Kind", "UnknownKind", "find_kind", "kind_for"]


class UnknownKind(LbcoreError, ValueError):
    """A name that is no kind lbcore knows."""

    def __init__(self, name: str):
        self.name = name
        known = ", ".join(k.kind for k in ALL_KINDS)
        super().__init__(f"unknown kind {name!r}: known kinds are {known}")


@dataclass(frozen=True, slots=True)
class Kind:
    """One kind of object, with the names and the REST location the Kubernetes API gives it."""

    kind: str  # "Service"
    plural: str  # "services": the REST resource
    short_names: tuple[str, ...]  # kubectl's: "svc"
    group: str  # "" for the core group
    version: str  # "v1"
    namespaced: bool = True
    categories: tuple[str, ...] = ()  # kubectl's groupings: "all" (kubectl get all)
    # the subresources served under an object's path besides itself (``status``)
    subresources: tuple[str, ...] = ()

    @property
    def singular(self) -> str:
        """The resource's singular name (``service``; ``endpoints`` stays plural, as in kubectl)."""
        return self.kind.lower()

    @property
    def api_version(self) -> str:
        """``v1`` or ``discovery.k8s.io/v1``: what objects of this kind carry."""
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def api_prefix(self) -> str:
        """``/api/v1`` for the core group, ``/apis/{group}/{version}`` for the others."""
        return f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"

    @property
    def names(self) -> tuple[str, ...]:
        """Every name the kind is found by (lower case): singular, plural, short names."""
        return tuple(dict.fromkeys((self.singular, self.plural, *self.short_names)))

    def path(self, namespace: str | None = None, name: str | None = None) -> str:
        """The REST path of the collection (in ``namespace``, or all) or of one object."""
        base = self.api_prefix
        if namespace is not None and self.namespaced:
            base += f"/namespaces/{urllib.parse.quote(namespace, safe='')}"
        base += f"/{self.plural}"
        if name is not None:
            base += f"/{urllib.parse.quote(name, safe='')}"
        return base


KINDS: tuple[Kind, ...] = (
    Kind("Service", "services", ("svc",), "", "v1", categories=("all",),
         subresources=("status",)),
    Kind("Pod", "pods", ("po",), "", "v1", categories=("all",), subresources=("status",)),
    Kind("Endpoints", "endpoints", ("ep",), "", "v1"),
    Kind("EndpointSlice", "endpointslices", (), "discovery.k8s.io", "v1"),
    Kind("Secret", "secrets", (), "", "v1"),
    Kind("Ingress", "ingresses", ("ing",), "networking.k8s.io", "v1"),
    Kind("Route", "routes", (), "route.openshift.io", "v1"),
)
ALL_KINDS: tuple[Kind, ...] = (
    *KINDS,
    Kind("Namespace", "namespaces", ("ns",), "", "v1", namespaced=False),
    Kind("Event", "events", ("ev",), "", "v1"),
    Kind("IngressClass", "ingressclasses", (), "networking.k8s.io", "v1", namespaced=False),
)

_BY_NAME: Mapping[str, Kind] = MappingProxyType(
    {name: k for k in ALL_KINDS for name in k.names})


# every name find_kind has found a kind by, as given (a finite set: the names above in any
# case, qualified or not): every write asks for its kind several times
_FOUND: dict[str, Kind] = {}


def find_kind(name: str) -> Kind | None:
    """The kind called ``name`` (``Service``, ``service``, ``services``, ``svc``; also qualified
    by its group or version and group, ``endpointslices.discovery.k8s.io``), or None."""
    if not isinstance(name, str):
        return None
    found = _FOUND.get(name)
    if found is not None:
        return found
    base, _, qualifier = name.lower().partition(".")
    found = _BY_NAME.get(base)
    if found is None or qualifier not in ("", found.group, f"{found.version}.{found.group}".rstrip(".")):
        return None
    if len(_FOUND) < 4096:  # the case variants of a name are many; what is kept stays bounded
        _FOUND[name] = found
    return found


def kind_for(name: str) -> Kind:
    """The kind called ``name``; :raises UnknownKind: no kind has that name."""
    found = find_kind(name)
    if found is None:
        raise UnknownKind(name)
    return found
