"""The socket frontend serves a dual-stack service: as root it makes the IPv6 service CIDR
local with an AnyIP route on ``lo`` (IPv6 has no loopback range to spare), and removes it at stop.
Run in a network namespace the test makes, so the route never touches this machine's own."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import textwrap

import pytest

from lbcore import FrontendUnavailable, RuntimeContext

SCRIPT = textwrap.dedent("""
    import json, socket, subprocess, threading
    from types import MappingProxyType
    from lbcore import EndpointInfo, RuntimeContext, ServicePortInfo, Snapshot
    from lbcore_plugins.socket_frontend import SocketFrontend

    backend = socket.socket()
    backend.bind(("127.0.0.1", 0))
    backend.listen(16)
    def serve():
        while True:
            conn, peer = backend.accept()
            conn.sendall(b"pod " + peer[0].encode() + b"\\n")
            conn.close()
    threading.Thread(target=serve, daemon=True).start()
    ctx = RuntimeContext(service_cidrs=("127.10.0.0/16", "fd00:10::/112"))
    sp = ServicePortInfo(namespace="default", name="web", port_name="", protocol="TCP", port=8080,
                         cluster_ips=("127.10.0.9", "fd00:10::9"),
                         endpoints=(EndpointInfo("127.0.0.1", backend.getsockname()[1]),))
    fe = SocketFrontend({}, ctx)
    fe.start()
    fe.sync(Snapshot(version=1, service_ports=MappingProxyType({sp.key: sp})), frozenset())
    routes = lambda: subprocess.run(["ip", "-6", "route", "show", "table", "local"],
                                    capture_output=True, text=True).stdout
    out = {"routes_running": routes()}
    for ip in sp.cluster_ips:
        with socket.create_connection((ip, 8080), timeout=5) as c:
            c.settimeout(5)
            out[ip] = c.recv(100).decode().strip()
    fe.stop()
    out["routes_stopped"] = routes()
    print(json.dumps(out))
""")


def test_a_dual_stack_service_is_served_over_both_families(require_root_netns):
    ns = f"lbv6-{secrets.token_hex(4)}"
    subprocess.run(["ip", "netns", "add", ns], check=True, timeout=30)
    try:
        subprocess.run(["ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up"], check=True,
                       timeout=30)
        result = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", SCRIPT],
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        out = json.loads(result.stdout.strip().splitlines()[-1])
        assert out["127.10.0.9"] == "pod 127.0.0.1"
        assert out["fd00:10::9"] == "pod 127.0.0.1"
        assert "local fd00:10::/112 dev lo" in out["routes_running"]
        assert "fd00:10::/112" not in out["routes_stopped"]
    finally:
        subprocess.run(["ip", "netns", "del", ns], timeout=30)


def test_without_root_a_service_cidr_that_is_not_local_is_refused_at_start(monkeypatch):
    from lbcore_plugins import socket_frontend

    monkeypatch.setattr(socket_frontend.os, "geteuid", lambda: 1000)
    fe = socket_frontend.SocketFrontend({}, RuntimeContext(service_cidrs=("fd00:10::/112",)))
    with pytest.raises(FrontendUnavailable, match=r"service CIDR fd00:10::/112 is not local.*run as root"):
        fe.start()
    assert fe.engine is None
