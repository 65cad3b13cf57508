"""``lbcore demo``: a working load balancer on loopback, end to end, in a few seconds.

It runs the daemon in this process on a temporary data directory, starts three backend pods
(HTTP servers on 127.0.0.11-13:8080 that answer with their own name), creates the seed's
``my-service`` and its pods through the admin API, exactly as ``lbcore create -f`` does, sends
a few hundred requests to the service's ClusterIP through the socket frontend, prints how they
were spread and ``lbcore describe service my-service``, and stops everything. No cluster and no
root are needed.

When the socket frontend is not installed or the service has no ClusterIP, the requests go
straight to the backends the compiled round-robin balancer picks, and the demo says so.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import random
import socket
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

import yaml

from lbcore.cli.client import Client, HttpTransport, resource_for
from lbcore.errors import LbcoreError
from lbcore.runtime.config import config_from_mapping
from lbcore.runtime.daemon import Daemon, load_plugins
from lbcore.runtime.logs import setup_logging

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
SERVICE = "my-service"
NAMESPACE = "default"
CONCURRENCY = 16
READY_TIMEOUT = 5.0
REQUEST_TIMEOUT = 2.0

# The seed manifests, embedded so that the demo works from any directory and any install.
SERVICE_MANIFEST = """\
apiVersion: v1
kind: Service
metadata:
  name: my-service
spec:
  selector:
    name: my-app
  ports:
  - port: 8080
    protocol: TCP
    targetPort: 8080
"""


def _pod_manifest(index: int) -> dict[str, Any]:
    ip = f"127.0.0.{10 + index}"
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": f"my-app-{index}", "labels": {"name": "my-app"}},
        "spec": {
            "nodeName": "localhost",
            "containers": [
                {
                    "name": "web",
                    "image": "my-app:1.0",
                    "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}],
                }
            ],
        },
        "status": {
            "phase": "Running",
            "podIP": ip,
            "podIPs": [{"ip": ip}],
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    }


def manifests() -> list[dict[str, Any]]:
    """The service and its three pods: examples/my-service.yaml and examples/my-app-pods.yaml
    when they are here (a source checkout), else the same objects embedded."""
    files = [EXAMPLES / "my-service.yaml", EXAMPLES / "my-app-pods.yaml"]
    if all(f.exists() for f in files):
        return [d for f in files for d in yaml.safe_load_all(f.read_text()) if d]
    return [yaml.safe_load(SERVICE_MANIFEST), *(_pod_manifest(i) for i in (1, 2, 3))]


class Backend:
    """One pod: an HTTP server on ``ip:port`` that answers every request with ``name``."""

    def __init__(self, name: str, ip: str, port: int):
        self.name, self.ip, self.port = name, ip, port
        self.served = 0
        self._server: asyncio.base_events.Server | None = None

    async def start(self) -> None:
        try:
            self._server = await asyncio.start_server(self._handle, self.ip, self.port)
        except OSError as exc:
            raise LbcoreError(
                f"demo: cannot listen on {self.ip}:{self.port} for pod {self.name}: "
                f"{exc.strerror or exc}"
            ) from None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            body = self.name.encode()
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
            )
            await writer.drain()
            self.served += 1
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


async def http_get(ip: str, port: int, path: str = "/") -> str:
    """One request on a new connection (so that each one is balanced); the response body."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection(ip, port), REQUEST_TIMEOUT)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {ip}\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        response = await asyncio.wait_for(reader.read(), REQUEST_TIMEOUT)
    finally:
        writer.close()
    head, _, body = response.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise ConnectionError(f"unexpected answer from {ip}:{port}: {head[:40]!r}")
    return body.decode()


async def _send(count: int, target: Callable[[int], tuple[str, int]]) -> tuple[Counter[str], int]:
    answers: Counter[str] = Counter()
    failures = 0
    queue = iter(range(count))

    async def worker() -> None:
        nonlocal failures
        for i in queue:
            ip, port = target(i)
            try:
                answers[await http_get(ip, port)] += 1
            except (OSError, TimeoutError, ConnectionError):
                failures += 1

    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return answers, failures


def free_service_cidr(port: int, attempts: int = 50) -> str:
    """A /28 of loopback addresses where nothing listens on ``port``, for the demo's ClusterIPs,
    so it never shares an address with a daemon (or anything else) already running here."""
    rng = random.SystemRandom()
    for _ in range(attempts):
        base = ipaddress.ip_address(f"127.{rng.randrange(200, 255)}.{rng.randrange(256)}.0")
        net = ipaddress.ip_network(f"{base + 16 * rng.randrange(16)}/28")
        if all(_free(str(ip), port) for ip in net):
            return str(net)
    raise LbcoreError(f"demo: found no loopback /28 without a listener on port {port}")


def node_address_of(cidr: str) -> str:
    """The last address of a /28 from :func:`free_service_cidr`: where a daemon started beside
    another listens for NodePorts (ClusterIPs are allocated from the first ones)."""
    return str(ipaddress.ip_network(cidr)[-1])


def _free(ip: str, port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((ip, port))
        except OSError:
            return False
    return True


def _core_target(endpoints: list[str]) -> Callable[[int], tuple[str, int]]:
    """Direct connections to the backend the compiled core picks for each request (round
    robin, as the socket frontend's default)."""
    from lbcore.core import balancers
    balancer = balancers.create("round_robin", endpoints)

    def target(i: int) -> tuple[str, int]:
        ip, port = endpoints[int(balancer.pick(f"127.0.0.1:{40000 + i}"))].rsplit(":", 1)
        return ip, int(port)

    return target


async def run_demo(
    requests: int = 300, out: TextIO = sys.stdout, via_socket: bool | None = None
) -> dict[str, Any]:
    """Run the demo; returns what it measured (for tests): answers, failures, path, describe.

    :param via_socket: send the requests through the socket frontend (default: when installed).
    """
    objects = manifests()
    pods = [o for o in objects if o["kind"] == "Pod"]
    port = int(objects[0]["spec"]["ports"][0].get("targetPort", 8080))
    backends = [Backend(p["metadata"]["name"], p["status"]["podIP"], port) for p in pods]
    _, frontends = load_plugins()
    use_socket = "socket" in frontends if via_socket is None else via_socket
    started = time.monotonic()
    cidr = free_service_cidr(port)
    with tempfile.TemporaryDirectory(prefix="lbcore-demo-") as data_dir:
        config = config_from_mapping(
            {
                "admin_address": "127.0.0.1:0",
                "data_dir": data_dir,
                "service_cidr": cidr,
                "node_addresses": [node_address_of(cidr)],
                "frontends": ["socket"] if use_socket else [],
                "min_sync_period": "20ms",
                "node_name": "localhost",
            }
        )
        daemon = Daemon(config)
        for backend in backends:
            await backend.start()
        try:
            await daemon.start()
            assert daemon.state is not None and daemon.admin_url is not None
            print(f"lbcore demo: daemon on {daemon.admin_url}, data in {data_dir}", file=out)
            client = Client(HttpTransport(daemon.admin_url))
            loop = asyncio.get_running_loop()
            for obj in objects:
                await loop.run_in_executor(None, client.create, obj, NAMESPACE)
                kind = obj["kind"].lower()
                print(f"  {kind}/{obj['metadata']['name']} created", file=out)
            stored = await loop.run_in_executor(
                None, client.get, resource_for("svc"), NAMESPACE, SERVICE
            )
            cluster_ip = stored["spec"].get("clusterIP")
            state = daemon.state
            key = f"{NAMESPACE}/{SERVICE}:"

            socket_frontend = daemon.frontends.get("socket") if use_socket else None

            def endpoints_ready() -> bool:
                sp = state.snapshot.service_ports.get(key)
                if not (sp and len(sp.endpoints) == len(backends)):
                    return False
                # and the socket frontend has applied them: it listens on a port only while
                # the port has endpoints
                listening = getattr(socket_frontend, "listening", None)
                return listening is None or (cluster_ip, port, "TCP") in listening

            deadline = time.monotonic() + READY_TIMEOUT
            while not endpoints_ready() and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            health = state.health().get("socket", {})
            if use_socket and cluster_ip and endpoints_ready() and health.get("healthy"):
                path = f"{cluster_ip}:{port} through the socket frontend"
                answers, failures = await _send(requests, lambda i: (cluster_ip, port))
            else:
                why = "no socket frontend" if not use_socket else "the service has no ClusterIP"
                path = f"the backends lbcore's balancer picks ({why})"
                endpoints = [f"{b.ip}:{b.port}" for b in backends]
                answers, failures = await _send(requests, _core_target(endpoints))
            print(f"\n{requests} requests to {SERVICE} via {path}:", file=out)
            for backend in backends:
                n = answers.get(backend.name, 0)
                bar = "#" * round(40 * n / max(1, requests))
                print(f"  {backend.name}  {backend.ip}:{port}  {n:4d}  {bar}", file=out)
            if failures:
                print(f"  failed: {failures}", file=out)
            describe = state.table.describe_service(NAMESPACE, SERVICE).rstrip("\n")
            print(f"\n$ lbcore describe service {SERVICE}\n{describe}", file=out)
        finally:
            await daemon.stop()
            for backend in backends:
                await backend.stop()
    elapsed = time.monotonic() - started
    print(f"\ndone in {elapsed:.1f}s; everything stopped.", file=out)
    return {
        "answers": dict(answers),
        "failures": failures,
        "path": path,
        "cluster_ip": cluster_ip,
        "describe": describe,
        "served": {b.name: b.served for b in backends},
    }


def main(requests: int = 300) -> int:
    """The ``lbcore demo`` command: 0 when every request was answered."""
    setup_logging("text", "warning")
    logging.getLogger("lbcore").setLevel(logging.WARNING)
    result = asyncio.run(run_demo(requests))
    return 0 if result["failures"] == 0 and sum(result["answers"].values()) == requests else 1
