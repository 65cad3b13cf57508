"""Running a source for as long as its owner runs: the daemon and ``lbcore.connect`` alike."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from lbcore.runtime.interfaces import Source, SourceSink
from lbcore.runtime.logs import event

log = logging.getLogger("lbcore.runtime.sources")

SOURCE_BACKOFF_INITIAL = 1.0
SOURCE_BACKOFF_MAX = 30.0


async def run_source_forever(
    source: Source, sink: SourceSink, name: str, report: Callable[[str | None], Any]
) -> None:
    """Run ``source`` into ``sink``; when it ends or raises, log it and start it again after a
    back-off that doubles from 1 s to 30 s. ``report`` hears ``None`` at each (re)start and the
    error's text at each failure. Returns only by cancellation."""
    delay = SOURCE_BACKOFF_INITIAL
    while True:
        try:
            report(None)
            await source.run(sink)
            event(log, "source ended; restarting", logging.WARNING, source=name)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            report(error)
            event(log, "source failed; restarting", logging.ERROR, source=name, error=error,
                  retry_in=delay)
        await asyncio.sleep(delay)
        delay = min(SOURCE_BACKOFF_MAX, delay * 2)
