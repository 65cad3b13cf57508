"""What the endpoints controller does for a pod write: a change its endpoints do not show
(a label no selector reads) reconciles no service; readiness, addresses and a label that
changes which services select the pod reconcile the services concerned."""

from __future__ import annotations

import asyncio
from typing import Any

from lbcore.model.endpoints import endpoint_fields
from lbcore.model.objects import parse_admitted
from lbcore.runtime.endpoints_controller import EndpointsController
from lbcore.runtime.store import Store


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
