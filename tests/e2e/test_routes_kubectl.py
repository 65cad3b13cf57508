"""Routes and Ingresses against a real ``lbcore run``: created with ``lbcore create -f`` and
``kubectl create -f``, listed with ``lbcore get routes`` and ``kubectl get routes``, described,
refused with the field and the value, their status written by the route status controller,
deleted."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from tests.e2e.test_endpoints_controller import Daemon, until
from tests.model.test_route_validation import make_pair

KUBECTL = shutil.which("kubectl")
needs_kubectl = pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed")


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory):
    d = Daemon(tmp_path_factory.mktemp("routes"))
    yield d
    d.stop()


def route(name: str, host: str, path: str = "", **spec) -> dict:
    return {"apiVersion": "route.openshift.io/v1", "kind": "Route",
            "metadata": {"name": name},
            "spec": {"host": host, "path": path, "to": {"kind": "Service", "name": "web"}, **spec}}


def write(tmp: Path, name: str, *objects: dict) -> str:
    path = tmp / name
    path.write_text(yaml.safe_dump_all(objects))
    return str(path)


def admitted(daemon: Daemon, name: str) -> dict:
    """The Admitted condition lbcore's router wrote on route ``name`` (waits for it)."""
    def read():
        out = daemon.cli("get", "route", name, "-o", "json")
        ingress = (json.loads(out.stdout).get("status") or {}).get("ingress") or []
        return ingress[0]["conditions"][0] if ingress else None
    return until(read, lambda c: c is not None)


def test_lbcore_creates_lists_describes_and_deletes_routes(daemon: Daemon, tmp_path: Path) -> None:
    cert, key = make_pair("shop.example.com")
    manifest = write(tmp_path, "routes.yaml",
                     route("shop", "shop.example.com", "/cart", port={"targetPort": "http"},
                           alternateBackends=[{"kind": "Service", "name": "canary", "weight": 25}],
                           to={"kind": "Service", "name": "web", "weight": 75},
                           tls={"termination": "edge", "certificate": cert, "key": key,
                                "insecureEdgeTerminationPolicy": "Redirect"}))
    out = daemon.cli("create", "-f", manifest)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "route/shop created"
    assert admitted(daemon, "shop")["status"] == "True"
    table = daemon.cli("get", "routes").stdout.splitlines()
    assert table[0].split() == ["NAME", "HOST/PORT", "PATH", "SERVICES", "PORT", "TERMINATION",
                                "WILDCARD"]
    assert table[1].split() == ["shop", "shop.example.com", "/cart", "web(75%),canary(25%)",
                                "http", "edge/Redirect", "None"]
    described = daemon.cli("describe", "route", "shop").stdout
    assert "Requested Host:   shop.example.com" in described
    assert "exposed on router lbcore" in described and "TLS Termination:  edge" in described
    assert "PRIVATE KEY" not in described
    out = daemon.cli("delete", "route", "shop")
    assert out.stdout.strip() == 'route "shop" deleted'
    assert daemon.cli("get", "route", "shop").returncode != 0


def test_the_younger_route_of_a_host_and_path_is_rejected(daemon: Daemon, tmp_path: Path) -> None:
    daemon.cli("create", "-f", write(tmp_path, "a.yaml", route("first", "www.example.com", "/")))
    daemon.cli("create", "-f", write(tmp_path, "b.yaml", route("second", "www.example.com", "/")))
    conditions = {n: admitted(daemon, n) for n in ("first", "second")}
    first, second = (json.loads(daemon.cli("get", "route", n, "-o", "json").stdout)["metadata"]
                     for n in ("first", "second"))
    older, younger = sorted(["first", "second"], key=lambda n: (
        (first if n == "first" else second)["creationTimestamp"],
        (first if n == "first" else second)["uid"]))
    assert conditions[older]["status"] == "True"
    assert conditions[younger]["reason"] == "HostAlreadyClaimed"
    row = next(line for line in daemon.cli("get", "routes").stdout.splitlines()
               if line.startswith(younger))
    assert "www.example.com ... 1 rejected" in row
    described = daemon.cli("describe", "route", younger).stdout
    assert "rejected by router lbcore: HostAlreadyClaimed" in described
    assert f"route {older} already exposes www.example.com and is older" in described


def test_an_invalid_route_is_refused_naming_field_and_value(daemon: Daemon, tmp_path: Path) -> None:
    out = daemon.cli("create", "-f", write(tmp_path, "bad.yaml", route(
        "bad", "www.example.com", "/x", tls={"termination": "passthrough"},
        to={"kind": "Service", "name": "web", "weight": 300})))
    assert out.returncode != 0
    assert 'spec.path: Invalid value: "/x": passthrough termination does not support paths' in out.stderr
    assert "spec.to.weight: Invalid value: 300: weight must be an integer between 0 and 256" in out.stderr
    assert daemon.cli("get", "route", "bad").returncode != 0  # nothing half-stored


@needs_kubectl
def test_kubectl_creates_and_gets_routes_and_ingresses(daemon: Daemon, tmp_path: Path) -> None:
    manifest = write(tmp_path, "route.yaml", route("kube", "kube.example.com", "/api"))
    out = daemon.kubectl("create", "-f", manifest)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "route.route.openshift.io/kube created"
    out = daemon.kubectl("get", "routes")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split() == ["NAME", "HOST/PORT", "PATH", "SERVICES", "PORT", "TERMINATION",
                                "WILDCARD"]  # the server's Table, oc's columns
    assert ["kube", "kube.example.com", "/api", "web", "<all>", "None"] in [
        line.split() for line in lines[1:]]
    assert admitted(daemon, "kube")["status"] == "True"
    out = daemon.kubectl("get", "route", "kube", "-o",
                         "jsonpath={.status.ingress[0].routerName} {.spec.to.weight}")
    assert out.stdout == "lbcore 100"
    ingress = {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
               "metadata": {"name": "shop"},
               "spec": {"ingressClassName": "lbcore", "rules": [{"host": "ing.example.com", "http": {
                   "paths": [{"path": "/", "pathType": "Prefix", "backend": {
                       "service": {"name": "web", "port": {"number": 80}}}}]}}]}}
    out = daemon.kubectl("create", "-f", write(tmp_path, "ingress.yaml", ingress))
    assert out.returncode == 0, out.stderr
    out = daemon.kubectl("get", "ingress")
    assert out.returncode == 0 and "shop" in out.stdout, out.stderr
    out = daemon.kubectl("get", "ingressclass")  # the daemon's own class, cluster-scoped
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[1].split()[:3] == ["lbcore", "lbcore.io/ingress-controller",
                                                      "<none>"]
    out = daemon.kubectl("delete", "route", "kube")
    assert out.returncode == 0, out.stderr


def test_served_ingresses_show_the_route_listeners_address(tmp_path: Path) -> None:
    from lbcore_plugins.route_frontend import Engine

    from tests.e2e.test_daemon import RunningDaemon

    if Engine is None:
        pytest.skip("the compiled engine is not built")
    daemon = RunningDaemon(tmp_path, {"frontends": [
        {"name": "route", "options": {"http_port": 0, "https_port": 0}}]})
    try:
        ingress = {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
                   "metadata": {"name": "shop"},
                   "spec": {"ingressClassName": "lbcore", "defaultBackend": {
                       "service": {"name": "web", "port": {"number": 80}}}}}
        daemon.cli("create", "-f", write(tmp_path, "ingress.yaml", ingress))

        def address():
            out = daemon.cli("get", "ingress", "shop", "-o", "json").stdout
            return json.loads(out)["status"].get("loadBalancer", {}).get("ingress")
        assert until(address, bool) == [{"ip": "127.0.0.1"}]
        row = daemon.cli("get", "ingress").stdout.splitlines()[1].split()
        assert row[:5] == ["shop", "lbcore", "*", "127.0.0.1", "80"]
    finally:
        daemon.stop()
