"""The local source: the embedded store's lists, then its commits, into a sink."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

import pytest
from lbcore_plugins.local_source import LocalSource

import lbcore
from lbcore.errors import ConfigError
from lbcore.model.service_table import ServiceTable
from lbcore.plugins import get_plugin_manager, registered
from lbcore.runtime.interfaces import RuntimeContext, SourceSink
from lbcore.runtime.state import ClusterState
from lbcore.runtime.store import Store

KINDS = tuple(k.kind for k in lbcore.KINDS)


def as_dict(obj: Any) -> dict[str, Any]:
    """A sink's object as a dict: the local source lists objects the store parsed (their
    ``raw`` is the stored dict) and follows commits with dicts."""
    if isinstance(obj, Mapping):
        return dict(obj)
    assert obj.resource_version == obj.raw["metadata"]["resourceVersion"]
    return dict(obj.raw)


class DictSink(SourceSink):
    """Keeps what it is told; ``on_replace`` lets a test write to the store mid-listing."""

    def __init__(self, on_replace: Callable[[str], None] | None = None) -> None:
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.upserts = 0
        self.given: Counter[tuple[str, str, str, str]] = Counter()  # (kind, ns, name, rv)
        self.on_replace = on_replace

    def upsert(self, obj: Mapping[str, Any]) -> None:
        obj = as_dict(obj)
        meta = obj["metadata"]
        self.objects[(obj["kind"], meta["namespace"], meta["name"])] = obj
        self.given[(obj["kind"], meta["namespace"], meta["name"], meta["resourceVersion"])] += 1
        self.upserts += 1

    def delete(self, kind: str, namespace: str, name: str) -> None:
        del self.objects[(kind, namespace, name)]

    def replace(self, kind: str, objects: list[Mapping[str, Any]]) -> None:
        for key in [k for k in self.objects if k[0] == kind]:
            del self.objects[key]
        for obj in objects:
            obj = as_dict(obj)
            meta = obj["metadata"]
            self.objects[(kind, meta["namespace"], meta["name"])] = obj
            self.given[(kind, meta["namespace"], meta["name"], meta["resourceVersion"])] += 1
        if self.on_replace:
            self.on_replace(kind)


def state(store: Store, namespace: str | None = None) -> dict[tuple[str, str, str], str]:
    return {(k, o["metadata"]["namespace"], o["metadata"]["name"]): o["metadata"]["resourceVersion"]
            for k in KINDS for o in store.list(k, namespace)[0]}


def versions(sink: DictSink) -> dict[tuple[str, str, str], str]:
    return {k: o["metadata"]["resourceVersion"] for k, o in sink.objects.items()}


def service(name: str, namespace: str = "default") -> dict[str, Any]:
    return {"kind": "Service", "metadata": {"name": name, "namespace": namespace},
            "spec": {"selector": {"app": name}, "ports": [{"port": 80}]}}


def pod(name: str) -> dict[str, Any]:
    return {"kind": "Pod", "metadata": {"name": name, "labels": {"app": "web"}},
            "spec": {"containers": [{"name": "c", "image": "x"}]},
            "status": {"phase": "Running", "podIP": "10.0.0.1"}}


async def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"condition not met within {timeout} s"
        await asyncio.sleep(0.01)


def run(store: Store, sink: DictSink, scenario: Callable[[LocalSource], Any],
        options: dict[str, Any] | None = None) -> None:
    async def main() -> None:
        source = LocalSource(options or {}, RuntimeContext(store=store))
        task = asyncio.create_task(source.run(sink))
        try:
            await asyncio.wait_for(source.synced.wait(), 5)
            await scenario(source)
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    asyncio.run(main())


@pytest.fixture
def store() -> Store:
    with Store(None) as s:
        yield s


def test_lists_every_kind_then_follows_creates_updates_and_deletes(store):
    store.create(service("web"))
    store.create(pod("web-a"))
    sink = DictSink()

    async def scenario(source: LocalSource) -> None:
        assert versions(sink) == state(store)
        store.create(pod("web-b"))
        svc = store.get("Service", "default", "web")
        svc["metadata"]["labels"] = {"changed": "yes"}
        store.update(svc)
        store.delete("Pod", "default", "web-a")
        await wait_until(lambda: versions(sink) == state(store))
        assert sink.objects[("Service", "default", "web")]["metadata"]["labels"] == {
            "changed": "yes"}

    run(store, sink, scenario)


def test_writes_during_the_listing_are_neither_lost_nor_applied_twice(store):
    """A write made while the lists are handed over arrives once, whether its kind's list was
    handed over yet (then as an event) or not (then in the list, read later)."""
    store.create(service("web"))

    def write_while_listing(kind: str) -> None:
        if kind == "Service":
            store.create(pod("listed"))  # the Pod list is not read yet
        if kind == "EndpointSlice":
            store.create(service("after"))  # the Service list was handed over

    sink = DictSink(on_replace=write_while_listing)

    async def scenario(source: LocalSource) -> None:
        await wait_until(lambda: versions(sink) == state(store))
        assert sink.upserts == 1  # "after"
        assert set(sink.given.values()) == {1}  # every version once

    run(store, sink, scenario)


class OrderSink(ClusterState):
    """The daemon's sink, recording each list it is given, whether the source had said it was
    synced by then, and how many syncs had run."""

    def __init__(self) -> None:
        super().__init__(ServiceTable(allocate=False), {})
        self.source: LocalSource | None = None
        self.lists: list[tuple[str, bool, int]] = []

    def replace(self, kind: str, objects: Any) -> None:
        assert self.source is not None
        self.lists.append((kind, self.source.synced.is_set(), self.syncs))
        super().replace(kind, objects)


def listing_order(store: Store) -> list[tuple[str, bool, int]]:
    sink = OrderSink()

    async def main() -> None:
        source = sink.source = LocalSource({}, RuntimeContext(store=store))
        tasks = [asyncio.create_task(source.run(sink)), asyncio.create_task(sink.run())]
        try:
            await wait_until(lambda: len(sink.lists) == len(KINDS))
        finally:
            for task in tasks:
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task

    asyncio.run(main())
    return sink.lists


def endpoint_slice(service_name: str) -> dict[str, Any]:
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": f"{service_name}-1",
                         "labels": {"kubernetes.io/service-name": service_name}},
            "addressType": "IPv4", "ports": [{"port": 80, "protocol": "TCP"}],
            "endpoints": [{"addresses": ["10.0.0.1"], "conditions": {"ready": True}}]}


def test_synced_before_endpoints_and_pods_when_every_service_has_slices(store):
    """Endpoints objects and pods change nothing on the data path then: the daemon's first
    sync (held until ``synced``) does not wait for them, and runs before they are listed."""
    store.create(service("web"))
    store.create(pod("web-a"))
    store.create(endpoint_slice("web"))
    order = listing_order(store)
    assert [kind for kind, _, _ in order[-2:]] == ["Endpoints", "Pod"]
    assert not any(synced for _, synced, _ in order[:-2])
    assert all(synced and syncs >= 1 for _, synced, syncs in order[-2:])


def test_synced_after_every_list_when_a_service_has_no_slice(store):
    store.create(service("web"))
    store.create(pod("web-a"))  # web's endpoints come from it
    order = listing_order(store)
    assert [kind for kind, _, _ in order[-2:]] == ["Endpoints", "Pod"]
    assert not any(synced for _, synced, _ in order)


def test_writes_from_another_thread_arrive(store):
    sink = DictSink()

    async def scenario(source: LocalSource) -> None:
        writer = threading.Thread(target=lambda: [store.create(service(f"s{i}")) for i in range(20)])
        writer.start()
        await wait_until(lambda: len(sink.objects) == 20)
        writer.join(5)
        assert versions(sink) == state(store)

    run(store, sink, scenario)


def test_namespace_and_kinds_options_restrict_what_is_followed(store):
    for namespace in ("prod", "dev"):
        store.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
    store.create(service("a", "prod"))
    store.create(service("b", "dev"))
    store.create(pod("p"))
    sink = DictSink()

    async def scenario(source: LocalSource) -> None:
        store.create(service("c", "prod"))
        store.create(service("d", "dev"))
        await wait_until(lambda: len(sink.objects) == 2)
        await asyncio.sleep(0.05)
        assert set(sink.objects) == {("Service", "prod", "a"), ("Service", "prod", "c")}

    run(store, sink, scenario, {"namespace": "prod", "kinds": ["Service"]})


def test_cancelling_stops_following_the_store(store):
    sink = DictSink()

    async def main() -> None:
        source = LocalSource({}, RuntimeContext(store=store))
        task = asyncio.create_task(source.run(sink))
        await asyncio.wait_for(source.synced.wait(), 5)
        store.create(service("a"))
        await wait_until(lambda: len(sink.objects) == 1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        store.create(service("b"))  # the loop still runs: only unsubscribing keeps b out
        await asyncio.sleep(0.1)

    asyncio.run(main())
    assert set(sink.objects) == {("Service", "default", "a")}


def test_without_a_store_it_is_a_config_error():
    with pytest.raises(ConfigError, match="no store"):
        LocalSource({}, RuntimeContext())
    with pytest.raises(ConfigError, match="kinds"):
        LocalSource({"kinds": "Service"}, RuntimeContext(store=object()))


def test_kinds_are_named_as_kubectl_names_them():
    source = LocalSource({"kinds": ["svc", "endpointslices", "Pod"]}, RuntimeContext(store=object()))
    assert source.kinds == ("Service", "EndpointSlice", "Pod")
    assert LocalSource({}, RuntimeContext(store=object())).kinds == KINDS
    with pytest.raises(ConfigError, match="kinds: unknown kind 'deployments'"):
        LocalSource({"kinds": ["deployments"]}, RuntimeContext(store=object()))
    with pytest.raises(ConfigError, match="namespaces: unknown option; known: kinds, namespace"):
        LocalSource({"namespaces": ["a"]}, RuntimeContext(store=object()))


def test_registered_under_its_name_through_the_entry_point(monkeypatch):
    monkeypatch.setenv("LBCORE_LOAD_PLUGINS", "local")
    get_plugin_manager.cache_clear()
    try:
        assert registered("lbcore_register_sources")["local"] is LocalSource
    finally:
        get_plugin_manager.cache_clear()


def test_pods_are_not_followed_when_an_endpoints_controller_keeps_the_slices(store):
    # the daemon's store: its endpoints controller turns pods into EndpointSlices, which the
    # data path reads, as kube-proxy does
    from lbcore.runtime.endpoints_controller import EndpointsController

    store.create(service("web"))
    store.create(pod("web-a"))
    assert LocalSource({}, RuntimeContext(store=store)).kinds == KINDS
    EndpointsController(store)
    assert store.slices_kept
    assert LocalSource({}, RuntimeContext(store=store)).kinds == tuple(
        k for k in KINDS if k != "Pod")
    named = LocalSource({"kinds": ["Service", "Pod"]}, RuntimeContext(store=store))
    assert named.kinds == ("Service", "Pod")  # asked for: followed
    sink = DictSink()

    async def scenario(source: LocalSource) -> None:
        store.create(pod("web-b"))
        store.create(service("db"))
        await wait_until(lambda: ("Service", "default", "db") in sink.objects)
        assert {k for k, _, _ in sink.objects} == {"Service"}

    run(store, sink, scenario)
