"""JSON patch and merge patch, as the API server applies them (strategic merge patch: in
test_patch.py), and the strategic merge patch kubectl apply and diff send for a changed port."""

from __future__ import annotations

from typing import Any

import pytest

from lbcore.model.patch import (
    PatchError,
    PatchNotApplicable,
    json_patch,
    merge_patch,
    strategic_merge_patch,
)


def service(**spec: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "web", "finalizers": ["a"]},
            "spec": {"ports": [{"port": 80, "targetPort": 8080, "protocol": "TCP"}],
                     "externalIPs": ["192.0.2.1", "192.0.2.2"], **spec}}


def test_json_patch_follows_rfc_6902_and_leaves_the_target_alone():
    target = service()
    patched = json_patch(target, [
        {"op": "add", "path": "/metadata/labels", "value": {"a": "b"}},
        {"op": "replace", "path": "/spec/ports/0/port", "value": 81},
        {"op": "remove", "path": "/spec/externalIPs/1"},
        {"op": "test", "path": "/metadata/name", "value": "web"},
        {"op": "copy", "from": "/metadata/labels", "path": "/spec/selector"},
    ])
    assert patched["metadata"]["labels"] == {"a": "b"} == patched["spec"]["selector"]
    assert patched["spec"]["ports"][0]["port"] == 81
    assert patched["spec"]["externalIPs"] == ["192.0.2.1"]
    assert target == service()


@pytest.mark.parametrize("patch, error", [
    ({"op": "add"}, PatchError),
    ([{"op": "frobnicate", "path": "/a"}], PatchError),
    ([{"path": "/a"}], PatchError),
    ([{"op": "test", "path": "/metadata/name", "value": "other"}], PatchNotApplicable),
    ([{"op": "remove", "path": "/spec/nothing"}], PatchNotApplicable),
    ([{"op": "replace", "path": "", "value": 1}], PatchNotApplicable),
])
def test_json_patch_refuses_what_is_no_patch_and_what_cannot_apply(patch, error):
    with pytest.raises(error):
        json_patch(service(), patch)


def test_merge_patch_replaces_lists_and_removes_nulls():
    patched = merge_patch(service(), {"spec": {"ports": [{"port": 81}], "externalIPs": None}})
    assert patched["spec"] == {"ports": [{"port": 81}]}


def test_strategic_merge_patch_merges_ports_by_port_as_kubectl_apply_sends_it():
    # what kubectl apply and diff send when a manifest's port goes from 80 to 81
    patch = {"spec": {"$setElementOrder/ports": [{"port": 81}],
                      "ports": [{"port": 81, "targetPort": 9376}, {"$patch": "delete", "port": 80}]}}
    assert strategic_merge_patch("Service", service(), patch)["spec"]["ports"] == [
        {"port": 81, "targetPort": 9376}]
    patch = {"spec": {"ports": [{"port": 80, "name": "http"}, {"port": 443}]}}
    assert strategic_merge_patch("Service", service(), patch)["spec"]["ports"] == [
        {"port": 80, "targetPort": 8080, "protocol": "TCP", "name": "http"}, {"port": 443}]
