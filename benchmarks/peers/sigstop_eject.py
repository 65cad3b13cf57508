"""A backend that accepts and never answers (SIGSTOP) under wrk: failed requests, time to eject.

Starts three nginx backends (one process each, as run_http_peers.py does) behind lbcore's
socket frontend, driven directly with a Snapshot, and runs wrk with a new connection per
request (``Connection: close``) against the service for ``--duration`` seconds. ``--stop-at``
seconds in, one backend gets SIGSTOP: the kernel still completes handshakes into its accept
queue, so connects succeed and only the missing answer shows. The benchmark polls the engine's
``ejected`` counter every 10 ms and prints the time from SIGSTOP to the ejection, the new
connections accepted meanwhile, wrk's requests and errors, and the new connections per second
before the stop and after the ejection. One run per ``server_timeout`` given (default: the default, 60 s, and 2 s).

    python benchmarks/peers/sigstop_eject.py [--duration 90] [--stop-at 10] [--server-timeouts 60,2]
"""

from __future__ import annotations

import argparse
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from lbcore_plugins.socket_frontend import SocketFrontend  # noqa: E402
from run_http_peers import (  # noqa: E402
    LBCORE_IP,
    NGINX,
    free_port,
    lbcore_snapshot,
    nginx_config,
    process,
    wait_port,
)

from lbcore.runtime.interfaces import RuntimeContext  # noqa: E402


def run_once(server_timeout: float, duration: int, stop_at: float, connections: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="lbcore-sigstop-") as tmp, ExitStack() as stack:
        root = Path(tmp)
        ports = [free_port() for _ in range(3)]
        nginx = []
        for i, port in enumerate(ports):
            conf = nginx_config(root / f"nginx{i}", port)
            (root / f"nginx{i}" / "tmp").mkdir(exist_ok=True)
            nginx.append(stack.enter_context(
                process([NGINX, "-c", str(conf), "-p", str(root / f"nginx{i}")], "nginx")))
        for port in ports:
            wait_port("127.0.0.1", port)
        fe = SocketFrontend({"workers": 2, "server_timeout": float(server_timeout)}, RuntimeContext())
        fe.start()
        stack.callback(fe.stop)
        fe.sync(lbcore_snapshot(ports, free_port()), frozenset({"bench/http", "bench/bulk"}))
        wait_port(LBCORE_IP, 8080)
        stopped = nginx[1]
        stack.callback(lambda: stopped.send_signal(signal.SIGCONT))
        wrk = subprocess.Popen(
            ["wrk", "-H", "Connection: close", "-t2", f"-c{connections}", f"-d{duration}s",
             f"http://{LBCORE_IP}:8080/"],
            stdout=subprocess.PIPE, text=True,
        )
        started = time.monotonic()
        time.sleep(stop_at)
        accepted_at_stop = fe.stats()["accepted"]
        stopped.send_signal(signal.SIGSTOP)
        stopped_at = time.monotonic()
        eject_after = None
        accepted_at_eject = None
        while wrk.poll() is None:
            if eject_after is None and fe.stats()["ejected"] > 0:
                eject_after = time.monotonic() - stopped_at
                accepted_at_eject = (fe.stats()["accepted"], time.monotonic())
            time.sleep(0.01)
        ended = time.monotonic()
        out = wrk.communicate()[0]
        stats = fe.stats()
    done = re.search(r"(\d+) requests in", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    after_rate = None
    if accepted_at_eject is not None and ended > accepted_at_eject[1] + 1:
        after_rate = (stats["accepted"] - accepted_at_eject[0]) / (ended - accepted_at_eject[1])
    return {
        "server_timeout": server_timeout,
        "requests": int(done.group(1)) if done else 0,
        "errors": dict(zip(("connect", "read", "write", "timeout"), map(int, errors.groups()), strict=True))
        if errors else {},
        "non2xx": int(non2xx.group(1)) if non2xx else 0,
        "eject_after": eject_after,
        "accepted_until_eject": None if accepted_at_eject is None else accepted_at_eject[0] - accepted_at_stop,
        "rate_before": accepted_at_stop / (stopped_at - started),
        "rate_after": after_rate,
        "server_timeouts": stats["server_timeouts"],
        "ejected": stats["ejected"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=int, default=90, help="seconds of wrk")
    parser.add_argument("--stop-at", type=float, default=10.0, help="seconds before SIGSTOP")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--server-timeouts", default="60,2", help="server_timeout values to run")
    args = parser.parse_args(argv)
    for tool in (NGINX, "wrk"):
        if shutil.which(tool) is None:
            sys.exit(f"needs {tool}: apt-get install nginx wrk")
    for value in args.server_timeouts.split(","):
        r = run_once(float(value), args.duration, args.stop_at, args.connections)
        eject = "not within the run" if r["eject_after"] is None else f"{r['eject_after']:.2f} s"
        after = "n/a" if r["rate_after"] is None else f"{r['rate_after']:.0f}/s"
        print(
            f"server_timeout {r['server_timeout']:g} s: ejected after {eject} "
            f"({r['accepted_until_eject']} new connections meanwhile); wrk {r['requests']} "
            f"requests, errors {r['errors']}, non-2xx {r['non2xx']}; new connections "
            f"{r['rate_before']:.0f}/s before the stop, {after} after the ejection; engine: "
            f"server_timeouts {r['server_timeouts']}, ejected {r['ejected']}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
