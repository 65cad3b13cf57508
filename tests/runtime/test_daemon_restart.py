"""A daemon restarted on its store programs what it had before the restart: the same snapshot
as the daemon that wrote the store, and as a table built afresh from every stored object; its
endpoints controller lists once the first full sync is done (the data path reads the stored
slices)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from lbcore.hookspecs import hookimpl
from lbcore.model.kinds import KINDS
from lbcore.model.objects import parse_admitted
from lbcore.model.service_table import ServiceTable
from lbcore.plugins import get_plugin_manager
from lbcore.runtime.config import config_from_mapping
from lbcore.runtime.daemon import Daemon
from lbcore.runtime.store import Store

CIDR = "127.73.0.0/16"


def config(data_dir: Path) -> Any:
    return config_from_mapping({"admin_address": "127.0.0.1:0", "data_dir": str(data_dir),
                                "frontends": [], "service_cidr": CIDR})


def service(name: str, selector: dict[str, str] | None, ports: list[dict[str, Any]],
            **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"ports": ports, **spec}
    if selector is not None:
        body["selector"] = selector
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name}, "spec": body}


def pod(name: str, ip: str | None, labels: dict[str, str], ready: bool = True,
        ports: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    status: dict[str, Any] = {"phase": "Running", "conditions": [
        {"type": "Ready", "status": "True" if ready else "False"}]}
    if ip is not None:
        status["podIP"] = ip
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": labels},
            "spec": {"nodeName": "node-a", "containers": [
                {"name": "c", "image": "x", "ports": ports or []}]},
            "status": status}


OBJECTS = [
    service("web", {"app": "web"}, [{"name": "http", "port": 80, "targetPort": 8080},
                                    {"name": "https", "port": 443, "targetPort": "https"}]),
    service("api", {"app": "api"}, [{"port": 81, "targetPort": 9000}]),
    service("headless", {"app": "web"}, [{"port": 82}], clusterIP="None"),
    service("ext", None, [{"port": 83, "targetPort": 7000}]),
    pod("web-1", "127.0.4.1", {"app": "web"}, ports=[{"name": "https", "containerPort": 8443}]),
    pod("web-2", "127.0.4.2", {"app": "web"}, ready=False),
    pod("web-3", None, {"app": "web"}),
    pod("web-4", "127.0.4.4", {"app": "web", "track": "canary"}),
    pod("other", "127.0.4.5", {"app": "other"}),
    {"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": "ext"}, "subsets": [
        {"addresses": [{"ip": "127.0.4.9"}], "ports": [{"port": 7000}]}]},
]


async def settled(daemon: Daemon) -> None:
    """Until the endpoints controller and the sync loop have nothing left to do (bounded)."""
    state, controller = daemon.state, daemon.endpoints_controller
    assert state is not None
    quiet = 0
    for _ in range(1200):  # 60 s at most, counted in steps
        done = (controller.synced.is_set() and controller.backlog == 0 and not state.busy
                and state.synced_version == state.table.version)
        quiet = quiet + 1 if done else 0
        if quiet >= 10:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the daemon did not settle")


def ports_of(snapshot: Any) -> dict[str, Any]:
    return dict(snapshot.service_ports)


async def first_run(tmp_path: Path) -> dict[str, Any]:
    """The snapshot of a daemon that stored OBJECTS and settled (its controller wrote slices)."""
    daemon = Daemon(config(tmp_path))
    await daemon.start()
    try:
        for obj in OBJECTS:
            daemon.store.create(obj)
        await settled(daemon)
        assert daemon.store.list("EndpointSlice")[0], "the controller wrote no slices"
        return ports_of(daemon.state.snapshot)  # type: ignore[union-attr]
    finally:
        await daemon.stop()


def test_a_restart_programs_the_snapshot_the_store_was_written_with(tmp_path: Path) -> None:

    async def restarted() -> tuple[dict[str, Any], dict[str, Any]]:
        daemon = Daemon(config(tmp_path))
        await daemon.start()
        try:
            await settled(daemon)
            # a table built afresh from every stored object, kind by kind in KINDS' order
            # (pods before slices, so every pod's endpoints are computed there)
            table = ServiceTable(CIDR, allocate=False)
            for kind in KINDS:
                for obj in daemon.store.list(kind.kind)[0]:
                    table.apply(parse_admitted(obj))
            return ports_of(daemon.state.snapshot), ports_of(table.snapshot())  # type: ignore[union-attr]
        finally:
            await daemon.stop()

    before = asyncio.run(first_run(tmp_path))
    after, fresh = asyncio.run(restarted())
    assert {key.split(":")[0] for key in before} >= {"default/web", "default/api", "default/ext"}
    assert any(info.endpoints for info in before.values())
    assert after == before
    assert fresh == before


class SyncObserver:
    """A plugin that keeps the service ports of every sync's snapshot, as the daemon runs them."""

    def __init__(self) -> None:
        self.snapshots: list[dict[str, Any]] = []

    @hookimpl
    def lbcore_sync_done(self, snapshot: Any, changed: Any, duration: Any, errors: Any) -> None:
        self.snapshots.append(ports_of(snapshot))


def test_a_restart_runs_no_sync_before_the_first_whole_one(tmp_path: Path) -> None:
    """No sync hands the frontends a table still filling (it would take away the rules a kernel
    frontend kept), nor one without the endpoints of a service whose slices are stored but
    whose pods are not listed yet; one service has no slice, so the pods come first there."""

    async def restarted(observer: SyncObserver, without_slice: bool) -> None:
        if without_slice:  # removed before the daemon starts: as if the controller had not run
            with Store(tmp_path / "lbcore.db") as store:
                for body in store.list("EndpointSlice", "default")[0]:
                    if body["metadata"]["labels"]["kubernetes.io/service-name"] == "api":
                        store.delete("EndpointSlice", "default", body["metadata"]["name"])
        daemon = Daemon(config(tmp_path))
        pm = get_plugin_manager()
        pm.register(observer, name="restart-sync-observer")
        try:
            await daemon.start()
            try:
                await settled(daemon)
            finally:
                await daemon.stop()
        finally:
            pm.unregister(name="restart-sync-observer")

    before = asyncio.run(first_run(tmp_path))
    assert any(info.endpoints for info in before.values())
    for without_slice in (False, True):
        observer = SyncObserver()
        asyncio.run(restarted(observer, without_slice))
        assert observer.snapshots, "no sync ran"
        assert observer.snapshots[0] == before, f"without_slice={without_slice}"


def test_the_endpoints_controller_lists_once_the_first_full_sync_is_done(tmp_path: Path) -> None:
    seen: list[tuple[bool, int, int]] = []

    async def main() -> None:
        daemon = Daemon(config(tmp_path))
        await daemon.start()
        try:
            for obj in OBJECTS[:5]:
                daemon.store.create(obj)
        finally:
            await daemon.stop()
        daemon = Daemon(config(tmp_path))
        await daemon.start()  # its tasks have not run yet: the controller has not listed
        controller, state, source = daemon.endpoints_controller, daemon.state, daemon.source
        assert state is not None and source is not None
        listing = controller._list

        def recorded() -> None:
            seen.append((source.synced.is_set(), state.synced_version, state.table.version))
            listing()

        controller._list = recorded
        try:
            await settled(daemon)
            assert daemon.store.list("EndpointSlice")[0]
        finally:
            await daemon.stop()

    asyncio.run(main())
    assert len(seen) == 1
    listed, synced_version, version = seen[0]
    assert listed and version > 0 and synced_version >= version
