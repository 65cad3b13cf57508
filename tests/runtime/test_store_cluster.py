"""The store as a small cluster keeps it: namespaces, the status subresource, dry runs."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from lbcore.runtime.store import Forbidden, Invalid, NotFound, Store


def service(name: str, namespace: str = "default", **spec: Any) -> dict[str, Any]:
    body = {"selector": {"app": name}, "ports": [{"name": "http", "port": 80}], **spec}
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": namespace}, "spec": body}


def pod(name: str, namespace: str = "default", ready: bool = True) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace, "labels": {"app": "web"}},
            "spec": {"containers": [{"name": "c", "image": "x"}]},
            "status": {"phase": "Running", "podIP": "10.0.0.1", "conditions": [
                {"type": "Ready", "status": "True" if ready else "False"}]}}


def namespace(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}


def names(items: list[dict[str, Any]]) -> list[str]:
    return [o["metadata"]["name"] for o in items]


@pytest.fixture
def store() -> Store:
    with Store(None, service_cidr="127.10.0.0/30", node_port_range=(30000, 30001)) as s:
        yield s


# -- namespaces ---------------------------------------------------------------------------------


def test_a_new_store_has_the_four_namespaces_and_its_first_write_is_still_version_1(store):
    listed, _ = store.list("Namespace")
    assert names(listed) == ["default", "kube-node-lease", "kube-public", "kube-system"]
    default = store.get("Namespace", "", "default")
    assert "namespace" not in default["metadata"]
    assert default["metadata"]["labels"] == {"kubernetes.io/metadata.name": "default"}
    assert default["status"] == {"phase": "Active"}
    assert default["spec"] == {"finalizers": ["kubernetes"]}
    assert store.create(service("a"))["metadata"]["resourceVersion"] == "1"


def test_a_write_into_a_namespace_that_does_not_exist_is_not_found(store):
    with pytest.raises(NotFound, match='namespaces "team" not found') as err:
        store.create(service("a", "team"))
    assert err.value.status()["details"] == {"name": "team", "kind": "namespaces"}
    assert store.list("Service")[0] == []
    store.create(namespace("team"))
    assert store.create(service("a", "team"))["metadata"]["namespace"] == "team"


def test_a_namespace_name_is_a_dns_label_and_has_no_namespace(store):
    with pytest.raises(Invalid, match="metadata.name"):
        store.create(namespace("Team_1"))
    ns = namespace("team")
    ns["metadata"]["namespace"] = "default"  # dropped, as the API server drops it
    assert "namespace" not in store.create(ns)["metadata"]


def test_deleting_a_namespace_deletes_what_it_holds_and_frees_its_addresses(store):
    store.create(namespace("team"))
    first = store.create(service("a", "team"))
    store.create(pod("p", "team"))
    store.create(service("keep"))
    seen: list[tuple[str, str, str]] = []
    store.subscribe(lambda e: seen.append(
        (e["type"], e["object"]["kind"], e["object"]["metadata"]["name"])))
    gone = store.delete("Namespace", "", "team")
    assert gone["status"] == {"phase": "Terminating"}
    assert gone["metadata"]["deletionTimestamp"]
    assert seen == [("MODIFIED", "Namespace", "team"), ("DELETED", "Service", "a"),
                    ("DELETED", "Pod", "p"), ("DELETED", "Namespace", "team")]
    assert names(store.list("Service")[0]) == ["keep"] and store.list("Pod")[0] == []
    with pytest.raises(NotFound):
        store.get("Namespace", "", "team")
    # its ClusterIP is free again: the /30 has two addresses, "keep" holds the other one
    store.create(namespace("team"))
    assert store.create(service("b", "team"))["spec"]["clusterIP"] == first["spec"]["clusterIP"]


def test_default_kube_system_and_kube_public_cannot_be_deleted(store):
    for name in ("default", "kube-system", "kube-public"):
        with pytest.raises(Forbidden, match="this namespace may not be deleted"):
            store.delete("Namespace", "", name)
    store.delete("Namespace", "", "kube-node-lease")


def test_a_store_from_before_namespaces_gets_the_namespaces_its_objects_are_in(tmp_path: Path):
    path = tmp_path / "lbcore.db"
    with Store(path) as first:
        first.create(namespace("legacy"))
        first.create(service("a", "legacy"))
        # as a store written before namespaces were objects: the object, not its namespace
        first._db.execute("DELETE FROM objects WHERE kind = 'Namespace' AND name = 'legacy'")
    with Store(path) as second:
        assert second.get("Namespace", "", "legacy")["status"]["phase"] == "Active"
        assert second.revision == 2


# -- status subresource ---------------------------------------------------------------------------


def test_the_main_resource_keeps_the_stored_status_and_status_keeps_the_rest(store):
    store.create(pod("p", ready=True))
    changed = pod("p", ready=False)
    changed["metadata"]["labels"] = {"app": "other"}
    written = store.update(changed)
    assert written["metadata"]["labels"] == {"app": "other"}
    assert written["status"]["conditions"][0]["status"] == "True"  # status ignored here
    relabelled = pod("p", ready=False)  # labels {"app": "web"}: ignored on status
    written = store.update(relabelled, subresource="status")
    assert written["status"]["conditions"][0]["status"] == "False"
    assert written["metadata"]["labels"] == {"app": "other"}


def test_a_service_status_is_written_only_through_status(store):
    store.create(service("a"))
    lb = {"loadBalancer": {"ingress": [{"ip": "192.0.2.1"}]}}
    asked = service("a", type="NodePort")
    asked["status"] = lb
    written = store.update(asked)
    assert written["spec"]["type"] == "NodePort" and written["status"] == {"loadBalancer": {}}
    asked = service("a")  # a spec change on status: ignored, as the NodePort stays
    asked["status"] = lb
    written = store.update(asked, subresource="status")
    assert written["status"] == lb and written["spec"]["type"] == "NodePort"


def test_a_subresource_the_kind_does_not_have_is_not_found(store):
    store.create(namespace("team"))
    with pytest.raises(NotFound):
        store.update(namespace("team"), subresource="status")
    store.create(service("a"))
    with pytest.raises(NotFound):
        store.update(service("a"), subresource="scale")


# -- dry run ------------------------------------------------------------------------------------


def test_a_dry_run_create_answers_as_stored_and_stores_and_allocates_nothing(store):
    seen: list[Any] = []
    store.subscribe(seen.append)
    answer = store.create(service("a", type="NodePort"), dry_run=True)
    assert answer["spec"]["clusterIP"].startswith("127.10.0.")
    assert answer["spec"]["ports"][0]["nodePort"] == 30000
    assert answer["metadata"]["uid"] and "resourceVersion" not in answer["metadata"]
    assert store.list("Service")[0] == [] and store.revision == 0 and seen == []
    # nothing stayed allocated: the /30's two addresses and the two node ports go to two
    # real creates, the one the dry run showed among them
    real = [store.create(service(name, type="NodePort")) for name in ("a", "b")]
    assert answer["spec"]["clusterIP"] in {s["spec"]["clusterIP"] for s in real}
    assert sorted(s["spec"]["ports"][0]["nodePort"] for s in real) == [30000, 30001]


def test_dry_run_update_apply_and_delete_change_nothing(store):
    stored = store.create(service("a"))
    answer = store.update(service("a", type="NodePort"), dry_run=True)
    assert answer["spec"]["ports"][0]["nodePort"] == 30000
    assert answer["metadata"]["resourceVersion"] == stored["metadata"]["resourceVersion"]
    assert store.apply(service("a", type="NodePort"), dry_run=True)["spec"]["type"] == "NodePort"
    assert store.delete("Service", "default", "a", dry_run=True)["metadata"]["name"] == "a"
    assert store.get("Service", "default", "a") == stored and store.revision == 1
    store.create(namespace("team"))
    store.delete("Namespace", "", "team", dry_run=True)
    assert store.get("Namespace", "", "team")["status"]["phase"] == "Active"
    # the node port the dry runs showed was never held: both are there for real writes
    assert store.update(service("a", type="NodePort"))["spec"]["ports"][0]["nodePort"]
    assert store.create(service("b", type="NodePort"))["spec"]["ports"][0]["nodePort"]


def test_a_dry_run_is_validated_as_a_write_is(store):
    with pytest.raises(Invalid, match="spec.ports"):
        store.create(service("a", ports=[{"port": 0}]), dry_run=True)
    with pytest.raises(NotFound):
        store.create(service("a", "nowhere"), dry_run=True)


def test_a_watch_sees_no_dry_run(store):
    async def main() -> list[str]:
        watch = store.watch("Service", resource_version=str(store.revision))
        store.create(service("dry"), dry_run=True)
        store.create(service("real"))
        try:
            event = await asyncio.wait_for(watch.__anext__(), 5)
        finally:
            watch.close()
        return [event["object"]["metadata"]["name"]]

    assert asyncio.run(main()) == ["real"]
