"""A quick run of benchmarks/e2e/programming_latency.py under pytest.

Run: ``python3 -m pytest benchmarks/e2e -s``. It seeds 200 services (2,000 pods), starts
``lbcore run`` once per frontend and drives 60 changes through the admin API; the kernel
frontends run only as root (each in a network namespace of its own). The full run, with its
flags, is the script itself; docs/benchmarks/programming_latency.md keeps its figures.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def _script():
    path = HERE / "programming_latency.py"
    spec = importlib.util.spec_from_file_location("programming_latency", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


@pytest.mark.timeout(900)
def test_programming_latency_quick(tmp_path):
    script = _script()
    frontends = "socket,nftables-maps,iptables" if os.geteuid() == 0 else "socket"
    args = ["--services", "200", "--changes", "60", "--memory", "0", "--frontends", frontends,
            "--seed-cache", str(tmp_path / "seeds"), "--json", str(tmp_path / "figures.json")]
    assert script.main(args) == 0
    figures = json.loads((tmp_path / "figures.json").read_text())
    rows = figures["latency"]
    assert {r["frontend"] for r in rows} == set(frontends.split(","))
    for row in rows:
        # every change reached the data path, each within the run's 10 s bound
        assert row["timeouts"] == 0 and row["n"] == 60, row
        print(f"LATENCY {row['frontend']} N=200: p50 {row['p50'] * 1e3:.1f} ms, "
              f"p99 {row['p99'] * 1e3:.1f} ms (kube-proxy SLO: p99 <= 30 s)")
