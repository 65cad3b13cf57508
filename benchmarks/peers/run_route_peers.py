"""The route frontend against HAProxy in HTTP mode, in one run, over the same nginx backends.

Starts three nginx backends (one worker each, a 64-byte static body, on 127.0.0.2-4 and one
port), HAProxy 2.6 in ``mode http`` routing by ``hdr(host)`` with ``http-reuse safe``,
round robin, the same forwarded headers lbcore adds and ``nbthread`` equal to lbcore's workers,
and lbcore's route frontend fed a Route for the same host (edge TLS, ``Allow``, so that one
route serves both listeners). Both terminate TLS with the same ECDSA P-256 certificate, made
here. Then wrk measures, for each proxy in alternating rounds (the median is kept):

- HTTP keep-alive: requests/s and p99;
- HTTP with a new client connection per request (``Connection: close``);
- HTTPS with a new connection per request: each is a full TLS 1.3 handshake (wrk resumes no
  session), so requests/s is handshakes/s;
- HTTPS keep-alive: requests/s;

and the proxy's CPU time per request (its threads, user + system). All traffic stays on
loopback.

    python benchmarks/peers/run_route_peers.py [--duration 8] [--write docs/benchmarks/routes.md]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import astuple, dataclass
from pathlib import Path

from peer_tools import HAPROXY, NGINX, write_doc, wrk
from run_http_peers import cpu_seconds, free_port, nginx_config, process, wait_port

from lbcore.model.service_table import ServiceTable
from lbcore.runtime.interfaces import RuntimeContext
from lbcore.runtime.tls import self_signed

HOST = "app.bench.test"
BACKEND_IPS = ("127.0.0.2", "127.0.0.3", "127.0.0.4")


def certificate(root: Path) -> tuple[Path, Path, Path]:
    """A self-signed ECDSA P-256 certificate for HOST: (cert, key, cert+key for HAProxy)."""
    cert_pem, key_pem = self_signed([HOST], days=30)
    paths = root / "cert.pem", root / "key.pem", root / "combined.pem"
    paths[0].write_bytes(cert_pem)
    paths[1].write_bytes(key_pem)
    paths[2].write_bytes(cert_pem + key_pem)
    return paths


def haproxy_config(path: Path, http_port: int, https_port: int, backend_port: int,
                   combined: Path, threads: int) -> Path:
    servers = "\n".join(f"    server s{i} {ip}:{backend_port}" for i, ip in enumerate(BACKEND_IPS))
    path.write_text(f"""
global
    nbthread {threads}
    maxconn 9000
    ssl-default-bind-options ssl-min-ver TLSv1.2 no-tls-tickets
    tune.ssl.cachesize 0
defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 300s
    timeout http-request 10s
frontend http
    bind 127.0.0.1:{http_port} backlog 4096
    use_backend app if {{ hdr(host) -i {HOST} }}
frontend https
    bind 127.0.0.1:{https_port} ssl crt {combined} backlog 4096
    use_backend app if {{ hdr(host) -i {HOST} }}
backend app
    balance roundrobin
    http-reuse safe
    option forwardfor
    http-request set-header X-Forwarded-Host %[req.hdr(host)]
    http-request set-header X-Forwarded-Port %[dst_port]
    http-request set-header X-Forwarded-Proto https if {{ ssl_fc }}
    http-request set-header X-Forwarded-Proto http if !{{ ssl_fc }}
    http-request set-header Forwarded for=%[src];host=%[req.hdr(host)];proto=%[ssl_fc,iif(https,http)]
{servers}
""")
    return path


@dataclass
class Figures:
    keepalive_rps: float = 0.0
    keepalive_p99_ms: float = 0.0
    close_rps: float = 0.0
    handshakes: float = 0.0
    https_keepalive_rps: float = 0.0
    keepalive_cpu_us: float = float("nan")
    close_cpu_us: float = float("nan")
    handshake_cpu_us: float = float("nan")
    https_cpu_us: float = float("nan")
    errors: str = ""


MODES = ("keepalive", "close", "handshake", "https")


def measure(name: str, http_port: int, https_port: int, duration: int, connections: int,
            cpu: Callable[[], float], modes: tuple[str, ...] = MODES) -> Figures:
    f = Figures()
    errors = []
    runs = (("keepalive", f"http://127.0.0.1:{http_port}/", False),
            ("close", f"http://127.0.0.1:{http_port}/", True),
            ("handshake", f"https://127.0.0.1:{https_port}/", True),
            ("https", f"https://127.0.0.1:{https_port}/", False))
    for kind, url, close in runs:
        if kind not in modes:
            continue
        rps, p99, _, err, per_request = astuple(
            wrk(url, duration, connections, close, (f"Host: {HOST}",), cpu))
        if err:
            errors.append(f"{kind}: {err}")
        if kind == "keepalive":
            f.keepalive_rps, f.keepalive_p99_ms, f.keepalive_cpu_us = rps, p99, per_request
        elif kind == "close":
            f.close_rps, f.close_cpu_us = rps, per_request
        elif kind == "handshake":
            f.handshakes, f.handshake_cpu_us = rps, per_request
        else:
            f.https_keepalive_rps, f.https_cpu_us = rps, per_request
    f.errors = "; ".join(errors)
    print(f"  {name:8s} keep-alive {f.keepalive_rps:9.0f}/s p99 {f.keepalive_p99_ms:6.2f} ms  "
          f"close {f.close_rps:8.0f}/s  TLS handshakes {f.handshakes:7.0f}/s  "
          f"HTTPS keep-alive {f.https_keepalive_rps:8.0f}/s  CPU/request {f.keepalive_cpu_us:5.1f} "
          f"/ {f.close_cpu_us:5.1f} / {f.handshake_cpu_us:6.1f} / {f.https_cpu_us:5.1f} us"
          + (f"  errors: {f.errors}" if f.errors else ""), flush=True)
    return f


def median(runs: list[Figures]) -> Figures:
    def mid(attr: str) -> float:
        return sorted(getattr(r, attr) for r in runs)[len(runs) // 2]

    out = Figures(**{k: mid(k) for k in Figures.__dataclass_fields__ if k != "errors"})
    out.errors = "; ".join(r.errors for r in runs if r.errors)
    return out


def lbcore_cluster(fe, backend_port: int) -> None:
    """A Service, its EndpointSlice (the three nginx) and a Route for HOST, fed to ``fe``."""
    table = ServiceTable(allocate=False)
    meta = {"namespace": "bench", "uid": "u1", "creationTimestamp": "2026-12-07T10:00:00Z"}
    cert = Path(fe.route_settings["default_certificate"]).read_text()
    key = Path(fe.route_settings["default_key"]).read_text()
    for obj in (
        {"apiVersion": "v1", "kind": "Service", "metadata": {**meta, "name": "app"},
         "spec": {"clusterIP": "10.96.0.80", "ports": [{"port": 80, "targetPort": backend_port}]}},
        {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
         "metadata": {**meta, "name": "app-1", "labels": {"kubernetes.io/service-name": "app"}},
         "endpoints": [{"addresses": [ip], "conditions": {"ready": True}} for ip in BACKEND_IPS],
         "ports": [{"name": "", "port": backend_port, "protocol": "TCP"}]},
        {"apiVersion": "route.openshift.io/v1", "kind": "Route", "metadata": {**meta, "name": "app"},
         "spec": {"host": HOST, "to": {"kind": "Service", "name": "app"},
                  "tls": {"termination": "edge", "certificate": cert, "key": key,
                          "insecureEdgeTerminationPolicy": "Allow"}}},
    ):
        table.apply(obj)
    fe.sync(table.snapshot(), frozenset())


def negotiated(port: int) -> str:
    """The protocol and cipher suite a default OpenSSL client (as wrk's) gets from ``port``."""
    out = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{port}",
                          "-servername", HOST], input="", capture_output=True, text=True,
                         timeout=10).stdout
    m = re.search(r"New, (\S+), Cipher is (\S+)", out)
    return f"{m.group(1)} {m.group(2)}" if m else "unknown (no handshake)"


def run(duration: int, connections: int, workers: int, rounds: int,
        modes: tuple[str, ...] = MODES) -> dict[str, Figures]:
    from lbcore_plugins.route_frontend import RouteFrontend

    for tool in (NGINX, HAPROXY, "wrk"):
        if shutil.which(tool) is None:
            sys.exit(f"needs {tool}: apt-get install nginx haproxy wrk")
    with tempfile.TemporaryDirectory(prefix="lbcore-route-peers-") as tmp, ExitStack() as stack:
        root = Path(tmp)
        cert, key, combined = certificate(root)
        backend_port = free_port()
        for i, ip in enumerate(BACKEND_IPS):
            conf = nginx_config(root / f"nginx{i}", backend_port)
            conf.write_text(conf.read_text().replace(f"127.0.0.1:{backend_port}",
                                                     f"{ip}:{backend_port}"))
            (root / f"nginx{i}" / "tmp").mkdir(exist_ok=True)
            stack.enter_context(process([NGINX, "-c", str(conf), "-p", str(root / f"nginx{i}")],
                                        "nginx"))
        hp, hps = free_port(), free_port()
        cfg = haproxy_config(root / "haproxy.cfg", hp, hps, backend_port, combined, workers)
        haproxy = stack.enter_context(process([HAPROXY, "-f", str(cfg), "-db"], "haproxy"))
        for ip in BACKEND_IPS:
            wait_port(ip, backend_port)
        wait_port("127.0.0.1", hp)
        fe = RouteFrontend({"workers": workers, "http_port": 0, "https_port": 0,
                            "default_certificate": str(cert), "default_key": str(key),
                            "tls_session_resumption": False},
                           RuntimeContext())
        fe.start()
        stack.callback(fe.stop)
        lbcore_cluster(fe, backend_port)
        lp, lps = fe.listening["http"][1], fe.listening["https"][1]
        print(f"measuring: {duration} s per wrk run, {connections} connections, {workers} proxy "
              f"threads; load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
        for name, port in (("haproxy", hps), ("lbcore", lps)):
            print(f"  {name} negotiates {negotiated(port)}", flush=True)
        targets = {"haproxy": (hp, hps, lambda: cpu_seconds(haproxy.pid)),
                   "lbcore": (lp, lps, lambda: cpu_seconds(os.getpid(), threads="lbcore-proxy"))}
        runs: dict[str, list[Figures]] = {name: [] for name in targets}
        for i in range(rounds):
            print(f"round {i + 1}/{rounds}", flush=True)
            for name, (http_port, https_port, cpu) in targets.items():
                runs[name].append(measure(name, http_port, https_port, duration, connections, cpu,
                                          modes))
        results = {name: median(r) for name, r in runs.items()}
        stats = fe.stats()
        results["lbcore"].errors += "".join(
            f"; {k}={stats[k]}" for k in ("bad_gateway", "unavailable", "tls_failures",
                                          "backend_tls_failures") if stats[k])
        print(f"lbcore's TLS counters: {stats['tls_handshakes']} handshakes, "
              f"{stats['tls_failures']} failures, {stats['tls_aborted']} cut by the client "
              "before their end (wrk's connections when a timed run stops)", flush=True)
    return results


def ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def table(results: dict[str, Figures]) -> tuple[str, list[str]]:
    h, lb = results["haproxy"], results["lbcore"]
    rows = [
        "| | HAProxy 2.6 (mode http) | lbcore route | lbcore / HAProxy | target |",
        "|---|---:|---:|---:|---|",
        f"| HTTP keep-alive, requests/s | {h.keepalive_rps:,.0f} | {lb.keepalive_rps:,.0f} | "
        f"{ratio(lb.keepalive_rps, h.keepalive_rps):.2f}x | >= 1.0x |",
        f"| HTTP keep-alive p99, ms | {h.keepalive_p99_ms:.2f} | {lb.keepalive_p99_ms:.2f} | "
        f"{ratio(lb.keepalive_p99_ms, h.keepalive_p99_ms):.2f}x | <= 1.2x |",
        f"| HTTP, new connection per request, requests/s | {h.close_rps:,.0f} | "
        f"{lb.close_rps:,.0f} | {ratio(lb.close_rps, h.close_rps):.2f}x | >= 1.0x |",
        f"| TLS 1.3 full handshakes/s (ECDSA P-256, one request each) | {h.handshakes:,.0f} | "
        f"{lb.handshakes:,.0f} | {ratio(lb.handshakes, h.handshakes):.2f}x | >= 1.0x |",
        f"| HTTPS keep-alive, requests/s | {h.https_keepalive_rps:,.0f} | "
        f"{lb.https_keepalive_rps:,.0f} | {ratio(lb.https_keepalive_rps, h.https_keepalive_rps):.2f}x "
        "| >= 1.0x |",
        f"| proxy CPU per keep-alive request, us | {h.keepalive_cpu_us:.1f} | "
        f"{lb.keepalive_cpu_us:.1f} | {ratio(lb.keepalive_cpu_us, h.keepalive_cpu_us):.2f}x | |",
        f"| proxy CPU per request with a new connection, us | {h.close_cpu_us:.1f} | "
        f"{lb.close_cpu_us:.1f} | {ratio(lb.close_cpu_us, h.close_cpu_us):.2f}x | |",
        f"| proxy CPU per TLS handshake and request, us | {h.handshake_cpu_us:.1f} | "
        f"{lb.handshake_cpu_us:.1f} | {ratio(lb.handshake_cpu_us, h.handshake_cpu_us):.2f}x | |",
        f"| proxy CPU per HTTPS keep-alive request, us | {h.https_cpu_us:.1f} | "
        f"{lb.https_cpu_us:.1f} | {ratio(lb.https_cpu_us, h.https_cpu_us):.2f}x | |",
    ]
    ratios = [
        f"RATIO route keep-alive rps vs haproxy: {ratio(lb.keepalive_rps, h.keepalive_rps):.2f}x",
        f"RATIO route keep-alive p99 vs haproxy: {ratio(lb.keepalive_p99_ms, h.keepalive_p99_ms):.2f}x",
        f"RATIO route connection-per-request rps vs haproxy: {ratio(lb.close_rps, h.close_rps):.2f}x",
        f"RATIO route TLS handshakes/s vs haproxy: {ratio(lb.handshakes, h.handshakes):.2f}x",
        f"RATIO route HTTPS keep-alive rps vs haproxy: "
        f"{ratio(lb.https_keepalive_rps, h.https_keepalive_rps):.2f}x",
        f"RATIO route CPU per keep-alive request vs haproxy: "
        f"{ratio(lb.keepalive_cpu_us, h.keepalive_cpu_us):.2f}x",
    ]
    return "\n".join(rows), ratios


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=int, default=8, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=64, help="wrk connections")
    parser.add_argument("--workers", type=int, default=2, help="proxy threads of both")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (median)")
    parser.add_argument("--modes", default=",".join(MODES),
                        help=f"comma-separated subset of {','.join(MODES)} (only for a look: "
                             "--write needs all)")
    parser.add_argument("--write", type=Path, help="also write the table into this markdown file")
    args = parser.parse_args(argv)
    modes = tuple(m for m in args.modes.split(",") if m)
    unknown = set(modes) - set(MODES)
    if unknown or not modes:
        parser.error(f"--modes: {args.modes!r} is not a subset of {','.join(MODES)}")
    if args.write and set(modes) != set(MODES):
        parser.error("--write needs every mode measured (leave --modes out)")
    results = run(args.duration, args.connections, args.workers, args.rounds, modes)
    text, ratios = table(results)
    print()
    print(text)
    print()
    for line in ratios:
        print(line)
    for name, f in results.items():
        if f.errors:
            print(f"{name}: {f.errors}")
    if args.write:
        command = (f"python benchmarks/peers/run_route_peers.py --duration {args.duration} "
                   f"--connections {args.connections} --workers {args.workers} "
                   f"--rounds {args.rounds}")
        write_doc(args.write, "route-peers-table", text, command)
    return 0


if __name__ == "__main__":
    sys.exit(main())
