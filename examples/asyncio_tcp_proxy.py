"""A TCP proxy on uvloop whose backends are a service's pods, kept current by lbcore.

Each client connection is one connection to the picker: ``pick`` chooses its pod (affinity,
then the balancer), a pod that refuses is marked down and another one is tried (``exclude``),
and ``close`` on disconnect keeps least_conn's and bounded_load's counts live.

    lbcore run &                        # or any API server: --source ~/.kube/config
    lbcore create -f examples/my-service.yaml && lbcore create -f examples/my-app-pods.yaml
    # and a server on each pod's address: see docs/embedding.md
    python3 examples/asyncio_tcp_proxy.py --service default/my-service --listen 127.0.0.1:9000
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from typing import Any

import lbcore

CONNECT_TIMEOUT = 2.0  # seconds to reach a pod before trying another
DOWN_FOR = 2.0  # seconds a pod that refused gets no new connection
ATTEMPTS = 3


class TcpProxy:
    """Forwards each accepted connection to the endpoint ``picker`` chooses for it.

    :param picker: a ``lbcore.Picker`` (live, from ``lbcore.connect``), or anything with its
        ``pick``, ``close`` and ``mark_down``.
    """

    def __init__(self, picker: Any) -> None:
        self.picker = picker

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        client = writer.get_extra_info("peername")
        local = writer.get_extra_info("sockname")
        conn = ("TCP", client[0], client[1], local[0], local[1])
        upstream = None
        try:
            upstream = await self._connect(conn)
            if upstream is not None:
                await _pipe_both_ways(reader, writer, *upstream)
        finally:
            self.picker.close(*conn)
            writer.close()
            if upstream is not None:
                upstream[1].close()

    async def _connect(self, conn: tuple[Any, ...]) -> Any:
        """The pod's streams, or None when no pod takes the connection (the client is closed)."""
        tried: list[Any] = []
        for _ in range(ATTEMPTS):
            try:
                endpoint = self.picker.pick(*conn, exclude=tried)
            except lbcore.ServiceGone:
                return None
            if not endpoint:  # lbcore.NO_ENDPOINTS: refuse, as kube-proxy's REJECT
                return None
            try:
                return await asyncio.wait_for(
                    asyncio.open_connection(endpoint.ip, endpoint.port), CONNECT_TIMEOUT
                )
            except (OSError, TimeoutError):
                tried.append(endpoint)
                with contextlib.suppress(KeyError):  # it may have left the service meanwhile
                    self.picker.mark_down(endpoint, DOWN_FOR)
        return None

    async def serve(self, host: str, port: int) -> asyncio.Server:
        return await asyncio.start_server(self.handle, host, port)


async def _pipe_both_ways(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter,
                          pod_r: asyncio.StreamReader, pod_w: asyncio.StreamWriter) -> None:
    async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        try:
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()
            if dst.can_write_eof():
                dst.write_eof()  # half-close: the other way may still be sending
        except (ConnectionError, OSError):
            dst.close()

    await asyncio.gather(pipe(client_r, pod_w), pipe(pod_r, client_w))


def parse_service(text: str) -> tuple[str, str, str | int | None]:
    """``namespace/name[:port]`` (a port name or number) -> its parts."""
    ref, _, port = text.partition(":")
    namespace, _, name = ref.rpartition("/")
    return namespace or "default", name, (int(port) if port.isdigit() else port or None)


async def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default="http://127.0.0.1:10257",
                        help="lbcore's admin API URL or a kubeconfig (default: %(default)s)")
    parser.add_argument("--service", required=True, help="namespace/name[:port]")
    parser.add_argument("--listen", default="127.0.0.1:9000", help="host:port (port 0: any)")
    parser.add_argument("--algorithm", default="least_conn")
    args = parser.parse_args(argv)
    host, _, port = args.listen.rpartition(":")
    async with lbcore.connect(args.source) as live:
        picker = live.picker(*parse_service(args.service), algorithm=args.algorithm)
        server = await TcpProxy(picker).serve(host, int(port))
        print(f"listening on {host}:{server.sockets[0].getsockname()[1]}", flush=True)
        async with server:
            await server.serve_forever()


if __name__ == "__main__":
    try:
        import uvloop
    except ImportError:  # plain asyncio works too
        asyncio.run(main())
    else:
        uvloop.run(main())
