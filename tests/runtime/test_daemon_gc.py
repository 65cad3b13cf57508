"""The daemon pauses the cyclic garbage collector while it starts, then freezes what the start
made (a full collection at 100,000 pods scans every object for seconds; see the daemon's
module docstring) and resumes it."""

from __future__ import annotations

import asyncio
import gc

from lbcore.runtime.config import config_from_mapping
from lbcore.runtime.daemon import Daemon


def test_the_collector_is_paused_while_the_daemon_starts_then_frozen_and_resumed(tmp_path):
    config = config_from_mapping({"admin_address": "127.0.0.1:0", "data_dir": str(tmp_path),
                                  "frontends": [], "service_cidr": "127.71.0.0/16"})
    assert gc.isenabled()
    frozen_before = gc.get_freeze_count()

    async def main() -> None:
        daemon = Daemon(config)
        await daemon.start()
        try:
            assert not gc.isenabled()  # the source has not listed yet: still paused
            for _ in range(600):  # 30 s at most, counted in steps, not read from a clock
                if gc.isenabled():
                    break
                await asyncio.sleep(0.05)
            assert gc.isenabled()
            assert gc.get_freeze_count() > frozen_before
            assert daemon.state is not None and daemon.state.synced_once.is_set()
        finally:
            await daemon.stop()

    try:
        asyncio.run(main())
    finally:
        gc.unfreeze()
    assert gc.isenabled()


def test_a_daemon_stopped_while_starting_resumes_the_collector(tmp_path):
    config = config_from_mapping({"admin_address": "127.0.0.1:0", "data_dir": str(tmp_path),
                                  "frontends": [], "service_cidr": "127.72.0.0/16"})
    frozen_before = gc.get_freeze_count()

    async def main() -> None:
        daemon = Daemon(config)
        await daemon.start()
        assert not gc.isenabled()
        await daemon.stop()

    try:
        asyncio.run(main())
    finally:
        gc.enable()
    assert gc.isenabled() and gc.get_freeze_count() == frozen_before
