"""The daemon says when a NodePort service's node port is served by no running frontend."""

from __future__ import annotations

import logging
from types import MappingProxyType

from lbcore_plugins.nodeport import NodePortFrontend
from lbcore_plugins.socket_frontend import SocketFrontend

from lbcore import RuntimeContext, ServicePortInfo, Snapshot
from lbcore.runtime.observers import UnservedNodePorts, all_of


def snapshot(*ports: ServicePortInfo) -> Snapshot:
    return Snapshot(version=1, service_ports=MappingProxyType({sp.key: sp for sp in ports}))


def port(name: str, type: str = "NodePort", node_port: int | None = 30080) -> ServicePortInfo:
    return ServicePortInfo(namespace="default", name=name, port_name="", protocol="TCP", port=80,
                           cluster_ips=("127.10.0.1",), type=type, node_port=node_port)


def test_a_node_port_no_frontend_serves_is_warned_about_once_per_service(caplog):
    watch = UnservedNodePorts({"socket": SocketFrontend({}, RuntimeContext())})
    with caplog.at_level(logging.WARNING, logger="lbcore"):
        snap = snapshot(port("web"), port("db"), port("plain", "ClusterIP", None))
        for _ in range(3):  # three syncs: one warning per service
            watch(snapshot=snap, changed={"default/web", "default/db", "default/plain"})
    warnings = [r for r in caplog.records if r.getMessage() == "node port not served"]
    assert sorted(r.fields["service"] for r in warnings) == ["default/db", "default/web"]
    assert all("nodeport" in r.fields["hint"] for r in warnings)


def test_only_the_changed_services_are_looked_at(caplog):
    """A node port comes with a change of its service: a sync that changed other services
    does not look at it (so a sync costs what changed, whatever the number of services)."""
    watch = UnservedNodePorts({"socket": SocketFrontend({}, RuntimeContext())})
    snap = snapshot(port("web"), port("db"))
    with caplog.at_level(logging.WARNING, logger="lbcore"):
        watch(snapshot=snap, changed={"default/web"})
        watch(snapshot=snap, changed=frozenset())
        warned = [r.fields["service"] for r in caplog.records
                  if r.getMessage() == "node port not served"]
        assert warned == ["default/web"]
        watch(snapshot=snap, changed={"default/db"})
    warnings = [r for r in caplog.records if r.getMessage() == "node port not served"]
    assert sorted(r.fields["service"] for r in warnings) == ["default/db", "default/web"]
    assert all("nodeport" in r.fields["hint"] for r in warnings)


def test_no_warning_when_a_frontend_serves_node_ports(caplog):
    frontends = {"socket": SocketFrontend({}, RuntimeContext()),
                 "nodeport": NodePortFrontend({"addresses": ["127.0.0.1"]}, RuntimeContext())}
    observe = all_of([UnservedNodePorts(frontends)])
    with caplog.at_level(logging.WARNING, logger="lbcore"):
        observe(snapshot=snapshot(port("web")), changed=frozenset(), duration=0.0, errors={})
    assert not [r for r in caplog.records if r.getMessage() == "node port not served"]
