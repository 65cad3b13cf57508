"""``describe`` and ``get`` output in kubectl's layout.

kubectl aligns with Go's tabwriter: ``describe`` pads columns to the widest cell plus two
spaces, ``get`` tables pad with three. The same rules are applied here so the output reads
exactly like kubectl's.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Iterable, Mapping, Sequence

from lbcore.model.objects import Endpoints, EndpointSlice, Pod, Service
from lbcore.model.snapshot import EndpointInfo

__all__ = [
    "describe_service",
    "format_endpoint_slices_table",
    "format_endpoints_table",
    "format_pods_table",
    "format_services_table",
    "human_duration",
    "tabulate",
]

MAX_SHOWN_ENDPOINTS = 3  # kubectl shows three addresses, then "+ N more..."


def tabulate(rows: Sequence[Sequence[str]], padding: int) -> str:
    """Go tabwriter alignment: a column is as wide as its widest cell in each run of
    consecutive rows that have that column (the last cell of a row is never padded)."""
    widths: list[dict[int, int]] = [{} for _ in rows]
    ncols = max((len(r) for r in rows), default=0)
    for col in range(ncols - 1):
        start = None
        for i in range(len(rows) + 1):
            has = i < len(rows) and len(rows[i]) > col + 1
            if has and start is None:
                start = i
            elif not has and start is not None:
                width = max(len(rows[j][col]) for j in range(start, i)) + padding
                for j in range(start, i):
                    widths[j][col] = width
                start = None
    lines = []
    for row, w in zip(rows, widths, strict=True):
        cells = [c.ljust(w[i]) if i in w else c for i, c in enumerate(row)]
        lines.append("".join(cells).rstrip() if len(row) > 1 else "".join(cells))
    return "\n".join(lines) + "\n"


def human_duration(delta: _dt.timedelta) -> str:
    """An age as kubectl prints it: ``45s``, ``3m20s``, ``5h``, ``2d3h``, ``1y20d``."""
    seconds = int(delta.total_seconds())
    if seconds < -1:
        return "<invalid>"
    if seconds < 0:
        return "0s"
    if seconds < 120:
        return f"{seconds}s"
    minutes = seconds // 60
    if minutes < 10:
        rest = seconds % 60
        return f"{minutes}m{rest}s" if rest else f"{minutes}m"
    if minutes < 180:
        return f"{minutes}m"
    hours = minutes // 60
    if hours < 8:
        rest = minutes % 60
        return f"{hours}h{rest}m" if rest else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    days = hours // 24
    if days < 8:
        rest = hours % 24
        return f"{days}d{rest}h" if rest else f"{days}d"
    if days < 365 * 2:
        return f"{days}d"
    years = days // 365
    if years < 8:
        rest = days % 365
        return f"{years}y{rest}d" if rest else f"{years}y"
    return f"{years}y"


def _age(created: _dt.datetime | None, now: _dt.datetime | None) -> str:
    if created is None:
        return "<unknown>"
    return human_duration((now or _dt.datetime.now(_dt.UTC)) - created)


def _labels_text(labels: Mapping[str, str] | None) -> str:
    if not labels:
        return "<none>"
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


def _multiline(title: str, items: Mapping[str, str]) -> list[list[str]]:
    if not items:
        return [[f"{title}:", "<none>"]]
    rows = []
    for i, (k, v) in enumerate(sorted(items.items())):
        rows.append([f"{title}:" if i == 0 else "", f"{k}={v}"])
    return rows


def _format_endpoints(eps: Iterable[EndpointInfo]) -> str:
    ready = [ep.address for ep in eps if ep.ready]
    if not ready:
        return "<none>"
    text = ",".join(ready[:MAX_SHOWN_ENDPOINTS])
    if len(ready) > MAX_SHOWN_ENDPOINTS:
        text += f" + {len(ready) - MAX_SHOWN_ENDPOINTS} more..."
    return text


def describe_service(service: Service,
                     endpoints: Mapping[str, Sequence[EndpointInfo]] | None = None) -> str:
    """``kubectl describe service`` for ``service`` with its endpoints per port name."""
    endpoints = endpoints or {}
    annotations = {k: v for k, v in service.annotations.items()
                   if k != "kubectl.kubernetes.io/last-applied-configuration"}
    rows: list[list[str]] = [
        ["Name:", service.name],
        ["Namespace:", service.namespace],
        *_multiline("Labels", service.labels),
        *_multiline("Annotations", annotations),
        ["Selector:", _labels_text(service.selector) if service.selector else "<none>"],
        ["Type:", service.type],
    ]
    if service.ip_family_policy:
        rows.append(["IP Family Policy:", service.ip_family_policy])
    rows.append(["IP Families:", ",".join(service.ip_families) or "<none>"])
    if service.type != "ExternalName":
        rows.append(["IP:", service.cluster_ip or ""])
        rows.append(["IPs:", ",".join(service.cluster_ips) or "<none>"])
    if service.external_ips:
        rows.append(["External IPs:", ",".join(service.external_ips)])
    if service.external_name:
        rows.append(["External Name:", service.external_name])
    if service.load_balancer_ips:
        rows.append(["LoadBalancer Ingress:", ", ".join(service.load_balancer_ips)])
    for sp in service.ports:
        name = sp.name or "<unset>"
        rows.append(["Port:", name, f"{sp.port}/{sp.protocol}"])
        rows.append(["TargetPort:", f"{sp.target_port}/{sp.protocol}"])
        if sp.node_port:
            rows.append(["NodePort:", name, f"{sp.node_port}/{sp.protocol}"])
        rows.append(["Endpoints:", _format_endpoints(endpoints.get(sp.name, ()))])
    rows.append(["Session Affinity:", service.session_affinity])
    if service.session_affinity == "ClientIP":
        rows.append(["Session Affinity Timeout:", f"{service.affinity_timeout}s"])
    if service.external_traffic_policy:
        rows.append(["External Traffic Policy:", service.external_traffic_policy])
    if service.internal_traffic_policy and service.internal_traffic_policy != "Cluster":
        rows.append(["Internal Traffic Policy:", service.internal_traffic_policy])
    rows.append(["Events:", "<none>"])
    return tabulate(rows, padding=2)


def _service_ports(service: Service) -> str:
    parts = []
    for sp in service.ports:
        if sp.node_port:
            parts.append(f"{sp.port}:{sp.node_port}/{sp.protocol}")
        else:
            parts.append(f"{sp.port}/{sp.protocol}")
    return ",".join(parts) or "<none>"


def _external_ip(service: Service) -> str:
    if service.type == "ExternalName":
        return service.external_name or "<none>"
    ips = list(service.external_ips)
    if service.type == "LoadBalancer":
        ips = list(service.load_balancer_ips) + ips
        return ",".join(ips) if ips else "<pending>"
    return ",".join(ips) if ips else "<none>"


def format_services_table(services: Iterable[Service], wide: bool = False,
                          now: _dt.datetime | None = None) -> str:
    """``kubectl get services`` (``-o wide`` adds SELECTOR)."""
    header = ["NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)", "AGE"]
    if wide:
        header.append("SELECTOR")
    rows = [header]
    for s in services:
        row = [s.name, s.type, s.cluster_ip or "<none>", _external_ip(s), _service_ports(s),
               _age(s.created, now)]
        if wide:
            row.append(_labels_text(s.selector))
        rows.append(row)
    return tabulate(rows, padding=3)


def _pod_status(pod: Pod) -> str:
    if pod.terminating:
        return "Terminating"
    return pod.phase or ("Running" if pod.pod_ip else "Pending")


def _pod_ready(pod: Pod) -> str:
    raw_status = pod.raw.get("status") or {}
    statuses = raw_status.get("containerStatuses") or []
    if statuses:
        ready = sum(1 for c in statuses if c.get("ready"))
        return f"{ready}/{len(statuses)}"
    total = len((pod.raw.get("spec") or {}).get("containers") or []) or 1
    return f"{total if pod.ready else 0}/{total}"


def _pod_restarts(pod: Pod) -> str:
    statuses = (pod.raw.get("status") or {}).get("containerStatuses") or []
    return str(sum(int(c.get("restartCount") or 0) for c in statuses))


def format_pods_table(pods: Iterable[Pod], wide: bool = False,
                      now: _dt.datetime | None = None) -> str:
    """``kubectl get pods`` (``-o wide`` adds IP, NODE, NOMINATED NODE, READINESS GATES)."""
    header = ["NAME", "READY", "STATUS", "RESTARTS", "AGE"]
    if wide:
        header += ["IP", "NODE", "NOMINATED NODE", "READINESS GATES"]
    rows = [header]
    for p in pods:
        row = [p.name, _pod_ready(p), _pod_status(p), _pod_restarts(p), _age(p.created, now)]
        if wide:
            row += [p.pod_ip or "<none>", p.node_name or "<none>", "<none>", "<none>"]
        rows.append(row)
    return tabulate(rows, padding=3)


def _endpoint_list(addresses: Sequence[str]) -> str:
    if not addresses:
        return "<none>"
    text = ",".join(addresses[:MAX_SHOWN_ENDPOINTS])
    if len(addresses) > MAX_SHOWN_ENDPOINTS:
        text += f" + {len(addresses) - MAX_SHOWN_ENDPOINTS} more..."
    return text


def format_endpoints_table(
    rows: Iterable[tuple[str, Mapping[str, Sequence[EndpointInfo]], _dt.datetime | None]]
    | Iterable[Endpoints],
    now: _dt.datetime | None = None,
) -> str:
    """``kubectl get endpoints``: rows of (service name, endpoints per port, created) or
    Endpoints objects. Ready addresses only, three shown."""
    table = [["NAME", "ENDPOINTS", "AGE"]]
    for row in rows:
        if isinstance(row, Endpoints):
            addrs = [f"{a.ip}:{p.port}" if ":" not in a.ip else f"[{a.ip}]:{p.port}"
                     for s in row.subsets for p in s.ports for a in s.addresses]
            table.append([row.name, _endpoint_list(addrs), _age(row.created, now)])
            continue
        name, per_port, created = row
        addrs = [ep.address for eps in per_port.values() for ep in eps if ep.ready]
        table.append([name, _endpoint_list(addrs), _age(created, now)])
    return tabulate(table, padding=3)


def format_endpoint_slices_table(slices: Iterable[EndpointSlice],
                                 now: _dt.datetime | None = None) -> str:
    """``kubectl get endpointslices``: NAME ADDRESSTYPE PORTS ENDPOINTS AGE."""
    table = [["NAME", "ADDRESSTYPE", "PORTS", "ENDPOINTS", "AGE"]]
    for sl in slices:
        ports = ",".join(str(p.port) for p in sl.ports if p.port is not None) or "<unset>"
        addrs = [ep.addresses[0] for ep in sl.endpoints if ep.addresses]
        table.append([sl.name, sl.address_type, ports, _endpoint_list(addrs),
                      _age(sl.created, now)])
    return tabulate(table, padding=3)
