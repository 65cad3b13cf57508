"""Each example runs as a script, as the README's set-up leaves it, against a daemon's admin API."""

from __future__ import annotations

import subprocess
import sys

import pytest
from live_cluster import EXAMPLES, get

PROXIES = {
    "asyncio_tcp_proxy": "uvloop",
    "aiohttp_reverse_proxy": "aiohttp",
    "twisted_reverse_proxy": "twisted",
}


@pytest.mark.parametrize("example", sorted(PROXIES))
def test_a_proxy_script_serves_the_service(cluster, example):
    pytest.importorskip(PROXIES[example], reason=f"needs {PROXIES[example]} (the test extra)")
    proc = subprocess.Popen(
        [sys.executable, str(EXAMPLES / f"{example}.py"), "--source", cluster.url,
         "--service", "default/web:http", "--listen", "127.0.0.1:0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # "listening on HOST:PORT", once the source has listed
        assert line.startswith("listening on 127.0.0.1:"), line + proc.stderr.read()
        port = int(line.rsplit(":", 1)[1])
        # least_conn between idle pods is a coin toss: 60 requests miss a pod with p < 1e-10
        answers = {get("127.0.0.1", port) for _ in range(60)}
        assert answers == {"web-0", "web-1", "web-2"}
    finally:
        proc.terminate()
        proc.communicate(timeout=20)


def test_the_httpx_script_spreads_its_requests(cluster):
    pytest.importorskip("httpx", reason="needs httpx (the test extra)")
    out = subprocess.run(
        [sys.executable, str(EXAMPLES / "httpx_client_balancing.py"), "--source", cluster.url,
         "--service", "default/web:http", "--requests", "60"],
        capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 0, out.stderr
    counts = {line.split()[1]: int(line.split()[0]) for line in out.stdout.splitlines()}
    assert set(counts) == {"web-0", "web-1", "web-2"} and sum(counts.values()) == 60
