"""The kinds' schema: one entry per kind, the unknown-field check and the OpenAPI documents."""

from __future__ import annotations

import json
from typing import Any

import pytest

from lbcore.model import schema
from lbcore.model.kinds import ALL_KINDS as KINDS


def service(**spec: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
            "spec": {"ports": [{"port": 80, "targetPort": 8080}], **spec}}


def test_every_kind_of_the_registry_has_a_schema() -> None:
    missing = [k.kind for k in KINDS if k.kind not in schema.KIND_SCHEMAS]
    assert missing == []


def test_every_reference_names_a_definition() -> None:
    for name in schema.DEFINITIONS:
        for ref in schema._referenced([name]):
            assert ref in schema.DEFINITIONS


def test_unknown_fields_are_named_by_their_path_as_the_api_server_does() -> None:
    svc = service(selectr={"app": "web"})
    svc["spec"]["ports"][0]["targetPrt"] = 9376
    svc["metadata"]["labelz"] = {}
    found = [str(p) for p in schema.unknown_fields("Service", svc)]
    assert found == ['unknown field "metadata.labelz"',
                     'unknown field "spec.ports[0].targetPrt"',
                     'unknown field "spec.selectr"']


def test_a_valid_object_of_each_kind_has_no_unknown_field() -> None:
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "labels": {"a": "b"}},
           "spec": {"containers": [{"name": "c", "image": "x", "ports": [
               {"containerPort": 80, "name": "http"}],
               "readinessProbe": {"httpGet": {"port": "http", "path": "/"}},
               "resources": {"limits": {"cpu": "1"}}}],
               "volumes": [{"name": "v", "emptyDir": {}}]},
           "status": {"phase": "Running", "podIP": "10.0.0.1",
                      "conditions": [{"type": "Ready", "status": "True"}]}}
    assert schema.unknown_fields("Pod", pod) == []
    sl = {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
          "metadata": {"name": "s"}, "addressType": "IPv4",
          "endpoints": [{"addresses": ["10.0.0.1"], "conditions": {"ready": True},
                         "targetRef": {"kind": "Pod", "name": "p"}}],
          "ports": [{"port": 80, "protocol": "TCP", "name": ""}]}
    assert schema.unknown_fields("EndpointSlice", sl) == []
    assert schema.unknown_fields("Service", service(sessionAffinity="ClientIP",
        sessionAffinityConfig={"clientIP": {"timeoutSeconds": 60}})) == []


def test_open_objects_keep_their_fields_unchecked() -> None:
    pod = {"kind": "Pod", "spec": {"containers": [{"name": "c", "securityContext": {
        "anything": {"goes": 1}}}]}}
    assert schema.unknown_fields("Pod", pod) == []


def test_dropping_removes_only_the_unknown_fields() -> None:
    svc = service()
    svc["spec"]["ports"][0]["targetPrt"] = 9376
    dropped = schema.drop_unknown_fields("Service", svc)
    assert [p.path for p in dropped] == ["spec.ports[0].targetPrt"]
    assert svc["spec"]["ports"] == [{"port": 80, "targetPort": 8080}]


def test_keys_given_twice_in_json_are_duplicate_fields() -> None:
    text = '{"kind": "Service", "spec": {"ports": [{"port": 80, "port": 81}]}}'
    body = json.loads(text, object_pairs_hook=schema.object_pairs)
    assert [str(p) for p in schema.unknown_fields("Service", body)] == [
        'duplicate field "spec.ports[0].port"']


@pytest.mark.parametrize("gv", ["api/v1", "apis/discovery.k8s.io/v1"])
def test_the_v3_document_carries_what_kubectl_reads(gv: str) -> None:
    doc = schema.openapi_v3(gv, "1.31")
    assert doc is not None
    schemas = doc["components"]["schemas"]
    for kind in schema.group_versions()[gv]:
        definition = schemas[schema.KIND_SCHEMAS[kind.kind]]
        assert definition["x-kubernetes-group-version-kind"] == [
            {"group": kind.group, "kind": kind.kind, "version": kind.version}]
        # kubectl asks the PATCH operation whether the server takes fieldValidation
        item = doc["paths"][kind.path("{namespace}", "{name}").replace("%7B", "{")
                            .replace("%7D", "}")]
        assert item["patch"]["x-kubernetes-group-version-kind"]["kind"] == kind.kind
        assert "fieldValidation" in [p["name"] for p in item["patch"]["parameters"]]
    for definition in schemas.values():
        for prop in definition.get("properties", {}).values():
            for ref in [prop.get("$ref")] + [a["$ref"] for a in prop.get("allOf", [])]:
                assert ref is None or ref.removeprefix("#/components/schemas/") in schemas


def test_service_ports_merge_on_port_as_in_kubernetes() -> None:
    doc = schema.openapi_v3("api/v1", "1.31")
    assert doc is not None
    ports = doc["components"]["schemas"]["io.k8s.api.core.v1.ServiceSpec"]["properties"]["ports"]
    assert ports["x-kubernetes-patch-merge-key"] == "port"
    assert ports["x-kubernetes-patch-strategy"] == "merge"
    assert ports["x-kubernetes-list-map-keys"] == ["port", "protocol"]
    port = doc["components"]["schemas"]["io.k8s.api.core.v1.ServicePort"]
    assert port["required"] == ["port"]


def test_the_v3_index_names_each_document_by_its_hash() -> None:
    index = schema.openapi_v3_index("1.31")
    assert set(index["paths"]) == set(schema.group_versions())
    for gv, entry in index["paths"].items():
        doc = schema.openapi_v3(gv, "1.31")
        assert doc is not None
        assert entry["serverRelativeURL"] == f"/openapi/v3/{gv}?hash={schema.document_hash(doc)}"


def test_the_v2_document_has_every_kind() -> None:
    doc = schema.openapi_v2("1.31")
    assert doc["swagger"] == "2.0"
    for kind in KINDS:
        assert schema.KIND_SCHEMAS[kind.kind] in doc["definitions"]


def _fields(data: bytes) -> list[tuple[int, bytes]]:
    """The length-delimited fields of one protobuf message (number, payload)."""
    out, i = [], 0
    while i < len(data):
        key, i = _read_varint(data, i)
        assert key & 7 in (0, 2)
        value, i = _read_varint(data, i)
        if key & 7 == 2:
            out.append((key >> 3, data[i:i + value]))
            i += value
    return out


def _read_varint(data: bytes, i: int) -> tuple[int, int]:
    shift = value = 0
    while True:
        byte = data[i]
        value |= (byte & 0x7F) << shift
        i, shift = i + 1, shift + 7
        if not byte & 0x80:
            return value, i


def test_the_v2_protobuf_document_carries_every_definition() -> None:
    doc = dict(_fields(schema.openapi_v2_protobuf("1.31")))
    assert doc[1] == b"2.0"  # swagger
    named = {dict(_fields(entry))[1].decode(): dict(_fields(entry))[2]
             for _, entry in _fields(doc[9])}  # definitions: NamedSchema name = 1, value = 2
    assert list(named) == list(schema.openapi_v2("1.31")["definitions"])
    service = _fields(named["io.k8s.api.core.v1.Service"])
    assert dict(_fields(dict(service)[22]))[1] == b"object"  # type
    extensions = {}
    for number, value in service:
        if number == 31:  # vendor_extension: NamedAny, its value an Any whose yaml = 2
            entry = dict(_fields(value))
            extensions[entry[1].decode()] = json.loads(dict(_fields(entry[2]))[2])
    assert extensions["x-kubernetes-group-version-kind"] == [
        {"group": "", "kind": "Service", "version": "v1"}]
