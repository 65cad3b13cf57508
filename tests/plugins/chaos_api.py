"""A small API server on 127.0.0.1 that speaks the list/watch wire protocol of Services and
EndpointSlices and answers with the faults a caller scripts (see :class:`ChaosAPIServer`).

The kubernetes source's fault tests (tests/plugins/test_kubernetes_source_faults.py) and the
control-plane benchmark (benchmarks/e2e/control_plane.py) run it."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections import Counter
from collections.abc import Callable
from typing import Any

from aiohttp import web


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


PATHS = {"/api/v1/services": "Service", "/apis/discovery.k8s.io/v1/endpointslices": "EndpointSlice"}


def service(name: str, port: int, rv: int, ip: str) -> dict[str, Any]:
    """A Service as an API server answers with it: admitted, with its ClusterIP."""
    return {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": "default", "resourceVersion": str(rv),
                     "uid": f"uid-{name}"},
        "spec": {"type": "ClusterIP", "clusterIP": ip, "clusterIPs": [ip],
                 "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack",
                 "sessionAffinity": "None", "selector": {"app": name},
                 "ports": [{"name": "http", "port": port, "protocol": "TCP",
                            "targetPort": 8080}]},
    }


class ChaosAPIServer:
    """Services and EndpointSlices over list and watch, with the faults a test scripts.

    ``mode`` says how a watch is answered: ``normal`` (the changes after its resourceVersion,
    then each new one, a BOOKMARK at ``timeoutSeconds``; 504 Too large resource version when
    the version is beyond the server's; an ERROR event with 410 when it is older than what
    :meth:`compact` kept), ``gone`` (an ERROR event with 410, at once), ``silent`` (200, then
    not a byte, the connection held open). ``lists_fail`` answers every list with 503,
    ``list_delay`` makes each list wait that many seconds, and ``down`` drops every connection
    (open watches too), as an API server that is unreachable.
    """

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.mode = "normal"
        self.lists_fail = False
        self.list_delay = 0.0
        self.down = False
        self.compacted = 0  # watches from before this resourceVersion are answered 410
        self.silenced = 0  # watches opened before the last silence_open_watches() go silent
        self._opened = 0
        self.revision = 0
        self.objects: dict[str, dict[str, dict[str, Any]]] = {k: {} for k in PATHS.values()}
        self.history: list[tuple[int, str, dict[str, Any]]] = []  # (rv, type, object)
        self.lists: Counter[str] = Counter()
        self.watches: Counter[str] = Counter()
        self._changed: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    # -- scripting (from the test's thread or loop) -------------------------------------------

    def call(self, function: Callable[..., Any], *args: Any) -> None:
        """Run ``function`` on the server's loop and wake its watches."""
        assert self._loop is not None
        done = threading.Event()

        def run() -> None:
            function(*args)
            assert self._changed is not None
            self._changed.set()
            self._changed = asyncio.Event()
            done.set()

        self._loop.call_soon_threadsafe(run)
        assert done.wait(5)

    def put_service(self, name: str, port: int, ip: str) -> None:
        def put() -> None:
            self.revision += 1
            obj = service(name, port, self.revision, ip)
            typ = "MODIFIED" if name in self.objects["Service"] else "ADDED"
            self.objects["Service"][name] = obj
            self.history.append((self.revision, typ, obj))
        self.call(put)

    def delete_service(self, name: str) -> None:
        def delete() -> None:
            self.revision += 1
            obj = dict(self.objects["Service"].pop(name))
            obj["metadata"] = {**obj["metadata"], "resourceVersion": str(self.revision)}
            self.history.append((self.revision, "DELETED", obj))
        self.call(delete)

    def set_down(self, down: bool) -> None:
        """Drop every connection from now on (and the open watches), or serve again."""
        def switch() -> None:
            self.down = down
        self.call(switch)

    def silence_open_watches(self) -> None:
        """The watches open now send no further byte, their connections held open; later
        watches are served as ``mode`` says."""
        def silence() -> None:
            self.silenced = self._opened
        self.call(silence)

    def compact(self) -> None:
        """As etcd's compaction: no history before the current revision is kept."""
        def compact() -> None:
            self.compacted = self.revision
            self.history = []
        self.call(compact)

    def restore(self, services: list[dict[str, Any]], revision: int) -> None:
        """As an etcd restore: these objects, this (lower) revision, no history; open watches
        end, as they do when the API server restarts."""
        def put() -> None:
            self.objects["Service"] = {s["metadata"]["name"]: s for s in services}
            self.revision = revision
            self.history = []
        self.call(put)

    # -- serving --------------------------------------------------------------------------------

    async def list_or_watch(self, request: web.Request) -> web.StreamResponse:
        kind = PATHS[request.path]
        if self.down:
            assert request.transport is not None
            request.transport.abort()
            return web.Response()
        if request.query.get("watch") in ("true", "1", "True"):
            self.watches[kind] += 1
            return await self._watch(request, kind)
        self.lists[kind] += 1
        if self.list_delay:
            await _sleep_until_stopped(self._stopped, self.list_delay)
        if self.lists_fail:
            return web.json_response(_status(503, "ServiceUnavailable", "etcd is down"),
                                     status=503)
        return web.json_response({
            "kind": f"{kind}List", "apiVersion": "v1",
            "metadata": {"resourceVersion": str(self.revision)},
            "items": list(self.objects[kind].values()),
        })

    async def _watch(self, request: web.Request, kind: str) -> web.StreamResponse:
        since = int(request.query.get("resourceVersion") or 0)
        if self.mode == "normal" and since > self.revision:
            status = _status(504, "Timeout",
                             f"Timeout: Too large resource version: {since}, "
                             f"current: {self.revision}")
            return web.json_response(status, status=504)
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        if self.mode == "gone" or (self.mode == "normal" and since < self.compacted):
            await _send(response, {"type": "ERROR", "object": _status(
                410, "Expired", f"too old resource version: {since} ({self.revision})")})
            return response
        timeout = min(float(request.query.get("timeoutSeconds") or 30), 30)
        if self.mode == "silent":
            await _sleep_until_stopped(self._stopped, timeout * 100)
            return response
        self._opened += 1
        number = self._opened
        try:
            async with asyncio.timeout(timeout):
                while True:
                    if number <= self.silenced:
                        break
                    changed = self._changed
                    assert changed is not None
                    for rv, typ, obj in list(self.history):
                        if rv > since and obj["kind"] == kind:
                            await _send(response, {"type": typ, "object": obj})
                            since = rv
                    await changed.wait()
                    if self.revision < since:  # restored: the stream ends, as on a restart
                        return response
                    if self.down:  # unreachable: the connection breaks
                        assert request.transport is not None
                        request.transport.abort()
                        return response
        except TimeoutError:
            await _send(response, {"type": "BOOKMARK", "object": {
                "kind": kind, "apiVersion": "v1",
                "metadata": {"resourceVersion": str(max(since, self.revision))}}})
        if number <= self.silenced:  # silent from here on, outside the server's timeout
            await _sleep_until_stopped(self._stopped, timeout * 100)
        return response

    def start(self) -> None:
        ready = threading.Event()

        def serve() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            self._changed = asyncio.Event()
            app = web.Application()
            for path in PATHS:
                app.router.add_get(path, self.list_or_watch)
            runner = web.AppRunner(app, shutdown_timeout=0.5)
            loop.run_until_complete(runner.setup())
            loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", self.port).start())
            ready.set()
            loop.run_forever()
            loop.run_until_complete(runner.cleanup())
            loop.close()

        self._thread = threading.Thread(target=serve, name="chaos-api", daemon=True)
        self._thread.start()
        assert ready.wait(10)

    def stop(self) -> None:
        self._stopped.set()
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)


def _status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code}


async def _send(response: web.StreamResponse, event: dict[str, Any]) -> None:
    await response.write(json.dumps(event).encode() + b"\n")


async def _sleep_until_stopped(stopped: threading.Event, at_most: float) -> None:
    for _ in range(int(at_most * 10)):
        if stopped.is_set():
            return
        await asyncio.sleep(0.1)
