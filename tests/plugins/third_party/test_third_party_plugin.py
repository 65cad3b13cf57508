"""A third-party package adds a frontend through the ``lbcore`` entry-point group, and the config
selects it: build and install the package next to this test, run the daemon, see its syncs."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

PACKAGE = Path(__file__).resolve().parent
EXAMPLES = Path(__file__).resolve().parents[3] / "examples"


@pytest.fixture
def installed(tmp_path):
    """The package pip-installed (offline, no build isolation) into a directory of its own."""
    target = tmp_path / "site"
    build = tmp_path / "src"
    shutil.copytree(PACKAGE, build, ignore=shutil.ignore_patterns("test_*", "__pycache__"))
    out = subprocess.run(
        [
            sys.executable, "-m", "pip", "install", "--quiet", "--no-build-isolation",
            "--no-deps", "--no-index", "--disable-pip-version-check", "--target", str(target),
            str(build),
        ],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    if out.returncode != 0:
        pytest.fail(f"pip install of the plugin package failed:\n{out.stderr}")
    assert any(p.name.startswith("lbcore_echo-1.0.0") for p in target.iterdir())
    yield target
    shutil.rmtree(target)  # an install with --target is undone by removing the target


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _wait_for(predicate, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    return predicate()


def test_installed_plugin_frontend_is_selected_by_config_and_synced(installed, tmp_path):
    echo_log = tmp_path / "echo.jsonl"
    data_dir = tmp_path / "data"
    config = tmp_path / "lbcore.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "frontends": [{"name": "echo", "options": {"path": str(echo_log)}}],
                "admin_address": "127.0.0.1:0",
                "data_dir": str(data_dir),
                "min_sync_period": "50ms",
            }
        )
    )
    env = dict(os.environ, PYTHONPATH=str(installed), LBCORE_LOAD_PLUGINS="local,echo")
    daemon = subprocess.Popen(
        [sys.executable, "-m", "lbcore", "run", "--config", str(config)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        address = _wait_for(lambda: (data_dir / "admin-address").exists())
        assert address, "the daemon did not write its admin address"
        server = (data_dir / "admin-address").read_text().strip()
        for manifest in ("my-service.yaml", "my-app-pods.yaml"):
            subprocess.run(
                [sys.executable, "-m", "lbcore", "--server", server, "create", "-f",
                 str(EXAMPLES / manifest)],
                check=True, capture_output=True, timeout=30,
            )  # fmt: skip

        def synced_with_backends():
            for record in _read(echo_log):
                ports = record.get("ports") or {}
                backends = ports.get("default/my-service:", [None, []])[1]
                if len(backends) == 3:
                    return record
            return None

        record = _wait_for(synced_with_backends)
        assert record, f"echo never saw my-service with 3 backends: {_read(echo_log)}"
        assert record["ports"]["default/my-service:"][1] == [
            "127.0.0.11:8080",
            "127.0.0.12:8080",
            "127.0.0.13:8080",
        ]
        assert "default/my-service" in {s for r in _read(echo_log) for s in r.get("changed", [])}
    finally:
        daemon.send_signal(signal.SIGTERM)
        output, _ = daemon.communicate(timeout=20)
    assert daemon.returncode == 0, output
    events = [r["event"] for r in _read(echo_log)]
    assert events[0] == "start" and events[-1] == "stop"
    assert "frontend started frontend=echo" in output
