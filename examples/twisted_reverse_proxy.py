"""A Twisted reverse proxy to a service's pods, kept current by lbcore, with keep-alive to them.

Twisted rather than a mitmproxy addon: Twisted's ``Agent`` sends a request to an address the
proxy gives it (here the pod the picker chooses), over a pool of kept-alive connections, and
answers with a Deferred whose errback says the pod refused or timed out, which is where the
request goes to another pod with ``pick(..., exclude=...)``. A mitmproxy addon in
reverse-proxy mode can rewrite a flow's upstream too, but learns of a refused connection only
as an error on a flow it can no longer send elsewhere, and brings a much larger set of
dependencies.

Each request is one connection to the picker (the client's address and a request number stand
for its 5-tuple), released when the request finishes, so least_conn counts requests in flight.

    lbcore run &
    lbcore create -f examples/my-service.yaml && lbcore create -f examples/my-app-pods.yaml
    # and a server on each pod's address: see docs/embedding.md
    python3 examples/twisted_reverse_proxy.py --service default/my-service --listen 127.0.0.1:8001
"""

from __future__ import annotations

import argparse
import contextlib
import io
import itertools
from typing import Any

from twisted.internet import error
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web import server
from twisted.web.client import Agent, FileBodyProducer, HTTPConnectionPool
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH
from twisted.web.resource import Resource

import lbcore

ATTEMPTS = 3
DOWN_FOR = 2.0  # seconds a pod that refused gets no new request
CONNECT_TIMEOUT = 2  # seconds
# hop-by-hop headers (RFC 9110 7.6.1) are the proxy's own, never forwarded
HOP_BY_HOP = {b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-authorization",
              b"te", b"trailer", b"transfer-encoding", b"upgrade", b"content-length"}


class _Request:
    """One proxied request: what is needed to send it again to another pod."""

    def __init__(self, request: server.Request, conn: tuple[Any, ...], headers: Headers,
                 body: bytes) -> None:
        self.request, self.conn, self.headers, self.body = request, conn, headers, body
        self.tried: list[Any] = []
        self.finished = False  # by us, or the client went away
        request.notifyFinish().addBoth(self._done)

    def _done(self, _: object) -> None:
        self.finished = True

    def finish(self, code: int | None = None, text: bytes = b"") -> None:
        if self.finished:
            return
        if code is not None:
            self.request.setResponseCode(code)
            self.request.write(text)
        self.request.finish()


class _Relay(Protocol):
    """Streams a pod's response body to the client."""

    def __init__(self, proxied: _Request) -> None:
        self.proxied = proxied

    def dataReceived(self, data: bytes) -> None:  # noqa: N802 - Twisted's name
        if not self.proxied.finished:
            self.proxied.request.write(data)

    def connectionLost(self, reason: Failure = error.ConnectionDone) -> None:  # type: ignore[assignment]  # noqa: N802
        self.proxied.finish()


class ServiceProxyResource(Resource):
    """Proxies every request under it to the pod ``picker`` chooses.

    :param picker: a ``lbcore.Picker`` (live, from ``lbcore.connect``); give it
        ``tcp_closing_timeout=0.001`` so that a finished request is forgotten at once.
    :param reactor: the reactor to connect with (default: Twisted's global one).
    """

    isLeaf = True

    def __init__(self, picker: Any, reactor: Any = None) -> None:
        super().__init__()
        if reactor is None:
            from twisted.internet import reactor
        self.picker = picker
        self.pool = HTTPConnectionPool(reactor, persistent=True)
        self.agent = Agent(reactor, connectTimeout=CONNECT_TIMEOUT, pool=self.pool)
        self._requests = itertools.count()

    def close(self) -> Any:
        """Close the kept-alive connections to the pods (a Deferred)."""
        return self.pool.closeCachedConnections()

    def render(self, request: server.Request) -> Any:
        peer, local = request.getClientAddress(), request.getHost()
        client = str(getattr(peer, "host", "0.0.0.0"))
        conn = ("TCP", client, 1024 + next(self._requests) % 64512, local.host, local.port)
        request.notifyFinish().addBoth(lambda _: self.picker.close(*conn))
        headers = Headers()
        for key, values in request.requestHeaders.getAllRawHeaders():
            if key.lower() not in HOP_BY_HOP:
                headers.setRawHeaders(key, values)
        forwarded = b", ".join(headers.getRawHeaders(b"x-forwarded-for") or [])
        headers.setRawHeaders(b"x-forwarded-for",
                              [forwarded + b", " + client.encode() if forwarded else client.encode()])
        request.content.seek(0, 0)
        self.send(_Request(request, conn, headers, request.content.read()))
        return server.NOT_DONE_YET

    def send(self, proxied: _Request) -> None:
        """Send the request to the pod the picker chooses now (not one that refused it)."""
        try:
            endpoint = self.picker.pick(*proxied.conn, exclude=proxied.tried)
        except lbcore.ServiceGone:
            endpoint = None
        if not endpoint:  # lbcore.NO_ENDPOINTS, or the service is gone
            proxied.finish(503, b"no endpoints\n")
            return
        proxied.tried.append(endpoint)
        url = f"http://{endpoint.address}".encode() + proxied.request.uri
        body = FileBodyProducer(io.BytesIO(proxied.body)) if proxied.body else None
        answer = self.agent.request(proxied.request.method, url, proxied.headers, body)
        answer.addCallbacks(self._relay, self._failed, callbackArgs=(proxied,),
                            errbackArgs=(proxied,))

    def _relay(self, response: Any, proxied: _Request) -> None:
        request = proxied.request
        request.setResponseCode(response.code, response.phrase)
        for key, values in response.headers.getAllRawHeaders():
            if key.lower() not in HOP_BY_HOP:
                request.responseHeaders.setRawHeaders(key, values)
        if response.length is not UNKNOWN_LENGTH:
            request.setHeader(b"content-length", str(response.length).encode())
        response.deliverBody(_Relay(proxied))

    def _failed(self, failure: Failure, proxied: _Request) -> None:
        if failure.check(error.ConnectError) and len(proxied.tried) < ATTEMPTS:
            with contextlib.suppress(KeyError):  # it may have left the service meanwhile
                self.picker.mark_down(proxied.tried[-1], DOWN_FOR)
            self.send(proxied)
            return
        proxied.finish(502, f"bad gateway: {failure.getErrorMessage()}\n".encode())


def main(argv: list[str] | None = None) -> None:
    from twisted.internet import reactor

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default="http://127.0.0.1:10257",
                        help="lbcore's admin API URL or a kubeconfig (default: %(default)s)")
    parser.add_argument("--service", required=True, help="namespace/name[:port]")
    parser.add_argument("--listen", default="127.0.0.1:8001", help="host:port (port 0: any)")
    parser.add_argument("--algorithm", default="least_conn")
    args = parser.parse_args(argv)
    ref, _, port_text = args.service.partition(":")
    namespace, _, name = ref.rpartition("/")
    port = int(port_text) if port_text.isdigit() else port_text or None
    host, _, listen_port = args.listen.rpartition(":")
    with lbcore.connect(args.source) as live:
        picker = live.picker(namespace or "default", name, port, algorithm=args.algorithm,
                             tcp_closing_timeout=0.001)
        site = server.Site(ServiceProxyResource(picker, reactor))
        listening = reactor.listenTCP(int(listen_port), site, interface=host)  # type: ignore[attr-defined]
        print(f"listening on {host}:{listening.getHost().port}", flush=True)
        reactor.run()  # type: ignore[attr-defined]


if __name__ == "__main__":
    main()
