"""One pick policy: the socket data path sends each connection where ``lbcore.Picker`` would.

Both call ``lbcore.core._policy_c.pick_new`` (affinity, then the balancer), and hashed
algorithms key by the client IP in both. The same connections go through a ``Picker`` built
from the same service port and through the socket frontend, and must reach the same backends.
"""

from __future__ import annotations

import pytest
from proxy_helpers import service_port, snapshot, tag_of

from lbcore import EndpointInfo, Picker
from lbcore.core import balancers


def sources(count: int) -> list[str]:
    return [f"127.0.{i // 200}.{i % 200 + 2}" for i in range(count)]


@pytest.mark.parametrize("affinity", ["None", "ClientIP"])
# bounded_load is left out: its choice depends on live counts, which the data path gives back
# when its worker sees a close, a moment no test can line up with the Picker's
@pytest.mark.parametrize("algorithm", sorted(balancers.CONSISTENT))
def test_the_socket_frontend_and_the_picker_choose_the_same_backends(
    backends, make_frontend, algorithm, affinity
):
    bs = [backends(t) for t in "ABCDE"]
    tag_by_address = {f"127.0.0.1:{b.port}": b.tag.decode() for b in bs}
    sp = service_port("web", [b.endpoint() for b in bs], session_affinity=affinity)
    fe = make_frontend(algorithm=algorithm)
    fe.sync(snapshot(sp), frozenset({"default/web"}))
    picker = Picker(sp, algorithm=algorithm)
    ip, port = sp.cluster_ips[0], sp.port
    answers = {}
    for n, src in enumerate(sources(40)):
        chosen = picker.pick("TCP", src, 40000 + n, ip, port)
        assert isinstance(chosen, EndpointInfo)
        picker.close("TCP", src, 40000 + n, ip, port)
        answers[src] = (tag_of((ip, port), source=src), tag_by_address[chosen.address])
    differ = {src: got for src, got in answers.items() if got[0] != got[1]}
    assert not differ, differ
    assert len({socket for socket, _ in answers.values()}) >= 3  # 40 clients spread over 5
