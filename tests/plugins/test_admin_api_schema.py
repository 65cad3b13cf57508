"""The admin API's schema-driven answers over HTTP, without kubectl: fieldValidation, strategic
merge patch, Tables, aggregated discovery and the OpenAPI documents."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

import pytest

SERVICES = "/api/v1/namespaces/default/services"


def call(url: str, method: str = "GET", body: str | None = None,
         content_type: str = "application/json",
         accept: str = "application/json") -> tuple[int, dict[str, str], Any]:
    request = urllib.request.Request(url, data=body.encode() if body else None, method=method,
                                     headers={"Content-Type": content_type, "Accept": accept})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.headers, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, err.headers, json.loads(err.read())


def typo(name: str) -> str:
    return json.dumps({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
                       "spec": {"ports": [{"port": 80, "targetPrt": 9376}]}})


def test_strict_refuses_and_stores_nothing(admin) -> None:
    code, _, status = call(admin.url + SERVICES + "?fieldValidation=Strict", "POST", typo("s"))
    assert (code, status["reason"]) == (400, "BadRequest")
    assert status["message"] == ('Service in version "v1" cannot be handled as a Service: '
                                 'strict decoding error: unknown field "spec.ports[0].targetPrt"')
    assert call(admin.url + SERVICES + "/s")[0] == 404


def test_strict_names_keys_given_twice(admin) -> None:
    body = ('{"kind": "Service", "metadata": {"name": "d"}, '
            '"spec": {"ports": [{"port": 80, "port": 81}]}}')
    code, _, status = call(admin.url + SERVICES + "?fieldValidation=Strict", "POST", body)
    assert code == 400
    assert status["message"].endswith('strict decoding error: duplicate field '
                                      '"spec.ports[0].port"')


@pytest.mark.parametrize(("query", "warned"), [("", True), ("?fieldValidation=Warn", True),
                                               ("?fieldValidation=Ignore", False)])
def test_warn_and_ignore_drop_the_field(admin, query: str, warned: bool) -> None:
    name = f"w{len(query)}"
    code, headers, obj = call(admin.url + SERVICES + query, "POST", typo(name))
    assert code == 201
    expected = ['299 - "unknown field \\"spec.ports[0].targetPrt\\""'] if warned else []
    assert headers.get_all("Warning", []) == expected
    assert obj["spec"]["ports"] == [{"port": 80, "protocol": "TCP", "targetPort": 80}]
    assert call(admin.url + SERVICES + f"/{name}")[2]["spec"]["ports"] == obj["spec"]["ports"]


def test_an_unknown_directive_is_refused(admin) -> None:
    code, _, status = call(admin.url + SERVICES + "?fieldValidation=Loose", "POST", typo("x"))
    assert code == 400 and 'fieldValidation: Unsupported value: "Loose"' in status["message"]


def test_a_strategic_merge_patch_merges_ports_on_their_number(admin) -> None:
    svc = {"kind": "Service", "metadata": {"name": "smp"}, "spec": {"ports": [
        {"name": "http", "port": 80, "targetPort": 8080},
        {"name": "dns", "port": 53, "protocol": "UDP"}]}}
    assert call(admin.url + SERVICES, "POST", json.dumps(svc))[0] == 201
    patch = {"spec": {"$setElementOrder/ports": [{"port": 80}, {"port": 53}],
                      "ports": [{"port": 80, "targetPort": 9090}]}}
    code, _, obj = call(admin.url + SERVICES + "/smp?fieldValidation=Strict", "PATCH",
                        json.dumps(patch), "application/strategic-merge-patch+json")
    assert code == 200, obj
    assert [(p["name"], p["targetPort"]) for p in obj["spec"]["ports"]] == [
        ("http", 9090), ("dns", 53)]


def test_tables_for_list_and_get(admin) -> None:
    call(admin.url + SERVICES, "POST", json.dumps(
        {"kind": "Service", "metadata": {"name": "t"}, "spec": {"ports": [{"port": 80}]}}))
    accept = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"
    code, headers, table = call(admin.url + SERVICES, accept=accept)
    assert code == 200 and headers["Content-Type"].startswith("application/json;as=Table")
    assert table["kind"] == "Table" and table["apiVersion"] == "meta.k8s.io/v1"
    assert [r["cells"][0] for r in table["rows"]] == ["t"]
    assert call(admin.url + SERVICES + "/t", accept=accept)[2]["rows"][0]["cells"][1:5] == [
        "ClusterIP", table["rows"][0]["cells"][2], "<none>", "80/TCP"]
    beta = call(admin.url + SERVICES, accept=accept.replace("v=v1;", "v=v1beta1;"))[2]
    assert beta["apiVersion"] == beta["rows"][0]["object"]["apiVersion"] == "meta.k8s.io/v1beta1"
    code, _, status = call(admin.url + SERVICES + "?includeObject=All", accept=accept)
    assert code == 400 and "includeObject" in status["message"]


def test_aggregated_discovery_only_when_asked(admin) -> None:
    accept = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"
    _, headers, body = call(admin.url + "/apis", accept=accept)
    assert headers["Content-Type"] == accept
    assert [g["metadata"]["name"] for g in body["items"]][:1] == ["discovery.k8s.io"]
    assert call(admin.url + "/apis")[2]["kind"] == "APIGroupList"
    resources = call(admin.url + "/api/v1")[2]["resources"]
    assert [r["name"] for r in resources] == sorted(r["name"] for r in resources)
    assert {r["name"]: r.get("categories") for r in resources}["pods"] == ["all"]


def test_openapi_index_points_at_each_document(admin) -> None:
    index = call(admin.url + "/openapi/v3")[2]
    for entry in index["paths"].values():
        code, _, doc = call(admin.url + entry["serverRelativeURL"])
        assert code == 200 and doc["openapi"] == "3.0.0"
    assert call(admin.url + "/openapi/v3/apis/nothing.example.com/v1")[0] == 404
    assert call(admin.url + "/openapi/v2")[2]["swagger"] == "2.0"


def test_a_yaml_body_naming_a_key_twice_is_refused_under_strict(admin) -> None:
    body = "kind: Service\nmetadata: {name: y}\nspec:\n  ports:\n  - port: 80\n    port: 81\n"
    code, _, status = call(admin.url + SERVICES + "/y?fieldValidation=Strict&fieldManager=t",
                           "PATCH", body, "application/apply-patch+yaml")
    assert code == 400
    assert status["message"].endswith('duplicate field "spec.ports[0].port"')
    assert call(admin.url + SERVICES + "/y")[0] == 404


def test_openapi_v2_in_json_or_protobuf_and_nothing_else(admin) -> None:
    protobuf = "application/com.github.proto-openapi.spec.v2@v1.0+protobuf"
    request = urllib.request.Request(admin.url + "/openapi/v2", headers={"Accept": protobuf})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.headers["Content-Type"] == (
            "application/com.github.proto-openapi.spec.v2.v1.0+protobuf")
        assert response.read()[:5] == b"\n\x032.0"  # field 1 (swagger), "2.0"
    code, _, status = call(admin.url + "/openapi/v2", accept="application/xml")
    assert (code, status["reason"]) == (406, "NotAcceptable")
    assert call(admin.url + "/openapi/v2")[2]["swagger"] == "2.0"
