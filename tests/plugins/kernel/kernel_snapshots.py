"""Snapshots for the kernel frontend tests."""

from __future__ import annotations

from types import MappingProxyType

from lbcore.model.snapshot import EndpointInfo, ServicePortInfo, Snapshot

POD_CIDR = "10.244.0.0/16"
NODE_IP = "192.168.77.1"
CLIENT = "10.244.100.2"  # in the pod network
OUTSIDE = "192.168.77.2"  # not


def port(
    name: str,
    ip: str,
    pods: list[str],
    protocol: str = "TCP",
    port: int = 80,
    namespace: str = "ns",
    **kw: object,
) -> ServicePortInfo:
    return ServicePortInfo(
        namespace=namespace, name=name, port_name="p", protocol=protocol, port=port,
        cluster_ips=(ip,), endpoints=tuple(EndpointInfo(ip=p, port=8080) for p in pods),
        **kw,  # type: ignore[arg-type]
    )


def snap(*ports: ServicePortInfo, node_name: str = "node-a", version: int = 1) -> Snapshot:
    return Snapshot(
        version=version, node_name=node_name,
        service_ports=MappingProxyType({sp.key: sp for sp in ports}),
    )


def many(services: int, endpoints: int = 5) -> Snapshot:
    """``services`` ClusterIP services with ``endpoints`` endpoints each, every 10th a NodePort."""
    ports = []
    for i in range(services):
        pods = [f"10.{128 + (i * endpoints + j) // 65536}.{(i * endpoints + j) // 256 % 256}.{(i * endpoints + j) % 256}" for j in range(endpoints)]
        kw: dict[str, object] = {}
        if i % 10 == 0:
            kw = {"type": "NodePort", "node_port": 30000 + i // 10}
        ports.append(port(f"svc{i}", f"10.96.{i // 250}.{i % 250 + 1}", pods, namespace=f"ns{i % 50}", **kw))
    return snap(*ports)
