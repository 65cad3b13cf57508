"""Network namespaces for end-to-end tests of the kernel frontends.

``Cluster`` builds, with a random suffix so runs never collide:

- ``node``: holds the rules; routes between everything below; its default route leads to
  ``sink``, which forwards nothing (so a missing REJECT shows up as a hang, not a quick error);
- ``pod1..podN``: one veth each (10.244.i.2, node side 10.244.i.1), a small TCP+UDP server;
- ``client``: inside the pod network (10.244.100.2, node side 10.244.100.1);
- ``outside``: not in the pod network (192.168.77.2, node side 192.168.77.1).

All traffic stays between these namespaces. ``close()`` stops the servers and deletes the
namespaces; it is safe to call twice.
"""

from __future__ import annotations

import json
import secrets
import select
import subprocess
import sys
import time

POD_CIDR = "10.244.0.0/16"
CLIENT_IP = "10.244.100.2"
CLIENT_GW = "10.244.100.1"
OUTSIDE_IP = "192.168.77.2"
OUTSIDE_GW = "192.168.77.1"
SERVER_PORT = 8080
SERVER_LIFETIME = 300  # seconds: servers end by themselves even if a teardown is missed

SERVER = r"""
import socket, sys, threading, time
name, port, lifetime = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
tcp = socket.socket(); tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
tcp.bind(("0.0.0.0", port)); tcp.listen(512)
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); udp.bind(("0.0.0.0", port))
def serve_tcp():
    while True:
        conn, peer = tcp.accept()
        try:
            conn.sendall(f"{name} {peer[0]}\n".encode())
        finally:
            conn.close()
def serve_udp():
    while True:
        data, peer = udp.recvfrom(2048)
        udp.sendto(f"{name} {peer[0]}".encode(), peer)
for target in (serve_tcp, serve_udp):
    threading.Thread(target=target, daemon=True).start()
print("ready", flush=True)
time.sleep(lifetime)
"""

CLIENT = r"""
import json, socket, sys
mode = sys.argv[1]
if mode == "tcp":
    host, port, count, timeout = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
    out = []
    for _ in range(count):
        try:
            with socket.create_connection((host, port), timeout=timeout) as s:
                out.append(s.recv(200).decode().strip() or "empty")
        except ConnectionRefusedError:
            out.append("refused")
        except TimeoutError:
            out.append("timeout")
        except OSError as exc:
            out.append(f"error {exc.errno}")
    print(json.dumps(out))
elif mode == "udp":
    host, port, timeout = sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(timeout)
    s.connect((host, port))  # connected: an ICMP port unreachable comes back as ECONNREFUSED
    for line in sys.stdin:
        try:
            s.send(line.strip().encode())
            print(s.recv(200).decode(), flush=True)
        except TimeoutError:
            print("timeout", flush=True)
        except OSError as exc:
            print(f"error {exc.errno}", flush=True)
"""


def sh(*args: str, netns: str | None = None, check: bool = True, timeout: float = 30) -> str:
    argv = ["ip", "netns", "exec", netns, *args] if netns else list(args)
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {proc.stderr.strip()}")
    return proc.stdout


class UdpSession:
    """One UDP socket (one source port) in a namespace, kept across syncs."""

    def __init__(self, netns: str, host: str, port: int, timeout: float = 1.0):
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", netns, sys.executable, "-c", CLIENT, "udp", host, str(port), str(timeout)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        self.timeout = timeout

    def ask(self, text: str = "ping") -> str:
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()
        ready, _, _ = select.select([self.proc.stdout], [], [], self.timeout + 5)
        if not ready:
            raise TimeoutError("udp client did not answer")
        return self.proc.stdout.readline().strip()

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=5)


class Cluster:
    """The namespaces of one test module; see the module docstring."""

    def __init__(self, pods: int = 3):
        suffix = secrets.token_hex(3)
        self.node = f"lbn-node-{suffix}"
        self.client = f"lbn-client-{suffix}"
        self.outside = f"lbn-out-{suffix}"
        self.sink = f"lbn-sink-{suffix}"
        self.pods = [f"lbn-pod{i}-{suffix}" for i in range(1, pods + 1)]
        self.pod_ips = [f"10.244.{i}.2" for i in range(1, pods + 1)]
        self.servers: list[subprocess.Popen[str]] = []
        self.created: list[str] = []
        try:
            self._build()
        except BaseException:
            self.close()
            raise

    @property
    def node_addresses(self) -> tuple[str, ...]:
        return (CLIENT_GW, OUTSIDE_GW, *(f"10.244.{i}.1" for i in range(1, len(self.pods) + 1)))

    def _add(self, name: str) -> None:
        sh("ip", "netns", "add", name)
        self.created.append(name)
        sh("ip", "link", "set", "lo", "up", netns=name)

    def _link(self, peer: str, node_if: str, node_ip: str, peer_ip: str) -> None:
        sh("ip", "link", "add", node_if, "netns", self.node, "type", "veth", "peer", "name", "eth0", "netns", peer)
        sh("ip", "addr", "add", f"{node_ip}/24", "dev", node_if, netns=self.node)
        sh("ip", "link", "set", node_if, "up", netns=self.node)
        sh("ip", "addr", "add", f"{peer_ip}/24", "dev", "eth0", netns=peer)
        sh("ip", "link", "set", "eth0", "up", netns=peer)
        sh("ip", "route", "add", "default", "via", node_ip, netns=peer)

    def _build(self) -> None:
        for name in (self.node, self.client, self.outside, self.sink, *self.pods):
            self._add(name)
        for key in ("net.ipv4.ip_forward=1", "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0"):
            sh("sysctl", "-qw", key, netns=self.node)
        # a default route into a namespace that forwards nothing: unserved traffic hangs
        sh("sysctl", "-qw", "net.ipv4.ip_forward=0", netns=self.sink)
        self._link(self.sink, "vsink", "10.255.0.1", "10.255.0.2")
        sh("ip", "route", "add", "default", "via", "10.255.0.2", netns=self.node)
        for i, pod in enumerate(self.pods, start=1):
            self._link(pod, f"vpod{i}", f"10.244.{i}.1", f"10.244.{i}.2")
        self._link(self.client, "vclient", CLIENT_GW, CLIENT_IP)
        self._link(self.outside, "voutside", OUTSIDE_GW, OUTSIDE_IP)
        for pod in self.pods:
            proc = subprocess.Popen(
                ["ip", "netns", "exec", pod, sys.executable, "-c", SERVER, pod, str(SERVER_PORT), str(SERVER_LIFETIME)],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            )
            self.servers.append(proc)
        deadline = time.monotonic() + 20
        for proc in self.servers:
            assert proc.stdout is not None
            ready, _, _ = select.select([proc.stdout], [], [], max(0.1, deadline - time.monotonic()))
            line = proc.stdout.readline().strip() if ready else ""
            if line != "ready":
                raise RuntimeError(f"pod server did not start: {proc.stderr.read() if proc.poll() is not None else 'no answer'}")

    def pod_name(self, reply: str) -> str:
        """Which pod answered (``podN``), from a server reply."""
        name = reply.split()[0]
        return name if name not in self.pods else f"pod{self.pods.index(name) + 1}"

    def tcp(self, netns: str, host: str, port: int, count: int = 1, timeout: float = 2.0) -> list[str]:
        """``count`` connections from ``netns``; each reply, or refused/timeout/error N."""
        out = sh(sys.executable, "-c", CLIENT, "tcp", host, str(port), str(count), str(timeout),
                 netns=netns, timeout=30 + count * timeout)
        return json.loads(out)

    def close(self) -> None:
        for proc in self.servers:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=5)
        self.servers.clear()
        for name in reversed(self.created):
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30)
        self.created.clear()
