"""What the iptables and nftables frontends share.

Chain naming, the frontend options, kube-proxy's endpoint choice, running the kernel tools
(optionally inside a named network namespace) and the UDP conntrack clean-up.
"""

from __future__ import annotations

import gc
import ipaddress
import shutil
import subprocess
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from lbcore import (
    ConfigError,
    EndpointInfo,
    FrontendUnavailable,
    ServicePortInfo,
    Snapshot,
    endpoints_for,
    hash64,
    option,
    policy_is_local,
    read_options,
)
from lbcore_plugins.nftlib import NftContext, NftUnavailable

#: the packet-mark bit that asks LBCORE-POSTROUTING (or nft's masquerading chain) to SNAT
MASQ_MARK = 0x4000

def chain_hash(key: str) -> str:
    """16 upper-case hex digits of the XXH3-64 hash of ``key`` (as UTF-8).

    XXH3 is a fixed, seedless specification (lbcore vendors it), so a name computed today is the
    name every later version computes: an unchanged service keeps its chains across upgrades. It
    costs about as much as a dict look-up, so it is not memoised.
    """
    return f"{hash64(key):016X}"


@contextmanager
def paused_gc() -> Iterator[None]:
    """Pause the cyclic garbage collector while a full render allocates its hundreds of
    thousands of strings and tuples (none of them in a reference cycle); without the pause,
    generation scans take a third of a cold render. Restores the previous state."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def chain_name(prefix: str, key: str, length: int = 16) -> str:
    """``prefix`` + the first ``length`` hex digits of :func:`chain_hash` of ``key``.

    The name depends only on what the chain stands for, so an unchanged service keeps its chains
    across syncs and restarts. ``LBCORE-SEP-`` plus 16 digits is 27, inside iptables' 28.
    """
    return prefix + chain_hash(key)[:length]


def service_port_id(sp: ServicePortInfo) -> str:
    """``ns/name:port/proto``: what a service chain stands for."""
    return f"{sp.key}/{sp.protocol.lower()}"


def endpoint_id(sp: ServicePortInfo, ep: EndpointInfo) -> str:
    """``ns/name:port/proto/ip:port``: what an endpoint chain stands for."""
    return f"{sp.namespace}/{sp.name}:{sp.port_name}/{sp.protocol.lower()}/{endpoint_address(ep.ip, ep.port)}"


def endpoint_address(ip: str, port: int) -> str:
    """``ip:port``, with brackets for IPv6."""
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def family_of(ip: str) -> int:
    """4 or 6."""
    return 6 if ":" in ip else 4


# ---------------------------------------------------------------------------------------------
# Options
# ---------------------------------------------------------------------------------------------

#: nftables endpoint choice: a chain per endpoint behind a numgen cascade or a numgen vmap, the
#: DNAT inside the service chain (a cascade of dnat rules, or a numgen dnat map), or shared
#: chains that DNAT through data maps of every service's endpoints ("maps")
ENDPOINT_SELECTIONS = ("cascade", "vmap", "inline", "map", "maps")


def _cidr_per_family(key: str, value: Any) -> Mapping[int, str]:
    """``cluster_cidr``: one CIDR, or one per family, as ``{4: ..., 6: ...}``."""
    cidrs: dict[int, str] = {}
    for text in [value] if isinstance(value, str) else list(value or ()):
        try:
            net = ipaddress.ip_network(str(text), strict=False)
        except ValueError:
            raise ConfigError(f"{key}: invalid value {text!r}: expected a CIDR") from None
        if net.version in cidrs:
            raise ConfigError(f"{key}: invalid value {value!r}: one CIDR per family")
        cidrs[net.version] = str(net)
    return cidrs


def _networks(key: str, value: Any) -> tuple[str, ...]:
    """``node_addresses``: addresses or CIDRs, as networks."""
    out = []
    for text in [value] if isinstance(value, str) else list(value or ()):
        try:
            out.append(str(ipaddress.ip_network(str(text), strict=False)))
        except ValueError:
            raise ConfigError(
                f"{key}: invalid value {text!r}: expected an IP address or CIDR") from None
    return tuple(out)


def _netns_name(key: str, value: Any) -> str | None:
    if value is not None and (not isinstance(value, str) or not value or "/" in value):
        raise ConfigError(f"{key}: invalid value {value!r}: expected a namespace name")
    return value


@dataclass(frozen=True)
class NetfilterOptions:
    """The options both kernel frontends take (see docs/frontends/kernel.md)."""

    keep_on_exit: bool = False
    masquerade_all: bool = False
    # pod network per family: traffic from it (and from local processes) may use ClusterIPs
    cluster_cidr: Mapping[int, str] = option({}, parse=_cidr_per_family)
    # NodePorts only on these node addresses; empty: on every local address
    node_addresses: tuple[str, ...] = option((), parse=_networks)
    netns: str | None = option(None, parse=_netns_name)
    conntrack_cleanup: bool = True
    timeout: float = option(60.0, duration=True, least=0.001)
    # iptables: a full sync with more chains than this is split into transactions (0: never).
    # iptables-nft-restore --noflush grows with the square of the chains in one transaction.
    restore_chunk_chains: int = option(2000, least=0)
    # nftables: "cascade" (one numgen rule per endpoint) or "vmap" (one anonymous numgen vmap
    # per service, as kube-proxy writes it; slow to load with thousands of services, because
    # the kernel scans every anonymous set to name each new one); "inline", "map" and "maps"
    # (shared chains, per-port state in map elements): see docs/frontends/kernel.md
    endpoint_selection: str = option("cascade", choices=ENDPOINT_SELECTIONS)
    # iptables: "auto" (the iptables command of the host, nft or legacy as its alternatives say,
    # what kube-proxy detects), "nft" (iptables-nft-*) or "legacy" (iptables-legacy-*)
    backend: str = option("auto", choices=("auto", "nft", "legacy"))

    @property
    def cluster_cidrs(self) -> Mapping[int, str]:
        """The pod network of each family (4, 6) that has one."""
        return self.cluster_cidr

    @classmethod
    def parse(cls, options: Mapping[str, Any]) -> NetfilterOptions:
        """Validate ``options``; a bad value raises :class:`ConfigError` naming the key."""
        return read_options(cls, options)


# ---------------------------------------------------------------------------------------------
# Endpoint choice, as kube-proxy makes it
# ---------------------------------------------------------------------------------------------


@dataclass(slots=True)
class PortPlan:
    """One service port of one family, with the endpoints each kind of traffic may use; both
    come from :func:`lbcore.endpoints_for`."""

    sp: ServicePortInfo
    family: int
    cluster_ips: tuple[str, ...]
    # for ClusterIP traffic (internalTrafficPolicy)
    internal_endpoints: tuple[EndpointInfo, ...]
    # for NodePort traffic (externalTrafficPolicy); () when the port has no NodePort
    external_endpoints: tuple[EndpointInfo, ...]
    # externalTrafficPolicy Local: NodePort traffic stays on this node and keeps its source
    external_local: bool

    @property
    def node_port(self) -> int | None:
        return self.sp.node_port if self.sp.type in ("NodePort", "LoadBalancer") else None

    @property
    def external_via_internal(self) -> bool:
        """Whether NodePort traffic can take the ClusterIP's way (after its masquerade mark):
        it is masqueraded and may use exactly the endpoints ClusterIP traffic uses."""
        return not self.external_local and (
            self.external_endpoints is self.internal_endpoints
            or self.external_endpoints == self.internal_endpoints
        )

    @property
    def all_endpoints(self) -> tuple[EndpointInfo, ...]:
        """Every endpoint some chain of this port DNATs to, in a stable order: the internal
        ones, then the external ones not among them."""
        internal, external = self.internal_endpoints, self.external_endpoints
        if not external or external is internal or external == internal:
            return internal
        seen = {ep.address: ep for ep in internal}
        for ep in external:
            seen.setdefault(ep.address, ep)
        return tuple(seen.values())


SUPPORTED_PROTOCOLS = ("TCP", "UDP", "SCTP")


def plan_ports(snapshot: Snapshot, family: int, keys: Iterable[str] | None = None) -> list[PortPlan]:
    """The :class:`PortPlan` of every service port of ``snapshot`` with a ClusterIP of ``family``.

    ``keys`` restricts the plan to those ``service_ports`` keys. Ports come out sorted by key, so
    a rendered rule set does not depend on dict order.
    """
    ports = snapshot.service_ports
    chosen = sorted(ports) if keys is None else sorted(k for k in keys if k in ports)
    node = snapshot.node_name
    plans: list[PortPlan] = []
    for key in chosen:
        plan = plan_port(ports[key], family, node)
        if plan is not None:
            plans.append(plan)
    return plans


def plan_port(sp: ServicePortInfo, family: int, node: str | None) -> PortPlan | None:
    """The :class:`PortPlan` of ``sp`` for ``family`` on node ``node``; None when ``sp`` has no
    ClusterIP of that family or a protocol the kernel frontends do not carry."""
    if sp.protocol not in SUPPORTED_PROTOCOLS:
        return None
    v6 = family == 6
    ips = tuple([ip for ip in sp.cluster_ips if ip and ip != "None" and (":" in ip) == v6])
    if not ips:
        return None
    internal = endpoints_for(sp, "internal", node, family)
    if sp.node_port and sp.type in ("NodePort", "LoadBalancer"):
        return PortPlan(sp, family, ips, internal, endpoints_for(sp, "external", node, family),
                        policy_is_local(sp, "external"))
    return PortPlan(sp, family, ips, internal, (), False)


#: what the render cache keeps of one port for one family: (its ServicePortInfo, its PortPlan,
#: the plan key, what it rendered to)
CacheEntry = tuple[ServicePortInfo, "PortPlan", str, Any]


class RenderCache:
    """What each service port rendered to, per family, valid while the port's
    :class:`ServicePortInfo` (a frozen value) and the node name are the same.

    A render computes only ports whose value changed; a full render keeps just the entries it
    used, so the cache never outgrows the snapshot.
    """

    __slots__ = ("entries", "hits", "misses")

    def __init__(self) -> None:
        # family -> (the node it was rendered for, port key -> entry)
        self.entries: dict[int, tuple[str | None, dict[str, CacheEntry]]] = {}
        self.hits = 0
        self.misses = 0

    def clear(self) -> None:
        self.entries.clear()

    def render(
        self,
        snapshot: Snapshot,
        family: int,
        fresh: dict[int, tuple[str | None, dict[str, CacheEntry]]],
        render: Callable[[PortPlan], Any],
    ) -> list[CacheEntry]:
        """The entry of every port of ``snapshot`` with a plan for ``family``, sorted by port key.

        A port whose value and node are those of the last render is taken from the cache; the
        others are planned (:func:`plan_port`) and rendered with
        ``render``. A port with no plan for ``family`` (an IPv4-only service, for IPv6) is
        planned again each time, which costs less than keeping an entry; it counts as neither
        hit nor miss. The entries used go in ``fresh[family]``; the caller makes ``fresh`` the
        cache's entries once the whole render has succeeded.
        """
        ports = snapshot.service_ports
        node = snapshot.node_name
        last = self.entries.get(family)
        before = last[1] if last is not None and last[0] == node else {}
        now: dict[str, CacheEntry] = {}
        fresh[family] = (node, now)
        out: list[CacheEntry] = []
        hits = misses = 0
        for key in sorted(ports):
            sp = ports[key]
            entry = before.get(key)
            # identity first: an unchanged port is usually the same object in the next snapshot
            if entry is not None and (entry[0] is sp or entry[0] == sp):
                hits += 1
            else:
                plan = plan_port(sp, family, node)
                if plan is None:
                    continue
                misses += 1
                entry = (sp, plan, plan_key(plan), render(plan))
            now[key] = entry
            out.append(entry)
        self.hits += hits
        self.misses += misses
        return out


def split_probabilities(weights: Sequence[int]) -> list[float]:
    """The ``statistic`` probability of each rule in a cascade so endpoint i gets w_i / sum(w).

    Rule i is tried only when rules before it did not match, so its conditional probability is
    w_i / (w_i + ... + w_n); the last rule always matches (1.0).
    """
    ws = [w if w > 1 else 1 for w in weights]
    rest = sum(ws)
    out: list[float] = []
    for w in ws:
        out.append(w / rest)
        rest -= w
    return out


_uniform: dict[int, list[str]] = {}


def probability_texts(weights: Sequence[int]) -> list[str]:
    """:func:`split_probabilities` formatted for ``--probability`` (10 decimals, as kube-proxy)."""
    if all(w <= 1 for w in weights):
        return uniform_probability_texts(len(weights))
    return [f"{p:.10f}" for p in split_probabilities(weights)]


def uniform_probability_texts(n: int) -> list[str]:
    """The ``--probability`` texts of a cascade over ``n`` equal endpoints, memoised."""
    texts = _uniform.get(n)
    if texts is None:
        texts = _uniform[n] = [f"{p:.10f}" for p in split_probabilities([1] * n)]
    return texts


# ---------------------------------------------------------------------------------------------
# Running the tools
# ---------------------------------------------------------------------------------------------


class RuleApplyError(RuntimeError):
    """A kernel tool refused what it was given; the message has its command and its stderr."""


#: scripts longer than this run in a child ``nft`` (see :meth:`CommandRunner.nft`); a partial
#: sync of a few services is a few kB, a whole table of 1,000 services about 1 MB
CHILD_SCRIPT_CHARS = 256 * 1024


class CommandRunner:
    """Runs iptables/nft/conntrack, inside ``ip netns exec NAME`` when ``netns`` is set; nft
    scripts (:meth:`nft`) run in this process through libnftables when it loads."""

    def __init__(self, netns: str | None = None, timeout: float = 60.0):
        self.netns = netns
        self.timeout = timeout
        # False: every nft script goes through the nft command
        self.in_process = True
        self._nft: NftContext | None = None

    def nft(self, script: str) -> None:
        """Run ``script`` as ``nft -f`` does (one transaction); a refusal raises
        :class:`RuleApplyError`. The first call opens a libnftables context in the namespace
        (see :mod:`lbcore_plugins.nftlib`); when that fails, this and later calls run
        ``nft -f -``. A script longer than :data:`CHILD_SCRIPT_CHARS` (a whole table, say)
        runs in ``nft -f -`` too: what libnftables allocates to parse it (about 400 MiB for
        10,000 services in ``maps`` form) would stay in this process after it returns, free in
        the context thread's malloc arena and in the context's cache, while a child gives it
        back when it exits; the child's start (15 to 20 ms) is small beside such a script."""
        self._open_context()
        if self._nft is None or len(script) > CHILD_SCRIPT_CHARS:
            self.run(["nft", "-f", "-"], input=script)
            return
        where = f" in network namespace {self.netns}" if self.netns else ""
        try:
            status, _, error = self._nft.run(script, self.timeout)
        except TimeoutError as exc:
            raise RuleApplyError(f"nft (libnftables){where}: no answer within {self.timeout:g}s") from exc
        except NftUnavailable:  # its thread is gone (a fork, say): the command still works
            self._nft, self.in_process = None, False
            self.run(["nft", "-f", "-"], input=script)
            return
        if status != 0:
            raise RuleApplyError(f"nft (libnftables){where} failed: {error.strip()[:2000]}")

    def _open_context(self) -> None:
        """Open the libnftables context on first use; when it cannot be opened, every later
        call goes through the nft command."""
        if self.in_process and self._nft is None:
            try:
                self._nft = NftContext(self.netns)
            except OSError:
                self.in_process = False

    def count_rules(self, family: str, table: str, chain: str) -> int | None:
        """The rules of ``chain`` in ``family table`` (0: gone), through the libnftables
        context's netlink dump; None when no context can be opened (then ask :meth:`nft_list`)."""
        self._open_context()
        if self._nft is None:
            return None
        try:
            return self._nft.count_rules(family, table, chain, self.timeout)
        except OSError as exc:
            where = f" in network namespace {self.netns}" if self.netns else ""
            raise RuleApplyError(f"listing the rules of {family} {table} {chain}{where}: {exc}") from exc

    def nft_list(self, command: str) -> str:
        """What ``nft`` prints for ``command`` (a ``list ...``); a failure (the object is not
        there) raises :class:`RuleApplyError`."""
        self._open_context()
        if self._nft is not None:
            try:
                status, out, error = self._nft.run(command, self.timeout)
            except (TimeoutError, NftUnavailable):
                pass  # the command below still works
            else:
                if status != 0:
                    raise RuleApplyError(f"nft {command}: {error.strip()[:2000]}")
                return out
        return self.run(["nft", *command.split()]).stdout

    @property
    def deletes_by_name(self) -> bool:
        """Whether :meth:`delete_unreferenced` can run: a libnftables context is open."""
        return self._nft is not None

    def delete_unreferenced(self, family: str, table: str, chains: Sequence[str], sets: Sequence[str]) -> None:
        """Delete empty ``chains`` and ``sets`` that nothing refers to any more, in one batch of
        their own, sent by name (nft would first read every chain of the ruleset)."""
        if self._nft is None:
            raise RuleApplyError("no libnftables context is open")
        try:
            self._nft.delete_unreferenced(family, table, chains, sets, self.timeout)
        except OSError as exc:
            where = f" in network namespace {self.netns}" if self.netns else ""
            raise RuleApplyError(
                f"deleting {len(chains)} chains and {len(sets)} sets of {family} {table}{where}: {exc}"
            ) from exc

    def delete_elements(self, family: str, table: str, elements: Sequence[tuple[str, str]]) -> None:
        """Delete set and map ``elements`` ((name, key as nft writes it)) in one batch of their
        own, sent by name (nft would first read every chain of the ruleset)."""
        if self._nft is None:
            raise RuleApplyError("no libnftables context is open")
        try:
            self._nft.delete_elements(family, table, elements, self.timeout)
        except OSError as exc:
            where = f" in network namespace {self.netns}" if self.netns else ""
            raise RuleApplyError(f"deleting {len(elements)} elements of {family} {table}{where}: {exc}") from exc

    def close(self) -> None:
        """Free the libnftables context, if one is open (the next :meth:`nft` opens another)."""
        if self._nft is not None:
            self._nft.close()
            self._nft = None

    def argv(self, args: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.netns, *args] if self.netns else list(args)

    def run(
        self, args: Sequence[str], input: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run ``args``; with ``check`` a non-zero exit raises :class:`RuleApplyError`."""
        argv = self.argv(args)
        try:
            proc = subprocess.run(
                argv, input=input, capture_output=True, text=True, timeout=self.timeout
            )
        except subprocess.TimeoutExpired as exc:
            raise RuleApplyError(f"{' '.join(argv)}: no answer within {self.timeout:g}s") from exc
        except FileNotFoundError as exc:
            raise RuleApplyError(f"{argv[0]}: not found") from exc
        if check and proc.returncode != 0:
            raise RuleApplyError(
                f"{' '.join(argv)} exited {proc.returncode}: {proc.stderr.strip()[:2000]}"
            )
        return proc


def require_tools(frontend: str, tools: Iterable[str], package: str) -> None:
    """Raise :class:`FrontendUnavailable` naming every tool of ``tools`` not on PATH."""
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        raise FrontendUnavailable(
            f"{frontend}: {', '.join(missing)} not found; install Debian's {package} package"
        )


def require_netns(frontend: str, netns: str | None) -> None:
    """Raise :class:`FrontendUnavailable` when option ``netns`` names no namespace."""
    if netns is None:
        return
    require_tools(frontend, ["ip"], "iproute2")
    import os

    if not os.path.exists(f"/run/netns/{netns}"):
        raise FrontendUnavailable(
            f"{frontend}: network namespace {netns!r} (option 'netns') does not exist; "
            f"create it with `ip netns add {netns}`"
        )


# ---------------------------------------------------------------------------------------------
# UDP conntrack clean-up
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StaleFlow:
    """Conntrack entries to delete: UDP to ``dst``:``port`` (or any local address when ``dst`` is
    None, for a NodePort) whose reply comes from ``endpoint`` (or from anywhere when None)."""

    port: int
    dst: str | None
    endpoint: str | None

    def argv(self) -> list[str]:
        args = ["conntrack", "-D", "-p", "udp", "--orig-port-dst", str(self.port)]
        if self.dst is not None:
            args += ["-f", "ipv6" if family_of(self.dst) == 6 else "ipv4", "--orig-dst", self.dst]
        if self.endpoint is not None:
            if self.dst is None:
                args += ["-f", "ipv6" if family_of(self.endpoint) == 6 else "ipv4"]
            args += ["--reply-src", self.endpoint]
        return args


def stale_udp_flows(old: Mapping[str, PortPlan], new: Mapping[str, PortPlan]) -> list[StaleFlow]:
    """What to delete from conntrack after a sync, as kube-proxy does for UDP.

    - an endpoint removed from a UDP service port: the flows that still point at it, so clients
      move on at once instead of talking to a dead pod until the entry times out;
    - a UDP service port that goes from no endpoints to some: the flows to its ClusterIP, which
      cached the rejection.
    ``old`` and ``new`` map a plan key (see :func:`plan_key`) to its plan.
    """
    flows: list[StaleFlow] = []
    for key, before in old.items():
        if before.sp.protocol != "UDP":
            continue
        after = new.get(key)
        live = {ep.ip for ep in after.all_endpoints} if after else set()
        gone_ips = sorted({ep.ip for ep in before.all_endpoints} - live)
        for ip in gone_ips:
            for cip in before.cluster_ips:
                flows.append(StaleFlow(before.sp.port, cip, ip))
            if before.node_port:
                flows.append(StaleFlow(before.node_port, None, ip))
    for key, after in new.items():
        if after.sp.protocol != "UDP" or not after.internal_endpoints:
            continue
        previous = old.get(key)
        if previous is not None and previous.internal_endpoints:
            continue
        for cip in after.cluster_ips:
            flows.append(StaleFlow(after.sp.port, cip, None))
    return flows


def plan_key(plan: PortPlan) -> str:
    return f"{plan.family}|{service_port_id(plan.sp)}"


def changed_port_keys(snapshot: Snapshot, changed: frozenset[str]) -> list[str]:
    """The ``service_ports`` keys of the services in ``changed``.

    Snapshots key ports by ``namespace/name:port``; when they do, only keys are compared, which
    keeps a partial sync of a large snapshot cheap.
    """
    ports = snapshot.service_ports
    if not changed or not ports:
        return []
    if snapshot.by_service is not None:  # the snapshot's index: what changed, not every port
        return [sp.key for service in changed for sp in snapshot.ports_of(service)
                if ports.get(sp.key) is sp]
    first = next(iter(ports))
    if first == ports[first].key:
        prefixes = tuple(f"{service}:" for service in changed)
        return [k for k in ports if k.startswith(prefixes) and ports[k].service in changed]
    return [k for k, sp in ports.items() if sp.service in changed]


def delete_flows(runner: CommandRunner, flows: Iterable[StaleFlow]) -> int:
    """Run ``conntrack -D`` for each flow; returns how many commands ran. A flow that is not
    there (conntrack exits 1 with "0 flow entries") is not an error."""
    count = 0
    for flow in flows:
        runner.run(flow.argv(), check=False)
        count += 1
    return count
