"""``lbcore bench``: the quality table and plots land in the output directory."""

from __future__ import annotations

from lbcore.cli import bench

PNG = b"\x89PNG\r\n\x1a\n"


def test_bench_writes_the_quality_table_and_plots(tmp_path, capsys):
    out = tmp_path / "bench"
    status = bench.main(
        ["--out", str(out), "--keys", "3000", "--sizes", "3,10",
         "--algorithms", "maglev,ring_hash,round_robin"]
    )
    assert status == 0
    table = (out / "quality.md").read_text()
    for n in (3, 10):
        for name in ("maglev", "ring_hash", "round_robin", "uhashring"):
            assert f"| {n} | {name} |" in table
    assert "| 3 | round_robin | 1.000 | n/a |" in table  # no key, no disruption to measure
    for png in ("balancer-loads.png", "balancer-disruption.png"):
        data = (out / png).read_bytes()
        assert data.startswith(PNG) and len(data) > 5000
    assert "| 10 | maglev |" in capsys.readouterr().out


def test_bench_without_peer_leaves_uhashring_out(tmp_path):
    assert bench.main(["--out", str(tmp_path), "--keys", "2000", "--sizes", "4",
                       "--algorithms", "jump", "--no-peer"]) == 0
    table = (tmp_path / "quality.md").read_text()
    assert "| 4 | jump |" in table and "uhashring" not in table


def test_bench_refuses_bad_arguments_naming_them(tmp_path, capsys):
    assert bench.main(["--out", str(tmp_path), "--sizes", "1"]) == 2
    assert "--sizes: every N must be >= 2" in capsys.readouterr().err
    assert bench.main(["--out", str(tmp_path), "--algorithms", "nope"]) == 2
    assert "--algorithms: unknown nope; available: bounded_load" in capsys.readouterr().err
    assert not (tmp_path / "quality.md").exists()
