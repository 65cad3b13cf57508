"""The admin API: the embedded store behind the Kubernetes REST shape.

Services, Pods, Endpoints, Namespaces and Events under ``/api/v1``, EndpointSlices under
``/apis/discovery.k8s.io/v1``, with list, get, create, update, patch (JSON merge, strategic
merge, JSON patch, apply), delete and watch, the ``status`` subresource of
Services and Pods, ``dryRun=All`` on every write, Status bodies for errors and enough discovery
for the official ``kubernetes`` client and kubectl.
Because it speaks the same wire protocol as an API server, the kubernetes source is tested
against it. docs/api.md is the reference.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import hmac
import ipaddress
import json
import logging
import math
import platform
import socket
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any

import yaml
from aiohttp import web
from yarl import URL

from lbcore.errors import Cause
from lbcore.model import schema, tables
from lbcore.model.kinds import ALL_KINDS, Kind, kind_for
from lbcore.model.patch import (
    PatchError,
    PatchNotApplicable,
    json_patch,
    merge_patch,
    strategic_merge_patch,
)
from lbcore.runtime import jsontext
from lbcore.runtime.store import (
    BadRequest,
    Gone,
    Invalid,
    NotFound,
    Store,
    StoreError,
    Unauthorized,
    Watch,
    label_filter,
)

log = logging.getLogger("lbcore.runtime.admin_api")

# URL prefix (/api/v1, /apis/{group}/{version}) -> plural -> the kind served there
SERVED: dict[str, dict[str, Kind]] = {}
for _k in ALL_KINDS:
    SERVED.setdefault(_k.api_prefix, {})[_k.plural] = _k
# the named groups (all but the core one): group -> its one version
GROUPS: dict[str, str] = {k.group: k.version for k in ALL_KINDS if k.group}
VERBS = ["create", "delete", "get", "list", "patch", "update", "watch"]
# the API server's --min-request-timeout: a watch without timeoutSeconds ends after this long
DEFAULT_WATCH_TIMEOUT = 1800.0
KUBERNETES_VERSION = ("1", "31")
# how often a quiet watch checks that its client is still connected (seconds)
CLIENT_CHECK_INTERVAL = 1.0
# a watch whose client stopped reading is closed, and cut off when it reads nothing this long
STALLED_CLOSE_GRACE = 1.0
# the initial ADDED events of a watch are written in chunks of about this many bytes
WATCH_CHUNK_BYTES = 256 * 1024

_WATCHES = web.AppKey("lbcore_watches", set)
# what a request is warned of (unknown fields under fieldValidation=Warn): Warning headers
# (a typed key where aiohttp has them, 3.13 and later)
_WARNINGS: Any = (web.RequestKey("lbcore_warnings", list) if hasattr(web, "RequestKey")
                  else "lbcore_warnings")

# Bytes are admitted before objects. A request body is at most what the API server takes
# (3 MiB); nesting is bounded well below where Python's recursion (json, deepcopy) would fail;
# a YAML body whose aliases would expand it beyond the body limit is refused while it is still
# a graph of nodes, before the expanded object is built.
MAX_BODY_BYTES = 3 * 1024 * 1024
MAX_DEPTH = 100
# bodies above this are parsed on a worker thread, so the loop keeps answering meanwhile
PARSE_OFF_LOOP_BYTES = 64 * 1024
# lists of more objects than this are serialized on a worker thread
LIST_OFF_LOOP_ITEMS = 500
# lists (and first events of watches) built at the same time; more wait their turn
LIST_BUILDS = 2
OBJECT_TYPES = ("application/json", "application/yaml")
# what kubectl asks for (the "@" form) and what the API server answers (Go's mime parser
# refuses an "@" in a Content-Type)
OPENAPI_V2_PROTOBUF = ("application/com.github.proto-openapi.spec.v2@v1.0+protobuf",
                       "application/com.github.proto-openapi.spec.v2.v1.0+protobuf")
JSON_PATCH = "application/json-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"
PATCH_TYPES = (
    JSON_PATCH,
    "application/merge-patch+json",
    STRATEGIC_MERGE_PATCH,
    "application/apply-patch+yaml",
)


class UnsupportedMediaType(StoreError):
    code = 415
    reason = "UnsupportedMediaType"


class NotAcceptable(StoreError):
    code = 406
    reason = "NotAcceptable"


class MethodNotAllowed(StoreError):
    code = 405
    reason = "MethodNotAllowed"


class Forbidden(StoreError):
    code = 403
    reason = "Forbidden"


class RequestEntityTooLarge(StoreError):
    code = 413
    reason = "RequestEntityTooLarge"


class UnprocessablePatch(StoreError):
    """422: a JSON patch whose operations cannot be applied (a ``test`` that fails, a path
    that is not there)."""

    code = 422
    reason = "Invalid"


def add_routes(
    app: web.Application,
    store: Store,
    token: str | None = None,
    *,
    bookmark_interval: float = 60.0,
    allowed_hosts: Iterable[str] = (),
) -> None:
    """Serve ``store`` on ``app`` in the shape of the Kubernetes REST API.

    Every request of ``app`` (the daemon's ``/healthz`` and ``/metrics`` too) must name in its
    ``Host`` header an IP address, ``localhost``, this machine's host name or one of
    ``allowed_hosts`` (a name a DNS rebinding attack controls is refused), and may carry no
    ``Origin`` but the server's own: a web page the user opens cannot reach it.

    :param token: when set, every write (POST, PUT, PATCH, DELETE) needs
        ``Authorization: Bearer <token>``; reads stay open.
    :param bookmark_interval: seconds without an event after which a watch that allows
        bookmarks gets a BOOKMARK.
    :param allowed_hosts: further host names the server answers to.
    """
    api = _AdminAPI(store, token, bookmark_interval)
    names = {"localhost", socket.gethostname().lower(), *(h.lower() for h in allowed_hosts)}
    app.middlewares.append(_admin_middleware(frozenset(names)))
    app[_WATCHES] = api.watches
    app.on_shutdown.append(api.end_watches)
    add = app.router.add_route
    # discovery, with and without the trailing slash the official client's calls end with
    for path, handler in (
        ("/version", api.version),
        ("/api", api.api_versions),
        ("/apis", api.api_groups),
        *((f"/apis/{group}", api.group) for group in GROUPS),
        *((prefix, api.resources) for prefix in SERVED),
    ):
        add("GET", path, handler)
        add("GET", path + "/", handler)
    add("GET", "/openapi/v2", api.openapi_v2)
    add("GET", "/openapi/v3", api.openapi_v3_index)
    add("GET", "/openapi/v3/", api.openapi_v3_index)
    add("GET", "/openapi/v3/{group_version:.+}", api.openapi_v3)
    for prefix in SERVED:
        # namespaced kinds under /namespaces/{namespace}/, cluster-scoped ones (Namespace)
        # right under the prefix; _kind() refuses a kind at the other place
        for collection in (prefix + "/namespaces/{namespace}/{resource}", prefix + "/{resource}"):
            add("GET", collection, api.list_or_watch)
            add("POST", collection, api.create)
            add("*", collection, api.not_allowed)
            item = collection + "/{name}"
            for path, subresource in ((item, None), (item + "/{subresource}", True)):
                add("GET", path, api.read)
                add("PUT", path, api.replace)
                add("PATCH", path, api.patch)
                if subresource is None:
                    add("DELETE", path, api.remove)
                add("*", path, api.not_allowed)


@functools.cache
def _prefix_of(route: str) -> str:
    """The served prefix (a key of :data:`SERVED`) a route's path starts with."""
    return next(p for p in SERVED if route.startswith(p + "/"))


def _too_large(size: int) -> RequestEntityTooLarge:
    return RequestEntityTooLarge(
        f"Request entity too large: limit is {MAX_BODY_BYTES} bytes, the body has {size} bytes"
        " or more"
    )


def parse_body(data: bytes, content_type: str) -> Any:
    """JSON (or YAML when ``content_type`` says so) from UTF-8 bytes, nested at most
    :data:`MAX_DEPTH` deep; a YAML document whose aliases would expand it beyond
    :data:`MAX_BODY_BYTES` is refused before it is built.

    :raises BadRequest: bytes that are not UTF-8, or not JSON/YAML, or too deep or too large.
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRequest(
            f"body: not valid UTF-8: byte 0x{data[exc.start]:02x} at offset {exc.start}"
        ) from None
    if "yaml" in content_type:
        loader = _BoundedYAMLLoader(text)
        try:
            node = loader.get_single_node()
            body = None if node is None else loader.construct_document(node)
        except yaml.YAMLError as exc:
            raise BadRequest(f"body: not valid YAML: {' '.join(str(exc).split())}") from None
        finally:
            loader.dispose()
    else:
        try:
            # object_pairs remembers keys given twice, for fieldValidation
            body = json.loads(text, parse_constant=_not_json,
                              object_pairs_hook=schema.object_pairs)
        except RecursionError:
            raise _too_deep() from None
        except ValueError as exc:
            raise BadRequest(f"body: not valid JSON: {exc}") from None
    _check_json_values(body)
    return body


def _not_json(constant: str) -> Any:
    raise BadRequest(f"body: {constant} is not a JSON number")


def _too_deep() -> BadRequest:
    return BadRequest(f"body: nested more than {MAX_DEPTH} levels deep")


def _check_json_values(value: Any) -> None:
    """Refuse nesting deeper than :data:`MAX_DEPTH` and what JSON cannot hold (what YAML can:
    ``!!binary``, ``!!set``, ``.nan``, ``.inf``, keys that are lists), naming where, without
    recursion."""
    stack: list[tuple[Any, int, str]] = [(value, 0, "")]
    while stack:
        item, depth, path = stack.pop()
        if isinstance(item, dict):
            if depth == MAX_DEPTH:
                raise _too_deep()
            for key, child in item.items():
                if not isinstance(key, str | int | bool) and key is not None:
                    raise BadRequest(f"body: {path or '.'}: a key {key!r} is not a string")
                stack.append((child, depth + 1, f"{path}.{key}"))
        elif isinstance(item, list):
            if depth == MAX_DEPTH:
                raise _too_deep()
            stack.extend((child, depth + 1, f"{path}[{i}]") for i, child in enumerate(item))
        elif isinstance(item, float) and not math.isfinite(item):
            raise BadRequest(f"body: {path[1:] or '.'}: {item} is not a JSON number")
        elif not isinstance(item, str | int | float | bool) and item is not None:
            raise BadRequest(
                f"body: {path[1:] or '.'}: a {type(item).__name__} is not a JSON value"
            )


class _BoundedYAMLLoader(yaml.SafeLoader):
    """PyYAML's safe loader, measuring each node as it is composed: how deep it nests and how
    many bytes it stands for once its aliases are expanded (each alias counts as a full copy
    of what it names, as JSON would write it). The whole document is a graph of nodes then,
    its size that of the YAML text; the expanded object, which an alias bomb makes huge, is
    only built after the measure passed."""

    def __init__(self, stream: str):
        super().__init__(stream)
        self._nesting = 0
        self._measured: dict[int, tuple[int, int]] = {}  # id(node) -> (bytes, depth) expanded

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            node = super().compose_node(parent, index)
            if id(node) not in self._measured:  # named while it is still being composed
                raise BadRequest("body: a YAML alias refers to a node that contains it")
            return node
        self._nesting += 1
        if self._nesting > MAX_DEPTH:
            raise _too_deep()
        try:
            node = super().compose_node(parent, index)
        finally:
            self._nesting -= 1
        self._measure(node)
        return node

    def construct_yaml_timestamp(self, node: Any) -> Any:
        """A timestamp stays the string it was written as (``creationTimestamp: 2024-...`` in
        what ``kubectl get -o yaml`` prints), as JSON has no dates."""
        return self.construct_scalar(node)

    def _measure(self, node: Any) -> None:
        if isinstance(node, yaml.ScalarNode):
            size, depth = len(node.value) + 3, 0
        else:
            if isinstance(node, yaml.MappingNode):
                children = [child for pair in node.value for child in pair]
            else:
                children = node.value
            size, depth = 2, 0
            for child in children:
                child_size, child_depth = self._measured[id(child)]
                size += child_size + 1
                depth = max(depth, child_depth)
            depth += 1
        if size > MAX_BODY_BYTES:
            raise BadRequest(
                f"body: the YAML document expands (its aliases resolved) to more than "
                f"{MAX_BODY_BYTES} bytes"
            )
        if depth > MAX_DEPTH:
            raise _too_deep()
        self._measured[id(node)] = (size, depth)


_BoundedYAMLLoader.add_constructor(
    "tag:yaml.org,2002:timestamp", _BoundedYAMLLoader.construct_yaml_timestamp
)


def _construct_yaml_map(loader: yaml.SafeLoader, node: yaml.MappingNode) -> Any:
    """A mapping that remembers the keys it names twice (the last value is kept), as JSON
    bodies do (:func:`lbcore.model.schema.object_pairs`), for fieldValidation."""
    counts: dict[Any, int] = {}
    for key, _ in node.value:
        if isinstance(key, yaml.ScalarNode) and key.tag != "tag:yaml.org,2002:merge":
            counts[key.value] = counts.get(key.value, 0) + 1
    twice = tuple(str(k) for k, n in counts.items() if n > 1)
    data: dict[Any, Any] = schema.DuplicateKeys() if twice else {}
    if twice:
        data.duplicates = twice  # type: ignore[attr-defined]
    yield data
    data.update(loader.construct_mapping(node))


_BoundedYAMLLoader.add_constructor("tag:yaml.org,2002:map", _construct_yaml_map)


def _status_response(error: StoreError) -> web.Response:
    return web.json_response(error.status(), status=error.code)


def _host_name(host: str) -> str:
    """The name or address of a ``Host`` header, without its port and brackets."""
    if host.startswith("["):
        return host[1:].partition("]")[0]
    if host.count(":") == 1:
        host = host.partition(":")[0]
    return host.rstrip(".").lower()


@functools.lru_cache(maxsize=256)  # a client sends the same Host on every request
def _host_allowed(host: str, names: frozenset[str]) -> bool:
    """Whether a ``Host`` header names an IP address (which DNS cannot rebind) or one of
    ``names``."""
    name = _host_name(host)
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return name in names
    return True


def _cross_site_problem(request: web.Request, names: frozenset[str]) -> str | None:
    """Why a request may come from a web page rather than a client of this server, or None.

    An IP address cannot be rebound by DNS, so it is always a valid ``Host``; a name must be
    one this server knows it has. Browsers send ``Origin`` on cross-site requests, and no
    client of this API (lbcore, kubectl, the official client) sends one.
    """
    host = request.headers.get("Host")
    if host is not None and not _host_allowed(host, names):
        return (
            f"Host: {host!r} is not an IP address, localhost or this server's name; "
            "reach the admin API by address"
        )
    origin = request.headers.get("Origin")
    if origin is not None:
        try:
            url = URL(origin)
            own = URL(f"{request.scheme}://{host}") if host else None
            same = own is not None and (url.scheme, url.host, url.port) == (
                own.scheme, own.host, own.port)
        except (ValueError, TypeError):
            same = False
        if not same:
            return f"Origin: {origin!r} is not this server's; cross-site requests are refused"
    return None


def _admin_middleware(names: frozenset[str]) -> Any:
    """The middleware of every request: refuses one that may come from a web page
    (:func:`_cross_site_problem`), and sends each warning a request earned as the API server
    does, ``Warning: 299 - "text"`` (kubectl prints ``Warning: text``). One middleware, not
    one per duty: aiohttp wraps each in a coroutine of its own, on every request."""
    @web.middleware
    async def admin_middleware(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        problem = _cross_site_problem(request, names)
        if problem is not None:
            return _status_response(Forbidden(problem))
        response = await handler(request)
        for text in request.get(_WARNINGS, ()):
            if not response.prepared:
                quoted = text.replace("\\", "\\\\").replace('"', '\\"')
                response.headers.add("Warning", f'299 - "{quoted}"')
        return response

    return admin_middleware


def _handles_errors(handler: Callable[[Any, web.Request], Awaitable[web.StreamResponse]]) -> Any:
    """Answer a StoreError with its Status, anything unexpected with a 500 Status."""

    @functools.wraps(handler)
    async def wrapped(self: Any, request: web.Request) -> web.StreamResponse:
        try:
            return await handler(self, request)
        except StoreError as error:
            return _status_response(error)
        except Exception as exc:  # the client gets a Status, the log the traceback
            log.exception("%s %s failed", request.method, request.path)
            return _status_response(StoreError(f"{type(exc).__name__}: {exc}"))

    return wrapped


def _truthy(value: str | None) -> bool:
    return value is not None and value.lower() in ("true", "1", "yes")


# what a list with ``continue`` and no ``limit`` reads: the rest of the list, in one chunk
_NO_LIMIT = 2**31


def _page_query(query: Mapping[str, str]) -> tuple[int, str | None] | None:
    """A list's ``limit`` and ``continue``, or None for the whole list at once (no ``limit``
    above 0, no ``continue``, as the API server reads them)."""
    raw, token = query.get("limit"), query.get("continue") or None
    try:
        limit = int(raw) if raw else 0
    except ValueError:
        raise BadRequest(f"limit: {raw!r} is not an integer") from None
    if token is not None and query.get("resourceVersion"):
        raise BadRequest("resourceVersion: must be empty with continue (the list's own is used)")
    if limit <= 0:
        return None if token is None else (_NO_LIMIT, token)
    return min(limit, _NO_LIMIT), token


def _continue_token(revision: int, after: tuple[str, str]) -> str:
    """The opaque ``continue`` of a chunked list: its revision and the last key it gave."""
    text = json.dumps({"rv": revision, "after": list(after)}, separators=(",", ":"))
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def _continue_key(token: str) -> tuple[tuple[str, str], int]:
    """What :func:`_continue_token` holds. :raises BadRequest: a token it did not make."""
    try:
        data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        ns, name = data["after"]
        revision = data["rv"]
        if not (isinstance(ns, str) and isinstance(name, str) and type(revision) is int
                and revision >= 0):
            raise ValueError
    except (ValueError, TypeError, KeyError, binascii.Error):
        raise BadRequest(f"continue: {token!r} is not a continue token of this server") from None
    return (ns, name), revision


# fields a fieldSelector may name beside metadata.name and metadata.namespace, by kind (the
# API server's field label conversions; kubectl describe finds a service's Events by these)
SELECTABLE_FIELDS: dict[str, tuple[str, ...]] = {
    "Event": tuple(f"involvedObject.{f}" for f in (
        "kind", "namespace", "name", "uid", "apiVersion", "resourceVersion", "fieldPath")) + (
        "reason", "reportingComponent", "source"),
    "Namespace": ("status.phase",),
}


def _field_value(obj: Mapping[str, Any], field: str) -> str:
    value: Any = obj
    for part in field.split("."):
        value = value.get(part) if isinstance(value, Mapping) else None
    if field == "source" and value is None:
        return ""
    if isinstance(value, Mapping):  # an Event's source is its component
        value = value.get("component")
    return "" if value is None else str(value)


def _field_filter(text: str | None,
                  kind: str = "") -> Callable[[Mapping[str, Any]], bool] | None:
    """``fieldSelector`` on metadata.name, metadata.namespace and type (a Secret's, an
    Event's) (``=``, ``==``, ``!=``), and the fields :data:`SELECTABLE_FIELDS` gives ``kind``."""
    if not text:
        return None
    terms: list[tuple[str, bool, str]] = []
    for term in text.split(","):
        term = term.strip()
        for op in ("!=", "==", "="):
            if op in term:
                field, value = (part.strip() for part in term.split(op, 1))
                equal = op != "!="
                break
        else:
            raise BadRequest(f"fieldSelector: {term!r} is not field=value or field!=value")
        supported = ("metadata.name", "metadata.namespace", "type", *SELECTABLE_FIELDS.get(kind, ()))
        if field not in supported:
            raise BadRequest(
                f'fieldSelector: "{field}" is not a supported field selector '
                f"({', '.join(supported)})"
            )
        terms.append((field, equal, value))

    def matches(obj: Mapping[str, Any]) -> bool:
        return all((_field_value(obj, field) == value) == equal for field, equal, value in terms)

    return matches


class _AdminAPI:
    def __init__(self, store: Store, token: str | None, bookmark_interval: float):
        self.store = store
        self.token = token
        self.bookmark_interval = bookmark_interval
        self.watches: set[Watch] = set()
        self._builds = asyncio.Semaphore(LIST_BUILDS)

    async def _build(self, function: Callable[..., Any], *args: Any) -> Any:
        """``function(*args)`` on a worker thread, at most :data:`LIST_BUILDS` at a time: each
        holds the GIL for much of its work, and the loop must still get its turn."""
        async with self._builds:
            return await asyncio.to_thread(function, *args)

    async def end_watches(self, app: web.Application) -> None:
        """On shutdown, end every open watch so that the server stops at once."""
        for watcher in list(self.watches):
            watcher.close()

    # -- discovery -----------------------------------------------------------------------------

    @_handles_errors
    async def version(self, request: web.Request) -> web.StreamResponse:
        from lbcore import __version__

        major, minor = KUBERNETES_VERSION
        return web.json_response({
            "major": major,
            "minor": minor,
            "gitVersion": f"v{major}.{minor}.0-lbcore.{__version__}",
            "gitCommit": "",
            "gitTreeState": "clean",
            "buildDate": "2026-11-25T00:00:00Z",
            "goVersion": f"python{platform.python_version()}",
            "compiler": "cpython",
            "platform": f"linux/{platform.machine()}",
        })

    @_handles_errors
    async def openapi_v2(self, request: web.Request) -> web.StreamResponse:
        """Swagger 2.0 of every kind served: JSON, or the protobuf form kubectl asks for
        (kubectl 1.32 reads the v3 documents, and this one to validate a ``kind: List`` on
        the client)."""
        accepted = [media for media, _ in _media_types(request)]
        if any(m in OPENAPI_V2_PROTOBUF for m in accepted):
            return web.Response(body=_openapi_v2_protobuf(),
                                headers={"Content-Type": OPENAPI_V2_PROTOBUF[1]})
        if accepted and not any(m in ("application/json", "*/*", "application/*", "")
                                for m in accepted):
            raise NotAcceptable(
                f"Accept: {request.headers.get('Accept')!r}: /openapi/v2 is served as "
                f"application/json and {OPENAPI_V2_PROTOBUF[1]} only"
            )
        return web.Response(body=_openapi_v2(), content_type="application/json")

    @_handles_errors
    async def openapi_v3_index(self, request: web.Request) -> web.StreamResponse:
        return web.Response(body=_openapi_v3(""), content_type="application/json")

    @_handles_errors
    async def openapi_v3(self, request: web.Request) -> web.StreamResponse:
        """One group version's OpenAPI v3 document; ``?hash=`` is the index's, for caching."""
        body = _openapi_v3(request.match_info["group_version"].strip("/"))
        if body is None:
            raise NotFound("the server could not find the requested resource")
        return web.Response(body=body, content_type="application/json")

    @_handles_errors
    async def api_versions(self, request: web.Request) -> web.StreamResponse:
        aggregated = _discovery_version(request)
        if aggregated is not None:
            return _aggregated([""], aggregated)
        return web.json_response({
            "kind": "APIVersions",
            "versions": ["v1"],
            "serverAddressByClientCIDRs": [
                {"clientCIDR": "0.0.0.0/0", "serverAddress": request.host},
            ],
        })

    @_handles_errors
    async def resources(self, request: web.Request) -> web.StreamResponse:
        """The ``APIResourceList`` of one group version, from the registry of kinds."""
        kinds = sorted(SERVED[request.path.rstrip("/")].values(), key=lambda k: k.plural)
        return web.json_response({
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": kinds[0].api_version,
            "resources": sorted([
                {
                    "name": k.plural,
                    "singularName": k.singular,
                    "namespaced": k.namespaced,
                    "kind": k.kind,
                    "verbs": VERBS,
                    "shortNames": list(k.short_names),
                    **({"categories": list(k.categories)} if k.categories else {}),
                }
                for k in kinds
            ] + [
                {
                    "name": f"{k.plural}/{sub}",
                    "singularName": "",
                    "namespaced": k.namespaced,
                    "kind": k.kind,
                    "verbs": ["get", "patch", "update"],
                }
                for k in kinds for sub in k.subresources
            ], key=lambda r: str(r["name"])),
        })

    @staticmethod
    def _group(group: str) -> dict[str, Any]:
        version = {"groupVersion": f"{group}/{GROUPS[group]}", "version": GROUPS[group]}
        return {"name": group, "versions": [version], "preferredVersion": version}

    @_handles_errors
    async def api_groups(self, request: web.Request) -> web.StreamResponse:
        aggregated = _discovery_version(request)
        if aggregated is not None:
            return _aggregated(GROUPS, aggregated)
        groups = [self._group(g) for g in GROUPS]
        return web.json_response({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})

    @_handles_errors
    async def group(self, request: web.Request) -> web.StreamResponse:
        name = request.path.rstrip("/").rsplit("/", 1)[1]
        return web.json_response({"kind": "APIGroup", "apiVersion": "v1", **self._group(name)})

    # -- helpers -------------------------------------------------------------------------------

    def _kind(self, request: web.Request) -> str:
        info = request.match_info
        resource = info["resource"]
        route = info.route.resource
        assert route is not None  # every route served here belongs to a resource
        served = SERVED[_prefix_of(route.canonical)].get(resource)
        subresource = info.get("subresource")
        if (served is None
                # a cluster-scoped kind is not found inside a namespace; a namespaced one's
                # objects are not found outside one (its list across namespaces is)
                or ("namespace" in info and not served.namespaced)
                or ("namespace" not in info and served.namespaced and "name" in info)
                or (subresource is not None and subresource not in served.subresources)):
            raise NotFound("the server could not find the requested resource")
        return served.kind

    @staticmethod
    def _where(request: web.Request) -> tuple[str, str]:
        """(namespace, name) of the object a request names ("" namespace: cluster-scoped)."""
        info = request.match_info
        return info.get("namespace", ""), info["name"]

    @staticmethod
    def _dry_run(request: web.Request, options: Any = None) -> bool:
        """Whether the write is a dry run: ``dryRun=All`` in the query (or in the
        DeleteOptions of a DELETE's body); any other value is refused, as the API server does."""
        given = request.query.getall("dryRun", [])
        if isinstance(options, dict) and isinstance(options.get("dryRun"), list):
            given = [*given, *options["dryRun"]]
        for value in given:
            if value != "All":
                raise Invalid("DryRun", "", [Cause(
                    "dryRun", "FieldValueNotSupported",
                    f'Unsupported value: "{value}": supported values: "All"')])
        return bool(given)

    def _authorize(self, request: web.Request) -> None:
        if self.token is None:
            return
        header = request.headers.get("Authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            given.strip().encode(), self.token.encode()
        ):
            raise Unauthorized("Authorization: a valid bearer token is required for writes")

    @staticmethod
    async def _body(request: web.Request, accepted: tuple[str, ...] = OBJECT_TYPES) -> Any:
        """The request body, parsed: its type, charset, size, nesting and alias expansion are
        checked before (or while) it is parsed, never after an object was built."""
        # no Content-Type is JSON (the official client sends none on create); a browser sends
        # one of its own with a form or text, and an Origin with anything cross-site
        given = request.headers.get("Content-Type")
        content_type = request.content_type if given is not None else "application/json"
        if content_type not in accepted:
            raise UnsupportedMediaType(
                f"Content-Type: {given!r} is not supported here; use "
                f"{', '.join(accepted)}"
            )
        charset = request.charset
        if charset is not None and charset.lower() not in ("utf-8", "utf8"):
            raise UnsupportedMediaType(
                f"Content-Type: charset {charset!r} is not supported; send UTF-8"
            )
        length = request.content_length
        if length is not None and length > MAX_BODY_BYTES:
            raise _too_large(length)
        chunks: list[bytes] = []
        size = 0
        while chunk := await request.content.read(64 * 1024):
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                raise _too_large(size)
            chunks.append(chunk)
        data = b"".join(chunks)
        if size > PARSE_OFF_LOOP_BYTES:
            return await asyncio.to_thread(parse_body, data, content_type)
        return parse_body(data, content_type)

    def _object(self, request: web.Request, body: Any, kind: str,
                fields_checked: bool = False) -> dict[str, Any]:
        """The body as an object of ``kind`` in the URL's namespace (and name, for PUT).

        :param fields_checked: its unknown and duplicate fields were handled already (a merge
            patch's own fields, before it was applied to the stored object, which has none).
        """
        if not isinstance(body, dict):
            raise BadRequest(f"body: expected a {kind} object, got {type(body).__name__}")
        body.setdefault("kind", kind)
        served = kind_for(kind)
        body.setdefault("apiVersion", served.api_version)
        if body["kind"] != kind:
            raise BadRequest(f"kind: {body['kind']!r} sent to the {served.plural} resource")
        meta = body.setdefault("metadata", {})
        if not isinstance(meta, dict):
            shown = json.dumps(meta)
            shown = shown if len(shown) <= 64 else shown[:61] + "..."
            raise Invalid(kind, "", [Cause(
                "metadata", "FieldValueInvalid",
                f"Invalid value: {shown}: must be an object, not {_json_type(meta)}",
            )])
        namespace = request.match_info.get("namespace")
        if namespace is None:  # a cluster-scoped kind: the store gives it no namespace
            pass
        elif meta.setdefault("namespace", namespace) != namespace:
            raise BadRequest(
                f"metadata.namespace: {meta['namespace']!r} does not match the namespace "
                f"{namespace!r} of the request"
            )
        name = request.match_info.get("name")
        if name is not None and meta.setdefault("name", name) != name:
            raise BadRequest(
                f"metadata.name: the name of the object ({meta['name']}) does not match the "
                f"name on the URL ({name})"
            )
        if not fields_checked:
            self._validate_fields(request, body, served)
        return body

    @staticmethod
    def _validate_fields(request: web.Request, body: dict[str, Any], kind: Kind) -> None:
        """``fieldValidation``, as the API server does it: unknown and duplicate fields refuse
        the request under Strict, are dropped with a warning under Warn (the default) and
        dropped silently under Ignore; they are never stored."""
        directive = request.query.get("fieldValidation") or "Warn"
        if directive not in schema.FIELD_VALIDATION:
            raise BadRequest(
                f'fieldValidation: Unsupported value: "{directive}": supported values: '
                + ", ".join(f'"{v}"' for v in schema.FIELD_VALIDATION)
            )
        if directive == "Strict":
            problems = schema.unknown_fields(kind.kind, body)
            if problems:
                raise BadRequest(
                    f'{kind.kind} in version "{kind.version}" cannot be handled as a '
                    f"{kind.kind}: strict decoding error: "
                    + ", ".join(str(p) for p in problems)
                )
            return
        problems = schema.drop_unknown_fields(kind.kind, body)
        if directive == "Warn" and problems:
            request.setdefault(_WARNINGS, []).extend(str(p) for p in problems)

    # -- collection ----------------------------------------------------------------------------

    @_handles_errors
    async def list_or_watch(self, request: web.Request) -> web.StreamResponse:
        kind = self._kind(request)
        namespace = request.match_info.get("namespace")
        query = request.query
        fields = _field_filter(query.get("fieldSelector"), kind)
        if _truthy(query.get("watch")):
            return await self._watch(request, kind, namespace, fields)
        as_table = _table_version(request)
        page = _page_query(query)
        if as_table is not None:
            body = await self._build(
                self._table_body, request, kind, namespace, query.get("labelSelector") or None,
                fields, as_table, page,
            )
            return web.Response(body=body, headers={"Content-Type": _table_type(as_table)})
        if page is not None:
            body = await self._build(
                self._list_body, kind, namespace, query.get("labelSelector") or None, fields,
                page,
            )
            return web.Response(body=body, content_type="application/json")
        # on a worker thread, each object on its own: a list of 50,000 pods neither stalls the
        # loop (/healthz, writes) nor holds the GIL in one long call
        body = await self._build(
            self._list_body, kind, namespace, query.get("labelSelector") or None, fields
        )
        return web.Response(body=body, content_type="application/json")

    def _list_texts(
        self, kind: str, namespace: str | None, selector: str | None,
        fields: Callable[[Mapping[str, Any]], bool] | None,
    ) -> tuple[Sequence[str], str]:
        """The objects a list answers, each as JSON text, and the list's resourceVersion;
        objects are copied as stored when nothing filters. Called on a worker thread."""
        if selector is None and fields is None:
            return self.store.list_json(kind, namespace)
        items, rv = self.store.list(kind, namespace, selector)
        dumps = functools.partial(json.dumps, separators=(",", ":"))
        return [dumps(o) for o in items if fields is None or fields(o)], rv

    def _chunk(
        self, kind: str, namespace: str | None, selector: str | None,
        fields: Callable[[Mapping[str, Any]], bool] | None, page: tuple[int, str | None],
    ) -> tuple[list[str], str, str | None]:
        """One chunk of a list asked for with ``limit`` (and ``continue``): up to ``limit``
        matching objects as JSON text, the resourceVersion every chunk of the list is read at,
        and the ``continue`` token of the rest (None: nothing is left). Called on a worker
        thread."""
        limit, token = page
        after, at = _continue_key(token) if token else (None, None)
        matches = label_filter(selector)
        texts: list[str] = []
        more = True
        while more and len(texts) < limit:
            # a filter may leave out most rows: read at least a few hundred at a time
            want = limit - len(texts) if matches is None and fields is None else max(limit, 256)
            try:
                rows, at, more = self.store.list_chunk(kind, namespace, after, want, at)
            except Gone:
                raise Gone(
                    f"continue: the list was read at resourceVersion {at}, older than the "
                    f"history kept ({self.store.oldest_resource_version}); list again without "
                    "continue"
                ) from None
            for i, (ns, name, text) in enumerate(rows):
                after = (ns, name)
                if matches is not None or fields is not None:
                    obj = jsontext.loads(text)
                    if (matches is not None and not matches(obj)) or (
                            fields is not None and not fields(obj)):
                        continue
                texts.append(text)
                if len(texts) == limit:
                    more = more or i + 1 < len(rows)
                    break
        token = _continue_token(at, after) if more and after and at is not None else None
        return texts, str(at), token

    def _table_body(
        self, request: web.Request, kind: str, namespace: str | None, selector: str | None,
        fields: Callable[[Mapping[str, Any]], bool] | None, version: str,
        page: tuple[int, str | None] | None = None,
    ) -> bytes:
        """The list as a ``Table`` (:mod:`lbcore.model.tables`), as kubectl get asks for it
        (in chunks: kubectl asks for 500 rows at a time)."""
        token = None
        if page is None:
            items, rv = self.store.list(kind, namespace, selector)
            shown = [o for o in items if fields is None or fields(o)]
        else:
            texts, rv, token = self._chunk(kind, namespace, selector, fields, page)
            shown = [jsontext.loads(text) for text in texts]
        table = self._table(request, kind, shown, rv, version)
        if token is not None:
            table["metadata"]["continue"] = token
        return json.dumps(table, separators=(",", ":")).encode()

    @staticmethod
    def _table(request: web.Request, kind: str, items: Sequence[Mapping[str, Any]], rv: str,
               version: str) -> dict[str, Any]:
        include = request.query.get("includeObject") or "Metadata"
        if include not in ("None", "Metadata", "Object"):
            raise BadRequest(
                f'includeObject: Unsupported value: "{include}": supported values: "None", '
                '"Metadata", "Object"'
            )
        out = tables.table(kind, items, rv, include, kind_for(kind).api_version)
        out["apiVersion"] = f"meta.k8s.io/{version}"
        if include == "Metadata":  # the rows' PartialObjectMetadata, of the same version
            for row in out["rows"]:
                row["object"]["apiVersion"] = out["apiVersion"]
        return out

    def _list_body(
        self, kind: str, namespace: str | None, selector: str | None,
        fields: Callable[[Mapping[str, Any]], bool] | None,
        page: tuple[int, str | None] | None = None,
    ) -> bytes:
        """The ``{kind}List`` as JSON bytes: whole, or the chunk ``page`` asks for."""
        metadata: dict[str, str] = {}
        if page is None:
            texts, metadata["resourceVersion"] = self._list_texts(kind, namespace, selector, fields)
        else:
            texts, metadata["resourceVersion"], token = self._chunk(
                kind, namespace, selector, fields, page)
            if token is not None:
                metadata["continue"] = token
        head = json.dumps({
            "kind": f"{kind}List",
            "apiVersion": kind_for(kind).api_version,
            "metadata": metadata,
        }, separators=(",", ":"))
        return f'{head[:-1]},"items":[{",".join(texts)}]}}'.encode()

    async def _watch(
        self, request: web.Request, kind: str, namespace: str | None,
        fields: Callable[[Mapping[str, Any]], bool] | None,
    ) -> web.StreamResponse:
        query = request.query
        try:
            timeout = float(query.get("timeoutSeconds") or DEFAULT_WATCH_TIMEOUT)
        except ValueError:
            raise BadRequest(
                f"timeoutSeconds: {query['timeoutSeconds']!r} is not a number"
            ) from None
        bookmarks = _truthy(query.get("allowWatchBookmarks"))
        as_table = _table_version(request)  # kubectl get -w: each event's object as a Table
        selector = query.get("labelSelector") or None
        start = query.get("resourceVersion") or None
        initial: list[bytes] = []
        if start in (None, "0"):
            # the current objects first, as ADDED events: built on a worker thread as a list
            # is (50,000 pods would hold the loop for seconds), then the watch resumes from
            # the list's resourceVersion
            initial, start = await self._build(
                self._initial_events, kind, namespace, selector, fields
            ) if as_table is None else await self._build(
                self._initial_table_events, request, kind, namespace, selector, fields, as_table
            )
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        try:
            watcher = self.store.watch(
                kind, namespace, start, bookmarks, selector,
                bookmark_interval=self.bookmark_interval,
            )
        except Gone as gone:
            # as the API server does: a 200 stream whose one event is an ERROR carrying the 410
            await response.prepare(request)
            await self._send(response, {"type": "ERROR", "object": gone.status()})
            await response.write_eof()
            return response
        self.watches.add(watcher)
        reaper = asyncio.create_task(_end_when_client_leaves_or_stalls(request, watcher))
        try:
            await response.prepare(request)
            try:
                async with asyncio.timeout(timeout):
                    for chunk in initial:
                        await response.write(chunk)
                    del initial
                    async for first in watcher:
                        # with those waiting behind it (a group commit's): one write for all
                        lines = []
                        for event in (first, *watcher.take_ready()):
                            if fields is not None and event["type"] not in (
                                    "BOOKMARK", "ERROR") and not fields(event["object"]):
                                continue
                            if as_table is not None and event["type"] not in (
                                    "BOOKMARK", "ERROR"):
                                event = {"type": event["type"], "object": self._table(
                                    request, kind, [event["object"]], "", as_table)}
                            lines.append(self._event_line(event, as_table is None))
                        if lines:
                            await response.write(b"".join(lines))
            except TimeoutError:
                if bookmarks:  # let the client resume from the latest point it has reached
                    await self._send(response, watcher.bookmark())
            await response.write_eof()
        except ConnectionResetError:
            log.debug("watch of %s: the client went away", kind)
        finally:
            reaper.cancel()
            watcher.close()
            self.watches.discard(watcher)
        return response

    def _initial_table_events(
        self, request: web.Request, kind: str, namespace: str | None, selector: str | None,
        fields: Callable[[Mapping[str, Any]], bool] | None, version: str,
    ) -> tuple[list[bytes], str]:
        """:meth:`_initial_events` for a watch that asked for Tables: one row an event."""
        items, rv = self.store.list(kind, namespace, selector)
        events = [json.dumps({"type": "ADDED", "object": self._table(request, kind, [o], "",
                                                                     version)}) + "\n"
                  for o in items if fields is None or fields(o)]
        return ["".join(events).encode()] if events else [], rv

    def _initial_events(
        self, kind: str, namespace: str | None, selector: str | None,
        fields: Callable[[Mapping[str, Any]], bool] | None,
    ) -> tuple[list[bytes], str]:
        """The ADDED events a watch without a resourceVersion starts with, as newline-ended
        JSON in chunks of about :data:`WATCH_CHUNK_BYTES`, and the resourceVersion they are
        the state at. Called on a worker thread."""
        texts, rv = self._list_texts(kind, namespace, selector, fields)
        chunks: list[bytes] = []
        part: list[str] = []
        size = 0
        for text in texts:
            part.append(f'{{"type":"ADDED","object":{text}}}\n')
            size += len(text)
            if size >= WATCH_CHUNK_BYTES:
                chunks.append("".join(part).encode())
                part, size = [], 0
        if part:
            chunks.append("".join(part).encode())
        return chunks, rv

    def _event_line(self, event: Mapping[str, Any], as_stored: bool) -> bytes:
        """A watch event as a line of JSON; the object of an ADDED or MODIFIED event (as
        stored, ``as_stored``) in the text the store committed it as, when it has it."""
        typ = event["type"]
        text = (self.store.committed_json(event["object"])
                if as_stored and typ in ("ADDED", "MODIFIED") else None)
        if text is None:
            return jsontext.dumps_bytes(event) + b"\n"
        return f'{{"type":"{typ}","object":{text}}}\n'.encode()

    def _object_response(self, obj: Mapping[str, Any], status: int = 200,
                         as_stored: bool = True) -> web.Response:
        """An object the store answered with, in the text it committed it as when it has it
        (``as_stored``: the object is as stored, not a dry run's), else encoded."""
        text = self.store.committed_json(obj) if as_stored else None
        body = jsontext.dumps_bytes(obj) if text is None else text.encode()
        return web.Response(body=body, status=status, content_type="application/json")

    @staticmethod
    async def _send(response: web.StreamResponse, event: Mapping[str, Any]) -> None:
        await response.write(jsontext.dumps_bytes(event) + b"\n")

    @_handles_errors
    async def create(self, request: web.Request) -> web.StreamResponse:
        self._authorize(request)
        kind = self._kind(request)
        if kind_for(kind).namespaced and "namespace" not in request.match_info:
            raise MethodNotAllowed(f"POST: {kind_for(kind).plural} are created in a namespace")
        obj = self._object(request, await self._body(request), kind)
        dry_run = self._dry_run(request)
        return self._object_response(
            await self.store.grouped(lambda: self.store.create(obj, dry_run=dry_run)),
            status=201, as_stored=not dry_run)

    # -- item ----------------------------------------------------------------------------------

    @_handles_errors
    async def read(self, request: web.Request) -> web.StreamResponse:
        """An object, or its ``status`` subresource (the whole object, as the API server
        answers it)."""
        kind = self._kind(request)
        obj = self.store.get(kind, *self._where(request))
        as_table = _table_version(request)
        if as_table is not None:
            rv = str((obj.get("metadata") or {}).get("resourceVersion") or "")
            body = self._table(request, kind, [obj], rv, as_table)
            return _json_as(body, _table_type(as_table))
        return self._object_response(obj)

    @_handles_errors
    async def replace(self, request: web.Request) -> web.StreamResponse:
        self._authorize(request)
        kind = self._kind(request)
        obj = self._object(request, await self._body(request), kind)
        subresource = request.match_info.get("subresource")
        dry_run = self._dry_run(request)
        return self._object_response(await self.store.grouped(lambda: self.store.update(
            obj, subresource=subresource, dry_run=dry_run)), as_stored=not dry_run)

    @_handles_errors
    async def patch(self, request: web.Request) -> web.StreamResponse:
        """JSON patch (RFC 6902), merge patch (RFC 7386), strategic merge patch
        (:mod:`lbcore.model.patch`) or apply patch (the body is the whole desired object,
        created when missing), of the object or of its ``status``."""
        self._authorize(request)
        kind = self._kind(request)
        content_type = request.content_type
        subresource = request.match_info.get("subresource")
        dry_run = self._dry_run(request)
        body = await self._body(request, PATCH_TYPES)
        if content_type == "application/apply-patch+yaml" and subresource is None:
            obj = self._object(request, body, kind)
            return self._object_response(
                await self.store.grouped(lambda: self.store.apply(obj, dry_run=dry_run)),
                as_stored=not dry_run)

        # a merge patch's fields are the patched object's only unknown ones (the stored object
        # has none, and lists are replaced whole, so the paths are the same): check the patch
        # alone, not the whole object it makes
        merge = content_type not in (JSON_PATCH, STRATEGIC_MERGE_PATCH) and isinstance(body, dict)

        def patched_of(current: dict[str, Any]) -> dict[str, Any]:
            # the stored object as read for this write (read and written in one step: no other
            # write comes between them); it is left as it is, the patched object may share
            # values with it
            if merge:
                self._validate_fields(request, body, kind_for(kind))
            try:
                if content_type == JSON_PATCH:
                    patched = json_patch(current, body)
                elif not isinstance(body, dict):
                    raise PatchError(f"a merge patch is an object, got {type(body).__name__}")
                elif content_type == STRATEGIC_MERGE_PATCH:
                    patched = strategic_merge_patch(kind, current, body)
                else:
                    patched = merge_patch(current, body)
            except PatchNotApplicable as exc:
                raise UnprocessablePatch(str(exc)) from None
            except PatchError as exc:
                raise BadRequest(f"body: {exc}") from None
            # the patch's own resourceVersion (if any) is a precondition; else last write wins.
            # (A merge patch without metadata keeps the stored metadata: a copy is changed.)
            meta = patched.get("metadata")
            meta = patched["metadata"] = dict(meta) if isinstance(meta, dict) else {}
            meta["resourceVersion"] = (meta.get("resourceVersion")
                                       or current["metadata"]["resourceVersion"])
            return self._object(request, patched, kind, fields_checked=merge)

        return self._object_response(await self.store.grouped(lambda: self.store.update_with(
            kind, *self._where(request), patched_of, subresource=subresource,
            dry_run=dry_run)), as_stored=not dry_run)

    @_handles_errors
    async def remove(self, request: web.Request) -> web.StreamResponse:
        self._authorize(request)
        kind = self._kind(request)
        options = None
        if request.can_read_body:  # DeleteOptions (kubectl sends its dryRun there too)
            options = await self._body(request)
        dry_run = self._dry_run(request, options)
        return _json_response(await self.store.grouped(
            lambda: self.store.delete(kind, *self._where(request), dry_run=dry_run)))

    @_handles_errors
    async def not_allowed(self, request: web.Request) -> web.StreamResponse:
        self._kind(request)
        raise MethodNotAllowed(f"{request.method}: the server does not allow this method here")


def _media_types(request: web.Request) -> Iterable[tuple[str, dict[str, str]]]:
    """The Accept header's media types, each with its parameters."""
    for part in request.headers.get("Accept", "").split(","):
        kind, *params = (p.strip() for p in part.split(";"))
        yield kind, {k.strip(): v.strip() for k, _, v in (p.partition("=") for p in params)}


def _table_version(request: web.Request) -> str | None:
    """``v1`` (or ``v1beta1``) when the Accept header asks for a ``meta.k8s.io`` Table."""
    for media, params in _media_types(request):
        if media in ("application/json", "*/*") and params.get("as") == "Table" \
                and params.get("g") == "meta.k8s.io" and params.get("v") in ("v1", "v1beta1"):
            return params["v"]
    return None


def _table_type(version: str) -> str:
    return f"application/json;as=Table;v={version};g=meta.k8s.io"


def _discovery_version(request: web.Request) -> str | None:
    """``v2`` (or ``v2beta1``) when the Accept header asks for aggregated discovery."""
    for media, params in _media_types(request):
        if media == "application/json" and params.get("as") == "APIGroupDiscoveryList" \
                and params.get("g") == "apidiscovery.k8s.io" \
                and params.get("v") in ("v2", "v2beta1"):
            return params["v"]
    return None


def _aggregated(groups: Iterable[str], version: str) -> web.Response:
    """The ``APIGroupDiscoveryList`` of ``groups`` ("" is the core group): every group, version
    and resource in one answer, as kubectl 1.32 asks for it."""
    items = []
    for group in groups:
        # sorted by name, as the API server lists them (kubectl get all: pods before services)
        kinds = sorted((k for k in ALL_KINDS if k.group == group), key=lambda k: k.plural)
        resources = []
        for k in kinds:
            resource: dict[str, Any] = {
                "resource": k.plural,
                "responseKind": {"group": k.group, "version": k.version, "kind": k.kind},
                "scope": "Namespaced" if k.namespaced else "Cluster",
                "singularResource": k.singular,
                "verbs": VERBS,
            }
            if k.short_names:
                resource["shortNames"] = list(k.short_names)
            if k.categories:
                resource["categories"] = list(k.categories)
            if k.subresources:
                resource["subresources"] = [
                    {"subresource": sub, "verbs": ["get", "patch", "update"],
                     "responseKind": {"group": k.group, "version": k.version, "kind": k.kind}}
                    for sub in k.subresources]
            resources.append(resource)
        items.append({
            "metadata": {"name": group, "creationTimestamp": None},
            "versions": [{"version": kinds[0].version, "resources": resources,
                          "freshness": "Current"}],
        })
    body = {"kind": "APIGroupDiscoveryList", "apiVersion": f"apidiscovery.k8s.io/{version}",
            "metadata": {}, "items": items}
    media = f"application/json;g=apidiscovery.k8s.io;v={version};as=APIGroupDiscoveryList"
    return _json_as(body, media)


def _json_response(obj: Any, status: int = 200) -> web.Response:
    """An object as compact JSON (see :mod:`lbcore.runtime.jsontext`)."""
    return web.Response(body=jsontext.dumps_bytes(obj), status=status,
                        content_type="application/json")


def _json_as(body: Any, media: str) -> web.Response:
    """JSON under a media type with parameters (a Table's, aggregated discovery's)."""
    return web.Response(body=json.dumps(body).encode(), headers={"Content-Type": media})


@functools.cache
def _openapi_v2_protobuf() -> bytes:
    return schema.openapi_v2_protobuf(".".join(KUBERNETES_VERSION))


@functools.cache
def _openapi_v2() -> bytes:
    return json.dumps(schema.openapi_v2(".".join(KUBERNETES_VERSION))).encode()


@functools.cache
def _openapi_v3(group_version: str) -> bytes | None:
    """The v3 index (``""``) or one group version's document, as JSON, built once."""
    version = ".".join(KUBERNETES_VERSION)
    doc = (schema.openapi_v3_index(version) if not group_version
           else schema.openapi_v3(group_version, version))
    return None if doc is None else json.dumps(doc).encode()


async def _end_when_client_leaves_or_stalls(request: web.Request, watcher: Watch) -> None:
    """End a quiet watch whose client went away, and the connection of one whose client
    stopped reading, rather than hold either until timeoutSeconds.

    A watcher that fell past its bound (:data:`lbcore.runtime.store.MAX_PENDING_BYTES`) ends
    with a 410 ERROR event. When its handler cannot write that event because the client does
    not read (the handler waits for the socket to drain), the event and the end of the stream
    are put behind what is already queued and the connection is closed: a client that reads
    gets them, and one that reads nothing for :data:`STALLED_CLOSE_GRACE` seconds is cut off,
    its descriptor and buffers let go, as the API server drops a watcher too slow to keep up."""
    overflow_seen = False
    while True:
        await asyncio.sleep(CLIENT_CHECK_INTERVAL)
        transport = request.transport
        if transport is None or transport.is_closing():
            watcher.close()
            return
        if not watcher.overflowed:
            continue
        if not overflow_seen:  # give a handler that is not blocked the time to send it
            overflow_seen = True
            continue
        log.warning("watch of %s: its client does not read; closing the connection", watcher.kind)
        try:
            error = await anext(watcher)
        except StopAsyncIteration:
            error = None
        tail = b""
        if error is not None and error.get("type") == "ERROR":
            data = json.dumps(error, separators=(",", ":")).encode() + b"\n"
            tail = f"{len(data):x}\r\n".encode() + data + b"\r\n"
        transport.write(tail + b"0\r\n\r\n")
        transport.close()  # the socket closes once what is queued is sent
        queued = transport.get_write_buffer_size()
        while queued:
            await asyncio.sleep(STALLED_CLOSE_GRACE)
            now = transport.get_write_buffer_size()
            if now >= queued:  # nothing was read meanwhile: let go of it
                transport.abort()
                return
            queued = now
        return


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    return {str: "a string", list: "an array", type(None): "null"}.get(type(value), "a value")
