"""Client-side load balancing for httpx: each request goes to a pod a live lbcore picker chooses.

``LbcoreTransport`` (and ``AsyncLbcoreTransport`` for ``httpx.AsyncClient``) wraps httpx's own
transport, which keeps connections to each pod alive. A request is one connection to the
picker, released when its response is closed (least_conn counts requests in flight). A
connection error (the pod refused, timed out, or closed a kept-alive connection before
answering an idempotent request) marks the pod down and sends the request to another one with
``pick(..., exclude=...)``.

A hashed key: with ``hash_header="X-User"`` the header's value, hashed with ``lbcore.hash64``,
stands for the client's address (an IPv6 address in 2001:db8::/32), which is what the picker's
hashed algorithms (``ring_hash``, ``maglev``, ``rendezvous``, ``bounded_load``...) and ClientIP
affinity key on. Requests with one value go to one pod while it is there, and when pods come
and go only the keys of those pods move. Everything else the picker does (exclusion, pods
marked down, updates) applies unchanged, which is why the key takes the place of the address
rather than being hashed against a second balancer.

    lbcore run &
    lbcore create -f examples/my-service.yaml && lbcore create -f examples/my-app-pods.yaml
    # and a server on each pod's address: see docs/embedding.md
    python3 examples/httpx_client_balancing.py --service default/my-service --requests 10
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import itertools
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx

import lbcore

DOWN_FOR = 2.0  # seconds a pod that refused gets no new request
IDEMPOTENT = {"GET", "HEAD", "OPTIONS", "PUT", "DELETE"}
_CONNECT_ERRORS = (httpx.ConnectError, httpx.ConnectTimeout)
_DOCUMENTATION_PREFIX = bytes.fromhex("20010db8")  # 2001:db8::/32


class _Balancing:
    """What both transports share: the picker's connection of a request, and retries."""

    def __init__(self, picker: Any, hash_header: str | None, attempts: int) -> None:
        self.picker = picker
        self.hash_header = hash_header
        self.attempts = attempts
        self._requests = itertools.count()

    def connection(self, request: httpx.Request) -> tuple[Any, ...]:
        """The 5-tuple this request stands for: the client (or the hashed key), a request
        number as its port, and the service's address."""
        client: Any = "0.0.0.0"
        if self.hash_header is not None:
            value = request.headers.get(self.hash_header)
            if value is not None:
                client = _DOCUMENTATION_PREFIX + lbcore.hash64(value).to_bytes(8, "big") + bytes(4)
        info = self.picker.service_port
        address = info.cluster_ips[0] if info is not None and info.cluster_ips else "0.0.0.0"
        return ("TCP", client, 1024 + next(self._requests) % 64512, address,
                info.port if info is not None else 0)

    def choose(self, request: httpx.Request, conn: tuple[Any, ...], tried: list[Any]
               ) -> httpx.Request:
        """The request, addressed to the pod the picker chooses now."""
        endpoint = self.picker.pick(*conn, exclude=tried)
        if not endpoint:  # lbcore.NO_ENDPOINTS
            raise httpx.ConnectError(f"{self.picker.service_port.key}: no endpoints",
                                     request=request)
        tried.append(endpoint)
        url = request.url.copy_with(host=endpoint.ip, port=endpoint.port)
        return httpx.Request(request.method, url, headers=request.headers,
                             stream=request.stream, extensions=request.extensions)

    def retryable(self, request: httpx.Request, exc: Exception, endpoint: Any) -> bool:
        """Whether another pod may take the request after ``exc``; marks a refusing pod down."""
        if isinstance(exc, _CONNECT_ERRORS):
            with contextlib.suppress(KeyError):  # it may have left the service meanwhile
                self.picker.mark_down(endpoint, DOWN_FOR)
            return True
        # a kept-alive connection the pod closed before answering
        return isinstance(exc, httpx.RemoteProtocolError) and request.method in IDEMPOTENT


class LbcoreTransport(_Balancing, httpx.BaseTransport):
    """An httpx transport that balances requests over a service's pods.

    :param picker: a ``lbcore.Picker`` (live, from ``lbcore.connect``).
    :param hash_header: a header whose value is the key of hashed algorithms (see above).
    :param attempts: pods tried for one request.
    :param transport: what talks to the pods (default: ``httpx.HTTPTransport()``, pooled).
    """

    def __init__(self, picker: Any, *, hash_header: str | None = None, attempts: int = 3,
                 transport: httpx.BaseTransport | None = None) -> None:
        super().__init__(picker, hash_header, attempts)
        self._transport = transport or httpx.HTTPTransport()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        request.read()  # a body can be sent again to another pod
        conn = self.connection(request)
        tried: list[Any] = []
        try:
            for attempt in range(self.attempts):
                routed = self.choose(request, conn, tried)
                try:
                    response = self._transport.handle_request(routed)
                except httpx.TransportError as exc:
                    if attempt + 1 == self.attempts or not self.retryable(request, exc, tried[-1]):
                        raise
                    continue
                stream = _Released(response.stream, lambda: self.picker.close(*conn))
                return httpx.Response(response.status_code, headers=response.headers,
                                      stream=stream, extensions=response.extensions)
        except BaseException:
            self.picker.close(*conn)
            raise
        raise AssertionError("unreachable")  # pragma: no cover

    def close(self) -> None:
        self._transport.close()


class AsyncLbcoreTransport(_Balancing, httpx.AsyncBaseTransport):
    """:class:`LbcoreTransport` for ``httpx.AsyncClient``."""

    def __init__(self, picker: Any, *, hash_header: str | None = None, attempts: int = 3,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        super().__init__(picker, hash_header, attempts)
        self._transport = transport or httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        await request.aread()
        conn = self.connection(request)
        tried: list[Any] = []
        try:
            for attempt in range(self.attempts):
                routed = self.choose(request, conn, tried)
                try:
                    response = await self._transport.handle_async_request(routed)
                except httpx.TransportError as exc:
                    if attempt + 1 == self.attempts or not self.retryable(request, exc, tried[-1]):
                        raise
                    continue
                stream = _AsyncReleased(response.stream, lambda: self.picker.close(*conn))
                return httpx.Response(response.status_code, headers=response.headers,
                                      stream=stream, extensions=response.extensions)
        except BaseException:
            self.picker.close(*conn)
            raise
        raise AssertionError("unreachable")  # pragma: no cover

    async def aclose(self) -> None:
        await self._transport.aclose()


class _Released(httpx.SyncByteStream):
    """A response body that releases the picker's connection when it is closed."""

    def __init__(self, stream: Any, release: Callable[[], object]) -> None:
        self._stream, self._release = stream, release

    def __iter__(self) -> Iterator[bytes]:
        yield from self._stream

    def close(self) -> None:
        try:
            self._stream.close()
        finally:
            self._release()


class _AsyncReleased(httpx.AsyncByteStream):
    def __init__(self, stream: Any, release: Callable[[], object]) -> None:
        self._stream, self._release = stream, release

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._stream:
            yield chunk

    async def aclose(self) -> None:
        try:
            await self._stream.aclose()
        finally:
            self._release()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default="http://127.0.0.1:10257",
                        help="lbcore's admin API URL or a kubeconfig (default: %(default)s)")
    parser.add_argument("--service", required=True, help="namespace/name[:port]")
    parser.add_argument("--requests", type=int, default=10)
    parser.add_argument("--hash-header", help="a header to hash (e.g. X-User), with ring_hash")
    args = parser.parse_args(argv)
    ref, _, port_text = args.service.partition(":")
    namespace, _, name = ref.rpartition("/")
    namespace = namespace or "default"
    port = int(port_text) if port_text.isdigit() else port_text or None
    algorithm = "ring_hash" if args.hash_header else "least_conn"
    with lbcore.connect(args.source) as live:
        picker = live.picker(namespace, name, port, algorithm=algorithm,
                             tcp_closing_timeout=0.001)
        transport = LbcoreTransport(picker, hash_header=args.hash_header)
        with httpx.Client(transport=transport, base_url=f"http://{name}.{namespace}") as client:
            answers = collections.Counter(
                client.get("/", headers={args.hash_header: f"user-{i % 3}"} if args.hash_header
                           else None).text.strip()[:60]
                for i in range(args.requests)
            )
    for answer, count in answers.most_common():
        print(f"{count:6d}  {answer}")


if __name__ == "__main__":
    main()
