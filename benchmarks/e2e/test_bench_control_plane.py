"""A quick run of benchmarks/e2e/control_plane.py under pytest.

Run: ``python3 -m pytest benchmarks/e2e/test_bench_control_plane.py -s``. One run of each
scripted fault, 12 s storms, 5,000 pods listed by 10 clients, 300 writes of 200 KB past a
watcher that never reads (about 3 minutes). The full run is the script itself;
docs/benchmarks/control_plane.md keeps its figures.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def _script():
    path = HERE / "control_plane.py"
    spec = importlib.util.spec_from_file_location("control_plane", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.timeout(900)
def test_control_plane_quick(tmp_path):
    script = _script()
    out = tmp_path / "figures.json"
    assert script.main(["--quick", "--seed-cache", str(tmp_path / "seeds"),
                        "--json", str(out)]) == 0
    figures = json.loads(out.read_text())
    storm = figures["faults"]["storm"]
    # the bound: under 2 LISTs a second once the first few are past
    assert storm["max_rate"] < 2.0, storm
    for name, row in figures["faults"]["convergence"].items():
        print(f"CONVERGED {name}: {row['median']:.2f} s")
    lists = figures["lists"]
    for name in ("idle", "10 lists", "10 watches from no resourceVersion"):
        print(f"HEALTHZ {name}: p99 {lists[name]['p99'] * 1e3:.1f} ms")
    memory = figures["memory"]
    print(f"RSS growth: stalled watcher {memory['stalled']['grown'] / 2**20:.1f} MiB, "
          f"no watcher {memory['no watcher']['grown'] / 2**20:.1f} MiB")
