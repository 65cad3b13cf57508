"""The kubernetes source against the admin API of a real store, served on 127.0.0.1."""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import pytest
from lbcore_plugins.kubernetes_source import Backoff, KubernetesSource

from lbcore.errors import ConfigError
from lbcore.plugins import get_plugin_manager, registered
from lbcore.runtime.interfaces import RuntimeContext, SourceSink
from lbcore.runtime.store import Store


class DictSink(SourceSink):
    """A sink that keeps what it was told: the state a source must converge to."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.calls: list[str] = []

    def upsert(self, obj: Mapping[str, Any]) -> None:
        meta = obj["metadata"]
        self.objects[(obj["kind"], meta["namespace"], meta["name"])] = dict(obj)
        self.calls.append("upsert")

    def delete(self, kind: str, namespace: str, name: str) -> None:
        self.objects.pop((kind, namespace, name), None)
        self.calls.append("delete")

    def replace(self, kind: str, objects: list[Mapping[str, Any]]) -> None:
        for key in [k for k in self.objects if k[0] == kind]:
            del self.objects[key]
        for obj in objects:
            meta = obj["metadata"]
            self.objects[(kind, meta["namespace"], meta["name"])] = dict(obj)
        self.calls.append("replace")

    def versions(self, kinds: tuple[str, ...]) -> dict[tuple[str, str, str], str]:
        return {k: o["metadata"]["resourceVersion"] for k, o in self.objects.items()
                if k[0] in kinds}


def store_versions(store: Store, kinds: tuple[str, ...]) -> dict[tuple[str, str, str], str]:
    out = {}
    for kind in kinds:
        for obj in store.list(kind)[0]:
            meta = obj["metadata"]
            out[(kind, meta["namespace"], meta["name"])] = meta["resourceVersion"]
    return out


def service(name: str, namespace: str = "default", app: str = "web") -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"selector": {"app": app}, "ports": [{"name": "http", "port": 80}]}}


def pod(name: str, ip: str, app: str = "web") -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "default", "labels": {"app": app}},
            "spec": {"containers": [{"name": "c", "image": "x",
                                     "ports": [{"name": "http", "containerPort": 8080}]}]},
            "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
                       "conditions": [{"type": "Ready", "status": "True"}]}}


def endpoint_slice(name: str, service_name: str, ips: list[str]) -> dict[str, Any]:
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": name, "namespace": "default",
                         "labels": {"kubernetes.io/service-name": service_name}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": [ip], "conditions": {"ready": True}} for ip in ips],
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]}


# the first lists of every kind: each reflector thread imports and builds its API client, slow
# on a loaded machine
FIRST_SYNC = 30.0
FAST = {"backoff_initial": 0.05, "backoff_max": 0.3, "connect_timeout": 1, "read_timeout": 5,
        "watch_timeout": 30}


async def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(0.02)


async def converged(sink: DictSink, store: Store, kinds: tuple[str, ...],
                    timeout: float = 10.0) -> None:
    await wait_until(lambda: sink.versions(kinds) == store_versions(store, kinds), timeout)


def run_source(options: dict[str, Any], scenario: Callable[..., Any]) -> None:
    """Run the source in a fresh event loop while ``scenario(source, sink)`` runs."""

    async def main() -> None:
        source = KubernetesSource(options, RuntimeContext())
        sink = DictSink()
        task = asyncio.create_task(source.run(sink))
        try:
            await scenario(source, sink)
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await asyncio.wait_for(task, 5)

    asyncio.run(main())


def test_endpointslices_mode_lists_then_follows_adds_changes_and_deletes(admin):
    store = admin.store
    store.create(service("web"))
    store.create(endpoint_slice("web-1", "web", ["10.0.0.1"]))
    store.create(pod("ignored", "10.0.0.9"))  # pods are not followed in this mode
    kinds = ("Service", "EndpointSlice")

    async def scenario(source: KubernetesSource, sink: DictSink) -> None:
        await asyncio.wait_for(source.synced.wait(), FIRST_SYNC)
        await converged(sink, store, kinds)
        assert ("Pod", "default", "ignored") not in sink.objects
        store.create(service("api", app="api"))
        slice_ = store.get("EndpointSlice", "default", "web-1")
        slice_["endpoints"].append({"addresses": ["10.0.0.2"], "conditions": {"ready": True}})
        store.update(slice_)
        store.delete("Service", "default", "web")
        await converged(sink, store, kinds)
        assert ("Service", "default", "web") not in sink.objects
        got = sink.objects[("EndpointSlice", "default", "web-1")]
        assert [e["addresses"][0] for e in got["endpoints"]] == ["10.0.0.1", "10.0.0.2"]
        assert {k: source.lists[k] for k in kinds} == {"Service": 1, "EndpointSlice": 1}

    run_source({"server": admin.url, **FAST}, scenario)


def test_pods_mode_follows_services_and_pods_in_one_namespace(admin):
    store = admin.store
    store.create(service("web"))
    store.create(pod("web-a", "10.0.0.1"))
    store.create(service("other", namespace="kube-system"))
    kinds = ("Service", "Pod")

    async def scenario(source: KubernetesSource, sink: DictSink) -> None:
        await asyncio.wait_for(source.synced.wait(), FIRST_SYNC)
        await wait_until(lambda: set(sink.objects) == {
            ("Service", "default", "web"), ("Pod", "default", "web-a")})
        store.create(pod("web-b", "10.0.0.2"))
        store.delete("Pod", "default", "web-a")
        store.create(service("more", namespace="kube-system"))
        await wait_until(lambda: set(sink.objects) == {
            ("Service", "default", "web"), ("Pod", "default", "web-b")})
        assert sink.objects[("Pod", "default", "web-b")]["status"]["podIP"] == "10.0.0.2"

    run_source({"server": admin.url, "mode": "pods", "namespace": "default", **FAST}, scenario)
    assert kinds


def test_converges_after_server_restart_with_changes_made_while_it_was_down(admin):
    store = admin.store
    for name in ("a", "b", "c"):
        store.create(service(name))
    store.create(endpoint_slice("a-1", "a", ["10.0.0.1"]))
    kinds = ("Service", "EndpointSlice")

    async def scenario(source: KubernetesSource, sink: DictSink) -> None:
        await asyncio.wait_for(source.synced.wait(), FIRST_SYNC)
        await converged(sink, store, kinds)
        await wait_until(lambda: all(source.watches[k] >= 1 for k in kinds))
        await asyncio.to_thread(admin.stop)  # in the middle of both watches
        store.delete("Service", "default", "b")
        store.delete("EndpointSlice", "default", "a-1")
        store.create(service("d"))
        svc = store.get("Service", "default", "c")
        svc["metadata"]["labels"] = {"changed": "yes"}
        store.update(svc)
        await asyncio.sleep(0.3)  # the source retries against a closed port meanwhile
        assert ("Service", "default", "b") in sink.objects
        await asyncio.to_thread(admin.start)
        await converged(sink, store, kinds)
        assert sink.objects[("Service", "default", "c")]["metadata"]["labels"] == {"changed": "yes"}
        # the history still held every change: the watch resumed, nothing was listed again
        assert {k: source.lists[k] for k in kinds} == {"Service": 1, "EndpointSlice": 1}

    run_source({"server": admin.url, **FAST}, scenario)


def test_relists_on_410_gone_when_history_was_compacted_while_away(serve_admin):
    with Store(None, history=3) as store:
        server = serve_admin(store)
        for name in ("a", "b", "c"):
            store.create(service(name))
        kinds = ("Service", "EndpointSlice")

        async def scenario(source: KubernetesSource, sink: DictSink) -> None:
            await asyncio.wait_for(source.synced.wait(), FIRST_SYNC)
            await converged(sink, store, kinds)
            await asyncio.to_thread(server.stop)
            seen = source.resource_versions["Service"]
            store.delete("Service", "default", "a")
            for name in ("d", "e", "f", "g"):
                store.create(service(name))
            assert int(seen) < store.oldest_resource_version  # the watch cannot resume
            await asyncio.to_thread(server.start)
            await converged(sink, store, kinds)
            assert ("Service", "default", "a") not in sink.objects
            assert source.lists["Service"] >= 2

        run_source({"server": server.url, **FAST}, scenario)


def test_retries_with_backoff_until_the_server_comes_up(store: Store, serve_admin):
    server = serve_admin(store, start=False)
    store.create(service("web"))

    async def scenario(source: KubernetesSource, sink: DictSink) -> None:
        await asyncio.sleep(0.5)
        assert not source.synced.is_set()
        await asyncio.to_thread(server.start)
        await asyncio.wait_for(source.synced.wait(), FIRST_SYNC)
        await converged(sink, store, ("Service",))

    run_source({"server": server.url, **FAST}, scenario)


def test_a_silent_server_is_noticed_by_the_read_timeout_and_retried(caplog):
    """A peer that accepts and never answers must not hang the source."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    listener.settimeout(0.2)
    accepted: list[socket.socket] = []
    done = threading.Event()

    def accept() -> None:
        while not done.is_set():
            try:
                accepted.append(listener.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{listener.getsockname()[1]}"

    async def scenario(source: KubernetesSource, sink: DictSink) -> None:
        await wait_until(lambda: len(accepted) >= 4, timeout=10)
        assert not source.synced.is_set()

    try:
        with caplog.at_level(logging.WARNING, logger="lbcore"):
            # the service kinds only: discovery's connections would count among the four
            run_source({"server": url, **FAST, "read_timeout": 0.3, "routes": False}, scenario)
        assert any("list Service failed" in r.getMessage() for r in caplog.records)
    finally:
        done.set()
        thread.join(2)
        for conn in accepted:
            conn.close()
        listener.close()


def test_a_watch_ended_by_its_server_timeout_is_resumed_without_listing(admin):
    store = admin.store

    async def scenario(source: KubernetesSource, sink: DictSink) -> None:
        await asyncio.wait_for(source.synced.wait(), FIRST_SYNC)
        await wait_until(lambda: source.watches["Service"] >= 3, timeout=10)
        store.create(service("late"))
        await converged(sink, store, ("Service",))
        assert source.lists["Service"] == 1

    run_source({"server": admin.url, **FAST, "watch_timeout": 1}, scenario)


def test_bearer_token_is_sent_with_every_request(store: Store, serve_admin):
    server = serve_admin(store, token="s3cret")
    store.create(service("web"))

    async def scenario(source: KubernetesSource, sink: DictSink) -> None:
        await asyncio.wait_for(source.synced.wait(), FIRST_SYNC)
        assert ("Service", "default", "web") in sink.objects

    run_source({"server": server.url, "token": "s3cret", **FAST}, scenario)


def test_backoff_doubles_with_jitter_up_to_the_maximum():
    backoff = Backoff(initial=1.0, maximum=8.0)
    delays = [backoff.delay() for _ in range(6)]
    for delay, base in zip(delays, [1, 2, 4, 8, 8, 8], strict=True):
        assert base <= delay <= min(2 * base, 8.0)
    backoff.reset()
    assert 1.0 <= backoff.delay() <= 2.0


def test_options_are_checked_and_named_in_errors():
    with pytest.raises(ConfigError, match="mode: invalid value 'ipvs': must be one of"):
        KubernetesSource({"mode": "ipvs"}, RuntimeContext())
    with pytest.raises(ConfigError, match="watch_timeout: invalid value 0: must be between 1s"):
        KubernetesSource({"watch_timeout": 0}, RuntimeContext())
    with pytest.raises(ConfigError, match="kube_config: unknown option; known: .*kubeconfig"):
        KubernetesSource({"kube_config": "x"}, RuntimeContext())


def test_registered_under_its_name_through_the_entry_point(monkeypatch):
    monkeypatch.setenv("LBCORE_LOAD_PLUGINS", "kubernetes")
    get_plugin_manager.cache_clear()
    try:
        assert registered("lbcore_register_sources")["kubernetes"] is KubernetesSource
    finally:
        get_plugin_manager.cache_clear()


def test_reads_server_and_token_from_a_kubeconfig(store: Store, serve_admin, tmp_path):
    server = serve_admin(store, token="s3cret")
    store.create(service("web"))
    kubeconfig = tmp_path / "config"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\n"
        f"clusters: [{{name: local, cluster: {{server: '{server.url}'}}}}]\n"
        "users: [{name: me, user: {token: s3cret}}]\n"
        "contexts: [{name: here, context: {cluster: local, user: me}}]\n"
        "current-context: here\n"
    )
    source = KubernetesSource({"kubeconfig": str(kubeconfig)}, RuntimeContext())
    configuration = source.api_client().configuration
    assert configuration.host == server.url
    assert configuration.auth_settings()["BearerToken"]["value"] == "Bearer s3cret"

    async def scenario(source: KubernetesSource, sink: DictSink) -> None:
        await asyncio.wait_for(source.synced.wait(), FIRST_SYNC)
        assert ("Service", "default", "web") in sink.objects

    run_source({"kubeconfig": str(kubeconfig), **FAST}, scenario)


def test_a_watch_broken_mid_stream_resumes_after_the_last_event_it_handed_over(
        store: Store, serve_admin):
    server = serve_admin(store, bookmark_interval=60)  # a quiet stream: the read times out

    async def scenario(source: KubernetesSource, sink: DictSink) -> None:
        await asyncio.wait_for(source.synced.wait(), FIRST_SYNC)
        for name in ("a", "b", "c"):
            store.create(service(name))
        await converged(sink, store, ("Service",))
        watches = source.watches["Service"]
        await wait_until(lambda: source.watches["Service"] >= watches + 2, timeout=10)
        assert sink.calls.count("upsert") == 3  # nothing handed over twice
        assert source.lists["Service"] == 1

    run_source({"server": server.url, **FAST, "read_timeout": 0.4}, scenario)


def test_like_kube_proxy_it_leaves_out_services_of_another_proxy_and_headless_slices(admin):
    store = admin.store
    store.create(service("mine"))
    theirs = service("theirs")
    theirs["metadata"]["labels"] = {"service.kubernetes.io/service-proxy-name": "other"}
    store.create(theirs)
    headless = endpoint_slice("h-1", "h", ["10.0.0.3"])
    headless["metadata"]["labels"]["service.kubernetes.io/headless"] = ""
    store.create(headless)
    store.create(endpoint_slice("mine-1", "mine", ["10.0.0.1"]))

    async def scenario(source: KubernetesSource, sink: DictSink) -> None:
        await asyncio.wait_for(source.synced.wait(), FIRST_SYNC)
        await wait_until(lambda: set(sink.objects) == {
            ("Service", "default", "mine"), ("EndpointSlice", "default", "mine-1")})
        mine = store.get("Service", "default", "mine")
        mine["metadata"]["labels"] = {"service.kubernetes.io/service-proxy-name": "other"}
        store.update(mine)  # handed to another proxy: gone for this one
        await wait_until(lambda: ("Service", "default", "mine") not in sink.objects)

    run_source({"server": admin.url, **FAST}, scenario)


def _routing_objects(store: Store) -> None:
    store.create({"apiVersion": "route.openshift.io/v1", "kind": "Route",
                  "metadata": {"name": "web", "namespace": "default"},
                  "spec": {"host": "www.example.com", "to": {"kind": "Service", "name": "web"}}})
    store.create({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
                  "metadata": {"name": "web", "namespace": "default"},
                  "spec": {"ingressClassName": "lbcore", "defaultBackend": {
                      "service": {"name": "web", "port": {"number": 80}}}}})
    store.create({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
                  "metadata": {"name": "tls", "namespace": "default"},
                  "data": {"tls.crt": "", "tls.key": ""}})
    store.create({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "password",
                                                                    "namespace": "default"},
                  "stringData": {"password": "s3cret"}})


def test_routes_ingresses_and_tls_secrets_are_followed_where_the_server_serves_them(admin):
    store = admin.store
    store.create(service("web"))
    _routing_objects(store)

    async def scenario(source: KubernetesSource, sink: DictSink) -> None:
        await asyncio.wait_for(source.synced.wait(), FIRST_SYNC)
        assert source.kinds == ("Service", "EndpointSlice", "Route", "Ingress", "Secret")
        await wait_until(lambda: {k[:3:2] for k in sink.objects} >= {
            ("Route", "web"), ("Ingress", "web"), ("Secret", "tls")})
        assert ("Secret", "default", "password") not in sink.objects  # TLS secrets only
        route = store.get("Route", "default", "web")
        route["spec"]["path"] = "/shop"
        store.update(route)
        await wait_until(lambda: sink.objects[("Route", "default", "web")]["spec"].get("path")
                         == "/shop")
        store.delete("Ingress", "default", "web")
        await wait_until(lambda: ("Ingress", "default", "web") not in sink.objects)

    run_source({"server": admin.url, **FAST}, scenario)


def test_routes_false_follows_no_route_kind(admin):
    _routing_objects(admin.store)

    async def scenario(source: KubernetesSource, sink: DictSink) -> None:
        await asyncio.wait_for(source.synced.wait(), FIRST_SYNC)
        assert source.kinds == ("Service", "EndpointSlice")
        assert not [k for k in sink.objects if k[0] in ("Route", "Ingress", "Secret")]

    run_source({"server": admin.url, "routes": False, **FAST}, scenario)
    with pytest.raises(ConfigError, match="routes: invalid value 'yes': must be one of auto, true, false"):
        KubernetesSource({"routes": "yes"}, RuntimeContext())


def _counting_lists(monkeypatch: pytest.MonkeyPatch, after_first: Callable[[], None] = lambda: None
                    ) -> list[dict[str, Any]]:
    """Record the paging arguments of every list request the source makes (watches are not
    recorded); ``after_first`` runs once, after the first chunk of the first Pod list is
    read."""
    calls: list[dict[str, Any]] = []
    real = KubernetesSource._list_function

    def counted(self: KubernetesSource, api_client: Any, kind: str) -> Callable[..., Any]:
        function = real(self, api_client, kind)

        def call(**kw: Any) -> Any:
            if kw.get("watch"):
                return function(**kw)
            calls.append({"kind": kind, **{k: kw[k] for k in ("limit", "_continue") if k in kw}})
            answer = function(**kw)
            if kind == "Pod" and sum(c["kind"] == "Pod" for c in calls) == 1:
                after_first()
            return answer
        return call

    monkeypatch.setattr(KubernetesSource, "_list_function", counted)
    return calls


def test_lists_are_read_in_chunks_of_list_chunk_size(admin, monkeypatch):
    store = admin.store
    store.create(service("web"))
    for i in range(7):
        store.create(pod(f"web-{i}", f"10.0.0.{i + 1}"))
    calls = _counting_lists(monkeypatch)
    kinds = ("Service", "Pod")

    async def scenario(source: KubernetesSource, sink: DictSink) -> None:
        await asyncio.wait_for(source.synced.wait(), FIRST_SYNC)
        await converged(sink, store, kinds)

    run_source({"server": admin.url, "mode": "pods", "list_chunk_size": 3, **FAST}, scenario)
    pods = [c for c in calls if c["kind"] == "Pod"]
    assert [c["limit"] for c in pods] == [3, 3, 3]
    assert "_continue" not in pods[0] and pods[1]["_continue"] and pods[2]["_continue"]
    assert [c for c in calls if c["kind"] == "Service"] == [{"kind": "Service", "limit": 3}]


def test_a_list_whose_continue_expired_is_read_again_in_one_answer(serve_admin, monkeypatch,
                                                                    caplog):
    # the store keeps 3 changes of history: 5 writes after the first chunk make its continue
    # too old (410 Expired), and the source reads the list again without chunks
    with Store(None, history=3) as store:
        admin = serve_admin(store)
        store.create(service("web"))
        for i in range(4):
            store.create(pod(f"web-{i}", f"10.0.0.{i + 1}"))

        def write() -> None:
            for i in range(4, 9):
                store.create(pod(f"web-{i}", f"10.0.0.{i + 1}"))

        calls = _counting_lists(monkeypatch, after_first=write)
        kinds = ("Service", "Pod")

        async def scenario(source: KubernetesSource, sink: DictSink) -> None:
            await asyncio.wait_for(source.synced.wait(), FIRST_SYNC)
            await converged(sink, store, kinds)
            assert len([k for k in sink.objects if k[0] == "Pod"]) == 9

        with caplog.at_level(logging.INFO, logger="lbcore"):
            run_source({"server": admin.url, "mode": "pods", "list_chunk_size": 2, **FAST},
                       scenario)
        pods = [c for c in calls if c["kind"] == "Pod"]
        assert pods[1].get("_continue") and "limit" not in pods[2]
        assert any("continue expired" in r.getMessage() for r in caplog.records)
