"""get's tables: the API server's printers' columns and cells, and kubectl's text of them."""

from __future__ import annotations

import datetime as dt
import warnings
from typing import Any

import pytest

import lbcore
from lbcore.model import tables

NOW = dt.datetime(2026, 1, 1, 5, 0, 0, tzinfo=dt.UTC)
CREATED = "2026-01-01T00:00:00Z"  # five hours before NOW


def meta(name: str, **more: Any) -> dict[str, Any]:
    return {"name": name, "namespace": "default", "creationTimestamp": CREATED, **more}


def cells(kind: str, obj: dict[str, Any]) -> list[Any]:
    return tables.row_cells(kind, obj, NOW)


def test_service_cells_by_type() -> None:
    lb = {"metadata": meta("lb"), "spec": {
        "type": "LoadBalancer", "clusterIPs": ["10.0.0.1"], "clusterIP": "10.0.0.1",
        "ports": [{"port": 443, "nodePort": 31443, "protocol": "TCP"}],
        "selector": {"b": "2", "a": "1"}}}
    assert cells("Service", lb) == ["lb", "LoadBalancer", "10.0.0.1", "<pending>",
                                    "443:31443/TCP", "5h", "a=1,b=2"]
    lb["status"] = {"loadBalancer": {"ingress": [{"ip": "1.2.3.4"}, {"hostname": "x.io"}]}}
    lb["spec"]["externalIPs"] = ["5.6.7.8"]
    assert cells("Service", lb)[3] == "1.2.3.4,x.io,5.6.7.8"
    name = {"metadata": meta("ext"), "spec": {"type": "ExternalName",
                                              "externalName": "db.example.com"}}
    assert cells("Service", name)[1:5] == ["ExternalName", "<none>", "db.example.com",
                                           "<none>"]


@pytest.mark.parametrize(("status", "deleting", "expected"), [
    ({"phase": "Running", "podIP": "10.1.0.1",
      "conditions": [{"type": "Ready", "status": "True"}]}, False, ["1/1", "Running", "0"]),
    ({"phase": "Pending"}, False, ["0/1", "Pending", "0"]),
    ({}, False, ["0/1", "Pending", "0"]),
    ({"phase": "Running", "podIP": "10.1.0.1"}, True, ["0/1", "Terminating", "0"]),
    ({"phase": "Running", "containerStatuses": [{
        "name": "c", "ready": False, "restartCount": 3,
        "state": {"waiting": {"reason": "CrashLoopBackOff"}},
        "lastState": {"terminated": {"finishedAt": "2026-01-01T04:55:00Z"}}}]},
     False, ["0/1", "CrashLoopBackOff", "3 (5m ago)"]),
    ({"phase": "Running", "containerStatuses": [{
        "name": "c", "ready": True, "restartCount": 0, "state": {"running": {}}}]},
     False, ["1/1", "Running", "0"]),
])
def test_pod_ready_status_and_restarts(status: dict[str, Any], deleting: bool,
                                       expected: list[str]) -> None:
    extra = {"deletionTimestamp": CREATED} if deleting else {}
    pod = {"metadata": meta("p", **extra), "spec": {"containers": [{"name": "c"}]},
           "status": status}
    assert cells("Pod", pod)[1:4] == expected


def test_endpoint_slices_list_every_address_and_more() -> None:
    sl = {"metadata": meta("s"), "addressType": "IPv4",
          "ports": [{"port": p} for p in (80, 81, 82, 83)],
          "endpoints": [{"addresses": [f"10.0.0.{i}"]} for i in range(5)]}
    assert cells("EndpointSlice", sl)[1:4] == [
        "IPv4", "80,81,82 + 1 more...", "10.0.0.0,10.0.0.1,10.0.0.2 + 2 more..."]
    assert cells("EndpointSlice", {"metadata": meta("e"), "addressType": "IPv4"})[2:4] == [
        "<unset>", "<unset>"]


def test_namespaces_and_events() -> None:
    ns = {"metadata": meta("default"), "status": {"phase": "Active"}}
    assert cells("Namespace", ns) == ["default", "Active", "5h"]
    ev = {"metadata": meta("web.1"), "type": "Normal", "reason": "ClusterIPAllocated",
          "involvedObject": {"kind": "Service", "name": "web"}, "message": " allocated \n",
          "firstTimestamp": CREATED, "lastTimestamp": "2026-01-01T04:59:00Z", "count": 2,
          "source": {"component": "lbcore"}}
    assert cells("Event", ev) == ["60s", "Normal", "ClusterIPAllocated", "service/web", "",
                                  "lbcore", "allocated", "5h", 2, "web.1"]
    text = tables.render("Event", [ev], now=NOW)
    assert text.splitlines()[0].split() == ["LAST", "SEEN", "TYPE", "REASON", "OBJECT",
                                            "MESSAGE"]


def test_a_kind_without_columns_gets_the_default_table() -> None:
    assert [c.name for c in tables.columns_for("Widget")] == ["Name", "Created At"]
    assert cells("Widget", {"metadata": meta("s")}) == ["s", CREATED]


def test_table_rows_carry_metadata_the_object_or_nothing() -> None:
    svc = {"metadata": meta("web"), "spec": {"ports": [{"port": 80}]}}
    table = tables.table("Service", [svc], "7", now=NOW)
    assert table["kind"] == "Table" and table["metadata"] == {"resourceVersion": "7"}
    assert table["rows"][0]["object"] == {"kind": "PartialObjectMetadata",
                                          "apiVersion": "meta.k8s.io/v1",
                                          "metadata": svc["metadata"]}
    assert table["rows"][0]["object"]["metadata"]["name"] == "web"
    assert tables.table("Service", [svc], include_object="Object")["rows"][0]["object"][
        "kind"] == "Service"
    assert "object" not in tables.table("Service", [svc], include_object="None")["rows"][0]
    assert [c["priority"] for c in table["columnDefinitions"]] == [0, 0, 0, 0, 0, 0, 1]


def test_render_shows_wide_columns_and_namespaces_as_kubectl() -> None:
    svc = {"metadata": meta("web"), "spec": {"clusterIP": "10.0.0.9", "ports": [{"port": 80}],
                                             "selector": {"app": "web"}}}
    assert tables.render("Service", [svc], now=NOW).splitlines() == [
        "NAME   TYPE        CLUSTER-IP   EXTERNAL-IP   PORT(S)   AGE",
        "web    ClusterIP   10.0.0.9     <none>        80/TCP    5h"]
    lines = tables.render("Service", [svc], wide=True, namespaces=True, now=NOW).splitlines()
    assert lines[0].split() == ["NAMESPACE", "NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP",
                                "PORT(S)", "AGE", "SELECTOR"]
    assert lines[1].split()[0] == "default" and lines[1].split()[-1] == "app=web"


def test_load_manifests_is_strict_by_default() -> None:
    svc = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
           "spec": {"ports": [{"port": 80, "targetPrt": 9376}]}}
    with pytest.raises(lbcore.ValidationError,
                       match=r'Service "web" is invalid: spec.ports\[0\].targetPrt: unknown '):
        lbcore.load_manifests(svc)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        [warned] = lbcore.load_manifests(svc, field_validation="Warn")
    assert [str(w.message) for w in caught] == [
        'Service "web": unknown field "spec.ports[0].targetPrt"']
    assert warned.ports[0].target_port == 80  # the typo was not taken for targetPort
    assert svc["spec"]["ports"][0]["targetPrt"] == 9376  # the caller's dict is left alone
    [ignored] = lbcore.load_manifests(svc, field_validation="Ignore")
    assert ignored.ports[0].target_port == 80
    with pytest.raises(ValueError, match="field_validation: 'Loose'"):
        lbcore.load_manifests(svc, field_validation="Loose")
