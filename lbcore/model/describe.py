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
    "format_endpoint_slices",
    "format_endpoint_slices_table",
    "format_endpoints",
    "format_endpoints_table",
    "format_pods_table",
    "format_services_table",
    "human_duration",
    "tabulate",
]

MAX_SHOWN_ENDPOINTS = 3  # kubectl shows three addresses, then "+ N more..."


def tabulate(rows: Sequence[Sequence[str]], padding: int, trim: bool = True) -> str:
    """Go tabwriter alignment: a column is as wide as its widest cell in each run of
    consecutive rows that have that column (the last cell of a row is never padded).

    ``trim=False`` keeps the padding of a row whose last cell is empty, as kubectl's
    ``describe`` prints ``Endpoints:`` followed by spaces when a service has no ready one.
    """
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
        line = "".join(cells)
        lines.append(line.rstrip() if trim and len(row) > 1 else line)
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
    """kubectl's printLabelsMultiline: one ``key=value`` a line, sorted."""
    if not items:
        return [[f"{title}:", "<none>"]]
    rows = []
    for i, (k, v) in enumerate(sorted(items.items())):
        rows.append([f"{title}:" if i == 0 else "", f"{k}={v}"])
    return rows


SKIPPED_ANNOTATIONS = frozenset({"kubectl.kubernetes.io/last-applied-configuration"})
MAX_ANNOTATION_LEN = 140  # kubectl's maxAnnotationLen


def _annotations(title: str, annotations: Mapping[str, str]) -> list[list[str]]:
    """kubectl's printAnnotationsMultiline: ``key: value``, sorted; a value too long for one
    line, or of several lines, goes under its key, each line cut at 138 characters."""
    keys = sorted(k for k in annotations if k not in SKIPPED_ANNOTATIONS)
    if not keys:
        return [[f"{title}:", "<none>"]]
    rows = []
    for i, key in enumerate(keys):
        first = f"{title}:" if i == 0 else ""
        value = annotations[key].removesuffix("\n")
        if len(value) + len(key) + 2 > MAX_ANNOTATION_LEN or "\n" in value:
            rows.append([first, f"{key}:"])
            limit = MAX_ANNOTATION_LEN - 2
            rows.extend(["", f"  {line[:limit]}..." if len(line) > limit else f"  {line}"]
                        for line in value.split("\n"))
        else:
            rows.append([first, f"{key}: {value}"])
    return rows


def _join_more(shown: list[str], count: int) -> str:
    text = ",".join(shown)
    if count > MAX_SHOWN_ENDPOINTS:
        text += f" + {count - MAX_SHOWN_ENDPOINTS} more..."
    return text


def _host_port(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def format_endpoint_slices(slices: Sequence[EndpointSlice], port_name: str | None = None) -> str:
    """The ``Endpoints:`` of ``kubectl describe service`` for one port (None: every port): the
    ready addresses of the service's slices, three shown, then ``+ N more...``; ``<none>`` when
    there is no slice at all, and nothing when no endpoint is ready."""
    if not slices:
        return "<none>"
    shown: list[str] = []
    count = 0
    for sl in slices:
        if not sl.ports:  # a headless service may have no ports: addresses alone
            for ep in sl.endpoints:
                if ep.ready and ep.addresses:
                    if len(shown) < MAX_SHOWN_ENDPOINTS:
                        shown.append(ep.addresses[0])
                    count += 1
            continue
        for p in sl.ports:
            if port_name is not None and p.name != port_name:
                continue
            for ep in sl.endpoints:
                if ep.ready and ep.addresses:
                    if len(shown) < MAX_SHOWN_ENDPOINTS:
                        shown.append(_host_port(ep.addresses[0], p.port or 0))
                    count += 1
    return _join_more(shown, count)


def _format_endpoints(eps: Iterable[EndpointInfo]) -> str:
    ready = [ep.address for ep in eps if ep.ready]
    if not ready:
        return "<none>"
    return _join_more(ready[:MAX_SHOWN_ENDPOINTS], len(ready))


def _ingress(service: Service) -> str:
    ingress = ((service.raw.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []
    parts = []
    for entry in ingress:
        if not isinstance(entry, Mapping):
            continue
        if entry.get("ip"):
            mode = f" ({entry['ipMode']})" if entry.get("ipMode") else ""
            parts.append(f"{entry['ip']}{mode}")
        else:
            parts.append(str(entry.get("hostname") or ""))
    return ", ".join(parts)


def describe_service(
    service: Service,
    endpoints: Mapping[str, Sequence[EndpointInfo]] | None = None,
    *,
    endpoint_slices: Sequence[EndpointSlice] | None = None,
) -> str:
    """``kubectl describe service``, line for line as kubectl 1.32 prints it.

    kubectl reads the ``Endpoints:`` lines from the service's EndpointSlices: give them as
    ``endpoint_slices`` (in name order, as the API lists them). Without slices, ``endpoints``
    (per port name) stands in, and a port without a ready endpoint shows ``<none>``.
    """
    spec = service.raw.get("spec") or {}
    rows: list[list[str]] = [
        ["Name:", service.name],
        ["Namespace:", service.namespace],
        *_multiline("Labels", service.labels),
        *_annotations("Annotations", service.annotations),
        ["Selector:", _labels_text(service.selector)],
        ["Type:", service.type],
    ]
    if service.ip_family_policy:
        rows.append(["IP Family Policy:", service.ip_family_policy])
    rows.append(["IP Families:", ",".join(service.ip_families) or "<none>"])
    rows.append(["IP:", service.cluster_ip or ""])
    rows.append(["IPs:", ",".join(service.cluster_ips) or "<none>"])
    if service.external_ips:
        rows.append(["External IPs:", ",".join(service.external_ips)])
    if spec.get("loadBalancerIP"):
        rows.append(["Desired LoadBalancer IP:", str(spec["loadBalancerIP"])])
    if service.external_name:
        rows.append(["External Name:", service.external_name])
    ingress = _ingress(service)
    if ingress:
        rows.append(["LoadBalancer Ingress:", ingress])
    for sp in service.ports:
        name = sp.name or "<unset>"
        rows.append(["Port:", name, f"{sp.port}/{sp.protocol}"])
        rows.append(["TargetPort:", f"{sp.target_port}/{sp.protocol}"])
        if sp.node_port:
            rows.append(["NodePort:", name, f"{sp.node_port}/{sp.protocol}"])
        if endpoint_slices is not None or endpoints is None:
            text = format_endpoint_slices(endpoint_slices or (), sp.name)
        else:
            text = _format_endpoints(endpoints.get(sp.name, ()))
        rows.append(["Endpoints:", text])
    rows.append(["Session Affinity:", service.session_affinity])
    if service.external_traffic_policy:
        rows.append(["External Traffic Policy:", service.external_traffic_policy])
    if service.internal_traffic_policy:
        rows.append(["Internal Traffic Policy:", service.internal_traffic_policy])
    if spec.get("healthCheckNodePort"):
        rows.append(["HealthCheck NodePort:", str(spec["healthCheckNodePort"])])
    if spec.get("loadBalancerSourceRanges"):
        rows.append(["LoadBalancer Source Ranges:", ",".join(spec["loadBalancerSourceRanges"])])
    rows.append(["Events:", "<none>"])
    return tabulate(rows, padding=2, trim=False)


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


def format_endpoints(endpoints: Endpoints) -> str:
    """The ENDPOINTS column of ``kubectl get endpoints``: ready addresses with each port of
    their subset, three shown, then ``+ N more...``; ``<none>`` without subsets."""
    if not endpoints.subsets:
        return "<none>"
    shown: list[str] = []
    count = 0
    for subset in endpoints.subsets:
        if not subset.ports:  # a headless service may have no ports
            count += len(subset.addresses)
            shown += [a.ip for a in subset.addresses][:MAX_SHOWN_ENDPOINTS - len(shown)]
            continue
        for p in subset.ports:
            count += len(subset.addresses)
            shown += [_host_port(a.ip, p.port or 0)
                      for a in subset.addresses][:MAX_SHOWN_ENDPOINTS - len(shown)]
    return _join_more(shown, count)


def format_endpoints_table(
    rows: Iterable[tuple[str, Mapping[str, Sequence[EndpointInfo]], _dt.datetime | None]]
    | Iterable[Endpoints],
    now: _dt.datetime | None = None,
) -> str:
    """``kubectl get endpoints``: Endpoints objects (or rows of service name, endpoints per
    port, created). Ready addresses only, three shown."""
    table = [["NAME", "ENDPOINTS", "AGE"]]
    for row in rows:
        if isinstance(row, Endpoints):
            table.append([row.name, format_endpoints(row), _age(row.created, now)])
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
