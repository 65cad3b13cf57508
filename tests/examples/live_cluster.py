"""Helpers for the embedding examples' tests: a daemon in this process and real loopback backends.

The daemon (no frontends, admin API on 127.0.0.1 at a free port, its own data directory) runs
in a thread with its own event loop, so a test never meets a daemon the user runs. Backends are
HTTP/1.1 servers on 127.0.0.1 at free ports that answer every request with their pod's name;
pods carry their backend's port as the named container port ``http``, which the service's
``targetPort: http`` resolves per pod.
"""

from __future__ import annotations

import asyncio
import collections
import http.client
import importlib.util
import socket
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType
from typing import Any

from lbcore.runtime.config import config_from_mapping
from lbcore.runtime.daemon import Daemon

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
NAMESPACE = "default"
SERVICE = "web"


def load_example(name: str) -> ModuleType:
    """Import ``examples/<name>.py`` as a module (the examples are scripts, not a package)."""
    path = EXAMPLES / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"lbcore_example_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as real backends
    # headers and body in one segment: no Nagle and delayed-ACK stall on kept-alive connections
    wbufsize = 65536
    disable_nagle_algorithm = True

    def do_GET(self) -> None:  # noqa: N802 - the http.server name
        backend: Backend = self.server.backend  # type: ignore[attr-defined]
        backend.count(self.headers)
        body = backend.name.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class Backend:
    """One pod's server: HTTP/1.1 on 127.0.0.1 at a free port, answering its name."""

    def __init__(self, name: str):
        self.name = name
        self.hits = 0
        self.forwarded_for: list[str] = []
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.server.daemon_threads = True
        self.server.backend = self  # type: ignore[attr-defined]
        self.port = int(self.server.server_address[1])
        self._thread = threading.Thread(target=self.server.serve_forever, args=(0.05,),
                                        name=f"backend-{name}", daemon=True)
        self._thread.start()
        self.running = True

    def count(self, headers: Any) -> None:
        with self._lock:
            self.hits += 1
            xff = headers.get("X-Forwarded-For")
            if xff:
                self.forwarded_for.append(xff)

    def stop(self) -> None:
        """Stop accepting (open keep-alive connections finish their requests, as a terminating
        pod drains)."""
        if self.running:
            self.running = False
            self.server.shutdown()
            self.server.server_close()


def pod(name: str, port: int, ready: bool = True) -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": NAMESPACE, "labels": {"app": SERVICE}},
        "spec": {"nodeName": "localhost", "containers": [
            {"name": "web", "image": "web:1", "ports": [{"name": "http", "containerPort": port}]}]},
        "status": {"phase": "Running", "podIP": "127.0.0.1", "podIPs": [{"ip": "127.0.0.1"}],
                   "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]},
    }


def service(affinity: str = "None", port_name: str = "http") -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": SERVICE, "namespace": NAMESPACE},
        "spec": {"selector": {"app": SERVICE}, "sessionAffinity": affinity,
                 "ports": [{"name": port_name, "port": 80, "targetPort": "http"}]},
    }


class Cluster:
    """A daemon in this process (its store and admin URL) with backends for the pods it holds."""

    def __init__(self, tmp: Path):
        config = config_from_mapping({
            "admin_address": "127.0.0.1:0", "data_dir": str(tmp / "data"), "frontends": [],
            "min_sync_period": "10ms", "log_level": "warning",
        })
        self.daemon = Daemon(config)
        self.backends: dict[str, Backend] = {}
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="daemon", daemon=True)
        self._thread.start()
        self.run(self.daemon.start())
        assert self.daemon.admin_url is not None
        self.url: str = self.daemon.admin_url
        self.store = self.daemon.store

    def run(self, coro: Any, timeout: float = 20.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def add_pod(self, name: str, ready: bool = True) -> Backend:
        backend = Backend(name)
        self.backends[name] = backend
        self.store.apply(pod(name, backend.port, ready))
        return backend

    def set_ready(self, name: str, ready: bool) -> None:
        # a pod's status is written through its status subresource, as a kubelet writes it
        self.store.update(pod(name, self.backends[name].port, ready), subresource="status")

    def delete_pod(self, name: str) -> None:
        """The pod goes from the store, then its server stops at once (a killed pod)."""
        self.store.delete("Pod", NAMESPACE, name)
        self.backends[name].stop()

    def close(self) -> None:
        try:
            self.run(self.daemon.stop())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            for backend in self.backends.values():
                backend.stop()




def wait_until(condition: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    """Poll ``condition`` every 10 ms, at most ``timeout`` seconds (a bounded count of polls)."""
    for _ in range(int(timeout / 0.01)):
        value = condition()
        if value:
            return value
        time.sleep(0.01)
    raise AssertionError(f"{what}: not met within {timeout} s")


def eligible_names(picker: Any) -> set[str]:
    """The pods a picker sends new connections to (its endpoints' target ``ns/name``)."""
    return {str(ep.target).rsplit("/", 1)[-1] for ep in picker.eligible}


def get(host: str, port: int, path: str = "/", headers: dict[str, str] | None = None) -> str:
    """One GET on a new connection (``Connection: close``): the answering pod's name."""
    conn = http.client.HTTPConnection(host, port, timeout=10)
    try:
        conn.request("GET", path, headers={"Connection": "close", **(headers or {})})
        response = conn.getresponse()
        body = response.read().decode()
        if response.status != 200:
            raise OSError(f"HTTP {response.status}: {body[:200]}")
        return body
    finally:
        conn.close()


class Traffic:
    """Clients in threads, each sending requests with ``send()`` until stopped (at most
    ``limit`` each); answers counted by pod, failures kept."""

    def __init__(self, send: Callable[[int], str], threads: int = 4, limit: int = 100_000):
        self.send = send
        self.answers: collections.Counter[str] = collections.Counter()
        self.failures: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._client, args=(n, limit), daemon=True)
                         for n in range(threads)]

    @property
    def total(self) -> int:
        with self._lock:
            return sum(self.answers.values()) + len(self.failures)

    def _client(self, n: int, limit: int) -> None:
        for i in range(limit):
            if self._stop.is_set():
                return
            try:
                answer = self.send(n * limit + i)
            except Exception as exc:
                with self._lock:
                    self.failures.append(f"{type(exc).__name__}: {exc}")
            else:
                with self._lock:
                    self.answers[answer] += 1

    def __enter__(self) -> Traffic:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(30)

    def flowing(self, requests: int = 20, what: str = "traffic") -> None:
        """Wait until ``requests`` more requests were answered."""
        start = self.total
        wait_until(lambda: self.total >= start + requests, what=what)


def move_pods_during_traffic(cluster: Cluster, picker: Any, traffic: Traffic) -> None:
    """Under ``traffic``: web-1 stops being ready, web-2 is deleted (its server stops once the
    picker no longer sends it anything new, as a terminating pod drains), web-3 is added. Each
    step is waited for on ``picker``, with requests flowing between steps."""
    traffic.flowing(what="before")
    cluster.set_ready("web-1", False)
    wait_until(lambda: "web-1" not in eligible_names(picker), what="web-1 not ready")
    traffic.flowing(what="after not ready")
    cluster.store.delete("Pod", NAMESPACE, "web-2")
    wait_until(lambda: "web-2" not in eligible_names(picker), what="web-2 deleted")
    traffic.flowing(what="after delete")
    cluster.backends["web-2"].stop()
    cluster.add_pod("web-3")
    wait_until(lambda: eligible_names(picker) == {"web-0", "web-3"}, what="web-3 added")
    wait_until(lambda: traffic.answers["web-3"] > 0, what="web-3 answers")


def assert_followed(cluster: Cluster, send: Callable[[int], str], traffic: Traffic,
                    requests: int = 30) -> None:
    """No request failed, and new requests go to the pods that take them now, only."""
    assert traffic.failures == [], traffic.failures[:5]
    answers = collections.Counter(send(i) for i in range(requests))
    assert set(answers) == {"web-0", "web-3"}, answers


def refusing_pod(cluster: Cluster, name: str = "web-9") -> None:
    """A ready pod whose port nothing listens on (a crashed server): connections are refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    cluster.store.apply(pod(name, port))


class LoopThread:
    """An event loop (asyncio's or uvloop's) running in a thread of its own, for a server."""

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None):
        self.loop = loop or asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="example", daemon=True)

    def run(self, coro: Any, timeout: float = 20.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def __enter__(self) -> LoopThread:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        async def cancel_all() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        self.run(cancel_all())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()
