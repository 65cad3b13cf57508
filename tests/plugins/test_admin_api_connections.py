"""The admin API's connections under hostile clients: half a request header, a flood of them at
the open-files limit, and watches whose first list is large."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import resource
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

from aiohttp import web

from lbcore.runtime.admin_server import AdminServer, raise_open_files_limit, reserve_for

HALF_HEADER = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "


class Served:
    """An :class:`AdminServer` of a one-route app on 127.0.0.1, in a thread of its own."""

    def __init__(self, idle_timeout: float):
        self.loop = asyncio.new_event_loop()
        app = web.Application()
        async def healthz(request: web.Request) -> web.Response:
            return web.json_response({"status": "ok"})

        app.router.add_get("/healthz", healthz)
        self.server = AdminServer(app, idle_timeout=idle_timeout)
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.address = asyncio.run_coroutine_threadsafe(
            self.server.start("127.0.0.1", 0), self.loop).result(10)

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


def closed_by_server(sock: socket.socket) -> bool:
    """Whether the server closes ``sock`` before its timeout (nothing is ever answered)."""
    try:
        return sock.recv(4096) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def test_half_a_request_header_is_disconnected_after_the_idle_timeout():
    served = Served(idle_timeout=1.0)
    try:
        with socket.create_connection(served.address, timeout=20) as half:
            half.sendall(HALF_HEADER)
            assert closed_by_server(half)
        # a client that trickles its header a byte at a time does not push the bound back
        with socket.create_connection(served.address, timeout=20) as trickle:
            trickle.settimeout(0.3)
            closed = False
            for byte in HALF_HEADER * 100:  # up to 2,000 bytes, 0.3 s apart at the most
                try:
                    trickle.sendall(bytes([byte]))
                except (BrokenPipeError, ConnectionResetError):
                    closed = True
                    break
                try:
                    if trickle.recv(4096) == b"":
                        closed = True
                        break
                except TimeoutError:
                    continue
                except ConnectionResetError:
                    closed = True
                    break
            assert closed
        # a whole request is answered, and the idle connection after it is closed as well
        with socket.create_connection(served.address, timeout=20) as whole:
            whole.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            answer = b""
            while b'"ok"' not in answer:
                chunk = whole.recv(4096)
                assert chunk
                answer += chunk
            assert answer.startswith(b"HTTP/1.1 200")
            assert closed_by_server(whole)
    finally:
        served.close()


def test_the_daemon_raises_its_open_files_limit_and_keeps_a_reserve():
    assert raise_open_files_limit() == resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    assert reserve_for(1024) == 64 and reserve_for(100) == 32


def _limit_open_files() -> None:  # in the daemon's process, before it runs
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 1024))


def test_1100_half_headers_at_1024_open_files_leave_healthz_and_the_cli_answering(tmp_path):
    """``lbcore run`` under ``ulimit -n 1024``; 1,100 connections that each send half a
    request header and stop. The daemon keeps a reserve of descriptors by closing the oldest
    connections that are not in a request, so /healthz and the CLI are answered while they are
    all held open by their clients."""
    data_dir = tmp_path / "data"
    env = {k: v for k, v in os.environ.items() if k != "LBCORE_SERVER"}
    env |= {"LBCORE_LOAD_PLUGINS": "local", "LBCORE_DATA_DIR": str(data_dir)}
    with open(tmp_path / "daemon.log", "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "lbcore", "run", "--data-dir", str(data_dir),
             "--admin-address", "127.0.0.1:0"],
            env=env, stdout=log, stderr=subprocess.STDOUT, preexec_fn=_limit_open_files,
        )  # fmt: skip
    attackers: list[socket.socket] = []
    try:
        address = data_dir / "admin-address"
        for _ in range(600):
            if address.exists() or proc.poll() is not None:
                break
            time.sleep(0.05)
        assert address.exists(), (tmp_path / "daemon.log").read_text()
        url = address.read_text().strip()
        host, port = url.rsplit("/", 1)[1].rsplit(":", 1)
        connected = 0
        for _ in range(1100):
            sock = socket.socket()
            sock.settimeout(5)
            try:
                sock.connect((host, int(port)))
                sock.sendall(HALF_HEADER)
                connected += 1
            except OSError:
                pass
            attackers.append(sock)
        # the daemon kept accepting: every connection was taken in (none waits in the backlog)
        assert connected == 1100
        for _ in range(3):
            with urllib.request.urlopen(url + "/healthz", timeout=20) as response:
                assert response.status == 200
        out = subprocess.run(["lbcore", "get", "services"], env=env, capture_output=True,
                             text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        conn = http.client.HTTPConnection(host, int(port), timeout=20)
        conn.request("POST", "/api/v1/namespaces/default/services", headers={
            "Content-Type": "application/json"}, body=json.dumps({
                "kind": "Service", "metadata": {"name": "web"},
                "spec": {"ports": [{"port": 80}]}}))
        assert conn.getresponse().status == 201
        conn.close()
        assert proc.poll() is None
        open_fds = len(os.listdir(f"/proc/{proc.pid}/fd"))
        assert open_fds <= 1024 - reserve_for(1024) + 8, open_fds
    finally:
        for sock in attackers:
            sock.close()
        proc.terminate()
        proc.wait(30)


def test_a_watch_without_a_resource_version_starts_with_every_object_then_follows(admin):
    """The first events of a watch from no resourceVersion are the current objects (built on
    a worker thread, written in chunks); then it follows every change from that point, with
    label and field selectors applied to both."""
    for n in range(1200):
        admin.store.create({"kind": "Pod", "metadata": {
            "name": f"p{n:04}", "namespace": "default", "labels": {"app": f"a{n % 3}"}},
            "spec": {"containers": [{"name": "c", "image": "x" * 300}]}})
    base = admin.url + "/api/v1/namespaces/default/pods?watch=true&timeoutSeconds=3"
    for query, selector, name in (
        ("", None, None),
        ("&labelSelector=app%3Da1", "app=a1", None),
        ("&fieldSelector=metadata.name%3Dp0007", None, "p0007"),
        ("&resourceVersion=0&labelSelector=app%3Da2", "app=a2", None),
    ):
        expected = [o["metadata"]["name"] for o in admin.store.list("Pod", "default", selector)[0]
                    if name is None or o["metadata"]["name"] == name]
        assert len(expected) >= 1 if name else len(expected) >= 400
        with urllib.request.urlopen(base + query, timeout=30) as response:
            names = []
            for _ in range(len(expected)):
                event = json.loads(response.readline())
                assert event["type"] == "ADDED"
                names.append(event["object"]["metadata"]["name"])
            assert names == expected
            # a change after the list arrives as the next event
            admin.store.create({"kind": "Pod", "metadata": {
                "name": f"later{len(expected)}", "namespace": "default",
                "labels": {"app": "a1" if "a1" in query else "a2"}},
                "spec": {"containers": [{"name": "c", "image": "x"}]}})
            rest = [json.loads(line) for line in response.read().splitlines() if line]
        if "fieldSelector" in query:
            assert rest == []
        else:
            assert [e["object"]["metadata"]["name"] for e in rest] == [f"later{len(expected)}"]


def test_the_reserve_is_what_the_soft_limit_leaves(tmp_path: Path):
    served = Served(idle_timeout=30.0)
    try:
        limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        assert served.server.reserve == reserve_for(limit)
    finally:
        served.close()
