"""Events about services, written into a real store as a cluster's components record them."""

from __future__ import annotations

import asyncio
import datetime as _dt
from typing import Any

from lbcore.model.snapshot import ServicePortInfo, Snapshot
from lbcore.runtime.events import AllocationEvents, EventRecorder, FrontendEvents
from lbcore.runtime.store import Store


def service(name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
            "spec": {"selector": {"app": name}, "ports": [{"port": 80}], **spec}}


def reasons(store: Store) -> list[tuple[str, str, str, int]]:
    return sorted((e["involvedObject"]["name"], e["type"], e["reason"], e["count"])
                  for e in store.list("Event")[0])


async def settle(recorder: EventRecorder, count: int) -> None:
    for _ in range(400):  # bounded: 10 s
        if recorder.recorded >= count:
            return
        await asyncio.sleep(0.025)


def test_allocations_are_events_of_the_service_with_its_uid():
    async def scenario(store: Store) -> None:
        recorder = EventRecorder(store, instance="node-a")
        task = asyncio.create_task(recorder.run())
        store.subscribe(AllocationEvents(recorder, store.list("Service")[0]))
        web = store.create(service("web", type="NodePort"))
        await settle(recorder, 2)
        store.update(service("web", type="NodePort"))  # nothing newly allocated
        store.create(service("headless", clusterIP="None"))
        store.update(service("web", type="NodePort", ports=[{"name": "a", "port": 80},
                                                          {"name": "b", "port": 81}]))
        await settle(recorder, 3)
        task.cancel()
        events = store.list("Event")[0]
        assert reasons(store) == [("web", "Normal", "ClusterIPAllocated", 1),
                                  ("web", "Normal", "NodePortAllocated", 1),
                                  ("web", "Normal", "NodePortAllocated", 1)]
        assert {e["involvedObject"]["uid"] for e in events} == {web["metadata"]["uid"]}
        assert {e["reportingInstance"] for e in events} == {"node-a"}
        assert all(e["metadata"]["name"].startswith("web.") for e in events)

    with Store(None) as store:
        asyncio.run(scenario(store))


def test_a_repeated_failure_counts_up_and_a_gone_service_gets_none():
    async def scenario(store: Store) -> None:
        recorder = EventRecorder(store)
        task = asyncio.create_task(recorder.run())
        store.create(service("web"))
        observe = FrontendEvents(recorder, ["iptables"], serves_node_ports=True)
        for _ in range(3):
            observe(snapshot=None, changed={"default/web", "default/gone"},
                    errors={"iptables": "iptables-restore: exit 1"})
        await settle(recorder, 3)
        task.cancel()
        [event] = store.list("Event")[0]
        assert (event["reason"], event["type"], event["count"]) == (
            "FrontendSyncFailed", "Warning", 3)
        assert event["message"] == ("frontend iptables could not program the service: "
                                    "iptables-restore: exit 1")

    with Store(None) as store:
        asyncio.run(scenario(store))


def test_an_unserved_node_port_is_told_once():
    async def scenario(store: Store) -> None:
        recorder = EventRecorder(store)
        task = asyncio.create_task(recorder.run())
        svc = store.create(service("np", type="NodePort"))
        port = svc["spec"]["ports"][0]["nodePort"]
        info = ServicePortInfo(namespace="default", name="np", port_name="", protocol="TCP",
                               port=80, cluster_ips=(svc["spec"]["clusterIP"],), type="NodePort",
                               node_port=port)
        observe = FrontendEvents(recorder, ["socket"], serves_node_ports=False)
        snapshot = Snapshot(service_ports={info.key: info})
        for _ in range(3):  # the service's first sync names it as changed; later ones may too
            observe(snapshot=snapshot, changed={"default/np"}, errors={})
        observe(snapshot=snapshot, changed=set(), errors={})
        await settle(recorder, 1)
        await asyncio.sleep(0.1)
        task.cancel()
        assert reasons(store) == [("np", "Warning", "NodePortNotServed", 1)]

    with Store(None) as store:
        asyncio.run(scenario(store))


def test_events_go_an_hour_after_they_last_happened():
    async def scenario(store: Store) -> None:
        now = [_dt.datetime(2026, 1, 1, tzinfo=_dt.UTC)]
        recorder = EventRecorder(store, clock=lambda: now[0])
        task = asyncio.create_task(recorder.run())
        store.create(service("web"))
        recorder.record("Service", "default", "web", "Normal", "Test", "first")
        await settle(recorder, 1)
        now[0] += _dt.timedelta(minutes=61)
        recorder.record("Service", "default", "web", "Normal", "Test", "second")
        await settle(recorder, 2)
        recorder._sweep()
        task.cancel()
        assert [e["message"] for e in store.list("Event")[0]] == ["second"]

    with Store(None) as store:
        asyncio.run(scenario(store))
