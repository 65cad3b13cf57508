"""Which endpoints take new connections: the one rule, kube-proxy's ``CategorizeEndpoints``.

Every consumer asks here: the Picker, the socket and NodePort frontends, the iptables and
nftables renderers. The rule, for the endpoints of one service port:

1. An endpoint whose ``ready`` condition is true takes new connections, whether or not it is
   terminating. (``ready`` already folds in ``publishNotReadyAddresses``: the endpoints
   controller marks every endpoint of such a service ready, terminating or not, as Kubernetes'
   does; so a ready-and-terminating endpoint is exactly one that service asked to keep.)
2. When none is ready, the endpoints that are serving and terminating take them (a rolling
   update whose new pods are not ready yet keeps working on the old ones, KEP-1669).
3. Otherwise none: the frontend refuses the connection.

A traffic policy of ``Local`` applies the same rule to this node's endpoints only, with no
fallback to other nodes. Internal traffic (to a ClusterIP) follows ``internalTrafficPolicy``;
external traffic (NodePort, external and load-balancer IPs) follows ``externalTrafficPolicy``.
``node_name=None`` means the node is not known (a proxy embedding lbcore with no node): every
endpoint counts as local.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

from lbcore.model.snapshot import EndpointInfo, ServicePortInfo

__all__ = ["Traffic", "endpoints_for", "policy_is_local", "takes_new_connections"]

Traffic = Literal["internal", "external"]

#: service types whose ports take external traffic
EXTERNAL_TYPES = frozenset({"NodePort", "LoadBalancer"})


def takes_new_connections(
    endpoints: Iterable[EndpointInfo], node_name: str | None = None, family: int | None = None
) -> tuple[EndpointInfo, ...]:
    """The endpoints that take new connections (the module's rule), in their given order.

    :param node_name: only this node's endpoints (a ``Local`` traffic policy); None: all.
    :param family: only endpoints of IPv4 (4) or IPv6 (6); None: both.
    """
    candidates = [
        ep
        for ep in endpoints
        if (node_name is None or ep.node_name == node_name)
        and (family is None or (":" in ep.ip) == (family == 6))
    ]
    ready = tuple(ep for ep in candidates if ep.ready)
    if ready:
        return ready
    return tuple(ep for ep in candidates if ep.serving and ep.terminating)


def policy_is_local(sp: ServicePortInfo, traffic: Traffic) -> bool:
    """Whether ``traffic`` to ``sp`` may only reach endpoints on this node."""
    if traffic == "internal":
        return sp.internal_traffic_policy == "Local"
    return sp.external_traffic_policy == "Local" and sp.type in EXTERNAL_TYPES


def endpoints_for(
    sp: ServicePortInfo,
    traffic: Traffic = "internal",
    node_name: str | None = None,
    family: int | None = None,
) -> tuple[EndpointInfo, ...]:
    """The endpoints of ``sp`` that take new ``traffic`` connections on node ``node_name``."""
    local = node_name if policy_is_local(sp, traffic) else None
    return takes_new_connections(sp.endpoints, local, family)
