"""What embedding lbcore costs a proxy: examples/asyncio_tcp_proxy.py with a live lbcore picker
against the same proxy with ``random.choice`` over a fixed list, and how fast a pod change
reaches the picker.

Run: ``python3 -m pytest benchmarks/test_bench_embedding.py -s``. Each test prints ``RATIO``
or ``LATENCY`` lines; docs/benchmarks/embedding.md keeps the latest table.

Everything is on 127.0.0.1 at ports the kernel picks: ``lbcore run`` (no frontends, its own
data directory) in a subprocess, three backends in a subprocess (uvloop servers answering one
HTTP response per connection), and the load generator in a subprocess: ``wrk`` when it is
installed, else a uvloop client; either opens a new connection per request
(``Connection: close``), so every request is one pick and one close. The two proxies run on
one uvloop loop in a thread of this process and take the load in alternating rounds; each
figure is the median of its rounds, so load that comes and goes on a shared machine hits both.
Beside requests/s and p99, the CPU time of the proxy's thread per request is printed: on a
shared machine it is the steadier figure of what the picker costs.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import random
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

import lbcore

uvloop = pytest.importorskip("uvloop", reason="needs uvloop (the test extra)")

ROOT = Path(__file__).resolve().parents[1]
ROUNDS = 12  # per proxy, in turn, the order rotating each round
ROUND_SECONDS = 2  # whole seconds: what wrk takes
CONCURRENCY = 32
CHANGES = 200  # pod changes timed
CHANGE_SPACING = 0.1  # seconds between changes: more than the handle's min_sync_period

BACKENDS = r"""
import asyncio, sys, uvloop
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
class Answer(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport, self.data = transport, b""
    def data_received(self, data):
        self.data += data
        if b"\r\n\r\n" in self.data:
            self.transport.write(RESPONSE)
            self.transport.close()
async def main():
    loop = asyncio.get_running_loop()
    servers = [await loop.create_server(Answer, "127.0.0.1", 0, backlog=1024)
               for _ in range(int(sys.argv[1]))]
    print(" ".join(str(s.sockets[0].getsockname()[1]) for s in servers), flush=True)
    await asyncio.Event().wait()
uvloop.run(main())
"""

LOAD = r"""
import asyncio, json, sys, time, uvloop
port, concurrency, seconds = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
REQUEST = b"GET / HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n"
latencies, errors = [], 0
async def client(deadline):
    global errors
    while time.perf_counter() < deadline:
        started = time.perf_counter()
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(REQUEST)
            body = await reader.read()
            writer.close()
            if not body.startswith(b"HTTP/1.1 200"):
                errors += 1
                continue
        except OSError:
            errors += 1
            continue
        latencies.append(time.perf_counter() - started)
async def main():
    started = time.perf_counter()
    await asyncio.gather(*(client(started + seconds) for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    latencies.sort()
    print(json.dumps({"rps": len(latencies) / elapsed, "errors": errors,
                      "p50_ms": latencies[len(latencies) // 2] * 1e3,
                      "p99_ms": latencies[int(len(latencies) * 0.99)] * 1e3}))
uvloop.run(main())
"""


def load_example(name: str) -> Any:
    spec = importlib.util.spec_from_file_location(f"lbcore_example_{name}", ROOT / "examples" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class RandomChoice:
    """The peer: ``random.choice`` over a fixed list, with the calls the proxy makes."""

    def __init__(self, endpoints: list[lbcore.EndpointInfo]) -> None:
        self.endpoints = endpoints

    def pick(self, proto: str, src: str, sport: int, dst: str, dport: int,
             exclude: Any = None) -> lbcore.EndpointInfo:
        choices = [e for e in self.endpoints if e not in exclude] if exclude else self.endpoints
        return random.choice(choices)

    def close(self, *conn: Any) -> bool:
        return True

    def mark_down(self, endpoint: Any, seconds: float) -> None:
        pass


def _request(url: str, method: str, body: dict[str, Any] | None = None) -> None:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        resp.read()


def pod(name: str, port: int, ready: bool = True) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "default", "labels": {"app": "web"}},
            "spec": {"containers": [{"name": "web", "image": "web:1",
                                     "ports": [{"name": "http", "containerPort": port}]}]},
            "status": {"phase": "Running", "podIP": "127.0.0.1", "podIPs": [{"ip": "127.0.0.1"}],
                       "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}}


class Daemon:
    """``lbcore run`` without frontends on 127.0.0.1 at a free port, with service web and pods."""

    def __init__(self, tmp: Path, ports: list[int]) -> None:
        data = tmp / "data"
        config = tmp / "lbcore.yaml"
        config.write_text(yaml.safe_dump({"admin_address": "127.0.0.1:0", "data_dir": str(data),
                                          "frontends": [], "log_level": "warning"}))
        self.proc = subprocess.Popen([sys.executable, "-m", "lbcore", "run", "--config", str(config)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        address = data / "admin-address"
        for _ in range(300):
            if address.exists():
                break
            time.sleep(0.05)
        self.url = address.read_text().strip()
        self.pods = f"{self.url}/api/v1/namespaces/default/pods"
        _request(f"{self.url}/api/v1/namespaces/default/services", "POST", {
            "apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
            "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80,
                                                            "targetPort": "http"}]}})
        self.ports = ports
        for i, port in enumerate(ports):
            _request(self.pods, "POST", pod(f"web-{i}", port))

    def set_ready(self, i: int, ready: bool) -> None:
        _request(f"{self.pods}/web-{i}/status", "PUT", pod(f"web-{i}", self.ports[i], ready))

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(20)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    backends = subprocess.Popen([sys.executable, "-c", BACKENDS, "3"], stdout=subprocess.PIPE,
                                text=True)
    assert backends.stdout is not None
    ports = [int(p) for p in backends.stdout.readline().split()]
    daemon = Daemon(tmp_path_factory.mktemp("embedding"), ports)
    try:
        yield daemon
    finally:
        daemon.stop()
        backends.terminate()
        backends.wait(10)


def run_load(port: int) -> dict[str, float]:
    """One round of load on ``port``: requests/s, p50, p99, errors, requests."""
    if shutil.which("wrk") is None:
        out = subprocess.run([sys.executable, "-c", LOAD, str(port), str(CONCURRENCY),
                              str(ROUND_SECONDS)], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        result = json.loads(out.stdout)
        result["requests"] = result["rps"] * ROUND_SECONDS
        return result
    out = subprocess.run(["wrk", "-t1", f"-c{CONCURRENCY}", f"-d{ROUND_SECONDS:g}s", "--latency",
                          "-H", "Connection: close", f"http://127.0.0.1:{port}/"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    text = out.stdout

    def ms(label: str) -> float:
        value = re.search(rf"^\s*{label}\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
        assert value, text
        return float(value[1]) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[value[2]]

    errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", text))
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    return {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", text)[1]),  # type: ignore[index]
            "requests": float(re.search(r"(\d+) requests in", text)[1]),  # type: ignore[index]
            "p50_ms": ms("50%"), "p99_ms": ms("99%"),
            "errors": errors + (int(non_2xx[1]) if non_2xx else 0)}


def per_connection_calls(picker: Any, peer: RandomChoice, n: int = 100_000) -> dict[str, float]:
    """Seconds per ``pick`` + ``close`` of one new connection, best of 5 alternating rounds."""
    best = {"lbcore": float("inf"), "random.choice": float("inf")}
    for _ in range(5):
        for name, chooser in (("lbcore", picker), ("random.choice", peer)):
            pick, close = chooser.pick, chooser.close
            started = time.perf_counter()
            for i in range(n):
                port = 1024 + i % 60000
                pick("TCP", "192.0.2.1", port, "127.0.0.1", 80, exclude=None)
                close("TCP", "192.0.2.1", port, "127.0.0.1", 80)
            best[name] = min(best[name], (time.perf_counter() - started) / n)
    return best


def test_asyncio_proxy_lbcore_picker_against_random_choice(benchmark: Any, cluster: Daemon) -> None:
    example = load_example("asyncio_tcp_proxy")
    loop = uvloop.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    def serve(picker: Any) -> int:
        server = asyncio.run_coroutine_threadsafe(
            example.TcpProxy(picker).serve("127.0.0.1", 0), loop).result(10)
        return int(server.sockets[0].getsockname()[1])

    with lbcore.connect(cluster.url) as live:
        picker = live.picker("default", "web", "http")
        peer = RandomChoice(list(picker.endpoints))
        # the same peer twice: how far apart two identical proxies land is this run's noise
        ports = {"lbcore": serve(picker), "random.choice": serve(peer),
                 "random.choice again": serve(peer)}
        results: dict[str, list[dict[str, float]]] = {name: [] for name in ports}

        async def thread_time() -> float:
            return time.thread_time()

        def rounds() -> None:
            for i in range(ROUNDS):
                order = list(ports.items())
                for name, port in order[i % len(order):] + order[:i % len(order)]:
                    before = asyncio.run_coroutine_threadsafe(thread_time(), loop).result(10)
                    result = run_load(port)
                    after = asyncio.run_coroutine_threadsafe(thread_time(), loop).result(10)
                    result["cpu_us"] = (after - before) / max(1.0, result["requests"]) * 1e6
                    results[name].append(result)

        benchmark.pedantic(rounds, rounds=1, iterations=1)
        calls = per_connection_calls(picker, peer)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)

    med = {name: {k: statistics.median(r[k] for r in rs)
                  for k in ("rps", "p50_ms", "p99_ms", "cpu_us")}
           for name, rs in results.items()}
    errors = {name: sum(r["errors"] for r in rs) for name, rs in results.items()}
    print()
    for name, m in med.items():
        each = ", ".join(f"{r['rps']:.0f}/{r['p99_ms']:.0f}" for r in results[name])
        print(f"asyncio proxy ({name:19s}): {m['rps']:8.0f} requests/s, p50 {m['p50_ms']:.2f} ms, "
              f"p99 {m['p99_ms']:.2f} ms, proxy CPU {m['cpu_us']:.1f} us/request, errors {errors[name]} "
              f"(rounds, requests/s/p99 ms: {each})")

    def paired(a: str, b: str, key: str) -> float:
        """Median over rounds of a's figure over b's in the same round (seconds apart, so
        under the same load)."""
        return statistics.median(x[key] / y[key] for x, y in zip(results[a], results[b], strict=True))

    ratio = paired("lbcore", "random.choice", "rps")
    for key, what in (("rps", "requests/s"), ("p99_ms", "p99"), ("cpu_us", "CPU per request")):
        print(f"RATIO asyncio proxy {what} lbcore picker vs random.choice: "
              f"{paired('lbcore', 'random.choice', key):.3f} (noise: random.choice against "
              f"itself {paired('random.choice again', 'random.choice', key):.3f})")
    print(f"per connection, pick + close: lbcore {calls['lbcore'] * 1e6:.2f} us, random.choice "
          f"{calls['random.choice'] * 1e6:.2f} us: {(calls['lbcore'] - calls['random.choice']) * 1e6:.2f} us "
          f"more, {(calls['lbcore'] - calls['random.choice']) * 1e6 / med['random.choice']['cpu_us']:.2%} "
          "of the proxy's CPU per request")
    print("(ratios: the median over rounds of the two proxies' figures in the same round)")
    print(f"load generator: {'wrk' if shutil.which('wrk') else 'uvloop client'}, "
          f"{CONCURRENCY} connections, {ROUNDS} rounds of {ROUND_SECONDS:g} s per proxy")
    benchmark.extra_info.update(ratio=ratio, **{f"{n}_rps": m["rps"] for n, m in med.items()})
    assert set(errors.values()) == {0}


def test_time_from_a_pod_change_to_the_picker(benchmark: Any, cluster: Daemon) -> None:
    with lbcore.connect(cluster.url) as live:
        picker = live.picker("default", "web", "http")
        written: list[float] = []
        reflected: list[float] = []

        def changes() -> None:
            for n in range(CHANGES):
                ready = n % 2 == 1  # web-0 leaves, comes back, ...
                started = time.perf_counter()
                cluster.set_ready(0, ready)
                written.append(time.perf_counter() - started)
                for _ in range(50_000):  # at most about 10 s
                    if (len(picker.eligible) == 3) == ready:
                        break
                    time.sleep(0.0002)
                reflected.append(time.perf_counter() - started)
                time.sleep(CHANGE_SPACING)

        benchmark.pedantic(changes, rounds=1, iterations=1)

    def pct(values: list[float], q: float) -> float:
        return sorted(values)[min(len(values) - 1, int(len(values) * q))] * 1e3

    print(f"\npod change -> picker, {CHANGES} changes: p50 {pct(reflected, 0.5):.2f} ms, "
          f"p99 {pct(reflected, 0.99):.2f} ms (the write itself: p50 {pct(written, 0.5):.2f} ms, "
          f"p99 {pct(written, 0.99):.2f} ms)")
    print(f"LATENCY pod change to picker p50 {pct(reflected, 0.5):.2f} ms p99 {pct(reflected, 0.99):.2f} ms")
    benchmark.extra_info.update(p50_ms=pct(reflected, 0.5), p99_ms=pct(reflected, 0.99))
