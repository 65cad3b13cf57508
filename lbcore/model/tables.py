"""The tables ``get`` prints, once: the API server's ``Table`` and kubectl's text of it.

The admin API answers ``Accept: application/json;as=Table;v=v1;g=meta.k8s.io`` with
:func:`table` (so kubectl prints services, pods, endpoints, endpoint slices, namespaces,
events, secrets, ingresses and routes (``oc get routes``' columns) as it does against a cluster),
and ``lbcore get`` prints the same table with
:func:`render`, so both show the same columns from the same code. The columns and cells are
those of Kubernetes' printers (``pkg/printers/internalversion``): the server fills every column,
``priority`` 1 ones are shown by ``-o wide`` only, and headers are printed in upper case.

One difference, where lbcore has no kubelet: a pod without ``containerStatuses`` (as one
written to the embedded store is) counts its containers ready when its ``Ready`` condition is
true, and without a ``phase`` is ``Running`` once it has an IP (``Pending`` before).
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from lbcore.model.describe import admitted_conditions, backend_weights, human_duration, tabulate
from lbcore.model.objects import Route

__all__ = ["Column", "columns_for", "render", "row_cells", "table"]

MAX_SHOWN = 3  # kubectl shows three endpoints or ports, then "+ N more..."
LOAD_BALANCER_WIDTH = 16  # kubectl's loadBalancerWidth: longer ingress lists are cut (not wide)

Obj = Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Column:
    """One ``columnDefinitions`` entry of a ``Table``."""

    name: str
    description: str
    priority: int = 0
    type: str = "string"
    format: str = ""

    def definition(self) -> dict[str, Any]:
        return {"name": self.name, "type": self.type, "format": self.format,
                "description": self.description, "priority": self.priority}


_NAME = Column("Name", "Name must be unique within a namespace.", format="name")
_AGE = Column("Age", "CreationTimestamp is a timestamp representing the server time when this "
              "object was created.")


def _meta(obj: Obj) -> Obj:
    meta = obj.get("metadata")
    return meta if isinstance(meta, dict) else {}


def _time(text: Any) -> _dt.datetime | None:
    if not isinstance(text, str) or not text:
        return None
    try:
        when = _dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=_dt.UTC)


def _since(text: Any, now: _dt.datetime) -> str:
    """kubectl's translateTimestampSince: ``<unknown>`` for no time."""
    when = _time(text)
    return "<unknown>" if when is None else human_duration(now - when)


def _age(obj: Obj, now: _dt.datetime) -> str:
    return _since(_meta(obj).get("creationTimestamp"), now)


def _list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list) else []


def _map(value: Any) -> Obj:
    return value if isinstance(value, dict) else {}


def _labels(labels: Any) -> str:
    """labels.FormatLabels: ``k=v,...`` sorted, ``<none>`` when empty."""
    items = _map(labels)
    return ",".join(f"{k}={v}" for k, v in sorted(items.items())) if items else "<none>"


def _with_more(shown: list[str], count: int, empty: str) -> str:
    text = ",".join(shown)
    if count > MAX_SHOWN:
        return f"{text} + {count - MAX_SHOWN} more..."
    return text or empty


# -- Service ------------------------------------------------------------------------------------


def _service_external_ip(svc: Obj, spec: Obj) -> str:
    kind = spec.get("type") or "ClusterIP"
    external = [str(ip) for ip in _list(spec.get("externalIPs"))]
    if kind in ("ClusterIP", "NodePort"):
        return ",".join(external) or "<none>"
    if kind == "ExternalName":
        return str(spec.get("externalName") or "")
    if kind == "LoadBalancer":
        ingress = _list(_map(_map(svc.get("status")).get("loadBalancer")).get("ingress"))
        balanced = [str(i.get("ip") or i.get("hostname") or "") for i in ingress
                    if isinstance(i, dict) and (i.get("ip") or i.get("hostname"))]
        text = ",".join(balanced)
        if external:
            return ",".join(balanced + external)
        # not cut here: the server prints the wide form, as it fills every column
        return text or "<pending>"
    return "<unknown>"


def _service_ports(spec: Obj) -> str:
    parts = []
    for p in _list(spec.get("ports")):
        if not isinstance(p, dict):
            continue
        protocol = p.get("protocol") or "TCP"
        if p.get("nodePort"):
            parts.append(f"{p.get('port')}:{p['nodePort']}/{protocol}")
        else:
            parts.append(f"{p.get('port')}/{protocol}")
    return ",".join(parts) or "<none>"


def _service_row(svc: Obj, now: _dt.datetime) -> list[Any]:
    spec = _map(svc.get("spec"))
    ips = _list(spec.get("clusterIPs"))
    cluster_ip = str(ips[0]) if ips else str(spec.get("clusterIP") or "<none>")
    return [_meta(svc).get("name", ""), spec.get("type") or "ClusterIP", cluster_ip,
            _service_external_ip(svc, spec), _service_ports(spec), _age(svc, now),
            _labels(spec.get("selector"))]


# -- Pod ----------------------------------------------------------------------------------------


def _pod_row(pod: Obj, now: _dt.datetime) -> list[Any]:
    """kubectl's printPod, for the fields a pod written to lbcore carries."""
    spec, status = _map(pod.get("spec")), _map(pod.get("status"))
    meta = _meta(pod)
    containers = _list(spec.get("containers"))
    statuses = [s for s in _list(status.get("containerStatuses")) if isinstance(s, dict)]
    conditions = [c for c in _list(status.get("conditions")) if isinstance(c, dict)]
    ready_condition = any(c.get("type") == "Ready" and c.get("status") == "True"
                          for c in conditions)
    reason = str(status.get("phase") or ("Running" if status.get("podIP") else "Pending"))
    if status.get("reason"):
        reason = str(status["reason"])
    restarts, ready, last_restart = 0, 0, None
    has_running = False
    for cs in reversed(statuses):
        restarts += int(cs.get("restartCount") or 0)
        finished = _time(_map(_map(cs.get("lastState")).get("terminated")).get("finishedAt"))
        if finished is not None and (last_restart is None or finished > last_restart):
            last_restart = finished
        state = _map(cs.get("state"))
        waiting, terminated = _map(state.get("waiting")), _map(state.get("terminated"))
        if waiting.get("reason"):
            reason = str(waiting["reason"])
        elif terminated.get("reason"):
            reason = str(terminated["reason"])
        elif "terminated" in state:
            signal = terminated.get("signal")
            reason = f"Signal:{signal}" if signal else f"ExitCode:{terminated.get('exitCode', 0)}"
        elif cs.get("ready") and "running" in state:
            has_running = True
            ready += 1
    if reason == "Completed" and has_running:
        reason = "Running" if ready_condition else "NotReady"
    if not statuses:  # no kubelet: the Ready condition stands for the containers
        ready = len(containers) if ready_condition else 0
    if meta.get("deletionTimestamp"):
        reason = "Unknown" if status.get("reason") == "NodeLost" else (
            reason if reason in ("Succeeded", "Failed") else "Terminating")
    restarts_text = str(restarts)
    if restarts and last_restart is not None:
        restarts_text = f"{restarts} ({human_duration(now - last_restart)} ago)"
    pod_ips = [p.get("ip") for p in _list(status.get("podIPs")) if isinstance(p, dict)]
    pod_ip = pod_ips[0] if pod_ips and pod_ips[0] else status.get("podIP") or "<none>"
    gates = [g.get("conditionType") for g in _list(spec.get("readinessGates"))
             if isinstance(g, dict)]
    gates_text = "<none>"
    if gates:
        true = sum(1 for g in gates for c in conditions
                   if c.get("type") == g and c.get("status") == "True")
        gates_text = f"{true}/{len(gates)}"
    total = len(containers)
    return [meta.get("name", ""), f"{ready}/{total}", reason, restarts_text, _age(pod, now),
            pod_ip, spec.get("nodeName") or "<none>",
            status.get("nominatedNodeName") or "<none>", gates_text]


# -- Endpoints and EndpointSlice ----------------------------------------------------------------


def _host_port(ip: str, port: Any) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def _endpoints_row(eps: Obj, now: _dt.datetime) -> list[Any]:
    """kubectl's formatEndpoints: ready addresses with each port of their subset."""
    subsets = [s for s in _list(eps.get("subsets")) if isinstance(s, dict)]
    shown: list[str] = []
    count = 0
    for subset in subsets:
        ips = [str(a.get("ip", "")) for a in _list(subset.get("addresses"))
               if isinstance(a, dict)]
        ports = [p for p in _list(subset.get("ports")) if isinstance(p, dict)]
        if not ports:  # a headless service may have no ports
            count += len(ips)
            shown += ips[:MAX_SHOWN - len(shown)]
            continue
        for port in ports:
            count += len(ips)
            shown += [_host_port(ip, port.get("port", 0)) for ip in ips][:MAX_SHOWN - len(shown)]
    text = "<none>" if not subsets else _with_more(shown, count, "")
    return [_meta(eps).get("name", ""), text, _age(eps, now)]


def _slice_row(sl: Obj, now: _dt.datetime) -> list[Any]:
    ports = [p for p in _list(sl.get("ports")) if isinstance(p, dict)]
    port_texts = [str(p["port"]) if p.get("port") is not None else str(p.get("name") or "*")
                  for p in ports]
    addresses = [str(a) for ep in _list(sl.get("endpoints")) if isinstance(ep, dict)
                 for a in _list(ep.get("addresses"))]
    return [_meta(sl).get("name", ""), sl.get("addressType", ""),
            _with_more(port_texts[:MAX_SHOWN], len(port_texts), "<unset>"),
            _with_more(addresses[:MAX_SHOWN], len(addresses), "<unset>"), _age(sl, now)]


# -- Namespace and Event ------------------------------------------------------------------------


def _namespace_row(ns: Obj, now: _dt.datetime) -> list[Any]:
    return [_meta(ns).get("name", ""), _map(ns.get("status")).get("phase", ""), _age(ns, now)]


def _event_row(ev: Obj, now: _dt.datetime) -> list[Any]:
    """kubectl's printEvent (every column, as the server fills them)."""
    first = _since(ev.get("firstTimestamp"), now)
    if _time(ev.get("firstTimestamp")) is None:
        first = _since(ev.get("eventTime"), now)
    last = _since(ev.get("lastTimestamp"), now) if _time(ev.get("lastTimestamp")) else first
    count = ev.get("count") or 0
    series = ev.get("series")
    if isinstance(series, dict):
        last = _since(series.get("lastObservedTime"), now)
        count = series.get("count") or 0
    elif not count:
        count = 1
    involved = _map(ev.get("involvedObject"))
    target = str(involved.get("kind", "")).lower()
    if involved.get("name"):
        target += f"/{involved['name']}"
    source = _map(ev.get("source"))
    component = source.get("component") or ev.get("reportingComponent") or ""
    instance = source.get("host") or ev.get("reportingInstance") or ""
    return [last, ev.get("type", ""), ev.get("reason", ""), target,
            involved.get("fieldPath", ""), f"{component}, {instance}" if instance else component,
            str(ev.get("message", "")).strip(), first, int(count), _meta(ev).get("name", "")]


# -- Route, Ingress, Secret ---------------------------------------------------------------------


def _route_row(obj: Obj, now: _dt.datetime) -> list[Any]:
    """``oc get routes``: a host no router admitted shows ``... N rejected``."""
    route = Route.from_server(dict(obj))
    conditions = admitted_conditions(route)
    rejected = sum(1 for _, c in conditions if c.get("status") == "False")
    host = route.host
    if conditions and rejected == len(conditions):
        host = f"{host} ... {rejected} rejected"
    termination = ""
    if route.tls is not None:
        termination = route.tls.termination
        if route.tls.insecure_edge_termination_policy:
            termination += f"/{route.tls.insecure_edge_termination_policy}"
    port = "<all>" if route.target_port is None else str(route.target_port)
    return [route.name, host, route.path, ",".join(backend_weights(route.backends)), port,
            termination, route.wildcard_policy]


def _ingress_row(obj: Obj, now: _dt.datetime) -> list[Any]:
    spec = _map(obj.get("spec"))
    rules = [r for r in _list(spec.get("rules")) if isinstance(r, dict)]
    hosts = ",".join(str(r.get("host") or "*") for r in rules) or "*"
    points = _list(_map(_map(obj.get("status")).get("loadBalancer")).get("ingress"))
    address = ",".join(str(p.get("ip") or p.get("hostname") or "") for p in points
                       if isinstance(p, dict))
    ingress_class = spec.get("ingressClassName") or _map(_meta(obj).get("annotations")).get(
        "kubernetes.io/ingress.class") or "<none>"
    return [_meta(obj).get("name", ""), ingress_class, hosts, address,
            "80, 443" if spec.get("tls") else "80", _age(obj, now)]


def _ingress_class_row(obj: Obj, now: _dt.datetime) -> list[Any]:
    spec = _map(obj.get("spec"))
    parameters = _map(spec.get("parameters"))
    shown = "<none>"
    if parameters:
        group = str(parameters.get("apiGroup") or "")
        shown = f"{parameters.get('kind')}.{group}/{parameters.get('name')}" if group else \
            f"{parameters.get('kind')}/{parameters.get('name')}"
    return [_meta(obj).get("name", ""), spec.get("controller", ""), shown, _age(obj, now)]


def _secret_row(obj: Obj, now: _dt.datetime) -> list[Any]:
    return [_meta(obj).get("name", ""), obj.get("type") or "Opaque",
            len(_map(obj.get("data"))), _age(obj, now)]


_Row = Callable[[Obj, _dt.datetime], list[Any]]

_TABLES: dict[str, tuple[tuple[Column, ...], _Row]] = {
    "Service": ((
        _NAME,
        Column("Type", "The type of the service."),
        Column("Cluster-IP", "The IP address of the service."),
        Column("External-IP", "The external IP address of the service."),
        Column("Port(s)", "The ports of the service."),
        _AGE,
        Column("Selector", "Route service traffic to pods with label keys and values matching "
               "this selector.", priority=1),
    ), _service_row),
    "Pod": ((
        _NAME,
        Column("Ready", "The aggregate readiness state of this pod for accepting traffic."),
        Column("Status", "The aggregate status of the containers in this pod."),
        Column("Restarts", "The number of times the containers in this pod have been "
               "restarted and when the last container in this pod has restarted."),
        _AGE,
        Column("IP", "The IP address assigned to the pod.", priority=1),
        Column("Node", "The name of the node the pod is assigned to.", priority=1),
        Column("Nominated Node", "The name of the node this pod is nominated to run on.",
               priority=1),
        Column("Readiness Gates", "The pod's readiness gates that are true, of all.",
               priority=1),
    ), _pod_row),
    "Endpoints": ((
        _NAME,
        Column("Endpoints", "The endpoints of the service: ready addresses with their ports."),
        _AGE,
    ), _endpoints_row),
    "EndpointSlice": ((
        _NAME,
        Column("AddressType", "The type of address carried by this EndpointSlice."),
        Column("Ports", "The ports exposed by the endpoints of this slice."),
        Column("Endpoints", "The addresses of the endpoints of this slice."),
        _AGE,
    ), _slice_row),
    "Namespace": ((
        _NAME,
        Column("Status", "The status of the namespace."),
        _AGE,
    ), _namespace_row),
    "Event": ((
        Column("Last Seen", "The time the event was last seen."),
        Column("Type", "The type of this event (Normal, Warning)."),
        Column("Reason", "Why the event happened, in CamelCase."),
        Column("Object", "The object this event is about."),
        Column("Subobject", "The part of the object this event is about.", priority=1),
        Column("Source", "The component reporting this event.", priority=1),
        Column("Message", "A human-readable description of the event."),
        Column("First Seen", "The time the event was first seen.", priority=1),
        Column("Count", "The number of times this event has occurred.", priority=1),
        Column("Name", "The name of the event object.", priority=1),
    ), _event_row),
    "Route": ((
        _NAME,
        Column("Host/Port", "The host the route exposes (and how many routers rejected it)."),
        Column("Path", "The path the route matches."),
        Column("Services", "The services the route points to, with their share of requests."),
        Column("Port", "The target port on the endpoints."),
        Column("Termination", "Where TLS ends, and what plain HTTP gets."),
        Column("Wildcard", "The wildcard policy."),
    ), _route_row),
    "Ingress": ((
        _NAME,
        Column("Class", "The IngressClass of the ingress."),
        Column("Hosts", "The hosts of its rules."),
        Column("Address", "The addresses it is served on."),
        Column("Ports", "The ports it is served on."),
        _AGE,
    ), _ingress_row),
    "IngressClass": ((
        _NAME,
        Column("Controller", "Controller that is responsible for handling this class."),
        Column("Parameters", "A reference to a resource with additional parameters."),
        _AGE,
    ), _ingress_class_row),
    "Secret": ((
        _NAME,
        Column("Type", "The type of the secret."),
        Column("Data", "The number of its data items.", type="integer"),
        _AGE,
    ), _secret_row),
}

# a kind with no columns of its own gets the API server's default table
_DEFAULT = ((_NAME, Column("Created At", "The time the object was created.", type="date")),
            lambda obj, now: [_meta(obj).get("name", ""),
                              _meta(obj).get("creationTimestamp", "")])


def columns_for(kind: str) -> tuple[Column, ...]:
    """The columns of ``kind``'s table (the API server's two default ones for other kinds)."""
    return _TABLES.get(kind, _DEFAULT)[0]


def row_cells(kind: str, obj: Obj, now: _dt.datetime | None = None) -> list[Any]:
    """The cells of ``obj``'s row, every column filled."""
    return _TABLES.get(kind, _DEFAULT)[1](obj, now or _dt.datetime.now(_dt.UTC))


def _partial(obj: Obj) -> dict[str, Any]:
    return {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
            "metadata": dict(_meta(obj))}


def table(kind: str, objects: Iterable[Obj], resource_version: str = "",
          include_object: str = "Metadata", api_version: str = "v1",
          now: _dt.datetime | None = None) -> dict[str, Any]:
    """A ``meta.k8s.io/v1`` ``Table`` of ``objects`` (of ``kind``), as the API server gives it.

    :param include_object: what each row carries besides its cells: ``Metadata`` (a
        PartialObjectMetadata, the default), ``Object`` (the whole object) or ``None``.
    """
    now = now or _dt.datetime.now(_dt.UTC)
    columns, cells = _TABLES.get(kind, _DEFAULT)
    rows = []
    for obj in objects:
        row: dict[str, Any] = {"cells": cells(obj, now)}
        if include_object == "Object":
            row["object"] = {"kind": kind, "apiVersion": api_version, **obj}
        elif include_object != "None":
            row["object"] = _partial(obj)
        rows.append(row)
    return {"kind": "Table", "apiVersion": "meta.k8s.io/v1",
            "metadata": {"resourceVersion": resource_version} if resource_version else {},
            "columnDefinitions": [c.definition() for c in columns], "rows": rows}


def render(kind: str, objects: Sequence[Obj], wide: bool = False, namespaces: bool = False,
           now: _dt.datetime | None = None) -> str:
    """The text ``kubectl get`` prints for ``objects``: headers in upper case, ``priority`` 1
    columns only when ``wide``, a NAMESPACE column first when ``namespaces`` (``-A``)."""
    columns, cells = _TABLES.get(kind, _DEFAULT)
    now = now or _dt.datetime.now(_dt.UTC)
    shown = [i for i, c in enumerate(columns) if wide or c.priority == 0]
    lines = [[columns[i].name.upper() for i in shown]]
    for obj in objects:
        row = cells(obj, now)
        lines.append([str(row[i]) for i in shown])
    if namespaces:
        lines[0].insert(0, "NAMESPACE")
        for line, obj in zip(lines[1:], objects, strict=True):
            line.insert(0, str(_meta(obj).get("namespace", "")))
    return tabulate(lines, padding=3)
