"""pytest-benchmark wrapper of the peer comparison (short runs; the full one is the script).

python -m pytest benchmarks/peers -s
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import run_http_peers  # noqa: E402

TOOLS = (run_http_peers.NGINX, run_http_peers.HAPROXY, "wrk", "iperf3")


@pytest.mark.skipif(
    any(shutil.which(t) is None for t in TOOLS), reason="needs nginx, haproxy, wrk and iperf3"
)
@pytest.mark.parametrize("splice", ["auto", "never"])
def test_socket_frontend_against_haproxy(benchmark, splice):
    results = benchmark.pedantic(
        run_http_peers.run, args=(3, 64, 2, {"splice": splice}, 1), rounds=1, iterations=1
    )
    text, ratios = run_http_peers.table(results)
    print(f"\nsplice={splice}\n{text}")
    for line in ratios:
        print(line.replace("RATIO socket", f"RATIO socket (splice {splice})"))
    lb = results["lbcore"]
    benchmark.extra_info.update(
        keepalive_rps=lb.keepalive_rps,
        close_rps=lb.close_rps,
        bulk_gbps=lb.bulk_gbps,
        p99_ms=lb.p99_ms,
        close_cpu_us=lb.close_cpu_us,
        keepalive_cpu_us=lb.keepalive_cpu_us,
        bulk_cpu_s_per_gb=lb.bulk_cpu_s_per_gb,
    )
    assert lb.keepalive_rps > 0 and lb.bulk_gbps > 0
