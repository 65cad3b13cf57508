"""ServiceTable: apply, allocation, delete, list, snapshots and change tracking."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

import lbcore
from lbcore.errors import AllocationError, ValidationError

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def service(name: str, **spec: Any) -> dict[str, Any]:
    body = {"selector": {"name": "my-app"}, "ports": [{"port": 80}], **spec}
    return {"kind": "Service", "metadata": {"name": name}, "spec": body}


@pytest.fixture
def seeded() -> lbcore.ServiceTable:
    table = lbcore.ServiceTable()
    for manifest in ("my-service.yaml", "my-app-pods.yaml"):
        table.apply_all(EXAMPLES / manifest)
    return table


def test_seed_service_gets_a_cluster_ip_and_three_endpoints(seeded: lbcore.ServiceTable) -> None:
    svc = seeded.get("Service", "default", "my-service")
    assert svc is not None and svc.cluster_ip == "10.96.0.1" and svc.ip_families == ("IPv4",)
    assert svc.created is not None and svc.raw["metadata"]["uid"]
    eps = seeded.endpoints("default", "my-service")
    assert [e.address for e in eps[""]] == ["127.0.0.11:8080", "127.0.0.12:8080",
                                            "127.0.0.13:8080"]


def test_snapshot_holds_every_proxied_service_port(seeded: lbcore.ServiceTable) -> None:
    seeded.apply(service("headless", clusterIP="None"))
    seeded.apply(service("ext", type="ExternalName", externalName="example.com", ports=[]))
    snap = seeded.snapshot(node_name="n1", node_addresses=["127.0.0.1"])
    assert isinstance(snap, lbcore.Snapshot)
    assert list(snap.service_ports) == ["default/my-service:"]
    sp = snap.service_ports["default/my-service:"]
    assert (sp.cluster_ips, sp.port, sp.protocol, len(sp.endpoints)) == (
        ("10.96.0.1",), 8080, "TCP", 3)
    assert snap.version == seeded.version and snap.node_name == "n1"
    assert snap.node_addresses == ("127.0.0.1",)


def test_snapshot_ports_of_and_services_agree_with_a_scan_as_services_change(
        seeded: lbcore.ServiceTable) -> None:
    def scan(snap: lbcore.Snapshot) -> dict[str, list[Any]]:
        out: dict[str, list[Any]] = {}
        for sp in snap.service_ports.values():
            out.setdefault(sp.service, []).append(sp)
        return out

    def check(snap: lbcore.Snapshot) -> None:
        assert snap.by_service is not None  # the table's snapshots carry the index
        by_scan = scan(snap)
        assert snap.services == frozenset(by_scan)
        for key in {*by_scan, "default/headless", "default/gone", "default/nothing"}:
            assert snap.ports_of(key) == by_scan.get(key, [])

    seeded.apply(service("two", ports=[{"name": "a", "port": 80}, {"name": "b", "port": 81}]))
    seeded.apply(service("headless", clusterIP="None"))
    seeded.apply(service("gone"))
    first = seeded.snapshot()
    check(first)
    assert [sp.port_name for sp in first.ports_of("default/two")] == ["a", "b"]
    seeded.apply(service("two", ports=[{"name": "a", "port": 80}]))  # loses a port
    seeded.delete("svc", "default", "gone")
    second = seeded.snapshot()
    check(second)
    assert [sp.port_name for sp in second.ports_of("default/two")] == ["a"]
    assert "default/gone" not in second.services and "default/gone" in first.services
    # a snapshot is never changed by later ones (the table keeps its own maps)
    seeded.apply(service("two", ports=[{"name": "a", "port": 80}, {"name": "b", "port": 81}]))
    seeded.apply(service("gone"))
    third = seeded.snapshot()
    check(third)
    assert [sp.port_name for sp in third.ports_of("default/two")] == ["a", "b"]
    assert [sp.port_name for sp in second.ports_of("default/two")] == ["a"]
    assert "default/two:b" not in second.service_ports and "default/gone" not in second.services
    # a snapshot made by hand has no index: the same answers, by a scan
    by_hand = lbcore.Snapshot(service_ports=second.service_ports)
    assert by_hand.by_service is None and by_hand.services == second.services
    assert by_hand.ports_of("default/two") == second.ports_of("default/two")


def test_changes_since_names_only_services_touched_after_a_version(
        seeded: lbcore.ServiceTable) -> None:
    seeded.apply(service("other", selector={"name": "other"}))
    version = seeded.version
    assert seeded.changes_since(version) == (version, frozenset())
    pod = seeded.get("pod", "default", "my-app-1")
    assert pod is not None
    moved = pod.to_dict()
    moved["metadata"]["labels"] = {"name": "other"}
    seeded.apply(moved)
    new_version, changed = seeded.changes_since(version)
    assert new_version == version + 1
    assert changed == {"default/my-service", "default/other"}
    seeded.delete("svc", "default", "other")
    assert seeded.changes_since(new_version)[1] == {"default/other"}
    snap = seeded.snapshot()
    assert [e.ip for e in snap.service_ports["default/my-service:"].endpoints] == [
        "127.0.0.12", "127.0.0.13"]


def test_allocation_of_node_ports_shares_one_port_for_tcp_and_udp() -> None:
    table = lbcore.ServiceTable()
    svc = table.apply(service("dns", type="NodePort", ports=[
        {"name": "dns", "port": 53, "protocol": "UDP"},
        {"name": "dns-tcp", "port": 53, "protocol": "TCP"},
        {"name": "metrics", "port": 9153}]))
    assert [p.node_port for p in svc.ports] == [30000, 30000, 30001]
    again = table.apply(service("dns", type="NodePort", ports=[
        {"name": "dns", "port": 53, "protocol": "UDP"},
        {"name": "dns-tcp", "port": 53, "protocol": "TCP"}]))
    assert [p.node_port for p in again.ports] == [30000, 30000]
    assert not table.node_ports.in_use(30001)  # the removed port's node port is released
    assert again.cluster_ip == svc.cluster_ip


def test_failing_apply_leaves_the_table_unchanged() -> None:
    table = lbcore.ServiceTable(service_cidr="10.0.0.0/29", node_port_range=(30000, 30002))
    table.apply(service("a", type="NodePort", clusterIP="10.0.0.2",
                        ports=[{"port": 80, "nodePort": 30001}]))
    version = table.version
    before = (table.cluster_ips[0].allocated(), table.node_ports.allocated())
    with pytest.raises(AllocationError, match=(
            r"spec\.ports\[1\]\.nodePort: Invalid value: 30001: provided port is already allocated")):
        table.apply(service("b", type="NodePort", ports=[
            {"name": "x", "port": 80}, {"name": "y", "port": 81, "nodePort": 30001}]))
    with pytest.raises(AllocationError, match=re.escape(
            'spec.clusterIPs: Invalid value: []string{"10.0.0.2"}: failed to allocate IP '
            "10.0.0.2: provided IP is already allocated")):
        table.apply(service("c", clusterIP="10.0.0.2"))
    with pytest.raises(ValidationError):
        table.apply(service("d", ports=[{"port": 0}]))
    assert (table.cluster_ips[0].allocated(), table.node_ports.allocated()) == before
    assert table.version == version
    assert [s.name for s in table.list("svc")] == ["a"]


def test_cluster_ips_run_out_in_a_slash_29() -> None:
    table = lbcore.ServiceTable(service_cidr="10.0.0.0/29")
    for i in range(6):
        table.apply(service(f"s{i}"))
    with pytest.raises(AllocationError, match="failed to allocate a serviceIP: range is full"):
        table.apply(service("s6"))
    table.delete("service", "default", "s0")
    assert table.apply(service("s6")).cluster_ip == "10.0.0.1"


def test_cluster_ip_is_kept_on_reapply_and_immutable() -> None:
    table = lbcore.ServiceTable()
    first = table.apply(service("web"))
    assert table.apply(service("web")).cluster_ip == first.cluster_ip
    with pytest.raises(ValidationError, match="may not change once set"):
        table.apply(service("web", clusterIP="10.96.0.200"))


def test_dual_stack_cidrs_allocate_by_family() -> None:
    table = lbcore.ServiceTable(service_cidr="10.96.0.0/24,fd00:10:96::/120")
    assert table.apply(service("v4")).cluster_ip == "10.96.0.1"
    assert table.apply(service("v6", ipFamilies=["IPv6"])).cluster_ip == "fd00:10:96::1"


def test_allocate_false_keeps_unallocated_services_unproxied() -> None:
    table = lbcore.ServiceTable(allocate=False)
    table.apply(service("pending"))
    table.apply(service("given", clusterIP="10.100.0.5"))  # outside the CIDR: not ours to judge
    assert table.get("svc", "default", "pending").cluster_ip is None  # type: ignore[union-attr]
    assert list(table.snapshot().service_ports) == ["default/given:"]


def test_list_by_namespace_and_selector(seeded: lbcore.ServiceTable) -> None:
    seeded.apply({"kind": "Pod", "metadata": {"name": "x", "namespace": "prod",
                                              "labels": {"name": "my-app", "tier": "db"}}})
    assert [p.key for p in seeded.list("pods", namespace="prod")] == ["prod/x"]
    assert [p.name for p in seeded.list("pods", selector="tier=db")] == ["x"]
    assert len(seeded.list("pods", selector={"name": "my-app"})) == 4
    assert seeded.get("pod", "default", "absent") is None
    with pytest.raises(ValueError, match="unknown kind"):
        seeded.list("deployments")


def test_delete_returns_the_object_and_none_when_absent(seeded: lbcore.ServiceTable) -> None:
    assert seeded.delete("pods", "default", "my-app-2") is not None
    assert seeded.delete("pods", "default", "my-app-2") is None
    assert len(seeded.endpoints("default", "my-service")[""]) == 2
    assert seeded.delete("svc", "default", "my-service") is not None
    assert not seeded.cluster_ips[0].in_use("10.96.0.1")
    with pytest.raises(KeyError):
        seeded.endpoints("default", "my-service")


def test_apply_takes_one_object_text_and_refuses_several() -> None:
    table = lbcore.ServiceTable()
    text = (EXAMPLES / "my-service.yaml").read_text()
    assert table.apply(text).name == "my-service"
    with pytest.raises(ValueError, match="one object"):
        table.apply((EXAMPLES / "my-app-pods.yaml").read_text())


def test_selectorless_service_uses_applied_slices() -> None:
    table = lbcore.ServiceTable()
    table.apply({"kind": "Service", "metadata": {"name": "ext"}, "spec": {"ports": [{"port": 80}]}})
    table.apply({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                 "metadata": {"name": "ext-1", "labels": {"kubernetes.io/service-name": "ext"}},
                 "addressType": "IPv4", "ports": [{"name": "", "port": 8080}],
                 "endpoints": [{"addresses": ["127.0.0.50"]}]})
    eps = table.snapshot().service_ports["default/ext:"].endpoints
    assert [e.address for e in eps] == ["127.0.0.50:8080"]


def test_allocate_false_takes_a_changed_cluster_ip_as_given() -> None:
    table = lbcore.ServiceTable(allocate=False)
    table.apply(service("web", clusterIP="10.96.0.5"))
    assert table.apply(service("web", clusterIP="10.96.0.6")).cluster_ip == "10.96.0.6"
    assert not table.cluster_ips[0].in_use("10.96.0.6")


def test_allocate_false_parses_only_and_never_refuses_what_was_admitted() -> None:
    table = lbcore.ServiceTable(allocate=False)
    admitted = service("web", clusterIP="10.96.0.5", ports=[{"name": "HTTP", "port": 80}])
    assert table.apply(admitted).ports[0].name == "HTTP"
    with pytest.raises(ValidationError, match="cannot be read"):
        table.apply(service("broken", ports=[{"name": "http"}]))
    assert [s.name for s in table.list("svc")] == ["web"]


def test_the_service_table_example_of_the_docs_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    text = (EXAMPLES.parent / "docs" / "services.md").read_text()
    code = text.split("## ServiceTable", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(EXAMPLES.parent)
    namespace: dict[str, Any] = {"lbcore": lbcore, "previous_version": 0}
    exec(compile(code, "docs/services.md", "exec"), namespace)  # noqa: S102
    assert namespace["changed"] == frozenset({"default/my-service"})
