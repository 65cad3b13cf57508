"""Time for traffic to come back after another tool flushes a kernel frontend's rules.

Run as root: ``python3 benchmarks/e2e/rules_heal.py [--rounds 5] [--frontends iptables,nftables]``.

For each frontend, a daemon (``lbcore.runtime.daemon.Daemon``, default ``rules_check_period``
and ``sync_period``) writes one service of two pods into the "node" namespace of a topology this
script makes (tests/e2e/netns.py). A prober in the "client" namespace connects to the ClusterIP
back to back (50 ms connect timeout: a flushed ClusterIP is black-holed, not refused) and prints
the monotonic time of each answer. Each round flushes the rules from inside the node namespace
(``iptables -t nat -F``, ``nft delete table inet lbcore``), and the recovery time is the first
answer after the flush minus the moment before the flush command ran; resolution is the
prober's period (50 ms or less). Rounds are spaced by a random 0-2 s so that a flush falls
anywhere in the check period. Prints each round, the median and the worst per frontend.
Target (issue: rules that heal): traffic back within 6 s.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import select
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "e2e"))

from netns import POD_CIDR, SERVER_PORT, Cluster, sh  # noqa: E402

from lbcore.runtime.config import config_from_mapping  # noqa: E402
from lbcore.runtime.daemon import Daemon  # noqa: E402

CLUSTER_IP = "10.96.0.10"
FLUSHES = {
    "iptables": ("iptables", "-t", "nat", "-F"),
    "nftables": ("nft", "delete", "table", "inet", "lbcore"),
}
PROBER = r"""
import socket, sys, time
host, port = sys.argv[1], int(sys.argv[2])
while True:
    try:
        with socket.create_connection((host, port), timeout=0.05) as s:
            s.settimeout(0.5)
            ok = s.recv(100).startswith(b"lbn-pod")
    except OSError:
        ok = False
    print(f"{time.monotonic():.4f} {int(ok)}", flush=True)
    if not ok:
        continue
    time.sleep(0.01)
"""


class Prober:
    """The prober process; :meth:`first_answer_after` reads its lines."""

    def __init__(self, netns: str):
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", netns, sys.executable, "-c", PROBER, CLUSTER_IP, "80"],
            stdout=subprocess.PIPE, text=True,
        )

    def first_answer_after(self, moment: float, limit: float = 30.0) -> float | None:
        """Seconds from ``moment`` to the first answer that started after it (None: none
        within ``limit``); a line is printed when its attempt ended."""
        assert self.proc.stdout is not None
        seen_failure = False
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.proc.stdout], [], [], 1.0)
            if not ready:
                continue
            stamp, ok = self.proc.stdout.readline().split()
            at = float(stamp)
            if at < moment:
                continue
            if ok == "0":
                seen_failure = True
            elif seen_failure:
                return at - moment
        return None

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait(5)


def _objects(pod_ips: list[str]) -> list[dict]:
    return [
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "default"},
         "spec": {"clusterIP": CLUSTER_IP, "ports": [{"name": "p", "port": 80, "targetPort": SERVER_PORT}]}},
        {"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": "web", "namespace": "default"},
         "subsets": [{"addresses": [{"ip": ip} for ip in pod_ips],
                      "ports": [{"name": "p", "port": SERVER_PORT, "protocol": "TCP"}]}]},
    ]


async def measure(kind: str, cluster: Cluster, rounds: int) -> list[float | None]:
    with tempfile.TemporaryDirectory() as data_dir:
        config = config_from_mapping({
            "admin_address": "127.0.0.1:0", "data_dir": data_dir, "service_cidr": "10.96.0.0/16",
            "frontends": [{"name": kind, "options": {"netns": cluster.node, "cluster_cidr": POD_CIDR}}],
        })
        daemon = Daemon(config)
        await daemon.start()
        prober = None
        try:
            for obj in _objects(cluster.pod_ips):
                daemon.store.create(obj)
            loop = asyncio.get_running_loop()
            prober = Prober(cluster.client)
            out: list[float | None] = []
            for _ in range(rounds):
                await asyncio.sleep(1.0 + random.uniform(0, 2.0))
                moment = time.monotonic()
                sh(*FLUSHES[kind], netns=cluster.node)
                out.append(await loop.run_in_executor(None, prober.first_answer_after, moment))
            return out
        finally:
            if prober is not None:
                prober.close()
            await daemon.stop()


def check_cost(services: int) -> None:
    """Sync ``services`` services into a namespace of their own with each kernel layout, then
    print the full sync's time and the median of 5 ``check()`` calls."""
    sys.path.insert(0, str(ROOT / "tests" / "plugins" / "kernel"))
    from kernel_snapshots import many
    from lbcore_plugins.iptables import IptablesFrontend
    from lbcore_plugins.nftables import NftablesFrontend

    from lbcore.runtime.interfaces import RuntimeContext

    snapshot = many(services)
    netns = f"lbheal-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", netns], check=True, timeout=30)
    try:
        for cls, options in ((IptablesFrontend, {}), (NftablesFrontend, {}),
                             (NftablesFrontend, {"endpoint_selection": "maps"})):
            frontend = cls({"netns": netns, "conntrack_cleanup": False, **options}, RuntimeContext())
            frontend.start()
            started = time.monotonic()
            frontend.sync(snapshot, frozenset())
            full = time.monotonic() - started
            times = []
            for _ in range(5):
                started = time.monotonic()
                problem = frontend.check()
                times.append(time.monotonic() - started)
                assert problem is None, problem
            frontend.stop()
            print(f"{cls.name} {options or ''} at {services} services: full sync {full:.2f} s, "
                  f"check median {statistics.median(times) * 1000:.1f} ms", flush=True)
    finally:
        subprocess.run(["ip", "netns", "delete", netns], timeout=30)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--frontends", default="iptables,nftables")
    parser.add_argument("--check-cost", type=int, metavar="SERVICES",
                        help="instead, time check() at this many services")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("rules_heal: needs root (network namespaces, iptables, nft)", file=sys.stderr)
        return 2
    if args.check_cost:
        check_cost(args.check_cost)
        return 0
    cluster = Cluster(pods=2)
    try:
        for kind in args.frontends.split(","):
            times = asyncio.run(measure(kind, cluster, args.rounds))
            shown = ", ".join("none" if t is None else f"{t:.2f}" for t in times)
            done = [t for t in times if t is not None]
            median = f"{statistics.median(done):.2f} s" if len(done) == len(times) else "n/a"
            worst = f"{max(done):.2f} s" if len(done) == len(times) else "n/a (no answer within 30 s)"
            print(f"{kind}: traffic back after a flush in {shown} s; median {median}, worst {worst}")
    finally:
        cluster.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
