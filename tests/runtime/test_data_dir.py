"""``lbcore run`` and its data dir: one daemon per dir, and every refusal at start one line."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lbcore.runtime.store import Store

ENV = {k: v for k, v in os.environ.items() if k != "LBCORE_SERVER"} | {"LBCORE_LOAD_PLUGINS": "local"}


def run(data_dir: Path, timeout: float = 60) -> subprocess.CompletedProcess:
    """``lbcore run`` on ``data_dir`` and a free loopback port, expected to refuse at once."""
    return subprocess.run(
        [sys.executable, "-m", "lbcore", "run", "--data-dir", str(data_dir),
         "--admin-address", "127.0.0.1:0"],
        capture_output=True, text=True, timeout=timeout, env=ENV,
    )  # fmt: skip


def assert_one_line(out: subprocess.CompletedProcess, *words: str) -> None:
    assert out.returncode == 1, out.stderr
    assert "Traceback" not in out.stderr, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), out.stderr
    for word in words:
        assert word in lines[0], lines[0]


def test_a_data_dir_that_is_a_file_is_refused_in_one_line(tmp_path):
    (tmp_path / "afile").write_text("")
    assert_one_line(run(tmp_path / "afile"), "data_dir", "afile", "not a directory")
    assert_one_line(run(tmp_path / "afile" / "sub"), "data_dir", "cannot create", "sub")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes where permissions say no")
def test_a_data_dir_without_write_permission_is_refused_in_one_line(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    assert_one_line(run(locked), "data_dir", "cannot write", "locked")


def test_a_file_that_is_not_sqlite_is_refused_naming_it_and_how_to_move_it_aside(tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "lbcore.db").write_bytes(b"\x8bnot a database" * 600)
    out = run(data_dir)
    assert_one_line(out, str(data_dir / "lbcore.db"), "not a readable SQLite database", "mv ")
    assert (data_dir / "lbcore.db").read_bytes().startswith(b"\x8bnot")  # left as it was


def test_a_row_that_is_not_json_is_refused_naming_the_object(tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    with Store(data_dir / "lbcore.db") as store:
        store.create({"kind": "Namespace", "metadata": {"name": "shop"}})
        store.create({"kind": "Service", "metadata": {"name": "web", "namespace": "shop"},
                      "spec": {"ports": [{"port": 80}]}})
    with sqlite3.connect(data_dir / "lbcore.db") as db:
        db.execute("UPDATE objects SET body = '{\"metadata\": ' WHERE name = 'web'")
    assert_one_line(run(data_dir), "Service shop/web", "DELETE FROM objects")


def test_the_store_refuses_a_row_that_is_not_json_with_its_own_error(tmp_path):
    from lbcore.runtime.store import StoreUnreadable

    path = tmp_path / "lbcore.db"
    with Store(path) as store:
        store.create({"kind": "Service", "metadata": {"name": "web"},
                      "spec": {"ports": [{"port": 80}]}})
    with sqlite3.connect(path) as db:
        db.execute("UPDATE history SET body = '[1]'")
    with pytest.raises(StoreUnreadable, match="Service default/web .*history"):
        Store(path)


def start(data_dir: Path, until=None) -> subprocess.Popen:
    """``lbcore run`` on ``data_dir``, once it wrote its admin address (or ``until()``)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "lbcore", "run", "--data-dir", str(data_dir),
         "--admin-address", "127.0.0.1:0"],
        env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    ready = until or (lambda: (data_dir / "admin-address").exists())
    for _ in range(600):
        if ready() or proc.poll() is not None:
            break
        time.sleep(0.05)
    if proc.poll() is not None:
        raise AssertionError(f"lbcore run exited: {proc.communicate()[0]}")
    assert ready(), "lbcore run did not start within 30 s"
    return proc


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    proc.wait(30)


def test_a_second_daemon_on_the_same_data_dir_exits_1_naming_the_first(tmp_path):
    data_dir = tmp_path / "data"
    first = start(data_dir)
    try:
        url = (data_dir / "admin-address").read_text()
        second = run(data_dir)
        assert_one_line(second, f"data dir {data_dir} is in use by pid {first.pid}")
        # the second one left the first one's address file alone
        assert (data_dir / "admin-address").read_text() == url
        assert first.poll() is None
    finally:
        stop(first)
    assert not (data_dir / "admin-address").exists()
    # the lock went with the first daemon: a third one starts
    third = start(data_dir)
    try:
        assert (data_dir / "lbcore.lock").read_text().strip() == str(third.pid)
    finally:
        stop(third)


def test_a_daemon_killed_with_sigkill_leaves_its_data_dir_free(tmp_path):
    data_dir = tmp_path / "data"
    first = start(data_dir)
    first.kill()
    first.wait(30)
    lock = data_dir / "lbcore.lock"
    second = start(data_dir, until=lambda: lock.read_text().strip() not in ("", str(first.pid)))
    try:
        assert lock.read_text().strip() == str(second.pid)
    finally:
        stop(second)
