"""Strategic merge patch: the list semantics of the schema and Kubernetes' directives."""

from __future__ import annotations

from typing import Any

import pytest

from lbcore.model.patch import PatchError, strategic_merge_patch


def service(ports: list[dict[str, Any]], **spec: Any) -> dict[str, Any]:
    return {"kind": "Service", "metadata": {"name": "web", "labels": {"a": "1"}},
            "spec": {"ports": ports, **spec}}


def test_ports_merge_on_their_port_and_keep_what_the_patch_leaves_out() -> None:
    current = service([{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080},
                       {"name": "dns", "port": 53, "protocol": "UDP"}])
    patch = {"spec": {"$setElementOrder/ports": [{"port": 80}, {"port": 53}],
                      "ports": [{"port": 80, "targetPort": 9090}]}}
    out = strategic_merge_patch("Service", current, patch)
    assert out["spec"]["ports"] == [
        {"name": "http", "port": 80, "protocol": "TCP", "targetPort": 9090},
        {"name": "dns", "port": 53, "protocol": "UDP"}]
    assert current["spec"]["ports"][0]["targetPort"] == 8080  # not changed in place


def test_set_element_order_reorders_and_delete_removes() -> None:
    current = service([{"port": 80}, {"port": 53}, {"port": 443}])
    patch = {"spec": {"$setElementOrder/ports": [{"port": 443}, {"port": 80}],
                      "ports": [{"port": 53, "$patch": "delete"}]}}
    out = strategic_merge_patch("Service", current, patch)
    assert out["spec"]["ports"] == [{"port": 443}, {"port": 80}]


def test_maps_merge_and_null_removes() -> None:
    current = service([{"port": 80}], selector={"app": "web", "tier": "x"})
    patch = {"metadata": {"labels": {"b": "2", "a": None}}, "spec": {"selector": {"tier": None}}}
    out = strategic_merge_patch("Service", current, patch)
    assert out["metadata"]["labels"] == {"b": "2"}
    assert out["spec"]["selector"] == {"app": "web"}


def test_lists_without_a_merge_strategy_are_replaced() -> None:
    current = service([{"port": 80}], externalIPs=["1.1.1.1", "2.2.2.2"])
    out = strategic_merge_patch("Service", current, {"spec": {"externalIPs": ["3.3.3.3"]}})
    assert out["spec"]["externalIPs"] == ["3.3.3.3"]


def test_patch_replace_and_retain_keys() -> None:
    current = service([{"port": 80}, {"port": 81}], sessionAffinity="ClientIP",
                      sessionAffinityConfig={"clientIP": {"timeoutSeconds": 5}})
    out = strategic_merge_patch("Service", current, {"spec": {
        "ports": [{"port": 90}, {"$patch": "replace"}]}})
    assert out["spec"]["ports"] == [{"port": 90}]
    out = strategic_merge_patch("Service", current, {"spec": {
        "$retainKeys": ["ports", "sessionAffinity"], "sessionAffinity": "None"}})
    assert out["spec"] == {"ports": [{"port": 80}, {"port": 81}], "sessionAffinity": "None"}


def test_containers_merge_on_name_and_primitive_lists_delete_by_value() -> None:
    pod = {"kind": "Pod", "metadata": {"name": "p", "finalizers": ["a", "b"]},
           "spec": {"containers": [{"name": "c", "image": "x"}, {"name": "d", "image": "y"}]}}
    out = strategic_merge_patch("Pod", pod, {
        "metadata": {"$deleteFromPrimitiveList/finalizers": ["a"]},
        "spec": {"containers": [{"name": "d", "image": "z"}]}})
    assert out["spec"]["containers"] == [{"name": "c", "image": "x"}, {"name": "d", "image": "z"}]
    assert out["metadata"]["finalizers"] == ["b"]


def test_a_merge_list_element_without_its_key_is_refused() -> None:
    with pytest.raises(PatchError, match=r"spec.ports\[0\]: the merge key 'port' is missing"):
        strategic_merge_patch("Service", service([{"port": 80}]),
                              {"spec": {"ports": [{"targetPort": 1}]}})
