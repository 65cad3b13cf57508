"""Acknowledged writes per second through ``lbcore run``'s admin API, and whether what follows
the writes keeps up.

Run ``python3 benchmarks/e2e/write_throughput.py`` (``--help`` lists the flags);
docs/benchmarks/programming_latency.md keeps the latest figures.

1. **State.** N services with 10 pods each (the seed of ``programming_latency.py``, N = 1,000 by
   default) in a store file, then ``lbcore run`` on it with the socket frontend, as there.
2. **Load.** C clients (20 by default), each on its own kept-alive HTTP connection, send merge
   ``PATCH``es of pods one after the other for a fixed time, each on the pods of its own
   services: ``--kind labels`` sets a label no selector reads (the endpoints controller looks
   at every change and writes nothing), ``--kind readiness`` turns a pod not ready and back
   (each change makes the controller write an EndpointSlice and an Endpoints object). A write
   counts when its ``200`` response has been read (acknowledged: committed). The same load
   with one client is the peer: the ratio is what writing at once gains.
3. **What follows the writes.** A watch of pods through the admin API, opened at the start,
   times each write's event against its acknowledgement (the watch fan-out's lag), and
   ``/metrics`` is read every 0.25 s for ``lbcore_endpoints_controller_queue`` (store commits the
   endpoints controller has not taken) and ``lbcore_watch_queue`` (changes waiting for watch
   clients). A backlog that keeps up stays small and ends near 0; one that does not grows with
   time. After the load, the time until the controller's queue is empty again.
4. **The HTTP layer alone**, the peer of the write path: the same clients and PATCHes against an
   aiohttp app (on asyncio's loop, then on uvloop) that answers each with a body of the size of
   the daemon's answers and does nothing else, for half the time: what the admin API's server
   costs, and answers per second, on this machine at that moment.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from programming_latency import (  # noqa: E402
    FRONTENDS,
    PODS_PER_SERVICE,
    SERVICE_CIDR,
    DaemonProcess,
    seeded,
    service_name,
)

RV = re.compile(rb'"resourceVersion": ?"(\d+)"')
TARGET = 5000.0


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Metrics(threading.Thread):
    """Reads the daemon's queue gauges every ``period`` seconds until stopped."""

    NAMES = ("lbcore_endpoints_controller_queue", "lbcore_watch_queue")

    def __init__(self, url: str, period: float = 0.25):
        super().__init__(daemon=True)
        host, _, port = url.removeprefix("http://").rpartition(":")
        self.conn = http.client.HTTPConnection(host, int(port), timeout=30)
        self.period = period
        self.samples: list[tuple[float, dict[str, float]]] = []
        self.stopped = threading.Event()

    def read(self) -> dict[str, float]:
        self.conn.request("GET", "/metrics")
        resp = self.conn.getresponse()
        text = resp.read().decode()
        out = {}
        for line in text.splitlines():
            name, _, value = line.partition(" ")
            if name in self.NAMES:
                out[name] = float(value)
        return out

    def run(self) -> None:
        while not self.stopped.is_set():
            self.samples.append((time.monotonic(), self.read()))
            self.stopped.wait(self.period)

    def stop(self) -> None:
        self.stopped.set()
        self.join(10)


def cpu_seconds(pid: int) -> float:
    """User and system CPU time a process has used (its threads included)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def store_counters(url: str) -> dict[str, float]:
    """The store's commits and committed writes so far (``/metrics`` counters)."""
    host, _, port = url.removeprefix("http://").rpartition(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
    finally:
        conn.close()
    out = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in ("lbcore_store_commits_total", "lbcore_store_writes_total"):
            out[name] = float(value)
    return out


async def http_request(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                       request: bytes) -> tuple[int, bytes]:
    writer.write(request)
    status_line = await reader.readline()
    status = int(status_line.split()[1])
    length = 0
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b"\n", b""):
            break
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    return status, await reader.readexactly(length)


def patch_request(host: str, path: str, body: bytes) -> bytes:
    return (f"PATCH {path} HTTP/1.1\r\nHost: {host}\r\n"
            f"Content-Type: application/merge-patch+json\r\nContent-Length: {len(body)}\r\n\r\n"
            ).encode() + body


def write_body(kind: str, n: int, unique: str) -> bytes:
    """A label value no write has set before (an update that changes nothing is not stored,
    and is no write to count), or the readiness of pass ``n`` over the pods."""
    if kind == "labels":
        return b'{"metadata":{"labels":{"bench-rev":"%s"}}}' % unique.encode()
    # the seed's pods are ready: the first pass turns them not ready, so every write changes one
    status = b"False" if n % 2 == 0 else b"True"
    return b'{"status":{"conditions":[{"type":"Ready","status":"%s"}]}}' % status


async def load(url: str, clients: int, services: int, kind: str, seconds: float,
               watch: bool) -> dict[str, Any]:
    """``clients`` writers for ``seconds``; with ``watch``, the pods watch's lag per write."""
    host_port = url.removeprefix("http://")
    host, _, port = host_port.rpartition(":")
    acked: dict[int, float] = {}  # resourceVersion -> when its write was acknowledged
    latencies: list[float] = []
    errors: list[str] = []
    seen: dict[int, float] = {}
    answer_bytes = [0]  # the size of an answer, for the HTTP layer's peer
    # each client writes the pods of its own services, round robin
    per_client = max(1, services // clients)
    stop_at = 0.0
    run = f"{time.time_ns() % 10**12:x}"  # this load's own label values

    async def client(c: int) -> int:
        reader, writer = await asyncio.open_connection(host, int(port))
        done = 0
        try:
            while time.monotonic() < stop_at:
                i = c * per_client + (done // PODS_PER_SERVICE) % per_client
                pod = f"{service_name(i % services)}-{done % PODS_PER_SERVICE}"
                body = write_body(kind, done // (per_client * PODS_PER_SERVICE),
                                  f"{run}-{c}-{done}")
                # readiness is the pod's status: written through its subresource, as a kubelet
                # writes it (the main resource keeps the stored status: nothing would change)
                path = f"/api/v1/namespaces/default/pods/{pod}" + (
                    "/status" if kind == "readiness" else "")
                request = patch_request(host_port, path, body)
                sent = time.monotonic()
                status, data = await http_request(reader, writer, request)
                now = time.monotonic()
                if status != 200:
                    errors.append(f"{status} {data[:200]!r}")
                    continue
                latencies.append(now - sent)
                answer_bytes[0] = len(data)
                found = RV.search(data)
                if found:
                    acked[int(found.group(1))] = now
                done += 1
        finally:
            writer.close()
        return done

    async def watcher(start_rv: str, ready: asyncio.Event) -> None:
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write((f"GET /api/v1/pods?watch=1&resourceVersion={start_rv} HTTP/1.1\r\n"
                      f"Host: {host_port}\r\n\r\n").encode())
        try:
            while await reader.readline() not in (b"\r\n", b""):
                pass  # headers; the body is chunked, one event per line
            ready.set()
            while True:
                size = await reader.readline()
                if not size or int(size, 16) == 0:
                    return
                chunk = await reader.readexactly(int(size, 16) + 2)
                now = time.monotonic()
                for found in RV.finditer(chunk):
                    seen.setdefault(int(found.group(1)), now)
        finally:
            writer.close()

    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    conn.request("GET", "/api/v1/pods?limit=1")
    start_rv = json.loads(conn.getresponse().read())["metadata"]["resourceVersion"]
    conn.close()
    watch_task = None
    if watch:
        ready = asyncio.Event()
        watch_task = asyncio.create_task(watcher(start_rv, ready))
        await asyncio.wait_for(ready.wait(), 30)
    started = time.monotonic()
    stop_at = started + seconds
    counts = await asyncio.gather(*(client(c) for c in range(clients)))
    elapsed = time.monotonic() - started
    lags: list[float] = []
    if watch_task is not None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not set(acked) <= set(seen):
            await asyncio.sleep(0.05)
        watch_task.cancel()
        lags = [seen[rv] - at for rv, at in acked.items() if rv in seen]
    return {
        "clients": clients, "kind": kind, "writes": sum(counts), "seconds": elapsed,
        "writes_per_second": sum(counts) / elapsed, "errors": len(errors),
        "first_errors": errors[:3],
        "latency_p50": percentile(latencies, 0.5), "latency_p99": percentile(latencies, 0.99),
        "watch_events": len(lags), "watch_missing": len(acked) - len(lags),
        "watch_lag_p50": percentile(lags, 0.5), "watch_lag_p99": percentile(lags, 0.99),
        "watch_lag_max": max(lags) if lags else float("nan"),
        "answer_bytes": answer_bytes[0],
    }


# the peer for the HTTP layer: an aiohttp app (the admin API's server, its settings) that answers
# each PATCH with a fixed body of a pod's size, and does nothing else
FLOOR_SERVER = """
import asyncio, sys
from aiohttp import web
BODY = b"x" * int(sys.argv[2])
async def answer(request):
    await request.read()
    return web.Response(body=BODY, content_type="application/json")
async def main():
    app = web.Application()
    app.router.add_route("PATCH", "/api/v1/namespaces/{namespace}/pods/{name}", answer)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    print(runner.addresses[0][1], flush=True)
    await asyncio.Event().wait()
if sys.argv[1] == "uvloop":
    import uvloop
    uvloop.run(main())
else:
    asyncio.run(main())
"""


def http_floor(loop_name: str, clients: int, seconds: float, body_size: int) -> dict[str, Any]:
    """The same clients and PATCHes against :data:`FLOOR_SERVER` on ``loop_name``: what the
    HTTP layer alone answers per second on this machine now, and its CPU time per request."""
    server = subprocess.Popen([sys.executable, "-c", FLOOR_SERVER, loop_name, str(body_size)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        address = f"127.0.0.1:{port}"
        body = write_body("labels", 0, "floor")

        async def run() -> int:
            stop_at = time.monotonic() + seconds

            async def client() -> int:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                done = 0
                request = patch_request(address, "/api/v1/namespaces/default/pods/p", body)
                try:
                    while time.monotonic() < stop_at:
                        status, _ = await http_request(reader, writer, request)
                        done += status == 200
                finally:
                    writer.close()
                return done

            return sum(await asyncio.gather(*(client() for _ in range(clients))))

        cpu0 = cpu_seconds(server.pid)
        started = time.monotonic()
        answered = asyncio.run(run())
        elapsed = time.monotonic() - started
        cpu = cpu_seconds(server.pid) - cpu0
        return {"loop": loop_name, "requests_per_second": answered / elapsed,
                "cpu_ms_per_request": 1e3 * cpu / answered if answered else None,
                "cpu_share": cpu / elapsed, "load_average": os.getloadavg()}
    finally:
        server.terminate()
        server.wait(10)


def queue_summary(samples: list[tuple[float, dict[str, float]]], start: float, end: float,
                  name: str) -> dict[str, float]:
    during = [(t, s.get(name, 0.0)) for t, s in samples if start <= t <= end]
    if not during:
        return {}
    half = start + (end - start) / 2
    first = [v for t, v in during if t < half]
    second = [v for t, v in during if t >= half]
    return {"max": max(v for _, v in during),
            "mean_first_half": statistics.fmean(first) if first else 0.0,
            "mean_second_half": statistics.fmean(second) if second else 0.0}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--services", type=int, default=1000)
    p.add_argument("--clients", type=int, default=20)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--kind", choices=("labels", "readiness"), default="labels")
    p.add_argument("--frontends", default="socket", help="comma-separated, as in "
                   "programming_latency.py (kernel frontends are not run here)")
    p.add_argument("--service-cidr", default=SERVICE_CIDR)
    p.add_argument("--seed-cache", type=Path, default=None)
    p.add_argument("--event-loop", choices=("auto", "uvloop", "asyncio"), default=None,
                   help="the daemon's event_loop setting (default: the daemon's own, auto)")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)

    def log(text: str) -> None:
        print(text, flush=True)

    with tempfile.TemporaryDirectory(prefix="lbcore-writes-") as tmp:
        work = Path(tmp)
        cache = args.seed_cache or work / "seeds"
        cache.mkdir(parents=True, exist_ok=True)
        seed = seeded(cache, args.services, log, args.service_cidr)
        specs = [json.loads(json.dumps(FRONTENDS[f])) for f in args.frontends.split(",") if f]
        settings = {} if args.event_loop is None else {"event_loop": args.event_loop}
        daemon = DaemonProcess(work / "daemon", seed.path, specs, None, args.service_cidr,
                               settings)
        report: dict[str, Any] = {"services": seed.services, "pods": seed.pods}
        try:
            daemon.wait_started()
            daemon.wait_full_sync(seed.services, 900)
            started = daemon.wait_for_line(lambda r: r.get("msg") == "daemon started", 5)
            loop_name = started[1].get("event_loop", "?") if started else "?"
            log(f"lbcore run ({loop_name}): {seed.services} services, {seed.pods} pods, "
                f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
            metrics = Metrics(daemon.url)
            metrics.start()
            runs = []
            for clients in (1, args.clients):
                before = store_counters(daemon.url)
                cpu0 = cpu_seconds(daemon.proc.pid)
                t0 = time.monotonic()
                result = asyncio.run(load(daemon.url, clients, seed.services, args.kind,
                                          args.seconds, watch=True))
                t1 = time.monotonic()
                # what the daemon's CPU time per write is less sensitive to than writes/s: the
                # share of the cores the machine's other work leaves it
                cpu = cpu_seconds(daemon.proc.pid) - cpu0
                result["daemon_cpu_ms_per_write"] = (1e3 * cpu / result["writes"]
                                                     if result["writes"] else None)
                result["daemon_cpu_share"] = cpu / result["seconds"]
                drained = None
                deadline = t1 + 60
                while time.monotonic() < deadline:
                    if metrics.samples and metrics.samples[-1][0] > t1 and not any(
                            metrics.samples[-1][1].values()):
                        drained = metrics.samples[-1][0] - t1
                        break
                    time.sleep(0.05)
                for name in Metrics.NAMES:
                    result[name] = queue_summary(metrics.samples, t0, t1, name)
                result["queues_empty_after_s"] = drained
                after = store_counters(daemon.url)
                commits = after.get("lbcore_store_commits_total", 0.0) - before.get(
                    "lbcore_store_commits_total", 0.0)
                committed = after.get("lbcore_store_writes_total", 0.0) - before.get(
                    "lbcore_store_writes_total", 0.0)
                result["commits"] = commits
                result["writes_per_commit"] = committed / commits if commits else None
                runs.append(result)
                result["load_average"] = os.getloadavg()
                log(f"  {clients:2d} clients, {args.kind}: {result['writes_per_second']:7.0f} "
                    f"acknowledged writes/s ({result['writes']} in {result['seconds']:.1f} s, "
                    f"{result['errors']} errors); write latency p50 "
                    f"{result['latency_p50'] * 1e3:.1f} ms, p99 {result['latency_p99'] * 1e3:.1f} ms"
                    f"; load average {' '.join(f'{x:.1f}' for x in result['load_average'])}")
                if result["daemon_cpu_ms_per_write"] is not None:
                    log(f"     daemon CPU: {result['daemon_cpu_ms_per_write']:.2f} ms per write, "
                        f"{100 * result['daemon_cpu_share']:.0f}% of a core")
                log(f"     watch of pods: {result['watch_events']} events, lag p50 "
                    f"{result['watch_lag_p50'] * 1e3:.1f} ms, p99 "
                    f"{result['watch_lag_p99'] * 1e3:.1f} ms, max "
                    f"{result['watch_lag_max'] * 1e3:.1f} ms, missing {result['watch_missing']}")
                for name in Metrics.NAMES:
                    q = result[name]
                    if q:
                        log(f"     {name}: max {q['max']:.0f}, mean first half "
                            f"{q['mean_first_half']:.1f}, second half {q['mean_second_half']:.1f}")
                log(f"     queues empty {drained if drained is None else round(drained, 2)} s "
                    "after the load")
                if commits:
                    log(f"     store: {committed:.0f} writes (the endpoints controller's "
                        f"included) in {commits:.0f} commits, "
                        f"{result['writes_per_commit']:.1f} per commit")
            metrics.stop()
            report["runs"] = runs
            floors = []
            for loop_name in ("asyncio", "uvloop"):
                try:
                    floor = http_floor(loop_name, args.clients, args.seconds / 2,
                                       runs[-1].get("answer_bytes") or 2000)
                except (OSError, ValueError, AssertionError) as exc:  # uvloop not installed
                    log(f"  HTTP layer alone on {loop_name}: not measured ({exc})")
                    continue
                floors.append(floor)
                log(f"  HTTP layer alone ({loop_name}, an aiohttp app answering each PATCH "
                    f"with a body of the same size, {args.clients} clients): "
                    f"{floor['requests_per_second']:.0f} answers/s, "
                    f"{floor['cpu_ms_per_request']:.2f} ms of CPU per answer, "
                    f"{100 * floor['cpu_share']:.0f}% of a core; load average "
                    f"{' '.join(f'{x:.1f}' for x in floor['load_average'])}")
            report["http_floor"] = floors
            one, many = runs
            for floor in floors:
                log(f"RATIO {args.clients} clients / the HTTP layer alone on {floor['loop']}: "
                    f"{many['writes_per_second'] / floor['requests_per_second']:.2f}x")
            log(f"RATIO {args.clients} clients / 1 client: "
                f"{many['writes_per_second'] / one['writes_per_second']:.2f}x; "
                f"{args.clients} clients / target {TARGET:.0f}/s: "
                f"{many['writes_per_second'] / TARGET:.2f}")
            report["rss"] = daemon.rss()
        finally:
            daemon.stop()
        if args.json:
            args.json.write_text(json.dumps(report, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
