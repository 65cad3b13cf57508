"""An aiohttp reverse proxy to a service's pods, kept current by lbcore, with keep-alive to them.

Each request is one connection to the picker: the client's address and a request number stand
for its 5-tuple, so a keep-alive client is balanced request by request and least_conn counts
requests in flight. With ``--trust-forwarded-for`` the client is the first address of
``X-Forwarded-For`` (set by the load balancer in front), so a service with
``sessionAffinity: ClientIP`` keeps each end client on its pod. A pod that refuses is marked
down and the request goes to another; so does an idempotent request whose kept-alive
connection the pod had closed.

    lbcore run &
    lbcore create -f examples/my-service.yaml && lbcore create -f examples/my-app-pods.yaml
    # and a server on each pod's address: see docs/embedding.md
    python3 examples/aiohttp_reverse_proxy.py --service default/my-service --listen 127.0.0.1:8000
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
from typing import Any

import aiohttp
from aiohttp import web

import lbcore

ATTEMPTS = 3
DOWN_FOR = 2.0  # seconds a pod that refused gets no new request
IDEMPOTENT = {"GET", "HEAD", "OPTIONS", "PUT", "DELETE"}
# hop-by-hop headers (RFC 9110 7.6.1) are the proxy's own, never forwarded
HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
              "trailer", "transfer-encoding", "upgrade", "content-length", "host"}
# each request is a "connection" of its client: these stand for its source port
_REQUEST_PORTS = 65536 - 1024


class ReverseProxy:
    """Sends each request to the pod ``picker`` chooses, over kept-alive connections.

    :param picker: a ``lbcore.Picker`` (live, from ``lbcore.connect``); give it
        ``tcp_closing_timeout=0.001`` so that a finished request is forgotten at once.
    :param trust_forwarded_for: take the client's address from ``X-Forwarded-For``.
    """

    def __init__(self, picker: Any, *, trust_forwarded_for: bool = False) -> None:
        self.picker = picker
        self.trust_forwarded_for = trust_forwarded_for
        self._requests = itertools.count()
        self._session: aiohttp.ClientSession | None = None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        client = self.client_ip(request)
        local = request.transport.get_extra_info("sockname") if request.transport else None
        conn = ("TCP", client, 1024 + next(self._requests) % _REQUEST_PORTS,
                local[0] if local else "0.0.0.0", local[1] if local else 0)
        body = await request.read()
        try:
            return await self._forward(request, conn, body)
        except lbcore.ServiceGone:
            return web.Response(status=503, text="service gone\n")
        finally:
            self.picker.close(*conn)

    async def _forward(self, request: web.Request, conn: tuple[Any, ...], body: bytes
                       ) -> web.StreamResponse:
        assert self._session is not None, "start() the proxy first"
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        forwarded = request.headers.get("X-Forwarded-For")
        headers["X-Forwarded-For"] = f"{forwarded}, {request.remote}" if forwarded else str(request.remote)
        headers["Host"] = request.host
        tried: list[Any] = []
        for _ in range(ATTEMPTS):
            endpoint = self.picker.pick(*conn, exclude=tried)
            if not endpoint:  # lbcore.NO_ENDPOINTS
                return web.Response(status=503, text="no endpoints\n")
            url = f"http://{endpoint.address}{request.rel_url}"
            response: web.StreamResponse | None = None
            try:
                async with self._session.request(request.method, url, headers=headers, data=body,
                                                 allow_redirects=False) as upstream:
                    response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
                    for key, value in upstream.headers.items():
                        if key.lower() not in HOP_BY_HOP:
                            response.headers.add(key, value)
                    if upstream.content_length is not None:
                        response.content_length = upstream.content_length
                    await response.prepare(request)
                    async for chunk in upstream.content.iter_chunked(65536):
                        await response.write(chunk)
                    await response.write_eof()
                    return response
            except aiohttp.ClientConnectorError:  # nothing was sent: another pod can take it
                tried.append(endpoint)
                with contextlib.suppress(KeyError):
                    self.picker.mark_down(endpoint, DOWN_FOR)
            except aiohttp.ServerDisconnectedError:  # a kept-alive connection the pod closed
                if response is not None or request.method not in IDEMPOTENT:
                    raise
                tried.append(endpoint)
        return web.Response(status=502, text=f"no pod answered in {ATTEMPTS} attempts\n")

    def client_ip(self, request: web.Request) -> str:
        if self.trust_forwarded_for:
            forwarded = request.headers.get("X-Forwarded-For", "").split(",")[0].strip()
            if forwarded:
                return forwarded
        return request.remote or "0.0.0.0"

    async def start(self, host: str, port: int) -> web.AppRunner:
        """Serve on ``host:port``; ``await runner.cleanup()`` then ``await proxy.close()``."""
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=30),
            auto_decompress=False,
        )
        app = web.Application()
        app.router.add_route("*", "/{path:.*}", self.handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, host, port).start()
        return runner

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


async def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default="http://127.0.0.1:10257",
                        help="lbcore's admin API URL or a kubeconfig (default: %(default)s)")
    parser.add_argument("--service", required=True, help="namespace/name[:port]")
    parser.add_argument("--listen", default="127.0.0.1:8000", help="host:port (port 0: any)")
    parser.add_argument("--algorithm", default="least_conn")
    parser.add_argument("--trust-forwarded-for", action="store_true",
                        help="the client is the first address of X-Forwarded-For")
    args = parser.parse_args(argv)
    ref, _, port_text = args.service.partition(":")
    namespace, _, name = ref.rpartition("/")
    port = int(port_text) if port_text.isdigit() else port_text or None
    host, _, listen_port = args.listen.rpartition(":")
    async with lbcore.connect(args.source) as live:
        picker = live.picker(namespace or "default", name, port, algorithm=args.algorithm,
                             tcp_closing_timeout=0.001)
        proxy = ReverseProxy(picker, trust_forwarded_for=args.trust_forwarded_for)
        runner = await proxy.start(host, int(listen_port))
        print(f"listening on {host}:{runner.addresses[0][1]}", flush=True)
        try:
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()
            await proxy.close()


if __name__ == "__main__":
    asyncio.run(main())
