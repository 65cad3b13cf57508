"""Helpers of the route frontend tests: loopback HTTP(S) backends that count their connections,
certificates made with ``cryptography``, a small cluster fed to the frontend, and clients."""

from __future__ import annotations

import http.client
import itertools
import json
import socket
import ssl
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from lbcore.model.service_table import ServiceTable
from lbcore.runtime.tls import self_signed

_uids = itertools.count(1)
_cluster_ips = itertools.count(10)


def make_pair(*hosts: str) -> tuple[str, str]:
    """A self-signed ECDSA P-256 certificate for ``hosts`` and its key, PEM."""
    cert, key = self_signed(hosts)
    return cert.decode(), key.decode()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _answer(self, body: bytes) -> None:
        self.server.requests += 1  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self._answer(json.dumps({"backend": self.server.tag, "path": self.path,  # type: ignore[attr-defined]
                                 "headers": {k.lower(): v for k, v in self.headers.items()}}).encode())

    do_HEAD = do_GET

    def do_POST(self) -> None:  # noqa: N802
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            data = b""
            while size := int(self.rfile.readline().split(b";")[0], 16):
                data += self.rfile.read(size)
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                pass  # trailers
        else:
            n = int(self.headers.get("Content-Length") or 0)
            data = self.rfile.read(n) if n else b""
        self._answer(json.dumps({"backend": self.server.tag, "length": len(data)}).encode())  # type: ignore[attr-defined]

    def log_message(self, *args: Any) -> None:
        pass


class HttpBackend(ThreadingHTTPServer):
    """An HTTP/1.1 server on ``ip:port`` (port 0: any) answering JSON with its tag, the path and
    the request headers; ``accepted`` counts its connections. With ``cert`` it speaks TLS."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, tag: str, ip: str = "127.0.0.1", port: int = 0,
                 cert: tuple[str, str] | None = None):
        self.tag = tag
        self.accepted = 0
        self.requests = 0
        self.tls: ssl.SSLContext | None = None
        if cert is not None:
            self.tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            with tempfile.TemporaryDirectory() as tmp:
                Path(tmp, "c.pem").write_text(cert[0])
                Path(tmp, "k.pem").write_text(cert[1])
                self.tls.load_cert_chain(Path(tmp, "c.pem"), Path(tmp, "k.pem"))
        super().__init__((ip, port), _Handler)
        self.thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)
        self.thread.start()

    @property
    def port(self) -> int:
        return self.server_address[1]

    def get_request(self):  # type: ignore[no-untyped-def]
        sock, addr = super().get_request()
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # head and body: no Nagle wait
        self.accepted += 1
        if self.tls is not None:
            sock = self.tls.wrap_socket(sock, server_side=True)
        return sock, addr

    def close(self) -> None:
        self.shutdown()
        self.server_close()


def meta(name: str, ns: str = "shop", age: int = 0) -> dict:
    return {"name": name, "namespace": ns, "uid": f"uid-{next(_uids):05d}",
            "creationTimestamp": f"2026-12-07T10:{age:02d}:00Z", "resourceVersion": "1"}


def service(name: str, port: int, affinity: str = "None", ns: str = "shop") -> dict:
    return {"apiVersion": "v1", "kind": "Service", "metadata": meta(name, ns),
            "spec": {"clusterIP": f"10.96.0.{next(_cluster_ips) % 250 + 2}",
                     "sessionAffinity": affinity,
                     "ports": [{"name": "", "port": 80, "targetPort": port, "protocol": "TCP"}]}}


def endpoint_slice(svc: str, ips: list[str], port: int, ns: str = "shop") -> dict:
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
            "metadata": {**meta(f"{svc}-slice", ns), "labels": {"kubernetes.io/service-name": svc}},
            "endpoints": [{"addresses": [ip], "conditions": {"ready": True}} for ip in ips],
            "ports": [{"name": "", "port": port, "protocol": "TCP"}]}


def route(name: str, host: str, to: str, path: str = "", weight: int = 100,
          alternates: tuple[tuple[str, int], ...] = (), tls: dict | None = None,
          wildcard: str = "None", ns: str = "shop", age: int = 0) -> dict:
    spec: dict = {"host": host, "path": path, "wildcardPolicy": wildcard,
                  "to": {"kind": "Service", "name": to, "weight": weight},
                  "alternateBackends": [{"kind": "Service", "name": n, "weight": w}
                                        for n, w in alternates]}
    if tls:
        spec["tls"] = tls
    return {"apiVersion": "route.openshift.io/v1", "kind": "Route", "metadata": meta(name, ns, age),
            "spec": spec}


def ingress(name: str, rules: list[tuple[str, list[tuple[str, str, str, int]]]],
            ns: str = "shop") -> dict:
    """``rules``: (host, [(path, pathType, service, port)])."""
    return {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": meta(name, ns),
            "spec": {"ingressClassName": "lbcore", "rules": [
                {"host": host, "http": {"paths": [
                    {"path": p, "pathType": kind,
                     "backend": {"service": {"name": svc, "port": {"number": port}}}}
                    for p, kind, svc, port in paths]}} for host, paths in rules]}}


class Cluster:
    """Objects applied to a ServiceTable, each change synced to the frontend."""

    def __init__(self, frontend: Any):
        self.table = ServiceTable(allocate=False)
        self.frontend = frontend

    def apply(self, *objects: dict) -> None:
        for obj in objects:
            self.table.apply(obj)
        self.frontend.sync(self.table.snapshot(), frozenset())

    def delete(self, kind: str, name: str, ns: str = "shop") -> None:
        self.table.delete(kind, ns, name)
        self.frontend.sync(self.table.snapshot(), frozenset())

    def serve(self, name: str, backends: list[HttpBackend]) -> None:
        """Service ``name`` with ``backends`` (one port, several loopback addresses) as its
        endpoints."""
        port = backends[0].port
        self.apply(service(name, port), endpoint_slice(name, [b.server_address[0] for b in backends],
                                                       port))


def backends_on_one_port(tags: list[str], cert: tuple[str, str] | None = None) -> list[HttpBackend]:
    """One backend per tag on 127.0.0.2, .3, ... sharing one port (an EndpointSlice has one)."""
    for _ in range(20):
        first = HttpBackend(tags[0], "127.0.0.2", 0, cert)
        made = [first]
        try:
            for i, tag in enumerate(tags[1:]):
                made.append(HttpBackend(tag, f"127.0.0.{3 + i}", first.port, cert))
            return made
        except OSError:
            for b in made:
                b.close()
    raise RuntimeError("no port free on every loopback address")


def get(port: int, host: str, path: str = "/", conn: http.client.HTTPConnection | None = None,
        headers: dict | None = None, method: str = "GET", body: bytes | None = None
        ) -> tuple[int, dict, bytes]:
    """One request (on ``conn`` when given, kept open): status, headers, body."""
    c = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    c.request(method, path, body=body, headers={"Host": host, **(headers or {})})
    r = c.getresponse()
    data = r.read()
    if conn is None:
        c.close()
    return r.status, {k.lower(): v for k, v in r.getheaders()}, data


def tls_client(ca_pem: str | None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if ca_pem is not None:
        ctx.load_verify_locations(cadata=ca_pem)
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def https_get(port: int, host: str, ctx: ssl.SSLContext, path: str = "/"
              ) -> tuple[int, dict, bytes, ssl.SSLSession | None]:
    """One request over TLS to 127.0.0.1:``port`` with SNI ``host`` (verified by ``ctx``):
    status, headers, body and the TLS session (to resume)."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock = ctx.wrap_socket(raw, server_hostname=host)
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
    r = http.client.HTTPResponse(sock)
    r.begin()
    data = r.read()
    headers = {k.lower(): v for k, v in r.getheaders()}
    session = sock.session
    sock.close()
    return r.status, headers, data, session
