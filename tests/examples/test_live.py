"""``lbcore.connect``: live pickers over a daemon's admin API, a kubeconfig and an in-process store."""

from __future__ import annotations

import asyncio
import socket
import threading
from pathlib import Path
from typing import Any

import pytest
import yaml
from live_cluster import NAMESPACE, SERVICE, Cluster, eligible_names, service, wait_until

import lbcore
from lbcore.runtime.live import LivePicker

FAST = {"backoff_initial": 0.05, "backoff_max": 0.2, "connect_timeout": 1, "read_timeout": 5}
CLIENT = ("TCP", "192.0.2.7", 40000, "10.96.0.10", 80)


def connect(cluster: Cluster, how: str, tmp_path: Path | None = None) -> lbcore.LiveCluster:
    if how == "url":
        return lbcore.connect(cluster.url, options=FAST)
    if how == "kubeconfig":
        assert tmp_path is not None
        path = tmp_path / "kubeconfig"
        path.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "lbcore",
            "clusters": [{"name": "lbcore", "cluster": {"server": cluster.url}}],
            "users": [{"name": "me", "user": {}}],
            "contexts": [{"name": "lbcore", "context": {"cluster": "lbcore", "user": "me"}}],
        }))
        return lbcore.connect(path, mode="pods", options=FAST)
    return lbcore.connect(cluster.store)


@pytest.mark.parametrize("how", ["url", "kubeconfig", "store"])
def test_a_picker_follows_not_ready_deleted_and_new_pods(cluster, how, tmp_path):
    with connect(cluster, how, tmp_path) as live:
        picker = live.picker(NAMESPACE, SERVICE, "http")
        assert isinstance(picker, lbcore.Picker) and isinstance(picker, LivePicker)
        assert eligible_names(picker) == {"web-0", "web-1", "web-2"}
        cluster.set_ready("web-1", False)
        wait_until(lambda: eligible_names(picker) == {"web-0", "web-2"}, what="not ready")
        cluster.delete_pod("web-2")
        wait_until(lambda: eligible_names(picker) == {"web-0"}, what="deleted")
        cluster.add_pod("web-3")
        wait_until(lambda: eligible_names(picker) == {"web-0", "web-3"}, what="new pod")
        picks = {picker.pick("TCP", "192.0.2.7", 40000 + i, "10.96.0.10", 80).target
                 for i in range(10)}
        assert picks == {"default/web-0", "default/web-3"}
        assert picker.service_port.key == "default/web:http"


def test_a_port_is_found_by_name_number_or_as_the_only_one(cluster):
    with lbcore.connect(cluster.store) as live:
        by_name = live.picker(NAMESPACE, SERVICE, "http")
        by_number = live.picker(NAMESPACE, SERVICE, 80)
        only = live.picker(NAMESPACE, SERVICE)
        assert by_name.key == by_number.key == only.key == "default/web:http"
        assert live.service_port(NAMESPACE, SERVICE).port == 80


def test_a_missing_service_or_port_is_a_clear_error(cluster):
    with lbcore.connect(cluster.store) as live:
        with pytest.raises(lbcore.ServiceNotFound, match='service "default/nope" not found'):
            live.picker(NAMESPACE, "nope", "http")
        with pytest.raises(lbcore.ServiceNotFound,
                           match=r"no port 'grpc'; its ports: http \(80/TCP\)"):
            live.picker(NAMESPACE, SERVICE, "grpc")
        with pytest.raises(LookupError):  # ServiceNotFound is a LookupError too
            live.service_port(NAMESPACE, SERVICE, 81)


def test_picks_raise_service_gone_while_the_service_is_deleted_and_follow_it_back(cluster):
    with lbcore.connect(cluster.store) as live:
        picker = live.picker(NAMESPACE, SERVICE, "http")
        cluster.store.delete("Service", NAMESPACE, SERVICE)
        wait_until(lambda: picker.gone, what="gone")
        with pytest.raises(lbcore.ServiceGone, match="default/web:http was deleted"):
            picker.pick(*CLIENT)
        with pytest.raises(lbcore.ServiceGone):
            picker.pick_index(*CLIENT)
        assert picker.endpoints == ()  # nothing stale left behind the error
        cluster.store.apply(service())
        wait_until(lambda: not picker.gone, what="back")
        # its endpoints come with the slices the endpoints controller writes for it again
        wait_until(lambda: picker.eligible, what="endpoints of the service back")
        assert picker.pick(*CLIENT).target in {"default/web-0", "default/web-1", "default/web-2"}


def test_a_renamed_port_is_gone_for_a_picker_of_the_old_name(cluster):
    with lbcore.connect(cluster.store) as live:
        picker = live.picker(NAMESPACE, SERVICE, "http")
        cluster.store.apply(service(port_name="web"))
        wait_until(lambda: picker.gone, what="gone")
        # the renamed port's endpoints come with the slices the endpoints controller writes
        # for it, which may be a sync later than the service's own change
        renamed = live.picker(NAMESPACE, SERVICE, "web")
        wait_until(lambda: renamed.eligible, what="endpoints of the renamed port")


def test_session_affinity_and_the_port_follow_the_service(cluster):
    with lbcore.connect(cluster.store) as live:
        picker = live.picker(NAMESPACE, SERVICE, "http")
        assert picker.affinity is None
        cluster.store.apply(service(affinity="ClientIP"))
        wait_until(lambda: picker.session_affinity == "ClientIP", what="affinity")
        assert picker.affinity is not None and len(picker.eligible) == 3
        first = picker.pick(*CLIENT)
        for sport in range(40001, 40021):  # new connections of the client stay on its endpoint
            assert picker.pick("TCP", "192.0.2.7", sport, "10.96.0.10", 80) == first
        obj = service()
        obj["spec"]["ports"][0]["port"] = 8080
        cluster.store.apply(obj)
        wait_until(lambda: picker.service_port.port == 8080, what="port")
        assert picker.session_affinity == "None" and picker.affinity is None


def test_close_stops_following_and_picks_raise(cluster):
    live = lbcore.connect(cluster.store)
    picker = live.picker(NAMESPACE, SERVICE, "http")
    live.close()
    live.close()  # idempotent
    with pytest.raises(lbcore.ServiceGone, match="handle closed"):
        picker.pick(*CLIENT)
    with pytest.raises(lbcore.LbcoreError, match="closed"):
        live.picker(NAMESPACE, SERVICE, "http")


def test_picks_from_threads_never_see_a_removed_pod_once_the_change_is_applied(cluster):
    with lbcore.connect(cluster.store) as live:
        picker = live.picker(NAMESPACE, SERVICE, "http")
        bad: list[Any] = []
        removed = threading.Event()
        stop = threading.Event()

        def worker(n: int) -> None:
            for i in range(200_000):
                if stop.is_set():
                    return
                was_removed = removed.is_set()
                ep = picker.pick("TCP", "192.0.2.7", 1024 + (n * 7919 + i) % 60000, "10.0.0.1", 80)
                picker.close("TCP", "192.0.2.7", 1024 + (n * 7919 + i) % 60000, "10.0.0.1", 80)
                if ep is lbcore.NO_ENDPOINTS or (was_removed and ep.target == "default/web-2"):
                    bad.append(ep)

        threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        try:
            cluster.delete_pod("web-2")
            wait_until(lambda: "web-2" not in eligible_names(picker), what="removed")
            removed.set()
            cluster.add_pod("web-3")
            wait_until(lambda: "web-3" in eligible_names(picker), what="added")
        finally:
            stop.set()
            for t in threads:
                t.join(30)
        assert bad == []


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_async_with_waits_without_blocking_the_loop(cluster, loop):
    if loop == "uvloop":
        uvloop = pytest.importorskip("uvloop", reason="uvloop is not installed (the test extra)")
        runner: Any = uvloop.run
    else:
        runner = asyncio.run

    async def main() -> set[str]:
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.001)

        ticker = asyncio.create_task(tick())
        async with lbcore.connect(cluster.url, options=FAST) as live:
            picker = live.picker(NAMESPACE, SERVICE, "http")
            names = eligible_names(picker)
        ticker.cancel()
        assert ticks > 0  # the loop kept running while the handle listed
        return names

    assert runner(main()) == {"web-0", "web-1", "web-2"}


def test_an_unreachable_source_is_source_not_ready_with_its_last_error():
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
    live = lbcore.connect(url, options=FAST, timeout=1.0)
    try:
        with pytest.raises(lbcore.SourceNotReady, match=r"no full list within 1 s \(last error: "):
            live.picker(NAMESPACE, SERVICE, "http")
        assert isinstance(lbcore.SourceNotReady("x"), TimeoutError)
    finally:
        live.close()


def test_a_source_that_cannot_be_used_is_a_config_error(tmp_path):
    with pytest.raises(lbcore.ConfigError, match="neither a URL nor a kubeconfig file"):
        lbcore.connect(str(tmp_path / "missing"))
    with pytest.raises(lbcore.ConfigError, match="expected a URL, a kubeconfig path or a Store"):
        lbcore.connect(42)
    with pytest.raises(lbcore.ConfigError, match="unknown option"):
        lbcore.connect("http://127.0.0.1:1", options={"colour": "blue"})


def test_picks_from_threads_while_the_affinity_changes_never_fail(cluster):
    """A change of affinity swaps in a new core: a pick sees the old one or the new one."""
    with lbcore.connect(cluster.store) as live:
        picker = live.picker(NAMESPACE, SERVICE, "http")
        bad: list[Any] = []
        stop = threading.Event()

        def worker(n: int) -> None:
            for i in range(500_000):
                if stop.is_set():
                    return
                conn = ("TCP", f"192.0.2.{n + 1}", 1024 + i % 60000, "10.0.0.1", 80)
                try:
                    if not picker.pick(*conn):
                        bad.append("NO_ENDPOINTS")
                    picker.close(*conn)
                except Exception as exc:  # pragma: no cover - what the test looks for
                    bad.append(repr(exc))

        threads = [threading.Thread(target=worker, args=(n,)) for n in range(3)]
        for t in threads:
            t.start()
        try:
            for i in range(6):
                affinity = "ClientIP" if i % 2 == 0 else "None"
                cluster.store.apply(service(affinity=affinity))
                wait_until(lambda a=affinity: picker.session_affinity == a, what=affinity)
        finally:
            stop.set()
            for t in threads:
                t.join(30)
        assert bad == []


def test_endpointslices_mode_takes_the_endpoints_from_the_slices(cluster):
    cluster.store.apply({
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "sliced", "namespace": NAMESPACE},
        "spec": {"ports": [{"name": "http", "port": 80}]},  # no selector: slices are written
    })
    cluster.store.apply({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "sliced-1", "namespace": NAMESPACE,
                     "labels": {"kubernetes.io/service-name": "sliced"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": True}}],
        "ports": [{"name": "http", "port": cluster.backends["web-0"].port, "protocol": "TCP"}],
    })
    with lbcore.connect(cluster.url, mode="endpointslices", options=FAST) as live:
        picker = live.picker(NAMESPACE, "sliced", "http")
        assert [ep.port for ep in picker.eligible] == [cluster.backends["web-0"].port]


class FailsOnce(lbcore.Source):
    """A source whose first run fails; the second lists the store (through the local source)."""

    name = "fails-once"

    def __init__(self, store: Any) -> None:
        super().__init__({}, lbcore.RuntimeContext(store=store))
        self.runs = 0
        self.synced = asyncio.Event()  # set once listed, as the built-in sources do

    async def run(self, sink: lbcore.SourceSink) -> None:
        self.runs += 1
        if self.runs == 1:
            raise ConnectionError("the API server is not there yet")
        from lbcore_plugins.local_source import LocalSource

        inner = LocalSource({}, self.context)
        listed = asyncio.create_task(inner.synced.wait())
        listed.add_done_callback(lambda _: self.synced.set())
        await inner.run(sink)


def test_a_source_that_fails_is_started_again(cluster):
    source = FailsOnce(cluster.store)
    with lbcore.LiveCluster(source, description="a flaky source", timeout=15) as live:
        assert eligible_names(live.picker(NAMESPACE, SERVICE, "http")) == {"web-0", "web-1", "web-2"}
    assert source.runs == 2
