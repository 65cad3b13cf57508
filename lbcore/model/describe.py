"""``describe`` output in kubectl's layout (``get`` tables are :mod:`lbcore.model.tables`).

kubectl aligns with Go's tabwriter: ``describe`` pads columns to the widest cell plus two
spaces, ``get`` tables pad with three. The same rules are applied here so the output reads
exactly like kubectl's.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from lbcore.model.objects import EndpointSlice, Route, RouteBackend, Service, parse_timestamp
from lbcore.model.snapshot import EndpointInfo

__all__ = [
    "admitted_conditions",
    "backend_weights",
    "describe_route",
    "describe_service",
    "format_endpoint_slices",
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
    events: Sequence[Mapping[str, Any]] = (),
    now: _dt.datetime | None = None,
) -> str:
    """``kubectl describe service``, line for line as kubectl 1.32 prints it.

    kubectl reads the ``Endpoints:`` lines from the service's EndpointSlices: give them as
    ``endpoint_slices`` (in name order, as the API lists them). Without slices, ``endpoints``
    (per port name) stands in, and a port without a ready endpoint shows ``<none>``. ``events``
    are the Events about the service (:func:`describe_events`).
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
    if not events:  # kubectl writes "<none>" in the same table, a list after a flush
        rows.append(["Events:", "<none>"])
        return tabulate(rows, padding=2, trim=False)
    return tabulate(rows, padding=2, trim=False) + describe_events(events, now)


# --- Routes ------------------------------------------------------------------------------------

def admitted_conditions(route: Route) -> list[tuple[str, Mapping[str, object]]]:
    """(routerName, its Admitted condition) of every router that recorded one."""
    out = []
    for entry in (route.raw.get("status") or {}).get("ingress") or []:
        if not isinstance(entry, Mapping):
            continue
        condition = next((c for c in entry.get("conditions") or []
                          if isinstance(c, Mapping) and c.get("type") == "Admitted"), None)
        if condition is not None:
            out.append((str(entry.get("routerName") or ""), condition))
    return out


def backend_weights(backends: Sequence[RouteBackend]) -> list[str]:
    """``web(75%)`` for each backend of a route with more than one, as ``oc`` prints them."""
    if len(backends) == 1:
        return [backends[0].name]
    total = sum(b.weight for b in backends)
    return [f"{b.name}({b.weight * 100 // total if total else 0}%)" for b in backends]


def describe_route(route: Route,
                   endpoints: Mapping[str, Sequence[EndpointInfo]] | None = None,
                   now: _dt.datetime | None = None) -> str:
    """``oc describe route``: host, its admission by each router (and why not), path, TLS,
    then each backend with its weight and endpoints (``endpoints``: service name -> the
    endpoints of the port the route targets)."""
    rows: list[list[str]] = [
        ["Name:", route.name], ["Namespace:", route.namespace],
        ["Created:", f"{_age(route.created, now)} ago" if route.created else "<unknown>"],
        *_multiline("Labels", route.labels), *_annotations("Annotations", route.annotations),
        ["Requested Host:", route.host],
    ]
    for router, condition in admitted_conditions(route):
        when = condition.get("lastTransitionTime")
        age = ""
        if isinstance(when, str) and when:
            stamp = parse_timestamp(when)
            age = f" {_age(stamp, now)} ago" if stamp else ""
        if condition.get("status") == "True":
            rows.append(["", f"   exposed on router {router}{age}"])
        else:
            rows.append(["", f"   rejected by router {router}: {condition.get('reason')}{age}"])
            if condition.get("message"):
                rows.append(["", f"     {condition.get('message')}"])
    rows += [["Path:", route.path or "<none>"],
             ["TLS Termination:", route.tls.termination if route.tls else "<none>"],
             ["Insecure Policy:", (route.tls.insecure_edge_termination_policy or "<none>")
              if route.tls else "<none>"],
             ["Endpoint Port:", "<all endpoint ports>" if route.target_port is None
              else str(route.target_port)]]
    total = sum(b.weight for b in route.backends)
    for backend in route.backends:
        share = f" ({backend.weight * 100 // total}%)" if total else ""
        eps = (endpoints or {}).get(backend.name)
        rows += [[""], ["Service:", backend.name], ["Weight:", f"{backend.weight}{share}"],
                 ["Endpoints:", _format_endpoints(eps) if eps is not None else "<none>"]]
    return tabulate(rows, padding=2, trim=False)


def _event_time(event: Mapping[str, Any], key: str) -> _dt.datetime | None:
    return parse_timestamp(event.get(key)) or parse_timestamp(event.get("eventTime"))


def _event_last_seen(event: Mapping[str, Any], now: _dt.datetime | None) -> str:
    """kubectl's interval: the age of the last one, ``(xN over AGE)`` when it repeated."""
    first = _age(_event_time(event, "firstTimestamp"), now)
    count = event.get("count") or 1
    if isinstance(count, int) and count > 1:
        return f"{_age(_event_time(event, 'lastTimestamp'), now)} (x{count} over {first})"
    return first


def _events_by_time(events: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """kubectl's order: by last timestamp, oldest first."""
    def when(event: Mapping[str, Any]) -> _dt.datetime:
        return (_event_time(event, "lastTimestamp")
                or _dt.datetime.min.replace(tzinfo=_dt.UTC))
    return sorted(events, key=when)


def describe_events(events: Sequence[Mapping[str, Any]],
                    now: _dt.datetime | None = None) -> str:
    """The ``Events:`` section of ``kubectl describe`` (its ``DescribeEvents``): ``<none>``, or
    a table of Type, Reason, Age, From and Message indented by two, oldest first."""
    if not events:
        return tabulate([["Events:", "<none>"]], padding=2)
    rows = [["Type", "Reason", "Age", "From", "Message"],
            ["----", "------", "----", "----", "-------"]]
    for event in _events_by_time(events):
        source = (event.get("source") or {}).get("component") or event.get(
            "reportingComponent") or ""
        rows.append([str(event.get("type", "")), str(event.get("reason", "")),
                     _event_last_seen(event, now), str(source),
                     str(event.get("message", "")).strip()])
    table = tabulate(rows, padding=2)
    return "Events:\n" + "".join(f"  {line}\n" for line in table.splitlines())

