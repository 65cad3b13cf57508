"""The daemon as a process: start, admin API, health, metrics, logs, SIGTERM, the seed workflow."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from lbcore.cli.demo import free_service_cidr, node_address_of
from lbcore.errors import ConfigError
from lbcore.runtime.config import config_from_mapping
from lbcore.runtime.daemon import Daemon, event_loop_runner, read_or_create_token

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


def _wait_for(predicate, timeout: float = 15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    return predicate()


class RunningDaemon:
    """``lbcore run`` in a subprocess, with its own data directory and a free admin port."""

    def __init__(self, tmp: Path, config: dict | None = None, args: list[str] = ()):
        self.data_dir = tmp / "data"
        self.config_path = tmp / "lbcore.yaml"
        # ClusterIPs and NodePorts on loopback addresses no listener uses, never a running
        # daemon's (the default frontends serve both)
        cidr = free_service_cidr(8080)
        base = {"admin_address": "127.0.0.1:0", "data_dir": str(self.data_dir),
                "service_cidr": cidr, "node_addresses": [node_address_of(cidr)]}
        self.config_path.write_text(yaml.safe_dump({**base, **(config or {})}))
        self.env = dict(os.environ, LBCORE_DATA_DIR=str(self.data_dir))
        self.env.pop("LBCORE_SERVER", None)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "lbcore", "run", "--config", str(self.config_path), *args],
            env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        address_file = self.data_dir / "admin-address"
        if not _wait_for(lambda: address_file.exists() or self.proc.poll() is not None):
            self.stop()
            raise AssertionError("the daemon did not start")
        if self.proc.poll() is not None:
            raise AssertionError(f"the daemon exited: {self.proc.communicate()[0]}")
        self.url = address_file.read_text().strip()

    def get(self, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(self.url + path, timeout=10) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        out = subprocess.run(
            ["lbcore", *args], env=self.env, capture_output=True, text=True, timeout=30, cwd=ROOT
        )
        if check and out.returncode != 0:
            raise AssertionError(f"lbcore {' '.join(args)} failed: {out.stderr}")
        return out

    def stop(self, sig: int = signal.SIGTERM) -> tuple[int, str]:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            output, _ = self.proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            output, _ = self.proc.communicate()
            raise AssertionError(f"the daemon did not stop on {sig}:\n{output}") from None
        return self.proc.returncode, output


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_daemon_serves_health_and_metrics_and_stops_cleanly_on_signal(tmp_path, sig):
    d = RunningDaemon(tmp_path, {"frontends": []})
    try:
        assert d.url.startswith("http://127.0.0.1:") and not d.url.endswith(":0")
        status, body = _wait_for(lambda: (r := d.get("/readyz"))[0] == 200 and r) or d.get(
            "/readyz"
        )
        assert status == 200, body
        status, body = d.get("/healthz")
        assert status == 200 and json.loads(body)["status"] == "ok"
        status, body = d.get("/metrics")
        assert status == 200
        assert b"lbcore_syncs_total" in body and b"lbcore_sync_duration_seconds_bucket" in body
        assert b"lbcore_store_commits_total" in body and b"lbcore_store_writes_total" in body
        assert d.get("/api/v1/namespaces/default/services")[0] == 200
        assert (d.data_dir / "lbcore.db").exists()
    finally:
        code, output = d.stop(sig)
    assert code == 0, output
    assert not (d.data_dir / "admin-address").exists()
    lines = output.strip().splitlines()
    assert any("daemon started" in line for line in lines)
    assert f"signal received; stopping signal={signal.Signals(sig).name}" in output
    assert "daemon stopped" in lines[-1]
    assert "Traceback" not in output


def test_seed_workflow_create_then_describe_against_a_running_daemon(tmp_path):
    d = RunningDaemon(tmp_path, {"min_sync_period": "50ms"})
    try:
        out = d.cli("create", "-f", "examples/my-service.yaml")
        assert out.stdout == "service/my-service created\n"
        d.cli("create", "-f", "examples/my-app-pods.yaml")
        out = d.cli("describe", "service", "my-service")
        text = out.stdout
        assert text.splitlines()[0].split() == ["Name:", "my-service"]
        assert ["Selector:", "name=my-app"] in [line.split() for line in text.splitlines()]
        assert "127.0.0.11:8080,127.0.0.12:8080,127.0.0.13:8080" in text

        # the daemon's model got them too: its sync counted three endpoints
        def endpoints_metric():
            body = d.get("/metrics")[1].decode()
            return "lbcore_endpoints 3.0" in body or None

        status = d.get("/api/v1/namespaces/default/pods")
        assert status[0] == 200 and len(json.loads(status[1])["items"]) == 3
        services = json.loads(d.get("/api/v1/namespaces/default/services")[1])["items"]
        if services[0]["spec"].get("clusterIP"):
            assert _wait_for(endpoints_metric), d.get("/metrics")[1].decode()
    finally:
        code, output = d.stop()
    assert code == 0, output


def test_default_configuration_serves_a_node_port_service_at_its_node_port(tmp_path):
    """No ``frontends`` key: a NodePort service answers at node address:nodePort, as ``get svc``
    shows it (the node address is one the test picked on loopback)."""
    import socket
    import threading

    backend = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        while True:
            try:
                conn, _ = backend.accept()
            except OSError:  # closed at the end of the test
                return
            with conn:
                conn.sendall(b"pod\n")

    threading.Thread(target=serve, daemon=True).start()
    d = RunningDaemon(tmp_path, {"min_sync_period": "20ms"})
    try:
        node = yaml.safe_load(d.config_path.read_text())["node_addresses"][0]
        manifest = tmp_path / "np.yaml"
        manifest.write_text(yaml.safe_dump_all([
            {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "np"},
             "spec": {"type": "NodePort", "ports": [{"name": "p", "port": 80}]}},
            {"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": "np"},
             "subsets": [{"addresses": [{"ip": "127.0.0.1"}],
                          "ports": [{"name": "p", "port": backend.getsockname()[1]}]}]},
        ]))
        d.cli("create", "-f", str(manifest))
        svc = json.loads(d.get("/api/v1/namespaces/default/services/np")[1])
        node_port = svc["spec"]["ports"][0]["nodePort"]
        assert 30000 <= node_port <= 32767

        def answer():
            try:
                with socket.create_connection((node, node_port), timeout=2) as c:
                    c.settimeout(2)
                    return c.recv(10)
            except OSError:
                return None

        assert _wait_for(answer) == b"pod\n"
    finally:
        code, output = d.stop()
        backend.close()
    assert code == 0, output
    assert "frontends=socket,nodeport" in output


def test_json_logs_are_one_object_per_line(tmp_path):
    d = RunningDaemon(tmp_path, {"frontends": [], "log_format": "json"})
    try:
        d.cli("create", "-f", "examples/my-service.yaml")
        _wait_for(lambda: d.get("/readyz")[0] == 200)
    finally:
        code, output = d.stop()
    assert code == 0
    records = [json.loads(line) for line in output.strip().splitlines()]
    messages = [r["msg"] for r in records]
    assert "daemon started" in messages and messages[-1] == "daemon stopped"
    assert all({"time", "level", "msg"} <= set(r) for r in records)


@pytest.mark.parametrize("choice", ["auto", "asyncio"])
def test_the_daemon_runs_on_the_event_loop_its_config_names_and_answers_writes(tmp_path, choice):
    try:
        import uvloop  # noqa: F401
        installed = True
    except ImportError:
        installed = False
    expected = "uvloop" if choice == "auto" and installed else "asyncio"
    d = RunningDaemon(tmp_path, {"frontends": [], "log_format": "json", "event_loop": choice})
    try:
        d.cli("create", "-f", "examples/my-service.yaml")
        url = d.url + "/api/v1/namespaces/default/services/my-service"
        request = urllib.request.Request(
            url, method="PATCH", data=b'{"metadata":{"labels":{"tier":"front"}}}',
            headers={"Content-Type": "application/merge-patch+json"})
        with urllib.request.urlopen(request, timeout=10) as response:
            answer = json.loads(response.read())
        status, body = d.get("/api/v1/namespaces/default/services/my-service")
        assert status == 200 and json.loads(body) == answer
        assert answer["metadata"]["labels"] == {"tier": "front"}
    finally:
        code, output = d.stop()
    assert code == 0, output
    records = [json.loads(line) for line in output.strip().splitlines()]
    started = next(r for r in records if r["msg"] == "daemon started")
    assert started["event_loop"] == expected


def test_event_loop_uvloop_without_uvloop_installed_is_a_config_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "uvloop", None)  # import uvloop raises ImportError
    with pytest.raises(ConfigError, match=r"event_loop: 'uvloop' is not installed"):
        event_loop_runner("uvloop")
    assert event_loop_runner("auto") is asyncio.run
    assert event_loop_runner("asyncio") is asyncio.run


def test_unknown_frontend_exits_1_with_one_line_listing_the_available(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "lbcore", "run", "--admin-address", "127.0.0.1:0",
         "--data-dir", str(tmp_path), "--frontend", "foo"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert out.returncode == 1
    assert out.stderr.count("\n") == 1, out.stderr
    assert 'frontends[0].name: unknown frontend "foo"; available: ' in out.stderr
    assert "iptables" in out.stderr and "Traceback" not in out.stderr


def test_invalid_config_key_exits_1_naming_the_key(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("min_sync_period: soon\n")
    out = subprocess.run(
        [sys.executable, "-m", "lbcore", "run", "--config", str(config)],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert out.returncode == 1
    assert (
        out.stderr
        == "error: min_sync_period: invalid value 'soon': expected a duration such as 1s or 500ms\n"
    )


@pytest.mark.parametrize(("plugins", "message"), [
    ("frontends: [socket, {name: nodeport, options: {workers: two}}]\n",
     "frontends[1].options.workers: invalid value 'two': expected an integer"),
    ("frontends: [{name: socket, options: {idle_timout: 5s}}]\n",
     "frontends[0].options.idle_timout: unknown option; known: affinity_capacity, "),
    ("frontends: []\nsource: {name: local, options: {kinds: [deployments]}}\n",
     "source.options.kinds: unknown kind 'deployments'"),
])
def test_a_bad_plugin_option_exits_1_naming_its_place_in_the_file(tmp_path, plugins, message):
    config = tmp_path / "c.yaml"
    config.write_text(f"admin_address: 127.0.0.1:0\ndata_dir: {tmp_path / 'data'}\n{plugins}")
    out = subprocess.run(
        [sys.executable, "-m", "lbcore", "run", "--config", str(config)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 1, out.stderr
    assert f"error: {message}" in out.stderr and "Traceback" not in out.stderr, out.stderr


def test_admin_port_in_use_is_a_one_line_error(tmp_path):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        out = subprocess.run(
            [sys.executable, "-m", "lbcore", "run", "--admin-address", f"127.0.0.1:{port}",
             "--data-dir", str(tmp_path)],
            capture_output=True, text=True, timeout=30,
            env=dict(os.environ, LBCORE_LOAD_PLUGINS="local"),
        )  # fmt: skip
    assert out.returncode == 1
    assert f"admin_address: cannot listen on 127.0.0.1:{port}" in out.stderr


def _request(url: str, method: str = "GET", body: dict | None = None, token: str | None = None):
    req = urllib.request.Request(
        url, method=method, data=json.dumps(body).encode() if body else None
    )
    req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_beyond_loopback_writes_need_the_generated_token(tmp_path):
    """Listening on every address: a token is generated (mode 0600) and writes need it.
    Requests go to 127.0.0.1 only."""
    config = config_from_mapping(
        {"admin_address": "0.0.0.0:0", "data_dir": str(tmp_path), "frontends": []}
    )
    pod = yaml.safe_load((EXAMPLES / "my-app-pods.yaml").read_text().split("---")[0])

    async def scenario():
        daemon = Daemon(config)
        await daemon.start()
        try:
            port = daemon.admin_url.rsplit(":", 1)[1]
            base = f"http://127.0.0.1:{port}/api/v1/namespaces/default/pods"
            token = (tmp_path / "token").read_text().strip()
            assert daemon.token == token and len(token) >= 32
            assert (tmp_path / "token").stat().st_mode & 0o777 == 0o600
            loop = asyncio.get_running_loop()
            call = lambda *a, **k: loop.run_in_executor(None, lambda: _request(*a, **k))  # noqa: E731
            assert await call(base, "POST", pod) == 401
            assert await call(base, "POST", pod, token="wrong-" + token) == 401
            assert await call(base, "POST", pod, token=token) == 201
            assert await call(base) == 200  # reads stay open
        finally:
            await daemon.stop()

    asyncio.run(scenario())
    assert read_or_create_token(tmp_path) == (tmp_path / "token").read_text().strip()


def test_on_loopback_no_token_is_needed_unless_configured(tmp_path):
    config = config_from_mapping(
        {"admin_address": "127.0.0.1:0", "data_dir": str(tmp_path), "frontends": []}
    )

    async def scenario():
        daemon = Daemon(config)
        await daemon.start()
        try:
            assert daemon.token is None
        finally:
            await daemon.stop()

    asyncio.run(scenario())
    assert not (tmp_path / "token").exists()


class FlakyFrontend:
    """A frontend plugin whose sync fails until ``healed`` is set."""

    healed = False

    def __init__(self, options, context):
        self.name = "flaky"
        self.syncs = 0

    def start(self) -> None:
        pass

    def sync(self, snapshot, changed) -> None:
        self.syncs += 1
        if not FlakyFrontend.healed:
            raise OSError("iptables-restore: exit status 4")

    def stop(self, keep: bool = False) -> None:
        pass


class FlakyPlugin:
    """Registered on the plugin manager like any plugin: a frontend and a sync observer."""

    def __init__(self):
        self.observed: list[dict] = []

    @staticmethod
    def lbcore_register_frontends():
        return {"flaky": FlakyFrontend}

    def lbcore_sync_done(self, snapshot, changed, duration, errors):
        self.observed.append(dict(errors))


def test_failing_frontend_shows_in_healthz_and_metrics_and_recovers(tmp_path):
    from lbcore.hookspecs import hookimpl
    from lbcore.plugins import get_plugin_manager

    plugin = FlakyPlugin()
    hookimpl(FlakyPlugin.lbcore_register_frontends)
    hookimpl(FlakyPlugin.lbcore_sync_done)
    pm = get_plugin_manager()
    pm.register(plugin, name="flaky-test")
    FlakyFrontend.healed = False
    config = config_from_mapping(
        {
            "admin_address": "127.0.0.1:0",
            "data_dir": str(tmp_path),
            "frontends": ["flaky"],
            "min_sync_period": "10ms",
        }
    )

    async def get(url):
        loop = asyncio.get_running_loop()

        def fetch():
            try:
                with urllib.request.urlopen(url, timeout=10) as resp:
                    return resp.status, resp.read()
            except urllib.error.HTTPError as exc:
                return exc.code, exc.read()

        return await loop.run_in_executor(None, fetch)

    async def scenario():
        daemon = Daemon(config)
        await daemon.start()
        try:
            for _ in range(200):
                if plugin.observed:
                    break
                await asyncio.sleep(0.02)
            status, body = await get(daemon.admin_url + "/healthz")
            assert status == 503
            flaky = json.loads(body)["frontends"]["flaky"]
            assert flaky["healthy"] is False
            assert flaky["error"] == "OSError: iptables-restore: exit status 4"
            assert plugin.observed[0] == {"flaky": "OSError: iptables-restore: exit status 4"}
            metrics = (await get(daemon.admin_url + "/metrics"))[1].decode()
            assert 'lbcore_frontend_sync_failures_total{frontend="flaky"} 1.0' in metrics
            FlakyFrontend.healed = True  # the retry, one backoff (1 s) later, succeeds
            for _ in range(150):
                if (await get(daemon.admin_url + "/healthz"))[0] == 200:
                    break
                await asyncio.sleep(0.02)
            assert (await get(daemon.admin_url + "/healthz"))[0] == 200
            assert plugin.observed[-1] == {}
        finally:
            await daemon.stop()

    try:
        asyncio.run(scenario())
    finally:
        pm.unregister(name="flaky-test")
