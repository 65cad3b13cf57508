"""Real loopback backends, snapshot builders and client helpers for the proxy tests."""

from __future__ import annotations

import itertools
import os
import selectors
import socket
import threading
import time
from collections.abc import Callable
from types import MappingProxyType

from lbcore.model.snapshot import EndpointInfo, ServicePortInfo, Snapshot

_next_ip = itertools.count(1)


def cluster_ip() -> str:
    """A fresh address in the default service CIDR (127.10.0.0/16, on loopback)."""
    n = (os.getpid() * 97 + next(_next_ip)) % 65000 + 256
    return f"127.10.{n >> 8}.{n & 255}"


class TcpBackend:
    """A one-thread TCP server on loopback: says ``<tag>\\n`` on accept, echoes what it gets,
    and on the client's FIN answers ``EOF <tag> <bytes received>`` and closes."""

    def __init__(self, tag: str, host: str = "127.0.0.1"):
        self.tag = tag.encode()
        self.sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, 0))
        self.sock.listen(1024)
        self.sock.setblocking(False)
        self.host = host
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self.open = 0
        self._sel = selectors.DefaultSelector()
        self._sel.register(self.sock, selectors.EVENT_READ, None)
        self._stop = False
        self._wake_r, self._wake_w = socket.socketpair()
        self._sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def endpoint(self, **kw: object) -> EndpointInfo:
        return EndpointInfo(ip=self.host, port=self.port, **kw)  # type: ignore[arg-type]

    def _run(self) -> None:
        state: dict[socket.socket, list] = {}
        while not self._stop:
            for key, _ in self._sel.select(0.2):
                if key.data == "wake":
                    return
                if key.data is None:
                    try:
                        conn, _ = self.sock.accept()
                    except OSError:
                        continue
                    conn.setblocking(False)
                    self.accepted += 1
                    self.open += 1
                    state[conn] = [0]
                    self._sel.register(conn, selectors.EVENT_READ, "conn")
                    self._send(conn, self.tag + b"\n")
                    continue
                conn = key.fileobj  # type: ignore[assignment]
                try:
                    data = conn.recv(65536)
                except OSError:
                    data = b""
                if data:
                    state[conn][0] += len(data)
                    self._send(conn, data)
                    continue
                self._send(conn, b"EOF %s %d" % (self.tag, state.pop(conn)[0]))
                self._sel.unregister(conn)
                conn.close()
                self.open -= 1

    @staticmethod
    def _send(conn: socket.socket, data: bytes) -> None:
        conn.setblocking(True)
        conn.settimeout(5)
        try:
            conn.sendall(data)
        except OSError:
            pass
        conn.setblocking(False)

    def close(self) -> None:
        """Stop listening: new connections to this backend are refused."""
        self._stop = True
        self._wake_w.send(b"x")
        self._thread.join(5)
        for key in list(self._sel.get_map().values()):
            key.fileobj.close()  # type: ignore[union-attr]
        self._sel.close()
        self._wake_w.close()


class ReplyBackend:
    """Answers every connection with ``reply`` at once and closes it, without reading."""

    def __init__(self, reply: bytes):
        self.reply = reply
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def endpoint(self, **kw: object) -> EndpointInfo:
        return EndpointInfo(ip="127.0.0.1", port=self.port, **kw)  # type: ignore[arg-type]

    def _run(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(20)
                try:
                    conn.sendall(self.reply)
                except OSError:
                    pass

    def close(self) -> None:
        self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self._thread.join(5)


class UdpBackend:
    """Answers each datagram with ``<tag>:<datagram>``."""

    def __init__(self, tag: str, host: str = "127.0.0.1"):
        self.tag = tag.encode()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((host, 0))
        self.sock.settimeout(0.2)
        self.host = host
        self.port = self.sock.getsockname()[1]
        self.received = 0
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def endpoint(self, **kw: object) -> EndpointInfo:
        return EndpointInfo(ip=self.host, port=self.port, **kw)  # type: ignore[arg-type]

    def _run(self) -> None:
        while not self._stop:
            try:
                data, peer = self.sock.recvfrom(65536)
            except OSError:
                continue
            self.received += 1
            self.sock.sendto(self.tag + b":" + data, peer)

    def close(self) -> None:
        self._stop = True
        self._thread.join(5)
        self.sock.close()


def service_port(
    name: str,
    endpoints: list[EndpointInfo],
    ip: str | None = None,
    port: int = 8080,
    protocol: str = "TCP",
    **kw: object,
) -> ServicePortInfo:
    return ServicePortInfo(
        namespace="default",
        name=name,
        port_name="",
        protocol=protocol,
        port=port,
        cluster_ips=(ip or cluster_ip(),),
        endpoints=tuple(endpoints),
        **kw,  # type: ignore[arg-type]
    )


def snapshot(*ports: ServicePortInfo, version: int = 1, node: str = "node-a") -> Snapshot:
    return Snapshot(
        version=version,
        service_ports=MappingProxyType({f"{sp.key}/{sp.protocol}": sp for sp in ports}),
        node_name=node,
    )


def tag_of(address: tuple[str, int], timeout: float = 3.0, source: str | None = None) -> str:
    """Connect through the proxy and return the backend's greeting tag."""
    family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        if source:
            s.bind((source, 0))
        s.connect(address)
        return read_line(s)


def read_line(s: socket.socket) -> str:
    buf = b""
    deadline = time.monotonic() + 3
    while not buf.endswith(b"\n") and time.monotonic() < deadline:
        chunk = s.recv(1)
        if not chunk:
            break
        buf += chunk
    return buf.decode().strip()


def wait_until(predicate: Callable[[], bool], timeout: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()
