"""Endpoints as Kubernetes' controllers compute them, kept up to date incrementally."""

from __future__ import annotations

from typing import Any

from lbcore.model.endpoints import EndpointTracker, endpoints_from_pods
from lbcore.model.objects import Endpoints, EndpointSlice, Pod, Service


def svc(name: str = "web", selector: dict[str, str] | None = None, ports: Any = None,
        **spec: Any) -> Service:
    body: dict[str, Any] = {"ports": ports or [{"port": 80, "targetPort": 8080}], **spec}
    if selector is not None:
        body["selector"] = selector
    return Service.from_dict({"kind": "Service", "metadata": {"name": name}, "spec": body})


def pod(name: str, ip: str | None, labels: dict[str, str] | None = None, ready: bool | None = None,
        ports: list[dict[str, Any]] | None = None, namespace: str = "default",
        deleting: bool = False, node: str | None = None, phase: str | None = None) -> Pod:
    meta: dict[str, Any] = {"name": name, "namespace": namespace,
                            "labels": labels if labels is not None else {"app": "web"}}
    if deleting:
        meta["deletionTimestamp"] = "2026-11-25T08:00:00Z"
    status: dict[str, Any] = {}
    if ip:
        status["podIP"] = ip
    if ready is not None:
        status["conditions"] = [{"type": "Ready", "status": "True" if ready else "False"}]
    if phase:
        status["phase"] = phase
    spec: dict[str, Any] = {"containers": [{"name": "c", "ports": ports or []}]}
    if node:
        spec["nodeName"] = node
    return Pod.from_dict({"kind": "Pod", "metadata": meta, "spec": spec, "status": status})


def addresses(tracker: EndpointTracker, key: str = "default/web", port: str = "") -> list[str]:
    return [ep.address for ep in tracker.endpoints(key)[port]]


def test_selected_pods_with_an_ip_in_the_same_namespace_are_endpoints() -> None:
    t = EndpointTracker()
    t.set_service(svc(selector={"app": "web"}))
    t.set_pod(pod("a", "127.0.0.2"))
    t.set_pod(pod("b", "127.0.0.1"))
    t.set_pod(pod("no-ip", None))
    t.set_pod(pod("other-ns", "127.0.0.3", namespace="prod"))
    t.set_pod(pod("other-app", "127.0.0.4", labels={"app": "db"}))
    assert addresses(t) == ["127.0.0.1:8080", "127.0.0.2:8080"]


def test_a_service_without_selector_selects_no_pods() -> None:
    t = EndpointTracker()
    t.set_service(svc())
    t.set_pod(pod("a", "127.0.0.2"))
    assert t.endpoints("default/web") == {"": ()}


def test_named_target_port_is_resolved_per_pod_and_pods_without_it_are_left_out() -> None:
    t = EndpointTracker()
    t.set_service(svc(selector={"app": "web"}, ports=[
        {"name": "http", "port": 80, "targetPort": "http"},
        {"name": "metrics", "port": 9100, "targetPort": 9100},
        {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": "dns"}]))
    t.set_pod(pod("a", "127.0.0.1", ports=[{"name": "http", "containerPort": 8080},
                                           {"name": "dns", "containerPort": 5353,
                                            "protocol": "UDP"}]))
    t.set_pod(pod("b", "127.0.0.2", ports=[{"name": "http", "containerPort": 9090},
                                           {"name": "dns", "containerPort": 5353}]))  # TCP dns
    t.set_pod(pod("c", "127.0.0.3"))
    assert addresses(t, port="http") == ["127.0.0.1:8080", "127.0.0.2:9090"]
    assert addresses(t, port="metrics") == ["127.0.0.1:9100", "127.0.0.2:9100", "127.0.0.3:9100"]
    assert addresses(t, port="dns") == ["127.0.0.1:5353"]


def test_readiness_serving_and_terminating_conditions() -> None:
    t = EndpointTracker()
    t.set_service(svc(selector={"app": "web"}))
    t.set_pod(pod("ready", "127.0.0.1", ready=True, node="n1"))
    t.set_pod(pod("unready", "127.0.0.2", ready=False))
    t.set_pod(pod("leaving", "127.0.0.3", ready=True, deleting=True))
    t.set_pod(pod("done", "127.0.0.4", phase="Succeeded"))
    eps = {ep.ip: ep for ep in t.endpoints("default/web")[""]}
    assert set(eps) == {"127.0.0.1", "127.0.0.2", "127.0.0.3"}
    r, u, leaving = eps["127.0.0.1"], eps["127.0.0.2"], eps["127.0.0.3"]
    assert (r.ready, r.serving, r.terminating, r.node_name, r.target) == (
        True, True, False, "n1", "default/ready")
    assert (u.ready, u.serving, u.terminating) == (False, False, False)
    assert (leaving.ready, leaving.serving, leaving.terminating) == (False, True, True)


def test_publish_not_ready_addresses_makes_every_endpoint_ready() -> None:
    t = EndpointTracker()
    t.set_service(svc(selector={"app": "web"}, publishNotReadyAddresses=True))
    t.set_pod(pod("unready", "127.0.0.2", ready=False))
    assert t.endpoints("default/web")[""][0].ready


def test_zone_comes_from_the_node_else_from_the_pod_label() -> None:
    t = EndpointTracker(node_zones={"n1": "zone-a"})
    t.set_service(svc(selector={"app": "web"}))
    t.set_pod(pod("a", "127.0.0.1", node="n1",
                  labels={"app": "web", "topology.kubernetes.io/zone": "zone-x"}))
    t.set_pod(pod("b", "127.0.0.2", node="n2",
                  labels={"app": "web", "topology.kubernetes.io/zone": "zone-b"}))
    assert [ep.zone for ep in t.endpoints("default/web")[""]] == ["zone-a", "zone-b"]
    assert t.set_node_zone("n2", "zone-c") == {"default/web"}
    assert [ep.zone for ep in t.endpoints("default/web")[""]] == ["zone-a", "zone-c"]


def test_pod_moving_in_and_out_of_a_selector_by_a_label_change() -> None:
    t = EndpointTracker()
    t.set_service(svc("blue", selector={"app": "web", "color": "blue"}))
    t.set_service(svc("green", selector={"app": "web", "color": "green"}))
    t.set_service(svc("all", selector={"app": "web"}))
    t.set_service(svc("db", selector={"app": "db"}))
    assert t.set_pod(pod("p", "127.0.0.1", labels={"app": "web", "color": "blue"})) == {
        "default/blue", "default/all"}
    changed = t.set_pod(pod("p", "127.0.0.1", labels={"app": "web", "color": "green"}))
    assert changed == {"default/blue", "default/green"}  # "all" saw no change
    assert addresses(t, "default/blue") == []
    assert addresses(t, "default/green") == ["127.0.0.1:8080"]
    assert t.selected_pods("default/green") == ["default/p"]
    assert t.remove_pod("default", "p") == {"default/green", "default/all"}
    assert addresses(t, "default/all") == []


def test_unchanged_pod_update_changes_nothing_and_ip_change_changes_the_service() -> None:
    t = EndpointTracker()
    t.set_service(svc(selector={"app": "web"}))
    t.set_pod(pod("p", "127.0.0.1"))
    assert t.set_pod(pod("p", "127.0.0.1")) == set()
    assert t.set_pod(pod("p", "127.0.0.9")) == {"default/web"}
    assert t.set_pod(pod("p", None)) == {"default/web"}
    assert addresses(t) == []


def test_service_selector_change_recomputes_its_members() -> None:
    t = EndpointTracker()
    t.set_pod(pod("a", "127.0.0.1", labels={"app": "a"}))
    t.set_pod(pod("b", "127.0.0.2", labels={"app": "b"}))
    t.set_service(svc(selector={"app": "a"}))
    assert addresses(t) == ["127.0.0.1:8080"]
    t.set_service(svc(selector={"app": "b"}))
    assert addresses(t) == ["127.0.0.2:8080"]
    assert t.remove_service("default", "web") == {"default/web"}
    assert t.endpoints("default/web") == {}


def test_ipv6_service_takes_the_pods_ipv6_address() -> None:
    t = EndpointTracker()
    t.set_service(svc(selector={"app": "web"}, clusterIP="fd00::10"))
    p = Pod.from_dict({"kind": "Pod", "metadata": {"name": "p", "labels": {"app": "web"}},
                       "status": {"podIP": "127.0.0.1",
                                  "podIPs": [{"ip": "127.0.0.1"}, {"ip": "::1"}]}})
    t.set_pod(p)
    assert addresses(t) == ["[::1]:8080"]


def test_selectorless_service_takes_endpoints_from_its_slices() -> None:
    t = EndpointTracker()
    t.set_service(svc("ext", ports=[{"name": "http", "port": 80}]))
    sl = EndpointSlice.from_dict({
        "kind": "EndpointSlice",
        "metadata": {"name": "ext-1", "labels": {"kubernetes.io/service-name": "ext"}},
        "addressType": "IPv4", "ports": [{"name": "http", "port": 8080}],
        "endpoints": [{"addresses": ["127.0.0.5"], "conditions": {"ready": True}},
                      {"addresses": ["127.0.0.6"], "conditions": {"ready": False,
                                                                  "terminating": True}}]})
    assert t.set_endpoint_slice(sl) == {"default/ext"}
    eps = t.endpoints("default/ext")["http"]
    assert [(e.address, e.ready, e.terminating) for e in eps] == [
        ("127.0.0.5:8080", True, False), ("127.0.0.6:8080", False, True)]
    assert t.remove_endpoint_slice("default", "ext-1") == {"default/ext"}
    assert t.endpoints("default/ext")["http"] == ()


def test_selectorless_service_takes_endpoints_from_an_endpoints_object() -> None:
    t = EndpointTracker()
    t.set_service(svc("ext", ports=[{"port": 80}]))
    ep = Endpoints.from_dict({"kind": "Endpoints", "metadata": {"name": "ext"}, "subsets": [
        {"addresses": [{"ip": "127.0.0.7"}], "notReadyAddresses": [{"ip": "127.0.0.8"}],
         "ports": [{"port": 9000}]}]})
    assert t.set_endpoints_object(ep) == {"default/ext"}
    assert [(e.address, e.ready) for e in t.endpoints("default/ext")[""]] == [
        ("127.0.0.7:9000", True), ("127.0.0.8:9000", False)]


def web_slice(name: str, address: str) -> EndpointSlice:
    return EndpointSlice.from_dict({
        "kind": "EndpointSlice",
        "metadata": {"name": name, "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4", "ports": [{"name": "", "port": 8080}],
        "endpoints": [{"addresses": [address], "conditions": {"ready": True}}]})


def test_a_service_with_slices_or_an_endpoints_object_keeps_no_endpoints_of_its_pods() -> None:
    # the slices (or Endpoints) a controller wrote from the pods are what the service serves:
    # the tracker does not keep a second copy of them computed from the pods, and computes
    # it again from the pods as they are when the service loses them
    t = EndpointTracker()
    t.set_service(svc(selector={"app": "web"}))
    t.set_pod(pod("a", "127.0.0.1"))
    assert addresses(t) == ["127.0.0.1:8080"] and t._members
    assert t.set_endpoint_slice(web_slice("web-1", "127.0.0.9")) == {"default/web"}
    assert not t._members
    assert t.set_pod(pod("b", "127.0.0.2")) == set()  # the slices say what the service serves
    assert addresses(t) == ["127.0.0.9:8080"] and not t._members
    assert t.set_endpoint_slice(web_slice("web-2", "127.0.0.8")) == {"default/web"}
    assert t.remove_endpoint_slice("default", "web-1") == {"default/web"}
    assert addresses(t) == ["127.0.0.8:8080"] and not t._members
    assert t.remove_endpoint_slice("default", "web-2") == {"default/web"}
    assert addresses(t) == ["127.0.0.1:8080", "127.0.0.2:8080"]  # b came while it had slices
    ep = Endpoints.from_dict({"kind": "Endpoints", "metadata": {"name": "web"}, "subsets": [
        {"addresses": [{"ip": "127.0.0.7"}], "ports": [{"port": 9000}]}]})
    assert t.set_endpoints_object(ep) == {"default/web"} and not t._members
    assert t.remove_pod("default", "a") == set()
    assert addresses(t) == ["127.0.0.7:9000"]
    assert t.remove_endpoints_object("default", "web") == {"default/web"}
    assert addresses(t) == ["127.0.0.2:8080"]
    # a slice known before its service: the service never computes its pods' endpoints
    t.set_endpoint_slice(web_slice("web-3", "127.0.0.6"))
    t.set_service(svc(selector={"app": "web"}, ports=[{"port": 81, "targetPort": 8080}]))
    assert addresses(t) == ["127.0.0.6:8080"] and not t._members


def test_incremental_result_equals_a_full_recomputation() -> None:
    t = EndpointTracker()
    services = [svc(f"s{i}", selector={"app": f"a{i % 3}"}) for i in range(6)]
    for s in services:
        t.set_service(s)
    pods: dict[str, Pod] = {}
    for step in range(60):  # bounded: 60 label/address changes over 10 pods
        name = f"p{step % 10}"
        p = pod(name, f"127.0.1.{step % 10 + 1}" if step % 7 else None,
                labels={"app": f"a{step % 4}"}, ready=step % 5 != 0)
        pods[name] = p
        t.set_pod(p)
    for s in services:
        assert t.endpoints(s.key) == endpoints_from_pods(s, pods.values())
