"""The routing table: which backends serve an HTTP(S) request, by host name and path, from
OpenShift Routes and Kubernetes Ingresses, in one place.

The route frontend consumes only this table; the route status controller asks the same
conflict rule (:func:`claims_outcome`) which Route or Ingress path holds a host. Nothing else
decides who owns a host, how paths match, or which endpoints a routed service port offers.

The shape (plain frozen dataclasses of ``str``, ``int``, ``bool``, ``bytes`` and tuples, so that a
compiled engine can copy it into its own structures)::

    RoutingTable
        version: int                       the snapshot's version it was built from
        hosts: tuple[VirtualHost, ...]     sorted by name: exact names, "*.domain" wildcards,
                                           and "" (host-less Ingress rules, defaultBackend)
        rejected: tuple[Rejection, ...]    what lost a conflict (kind, namespace, name, host,
                                           path, reason "HostAlreadyClaimed", message)
        host(name) -> VirtualHost | None   the entry of exactly that name
        lookup(host, path, tls) -> PathRule | None
                                           the reference lookup (below); tls=True for a request
                                           that arrived over TLS ended here

    VirtualHost
        name: str                "www.example.com", "*.example.com" (one more label, any), ""
        wildcard: bool           name starts with "*."
        http: tuple[PathRule, ...]     rules for the plain-HTTP listener, in match order
        https: tuple[PathRule, ...]    rules once TLS ended here (edge, reencrypt), match order
        passthrough: PathRule | None   the HTTPS listener splices a connection whose SNI is
                                       this name to these backends, unread (no path)
        certificate: Certificate | None
                                       what SNI presents for this name when TLS ends here
                                       (None: the frontend's default certificate)

    PathRule
        path: str                "" and "/" match every path
        match: str               "Exact" (path == rule.path) or "Prefix": rule.path, or
                                 rule.path + "/..." (rule.path + "..." when it ends in "/")
        redirect: bool           http list only: answer 302 to https://host/path instead
        reencrypt: bool          TLS from the frontend to the pod
        destination_ca: bytes    reencrypt: PEM the pod's certificate is verified against
                                 (b"": the system's trust store)
        backends: tuple[WeightedBackend, ...]
                                 weighted; a weight 0 takes no request; none with an
                                 endpoint: answer 503
        source: str              "Route namespace/name" or "Ingress namespace/name"

    WeightedBackend
        service: str             "namespace/name"
        port_key: str            the service port's ServicePortInfo.key ("ns/name:port"),
                                 the unit the pick core (lbcore.Picker) works on; "" when the
                                 service or the port does not exist
        weight: int              0..256 (Routes); 100 for an Ingress backend
        endpoints: tuple[EndpointInfo, ...]
                                 lbcore.model.topology.endpoints_for(port): the endpoints that
                                 take new connections, as the socket frontend gets them
        session_affinity: str    "None" | "ClientIP"
        affinity_timeout: int    seconds, for ClientIP

    Certificate
        chain: bytes             PEM: the certificate, then the route's caCertificate
        key: bytes               PEM private key

The lookup, once (:meth:`RoutingTable.lookup`, which the frontend mirrors): the ``Host`` header
or the SNI name, lower case, without a port or a trailing dot, picks the virtual host of that
exact name, then the wildcard ``*.`` + (the name without its first label), then ``""``; in that
order the first rule whose path matches wins. Rules are kept in match order: longest path
first, an ``Exact`` rule before a ``Prefix`` rule of the same path, then the older object first.
No rule: 404.

Where a rule goes, by the object's TLS (Routes: ``spec.tls``; Ingresses: a host listed in
``spec.tls[].hosts``, served edge with the Secret ``secretName`` of type kubernetes.io/tls, plain
HTTP redirected):

- no TLS: ``http`` only;
- edge, reencrypt: ``https``; and ``http`` as well with ``insecureEdgeTerminationPolicy: Allow``,
  as a redirect with ``Redirect``, not at all with ``None`` (or unset);
- passthrough: the host's ``passthrough``; plain HTTP redirected with ``Redirect``.

The conflict rule (:func:`claims_outcome`), OpenShift's router with its default namespace
ownership check, for Routes and Ingress paths alike: claims are taken oldest first (creation
time, then uid). A claim is refused (``HostAlreadyClaimed``) when an older admitted claim on the
same host is in another namespace (the oldest claimant's namespace owns the host), when an older
one in the same namespace has the same path (and path type; "" and "/" are one), or when either of two TLS claims
on the host is passthrough; a wildcard claim (``wildcardPolicy: Subdomain``, an Ingress host
``*.domain``) is refused when an older claim in another namespace holds the domain or a host in
it, and an exact claim when an older wildcard of another namespace holds its domain. Refused
claims serve nothing.

An Ingress is served when its ``spec.ingressClassName`` (or the annotation
``kubernetes.io/ingress.class``) names the class the table is built for (``lbcore``), or, with
``default_class=True``, when it names none.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from lbcore.model.objects import TLS_SECRET_TYPE, Ingress, IngressBackend, Route, Secret
from lbcore.model.snapshot import EndpointInfo, ServicePortInfo, Snapshot
from lbcore.model.topology import endpoints_for

__all__ = [
    "WeightedBackend",
    "Certificate",
    "Claim",
    "DEFAULT_INGRESS_CLASS",
    "PathRule",
    "Rejection",
    "RoutingTable",
    "VirtualHost",
    "claims_outcome",
    "ingress_is_served",
    "normalize_host",
    "path_matches",
    "routing_table",
]

DEFAULT_INGRESS_CLASS = "lbcore"
HOST_ALREADY_CLAIMED = "HostAlreadyClaimed"
INGRESS_WEIGHT = 100


# --- the shape -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Certificate:
    """What SNI presents for a host: a PEM chain (leaf first) and its private key."""

    chain: bytes
    key: bytes

    def __repr__(self) -> str:  # never print a private key
        return f"Certificate(chain={len(self.chain)} bytes, key=<redacted>)"


@dataclass(frozen=True, slots=True)
class WeightedBackend:
    """One weighted service port of a rule, with the endpoints that take new connections."""

    service: str
    port_key: str
    weight: int
    endpoints: tuple[EndpointInfo, ...] = ()
    session_affinity: str = "None"
    affinity_timeout: int = 10800


@dataclass(frozen=True, slots=True)
class PathRule:
    """A path of a virtual host and what serves it (see the module for each field)."""

    path: str
    match: str  # "Exact" | "Prefix"
    backends: tuple[WeightedBackend, ...]
    source: str
    redirect: bool = False
    reencrypt: bool = False
    destination_ca: bytes = b""

    def matches(self, path: str) -> bool:
        """Whether a request path (no query) falls under this rule."""
        return path_matches(self.path, self.match, path)


@dataclass(frozen=True, slots=True)
class VirtualHost:
    """Everything served under one host name (exact, ``*.domain``, or ``""`` for any)."""

    name: str
    http: tuple[PathRule, ...] = ()
    https: tuple[PathRule, ...] = ()
    passthrough: PathRule | None = None
    certificate: Certificate | None = None

    @property
    def wildcard(self) -> bool:
        """``*.domain``: every name of one more label in ``domain``."""
        return self.name.startswith("*.")


@dataclass(frozen=True, slots=True)
class Rejection:
    """A Route, or a path of an Ingress, that lost a conflict: why, in OpenShift's words."""

    kind: str  # "Route" | "Ingress"
    namespace: str
    name: str
    host: str
    path: str
    reason: str
    message: str


@dataclass(frozen=True, slots=True)
class RoutingTable:
    """Every virtual host of the routes and ingresses of one snapshot (see the module)."""

    version: int = 0
    hosts: tuple[VirtualHost, ...] = ()
    rejected: tuple[Rejection, ...] = ()

    def host(self, name: str) -> VirtualHost | None:
        """The virtual host of exactly ``name`` (``"*.example.com"`` for a wildcard)."""
        for vh in self.hosts:
            if vh.name == name:
                return vh
        return None

    def candidates(self, host: str) -> list[VirtualHost]:
        """The virtual hosts a request for ``host`` looks in, in order: exact, wildcard, any."""
        name = normalize_host(host)
        names = [name]
        if "." in name:
            names.append("*." + name.split(".", 1)[1])
        names.append("")
        by_name = {vh.name: vh for vh in self.hosts}
        return [by_name[n] for n in dict.fromkeys(names) if n in by_name]

    def lookup(self, host: str, path: str, tls: bool = False) -> PathRule | None:
        """The rule that serves ``path`` on ``host`` (a ``Host`` header or an SNI name), over
        TLS ended here (``tls``) or plain HTTP; None: 404."""
        path = path.split("?", 1)[0]
        for vh in self.candidates(host):
            for rule in vh.https if tls else vh.http:
                if rule.matches(path):
                    return rule
        return None

    def passthrough(self, server_name: str) -> PathRule | None:
        """The passthrough rule an SNI name picks (exact name, then its wildcard), or None."""
        for vh in self.candidates(server_name):
            if vh.name and vh.passthrough is not None:
                return vh.passthrough
        return None


def normalize_host(host: str) -> str:
    """A ``Host`` header or SNI name as the table keys it: lower case, no port, no final dot."""
    host = host.strip().lower()
    if host.startswith("["):  # an IPv6 literal never names a route; keep it whole
        return host.split("]", 1)[0] + "]"
    return host.rsplit(":", 1)[0].rstrip(".") if ":" in host else host.rstrip(".")


def path_matches(rule_path: str, match: str, path: str) -> bool:
    """Whether request ``path`` falls under a rule of ``rule_path`` and ``match``."""
    if match == "Exact":
        return path == rule_path
    if rule_path in ("", "/") or path == rule_path:
        return True
    return path.startswith(rule_path if rule_path.endswith("/") else rule_path + "/")


# --- claims and the conflict rule ------------------------------------------------------------

_NEVER = _dt.datetime.max.replace(tzinfo=_dt.UTC)


@dataclass(frozen=True, slots=True)
class Claim:
    """What one Route, or one path of an Ingress, asks for: a host (or a wildcard domain) and
    a path, with what orders it (age) and what the conflict rule compares."""

    kind: str
    namespace: str
    name: str
    uid: str
    created: _dt.datetime
    host: str  # "" for every host (an Ingress rule without host, a defaultBackend)
    path: str
    match: str  # "Exact" | "Prefix"
    wildcard: bool  # claims the domain of ``host`` (Subdomain, or an Ingress "*.domain")
    tls: str  # "" | "edge" | "passthrough" | "reencrypt"
    index: int = 0  # which path of an Ingress: rule * 10_000 + path; -1 the defaultBackend

    @property
    def order(self) -> tuple[_dt.datetime, str, str, str, str, int]:
        """Oldest first: creation time, then uid (OpenShift's ``RouteLessThan``)."""
        return (self.created, self.uid, self.kind, self.namespace, self.name, self.index)

    @property
    def path_key(self) -> tuple[str, str]:
        """What two claims of one host must not share: the path and how it matches ("" and
        "/" are one path: both match every request)."""
        if self.match == "Prefix" and self.path in ("", "/"):
            return "", "Prefix"
        return self.path, self.match

    @property
    def domain(self) -> str:
        """The domain a wildcard claims (``example.com`` for ``www.example.com``)."""
        if self.host.startswith("*."):  # an Ingress host names its wildcard
            return self.host[2:]
        return self.host.split(".", 1)[1] if self.wildcard and "." in self.host else self.host

    @property
    def vhost(self) -> str:
        """The virtual host its rules go to."""
        return f"*.{self.domain}" if self.wildcard else self.host


def _route_claim(route: Route) -> Claim:
    return Claim("Route", route.namespace, route.name, route.uid, route.created or _NEVER,
                 route.host, route.path, "Prefix", route.wildcard_policy == "Subdomain",
                 route.tls.termination if route.tls is not None else "")


def _ingress_path(path: str, path_type: str) -> tuple[str, str]:
    if path_type == "Exact":
        return path, "Exact"
    stripped = path.rstrip("/")  # Prefix "/foo/" matches "/foo" too, as Kubernetes says
    return stripped, "Prefix"


def _ingress_tls_hosts(ing: Ingress) -> dict[str, str]:
    """host -> secret name, for every host an Ingress serves over TLS ("*": all its hosts)."""
    hosts: dict[str, str] = {}
    for entry in ing.tls:
        for host in entry.hosts or ("*",):
            hosts.setdefault(host.lower(), entry.secret_name)
    return hosts


def _ingress_claims(ing: Ingress) -> list[tuple[Claim, IngressBackend | None]]:
    tls_hosts = _ingress_tls_hosts(ing)
    created = ing.created or _NEVER
    out = []
    for i, rule in enumerate(ing.rules):
        host = rule.host.lower()
        tls = "edge" if host in tls_hosts or ("*" in tls_hosts and host) else ""
        for j, entry in enumerate(rule.paths):
            path, match = _ingress_path(entry.path, entry.path_type)
            out.append((Claim("Ingress", ing.namespace, ing.name, ing.uid, created, host, path,
                              match, host.startswith("*."), tls, i * 10_000 + j),
                        entry.backend))
    if ing.default_backend is not None:
        out.append((Claim("Ingress", ing.namespace, ing.name, ing.uid, created, "", "",
                          "Prefix", False, "", -1), ing.default_backend))
    return out


def ingress_is_served(ing: Ingress, ingress_class: str = DEFAULT_INGRESS_CLASS,
                      default_class: bool = False) -> bool:
    """Whether an Ingress is this class's to serve (see the module)."""
    if ing.ingress_class is None:
        return default_class
    return ing.ingress_class == ingress_class


def _owner_word(claim: Claim) -> str:
    return "route" if claim.kind == "Route" else "ingress"


def _conflict(claim: Claim, hosts: Mapping[str, list[Claim]],
              wildcards: Mapping[str, list[Claim]]) -> str | None:
    """Why ``claim`` cannot be admitted beside the older admitted ones; None: it can."""
    if claim.wildcard:
        for older in wildcards.get(claim.domain, ()):
            if older.namespace != claim.namespace:
                return f"a route in another namespace holds host {claim.host}"
            if older.path_key == claim.path_key:
                return (f"wildcard {_owner_word(older)} {older.namespace}/{older.name} has "
                        f"host *.{claim.domain}, blocking {claim.host}")
        for host, claims in hosts.items():
            if host and "." in host and host.split(".", 1)[1] == claim.domain:
                if any(c.namespace != claim.namespace for c in claims):
                    return f"a route in another namespace holds host {claim.host}"
        return None
    older_claims = hosts.get(claim.host, [])
    if older_claims and older_claims[0].namespace != claim.namespace:
        return (f"a route in another namespace holds {claim.host or '*'} and is older than "
                f"{claim.name}")
    for older in older_claims:
        same_path = older.path_key == claim.path_key
        passthrough = older.tls and claim.tls and "passthrough" in (older.tls, claim.tls)
        if same_path or passthrough:
            return (f"{_owner_word(older)} {older.name} already exposes "
                    f"{claim.host or '*'} and is older")
    domain = claim.host.split(".", 1)[1] if "." in claim.host else None
    for older in wildcards.get(domain, ()) if domain else ():
        if older.namespace != claim.namespace:
            return f"a route in another namespace holds host {claim.host}"
    return None


def claims_outcome(claims: Iterable[Claim]) -> tuple[list[Claim], list[Rejection]]:
    """The conflict rule (see the module): the admitted claims, oldest first, and a
    rejection for each refused one. The outcome depends on the claims alone, never on the
    order they are given in."""
    hosts: dict[str, list[Claim]] = {}
    wildcards: dict[str, list[Claim]] = {}
    admitted: list[Claim] = []
    rejected: list[Rejection] = []
    for claim in sorted(claims, key=lambda c: c.order):
        problem = _conflict(claim, hosts, wildcards)
        if problem is not None:
            rejected.append(Rejection(claim.kind, claim.namespace, claim.name, claim.host,
                                      claim.path, HOST_ALREADY_CLAIMED, problem))
            continue
        admitted.append(claim)
        if claim.wildcard:
            wildcards.setdefault(claim.domain, []).append(claim)
        else:
            hosts.setdefault(claim.host, []).append(claim)
    return admitted, rejected


def claims_of(routes: Iterable[Route], ingresses: Iterable[Ingress],
              ingress_class: str = DEFAULT_INGRESS_CLASS,
              default_class: bool = False) -> list[Claim]:
    """Every claim of ``routes`` (with a host) and of the served ``ingresses``."""
    claims = [_route_claim(r) for r in routes if r.host]
    for ing in ingresses:
        if ingress_is_served(ing, ingress_class, default_class):
            claims.extend(c for c, _ in _ingress_claims(ing))
    return claims


# --- building the table ----------------------------------------------------------------------


def _tcp_ports(snapshot: Snapshot, service: str) -> list[ServicePortInfo]:
    return [sp for sp in snapshot.ports_of(service) if sp.protocol == "TCP"]


def _route_port(ports: list[ServicePortInfo], target: int | str | None) -> ServicePortInfo | None:
    """The service port a Route's ``spec.port.targetPort`` names: a port name, or a number the
    endpoints listen on (else the service port of that number); unset: the first port."""
    if not ports:
        return None
    if target is None:
        return ports[0]
    if isinstance(target, str):
        return next((sp for sp in ports if sp.port_name == target), None)
    return next((sp for sp in ports if any(ep.port == target for ep in sp.endpoints)),
                next((sp for sp in ports if sp.port == target), None))


def _ingress_port(ports: list[ServicePortInfo], backend: IngressBackend) -> ServicePortInfo | None:
    if backend.port_name:
        return next((sp for sp in ports if sp.port_name == backend.port_name), None)
    return next((sp for sp in ports if sp.port == backend.port_number), None)


def _backend(snapshot: Snapshot, service: str, weight: int,
             sp: ServicePortInfo | None) -> WeightedBackend:
    if sp is None:
        return WeightedBackend(service, "", weight)
    return WeightedBackend(service, sp.key, weight, endpoints_for(sp, "internal", snapshot.node_name),
                   sp.session_affinity, sp.affinity_timeout)


def _route_backends(snapshot: Snapshot, route: Route) -> tuple[WeightedBackend, ...]:
    out = []
    for ref in route.backends:
        service = f"{route.namespace}/{ref.name}"
        out.append(_backend(snapshot, service, ref.weight,
                            _route_port(_tcp_ports(snapshot, service), route.target_port)))
    return tuple(out)


@dataclass
class _HostRules:
    """A virtual host while it is built: rules with the order of the claim that made them."""

    http: list[tuple[Claim, PathRule]]
    https: list[tuple[Claim, PathRule]]
    passthrough: PathRule | None = None
    certificate: Certificate | None = None


def _pem(text: str) -> bytes:
    text = text.strip()
    return (text + "\n").encode() if text else b""


def _add_route(vh: _HostRules, claim: Claim, route: Route, backends: tuple[WeightedBackend, ...]) -> None:
    source = f"Route {route.namespace}/{route.name}"
    rule = PathRule(route.path, "Prefix", backends, source)
    tls = route.tls
    if tls is None:
        vh.http.append((claim, rule))
        return
    policy = tls.insecure_edge_termination_policy
    if tls.termination == "passthrough":
        vh.passthrough = rule
        if policy == "Redirect":
            vh.http.append((claim, PathRule(route.path, "Prefix", (), source, redirect=True)))
        return
    reencrypt = tls.termination == "reencrypt"
    secure = PathRule(route.path, "Prefix", backends, source, reencrypt=reencrypt,
                      destination_ca=_pem(tls.destination_ca_certificate) if reencrypt else b"")
    vh.https.append((claim, secure))
    if policy == "Allow":
        vh.http.append((claim, secure))
    elif policy == "Redirect":
        vh.http.append((claim, PathRule(route.path, "Prefix", (), source, redirect=True)))
    if vh.certificate is None and tls.certificate and tls.key:
        vh.certificate = Certificate(_pem(tls.certificate) + _pem(tls.ca_certificate),
                                     _pem(tls.key))


def _secret_certificate(secrets: Mapping[str, Secret], namespace: str,
                        name: str) -> Certificate | None:
    secret = secrets.get(f"{namespace}/{name}")
    if secret is None or secret.type != TLS_SECRET_TYPE:
        return None
    chain, key = secret.data.get("tls.crt"), secret.data.get("tls.key")
    return Certificate(chain, key) if chain and key else None


def _add_ingress_path(vh: _HostRules, claim: Claim, ing: Ingress, backend: IngressBackend | None,
                      snapshot: Snapshot, secrets: Mapping[str, Secret]) -> None:
    source = f"Ingress {ing.namespace}/{ing.name}"
    backends: tuple[WeightedBackend, ...] = ()
    if backend is not None:
        service = f"{ing.namespace}/{backend.service}"
        sp = _ingress_port(_tcp_ports(snapshot, service), backend)
        backends = (_backend(snapshot, service, INGRESS_WEIGHT, sp),)
    rule = PathRule(claim.path, claim.match, backends, source)
    if not claim.tls:
        vh.http.append((claim, rule))
        return
    vh.https.append((claim, rule))
    vh.http.append((claim, PathRule(claim.path, claim.match, (), source, redirect=True)))
    if vh.certificate is None:
        tls_hosts = _ingress_tls_hosts(ing)
        secret = tls_hosts.get(claim.host, tls_hosts.get("*", ""))
        if secret:
            vh.certificate = _secret_certificate(secrets, ing.namespace, secret)


def _match_order(item: tuple[Claim, PathRule]) -> tuple[Any, ...]:
    claim, rule = item
    return (-len(rule.path), rule.match != "Exact", claim.order)


def routing_table(snapshot: Snapshot, ingress_class: str = DEFAULT_INGRESS_CLASS,
                  default_class: bool = False) -> RoutingTable:
    """The routing table of ``snapshot``'s Routes, Ingresses (of ``ingress_class``), Secrets
    and service ports (see the module)."""
    routes = {(r.namespace, r.name): r for r in snapshot.routes.values()}
    ingresses = {(i.namespace, i.name): i for i in snapshot.ingresses.values()
                 if ingress_is_served(i, ingress_class, default_class)}
    ingress_backends: dict[tuple[str, str, int], IngressBackend | None] = {}
    claims = [_route_claim(r) for r in routes.values() if r.host]
    for ing in ingresses.values():
        for claim, backend in _ingress_claims(ing):
            claims.append(claim)
            ingress_backends[(ing.namespace, ing.name, claim.index)] = backend
    admitted, rejected = claims_outcome(claims)
    building: dict[str, _HostRules] = {}
    for claim in admitted:
        vh = building.setdefault(claim.vhost, _HostRules([], []))
        if claim.kind == "Route":
            route = routes[(claim.namespace, claim.name)]
            _add_route(vh, claim, route, _route_backends(snapshot, route))
        else:
            ing = ingresses[(claim.namespace, claim.name)]
            _add_ingress_path(vh, claim, ing,
                              ingress_backends[(claim.namespace, claim.name, claim.index)],
                              snapshot, snapshot.secrets)
    hosts = tuple(
        VirtualHost(name, tuple(r for _, r in sorted(vh.http, key=_match_order)),
                    tuple(r for _, r in sorted(vh.https, key=_match_order)),
                    vh.passthrough, vh.certificate)
        for name, vh in sorted(building.items()))
    return RoutingTable(snapshot.version, hosts, tuple(rejected))
