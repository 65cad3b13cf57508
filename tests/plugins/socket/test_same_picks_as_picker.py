"""One pick policy: the socket data path sends each connection where ``lbcore.Picker`` would.

Both call ``lbcore.core._policy_c.pick_new`` (affinity, then the balancer), and hashed
algorithms key by the client IP in both. The same connections go through a ``Picker`` built
from the same service port and through the socket frontend, and must reach the same backends.
"""

from __future__ import annotations

import socket

import pytest
from proxy_helpers import read_line, service_port, snapshot

from lbcore import EndpointInfo, Picker
from lbcore.core import balancers


def sources(count: int) -> list[str]:
    return [f"127.0.{i // 200}.{i % 200 + 2}" for i in range(count)]


@pytest.mark.parametrize(("affinity", "hash_key"), [
    ("None", "client_ip"), ("ClientIP", "client_ip"), ("None", "five_tuple"),
])
# bounded_load is left out: its choice depends on live counts, which the data path gives back
# when its worker sees a close, a moment no test can line up with the Picker's
@pytest.mark.parametrize("algorithm", sorted(balancers.CONSISTENT))
def test_the_socket_frontend_and_the_picker_choose_the_same_backends(
    backends, make_frontend, algorithm, affinity, hash_key
):
    bs = [backends(t) for t in "ABCDE"]
    tag_by_address = {f"127.0.0.1:{b.port}": b.tag.decode() for b in bs}
    sp = service_port("web", [b.endpoint() for b in bs], session_affinity=affinity)
    fe = make_frontend(algorithm=algorithm, hash_key=hash_key)
    fe.sync(snapshot(sp), frozenset({"default/web"}))
    picker = Picker(sp, algorithm=algorithm, hash_key=hash_key)
    ip, port = sp.cluster_ips[0], sp.port
    answers = {}
    for src in sources(40):
        with socket.socket() as s:
            s.settimeout(3.0)
            s.bind((src, 0))
            s.connect((ip, port))
            tag = read_line(s)
            sport = s.getsockname()[1]
        chosen = picker.pick("TCP", src, sport, ip, port)
        assert isinstance(chosen, EndpointInfo)
        picker.close("TCP", src, sport, ip, port)
        answers[(src, sport)] = (tag, tag_by_address[chosen.address])
    differ = {src: got for src, got in answers.items() if got[0] != got[1]}
    assert not differ, differ
    # 40 connections over 5 endpoints: on fewer than 3 with probability below 1e-15
    assert len({tag for tag, _ in answers.values()}) >= 3
