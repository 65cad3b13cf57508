"""The code the docs show runs as shown: docs/plugins.md's frontend, driven as the daemon would."""

from __future__ import annotations

import re
from pathlib import Path
from types import MappingProxyType

import lbcore
from lbcore import EndpointInfo, RuntimeContext, ServicePortInfo, Snapshot

DOCS = Path(__file__).resolve().parent.parent / "docs"


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, re.S)


def test_the_frontend_in_twenty_lines_runs_and_writes_the_ready_backends(tmp_path):
    (code,) = [b for b in python_blocks((DOCS / "plugins.md").read_text()) if "EchoFrontend" in b]
    namespace: dict[str, object] = {}
    exec(compile(code, "docs/plugins.md", "exec"), namespace)
    frontends = namespace["lbcore_register_frontends"]()  # type: ignore[operator]
    out = tmp_path / "echo.log"
    fe = frontends["echo"]({"path": str(out)}, RuntimeContext(node_name="node-a"))
    fe.start()
    sp = ServicePortInfo(
        namespace="default", name="web", port_name="", protocol="TCP", port=80,
        cluster_ips=("10.96.0.1",),
        endpoints=(EndpointInfo("10.0.0.1", 8080), EndpointInfo("10.0.0.2", 8080, ready=False)),
    )
    fe.sync(Snapshot(version=3, service_ports=MappingProxyType({sp.key: sp}), node_name="node-a"),
            frozenset({"default/web"}))
    fe.stop()
    assert out.read_text() == "3 default/web: ('10.96.0.1',) -> 10.0.0.1:8080\n"
    assert isinstance(fe, lbcore.Frontend)
