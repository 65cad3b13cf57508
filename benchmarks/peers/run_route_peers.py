"""The route frontend against HAProxy in HTTP mode and nginx as a reverse proxy, in one run,
over the same nginx backends.

Starts three nginx backends (one worker each, a 64-byte static body, on 127.0.0.2-4 and one
port), HAProxy 2.6 in ``mode http`` routing by ``hdr(host)`` with ``http-reuse safe``,
round robin, the same forwarded headers lbcore adds and ``nbthread`` equal to lbcore's workers,
nginx (``--peers``: as a second peer) with ``proxy_pass`` to the same backends over an upstream
keepalive pool and as many worker processes, and lbcore's route frontend fed a Route for the
same host (edge TLS, ``Allow``, so that one route serves both listeners). All end TLS with the
same ECDSA P-256 certificate, made here, without session resumption; the cipher suite each
negotiates with a default OpenSSL client is printed. Then wrk measures, in rounds where each
mode runs on every target back to back (the order turning each round):

- HTTP keep-alive: requests/s and p99;
- HTTP with a new client connection per request (``Connection: close``);
- HTTPS with a new connection per request: each is a full TLS 1.3 handshake (wrk resumes no
  session), so requests/s is handshakes/s;
- HTTPS keep-alive: requests/s;

and the proxy's CPU time per request (its threads or processes, user + system). Each figure is
the median over the rounds; each ratio the median of lbcore's per-round ratio to the peer. All
traffic stays on loopback.

    python benchmarks/peers/run_route_peers.py [--duration 8] [--rounds 3] [--peers haproxy,nginx]
        [--modes keepalive,close,handshake,https] [--write docs/benchmarks/routes.md]
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
from typing import Any

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


def nginx_proxy_config(root: Path, http_port: int, https_port: int, backend_port: int,
                       cert: Path, key: Path, workers: int) -> Path:
    """nginx as the same reverse proxy: ``workers`` worker processes (each with its own
    ``reuseport`` sockets, as lbcore's workers), HOST served by proxy_pass to the three
    backends round robin over kept-alive connections (``keepalive`` upstream pool, HTTP/1.1),
    the same forwarded headers, any other host 404; TLS 1.2/1.3 with the same certificate and
    no session resumption."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "tmp").mkdir(exist_ok=True)
    servers = "\n".join(f"        server {ip}:{backend_port};" for ip in BACKEND_IPS)
    path = root / "nginx.conf"
    path.write_text(f"""
worker_processes {workers};
daemon off;
master_process on;
pid {root}/nginx.pid;
error_log {root}/error.log error;
user root;
events {{ worker_connections 20000; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
    client_body_temp_path {root}/tmp;
    proxy_temp_path {root}/tmp;
    fastcgi_temp_path {root}/tmp;
    uwsgi_temp_path {root}/tmp;
    scgi_temp_path {root}/tmp;
    ssl_certificate {cert};
    ssl_certificate_key {key};
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_session_tickets off;
    ssl_session_cache off;
    upstream app {{
{servers}
        keepalive 256;
    }}
    server {{
        listen 127.0.0.1:{http_port} default_server backlog=4096 reuseport;
        listen 127.0.0.1:{https_port} ssl default_server backlog=4096 reuseport;
        return 404;
    }}
    server {{
        listen 127.0.0.1:{http_port};
        listen 127.0.0.1:{https_port} ssl;
        server_name {HOST};
        location / {{
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Host $host;
            proxy_set_header X-Forwarded-Port $server_port;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header Forwarded "for=$remote_addr;host=$host;proto=$scheme";
        }}
    }}
}}
""")
    return path


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` and of its children (nginx's workers)."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if stat.parent.name == str(pid) or fields[1] == str(pid):  # ppid
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


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
PEERS = ("haproxy", "nginx")


def measure(kind: str, http_port: int, https_port: int, duration: int, connections: int,
            cpu: Callable[[], float], f: Figures) -> None:
    """One wrk run of ``kind`` (a mode of MODES), its figures written into ``f``."""
    url = f"{'http' if kind in ('keepalive', 'close') else 'https'}://127.0.0.1:" \
          f"{http_port if kind in ('keepalive', 'close') else https_port}/"
    rps, p99, _, err, per_request = astuple(
        wrk(url, duration, connections, kind in ("close", "handshake"), (f"Host: {HOST}",), cpu))
    if err:
        f.errors += f"{'; ' if f.errors else ''}{kind}: {err}"
    if kind == "keepalive":
        f.keepalive_rps, f.keepalive_p99_ms, f.keepalive_cpu_us = rps, p99, per_request
    elif kind == "close":
        f.close_rps, f.close_cpu_us = rps, per_request
    elif kind == "handshake":
        f.handshakes, f.handshake_cpu_us = rps, per_request
    else:
        f.https_keepalive_rps, f.https_cpu_us = rps, per_request


def show(name: str, f: Figures) -> None:
    print(f"  {name:8s} keep-alive {f.keepalive_rps:9.0f}/s p99 {f.keepalive_p99_ms:6.2f} ms  "
          f"close {f.close_rps:8.0f}/s  TLS handshakes {f.handshakes:7.0f}/s  "
          f"HTTPS keep-alive {f.https_keepalive_rps:8.0f}/s  CPU/request {f.keepalive_cpu_us:5.1f} "
          f"/ {f.close_cpu_us:5.1f} / {f.handshake_cpu_us:6.1f} / {f.https_cpu_us:5.1f} us"
          + (f"  errors: {f.errors}" if f.errors else ""), flush=True)


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
    cert = Path(fe.route_settings.default_certificate).read_text()
    key = Path(fe.route_settings.default_key).read_text()
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
        modes: tuple[str, ...] = MODES, peers: tuple[str, ...] = PEERS) -> dict[str, Any]:
    """Each target's median Figures by name, and under "ratios" lbcore's per-round ratios to
    each peer (medians)."""
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
        np_, nps = free_port(), free_port()
        if "nginx" in peers:
            nconf = nginx_proxy_config(root / "nginx-proxy", np_, nps, backend_port, cert, key,
                                       workers)
            nginx = stack.enter_context(process([NGINX, "-c", str(nconf), "-p",
                                                 str(root / "nginx-proxy")], "nginx"))
        for ip in BACKEND_IPS:
            wait_port(ip, backend_port)
        wait_port("127.0.0.1", hp)
        if "nginx" in peers:
            wait_port("127.0.0.1", np_)
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
        targets = {"haproxy": (hp, hps, lambda: cpu_seconds(haproxy.pid))}
        if "nginx" in peers:
            targets["nginx"] = (np_, nps, lambda: tree_cpu_seconds(nginx.pid))
        targets["lbcore"] = (lp, lps, lambda: cpu_seconds(os.getpid(), threads="lbcore-proxy"))
        for name, (_, port, _) in targets.items():
            print(f"  {name} negotiates {negotiated(port)}", flush=True)
        runs: dict[str, list[Figures]] = {name: [] for name in targets}
        names = list(targets)
        for i in range(rounds):
            print(f"round {i + 1}/{rounds}", flush=True)
            figures = {name: Figures() for name in names}
            # each mode measured on every target back to back (the order turning each round),
            # so that a change in the machine's load falls on all of them alike
            for kind in modes:
                for name in names[i % len(names):] + names[:i % len(names)]:
                    http_port, https_port, cpu = targets[name]
                    measure(kind, http_port, https_port, duration, connections, cpu,
                            figures[name])
            for name in names:
                show(name, figures[name])
                runs[name].append(figures[name])
        results = {name: median(r) for name, r in runs.items()}
        results["ratios"] = ratio_medians(runs)
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


def ratio_medians(runs: dict[str, list[Figures]]) -> dict[str, Figures]:
    """For each peer, the median over the rounds of lbcore's figure over the peer's in the
    same round (a Figures of ratios): steadier than the ratio of the medians when the
    machine's load moves between rounds."""
    out = {}
    for peer, peer_runs in runs.items():
        if peer == "lbcore":
            continue
        per_round = [Figures(**{k: ratio(getattr(lb, k), getattr(p, k))
                                for k in Figures.__dataclass_fields__ if k != "errors"})
                     for lb, p in zip(runs["lbcore"], peer_runs, strict=False)]
        out[peer] = median(per_round)
    return out


#: the table's rows: label, Figures attribute, number format, target (lbcore / peer)
ROWS = (
    ("HTTP keep-alive, requests/s", "keepalive_rps", ",.0f", ">= 1.0x"),
    ("HTTP keep-alive p99, ms", "keepalive_p99_ms", ".2f", "<= 1.2x"),
    ("HTTP, new connection per request, requests/s", "close_rps", ",.0f", ">= 1.0x"),
    ("TLS 1.3 full handshakes/s (ECDSA P-256, one request each)", "handshakes", ",.0f",
     ">= 1.0x"),
    ("HTTPS keep-alive, requests/s", "https_keepalive_rps", ",.0f", ">= 1.0x"),
    ("proxy CPU per keep-alive request, us", "keepalive_cpu_us", ".1f", ""),
    ("proxy CPU per request with a new connection, us", "close_cpu_us", ".1f", ""),
    ("proxy CPU per TLS handshake and request, us", "handshake_cpu_us", ".1f", ""),
    ("proxy CPU per HTTPS keep-alive request, us", "https_cpu_us", ".1f", ""),
)
TITLES = {"haproxy": "HAProxy 2.6 (mode http)", "nginx": "nginx 1.22 (proxy_pass)"}
RATIO_NAMES = {"keepalive_rps": "keep-alive rps", "keepalive_p99_ms": "keep-alive p99",
               "close_rps": "connection-per-request rps", "handshakes": "TLS handshakes/s",
               "https_keepalive_rps": "HTTPS keep-alive rps",
               "keepalive_cpu_us": "CPU per keep-alive request"}


def table(results: dict[str, Any]) -> tuple[str, list[str]]:
    """The markdown table (each peer's median figures, lbcore's, then the median of lbcore's
    per-round ratio to each peer) and the RATIO lines."""
    lb, ratios_of = results["lbcore"], results["ratios"]
    peers = [name for name in results if name not in ("lbcore", "ratios")]
    head = ["", *(TITLES[p] for p in peers), "lbcore route",
            *(f"lbcore / {TITLES[p].split(' (')[0]}" for p in peers), "target"]
    rows = ["| " + " | ".join(head) + " |",
            "|---|" + "---:|" * (2 * len(peers) + 1) + "---|"]
    for label, attr, fmt, target in ROWS:
        cells = [label, *(format(getattr(results[p], attr), fmt) for p in peers),
                 format(getattr(lb, attr), fmt),
                 *(f"{getattr(ratios_of[p], attr):.2f}x" for p in peers),
                 target]
        rows.append("| " + " | ".join(cells) + " |")
    ratios = [f"RATIO route {what} vs {p}: {getattr(ratios_of[p], attr):.2f}x"
              for p in peers for attr, what in RATIO_NAMES.items()]
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
    parser.add_argument("--peers", default=",".join(PEERS),
                        help=f"comma-separated subset of {','.join(PEERS)} (haproxy always runs)")
    parser.add_argument("--write", type=Path, help="also write the table into this markdown file")
    args = parser.parse_args(argv)
    modes = tuple(m for m in args.modes.split(",") if m)
    unknown = set(modes) - set(MODES)
    if unknown or not modes:
        parser.error(f"--modes: {args.modes!r} is not a subset of {','.join(MODES)}")
    if args.write and set(modes) != set(MODES):
        parser.error("--write needs every mode measured (leave --modes out)")
    peers = tuple(dict.fromkeys(("haproxy", *(p for p in args.peers.split(",") if p))))
    if set(peers) - set(PEERS):
        parser.error(f"--peers: {args.peers!r} is not a subset of {','.join(PEERS)}")
    results = run(args.duration, args.connections, args.workers, args.rounds, modes, peers)
    text, ratios = table(results)
    print()
    print(text)
    print()
    for line in ratios:
        print(line)
    for name, f in results.items():
        if name != "ratios" and f.errors:
            print(f"{name}: {f.errors}")
    if args.write:
        command = (f"python benchmarks/peers/run_route_peers.py --duration {args.duration} "
                   f"--connections {args.connections} --workers {args.workers} "
                   f"--rounds {args.rounds} --peers {','.join(peers)}")
        write_doc(args.write, "route-peers-table", text, command)
    return 0


if __name__ == "__main__":
    sys.exit(main())
