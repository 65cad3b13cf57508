"""The frontend "echo": one JSON line per sync, with every service port and its backends."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

import lbcore
from lbcore import Frontend, FrontendUnavailable, Snapshot


class EchoFrontend(Frontend):
    """Appends ``{"version", "changed", "ports": {key: [ClusterIPs, backends]}}`` per sync."""

    name = "echo"

    def start(self) -> None:
        if not self.options.get("path"):
            raise FrontendUnavailable("echo: set frontends[].options.path to a file to write")
        self._write({"event": "start", "node": self.context.node_name})

    def sync(self, snapshot: Snapshot, changed: frozenset[str]) -> None:
        ports = {
            sp.key: [list(sp.cluster_ips), sorted(ep.address for ep in lbcore.endpoints_for(sp, "internal", snapshot.node_name))]
            for sp in snapshot.service_ports.values()
        }
        self._write(
            {
                "event": "sync",
                "version": snapshot.version,
                "changed": sorted(changed),
                "ports": ports,
            }
        )

    def stop(self, keep: bool = False) -> None:
        self._write({"event": "stop", "keep": keep})

    def _write(self, record: Mapping[str, Any]) -> None:
        with open(self.options["path"], "a") as f:
            f.write(json.dumps(record) + "\n")


@lbcore.hookimpl
def lbcore_register_frontends() -> Mapping[str, Callable[..., Any]]:
    return {"echo": EchoFrontend}
