"""What the peer benchmarks (run_http_peers.py, run_route_peers.py) share: the peers' paths,
one wrk run and what its output says, the machine and versions line, and the generated block
a run writes into its docs/benchmarks page."""

from __future__ import annotations

import datetime
import os
import platform
import re
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

NGINX = "/usr/sbin/nginx"
HAPROXY = "/usr/sbin/haproxy"
UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


@dataclass(frozen=True)
class WrkRun:
    """One wrk run: requests/s, p99 in ms (nan when not printed), requests done, and wrk's
    error line (``Socket errors: ...`` or ``Non-2xx ...``, else empty)."""

    rps: float
    p99_ms: float
    requests: int
    errors: str
    #: the proxy's CPU microseconds per request over the run (nan when not measured)
    cpu_us: float = float("nan")


def wrk(url: str, duration: int, connections: int, close: bool,
        headers: tuple[str, ...] = (), cpu: Callable[[], float] | None = None) -> WrkRun:
    """wrk with two threads, ``connections`` connections for ``duration`` seconds on ``url``,
    with these extra headers, and ``Connection: close`` (a new connection per request) when
    ``close``; ``cpu``: the proxy's CPU seconds so far, read before and after."""
    before = cpu() if cpu else 0.0
    args = ["wrk", "-t2", f"-c{connections}", f"-d{duration}s", "--latency"]
    for header in (*headers, *(("Connection: close",) if close else ())):
        args += ["-H", header]
    out = subprocess.run([*args, url], capture_output=True, text=True,
                         timeout=duration + 60).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    m = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    p99 = float(m.group(1)) * UNITS[m.group(2)] if m else float("nan")
    done = re.search(r"(\d+) requests in", out)
    errors = re.search(r"Socket errors:.*|Non-2xx.*", out)
    requests = int(done.group(1)) if done else 0
    cpu_us = (cpu() - before) / requests * 1e6 if cpu and requests else float("nan")
    return WrkRun(rps, p99, requests, errors.group(0) if errors else "", cpu_us)


def machine() -> str:
    model = platform.processor() or "unknown"
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    return f"{os.cpu_count()} cores, {model}, Linux {platform.release()}"


def versions() -> str:
    hv = subprocess.run([HAPROXY, "-v"], capture_output=True, text=True).stdout.split("\n")[0]
    nv = subprocess.run([NGINX, "-v"], capture_output=True, text=True).stderr.strip()
    return f"{hv.split(' - ')[0]}; {nv}"


def write_doc(path: Path, marker: str, text: str, command: str) -> None:
    """Replace the generated block of ``path`` between ``<!-- marker -->`` and
    ``<!-- /marker -->`` with this run's date, machine, versions, command and ``text`` (the
    block is added at the end when the page has none)."""
    start, end = f"<!-- {marker} -->", f"<!-- /{marker} -->"
    block = (f"{start}\n{datetime.date.today().isoformat()}, {machine()}; {versions()}.\n"
             f"Command: `{command}`\n\n{text}\n{end}")
    content = path.read_text() if path.exists() else f"{start}\n{end}\n"
    if start not in content:
        content += f"\n{start}\n{end}\n"
    before, rest = content.split(start, 1)
    after = rest.split(end, 1)[1] if end in rest else ""
    path.write_text(before + block + after)
