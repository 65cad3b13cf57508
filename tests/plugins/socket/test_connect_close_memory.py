"""Connect-then-close with no data (what an L4 health checker does) keeps nothing in the proxy.

The proxy runs in its own process so that its resident size is its own. After a warm-up that
brings every code path, spare connection and arena into use, 100,000 more such connections
leave the resident size within 1 MB of where it was.

Why the bound holds honestly: the allocator's bytes in use are flat over such connections
(measured with ``mallinfo2``: +48 bytes per 20,000); what grew before was freed connection
buffers left resident in the arenas, which the engine now gives back (``malloc_trim``, at most
once a second per worker, after connections were freed). Both readings are taken after the
proxy has been idle for 2.5 s, so that a trim has run since the last connection closed. In 7
runs on a shared 2-core VM (load 6 to 8) the difference was -136, -124, -80, +8, +28, +76 and
+148 kB (mean -11, standard deviation 106): 1 MB is about ten deviations away. Before the trim
the same count added 3.9 MB.

Time: 120,000 connections from one Python thread take 40 to 60 s here, the bulk of this test
(the full 100,000 the issue names, so it is marked slow);
they come from 16 loopback source addresses so that the client's TIME_WAIT sockets never run
out of ports.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap
import time

import pytest
from proxy_helpers import cluster_ip

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

WARM_UP = 20_000
CONNECTIONS = 100_000
BOUND_KB = 1024
#: an idle pause before each reading: longer than the engine's one-second trim period plus a tick
IDLE = 2.5

#: a backend in its own process that closes what it accepts at once, so it never holds the
#: proxy's side of a connection open (a backend in this process would share its interpreter with
#: the clients and fall behind)
BACKEND = textwrap.dedent("""
    import socket
    server = socket.create_server(("127.0.0.1", 0), backlog=4096)
    print(server.getsockname()[1], flush=True)
    while True:
        server.accept()[0].close()
""")

PROXY = textwrap.dedent("""
    import sys
    from types import MappingProxyType
    from lbcore import EndpointInfo, RuntimeContext, ServicePortInfo, Snapshot
    from lbcore_plugins.socket_frontend import SocketFrontend
    ip, backend_port = sys.argv[1], int(sys.argv[2])
    sp = ServicePortInfo(namespace="default", name="web", port_name="", protocol="TCP", port=8080,
                         cluster_ips=(ip,), endpoints=(EndpointInfo("127.0.0.1", backend_port),))
    fe = SocketFrontend({"workers": 2}, RuntimeContext())
    fe.start()
    fe.sync(Snapshot(version=1, service_ports=MappingProxyType({sp.key: sp})), frozenset())
    print("ready", flush=True)
    for line in sys.stdin:
        stats = fe.stats()
        print(stats["accepted"], stats["closed"], flush=True)
    fe.stop()
""")


def resident_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def connect_and_close(address: tuple[str, int], count: int, start: int) -> None:
    sources = [f"127.0.{i}.{j}" for i in (1, 2) for j in range(1, 9)]
    for n in range(start, start + count):
        with socket.socket() as s:
            s.bind((sources[n % len(sources)], 0))
            s.connect(address)


def test_connect_then_close_keeps_nothing():
    ip = cluster_ip()
    backend = subprocess.Popen([sys.executable, "-c", BACKEND], stdout=subprocess.PIPE, text=True)
    assert backend.stdout is not None
    backend_port = backend.stdout.readline().strip()
    proxy = subprocess.Popen(
        [sys.executable, "-c", PROXY, ip, backend_port],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert proxy.stdout is not None and proxy.stdin is not None
        assert proxy.stdout.readline().strip() == "ready"

        def settled_kb(expected: int) -> int:
            """The resident size once every connection so far is accepted and closed, after
            ``IDLE`` seconds without any."""
            for _ in range(300):  # bounded: 30 s for the proxy to close what it accepted
                proxy.stdin.write("stats\n")
                proxy.stdin.flush()
                accepted, closed = map(int, proxy.stdout.readline().split())
                if accepted == closed == expected:
                    break
                time.sleep(0.1)
            else:
                raise AssertionError(f"accepted {accepted}, closed {closed} of {expected}")
            time.sleep(IDLE)
            return resident_kb(proxy.pid)

        connect_and_close((ip, 8080), WARM_UP, 0)
        before = settled_kb(WARM_UP)
        connect_and_close((ip, 8080), CONNECTIONS, WARM_UP)
        after = settled_kb(WARM_UP + CONNECTIONS)
        print(f"resident {before} kB -> {after} kB: {after - before:+d} kB")
        assert after - before < BOUND_KB, f"resident size {before} kB -> {after} kB"
    finally:
        for process in (proxy, backend):
            process.kill()
            process.wait(10)
