"""Kubernetes' validation of Services, Pods, Endpoints, EndpointSlices, Secrets and Ingresses,
and OpenShift's of Routes.

Each ``validate_*`` function takes a defaulted, Kubernetes-shaped dict (validation runs after
defaulting, as in the API server) and returns every problem as a :class:`~lbcore.errors.Cause`,
with the field path, the reason and the message Kubernetes would give
(``pkg/apis/core/validation``, ``apimachinery/pkg/util/validation``). Nothing stops at the first
problem: a user fixes a manifest in one go.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from lbcore.core._selectors import validate_label_key as _selector_key_errors
from lbcore.core._selectors import validate_label_value as _selector_value_errors
from lbcore.errors import Cause, ValidationError

__all__ = [
    "FieldErrors",
    "certificate_key_problems",
    "is_dns1035_label",
    "is_dns1123_label",
    "is_dns1123_subdomain",
    "is_valid_ip",
    "is_valid_port_name",
    "is_valid_port_num",
    "label_key_errors",
    "label_value_errors",
    "raise_if_invalid",
    "validate",
    "validate_endpoint_slice",
    "validate_endpoints",
    "validate_ingress",
    "validate_ingress_class",
    "validate_pod",
    "validate_route",
    "validate_secret",
    "validate_service",
]

SUPPORTED_PROTOCOLS = ("SCTP", "TCP", "UDP")
SERVICE_TYPES = ("ClusterIP", "ExternalName", "LoadBalancer", "NodePort")
SESSION_AFFINITIES = ("ClientIP", "None")
TRAFFIC_POLICIES = ("Cluster", "Local")
IP_FAMILIES = ("IPv4", "IPv6")
IP_FAMILY_POLICIES = ("PreferDualStack", "RequireDualStack", "SingleStack")
ADDRESS_TYPES = ("FQDN", "IPv4", "IPv6")
MAX_CLIENT_IP_AFFINITY_SECONDS = 86400
TOTAL_ANNOTATION_SIZE_LIMIT = 256 * 1024  # bytes of keys and values, as the API server

# --- apimachinery/pkg/util/validation: names, ports, addresses -------------------------------

_DNS1123_LABEL_FMT = "[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS1123_SUBDOMAIN_FMT = _DNS1123_LABEL_FMT + r"(\." + _DNS1123_LABEL_FMT + ")*"
_DNS1035_LABEL_FMT = "[a-z]([-a-z0-9]*[a-z0-9])?"
_DNS1123_LABEL_RE = re.compile(_DNS1123_LABEL_FMT)
_DNS1123_SUBDOMAIN_RE = re.compile(_DNS1123_SUBDOMAIN_FMT)
_DNS1035_LABEL_RE = re.compile(_DNS1035_LABEL_FMT)
_PORT_NAME_CHARSET_RE = re.compile("[-a-z0-9]+")
_PORT_NAME_LETTER_RE = re.compile(".*[a-z].*")


def _regex_error(msg: str, fmt: str, *examples: str) -> str:
    # Kubernetes' RegexError wording, down to its spacing, so messages match kubectl's.
    if not examples:
        return f"{msg} (regex used for validation is '{fmt}')"
    shown = " or ".join(f"'{e}', " for e in examples)
    return f"{msg} (e.g. {shown}regex used for validation is '{fmt}')"


def _max_len(n: int) -> str:
    return f"must be no more than {n} characters"


def is_dns1123_label(value: str) -> list[str]:
    """Problems with ``value`` as an RFC 1123 label (a namespace, a port name); [] if none."""
    errs = []
    if len(value) > 63:
        errs.append(_max_len(63))
    if not _DNS1123_LABEL_RE.fullmatch(value):
        errs.append(_regex_error(
            "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-',"
            " and must start and end with an alphanumeric character",
            _DNS1123_LABEL_FMT, "my-name", "123-abc"))
    return errs


def is_dns1123_subdomain(value: str) -> list[str]:
    """Problems with ``value`` as an RFC 1123 subdomain (a Pod name); [] if none."""
    errs = []
    if len(value) > 253:
        errs.append(_max_len(253))
    if not _DNS1123_SUBDOMAIN_RE.fullmatch(value):
        errs.append(_regex_error(
            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters,"
            " '-' or '.', and must start and end with an alphanumeric character",
            _DNS1123_SUBDOMAIN_FMT, "example.com"))
    return errs


def is_dns1035_label(value: str) -> list[str]:
    """Problems with ``value`` as an RFC 1035 label (a Service name); [] if none."""
    errs = []
    if len(value) > 63:
        errs.append(_max_len(63))
    if not _DNS1035_LABEL_RE.fullmatch(value):
        errs.append(_regex_error(
            "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start"
            " with an alphabetic character, and end with an alphanumeric character",
            _DNS1035_LABEL_FMT, "my-name", "abc-123"))
    return errs


def is_valid_port_num(port: int) -> list[str]:
    """Problems with ``port`` as a port number (1..65535); [] if none."""
    return [] if 1 <= port <= 65535 else ["must be between 1 and 65535, inclusive"]


def is_valid_port_name(name: str) -> list[str]:
    """Problems with ``name`` as an IANA service name (a named targetPort); [] if none."""
    errs = []
    if len(name) > 15:
        errs.append(_max_len(15))
    if not _PORT_NAME_CHARSET_RE.fullmatch(name):
        errs.append("must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)")
    if not _PORT_NAME_LETTER_RE.fullmatch(name):
        errs.append("must contain at least one letter (a-z)")
    if "--" in name:
        errs.append("must not contain consecutive hyphens")
    if name and (name[0] == "-" or name[-1] == "-"):
        errs.append("must not begin or end with a hyphen")
    return errs


# a dotted-quad IPv4 address as ipaddress takes it (ASCII digits, no leading zero, each part
# at most 255): matched without building an address (a good part of the cost of a pod's
# validation); anything else is asked of ipaddress
_IPV4_OCTET = "(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9][0-9]|[0-9])"
_IPV4_RE = re.compile(rf"{_IPV4_OCTET}(?:\.{_IPV4_OCTET}){{3}}")


def is_valid_ip(value: str) -> list[str]:
    """Problems with ``value`` as an IPv4 or IPv6 address; [] if none."""
    if isinstance(value, str) and _IPV4_RE.fullmatch(value):
        return []
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return ["must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)"]
    return []


def label_key_errors(key: str) -> list[str]:
    """Problems with ``key`` as a label key (a qualified name); [] if none."""
    return list(_selector_key_errors(key))


def label_value_errors(value: str) -> list[str]:
    """Problems with ``value`` as a label value; [] if none."""
    return list(_selector_value_errors(value))


# --- field errors ----------------------------------------------------------------------------


def _show(value: Any) -> str:
    # field.Error's value formatting: strings quoted, numbers bare, lists as Go prints them.
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return "[" + ",".join(_show(v) for v in value) + "]"
    return str(value)


class FieldErrors:
    """Collects causes with Kubernetes' field.Error wording."""

    def __init__(self) -> None:
        self.causes: list[Cause] = []

    def invalid(self, path: str, value: Any, detail: str) -> None:
        msg = f"Invalid value: {_show(value)}"
        self.causes.append(Cause(path, "FieldValueInvalid", f"{msg}: {detail}" if detail else msg))

    def required(self, path: str, detail: str = "") -> None:
        msg = "Required value" + (f": {detail}" if detail else "")
        self.causes.append(Cause(path, "FieldValueRequired", msg))

    def duplicate(self, path: str, value: Any) -> None:
        self.causes.append(Cause(path, "FieldValueDuplicate", f"Duplicate value: {_show(value)}"))

    def not_supported(self, path: str, value: Any, supported: Iterable[str]) -> None:
        allowed = ", ".join(_show(s) for s in supported)
        self.causes.append(Cause(path, "FieldValueNotSupported",
                                 f"Unsupported value: {_show(value)}: supported values: {allowed}"))

    def forbidden(self, path: str, detail: str) -> None:
        self.causes.append(Cause(path, "FieldValueForbidden", f"Forbidden: {detail}"))

    def each(self, path: str, value: Any, problems: Iterable[str]) -> None:
        for p in problems:
            self.invalid(path, value, p)


def raise_if_invalid(kind: str, name: str, causes: list[Cause]) -> None:
    """Raise :class:`~lbcore.errors.ValidationError` when ``causes`` is not empty."""
    if causes:
        raise ValidationError(kind, name, causes)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _validate_metadata(errs: FieldErrors, meta: Any, name_rule: Any,
                       namespaced: bool = True) -> None:
    if not isinstance(meta, Mapping):
        errs.required("metadata", "")
        return
    name = meta.get("name")
    if not name:
        errs.required("metadata.name", "name or generateName is required")
    elif not isinstance(name, str):
        errs.invalid("metadata.name", name, "must be a string")
    else:
        errs.each("metadata.name", name, name_rule(name))
    ns = meta.get("namespace")
    if not namespaced:
        if ns:
            errs.forbidden("metadata.namespace", "not allowed on this type")
    elif not isinstance(ns, str) or not ns:
        errs.required("metadata.namespace", "")
    else:
        errs.each("metadata.namespace", ns, is_dns1123_label(ns))
    _validate_labels(errs, meta.get("labels"), "metadata.labels")
    ann = meta.get("annotations")
    if ann is not None and not isinstance(ann, Mapping):
        errs.invalid("metadata.annotations", ann, "must be a map of strings")
    elif ann:
        total = 0
        for k, v in ann.items():
            if not isinstance(k, str) or not isinstance(v, str):
                errs.invalid(f"metadata.annotations[{k}]", v, "must be a string")
            else:
                errs.each("metadata.annotations", k, label_key_errors(k))
                total += len(k.encode()) + len(v.encode())
        if total > TOTAL_ANNOTATION_SIZE_LIMIT:  # the API server's limit, on keys and values
            errs.causes.append(Cause("metadata.annotations", "FieldValueTooLong",
                                     f"Too long: must have at most {TOTAL_ANNOTATION_SIZE_LIMIT} bytes"))


def _validate_labels(errs: FieldErrors, labels: Any, path: str) -> None:
    if labels is None:
        return
    if not isinstance(labels, Mapping):
        errs.invalid(path, labels, "must be a map of strings")
        return
    for k, v in labels.items():
        if not isinstance(k, str):
            errs.invalid(path, k, "must be a string")
            continue
        errs.each(path, k, label_key_errors(k))
        if not isinstance(v, str):
            errs.invalid(f"{path}[{k}]", v, "must be a string")
        else:
            errs.each(f"{path}[{k}]", v, label_value_errors(v))


# --- Service ---------------------------------------------------------------------------------


def validate_service(svc: Mapping[str, Any]) -> list[Cause]:
    """Every problem with a defaulted Service, as Kubernetes' ValidateService reports it."""
    errs = FieldErrors()
    _validate_metadata(errs, svc.get("metadata"), is_dns1035_label)
    spec = svc.get("spec")
    if not isinstance(spec, Mapping):
        errs.required("spec", "")
        return errs.causes
    stype = spec.get("type")
    if stype not in SERVICE_TYPES:
        errs.not_supported("spec.type", stype, SERVICE_TYPES)
    headless = spec.get("clusterIP") == "None"
    ports = spec.get("ports") or []
    if not isinstance(ports, list):
        errs.invalid("spec.ports", ports, "must be a list")
        ports = []
    if stype == "ExternalName":
        name = spec.get("externalName")
        if not name:
            errs.required("spec.externalName", "")
        elif isinstance(name, str):
            errs.each("spec.externalName", name, is_dns1123_subdomain(name.rstrip(".")))
    elif not ports and not headless:
        errs.required("spec.ports", "")
    _validate_service_ports(errs, ports, stype, headless)
    _validate_cluster_ips(errs, spec, stype)
    _validate_labels(errs, spec.get("selector"), "spec.selector")
    _validate_affinity(errs, spec)
    for i, ip in enumerate(spec.get("externalIPs") or []):
        errs.each(f"spec.externalIPs[{i}]", ip, is_valid_ip(ip) if isinstance(ip, str) else
                  ["must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)"])
    lb_ip = spec.get("loadBalancerIP")
    if lb_ip:
        errs.each("spec.loadBalancerIP", lb_ip, is_valid_ip(str(lb_ip)))
    etp = spec.get("externalTrafficPolicy")
    if etp is not None:
        if stype not in ("NodePort", "LoadBalancer") and not spec.get("externalIPs"):
            errs.invalid("spec.externalTrafficPolicy", etp,
                         "may only be set for externally-accessible services")
        elif etp not in TRAFFIC_POLICIES:
            errs.not_supported("spec.externalTrafficPolicy", etp, TRAFFIC_POLICIES)
    itp = spec.get("internalTrafficPolicy")
    if itp is not None and itp not in TRAFFIC_POLICIES:
        errs.not_supported("spec.internalTrafficPolicy", itp, TRAFFIC_POLICIES)
    pna = spec.get("publishNotReadyAddresses")
    if pna is not None and not isinstance(pna, bool):
        errs.invalid("spec.publishNotReadyAddresses", pna, "must be a boolean")
    return errs.causes


def _validate_service_ports(errs: FieldErrors, ports: list[Any], stype: Any,
                            headless: bool) -> None:
    require_name = len(ports) > 1
    names: set[str] = set()
    seen_ports: set[tuple[Any, Any]] = set()
    node_ports: dict[Any, Any] = {}  # nodePort -> protocol that has it
    for i, sp in enumerate(ports):
        path = f"spec.ports[{i}]"
        if not isinstance(sp, Mapping):
            errs.invalid(path, sp, "must be an object")
            continue
        name = sp.get("name") or ""
        if require_name and not name:
            errs.required(f"{path}.name", "")
        elif name:
            if not isinstance(name, str):
                errs.invalid(f"{path}.name", name, "must be a string")
            else:
                errs.each(f"{path}.name", name, is_dns1123_label(name))
                if name in names:
                    errs.duplicate(f"{path}.name", name)
                names.add(name)
        port = sp.get("port")
        if port is None:
            errs.required(f"{path}.port", "")
        elif not _is_int(port):
            errs.invalid(f"{path}.port", port, "must be an integer")
        else:
            errs.each(f"{path}.port", port, is_valid_port_num(port))
        proto = sp.get("protocol")
        if not proto:
            errs.required(f"{path}.protocol", "")
        elif proto not in SUPPORTED_PROTOCOLS:
            errs.not_supported(f"{path}.protocol", proto, SUPPORTED_PROTOCOLS)
        key = (port, proto)
        if key in seen_ports:
            errs.duplicate(path, f"{port}/{proto}")
        seen_ports.add(key)
        if not (sp.get("targetPort") == port and isinstance(port, int)
                and is_valid_port_num(port)):
            # a targetPort defaulted from an invalid port is reported once, on the port
            _validate_target_port(errs, sp.get("targetPort"), f"{path}.targetPort")
        node_port = sp.get("nodePort")
        if node_port not in (None, 0):
            npath = f"{path}.nodePort"
            if stype == "ClusterIP":
                errs.forbidden(npath, "may not be used when `type` is 'ClusterIP'")
            elif stype not in ("NodePort", "LoadBalancer"):
                errs.forbidden(npath, f"may not be used when `type` is '{stype}'")
            elif not _is_int(node_port):
                errs.invalid(npath, node_port, "must be an integer")
            else:
                errs.each(npath, node_port, is_valid_port_num(node_port))
                # one node port may serve TCP and UDP of a service, never twice the same protocol
                if node_ports.get((node_port, proto)):
                    errs.duplicate(npath, node_port)
                node_ports[(node_port, proto)] = True


def _validate_target_port(errs: FieldErrors, target: Any, path: str) -> None:
    if target is None or target == "" or target == 0:
        errs.required(path, "")
    elif _is_int(target):
        errs.each(path, target, is_valid_port_num(target))
    elif isinstance(target, str):
        if target.isdigit():
            errs.each(path, target, is_valid_port_num(int(target)))
        else:
            errs.each(path, target, is_valid_port_name(target))
    else:
        errs.invalid(path, target, "must be a port number or an IANA service name")


def _validate_cluster_ips(errs: FieldErrors, spec: Mapping[str, Any], stype: Any) -> None:
    ips = spec.get("clusterIPs") or []
    cluster_ip = spec.get("clusterIP")
    if cluster_ip and ips and ips[0] != cluster_ip:
        errs.invalid("spec.clusterIPs", ips,
                     "element [0] must match clusterIP")
    if stype == "ExternalName":
        if cluster_ip:
            errs.forbidden("spec.clusterIPs", "may not be set for ExternalName services")
        return
    for i, ip in enumerate(ips):
        path = f"spec.clusterIPs[{i}]"
        if ip == "None":
            if i > 0 or len(ips) > 1:
                errs.invalid(path, ip, "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)")
            elif stype in ("NodePort", "LoadBalancer"):
                errs.invalid(path, ip, f"may not be set to 'None' for {stype} services")
            continue
        errs.each(path, ip, is_valid_ip(ip) if isinstance(ip, str) else
                  ["must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)"])
    families = spec.get("ipFamilies") or []
    for i, fam in enumerate(families):
        if fam not in IP_FAMILIES:
            errs.not_supported(f"spec.ipFamilies[{i}]", fam, IP_FAMILIES)
    if len(families) == 2 and families[0] == families[1]:
        errs.duplicate("spec.ipFamilies[1]", families[1])
    for i, ip in enumerate(ips):
        if i < len(families) and ip != "None" and not is_valid_ip(str(ip)):
            actual = "IPv6" if ":" in str(ip) else "IPv4"
            if families[i] in IP_FAMILIES and families[i] != actual:
                errs.invalid(f"spec.clusterIPs[{i}]", ip,
                             f"expected an {families[i]} value as indicated by `ipFamilies[{i}]`")
    policy = spec.get("ipFamilyPolicy")
    if policy is not None and policy not in IP_FAMILY_POLICIES:
        errs.not_supported("spec.ipFamilyPolicy", policy, IP_FAMILY_POLICIES)
    if policy == "SingleStack" and len(ips) > 1:
        errs.invalid("spec.clusterIPs", ips,
                     "may not have more than one IP when ipFamilyPolicy is SingleStack")


def _validate_affinity(errs: FieldErrors, spec: Mapping[str, Any]) -> None:
    affinity = spec.get("sessionAffinity")
    config = spec.get("sessionAffinityConfig")
    if affinity not in SESSION_AFFINITIES:
        errs.not_supported("spec.sessionAffinity", affinity, SESSION_AFFINITIES)
        return
    if affinity == "None":
        if config:
            errs.invalid("spec.sessionAffinityConfig", config,
                         "must not be set when session affinity is None")
        return
    path = "spec.sessionAffinityConfig.clientIP.timeoutSeconds"
    timeout = ((config or {}).get("clientIP") or {}).get("timeoutSeconds")
    if timeout is None:
        errs.required(path, "when session affinity type is ClientIP")
    elif not _is_int(timeout) or not 0 < timeout <= MAX_CLIENT_IP_AFFINITY_SECONDS:
        errs.invalid(path, timeout,
                     f"must be greater than 0 and less than {MAX_CLIENT_IP_AFFINITY_SECONDS}")


# --- Pod -------------------------------------------------------------------------------------


def validate_pod(pod: Mapping[str, Any]) -> list[Cause]:
    """Every problem with a defaulted Pod, in the parts that load balancing reads."""
    errs = FieldErrors()
    _validate_metadata(errs, pod.get("metadata"), is_dns1123_subdomain)
    spec = pod.get("spec") or {}
    if not isinstance(spec, Mapping):
        errs.invalid("spec", spec, "must be an object")
        spec = {}
    node = spec.get("nodeName")
    if node:
        errs.each("spec.nodeName", node, is_dns1123_subdomain(str(node)))
    for ci, container in enumerate(spec.get("containers") or []):
        cpath = f"spec.containers[{ci}]"
        names: set[str] = set()
        for pi, cp in enumerate((container or {}).get("ports") or []):
            path = f"{cpath}.ports[{pi}]"
            name = cp.get("name")
            if name:
                errs.each(f"{path}.name", name, is_valid_port_name(str(name)))
                if name in names:
                    errs.duplicate(f"{path}.name", name)
                names.add(name)
            port = cp.get("containerPort")
            if port is None:
                errs.required(f"{path}.containerPort", "")
            elif not _is_int(port):
                errs.invalid(f"{path}.containerPort", port, "must be an integer")
            else:
                errs.each(f"{path}.containerPort", port, is_valid_port_num(port))
            proto = cp.get("protocol")
            if proto not in SUPPORTED_PROTOCOLS:
                errs.not_supported(f"{path}.protocol", proto, SUPPORTED_PROTOCOLS)
    status = pod.get("status") or {}
    pod_ip = status.get("podIP")
    if pod_ip:
        errs.each("status.podIP", pod_ip, is_valid_ip(str(pod_ip)))
    for i, entry in enumerate(status.get("podIPs") or []):
        ip = (entry or {}).get("ip") if isinstance(entry, Mapping) else entry
        if i == 0 and ip == pod_ip:
            continue  # defaulted from podIP, already checked
        errs.each(f"status.podIPs[{i}].ip", ip, is_valid_ip(str(ip)))
    ips = [(e or {}).get("ip") for e in status.get("podIPs") or [] if isinstance(e, Mapping)]
    if pod_ip and ips and ips[0] != pod_ip:
        errs.invalid("status.podIPs[0].ip", ips[0], "must match status.podIP")
    return errs.causes


# --- EndpointSlice and Endpoints -------------------------------------------------------------


def _validate_endpoint_ports(errs: FieldErrors, ports: Any, path: str) -> None:
    names: set[str] = set()
    for i, p in enumerate(ports or []):
        ppath = f"{path}[{i}]"
        name = p.get("name") or ""
        if name:
            errs.each(f"{ppath}.name", name, is_dns1123_label(str(name)))
        if name in names:
            errs.duplicate(f"{ppath}.name", name)
        names.add(name)
        port = p.get("port")
        if port is not None:
            if not _is_int(port):
                errs.invalid(f"{ppath}.port", port, "must be an integer")
            else:
                errs.each(f"{ppath}.port", port, is_valid_port_num(port))
        proto = p.get("protocol")
        if proto not in SUPPORTED_PROTOCOLS:
            errs.not_supported(f"{ppath}.protocol", proto, SUPPORTED_PROTOCOLS)


def validate_endpoint_slice(eps: Mapping[str, Any]) -> list[Cause]:
    """Every problem with a defaulted EndpointSlice (discovery.k8s.io/v1)."""
    errs = FieldErrors()
    _validate_metadata(errs, eps.get("metadata"), is_dns1123_subdomain)
    address_type = eps.get("addressType")
    if address_type not in ADDRESS_TYPES:
        errs.not_supported("addressType", address_type, ADDRESS_TYPES)
    for i, ep in enumerate(eps.get("endpoints") or []):
        addresses = (ep or {}).get("addresses") or []
        if not addresses:
            errs.required(f"endpoints[{i}].addresses", "must contain at least 1 address")
        for j, addr in enumerate(addresses):
            if address_type in ("IPv4", "IPv6"):
                errs.each(f"endpoints[{i}].addresses[{j}]", addr, is_valid_ip(str(addr)))
                if not is_valid_ip(str(addr)) and (":" in str(addr)) != (address_type == "IPv6"):
                    errs.invalid(f"endpoints[{i}].addresses[{j}]", addr,
                                 f"must be an {address_type} address")
    _validate_endpoint_ports(errs, eps.get("ports"), "ports")
    return errs.causes


def validate_endpoints(ep: Mapping[str, Any]) -> list[Cause]:
    """Every problem with a defaulted Endpoints (v1)."""
    errs = FieldErrors()
    _validate_metadata(errs, ep.get("metadata"), is_dns1123_subdomain)
    for i, subset in enumerate(ep.get("subsets") or []):
        for field in ("addresses", "notReadyAddresses"):
            for j, addr in enumerate((subset or {}).get(field) or []):
                ip = (addr or {}).get("ip")
                errs.each(f"subsets[{i}].{field}[{j}].ip", ip, is_valid_ip(str(ip)))
        _validate_endpoint_ports(errs, (subset or {}).get("ports"), f"subsets[{i}].ports")
    return errs.causes


# --- certificates (Route TLS, Secrets of type kubernetes.io/tls) ----------------------------


def _pem_certificates(text: str) -> list[Any]:
    """The certificates of a PEM text; ValueError (with the parser's words) when there is none
    or one does not parse."""
    from cryptography import x509  # only a write that carries certificates needs it

    if "-----BEGIN" not in text:
        raise ValueError("data does not contain any valid RSA or ECDSA certificates")
    return list(x509.load_pem_x509_certificates(text.encode()))


def _pem_private_key(text: str) -> Any:
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    if "PRIVATE KEY-----" not in text:
        raise ValueError("no private key found in the PEM data")
    return load_pem_private_key(text.encode(), password=None)


def _public_der(key: Any) -> bytes:
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    return bytes(key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo))


def certificate_key_problems(certificate: str, key: str) -> tuple[str | None, str | None]:
    """(what is wrong with the certificate chain, what is wrong with the key), None for each
    part that is right: both parse, and the key is the private half of the first (leaf)
    certificate's public key, as Go's ``tls.X509KeyPair`` requires."""
    try:
        leaf = _pem_certificates(certificate)[0]
    except ValueError as exc:
        return f"failed to parse certificate: {exc}", None
    try:
        private = _pem_private_key(key)
    except (ValueError, TypeError) as exc:
        return None, f"failed to parse private key: {exc}"
    if _public_der(leaf.public_key()) != _public_der(private.public_key()):
        return None, "tls: private key does not match public key"
    return None, None


def _check_pem_certificates(errs: FieldErrors, path: str, text: str, shown: str,
                            what: str) -> None:
    try:
        _pem_certificates(text)
    except ValueError as exc:
        errs.invalid(path, shown, f"failed to parse {what}: {exc}")


# --- Secret ----------------------------------------------------------------------------------

_CONFIG_KEY_RE = re.compile(r"[-._a-zA-Z0-9]+")
MAX_SECRET_BYTES = 1024 * 1024  # the API server's limit on a Secret's data


def validate_secret(secret: Mapping[str, Any]) -> list[Cause]:
    """Every problem with a defaulted Secret (v1): its keys, its base64 values, its size, and
    for ``kubernetes.io/tls`` the ``tls.crt`` and ``tls.key`` it needs, which must parse and
    match (stricter than the API server, which only asks for the keys: the route frontend
    serves them)."""
    errs = FieldErrors()
    _validate_metadata(errs, secret.get("metadata"), is_dns1123_subdomain)
    data = secret.get("data") or {}
    if not isinstance(data, Mapping):
        errs.invalid("data", data, "must be a map of base64 strings")
        data = {}
    decoded: dict[str, bytes] = {}
    total = 0
    for key, value in data.items():
        path = f"data[{key}]"
        if not isinstance(key, str) or not _CONFIG_KEY_RE.fullmatch(key) or key in (".", ".."):
            errs.invalid(path, key, "a valid config key must consist of alphanumeric "
                         "characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or "
                         "'key-name', regex used for validation is '[-._a-zA-Z0-9]+')")
            continue
        try:
            decoded[key] = base64.b64decode(str(value), validate=True)
        except (binascii.Error, ValueError):
            errs.invalid(path, "redacted secret data", "must be base64 encoded")
            continue
        total += len(decoded[key])
    if total > MAX_SECRET_BYTES:
        errs.causes.append(Cause("data", "FieldValueTooLong",
                                 f"Too long: must have at most {MAX_SECRET_BYTES} bytes"))
    if secret.get("type") == "kubernetes.io/tls":
        for key in ("tls.crt", "tls.key"):
            if key not in data:
                errs.required(f"data[{key}]", "")
        crt, pem_key = decoded.get("tls.crt"), decoded.get("tls.key")
        if crt and pem_key:
            cert_problem, key_problem = certificate_key_problems(
                crt.decode(errors="replace"), pem_key.decode(errors="replace"))
            if cert_problem:
                errs.invalid("data[tls.crt]", "redacted certificate data", cert_problem)
            if key_problem:
                errs.invalid("data[tls.key]", "redacted key data", key_problem)
    return errs.causes


# --- Ingress (networking.k8s.io/v1) ----------------------------------------------------------

PATH_TYPES = ("Exact", "ImplementationSpecific", "Prefix")


def _wildcard_host_problems(host: str) -> list[str]:
    """A host of an Ingress rule or TLS entry: a DNS subdomain, ``*.`` allowed in front, never
    an IP address."""
    if not is_valid_ip(host):
        return ["must be a DNS name, not an IP address"]
    if host.startswith("*."):
        problems = is_dns1123_subdomain(host[2:])
        return [p.replace("a lowercase RFC 1123 subdomain", "a wildcard DNS-1123 subdomain")
                for p in problems]
    return is_dns1123_subdomain(host)


def _validate_ingress_backend(errs: FieldErrors, backend: Any, path: str) -> None:
    if not isinstance(backend, Mapping):
        errs.invalid(path, backend, "must be an object")
        return
    service, resource = backend.get("service"), backend.get("resource")
    if service is not None and resource is not None:
        errs.invalid(path, "", "cannot set both service and resource backends")
        return
    if service is None:
        if resource is None:
            errs.invalid(path, "", "resource or service must be specified")
        return  # a resource backend is stored; the route frontend serves services only
    if not isinstance(service, Mapping):
        errs.invalid(f"{path}.service", service, "must be an object")
        return
    name = service.get("name")
    if not name:
        errs.required(f"{path}.service.name", "")
    elif isinstance(name, str):
        errs.each(f"{path}.service.name", name, is_dns1035_label(name))
    port = service.get("port")
    ppath = f"{path}.service.port"
    if not isinstance(port, Mapping) or (not port.get("name") and port.get("number") is None):
        errs.required(ppath, "port name or number is required")
        return
    if port.get("name") and port.get("number") is not None:
        errs.invalid(ppath, port.get("name"), "cannot set both port name & port number")
    elif port.get("name"):
        errs.each(f"{ppath}.name", port["name"], is_valid_port_name(str(port["name"])))
    elif not _is_int(port["number"]):
        errs.invalid(f"{ppath}.number", port["number"], "must be an integer")
    else:
        errs.each(f"{ppath}.number", port["number"], is_valid_port_num(port["number"]))


def validate_ingress(ing: Mapping[str, Any]) -> list[Cause]:
    """Every problem with a defaulted Ingress, as Kubernetes' ValidateIngress reports it."""
    errs = FieldErrors()
    _validate_metadata(errs, ing.get("metadata"), is_dns1123_subdomain)
    spec = ing.get("spec")
    if not isinstance(spec, Mapping):
        errs.required("spec", "")
        return errs.causes
    class_name = spec.get("ingressClassName")
    if class_name is not None:
        errs.each("spec.ingressClassName", class_name, is_dns1123_subdomain(str(class_name)))
    rules = spec.get("rules") or []
    if not isinstance(rules, list):
        errs.invalid("spec.rules", rules, "must be a list")
        rules = []
    if spec.get("defaultBackend") is None and not rules:
        errs.invalid("spec.rules", [], "either `defaultBackend` or `rules` must be specified")
    if spec.get("defaultBackend") is not None:
        _validate_ingress_backend(errs, spec["defaultBackend"], "spec.defaultBackend")
    for i, rule in enumerate(rules):
        rpath = f"spec.rules[{i}]"
        if not isinstance(rule, Mapping):
            errs.invalid(rpath, rule, "must be an object")
            continue
        host = rule.get("host")
        if host:
            errs.each(f"{rpath}.host", host, _wildcard_host_problems(str(host)))
        http = rule.get("http")
        if http is None:
            continue
        paths = (http or {}).get("paths") if isinstance(http, Mapping) else None
        if not paths:
            errs.required(f"{rpath}.http.paths", "")
            continue
        for j, entry in enumerate(paths):
            ppath = f"{rpath}.http.paths[{j}]"
            if not isinstance(entry, Mapping):
                errs.invalid(ppath, entry, "must be an object")
                continue
            path_type = entry.get("pathType")
            if not path_type:
                errs.required(f"{ppath}.pathType", "pathType must be specified")
            elif path_type not in PATH_TYPES:
                errs.not_supported(f"{ppath}.pathType", path_type, PATH_TYPES)
            path = entry.get("path")
            if path_type in ("Exact", "Prefix") and not str(path or "").startswith("/"):
                errs.invalid(f"{ppath}.path", path or "", "must be an absolute path")
            elif path and not str(path).startswith("/"):
                errs.invalid(f"{ppath}.path", path, "must be an absolute path")
            _validate_ingress_backend(errs, entry.get("backend"), f"{ppath}.backend")
    for i, tls in enumerate(spec.get("tls") or []):
        tpath = f"spec.tls[{i}]"
        if not isinstance(tls, Mapping):
            errs.invalid(tpath, tls, "must be an object")
            continue
        for j, host in enumerate(tls.get("hosts") or []):
            errs.each(f"{tpath}.hosts[{j}]", host, _wildcard_host_problems(str(host)))
        secret = tls.get("secretName")
        if secret:
            errs.each(f"{tpath}.secretName", secret, is_dns1123_subdomain(str(secret)))
    return errs.causes


# --- Route (route.openshift.io/v1) -----------------------------------------------------------

TLS_TERMINATIONS = ("edge", "passthrough", "reencrypt")
INSECURE_EDGE_POLICIES = ("None", "Allow", "Redirect")  # in OpenShift's order
WILDCARD_POLICIES = ("None", "Subdomain")
MAX_ALTERNATE_BACKENDS = 3
MAX_ROUTE_WEIGHT = 256

_REDACTED = {  # what the API server shows instead of PEM data, per field
    "certificate": "redacted certificate data",
    "key": "redacted key data",
    "caCertificate": "redacted ca certificate data",
    "destinationCACertificate": "redacted destination ca certificate data",
}


def _validate_route_backend(errs: FieldErrors, ref: Any, path: str) -> None:
    if not isinstance(ref, Mapping):
        errs.required(path, "")
        return
    if ref.get("kind") != "Service":
        errs.invalid(f"{path}.kind", ref.get("kind"), "must reference a Service")
    name = ref.get("name")
    if not name:
        errs.required(f"{path}.name", "")
    elif not isinstance(name, str):
        errs.invalid(f"{path}.name", name, "must be a string")
    else:
        errs.each(f"{path}.name", name, is_dns1035_label(name))
    weight = ref.get("weight")
    if not isinstance(weight, int) or isinstance(weight, bool) \
            or not 0 <= weight <= MAX_ROUTE_WEIGHT:
        errs.invalid(f"{path}.weight", weight,
                     f"weight must be an integer between 0 and {MAX_ROUTE_WEIGHT}")


def _validate_route_host(errs: FieldErrors, spec: Mapping[str, Any]) -> None:
    host = spec.get("host")
    if not host:
        errs.required("spec.host", "lbcore generates no host names: give the route one")
        return
    if not isinstance(host, str):
        errs.invalid("spec.host", host, "must be a string")
        return
    problems = is_dns1123_subdomain(host)
    if problems:
        errs.invalid("spec.host", host, "host must conform to DNS 1123 subdomain conventions")
        errs.each("spec.host", host, problems)
    for label in host.split("."):
        errs.each("spec.host", host, [p for p in is_dns1123_label(label)
                                      if p.startswith("must be no more than")])
    if spec.get("wildcardPolicy") == "Subdomain" and "." not in host:
        errs.invalid("spec.wildcardPolicy", "Subdomain",
                     f"host {host!r} has no subdomain for a wildcard")


def _validate_route_tls(errs: FieldErrors, tls: Any) -> None:
    if not isinstance(tls, Mapping):
        errs.invalid("spec.tls", tls, "must be an object")
        return
    termination = tls.get("termination")
    texts = {k: tls.get(k) or "" for k in _REDACTED}
    for key, text in texts.items():
        if not isinstance(text, str):
            errs.invalid(f"spec.tls.{key}", _REDACTED[key], "must be a PEM string")
            texts[key] = ""
    if termination not in TLS_TERMINATIONS:
        errs.not_supported("spec.tls.termination", termination, TLS_TERMINATIONS)
    elif termination == "passthrough":
        for key, text in texts.items():
            if text:
                errs.invalid(f"spec.tls.{key}", _REDACTED[key],
                             "passthrough termination does not support certificates")
    elif termination == "edge" and texts["destinationCACertificate"]:
        errs.invalid("spec.tls.destinationCACertificate", _REDACTED["destinationCACertificate"],
                     "edge termination does not support destination certificates")
    policy = tls.get("insecureEdgeTerminationPolicy")
    if policy:
        allowed = ("None", "Redirect") if termination == "passthrough" else INSECURE_EDGE_POLICIES
        if policy not in allowed:
            errs.invalid("spec.tls.insecureEdgeTerminationPolicy", policy,
                         "invalid value for InsecureEdgeTerminationPolicy option, acceptable "
                         f"values are {', '.join(allowed[:-1])}, or {allowed[-1]}, or empty"
                         if len(allowed) == 3 else
                         "invalid value for InsecureEdgeTerminationPolicy option, acceptable "
                         f"values are {allowed[0]}, {allowed[1]}, or empty")
    if termination == "passthrough":
        return
    if texts["caCertificate"]:
        _check_pem_certificates(errs, "spec.tls.caCertificate", texts["caCertificate"],
                                _REDACTED["caCertificate"], "CA certificate")
    if texts["destinationCACertificate"]:
        _check_pem_certificates(errs, "spec.tls.destinationCACertificate",
                                texts["destinationCACertificate"],
                                _REDACTED["destinationCACertificate"], "destination CA certificate")
    certificate, key = texts["certificate"], texts["key"]
    if certificate and not key:
        errs.invalid("spec.tls.key", "", "no key specified")
    elif key and not certificate:
        errs.required("spec.tls.certificate", "a key needs the certificate it belongs to")
    if certificate:
        cert_problem, key_problem = certificate_key_problems(certificate, key) if key else (
            _certificate_problem(certificate), None)
        if cert_problem:
            errs.invalid("spec.tls.certificate", _REDACTED["certificate"], cert_problem)
        if key_problem:
            errs.invalid("spec.tls.key", _REDACTED["key"], key_problem)


def _certificate_problem(certificate: str) -> str | None:
    try:
        _pem_certificates(certificate)
    except ValueError as exc:
        return f"failed to parse certificate: {exc}"
    return None


def validate_route(route: Mapping[str, Any]) -> list[Cause]:
    """Every problem with a defaulted Route, in the words of OpenShift's route validation
    (openshift-apiserver and the router's extended validation of certificates)."""
    errs = FieldErrors()
    _validate_metadata(errs, route.get("metadata"), is_dns1123_subdomain)
    spec = route.get("spec")
    if not isinstance(spec, Mapping):
        errs.required("spec", "")
        return errs.causes
    _validate_route_host(errs, spec)
    path = spec.get("path")
    tls = spec.get("tls")
    if path:
        if not isinstance(path, str) or not path.startswith("/"):
            errs.invalid("spec.path", path, "path must begin with /")
        elif isinstance(tls, Mapping) and tls.get("termination") == "passthrough":
            errs.invalid("spec.path", path, "passthrough termination does not support paths")
    _validate_route_backend(errs, spec.get("to"), "spec.to")
    alternates = spec.get("alternateBackends") or []
    if not isinstance(alternates, list):
        errs.invalid("spec.alternateBackends", alternates, "must be a list")
        alternates = []
    if len(alternates) > MAX_ALTERNATE_BACKENDS:
        errs.causes.append(Cause("spec.alternateBackends", "FieldValueTooMany",
                                 f"Too many: {len(alternates)}: must have at most "
                                 f"{MAX_ALTERNATE_BACKENDS} items"))
    seen = {(spec.get("to") or {}).get("name")} if isinstance(spec.get("to"), Mapping) else set()
    for i, ref in enumerate(alternates):
        _validate_route_backend(errs, ref, f"spec.alternateBackends[{i}]")
        name = ref.get("name") if isinstance(ref, Mapping) else None
        if name and name in seen:
            errs.duplicate(f"spec.alternateBackends[{i}].name", name)
        seen.add(name)
    port = spec.get("port")
    if port is not None:
        target = port.get("targetPort") if isinstance(port, Mapping) else None
        if target in (None, "", 0):
            errs.required("spec.port.targetPort", "")
        elif _is_int(target):
            errs.each("spec.port.targetPort", target, is_valid_port_num(target))
        elif isinstance(target, str):
            errs.each("spec.port.targetPort", target, is_valid_port_name(target))
        else:
            errs.invalid("spec.port.targetPort", target, "must be a port number or name")
    policy = spec.get("wildcardPolicy")
    if policy not in WILDCARD_POLICIES:
        errs.not_supported("spec.wildcardPolicy", policy, WILDCARD_POLICIES)
    if tls is not None:
        _validate_route_tls(errs, tls)
    return errs.causes


# --- Namespace and Event -----------------------------------------------------------------------

EVENT_TYPES = ("Normal", "Warning")


def validate_ingress_class(cls: Mapping[str, Any]) -> list[Cause]:
    """Every problem with a defaulted IngressClass (ValidateIngressClass): a DNS subdomain for
    a name, no namespace, a ``spec.controller`` that is a domain-prefixed path."""
    errs = FieldErrors()
    _validate_metadata(errs, cls.get("metadata"), is_dns1123_subdomain, namespaced=False)
    spec = cls.get("spec")
    controller = spec.get("controller") if isinstance(spec, Mapping) else None
    if not controller:
        errs.required("spec.controller", "")
    elif not isinstance(controller, str):
        errs.invalid("spec.controller", controller, "must be a string")
    else:
        if len(controller) > 250:
            errs.causes.append(Cause("spec.controller", "FieldValueTooLong",
                                     "Too long: must have at most 250 bytes"))
        domain, slash, path = controller.partition("/")
        if not slash or not path or is_dns1123_subdomain(domain):
            errs.invalid("spec.controller", controller,
                         'must be a domain-prefixed path (such as "acme.io/foo")')
    return errs.causes


def validate_namespace(ns: Mapping[str, Any]) -> list[Cause]:
    """Every problem with a defaulted Namespace (ValidateNamespace): a DNS label for a name,
    no namespace of its own."""
    errs = FieldErrors()
    _validate_metadata(errs, ns.get("metadata"), is_dns1123_label, namespaced=False)
    finalizers = (ns.get("spec") or {}).get("finalizers")
    if finalizers is not None and not (
            isinstance(finalizers, list) and all(isinstance(f, str) for f in finalizers)):
        errs.invalid("spec.finalizers", finalizers, "must be a list of strings")
    return errs.causes


def validate_event(ev: Mapping[str, Any]) -> list[Cause]:
    """Every problem with a defaulted core/v1 Event (ValidateEventCreate): the object it is
    about, in the event's own namespace, and a type of Normal or Warning."""
    errs = FieldErrors()
    meta = ev.get("metadata")
    _validate_metadata(errs, meta, is_dns1123_subdomain)
    involved = ev.get("involvedObject")
    if not isinstance(involved, Mapping) or not involved.get("kind"):
        errs.required("involvedObject.kind", "")
    elif isinstance(meta, Mapping) and involved.get("namespace") not in (
            None, "", meta.get("namespace")):
        errs.invalid("involvedObject.namespace", involved.get("namespace"),
                     "does not match event.namespace")
    if ev.get("type") not in EVENT_TYPES:
        errs.not_supported("type", ev.get("type"), EVENT_TYPES)
    for key, limit in (("reason", 128), ("message", 1024 * 1024)):
        value = ev.get(key)
        if value is not None and not isinstance(value, str):
            errs.invalid(key, value, "must be a string")
        elif value is not None and len(value) > limit:
            errs.causes.append(Cause(key, "FieldValueTooLong",
                                     f"Too long: must have at most {limit} bytes"))
    count = ev.get("count")
    if count is not None and (not _is_int(count) or count < 0):
        errs.invalid("count", count, "must be a non-negative integer")
    return errs.causes


_VALIDATORS: Mapping[str, Callable[[Mapping[str, Any]], list[Cause]]] = {
    "Namespace": validate_namespace,
    "IngressClass": validate_ingress_class,
    "Event": validate_event,
    "Service": validate_service,
    "Pod": validate_pod,
    "EndpointSlice": validate_endpoint_slice,
    "Endpoints": validate_endpoints,
    "Secret": validate_secret,
    "Ingress": validate_ingress,
    "Route": validate_route,
}


def validate(obj: Mapping[str, Any]) -> list[Cause]:
    """Every problem with a defaulted object of any kind lbcore knows (by its ``kind``)."""
    return _VALIDATORS[obj["kind"]](obj)
