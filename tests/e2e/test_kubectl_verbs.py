"""kubectl's verbs against a real ``lbcore run``: JSON patch, the status subresource, server
dry runs, diff, namespaces, an apply that drops session affinity, Events in describe, and
writes with the token over TLS through the kubeconfig the daemon writes; and the same with
lbcore's own CLI. Skipped, one line, where no kubectl is installed (the CLI's part runs anyway).
"""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml
from lbcore_daemon import KUBECTL, Daemon, describe_text, until

needs_kubectl = pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed")

SERVICE = """\
apiVersion: v1
kind: Service
metadata:
  name: {name}
spec:
  selector: {{app: {name}}}
{extra}  ports:
  - port: {port}
    targetPort: 9376
"""


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory):
    d = Daemon(tmp_path_factory.mktemp("verbs"))
    yield d
    d.stop()


def manifest(tmp: Path, name: str, port: int = 80, extra: str = "") -> str:
    path = tmp / f"{name}.yaml"
    path.write_text(SERVICE.format(name=name, port=port, extra=extra))
    return str(path)


def ok(result: Any) -> str:
    assert result.returncode == 0, result.stderr
    return str(result.stdout)


def stored(daemon: Daemon, name: str, namespace: str = "default") -> dict[str, Any]:
    return daemon.request("GET", f"/api/v1/namespaces/{namespace}/services/{name}")


def missing(daemon: Daemon, path: str) -> bool:
    try:
        daemon.request("GET", path)
    except urllib.error.HTTPError as exc:
        return exc.code == 404
    return False


# -- kubectl ------------------------------------------------------------------------------------


@needs_kubectl
def test_kubectl_patch_type_json_and_the_status_subresource(daemon: Daemon, tmp_path: Path):
    ok(daemon.kubectl("apply", "--validate=false", "-f", manifest(tmp_path, "patched")))
    out = ok(daemon.kubectl("patch", "svc", "patched", "--type=json", "-p", json.dumps([
        {"op": "add", "path": "/metadata/labels", "value": {"tier": "front"}},
        {"op": "replace", "path": "/spec/ports/0/port", "value": 8080}])))
    assert out == "service/patched patched\n"
    svc = stored(daemon, "patched")
    assert svc["metadata"]["labels"] == {"tier": "front"}
    assert svc["spec"]["ports"][0]["port"] == 8080
    failed = daemon.kubectl("patch", "svc", "patched", "--type=json", "-p",
                            '[{"op": "test", "path": "/spec/type", "value": "NodePort"}]')
    assert failed.returncode == 1 and "cannot be applied" in failed.stderr
    # status through the subresource; a status on the main resource is ignored, a spec on
    # the subresource too
    lb = {"loadBalancer": {"ingress": [{"ip": "192.0.2.7"}]}}
    ok(daemon.kubectl("patch", "svc", "patched", "--subresource=status", "--type=merge", "-p",
                      json.dumps({"status": lb, "spec": {"type": "NodePort"}})))
    svc = stored(daemon, "patched")
    assert svc["status"] == lb and svc["spec"]["type"] == "ClusterIP"
    ok(daemon.kubectl("patch", "svc", "patched", "--type=merge", "-p",
                      '{"status": {"loadBalancer": {}}}'))
    assert stored(daemon, "patched")["status"] == lb
    out = ok(daemon.kubectl("get", "svc", "patched", "--subresource=status", "-o",
                            "jsonpath={.status.loadBalancer.ingress[0].ip}"))
    assert out == "192.0.2.7"
    # a patch that changes nothing is not stored: same version, and kubectl says so
    version = stored(daemon, "patched")["metadata"]["resourceVersion"]
    out = ok(daemon.kubectl("patch", "svc", "patched", "--type=merge", "-p",
                            '{"metadata": {"labels": {"tier": "front"}}}'))
    assert out == "service/patched patched (no change)\n"
    assert stored(daemon, "patched")["metadata"]["resourceVersion"] == version


@needs_kubectl
def test_kubectl_dry_run_server_stores_and_allocates_nothing(daemon: Daemon, tmp_path: Path):
    out = ok(daemon.kubectl("create", "--validate=false", "--dry-run=server", "-f",
                            manifest(tmp_path, "dry", extra="  type: NodePort\n"), "-o", "json"))
    answer = json.loads(out)
    assert answer["spec"]["clusterIP"] and answer["spec"]["ports"][0]["nodePort"]
    assert missing(daemon, "/api/v1/namespaces/default/services/dry")
    ok(daemon.kubectl("apply", "--validate=false", "-f", manifest(tmp_path, "dry-kept")))
    kept = stored(daemon, "dry-kept")
    out = ok(daemon.kubectl("delete", "svc", "dry-kept", "--dry-run=server"))
    assert out == 'service "dry-kept" deleted (server dry run)\n'
    out = ok(daemon.kubectl("apply", "--validate=false", "--dry-run=server", "-f",
                            manifest(tmp_path, "dry-kept", port=81)))
    assert out == "service/dry-kept configured (server dry run)\n"
    assert stored(daemon, "dry-kept") == kept
    # no address stayed taken: every address the dry run showed is still free to ask for
    ip = answer["spec"]["clusterIP"]
    taken = ok(daemon.kubectl("create", "--validate=false", "-f", manifest(
        tmp_path, "dry", extra=f"  clusterIP: {ip}\n")))
    assert taken == "service/dry created\n"


@needs_kubectl
def test_kubectl_diff_shows_a_change_and_then_none(daemon: Daemon, tmp_path: Path):
    path = manifest(tmp_path, "diffed")
    ok(daemon.kubectl("apply", "--validate=false", "-f", path))
    assert ok(daemon.kubectl("diff", "-f", path)) == ""
    path = manifest(tmp_path, "diffed", port=81)
    changed = daemon.kubectl("diff", "-f", path)
    assert changed.returncode == 1, changed.stderr  # 1: differences, as diff(1)
    assert "-  - port: 80\n" in changed.stdout and "+  - port: 81\n" in changed.stdout
    assert stored(daemon, "diffed")["spec"]["ports"][0]["port"] == 80
    ok(daemon.kubectl("apply", "--validate=false", "-f", path))
    assert [p["port"] for p in stored(daemon, "diffed")["spec"]["ports"]] == [81]
    assert ok(daemon.kubectl("diff", "-f", path)) == ""


@needs_kubectl
def test_kubectl_apply_that_drops_session_affinity_goes_back_to_none(daemon: Daemon,
                                                                      tmp_path: Path):
    ok(daemon.kubectl("apply", "--validate=false", "-f", manifest(
        tmp_path, "sticky", extra="  sessionAffinity: ClientIP\n")))
    svc = stored(daemon, "sticky")
    assert svc["spec"]["sessionAffinityConfig"] == {"clientIP": {"timeoutSeconds": 10800}}
    out = ok(daemon.kubectl("apply", "--validate=false", "-f", manifest(tmp_path, "sticky")))
    assert out == "service/sticky configured\n"
    spec = stored(daemon, "sticky")["spec"]
    assert spec["sessionAffinity"] == "None" and "sessionAffinityConfig" not in spec


@needs_kubectl
def test_kubectl_namespaces(daemon: Daemon, tmp_path: Path):
    names = ok(daemon.kubectl("get", "ns", "-o", "name")).split()
    assert {"namespace/default", "namespace/kube-system", "namespace/kube-public",
            "namespace/kube-node-lease"} <= set(names)
    path = manifest(tmp_path, "in-team")
    refused = daemon.kubectl("-n", "team", "apply", "--validate=false", "-f", path)
    assert refused.returncode == 1 and 'namespaces "team" not found' in refused.stderr
    assert ok(daemon.kubectl("create", "namespace", "team")) == "namespace/team created\n"
    ok(daemon.kubectl("-n", "team", "apply", "--validate=false", "-f", path))
    ok(daemon.kubectl("-n", "team", "run", "web", "--image=x", "--restart=Never"))
    ip = stored(daemon, "in-team", "team")["spec"]["clusterIP"]
    out = ok(daemon.kubectl("delete", "namespace", "team", "--timeout=20s"))
    assert out == 'namespace "team" deleted\n'
    assert missing(daemon, "/api/v1/namespaces/team")
    assert daemon.request("GET", "/api/v1/namespaces/team/services")["items"] == []
    assert daemon.request("GET", "/api/v1/namespaces/team/pods")["items"] == []
    refused = daemon.kubectl("delete", "namespace", "default")
    assert refused.returncode == 1 and "may not be deleted" in refused.stderr
    # its ClusterIP went with it
    ok(daemon.kubectl("create", "--validate=false", "-f", manifest(
        tmp_path, "after-team", extra=f"  clusterIP: {ip}\n")))


# -- lbcore's CLI -------------------------------------------------------------------------------


def test_lbcore_cli_namespaces(daemon: Daemon, tmp_path: Path):
    out = daemon.cli("get", "ns")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0].split() == ["NAME", "STATUS", "AGE"]
    assert out.stdout.splitlines()[1].split()[:2] == ["default", "Active"]
    ns = tmp_path / "ns.yaml"
    ns.write_text("{apiVersion: v1, kind: Namespace, metadata: {name: cli-team}}\n")
    assert daemon.cli("create", "-f", str(ns)).stdout == "namespace/cli-team created\n"
    path = manifest(tmp_path, "cli-svc")
    assert daemon.cli("-n", "cli-team", "apply", "-f", path).returncode == 0
    out = daemon.cli("delete", "ns", "cli-team")
    assert out.stdout == 'namespace "cli-team" deleted\n', out.stderr
    assert daemon.request("GET", "/api/v1/namespaces/cli-team/services")["items"] == []
    out = daemon.cli("-n", "cli-team", "apply", "-f", path)
    assert out.returncode == 1 and 'namespaces "cli-team" not found' in out.stderr


def test_lbcore_cli_apply_that_drops_session_affinity(daemon: Daemon, tmp_path: Path):
    path = manifest(tmp_path, "cli-sticky", extra="  sessionAffinity: ClientIP\n")
    assert daemon.cli("apply", "-f", path).returncode == 0
    path = manifest(tmp_path, "cli-sticky")
    out = daemon.cli("apply", "-f", path)
    assert out.stdout == "service/cli-sticky configured\n", out.stderr
    spec = stored(daemon, "cli-sticky")["spec"]
    assert spec["sessionAffinity"] == "None" and "sessionAffinityConfig" not in spec


def test_lbcore_cli_dry_run_server(daemon: Daemon, tmp_path: Path):
    path = manifest(tmp_path, "cli-dry", extra="  type: NodePort\n")
    out = daemon.cli("apply", "--dry-run=server", "-f", path)
    assert out.stdout == "service/cli-dry created (server dry run)\n", out.stderr
    assert missing(daemon, "/api/v1/namespaces/default/services/cli-dry")
    assert daemon.cli("apply", "-f", path).returncode == 0
    kept = stored(daemon, "cli-dry")
    out = daemon.cli("delete", "svc", "cli-dry", "--dry-run=server")
    assert out.stdout == 'service "cli-dry" deleted (server dry run)\n', out.stderr
    out = daemon.cli("apply", "--dry-run=server", "-f", manifest(tmp_path, "cli-dry", port=81,
                                                                 extra="  type: NodePort\n"))
    assert out.stdout == "service/cli-dry configured (server dry run)\n", out.stderr
    assert stored(daemon, "cli-dry") == kept


def test_lbcore_cli_patch_json_and_status(daemon: Daemon, tmp_path: Path):
    assert daemon.cli("apply", "-f", manifest(tmp_path, "cli-patched")).returncode == 0
    out = daemon.cli("patch", "svc", "cli-patched", "--type=json", "-p",
                     '[{"op": "replace", "path": "/spec/ports/0/port", "value": 8081}]')
    assert out.stdout == "service/cli-patched patched\n", out.stderr
    assert stored(daemon, "cli-patched")["spec"]["ports"][0]["port"] == 8081
    lb = {"loadBalancer": {"ingress": [{"ip": "192.0.2.9"}]}}
    out = daemon.cli("patch", "svc", "cli-patched", "--subresource=status", "--type=merge",
                     "-p", json.dumps({"status": lb}))
    assert out.returncode == 0, out.stderr
    assert stored(daemon, "cli-patched")["status"] == lb
    out = daemon.cli("patch", "svc", "cli-patched", "--type=json", "-p", "{}")
    assert out.returncode == 1 and "list of operations" in out.stderr
    assert until(lambda: stored(daemon, "cli-patched")["status"], bool) == lb
    out = daemon.cli("patch", "svc", "cli-patched", "--type=merge", "-p",
                     json.dumps({"status": lb}), "--subresource=status")
    assert out.stdout == "service/cli-patched patched (no change)\n", out.stderr


# -- events -------------------------------------------------------------------------------------

def events_about(daemon: Daemon, name: str) -> list[dict[str, Any]]:
    query = f"?fieldSelector=involvedObject.kind%3DService,involvedObject.name%3D{name}"
    return daemon.request("GET", f"/api/v1/namespaces/default/events{query}")["items"]


def test_events_of_allocation_and_of_an_unserved_node_port(daemon: Daemon, tmp_path: Path):
    assert daemon.cli("apply", "-f", manifest(tmp_path, "evented",
                                              extra="  type: NodePort\n")).returncode == 0
    events = until(lambda: events_about(daemon, "evented"), lambda e: len(e) == 3)
    svc = stored(daemon, "evented")
    ip, node_port = svc["spec"]["clusterIP"], svc["spec"]["ports"][0]["nodePort"]
    assert sorted((e["type"], e["reason"], e["message"]) for e in events) == [
        ("Normal", "ClusterIPAllocated", f"Allocated ClusterIP {ip} (IPv4)"),
        ("Normal", "NodePortAllocated", f"Allocated NodePort {node_port} for port 80/TCP"),
        ("Warning", "NodePortNotServed",
         f"node port {node_port} is not served: no running frontend serves node ports "
         "(frontends: none); add nodeport, iptables or nftables to the config's frontends"),
    ]
    for e in events:
        assert e["involvedObject"]["uid"] == svc["metadata"]["uid"]
        assert e["source"] == {"component": "lbcore"} and e["count"] == 1
    ours = daemon.cli("describe", "svc", "evented")
    assert ours.returncode == 0, ours.stderr
    assert ours.stdout.split("\nEvents:\n")[1].splitlines()[:2] == [
        "  Type     Reason              Age   From    Message",
        "  ----     ------              ----  ----    -------"]
    assert [r[:2] for r in describe_text(ours.stdout)[1][2:]] == [
        ["Normal", "ClusterIPAllocated"], ["Normal", "NodePortAllocated"],
        ["Warning", "NodePortNotServed"]]
    listed = daemon.cli("get", "events")
    assert listed.stdout.splitlines()[0].split() == ["LAST", "SEEN", "TYPE", "REASON", "OBJECT",
                                                     "MESSAGE"]
    assert any(r.split()[1:4] == ["Normal", "ClusterIPAllocated", "service/evented"]
               for r in listed.stdout.splitlines())
    if KUBECTL is None:
        return
    theirs = daemon.kubectl("describe", "service", "evented")
    assert theirs.returncode == 0, theirs.stderr
    assert describe_text(theirs.stdout) == describe_text(ours.stdout)
    names = ok(daemon.kubectl("get", "events", "-o", "name")).split()
    assert {f"event/{e['metadata']['name']}" for e in events} <= set(names)


# -- TLS and the kubeconfig -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory):
    d = Daemon(tmp_path_factory.mktemp("tls"), admin_tls="generate")
    yield d
    d.stop()


def test_the_daemon_serves_https_and_writes_a_kubeconfig_with_its_ca_and_token(secure: Daemon):
    assert secure.url.startswith("https://127.0.0.1:")
    config = yaml.safe_load(secure.kubeconfig.read_text())
    cluster = config["clusters"][0]["cluster"]
    assert cluster["server"] == secure.url
    ca = base64.b64decode(cluster["certificate-authority-data"])
    assert ca == (secure.data_dir / "ca.crt").read_bytes()
    assert config["users"][0]["user"] == {"token": secure.token}
    assert oct(secure.kubeconfig.stat().st_mode & 0o777) == "0o600"
    assert secure.cli("kubeconfig").stdout == secure.kubeconfig.read_text()
    # a write without the token is refused, over TLS as over HTTP
    anonymous = Daemon.__new__(Daemon)
    anonymous.__dict__.update(secure.__dict__, token=None)
    with pytest.raises(urllib.error.HTTPError) as refused:
        anonymous.request("POST", "/api/v1/namespaces/default/services",
                          {"metadata": {"name": "x"}, "spec": {"ports": [{"port": 80}]}})
    assert refused.value.code == 401
    # and one that does not trust the CA does not connect
    with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
        urllib.request.urlopen(secure.url + "/version", timeout=10)


@needs_kubectl
def test_kubectl_writes_with_the_token_over_tls(secure: Daemon, tmp_path: Path):
    out = ok(secure.kubectl("create", "-f", manifest(tmp_path, "over-tls")))
    assert out == "service/over-tls created\n"
    ok(secure.kubectl("patch", "svc", "over-tls", "--type=json", "-p",
                      '[{"op": "add", "path": "/metadata/labels", "value": {"a": "b"}}]'))
    assert stored(secure, "over-tls")["metadata"]["labels"] == {"a": "b"}
    out = ok(secure.kubectl("delete", "svc", "over-tls"))
    assert out == 'service "over-tls" deleted\n'
    refused = secure.kubectl("--token=not-the-token", "create", "-f",
                             manifest(tmp_path, "over-tls"))
    assert refused.returncode == 1
    assert "a valid bearer token is required for writes" in refused.stderr


def test_lbcore_cli_writes_over_tls_with_what_the_daemon_wrote(secure: Daemon, tmp_path: Path):
    out = secure.cli("apply", "-f", manifest(tmp_path, "cli-tls"))
    assert out.stdout == "service/cli-tls created\n", out.stderr
    out = secure.cli("get", "svc", "cli-tls", "-o", "name")
    assert out.stdout == "service/cli-tls\n", out.stderr
    # the kubeconfig alone, through the official client, as for a cluster
    out = secure.cli("--kubeconfig", str(secure.kubeconfig), "delete", "svc", "cli-tls")
    assert out.stdout == 'service "cli-tls" deleted\n', out.stderr
