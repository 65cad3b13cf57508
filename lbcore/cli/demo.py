"""``lbcore demo``: a working load balancer on loopback, end to end, in a few seconds.

It runs the daemon in this process on a temporary data directory, starts three backend pods
(HTTP servers on 127.0.0.11-13:8080 that answer with their own name; an address where something
already listens on 8080 is replaced by a free loopback one), creates the seed's
``my-service`` and its pods through the admin API, exactly as ``lbcore create -f`` does, sends
a few hundred requests to the service's ClusterIP through the socket frontend, prints how they
were spread and ``lbcore describe service my-service``, and stops everything. No cluster and no
root are needed.

With the ``route`` frontend installed it also shows a Route: two more services, ``shop`` and
``blog`` (one pod each), behind one HTTPS listener by host name
(``shop.example.com``, ``blog.example.com``, edge TLS with a certificate signed by a CA the demo
makes in its data directory), and counts the requests each service answered; the client
verifies the listener's certificate against that CA. Every listener of the demo (ClusterIPs,
NodePorts, the route's HTTP and HTTPS ports and its two pods) is on a loopback address where
nothing listened.

When the socket frontend is not installed or the service has no ClusterIP, the requests go
straight to the backends the compiled round-robin balancer picks, and the demo says so.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import random
import socket
import ssl
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TextIO

import yaml

from lbcore.cli.client import Client, HttpTransport, resource_for
from lbcore.errors import LbcoreError
from lbcore.runtime.config import config_from_mapping
from lbcore.runtime.daemon import Daemon, load_plugins
from lbcore.runtime.logs import setup_logging
from lbcore.runtime.tls import generate_certificates

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
SERVICE = "my-service"
NAMESPACE = "default"
CONCURRENCY = 16
READY_TIMEOUT = 5.0
REQUEST_TIMEOUT = 2.0
# the route part: service name -> host name; the route frontend's listeners
ROUTED = {"shop": "shop.example.com", "blog": "blog.example.com"}
ROUTE_HTTP_PORT = 8080
ROUTE_HTTPS_PORT = 8443

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


def _pod_manifest(index: int, app: str = "my-app", ip: str = "") -> dict[str, Any]:
    ip = ip or f"127.0.0.{10 + index}"
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": f"{app}-{index}", "labels": {"name": app}},
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


def route_manifests(certificate: bytes, key: bytes, ca: bytes,
                    pod_ips: dict[str, str]) -> list[dict[str, Any]]:
    """The route part: for each of :data:`ROUTED`, a service, its pod (at ``pod_ips[name]``)
    and an edge Route for its host name with this certificate, key and CA (PEM)."""
    objects: list[dict[str, Any]] = []
    for name, host in ROUTED.items():
        ip = pod_ips[name]
        service = yaml.safe_load(SERVICE_MANIFEST)
        service["metadata"]["name"] = name
        service["spec"]["selector"] = {"name": name}
        objects += [service, _pod_manifest(1, name, ip), {
            "apiVersion": "route.openshift.io/v1",
            "kind": "Route",
            "metadata": {"name": name},
            "spec": {
                "host": host,
                "to": {"kind": "Service", "name": name},
                "tls": {"termination": "edge", "certificate": certificate.decode(),
                        "key": key.decode(), "caCertificate": ca.decode()},
            },
        }]
    return objects


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


async def http_get(ip: str, port: int, path: str = "/", host: str = "",
                   tls: ssl.SSLContext | None = None) -> str:
    """One request on a new connection (so that each one is balanced); the response body.
    ``host``: the Host header (default ``ip``), and with ``tls`` the name the server's
    certificate is verified for."""
    host = host or ip
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(ip, port, ssl=tls, server_hostname=host if tls else None),
        REQUEST_TIMEOUT)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), REQUEST_TIMEOUT)
        if not head.startswith(b"HTTP/1.1 200"):
            raise ConnectionError(f"unexpected answer from {ip}:{port}: {head[:40]!r}")
        length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                       if line.lower().startswith(b"content-length:")), None)
        body = await asyncio.wait_for(
            reader.read() if length is None else reader.readexactly(length), REQUEST_TIMEOUT)
    finally:
        writer.close()
    return body.decode()


async def _send(count: int, target: Callable[[int], tuple[str, int]]) -> tuple[Counter[str], int]:
    return await _fetch_all(count, lambda i: http_get(*target(i)))


async def _fetch_all(count: int, fetch: Callable[[int], Awaitable[str]]) -> tuple[Counter[str], int]:
    """``fetch(i)`` for i in 0..count-1, :data:`CONCURRENCY` at a time: how many times each
    answer came, and how many failed."""
    answers: Counter[str] = Counter()
    failures = 0
    queue = iter(range(count))

    async def worker() -> None:
        nonlocal failures
        for i in queue:
            try:
                answers[await fetch(i)] += 1
            except (OSError, TimeoutError, ConnectionError, asyncio.IncompleteReadError):
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


def free_loopback_address(ports: tuple[int, ...], avoid: str = "127.0.0.0/24",
                          attempts: int = 50) -> str:
    """A loopback address outside ``avoid`` (a network, such as the demo's service range) where
    nothing listens on any of ``ports``, for listeners the demo configures (the route
    frontend's HTTP and HTTPS ports)."""
    rng = random.SystemRandom()
    avoided = ipaddress.ip_network(avoid)
    for _ in range(attempts):
        ip = f"127.{rng.randrange(200, 255)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"
        if ipaddress.ip_address(ip) not in avoided and all(_free(ip, port) for port in ports):
            return ip
    raise LbcoreError(f"demo: found no loopback address without a listener on ports {ports}")


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
    requests: int = 300, out: TextIO = sys.stdout, via_socket: bool | None = None,
    route_requests: int = 100,
) -> dict[str, Any]:
    """Run the demo; returns what it measured (for tests): answers, failures, path, describe,
    and ``route`` (None when the route frontend is not used).

    :param via_socket: send the requests through the socket frontend (default: when installed);
        the route part runs when the socket frontend is used and the route frontend is installed.
    """
    objects = manifests()
    pods = [o for o in objects if o["kind"] == "Pod"]
    port = int(objects[0]["spec"]["ports"][0].get("targetPort", 8080))
    for pod in pods:  # the seed's pod addresses, unless something here listens on one
        seed_ip = pod["status"]["podIP"]
        if not _free(seed_ip, port):
            ip = free_loopback_address((port,))
            pod["status"].update(podIP=ip, podIPs=[{"ip": ip}])
            print(f"lbcore demo: {seed_ip}:{port} is in use here; "
                  f"{pod['metadata']['name']} listens on {ip}:{port} instead", file=out)
    backends = [Backend(p["metadata"]["name"], p["status"]["podIP"], port) for p in pods]
    _, frontends = load_plugins()
    use_socket = "socket" in frontends if via_socket is None else via_socket
    use_route = use_socket and "route" in frontends
    started = time.monotonic()
    cidr = free_service_cidr(port)
    chosen: list[Any] = ["socket"] if use_socket else []
    route_ip = ""
    if use_route:
        route_ip = free_loopback_address((ROUTE_HTTP_PORT, ROUTE_HTTPS_PORT), avoid=cidr)
        chosen.append({"name": "route", "options": {
            "http_address": route_ip, "http_port": ROUTE_HTTP_PORT,
            "https_address": route_ip, "https_port": ROUTE_HTTPS_PORT, "workers": 1}})
    taken = {route_ip}
    for _ in range(10 * len(ROUTED) if use_route else 0):  # distinct addresses, bounded
        if len(taken) > len(ROUTED):
            break
        taken.add(free_loopback_address((port,), avoid=cidr))
    pod_ips = dict(zip(ROUTED, sorted(taken - {route_ip}), strict=False))
    routed = [Backend(f"{name}-1", pod_ips[name], port) for name in ROUTED if name in pod_ips]
    route_result: dict[str, Any] | None = None
    with tempfile.TemporaryDirectory(prefix="lbcore-demo-") as data_dir:
        config = config_from_mapping(
            {
                "admin_address": "127.0.0.1:0",
                "data_dir": data_dir,
                "service_cidr": cidr,
                "node_addresses": [node_address_of(cidr)],
                "frontends": chosen,
                "min_sync_period": "20ms",
                "node_name": "localhost",
            }
        )
        daemon = Daemon(config)
        for backend in backends + (routed if use_route else []):
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
            if use_route:
                route_result = await _route_part(
                    daemon, client, Path(data_dir), route_ip, routed, route_requests, out)
        finally:
            await daemon.stop()
            for backend in backends + (routed if use_route else []):
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
        "route": route_result,
    }


async def _route_part(daemon: Daemon, client: Client, data_dir: Path, ip: str,
                      routed: list[Backend], requests: int, out: TextIO) -> dict[str, Any]:
    """Create the route part's services, pods and Routes, send ``requests`` HTTPS requests to
    the route frontend's listener, half for each host, and print what each service answered."""
    tls_dir = data_dir / "route-tls"
    tls_dir.mkdir(mode=0o700)
    hosts = list(ROUTED.values())
    cert_file, key_file, ca_pem = generate_certificates(tls_dir, hosts)
    loop = asyncio.get_running_loop()
    print("", file=out)
    pod_ips = {b.name.rsplit("-", 1)[0]: b.ip for b in routed}
    for obj in route_manifests(cert_file.read_bytes(), key_file.read_bytes(), ca_pem, pod_ips):
        await loop.run_in_executor(None, client.create, obj, NAMESPACE)
        print(f"  {obj['kind'].lower()}/{obj['metadata']['name']} created", file=out)
    frontend = daemon.frontends.get("route")

    def ready() -> bool:
        table = getattr(frontend, "table", None)
        served = {vh.name: vh for vh in table.hosts} if table is not None else {}
        return all(h in served and served[h].https and all(
            b.endpoints for r in served[h].https for b in r.backends) for h in hosts)

    deadline = time.monotonic() + READY_TIMEOUT
    while not ready() and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    listening = getattr(frontend, "listening", {}).get("https")
    port = listening[1] if listening else ROUTE_HTTPS_PORT
    context = ssl.create_default_context(cadata=ca_pem.decode())  # the demo's CA, verified

    async def fetch(i: int) -> str:
        host = hosts[i % len(hosts)]
        return f"{host} {await http_get(ip, port, host=host, tls=context)}"

    answers, failures = await _fetch_all(requests, fetch)
    print(f"\n{requests} HTTPS requests to https://{ip}:{port} by host name "
          "(route frontend; the demo's CA verified):", file=out)
    per_service: dict[str, int] = {}
    for name, host in ROUTED.items():
        n = answers.get(f"{host} {name}-1", 0)
        per_service[name] = n
        pod = f"{pod_ips[name]}:{routed[0].port}"
        print(f"  {host:<17} -> service {name}, pod {pod:<21} {n:4d}", file=out)
    wrong = sum(answers.values()) - sum(per_service.values())
    if wrong:
        print(f"  answered by the wrong service: {wrong}", file=out)
    if failures:
        print(f"  failed: {failures}", file=out)
    return {"address": f"{ip}:{port}", "per_service": per_service, "failures": failures,
            "wrong": wrong, "answers": dict(answers)}


def main(requests: int = 300) -> int:
    """The ``lbcore demo`` command: 0 when every request was answered."""
    setup_logging("text", "warning")
    logging.getLogger("lbcore").setLevel(logging.WARNING)
    result = asyncio.run(run_demo(requests))
    route = result["route"]
    route_ok = route is None or (route["failures"] == 0 and route["wrong"] == 0
                                 and all(route["per_service"].values()))
    ok = result["failures"] == 0 and sum(result["answers"].values()) == requests
    return 0 if ok and route_ok else 1
