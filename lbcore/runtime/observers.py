"""What the daemon watches at the end of every sync, beside the ``lbcore_sync_done`` hook.

``UnservedNodePorts``: a NodePort (or LoadBalancer) service shows its node port in ``get svc``,
yet nothing listens there unless a frontend that serves node ports runs (``nodeport``,
``iptables`` or ``nftables``). Kubernetes would serve it; lbcore says once per service that it
does not, and what to add.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from lbcore.model.snapshot import ServicePortInfo, Snapshot
from lbcore.runtime.interfaces import Frontend
from lbcore.runtime.logs import event

log = logging.getLogger("lbcore")

NODE_PORT_TYPES = frozenset({"NodePort", "LoadBalancer"})


class UnservedNodePorts:
    """Logs a warning once per service whose node port no running frontend serves."""

    def __init__(self, frontends: Mapping[str, Frontend]) -> None:
        self.served = any(getattr(f, "serves_node_ports", False) for f in frontends.values())
        self.frontends = sorted(frontends)
        self.warned: set[str] = set()

    def __call__(self, snapshot: Snapshot, changed: Iterable[str] = (), **_: Any) -> None:
        if self.served:
            return
        # a node port comes with a change of its service, so the changed services are enough
        for sp in ports_of_changed(snapshot, changed):
            if sp.type in NODE_PORT_TYPES and sp.node_port and sp.service not in self.warned:
                self.warned.add(sp.service)
                event(
                    log, "node port not served", logging.WARNING, service=sp.service,
                    node_port=sp.node_port, frontends=",".join(self.frontends) or "none",
                    hint="add nodeport (or iptables/nftables) to the config's frontends",
                )


def ports_of_changed(snapshot: Snapshot, changed: Iterable[str]) -> list[ServicePortInfo]:
    """The ports of the ``changed`` services (``namespace/name``) in ``snapshot``, in order."""
    return [sp for service in sorted(changed) for sp in snapshot.ports_of(service)]


def all_of(observers: Iterable[Callable[..., Any]]) -> Callable[..., None]:
    """One ``on_sync_done`` that calls each observer in turn."""
    chosen = list(observers)

    def observe(**kwargs: Any) -> None:
        for observer in chosen:
            observer(**kwargs)

    return observe
