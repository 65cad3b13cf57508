"""``lbcore demo``: the README's main job, as a user runs it."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def demo_run() -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lbcore", "demo"], capture_output=True, text=True, timeout=120
    )


def test_demo_exits_0_without_errors(demo_run):
    assert demo_run.returncode == 0, demo_run.stdout + demo_run.stderr
    assert "Traceback" not in demo_run.stderr


def test_demo_spreads_every_request_over_the_three_pods(demo_run):
    rows = re.findall(r"^  (my-app-\d)  (127\.0\.0\.1\d):8080\s+(\d+) ", demo_run.stdout, re.M)
    assert [(name, ip) for name, ip, _ in rows] == [
        ("my-app-1", "127.0.0.11"),
        ("my-app-2", "127.0.0.12"),
        ("my-app-3", "127.0.0.13"),
    ]
    counts = [int(n) for _, _, n in rows]
    requests = int(re.search(r"^(\d+) requests to my-service via", demo_run.stdout, re.M).group(1))
    assert sum(counts) == requests == 300
    assert min(counts) > 0  # every pod got a share
    assert "failed:" not in demo_run.stdout


def test_demo_goes_through_the_clusterip_when_the_socket_frontend_is_installed(demo_run):
    from lbcore.runtime.daemon import load_plugins

    if "socket" not in load_plugins()[1]:
        pytest.skip("the socket frontend is not installed")
    # a ClusterIP of a loopback range where nothing else listened (never a running daemon's)
    m = re.search(r"via (127\.2\d\d\.\d+\.\d+):8080 through the socket frontend", demo_run.stdout)
    assert m, demo_run.stdout


def test_the_demo_takes_a_service_range_where_nothing_listens():
    import socket

    from lbcore.cli.demo import free_service_cidr

    cidr = free_service_cidr(8080)
    first = cidr.split("/")[0].rsplit(".", 1)
    taken = socket.socket()
    taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    taken.bind((f"{first[0]}.{int(first[1]) + 1}", 8080))
    taken.listen(1)
    try:
        # that range now has a listener, as a running daemon's would: never chosen again
        assert all(free_service_cidr(8080) != cidr for _ in range(20))
    finally:
        taken.close()


def test_demo_prints_describe_service_with_the_three_endpoints(demo_run):
    describe = demo_run.stdout.split("$ lbcore describe service my-service\n", 1)[1]
    assert re.match(r"Name: +my-service\n", describe), describe
    assert re.search(r"\nEndpoints: +127\.0\.0\.11:8080,127\.0\.0\.12:8080,127\.0\.0\.13:8080\n", describe)


def test_demo_leaves_nothing_behind(demo_run):
    data_dir = re.search(r"data in (\S+)", demo_run.stdout).group(1)
    assert not Path(data_dir).exists()
    for ip in ("127.0.0.11", "127.0.0.12", "127.0.0.13"):
        with socket.socket() as s:  # the pods' port is free again
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((ip, 8080))
    assert demo_run.stdout.rstrip().endswith("everything stopped.")


def test_without_the_socket_frontend_the_core_balancer_picks_the_backends():
    import asyncio
    import io

    from lbcore.cli.demo import run_demo

    out = io.StringIO()
    result = asyncio.run(run_demo(requests=60, out=out, via_socket=False))
    assert "the backends lbcore's balancer picks (no socket frontend)" in out.getvalue()
    assert result["failures"] == 0
    assert result["answers"] == {"my-app-1": 20, "my-app-2": 20, "my-app-3": 20}
    assert result["served"] == result["answers"]


def test_a_seed_pod_address_in_use_here_is_replaced_by_a_free_one():
    import asyncio
    import io

    from lbcore.cli.demo import run_demo

    taken = socket.socket()  # as another program listening on the second pod's address
    taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        taken.bind(("127.0.0.12", 8080))
        taken.listen(1)
    except OSError:
        pass  # something here listens there already: the case this test makes
    try:
        out = io.StringIO()
        result = asyncio.run(run_demo(requests=30, out=out, via_socket=False))
    finally:
        taken.close()
    moved = re.search(r"127\.0\.0\.12:8080 is in use here; my-app-2 listens on "
                      r"(127\.\d+\.\d+\.\d+):8080 instead", out.getvalue())
    assert moved and moved.group(1) != "127.0.0.12", out.getvalue()
    assert result["failures"] == 0
    assert result["answers"] == {"my-app-1": 10, "my-app-2": 10, "my-app-3": 10}


def test_demo_routes_https_by_host_name_to_both_services(demo_run):
    from lbcore.runtime.daemon import load_plugins

    plugins = load_plugins()[1]
    if "route" not in plugins or "socket" not in plugins:
        pytest.skip("the route and socket frontends are not installed")
    out = demo_run.stdout
    for name in ("shop", "blog"):
        assert re.search(rf"^  route/{name} created$", out, re.M), out
    head = re.search(
        r"^(\d+) HTTPS requests to https://(127\.2\d\d\.\d+\.\d+):(\d+) by host name "
        r"\(route frontend; the demo's CA verified\):$", out, re.M)
    assert head, out
    rows = re.findall(r"^  (\S+) +-> service (\w+), pod (127\.2\d\d\.\d+\.\d+):8080 +(\d+)$",
                      out, re.M)
    assert [(h, s) for h, s, _, _ in rows] == [("shop.example.com", "shop"),
                                               ("blog.example.com", "blog")], out
    # each pod on a loopback address of its own, where nothing listened
    assert len({ip for _, _, ip, _ in rows} | {head.group(2)}) == 3
    # every request reached the service of its host name over verified HTTPS: half each
    total = int(head.group(1))
    assert [int(n) for *_, n in rows] == [total // 2, total // 2]
    rest = out.split(head.group(0), 1)[1]
    assert "wrong service" not in rest and "failed:" not in rest


def test_the_route_listener_takes_an_address_where_nothing_listens():
    import ipaddress

    from lbcore.cli.demo import free_loopback_address

    avoid = "127.224.0.0/11"  # half of the range it picks from
    ip = free_loopback_address((8080, 8443), avoid=avoid)
    assert ipaddress.ip_address(ip) in ipaddress.ip_network("127.0.0.0/8")
    assert ipaddress.ip_address(ip) not in ipaddress.ip_network(avoid)
    taken = socket.socket()
    taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    taken.bind((ip, 8443))
    taken.listen(1)
    try:
        # an address with a listener on one of the ports, as a running daemon's: never chosen
        assert all(free_loopback_address((8080, 8443), avoid=avoid) != ip for _ in range(20))
    finally:
        taken.close()


def test_the_route_part_fails_the_demo_when_a_host_reaches_no_service(monkeypatch):
    import asyncio
    import io

    from lbcore.cli import demo
    from lbcore.runtime.daemon import load_plugins

    plugins = load_plugins()[1]
    if "route" not in plugins or "socket" not in plugins:
        pytest.skip("the route and socket frontends are not installed")
    # the blog pod never starts listening: its requests fail, and the demo says so
    original = demo.Backend.start

    async def start(self):
        if self.name != "blog-1":
            await original(self)

    monkeypatch.setattr(demo.Backend, "start", start)
    out = io.StringIO()
    result = asyncio.run(demo.run_demo(requests=30, out=out, route_requests=20))
    route = result["route"]
    assert route["per_service"] == {"shop": 10, "blog": 0}
    assert route["failures"] == 10
    assert "  failed: 10" in out.getvalue().split("HTTPS requests", 1)[1]
