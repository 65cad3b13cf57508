"""Fixtures for the plugin tests: the admin API over a real store, served on 127.0.0.1."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from aiohttp import web

from lbcore.runtime import admin_api
from lbcore.runtime.store import Store


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class AdminServer:
    """The admin API of ``store`` on 127.0.0.1:``port``, in its own thread and event loop.

    ``stop()`` and ``start()`` again serve the same store on the same port, as a restarted
    daemon would.
    """

    def __init__(self, store: Store, token: str | None = None, bookmark_interval: float = 60.0):
        self.store = store
        self.token = token
        self.bookmark_interval = bookmark_interval
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None

    def start(self) -> None:
        ready = threading.Event()
        failure: list[BaseException] = []

        def serve() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self._serve())
            except BaseException as exc:  # reported to the starting thread
                failure.append(exc)
                ready.set()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._runner.cleanup() if self._runner else asyncio.sleep(0))
            loop.close()

        self._thread = threading.Thread(target=serve, name="admin-api", daemon=True)
        self._thread.start()
        assert ready.wait(10), "the admin API did not start within 10 s"
        if failure:
            raise failure[0]

    async def _serve(self) -> None:
        app = web.Application()
        admin_api.add_routes(app, self.store, self.token, bookmark_interval=self.bookmark_interval)
        self._runner = web.AppRunner(app, shutdown_timeout=1.0)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True).start()

    def run(self, coro: Any, timeout: float = 10.0) -> Any:
        """Run a coroutine on the server's loop (e.g. a store watch) and return its result."""
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def stop(self) -> None:
        if self._thread is None or self._loop is None:
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(15)
        assert not self._thread.is_alive(), "the admin API did not stop within 15 s"
        self._thread = None
        self._loop = None


@pytest.fixture
def store() -> Iterator[Store]:
    with Store(None, service_cidr="127.10.0.0/24", node_port_range=(30000, 30099)) as s:
        yield s


@pytest.fixture
def serve_admin() -> Iterator[Callable[..., AdminServer]]:
    """``serve_admin(store, token=None, start=True, bookmark_interval=0.3)``: an
    :class:`AdminServer`, stopped at the end of the test."""
    servers: list[AdminServer] = []

    def serve(
        store: Store, token: str | None = None, start: bool = True, bookmark_interval: float = 0.3
    ) -> AdminServer:
        server = AdminServer(store, token=token, bookmark_interval=bookmark_interval)
        servers.append(server)
        if start:
            server.start()
        return server

    yield serve
    for server in servers:
        server.stop()


@pytest.fixture
def admin(store: Store, serve_admin: Callable[..., AdminServer]) -> AdminServer:
    """The admin API of a fresh in-memory store, without a token."""
    return serve_admin(store)
