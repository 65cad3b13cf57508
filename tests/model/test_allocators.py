"""ClusterIP and NodePort allocation: ranges, requests, exhaustion, release, rebuild."""

from __future__ import annotations

import pytest

import lbcore
from lbcore.errors import AllocationError
from lbcore.model.allocators import ClusterIPAllocator, NodePortAllocator, parse_port_range


def test_ipv4_skips_network_and_broadcast_and_exhausts_a_slash_29() -> None:
    alloc = ClusterIPAllocator("10.0.0.0/29")
    got = [alloc.allocate() for _ in range(6)]
    assert got == [f"10.0.0.{i}" for i in range(1, 7)]
    with pytest.raises(AllocationError, match=r"no ClusterIP left in the service CIDR 10\.0\.0\.0/29"):
        alloc.allocate()
    assert alloc.free == 0


def test_network_and_broadcast_cannot_be_requested() -> None:
    alloc = ClusterIPAllocator("10.0.0.0/29")
    with pytest.raises(AllocationError, match="network address"):
        alloc.allocate("10.0.0.0")
    with pytest.raises(AllocationError, match="broadcast address"):
        alloc.allocate("10.0.0.7")


def test_ipv6_skips_only_the_network_address() -> None:
    alloc = ClusterIPAllocator("fd00::/126")
    assert [alloc.allocate() for _ in range(3)] == ["fd00::1", "fd00::2", "fd00::3"]
    with pytest.raises(AllocationError, match="fd00::/126"):
        alloc.allocate()


def test_default_cidr_is_10_96_0_0_12() -> None:
    alloc = lbcore.ClusterIPAllocator()
    assert str(alloc.network) == "10.96.0.0/12"
    assert alloc.allocate() == "10.96.0.1"
    assert alloc.size == 2**20 - 2


def test_requested_address_is_honoured_and_refused_when_in_use_or_out_of_range() -> None:
    alloc = ClusterIPAllocator("10.96.0.0/24")
    assert alloc.allocate("10.96.0.10", "default/a") == "10.96.0.10"
    with pytest.raises(AllocationError, match=r"10\.96\.0\.10 is already allocated by default/a"):
        alloc.allocate("10.96.0.10", "default/b")
    with pytest.raises(AllocationError, match=r"not in the service CIDR 10\.96\.0\.0/24"):
        alloc.allocate("10.97.0.1")
    with pytest.raises(AllocationError, match="not in the service CIDR"):
        alloc.allocate("fd00::1")
    with pytest.raises(AllocationError, match="not a valid IP"):
        alloc.allocate("ten")
    # the holder may ask again (an update keeps its address)
    assert alloc.allocate("10.96.0.10", "default/a") == "10.96.0.10"


def test_sequential_allocation_skips_requested_addresses_and_reuses_released_ones_last() -> None:
    alloc = ClusterIPAllocator("10.0.0.0/29")
    alloc.allocate("10.0.0.2")
    assert alloc.allocate() == "10.0.0.1"
    assert alloc.allocate() == "10.0.0.3"
    assert alloc.release("10.0.0.1")
    assert not alloc.release("10.0.0.1")
    assert [alloc.allocate() for _ in range(3)] == ["10.0.0.4", "10.0.0.5", "10.0.0.6"]
    assert alloc.allocate() == "10.0.0.1"


def test_cluster_ip_rebuild_from_services_reports_conflicts() -> None:
    alloc = ClusterIPAllocator("10.96.0.0/24")
    alloc.allocate()
    services = lbcore.load_manifests([
        {"kind": "Service", "metadata": {"name": n},
         "spec": {"clusterIP": ip, "ports": [{"port": 80}]}}
        for n, ip in [("a", "10.96.0.5"), ("b", "10.96.0.5"), ("c", "10.1.0.1"),
                      ("d", "fd00::1"), ("e", "None")]])
    problems = alloc.rebuild(services)
    assert alloc.allocated() == {"10.96.0.5": "default/a"}
    assert len(problems) == 2 and problems[0].startswith("default/b:")
    assert "10.1.0.1" in problems[1]


def test_invalid_or_empty_cidr_is_refused() -> None:
    with pytest.raises(AllocationError, match="not a valid CIDR"):
        ClusterIPAllocator("10.96.0.0/33")
    with pytest.raises(AllocationError, match="no address"):
        ClusterIPAllocator("10.96.0.0/31")


def test_node_ports_exhaust_a_three_port_range() -> None:
    alloc = NodePortAllocator((30000, 30002))
    assert [alloc.allocate() for _ in range(3)] == [30000, 30001, 30002]
    with pytest.raises(AllocationError, match="no node port left in the range 30000-30002"):
        alloc.allocate()
    assert alloc.release(30001)
    assert alloc.allocate() == 30001


def test_node_port_default_range_and_requests() -> None:
    alloc = lbcore.NodePortAllocator()
    assert alloc.range_text == "30000-32767" and alloc.size == 2768
    assert alloc.allocate(32767, "default/a") == 32767
    with pytest.raises(AllocationError, match="outside the range 30000-32767"):
        alloc.allocate(32768)
    with pytest.raises(AllocationError, match="outside the range"):
        alloc.allocate(29999)
    with pytest.raises(AllocationError, match="32767 is already allocated by default/a"):
        alloc.allocate(32767, "default/b")
    with pytest.raises(AllocationError, match="already allocated"):
        alloc.allocate(32767)


def test_one_service_may_hold_a_node_port_for_tcp_and_udp() -> None:
    alloc = NodePortAllocator()
    assert alloc.allocate(30053, "kube-system/dns") == 30053
    assert alloc.allocate(30053, "kube-system/dns") == 30053  # the UDP port of the same service
    assert alloc.release_owner("kube-system/dns") == [30053]
    assert not alloc.in_use(30053)


def test_node_port_rebuild() -> None:
    alloc = NodePortAllocator()
    services = lbcore.load_manifests([{
        "kind": "Service", "metadata": {"name": "np"},
        "spec": {"type": "NodePort", "ports": [
            {"name": "u", "port": 53, "protocol": "UDP", "nodePort": 30053},
            {"name": "t", "port": 53, "protocol": "TCP", "nodePort": 30053},
            {"name": "x", "port": 80, "nodePort": 40000}]}}])
    problems = alloc.rebuild(services)
    assert alloc.allocated() == {30053: "default/np"}
    assert problems == ["default/np: node port 40000 is outside the range 30000-32767"]


@pytest.mark.parametrize(("text", "expected"), [("30000-32767", (30000, 32767)), ("80", (80, 80)),
                                                 ((1, 65535), (1, 65535))])
def test_parse_port_range(text: str | tuple[int, int], expected: tuple[int, int]) -> None:
    assert parse_port_range(text) == expected


@pytest.mark.parametrize("text", ["0-10", "100-50", "a-b", "1-65536"])
def test_parse_port_range_refuses_bad_ranges(text: str) -> None:
    with pytest.raises(AllocationError):
        parse_port_range(text)
