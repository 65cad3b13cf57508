"""What the endpoints controller does for a pod write: a change its endpoints do not show
(a label no selector reads) reconciles no service; readiness, addresses and a label that
changes which services select the pod reconcile the services concerned. It keeps no text of
the slices and Endpoints it compares: it compares them by digest, and reads a slice's text from
the store only to rewrite it, whether the store still remembers that text or reads its row."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Awaitable, Callable
from typing import Any

from lbcore.model.endpoints import endpoint_fields
from lbcore.model.objects import Endpoints, EndpointSlice, StoredText, parse_admitted
from lbcore.runtime.endpoints_controller import EndpointsController
from lbcore.runtime.store import RECENT_TEXTS, Store


def service(name: str, selector: dict[str, str]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
            "spec": {"selector": selector, "ports": [{"port": 80, "targetPort": 8080}]}}


def pod(name: str, ip: str, labels: dict[str, str]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": labels},
            "spec": {"nodeName": "node-a", "containers": [{"name": "c", "image": "x"}]},
            "status": {"phase": "Running", "podIP": ip, "conditions": [
                {"type": "Ready", "status": "True"}]}}


def patched(store: Store, name: str, change: dict[str, Any]) -> None:
    current = store.get("Pod", "default", name)
    for part, fields in change.items():
        current.setdefault(part, {}).update(fields)
    # a pod's status is written through its subresource, as a kubelet writes it
    store.update(current, subresource="status" if "status" in change else None)


async def settle(controller: EndpointsController) -> None:
    """Turn the loop until the controller has had nothing queued for a while (bounded)."""
    quiet = 0
    for _ in range(2000):
        await asyncio.sleep(0)
        quiet = quiet + 1 if controller.backlog == 0 else 0
        if quiet >= 20:
            return
    raise AssertionError("the endpoints controller kept a backlog")


def ready_of(store: Store, service_name: str) -> dict[str, bool]:
    slices, _ = store.list("EndpointSlice", "default",
                           f"kubernetes.io/service-name={service_name}")
    return {ep["targetRef"]["name"]: ep["conditions"]["ready"]
            for s in slices for ep in s.get("endpoints") or []}


def test_only_changes_the_endpoints_show_reconcile_services() -> None:
    async def scenario(store: Store) -> None:
        controller = EndpointsController(store)
        task = asyncio.create_task(controller.run())
        try:
            store.create(service("web", {"app": "web"}))
            store.create(service("canary", {"track": "canary"}))
            store.create(pod("web-1", "127.0.3.1", {"app": "web"}))
            store.create(pod("web-2", "127.0.3.2", {"app": "web"}))
            await asyncio.wait_for(controller.synced.wait(), 30)
            await settle(controller)
            assert ready_of(store, "web") == {"web-1": True, "web-2": True}

            before = controller.reconciles, controller.writes
            patched(store, "web-1", {"metadata": {"labels": {"app": "web", "rev": "1"}}})
            await settle(controller)
            assert (controller.reconciles, controller.writes) == before

            # a label that makes another service select it: that service, and only it
            patched(store, "web-1", {"metadata": {"labels": {"app": "web", "track": "canary"}}})
            await settle(controller)
            assert controller.reconciles == before[0] + 1
            assert ready_of(store, "canary") == {"web-1": True}

            reconciled = controller.reconciles
            patched(store, "web-2", {"status": {"conditions": [
                {"type": "Ready", "status": "False"}]}})
            await settle(controller)
            assert controller.reconciles == reconciled + 1
            assert ready_of(store, "web") == {"web-1": True, "web-2": False}
        finally:
            task.cancel()

    with Store(None) as store:
        asyncio.run(scenario(store))


def test_endpoint_fields_differ_for_what_an_endpoint_shows() -> None:
    base = pod("p", "127.0.3.9", {"app": "web"})
    base["metadata"].update(namespace="default", uid="u-1")

    def fields(change: dict[str, Any] | None = None, labels: dict[str, str] | None = None,
               spec: dict[str, Any] | None = None) -> tuple[Any, ...]:
        body: dict[str, Any] = {**base, "metadata": {**base["metadata"]},
                                "status": {**base["status"], **(change or {})},
                                "spec": {**base["spec"], **(spec or {})}}
        if labels is not None:
            body["metadata"]["labels"] = labels
        return endpoint_fields(parse_admitted(body))

    same = fields()
    assert fields(labels={"app": "web", "rev": "2"}) == same
    assert fields({"conditions": [{"type": "Ready", "status": "False"}]}) != same
    assert fields({"podIP": "127.0.3.8", "podIPs": [{"ip": "127.0.3.8"}]}) != same
    assert fields({"phase": "Succeeded"}) != same
    assert fields(spec={"nodeName": "node-b"}) != same
    assert fields(spec={"hostname": "h", "subdomain": "web"}) != same
    assert fields(spec={"containers": [{"name": "c", "image": "x", "ports": [
        {"name": "http", "containerPort": 8080}]}]}) != same
    assert fields(labels={"app": "web", "topology.kubernetes.io/zone": "z"}) != same


def slices_of(store: Store, name: str) -> list[dict[str, Any]]:
    return store.list("EndpointSlice", "default", f"kubernetes.io/service-name={name}")[0]


def run(scenario: Callable[[Store, EndpointsController], Awaitable[None]]) -> None:
    async def main(store: Store) -> None:
        controller = EndpointsController(store)
        task = asyncio.create_task(controller.run())
        try:
            store.create(service("web", {"app": "web"}))
            for i in (1, 2, 3):
                store.create(pod(f"web-{i}", f"127.0.3.{i}", {"app": "web"}))
            await asyncio.wait_for(controller.synced.wait(), 30)
            await settle(controller)
            await scenario(store, controller)
        finally:
            task.cancel()

    with Store(None) as store:
        asyncio.run(main(store))


def counting_reads(store: Store) -> list[str]:
    """The names of the objects whose text the store reads for a parsed object's ``raw``."""
    reads: list[str] = []
    read = store._stored_text.read

    def counted(obj: Any) -> str:
        reads.append(obj.name)
        return read(obj)

    store._stored_text.read = counted
    return reads


def test_the_controller_keeps_no_text_and_a_reconcile_that_writes_nothing_reads_none() -> None:
    async def scenario(store: Store, controller: EndpointsController) -> None:
        kept = [k[1] for s in controller._slices.values() for k in s.values()]
        kept += [k[1] for k in controller._endpoints.values()]
        assert {type(o) for o in kept} == {EndpointSlice, Endpoints}
        assert all(isinstance(o.body, StoredText) for o in kept)
        reads = counting_reads(store)
        writes = controller.writes
        controller._dirty.add("default/web")
        await controller._reconcile_dirty()
        assert controller.writes == writes and reads == []

    run(scenario)


def test_a_slice_whose_text_left_the_store_memory_is_compared_and_rewritten_from_its_row(
) -> None:
    async def scenario(store: Store, controller: EndpointsController) -> None:
        [stored] = slices_of(store, "web")
        # more objects written since than the store remembers the texts of
        for i in range(RECENT_TEXTS + 10):
            store.create({"apiVersion": "v1", "kind": "Pod",
                          "metadata": {"name": f"other-{i}", "labels": {"app": "other"}},
                          "spec": {"containers": [{"name": "c", "image": "x"}]}})
        await settle(controller)
        assert ("EndpointSlice", "default", stored["metadata"]["name"]) not in store._recent_texts
        reads = counting_reads(store)
        writes = controller.writes
        patched(store, "web-2", {"status": {"conditions": [{"type": "Ready", "status": "False"}]}})
        await settle(controller)
        # the slice and the Endpoints written, the slice's text read once, from its row
        assert controller.writes == writes + 2
        assert reads == [stored["metadata"]["name"]]
        assert ready_of(store, "web") == {"web-1": True, "web-2": False, "web-3": True}
        [rewritten] = slices_of(store, "web")
        assert rewritten["metadata"]["uid"] == stored["metadata"]["uid"]
        assert rewritten["metadata"]["creationTimestamp"] == stored["metadata"][
            "creationTimestamp"]
        endpoints = store.get("Endpoints", "default", "web")
        assert [a["ip"] for a in endpoints["subsets"][0]["notReadyAddresses"]] == ["127.0.3.2"]

    run(scenario)


def test_a_managed_slice_changed_where_the_parsed_slice_has_no_field_is_written_back() -> None:
    async def scenario(store: Store, controller: EndpointsController) -> None:
        [stored] = slices_of(store, "web")
        # fields the parsed slice does not hold: a target's uid, the owner references
        changed = copy.deepcopy(stored)
        changed["endpoints"][0]["targetRef"]["uid"] = "someone-else"
        changed["metadata"]["ownerReferences"] = []
        store.update(changed)
        await settle(controller)
        [restored] = slices_of(store, "web")
        assert restored["endpoints"] == stored["endpoints"]
        assert restored["metadata"]["ownerReferences"] == stored["metadata"]["ownerReferences"]
        assert int(restored["metadata"]["resourceVersion"]) > int(
            stored["metadata"]["resourceVersion"])

    run(scenario)


def test_managed_endpoints_changed_by_someone_else_are_written_back() -> None:
    async def scenario(store: Store, controller: EndpointsController) -> None:
        stored = store.get("Endpoints", "default", "web")
        changed = copy.deepcopy(stored)
        changed["metadata"]["annotations"] = {"someone": "else"}
        changed["subsets"][0]["addresses"] = changed["subsets"][0]["addresses"][:1]
        store.update(changed)
        await settle(controller)
        restored = store.get("Endpoints", "default", "web")
        assert restored["subsets"] == stored["subsets"]
        assert not restored["metadata"].get("annotations")

    run(scenario)
