"""Admission of Routes, Ingresses and TLS Secrets: every refusal names the field and the value,
as the API server (and OpenShift's route validation) words it; certificates are made here."""

from __future__ import annotations

import base64

import pytest

from lbcore.errors import ValidationError
from lbcore.model.admission import admit
from lbcore.model.objects import Ingress, Route, Secret, parse_object
from lbcore.runtime.tls import self_signed


def make_pair(host: str = "www.example.com") -> tuple[str, str]:
    """A self-signed ECDSA P-256 certificate for ``host`` and its key, PEM."""
    cert, key = self_signed([host])
    return cert.decode(), key.decode()


def route(**spec) -> dict:
    body = {"host": "www.example.com", "to": {"kind": "Service", "name": "web"}, **spec}
    return {"apiVersion": "route.openshift.io/v1", "kind": "Route",
            "metadata": {"name": "web", "namespace": "shop"}, "spec": body}


def causes(obj: dict) -> dict[str, str]:
    """field -> its messages, one per line."""
    with pytest.raises(ValidationError) as info:
        admit(obj, None, None)
    found: dict[str, str] = {}
    for c in info.value.causes:
        found[c.field] = f"{found[c.field]}\n{c.message}" if c.field in found else c.message
    return found


def test_a_route_is_defaulted_as_openshift_defaults_it() -> None:
    r = parse_object(route(tls={"termination": "edge"}))
    assert isinstance(r, Route)
    assert (r.to.weight, r.wildcard_policy, r.tls.termination) == (100, "None", "edge")
    assert parse_object(route(tls={"destinationCACertificate": make_pair()[0]})).tls.termination \
        == "reencrypt"
    assert parse_object(route(port={"targetPort": "8080"})).target_port == 8080


@pytest.mark.parametrize(("spec", "field", "message"), [
    ({"host": "Web_Shop.example.com"}, "spec.host",
     'Invalid value: "Web_Shop.example.com": host must conform to DNS 1123 subdomain conventions'),
    ({"host": ""}, "spec.host", "Required value: lbcore generates no host names: give the route one"),
    ({"path": "shop"}, "spec.path", 'Invalid value: "shop": path must begin with /'),
    ({"path": "/shop", "tls": {"termination": "passthrough"}}, "spec.path",
     'Invalid value: "/shop": passthrough termination does not support paths'),
    ({"to": {"kind": "Pod", "name": "web"}}, "spec.to.kind",
     'Invalid value: "Pod": must reference a Service'),
    ({"to": {"kind": "Service", "name": "web", "weight": 257}}, "spec.to.weight",
     "Invalid value: 257: weight must be an integer between 0 and 256"),
    ({"to": {"kind": "Service", "name": "web", "weight": -1}}, "spec.to.weight",
     "Invalid value: -1: weight must be an integer between 0 and 256"),
    ({"to": {"kind": "Service"}}, "spec.to.name", "Required value"),
    ({"alternateBackends": [{"name": f"b{i}"} for i in range(4)]}, "spec.alternateBackends",
     "Too many: 4: must have at most 3 items"),
    ({"alternateBackends": [{"name": "b", "weight": 300}]}, "spec.alternateBackends[0].weight",
     "Invalid value: 300: weight must be an integer between 0 and 256"),
    ({"port": {"targetPort": 70000}}, "spec.port.targetPort",
     "Invalid value: 70000: must be between 1 and 65535, inclusive"),
    ({"port": {"targetPort": "Http_Port"}}, "spec.port.targetPort",
     'Invalid value: "Http_Port": must contain only alpha-numeric characters'),
    ({"wildcardPolicy": "All"}, "spec.wildcardPolicy",
     'Unsupported value: "All": supported values: "None", "Subdomain"'),
    ({"tls": {"termination": "offload"}}, "spec.tls.termination",
     'Unsupported value: "offload": supported values: "edge", "passthrough", "reencrypt"'),
    ({"tls": {"termination": "edge", "insecureEdgeTerminationPolicy": "Sometimes"}},
     "spec.tls.insecureEdgeTerminationPolicy",
     'Invalid value: "Sometimes": invalid value for InsecureEdgeTerminationPolicy option, '
     "acceptable values are None, Allow, or Redirect, or empty"),
    ({"tls": {"termination": "passthrough", "insecureEdgeTerminationPolicy": "Allow"}},
     "spec.tls.insecureEdgeTerminationPolicy",
     'Invalid value: "Allow": invalid value for InsecureEdgeTerminationPolicy option, '
     "acceptable values are None, Redirect, or empty"),
    ({"tls": {"termination": "edge", "certificate": "not a certificate", "key": "x"}},
     "spec.tls.certificate",
     'Invalid value: "redacted certificate data": failed to parse certificate: data does not '
     "contain any valid RSA or ECDSA certificates"),
    ({"tls": {"termination": "edge", "certificate": make_pair()[0]}}, "spec.tls.key",
     'Invalid value: "": no key specified'),
    ({"tls": {"termination": "passthrough", "certificate": make_pair()[0]}}, "spec.tls.certificate",
     'Invalid value: "redacted certificate data": passthrough termination does not support '
     "certificates"),
    ({"tls": {"termination": "edge", "destinationCACertificate": make_pair()[0]}},
     "spec.tls.destinationCACertificate",
     'Invalid value: "redacted destination ca certificate data": edge termination does not '
     "support destination certificates"),
    ({"tls": {"termination": "reencrypt", "destinationCACertificate": "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"}},
     "spec.tls.destinationCACertificate",
     'Invalid value: "redacted destination ca certificate data": failed to parse destination '
     "CA certificate"),
])
def test_each_refusal_names_the_field_and_the_value(spec, field, message) -> None:
    found = causes(route(**spec))
    assert field in found, found
    assert found[field].startswith(message), found[field]


def test_a_key_that_is_not_the_certificates_is_refused_and_never_printed() -> None:
    cert, _ = make_pair()
    _, other_key = make_pair()
    found = causes(route(tls={"termination": "edge", "certificate": cert, "key": other_key}))
    assert found == {"spec.tls.key": 'Invalid value: "redacted key data": tls: private key does '
                                     "not match public key"}
    with pytest.raises(ValidationError) as info:
        admit(route(tls={"termination": "edge", "certificate": cert, "key": other_key}), None, None)
    assert "PRIVATE KEY" not in str(info.value)


def test_a_matching_pair_is_admitted_and_kept_as_written() -> None:
    cert, key = make_pair()
    admitted = admit(route(tls={"termination": "edge", "certificate": cert, "key": key,
                                "insecureEdgeTerminationPolicy": "Redirect"}), None, None).obj
    assert admitted["spec"]["tls"]["certificate"] == cert
    assert admitted["metadata"]["uid"] and admitted["metadata"]["creationTimestamp"]


def ingress(**spec) -> dict:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
            "metadata": {"name": "shop", "namespace": "shop"}, "spec": spec}


def backend(service="web", **port) -> dict:
    return {"service": {"name": service, "port": port or {"number": 80}}}


def rule(host, *paths) -> dict:
    return {"host": host, "http": {"paths": list(paths)}}


@pytest.mark.parametrize(("spec", "field", "message"), [
    ({}, "spec.rules", "Invalid value: []: either `defaultBackend` or `rules` must be specified"),
    ({"rules": [rule("10.0.0.1", {"path": "/", "pathType": "Prefix", "backend": backend()})]},
     "spec.rules[0].host", 'Invalid value: "10.0.0.1": must be a DNS name, not an IP address'),
    ({"rules": [rule("Shop", {"path": "/", "pathType": "Prefix", "backend": backend()})]},
     "spec.rules[0].host", 'Invalid value: "Shop": a lowercase RFC 1123 subdomain'),
    ({"rules": [rule("shop.example.com", {"path": "/", "backend": backend()})]},
     "spec.rules[0].http.paths[0].pathType", "Required value: pathType must be specified"),
    ({"rules": [rule("shop.example.com", {"path": "/", "pathType": "Regex", "backend": backend()})]},
     "spec.rules[0].http.paths[0].pathType",
     'Unsupported value: "Regex": supported values: "Exact", "ImplementationSpecific", "Prefix"'),
    ({"rules": [rule("shop.example.com", {"path": "cart", "pathType": "Exact", "backend": backend()})]},
     "spec.rules[0].http.paths[0].path", 'Invalid value: "cart": must be an absolute path'),
    ({"defaultBackend": backend(number=80, name="http")}, "spec.defaultBackend.service.port",
     'Invalid value: "http": cannot set both port name & port number'),
    ({"defaultBackend": {"service": {"name": "web"}}}, "spec.defaultBackend.service.port",
     "Required value: port name or number is required"),
    ({"defaultBackend": backend(number=0)}, "spec.defaultBackend.service.port.number",
     "Invalid value: 0: must be between 1 and 65535, inclusive"),
    ({"defaultBackend": backend(), "ingressClassName": "LB"}, "spec.ingressClassName",
     'Invalid value: "LB": a lowercase RFC 1123 subdomain'),
    ({"defaultBackend": backend(), "tls": [{"hosts": ["*.Shop"], "secretName": "tls"}]},
     "spec.tls[0].hosts[0]", 'Invalid value: "*.Shop": a wildcard DNS-1123 subdomain'),
])
def test_each_ingress_refusal_names_the_field_and_the_value(spec, field, message) -> None:
    found = causes(ingress(**spec))
    assert field in found, found
    assert found[field].startswith(message), found[field]


def test_an_ingress_is_read_with_its_class_rules_and_tls() -> None:
    ing = parse_object(ingress(
        ingressClassName="lbcore", tls=[{"hosts": ["shop.example.com"], "secretName": "shop-tls"}],
        rules=[rule("shop.example.com", {"path": "/cart", "pathType": "Exact",
                                          "backend": backend("cart", name="http")})]))
    assert isinstance(ing, Ingress)
    assert ing.ingress_class == "lbcore"
    assert ing.rules[0].paths[0].backend.port_name == "http"
    assert ing.tls[0].secret_name == "shop-tls"


def tls_secret(crt: str, key: str, **extra) -> dict:
    return {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
            "metadata": {"name": "shop-tls", "namespace": "shop"},
            "data": {"tls.crt": base64.b64encode(crt.encode()).decode(),
                     "tls.key": base64.b64encode(key.encode()).decode()}, **extra}


def test_a_tls_secret_needs_both_keys_which_must_parse_and_match() -> None:
    cert, key = make_pair()
    _, other = make_pair()
    secret = parse_object(tls_secret(cert, key))
    assert isinstance(secret, Secret) and secret.data["tls.crt"] == cert.encode()
    assert causes(tls_secret(cert, other)) == {
        "data[tls.key]": 'Invalid value: "redacted key data": tls: private key does not match '
                         "public key"}
    body = tls_secret(cert, key)
    del body["data"]["tls.key"]
    assert causes(body) == {"data[tls.key]": "Required value"}
    body["data"]["tls.key"] = "%%%"
    assert causes(body) == {"data[tls.key]": 'Invalid value: "redacted secret data": must be '
                                             "base64 encoded"}


def test_string_data_is_folded_into_data_as_the_api_server_stores_it() -> None:
    stored = admit({"kind": "Secret", "metadata": {"name": "s"}, "stringData": {"a": "b"}},
                   None, None).obj
    assert stored["data"] == {"a": base64.b64encode(b"b").decode()}
    assert "stringData" not in stored and stored["type"] == "Opaque"


def test_an_ingress_class_needs_a_domain_prefixed_controller_and_no_namespace() -> None:
    body = {"apiVersion": "networking.k8s.io/v1", "kind": "IngressClass",
            "metadata": {"name": "lbcore", "namespace": "shop"},
            "spec": {"controller": "lbcore.io/ingress-controller"}}
    stored = admit(body, None, None).obj
    assert "namespace" not in stored["metadata"]  # cluster-scoped
    assert causes({**body, "spec": {}}) == {"spec.controller": "Required value"}
    assert causes({**body, "spec": {"controller": "lbcore"}}) == {
        "spec.controller": 'Invalid value: "lbcore": must be a domain-prefixed path '
                           '(such as "acme.io/foo")'}
