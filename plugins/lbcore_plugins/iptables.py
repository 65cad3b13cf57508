"""The iptables frontend: kube-proxy's rule layout, applied with ``iptables-restore --noflush``.

nat table::

    PREROUTING, OUTPUT -> LBCORE-SERVICES     one rule per ClusterIP:port -> LBCORE-SVC-<hash>
                                              then LBCORE-NODEPORTS for local destinations
    LBCORE-NODEPORTS                          one rule per NodePort -> LBCORE-EXT-<hash>
    LBCORE-EXT-<hash>                         mark for masquerade, then the service chain
    LBCORE-SVC-<hash>                         affinity (recent --rcheck), then one
                                              statistic-random rule per endpoint -> LBCORE-SEP-<hash>
    LBCORE-SEP-<hash>                         hairpin mark, DNAT to the endpoint
    POSTROUTING -> LBCORE-POSTROUTING         MASQUERADE what carries the mark

filter table: ``INPUT, FORWARD, OUTPUT -> LBCORE-SERVICES`` REJECTs new connections to a service
port without endpoints, so clients fail at once.

Both tables hold ``LBCORE-CANARY``, a chain with one rule that nothing jumps to: an outside
``iptables -t nat -F`` (or ``-X``) takes it with everything else, and :meth:`IptablesFrontend.check`
looks only for it, which costs one ``iptables -C`` per table however many services there are.

Chain names hash what they stand for, so a service that did not change keeps its chains and a
partial sync rewrites only the chains of changed services. Only chains named ``LBCORE-*`` and the
jump rules into them are ever touched.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from lbcore import Frontend, FrontendUnavailable, RuntimeContext, Snapshot, hookimpl
from lbcore_plugins.netfilter import (
    MASQ_MARK,
    CacheEntry,
    CommandRunner,
    NetfilterOptions,
    PortPlan,
    RenderCache,
    RuleApplyError,
    chain_hash,
    changed_port_keys,
    delete_flows,
    paused_gc,
    plan_key,
    plan_ports,
    probability_texts,
    require_netns,
    require_tools,
    stale_udp_flows,
    uniform_probability_texts,
)

SERVICES = "LBCORE-SERVICES"
NODEPORTS = "LBCORE-NODEPORTS"
POSTROUTING = "LBCORE-POSTROUTING"
MARK_MASQ = "LBCORE-MARK-MASQ"
CANARY = "LBCORE-CANARY"
#: the canary's one rule (after ``-A LBCORE-CANARY``); it never sees a packet
CANARY_RULE = ("-m", "comment", "--comment", "lbcore canary", "-j", "RETURN")
OWN_PREFIX = "LBCORE-"
HOOK_COMMENT = "lbcore service portals"
HOOK_LINE_PREFIX = "# lbcore-hook: "

#: jump rules lbcore puts into built-in chains: (table, built-in chain, rule spec)
HOOKS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("nat", "PREROUTING", ("-m", "comment", "--comment", HOOK_COMMENT, "-j", SERVICES)),
    ("nat", "OUTPUT", ("-m", "comment", "--comment", HOOK_COMMENT, "-j", SERVICES)),
    ("nat", "POSTROUTING", ("-m", "comment", "--comment", "lbcore masquerade", "-j", POSTROUTING)),
    *(
        (
            "filter",
            chain,
            ("-m", "conntrack", "--ctstate", "NEW", "-m", "comment", "--comment", HOOK_COMMENT,
             "-j", SERVICES),
        )
        for chain in ("INPUT", "FORWARD", "OUTPUT")
    ),
)

#: the matches and targets the rule set uses, with what each is for (checked at start)
NEEDED_EXTENSIONS: tuple[tuple[str, str], ...] = (
    ("-m comment --comment probe -j RETURN", "comment match (xt_comment)"),
    ("-m statistic --mode random --probability 0.5 -j RETURN", "statistic match (xt_statistic)"),
    ("-m recent --name LBCORE-PROBE --rcheck --seconds 10 --reap -j RETURN", "recent match (xt_recent)"),
    ("-m addrtype --dst-type LOCAL -j RETURN", "addrtype match (xt_addrtype)"),
    ("-m conntrack --ctstate NEW -j RETURN", "conntrack match (xt_conntrack)"),
    ("-m mark --mark 0x4000/0x4000 -j RETURN", "mark match (xt_mark)"),
    ("-j MARK --or-mark 0x4000", "MARK target (xt_mark)"),
    ("-p tcp -j DNAT --to-destination 127.0.0.1:1", "DNAT target (nf_nat)"),
    ("-j MASQUERADE", "MASQUERADE target (xt_MASQUERADE)"),
)


def _q(text: str) -> str:
    return '"' + text.replace('"', "'") + '"'


class PortRules:
    """The rules one service port of one family contributes."""

    __slots__ = ("chains", "services", "nodeports", "reject")

    def __init__(self) -> None:
        self.chains: dict[str, str] = {}  # nat chain -> its rules, one per line
        self.services: tuple[str, ...] = ()  # lines in nat LBCORE-SERVICES
        self.nodeports: tuple[str, ...] = ()  # lines in nat LBCORE-NODEPORTS
        self.reject: tuple[str, ...] = ()  # lines in filter LBCORE-SERVICES

    def text(self) -> tuple[str, str]:
        """(the ``:chain - [0:0]`` declarations, the rules) of :attr:`chains`, each one string.
        Not kept: at 10,000 services the texts would hold 43 MiB beside the chains they are
        joined from, to save a full restore (20 s there) 0.12 s."""
        chains = self.chains
        return (
            "\n".join([f":{name} - [0:0]" for name in chains]),
            "\n".join([body for body in chains.values() if body]),
        )


class RuleRenderer:
    """Turns plans into iptables-restore text for one address family."""

    def __init__(self, options: NetfilterOptions, family: int):
        self.options = options
        self.family = family
        self.cidr = options.cluster_cidrs.get(family)
        self.node_addresses = [
            a for a in options.node_addresses if (":" in a) == (family == 6)
        ]

    # -- per service port ------------------------------------------------------------------

    def port_rules(self, plan: PortPlan) -> PortRules:
        """The rules of ``plan``."""
        sp = plan.sp
        rules = PortRules()
        services: list[str] = []
        nodeports: list[str] = []
        reject: list[str] = []
        proto = sp.protocol.lower()
        name = f"{sp.namespace}/{sp.name}:{sp.port_name}"
        svc_id = f"{name}/{proto}"
        svc = "LBCORE-SVC-" + chain_hash(svc_id)
        comment = f'-m comment --comment "{name}"'
        v6 = self.family == 6
        # endpoint chain per (ip, port); the id is endpoint_id(sp, ep)
        seps: dict[tuple[str, int], str] = {}
        for ep in plan.all_endpoints:
            addr = f"[{ep.ip}]:{ep.port}" if v6 else f"{ep.ip}:{ep.port}"
            seps[(ep.ip, ep.port)] = "LBCORE-SEP-" + chain_hash(f"{svc_id}/{addr}")
        affinity = sp.session_affinity == "ClientIP"
        eps = plan.internal_endpoints
        port = sp.port

        if eps:
            lines: list[str] = []
            for cip in plan.cluster_ips:
                services.append(
                    f'-A {SERVICES} -m comment --comment "{name} cluster IP" -p {proto} -d {cip} --dport {port} -j {svc}'
                )
                if self.options.masquerade_all:
                    lines.append(f"-A {svc} {comment} -p {proto} -d {cip} --dport {port} -j {MARK_MASQ}")
                elif self.cidr:
                    lines.append(f"-A {svc} {comment} -p {proto} -d {cip} --dport {port} ! -s {self.cidr} -j {MARK_MASQ}")
            targets = [seps[(ep.ip, ep.port)] for ep in eps]
            if affinity or any(ep.weight > 1 for ep in eps):
                self._balance(lines, svc, comment, targets, [ep.weight for ep in eps], affinity, sp.affinity_timeout)
            else:
                # the common case in one pass: equal shares, no affinity
                head = f"-A {svc} {comment} -m statistic --mode random --probability "
                probabilities = uniform_probability_texts(len(targets))
                lines.extend([f"{head}{p} -j {t}" for p, t in zip(probabilities, targets[:-1], strict=False)])
                lines.append(f"-A {svc} {comment} -j {targets[-1]}")
            rules.chains[svc] = "\n".join(lines)
        else:
            for cip in plan.cluster_ips:
                reject.append(
                    f'-A {SERVICES} -m comment --comment "{name} has no endpoints" -p {proto} -d {cip} --dport {port} -j REJECT'
                )

        node_port = plan.node_port
        if node_port:
            ext_eps = plan.external_endpoints
            if ext_eps:
                ext = "LBCORE-EXT-" + chain_hash(svc_id)
                if plan.external_via_internal:
                    ext_lines = [
                        f'-A {ext} -m comment --comment "{name} external" -j {MARK_MASQ}',
                        f"-A {ext} -j {svc}",
                    ]
                else:
                    # externalTrafficPolicy Local: no SNAT, only this node's endpoints; Cluster
                    # (with internalTrafficPolicy Local): SNAT, every endpoint
                    ext_lines = [] if plan.external_local else [
                        f'-A {ext} -m comment --comment "{name} external" -j {MARK_MASQ}'
                    ]
                    self._balance(ext_lines, ext, comment, [seps[(ep.ip, ep.port)] for ep in ext_eps], [ep.weight for ep in ext_eps], affinity, sp.affinity_timeout)
                rules.chains[ext] = "\n".join(ext_lines)
                nodeports.append(f"-A {NODEPORTS} {comment} -p {proto} --dport {node_port} -j {ext}")
            else:
                for dst in self._node_dst_matches():
                    reject.append(
                        f'-A {SERVICES} -m comment --comment "{name} has no endpoints" {dst}-p {proto} --dport {node_port} -j REJECT'
                    )

        chains = rules.chains
        p_proto = f"-p {proto} "
        for (ip, ep_port), sep in seps.items():
            dest = f"[{ip}]:{ep_port}" if v6 else f"{ip}:{ep_port}"
            recent = f"-m recent --name {sep} --set " if affinity else ""
            chains[sep] = (
                f"-A {sep} {comment} -s {ip} -j {MARK_MASQ}\n"
                f"-A {sep} {comment} {p_proto}{recent}-j DNAT --to-destination {dest}"
            )
        rules.services, rules.nodeports, rules.reject = tuple(services), tuple(nodeports), tuple(reject)
        return rules

    def _balance(
        self,
        lines: list[str],
        chain: str,
        comment: str,
        targets: list[str],
        weights: list[int],
        affinity: bool,
        timeout: int,
    ) -> None:
        if affinity:
            for target in targets:
                lines.append(
                    f"-A {chain} {comment} -m recent --name {target} --rcheck --seconds {timeout} --reap -j {target}"
                )
        probabilities = probability_texts(weights)
        last = len(targets) - 1
        for i, target in enumerate(targets):
            if i == last:
                lines.append(f"-A {chain} {comment} -j {target}")
            else:
                lines.append(
                    f"-A {chain} {comment} -m statistic --mode random --probability {probabilities[i]} -j {target}"
                )

    def _node_dst_matches(self) -> list[str]:
        if self.node_addresses:
            return [f"-d {a} " for a in self.node_addresses]
        return ["-m addrtype --dst-type LOCAL "]

    # -- the fixed chains ------------------------------------------------------------------

    def services_head(self) -> list[str]:
        """First rules of LBCORE-SERVICES: traffic from outside the pod network and the node
        itself only reaches NodePorts (ClusterIPs are for the inside)."""
        if not self.cidr:
            return []
        outside = f"! -s {self.cidr} -m addrtype ! --src-type LOCAL"
        lines = [
            f"-A {SERVICES} -m comment --comment {_q('from outside: NodePorts only')} {outside} {dst}-g {NODEPORTS}"
            for dst in self._node_dst_matches()
        ]
        lines.append(f"-A {SERVICES} {outside} -j RETURN")
        return lines

    def services_tail(self) -> list[str]:
        return [
            f"-A {SERVICES} -m comment --comment {_q('lbcore service nodeports')} {dst}-j {NODEPORTS}"
            for dst in self._node_dst_matches()
        ]

    @staticmethod
    def fixed_chains() -> dict[str, list[str]]:
        return {
            POSTROUTING: [
                f"-A {POSTROUTING} -m mark ! --mark {MASQ_MARK:#x}/{MASQ_MARK:#x} -j RETURN",
                f"-A {POSTROUTING} -j MARK --xor-mark {MASQ_MARK:#x}",
                f"-A {POSTROUTING} -m comment --comment {_q('lbcore service traffic requiring SNAT')} -j MASQUERADE --random-fully",
            ],
            MARK_MASQ: [f"-A {MARK_MASQ} -j MARK --or-mark {MASQ_MARK:#x}"],
            CANARY: [canary_line()],
        }


def canary_line() -> str:
    """The canary chain's rule as iptables-restore takes it."""
    return f"-A {CANARY} " + " ".join(_q(a) if " " in a else a for a in CANARY_RULE)


def hook_rule(chain: str, spec: Sequence[str]) -> str:
    """A jump rule of :data:`HOOKS` as iptables-save prints it after ``-A``."""
    return " ".join([chain, *(_q(a) if " " in a else a for a in spec)])


def hook_comment_lines() -> list[str]:
    """The jump rules in built-in chains, as comment lines the rule tracer reads."""
    return [f"{HOOK_LINE_PREFIX}{table} {hook_rule(chain, spec)}" for table, chain, spec in HOOKS]


@dataclass
class FamilyState:
    """What one family's last successful sync installed."""

    plans: dict[str, PortPlan] = field(default_factory=dict)
    rules: dict[str, PortRules] = field(default_factory=dict)
    # service -> its plan keys, so a partial sync finds what it replaces without a scan
    by_service: dict[str, list[str]] = field(default_factory=dict)
    # plan keys the last partial sync looked at
    touched: set[str] = field(default_factory=set)


def _jump_target(line: str) -> str:
    return line[line.rindex(" ") + 1:]


def _assemble(
    renderer: RuleRenderer, rules: Mapping[str, PortRules]
) -> tuple[list[str], list[str], list[str]]:
    """The rules of nat LBCORE-SERVICES and LBCORE-NODEPORTS and of filter LBCORE-SERVICES.

    A port's dispatch rules match only its own addresses, so their order changes no packet's
    way; they go by the chain they jump to, largest name first. iptables-nft-restore (1.8.9)
    keeps the chains a transaction names in a sorted linked list, walked from the smallest
    name at each mention: names that come largest first join it at the head, which makes
    writing 10,000 dispatch rules take a third to a sixth of the time port order takes."""
    services: list[str] = []
    nodeports: list[str] = []
    reject: list[str] = []
    for key in sorted(rules):
        r = rules[key]
        services.extend(r.services)
        nodeports.extend(r.nodeports)
        reject.extend(r.reject)
    services.sort(key=_jump_target, reverse=True)
    nodeports.sort(key=_jump_target, reverse=True)
    return [*renderer.services_head(), *services, *renderer.services_tail()], nodeports, reject


def _restore_text(
    nat_chains: Iterable[tuple[str, str | list[str]]],
    filter_chains: Iterable[tuple[str, str | list[str]]],
    delete_nat: Iterable[str] = (),
    delete_filter: Iterable[str] = (),
    edits: Mapping[str, Sequence[str]] | None = None,
) -> str:
    """iptables-restore input: declare (create or flush) each chain, fill it, apply ``edits``
    (table -> ``-D``/``-I``/``-A`` lines for chains not declared), delete the rest."""
    return "\n".join(_restore_lines(filter_chains, nat_chains, (), (), delete_nat, delete_filter,
                                    edits=edits))


def _restore_lines(
    filter_chains: Iterable[tuple[str, str | list[str]]],
    nat_head: Iterable[tuple[str, str | list[str]]],
    ports: Sequence[PortRules],
    nat_tail: Iterable[tuple[str, str | list[str]]] = (),
    delete_nat: Iterable[str] = (),
    delete_filter: Iterable[str] = (),
    hooks: Iterable[tuple[str, str, tuple[str, ...]]] = (),
    edits: Mapping[str, Sequence[str]] | None = None,
) -> list[str]:
    """What :func:`_restore_text` writes for ``filter_chains`` and for ``nat_head``, every chain of
    ``ports`` and ``nat_tail`` in nat, as pieces to join with newlines (once, by the caller); a
    port adds its two joined texts, not a line at a time. ``hooks`` (of :data:`HOOKS`) are
    inserted at the head of their built-in chains, after the chains they jump to are filled;
    ``edits`` (table -> lines) go after them, before the chain deletions."""
    texts = [rules.text() for rules in ports]
    filt, head, tail = list(filter_chains), list(nat_head), list(nat_tail)
    deleted_filter, deleted_nat = sorted(delete_filter), sorted(delete_nat)
    inserts: dict[str, list[str]] = {"filter": [], "nat": []}
    for table, chain, spec in hooks:
        inserts[table].append(f"-I {chain} 1 {hook_rule(chain, spec).split(' ', 1)[1]}")
    for table, lines in (edits or {}).items():
        inserts[table].extend(lines)
    out = ["*filter"]
    out.extend([f":{name} - [0:0]" for name, _ in filt])
    out.extend([f":{name} - [0:0]" for name in deleted_filter])
    _add_rules(out, filt)
    out.extend(inserts["filter"])
    out.extend([f"-X {name}" for name in deleted_filter])
    out += ["COMMIT", "*nat"]
    out.extend([f":{name} - [0:0]" for name, _ in head])
    out.extend([decl for decl, _ in texts if decl])
    out.extend([f":{name} - [0:0]" for name, _ in tail])
    out.extend([f":{name} - [0:0]" for name in deleted_nat])
    _add_rules(out, head)
    out.extend([body for _, body in texts if body])
    _add_rules(out, tail)
    out.extend(inserts["nat"])
    out.extend([f"-X {name}" for name in deleted_nat])
    out += ["COMMIT", ""]
    return out


def _add_rules(out: list[str], chains: Iterable[tuple[str, str | list[str]]]) -> None:
    """Each chain's rules: one joined string, or a list of lines."""
    for _, body in chains:
        if isinstance(body, str):
            if body:
                out.append(body)
        else:
            out.extend(body)


class IptablesFrontend(Frontend):
    """kube-proxy's iptables mode for the services of a :class:`Snapshot`."""

    serves_node_ports = True

    name = "iptables"

    def __init__(self, options: Mapping[str, Any], context: RuntimeContext):
        super().__init__(options, context)
        self.opts = NetfilterOptions.parse(self.options)
        self.runner = CommandRunner(self.opts.netns, self.opts.timeout)
        self._state: dict[int, FamilyState] = {}
        self._node: tuple[str, tuple[str, ...]] | None = None
        self._need_full = True
        self.cache = RenderCache()
        # last sync's figures, for logs and benchmarks
        self.last_restore_lines = 0

    def tool(self, family: int) -> str:
        """The command that changes ``family``'s rules: ``iptables``/``ip6tables`` (whichever
        backend the host's alternatives chose) or its ``-nft``/``-legacy`` variant, as option
        ``backend`` asks; ``-restore`` and ``-save`` are appended to it."""
        base = "ip6tables" if family == 6 else "iptables"
        backend = self.opts.backend
        return base if backend == "auto" else f"{base}-{backend}"

    # -- rendering (no root needed) ---------------------------------------------------------

    def render(self, snapshot: Snapshot) -> str:
        """The whole rule set for ``snapshot``: iptables-restore input for IPv4, then for IPv6 when
        a service has an IPv6 ClusterIP. Hook rules appear as ``# lbcore-hook:`` comments."""
        parts = ["# lbcore iptables rules (iptables-restore --noflush)", *hook_comment_lines()]
        fresh: dict = {}
        with paused_gc():
            for family in (4, 6):
                plans, rendered = self._cached(snapshot, family, fresh)
                if family == 6 and not plans:
                    continue
                parts.append(f"# IPv{family} ({'ip6tables' if family == 6 else 'iptables'}-restore)")
                # what _render_family writes in one transaction, without its sync state
                renderer = RuleRenderer(self.opts, family)
                services, nodeports, reject = _assemble(renderer, {e[2]: e[3] for e in rendered})
                head: list[tuple[str, str | list[str]]] = [
                    (SERVICES, services), (NODEPORTS, nodeports), *renderer.fixed_chains().items()
                ]
                parts.extend(_restore_lines([(SERVICES, reject), (CANARY, [canary_line()])], head,
                                            [e[3] for e in rendered]))
            self.cache.entries = fresh
            return "\n".join(parts)

    def _cached(
        self, snapshot: Snapshot, family: int, fresh: dict
    ) -> tuple[list[PortPlan], list[CacheEntry]]:
        """Plans and cache entries (with the :class:`PortRules`) of every port of ``snapshot`` for
        ``family``, sorted by port key, through the render cache; the entries used are put in
        ``fresh`` (the next cache)."""
        renderer = RuleRenderer(self.opts, family)
        with paused_gc():
            entries = self.cache.render(snapshot, family, fresh, renderer.port_rules)
        return [entry[1] for entry in entries], entries

    def _render_family(
        self,
        plans: list[PortPlan],
        family: int,
        stale_nat: Iterable[str] = (),
        stale_filter: Iterable[str] = (),
        chunk: int = 0,
        rendered: list[CacheEntry] | None = None,
        hooks: Iterable[tuple[str, str, tuple[str, ...]]] = (),
    ) -> tuple[list[str], FamilyState]:
        """Full restore input for ``plans``: one transaction, or with ``chunk`` > 0 and more
        chains than that, several: service chains ``chunk`` at a time (each service whole in
        one), then the dispatch chains, the missing ``hooks`` and the deletions in the last. A
        packet then always meets a whole old or a whole new version of each service. (The last
        transaction names no service chain but those it jumps to: see :func:`_assemble`.)

        ``rendered`` holds the render cache entry (with the :class:`PortRules`) of each plan when
        the caller has them."""
        renderer = RuleRenderer(self.opts, family)
        if rendered is None:
            rendered = [(plan.sp, plan, plan_key(plan), renderer.port_rules(plan)) for plan in plans]
        state = FamilyState()
        by_service = state.by_service
        state_plans = state.plans
        state_rules = state.rules
        for sp, plan, key, rules in rendered:
            state_plans[key] = plan
            state_rules[key] = rules
            by_service.setdefault(sp.service, []).append(key)
        port_rules = list(state_rules.values())
        services, nodeports, reject_lines = _assemble(renderer, state.rules)
        fixed: list[tuple[str, str | list[str]]] = list(renderer.fixed_chains().items())
        dispatch: list[tuple[str, str | list[str]]] = [(SERVICES, services), (NODEPORTS, nodeports)]
        stale_nat = set(stale_nat)
        if stale_nat:
            owned = {name for name, _ in fixed} | {SERVICES, NODEPORTS}
            for rules in port_rules:
                owned.update(rules.chains)
            stale_nat -= owned
        stale_filter = set(stale_filter) - {SERVICES, CANARY}
        reject: list[tuple[str, str | list[str]]] = [(SERVICES, reject_lines), (CANARY, [canary_line()])]
        if chunk <= 0 or sum([len(rules.chains) for rules in port_rules]) <= chunk:
            lines = _restore_lines(reject, dispatch + fixed, port_rules, (), stale_nat, stale_filter, hooks)
            return ["\n".join(lines)], state
        texts: list[str] = []
        batch: list[PortRules] = []
        head, size = fixed, len(fixed)
        for rules in port_rules:
            if size + len(rules.chains) > chunk and size:
                texts.append("\n".join(_restore_lines([], head, batch)))
                head, batch, size = [], [], 0
            batch.append(rules)
            size += len(rules.chains)
        texts.append("\n".join(_restore_lines([], head, batch)))
        texts.append("\n".join(_restore_lines(reject, [], [], dispatch, stale_nat, stale_filter, hooks)))
        return texts, state

    def render_update(
        self, before: Snapshot, after: Snapshot, changed: frozenset[str], family: int = 4
    ) -> str:
        """The restore input of a partial sync from ``before`` to ``after`` (empty: nothing to
        do), as :meth:`sync` computes it; no root needed."""
        old = self._render_family(plan_ports(before, family), family)[1]
        return self._partial(after, family, old, changed)[0]

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        """Check for iptables-restore and every match and target the rules use."""
        base = self.tool(4)
        require_tools(self.name, [base, f"{base}-restore", f"{base}-save"], "iptables")
        if self.opts.conntrack_cleanup:
            require_tools(self.name, ["conntrack"], "conntrack")
        require_netns(self.name, self.opts.netns)
        self._probe_extensions()

    def _probe_extensions(self) -> None:
        probe = "LBCORE-PROBE"

        def attempt(rules: list[str]) -> str | None:
            text = "\n".join(["*nat", f":{probe} - [0:0]", *(f"-A {probe} {r}" for r in rules), "COMMIT", ""])
            try:
                self.runner.run([f"{self.tool(4)}-restore", "--noflush"], input=text)
                return None
            except RuleApplyError as exc:
                return str(exc)
            finally:
                self.runner.run(
                    [f"{self.tool(4)}-restore", "--noflush"],
                    input=f"*nat\n:{probe} - [0:0]\n-X {probe}\nCOMMIT\n",
                    check=False,
                )

        if attempt([rule for rule, _ in NEEDED_EXTENSIONS]) is None:
            return
        missing = [what for rule, what in NEEDED_EXTENSIONS if attempt([rule]) is not None]
        detail = ", ".join(missing) if missing else attempt([r for r, _ in NEEDED_EXTENSIONS])
        raise FrontendUnavailable(
            f"{self.name}: the kernel or iptables lacks: {detail}; load the modules "
            "(modprobe) or run as root"
        )

    def sync(self, snapshot: Snapshot, changed: frozenset[str]) -> None:
        """Apply ``snapshot``: a full restore the first time (and after a failure), then only the
        chains of ``changed`` services plus the dispatch chains when they differ."""
        node = (snapshot.node_name, snapshot.node_addresses)
        full = self._need_full or node != self._node
        self._need_full = True  # until this sync succeeds
        flows = []
        fresh: dict = {}
        for family in (4, 6):
            tool = self.tool(family)
            old = self._state.get(family)
            if full:
                plans, rendered = self._cached(snapshot, family, fresh)
                if family == 6 and not plans and old is None:
                    continue
                stale_nat, stale_filter, hooked = self._existing(tool)
                # a full sync also puts back jump rules someone removed
                missing = [hook for hook in HOOKS if (hook[0], hook_rule(hook[1], hook[2])) not in hooked]
                with paused_gc():
                    texts, state = self._render_family(
                        plans, family, stale_nat, stale_filter, chunk=self.opts.restore_chunk_chains,
                        rendered=rendered, hooks=missing,
                    )
            else:
                if old is None:
                    continue
                text, state = self._partial(snapshot, family, old, changed)
                texts = [text] if text else []
            self.last_restore_lines = sum(text.count("\n") for text in texts)
            for text in texts:
                self.runner.run([f"{tool}-restore", "--noflush"], input=text)
            if old is not None:
                if full:
                    flows.extend(stale_udp_flows(old.plans, state.plans))
                else:
                    keys = state.touched
                    flows.extend(stale_udp_flows(
                        {k: old.plans[k] for k in keys if k in old.plans},
                        {k: state.plans[k] for k in keys if k in state.plans},
                    ))
            self._state[family] = state
        self._node = node
        self._need_full = False
        if full:
            self.cache.entries = fresh
        if flows and self.opts.conntrack_cleanup:
            delete_flows(self.runner, flows)

    def check(self) -> str | None:
        """Whether the canary of each table (:data:`CANARY`) is still there: ``iptables -C``
        per table and family synced; None when it is, else what is missing."""
        for family in sorted(self._state):
            tool = self.tool(family)
            for table in ("nat", "filter"):
                proc = self.runner.run([tool, "-w", "5", "-t", table, "-C", CANARY, *CANARY_RULE], check=False)
                if proc.returncode != 0:
                    return f"{tool} {table} chain {CANARY} or its rule is gone ({proc.stderr.strip()[:200]})"
        return None

    def resync(self) -> None:
        """The next sync restores every chain and puts back missing jump rules."""
        self._need_full = True

    def _partial(
        self, snapshot: Snapshot, family: int, old: FamilyState, changed: frozenset[str]
    ) -> tuple[str, FamilyState]:
        renderer = RuleRenderer(self.opts, family)
        new_plans = {plan_key(p): p for p in plan_ports(snapshot, family, changed_port_keys(snapshot, changed))}
        old_keys = {k for service in changed for k in old.by_service.get(service, ())}
        state = FamilyState(plans=dict(old.plans), rules=dict(old.rules), by_service=dict(old.by_service))
        state.touched = old_keys | set(new_plans)
        for service in changed:
            state.by_service.pop(service, None)
        touched: dict[str, str] = {}
        gone: set[str] = set()
        dispatch_changed = False
        for key in old_keys - set(new_plans):
            gone.update(old.rules[key].chains)
            del state.plans[key]
            del state.rules[key]
            dispatch_changed = True
        for key, plan in new_plans.items():
            rules = renderer.port_rules(plan)
            before = old.rules.get(key)
            old_chains = before.chains if before is not None else {}
            gone.update(set(old_chains) - set(rules.chains))
            state.plans[key] = plan
            state.rules[key] = rules
            state.by_service.setdefault(plan.sp.service, []).append(key)
            touched.update((n, lines) for n, lines in rules.chains.items() if old_chains.get(n) != lines)
            if before is None or (rules.services, rules.nodeports, rules.reject) != (
                before.services, before.nodeports, before.reject
            ):
                dispatch_changed = True
        # names hash the service port, so only a changed port can take a removed name back
        gone -= {n for key in new_plans for n in state.rules[key].chains}
        nat: list[tuple[str, str | list[str]]] = list(touched.items())
        edits: dict[str, list[str]] = {"nat": [], "filter": []}
        if dispatch_changed:
            # the dispatch chains are edited, not rewritten: their per-port rules match disjoint
            # addresses and ports, so a removed rule is deleted (-D) and a new one inserted after
            # the head of LBCORE-SERVICES (-I; the tail's NodePort jumps stay last) or appended.
            # Rewriting LBCORE-SERVICES would flush and parse again one rule per service port.
            head = len(renderer.services_head()) + 1
            for key in sorted(old_keys | set(new_plans)):
                before, after = old.rules.get(key), state.rules.get(key)
                for attr, table, add in (("services", "nat", f"-I {SERVICES} {head} "),
                                          ("nodeports", "nat", f"-A {NODEPORTS} "),
                                          ("reject", "filter", f"-A {SERVICES} ")):
                    was = getattr(before, attr) if before is not None else ()
                    now = getattr(after, attr) if after is not None else ()
                    if was == now:
                        continue
                    kept = set(now)
                    edits[table].extend(["-D" + line[2:] for line in was if line not in kept])
                    kept = set(was)
                    edits[table].extend([add + line.split(" ", 2)[2] for line in now if line not in kept])
        if not nat and not edits["nat"] and not edits["filter"] and not gone:
            return "", state
        # chains are deleted after the rules that jumped to them were removed, in one commit
        return _restore_text(nat, [], delete_nat=gone, edits=edits), state

    def _existing(self, tool: str) -> tuple[set[str], set[str], set[tuple[str, str]]]:
        """``LBCORE-*`` chains present now in nat and filter (from an earlier run, perhaps), and
        the rules of built-in chains that jump to them, as (table, :func:`hook_rule` text)."""
        found: dict[str, set[str]] = {"nat": set(), "filter": set()}
        hooked: set[tuple[str, str]] = set()
        for table in found:
            proc = self.runner.run([f"{tool}-save", "-t", table], check=False)
            for line in proc.stdout.splitlines():
                if line.startswith(":" + OWN_PREFIX):
                    found[table].add(line[1:].split(" ", 1)[0])
                elif (line.startswith("-A ") and not line.startswith(f"-A {OWN_PREFIX}")
                      and f" -j {OWN_PREFIX}" in line):
                    hooked.add((table, line[3:]))
        return found["nat"], found["filter"], hooked

    def stop(self, keep: bool = False) -> None:
        """Remove the hook rules and every ``LBCORE-*`` chain, unless ``keep`` (or the
        ``keep_on_exit`` option) asks to leave them for a restart."""
        if keep or self.opts.keep_on_exit:
            return
        families = set(self._state) | {4}
        for family in sorted(families):
            tool = self.tool(family)
            for table, chain, spec in HOOKS:
                for _ in range(16):  # the same rule inserted twice by hand: remove each copy
                    if self.runner.run([tool, "-w", "5", "-t", table, "-D", chain, *spec], check=False).returncode:
                        break
            nat, filt, _ = self._existing(tool)
            for text in _deletion_texts(nat, filt, self.opts.restore_chunk_chains):
                self.runner.run([f"{tool}-restore", "--noflush"], input=text)
        self._state.clear()
        self._need_full = True


_DELETE_ORDER = ("LBCORE-SERVICES", "LBCORE-NODEPORTS", "LBCORE-EXT-", "LBCORE-SVC-", "LBCORE-SEP-")


def _deletion_texts(nat: set[str], filt: set[str], chunk: int) -> list[str]:
    """Restore inputs that delete ``nat`` and ``filt`` chains, ``chunk`` at a time (0: at once).

    Chains that jump go before the chains they jump to, so every transaction deletes only
    chains nothing left refers to.
    """

    def rank(name: str) -> tuple[int, str]:
        for i, prefix in enumerate(_DELETE_ORDER):
            if name.startswith(prefix):
                return i, name
        return len(_DELETE_ORDER), name

    ordered = sorted(nat, key=rank)
    if chunk <= 0 or len(ordered) <= chunk:
        return [_restore_text([], [], delete_nat=nat, delete_filter=filt)] if nat or filt else []
    texts = [_restore_text([], [], delete_filter=filt)] if filt else []
    for start in range(0, len(ordered), chunk):
        texts.append(_restore_text([], [], delete_nat=ordered[start : start + chunk]))
    return texts


def create(options: Mapping[str, Any], context: RuntimeContext) -> IptablesFrontend:
    return IptablesFrontend(options, context)


@hookimpl
def lbcore_register_frontends() -> Mapping[str, Callable[..., Any]]:
    """The ``iptables`` frontend."""
    return {"iptables": IptablesFrontend}
