"""The route frontend over plain HTTP: routing by host and path, weights, keep-alive on both
sides, forwarded headers, limits, 404 and 503, and a pod removed under load."""

from __future__ import annotations

import http.client
import json
import socket
import threading

from route_helpers import endpoint_slice, get, ingress, route, service


def port_of(cluster) -> int:
    return cluster.frontend.listening["http"][1]


def backend_of(body: bytes) -> str:
    return json.loads(body)["backend"]


def test_requests_go_by_host_and_unknown_hosts_get_404(cluster, pods) -> None:
    cluster.serve("web", pods("web-0"))
    cluster.serve("api", pods("api-0"))
    cluster.apply(route("web", "www.example.com", "web"), route("api", "api.example.com", "api"),
                  route("wild", "any.apps.example.com", "api", wildcard="Subdomain"))
    port = port_of(cluster)
    assert backend_of(get(port, "www.example.com")[2]) == "web-0"
    assert backend_of(get(port, "API.Example.com:8080")[2]) == "api-0"
    assert backend_of(get(port, "other.apps.example.com")[2]) == "api-0"  # the wildcard
    status, _, body = get(port, "nobody.example.org")
    assert status == 404 and body
    assert get(port, "deep.other.apps.example.com")[0] == 404  # a wildcard is one label


def test_the_longest_path_prefix_wins_and_exact_paths_match_only_themselves(cluster, pods) -> None:
    for name in ("root", "app", "appv2", "exact"):
        cluster.serve(name, pods(name))
    cluster.apply(route("root", "www.example.com", "root"),
                  route("app", "www.example.com", "app", path="/app"),
                  route("appv2", "www.example.com", "appv2", path="/app/v2"),
                  ingress("exact", [("www.example.com", [("/login", "Exact", "exact", 80)])]))
    port = port_of(cluster)
    expect = {"/": "root", "/app": "app", "/app/": "app", "/app/x?q=1": "app", "/apple": "root",
              "/app/v2": "appv2", "/app/v2/z": "appv2", "/login": "exact", "/login/x": "root"}
    for path, want in expect.items():
        assert backend_of(get(port, "www.example.com", path)[2]) == want, path


def test_a_route_without_endpoints_answers_503(cluster, pods) -> None:
    cluster.apply(route("web", "www.example.com", "web"))  # no such service
    status, headers, body = get(cluster.frontend.listening["http"][1], "www.example.com")
    assert status == 503 and b"no endpoint" in body and headers["content-length"] == str(len(body))


def test_forwarded_headers_are_added(cluster, pods) -> None:
    cluster.serve("web", pods("web-0"))
    cluster.apply(route("web", "www.example.com", "web"))
    port = port_of(cluster)
    _, _, body = get(port, "www.example.com", headers={"X-Forwarded-For": "192.0.2.7",
                                                       "Connection": "keep-alive"})
    h = json.loads(body)["headers"]
    assert h["x-forwarded-for"] == "192.0.2.7, 127.0.0.1"
    assert h["x-forwarded-host"] == "www.example.com"
    assert h["x-forwarded-port"] == str(port)
    assert h["x-forwarded-proto"] == "http"
    assert h["forwarded"] == 'for=127.0.0.1;host="www.example.com";proto=http'
    assert "connection" not in h  # hop-by-hop headers stay on their hop


def test_kept_alive_clients_reuse_backend_connections(cluster, pods) -> None:
    (pod,) = pods("web-0")
    cluster.serve("web", [pod])
    cluster.apply(route("web", "www.example.com", "web"))
    port = port_of(cluster)
    conns = [http.client.HTTPConnection("127.0.0.1", port, timeout=10) for _ in range(3)]
    for _ in range(50):
        for c in conns:
            assert get(port, "www.example.com", conn=c)[0] == 200
    # a request at a time per client: at most one backend connection each (a worker pool
    # per worker), never one per request
    assert pod.requests == 150
    assert pod.accepted <= 3 * 2
    stats = cluster.frontend.stats()
    assert stats["backend_reuses"] >= 150 - pod.accepted
    for c in conns:
        c.close()


def test_weights_split_requests_within_a_chi_square_bound(cluster, pods) -> None:
    cluster.serve("blue", pods("blue"))
    cluster.serve("green", pods("green"))
    cluster.apply(route("web", "www.example.com", "blue", weight=64, alternates=(("green", 192),)))
    port = port_of(cluster)
    n = 2000
    counts = {"blue": 0, "green": 0}
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    for _ in range(n):
        counts[backend_of(get(port, "www.example.com", conn=conn)[2])] += 1
    conn.close()
    expected = {"blue": n * 0.25, "green": n * 0.75}
    chi2 = sum((counts[k] - expected[k]) ** 2 / expected[k] for k in counts)
    # 1 degree of freedom: P(chi2 > 15.14) = 1e-4, so a fair split fails less than 1 in 10,000
    assert chi2 < 15.14, counts


def test_a_weight_of_zero_takes_no_request(cluster, pods) -> None:
    cluster.serve("blue", pods("blue"))
    cluster.serve("green", pods("green"))
    cluster.apply(route("web", "www.example.com", "blue", weight=0, alternates=(("green", 1),)))
    port = port_of(cluster)
    assert {backend_of(get(port, "www.example.com")[2]) for _ in range(30)} == {"green"}


def raw_request(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(data)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    return out


def test_request_head_and_body_limits(make_cluster, pods) -> None:
    cluster = make_cluster(buffer_size=4096, max_body_bytes=1000)
    cluster.serve("web", pods("web-0"))
    cluster.apply(route("web", "www.example.com", "web"))
    port = port_of(cluster)
    big = b"GET / HTTP/1.1\r\nHost: www.example.com\r\nX-Big: " + b"a" * 5000 + b"\r\n\r\n"
    assert raw_request(port, big).startswith(b"HTTP/1.1 431 ")
    many = b"GET / HTTP/1.1\r\nHost: www.example.com\r\n" + b"".join(
        b"X-%d: 1\r\n" % i for i in range(150)) + b"\r\n"
    assert raw_request(port, many).startswith(b"HTTP/1.1 400 ")
    assert get(port, "www.example.com", method="POST", body=b"x" * 1001)[0] == 413
    status, _, body = get(port, "www.example.com", method="POST", body=b"x" * 1000)
    assert status == 200 and json.loads(body)["length"] == 1000
    assert raw_request(port, b"GARBAGE\r\n\r\n").startswith(b"HTTP/1.1 400 ")


def test_chunked_bodies_and_pipelined_requests_pass(cluster, pods) -> None:
    cluster.serve("web", pods("web-0"))
    cluster.apply(route("web", "www.example.com", "web"))
    port = port_of(cluster)
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    c.request("POST", "/", body=iter([b"ab", b"cde"]), headers={"Host": "www.example.com"},
              encode_chunked=True)
    r = c.getresponse()
    assert r.status == 200 and json.loads(r.read())["backend"] == "web-0"
    c.close()
    two = b"GET /1 HTTP/1.1\r\nHost: www.example.com\r\n\r\nGET /2 HTTP/1.1\r\nHost: www.example.com\r\nConnection: close\r\n\r\n"
    out = raw_request(port, two)
    assert out.count(b"HTTP/1.1 200 ") == 2 and b'"/1"' in out and b'"/2"' in out


def test_a_pod_removed_under_load_fails_no_request(cluster, pods) -> None:
    a, b = pods("web-a", "web-b")
    cluster.serve("web", [a, b])
    cluster.apply(route("web", "www.example.com", "web"))
    port = port_of(cluster)
    failures: list[str] = []
    done = threading.Event()
    counts = [0]

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            for _ in range(3000):
                if done.is_set():
                    break
                try:
                    status, _, body = get(port, "www.example.com", conn=conn)
                    counts[0] += 1
                    if status != 200:
                        failures.append(f"{status} {body[:80]!r}")
                except (OSError, http.client.HTTPException) as exc:
                    failures.append(repr(exc))
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        finally:
            conn.close()

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    while counts[0] < 200 and any(t.is_alive() for t in threads):
        threading.Event().wait(0.01)
    # the pod leaves the endpoints (as when it is deleted), then stops (closing its kept
    # connections under the proxy)
    cluster.apply(endpoint_slice("web", [b.server_address[0]], b.port))
    removed_at = b.requests
    a.close()
    while counts[0] < 600 and any(t.is_alive() for t in threads):
        threading.Event().wait(0.01)
    done.set()
    for t in threads:
        t.join(30)
    assert failures == []
    assert b.requests > removed_at


def test_client_ip_affinity_keeps_a_client_on_one_pod(cluster, pods) -> None:
    a, b, c = pods("web-a", "web-b", "web-c")
    port0 = a.port
    cluster.apply(service("web", port0, affinity="ClientIP"),
                  endpoint_slice("web", [p.server_address[0] for p in (a, b, c)], port0),
                  route("web", "www.example.com", "web"))
    port = port_of(cluster)
    # new connections each time: the pick core's affinity, not the kept connection, decides
    assert len({backend_of(get(port, "www.example.com")[2]) for _ in range(30)}) == 1


def test_a_slow_request_head_gets_408_and_an_idle_client_is_closed(make_cluster, pods) -> None:
    cluster = make_cluster(header_timeout=0.3, keepalive_timeout=0.3)
    cluster.serve("web", pods("web-0"))
    cluster.apply(route("web", "www.example.com", "web"))
    port = port_of(cluster)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: www.exa")  # and nothing more
        assert s.recv(65536).startswith(b"HTTP/1.1 408 ")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: www.example.com\r\n\r\n")
        out = b""
        while chunk := s.recv(65536):  # the answer, then the end once the client idles
            out += chunk
        assert out.startswith(b"HTTP/1.1 200 ")
