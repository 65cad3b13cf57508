"""ClusterState: events into the model, coalesced syncs, frontends that fail and recover."""

from __future__ import annotations

import asyncio
import logging
import threading
import time

import pytest

from lbcore.errors import ValidationError
from lbcore.model.objects import parse_object
from lbcore.model.service_table import ServiceTable
from lbcore.model.snapshot import Snapshot
from lbcore.runtime.interfaces import Frontend, RuntimeContext
from lbcore.runtime.state import ClusterState


class RecordingFrontend(Frontend):
    """Keeps what each sync received; fails while ``failing`` is set."""

    def __init__(self, name: str = "rec"):
        super().__init__({}, RuntimeContext())
        self.name = name
        self.calls: list[tuple[float, Snapshot, frozenset[str]]] = []
        self.failing: str | None = None

    def sync(self, snapshot: Snapshot, changed: frozenset[str]) -> None:
        self.calls.append((time.monotonic(), snapshot, changed))
        if self.failing:
            raise RuntimeError(self.failing)


def service(name: str = "web", ip: str = "127.10.0.5", selector: str = "web", rv: str = "") -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": "default", "resourceVersion": rv},
        "spec": {
            "clusterIP": ip,
            "clusterIPs": [ip],
            "selector": {"app": selector},
            "ports": [{"port": 80, "targetPort": 8080, "protocol": "TCP"}],
        },
    }


def pod(i: int, app: str = "web") -> dict:
    ip = f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}"
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": f"{app}-{i}", "namespace": "default", "labels": {"app": app}},
        "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "i"}]},
        "status": {
            "phase": "Running",
            "podIP": ip,
            "podIPs": [{"ip": ip}],
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    }


def make_state(*frontends: Frontend, **kw) -> ClusterState:
    table = ServiceTable("127.10.0.0/16", (30000, 32767), allocate=False)
    kw.setdefault("min_sync_period", 0.2)
    return ClusterState(table, {f.name: f for f in frontends}, node_name="n1", **kw)


async def _until(predicate, timeout: float = 5.0) -> None:
    """Poll ``predicate`` every 10 ms, a bounded number of times (``timeout`` / 10 ms): a
    count, not a clock, so a loaded machine gets more time, never a false failure."""
    for _ in range(int(timeout / 0.01)):
        if predicate():
            return
        await asyncio.sleep(0.01)
    if not predicate():
        raise AssertionError("condition not reached in time")


async def _run(state: ClusterState, body) -> None:
    task = asyncio.create_task(state.run())
    try:
        await body()
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


def test_a_burst_of_a_thousand_events_makes_one_sync():
    frontend = RecordingFrontend()
    state = make_state(frontend, min_sync_period=0.3)

    async def body():
        state.upsert(service())
        for i in range(1000):
            state.upsert(pod(i))
        await _until(lambda: frontend.calls)
        await asyncio.sleep(0.5)  # longer than the period: a second sync would have happened

    asyncio.run(_run(state, body))
    assert state.events == 1001
    assert state.syncs == 1 and len(frontend.calls) == 1
    _, snapshot, changed = frontend.calls[0]
    assert changed == {"default/web"}
    assert len(snapshot.service_ports["default/web:"].endpoints) == 1000


def test_events_spread_over_a_sync_and_its_period_join_one_sync_at_its_end():
    frontend = RecordingFrontend()
    release = threading.Event()
    held = frontend.sync

    def first_sync_held(snapshot: Snapshot, changed: frozenset[str]) -> None:
        held(snapshot, changed)
        release.wait(10)  # bounded; the events below arrive while the first sync is running

    frontend.sync = first_sync_held  # type: ignore[method-assign]
    state = make_state(frontend, min_sync_period=0.4)

    async def body():
        state.upsert(service())
        await _until(lambda: len(frontend.calls) == 1)
        for i in range(50):  # each from its own loop iteration, however slow the machine
            state.upsert(pod(i))
            await asyncio.sleep(0.002)
        release.set()
        await _until(lambda: len(frontend.calls) == 2)
        await asyncio.sleep(0.5)  # longer than the period: a third sync would have happened
        assert len(frontend.calls) == 2
        assert len(frontend.calls[1][1].service_ports["default/web:"].endpoints) == 50

    asyncio.run(_run(state, body))


def test_frontends_sync_at_the_same_time_each_from_one_thread():
    """A slow frontend (an iptables restore of 10,000 services) does not hold the others back:
    the first frontend's sync waits for the second's, which with the frontends called one after
    the other would never come."""
    slow, fast = RecordingFrontend("slow"), RecordingFrontend("fast")
    fast_synced = threading.Event()
    waited: list[bool] = []
    threads: dict[str, set[str]] = {"slow": set(), "fast": set()}

    def slow_sync(snapshot: Snapshot, changed: frozenset[str]) -> None:
        threads["slow"].add(threading.current_thread().name)
        waited.append(fast_synced.wait(10))  # bounded: False when the frontends ran in turn
        RecordingFrontend.sync(slow, snapshot, changed)

    def fast_sync(snapshot: Snapshot, changed: frozenset[str]) -> None:
        threads["fast"].add(threading.current_thread().name)
        RecordingFrontend.sync(fast, snapshot, changed)
        fast_synced.set()

    slow.sync, fast.sync = slow_sync, fast_sync  # type: ignore[method-assign]
    state = make_state(slow, fast, min_sync_period=0.01)

    async def body():
        state.upsert(service())
        await _until(lambda: len(slow.calls) == 1)
        fast_synced.clear()
        state.upsert(service("api", "127.10.0.6", "api"))
        await _until(lambda: len(slow.calls) == 2, timeout=30)

    asyncio.run(_run(state, body))
    assert waited == [True, True]
    assert [c[2] for c in fast.calls] == [{"default/web"}, {"default/api"}]
    assert state.syncs == 2
    # each frontend keeps its own thread: never two of its calls at once
    assert len(threads["slow"]) == 1 and len(threads["fast"]) == 1 and threads["slow"] != threads["fast"]


def test_failing_frontend_backs_off_exponentially_and_does_not_stop_others(caplog):
    bad, good = RecordingFrontend("bad"), RecordingFrontend("good")
    bad.failing = "iptables-restore: exit status 1"
    done: list[dict] = []
    state = make_state(
        bad,
        good,
        min_sync_period=0.0,
        backoff_initial=0.05,
        backoff_max=0.2,
        on_sync_done=lambda **kw: done.append(kw),
    )

    async def body():
        state.upsert(service())
        await _until(lambda: len(bad.calls) >= 5, timeout=5)
        health = state.health()
        assert health["good"] == {"healthy": True, "synced": True}
        assert health["bad"]["healthy"] is False
        assert health["bad"]["error"] == "RuntimeError: iptables-restore: exit status 1"
        assert health["bad"]["consecutive_failures"] >= 5
        assert 0 <= health["bad"]["retry_in_seconds"] <= 0.2  # capped at backoff_max
        assert not state.healthy
        # the healthy frontend keeps getting changes while the other is failing
        state.upsert(pod(1))
        await _until(
            lambda: any(len(c[1].service_ports["default/web:"].endpoints) == 1 for c in good.calls)
        )
        bad.failing = None
        # healthy once the bad frontend's sync returned; the sync's report comes after the
        # other frontends' syncs of the same round
        await _until(lambda: state.healthy and done and done[-1]["errors"] == {})

    with caplog.at_level(logging.WARNING, logger="lbcore.runtime.state"):
        asyncio.run(_run(state, body))
    # the waits the state scheduled: 0.05, 0.1, 0.2, then capped at 0.2 (what a loaded machine
    # makes of the timers is not asserted: no clock read is compared with another)
    waits = [r.fields["retry_in"] for r in caplog.records
             if r.getMessage() == "frontend sync failed" and r.fields["frontend"] == "bad"]
    assert waits[:4] == [0.05, 0.1, 0.2, 0.2] and all(w == 0.2 for w in waits[4:])
    # the recovering sync is a full one, with the endpoints it missed
    _, snapshot, changed = bad.calls[-1]
    assert changed == {"default/web"}
    assert len(snapshot.service_ports["default/web:"].endpoints) == 1
    assert any(d["errors"].get("bad") for d in done)
    assert done[-1]["errors"] == {}
    metrics = state.metrics.registry
    assert metrics.get_sample_value("lbcore_frontend_sync_failures_total", {"frontend": "bad"}) >= 5
    assert metrics.get_sample_value("lbcore_frontend_healthy", {"frontend": "bad"}) == 1


def endpoint_slice(*ips: str, service_name: str = "web") -> dict:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": f"{service_name}-abc", "namespace": "default",
                     "labels": {"kubernetes.io/service-name": service_name}},
        "addressType": "IPv4",
        "ports": [{"name": "", "port": 8080, "protocol": "TCP"}],
        "endpoints": [{"addresses": [ip], "conditions": {"ready": True}} for ip in ips],
    }


def test_a_change_that_reaches_no_frontend_does_not_hold_back_the_next_sync():
    frontend = RecordingFrontend()
    now = [0.0]
    # a period no test waits for: a sync held back by it would time the test out
    state = make_state(frontend, min_sync_period=600.0, clock=lambda: now[0])

    async def body():
        state.upsert(service())
        state.upsert(endpoint_slice("10.0.0.1"))
        await _until(lambda: len(frontend.calls) == 1)
        now[0] = 1000.0  # past the period
        # the service takes its endpoints from its slice: a pod changes nothing, asks no sync
        state.upsert(pod(2))
        # nor does its v1 Endpoints object, which the slices take precedence over
        state.upsert({"apiVersion": "v1", "kind": "Endpoints",
                      "metadata": {"name": "web", "namespace": "default"},
                      "subsets": [{"addresses": [{"ip": "10.0.0.9"}], "ports": [{"port": 8080}]}]})
        await asyncio.sleep(0.05)
        assert state.syncs == 1
        # a sync asked for with nothing changed runs, and does not start the clock
        state.request_sync()
        await _until(lambda: state.syncs == 2)
        assert frontend.calls[1][2] == frozenset()
        # so the slice that follows the pod is synced at once, not 600 s later
        state.upsert(endpoint_slice("10.0.0.1", "10.0.0.2"))
        await _until(lambda: len(frontend.calls) == 3)
        assert frontend.calls[2][2] == {"default/web"}
        assert len(frontend.calls[2][1].service_ports["default/web:"].endpoints) == 2

    asyncio.run(_run(state, body))


def _bucket_run(steps) -> None:
    """Run ``steps(frontend, now, sync_once)`` on a state whose clock is ``now[0]`` and whose
    ``min_sync_period`` no test waits for (600 s: a sync held back by it does not come before the
    test ends). ``sync_once(ips)`` writes a slice of ``ips`` for the service and waits for its
    sync; ``held_back(ips, count)`` writes one and finds the frontend still at ``count`` syncs
    after a few turns of the loop (a sync that may run has run by then)."""
    frontend = RecordingFrontend()
    now = [0.0]
    state = make_state(frontend, min_sync_period=600.0, clock=lambda: now[0])

    async def sync_once(*ips: str) -> None:
        count = len(frontend.calls)
        state.upsert(endpoint_slice(*ips) if ips else service())
        await _until(lambda: len(frontend.calls) == count + 1)

    async def held_back(ips: tuple[str, ...], count: int) -> None:
        state.upsert(endpoint_slice(*ips))
        for _ in range(10):
            await asyncio.sleep(0.005)
        assert len(frontend.calls) == count

    async def body():
        await sync_once()
        await steps(frontend, now, sync_once, held_back)

    asyncio.run(_run(state, body))


def test_a_change_soon_after_a_sync_is_paid_by_the_second_token_and_a_third_waits():
    """kube-proxy's bounded-frequency runner: two tokens, so no change waits after a quiet
    moment, even one that comes right after the previous sync."""

    async def steps(frontend, now, sync_once, held_back):
        await sync_once("10.0.0.1")  # no time has passed: the second token pays for it
        assert frontend.calls[1][2] == {"default/web"}
        await held_back(("10.0.0.2",), 2)

    _bucket_run(steps)


def test_the_bucket_regains_one_token_per_period_and_holds_two_at_most():
    async def steps(frontend, now, sync_once, held_back):
        await sync_once("10.0.0.1")
        now[0] = 600.0  # one period: one token back
        await sync_once("10.0.0.1", "10.0.0.2")
        assert len(frontend.calls[2][1].service_ports["default/web:"].endpoints) == 2
        await held_back(("10.0.0.3",), 3)

    _bucket_run(steps)

    async def quiet(frontend, now, sync_once, held_back):
        now[0] = 1e6  # a long quiet time fills the bucket to two tokens, not more
        await sync_once("10.0.0.1")
        await sync_once("10.0.0.2")
        await held_back(("10.0.0.3",), 3)

    _bucket_run(quiet)


def test_burst_syncs_must_be_at_least_one():
    assert make_state(RecordingFrontend()).burst_syncs == 2  # kube-proxy's burstSyncs
    with pytest.raises(ValueError, match="burst_syncs: 0 must be at least 1"):
        make_state(RecordingFrontend(), burst_syncs=0)


def test_the_gauges_count_services_ports_and_endpoints_as_they_change():
    frontend = RecordingFrontend()
    state = make_state(frontend, min_sync_period=0.0)
    gauge = state.metrics.registry.get_sample_value

    async def synced(count: int) -> None:
        await _until(lambda: len(frontend.calls) == count)

    async def body():
        state.upsert(service())
        state.upsert(service("db", "127.10.0.6", selector="db"))
        state.upsert(endpoint_slice("10.0.0.1", "10.0.0.2"))
        state.upsert(endpoint_slice("10.0.0.7", service_name="db"))
        await synced(1)
        assert (gauge("lbcore_services"), gauge("lbcore_service_ports"),
                gauge("lbcore_endpoints")) == (2, 2, 3)
        state.upsert(endpoint_slice("10.0.0.1", "10.0.0.2", "10.0.0.3"))
        await synced(2)
        assert gauge("lbcore_endpoints") == 4  # only web changed; db's one endpoint still counts
        state.delete("Service", "default", "web")
        await synced(3)
        assert (gauge("lbcore_services"), gauge("lbcore_service_ports"),
                gauge("lbcore_endpoints")) == (1, 1, 1)

    asyncio.run(_run(state, body))


def test_replace_removes_what_the_new_list_lacks_and_delete_removes_one():
    frontend = RecordingFrontend()
    state = make_state(frontend, min_sync_period=0.0)

    async def body():
        state.upsert(service("a", "127.10.0.1", rv="7"))
        state.upsert(service("b", "127.10.0.2", rv="8"))
        state.replace("Pod", [pod(1), pod(2)])
        await _until(lambda: len(frontend.calls) == 1)
        assert frontend.calls[0][1].services == {"default/a", "default/b"}
        # a relist: "a" comes back at the same resourceVersion, so only "b" changed
        state.replace("Service", [service("a", "127.10.0.1", rv="7")])
        await _until(lambda: len(frontend.calls) == 2)
        assert frontend.calls[1][1].services == {"default/a"}
        assert frontend.calls[1][2] == {"default/b"}
        state.delete("Pod", "default", "web-1")
        await _until(lambda: len(frontend.calls) == 3)
        assert len(frontend.calls[2][1].service_ports["default/a:"].endpoints) == 1
        state.delete("Pod", "default", "never-existed")  # nothing to do: no sync
        await asyncio.sleep(0.1)
        assert len(frontend.calls) == 3

    asyncio.run(_run(state, body))


def test_an_object_lbcores_validation_refuses_still_reaches_the_snapshot():
    # the server admitted it (a newer API server, or one whose rules differ); lbcore's own
    # validation would refuse the capitals of the port name, but ClusterState only parses
    frontend = RecordingFrontend()
    state = make_state(frontend, min_sync_period=0.0)
    admitted = service()
    admitted["spec"]["ports"][0]["name"] = "HTTP"
    with pytest.raises(ValidationError, match="spec.ports"):
        parse_object(admitted)

    async def body():
        state.upsert(admitted)
        await _until(lambda: frontend.calls)

    asyncio.run(_run(state, body))
    assert list(frontend.calls[-1][1].service_ports) == ["default/web:HTTP"]
    assert state.metrics.registry.get_sample_value(
        "lbcore_source_rejected_total", {"kind": "Service"}) is None


def test_an_unreadable_object_is_logged_by_name_skipped_and_counted(caplog):
    frontend = RecordingFrontend()
    state = make_state(frontend, min_sync_period=0.0)
    broken = service("broken")
    del broken["spec"]["ports"][0]["port"]  # no port number: nothing to serve

    async def body():
        state.upsert(broken)
        state.upsert(service("ok", "127.10.0.9"))
        await _until(lambda: frontend.calls)

    with caplog.at_level("WARNING", logger="lbcore.runtime.state"):
        asyncio.run(_run(state, body))
    assert frontend.calls[-1][1].services == {"default/ok"}
    assert "Service default/broken skipped" in caplog.text
    assert (
        state.metrics.registry.get_sample_value("lbcore_source_rejected_total", {"kind": "Service"})
        == 1
    )
    assert state.metrics.registry.get_sample_value("lbcore_endpoints") == 0


def test_a_table_that_would_admit_again_is_refused():
    with pytest.raises(ValueError, match="allocate=False"):
        ClusterState(ServiceTable(), {})


def test_first_sync_of_an_empty_state_still_reaches_every_frontend():
    frontend = RecordingFrontend()
    state = make_state(frontend, min_sync_period=0.0)

    async def body():
        state.request_sync()
        await _until(lambda: frontend.calls)

    asyncio.run(_run(state, body))
    assert state.synced_once.is_set()
    assert frontend.calls[0][1].services == frozenset() and frontend.calls[0][2] == frozenset()


def test_no_sync_runs_before_the_source_has_listed():
    """A restart must not hand a kernel frontend a table still filling: its first sync would
    take away the rules the previous run left."""
    frontend = RecordingFrontend()

    async def main() -> None:
        listed = asyncio.Event()
        state = make_state(frontend, min_sync_period=0.0, listed=listed)

        async def body() -> None:
            state.request_sync()
            state.upsert(service())
            for _ in range(50):  # every chance to sync, were it allowed
                await asyncio.sleep(0)
            assert not frontend.calls
            state.upsert(pod(1))
            listed.set()
            await _until(lambda: frontend.calls)

        await _run(state, body)

    asyncio.run(main())
    assert len(frontend.calls) == 1
    assert len(frontend.calls[0][1].service_ports["default/web:"].endpoints) == 1


def test_slices_suffice_once_every_service_with_endpoints_has_a_slice():
    state = make_state()
    assert state.slices_suffice()  # no service
    state.upsert(service())
    assert not state.slices_suffice()  # its endpoints would come from its pods
    state.upsert(endpoint_slice("10.0.0.1"))
    assert state.slices_suffice()
    external = service("ext", ip="")
    external["spec"] = {"type": "ExternalName", "externalName": "example.org"}
    state.upsert(external)
    assert state.slices_suffice()  # an ExternalName service has no endpoints
    selectorless = service("api", ip="127.10.0.6")
    del selectorless["spec"]["selector"]
    state.upsert(selectorless)
    assert not state.slices_suffice()  # an Endpoints object written by hand would say them
    state.delete("Service", "default", "api")
    state.delete("EndpointSlice", "default", "web-abc")
    assert not state.slices_suffice()


class CanaryFrontend(RecordingFrontend):
    """A frontend whose canary a test removes (``gone``); its next full sync puts it back."""

    def __init__(self) -> None:
        super().__init__("canary")
        self.gone = False
        self.resyncs = 0
        self.full_next = False

    def check(self) -> str | None:
        return "canary chain gone" if self.gone else None

    def resync(self) -> None:
        self.resyncs += 1
        self.full_next = True

    def sync(self, snapshot: Snapshot, changed: frozenset[str]) -> None:
        super().sync(snapshot, changed)
        if self.full_next:
            self.gone = self.full_next = False


def test_a_missing_canary_makes_a_full_sync_at_once_and_shows_until_it_is_back():
    frontend = CanaryFrontend()
    state = make_state(frontend, min_sync_period=0.01, check_period=0.02, resync_period=3600)

    async def body():
        checks = asyncio.create_task(state.run_checks())
        try:
            state.upsert(service())
            await _until(lambda: frontend.calls)
            assert state.rules_missing() == {}
            syncs = len(frontend.calls)
            frontend.gone = True
            await _until(lambda: len(frontend.calls) > syncs and not frontend.gone)
            # the sync that rewrote everything ran; a check after it found the canary back
            await _until(lambda: state.rules_missing() == {})
        finally:
            checks.cancel()

    asyncio.run(_run(state, body))
    assert frontend.resyncs == 1
    sample = state.metrics.registry.get_sample_value
    assert sample("lbcore_frontend_rules_missing_total", {"frontend": "canary"}) == 1
    assert sample("lbcore_frontend_resyncs_total", {"frontend": "canary", "reason": "missing"}) == 1
    assert sample("lbcore_frontend_rules_missing_now", {"frontend": "canary"}) == 0


def test_missing_rules_read_rules_missing_since_a_time_until_back():
    frontend = CanaryFrontend()
    state = make_state(frontend)
    frontend.gone = True

    async def body():
        await state.sync()
        assert not await state._check("canary", frontend)

    asyncio.run(body())
    text = state.rules_missing()["canary"]
    assert text.startswith("rules missing since 20") and text.endswith("Z: canary chain gone")
    assert state.health()["canary"]["rules"] == text


def test_every_resync_period_each_frontend_rewrites_everything():
    frontend = CanaryFrontend()
    state = make_state(frontend, min_sync_period=0.01, check_period=0.02, resync_period=0.05)

    async def body():
        checks = asyncio.create_task(state.run_checks())
        try:
            state.upsert(service())
            await _until(lambda: frontend.calls)
            await _until(lambda: frontend.resyncs >= 2 and not frontend.full_next)
        finally:
            checks.cancel()

    asyncio.run(_run(state, body))
    sample = state.metrics.registry.get_sample_value
    assert sample("lbcore_frontend_resyncs_total", {"frontend": "canary", "reason": "period"}) >= 2
    assert state.rules_missing() == {}


def test_the_sync_that_retries_a_failed_frontend_is_logged_at_info(caplog):
    bad = RecordingFrontend("bad")
    bad.failing = "exit status 1"
    state = make_state(bad, min_sync_period=0.0, backoff_initial=0.05, backoff_max=0.05)

    async def body():
        state.upsert(service())
        await _until(lambda: len(bad.calls) == 1)
        bad.failing = None  # the retry, with no change since, carries the whole state again
        await _until(lambda: state.healthy)

    with caplog.at_level(logging.INFO, logger="lbcore.runtime.state"):
        asyncio.run(_run(state, body))
    done = [r for r in caplog.records if r.getMessage().startswith("sync done")]
    assert len(done) == 2 and all(r.levelno == logging.INFO for r in done)
    assert bad.calls[1][2] == {"default/web"}


def test_a_replace_counts_every_listed_object_as_an_upsert():
    state = make_state(RecordingFrontend())
    state.replace("Pod", [pod(i) for i in range(5)])
    state.replace("Pod", [pod(i) for i in range(3)])  # two deleted, three the same again
    def counted(op: str) -> float | None:
        return state.metrics.registry.get_sample_value(
            "lbcore_source_events_total", {"kind": "Pod", "op": op})

    assert (counted("upsert"), counted("delete")) == (8, 2)
    assert sorted(o.name for o in state.table.list("Pod")) == ["web-0", "web-1", "web-2"]


def test_objects_the_store_parsed_are_taken_as_they_are_and_known_by_their_version():
    from lbcore.runtime.store import Store

    with Store(None, service_cidr="127.10.0.0/16") as store:
        store.create(service("a", "127.10.0.1"))
        store.create(pod(1))
        state = make_state(parse=store.parse)
        services, _ = store.list_parsed("Service")
        state.replace("Service", services)
        state.replace("Pod", store.list_parsed("Pod")[0])
        held = state.table.get("Service", "default", "a")
        assert held is services[0] and held.resource_version == services[0].resource_version
        version = state.table.version
        # a relist at the same versions, as dicts or parsed: nothing changes
        state.replace("Service", store.list("Service")[0])
        state.replace("Service", store.list_parsed("Service")[0])
        assert state.table.version == version
        changed = store.get("Service", "default", "a")
        changed["spec"]["ports"][0]["port"] = 81
        updated = store.update(changed)
        state.upsert(updated)
        assert state.table.version == version + 1
        assert state.table.get("Service", "default", "a").resource_version == \
            updated["metadata"]["resourceVersion"] != held.resource_version
        state.replace("Pod", [])
        assert state.table.get("Pod", "default", "web-1") is None
