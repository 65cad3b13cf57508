"""Endpoints and EndpointSlices from the daemon's store: the CLI's reads, and a label change.

10,000 services (one port, a selector each) and 50,000 pods (five per service, Ready), with the
Endpoints and EndpointSlices the endpoints controller writes for them, in a store built
directly (rows written into SQLite, the objects computed by the model's controller rules, so
the daemon's controller finds nothing to change when it starts). Then ``lbcore run`` (no
frontend, its own data directory, a loopback port the kernel picks) serves it, and:

- ``lbcore describe service`` and ``lbcore get endpoints`` (one, and all 10,000) as a user runs
  them: CLI wall time, median of 5, beside ``lbcore version`` (the interpreter and imports
  alone) on the same machine at the same moment; and the same reads in-process (the HTTP
  requests and the printing, no interpreter start);
- the time from a pod's label change (a merge PATCH that moves the pod from one service to the
  next) to the watch event of the EndpointSlice that gains it, median and p99 over 1,000
  changes, with the store's own write rate beside it (the PATCH round trips of the same run,
  and in-process ``Store.update`` of a pod).

Run: ``python3 -m pytest benchmarks/test_bench_endpoints.py -s -p no:cacheprovider``.
docs/benchmarks/endpoints.md keeps the latest figures.
"""

from __future__ import annotations

import json
import operator
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import yaml

from lbcore.model.endpoints import endpoints_object, reconcile_endpoint_slices
from lbcore.model.objects import Pod, Service, default_pod, default_service
from lbcore.runtime.store import Store

pytestmark = pytest.mark.timeout(3600)  # a store of 80,000 objects is built and served

SERVICES = 10_000
PODS_PER_SERVICE = 5
CHANGES = 1_000
RUNS = 5
ROOT = Path(__file__).resolve().parents[1]
STAMP = "2026-12-01T00:00:00Z"


def _service(i: int) -> dict[str, Any]:
    return default_service({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": f"svc-{i}", "uid": f"svc-uid-{i}", "creationTimestamp": STAMP},
        "spec": {"selector": {"app": f"app-{i}"}, "clusterIP": f"127.10.{i // 250}.{i % 250 + 1}",
                 "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}})


def _pod(i: int, app: int) -> dict[str, Any]:
    return default_pod({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": f"pod-{i}", "uid": f"pod-uid-{i}", "creationTimestamp": STAMP,
                     "labels": {"app": f"app-{app}", "tier": "web"}},
        "spec": {"nodeName": f"node-{i % 50}", "containers": [{"name": "c", "image": "x"}]},
        "status": {"phase": "Running", "podIP": f"10.{i >> 16}.{(i >> 8) & 255}.{i & 255}",
                   "conditions": [{"type": "Ready", "status": "True"}]}})


def _build(path: Path) -> None:
    """The store's file, written directly: every object as the store would keep it."""
    Store(path).close()  # the schema
    rows: list[tuple[str, str, str, int, str]] = []

    def add(obj: dict[str, Any]) -> None:
        rv = len(rows) + 1
        meta = obj["metadata"]
        meta.setdefault("uid", f"uid-{rv}")
        meta.setdefault("creationTimestamp", STAMP)
        meta.setdefault("generation", 1)
        meta["resourceVersion"] = str(rv)
        rows.append((obj["kind"], "default", meta["name"], rv,
                     json.dumps(obj, separators=(",", ":"))))

    for i in range(SERVICES):
        svc = _service(i)
        pods = [_pod(i * PODS_PER_SERVICE + j, i) for j in range(PODS_PER_SERVICE)]
        for p in pods:
            add(p)
        add(svc)
        service = Service.from_dict(svc, validate=False)
        parsed = [Pod.from_dict(p, validate=False) for p in pods]
        for n, body in enumerate(reconcile_endpoint_slices(service, parsed, ())[0]):
            body["metadata"]["name"] = body["metadata"].pop("generateName") + f"{n:05d}"
            body["metadata"]["namespace"] = "default"
            add(body)
        add(endpoints_object(service, parsed))
    db = sqlite3.connect(path)
    with db:
        db.executemany("INSERT INTO objects (kind, namespace, name, rv, body) "
                       "VALUES (?, ?, ?, ?, ?)", rows)
        db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('revision', ?)", (len(rows),))
    db.close()


class Daemon:
    def __init__(self, tmp: Path) -> None:
        self.data_dir = tmp / "data"
        self.data_dir.mkdir()
        _build(self.data_dir / "lbcore.db")
        config = tmp / "lbcore.yaml"
        config.write_text(yaml.safe_dump({"admin_address": "127.0.0.1:0", "frontends": [],
                                          "data_dir": str(self.data_dir)}))
        self.env = dict(os.environ, LBCORE_DATA_DIR=str(self.data_dir))
        self.env.pop("LBCORE_SERVER", None)
        self.proc = subprocess.Popen([sys.executable, "-m", "lbcore", "run", "--config",
                                      str(config)], env=self.env, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        for _ in range(6000):  # up to 10 minutes on a loaded machine
            if (self.data_dir / "admin-address").exists() and self._ready():
                break
            assert self.proc.poll() is None, "lbcore run exited"
            time.sleep(0.1)
        self.url = (self.data_dir / "admin-address").read_text().strip()
        self._settle()

    def _settle(self) -> None:
        """Wait until the daemon is through its first pass (the source's lists into the
        cluster state, the endpoints controller's over every service): ten reads in a row
        answered within 100 ms each (at most 10 minutes)."""
        quick = 0
        for _ in range(6000):
            started = time.perf_counter()
            with urllib.request.urlopen(self.url + "/api/v1/namespaces/default/services/svc-0",
                                        timeout=60) as resp:
                resp.read()
            quick = quick + 1 if time.perf_counter() - started < 0.1 else 0
            if quick == 10:
                return
            time.sleep(0.1)

    def _ready(self) -> bool:
        url = (self.data_dir / "admin-address").read_text().strip()
        try:
            with urllib.request.urlopen(url + "/readyz", timeout=5) as resp:
                return resp.status == 200
        except OSError:
            return False

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    started = time.perf_counter()
    d = Daemon(tmp_path_factory.mktemp("bench-endpoints"))
    print(f"\nstore built, daemon ready and settled in {time.perf_counter() - started:.1f} s")
    yield d
    d.stop()


def _wall(env: dict[str, str], *args: str) -> float:
    started = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "lbcore", *args], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    elapsed = time.perf_counter() - started
    assert out.returncode == 0, out.stderr
    return elapsed


def test_cli_reads_from_the_server(daemon: Daemon) -> None:
    from lbcore.cli.main import main

    commands = {
        "lbcore version": ("version",),
        "lbcore describe service svc-5000": ("describe", "service", "svc-5000"),
        "lbcore get endpoints svc-5000": ("get", "endpoints", "svc-5000"),
        "lbcore get endpoints (10,000 rows)": ("get", "endpoints"),
    }
    walls: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(RUNS):  # rounds, so that load which comes and goes hits every command
        for name, args in commands.items():
            walls[name].append(_wall(daemon.env, *args))
    print(f"\nCLI wall time, median of {RUNS} ({SERVICES} services, "
          f"{SERVICES * PODS_PER_SERVICE} pods):")
    for name, times in walls.items():
        print(f"  {name:40s} {statistics.median(times) * 1e3:8.0f} ms")
    saved = dict(os.environ)
    os.environ.update(daemon.env)
    try:
        for name, args in list(commands.items())[1:]:
            times = []
            for _ in range(RUNS):
                with open(os.devnull, "w") as sink:
                    stdout, sys.stdout = sys.stdout, sink
                    started = time.perf_counter()
                    try:
                        assert main(list(args)) == 0
                    finally:
                        sys.stdout = stdout
                    times.append(time.perf_counter() - started)
            print(f"  in-process {name[7:]:29s} {statistics.median(times) * 1e3:8.1f} ms")
    finally:
        os.environ.clear()
        os.environ.update(saved)
    describe = statistics.median(walls["lbcore describe service svc-5000"])
    start = statistics.median(walls["lbcore version"])
    print(f"RESULT describe service: {describe * 1e3:.0f} ms wall, "
          f"{(describe - start) * 1e3:.0f} ms beyond the interpreter start (target 200 ms)")


def _request(url: str, method: str, body: Any, content_type: str) -> Any:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method=method)
    req.add_header("Content-Type", content_type)
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


def test_label_change_to_slice_watch_event(daemon: Daemon) -> None:
    base = daemon.url
    slices = "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices"
    with urllib.request.urlopen(base + slices + "?limit=1", timeout=60) as resp:
        version = json.loads(resp.read())["metadata"]["resourceVersion"]
    seen: dict[str, float] = {}  # pod IP -> when a slice event first listed it
    arrived = threading.Condition()

    def follow() -> None:
        query = f"?watch=1&resourceVersion={version}&timeoutSeconds=3600"
        with urllib.request.urlopen(base + slices + query, timeout=3600) as stream:
            for line in stream:
                event = json.loads(line)
                now = time.perf_counter()
                with arrived:
                    for ep in event["object"].get("endpoints") or []:
                        seen.setdefault(ep["addresses"][0], now)
                    arrived.notify_all()

    threading.Thread(target=follow, daemon=True).start()
    latencies: list[float] = []
    writes: list[float] = []
    warmup = 20  # the watch opening, and the controller's first pass over every service
    for n in range(CHANGES + warmup):
        if n == warmup:
            latencies.clear()
            writes.clear()
        service = (n * 7) % SERVICES  # a different service each time, all over the store
        i = service * PODS_PER_SERVICE + n % PODS_PER_SERVICE
        ip = f"10.{i >> 16}.{(i >> 8) & 255}.{i & 255}"
        with arrived:
            seen.pop(ip, None)
        started = time.perf_counter()
        _request(f"{base}/api/v1/namespaces/default/pods/pod-{i}", "PATCH",
                 {"metadata": {"labels": {"app": f"app-{(service + 1) % SERVICES}"}}},
                 "application/merge-patch+json")
        writes.append(time.perf_counter() - started)
        with arrived:
            assert arrived.wait_for(partial(operator.contains, seen, ip), timeout=120), ip
            latencies.append(seen[ip] - started)
    latencies.sort()
    p99 = latencies[int(len(latencies) * 0.99) - 1]
    store_rate = _store_write_rate()
    print(f"\nlabel PATCH -> EndpointSlice watch event, {CHANGES} changes: "
          f"median {statistics.median(latencies) * 1e3:.1f} ms, p99 {p99 * 1e3:.1f} ms")
    print(f"  beside it, the PATCH round trip alone: median {statistics.median(writes) * 1e3:.1f}"
          f" ms ({1 / statistics.median(writes):.0f} writes/s through the admin API); "
          f"in-process Store.update of a pod: {store_rate:.0f} writes/s")


def _store_write_rate(rounds: int = 500) -> float:
    """Pod updates per second of an in-memory store (admission, SQLite, history)."""
    with Store(None) as store:
        pod = store.create(_pod(1, 1))
        started = time.perf_counter()
        for n in range(rounds):
            pod["metadata"]["labels"]["n"] = str(n)
            pod = store.update(pod)
        return rounds / (time.perf_counter() - started)
