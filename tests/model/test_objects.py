"""Loading manifests and Kubernetes' defaults."""

from __future__ import annotations

import dataclasses
import gc
import json
from pathlib import Path
from typing import Any

import pytest

import lbcore
from lbcore.cli.demo import SERVICE_MANIFEST
from lbcore.errors import ValidationError
from lbcore.model import objects
from lbcore.model.objects import Endpoints, EndpointSlice, Pod, Service, parse_stored

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

SEED = SERVICE_MANIFEST  # the seed the demo embeds; the examples must hold the same


def minimal(**spec: Any) -> dict[str, Any]:
    return {"kind": "Service", "metadata": {"name": "web"},
            "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}], **spec}}


def test_defaults_for_a_minimal_service() -> None:
    [svc] = lbcore.load_manifests(minimal())
    assert isinstance(svc, Service)
    assert svc.namespace == "default"
    assert svc.type == "ClusterIP"
    assert svc.ports[0].protocol == "TCP"
    assert svc.ports[0].target_port == 80
    assert svc.session_affinity == "None"
    assert svc.internal_traffic_policy == "Cluster"
    assert svc.external_traffic_policy is None  # only for NodePort/LoadBalancer
    assert svc.ip_family_policy == "SingleStack"
    d = svc.to_dict()
    assert d["apiVersion"] == "v1" and d["metadata"]["namespace"] == "default"
    assert d["spec"]["ports"] == [{"port": 80, "protocol": "TCP", "targetPort": 80}]
    assert "sessionAffinityConfig" not in d["spec"]


def test_client_ip_affinity_defaults_to_10800_seconds() -> None:
    [svc] = lbcore.load_manifests(minimal(sessionAffinity="ClientIP"))
    assert svc.affinity_timeout == 10800
    assert svc.to_dict()["spec"]["sessionAffinityConfig"] == {"clientIP": {"timeoutSeconds": 10800}}


@pytest.mark.parametrize("stype", ["NodePort", "LoadBalancer"])
def test_external_traffic_policy_defaults_to_cluster_for_external_types(stype: str) -> None:
    [svc] = lbcore.load_manifests(minimal(type=stype))
    assert svc.external_traffic_policy == "Cluster"


@pytest.mark.parametrize(("ip", "family"), [("10.96.0.10", "IPv4"), ("fd00::10", "IPv6")])
def test_ip_families_follow_the_cluster_ip(ip: str, family: str) -> None:
    [svc] = lbcore.load_manifests(minimal(clusterIP=ip))
    assert svc.ip_families == (family,)
    assert svc.cluster_ips == (ip,)
    assert svc.proxied and not svc.headless


def test_headless_service_is_not_proxied() -> None:
    [svc] = lbcore.load_manifests(minimal(clusterIP="None"))
    assert svc.headless and not svc.proxied


def test_named_target_port_stays_a_name_and_numeric_string_becomes_a_number() -> None:
    [svc] = lbcore.load_manifests(minimal(ports=[{"name": "a", "port": 80, "targetPort": "http"},
                                                 {"name": "b", "port": 81, "targetPort": "8081"}]))
    assert [p.target_port for p in svc.ports] == ["http", 8081]


def test_seed_yaml_string_gives_the_seed_service() -> None:
    [svc] = lbcore.load_manifests(SEED)
    assert (svc.name, dict(svc.selector or {}), svc.ports[0].port, svc.ports[0].target_port) == (
        "my-service", {"name": "my-app"}, 8080, 8080)


def test_examples_hold_the_seed_service_and_three_ready_pods() -> None:
    [svc] = lbcore.load_manifests(EXAMPLES / "my-service.yaml")
    assert svc.to_dict() == lbcore.load_manifests(SEED)[0].to_dict()
    pods = lbcore.load_manifests(str(EXAMPLES / "my-app-pods.yaml"))
    assert [(p.name, p.pod_ip, p.ready, dict(p.labels)) for p in pods] == [
        (f"my-app-{i}", f"127.0.0.1{i}", True, {"name": "my-app"}) for i in (1, 2, 3)]


def test_multi_document_yaml_json_list_and_kind_list(tmp_path: Path) -> None:
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p1", "namespace": "ns1"},
           "status": {"podIP": "127.0.0.20"}}
    as_list = {"apiVersion": "v1", "kind": "List", "items": [minimal(), pod]}
    (tmp_path / "a.json").write_text(json.dumps(as_list))
    (tmp_path / "b.yaml").write_text(SEED + "---\n" + SEED.replace("my-service", "other"))
    (tmp_path / "notes.txt").write_text("not a manifest")
    objs = lbcore.load_manifests(tmp_path)
    assert [(o.kind, o.key) for o in objs] == [
        ("Service", "default/web"), ("Pod", "ns1/p1"),
        ("Service", "default/my-service"), ("Service", "default/other")]
    assert [o.key for o in lbcore.load_manifests(json.dumps(as_list))] == ["default/web", "ns1/p1"]
    assert [o.key for o in lbcore.load_manifests([minimal(), pod])] == ["default/web", "ns1/p1"]
    assert lbcore.load_manifests(SEED.encode())[0].name == "my-service"
    assert lbcore.load_manifests("---\n") == []


def test_missing_file_and_unknown_kind_are_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        lbcore.load_manifests(str(tmp_path / "absent.yaml"))
    with pytest.raises(ValidationError) as info:
        lbcore.load_manifests({"kind": "Deployment", "metadata": {"name": "d"}})
    assert info.value.causes[0].reason == "FieldValueNotSupported"
    with pytest.raises(ValidationError):
        lbcore.load_manifests({"metadata": {"name": "nokind"}})


def test_yaml_timestamps_stay_rfc3339_strings() -> None:
    text = SEED.replace("  name: my-service\n",
                        "  name: my-service\n  creationTimestamp: 2026-11-25T08:00:00Z\n")
    [svc] = lbcore.load_manifests(text)
    assert svc.to_dict()["metadata"]["creationTimestamp"] == "2026-11-25T08:00:00Z"
    assert svc.created is not None and svc.created.hour == 8
    json.dumps(svc.to_dict())  # JSON-safe for the REST API


def test_to_dict_is_a_copy() -> None:
    [svc] = lbcore.load_manifests(minimal())
    svc.to_dict()["spec"]["ports"][0]["port"] = 1
    assert svc.to_dict()["spec"]["ports"][0]["port"] == 80


def test_pod_status_readiness_and_termination() -> None:
    base = {"kind": "Pod", "metadata": {"name": "p"}}
    no_ip = Pod.from_dict(base)
    assert not no_ip.ready and no_ip.pod_ip is None
    no_condition = Pod.from_dict({**base, "status": {"podIP": "127.0.0.30"}})
    assert no_condition.ready and no_condition.pod_ips == ("127.0.0.30",)
    not_ready = Pod.from_dict({**base, "status": {"podIP": "127.0.0.30", "conditions": [
        {"type": "Ready", "status": "False"}]}})
    assert not not_ready.ready
    deleting = Pod.from_dict({"kind": "Pod", "metadata": {
        "name": "p", "deletionTimestamp": "2026-11-25T08:00:00Z"}, "status": {"podIP": "::1"}})
    assert deleting.terminating and deleting.ready


def test_pod_container_ports_default_to_tcp() -> None:
    p = Pod.from_dict({"kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": [
        {"name": "c", "ports": [{"name": "dns", "containerPort": 53, "protocol": "UDP"},
                                {"name": "http", "containerPort": 8080}]}]}})
    assert p.container_port("http", "TCP") == 8080
    assert p.container_port("dns", "UDP") == 53
    assert p.container_port("dns", "TCP") is None


def test_endpoint_slice_and_endpoints_objects() -> None:
    sl = EndpointSlice.from_dict({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "ext-abc", "labels": {"kubernetes.io/service-name": "ext"}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080}],
        "endpoints": [{"addresses": ["127.0.0.40"], "conditions": {"ready": False},
                       "nodeName": "n1", "zone": "z1"},
                      {"addresses": ["127.0.0.41"]}]})
    assert sl.service_name == "ext"
    assert sl.ports[0].protocol == "TCP"
    assert [(e.addresses, e.ready, e.serving) for e in sl.endpoints] == [
        (("127.0.0.40",), False, False), (("127.0.0.41",), True, True)]
    ep = Endpoints.from_dict({"kind": "Endpoints", "metadata": {"name": "ext"}, "subsets": [
        {"addresses": [{"ip": "127.0.0.42"}], "notReadyAddresses": [{"ip": "127.0.0.43"}],
         "ports": [{"port": 9000}]}]})
    assert ep.subsets[0].addresses[0].ip == "127.0.0.42"
    assert ep.subsets[0].not_ready_addresses[0].ip == "127.0.0.43"
    with pytest.raises(ValidationError):
        EndpointSlice.from_dict({"kind": "EndpointSlice", "metadata": {"name": "x"},
                                 "addressType": "IPv5"})


def test_parse_admitted_reads_what_validation_refuses_and_names_what_it_cannot_read() -> None:
    from lbcore.model.objects import parse_admitted

    refused = minimal(ports=[{"name": "HTTP", "port": 80}])
    with pytest.raises(lbcore.ValidationError):
        lbcore.load_manifests(refused)
    assert parse_admitted(refused).ports[0].name == "HTTP"
    with pytest.raises(lbcore.ValidationError, match="cannot be read: KeyError") as err:
        parse_admitted(minimal(ports=[{"name": "http"}]))
    assert err.value.name == "web"


def test_parse_stored_keeps_json_text_and_gives_the_same_fields_and_dict() -> None:
    from lbcore.model.objects import parse_admitted, parse_stored

    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {
        "name": "p", "namespace": "default", "uid": "u-1", "labels": {"app": "web"},
        "resourceVersion": "7"}, "spec": {"nodeName": "n1", "hostname": "h", "subdomain": "web",
        "containers": [{"name": "c", "ports": [
            {"name": "http", "containerPort": 8080, "protocol": "TCP"}]}]},
        "status": {"podIP": "127.0.0.30", "podIPs": [{"ip": "127.0.0.30"}]}}
    stored = parse_stored(pod)
    assert isinstance(stored.body, str) and json.loads(stored.body) == pod
    assert stored.raw == pod and stored.to_dict() == pod
    stored.to_dict()["metadata"]["name"] = "q"  # a copy
    assert stored.raw["metadata"]["name"] == "p"
    assert (stored.uid, stored.hostname, stored.subdomain) == ("u-1", "h", "web")
    assert stored == parse_admitted(pod)  # every parsed field alike
    [svc] = lbcore.load_manifests(minimal(clusterIP="10.0.0.1"))
    service = parse_stored(svc.to_dict())
    assert service == svc and service.raw == svc.raw
    with pytest.raises(lbcore.ValidationError, match="cannot be read: KeyError") as err:
        parse_stored({**minimal(ports=[{"name": "http"}]),
                      "metadata": {"name": "web", "namespace": "default"}})
    assert err.value.name == "web"
    with pytest.raises(lbcore.ValidationError, match="Unsupported value"):
        parse_stored({"kind": "Namespace", "metadata": {"name": "x"}})


def test_yaml_that_does_not_parse_is_a_validation_error_naming_file_line_and_column(
        tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: Service\nmetadata:\n  name: a\n  labels: {a: b\n")
    with pytest.raises(lbcore.ValidationError) as err:
        lbcore.load_manifests(bad)
    assert str(err.value).startswith(f"error parsing {bad}: line 5, column 1: ")
    assert (err.value.line, err.value.column) == (5, 1)  # type: ignore[attr-defined]
    with pytest.raises(lbcore.ValidationError,
                       match="^error parsing <string>: line 2, column 3: mapping values"):
        lbcore.load_manifests("a: b\n c: : d\n")


def test_stored_objects_share_equal_labels_timestamps_and_addresses_read_only() -> None:
    def stored(name: str, labels: dict[str, str]) -> Pod:
        return parse_stored({"apiVersion": "v1", "kind": "Pod", "metadata": {
            "name": name, "namespace": "default", "labels": labels, "resourceVersion": "1",
            "creationTimestamp": "2026-12-07T08:57:55Z"},
            "spec": {"nodeName": "n"}, "status": {"podIP": "10.1.0.1"}})

    a, b = stored("a", {"app": "web"}), stored("b", {"app": "web"})
    c = stored("c", {"app": "db"})
    assert a.labels == b.labels == {"app": "web"} and c.labels == {"app": "db"}
    referents = [*gc.get_referents(a.labels), *gc.get_referents(b.labels)]  # the views' dicts
    assert referents[0] is referents[1] and referents[0] is not gc.get_referents(c.labels)[0]
    with pytest.raises(TypeError):
        a.labels["app"] = "other"  # type: ignore[index]
    assert a.created is b.created and a.pod_ip is b.pod_ip is a.pod_ips[0]
    # the shared dict goes with the last object that holds it
    key = (("app", "db"),)
    assert key in objects._SHARED_MAPS
    del c, referents
    gc.collect()
    assert key not in objects._SHARED_MAPS


def test_pods_declaring_the_same_ports_share_them_and_objects_share_one_key_string() -> None:
    def stored(name: str, ports: list[dict[str, Any]]) -> Pod:
        return parse_stored({"apiVersion": "v1", "kind": "Pod", "metadata": {
            "name": name, "namespace": "default", "resourceVersion": "1"},
            "spec": {"containers": [{"name": "c", "ports": ports}]}})

    web = [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
    a, b = stored("a", web), stored("b", [dict(p) for p in web])
    c = stored("c", [{"name": "http", "containerPort": 8081, "protocol": "TCP"}])
    assert a.container_ports is b.container_ports
    assert a.container_ports == (objects.ContainerPort("http", 8080, "TCP"),)
    assert c.container_ports == (objects.ContainerPort("http", 8081, "TCP"),)
    assert c.container_port("http", "TCP") == 8081 and stored("d", []).container_ports == ()
    # the key is made once and interned: a slice's reference to the pod is the same string
    assert a.key == "default/a" and a.key is a.key
    eps = parse_stored({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                        "metadata": {"name": "s", "namespace": "default", "resourceVersion": "2"},
                        "addressType": "IPv4", "endpoints": [{
                            "addresses": ["10.1.0.1"],
                            "targetRef": {"kind": "Pod", "namespace": "default", "name": "a"}}]})
    assert eps.endpoints[0].target is a.key
    # a copy with another name has its own key
    assert dataclasses.replace(a, name="e").key == "default/e"
