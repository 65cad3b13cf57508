"""Readiness probes of the embedded store's pods, as a kubelet runs them, against real sockets."""

from __future__ import annotations

import asyncio
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from lbcore.runtime.probes import ReadinessProber, probes_of, ready_condition
from lbcore.runtime.store import Store


def pod(name: str, probe: dict, ip: str = "127.0.0.1") -> dict:
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "labels": {"app": "web"}},
        "spec": {"containers": [{
            "name": "web", "image": "web:1",
            "ports": [{"name": "http", "containerPort": probe.pop("_port", 80)}],
            "readinessProbe": {"periodSeconds": 1, "timeoutSeconds": 1, "failureThreshold": 1,
                               **probe},
        }]},
        "status": {"podIP": ip, "phase": "Running"},
    }


async def until(store: Store, name: str, ready: bool, seconds: float = 15.0) -> bool:
    """Poll the stored Ready condition (bounded: ``seconds`` / 0.05 looks)."""
    for _ in range(int(seconds / 0.05)):
        if ready_condition(store.get("Pod", "default", name)) is ready:
            return True
        await asyncio.sleep(0.05)
    return False


def test_probe_fields_take_kubernetes_defaults_and_named_ports():
    (p,) = probes_of({"spec": {"containers": [{
        "ports": [{"name": "http", "containerPort": 8080}],
        "readinessProbe": {"httpGet": {"path": "/healthz", "port": "http"}},
    }]}})
    assert (p.kind, p.port, p.path, p.period, p.timeout, p.success_threshold, p.failure_threshold,
            p.initial_delay) == ("httpGet", 8080, "/healthz", 10.0, 1.0, 1, 3, 0.0)
    (g,) = probes_of({"spec": {"containers": [{"readinessProbe": {"grpc": {"port": 9090}}}]}})
    assert (g.kind, g.port, g.service) == ("grpc", 9090, "")
    assert probes_of({"spec": {"containers": [{"readinessProbe": {"exec": {"command": ["x"]}}}]}}) == []


def test_a_tcp_probe_makes_the_pod_ready_and_not_ready_as_its_port_opens_and_closes():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    port = listener.getsockname()[1]

    async def scenario() -> None:
        with Store(None) as store:
            prober = ReadinessProber(store)
            task = asyncio.create_task(prober.run())
            try:
                store.create(pod("web-0", {"tcpSocket": {"port": port}}))
                assert await until(store, "web-0", True)
                listener.close()
                assert await until(store, "web-0", False)
            finally:
                task.cancel()

    try:
        asyncio.run(scenario())
    finally:
        listener.close()


class Health(BaseHTTPRequestHandler):
    healthy = True

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.send_response(200 if type(self).healthy and self.path == "/healthz" else 503)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_an_http_probe_follows_the_status_code():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]

    async def scenario() -> None:
        with Store(None) as store:
            task = asyncio.create_task(ReadinessProber(store).run())
            try:
                # a pod starts not ready until its probe passes (as under a kubelet)
                store.create(pod("web-1", {"httpGet": {"path": "/healthz", "port": "http"},
                                           "_port": port}))
                assert await until(store, "web-1", True)
                Health.healthy = False
                assert await until(store, "web-1", False)
                Health.healthy = True
                assert await until(store, "web-1", True)
            finally:
                task.cancel()

    try:
        asyncio.run(scenario())
    finally:
        server.shutdown()
        Health.healthy = True


def test_a_grpc_probe_follows_the_health_service():
    grpc = pytest.importorskip("grpc", reason="grpcio is not installed (lbcore[grpc])")
    from concurrent import futures

    from grpc_health.v1 import health, health_pb2, health_pb2_grpc

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    serving, not_serving = (health_pb2.HealthCheckResponse.SERVING,
                            health_pb2.HealthCheckResponse.NOT_SERVING)

    async def scenario() -> None:
        with Store(None) as store:
            task = asyncio.create_task(ReadinessProber(store).run())
            try:
                servicer.set("shop", not_serving)
                store.create(pod("grpc-0", {"grpc": {"port": port, "service": "shop"}}))
                assert await until(store, "grpc-0", False)
                servicer.set("shop", serving)
                assert await until(store, "grpc-0", True)
                servicer.set("shop", not_serving)
                assert await until(store, "grpc-0", False)
                # the service the probe names is the one asked: "" is the server as a whole
                store.create(pod("grpc-1", {"grpc": {"port": port}}))
                servicer.set("", serving)
                assert await until(store, "grpc-1", True)
            finally:
                task.cancel()

    try:
        asyncio.run(scenario())
    finally:
        server.stop(None)
