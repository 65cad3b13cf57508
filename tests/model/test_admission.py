"""Admission: one path (defaults, validation, allocation, keeping, stamping) for every write."""

from __future__ import annotations

import datetime as dt
import ipaddress
from typing import Any

import pytest

from lbcore.errors import AllocationError, ValidationError
from lbcore.model import validation
from lbcore.model.admission import AllocationInvalid, ServiceAllocators, admit, stamp
from lbcore.model.allocators import KUBERNETES_SERVICE_CIDR
from lbcore.model.service_table import ServiceTable
from lbcore.runtime import store as store_module
from lbcore.runtime.config import LOOPBACK_SERVICE_CIDR, Config
from lbcore.runtime.state import ClusterState
from lbcore.runtime.store import Store

NOW = dt.datetime(2026, 12, 1, 8, 0, tzinfo=dt.UTC)


def service(name: str = "web", **spec: Any) -> dict[str, Any]:
    body = {"selector": {"app": name}, "ports": [{"name": "http", "port": 80}], **spec}
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name}, "spec": body}


def pod(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "labels": {"app": "web"}},
            "status": {"podIP": "127.0.0.9"}}


@pytest.fixture
def allocators() -> ServiceAllocators:
    return ServiceAllocators("10.0.0.0/29", (30000, 30003))


def counting(monkeypatch: pytest.MonkeyPatch, module: Any, name: str) -> list[Any]:
    calls: list[Any] = []
    real = getattr(module, name)

    def spy(*args: Any, **kwargs: Any) -> Any:
        calls.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, spy)
    return calls


# -- once per write ---------------------------------------------------------------------------


def test_a_store_write_is_admitted_and_validated_once_all_the_way_to_the_snapshot(monkeypatch):
    admitted = counting(monkeypatch, store_module, "admit")
    validated = counting(monkeypatch, validation, "validate")
    with Store(None) as store:
        state = ClusterState(ServiceTable(allocate=False), {})
        store.subscribe(lambda event: state.upsert(event["object"]))
        store.create(service())
        store.create(pod("web-1"))
        store.apply(service(sessionAffinity="ClientIP"))
        with pytest.raises(ValidationError):
            store.create(service("bad", ports=[{"port": 0}]))
    # (the namespaces a new store starts with are admitted when it opens)
    admitted = [o for o in admitted if o.get("kind") != "Namespace"]
    validated = [o for o in validated if o.get("kind") != "Namespace"]
    assert [o["metadata"]["name"] for o in admitted] == ["web", "web-1", "web", "bad"]
    assert len(validated) == 4  # the store's admission; ClusterState parsed what it was given
    snapshot = state.table.snapshot()
    assert snapshot.service_ports["default/web:http"].session_affinity == "ClientIP"


def test_an_embedded_table_admits_once_per_apply(monkeypatch):
    from lbcore.model import service_table

    admitted = counting(monkeypatch, service_table, "admit")
    validated = counting(monkeypatch, validation, "validate")
    table = ServiceTable()
    table.apply(service())
    table.apply(pod("web-1"))
    assert len(admitted) == len(validated) == 2


def test_the_store_and_an_embedded_table_admit_alike():
    writes = [service("a", type="NodePort", ports=[
                  {"name": "dns", "port": 53, "protocol": "UDP"},
                  {"name": "dns-tcp", "port": 53, "protocol": "TCP"}]),
              service("b", ipFamilyPolicy="PreferDualStack"),
              service("a", type="NodePort", ports=[{"name": "dns", "port": 53, "protocol": "UDP"}])]
    cidrs = "10.96.0.0/24,fd00:10:96::/120"
    table = ServiceTable(cidrs)
    with Store(None, cidrs.split(",")) as store:
        for w in writes:
            stored, applied = store.apply(w), table.apply(w).to_dict()
            assert stored["spec"] == applied["spec"]
            assert stored["metadata"]["generation"] == applied["metadata"]["generation"]
    a = table.get("svc", "default", "a")
    assert a is not None and [p.node_port for p in a.ports] == [30000]


# -- keep what was allocated, immutability ----------------------------------------------------


def test_an_update_that_leaves_out_allocated_values_keeps_them(allocators):
    first = admit(service(type="NodePort"), None, allocators, now=NOW)
    first.commit()
    again = admit(service(type="NodePort"), first.obj, allocators, now=NOW)
    again.commit()
    for key in ("clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy"):
        assert again.obj["spec"][key] == first.obj["spec"][key]
    assert again.obj["spec"]["ports"][0]["nodePort"] == first.obj["spec"]["ports"][0]["nodePort"]
    assert allocators.ports.allocated() == {30000: "default/web"}


def test_cluster_ips_may_not_change_once_set(allocators):
    first = admit(service(), None, allocators, now=NOW)
    with pytest.raises(ValidationError, match=r'spec.clusterIPs\[0\]: .*"10.0.0.5": may not change'):
        admit(service(clusterIP="10.0.0.5"), first.obj, allocators, now=NOW)
    external = admit(service(type="ExternalName", externalName="example.org", ports=[]),
                     first.obj, allocators, now=NOW)
    external.commit()
    assert "clusterIP" not in external.obj["spec"]
    assert allocators.ips["IPv4"].allocated() == {}


# -- allocation -------------------------------------------------------------------------------


def test_an_allocation_that_fails_names_the_field_and_holds_nothing(allocators):
    admit(service("a", type="NodePort", ports=[{"port": 80, "nodePort": 30001}]), None,
          allocators, now=NOW)
    before = (allocators.ips["IPv4"].allocated(), allocators.ports.allocated())
    with pytest.raises(AllocationInvalid) as err:
        admit(service("b", type="NodePort", ports=[
            {"name": "x", "port": 80}, {"name": "y", "port": 81, "nodePort": 30001}]),
            None, allocators, now=NOW)
    assert isinstance(err.value, AllocationError) and isinstance(err.value, ValidationError)
    [cause] = err.value.causes
    assert cause.field == "spec.ports[1].nodePort"
    # the API server's words
    assert cause.message == "Invalid value: 30001: provided port is already allocated"
    assert (allocators.ips["IPv4"].allocated(), allocators.ports.allocated()) == before


def test_undo_gives_back_and_commit_frees_what_an_update_gave_up(allocators):
    created = admit(service(type="NodePort"), None, allocators, now=NOW)
    created.undo()
    assert allocators.ips["IPv4"].allocated() == {} and allocators.ports.allocated() == {}
    created = admit(service(type="NodePort"), None, allocators, now=NOW)
    created.commit()
    node_port = created.obj["spec"]["ports"][0]["nodePort"]
    to_cluster_ip = admit(service(), created.obj, allocators, now=NOW)
    assert allocators.ports.allocated() == {node_port: "default/web"}  # until it is stored
    to_cluster_ip.commit()
    assert allocators.ports.allocated() == {}
    assert list(allocators.ips["IPv4"].allocated()) == [created.obj["spec"]["clusterIP"]]


def test_objects_without_allocators_are_taken_as_given():
    given = admit(service(clusterIP="192.0.2.7"), None, None, now=NOW)
    assert given.obj["spec"]["clusterIPs"] == ["192.0.2.7"]


# -- stamping ---------------------------------------------------------------------------------


def test_stamping_on_create_and_update():
    created = admit({**pod("p"), "metadata": {
        "name": "p", "uid": "given", "deletionTimestamp": "2026-11-25T08:00:00Z"}},
        None, None, now=NOW, resource_version="7")
    meta = created.obj["metadata"]
    assert meta["uid"] != "given" and len(meta["uid"]) == 36
    assert (meta["creationTimestamp"], meta["generation"], meta["resourceVersion"]) == (
        "2026-12-01T08:00:00Z", 1, "7")
    assert "deletionTimestamp" not in meta
    later = NOW + dt.timedelta(hours=1)
    relabelled = admit({**pod("p"), "metadata": {"name": "p", "labels": {"x": "y"}}},
                       created.obj, None, now=later)
    assert relabelled.obj["metadata"]["uid"] == meta["uid"]
    assert relabelled.obj["metadata"]["creationTimestamp"] == "2026-12-01T08:00:00Z"
    assert relabelled.obj["metadata"]["generation"] == 1  # metadata only
    new_spec = dict(relabelled.obj, spec={"nodeName": "n1"})
    stamp(new_spec, relabelled.obj, later)
    assert new_spec["metadata"]["generation"] == 2


# -- the default service CIDRs ----------------------------------------------------------------


def test_one_default_service_cidr_per_meaning():
    # embedders model a cluster: kubeadm's range; the daemon binds ClusterIPs without root
    assert KUBERNETES_SERVICE_CIDR == "10.96.0.0/12"
    assert ipaddress.ip_network(LOOPBACK_SERVICE_CIDR).is_loopback
    assert [str(a.network) for a in ServiceTable().cluster_ips] == [KUBERNETES_SERVICE_CIDR]
    assert ServiceAllocators().ips["IPv4"].network == ipaddress.ip_network(KUBERNETES_SERVICE_CIDR)
    with Store(None) as store:
        assert store.service_cidrs == [LOOPBACK_SERVICE_CIDR]
    assert Config().service_cidrs == (LOOPBACK_SERVICE_CIDR,)
