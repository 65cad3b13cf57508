"""A real ``lbcore run`` for end-to-end tests: its own data dir, a free loopback port, no
frontend, and small helpers to talk to it over REST, with the ``lbcore`` CLI and with kubectl.

Over HTTPS (``admin_tls`` in the config) the helpers trust the CA the daemon wrote, send the
token it keeps, and kubectl reads the kubeconfig the daemon wrote into its data dir.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
SLICES = "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices"
KUBECTL = shutil.which("kubectl")


class Daemon:
    """``lbcore run`` with no frontend; ``config`` adds to (or replaces) its config keys."""

    def __init__(self, tmp: Path, **config: Any):
        self.data_dir = tmp / "data"
        path = tmp / "lbcore.yaml"
        path.write_text(yaml.safe_dump({"admin_address": "127.0.0.1:0",
                                        "data_dir": str(self.data_dir), "frontends": [],
                                        **config}))
        self.env = dict(os.environ, LBCORE_DATA_DIR=str(self.data_dir))
        for name in ("LBCORE_SERVER", "LBCORE_TOKEN", "KUBECONFIG"):
            self.env.pop(name, None)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "lbcore", "run", "--config", str(path)],
            env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        address = self.data_dir / "admin-address"
        for _ in range(400):
            if address.exists() or self.proc.poll() is not None:
                break
            time.sleep(0.05)
        if not address.exists():
            raise AssertionError(f"lbcore run did not start: {self.stop()}")
        self.url = address.read_text().strip()
        self.kubeconfig = self.data_dir / "kubeconfig"
        self.context: ssl.SSLContext | None = None
        self.token: str | None = None
        if self.url.startswith("https://"):
            self.context = ssl.create_default_context(cafile=str(self.data_dir / "ca.crt"))
            self.token = (self.data_dir / "token").read_text().strip()

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.communicate(timeout=20)[0]
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.communicate()[0]

    def request(self, method: str, path: str, body: Any = None,
                content_type: str = "application/json") -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", content_type)
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        with urllib.request.urlopen(req, timeout=10, context=self.context) as resp:
            return json.loads(resp.read())

    def create(self, obj: dict[str, Any]) -> Any:
        plural = {"Service": "services", "Pod": "pods", "Endpoints": "endpoints"}[obj["kind"]]
        return self.request("POST", f"/api/v1/namespaces/default/{plural}", obj)

    def slices(self, service: str) -> list[dict[str, Any]]:
        query = f"?labelSelector=kubernetes.io/service-name%3D{service}"
        return self.request("GET", SLICES + query)["items"]

    def cli(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "lbcore", *args], env=self.env, input=stdin,
                              capture_output=True, text=True, timeout=60, cwd=ROOT)

    def kubectl(self, *args: str, stdin: str | None = None,
                env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """kubectl against this daemon: through the kubeconfig it wrote when it serves HTTPS,
        with ``--server`` and no kubeconfig otherwise."""
        assert KUBECTL is not None
        if self.url.startswith("https://"):
            where = dict(self.env, KUBECONFIG=str(self.kubeconfig))
            command = [KUBECTL, *args]
        else:
            where = dict(self.env, KUBECONFIG=os.devnull)
            command = [KUBECTL, "--server", self.url, *args]
        return subprocess.run(command, capture_output=True, input=stdin, text=True, timeout=60,
                              env={**where, **(env or {})})


def until(read: Callable[[], Any], done: Callable[[Any], bool], attempts: int = 200) -> Any:
    """``read()`` every 25 ms, at most ``attempts`` times, until ``done`` of its value."""
    for _ in range(attempts):
        value = read()
        if done(value):
            return value
        time.sleep(0.025)
    return value


_AGE = re.compile(r"^\d+[smhd](\d+[smhd])?$")


def describe_text(text: str) -> tuple[str, list[list[str]]]:
    """A ``describe`` output as (everything before its Events table, the table's rows split on
    blanks, their ages masked): two describes of one object a second apart compare equal."""
    head, sep, events = text.partition("\nEvents:\n")
    rows = [["AGE" if _AGE.match(cell) else cell for cell in line.split()]
            for line in events.splitlines()]
    return head + sep, rows
