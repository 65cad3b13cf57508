"""The CLI's client: the Kubernetes REST shape, spoken to an lbcore daemon or a real cluster.

:class:`HttpTransport` talks plain HTTP(S) to ``lbcore run``'s admin API; :class:`KubeTransport`
talks to the API server of a kubeconfig through the official ``kubernetes`` client. Both return
the decoded JSON and raise :class:`ApiError` carrying the server's Status, so that the CLI can
print kubectl's one-line messages.
"""

from __future__ import annotations

import json
import os
import ssl
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol

from lbcore.errors import ConfigError
from lbcore.model.kinds import Kind, find_kind
from lbcore.model.objects import text_documents
from lbcore.runtime.config import DEFAULT_ADMIN_PORT, default_data_dir


class UnknownResource(LookupError):
    """A resource type the CLI does not know."""


def resource_for(name: str) -> Kind:
    """The kind for a plural, singular, short name or kind (``svc``, ``Service``, ...)."""
    found = find_kind(name)
    if found is None:
        raise UnknownResource(f'the server doesn\'t have a resource type "{name}"')
    return found


class ApiError(Exception):
    """An error answer: ``status`` is the Kubernetes Status (``reason``, ``code``, ``details``)."""

    def __init__(self, status: Mapping[str, Any]):
        self.status = dict(status)
        super().__init__(self.message)

    @property
    def code(self) -> int:
        return int(self.status.get("code") or 0)

    @property
    def reason(self) -> str:
        return str(self.status.get("reason") or "Unknown")

    @property
    def message(self) -> str:
        return str(self.status.get("message") or self.reason)

    def kubectl_message(self) -> str:
        """One line, as kubectl prints it."""
        details = self.status.get("details") or {}
        causes = details.get("causes") or []
        if self.reason == "Invalid":
            kind = details.get("kind") or "object"
            found = find_kind(kind)
            kind = found.kind if found is not None else kind
            name = details.get("name") or ""
            if causes:
                listed = ", ".join(
                    f"{c['field']}: {c['message']}" if c.get("field") else str(c.get("message"))
                    for c in causes
                )
                return f'The {kind} "{name}" is invalid: {listed}'
            return f"The {self.message}"
        return f"Error from server ({self.reason}): {self.message}"


class Unreachable(ApiError):
    """No server answers at the address."""

    def __init__(self, server: str, why: str):
        self.server = server
        super().__init__(
            {
                "reason": "ServiceUnavailable",
                "code": 503,
                "message": f"The connection to the server {server} was refused - {why}",
            }
        )

    def kubectl_message(self) -> str:
        return self.message


class Transport(Protocol):
    server: str

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        query: Mapping[str, str] | None = None,
        content_type: str = "application/json",
    ) -> Any: ...


class HttpTransport:
    """HTTP or HTTPS to an lbcore admin API, with an optional bearer token; over HTTPS the
    server's certificate is checked against ``ca_pem`` (else the system's CAs)."""

    def __init__(self, server: str, token: str | None = None, timeout: float = 10.0,
                 ca_pem: bytes | None = None):
        self.server = server.rstrip("/")
        self.token = token
        self.timeout = timeout
        self.context: ssl.SSLContext | None = None
        if self.server.startswith("https://"):
            self.context = ssl.create_default_context(
                cadata=ca_pem.decode() if ca_pem else None)

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        query: Mapping[str, str] | None = None,
        content_type: str = "application/json",
    ) -> Any:
        url = self.server + path
        if query:
            url += "?" + urllib.parse.urlencode(query)
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(url, data=data, method=method)
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", content_type)
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout, context=self.context) as resp:
                payload = resp.read()
        except urllib.error.HTTPError as exc:
            raise ApiError(_status_of(exc.code, exc.read())) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            host = urllib.parse.urlsplit(self.server).netloc
            raise Unreachable(
                host, f"is `lbcore run` running? ({getattr(reason, 'strerror', None) or reason})"
            ) from None
        return json.loads(payload) if payload else {}


def _status_of(code: int, payload: bytes) -> dict[str, Any]:
    try:
        status = json.loads(payload)
    except ValueError:
        status = None
    if not isinstance(status, dict) or status.get("kind") != "Status":
        text = payload.decode(errors="replace").strip()[:200]
        status = {
            "kind": "Status",
            "code": code,
            "reason": _REASONS.get(code, "Unknown"),
            "message": text or f"HTTP {code}",
        }
    status.setdefault("code", code)
    return status


_REASONS = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    409: "Conflict",
    410: "Gone",
    422: "Invalid",
    500: "InternalError",
    503: "ServiceUnavailable",
}


class KubeTransport:
    """A real cluster through the official client and a kubeconfig."""

    def __init__(
        self, kubeconfig: str | None = None, context: str | None = None, server: str | None = None
    ):
        from kubernetes import config as kube_config

        try:
            self.api = kube_config.new_client_from_config(config_file=kubeconfig, context=context)
        except (kube_config.ConfigException, OSError) as exc:
            raise ConfigError(f"--kubeconfig {kubeconfig}: {exc}") from None
        if server:  # --server overrides the kubeconfig's cluster address, as with kubectl
            self.api.configuration.host = server.rstrip("/")
        self.server = self.api.configuration.host

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        query: Mapping[str, str] | None = None,
        content_type: str = "application/json",
    ) -> Any:
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        headers = {"Accept": "application/json", "Content-Type": content_type}
        params = list((query or {}).items())
        payload = body
        try:
            if hasattr(self.api, "param_serialize"):  # clients generated since v31
                request = self.api.param_serialize(
                    method, path, query_params=params, header_params=headers, body=payload,
                    auth_settings=["BearerToken"],
                )  # fmt: skip
                resp = self.api.call_api(*request, _request_timeout=30)
                resp.read()
            else:
                resp = self.api.call_api(
                    path, method, query_params=params, header_params=headers, body=payload,
                    auth_settings=["BearerToken"], _preload_content=False, _request_timeout=30,
                )[0]  # fmt: skip
        except ApiException as exc:
            data = exc.body if isinstance(exc.body, bytes) else str(exc.body or "").encode()
            raise ApiError(_status_of(exc.status or 0, data)) from None
        except (HTTPError, OSError) as exc:
            raise Unreachable(urllib.parse.urlsplit(self.server).netloc, str(exc)) from None
        status = getattr(resp, "status", 200)
        data = resp.data or b""
        if status >= 400:
            raise ApiError(_status_of(status, data))
        return json.loads(data) if data else {}


def default_server(data_dir: Path | None = None) -> str:
    """``$LBCORE_SERVER``, else the address in the default data dir, else the default port."""
    env = os.environ.get("LBCORE_SERVER")
    if env:
        return env
    data_dir = data_dir or default_data_dir()
    try:
        address = (data_dir / "admin-address").read_text().strip()
    except OSError:
        address = ""
    return address or f"http://127.0.0.1:{DEFAULT_ADMIN_PORT}"


def default_token(data_dir: Path | None = None) -> str | None:
    env = os.environ.get("LBCORE_TOKEN")
    if env:
        return env
    try:
        return (data_dir or default_data_dir()).joinpath("token").read_text().strip() or None
    except OSError:
        return None


# what the CLI writes is refused when it has a field the kind does not (a typo), as kubectl's
# default --validate=strict asks of an API server
STRICT: Mapping[str, str] = {"fieldValidation": "Strict"}


class Client:
    """Create, apply, get, list and delete Kubernetes-shaped objects."""

    def __init__(self, transport: Transport):
        self.transport = transport

    @property
    def server(self) -> str:
        return self.transport.server

    def get(self, resource: Kind, namespace: str, name: str) -> dict[str, Any]:
        return self.transport.request("GET", resource.path(namespace, name))

    def list(
        self, resource: Kind, namespace: str | None, selector: str | None = None
    ) -> list[dict[str, Any]]:
        """Items of ``resource`` in ``namespace`` (``None``: every namespace)."""
        query = {"labelSelector": selector} if selector else None
        answer = self.transport.request("GET", resource.path(namespace), query=query)
        items = answer.get("items") or []
        for item in items:  # lists leave kind and apiVersion out of their items
            item.setdefault("kind", resource.kind)
            item.setdefault("apiVersion", resource.api_version)
        return items

    def create(self, obj: Mapping[str, Any], namespace: str,
               dry_run: bool = False) -> dict[str, Any]:
        resource = resource_for(obj.get("kind", ""))
        return self.transport.request("POST", resource.path(namespace), body=obj,
                                      query=_write_query(dry_run))

    def replace(self, obj: Mapping[str, Any], namespace: str,
                dry_run: bool = False) -> dict[str, Any]:
        resource = resource_for(obj.get("kind", ""))
        name = (obj.get("metadata") or {}).get("name")
        return self.transport.request("PUT", resource.path(namespace, name), body=obj,
                                      query=_write_query(dry_run))

    def patch(self, resource: Kind, namespace: str, name: str, patch: Any,
              patch_type: str = "strategic", subresource: str | None = None,
              dry_run: bool = False) -> dict[str, Any]:
        """Patch an object (or its ``status``): ``patch_type`` is kubectl's ``--type``
        (``json``, ``merge``, ``strategic``)."""
        path = resource.path(namespace, name) + (f"/{subresource}" if subresource else "")
        return self.transport.request("PATCH", path, body=patch, query=_dry_run(dry_run),
                                      content_type=PATCH_CONTENT_TYPES[patch_type])

    def apply(self, obj: Mapping[str, Any], namespace: str,
              dry_run: bool = False) -> tuple[str, dict[str, Any]]:
        """Create, or update what exists; ``("created" | "configured", object)``.

        The update is conditional on the version read. Fields the server allocated and the
        manifest leaves out (the ClusterIP, NodePorts) are kept by the server's admission, as an
        API server keeps them.
        """
        resource = resource_for(obj.get("kind", ""))
        name = (obj.get("metadata") or {}).get("name") or ""
        try:
            current = self.get(resource, namespace, name)
        except ApiError as exc:
            if exc.code != 404 or (exc.status.get("details") or {}).get("kind") == "namespaces":
                raise
            return "created", self.create(obj, namespace, dry_run)
        return "configured", self.replace(_at_version(obj, current), namespace, dry_run)

    def delete(self, resource: Kind, namespace: str, name: str,
               dry_run: bool = False) -> dict[str, Any]:
        return self.transport.request("DELETE", resource.path(namespace, name),
                                      query=_dry_run(dry_run))


# kubectl patch --type -> the Content-Type it sends
PATCH_CONTENT_TYPES = {
    "json": "application/json-patch+json",
    "merge": "application/merge-patch+json",
    "strategic": "application/strategic-merge-patch+json",
}


def _dry_run(dry_run: bool) -> dict[str, str] | None:
    return {"dryRun": "All"} if dry_run else None


def _write_query(dry_run: bool) -> dict[str, str]:
    """A create's or update's query: strict field validation, and the dry run if asked."""
    return {**STRICT, **(_dry_run(dry_run) or {})}


def _at_version(obj: Mapping[str, Any], current: Mapping[str, Any]) -> dict[str, Any]:
    """``obj`` with the resourceVersion of ``current``: a replace that fails if it changed."""
    new = json.loads(json.dumps(obj))
    version = (current.get("metadata") or {}).get("resourceVersion")
    if version:
        new.setdefault("metadata", {})["resourceVersion"] = version
    return new


def connect(
    server: str | None = None,
    kubeconfig: str | None = None,
    token: str | None = None,
    context: str | None = None,
) -> Client:
    """A client for ``server`` (an lbcore daemon), a kubeconfig's cluster, or the default daemon.

    The default daemon is reached as the kubeconfig it wrote into its data directory says
    (address, CA, token), when there is one and ``$LBCORE_SERVER`` names no other."""
    if kubeconfig:
        return Client(KubeTransport(kubeconfig, context, server))
    from lbcore.runtime.tls import KUBECONFIG, read_kubeconfig

    local = read_kubeconfig(default_data_dir() / KUBECONFIG)
    server = server or default_server()
    ca_pem = None
    if local is not None and local[0].rstrip("/") == server.rstrip("/"):
        ca_pem, token = local[1], token or local[2]
    return Client(HttpTransport(server, token or default_token(), ca_pem=ca_pem))


# --------------------------------------------------------------------------------------------
# manifests
# --------------------------------------------------------------------------------------------


class ManifestError(ValueError):
    """A file that cannot be read or parsed; the message names the file."""


def _files(path: str) -> Iterator[tuple[str, str]]:
    if path == "-":
        import sys

        yield "<stdin>", sys.stdin.read()
        return
    p = Path(path)
    if p.is_dir():
        found = sorted(
            f for f in p.iterdir() if f.suffix in (".yaml", ".yml", ".json") and f.is_file()
        )
        for f in found:
            yield str(f), f.read_text()
        return
    try:
        yield str(p), p.read_text()
    except OSError as exc:
        raise ManifestError(
            f'the path "{path}" does not exist'
            if isinstance(exc, FileNotFoundError)
            else f"{path}: {exc.strerror}"
        ) from None


def read_manifests(paths: Iterable[str]) -> list[dict[str, Any]]:
    """Every object in the files (``-`` is stdin; a directory gives its .yaml/.yml/.json files),
    parsed as :func:`lbcore.load_manifests` parses them (``kind: List`` is unpacked; text that
    does not parse raises its :class:`~lbcore.model.objects.ManifestSyntaxError`)."""
    out: list[dict[str, Any]] = []
    for name, text in (item for path in paths for item in _files(path)):
        for i, doc in enumerate(text_documents(text, name)):
            if doc is None:
                continue
            if not isinstance(doc, dict):
                raise ManifestError(f"error parsing {name}: document {i + 1} is not an object")
            if not doc.get("kind"):
                raise ManifestError(f"error validating {name}: Object 'Kind' is missing")
            out.append(doc)
    return out
