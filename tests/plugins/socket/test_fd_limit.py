"""At its open-files limit the socket data path pauses accepting instead of spinning, keeps the
connections it has, and serves again once descriptors are free (as nginx and HAProxy do)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap
import time

from proxy_helpers import cluster_ip, read_line

# A proxy in its own process, so only it runs out of descriptors: 64 files at most (the hard
# limit too, which the frontend would otherwise raise its soft limit to).
PROXY = textwrap.dedent("""
    import json, resource, sys
    from types import MappingProxyType
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
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
        print(json.dumps(fe.stats()), flush=True)
    fe.stop()
""")


def test_at_the_fd_limit_the_proxy_pauses_and_recovers(backends):
    backend = backends("A")
    ip = cluster_ip()
    proxy = subprocess.Popen(
        [sys.executable, "-c", PROXY, ip, str(backend.port)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    clients: list[socket.socket] = []
    try:
        assert proxy.stdout is not None and proxy.stdin is not None
        assert proxy.stdout.readline().strip() == "ready"

        def stats() -> dict[str, int]:
            proxy.stdin.write("stats\n")
            proxy.stdin.flush()
            return json.loads(proxy.stdout.readline())

        # 100 clients need 200 descriptors in the proxy: many wait in the accept queue, and a
        # client the proxy refuses may see the reset as soon as its connect returns
        refused = 0
        for _ in range(100):
            try:
                clients.append(socket.create_connection((ip, 8080), timeout=10))
            except ConnectionResetError:
                refused += 1
        deadline = time.monotonic() + 20
        while stats()["fd_exhausted"] == 0:  # the proxy reaches its limit (on a slow machine, later)
            assert time.monotonic() < deadline, "the proxy never ran out of descriptors"
            time.sleep(0.05)
        before = stats()["fd_exhausted"]
        time.sleep(1.0)  # a spinning accept loop would fail tens of thousands of times meanwhile
        at_limit = stats()
        # two workers, each pausing 0.1 s per failure: about 20 a second, far from a spin
        assert at_limit["fd_exhausted"] - before <= 200, at_limit
        # each client is served or refused (reset), none left hanging; the first ones are served
        served = 0
        deadline = time.monotonic() + 60
        for s in clients:
            s.settimeout(10)
            try:
                tag = read_line(s)
            except ConnectionResetError:
                tag = ""
            served, refused = (served + 1, refused) if tag == "A" else (served, refused + 1)
            assert time.monotonic() < deadline
        assert served >= 1 and served + refused == 100, (served, refused)
        for s in clients:
            s.close()
        clients.clear()
        # descriptors are free again: a new client is served (bounded retries of 3 s each)
        for _ in range(10):
            try:
                with socket.create_connection((ip, 8080), timeout=3) as s:
                    s.settimeout(3)
                    assert read_line(s) == "A"
                    break
            except (TimeoutError, ConnectionError):
                continue
        else:
            raise AssertionError("no client served after the clients closed")
    finally:
        for s in clients:
            s.close()
        proxy.stdin.close() if proxy.stdin else None
        try:
            proxy.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proxy.kill()
            proxy.wait()


def test_the_frontend_raises_its_soft_open_files_limit_to_the_hard_one():
    script = (
        "import resource; from lbcore_plugins.socket_frontend import raise_open_files_limit;"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (100, 200));"
        "print(raise_open_files_limit(), resource.getrlimit(resource.RLIMIT_NOFILE))"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.stdout.split(maxsplit=1) == ["200", "(200, 200)\n"], out.stderr
