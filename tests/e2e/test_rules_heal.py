"""Kernel rules that heal: the daemon puts back what an outside flush removed, and says so.

A daemon runs here with a kernel frontend writing into a network namespace made by the test
(netns.py). Another tool then flushes the rules inside that namespace (``iptables -t nat -F``,
``nft delete table inet lbcore``, ``nft flush table inet lbcore``); the client must get through again within a bounded wait, and
``/readyz`` must have reported the gap ("rules missing since T") while it lasted.

To see the gap without racing a repair that takes a fraction of a second, the first flush is
met with the frontend's :meth:`resync` held on a gate the test opens after reading ``/readyz``;
the second flush runs without it.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from netns import POD_CIDR, SERVER_PORT, Cluster, sh

from lbcore.runtime.config import config_from_mapping
from lbcore.runtime.daemon import Daemon

pytestmark = [pytest.mark.root, pytest.mark.timeout(240)]

#: the outside tool's flush, and the frontend it hits
FLUSHES = {
    "iptables -t nat -F": ("iptables", ("iptables", "-t", "nat", "-F")),
    "nft delete table": ("nftables", ("nft", "delete", "table", "inet", "lbcore")),
    "nft flush table": ("nftables", ("nft", "flush", "table", "inet", "lbcore")),
}
CLUSTER_IP = "10.96.0.10"
#: polls of 0.1 s while waiting for the daemon: a bound on every wait (30 s)
POLLS = 300


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("needs root and iproute2 for network namespaces")
    c = Cluster(pods=2)
    try:
        yield c
    finally:
        c.close()


def _get(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as exc:
        body = exc.read()
        return exc.code, json.loads(body) if body.startswith(b"{") else {}


def _metrics(url: str) -> str:
    with urllib.request.urlopen(url + "/metrics", timeout=10) as resp:
        return resp.read().decode()


def _objects(c: Cluster) -> list[dict]:
    service = {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {"clusterIP": CLUSTER_IP, "ports": [{"name": "p", "port": 80, "targetPort": SERVER_PORT}]},
    }
    endpoints = {
        "apiVersion": "v1", "kind": "Endpoints",
        "metadata": {"name": "web", "namespace": "default"},
        "subsets": [{"addresses": [{"ip": ip} for ip in c.pod_ips],
                     "ports": [{"name": "p", "port": SERVER_PORT, "protocol": "TCP"}]}],
    }
    return [service, endpoints]


def _answered(c: Cluster) -> bool:
    return c.tcp(c.client, CLUSTER_IP, 80, count=1, timeout=0.5)[0].startswith("lbn-pod")


@pytest.mark.parametrize("flush", sorted(FLUSHES))
def test_rules_flushed_by_another_tool_come_back_and_readyz_reports_the_gap(cluster, flush, tmp_path):
    c = cluster
    kind, argv = FLUSHES[flush]
    if shutil.which(argv[0]) is None:
        pytest.skip(f"{argv[0]} is not installed")
    config = config_from_mapping({
        "admin_address": "127.0.0.1:0",
        "data_dir": str(tmp_path),
        "service_cidr": "10.96.0.0/16",
        "frontends": [{"name": kind, "options": {"netns": c.node, "cluster_cidr": POD_CIDR}}],
        "min_sync_period": "20ms",
    })
    gate = threading.Event()

    async def wait_until(predicate, what: str):
        loop = asyncio.get_running_loop()
        for _ in range(POLLS):
            value = await loop.run_in_executor(None, predicate)
            if value:
                return value
            await asyncio.sleep(0.1)
        raise AssertionError(f"not within {POLLS / 10:g} s: {what}")

    async def scenario() -> None:
        daemon = Daemon(config)
        try:
            await daemon.start()
        except Exception as exc:  # the frontend cannot run here (a missing tool or module)
            pytest.skip(f"{kind}: {exc}")
        loop = asyncio.get_running_loop()
        try:
            for obj in _objects(c):
                daemon.store.create(obj)
            await wait_until(lambda: _answered(c), "the service answers")
            assert (await loop.run_in_executor(None, _get, daemon.admin_url + "/readyz"))[0] == 200

            # first flush: the repair waits on the gate, so the gap can be read at leisure
            frontend = daemon.frontends[kind]
            real_resync = frontend.resync

            def gated_resync() -> None:
                gate.wait(60)
                real_resync()

            frontend.resync = gated_resync  # type: ignore[method-assign]
            sh(*argv, netns=c.node)
            status, body = await wait_until(
                lambda: (r := _get(daemon.admin_url + "/readyz"))[0] == 503 and r, "readyz reports the gap"
            )
            assert body["status"] == "not ready"
            assert body["frontends"][kind].startswith("rules missing since 20"), body
            assert not await loop.run_in_executor(None, _answered, c)  # black-holed meanwhile
            frontend.resync = real_resync  # type: ignore[method-assign]
            gate.set()
            await wait_until(lambda: _answered(c), "traffic back after the first flush")
            await wait_until(lambda: _get(daemon.admin_url + "/readyz")[0] == 200, "readyz back to 200")

            # second flush: nothing held; traffic comes back by itself
            sh(*argv, netns=c.node)
            await wait_until(
                lambda: f'lbcore_frontend_rules_missing_total{{frontend="{kind}"}} 2.0' in _metrics(daemon.admin_url),
                "the second flush is counted",
            )
            await wait_until(lambda: _answered(c), "traffic back after the second flush")
            await wait_until(lambda: _get(daemon.admin_url + "/readyz")[0] == 200, "readyz back to 200")
            metrics = await loop.run_in_executor(None, _metrics, daemon.admin_url)
            assert f'lbcore_frontend_resyncs_total{{frontend="{kind}",reason="missing"}} 2.0' in metrics
            assert f'lbcore_frontend_rules_missing_now{{frontend="{kind}"}} 0.0' in metrics
            assert (await loop.run_in_executor(None, _get, daemon.admin_url + "/healthz"))[0] == 200
        finally:
            gate.set()
            await daemon.stop()

    asyncio.run(scenario())
