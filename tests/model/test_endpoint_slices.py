"""What an endpoints controller writes: EndpointSlices and Endpoints, by Kubernetes' rules."""

from __future__ import annotations

import json
from typing import Any

from lbcore.model.endpoints import (
    MANAGED_BY,
    MANAGED_BY_LABEL,
    StoredSlice,
    endpoints_object,
    reconcile_endpoint_slices,
    slice_digest,
    wants_endpoints,
)
from lbcore.model.objects import Pod, Service, StoredText, parse_stored


def svc(**spec: Any) -> Service:
    body = {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}],
            "clusterIP": "10.96.0.10", **spec}
    return Service.from_dict({"kind": "Service", "metadata": {"name": "web", "uid": "u-web"},
                              "spec": body})


def pod(name: str, ip: str | list[str], ready: bool = True, terminating: bool = False,
        ports: list[dict[str, Any]] | None = None, phase: str = "Running") -> Pod:
    ips = [ip] if isinstance(ip, str) else ip
    meta: dict[str, Any] = {"name": name, "uid": f"u-{name}", "labels": {"app": "web"}}
    if terminating:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    return Pod.from_dict({
        "kind": "Pod", "metadata": meta,
        "spec": {"nodeName": "n1", "containers": [{"name": "c", "ports": ports or []}]},
        "status": {"phase": phase, "podIP": ips[0], "podIPs": [{"ip": i} for i in ips],
                   "conditions": [{"type": "Ready", "status": str(ready)}]}})


def named(bodies: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Slices as the store would keep them: named, with a version."""
    for i, body in enumerate(bodies):
        meta = body["metadata"]
        meta["name"] = meta.pop("generateName", "web-") + f"{i:05d}"
        meta["resourceVersion"] = str(i + 1)
    return bodies


def ips(body: dict[str, Any]) -> list[str]:
    return [ep["addresses"][0] for ep in body["endpoints"]]


def test_conditions_as_the_endpointslice_controller_sets_them() -> None:
    create, update, delete = reconcile_endpoint_slices(svc(), [
        pod("ready", "10.0.0.1"), pod("unready", "10.0.0.2", ready=False),
        pod("leaving", "10.0.0.3", terminating=True), pod("done", "10.0.0.4", phase="Succeeded")],
        [])
    assert (update, delete) == ([], [])
    [body] = create
    assert body["metadata"]["generateName"] == "web-"
    assert body["metadata"]["labels"] == {"kubernetes.io/service-name": "web",
                                          MANAGED_BY_LABEL: MANAGED_BY}
    assert body["metadata"]["ownerReferences"] == [{
        "apiVersion": "v1", "kind": "Service", "name": "web", "controller": True,
        "blockOwnerDeletion": True, "uid": "u-web"}]
    assert body["ports"] == [{"name": "", "port": 8080, "protocol": "TCP"}]
    assert [(ips(body)[i], ep["conditions"]) for i, ep in enumerate(body["endpoints"])] == [
        ("10.0.0.1", {"ready": True, "serving": True, "terminating": False}),
        ("10.0.0.2", {"ready": False, "serving": False, "terminating": False}),
        ("10.0.0.3", {"ready": False, "serving": True, "terminating": True}),
    ]
    assert body["endpoints"][0]["targetRef"] == {"kind": "Pod", "namespace": "default",
                                                 "name": "ready", "uid": "u-ready"}
    assert body["endpoints"][0]["nodeName"] == "n1"


def test_publish_not_ready_addresses_makes_them_ready_but_not_serving() -> None:
    [body], _, _ = reconcile_endpoint_slices(svc(publishNotReadyAddresses=True), [
        pod("unready", "10.0.0.2", ready=False), pod("leaving", "10.0.0.3", terminating=True)], [])
    assert [ep["conditions"] for ep in body["endpoints"]] == [
        {"ready": True, "serving": False, "terminating": False},
        {"ready": True, "serving": True, "terminating": True}]


def test_a_hundred_endpoints_a_slice_and_changes_stay_in_place() -> None:
    pods = [pod(f"p{i}", f"10.0.{i // 250}.{i % 250 + 1}") for i in range(250)]
    create, _, _ = reconcile_endpoint_slices(svc(), pods, [])
    assert [len(b["endpoints"]) for b in create] == [100, 100, 50]
    stored = named(create)
    # nothing changed: nothing to write
    assert reconcile_endpoint_slices(svc(), pods, stored) == ([], [], [])
    # one pod goes, one comes: only the slices holding them are rewritten
    gone, new = pods[0], pod("new", "10.1.0.1")
    create, update, delete = reconcile_endpoint_slices(svc(), [*pods[1:], new], stored)
    assert (create, delete) == ([], [])
    assert [b["metadata"]["name"] for b in update] == [stored[0]["metadata"]["name"]]
    assert gone.pod_ip not in ips(update[0]) and "10.1.0.1" in ips(update[0])


def test_a_new_endpoint_fills_an_existing_slice_with_room() -> None:
    pods = [pod(f"p{i}", f"10.0.0.{i + 1}") for i in range(150)]
    stored = named(reconcile_endpoint_slices(svc(), pods, [])[0])
    create, update, _ = reconcile_endpoint_slices(svc(), [*pods, pod("x", "10.0.1.1")], stored)
    assert create == [] and [len(b["endpoints"]) for b in update] == [51]


def test_named_target_ports_group_pods_by_their_ports() -> None:
    service = svc(ports=[{"name": "http", "port": 80, "targetPort": "web"}])
    a = pod("a", "10.0.0.1", ports=[{"name": "web", "containerPort": 8080}])
    b = pod("b", "10.0.0.2", ports=[{"name": "web", "containerPort": 9090}])
    c = pod("c", "10.0.0.3")  # no such port: not an endpoint
    create, _, _ = reconcile_endpoint_slices(service, [a, b, c], [])
    assert sorted((b["ports"][0]["port"], ips(b)) for b in create) == [
        (8080, ["10.0.0.1"]), (9090, ["10.0.0.2"])]
    ep = endpoints_object(service, [a, b, c])
    assert [(s["ports"], [x["ip"] for x in s["addresses"]]) for s in ep["subsets"]] == [
        ([{"name": "http", "port": 8080, "protocol": "TCP"}], ["10.0.0.1"]),
        ([{"name": "http", "port": 9090, "protocol": "TCP"}], ["10.0.0.2"])]


def test_no_endpoint_keeps_one_empty_slice_and_empties_are_deleted() -> None:
    [placeholder], _, _ = reconcile_endpoint_slices(svc(), [], [])
    assert placeholder["endpoints"] == [] and placeholder["ports"] == []
    stored = named([placeholder])
    assert reconcile_endpoint_slices(svc(), [], stored) == ([], [], [])
    # a pod comes: a slice with it, and the placeholder goes
    create, update, delete = reconcile_endpoint_slices(svc(), [pod("a", "10.0.0.1")], stored)
    assert [ips(b) for b in create] == [["10.0.0.1"]] and update == []
    assert [d["metadata"]["name"] for d in delete] == [stored[0]["metadata"]["name"]]
    # the last pod goes: its slice becomes the placeholder (no ports), nothing is deleted
    stored = named(create)
    create, update, delete = reconcile_endpoint_slices(svc(), [], stored)
    assert create == [] and delete == []
    assert [(b["metadata"]["name"], b["ports"], b["endpoints"]) for b in update] == [
        (stored[0]["metadata"]["name"], [], [])]


def test_dual_stack_services_get_a_slice_per_family_and_endpoints_the_primary() -> None:
    service = svc(ipFamilyPolicy="PreferDualStack", ipFamilies=["IPv4", "IPv6"],
                  clusterIPs=["10.96.0.10", "fd00::10"])
    p = pod("a", ["10.0.0.1", "fd00:1::1"])
    create, _, _ = reconcile_endpoint_slices(service, [p], [])
    assert sorted((b["addressType"], ips(b)) for b in create) == [
        ("IPv4", ["10.0.0.1"]), ("IPv6", ["fd00:1::1"])]
    assert endpoints_object(service, [p])["subsets"][0]["addresses"][0]["ip"] == "10.0.0.1"


def test_endpoints_object_leaves_terminating_pods_out_and_lists_unready_apart() -> None:
    ep = endpoints_object(svc(), [pod("a", "10.0.0.2"), pod("b", "10.0.0.1", ready=False),
                                  pod("c", "10.0.0.3", terminating=True)])
    assert ep["metadata"]["labels"] == {"endpointslice.kubernetes.io/skip-mirror": "true"}
    [subset] = ep["subsets"]
    assert [a["ip"] for a in subset["addresses"]] == ["10.0.0.2"]
    assert [a["ip"] for a in subset["notReadyAddresses"]] == ["10.0.0.1"]
    assert "subsets" not in endpoints_object(svc(), [])


def test_endpoints_object_holds_a_thousand_addresses_at_most() -> None:
    pods = [pod(f"p{i}", f"10.0.{i // 250}.{i % 250 + 1}") for i in range(1001)]
    ep = endpoints_object(svc(), pods)
    assert len(ep["subsets"][0]["addresses"]) == 1000
    assert ep["metadata"]["annotations"] == {"endpoints.kubernetes.io/over-capacity": "truncated"}


def test_which_services_get_endpoints_written() -> None:
    assert wants_endpoints(svc())
    assert not wants_endpoints(svc(selector=None))
    assert not wants_endpoints(svc(type="ExternalName", externalName="example.com",
                                   clusterIP=None))


def test_endpoints_of_a_service_without_selector_are_mirrored_into_slices() -> None:
    from lbcore.model.endpoints import MIRRORED_BY, mirror_endpoint_slices
    from lbcore.model.objects import Endpoints

    service = svc(selector=None)
    ep = Endpoints.from_dict({"kind": "Endpoints", "metadata": {"name": "web"}, "subsets": [
        {"addresses": [{"ip": "10.0.0.2", "nodeName": "n1"}], "notReadyAddresses": [
            {"ip": "10.0.0.1"}], "ports": [{"name": "http", "port": 8080}]}]})
    [body], update, delete = mirror_endpoint_slices(service, ep, [])
    assert (update, delete) == ([], [])
    assert body["metadata"]["labels"][MANAGED_BY_LABEL] == MIRRORED_BY
    assert body["ports"] == [{"name": "http", "port": 8080, "protocol": "TCP"}]
    assert body["endpoints"] == [
        {"addresses": ["10.0.0.1"], "conditions": {"ready": False}},
        {"addresses": ["10.0.0.2"], "conditions": {"ready": True}, "nodeName": "n1"}]
    empty = Endpoints.from_dict({"kind": "Endpoints", "metadata": {"name": "web"}})
    assert mirror_endpoint_slices(service, empty, []) == ([], [], [])  # no placeholder


def stored_slices(bodies: list[dict[str, Any]], reads: list[str]) -> list[StoredSlice]:
    """Slices as a controller holds them: parsed, without their text (``raw`` reads it, and
    each read is counted), with the digest of their body."""
    texts = {b["metadata"]["name"]: json.dumps(b) for b in bodies}

    def read(obj: Any) -> str:
        reads.append(obj.name)
        return texts[obj.name]

    where = StoredText(read)
    return [StoredSlice(parse_stored(b, stored=where), slice_digest(b)) for b in bodies]


def test_stored_slices_are_compared_by_digest_and_read_only_when_rewritten() -> None:
    pods = [pod(f"p{i}", f"10.0.{i // 250}.{i % 250 + 1}") for i in range(250)]
    bodies = named(reconcile_endpoint_slices(svc(), pods, [])[0])
    reads: list[str] = []
    stored = stored_slices(bodies, reads)
    assert reconcile_endpoint_slices(svc(), pods, stored) == ([], [], [])
    assert reads == []  # nothing changed: no text read
    # one pod less: the slice that held it is rewritten from its stored body, the others not
    create, update, delete = reconcile_endpoint_slices(svc(), pods[1:], stored)
    assert (create, delete) == ([], [])
    assert reads == [bodies[0]["metadata"]["name"]]
    assert [b["metadata"] for b in update] == [bodies[0]["metadata"]]
    assert ips(update[0]) == ips(bodies[0])[1:]
    # every pod gone: one slice becomes the placeholder, the others are deleted (as given)
    create, [placeholder], delete = reconcile_endpoint_slices(svc(), [], stored)
    assert create == [] and placeholder["endpoints"] == placeholder["ports"] == []
    assert all(isinstance(s, StoredSlice) for s in delete)
    assert sorted([placeholder["metadata"]["name"], *(s.slice.name for s in delete)]) == [
        b["metadata"]["name"] for b in bodies]


def test_a_change_the_parsed_slice_does_not_show_is_still_rewritten() -> None:
    pods = [pod("a", "10.0.0.1")]
    [body] = named(reconcile_endpoint_slices(svc(), pods, [])[0])
    changed = json.loads(json.dumps(body))
    changed["endpoints"][0]["targetRef"]["uid"] = "another"  # the parsed slice has no uid
    assert parse_stored(changed).endpoints == parse_stored(body).endpoints
    _, [update], _ = reconcile_endpoint_slices(svc(), pods, [changed])
    assert update["endpoints"] == body["endpoints"]


def test_a_slice_with_an_app_protocol_is_not_rewritten() -> None:
    service = svc(ports=[{"name": "web", "port": 80, "targetPort": 8080, "appProtocol": "http"}])
    pods = [pod("a", "10.0.0.1")]
    [body] = named(reconcile_endpoint_slices(service, pods, [])[0])
    assert body["ports"] == [{"name": "web", "port": 8080, "protocol": "TCP",
                              "appProtocol": "http"}]
    assert reconcile_endpoint_slices(service, pods, [body]) == ([], [], [])
    assert reconcile_endpoint_slices(service, pods, stored_slices([body], [])) == ([], [], [])
