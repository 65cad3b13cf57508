"""The registry of kinds: kubectl's names, and every consumer resolving every alias alike."""

from __future__ import annotations

import pytest

import lbcore
from lbcore.cli import client as cli_client
from lbcore.model import objects
from lbcore.model.kinds import ALL_KINDS, KINDS, UnknownKind, find_kind, kind_for
from lbcore.model.service_table import ServiceTable
from lbcore.runtime import admin_api
from lbcore.runtime import state as state_module
from lbcore.runtime.state import ClusterState
from lbcore.runtime.store import BadRequest, Store

# ``kubectl api-resources`` on a 1.31 cluster: NAME, SHORTNAMES, APIVERSION
KUBECTL = {
    "services": (("svc",), "v1"),
    "pods": (("po",), "v1"),
    "endpoints": (("ep",), "v1"),
    "endpointslices": ((), "discovery.k8s.io/v1"),
    "secrets": ((), "v1"),
    "ingresses": (("ing",), "networking.k8s.io/v1"),
    # ``oc api-resources`` on OpenShift 4
    "routes": ((), "route.openshift.io/v1"),
}

ALIASES = [(k, name) for k in KINDS for name in (k.kind, k.kind.upper(), *k.names)]


def test_names_short_names_and_api_versions_are_kubectls() -> None:
    assert {k.plural: (k.short_names, k.api_version) for k in KINDS} == KUBECTL
    assert [k.singular for k in KINDS][:4] == ["service", "pod", "endpoints", "endpointslice"]
    assert {"secret", "ingress", "route"} <= {k.singular for k in KINDS}
    assert all(k.namespaced for k in KINDS)


def test_no_name_points_at_two_kinds() -> None:
    names = [n for k in KINDS for n in k.names]
    assert len(names) == len(set(names))


@pytest.mark.parametrize(("kind", "name"), ALIASES)
def test_every_consumer_resolves_every_alias_to_the_same_kind(kind, name) -> None:
    assert kind_for(name) is kind
    assert cli_client.resource_for(name) is kind
    table = ServiceTable()
    assert table.list(name) == []
    assert table.get(name, "default", "absent") is None


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.kind)
def test_the_store_admin_api_model_state_and_sources_serve_every_kind(kind) -> None:
    assert objects.CLASSES[kind.kind].kind == kind.kind
    assert admin_api.SERVED[kind.api_prefix][kind.plural] is kind
    with Store(None) as store:
        assert store.list(kind.kind)[0] == []
    ClusterState(ServiceTable(allocate=False), {})  # takes every kind
    assert kind.kind in state_module._KINDS
    from lbcore_plugins import local_source

    assert kind.kind in local_source.DEFAULT_KINDS


def test_group_qualified_names_and_unknown_names() -> None:
    assert find_kind("endpointslices.discovery.k8s.io") is kind_for("EndpointSlice")
    assert find_kind("services.v1") is kind_for("svc")
    assert find_kind("services.apps") is None
    assert find_kind("eps") is None  # not one of kubectl's names
    # asked again (the answers found are kept): the same answers
    assert find_kind("endpointslices.discovery.k8s.io") is kind_for("EndpointSlice")
    assert find_kind("services.apps") is None
    assert find_kind("eps") is None
    assert [find_kind(n) for n in ("Pod", "pod", "PODS", "po")] == [kind_for("Pod")] * 4
    with pytest.raises(UnknownKind, match="unknown kind 'deployments'") as err:
        kind_for("deployments")
    assert isinstance(err.value, ValueError)
    with pytest.raises(cli_client.UnknownResource, match="doesn't have a resource type"):
        cli_client.resource_for("deployments")
    with Store(None) as store, pytest.raises(BadRequest, match="not one of"):
        store.list("svc")  # the store takes the exact kind


def test_paths_of_the_core_and_of_a_named_group() -> None:
    assert kind_for("svc").path("default", "web") == "/api/v1/namespaces/default/services/web"
    assert kind_for("EndpointSlice").path(None) == "/apis/discovery.k8s.io/v1/endpointslices"


def test_plugins_see_the_registry_through_lbcore() -> None:
    assert lbcore.KINDS is KINDS and lbcore.kind_for("po").kind == "Pod"


def test_the_kinds_table_of_the_api_docs_is_the_registry() -> None:
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "docs" / "api.md").read_text()
    section = text.split("## Kinds and paths", 1)[1].split("\n\n", 2)[1]
    rows = [[c.strip().strip("`") for c in line.strip("|").split("|")]
            for line in section.splitlines()[2:]]
    assert [(r[0], r[1], r[2], r[3]) for r in rows] == [
        (k.kind, ", ".join(k.short_names), k.api_version,
         k.path("NS").replace("NS", "{ns}")) for k in ALL_KINDS]
