"""The socket frontend against HAProxy, in one run, over the same nginx and iperf3 backends.

Starts three nginx backends (Debian's /usr/sbin/nginx, one worker each, a small static body),
one iperf3 server, HAProxy in TCP mode with round robin and ``nbthread`` equal to lbcore's
workers, and lbcore's socket frontend driven directly with a Snapshot. Then measures each
target with wrk (keep-alive, and ``Connection: close`` for one new connection per request) and
iperf3 (bulk TCP), and prints a table with the ratios. All traffic stays on loopback.

    python benchmarks/peers/run_http_peers.py [--duration 10] [--write docs/benchmarks/socket.md]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from lbcore_plugins.socket_frontend import SocketFrontend
from peer_tools import HAPROXY, NGINX, write_doc, wrk

from lbcore.model.snapshot import EndpointInfo, ServicePortInfo, Snapshot
from lbcore.runtime.interfaces import RuntimeContext

BODY = b"lbcore benchmark body, 64 bytes of static text for every GET.\n"[:63] + b"\n"
LBCORE_IP = "127.10.0.80"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(host: str, port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection((host, port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {host}:{port} after {timeout} s")


@contextmanager
def process(args: list[str], name: str) -> Iterator[subprocess.Popen]:
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def nginx_config(root: Path, port: int) -> Path:
    (root / "html").mkdir(parents=True, exist_ok=True)
    (root / "html" / "index.html").write_bytes(BODY)
    conf = root / "nginx.conf"
    conf.write_text(
        f"""
worker_processes 1;
daemon off;
master_process off;
pid {root}/nginx.pid;
error_log {root}/error.log error;
user root;
events {{ worker_connections 20000; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    keepalive_timeout 60s;
    client_body_temp_path {root}/tmp;
    proxy_temp_path {root}/tmp;
    fastcgi_temp_path {root}/tmp;
    uwsgi_temp_path {root}/tmp;
    scgi_temp_path {root}/tmp;
    server {{
        listen 127.0.0.1:{port} backlog=4096 reuseport;
        root {root}/html;
    }}
}}
"""
    )
    return conf


def haproxy_config(
    path: Path, http_port: int, bulk_port: int, backends: list[int], bulk: int, threads: int
) -> Path:
    servers = "\n".join(f"    server s{i} 127.0.0.1:{p}" for i, p in enumerate(backends))
    path.write_text(
        f"""
global
    nbthread {threads}
    maxconn 9000
defaults
    mode tcp
    timeout connect 2s
    timeout client 60s
    timeout server 60s
frontend http
    bind 127.0.0.1:{http_port} backlog 4096
    default_backend nginx
backend nginx
    balance roundrobin
{servers}
frontend bulk
    bind 127.0.0.1:{bulk_port}
    default_backend iperf
backend iperf
    server i0 127.0.0.1:{bulk}
"""
    )
    return path




@dataclass
class Figures:
    """One target's results."""

    keepalive_rps: float = 0.0
    close_rps: float = 0.0
    p99_ms: float = 0.0
    close_p99_ms: float = 0.0
    bulk_gbps: float = 0.0
    # CPU time the proxy spent per request (all its threads, user + system), a figure that
    # holds on a shared machine where requests/s follow whatever else runs
    keepalive_cpu_us: float = float("nan")
    close_cpu_us: float = float("nan")
    bulk_cpu_s_per_gb: float = float("nan")
    errors: list[str] = field(default_factory=list)


def cpu_seconds(pid: int, threads: str | None = None) -> float:
    """User + system CPU seconds of process ``pid``, or only of this process's threads whose
    name starts with ``threads``."""
    tasks = [f"/proc/{pid}/stat"]
    if threads is not None:
        tasks = [
            f"/proc/{pid}/task/{t.native_id}/stat"
            for t in threading.enumerate()
            if t.name.startswith(threads)
        ]
    total = 0
    for path in tasks:
        fields = Path(path).read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / os.sysconf("SC_CLK_TCK")


def iperf(host: str, port: int, duration: int) -> float:
    out = subprocess.run(
        ["iperf3", "-c", host, "-p", str(port), "-t", str(duration), "-J"],
        capture_output=True,
        text=True,
        timeout=duration + 30,
    ).stdout
    data = json.loads(out)
    iperf.bytes = data["end"]["sum_received"]["bytes"]  # type: ignore[attr-defined]
    return data["end"]["sum_received"]["bits_per_second"] / 1e9


def measure(
    name: str,
    host: str,
    port: int,
    bulk_port: int,
    duration: int,
    connections: int,
    cpu: Callable[[], float] | None = None,
) -> Figures:
    url = f"http://{host}:{port}/"
    f = Figures()
    kept, closed = (wrk(url, duration, connections, close, cpu=cpu) for close in (False, True))
    f.keepalive_rps, f.p99_ms, f.keepalive_cpu_us = kept.rps, kept.p99_ms, kept.cpu_us
    f.close_rps, f.close_p99_ms, f.close_cpu_us = closed.rps, closed.p99_ms, closed.cpu_us
    f.errors += [f"{what}: {run.errors}" for what, run in (("keep-alive", kept), ("close", closed))
                 if run.errors]
    before = cpu() if cpu else 0.0
    f.bulk_gbps = iperf(host, bulk_port, max(3, duration // 2))
    if cpu and iperf.bytes:  # type: ignore[attr-defined]
        f.bulk_cpu_s_per_gb = (cpu() - before) / iperf.bytes * 1e9  # type: ignore[attr-defined]
    print(
        f"  {name:8s} keep-alive {f.keepalive_rps:10.0f}/s  p99 {f.p99_ms:7.2f} ms  "
        f"close {f.close_rps:9.0f}/s  bulk {f.bulk_gbps:6.2f} Gbit/s  "
        f"CPU/request {f.keepalive_cpu_us:5.1f} us, /connection {f.close_cpu_us:5.1f} us, "
        f"/GB {f.bulk_cpu_s_per_gb:5.3f} s",
        flush=True,
    )
    return f


def median(runs: list[Figures]) -> Figures:
    """Each figure's median over the rounds (rounds alternate the targets, so a burst of
    load from elsewhere on the machine hits every target alike)."""

    def mid(values: list[float]) -> float:
        return sorted(values)[len(values) // 2]

    return Figures(
        keepalive_rps=mid([r.keepalive_rps for r in runs]),
        close_rps=mid([r.close_rps for r in runs]),
        p99_ms=mid([r.p99_ms for r in runs]),
        close_p99_ms=mid([r.close_p99_ms for r in runs]),
        bulk_gbps=mid([r.bulk_gbps for r in runs]),
        keepalive_cpu_us=mid([r.keepalive_cpu_us for r in runs]),
        close_cpu_us=mid([r.close_cpu_us for r in runs]),
        bulk_cpu_s_per_gb=mid([r.bulk_cpu_s_per_gb for r in runs]),
        errors=[e for r in runs for e in r.errors],
    )


def lbcore_snapshot(backends: list[int], bulk: int) -> Snapshot:
    def sp(name: str, port: int, eps: list[int]) -> ServicePortInfo:
        return ServicePortInfo(
            namespace="bench",
            name=name,
            port_name="",
            protocol="TCP",
            port=port,
            cluster_ips=(LBCORE_IP,),
            endpoints=tuple(EndpointInfo("127.0.0.1", p) for p in eps),
        )

    ports = [sp("http", 8080, backends), sp("bulk", 5201, [bulk])]
    return Snapshot(version=1, service_ports=MappingProxyType({p.key: p for p in ports}))


def run(
    duration: int, connections: int, workers: int, options: dict, rounds: int = 3
) -> dict[str, Figures]:
    for tool in (NGINX, HAPROXY, "wrk", "iperf3"):
        if shutil.which(tool) is None:
            sys.exit(f"needs {tool}: apt-get install nginx haproxy wrk iperf3")
    with tempfile.TemporaryDirectory(prefix="lbcore-peers-") as tmp, ExitStack() as stack:
        root = Path(tmp)
        backends = [free_port() for _ in range(3)]
        for i, port in enumerate(backends):
            conf = nginx_config(root / f"nginx{i}", port)
            (root / f"nginx{i}" / "tmp").mkdir(exist_ok=True)
            stack.enter_context(
                process([NGINX, "-c", str(conf), "-p", str(root / f"nginx{i}")], "nginx")
            )
        bulk = free_port()
        stack.enter_context(process(["iperf3", "-s", "-B", "127.0.0.1", "-p", str(bulk)], "iperf3"))
        hp, hb = free_port(), free_port()
        cfg = haproxy_config(root / "haproxy.cfg", hp, hb, backends, bulk, workers)
        haproxy = stack.enter_context(process([HAPROXY, "-f", str(cfg), "-db"], "haproxy"))
        for port in [*backends, bulk, hp, hb]:
            wait_port("127.0.0.1", port)
        fe = SocketFrontend({"workers": workers, **options}, RuntimeContext())
        fe.start()
        stack.callback(fe.stop)
        fe.sync(lbcore_snapshot(backends, bulk), frozenset({"bench/http", "bench/bulk"}))
        wait_port(LBCORE_IP, 8080)
        # direct: one nginx alone for requests (the proxies spread over three), iperf3 alone
        print(
            f"measuring: {duration} s per wrk run, {connections} connections, "
            f"{workers} proxy threads",
            flush=True,
        )
        targets = {
            "direct": ("127.0.0.1", backends[0], bulk),
            "haproxy": ("127.0.0.1", hp, hb),
            "lbcore": (LBCORE_IP, 8080, 5201),
        }
        cpus: dict[str, Callable[[], float] | None] = {
            "direct": None,
            "haproxy": lambda: cpu_seconds(haproxy.pid),
            "lbcore": lambda: cpu_seconds(os.getpid(), threads="lbcore-proxy"),
        }
        runs: dict[str, list[Figures]] = {name: [] for name in targets}
        for i in range(rounds):
            print(f"round {i + 1}/{rounds}", flush=True)
            for name, (host, port, bulk_port) in targets.items():
                runs[name].append(
                    measure(name, host, port, bulk_port, duration, connections, cpus[name])
                )
        results = {name: median(r) for name, r in runs.items()}
        results["lbcore"].errors += [
            f"{k}={v}" for k, v in fe.stats().items() if k in ("rejected", "connect_failed") and v
        ]
    return results


def table(results: dict[str, Figures]) -> tuple[str, list[str]]:
    h, lb, d = results["haproxy"], results["lbcore"], results["direct"]
    rows = [
        "| | direct (1 nginx / iperf3) | HAProxy | lbcore | lbcore / HAProxy | target |",
        "|---|---:|---:|---:|---:|---|",
        f"| HTTP keep-alive, requests/s | {d.keepalive_rps:,.0f} | {h.keepalive_rps:,.0f} | "
        f"{lb.keepalive_rps:,.0f} | {lb.keepalive_rps / h.keepalive_rps:.2f}x | >= 1.0x |",
        f"| new connection per request, requests/s | {d.close_rps:,.0f} | {h.close_rps:,.0f} | "
        f"{lb.close_rps:,.0f} | {lb.close_rps / h.close_rps:.2f}x | >= 1.0x |",
        f"| bulk TCP (iperf3), Gbit/s | {d.bulk_gbps:.2f} | {h.bulk_gbps:.2f} | "
        f"{lb.bulk_gbps:.2f} | {lb.bulk_gbps / h.bulk_gbps:.2f}x "
        f"({lb.bulk_gbps / d.bulk_gbps:.2f}x direct) | >= 1.0x (>= 0.6x direct) |",
        f"| keep-alive p99 latency, ms | {d.p99_ms:.2f} | {h.p99_ms:.2f} | {lb.p99_ms:.2f} | "
        f"{lb.p99_ms / h.p99_ms:.2f}x | <= 1.2x |",
        f"| proxy CPU per keep-alive request, us | | {h.keepalive_cpu_us:.1f} | "
        f"{lb.keepalive_cpu_us:.1f} | {lb.keepalive_cpu_us / h.keepalive_cpu_us:.2f}x | |",
        f"| proxy CPU per new connection, us | | {h.close_cpu_us:.1f} | {lb.close_cpu_us:.1f} | "
        f"{lb.close_cpu_us / h.close_cpu_us:.2f}x | |",
        f"| proxy CPU per GB in bulk, s | | {h.bulk_cpu_s_per_gb:.3f} | "
        f"{lb.bulk_cpu_s_per_gb:.3f} | {lb.bulk_cpu_s_per_gb / h.bulk_cpu_s_per_gb:.2f}x | |",
        f"| connection-per-request p99 latency, ms | {d.close_p99_ms:.2f} | "
        f"{h.close_p99_ms:.2f} | {lb.close_p99_ms:.2f} | {lb.close_p99_ms / h.close_p99_ms:.2f}x | |",
    ]
    ratios = [
        f"RATIO socket keep-alive rps vs haproxy: {lb.keepalive_rps / h.keepalive_rps:.2f}x",
        f"RATIO socket connection-per-request rps vs haproxy: {lb.close_rps / h.close_rps:.2f}x",
        f"RATIO socket bulk throughput vs haproxy: {lb.bulk_gbps / h.bulk_gbps:.2f}x",
        f"RATIO socket bulk throughput vs direct: {lb.bulk_gbps / d.bulk_gbps:.2f}x",
        f"RATIO socket p99 latency vs haproxy: {lb.p99_ms / h.p99_ms:.2f}x",
        f"RATIO socket CPU per new connection vs haproxy: {lb.close_cpu_us / h.close_cpu_us:.2f}x",
        f"RATIO socket CPU per GB in bulk vs haproxy: "
        f"{lb.bulk_cpu_s_per_gb / h.bulk_cpu_s_per_gb:.2f}x",
        f"RATIO socket CPU per keep-alive request vs haproxy: "
        f"{lb.keepalive_cpu_us / h.keepalive_cpu_us:.2f}x",
        f"RATIO socket connection-per-request p99 latency vs haproxy: "
        f"{lb.close_p99_ms / h.close_p99_ms:.2f}x",
    ]
    return "\n".join(rows), ratios


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=64, help="wrk connections")
    parser.add_argument("--workers", type=int, default=2, help="proxy threads of both")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (median)")
    parser.add_argument("--splice", default="auto", choices=["auto", "always", "never"])
    parser.add_argument(
        "--algorithm",
        default="round_robin",
        help="lbcore's balancing algorithm (HAProxy: roundrobin)",
    )
    parser.add_argument(
        "--no-reuseport", action="store_true", help="lbcore: one listening socket shared by workers"
    )
    parser.add_argument("--write", type=Path, help="also write the table into this markdown file")
    args = parser.parse_args(argv)
    options = {
        "splice": args.splice,
        "algorithm": args.algorithm,
        "reuseport": not args.no_reuseport,
    }
    results = run(args.duration, args.connections, args.workers, options, args.rounds)
    text, ratios = table(results)
    print()
    print(text)
    print()
    for line in ratios:
        print(line)
    for name, f in results.items():
        if f.errors:
            print(f"{name}: {'; '.join(f.errors)}")
    if args.write:
        write_doc(args.write, "peers-table", text, doc_command(args))
    return 0


def doc_command(args: argparse.Namespace) -> str:
    """The command line that makes this run's figures, as the docs page shows it."""
    return (
        "python benchmarks/peers/run_http_peers.py "
        + " ".join(
            f"--{k} {v}"
            for k, v in (
                ("duration", args.duration),
                ("connections", args.connections),
                ("workers", args.workers),
                ("rounds", args.rounds),
                ("splice", args.splice),
                ("algorithm", args.algorithm),
            )
        )
        + (" --no-reuseport" if args.no_reuseport else "")
    )


if __name__ == "__main__":
    sys.exit(main())
