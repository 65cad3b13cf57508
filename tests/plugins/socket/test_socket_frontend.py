"""The socket frontend with real sockets on loopback: balancing, failures, half-close, syncs."""

from __future__ import annotations

import collections
import gc
import hashlib
import os
import shutil
import socket
import subprocess
import threading
import time
import types

import pytest
from lbcore_plugins import _proxy_c, socket_frontend
from lbcore_plugins.socket_frontend import SocketFrontend
from proxy_helpers import (
    ReplyBackend,
    cluster_ip,
    read_line,
    service_port,
    snapshot,
    tag_of,
    wait_until,
)

from lbcore.errors import ConfigError
from lbcore.model.snapshot import EndpointInfo


def test_round_robin_gives_three_backends_equal_shares(backends, make_frontend):
    bs = [backends(t) for t in "ABC"]
    sp = service_port("web", [b.endpoint() for b in bs])
    fe = make_frontend()
    fe.sync(snapshot(sp), frozenset({"default/web"}))
    counts = collections.Counter(tag_of((sp.cluster_ips[0], 8080)) for _ in range(300))
    assert counts == {"A": 100, "B": 100, "C": 100}


@pytest.mark.parametrize("algorithm", ["random", "least_conn", "weighted_round_robin"])
def test_each_algorithm_shares_within_tolerance(backends, make_frontend, algorithm):
    bs = [backends(t) for t in "ABC"]
    sp = service_port("web", [b.endpoint() for b in bs])
    fe = make_frontend(algorithm=algorithm)
    fe.sync(snapshot(sp), frozenset({"default/web"}))
    counts = collections.Counter(tag_of((sp.cluster_ips[0], 8080)) for _ in range(600))
    # binomial(600, 1/3): sd 11.5; 60 is over 5 sd
    assert set(counts) == {"A", "B", "C"}
    assert all(abs(n - 200) <= 60 for n in counts.values()), counts


def test_weights_shift_the_shares(backends, make_frontend):
    a, b = backends("A"), backends("B")
    sp = service_port("web", [a.endpoint(weight=3), b.endpoint(weight=1)])
    fe = make_frontend(algorithm="weighted_round_robin")
    fe.sync(snapshot(sp), frozenset({"default/web"}))
    counts = collections.Counter(tag_of((sp.cluster_ips[0], 8080)) for _ in range(200))
    assert counts == {"A": 150, "B": 50}


def test_client_ip_affinity_keeps_each_client_on_one_backend(backends, make_frontend):
    bs = [backends(t) for t in "ABC"]
    sp = service_port("web", [b.endpoint() for b in bs], session_affinity="ClientIP")
    fe = make_frontend()
    fe.sync(snapshot(sp), frozenset({"default/web"}))
    chosen = {}
    for i in range(2, 11):
        source = f"127.0.0.{i}"
        tags = {tag_of((sp.cluster_ips[0], 8080), source=source) for _ in range(8)}
        assert len(tags) == 1, (source, tags)
        chosen[source] = tags.pop()
    assert len(set(chosen.values())) == 3


def test_refused_backend_is_skipped_without_client_error(backends, make_frontend):
    a, b, c = backends("A"), backends("B"), backends("C")
    sp = service_port("web", [a.endpoint(), b.endpoint(), c.endpoint()])
    fe = make_frontend(down_time=30.0)
    fe.sync(snapshot(sp), frozenset({"default/web"}))
    b.close()
    tags = [tag_of((sp.cluster_ips[0], 8080)) for _ in range(60)]
    assert set(tags) == {"A", "C"}
    assert fe.stats()["connect_failed"] >= 1
    down = {e["address"]: e["down"] for e in fe.engine.service_endpoints(f"cluster/{sp.key}")}
    assert down[f"127.0.0.1:{b.port}"] is True


def test_backend_that_never_answers_times_out_and_the_next_one_serves(backends, make_frontend):
    a = backends("A")
    # a listener whose accept queue is full: its SYNs are dropped, connects hang
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(0)
    fillers = []
    for _ in range(3):
        f = socket.socket()
        f.setblocking(False)
        f.connect_ex(silent.getsockname())
        fillers.append(f)
    time.sleep(0.1)
    try:
        port = silent.getsockname()[1]
        sp = service_port("web", [EndpointInfo("127.0.0.1", port), a.endpoint()])
        fe = make_frontend(connect_timeout=0.3, down_time=30.0)
        fe.sync(snapshot(sp), frozenset({"default/web"}))
        tags = [tag_of((sp.cluster_ips[0], 8080), timeout=3) for _ in range(4)]
        assert tags == ["A"] * 4
        assert fe.stats()["connect_failed"] >= 1
    finally:
        for f in fillers:
            f.close()
        silent.close()


def mute_backend() -> socket.socket:
    """A listener that never accepts: the kernel completes handshakes and queues what clients
    send, and nothing ever answers (a stopped or wedged process)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(64)
    return s


def ask(address: tuple[str, int]) -> str:
    """Send a request line and read the first line back; "" when the connection is reset or
    closed first."""
    try:
        with socket.create_connection(address, timeout=5) as s:
            s.settimeout(5)
            s.sendall(b"hello\n")
            return read_line(s)
    except ConnectionResetError:
        return ""


def test_an_unanswering_backend_times_out_and_is_ejected(backends, make_frontend):
    a = backends("A")
    mute = mute_backend()
    try:
        sp = service_port("web", [EndpointInfo("127.0.0.1", mute.getsockname()[1]), a.endpoint()])
        fe = make_frontend(server_timeout=0.3, eject_after=2, down_time=30.0)
        fe.sync(snapshot(sp), frozenset({"default/web"}))
        answers = [ask((sp.cluster_ips[0], 8080)) for _ in range(10)]
        # round robin sends every other request to the mute one until its second failure in
        # a row ejects it: two requests fail, the rest reach A
        assert answers.count("") == 2 and answers.count("A") == 8, answers
        stats = fe.stats()
        assert (stats["server_timeouts"], stats["ejected"]) == (2, 1), stats
    finally:
        mute.close()


def test_connections_failing_together_eject_once(backends, make_frontend):
    """Clients already waiting on a backend that stops answering fail together: one
    ejection, not one per failure (each would double the time out, to the 300 s cap)."""
    a = backends("A")
    mute = mute_backend()
    try:
        sp = service_port("web", [EndpointInfo("127.0.0.1", mute.getsockname()[1]), a.endpoint()])
        fe = make_frontend(server_timeout=1.0, eject_after=1, down_time=30.0)
        fe.sync(snapshot(sp), frozenset({"default/web"}))
        clients = []
        for _ in range(12):  # all made before the first times out; half go to the mute one
            c = socket.create_connection((sp.cluster_ips[0], 8080), timeout=5)
            c.sendall(b"hello\n")
            clients.append(c)
        answers = []
        for c in clients:
            try:
                answers.append(read_line(c))
            except ConnectionResetError:
                answers.append("")
            c.close()
        stats = fe.stats()
        assert stats["server_timeouts"] >= 2, (stats, answers)
        assert stats["ejected"] == 1, stats
    finally:
        mute.close()


def test_ejection_is_capped_at_a_share_of_the_endpoints(backends, make_frontend):
    a = backends("A")
    mutes = [mute_backend(), mute_backend()]
    try:
        eps = [EndpointInfo("127.0.0.1", m.getsockname()[1]) for m in mutes] + [a.endpoint()]
        sp = service_port("web", eps)
        fe = make_frontend(server_timeout=0.2, eject_after=1, down_time=30.0, max_ejected_share=0.5)
        fe.sync(snapshot(sp), frozenset({"default/web"}))
        answers = [ask((sp.cluster_ips[0], 8080)) for _ in range(9)]
        # half of three is one: the second mute endpoint is never ejected and keeps failing
        assert fe.stats()["ejected"] == 1
        assert answers.count("A") >= 4 and answers.count("") >= 2, answers
    finally:
        for m in mutes:
            m.close()


def test_no_endpoint_left_resets_the_client(backends, make_frontend):
    a = backends("A")
    sp = service_port("web", [a.endpoint()])
    fe = make_frontend(retries=1)
    fe.sync(snapshot(sp), frozenset({"default/web"}))
    a.close()
    # accepted, then reset: the reset may even reach the client before connect() returns
    with pytest.raises(ConnectionResetError):
        with socket.create_connection((sp.cluster_ips[0], 8080), timeout=3) as s:
            s.recv(10)
    assert fe.stats()["rejected"] == 1


def test_a_port_with_no_endpoint_refuses_as_kube_proxy_does(backends, udp_backends, make_frontend):
    """TCP: ECONNREFUSED (kube-proxy's REJECT); UDP: ICMP port unreachable, seen by a connected
    socket as ConnectionRefusedError. Both are served once an endpoint comes."""
    ip = cluster_ip()
    tcp = service_port("web", [], ip=ip)
    udp = service_port("dns", [], ip=ip, port=5353, protocol="UDP")
    fe = make_frontend()
    fe.sync(snapshot(tcp, udp), frozenset({"default/web", "default/dns"}))
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((ip, 8080), timeout=3).close()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
        u.settimeout(3)
        u.connect((ip, 5353))
        u.send(b"ping")
        with pytest.raises(ConnectionRefusedError):
            u.recv(100)
    a, d = backends("A"), udp_backends("D")
    fe.sync(
        snapshot(service_port("web", [a.endpoint()], ip=ip),
                 service_port("dns", [d.endpoint()], ip=ip, port=5353, protocol="UDP"), version=2),
        frozenset({"default/web", "default/dns"}),
    )
    assert tag_of((ip, 8080)) == "A"


@pytest.mark.parametrize("protocol", ["TCP", "UDP"])
def test_an_address_another_socket_serves_is_refused_not_shared(backends, make_frontend, protocol):
    """Two daemons on one ClusterIP:port would split its clients: the second refuses, naming it."""
    ip = cluster_ip()
    other = socket.socket(socket.AF_INET, socket.SOCK_STREAM if protocol == "TCP" else socket.SOCK_DGRAM)
    other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if protocol == "TCP":
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    other.bind((ip, 8080))
    if protocol == "TCP":
        other.listen(8)
    try:
        a = backends("A")
        fe = make_frontend()
        sp = service_port("web", [a.endpoint()], ip=ip, protocol=protocol)
        with pytest.raises(OSError, match=f"cannot listen on {protocol} {ip}:8080: already served"):
            fe.sync(snapshot(sp), frozenset({"default/web"}))
    finally:
        other.close()
    # once the other owner is gone, the next sync serves it
    fe.sync(snapshot(sp, version=2), frozenset({"default/web"}))
    if protocol == "TCP":
        assert tag_of((ip, 8080)) == "A"


def test_half_close_passes_fin_and_keeps_the_reply_direction(backends, make_frontend):
    a = backends("A")
    sp = service_port("web", [a.endpoint()])
    fe = make_frontend()
    fe.sync(snapshot(sp), frozenset({"default/web"}))
    with socket.create_connection((sp.cluster_ips[0], 8080), timeout=3) as s:
        assert read_line(s) == "A"
        s.sendall(b"hello world")
        s.shutdown(socket.SHUT_WR)
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    # the echo came back, then the backend saw our FIN and still could answer
    assert data == b"hello worldEOF A 11"


@pytest.mark.parametrize("size", [4, 100_000])
def test_bytes_and_fin_sent_right_after_connect_reach_the_backend(backends, make_frontend, size):
    # what the client sent before the proxy accepted is read at accept, before the backend
    # connection exists; more than one buffer of it is read on after the backend is there
    a = backends("A")
    sp = service_port("web", [a.endpoint()])
    fe = make_frontend()
    fe.sync(snapshot(sp), frozenset({"default/web"}))
    payload = os.urandom(size)
    for _ in range(5):
        with socket.create_connection((sp.cluster_ips[0], 8080), timeout=3) as s:
            s.sendall(payload)
            s.shutdown(socket.SHUT_WR)
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        assert data == b"A\n" + payload + b"EOF A %d" % size


def test_bytes_that_waited_in_the_accept_queue_are_all_relayed(backends, make_frontend):
    # more than one buffer (16 KiB) arrives before the accept and nothing after it: what the
    # read at accept leaves must still be relayed
    a = backends("A")
    sp = service_port("web", [a.endpoint()])
    fe = make_frontend(max_connections=1, workers=1)
    fe.sync(snapshot(sp), frozenset({"default/web"}))
    addr = (sp.cluster_ips[0], 8080)
    payload = os.urandom(40_000)
    first = socket.create_connection(addr, timeout=3)
    assert read_line(first) == "A"
    with socket.create_connection(addr, timeout=3) as second:
        second.sendall(payload)  # queued in the kernel: the listener is paused
        first.close()
        data = b""
        while len(data) < 2 + len(payload):
            data += second.recv(65536)
        assert data == b"A\n" + payload


def test_backend_end_reaches_a_client_that_keeps_its_side_open(make_frontend):
    # the FIN waits one batch of events for the client to close first; a client that does
    # not close must still see the end of the reply, at once
    b = ReplyBackend(b"the whole reply")
    try:
        sp = service_port("web", [b.endpoint()])
        fe = make_frontend()
        fe.sync(snapshot(sp), frozenset({"default/web"}))
        for _ in range(20):
            with socket.create_connection((sp.cluster_ips[0], 8080), timeout=2) as s:
                data = b""
                while chunk := s.recv(4096):  # a lost FIN ends in a timeout here
                    data += chunk
                assert data == b"the whole reply"
        assert wait_until(lambda: fe.stats()["connections"] == 0)
    finally:
        b.close()


def test_client_that_closes_after_the_reply_ends_the_connection(make_frontend):
    b = ReplyBackend(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
    try:
        sp = service_port("web", [b.endpoint()])
        fe = make_frontend()
        fe.sync(snapshot(sp), frozenset({"default/web"}))
        for _ in range(50):
            with socket.create_connection((sp.cluster_ips[0], 8080), timeout=2) as s:
                data = b""
                while not data.endswith(b"ok"):
                    data += s.recv(4096)
        assert wait_until(lambda: fe.stats()["connections"] == 0)
        assert fe.stats()["closed"] == fe.stats()["accepted"] == 50
    finally:
        b.close()


@pytest.mark.parametrize("splice", ["auto", "always", "never"])
def test_reply_to_a_client_that_reads_late_is_exact(make_frontend, splice):
    # the client's socket fills while it does not read: the proxy's writes block and only the
    # write space it then waits for (EPOLLOUT) brings the rest
    payload = os.urandom(16 << 20)
    b = ReplyBackend(payload)
    try:
        sp = service_port("bulk", [b.endpoint()])
        fe = make_frontend(splice=splice)
        fe.sync(snapshot(sp), frozenset({"default/bulk"}))
        with socket.create_connection((sp.cluster_ips[0], 8080), timeout=5) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
            time.sleep(0.5)
            received = bytearray()
            while chunk := s.recv(1 << 16):
                received.extend(chunk)
        assert hashlib.sha256(received).digest() == hashlib.sha256(payload).digest()
    finally:
        b.close()


@pytest.mark.parametrize("splice", ["auto", "always", "never"])
def test_bulk_transfer_is_exact_in_both_directions(backends, make_frontend, splice):
    a = backends("A")
    sp = service_port("bulk", [a.endpoint()])
    fe = make_frontend(splice=splice)
    fe.sync(snapshot(sp), frozenset({"default/bulk"}))
    payload = os.urandom(4 << 20)
    received = bytearray()
    with socket.create_connection((sp.cluster_ips[0], 8080), timeout=5) as s:
        assert read_line(s) == "A"

        def reader() -> None:
            while True:
                chunk = s.recv(1 << 16)
                if not chunk:
                    return
                received.extend(chunk)

        t = threading.Thread(target=reader)
        t.start()
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        t.join(20)
    assert not t.is_alive()
    tail = b"EOF A %d" % len(payload)
    assert bytes(received[-len(tail) :]) == tail
    assert hashlib.sha256(received[: -len(tail)]).digest() == hashlib.sha256(payload).digest()
    if splice != "never":
        assert fe.stats()["spliced"] >= 1


def test_silent_client_does_not_hold_up_others(backends, make_frontend):
    a = backends("A")
    sp = service_port("web", [a.endpoint()])
    # one worker: the silent connection and the others share one event loop
    fe = make_frontend(workers=1, idle_timeout=0.0)
    fe.sync(snapshot(sp), frozenset({"default/web"}))
    with socket.create_connection((sp.cluster_ips[0], 8080), timeout=3) as silent:
        assert wait_until(lambda: fe.stats()["connections"] == 1)
        assert [tag_of((sp.cluster_ips[0], 8080)) for _ in range(20)] == ["A"] * 20
        assert wait_until(lambda: fe.stats()["connections"] == 1)  # only the silent one
        assert read_line(silent) == "A"


def test_idle_connection_is_closed_after_the_idle_timeout(backends, make_frontend):
    a = backends("A")
    sp = service_port("web", [a.endpoint()])
    fe = make_frontend(idle_timeout=0.3)
    fe.sync(snapshot(sp), frozenset({"default/web"}))
    with socket.create_connection((sp.cluster_ips[0], 8080), timeout=5) as silent:
        assert read_line(silent) == "A"
        assert silent.recv(10) == b""  # closed by the proxy, nothing was sent
    assert fe.stats()["idle_closed"] == 1


def test_max_connections_queues_the_next_client(backends, make_frontend):
    a = backends("A")
    sp = service_port("web", [a.endpoint()])
    fe = make_frontend(max_connections=2, workers=1)
    fe.sync(snapshot(sp), frozenset({"default/web"}))
    addr = (sp.cluster_ips[0], 8080)
    first = [socket.create_connection(addr, timeout=3) for _ in range(2)]
    assert [read_line(s) for s in first] == ["A", "A"]
    third = socket.create_connection(addr, timeout=3)
    try:
        third.settimeout(0.5)
        with pytest.raises(TimeoutError):
            third.recv(10)  # waiting in the accept queue
        first[0].close()
        third.settimeout(3)
        assert read_line(third) == "A"
    finally:
        third.close()
        first[1].close()


def test_max_total_connections_holds_every_listener_until_one_closes(backends, make_frontend):
    a, b = backends("A"), backends("B")
    web, api = service_port("web", [a.endpoint()]), service_port("api", [b.endpoint()])
    fe = make_frontend(max_total_connections=2, workers=1)
    fe.sync(snapshot(web, api), frozenset({"default/web", "default/api"}))
    first = [socket.create_connection((web.cluster_ips[0], 8080), timeout=3) for _ in range(2)]
    assert [read_line(s) for s in first] == ["A", "A"]
    # another service's listener: the total is reached, so it waits in the accept queue too
    other = socket.create_connection((api.cluster_ips[0], 8080), timeout=3)
    try:
        other.settimeout(0.5)
        with pytest.raises(TimeoutError):
            other.recv(10)
        assert fe.stats()["paused"] >= 1
        first[0].close()
        other.settimeout(3)
        assert read_line(other) == "B"
    finally:
        other.close()
        first[1].close()


def test_max_total_connections_must_not_be_negative(make_frontend):
    with pytest.raises(ConfigError, match=r"max_total_connections: invalid value -1: must be at least 0"):
        make_frontend(max_total_connections=-1)


def test_udp_replies_come_from_the_service_address(udp_backends, make_frontend):
    u = udp_backends("U")
    sp = service_port("dns", [u.endpoint()], protocol="UDP", port=5353)
    fe = make_frontend()
    fe.sync(snapshot(sp), frozenset({"default/dns"}))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:
        c.settimeout(3)
        for i in range(5):
            c.sendto(b"q%d" % i, (sp.cluster_ips[0], 5353))
            data, peer = c.recvfrom(100)
            assert data == b"U:q%d" % i
            assert peer == (sp.cluster_ips[0], 5353)
    assert fe.stats()["udp_flows"] == 1


def udp_exchange(c: socket.socket, address: tuple[str, int], payload: bytes) -> bytes:
    c.sendto(payload, address)
    return c.recvfrom(100)[0]


def test_udp_flows_of_one_client_are_capped_least_recently_used_first(udp_backends, make_frontend):
    u = udp_backends("U")
    sp = service_port("dns", [u.endpoint()], protocol="UDP", port=5353)
    fe = make_frontend(workers=1, udp_max_client_flows=4)
    fe.sync(snapshot(sp), frozenset({"default/dns"}))
    address = (sp.cluster_ips[0], 5353)
    clients = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(10)]
    try:
        for i, c in enumerate(clients):
            c.settimeout(3)
            assert udp_exchange(c, address, b"q%d" % i) == b"U:q%d" % i
        stats = fe.stats()
        assert (stats["open_flows"], stats["udp_evicted_flows"]) == (4, 6), stats
        # the first client's flow went first; it gets a new one, and the oldest left goes
        assert udp_exchange(clients[0], address, b"again") == b"U:again"
        stats = fe.stats()
        assert (stats["open_flows"], stats["udp_evicted_flows"]) == (4, 7), stats
        # the most recent ones were kept: no new flow for them
        flows = stats["udp_flows"]
        for c in clients[7:]:
            assert udp_exchange(c, address, b"x") == b"U:x"
        assert fe.stats()["udp_flows"] == flows
    finally:
        for c in clients:
            c.close()


def test_udp_flows_are_capped_in_total(udp_backends, make_frontend):
    u = udp_backends("U")
    sp = service_port("dns", [u.endpoint()], protocol="UDP", port=5353)
    fe = make_frontend(workers=1, udp_max_flows=3)
    fe.sync(snapshot(sp), frozenset({"default/dns"}))
    address = (sp.cluster_ips[0], 5353)
    for i in range(5):  # five client IPs, one flow each
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:
            c.settimeout(3)
            c.bind((f"127.0.0.{i + 2}", 0))
            assert udp_exchange(c, address, b"q") == b"U:q"
    stats = fe.stats()
    assert (stats["open_flows"], stats["udp_evicted_flows"]) == (3, 2), stats


def test_udp_is_served_by_every_worker(udp_backends, make_frontend):
    """One socket per worker with SO_REUSEPORT: the kernel keeps each client on one of them."""
    u = udp_backends("U")
    sp = service_port("dns", [u.endpoint()], protocol="UDP", port=5353)
    fe = make_frontend(workers=2)
    fe.sync(snapshot(sp), frozenset({"default/dns"}))
    address = (sp.cluster_ips[0], 5353)
    clients = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(64)]
    try:
        for c in clients:
            c.settimeout(3)
            for k in range(2):
                assert udp_exchange(c, address, b"%d" % k) == b"U:%d" % k
        # two datagrams from each of 64 clients, yet 64 flows: each stays on its socket's worker
        assert fe.stats()["udp_flows"] == 64
        if shutil.which("ss"):  # two sockets serve the port, one per worker
            out = subprocess.run(["ss", "-Hunl", f"src {address[0]}:{address[1]}"],
                                 capture_output=True, text=True, timeout=10).stdout
            assert len(out.splitlines()) == 2, out
    finally:
        for c in clients:
            c.close()


def test_udp_flow_moves_at_once_when_its_endpoint_is_removed(udp_backends, make_frontend):
    u1, u2 = udp_backends("U1"), udp_backends("U2")
    sp = service_port("dns", [u1.endpoint()], protocol="UDP", port=5353)
    fe = make_frontend(udp_idle_timeout=300.0)
    fe.sync(snapshot(sp), frozenset({"default/dns"}))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:
        c.settimeout(3)
        c.connect((sp.cluster_ips[0], 5353))
        c.send(b"a")
        assert c.recv(100) == b"U1:a"
        moved = service_port(
            "dns", [u2.endpoint()], ip=sp.cluster_ips[0], protocol="UDP", port=5353
        )
        fe.sync(snapshot(moved, version=2), frozenset({"default/dns"}))
        c.send(b"b")
        assert c.recv(100) == b"U2:b"
    assert fe.stats()["udp_dropped_flows"] == 1


def test_udp_flow_to_a_terminating_endpoint_is_kept(udp_backends, make_frontend):
    u1, u2 = udp_backends("U1"), udp_backends("U2")
    ip = cluster_ip()
    sp = service_port("dns", [u1.endpoint()], ip=ip, protocol="UDP", port=5353)
    fe = make_frontend()
    fe.sync(snapshot(sp), frozenset({"default/dns"}))
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as other,
    ):
        c.settimeout(3)
        other.settimeout(3)
        c.connect((ip, 5353))
        c.send(b"a")
        assert c.recv(100) == b"U1:a"
        ending = u1.endpoint(ready=False, serving=True, terminating=True)
        sp2 = service_port("dns", [ending, u2.endpoint()], ip=ip, protocol="UDP", port=5353)
        fe.sync(snapshot(sp2, version=2), frozenset({"default/dns"}))
        c.send(b"b")
        assert c.recv(100) == b"U1:b"  # established flow finishes on its endpoint
        other.sendto(b"c", (ip, 5353))
        assert other.recvfrom(100)[0] == b"U2:c"  # new flows avoid it


def test_removed_tcp_endpoint_keeps_established_and_gets_no_new(backends, make_frontend):
    a, b = backends("A"), backends("B")
    ip = cluster_ip()
    fe = make_frontend()
    fe.sync(snapshot(service_port("web", [a.endpoint()], ip=ip)), frozenset({"default/web"}))
    with socket.create_connection((ip, 8080), timeout=3) as established:
        assert read_line(established) == "A"
        fe.sync(
            snapshot(service_port("web", [b.endpoint()], ip=ip), version=2),
            frozenset({"default/web"}),
        )
        assert {tag_of((ip, 8080)) for _ in range(10)} == {"B"}
        established.sendall(b"still here")
        assert established.recv(100) == b"still here"


def test_terminating_endpoint_gets_no_new_connections(backends, make_frontend):
    a, b = backends("A"), backends("B")
    ip = cluster_ip()
    fe = make_frontend()
    sp = service_port("web", [a.endpoint(), b.endpoint()], ip=ip)
    fe.sync(snapshot(sp), frozenset({"default/web"}))
    ending = a.endpoint(ready=False, serving=True, terminating=True)
    fe.sync(
        snapshot(service_port("web", [ending, b.endpoint()], ip=ip), version=2),
        frozenset({"default/web"}),
    )
    assert {tag_of((ip, 8080)) for _ in range(10)} == {"B"}
    # when every endpoint is terminating, the serving ones still take traffic (kube-proxy)
    fe.sync(snapshot(service_port("web", [ending], ip=ip), version=3), frozenset({"default/web"}))
    assert tag_of((ip, 8080)) == "A"


def test_listeners_follow_syncs_without_breaking_other_services(backends, make_frontend):
    a, b = backends("A"), backends("B")
    ip_a, ip_b = cluster_ip(), cluster_ip()
    svc_a = service_port("alpha", [a.endpoint()], ip=ip_a)
    svc_b = service_port("beta", [b.endpoint()], ip=ip_b, port=9090)
    fe = make_frontend()
    fe.sync(snapshot(svc_a), frozenset({"default/alpha"}))
    assert fe.listening == [(ip_a, 8080, "TCP")]
    with socket.create_connection((ip_a, 8080), timeout=3) as established:
        assert read_line(established) == "A"
        fe.sync(snapshot(svc_a, svc_b, version=2), frozenset({"default/beta"}))
        assert tag_of((ip_b, 9090)) == "B"
        # beta's port changes, then alpha's connection must not notice anything
        svc_b2 = service_port("beta", [b.endpoint()], ip=ip_b, port=9191)
        fe.sync(snapshot(svc_a, svc_b2, version=3), frozenset({"default/beta"}))
        assert tag_of((ip_b, 9191)) == "B"
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((ip_b, 9090), timeout=3)
        established.sendall(b"ping")
        assert established.recv(10) == b"ping"
        # alpha goes away: its listener closes, its established connection may finish
        fe.sync(snapshot(svc_b2, version=4), frozenset({"default/alpha"}))
        assert fe.listening == [(ip_b, 9191, "TCP")]
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((ip_a, 8080), timeout=3)
        established.sendall(b"pong")
        assert established.recv(10) == b"pong"


class CountingEngine:
    """The frontend's engine, counting the endpoint tables it is asked to set."""

    def __init__(self, engine: object):
        self.engine = engine
        self.set_services: list[str] = []

    def set_service(self, key: str, *args: object) -> None:
        self.set_services.append(key)
        self.engine.set_service(key, *args)  # type: ignore[attr-defined]

    def __getattr__(self, name: str) -> object:
        return getattr(self.engine, name)


def test_a_sync_rebuilds_only_the_services_named_changed(backends, make_frontend):
    a, b = backends("A"), backends("B")
    ip_a, ip_b = cluster_ip(), cluster_ip()
    fe = make_frontend()
    fe.sync(snapshot(service_port("alpha", [a.endpoint()], ip=ip_a),
                     service_port("beta", [b.endpoint()], ip=ip_b)), frozenset())
    assert (tag_of((ip_a, 8080)), tag_of((ip_b, 8080))) == ("A", "B")
    counting = fe.engine = CountingEngine(fe.engine)
    # both services' endpoints differ in the snapshot, but only alpha is named changed
    swapped = snapshot(service_port("alpha", [b.endpoint()], ip=ip_a),
                       service_port("beta", [a.endpoint()], ip=ip_b), version=2)
    fe.sync(swapped, frozenset({"default/alpha"}))
    assert counting.set_services == ["cluster/default/alpha:"]
    assert (tag_of((ip_a, 8080)), tag_of((ip_b, 8080))) == ("B", "B")
    fe.sync(swapped, frozenset({"default/beta"}))
    assert (tag_of((ip_a, 8080)), tag_of((ip_b, 8080))) == ("B", "A")
    # a service that is gone and named changed loses its listener and table
    fe.sync(snapshot(service_port("beta", [a.endpoint()], ip=ip_b), version=3),
            frozenset({"default/alpha"}))
    assert fe.listening == [(ip_b, 8080, "TCP")]
    assert counting.set_services == ["cluster/default/alpha:", "cluster/default/beta:"]


def test_after_a_failed_sync_the_next_one_compares_every_service(backends, make_frontend):
    a, b = backends("A"), backends("B")
    ip_a, ip_b = cluster_ip(), cluster_ip()
    fe = make_frontend()
    fe.sync(snapshot(service_port("alpha", [a.endpoint()], ip=ip_a)), frozenset())
    with socket.socket() as squatter:  # another socket holds beta's address: its sync fails
        squatter.bind((ip_b, 8080))
        squatter.listen(1)
        with pytest.raises(OSError):
            fe.sync(snapshot(service_port("alpha", [a.endpoint()], ip=ip_a),
                             service_port("beta", [b.endpoint()], ip=ip_b), version=2),
                    frozenset({"default/beta"}))
    # the next sync names nothing changed, and still puts alpha on B and listens for beta
    fe.sync(snapshot(service_port("alpha", [b.endpoint()], ip=ip_a),
                     service_port("beta", [b.endpoint()], ip=ip_b), version=3), frozenset())
    assert (tag_of((ip_a, 8080)), tag_of((ip_b, 8080))) == ("B", "B")


def test_an_endpoint_changed_in_one_field_only_is_programmed_again(backends, make_frontend):
    a, b = backends("A"), backends("B")
    ip = cluster_ip()
    fe = make_frontend(algorithm="weighted_round_robin")
    fe.sync(snapshot(service_port("web", [a.endpoint(), b.endpoint()], ip=ip)), frozenset())
    assert collections.Counter(tag_of((ip, 8080)) for _ in range(40)) == {"A": 20, "B": 20}
    # the same addresses, one weight differs: a new snapshot's endpoints, compared by value
    fe.sync(snapshot(service_port("web", [a.endpoint(weight=3), b.endpoint()], ip=ip),
                     version=2), frozenset({"default/web"}))
    assert collections.Counter(tag_of((ip, 8080)) for _ in range(40)) == {"A": 30, "B": 10}


def test_a_service_port_rebuilt_equal_is_not_programmed_again(backends, make_frontend):
    a, b = backends("A"), backends("B")
    ip = cluster_ip()
    fe = make_frontend()
    fe.sync(snapshot(service_port("web", [a.endpoint(), b.endpoint()], ip=ip)), frozenset())
    counting = fe.engine = CountingEngine(fe.engine)
    # new objects, equal in every field: named changed, and after a failed sync (every table
    # compared), neither programs the table again, and the listener stays
    rebuilt = snapshot(service_port("web", [a.endpoint(), b.endpoint()], ip=ip), version=2)
    fe.sync(rebuilt, frozenset({"default/web"}))
    fe._whole = True
    fe.sync(rebuilt, frozenset())
    assert counting.set_services == []
    assert {tag_of((ip, 8080)) for _ in range(4)} == {"A", "B"}
    # a field beside the endpoints that the table takes (affinity) programs it again
    fe.sync(snapshot(service_port("web", [a.endpoint(), b.endpoint()], ip=ip,
                                  session_affinity="ClientIP"), version=3),
            frozenset({"default/web"}))
    assert counting.set_services == ["cluster/default/web:"]
    assert len({tag_of((ip, 8080)) for _ in range(8)}) == 1


def test_another_node_programs_every_table_again(backends, make_frontend):
    a, b = backends("A"), backends("B")
    ip = cluster_ip()
    sp = service_port("web", [a.endpoint(node_name="node-a"), b.endpoint(node_name="node-b")],
                      ip=ip, internal_traffic_policy="Local")
    fe = make_frontend()
    fe.sync(snapshot(sp, node="node-a"), frozenset())
    assert {tag_of((ip, 8080)) for _ in range(4)} == {"A"}
    # the same service port object, nothing named changed: the node alone changes the table
    fe.sync(snapshot(sp, version=2, node="node-b"), frozenset())
    assert {tag_of((ip, 8080)) for _ in range(4)} == {"B"}


def reached_beyond(root: object, *shared: object) -> int:
    """How many objects ``root`` reaches (not through modules, classes or functions) that
    ``shared`` does not."""
    skip = (type, types.ModuleType, types.FunctionType, types.BuiltinFunctionType,
            types.MethodType, types.CodeType, types.FrameType)

    def walk(start: object, seen: set[int]) -> set[int]:
        stack = [start]
        while stack:
            obj = stack.pop()
            if id(obj) in seen or isinstance(obj, skip):
                continue
            seen.add(id(obj))
            stack.extend(gc.get_referents(obj))
        return seen

    held = walk(shared, set())
    return len(walk(root, set(held))) - len(held)


@pytest.mark.parametrize(("algorithm", "per_endpoint"), [("round_robin", 0), ("maglev", 1)])
def test_the_frontend_keeps_no_copy_of_the_snapshots_endpoints(make_frontend, algorithm,
                                                                per_endpoint):
    """What the frontend and its engine keep per endpoint, beyond the snapshot's own objects:
    no row or record; for an algorithm that hashes the backends' names, that name (``ip:port``
    bytes); for one that does not, only names by position, which every table shares."""
    reached = {}
    for n in (20, 120):
        eps = [EndpointInfo(f"127.66.{k // 200}.{k % 200 + 1}", 8080) for k in range(n)]
        snap = snapshot(service_port("web", eps))
        fe = make_frontend(algorithm=algorithm)
        fe.sync(snap, frozenset())
        reached[n] = reached_beyond(fe, snap, _proxy_c._POSITIONS)
        fe.stop()
    assert (reached[120] - reached[20]) / 100 <= per_endpoint, reached


def test_ten_thousand_connections_leak_no_file_descriptor(backends, make_frontend):
    a = backends("A")
    sp = service_port("web", [a.endpoint()])
    fe = make_frontend()
    fe.sync(snapshot(sp), frozenset({"default/web"}))
    addr = (sp.cluster_ips[0], 8080)
    tag_of(addr)  # warm up: every lazily opened descriptor exists before counting
    assert wait_until(lambda: fe.stats()["connections"] == 0)
    before = len(os.listdir("/proc/self/fd"))
    deadline = time.monotonic() + 90
    for _ in range(10_000):
        with socket.socket() as s:
            s.settimeout(3)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            s.connect(addr)
            assert s.recv(2) == b"A\n"
        assert time.monotonic() < deadline
    assert wait_until(lambda: fe.stats()["connections"] == 0, timeout=5)
    assert wait_until(lambda: a.open == 0, timeout=5)
    assert len(os.listdir("/proc/self/fd")) == before
    assert fe.stats()["accepted"] >= 10_000


def test_stop_closes_every_listener_and_thread(backends, context):
    a = backends("A")
    ip = cluster_ip()
    fd_before = len(os.listdir("/proc/self/fd"))
    fe = SocketFrontend({"workers": 2}, context)
    fe.start()
    fe.sync(
        snapshot(
            service_port("web", [a.endpoint()], ip=ip),
            service_port("dns", [a.endpoint()], ip=ip, port=5353, protocol="UDP"),
        ),
        frozenset({"default/web", "default/dns"}),
    )
    open_conn = socket.create_connection((ip, 8080), timeout=3)
    assert read_line(open_conn) == "A"
    assert any(t.name.startswith("lbcore-proxy-") for t in threading.enumerate())
    fe.stop()
    assert not any(t.name.startswith("lbcore-proxy-") for t in threading.enumerate())
    open_conn.settimeout(3)
    assert open_conn.recv(10) == b""
    open_conn.close()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((ip, 8080), timeout=3)
    assert wait_until(lambda: a.open == 0)
    assert len(os.listdir("/proc/self/fd")) == fd_before
    # the ports are free again
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((ip, 5353))


def test_options_are_validated_with_the_key_named(context):
    with pytest.raises(ConfigError, match="algorithm: 'fastest'"):
        SocketFrontend({"algorithm": "fastest"}, context)
    with pytest.raises(ConfigError, match="workers: invalid value 'two': expected an integer"):
        SocketFrontend({"workers": "two"}, context)
    with pytest.raises(ConfigError, match="colour: unknown option"):
        SocketFrontend({"colour": "blue"}, context)
    with pytest.raises(ConfigError, match="idle_timeout: invalid value -1"):
        SocketFrontend({"idle_timeout": -1}, context)


def test_plugin_registers_the_socket_frontend():
    assert socket_frontend.lbcore_register_frontends() == {"socket": SocketFrontend}


def test_one_shared_listening_socket_serves_and_closes_with_the_engine(backends, context):
    a = backends("A")
    ip = cluster_ip()
    fd_before = len(os.listdir("/proc/self/fd"))
    fe = SocketFrontend({"workers": 2, "reuseport": False}, context)
    fe.start()
    try:
        fe.sync(snapshot(service_port("web", [a.endpoint()], ip=ip)), frozenset({"default/web"}))
        # without SO_REUSEPORT a second socket cannot bind the port: there is one socket
        with socket.socket() as other, pytest.raises(OSError):
            other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            other.bind((ip, 8080))
        assert [tag_of((ip, 8080)) for _ in range(40)] == ["A"] * 40
        assert fe.stats()["accepted"] == 40
    finally:
        fe.stop()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((ip, 8080), timeout=3)
    assert wait_until(lambda: a.open == 0)  # the backend's side of the last connection
    assert len(os.listdir("/proc/self/fd")) == fd_before


def test_pipe_size_is_capped_at_the_kernels_pipe_max_size():
    from lbcore_plugins._proxy_c import Engine, pipe_max_size

    with open("/proc/sys/fs/pipe-max-size") as f:
        limit = int(f.read())
    assert pipe_max_size() == limit
    assert Engine(pipe_size=limit * 4).pipe_size == limit
    assert Engine(pipe_size=65536).pipe_size == min(65536, limit)


@pytest.mark.parametrize("protocol", ["TCP", "UDP"])
def test_port_0_gives_every_worker_the_same_port(protocol: str) -> None:
    """With port 0 the kernel picks the first socket's port; the other workers' sockets must
    share it, or connections would reach only one worker."""
    fds = socket_frontend.bind_listener("127.0.0.1", 0, protocol, 3, 16)
    socks = [socket.socket(fileno=fd) for fd in fds]
    try:
        ports = {s.getsockname()[1] for s in socks}
        assert len(socks) == 3 and len(ports) == 1 and 0 not in ports
    finally:
        for s in socks:
            s.close()


def test_a_sync_opens_many_listeners_at_once_and_each_serves(backends, make_frontend):
    a = backends("A")
    ports = [service_port(f"web{i}", [a.endpoint()]) for i in range(40)]
    fe = make_frontend()
    fe.sync(snapshot(*ports), frozenset(f"default/web{i}" for i in range(40)))
    assert fe.stats()["listeners"] == 40
    assert all(tag_of((sp.cluster_ips[0], 8080)) == "A" for sp in ports)


def test_add_listeners_removes_those_added_when_one_cannot_be(backends, make_frontend):
    a = backends("A")
    sp = service_port("web", [a.endpoint()])
    fe = make_frontend(workers=1)
    fe.sync(snapshot(), frozenset())
    fe.engine.set_service(f"cluster/{sp.key}", [("127.0.0.1", a.port, 1, True)], "round_robin",
                          0.0, 1024, {}, "client_ip")
    fds = socket_frontend.bind_listener(sp.cluster_ips[0], 8080, "TCP", 1, 16)
    other = socket_frontend.bind_listener(cluster_ip(), 8080, "TCP", 1, 16)
    with pytest.raises(ConfigError, match="no endpoint table"):
        fe.engine.add_listeners([(f"cluster/{sp.key}", "TCP", fds, 0),
                                 ("cluster/default/none:80", "TCP", other, 0)])
    os.close(other[0])  # refused: still the caller's
    assert fe.stats()["listeners"] == 0
    with pytest.raises(OSError):  # the first listener's socket was closed with it
        socket.create_connection((sp.cluster_ips[0], 8080), timeout=2).close()


def test_the_engine_reads_endpoint_addresses_and_refuses_what_is_not_one():
    from lbcore_plugins._proxy_c import Engine

    engine = Engine(workers=1)
    engine.set_service("t", [("127.0.0.9", 8080, 1, True), ("::1", 8081, 1, True),
                             ("2001:db8::7", 8082, 1, False)], "round_robin")
    assert [e["address"] for e in engine.service_endpoints("t")] == [
        "127.0.0.9:8080", "[::1]:8081", "[2001:db8::7]:8082"]
    for ip, port, problem in [("01.2.3.4", 80, "endpoint ip: '01.2.3.4'"),
                              ("127.0.0.1\x00", 80, "endpoint ip: '127.0.0.1\\x00'"),
                              ("fe80::1%eth0", 80, "endpoint ip: 'fe80::1%eth0'"),
                              ("web", 80, "endpoint ip: 'web'"),
                              ("127.0.0.1", 0, "endpoint port: 0")]:
        with pytest.raises(ConfigError) as raised:
            engine.set_service("u", [(ip, port, 1, True)], "round_robin")
        assert str(raised.value).startswith(problem)
