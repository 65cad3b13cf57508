"""describe and get output in kubectl's layout."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

import lbcore
from lbcore.model.describe import human_duration, tabulate
from lbcore.model.tables import render

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.fixture
def seeded() -> lbcore.ServiceTable:
    table = lbcore.ServiceTable()
    table.apply_all(EXAMPLES / "my-service.yaml")
    table.apply_all(EXAMPLES / "my-app-pods.yaml")
    return table


def test_seed_describe_output(seeded: lbcore.ServiceTable) -> None:
    assert seeded.describe_service("default", "my-service") == (
        "Name:                     my-service\n"
        "Namespace:                default\n"
        "Labels:                   <none>\n"
        "Annotations:              <none>\n"
        "Selector:                 name=my-app\n"
        "Type:                     ClusterIP\n"
        "IP Family Policy:         SingleStack\n"
        "IP Families:              IPv4\n"
        "IP:                       10.96.0.1\n"
        "IPs:                      10.96.0.1\n"
        "Port:                     <unset>  8080/TCP\n"
        "TargetPort:               8080/TCP\n"
        "Endpoints:                127.0.0.11:8080,127.0.0.12:8080,127.0.0.13:8080\n"
        "Session Affinity:         None\n"
        "Internal Traffic Policy:  Cluster\n"
        "Events:                   <none>\n")


def test_describe_without_endpoints_labels_and_node_port() -> None:
    table = lbcore.ServiceTable()
    table.apply({"kind": "Service", "metadata": {"name": "np", "labels": {"b": "2", "a": "1"},
                                                 "annotations": {"x": "y", "long": "v" * 200}},
                 "spec": {"type": "NodePort", "selector": {"app": "x"}, "sessionAffinity":
                          "ClientIP", "ports": [{"name": "http", "port": 80, "targetPort": "web",
                                                 "nodePort": 30080}]}})
    text = table.describe_service("default", "np")
    assert "Labels:                   a=1\n                          b=2\n" in text
    # kubectl's annotations: "key: value", a long value under its key, cut at 138 characters
    assert ("Annotations:              long:\n"
            f"                            {'v' * 138}...\n"
            "                          x: y\n") in text
    assert "Port:                     http  80/TCP\n" in text
    assert "TargetPort:               web/TCP\n" in text
    assert "NodePort:                 http  30080/TCP\n" in text
    # a selector with no pod: one empty slice, so nothing after "Endpoints:", padding kept
    assert "Endpoints:                \n" in text
    assert "Session Affinity:         ClientIP\n" in text
    assert "External Traffic Policy:  Cluster\n" in text
    assert "Internal Traffic Policy:  Cluster\n" in text
    assert "Timeout" not in text  # kubectl prints no affinity timeout
    with pytest.raises(KeyError):
        table.describe_service("default", "absent")


def test_describe_of_a_service_without_selector_or_slices_says_none() -> None:
    table = lbcore.ServiceTable()
    table.apply({"kind": "Service", "metadata": {"name": "ext"}, "spec": {"ports": [{"port": 80}]}})
    assert "Endpoints:                <none>\n" in table.describe_service("default", "ext")


def test_describe_shows_three_ready_endpoints_then_a_count() -> None:
    table = lbcore.ServiceTable()
    table.apply({"kind": "Service", "metadata": {"name": "web"},
                 "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]}})
    for i in range(1, 6):
        table.apply({"kind": "Pod", "metadata": {"name": f"p{i}", "labels": {"app": "web"}},
                     "status": {"podIP": f"127.0.0.{i}", "conditions": [
                         {"type": "Ready", "status": "True" if i != 2 else "False"}]}})
    text = table.describe_service("default", "web")
    assert "Endpoints:                127.0.0.1:80,127.0.0.3:80,127.0.0.4:80 + 1 more...\n" in text


def test_services_table(seeded: lbcore.ServiceTable) -> None:
    seeded.apply({"kind": "Service", "metadata": {"name": "lb"}, "spec": {
        "type": "LoadBalancer", "ports": [{"port": 443, "nodePort": 31443}]}})
    # 5 h after the newest creation time (not a clock read of its own, which could come first)
    now = max(s.created for s in seeded.list("svc") if s.created is not None) + dt.timedelta(hours=5)
    text = render("Service", [s.raw for s in seeded.list("svc")], wide=True, now=now)
    assert text.splitlines() == [
        "NAME         TYPE           CLUSTER-IP   EXTERNAL-IP   PORT(S)         AGE   SELECTOR",
        "lb           LoadBalancer   10.96.0.2    <pending>     443:31443/TCP   5h    <none>",
        "my-service   ClusterIP      10.96.0.1    <none>        8080/TCP        5h    name=my-app",
    ]


def test_pods_endpoints_and_slices_tables(seeded: lbcore.ServiceTable) -> None:
    # "now" is 30 s after each object's own creation time: no second clock read to race with
    first = min(seeded.list("po"), key=lambda p: p.name)
    assert first.name == "my-app-1" and first.created is not None
    pods = render("Pod", [p.raw for p in seeded.list("po")], wide=True,
                  now=first.created + dt.timedelta(seconds=30)).splitlines()
    assert pods[0].split() == ["NAME", "READY", "STATUS", "RESTARTS", "AGE", "IP", "NODE",
                               "NOMINATED", "NODE", "READINESS", "GATES"]
    assert pods[1].split() == ["my-app-1", "1/1", "Running", "0", "30s", "127.0.0.11",
                               "localhost", "<none>", "<none>"]
    created = "2026-01-01T00:00:00Z"
    now = dt.datetime(2026, 1, 1, 0, 0, 30, tzinfo=dt.UTC)
    eps = {"kind": "Endpoints", "metadata": {"name": "my-service", "creationTimestamp": created},
           "subsets": [{"addresses": [{"ip": f"127.0.0.1{i}"} for i in (1, 2, 3, 4)],
                        "notReadyAddresses": [{"ip": "127.0.0.19"}],
                        "ports": [{"port": 8080}]}]}
    assert render("Endpoints", [eps], now=now).splitlines()[1].split() == [
        "my-service", "127.0.0.11:8080,127.0.0.12:8080,127.0.0.13:8080", "+", "1", "more...",
        "30s"]
    sl = {"kind": "EndpointSlice", "metadata": {"name": "ext-1"}, "addressType": "IPv4",
          "ports": [{"port": 80}], "endpoints": [{"addresses": ["127.0.0.9"]}]}
    assert render("EndpointSlice", [sl]).splitlines()[1].split() == [
        "ext-1", "IPv4", "80", "127.0.0.9", "<unknown>"]


@pytest.mark.parametrize(("seconds", "text"), [
    (-5, "<invalid>"), (0, "0s"), (119, "119s"), (120, "2m"), (150, "2m30s"), (600, "10m"),
    (3 * 3600, "3h"), (5 * 3600 + 60, "5h1m"), (47 * 3600, "47h"), (3 * 86400, "3d"),
    (3 * 86400 + 3600, "3d1h"), (100 * 86400, "100d"), (800 * 86400, "2y70d"),
    (9 * 365 * 86400, "9y")])
def test_human_duration_as_kubectl(seconds: int, text: str) -> None:
    assert human_duration(dt.timedelta(seconds=seconds)) == text


def test_tabulate_pads_runs_of_rows_that_share_a_column() -> None:
    assert tabulate([["a:", "x", "y"], ["bbbb:", "z"], ["c:", "long", "w"]], padding=2) == (
        "a:     x  y\nbbbb:  z\nc:     long  w\n")
