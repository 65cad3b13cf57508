"""The admin API over HTTP on 127.0.0.1: raw requests (urllib) and the official client."""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.error
import urllib.request
from typing import Any

import pytest
from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

import lbcore
from lbcore.model.kinds import ALL_KINDS
from lbcore.runtime.store import Store


def call(method: str, url: str, body: Any = None, token: str | None = None,
         content_type: str = "application/json", timeout: float = 10) -> tuple[int, Any]:
    data = None
    if body is not None:
        data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Content-Type", content_type)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def watch_lines(url: str, timeout: float = 10) -> tuple[list[dict[str, Any]], float]:
    """Every event of a watch request until the server ends it, and how long that took."""
    started = time.monotonic()
    with urllib.request.urlopen(url, timeout=timeout) as response:
        assert response.headers["Content-Type"].startswith("application/json")
        events = [json.loads(line) for line in response if line.strip()]
    return events, time.monotonic() - started


def service(name: str, **spec: Any) -> dict[str, Any]:
    body = {"selector": {"app": name}, "ports": [{"name": "http", "port": 80}]}
    body.update(spec)
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name}, "spec": body}


def kube(url: str, token: str | None = None) -> client.ApiClient:
    configuration = client.Configuration()
    configuration.host = url
    if token:
        configuration.api_key = {"authorization": token}
        configuration.api_key_prefix = {"authorization": "Bearer"}
    return client.ApiClient(configuration)


# -- raw HTTP -----------------------------------------------------------------------------------


def test_create_get_list_update_delete_with_kubernetes_shapes(admin):
    base = f"{admin.url}/api/v1/namespaces/default/services"
    code, created = call("POST", base, service("web"))
    assert code == 201 and created["spec"]["clusterIP"] == "127.10.0.1"
    code, got = call("GET", f"{base}/web")
    assert code == 200 and got == created
    code, listed = call("GET", base)
    assert code == 200 and listed["kind"] == "ServiceList" and listed["apiVersion"] == "v1"
    assert listed["metadata"]["resourceVersion"] == "1"
    assert [s["metadata"]["name"] for s in listed["items"]] == ["web"]
    created["metadata"]["labels"] = {"tier": "front"}
    code, updated = call("PUT", f"{base}/web", created)
    assert code == 200 and updated["metadata"]["resourceVersion"] == "2"
    code, conflict = call("PUT", f"{base}/web", created)  # still resourceVersion 1
    assert code == 409 and conflict["kind"] == "Status" and conflict["reason"] == "Conflict"
    code, deleted = call("DELETE", f"{base}/web")
    assert code == 200 and deleted["metadata"]["name"] == "web"
    code, missing = call("GET", f"{base}/web")
    assert code == 404
    assert missing == {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                       "message": 'services "web" not found', "reason": "NotFound", "code": 404,
                       "details": {"name": "web", "kind": "services"}}


def test_invalid_object_is_422_with_every_field_cause(admin):
    bad = service("Bad_Name", ports=[{"port": 0}], sessionAffinity="Sticky")
    code, status = call("POST", f"{admin.url}/api/v1/namespaces/default/services", bad)
    assert code == 422 and status["reason"] == "Invalid"
    fields = {c["field"] for c in status["details"]["causes"]}
    assert {"metadata.name", "spec.ports[0].port", "spec.sessionAffinity"} <= fields
    assert admin.store.list("Service")[0] == []


def test_duplicate_create_is_409_and_bad_bodies_are_400(admin):
    base = f"{admin.url}/api/v1/namespaces/default/services"
    assert call("POST", base, service("web"))[0] == 201
    code, status = call("POST", base, service("web"))
    assert (code, status["reason"]) == (409, "AlreadyExists")
    code, status = call("POST", base, "{not json")
    assert (code, status["reason"]) == (400, "BadRequest")
    other = service("x")
    other["metadata"]["namespace"] = "prod"
    code, status = call("POST", base, other)
    assert code == 400 and "metadata.namespace" in status["message"]
    code, status = call("PUT", f"{base}/other-name", service("web"))
    assert code == 400 and "does not match the name on the URL" in status["message"]


def test_unknown_resources_and_methods_answer_with_a_status(admin):
    code, status = call("GET", f"{admin.url}/api/v1/namespaces/default/deployments")
    assert (code, status["reason"]) == (404, "NotFound")
    code, status = call("GET", f"{admin.url}/api/v1/namespaces/default/endpointslices")
    assert code == 404  # served under discovery.k8s.io only
    code, status = call("POST", f"{admin.url}/api/v1/namespaces/default/services/web", {})
    assert (code, status["reason"]) == (405, "MethodNotAllowed")


def test_yaml_bodies_are_accepted(admin):
    manifest = "kind: Service\nmetadata:\n  name: web\nspec:\n  ports:\n  - port: 80\n"
    code, created = call("POST", f"{admin.url}/api/v1/namespaces/default/services", manifest,
                         content_type="application/yaml")
    assert code == 201 and created["spec"]["ports"][0]["targetPort"] == 80


def test_list_filters_by_namespace_label_and_field_selector(admin):
    admin.store.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "prod"}})
    for name, ns, labels in (("a", "default", {"app": "web"}), ("b", "default", {"app": "db"}),
                             ("c", "prod", {"app": "web"})):
        svc = service(name)
        svc["metadata"].update(namespace=ns, labels=labels)
        admin.store.create(svc)

    def names(path: str) -> list[str]:
        code, body = call("GET", admin.url + path)
        assert code == 200, body
        return [o["metadata"]["name"] for o in body["items"]]

    assert names("/api/v1/services") == ["a", "b", "c"]
    assert names("/api/v1/namespaces/prod/services") == ["c"]
    assert names("/api/v1/services?labelSelector=app%3Dweb") == ["a", "c"]
    assert names("/api/v1/services?labelSelector=app%20notin%20(web)") == ["b"]
    assert names("/api/v1/services?fieldSelector=metadata.name%3Db") == ["b"]
    assert names("/api/v1/services?fieldSelector=metadata.namespace!%3Ddefault") == ["c"]
    code, status = call("GET", admin.url + "/api/v1/services?labelSelector=app%20in%20(")
    assert code == 400 and "labelSelector" in status["message"]
    code, status = call("GET", admin.url + "/api/v1/services?fieldSelector=spec.type%3DX")
    assert code == 400 and "spec.type" in status["message"]


def test_endpointslices_are_served_under_discovery_k8s_io(admin):
    base = f"{admin.url}/apis/discovery.k8s.io/v1/namespaces/default/endpointslices"
    eps = {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
           "metadata": {"name": "web-1", "labels": {"kubernetes.io/service-name": "web"}},
           "addressType": "IPv4", "endpoints": [{"addresses": ["10.0.0.1"]}],
           "ports": [{"port": 8080}]}
    assert call("POST", base, eps)[0] == 201
    code, listed = call("GET", f"{admin.url}/apis/discovery.k8s.io/v1/endpointslices")
    assert code == 200 and listed["kind"] == "EndpointSliceList"
    assert listed["apiVersion"] == "discovery.k8s.io/v1"
    assert [o["metadata"]["name"] for o in listed["items"]] == ["web-1"]


def test_merge_patch_and_apply_patch(admin):
    url = f"{admin.url}/api/v1/namespaces/default/services/web"
    code, applied = call("PATCH", url, service("web"), content_type="application/apply-patch+yaml")
    assert code == 200 and applied["metadata"]["resourceVersion"] == "1"  # created
    code, patched = call("PATCH", url, {"metadata": {"labels": {"tier": "front"}}},
                         content_type="application/merge-patch+json")
    assert code == 200 and patched["metadata"]["labels"] == {"tier": "front"}
    assert patched["spec"]["clusterIP"] == applied["spec"]["clusterIP"]
    code, patched = call("PATCH", url, {"metadata": {"labels": {"tier": None}}},
                         content_type="application/strategic-merge-patch+json")
    assert code == 200 and patched["metadata"].get("labels") == {}
    code, status = call("PATCH", url, {"metadata": {"resourceVersion": "1", "labels": {}}},
                        content_type="application/merge-patch+json")
    assert (code, status["reason"]) == (409, "Conflict")
    code, status = call("PATCH", url, [{"op": "remove", "path": "/spec"}],
                        content_type="application/json-patch+json")
    assert (code, status["reason"]) == (422, "Invalid")  # a Service needs a spec


def test_a_write_is_answered_and_watched_in_the_text_committed_and_a_dry_run_as_it_would_be(
        admin):
    store = admin.store
    base = f"{admin.url}/api/v1/namespaces/default/services"
    code, created = call("POST", base, service("web"))
    assert code == 201
    start = created["metadata"]["resourceVersion"]

    def patch(labels: dict[str, str], query: str = "") -> bytes:
        request = urllib.request.Request(
            f"{base}/web{query}", method="PATCH",
            data=json.dumps({"metadata": {"labels": labels}}).encode())
        request.add_header("Content-Type", "application/merge-patch+json")
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.read()

    # a dry run answers with the object it would store, under the stored version
    dry = json.loads(patch({"tier": "dry"}, "?dryRun=All"))
    assert dry["metadata"]["labels"] == {"tier": "dry"}
    assert call("GET", f"{base}/web")[1] == created
    answer = patch({"tier": "front"})
    stored = store.get("Service", "default", "web")
    assert answer == store.committed_json(stored).encode()
    assert json.loads(answer) == stored and stored["metadata"]["labels"] == {"tier": "front"}
    with urllib.request.urlopen(f"{base}?watch=true&resourceVersion={start}&timeoutSeconds=1",
                                timeout=10) as response:
        lines = [line for line in response if line.strip()]
    assert lines == [b'{"type":"MODIFIED","object":' + answer + b"}\n"]


def test_writes_need_the_bearer_token_and_reads_do_not(store: Store, serve_admin):
    server = serve_admin(store, token="s3cret")
    base = f"{server.url}/api/v1/namespaces/default/services"
    code, status = call("POST", base, service("web"))
    assert (code, status["reason"]) == (401, "Unauthorized")
    assert call("POST", base, service("web"), token="wrong")[0] == 401
    assert call("POST", base, service("web"), token="s3cret")[0] == 201
    assert call("GET", f"{base}/web")[0] == 200
    assert call("DELETE", f"{base}/web")[0] == 401
    assert call("DELETE", f"{base}/web", token="s3cret")[0] == 200


# -- watch over HTTP ----------------------------------------------------------------------------


def test_watch_streams_changes_after_the_version_and_honours_timeout_seconds(admin):
    store = admin.store
    store.create(service("a"))
    url = (f"{admin.url}/api/v1/namespaces/default/services"
           "?watch=true&resourceVersion=1&timeoutSeconds=1")
    writer = threading.Timer(0.2, lambda: (store.create(service("b")),
                                           store.delete("Service", "default", "a")))
    writer.start()
    events, took = watch_lines(url)
    writer.join()
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [
        ("ADDED", "b"), ("DELETED", "a")]
    assert 0.9 <= took < 5


def test_watch_without_a_version_starts_with_synthetic_added_events(admin):
    admin.store.create(service("a"))
    events, _ = watch_lines(f"{admin.url}/api/v1/services?watch=1&timeoutSeconds=0.3")
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [("ADDED", "a")]


def test_watch_from_a_compacted_version_is_one_error_event_with_410(store, serve_admin):
    with Store(None, history=2) as small:
        for name in "abcd":
            small.create(service(name))
        server = serve_admin(small)
        events, _ = watch_lines(f"{server.url}/api/v1/services?watch=true&resourceVersion=1")
    assert len(events) == 1 and events[0]["type"] == "ERROR"
    status = events[0]["object"]
    assert (status["kind"], status["code"], status["reason"]) == ("Status", 410, "Expired")


def test_watch_sends_bookmarks_when_allowed(admin):
    admin.store.create(service("a"))
    url = (f"{admin.url}/api/v1/services?watch=true&resourceVersion=1"
           "&allowWatchBookmarks=true&timeoutSeconds=1")
    events, _ = watch_lines(url)
    assert events and all(e["type"] == "BOOKMARK" for e in events)
    assert events[-1]["object"]["metadata"]["resourceVersion"] == "1"
    events, _ = watch_lines(url.replace("&allowWatchBookmarks=true", ""))
    assert events == []


def test_watch_with_a_label_selector_sees_objects_leave_it(admin):
    store = admin.store
    svc = service("a")
    svc["metadata"]["labels"] = {"app": "web"}
    store.create(svc)
    url = (f"{admin.url}/api/v1/services?watch=true&resourceVersion=1&timeoutSeconds=1"
           "&labelSelector=app%3Dweb")

    def relabel() -> None:
        current = store.get("Service", "default", "a")
        current["metadata"]["labels"] = {"app": "db"}
        store.update(current)

    timer = threading.Timer(0.2, relabel)
    timer.start()
    events, _ = watch_lines(url)
    timer.join()
    assert [e["type"] for e in events] == ["DELETED"]


def test_stopping_the_server_ends_open_watches_at_once(store: Store, serve_admin):
    server = serve_admin(store)
    finished = threading.Event()

    def hold_watch() -> None:
        try:
            watch_lines(f"{server.url}/api/v1/services?watch=true&timeoutSeconds=60", timeout=30)
        except OSError:
            pass
        finished.set()

    thread = threading.Thread(target=hold_watch, daemon=True)
    thread.start()
    time.sleep(0.3)
    started = time.monotonic()
    server.stop()
    assert finished.wait(5)
    assert time.monotonic() - started < 3


# -- the official kubernetes client -------------------------------------------------------------


def test_official_client_create_read_list_delete_and_errors(admin):
    api = client.CoreV1Api(kube(admin.url))
    created = api.create_namespaced_service("default", service("web", type="NodePort"))
    assert created.spec.cluster_ip == "127.10.0.1"
    assert created.spec.ports[0].node_port == 30000
    assert api.read_namespaced_service("web", "default").metadata.uid == created.metadata.uid
    listed = api.list_service_for_all_namespaces()
    assert [s.metadata.name for s in listed.items] == ["web"]
    assert listed.metadata.resource_version == "1"
    with pytest.raises(ApiException) as err:
        api.create_namespaced_service("default", service("web"))
    assert err.value.status == 409
    with pytest.raises(ApiException) as err:
        api.create_namespaced_service("default", service("x", ports=[{"port": 0}]))
    assert err.value.status == 422
    assert json.loads(err.value.body)["details"]["causes"][0]["field"] == "spec.ports[0].port"
    assert api.delete_namespaced_service("web", "default").metadata.name == "web"
    with pytest.raises(ApiException) as err:
        api.read_namespaced_service("web", "default")
    assert err.value.status == 404


def test_official_client_pods_and_endpoint_slices(admin):
    core = client.CoreV1Api(kube(admin.url))
    core.create_namespaced_pod("default", {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "labels": {"app": "web"}},
        "spec": {"containers": [{"name": "c", "image": "x"}]}})
    pods = core.list_namespaced_pod("default", label_selector="app=web")
    assert [p.metadata.name for p in pods.items] == ["p"]
    discovery = client.DiscoveryV1Api(kube(admin.url))
    discovery.create_namespaced_endpoint_slice("default", {
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "web-1", "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4", "endpoints": [{"addresses": ["10.0.0.1"]}],
        "ports": [{"port": 8080}]})
    slices = discovery.list_endpoint_slice_for_all_namespaces()
    assert [s.metadata.name for s in slices.items] == ["web-1"]
    assert slices.items[0].endpoints[0].addresses == ["10.0.0.1"]


def test_official_client_watch_stream(admin):
    api = client.CoreV1Api(kube(admin.url))
    api.create_namespaced_service("default", service("a"))
    seen = []
    stream = watch.Watch()
    for event in stream.stream(api.list_namespaced_service, "default",
                               resource_version="0", timeout_seconds=10):
        seen.append((event["type"], event["object"].metadata.name))
        if event["type"] == "ADDED":
            # deleted once the stream has shown it: a delete on a timer could come before a
            # slow machine has opened the watch, and the watch would then have nothing to show
            admin.store.delete("Service", "default", "a")
        else:
            stream.stop()
    assert seen == [("ADDED", "a"), ("DELETED", "a")]


def test_official_client_watch_raises_410_for_a_compacted_version(serve_admin):
    with Store(None, history=1) as small:
        for name in "abc":
            small.create(service(name))
        server = serve_admin(small)
        api = client.CoreV1Api(kube(server.url))
        with pytest.raises(ApiException) as err:
            for _ in watch.Watch().stream(api.list_service_for_all_namespaces,
                                          resource_version="1", timeout_seconds=1):
                pass
        assert err.value.status == 410
        assert "too old resource version: 1 (2)" in str(err.value)


def test_official_client_discovery_and_version(admin):
    api_client = kube(admin.url)
    assert client.VersionApi(api_client).get_code().git_version.startswith("v1.")
    assert client.CoreApi(api_client).get_api_versions().versions == ["v1"]
    resources = client.CoreV1Api(api_client).get_api_resources()
    # kubectl's names (tests/model/test_kinds.py), from lbcore.KINDS
    assert {r.name: r.short_names for r in resources.resources} == {
        k.plural: list(k.short_names) for k in ALL_KINDS if not k.group} | {
        f"{k.plural}/{sub}": None for k in ALL_KINDS if not k.group
        for sub in k.subresources}
    assert {"services": ["svc"], "pods": ["po"], "endpoints": ["ep"], "namespaces": ["ns"],
            "events": ["ev"]}.items() <= {
        r.name: r.short_names for r in resources.resources}.items()
    groups = client.ApisApi(api_client).get_api_versions()
    assert [g.name for g in groups.groups] == list(dict.fromkeys(
        k.group for k in lbcore.KINDS if k.group))
    assert {"discovery.k8s.io", "networking.k8s.io", "route.openshift.io"} <= {
        g.name for g in groups.groups}
    slices = client.DiscoveryV1Api(api_client).get_api_resources()
    assert [(r.kind, r.short_names) for r in slices.resources] == [("EndpointSlice", [])]


def test_official_client_with_the_token(store: Store, serve_admin):
    server = serve_admin(store, token="s3cret")
    with pytest.raises(ApiException) as err:
        client.CoreV1Api(kube(server.url)).create_namespaced_service("default", service("a"))
    assert err.value.status == 401
    api = client.CoreV1Api(kube(server.url, token="s3cret"))
    assert api.create_namespaced_service("default", service("a")).metadata.name == "a"


def test_a_quiet_watch_whose_client_left_is_closed(admin):
    request = (b"GET /api/v1/services?watch=true&timeoutSeconds=600 HTTP/1.1\r\n"
               b"Host: 127.0.0.1\r\n\r\n")
    with socket.create_connection(("127.0.0.1", admin.port), timeout=5) as conn:
        conn.sendall(request)
        assert conn.recv(1024).startswith(b"HTTP/1.1 200")
        assert admin.store.watchers == 1
    deadline = time.monotonic() + 5
    while admin.store.watchers and time.monotonic() < deadline:
        time.sleep(0.05)
    assert admin.store.watchers == 0
