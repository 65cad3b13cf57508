"""Network programming latency of ``lbcore run``, measured from outside, and its memory at scale.

Run ``python3 benchmarks/e2e/programming_latency.py --quick`` for a short run, or with no flag
for the whole one (N = 1,000, 10,000 and 30,000 services, 1,000 changes each); ``--help`` lists
the flags. docs/benchmarks/programming_latency.md keeps the latest figures.

What it does, for each N and each frontend:

1. **Seed.** N services (``svc-00000`` ..., port 80 -> 8080, selector ``app=<name>``) and 10 pods
   each (ready, on loopback addresses of 127.64.0.0/10) are written into a fresh store file
   directly, with :class:`lbcore.runtime.store.Store` in this process (admission runs on every
   object, as through the admin API), then the endpoints controller writes their
   EndpointSlices and Endpoints. The file is copied for every frontend, so each daemon starts
   from the same state.
2. **Start** ``lbcore run`` as a subprocess with its own config, data directory, admin port
   (loopback, chosen by the kernel) and service CIDR (127.55.0.0/16); kernel frontends write
   into a network namespace this script creates (their ``netns`` option), so no rule touches
   the host. Wait for the first sync that carries every service.
3. **Drive.** At a steady rate, one write through the admin API (``PATCH``, merge patch): a pod
   of a probe service turns not ready or ready again, a pod's label moves it out of its service
   or back, or a service's port goes from 80 to 81 or back. The clock starts when the write is
   acknowledged (the HTTP response has been read).
4. **Observe from outside.**
   - socket: pods are TCP servers on their 127.x address that answer their name; connections
     to the ClusterIP go until the new pod answers, or until ten in a row (the pods per service;
     round robin visits every endpoint once per turn) miss the removed one, or until the new
     port answers. The time is when that connection (or that run of ten) began.
   - nftables and iptables: a netlink socket subscribed to nf_tables events in the namespace
     (what ``nft monitor`` reads, without its cache: see :class:`NftEvents`); the time is when
     the first event of the changed service reaches this process (an element keyed by its
     ClusterIP for ``maps``, its chains for ``cascade`` and iptables-nft). Events are read as
     the kernel sends them at commit; no ruleset is dumped.
5. **Report** p50, p99 and max per frontend and N beside kube-proxy's published figures, and
   draw them against N (``--plot``).

``--memory N`` then starts a daemon on N services and 10 N pods with every frontend, and reports
the time from process start to the first full sync, its RSS per object, and (``--profile``) a
tracemalloc profile of the daemon in-process grouped by the structure that allocated it.

Root is needed for the kernel frontends (network namespaces); without it they are skipped.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import math
import multiprocessing
import os
import selectors
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
SERVICE_CIDR = "127.55.0.0/16"
POD_BASE = (127 << 24) | (64 << 16)  # 127.64.0.0/10: 4M addresses, far from any default range
POD_PORT = 8080
NODE = "bench-node"
PODS_PER_SERVICE = 10
KUBE_PROXY = {
    "SLO": "p99 <= 30 s (Kubernetes network programming latency SLO)",
    "KEP-3453": "p50 13 s at 5,000 nodes with partial sync (27 s before)",
}

FRONTENDS: dict[str, dict[str, Any]] = {
    "socket": {"name": "socket", "options": {"workers": 1}},  # see raise_open_files_limit
    "nftables-maps": {"name": "nftables", "options": {"endpoint_selection": "maps"}},
    "nftables-cascade": {"name": "nftables", "options": {"endpoint_selection": "cascade"}},
    "iptables": {"name": "iptables", "options": {}},
}
KERNEL = ("nftables-maps", "nftables-cascade", "iptables")


def service_name(i: int) -> str:
    return f"svc-{i:05d}"


def pod_ip(index: int) -> str:
    n = POD_BASE + index
    return socket.inet_ntoa(n.to_bytes(4, "big"))


def service_manifest(i: int, port: int = 80) -> dict[str, Any]:
    name = service_name(i)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "selector": {"app": name},
            "ports": [{"name": "http", "port": port, "protocol": "TCP", "targetPort": POD_PORT}],
        },
    }


def pod_manifest(service: int, j: int, ready: bool = True) -> dict[str, Any]:
    ip = pod_ip(service * PODS_PER_SERVICE + j)
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": f"{service_name(service)}-{j}",
            "namespace": "default",
            "labels": {"app": service_name(service)},
        },
        "spec": {"nodeName": NODE, "containers": [{"name": "web", "image": "bench:1"}]},
        "status": {
            "phase": "Running",
            "podIP": ip,
            "podIPs": [{"ip": ip}],
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }


# --------------------------------------------------------------------------------------------
# seeding the store before the daemon starts
# --------------------------------------------------------------------------------------------


@dataclass
class Seed:
    path: Path
    services: int
    pods: int
    seconds: float
    objects_per_second: float
    controller_seconds: float
    controller_writes: int


def seed_store(path: Path, services: int, log: Callable[[str], None],
               service_cidr: str = SERVICE_CIDR) -> Seed:
    """Write ``services`` services and 10 pods each into a new store file, then let the
    endpoints controller write their EndpointSlices and Endpoints."""
    from lbcore.runtime.endpoints_controller import EndpointsController
    from lbcore.runtime.store import Store

    path.parent.mkdir(parents=True, exist_ok=True)
    for suffix in ("", "-wal", "-shm"):
        Path(str(path) + suffix).unlink(missing_ok=True)
    store = Store(path, [service_cidr])
    started = time.monotonic()
    try:
        for i in range(services):
            store.create(service_manifest(i))
            for j in range(PODS_PER_SERVICE):
                store.create(pod_manifest(i, j))
            if i and i % 1000 == 0:
                rate = i * (1 + PODS_PER_SERVICE) / (time.monotonic() - started)
                log(f"  seeded {i} services ({rate:.0f} objects/s)")
        seconds = time.monotonic() - started

        async def reconcile() -> EndpointsController:
            controller = EndpointsController(store)
            task = asyncio.create_task(controller.run())
            try:
                await asyncio.wait_for(controller.synced.wait(), timeout=3600)
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            return controller

        t0 = time.monotonic()
        controller = asyncio.run(reconcile())
        controller_seconds = time.monotonic() - t0
    finally:
        store.close()
    objects = services * (1 + PODS_PER_SERVICE)
    return Seed(path, services, services * PODS_PER_SERVICE, seconds, objects / seconds,
                controller_seconds, controller.writes)


def seeded(cache: Path, services: int, log: Callable[[str], None],
           service_cidr: str = SERVICE_CIDR) -> Seed:
    """The seed file for ``services``, from ``cache`` when an earlier run made it."""
    tag = "" if service_cidr == SERVICE_CIDR else "-" + service_cidr.replace("/", "_")
    path = cache / f"seed-{services}{tag}.db"
    meta = cache / f"seed-{services}{tag}.json"
    if path.exists() and meta.exists():
        data = json.loads(meta.read_text())
        return Seed(path=path, **{k: v for k, v in data.items() if k != "path"})
    log(f"seeding {services} services and {services * PODS_PER_SERVICE} pods into {path}")
    seed = seed_store(path, services, log, service_cidr)
    meta.write_text(json.dumps({k: v for k, v in seed.__dict__.items() if k != "path"}))
    log(f"  {seed.seconds:.1f} s ({seed.objects_per_second:.0f} objects/s), endpoints "
        f"controller {seed.controller_seconds:.1f} s for {seed.controller_writes} writes")
    return seed


# --------------------------------------------------------------------------------------------
# a network namespace, the daemon, nf_tables events
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def network_namespace(name: str) -> Iterator[str]:
    """A new network namespace with its loopback up; deleted on exit."""
    subprocess.run(["ip", "netns", "add", name], check=True, timeout=30)
    try:
        subprocess.run(["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"],
                       check=True, timeout=30)
        yield name
    finally:
        subprocess.run(["ip", "netns", "delete", name], timeout=30)


def raise_open_files_limit() -> None:
    """As root, let the daemon hold a descriptor per listener: the socket frontend binds one
    socket per worker and service port (30,000 services, 2 workers: 60,000), past the usual hard
    limit of 20,000; an operator raises it the same way (systemd's ``LimitNOFILE``)."""
    import resource

    if os.geteuid() != 0:
        return
    try:
        ceiling = int(Path("/proc/sys/fs/nr_open").read_text())
    except (OSError, ValueError):
        ceiling = 1 << 20
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (ceiling, ceiling))


class DaemonProcess:
    """``lbcore run`` with its own config and data directory; its JSON log lines are kept with
    the monotonic time each one was read."""

    def __init__(self, workdir: Path, db: Path | None, frontends: list[dict[str, Any]],
                 min_sync_period: str | None = None, service_cidr: str = SERVICE_CIDR,
                 settings: dict[str, Any] | None = None):
        self.data_dir = workdir / "data"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if db is not None:
            shutil.copyfile(db, self.data_dir / "lbcore.db")
        config: dict[str, Any] = {
            "admin_address": "127.0.0.1:0",
            "data_dir": str(self.data_dir),
            "service_cidr": service_cidr,
            "node_name": NODE,
            "frontends": frontends,
            "log_format": "json",
        }
        if min_sync_period is not None:
            config["min_sync_period"] = min_sync_period
        config.update(settings or {})  # further config keys (event_loop, ...)
        self.config_path = workdir / "lbcore.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        env = dict(os.environ, LBCORE_DATA_DIR=str(self.data_dir))
        env.pop("LBCORE_SERVER", None)
        self.lines: list[tuple[float, dict[str, Any]]] = []
        self._cond = threading.Condition()
        self.started_at = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "lbcore", "run", "--config", str(self.config_path)],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
            preexec_fn=raise_open_files_limit,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.url = ""

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            now = time.monotonic()
            try:
                record = json.loads(line)
            except ValueError:
                record = {"msg": line.rstrip()}
            if record.get("msg") == "sync done":
                # the daemon's CPU seconds (every thread) when the sync was logged: on a shared
                # machine the wall time says as much about the other work as about the daemon
                record["cpu_seconds"] = self.cpu_seconds()
            with self._cond:
                self.lines.append((now, record))
                self._cond.notify_all()

    def wait_for_line(self, predicate: Callable[[dict[str, Any]], bool], timeout: float,
                      start: int = 0) -> tuple[float, dict[str, Any]] | None:
        deadline = time.monotonic() + timeout
        i = start
        with self._cond:
            while True:
                while i < len(self.lines):
                    if predicate(self.lines[i][1]):
                        return self.lines[i]
                    i += 1
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    return None
                self._cond.wait(min(left, 0.5))

    def wait_started(self, timeout: float = 120.0) -> None:
        address = self.data_dir / "admin-address"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            if address.exists():
                self.url = address.read_text().strip()
                return
            time.sleep(0.02)
        raise RuntimeError(f"the daemon did not start: {self.output()[-2000:]}")

    def wait_full_sync(self, services: int, timeout: float) -> tuple[float, dict[str, Any]]:
        """The first ``sync done`` whose snapshot holds every service and after which every
        frontend that failed on the way has recovered (its retry is a full sync)."""
        deadline = time.monotonic() + timeout
        found = self.wait_for_line(
            lambda r: r.get("msg") == "sync done" and r.get("services") == services, timeout)
        while found is not None:
            index = next(i for i, (at, _) in enumerate(self.lines) if at == found[0])
            failing = set()
            for _, r in self.lines[: index + 1]:
                if r.get("msg") == "frontend sync failed":
                    failing.add(r.get("frontend"))
                elif r.get("msg") == "frontend recovered":
                    failing.discard(r.get("frontend"))
            if not failing:
                return found
            found = self.wait_for_line(
                lambda r: r.get("msg") == "sync done" and r.get("services") == services,
                deadline - time.monotonic(), index + 1)
        raise RuntimeError(f"no full sync of {services} services within {timeout:.0f} s: "
                           f"{self.output()[-3000:]}")

    def wait_start_done(self, timeout: float) -> float | None:
        """Seconds from process start to the end of the daemon's start (every list, the
        endpoints controller's first pass: the daemon freezes what it made then), or None."""
        done = self.wait_for_line(lambda r: r.get("msg") == "start objects frozen", timeout)
        return None if done is None else done[0] - self.started_at

    def wait_ready(self, timeout: float) -> None:
        """Until ``/readyz`` answers 200 (a first sync is done; an empty one logs nothing)."""
        host, _, port = self.url.removeprefix("http://").rpartition(":")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            conn = http.client.HTTPConnection(host, int(port), timeout=10)
            try:
                conn.request("GET", "/readyz")
                if conn.getresponse().status == 200:
                    return
            except OSError:
                pass
            finally:
                conn.close()
            time.sleep(0.1)
        raise RuntimeError(f"the daemon was not ready within {timeout:.0f} s")

    def cpu_seconds(self) -> float | None:
        """User and system CPU time of the daemon so far (None once it has exited)."""
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            return None
        return round((int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"), 2)

    def rss(self) -> dict[str, int]:
        out = {}
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0]) * 1024
        return out

    def timeline(self, until: float) -> list[dict[str, Any]]:
        """The log lines up to ``until`` (seconds after the process started), as offsets."""
        keep = ("frontend started", "daemon started", "source local", "sync done",
                "frontend sync failed", "frontend recovered")
        return [{"at": round(at - self.started_at, 3), **{k: v for k, v in r.items()
                                                           if k not in ("time", "logger")}}
                for at, r in self.lines
                if at - self.started_at <= until and str(r.get("msg", "")).startswith(keep)]

    def output(self) -> str:
        return "\n".join(json.dumps(r) for _, r in self.lines)

    def stop(self) -> None:
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):  # killed below; the
                    self.proc.wait(timeout=60)  # figures of the run it served stand
        finally:
            if self.proc.poll() is None:  # no answer to SIGTERM, or this process is stopping
                self.proc.kill()
                self.proc.wait(timeout=30)
        self._reader.join(timeout=5)


class AdminClient:
    """One kept-alive HTTP connection to the admin API."""

    def __init__(self, url: str):
        host, _, port = url.removeprefix("http://").rpartition(":")
        self.conn = http.client.HTTPConnection(host, int(port), timeout=30)

    def patch(self, path: str, body: dict[str, Any]) -> float:
        """Send a merge patch; the monotonic time its acknowledgement was read."""
        self.conn.request("PATCH", path, body=json.dumps(body),
                          headers={"Content-Type": "application/merge-patch+json"})
        resp = self.conn.getresponse()
        data = resp.read()
        acked = time.monotonic()
        if resp.status != 200:
            raise RuntimeError(f"PATCH {path}: {resp.status} {data[:300]!r}")
        return acked

    def close(self) -> None:
        self.conn.close()


NETLINK_NETFILTER = 12
NFNLGRP_NFTABLES = 7  # the multicast group of every nf_tables change (linux/netfilter/nfnetlink.h)
SOL_NETLINK = 270
NETLINK_ADD_MEMBERSHIP = 1


def listen_nft_events() -> None:
    """Print every nf_tables event message of this process's network namespace as one line of
    hex, as the kernel multicasts it when a transaction commits; ``subscribed`` first, ``lost``
    when the socket overflowed (ENOBUFS). Run in the namespace by :class:`NftEvents`."""
    import errno

    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    with contextlib.suppress(OSError):  # 64 MiB: a first sync's 100,000 elements fit
        sock.setsockopt(socket.SOL_SOCKET, 33, 64 << 20)  # SO_RCVBUFFORCE
    sock.bind((0, 0))
    sock.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, NFNLGRP_NFTABLES)
    out = sys.stdout.buffer
    out.write(b"subscribed\n")
    out.flush()
    while True:
        try:
            data = sock.recv(1 << 20)
        except OSError as exc:
            if exc.errno != errno.ENOBUFS:
                raise
            out.write(b"lost\n")
        else:
            out.write(data.hex().encode() + b"\n")
        out.flush()


class NftEvents:
    """The nf_tables events of a namespace, each kept (raw) with the monotonic time it was read.

    A netlink socket subscribed to ``NFNLGRP_NFTABLES`` in the namespace (``listen_nft_events``
    in a child started with ``ip netns exec``). ``nft monitor`` would do, but before it
    subscribes it reads the whole ruleset into its cache (29 s at 10,000 services with ``maps``
    here: 110,000 elements), and it starts that read again whenever the ruleset's generation
    changes meanwhile, so it never subscribed while the probe below changed the ruleset every
    second. This socket needs no cache: it is subscribed at once, whatever the ruleset holds,
    and the events of a change are matched on the bytes they carry (an address, a chain name).
    """

    def __init__(self, netns: str):
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", netns, sys.executable, str(Path(__file__).resolve()),
             "--nft-events"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT,
        )
        self.lines: list[tuple[float, bytes]] = []
        self.lost = 0
        self.subscribed = threading.Event()
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            now = time.monotonic()
            line = line.strip()
            if line == b"subscribed":
                self.subscribed.set()
                continue
            with self._cond:
                if line == b"lost":
                    self.lost += 1
                else:
                    self.lines.append((now, bytes.fromhex(line.decode())))
                self._cond.notify_all()

    def wait_subscribed(self, netns: str, timeout: float = 30.0) -> None:
        """Until the socket is subscribed and shows a table this process adds and deletes."""
        if not self.subscribed.wait(timeout):
            err = self.proc.stderr.read().decode() if self.proc.poll() is not None else ""
            raise RuntimeError(f"the nf_tables event listener did not start: {err[-500:]}")
        probe = "lbcore-bench-monitor-probe"
        start = self.mark()
        subprocess.run(["ip", "netns", "exec", netns, "nft", f"add table inet {probe}; "
                        f"delete table inet {probe}"], timeout=30, check=True)
        if self.wait_for(start, (probe.encode(),), timeout) is None:
            raise RuntimeError("the nf_tables event listener saw no event of its probe table")

    def mark(self) -> int:
        with self._cond:
            return len(self.lines)

    def wait_for(self, start: int, tokens: tuple[bytes, ...], timeout: float) -> float | None:
        """The time of the first event from index ``start`` on that carries one of ``tokens``."""
        deadline = time.monotonic() + timeout
        i = start
        with self._cond:
            while True:
                while i < len(self.lines):
                    at, data = self.lines[i]
                    if any(t in data for t in tokens):
                        return at
                    i += 1
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(min(left, 0.5))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(timeout=5)


# --------------------------------------------------------------------------------------------
# pods that answer their name (for the socket frontend)
# --------------------------------------------------------------------------------------------


def serve_pods(pods: list[tuple[str, str]], ready: Any) -> None:
    """Accept on every ``(ip, name)`` at POD_PORT and answer each connection with the name."""
    sel = selectors.DefaultSelector()
    for ip, name in pods:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((ip, POD_PORT))
        sock.listen(1024)
        sock.setblocking(False)
        sel.register(sock, selectors.EVENT_READ, name.encode())
    ready.set()
    while True:
        for key, _ in sel.select():
            try:
                conn, _ = key.fileobj.accept()  # type: ignore[union-attr]
            except BlockingIOError:
                continue
            with conn:
                with contextlib.suppress(OSError):
                    conn.sendall(key.data)


def ask(ip: str, port: int, timeout: float = 2.0) -> str | None:
    """The name the pod behind ``ip:port`` answers, or None when refused or cut."""
    try:
        with socket.create_connection((ip, port), timeout=timeout) as sock:
            chunks = []
            while True:
                chunk = sock.recv(256)
                if not chunk:
                    break
                chunks.append(chunk)
    except OSError:
        return None
    return b"".join(chunks).decode() or None


# --------------------------------------------------------------------------------------------
# the driver
# --------------------------------------------------------------------------------------------

KINDS = ("readiness", "labels", "ports")


@dataclass
class Change:
    kind: str
    service: int
    on: bool  # True: the pod comes back / the port goes back to 80

    @property
    def pod(self) -> int:
        return 0 if self.kind == "readiness" else 1

    def write(self, client: AdminClient) -> float:
        name = service_name(self.service)
        if self.kind == "ports":
            port = 80 if self.on else 81
            body = {"spec": {"ports": [{"name": "http", "port": port, "protocol": "TCP",
                                        "targetPort": POD_PORT}]}}
            return client.patch(f"/api/v1/namespaces/default/services/{name}", body)
        path = f"/api/v1/namespaces/default/pods/{name}-{self.pod}"
        if self.kind == "readiness":
            status = "True" if self.on else "False"
            return client.patch(path + "/status", {"status": {"conditions": [
                {"type": "Ready", "status": status}]}})
        app = name if self.on else f"{name}-away"
        return client.patch(path, {"metadata": {"labels": {"app": app}}})


def changes(probes: list[int]) -> Iterator[Change]:
    """readiness, labels, ports in turn over the probe services, each toggling off then on."""
    state: dict[tuple[str, int], bool] = {}
    i = 0
    while True:
        kind = KINDS[i % len(KINDS)]
        service = probes[(i // len(KINDS)) % len(probes)]
        on = state.get((kind, service), True)
        state[(kind, service)] = not on
        yield Change(kind, service, not on)
        i += 1


class SocketObserver:
    """Connections to the ClusterIP, from this process, until the change shows."""

    def __init__(self, cluster_ips: dict[int, str]):
        self.cluster_ips = cluster_ips
        self.ports: dict[int, int] = {}

    def observe(self, change: Change, acked: float, timeout: float) -> float | None:
        cip = self.cluster_ips[change.service]
        deadline = acked + timeout
        if change.kind == "ports":
            port = 80 if change.on else 81
            self.ports[change.service] = port
            while time.monotonic() < deadline:
                began = time.monotonic()
                if ask(cip, port, 1.0) is not None:
                    return began
                time.sleep(0.0005)
            return None
        port = self.ports.get(change.service, 80)  # the service's port at this moment
        pod = f"{service_name(change.service)}-{change.pod}"
        streak = 0
        while time.monotonic() < deadline:
            began = time.monotonic()
            answer = ask(cip, port, 1.0)
            if change.on:
                if answer == pod:
                    return began
            elif answer is not None and answer != pod:
                streak += 1
                if streak >= PODS_PER_SERVICE:
                    # before the change every turn of ten connections reached the pod, so it
                    # was out before this one began at the latest (an upper bound)
                    return began
            else:
                streak = 0
            time.sleep(0.0005)
        return None


class KernelObserver:
    """The first nf_tables event of the changed service after the write."""

    def __init__(self, monitor: NftEvents, frontend: str, cluster_ips: dict[int, str]):
        self.monitor = monitor
        self.frontend = frontend
        self.cluster_ips = cluster_ips
        self.start = 0

    def before_write(self) -> None:
        self.start = self.monitor.mark()

    def tokens(self, change: Change) -> tuple[bytes, ...]:
        name = service_name(change.service)
        if self.frontend == "nftables-maps":
            # the key of its elements in service-ips and service-endpoints begins with it
            return (socket.inet_aton(self.cluster_ips[change.service]),)
        if self.frontend == "nftables-cascade":
            return (f"/{name}/".encode(),)  # its chains, service-<hash>-default/<name>/...
        # iptables-nft: the service chain's name is LBCORE-SVC- + XXH3-64 of
        # "namespace/name:port-name/protocol" (plugins/lbcore_plugins/iptables.py)
        from lbcore import hash64

        return (f"LBCORE-SVC-{hash64(f'default/{name}:http/tcp'):016X}".encode(),)

    def observe(self, change: Change, acked: float, timeout: float) -> float | None:
        return self.monitor.wait_for(self.start, self.tokens(change), timeout)


@dataclass
class Result:
    frontend: str
    services: int
    latencies: list[float] = field(default_factory=list)  # seconds, per observed change
    by_kind: dict[str, list[float]] = field(default_factory=dict)
    timeouts: int = 0
    # from the daemon's log, per change: write acknowledged -> the sync that carried it began,
    # and how long that sync took (every frontend's apply)
    sync_waits: list[float] = field(default_factory=list)
    sync_durations: list[float] = field(default_factory=list)
    rate: float = 0.0
    start_seconds: float = 0.0
    rss: int = 0

    def stats(self, values: list[float] | None = None) -> dict[str, float]:
        values = sorted(self.latencies if values is None else values)
        if not values:
            return {"n": 0, "p50": math.nan, "p99": math.nan, "max": math.nan}
        p99 = values[min(len(values) - 1, math.ceil(0.99 * len(values)) - 1)]
        return {"n": len(values), "p50": statistics.median(values), "p99": p99,
                "max": values[-1]}


def carrying_sync(daemon: DaemonProcess, start: int, acked: float) -> tuple[float, float] | None:
    """(ack -> start of the first sync after the ack that changed a service, its duration)."""
    found = daemon.wait_for_line(
        lambda r: r.get("msg") == "sync done" and (r.get("changed") or 0) > 0, 2.0, start)
    if found is None:
        return None
    at, record = found
    duration = float(record.get("duration") or 0.0)
    return at - duration - acked, duration


def drive(client: AdminClient, observer: Any, probes: list[int], count: int, rate: float,
          timeout: float, result: Result, log: Callable[[str], None],
          daemon: DaemonProcess | None = None) -> None:
    period = 1.0 / rate
    began = time.monotonic()
    gen = changes(probes)
    for i in range(count):
        change = next(gen)
        slot = began + i * period
        delay = slot - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        if isinstance(observer, KernelObserver):
            observer.before_write()
        log_mark = len(daemon.lines) if daemon is not None else 0
        acked = change.write(client)
        seen = observer.observe(change, acked, timeout)
        carried = carrying_sync(daemon, log_mark, acked) if daemon is not None else None
        if carried is not None:
            result.sync_waits.append(carried[0])
            result.sync_durations.append(carried[1])
        if seen is None:
            result.timeouts += 1
            log(f"  change {i} ({change.kind} {service_name(change.service)} "
                f"{'on' if change.on else 'off'}) not seen within {timeout} s")
            continue
        latency = max(0.0, seen - acked)
        result.latencies.append(latency)
        result.by_kind.setdefault(change.kind, []).append(latency)
        if (i + 1) % 100 == 0:
            s = result.stats()
            log(f"  {i + 1}/{count} changes: p50 {s['p50'] * 1e3:.1f} ms, "
                f"p99 {s['p99'] * 1e3:.1f} ms, max {s['max'] * 1e3:.1f} ms")
    result.rate = count / (time.monotonic() - began)


def cluster_ips_of(client_url: str, probes: list[int]) -> dict[int, str]:
    host, _, port = client_url.removeprefix("http://").rpartition(":")
    out = {}
    for i in probes:
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        conn.request("GET", f"/api/v1/namespaces/default/services/{service_name(i)}")
        out[i] = json.loads(conn.getresponse().read())["spec"]["clusterIP"]
        conn.close()
    return out


def run_latency(frontend: str, seed: Seed, args: argparse.Namespace, workdir: Path,
                log: Callable[[str], None]) -> Result:
    """One daemon with one frontend on the seeded state, driven and observed."""
    result = Result(frontend, seed.services)
    probes = list(range(0, seed.services, max(1, seed.services // args.probes)))[: args.probes]
    spec = json.loads(json.dumps(FRONTENDS[frontend]))
    with contextlib.ExitStack() as stack:
        netns = None
        if frontend in KERNEL:
            netns = stack.enter_context(network_namespace(f"lbcore-bench-{os.getpid()}"))
            # a first load of 10,000 services (one nft transaction of 545,000 lines for cascade)
            # outlasts the default 60 s per command on a loaded machine, and then fails for ever
            spec["options"].update(netns=netns, conntrack_cleanup=False, timeout=900)
        else:
            ready = multiprocessing.Event()
            pods = [(pod_ip(i * PODS_PER_SERVICE + j), f"{service_name(i)}-{j}")
                    for i in probes for j in range(PODS_PER_SERVICE)]
            server = multiprocessing.Process(target=serve_pods, args=(pods, ready), daemon=True)
            server.start()
            stack.callback(lambda: (server.terminate(), server.join(10)))
            if not ready.wait(30):
                raise RuntimeError("the pod servers did not start")
        daemon = DaemonProcess(workdir / frontend, seed.path, [spec], args.min_sync_period,
                               args.service_cidr)
        stack.callback(daemon.stop)
        daemon.wait_started()
        at, _ = daemon.wait_full_sync(seed.services, args.start_timeout)
        result.start_seconds = at - daemon.started_at
        # the changes measure the steady state: after the rest of the start (the lists the data
        # path does not wait for, the endpoints controller's first pass), which a pod's change
        # waits for (the controller writes the slice the data path reads)
        done = daemon.wait_start_done(args.start_timeout)
        result.rss = daemon.rss()["VmRSS"]
        log(f"  {frontend}: first full sync {result.start_seconds:.1f} s after start, start done "
            f"{'?' if done is None else f'{done:.1f}'} s after, RSS {result.rss / 2**20:.0f} MiB")
        cluster_ips = cluster_ips_of(daemon.url, probes)
        client = AdminClient(daemon.url)
        stack.callback(client.close)
        if netns is not None:
            monitor = NftEvents(netns)
            stack.callback(monitor.stop)
            monitor.wait_subscribed(netns)
            observer: Any = KernelObserver(monitor, frontend, cluster_ips)
        else:
            observer = SocketObserver(cluster_ips)
            for i in probes[:3]:  # the data path answers before the clock runs
                if ask(cluster_ips[i], 80) is None:
                    raise RuntimeError(f"{service_name(i)} at {cluster_ips[i]}:80 does not answer")
        drive(client, observer, probes, args.changes, args.rate, args.timeout, result, log,
              daemon)
    return result


# --------------------------------------------------------------------------------------------
# memory and restart
# --------------------------------------------------------------------------------------------


def all_frontends(netns: str | None, names: tuple[str, ...] = ("socket", "nftables-maps",
                                                               "iptables")) -> list[dict[str, Any]]:
    out = [json.loads(json.dumps(FRONTENDS["socket"]))] if "socket" in names else []
    if netns is not None:
        for name in (n for n in ("nftables-maps", "nftables-cascade", "iptables") if n in names):
            spec = json.loads(json.dumps(FRONTENDS[name]))
            # iptables-restore of 100,000 endpoint chains outlasts the default 60 s per command
            # on a loaded 2-core machine; the run measures how long, not whether it fits
            spec["options"].update(netns=netns, conntrack_cleanup=False, timeout=900)
            out.append(spec)
    return out


def run_memory(seed: Seed, args: argparse.Namespace, workdir: Path,
               log: Callable[[str], None]) -> dict[str, Any]:
    """Restart on the seeded state with every frontend: time to the first full sync, RSS."""
    out: dict[str, Any] = {"services": seed.services, "pods": seed.pods}
    with contextlib.ExitStack() as stack:
        netns = None
        if os.geteuid() == 0:
            netns = stack.enter_context(network_namespace(f"lbcore-bench-mem-{os.getpid()}"))
        frontends = all_frontends(netns, tuple(args.memory_frontends.split(",")))
        out["frontends"] = [f"{f['name']}" + (f"({f['options']['endpoint_selection']})"
                            if "endpoint_selection" in f["options"] else "") for f in frontends]
        empty = DaemonProcess(workdir / "empty", None, frontends, args.min_sync_period,
                              args.service_cidr)
        try:
            empty.wait_started()
            empty.wait_ready(120)
            time.sleep(2)
            out["baseline_rss"] = empty.rss()["VmRSS"]
        finally:
            empty.stop()
        daemon = DaemonProcess(workdir / "restart", seed.path, frontends, args.min_sync_period,
                               args.service_cidr)
        stack.callback(daemon.stop)
        daemon.wait_started(args.start_timeout)
        out["admin_up_seconds"] = time.monotonic() - daemon.started_at
        try:
            at, record = daemon.wait_full_sync(seed.services, args.start_timeout)
        finally:
            out["timeline"] = daemon.timeline(args.start_timeout)
            for line in out["timeline"]:
                log(f"    {line}")
        out["first_full_sync_seconds"] = at - daemon.started_at
        out["first_full_sync_duration"] = record.get("duration")
        out["first_full_sync_cpu_seconds"] = record.get("cpu_seconds")
        out["rss_at_sync"] = daemon.rss()["VmRSS"]
        # the rest of the start: the lists the data path did not wait for (Endpoints, pods)
        # and the endpoints controller's first pass
        out["start_done_seconds"] = daemon.wait_start_done(args.start_timeout)
        if out["start_done_seconds"] is not None:
            log(f"  start done (every list and the endpoints controller's first pass) "
                f"{out['start_done_seconds']:.1f} s after start")
        time.sleep(args.settle)  # then steady state
        rss = daemon.rss()
        out["rss"], out["rss_peak"] = rss["VmRSS"], rss["VmHWM"]
    objects = seed.services + seed.pods
    out["bytes_per_object"] = (out["rss"] - out["baseline_rss"]) / objects
    out["bytes_per_service"] = (out["rss"] - out["baseline_rss"]) / seed.services
    log(f"  restart: first full sync {out['first_full_sync_seconds']:.1f} s after start "
        f"({out['first_full_sync_cpu_seconds']} s of the daemon's CPU); RSS "
        f"{out['rss'] / 2**20:.0f} MiB (empty daemon {out['baseline_rss'] / 2**20:.0f} MiB, "
        f"peak {out['rss_peak'] / 2**20:.0f} MiB), "
        f"{out['bytes_per_object']:.0f} B per object")
    return out


# Where an allocation belongs: the outermost lbcore frame of its traceback that names one of
# these files (the component that asked for it and, for these structures, keeps it).
COMPONENTS = (
    ("lbcore/runtime/endpoints_controller.py", "endpoints controller (its pods, services, slices)"),
    ("lbcore/runtime/admin_api.py", "admin API"),
    ("lbcore_plugins/local_source.py", "local source -> ClusterState (lists, parsed objects)"),
    ("lbcore/runtime/state.py", "ClusterState: sync, snapshots"),
    ("lbcore_plugins/socket_frontend.py", "socket frontend"),
    ("lbcore_plugins/nftables.py", "nftables frontend"),
    ("lbcore_plugins/iptables.py", "iptables frontend"),
    ("lbcore_plugins/netfilter.py", "netfilter planner"),
    ("lbcore/runtime/store.py", "store"),
)
STRUCTURES = (
    ("lbcore/model/snapshot.py", "snapshots"),
    ("lbcore/model/service_table.py", "service table"),
    ("lbcore/model/endpoints.py", "endpoint tracker / endpoint build"),
    ("lbcore/model/objects.py", "parsed objects (Service, Pod, EndpointSlice)"),
    ("lbcore/core/_selectors", "selector index"),
    ("lbcore/runtime/store.py", "store (JSON of rows, history)"),
    ("json/decoder.py", "JSON decoding"),
    ("lbcore_plugins/socket_frontend.py", "frontends"),
    ("lbcore_plugins/nftables.py", "frontends"),
    ("lbcore_plugins/iptables.py", "frontends"),
    ("lbcore_plugins/netfilter.py", "frontends"),
)


def profile_in_process(config_path: str, services: int, timeout: float) -> None:
    """Run the daemon in this process under tracemalloc; print one JSON line of the profile."""
    import tracemalloc

    tracemalloc.start(16)  # deep enough to reach the component; deeper is much slower
    from lbcore.runtime.config import load_config
    from lbcore.runtime.daemon import Daemon
    from lbcore.runtime.logs import setup_logging

    setup_logging("json", "warning")
    config = load_config(config_path)

    async def main() -> dict[str, Any]:
        daemon = Daemon(config)
        started = time.monotonic()
        await daemon.start()
        try:
            while time.monotonic() - started < timeout:
                state = daemon.state
                if state is not None and len(state.snapshot.services) == services:
                    break
                await asyncio.sleep(0.2)
            controller = daemon.endpoints_controller
            while not controller.synced.is_set() and time.monotonic() - started < timeout:
                await asyncio.sleep(0.2)
            await asyncio.sleep(2)
            snap = tracemalloc.take_snapshot()
            return summarize(snap, time.monotonic() - started)
        finally:
            await daemon.stop()

    print(json.dumps(asyncio.run(main())), flush=True)


def summarize(snap: Any, seconds: float) -> dict[str, Any]:
    """Traced bytes by component (the outermost frame of COMPONENTS: who asked and keeps them),
    by structure (the innermost frame of STRUCTURES: what kind of object) and by line."""
    by_component: dict[str, int] = {}
    by_structure: dict[str, int] = {}
    by_line: dict[str, int] = {}
    total = 0
    labels: dict[str, tuple[str | None, str | None]] = {}

    def label(filename: str) -> tuple[str | None, str | None]:
        if filename not in labels:
            name = filename.replace(os.sep, "/")
            labels[filename] = (
                next((lab for needle, lab in COMPONENTS if needle in name), None),
                next((lab for needle, lab in STRUCTURES if needle in name), None),
            )
        return labels[filename]

    for trace in snap.traces:
        size = trace.size
        total += size
        # a tracemalloc traceback runs from the oldest frame to the most recent one
        frames = [(f.filename, f.lineno) for f in trace.traceback]
        component = next((c for c, _ in (label(f) for f, _ in frames) if c), None)
        structure = next((st for _, st in (label(f) for f, _ in reversed(frames)) if st), None)
        component = component or "other (interpreter, imports, asyncio, aiohttp)"
        by_component[component] = by_component.get(component, 0) + size
        by_structure[structure or "other"] = by_structure.get(structure or "other", 0) + size
        filename, lineno = frames[-1]
        key = f"{_short(filename)}:{lineno}"
        by_line[key] = by_line.get(key, 0) + size
    lines = sorted(by_line.items(), key=lambda kv: -kv[1])[:15]
    return {"traced_bytes": total, "seconds": seconds,
            "by_component": dict(sorted(by_component.items(), key=lambda kv: -kv[1])),
            "by_structure": dict(sorted(by_structure.items(), key=lambda kv: -kv[1])),
            "top_lines": dict(lines)}


def _short(filename: str) -> str:
    filename = filename.replace(os.sep, "/")
    for marker in ("/lbcore/", "/lbcore_plugins/", "/site-packages/", "/python3.11/"):
        if marker in filename:
            return marker.strip("/") + "/" + filename.split(marker, 1)[1]
    return filename


def run_profile(seed: Seed, args: argparse.Namespace, workdir: Path,
                log: Callable[[str], None]) -> dict[str, Any]:
    with contextlib.ExitStack() as stack:
        netns = None
        if os.geteuid() == 0:
            netns = stack.enter_context(network_namespace(f"lbcore-bench-prof-{os.getpid()}"))
        frontends = all_frontends(netns, tuple(args.memory_frontends.split(",")))
        daemon_dir = workdir / "profile"
        # the config and data directory DaemonProcess would make, without starting it
        data = daemon_dir / "data"
        data.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(seed.path, data / "lbcore.db")
        config = {"admin_address": "127.0.0.1:0", "data_dir": str(data),
                  "service_cidr": args.service_cidr, "node_name": NODE,
                  "frontends": frontends}
        if args.min_sync_period is not None:
            config["min_sync_period"] = args.min_sync_period
        path = daemon_dir / "lbcore.yaml"
        path.write_text(yaml.safe_dump(config))
        proc = subprocess.run(
            [sys.executable, __file__, "--profile-daemon", str(path), str(seed.services)],
            capture_output=True, text=True, timeout=args.start_timeout * 10, cwd=ROOT,
        )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{\"traced_bytes")]
    if not lines:
        raise RuntimeError(f"the profile run failed: {proc.stderr[-3000:]}")
    profile = json.loads(lines[-1])
    log(f"  tracemalloc: {profile['traced_bytes'] / 2**20:.0f} MiB traced")
    return profile


# --------------------------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------------------------


def ms(seconds: float) -> str:
    return "-" if math.isnan(seconds) else f"{seconds * 1e3:.1f} ms"


def print_table(results: list[Result], out: Callable[[str], None]) -> None:
    out("")
    out("| frontend | services | pods | changes | p50 | p99 | max | not seen | rate | "
        "start to full sync | RSS |")
    out("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        s = r.stats()
        out(f"| {r.frontend} | {r.services:,} | {r.services * PODS_PER_SERVICE:,} | {s['n']} | "
            f"{ms(s['p50'])} | {ms(s['p99'])} | {ms(s['max'])} | {r.timeouts} | "
            f"{r.rate:.1f}/s | {r.start_seconds:.1f} s | {r.rss / 2**20:.0f} MiB |")
    out("")
    out("By kind of change (p50 / p99):")
    for r in results:
        parts = []
        for kind in KINDS:
            s = r.stats(r.by_kind.get(kind, []))
            parts.append(f"{kind} {ms(s['p50'])} / {ms(s['p99'])}")
        out(f"  {r.frontend} N={r.services:,}: " + "; ".join(parts))
    out("")
    out("Where the time goes (daemon log): write acknowledged -> start of the sync that carried "
        "it; that sync's duration (p50 / p99):")
    for r in results:
        w, d = r.stats(r.sync_waits), r.stats(r.sync_durations)
        out(f"  {r.frontend} N={r.services:,}: wait {ms(w['p50'])} / {ms(w['p99'])}; "
            f"sync {ms(d['p50'])} / {ms(d['p99'])}")
    out("")
    for r in results:
        s = r.stats()
        if s["n"]:
            out(f"RATIO {r.frontend} N={r.services}: kube-proxy SLO p99 30 s / lbcore p99 "
                f"{ms(s['p99'])} = {30 / max(s['p99'], 1e-6):,.0f}x; KEP-3453 p50 13 s / "
                f"lbcore p50 {ms(s['p50'])} = {13 / max(s['p50'], 1e-6):,.0f}x")


def plot_rows(rows: list[dict[str, Any]], path: Path) -> None:
    """p50 and p99 against N, one colour per frontend (rows as the --json report keeps them)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9.5, 4.5))
    rows = [r for r in rows if r.get("n")]
    for name in sorted({r["frontend"] for r in rows}):
        mine = sorted((r for r in rows if r["frontend"] == name), key=lambda r: r["services"])
        xs = [r["services"] for r in mine]
        line, = ax.plot(xs, [r["p99"] * 1e3 for r in mine], marker="o", label=f"{name} p99")
        ax.plot(xs, [r["p50"] * 1e3 for r in mine], marker="x", linestyle="--",
                color=line.get_color(), label=f"{name} p50")
    left = min((r["services"] for r in rows), default=1)
    for y, text in ((100, "target p99: 100 ms (socket, nftables maps)"),
                    (1000, "target p99: 1 s (iptables)")):
        ax.axhline(y, color="grey", linestyle=":", linewidth=1)
        ax.text(left, y * 1.05, text, fontsize=8, color="grey")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("services (10 pods each)")
    ax.set_ylabel("write acknowledged -> data path changed (ms)")
    ax.set_title("lbcore network programming latency (kube-proxy SLO: p99 <= 30,000 ms)",
                 fontsize=10)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--services", default="1000,10000,30000",
                   help="comma-separated N (default: 1000,10000,30000)")
    p.add_argument("--frontends", default="socket,nftables-maps,nftables-cascade,iptables",
                   help="any of " + ", ".join(FRONTENDS))
    p.add_argument("--changes", type=int, default=1000, help="changes per frontend and N")
    p.add_argument("--rate", type=float, default=4.0, help="changes per second (default 4)")
    p.add_argument("--probes", type=int, default=30, help="services the changes go to")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for one change")
    p.add_argument("--service-cidr", default=SERVICE_CIDR,
                   help=f"the daemons' service CIDR (default {SERVICE_CIDR}); two runs at once "
                        "need two CIDRs, or their socket frontends refuse to share addresses")
    p.add_argument("--min-sync-period", default=None,
                   help="the daemon's min_sync_period (default: the daemon's default)")
    p.add_argument("--quick", action="store_true",
                   help="N = 200 and 1000, 100 changes, no memory run unless --memory")
    p.add_argument("--memory", type=int, default=None,
                   help="services for the memory and restart run (default 10000; 0: none)")
    p.add_argument("--memory-frontends", default="socket,nftables-maps,iptables",
                   help="the frontends of the memory and restart run")
    p.add_argument("--profile", action="store_true", help="tracemalloc profile at --memory")
    p.add_argument("--settle", type=float, default=20.0,
                   help="seconds after the first full sync before the RSS is read")
    p.add_argument("--start-timeout", type=float, default=900.0)
    p.add_argument("--seed-cache", type=Path, default=None,
                   help="keep seeded store files here and reuse them")
    p.add_argument("--plot", type=Path, default=None, help="write the PNG plot here")
    p.add_argument("--json", type=Path, default=None, help="write every figure here")
    p.add_argument("--plot-from", type=Path, nargs="+", default=None, metavar="JSON",
                   help="only draw --plot from the --json reports of earlier runs")
    p.add_argument("--plot-also", type=Path, nargs="+", default=[], metavar="JSON",
                   help="draw the rows of these --json reports of earlier runs beside this "
                        "run's in --plot")
    p.add_argument("--profile-daemon", nargs=2, metavar=("CONFIG", "SERVICES"),
                   help=argparse.SUPPRESS)
    p.add_argument("--nft-events", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        if args.services == p.get_default("services"):
            args.services = "200,1000"
        if args.changes == p.get_default("changes"):
            args.changes = 100
    if args.memory is None:
        args.memory = 0 if args.quick else 10000
    return args


def _exit_on_signal(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _exit_on_signal)
    if args.nft_events:
        listen_nft_events()
        return 0
    if args.profile_daemon:
        profile_in_process(args.profile_daemon[0], int(args.profile_daemon[1]),
                           args.start_timeout)
        return 0
    if args.plot_from:
        if args.plot is None:
            raise SystemExit("--plot-from needs --plot PATH")
        rows = [row for report in args.plot_from
                for row in json.loads(report.read_text()).get("latency", [])]
        plot_rows(rows, args.plot)
        return 0

    def log(text: str) -> None:
        print(text, flush=True)

    sizes = [int(n) for n in args.services.split(",") if n.strip()]
    frontends = [f.strip() for f in args.frontends.split(",") if f.strip()]
    unknown = [f for f in frontends if f not in FRONTENDS]
    if unknown:
        raise SystemExit(f"--frontends: unknown {unknown[0]!r}; known: {', '.join(FRONTENDS)}")
    if os.geteuid() != 0:
        skipped = [f for f in frontends if f in KERNEL]
        if skipped:
            log(f"not root: skipping {', '.join(skipped)} (they need a network namespace)")
        frontends = [f for f in frontends if f not in KERNEL]
    log(f"lbcore programming latency, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
        f"{os.cpu_count()} CPUs, python {sys.version.split()[0]}")
    with tempfile.TemporaryDirectory(prefix="lbcore-bench-") as tmp:
        work = Path(tmp)
        cache = args.seed_cache or work / "seeds"
        cache.mkdir(parents=True, exist_ok=True)
        results: list[Result] = []
        report: dict[str, Any] = {"args": {k: str(v) for k, v in vars(args).items()}}
        for n in sizes if args.changes > 0 else []:
            seed = seeded(cache, n, log, args.service_cidr)
            report.setdefault("seeds", {})[n] = {k: v for k, v in seed.__dict__.items()
                                                 if k != "path"}
            for frontend in frontends:
                log(f"{frontend}, {n} services, {args.changes} changes at {args.rate}/s")
                try:
                    results.append(run_latency(frontend, seed, args, work / f"{frontend}-{n}",
                                               log))
                except Exception as exc:
                    log(f"  {frontend} at N={n} failed: {type(exc).__name__}: {exc}")
        if results:
            print_table(results, log)
            log(f"kube-proxy: {KUBE_PROXY['SLO']}; KEP-3453: {KUBE_PROXY['KEP-3453']}")
            report["latency"] = [{"frontend": r.frontend, "services": r.services,
                                  **r.stats(), "timeouts": r.timeouts, "rate": r.rate,
                                  "start_seconds": r.start_seconds, "rss": r.rss,
                                  "sync_wait": r.stats(r.sync_waits),
                                  "sync_duration": r.stats(r.sync_durations),
                                  "by_kind": {k: r.stats(v) for k, v in r.by_kind.items()}}
                                 for r in results]
            if args.plot:
                earlier = [row for report in args.plot_also
                           for row in json.loads(report.read_text()).get("latency", [])]
                plot_rows(report["latency"] + earlier, args.plot)
                log(f"plot: {args.plot}")
        if args.memory:
            seed = seeded(cache, args.memory, log, args.service_cidr)
            log(f"memory and restart: {seed.services} services, {seed.pods} pods")
            report["memory"] = run_memory(seed, args, work / "memory", log)
            if args.profile:
                log("tracemalloc profile (the daemon in-process)")
                profile = run_profile(seed, args, work / "profile", log)
                report["profile"] = profile
                for title in ("by_component", "by_structure", "top_lines"):
                    log(f"  {title}:")
                    for key, size in profile[title].items():
                        log(f"    {size / 2**20:8.1f} MiB  {key}")
        if args.json:
            args.json.write_text(json.dumps(report, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
