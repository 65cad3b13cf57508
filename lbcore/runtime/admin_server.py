"""How the admin API meets its connections: bounded waits and a reserve of descriptors.

A client that opens a connection and sends half a request header, or nothing, holds a
descriptor for as long as the server waits. The admin API waits at most :data:`IDLE_TIMEOUT`
seconds for a complete request header, counted from when the connection opened or its last
response was sent (aiohttp's ``keepalive_timeout`` covers both: its timer starts with the
connection and is not pushed back by bytes that do not complete a header). That is the API
server's ``ReadHeaderTimeout`` (32 s) and nginx's ``client_header_timeout`` in one bound.

Bounded waits alone do not keep ``/healthz`` answering while 1,100 such connections arrive
within the timeout under ``ulimit -n 1024``: the descriptors run out first, and asyncio's
accept loop then stops for a second at a time. So, as nginx drains its reusable connections
when ``worker_connections`` run out, each accepted connection is checked against the
process's headroom: the kernel hands out the lowest free descriptor, so a new socket whose
number is within :data:`reserve_for` of the soft limit means at most that many are free. Then
the oldest connections that are not in the middle of a request (idle, or still sending their
header) are closed until the new one is back outside the reserve. A request being answered
(a list, a watch) is never cut; the daemon's own descriptors (the store, its lists, the
frontends) keep the reserve.

At start the daemon raises its soft open-files limit to the hard one
(:func:`raise_open_files_limit`), as the socket frontend does.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import socket
import ssl
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

log = logging.getLogger("lbcore.runtime.admin_server")

# seconds a connection may take to send a complete request header, from when it opened or its
# last response was sent; also how long an idle keep-alive connection is kept
IDLE_TIMEOUT = 30.0


def raise_open_files_limit() -> int:
    """Raise this process's soft limit of open files to its hard limit (a proxy holds two
    descriptors per connection, and the usual soft limit of 1,024 is soon reached); return it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft


def reserve_for(limit: int) -> int:
    """How many descriptors (of ``limit``) admin connections leave to the rest of the daemon:
    one in 16, at least 32."""
    return max(32, limit // 16)


class AdminServer:
    """Serves an aiohttp application with the bounds above; :meth:`start`, then :meth:`stop`.

    :param idle_timeout: seconds to wait for a complete request header (see the module).
    :param reserve: descriptors kept free of admin connections (default :func:`reserve_for`
        of the soft limit at start).
    """

    def __init__(
        self, app: web.Application, *, idle_timeout: float = IDLE_TIMEOUT,
        reserve: int | None = None,
    ):
        self.idle_timeout = idle_timeout
        self._reserve = reserve
        self.evicted = 0  # connections closed to keep the reserve
        self._busy: set[RequestHandler] = set()
        app.middlewares.insert(0, self._mark_busy)
        self.runner = web.AppRunner(
            app, access_log=None, handle_signals=False, keepalive_timeout=idle_timeout
        )
        self._server: web.Server | None = None
        self._limit = 0

    @property
    def reserve(self) -> int:
        return self._reserve if self._reserve is not None else reserve_for(self._limit)

    async def start(self, host: str, port: int,
                    ssl_context: ssl.SSLContext | None = None) -> tuple[str, int]:
        """Listen on ``host:port`` (over TLS with ``ssl_context``); the address bound.

        :raises OSError: it cannot listen."""
        self._limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        await self.runner.setup()
        server = self.runner.server
        assert server is not None
        self._server = server
        accepted = server.connection_made

        def connection_made(handler: RequestHandler, transport: asyncio.Transport) -> None:
            accepted(handler, transport)
            self._keep_reserve(transport)

        server.connection_made = connection_made  # type: ignore[method-assign]
        site = web.TCPSite(self.runner, host, port, reuse_address=True, ssl_context=ssl_context)
        await site.start()
        bound = self.runner.addresses[0]
        return bound[0], bound[1]

    async def stop(self) -> None:
        await self.runner.cleanup()

    @web.middleware
    async def _mark_busy(
        self, request: web.Request,
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    ) -> web.StreamResponse:
        protocol = request.protocol
        self._busy.add(protocol)
        try:
            return await handler(request)
        finally:
            self._busy.discard(protocol)

    def _keep_reserve(self, transport: asyncio.Transport) -> None:
        sock: socket.socket | None = transport.get_extra_info("socket")
        if sock is None or self._server is None:
            return
        excess = sock.fileno() + 1 - (self._limit - self.reserve)
        if excess <= 0:
            return
        new = transport
        for handler in self._server.connections:
            if excess <= 0:
                break
            if handler in self._busy or handler.transport is None or handler.transport is new:
                continue
            handler.force_close()
            self.evicted += 1
            excess -= 1
        if excess > 0:  # every other connection is answering a request: refuse this one
            log.warning("admin API: no descriptor to spare; refusing a connection")
            transport.abort()

