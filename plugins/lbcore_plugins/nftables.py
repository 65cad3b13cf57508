"""The nftables frontend: one table (``inet lbcore``), verdict maps, ``numgen`` balancing.

A packet to a service costs one map lookup, whatever the number of services::

    nat-prerouting, nat-output -> services:
        ip daddr . meta l4proto . th dport vmap @service-ips-v4     -> goto service-<hash>-...
        fib daddr type local -> nodeports: meta l4proto . th dport vmap @service-nodeports-v4
    service-...   masquerade mark for off-network clients, affinity sets, then
                  numgen random mod N vmap { 0 : goto endpoint-..., 1 : ... }
    endpoint-...  hairpin mark, dnat to the pod
    nat-postrouting -> masquerading: masquerade what carries the mark
    filter-input/forward/output: new connections to a port without endpoints -> reject

The first sync replaces the whole table in one transaction; later syncs change only map
elements and the chains and sets of changed services, also in one ``nft -f`` transaction.

``endpoint_selection: maps`` keeps each port in map and set elements instead of chains::

    service-ips-v4: addr . proto . port -> goto pick-v4-<n>        (n: the port's endpoint slots)
    pick-v4-<n>     masquerade mark for off-network clients, then
                    dnat ip to ip daddr . meta l4proto . th dport . numgen random mod n map @service-endpoints-v4
    service-nodeports-v4 -> pick-external-v4-<n> / pick-local-v4-<n> -> @nodeport-endpoints-v4
    masquerading    ct status dnat ip saddr . ip daddr . meta l4proto . th dport @hairpin-v4 -> mark
    reject-services ip daddr . meta l4proto . th dport @no-endpoint-services-v4 reject

so an endpoint change is a few elements of data maps (which the kernel commits without
validating the table) plus, when its number of slots changes, one ``service-ips`` element.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from lbcore import (
    EndpointInfo,
    Frontend,
    FrontendUnavailable,
    RuntimeContext,
    ServicePortInfo,
    Snapshot,
    hash64,
    hookimpl,
)
from lbcore_plugins.netfilter import (
    MASQ_MARK,
    CommandRunner,
    NetfilterOptions,
    PortPlan,
    RenderCache,
    RuleApplyError,
    chain_hash,
    changed_port_keys,
    delete_flows,
    endpoint_id,
    paused_gc,
    plan_key,
    plan_ports,
    require_netns,
    require_tools,
    service_port_id,
    stale_udp_flows,
)

TABLE = "lbcore"
FAMILY = "inet"
_IP = {4: "ip", 6: "ip6"}
_ADDR_TYPE = {4: "ipv4_addr", 6: "ipv6_addr"}
#: the per-family names of the maps and sets ports put elements in, made once: every element's
#: key names its map, and 200,000 copies of these names cost 12 MiB at 10,000 services
_MAP_NAMES = {
    fam: {kind: f"{kind}-v{fam}" for kind in (
        "service-ips", "no-endpoint-services", "service-nodeports", "no-endpoint-nodeports",
        "service-endpoints", "nodeport-endpoints", "hairpin")}
    for fam in (4, 6)
}

PROBE = """table inet lbcore-probe {
	set affinity {
		type ipv4_addr; flags dynamic,timeout; timeout 10s
	}
	chain nat-prerouting {
		type nat hook prerouting priority dstnat; policy accept;
		fib daddr type local ct state new numgen random mod 2 vmap { 0 : goto ep, 1 : goto ep }
	}
	chain ep {
		update @affinity { ip saddr }
		meta l4proto tcp dnat ip to 127.0.0.1:1
	}
	chain nat-postrouting {
		type nat hook postrouting priority srcnat; policy accept;
		meta mark & 0x4000 != 0 masquerade fully-random
	}
	chain filter-output {
		type filter hook output priority -1; policy accept;
		ip daddr 127.0.0.2 tcp dport 1 reject
	}
}
delete table inet lbcore-probe
"""


_UNSAFE = re.compile(r"[^A-Za-z0-9_./-]")


def _name_part(text: str) -> str:
    return _UNSAFE.sub(".", text)


def _service_label(sp: ServicePortInfo) -> str:
    return f"{sp.namespace}/{sp.name}/{sp.protocol.lower()}/{_name_part(sp.port_name or str(sp.port))}"


def service_chain(sp: ServicePortInfo, kind: str = "service") -> str:
    """``service-<hash>-ns/name/proto/port``: kube-proxy's nftables naming."""
    return f"{kind}-{chain_hash(f'{kind}|{service_port_id(sp)}')[:8]}-{_service_label(sp)}"


def endpoint_chain(sp: ServicePortInfo, ep: EndpointInfo) -> str:
    return _endpoint_chain(_service_label(sp), endpoint_id(sp, ep), ep)


def _endpoint_chain(label: str, ep_id: str, ep: EndpointInfo) -> str:
    return f"endpoint-{chain_hash(ep_id)[:8]}-{label}__{_name_part(ep.ip)}/{ep.port}"


def affinity_set(sp: ServicePortInfo, ep: EndpointInfo) -> str:
    # the timeout is part of the name: a set's timeout cannot change in place
    h = chain_hash(f"{endpoint_id(sp, ep)}|{sp.affinity_timeout}")[:8]
    return f"affinity-{h}-{sp.namespace}/{sp.name}/{_name_part(ep.ip)}/{ep.port}"


#: a port's share of the table text: (map -> its ``key : verdict`` elements, the set definitions,
#: the chain definitions)
PortText = tuple[dict[str, list[str]], str, str]


class PortObjects:
    """What one service port of one family puts in the table."""

    __slots__ = ("chains", "sets", "elements")

    def __init__(self) -> None:
        self.chains: dict[str, list[str]] = {}
        self.sets: dict[str, str] = {}  # name -> body
        self.elements: dict[tuple[str, str], str] = {}  # (map, key) -> verdict

    def text(self) -> PortText:
        """(map -> its ``key : verdict`` elements, the set definitions, the chain definitions) as
        ``_table_text`` writes them. Not kept: at 10,000 services the texts would hold 26 MiB
        beside the elements they are made from, to save a full render 0.1 s of its 0.3 s."""
        grouped: dict[str, list[str]] = {}
        for (name, key), verdict in self.elements.items():
            # a set element has no verdict
            grouped.setdefault(name, []).append(f"{key} : {verdict}" if verdict else key)
        sets = "\n".join([f"\tset {name} {{\n\t\t{body}\n\t}}" for name, body in self.sets.items()])
        chains = "\n".join(
            [f"\tchain {name} {{\n\t\t" + "\n\t\t".join(rules) + "\n\t}" if rules
             else f"\tchain {name} {{\n\t}}" for name, rules in self.chains.items()]
        )
        return grouped, sets, chains


def _slots(eps: tuple[EndpointInfo, ...]) -> list[str]:
    """The ``ip . port`` of each slot of a ``maps`` port: one per endpoint, or ``w_i / gcd`` per
    endpoint when weights differ, so a uniform slot gives endpoint i ``w_i / sum(w)``."""
    dests = [f"{ep.ip} . {ep.port}" for ep in eps]
    weights = [max(ep.weight, 1) for ep in eps]
    if max(weights) == 1:
        return dests
    g = math.gcd(*weights)
    return [dest for dest, w in zip(dests, weights, strict=True) for _ in range(w // g)]


class NftRenderer:
    """Builds the table's objects from plans."""

    def __init__(self, options: NetfilterOptions):
        self.options = options
        self.maps_mode = options.endpoint_selection == "maps"

    def port_objects(self, plan: PortPlan) -> PortObjects:
        """The objects of ``plan``."""
        if self.maps_mode:
            return self.port_objects_maps(plan)
        return self._port_objects_chains(plan)

    def _port_objects_chains(self, plan: PortPlan) -> PortObjects:
        """The objects of ``plan`` in the forms with a chain per service port."""
        sp = plan.sp
        fam = plan.family
        ip = _IP[fam]
        names = _MAP_NAMES[fam]
        proto = sp.protocol.lower()
        objs = PortObjects()
        svc = service_chain(sp)
        cidr = self.options.cluster_cidrs.get(fam)
        affinity = sp.session_affinity == "ClientIP"
        eps = plan.internal_endpoints
        # inline forms: each service chain DNATs itself; ClientIP affinity still needs a chain
        # per endpoint (it records the client in that endpoint's set)
        inline = self.options.endpoint_selection in ("inline", "map") and not affinity
        if inline:
            ep_chain: dict[tuple[str, int], str] = {}
        else:
            # endpoint_chain(sp, ep) in one pass: the hash of endpoint_id, the address written once
            label = _service_label(sp)
            base_id = f"{sp.namespace}/{sp.name}:{sp.port_name}/{proto}/"
            v6 = fam == 6
            ep_chain = {}
            dests: dict[tuple[str, int], str] = {}
            for ep in plan.all_endpoints:
                ep_ip, ep_port = ep.ip, ep.port
                dest = f"[{ep_ip}]:{ep_port}" if v6 else f"{ep_ip}:{ep_port}"
                # an IPv4 address is already a safe name part
                part = _UNSAFE.sub(".", ep_ip) if v6 else ep_ip
                ep_chain[(ep_ip, ep_port)] = (
                    f"endpoint-{hash64(base_id + dest):016X}"[:17] + f"-{label}__{part}/{ep_port}"
                )
                dests[(ep_ip, ep_port)] = dest
        if eps:
            rules: list[str] = []
            for cip in plan.cluster_ips:
                objs.elements[(names["service-ips"], f"{cip} . {proto} . {sp.port}")] = f"goto {svc}"
                if self.options.masquerade_all:
                    rules.append(f"{ip} daddr {cip} {proto} dport {sp.port} jump mark-for-masquerade")
                elif cidr:
                    rules.append(f"{ip} daddr {cip} {proto} dport {sp.port} {ip} saddr != {cidr} jump mark-for-masquerade")
            if inline:
                rules.extend(self._dnat_inline(plan, eps))
            else:
                rules.extend(self._balance(plan, eps, ep_chain, affinity))
            objs.chains[svc] = rules
        else:
            for cip in plan.cluster_ips:
                objs.elements[(names["no-endpoint-services"], f"{cip} . {proto} . {sp.port}")] = "goto reject-chain"
        if plan.node_port:
            ext_eps = plan.external_endpoints
            key = f"{proto} . {plan.node_port}"
            if ext_eps:
                ext = service_chain(sp, "external")
                if plan.external_via_internal:
                    objs.chains[ext] = ["jump mark-for-masquerade", f"goto {svc}"]
                else:
                    # externalTrafficPolicy Local: no SNAT, only this node's endpoints; Cluster
                    # (with internalTrafficPolicy Local): SNAT, every endpoint
                    mark = [] if plan.external_local else ["jump mark-for-masquerade"]
                    if inline:
                        objs.chains[ext] = mark + self._dnat_inline(plan, ext_eps)
                    else:
                        objs.chains[ext] = mark + self._balance(plan, ext_eps, ep_chain, affinity)
                objs.elements[(names["service-nodeports"], key)] = f"goto {ext}"
            else:
                objs.elements[(names["no-endpoint-nodeports"], key)] = "goto reject-chain"
        if inline:
            return objs
        chains = objs.chains
        dnat = f"meta l4proto {proto} dnat {ip} to "
        saddr = f"{ip} saddr "
        for ep in plan.all_endpoints:
            at = (ep.ip, ep.port)
            if affinity:
                aff = affinity_set(sp, ep)
                objs.sets[aff] = f"type {_ADDR_TYPE[fam]}; flags dynamic,timeout; timeout {sp.affinity_timeout}s"
                chains[ep_chain[at]] = [
                    f"{saddr}{ep.ip} jump mark-for-masquerade",
                    f"update @{aff} {{ {ip} saddr }}",
                    dnat + dests[at],
                ]
            else:
                chains[ep_chain[at]] = [f"{saddr}{ep.ip} jump mark-for-masquerade", dnat + dests[at]]
        return objs

    def port_objects_maps(self, plan: PortPlan) -> PortObjects:
        """The objects of ``plan`` in the ``maps`` form: only map and set elements.

        ``service-ips`` sends the port to the shared chain ``pick-v<fam>-<n>`` (n: its number of
        endpoint slots), which DNATs through ``service-endpoints`` keyed by (address, protocol,
        port, slot); NodePorts go the same way through ``service-nodeports`` and
        ``nodeport-endpoints``. A port without endpoints is an element of a ``no-endpoint`` set,
        each endpoint one of the ``hairpin`` set. A ClientIP affinity port keeps the cascade's
        chains and sets (each endpoint records its clients in its own set)."""
        sp = plan.sp
        fam = plan.family
        if sp.session_affinity == "ClientIP":
            objs = self._port_objects_chains(plan)
            elements = objs.elements
            for mapname, key in [k for k in elements if k[0].startswith("no-endpoint-")]:
                elements[(mapname, key)] = ""  # a set element here
            return objs
        names = _MAP_NAMES[fam]
        proto = sp.protocol.lower()
        objs = PortObjects()
        elements = objs.elements
        eps = plan.internal_endpoints
        for cip in plan.cluster_ips:
            if eps:
                slots = _slots(eps)
                elements[(names["service-ips"], f"{cip} . {proto} . {sp.port}")] = f"goto pick-v{fam}-{len(slots)}"
                for i, dest in enumerate(slots):
                    elements[(names["service-endpoints"], f"{cip} . {proto} . {sp.port} . {i}")] = dest
            else:
                elements[(names["no-endpoint-services"], f"{cip} . {proto} . {sp.port}")] = ""
        if plan.node_port:
            ext_eps = plan.external_endpoints
            key = f"{proto} . {plan.node_port}"
            if ext_eps:
                slots = _slots(ext_eps)
                kind = "local" if plan.external_local else "external"
                elements[(names["service-nodeports"], key)] = f"goto pick-{kind}-v{fam}-{len(slots)}"
                for i, dest in enumerate(slots):
                    elements[(names["nodeport-endpoints"], f"{key} . {i}")] = dest
            else:
                elements[(names["no-endpoint-nodeports"], key)] = ""
        for ep in plan.all_endpoints:
            elements[(names["hairpin"], f"{ep.ip} . {ep.ip} . {proto} . {ep.port}")] = ""
        return objs

    def pick_chains(self, slots: int) -> dict[str, list[str]]:
        """The shared chains ``pick[-external|-local]-v<fam>-<n>`` for n = 1 .. ``slots``.

        They are all written with the table and never added later: nft 1.0.6 refuses a new rule
        that names one of the ``typeof`` maps once that map comes from the kernel ("conflicting
        protocols specified: tcp vs. th"), so a port with more slots than the table has chains
        makes the sync a full one."""
        return {
            f"{kind}-v{fam}-{n}": self.pick_chain(f"{kind}-v{fam}-{n}")
            for kind in ("pick", "pick-external", "pick-local")
            for fam in (4, 6)
            for n in range(1, slots + 1)
        }

    def pick_chain(self, name: str) -> list[str]:
        """The rules of shared chain ``name`` (``pick[-external|-local]-v<fam>-<n>``): a DNAT to
        slot ``numgen random mod n`` of the port the packet is addressed to. (The maps' keys
        hold the protocol, so only TCP, UDP and SCTP packets get here.)"""
        kind, v, n = name.rsplit("-", 2)
        fam = int(v[1:])
        ip = _IP[fam]
        head = f"dnat {ip} to "
        if kind == "pick":
            rules = []
            cidr = self.options.cluster_cidrs.get(fam)
            if self.options.masquerade_all:
                rules.append("jump mark-for-masquerade")
            elif cidr:
                rules.append(f"{ip} saddr != {cidr} jump mark-for-masquerade")
            key = f"{ip} daddr . meta l4proto . th dport"
            return [*rules, f"{head}{key} . numgen random mod {n} map @service-endpoints-v{fam}"]
        rules = ["jump mark-for-masquerade"] if kind == "pick-external" else []
        return [*rules, f"{head}meta l4proto . th dport . numgen random mod {n} map @nodeport-endpoints-v{fam}"]

    def _dnat_inline(self, plan: PortPlan, eps: tuple[EndpointInfo, ...]) -> list[str]:
        """Hairpin marks and the DNAT of ``eps`` as rules of the service chain itself.

        ``inline``: one ``numgen random mod k`` rule per endpoint that DNATs when it draws 0 (the
        cascade, with no chain per endpoint). ``map``: one ``dnat to numgen random mod n map {…}``
        with an anonymous map per service. A client that is itself one of ``eps`` is marked for
        masquerading whichever endpoint it then reaches (a chain per endpoint would mark only
        the connection to itself)."""
        fam = plan.family
        ip = _IP[fam]
        proto = plan.sp.protocol.lower()
        rules = [f"{ip} saddr {ep.ip} jump mark-for-masquerade" for ep in eps]
        if fam == 6:
            dests = [f"[{ep.ip}]:{ep.port}" for ep in eps]
        else:
            dests = [f"{ep.ip}:{ep.port}" for ep in eps]
        head = f"meta l4proto {proto} dnat {ip} to "
        if len(eps) == 1:
            rules.append(head + dests[0])
            return rules
        weights = [ep.weight if ep.weight > 1 else 1 for ep in eps]
        if max(weights) > 1:
            g = math.gcd(*weights)
            weights = [w // g for w in weights]
        if self.options.endpoint_selection == "map":
            entries = []
            low = 0
            for ep, w in zip(eps, weights, strict=True):
                key = str(low) if w == 1 else f"{low}-{low + w - 1}"
                entries.append(f"{key} : {ep.ip} . {ep.port}")
                low += w
            rules.append(f"{head}numgen random mod {low} map {{ {', '.join(entries)} }}")
            return rules
        rest = sum(weights)
        for dest, w in zip(dests[:-1], weights[:-1], strict=True):
            test = "0" if w == 1 else f"< {w}"
            rules.append(f"numgen random mod {rest} {test} {head}{dest}")
            rest -= w
        rules.append(head + dests[-1])
        return rules

    def _balance(
        self,
        plan: PortPlan,
        eps: tuple[EndpointInfo, ...],
        ep_chain: Mapping[tuple[str, int], str],
        affinity: bool,
    ) -> list[str]:
        ip = _IP[plan.family]
        rules: list[str] = []
        if affinity:
            for ep in eps:
                rules.append(f"{ip} saddr @{affinity_set(plan.sp, ep)} goto {ep_chain[(ep.ip, ep.port)]}")
        if len(eps) == 1:
            rules.append(f"goto {ep_chain[(eps[0].ip, eps[0].port)]}")
            return rules
        weights = [max(ep.weight, 1) for ep in eps]
        g = math.gcd(*weights)
        weights = [w // g for w in weights]
        if self.options.endpoint_selection in ("cascade", "maps"):
            # rule i draws a fresh number in [0, rest) and takes w_i of it: w_i / (w_i+...+w_n)
            rest = sum(weights)
            for ep, w in zip(eps[:-1], weights[:-1], strict=True):
                test = "0" if w == 1 else f"< {w}"
                rules.append(f"numgen random mod {rest} {test} goto {ep_chain[(ep.ip, ep.port)]}")
                rest -= w
            rules.append(f"goto {ep_chain[(eps[-1].ip, eps[-1].port)]}")
            return rules
        entries = []
        low = 0
        for ep, w in zip(eps, weights, strict=True):
            key = str(low) if w == 1 else f"{low}-{low + w - 1}"
            entries.append(f"{key} : goto {ep_chain[(ep.ip, ep.port)]}")
            low += w
        rules.append(f"numgen random mod {low} vmap {{ {', '.join(entries)} }}")
        return rules

    def base_chains(self, families: Iterable[int]) -> dict[str, list[str]]:
        """The hook chains and the dispatch chains, the same for every snapshot."""
        fams = sorted(families)
        services: list[str] = []
        external = []
        nodeports: list[str] = []
        reject: list[str] = []
        node_match = self._node_matches()
        maps = self.options.endpoint_selection == "maps"
        for fam in fams:
            ip = _IP[fam]
            cidr = self.options.cluster_cidrs.get(fam)
            if cidr:
                services.append(f"{ip} saddr != {cidr} fib saddr type != local goto external")
        for fam in fams:
            ip = _IP[fam]
            services.append(f"{ip} daddr . meta l4proto . th dport vmap @service-ips-v{fam}")
            nodeports.append(f"meta nfproto ipv{fam} meta l4proto . th dport vmap @service-nodeports-v{fam}")
            if maps:
                # data sets: adding an element triggers no validation of the table on commit
                reject.append(f"{ip} daddr . meta l4proto . th dport @no-endpoint-services-v{fam} reject")
                for match in node_match.get(fam, []):
                    reject.append(f"{match} meta nfproto ipv{fam} meta l4proto . th dport @no-endpoint-nodeports-v{fam} reject")
                continue
            reject.append(f"{ip} daddr . meta l4proto . th dport vmap @no-endpoint-services-v{fam}")
            for match in node_match.get(fam, []):
                reject.append(f"{match} meta nfproto ipv{fam} meta l4proto . th dport vmap @no-endpoint-nodeports-v{fam}")
        for match in dict.fromkeys(m for fam in fams for m in node_match.get(fam, [])):
            services.append(f"{match} jump nodeports")
            external.append(f"{match} jump nodeports")
        chains = {
            "nat-prerouting": ["type nat hook prerouting priority dstnat; policy accept;", "jump services"],
            "nat-output": ["type nat hook output priority -100; policy accept;", "jump services"],
            "nat-postrouting": ["type nat hook postrouting priority srcnat; policy accept;", "jump masquerading"],
            "filter-input": ["type filter hook input priority -1; policy accept;", "ct state new jump reject-services"],
            "filter-forward": ["type filter hook forward priority -1; policy accept;", "ct state new jump reject-services"],
            "filter-output": ["type filter hook output priority -1; policy accept;", "ct state new jump reject-services"],
            "services": services,
            "external": external,
            "nodeports": nodeports,
            "reject-services": reject,
            "reject-chain": ["reject"],
            # nothing jumps here: an outside flush or delete takes it, and check() looks for it
            "canary": [CANARY_RULE],
            "mark-for-masquerade": [f"meta mark set meta mark | {MASQ_MARK:#x}"],
            "masquerading": [
                f"meta mark & {MASQ_MARK:#x} == 0 return",
                f"meta mark set meta mark ^ {MASQ_MARK:#x}",
                "masquerade fully-random",
            ],
        }
        if maps:
            # hairpin: a DNATed connection whose client is the endpoint it reached
            chains["masquerading"][:0] = [
                f"ct status dnat {_IP[fam]} saddr . {_IP[fam]} daddr . meta l4proto . th dport @hairpin-v{fam}"
                f" meta mark set meta mark | {MASQ_MARK:#x}"
                for fam in fams
            ]
        return chains

    def _node_matches(self) -> dict[int, list[str]]:
        addrs = self.options.node_addresses
        if not addrs:
            return {4: ["fib daddr type local"], 6: ["fib daddr type local"]}
        out: dict[int, list[str]] = {}
        for fam in (4, 6):
            mine = [a for a in addrs if (":" in a) == (fam == 6)]
            if mine:
                out[fam] = [f"{_IP[fam]} daddr {{ {', '.join(mine)} }}"]
        return out

    @staticmethod
    def maps_mode_maps(families: Iterable[int]) -> dict[str, str]:
        """The maps and sets of the ``maps`` form: name -> ``map``/``set`` and its type line."""
        out = {}
        for fam in sorted(families):
            addr, ip = _ADDR_TYPE[fam], _IP[fam]
            slot = "numgen random mod 1"  # typeof: numgen's integer has no named type
            out[f"service-ips-v{fam}"] = f"map: type {addr} . inet_proto . inet_service : verdict"
            out[f"service-nodeports-v{fam}"] = "map: type inet_proto . inet_service : verdict"
            out[f"service-endpoints-v{fam}"] = (
                f"map: typeof {ip} daddr . meta l4proto . th dport . {slot} : {ip} daddr . th dport"
            )
            out[f"nodeport-endpoints-v{fam}"] = f"map: typeof meta l4proto . th dport . {slot} : {ip} daddr . th dport"
            out[f"no-endpoint-services-v{fam}"] = f"set: type {addr} . inet_proto . inet_service"
            out[f"no-endpoint-nodeports-v{fam}"] = "set: type inet_proto . inet_service"
            out[f"hairpin-v{fam}"] = f"set: type {addr} . {addr} . inet_proto . inet_service"
        return out

    @staticmethod
    def maps(families: Iterable[int]) -> dict[str, str]:
        out = {}
        for fam in sorted(families):
            addr = _ADDR_TYPE[fam]
            out[f"service-ips-v{fam}"] = f"type {addr} . inet_proto . inet_service : verdict"
            out[f"no-endpoint-services-v{fam}"] = f"type {addr} . inet_proto . inet_service : verdict"
            out[f"service-nodeports-v{fam}"] = "type inet_proto . inet_service : verdict"
            out[f"no-endpoint-nodeports-v{fam}"] = "type inet_proto . inet_service : verdict"
        return out


@dataclass
class TableState:
    """What the last successful sync put in the table."""

    plans: dict[str, PortPlan] = field(default_factory=dict)
    objects: dict[str, PortObjects] = field(default_factory=dict)
    # service -> its plan keys, so a partial sync finds what it replaces without a scan
    by_service: dict[str, list[str]] = field(default_factory=dict)
    # plan keys the last partial sync looked at
    touched: set[str] = field(default_factory=set)
    # ``maps``: how many ports use each hairpin element; the pick chains' slots
    shared: dict[tuple[str, str], int] = field(default_factory=dict)
    pick_slots: int = 0
    # the plans the last partial sync replaced (of the keys in ``touched``), for conntrack
    replaced: dict[str, PortPlan] = field(default_factory=dict)


def _gather(
    objects: Iterable[PortObjects], names: Iterable[str]
) -> tuple[dict[str, list[str]], list[str], list[str]]:
    """Every port's elements by map name (in port order), its set declarations and its chains."""
    elements: dict[str, list[str]] = {name: [] for name in names}
    sets: list[str] = []
    chains: list[str] = []
    for objs in objects:
        port_elements, port_sets, port_chains = objs.text()
        for name, items in port_elements.items():
            elements[name].extend(items)
        if port_sets:
            sets.append(port_sets)
        if port_chains:
            chains.append(port_chains)
    return elements, sets, chains


def _close_table(out: list[str], sets: list[str], base: dict[str, list[str]], chains: list[str]) -> str:
    """``out`` (the table's head and maps) with the sets, the base chains and the ports' chains,
    joined."""
    out.extend(sets)
    for name, rules in base.items():
        out.append(f"\tchain {name} {{")
        out.extend([f"\t\t{rule}" for rule in rules])
        out.append("\t}")
    out.extend(chains)
    out.append("}")
    out.append("")
    return "\n".join(out)


def _table_text(
    renderer: NftRenderer, objects: Iterable[PortObjects], families: Iterable[int]
) -> str:
    fams = sorted(families)
    maps = renderer.maps(fams)
    elements, sets, chains = _gather(objects, maps)
    out = [f"table {FAMILY} {TABLE} {{"]
    for name, body in maps.items():
        out.append(f"\tmap {name} {{\n\t\t{body}")
        if elements[name]:
            out.append("\t\telements = { " + ",\n\t\t\t".join(elements[name]) + " }")
        out.append("\t}")
    return _close_table(out, sets, renderer.base_chains(fams), chains)


#: ``maps``: the table has pick chains for at least this many slots
PICK_SLOTS = 16
#: the slots of a ``goto pick-...-<n>`` verdict with two digits or more (fewer never exceed
#: PICK_SLOTS), found in the joined elements rather than element by element
_MANY_SLOTS = re.compile(r"goto pick-(?:external-|local-)?v[46]-(\d{2,})")


def _shared(objs: PortObjects | None) -> list[tuple[str, str]]:
    """The elements a ``maps`` port may share with other ports: those of ``hairpin-v<fam>``
    (two services can have the same endpoint)."""
    if objs is None:
        return []
    return [item for item in objs.elements if item[0].startswith("hairpin-")]


def _count_shared(old: TableState, new: TableState) -> tuple[set[tuple[str, str]], set[tuple[str, str]]]:
    """Fill ``new.shared`` from ``old.shared`` (taken over, not copied: the old state is
    dropped) and the ports ``new.touched`` names; return the shared elements no port used
    before (to add) and those no port uses any more (to delete)."""
    keys = new.touched
    new.shared = shared = old.shared
    was = [item for k in keys for item in _shared(old.objects.get(k))]
    now = [item for k in keys for item in _shared(new.objects.get(k))]
    added = {item for item in now if shared.get(item, 0) == 0}
    for item in was:
        shared[item] -= 1
    for item in now:
        shared[item] = shared.get(item, 0) + 1
    removed = {item for item in was if shared[item] == 0}
    for item in removed:
        del shared[item]
    return added, removed


def _slots_used(objs: PortObjects) -> int:
    """The largest number of slots a ``maps`` port's pick chains have (0: none)."""
    return max(
        [int(verdict.rpartition("-")[2]) for verdict in objs.elements.values() if verdict.startswith("goto pick-")],
        default=0,
    )


def _maps_table_text(
    renderer: NftRenderer, objects: Iterable[PortObjects], families: Iterable[int]
) -> tuple[str, int]:
    """The whole table in the ``maps`` form: per-port elements (each shared one once), the
    pick chains, the chains and sets of ClientIP affinity ports; and the pick chains' slots.

    The maps and sets are declared empty in the table's block and their elements added after
    it, in the same transaction: a rule that names a verdict map makes the kernel walk the
    map's elements to check for loops when it binds, and then it has none (the commit checks
    them once). At 10,000 services nft loads the table in 2.8-3.2 s this way, 3.4-3.8 s with
    the elements inside the block."""
    fams = sorted(families)
    decls = renderer.maps_mode_maps(fams)
    elements, sets, chains = _gather(objects, decls)
    for name in ("hairpin-v4", "hairpin-v6"):
        elements[name] = list(dict.fromkeys(elements[name]))  # two services may share an endpoint
    slots = PICK_SLOTS
    out = [f"table {FAMILY} {TABLE} {{"]
    adds = []
    for name, decl in decls.items():
        kind, _, body = decl.partition(": ")
        out.append(f"\t{kind} {name} {{\n\t\t{body}\n\t}}")
        if elements[name]:
            joined = ",\n\t".join(elements[name])
            if name.startswith(("service-ips-", "service-nodeports-")):
                slots = max([slots, *map(int, _MANY_SLOTS.findall(joined))])
            adds.append(f"add element {FAMILY} {TABLE} {name} {{ {joined} }}\n")
    base = renderer.base_chains(fams)
    base.update(renderer.pick_chains(slots))
    return _close_table(out, sets, base, chains) + "".join(adds), slots


def _set_and_chain_lines(t: str, before: PortObjects, after: PortObjects) -> list[str]:
    """The head of a partial-sync transaction: the sets the rules name, declared again (a no-op
    in the kernel) so nft knows them, every new chain before any rule or element refers to it,
    then the rules of each changed chain."""
    lines = [f"add set {t} {name} {{ {body}; }}" for name, body in after.sets.items()]
    lines.extend(f"add chain {t} {name}" for name in after.chains if name not in before.chains)
    for name, rules in after.chains.items():
        if before.chains.get(name) == rules:
            continue
        if name in before.chains:
            lines.append(f"flush chain {t} {name}")
        if rules:
            lines.append(f"add chain {t} {name} {{\n\t" + "\n\t".join(rules) + "\n}")
    return lines


def _unreferenced_lines(t: str, before: PortObjects, after: PortObjects) -> list[str]:
    """The tail of a partial-sync transaction: the chains and sets nothing refers to any more,
    last (see _split_deletions)."""
    gone = [name for name in before.chains if name not in after.chains]
    return ([f"flush chain {t} {name}" for name in gone]
            + [f"delete chain {t} {name}" for name in gone]
            + [f"delete set {t} {name}" for name in before.sets if name not in after.sets])


def _maps_update_script(
    before: PortObjects, after: PortObjects, added: set[tuple[str, str]], removed: set[tuple[str, str]]
) -> str:
    """The transaction of a ``maps`` partial sync: ``before`` and ``after`` are the changed ports'
    objects, ``added``/``removed`` the shared elements no port used before / uses any more.

    An endpoint change is element deletes and adds in data maps (no validation of the table
    on commit) and, when its number of slots changes, one ``service-ips`` element; the table
    has few chains, so nft's read of the chain list before a ``delete`` costs little."""
    t = f"{FAMILY} {TABLE}"
    lines = _set_and_chain_lines(t, before, after)

    def own(mapname: str) -> bool:
        return not mapname.startswith("hairpin-")

    for (mapname, key), verdict in before.elements.items():
        if (own(mapname) and after.elements.get((mapname, key)) != verdict) or (mapname, key) in removed:
            lines.append(f"delete element {t} {mapname} {{ {key} }}")
    adds: dict[str, list[str]] = {}
    for (mapname, key), verdict in after.elements.items():
        if (own(mapname) and before.elements.get((mapname, key)) != verdict) or (mapname, key) in added:
            adds.setdefault(mapname, []).append(f"{key} : {verdict}" if verdict else key)
    lines.extend(f"add element {t} {mapname} {{ {', '.join(items)} }}" for mapname, items in adds.items())
    lines.extend(_unreferenced_lines(t, before, after))
    return "\n".join(lines) + "\n" if lines else ""


def _update_script(before: PortObjects, after: PortObjects) -> str:
    """The ``nft -f`` transaction that turns ``before`` (objects of the changed service ports as
    the table holds them) into ``after``; empty when nothing differs.

    Before running a script, nft 1.0.6 reads from the kernel what its commands may refer to:
    every chain of the ruleset for an ``add rule``, ``add element`` or any ``delete`` (0.15 to
    0.45 s with 61,000 chains), but only the
    table list for ``add chain``, ``add set`` and ``add map`` and nothing for ``flush chain``.
    So rules go in chain blocks and elements in map blocks, the sets the rules name are declared
    again (a no-op in the kernel) so nft knows them, and only a sync that deletes something pays
    for the chain list.
    """
    t = f"{FAMILY} {TABLE}"
    lines = _set_and_chain_lines(t, before, after)
    for (mapname, key), verdict in before.elements.items():
        if after.elements.get((mapname, key)) != verdict:
            lines.append(f"delete element {t} {mapname} {{ {key} }}")
    added: dict[str, list[str]] = {}
    for (mapname, key), verdict in after.elements.items():
        if before.elements.get((mapname, key)) != verdict:
            added.setdefault(mapname, []).append(f"{key} : {verdict}")
    if added:
        types = NftRenderer.maps((4, 6))
        for mapname, items in added.items():
            lines.append(f"add map {t} {mapname} {{ {types[mapname]}; elements = {{ {', '.join(items)} }} }}")
    lines.extend(_unreferenced_lines(t, before, after))
    if len(lines) == len(after.sets) and after.sets == before.sets:
        return ""  # only the declarations of unchanged sets: nothing to do
    return "\n".join(lines) + "\n"


def _replace_script(text: str) -> str:
    """The transaction that replaces the whole table with ``text``."""
    return f"add table {FAMILY} {TABLE}\ndelete table {FAMILY} {TABLE}\n{text}"


def _split_deletions(
    script: str, elements: bool = False
) -> tuple[str, tuple[list[str], list[str]], list[tuple[str, str]]]:
    """``script`` without its closing ``delete chain`` and ``delete set`` lines, and the chains
    and sets they name, to be deleted by :meth:`CommandRunner.delete_unreferenced` after it;
    with ``elements``, also without its ``delete element`` lines, returned as (map, key) for
    :meth:`CommandRunner.delete_elements` before it.

    nft 1.0.6 reads every chain of the ruleset before a script with any ``delete`` (at 10,000
    services with 10 endpoints each, 110,000 chains: about 2 s of CPU, over 10 s on a loaded
    machine), the kernel needs only the names. Without ``elements``, a script that deletes
    elements keeps all its lines (nft reads the chain list for it anyway; for ``maps``, whose
    table has a few dozen chains, that is cheap and the sync stays one transaction). The chain
    and set deletions, of chains the script flushed and sets no rule names any more, change no
    packet's path. The element deletions do, a moment before the script: a removed or moved
    port stops matching, then the script adds what replaces it (the two are not one
    transaction; an element that is missing fails the sync, and the next one replaces the
    table).
    """
    lines = script.splitlines()
    if not elements and any(line.startswith("delete element ") for line in lines):
        return script, ([], []), []
    prefix = f"{FAMILY} {TABLE} "
    chains = [line.split(prefix, 1)[1] for line in lines if line.startswith("delete chain ")]
    sets = [line.split(prefix, 1)[1] for line in lines if line.startswith("delete set ")]
    gone: list[tuple[str, str]] = []
    for line in lines:
        if line.startswith("delete element "):
            name, key = line.split(prefix, 1)[1].split(" ", 1)
            gone.append((name, key.strip().removeprefix("{").removesuffix("}").strip()))
    kept = [line for line in lines if not line.startswith(("delete chain ", "delete set ", "delete element "))]
    return ("\n".join(kept) + "\n") if kept else "", (chains, sets), gone


#: the one rule of chain ``canary`` (see :meth:`NftablesFrontend.check`)
CANARY_RULE = 'return comment "lbcore canary"'


class NftablesFrontend(Frontend):
    """kube-proxy's nftables mode for the services of a :class:`Snapshot`."""

    serves_node_ports = True

    name = "nftables"

    def __init__(self, options: Mapping[str, Any], context: RuntimeContext):
        super().__init__(options, context)
        self.opts = NetfilterOptions.parse(self.options)
        self.runner = CommandRunner(self.opts.netns, self.opts.timeout)
        self.renderer = NftRenderer(self.opts)
        self.cache = RenderCache()
        self._state: TableState | None = None
        self._node: tuple[str, tuple[str, ...]] | None = None
        self._need_full = False
        self.last_script_lines = 0

    def render(self, snapshot: Snapshot) -> str:
        """The whole table for ``snapshot``, as ``nft -f`` input."""
        with paused_gc():
            return self._render_ports(snapshot, None)

    def _render(self, snapshot: Snapshot) -> tuple[str, TableState]:
        """The whole table and its state. A port whose :class:`ServicePortInfo` and node are those
        of the last full render reuses its plan and objects."""
        state = TableState()
        with paused_gc():
            return self._render_ports(snapshot, state), state

    def _render_ports(self, snapshot: Snapshot, state: TableState | None) -> str:
        """The table text, through the render cache; ``state`` (when given) is filled in."""
        fresh: dict = {}
        objects: list[PortObjects] = []
        for family in (4, 6):
            entries = self.cache.render(snapshot, family, fresh, self.renderer.port_objects)
            objects.extend([entry[3] for entry in entries])
            if state is not None:
                plans, objs, by_service = state.plans, state.objects, state.by_service
                for sp, plan, pkey, port_objects in entries:
                    plans[pkey] = plan
                    objs[pkey] = port_objects
                    by_service.setdefault(sp.service, []).append(pkey)
        self.cache.entries = fresh
        if self.renderer.maps_mode:
            if state is not None:
                shared = state.shared
                for port_objects in objects:
                    for item in _shared(port_objects):
                        shared[item] = shared.get(item, 0) + 1
            text, slots = _maps_table_text(self.renderer, objects, (4, 6))
            if state is not None:
                state.pick_slots = slots
        else:
            text = _table_text(self.renderer, objects, (4, 6))
        return f"# lbcore nftables rules (nft -f)\n{text}"

    def render_update(self, before: Snapshot, after: Snapshot, changed: frozenset[str]) -> str:
        """The ``nft -f`` transaction of a partial sync from ``before`` to ``after`` (empty:
        nothing to do), as :meth:`sync` computes it; no root needed."""
        return self._partial(after, self._render(before)[1], changed)[0]

    def start(self) -> None:
        """Check for nft and the expressions the table uses (numgen, fib, ct, dynamic sets,
        nat, reject) by loading a probe table and deleting it."""
        require_tools(self.name, ["nft"], "nftables")
        if self.opts.conntrack_cleanup:
            require_tools(self.name, ["conntrack"], "conntrack")
        require_netns(self.name, self.opts.netns)
        try:
            self.runner.nft(PROBE)
        except RuleApplyError as exc:
            self.runner.run(["nft", "delete", "table", "inet", "lbcore-probe"], check=False)
            raise FrontendUnavailable(
                f"{self.name}: the kernel or nft cannot load lbcore's table ({exc}); it needs "
                "nf_tables with nft_numgen, nft_fib, nft_ct, nft_nat, nft_reject and dynamic "
                "sets (Linux >= 5.2), and root"
            ) from exc

    def sync(self, snapshot: Snapshot, changed: frozenset[str]) -> None:
        """Replace the table the first time (and after a failure); afterwards change only the
        map elements, chains and sets of ``changed`` services, in one transaction (with chains
        per service, the elements it removes are deleted by name just before it; then what it
        left unreferenced is deleted by name, see :func:`_split_deletions`)."""
        node = (snapshot.node_name, snapshot.node_addresses)
        old = self._state
        self._state = None  # until this sync succeeds
        full = old is None or node != self._node or self._need_full
        if old is None or full:
            text, state = self._render(snapshot)
            script = _replace_script(text)
        else:
            script, state = self._partial(snapshot, old, changed)
        if script:
            self.last_script_lines = script.count("\n")
            garbage: tuple[list[str], list[str]] = ([], [])
            if not full and self.runner.deletes_by_name:
                script, garbage, elements = _split_deletions(script, not self.renderer.maps_mode)
                if elements:
                    self.runner.delete_elements(FAMILY, TABLE, elements)
            if script:
                self.runner.nft(script)
            if garbage[0] or garbage[1]:
                # left empty and unreferenced by the script: no packet's path changes here
                self.runner.delete_unreferenced(FAMILY, TABLE, *garbage)
        self._state = state
        self._node = node
        self._need_full = False
        if old is not None and self.opts.conntrack_cleanup:
            if not full:
                keys = state.touched
                before = {k: state.replaced[k] for k in keys if k in state.replaced}
                after = {k: state.plans[k] for k in keys if k in state.plans}
            else:
                before, after = old.plans, state.plans
            delete_flows(self.runner, stale_udp_flows(before, after))

    def check(self) -> str | None:
        """Whether chain ``canary`` of the table still has its rule (``nft delete table`` and
        ``nft flush table`` take it); None when it has, else what is missing. One netlink dump
        of that chain's rules, whatever the table holds."""
        if self._state is None:
            return None
        where = f"{FAMILY} {TABLE}"
        rules = self.runner.count_rules(FAMILY, TABLE, "canary")
        if rules is not None:
            return None if rules else f"chain canary of table {where} is gone or was flushed"
        try:
            listing = self.runner.nft_list(f"list chain {where} canary")
        except RuleApplyError as exc:
            return f"table {where} or its chain canary is gone ({str(exc)[-200:]})"
        if CANARY_RULE not in listing:
            return f"chain canary of table {where} was flushed"
        return None

    def resync(self) -> None:
        """The next sync replaces the whole table."""
        self._need_full = True

    def _partial(
        self, snapshot: Snapshot, old: TableState, changed: frozenset[str]
    ) -> tuple[str, TableState]:
        keys = changed_port_keys(snapshot, changed)
        old_keys = {k for service in changed for k in old.by_service.get(service, ())}
        # the new state takes the old one's maps over (the old state is dropped once this sync
        # is planned: a failed sync replaces the whole table next), with the entries it
        # replaces kept aside; copying the maps cost a pass over every port per sync
        was = TableState(plans={k: old.plans[k] for k in old_keys},
                         objects={k: old.objects[k] for k in old_keys},
                         shared=old.shared, pick_slots=old.pick_slots)
        state = TableState(plans=old.plans, objects=old.objects, by_service=old.by_service,
                           replaced=was.plans)
        for key in old_keys:
            del state.plans[key]
            del state.objects[key]
        for service in changed:
            state.by_service.pop(service, None)
        for family in (4, 6):
            for plan in plan_ports(snapshot, family, keys):
                key = plan_key(plan)
                state.plans[key] = plan
                state.objects[key] = self.renderer.port_objects(plan)
                state.by_service.setdefault(plan.sp.service, []).append(key)
                old_keys.add(key)
        state.touched = old_keys

        def gather(table: TableState, service_keys: Iterable[str]) -> PortObjects:
            merged = PortObjects()
            for k in service_keys:
                objs = table.objects.get(k)
                if objs is not None:
                    merged.chains.update(objs.chains)
                    merged.sets.update(objs.sets)
                    merged.elements.update(objs.elements)
            return merged

        touched = state.touched
        if not self.renderer.maps_mode:
            return _update_script(gather(was, touched), gather(state, touched)), state
        if max([_slots_used(state.objects[k]) for k in touched if k in state.objects], default=0) > was.pick_slots:
            # more slots than the table has pick chains: replace the table (see pick_chains)
            text, state = self._render(snapshot)
            state.touched, state.replaced = touched, was.plans
            return _replace_script(text), state
        state.pick_slots = was.pick_slots
        added, removed = _count_shared(was, state)
        return _maps_update_script(gather(was, touched), gather(state, touched), added, removed), state

    def stop(self, keep: bool = False) -> None:
        """Delete the table, unless ``keep`` (or ``keep_on_exit``) asks to leave it."""
        if keep or self.opts.keep_on_exit:
            return
        self.runner.nft(f"add table {FAMILY} {TABLE}\ndelete table {FAMILY} {TABLE}\n")
        self.runner.close()
        self._state = None


@hookimpl
def lbcore_register_frontends() -> Mapping[str, Callable[..., Any]]:
    """The ``nftables`` frontend."""
    return {"nftables": NftablesFrontend}
