"""Walk a packet through an iptables-restore rule set, without a kernel.

``trace(rules, packet)`` follows the packet through nat (PREROUTING or OUTPUT), then filter (INPUT,
FORWARD or OUTPUT) and nat POSTROUTING, the way netfilter would, and returns every possible
outcome with its probability: a ``statistic --mode random`` rule splits the walk in two, so a
service with three endpoints yields three outcomes of 1/3 each. ``recent`` lists (ClientIP
affinity) are an input and an output of the walk.

Only the matches and targets lbcore renders are understood; anything else raises
:class:`TraceError` rather than being skipped, so a rule the tracer cannot read never passes a
test by accident. Jump rules in built-in chains come from ``# lbcore-hook: TABLE CHAIN SPEC``
comment lines (how :meth:`IptablesFrontend.render` shows them) or from the rules themselves.
"""

from __future__ import annotations

import ipaddress
import shlex
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

BUILTIN = {
    "nat": ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"),
    "filter": ("INPUT", "FORWARD", "OUTPUT"),
}
HOOK_PREFIX = "# lbcore-hook: "
_BUILTIN_TARGETS = {"ACCEPT", "DROP", "REJECT", "RETURN", "DNAT", "SNAT", "MASQUERADE", "MARK"}


class TraceError(ValueError):
    """A rule set the tracer cannot read; the message names the line and the token."""


@dataclass(frozen=True)
class Packet:
    """The first packet of a connection (conntrack state NEW)."""

    src: str
    dst: str
    dport: int
    proto: str = "tcp"
    sport: int = 40000
    mark: int = 0


@dataclass(frozen=True)
class Outcome:
    """One way the packet can go, with its probability."""

    probability: float
    verdict: str  # ACCEPT | REJECT | DROP
    dnat: str | None  # "ip:port" after DNAT, else None
    masquerade: bool
    chains: tuple[str, ...]  # every user chain entered, in order
    recent: Mapping[str, frozenset[str]] = field(default_factory=dict)


@dataclass
class Rule:
    line: str
    matches: list[tuple[str, bool, tuple[str, ...]]]  # (option, negated, values)
    target: str | None
    goto: bool
    target_args: dict[str, str]


@dataclass
class _State:
    probability: float
    dst: str
    dport: int
    mark: int
    dnat: str | None
    masquerade: bool
    chains: list[str]
    recent: dict[str, frozenset[str]]

    def fork(self, probability: float) -> _State:
        return replace(self, probability=probability, chains=list(self.chains), recent=dict(self.recent))


_MATCH_OPTIONS = {
    "-p": 1, "--protocol": 1, "-s": 1, "--source": 1, "-d": 1, "--destination": 1,
    "--dport": 1, "--destination-port": 1, "--sport": 1, "--comment": 1, "--mode": 1,
    "--probability": 1, "--name": 1, "--rcheck": 0, "--update": 0, "--set": 0, "--seconds": 1,
    "--reap": 0, "--rsource": 0, "--mask": 1, "--dst-type": 1, "--src-type": 1, "--ctstate": 1,
    "--mark": 1, "-i": 1, "-o": 1,
}
_TARGET_OPTIONS = {
    "--to-destination": 1, "--or-mark": 1, "--xor-mark": 1, "--set-xmark": 1, "--reject-with": 1,
    "--random-fully": 0, "--random": 0,
}


def _parse_rule(tokens: list[str], line: str) -> Rule:
    matches: list[tuple[str, bool, tuple[str, ...]]] = []
    target: str | None = None
    goto = False
    args: dict[str, str] = {}
    negate = False
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if tok == "!":
            negate = True
            i += 1
            continue
        if tok == "-m":
            i += 2  # the match module is implied by its options
            continue
        if tok in ("-j", "-g"):
            target, goto = tokens[i + 1], tok == "-g"
            i += 2
            continue
        if target is not None and tok in _TARGET_OPTIONS:
            n = _TARGET_OPTIONS[tok]
            args[tok] = tokens[i + 1] if n else ""
            i += 1 + n
            continue
        if tok in _MATCH_OPTIONS:
            n = _MATCH_OPTIONS[tok]
            matches.append((tok, negate, tuple(tokens[i + 1 : i + 1 + n])))
            negate = False
            i += 1 + n
            continue
        raise TraceError(f"unknown option {tok!r} in rule: {line}")
    return Rule(line, matches, target, goto, args)


class RuleSet:
    """An iptables-restore text, parsed into tables of chains of rules."""

    def __init__(self, text: str = ""):
        self.tables: dict[str, dict[str, list[Rule]]] = {}
        self.hooks: list[tuple[str, str, list[str]]] = []
        if text:
            self.apply(text)

    def apply(self, text: str) -> RuleSet:
        """Load restore text as ``iptables-restore --noflush`` would: ``:CHAIN`` creates or
        flushes a chain, ``-X`` deletes one, chains not named keep their rules."""
        table: dict[str, list[Rule]] | None = None
        for raw in text.splitlines():
            line = raw.strip()
            if line.startswith(HOOK_PREFIX):
                tokens = shlex.split(line[len(HOOK_PREFIX) :])
                self._hook(tokens[0], tokens[1], tokens[2:])
                continue
            if not line or line.startswith("#"):
                continue
            if line.startswith("*"):
                table = self._table(line[1:])
            elif line == "COMMIT":
                self._check(table)
                table = None
            elif table is None:
                raise TraceError(f"rule outside a table: {line}")
            elif line.startswith(":"):
                table[line[1:].split()[0]] = []
            else:
                tokens = shlex.split(line) if '"' in line or "'" in line else line.split()
                if tokens[0] == "-X":
                    if tokens[1] not in table:
                        raise TraceError(f"-X of missing chain {tokens[1]!r}")
                    del table[tokens[1]]
                    continue
                if tokens[0] not in ("-A", "-I", "-D"):
                    raise TraceError(f"unknown command {tokens[0]!r}: {line}")
                if tokens[1] not in table:
                    raise TraceError(f"rule in undeclared chain {tokens[1]!r}: {line}")
                position = 0
                if tokens[0] == "-I" and tokens[2].isdigit():
                    # -I CHAIN N: the rule becomes the N-th; kept as the -A line a full render writes
                    position = int(tokens[2]) - 1
                    if position > len(table[tokens[1]]):
                        raise TraceError(f"-I position {tokens[2]} past the end of {tokens[1]!r}")
                    spec = line.split(" ", 3)[3]
                    line, tokens = f"-A {tokens[1]} {spec}", [tokens[0], tokens[1], *tokens[3:]]
                if tokens[0] == "-D":
                    # -D CHAIN spec: the first rule with that spec, or the commit fails
                    spec = line.split(" ", 2)[2]
                    rules = table[tokens[1]]
                    found = [i for i, r in enumerate(rules) if r.line.split(" ", 2)[2] == spec]
                    if not found:
                        raise TraceError(f"-D of a rule {tokens[1]!r} does not hold: {line}")
                    del rules[found[0]]
                    continue
                rule = _parse_rule(tokens[2:], line)
                if tokens[0] == "-I":
                    table[tokens[1]].insert(position, rule)
                else:
                    table[tokens[1]].append(rule)
        return self

    def _table(self, name: str) -> dict[str, list[Rule]]:
        table = self.tables.get(name)
        if table is None:
            table = self.tables[name] = {chain: [] for chain in BUILTIN.get(name, ())}
            for tname, chain, spec in self.hooks:
                if tname == name:
                    table[chain].insert(0, _parse_rule(spec, " ".join(spec)))
        return table

    def _hook(self, table: str, chain: str, spec: list[str]) -> None:
        self.hooks.append((table, chain, spec))
        if table in self.tables:
            self.tables[table].setdefault(chain, []).insert(0, _parse_rule(spec, " ".join(spec)))

    def _check(self, table: dict[str, list[Rule]] | None) -> None:
        """Every jump goes to a chain that exists, as the kernel insists at commit."""
        for chain, rules in (table or {}).items():
            for rule in rules:
                t = rule.target
                if t and t not in _BUILTIN_TARGETS and t not in table:  # type: ignore[operator]
                    raise TraceError(f"{chain}: jump to missing chain {t!r}")

    def dump(self) -> dict[str, dict[str, list[str]]]:
        """Table -> chain -> rule lines (without their ``-A CHAIN``), for comparisons."""
        return {
            name: {chain: [r.line.split(" ", 2)[2] if r.line.startswith("-A ") else r.line for r in rules] for chain, rules in table.items()}
            for name, table in self.tables.items()
        }

    def chains(self, table: str) -> dict[str, list[Rule]]:
        return self.tables.get(table, {})


def _in(addr: str, spec: str) -> bool:
    return ipaddress.ip_address(addr) in ipaddress.ip_network(spec, strict=False)


class _Walker:
    def __init__(self, rules: RuleSet, packet: Packet, local: frozenset[str]):
        self.rules = rules
        self.packet = packet
        self.local = local

    def match(self, state: _State, opt: str, values: tuple[str, ...]) -> bool | float:
        p = self.packet
        if opt in ("-p", "--protocol"):
            return values[0] == p.proto
        if opt in ("-s", "--source"):
            return any(_in(p.src, v) for v in values[0].split(","))
        if opt in ("-d", "--destination"):
            return any(_in(state.dst, v) for v in values[0].split(","))
        if opt in ("--dport", "--destination-port"):
            return int(values[0]) == state.dport
        if opt == "--sport":
            return int(values[0]) == p.sport
        if opt == "--dst-type":
            return self._addrtype(state.dst, values[0])
        if opt == "--src-type":
            return self._addrtype(p.src, values[0])
        if opt == "--ctstate":
            return "NEW" in values[0].split(",")
        if opt == "--mark":
            value, _, mask = values[0].partition("/")
            m = int(mask, 0) if mask else 0xFFFFFFFF
            return state.mark & m == int(value, 0)
        if opt == "--probability":
            return float(values[0])
        if opt in ("-i", "-o"):
            raise TraceError(f"interface matches are not traced: {opt}")
        return True  # --comment, --mode, and the recent options handled by the caller

    def _addrtype(self, addr: str, kind: str) -> bool:
        if kind != "LOCAL":
            raise TraceError(f"addrtype {kind!r} is not traced")
        return addr in self.local or addr.startswith("127.")

    def rule_matches(self, state: _State, rule: Rule) -> float:
        """The probability (0, 1 or in between) that ``rule`` matches in ``state``."""
        probability = 1.0
        opts = {opt for opt, _, _ in rule.matches}
        for opt, negated, values in rule.matches:
            result = self.match(state, opt, values)
            if isinstance(result, float) and not isinstance(result, bool):
                probability *= (1.0 - result) if negated else result
            elif bool(result) == negated:
                return 0.0
        if "--rcheck" in opts or "--update" in opts:
            name = next(v[0] for o, _, v in rule.matches if o == "--name")
            if self.packet.src not in state.recent.get(name, frozenset()):
                return 0.0
        return probability

    def run_chain(self, table: str, chain: str, state: _State, depth: int = 0) -> list[tuple[_State, str]]:
        """Outcomes of ``chain``: (state, "RETURN" | terminal verdict)."""
        if depth > 64:
            raise TraceError(f"{table}: chains nest deeper than 64 at {chain!r}")
        rules = self.rules.chains(table).get(chain)
        if rules is None:
            raise TraceError(f"{table}: no chain {chain!r}")
        if chain not in BUILTIN.get(table, ()):
            state.chains.append(chain)
        return self._from(table, rules, 0, state, depth)

    def _from(self, table: str, rules: list[Rule], start: int, state: _State, depth: int) -> list[tuple[_State, str]]:
        results: list[tuple[_State, str]] = []
        for index in range(start, len(rules)):
            rule = rules[index]
            p = self.rule_matches(state, rule)
            if p <= 0.0:
                continue
            if p < 1.0:
                # the walk splits: the rest of the chain for the packets this rule lets by
                miss = state.fork(state.probability * (1.0 - p))
                results.extend(self._from(table, rules, index + 1, miss, depth))
                state = state.fork(state.probability * p)
            for after, verdict in self._apply(table, rule, state, depth):
                if verdict == "CONTINUE":
                    results.extend(self._from(table, rules, index + 1, after, depth))
                else:
                    results.append((after, verdict))
            return results
        results.append((state, "RETURN"))
        return results

    def _apply(self, table: str, rule: Rule, state: _State, depth: int) -> list[tuple[_State, str]]:
        if any(o == "--set" for o, _, _ in rule.matches):
            name = next(v[0] for o, _, v in rule.matches if o == "--name")
            state.recent[name] = state.recent.get(name, frozenset()) | {self.packet.src}
        target = rule.target
        if target is None:
            return [(state, "CONTINUE")]
        if target == "RETURN":
            return [(state, "RETURN")]
        if target in ("ACCEPT", "DROP", "REJECT"):
            return [(state, target)]
        if target == "DNAT":
            dest = rule.target_args["--to-destination"]
            host, _, port = dest.rpartition(":")
            state.dst = host.strip("[]")
            state.dport = int(port) if port else state.dport
            state.dnat = f"{state.dst}:{state.dport}"
            return [(state, "ACCEPT")]
        if target == "MASQUERADE":
            state.masquerade = True
            return [(state, "ACCEPT")]
        if target == "MARK":
            if "--or-mark" in rule.target_args:
                state.mark |= int(rule.target_args["--or-mark"], 0)
            elif "--xor-mark" in rule.target_args:
                state.mark ^= int(rule.target_args["--xor-mark"], 0)
            elif "--set-xmark" in rule.target_args:
                value, _, mask = rule.target_args["--set-xmark"].partition("/")
                m = int(mask, 0) if mask else 0xFFFFFFFF
                state.mark = (state.mark & ~m) ^ int(value, 0)
            return [(state, "CONTINUE")]
        out: list[tuple[_State, str]] = []
        for after, verdict in self.run_chain(table, target, state, depth + 1):
            if verdict == "RETURN":
                out.append((after, "RETURN" if rule.goto else "CONTINUE"))
            else:
                out.append((after, verdict))
        return out

    def run_builtin(self, table: str, chain: str, states: list[_State]) -> list[tuple[_State, str]]:
        out: list[tuple[_State, str]] = []
        for state in states:
            if chain not in self.rules.chains(table):
                out.append((state, "ACCEPT"))
                continue
            for after, verdict in self.run_chain(table, chain, state):
                out.append((after, "ACCEPT" if verdict == "RETURN" else verdict))
        return out


def trace(
    rules: str | RuleSet,
    packet: Packet,
    origin: str = "PREROUTING",
    local_addresses: Iterable[str] = (),
    recent: Mapping[str, Iterable[str]] | None = None,
) -> list[Outcome]:
    """Every outcome of ``packet`` entering at ``origin`` (PREROUTING: from another host; OUTPUT:
    from a local process), merged by (verdict, dnat, masquerade), most likely first.

    :param local_addresses: the node's addresses (``addrtype LOCAL``); 127/8 always is.
    :param recent: ``recent`` lists already holding client addresses (ClientIP affinity).
    """
    if origin not in ("PREROUTING", "OUTPUT"):
        raise ValueError(f"origin must be PREROUTING or OUTPUT, not {origin!r}")
    ruleset = rules if isinstance(rules, RuleSet) else RuleSet(rules)
    local = frozenset(local_addresses)
    walker = _Walker(ruleset, packet, local)
    start = _State(
        1.0, packet.dst, packet.dport, packet.mark, None, False, [],
        {k: frozenset(v) for k, v in (recent or {}).items()},
    )
    finished: list[tuple[_State, str]] = []
    nat = walker.run_builtin("nat", origin, [start])
    alive: list[_State] = []
    for state, verdict in nat:
        (alive.append(state) if verdict == "ACCEPT" else finished.append((state, verdict)))
    # after DNAT the packet is routed anew: to this node (INPUT) or onwards (FORWARD)
    filtered: list[tuple[_State, str]] = []
    for state in alive:
        if origin == "OUTPUT":
            chain = "OUTPUT"
        else:
            chain = "INPUT" if walker._addrtype(state.dst, "LOCAL") else "FORWARD"
        filtered.extend(walker.run_builtin("filter", chain, [state]))
    for state, verdict in filtered:
        if verdict != "ACCEPT":
            finished.append((state, verdict))
            continue
        if walker._addrtype(state.dst, "LOCAL") and origin == "PREROUTING":
            finished.append((state, "ACCEPT"))
            continue
        finished.extend(walker.run_builtin("nat", "POSTROUTING", [state]))
    merged: dict[tuple[str, str | None, bool], Outcome] = {}
    for state, verdict in finished:
        verdict = "ACCEPT" if verdict == "RETURN" else verdict
        key = (verdict, state.dnat, state.masquerade)
        prev = merged.get(key)
        if prev is None:
            merged[key] = Outcome(state.probability, verdict, state.dnat, state.masquerade, tuple(state.chains), state.recent)
        else:
            merged[key] = replace(prev, probability=prev.probability + state.probability)
    return sorted(merged.values(), key=lambda o: (-o.probability, o.dnat or ""))
