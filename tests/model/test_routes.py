"""The routing table: the conflict rule (older wins, HostAlreadyClaimed) for Routes and Ingresses
alike, longest-prefix and exact matching, wildcards, where TLS puts each rule, and backends
carrying the endpoint rule's endpoints."""

from __future__ import annotations

import base64
import itertools

import pytest

from lbcore.model.routes import Claim, RoutingTable, claims_outcome, routing_table
from lbcore.model.service_table import ServiceTable
from tests.model.test_route_validation import make_pair

_uids = itertools.count(1)


def _meta(name: str, ns: str, age: int) -> dict:
    """Metadata of an object created ``age`` minutes after 10:00 (bigger: younger)."""
    return {"name": name, "namespace": ns, "uid": f"uid-{next(_uids):04d}",
            "creationTimestamp": f"2026-12-07T10:{age:02d}:00Z", "resourceVersion": "1"}


def route(name, host, path="", ns="shop", age=0, to="web", weight=100, alternates=(),
          tls=None, wildcard="None", target_port=None) -> dict:
    spec = {"host": host, "path": path, "wildcardPolicy": wildcard,
            "to": {"kind": "Service", "name": to, "weight": weight},
            "alternateBackends": [{"kind": "Service", "name": n, "weight": w} for n, w in alternates]}
    if tls:
        spec["tls"] = tls
    if target_port is not None:
        spec["port"] = {"targetPort": target_port}
    return {"apiVersion": "route.openshift.io/v1", "kind": "Route",
            "metadata": _meta(name, ns, age), "spec": spec}


def ingress(name, rules=(), ns="shop", age=0, cls="lbcore", default=None, tls=()) -> dict:
    spec: dict = {"rules": [
        {"host": host, "http": {"paths": [
            {"path": path, "pathType": kind, "backend": {"service": {"name": svc, "port": {"number": 80}}}}
            for path, kind, svc in paths]}} for host, paths in rules]}
    if cls:
        spec["ingressClassName"] = cls
    if default:
        spec["defaultBackend"] = {"service": {"name": default, "port": {"number": 80}}}
    if tls:
        spec["tls"] = list(tls)
    return {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
            "metadata": _meta(name, ns, age), "spec": spec}


def service(name, ns="shop", ip="10.96.0.10", affinity="None", ports=((80, 8080, ""),)) -> dict:
    spec = {"clusterIP": ip, "sessionAffinity": affinity,
            "ports": [{"name": pn, "port": p, "targetPort": t, "protocol": "TCP"} for p, t, pn in ports]}
    return {"apiVersion": "v1", "kind": "Service", "metadata": _meta(name, ns, 0), "spec": spec}


def endpoint_slice(svc, ips, ns="shop", port=8080, port_name="", ready=True) -> dict:
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
            "metadata": {**_meta(f"{svc}-x", ns, 0), "labels": {"kubernetes.io/service-name": svc}},
            "endpoints": [{"addresses": [ip], "conditions": {"ready": ready}} for ip in ips],
            "ports": [{"name": port_name, "port": port, "protocol": "TCP"}]}


def table_of(*objects) -> RoutingTable:
    table = ServiceTable(allocate=False)
    for obj in objects:
        table.apply(obj)
    return routing_table(table.snapshot())


def sources(table: RoutingTable, host: str, tls: bool = False) -> list[str]:
    vh = table.host(host)
    return [r.source for r in (vh.https if tls else vh.http)] if vh else []


# --- the conflict rule ----------------------------------------------------------------------


def test_the_older_route_wins_a_host_and_path_and_the_other_is_told_why() -> None:
    for order in ((0, 1), (1, 0)):  # whichever arrives first, age decides
        objs = [route("old", "www.example.com", "/a", age=1), route("new", "www.example.com", "/a", age=5)]
        table = table_of(*(objs[i] for i in order))
        assert sources(table, "www.example.com") == ["Route shop/old"]
        (rejection,) = table.rejected
        assert (rejection.name, rejection.reason) == ("new", "HostAlreadyClaimed")
        assert rejection.message == "route old already exposes www.example.com and is older"


def test_routes_of_one_namespace_share_a_host_by_path() -> None:
    table = table_of(route("a", "www.example.com", "/a", age=1), route("b", "www.example.com", "/b", age=2))
    assert sorted(sources(table, "www.example.com")) == ["Route shop/a", "Route shop/b"]
    assert table.rejected == ()


def test_a_host_belongs_to_the_namespace_of_its_oldest_route() -> None:
    table = table_of(route("mine", "www.example.com", "/a", age=1),
                     route("theirs", "www.example.com", "/b", ns="other", age=2))
    (rejection,) = table.rejected
    assert (rejection.namespace, rejection.name) == ("other", "theirs")
    assert rejection.message == "a route in another namespace holds www.example.com and is older than theirs"


def test_a_route_and_an_ingress_follow_the_same_rule() -> None:
    old_ingress = ingress("ing", [("www.example.com", [("/a", "Prefix", "web")])], age=1)
    young_route = route("r", "www.example.com", "/a", age=2)
    table = table_of(young_route, old_ingress)
    assert sources(table, "www.example.com") == ["Ingress shop/ing"]
    assert [(r.kind, r.name, r.reason) for r in table.rejected] == [("Route", "r", "HostAlreadyClaimed")]
    assert table.rejected[0].message == "ingress ing already exposes www.example.com and is older"
    # and the other way round: the older route wins over the younger ingress's path
    table = table_of(route("r", "www.example.com", "/a", age=1),
                     ingress("ing", [("www.example.com", [("/a", "Prefix", "web"), ("/b", "Prefix", "web")])], age=2))
    assert [(r.kind, r.name, r.path) for r in table.rejected] == [("Ingress", "ing", "/a")]
    assert sources(table, "www.example.com") == ["Route shop/r", "Ingress shop/ing"]


def test_a_passthrough_route_shares_its_host_with_no_other_tls_route() -> None:
    table = table_of(route("pass", "secure.example.com", tls={"termination": "passthrough"}, age=1),
                     route("edge", "secure.example.com", "/x", tls={"termination": "edge"}, age=2),
                     route("plain", "secure.example.com", "/y", age=3))
    assert [r.name for r in table.rejected] == ["edge"]
    vh = table.host("secure.example.com")
    assert vh.passthrough.source == "Route shop/pass"
    assert [r.source for r in vh.http] == ["Route shop/plain"]


def test_the_outcome_does_not_depend_on_the_order_claims_are_given() -> None:
    import datetime as dt
    t = dt.datetime(2026, 12, 7, tzinfo=dt.UTC)
    claims = [Claim("Route", ns, n, uid, t + dt.timedelta(minutes=m), host, path, "Prefix", wc, "")
              for ns, n, uid, m, host, path, wc in [
                  ("a", "r1", "u1", 1, "x.example.com", "/", False),
                  ("b", "r2", "u2", 2, "x.example.com", "/p", False),
                  ("b", "w", "u3", 0, "y.wild.test", "", True),
                  ("a", "r3", "u4", 3, "z.example.com", "", False),
                  ("a", "r4", "u0", 1, "x.example.com", "/", False)]]
    outcomes = {tuple(c.name for c in claims_outcome(p)[0]) for p in itertools.permutations(claims)}
    assert outcomes == {("w", "r4", "r3")}  # same age: the smaller uid is older


# --- matching ---------------------------------------------------------------------------------


def test_longest_prefix_then_exact_and_path_segments() -> None:
    table = table_of(
        route("root", "www.example.com", "/", age=1, to="root"),
        route("api", "www.example.com", "/api", age=2, to="api"),
        route("v2", "www.example.com", "/api/v2/", age=3, to="v2"),
        ingress("exact", [("www.example.com", [("/api/status", "Exact", "status")])], age=4),
        ingress("ip", [("www.example.com", [("/api/status", "Prefix", "statusp")])], age=5))
    def to(path):
        rule = table.lookup("WWW.Example.com:8080", path)
        return rule.source if rule else None
    assert to("/api/v2/users") == "Route shop/v2"
    assert to("/api/v2") == "Route shop/api"  # "/api/v2/" asks for the slash
    assert to("/api") == "Route shop/api"
    assert to("/apis") == "Route shop/root"  # a prefix ends at a segment
    assert to("/api/status") == "Ingress shop/exact"  # exact before prefix of the same path
    assert to("/api/status/x") == "Ingress shop/ip"
    assert to("/?q=1") == "Route shop/root"
    assert table.lookup("nowhere.example.com", "/") is None


def test_wildcard_routes_serve_one_label_and_exact_names_come_first() -> None:
    table = table_of(route("star", "www.apps.example.com", wildcard="Subdomain", age=1, to="star"),
                     route("shop", "shop.apps.example.com", "/cart", age=2, to="shop"),
                     ingress("other", [("*.other.example.com", [("/", "Prefix", "o")])], age=3))
    assert table.host("*.apps.example.com") is not None
    assert table.lookup("anything.apps.example.com", "/").source == "Route shop/star"
    assert table.lookup("shop.apps.example.com", "/cart/1").source == "Route shop/shop"
    assert table.lookup("shop.apps.example.com", "/").source == "Route shop/star"
    assert table.lookup("a.b.apps.example.com", "/") is None  # one label only
    assert table.lookup("x.other.example.com", "/").source == "Ingress shop/other"


def test_a_wildcard_of_another_namespace_blocks_and_is_blocked() -> None:
    table = table_of(route("star", "www.example.com", wildcard="Subdomain", age=1),
                     route("intruder", "shop.example.com", ns="other", age=2))
    assert [(r.name, r.message) for r in table.rejected] == [
        ("intruder", "a route in another namespace holds host shop.example.com")]
    table = table_of(route("exact", "shop.example.com", ns="other", age=1),
                     route("star", "www.example.com", wildcard="Subdomain", age=2))
    assert [r.name for r in table.rejected] == ["star"]


def test_only_ingresses_of_the_lbcore_class_are_served() -> None:
    table = table_of(ingress("mine", [("a.example.com", [("/", "Prefix", "web")])]),
                     ingress("nginx", [("b.example.com", [("/", "Prefix", "web")])], cls="nginx"),
                     ingress("none", [("c.example.com", [("/", "Prefix", "web")])], cls=None))
    assert [vh.name for vh in table.hosts] == ["a.example.com"]


def test_an_ingress_default_backend_and_hostless_rules_catch_every_host() -> None:
    table = table_of(ingress("catch", [("", [("/static", "Prefix", "static")])], default="fallback"),
                     route("r", "www.example.com", "/app", age=3))
    assert table.lookup("www.example.com", "/app").source == "Route shop/r"
    assert table.lookup("www.example.com", "/static/x").backends[0].service == "shop/static"
    assert table.lookup("any.host", "/").backends[0].service == "shop/fallback"


# --- TLS and backends -------------------------------------------------------------------------


def test_tls_puts_each_rule_on_its_listener() -> None:
    cert, key = make_pair("secure.example.com")
    dest, _ = make_pair("pod")
    table = table_of(
        route("plain", "plain.example.com"),
        route("edge", "edge.example.com", tls={"termination": "edge", "certificate": cert, "key": key,
                                             "insecureEdgeTerminationPolicy": "Redirect"}),
        route("allow", "allow.example.com", tls={"termination": "edge", "insecureEdgeTerminationPolicy": "Allow"}),
        route("none", "none.example.com", tls={"termination": "edge"}),
        route("re", "re.example.com", tls={"termination": "reencrypt", "destinationCACertificate": dest}),
        route("pass", "pass.example.com", tls={"termination": "passthrough", "insecureEdgeTerminationPolicy": "Redirect"}))
    plain, edge = table.host("plain.example.com"), table.host("edge.example.com")
    assert (len(plain.http), plain.https, plain.passthrough) == (1, (), None)
    assert [r.redirect for r in edge.http] == [True] and not edge.https[0].redirect
    assert edge.certificate.chain == cert.encode() and edge.certificate.key == key.encode()
    assert "PRIVATE" not in repr(edge)
    assert table.host("allow.example.com").http == table.host("allow.example.com").https
    assert table.host("none.example.com").http == ()
    re_rule = table.host("re.example.com").https[0]
    assert re_rule.reencrypt and re_rule.destination_ca == dest.encode()
    assert table.passthrough("PASS.example.com.").source == "Route shop/pass"
    assert table.lookup("pass.example.com", "/x").redirect


def test_an_ingress_tls_host_takes_its_secret_and_redirects_plain_http() -> None:
    cert, key = make_pair("shop.example.com")
    secret = {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
              "metadata": _meta("shop-tls", "shop", 0),
              "data": {"tls.crt": base64.b64encode(cert.encode()).decode(),
                       "tls.key": base64.b64encode(key.encode()).decode()}}
    table = table_of(secret, ingress("ing", [("shop.example.com", [("/", "Prefix", "web")])],
                                     tls=[{"hosts": ["shop.example.com"], "secretName": "shop-tls"}]))
    vh = table.host("shop.example.com")
    assert vh.certificate.chain == cert.encode()
    assert vh.http[0].redirect and vh.https[0].backends[0].service == "shop/web"


def test_backends_carry_weights_ports_affinity_and_the_endpoint_rules_endpoints() -> None:
    table = table_of(
        service("web", affinity="ClientIP", ports=((80, 8080, "http"), (443, 8443, "https"))),
        {**endpoint_slice("web", ["10.0.0.1", "10.0.0.2"], port=8443, port_name="https")},
        service("canary", ip="10.96.0.11"),
        endpoint_slice("canary", ["10.0.1.1"], ready=False),
        route("r", "www.example.com", to="web", weight=3, alternates=[("canary", 1), ("gone", 0)],
              target_port="https"))
    web, canary, gone = table.lookup("www.example.com", "/").backends
    assert (web.service, web.port_key, web.weight, web.session_affinity) == (
        "shop/web", "shop/web:https", 3, "ClientIP")
    assert [(e.ip, e.port) for e in web.endpoints] == [("10.0.0.1", 8443), ("10.0.0.2", 8443)]
    assert canary.endpoints == ()  # not ready and not terminating: the endpoint rule says none
    assert (gone.port_key, gone.weight, gone.endpoints) == ("", 0, ())


@pytest.mark.parametrize(("target", "key"), [(None, "shop/web:http"), (8443, "shop/web:https"),
                                             ("http", "shop/web:http"), ("nope", "")])
def test_a_route_target_port_names_a_port_or_the_endpoints_number(target, key) -> None:
    table = table_of(service("web", ports=((80, 8080, "http"), (443, 8443, "https"))),
                     endpoint_slice("web", ["10.0.0.1"], port=8443, port_name="https"),
                     route("r", "www.example.com", target_port=target))
    assert table.lookup("www.example.com", "/").backends[0].port_key == key
