"""The route frontend over TLS (real handshakes, certificates made here): edge, the redirect,
passthrough by SNI with the pods' own certificates, reencrypt, SNI picking the certificate and a
certificate changed without dropping a connection."""

from __future__ import annotations

import http.client
import json
import socket
import ssl

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
