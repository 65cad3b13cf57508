"""The route status controller over a real store: Admitted True for the route that holds a host
and path, False with HostAlreadyClaimed for the younger one (Route against Route, and Route
against Ingress), the loser admitted once the winner is gone, other routers' entries kept, and
the addresses of served Ingresses in status.loadBalancer."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import Iterator

from lbcore.model.objects import parse_timestamp
from lbcore.model.service_table import ServiceTable
from lbcore.runtime.route_status import RouteStatusController
from lbcore.runtime.state import ClusterState
from lbcore.runtime.store import Store


@contextlib.contextmanager
def namespaced_store() -> Iterator[Store]:
    """A store with the namespaces these tests write into (a write needs its namespace)."""
    with Store(None) as store:
        for ns in ("shop", "other"):
            store.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
        yield store


def route(name, host="www.example.com", path="/", ns="shop") -> dict:
    return {"apiVersion": "route.openshift.io/v1", "kind": "Route",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"host": host, "path": path, "to": {"kind": "Service", "name": "web"}}}


def ingress(name, host="www.example.com", path="/", cls="lbcore") -> dict:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
            "metadata": {"name": name, "namespace": "shop"},
            "spec": {"ingressClassName": cls, "rules": [{"host": host, "http": {"paths": [
                {"path": path, "pathType": "Prefix",
                 "backend": {"service": {"name": "web", "port": {"number": 80}}}}]}}]}}


def admitted(store: Store, name: str, router: str = "lbcore") -> dict:
    obj = store.get("Route", "shop", name)
    (entry,) = [e for e in obj["status"]["ingress"] if e["routerName"] == router]
    (condition,) = entry["conditions"]
    assert entry["host"] == obj["spec"]["host"]
    return condition


def age(obj: dict) -> tuple:
    """OpenShift's order: creation time, then uid."""
    return parse_timestamp(obj["metadata"]["creationTimestamp"]), obj["metadata"]["uid"]


async def settle(controller: RouteStatusController, store: Store) -> None:
    """Wait (bounded) until the controller has drained every commit and written nothing more."""
    for _ in range(200):
        before = store.revision
        await asyncio.sleep(0.01)
        if controller.synced.is_set() and not controller._events and store.revision == before:
            return
    raise AssertionError("the controller did not settle")


def run(body) -> None:
    """Run ``body(start)`` on a loop of its own; ``await start(store, **options)`` starts a
    controller (stopped when ``body`` ends) and returns it once settled."""
    async def main() -> None:
        tasks = []

        async def start(store: Store, **options) -> RouteStatusController:
            controller = RouteStatusController(store, **options)
            tasks.append(asyncio.get_running_loop().create_task(controller.run()))
            await settle(controller, store)
            return controller

        try:
            await body(start)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run(main())


def test_the_older_route_is_admitted_and_the_younger_told_host_already_claimed() -> None:
    async def body(run_controller) -> None:
        with namespaced_store() as store:
            first, second = store.create(route("a")), store.create(route("b"))
            controller = await run_controller(store)
            older, younger = sorted([first, second], key=age)
            older_name, younger_name = older["metadata"]["name"], younger["metadata"]["name"]
            assert admitted(store, older_name)["status"] == "True"
            refused = admitted(store, younger_name)
            assert (refused["status"], refused["reason"]) == ("False", "HostAlreadyClaimed")
            assert refused["message"] == f"route {older_name} already exposes www.example.com and is older"
            writes = controller.writes
            store.create(route("c", path="/other"))  # another path of the host: no conflict
            await settle(controller, store)
            assert admitted(store, "c")["status"] == "True"
            assert controller.writes == writes + 1  # nothing else was rewritten
            store.delete("Route", "shop", older_name)
            await settle(controller, store)
            assert admitted(store, younger_name)["status"] == "True"

    run(body)


def test_a_route_in_another_namespace_cannot_take_a_held_host() -> None:
    async def body(run_controller) -> None:
        with namespaced_store() as store:
            mine = store.create(route("mine"))
            controller = await run_controller(store)
            theirs = store.create(route("theirs", path="/x", ns="other"))
            await settle(controller, store)
            # created within one second, the uid decides which is older
            older, younger = sorted([mine, theirs], key=age)
            meta = younger["metadata"]
            obj = store.get("Route", meta["namespace"], meta["name"])
            (condition,) = obj["status"]["ingress"][0]["conditions"]
            assert (condition["status"], condition["reason"]) == ("False", "HostAlreadyClaimed")
            assert condition["message"] == ("a route in another namespace holds www.example.com "
                                            f"and is older than {meta['name']}")
            meta = older["metadata"]
            admitted_older = store.get("Route", meta["namespace"], meta["name"])
            assert admitted_older["status"]["ingress"][0]["conditions"][0]["status"] == "True"

    run(body)


def test_an_older_ingress_path_holds_the_host_against_a_route() -> None:
    async def body(run_controller) -> None:
        with namespaced_store() as store:
            store.create(ingress("ing"))
            controller = await run_controller(store, addresses=["127.0.0.1", "lb.example.com"])
            store.create(route("r"))
            await settle(controller, store)
            ing, r = store.get("Ingress", "shop", "ing"), store.get("Route", "shop", "r")
            if age(ing) < age(r):
                condition = admitted(store, "r")
                assert (condition["status"], condition["reason"]) == ("False", "HostAlreadyClaimed")
                assert condition["message"] == "ingress ing already exposes www.example.com and is older"
            else:  # created within the same second, and the uid ordered the route first
                assert admitted(store, "r")["status"] == "True"
            assert ing["status"]["loadBalancer"]["ingress"] == [{"ip": "127.0.0.1"},
                                                                {"hostname": "lb.example.com"}]

    run(body)


def test_ingresses_of_other_classes_are_left_alone() -> None:
    async def body(run_controller) -> None:
        with namespaced_store() as store:
            store.create(ingress("nginx", cls="nginx"))
            await run_controller(store, addresses=["127.0.0.1"])
            assert store.get("Ingress", "shop", "nginx")["status"] == {"loadBalancer": {}}

    run(body)


def test_other_routers_entries_are_kept_and_transition_times_too() -> None:
    async def body(run_controller) -> None:
        times = iter([dt.datetime(2026, 12, 7, 10, 0, tzinfo=dt.UTC),
                      *[dt.datetime(2026, 12, 7, 11, 0, tzinfo=dt.UTC)] * 100])
        with namespaced_store() as store:
            body = route("r")
            body["status"] = {"ingress": [{"host": "www.example.com", "routerName": "default",
                                           "conditions": [{"type": "Admitted", "status": "True"}]}]}
            store.create(body)
            controller = await run_controller(store, clock=lambda: next(times))
            stored = store.get("Route", "shop", "r")
            assert [e["routerName"] for e in stored["status"]["ingress"]] == ["default", "lbcore"]
            assert admitted(store, "r")["lastTransitionTime"] == "2026-12-07T10:00:00Z"
            store.create(route("other", path="/x"))  # a reconcile at 11:00 that changes nothing here
            await settle(controller, store)
            assert admitted(store, "r")["lastTransitionTime"] == "2026-12-07T10:00:00Z"

    run(body)


def test_a_route_change_reaches_the_frontends_though_no_service_changed() -> None:
    asyncio.run(_route_change_reaches_the_frontends())


async def _route_change_reaches_the_frontends() -> None:
    seen = []

    class Recorder:
        def sync(self, snapshot, changed):
            seen.append((sorted(snapshot.routes), changed))

    state = ClusterState(ServiceTable(allocate=False), {"rec": Recorder()}, min_sync_period=0)
    task = asyncio.get_running_loop().create_task(state.run())
    try:
        state.upsert({**route("r"), "metadata": {"name": "r", "namespace": "shop",
                                                 "resourceVersion": "5"}})
        for _ in range(200):
            if seen:
                break
            await asyncio.sleep(0.01)
        assert seen == [(["shop/r"], frozenset())]
    finally:
        task.cancel()
