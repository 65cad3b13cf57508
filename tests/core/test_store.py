"""The embedded store: writes, allocation, validation, history and watch, on real SQLite."""

from __future__ import annotations

import asyncio
import copy
import json
import threading
from pathlib import Path
from typing import Any

import pytest

from lbcore.errors import ConfigError, ValidationError
from lbcore.model.objects import StoredText
from lbcore.runtime import jsontext
from lbcore.runtime.store import (
    AlreadyExists,
    BadRequest,
    Conflict,
    Gone,
    Invalid,
    NotFound,
    Store,
)


def service(name: str, namespace: str = "default", **spec: Any) -> dict[str, Any]:
    body = {"selector": {"app": name}, "ports": [{"name": "http", "port": 80}]}
    body.update(spec)
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": namespace}, "spec": body}


def pod(name: str, labels: dict[str, str], ip: str = "10.0.0.1") -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "default", "labels": labels},
            "spec": {"containers": [{"name": "c", "image": "x"}]},
            "status": {"phase": "Running", "podIP": ip}}


@pytest.fixture
def store() -> Store:
    with Store(None, service_cidr="127.10.0.0/24", node_port_range=(30000, 30009)) as s:
        yield s


# -- create -------------------------------------------------------------------------------------


def test_create_sets_identity_version_generation_and_a_cluster_ip_from_the_cidr(store):
    created = store.create(service("web"))
    meta = created["metadata"]
    assert meta["namespace"] == "default"
    assert len(meta["uid"]) == 36 and meta["creationTimestamp"].endswith("Z")
    assert meta["resourceVersion"] == "1" and meta["generation"] == 1
    assert created["spec"]["clusterIP"] == "127.10.0.1"
    assert created["spec"]["clusterIPs"] == ["127.10.0.1"]
    assert created["spec"]["ipFamilies"] == ["IPv4"]
    assert store.get("Service", "default", "web") == created


def test_resource_version_is_one_global_counter_across_kinds_and_deletes(store):
    versions = [
        store.create(service("a"))["metadata"]["resourceVersion"],
        store.create(pod("p", {"app": "a"}))["metadata"]["resourceVersion"],
        store.delete("Pod", "default", "p")["metadata"]["resourceVersion"],
        store.create(service("b"))["metadata"]["resourceVersion"],
    ]
    assert versions == ["1", "2", "3", "4"]
    assert store.list("Service")[1] == "4"


def test_create_of_an_existing_object_is_409_already_exists(store):
    store.create(service("web"))
    with pytest.raises(AlreadyExists) as err:
        store.create(service("web"))
    status = err.value.status()
    assert (status["code"], status["reason"]) == (409, "AlreadyExists")
    assert status["message"] == 'services "web" already exists'
    assert status["details"] == {"name": "web", "kind": "services"}


def test_invalid_create_stores_nothing_and_reports_every_cause_as_422(store):
    bad = service("Web_1", ports=[{"port": 0}, {"port": 70000}])
    with pytest.raises(Invalid) as err:
        store.create(bad)
    assert isinstance(err.value, ValidationError)
    status = err.value.status()
    assert (status["code"], status["reason"], status["kind"]) == (422, "Invalid", "Status")
    fields = {c["field"] for c in status["details"]["causes"]}
    assert {"metadata.name", "spec.ports[0].port", "spec.ports[1].port"} <= fields
    assert store.revision == 0 and store.list("Service")[0] == []
    # the ClusterIP it did not get is still the first one
    assert store.create(service("web"))["spec"]["clusterIP"] == "127.10.0.1"


def test_unknown_kind_and_wrong_api_version_are_400(store):
    with pytest.raises(BadRequest, match="kind: 'Deployment'"):
        store.create({"kind": "Deployment", "metadata": {"name": "x"}})
    with pytest.raises(BadRequest, match="apiVersion: 'v2'"):
        store.create({"apiVersion": "v2", "kind": "Service", "metadata": {"name": "x"}})


def test_generate_name_gives_a_fresh_name_with_the_prefix(store):
    obj = service("")
    obj["metadata"] = {"generateName": "web-"}
    created = store.create(obj)
    assert created["metadata"]["name"].startswith("web-")
    assert len(created["metadata"]["name"]) == len("web-") + 5


# -- allocation ---------------------------------------------------------------------------------


def test_requested_cluster_ip_in_use_is_invalid_and_leaks_nothing(store):
    store.create(service("a", clusterIP="127.10.0.7"))
    with pytest.raises(Invalid) as err:
        store.create(service("b", clusterIP="127.10.0.7", type="NodePort"))
    cause = err.value.status()["details"]["causes"][0]
    assert cause["field"] == "spec.clusterIPs" and "already allocated" in cause["message"]
    # b's node port was not kept either: the next NodePort service gets the first port
    assert store.create(service("c", type="NodePort"))["spec"]["ports"][0]["nodePort"] == 30000


def test_requested_cluster_ip_outside_the_cidr_is_invalid(store):
    with pytest.raises(Invalid, match="is not in the valid range"):
        store.create(service("a", clusterIP="10.0.0.1"))


def test_node_ports_are_allocated_and_checked_against_the_range(store):
    svc = store.create(service("a", type="NodePort", ports=[
        {"name": "http", "port": 80}, {"name": "dns", "port": 53, "nodePort": 30005}]))
    assert [p["nodePort"] for p in svc["spec"]["ports"]] == [30000, 30005]
    with pytest.raises(Invalid) as err:
        store.create(service("b", type="NodePort", ports=[{"port": 80, "nodePort": 31000}]))
    cause = err.value.status()["details"]["causes"][0]
    assert cause["field"] == "spec.ports[0].nodePort" and cause["message"] == (
        "Invalid value: 31000: provided port is not in the valid range. "
        "The range of valid ports is 30000-30009")


def test_headless_and_external_name_services_get_no_cluster_ip(store):
    headless = store.create(service("h", clusterIP="None"))
    assert headless["spec"]["clusterIP"] == "None"
    external = store.create({"kind": "Service", "metadata": {"name": "ext"},
                             "spec": {"type": "ExternalName", "externalName": "example.org"}})
    assert "clusterIP" not in external["spec"]
    assert store.create(service("web"))["spec"]["clusterIP"] == "127.10.0.1"


def test_dual_stack_is_allocated_from_both_cidrs_when_preferred():
    with Store(None, service_cidr=["127.10.0.0/24", "fd00:10::/120"]) as store:
        svc = store.create(service("ds", ipFamilyPolicy="PreferDualStack"))
        assert svc["spec"]["clusterIPs"] == ["127.10.0.1", "fd00:10::1"]
        assert svc["spec"]["ipFamilies"] == ["IPv4", "IPv6"]
        single = store.create(service("v6", ipFamilies=["IPv6"]))
        assert single["spec"]["clusterIPs"] == ["fd00:10::2"]


def test_require_dual_stack_on_a_single_stack_store_is_invalid(store):
    with pytest.raises(Invalid, match="spec.ipFamilyPolicy"):
        store.create(service("ds", ipFamilyPolicy="RequireDualStack"))


def test_a_bad_service_cidr_is_a_config_error():
    with pytest.raises(ConfigError, match="service_cidr"):
        Store(None, service_cidr="127.10.0.0/33")


def test_concurrent_creates_get_distinct_addresses_and_versions(store):
    errors: list[BaseException] = []

    def create(prefix: str) -> None:
        try:
            for i in range(30):
                store.create(service(f"{prefix}{i}"))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=create, args=(p,)) for p in "ab"]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors
    items, rv = store.list("Service")
    assert len({s["spec"]["clusterIP"] for s in items}) == 60
    assert sorted(int(s["metadata"]["resourceVersion"]) for s in items) == list(range(1, 61))
    assert rv == "60"


# -- update, apply, delete ----------------------------------------------------------------------


def test_update_with_a_stale_resource_version_is_409_conflict(store):
    first = store.create(service("web"))
    changed = copy.deepcopy(first)
    changed["metadata"]["labels"] = {"tier": "front"}
    second = store.update(changed)
    with pytest.raises(Conflict) as err:
        store.update(first)  # still carries resourceVersion 1
    assert err.value.status()["reason"] == "Conflict"
    assert "the object has been modified" in err.value.status()["message"]
    assert store.get("Service", "default", "web")["metadata"]["resourceVersion"] == \
        second["metadata"]["resourceVersion"]


def test_an_update_that_changes_nothing_is_not_stored(store):
    first = store.create(service("web"))
    revision = store.revision
    events = []
    store.subscribe(events.append)
    again = store.update(first)
    assert again["metadata"]["resourceVersion"] == first["metadata"]["resourceVersion"]
    assert store.revision == revision and events == []
    assert again["spec"]["clusterIP"] == first["spec"]["clusterIP"]


def test_update_without_resource_version_is_last_write_wins(store):
    store.create(service("web"))
    again = service("web")
    again["metadata"]["labels"] = {"tier": "front"}
    assert store.update(again)["metadata"]["labels"] == {"tier": "front"}


def test_update_of_a_missing_object_is_404(store):
    with pytest.raises(NotFound):
        store.update(service("web"))


def test_update_with_reads_the_object_once_and_writes_what_the_change_makes(store):
    created = store.create(pod("p", {"app": "web"}))
    events = []
    store.subscribe(events.append)
    seen, given = [], []

    def relabel(current):
        seen.append(copy.deepcopy(current))
        given.append(current)
        # shares every value but the top and the metadata with what it was given
        return {**current, "metadata": {**current["metadata"], "labels": {"app": "api"}}}

    updated = store.update_with("Pod", "default", "p", relabel)
    assert seen == [created] and given == seen  # as read, and left as it was
    assert updated["metadata"]["labels"] == {"app": "api"}
    assert updated["metadata"]["uid"] == created["metadata"]["uid"]
    assert int(updated["metadata"]["resourceVersion"]) > int(created["metadata"]["resourceVersion"])
    assert store.get("Pod", "default", "p") == updated
    # the version before the change, as the history and the event keep it, is the stored one
    assert [e["type"] for e in events] == ["MODIFIED"]
    assert events[0]["object"] == updated


def test_update_with_raises_what_update_raises(store):
    with pytest.raises(NotFound):
        store.update_with("Pod", "default", "missing", lambda current: current)
    store.create(pod("p", {"app": "web"}))
    with pytest.raises(BadRequest):
        store.update_with("Nothing", "default", "p", lambda current: current)

    def stale(current):
        return {**current, "metadata": {**current["metadata"], "resourceVersion": "1",
                                        "labels": {"app": "api"}}}

    store.update(pod("p", {"app": "db"}))
    with pytest.raises(Conflict):
        store.update_with("Pod", "default", "p", stale)
    revision = store.revision
    # a change that leaves the object as it is stores nothing
    unchanged = store.update_with("Pod", "default", "p", lambda current: current)
    assert store.revision == revision
    assert unchanged == store.get("Pod", "default", "p")
    # the main resource keeps the stored status; its subresource takes it, and a bad one is
    # refused with its cause, nothing stored
    def bad_ip(current):
        return {**current, "status": {**current["status"], "podIP": "10.0.0.256"}}

    assert store.update_with("Pod", "default", "p", bad_ip)["status"]["podIP"] == "10.0.0.1"
    assert store.revision == revision
    with pytest.raises(Invalid) as err:
        store.update_with("Pod", "default", "p", bad_ip, subresource="status")
    assert "status.podIP" in [c["field"] for c in err.value.status()["details"]["causes"]]
    assert store.revision == revision


def test_an_object_rewritten_keeps_one_row_under_its_key(tmp_path: Path):
    with Store(tmp_path / "s.db", service_cidr="127.10.0.0/24") as s:
        s.create(pod("p", {"app": "web"}))
        for n in range(3):
            s.update(pod("p", {"app": f"v{n}"}))
        rows = s._db.execute(
            "SELECT rv, body FROM objects WHERE kind = 'Pod' AND name = 'p'").fetchall()
        assert len(rows) == 1
        assert rows[0][0] == s.revision
        assert json.loads(rows[0][1])["metadata"]["labels"] == {"app": "v2"}
        assert s._db.execute("SELECT value FROM meta WHERE key = 'revision'").fetchone() == (
            s.revision,)
    with Store(tmp_path / "s.db", service_cidr="127.10.0.0/24") as s:
        assert s.get("Pod", "default", "p")["metadata"]["labels"] == {"app": "v2"}


def test_generation_counts_spec_changes_only(store):
    svc = store.create(service("web"))
    svc["metadata"]["labels"] = {"a": "b"}
    svc = store.update(svc)
    assert svc["metadata"]["generation"] == 1
    svc["spec"]["ports"][0]["port"] = 8080
    svc["spec"]["ports"][0]["targetPort"] = 8080
    assert store.update(svc)["metadata"]["generation"] == 2


def test_update_keeps_uid_creation_time_and_allocated_addresses_left_out(store):
    created = store.create(service("web", type="NodePort"))
    updated = store.update(service("web", type="NodePort"))  # as a re-applied manifest
    for key in ("uid", "creationTimestamp"):
        assert updated["metadata"][key] == created["metadata"][key]
    assert updated["spec"]["clusterIP"] == created["spec"]["clusterIP"]
    assert updated["spec"]["ports"][0]["nodePort"] == created["spec"]["ports"][0]["nodePort"]


def test_cluster_ip_may_not_change_once_set(store):
    store.create(service("web"))
    with pytest.raises(Invalid, match="may not change once set"):
        store.update(service("web", clusterIP="127.10.0.9"))


def test_leaving_node_port_type_frees_the_node_port(store):
    store.create(service("a", type="NodePort", ports=[{"port": 80, "nodePort": 30003}]))
    with pytest.raises(Invalid, match="already allocated"):
        store.create(service("b", type="NodePort", ports=[{"port": 80, "nodePort": 30003}]))
    store.update(service("a"))  # back to ClusterIP
    got = store.create(service("b", type="NodePort", ports=[{"port": 80, "nodePort": 30003}]))
    assert got["spec"]["ports"][0]["nodePort"] == 30003


def test_apply_creates_then_updates(store):
    assert store.apply(service("web"))["metadata"]["generation"] == 1
    changed = service("web", sessionAffinity="ClientIP")
    applied = store.apply(changed)
    assert applied["spec"]["sessionAffinity"] == "ClientIP"
    assert applied["metadata"]["generation"] == 2
    assert applied["spec"]["clusterIP"] == "127.10.0.1"


def test_delete_returns_the_object_and_frees_its_cluster_ip(store):
    store.create(service("a", clusterIP="127.10.0.5"))
    gone = store.delete("Service", "default", "a")
    assert gone["metadata"]["name"] == "a" and gone["metadata"]["resourceVersion"] == "2"
    with pytest.raises(NotFound) as err:
        store.get("Service", "default", "a")
    assert err.value.status()["code"] == 404
    assert err.value.status()["message"] == 'services "a" not found'
    assert store.create(service("b", clusterIP="127.10.0.5"))["spec"]["clusterIP"] == "127.10.0.5"


def test_delete_of_a_missing_object_is_404(store):
    with pytest.raises(NotFound):
        store.delete("Service", "default", "nope")


# -- list ---------------------------------------------------------------------------------------


def test_list_filters_by_namespace_and_label_selector(store):
    store.create(pod("a", {"app": "web", "tier": "front"}))
    store.create(pod("b", {"app": "web", "tier": "back"}))
    store.create(pod("c", {"app": "db"}))
    other = pod("d", {"app": "web"})
    other["metadata"]["namespace"] = "prod"
    store.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "prod"}})
    store.create(other)
    names = lambda items: [o["metadata"]["name"] for o in items]  # noqa: E731
    assert names(store.list("Pod")[0]) == ["a", "b", "c", "d"]
    assert names(store.list("Pod", "prod")[0]) == ["d"]
    assert names(store.list("Pod", None, "app=web,tier notin (back)")[0]) == ["a", "d"]
    assert names(store.list("Pod", "default", "!tier")[0]) == ["c"]
    with pytest.raises(BadRequest, match="labelSelector"):
        store.list("Pod", None, "app in (")


# -- persistence --------------------------------------------------------------------------------


def test_objects_revision_and_allocations_survive_a_reopen(tmp_path: Path):
    path = tmp_path / "store.db"
    with Store(path, service_cidr="127.10.0.0/24") as first:
        first.create(service("a"))
        first.create(service("b", type="NodePort"))
        first.delete("Service", "default", "a")
    with Store(path, service_cidr="127.10.0.0/24") as second:
        assert [s["metadata"]["name"] for s in second.list("Service")[0]] == ["b"]
        assert second.revision == 3
        assert second.create(service("c"))["metadata"]["resourceVersion"] == "4"
        with pytest.raises(Invalid, match="already allocated"):
            second.create(service("d", clusterIP="127.10.0.2"))  # b's, rebuilt at open
        with pytest.raises(Invalid, match="already allocated"):
            second.create(service("e", type="NodePort", ports=[{"port": 1, "nodePort": 30000}]))


# -- subscribe ----------------------------------------------------------------------------------


def test_subscribers_see_each_commit_in_order_until_they_unsubscribe(store):
    seen: list[tuple[str, str]] = []
    unsubscribe = store.subscribe(lambda e: seen.append(
        (e["type"], e["object"]["metadata"]["resourceVersion"])))
    store.create(service("a"))
    store.update(service("a", sessionAffinity="ClientIP"))
    store.delete("Service", "default", "a")
    store.create(pod("p", {}))
    with pytest.raises(AlreadyExists):
        store.create(pod("p", {}))  # a refused write is not an event
    unsubscribe()
    store.create(service("b"))
    assert seen == [("ADDED", "1"), ("MODIFIED", "2"), ("DELETED", "3"), ("ADDED", "4")]


def test_a_failing_subscriber_does_not_undo_the_write(store):
    def broken(event: dict[str, Any]) -> None:
        raise RuntimeError("listener bug")

    store.subscribe(broken)
    store.create(service("a"))
    assert store.get("Service", "default", "a")["metadata"]["resourceVersion"] == "1"


# -- watch --------------------------------------------------------------------------------------


async def take(watch: Any, n: int, timeout: float = 5.0) -> list[tuple[str, str]]:
    out = []
    async with asyncio.timeout(timeout):
        async for event in watch:
            obj = event["object"]
            out.append((event["type"], obj["metadata"].get("name", obj["metadata"]["resourceVersion"])))
            if len(out) == n:
                break
    return out


def test_watch_from_a_version_replays_later_changes_then_follows(store):
    store.create(service("a"))
    store.create(service("b"))
    store.delete("Service", "default", "a")

    async def main() -> list[tuple[str, str]]:
        watch = store.watch("Service", resource_version="1")
        store.create(service("c"))
        try:
            return await take(watch, 3)
        finally:
            watch.close()

    assert asyncio.run(main()) == [("ADDED", "b"), ("DELETED", "a"), ("ADDED", "c")]


def test_watch_without_a_version_starts_with_the_current_objects(store):
    store.create(service("a"))
    store.create(service("b"))
    store.delete("Service", "default", "a")

    async def main() -> list[tuple[str, str]]:
        watch = store.watch("Service")
        store.update(service("b", sessionAffinity="ClientIP"))
        try:
            return await take(watch, 2)
        finally:
            watch.close()

    assert asyncio.run(main()) == [("ADDED", "b"), ("MODIFIED", "b")]


def test_watch_from_a_compacted_version_is_410_gone():
    with Store(None, history=2) as store:
        for name in "abcd":
            store.create(service(name))

        async def main() -> None:
            store.watch("Service", resource_version="2").close()  # 3 and 4 are kept
            with pytest.raises(Gone) as err:
                store.watch("Service", resource_version="1")
            status = err.value.status()
            assert (status["code"], status["reason"]) == (410, "Expired")
            assert status["message"] == "too old resource version: 1 (2)"

        asyncio.run(main())


def test_watch_history_survives_a_reopen(tmp_path: Path):
    path = tmp_path / "store.db"
    with Store(path) as first:
        first.create(service("a"))
        first.create(service("b"))
    with Store(path) as second:
        async def main() -> list[tuple[str, str]]:
            watch = second.watch("Service", resource_version="1")
            try:
                return await take(watch, 1)
            finally:
                watch.close()

        assert asyncio.run(main()) == [("ADDED", "b")]


def test_watch_filters_by_namespace_and_kind(store):
    async def main() -> list[tuple[str, str]]:
        watch = store.watch("Service", namespace="prod", resource_version="0")
        store.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "prod"}})
        store.create(service("a"))
        store.create(pod("p", {"app": "a"}))
        store.create(service("b", namespace="prod"))
        try:
            return await take(watch, 1)
        finally:
            watch.close()

    assert asyncio.run(main()) == [("ADDED", "b")]


def test_watch_with_a_label_selector_sees_objects_move_in_and_out(store):
    store.create(pod("p", {"app": "web"}))

    async def main() -> list[tuple[str, str]]:
        watch = store.watch("Pod", resource_version="1", label_selector="app=web")
        p = store.get("Pod", "default", "p")
        p["metadata"]["labels"] = {"app": "db"}
        store.update(p)  # moves out
        p = store.get("Pod", "default", "p")
        p["metadata"]["labels"] = {"app": "db", "x": "y"}
        store.update(p)  # not seen at all
        p = store.get("Pod", "default", "p")
        p["metadata"]["labels"] = {"app": "web"}
        store.update(p)  # moves in
        try:
            return await take(watch, 2)
        finally:
            watch.close()

    assert asyncio.run(main()) == [("DELETED", "p"), ("ADDED", "p")]


def test_bookmarks_carry_the_version_reached_including_other_kinds(store):
    store.create(service("a"))

    async def main() -> dict[str, Any]:
        watch = store.watch("Service", resource_version="1", allow_bookmarks=True,
                            bookmark_interval=0.05)
        store.create(pod("p", {}))  # revision 2, not a Service
        try:
            async with asyncio.timeout(5):
                return await anext(watch)
        finally:
            watch.close()

    event = asyncio.run(main())
    assert event["type"] == "BOOKMARK"
    assert event["object"] == {"kind": "Service", "apiVersion": "v1",
                               "metadata": {"resourceVersion": "2"}}


def test_watch_receives_writes_made_in_another_thread(store):
    async def main() -> list[tuple[str, str]]:
        watch = store.watch("Service", resource_version="0")
        writer = threading.Thread(target=lambda: [store.create(service(n)) for n in "xyz"])
        writer.start()
        try:
            return await take(watch, 3)
        finally:
            writer.join(5)
            watch.close()

    assert asyncio.run(main()) == [("ADDED", "x"), ("ADDED", "y"), ("ADDED", "z")]


def test_closing_a_watch_ends_its_iteration(store):
    async def main() -> list[Any]:
        watch = store.watch("Service")
        asyncio.get_running_loop().call_later(0.05, watch.close)
        async with asyncio.timeout(5):
            return [e async for e in watch]

    assert asyncio.run(main()) == []


def test_bad_resource_version_and_selector_are_400(store):
    async def main() -> None:
        with pytest.raises(BadRequest, match="resourceVersion"):
            store.watch("Service", resource_version="abc")
        with pytest.raises(BadRequest, match="labelSelector"):
            store.watch("Service", label_selector="a in (")

    asyncio.run(main())


# -- group commit ---------------------------------------------------------------------------------


def count_commits(store: Store) -> list[str]:
    """The COMMIT statements the store's connection runs from now on."""
    commits: list[str] = []
    store._db.set_trace_callback(lambda sql: commits.append(sql) if sql == "COMMIT" else None)
    return commits


def test_grouped_writes_of_one_loop_turn_share_one_transaction(store):
    commits = count_commits(store)
    seen: list[Any] = []
    store.subscribe(seen.append)

    async def main() -> list[Any]:
        return await asyncio.gather(
            *(store.grouped(lambda i=i: store.create(service(f"s{i}"))) for i in range(20)),
            store.grouped(lambda: store.create(service("bad", ports=[{"port": 0}]))),
            return_exceptions=True,
        )

    results = asyncio.run(main())
    assert len(commits) == 1
    assert (store.commits, store.committed) == (1, 20)  # what /metrics counts
    created, refused = results[:20], results[20]
    assert isinstance(refused, Invalid)  # its own error; the others are stored
    assert [int(c["metadata"]["resourceVersion"]) for c in created] == list(range(1, 21))
    assert len({c["spec"]["clusterIP"] for c in created}) == 20
    assert [e["object"]["metadata"]["name"] for e in seen] == [f"s{i}" for i in range(20)]
    assert store.revision == 20
    assert len(store.list("Service")[0]) == 20


def test_a_write_in_the_same_turn_reads_the_grouped_write_before_it(store):
    async def main() -> tuple[Any, Any]:
        first = store.grouped(lambda: store.create(pod("p", {"app": "a"})))
        second = store.grouped(lambda: store.update(
            {**store.get("Pod", "default", "p"), "metadata": {
                **store.get("Pod", "default", "p")["metadata"], "labels": {"app": "b"}}}))
        return await asyncio.gather(first, second)

    created, updated = asyncio.run(main())
    assert (created["metadata"]["resourceVersion"], updated["metadata"]["resourceVersion"]) \
        == ("1", "2")
    assert store.get("Pod", "default", "p")["metadata"]["labels"] == {"app": "b"}


def test_a_failed_group_transaction_fails_every_write_of_it_and_holds_nothing(store, monkeypatch):
    def broken(batch: Any) -> None:
        raise OSError("disk I/O error")

    monkeypatch.setattr(store, "_commit", broken)

    async def main() -> list[Any]:
        return await asyncio.gather(
            *(store.grouped(lambda i=i: store.create(service(f"s{i}"))) for i in range(5)),
            return_exceptions=True,
        )

    results = asyncio.run(main())
    assert all(isinstance(r, OSError) for r in results), results
    monkeypatch.undo()
    assert store.revision == 0 and store.list("Service")[0] == []
    with pytest.raises(NotFound):
        store.get("Service", "default", "s0")
    # the addresses they took were given back: each can be asked for again
    taken = [f"127.10.0.{i}" for i in range(1, 6)]
    for i, ip in enumerate(taken):
        assert store.create(service(f"again{i}", clusterIP=ip))["spec"]["clusterIP"] == ip
    assert store.revision == 5


def test_a_plain_write_commits_the_grouped_writes_queued_before_it(store):
    async def main() -> tuple[Any, Any]:
        grouped = asyncio.ensure_future(store.grouped(lambda: store.create(service("g"))))
        await asyncio.sleep(0)  # the grouped write is queued, its commit not yet run
        plain = store.create(service("p"))  # commits both, in version order
        return await grouped, plain

    grouped, plain = asyncio.run(main())
    assert (grouped["metadata"]["resourceVersion"], plain["metadata"]["resourceVersion"]) \
        == ("1", "2")
    assert store.revision == 2


def test_reads_after_a_failed_group_transaction_see_what_is_committed(store, monkeypatch):
    created = store.create(pod("p", {"app": "a"}))
    assert store.get("Pod", "default", "p") == created  # read once: its text is remembered

    def relabelled(app: str) -> dict[str, Any]:
        current = store.get("Pod", "default", "p")
        return {**current, "metadata": {**current["metadata"], "labels": {"app": app}}}

    def broken(batch: Any) -> None:
        raise OSError("disk I/O error")

    monkeypatch.setattr(store, "_commit", broken)

    async def failing() -> Any:
        return await store.grouped(lambda: store.update(relabelled("b")))

    with pytest.raises(OSError):
        asyncio.run(failing())
    monkeypatch.undo()
    assert store.get("Pod", "default", "p") == created
    updated = store.update(relabelled("c"))
    assert store.get("Pod", "default", "p") == updated
    assert updated["metadata"]["labels"] == {"app": "c"}
    store.delete("Pod", "default", "p")
    with pytest.raises(NotFound):
        store.get("Pod", "default", "p")


def test_a_watch_takes_a_group_commits_changes_at_once(store):
    async def main() -> tuple[Any, list[Any], list[Any]]:
        watch = store.watch("Pod", resource_version=str(store.revision))
        await asyncio.gather(*(store.grouped(lambda i=i: store.create(
            pod(f"p{i}", {"app": "a"}, ip=f"10.0.0.{i + 1}"))) for i in range(5)))
        first = await watch.__anext__()
        rest = watch.take_ready()
        after = watch.take_ready()  # nothing more is waiting: it does not wait
        watch.close()
        return first, rest, after

    first, rest, after = asyncio.run(main())
    assert [e["object"]["metadata"]["name"] for e in (first, *rest)] == [f"p{i}" for i in range(5)]
    assert {e["type"] for e in (first, *rest)} == {"ADDED"}
    assert after == []


WRITER = """
import asyncio, sys
from lbcore.runtime.store import Store

store = Store(sys.argv[1], service_cidr="127.10.0.0/16")

async def writer(w):
    for i in range(100000):
        name = f"p-{w}-{i}"
        body = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
                "spec": {"containers": [{"name": "c", "image": "x"}]}}
        await store.grouped(lambda: store.create(body))
        print(name, flush=True)  # acknowledged

async def main():
    await asyncio.gather(*(writer(w) for w in range(20)))

asyncio.run(main())
"""


def test_every_acknowledged_grouped_write_survives_kill_9(tmp_path: Path):
    import signal
    import subprocess
    import sys

    db = tmp_path / "store.db"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(db)], stdout=subprocess.PIPE,
                            text=True)
    acked: list[str] = []
    assert proc.stdout is not None
    try:
        for line in proc.stdout:
            acked.append(line.strip())
            if len(acked) >= 2000:
                break
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(30)
    assert len(acked) >= 2000, "the writer stopped early"
    with Store(db, service_cidr="127.10.0.0/16") as reopened:
        stored = {o["metadata"]["name"] for o in reopened.list("Pod")[0]}
        assert reopened.revision == len(stored)
    assert set(acked) <= stored


# -- one decoding and one parse of each object for the daemon's two readers ----------------------


def test_parse_gives_one_object_per_version_and_forgets_deleted_ones(store):
    created = store.create(pod("p", {"app": "a"}))
    first = store.parse(created)
    assert store.parse(store.get("Pod", "default", "p")) is first  # another decoding, same version
    assert first.labels == {"app": "a"}
    updated = store.update({**created, "metadata": {**created["metadata"], "labels": {"app": "b"}}})
    second = store.parse(updated)
    assert second is not first and second.labels == {"app": "b"}
    store.delete("Pod", "default", "p")
    assert "default/p" not in store._parsed["Pod"]


def endpoints(name: str, ip: str = "10.0.0.1") -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Endpoints",
            "metadata": {"name": name, "namespace": "default"},
            "subsets": [{"addresses": [{"ip": ip}], "ports": [{"port": 80}]}]}


def endpoint_slice(name: str, ip: str = "10.0.0.1") -> dict[str, Any]:
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": name, "namespace": "default",
                         "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4", "endpoints": [{"addresses": [ip]}],
            "ports": [{"port": 80, "appProtocol": "http"}]}


@pytest.mark.parametrize("make", [endpoints, endpoint_slice])
def test_parsed_endpoints_and_slices_keep_no_text_and_read_their_own_version(tmp_path, make):
    with Store(tmp_path / "s.db", history=10) as store:
        created = store.create(make("p"))
        parsed = store.parse(created)
        assert isinstance(parsed.body, StoredText)  # fields only, as pods and services
        assert parsed.raw == created  # the text the store committed, still remembered
        store._recent_texts.clear()
        assert parsed.raw == created  # from its row
        changed = make("p", ip="10.0.0.2")
        changed["metadata"]["resourceVersion"] = created["metadata"]["resourceVersion"]
        updated = store.update(changed)
        newer = store.parse(updated)
        store._recent_texts.clear()
        assert parsed.raw == created  # from the history: its row holds the newer version
        assert newer.raw == updated and newer is not parsed


def test_committed_json_is_the_text_of_the_version_committed_and_the_history_reuses_it(store):
    created = store.create(pod("p", {"app": "a"}))
    text = store.committed_json(created)
    assert text is not None and json.loads(text) == created
    changed = copy.deepcopy(created)
    changed["metadata"]["labels"] = {"app": "b"}
    updated = store.update(changed)
    assert store.committed_json(created) is None  # an older version: its text is not kept
    assert json.loads(store.committed_json(updated)) == updated
    # the history row's previous object is the text committed before, not a second encoding
    previous = store._db.execute("SELECT previous FROM history WHERE rv = ?",
                                 (int(updated["metadata"]["resourceVersion"]),)).fetchone()[0]
    assert previous == text
    gone = store.delete("Pod", "default", "p")
    assert store.committed_json(updated) is None and store.committed_json(gone) is None
    assert store.committed_json({"kind": "Pod"}) is None and store.committed_json({}) is None


def test_list_parsed_gives_the_parsed_objects_in_list_order_and_decodes_each_version_once(
        store, monkeypatch):
    store.create(pod("p", {"app": "a"}))
    store.create(pod("q", {"app": "b"}, ip="10.0.0.2"))
    decoded: list[str] = []
    loads = jsontext.loads
    monkeypatch.setattr(jsontext, "loads", lambda text: decoded.append(text) or loads(text))
    held, rv = store.list_parsed("Pod")
    assert len(decoded) == 2
    assert [o.name for o in held] == ["p", "q"] and rv == str(store.revision)
    listed = store.list("Pod")[0]
    assert [o.raw for o in held] == listed
    assert [o.resource_version for o in held] == [o["metadata"]["resourceVersion"] for o in listed]
    decoded.clear()
    # a second reader (the other of the daemon's two) gets the same objects, decoding nothing
    again, rv_again = store.list_parsed("Pod")
    assert rv_again == rv and all(a is b for a, b in zip(again, held, strict=True))
    assert decoded == []
    assert store.parse(again[0]) is again[0]  # a parsed object is given back as it is
    assert store.parse(store.get("Pod", "default", "p")) is held[0]
    # a new version is decoded and parsed again, the others not
    updated = store.get("Pod", "default", "q")
    updated["metadata"]["labels"] = {"app": "c"}
    store.update(updated)
    decoded.clear()
    newer, rv_newer = store.list_parsed("Pod")
    assert int(rv_newer) == int(rv) + 1 and len(decoded) == 1
    assert newer[0] is held[0] and newer[1] is not held[1] and newer[1].labels == {"app": "c"}
    assert [o.name for o in store.list_parsed("Pod", "other")[0]] == []


def test_list_parsed_of_a_file_reads_in_batches_at_one_revision(tmp_path, monkeypatch):
    """A file store is listed a batch of rows at a time, in one read transaction: a write
    between two batches shows neither in the list nor in its resourceVersion."""
    from lbcore.runtime import store as store_module

    monkeypatch.setattr(store_module, "LIST_BATCH", 3)
    with Store(tmp_path / "s.db", service_cidr="127.10.0.0/24") as store:
        for i in range(8):
            store.create(pod(f"p{i}", {"app": "a"}, ip=f"10.0.0.{i + 1}"))
        listed, revision = store.list("Pod")
        batches: list[int] = []
        parse_rows = store._parse_rows

        def write_between_batches(kind: str, rows: Any, items: Any) -> None:
            batches.append(len(rows))
            parse_rows(kind, rows, items)
            if len(batches) == 1:
                store.create(pod("late", {"app": "a"}, ip="10.0.0.99"))
                store.delete("Pod", "default", "p7")

        monkeypatch.setattr(store, "_parse_rows", write_between_batches)
        held, rv = store.list_parsed("Pod")
        assert batches == [3, 3, 2]
        assert rv == revision and int(rv) < store.revision
        assert [o.raw for o in held] == listed


def test_a_parsed_pod_reads_its_text_from_the_store_at_its_version(tmp_path):
    with Store(tmp_path / "s.db", service_cidr="127.10.0.0/24", history=2) as store:
        created = store.create(pod("p", {"app": "a"}))
        parsed = store.parse(created)
        assert isinstance(parsed.body, StoredText)  # no text kept beside the fields
        assert parsed.raw == created and parsed.to_dict() == created
        store._recent_texts.clear()
        assert parsed.raw == created  # from its row
        newer = store.get("Pod", "default", "p")
        newer["metadata"]["labels"] = {"app": "b"}
        store.update(newer)
        assert parsed.raw == created  # from the history, its row being newer
        for ip in ("10.0.0.2", "10.0.0.3"):  # two more changes: the history keeps two
            store.create(pod(f"q{ip}", {"app": "a"}, ip=ip))
        with pytest.raises(NotFound, match=r'pods "p" at resourceVersion \d+ is no longer stored'):
            _ = parsed.raw


def test_list_parsed_keeps_the_stored_text_as_body_and_gives_an_unreadable_object_as_its_dict(
        store):
    store.create(pod("p", {"app": "a"}))
    bodies, _ = store.list_json("Pod")
    held, _ = store.list_parsed("Pod")
    assert held[0] is store._parsed["Pod"]["default/p"]
    assert json.loads(bodies[0]) == held[0].raw and held[0].uid == held[0].raw["metadata"]["uid"]
    # a row no parse can read (written by hand: admission would refuse it)
    broken = {**held[0].raw, "metadata": {**held[0].raw["metadata"], "name": "broken"},
              "spec": {"containers": [{"name": "c", "ports": [{"containerPort": "x"}]}]}}
    with store._lock:
        store._db.execute("INSERT INTO objects (kind, namespace, name, rv, body) VALUES "
                          "('Pod', 'default', 'broken', 1, ?)", (json.dumps(broken),))
    items, _ = store.list_parsed("Pod")
    assert items[0] == broken and items[1] is held[0]
    with pytest.raises(ValidationError):
        store.parse(items[0])
