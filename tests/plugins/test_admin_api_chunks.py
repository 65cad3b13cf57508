"""Lists in chunks (``limit`` and ``continue``), as kubectl and client-go's pager ask for them:
every chunk of one list is the state at the first chunk's resourceVersion, whatever is written
between the chunks."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import urllib.parse
from typing import Any

import pytest
from kubernetes import client
from test_admin_api import call, kube

from lbcore.runtime.store import Store

KUBECTL = shutil.which("kubectl")


def pod(name: str, namespace: str = "default", app: str = "web", version: int = 0
        ) -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": {"app": app},
                     "annotations": {"v": str(version)}},
        "spec": {"containers": [{"name": "c", "image": "x"}]},
    }


def namespaces(store: Store, *names: str) -> None:
    for name in names:
        store.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})


def chunked(url: str, path: str, limit: int, between: Any = None, **query: str
            ) -> tuple[list[dict[str, Any]], list[str], int]:
    """Every item of a list read ``limit`` at a time (``between()`` runs after each chunk), the
    resourceVersion of each chunk, and how many chunks there were."""
    items: list[dict[str, Any]] = []
    versions: list[str] = []
    token = None
    for chunks in range(1, 10_000):
        params = dict(query, limit=str(limit), **({"continue": token} if token else {}))
        code, body = call("GET", f"{url}{path}?{urllib.parse.urlencode(params)}")
        assert code == 200, body
        assert len(body["items"]) <= limit
        items += body["items"]
        versions.append(body["metadata"]["resourceVersion"])
        token = body["metadata"].get("continue")
        if not token:
            return items, versions, chunks
        if between is not None:
            between()
    raise AssertionError("the list never ended")


def names(items: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(o["metadata"]["namespace"], o["metadata"]["name"]) for o in items]


def test_chunks_give_the_whole_list_in_order_at_one_resource_version(admin):
    namespaces(admin.store, "a", "b")
    for ns in ("default", "a", "b"):
        for i in range(7):
            admin.store.create(pod(f"p{i}", ns))
    whole, rv = admin.store.list("Pod")
    for limit in (1, 2, 5, 21, 22, 500):
        items, versions, chunks = chunked(admin.url, "/api/v1/pods", limit)
        assert items == whole
        assert set(versions) == {rv}
        assert chunks == max(1, -(-21 // limit))  # no empty last chunk
    # one namespace, in chunks
    items, _, chunks = chunked(admin.url, "/api/v1/namespaces/a/pods", 3)
    assert names(items) == [("a", f"p{i}") for i in range(7)] and chunks == 3


@pytest.fixture(params=["memory", "file"])
def any_admin(request, tmp_path, serve_admin):
    """The admin API of a store in memory (read under the writers' lock) and of one in a file
    (read through a connection of its own, in a snapshot)."""
    with Store(None if request.param == "memory" else tmp_path / "store.db") as store:
        yield serve_admin(store)


def test_writes_between_chunks_do_not_show_in_the_list(any_admin):
    # deleted, changed and created objects on both sides of the point reached: the list is
    # the state when its first chunk was read
    admin = any_admin
    for i in range(20):
        admin.store.create(pod(f"p{i:02d}"))
    before, rv = admin.store.list("Pod")
    rng = random.Random(7)
    written = []

    def write() -> None:
        for _ in range(3):
            i = rng.randrange(30)
            name = f"p{i:02d}"
            try:
                old = admin.store.get("Pod", "default", name)
            except Exception:
                admin.store.create(pod(name, version=1))
                written.append(("create", name))
                continue
            if rng.random() < 0.5:
                admin.store.delete("Pod", "default", name)
                written.append(("delete", name))
            else:
                old["metadata"]["annotations"]["v"] = str(int(old["metadata"]["annotations"]["v"]) + 1)
                admin.store.update(old)
                written.append(("update", name))

    items, versions, _ = chunked(admin.url, "/api/v1/pods", 3, between=write)
    assert {"create", "delete", "update"} <= {what for what, _ in written}
    assert items == before and set(versions) == {rv}
    after, rv_after = admin.store.list("Pod")
    assert after != before and int(rv_after) > int(rv)


def test_selectors_apply_to_chunks(admin):
    for i in range(30):
        admin.store.create(pod(f"p{i:02d}", app="web" if i % 3 else "db"))
    for query in ({"labelSelector": "app=db"}, {"labelSelector": "app!=db"},
                  {"fieldSelector": "metadata.name!=p04"},
                  {"labelSelector": "app=none"}):
        code, whole = call("GET", f"{admin.url}/api/v1/pods?{urllib.parse.urlencode(query)}")
        assert code == 200
        for limit in (1, 4, 100):
            items, _, _ = chunked(admin.url, "/api/v1/pods", limit, **query)
            assert items == whole["items"], (query, limit)


def test_a_continue_older_than_the_history_is_410_expired(serve_admin):
    with Store(None, history=5) as small:
        admin = serve_admin(small)
        for i in range(6):
            small.create(pod(f"p{i}"))
        code, body = call("GET", f"{admin.url}/api/v1/pods?limit=2")
        assert code == 200 and body["metadata"]["continue"]
        for i in range(6, 12):
            small.create(pod(f"p{i}"))
        code, status = call(
            "GET", f"{admin.url}/api/v1/pods?limit=2&continue={body['metadata']['continue']}")
        assert code == 410 and status["reason"] == "Expired"
        assert "continue" in status["message"]


def test_bad_limit_and_continue_are_400_naming_the_parameter(admin):
    admin.store.create(pod("p"))
    for query, field in (("limit=two", "limit"), ("limit=1&continue=bm90LWEtdG9rZW4", "continue"),
                         ("limit=1&continue=%%%", "continue"),
                         ("limit=1&continue=eyJydiI6MSwiYWZ0ZXIiOlsiYSIsImIiXX0"
                          "&resourceVersion=1", "resourceVersion")):
        code, status = call("GET", f"{admin.url}/api/v1/pods?{query}")
        assert code == 400 and status["message"].startswith(f"{field}:"), (query, status)
    # limit 0 or below: the whole list, as the API server reads it
    code, body = call("GET", f"{admin.url}/api/v1/pods?limit=0")
    assert code == 200 and len(body["items"]) == 1 and "continue" not in body["metadata"]


def test_the_official_client_pages_through_a_list(admin):
    for i in range(9):
        admin.store.create(pod(f"p{i}"))
    api = client.CoreV1Api(kube(admin.url))
    seen, token = [], None
    while True:
        page = api.list_namespaced_pod("default", limit=4, _continue=token)
        seen += [p.metadata.name for p in page.items]
        token = page.metadata._continue
        if not token:
            break
    assert seen == [f"p{i}" for i in range(9)]


@pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed")
def test_kubectl_get_reads_a_list_in_chunks(admin):
    # kubectl get asks for Tables, 500 rows at a time by default; --chunk-size=2 makes it page
    for i in range(5):
        admin.store.create(pod(f"p{i}"))
    out = subprocess.run(
        [KUBECTL, "--server", admin.url, "get", "pods", "--chunk-size=2", "-o", "name"],
        capture_output=True, text=True, timeout=60, env=dict(os.environ, KUBECONFIG=os.devnull),
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [f"pod/p{i}" for i in range(5)]
    table = subprocess.run(
        [KUBECTL, "--server", admin.url, "get", "pods", "--chunk-size=2", "--no-headers"],
        capture_output=True, text=True, timeout=60, env=dict(os.environ, KUBECONFIG=os.devnull),
    )
    assert table.returncode == 0, table.stderr
    assert [line.split()[0] for line in table.stdout.splitlines()] == [f"p{i}" for i in range(5)]
