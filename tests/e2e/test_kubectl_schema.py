"""kubectl with no flag against ``lbcore run``: OpenAPI, field validation, Tables, discovery.

A real ``lbcore run`` (its own data dir, a free loopback port) and the kubectl on PATH, with a
HOME of the test's own so that kubectl's discovery and OpenAPI caches start empty.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.test_endpoints_controller import KUBECTL, Daemon, pod, service, until

pytestmark = pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed")

SVC_WIDE = ["NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)", "AGE", "SELECTOR"]


class Kubectl:
    def __init__(self, daemon: Daemon, home: Path):
        self.daemon = daemon
        self.env = dict(daemon.env, KUBECONFIG=os.devnull, HOME=str(home))
        self.dir = home

    def __call__(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        assert KUBECTL is not None
        return subprocess.run([KUBECTL, "--server", self.daemon.url, *args],
                              capture_output=True, text=True, timeout=60,
                              env=dict(self.env, **env))

    def manifest(self, name: str, obj: dict[str, Any]) -> str:
        path = self.dir / name
        path.write_text(yaml.safe_dump(obj))
        return str(path)


@pytest.fixture(scope="module")
def kubectl(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("kubectl")
    daemon = Daemon(tmp)
    home = tmp / "home"
    home.mkdir()
    yield Kubectl(daemon, home)
    daemon.stop()


def get(kubectl: Kubectl, path: str, accept: str = "application/json") -> tuple[str, Any]:
    req = urllib.request.Request(kubectl.daemon.url + path, headers={"Accept": accept})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return resp.headers["Content-Type"], json.loads(resp.read())


def typo(name: str) -> dict[str, Any]:
    obj = service(name, {"app": "web"})
    obj["spec"]["ports"] = [{"port": 80, "targetPrt": 9376}]
    return obj


def test_create_then_apply_twice_then_edit(kubectl: Kubectl) -> None:
    two_ports = service("edited", {"app": "web"}, ports=[
        {"name": "http", "port": 80, "targetPort": 8080},
        {"name": "dns", "port": 53, "protocol": "UDP"}])
    out = kubectl("create", "-f", kubectl.manifest("edited.yaml", two_ports))
    assert (out.returncode, out.stdout) == (0, "service/edited created\n"), out.stderr
    applied = kubectl.manifest("applied.yaml", service("applied", {"app": "web"}))
    out = kubectl("apply", "-f", applied)
    assert (out.returncode, out.stdout) == (0, "service/applied created\n"), out.stderr
    out = kubectl("apply", "-f", applied)
    assert (out.returncode, out.stdout) == (0, "service/applied unchanged\n"), out.stderr
    # edit sends a strategic merge patch: the changed port only, merged on its port number
    editor = kubectl.dir / "editor.sh"
    editor.write_text("#!/bin/sh\nsed -i 's/targetPort: 8080/targetPort: 9090/' \"$1\"\n")
    editor.chmod(0o755)
    out = kubectl("edit", "svc", "edited", KUBE_EDITOR=str(editor))
    assert (out.returncode, out.stdout) == (0, "service/edited edited\n"), out.stderr
    ports = kubectl.daemon.request("GET", "/api/v1/namespaces/default/services/edited")[
        "spec"]["ports"]
    assert [(p["name"], p["port"], p["protocol"], p["targetPort"]) for p in ports] == [
        ("http", 80, "TCP", 9090), ("dns", 53, "UDP", 53)]


def test_explain_reads_the_schema(kubectl: Kubectl) -> None:
    out = kubectl("explain", "service.spec.ports")
    assert out.returncode == 0, out.stderr
    assert "FIELD: ports <[]ServicePort>" in out.stdout
    assert "  port\t<integer> -required-\n" in out.stdout
    assert "  targetPort\t<IntOrString>\n" in out.stdout


def test_a_typo_is_refused_under_the_default_validation_and_never_stored(
        kubectl: Kubectl) -> None:
    out = kubectl("create", "-f", kubectl.manifest("typo.yaml", typo("typo")))
    assert out.returncode == 1
    assert out.stderr.strip().endswith(
        'Service in version "v1" cannot be handled as a Service: strict decoding error: '
        'unknown field "spec.ports[0].targetPrt"')
    assert kubectl("get", "svc", "typo").returncode == 1


def test_warn_prints_a_warning_and_ignore_is_silent(kubectl: Kubectl) -> None:
    out = kubectl("create", "--validate=warn", "-f", kubectl.manifest("w.yaml", typo("warned")))
    assert out.returncode == 0, out.stderr
    assert out.stderr == 'Warning: unknown field "spec.ports[0].targetPrt"\n'
    out = kubectl("create", "--validate=false", "-f", kubectl.manifest("i.yaml", typo("quiet")))
    assert (out.returncode, out.stderr) == (0, "")
    for name in ("warned", "quiet"):
        stored = kubectl.daemon.request("GET", f"/api/v1/namespaces/default/services/{name}")
        assert stored["spec"]["ports"] == [{"port": 80, "protocol": "TCP", "targetPort": 80}]


def test_get_prints_a_clusters_columns(kubectl: Kubectl) -> None:
    kubectl.daemon.create(service("shown", {"app": "shown"}, type="NodePort",
                                  externalIPs=["127.0.7.200"]))
    kubectl.daemon.create(pod("shown-1", "127.0.7.1", {"app": "shown"}))
    until(lambda: kubectl.daemon.slices("shown"), lambda s: any(x.get("endpoints") for x in s))
    out = kubectl("get", "svc", "shown", "-o", "wide")
    assert out.returncode == 0, out.stderr
    header, row = out.stdout.splitlines()
    assert header.split() == SVC_WIDE
    cells = row.split()
    node_port = kubectl.daemon.request(
        "GET", "/api/v1/namespaces/default/services/shown")["spec"]["ports"][0]["nodePort"]
    assert cells[:5] == ["shown", "NodePort", cells[2], "127.0.7.200", f"80:{node_port}/TCP"]
    assert cells[6] == "app=shown"
    # lbcore's own CLI prints the same table from the same code
    ours = kubectl.daemon.cli("get", "svc", "shown", "-o", "wide").stdout.splitlines()
    assert ours[0] == header and ours[1].split()[:5] == cells[:5]
    out = kubectl("get", "pods", "shown-1", "-o", "wide")
    assert out.stdout.splitlines()[0].split() == [
        "NAME", "READY", "STATUS", "RESTARTS", "AGE", "IP", "NODE", "NOMINATED", "NODE",
        "READINESS", "GATES"]
    assert out.stdout.splitlines()[1].split()[:4] == ["shown-1", "1/1", "Running", "0"]
    out = kubectl("get", "ep", "shown")
    assert out.stdout.splitlines()[0].split() == ["NAME", "ENDPOINTS", "AGE"]
    assert out.stdout.splitlines()[1].split()[:2] == ["shown", "127.0.7.1:8080"]
    out = kubectl("get", "endpointslices", "-l", "kubernetes.io/service-name=shown")
    assert out.stdout.splitlines()[0].split() == ["NAME", "ADDRESSTYPE", "PORTS", "ENDPOINTS",
                                                  "AGE"]
    assert out.stdout.splitlines()[1].split()[1:4] == ["IPv4", "8080", "127.0.7.1"]
    out = kubectl("get", "all")
    assert out.returncode == 0, out.stderr
    assert "pod/shown-1 " in out.stdout and "service/shown " in out.stdout


def test_get_watch_prints_rows_of_the_change(kubectl: Kubectl) -> None:
    kubectl.daemon.create(service("watched", {"app": "w"}))
    assert KUBECTL is not None
    proc = subprocess.Popen([KUBECTL, "--server", kubectl.daemon.url, "get", "svc", "watched",
                             "-w"], stdout=subprocess.PIPE, text=True, env=kubectl.env)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().split() == SVC_WIDE[:-1]
        assert proc.stdout.readline().split()[:2] == ["watched", "ClusterIP"]
        kubectl("label", "svc", "watched", "changed=yes")
        assert proc.stdout.readline().split()[:2] == ["watched", "ClusterIP"]
    finally:
        proc.kill()
        proc.wait()


def test_aggregated_discovery_and_the_plain_answers(kubectl: Kubectl) -> None:
    aggregated = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"
    media, body = get(kubectl, "/api", aggregated + ",application/json")
    assert "as=APIGroupDiscoveryList" in media
    assert body["kind"] == "APIGroupDiscoveryList"
    [core] = body["items"]
    resources = {r["resource"]: r for r in core["versions"][0]["resources"]}
    assert resources["services"]["categories"] == ["all"]
    assert resources["services"]["shortNames"] == ["svc"]
    assert resources["services"]["responseKind"] == {"group": "", "version": "v1",
                                                     "kind": "Service"}
    _, body = get(kubectl, "/apis", aggregated)
    assert "discovery.k8s.io" in [g["metadata"]["name"] for g in body["items"]]
    # the official client's (non-aggregated) answers stay as they were
    assert get(kubectl, "/api")[1]["kind"] == "APIVersions"
    assert get(kubectl, "/apis")[1]["kind"] == "APIGroupList"


def test_tables_carry_the_object_asked_for(kubectl: Kubectl) -> None:
    kubectl.daemon.create(service("tabled", {"app": "t"}))
    table = "application/json;as=Table;v=v1;g=meta.k8s.io"
    path = "/api/v1/namespaces/default/services"
    media, body = get(kubectl, path + "/tabled", table)
    assert media.startswith("application/json;as=Table")
    assert body["kind"] == "Table"
    assert [c["name"] for c in body["columnDefinitions"]] == [
        "Name", "Type", "Cluster-IP", "External-IP", "Port(s)", "Age", "Selector"]
    [row] = body["rows"]
    assert row["object"]["kind"] == "PartialObjectMetadata"
    _, body = get(kubectl, path + "?includeObject=Object", table)
    assert {r["object"]["kind"] for r in body["rows"]} == {"Service"}
    _, body = get(kubectl, path + "?includeObject=None", table)
    assert all("object" not in r for r in body["rows"])
    assert get(kubectl, path)[1]["kind"] == "ServiceList"


def test_lbcore_cli_is_strict(kubectl: Kubectl) -> None:
    path = kubectl.manifest("cli-typo.yaml", typo("cli-typo"))
    out = kubectl.daemon.cli("create", "-f", path)
    assert out.returncode == 1
    assert 'strict decoding error: unknown field "spec.ports[0].targetPrt"' in out.stderr
    assert kubectl.daemon.cli("get", "svc", "cli-typo").returncode == 1


@pytest.mark.parametrize("gv", ["api/v1", "apis/discovery.k8s.io/v1"])
def test_openapi_documents_are_served(kubectl: Kubectl, gv: str) -> None:
    _, index = get(kubectl, "/openapi/v3")
    url = index["paths"][gv]["serverRelativeURL"]
    _, doc = get(kubectl, url)
    assert doc["openapi"].startswith("3.")
    _, v2 = get(kubectl, "/openapi/v2")
    assert v2["swagger"] == "2.0"


def test_the_python_client_still_discovers(kubectl: Kubectl) -> None:
    out = subprocess.run([sys.executable, "-c", (
        "import kubernetes.client as k; c = k.ApiClient(k.Configuration());"
        f"c.configuration.host = {kubectl.daemon.url!r};"
        "print(k.CoreV1Api(c).get_api_resources().group_version)")],
        capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "v1", out.stderr
    assert shutil.which("kubectl") is not None


def test_a_list_is_validated_on_the_client_from_the_protobuf_document(kubectl: Kubectl) -> None:
    """kubectl cannot ask the server to validate a ``kind: List``: it validates it itself,
    from /openapi/v2 in protobuf, as against a cluster."""
    items = [service("listed-1", {"app": "l"}), service("listed-2", {"app": "l"})]
    listed = kubectl.manifest("list.yaml", {"apiVersion": "v1", "kind": "List", "items": items})
    out = kubectl("apply", "-f", listed)
    assert (out.returncode, out.stdout) == (
        0, "service/listed-1 created\nservice/listed-2 created\n"), out.stderr
    items[1]["spec"]["ports"][0]["targetPrt"] = 1
    out = kubectl("apply", "-f", kubectl.manifest("list-typo.yaml", {
        "apiVersion": "v1", "kind": "List", "items": items}))
    assert out.returncode == 1
    assert ('ValidationError(Service.spec.ports[0]): unknown field "targetPrt" in '
            "io.k8s.api.core.v1.ServicePort") in out.stderr


def test_server_side_apply_then_get_ep_then_delete(kubectl: Kubectl) -> None:
    manifest = service("applied-ss", {"app": "ss"})
    path = kubectl.manifest("applied-ss.yaml", manifest)
    for _ in range(2):  # the second apply of the same manifest changes nothing
        out = kubectl("apply", "--server-side", "-f", path)
        assert (out.returncode, out.stdout) == (0, "service/applied-ss serverside-applied\n"), \
            out.stderr
    first = kubectl.daemon.request("GET", "/api/v1/namespaces/default/services/applied-ss")
    manifest["spec"]["ports"][0]["targetPort"] = 9090
    out = kubectl("apply", "--server-side", "-f", kubectl.manifest("applied-ss.yaml", manifest))
    assert out.returncode == 0, out.stderr
    changed = kubectl.daemon.request("GET", "/api/v1/namespaces/default/services/applied-ss")
    assert changed["spec"]["ports"][0]["targetPort"] == 9090
    assert changed["spec"]["clusterIP"] == first["spec"]["clusterIP"]
    for i in (1, 2):
        kubectl.daemon.create(pod(f"ss-{i}", f"127.0.6.{i}", {"app": "ss"}))
    out = until(lambda: kubectl("get", "ep", "applied-ss", "--no-headers"),
                lambda o: "127.0.6.1:9090,127.0.6.2:9090" in o.stdout)
    assert out.stdout.split()[:2] == ["applied-ss", "127.0.6.1:9090,127.0.6.2:9090"], out
    out = kubectl("delete", "svc", "applied-ss")
    assert (out.returncode, out.stdout) == (0, 'service "applied-ss" deleted\n'), out.stderr
    out = kubectl("get", "svc", "applied-ss")
    assert out.returncode == 1 and 'services "applied-ss" not found' in out.stderr
