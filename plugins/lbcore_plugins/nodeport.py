"""The ``nodeport`` frontend: every NodePort service on each node address at its node port.

It shares the socket frontend's data path (:class:`lbcore_plugins.socket_frontend.ProxyFrontend`)
and differs only in where it listens and, for ``externalTrafficPolicy: Local``, in which
endpoints it forwards to: this node's only, and none (connections reset, datagrams dropped)
when the node has none.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Mapping
from typing import Any

from lbcore import ConfigError, RuntimeContext, ServicePortInfo, Snapshot, Traffic, hookimpl
from lbcore_plugins.socket_frontend import Listen, ProxyFrontend, proxied_ports

NODE_PORT_TYPES = ("NodePort", "LoadBalancer")


def local_addresses() -> tuple[str, ...]:
    """Every address configured on this host's interfaces (``ip -j addr``), else wildcards."""
    ip = shutil.which("ip")
    if ip is not None:
        try:
            out = subprocess.run(
                [ip, "-j", "addr", "show"], capture_output=True, text=True, timeout=5, check=True
            ).stdout
            addrs = []
            for link in json.loads(out):
                for info in link.get("addr_info", []):
                    local = info.get("local")
                    # link-local IPv6 needs a scope id to bind; NodePorts skip it
                    if local and not local.lower().startswith("fe80:"):
                        addrs.append(local)
            if addrs:
                return tuple(dict.fromkeys(addrs))
        except (OSError, subprocess.SubprocessError, ValueError):
            pass
    return ("0.0.0.0",)


class NodePortFrontend(ProxyFrontend):
    """Listens at each NodePort service's node port on the node's addresses, TCP and UDP.

    Options: those of the socket frontend plus ``addresses`` (list of IPs to listen on; by
    default the context's node addresses, else every local address).
    """

    serves_node_ports = True
    traffic: Traffic = "external"

    name = "nodeport"
    extra_options = ("addresses",)

    def __init__(self, options: Mapping[str, Any], context: RuntimeContext):
        super().__init__(options, context)
        addresses = self.options.get("addresses")
        if addresses is not None:
            if isinstance(addresses, str) or not all(isinstance(a, str) for a in addresses):
                raise ConfigError(f"addresses: {addresses!r} is not a list of IP addresses")
            self.addresses: tuple[str, ...] = tuple(addresses)
        elif context.node_addresses:
            self.addresses = tuple(context.node_addresses)
        else:
            self.addresses = local_addresses()

    def node(self, snapshot: Snapshot) -> str | None:
        return self.context.node_name or snapshot.node_name

    def wanted(
        self, snapshot: Snapshot, services: frozenset[str] | None = None
    ) -> tuple[list[Listen], dict[str, ServicePortInfo]]:
        listeners: list[Listen] = []
        tables: dict[str, ServicePortInfo] = {}
        for sp in proxied_ports(snapshot, services):
            if sp.type not in NODE_PORT_TYPES or not sp.node_port:
                continue
            table = f"nodeport/{sp.key}"
            tables[table] = sp
            listeners.extend(Listen(a, sp.node_port, sp.protocol, table) for a in self.addresses)
        return listeners, tables


@hookimpl
def lbcore_register_frontends() -> Mapping[str, Any]:
    return {"nodeport": NodePortFrontend}
