"""The kubernetes source under server faults, inside a real daemon (in-process, own loopback
port and data dir), against a small API server this test runs on 127.0.0.1 that speaks the
list/watch wire protocol and answers as scripted: 504 Too large resource version after a
restore with a lower range and the same resourceVersions, 410 to every watch, a silent stream,
failing lists. Each asserts what the data path (the daemon's snapshot) converges to, and what
/healthz says, answering throughout."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from chaos_api import ChaosAPIServer, service

from lbcore.runtime.config import config_from_mapping
from lbcore.runtime.daemon import Daemon

# -- the daemon, its /healthz, its snapshot -----------------------------------------------------


def healthz(url: str) -> tuple[int, dict[str, Any]]:
    try:
        # a bound on a hang, not on speed: a loaded machine may take seconds for any answer
        with urllib.request.urlopen(url + "/healthz", timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def ports(daemon: Daemon) -> dict[str, int]:
    assert daemon.state is not None
    return {sp.service: sp.port for sp in daemon.state.snapshot.service_ports.values()}


async def until(condition: Callable[[], bool], seconds: float, daemon: Daemon) -> None:
    """Wait for ``condition`` (checked 20 times a second, at most ``seconds``), asking /healthz
    all along: it must answer every time."""
    loop = asyncio.get_running_loop()
    for step in range(int(seconds * 20)):
        if condition():
            return
        if step % 5 == 0:
            code, _ = await loop.run_in_executor(None, healthz, daemon.admin_url)
            assert code in (200, 503)
        await asyncio.sleep(0.05)
    raise AssertionError(f"not within {seconds} s")


def run_daemon(tmp_path: Path, server: ChaosAPIServer, options: dict[str, Any],
               scenario: Callable[[Daemon], Any]) -> None:
    config = config_from_mapping({
        "admin_address": "127.0.0.1:0", "data_dir": str(tmp_path), "frontends": [],
        "min_sync_period": "20ms",
        "source": {"name": "kubernetes", "options": {
            "server": server.url, "label_selector": "", "backoff_initial": 0.05,
            "backoff_max": 0.4, "connect_timeout": 2, "watch_timeout": 2, "read_timeout": 5,
            **options}},
    })

    async def main() -> None:
        daemon = Daemon(config)
        await daemon.start()
        try:
            await scenario(daemon)
        finally:
            await daemon.stop()

    server.start()
    try:
        asyncio.run(main())
    finally:
        server.stop()


async def health(daemon: Daemon) -> tuple[int, dict[str, Any]]:
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(None, healthz, daemon.admin_url)


# -- the faults ---------------------------------------------------------------------------------


def test_a_restore_with_a_lower_range_and_the_same_versions_is_relisted_and_replaced(tmp_path):
    server = ChaosAPIServer()

    async def scenario(daemon: Daemon) -> None:
        server.put_service("a", 80, "10.96.0.1")  # rv 1
        server.put_service("b", 80, "10.96.0.2")  # rv 2
        server.put_service("c", 80, "10.96.0.3")  # rv 3
        for port in (81, 82, 83):
            server.put_service("c", port, "10.96.0.3")  # rv 4..6: the source is at 6
        want = {"default/a": 80, "default/b": 80, "default/c": 83}
        await until(lambda: ports(daemon) == want, 10, daemon)
        # restored from an older backup: a at rv 1 with other content, d at rv 2; watches
        # from rv 6 are answered 504 Too large resource version
        server.restore([service("a", 9090, 1, "10.96.0.1"), service("d", 80, 2, "10.96.0.4")],
                       revision=2)
        await until(lambda: ports(daemon) == {"default/a": 9090, "default/d": 80}, 10, daemon)
        source = daemon.source
        assert source is not None and source.relists["Service"] >= 1  # type: ignore[attr-defined]
        code, body = await health(daemon)
        assert code == 200 and body["source"]["kinds"]["Service"]["relists"] >= 1
        metrics = await asyncio.get_running_loop().run_in_executor(None, _metrics, daemon)
        assert "lbcore_source_healthy 1.0" in metrics
        relisted = [line for line in metrics.splitlines()
                    if line.startswith('lbcore_source_relists_total{kind="Service"}')]
        assert len(relisted) == 1 and float(relisted[0].split()[-1]) >= 1
        assert 'lbcore_source_last_sync_timestamp_seconds{kind="Service"}' in metrics
        server.put_service("e", 80, "10.96.0.5")  # rv 3: followed from the new range
        await until(lambda: "default/e" in ports(daemon), 10, daemon)

    run_daemon(tmp_path, server, {}, scenario)


def test_a_server_answering_every_watch_410_gets_lists_with_backoff_not_a_storm(tmp_path):
    server = ChaosAPIServer()
    server.mode = "gone"

    async def scenario(daemon: Daemon) -> None:
        server.put_service("a", 80, "10.96.0.1")
        await until(lambda: ports(daemon) == {"default/a": 80}, 10, daemon)
        await asyncio.sleep(3)
        code, _ = await health(daemon)
        assert code == 200  # every list succeeds: the data is in sync
        # backoff 0.05 s doubling to 0.4 s: about ten lists per kind in these 3 s; without
        # backoff a loopback server sees hundreds
        assert 2 <= server.lists["Service"] <= 40, server.lists
        assert server.lists["Service"] <= server.watches["Service"] + 1

    run_daemon(tmp_path, server, {}, scenario)


def test_a_silent_watch_is_noticed_within_the_read_timeout_and_healthz_shows_it(tmp_path):
    server = ChaosAPIServer()

    async def scenario(daemon: Daemon) -> None:
        server.put_service("a", 80, "10.96.0.1")
        await until(lambda: ports(daemon) == {"default/a": 80}, 10, daemon)
        code, _ = await health(daemon)
        assert code == 200
        server.mode = "silent"

        async def unhealthy() -> dict[str, Any]:
            for _ in range(200):  # the watch ends within 1 s; a silent one fails 3 s later
                code, body = await health(daemon)
                # every kind's watch goes silent; each is noticed on its own reader's clock, so
                # the Service watch may be noticed after another kind made /healthz 503
                if code == 503 and "error" in body["source"]["kinds"]["Service"]:
                    return body
                await asyncio.sleep(0.05)
            raise AssertionError("/healthz never showed the silent watch")

        body = await unhealthy()
        assert body["source"]["healthy"] is False
        assert "sent no byte for 3s" in body["source"]["kinds"]["Service"]["error"]
        assert ports(daemon) == {"default/a": 80}  # what it had is kept meanwhile
        server.mode = "normal"
        server.put_service("b", 80, "10.96.0.2")
        await until(lambda: "default/b" in ports(daemon), 10, daemon)
        for _ in range(100):
            code, body = await health(daemon)
            if code == 200:
                break
            await asyncio.sleep(0.05)
        assert code == 200, body

    # the server ends a normal watch with a bookmark after watch_timeout; a read_timeout no
    # longer than that would take an idle watch whose bookmark comes a little late (a loaded
    # machine) for a silent one
    run_daemon(tmp_path, server, {"watch_timeout": 1, "read_timeout": 3}, scenario)


def test_lists_that_keep_failing_make_healthz_unhealthy_after_the_grace(tmp_path):
    server = ChaosAPIServer()
    server.lists_fail = True

    async def scenario(daemon: Daemon) -> None:
        for _ in range(200):
            code, body = await health(daemon)
            if code == 503:
                break
            await asyncio.sleep(0.05)
        assert code == 503
        kind = body["source"]["kinds"]["Service"]
        assert kind["synced"] is False and "503" in kind["error"]
        readyz = await asyncio.get_running_loop().run_in_executor(
            None, _code, daemon.admin_url + "/readyz")
        assert readyz == 503
        metrics = await asyncio.get_running_loop().run_in_executor(None, _metrics, daemon)
        assert "lbcore_source_healthy 0.0" in metrics
        server.lists_fail = False
        server.put_service("a", 80, "10.96.0.1")
        await until(lambda: ports(daemon) == {"default/a": 80}, 10, daemon)
        for _ in range(100):
            code, body = await health(daemon)
            if code == 200:
                break
            await asyncio.sleep(0.05)
        assert code == 200, body

    run_daemon(tmp_path, server, {"unhealthy_after": 0.5}, scenario)


def test_changes_and_a_compaction_while_disconnected_are_relisted_and_replaced(tmp_path):
    """The server goes away; meanwhile a service is deleted, one changed, one added, and the
    history compacted. Back, it answers the source's watch 410: the source lists again and the
    data path converges to the server's objects. /healthz and /readyz report the stale period
    (the source failing longer than ``unhealthy_after``) and recover."""
    server = ChaosAPIServer()

    async def scenario(daemon: Daemon) -> None:
        for name, ip in (("a", "10.96.0.1"), ("b", "10.96.0.2"), ("c", "10.96.0.3")):
            server.put_service(name, 80, ip)
        await until(lambda: ports(daemon) == {"default/a": 80, "default/b": 80,
                                              "default/c": 80}, 10, daemon)
        assert await readyz(daemon) == 200
        server.set_down(True)
        server.delete_service("a")
        server.put_service("b", 8080, "10.96.0.2")
        server.put_service("d", 80, "10.96.0.4")
        server.compact()
        await until_code(daemon, 503)  # stale: the source cannot reach its server
        assert await readyz(daemon) == 503
        assert ports(daemon) == {"default/a": 80, "default/b": 80, "default/c": 80}  # kept
        relists = daemon.source.relists["Service"]  # type: ignore[union-attr]
        server.set_down(False)
        want = {"default/b": 8080, "default/c": 80, "default/d": 80}
        await until(lambda: ports(daemon) == want, 10, daemon)
        assert daemon.source.relists["Service"] > relists  # type: ignore[union-attr]
        await until_code(daemon, 200)
        assert await readyz(daemon) == 200

    run_daemon(tmp_path, server, {"unhealthy_after": 0.5}, scenario)


def test_a_slow_list_keeps_readyz_not_ready_until_it_arrives_and_healthz_answering(tmp_path):
    """Every list takes 2 s (within the read timeout). Until the first one arrives /readyz says
    not ready, /healthz keeps answering, and the data path then holds the server's objects; a
    relist that is as slow keeps what the data path had meanwhile."""
    server = ChaosAPIServer()
    server.list_delay = 2.0

    async def scenario(daemon: Daemon) -> None:
        server.put_service("a", 80, "10.96.0.1")
        assert await readyz(daemon) == 503
        code, _ = await health(daemon)
        assert code in (200, 503)
        await until(lambda: ports(daemon) == {"default/a": 80}, 15, daemon)
        for _ in range(100):
            if await readyz(daemon) == 200:
                break
            await asyncio.sleep(0.05)
        assert await readyz(daemon) == 200
        server.put_service("b", 80, "10.96.0.2")
        server.compact()  # the next watch is answered 410: a slow relist
        server.put_service("c", 80, "10.96.0.3")
        await until(lambda: "default/c" in ports(daemon), 20, daemon)
        assert ports(daemon) == {"default/a": 80, "default/b": 80, "default/c": 80}

    run_daemon(tmp_path, server, {"watch_timeout": 1}, scenario)


async def readyz(daemon: Daemon) -> int:
    return await asyncio.get_running_loop().run_in_executor(
        None, _code, daemon.admin_url + "/readyz")


async def until_code(daemon: Daemon, code: int) -> None:
    for _ in range(200):
        if (await health(daemon))[0] == code:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"/healthz never answered {code}")


def _code(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as err:
        return err.code


def _metrics(daemon: Daemon) -> str:
    with urllib.request.urlopen(f"{daemon.admin_url}/metrics", timeout=5) as response:
        return str(response.read().decode())
