"""ClusterIP and NodePort allocation, as the Kubernetes API server does it for Services.

Both allocators hand out values **sequentially**: each allocation takes the next free value after
the previous one, wrapping around at the end of the range. Released values are therefore reused
last, which keeps a freed address from going to a new service while clients may still hold it,
and makes allocation deterministic (the same sequence of creates always gives the same
addresses). A requested value is honoured when it is in range and free.

An allocator remembers the owner (``namespace/name``) of each value: a service may ask again for
a node port it already holds (one node port serves both TCP and UDP of the same service port,
as Kubernetes allows), another service may not. ``rebuild(services)`` recomputes the state from
stored services after a restart, as the API server's repair loops do.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from typing import Any

from lbcore.errors import AllocationError

__all__ = [
    "DEFAULT_NODE_PORT_RANGE",
    "KUBERNETES_SERVICE_CIDR",
    "ClusterIPAllocator",
    "NodePortAllocator",
    "parse_port_range",
]

# kubeadm's default service CIDR: where an embedded table gives addresses unless told otherwise
# (the daemon's default is a loopback range, lbcore.runtime.config.LOOPBACK_SERVICE_CIDR)
KUBERNETES_SERVICE_CIDR = "10.96.0.0/12"
DEFAULT_NODE_PORT_RANGE = (30000, 32767)  # the API server's --service-node-port-range


def _spec_of(service: Any) -> tuple[str, Mapping[str, Any]]:
    """(``namespace/name``, spec dict) of a Service object or a Service dict."""
    raw = getattr(service, "raw", service)
    meta = raw.get("metadata") or {}
    owner = f"{meta.get('namespace') or 'default'}/{meta.get('name', '')}"
    return owner, raw.get("spec") or {}


class _Sequential:
    """Integers ``first..last`` handed out in order from a cursor, with an owner each."""

    def __init__(self, first: int, last: int) -> None:
        self.first, self.last = first, last
        self._owners: dict[int, str | None] = {}
        self._cursor = first

    @property
    def size(self) -> int:
        return self.last - self.first + 1

    def take_next(self, owner: str | None) -> int | None:
        if len(self._owners) >= self.size:
            return None
        value = self._cursor
        # at most `size` steps; the check above guarantees a free value exists
        while value in self._owners:
            value = self.first if value >= self.last else value + 1
        self._owners[value] = owner
        self._cursor = self.first if value >= self.last else value + 1
        return value


class ClusterIPAllocator:
    """Virtual IPs for services from one service CIDR (IPv4 or IPv6).

    The network address is never given, nor the broadcast address of an IPv4 range.
    """

    def __init__(self, cidr: str = KUBERNETES_SERVICE_CIDR) -> None:
        try:
            self.network = ipaddress.ip_network(cidr, strict=False)
        except ValueError as exc:
            raise AllocationError(f"service CIDR {cidr!r} is not a valid CIDR: {exc}") from None
        first = int(self.network.network_address) + 1
        last = int(self.network.broadcast_address) - (1 if self.network.version == 4 else 0)
        if last < first:
            raise AllocationError(f"service CIDR {self.network} has no address to allocate")
        self._range = _Sequential(first, last)

    @property
    def family(self) -> str:
        """``IPv4`` or ``IPv6``."""
        return "IPv6" if self.network.version == 6 else "IPv4"

    @property
    def size(self) -> int:
        """How many addresses the range can give."""
        return self._range.size

    @property
    def free(self) -> int:
        """How many addresses are left."""
        return self._range.size - len(self._range._owners)

    def _address(self, value: int) -> str:
        return str(ipaddress.ip_address(value) if self.network.version == 4
                   else ipaddress.IPv6Address(value))

    def _number(self, ip: str) -> int:
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            raise AllocationError(f"ClusterIP {ip!r} is not a valid IP address") from None
        if addr.version != self.network.version or addr not in self.network:
            raise AllocationError(
                f"ClusterIP {ip} is not in the service CIDR {self.network}")
        value = int(addr)
        if not self._range.first <= value <= self._range.last:
            what = "network" if value < self._range.first else "broadcast"
            raise AllocationError(
                f"ClusterIP {ip} is the {what} address of the service CIDR {self.network}")
        return value

    def contains(self, ip: str) -> bool:
        """True when ``ip`` is an address this allocator could give."""
        try:
            self._number(ip)
        except AllocationError:
            return False
        return True

    def owner_of(self, ip: str) -> str | None:
        """Who holds ``ip`` (``namespace/name``, or None when it is free or has no owner)."""
        try:
            return self._range._owners.get(self._number(ip))
        except AllocationError:
            return None

    def in_use(self, ip: str) -> bool:
        """True when ``ip`` is allocated."""
        try:
            return self._number(ip) in self._range._owners
        except AllocationError:
            return False

    def allocate(self, requested: str | None = None, owner: str | None = None) -> str:
        """Give ``requested`` (when in range and free) or the next free address.

        :raises AllocationError: requested address out of range or in use; no address left.
        """
        owners = self._range._owners
        if requested:
            value = self._number(requested)
            held = owners.get(value, False)
            if held is not False and (owner is None or held != owner):
                by = f" by {held}" if held else ""
                raise AllocationError(
                    f"ClusterIP {requested} is already allocated{by} in {self.network}")
            owners[value] = owner
            return self._address(value)
        value_or_none = self._range.take_next(owner)
        if value_or_none is None:
            raise AllocationError(
                f"no ClusterIP left in the service CIDR {self.network}"
                f" (all {self.size} addresses are allocated)")
        return self._address(value_or_none)

    def release(self, ip: str) -> bool:
        """Free ``ip``; False when it was not allocated (or not in range)."""
        try:
            return self._range._owners.pop(self._number(ip), False) is not False
        except AllocationError:
            return False

    def release_owner(self, owner: str) -> list[str]:
        """Free every address held by ``owner``; returns them."""
        values = [v for v, o in self._range._owners.items() if o == owner]
        for v in values:
            del self._range._owners[v]
        return [self._address(v) for v in values]

    def allocated(self) -> dict[str, str | None]:
        """Every allocated address with its owner."""
        return {self._address(v): o for v, o in sorted(self._range._owners.items())}

    def rebuild(self, services: Iterable[Any]) -> list[str]:
        """Forget everything, then hold each cluster IP of ``services`` in this family.

        Returns one message per address that could not be kept (out of range, or held twice),
        as the API server's repair loop reports them.
        """
        self._range._owners.clear()
        self._range._cursor = self._range.first
        problems = []
        for service in services:
            owner, spec = _spec_of(service)
            for ip in spec.get("clusterIPs") or ([spec["clusterIP"]] if spec.get("clusterIP") else []):
                if ip == "None" or (":" in ip) != (self.network.version == 6):
                    continue
                try:
                    self.allocate(ip, owner)
                except AllocationError as exc:
                    problems.append(f"{owner}: {exc}")
        return problems


def parse_port_range(value: str | tuple[int, int] | list[int]) -> tuple[int, int]:
    """``"30000-32767"`` or ``(30000, 32767)`` as a checked ``(first, last)``."""
    try:
        if isinstance(value, str):
            first_s, _, last_s = value.partition("-")
            first, last = int(first_s), int(last_s or first_s)
        else:
            first, last = int(value[0]), int(value[1])
    except (ValueError, IndexError, TypeError):
        raise AllocationError(f"node port range {value!r} is not FIRST-LAST") from None
    if not 1 <= first <= last <= 65535:
        raise AllocationError(f"node port range {first}-{last} must lie within 1-65535")
    return first, last


class NodePortAllocator:
    """Node ports for NodePort and LoadBalancer services from a range (default 30000-32767)."""

    def __init__(self, port_range: str | tuple[int, int] = DEFAULT_NODE_PORT_RANGE) -> None:
        first, last = parse_port_range(port_range)
        self._range = _Sequential(first, last)

    @property
    def range_text(self) -> str:
        """The range as ``first-last``."""
        return f"{self._range.first}-{self._range.last}"

    @property
    def size(self) -> int:
        """How many ports the range holds."""
        return self._range.size

    @property
    def free(self) -> int:
        """How many ports are left."""
        return self._range.size - len(self._range._owners)

    def contains(self, port: int) -> bool:
        """True when ``port`` lies in the range."""
        return self._range.first <= port <= self._range.last

    def owner_of(self, port: int) -> str | None:
        """Who holds ``port``."""
        return self._range._owners.get(port)

    def in_use(self, port: int) -> bool:
        """True when ``port`` is allocated."""
        return port in self._range._owners

    def allocate(self, requested: int | None = None, owner: str | None = None) -> int:
        """Give ``requested`` (in range, free or already held by ``owner``) or the next free port.

        :raises AllocationError: requested port out of range or held by another service; none left.
        """
        owners = self._range._owners
        if requested:
            if not self.contains(requested):
                raise AllocationError(
                    f"node port {requested} is outside the range {self.range_text}")
            held = owners.get(requested, False)
            if held is not False and (owner is None or held != owner):
                by = f" by {held}" if held else ""
                raise AllocationError(
                    f"node port {requested} is already allocated{by} in {self.range_text}")
            owners[requested] = owner
            return requested
        port = self._range.take_next(owner)
        if port is None:
            raise AllocationError(
                f"no node port left in the range {self.range_text}"
                f" (all {self.size} ports are allocated)")
        return port

    def release(self, port: int) -> bool:
        """Free ``port``; False when it was not allocated."""
        return self._range._owners.pop(port, False) is not False

    def release_owner(self, owner: str) -> list[int]:
        """Free every port held by ``owner``; returns them."""
        ports = [p for p, o in self._range._owners.items() if o == owner]
        for p in ports:
            del self._range._owners[p]
        return ports

    def allocated(self) -> dict[int, str | None]:
        """Every allocated port with its owner."""
        return dict(sorted(self._range._owners.items()))

    def rebuild(self, services: Iterable[Any]) -> list[str]:
        """Forget everything, then hold each node port of ``services``; returns the problems."""
        self._range._owners.clear()
        self._range._cursor = self._range.first
        problems = []
        for service in services:
            owner, spec = _spec_of(service)
            for sp in spec.get("ports") or []:
                if sp.get("nodePort"):
                    try:
                        self.allocate(int(sp["nodePort"]), owner)
                    except AllocationError as exc:
                        problems.append(f"{owner}: {exc}")
        return problems
