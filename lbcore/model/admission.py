"""Admission: what an API server does to an object before it stores it, in one place.

:func:`admit` takes the object a client wrote and the stored version it replaces (None on a
create) and returns the object to store:

1. **keep what was allocated**: a Service update that leaves out its ClusterIPs, IP families or
   NodePorts keeps the stored ones (the API server's ``patchAllocatedValues``), so a re-applied
   manifest keeps its addresses;
2. **defaults** of the kind (:func:`lbcore.model.objects.defaulted`);
3. **validation** (:mod:`lbcore.model.validation`), every problem at once, and the ClusterIPs of a
   Service may not change once set;
4. **allocation** of ClusterIPs (one range per IP family, dual stack as the policy asks) and
   NodePorts (TCP and UDP of one port share one, as in Kubernetes) from the
   :class:`ServiceAllocators` the caller owns;
5. **stamping**: ``uid``, ``creationTimestamp`` and ``generation`` on create, kept (generation
   counted) on update, and ``resourceVersion`` when the caller gives one.

The embedded store calls it on every write, and so does ``ServiceTable`` for embedders; what
reads objects afterwards (``ClusterState``, the CLI's tables) trusts them and only parses them
(:func:`lbcore.model.objects.parse_admitted`), as it trusts what a real API server admitted.

Allocation takes values at once, so that two writes never get the same address; the returned
:class:`Admission` then says what happens to them: :meth:`Admission.commit` once the object is
stored (frees what the previous version held and this one gave up), :meth:`Admission.undo` when
the write fails after all (gives back what this one took). A failing :func:`admit` leaves the
allocators as they were.
"""

from __future__ import annotations

import copy
import datetime as _dt
import ipaddress
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from lbcore.errors import AllocationError, Cause, ValidationError
from lbcore.model.allocators import (
    DEFAULT_NODE_PORT_RANGE,
    KUBERNETES_SERVICE_CIDR,
    ClusterIPAllocator,
    NodePortAllocator,
    service_owner,
)
from lbcore.model.kinds import kind_for
from lbcore.model.objects import check, defaulted, format_timestamp

__all__ = ["Admission", "AllocationInvalid", "ServiceAllocators", "admit", "for_subresource",
           "stamp"]


class AllocationInvalid(ValidationError, AllocationError):
    """A Service whose ClusterIP or NodePort cannot be given, as a field error of that Service.

    Both a :class:`~lbcore.errors.ValidationError` (the store answers 422 with its cause) and an
    :class:`~lbcore.errors.AllocationError` (what embedders of ``ServiceTable`` catch).
    """


def _family_of(ip: str) -> str:
    try:
        return "IPv6" if ipaddress.ip_address(ip).version == 6 else "IPv4"
    except ValueError:
        return "IPv4"  # the allocator names the bad address


class ServiceAllocators:
    """The ClusterIP ranges (at most one per IP family) and the NodePort range admission uses.

    The state lives here, in memory, with its owner; the store rebuilds it from the Services it
    keeps in SQLite when it opens (:meth:`rebuild`), as the API server's repair loops do.

    :param service_cidrs: one CIDR, a comma-separated list, or a list: at most one per family;
        a Service without ``ipFamilies`` takes the first one's family.
    :raises AllocationError: a CIDR that does not parse or holds no address, two of one family,
        a bad port range; the message starts with the parameter's name.
    """

    def __init__(self, service_cidrs: str | Sequence[str] = KUBERNETES_SERVICE_CIDR,
                 node_port_range: tuple[int, int] | str = DEFAULT_NODE_PORT_RANGE) -> None:
        cidrs = service_cidrs.split(",") if isinstance(service_cidrs, str) else service_cidrs
        self.ips: dict[str, ClusterIPAllocator] = {}
        for cidr in cidrs:
            try:
                allocator = ClusterIPAllocator(cidr.strip())
            except AllocationError as exc:
                raise AllocationError(f"service_cidr: {exc}") from None
            if allocator.family in self.ips:
                raise AllocationError(f"service_cidr: {cidr!r} is a second {allocator.family} "
                                      "range; give at most one per IP family")
            self.ips[allocator.family] = allocator
        if not self.ips:
            raise AllocationError("service_cidr: at least one CIDR is needed")
        self.primary = next(iter(self.ips))
        try:
            self.ports = NodePortAllocator(node_port_range)
        except AllocationError as exc:
            raise AllocationError(f"node_port_range: {exc}") from None

    def rebuild(self, services: Iterable[Mapping[str, Any]]) -> list[str]:
        """Forget everything, then hold every ClusterIP and NodePort of ``services``; returns one
        message per value that could not be held (out of range, or held twice)."""
        services = list(services)
        problems = [p for a in self.ips.values() for p in a.rebuild(services)]
        return problems + self.ports.rebuild(services)

    def release(self, service: Mapping[str, Any]) -> None:
        """Free everything a deleted Service held."""
        owner = service_owner(service)
        for allocator in self.ips.values():
            allocator.release_owner(owner)
        self.ports.release_owner(owner)


class Admission:
    """An admitted object (:attr:`obj`, the dict to store) and what its write allocated."""

    def __init__(self, obj: dict[str, Any], allocators: ServiceAllocators | None,
                 old: Mapping[str, Any] | None) -> None:
        self.obj = obj
        self._allocators = allocators
        self._old = old
        self._taken: list[tuple[Any, Any]] = []  # (allocator, value) this write took
        self._held: list[tuple[Any, Any]] = []  # (allocator, value) the service held already

    def take(self, allocator: Any, want: Any) -> Any:
        """``want`` (or the next free value) from ``allocator``, for this object."""
        owner = service_owner(self.obj)
        held = want is not None and allocator.in_use(want) and allocator.owner_of(want) == owner
        value = allocator.allocate(want, owner)
        (self._held if held else self._taken).append((allocator, value))
        return value

    def undo(self) -> None:
        """The write did not happen: give back what it took."""
        for allocator, value in self._taken:
            allocator.release(value)
        self._taken.clear()

    def commit(self) -> None:
        """The object is stored: free what the previous version held and this one does not."""
        allocators, old = self._allocators, self._old
        if allocators is None or old is None or old.get("kind") != "Service":
            return
        keep = {(id(a), v) for a, v in self._held + self._taken}
        owner = service_owner(old)
        spec = old.get("spec") or {}
        for ip in spec.get("clusterIPs") or []:
            allocator = allocators.ips.get(_family_of(ip)) if ip != "None" else None
            if allocator is not None and (id(allocator), ip) not in keep \
                    and allocator.owner_of(ip) == owner:
                allocator.release(ip)
        for port in spec.get("ports") or []:
            node_port = port.get("nodePort")
            if node_port and (id(allocators.ports), node_port) not in keep \
                    and allocators.ports.owner_of(node_port) == owner:
                allocators.ports.release(node_port)


def admit(new: Mapping[str, Any], old: Mapping[str, Any] | None,
          allocators: ServiceAllocators | None, *, now: _dt.datetime | None = None,
          resource_version: str | None = None) -> Admission:
    """``new`` admitted as the next version of ``old`` (None: a create); see the module.

    :param allocators: where Services take ClusterIPs and NodePorts; None takes Services as
        given (their addresses were allocated elsewhere).
    :param now: the creation time stamped on a create (default: now).
    :param resource_version: set as ``metadata.resourceVersion`` when given.
    :raises ValidationError: every problem of the object, or a changed ClusterIP.
    :raises AllocationInvalid: a ClusterIP or NodePort that cannot be given (nothing is held).
    """
    body = new
    if old is not None and body.get("kind") == "Service":
        kept = copy.deepcopy(dict(new))
        keep_allocated(kept, old)
        body = kept
    obj = defaulted(body)  # a copy: nothing below changes ``new``
    check(obj)
    if old is not None and obj["kind"] == "Service":
        _check_immutable(obj, old)
    admission = Admission(obj, allocators, old)
    if allocators is not None and obj["kind"] == "Service":
        try:
            _allocate(obj, allocators, admission)
        except AllocationInvalid:
            admission.undo()
            raise
    stamp(obj, old, now or _dt.datetime.now(_dt.UTC), resource_version)
    return admission


# --- the status subresource ------------------------------------------------------------------


def for_subresource(new: Mapping[str, Any], old: Mapping[str, Any],
                    subresource: str | None) -> dict[str, Any]:
    """What a write of ``new`` over ``old`` stands for, as the API server's update strategies
    take it, for a kind with a ``status`` subresource (Service, Pod):

    - the main resource (``subresource`` None) keeps the stored ``status``;
    - ``status`` keeps everything stored but the ``status`` (spec, labels, annotations), and
      takes ``metadata.resourceVersion`` and ``uid`` from ``new`` as preconditions.

    Kinds without the subresource are written as given. The result shares values with ``new``
    and ``old`` below its top and its ``metadata``: it is for :func:`admit`, which copies.

    :raises LookupError: a subresource the kind does not have.
    """
    kind = str(old.get("kind") or "")
    served = kind_for(kind).subresources
    if subresource is not None and subresource not in served:
        raise LookupError(f"the server could not find the requested resource "
                          f"({kind_for(kind).plural}/{subresource})")
    if "status" not in served:
        return dict(new)
    if subresource is None:
        result = dict(new)
        if "status" in old:
            result["status"] = old["status"]
        else:
            result.pop("status", None)
        return result
    result = dict(old)
    if "status" in new:
        result["status"] = new["status"]
    else:
        result.pop("status", None)
    given: Mapping[str, Any] = new.get("metadata") or {}
    if not isinstance(given, Mapping):
        given = {}
    meta = result["metadata"] = dict(old["metadata"])
    meta.pop("resourceVersion", None)
    for key in ("resourceVersion", "uid"):
        if given.get(key):
            meta[key] = given[key]
    return result


# --- keep what was allocated, immutability ---------------------------------------------------


def keep_allocated(svc: dict[str, Any], old: Mapping[str, Any]) -> None:
    """Carry ClusterIPs, IP families and NodePorts over from ``old`` where an update of a
    Service leaves them out (in place)."""
    spec = svc.setdefault("spec", {})
    old_spec = old.get("spec") or {}
    if not isinstance(spec, dict):
        return  # validation names it
    if spec.get("type", "ClusterIP") != "ExternalName":
        if not spec.get("clusterIP") and old_spec.get("clusterIP"):
            spec["clusterIP"] = old_spec["clusterIP"]
        if not spec.get("clusterIPs") and old_spec.get("clusterIPs"):
            if spec.get("clusterIP") in (None, old_spec.get("clusterIP")):
                spec["clusterIPs"] = list(old_spec["clusterIPs"])
        for key in ("ipFamilies", "ipFamilyPolicy"):
            if not spec.get(key) and old_spec.get(key):
                spec[key] = copy.deepcopy(old_spec[key])
    if spec.get("type") in ("NodePort", "LoadBalancer"):
        held = {(p.get("protocol", "TCP"), p.get("port")): p.get("nodePort")
                for p in old_spec.get("ports") or [] if isinstance(p, Mapping)}
        for port in spec.get("ports") or []:
            if isinstance(port, dict) and not port.get("nodePort"):
                node_port = held.get((port.get("protocol", "TCP"), port.get("port")))
                if node_port:
                    port["nodePort"] = node_port


def _check_immutable(svc: Mapping[str, Any], old: Mapping[str, Any]) -> None:
    """A Service keeps its ClusterIPs for life, unless it becomes an ExternalName."""
    spec, old_spec = svc.get("spec") or {}, old.get("spec") or {}
    if spec.get("type") == "ExternalName" or not old_spec.get("clusterIPs"):
        return
    old_ips, new_ips = old_spec["clusterIPs"], spec.get("clusterIPs") or []
    causes = [
        Cause(f"spec.clusterIPs[{i}]", "FieldValueInvalid",
              f'Invalid value: "{ip}": may not change once set (was "{old_ips[i]}")')
        for i, ip in enumerate(new_ips[: len(old_ips)]) if ip != old_ips[i]
    ]
    if causes:
        raise ValidationError("Service", svc["metadata"].get("name", ""), causes)


# --- allocation ------------------------------------------------------------------------------


def _invalid(svc: Mapping[str, Any], path: str, message: str) -> AllocationInvalid:
    return AllocationInvalid("Service", svc["metadata"].get("name", ""),
                             [Cause(path, "FieldValueInvalid", message)])


def _allocate(svc: dict[str, Any], allocators: ServiceAllocators, admission: Admission) -> None:
    spec = svc["spec"]
    if spec.get("type") != "ExternalName":
        _cluster_ips(svc, allocators, admission)
    stype = spec.get("type")
    if stype == "NodePort" or (
            stype == "LoadBalancer" and spec.get("allocateLoadBalancerNodePorts", True)):
        _node_ports(svc, allocators, admission)


def _cluster_ips(svc: dict[str, Any], allocators: ServiceAllocators,
                 admission: Admission) -> None:
    spec = svc["spec"]
    requested = list(spec.get("clusterIPs") or [])
    if requested == ["None"]:
        return  # headless
    policy = spec.get("ipFamilyPolicy") or "SingleStack"
    families = list(spec.get("ipFamilies") or [])
    if not families:
        families = [_family_of(ip) for ip in requested] or [allocators.primary]
    if policy in ("PreferDualStack", "RequireDualStack"):
        families += [f for f in allocators.ips if f not in families]
        if policy == "RequireDualStack" and len(families) < 2:
            raise _invalid(svc, "spec.ipFamilyPolicy",
                           'Invalid value: "RequireDualStack": one service CIDR only is configured')
    else:
        families = families[:1]
    ips = []
    for i, family in enumerate(families):
        allocator = allocators.ips.get(family)
        if allocator is None:
            raise _invalid(svc, f"spec.ipFamilies[{i}]", f'Invalid value: "{family}": '
                           "no service CIDR of this family is configured")
        want = requested[i] if i < len(requested) else None
        problem = _ip_problem(allocator, want, service_owner(svc))
        if problem is not None:
            raise _invalid(svc, "spec.clusterIPs",
                           f"Invalid value: {_go_strings(requested)}: {problem}")
        try:
            ips.append(admission.take(allocator, want))
        except AllocationError as exc:  # what the checks above did not foresee
            raise _invalid(svc, "spec.clusterIPs",
                           f"Invalid value: {_go_strings(requested)}: {exc}") from None
    spec.update(clusterIPs=ips, clusterIP=ips[0], ipFamilies=families, ipFamilyPolicy=policy)


def _go_strings(values: list[str]) -> str:
    """A list of strings as the API server prints a field's value: ``[]string{"a", "b"}``."""
    return "[]string{" + ", ".join(f'"{v}"' for v in values) + "}"


def _ip_problem(allocator: ClusterIPAllocator, want: str | None, owner: str) -> str | None:
    """Why ``want`` cannot be given, in the API server's words (None: it can)."""
    if not want:
        if allocator.free == 0:
            return "failed to allocate a serviceIP: range is full"
        return None
    if not allocator.contains(want):
        return (f"failed to allocate IP {want}: the provided IP ({want}) is not in the valid "
                f"range. The range of valid IPs is {allocator.network}")
    if allocator.in_use(want) and allocator.owner_of(want) != owner:
        return f"failed to allocate IP {want}: provided IP is already allocated"
    return None


def _node_ports(svc: dict[str, Any], allocators: ServiceAllocators,
                admission: Admission) -> None:
    ports = svc["spec"].get("ports") or []
    for i, port in enumerate(ports):
        want = port.get("nodePort") or next(
            # TCP and UDP of one port share one node port, as Kubernetes gives them
            (q["nodePort"] for q in ports if q.get("port") == port.get("port") and q.get("nodePort")),
            None)
        problem = _port_problem(allocators.ports, want, service_owner(svc))
        if problem is not None:
            raise _invalid(svc, f"spec.ports[{i}].nodePort", f"Invalid value: {want or 0}: {problem}")
        try:
            port["nodePort"] = admission.take(allocators.ports, want)
        except AllocationError as exc:  # what the checks above did not foresee
            raise _invalid(svc, f"spec.ports[{i}].nodePort",
                           f"Invalid value: {want or 0}: {exc}") from None


def _port_problem(allocator: NodePortAllocator, want: int | None, owner: str) -> str | None:
    """Why node port ``want`` cannot be given, in the API server's words (None: it can)."""
    if not want:
        return "failed to allocate a nodePort: range is full" if allocator.free == 0 else None
    if not allocator.contains(want):
        return ("provided port is not in the valid range. "
                f"The range of valid ports is {allocator.range_text}")
    if allocator.in_use(want) and allocator.owner_of(want) != owner:
        return "provided port is already allocated"
    return None


# --- stamping --------------------------------------------------------------------------------

_SYSTEM_ONLY = ("deletionTimestamp", "deletionGracePeriodSeconds", "selfLink")


def _body_changed(old: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    """Whether anything but metadata and status differs (what bumps metadata.generation)."""
    keys = (set(old) | set(new)) - {"metadata", "status", "apiVersion", "kind"}
    return any(old.get(k) != new.get(k) for k in keys)


def stamp(obj: dict[str, Any], old: Mapping[str, Any] | None, now: _dt.datetime,
          resource_version: str | None = None) -> None:
    """Set what the API server sets (in place): on create a new ``uid``, ``creationTimestamp``
    ``now`` and ``generation`` 1 (and no deletion fields); on update the stored ``uid`` and
    ``creationTimestamp``, and ``generation`` + 1 when more than metadata and status changed."""
    meta = obj["metadata"]
    if old is None:
        meta.update(uid=str(uuid.uuid4()), creationTimestamp=format_timestamp(now), generation=1)
        for key in _SYSTEM_ONLY:
            meta.pop(key, None)
    else:
        old_meta = old.get("metadata") or {}
        generation = int(old_meta.get("generation") or 1)
        meta.update(
            uid=old_meta.get("uid") or str(uuid.uuid4()),
            creationTimestamp=old_meta.get("creationTimestamp") or format_timestamp(now),
            generation=generation + 1 if _body_changed(old, obj) else generation,
        )
    if resource_version is not None:
        meta["resourceVersion"] = resource_version
