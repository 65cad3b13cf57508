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
from typing import Any, Generic, TypeVar

from lbcore.errors import AllocationError

__all__ = [
    "DEFAULT_NODE_PORT_RANGE",
    "KUBERNETES_SERVICE_CIDR",
    "ClusterIPAllocator",
    "NodePortAllocator",
    "parse_port_range",
    "service_owner",
]

# kubeadm's default service CIDR: where an embedded table gives addresses unless told otherwise
# (the daemon's default is a loopback range, lbcore.runtime.config.LOOPBACK_SERVICE_CIDR)
KUBERNETES_SERVICE_CIDR = "10.96.0.0/12"
DEFAULT_NODE_PORT_RANGE = (30000, 32767)  # the API server's --service-node-port-range


V = TypeVar("V", str, int)


def service_owner(service: Any) -> str:
    """``namespace/name`` of a Service object or a Service dict: who holds its values."""
    meta = getattr(service, "raw", service).get("metadata") or {}
    return f"{meta.get('namespace') or 'default'}/{meta.get('name', '')}"


def _spec_of(service: Any) -> tuple[str, Mapping[str, Any]]:
    """(owner, spec dict) of a Service object or a Service dict."""
    return service_owner(service), getattr(service, "raw", service).get("spec") or {}


class _Sequential(Generic[V]):
    """Values of one range handed out in order from a cursor, each with an owner.

    The range is held as integers ``first..last``; a subclass says how its values map to them
    (:meth:`_number` also refuses a value out of range) and how they are named in messages.
    """

    _what = ""  # "ClusterIP", "node port"
    _unit = ""  # "addresses", "ports"
    _range_word = ""  # "service CIDR", "range"

    def __init__(self, first: int, last: int) -> None:
        self.first, self.last = first, last
        self._owners: dict[int, str | None] = {}
        self._cursor = first

    def _number(self, value: V) -> int:
        raise NotImplementedError

    def _value(self, number: int) -> V:
        raise NotImplementedError

    def _span(self) -> str:
        """The range as its users write it: ``10.96.0.0/12``, ``30000-32767``."""
        raise NotImplementedError

    def _where(self) -> str:
        return f"the {self._range_word} {self._span()}"

    def _requested(self, spec: Mapping[str, Any]) -> list[V]:
        """The values of this range a Service spec holds (for :meth:`rebuild`)."""
        raise NotImplementedError

    @property
    def size(self) -> int:
        """How many values the range can give."""
        return self.last - self.first + 1

    @property
    def free(self) -> int:
        """How many values are left."""
        return self.size - len(self._owners)

    def contains(self, value: V) -> bool:
        """True when ``value`` is one this allocator could give."""
        try:
            self._number(value)
        except AllocationError:
            return False
        return True

    def owner_of(self, value: V) -> str | None:
        """Who holds ``value`` (``namespace/name``, or None when it is free or has no owner)."""
        try:
            return self._owners.get(self._number(value))
        except AllocationError:
            return None

    def in_use(self, value: V) -> bool:
        """True when ``value`` is allocated."""
        try:
            return self._number(value) in self._owners
        except AllocationError:
            return False

    def allocate(self, requested: V | None = None, owner: str | None = None) -> V:
        """Give ``requested`` (in range, and free or already held by ``owner``) or the next free
        value.

        :raises AllocationError: requested value out of range or held by another; none left.
        """
        if requested:
            number = self._number(requested)
            held = self._owners.get(number, False)
            if held is not False and (owner is None or held != owner):
                by = f" by {held}" if held else ""
                raise AllocationError(
                    f"{self._what} {requested} is already allocated{by} in {self._span()}")
            self._owners[number] = owner
            return self._value(number)
        if len(self._owners) >= self.size:
            raise AllocationError(f"no {self._what} left in {self._where()}"
                                  f" (all {self.size} {self._unit} are allocated)")
        number = self._cursor
        while number in self._owners:  # at most `size` steps: a free value exists
            number = self.first if number >= self.last else number + 1
        self._owners[number] = owner
        self._cursor = self.first if number >= self.last else number + 1
        return self._value(number)

    def release(self, value: V) -> bool:
        """Free ``value``; False when it was not allocated (or not in range)."""
        try:
            return self._owners.pop(self._number(value), False) is not False
        except AllocationError:
            return False

    def release_owner(self, owner: str) -> list[V]:
        """Free every value held by ``owner``; returns them."""
        numbers = [n for n, o in self._owners.items() if o == owner]
        for n in numbers:
            del self._owners[n]
        return [self._value(n) for n in numbers]

    def allocated(self) -> dict[V, str | None]:
        """Every allocated value with its owner, in order."""
        return {self._value(n): o for n, o in sorted(self._owners.items())}

    def rebuild(self, services: Iterable[Any]) -> list[str]:
        """Forget everything, then hold each value of ``services`` this range holds.

        Returns one message per value that could not be kept (out of range, or held twice),
        as the API server's repair loops report them.
        """
        self._owners.clear()
        self._cursor = self.first
        problems = []
        for service in services:
            owner, spec = _spec_of(service)
            for value in self._requested(spec):
                try:
                    self.allocate(value, owner)
                except AllocationError as exc:
                    problems.append(f"{owner}: {exc}")
        return problems


class ClusterIPAllocator(_Sequential[str]):
    """Virtual IPs for services from one service CIDR (IPv4 or IPv6).

    The network address is never given, nor the broadcast address of an IPv4 range.
    """

    _what = "ClusterIP"
    _unit = "addresses"
    _range_word = "service CIDR"

    def __init__(self, cidr: str = KUBERNETES_SERVICE_CIDR) -> None:
        try:
            self.network = ipaddress.ip_network(cidr, strict=False)
        except ValueError as exc:
            raise AllocationError(f"service CIDR {cidr!r} is not a valid CIDR: {exc}") from None
        first = int(self.network.network_address) + 1
        last = int(self.network.broadcast_address) - (1 if self.network.version == 4 else 0)
        if last < first:
            raise AllocationError(f"service CIDR {self.network} has no address to allocate")
        super().__init__(first, last)

    @property
    def family(self) -> str:
        """``IPv4`` or ``IPv6``."""
        return "IPv6" if self.network.version == 6 else "IPv4"

    def _span(self) -> str:
        return str(self.network)

    def _value(self, number: int) -> str:
        return str(ipaddress.ip_address(number) if self.network.version == 4
                   else ipaddress.IPv6Address(number))

    def _number(self, ip: str) -> int:
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            raise AllocationError(f"ClusterIP {ip!r} is not a valid IP address") from None
        if addr.version != self.network.version or addr not in self.network:
            raise AllocationError(f"ClusterIP {ip} is not in {self._where()}")
        number = int(addr)
        if not self.first <= number <= self.last:
            what = "network" if number < self.first else "broadcast"
            raise AllocationError(f"ClusterIP {ip} is the {what} address of {self._where()}")
        return number

    def _requested(self, spec: Mapping[str, Any]) -> list[str]:
        ips = spec.get("clusterIPs") or ([spec["clusterIP"]] if spec.get("clusterIP") else [])
        return [ip for ip in ips if ip != "None" and (":" in ip) == (self.network.version == 6)]


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


class NodePortAllocator(_Sequential[int]):
    """Node ports for NodePort and LoadBalancer services from a range (default 30000-32767)."""

    _what = "node port"
    _unit = "ports"
    _range_word = "range"

    def __init__(self, port_range: str | tuple[int, int] = DEFAULT_NODE_PORT_RANGE) -> None:
        super().__init__(*parse_port_range(port_range))

    @property
    def range_text(self) -> str:
        """The range as ``first-last``."""
        return f"{self.first}-{self.last}"

    def _span(self) -> str:
        return self.range_text

    def _value(self, number: int) -> int:
        return number

    def _number(self, port: int) -> int:
        if not self.first <= port <= self.last:
            raise AllocationError(f"node port {port} is outside {self._where()}")
        return port

    def _requested(self, spec: Mapping[str, Any]) -> list[int]:
        return [int(sp["nodePort"]) for sp in spec.get("ports") or [] if sp.get("nodePort")]
