"""The route frontend over TLS (real handshakes, certificates made here): edge, the redirect,
passthrough by SNI with the pods' own certificates, reencrypt, SNI picking the certificate and a
certificate changed without dropping a connection."""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import struct

import pytest
from route_helpers import get, https_get, make_pair, route, tls_client


def ports(cluster) -> tuple[int, int]:
    return cluster.frontend.listening["http"][1], cluster.frontend.listening["https"][1]


def edge(cert: tuple[str, str], insecure: str = "None") -> dict:
    return {"termination": "edge", "certificate": cert[0], "key": cert[1],
            "insecureEdgeTerminationPolicy": insecure}


def test_edge_ends_tls_with_the_certificate_sni_names(cluster, pods) -> None:
    cluster.serve("web", pods("web-0"))
    cluster.serve("api", pods("api-0"))
    www, api = make_pair("www.example.com"), make_pair("api.example.com")
    cluster.apply(route("web", "www.example.com", "web", tls=edge(www)),
                  route("api", "api.example.com", "api", tls=edge(api)))
    _, https = ports(cluster)
    for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
        ctx = tls_client(www[0])
        ctx.minimum_version = ctx.maximum_version = version
        status, _, body, _ = https_get(https, "www.example.com", ctx)
        assert status == 200
        assert json.loads(body)["backend"] == "web-0"
        assert json.loads(body)["headers"]["x-forwarded-proto"] == "https"
    status, _, body, _ = https_get(https, "api.example.com", tls_client(api[0]))
    assert json.loads(body)["backend"] == "api-0"
    # the certificate of the other host does not verify: SNI chose api's
    with pytest.raises(ssl.SSLCertVerificationError):
        https_get(https, "api.example.com", tls_client(www[0]))


def test_insecure_policies_redirect_allow_or_refuse_plain_http(cluster, pods) -> None:
    cluster.serve("web", pods("web-0"))
    cert = make_pair("a.example.com", "b.example.com", "c.example.com")
    cluster.apply(route("a", "a.example.com", "web", tls=edge(cert, "Redirect")),
                  route("b", "b.example.com", "web", tls=edge(cert, "Allow")),
                  route("c", "c.example.com", "web", tls=edge(cert, "None")))
    http, https = ports(cluster)
    status, headers, _ = get(http, "a.example.com", "/x?y=1")
    assert status == 302 and headers["location"] == f"https://a.example.com:{https}/x?y=1"
    assert get(http, "b.example.com")[0] == 200
    assert get(http, "c.example.com")[0] == 404
    assert https_get(https, "c.example.com", tls_client(cert[0]))[0] == 200


def test_passthrough_relays_the_stream_unread_to_each_hosts_pod(cluster, pods) -> None:
    one, two = make_pair("one.example.com"), make_pair("two.example.com")
    cluster.serve("one", pods("one-0", cert=one))
    cluster.serve("two", pods("two-0", cert=two))
    cluster.apply(route("one", "one.example.com", "one", tls={"termination": "passthrough"}),
                  route("two", "two.example.com", "two", tls={"termination": "passthrough"}))
    _, https = ports(cluster)
    # each client verifies its pod's own certificate: nothing was decrypted on the way
    for host, cert, tag in (("one.example.com", one, "one-0"), ("two.example.com", two, "two-0")):
        status, _, body, _ = https_get(https, host, tls_client(cert[0]))
        assert status == 200 and json.loads(body)["backend"] == tag
        assert "x-forwarded-for" not in json.loads(body)["headers"]  # the HTTP was not touched
    with pytest.raises(ssl.SSLCertVerificationError):
        https_get(https, "one.example.com", tls_client(two[0]))
    assert cluster.frontend.stats()["passthrough"] >= 3


def test_edge_and_passthrough_share_the_https_port(cluster, pods) -> None:
    pod_cert, www = make_pair("pt.example.com"), make_pair("www.example.com")
    cluster.serve("pt", pods("pt-0", cert=pod_cert))
    cluster.serve("web", pods("web-0"))
    cluster.apply(route("pt", "pt.example.com", "pt", tls={"termination": "passthrough"}),
                  route("web", "www.example.com", "web", tls=edge(www)))
    _, https = ports(cluster)
    assert json.loads(https_get(https, "pt.example.com", tls_client(pod_cert[0]))[2])["backend"] == "pt-0"
    assert json.loads(https_get(https, "www.example.com", tls_client(www[0]))[2])["backend"] == "web-0"


def test_reencrypt_verifies_the_pod_against_the_destination_ca(cluster, pods) -> None:
    pod_cert, www = make_pair("web.shop.svc"), make_pair("www.example.com")
    cluster.serve("web", pods("web-0", cert=pod_cert))
    tls = {**edge(www), "termination": "reencrypt", "destinationCACertificate": pod_cert[0]}
    cluster.apply(route("web", "www.example.com", "web", tls=tls))
    _, https = ports(cluster)
    status, _, body, _ = https_get(https, "www.example.com", tls_client(www[0]))
    assert status == 200 and json.loads(body)["backend"] == "web-0"
    # a CA that did not sign the pod's certificate: the pod is refused
    other = make_pair("other.example.com")
    cluster.apply(route("web", "www.example.com", "web",
                        tls={**tls, "destinationCACertificate": other[0]}))
    assert https_get(https, "www.example.com", tls_client(www[0]))[0] in (502, 503)


def test_a_new_certificate_serves_new_handshakes_and_keeps_open_connections(cluster, pods) -> None:
    cluster.serve("web", pods("web-0"))
    old, new = make_pair("www.example.com"), make_pair("www.example.com")
    cluster.apply(route("web", "www.example.com", "web", tls=edge(old)))
    _, https = ports(cluster)
    kept = tls_client(old[0]).wrap_socket(socket.create_connection(("127.0.0.1", https), timeout=10),
                                          server_hostname="www.example.com")
    request = b"GET / HTTP/1.1\r\nHost: www.example.com\r\n\r\n"

    def answer() -> int:
        r = http.client.HTTPResponse(kept)
        r.begin()
        r.read()
        return r.status

    kept.sendall(request)
    assert answer() == 200
    cluster.apply(route("web", "www.example.com", "web", tls=edge(new)))
    assert https_get(https, "www.example.com", tls_client(new[0]))[0] == 200
    with pytest.raises(ssl.SSLCertVerificationError):
        https_get(https, "www.example.com", tls_client(old[0]))
    kept.sendall(request)  # the connection made before the change goes on
    assert answer() == 200
    kept.close()


def test_sessions_resume_unless_resumption_is_off(make_cluster, pods) -> None:
    www = make_pair("www.example.com")
    for resumption in (True, False):
        cluster = make_cluster(tls_session_resumption=resumption)
        cluster.serve("web", pods("web-0"))
        cluster.apply(route("web", "www.example.com", "web", tls=edge(www)))
        _, https = ports(cluster)
        ctx = tls_client(www[0])
        session = https_get(https, "www.example.com", ctx)[3]  # the answer brought the tickets
        raw = socket.create_connection(("127.0.0.1", https), timeout=10)
        second = ctx.wrap_socket(raw, server_hostname="www.example.com", session=session)
        assert second.session_reused is resumption
        second.close()


def signed_pair(ca_dir, name: str) -> tuple[tuple[str, str], str]:
    """A certificate for ``name`` signed by the CA kept in ``ca_dir`` (made on first use), its
    key, and that CA's certificate."""
    from lbcore.runtime.tls import generate_certificates

    cert, key, ca = generate_certificates(ca_dir, [name])
    return (cert.read_text(), key.read_text()), ca.decode()


def test_reencrypt_with_the_service_ca_verifies_the_service_name(make_cluster, pods, tmp_path) -> None:
    right, ca = signed_pair(tmp_path, "web.shop.svc")
    wrong, _ = signed_pair(tmp_path, "db.shop.svc")  # the same CA, another service's name
    (tmp_path / "service-ca.pem").write_text(ca)
    cluster = make_cluster(default_destination_ca=str(tmp_path / "service-ca.pem"))
    www = make_pair("www.example.com", "api.example.com")
    cluster.serve("web", pods("web-0", cert=right))
    cluster.serve("api", pods("api-0", cert=wrong))
    reencrypt = {**edge(www), "termination": "reencrypt"}  # no destinationCACertificate
    cluster.apply(route("web", "www.example.com", "web", tls=reencrypt),
                  route("api", "api.example.com", "api", tls=reencrypt))
    _, https = ports(cluster)
    status, _, body, _ = https_get(https, "www.example.com", tls_client(www[0]))
    assert status == 200 and json.loads(body)["backend"] == "web-0"
    # api's pod chains to the service CA but names db.shop.svc, not api.shop.svc: refused
    assert https_get(https, "api.example.com", tls_client(www[0]))[0] == 503
    assert cluster.frontend.stats()["backend_tls_failures"] >= 1
    # a route that gives its destinationCACertificate trusts what chains to it, whatever the
    # name (as OpenShift's router, which checks the service name only with its service CA)
    cluster.apply(route("api", "api.example.com", "api",
                        tls={**reencrypt, "destinationCACertificate": ca}))
    status, _, body, _ = https_get(https, "api.example.com", tls_client(www[0]))
    assert status == 200 and json.loads(body)["backend"] == "api-0"


def test_reencrypt_keeps_its_pod_connections_for_the_next_requests(cluster, pods) -> None:
    pod_cert, www = make_pair("web.shop.svc"), make_pair("www.example.com")
    (pod,) = pods("web-0", cert=pod_cert)
    cluster.serve("web", [pod])
    cluster.apply(route("web", "www.example.com", "web",
                        tls={**edge(www), "termination": "reencrypt",
                             "destinationCACertificate": pod_cert[0]}))
    _, https = ports(cluster)
    client = tls_client(www[0]).wrap_socket(
        socket.create_connection(("127.0.0.1", https), timeout=10), server_hostname="www.example.com")
    for _ in range(40):
        client.sendall(b"GET / HTTP/1.1\r\nHost: www.example.com\r\n\r\n")
        r = http.client.HTTPResponse(client)
        r.begin()
        assert r.status == 200 and json.loads(r.read())["backend"] == "web-0"
    client.close()
    # one client connection, a request at a time: one TLS connection to the pod carries all
    assert pod.requests == 40
    assert pod.accepted == 1
    assert cluster.frontend.stats()["backend_reuses"] >= 39


def client_hello(host: str) -> bytes:
    """The bytes of a TLS ClientHello for ``host``, as a client's first flight."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = tls_client(None).wrap_bio(incoming, outgoing, server_hostname=host)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def wait_for(stats, keys: tuple[str, ...], want: dict[str, int]) -> dict[str, int]:
    """The frontend's counters ``keys`` once they reach ``want`` (polled a bounded number of
    times), or as they are at the last poll."""
    import time

    for _ in range(200):
        now = {k: stats()[k] for k in keys}
        if all(now[k] >= v for k, v in want.items()):
            return now
        time.sleep(0.02)
    return now


def test_clients_gone_mid_handshake_are_counted_apart_from_tls_failures(cluster, pods) -> None:
    cluster.serve("web", pods("web-0"))
    www = make_pair("www.example.com")
    cluster.apply(route("web", "www.example.com", "web", tls=edge(www)))
    _, https = ports(cluster)
    stats = cluster.frontend.stats
    keys = ("tls_aborted", "tls_failures", "tls_handshakes")
    before = {k: stats()[k] for k in keys}
    # as a load generator's connections cut at the end of its run: a ClientHello, then the
    # close (or a reset) before the handshake ends; and a connection closed before any byte
    hello = client_hello("www.example.com")
    for reset in (False, False, True, True):
        s = socket.create_connection(("127.0.0.1", https), timeout=10)
        s.sendall(hello)
        if reset:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()
    socket.create_connection(("127.0.0.1", https), timeout=10).close()
    after = wait_for(stats, keys, {"tls_aborted": before["tls_aborted"] + 5})
    assert after["tls_aborted"] - before["tls_aborted"] == 5
    assert after["tls_failures"] == before["tls_failures"]
    # real failures: plain HTTP on the TLS port, and a client that refuses the certificate
    s = socket.create_connection(("127.0.0.1", https), timeout=10)
    s.sendall(b"GET / HTTP/1.1\r\nHost: www.example.com\r\n\r\n")
    s.recv(100)
    s.close()
    with pytest.raises(ssl.SSLCertVerificationError):
        https_get(https, "www.example.com", tls_client(make_pair("www.example.com")[0]))
    after = wait_for(stats, keys, {"tls_failures": before["tls_failures"] + 2})
    assert after["tls_failures"] - before["tls_failures"] == 2
    assert after["tls_aborted"] - before["tls_aborted"] == 5
    assert after["tls_handshakes"] == before["tls_handshakes"]


def test_a_default_destination_ca_without_a_certificate_is_refused(make_cluster, tmp_path) -> None:
    from lbcore import ConfigError

    (tmp_path / "ca.pem").write_text("not a certificate\n")
    with pytest.raises(ConfigError, match="default_destination_ca: .*ca.pem.* no PEM certificate"):
        make_cluster(default_destination_ca=str(tmp_path / "ca.pem"))
    with pytest.raises(ConfigError, match="default_destination_ca: .*No such file"):
        make_cluster(default_destination_ca=str(tmp_path / "missing.pem"))
