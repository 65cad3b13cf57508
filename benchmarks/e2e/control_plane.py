"""The control plane under faults and load: the kubernetes source against a scripted API
server, the admin API under concurrent large lists, and memory with a watcher that never reads.

Run ``python3 benchmarks/e2e/control_plane.py`` for the whole run (about 15 minutes on 2 cores),
``--quick`` for a short one; ``--help`` lists the flags. docs/benchmarks/control_plane.md keeps
the latest figures. Each figure is printed beside its peer, measured in the same run:

1. **Convergence after a fault** (median of ``--repeats``, 5): a daemon in this process runs the
   kubernetes source with its default options (backoff 0.8 s doubling to 30 s, watch 20 s, read
   timeout 30 s) against the API server of tests/plugins/chaos_api.py on 127.0.0.1. The clock
   starts when the fault (and the change it hides) is scripted, and stops when the daemon's
   snapshot, the data path's view, holds the server's objects (checked every 10 ms). Faults:

   - ``restore``: an etcd restore, a lower revision range, an object under the same
     resourceVersion with other content (watches answered 504 Too large resource version);
   - ``restore, slow lists``: the same, every list taking 2 s;
   - ``410 storm``: every watch answered 410; the change is made 10 s into the storm;
   - ``silent stream``: the open watch sends nothing more, its connection held open;
   - ``compaction while disconnected``: the server drops every connection for 2 s while an
     object is deleted, one changed, one added and the history compacted; the clock starts when
     it serves again.

   Peer: the same change through a healthy watch.
2. **LIST rate under a 410 storm**: lists per second after the first three, over each storm
   run (``--storm`` seconds, 30). Target: under 2/s. Peer: a source with no backoff (0.001 s).
3. **/healthz while 10 clients list N pods** (``--pods``, 50,000): ``lbcore run`` on a store of
   N pods (seeded once into ``--seed-cache``); /healthz is asked 20 times a second, each on a
   new connection, while 10 threads list ``/api/v1/pods`` in a loop, then while 10 threads
   list it 500 at a time (``limit``/``continue``, as kubectl and client-go read), then while 10
   threads watch it from no resourceVersion (each read to its last ADDED event). Peer:
   /healthz with nothing else running.
4. **Memory with a watcher that never reads**: ``lbcore run``; 3,000 PUTs of a 200 KB Service
   (``--writes``) while one watch from before them is never read; the daemon's RSS growth.
   Peer: the same writes with no watcher, in a second daemon.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import importlib.util
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
CHAOS = ROOT / "tests" / "plugins" / "chaos_api.py"


def _chaos() -> Any:
    spec = importlib.util.spec_from_file_location("chaos_api", CHAOS)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# -- 1 and 2: the kubernetes source under faults --------------------------------------------------


class FaultRun:
    """One daemon (in this process) following one chaos server, for one fault."""

    def __init__(self, chaos: Any, options: dict[str, Any] | None = None):
        self.chaos = chaos
        self.server = chaos.ChaosAPIServer()
        self.options = options or {}
        self.daemon: Any = None

    def ports(self) -> dict[str, int]:
        state = self.daemon.state
        return {sp.service: sp.port for sp in state.snapshot.service_ports.values()}

    async def until(self, condition: Callable[[], bool], at_most: float) -> float:
        """Seconds until ``condition`` holds (checked every 10 ms), from now."""
        start = time.monotonic()
        while not condition():
            if time.monotonic() - start > at_most:
                raise TimeoutError(f"not converged within {at_most} s: {self.ports()}")
            await asyncio.sleep(0.01)
        return time.monotonic() - start

    def run(self, scenario: Callable[[FaultRun], Any]) -> Any:
        from lbcore.runtime.config import config_from_mapping
        from lbcore.runtime.daemon import Daemon

        data_dir = tempfile.mkdtemp(prefix="lbcore-bench-cp-")
        config = config_from_mapping({
            "admin_address": "127.0.0.1:0", "data_dir": data_dir, "frontends": [],
            "source": {"name": "kubernetes", "options": {
                "server": self.server.url, "label_selector": "", **self.options}},
        })

        async def main() -> Any:
            self.daemon = Daemon(config)
            await self.daemon.start()
            try:
                return await scenario(self)
            finally:
                await self.daemon.stop()

        self.server.start()
        try:
            return asyncio.run(main())
        finally:
            self.server.stop()
            shutil.rmtree(data_dir, ignore_errors=True)


def _put(run: FaultRun, name: str, port: int, n: int) -> None:
    run.server.put_service(name, port, f"10.96.0.{n}")


async def _seeded(run: FaultRun) -> None:
    for n, name in enumerate("abc", 1):
        _put(run, name, 80, n)
    await run.until(lambda: len(run.ports()) == 3, 60)


async def healthy_watch(run: FaultRun) -> float:
    await _seeded(run)
    _put(run, "d", 80, 4)
    return await run.until(lambda: "default/d" in run.ports(), 60)


async def restore(run: FaultRun) -> float:
    await _seeded(run)
    for port in (81, 82, 83):
        _put(run, "c", port, 3)  # the source is at rv 6
    await run.until(lambda: run.ports().get("default/c") == 83, 60)
    service = run.chaos.service
    run.server.restore([service("a", 9090, 1, "10.96.0.1"), service("d", 80, 2, "10.96.0.4")],
                       revision=2)
    return await run.until(lambda: run.ports() == {"default/a": 9090, "default/d": 80}, 120)


async def silent_stream(run: FaultRun) -> float:
    await _seeded(run)
    # the objects may have come in the list: silence the watch that follows it, once open
    await run.until(lambda: run.server.watches["Service"] >= 1, 60)
    await asyncio.sleep(0.2)
    run.server.silence_open_watches()
    _put(run, "d", 80, 4)
    return await run.until(lambda: "default/d" in run.ports(), 120)


async def compaction_while_disconnected(run: FaultRun) -> float:
    await _seeded(run)
    run.server.set_down(True)
    run.server.delete_service("a")
    _put(run, "b", 8080, 2)
    _put(run, "d", 80, 4)
    run.server.compact()
    await asyncio.sleep(2.0)
    run.server.set_down(False)
    want = {"default/b": 8080, "default/c": 80, "default/d": 80}
    return await run.until(lambda: run.ports() == want, 120)


def storm(seconds: float, change_at: float) -> Callable[[FaultRun], Any]:
    async def scenario(run: FaultRun) -> tuple[float, float]:
        run.server.mode = "gone"
        times: list[float] = []  # when each LIST arrived at the server

        async def count_lists() -> None:
            seen = run.server.lists["Service"]
            while True:
                now = run.server.lists["Service"]
                times.extend([time.monotonic()] * (now - seen))
                seen = now
                await asyncio.sleep(0.01)

        counter = asyncio.create_task(count_lists())
        started = time.monotonic()
        _put(run, "a", 80, 1)
        await run.until(lambda: "default/a" in run.ports(), 60)
        await asyncio.sleep(max(0.0, change_at - (time.monotonic() - started)))
        _put(run, "b", 80, 2)
        converged = await run.until(lambda: "default/b" in run.ports(), 120)
        await asyncio.sleep(max(0.0, seconds - (time.monotonic() - started)))
        counter.cancel()
        end = time.monotonic()
        rate = len(times[3:]) / (end - times[2]) if len(times) >= 3 else 0.0
        return converged, rate
    return scenario


async def storm_without_backoff(run: FaultRun) -> float:
    run.server.mode = "gone"
    _put(run, "a", 80, 1)
    await run.until(lambda: "default/a" in run.ports(), 60)
    before, start = run.server.lists["Service"], time.monotonic()
    await asyncio.sleep(3.0)
    return (run.server.lists["Service"] - before) / (time.monotonic() - start)


def faults(repeats: int, storm_seconds: float, only: str = "") -> dict[str, Any]:
    chaos = _chaos()
    rows: dict[str, list[float]] = {}
    scripted: list[tuple[str, Callable[[FaultRun], Any], dict[str, Any]]] = [
        ("healthy watch (peer)", healthy_watch, {}),
        ("restore: lower range, same versions, new content", restore, {}),
        ("restore, every list taking 2 s", restore, {"list_delay": 2.0}),
        ("silent stream", silent_stream, {}),
        ("compaction while disconnected 2 s", compaction_while_disconnected, {}),
    ]
    for name, scenario, server_options in scripted:
        if only and only not in name and "peer" not in name:
            continue
        rows[name] = []
        for _ in range(repeats):
            run = FaultRun(chaos)
            for key, value in server_options.items():
                setattr(run.server, key, value)
            rows[name].append(run.run(scenario))
            print(f"  {name}: {rows[name][-1]:.2f} s", flush=True)
    if only and "storm" not in only:
        return {"convergence": {name: {"median": statistics.median(v), "runs": v}
                                for name, v in rows.items()}}
    storm_rates: list[float] = []
    change_at = min(10.0, storm_seconds / 2)
    stormy = f"410 storm, change {change_at:.0f} s in"
    rows[stormy] = []
    for _ in range(repeats):
        converged, rate = FaultRun(chaos).run(storm(storm_seconds, change_at))
        rows[stormy].append(converged)
        storm_rates.append(rate)
        print(f"  410 storm: converged {converged:.2f} s, {rate:.3f} LIST/s", flush=True)
    no_backoff = FaultRun(chaos, {"backoff_initial": 0.001, "backoff_max": 0.001}).run(
        storm_without_backoff)
    return {
        "convergence": {name: {"median": statistics.median(v), "runs": v}
                        for name, v in rows.items()},
        "storm": {"rates": storm_rates, "median_rate": statistics.median(storm_rates),
                  "max_rate": max(storm_rates), "seconds": storm_seconds,
                  "no_backoff_rate": no_backoff},
    }


# -- 3 and 4: lbcore run, its admin API ---------------------------------------------------------


class Daemon:
    """``lbcore run`` in a subprocess on its own data dir (a copy of ``seed`` if given)."""

    def __init__(self, work: Path, seed: Path | None = None):
        self.data_dir = work / "data"
        self.data_dir.mkdir(parents=True)
        if seed is not None:
            shutil.copy(seed, self.data_dir / "lbcore.db")
        env = {k: v for k, v in os.environ.items() if k != "LBCORE_SERVER"}
        env["LBCORE_LOAD_PLUGINS"] = "local"
        self.log = open(work / "daemon.log", "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "lbcore", "run", "--data-dir", str(self.data_dir),
             "--admin-address", "127.0.0.1:0"],
            env=env, stdout=self.log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        address = self.data_dir / "admin-address"
        for _ in range(6000):
            if address.exists() or self.proc.poll() is not None:
                break
            time.sleep(0.05)
        if not address.exists():
            raise RuntimeError(f"lbcore run did not start: {(work / 'daemon.log').read_text()}")
        host, port = address.read_text().strip().rsplit("/", 1)[1].rsplit(":", 1)
        self.host, self.port = host, int(port)

    def request(self, method: str, path: str, body: bytes | None = None,
                timeout: float = 120) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        try:
            headers = {"Content-Type": "application/json"} if body is not None else {}
            conn.request(method, path, body=body, headers=headers)
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()

    def rss(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def seed_pods(cache: Path, pods: int) -> Path:
    """A store file with ``pods`` pods (about 600 bytes of JSON each), made once per count."""
    from lbcore.runtime.store import Store

    path = cache / f"pods-{pods}.db"
    if path.exists():
        return path
    cache.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.unlink(missing_ok=True)
    with Store(tmp) as store:
        for n in range(pods):
            store.create({"kind": "Pod", "metadata": {
                "name": f"pod-{n:06}", "namespace": f"ns-{n % 50:02}",
                "labels": {"app": f"app-{n % 500}", "tier": "web"}},
                "spec": {"nodeName": "node-1", "containers": [
                    {"name": "web", "image": "registry.example/web:1.2.3",
                     "ports": [{"containerPort": 8080, "protocol": "TCP"}]}]},
                "status": {"phase": "Running", "podIP": f"10.{n >> 16 & 255}.{n >> 8 & 255}."
                           f"{n & 255}", "conditions": [{"type": "Ready", "status": "True"}]}})
    for suffix in ("-wal", "-shm"):
        Path(str(tmp) + suffix).unlink(missing_ok=True)
    tmp.rename(path)
    return path


def probe_healthz(daemon: Daemon, seconds: float, stop: threading.Event | None = None) -> list[float]:
    """/healthz 20 times a second for ``seconds`` (each a new connection): the latencies."""
    latencies = []
    end = time.monotonic() + seconds
    while time.monotonic() < end and not (stop and stop.is_set()):
        start = time.monotonic()
        status, _ = daemon.request("GET", "/healthz", timeout=120)
        latencies.append(time.monotonic() - start)
        assert status in (200, 503), status
        time.sleep(max(0.0, 0.05 - (time.monotonic() - start)))
    return latencies


def _lister(daemon: Daemon, path: str, stop: threading.Event, counts: list[int],
            until_lines: int | None) -> None:
    while not stop.is_set():
        if "limit=" in path:  # a list in chunks: follow each chunk's continue to the end
            token = ""
            while True:
                status, body = daemon.request(
                    "GET", path + (f"&continue={token}" if token else ""), timeout=300)
                assert status == 200, status
                token = json.loads(body)["metadata"].get("continue") or ""
                if not token:
                    break
        elif until_lines is None:
            status, body = daemon.request("GET", path, timeout=300)
            assert status == 200 and body.endswith(b"]}"), status
        else:  # a watch from nothing: read its ADDED events, then hang up
            with socket.create_connection((daemon.host, daemon.port), timeout=300) as sock:
                sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {daemon.host}\r\n\r\n".encode())
                reader = sock.makefile("rb")
                lines = 0
                while lines < until_lines:
                    line = reader.readline()
                    if not line:
                        break
                    lines += line.count(b'"type":"ADDED"')
        counts.append(1)


def healthz_under_lists(work: Path, pods: int, seconds: float, cache: Path) -> dict[str, Any]:
    seed = seed_pods(cache, pods)
    daemon = Daemon(work / "lists", seed)
    try:
        status, body = daemon.request("GET", "/api/v1/pods")
        assert status == 200 and body.count(b'"kind":"Pod"') >= pods, status
        figures: dict[str, Any] = {"pods": pods, "list_bytes": len(body)}
        idle = probe_healthz(daemon, seconds)
        figures["idle"] = _summary(idle)
        for name, path, lines in (
            ("10 lists", "/api/v1/pods", None),
            ("10 lists in chunks of 500", "/api/v1/pods?limit=500", None),
            ("10 watches from no resourceVersion", "/api/v1/pods?watch=true&timeoutSeconds=5",
             pods),
        ):
            stop = threading.Event()
            counts: list[int] = []
            threads = [threading.Thread(target=_lister, args=(daemon, path, stop, counts, lines),
                                        daemon=True) for _ in range(10)]
            for thread in threads:
                thread.start()
            time.sleep(1.0)  # every client has a request in flight
            loaded = probe_healthz(daemon, seconds)
            stop.set()
            for thread in threads:
                thread.join(300)
            figures[name] = {**_summary(loaded), "completed": len(counts)}
        figures["rss_bytes"] = daemon.rss()
        return figures
    finally:
        daemon.stop()


def _summary(latencies: list[float]) -> dict[str, float]:
    return {"n": len(latencies), "p50": pct(latencies, 0.5), "p99": pct(latencies, 0.99),
            "max": max(latencies)}


def memory_with_a_stalled_watcher(work: Path, writes: int, stalled: bool) -> dict[str, Any]:
    daemon = Daemon(work / ("stalled" if stalled else "no-watcher"))
    blob = "x" * 200_000
    path = "/api/v1/namespaces/default/services"

    def write(n: int) -> None:
        obj = {"apiVersion": "v1", "kind": "Service", "metadata": {
            "name": "big", "annotations": {"blob": blob[:-1] + str(n % 10)}},
            "spec": {"selector": {"app": "big"}, "ports": [{"port": 80}]}}
        status, _ = daemon.request("PUT" if n else "POST", path + ("/big" if n else ""),
                                   json.dumps(obj).encode())
        assert status in (200, 201), status

    watcher = None
    try:
        for n in range(50):  # warm up: the store, the allocator, the first pages of SQLite
            write(n)
        if stalled:
            watcher = socket.socket()
            watcher.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            watcher.connect((daemon.host, daemon.port))
            watcher.sendall(f"GET {path}?watch=true&resourceVersion=50 HTTP/1.1\r\n"
                            f"Host: {daemon.host}\r\n\r\n".encode())
        before = daemon.rss()
        start = time.monotonic()
        for n in range(50, 50 + writes):
            write(n)
        elapsed = time.monotonic() - start
        time.sleep(3.0)  # a stalled watcher is closed within about 2 s
        after = daemon.rss()
        return {"writes": writes, "rss_before": before, "rss_after": after,
                "grown": after - before, "writes_per_second": writes / elapsed}
    finally:
        if watcher is not None:
            watcher.close()
        daemon.stop()


# -- report --------------------------------------------------------------------------------------


def report(figures: dict[str, Any]) -> None:
    if "faults" in figures:
        conv = figures["faults"]["convergence"]
        peer = conv["healthy watch (peer)"]["median"]
        print("\nconvergence after a fault (median; runs in seconds)")
        for name, row in conv.items():
            runs = ", ".join(f"{v:.2f}" for v in row["runs"])
            print(f"  {name:<52} {row['median']:7.2f} s  ({row['median'] / peer:6.1f}x the "
                  f"healthy watch)  [{runs}]")
        st = figures["faults"].get("storm")
        if st is not None:
            print(f"\nLIST rate under a 410 storm after the first 3 lists ({st['seconds']:.0f} s "
                  f"runs): median {st['median_rate']:.3f}/s, max {st['max_rate']:.3f}/s "
                  f"(target < 2/s); a source without backoff: {st['no_backoff_rate']:.0f}/s "
                  f"({st['no_backoff_rate'] / max(st['median_rate'], 1e-9):.0f}x)")
    if "lists" in figures:
        lists = figures["lists"]
        print(f"\n/healthz with {lists['pods']:,} pods ({lists['list_bytes'] / 1e6:.1f} MB a list)")
        idle = lists["idle"]
        for name in ("idle", "10 lists", "10 lists in chunks of 500",
                     "10 watches from no resourceVersion"):
            row = lists[name]
            extra = f", {row['completed']} completed" if "completed" in row else ""
            print(f"  {name:<36} p50 {row['p50'] * 1e3:7.1f} ms  p99 {row['p99'] * 1e3:7.1f} ms"
                  f"  max {row['max'] * 1e3:7.1f} ms  (p99 {row['p99'] / idle['p99']:5.1f}x idle; "
                  f"{row['n']} probes{extra})")
    if "memory" in figures:
        mem = figures["memory"]
        stalled, peer = mem["stalled"], mem["no watcher"]
        print(f"\nRSS growth over {stalled['writes']:,} writes of 200 KB: with a watcher that "
              f"never reads {stalled['grown'] / 2**20:.1f} MiB (to {stalled['rss_after'] / 2**20:.0f}"
              f" MiB), without a watcher {peer['grown'] / 2**20:.1f} MiB (to "
              f"{peer['rss_after'] / 2**20:.0f} MiB); difference "
              f"{(stalled['grown'] - peer['grown']) / 2**20:.1f} MiB (per-watcher bound 16 MiB)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="1 repeat, 12 s storms, 5,000 pods, 300 writes")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--storm", type=float, default=30.0)
    parser.add_argument("--pods", type=int, default=50_000)
    parser.add_argument("--seconds", type=float, default=20.0, help="/healthz probing per phase")
    parser.add_argument("--writes", type=int, default=3000)
    parser.add_argument("--only", default="faults,lists,memory")
    parser.add_argument("--faults", default="", help="only the faults whose name has this")
    parser.add_argument("--seed-cache", type=Path,
                        default=Path(tempfile.gettempdir()) / "lbcore-bench-control-plane")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats, args.storm, args.pods, args.seconds, args.writes = 1, 12.0, 5000, 5.0, 300
    parts = set(args.only.split(","))
    figures: dict[str, Any] = {"args": {k: str(v) for k, v in vars(args).items()}}
    work = Path(tempfile.mkdtemp(prefix="lbcore-bench-cp-"))
    try:
        if "faults" in parts:
            print("faults:", flush=True)
            figures["faults"] = faults(args.repeats, args.storm, args.faults)
        if "lists" in parts:
            print("lists:", flush=True)
            figures["lists"] = healthz_under_lists(work, args.pods, args.seconds, args.seed_cache)
        if "memory" in parts:
            print("memory:", flush=True)
            figures["memory"] = {
                "stalled": memory_with_a_stalled_watcher(work, args.writes, True),
                "no watcher": memory_with_a_stalled_watcher(work, args.writes, False),
            }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report(figures)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
