"""The daemon's endpoints controller: Endpoints and EndpointSlices in the store, as a cluster has.

A real ``lbcore run`` (its own data dir, a free loopback port), driven over its REST API, the
``lbcore`` CLI and, where it is installed, kubectl.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from lbcore_daemon import KUBECTL, SLICES, Daemon, describe_text, until


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory):
    d = Daemon(tmp_path_factory.mktemp("endpoints"))
    yield d
    d.stop()


def service(name: str, selector: dict[str, str] | None = None, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"ports": [{"port": 80, "targetPort": 8080}], **spec}
    if selector is not None:
        body["selector"] = selector
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name}, "spec": body}


def pod(name: str, ip: str, labels: dict[str, str], ready: bool = True) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": labels},
            "spec": {"nodeName": "node-a", "containers": [{"name": "c", "image": "x"}]},
            "status": {"phase": "Running", "podIP": ip, "conditions": [
                {"type": "Ready", "status": "True" if ready else "False"}]}}


def addresses(slices: list[dict[str, Any]]) -> list[str]:
    return sorted(ep["addresses"][0] for s in slices for ep in s.get("endpoints") or [])


def test_slices_and_endpoints_follow_the_pods(daemon: Daemon) -> None:
    daemon.create(service("web", {"app": "web"}))
    created = daemon.create(pod("web-1", "127.0.1.1", {"app": "web"}))
    daemon.create(pod("web-2", "127.0.1.2", {"app": "web"}, ready=False))
    slices = until(lambda: daemon.slices("web"), lambda s: len(addresses(s)) == 2)
    assert len(slices) == 1
    sl = slices[0]
    assert sl["metadata"]["name"].startswith("web-")
    assert sl["metadata"]["labels"] == {
        "kubernetes.io/service-name": "web",
        "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.lbcore.io"}
    assert sl["metadata"]["ownerReferences"][0]["kind"] == "Service"
    assert sl["addressType"] == "IPv4"
    assert sl["ports"] == [{"name": "", "port": 8080, "protocol": "TCP"}]
    first, second = sl["endpoints"]
    assert first == {
        "addresses": ["127.0.1.1"],
        "conditions": {"ready": True, "serving": True, "terminating": False},
        "targetRef": {"kind": "Pod", "namespace": "default", "name": "web-1",
                      "uid": created["metadata"]["uid"]},
        "nodeName": "node-a"}
    assert second["conditions"] == {"ready": False, "serving": False, "terminating": False}
    ep = daemon.request("GET", "/api/v1/namespaces/default/endpoints/web")
    assert ep["subsets"] == [{
        "addresses": [{"ip": "127.0.1.1", "nodeName": "node-a", "targetRef": first["targetRef"]}],
        "notReadyAddresses": [{"ip": "127.0.1.2", "nodeName": "node-a",
                               "targetRef": second["targetRef"]}],
        "ports": [{"name": "", "port": 8080, "protocol": "TCP"}]}]


def test_a_label_change_is_a_watch_event_on_the_slice(daemon: Daemon) -> None:
    daemon.create(service("watched", {"app": "watched"}))
    for i in (1, 2):
        daemon.create(pod(f"watched-{i}", f"127.0.2.{i}", {"app": "watched"}))
    before = until(lambda: daemon.slices("watched"), lambda s: len(addresses(s)) == 2)
    version = before[0]["metadata"]["resourceVersion"]
    query = (f"?watch=1&resourceVersion={version}"
             "&labelSelector=kubernetes.io/service-name%3Dwatched&timeoutSeconds=10")
    with urllib.request.urlopen(daemon.url + SLICES + query, timeout=10) as stream:
        daemon.request("PATCH", "/api/v1/namespaces/default/pods/watched-2",
                       {"metadata": {"labels": {"app": "elsewhere"}}},
                       "application/merge-patch+json")
        event = json.loads(stream.readline())
    assert event["type"] == "MODIFIED"
    assert event["object"]["metadata"]["name"] == before[0]["metadata"]["name"]
    assert addresses([event["object"]]) == ["127.0.2.1"]


def test_a_service_without_selector_keeps_what_users_write(daemon: Daemon) -> None:
    daemon.create(service("external"))
    written = daemon.create({
        "apiVersion": "v1", "kind": "Endpoints",
        "metadata": {"name": "external", "labels": {"team": "a"}},
        "subsets": [{"addresses": [{"ip": "127.0.3.1"}], "notReadyAddresses": [{"ip": "127.0.3.2"}],
                     "ports": [{"port": 8080}]}]})
    # mirrored into a slice, as Kubernetes' EndpointSliceMirroring controller does
    [mirrored] = until(lambda: daemon.slices("external"), bool)
    assert mirrored["metadata"]["labels"] == {
        "team": "a", "kubernetes.io/service-name": "external",
        "endpointslice.kubernetes.io/managed-by": "endpointslicemirroring-controller.lbcore.io"}
    assert [(e["addresses"], e["conditions"]["ready"]) for e in mirrored["endpoints"]] == [
        (["127.0.3.1"], True), (["127.0.3.2"], False)]
    assert mirrored["ports"] == [{"name": "", "port": 8080, "protocol": "TCP"}]
    # the user's Endpoints is left as written
    ep = daemon.request("GET", "/api/v1/namespaces/default/endpoints/external")
    assert ep["metadata"]["resourceVersion"] == written["metadata"]["resourceVersion"]
    out = daemon.cli("get", "ep", "external")
    assert out.stdout.splitlines()[1].split()[:2] == ["external", "127.0.3.1:8080"]
    out = daemon.cli("describe", "svc", "external")
    assert "Endpoints:                127.0.3.1:8080\n" in out.stdout
    # a user's slice for a selectorless service is never touched
    user_slice = daemon.request("POST", SLICES, {
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "external-by-hand",
                     "labels": {"kubernetes.io/service-name": "external"}},
        "addressType": "IPv4", "ports": [{"port": 8080}],
        "endpoints": [{"addresses": ["127.0.3.3"]}]})
    daemon.request("DELETE", "/api/v1/namespaces/default/endpoints/external")
    until(lambda: daemon.slices("external"), lambda s: len(s) == 1)
    [left] = daemon.slices("external")
    assert left["metadata"]["resourceVersion"] == user_slice["metadata"]["resourceVersion"]


def test_a_hundred_endpoints_per_slice(daemon: Daemon) -> None:
    def add(i: int) -> None:
        daemon.create(pod(f"big-{i}", f"127.0.{10 + i // 200}.{1 + i % 200}", {"app": "big"}))

    for i in range(230):  # most pods first: one reconcile splits them when the service comes
        add(i)
    daemon.create(service("big", {"app": "big"}))
    until(lambda: daemon.slices("big"), lambda s: len(addresses(s)) == 230)
    for i in range(230, 250):  # then one by one: they fill the slice with room
        add(i)
    slices = until(lambda: daemon.slices("big"), lambda s: len(addresses(s)) == 250)
    assert sorted(len(s["endpoints"]) for s in slices) == [50, 100, 100]
    assert len(set(addresses(slices))) == 250
    out = daemon.cli("describe", "service", "big")
    assert "+ 247 more...\n" in out.stdout


@pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed")
def test_kubectl_reads_them_and_describes_as_lbcore_does(daemon: Daemon) -> None:
    daemon.create(service("my-service", {"app": "my-app"}, sessionAffinity="ClientIP"))
    for i in (1, 2):
        daemon.create(pod(f"my-app-{i}", f"127.0.4.{i}", {"app": "my-app"}))
    until(lambda: daemon.slices("my-service"), lambda s: len(addresses(s)) == 2)
    out = daemon.kubectl("get", "ep", "my-service")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[1].split()[0] == "my-service"
    out = daemon.kubectl("get", "endpointslices", "-l", "kubernetes.io/service-name=my-service",
                         "-o", "name")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("endpointslice.discovery.k8s.io/my-service-")
    ours = daemon.cli("describe", "service", "my-service")
    theirs = daemon.kubectl("describe", "service", "my-service")
    assert theirs.returncode == 0, theirs.stderr
    assert "Endpoints:                127.0.4.1:8080,127.0.4.2:8080\n" in theirs.stdout
    # the same text; the ages of the Events (a second apart at most) aside
    assert describe_text(ours.stdout) == describe_text(theirs.stdout)
    rich = service("rich", {"app": "my-app"}, type="NodePort", externalIPs=["127.0.4.200"],
                   externalTrafficPolicy="Local", internalTrafficPolicy="Local",
                   ports=[{"name": "http", "port": 80, "targetPort": 8080},
                          {"name": "dns", "port": 53, "protocol": "UDP"}])
    rich["metadata"].update(labels={"b": "2", "a": "1"},
                            annotations={"note": "x" * 200, "multi": "one\ntwo", "k": "v"})
    daemon.create(rich)
    until(lambda: daemon.slices("rich"), bool)
    daemon.create(service("empty", {"app": "nobody"}))  # a placeholder slice only
    until(lambda: daemon.slices("empty"), bool)
    # a user's (mirrored) Endpoints, "+ N more...", most optional lines, no ready endpoint
    for name in ("external", "big", "rich", "empty"):
        theirs = daemon.kubectl("describe", "svc", name)
        assert theirs.stdout.startswith(f"Name:                     {name}\n"), theirs.stderr
        ours = daemon.cli("describe", "svc", name)
        assert describe_text(ours.stdout) == describe_text(theirs.stdout)


def test_the_data_path_takes_the_stored_slices(tmp_path: Path) -> None:
    """In the daemon, ClusterState receives the controller's EndpointSlices from the store and
    takes the endpoints from them, as it does from a cluster's."""
    import asyncio

    from lbcore.runtime.config import config_from_mapping
    from lbcore.runtime.daemon import Daemon as InProcess

    config = config_from_mapping({"admin_address": "127.0.0.1:0", "data_dir": str(tmp_path),
                                  "frontends": []})

    async def scenario() -> None:
        daemon = InProcess(config)
        await daemon.start()
        try:
            store, state = daemon.store, daemon.state
            assert state is not None
            store.create(service("web", {"app": "web"}))
            for i in (1, 2):
                store.create(pod(f"web-{i}", f"127.0.5.{i}", {"app": "web"}))
            table = state.table
            held: list[str] = []
            stored: list[str] = []
            for _ in range(400):  # bounded: 10 s
                await asyncio.sleep(0.025)
                if table.get("Service", "default", "web") is None:
                    continue
                # until the stored slice reaches it, the table shows the slice an endpoints
                # controller would write (named web-00000): wait for the stored one's name
                held = [s.name for s in table.endpoint_slices("default", "web")
                        if s.labels.get("endpointslice.kubernetes.io/managed-by")]
                stored = [o["metadata"]["name"] for o in store.list(
                    "EndpointSlice", "default", "kubernetes.io/service-name=web")[0]]
                if held == stored and [e.ip for e in table.endpoints("default", "web")[""]] == [
                        "127.0.5.1", "127.0.5.2"]:
                    break
            assert held == stored and len(stored) == 1
            assert [e.port for e in table.endpoints("default", "web")[""]] == [8080, 8080]
        finally:
            await daemon.stop()

    asyncio.run(scenario())
