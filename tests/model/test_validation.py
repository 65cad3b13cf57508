"""Kubernetes' validation rules for Services and Pods, each at its boundary."""

from __future__ import annotations

import copy
from typing import Any

import pytest

import lbcore
from lbcore.errors import ValidationError
from lbcore.model.objects import Pod, Service


def service(**spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"apiVersion": "v1", "kind": "Service",
                            "metadata": {"name": "my-service"},
                            "spec": {"selector": {"name": "my-app"},
                                     "ports": [{"port": 8080, "targetPort": 8080}]}}
    base["spec"].update(spec)
    return base


def causes(obj: dict[str, Any]) -> list[tuple[str, str, str]]:
    with pytest.raises(ValidationError) as info:
        lbcore.load_manifests(obj)
    return [(c.field, c.reason, c.message) for c in info.value.causes]


def test_the_seed_service_is_valid() -> None:
    [svc] = lbcore.load_manifests(service())
    assert isinstance(svc, Service) and svc.name == "my-service"


def test_port_above_65535_names_field_and_value_as_kubernetes_does() -> None:
    obj = service(ports=[{"port": 70000}])
    with pytest.raises(ValidationError) as info:
        lbcore.load_manifests(obj)
    assert str(info.value) == ('Service "my-service" is invalid: spec.ports[0].port: Invalid value:'
                               ' 70000: must be between 1 and 65535, inclusive')
    assert isinstance(info.value, ValueError)
    assert [c.reason for c in info.value.causes] == ["FieldValueInvalid"]


@pytest.mark.parametrize(("port", "ok"), [(0, False), (1, True), (65535, True), (65536, False)])
def test_port_range_boundaries(port: int, ok: bool) -> None:
    obj = service(ports=[{"port": port, "targetPort": 80}])
    if ok:
        assert lbcore.load_manifests(obj)[0].ports[0].port == port
    else:
        assert causes(obj) == [("spec.ports[0].port", "FieldValueInvalid",
                                f"Invalid value: {port}: must be between 1 and 65535, inclusive")]


@pytest.mark.parametrize(("target", "ok"), [(0, True), (1, True), (65535, True), (65536, False)])
def test_numeric_target_port_boundaries(target: int, ok: bool) -> None:
    # targetPort 0 means "absent" and defaults to port
    obj = service(ports=[{"port": 80, "targetPort": target}])
    if ok:
        assert lbcore.load_manifests(obj)[0].ports[0].target_port == (target or 80)
    else:
        assert causes(obj)[0][:2] == ("spec.ports[0].targetPort", "FieldValueInvalid")


@pytest.mark.parametrize("protocol", ["TCP", "UDP", "SCTP"])
def test_supported_protocols(protocol: str) -> None:
    assert lbcore.load_manifests(service(ports=[{"port": 53, "protocol": protocol}]))[0] \
        .ports[0].protocol == protocol


def test_unsupported_protocol_lists_the_supported_ones() -> None:
    assert causes(service(ports=[{"port": 80, "protocol": "tcp"}])) == [(
        "spec.ports[0].protocol", "FieldValueNotSupported",
        'Unsupported value: "tcp": supported values: "SCTP", "TCP", "UDP"')]


@pytest.mark.parametrize("name", ["http", "a", "h2c", "abcdefghijklmno", "web-8080", "x-y-z"])
def test_valid_named_target_ports(name: str) -> None:
    assert lbcore.load_manifests(service(ports=[{"port": 80, "targetPort": name}]))[0] \
        .ports[0].target_port == name


@pytest.mark.parametrize(("name", "message"), [
    ("abcdefghijklmnop", "must be no more than 15 characters"),
    ("Http", "must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)"),
    ("web_1", "must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)"),
    ("123-456", "must contain at least one letter (a-z)"),
    ("web--x", "must not contain consecutive hyphens"),
    ("-web", "must not begin or end with a hyphen"),
    ("web-", "must not begin or end with a hyphen"),
])
def test_invalid_named_target_ports(name: str, message: str) -> None:
    found = causes(service(ports=[{"port": 80, "targetPort": name}]))
    assert ("spec.ports[0].targetPort", "FieldValueInvalid",
            f'Invalid value: "{name}": {message}') in found
    assert all(field == "spec.ports[0].targetPort" for field, _, _ in found)


def test_port_names_are_required_when_there_are_several_ports() -> None:
    assert causes(service(ports=[{"port": 80, "name": "http"}, {"port": 443}])) == [
        ("spec.ports[1].name", "FieldValueRequired", "Required value")]


def test_one_port_needs_no_name() -> None:
    assert lbcore.load_manifests(service(ports=[{"port": 80}]))[0].ports[0].name == ""


def test_duplicate_port_names_are_refused() -> None:
    assert causes(service(ports=[{"port": 80, "name": "web"}, {"port": 81, "name": "web"}])) == [
        ("spec.ports[1].name", "FieldValueDuplicate", 'Duplicate value: "web"')]


def test_port_name_must_be_a_dns_label() -> None:
    found = causes(service(ports=[{"port": 80, "name": "Web"}]))
    assert found[0][0] == "spec.ports[0].name" and "RFC 1123 label" in found[0][2]


def test_ports_are_required_unless_headless() -> None:
    assert causes(service(ports=[])) == [("spec.ports", "FieldValueRequired", "Required value")]
    assert lbcore.load_manifests(service(ports=[], clusterIP="None"))[0].headless


@pytest.mark.parametrize("stype", ["NodePort", "LoadBalancer"])
def test_node_port_allowed_for_node_port_and_load_balancer(stype: str) -> None:
    [svc] = lbcore.load_manifests(service(type=stype, ports=[{"port": 80, "nodePort": 30080}]))
    assert svc.ports[0].node_port == 30080


def test_node_port_forbidden_for_cluster_ip_services() -> None:
    assert causes(service(ports=[{"port": 80, "nodePort": 30080}])) == [(
        "spec.ports[0].nodePort", "FieldValueForbidden",
        "Forbidden: may not be used when `type` is 'ClusterIP'")]


def test_one_node_port_may_serve_tcp_and_udp_but_not_twice_one_protocol() -> None:
    ok = service(type="NodePort", ports=[
        {"name": "dns", "port": 53, "protocol": "UDP", "nodePort": 30053},
        {"name": "dns-tcp", "port": 53, "protocol": "TCP", "nodePort": 30053}])
    assert [p.node_port for p in lbcore.load_manifests(ok)[0].ports] == [30053, 30053]
    bad = service(type="NodePort", ports=[
        {"name": "a", "port": 53, "nodePort": 30053}, {"name": "b", "port": 54, "nodePort": 30053}])
    assert causes(bad) == [("spec.ports[1].nodePort", "FieldValueDuplicate",
                            "Duplicate value: 30053")]


@pytest.mark.parametrize(("timeout", "ok"), [(0, False), (1, True), (86400, True), (86401, False)])
def test_client_ip_timeout_boundaries(timeout: int, ok: bool) -> None:
    obj = service(sessionAffinity="ClientIP",
                  sessionAffinityConfig={"clientIP": {"timeoutSeconds": timeout}})
    if ok:
        assert lbcore.load_manifests(obj)[0].affinity_timeout == timeout
    else:
        assert causes(obj) == [(
            "spec.sessionAffinityConfig.clientIP.timeoutSeconds", "FieldValueInvalid",
            f"Invalid value: {timeout}: must be greater than 0 and less than 86400")]


def test_unknown_session_affinity_and_type_are_not_supported() -> None:
    found = causes(service(sessionAffinity="Cookie", type="Ingress"))
    assert ("spec.type", "FieldValueNotSupported",
            'Unsupported value: "Ingress": supported values: "ClusterIP", "ExternalName",'
            ' "LoadBalancer", "NodePort"') in found
    assert ("spec.sessionAffinity", "FieldValueNotSupported",
            'Unsupported value: "Cookie": supported values: "ClientIP", "None"') in found


@pytest.mark.parametrize(("name", "ok"), [
    ("a", True), ("my-service", True), ("a" * 63, True), ("a" * 64, False),
    ("1abc", False), ("my_service", False), ("My-service", False), ("abc-", False),
])
def test_service_name_is_a_dns1035_label(name: str, ok: bool) -> None:
    obj = service()
    obj["metadata"]["name"] = name
    if ok:
        assert lbcore.load_manifests(obj)[0].name == name
    else:
        found = causes(obj)
        assert found and all(f == "metadata.name" and r == "FieldValueInvalid"
                             for f, r, _ in found)


def test_dns1035_message_matches_kubernetes() -> None:
    obj = service()
    obj["metadata"]["name"] = "1abc"
    assert causes(obj)[0][2] == (
        "Invalid value: \"1abc\": a DNS-1035 label must consist of lower case alphanumeric"
        " characters or '-', start with an alphabetic character, and end with an alphanumeric"
        " character (e.g. 'my-name',  or 'abc-123', regex used for validation is"
        " '[a-z]([-a-z0-9]*[a-z0-9])?')")


def test_missing_name_is_required() -> None:
    obj = service()
    del obj["metadata"]["name"]
    assert causes(obj)[0][:2] == ("metadata.name", "FieldValueRequired")


@pytest.mark.parametrize(("selector", "field"), [
    ({"-bad": "x"}, "spec.selector"),
    ({"a/b/c": "x"}, "spec.selector"),
    ({"k" * 64: "x"}, "spec.selector"),
    ({"app": "bad value"}, "spec.selector[app]"),
    ({"app": "v" * 64}, "spec.selector[app]"),
    ({"app": "-x"}, "spec.selector[app]"),
])
def test_selector_keys_and_values_must_be_label_keys_and_values(selector: dict[str, str],
                                                               field: str) -> None:
    found = causes(service(selector=selector))
    assert found and all(f == field and r == "FieldValueInvalid" for f, r, _ in found)


def test_longest_valid_label_key_and_value_pass() -> None:
    [svc] = lbcore.load_manifests(service(selector={"example.com/" + "k" * 63: "v" * 63,
                                                    "empty": ""}))
    assert svc.selector is not None and svc.selector["empty"] == ""


def test_invalid_cluster_ip_and_headless_node_port() -> None:
    assert causes(service(clusterIP="10.0.0.300")) == [(
        "spec.clusterIPs[0]", "FieldValueInvalid",
        'Invalid value: "10.0.0.300": must be a valid IP address, (e.g. 10.9.8.7 or'
        ' 2001:db8::ffff)')]
    assert causes(service(clusterIP="None", type="NodePort")) == [(
        "spec.clusterIPs[0]", "FieldValueInvalid",
        'Invalid value: "None": may not be set to \'None\' for NodePort services')]


def test_external_traffic_policy_only_for_external_services() -> None:
    assert causes(service(externalTrafficPolicy="Local"))[0][:2] == (
        "spec.externalTrafficPolicy", "FieldValueInvalid")
    [svc] = lbcore.load_manifests(service(type="NodePort", externalTrafficPolicy="Local"))
    assert svc.external_traffic_policy == "Local"


def test_every_problem_is_listed_at_once() -> None:
    obj = service(ports=[{"port": 0, "protocol": "HTTP", "targetPort": "Bad"}],
                  selector={"app": "a b"})
    obj["metadata"]["name"] = "Bad"
    fields = {f for f, _, _ in causes(obj)}
    assert fields == {"metadata.name", "spec.ports[0].port", "spec.ports[0].protocol",
                      "spec.ports[0].targetPort", "spec.selector[app]"}


def test_validation_does_not_change_the_input() -> None:
    obj = service()
    before = copy.deepcopy(obj)
    lbcore.load_manifests(obj)
    assert obj == before


# --- Pods ------------------------------------------------------------------------------------


def pod(name: str = "my-app-1", **status: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "labels": {"name": "my-app"}},
            "spec": {"containers": [{"name": "web", "ports": [{"containerPort": 8080}]}]},
            "status": {"podIP": "127.0.0.11", **status}}


@pytest.mark.parametrize(("name", "ok"), [
    ("my-app-1", True), ("web.v1", True), ("a" * 253, True), ("a" * 254, False),
    ("My-app", False), ("web..v1", False), ("-web", False)])
def test_pod_name_is_a_dns1123_subdomain(name: str, ok: bool) -> None:
    if ok:
        assert Pod.from_dict(pod(name)).name == name
    else:
        with pytest.raises(ValidationError) as info:
            Pod.from_dict(pod(name))
        assert {c.field for c in info.value.causes} == {"metadata.name"}


def test_pod_ip_must_be_valid() -> None:
    with pytest.raises(ValidationError) as info:
        Pod.from_dict(pod(podIP="127.0.0.256"))
    assert [c.field for c in info.value.causes] == ["status.podIP"]


@pytest.mark.parametrize("value", [
    "0.0.0.0", "1.2.3.4", "10.0.0.255", "255.255.255.255", "249.250.199.100", "127.0.0.256",
    "256.1.1.1", "01.2.3.4", "1.2.3.04", "000.1.1.1", "1.2.3", "1.2.3.4.5", "1..3.4",
    "1.2.3.-1", " 1.2.3.4", "1.2.3.4 ", "1.2.3.4\n", "\uff11.2.3.4", "1.2.3.\u0664", "::1",
    "2001:db8::ffff", "::ffff:1.2.3.4", "1.2.3.4/32", "", "a.b.c.d",
])
def test_an_ip_address_is_valid_exactly_when_ipaddress_takes_it(value: str) -> None:
    import ipaddress

    from lbcore.model.validation import is_valid_ip

    try:
        ipaddress.ip_address(value)
        expected = True
    except ValueError:
        expected = False
    assert (is_valid_ip(value) == []) is expected


def test_pod_label_values_are_validated() -> None:
    obj = pod()
    obj["metadata"]["labels"] = {"name": "my app"}
    with pytest.raises(ValidationError) as info:
        Pod.from_dict(obj)
    assert [c.field for c in info.value.causes] == ["metadata.labels[name]"]


def test_pod_container_port_name_is_an_iana_name() -> None:
    obj = pod()
    obj["spec"]["containers"][0]["ports"][0]["name"] = "http--alt"
    with pytest.raises(ValidationError) as info:
        Pod.from_dict(obj)
    assert [c.field for c in info.value.causes] == ["spec.containers[0].ports[0].name"]
